//! OpenAI Realtime over SIP, the parts with no I/O: the Standard Webhooks signature OpenAI
//! puts on its webhooks, the `realtime.call.incoming` payload, and the bodies of the REST
//! call-control requests (`accept`, `reject`, `refer`).
//!
//! A Twilio Elastic SIP trunk sends the call to OpenAI's SIP endpoint; OpenAI posts a signed
//! `realtime.call.incoming` webhook to the application, which accepts the call over REST
//! with the session configuration and then drives it over a "sideband" WebSocket. No audio
//! passes through the application. The facts here come from the protocol brief vendored as
//! `spec/realtime-sip.md` (cited by section, e.g. "brief §3.2").
//!
//! # Signatures (brief §3.2)
//!
//! The signature is base64(HMAC-SHA256(key, `webhook-id` + `.` + `webhook-timestamp` + `.` +
//! raw body)), where the key is the base64 after `whsec_` in the endpoint's signing secret
//! (or the secret's UTF-8 bytes when it has no `whsec_` prefix). The `webhook-signature`
//! header holds one or more space-separated `v1,<base64>` entries (two during a secret
//! rotation); any match is enough. The timestamp may be at most 300 s old or 300 s in the
//! future. [`verify`] does exactly what openai-python's verifier does, with the current time
//! passed in; [`sign`] makes the header a sender (the simulator) puts on a delivery.
//!
//! ```
//! use twilio_realtime::proto::sip::{sign, verify, WebhookError, WebhookSecret};
//!
//! let secret = WebhookSecret::new("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
//! let body = br#"{"type":"realtime.call.incoming"}"#;
//! let signature = sign(&secret, "wh_1", 1_750_287_078, body);
//! let headers = [
//!     ("webhook-id", "wh_1"),
//!     ("webhook-timestamp", "1750287078"),
//!     ("webhook-signature", signature.as_str()),
//! ];
//! let ok = verify(&secret, &headers, body, 1_750_287_088).unwrap();
//! assert_eq!(ok.webhook_id, "wh_1");
//! assert_eq!(verify(&secret, &headers, b"{}", 1_750_287_088).unwrap_err(), WebhookError::NoMatch);
//! assert_eq!(verify(&secret, &headers, body, 1_750_287_379).unwrap_err(), WebhookError::TooOld);
//! ```

use std::fmt;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::agent::Agent;
use crate::proto::realtime::{SessionSettings, TurnDetection};

type HmacSha256 = Hmac<Sha256>;

/// How far a webhook's timestamp may be from now, either way, in seconds (openai-python's
/// default `tolerance=300`, brief §3.2 step 3; exactly 300 s is accepted).
pub const TOLERANCE_SECS: i64 = 300;

/// The model every SDK example accepts SIP calls with (brief §4.1, §6), used when the
/// application names none.
pub const DEFAULT_SIP_MODEL: &str = "gpt-realtime";

/// The `type` of the webhook event announcing a SIP call to the Realtime API.
pub const CALL_INCOMING: &str = "realtime.call.incoming";

/// Why a webhook delivery was refused (or a secret could not be used).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookError {
    /// A required header is missing (`webhook-id`, `webhook-timestamp` or
    /// `webhook-signature`).
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    InvalidTimestamp,
    /// The timestamp is more than [`TOLERANCE_SECS`] in the past.
    TooOld,
    /// The timestamp is more than [`TOLERANCE_SECS`] in the future.
    TooNew,
    /// No signature in the header matches the body.
    NoMatch,
    /// The body is not UTF-8 (the official verifier refuses it too).
    BodyNotUtf8,
    /// The signing secret starts with `whsec_` but the rest is not base64.
    InvalidSecret,
    /// The signed body is not a webhook event (bad JSON or a missing field).
    Payload(String),
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookError::MissingHeader(h) => write!(f, "could not find {h} header"),
            WebhookError::InvalidTimestamp => f.write_str("invalid webhook timestamp format"),
            WebhookError::TooOld => f.write_str("webhook timestamp is too old"),
            WebhookError::TooNew => f.write_str("webhook timestamp is too new"),
            WebhookError::NoMatch => {
                f.write_str("the given webhook signature does not match the expected signature")
            }
            WebhookError::BodyNotUtf8 => f.write_str("webhook body is not UTF-8"),
            WebhookError::InvalidSecret => {
                f.write_str("webhook secret after whsec_ is not valid base64")
            }
            WebhookError::Payload(m) => write!(f, "webhook payload: {m}"),
        }
    }
}

