//! One-time stream tokens: the webhook mints one per call and puts it in the TwiML as a
//! `<Parameter name="token">`; the media stream must present it in `start`'s
//! `customParameters`, for the same CallSid, before it expires. A token works once.
//!
//! The webhook is signed by Twilio, the WebSocket upgrade too, but an upgrade signature can be
//! replayed; a token bound to the call and spent on first use cannot. The check runs on
//! `start`, before a model connection is opened or, with a warm model (one opened at the
//! signed webhook, see [`crate::session::warm`]), before one is claimed; see
//! [`SessionConfig::start_check`](crate::session::SessionConfig::start_check).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use twilio_realtime::server::token::{StreamTokens, TokenError};
//!
//! let tokens = StreamTokens::new(Duration::from_secs(30), 10_000);
//! let now = Instant::now();
//! let t = tokens.issue_at("CA123", now).unwrap();
//! assert_eq!(tokens.redeem_at(Some(t.as_str()), "CA123", now), Ok(()));
//! // Spent: a replay fails.
//! assert_eq!(tokens.redeem_at(Some(t.as_str()), "CA123", now), Err(TokenError::Unknown));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use crate::proto::twilio::Start;
use crate::session::StartCheck;
use crate::telephony::call_info::CallInfo;
use std::time::{Duration, Instant};

/// The `customParameters` key the token travels under.
pub use crate::telephony::call_info::TOKEN_PARAMETER;

/// Why a stream token was refused. The token itself is never part of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// `start` carried no token.
    Missing,
    /// The token was never issued, or was already used.
    Unknown,
    /// The token was issued for another CallSid.
    WrongCall,
    /// The token's time to live is over.
    Expired,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => "no stream token in start",
            TokenError::Unknown => "unknown or already used stream token",
            TokenError::WrongCall => "stream token was issued for another call",
            TokenError::Expired => "stream token expired",
        })
    }
}

impl std::error::Error for TokenError {}

struct Issued {
    call_sid: String,
    expires: Instant,
}

/// The tokens issued and not yet spent or expired.
pub struct StreamTokens {
    ttl: Duration,
    max_live: usize,
    live: Mutex<HashMap<String, Issued>>,
}

impl fmt::Debug for StreamTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTokens")
            .field("ttl", &self.ttl)
            .field("live", &self.lock().len())
            .finish()
    }
}

impl StreamTokens {
    /// Tokens valid for `ttl`; at most `max_live` outstanding (the oldest are dropped beyond
    /// that, so a flood of webhooks cannot grow memory without bound).
    pub fn new(ttl: Duration, max_live: usize) -> StreamTokens {
        StreamTokens {
            ttl,
            max_live: max_live.max(1),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mints a token for `call_sid` (128 random bits from the OS, hex).
    pub fn issue(&self, call_sid: &str) -> io::Result<String> {
        self.issue_at(call_sid, Instant::now())
    }

    /// [`issue`](Self::issue) at a given time (for tests).
    pub fn issue_at(&self, call_sid: &str, now: Instant) -> io::Result<String> {
        let token = random_hex(16)?;
        let mut live = self.lock();
        live.retain(|_, t| t.expires > now);
        if live.len() >= self.max_live {
            if let Some(oldest) = live
                .iter()
                .min_by_key(|(_, t)| t.expires)
                .map(|(k, _)| k.clone())
            {
                live.remove(&oldest);
            }
        }
        live.insert(
            token.clone(),
            Issued {
                call_sid: call_sid.to_owned(),
                // A ttl past what an Instant holds (Duration::MAX) means a century.
                expires: now
                    .checked_add(self.ttl)
                    .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
                    .unwrap_or(now),
            },
        );
        Ok(token)
    }

    /// Spends `token` for `call_sid`: Ok once, an error for anything else.
    pub fn redeem(&self, token: Option<&str>, call_sid: &str) -> Result<(), TokenError> {
        self.redeem_at(token, call_sid, Instant::now())
    }

    /// [`redeem`](Self::redeem) at a given time (for tests).
    pub fn redeem_at(
        &self,
        token: Option<&str>,
        call_sid: &str,
        now: Instant,
    ) -> Result<(), TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        // Removed whatever the outcome: a token presented once is spent.
        let issued = self.lock().remove(token).ok_or(TokenError::Unknown)?;
        if issued.expires <= now {
            return Err(TokenError::Expired);
        }
        if issued.call_sid != call_sid {
            return Err(TokenError::WrongCall);
        }
        Ok(())
    }

    /// The [`StartCheck`] that spends the token a stream's `start` presents
    /// (`customParameters["token"]`, see [`TOKEN_PARAMETER`]) for its CallSid: set it as
    /// [`SessionConfig::start_check`](crate::session::SessionConfig::start_check) and a stream
    /// without a valid token ends before the model is called. The bundled server does this
    /// when tokens are on; an application that serves the webhook itself issues the token
    /// there ([`issue`](Self::issue)) and passes it as a `<Parameter>` in the TwiML.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use twilio_realtime::server::token::StreamTokens;
    /// use twilio_realtime::SessionConfig;
    ///
    /// let tokens = Arc::new(StreamTokens::new(Duration::from_secs(30), 10_000));
    /// let mut session = SessionConfig::new(None);
    /// session.start_check = Some(tokens.clone().start_check());
    /// ```
    pub fn start_check(self: Arc<Self>) -> StartCheck {
        Arc::new(move |start: &Start, _: &CallInfo| {
            let token = start.start.custom_parameters.get(TOKEN_PARAMETER);
            self.redeem(token.map(String::as_str), &start.start.call_sid)
                .map_err(|e| e.to_string())
        })
    }

    /// Tokens outstanding.
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }
}

