//! The call core: every decision of one call, as a plain state machine with no sockets,
//! threads or clocks.
//!
//! Feed it what happened as an [`Input`] — a Twilio message, a model event, a tool result, a
//! guardrail verdict, an application [`Command`], the passing of time — each with the current
//! [`Instant`], to [`CallCore::handle_input`]; then drain [`CallCore::poll_output`] for what to
//! do (frames for Twilio, events for the model, [`SessionEvent`]s for the application, tools
//! and guardrails to run) and feed [`Input::Timeout`] at [`CallCore::next_deadline`]. The
//! threaded shell in
//! [`crate::session`] does exactly that; tests do it with a fake clock.
//!
//! Caller audio (`media` frames) does not pass through here: it takes the one-wake-up lane of
//! [`crate::call::inbound::InboundAudio`]. The core tells that lane when the model is ready
//! ([`Output::ModelReady`]) and when the caller speaks ([`Output::CallerSpeaking`]).
//! Two things the shell's other threads do without waking the session thread reach the core
//! in one call at the top of each wake-up, [`CallCore::catch_up`]: agent audio written on the
//! [`audio_lane`] and the mark echoes [`CallCore::echo_can_wait`] let wait, in the order that
//! keeps the playback ledger exact.
//!
//! **Ready means confirmed.** A Realtime session starts as 24 kHz PCM both ways. On
//! `session.created` the core sends one `session.update` (µ-law both ways, tagged with an
//! `event_id`) and nothing else; the call is ready — caller audio flows, agent audio is
//! forwarded, the greeting and queued commands go out — only when `session.updated` shows
//! `audio/pcmu` in and out. If the server refuses that first update (an `error` naming its
//! `event_id`) or a `session.updated` ever shows another format, the call ends with
//! [`CallError::ModelConfigRejected`] (naming the refused parameter) without a byte of audio
//! exchanged in the wrong format; the core does not retry without the parameter, because
//! the parameters it sends (voice, tools, instructions, turn detection) each change what
//! the caller gets. A refused later update (handoff, `UpdateAgent`, a raw `session.update`)
//! leaves the previous, confirmed µ-law configuration in force: the call goes on with an
//! error event. A response the core asks for after a handoff waits for that confirmation.
//!
//! ```
//! use std::time::Instant;
//! use twilio_realtime::agent::Agent;
//! use twilio_realtime::call::{CallCore, CallConfig, Input, Output};
//! use twilio_realtime::proto::realtime::ServerEvent;
//!
//! let now = Instant::now();
//! let mut core = CallCore::new(Agent::new("Assistant", "Be brief."), CallConfig::default(), now);
//! // First it asks for the model connection (the slow part); the shell opens it and says so.
//! assert!(matches!(core.poll_output(), Some(Output::ConnectModel)));
//! core.handle_input(now, Input::ModelConnected);
//! let created = ServerEvent::parse(r#"{"type":"session.created","event_id":"e1","session":{}}"#).unwrap();
//! core.handle_input(now, Input::Model(created));
//! let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
//! assert!(matches!(&outputs[..], [Output::Model(update)] if update.event_type() == "session.update"));
//! let updated = ServerEvent::parse(r#"{"type":"session.updated","event_id":"e2","session":{"type":"realtime",
//!     "audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#).unwrap();
//! core.handle_input(now, Input::Model(updated));
//! let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
//! assert!(matches!(outputs.last(), Some(Output::ModelReady)));
//! ```

pub mod audio_lane;
mod barge_in;
mod commands;
pub mod inbound;
mod input;
pub mod live;
mod model_side;
pub mod pacer;
pub mod playback;
mod text;
mod tools;
mod twilio_side;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{
    handoff_tool_name, Agent, FunctionTool, OutputGuardrail, ToolCall, ToolFailure, END_CALL_TOOL,
    TRANSFER_TOOL,
};
use crate::call::playback::{MarkName, MarkOutcome, PlaybackLedger};
use crate::events::{
    CallError, CloseReason, HistoryItem, HistoryKind, InterruptCause, SessionEvent,
};
use crate::proto::mulaw;
use crate::proto::realtime::{
    AudioFormat, ClientEvent, Item, ResponseConfig, ServerEvent, SessionSettings,
};
use crate::proto::twilio::{TwilioCommand, TwilioMessage};
use crate::telephony::transfer::TransferTarget;

pub use input::Input;
pub use live::ModelApi;

const LOG: &str = "twilio_realtime::session";
const TOOLS_LOG: &str = "twilio_realtime::tools";
/// Function calls kept per response until its `response.done`, and responses with calls
/// kept at once (bounds against a peer that never ends its responses).
const MAX_CALLS_PER_RESPONSE: usize = 64;

