//! Load run: N concurrent simulated Twilio calls through a bridge server process and a light
//! fake Realtime model, both hosted here on 127.0.0.1. Measures the bridge process (CPU per
//! call-minute, memory, threads) and the forwarding latency both ways, and counts frames lost.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/loadgen --calls 100 --seconds 60
//! target/release/examples/loadgen --calls 100 --seconds 60 --bridge target/release/examples/floor
//! target/release/examples/loadgen --calls 100 --seconds 60 --bridge "node benches/compare/ts/server.mjs"
//! ```
//!
//! Options: `--calls N` (50), `--seconds S` (30, measured after ramp-up and warm-up), `--ramp S`
//! (5), `--bridge CMD` (our example server), `--json FILE` (also write the figures as JSON),
//! `--label NAME`, `--model realtime|live` (the fake model's API; `live` starts the bridge
//! with `MODEL_API=live` and `OPENAI_LIVE_URL`).
//!
//! Any bridge works that takes `PORT`, `OPENAI_API_KEY` and `OPENAI_REALTIME_URL` and serves
//! the Media Streams WebSocket at `/media-stream`.
//!
//! The pattern per call: a `media` frame every 20 ms from the caller; every ~3 s the agent
//! replies with 2 s of audio (100 ms deltas sent at twice real time); the caller's side plays
//! it out at 8 bytes/ms and echoes marks when playback reaches them; every 4th reply is cut by
//! a barge-in (`speech_started`), which the bridge turns into a Twilio `clear` and a
//! `conversation.item.truncate`.
//!
//! With `--model live` the fake speaks GPT-Live as production does (`spec/gpt-live.md` §4,
//! §5.2): after `session.started` it streams 100 ms deltas at real time without a pause,
//! silence included; every ~3 s 2 s of them are a reply with transcript deltas, and every 4th
//! reply stops halfway (the model stopping for the caller: no event, and the bridge sends no
//! `clear`).
//!
//! Counting: after the measured window the callers stop sending and the fake stops replying
//! (GPT-Live's stream too), and the run waits up to 10 s for what is still in flight; a frame
//! or delta that has not arrived by then is lost. With `--model live` a session the bridge
//! never started (no `session.start` answered) is reported and fails the run: all of that
//! call's caller audio would be missing.
//!
//! Progress (phase, calls connected / running / done, the bridge's CPU and RSS) goes to stderr:
//! a bar on a terminal, a line every 5 s otherwise.
//!
//! Latency: every caller frame and every agent delta carries a tag (a magic and the send time)
//! in its first 12 audio bytes; the receiving side here computes now − tag. Each figure covers
//! the bridge plus two loopback hops (generator → bridge → generator).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::Message;
use twilio_realtime::io::ws::{ClientRequest, Duplex, Incoming, WsConfig, WsConn, WsSender};
use twilio_realtime::sim::chaos::ProcessStats;

#[path = "shared/progress.rs"]
mod progress;

const MAGIC: [u8; 4] = *b"LGT1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// `n` bytes of µ-law whose first 12 carry the tag.
fn tagged_b64(n: usize) -> String {
    let mut b = vec![0xFFu8; n];
    b[..4].copy_from_slice(&MAGIC);
    b[4..12].copy_from_slice(&now_ns().to_le_bytes());
    B64.encode(&b)
}

/// The tag's send time, if the payload carries one (only the first 16 characters are decoded).
fn tag_of(b64: &str) -> Option<u64> {
    let head = b64.get(..16)?;
    let mut out = [0u8; 12];
    B64.decode_slice(head, &mut out).ok()?;
    (out[..4] == MAGIC).then(|| u64::from_le_bytes(out[4..12].try_into().unwrap_or([0; 8])))
}

/// Latency samples (µs), kept only inside the measurement window.
#[derive(Default)]
struct Samples {
    us: Mutex<Vec<u32>>,
}

impl Samples {
    fn add(&self, sent_ns: u64, window_start_ns: u64) {
        if sent_ns >= window_start_ns {
            let us = now_ns().saturating_sub(sent_ns) / 1000;
            if let Ok(mut v) = self.us.lock() {
                v.push(us.min(u32::MAX as u64) as u32);
            }
        }
    }

    fn percentiles(&self) -> (usize, [f64; 4]) {
        let mut v = self.us.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_unstable();
        let p = |q: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            v[i] as f64
        };
        (v.len(), [p(0.5), p(0.99), p(0.999), p(1.0)])
    }
}

