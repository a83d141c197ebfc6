//! The threaded shell that runs one call: sockets and threads around [`CallCore`].
//!
//! Per call: a reader and a writer thread for the Twilio socket, a reader and a writer thread
//! for the model socket, one session thread that owns the [`CallCore`] and sleeps on its inbox
//! until a message or the next deadline, and a short-lived worker thread per tool call or
//! guardrail run. Caller audio takes a lane with one thread wake-up
//! per frame: the Twilio reader thread runs [`InboundAudio`] and writes the
//! `input_audio_buffer.append` straight to the model socket. Echoed chunk marks wait in the
//! lane with their arrival time until the session thread next wakes (an item's last mark and
//! round-trip probes wake it at once). When the call ends every socket thread exits and
//! [`Session::join`] returns.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use twilio_realtime::agent::Agent;
//! use twilio_realtime::session::{Session, SessionConfig};
//! use twilio_realtime::io::ws::{WsConfig, WsConn};
//!
//! let listener = TcpListener::bind("127.0.0.1:5050").unwrap();
//! let (tcp, _) = listener.accept().unwrap();
//! let (twilio, _head) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
//! let agent = Agent::new("Assistant", "You are a friendly phone assistant.");
//! let opts = SessionConfig::new(std::env::var("OPENAI_API_KEY").ok());
//! let session = Session::start(twilio, agent, opts).unwrap();
//! for event in session.events().iter() {
//!     println!("{event:?}");
//! }
//! session.join();
//! ```

pub(crate) mod event_queue;
pub(crate) mod inbox;
pub mod model_log;
pub mod recording;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod sideband;
pub mod warm;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tungstenite::Message;

use crate::agent::{Agent, ToolFailure};
use crate::call::inbound::{InboundAudio, InboundConfig, InboundStats};
use crate::call::{CallConfig, CallCore, Command, GuardrailRun, Input, Output, Preconfigured};
use crate::events::{CallError, CloseReason, HistoryItem, SessionEvent, TransportEvent};
use crate::io::ws::{
    panic_text, Backlog, ClientRequest, Duplex, Incoming, WsConfig, WsConn, WsError, WsSender,
};
use crate::limits::{BadInput, BadMessageBudget, BadVerdict, LogLimiter};
use crate::proto::realtime::ServerEvent;
use crate::proto::twilio::{
    write_mark_json, write_media_json, MediaFrame, TwilioCommand, TwilioMessage,
};
use crate::session::event_queue::{event_queue, EventReceiver, EventSender};
use crate::session::inbox::{inbox, InboxReceiver, InboxSender};
use crate::session::model_log::ModelEventLog;
use crate::session::recording::{CallerMeter, Record, RecordTo, Recorder, RecorderThread};
use crate::telephony::call_info::{CallInfo, WebhookForm};

/// In this crate's own unit tests, a message containing this text makes the socket reader's
/// handler panic (the injection point for the panic tests; compiled out of the library).
#[cfg(test)]
pub(crate) const TEST_PANIC_MARKER: &str = "__test_panic_in_reader__";

const LOG: &str = "twilio_realtime::session";
const TWILIO_LOG: &str = "twilio_realtime::twilio";
const MODEL_LOG: &str = "twilio_realtime::model";

/// The default model endpoint.
pub const DEFAULT_REALTIME_URL: &str = "wss://api.openai.com/v1/realtime?model=gpt-realtime";

/// Which raw socket messages are reported as [`SessionEvent::Transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TransportEvents {
    /// None.
    None,
    /// Every message except audio (Twilio `media`, model `response.output_audio.delta`).
    #[default]
    Control,
    /// Every message, audio included (50+ events a second per call).
    All,
}

/// How to reach the model: the endpoint, the key, extra headers and query parameters (e.g.
/// Azure OpenAI's `api-key` header and `api-version` parameter, or `OpenAI-Project` /
/// `OpenAI-Organization`), and the socket settings.
///
/// ```
/// use twilio_realtime::SessionConfig;
///
/// // Azure OpenAI: the key goes in an `api-key` header, the API version in the query.
/// let opts = SessionConfig::new(None)
///     .url("wss://my-resource.openai.azure.com/openai/realtime?deployment=gpt-realtime")
///     .model_query("api-version", "2025-04-01-preview")
///     .model_header("api-key", "azure-key");
/// assert_eq!(
///     opts.model.request().url(),
///     "wss://my-resource.openai.azure.com/openai/realtime?deployment=gpt-realtime&api-version=2025-04-01-preview"
/// );
/// // Secrets never print, even through `{:?}`.
/// assert!(!format!("{opts:?}").contains("azure-key"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ModelConfig {
    /// `ws://` or `wss://` URL of the Realtime endpoint (the model is in its query), or of
    /// GPT-Live's when the session speaks it ([`SessionConfig::model_api`]).
    pub url: String,
    /// The Realtime endpoint while `url` is GPT-Live's: SIP calls' sidebands speak Realtime
    /// whatever the session's model API ([`Session::start_sideband`]). `None`:
    /// [`DEFAULT_REALTIME_URL`].
    pub realtime_url: Option<String>,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// Extra headers sent with the WebSocket upgrade, in order (e.g. `OpenAI-Project`,
    /// `OpenAI-Organization`, Azure's `api-key`). Default none.
    pub headers: Vec<(String, String)>,
    /// Extra query parameters appended to [`url`](Self::url) (percent-encoded), in order.
    /// Default none.
    pub query: Vec<(String, String)>,
    /// Socket settings for the model connection.
    pub ws: WsConfig,
}

/// The former name of [`ModelConfig`] (one naming scheme: settings structs are `*Config`).
#[deprecated(since = "0.1.0", note = "renamed to `ModelConfig`")]
pub type ModelOptions = ModelConfig;

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log line, even through `{:?}`; the request's own `Debug`
        // redacts the bearer, credential headers and credential-like query parameters.
        f.debug_struct("ModelConfig")
            .field("request", &self.request())
            .field("ws", &self.ws)
            .finish()
    }
}

impl ModelConfig {
    /// Adds a header to the WebSocket upgrade.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> ModelConfig {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a query parameter to the URL.
    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> ModelConfig {
        self.query.push((name.into(), value.into()));
        self
    }

    /// The upgrade request these options make: the URL with the extra query parameters, the
    /// bearer key and the extra headers.
    pub fn request(&self) -> ClientRequest {
        let mut url = self.url.clone();
        if !self.query.is_empty() {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &self.query {
                q.append_pair(k, v);
            }
            let sep = if !url.contains('?') {
                "?"
            } else if url.ends_with('?') || url.ends_with('&') {
                ""
            } else {
                "&"
            };
            url = format!("{url}{sep}{}", q.finish());
        }
        let mut req = ClientRequest::new(url);
        if let Some(k) = &self.api_key {
            req = req.bearer(k.clone());
        }
        for (k, v) in &self.headers {
            req = req.header(k.clone(), v.clone());
        }
        req
    }
}

/// Decides on Twilio's `start` whether the stream may go on (`Err(why)` refuses it), given the
/// raw `start` (whose `customParameters` still hold the one-time stream token) and the call's
/// [`CallInfo`] (without it). With one set, the model connection opens only after the check
/// passed, so a refused stream costs no model session. [`crate::server`] uses it for one-time
/// stream tokens.
pub type StartCheck =
    Arc<dyn Fn(&crate::proto::twilio::Start, &CallInfo) -> Result<(), String> + Send + Sync>;

/// Finds the call webhook's form fields for a CallSid (see [`crate::telephony::call_info::WebhookCalls`]);
/// asked once, on `start`.
pub type WebhookLookup = Arc<dyn Fn(&str) -> Option<WebhookForm> + Send + Sync>;

/// Chooses a call's agent from its [`CallInfo`]; called once, on Twilio's `start`.
pub type AgentForCall = Arc<dyn Fn(&CallInfo) -> Agent + Send + Sync>;

/// The agent a session speaks as: fixed, or chosen per call once `start` brings the call's
/// details. `Session::start(twilio, agent, opts)` takes an [`Agent`] as it always did.
///
/// With [`AgentSource::PerCall`] the model connection still opens at once (the handshake is
/// the slow part and overlaps with Twilio's `connected` and `start`); only the model
/// session's configuration, which carries the agent, waits for `start` (see
/// [`crate::telephony::call_info`]). A factory that panics ends that call (rejected), no other.
#[derive(Clone)]
#[non_exhaustive]
pub enum AgentSource {
    /// This agent, whoever calls.
    Ready(Agent),
    /// The agent this function returns for the call.
    PerCall(AgentForCall),
}

impl AgentSource {
    /// An agent chosen per call.
    pub fn per_call<F>(f: F) -> AgentSource
    where
        F: Fn(&CallInfo) -> Agent + Send + Sync + 'static,
    {
        AgentSource::PerCall(Arc::new(f))
    }
}

impl From<Agent> for AgentSource {
    fn from(agent: Agent) -> AgentSource {
        AgentSource::Ready(agent)
    }
}

impl std::fmt::Debug for AgentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentSource::Ready(a) => f.debug_tuple("Ready").field(&a.name()).finish(),
            AgentSource::PerCall(_) => f.write_str("PerCall"),
        }
    }
}

/// Ends a call that has no Twilio stream (a SIP call: REST `hangup`, or `refer` for a
/// transfer), on the session thread, once, with the reason the call closes; returns the events
/// that report what it did (they go out before `Closed`).
pub(crate) type EndCall = Box<dyn FnOnce(&CloseReason) -> Vec<SessionEvent> + Send>;

/// Told on the session thread, with the call's CallSid (once Twilio's `start` gave it), the
/// moment a call starts ending after the agent's last words ([`SessionEvent::Ending`]: a
/// hang-up or a transfer), before the stream is closed. [`crate::server`] uses it to remember
/// a transfer for Twilio's request to the `<Connect action>` URL, which follows the close.
pub type EndingHook = Arc<dyn Fn(Option<&str>, &CloseReason) + Send + Sync>;