/// Round-trip samples after which probes slow down from [`CallConfig::rtt_probe_interval`]
/// to [`CallConfig::rtt_probe_interval_settled`]: the estimator's trimmed mean and spread are
/// taken over a full quartile split from 8 samples on.
pub const RTT_SAMPLES_TO_SETTLE: u64 = 8;

/// Options of a call (and of the session built on it).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallConfig {
    /// Base model session settings (turn detection, transcription, …). Instructions, voice and
    /// tools come from the current agent; the audio format is always `audio/pcmu` both ways.
    pub session: SessionSettings,
    /// Round trip to Twilio assumed until the call has measured it (at most 5 s). Default
    /// 100 ms.
    pub default_rtt: Duration,
    /// How often to measure the round trip while nothing plays (one `mark` each way per
    /// probe) until the call has [`RTT_SAMPLES_TO_SETTLE`] samples. Default 500 ms: a
    /// barge-in's accuracy under jitter depends on how many samples the call has (see
    /// [`crate::call::playback::RttEstimator`]), so the first seconds of a call fill the
    /// window fast.
    pub rtt_probe_interval: Duration,
    /// How often to re-measure the round trip while nothing plays once the call has
    /// [`RTT_SAMPLES_TO_SETTLE`] samples: the estimate is a trimmed mean over the last 32
    /// samples (played chunks add samples too), so it only needs refreshing as the path
    /// drifts. Default 5 s. Each probe wakes the call's session thread twice; at 500 ms they
    /// were ~11 % of the engine's CPU in the 200-call load run (`benches/compare`).
    pub rtt_probe_interval_settled: Duration,
    /// Run output guardrails every this many new characters of agent text (and on the final
    /// text). Default 100.
    pub guardrail_debounce_chars: usize,
    /// Also tell the model about DTMF digits, as a user message. Default false.
    pub forward_dtmf: bool,
    /// After the model connection is lost, how long to wait for the audio already sent to
    /// finish playing before ending the Twilio stream. Default 5 s.
    pub drain_timeout: Duration,
    /// Timeout for tools that set none. Default 30 s.
    pub tool_timeout: Duration,
    /// Emit [`SessionEvent::Audio`] for every chunk of agent audio. Default false.
    pub audio_events: bool,
    /// End the call when Twilio has not sent `start` this long after the socket opened (a
    /// stream that never starts holds a model session for nothing). Default 5 s.
    pub start_timeout: Duration,
    /// Open the model connection only once Twilio's `start` arrived (and was approved, see
    /// [`CallConfig::approve_start`]), instead of at once ([`CallCore::new`] asks for it then).
    /// The session sets it when a start check is configured: a stream that fails the check
    /// never costs a model session. Default false.
    pub connect_model_on_start: bool,
    /// Ask the application about Twilio's first acceptable `start` ([`Output::ApproveStart`]:
    /// not a second one, not one in a format the bridge refuses) before the call goes live;
    /// answer with [`Input::StartApproved`] (optionally naming the call's agent) or
    /// [`Input::Rejected`]. Until then the call waits in [`CallPhase::AwaitingStart`] and
    /// its start timeout keeps running. The threaded session always sets it: it records the
    /// call's details, runs the start check and the per-call agent factory there. Default false.
    pub approve_start: bool,
    /// After `start`, a Twilio stream that sends nothing (no `media`, mark or any other
    /// message) this long is dead — Twilio sends a `media` frame every 20 ms for the life of a
    /// stream — and the call ends with [`CallError::TwilioSilent`]. Default 10 s.
    pub twilio_silence_timeout: Duration,
    /// Send the model a WebSocket ping when it has sent nothing this long. Default 20 s.
    pub model_ping_interval: Duration,
    /// The model connection is open but its session is not confirmed this long after (no
    /// Realtime `session.created` + `session.updated` with µ-law, no GPT-Live
    /// `session.started`): the call ends with [`CallError::ModelSetupTimeout`] instead of
    /// keeping the caller in silence (a model that answers pings but never confirms would
    /// otherwise hold the call for ever). Also bounds a renewed session's setup. Default 10 s.
    pub model_setup_timeout: Duration,
    /// The model connection is lost when nothing (a pong or any other frame) arrives this long
    /// after a ping; then the model-loss rule runs ([`CallError::ModelDisconnected`] after
    /// the audio already sent played). Default 10 s.
    pub model_pong_timeout: Duration,
    /// A tool call waiting for `approve`/`reject` this long is rejected, and the model is told
    /// the call was not approved in time. Default 60 s.
    pub approval_timeout: Duration,
    /// What the agent says first, without waiting for the caller. Sent as `response.create`
    /// once the model has confirmed the session (µ-law both ways) and Twilio's `start` has
    /// arrived. `None` (the default): the agent waits for the caller (the Realtime API never
    /// speaks first).
    pub greeting: Option<Greeting>,
    /// Transcribe the caller's audio (`audio.input.transcription`) when
    /// [`CallConfig::session`] sets no transcription of its own. The transcripts fill the
    /// history's user items, and after `session_expired` the new model session gets the
    /// caller's turns from them (it cannot be given the old session's audio). Default
    /// `gpt-4o-mini-transcribe`; `None` turns it off (the caller's turns are then missing from
    /// a carried-over conversation).
    pub caller_transcription: Option<crate::proto::realtime::Transcription>,
    /// Once the call is ending (the agent or the application hung up, or a transfer was
    /// decided), how long to wait at most for the agent's last words to be heard (the
    /// response under way to finish and Twilio to echo the last mark of its audio) before the
    /// stream is closed anyway. Default 10 s.
    pub hang_up_timeout: Duration,
    /// A SIP call driven over OpenAI's sideband WebSocket (see [`crate::server::sip`]): there
    /// is no Twilio side and no audio lane. The call is ready as soon as the sideband is open
    /// (it sends one `session.update` with the current agent, without audio formats); model
    /// audio deltas are ignored; "playing" follows `output_audio_buffer.started` /
    /// `.stopped` / `.cleared`; an interruption is `response.cancel` then
    /// `output_audio_buffer.clear` (no truncation: the server owns playback, brief §5.2,
    /// §5.4); DTMF comes from `input_audio_buffer.dtmf_event_received`. The shell ends the
    /// call on [`Output::CloseTwilio`] (REST `hangup`, or `refer` for a transfer); a
    /// `session_expired` ends it with [`CloseReason::SessionExpired`] (the session cannot be
    /// renewed). Default false.
    pub sideband: bool,
    /// Which model API the call speaks: [`ModelApi::Realtime`] (the default) or
    /// [`ModelApi::Live`] (GPT-Live; see [`crate::call::live`] for what differs).
    pub model_api: ModelApi,
}

