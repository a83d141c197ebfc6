//! Twilio Media Streams messages (bidirectional streams, `<Connect><Stream>`).
//!
//! [`TwilioMessage`] is what Twilio sends (`connected`, `start`, `media`, `dtmf`, `mark`,
//! `stop`; anything else is kept whole as [`TwilioMessage::Unknown`]); [`TwilioCommand`] is what
//! the bridge sends (`media`, `mark`, `clear`). Fields that Twilio sends as JSON strings
//! (`sequenceNumber`, `chunk`, `timestamp`) stay strings, with accessors that parse them. Extra
//! fields are tolerated everywhere. A numeric `chunk`/`timestamp`/`sequenceNumber` is accepted
//! too and kept as its decimal string.
//!
//! ```
//! use twilio_realtime::proto::twilio::{TwilioCommand, TwilioMessage};
//!
//! let frame = r#"{"event":"media","sequenceNumber":"3","streamSid":"MZ1",
//!   "media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//8="}}"#;
//! let TwilioMessage::Media(m) = TwilioMessage::parse(frame).unwrap() else { panic!() };
//! assert_eq!(m.media.timestamp_ms(), Some(5));
//! assert_eq!(m.media.payload, "//8=");
//!
//! let mark = TwilioCommand::Mark { stream_sid: "MZ1".into(), name: "m1".into() };
//! assert_eq!(mark.to_json(), r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m1"}}"#);
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Errors parsing a Twilio message.
#[derive(Debug)]
#[non_exhaustive]
pub enum TwilioError {
    /// The text is not JSON, or not a JSON object.
    Json {
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The object has no string `event` field.
    MissingEvent,
    /// A known event whose fields are missing or of the wrong type.
    InvalidMessage {
        /// The event name.
        event: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A `media` message whose payload is not valid base64.
    InvalidPayload {
        /// What the base64 decoder found.
        source: crate::proto::mulaw::Base64Error,
    },
}

impl fmt::Display for TwilioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TwilioError::Json { source } => {
                write!(f, "twilio message is not a JSON object: {source}")
            }
            TwilioError::MissingEvent => f.write_str("twilio message has no \"event\" field"),
            TwilioError::InvalidMessage { event, source } => {
                write!(f, "invalid twilio {event:?} message: {source}")
            }
            TwilioError::InvalidPayload { source } => {
                write!(f, "twilio media payload is not valid base64: {source}")
            }
        }
    }
}

impl std::error::Error for TwilioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TwilioError::Json { source } | TwilioError::InvalidMessage { source, .. } => {
                Some(source)
            }
            TwilioError::InvalidPayload { source } => Some(source),
            TwilioError::MissingEvent => None,
        }
    }
}

/// Accepts a JSON string or number, keeping it as a string.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum SN {
        S(String),
        N(serde_json::Number),
    }
    Ok(Option::<SN>::deserialize(d)?.map(|v| match v {
        SN::S(s) => s,
        SN::N(n) => n.to_string(),
    }))
}

/// What Twilio sends on a media stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TwilioMessage {
    /// The first message: `{"event":"connected","protocol":"Call","version":"1.0.0"}`.
    Connected(Connected),
    /// Stream metadata: streamSid, callSid, custom parameters, media format.
    Start(Start),
    /// 20 ms of caller audio (base64 µ-law).
    Media(Media),
    /// The caller pressed a key.
    Dtmf(Dtmf),
    /// Playback reached a mark the bridge sent (or a `clear` discarded it).
    Mark(Mark),
    /// The stream ended.
    Stop(Stop),
    /// Any other event, kept whole.
    Unknown(Value),
}

/// The `connected` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Connected {
    /// Usually `"Call"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Protocol version, e.g. `"1.0.0"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The `start` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    /// Message sequence number (a string on the wire).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub sequence_number: Option<String>,
    /// The stream id every message of the bridge must carry.
    pub stream_sid: String,
    /// The stream's details.
    pub start: StartInfo,
}

/// The body of `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartInfo {
    /// The stream id (repeated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sid: Option<String>,
    /// The Twilio account.
    #[serde(default)]
    pub account_sid: String,
    /// The call.
    #[serde(default)]
    pub call_sid: String,
    /// The tracks streamed, e.g. `["inbound"]`.
    #[serde(default)]
    pub tracks: Vec<String>,
    /// `<Parameter>` values from the TwiML.
    #[serde(default)]
    pub custom_parameters: BTreeMap<String, String>,
    /// The audio format.
    #[serde(default)]
    pub media_format: MediaFormat,
}

