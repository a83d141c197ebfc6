//! What went wrong on a call, as a type a program can match on: [`CallError`].
//!
//! A call reports each error twice at most: as a [`SessionEvent::Error`] when it happens, and,
//! when the error ended the call, as [`CloseReason::Error`]. Both carry the same
//! [`CallError`], so an application tells a refused API key from an unreachable host without
//! reading text:
//!
//! ```
//! use twilio_realtime::{CallError, CloseReason};
//!
//! fn advice(reason: &CloseReason) -> &'static str {
//!     match reason {
//!         CloseReason::Error(CallError::ModelRejected { status: 401 | 403 }) => "check OPENAI_API_KEY",
//!         CloseReason::Error(CallError::ModelRejected { status: 429 }) => "rate limited: back off",
//!         CloseReason::Error(CallError::ModelUnreachable { .. }) => "check the network or the model URL",
//!         CloseReason::Error(e) if e.origin() == twilio_realtime::ErrorSource::Twilio => "the caller's side failed",
//!         _ => "",
//!     }
//! }
//! assert_eq!(advice(&CloseReason::Error(CallError::ModelRejected { status: 401 })), "check OPENAI_API_KEY");
//! ```
//!
//! The lower-level error under a socket failure (an [`std::io::Error`], a TLS failure, a
//! WebSocket protocol error) is kept as a [`Cause`] and returned by
//! [`std::error::Error::source`].
//!
//! [`SessionEvent::Error`]: crate::events::SessionEvent::Error
//! [`CloseReason::Error`]: crate::events::CloseReason::Error

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::io::ws::{CloseInfo, WsError};

/// Which side an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorSource {
    /// The model: its connection, its events, its refusals.
    Model,
    /// The Twilio side: its socket and its messages.
    Twilio,
    /// A tool: failed, timed out, panicked, unknown or not approved in time.
    Tool,
    /// The application: a refused command, or a panic in its code on the call's threads.
    Application,
}