/// The former name of [`CallConfig`] (one naming scheme: settings structs are `*Config`).
#[deprecated(since = "0.1.0", note = "renamed to `CallConfig`")]
pub type CallOptions = CallConfig;

/// How the agent greets the caller (see [`CallConfig::greeting`]).
///
/// The greeting is one `response.create` whose instructions are the agent's instructions
/// followed by the greeting's (per-response instructions replace the session's for that
/// response, so the agent's persona is repeated). It is an ordinary response: the caller can
/// talk over it (normal barge-in: Twilio `clear`, truncation at what was heard). It is sent
/// once; if a response is already under way when it could be sent (the caller spoke first
/// and is being answered) it is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Greeting {
    /// An instruction for the first response, e.g. "Greet the caller and ask how you can
    /// help."
    Instructions(String),
    /// Exact words: the model is instructed to say this text word for word and nothing else.
    Say(String),
}

impl Greeting {
    fn instructions(&self, agent: &str) -> String {
        match self {
            Greeting::Instructions(i) => format!("{agent}\n\n{i}"),
            Greeting::Say(text) => format!(
                "{agent}\n\nGreet the caller by saying exactly the following words, word for \
                 word, and nothing else: {text}"
            ),
        }
    }
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            session: SessionSettings::new(),
            default_rtt: Duration::from_millis(100),
            rtt_probe_interval: Duration::from_millis(500),
            rtt_probe_interval_settled: Duration::from_secs(5),
            guardrail_debounce_chars: 100,
            forward_dtmf: false,
            drain_timeout: Duration::from_secs(5),
            tool_timeout: Duration::from_secs(30),
            audio_events: false,
            start_timeout: Duration::from_secs(5),
            connect_model_on_start: false,
            approve_start: false,
            twilio_silence_timeout: Duration::from_secs(10),
            model_ping_interval: Duration::from_secs(20),
            model_pong_timeout: Duration::from_secs(10),
            model_setup_timeout: Duration::from_secs(10),
            approval_timeout: Duration::from_secs(60),
            greeting: None,
            caller_transcription: Some(crate::proto::realtime::Transcription {
                model: Some("gpt-4o-mini-transcribe".into()),
                ..Default::default()
            }),
            hang_up_timeout: Duration::from_secs(10),
            sideband: false,
            model_api: ModelApi::Realtime,
        }
    }
}

/// What the model is told when a tool call waited for approval longer than
/// [`CallConfig::approval_timeout`].
pub const APPROVAL_TIMEOUT_OUTPUT: &str =
    "Error: this tool call needed the operator's approval and did not get it in time, so it was not run. Tell the caller you could not do it.";

