//! Cold transfers to a person: validated destinations, the TwiML Twilio runs after the
//! stream, and the pending transfers of a server.
//!
//! A transfer never dials anything itself and needs no REST credentials. It uses Twilio's own
//! "what happens after the stream" mechanism: the call webhook answers
//! `<Connect action="{PUBLIC_URL}/call-ended"><Stream …/></Connect>`; when the bridge closes
//! the stream (after the caller heard the agent's last words), Twilio requests the `action`
//! URL and runs the TwiML it gets back: [`dial_twiml`] (`<Dial><Number>` or `<Dial><Sip>`)
//! for a transfer pending for that CallSid, [`hangup_twiml`] otherwise.
//!
//! ```
//! use twilio_realtime::telephony::transfer::{dial_twiml, Destination};
//!
//! let desk = Destination::parse("+15550100").unwrap();
//! assert!(dial_twiml(&desk).contains("<Number>+15550100</Number>"));
//! let pbx = Destination::parse("sip:support@pbx.example.com;transport=tls").unwrap();
//! assert!(dial_twiml(&pbx).contains("<Sip>sip:support@pbx.example.com;transport=tls</Sip>"));
//! assert!(Destination::parse("0800 CALL ME").is_err());
//! ```
//!
//! No whisper or summary is given to the person who answers: a `<Dial>` joins the caller at
//! once. (The conversation so far is in the session's history and in its events, for an
//! application that wants to hand it over another way.)

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a transfer goes: an E.164 phone number or a SIP URI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// An E.164 number (`+` and 2–15 digits, the first not 0), dialled with `<Number>`.
    Number(String),
    /// A `sip:` or `sips:` URI, dialled with `<Sip>`.
    Sip(String),
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestinationError {
    /// Starts with `+` but is not `+` and 2–15 digits with a first digit other than 0.
    NotE164,
    /// Starts with `sip:`/`sips:` but is not a SIP URI this crate accepts (a host, optional
    /// user, port, parameters and headers; no spaces, quotes or angle brackets).
    BadSipUri,
    /// Neither a `+` number nor a `sip:`/`sips:` URI.
    Unsupported,
}

impl fmt::Display for DestinationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestinationError::NotE164 => {
                f.write_str("not an E.164 number (+ and 2-15 digits, not starting with 0)")
            }
            DestinationError::BadSipUri => f.write_str("not a valid sip: or sips: URI"),
            DestinationError::Unsupported => {
                f.write_str("a transfer destination is an E.164 number (+...) or a sip: URI")
            }
        }
    }
}

impl std::error::Error for DestinationError {}

/// Longest SIP URI accepted.
const MAX_SIP_URI: usize = 512;

impl Destination {
    /// Parses an E.164 number (`+15550100`) or a SIP URI (`sip:alice@pbx.example.com:5061`).
    pub fn parse(s: &str) -> Result<Destination, DestinationError> {
        if let Some(digits) = s.strip_prefix('+') {
            let ok = (2..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            return if ok {
                Ok(Destination::Number(s.to_owned()))
            } else {
                Err(DestinationError::NotE164)
            };
        }
        let scheme = |p: &str| {
            s.get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p))
        };
        let rest = if scheme("sips:") {
            &s[5..]
        } else if scheme("sip:") {
            &s[4..]
        } else {
            return Err(DestinationError::Unsupported);
        };
        if s.len() > MAX_SIP_URI || !valid_sip_rest(rest) {
            return Err(DestinationError::BadSipUri);
        }
        Ok(Destination::Sip(s.to_owned()))
    }

    /// The number or URI as given.
    pub fn as_str(&self) -> &str {
        match self {
            Destination::Number(s) | Destination::Sip(s) => s,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Destination {
    type Err = DestinationError;
    fn from_str(s: &str) -> Result<Destination, DestinationError> {
        Destination::parse(s)
    }
}

/// `[user[:password]@]host[:port][;params][?headers]` after the scheme (RFC 3261 §19.1.1,
/// restricted to printable ASCII without quotes, spaces or angle brackets).
fn valid_sip_rest(rest: &str) -> bool {
    let (before_headers, headers) = match rest.split_once('?') {
        Some((a, h)) => (a, Some(h)),
        None => (rest, None),
    };
    // The user part may itself contain ';' (user-unreserved): split params after the host.
    let (userinfo, hostpart) = match before_headers.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, before_headers),
    };
    let (hostport, params) = match hostpart.split_once(';') {
        Some((h, p)) => (h, Some(p)),
        None => (hostpart, None),
    };
    let user_ok = userinfo.is_none_or(|u| {
        !u.is_empty()
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*()&=+$,;?/%:".contains(&b))
    });
    let param_ok = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*()%[]/:&+$=;".contains(&b))
    };
    user_ok
        && valid_hostport(hostport)
        && params.is_none_or(param_ok)
        && headers.is_none_or(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*()%[]/?:+$=&".contains(&b))
        })
}

fn valid_hostport(hp: &str) -> bool {
    let (host, port) = if let Some(v6) = hp.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}

/// A destination the model may transfer the caller to, by name (see
/// [`crate::agent::Agent::transfer_to`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferTarget {
    /// The name the model chooses (e.g. `"Sales"`).
    pub name: String,
    /// Where the call goes.
    pub destination: Destination,
    /// What the model is told about it (when to choose it).
    pub description: String,
}

