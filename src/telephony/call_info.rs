//! Who is on the line: a [`CallInfo`] per call, for the agent factory, every tool invocation
//! and the start check.
//!
//! A call's details come from two places:
//!
//! * Twilio's `start` message on the media stream: `callSid`, `accountSid`, `streamSid` and the
//!   TwiML's `<Parameter>`s (`customParameters`).
//! * The call webhook (`POST /incoming-call`), when the call came through ours: Twilio's form
//!   fields (`From`, `To`, `Direction`, `CallerName`, `FromCity`, `AnsweredBy` for an outbound
//!   call with machine detection, …). The webhook runs before Twilio opens the stream, so the
//!   bundled server keeps its (signature-checked) fields in a [`WebhookCalls`] directory keyed by
//!   CallSid, and the stream's `start`, which brings the CallSid, picks them up with a map
//!   lookup: nothing waits on the network for them.
//!
//! **What waits for it.** The model connection (TCP, TLS and the WebSocket handshake: the slow
//! part) still opens the moment the stream's socket is accepted, in parallel with Twilio's
//! `connected` and `start`. Only the model session's configuration (`session.update`, which
//! carries the agent's instructions, voice and tools) waits for `start` when the agent is
//! chosen per call: until then the open model socket is simply not read (`session.created` waits
//! in the socket buffer). Twilio sends `start` right after `connected`, so in practice the
//! configuration waits for nothing; with a fixed agent nothing waits at all. With a warm model
//! ([`crate::session::warm`]: signed webhooks and stream tokens) nothing waits for `start`:
//! the server builds the agent from the webhook's details ([`CallInfo::from_webhook`]) and
//! opens and configures the model session there; the agent chosen again on `start` only
//! costs a round trip if it needs another configuration.
//!
//! ```
//! use std::collections::BTreeMap;
//! use twilio_realtime::telephony::call_info::{CallInfo, Direction, WebhookForm};
//! use twilio_realtime::proto::twilio::TwilioMessage;
//!
//! let start = r#"{"event":"start","streamSid":"MZ1","start":{"accountSid":"AC1","callSid":"CA1",
//!   "customParameters":{"caller":"+15550100","token":"secret"}}}"#;
//! let TwilioMessage::Start(start) = TwilioMessage::parse(start).unwrap() else { panic!() };
//! let form = WebhookForm::from_pairs([("From", "+15550100"), ("To", "+15550199"),
//!     ("Direction", "inbound"), ("CallerName", "Ada Lovelace")]);
//! let call = CallInfo::from_start(&start, Some(form));
//! assert_eq!(call.from.as_deref(), Some("+15550100"));
//! assert_eq!(call.direction, Some(Direction::Inbound));
//! assert_eq!(call.field("CallerName"), Some("Ada Lovelace"));
//! // The one-time stream token never reaches the application.
//! assert!(!call.custom_parameters.contains_key("token"));
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `customParameters` key the bundled server's stream token travels under (never part
/// of [`CallInfo::custom_parameters`]).
pub const TOKEN_PARAMETER: &str = "token";

use crate::proto::twilio::Start;

/// Which way the call goes, as Twilio's `Direction` field says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// `inbound`: someone called one of the account's numbers.
    Inbound,
    /// `outbound-api`: placed through the REST API.
    OutboundApi,
    /// `outbound-dial`: the other leg of a `<Dial>`.
    OutboundDial,
    /// Any other value, kept as sent.
    Other(String),
}

impl Direction {
    /// Parses Twilio's `Direction` value.
    pub fn parse(s: &str) -> Direction {
        match s {
            "inbound" => Direction::Inbound,
            "outbound-api" => Direction::OutboundApi,
            "outbound-dial" => Direction::OutboundDial,
            other => Direction::Other(other.to_owned()),
        }
    }

    /// Twilio's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Direction::Inbound => "inbound",
            Direction::OutboundApi => "outbound-api",
            Direction::OutboundDial => "outbound-dial",
            Direction::Other(s) => s,
        }
    }

    /// True for calls this account placed (`outbound-api`, `outbound-dial`).
    pub fn is_outbound(&self) -> bool {
        matches!(self, Direction::OutboundApi | Direction::OutboundDial)
    }
}

/// The form fields of Twilio's call webhook, by name (a repeated name keeps its first value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookForm {
    fields: BTreeMap<String, String>,
}

