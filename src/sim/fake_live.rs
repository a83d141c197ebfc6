//! A fake OpenAI GPT-Live server (`/v1/live/sessions`) on 127.0.0.1.
//!
//! Every behaviour follows the protocol brief vendored in `spec/gpt-live.md` (§ numbers are
//! the brief's); where the brief says the sources are silent, the choice is named
//! "assumption" here and in the README:
//!
//! * **Connect (§1.1, §1.2).** Only the path `/v1/live/sessions` is upgraded (anything else is
//!   a 404; a query string is refused too, "no query parameters"); with
//!   [`FakeLiveConfig::require_key`], only `Authorization: Bearer <key>` (401 otherwise).
//! * **Start (§2).** Nothing comes from the server until the client's first event,
//!   `session.start`; any other event first is a violation answered with an `error`
//!   (assumption: production's answer is unknown, §10.1). The config is **strict** (§2.1):
//!   an unknown field is refused with `unknown_parameter` naming it, `model` is required,
//!   `audio.format.rate` is required, PCM only at 16/24 kHz, the voice must be one of the
//!   SDK's built-in names (§2.2), function tools only with Responses delegation (§6.1).
//!   `session.started` carries the resolved session: id `live_…`, `expires_at`, status
//!   `active`, the format (24 kHz PCM when none was asked for, §2.2) and voice (`marin`).
//! * **Audio out (§4).** Streamed continuously, silence included, at real-time pace, in
//!   [`FakeLiveConfig::chunk_ms`] deltas (assumption: the chunk duration is unknown, §10.2),
//!   in the session's format. [`FakeLiveConfig::audio_speed`] above 1 sends speech faster
//!   than real time (not production: to test a bridge's pacing); silence never runs ahead
//!   of real time. Output transcript deltas accompany speech with `start_ms`/`end_ms` on the
//!   session timeline (§5.1).
//! * **Who speaks when (§5.2, §5.4).** The model decides: it speaks the next scripted reply
//!   when a caller turn ends (an energy VAD over the µ-law it hears;
//!   [`FakeLiveConfig::reply_delay`] later), or [`FakeLiveConfig::commentary_delay`] after a
//!   `session.commentary.append` (about 850 ms, aplisay #306), or after a delegated response
//!   is continued with `response.create`. It never speaks first unprompted. When the caller
//!   talks over it, it stops by itself [`FakeLiveConfig::stop_delay`] after the caller's
//!   speech started (assumption: the reaction time is unknown) and drops the rest of that
//!   reply; no event says so (§5.2). Caller transcripts (scripted: it hears tones, not words)
//!   come as `session.input_transcript.delta` when the turn ends.
//! * **Tools (§6.3).** A reply's function calls go through Responses delegation:
//!   `session.delegation.created`, then `response.event` envelopes (`response.created`, a
//!   `reasoning` item first as aplisay #306 saw, each completed `function_call`,
//!   `response.completed`). Outputs come as `response.item.create` (an unknown `call_id` is
//!   refused); `response.create` continues only once **every** call of the batch has its
//!   output, else it is refused (LiveKit: "the service refuses a partial batch").
//! * **Appends (§6.4).** `session.{instructions,commentary,thinking}.append` need the
//!   `delegation_id` key (nullable), at most 500 tokens (estimated at 4 characters a token;
//!   assumption) and, with Responses delegation, a null id for instructions; each is
//!   acknowledged with `*.appended` and timeline positions.
//! * **Update (§2.4).** Only `delegation` (same type) and `triggers`; `session.updated` with
//!   the resolved session.
//! * **Close and limits (§7.3, §7.6).** `session.close` is answered with
//!   `session.closed{reason:"close_requested"}`, then the socket closes. At
//!   [`FakeLiveConfig::max_session`] (about 2 h, aplisay #306) the session ends with
//!   `session.closed{reason:"expired"}`. Errors have the documented shape (§7.4).

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tungstenite::Message;

use crate::io::http::{self, HttpLimits};
use crate::io::ws::{Incoming, WsConfig, WsConn, WsSender};
use crate::proto::mulaw;
use crate::sim::fake_model::{merge, voice};

const LOG: &str = "twilio_realtime::sim";

/// The built-in voices of openai-python's `built_in_voice.py` (§2.2).
pub const VOICES: [&str; 23] = [
    "alloy", "ash", "ballad", "beacon", "bossa", "cedar", "cinder", "coral", "delta", "echo",
    "gleam", "marin", "meridian", "quartz", "ripple", "sage", "shida", "shimmer", "stone", "tempo",
    "verse", "vesper", "willow",
];

/// The fields of `session.start`'s config (§2.2).
const START_FIELDS: [&str; 9] = [
    "model",
    "instructions",
    "audio",
    "delegation",
    "input",
    "store",
    "safety_identifier",
    "triggers",
    "client",
];