/// The lower-level error under a [`CallError`] (a socket, TLS or WebSocket error), shared so
/// that the `CallError` can be cloned. [`std::error::Error::source`] of the `CallError` returns
/// it; [`Cause::downcast_ref`] reaches the concrete type (e.g. [`std::io::Error`] to read its
/// [`kind`](std::io::Error::kind)). Two causes are equal when their texts are.
#[derive(Clone)]
pub struct Cause(Arc<dyn StdError + Send + Sync + 'static>);

impl Cause {
    /// Wraps an error.
    pub fn new(error: impl StdError + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(error))
    }

    /// The error itself.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }

    /// The error as `T`, if it is one (this error only, not its own sources).
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// The [`std::io::ErrorKind`] of the first [`std::io::Error`] in this error's chain (itself
    /// or one of its sources), if any: `ConnectionRefused`, `TimedOut`, `NotFound`, ….
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut e: Option<&(dyn StdError + 'static)> = Some(self.get_ref());
        while let Some(err) = e {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            e = err.source();
        }
        None
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}

/// An error of one call. Reported as [`crate::events::SessionEvent::Error`] (the call goes on
/// unless a `Closed` follows) and, when it ended the call, in
/// [`crate::events::CloseReason::Error`]. Its text never carries audio, keys or a peer's
/// free text beyond what the variant names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// The model's endpoint answered the WebSocket upgrade with this HTTP status instead of
    /// `101` (401: bad API key, 403: no access, 404: unknown model or path, 429: rate limited).
    ModelRejected {
        /// The HTTP status.
        status: u16,
    },
    /// The model's host could not be reached: its name did not resolve, or none of its
    /// addresses took a TCP connection within `WsConfig::connect_timeout`.
    ModelUnreachable {
        /// The resolver's or the connect's error ([`Cause::io_kind`] tells which).
        cause: Cause,
    },
    /// The TLS handshake with the model failed (e.g. a certificate nobody trusts).
    ModelTls {
        /// The TLS error.
        cause: Cause,
    },
    /// The model's TLS and WebSocket handshake did not finish within
    /// `WsConfig::handshake_timeout`.
    ModelHandshakeTimeout,
    /// The model's WebSocket handshake failed otherwise (a malformed answer, a socket error).
    ModelHandshake {
        /// The handshake's error.
        cause: Cause,
    },
    /// The model request could not be built from the configuration (refused before
    /// connecting): a URL that is not `ws://` or `wss://`, a header name or value HTTP does not
    /// allow.
    InvalidModelRequest {
        /// What was wrong (URLs redacted).
        message: String,
    },
    /// The model refused the session configuration the bridge needs: an `error` naming the
    /// first `session.update`, or a `session.updated` whose audio format is not `audio/pcmu`.
    ModelConfigRejected {
        /// The refused parameter as the server named it (e.g. `session.audio.output.voice`),
        /// if it named one.
        param: Option<String>,
        /// The server's message (or what the `session.updated` showed).
        message: String,
    },
    /// The model connection closed (with the peer's close frame, if it sent one) or failed
    /// after it was open.
    ModelDisconnected {
        /// The close frame the model sent, if any.
        close: Option<CloseInfo>,
        /// The socket's error, if it failed rather than closed.
        cause: Option<Cause>,
    },
    /// The model answered no WebSocket ping (nor sent anything) within
    /// `CallConfig::model_pong_timeout`: the connection counts as lost.
    ModelUnresponsive {
        /// How long the bridge waited after its ping.
        waited: Duration,
    },
    /// The model sent an `error` event (most leave the call going).
    ModelError {
        /// The server's error code (e.g. `invalid_value`), if any.
        code: Option<String>,
        /// The server's message.
        message: String,
    },
    /// The model sent something the bridge could not use (not JSON, an event about an item
    /// that does not exist); skipped.
    BadModelEvent {
        /// What was wrong.
        message: String,
    },
    /// The Twilio WebSocket closed or failed without a `stop`: the peer vanished, sent a
    /// message over the hard size cap, or stopped reading until the write timed out.
    TwilioGone {
        /// The close frame Twilio sent, if any.
        close: Option<CloseInfo>,
        /// The socket's error, if it failed rather than closed.
        cause: Option<Cause>,
    },
    /// After `start`, Twilio sent nothing for `CallConfig::twilio_silence_timeout` (a live
    /// stream sends `media` every 20 ms).
    TwilioSilent {
        /// How long nothing came.
        waited: Duration,
    },
    /// The model connection opened but its session was not confirmed (Realtime's
    /// `session.updated` with µ-law, GPT-Live's `session.started`) within
    /// `CallConfig::model_setup_timeout`.
    ModelSetupTimeout {
        /// How long the bridge waited after the connection opened.
        waited: Duration,
    },
    /// Twilio opened the stream but sent no `start` within `CallConfig::start_timeout`.
    StreamNeverStarted {
        /// How long the bridge waited.
        waited: Duration,
    },
    /// The stream was refused on `start`: a missing or reused one-time token, the
    /// application's start check, or an agent factory that panicked.
    StreamRefused {
        /// Why (the check's own text).
        reason: String,
    },
    /// Twilio's `start` announced a `mediaFormat` other than `audio/x-mulaw`, 8000 Hz, mono;
    /// the stream was refused before any of its audio reached the model.
    UnsupportedMediaFormat {
        /// The announced encoding (its first 64 characters).
        encoding: String,
        /// The announced sample rate.
        sample_rate: u32,
        /// The announced number of channels.
        channels: u32,
    },
    /// Twilio sent a message the bridge could not use (malformed, binary, over the size
    /// limit, a mark nobody sent, a second `start`); skipped.
    BadTwilioMessage {
        /// What was wrong (never the message itself).
        message: String,
    },
    /// Twilio kept sending bad messages beyond `SessionConfig::bad_message_budget`.
    TooManyBadMessages {
        /// Bad messages seen in the call.
        messages: u64,
    },
    /// A tool did not return within its timeout (`FunctionTool::timeout` or
    /// `CallConfig::tool_timeout`); the model was told so.
    ToolTimedOut {
        /// The tool's name.
        tool: String,
        /// The model's call id.
        call_id: String,
    },
    /// A tool panicked; the model was told the tool failed.
    ToolPanicked {
        /// The tool's name.
        tool: String,
        /// The model's call id.
        call_id: String,
        /// The panic's message.
        message: String,
    },
    /// The model called a tool the agent does not have, or asked for a transfer destination
    /// that is not configured; it was told so.
    UnknownTool {
        /// What the model asked for.
        message: String,
    },
    /// A tool call waiting for approval was not approved within
    /// `CallConfig::approval_timeout`; it was rejected.
    ToolApprovalTimedOut {
        /// The tool's name.
        tool: String,
        /// The model's call id.
        call_id: String,
    },
    /// A running tool call was dropped because the model session expired (its output has no
    /// session to go to).
    ToolDropped {
        /// The tool's name.
        tool: String,
        /// The model's call id.
        call_id: String,
    },
    /// The application asked for something the bridge refused (e.g. a malformed raw event, a
    /// `session.update` leaving `audio/pcmu`).
    CommandRefused {
        /// Why.
        message: String,
    },
    /// Code on one of the call's threads panicked: a socket message handler, the session
    /// thread, the application's start check or event hook.
    Panicked {
        /// Where (`twilio reader`, `session thread`, `event hook`, …) and the panic message.
        message: String,
    },
}

