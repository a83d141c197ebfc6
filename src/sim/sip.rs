//! A fake of OpenAI's SIP control plane (Realtime over SIP), on 127.0.0.1: it rings the
//! application with signed `realtime.call.incoming` webhooks and serves the call-control REST
//! API, `POST /v1/realtime/calls/{call_id}/accept|reject|refer|hangup`. Every behaviour below
//! cites the vendored brief `spec/realtime-sip.md` (§ numbers):
//!
//! * **Webhooks** (§3.1, §3.2): `POST` to the application's webhook URL with
//!   `content-type: application/json`, OpenAI's `user-agent`, `webhook-id` (`wh_…`),
//!   `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,<base64>`, HMAC-SHA256
//!   with the `whsec_` secret over `id.timestamp.body`). The body is the event
//!   `{object:"event", id:"evt_…", type:"realtime.call.incoming", created_at, data:{call_id:
//!   "rtc_…", sip_headers:[From, To, Call-ID], sip_media_security:"srtp"}}`. A retry
//!   ([`FakeSip::redeliver`]) keeps the `webhook-id` and signs a new timestamp (§3.3).
//! * **Auth** (§4): every REST request needs `Authorization: Bearer <key>`; a wrong or
//!   missing key gets `401` with OpenAI's error body `{"error":{"message","type",
//!   "code":"invalid_api_key"}}` (the exact 401 body is not in the brief: UNVERIFIED).
//! * **Bodies** (§4, §4.1, the official `RealtimeSessionCreateRequestGA`,
//!   `RealtimeCallRejectRequest`, `RealtimeCallReferRequest` schemas): `accept`, `reject`
//!   and `refer` need `Content-Type: application/json` and a JSON object. `accept` needs
//!   `type:"realtime"` and only the GA session fields; server VAD's `threshold`,
//!   `prefix_padding_ms` and `silence_duration_ms` get `400 Unknown parameter:
//!   'session.audio.input.turn_detection.<field>'` (§4.1). `reject` takes only an integer
//!   `status_code` (default 603); `refer` needs a non-empty string `target_uri` and nothing
//!   else. A refused body is `400` with `type:"invalid_request_error"`.
//! * **Call states** (§4, §4.2): a call rings until accepted or rejected; `accept` and
//!   `reject` of a call that is not ringing (unknown, already accepted or rejected, or the
//!   caller hung up: [`FakeSip::caller_hangs_up`]) are `404`; `refer` and `hangup` need an
//!   accepted call (`404` otherwise; a refer on a ringing call is UNVERIFIED, the fake refuses
//!   it). Success is `200` with an empty body.
//!
//! * **The sideband** (§5): `GET /v1/realtime?call_id={call_id}` upgrades to the call's
//!   WebSocket ([`FakeSip::realtime_url`] is the endpoint to derive it from). It needs the
//!   bearer key (`401` otherwise) and an accepted call (`404` otherwise: UNVERIFIED, the brief
//!   says only to connect after accept). The session it shows is the accepted configuration
//!   over production's defaults (server VAD with `create_response` and `interrupt_response`),
//!   with no audio format (the codec is SDP's; what `session.*` shows for it is UNVERIFIED).
//!   It sends `session.created` first (documented by Azure only, brief §5.1), then simulates
//!   the call: the caller's turns ([`CallerStep`]) as the server's VAD and transcription
//!   events (`input_audio_buffer.speech_started` / `.speech_stopped` / `.committed`, the user
//!   item, `…input_audio_transcription.completed` when the session transcribes), DTMF as
//!   `input_audio_buffer.dtmf_event_received` (§5.3: no `event_id`), and the model's replies
//!   from [`FakeSipConfig::script`] on `response.create` or a committed turn
//!   (`create_response`). No audio crosses the sideband: a spoken reply is its transcript
//!   events with `output_audio_buffer.started` after `response.content_part.added` and
//!   `output_audio_buffer.stopped` after `response.done`, once the reply's audio has played
//!   (§5.3); the model generates twice as fast as it plays. Caller speech over a reply
//!   cancels it (`response.done` `cancelled`, `turn_detected`) and sends
//!   `output_audio_buffer.cleared` when `interrupt_response` is on (§5.4); `response.cancel`
//!   stops generation (the buffered audio plays on), `output_audio_buffer.clear` cuts it
//!   (`cleared`). It refuses what the brief says cannot be done on SIP with an `error` and
//!   records a violation: `input_audio_buffer.*` (audio is RTP), `conversation.item.truncate`
//!   (playback is the server's), a `session.update` with an audio format or the VAD fields
//!   `accept` refuses (the exact sideband answer is UNVERIFIED), a voice change after the
//!   agent spoke, a second `response.create` while one is active. REST `hangup` and `refer`
//!   end the simulated call: its sideband closes (a close frame); the caller hanging up
//!   ([`CallerStep::HangUp`]) drops it without one (§5.1, the Python Agents SDK). Every event sent and
//!   received is recorded ([`FakeSip::sideband`]).
//!
//! Time runs [`FakeSipConfig::speed`] times faster than on a real call (4 by default).
//!
//! Every REST request is recorded ([`FakeSip::requests`]) so that tests can check the bodies
//! against the official schemas too.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::io::http::{self, HttpLimits};
use crate::proto::sip::{sign, WebhookSecret};
use crate::sim::fake_model::Reply;

