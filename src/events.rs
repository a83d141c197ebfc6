//! What a session tells the application: [`SessionEvent`], the conversation [`HistoryItem`]s,
//! and why a call ended ([`CloseReason`]).

use std::fmt;

pub use crate::error::{CallError, ErrorSource};

pub use crate::session::event_queue::{EventReceiver, RecvTimeoutError};

/// One entry of the conversation history, kept from the model's `conversation.item.*` events
/// and transcripts. Transcripts survive truncation: the server forgets the text of audio the
/// caller did not hear, the history keeps it and marks the item [`HistoryItem::truncated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// The model's item id.
    pub item_id: String,
    /// What the item is.
    pub kind: HistoryKind,
    /// The item's text: typed text or the audio transcript (for messages), the arguments (for
    /// function calls), the output (for function call outputs).
    pub text: String,
    /// The item's status as last reported (`in_progress`, `completed`, `incomplete`), if any.
    pub status: Option<String>,
    /// Set when the audio was cut at a barge-in: the caller heard `audio_end_ms` of it.
    pub truncated: Option<u64>,
}

/// The kind of a [`HistoryItem`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryKind {
    /// Something the caller said or the application sent as the user.
    User,
    /// Something the agent said.
    Assistant,
    /// A system message.
    System,
    /// A function call by the model.
    FunctionCall {
        /// The tool's name.
        name: String,
        /// The call id.
        call_id: String,
    },
    /// The output of a function call.
    FunctionCallOutput {
        /// The call id.
        call_id: String,
    },
    /// Any other item type (kept for completeness).
    Other(String),
}

/// Why a session ended: one of the ordinary ends, or [`CloseReason::Error`] with the
/// [`CallError`] that ended it.
///
/// ```
/// use twilio_realtime::{CallError, CloseReason};
///
/// let reason = CloseReason::Error(CallError::ModelRejected { status: 401 });
/// assert!(matches!(reason.error(), Some(CallError::ModelRejected { status: 401 })));
/// assert_eq!(reason.to_string(), "model refused the connection with HTTP 401");
/// assert!(CloseReason::TwilioStopped.error().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Twilio sent `stop`: the caller hung up or the stream was stopped.
    TwilioStopped,
    /// The application called `close()`.
    Closed,
    /// The agent ended the call (the model called `end_call`, see
    /// [`crate::agent::Agent::can_hang_up`]) and the caller heard its last words (or the
    /// hang-up timeout passed).
    AgentHungUp,
    /// The application hung up ([`crate::session::Session::hang_up`]) and the caller
    /// heard the agent's last words (or the hang-up timeout passed).
    HungUp,
    /// The call was transferred to a person (the model called `transfer_call`, or the
    /// application asked): the stream ended after the agent's last words were heard, and
    /// Twilio dials the destination next (see [`crate::telephony::transfer`]).
    Transferred {
        /// The destination's configured name.
        name: String,
        /// The number or SIP URI.
        destination: crate::telephony::transfer::Destination,
        /// True when the model chose it, false when the application did.
        by_agent: bool,
    },
    /// A SIP call's model session reached its maximum duration (`session_expired`, 60
    /// minutes): its session is the call's and cannot be renewed from the sideband, so the
    /// call was hung up.
    SessionExpired,
    /// A GPT-Live model closed its session (`session.closed` the bridge did not ask for, e.g.
    /// `expired` at `expires_at`, or `content` from the safety filter); the audio already
    /// sent played first.
    ModelSessionClosed(crate::proto::live::SessionCloseReason),
    /// An error ended the call (the model refused or vanished, Twilio vanished or never
    /// started, the stream was refused, a thread panicked, …); match the [`CallError`].
    Error(CallError),
}

impl CloseReason {
    /// The error that ended the call, if one did.
    pub fn error(&self) -> Option<&CallError> {
        match self {
            CloseReason::Error(e) => Some(e),
            _ => None,
        }
    }
}

impl From<CallError> for CloseReason {
    fn from(e: CallError) -> CloseReason {
        CloseReason::Error(e)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::TwilioStopped => f.write_str("twilio stream stopped"),
            CloseReason::Closed => f.write_str("closed by the application"),
            CloseReason::AgentHungUp => f.write_str("hung up by the agent"),
            CloseReason::HungUp => f.write_str("hung up by the application"),
            CloseReason::Transferred { name, by_agent, .. } => write!(
                f,
                "transferred to {name} (by the {})",
                if *by_agent { "agent" } else { "application" }
            ),
            CloseReason::SessionExpired => f.write_str("the SIP call's model session expired"),
            CloseReason::ModelSessionClosed(r) => write!(f, "model closed the session: {r:?}"),
            CloseReason::Error(e) => fmt::Display::fmt(e, f),
        }
    }
}

/// Why the agent's audio stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InterruptCause {
    /// The caller started speaking (the server's VAD).
    CallerSpeech,
    /// The application called `interrupt()`.
    Application,
    /// An output guardrail tripped.
    Guardrail,
}