/// TwiML that dials `destination` (after the stream ended): `<Dial><Number>` or `<Dial><Sip>`.
pub fn dial_twiml(destination: &Destination) -> String {
    let inner = match destination {
        Destination::Number(n) => format!("<Number>{}</Number>", xml_escape(n)),
        Destination::Sip(u) => format!("<Sip>{}</Sip>", xml_escape(u)),
    };
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Dial>{inner}</Dial>\n</Response>\n")
}

/// TwiML that ends the call.
pub fn hangup_twiml() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Hangup/>\n</Response>\n".to_owned()
}

/// Escapes text for XML content and attribute values.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// Transfers decided for calls whose stream has not yet been followed by Twilio's request to
/// the `<Connect action>` URL: keyed by CallSid, each taken once, forgotten after `ttl`, at
/// most `capacity` at once (beyond it the oldest goes).
#[derive(Debug)]
pub struct PendingTransfers {
    ttl: Duration,
    capacity: usize,
    map: Mutex<HashMap<String, (Instant, TransferTarget)>>,
}

impl PendingTransfers {
    /// An empty map.
    pub fn new(ttl: Duration, capacity: usize) -> PendingTransfers {
        PendingTransfers {
            ttl,
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, TransferTarget)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers a transfer for `call_sid` (replacing an earlier one).
    pub fn insert(&self, now: Instant, call_sid: &str, target: TransferTarget) {
        let mut m = self.lock();
        let ttl = self.ttl;
        m.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        while m.len() >= self.capacity && !m.contains_key(call_sid) {
            let Some(oldest) = m
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            m.remove(&oldest);
        }
        m.insert(call_sid.to_owned(), (now, target));
    }

    /// Takes the transfer pending for `call_sid`, if one is and it has not expired.
    pub fn take(&self, now: Instant, call_sid: &str) -> Option<TransferTarget> {
        let (at, t) = self.lock().remove(call_sid)?;
        (now.saturating_duration_since(at) < self.ttl).then_some(t)
    }

    /// Transfers pending now (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert!(matches!(
            Destination::parse("+14155550100"),
            Ok(Destination::Number(_))
        ));
        for bad in [
            "+",
            "+1",
            "+0123456",
            "+1 415 555",
            "+1234567890123456",
            "+1-415",
        ] {
            assert_eq!(
                Destination::parse(bad),
                Err(DestinationError::NotE164),
                "{bad}"
            );
        }
        for bad in ["14155550100", "tel:+1415", "", "http://x"] {
            assert_eq!(
                Destination::parse(bad),
                Err(DestinationError::Unsupported),
                "{bad}"
            );
        }
    }

    #[test]
    fn sip_uris() {
        for ok in [
            "sip:alice@example.com",
            "sips:alice@example.com:5061",
            "SIP:desk@10.0.0.5;transport=tcp",
            "sip:example.com",
            "sip:+15550100@pbx.example.com;user=phone",
            "sip:bob@[2001:db8::1]:5060",
            "sip:bob@example.com?X-Reason=transfer",
        ] {
            assert!(
                matches!(Destination::parse(ok), Ok(Destination::Sip(_))),
                "{ok}"
            );
        }
        for bad in [
            "sip:",
            "sip:@example.com",
            "sip:alice@",
            "sip:alice@exa mple.com",
            "sip:alice@example.com\"><Hangup/>",
            "sip:a<b@example.com",
            "sip:alice@example.com:0",
            "sip:alice@example.com:99999",
            "sip:alice@-bad-.com",
            "sip:bob@[nope]",
            "sip:alice@example.com\n",
        ] {
            assert_eq!(
                Destination::parse(bad),
                Err(DestinationError::BadSipUri),
                "{bad:?}"
            );
        }
        assert!(Destination::parse(&format!("sip:{}@x.com", "a".repeat(600))).is_err());
    }

    #[test]
    fn twiml_is_escaped() {
        let d = Destination::Sip("sip:a&b@x.com;p='1'".into());
        let x = dial_twiml(&d);
        assert!(
            x.contains("<Dial><Sip>sip:a&amp;b@x.com;p=&apos;1&apos;</Sip></Dial>"),
            "{x}"
        );
        assert!(hangup_twiml().contains("<Hangup/>"));
    }

    #[test]
    fn pending_transfers_expire_are_taken_once_and_are_bounded() {
        let t0 = Instant::now();
        let target = |n: &str| TransferTarget {
            name: n.into(),
            destination: Destination::Number("+15550100".into()),
            description: String::new(),
        };
        let p = PendingTransfers::new(Duration::from_secs(60), 2);
        p.insert(t0, "CA1", target("a"));
        assert_eq!(p.take(t0, "CA1").map(|t| t.name), Some("a".into()));
        assert_eq!(p.take(t0, "CA1"), None, "taken once");
        p.insert(t0, "CA2", target("b"));
        assert_eq!(p.take(t0 + Duration::from_secs(61), "CA2"), None, "expired");
        p.insert(t0, "CA3", target("c"));
        p.insert(t0 + Duration::from_secs(1), "CA4", target("d"));
        p.insert(t0 + Duration::from_secs(2), "CA5", target("e"));
        assert_eq!(p.len(), 2, "bounded");
        assert_eq!(
            p.take(t0 + Duration::from_secs(2), "CA3"),
            None,
            "oldest went"
        );
        assert!(p.take(t0 + Duration::from_secs(2), "CA5").is_some());
    }
}