impl WebhookForm {
    /// From decoded `(name, value)` pairs, e.g. [`crate::io::http::parse_form`]'s.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> WebhookForm {
        let mut fields = BTreeMap::new();
        for (k, v) in pairs {
            fields.entry(k.into()).or_insert_with(|| v.into());
        }
        WebhookForm { fields }
    }

    /// One field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// Every field.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        &self.fields
    }

    /// Bytes of names and values (what the directory's bound counts).
    fn size(&self) -> usize {
        self.fields
            .iter()
            .map(|(k, v)| k.len().saturating_add(v.len()))
            .fold(0usize, usize::saturating_add)
    }
}

/// One call's details (see the module docs). Cheap to share: the session hands out
/// `Arc<CallInfo>`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallInfo {
    /// Twilio's call id (`CA…`).
    pub call_sid: String,
    /// The Twilio account (`AC…`).
    pub account_sid: String,
    /// The media stream's id (`MZ…`).
    pub stream_sid: String,
    /// The calling party: the webhook's `From`, else the stream's `From` or `caller`
    /// parameter (the bundled server's TwiML passes `caller`).
    pub from: Option<String>,
    /// The called party: the webhook's `To`, else the stream's `To` parameter.
    pub to: Option<String>,
    /// The webhook's `Direction`, else the stream's `Direction` parameter.
    pub direction: Option<Direction>,
    /// The TwiML's `<Parameter>`s, without the one-time stream token.
    pub custom_parameters: BTreeMap<String, String>,
    /// The webhook's form fields, when the call came through this server's webhook.
    pub webhook: Option<WebhookForm>,
}

impl CallInfo {
    /// The details of the stream that sent `start`, with the webhook's fields if known.
    pub fn from_start(start: &Start, webhook: Option<WebhookForm>) -> CallInfo {
        let s = &start.start;
        CallInfo::build(
            s.call_sid.clone(),
            s.account_sid.clone(),
            start.stream_sid.clone(),
            s.custom_parameters.clone(),
            webhook,
        )
    }

    /// The details a call webhook gives before the stream exists: CallSid, AccountSid and the
    /// other fields from `form`, and `custom_parameters`, the `<Parameter>`s of the TwiML the
    /// webhook answers (the stream's `start` will carry them); no streamSid yet (empty). The
    /// bundled server builds the call's agent from it at the webhook, for a warm model
    /// ([`crate::session::warm`]).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use twilio_realtime::telephony::call_info::{CallInfo, WebhookForm};
    ///
    /// let form = WebhookForm::from_pairs([("CallSid", "CA1"), ("AccountSid", "AC1"),
    ///     ("From", "+15550100"), ("CallerName", "Ada Lovelace")]);
    /// let params = BTreeMap::from([("caller".to_owned(), "+15550100".to_owned())]);
    /// let call = CallInfo::from_webhook(form, params);
    /// assert_eq!((call.call_sid.as_str(), call.stream_sid.as_str()), ("CA1", ""));
    /// assert_eq!(call.caller_name(), Some("Ada Lovelace"));
    /// ```
    pub fn from_webhook(
        form: WebhookForm,
        custom_parameters: BTreeMap<String, String>,
    ) -> CallInfo {
        let field = |name: &str| form.get(name).unwrap_or("").to_owned();
        CallInfo::build(
            field("CallSid"),
            field("AccountSid"),
            String::new(),
            custom_parameters,
            Some(form),
        )
    }

    fn build(
        call_sid: String,
        account_sid: String,
        stream_sid: String,
        mut custom_parameters: BTreeMap<String, String>,
        webhook: Option<WebhookForm>,
    ) -> CallInfo {
        custom_parameters.remove(TOKEN_PARAMETER);
        let from_webhook = |name: &str| webhook.as_ref().and_then(|w| w.get(name));
        let param = |name: &str| custom_parameters.get(name).map(String::as_str);
        let nonempty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_owned);
        let from = nonempty(from_webhook("From"))
            .or_else(|| nonempty(param("From")))
            .or_else(|| nonempty(param("caller")));
        let to = nonempty(from_webhook("To")).or_else(|| nonempty(param("To")));
        let direction = nonempty(from_webhook("Direction"))
            .or_else(|| nonempty(param("Direction")))
            .map(|d| Direction::parse(&d));
        CallInfo {
            call_sid,
            account_sid,
            stream_sid,
            from,
            to,
            direction,
            custom_parameters,
            webhook,
        }
    }

    /// A webhook form field (`CallerName`, `FromCity`, `AnsweredBy`, …), if the call came
    /// through this server's webhook and Twilio sent it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.webhook.as_ref()?.get(name)
    }

    /// The answering-machine verdict of an outbound call placed with machine detection
    /// (`human`, `machine_start`, `fax`, `unknown`, …): the webhook's `AnsweredBy`.
    pub fn answered_by(&self) -> Option<&str> {
        self.field("AnsweredBy")
    }

    /// The caller's name from Twilio's caller-name lookup (`CallerName`), if enabled.
    pub fn caller_name(&self) -> Option<&str> {
        self.field("CallerName")
    }
}