mod sideband;

const LOG: &str = "twilio_realtime::sim";

/// The GA session fields `accept` takes (`RealtimeSessionCreateRequestGA` in the vendored
/// OpenAPI schemas).
const ACCEPT_FIELDS: &[&str] = &[
    "type",
    "output_modalities",
    "model",
    "instructions",
    "audio",
    "include",
    "tracing",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "max_output_tokens",
    "truncation",
    "prompt",
];

/// Server-VAD fields the Calls API refuses on SIP (brief §4.1).
const SIP_REFUSED_VAD: &[&str] = &["threshold", "prefix_padding_ms", "silence_duration_ms"];

/// Settings of the fake.
#[derive(Debug, Clone)]
pub struct FakeSipConfig {
    /// The API key REST requests and the sideband must carry.
    pub api_key: String,
    /// The webhook endpoint's signing secret (`whsec_…`).
    pub webhook_secret: String,
    /// The model's replies, one per response, in order (shared by all calls).
    pub script: Vec<Reply>,
    /// The reply once the script is used up. Default `Reply::say("Okay.", 600)`.
    pub default_reply: Reply,
    /// What the caller does on each call once its sideband is attached. Default: nothing
    /// (the call goes on until it is hung up).
    pub caller: Vec<CallerStep>,
    /// How much faster than real time a call runs. Default 4.
    pub speed: f32,
    /// Text frames sent on the sideband exactly as given, at these (real) times after it
    /// opened: bad or unknown events.
    pub raw: Vec<(Duration, String)>,
    /// Send `session_expired` (production's 60-minute limit) this long (real time) after the
    /// sideband opened; the call then ends and the sideband closes (what production does to
    /// a SIP call then is UNVERIFIED).
    pub session_expires_after: Option<Duration>,
}

impl Default for FakeSipConfig {
    fn default() -> Self {
        FakeSipConfig {
            api_key: "sk-test".into(),
            webhook_secret: "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
            script: Vec::new(),
            default_reply: Reply::say("Okay.", 600),
            caller: Vec::new(),
            speed: 4.0,
            raw: Vec::new(),
            session_expires_after: None,
        }
    }
}

/// What the simulated caller does, in order, once the call's sideband is attached. The audio
/// itself flows over RTP at OpenAI and is not simulated: a turn is the events the server's
/// VAD and transcription send for it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallerStep {
    /// The caller speaks for `ms`: `speech_started`, then `speech_stopped`, `committed`, the
    /// user item and (when the session transcribes) its transcript `text`; with turn
    /// detection's `create_response`, the model answers.
    Say {
        /// What the transcription hears.
        text: String,
        /// How long the caller speaks.
        ms: u32,
    },
    /// The caller presses a key (`0`–`9`, `*`, `#`, `A`–`D`).
    Dtmf(String),
    /// Nothing for this long.
    Pause(u32),
    /// Until the agent has been quiet (no response under way, nothing playing) for
    /// `quiet_ms`, at most `timeout_ms`.
    WaitForAgent {
        /// How long the agent must be quiet.
        quiet_ms: u32,
        /// The longest wait.
        timeout_ms: u32,
    },
    /// The caller hangs up: the call ends and the sideband drops.
    HangUp,
}

impl CallerStep {
    /// The caller says `text` for `ms` milliseconds.
    pub fn say(text: impl Into<String>, ms: u32) -> CallerStep {
        CallerStep::Say {
            text: text.into(),
            ms,
        }
    }
}