/// Everything a session needs besides the Twilio socket and the agent.
#[derive(Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The model endpoint and key.
    pub model: ModelConfig,
    /// Call behaviour (barge-in, tools, guardrails, …).
    pub call: CallConfig,
    /// The caller-audio lane (early buffer, padding).
    pub inbound: InboundConfig,
    /// Which raw socket messages become events.
    pub transport_events: TransportEvents,
    /// Checked on `start` before any model connection is opened (default: none, and the model
    /// connection opens the moment the session starts).
    pub start_check: Option<StartCheck>,
    /// Called when the call starts ending after the agent's last words (default: none).
    pub on_ending: Option<EndingHook>,
    /// Model connections opened before the stream (at the call webhook), claimed by CallSid
    /// once `start` passed the [`start_check`](Self::start_check); a call with nothing to
    /// claim connects as usual. Default: none; the bundled server sets it when stream tokens
    /// are on (see [`warm`]).
    pub warm_models: Option<Arc<warm::WarmModels>>,
    /// Where the call webhook's form fields are found for the [`CallInfo`] (default: none; the
    /// bundled server sets it to the fields its webhook kept).
    pub webhook_fields: Option<WebhookLookup>,
    /// Record the call's timeline (no audio, no keys) to a JSON-lines file; see
    /// [`crate::session::recording`]. Default: off, which costs nothing.
    pub recording: Option<RecordTo>,
    /// Write every client event sent to the model to this log, as JSON lines with audio
    /// elided (see [`model_log`]). Default: off (one `Option` check per frame).
    pub model_events: Option<ModelEventLog>,
    /// Twilio messages longer than this (in bytes) are reported and skipped unread; the call
    /// goes on. Default 64 KiB (Twilio's largest, a `start` with custom parameters, is a few
    /// KiB). The hard cap that ends the call with close code 1009 is the socket's
    /// [`WsConfig::max_message_size`] (1 MiB by default).
    pub max_twilio_message: usize,
    /// How many bad Twilio messages (malformed, unknown, invalid base64, binary, oversized) the
    /// call takes before it ends with [`CallError::TooManyBadMessages`]. Default: bursts of
    /// 100, 10 a second forgiven.
    pub bad_message_budget: BadMessageBudget,
    /// Most events waiting for the application in [`Session::events`]. When it is full
    /// the oldest audio and transport event is dropped (else the oldest event), never
    /// blocking the call; [`SessionEvent::EventsDropped`] says how many. Default 1,024.
    pub event_capacity: usize,
    /// Most messages waiting for the session thread from the sockets and the application.
    /// When it is full the Twilio and model readers wait (they stop reading their socket, so
    /// the peer's TCP window fills, not our memory) and so do commands; socket closes,
    /// connections and tool results are never held back. Default 1,024.
    pub inbox_capacity: usize,
    /// Most tool calls of this call running at once (each on its own worker thread, counted
    /// until the tool returns, even after its timeout). One more gets an error output the
    /// model can say ("too many tools are running") instead of a thread. Default 8.
    pub max_tool_workers: usize,
}

/// The former name of [`SessionConfig`] (one naming scheme: settings structs are `*Config`).
#[deprecated(since = "0.1.0", note = "renamed to `SessionConfig`")]
pub type SessionOptions = SessionConfig;

/// Bad-input log lines of one call and one peer: at most one per this interval, with the
/// count of those held back (every bad message is still reported as an error event).
pub const BAD_INPUT_LOG_INTERVAL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("model", &self.model)
            .field("call", &self.call)
            .field("inbound", &self.inbound)
            .field("transport_events", &self.transport_events)
            .field("start_check", &self.start_check.is_some())
            .field("on_ending", &self.on_ending.is_some())
            .field("warm_models", &self.warm_models.is_some())
            .field("webhook_fields", &self.webhook_fields.is_some())
            .field("recording", &self.recording)
            .field("model_events", &self.model_events.is_some())
            .field("max_twilio_message", &self.max_twilio_message)
            .field("bad_message_budget", &self.bad_message_budget)
            .field("event_capacity", &self.event_capacity)
            .field("inbox_capacity", &self.inbox_capacity)
            .field("max_tool_workers", &self.max_tool_workers)
            .finish()
    }
}

impl SessionConfig {
    /// Defaults with the given API key and the model URL [`DEFAULT_REALTIME_URL`] (change it
    /// with [`SessionConfig::url`]). Reads no environment variable: the library never does;
    /// [`ServerConfig::from_env`](crate::server::ServerConfig::from_env) is the explicit
    /// constructor that takes `OPENAI_REALTIME_URL` and `OPENAI_API_KEY` from the environment.
    pub fn new(api_key: Option<String>) -> SessionConfig {
        SessionConfig {
            model: ModelConfig {
                url: DEFAULT_REALTIME_URL.to_owned(),
                realtime_url: None,
                api_key,
                headers: Vec::new(),
                query: Vec::new(),
                // A caller waits in silence while this runs: give up after 5 s, not 10.
                ws: WsConfig {
                    connect_timeout: Duration::from_secs(5),
                    handshake_timeout: Duration::from_secs(5),
                    ..WsConfig::default()
                },
            },
            call: CallConfig::default(),
            inbound: InboundConfig::default(),
            transport_events: TransportEvents::default(),
            start_check: None,
            on_ending: None,
            warm_models: None,
            webhook_fields: None,
            recording: None,
            model_events: None,
            max_twilio_message: 64 * 1024,
            bad_message_budget: BadMessageBudget::default(),
            event_capacity: 1024,
            inbox_capacity: 1024,
            max_tool_workers: 8,
        }
    }

    /// Use this model URL.
    pub fn url(mut self, url: impl Into<String>) -> SessionConfig {
        self.model.url = url.into();
        self
    }

    /// Send this header with the model's WebSocket upgrade (see [`ModelConfig::headers`]).
    pub fn model_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> SessionConfig {
        self.model.headers.push((name.into(), value.into()));
        self
    }

    /// Append this query parameter to the model URL (see [`ModelConfig::query`]).
    pub fn model_query(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> SessionConfig {
        self.model.query.push((name.into(), value.into()));
        self
    }

    /// Speak this model API ([`CallConfig::model_api`]). Choosing GPT-Live keeps the Realtime
    /// URL in [`ModelConfig::realtime_url`] (for SIP sidebands) and sets the URL to
    /// [`crate::proto::live::DEFAULT_URL`] (change it with [`SessionConfig::url`] after);
    /// choosing Realtime again puts the Realtime URL back.
    ///
    /// ```
    /// use twilio_realtime::call::{live::LiveConfig, ModelApi};
    /// use twilio_realtime::session::{SessionConfig, DEFAULT_REALTIME_URL};
    ///
    /// let live = SessionConfig::new(None).model_api(ModelApi::Live(LiveConfig::default()));
    /// assert_eq!(live.model.url, "wss://api.openai.com/v1/live/sessions");
    /// assert_eq!(live.model.realtime_url.as_deref(), Some(DEFAULT_REALTIME_URL));
    /// let back = live.model_api(ModelApi::Realtime);
    /// assert_eq!(back.model.url, DEFAULT_REALTIME_URL);
    /// ```
    pub fn model_api(mut self, api: crate::call::ModelApi) -> SessionConfig {
        match (api.is_live(), self.call.model_api.is_live()) {
            (true, false) => {
                let realtime = std::mem::replace(
                    &mut self.model.url,
                    crate::proto::live::DEFAULT_URL.to_owned(),
                );
                self.model.realtime_url = Some(realtime);
            }
            (false, true) => {
                self.model.url = self
                    .model
                    .realtime_url
                    .take()
                    .unwrap_or_else(|| DEFAULT_REALTIME_URL.to_owned());
            }
            _ => {}
        }
        self.call.model_api = api;
        self
    }
}

/// Errors starting a session.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// A thread could not be spawned.
    Spawn(std::io::Error),
    /// The Twilio socket threads could not start.
    Twilio(crate::io::ws::WsError),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Spawn(e) => write!(f, "could not spawn a session thread: {e}"),
            SessionError::Twilio(e) => write!(f, "could not start the twilio socket: {e}"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Spawn(e) => Some(e),
            SessionError::Twilio(e) => Some(e),
        }
    }
}

/// What the socket threads, workers and the application tell the session thread.
enum ShellMsg {
    Twilio(TwilioMessage),
    TwilioBad(String),
    /// Twilio spent its bad-message budget (bad messages in the call).
    TwilioOverBudget(u64),
    TwilioClosed(CallError),
    /// A model connection of this generation opened (configured ahead when it was warm).
    ModelConnected(u64, WsConn, Option<Box<Preconfigured>>),
    ModelConnectFailed(u64, CallError),
    Model(u64, ServerEvent),
    LiveModel(u64, crate::proto::live::ServerEvent),
    ModelBad(u64, String),
    ModelClosed(u64, CallError),
    ToolDone(String, Result<String, ToolFailure>),
    GuardrailDone(GuardrailRun, Option<(String, String)>),
    Command(Command),
    History(crossbeam_channel::Sender<Vec<HistoryItem>>),
    /// Deferred marks are waiting in the lane and one of them matters now.
    Marks,
    /// A socket reader's handler or the application's event hook panicked: end the call.
    Panicked(String),
}

/// The caller-audio lane shared by the Twilio reader (per frame) and the session thread
/// (readiness, speech, inactivity timer), and the marks the reader deferred.
struct Lane {
    inbound: InboundAudio,
    model: Option<WsSender>,
    buf: String,
    /// Echoed marks with the moment each arrived, for the session thread to apply the next
    /// time it wakes (before anything else it handles then).
    marks: Vec<(Instant, TwilioMessage)>,
    /// The caller's loudness for the call's recording, if it is recorded.
    meter: Option<CallerMeter>,
    /// A `ShellMsg::Marks` wake-up is queued and not handled yet (one is enough).
    marks_wake_queued: bool,
    /// Marks dropped because [`MAX_LANE_MARKS`] were waiting.
    marks_dropped: u64,
    /// The caller-audio append of the call's model API.
    append: Append,
}

/// How the lane writes a caller-audio append: the model API's event, and the optional log.
#[derive(Clone)]
struct Append {
    write: fn(&mut String, &str),
    event_type: &'static str,
    log: Option<ModelEventLog>,
}

impl Append {
    fn new(live: bool, log: Option<ModelEventLog>) -> Append {
        if live {
            Append {
                write: crate::proto::live::write_append_json,
                event_type: "session.input_audio.append",
                log,
            }
        } else {
            Append {
                write: crate::proto::realtime::write_append_json,
                event_type: "input_audio_buffer.append",
                log,
            }
        }
    }
}

/// Most echoed marks waiting in the lane. A real Twilio echoes a mark per chunk as it plays
/// (about 10 a second); only a peer that floods marks while the session thread is busy
/// reaches this. Then the oldest chunk mark goes (a later one moves the playback position
/// past it), or, with none, the new mark; counted in [`QueueStats::marks_dropped`].
const MAX_LANE_MARKS: usize = 1024;

/// Deferred marks after which the reader wakes the session thread anyway (a peer that floods
/// chunk-like marks cannot grow the lane without bound).
const MAX_DEFERRED_MARKS: usize = 64;

impl Lane {
    fn sink<'a>(
        model: &Option<WsSender>,
        buf: &'a mut String,
        append: &'a Append,
    ) -> impl FnMut(&str) + 'a {
        let model = model.clone();
        move |b64: &str| {
            let Some(m) = &model else { return };
            buf.clear();
            (append.write)(buf, b64);
            if let Some(log) = &append.log {
                log.write_append(append.event_type, b64.len());
            }
            if let Err(e) = m.send_now(Message::text(buf.as_str())) {
                log::debug!(target: MODEL_LOG, "append not sent: {e}");
            }
        }
    }

    fn on_media(&mut self, now: Instant, payload: &str, ts: Option<u64>) {
        if let Some(m) = &mut self.meter {
            m.on_frame(now, payload);
        }
        let Lane {
            inbound,
            model,
            buf,
            append,
            ..
        } = self;
        inbound.on_media(now, payload, ts, &mut Lane::sink(model, buf, append));
    }

    fn set_ready(&mut self, ready: bool) {
        let Lane {
            inbound,
            model,
            buf,
            append,
            ..
        } = self;
        inbound.set_ready(ready, &mut Lane::sink(model, buf, append));
    }

    fn on_timeout(&mut self, now: Instant) {
        let Lane {
            inbound,
            model,
            buf,
            append,
            ..
        } = self;
        inbound.on_timeout(now, &mut Lane::sink(model, buf, append));
    }
}