fn random_hex(n: usize) -> io::Result<String> {
    let mut buf = vec![0u8; n];
    // The OS's CSPRNG (getrandom(2) on Linux) through the getrandom crate.
    getrandom::fill(&mut buf).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_of_duration_max_does_not_overflow() {
        let tokens = StreamTokens::new(Duration::MAX, 2);
        let t0 = Instant::now();
        let a = tokens.issue_at("CA1", t0).unwrap();
        assert_eq!(
            tokens.redeem_at(Some(&a), "CA1", t0 + Duration::from_secs(86_400)),
            Ok(())
        );
    }

    #[test]
    fn once_for_the_right_call_before_expiry() {
        let tokens = StreamTokens::new(Duration::from_secs(30), 100);
        let t0 = Instant::now();
        let a = tokens.issue_at("CA1", t0).unwrap();
        let b = tokens.issue_at("CA2", t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(
            tokens.redeem_at(Some(&b), "CA1", t0),
            Err(TokenError::WrongCall)
        );
        // Spent even though it failed.
        assert_eq!(
            tokens.redeem_at(Some(&b), "CA2", t0),
            Err(TokenError::Unknown)
        );
        assert_eq!(
            tokens.redeem_at(Some(&a), "CA1", t0 + Duration::from_secs(31)),
            Err(TokenError::Expired)
        );
        assert_eq!(tokens.redeem_at(None, "CA1", t0), Err(TokenError::Missing));
        assert_eq!(
            tokens.redeem_at(Some(""), "CA1", t0),
            Err(TokenError::Missing)
        );
        let c = tokens.issue_at("CA3", t0).unwrap();
        assert_eq!(
            tokens.redeem_at(Some(&c), "CA3", t0 + Duration::from_secs(29)),
            Ok(())
        );
        assert_eq!(tokens.outstanding(), 0);
    }

    #[test]
    fn bounded_and_expired_ones_are_dropped() {
        let tokens = StreamTokens::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let first = tokens.issue_at("CA0", t0).unwrap();
        for i in 1..5 {
            tokens
                .issue_at(&format!("CA{i}"), t0 + Duration::from_millis(i))
                .unwrap();
        }
        assert_eq!(tokens.outstanding(), 3);
        assert_eq!(
            tokens.redeem_at(Some(&first), "CA0", t0),
            Err(TokenError::Unknown)
        );
        tokens.issue_at("CA9", t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(tokens.outstanding(), 1);
    }
}
