//! A fake OpenAI Realtime server on 127.0.0.1 that speaks complete GA events.
//!
//! It behaves like production where the bridge can tell (DESIGN.md §3 and §7, the official
//! schemas in `shared/spec`):
//!
//! * it **never speaks first**: a response starts only on `response.create`, or when server VAD
//!   with `create_response` commits a caller turn (an unsolicited greeting exists only as the
//!   named fault [`Faults::unsolicited_greeting`], off by default);
//! * a new session has **production's defaults**: `audio/pcm` at 24 kHz both ways, voice
//!   `alloy`, `server_vad` (threshold 0.5, 300 ms prefix, 500 ms silence, `create_response` and
//!   `interrupt_response` true). Audio it receives is heard only while the input format is
//!   `audio/pcmu` (anything else is noise to it, and a violation); audio it sends is PCM16 at
//!   24 kHz until the output format is `audio/pcmu`. The recording counts every audio byte
//!   under the format it was received or sent in ([`ModelRecording::appended_by_format`],
//!   [`ModelRecording::sent_by_format`]), so a bridge that never switched is caught;
//! * it **refuses what production refuses**, with production's `error` shape (`type`,
//!   `code`, `message`, `param`, and the `event_id` of the offending client event), and a
//!   refused `session.update` leaves the previous configuration: an unknown voice
//!   (`invalid_value`, the built-in voices of the spec), a tool whose name is not
//!   `^[a-zA-Z0-9_-]{1,64}$` (OpenAI's function-name rule), a voice change once the assistant
//!   has produced audio (`cannot_update_voice`), an audio format outside the spec's, truncation
//!   past the end of an item or of a non-assistant item (`invalid_value`), a second
//!   `response.create` while one is active (`conversation_already_has_active_response`), a
//!   commit of an empty buffer (`input_audio_buffer_commit_empty`);
//! * it runs an energy VAD over the µ-law it hears (speech started/stopped, committed, the user
//!   item), transcribes caller turns when the session asks for input transcription (the text
//!   comes from [`FakeModelConfig::caller_transcripts`]: it hears tones, not words), answers
//!   from a script (audio paced faster than real time with transcript deltas, or a function
//!   call), handles `conversation.item.truncate` and `response.cancel`, records everything it
//!   received, and can inject faults.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::Message;

use crate::io::http::{self, HttpLimits};
use crate::io::ws::{Incoming, WsConfig, WsSender};
use crate::proto::mulaw;
use crate::proto::realtime::{ClientEvent, Item};

const LOG: &str = "twilio_realtime::sim";

/// Most client events on their way at once ([`Faults::round_trip`]); beyond it the fake
/// stops reading the socket until the oldest is due (the bridge's writes then wait on TCP).
const MAX_IN_FLIGHT: usize = 4096;

/// One scripted response.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The agent speaks for `ms` milliseconds; `transcript` is streamed alongside.
    Audio {
        /// What it "says".
        transcript: String,
        /// How long the audio lasts.
        ms: u32,
    },
    /// The agent calls a function; the next reply plays after the output and a
    /// `response.create`.
    FunctionCall {
        /// The tool's name (e.g. `transfer_to_billing` for a handoff).
        name: String,
        /// The arguments (JSON text).
        arguments: String,
    },
}

impl Reply {
    /// A spoken reply.
    pub fn say(transcript: impl Into<String>, ms: u32) -> Reply {
        Reply::Audio {
            transcript: transcript.into(),
            ms,
        }
    }

    /// A function call.
    pub fn call(name: impl Into<String>, arguments: impl Into<String>) -> Reply {
        Reply::FunctionCall {
            name: name.into(),
            arguments: arguments.into(),
        }
    }
}

/// Faults to inject, timed from the connection's start.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Wait this long before completing the WebSocket handshake (a slow model, or a far
    /// one). On loopback the handshake is nearly free; against the real endpoint it is a TCP
    /// connect, a TLS handshake and the HTTP upgrade, each a round trip to the model's region
    /// or more: hundreds of milliseconds, and users far from it measured 2–3 s from connect to
    /// a usable session (openclaw #85847, cited in issue 12 §6). `examples/latency.rs` uses
    /// 300 ms and 1 s.
    pub accept_delay: Duration,
    /// The network's round trip between the bridge and the model's region: each client event
    /// is acted on this long after it arrived, so every answer (`session.updated` to a
    /// `session.update`, the first audio of a `response.create`, `speech_started` to the
    /// caller's audio) reaches the bridge one round trip after the event that caused it, as in
    /// production, where each client event → server event costs one round trip (both one-way
    /// halves are applied on the way in; the bridge cannot tell the difference). Events keep
    /// their order; the server's own pacing (audio deltas) is unchanged. `session.created`
    /// comes with the handshake ([`Faults::accept_delay`], which models the handshake's own
    /// round trips). Default zero (loopback); `examples/latency.rs` uses 100 ms and 300 ms.
    pub round_trip: Duration,
    /// Close the socket after this long.
    pub close_after: Option<Duration>,
    /// Send these `error` events at these times.
    pub errors: Vec<(Duration, Value)>,
    /// Send a frame that is not JSON after this long.
    pub malformed_after: Option<Duration>,
    /// Send these text frames exactly as given at these times (truncated JSON, unknown or
    /// out-of-order events, deltas for items that do not exist, …).
    pub raw: Vec<(Duration, String)>,
    /// Send a `session_expired` error after this long, then close.
    pub session_expired_after: Option<Duration>,
    /// Stop reading the socket `.0` after the connection opened, for `.1` (events still go
    /// out): a peer whose TCP window closes once the kernel's buffers are full (DESIGN.md §7:
    /// a peer that stops reading).
    pub stall_reads: Option<(Duration, Duration)>,
    /// Refuse the upgrade with this HTTP status.
    pub reject_status: Option<u16>,
    /// NOT production behaviour: speak this right after `session.created`, unasked, in the
    /// session's default format (24 kHz PCM), like a server that spoke first. For testing that
    /// a bridge never forwards audio of an unconfirmed session. Off (`None`) by default.
    pub unsolicited_greeting: Option<Reply>,
}