/// What the sideband sockets saw, all calls together.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SidebandRecording {
    /// Sideband connections accepted.
    pub connections: u64,
    /// Every server event sent, as JSON text, in order (raw faults included).
    pub sent: Vec<String>,
    /// Every client event received, as JSON text, in order.
    pub received: Vec<String>,
    /// Every `session.update`'s `session`.
    pub session_updates: Vec<Value>,
    /// Every `response.create`'s `response` (`null` when it had none).
    pub response_requests: Vec<Value>,
    /// `function_call_output`s received: (call id, output).
    pub function_outputs: Vec<(String, String)>,
    /// Client events that broke a rule of the SIP sideband.
    pub violations: Vec<String>,
    /// Responses cancelled.
    pub cancelled: u64,
    /// `output_audio_buffer.clear`s that cut playing audio.
    pub cleared: u64,
}

/// Where a call stands at the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallState {
    /// Waiting for accept or reject.
    Ringing,
    /// Accepted with this session configuration.
    Accepted(Value),
    /// Rejected with this SIP status.
    Rejected(u16),
    /// Accepted, then transferred (REFER) to this URI.
    Referred(String),
    /// Ended by `hangup`.
    HungUp,
    /// The caller hung up before it was answered.
    CallerHungUp,
    /// The caller hung up an accepted call.
    CallerEnded,
    /// The model session expired ([`FakeSipConfig::session_expires_after`]).
    Expired,
}

/// One REST request the fake received.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RestRequest {
    /// `accept`, `reject`, `refer`, `hangup` (or what the path said).
    pub verb: String,
    /// The call id from the path.
    pub call_id: String,
    /// The body as JSON (`None` when empty or not JSON).
    pub body: Option<Value>,
    /// What the fake answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// A webhook the fake delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The call it announced.
    pub call_id: String,
    /// The event body as sent.
    pub body: String,
    /// The application's HTTP status (0 when the request failed).
    pub status: u16,
}

struct Shared {
    cfg: FakeSipConfig,
    secret: WebhookSecret,
    calls: Mutex<HashMap<String, CallState>>,
    requests: Mutex<Vec<RestRequest>>,
    script: Mutex<VecDeque<Reply>>,
    sideband: Mutex<SidebandRecording>,
    ids: AtomicU64,
    seq: AtomicU64,
    stop: AtomicBool,
}

/// The running fake (stops when dropped).
pub struct FakeSip {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeSip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSip").field("addr", &self.addr).finish()
    }
}