/// One thing the model does when it takes a turn: say something, then (optionally) delegate
/// function calls to its Responses backend, all at once.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveReply {
    /// What it says first, and for how long.
    pub say: Option<(String, u32)>,
    /// Function calls (name, JSON arguments) delegated after speaking, in one backend response.
    pub calls: Vec<(String, String)>,
}

impl LiveReply {
    /// Speech only.
    pub fn say(text: impl Into<String>, ms: u32) -> LiveReply {
        LiveReply {
            say: Some((text.into(), ms)),
            calls: Vec::new(),
        }
    }

    /// One function call, nothing said.
    pub fn call(name: impl Into<String>, arguments: impl Into<String>) -> LiveReply {
        LiveReply {
            say: None,
            calls: vec![(name.into(), arguments.into())],
        }
    }

    /// Adds a function call to the same backend response (several run at once).
    pub fn then_call(mut self, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        self.calls.push((name.into(), arguments.into()));
        self
    }
}

/// Faults, timed from `session.started`.
#[derive(Debug, Clone, Default)]
pub struct LiveFaults {
    /// Send these `error` events at these times.
    pub errors: Vec<(Duration, Value)>,
    /// Close the socket without `session.closed` after this long.
    pub close_after: Option<Duration>,
    /// Refuse the upgrade with this HTTP status.
    pub reject_status: Option<u16>,
}

/// Settings of the fake GPT-Live server.
#[derive(Debug, Clone)]
pub struct FakeLiveConfig {
    /// Replies in order (shared by all connections); when used up, [`Self::default_reply`].
    pub script: Vec<LiveReply>,
    /// The reply once the script is used up. Default: "Okay." for 600 ms.
    pub default_reply: LiveReply,
    /// What the caller said, per turn, sent as input transcripts. When used up: `caller turn N`.
    pub caller_transcripts: Vec<String>,
    /// Speech sent this many times faster than real time (1.0 is production). Default 1.0.
    pub audio_speed: f32,
    /// Audio per delta. Default 100 ms.
    pub chunk_ms: u32,
    /// Mean |sample| above which a caller frame counts as speech. Default 800.
    pub vad_threshold: f32,
    /// Loud audio that starts a caller turn. Default 60 ms.
    pub vad_start_ms: u32,
    /// Quiet audio that ends a caller turn. Default 500 ms.
    pub silence_ms: u32,
    /// From the end of a caller turn to the model's reply. Default 300 ms.
    pub reply_delay: Duration,
    /// From a `session.commentary.append` to the model speaking. Default 850 ms.
    pub commentary_delay: Duration,
    /// From the caller starting to talk over the model to the model stopping. Default 200 ms.
    pub stop_delay: Duration,
    /// The session's lifetime (`expires_at`). Default 2 h.
    pub max_session: Duration,
    /// Require `Authorization: Bearer <key>`.
    pub require_key: Option<String>,
    /// Faults.
    pub faults: LiveFaults,
    /// Keep every client event's text in the recording (counters are always kept). Default
    /// true; turn off for long runs.
    pub keep_events: bool,
}

impl Default for FakeLiveConfig {
    fn default() -> Self {
        FakeLiveConfig {
            script: Vec::new(),
            default_reply: LiveReply::say("Okay.", 600),
            caller_transcripts: Vec::new(),
            audio_speed: 1.0,
            chunk_ms: 100,
            vad_threshold: 800.0,
            vad_start_ms: 60,
            silence_ms: 500,
            reply_delay: Duration::from_millis(300),
            commentary_delay: Duration::from_millis(850),
            stop_delay: Duration::from_millis(200),
            max_session: Duration::from_secs(2 * 3600),
            require_key: None,
            faults: LiveFaults::default(),
            keep_events: true,
        }
    }
}

/// What the fake GPT-Live server saw.
#[derive(Debug, Clone, Default)]
pub struct LiveRecording {
    /// WebSocket connections upgraded.
    pub connections: u64,
    /// Every client event's text, in order (with [`FakeLiveConfig::keep_events`]).
    pub client_events: Vec<String>,
    /// The `session.start` configs.
    pub starts: Vec<Value>,
    /// The session ids given in `session.started`, in order.
    pub session_ids: Vec<String>,
    /// Things a client did that the protocol forbids.
    pub violations: Vec<String>,
    /// `error` events sent (code, param).
    pub errors: Vec<(String, Option<String>)>,
    /// Caller audio bytes received.
    pub appended_bytes: u64,
    /// Caller audio appended before `session.started` (bytes).
    pub appended_before_start: u64,
    /// Milliseconds of audio sent (speech and silence).
    pub audio_sent_ms: u64,
    /// Milliseconds of speech sent.
    pub speech_sent_ms: u64,
    /// Function outputs received (call id, output).
    pub function_outputs: Vec<(String, String)>,
    /// `response.create`s that continued a delegation.
    pub continuations: u64,
    /// Commentary texts received.
    pub commentary: Vec<String>,
    /// Replies cut short because the caller talked over them.
    pub stopped_for_caller: u64,
    /// Caller turns heard.
    pub caller_turns: u64,
    /// `session.close`s received.
    pub close_requests: u64,
    /// Sockets the client closed.
    pub closed_by_client: u64,
}