/// The audio format of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    /// `"audio/x-mulaw"`.
    pub encoding: String,
    /// 8000.
    pub sample_rate: u32,
    /// 1.
    pub channels: u32,
}

impl MediaFormat {
    /// True for the one format the bridge speaks, and the one Twilio's bidirectional streams
    /// always carry: `audio/x-mulaw`, 8000 Hz, one channel.
    pub fn is_mulaw_8k_mono(&self) -> bool {
        self.encoding.eq_ignore_ascii_case("audio/x-mulaw")
            && self.sample_rate == 8000
            && self.channels == 1
    }
}

impl Default for MediaFormat {
    fn default() -> Self {
        MediaFormat {
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
        }
    }
}

/// The `media` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    /// Message sequence number.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub sequence_number: Option<String>,
    /// The stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sid: Option<String>,
    /// The audio.
    pub media: MediaInfo,
}

/// The body of `media`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaInfo {
    /// `"inbound"` or `"outbound"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    /// Chunk number (a string on the wire).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub chunk: Option<String>,
    /// Milliseconds since the stream started (a string on the wire).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp: Option<String>,
    /// Base64 µ-law audio.
    pub payload: String,
}

impl MediaInfo {
    /// The timestamp in milliseconds, if it parses.
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.timestamp.as_deref()?.parse().ok()
    }

    /// The chunk number, if it parses.
    pub fn chunk_number(&self) -> Option<u64> {
        self.chunk.as_deref()?.parse().ok()
    }
}

/// The `dtmf` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dtmf {
    /// Message sequence number.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub sequence_number: Option<String>,
    /// The stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sid: Option<String>,
    /// The key.
    pub dtmf: DtmfInfo,
}

/// The body of `dtmf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmfInfo {
    /// `"inbound_track"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    /// The digit pressed.
    pub digit: String,
}

/// The `mark` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// Message sequence number.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub sequence_number: Option<String>,
    /// The stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sid: Option<String>,
    /// The mark.
    pub mark: MarkInfo,
}

/// The body of `mark`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkInfo {
    /// The name the bridge gave it.
    pub name: String,
}

/// The `stop` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stop {
    /// Message sequence number.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub sequence_number: Option<String>,
    /// The stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sid: Option<String>,
    /// Call details.
    #[serde(default)]
    pub stop: StopInfo,
}

/// The body of `stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StopInfo {
    /// The Twilio account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_sid: Option<String>,
    /// The call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_sid: Option<String>,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    event: Option<std::borrow::Cow<'a, str>>,
}

fn peek_event(text: &str) -> Result<Option<String>, TwilioError> {
    // A borrowed peek: the payload is skipped, not copied.
    let p: Peek<'_> = serde_json::from_str(text).map_err(|source| TwilioError::Json { source })?;
    Ok(p.event.map(|e| e.into_owned()))
}

fn body<'a, T: Deserialize<'a>>(event: &str, text: &'a str) -> Result<T, TwilioError> {
    serde_json::from_str(text).map_err(|source| TwilioError::InvalidMessage {
        event: event.to_owned(),
        source,
    })
}

fn with_event<T: Serialize>(event: &str, body: &T) -> String {
    let mut v = serde_json::to_value(body).unwrap_or(Value::Null);
    let mut out = serde_json::Map::new();
    out.insert("event".into(), Value::String(event.into()));
    if let Value::Object(m) = &mut v {
        out.append(m);
    }
    Value::Object(out).to_string()
}

/// A `media` frame read without copying: what the caller-audio lane needs from the 50 frames a
/// second of a live call (the payload, borrowed from the frame, and the timestamp).
///
/// [`MediaFrame::parse`] accepts exactly the frames [`TwilioMessage::parse`] turns into
/// [`TwilioMessage::Media`] (the same fields with the same types, the same base64 check), in
/// one pass and without allocating (unless the payload holds JSON escapes); anything else,
/// including a malformed `media`, is `None`, and the full parse then says what is wrong.
///
/// ```
/// use twilio_realtime::proto::twilio::MediaFrame;
///
/// let text = r#"{"event":"media","sequenceNumber":"3","streamSid":"MZ1",
///   "media":{"track":"inbound","chunk":"2","timestamp":"40","payload":"//8="}}"#;
/// let m = MediaFrame::parse(text).expect("a media frame");
/// assert_eq!((m.payload(), m.timestamp_ms()), ("//8=", Some(40)));
/// assert!(MediaFrame::parse(r#"{"event":"mark","mark":{"name":"x"}}"#).is_none());
/// ```
#[derive(Debug)]
pub struct MediaFrame<'a> {
    payload: std::borrow::Cow<'a, str>,
    timestamp_ms: Option<u64>,
}