/// Settings of the fake model.
#[derive(Debug, Clone)]
pub struct FakeModelConfig {
    /// Replies, one per response, in order (shared by all connections). When empty,
    /// [`FakeModelConfig::default_reply`].
    pub script: Vec<Reply>,
    /// The reply once the script is used up. Default `Reply::say("Okay.", 600)`.
    pub default_reply: Reply,
    /// Transcripts of the caller's turns, in order (shared by all connections), sent as
    /// `conversation.item.input_audio_transcription.completed` when the session enables input
    /// transcription. When used up: `caller turn N`.
    pub caller_transcripts: Vec<String>,
    /// How much faster than real time audio is sent. Default 4.
    pub audio_speed: f32,
    /// Audio per delta. Default 100 ms.
    pub chunk_ms: u32,
    /// Mean |sample| above which a 20 ms frame counts as speech. Default 800.
    pub vad_threshold: f32,
    /// Loud audio needed to start a turn. Default 60 ms.
    pub vad_start_ms: u32,
    /// Quiet audio that ends a turn (unless the session sets `silence_duration_ms`). Default 500 ms.
    pub silence_ms: u32,
    /// Require `Authorization: Bearer <key>`.
    pub require_key: Option<String>,
    /// Faults.
    pub faults: Faults,
    /// Keep every client event, each `session.update` and the appended audio in the
    /// recording (counters are always kept). Default true; turn off for long runs, where they grow without bound.
    pub keep_events: bool,
}

impl Default for FakeModelConfig {
    fn default() -> Self {
        FakeModelConfig {
            script: Vec::new(),
            default_reply: Reply::say("Okay.", 600),
            caller_transcripts: Vec::new(),
            audio_speed: 4.0,
            chunk_ms: 100,
            vad_threshold: 800.0,
            vad_start_ms: 60,
            silence_ms: 500,
            require_key: None,
            faults: Faults::default(),
            keep_events: true,
        }
    }
}

/// A truncation the fake model received.
#[derive(Debug, Clone, PartialEq)]
pub struct TruncationRecord {
    /// When it arrived.
    pub at: Instant,
    /// The item.
    pub item_id: String,
    /// The claimed `audio_end_ms`.
    pub audio_end_ms: u64,
    /// How much audio of the item the model had sent.
    pub item_ms: u64,
    /// False when it was refused (`invalid_value`).
    pub accepted: bool,
}

/// What the fake model saw.
#[derive(Debug, Clone, Default)]
pub struct ModelRecording {
    /// Every upgrade request's head as it arrived (target with the query, headers as sent,
    /// credentials included: this is a test double), refused ones too.
    pub upgrade_requests: Vec<crate::io::http::RequestHead>,
    /// Connections accepted.
    pub connections: u64,
    /// Connections the client (the bridge) closed or dropped.
    pub closed_by_client: u64,
    /// Every client event received: (when, raw JSON).
    pub events: Vec<(Instant, String)>,
    /// Every `session.update`'s `session`.
    pub session_updates: Vec<Value>,
    /// µ-law bytes appended.
    pub appended_bytes: u64,
    /// The appended audio itself (capped at 10 minutes).
    pub appended_audio: Vec<u8>,
    /// Caller audio bytes appended, per input format in force when they arrived
    /// (`audio/pcmu`, `audio/pcm`, …). Only `audio/pcmu` bytes were heard.
    pub appended_by_format: BTreeMap<String, u64>,
    /// Agent audio bytes sent as deltas, per output format they were encoded in.
    pub sent_by_format: BTreeMap<String, u64>,
    /// Every `response.create`'s `response` options (`null` when it had none).
    pub response_requests: Vec<Value>,
    /// Caller turns transcribed (`input_audio_transcription.completed` sent): (item, text).
    pub transcribed: Vec<(String, String)>,
    /// Truncations received.
    pub truncations: Vec<TruncationRecord>,
    /// `function_call_output`s received: (call id, output).
    pub function_outputs: Vec<(String, String)>,
    /// User texts received.
    pub user_texts: Vec<String>,
    /// Responses started / cancelled.
    pub responses: u64,
    /// Responses cancelled.
    pub cancelled: u64,
    /// Error codes sent back.
    pub errors_sent: Vec<String>,
    /// Client events that did not parse or broke a rule.
    pub violations: Vec<String>,
    /// Audio bytes sent as deltas.
    pub audio_sent_bytes: u64,
    /// Speech turns detected: (start ms, end ms) in the appended stream.
    pub turns: Vec<(u64, Option<u64>)>,
}