/// The agent-audio lane of one model connection (see [`crate::call::audio_lane`]), shared by
/// its reader thread (each delta) and the session thread (grants, revocations, and the chunks
/// to record). A grant is good only while the reader has sent the session thread nothing since
/// the message it was granted after: then no model event the core has not seen can stand
/// between the delta and the caller, and the session thread revokes it before it handles
/// anything, so a lane write never follows a `clear` or a frame the session thread writes.
struct AgentLane {
    /// Messages the reader sent the session thread on this connection.
    sent: u64,
    /// The lane, with the `sent` count it was granted at.
    grant: Option<(u64, crate::call::audio_lane::AudioLane)>,
    twilio: WsSender,
    /// Chunks sent on the lane, each with when it went out, for the session thread to record
    /// (at most [`MAX_LANE_CHUNKS`]: then deltas take the ordinary way, which records them).
    chunks: Vec<(Instant, u64)>,
    buf: String,
    counters: Arc<Counters>,
}

/// Most lane chunks waiting for the session thread (a long answer and no other wake-up: about
/// 6 s of 100 ms deltas). The next delta then goes the ordinary way.
const MAX_LANE_CHUNKS: usize = 64;

impl AgentLane {
    /// Writes `text` to Twilio if it is a delta the lane may take; otherwise counts it as sent
    /// to the session thread (which it must then be) and returns false.
    fn forward(&mut self, text: &str) -> bool {
        if self.try_forward(text) {
            return true;
        }
        self.sent = self.sent.wrapping_add(1);
        self.grant = None;
        false
    }

    fn try_forward(&mut self, text: &str) -> bool {
        let AgentLane {
            sent,
            grant,
            twilio,
            chunks,
            buf,
            counters,
        } = self;
        let Some((at, lane)) = grant else {
            return false;
        };
        if *at != *sent || chunks.len() >= MAX_LANE_CHUNKS {
            return false;
        }
        let Some(d) = crate::proto::realtime::AudioDeltaFrame::parse(text) else {
            return false;
        };
        if d.delta().is_empty() || !lane.matches(d.response_id(), d.item_id(), d.content_index()) {
            return false;
        }
        buf.clear();
        write_media_json(buf, lane.stream_sid(), d.delta());
        // A failed write gives the Twilio socket up with its cause, which the Twilio reader
        // reports to the session thread (as the session thread's own failed write would).
        if !twilio.send_now_or_give_up(Message::text(buf.as_str())) {
            *grant = None;
            return false;
        }
        let bytes = crate::proto::mulaw::base64_decoded_len(d.delta()) as u64;
        chunks.push((Instant::now(), bytes));
        counters.frames_to_caller.fetch_add(1, Ordering::Relaxed);
        counters.bytes_to_caller.fetch_add(bytes, Ordering::Relaxed);
        let mark = lane.chunk(bytes);
        buf.clear();
        write_mark_json(buf, lane.stream_sid(), &mark);
        if !twilio.send_now_or_give_up(Message::text(buf.as_str())) {
            *grant = None;
        }
        true
    }
}

fn lock_agent(lane: &Mutex<AgentLane>) -> MutexGuard<'_, AgentLane> {
    lane.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock(lane: &Mutex<Lane>) -> MutexGuard<'_, Lane> {
    // A panic while holding the lane cannot leave it inconsistent in a way that matters more
    // than losing the call; keep going with the inner value.
    lane.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// Runs a call on an accepted Twilio WebSocket (see [`WsConn::accept`]): opens the model
    /// connection at once, starts the call's threads and returns the running session. `agent`
    /// is an [`Agent`] or an [`AgentSource`] (e.g. [`AgentSource::per_call`]).
    pub fn start(
        twilio: WsConn,
        agent: impl Into<AgentSource>,
        opts: SessionConfig,
    ) -> Result<Session, SessionError> {
        Session::launch(Some(twilio), agent.into(), opts, None, None)
    }

    /// Starts a call's threads: with a Twilio stream, or without one (a SIP call over the
    /// sideband, ended by `end_call`, whose details are known already).
    pub(crate) fn launch(
        twilio: Option<WsConn>,
        agent: AgentSource,
        opts: SessionConfig,
        end_call: Option<EndCall>,
        info: Option<CallInfo>,
    ) -> Result<Session, SessionError> {
        let start = Instant::now();
        let (agent, agent_for) = match agent {
            AgentSource::Ready(a) => (a, None),
            // Replaced on `start` (CallCore::set_starting_agent), before the model session is
            // configured; never configured into a model session itself.
            AgentSource::PerCall(f) => (Agent::new("pending", ""), Some(f)),
        };
        let (shell_tx, shell_rx) = inbox::<ShellMsg>(opts.inbox_capacity);
        let (event_tx, event_rx) = event_queue(opts.event_capacity);
        let (mut recorder, recorder_thread) = match opts.recording.as_ref() {
            Some(to) => Recorder::start(to, start).unzip(),
            None => (None, None),
        };
        let call_info = Arc::new(OnceLock::new());
        if let Some(info) = info {
            if let Some(r) = &mut recorder {
                r.name(&info.call_sid);
            }
            let _ = call_info.set(Arc::new(info));
        }
        let lane = Arc::new(Mutex::new(Lane {
            inbound: InboundAudio::new(opts.inbound.clone()),
            model: None,
            buf: String::with_capacity(512),
            marks: Vec::with_capacity(16),
            meter: recorder.clone().map(CallerMeter::new),
            marks_wake_queued: false,
            marks_dropped: 0,
            append: Append::new(opts.call.model_api.is_live(), opts.model_events.clone()),
        }));

        // The core asks for the model connection first (it is the slow part), or, with a
        // start check, once a `start` passed it; it asks this thread to approve the first
        // `start` (the call's details, the check, the per-call agent are handled here).
        let mut call_opts = opts.call.clone();
        if opts.start_check.is_some() {
            call_opts.connect_model_on_start = true;
        }
        call_opts.approve_start = twilio.is_some();
        let counters = Arc::new(Counters::default());

        let twilio_duplex = match twilio {
            None => None,
            Some(twilio) => Some({
                let mut reader = TwilioReader {
                    tx: shell_tx.clone(),
                    lane: lane.clone(),
                    events: event_tx.clone(),
                    transport: opts.transport_events,
                    max_message: opts.max_twilio_message,
                    bad: BadInput::new(opts.bad_message_budget, BAD_INPUT_LOG_INTERVAL),
                    cut_off: false,
                    marks_log: LogLimiter::new(BAD_INPUT_LOG_INTERVAL),
                };
                twilio
                    .spawn("twilio", move |inc| reader.on_message(inc))
                    .map_err(SessionError::Twilio)?
            }),
        };

        let twilio_backlog = twilio_duplex.as_ref().map(|d| d.sender().backlog());
        let core = CallCore::new(agent, call_opts, start);
        let shell = Shell {
            core,
            lane: lane.clone(),
            twilio: twilio_duplex,
            end_call,
            model: None,
            model_gen: 0,
            model_opts: opts.model.clone(),
            shell_tx: shell_tx.clone(),
            events: event_tx,
            transport: opts.transport_events,
            out_buf: String::with_capacity(512),
            marks: Vec::with_capacity(16),
            started: start,
            model_ready_logged: false,
            start_check: opts.start_check.clone(),
            on_ending: opts.on_ending.clone(),
            warm_models: opts.warm_models.clone(),
            webhook_fields: opts.webhook_fields.clone(),
            agent_for,
            held_model: None,
            call_info: call_info.clone(),
            recorder,
            recorder_thread,
            closed_sent: false,
            model_cancel: Arc::new(AtomicBool::new(false)),
            tool_workers: Arc::new(AtomicUsize::new(0)),
            max_tool_workers: opts.max_tool_workers,
            counters: counters.clone(),
            twilio_started: None,
            model_events: opts.model_events.clone(),
            agent_lane: None,
            model_msgs: 0,
            lane_chunks: Vec::new(),
            granted: None,
        };
        let thread = thread::Builder::new()
            .name("session".into())
            .stack_size(256 * 1024)
            .spawn(move || shell.run(shell_rx))
            .map_err(SessionError::Spawn)?;
        Ok(Session {
            events: event_rx,
            tx: shell_tx,
            thread: Some(thread),
            lane,
            call_info,
            counters,
            twilio_backlog,
        })
    }
}

fn spawn_model_connect(
    gen: u64,
    opts: &ModelConfig,
    tx: InboxSender<ShellMsg>,
    counters: Arc<Counters>,
) {
    let req = opts.request();
    let cfg = opts.ws.clone();
    let res = thread::Builder::new()
        .name("model-connect".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let began = Instant::now();
            let msg = match WsConn::connect(&req, &cfg) {
                Ok(conn) => {
                    store_once(&counters.model_connect_us, began.elapsed());
                    ShellMsg::ModelConnected(gen, conn, None)
                }
                Err(e) => ShellMsg::ModelConnectFailed(gen, CallError::model_connect(e)),
            };
            let _ = tx.send(msg);
        });
    if let Err(e) = res {
        log::error!(target: LOG, "could not spawn the model connector: {e}");
    }
}

/// The Twilio reader thread's state: what it needs to route messages, and the call's
/// bad-input budget and log rate limit.
struct TwilioReader {
    tx: InboxSender<ShellMsg>,
    lane: Arc<Mutex<Lane>>,
    events: EventSender,
    transport: TransportEvents,
    max_message: usize,
    bad: BadInput,
    /// The budget is spent and the call is ending: further messages are dropped.
    cut_off: bool,
    /// Log lines about dropped marks.
    marks_log: LogLimiter,
}

impl TwilioReader {
    /// Reports one bad message: an error event always, a log line at most every
    /// [`BAD_INPUT_LOG_INTERVAL`], and the end of the call once the budget is spent.
    fn bad(&mut self, why: String) {
        let verdict = self.bad.on_bad(Instant::now());
        let logged = why.clone();
        self.report(verdict, why, &logged);
    }

    /// `logged` is what the log line says (`why` may carry the peer's own text, which log
    /// lines never do; see [`crate::logging`]).
    fn report(&mut self, verdict: BadVerdict, why: String, logged: &str) {
        match verdict {
            BadVerdict::Log { suppressed: 0 } => {
                log::warn!(target: TWILIO_LOG, "bad message from twilio skipped: {logged}")
            }
            BadVerdict::Log { suppressed } => log::warn!(
                target: TWILIO_LOG,
                "bad message from twilio skipped: {logged} ({suppressed} more since the last line)"
            ),
            BadVerdict::Quiet => {}
            BadVerdict::OverBudget { total } => {
                self.cut_off = true;
                let _ = self.tx.send(ShellMsg::TwilioOverBudget(total));
                return;
            }
        }
        let _ = self.tx.send_wait(ShellMsg::TwilioBad(why), None);
    }

