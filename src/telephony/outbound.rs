//! Outbound calls through Twilio's REST API, and the status callbacks Twilio sends about calls.
//!
//! [`TwilioRest::place_call`] sends `POST {base}/2010-04-01/Accounts/{AccountSid}/Calls.json`
//! with the form fields of an [`OutboundCall`] (`To`, `From`, `Url` or `Twiml`, `Method`,
//! `StatusCallback` with `StatusCallbackEvent`s, `MachineDetection`, `Timeout`), HTTP basic
//! authentication with the account's auth token or an API key and secret, through `ureq`
//! (blocking, no async runtime, native-tls). Twilio answers `201 Created` with the call resource
//! ([`PlacedCall`]) and then dials; everything after that arrives as HTTP requests from Twilio:
//! the answer webhook (the `Url`, with `AnsweredBy` when machine detection is on), the media
//! stream, and the status callbacks ([`StatusCallback`]). Twilio's errors become a
//! [`RestError`].
//!
//! To have the callee talk to the bundled server's agent, point `Url` at its webhook
//! (`https://PUBLIC/incoming-call`, what [`crate::server`]'s `POST /outbound` does): Twilio
//! requests it when the callee answers, the webhook's form (with `Direction=outbound-api` and
//! `AnsweredBy`) reaches the call's [`CallInfo`](crate::telephony::call_info::CallInfo), and its TwiML
//! connects the stream. Inline `Twiml` works too, but then no webhook runs and `AnsweredBy`
//! (which Twilio sends only to the `Url`) is not known.
//!
//! ```
//! use twilio_realtime::telephony::outbound::{Answer, Credentials, MachineDetection, OutboundCall, TwilioRest};
//!
//! let call = OutboundCall::new("+15550100", "+15550199", Answer::Url("https://bridge.example/incoming-call".into()))
//!     .status_callback("https://bridge.example/call-status")
//!     .machine_detection(MachineDetection::Enable);
//! let form = call.form();
//! assert!(form.contains(&("To".into(), "+15550100".into())));
//! assert!(form.contains(&("StatusCallbackEvent".into(), "answered".into())));
//! let rest = TwilioRest::new("AC123", Credentials::AuthToken("secret".into()));
//! assert_eq!(rest.calls_url(), "https://api.twilio.com/2010-04-01/Accounts/AC123/Calls.json");
//! assert!(!format!("{rest:?}").contains("secret"));
//! ```

use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::telephony::call_info::{Direction, WebhookForm};

const LOG: &str = "twilio_realtime::outbound";

/// Twilio's REST API origin.
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

/// How the REST API is authenticated (HTTP basic). Never printed: `{:?}` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// The account SID as user name, the auth token as password.
    AuthToken(String),
    /// An API key (`SK…`) as user name and its secret as password (Twilio's recommendation for
    /// production: keys can be revoked one by one).
    ApiKey {
        /// The key's SID (`SK…`).
        sid: String,
        /// The key's secret.
        secret: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::AuthToken(_) => f.write_str("AuthToken(<redacted>)"),
            Credentials::ApiKey { sid, .. } => f
                .debug_struct("ApiKey")
                .field("sid", sid)
                .field("secret", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    /// The `Authorization` header value for `account_sid`.
    pub fn basic_auth(&self, account_sid: &str) -> String {
        let (user, pass) = match self {
            Credentials::AuthToken(t) => (account_sid, t.as_str()),
            Credentials::ApiKey { sid, secret } => (sid.as_str(), secret.as_str()),
        };
        let raw = format!("{user}:{pass}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// What Twilio does when the callee answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// Request this URL (`POST`) for TwiML, like a call webhook (`Url`).
    Url(String),
    /// Run this TwiML (`Twiml`).
    Twiml(String),
}

/// Answering-machine detection (`MachineDetection`): Twilio requests the `Url` only once it
/// has decided, with `AnsweredBy` (`human`, `machine_start`, `fax`, `unknown`; with
/// `DetectMessageEnd` also `machine_end_beep`, `machine_end_silence`, `machine_end_other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MachineDetection {
    /// `Enable`: decide as soon as possible.
    Enable,
    /// `DetectMessageEnd`: for a machine, wait for the end of its greeting (to leave a message).
    DetectMessageEnd,
}

impl MachineDetection {
    /// Twilio's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            MachineDetection::Enable => "Enable",
            MachineDetection::DetectMessageEnd => "DetectMessageEnd",
        }
    }
}