impl std::error::Error for WebhookError {}

/// A webhook endpoint's signing secret, as the HMAC key it stands for.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// The secret as the dashboard shows it (`whsec_…`: the base64 after the prefix is the
    /// key). A secret without the prefix is used as its UTF-8 bytes, as the official verifier
    /// does (brief §3.2 step 5).
    pub fn new(secret: &str) -> Result<WebhookSecret, WebhookError> {
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| WebhookError::InvalidSecret)?,
            None => secret.as_bytes().to_vec(),
        };
        Ok(WebhookSecret { key })
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(id.as_bytes());
        m.update(b".");
        m.update(timestamp.as_bytes());
        m.update(b".");
        m.update(body);
        m
    }
}

/// What a verified delivery carried besides its body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// The `webhook-id` header: the same on every retry of one delivery, so the key to
    /// ignore duplicates by (brief §3.3).
    pub webhook_id: String,
    /// The `webhook-timestamp` (Unix seconds; it changes on each retry).
    pub timestamp: i64,
}

fn header<'a>(headers: &[(&'a str, &'a str)], name: &'static str) -> Result<&'a str, WebhookError> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .ok_or(WebhookError::MissingHeader(name))
}

/// Checks a delivery as openai-python's `verify_signature` does (brief §3.2): the three
/// headers looked up case-insensitively, the timestamp within [`TOLERANCE_SECS`] of
/// `now_unix` either way, then any `webhook-signature` entry matching HMAC-SHA256 of
/// `id.timestamp.body` (compared in constant time). `body` is the raw body as received; it is
/// never re-serialised.
///
/// Entries are split on whitespace; a leading `v1,` is stripped, and an entry without it is
/// compared as it is (the SDK's behaviour, so a `v1a,` entry never matches).
pub fn verify(
    secret: &WebhookSecret,
    headers: &[(&str, &str)],
    body: &[u8],
    now_unix: i64,
) -> Result<Verified, WebhookError> {
    let signatures = header(headers, "webhook-signature")?;
    let timestamp_text = header(headers, "webhook-timestamp")?;
    let id = header(headers, "webhook-id")?;
    if std::str::from_utf8(body).is_err() {
        return Err(WebhookError::BodyNotUtf8);
    }
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| WebhookError::InvalidTimestamp)?;
    if now_unix.saturating_sub(timestamp) > TOLERANCE_SECS {
        return Err(WebhookError::TooOld);
    }
    if timestamp > now_unix.saturating_add(TOLERANCE_SECS) {
        return Err(WebhookError::TooNew);
    }
    let mac = secret.mac(id, timestamp_text, body);
    let matched = signatures.split_whitespace().any(|entry| {
        let candidate = entry.strip_prefix("v1,").unwrap_or(entry);
        match base64::engine::general_purpose::STANDARD.decode(candidate) {
            Ok(tag) => mac.clone().verify_slice(&tag).is_ok(),
            Err(_) => false,
        }
    });
    if !matched {
        return Err(WebhookError::NoMatch);
    }
    Ok(Verified {
        webhook_id: id.to_owned(),
        timestamp,
    })
}