/// An event of a session, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The model started a response as `agent`.
    AgentStart {
        /// The current agent.
        agent: String,
    },
    /// The model finished a response as `agent`; `text` is what it said (transcript or text).
    AgentEnd {
        /// The current agent.
        agent: String,
        /// The response's transcript or text.
        text: String,
    },
    /// The call moved from one agent to another.
    Handoff {
        /// The agent handing off.
        from: String,
        /// The agent taking over.
        to: String,
    },
    /// A tool call started on a worker thread.
    ToolStart {
        /// The current agent.
        agent: String,
        /// The tool's name.
        tool: String,
        /// The model's call id.
        call_id: String,
        /// The arguments as the model sent them.
        arguments: String,
    },
    /// A tool call ended; `output` is what the model was told.
    ToolEnd {
        /// The current agent.
        agent: String,
        /// The tool's name.
        tool: String,
        /// The model's call id.
        call_id: String,
        /// The output text sent to the model.
        output: String,
        /// True if the tool failed, timed out, was rejected or unknown.
        is_error: bool,
    },
    /// A tool call waits for `approve(call_id)` or `reject(call_id)`.
    ToolApprovalRequested {
        /// The current agent.
        agent: String,
        /// The tool's name.
        tool: String,
        /// The model's call id.
        call_id: String,
        /// The arguments as the model sent them.
        arguments: String,
    },
    /// The agent's audio for an item started going to the caller.
    AudioStart {
        /// The item being spoken.
        item_id: String,
    },
    /// A chunk of the agent's audio (base64 µ-law), only with `audio_events` enabled.
    Audio {
        /// The item being spoken.
        item_id: String,
        /// Base64 µ-law, 8 kHz.
        payload: String,
    },
    /// The caller has heard everything the agent said (playback confirmed by Twilio).
    AudioStopped,
    /// The agent's audio was cut off.
    AudioInterrupted {
        /// What caused it.
        cause: InterruptCause,
        /// Per truncated item: (item id, milliseconds the caller heard).
        heard: Vec<(String, u64)>,
        /// Per truncated item: (item id, milliseconds of its audio the caller did not hear:
        /// sent to Twilio and dropped by the `clear`, or held for a stream that had not
        /// started). Empty on a SIP sideband call, where the server plays the audio.
        cut: Vec<(String, u64)>,
    },
    /// An output guardrail tripped; the agent was interrupted and told why.
    GuardrailTripped {
        /// The guardrail's name.
        guardrail: String,
        /// The reason it gave.
        reason: String,
        /// The text it judged.
        text: String,
    },
    /// A new item joined the history.
    HistoryAdded(HistoryItem),
    /// An item of the history changed (its text, status, truncation or kind): the item as it
    /// now is; match it to the one from [`SessionEvent::HistoryAdded`] by `item_id`. Only the
    /// changed item is sent, so a long call does not copy its whole history on every change;
    /// `Session::history()` returns all of it.
    HistoryUpdated(HistoryItem),
    /// An item left the history (the model deleted it).
    HistoryRemoved {
        /// The item's id.
        item_id: String,
    },
    /// The call will end: the agent or the application hung up, or a transfer was decided.
    /// `reason` is the reason [`SessionEvent::Closed`] will carry. No new response is asked
    /// for from now on; the stream closes once the caller has heard the agent's last words
    /// (every mark of the audio sent echoed by Twilio) or the hang-up timeout passed.
    Ending {
        /// Why the call will close.
        reason: CloseReason,
    },
    /// A SIP call ([`crate::session::Session::start_sideband`]) was hung up through OpenAI's
    /// call-control API (REST `hangup`) as it closed. `result` is `Err` with why when the
    /// request failed; a `404` (the call had already ended) counts as done.
    SipHangUp {
        /// What the request came to.
        result: Result<(), String>,
    },
    /// A SIP call was transferred with a SIP REFER through OpenAI's call-control API (REST
    /// `refer`) as it closed with [`CloseReason::Transferred`]. When the REFER failed the call
    /// is hung up instead (a [`SessionEvent::SipHangUp`] follows).
    SipRefer {
        /// The `Refer-To` target: `tel:+…` for a number, the SIP URI as configured.
        target_uri: String,
        /// What the request came to.
        result: Result<(), String>,
    },
    /// The caller pressed a key.
    Dtmf {
        /// The digit (`0`–`9`, `*`, `#`).
        digit: String,
    },
    /// Something went wrong; the call goes on unless a [`SessionEvent::Closed`] follows (whose
    /// [`CloseReason::Error`] then carries the same error). [`CallError::origin`] says which
    /// side it came from; its text never contains audio or keys.
    Error(CallError),
    /// A raw message from one of the two sockets, as JSON text (see the session options for
    /// which ones are reported).
    Transport(TransportEvent),
    /// The application did not keep up with the events: `count` were dropped from the full
    /// queue since the last event it read (the oldest audio and transport events first; see
    /// `SessionConfig::event_capacity`). Delivered before the next event after the gap.
    EventsDropped {
        /// Events dropped.
        count: u64,
    },
    /// The session ended; every thread of the call has exited or is about to.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// A raw message seen on one of the call's sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportEvent {
    /// A message Twilio sent (the TypeScript SDK's `twilio_message`).
    TwilioMessage(String),
    /// An event the model sent.
    ModelEvent(String),
}