/// A call to place (see [`TwilioRest::place_call`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCall {
    /// Whom to call (E.164, a SIP URI or `client:…`).
    pub to: String,
    /// The caller id: one of the account's numbers or a verified caller id.
    pub from: String,
    /// What runs when the callee answers.
    pub answer: Answer,
    /// Where Twilio posts the call's progress ([`StatusCallback`]).
    pub status_callback: Option<String>,
    /// Which progress events to post: default `initiated`, `ringing`, `answered`, `completed`
    /// (Twilio's own default is `completed` only).
    pub status_events: Vec<String>,
    /// Answering-machine detection. Default off.
    pub machine_detection: Option<MachineDetection>,
    /// How long to let it ring before giving up (`no-answer`), in seconds (Twilio: default 60,
    /// 5 to 600).
    pub ring_timeout_secs: Option<u32>,
}

impl OutboundCall {
    /// A call from `from` to `to`.
    pub fn new(to: impl Into<String>, from: impl Into<String>, answer: Answer) -> OutboundCall {
        OutboundCall {
            to: to.into(),
            from: from.into(),
            answer,
            status_callback: None,
            status_events: ["initiated", "ringing", "answered", "completed"]
                .map(String::from)
                .to_vec(),
            machine_detection: None,
            ring_timeout_secs: None,
        }
    }

    /// A call whose callee talks to the bundled server at the public `origin`
    /// (`https://host`): `Url` is its webhook `{origin}/incoming-call` (so the webhook's fields,
    /// `AnsweredBy` included, reach the call's `CallInfo`) and `StatusCallback` its
    /// `{origin}/call-status`.
    pub fn to_bridge(origin: &str, to: impl Into<String>, from: impl Into<String>) -> OutboundCall {
        let origin = origin.trim_end_matches('/');
        OutboundCall::new(to, from, Answer::Url(format!("{origin}/incoming-call")))
            .status_callback(format!("{origin}/call-status"))
    }

    /// Post progress to `url`.
    pub fn status_callback(mut self, url: impl Into<String>) -> OutboundCall {
        self.status_callback = Some(url.into());
        self
    }

    /// Turn answering-machine detection on.
    pub fn machine_detection(mut self, md: MachineDetection) -> OutboundCall {
        self.machine_detection = Some(md);
        self
    }

    /// The request's form fields, in order (`StatusCallbackEvent` repeated, as Twilio takes a
    /// list).
    pub fn form(&self) -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> = vec![
            ("To".into(), self.to.clone()),
            ("From".into(), self.from.clone()),
        ];
        match &self.answer {
            Answer::Url(u) => {
                f.push(("Url".into(), u.clone()));
                f.push(("Method".into(), "POST".into()));
            }
            Answer::Twiml(t) => f.push(("Twiml".into(), t.clone())),
        }
        if let Some(cb) = &self.status_callback {
            f.push(("StatusCallback".into(), cb.clone()));
            f.push(("StatusCallbackMethod".into(), "POST".into()));
            for e in &self.status_events {
                f.push(("StatusCallbackEvent".into(), e.clone()));
            }
        }
        if let Some(md) = self.machine_detection {
            f.push(("MachineDetection".into(), md.as_str().into()));
        }
        if let Some(t) = self.ring_timeout_secs {
            f.push(("Timeout".into(), t.to_string()));
        }
        f
    }
}

/// The call resource Twilio returned for a placed call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct PlacedCall {
    /// The new call's SID (`CA…`).
    pub sid: String,
    /// The account.
    #[serde(default)]
    pub account_sid: String,
    /// Usually `queued`.
    #[serde(default)]
    pub status: String,
    /// The callee as Twilio formatted it.
    #[serde(default)]
    pub to: String,
    /// The caller id.
    #[serde(default)]
    pub from: String,
    /// `outbound-api`.
    #[serde(default)]
    pub direction: String,
}

/// Twilio's error body: `{"code", "message", "more_info", "status"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[non_exhaustive]
pub struct TwilioErrorBody {
    /// Twilio's error code (e.g. 20003 authentication, 21211 invalid `To`).
    #[serde(default)]
    pub code: Option<u32>,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// A link to the error's documentation.
    #[serde(default)]
    pub more_info: Option<String>,
    /// The HTTP status, repeated.
    #[serde(default)]
    pub status: Option<u16>,
}

impl TwilioErrorBody {
    fn parse(body: &str) -> TwilioErrorBody {
        serde_json::from_str(body).unwrap_or_else(|_| TwilioErrorBody {
            message: body.chars().take(200).collect(),
            ..TwilioErrorBody::default()
        })
    }
}