/// The `webhook-signature` entry (`v1,<base64>`) for a delivery: what OpenAI sends, what the
/// simulator signs with.
pub fn sign(secret: &WebhookSecret, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret
        .mac(webhook_id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// One SIP header of the INVITE as the webhook reports it. **Untrusted**: the caller's side
/// wrote it (brief §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipHeader {
    /// The header name as sent.
    pub name: String,
    /// The header value as sent.
    pub value: String,
}

/// A `realtime.call.incoming` event: a SIP call waiting to be accepted or rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IncomingCall {
    /// The event id (`evt_…`); not the `webhook-id`.
    pub event_id: String,
    /// When the event was created (Unix seconds).
    pub created_at: i64,
    /// The call id to pass unchanged to accept, reject, refer, hangup and the sideband. Never
    /// parse it (brief §3.1).
    pub call_id: String,
    /// The INVITE's headers (authorization headers excluded), in order, repeats kept.
    /// Untrusted caller metadata: never let them pick a destination or pass a check.
    pub sip_headers: Vec<SipHeader>,
    /// The negotiated media protection (`"rtp"`, `"srtp"`, another string, or absent).
    pub sip_media_security: Option<String>,
}

impl IncomingCall {
    /// The first header with this name (case-insensitive). Untrusted.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.sip_headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The `From` header as sent (untrusted; for display and logs, not for decisions).
    pub fn from_header(&self) -> Option<&str> {
        self.header("From")
    }

    /// The `To` header as sent (untrusted).
    pub fn to_header(&self) -> Option<&str> {
        self.header("To")
    }
}

/// A verified webhook event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WebhookEvent {
    /// `realtime.call.incoming`.
    CallIncoming(IncomingCall),
    /// Any other event type (e.g. `live.transport.incoming`), kept whole.
    Other {
        /// The event's `type`.
        kind: String,
        /// The whole event.
        event: Value,
    },
}

#[derive(Deserialize)]
struct EventWire {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created_at: i64,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct CallDataWire {
    call_id: String,
    sip_headers: Vec<SipHeader>,
    #[serde(default)]
    sip_media_security: Option<String>,
}

impl WebhookEvent {
    /// Parses a verified body. `realtime.call.incoming` needs `data.call_id` and
    /// `data.sip_headers` (brief §3.1); other event types are kept as JSON.
    pub fn parse(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
        let event: Value =
            serde_json::from_slice(body).map_err(|e| WebhookError::Payload(e.to_string()))?;
        let wire =
            EventWire::deserialize(&event).map_err(|e| WebhookError::Payload(e.to_string()))?;
        if wire.kind != CALL_INCOMING {
            return Ok(WebhookEvent::Other {
                kind: wire.kind,
                event,
            });
        }
        let data = CallDataWire::deserialize(&wire.data)
            .map_err(|e| WebhookError::Payload(e.to_string()))?;
        Ok(WebhookEvent::CallIncoming(IncomingCall {
            event_id: wire.id,
            created_at: wire.created_at,
            call_id: data.call_id,
            sip_headers: data.sip_headers,
            sip_media_security: data.sip_media_security,
        }))
    }
}

/// Why a session configuration cannot be sent on a SIP call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SipConfigError {
    /// Server VAD's `threshold`, `prefix_padding_ms` or `silence_duration_ms` is set: the
    /// Realtime Calls API answers `400 Unknown parameter` for them on SIP sessions (brief
    /// §4.1, agents-js `SIP_UNSUPPORTED_TURN_DETECTION_FIELDS`).
    UnsupportedTurnDetectionField(&'static str),
}

impl fmt::Display for SipConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SipConfigError::UnsupportedTurnDetectionField(name) => write!(
                f,
                "turn_detection.{name} is refused by the Realtime Calls API for SIP sessions"
            ),
        }
    }
}

impl std::error::Error for SipConfigError {}

/// The session configuration `cfg` as a SIP call takes it (for `accept` and for a
/// sideband `session.update`): the GA shape of [`SessionSettings`] without the audio formats
/// (the codec is negotiated in SDP, brief §4.1), refusing the server-VAD fields the Calls API
/// rejects.
pub fn sip_session(cfg: &SessionSettings) -> Result<Value, SipConfigError> {
    if let Some(TurnDetection::ServerVad {
        threshold,
        prefix_padding_ms,
        silence_duration_ms,
        ..
    }) = cfg.turn_detection_setting()
    {
        if threshold.is_some() {
            return Err(SipConfigError::UnsupportedTurnDetectionField("threshold"));
        }
        if prefix_padding_ms.is_some() {
            return Err(SipConfigError::UnsupportedTurnDetectionField(
                "prefix_padding_ms",
            ));
        }
        if silence_duration_ms.is_some() {
            return Err(SipConfigError::UnsupportedTurnDetectionField(
                "silence_duration_ms",
            ));
        }
    }
    let cfg = cfg.clone().without_audio_formats();
    Ok(serde_json::to_value(&cfg).unwrap_or_else(|_| unreachable!("plain data")))
}