impl CallError {
    /// Which side the error came from.
    pub fn origin(&self) -> ErrorSource {
        use CallError::*;
        match self {
            ModelRejected { .. }
            | ModelUnreachable { .. }
            | ModelTls { .. }
            | ModelHandshakeTimeout
            | ModelHandshake { .. }
            | InvalidModelRequest { .. }
            | ModelConfigRejected { .. }
            | ModelDisconnected { .. }
            | ModelUnresponsive { .. }
            | ModelSetupTimeout { .. }
            | ModelError { .. }
            | BadModelEvent { .. } => ErrorSource::Model,
            TwilioGone { .. }
            | TwilioSilent { .. }
            | StreamNeverStarted { .. }
            | StreamRefused { .. }
            | UnsupportedMediaFormat { .. }
            | BadTwilioMessage { .. }
            | TooManyBadMessages { .. } => ErrorSource::Twilio,
            ToolTimedOut { .. }
            | ToolPanicked { .. }
            | UnknownTool { .. }
            | ToolApprovalTimedOut { .. }
            | ToolDropped { .. } => ErrorSource::Tool,
            CommandRefused { .. } | Panicked { .. } => ErrorSource::Application,
        }
    }

    /// True for the errors of opening the model connection (rejected, unreachable, TLS,
    /// handshake, an invalid request): the call ended before the model heard anything.
    pub fn is_model_connect(&self) -> bool {
        matches!(
            self,
            CallError::ModelRejected { .. }
                | CallError::ModelUnreachable { .. }
                | CallError::ModelTls { .. }
                | CallError::ModelHandshakeTimeout
                | CallError::ModelHandshake { .. }
                | CallError::InvalidModelRequest { .. }
        )
    }

    /// A failure to open the model connection, typed by what the socket layer saw.
    pub fn model_connect(e: WsError) -> CallError {
        match e {
            WsError::Rejected { status } => CallError::ModelRejected { status },
            WsError::BadUrl(_) | WsError::InvalidRequest(_) => CallError::InvalidModelRequest {
                message: e.to_string(),
            },
            WsError::Connect(_) => CallError::ModelUnreachable {
                cause: Cause::new(e),
            },
            WsError::Tls(_) => CallError::ModelTls {
                cause: Cause::new(e),
            },
            WsError::HandshakeTimeout(_) => CallError::ModelHandshakeTimeout,
            other => CallError::ModelHandshake {
                cause: Cause::new(other),
            },
        }
    }

    /// The model socket closed or failed after it was open.
    pub fn model_closed(close: Option<CloseInfo>, cause: Option<WsError>) -> CallError {
        CallError::ModelDisconnected {
            close,
            cause: cause.map(Cause::new),
        }
    }

    /// The Twilio socket closed or failed without a `stop`.
    pub fn twilio_gone(close: Option<CloseInfo>, cause: Option<WsError>) -> CallError {
        CallError::TwilioGone {
            close,
            cause: cause.map(Cause::new),
        }
    }

    /// The [`Cause`] under this error, if it has one.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            CallError::ModelUnreachable { cause }
            | CallError::ModelTls { cause }
            | CallError::ModelHandshake { cause } => Some(cause),
            CallError::ModelDisconnected { cause, .. } | CallError::TwilioGone { cause, .. } => {
                cause.as_ref()
            }
            _ => None,
        }
    }
}