/// What the application can ask of a running call.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Command {
    /// Add a user text message and ask for a response.
    SendMessage(String),
    /// Stop the agent talking now (like a barge-in). Does nothing when nothing plays.
    Interrupt,
    /// Run a tool call that waits for approval.
    Approve(String),
    /// Refuse a tool call that waits for approval; the model is told so.
    Reject {
        /// The call id.
        call_id: String,
        /// What the model is told (a default sentence if `None`).
        message: Option<String>,
    },
    /// Switch to another agent (instructions, voice, tools) without a handoff.
    UpdateAgent(Agent),
    /// Ask the model for a response (`response.create`), with these per-response options
    /// (`ResponseConfig::default()` for none). The API allows one response at a time: it is
    /// sent once no response is active (and no tool call is pending), at once if none is.
    /// Several asked for while one is active become one (with the options asked last).
    CreateResponse(ResponseConfig),
    /// Commit the caller audio appended so far as a user turn (`input_audio_buffer.commit`),
    /// for sessions without turn detection (`TurnDetection::Disabled`); follow it with
    /// [`Command::CreateResponse`]. The server refuses an empty buffer with an error event.
    CommitAudio,
    /// Send this client event to the model as it is (the escape hatch for protocol features
    /// this crate does not wrap). It must be a JSON object with a string `type`; a
    /// `session.update` may not set an audio format other than `audio/pcmu` (refused with an
    /// error event) and is tracked like the bridge's own updates. Anything else is refused
    /// with [`SessionEvent::Error`].
    SendRaw(String),
    /// End the call once the caller has heard the agent's last words (the response under
    /// way, if any, finished and its audio played), at most
    /// [`CallConfig::hang_up_timeout`] from now: [`CloseReason::HungUp`]. No new response is
    /// asked for meanwhile.
    HangUp,
    /// Transfer the caller to `target` once they have heard the agent's last words (as
    /// [`Command::HangUp`]): [`CloseReason::Transferred`]. The stream closes; what Twilio does
    /// next is up to the TwiML after it (see [`crate::telephony::transfer`]).
    Transfer(TransferTarget),
    /// End the call now.
    Close,
}

/// What the model is told when it calls `end_call` (no response is asked for after it).
pub const END_CALL_OUTPUT: &str =
    "The call is ending once the caller has heard what you said. Say nothing more.";

/// Guardrails to run on a text off the session thread; report with
/// [`Input::GuardrailResult`].
#[derive(Debug, Clone)]
pub struct GuardrailRun {
    /// Identifies this run in the result.
    pub id: u64,
    /// The agent's text so far.
    pub text: String,
    /// The guardrails to run, in order; the first trip wins.
    pub guardrails: Vec<OutputGuardrail>,
}

impl GuardrailRun {
    /// Runs every guardrail in order on the calling thread; the first trip is returned as
    /// (guardrail name, reason).
    pub fn run(&self) -> Option<(String, String)> {
        self.guardrails
            .iter()
            .find_map(|g| match g.check(&self.text) {
                crate::agent::Verdict::Pass => None,
                crate::agent::Verdict::Trip { reason } => Some((g.name().to_owned(), reason)),
            })
    }
}

/// Something for the shell to do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Output {
    /// Send this to Twilio (always with a real streamSid).
    Twilio(TwilioCommand),
    /// Send this to the model.
    Model(ClientEvent),
    /// Send this to the model, on a GPT-Live call ([`ModelApi::Live`]).
    LiveModel(crate::proto::live::ClientEvent),
    /// Tell the application.
    Event(SessionEvent),
    /// The model session is configured: start sending caller audio (flush what was kept).
    /// Everything before this in the output order must be written to the model first.
    ModelReady,
    /// The model connection is gone for now (reconnecting): keep caller audio.
    ModelNotReady,
    /// The server's VAD says the caller started (`true`) or stopped speaking.
    CallerSpeaking(bool),
    /// Run a tool, and report its outcome with [`Input::ToolResult`] for `call_id`. Plain
    /// data: the shell finds the function to run (e.g. [`CallCore::tool_invocation`], the
    /// current agent's tool resolved when the model called it) and runs it off the core.
    RunTool {
        /// The model's call id.
        call_id: String,
        /// The tool's name.
        name: String,
        /// The arguments exactly as the model sent them (JSON).
        arguments: String,
    },
    /// Run output guardrails off the session thread.
    RunGuardrails(GuardrailRun),
    /// Open a model connection: the first one (from [`CallCore::new`], or on `start` with
    /// [`CallConfig::connect_model_on_start`]) or a new one after `session_expired`; report
    /// with [`Input::ModelConnected`] / [`Input::ModelConnectFailed`].
    ConnectModel,
    /// Twilio's first acceptable `start` arrived and [`CallConfig::approve_start`] is set:
    /// check it (and choose the call's agent, if that depends on the call), then answer with
    /// [`Input::StartApproved`] or [`Input::Rejected`].
    ApproveStart(Box<crate::proto::twilio::Start>),
    /// Close the model connection.
    CloseModel,
    /// Close the Twilio stream (ends `<Connect><Stream>`).
    CloseTwilio,
    /// The next audio deltas of one item may go to Twilio without the core, until the core's
    /// next input of another kind: see [`audio_lane`]. Report each chunk sent that way with
    /// [`Input::AudioLaneSent`]. A shell that does not use the lane ignores this.
    AudioLane(audio_lane::AudioLane),
    /// Send a WebSocket ping on the model connection (it has been quiet for
    /// [`CallConfig::model_ping_interval`]); whatever it sends next counts as the answer
    /// (report it with [`Input::ModelActivity`]).
    PingModel,
}