/// The session configuration for `agent` on a SIP call: `base` (turn detection,
/// transcription, noise reduction, …) with the agent's instructions, tools (its function
/// tools, handoffs, `end_call`, `transfer_call`) and voice, as the Media Streams path
/// builds it but without audio formats.
pub fn agent_session(agent: &Agent, base: &SessionSettings) -> SessionSettings {
    let mut cfg = base
        .clone()
        .instructions(agent.instructions())
        .tools(agent.tool_definitions());
    if let Some(v) = agent.voice_name() {
        cfg = cfg.voice(v);
    }
    cfg
}

/// The body of `POST /v1/realtime/calls/{call_id}/accept` (brief §4.1): `type:"realtime"`,
/// the model, and [`agent_session`] of `agent` over `base` as [`sip_session`] writes it.
///
/// ```
/// use twilio_realtime::agent::Agent;
/// use twilio_realtime::proto::realtime::{SessionSettings, TurnDetection};
/// use twilio_realtime::proto::sip::{accept_body, SipConfigError};
///
/// let agent = Agent::new("Concierge", "Be brief.").voice("marin");
/// let body = accept_body(&agent, &SessionSettings::new(), "gpt-realtime").unwrap();
/// assert_eq!(body["type"], "realtime");
/// assert_eq!(body["model"], "gpt-realtime");
/// assert_eq!(body["audio"]["output"]["voice"], "marin");
/// assert!(body["audio"]["input"].get("format").is_none());
///
/// let vad = TurnDetection::ServerVad {
///     threshold: Some(0.6), prefix_padding_ms: None, silence_duration_ms: None,
///     create_response: None, interrupt_response: None, idle_timeout_ms: None,
/// };
/// let refused = accept_body(&agent, &SessionSettings::new().turn_detection(vad), "gpt-realtime");
/// assert_eq!(refused.unwrap_err(), SipConfigError::UnsupportedTurnDetectionField("threshold"));
/// ```
pub fn accept_body(
    agent: &Agent,
    base: &SessionSettings,
    model: &str,
) -> Result<Value, SipConfigError> {
    let cfg = agent_session(agent, base).model(model);
    sip_session(&cfg)
}

/// The body of `POST …/reject`: `{"status_code": code}` (a SIP status; OpenAI's default when
/// omitted is 603 Decline, brief §4).
pub fn reject_body(status_code: u16) -> Value {
    serde_json::json!({ "status_code": status_code })
}

/// The body of `POST …/refer`: `{"target_uri": uri}`, the SIP `Refer-To` value such as
/// `tel:+14155550123` or `sip:agent@example.com` (brief §4).
pub fn refer_body(target_uri: &str) -> Value {
    serde_json::json!({ "target_uri": target_uri })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturating_edges_do_not_overflow() {
        let s = WebhookSecret::new("k").unwrap();
        let sig = sign(&s, "id", i64::MIN, b"x");
        let ts = i64::MIN.to_string();
        let h = [
            ("webhook-id", "id"),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", sig.as_str()),
        ];
        assert_eq!(verify(&s, &h, b"x", i64::MAX), Err(WebhookError::TooOld));
        let ts = i64::MAX.to_string();
        let h = [
            ("webhook-id", "id"),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", sig.as_str()),
        ];
        assert_eq!(verify(&s, &h, b"x", i64::MIN), Err(WebhookError::TooNew));
    }

    #[test]
    fn bad_whsec_base64_is_an_error() {
        assert_eq!(
            WebhookSecret::new("whsec_!!!").unwrap_err(),
            WebhookError::InvalidSecret
        );
    }
}