    /// Runs on the Twilio reader thread for every message.
    fn on_message(&mut self, inc: Incoming) {
        if self.cut_off && matches!(inc, Incoming::Text(_) | Incoming::Binary(_)) {
            return;
        }
        match inc {
            Incoming::Text(text) => {
                let text: &str = text.as_ref();
                #[cfg(test)]
                if text.contains(TEST_PANIC_MARKER) {
                    panic!("injected panic in the twilio reader");
                }
                if text.len() > self.max_message {
                    self.bad(format!(
                        "message of {} bytes is over the {} byte limit",
                        text.len(),
                        self.max_message
                    ));
                    return;
                }
                // The 50 frames a second of caller audio take a borrowed, one-pass parse
                // (an owned `TwilioMessage` costs two JSON passes and several allocations a
                // frame); everything else, and any frame it refuses, gets the full parse.
                if let Some(m) = MediaFrame::parse(text) {
                    self.on_media(text, m.payload(), m.timestamp_ms());
                    return;
                }
                match TwilioMessage::parse(text) {
                    Ok(msg) => self.on_twilio(text, msg),
                    Err(e) => self.bad(e.to_string()),
                }
            }
            Incoming::Binary(b) => {
                self.bad(format!("binary frame of {} bytes ignored", b.len()));
            }
            Incoming::Closed(close) => {
                let _ = self
                    .tx
                    .send(ShellMsg::TwilioClosed(CallError::twilio_gone(close, None)));
            }
            Incoming::Error(WsError::HandlerPanicked(why)) => {
                let _ = self
                    .tx
                    .send(ShellMsg::Panicked(format!("twilio reader: {why}")));
            }
            Incoming::Error(e) => {
                log::warn!(target: TWILIO_LOG, "twilio socket failed: {e}");
                let _ = self.tx.send(ShellMsg::TwilioClosed(CallError::twilio_gone(
                    None,
                    Some(e),
                )));
            }
        }
    }

    /// One caller-audio frame: straight into the lane (one wake-up: this thread writes the
    /// model socket itself).
    fn on_media(&self, text: &str, payload: &str, ts: Option<u64>) {
        if self.transport == TransportEvents::All {
            self.events
                .send(SessionEvent::Transport(TransportEvent::TwilioMessage(
                    text.to_owned(),
                )));
        }
        lock(&self.lane).on_media(Instant::now(), payload, ts);
    }

    /// One rate-limited line when marks had to be dropped.
    fn marks_log(&mut self, dropped: bool) {
        if dropped {
            if let Some(n) = self.marks_log.check(Instant::now()) {
                log::warn!(
                    target: TWILIO_LOG,
                    "{MAX_LANE_MARKS} echoed marks waiting: a mark was dropped ({n} more since the last line)"
                );
            }
        }
    }

    fn on_twilio(&mut self, text: &str, msg: TwilioMessage) {
        let (tx, lane, events, transport) = (&self.tx, &self.lane, &self.events, self.transport);
        match msg {
            TwilioMessage::Unknown(v) => {
                // Kept whole for the application (a transport event); not sent to the core.
                // Not the peer's fault (Twilio may add events), so not counted against the
                // budget.
                let name = v.get("event").and_then(|e| e.as_str()).unwrap_or("");
                let why = format!("unknown twilio event {name:?} skipped");
                if transport != TransportEvents::None {
                    events.send(SessionEvent::Transport(TransportEvent::TwilioMessage(
                        text.to_owned(),
                    )));
                }
                let verdict = self.bad.on_odd(Instant::now());
                self.report(verdict, why, "unknown event type");
            }
            // `MediaFrame` takes the same frames first; this is the same rule.
            TwilioMessage::Media(m) => {
                self.on_media(text, &m.media.payload, m.media.timestamp_ms())
            }
            msg => {
                if transport != TransportEvents::None {
                    // `start` carries the one-time stream token: never in an event.
                    let raw = if matches!(msg, TwilioMessage::Start(_)) {
                        crate::redact::twilio_start(text)
                    } else {
                        text.to_owned()
                    };
                    events.send(SessionEvent::Transport(TransportEvent::TwilioMessage(raw)));
                }
                if let TwilioMessage::Start(s) = &msg {
                    // A stream in a format the bridge does not speak is refused by the
                    // core; the lane stops it here, before the next frame is read.
                    lock(lane).inbound.on_start(&s.start.media_format);
                }
                let TwilioMessage::Mark(m) = msg else {
                    // Waits while the inbox is full (see `SessionConfig::inbox_capacity`).
                    let _ = tx.send_wait(ShellMsg::Twilio(msg), None);
                    return;
                };
                // Echoes the core says may wait (`CallCore::echo_can_wait`: chunk marks,
                // most of them) wait in the lane with their arrival time and are fed the
                // next time the session thread wakes (for the next delta, a barge-in, a
                // timer), which saves a wake-up per mark; any other echo wakes it now.
                let urgent = !CallCore::echo_can_wait(&m.mark.name);
                let (wake, dropped) = {
                    let mut l = lock(lane);
                    let mut dropped = false;
                    if l.marks.len() >= MAX_LANE_MARKS {
                        let oldest_chunk = l.marks.iter().position(|(_, mk)| {
                            matches!(mk, TwilioMessage::Mark(mk) if CallCore::echo_can_wait(&mk.mark.name))
                        });
                        l.marks_dropped = l.marks_dropped.saturating_add(1);
                        dropped = true;
                        match oldest_chunk {
                            Some(i) => {
                                l.marks.remove(i);
                            }
                            None => {
                                // Nothing superseded to let go: this one goes.
                                drop(l);
                                self.marks_log(dropped);
                                return;
                            }
                        }
                    }
                    l.marks.push((Instant::now(), TwilioMessage::Mark(m)));
                    let wake = (urgent || l.marks.len() >= MAX_DEFERRED_MARKS)
                        && !std::mem::replace(&mut l.marks_wake_queued, true);
                    (wake, dropped)
                };
                if wake {
                    let _ = tx.send(ShellMsg::Marks);
                }
                self.marks_log(dropped);
            }
        }
    }
}

struct Shell {
    core: CallCore,
    lane: Arc<Mutex<Lane>>,
    /// The Twilio stream (none on a SIP call).
    twilio: Option<Duplex>,
    /// How a call without a Twilio stream is ended (taken when it is).
    end_call: Option<EndCall>,
    model: Option<Duplex>,
    model_gen: u64,
    model_opts: ModelConfig,
    shell_tx: InboxSender<ShellMsg>,
    events: EventSender,
    transport: TransportEvents,
    out_buf: String,
    /// Marks taken from the lane (capacity kept between turns).
    marks: Vec<(Instant, TwilioMessage)>,
    started: Instant,
    model_ready_logged: bool,
    start_check: Option<StartCheck>,
    on_ending: Option<EndingHook>,
    /// Where a connection opened at the webhook is claimed (taken once, on the first connect).
    warm_models: Option<Arc<warm::WarmModels>>,
    webhook_fields: Option<WebhookLookup>,
    /// The per-call agent factory, until `start` has run it.
    agent_for: Option<AgentForCall>,
    /// A model connection that opened before the per-call agent was chosen: not read (its
    /// `session.created` waits in the socket) until `start` has run the factory.
    held_model: Option<(u64, WsConn)>,
    call_info: Arc<OnceLock<Arc<CallInfo>>>,
    /// The call's recording, if it is recorded.
    recorder: Option<Recorder>,
    recorder_thread: Option<RecorderThread>,
    /// `Closed` went to the application.
    closed_sent: bool,
    /// Set before the current model connection's threads are joined: its reader stops
    /// waiting for room in the inbox (nobody drains it while we join).
    model_cancel: Arc<AtomicBool>,
    /// Tool worker threads running now (timed-out ones included, until they return).
    tool_workers: Arc<AtomicUsize>,
    max_tool_workers: usize,
    counters: Arc<Counters>,
    /// When Twilio's `start` arrived.
    twilio_started: Option<Instant>,
    model_events: Option<ModelEventLog>,
    /// The current model connection's agent-audio lane.
    agent_lane: Option<Arc<Mutex<AgentLane>>>,
    /// Messages of the current model connection's reader handled so far (a lane grant is
    /// good while the reader has sent no more).
    model_msgs: u64,
    /// Chunks taken from the agent-audio lane (capacity kept between turns).
    lane_chunks: Vec<(Instant, u64)>,
    /// A lane the core granted while its outputs are performed (published after them).
    granted: Option<crate::call::audio_lane::AudioLane>,
}

/// Counts a running tool worker; dropped when the worker ends (or never started).
struct WorkerSlot(Arc<AtomicUsize>);

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counters the handle reads (see [`QueueStats`]), and the model session's id.
#[derive(Debug, Default)]
struct Counters {
    /// GPT-Live's session id, once `session.started` gave it.
    live_session_id: OnceLock<String>,
    tools_refused: AtomicU64,
    tool_workers_peak: AtomicUsize,
    /// Media frames and µ-law bytes written to Twilio (the agent's audio).
    frames_to_caller: AtomicU64,
    bytes_to_caller: AtomicU64,
    /// Microseconds the first successful model handshake took, plus one (0: none yet).
    model_connect_us: AtomicU64,
    /// Microseconds from Twilio's `start` to the first agent audio written, plus one.
    first_audio_us: AtomicU64,
}

/// Stores a duration once (the first one wins) as microseconds plus one, 0 meaning unset.
fn store_once(slot: &AtomicU64, d: Duration) {
    let us = u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1);
    let _ = slot.compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
}

fn load_once(slot: &AtomicU64) -> Option<Duration> {
    match slot.load(Ordering::Relaxed) {
        0 => None,
        us => Some(Duration::from_micros(us - 1)),
    }
}

/// A call's traffic and latencies so far; see [`Session::call_stats`]. Read at any
/// time from any thread (atomics the call's threads update; nothing is added per frame but
/// a relaxed counter increment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Media frames received from Twilio (the caller's audio).
    pub frames_from_caller: u64,
    /// µ-law bytes received from Twilio.
    pub bytes_from_caller: u64,
    /// Media frames written to Twilio (the agent's audio).
    pub frames_to_caller: u64,
    /// µ-law bytes written to Twilio.
    pub bytes_to_caller: u64,
    /// How long the first model connection (TCP, TLS and WebSocket handshake) took; with a
    /// warm model ([`warm`]), how long the call waited for it once its stream claimed it
    /// (about zero when it had opened already).
    pub model_connect: Option<Duration>,
    /// From Twilio's `start` to the first agent audio written to Twilio.
    pub first_audio: Option<Duration>,
    /// Events dropped because the application did not read them in time.
    pub events_dropped: u64,
    /// Bytes the call holds queued toward Twilio now, not yet taken by the kernel (see
    /// [`WsSender::queued_bytes`]); also [`QueueGauge::to_twilio`].
    pub queued_to_twilio: u64,
    /// Bytes queued toward the model on its current connection now; also
    /// [`QueueGauge::to_model`].
    pub queued_to_model: u64,
    /// GPT-Live's session id, once the model started the session (see
    /// [`Session::live_session_id`]).
    pub live_session_id: Option<String>,
}

