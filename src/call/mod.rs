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
pub mod inbound;
mod input;
pub mod live;
pub mod pacer;
pub mod playback;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{
    handoff_tool_name, Agent, FunctionTool, OutputGuardrail, ToolCall, ToolFailure, END_CALL_TOOL,
    TRANSFER_TOOL,
};
use crate::call::playback::{MarkOutcome, PlaybackLedger};
use crate::events::{
    CallError, CloseReason, HistoryItem, HistoryKind, InterruptCause, SessionEvent,
};
use crate::proto::mulaw;
use crate::proto::realtime::{
    AudioFormat, ClientEvent, Item, ResponseConfig, ServerEvent, SessionConfig,
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
    pub session: SessionConfig,
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
    /// Open the model connection only once Twilio's `start` arrived (and passed the
    /// application's check), instead of at once. The session sets it when a start check is
    /// configured. Default false.
    pub connect_model_on_start: bool,
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
            session: SessionConfig::new(),
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
    /// Open a new model connection (after `session_expired`, or on `start` with
    /// [`CallConfig::connect_model_on_start`]); report with
    /// [`Input::ModelConnected`] / [`Input::ModelConnectFailed`].
    ConnectModel,
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
        sent: SessionConfig,
        /// The `session` of the server's `session.updated`.
        session: Value,
    },
    /// The server refused `sent` (an `error` naming its `event_id`): the session keeps the
    /// server's defaults.
    Refused {
        /// The configuration that was sent.
        sent: SessionConfig,
        /// The refused parameter, as the error named it.
        param: Option<String>,
        /// The error's message.
        message: String,
    },
}

impl Preconfigured {
    /// The configuration that was sent.
    pub fn sent(&self) -> &SessionConfig {
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
    /// Sideband calls: the server is playing the agent's audio to the caller
    /// (`output_audio_buffer.started` seen, `.stopped`/`.cleared` not yet).
    sip_playing: bool,
    /// A GPT-Live call's state (`None`: Realtime).
    live: Option<Box<live::LiveState>>,
}

impl CallCore {
    /// A new call that will speak as `agent`. The model connection is assumed to be opening
    /// now; report it with [`Input::ModelConnected`] (optional) and feed the
    /// model's events.
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
            outputs: VecDeque::new(),
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