struct Shared {
    window_start_ns: AtomicU64,
    quiesce: AtomicBool,
    inbound: Samples,
    outbound: Samples,
    frames_in_sent: AtomicU64,
    frames_in_recv: AtomicU64,
    deltas_sent: AtomicU64,
    deltas_recv: AtomicU64,
    barge_ins: AtomicU64,
    clears: AtomicU64,
    truncates: AtomicU64,
    errors: AtomicU64,
    model_conns: Mutex<Vec<Arc<ModelConn>>>,
    /// The fake speaks GPT-Live instead of Realtime.
    live: bool,
}

// ---------------------------------------------------------------------------------------------
// One connection's state, as its reader thread finds it

/// A connection's state for its reader thread. The reader starts before the thread that
/// accepted or opened the connection has built the state (the state holds the connection's
/// sender, which only exists once the reader runs), and the peer may already have written: a
/// GPT-Live bridge sends `session.start` as soon as it reads the 101. Messages that come first
/// wait here, in order, and are handled once the state is registered. (Dropping them cost a
/// whole call: a `session.start` never answered, so not one caller frame reached the fake.)
struct Registration<T> {
    slot: Mutex<Slot<T>>,
}

enum Slot<T> {
    Waiting(Vec<Incoming>),
    Ready(Arc<T>),
}

/// Most messages kept before registration (a bridge sends one or two; more is an error).
const MAX_WAITING: usize = 64;

impl<T> Registration<T> {
    fn new() -> Arc<Registration<T>> {
        Arc::new(Registration {
            slot: Mutex::new(Slot::Waiting(Vec::new())),
        })
    }