/// Reads how many bytes a call holds queued toward its peers (bytes handed to a socket that
/// the kernel has not taken: they grow behind a peer that stops reading), from any thread,
/// without the [`Session`]; see [`Session::queue_gauge`]. Both are 0 once the
/// call's sockets are gone. Summing them over live calls gives the server's
/// `twilio_realtime_queued_bytes` gauge ([`crate::metrics::CallMeter::watch_queues`]).
///
/// ```
/// use twilio_realtime::session::QueueGauge;
///
/// /// Bytes all live calls hold toward Twilio and toward the model.
/// fn queued(calls: &[QueueGauge]) -> (u64, u64) {
///     calls.iter().fold((0, 0), |(twilio, model), g| {
///         (twilio.saturating_add(g.to_twilio()), model.saturating_add(g.to_model()))
///     })
/// }
/// assert_eq!(queued(&[]), (0, 0));
/// ```
#[derive(Clone)]
pub struct QueueGauge {
    lane: Arc<Mutex<Lane>>,
    twilio: Option<Arc<Backlog>>,
}

impl std::fmt::Debug for QueueGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueGauge")
            .field("to_twilio", &self.to_twilio())
            .field("to_model", &self.to_model())
            .finish()
    }
}

impl QueueGauge {
    /// Bytes queued toward Twilio now (see [`WsSender::queued_bytes`]).
    pub fn to_twilio(&self) -> u64 {
        self.twilio.as_ref().map_or(0, |b| b.bytes())
    }

    /// Bytes queued toward the model on its current connection now (a reconnect starts a
    /// new connection, and its count).
    pub fn to_model(&self) -> u64 {
        lock(&self.lane)
            .model
            .as_ref()
            .map_or(0, WsSender::queued_bytes)
    }
}

/// How full a session's bounded queues got, and what their bounds turned away; see
/// [`Session::queue_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Events waiting for the application now.
    pub events_queued: usize,
    /// The most events that waited at once (at most `SessionConfig::event_capacity`).
    pub events_peak: usize,
    /// Events dropped because the application did not read them in time.
    pub events_dropped: u64,
    /// The most messages that waited for the session thread at once.
    pub inbox_peak: usize,
    /// Times a socket reader or a command waited for room in the inbox.
    pub inbox_waits: u64,
    /// Echoed marks dropped from a flood (see the session docs).
    pub marks_dropped: u64,
    /// The most tool workers that ran at once.
    pub tool_workers_peak: usize,
    /// Tool calls refused with an error output because `max_tool_workers` were running.
    pub tools_refused: u64,
}

impl Shell {
    fn run(mut self, rx: InboxReceiver<ShellMsg>) {
        // A panic on this thread (the core, the application's start check) ends this call
        // only: the application still gets `Closed`, and both sockets close as usual.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_loop(&rx)));
        // Nothing is drained from here on: a reader waiting for room gives up at once, so
        // the joins below cannot wait for it.
        drop(rx);
        if let Err(p) = ran {
            let why = format!("session thread: {}", panic_text(p.as_ref()));
            log::error!(target: LOG, "call {} panicked: {why}", self.core.call_sid().unwrap_or("-"));
            if !self.closed_sent {
                self.closed_sent = true;
                self.emit(SessionEvent::Closed {
                    reason: CloseReason::Error(CallError::Panicked { message: why }),
                });
            }
        }
        self.shutdown();
    }

    fn run_loop(&mut self, rx: &InboxReceiver<ShellMsg>) {
        // What the core asked for before anything happened (the model connection).
        if self.drain_outputs() {
            return;
        }
        loop {
            let deadline = {
                let lane_deadline = lock(&self.lane).inbound.next_deadline();
                match (self.core.next_deadline(), lane_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            let msg = rx.recv_deadline(deadline);
            // Marks that arrived before this wake-up come first, at the time they arrived.
            self.apply_deferred_marks();
            // What the socket readers saw since (caller audio does not wake this thread).
            if let Some(t) = &self.twilio {
                self.core
                    .handle_input(t.last_received(), Input::TwilioActivity);
            }
            if let Some(m) = &self.model {
                self.core
                    .handle_input(m.last_received(), Input::ModelActivity);
            }
            match msg {
                Some(m) => self.handle(m),
                None => {
                    let now = Instant::now();
                    self.core.handle_input(now, Input::Timeout);
                    lock(&self.lane).on_timeout(now);
                }
            }
            if self.drain_outputs() {
                break;
            }
        }
    }

    fn apply_deferred_marks(&mut self) {
        {
            let mut l = lock(&self.lane);
            std::mem::swap(&mut l.marks, &mut self.marks);
            l.marks_wake_queued = false;
        }
        // The agent-audio lane closes before this thread handles anything (and so before it
        // writes to Twilio); its chunks are taken after the marks (a mark taken was echoed,
        // so its chunk is in the lane by now) and recorded before them.
        if let Some(a) = &self.agent_lane {
            let mut a = lock_agent(a);
            a.grant = None;
            std::mem::swap(&mut a.chunks, &mut self.lane_chunks);
        }
        if let Some(r) = &mut self.recorder {
            for (at, mark) in &self.marks {
                r.mark_echoed(*at, mark);
            }
        }
        self.core
            .catch_up(self.lane_chunks.drain(..), self.marks.drain(..));
    }

    fn handle(&mut self, msg: ShellMsg) {
        let now = Instant::now();
        if let ShellMsg::Model(gen, _) | ShellMsg::LiveModel(gen, _) | ShellMsg::ModelBad(gen, _) =
            &msg
        {
            if *gen == self.model_gen {
                self.model_msgs = self.model_msgs.wrapping_add(1);
            }
        }
        if let Some(r) = &mut self.recorder {
            record_shell_msg(r, &msg, self.model_gen);
        }
        match msg {
            ShellMsg::Twilio(m) => self.core.handle_input(now, Input::Twilio(m)),
            ShellMsg::TwilioBad(message) => {
                self.emit(SessionEvent::Error(CallError::BadTwilioMessage { message }))
            }
            ShellMsg::TwilioOverBudget(total) => self
                .core
                .handle_input(now, Input::TwilioOverBudget { messages: total }),
            ShellMsg::TwilioClosed(error) => {
                self.core.handle_input(now, Input::TwilioClosed { error })
            }
            ShellMsg::ModelConnected(gen, conn, configured) => {
                if gen != self.model_gen || self.core.ended().is_some() {
                    return;
                }
                if self.agent_for.is_some() {
                    self.held_model = Some((gen, conn));
                    return;
                }
                self.model_connected(now, gen, conn, configured);
            }
            ShellMsg::ModelConnectFailed(gen, error) => {
                if gen == self.model_gen {
                    self.core
                        .handle_input(now, Input::ModelConnectFailed { error });
                }
            }
            ShellMsg::Model(gen, ev) => {
                if gen == self.model_gen {
                    self.core.handle_input(now, Input::Model(ev));
                }
            }
            ShellMsg::LiveModel(gen, ev) => {
                if gen == self.model_gen {
                    self.core.handle_input(now, Input::LiveModel(ev));
                }
            }
            ShellMsg::ModelBad(gen, e) => {
                if gen == self.model_gen {
                    self.emit(SessionEvent::Error(CallError::BadModelEvent { message: e }));
                }
            }
            ShellMsg::ModelClosed(gen, error) => {
                if gen == self.model_gen {
                    self.core.handle_input(now, Input::ModelClosed { error });
                }
            }
            ShellMsg::ToolDone(call_id, result) => self
                .core
                .handle_input(now, Input::ToolResult { call_id, result }),
            ShellMsg::GuardrailDone(run, trip) => self
                .core
                .handle_input(now, Input::GuardrailResult { run, trip }),
            ShellMsg::Command(c) => self.core.handle_input(now, Input::Command(c)),
            ShellMsg::History(reply) => {
                let _ = reply.send(self.core.history().to_vec());
            }
            // Applied at the top of this wake-up already.
            ShellMsg::Marks => {}
            ShellMsg::Panicked(why) => self.core.handle_input(now, Input::Panicked { what: why }),
        }
    }

    /// The core asks about Twilio's first acceptable `start`: the call's details, the
    /// application's check, the per-call agent, then the answer; a model connection held for
    /// the agent is taken into use.
    fn approve_start(&mut self, start: crate::proto::twilio::Start) {
        let now = Instant::now();
        self.twilio_started = Some(now);
        let webhook = self
            .webhook_fields
            .as_ref()
            .and_then(|lookup| lookup(&start.start.call_sid));
        let info = Arc::new(CallInfo::from_start(&start, webhook));
        let _ = self.call_info.set(info.clone());
        if let Some(check) = &self.start_check {
            if let Err(why) = check(&start, &info) {
                self.held_model = None;
                return self.core.handle_input(now, Input::Rejected { why });
            }
        }
        let mut agent = None;
        if let Some(factory) = self.agent_for.take() {
            let chosen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory(&info)));
            match chosen {
                Ok(a) => agent = Some(a),
                Err(_) => {
                    log::error!(target: LOG, "the agent factory panicked; ending this call");
                    self.held_model = None;
                    return self.core.handle_input(
                        now,
                        Input::Rejected {
                            why: "the agent factory panicked".into(),
                        },
                    );
                }
            }
        }
        self.core.handle_input(now, Input::StartApproved { agent });
        if let Some((gen, conn)) = self.held_model.take() {
            self.model_connected(now, gen, conn, None);
        }
    }

    /// The first model connection of a call whose webhook opened one: claimed for this
    /// CallSid and delivered to this thread as `ModelConnected` (now, or when its handshake
    /// finishes). False when there is none to claim (connect cold).
    fn claim_warm_model(&mut self) -> bool {
        // Claimed by CallSid: a connection asked for before `start` (none is, with warm
        // models: they come with a start check) connects cold and leaves the pool alone.
        let Some(call_sid) = self.core.call_sid() else {
            return false;
        };
        let Some(warm) = self.warm_models.take() else {
            return false;
        };
        let gen = self.model_gen;
        let tx = self.shell_tx.clone();
        let counters = self.counters.clone();
        let began = Instant::now();
        let claimed = warm.claim(
            call_sid,
            Box::new(move |result| {
                // A session that ended meanwhile drops the message, and with it the socket.
                let _ = tx.send(match result {
                    Ok(warm) => {
                        // What this call waited for it: 0 when it was open already.
                        store_once(&counters.model_connect_us, began.elapsed());
                        ShellMsg::ModelConnected(gen, warm.conn, warm.configured.map(Box::new))
                    }
                    Err(error) => ShellMsg::ModelConnectFailed(gen, error),
                });
            }),
        );
        if claimed {
            log::info!(target: LOG, "call {call_sid}: model connection opened at the webhook");
        }
        claimed
    }