/// Where a call is in its life ([`CallCore::phase`]). One field instead of flags: every
/// handler asks the phase, and the phase moves only forward.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CallPhase {
    /// Waiting for Twilio's `start` (a SIP sideband call has no stream and starts live).
    AwaitingStart,
    /// The stream started: the conversation runs.
    Live,
    /// Ending: the model is gone and the audio already sent plays out, or the agent's last
    /// words are being heard (hang-up, transfer); at the latest by the deadline.
    Draining,
    /// Ended, for this reason: the core does nothing more.
    Ended(CloseReason),
}

/// How a model session's first configuration, sent before the call had a core (at the call
/// webhook: see [`crate::session::warm`]), was answered. Given to the core with
/// [`Input::ModelConnectedConfigured`] in place of the `session.created` → `session.update` →
/// `session.updated` exchange it stands for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Preconfigured {
    /// `session.updated` answered `sent`; `session` is the session it showed.
    Confirmed {
        /// The configuration that was sent.
        sent: SessionSettings,
        /// The `session` of the server's `session.updated`.
        session: Value,
    },
    /// The server refused `sent` (an `error` naming its `event_id`): the session keeps the
    /// server's defaults.
    Refused {
        /// The configuration that was sent.
        sent: SessionSettings,
        /// The refused parameter, as the error named it.
        param: Option<String>,
        /// The error's message.
        message: String,
    },
}