impl FakeSip {
    /// Starts the fake on an ephemeral port of 127.0.0.1.
    pub fn start(cfg: FakeSipConfig) -> std::io::Result<FakeSip> {
        let secret = WebhookSecret::new(&cfg.webhook_secret)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(cfg.script.iter().cloned().collect()),
            cfg,
            secret,
            calls: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            sideband: Mutex::new(SidebandRecording::default()),
            ids: AtomicU64::new(1),
            seq: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let accept = super::spawn_accept_loop(
            "fake-sip",
            listener,
            shared.clone(),
            |sh| sh.stop.load(Ordering::SeqCst),
            serve,
        )?;
        Ok(FakeSip {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The REST base to configure the application with (`http://127.0.0.1:PORT/v1`, as
    /// `OPENAI_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The Realtime endpoint to derive sideband URLs from (`ws://127.0.0.1:PORT/v1/realtime`,
    /// as `OPENAI_REALTIME_URL`; see [`crate::session::sideband::sideband_url`]).
    pub fn realtime_url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    /// What the sideband sockets saw so far.
    pub fn sideband(&self) -> SidebandRecording {
        self.shared
            .sideband
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// A new call rings without a webhook being posted: the typed event the webhook would
    /// carry (for an application that accepts it itself).
    pub fn new_call(&self, from: &str, to: &str) -> crate::proto::sip::IncomingCall {
        let (_, _, body) = self.new_call_body(from, to);
        match crate::proto::sip::WebhookEvent::parse(body.as_bytes()) {
            Ok(crate::proto::sip::WebhookEvent::CallIncoming(c)) => c,
            // The body above is built as a `realtime.call.incoming` event.
            other => unreachable!("the fake's own event did not parse: {other:?}"),
        }
    }

    /// Makes a call ring: its number, id and event body.
    fn new_call_body(&self, from: &str, to: &str) -> (u64, String, String) {
        let n = self.shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let call_id = format!("rtc_u1_fake{n:024x}");
        let body = json!({
            "object": "event",
            "id": format!("evt_fake{n:024x}"),
            "type": "realtime.call.incoming",
            "created_at": unix_now(),
            "data": {
                "call_id": call_id,
                "sip_headers": [
                    {"name": "From", "value": format!("sip:{from}@sip.example.com")},
                    {"name": "To", "value": format!("sip:{to}@sip.example.com")},
                    {"name": "Call-ID", "value": format!("fake-{n}@sip.example.com")},
                ],
                "sip_media_security": "srtp",
            }
        })
        .to_string();
        if let Ok(mut c) = self.shared.calls.lock() {
            c.insert(call_id.clone(), CallState::Ringing);
        }
        (n, call_id, body)
    }

    /// The webhook secret the fake signs with.
    pub fn webhook_secret(&self) -> &str {
        &self.shared.cfg.webhook_secret
    }

    /// A new call rings: the fake makes it known (ringing) and posts its signed
    /// `realtime.call.incoming` webhook to `webhook_url` (`http://…`). `from` and `to` become
    /// the INVITE's `From`/`To` headers.
    pub fn ring(&self, webhook_url: &str, from: &str, to: &str) -> Delivery {
        self.ring_with_id(webhook_url, None, from, to)
    }

    /// [`FakeSip::ring`] with this `webhook-id` (a fresh one when `None`).
    pub fn ring_with_id(
        &self,
        webhook_url: &str,
        webhook_id: Option<&str>,
        from: &str,
        to: &str,
    ) -> Delivery {
        let (n, call_id, body) = self.new_call_body(from, to);
        let now = unix_now();
        let webhook_id = webhook_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("wh_fake{n:024x}"));
        let status = self.post(webhook_url, &webhook_id, now, &body);
        Delivery {
            webhook_id,
            call_id,
            body,
            status,
        }
    }

    /// Delivers `d` again, as OpenAI's retry does: the same `webhook-id` and body, a new
    /// timestamp and signature (brief §3.3). Returns the application's status.
    pub fn redeliver(&self, webhook_url: &str, d: &Delivery) -> u16 {
        self.post(webhook_url, &d.webhook_id, unix_now(), &d.body)
    }

    /// Posts `body` signed as webhook `webhook_id` at `timestamp`; the application's status.
    pub fn post(&self, webhook_url: &str, webhook_id: &str, timestamp: i64, body: &str) -> u16 {
        let sig = sign(&self.shared.secret, webhook_id, timestamp, body.as_bytes());
        post_webhook(webhook_url, webhook_id, &timestamp.to_string(), &sig, body)
    }

    /// The caller hangs up a call that has not been answered: accept/reject get `404` from now on.
    pub fn caller_hangs_up(&self, call_id: &str) {
        if let Ok(mut c) = self.shared.calls.lock() {
            if c.get(call_id) == Some(&CallState::Ringing) {
                c.insert(call_id.to_owned(), CallState::CallerHungUp);
            }
        }
    }

    /// Where `call_id` stands.
    pub fn call_state(&self, call_id: &str) -> Option<CallState> {
        self.shared.calls.lock().ok()?.get(call_id).cloned()
    }

    /// Every REST request so far, in order.
    pub fn requests(&self) -> Vec<RestRequest> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for the requests (or `timeout` passes); true if it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[RestRequest]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if pred(&self.requests()) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeSip {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Posts a webhook with exactly these headers (for tests of bad signatures too); the status
/// (0 when the request failed).
pub fn post_webhook(url: &str, id: &str, timestamp: &str, signature: &str, body: &str) -> u16 {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let sent = agent
        .post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)",
        )
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature)
        .send(body);
    match sent {
        Ok(r) => r.status().as_u16(),
        Err(e) => {
            log::warn!(target: LOG, "fake sip: webhook to {url} failed: {e}");
            0
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn error(status: u16, kind: &str, code: Option<&str>, message: &str) -> (u16, String) {
    (
        status,
        json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
            .to_string(),
    )
}

fn invalid(message: &str) -> (u16, String) {
    error(400, "invalid_request_error", None, message)
}

fn not_found(call_id: &str) -> (u16, String) {
    error(
        404,
        "invalid_request_error",
        None,
        &format!("Call '{call_id}' not found."),
    )
}

/// `None` when `body` is acceptable for `accept`, else the error message.
fn check_accept(body: &Value) -> Option<String> {
    let obj = body.as_object()?;
    for k in obj.keys() {
        if !ACCEPT_FIELDS.contains(&k.as_str()) {
            return Some(format!("Unknown parameter: 'session.{k}'."));
        }
    }
    if obj.get("type").and_then(Value::as_str) != Some("realtime") {
        return Some("Missing or invalid parameter: 'session.type' must be 'realtime'.".into());
    }
    if let Some(td) = body["audio"]["input"]["turn_detection"].as_object() {
        for f in SIP_REFUSED_VAD {
            if td.contains_key(*f) {
                return Some(format!(
                    "Unknown parameter: 'session.audio.input.turn_detection.{f}'."
                ));
            }
        }
    }
    None
}

fn serve(sh: &Arc<Shared>, mut conn: TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let Ok((head, leftover)) = http::read_head(
        &mut http::ReadBy::new(&conn, deadline),
        &HttpLimits::default(),
    ) else {
        return;
    };
    if head.method == "GET" && head.path() == "/v1/realtime" && head.is_websocket_upgrade() {
        return sideband::serve(sh, conn, &head, leftover);
    }
    let Ok(raw) = http::read_body(
        &mut http::ReadBy::new(&conn, deadline),
        &head,
        leftover,
        1 << 20,
    ) else {
        let _ = http::write_response(&mut conn, 400, "application/json", &[], b"{}");
        return;
    };
    let path = head.path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (call_id, verb) = match parts.as_slice() {
        ["v1", "realtime", "calls", id, verb] if head.method == "POST" => {
            (id.to_string(), verb.to_string())
        }
        _ => {
            let (s, b) = error(404, "invalid_request_error", None, "Not found");
            let _ = http::write_response(&mut conn, s, "application/json", &[], b.as_bytes());
            return;
        }
    };
    let body: Option<Value> = serde_json::from_slice(&raw).ok();
    let (status, text) = answer(sh, &head, &call_id, &verb, &raw, body.as_ref());
    if let Ok(mut r) = sh.requests.lock() {
        r.push(RestRequest {
            verb,
            call_id,
            body,
            status,
            at: Instant::now(),
        });
    }
    let _ = http::write_response(&mut conn, status, "application/json", &[], text.as_bytes());
}

fn answer(
    sh: &Shared,
    head: &http::RequestHead,
    call_id: &str,
    verb: &str,
    raw: &[u8],
    body: Option<&Value>,
) -> (u16, String) {
    let bearer = head
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(sh.cfg.api_key.as_str()) {
        return error(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided.",
        );
    }
    let needs_json = verb != "hangup";
    if needs_json {
        let json_type = head
            .header("content-type")
            .is_some_and(|c| c.trim().starts_with("application/json"));
        if !json_type {
            return invalid("Content-Type must be application/json.");
        }
        if !body.is_some_and(Value::is_object) {
            return invalid(&format!(
                "We could not parse the JSON body of your request ({} bytes).",
                raw.len()
            ));
        }
    }
    let empty = json!({});
    let body = body.unwrap_or(&empty);
    let Ok(mut calls) = sh.calls.lock() else {
        return error(500, "server_error", None, "state poisoned");
    };
    let state = calls.get(call_id).cloned();
    let ok = (200, String::new());
    match verb {
        "accept" => {
            if state != Some(CallState::Ringing) {
                return not_found(call_id);
            }
            if let Some(msg) = check_accept(body) {
                return invalid(&msg);
            }
            calls.insert(call_id.to_owned(), CallState::Accepted(body.clone()));
            ok
        }
        "reject" => {
            if state != Some(CallState::Ringing) {
                return not_found(call_id);
            }
            let obj = body.as_object().cloned().unwrap_or_default();
            if let Some(k) = obj.keys().find(|k| k.as_str() != "status_code") {
                return invalid(&format!("Unknown parameter: '{k}'."));
            }
            let code = match obj.get("status_code") {
                None => 603,
                Some(v) => match v.as_u64().and_then(|c| u16::try_from(c).ok()) {
                    Some(c) => c,
                    None => return invalid("Invalid type for 'status_code': expected an integer."),
                },
            };
            calls.insert(call_id.to_owned(), CallState::Rejected(code));
            ok
        }
        "refer" => {
            if !matches!(state, Some(CallState::Accepted(_))) {
                return not_found(call_id);
            }
            let obj = body.as_object().cloned().unwrap_or_default();
            if let Some(k) = obj.keys().find(|k| k.as_str() != "target_uri") {
                return invalid(&format!("Unknown parameter: '{k}'."));
            }
            let Some(target) = obj
                .get("target_uri")
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
            else {
                return invalid("Missing required parameter: 'target_uri'.");
            };
            calls.insert(call_id.to_owned(), CallState::Referred(target.to_owned()));
            ok
        }
        "hangup" => {
            if !matches!(state, Some(CallState::Accepted(_))) {
                return not_found(call_id);
            }
            calls.insert(call_id.to_owned(), CallState::HungUp);
            ok
        }
        other => error(
            404,
            "invalid_request_error",
            None,
            &format!("Unknown call action '{other}'."),
        ),
    }
}