    fn model_connected(
        &mut self,
        now: Instant,
        gen: u64,
        conn: WsConn,
        configured: Option<Box<Preconfigured>>,
    ) {
        let tx = self.shell_tx.clone();
        let events = self.events.clone();
        let transport = self.transport;
        let mut log = LogLimiter::new(BAD_INPUT_LOG_INTERVAL);
        let cancel = Arc::new(AtomicBool::new(false));
        self.model_cancel = cancel.clone();
        let live = self.core.is_live();
        // The agent-audio lane skips the session thread, so nothing that must see every delta
        // there (a recording, GPT-Live's pacer) may be in use.
        self.agent_lane = match (&self.twilio, &self.recorder, live) {
            (Some(t), None, false) => Some(Arc::new(Mutex::new(AgentLane {
                sent: 0,
                grant: None,
                twilio: t.sender(),
                chunks: Vec::new(),
                buf: String::new(),
                counters: self.counters.clone(),
            }))),
            _ => None,
        };
        self.model_msgs = 0;
        let agent = self.agent_lane.clone();
        let spawned = conn.spawn("model", move |inc| {
            let model = ModelReader {
                gen,
                live,
                tx: &tx,
                events: &events,
                transport,
                cancel: &cancel,
                agent: agent.as_deref(),
            };
            model.incoming(inc, &mut log)
        });
        match spawned {
            Ok(d) => {
                lock(&self.lane).model = Some(d.sender());
                self.model = Some(d);
                let input = match configured {
                    Some(pre) => Input::ModelConnectedConfigured(*pre),
                    None => Input::ModelConnected,
                };
                self.core.handle_input(now, input);
            }
            Err(e) => self.core.handle_input(
                now,
                Input::ModelConnectFailed {
                    error: CallError::model_connect(e),
                },
            ),
        }
    }

    fn emit(&self, e: SessionEvent) {
        self.events.send(e);
    }

    /// Performs the core's outputs; true once the call has ended.
    fn drain_outputs(&mut self) -> bool {
        let mut ended = false;
        while let Some(o) = self.core.poll_output() {
            if let Some(r) = &mut self.recorder {
                r.output(&o, self.core.ledger().rtt().get().as_millis() as u64);
            }
            match o {
                Output::Twilio(cmd) => self.send_twilio(&cmd),
                // Written from this thread, in order with the caller-audio flush below.
                Output::Model(ev) => self.send_model(ev.to_json(), ev.event_type()),
                Output::LiveModel(ev) => self.send_model(ev.to_json(), ev.event_type()),
                Output::Event(e) => {
                    if let (SessionEvent::Ending { reason }, Some(hook)) = (&e, &self.on_ending) {
                        // Before the stream closes (a later output): what Twilio asks next
                        // finds what the hook recorded.
                        let sid = self.core.call_sid();
                        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            hook(sid, reason)
                        }));
                        if ran.is_err() {
                            log::error!(target: LOG, "the ending hook panicked");
                        }
                    }
                    if let SessionEvent::Closed { reason } = &e {
                        log::info!(
                            target: LOG,
                            "call {} ended after {:.1} s: {reason}",
                            self.core.call_sid().unwrap_or("-"),
                            self.started.elapsed().as_secs_f64()
                        );
                        ended = true;
                        self.closed_sent = true;
                    }
                    self.emit(e);
                }
                Output::ModelReady => {
                    if let Some(id) = self.core.live_session_id() {
                        if self.counters.live_session_id.set(id.to_owned()).is_ok() {
                            if let Some(log) = &self.model_events {
                                log.write_session_started(id);
                            }
                        }
                    }
                    if !self.model_ready_logged {
                        self.model_ready_logged = true;
                        log::info!(
                            target: LOG,
                            "model ready after {} ms",
                            self.started.elapsed().as_millis()
                        );
                    }
                    lock(&self.lane).set_ready(true);
                }
                Output::ModelNotReady => {
                    let mut l = lock(&self.lane);
                    l.set_ready(false);
                    l.model = None;
                }
                Output::CallerSpeaking(s) => lock(&self.lane).inbound.set_caller_speaking(s),
                Output::RunTool { call_id, .. } => self.run_tool(call_id),
                Output::RunGuardrails(run) => {
                    let tx = self.shell_tx.clone();
                    let res = thread::Builder::new()
                        .name("guardrail".into())
                        .spawn(move || {
                            // (A guardrail that panics counts as passed in `check`.)
                            let trip = run.run();
                            let _ = tx.send(ShellMsg::GuardrailDone(run, trip));
                        });
                    if let Err(e) = res {
                        log::error!(target: LOG, "could not spawn a guardrail worker: {e}");
                    }
                }
                Output::ApproveStart(start) => self.approve_start(*start),
                Output::ConnectModel => {
                    if let Some(m) = self.model.take() {
                        m.close();
                        self.model_cancel.store(true, Ordering::SeqCst);
                        m.join();
                    }
                    self.model_gen += 1;
                    if !self.claim_warm_model() {
                        spawn_model_connect(
                            self.model_gen,
                            &self.model_opts,
                            self.shell_tx.clone(),
                            self.counters.clone(),
                        );
                    }
                }
                Output::CloseModel => {
                    if let Some(m) = &self.model {
                        m.close();
                    }
                }
                Output::CloseTwilio => match &self.twilio {
                    Some(t) => t.close(),
                    None => self.end_call(),
                },
                // Opened once this wake-up's outputs are written (they come first).
                Output::AudioLane(lane) => self.granted = Some(lane),
                Output::PingModel => {
                    if let Some(m) = &self.model {
                        log::debug!(target: MODEL_LOG, "model quiet; pinging");
                        if let Err(e) = m.sender().send_now(Message::Ping(Default::default())) {
                            log::debug!(target: MODEL_LOG, "ping not sent: {e}");
                        }
                    }
                }
            }
        }
        if let Some(lane) = self.granted.take() {
            if let (Some(a), false) = (&self.agent_lane, ended) {
                lock_agent(a).grant = Some((self.model_msgs, lane));
            }
        }
        ended
    }

    fn send_model(&mut self, json: String, event_type: &str) {
        let Some(m) = &self.model else { return };
        if let Some(log) = &self.model_events {
            log.write_event(&json);
        }
        if let Err(e) = m.sender().send_now(Message::text(json)) {
            log::debug!(target: MODEL_LOG, "{event_type} not sent: {e}");
        }
    }

    /// Runs a tool on a worker thread, unless `max_tool_workers` are running: then the model
    /// gets an error output at once and no thread is started.
    /// Runs the tool call the core asked for on a worker thread (the function the core
    /// resolved for it), with the call's details.
    fn run_tool(&mut self, call_id: String) {
        let Some((mut call, tool)) = self.core.tool_invocation(&call_id) else {
            // The core asks only for calls it keeps until their result: nothing to run.
            log::warn!(target: LOG, "no tool call {call_id} to run");
            return;
        };
        call.call_info = self.call_info.get().cloned();
        let running = self.tool_workers.load(Ordering::SeqCst);
        if running >= self.max_tool_workers {
            self.counters.tools_refused.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                target: LOG,
                "{running} tools running: {} ({call_id}) refused",
                call.name
            );
            let result = Err(ToolFailure::NotStarted(format!(
                "too many tools are running at once ({running}); try again when one has finished"
            )));
            self.core
                .handle_input(Instant::now(), Input::ToolResult { call_id, result });
            return;
        }
        let now_running = self.tool_workers.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters
            .tool_workers_peak
            .fetch_max(now_running, Ordering::Relaxed);
        let slot = WorkerSlot(self.tool_workers.clone());
        let tx = self.shell_tx.clone();
        let res = thread::Builder::new().name("tool".into()).spawn(move || {
            let _slot = slot;
            // (A tool that panics is reported as failed by `invoke`.)
            let result = tool.invoke(&call);
            let _ = tx.send(ShellMsg::ToolDone(call.call_id, result));
        });
        if let Err(e) = res {
            log::error!(target: LOG, "could not spawn a tool worker: {e}");
            self.core.handle_input(
                Instant::now(),
                Input::ToolResult {
                    call_id,
                    result: Err(ToolFailure::NotStarted(format!(
                        "the tool could not be started: {e}"
                    ))),
                },
            );
        }
    }

    /// Ends a call without a Twilio stream (once), reporting what that did before `Closed`.
    fn end_call(&mut self) {
        if let Some(end) = self.end_call.take() {
            let reason = self.core.ended().cloned().unwrap_or(CloseReason::Closed);
            for e in end(&reason) {
                self.emit(e);
            }
        }
    }

    fn send_twilio(&mut self, cmd: &TwilioCommand) {
        let Some(twilio) = &self.twilio else {
            // A call without a Twilio stream has no audio lane: the core sends it nothing.
            return;
        };
        self.out_buf.clear();
        match cmd {
            TwilioCommand::Media {
                stream_sid,
                payload,
            } => {
                write_media_json(&mut self.out_buf, stream_sid, payload);
                let c = &self.counters;
                c.frames_to_caller.fetch_add(1, Ordering::Relaxed);
                c.bytes_to_caller.fetch_add(
                    crate::proto::mulaw::base64_decoded_len(payload) as u64,
                    Ordering::Relaxed,
                );
                if let Some(t) = self.twilio_started {
                    if c.first_audio_us.load(Ordering::Relaxed) == 0 {
                        store_once(&c.first_audio_us, t.elapsed());
                    }
                }
            }
            TwilioCommand::Mark { stream_sid, name } => {
                write_mark_json(&mut self.out_buf, stream_sid, name)
            }
            other => self.out_buf.push_str(&other.to_json()),
        }
        // Written from this thread under the socket lock (no hand-off to the writer thread:
        // one wake-up less per frame); only this thread writes Twilio frames, so they keep
        // their order, and a `clear` never waits behind queued audio. The write never waits
        // for the peer: for one that stops reading, the frames stay in the bounded write
        // buffer, and the writer thread gives the socket up after the write timeout (the
        // reader then reports it and the call ends).
        if let Err(e) = twilio
            .sender()
            .send_now(Message::text(self.out_buf.as_str()))
        {
            if matches!(e, crate::io::ws::WsError::Closed) {
                // Already closed: the reader thread reports why.
                log::debug!(target: TWILIO_LOG, "twilio frame dropped: {e}");
                return;
            }
            log::warn!(target: TWILIO_LOG, "twilio frame not written: {e}");
            self.core.handle_input(
                Instant::now(),
                Input::TwilioClosed {
                    error: CallError::twilio_gone(None, Some(e)),
                },
            );
            twilio.close();
        }
    }

    fn shutdown(mut self) {
        // Give the writer a moment to flush the last frames, then close both sockets.
        if let Some(m) = self.model.take() {
            m.close();
            self.model_cancel.store(true, Ordering::SeqCst);
            m.join();
        }
        lock(&self.lane).model = None;
        if let Some(log) = &self.model_events {
            log.flush();
        }
        if let Some(t) = self.twilio.take() {
            t.close();
            t.join();
        }
        if let Some(end) = self.end_call.take() {
            // The session thread panicked before the call was ended: end it anyway (nobody
            // listens for events any more).
            let reason = self.core.ended().cloned().unwrap_or(CloseReason::Closed);
            drop(end(&reason));
        }
        // The recording ends with the call: every sender goes, then its writer finishes.
        lock(&self.lane).meter = None;
        self.recorder = None;
        if let Some(t) = self.recorder_thread.take() {
            t.join();
        }
        log::debug!(target: LOG, "session threads done");
    }
}