impl fmt::Display for TwilioErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(c) => write!(f, "{} (Twilio error {c})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Why a REST request failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RestError {
    /// 401/403: the account SID, token or API key was refused.
    Unauthorized(TwilioErrorBody),
    /// 400/404/422 and other 4xx: Twilio refused the request (bad number, missing field, …).
    Rejected {
        /// The HTTP status.
        status: u16,
        /// Twilio's explanation.
        error: TwilioErrorBody,
    },
    /// 429: too many requests; retry after the given time if Twilio said.
    RateLimited {
        /// `Retry-After`, if sent.
        retry_after: Option<Duration>,
        /// Twilio's explanation.
        error: TwilioErrorBody,
    },
    /// 5xx: Twilio failed.
    Server {
        /// The HTTP status.
        status: u16,
        /// Twilio's explanation, if any.
        error: TwilioErrorBody,
    },
    /// No answer within [`TwilioRest::timeout`].
    Timeout,
    /// The request did not get through (DNS, connection, TLS).
    Transport(String),
    /// A success status whose body is not a call resource.
    BadResponse(String),
}

impl fmt::Display for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestError::Unauthorized(e) => write!(f, "twilio refused the credentials: {e}"),
            RestError::Rejected { status, error } => {
                write!(f, "twilio rejected the request ({status}): {error}")
            }
            RestError::RateLimited { retry_after, error } => match retry_after {
                Some(d) => write!(f, "twilio rate limit, retry in {} s: {error}", d.as_secs()),
                None => write!(f, "twilio rate limit: {error}"),
            },
            RestError::Server { status, error } => write!(f, "twilio failed ({status}): {error}"),
            RestError::Timeout => f.write_str("twilio did not answer in time"),
            RestError::Transport(e) => write!(f, "could not reach twilio: {e}"),
            RestError::BadResponse(e) => write!(f, "unexpected answer from twilio: {e}"),
        }
    }
}

impl std::error::Error for RestError {}

impl RestError {
    /// From a non-2xx status, its `Retry-After` header and body.
    pub fn from_status(status: u16, retry_after: Option<&str>, body: &str) -> RestError {
        let error = TwilioErrorBody::parse(body);
        match status {
            401 | 403 => RestError::Unauthorized(error),
            429 => RestError::RateLimited {
                retry_after: retry_after
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
                error,
            },
            500..=599 => RestError::Server { status, error },
            _ => RestError::Rejected { status, error },
        }
    }
}

/// A client for Twilio's REST API (the Calls resource).
#[derive(Clone)]
pub struct TwilioRest {
    base: String,
    account_sid: String,
    credentials: Credentials,
    timeout: Duration,
    agent: ureq::Agent,
}

impl fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioRest")
            .field("base", &self.base)
            .field("account_sid", &self.account_sid)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TwilioRest {
    /// A client for `account_sid` at [`DEFAULT_API_BASE`], 10 s per request.
    pub fn new(account_sid: impl Into<String>, credentials: Credentials) -> TwilioRest {
        TwilioRest::with_options(
            DEFAULT_API_BASE,
            account_sid,
            credentials,
            Duration::from_secs(10),
        )
    }

    /// A client with another API origin (e.g. a local fake: [`crate::sim::twilio_rest`]) and
    /// an overall per-request timeout (connect, TLS, request and response together).
    pub fn with_options(
        base: impl Into<String>,
        account_sid: impl Into<String>,
        credentials: Credentials,
        timeout: Duration,
    ) -> TwilioRest {
        let agent = crate::io::rest::agent(timeout);
        TwilioRest {
            base: base.into().trim_end_matches('/').to_owned(),
            account_sid: account_sid.into(),
            credentials,
            timeout,
            agent,
        }
    }

    /// The account.
    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `{base}/2010-04-01/Accounts/{AccountSid}/Calls.json`.
    pub fn calls_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Calls.json",
            self.base, self.account_sid
        )
    }

    /// Places a call: Twilio queues it and answers with the call resource; its progress
    /// arrives later as status callbacks, its answer as a request to the `Url`.
    pub fn place_call(&self, call: &OutboundCall) -> Result<PlacedCall, RestError> {
        let form = call.form();
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let sent = self
            .agent
            .post(self.calls_url())
            .header(
                "Authorization",
                self.credentials.basic_auth(&self.account_sid),
            )
            .header("Accept", "application/json")
            .send_form(pairs);
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) if crate::io::rest::is_timeout(&e) => return Err(RestError::Timeout),
            Err(e) => return Err(RestError::Transport(e.to_string())),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
        {
            Ok(b) => b,
            Err(e) if crate::io::rest::is_timeout(&e) => return Err(RestError::Timeout),
            Err(e) => return Err(RestError::Transport(e.to_string())),
        };
        if !(200..300).contains(&status) {
            let e = RestError::from_status(status, retry_after.as_deref(), &body);
            log::warn!(target: LOG, "placing a call failed: {e}");
            return Err(e);
        }
        let placed: PlacedCall = serde_json::from_str(&body)
            .map_err(|e| RestError::BadResponse(format!("not a call resource: {e}")))?;
        log::info!(target: LOG, "call {} placed ({})", placed.sid, placed.status);
        Ok(placed)
    }
}