impl<'a> MediaFrame<'a> {
    /// The frame, if `text` is a valid `media` message.
    pub fn parse(text: &'a str) -> Option<MediaFrame<'a>> {
        let w: MediaWire<'a> = serde_json::from_str(text).ok()?;
        if w.event != "media" {
            return None;
        }
        crate::proto::mulaw::validate_base64(&w.media.payload).ok()?;
        Some(MediaFrame {
            payload: w.media.payload,
            timestamp_ms: w.media.timestamp.and_then(|t| t.0),
        })
    }

    /// The base64 µ-law audio.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    /// The timestamp in milliseconds, if present and a whole number (as
    /// [`MediaInfo::timestamp_ms`]).
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.timestamp_ms
    }
}

/// [`Media`] with every field borrowed or skipped: the same names and types, so the same frames
/// parse (unknown fields are ignored by both).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaWire<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    #[allow(dead_code)] // checked for its type, like `Media::sequence_number`
    sequence_number: Option<StrOrNum>,
    #[serde(default, borrow)]
    #[allow(dead_code)]
    stream_sid: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    media: MediaInfoWire<'a>,
}

#[derive(Deserialize)]
struct MediaInfoWire<'a> {
    #[serde(default, borrow)]
    #[allow(dead_code)]
    track: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    #[allow(dead_code)]
    chunk: Option<StrOrNum>,
    #[serde(default)]
    timestamp: Option<StrOrNum>,
    #[serde(borrow)]
    payload: std::borrow::Cow<'a, str>,
}

/// A string-or-number field (as [`string_or_number`] accepts) read without allocating: the
/// value as a `u64` where the text of it parses as one.
struct StrOrNum(Option<u64>);

impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrOrNum, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StrOrNum;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.parse().ok()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(Some(v)))
            }
            // `string_or_number` keeps a negative or fractional number as its text, which
            // then does not parse as a `u64`.
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(u64::try_from(v).ok()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl TwilioMessage {
    /// Parses one text frame from Twilio.
    pub fn parse(text: &str) -> Result<TwilioMessage, TwilioError> {
        let Some(event) = peek_event(text)? else {
            return Err(TwilioError::MissingEvent);
        };
        Ok(match event.as_str() {
            "connected" => TwilioMessage::Connected(body(&event, text)?),
            "start" => TwilioMessage::Start(body(&event, text)?),
            "media" => {
                let m: Media = body(&event, text)?;
                crate::proto::mulaw::validate_base64(&m.media.payload)
                    .map_err(|source| TwilioError::InvalidPayload { source })?;
                TwilioMessage::Media(m)
            }
            "dtmf" => TwilioMessage::Dtmf(body(&event, text)?),
            "mark" => TwilioMessage::Mark(body(&event, text)?),
            "stop" => TwilioMessage::Stop(body(&event, text)?),
            _ => TwilioMessage::Unknown(
                serde_json::from_str(text).map_err(|source| TwilioError::Json { source })?,
            ),
        })
    }

    /// The `event` name.
    pub fn event_name(&self) -> &str {
        match self {
            TwilioMessage::Connected(_) => "connected",
            TwilioMessage::Start(_) => "start",
            TwilioMessage::Media(_) => "media",
            TwilioMessage::Dtmf(_) => "dtmf",
            TwilioMessage::Mark(_) => "mark",
            TwilioMessage::Stop(_) => "stop",
            TwilioMessage::Unknown(v) => v.get("event").and_then(Value::as_str).unwrap_or(""),
        }
    }

    /// The stream id the message carries, if any.
    pub fn stream_sid(&self) -> Option<&str> {
        match self {
            TwilioMessage::Connected(_) => None,
            TwilioMessage::Start(s) => Some(&s.stream_sid),
            TwilioMessage::Media(m) => m.stream_sid.as_deref(),
            TwilioMessage::Dtmf(d) => d.stream_sid.as_deref(),
            TwilioMessage::Mark(m) => m.stream_sid.as_deref(),
            TwilioMessage::Stop(s) => s.stream_sid.as_deref(),
            TwilioMessage::Unknown(v) => v.get("streamSid").and_then(Value::as_str),
        }
    }

    /// The message in Twilio's wire shape (used by simulators and round trips).
    pub fn to_json(&self) -> String {
        match self {
            TwilioMessage::Connected(b) => with_event("connected", b),
            TwilioMessage::Start(b) => with_event("start", b),
            TwilioMessage::Media(b) => with_event("media", b),
            TwilioMessage::Dtmf(b) => with_event("dtmf", b),
            TwilioMessage::Mark(b) => with_event("mark", b),
            TwilioMessage::Stop(b) => with_event("stop", b),
            TwilioMessage::Unknown(v) => v.to_string(),
        }
    }
}

/// What the bridge sends Twilio.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TwilioCommand {
    /// Audio to play to the caller (base64 µ-law).
    Media {
        /// The stream id from `start`.
        stream_sid: String,
        /// Base64 µ-law.
        payload: String,
    },
    /// Ask Twilio to echo `name` when playback reaches this point.
    Mark {
        /// The stream id from `start`.
        stream_sid: String,
        /// The mark's name.
        name: String,
    },
    /// Drop all buffered audio (Twilio echoes every pending mark).
    Clear {
        /// The stream id from `start`.
        stream_sid: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommandWire {
    event: String,
    stream_sid: Option<String>,
    media: Option<PayloadWire>,
    mark: Option<MarkInfo>,
}

#[derive(Deserialize)]
struct PayloadWire {
    payload: String,
}

impl TwilioCommand {
    /// The command's JSON.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(96);
        match self {
            TwilioCommand::Media {
                stream_sid,
                payload,
            } => write_media_json(&mut s, stream_sid, payload),
            TwilioCommand::Mark { stream_sid, name } => write_mark_json(&mut s, stream_sid, name),
            TwilioCommand::Clear { stream_sid } => {
                s.push_str(r#"{"event":"clear","streamSid":"#);
                push_json_str(&mut s, stream_sid);
                s.push('}');
            }
        }
        s
    }

    /// Parses a command (what a Twilio simulator receives). A command without a streamSid is
    /// an error: Twilio rejects it.
    pub fn parse(text: &str) -> Result<TwilioCommand, TwilioError> {
        let w: CommandWire =
            serde_json::from_str(text).map_err(|source| TwilioError::Json { source })?;
        let invalid = |msg: &str| TwilioError::InvalidMessage {
            event: w.event.clone(),
            source: <serde_json::Error as serde::de::Error>::custom(msg),
        };
        let stream_sid = match &w.stream_sid {
            Some(s) if !s.is_empty() => s.clone(),
            _ => return Err(invalid("missing streamSid")),
        };
        match w.event.as_str() {
            "media" => match &w.media {
                Some(m) => Ok(TwilioCommand::Media {
                    stream_sid,
                    payload: m.payload.clone(),
                }),
                None => Err(invalid("missing media.payload")),
            },
            "mark" => match &w.mark {
                Some(m) => Ok(TwilioCommand::Mark {
                    stream_sid,
                    name: m.name.clone(),
                }),
                None => Err(invalid("missing mark.name")),
            },
            "clear" => Ok(TwilioCommand::Clear { stream_sid }),
            _ => Err(invalid("unknown event")),
        }
    }
}

/// Appends `s` as a JSON string literal, copying directly when nothing needs escaping (the
/// case for base64 payloads and Twilio SIDs).
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&Value::String(s.to_owned()).to_string());
    }
}

/// Appends the `media` command JSON for (`stream_sid`, `payload`) to `out` without serde.
pub fn write_media_json(out: &mut String, stream_sid: &str, payload: &str) {
    out.reserve(48 + stream_sid.len() + payload.len());
    out.push_str(r#"{"event":"media","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","media":{"payload":"#);
    push_json_str(out, payload);
    out.push_str("}}");
}

/// Appends the `mark` command JSON for (`stream_sid`, `name`) to `out` without serde.
pub fn write_mark_json(out: &mut String, stream_sid: &str, name: &str) {
    out.push_str(r#"{"event":"mark","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","mark":{"name":"#);
    push_json_str(out, name);
    out.push_str("}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_when_needed() {
        let mut s = String::new();
        write_mark_json(&mut s, "MZ1", "a\"b\\c\n");
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["mark"]["name"], "a\"b\\c\n");
    }
}