/// What a message to the session thread adds to the call's recording.
fn record_shell_msg(r: &mut Recorder, msg: &ShellMsg, gen: u64) {
    match msg {
        ShellMsg::Twilio(m) => r.twilio_in(m),
        ShellMsg::TwilioBad(_) => r.now(Record::TwilioBad),
        ShellMsg::TwilioClosed(why) => r.now(Record::TwilioClosed {
            why: why.to_string(),
        }),
        ShellMsg::ModelConnected(g, _, _) if *g == gen => r.now(Record::ModelConnected),
        ShellMsg::ModelConnectFailed(g, why) if *g == gen => r.now(Record::ModelConnectFailed {
            why: why.to_string(),
        }),
        ShellMsg::Model(g, ev) if *g == gen => r.model_in(ev),
        ShellMsg::LiveModel(g, ev) if *g == gen => r.model_type_in(ev.event_type()),
        ShellMsg::ModelBad(g, _) if *g == gen => r.now(Record::ModelBad),
        ShellMsg::ModelClosed(g, why) if *g == gen => r.now(Record::ModelClosed {
            why: why.to_string(),
        }),
        _ => {}
    }
}

/// What the model reader thread needs to route each message.
struct ModelReader<'a> {
    gen: u64,
    /// The call speaks GPT-Live (else Realtime).
    live: bool,
    tx: &'a InboxSender<ShellMsg>,
    events: &'a EventSender,
    transport: TransportEvents,
    cancel: &'a AtomicBool,
    /// The connection's agent-audio lane (none on a GPT-Live call, a recorded call, or a call
    /// without a Twilio stream).
    agent: Option<&'a Mutex<AgentLane>>,
}

impl ModelReader<'_> {
    /// Parses one text frame as the call's model API's event.
    fn parse(&self, text: &str) -> Result<(ShellMsg, bool), crate::proto::realtime::ModelError> {
        if self.live {
            use crate::proto::live::ServerEvent as Live;
            let ev = Live::parse(text)?;
            let audio = matches!(ev, Live::OutputAudioDelta(_));
            Ok((ShellMsg::LiveModel(self.gen, ev), audio))
        } else {
            let ev = ServerEvent::parse(text)?;
            let audio = matches!(ev, ServerEvent::OutputAudioDelta(_));
            Ok((ShellMsg::Model(self.gen, ev), audio))
        }
    }

    /// Runs on the model reader thread for every message.
    fn incoming(&self, inc: Incoming, log: &mut LogLimiter) {
        let (gen, tx, cancel) = (self.gen, self.tx, self.cancel);
        match inc {
            Incoming::Text(text) => {
                let text: &str = text.as_ref();
                #[cfg(test)]
                if text.contains(TEST_PANIC_MARKER) {
                    panic!("injected panic in the model reader");
                }
                if let Some(a) = self.agent {
                    if lock_agent(a).forward(text) {
                        if self.transport == TransportEvents::All {
                            self.events
                                .send(SessionEvent::Transport(TransportEvent::ModelEvent(
                                    text.to_owned(),
                                )));
                        }
                        return;
                    }
                }
                match self.parse(text) {
                    Ok((msg, audio)) => {
                        if self.transport == TransportEvents::All
                            || (self.transport == TransportEvents::Control && !audio)
                        {
                            self.events
                                .send(SessionEvent::Transport(TransportEvent::ModelEvent(
                                    text.to_owned(),
                                )));
                        }
                        // Waits while the inbox is full: the model's socket is not read meanwhile.
                        let _ = tx.send_wait(msg, Some(cancel));
                    }
                    Err(e) => {
                        match log.check(Instant::now()) {
                            Some(0) => {
                                log::warn!(target: MODEL_LOG, "bad event from the model: {e}")
                            }
                            Some(n) => log::warn!(
                                target: MODEL_LOG,
                                "bad event from the model: {e} ({n} more since the last line)"
                            ),
                            None => {}
                        }
                        let _ = tx.send_wait(ShellMsg::ModelBad(gen, e.to_string()), Some(cancel));
                    }
                }
            }
            Incoming::Binary(_) => {
                if log.check(Instant::now()).is_some() {
                    log::warn!(target: MODEL_LOG, "binary frame from the model ignored");
                }
            }
            Incoming::Closed(c) => {
                let _ = tx.send(ShellMsg::ModelClosed(gen, CallError::model_closed(c, None)));
            }
            Incoming::Error(WsError::HandlerPanicked(why)) => {
                let _ = tx.send(ShellMsg::Panicked(format!("model reader: {why}")));
            }
            Incoming::Error(e) => {
                let _ = tx.send(ShellMsg::ModelClosed(
                    gen,
                    CallError::model_closed(None, Some(e)),
                ));
            }
        }
    }
}

/// One running call, and the application's handle on it: [`Session::start`] runs a call on a
/// Twilio WebSocket the application accepted itself (or [`Session::start_sideband`] a SIP
/// call); the session gives its [`events`](Session::events), takes commands
/// (`send_message`, `interrupt`, `approve` / `reject`, `update_agent`, `hang_up`,
/// `transfer`, `close`), and reports `history`, `call_info`, `call_stats` and `queue_stats`.
/// [`join`](Session::join) waits until every thread of the call has exited.
///
/// A whole call, embedded in the application's own listener; the fake model stands in for
/// OpenAI and the simulator for Twilio, so this runs with no key and no phone:
///
/// ```
/// use std::net::TcpListener;
/// use twilio_realtime::agent::Agent;
/// use twilio_realtime::events::SessionEvent;
/// use twilio_realtime::session::{Session, SessionConfig};
/// use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
/// use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
/// use twilio_realtime::io::ws::{WsConfig, WsConn};
///
/// let model = FakeModel::start(FakeModelConfig {
///     script: vec![Reply::say("It is sunny.", 400)],
///     ..Default::default()
/// })?;
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// // "Twilio" dials in from another thread: the caller speaks, listens, hangs up.
/// let caller = std::thread::spawn(move || {
///     TwilioCall::run(TwilioCallConfig::new(addr, vec![
///         Segment::Speech(600),
///         Segment::WaitForAgent { quiet_ms: 300, timeout_ms: 10_000 },
///         Segment::HangUp,
///     ]))
/// });
///
/// let (tcp, _) = listener.accept()?;
/// let (twilio, _request) = WsConn::accept(tcp, None, &WsConfig::default())?;
/// let agent = Agent::new("Assistant", "You are a friendly phone assistant.");
/// // A real deployment passes its key: SessionConfig::new(Some(key)).
/// let opts = SessionConfig::new(None).url(model.url());
/// let session = Session::start(twilio, agent, opts)?;
/// let mut said = Vec::new();
/// for event in session.events().iter() {
///     match event {
///         SessionEvent::AgentEnd { text, .. } => said.push(text),
///         SessionEvent::Closed { .. } => break,
///         _ => {}
///     }
/// }
/// session.join();
/// assert_eq!(said, ["It is sunny."]);
/// assert_eq!(caller.join().unwrap()?.played_ms(), 400);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Session {
    events: EventReceiver,
    tx: InboxSender<ShellMsg>,
    thread: Option<JoinHandle<()>>,
    lane: Arc<Mutex<Lane>>,
    call_info: Arc<OnceLock<Arc<CallInfo>>>,
    counters: Arc<Counters>,
    /// The Twilio socket's queued bytes ([`QueueGauge`]).
    twilio_backlog: Option<Arc<Backlog>>,
}

/// The former name of [`Session`]: the handle is the session now. Code that names it still
/// compiles (with a deprecation warning):
///
/// ```
/// #[allow(deprecated)]
/// fn old_name(handle: twilio_realtime::SessionHandle) -> twilio_realtime::Session {
///     handle
/// }
/// ```
#[deprecated(since = "0.1.0", note = "the handle is the session: use `Session`")]
pub type SessionHandle = Session;

/// Closes a session from any thread (see [`Session::closer`]).
#[derive(Clone)]
pub struct SessionCloser(InboxSender<ShellMsg>);

impl std::fmt::Debug for SessionCloser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCloser")
    }
}

impl SessionCloser {
    /// Ends the call, like [`Session::close`].
    pub fn close(&self) {
        let _ = self.0.send(ShellMsg::Command(Command::Close));
    }
}

impl std::fmt::Debug for ShellMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShellMsg")
    }
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("inbound", &self.inbound)
            .finish_non_exhaustive()
    }
}

/// Acts on a running call from any thread: cheap to clone, `Send` and `Sync`, and harmless
/// once the call has ended (commands then go nowhere). Get one from
/// [`Session::control`], or from the bundled server's per-call handler
/// ([`crate::server::Server::on_call`]).
#[derive(Clone)]
pub struct CallControl {
    tx: InboxSender<ShellMsg>,
    call_info: Arc<OnceLock<Arc<CallInfo>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for CallControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallControl").finish_non_exhaustive()
    }
}

impl CallControl {
    fn command(&self, c: Command) {
        let _ = self.tx.send(ShellMsg::Command(c));
    }

    /// Who is on the line, once Twilio's `start` has arrived (as
    /// [`Session::call_info`]).
    pub fn call_info(&self) -> Option<Arc<CallInfo>> {
        self.call_info.get().cloned()
    }

    /// GPT-Live's session id, once the model started the session (as
    /// [`Session::live_session_id`]).
    pub fn live_session_id(&self) -> Option<&str> {
        self.counters.live_session_id.get().map(String::as_str)
    }

    /// As [`Session::send_message`].
    pub fn send_message(&self, text: impl Into<String>) {
        self.command(Command::SendMessage(text.into()));
    }

    /// As [`Session::interrupt`].
    pub fn interrupt(&self) {
        self.command(Command::Interrupt);
    }

    /// As [`Session::approve`].
    pub fn approve(&self, call_id: impl Into<String>) {
        self.command(Command::Approve(call_id.into()));
    }

    /// As [`Session::reject`].
    pub fn reject(&self, call_id: impl Into<String>, message: Option<String>) {
        self.command(Command::Reject {
            call_id: call_id.into(),
            message,
        });
    }

    /// As [`Session::update_agent`].
    pub fn update_agent(&self, agent: Agent) {
        self.command(Command::UpdateAgent(agent));
    }

    /// As [`Session::create_response`].
    pub fn create_response(&self, instructions: Option<String>) {
        self.create_response_with(crate::proto::realtime::ResponseConfig {
            instructions,
            ..Default::default()
        });
    }

    /// As [`Session::create_response_with`].
    pub fn create_response_with(&self, response: crate::proto::realtime::ResponseConfig) {
        self.command(Command::CreateResponse(response));
    }

    /// As [`Session::commit_audio`].
    pub fn commit_audio(&self) {
        self.command(Command::CommitAudio);
    }

    /// As [`Session::send_raw`].
    pub fn send_raw(&self, json: impl Into<String>) {
        self.command(Command::SendRaw(json.into()));
    }