struct Entry {
    form: WebhookForm,
    at: Instant,
    size: usize,
}

#[derive(Default)]
struct Directory {
    by_sid: HashMap<String, Entry>,
    /// CallSids in arrival order (for eviction); may name entries already taken.
    order: VecDeque<(String, Instant)>,
    bytes: usize,
}

/// Webhook fields waiting for their call's stream, keyed by CallSid: kept from the webhook until
/// `start` takes them, for at most `ttl`, at most `max_calls` calls and `max_bytes` of fields
/// (the oldest are dropped first). A stream only takes the fields of its own CallSid, once.
pub struct WebhookCalls {
    ttl: Duration,
    max_calls: usize,
    max_bytes: usize,
    inner: Mutex<Directory>,
}

impl fmt::Debug for WebhookCalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookCalls")
            .field("ttl", &self.ttl)
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl WebhookCalls {
    /// A directory with these bounds.
    pub fn new(ttl: Duration, max_calls: usize, max_bytes: usize) -> WebhookCalls {
        WebhookCalls {
            ttl,
            max_calls,
            max_bytes,
            inner: Mutex::new(Directory::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Directory> {
        // The directory stays consistent between statements; a panic elsewhere does not matter.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `form` for `call_sid` (replacing earlier fields of that call).
    pub fn insert(&self, call_sid: &str, form: WebhookForm) {
        self.insert_at(call_sid, form, Instant::now())
    }

    /// [`WebhookCalls::insert`] at `now`.
    pub fn insert_at(&self, call_sid: &str, form: WebhookForm, now: Instant) {
        if call_sid.is_empty() {
            return;
        }
        let size = form.size().saturating_add(call_sid.len());
        if size > self.max_bytes {
            log::debug!(target: "twilio_realtime::server", "webhook fields too large to keep");
            return;
        }
        let mut d = self.lock();
        if let Some(old) = d.by_sid.remove(call_sid) {
            d.bytes = d.bytes.saturating_sub(old.size);
        }
        d.by_sid.insert(
            call_sid.to_owned(),
            Entry {
                form,
                at: now,
                size,
            },
        );
        d.bytes = d.bytes.saturating_add(size);
        d.order.push_back((call_sid.to_owned(), now));
        if d.order.len() > self.max_calls.saturating_mul(2).max(16) {
            // Taken calls leave stale order entries behind live ones: drop them all at once.
            let Directory { by_sid, order, .. } = &mut *d;
            order.retain(|(sid, at)| by_sid.get(sid).is_some_and(|e| e.at == *at));
        }
        self.evict(&mut d, now);
    }

    fn evict(&self, d: &mut Directory, now: Instant) {
        while let Some((sid, at)) = d.order.front().cloned() {
            let expired = now.saturating_duration_since(at) >= self.ttl;
            let over = d.by_sid.len() > self.max_calls || d.bytes > self.max_bytes;
            // An order entry whose call was replaced later or taken is stale: drop it.
            let current = d.by_sid.get(&sid).is_some_and(|e| e.at == at);
            if current && !expired && !over {
                break;
            }
            d.order.pop_front();
            if current {
                if let Some(e) = d.by_sid.remove(&sid) {
                    d.bytes = d.bytes.saturating_sub(e.size);
                }
            }
        }
    }

    /// Takes the fields kept for `call_sid`, if any and not expired.
    pub fn take(&self, call_sid: &str) -> Option<WebhookForm> {
        self.take_at(call_sid, Instant::now())
    }

    /// [`WebhookCalls::take`] at `now`.
    pub fn take_at(&self, call_sid: &str, now: Instant) -> Option<WebhookForm> {
        let mut d = self.lock();
        self.evict(&mut d, now);
        let e = d.by_sid.remove(call_sid)?;
        d.bytes = d.bytes.saturating_sub(e.size);
        (now.saturating_duration_since(e.at) < self.ttl).then_some(e.form)
    }

    /// Calls whose fields are kept now.
    pub fn waiting(&self) -> usize {
        self.lock().by_sid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::twilio::{MediaFormat, StartInfo};

    fn start(params: &[(&str, &str)]) -> Start {
        Start {
            sequence_number: None,
            stream_sid: "MZ1".into(),
            start: StartInfo {
                stream_sid: None,
                account_sid: "AC1".into(),
                call_sid: "CA1".into(),
                tracks: vec![],
                custom_parameters: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                media_format: MediaFormat::default(),
            },
        }
    }

    #[test]
    fn webhook_fields_win_over_stream_parameters() {
        let form = WebhookForm::from_pairs([
            ("From", "+1555000"),
            ("To", "+1555999"),
            ("Direction", "outbound-api"),
            ("AnsweredBy", "machine_start"),
            ("From", "+1ignored"),
        ]);
        let info = CallInfo::from_start(&start(&[("caller", "+1other")]), Some(form));
        assert_eq!(info.from.as_deref(), Some("+1555000"));
        assert_eq!(info.to.as_deref(), Some("+1555999"));
        assert_eq!(info.direction, Some(Direction::OutboundApi));
        assert!(info.direction.as_ref().is_some_and(Direction::is_outbound));
        assert_eq!(info.answered_by(), Some("machine_start"));
        assert_eq!(info.call_sid, "CA1");
        assert_eq!(info.account_sid, "AC1");
        assert_eq!(info.stream_sid, "MZ1");
    }

    #[test]
    fn without_a_webhook_the_stream_parameters_count() {
        let info = CallInfo::from_start(
            &start(&[
                ("caller", "+1555"),
                ("token", "t"),
                ("Direction", "sideways"),
            ]),
            None,
        );
        assert_eq!(info.from.as_deref(), Some("+1555"));
        assert_eq!(info.to, None);
        assert_eq!(info.direction, Some(Direction::Other("sideways".into())));
        assert_eq!(info.field("From"), None);
        assert_eq!(info.custom_parameters.len(), 2);
        let empty = CallInfo::from_start(&start(&[("caller", "")]), None);
        assert_eq!(empty.from, None);
    }

    #[test]
    fn directory_takes_once_and_expires() {
        let d = WebhookCalls::new(Duration::from_secs(10), 100, 1 << 20);
        let t0 = Instant::now();
        d.insert_at("CA1", WebhookForm::from_pairs([("From", "+1")]), t0);
        d.insert_at("CA2", WebhookForm::from_pairs([("From", "+2")]), t0);
        assert_eq!(
            d.take_at("CA1", t0 + Duration::from_secs(1))
                .and_then(|f| f.get("From").map(str::to_owned)),
            Some("+1".into())
        );
        assert_eq!(d.take_at("CA1", t0 + Duration::from_secs(1)), None);
        assert_eq!(d.take_at("CA2", t0 + Duration::from_secs(10)), None);
        assert_eq!(d.waiting(), 0);
        d.insert_at("", WebhookForm::default(), t0);
        assert_eq!(d.waiting(), 0);
    }

    #[test]
    fn directory_is_bounded_by_calls_and_bytes() {
        let d = WebhookCalls::new(Duration::from_secs(60), 3, 100);
        let t0 = Instant::now();
        for i in 0..10 {
            d.insert_at(&format!("CA{i}"), WebhookForm::from_pairs([("F", "v")]), t0);
        }
        assert_eq!(d.waiting(), 3);
        assert!(d.take_at("CA9", t0).is_some());
        assert!(d.take_at("CA0", t0).is_none());
        // A replaced call keeps one entry; its stale order entry does not evict the new one.
        d.insert_at("CA7", WebhookForm::from_pairs([("F", "w")]), t0);
        assert_eq!(
            d.take_at("CA7", t0)
                .and_then(|f| f.get("F").map(str::to_owned)),
            Some("w".into())
        );
        // Bytes: 60 + 60 > 100 drops the older.
        let big = "x".repeat(56);
        d.insert_at("CAa", WebhookForm::from_pairs([("F", big.as_str())]), t0);
        d.insert_at("CAb", WebhookForm::from_pairs([("F", big.as_str())]), t0);
        assert!(d.take_at("CAa", t0).is_none());
        assert!(d.take_at("CAb", t0).is_some());
        // One form alone over the byte bound is not kept.
        d.insert_at("CAc", WebhookForm::from_pairs([("F", "y".repeat(200))]), t0);
        assert!(d.take_at("CAc", t0).is_none());
    }
}