impl Preconfigured {
    /// The configuration that was sent.
    pub fn sent(&self) -> &SessionSettings {
        match self {
            Preconfigured::Confirmed { sent, .. } | Preconfigured::Refused { sent, .. } => sent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelState {
    /// Waiting for `session.created`.
    Connecting,
    /// Our `session.update` is sent; waiting for `session.updated` with µ-law both ways.
    Configuring,
    Ready,
    Reconnecting,
    Gone,
}

#[derive(Debug)]
enum PendingTwilio {
    Audio {
        response_id: String,
        item_id: String,
        content_index: u32,
        payload: String,
    },
    Done {
        item_id: String,
        content_index: u32,
    },
}

#[derive(Debug)]
struct PendingTool {
    call: ToolCall,
    tool: FunctionTool,
    deadline: Option<Instant>,
    awaiting_approval: bool,
    /// The caller (or the application) interrupted the agent after this call was made: its
    /// output is still given to the model, but no `response.create` follows it.
    interrupted: bool,
}

#[derive(Debug, Default)]
struct AgentText {
    response_id: String,
    /// Order of first appearance in the call (the response's text joins its items in it).
    seq: u64,
    text: String,
    checked: usize,
}

/// `now + d`, or `None` (never) when that is past what an [`Instant`] can hold (an option set
/// to `Duration::MAX`).
fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// The state machine of one call. See the module docs.
#[derive(Debug)]
pub struct CallCore {
    opts: CallConfig,
    agent: Agent,
    agents: Vec<Agent>,
    stream_sid: Option<String>,
    call_sid: Option<String>,
    pending_twilio: Vec<PendingTwilio>,
    model: ModelState,
    /// This model session replaces one that expired (replay the conversation when ready).
    resumed: bool,
    /// Event ids of our `session.update`s the server has not answered yet, in order.
    config_pending: VecDeque<String>,
    greeting: Option<Greeting>,
    /// Function calls of responses still in progress, run at their `response.done` unless the
    /// response was cut or did not complete.
    calls_by_response: HashMap<String, Vec<Item>>,
    /// Options for the next `response.create` (from [`Command::CreateResponse`]).
    next_response: Option<ResponseConfig>,
    pending_model: Vec<ClientEvent>,
    ledger: PlaybackLedger,
    active_response: Option<String>,
    response_requested: Option<String>,
    next_event_seq: u64,
    cut_responses: HashSet<String>,
    needs_response: bool,
    speaking_items: HashSet<String>,
    /// The agent-audio lane granted by the last input (see [`audio_lane`]).
    audio_lane: Option<audio_lane::AudioLane>,
    audio_reported: bool,
    assistant_audio_seen: bool,
    tools: HashMap<String, PendingTool>,
    /// Agent text per item (deltas, then the final text), for transcripts and guardrails.
    agent_text: HashMap<String, AgentText>,
    next_text_seq: u64,
    guardrail_runs: HashMap<u64, String>,
    next_guardrail_id: u64,
    tripped_responses: HashSet<String>,
    history: Vec<HistoryItem>,
    reconnect_pending: bool,
    /// Ending after the audio already sent has played: until when (`None`: the last mark
    /// only), and why.
    draining: Option<(Option<Instant>, CloseReason)>,
    /// Ending once the agent's last words are heard (hang-up, transfer): until when at most,
    /// and why.
    ending: Option<(Option<Instant>, CloseReason)>,
    next_probe_at: Option<Instant>,
    /// When a stream that has not started is given up.
    start_deadline: Option<Instant>,
    /// When a model connection whose session is not confirmed is given up.
    setup_deadline: Option<Instant>,
    /// The last time Twilio sent anything, once the stream started.
    twilio_seen: Option<Instant>,
    /// The last time the current model connection sent anything (`None` without one).
    model_seen: Option<Instant>,
    /// When the unanswered ping went out.
    ping_sent: Option<Instant>,
    phase: CallPhase,
    outputs: VecDeque<Output>,
    /// A `start` waiting for the application's approval ([`CallConfig::approve_start`]).
    start_awaiting_approval: Option<Box<crate::proto::twilio::Start>>,
    /// Sideband calls: the server is playing the agent's audio to the caller
    /// (`output_audio_buffer.started` seen, `.stopped`/`.cleared` not yet).
    sip_playing: bool,
    /// A GPT-Live call's state (`None`: Realtime).
    live: Option<Box<live::LiveState>>,
}

impl CallCore {
    /// A new call that will speak as `agent`. Its first output is [`Output::ConnectModel`]
    /// (the model connection is the slow part), unless
    /// [`CallConfig::connect_model_on_start`] defers it to Twilio's `start`.
    pub fn new(agent: Agent, opts: CallConfig, now: Instant) -> CallCore {
        let ledger = PlaybackLedger::new(opts.default_rtt);
        let start_deadline = if opts.sideband {
            None
        } else {
            after(now, opts.start_timeout)
        };
        let agents = agent.reachable();
        let greeting = opts.greeting.clone();
        let sideband = opts.sideband;
        let mut outputs = VecDeque::new();
        if !opts.connect_model_on_start {
            outputs.push_back(Output::ConnectModel);
        }
        let live = match &opts.model_api {
            ModelApi::Live(l) => Some(Box::new(live::LiveState::new(l.clone()))),
            ModelApi::Realtime => None,
        };
        CallCore {
            opts,
            agent,
            agents,
            stream_sid: None,
            call_sid: None,
            pending_twilio: Vec::new(),
            model: ModelState::Connecting,
            resumed: false,
            config_pending: VecDeque::new(),
            greeting,
            calls_by_response: HashMap::new(),
            next_response: None,
            pending_model: Vec::new(),
            ledger,
            active_response: None,
            response_requested: None,
            next_event_seq: 0,
            cut_responses: HashSet::new(),
            needs_response: false,
            speaking_items: HashSet::new(),
            audio_lane: None,
            audio_reported: false,
            assistant_audio_seen: false,
            tools: HashMap::new(),
            agent_text: HashMap::new(),
            next_text_seq: 0,
            guardrail_runs: HashMap::new(),
            next_guardrail_id: 0,
            tripped_responses: HashSet::new(),
            history: Vec::new(),
            reconnect_pending: false,
            draining: None,
            ending: None,
            next_probe_at: None,
            start_deadline,
            setup_deadline: None,
            twilio_seen: None,
            model_seen: None,
            ping_sent: None,
            phase: if sideband {
                CallPhase::Live
            } else {
                CallPhase::AwaitingStart
            },
            outputs,
            start_awaiting_approval: None,
            sip_playing: false,
            live,
        }
    }

    /// Replaces the agent the call starts with, before the model session is configured (the
    /// session does this on `start` when the agent is chosen per call from its
    /// [`CallInfo`](crate::telephony::call_info::CallInfo)). Returns false, changing nothing, once
    /// `session.created` has been handled: use [`Command::UpdateAgent`] then.
    pub fn set_starting_agent(&mut self, agent: Agent) -> bool {
        if self.model != ModelState::Connecting || self.is_ended() {
            return false;
        }
        self.agents = agent.reachable();
        self.agent = agent;
        true
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The conversation so far.
    pub fn history(&self) -> &[HistoryItem] {
        &self.history
    }

    /// The current agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Twilio's stream id, once `start` arrived.
    pub fn stream_sid(&self) -> Option<&str> {
        self.stream_sid.as_deref()
    }

    /// Twilio's call id, once `start` arrived.
    pub fn call_sid(&self) -> Option<&str> {
        self.call_sid.as_deref()
    }

    /// The playback ledger (what was sent to Twilio and confirmed played).
    pub fn ledger(&self) -> &PlaybackLedger {
        &self.ledger
    }

    /// The active response, if any.
    pub fn active_response(&self) -> Option<&str> {
        self.active_response.as_deref()
    }

    /// The call and the function of a tool call this core asked to run
    /// ([`Output::RunTool`]) and whose result it still waits for: the tool of the agent that
    /// was active when the model called it (a handoff in the same turn does not change it).
    /// `None` for any other call id.
    pub fn tool_invocation(&self, call_id: &str) -> Option<(ToolCall, FunctionTool)> {
        self.tools
            .get(call_id)
            .filter(|p| !p.awaiting_approval)
            .map(|p| (p.call.clone(), p.tool.clone()))
    }

    /// Why the call ended, once it has.
    pub fn ended(&self) -> Option<&CloseReason> {
        match &self.phase {
            CallPhase::Ended(reason) => Some(reason),
            _ => None,
        }
    }

    /// Where the call is in its life.
    pub fn phase(&self) -> &CallPhase {
        &self.phase
    }

    fn is_ended(&self) -> bool {
        matches!(self.phase, CallPhase::Ended(_))
    }

    /// The call starts ending (a drain or a goodbye): from any phase but `Ended`.
    fn enter_draining(&mut self) {
        if !self.is_ended() {
            self.phase = CallPhase::Draining;
        }
    }

    /// When [`Input::Timeout`] should next be fed.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_ended() {
            return None;
        }
        let tools = self.tools.values().filter_map(|t| t.deadline);
        let drain = self.draining.as_ref().and_then(|d| d.0);
        let ending = self.ending.as_ref().and_then(|e| e.0);
        tools
            .chain(drain)
            .chain(ending)
            .chain(self.next_probe_at)
            .chain(self.start_deadline)
            .chain(self.model_setup_deadline())
            .chain(self.twilio_silence_deadline())
            .chain(self.model_liveness_deadline())
            .chain(self.live.as_ref().and_then(|l| l.deadline()))
            .min()
    }

    /// The setup deadline while the session is not confirmed (it is void once ready or gone).
    fn model_setup_deadline(&self) -> Option<Instant> {
        match self.model {
            ModelState::Connecting | ModelState::Configuring | ModelState::Reconnecting => {
                self.setup_deadline
            }
            ModelState::Ready | ModelState::Gone => None,
        }
    }

    fn twilio_silence_deadline(&self) -> Option<Instant> {
        self.twilio_seen?
            .checked_add(self.opts.twilio_silence_timeout)
    }

    fn model_liveness_deadline(&self) -> Option<Instant> {
        if self.model == ModelState::Gone {
            return None;
        }
        match self.ping_sent {
            Some(p) => p.checked_add(self.opts.model_pong_timeout),
            None => self.model_seen?.checked_add(self.opts.model_ping_interval),
        }
    }

    /// Twilio sent something at `at` (the shell reports the arrival of the latest frame on the
    /// Twilio socket, `media` included, each time it wakes). Feeds the silence rule
    /// ([`CallConfig::twilio_silence_timeout`]).
    fn handle_twilio_activity(&mut self, at: Instant) {
        if let Some(seen) = &mut self.twilio_seen {
            *seen = (*seen).max(at);
        }
    }

    /// The current model connection sent something (any frame, a pong included) at `at`.
    /// Answers an outstanding ping and postpones the next one.
    fn handle_model_activity(&mut self, at: Instant) {
        let Some(seen) = &mut self.model_seen else {
            return;
        };
        *seen = (*seen).max(at);
        if self.ping_sent.is_some_and(|p| at >= p) {
            self.ping_sent = None;
        }
    }

    fn out(&mut self, o: Output) {
        if matches!(o, Output::CloseModel) {
            self.live_before_close();
        }
        self.outputs.push_back(o);
    }

    fn event(&mut self, e: SessionEvent) {
        self.outputs.push_back(Output::Event(e));
    }

    fn error(&mut self, error: CallError) {
        self.event(SessionEvent::Error(error));
    }

    /// Twilio sent something the bridge skips.
    fn bad_twilio(&mut self, message: impl Into<String>) {
        self.error(CallError::BadTwilioMessage {
            message: message.into(),
        });
    }

    /// Reports `error` and ends the call with it.
    fn fail(&mut self, error: CallError) {
        self.error(error.clone());
        self.finish(CloseReason::Error(error));
    }

    /// Ends the call with `error`, closing both sockets.
    fn close_and_fail(&mut self, error: CallError) {
        self.out(Output::CloseModel);
        self.out(Output::CloseTwilio);
        self.fail(error);
    }

    /// Writes a model event now; a `session.update` is remembered until the server answers it.
    fn emit_model(&mut self, ev: ClientEvent) {
        if self.live.is_some() {
            return self.live_emit(ev);
        }
        if let Some(id) = session_update_id(&ev) {
            self.config_pending.push_back(id);
        }
        self.out(Output::Model(ev));
    }

    fn next_id(&mut self, what: &str) -> String {
        self.next_event_seq += 1;
        format!("tr_{what}_{}", self.next_event_seq)
    }

    fn session_update(&mut self) -> ClientEvent {
        let session = self.session_config();
        ClientEvent::SessionUpdate {
            event_id: Some(self.next_id("session")),
            session,
        }
    }

    fn send_model(&mut self, ev: ClientEvent) {
        match self.model {
            ModelState::Ready => self.emit_model(ev),
            ModelState::Connecting | ModelState::Configuring | ModelState::Reconnecting => {
                self.pending_model.push(ev)
            }
            ModelState::Gone => {
                log::debug!(target: LOG, "model gone; dropping {}", ev.event_type())
            }
        }
    }

    fn session_config(&mut self) -> SessionSettings {
        if self.assistant_audio_seen && self.agent.voice_name().is_some() {
            log::info!(
                target: LOG,
                "keeping the current voice: the model cannot change voice after it has spoken"
            );
        }
        session_config_for(&self.agent, &self.opts, !self.assistant_audio_seen)
    }

    /// The configuration a call speaking as `agent` sends in its first `session.update`
    /// (what the core sends on `session.created`). [`crate::session::warm`] sends it ahead of
    /// the call, at the webhook; [`Input::ModelConnectedConfigured`] then tells the core.
    pub fn first_session_config(agent: &Agent, opts: &CallConfig) -> SessionSettings {
        session_config_for(agent, opts, true)
    }
}

fn is_function_call(item: &Item) -> bool {
    item.kind.as_str() == "function_call"
}

fn history_item(item: &Item) -> HistoryItem {
    let kind = match (item.kind.as_str(), item.role.as_deref()) {
        ("message", Some("user")) => HistoryKind::User,
        ("message", Some("assistant")) => HistoryKind::Assistant,
        ("message", Some("system")) => HistoryKind::System,
        ("function_call", _) => HistoryKind::FunctionCall {
            name: item.name.clone().unwrap_or_default(),
            call_id: item.call_id.clone().unwrap_or_default(),
        },
        ("function_call_output", _) => HistoryKind::FunctionCallOutput {
            call_id: item.call_id.clone().unwrap_or_default(),
        },
        (other, _) => HistoryKind::Other(other.to_owned()),
    };
    let text = match &kind {
        HistoryKind::FunctionCall { .. } => item.arguments.clone().unwrap_or_default(),
        HistoryKind::FunctionCallOutput { .. } => item.output.clone().unwrap_or_default(),
        _ => item.text().unwrap_or_default(),
    };
    HistoryItem {
        item_id: item.id.clone().unwrap_or_default(),
        kind,
        text,
        status: item.status.clone(),
        truncated: None,
    }
}

/// The `event_id` of a `session.update` (the bridge's own or a raw one), if it has one.
fn session_config_for(agent: &Agent, opts: &CallConfig, with_voice: bool) -> SessionSettings {
    let mut cfg = opts
        .session
        .clone()
        .instructions(agent.instructions())
        .tools(agent.tool_definitions())
        .input_format(AudioFormat::Pcmu)
        .output_format(AudioFormat::Pcmu);
    if opts.sideband {
        cfg = cfg.without_audio_formats();
    }
    if cfg.transcription_setting().is_none() {
        if let Some(t) = &opts.caller_transcription {
            cfg = cfg.transcription(t.clone());
        }
    }
    if let (Some(v), true) = (agent.voice_name(), with_voice) {
        cfg = cfg.voice(v);
    }
    cfg
}

fn session_update_id(ev: &ClientEvent) -> Option<String> {
    match ev {
        ClientEvent::SessionUpdate { event_id, .. } => event_id.clone(),
        ClientEvent::Raw { json, event_type } if event_type == "session.update" => {
            serde_json::from_str::<Value>(json)
                .ok()
                .and_then(|v| v["event_id"].as_str().map(str::to_owned))
        }
        _ => None,
    }
}