    /// As [`Session::hang_up`].
    pub fn hang_up(&self) {
        self.command(Command::HangUp);
    }

    /// As [`Session::transfer`].
    pub fn transfer(&self, target: crate::telephony::transfer::TransferTarget) {
        self.command(Command::Transfer(target));
    }

    /// As [`Session::history`].
    pub fn history(&self) -> Vec<HistoryItem> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(ShellMsg::History(tx)).is_err() {
            return Vec::new();
        }
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }

    /// As [`Session::close`].
    pub fn close(&self) {
        self.command(Command::Close);
    }
}

impl Session {
    /// A [`CallControl`] for this call, to act on it from other threads.
    pub fn control(&self) -> CallControl {
        CallControl {
            tx: self.tx.clone(),
            call_info: self.call_info.clone(),
            counters: self.counters.clone(),
        }
    }

    /// The session's events, in order. The last one is [`SessionEvent::Closed`]. At most
    /// [`SessionConfig::event_capacity`] wait to be read: an application that reads late or
    /// never loses the oldest audio and transport events first (told by
    /// [`SessionEvent::EventsDropped`]), and the call is never slowed by it.
    pub fn events(&self) -> &EventReceiver {
        &self.events
    }

    fn command(&self, c: Command) {
        let _ = self.tx.send_wait(ShellMsg::Command(c), None);
    }

    /// Adds a user text message and asks for a response.
    pub fn send_message(&self, text: impl Into<String>) {
        self.command(Command::SendMessage(text.into()));
    }

    /// Stops the agent talking (like a barge-in). Does nothing when nothing plays.
    pub fn interrupt(&self) {
        self.command(Command::Interrupt);
    }

    /// Runs a tool call that waits for approval. A call not approved or rejected within
    /// [`CallConfig::approval_timeout`] (default 60 s) is rejected, and the model told so.
    pub fn approve(&self, call_id: impl Into<String>) {
        self.command(Command::Approve(call_id.into()));
    }

    /// Refuses a tool call that waits for approval; the model is told `message` (or a
    /// default sentence).
    pub fn reject(&self, call_id: impl Into<String>, message: Option<String>) {
        self.command(Command::Reject {
            call_id: call_id.into(),
            message,
        });
    }

    /// Switches to another agent (instructions, voice, tools).
    pub fn update_agent(&self, agent: Agent) {
        self.command(Command::UpdateAgent(agent));
    }

    /// Asks the model for a response now (`response.create`), with `instructions` for this
    /// response only if given (they replace the session's for it). Queued while a response
    /// is active; the model answers the caller's turns by itself unless turn detection is
    /// off or `create_response` is false.
    pub fn create_response(&self, instructions: Option<String>) {
        self.create_response_with(crate::proto::realtime::ResponseConfig {
            instructions,
            ..Default::default()
        });
    }

    /// Like [`Session::create_response`], with every per-response option.
    pub fn create_response_with(&self, response: crate::proto::realtime::ResponseConfig) {
        self.command(Command::CreateResponse(response));
    }

    /// Commits the caller audio sent so far as a user turn (`input_audio_buffer.commit`): for
    /// sessions with turn detection off (push to talk). Follow with
    /// [`Session::create_response`].
    pub fn commit_audio(&self) {
        self.command(Command::CommitAudio);
    }

    /// Sends a client event to the model exactly as given (escape hatch for events this crate
    /// does not wrap). It must be a JSON object with a string `type`; a `session.update` that
    /// sets an audio format other than `audio/pcmu` is refused (a [`SessionEvent::Error`]).
    pub fn send_raw(&self, json: impl Into<String>) {
        self.command(Command::SendRaw(json.into()));
    }

    /// The conversation so far (empty once the call has ended).
    pub fn history(&self) -> Vec<HistoryItem> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send_wait(ShellMsg::History(tx), None).is_err() {
            return Vec::new();
        }
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }

    /// Who is on the line, once Twilio's `start` has arrived (see [`crate::telephony::call_info`]).
    pub fn call_info(&self) -> Option<Arc<CallInfo>> {
        self.call_info.get().cloned()
    }

    /// Counters of the caller-audio lane.
    pub fn inbound_stats(&self) -> InboundStats {
        lock(&self.lane).inbound.stats().clone()
    }

    /// Ends the call once the caller has heard the agent's last words: the response under
    /// way (if any) finishes, its audio plays out (Twilio echoed its last mark), then the
    /// stream and the model connection close with [`CloseReason::HungUp`]. No new response is
    /// asked for meanwhile. Bounded by [`CallConfig::hang_up_timeout`] (default 10 s).
    /// Twilio then runs the TwiML after `<Connect>` (none: the call ends).
    pub fn hang_up(&self) {
        self.command(Command::HangUp);
    }

    /// Transfers the caller to `target` once they have heard the agent's last words (as
    /// [`Session::hang_up`]), with [`CloseReason::Transferred`]. Under the bundled
    /// server, Twilio then dials the destination (see [`crate::telephony::transfer`]).
    pub fn transfer(&self, target: crate::telephony::transfer::TransferTarget) {
        self.command(Command::Transfer(target));
    }

    /// Ends the call now: both sockets are closed and the threads exit.
    pub fn close(&self) {
        self.command(Command::Close);
    }

    /// A handle that closes the call from another thread.
    pub fn closer(&self) -> SessionCloser {
        SessionCloser(self.tx.clone())
    }

    /// Reads the call's queued bytes from any thread (see [`QueueGauge`]); cheap to clone.
    pub fn queue_gauge(&self) -> QueueGauge {
        QueueGauge {
            lane: self.lane.clone(),
            twilio: self.twilio_backlog.clone(),
        }
    }

    /// How full the call's bounded queues are and got (events, inbox, marks, tool workers).
    pub fn queue_stats(&self) -> QueueStats {
        let (inbox_peak, inbox_waits) = self.tx.stats();
        QueueStats {
            events_queued: self.events.len(),
            events_peak: self.events.peak(),
            events_dropped: self.events.dropped(),
            inbox_peak,
            inbox_waits,
            marks_dropped: lock(&self.lane).marks_dropped,
            tool_workers_peak: self.counters.tool_workers_peak.load(Ordering::Relaxed),
            tools_refused: self.counters.tools_refused.load(Ordering::Relaxed),
        }
    }

    /// The call's traffic (frames and bytes each way) and latencies (model handshake, `start`
    /// to first agent audio) so far. Cheap: a few atomic loads and the caller-audio lane's
    /// counters.
    pub fn call_stats(&self) -> SessionStats {
        let inbound = lock(&self.lane).inbound.stats().clone();
        let queues = self.queue_gauge();
        let c = &self.counters;
        SessionStats {
            frames_from_caller: inbound.frames_in,
            bytes_from_caller: inbound.bytes_in,
            frames_to_caller: c.frames_to_caller.load(Ordering::Relaxed),
            bytes_to_caller: c.bytes_to_caller.load(Ordering::Relaxed),
            model_connect: load_once(&c.model_connect_us),
            first_audio: load_once(&c.first_audio_us),
            events_dropped: self.events.dropped(),
            queued_to_twilio: queues.to_twilio(),
            queued_to_model: queues.to_model(),
            live_session_id: c.live_session_id.get().cloned(),
        }
    }

    /// GPT-Live's session id (`live_…`), once the model started the session; `None` with
    /// Realtime. OpenAI's support asks for it; the per-call summary line and the model-event
    /// log carry it too.
    pub fn live_session_id(&self) -> Option<&str> {
        self.counters.live_session_id.get().map(String::as_str)
    }

    /// Ends the call with [`CallError::Panicked`] (the server's event hook panicked).
    #[cfg(feature = "server")]
    pub(crate) fn end_after_panic(&self, what: String) {
        let _ = self.tx.send(ShellMsg::Panicked(what));
    }

    /// Waits until every socket thread of the call has exited.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// True once the session thread has exited.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

/// Why a session closed, from its event stream: waits for [`SessionEvent::Closed`].
pub fn wait_closed(events: &EventReceiver, timeout: Duration) -> Option<CloseReason> {
    // A timeout past what an Instant holds (Duration::MAX) means: wait as long as it takes.
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        match events.recv_timeout(left) {
            Ok(SessionEvent::Closed { reason }) => return Some(reason),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Panics in the socket readers' handlers (issue 10 §4). The handlers run only this
    //! crate's code, so the panic is injected through [`TEST_PANIC_MARKER`], which exists in
    //! test builds only.
    use super::*;
    use crate::sim::fake_model::{FakeModel, FakeModelConfig, Faults};
    use crate::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};
    use std::net::TcpListener;

    #[test]
    fn wait_closed_takes_duration_max() {
        let (tx, rx) = crate::session::event_queue::event_queue(4);
        tx.send(SessionEvent::Closed {
            reason: CloseReason::Closed,
        });
        assert_eq!(wait_closed(&rx, Duration::MAX), Some(CloseReason::Closed));
    }

    fn call(model: FakeModelConfig, panic_in_start: bool) -> (Option<CloseReason>, CallReport) {
        let fake = FakeModel::start(model).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let url = fake.url();
        let bridge = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let (conn, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
            let opts = SessionConfig::new(None).url(url);
            let handle = Session::start(conn, Agent::new("A", "x"), opts).unwrap();
            let reason = wait_closed(handle.events(), Duration::from_secs(10));
            // every thread of the call exits: join returns
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            thread::spawn(move || {
                handle.join();
                let _ = done_tx.send(());
            });
            assert!(
                done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
                "the call's threads did not exit"
            );
            reason
        });
        let mut cfg = TwilioCallConfig::new(addr, vec![Segment::Silence(3000), Segment::HangUp]);
        cfg.one_way_delay = Duration::from_millis(2);
        cfg.jitter = Duration::ZERO;
        if panic_in_start {
            cfg.custom_parameters
                .insert("p".into(), TEST_PANIC_MARKER.into());
        }
        let report = TwilioCall::run(cfg).unwrap();
        let reason = bridge.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while fake.recording().closed_by_client == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            fake.recording().closed_by_client,
            1,
            "the model socket closed"
        );
        (reason, report)
    }

    #[test]
    fn a_panic_in_the_twilio_reader_ends_only_that_call() {
        let (reason, report) = call(FakeModelConfig::default(), true);
        assert!(
            matches!(&reason, Some(CloseReason::Error(CallError::Panicked { message: why })) if why.starts_with("twilio reader:")),
            "{reason:?}"
        );
        assert!(report.closed_by_bridge, "{:?}", report.timeline);
    }

    #[test]
    fn a_panic_in_the_model_reader_ends_only_that_call() {
        let model = FakeModelConfig {
            faults: Faults {
                raw: vec![(
                    Duration::from_millis(300),
                    format!(r#"{{"type":"{TEST_PANIC_MARKER}"}}"#),
                )],
                ..Default::default()
            },
            ..Default::default()
        };
        let (reason, report) = call(model, false);
        assert!(
            matches!(&reason, Some(CloseReason::Error(CallError::Panicked { message: why })) if why.starts_with("model reader:")),
            "{reason:?}"
        );
        assert!(report.closed_by_bridge, "{:?}", report.timeline);
    }
}