/// A call's status as Twilio reports it (`CallStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallStatus {
    /// `queued`: waiting to be dialled.
    Queued,
    /// `initiated`: dialling.
    Initiated,
    /// `ringing`.
    Ringing,
    /// `in-progress`: answered (the `answered` event).
    InProgress,
    /// `completed`: answered, then ended.
    Completed,
    /// `busy`.
    Busy,
    /// `no-answer`.
    NoAnswer,
    /// `failed`: could not be placed (e.g. an unreachable number).
    Failed,
    /// `canceled`: ended by the API before it was answered.
    Canceled,
    /// Any other value, kept as sent.
    Other(String),
}

impl CallStatus {
    /// Parses Twilio's value.
    pub fn parse(s: &str) -> CallStatus {
        match s {
            "queued" => CallStatus::Queued,
            "initiated" => CallStatus::Initiated,
            "ringing" => CallStatus::Ringing,
            "in-progress" | "answered" => CallStatus::InProgress,
            "completed" => CallStatus::Completed,
            "busy" => CallStatus::Busy,
            "no-answer" => CallStatus::NoAnswer,
            "failed" => CallStatus::Failed,
            "canceled" => CallStatus::Canceled,
            other => CallStatus::Other(other.to_owned()),
        }
    }

    /// Twilio's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            CallStatus::Queued => "queued",
            CallStatus::Initiated => "initiated",
            CallStatus::Ringing => "ringing",
            CallStatus::InProgress => "in-progress",
            CallStatus::Completed => "completed",
            CallStatus::Busy => "busy",
            CallStatus::NoAnswer => "no-answer",
            CallStatus::Failed => "failed",
            CallStatus::Canceled => "canceled",
            CallStatus::Other(s) => s,
        }
    }

    /// True once the call is over (completed, busy, no-answer, failed, canceled).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            CallStatus::Completed
                | CallStatus::Busy
                | CallStatus::NoAnswer
                | CallStatus::Failed
                | CallStatus::Canceled
        )
    }
}

/// One status callback from Twilio (`POST /call-status`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusCallback {
    /// The call.
    pub call_sid: String,
    /// The account.
    pub account_sid: String,
    /// Where the call is now.
    pub status: CallStatus,
    /// How long the call lasted (`CallDuration`, whole seconds; sent with `completed`).
    pub duration: Option<Duration>,
    /// The callback's `SequenceNumber` (they can arrive out of order).
    pub sequence_number: Option<u32>,
    /// The caller.
    pub from: Option<String>,
    /// The callee.
    pub to: Option<String>,
    /// The call's direction.
    pub direction: Option<Direction>,
    /// The answering-machine verdict, when detection was on.
    pub answered_by: Option<String>,
    /// Every field as sent (`Timestamp`, `SipResponseCode`, `CallbackSource`, …).
    pub form: WebhookForm,
}