struct Shared {
    cfg: FakeLiveConfig,
    script: Mutex<VecDeque<LiveReply>>,
    transcripts: Mutex<VecDeque<String>>,
    rec: Arc<Mutex<LiveRecording>>,
    ids: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}_{:08}", self.ids.fetch_add(1, Ordering::Relaxed))
    }
    fn rec(&self) -> std::sync::MutexGuard<'_, LiveRecording> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The fake server; see the module docs.
///
/// ```
/// use twilio_realtime::sim::fake_live::{FakeLive, FakeLiveConfig, LiveReply};
///
/// let live = FakeLive::start(FakeLiveConfig {
///     script: vec![LiveReply::say("Hello!", 400)],
///     ..Default::default()
/// })?;
/// assert!(live.url().ends_with("/v1/live/sessions"));
/// assert_eq!(live.recording().connections, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct FakeLive {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLive")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeLive {
    /// Starts listening on 127.0.0.1 (a free port).
    pub fn start(cfg: FakeLiveConfig) -> std::io::Result<FakeLive> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(cfg.script.iter().cloned().collect()),
            transcripts: Mutex::new(cfg.caller_transcripts.iter().cloned().collect()),
            cfg,
            rec: Arc::new(Mutex::new(LiveRecording::default())),
            ids: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
        let accept = crate::sim::spawn_accept_loop(
            "fake-live",
            listener,
            shared.clone(),
            Shared::stopped,
            |sh, conn| connection(sh.clone(), conn),
        )?;
        Ok(FakeLive {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `ws://127.0.0.1:PORT/v1/live/sessions`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/live/sessions", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of what it saw so far.
    pub fn recording(&self) -> LiveRecording {
        self.shared.rec().clone()
    }

    /// Stops accepting (live connections end with their peers).
    pub fn stop(&mut self) {
        if !self.shared.stop.swap(true, Ordering::SeqCst) {
            let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for FakeLive {
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
    if sh.stopped() {
        return;
    }
    let refuse = |tcp: &mut std::net::TcpStream, status: u16, msg: &str| {
        let body = json!({"error":{"message": msg}}).to_string();
        let _ = http::write_response(tcp, status, "application/json", &[], body.as_bytes());
    };
    if let Some(status) = sh.cfg.faults.reject_status {
        return refuse(&mut tcp, status, "rejected");
    }
    if head.target != "/v1/live/sessions" {
        // §1.1: exactly this path, no query parameters.
        return refuse(&mut tcp, 404, "not found");
    }
    if let Some(key) = &sh.cfg.require_key {
        if head.header("authorization") != Some(&format!("Bearer {key}")) {
            return refuse(&mut tcp, 401, "invalid api key");
        }
    }
    let conn = match WsConn::accept_head(
        tungstenite::stream::MaybeTlsStream::Plain(tcp),
        &head,
        leftover,
        &WsConfig::default(),
    ) {
        Ok(c) => c,
        Err(e) => {
            log::warn!(target: LOG, "fake live upgrade failed: {e}");
            return;
        }
    };
    let Ok((duplex, rx)) = conn.spawn_channel("fl") else {
        return;
    };
    sh.rec().connections += 1;
    let mut e = Engine::new(sh.clone(), duplex.sender());
    loop {
        let timeout = e
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(200));
        match rx.recv_timeout(timeout) {
            Ok(Incoming::Text(t)) => e.on_client(t.as_str()),
            Ok(Incoming::Binary(_)) => e.violation("binary frame (§1.3: text frames only)".into()),
            Ok(Incoming::Closed(_)) | Ok(Incoming::Error(_)) => {
                sh.rec().closed_by_client += 1;
                break;
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        if !e.tick(Instant::now()) || sh.stopped() {
            duplex.close();
            break;
        }
    }
    drop(rx);
    duplex.join();
}

/// A reply being spoken.
struct Utterance {
    audio: Vec<u8>,
    sent: usize,
    words: Vec<String>,
    words_sent: usize,
    /// When speech started, and the timeline position then.
    began: Instant,
    began_ms: u64,
    calls: Vec<(String, String)>,
    /// The caller started talking over it at this moment.
    talked_over: Option<Instant>,
}

struct Engine {
    sh: Arc<Shared>,
    out: WsSender,
    /// `session.started` was sent, at this moment (the timeline's origin).
    started: Option<Instant>,
    session: Value,
    format: Value,
    /// Audio sent, in ms of the session timeline.
    out_ms: u64,
    speaking: Option<Utterance>,
    next_reply: Option<(Instant, LiveReply)>,
    /// Calls of the current batch waiting for outputs (call id, answered).
    batch: Vec<(String, bool)>,
    batch_delegation: Option<String>,
    // caller VAD
    frame: Vec<u8>,
    caller_speaking: bool,
    loud_ms: u32,
    quiet_ms: u32,
    caller_ms: u64,
    fired: Vec<bool>,
    closing: bool,
}

impl Engine {
    fn new(sh: Arc<Shared>, out: WsSender) -> Engine {
        let n = sh.cfg.faults.errors.len();
        Engine {
            sh,
            out,
            started: None,
            session: Value::Null,
            format: Value::Null,
            out_ms: 0,
            speaking: None,
            next_reply: None,
            batch: Vec::new(),
            batch_delegation: None,
            frame: Vec::with_capacity(160),
            caller_speaking: false,
            loud_ms: 0,
            quiet_ms: 0,
            caller_ms: 0,
            fired: vec![false; n],
            closing: false,
        }
    }

    fn send(&self, v: Value) {
        let _ = self.out.send(Message::text(v.to_string()));
    }

    fn event(&self, ty: &str, client_event_id: Option<&str>, mut fields: Value) {
        if let Value::Object(m) = &mut fields {
            m.insert("type".into(), json!(ty));
            m.insert("event_id".into(), json!(self.sh.id("event")));
            if let Some(id) = client_event_id {
                m.insert("client_event_id".into(), json!(id));
            }
        }
        self.send(fields);
    }

    /// An `error` event (§7.4).
    fn error(
        &self,
        code: &str,
        message: String,
        param: Option<&str>,
        client_event_id: Option<&str>,
    ) {
        let mut err = json!({"type":"invalid_request_error","code": code,"message": message});
        if let Some(p) = param {
            err["param"] = json!(p);
        }
        if let Some(id) = client_event_id {
            err["client_event_id"] = json!(id);
        }
        self.sh
            .rec()
            .errors
            .push((code.to_owned(), param.map(str::to_owned)));
        self.event("error", client_event_id, json!({"error": err}));
    }

    /// Answers `problem` with an `error` event, as `error` does.
    fn problem(&self, (code, param, message): Problem, client_event_id: Option<&str>) {
        self.error(code, message, Some(&param), client_event_id)
    }

    /// A client event production refuses that a correct bridge never sends: recorded as a
    /// violation, and answered with production's error.
    fn refuse(
        &self,
        what: String,
        code: &str,
        message: String,
        param: Option<&str>,
        client_event_id: Option<&str>,
    ) {
        self.violation(what);
        self.error(code, message, param, client_event_id);
    }

    fn violation(&self, what: String) {
        log::warn!(target: LOG, "fake live: {what}");
        self.sh.rec().violations.push(what);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let started = self.started?;
        let chunk = Duration::from_millis(self.sh.cfg.chunk_ms.max(1) as u64);
        // The next chunk is due when real time (or the speech pace) reaches its end.
        let mut due = started + Duration::from_millis(self.out_ms) + chunk;
        if let Some(u) = &self.speaking {
            let speed = self.sh.cfg.audio_speed.max(0.01);
            let spoken = Duration::from_millis(self.out_ms.saturating_sub(u.began_ms)) + chunk;
            due = due.min(u.began + spoken.div_f32(speed));
            if let Some(t) = u.talked_over {
                due = due.min(t + self.sh.cfg.stop_delay);
            }
        }
        let reply = self.next_reply.as_ref().map(|(t, _)| *t);
        [Some(due), reply].into_iter().flatten().min()
    }

    fn on_client(&mut self, text: &str) {
        if self.sh.cfg.keep_events {
            self.sh.rec().client_events.push(text.to_owned());
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return self.refuse(
                    "a client event that is not a JSON object".into(),
                    "invalid_json",
                    "The event is not a JSON object.".into(),
                    None,
                    None,
                );
            }
        };
        let ty = v["type"].as_str().unwrap_or("").to_owned();
        let id = v["event_id"].as_str().map(str::to_owned);
        let id = id.as_deref();
        if self.started.is_none() && ty != "session.start" {
            if ty == "session.input_audio.append" {
                let n = v["audio"].as_str().map_or(0, mulaw::base64_decoded_len);
                self.sh.rec().appended_before_start += n as u64;
            }
            return self.refuse(
                format!("{ty} before session.started (§2)"),
                "session_not_started",
                "Send session.start and wait for session.started first.".into(),
                None,
                id,
            );
        }
        match ty.as_str() {
            "session.start" => self.on_start(&v, id),
            "session.input_audio.append" => self.on_audio(&v),
            "session.commentary.append"
            | "session.thinking.append"
            | "session.instructions.append" => self.on_append(&ty, &v, id),
            "session.update" => self.on_update(&v, id),
            "response.item.create" => self.on_item(&v, id),
            "response.create" => self.on_response_create(id),
            "session.input_audio.mute" => self.event("session.input_audio.muted", id, json!({})),
            "session.input_audio.unmute" => {
                self.event("session.input_audio.unmuted", id, json!({}))
            }
            "session.close" => {
                self.sh.rec().close_requests += 1;
                self.close("close_requested", id);
            }
            other => {
                self.violation(format!("unknown client event {other}"));
                self.error(
                    "invalid_event",
                    format!("Unknown event type '{other}'."),
                    Some("type"),
                    id,
                )
            }
        }
    }

    fn on_start(&mut self, v: &Value, id: Option<&str>) {
        if self.started.is_some() {
            return self.refuse(
                "a second session.start".into(),
                "session_already_started",
                "The session has started already.".into(),
                None,
                id,
            );
        }
        let Some(cfg) = v["session"].as_object() else {
            return self.problem(missing_parameter("session"), id);
        };
        if let Some(bad) = cfg.keys().find(|k| !START_FIELDS.contains(&k.as_str())) {
            return self.error(
                "unknown_parameter",
                format!("Unknown parameter: 'session.{bad}'."),
                Some(&format!("session.{bad}")),
                id,
            );
        }
        if let Err(problem) = check_start(cfg) {
            return self.problem(problem, id);
        }
        self.sh.rec().starts.push(Value::Object(cfg.clone()));
        let format = cfg
            .get("audio")
            .and_then(|a| a.get("format"))
            .cloned()
            .unwrap_or(json!({"type":"audio/pcm","rate":24000}));
        let voice = cfg
            .get("audio")
            .and_then(|a| a.pointer("/output/voice"))
            .cloned()
            .unwrap_or(json!("marin"));
        let now = Instant::now();
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + self.sh.cfg.max_session.as_secs();
        let mut session = Map::new();
        let session_id = self.sh.id("live");
        self.sh.rec().session_ids.push(session_id.clone());
        session.insert("id".into(), json!(session_id));
        session.insert("expires_at".into(), json!(expires));
        session.insert("status".into(), json!("active"));
        session.insert(
            "audio".into(),
            json!({"format": format, "output": {"voice": voice}}),
        );
        session.insert("store".into(), json!(false));
        for (k, val) in cfg {
            if k != "audio" {
                session.insert(k.clone(), val.clone());
            }
        }
        self.session = Value::Object(session);
        self.format = format;
        self.started = Some(now);
        self.event("session.started", id, json!({"session": self.session}));
    }

    fn pcmu(&self) -> bool {
        self.format["type"] == "audio/pcmu"
    }

    fn on_audio(&mut self, v: &Value) {
        let Some(b64) = v["audio"].as_str() else {
            return self.problem(missing_parameter("audio"), None);
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return self.error(
                "invalid_value",
                "Invalid base64 audio.".into(),
                Some("audio"),
                None,
            );
        };
        self.sh.rec().appended_bytes += bytes.len() as u64;
        if !self.pcmu() {
            return; // noise to a VAD built for µ-law
        }
        let now = Instant::now();
        for b in bytes {
            self.frame.push(b);
            if self.frame.len() == 160 {
                let loud = mulaw::mean_abs(&self.frame) > self.sh.cfg.vad_threshold;
                self.frame.clear();
                self.caller_frame(now, loud);
            }
        }
    }

    fn caller_frame(&mut self, now: Instant, loud: bool) {
        self.caller_ms += 20;
        if !self.caller_speaking {
            if loud {
                self.loud_ms += 20;
                if self.loud_ms >= self.sh.cfg.vad_start_ms {
                    self.caller_speaking = true;
                    self.quiet_ms = 0;
                    // Full duplex: it listens while it speaks, and stops by itself (§5.2).
                    if let Some(u) = &mut self.speaking {
                        u.talked_over.get_or_insert(now);
                    }
                    self.next_reply = None;
                }
            } else {
                self.loud_ms = 0;
            }
            return;
        }
        if loud {
            self.quiet_ms = 0;
            return;
        }
        self.quiet_ms += 20;
        if self.quiet_ms < self.sh.cfg.silence_ms {
            return;
        }
        self.caller_speaking = false;
        self.loud_ms = 0;
        let n = {
            let mut r = self.sh.rec();
            r.caller_turns += 1;
            r.caller_turns
        };
        let text = self
            .sh
            .transcripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or_else(|| format!("caller turn {n}"));
        let end = self.caller_ms.saturating_sub(self.quiet_ms as u64);
        self.event(
            "session.input_transcript.delta",
            None,
            json!({"delta": format!(" {text}"), "start_ms": end.saturating_sub(400), "end_ms": end}),
        );
        if self.batch.is_empty() {
            let reply = self.take_reply();
            self.next_reply = Some((now + self.sh.cfg.reply_delay, reply));
        }
    }

    fn take_reply(&self) -> LiveReply {
        self.sh
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or_else(|| self.sh.cfg.default_reply.clone())
    }

    fn delegation_kind(&self) -> &str {
        self.session["delegation"]["type"]
            .as_str()
            .unwrap_or("client")
    }

    fn on_append(&mut self, ty: &str, v: &Value, id: Option<&str>) {
        let Some(obj) = v.as_object() else { return };
        if !obj.contains_key("delegation_id") {
            // Required, nullable (§6.4).
            return self.problem(missing_parameter("delegation_id"), id);
        }
        let content = v["content"].as_str().unwrap_or("");
        if content.chars().count() > 500 * 4 {
            return self.error(
                "string_above_max_length",
                "The content exceeds 500 tokens.".into(),
                Some("content"),
                id,
            );
        }
        if ty == "session.instructions.append"
            && !v["delegation_id"].is_null()
            && self.delegation_kind() == "responses"
        {
            return self.error(
                "invalid_value",
                "A delegation_id is not accepted with Responses delegation.".into(),
                Some("delegation_id"),
                id,
            );
        }
        let at = self.out_ms;
        self.event(
            &format!("{ty}ed"),
            id,
            json!({"start_ms": at, "end_ms": at}),
        );
        if ty == "session.commentary.append" {
            self.sh.rec().commentary.push(content.to_owned());
            if self.speaking.is_none() && self.next_reply.is_none() {
                let reply = self.take_reply();
                self.next_reply = Some((Instant::now() + self.sh.cfg.commentary_delay, reply));
            }
        }
    }

    fn on_update(&mut self, v: &Value, id: Option<&str>) {
        let Some(cfg) = v["session"].as_object() else {
            return self.problem(missing_parameter("session"), id);
        };
        if let Some(bad) = cfg.keys().find(|k| *k != "delegation" && *k != "triggers") {
            // Everything else is immutable after start (§2.4).
            return self.error(
                "unknown_parameter",
                format!("Unknown parameter: 'session.{bad}'."),
                Some(&format!("session.{bad}")),
                id,
            );
        }
        if let Some(d) = cfg.get("delegation") {
            if d["type"].as_str() != Some(self.delegation_kind()) {
                return self.error(
                    "invalid_value",
                    "The delegation type cannot change.".into(),
                    Some("session.delegation.type"),
                    id,
                );
            }
            if let Some(r) = d.get("responses") {
                merge(&mut self.session["delegation"]["responses"], r.clone());
            }
        }
        if let Some(t) = cfg.get("triggers") {
            self.session["triggers"] = t.clone();
        }
        self.event("session.updated", id, json!({"session": self.session}));
    }

    fn on_item(&mut self, v: &Value, id: Option<&str>) {
        let item = &v["item"];
        if item["type"] != "function_call_output" {
            return;
        }
        let call_id = item["call_id"].as_str().unwrap_or("");
        let Some(slot) = self.batch.iter_mut().find(|(c, _)| c == call_id) else {
            return self.error(
                "invalid_value",
                format!("No function call with call_id '{call_id}' is waiting."),
                Some("item.call_id"),
                id,
            );
        };
        slot.1 = true;
        let output = item["output"].as_str().unwrap_or("").to_owned();
        self.sh
            .rec()
            .function_outputs
            .push((call_id.to_owned(), output));
    }

    fn on_response_create(&mut self, id: Option<&str>) {
        if self.batch.is_empty() {
            // The app asks the backend for a response itself: its events carry no delegation.
            let rid = self.sh.id("resp");
            for ty in ["response.created", "response.completed"] {
                self.event("response.event", id, json!({"delegation_id": null,
                    "event": {"type": ty, "response": {"id": rid, "status": "completed", "output": []}}}));
            }
            return;
        }
        if self.batch.iter().any(|(_, done)| !done) {
            return self.error(
                "invalid_request_error",
                "Every function call needs an output before response.create.".into(),
                None,
                id,
            );
        }
        self.batch.clear();
        self.batch_delegation = None;
        self.sh.rec().continuations += 1;
        // The voice model speaks the backend's result in its own words (§6.3).
        let reply = self.take_reply();
        self.next_reply = Some((Instant::now() + self.sh.cfg.reply_delay, reply));
    }

    fn close(&mut self, reason: &str, id: Option<&str>) {
        if self.closing {
            return;
        }
        self.closing = true;
        let seconds = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        self.event(
            "session.closed",
            id,
            json!({"reason": reason, "session": self.session,
            "usage": {"seconds": seconds}}),
        );
    }

    /// Starts a reply: speech (if any), then the delegation when it has been said.
    fn begin(&mut self, now: Instant, reply: LiveReply) {
        match reply.say {
            Some((text, ms)) => {
                let audio = if self.pcmu() {
                    voice(ms, self.out_ms as u32)
                } else {
                    // Another format: its bytes, as long as µ-law would be (a bridge that
                    // forwards it plays noise).
                    vec![0x55; ms as usize * mulaw::BYTES_PER_MS]
                };
                self.speaking = Some(Utterance {
                    audio,
                    sent: 0,
                    words: text.split_whitespace().map(str::to_owned).collect(),
                    words_sent: 0,
                    began: now,
                    began_ms: self.out_ms,
                    calls: reply.calls,
                    talked_over: None,
                });
            }
            None => self.delegate(reply.calls),
        }
    }

    /// Delegates function calls to the Responses backend (§6.3).
    fn delegate(&mut self, calls: Vec<(String, String)>) {
        if calls.is_empty() {
            return;
        }
        let dlg = self.sh.id("dlg");
        let rid = self.sh.id("resp");
        self.event("session.delegation.created", None, json!({"offset_ms": self.out_ms,
            "delegation": {"id": dlg, "target": "responses", "type": "delegation", "response_id": rid}}));
        let wrap = |e: &Engine, ev: Value| {
            e.event(
                "response.event",
                None,
                json!({"delegation_id": dlg, "event": ev}),
            );
        };
        wrap(
            self,
            json!({"type":"response.created","response":{"id": rid,"status":"in_progress","output":[]}}),
        );
        wrap(
            self,
            json!({"type":"response.output_item.done","output_index":0,
            "item":{"type":"reasoning","id": self.sh.id("rs"),"summary":[]}}),
        );
        self.batch.clear();
        for (i, (name, args)) in calls.into_iter().enumerate() {
            let call_id = self.sh.id("call");
            wrap(
                self,
                json!({"type":"response.output_item.done","output_index": i + 1,
                "item":{"type":"function_call","id": self.sh.id("fc"),"call_id": call_id,
                    "name": name,"arguments": args,"status":"completed"}}),
            );
            self.batch.push((call_id, false));
        }
        // The lifecycle snapshot's output is empty (§6.3).
        wrap(
            self,
            json!({"type":"response.completed","response":{"id": rid,"status":"completed","output":[],
            "usage":{"input_tokens":10,"output_tokens":5}}}),
        );
        self.batch_delegation = Some(dlg);
    }

    /// Sends what is due; false when the connection should close.
    fn tick(&mut self, now: Instant) -> bool {
        let Some(started) = self.started else {
            return true;
        };
        if self.closing {
            return false;
        }
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= self.sh.cfg.max_session {
            self.close("expired", None);
            return false;
        }
        let f = &self.sh.cfg.faults;
        if f.close_after.is_some_and(|t| elapsed >= t) {
            return false;
        }
        for i in 0..self.fired.len() {
            let (at, err) = &self.sh.cfg.faults.errors[i];
            if !self.fired[i] && elapsed >= *at {
                self.fired[i] = true;
                self.send(err.clone());
            }
        }
        if self.next_reply.as_ref().is_some_and(|(t, _)| *t <= now) && self.speaking.is_none() {
            if let Some((_, reply)) = self.next_reply.take() {
                self.begin(now, reply);
            }
        }
        // Stop for the caller (the rest of the reply is never said).
        if let Some(u) = &self.speaking {
            if u.talked_over
                .is_some_and(|t| now >= t + self.sh.cfg.stop_delay)
            {
                self.sh.rec().stopped_for_caller += 1;
                self.speaking = None;
            }
        }
        self.stream(now, started);
        true
    }

    /// Streams audio: speech at its pace, silence at real time (§4).
    fn stream(&mut self, now: Instant, started: Instant) {
        let chunk = self.sh.cfg.chunk_ms.max(1) as u64;
        let real_ms = now.saturating_duration_since(started).as_millis() as u64;
        loop {
            let allowed = match &self.speaking {
                Some(u) => {
                    let speed = self.sh.cfg.audio_speed.max(0.01) as f64;
                    let paced = u.began_ms
                        + (now.saturating_duration_since(u.began).as_secs_f64() * 1000.0 * speed)
                            as u64;
                    paced.max(real_ms)
                }
                None => real_ms,
            };
            if self.out_ms + chunk > allowed {
                break;
            }
            let n = chunk as usize * mulaw::BYTES_PER_MS;
            let (bytes, speech) = match &mut self.speaking {
                Some(u) => {
                    let end = (u.sent + n).min(u.audio.len());
                    let mut b = u.audio[u.sent..end].to_vec();
                    u.sent = end;
                    b.resize(n, 0xFF);
                    (b, true)
                }
                None => (vec![0xFF; n], false),
            };
            let bytes = if self.pcmu() { bytes } else { bytes.repeat(6) };
            let delta = base64::engine::general_purpose::STANDARD.encode(&bytes);
            self.send(json!({"type":"session.output_audio.delta","delta": delta}));
            let start = self.out_ms;
            self.out_ms += chunk;
            {
                let mut r = self.sh.rec();
                r.audio_sent_ms += chunk;
                if speech {
                    r.speech_sent_ms += chunk;
                }
            }
            if speech {
                self.transcribe(start);
            }
        }
    }

    /// Output transcript words in proportion to the speech sent; at the end of the speech,
    /// the reply's delegation.
    fn transcribe(&mut self, start: u64) {
        let Some(u) = &mut self.speaking else { return };
        let want = if u.sent >= u.audio.len() {
            u.words.len()
        } else {
            u.words.len() * u.sent / u.audio.len().max(1)
        };
        if want > u.words_sent {
            let delta: String = u.words[u.words_sent..want]
                .iter()
                .map(|w| format!(" {w}"))
                .collect();
            u.words_sent = want;
            let end = self.out_ms;
            self.event(
                "session.output_transcript.delta",
                None,
                json!({"delta": delta, "start_ms": start, "end_ms": end}),
            );
        }
        let Some(u) = &self.speaking else { return };
        if u.sent >= u.audio.len() {
            let calls = self.speaking.take().map(|u| u.calls).unwrap_or_default();
            self.delegate(calls);
        }
    }
}

/// What is wrong with a client event: the `code`, `param` and `message` of the `error`
/// event's `error` object (§7.4).
type Problem = (&'static str, String, String);

/// The problem of a required field the event lacks, `param` its path: code
/// `missing_required_parameter`, message "Missing required parameter: '…'." The brief lists
/// no error codes (§7.4 "no list of error codes is published"); assumption: GPT-Live words
/// it as OpenAI's other APIs do, as it does `unknown_parameter` (the SDK's example, §7.4).
/// The fields it is used for are required per the event table (§9.1: `session`, `audio`,
/// `delegation_id` "required, nullable"), §2.2 (`model`, `audio.format.rate`) and §6
/// (`responses.model`).
fn missing_parameter(param: &str) -> Problem {
    (
        "missing_required_parameter",
        param.to_owned(),
        format!("Missing required parameter: '{param}'."),
    )
}

/// Checks a `session.start` config (§2.2): the first problem.
fn check_start(cfg: &Map<String, Value>) -> Result<(), Problem> {
    let bad = |code, param: &str, msg: &str| Err((code, param.to_owned(), msg.to_owned()));
    if !cfg.get("model").is_some_and(Value::is_string) {
        return Err(missing_parameter("session.model"));
    }
    if let Some(audio) = cfg.get("audio") {
        if let Some(f) = audio.get("format") {
            let rate = f.get("rate").and_then(Value::as_u64);
            match (f["type"].as_str(), rate) {
                (_, None) => return Err(missing_parameter("session.audio.format.rate")),
                (Some("audio/pcm"), Some(16000 | 24000))
                | (Some("audio/pcmu" | "audio/pcma"), Some(_)) => {}
                _ => {
                    return bad(
                        "invalid_value",
                        "session.audio.format",
                        "Unsupported audio format.",
                    )
                }
            }
        }
        if let Some(v) = audio.pointer("/output/voice") {
            let ok = match v {
                Value::String(s) => VOICES.contains(&s.as_str()),
                Value::Object(o) => o.get("id").is_some_and(Value::is_string),
                _ => false,
            };
            if !ok {
                // aplisay #306: unknown voices are refused with `forbidden`.
                return bad(
                    "forbidden",
                    "session.audio.output.voice",
                    "This voice is not available.",
                );
            }
        }
    }
    if let Some(d) = cfg.get("delegation").filter(|d| !d.is_null()) {
        match d["type"].as_str() {
            Some("client") if d.get("responses").is_some() => {
                return bad(
                    "unknown_parameter",
                    "session.delegation.responses",
                    "Client delegation has no tools.",
                );
            }
            Some("client") => {}
            Some("responses") => {
                if !d.pointer("/responses/model").is_some_and(Value::is_string) {
                    return Err(missing_parameter("session.delegation.responses.model"));
                }
                let tools = d.pointer("/responses/tools").and_then(Value::as_array);
                for t in tools.into_iter().flatten() {
                    let name = t["name"].as_str().unwrap_or("");
                    let valid = !name.is_empty()
                        && name.len() <= 64
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if !valid {
                        return bad(
                            "invalid_value",
                            "session.delegation.responses.tools",
                            "Invalid function name.",
                        );
                    }
                }
            }
            _ => {
                return bad(
                    "invalid_value",
                    "session.delegation.type",
                    "Unknown delegation type.",
                )
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(v: Value) -> Result<(), Problem> {
        check_start(v.as_object().expect("an object"))
    }

    #[test]
    fn a_start_without_a_required_field_is_refused_naming_its_path() {
        let missing = |p: &str| {
            Err((
                "missing_required_parameter",
                p.to_owned(),
                format!("Missing required parameter: '{p}'."),
            ))
        };
        assert_eq!(start(json!({})), missing("session.model"));
        assert_eq!(
            start(json!({"model":"gpt-live-1","audio":{"format":{"type":"audio/pcmu"}}})),
            missing("session.audio.format.rate")
        );
        assert_eq!(
            start(json!({"model":"gpt-live-1","delegation":{"type":"responses","responses":{}}})),
            missing("session.delegation.responses.model")
        );
        assert_eq!(
            start(
                json!({"model":"gpt-live-1","audio":{"format":{"type":"audio/pcmu","rate":8000}}})
            ),
            Ok(())
        );
    }
}