    /// The reader's side: `inc` is handled now, or kept until [`Registration::register`].
    /// False when it had to be dropped (too many waiting).
    fn deliver(&self, inc: Incoming, handle: impl Fn(&Arc<T>, Incoming)) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *slot {
            Slot::Ready(t) => {
                let t = t.clone();
                drop(slot);
                handle(&t, inc);
                true
            }
            Slot::Waiting(v) if v.len() < MAX_WAITING => {
                v.push(inc);
                true
            }
            Slot::Waiting(_) => false,
        }
    }

    /// The state is built: what waited is handled first, in order (under the lock, so a
    /// message the reader gets meanwhile waits for them).
    fn register(&self, t: Arc<T>, handle: impl Fn(&Arc<T>, Incoming)) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        let Slot::Waiting(waiting) = std::mem::replace(&mut *slot, Slot::Ready(t.clone())) else {
            return;
        };
        for inc in waiting {
            handle(&t, inc);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The light fake model

struct Reply {
    response: String,
    item: String,
    chunks_left: u32,
    cut_at: Option<u32>,
}

struct ModelState {
    next_reply_at: Instant,
    reply: Option<Reply>,
    replies: u64,
    next_chunk_at: Instant,
    /// GPT-Live: `session.started` was sent (audio streams from then on).
    started: bool,
}

struct ModelConn {
    out: WsSender,
    state: Mutex<ModelState>,
    id: u64,
}

fn model_event(out: &WsSender, v: Value) {
    let _ = out.send(Message::text(v.to_string()));
}

fn serve_model(listener: TcpListener, sh: Arc<Shared>) {
    let mut next_id = 0u64;
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let sh = sh.clone();
        next_id += 1;
        let id = next_id;
        thread::spawn(move || {
            let Ok((conn, _)) = WsConn::accept(tcp, None, &WsConfig::default()) else {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let reg = Registration::new();
            let (sh2, reg2) = (sh.clone(), reg.clone());
            let duplex = match conn.spawn("lg-model", move |inc| {
                if !reg2.deliver(inc, |c, inc| on_client(&sh2, c, inc)) {
                    sh2.errors.fetch_add(1, Ordering::Relaxed);
                }
            }) {
                Ok(d) => d,
                Err(_) => return,
            };
            let out = duplex.sender();
            let now = Instant::now();
            let mc = Arc::new(ModelConn {
                out: out.clone(),
                state: Mutex::new(ModelState {
                    // Spread the replies of different calls over time.
                    next_reply_at: now + Duration::from_millis(1000 + (id * 137) % 2000),
                    reply: None,
                    replies: 0,
                    next_chunk_at: now,
                    started: false,
                }),
                id,
            });
            reg.register(mc.clone(), |c, inc| on_client(&sh, c, inc));
            if !sh.live {
                model_event(
                    &out,
                    json!({"type":"session.created","event_id":"ev_c","session":{"type":"realtime","id":format!("sess_{id}")}}),
                );
            }
            if let Ok(mut v) = sh.model_conns.lock() {
                v.push(mc);
            }
            duplex.join();
        });
    }
}

fn on_client(sh: &Shared, conn: &ModelConn, inc: Incoming) {
    let Incoming::Text(t) = inc else { return };
    let text: &str = t.as_ref();
    if text.starts_with(r#"{"type":"input_audio_buffer.append""#)
        || text.starts_with(r#"{"type":"session.input_audio.append""#)
    {
        // {"type":"input_audio_buffer.append","audio":"…"} (or GPT-Live's)
        if let Some(audio) = text.split(r#""audio":""#).nth(1) {
            if let Some(ts) = tag_of(audio) {
                sh.frames_in_recv.fetch_add(1, Ordering::Relaxed);
                sh.inbound
                    .add(ts, sh.window_start_ns.load(Ordering::Relaxed));
            }
        }
        return;
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        sh.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match v["type"].as_str().unwrap_or("") {
        "session.start" => {
            let mut st = conn.state.lock().unwrap_or_else(|p| p.into_inner());
            st.started = true;
            st.next_chunk_at = Instant::now();
            model_event(
                &conn.out,
                json!({"type":"session.started","event_id":"ev_s","client_event_id":v["event_id"],
                    "session":{"id":format!("live_{}", conn.id),"status":"active",
                        "audio":{"format":{"type":"audio/pcmu","rate":8000}}}}),
            );
        }
        "session.update" => model_event(
            &conn.out,
            json!({"type":"session.updated","event_id":"ev_u","session":v["session"].clone()}),
        ),
        "conversation.item.truncate" => {
            sh.truncates.fetch_add(1, Ordering::Relaxed);
            model_event(
                &conn.out,
                json!({"type":"conversation.item.truncated","event_id":"ev_t","item_id":v["item_id"],"content_index":0,"audio_end_ms":v["audio_end_ms"]}),
            );
        }
        "response.cancel" => {
            let mut st = conn.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = st.reply.take() {
                end_reply(&conn.out, &r, "cancelled");
            }
        }
        _ => {}
    }
}

fn end_reply(out: &WsSender, r: &Reply, status: &str) {
    model_event(
        out,
        json!({"type":"response.output_audio.done","event_id":"ev","response_id":r.response,"item_id":r.item,"output_index":0,"content_index":0}),
    );
    model_event(
        out,
        json!({"type":"response.output_item.done","event_id":"ev","response_id":r.response,"output_index":0,
            "item":{"id":r.item,"type":"message","role":"assistant","status":"completed","content":[{"type":"output_audio","transcript":"Here you are."}]}}),
    );
    model_event(
        out,
        json!({"type":"response.done","event_id":"ev","response":{"id":r.response,"status":status,"output":[]}}),
    );
}

/// GPT-Live: one 100 ms delta when due, at real time, silence or a reply's speech with its
/// transcript; a new reply every ~3 s, every 4th one stopped halfway by the model itself.
fn live_tick(sh: &Shared, c: &ModelConn, st: &mut ModelState, now: Instant, quiesce: bool) {
    const CHUNK: usize = 800; // 100 ms
    if !st.started || now < st.next_chunk_at {
        return;
    }
    if quiesce {
        // The measurement is over: the stream stops, so that every delta sent can be
        // counted as arrived or lost (a real session would stream until `session.close`).
        st.reply = None;
        return;
    }
    st.next_chunk_at += Duration::from_millis(100);
    if st.reply.is_none() && !quiesce && now >= st.next_reply_at {
        st.replies += 1;
        let n = st.replies;
        st.reply = Some(Reply {
            response: String::new(),
            item: String::new(),
            chunks_left: 20,
            cut_at: (n % 4 == 0).then_some(10),
        });
    }
    model_event(
        &c.out,
        json!({"type":"session.output_audio.delta","delta":tagged_b64(CHUNK)}),
    );
    sh.deltas_sent.fetch_add(1, Ordering::Relaxed);
    let Some(mut r) = st.reply.take() else {
        return;
    };
    if r.cut_at == Some(r.chunks_left) {
        sh.barge_ins.fetch_add(1, Ordering::Relaxed);
        st.next_reply_at = now + Duration::from_millis(2000);
        return;
    }
    model_event(
        &c.out,
        json!({"type":"session.output_transcript.delta","event_id":"ev","delta":" word","start_ms":0,"end_ms":100}),
    );
    r.chunks_left -= 1;
    if r.chunks_left == 0 {
        st.next_reply_at = now + Duration::from_millis(1000);
    } else {
        st.reply = Some(r);
    }
}

/// Drives every model connection's replies (one thread for all).
fn model_ticker(sh: Arc<Shared>, stop: Arc<AtomicBool>) {
    const CHUNK: usize = 800; // 100 ms
    let chunk_every = Duration::from_millis(50); // twice real time
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let quiesce = sh.quiesce.load(Ordering::Relaxed);
        let conns: Vec<Arc<ModelConn>> =
            sh.model_conns.lock().map(|v| v.clone()).unwrap_or_default();
        for c in conns {
            if c.out.is_closed() {
                continue;
            }
            let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
            if sh.live {
                live_tick(&sh, &c, &mut st, now, quiesce);
                continue;
            }
            if st.reply.is_none() {
                if !quiesce && now >= st.next_reply_at {
                    st.replies += 1;
                    let n = st.replies;
                    let r = Reply {
                        response: format!("resp_{}_{n}", c.id),
                        item: format!("item_{}_{n}", c.id),
                        chunks_left: 20,
                        cut_at: (n % 4 == 0).then_some(10),
                    };
                    model_event(
                        &c.out,
                        json!({"type":"response.created","event_id":"ev","response":{"id":r.response,"status":"in_progress","output":[]}}),
                    );
                    model_event(
                        &c.out,
                        json!({"type":"response.output_item.added","event_id":"ev","response_id":r.response,"output_index":0,
                            "item":{"id":r.item,"type":"message","role":"assistant","status":"in_progress","content":[]}}),
                    );
                    st.reply = Some(r);
                    st.next_chunk_at = now;
                }
                continue;
            }
            if now < st.next_chunk_at {
                continue;
            }
            st.next_chunk_at += chunk_every;
            let Some(mut r) = st.reply.take() else {
                continue;
            };
            if quiesce {
                end_reply(&c.out, &r, "completed");
                continue;
            }
            if r.cut_at == Some(r.chunks_left) {
                // The caller talks over the agent: the server cancels the response itself.
                sh.barge_ins.fetch_add(1, Ordering::Relaxed);
                model_event(
                    &c.out,
                    json!({"type":"input_audio_buffer.speech_started","event_id":"ev","audio_start_ms":0,"item_id":format!("user_{}", r.item)}),
                );
                end_reply(&c.out, &r, "cancelled");
                st.next_reply_at = now + Duration::from_millis(2000);
                continue;
            }
            model_event(
                &c.out,
                json!({"type":"response.output_audio.delta","event_id":"ev","response_id":r.response,"item_id":r.item,
                    "output_index":0,"content_index":0,"delta":tagged_b64(CHUNK)}),
            );
            sh.deltas_sent.fetch_add(1, Ordering::Relaxed);
            r.chunks_left -= 1;
            if r.chunks_left == 0 {
                end_reply(&c.out, &r, "completed");
                // 2 s of audio plays out over 2 s; the caller answers after a pause.
                st.next_reply_at = now + Duration::from_millis(3000);
            } else {
                st.reply = Some(r);
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated Twilio callers

struct Playout {
    stream_end: Instant,
    marks: VecDeque<(Instant, String)>,
}

struct Caller {
    out: WsSender,
    sid: String,
    seq: AtomicU64,
    play: Mutex<Playout>,
    closed: AtomicBool,
}

fn twilio_json(event: &str, sid: &str, body: Value) -> String {
    let mut o = serde_json::Map::new();
    o.insert("event".into(), json!(event));
    o.insert("streamSid".into(), json!(sid));
    if let Value::Object(b) = body {
        o.extend(b);
    }
    Value::Object(o).to_string()
}

fn on_bridge(sh: &Shared, caller: &Caller, inc: Incoming) {
    let text = match inc {
        Incoming::Text(t) => t,
        Incoming::Closed(_) | Incoming::Error(_) => {
            caller.closed.store(true, Ordering::Relaxed);
            return;
        }
        _ => return,
    };
    let text: &str = text.as_ref();
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        sh.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let now = Instant::now();
    let mut play = caller.play.lock().unwrap_or_else(|p| p.into_inner());
    match v["event"].as_str().unwrap_or("") {
        "media" => {
            let payload = v["media"]["payload"].as_str().unwrap_or("");
            if let Some(ts) = tag_of(payload) {
                sh.deltas_recv.fetch_add(1, Ordering::Relaxed);
                sh.outbound
                    .add(ts, sh.window_start_ns.load(Ordering::Relaxed));
            }
            let bytes = twilio_realtime::proto::mulaw::base64_decoded_len(payload) as u64;
            let start = play.stream_end.max(now);
            play.stream_end = start + Duration::from_micros(bytes * 125);
        }
        "mark" => {
            let name = v["mark"]["name"].as_str().unwrap_or("").to_owned();
            let due = play.stream_end.max(now);
            play.marks.push_back((due, name));
        }
        "clear" => {
            sh.clears.fetch_add(1, Ordering::Relaxed);
            play.stream_end = now;
            for (_, name) in play.marks.drain(..) {
                let _ = caller.out.send(Message::text(twilio_json(
                    "mark",
                    &caller.sid,
                    json!({"mark":{"name":name}}),
                )));
            }
        }
        _ => {}
    }
}

/// Sends every caller's 20 ms frame and echoes due marks (one thread for all callers). The
/// callers are spread over the 20 ms in 1 ms slots, as independent calls would be, so that a
/// frame's latency is not the generator's own burst.
fn twilio_ticker(sh: Arc<Shared>, callers: Arc<Mutex<Vec<Arc<Caller>>>>, stop: Arc<AtomicBool>) {
    let mut next = Instant::now();
    let mut slot: usize = 0;
    while !stop.load(Ordering::Relaxed) {
        next += Duration::from_millis(1);
        slot = (slot + 1) % 20;
        let now = Instant::now();
        let quiesce = sh.quiesce.load(Ordering::Relaxed);
        let list: Vec<Arc<Caller>> = callers
            .lock()
            .map(|v| v.iter().skip(slot).step_by(20).cloned().collect())
            .unwrap_or_default();
        for c in list {
            if c.closed.load(Ordering::Relaxed) {
                continue;
            }
            if !quiesce {
                let n = c.seq.fetch_add(1, Ordering::Relaxed);
                let frame = twilio_json(
                    "media",
                    &c.sid,
                    json!({"sequenceNumber":(n + 2).to_string(),"media":{"track":"inbound","chunk":(n + 1).to_string(),
                        "timestamp":(n * 20).to_string(),"payload":tagged_b64(160)}}),
                );
                if c.out.try_send(Message::text(frame)).is_ok() {
                    sh.frames_in_sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    sh.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut play = c.play.lock().unwrap_or_else(|p| p.into_inner());
            while play.marks.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, name)) = play.marks.pop_front() {
                    let _ = c.out.send(Message::text(twilio_json(
                        "mark",
                        &c.sid,
                        json!({"mark":{"name":name}}),
                    )));
                }
            }
        }
        let left = next.saturating_duration_since(Instant::now());
        if left.is_zero() {
            next = Instant::now(); // overloaded: do not burst to catch up
        } else {
            thread::sleep(left);
        }
    }
}

fn start_call(sh: &Arc<Shared>, addr: SocketAddr, i: usize) -> Option<(Arc<Caller>, Duplex)> {
    let req = ClientRequest::new(format!("ws://{addr}/media-stream"));
    let conn = match WsConn::connect(&req, &WsConfig::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("call {i}: {e}");
            sh.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let sid = format!("MZ{i:032x}");
    let reg = Registration::new();
    let (sh2, reg2) = (sh.clone(), reg.clone());
    let duplex = conn
        .spawn("lg-twilio", move |inc| {
            if !reg2.deliver(inc, |c, inc| on_bridge(&sh2, c, inc)) {
                sh2.errors.fetch_add(1, Ordering::Relaxed);
            }
        })
        .ok()?;
    let caller = Arc::new(Caller {
        out: duplex.sender(),
        sid: sid.clone(),
        seq: AtomicU64::new(0),
        play: Mutex::new(Playout {
            stream_end: Instant::now(),
            marks: VecDeque::new(),
        }),
        closed: AtomicBool::new(false),
    });
    reg.register(caller.clone(), |c, inc| on_bridge(sh, c, inc));
    let out = duplex.sender();
    let _ = out.send(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ));
    let _ = out.send(Message::text(twilio_json(
        "start",
        &sid,
        json!({"sequenceNumber":"1","start":{"accountSid":"AC0000000000000000000000000000load","streamSid":sid,
            "callSid":format!("CA{i:032x}"),"tracks":["inbound"],"customParameters":{"caller":"+15550100"},
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}),
    )));
    Some((caller, duplex))
}

// ---------------------------------------------------------------------------------------------
// The bridge process and its figures

struct ProcFigures {
    cpu_ticks: u64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
}

fn proc_figures(pid: u32) -> Option<ProcFigures> {
    let cpu_ticks = progress::cpu_ticks(pid)?;
    let st = ProcessStats::of_pid(pid).ok()?;
    Some(ProcFigures {
        cpu_ticks,
        rss_kb: st.rss_kb,
        hwm_kb: st.peak_rss_kb,
        threads: st.threads as u64,
    })
}

fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Bridge {
    child: Child,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // SIGTERM, then SIGKILL.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(5050)
}

/// After the measurement, how long frames and deltas in flight may take to arrive before
/// they count as lost (a loaded machine can stall the bridge for a second or more).
const QUIESCE_LIMIT: Duration = Duration::from_secs(10);

fn spawn_bridge(cmd: &str, port: u16, model_url: &str, live: bool) -> std::io::Result<Bridge> {
    let parts: Vec<&str> = cmd.split_whitespace().collect();
    let (prog, args) = parts
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty bridge command"))?;
    let mut child = Command::new(prog)
        .args(args)
        .env("PORT", port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("OPENAI_API_KEY", "sk-loadgen")
        .env("OPENAI_REALTIME_URL", model_url)
        .env("OPENAI_LIVE_URL", model_url)
        .env("MODEL_API", if live { "live" } else { "realtime" })
        .env("RUST_LOG", "warn")
        .env_remove("TWILIO_AUTH_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Keep draining its output so it never blocks on a full pipe; show its warnings.
    if let Some(out) = child.stdout.take() {
        thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = BufReader::new(out).read_to_end(&mut sink);
        });
    }
    if let Some(err) = child.stderr.take() {
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok).take(50) {
                eprintln!("  bridge: {line}");
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other("the bridge did not start listening"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(Bridge { child })
}

// ---------------------------------------------------------------------------------------------

struct Args {
    calls: usize,
    seconds: u64,
    ramp: u64,
    bridge: String,
    json: Option<String>,
    label: String,
    live: bool,
}

fn args() -> Args {
    let mut a = Args {
        calls: 50,
        seconds: 30,
        ramp: 5,
        bridge: "target/release/examples/twilio_server".into(),
        json: None,
        label: String::new(),
        live: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--calls" => a.calls = v.parse().expect("--calls N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds S"),
            "--ramp" => a.ramp = v.parse().expect("--ramp S"),
            "--bridge" => a.bridge = v,
            "--json" => a.json = Some(v),
            "--label" => a.label = v,
            "--model" => {
                a.live = match v.as_str() {
                    "live" => true,
                    "realtime" => false,
                    other => {
                        eprintln!("--model takes realtime or live, not {other:?}");
                        std::process::exit(2);
                    }
                }
            }
            other => {
                eprintln!("unknown option {other}; see the file's docs");
                std::process::exit(2);
            }
        }
    }
    if a.label.is_empty() {
        a.label = a.bridge.rsplit('/').next().unwrap_or("bridge").to_owned();
    }
    a
}

fn main() {
    let a = args();
    epoch();
    let sh = Arc::new(Shared {
        window_start_ns: AtomicU64::new(u64::MAX),
        quiesce: AtomicBool::new(false),
        inbound: Samples::default(),
        outbound: Samples::default(),
        frames_in_sent: AtomicU64::new(0),
        frames_in_recv: AtomicU64::new(0),
        deltas_sent: AtomicU64::new(0),
        deltas_recv: AtomicU64::new(0),
        barge_ins: AtomicU64::new(0),
        clears: AtomicU64::new(0),
        truncates: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        model_conns: Mutex::new(Vec::new()),
        live: a.live,
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("model listener");
    let model_url = format!(
        "ws://{}{}",
        listener.local_addr().expect("addr"),
        if a.live {
            "/v1/live/sessions"
        } else {
            "/v1/realtime?model=gpt-realtime"
        }
    );
    {
        let sh = sh.clone();
        thread::spawn(move || serve_model(listener, sh));
    }
    let port = free_port();
    let bridge = match spawn_bridge(&a.bridge, port, &model_url, a.live) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot start the bridge `{}`: {e}", a.bridge);
            std::process::exit(2);
        }
    };
    let pid = bridge.child.id();
    thread::sleep(Duration::from_millis(500));
    let idle = proc_figures(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Arc<Mutex<Vec<Arc<Caller>>>> = Arc::new(Mutex::new(Vec::new()));
    let tickers = [
        {
            let (sh, stop) = (sh.clone(), stop.clone());
            thread::spawn(move || model_ticker(sh, stop))
        },
        {
            let (sh, callers, stop) = (sh.clone(), callers.clone(), stop.clone());
            thread::spawn(move || twilio_ticker(sh, callers, stop))
        },
    ];

    println!(
        "loadgen: {} calls, ramp {} s, {} s measured, bridge `{}`",
        a.calls, a.ramp, a.seconds, a.bridge
    );
    // Phases: 0 ramp-up, 1 warm-up, 2 measuring, 3 quiescing.
    let phase = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let shown = {
        let (phase, connected, callers) = (phase.clone(), connected.clone(), callers.clone());
        let planned = a.ramp + 3 + a.seconds + 2;
        let started = Instant::now();
        progress::Progress::start(pid, "bridge", "s", Duration::from_secs(5), move || {
            let done = callers
                .lock()
                .map(|v| {
                    v.iter()
                        .filter(|c| c.closed.load(Ordering::Relaxed))
                        .count()
                })
                .unwrap_or(0) as u64;
            let connected = connected.load(Ordering::Relaxed);
            progress::Snapshot {
                phase: ["ramp-up", "warm-up", "measuring", "quiescing"]
                    [phase.load(Ordering::Relaxed).min(3) as usize]
                    .to_owned(),
                pos: started.elapsed().as_secs(),
                len: planned,
                connected,
                running: connected.saturating_sub(done),
                done,
            }
        })
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ramp_gap = Duration::from_secs_f64(a.ramp as f64 / a.calls.max(1) as f64);
    let mut failed = 0;
    let mut sockets = Vec::with_capacity(a.calls);
    for i in 0..a.calls {
        match start_call(&sh, addr, i) {
            Some((c, d)) => {
                callers.lock().expect("callers").push(c);
                sockets.push(d);
                connected.fetch_add(1, Ordering::Relaxed);
            }
            None => failed += 1,
        }
        thread::sleep(ramp_gap);
    }
    phase.store(1, Ordering::Relaxed);
    thread::sleep(Duration::from_secs(3)); // warm-up: every call has replied at least once
    phase.store(2, Ordering::Relaxed);
    let gen_cpu0 = self_cpu_s();
    let before = proc_figures(pid);
    let t0 = Instant::now();
    sh.window_start_ns.store(now_ns(), Ordering::Relaxed);
    let mut max_threads = 0;
    let mut max_rss = 0;
    while t0.elapsed() < Duration::from_secs(a.seconds) {
        thread::sleep(Duration::from_millis(500));
        if let Some(f) = proc_figures(pid) {
            max_threads = max_threads.max(f.threads);
            max_rss = max_rss.max(f.rss_kb);
        }
    }
    let after = proc_figures(pid);
    let measured = t0.elapsed().as_secs_f64();
    let gen_cpu = self_cpu_s() - gen_cpu0;
    sh.window_start_ns.store(u64::MAX, Ordering::Relaxed);

    // Quiesce: no new frames or deltas; let what is in flight arrive (what has not after
    // QUIESCE_LIMIT is lost), then hang up.
    sh.quiesce.store(true, Ordering::Relaxed);
    phase.store(3, Ordering::Relaxed);
    let quiesced = Instant::now();
    thread::sleep(Duration::from_millis(200));
    while quiesced.elapsed() < QUIESCE_LIMIT
        && (sh.frames_in_recv.load(Ordering::Relaxed) < sh.frames_in_sent.load(Ordering::Relaxed)
            || sh.deltas_recv.load(Ordering::Relaxed) < sh.deltas_sent.load(Ordering::Relaxed))
    {
        thread::sleep(Duration::from_millis(50));
    }
    let drained_ms = quiesced.elapsed().as_millis() as u64;
    let not_started = if a.live {
        sh.model_conns
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|c| !c.state.lock().map(|s| s.started).unwrap_or(true))
                    .count()
            })
            .unwrap_or(0)
    } else {
        0
    };
    let alive = callers
        .lock()
        .map(|v| {
            v.iter()
                .filter(|c| !c.closed.load(Ordering::Relaxed))
                .count()
        })
        .unwrap_or(0);
    let (fi_sent, fi_recv) = (
        sh.frames_in_sent.load(Ordering::Relaxed),
        sh.frames_in_recv.load(Ordering::Relaxed),
    );
    let (d_sent, d_recv) = (
        sh.deltas_sent.load(Ordering::Relaxed),
        sh.deltas_recv.load(Ordering::Relaxed),
    );
    for c in callers.lock().map(|v| v.clone()).unwrap_or_default() {
        let _ = c.out.send(Message::text(twilio_json(
            "stop",
            &c.sid,
            json!({"stop":{"accountSid":"AC0000000000000000000000000000load","callSid":"CA"}}),
        )));
        c.out.close();
    }
    stop.store(true, Ordering::Relaxed);
    for t in tickers {
        let _ = t.join();
    }
    for d in sockets {
        d.join();
    }
    shown.finish();
    drop(bridge);

    let (Some(before), Some(after)) = (before, after) else {
        eprintln!("the bridge process went away during the run");
        std::process::exit(1);
    };
    let cpu_s = (after.cpu_ticks - before.cpu_ticks) as f64 / progress::clk_tck();
    let call_minutes = a.calls as f64 * measured / 60.0;
    let idle_rss = idle.as_ref().map_or(0, |f| f.rss_kb);
    let idle_threads = idle.as_ref().map_or(0, |f| f.threads);
    let (n_in, p_in) = sh.inbound.percentiles();
    let (n_out, p_out) = sh.outbound.percentiles();
    let lost_in = fi_sent.saturating_sub(fi_recv);
    let lost_out = d_sent.saturating_sub(d_recv);
    let errors = sh.errors.load(Ordering::Relaxed) + failed as u64;
    let report = json!({
        "label": a.label,
        "bridge": a.bridge,
        "calls": a.calls,
        "calls_alive_at_end": alive,
        "seconds_measured": measured,
        "bridge_cpu_s": cpu_s,
        "bridge_cpu_s_per_call_minute": cpu_s / call_minutes,
        "bridge_cpu_percent_of_one_core": 100.0 * cpu_s / measured,
        "bridge_rss_idle_mb": idle_rss as f64 / 1024.0,
        "bridge_rss_mb": after.rss_kb as f64 / 1024.0,
        "bridge_rss_max_mb": max_rss as f64 / 1024.0,
        "bridge_peak_rss_mb": after.hwm_kb as f64 / 1024.0,
        "bridge_rss_per_call_kb": (after.rss_kb.saturating_sub(idle_rss)) as f64 / a.calls.max(1) as f64,
        "bridge_threads": max_threads,
        "bridge_threads_per_call": (max_threads.saturating_sub(idle_threads)) as f64 / a.calls.max(1) as f64,
        "inbound_latency_us": {"samples": n_in, "p50": p_in[0], "p99": p_in[1], "p999": p_in[2], "max": p_in[3]},
        "outbound_latency_us": {"samples": n_out, "p50": p_out[0], "p99": p_out[1], "p999": p_out[2], "max": p_out[3]},
        "frames_in": {"sent": fi_sent, "received": fi_recv, "lost": lost_in},
        "quiesce_ms": drained_ms,
        "live_sessions_not_started": not_started,
        "deltas_out": {"sent": d_sent, "received": d_recv, "lost": lost_out},
        "barge_ins": sh.barge_ins.load(Ordering::Relaxed),
        "clears_seen": sh.clears.load(Ordering::Relaxed),
        "truncates_seen": sh.truncates.load(Ordering::Relaxed),
        "generator_cpu_s": gen_cpu,
        "generator_cpu_percent_of_one_core": 100.0 * gen_cpu / measured,
        "errors": errors,
    });
    let r = &report;
    println!("{:-<72}", "");
    println!(
        "bridge `{}`: {} calls for {:.1} s",
        a.label, a.calls, measured
    );
    println!(
        "  CPU             {:.3} s per call-minute ({:.1} % of one core)",
        r["bridge_cpu_s_per_call_minute"].as_f64().unwrap_or(0.0),
        r["bridge_cpu_percent_of_one_core"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  memory          RSS {:.1} MB (idle {:.1}), peak {:.1} MB, {:.0} KB per call",
        r["bridge_rss_mb"].as_f64().unwrap_or(0.0),
        r["bridge_rss_idle_mb"].as_f64().unwrap_or(0.0),
        r["bridge_peak_rss_mb"].as_f64().unwrap_or(0.0),
        r["bridge_rss_per_call_kb"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  threads         {} ({:.1} per call)",
        max_threads,
        r["bridge_threads_per_call"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  caller → model  p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs  max {:.0} µs  ({n_in} frames)",
        p_in[0], p_in[1], p_in[2], p_in[3]
    );
    println!(
        "  model → caller  p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs  max {:.0} µs  ({n_out} deltas)",
        p_out[0], p_out[1], p_out[2], p_out[3]
    );
    println!(
        "  frames          caller {fi_sent} sent / {fi_recv} arrived (lost {lost_in}); agent {d_sent} / {d_recv} (lost {lost_out}); in flight at the end arrived within {drained_ms} ms"
    );
    if a.live {
        println!("  GPT-Live        sessions the bridge never started: {not_started}");
    }
    println!(
        "  barge-ins       {} (clears {}, truncates {}); calls alive at the end {alive}/{}; errors {errors}",
        r["barge_ins"], r["clears_seen"], r["truncates_seen"], a.calls
    );
    println!(
        "  generator CPU   {:.1} % of one core",
        r["generator_cpu_percent_of_one_core"]
            .as_f64()
            .unwrap_or(0.0)
    );
    if let Some(path) = &a.json {
        if let Err(e) = std::fs::write(
            path,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        ) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    if lost_in > 0 || lost_out > 0 || errors > 0 || alive < a.calls || not_started > 0 {
        std::process::exit(1);
    }
}