impl StatusCallback {
    /// From the callback's form; `None` without a `CallSid` or `CallStatus`.
    pub fn from_form(form: WebhookForm) -> Option<StatusCallback> {
        let get = |k: &str| form.get(k).filter(|v| !v.is_empty()).map(str::to_owned);
        Some(StatusCallback {
            call_sid: get("CallSid")?,
            account_sid: get("AccountSid").unwrap_or_default(),
            status: CallStatus::parse(&get("CallStatus")?),
            duration: get("CallDuration")
                .and_then(|d| d.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
            sequence_number: get("SequenceNumber").and_then(|n| n.trim().parse().ok()),
            from: get("From"),
            to: get("To"),
            direction: get("Direction").map(|d| Direction::parse(&d)),
            answered_by: get("AnsweredBy"),
            form,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_the_token_or_the_key() {
        let tok = Credentials::AuthToken("tok".into());
        // base64("AC1:tok")
        assert_eq!(tok.basic_auth("AC1"), "Basic QUMxOnRvaw==");
        let key = Credentials::ApiKey {
            sid: "SK1".into(),
            secret: "sec".into(),
        };
        assert_eq!(key.basic_auth("AC1"), "Basic U0sxOnNlYw==");
        assert!(!format!("{key:?}").contains("sec\""));
        assert!(format!("{key:?}").contains("SK1"));
        assert!(!format!("{tok:?}").contains("tok"));
    }

    #[test]
    fn the_form_has_what_twilio_documents() {
        let mut call = OutboundCall::new("+1555", "+1666", Answer::Twiml("<Response/>".into()));
        call.ring_timeout_secs = Some(20);
        let f = call.form();
        assert_eq!(
            f,
            vec![
                ("To".into(), "+1555".into()),
                ("From".into(), "+1666".into()),
                ("Twiml".into(), "<Response/>".into()),
                ("Timeout".into(), "20".into()),
            ]
        );
        let f = OutboundCall::new("+1555", "+1666", Answer::Url("https://h/x".into()))
            .status_callback("https://h/s")
            .machine_detection(MachineDetection::DetectMessageEnd)
            .form();
        let events: Vec<&str> = f
            .iter()
            .filter(|(k, _)| k == "StatusCallbackEvent")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(events, ["initiated", "ringing", "answered", "completed"]);
        assert!(f.contains(&("Url".into(), "https://h/x".into())));
        assert!(f.contains(&("Method".into(), "POST".into())));
        assert!(f.contains(&("StatusCallback".into(), "https://h/s".into())));
        assert!(f.contains(&("MachineDetection".into(), "DetectMessageEnd".into())));
        let b = OutboundCall::to_bridge("https://b.example/", "+1555", "+1666");
        assert_eq!(
            b.answer,
            Answer::Url("https://b.example/incoming-call".into())
        );
        assert_eq!(
            b.status_callback.as_deref(),
            Some("https://b.example/call-status")
        );
    }

    #[test]
    fn errors_are_typed() {
        let body = r#"{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}"#;
        match RestError::from_status(401, None, body) {
            RestError::Unauthorized(e) => {
                assert_eq!(e.code, Some(20003));
                assert_eq!(e.status, Some(401));
                assert!(e.more_info.is_some());
            }
            other => panic!("{other:?}"),
        }
        let body = r#"{"code": 21211, "message": "Invalid 'To' Phone Number", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#;
        assert!(matches!(
            RestError::from_status(400, None, body),
            RestError::Rejected { status: 400, error } if error.code == Some(21211)
        ));
        assert!(matches!(
            RestError::from_status(429, Some("3"), "{}"),
            RestError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            RestError::from_status(503, None, "<html>down</html>"),
            RestError::Server { status: 503, error } if error.message.contains("down") && error.code.is_none()
        ));
    }

    #[test]
    fn status_callbacks_parse() {
        let form = WebhookForm::from_pairs([
            ("CallSid", "CA1"),
            ("AccountSid", "AC1"),
            ("CallStatus", "completed"),
            ("CallDuration", "42"),
            ("SequenceNumber", "3"),
            ("Direction", "outbound-api"),
            ("AnsweredBy", "human"),
        ]);
        let s = StatusCallback::from_form(form).unwrap();
        assert_eq!(s.status, CallStatus::Completed);
        assert!(s.status.is_final());
        assert_eq!(s.duration, Some(Duration::from_secs(42)));
        assert_eq!(s.sequence_number, Some(3));
        assert_eq!(s.direction, Some(Direction::OutboundApi));
        assert_eq!(s.answered_by.as_deref(), Some("human"));
        for (v, st) in [
            ("ringing", CallStatus::Ringing),
            ("in-progress", CallStatus::InProgress),
            ("busy", CallStatus::Busy),
            ("no-answer", CallStatus::NoAnswer),
            ("failed", CallStatus::Failed),
            ("canceled", CallStatus::Canceled),
            ("initiated", CallStatus::Initiated),
        ] {
            assert_eq!(CallStatus::parse(v), st);
            assert_eq!(CallStatus::parse(st.as_str()), st);
        }
        assert!(!CallStatus::Ringing.is_final());
        let no_status = WebhookForm::from_pairs([("CallSid", "CA1")]);
        assert_eq!(StatusCallback::from_form(no_status), None);
    }
}