/// A running fake model. Stops when dropped.
///
/// Point a session's model URL at [`FakeModel::url`]; [`FakeModel::recording`] then says what
/// the bridge sent. Here the caller's question makes the model call a tool, and the reply after
/// the tool's output is spoken:
///
/// ```
/// use std::sync::Arc;
/// use serde_json::json;
/// use twilio_realtime::agent::{Agent, FunctionTool};
/// use twilio_realtime::server::{Server, ServerConfig};
/// use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
/// use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
///
/// let model = FakeModel::start(FakeModelConfig {
///     script: vec![
///         Reply::call("get_weather", r#"{"location":"Paris"}"#),
///         Reply::say("It is sunny in Paris.", 500),
///     ],
///     ..Default::default()
/// })?;
/// fn agent() -> Agent {
///     Agent::new("Assistant", "You answer weather questions.").tool(FunctionTool::new(
///         "get_weather",
///         "The weather in a city.",
///         json!({"type": "object", "properties": {"location": {"type": "string"}}}),
///         |call| Ok(format!("Sunny in {}.", call.arguments["location"].as_str().unwrap_or("?"))),
///     ))
/// }
/// let mut cfg = ServerConfig::new();
/// cfg.bind = "127.0.0.1:0".parse()?;
/// cfg.session = cfg.session.url(model.url());
/// let server = Server::bind(cfg, Arc::new(agent))?;
/// let (addr, stopper) = (server.local_addr(), server.stopper());
/// let running = std::thread::spawn(move || server.run());
///
/// let report = TwilioCall::run(TwilioCallConfig::new(addr, vec![
///     Segment::Speech(700),
///     Segment::WaitForAgent { quiet_ms: 300, timeout_ms: 10_000 },
///     Segment::HangUp,
/// ]))?;
/// stopper.stop();
/// running.join().unwrap()?;
///
/// let rec = model.recording();
/// assert_eq!(rec.function_outputs.len(), 1);
/// assert_eq!(rec.function_outputs[0].1, "Sunny in Paris.");
/// assert!(rec.violations.is_empty(), "{:?}", rec.violations);
/// assert_eq!(report.played_ms(), 500);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FakeModel {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    rec: Arc<Mutex<ModelRecording>>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeModel")
            .field("addr", &self.addr)
            .finish()
    }
}

struct Shared {
    cfg: FakeModelConfig,
    script: Mutex<VecDeque<Reply>>,
    transcripts: Mutex<VecDeque<String>>,
    turns: AtomicU64,
    rec: Arc<Mutex<ModelRecording>>,
    ids: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}_{:08}", self.ids.fetch_add(1, Ordering::Relaxed))
    }
    fn rec(&self) -> std::sync::MutexGuard<'_, ModelRecording> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FakeModel {
    /// Starts listening on 127.0.0.1 (a free port).
    pub fn start(cfg: FakeModelConfig) -> std::io::Result<FakeModel> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        if cfg.faults.stall_reads.is_some() {
            // Set on the listener, so every connection's window is sized from it from the
            // first segment on: the window closes after a few KiB instead of megabytes.
            use std::os::fd::AsRawFd;
            crate::io::sys::set_recv_buffer(listener.as_raw_fd(), 8 * 1024)?;
        }
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let rec = Arc::new(Mutex::new(ModelRecording::default()));
        let shared = Arc::new(Shared {
            script: Mutex::new(cfg.script.iter().cloned().collect()),
            transcripts: Mutex::new(cfg.caller_transcripts.iter().cloned().collect()),
            turns: AtomicU64::new(0),
            cfg,
            rec: rec.clone(),
            ids: AtomicU64::new(1),
            stop: stop.clone(),
        });
        let accept = thread::Builder::new()
            .name("fake-model".into())
            .spawn(move || {
                for s in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    let sh = shared.clone();
                    let _ = thread::Builder::new()
                        .name("fake-model-conn".into())
                        .spawn(move || connection(sh, s));
                }
            })?;
        Ok(FakeModel {
            addr,
            stop,
            rec,
            accept: Some(accept),
        })
    }

    /// `ws://127.0.0.1:PORT/v1/realtime?model=gpt-realtime`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime?model=gpt-realtime", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of what it saw so far.
    pub fn recording(&self) -> ModelRecording {
        self.rec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops accepting (live connections end with their peers).
    pub fn stop(&mut self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.stop();
    }
}

fn connection(sh: Arc<Shared>, tcp: std::net::TcpStream) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let mut tcp = tcp;
    let Ok((head, leftover)) = http::read_head(&mut tcp, &HttpLimits::default()) else {
        return;
    };
    if sh.stop.load(Ordering::SeqCst) {
        return;
    }
    sh.rec().upgrade_requests.push(head.clone());
    if let Some(status) = sh.cfg.faults.reject_status {
        let _ = http::write_response(
            &mut tcp,
            status,
            "application/json",
            &[],
            b"{\"error\":\"rejected\"}",
        );
        return;
    }
    if let Some(key) = &sh.cfg.require_key {
        if head.header("authorization") != Some(&format!("Bearer {key}")) {
            let _ = http::write_response(
                &mut tcp,
                401,
                "application/json",
                &[],
                b"{\"error\":\"bad key\"}",
            );
            return;
        }
    }
    thread::sleep(sh.cfg.faults.accept_delay);
    let stall = sh.cfg.faults.stall_reads;
    let mut ws_cfg = WsConfig::default();
    if stall.is_some() {
        // One message queued: the reader stops reading the socket as soon as the engine does.
        ws_cfg.inbound_capacity = 1;
    }
    let Some((duplex, rx)) = super::accept_ws_channel(tcp, &head, leftover, &ws_cfg, "fm") else {
        return;
    };
    sh.rec().connections += 1;
    let mut e = Engine::new(sh.clone(), duplex.sender());
    e.send(json!({"type":"session.created","event_id": sh.id("event"),"session": e.session}));
    if let Some(g) = sh.cfg.faults.unsolicited_greeting.clone() {
        log::info!(target: LOG, "fault: speaking first, unasked, in the session's default format");
        e.start_response(g);
    }
    // Client events on their way (Faults::round_trip): (when they are acted on, text).
    // (An hour at most: a round trip past what an Instant holds means "never" in practice.)
    let round_trip = sh.cfg.faults.round_trip.min(Duration::from_secs(3600));
    let mut in_flight: VecDeque<(Instant, String)> = VecDeque::new();
    loop {
        let now = Instant::now();
        while in_flight.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, text)) = in_flight.pop_front() {
                e.act(&text);
            }
        }
        let timeout = e
            .next_deadline()
            .into_iter()
            .chain(in_flight.front().map(|(due, _)| *due))
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(200));
        let stalled = stall.is_some_and(|(after, len)| {
            let t = e.started.elapsed();
            t >= after && t < after.saturating_add(len)
        });
        if stalled || in_flight.len() >= MAX_IN_FLIGHT {
            // Not reading: the reader thread blocks on the full queue, the window closes.
            thread::sleep(timeout.min(Duration::from_millis(20)));
            if !e.tick() || sh.stop.load(Ordering::SeqCst) {
                duplex.close();
                break;
            }
            continue;
        }
        match rx.recv_timeout(timeout) {
            Ok(Incoming::Text(t)) if round_trip.is_zero() => e.on_client(t.as_str()),
            Ok(Incoming::Text(t)) => {
                e.record_arrival(t.as_str());
                in_flight.push_back((Instant::now() + round_trip, t.as_str().to_owned()));
            }
            Ok(Incoming::Binary(_)) => e.violation("binary frame".into()),
            Ok(Incoming::Closed(_)) | Ok(Incoming::Error(_)) => {
                // What was sent before the close arrived before it (TCP keeps the order).
                for (_, text) in in_flight.drain(..) {
                    e.act(&text);
                }
                sh.rec().closed_by_client += 1;
                break;
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        if !e.tick() || sh.stop.load(Ordering::SeqCst) {
            duplex.close();
            break;
        }
    }
    // A reader blocked on a full queue must not keep the join waiting.
    drop(rx);
    duplex.join();
}