/// `closed (code 1000)`, `failed: …` or `closed`.
fn closed_or_failed(
    f: &mut fmt::Formatter<'_>,
    close: &Option<CloseInfo>,
    cause: &Option<Cause>,
) -> fmt::Result {
    match (close, cause) {
        (_, Some(c)) => write!(f, "{c}"),
        (Some(info), None) => write!(f, "{info}"),
        (None, None) => f.write_str("closed"),
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::ModelRejected { status } => {
                write!(f, "model refused the connection with HTTP {status}")
            }
            CallError::ModelUnreachable { cause } => write!(f, "model unreachable: {cause}"),
            CallError::ModelTls { cause } => write!(f, "model TLS handshake failed: {cause}"),
            CallError::ModelHandshakeTimeout => f.write_str("model handshake timed out"),
            CallError::ModelHandshake { cause } => write!(f, "model handshake failed: {cause}"),
            CallError::InvalidModelRequest { message } => {
                write!(f, "invalid model request: {message}")
            }
            CallError::ModelConfigRejected { param, message } => write!(
                f,
                "model refused the session configuration ({}): {message}",
                param.as_deref().unwrap_or("no parameter named")
            ),
            CallError::ModelDisconnected { close, cause } => {
                f.write_str("model disconnected: ")?;
                closed_or_failed(f, close, cause)
            }
            CallError::ModelUnresponsive { waited } => {
                write!(f, "model disconnected: no pong within {waited:?}")
            }
            CallError::ModelError { code, message } => match code {
                Some(code) => write!(f, "model error {code}: {message}"),
                None => write!(f, "model error: {message}"),
            },
            CallError::BadModelEvent { message } => write!(f, "bad model event: {message}"),
            CallError::TwilioGone { close, cause } => {
                f.write_str("twilio disconnected: ")?;
                closed_or_failed(f, close, cause)
            }
            CallError::TwilioSilent { waited } => {
                write!(f, "twilio stream went silent ({waited:?})")
            }
            CallError::ModelSetupTimeout { waited } => {
                write!(f, "model session not confirmed within {waited:?}")
            }
            CallError::StreamNeverStarted { waited } => {
                write!(f, "twilio sent no start event within {waited:?}")
            }
            CallError::StreamRefused { reason } => write!(f, "stream refused: {reason}"),
            CallError::UnsupportedMediaFormat {
                encoding,
                sample_rate,
                channels,
            } => write!(
                f,
                "unsupported twilio media format {encoding:?}, {sample_rate} Hz, {channels} \
                 channel(s) (only audio/x-mulaw, 8000 Hz, mono)"
            ),
            CallError::BadTwilioMessage { message } => write!(f, "bad twilio message: {message}"),
            CallError::TooManyBadMessages { messages } => {
                write!(f, "twilio sent too many bad messages ({messages})")
            }
            CallError::ToolTimedOut { tool, .. } => write!(f, "tool {tool} timed out"),
            CallError::ToolPanicked { tool, message, .. } => {
                write!(f, "tool {tool} panicked: {message}")
            }
            CallError::UnknownTool { message } => f.write_str(message),
            CallError::ToolApprovalTimedOut { tool, .. } => {
                write!(f, "tool {tool} was not approved in time")
            }
            CallError::ToolDropped { tool, .. } => {
                write!(f, "tool call {tool} dropped: the model session expired")
            }
            CallError::CommandRefused { message } => write!(f, "command refused: {message}"),
            CallError::Panicked { message } => write!(f, "panicked: {message}"),
        }
    }
}

impl StdError for CallError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause()
            .map(|c| c.get_ref() as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_are_typed_and_chained() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = CallError::model_connect(WsError::Connect(refused));
        assert!(matches!(e, CallError::ModelUnreachable { .. }));
        assert!(e.is_model_connect());
        assert_eq!(e.origin(), ErrorSource::Model);
        assert_eq!(
            e.cause().and_then(Cause::io_kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        // CallError -> WsError -> io::Error.
        let ws = e.source().and_then(|s| s.downcast_ref::<WsError>());
        assert!(matches!(ws, Some(WsError::Connect(_))));
        assert!(ws.and_then(|w| w.source()).is_some());
        assert_eq!(
            CallError::model_connect(WsError::Rejected { status: 401 }),
            CallError::ModelRejected { status: 401 }
        );
        assert_eq!(
            CallError::model_connect(WsError::HandshakeTimeout(Duration::from_secs(1))),
            CallError::ModelHandshakeTimeout
        );
        assert!(CallError::ModelRejected { status: 401 }.source().is_none());
    }

    #[test]
    fn twilio_gone_says_why() {
        let e = CallError::twilio_gone(None, Some(WsError::WriteTimeout));
        assert_eq!(e.origin(), ErrorSource::Twilio);
        assert_eq!(
            e.to_string(),
            "twilio disconnected: peer stopped reading (write timeout)"
        );
        assert!(matches!(
            e.cause().and_then(|c| c.downcast_ref::<WsError>()),
            Some(WsError::WriteTimeout)
        ));
        let closed = CallError::twilio_gone(
            Some(CloseInfo {
                code: 1000,
                reason: String::new(),
            }),
            None,
        );
        assert_eq!(
            closed.to_string(),
            "twilio disconnected: closed with code 1000"
        );
    }
}