    fn session_config(&mut self) -> SessionConfig {
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
    pub fn first_session_config(agent: &Agent, opts: &CallConfig) -> SessionConfig {
        session_config_for(agent, opts, true)
    }

    // ----------------------------------------------------------------------------------------
    // Twilio side

    /// A message from Twilio other than `media` (caller audio takes the
    /// [`crate::call::inbound::InboundAudio`] lane; a `media` given here is ignored).
    fn handle_twilio(&mut self, now: Instant, msg: TwilioMessage) {
        if self.is_ended() {
            return;
        }
        self.handle_twilio_activity(now);
        match msg {
            TwilioMessage::Connected(_) | TwilioMessage::Media(_) | TwilioMessage::Unknown(_) => {}
            TwilioMessage::Start(start) => {
                if self.stream_sid.is_some() {
                    log::warn!(target: LOG, "second start on one stream ignored");
                    self.bad_twilio("a second start event was ignored");
                    return;
                }
                let format = &start.start.media_format;
                if !format.is_mulaw_8k_mono() {
                    let error = CallError::UnsupportedMediaFormat {
                        encoding: format.encoding.chars().take(64).collect(),
                        sample_rate: format.sample_rate,
                        channels: format.channels,
                    };
                    log::warn!(target: LOG, "stream refused: {error}");
                    self.start_deadline = None;
                    self.out(Output::CloseModel);
                    self.out(Output::CloseTwilio);
                    self.fail(error);
                    return;
                }
                log::info!(target: LOG, "stream started call={}", start.start.call_sid);
                self.start_deadline = None;
                self.twilio_seen = Some(now);
                if self.opts.connect_model_on_start && self.model == ModelState::Connecting {
                    self.out(Output::ConnectModel);
                }
                self.stream_sid = Some(start.stream_sid.clone());
                self.call_sid = Some(start.start.call_sid.clone());
                if self.phase == CallPhase::AwaitingStart {
                    self.phase = CallPhase::Live;
                }
                self.maybe_greet();
                if let Some(name) = self.ledger.start_probe(now) {
                    self.twilio_mark(name);
                }
                for p in std::mem::take(&mut self.pending_twilio) {
                    match p {
                        PendingTwilio::Audio {
                            response_id,
                            item_id,
                            content_index,
                            payload,
                        } => self.send_audio(now, &response_id, &item_id, content_index, payload),
                        PendingTwilio::Done {
                            item_id,
                            content_index,
                        } => self.send_audio_done(&item_id, content_index),
                    }
                }
                self.live_pump(now);
            }
            TwilioMessage::Dtmf(d) => self.on_dtmf(d.dtmf.digit),
            TwilioMessage::Mark(m) => self.on_mark(now, &m.mark.name),
            TwilioMessage::Stop(_) => {
                if self.stream_sid.is_none() {
                    log::warn!(target: LOG, "twilio sent stop before start");
                } else {
                    log::info!(target: LOG, "twilio sent stop");
                }
                self.out(Output::CloseModel);
                self.finish(CloseReason::TwilioStopped);
            }
        }
    }

    /// The application refused the stream (e.g. a failed one-time token check on `start`):
    /// ends the call without opening or keeping a model connection.
    fn reject(&mut self, _now: Instant, why: String) {
        if self.is_ended() {
            return;
        }
        log::warn!(target: LOG, "stream rejected: {why}");
        self.out(Output::CloseModel);
        self.out(Output::CloseTwilio);
        self.fail(CallError::StreamRefused { reason: why });
    }

    /// Code on one of the call's threads panicked (`what` says where and why): the call
    /// cannot be trusted to go on, so both sockets close and it ends with
    /// [`CallError::Panicked`]. (Tools and guardrails that panic are reported as their
    /// results instead and the call goes on.)
    fn handle_panic(&mut self, _now: Instant, what: String) {
        if self.is_ended() {
            return;
        }
        log::error!(target: LOG, "ending the call after a panic: {what}");
        self.out(Output::CloseModel);
        self.out(Output::CloseTwilio);
        self.finish(CloseReason::Error(CallError::Panicked { message: what }));
    }

    /// Twilio spent its bad-message budget (`messages` bad ones in the call): the call ends
    /// with [`CallError::TooManyBadMessages`] and both sockets are closed.
    fn handle_twilio_over_budget(&mut self, _now: Instant, messages: u64) {
        if self.is_ended() {
            return;
        }
        log::warn!(target: LOG, "twilio sent {messages} bad messages: ending the call");
        self.out(Output::CloseModel);
        self.out(Output::CloseTwilio);
        self.fail(CallError::TooManyBadMessages { messages });
    }

    /// The Twilio WebSocket closed or failed ([`CallError::TwilioGone`]).
    fn handle_twilio_closed(&mut self, _now: Instant, error: CallError) {
        if self.is_ended() {
            return;
        }
        log::info!(target: LOG, "{error}");
        self.out(Output::CloseModel);
        self.finish(CloseReason::Error(error));
    }

    fn twilio_mark(&mut self, name: String) {
        if let Some(sid) = &self.stream_sid {
            let stream_sid = sid.clone();
            self.out(Output::Twilio(TwilioCommand::Mark { stream_sid, name }));
        }
    }

    fn on_mark(&mut self, now: Instant, name: &str) {
        let outcome = self.ledger.on_mark(now, name);
        self.live_on_mark(now);
        match outcome {
            MarkOutcome::Played => {}
            MarkOutcome::ItemFinished { item_id, .. } => {
                log::trace!(target: LOG, "item {item_id} played out");
                if !self.ledger.is_playing() {
                    self.schedule_probe(now);
                }
                self.maybe_audio_stopped();
            }
            MarkOutcome::Probe => {
                log::debug!(target: LOG, "twilio round trip {:?}", self.ledger.rtt().get());
                self.next_probe_at = after(now, self.probe_interval());
            }
            MarkOutcome::Stale => log::trace!(target: LOG, "stale mark ignored"),
            MarkOutcome::Unknown => {
                // The name is the peer's text: never logged as it is.
                log::warn!(target: LOG, "a mark nobody sent ignored ({} bytes)", name.len());
                self.bad_twilio("twilio echoed a mark nobody sent; ignored");
            }
        }
        if self.draining.is_some() && !self.ledger.is_playing() {
            self.finish_drain();
        }
        self.maybe_end();
    }

    /// Sends a round-trip probe one probe interval from now (if nothing plays by then).
    fn schedule_probe(&mut self, now: Instant) {
        if self.next_probe_at.is_none() {
            self.next_probe_at = after(now, self.probe_interval());
        }
    }

    /// Probes come every [`CallConfig::rtt_probe_interval`] until the round trip has
    /// [`RTT_SAMPLES_TO_SETTLE`] samples, then every
    /// [`CallConfig::rtt_probe_interval_settled`].
    fn probe_interval(&self) -> Duration {
        if self.ledger.rtt().samples() < RTT_SAMPLES_TO_SETTLE {
            self.opts.rtt_probe_interval
        } else {
            self.opts.rtt_probe_interval_settled
        }
    }

    fn maybe_audio_stopped(&mut self) {
        if self.audio_reported
            && !self.ledger.is_playing()
            && !self.sip_playing
            && self.active_response.is_none()
        {
            self.audio_reported = false;
            self.event(SessionEvent::AudioStopped);
        }
    }

    fn send_audio(
        &mut self,
        now: Instant,
        response_id: &str,
        item_id: &str,
        content_index: u32,
        payload: String,
    ) {
        let Some(sid) = self.stream_sid.clone() else {
            self.pending_twilio.push(PendingTwilio::Audio {
                response_id: response_id.to_owned(),
                item_id: item_id.to_owned(),
                content_index,
                payload,
            });
            return;
        };
        let bytes = mulaw::base64_decoded_len(&payload) as u64;
        if self.speaking_items.insert(item_id.to_owned()) {
            self.event(SessionEvent::AudioStart {
                item_id: item_id.to_owned(),
            });
        }
        self.audio_reported = true;
        if self.opts.audio_events {
            self.event(SessionEvent::Audio {
                item_id: item_id.to_owned(),
                payload: payload.clone(),
            });
        }
        self.out(Output::Twilio(TwilioCommand::Media {
            stream_sid: sid,
            payload,
        }));
        let mark = self
            .ledger
            .record_chunk(now, response_id, item_id, content_index, bytes);
        self.twilio_mark(mark);
        self.next_probe_at = None;
    }

    /// After forwarding a delta of this item: lets the shell forward the item's next deltas
    /// itself when nothing the core does per delta is needed for them (no audio events, a
    /// Realtime session, the stream known, the call not ending).
    fn offer_audio_lane(&mut self, response_id: &str, item_id: &str, content_index: u32) {
        if self.opts.audio_events || self.is_live() || self.ending.is_some() {
            return;
        }
        let (Some(sid), false) = (&self.stream_sid, self.is_ended()) else {
            return;
        };
        let Some(sent) = self
            .ledger
            .entries()
            .iter()
            .find(|e| e.item_id == item_id && e.content_index == content_index)
            .map(|e| e.sent)
        else {
            return;
        };
        let lane = audio_lane::AudioLane::new(
            sid.as_str(),
            response_id,
            item_id,
            content_index,
            self.ledger.generation(),
            sent,
        );
        self.audio_lane = Some(lane.clone());
        self.out(Output::AudioLane(lane));
    }

    /// A chunk the shell sent on the agent-audio lane: the ledger records it as
    /// [`CallCore::send_audio`] would have.
    fn handle_audio_lane_sent(&mut self, now: Instant, bytes: u64) {
        let Some(lane) = &self.audio_lane else {
            log::warn!(target: LOG, "audio reported sent on a lane that was not granted");
            return;
        };
        self.ledger.record_chunk(
            now,
            lane.response_id(),
            lane.item_id(),
            lane.content_index(),
            bytes,
        );
        self.audio_reported = true;
        self.next_probe_at = None;
    }

    fn send_audio_done(&mut self, item_id: &str, content_index: u32) {
        if self.stream_sid.is_none() {
            self.pending_twilio.push(PendingTwilio::Done {
                item_id: item_id.to_owned(),
                content_index,
            });
            return;
        }
        if let Some(mark) = self.ledger.complete(item_id, content_index) {
            self.twilio_mark(mark);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Model side

    /// The model WebSocket is open (its `session.created` is still to come).
    fn handle_model_connected(&mut self, now: Instant) {
        log::debug!(target: LOG, "model socket open");
        if !self.is_ended() {
            self.model_seen = Some(now);
            self.ping_sent = None;
            self.setup_deadline = after(now, self.opts.model_setup_timeout);
        }
        self.live_connected();
        if self.opts.sideband
            && matches!(
                self.model,
                ModelState::Connecting | ModelState::Reconnecting
            )
            && !self.is_ended()
        {
            // The session was configured by `accept`; the sideband is live at once. One
            // update carries the current agent (as the Agents SDKs do on connect).
            self.pending_model
                .retain(|ev| !matches!(ev, ClientEvent::SessionUpdate { .. }));
            self.config_pending.clear();
            let update = self.session_update();
            self.emit_model(update);
            self.on_configured();
        }
    }

    /// The model WebSocket is open and its session was configured before the call
    /// ([`Preconfigured`]): if that configuration is the one this call's agent needs, its
    /// answer is judged as `session.updated` would be (µ-law both ways: ready at once; a
    /// refusal ends the call with [`CallError::ModelConfigRejected`]); if the agent differs
    /// (chosen again on `start`, from details the webhook did not have), the call's own
    /// `session.update` goes out and is awaited as usual.
    fn handle_model_preconfigured(&mut self, now: Instant, pre: Preconfigured) {
        self.handle_model_connected(now);
        if self.is_ended() || self.model != ModelState::Connecting {
            return;
        }
        // As on `session.created`: the session exists, nothing but its configuration goes
        // out until it is confirmed.
        self.pending_model
            .retain(|ev| !matches!(ev, ClientEvent::SessionUpdate { .. }));
        self.config_pending.clear();
        self.model = ModelState::Configuring;
        let wanted = self.session_config();
        if *pre.sent() != wanted {
            log::info!(
                target: LOG,
                "the call's agent differs from the one configured ahead: updating the session"
            );
            let update = self.session_update();
            self.emit_model(update);
            return;
        }
        match pre {
            Preconfigured::Confirmed { session, .. } => self.on_session_updated(&session),
            Preconfigured::Refused { param, message, .. } => {
                log::error!(
                    target: LOG,
                    "model refused the session configuration ({}): {message}; ending the call",
                    param.as_deref().unwrap_or("no parameter named")
                );
                self.config_rejected(param, message)
            }
        }
    }

    /// The model connection could not be opened.
    fn handle_model_connect_failed(&mut self, _now: Instant, error: CallError) {
        if self.is_ended() {
            return;
        }
        log::warn!(target: LOG, "model connection failed: {error}");
        self.model = ModelState::Gone;
        self.out(Output::CloseTwilio);
        self.fail(error);
    }

    /// The model WebSocket closed or failed.
    fn handle_model_closed(&mut self, now: Instant, error: CallError) {
        if self.is_ended() || self.model == ModelState::Gone {
            return;
        }
        self.active_response = None;
        self.response_requested = None;
        self.model_seen = None;
        self.ping_sent = None;
        if self.ending.is_some() {
            // Nothing more is asked of the model: the ending waits only for the audio sent.
            log::info!(target: LOG, "while the call is ending: {error}");
            self.model = ModelState::Gone;
            self.out(Output::ModelNotReady);
            self.maybe_end();
            return;
        }
        if self.reconnect_pending {
            self.reconnect_pending = false;
            log::info!(target: LOG, "model session expired; reconnecting");
            self.reset_model_session();
            self.model = ModelState::Reconnecting;
            self.out(Output::ModelNotReady);
            self.out(Output::ConnectModel);
            return;
        }
        log::warn!(target: LOG, "{error}");
        self.model = ModelState::Gone;
        self.out(Output::ModelNotReady);
        self.error(error.clone());
        let reason = CloseReason::Error(error);
        if self.ledger.is_playing() && self.stream_sid.is_some() {
            self.draining = Some((after(now, self.opts.drain_timeout), reason));
            self.enter_draining();
        } else {
            self.out(Output::CloseTwilio);
            self.finish(reason);
        }
    }

    /// What belonged to the expired model session goes: its items do not exist in the next
    /// one. Audio still playing is cleared (its truncation could not be told to anyone),
    /// pending tool calls are dropped (their call ids are unknown to the new session; a late
    /// result is ignored), responses and config updates in flight are forgotten, and the voice
    /// may be set again. The conversation itself is carried over as text on confirmation.
    fn reset_model_session(&mut self) {
        if self.ledger.is_playing() {
            if let Some(sid) = self.stream_sid.clone() {
                self.out(Output::Twilio(TwilioCommand::Clear { stream_sid: sid }));
            }
        }
        self.ledger.clear();
        self.pending_twilio.clear();
        self.speaking_items.clear();
        for (call_id, p) in std::mem::take(&mut self.tools) {
            log::info!(target: TOOLS_LOG, "tool call {} ({call_id}) dropped: the model session expired", p.call.name);
            self.error(CallError::ToolDropped {
                tool: p.call.name.clone(),
                call_id,
            });
        }
        // (Cut responses and agent texts stay until their `response.done`, which the old
        // session can no longer send: a few entries, once an hour at most.)
        self.calls_by_response.clear();
        self.config_pending.clear();
        self.needs_response = false;
        self.next_response = None;
        self.assistant_audio_seen = false;
        if self.audio_reported {
            self.audio_reported = false;
            self.event(SessionEvent::AudioStopped);
        }
    }

    fn finish_drain(&mut self) {
        if let Some((_, reason)) = self.draining.take() {
            self.out(Output::CloseTwilio);
            self.finish(reason);
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        if self.is_ended() {
            return;
        }
        self.model = ModelState::Gone;
        self.live_end_turns();
        self.phase = CallPhase::Ended(reason.clone());
        self.event(SessionEvent::Closed { reason });
    }

    /// An event from the model.
    fn handle_model(&mut self, now: Instant, ev: ServerEvent) {
        if self.is_ended() {
            return;
        }
        self.handle_model_activity(now);
        match ev {
            ServerEvent::SessionCreated(_) => self.on_session_created(),
            ServerEvent::Error(e) => self.on_model_error(e.error),
            ServerEvent::SessionUpdated(e) => self.on_session_updated(&e.session),
            ServerEvent::SpeechStarted(_) => {
                self.out(Output::CallerSpeaking(true));
                self.barge_in(now, InterruptCause::CallerSpeech);
            }
            ServerEvent::SpeechStopped(_) => self.out(Output::CallerSpeaking(false)),
            ServerEvent::ConversationItemAdded(e) => self.history_add(e.previous_item_id, &e.item),
            ServerEvent::ConversationItemCreated(e) => {
                self.history_add(e.previous_item_id, &e.item)
            }
            ServerEvent::ConversationItemDone(e) => self.history_done(&e.item),
            ServerEvent::ConversationItemTruncated(e) => {
                if let Some(h) = self.history.iter_mut().find(|h| h.item_id == e.item_id) {
                    h.truncated = Some(e.audio_end_ms);
                    self.history_updated(&e.item_id);
                }
            }
            ServerEvent::ConversationItemDeleted(e) => {
                let before = self.history.len();
                self.history.retain(|h| h.item_id != e.item_id);
                if self.history.len() != before {
                    self.event(SessionEvent::HistoryRemoved { item_id: e.item_id });
                }
            }
            ServerEvent::InputAudioTranscriptionCompleted(e) => {
                if let Some(h) = self.history.iter_mut().find(|h| h.item_id == e.item_id) {
                    h.text = e.transcript;
                    self.history_updated(&e.item_id);
                }
            }
            ServerEvent::ResponseCreated(e) => {
                let id = e.response.id;
                if self.model != ModelState::Ready {
                    // A model that speaks before the session is confirmed speaks 24 kHz PCM:
                    // none of this response's audio goes to the phone, even after the
                    // confirmation arrives mid-response.
                    log::warn!(target: LOG, "response {id} started before the session was confirmed; its audio is dropped");
                    self.cut_responses.insert(id.clone());
                }
                self.response_requested = None;
                self.active_response = Some(id);
                let agent = self.agent.name().to_owned();
                self.event(SessionEvent::AgentStart { agent });
            }
            ServerEvent::OutputAudioDelta(_) | ServerEvent::OutputAudioDone(_)
                if self.opts.sideband =>
            {
                // No audio lane: the audio goes to the caller over RTP, not through us.
                self.assistant_audio_seen = true;
            }
            ServerEvent::OutputAudioDelta(d) => {
                if !d.delta.is_empty() {
                    // The model has spoken in this session (heard or not): its voice is fixed
                    // now, and asking to change it would be refused (`cannot_update_voice`).
                    self.assistant_audio_seen = true;
                }
                if self.model != ModelState::Ready {
                    // Until `session.updated` confirms µ-law out, the model's audio may be
                    // 24 kHz PCM: noise on a phone line. Never forwarded.
                    log::debug!(target: LOG, "audio before the session was confirmed dropped");
                    return;
                }
                if self.cut_responses.contains(&d.response_id) {
                    log::trace!(target: LOG, "late audio of a cut response dropped");
                    return;
                }
                if d.delta.is_empty() || d.item_id.is_empty() {
                    log::debug!(target: LOG, "audio delta without audio or item ignored");
                    return;
                }
                self.send_audio(now, &d.response_id, &d.item_id, d.content_index, d.delta);
                self.offer_audio_lane(&d.response_id, &d.item_id, d.content_index);
            }
            ServerEvent::OutputAudioDone(d) if !self.cut_responses.contains(&d.response_id) => {
                self.send_audio_done(&d.item_id, d.content_index);
            }
            ServerEvent::OutputAudioTranscriptDelta(d) => {
                self.agent_text(&d.response_id, &d.item_id, &d.delta, false)
            }
            ServerEvent::OutputAudioTranscriptDone(d) => {
                self.agent_text(&d.response_id, &d.item_id, &d.transcript, true)
            }
            ServerEvent::OutputTextDelta(d) => {
                self.agent_text(&d.response_id, &d.item_id, &d.delta, false)
            }
            ServerEvent::OutputTextDone(d) => {
                self.agent_text(&d.response_id, &d.item_id, &d.text, true)
            }
            ServerEvent::OutputItemDone(e) if is_function_call(&e.item) => {
                if !self.calls_by_response.contains_key(&e.response_id)
                    && self.calls_by_response.len() >= MAX_CALLS_PER_RESPONSE
                {
                    // Responses that never end: a peer out of protocol.
                    log::warn!(target: TOOLS_LOG, "function calls of too many unfinished responses; one ignored");
                    return;
                }
                let calls = self.calls_by_response.entry(e.response_id).or_default();
                if calls.len() < MAX_CALLS_PER_RESPONSE {
                    calls.push(e.item);
                } else {
                    log::warn!(target: TOOLS_LOG, "too many function calls in one response; one ignored");
                }
            }
            ServerEvent::ResponseDone(e) => {
                self.run_function_calls(now, &e.response);
                self.on_response_done(&e.response);
            }
            ServerEvent::Unknown(v) if self.opts.sideband => self.on_sideband_event(now, &v),
            _ => {}
        }
    }

    /// Events only a SIP (or WebRTC) session has (brief §5.3).
    fn on_sideband_event(&mut self, _now: Instant, v: &Value) {
        match v["type"].as_str().unwrap_or("") {
            "output_audio_buffer.started" => {
                self.sip_playing = true;
                self.assistant_audio_seen = true;
                self.audio_reported = true;
            }
            "output_audio_buffer.stopped" | "output_audio_buffer.cleared" => {
                self.sip_playing = false;
                self.maybe_audio_stopped();
                self.maybe_end();
            }
            "input_audio_buffer.dtmf_event_received" => {
                let Some(digit) = v["event"].as_str() else {
                    log::debug!(target: LOG, "dtmf event without a key ignored");
                    return;
                };
                let digit: String = digit.chars().take(4).collect();
                self.on_dtmf(digit);
            }
            _ => {}
        }
    }

    fn on_dtmf(&mut self, digit: String) {
        if self.opts.forward_dtmf {
            self.send_model(ClientEvent::ConversationItemCreate {
                event_id: None,
                previous_item_id: None,
                item: Item::user_text(format!("The caller pressed the key {digit}.")),
            });
            self.needs_response = true;
            self.maybe_create_response();
        }
        self.event(SessionEvent::Dtmf { digit });
    }

    /// An interruption on a sideband call: the server owns playback, so there is nothing to
    /// truncate; `response.cancel` stops generation and `output_audio_buffer.clear` cuts
    /// what is playing (brief §5.4), unless the server did it itself on caller speech.
    fn sideband_interrupt(&mut self, cause: InterruptCause) {
        let response = self
            .active_response
            .clone()
            .filter(|r| !self.cut_responses.contains(r));
        if !self.sip_playing && response.is_none() {
            return;
        }
        for t in self.tools.values_mut() {
            t.interrupted = true;
        }
        let server_cancels =
            cause == InterruptCause::CallerSpeech && self.opts.session.interrupt_response();
        if !server_cancels {
            if let Some(r) = &response {
                self.send_model(ClientEvent::ResponseCancel {
                    event_id: None,
                    response_id: Some(r.clone()),
                });
            }
            if self.sip_playing {
                self.send_model(ClientEvent::OutputAudioBufferClear { event_id: None });
            }
        }
        if let Some(r) = response {
            self.cut_responses.insert(r);
        }
        self.speaking_items.clear();
        self.event(SessionEvent::AudioInterrupted {
            cause,
            heard: Vec::new(),
            cut: Vec::new(),
        });
        self.maybe_end();
    }

    fn on_session_created(&mut self) {
        match self.model {
            ModelState::Connecting => {}
            ModelState::Reconnecting => self.resumed = true,
            ModelState::Configuring | ModelState::Ready | ModelState::Gone => return,
        }
        // The session starts with the server's defaults (24 kHz PCM both ways): nothing but
        // our update goes out until the server confirms µ-law. Updates queued before this are
        // superseded by this one (it is built from the current agent).
        self.pending_model
            .retain(|ev| !matches!(ev, ClientEvent::SessionUpdate { .. }));
        self.config_pending.clear();
        let update = self.session_update();
        self.emit_model(update);
        self.model = ModelState::Configuring;
    }

    fn on_session_updated(&mut self, session: &Value) {
        self.config_pending.pop_front();
        let fmt = |dir: &str| {
            session["audio"][dir]["format"]["type"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        };
        let (fmt_in, fmt_out) = (fmt("input"), fmt("output"));
        if !self.opts.sideband && (fmt_in != "audio/pcmu" || fmt_out != "audio/pcmu") {
            let param = if fmt_in != "audio/pcmu" {
                "session.audio.input.format"
            } else {
                "session.audio.output.format"
            };
            let message = format!(
                "session.updated shows input {fmt_in} / output {fmt_out}, not audio/pcmu both ways"
            );
            log::error!(target: LOG, "model session is not µ-law ({param}): {message}; ending the call");
            return self.config_rejected(Some(param.to_owned()), message);
        }
        if self.model == ModelState::Configuring {
            self.on_configured();
        } else if self.config_pending.is_empty() {
            // A handoff's or update_agent's configuration is in force now (on a sideband
            // call, also the one sent on connect: the greeting waits for it).
            if self.opts.sideband {
                self.maybe_greet();
            }
            self.maybe_create_response();
        }
    }

    /// The model confirmed µ-law both ways: the call is live.
    fn on_configured(&mut self) {
        self.model = ModelState::Ready;
        self.setup_deadline = None;
        if std::mem::take(&mut self.resumed) {
            // A fresh model session after `session_expired`: carry the conversation over as
            // text so the agent remembers it.
            let mut replay = Vec::new();
            for h in &self.history {
                if h.text.is_empty() {
                    continue;
                }
                let item = match &h.kind {
                    HistoryKind::User => Item::user_text(h.text.clone()),
                    HistoryKind::Assistant => Item::assistant_text(h.text.clone()),
                    HistoryKind::System => Item::system_text(h.text.clone()),
                    HistoryKind::FunctionCallOutput { .. } => {
                        Item::system_text(format!("Earlier tool result: {}", h.text))
                    }
                    _ => continue,
                };
                replay.push(item);
            }
            log::info!(target: LOG, "replaying {} history items into the new model session", replay.len());
            for item in replay {
                self.emit_model(ClientEvent::ConversationItemCreate {
                    event_id: None,
                    previous_item_id: None,
                    item,
                });
            }
        }
        // Caller audio kept so far goes first, then what the application asked for meanwhile.
        self.out(Output::ModelReady);
        for ev in std::mem::take(&mut self.pending_model) {
            self.emit_model(ev);
        }
        self.maybe_greet();
        self.maybe_create_response();
    }

    /// The model refused the configuration the call needs: end the call before any audio.
    fn config_rejected(&mut self, param: Option<String>, message: String) {
        self.out(Output::ModelNotReady);
        self.out(Output::CloseModel);
        self.out(Output::CloseTwilio);
        self.fail(CallError::ModelConfigRejected { param, message });
    }

    /// Sends the greeting once the session is confirmed and Twilio has started the stream.
    fn maybe_greet(&mut self) {
        if self.greeting.is_none()
            || self.ending.is_some()
            || self.model != ModelState::Ready
            || (self.stream_sid.is_none() && !self.opts.sideband)
            || !self.config_pending.is_empty()
        {
            return;
        }
        let Some(greeting) = self.greeting.take() else {
            return;
        };
        if self.live.is_some() {
            return self.live_greet(greeting);
        }
        if self.active_response.is_some() || self.response_requested.is_some() {
            log::info!(target: LOG, "greeting skipped: the agent is already answering");
            return;
        }
        let instructions = greeting.instructions(self.agent.instructions());
        let id = self.next_id("greeting");
        log::debug!(target: LOG, "greeting the caller");
        self.response_requested = Some(id.clone());
        self.emit_model(ClientEvent::ResponseCreate {
            event_id: Some(id),
            response: Some(ResponseConfig {
                instructions: Some(instructions),
                ..Default::default()
            }),
        });
    }

    fn on_model_error(&mut self, e: crate::proto::realtime::ApiError) {
        let crate::proto::realtime::ApiError {
            kind,
            code,
            message,
            param,
            event_id,
        } = e;
        if event_id.is_some() && event_id == self.response_requested {
            // Our response.create was refused: allow another one later.
            self.response_requested = None;
        }
        if let Some(pos) = event_id
            .as_ref()
            .and_then(|id| self.config_pending.iter().position(|p| p == id))
        {
            self.config_pending.remove(pos);
            let what = param.as_deref().unwrap_or("no parameter named");
            if self.model == ModelState::Configuring {
                log::error!(
                    target: LOG,
                    "model refused the session configuration ({what}): {code:?} {message}; ending the call"
                );
                return self.config_rejected(param, message);
            }
            // A later update (handoff, update_agent, raw): the server keeps the previous
            // configuration, which was confirmed µ-law; the call goes on with it.
            log::warn!(
                target: LOG,
                "model refused a session update ({what}): {code:?} {message}; the previous configuration stays"
            );
            self.error(CallError::ModelError { code, message });
            if self.config_pending.is_empty() {
                self.maybe_create_response();
            }
            return;
        }
        match code.as_deref() {
            Some("session_expired") if self.opts.sideband => {
                // A SIP call's session is the call's own: a new sideband cannot renew it
                // (brief §5.1: `call_id` attaches to the existing session). Hang up.
                log::warn!(target: LOG, "the SIP call's session expired: {message}; hanging up");
                self.error(CallError::ModelError { code, message });
                self.out(Output::CloseTwilio);
                self.out(Output::CloseModel);
                self.finish(CloseReason::SessionExpired);
                return;
            }
            Some("session_expired") => self.reconnect_pending = true,
            Some("response_cancel_not_active") => {
                log::debug!(target: LOG, "cancel raced with the end of the response");
                return;
            }
            _ => {}
        }
        log::warn!(target: LOG, "model error {kind} {code:?}: {message}");
        self.error(CallError::ModelError { code, message });
    }

    fn on_response_done(&mut self, response: &crate::proto::realtime::Response) {
        let id = response.id.clone();
        if self.active_response.as_deref() == Some(id.as_str()) {
            self.active_response = None;
        }
        self.cut_responses.remove(&id);
        self.tripped_responses.remove(&id);
        let mut items: Vec<(u64, String)> = Vec::new();
        self.agent_text.retain(|_, t| {
            if t.response_id != id {
                return true;
            }
            items.push((t.seq, std::mem::take(&mut t.text)));
            false
        });
        items.sort_unstable_by_key(|(seq, _)| *seq);
        let text: String = items.into_iter().map(|(_, t)| t).collect();
        if response.status.as_deref() == Some("failed") {
            let details = response
                .status_details
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default();
            self.error(CallError::ModelError {
                code: None,
                message: format!("response failed: {details}"),
            });
        }
        let agent = self.agent.name().to_owned();
        self.event(SessionEvent::AgentEnd { agent, text });
        self.maybe_audio_stopped();
        self.maybe_create_response();
        self.maybe_end();
    }

    fn maybe_create_response(&mut self) {
        if self.ending.is_some() {
            // The call is ending: nothing may talk after the last words.
            self.needs_response = false;
            return;
        }
        if !self.needs_response
            || self.model != ModelState::Ready
            || !self.config_pending.is_empty()
            || self.active_response.is_some()
            || self.response_requested.is_some()
            || !self.tools.is_empty()
        {
            return;
        }
        self.needs_response = false;
        let id = self.next_id("resp");
        self.response_requested = Some(id.clone());
        let response = self.next_response.take();
        self.emit_model(ClientEvent::ResponseCreate {
            event_id: Some(id),
            response,
        });
    }

    // ----------------------------------------------------------------------------------------
    // Barge-in

    fn barge_in(&mut self, now: Instant, cause: InterruptCause) {
        if self.live.is_some() {
            return self.live_hard_stop(cause);
        }
        if self.opts.sideband {
            return self.sideband_interrupt(cause);
        }
        let playing = self.ledger.is_playing() || !self.pending_twilio.is_empty();
        // One cut per response: a response already cut (its late audio is being dropped until
        // its `response.done`) is not cancelled or reported again.
        let response = self
            .active_response
            .clone()
            .filter(|r| !self.cut_responses.contains(r));
        if !playing && response.is_none() {
            return;
        }
        if self.ledger.is_playing() {
            if let Some(sid) = self.stream_sid.clone() {
                self.out(Output::Twilio(TwilioCommand::Clear { stream_sid: sid }));
            }
        }
        // Audio that never reached Twilio (it came before `start`) was heard for 0 ms; all
        // of it (µ-law: 8 bytes a millisecond) is cut.
        let mut unsent: Vec<(String, u32, u64)> = Vec::new();
        for p in self.pending_twilio.drain(..) {
            if let PendingTwilio::Audio {
                item_id,
                content_index,
                payload,
                ..
            } = p
            {
                let bytes = mulaw::base64_decoded_len(&payload) as u64;
                match unsent
                    .iter_mut()
                    .find(|(i, c, _)| *i == item_id && *c == content_index)
                {
                    Some((_, _, b)) => *b = b.saturating_add(bytes),
                    None => unsent.push((item_id, content_index, bytes)),
                }
            }
        }
        // Tools already running were asked for before the interruption: their output is
        // still given to the model, but without a response.create that would talk over the
        // caller (the caller's turn is answered as usual).
        for t in self.tools.values_mut() {
            t.interrupted = true;
        }
        if let Some(r) = &response {
            let server_cancels =
                cause == InterruptCause::CallerSpeech && self.opts.session.interrupt_response();
            if !server_cancels {
                self.send_model(ClientEvent::ResponseCancel {
                    event_id: None,
                    response_id: Some(r.clone()),
                });
            }
            self.cut_responses.insert(r.clone());
        }
        let truncations = self.ledger.truncations(now);
        let mut heard = Vec::with_capacity(truncations.len());
        let mut cut = Vec::with_capacity(truncations.len());
        for t in truncations {
            log::debug!(
                target: LOG,
                "truncate {} at {} ms of {} ms sent",
                t.item_id,
                t.audio_end_ms,
                t.sent_ms
            );
            heard.push((t.item_id.clone(), t.audio_end_ms));
            cut.push((t.item_id.clone(), t.sent_ms.saturating_sub(t.audio_end_ms)));
            self.send_model(ClientEvent::ConversationItemTruncate {
                event_id: None,
                item_id: t.item_id,
                content_index: t.content_index,
                audio_end_ms: t.audio_end_ms,
            });
        }
        for (item_id, content_index, bytes) in unsent {
            if heard.iter().any(|(i, _)| *i == item_id) {
                continue;
            }
            log::debug!(target: LOG, "truncate {item_id} at 0 ms (never reached twilio)");
            heard.push((item_id.clone(), 0));
            cut.push((item_id.clone(), bytes / 8));
            self.send_model(ClientEvent::ConversationItemTruncate {
                event_id: None,
                item_id,
                content_index,
                audio_end_ms: 0,
            });
        }
        self.ledger.clear();
        // Twilio's buffer is empty once the clear lands: keep measuring the round trip while
        // nothing plays.
        self.schedule_probe(now);
        self.speaking_items.clear();
        self.audio_reported = false;
        self.event(SessionEvent::AudioInterrupted { cause, heard, cut });
        if self.draining.is_some() {
            self.finish_drain();
        }
        self.maybe_end();
    }

    // ----------------------------------------------------------------------------------------
    // Tools and handoffs

    /// At `response.done`: runs the response's function calls, unless it was cut (barge-in,
    /// `interrupt()`, a guardrail) or did not complete (`cancelled`, `incomplete`, `failed`),
    /// or the call item itself is not `completed`. Calls that are not run get no output and
    /// no `response.create`: the caller has the floor, and their next turn is answered as
    /// usual (the model sees the unfinished call in the conversation).
    fn run_function_calls(&mut self, now: Instant, response: &crate::proto::realtime::Response) {
        let mut calls = self
            .calls_by_response
            .remove(&response.id)
            .unwrap_or_default();
        // Calls only listed in `response.done` (no `output_item.done` seen) count too.
        for item in response.output.iter().filter(|i| is_function_call(i)) {
            if calls.len() < MAX_CALLS_PER_RESPONSE
                && !calls.iter().any(|c| c.call_id == item.call_id)
            {
                calls.push(item.clone());
            }
        }
        if calls.is_empty() {
            return;
        }
        let completed = response.status.as_deref().is_none_or(|s| s == "completed")
            && !self.cut_responses.contains(&response.id);
        for item in calls {
            let item_done = item.status.as_deref().is_none_or(|s| s == "completed");
            if completed && item_done {
                self.on_function_call(now, &item);
            } else {
                let name = item.name.as_deref().unwrap_or("?");
                log::info!(
                    target: TOOLS_LOG,
                    "function call {name} not run: its response was cut or did not complete"
                );
            }
        }
    }

    fn on_function_call(&mut self, now: Instant, item: &Item) {
        let name = item.name.clone().unwrap_or_default();
        let call_id = item.call_id.clone().unwrap_or_default();
        let raw = item.arguments.clone().unwrap_or_default();
        if call_id.is_empty() || self.tools.contains_key(&call_id) {
            log::warn!(target: TOOLS_LOG, "function call without a usable call id ignored");
            return;
        }
        let arguments = if raw.trim().is_empty() {
            Ok(Value::Object(Default::default()))
        } else {
            serde_json::from_str::<Value>(&raw)
        };
        let agent_name = self.agent.name().to_owned();
        if name == END_CALL_TOOL && self.agent.hangs_up() {
            log::info!(target: TOOLS_LOG, "the agent ends the call");
            self.builtin_output(&call_id, END_CALL_OUTPUT.to_owned());
            self.begin_ending(now, CloseReason::AgentHungUp);
            return;
        }
        if name == TRANSFER_TOOL && !self.agent.transfers().is_empty() {
            self.on_transfer_call(now, &call_id, arguments.ok());
            return;
        }
        if let Some(target) = self.handoff_target(&name) {
            self.handoff(&call_id, target);
            return;
        }
        let Some(tool) = self.agent.find_tool(&name).cloned() else {
            log::warn!(target: TOOLS_LOG, "model called unknown tool {name}");
            self.error(CallError::UnknownTool {
                message: format!("the model called an unknown tool: {name}"),
            });
            self.tool_output(
                &agent_name,
                &name,
                &call_id,
                format!("Error: there is no tool named {name}."),
                true,
            );
            return;
        };
        let arguments = match arguments {
            Ok(v) => v,
            Err(e) => {
                self.tool_output(
                    &agent_name,
                    &name,
                    &call_id,
                    format!("Error: the arguments are not valid JSON ({e})."),
                    true,
                );
                return;
            }
        };
        let call = ToolCall {
            call_id: call_id.clone(),
            name: name.clone(),
            arguments,
            raw_arguments: raw.clone(),
            call_info: None,
        };
        if tool.requires_approval() {
            self.tools.insert(
                call_id.clone(),
                PendingTool {
                    call,
                    tool,
                    deadline: now.checked_add(self.opts.approval_timeout),
                    awaiting_approval: true,
                    interrupted: false,
                },
            );
            self.event(SessionEvent::ToolApprovalRequested {
                agent: agent_name,
                tool: name,
                call_id,
                arguments: raw,
            });
            return;
        }
        self.start_tool(now, call, tool);
    }

    /// The output of a built-in tool (`end_call`, `transfer_call`): given so the model's
    /// conversation stays consistent, with no response asked for after it.
    fn builtin_output(&mut self, call_id: &str, output: String) {
        self.send_model(ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::function_call_output(call_id, output),
        });
    }

    fn on_transfer_call(&mut self, now: Instant, call_id: &str, arguments: Option<Value>) {
        let chosen = arguments
            .as_ref()
            .and_then(|a| a["destination"].as_str())
            .unwrap_or("");
        let target = self
            .agent
            .transfers()
            .iter()
            .find(|t| t.name == chosen)
            .cloned();
        let Some(target) = target else {
            // Only configured destinations can be dialled; the model may choose again.
            let names: Vec<String> = self
                .agent
                .transfers()
                .iter()
                .map(|t| t.name.clone())
                .collect();
            log::warn!(
                target: TOOLS_LOG,
                "transfer_call with an unknown destination ({} bytes) refused",
                chosen.len()
            );
            self.error(CallError::UnknownTool {
                message: "the model asked for a transfer destination that is not configured".into(),
            });
            let agent = self.agent.name().to_owned();
            self.tool_output(
                &agent,
                TRANSFER_TOOL,
                call_id,
                format!(
                    "Error: there is no such destination. Choose one of: {}.",
                    names.join(", ")
                ),
                true,
            );
            return;
        };
        log::info!(target: TOOLS_LOG, "the agent transfers the call to {}", target.name);
        self.builtin_output(
            call_id,
            format!(
                "The caller is being transferred to {} once they have heard what you said. Say nothing more.",
                target.name
            ),
        );
        self.begin_ending(
            now,
            CloseReason::Transferred {
                name: target.name,
                destination: target.destination,
                by_agent: true,
            },
        );
    }

    /// The call will end once the agent's last words are heard (see [`CloseReason::HungUp`]).
    /// The first decision stands.
    fn begin_ending(&mut self, now: Instant, reason: CloseReason) {
        if self.ending.is_some() || self.is_ended() {
            log::debug!(target: LOG, "the call is already ending; {reason} ignored");
            return;
        }
        log::info!(target: LOG, "call ending ({reason}) once the last words are heard");
        self.needs_response = false;
        self.greeting = None;
        self.event(SessionEvent::Ending {
            reason: reason.clone(),
        });
        self.ending = Some((after(now, self.opts.hang_up_timeout), reason));
        self.enter_draining();
        self.maybe_end();
    }

    /// Ends an ending call once no response is under way and the caller has heard all the
    /// audio sent (every mark echoed, or what was left cut by a barge-in).
    fn maybe_end(&mut self) {
        if self.ending.is_none() || self.is_ended() {
            return;
        }
        let heard = if self.opts.sideband {
            !self.sip_playing
        } else if self.live.is_some() {
            self.live_heard()
        } else {
            self.stream_sid.is_none()
                || (!self.ledger.is_playing() && self.pending_twilio.is_empty())
        };
        if heard && self.active_response.is_none() && self.response_requested.is_none() {
            self.finish_ending();
        }
    }

    fn finish_ending(&mut self) {
        if let Some((_, reason)) = self.ending.take() {
            self.out(Output::CloseTwilio);
            self.out(Output::CloseModel);
            self.finish(reason);
        }
    }

    fn start_tool(&mut self, now: Instant, call: ToolCall, tool: FunctionTool) {
        let timeout = tool.call_timeout().unwrap_or(self.opts.tool_timeout);
        log::debug!(target: TOOLS_LOG, "running tool {} ({})", call.name, call.call_id);
        self.event(SessionEvent::ToolStart {
            agent: self.agent.name().to_owned(),
            tool: call.name.clone(),
            call_id: call.call_id.clone(),
            arguments: call.raw_arguments.clone(),
        });
        self.out(Output::RunTool {
            call_id: call.call_id.clone(),
            name: call.name.clone(),
            arguments: call.raw_arguments.clone(),
        });
        self.tools.insert(
            call.call_id.clone(),
            PendingTool {
                call,
                tool,
                deadline: after(now, timeout),
                awaiting_approval: false,
                interrupted: false,
            },
        );
    }

    fn tool_output(
        &mut self,
        agent: &str,
        tool: &str,
        call_id: &str,
        output: String,
        is_error: bool,
    ) {
        self.tool_output_then(agent, tool, call_id, output, is_error, true);
    }

    /// Gives the model a call's output; asks for a response only when `respond`.
    fn tool_output_then(
        &mut self,
        agent: &str,
        tool: &str,
        call_id: &str,
        output: String,
        is_error: bool,
        respond: bool,
    ) {
        self.send_model(ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::function_call_output(call_id, output.clone()),
        });
        self.event(SessionEvent::ToolEnd {
            agent: agent.to_owned(),
            tool: tool.to_owned(),
            call_id: call_id.to_owned(),
            output,
            is_error,
        });
        if respond {
            self.needs_response = true;
        } else {
            log::debug!(target: TOOLS_LOG, "no response.create after {tool}: the agent was interrupted since the call");
        }
        self.maybe_create_response();
    }

    /// A tool run finished (`Ok(output)` or `Err(message)`). Results of calls that timed out
    /// or are unknown are ignored.
    fn handle_tool_result(
        &mut self,
        _now: Instant,
        call_id: &str,
        result: Result<String, ToolFailure>,
    ) {
        if self.is_ended() {
            return;
        }
        let Some(p) = self.tools.get(call_id) else {
            log::debug!(target: TOOLS_LOG, "late or unknown tool result for {call_id} ignored");
            return;
        };
        if p.awaiting_approval {
            return;
        }
        let Some(p) = self.tools.remove(call_id) else {
            return;
        };
        let agent = self.agent.name().to_owned();
        let (output, is_error) = match result {
            Ok(s) => (s, false),
            Err(ToolFailure::Panicked(message)) => {
                log::warn!(target: TOOLS_LOG, "tool {} panicked", p.call.name);
                self.error(CallError::ToolPanicked {
                    tool: p.call.name.clone(),
                    call_id: call_id.to_owned(),
                    message,
                });
                (format!("Error: tool {} panicked", p.call.name), true)
            }
            Err(e) => {
                log::info!(target: TOOLS_LOG, "tool {} failed: {e}", p.call.name);
                (format!("Error: {e}"), true)
            }
        };
        self.tool_output_then(
            &agent,
            &p.call.name,
            call_id,
            output,
            is_error,
            !p.interrupted,
        );
    }

    fn handoff_target(&self, tool_name: &str) -> Option<Agent> {
        if !tool_name.starts_with("transfer_to_") {
            return None;
        }
        let target = self
            .agent
            .handoff_names()
            .into_iter()
            .find(|n| handoff_tool_name(n) == tool_name)?;
        self.agents.iter().find(|a| a.name() == target).cloned()
    }

    fn handoff(&mut self, call_id: &str, target: Agent) {
        let from = self.agent.name().to_owned();
        let to = target.name().to_owned();
        log::info!(target: LOG, "handoff {from} -> {to}");
        self.set_agent(target);
        self.send_model(ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::function_call_output(
                call_id,
                serde_json::json!({ "assistant": to }).to_string(),
            ),
        });
        self.event(SessionEvent::Handoff { from, to });
        self.needs_response = true;
        self.maybe_create_response();
    }

    fn set_agent(&mut self, agent: Agent) {
        self.agent = agent;
        for a in self.agent.reachable() {
            if !self.agents.iter().any(|x| x.name() == a.name()) {
                self.agents.push(a);
            }
        }
        let update = self.session_update();
        self.send_model(update);
    }

    // ----------------------------------------------------------------------------------------
    // Agent text, guardrails, history

    fn agent_text(&mut self, response_id: &str, item_id: &str, text: &str, done: bool) {
        // Text is kept per item: the items of one response may interleave their deltas, and a
        // final text replaces exactly its own item's deltas (never a cut inside another item's
        // text, or inside a character).
        let seq = self.next_text_seq;
        let at = self
            .agent_text
            .entry(item_id.to_owned())
            .or_insert_with(|| AgentText {
                response_id: response_id.to_owned(),
                seq,
                ..Default::default()
            });
        if at.seq == seq {
            // A new entry (only a new one has the next sequence number).
            self.next_text_seq = self.next_text_seq.saturating_add(1);
        }
        if done {
            at.text.clear();
        }
        at.text.push_str(text);
        at.checked = at.checked.min(at.text.len());
        // Keep the history's transcript current (it survives truncation).
        let snapshot = at.text.clone();
        if let Some(h) = self.history.iter_mut().find(|h| h.item_id == item_id) {
            h.text = snapshot.clone();
        }
        if done {
            self.history_updated(item_id);
        }
        let guardrails = self.agent.guardrails().to_vec();
        if guardrails.is_empty()
            || self.tripped_responses.contains(response_id)
            || self.cut_responses.contains(response_id)
        {
            return;
        }
        let Some(at) = self.agent_text.get_mut(item_id) else {
            return;
        };
        if !done
            && at.text.len()
                < at.checked
                    .saturating_add(self.opts.guardrail_debounce_chars)
        {
            return;
        }
        at.checked = at.text.len();
        self.next_guardrail_id += 1;
        let id = self.next_guardrail_id;
        self.guardrail_runs.insert(id, response_id.to_owned());
        self.out(Output::RunGuardrails(GuardrailRun {
            id,
            text: snapshot,
            guardrails,
        }));
    }

    /// The result of a [`GuardrailRun`]: `None` if every guardrail passed, else the first
    /// trip as (guardrail name, reason).
    fn handle_guardrail_result(
        &mut self,
        now: Instant,
        run: &GuardrailRun,
        trip: Option<(String, String)>,
    ) {
        let Some(response_id) = self.guardrail_runs.remove(&run.id) else {
            return;
        };
        let Some((guardrail, reason)) = trip else {
            return;
        };
        if self.is_ended() || !self.tripped_responses.insert(response_id.clone()) {
            return;
        }
        log::info!(target: LOG, "output guardrail {guardrail} tripped");
        self.event(SessionEvent::GuardrailTripped {
            guardrail: guardrail.clone(),
            reason: reason.clone(),
            text: run.text.clone(),
        });
        self.barge_in(now, InterruptCause::Guardrail);
        self.send_model(ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::system_text(format!(
                "Your last reply was stopped because it broke the rule \"{guardrail}\" ({reason}). \
                 Briefly apologise and answer again without breaking that rule."
            )),
        });
        self.needs_response = true;
        self.maybe_create_response();
    }

    fn history_add(&mut self, previous: Option<String>, item: &Item) {
        let Some(id) = item.id.clone() else { return };
        if self.history.iter().any(|h| h.item_id == id) {
            self.history_done(item);
            return;
        }
        let h = history_item(item);
        let pos = previous
            .and_then(|p| self.history.iter().position(|h| h.item_id == p))
            .map(|i| i + 1)
            .unwrap_or(self.history.len());
        self.history.insert(pos, h.clone());
        self.event(SessionEvent::HistoryAdded(h));
    }

    fn history_done(&mut self, item: &Item) {
        let Some(id) = item.id.as_deref() else { return };
        let fresh = history_item(item);
        let Some(h) = self.history.iter_mut().find(|h| h.item_id == id) else {
            self.history_add(None, item);
            return;
        };
        if !fresh.text.is_empty() && h.truncated.is_none() {
            h.text = fresh.text;
        }
        h.status = fresh.status;
        h.kind = fresh.kind;
        self.history_updated(id);
    }

    /// Reports the item that changed, not the whole history: a copy of the whole history on
    /// every change would cost O(n²) over a long call. `Session::history()` gives the
    /// whole of it on demand.
    fn history_updated(&mut self, item_id: &str) {
        if let Some(h) = self.history.iter().find(|h| h.item_id == item_id) {
            let h = h.clone();
            self.event(SessionEvent::HistoryUpdated(h));
        }
    }

    // ----------------------------------------------------------------------------------------
    // Commands and time

    /// A command from the application.
    fn handle_command(&mut self, now: Instant, cmd: Command) {
        if self.is_ended() {
            return;
        }
        let Some(cmd) = (if self.live.is_some() {
            self.live_command(cmd)
        } else {
            Some(cmd)
        }) else {
            return;
        };
        match cmd {
            Command::SendMessage(text) => {
                self.send_model(ClientEvent::ConversationItemCreate {
                    event_id: None,
                    previous_item_id: None,
                    item: Item::user_text(text),
                });
                self.needs_response = true;
                self.maybe_create_response();
            }
            Command::Interrupt => self.barge_in(now, InterruptCause::Application),
            Command::Approve(call_id) => match self.tools.get(&call_id) {
                Some(p) if p.awaiting_approval => {
                    let Some(p) = self.tools.remove(&call_id) else {
                        return;
                    };
                    self.start_tool(now, p.call, p.tool);
                }
                _ => log::warn!(target: TOOLS_LOG, "approve: no call {call_id} waits for approval"),
            },
            Command::Reject { call_id, message } => match self.tools.get(&call_id) {
                Some(p) if p.awaiting_approval => {
                    let Some(p) = self.tools.remove(&call_id) else {
                        return;
                    };
                    let agent = self.agent.name().to_owned();
                    let msg = message.unwrap_or_else(|| {
                        "The caller's operator did not allow this tool call.".into()
                    });
                    self.tool_output(&agent, &p.call.name, &call_id, msg, true);
                }
                _ => log::warn!(target: TOOLS_LOG, "reject: no call {call_id} waits for approval"),
            },
            Command::UpdateAgent(agent) => self.set_agent(agent),
            Command::CreateResponse(cfg) => {
                self.next_response = (cfg != ResponseConfig::default()).then_some(cfg);
                self.needs_response = true;
                self.maybe_create_response();
            }
            Command::CommitAudio => {
                self.send_model(ClientEvent::InputAudioBufferCommit { event_id: None })
            }
            Command::SendRaw(json) => match self.raw_event(&json) {
                Ok(ev) => self.send_model(ev),
                Err(why) => {
                    log::warn!(target: LOG, "raw client event refused: {why}");
                    self.error(CallError::CommandRefused {
                        message: format!("raw client event refused: {why}"),
                    });
                }
            },
            Command::HangUp => self.begin_ending(now, CloseReason::HungUp),
            Command::Transfer(target) => self.begin_ending(
                now,
                CloseReason::Transferred {
                    name: target.name,
                    destination: target.destination,
                    by_agent: false,
                },
            ),
            Command::Close => {
                self.out(Output::CloseModel);
                self.out(Output::CloseTwilio);
                self.finish(CloseReason::Closed);
            }
        }
    }

    /// Checks a raw client event of the application (see [`Command::SendRaw`]).
    fn raw_event(&mut self, json: &str) -> Result<ClientEvent, String> {
        let mut v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON ({e})"))?;
        let Some(event_type) = v.get("type").and_then(Value::as_str).map(str::to_owned) else {
            return Err("not a JSON object with a string \"type\"".into());
        };
        if event_type != "session.update" {
            return Ok(ClientEvent::Raw {
                json: json.to_owned(),
                event_type,
            });
        }
        for dir in ["input", "output"] {
            let f = &v["session"]["audio"][dir]["format"];
            if !f.is_null() && f["type"] != "audio/pcmu" {
                return Err(format!(
                    "session.audio.{dir}.format must stay audio/pcmu on a phone call, not {f}"
                ));
            }
        }
        // Tag it so a refusal can be told apart and a confirmation waited for.
        if v.get("event_id").and_then(Value::as_str).is_none() {
            v["event_id"] = Value::String(self.next_id("session"));
        }
        Ok(ClientEvent::Raw {
            json: v.to_string(),
            event_type,
        })
    }

    /// Time passed: tool and approval timeouts, the end of a drain, round-trip probes, a
    /// silent Twilio stream, model pings and their answers.
    fn handle_timeout(&mut self, now: Instant) {
        if self.is_ended() {
            return;
        }
        let expired: Vec<String> = self
            .tools
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for call_id in expired {
            let Some(p) = self.tools.remove(&call_id) else {
                continue;
            };
            let agent = self.agent.name().to_owned();
            if p.awaiting_approval {
                log::warn!(
                    target: TOOLS_LOG,
                    "tool {} ({call_id}) was not approved within {:?}; rejected",
                    p.call.name,
                    self.opts.approval_timeout
                );
                self.error(CallError::ToolApprovalTimedOut {
                    tool: p.call.name.clone(),
                    call_id: call_id.clone(),
                });
                self.tool_output(
                    &agent,
                    &p.call.name,
                    &call_id,
                    APPROVAL_TIMEOUT_OUTPUT.into(),
                    true,
                );
            } else {
                log::warn!(target: TOOLS_LOG, "tool {} timed out", p.call.name);
                self.error(CallError::ToolTimedOut {
                    tool: p.call.name.clone(),
                    call_id: call_id.clone(),
                });
                self.tool_output(
                    &agent,
                    &p.call.name,
                    &call_id,
                    "Error: the tool timed out.".into(),
                    true,
                );
            }
        }
        if self
            .draining
            .as_ref()
            .is_some_and(|d| d.0.is_some_and(|t| t <= now))
        {
            self.finish_drain();
        }
        if self
            .ending
            .as_ref()
            .is_some_and(|e| e.0.is_some_and(|t| t <= now))
        {
            log::warn!(
                target: LOG,
                "the agent's last words were not heard within {:?}; ending the call anyway",
                self.opts.hang_up_timeout
            );
            self.finish_ending();
            return;
        }
        if self.model_setup_deadline().is_some_and(|t| t <= now) {
            self.setup_deadline = None;
            log::warn!(
                target: LOG,
                "the model session was not confirmed within {:?}; ending the call",
                self.opts.model_setup_timeout
            );
            self.model = ModelState::Gone;
            self.out(Output::ModelNotReady);
            self.out(Output::CloseModel);
            self.out(Output::CloseTwilio);
            self.fail(CallError::ModelSetupTimeout {
                waited: self.opts.model_setup_timeout,
            });
            return;
        }
        if self.start_deadline.is_some_and(|t| t <= now) {
            self.start_deadline = None;
            log::warn!(
                target: LOG,
                "no start from twilio within {:?}; ending the call",
                self.opts.start_timeout
            );
            self.out(Output::CloseModel);
            self.out(Output::CloseTwilio);
            self.fail(CallError::StreamNeverStarted {
                waited: self.opts.start_timeout,
            });
            return;
        }
        if self.twilio_silence_deadline().is_some_and(|t| t <= now) {
            log::warn!(
                target: LOG,
                "twilio sent nothing for {:?}; the stream is dead, ending the call",
                self.opts.twilio_silence_timeout
            );
            self.out(Output::CloseModel);
            self.out(Output::CloseTwilio);
            self.fail(CallError::TwilioSilent {
                waited: self.opts.twilio_silence_timeout,
            });
            return;
        }
        if self.model_liveness_deadline().is_some_and(|t| t <= now) {
            if self.ping_sent.is_some() {
                let error = CallError::ModelUnresponsive {
                    waited: self.opts.model_pong_timeout,
                };
                // The socket may still be open (a half-open peer): close it ourselves.
                self.out(Output::CloseModel);
                self.handle_model_closed(now, error);
                if self.is_ended() {
                    return;
                }
            } else {
                self.ping_sent = Some(now);
                self.out(Output::PingModel);
            }
        }
        if self.next_probe_at.is_some_and(|t| t <= now) {
            self.next_probe_at = None;
            if let Some(name) = self.ledger.start_probe(now) {
                self.twilio_mark(name);
            }
        }
        self.live_on_timeout(now);
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
fn session_config_for(agent: &Agent, opts: &CallConfig, with_voice: bool) -> SessionConfig {
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