struct ActiveResponse {
    id: String,
    /// The output format its audio was encoded in (fixed when it started).
    format: String,
    item_id: Option<String>,
    queue: VecDeque<(Instant, Value)>,
    audio_item: Option<(String, u64)>,
}

struct Engine {
    sh: Arc<Shared>,
    out: WsSender,
    started: Instant,
    // session
    session: Value,
    updates: u64,
    /// The assistant has produced audio in this session (the voice is fixed from then on).
    spoke: bool,
    /// Bytes appended since the last commit.
    uncommitted: u64,
    assistant_items: HashSet<String>,
    // VAD over the appended stream
    offset: u64,
    frame: Vec<u8>,
    speaking: bool,
    loud_ms: u64,
    quiet_ms: u64,
    speech_start: u64,
    user_item: Option<String>,
    // conversation
    items: HashMap<String, u64>,
    last_item: Option<String>,
    active: Option<ActiveResponse>,
    // faults fired
    fired: Vec<bool>,
    fired_raw: Vec<bool>,
    closed_fault: bool,
    malformed_done: bool,
    expired_done: bool,
}

impl Engine {
    fn new(sh: Arc<Shared>, out: WsSender) -> Engine {
        let n = sh.cfg.faults.errors.len();
        let n_raw = sh.cfg.faults.raw.len();
        let session = default_session(&sh);
        Engine {
            sh,
            out,
            started: Instant::now(),
            session,
            updates: 0,
            spoke: false,
            uncommitted: 0,
            assistant_items: HashSet::new(),
            offset: 0,
            frame: Vec::with_capacity(160),
            speaking: false,
            loud_ms: 0,
            quiet_ms: 0,
            speech_start: 0,
            user_item: None,
            items: HashMap::new(),
            last_item: None,
            active: None,
            fired: vec![false; n],
            fired_raw: vec![false; n_raw],
            closed_fault: false,
            malformed_done: false,
            expired_done: false,
        }
    }

    fn send(&self, v: Value) {
        let _ = self.out.send(Message::text(v.to_string()));
    }

    fn error(&self, code: &str, message: String, event_id: Option<String>) {
        self.error_param(code, message, None, event_id);
    }

    /// An `error` event in production's shape (type, code, message, param, event_id).
    fn error_param(
        &self,
        code: &str,
        message: String,
        param: Option<String>,
        event_id: Option<String>,
    ) {
        self.sh.rec().errors_sent.push(code.to_owned());
        self.send(json!({"type":"error","event_id": self.sh.id("event"),
            "error":{"type":"invalid_request_error","code":code,"message":message,"param":param,"event_id":event_id}}));
    }

    fn violation(&self, what: String) {
        log::warn!(target: LOG, "fake model: protocol violation: {what}");
        self.sh.rec().violations.push(what.clone());
        self.error("invalid_request_error", what, None);
    }

    fn format(&self, dir: &str) -> String {
        self.session["audio"][dir]["format"]["type"]
            .as_str()
            .unwrap_or("audio/pcm")
            .to_owned()
    }

    /// Why production would refuse this `session.update`, as (code, message, param).
    fn refuse_update(&self, v: &Value) -> Option<(&'static str, String, Option<String>)> {
        let voice = &v["audio"]["output"]["voice"];
        if !voice.is_null() {
            let known = voice.as_str().is_some_and(|n| VOICES.contains(&n))
                || voice["id"].as_str().is_some_and(|id| !id.is_empty());
            if !known {
                let list: Vec<String> = VOICES.iter().map(|v| format!("'{v}'")).collect();
                return Some((
                    "invalid_value",
                    format!(
                        "Invalid value: {voice}. Supported values are: {}.",
                        list.join(", ")
                    ),
                    Some("session.audio.output.voice".into()),
                ));
            }
            if self.spoke && *voice != self.session["audio"]["output"]["voice"] {
                // Seen from the live API (openai/openai-agents-python#1661): param null.
                return Some((
                    "cannot_update_voice",
                    "Cannot update a conversation's voice if assistant audio is present.".into(),
                    None,
                ));
            }
        }
        for dir in ["input", "output"] {
            let f = &v["audio"][dir]["format"];
            if f.is_null() {
                continue;
            }
            let ok = match f["type"].as_str() {
                Some("audio/pcmu") | Some("audio/pcma") => true,
                Some("audio/pcm") => f["rate"].is_null() || f["rate"] == 24000,
                _ => false,
            };
            if !ok {
                return Some((
                    "invalid_value",
                    format!("Invalid audio format: {f}."),
                    Some(format!("session.audio.{dir}.format")),
                ));
            }
        }
        if let Some(tools) = v["tools"].as_array() {
            for (i, t) in tools.iter().enumerate() {
                let name = t["name"].as_str().unwrap_or("");
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !valid {
                    return Some((
                        "invalid_value",
                        format!(
                            "Invalid 'session.tools[{i}].name': string does not match pattern. \
                             Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
                        ),
                        Some(format!("session.tools[{i}].name")),
                    ));
                }
            }
        }
        None
    }

    fn turn_cfg(&self) -> &Value {
        &self.session["audio"]["input"]["turn_detection"]
    }

    fn vad_on(&self) -> bool {
        // server VAD is the default (the session starts with it) until an update sets null
        self.turn_cfg().is_object()
    }

    fn flag(&self, name: &str) -> bool {
        self.turn_cfg()
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.active
            .as_ref()
            .and_then(|a| a.queue.front().map(|q| q.0))
    }

    /// A client event arrived now: recorded (when events are kept).
    fn record_arrival(&self, text: &str) {
        if self.sh.cfg.keep_events {
            self.sh.rec().events.push((Instant::now(), text.to_owned()));
        }
    }

    fn on_client(&mut self, text: &str) {
        self.record_arrival(text);
        self.act(text);
    }

    /// Acts on a client event (after [`Faults::round_trip`]).
    fn act(&mut self, text: &str) {
        let ev = match ClientEvent::parse(text) {
            Ok(ev) => ev,
            Err(e) => return self.violation(format!("unparseable client event: {e}")),
        };
        match ev {
            ClientEvent::SessionUpdate { session, event_id } => {
                // The raw JSON, not our typed view of it: fields the bridge left out stay as
                // they are on the server.
                let raw: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                let v = raw["session"].clone();
                let v = if v.is_object() {
                    v
                } else {
                    serde_json::to_value(&session).unwrap_or(Value::Null)
                };
                if self.sh.cfg.keep_events {
                    self.sh.rec().session_updates.push(v.clone());
                }
                self.updates += 1;
                if let Some((code, message, param)) = self.refuse_update(&v) {
                    // A refused update leaves the previous configuration (DESIGN.md §7).
                    self.error_param(code, message, param, event_id);
                } else {
                    merge(&mut self.session, v);
                    let (fmt_in, fmt_out) = (self.format("input"), self.format("output"));
                    if fmt_in != "audio/pcmu" || fmt_out != "audio/pcmu" {
                        self.sh.rec().violations.push(format!(
                            "the session is not audio/pcmu both ways after an update: {fmt_in} / {fmt_out}"
                        ));
                    }
                    self.send(json!({"type":"session.updated","event_id": self.sh.id("event"),"session": self.session}));
                }
            }
            ClientEvent::InputAudioBufferAppend { audio, .. } => {
                match base64::engine::general_purpose::STANDARD.decode(audio.as_bytes()) {
                    Ok(bytes) => self.on_audio(&bytes),
                    Err(_) => self.error("invalid_value", "audio is not valid base64".into(), None),
                }
            }
            ClientEvent::InputAudioBufferCommit { event_id } => {
                if self.uncommitted < 100 * 8 {
                    let ms = self.uncommitted as f64 / 8.0;
                    self.error(
                        "input_audio_buffer_commit_empty",
                        format!("Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only has {ms:.2}ms of audio."),
                        event_id,
                    );
                } else {
                    let id = self.sh.id("item");
                    self.commit(id);
                }
            }
            ClientEvent::InputAudioBufferClear { .. } => {
                self.uncommitted = 0;
                self.send(
                    json!({"type":"input_audio_buffer.cleared","event_id": self.sh.id("event")}),
                )
            }
            ClientEvent::ConversationItemCreate { item, .. } => self.item_create(item),
            ClientEvent::ConversationItemTruncate {
                item_id,
                content_index,
                audio_end_ms,
                event_id,
            } => self.truncate(item_id, content_index, audio_end_ms, event_id),
            ClientEvent::ConversationItemDelete { item_id, .. } => {
                if self.items.remove(&item_id).is_some() {
                    self.send(json!({"type":"conversation.item.deleted","event_id": self.sh.id("event"),"item_id": item_id}));
                } else {
                    self.error("item_not_found", format!("Item {item_id} not found"), None);
                }
            }
            ClientEvent::ConversationItemRetrieve { item_id, .. } => {
                if self.items.contains_key(&item_id) {
                    self.send(json!({"type":"conversation.item.retrieved","event_id": self.sh.id("event"),
                        "item":{"id":item_id,"object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[]}}));
                } else {
                    self.error("item_not_found", format!("Item {item_id} not found"), None);
                }
            }
            ClientEvent::ResponseCreate { event_id, response } => {
                let options = serde_json::to_value(&response).unwrap_or(Value::Null);
                self.sh.rec().response_requests.push(options);
                if let Some(a) = &self.active {
                    self.error(
                        "conversation_already_has_active_response",
                        format!("Conversation already has an active response in progress: {}. Wait until the response is finished before creating a new one.", a.id),
                        event_id,
                    );
                } else {
                    let r = self.next_reply();
                    self.start_response(r);
                }
            }
            // `ClientEvent::parse` never yields a raw event.
            ClientEvent::Raw { .. } => {}
            // "WebRTC/SIP Only" (spec/realtime-sip.md §5.2): this fake is a plain WebSocket
            // session, which has no output audio buffer. The server's exact error code for it
            // is not documented; the fake refuses it with an error event, never silently.
            ClientEvent::OutputAudioBufferClear { event_id } => self.error(
                "invalid_request_error",
                "output_audio_buffer.clear is only supported for WebRTC and SIP sessions".into(),
                event_id,
            ),
            ClientEvent::ResponseCancel { event_id, .. } => {
                if self.active.is_some() {
                    self.cancel();
                } else {
                    self.error(
                        "response_cancel_not_active",
                        "Cancellation failed: no active response found".into(),
                        event_id,
                    );
                }
            }
        }
    }

    fn item_create(&mut self, item: Item) {
        let id = item.id.clone().unwrap_or_else(|| self.sh.id("item"));
        match item.kind.as_str() {
            "function_call_output" => self.sh.rec().function_outputs.push((
                item.call_id.clone().unwrap_or_default(),
                item.output.clone().unwrap_or_default(),
            )),
            "message" if item.role.as_deref() == Some("user") => self
                .sh
                .rec()
                .user_texts
                .push(item.text().unwrap_or_default()),
            _ => {}
        }
        let mut v = serde_json::to_value(&item).unwrap_or(Value::Null);
        v["id"] = json!(id);
        v["object"] = json!("realtime.item");
        v["status"] = json!("completed");
        self.items.insert(id.clone(), 0);
        let prev = self.last_item.replace(id.clone());
        for ty in ["conversation.item.added", "conversation.item.done"] {
            self.send(json!({"type":ty,"event_id": self.sh.id("event"),"previous_item_id": prev,"item": v}));
        }
    }

    fn truncate(
        &mut self,
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
        event_id: Option<String>,
    ) {
        let item_ms = match self.items.get(&item_id) {
            Some(&ms) => ms,
            None => {
                self.error(
                    "item_not_found",
                    format!("Item {item_id} not found"),
                    event_id,
                );
                return;
            }
        };
        if !self.assistant_items.contains(&item_id) {
            // Truncation applies to assistant audio only (DESIGN.md §7).
            self.error_param(
                "invalid_value",
                format!(
                    "Item {item_id} is not an assistant audio message and cannot be truncated."
                ),
                Some("item_id".into()),
                event_id,
            );
            return;
        }
        let accepted = audio_end_ms <= item_ms;
        self.sh.rec().truncations.push(TruncationRecord {
            at: Instant::now(),
            item_id: item_id.clone(),
            audio_end_ms,
            item_ms,
            accepted,
        });
        if accepted {
            self.send(
                json!({"type":"conversation.item.truncated","event_id": self.sh.id("event"),
                "item_id": item_id,"content_index": content_index,"audio_end_ms": audio_end_ms}),
            );
        } else {
            self.error_param(
                "invalid_value",
                format!("Audio content of {item_ms} ms is already shorter than {audio_end_ms} ms"),
                Some("audio_end_ms".into()),
                event_id,
            );
        }
    }

    fn on_audio(&mut self, bytes: &[u8]) {
        let format = self.format("input");
        {
            let mut r = self.sh.rec();
            r.appended_bytes += bytes.len() as u64;
            let first = !r.appended_by_format.contains_key(&format);
            *r.appended_by_format.entry(format.clone()).or_default() += bytes.len() as u64;
            if format != "audio/pcmu" {
                if first {
                    r.violations.push(format!(
                        "caller audio appended while the input format is {format} (noise to the model)"
                    ));
                }
                // Not what the server expects: it hears nothing usable.
                return;
            }
            if self.sh.cfg.keep_events && r.appended_audio.len() < 10 * 60 * 8000 {
                r.appended_audio.extend_from_slice(bytes);
            }
        }
        self.uncommitted += bytes.len() as u64;
        for &b in bytes {
            self.frame.push(b);
            if self.frame.len() == 160 {
                let loud = mulaw::mean_abs(&self.frame) > self.sh.cfg.vad_threshold;
                self.frame.clear();
                self.vad_frame(loud);
            }
            self.offset += 1;
        }
    }

    fn vad_frame(&mut self, loud: bool) {
        let frame_end_ms = (self.offset + 1) / 8;
        if !self.vad_on() {
            return;
        }
        let silence = self
            .turn_cfg()
            .get("silence_duration_ms")
            .and_then(Value::as_u64)
            .unwrap_or(self.sh.cfg.silence_ms as u64);
        if !self.speaking {
            if loud {
                self.loud_ms += 20;
                if self.loud_ms >= self.sh.cfg.vad_start_ms as u64 {
                    self.speaking = true;
                    self.quiet_ms = 0;
                    self.speech_start = frame_end_ms.saturating_sub(self.loud_ms);
                    let item = self.sh.id("item");
                    self.user_item = Some(item.clone());
                    self.sh.rec().turns.push((self.speech_start, None));
                    self.send(json!({"type":"input_audio_buffer.speech_started","event_id": self.sh.id("event"),
                        "audio_start_ms": self.speech_start,"item_id": item}));
                    if self.active.is_some() && self.flag("interrupt_response") {
                        self.cancel();
                    }
                }
            } else {
                self.loud_ms = 0;
            }
        } else if loud {
            self.quiet_ms = 0;
        } else {
            self.quiet_ms += 20;
            if self.quiet_ms >= silence {
                self.speaking = false;
                self.loud_ms = 0;
                let end = frame_end_ms - self.quiet_ms;
                if let Some(t) = self.sh.rec().turns.last_mut() {
                    t.1 = Some(end);
                }
                let item = self.user_item.take().unwrap_or_else(|| self.sh.id("item"));
                self.send(json!({"type":"input_audio_buffer.speech_stopped","event_id": self.sh.id("event"),
                    "audio_end_ms": end,"item_id": item}));
                self.commit(item);
                if self.flag("create_response") && self.active.is_none() {
                    let r = self.next_reply();
                    self.start_response(r);
                }
            }
        }
    }

    fn commit(&mut self, item: String) {
        let ms = self.uncommitted / 8;
        self.uncommitted = 0;
        let prev = self.last_item.replace(item.clone());
        self.items.insert(item.clone(), 0);
        self.send(json!({"type":"input_audio_buffer.committed","event_id": self.sh.id("event"),"previous_item_id": prev,"item_id": item}));
        let it = json!({"id": item,"object":"realtime.item","type":"message","status":"completed","role":"user",
            "content":[{"type":"input_audio","transcript":null}]});
        for ty in ["conversation.item.added", "conversation.item.done"] {
            self.send(json!({"type":ty,"event_id": self.sh.id("event"),"previous_item_id": prev,"item": it}));
        }
        // Transcription runs on commit when the session enables it (the spec's
        // `input_audio_transcription.completed`); the fake hears tones, so the text is scripted.
        if self.session["audio"]["input"]["transcription"].is_object() {
            let n = self.sh.turns.fetch_add(1, Ordering::Relaxed) + 1;
            let text = self
                .sh
                .transcripts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
                .unwrap_or_else(|| format!("caller turn {n}"));
            self.sh.rec().transcribed.push((item.clone(), text.clone()));
            self.send(json!({"type":"conversation.item.input_audio_transcription.completed","event_id": self.sh.id("event"),
                "item_id": item,"content_index":0,"transcript": text,"usage":{"type":"duration","seconds": ms as f64 / 1000.0}}));
        }
    }

    fn next_reply(&self) -> Reply {
        next_reply(&self.sh.script, &self.sh.cfg.default_reply)
    }

    fn start_response(&mut self, reply: Reply) {
        let now = Instant::now();
        let rid = self.sh.id("resp");
        let iid = self.sh.id("item");
        self.sh.rec().responses += 1;
        let ev = |sh: &Shared, v: Value| {
            let mut v = v;
            v["event_id"] = json!(sh.id("event"));
            v
        };
        let sh = self.sh.clone();
        let mut q: VecDeque<(Instant, Value)> = VecDeque::new();
        q.push_back((now, ev(&sh, json!({"type":"response.created","response":{"id":rid,"object":"realtime.response","status":"in_progress","output":[]}}))));
        let prev = self.last_item.replace(iid.clone());
        let mut audio_item = None;
        match &reply {
            Reply::Audio { transcript, ms } => {
                let item = json!({"id":iid,"object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]});
                q.push_back((now, ev(&sh, json!({"type":"response.output_item.added","response_id":rid,"output_index":0,"item":item}))));
                q.push_back((now, ev(&sh, json!({"type":"conversation.item.added","previous_item_id":prev,"item":item}))));
                q.push_back((now, ev(&sh, json!({"type":"response.content_part.added","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"part":{"type":"audio","transcript":""}}))));
                let pcm_out = self.format("output") != "audio/pcmu";
                let chunk = self.sh.cfg.chunk_ms.max(20);
                let n = ms.div_ceil(chunk).max(1);
                let words: Vec<&str> = transcript.split_inclusive(' ').collect();
                let per = words.len().div_ceil(n as usize).max(1);
                let speed = self.sh.cfg.audio_speed.max(0.1);
                for i in 0..n {
                    let at = now + Duration::from_secs_f32((i * chunk) as f32 / 1000.0 / speed);
                    let len = chunk.min(ms.saturating_sub(i * chunk));
                    if len == 0 {
                        break;
                    }
                    let audio = if pcm_out {
                        pcm24k(&voice(len, i))
                    } else {
                        voice(len, i)
                    };
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&audio);
                    q.push_back((at, ev(&sh, json!({"type":"response.output_audio.delta","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"delta":b64}))));
                    let w: String = words
                        .iter()
                        .skip(i as usize * per)
                        .take(per)
                        .copied()
                        .collect();
                    if !w.is_empty() {
                        q.push_back((at, ev(&sh, json!({"type":"response.output_audio_transcript.delta","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"delta":w}))));
                    }
                }
                let end = now + Duration::from_secs_f32(*ms as f32 / 1000.0 / speed);
                let done_item = json!({"id":iid,"object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":transcript}]});
                for v in [
                    json!({"type":"response.output_audio.done","response_id":rid,"item_id":iid,"output_index":0,"content_index":0}),
                    json!({"type":"response.output_audio_transcript.done","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"transcript":transcript}),
                    json!({"type":"response.content_part.done","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"part":{"type":"audio","transcript":transcript}}),
                    json!({"type":"response.output_item.done","response_id":rid,"output_index":0,"item":done_item}),
                    json!({"type":"conversation.item.done","previous_item_id":prev,"item":done_item}),
                    json!({"type":"response.done","response":{"id":rid,"object":"realtime.response","status":"completed","output":[done_item]}}),
                ] {
                    q.push_back((end, ev(&sh, v)));
                }
                audio_item = Some((iid.clone(), 0));
                self.assistant_items.insert(iid.clone());
            }
            Reply::FunctionCall { name, arguments } => {
                let call_id = self.sh.id("call");
                let at = now + Duration::from_millis(50);
                for v in
                    function_call_events(&rid, &iid, prev.as_deref(), &call_id, name, arguments)
                {
                    q.push_back((at, ev(&sh, v)));
                }
            }
        }
        self.items.insert(iid.clone(), 0);
        self.active = Some(ActiveResponse {
            id: rid,
            format: self.format("output"),
            item_id: Some(iid),
            queue: q,
            audio_item,
        });
        self.tick();
    }

    fn cancel(&mut self) {
        let Some(a) = self.active.take() else { return };
        self.sh.rec().cancelled += 1;
        let status = json!({"type":"cancelled","reason":"turn_detected"});
        let item = a.item_id.map(|id| json!({"id":id,"object":"realtime.item","type":"message","status":"incomplete","role":"assistant","content":[]}));
        let output: Vec<Value> = item.into_iter().collect();
        self.send(json!({"type":"response.done","event_id": self.sh.id("event"),
            "response":{"id":a.id,"object":"realtime.response","status":"cancelled","status_details":status,"output":output}}));
    }

    /// Sends due events and fires due faults; false when the connection should close.
    fn tick(&mut self) -> bool {
        let now = Instant::now();
        let mut done = false;
        if let Some(a) = &mut self.active {
            while a.queue.front().is_some_and(|(t, _)| *t <= now) {
                let Some((_, v)) = a.queue.pop_front() else {
                    break;
                };
                if v["type"] == "response.output_audio.delta" {
                    let n = mulaw::base64_decoded_len(v["delta"].as_str().unwrap_or("")) as u64;
                    let format = a.format.clone();
                    // 8 bytes per ms of µ-law, 48 of 24 kHz PCM16.
                    let per_ms = if format == "audio/pcm" { 48 } else { 8 };
                    if let Some((id, bytes)) = &mut a.audio_item {
                        *bytes += n;
                        self.items.insert(id.clone(), *bytes / per_ms);
                    }
                    self.spoke = true;
                    let mut r = self.sh.rec();
                    r.audio_sent_bytes += n;
                    *r.sent_by_format.entry(format).or_default() += n;
                }
                let _ = self.out.send(Message::text(v.to_string()));
            }
            done = a.queue.is_empty();
        }
        if done {
            self.active = None;
        }
        let elapsed = now - self.started;
        let sh = self.sh.clone();
        let f = &sh.cfg.faults;
        for (i, (at, err)) in f.errors.iter().enumerate() {
            if !self.fired[i] && elapsed >= *at {
                self.fired[i] = true;
                self.send(err.clone());
            }
        }
        for (i, (at, text)) in f.raw.iter().enumerate() {
            if !self.fired_raw[i] && elapsed >= *at {
                self.fired_raw[i] = true;
                let _ = self.out.send(Message::text(text.as_str()));
            }
        }
        if !self.malformed_done && f.malformed_after.is_some_and(|t| elapsed >= t) {
            self.malformed_done = true;
            let _ = self.out.send(Message::text("{this is not json"));
        }
        if !self.expired_done && f.session_expired_after.is_some_and(|t| elapsed >= t) {
            self.expired_done = true;
            self.error(
                "session_expired",
                "Your session hit the maximum duration of 60 minutes.".into(),
                None,
            );
            return false;
        }
        if !self.closed_fault && f.close_after.is_some_and(|t| elapsed >= t) {
            self.closed_fault = true;
            return false;
        }
        true
    }
}

/// The next scripted reply (shared by all connections), or `default` once the script is used
/// up.
pub(crate) fn next_reply(script: &Mutex<VecDeque<Reply>>, default: &Reply) -> Reply {
    script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front()
        .unwrap_or_else(|| default.clone())
}

/// A response's function call as the server streams it (`event_id`s to be added): the item
/// added, its arguments, the item done, `response.done`.
pub(crate) fn function_call_events(
    rid: &str,
    iid: &str,
    prev: Option<&str>,
    call_id: &str,
    name: &str,
    arguments: &str,
) -> [Value; 7] {
    let pending = json!({"id":iid,"object":"realtime.item","type":"function_call","status":"in_progress","name":name,"call_id":call_id,"arguments":""});
    let done = json!({"id":iid,"object":"realtime.item","type":"function_call","status":"completed","name":name,"call_id":call_id,"arguments":arguments});
    [
        json!({"type":"response.output_item.added","response_id":rid,"output_index":0,"item":pending}),
        json!({"type":"conversation.item.added","previous_item_id":prev,"item":pending}),
        json!({"type":"response.function_call_arguments.delta","response_id":rid,"item_id":iid,"output_index":0,"call_id":call_id,"delta":arguments}),
        json!({"type":"response.function_call_arguments.done","response_id":rid,"item_id":iid,"output_index":0,"call_id":call_id,"name":name,"arguments":arguments}),
        json!({"type":"response.output_item.done","response_id":rid,"output_index":0,"item":done}),
        json!({"type":"conversation.item.done","previous_item_id":prev,"item":done}),
        json!({"type":"response.done","response":{"id":rid,"object":"realtime.response","status":"completed","output":[done]}}),
    ]
}

/// The built-in voices of the GA spec (`VoiceIdsShared`).
pub(crate) const VOICES: [&str; 10] = [
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
];

/// A new session as production starts it: 24 kHz PCM both ways, voice `alloy`, server VAD
/// with the spec's defaults (the silence from the fake's settings).
fn default_session(sh: &Shared) -> Value {
    json!({"type":"realtime","object":"realtime.session","id": sh.id("sess"),"model":"gpt-realtime",
        "output_modalities":["audio"],"instructions":"","tools":[],"tool_choice":"auto",
        "max_output_tokens":"inf",
        "audio":{
            "input":{"format":{"type":"audio/pcm","rate":24000},"transcription":null,"noise_reduction":null,
                "turn_detection":{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,
                    "silence_duration_ms": sh.cfg.silence_ms,"create_response":true,"interrupt_response":true,
                    "idle_timeout_ms":null}},
            "output":{"format":{"type":"audio/pcm","rate":24000},"voice":"alloy","speed":1.0}}})
}

/// µ-law at 8 kHz as little-endian PCM16 at 24 kHz (what the model sends before `audio/pcmu`).
fn pcm24k(mulaw_audio: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(mulaw_audio.len() * 6);
    for &b in mulaw_audio {
        let s = mulaw::decode(b).to_le_bytes();
        for _ in 0..3 {
            out.extend_from_slice(&s);
        }
    }
    out
}

/// Speech-like µ-law: a 200 Hz tone with a 4 Hz envelope (loud enough for a VAD).
pub fn voice(ms: u32, seed: u32) -> Vec<u8> {
    let n = ms as usize * mulaw::BYTES_PER_MS;
    let f = 180.0 + (seed % 5) as f32 * 20.0;
    (0..n)
        .map(|i| {
            let t = i as f32 / 8000.0;
            let env = 0.6 + 0.4 * (2.0 * std::f32::consts::PI * 4.0 * t).sin();
            let s = (2.0 * std::f32::consts::PI * f * t).sin() * 9000.0 * env;
            mulaw::encode(s as i16)
        })
        .collect()
}

/// Merges `from` into `into`, objects key by key (a `session.update` onto a session).
pub(crate) fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}
