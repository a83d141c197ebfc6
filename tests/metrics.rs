//! `GET /metrics` and the per-call summary line after simulated calls: the numbers match what
//! the simulated Twilio side sent and heard, and no caller data leaks into labels or (unless
//! the operator opts in) the summary line.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{http_request, Rig};
use serde_json::{json, Value};
use twilio_realtime::agent::Agent;
use twilio_realtime::events::SessionEvent;
use twilio_realtime::io::ws::{WsConfig, WsConn};
use twilio_realtime::metrics::Metrics;
use twilio_realtime::session::{Session, SessionConfig};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Faults, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target() == twilio_realtime::metrics::CALLS_LOG
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            LINES.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn capture_summaries() {
    let _ = log::set_logger(&Capture);
    log::set_max_level(log::LevelFilter::Info);
}

/// The summary lines of one call (the tests of this file may share a process and its logger).
fn summaries(call_sid: &str) -> Vec<Value> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("the summary line is JSON"))
        .filter(|l| l["call_sid"] == call_sid)
        .collect()
}

fn agent() -> Agent {
    let weather = common::weather_tool();
    Agent::new("Assistant", "Be brief.").tool(weather)
}

/// The value of the sample `name` (with its labels, as written) in the exposition text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics(addr: std::net::SocketAddr) -> String {
    let (status, resp) = http_request(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("text/plain; version=0.0.4"), "{resp}");
    resp.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn run(rig: &Rig, call_sid: &str, script: Vec<Segment>) -> CallReport {
    let mut cfg = TwilioCallConfig::new(rig.addr, script);
    cfg.call_sid = Some(call_sid.into());
    cfg.max_duration = Duration::from_secs(30);
    let report = TwilioCall::run(cfg).expect("call runs");
    rig.wait_idle();
    report
}

#[test]
fn metrics_and_the_summary_line_count_a_call_with_a_tool_and_a_barge_in() {
    capture_summaries();
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![
                Reply::call("get_weather", r#"{"location":"Paris"}"#),
                Reply::say(
                    "It is sunny in Paris, and this answer goes on long enough to be interrupted.",
                    6000,
                ),
                Reply::say("Sure.", 500),
            ],
            ..Default::default()
        },
        agent,
    );
    let before = metrics(rig.addr);
    assert_eq!(
        sample(&before, "twilio_realtime_calls_active"),
        Some(0.0),
        "{before}"
    );
    let report = run(
        &rig,
        "CA0000000000000000000000000000a001",
        vec![
            Segment::Silence(200),
            Segment::Speech(700),
            Segment::BargeIn {
                after_ms: 1500,
                speech_ms: 800,
                timeout_ms: 15_000,
            },
            Segment::WaitForAgent {
                quiet_ms: 400,
                timeout_ms: 10_000,
            },
            Segment::HangUp,
        ],
    );
    assert_eq!(report.clears.len(), 1, "one barge-in");
    let sent_to_caller: u64 = report.chunks.iter().map(|c| c.bytes).sum();
    // Ground truth of the cut: agent audio that reached Twilio and was cleared unheard (the
    // long answer went out at 4x real time, so most of it).
    let cut_truth_ms = report
        .chunks
        .iter()
        .map(|c| c.bytes.saturating_sub(c.played))
        .sum::<u64>()
        / 8;
    let heard_of_cut_item_ms = report.heard_ms_by_item().into_values().max().unwrap_or(0);
    assert!(
        cut_truth_ms > heard_of_cut_item_ms + 1000,
        "the test needs a cut far from what was heard ({cut_truth_ms} vs {heard_of_cut_item_ms})"
    );
    let near_truth = |ms: f64| (ms - cut_truth_ms as f64).abs() <= 100.0;
    let text = metrics(rig.addr);
    let cut_s = sample(&text, "twilio_realtime_truncated_cut_seconds_sum").unwrap_or(-1.0);
    assert!(
        near_truth(cut_s * 1000.0),
        "ms cut: {} s, the caller did not hear {cut_truth_ms} ms",
        cut_s
    );
    let want = [
        ("twilio_realtime_calls_active", 0.0),
        (
            "twilio_realtime_calls_total{reason=\"twilio_stopped\"}",
            1.0,
        ),
        ("twilio_realtime_barge_ins_total", 1.0),
        ("twilio_realtime_truncations_total", 1.0),
        (
            "twilio_realtime_tool_calls_total{tool=\"get_weather\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "twilio_realtime_tool_call_seconds_count{tool=\"get_weather\"}",
            1.0,
        ),
        ("twilio_realtime_model_connect_seconds_count", 1.0),
        ("twilio_realtime_first_audio_seconds_count", 1.0),
        (
            "twilio_realtime_audio_frames_total{direction=\"from_caller\"}",
            report.frames_sent as f64,
        ),
        (
            "twilio_realtime_audio_bytes_total{direction=\"from_caller\"}",
            (report.frames_sent * 160) as f64,
        ),
        (
            "twilio_realtime_audio_bytes_total{direction=\"to_caller\"}",
            sent_to_caller as f64,
        ),
        (
            "twilio_realtime_audio_frames_total{direction=\"to_caller\"}",
            report.chunks.len() as f64,
        ),
        ("twilio_realtime_events_dropped_total", 0.0),
        ("twilio_realtime_ready", 1.0),
        // No live call holds anything.
        ("twilio_realtime_queued_bytes{peer=\"twilio\"}", 0.0),
        ("twilio_realtime_queued_bytes{peer=\"model\"}", 0.0),
    ];
    for (name, value) in want {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    assert!(
        !text.contains("+1555"),
        "a phone number in the metrics:\n{text}"
    );
    assert!(!text.contains(&report.call_sid), "a CallSid in the metrics");

    let lines = summaries(&report.call_sid);
    assert_eq!(lines.len(), 1, "one summary line per call: {lines:?}");
    let l = &lines[0];
    eprintln!("summary line: {l}");
    assert_eq!(l["call_sid"], report.call_sid.as_str());
    assert_eq!(l["close_reason"], "twilio_stopped");
    assert_eq!(l["barge_ins"], 1);
    assert_eq!(l["truncations"], 1);
    assert!(
        near_truth(l["truncated_cut_ms"].as_f64().unwrap_or(-1.0)),
        "{l}"
    );
    assert_eq!(l["tools"], 1);
    assert_eq!(l["tool_names"], json!(["get_weather"]));
    assert_eq!(l["transfers"], 0);
    assert_eq!(l["bytes_from_caller"], report.frames_sent * 160);
    assert_eq!(l["bytes_to_caller"], sent_to_caller);
    assert_eq!(l["model"], "gpt-realtime");
    assert!(l["duration_ms"].as_u64().unwrap() > 0);
    assert!(
        l["first_audio_ms"].is_u64() && l["model_connect_ms"].is_u64(),
        "{l}"
    );
    assert!(
        l.get("caller").is_none(),
        "no caller number unless asked: {l}"
    );
    assert!(!l.to_string().contains("+1555"), "{l}");
    rig.stop();
}

#[test]
fn the_summary_line_carries_the_caller_number_only_when_the_operator_opts_in() {
    capture_summaries();
    let rig = Rig::start_with(
        FakeModelConfig {
            script: vec![Reply::say("Hello.", 300)],
            ..Default::default()
        },
        || Agent::new("Assistant", "Be brief."),
        |cfg| cfg.log_caller_number = true,
    );
    let report = run(
        &rig,
        "CA0000000000000000000000000000a002",
        common::short_call(),
    );
    assert_eq!(report.played_ms(), 300);
    let lines = summaries(&report.call_sid);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["caller"], "+15550100");
    rig.stop();
}

const QUEUED_TO_MODEL: &str = "twilio_realtime_queued_bytes{peer=\"model\"}";
const QUEUED_TO_TWILIO: &str = "twilio_realtime_queued_bytes{peer=\"twilio\"}";

/// A model that stops reading 500 ms into its connection (its TCP window closes once the
/// kernel buffers are full: a 16 KiB send buffer on the bridge's side, `stalled_socket`, ~3 s
/// of caller audio).
fn stalled_model() -> FakeModelConfig {
    FakeModelConfig {
        faults: Faults {
            stall_reads: Some((Duration::from_millis(500), Duration::from_secs(60))),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The bridge's side of the stalled model's connection.
fn stalled_socket(ws: &mut WsConfig) {
    ws.send_buffer_size = Some(16 * 1024);
    // Not given up by the write-timeout rule while the test looks: the caller hangs up.
    ws.write_timeout = Duration::from_secs(60);
}

/// A caller who talks, then stays on the line for 8 s (sending silence), then hangs up: the
/// appends keep coming (about 13 KB a second).
fn caller_on_the_line(addr: SocketAddr, call_sid: &str) -> std::thread::JoinHandle<CallReport> {
    let mut cfg = TwilioCallConfig::new(
        addr,
        vec![
            Segment::Speech(600),
            Segment::Silence(8_000),
            Segment::HangUp,
        ],
    );
    cfg.call_sid = Some(call_sid.into());
    cfg.max_duration = Duration::from_secs(30);
    std::thread::spawn(move || TwilioCall::run(cfg).expect("call runs"))
}

/// Reads the exposition text until bytes are queued toward the model (within 7 s); nothing
/// piles up toward Twilio, which reads. Returns how many.
fn queued_toward_the_model(mut exposition: impl FnMut() -> String) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(7);
    loop {
        let text = exposition();
        let queued = sample(&text, QUEUED_TO_MODEL).unwrap_or(0.0);
        if queued > 0.0 {
            assert_eq!(sample(&text, QUEUED_TO_TWILIO), Some(0.0), "{text}");
            return queued;
        }
        assert!(
            Instant::now() < deadline,
            "no queued bytes toward the stalled model:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_queued_bytes_gauge_shows_caller_audio_piling_up_behind_a_model_that_stopped_reading() {
    // The caller keeps talking, so the appends pile up in the bridge.
    let rig = Rig::start_with(
        stalled_model(),
        || Agent::new("Assistant", "Be brief."),
        |cfg| stalled_socket(&mut cfg.session.model.ws),
    );
    let addr = rig.addr;
    let call = caller_on_the_line(addr, "CA0000000000000000000000000000a003");
    let first = queued_toward_the_model(|| metrics(addr));
    // The caller still talks: it keeps growing.
    std::thread::sleep(Duration::from_millis(1000));
    let later = sample(&metrics(addr), QUEUED_TO_MODEL).unwrap_or(0.0);
    eprintln!("queued toward the stalled model: {first} bytes, 1 s later {later}");
    assert!(later >= first + 5_000.0, "{first} -> {later}");
    let report = call.join().unwrap();
    assert!(!report.closed_by_bridge, "{:?}", report.timeline);
    // The call ends without waiting for the stalled model's write timeout: closing its
    // socket gives the writes stuck behind it the close timeout (1 s).
    rig.wait_idle();
    let text = metrics(addr);
    assert_eq!(sample(&text, QUEUED_TO_MODEL), Some(0.0), "{text}");
    assert_eq!(sample(&text, QUEUED_TO_TWILIO), Some(0.0), "{text}");
    rig.stop();
}

/// An application that runs its own sessions (no bundled server) gets the same gauge: its
/// `CallMeter` watches the call's `QueueGauge`, read whenever the metrics are encoded (also
/// through the application's own registry), until the meter is finished or dropped.
#[test]
fn a_call_meter_feeds_the_queued_bytes_gauge_of_an_embedded_call_until_it_ends() {
    let model = FakeModel::start(stalled_model()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let call = caller_on_the_line(
        listener.local_addr().unwrap(),
        "CA0000000000000000000000000000a005",
    );
    let (tcp, _) = listener.accept().unwrap();
    let (twilio, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
    let mut opts = SessionConfig::new(Some("sk-test".into())).url(model.url());
    stalled_socket(&mut opts.model.ws);
    let session = Session::start(twilio, Agent::new("Assistant", "Be brief."), opts).unwrap();

    let metrics = Metrics::new();
    let mut own = prometheus_client::registry::Registry::default();
    metrics.register_into(&mut own);
    let own_text = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &own).unwrap();
        text
    };
    assert_eq!(sample(&metrics.encode(), QUEUED_TO_MODEL), Some(0.0));
    let mut meter = metrics.start_call(Instant::now());
    meter.watch_queues(session.queue_gauge());
    queued_toward_the_model(|| metrics.encode());
    queued_toward_the_model(own_text);

    // The meter goes (here dropped: the application's loop ended early): its call no longer
    // counts, though its bytes are still queued.
    drop(meter);
    assert!(session.queue_gauge().to_model() > 0);
    assert_eq!(sample(&metrics.encode(), QUEUED_TO_MODEL), Some(0.0));
    assert_eq!(sample(&own_text(), QUEUED_TO_MODEL), Some(0.0));

    // The ordinary loop: watch, observe the events until the call closes, finish.
    let mut meter = metrics.start_call(Instant::now());
    meter.watch_queues(session.queue_gauge());
    assert!(sample(&metrics.encode(), QUEUED_TO_MODEL).unwrap_or(0.0) > 0.0);
    while let Ok(event) = session.events().recv_timeout(Duration::from_secs(20)) {
        meter.observe(&event);
        if matches!(event, SessionEvent::Closed { .. }) {
            break;
        }
    }
    meter.finish(&session);
    let text = metrics.encode();
    assert_eq!(sample(&text, QUEUED_TO_MODEL), Some(0.0), "{text}");
    assert!(text.contains("twilio_realtime_calls_active 0"), "{text}");
    call.join().unwrap();
    session.join();
}

#[test]
fn bad_input_is_counted_by_peer_and_kind_without_the_peers_text() {
    capture_summaries();
    // 150 ms into the model connection: a frame that is not JSON, and an `error` event in the
    // shape the API sends (spec: RealtimeServerEventError); the call goes on.
    let at = Duration::from_millis(150);
    let error = r#"{"type":"error","event_id":"ev_1","error":{"type":"invalid_request_error","code":"invalid_value","message":"Something +15550100 was wrong.","param":null,"event_id":null}}"#;
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![Reply::say("Hello.", 300)],
            faults: Faults {
                raw: vec![(at, "not json at all".into()), (at, error.into())],
                ..Default::default()
            },
            ..Default::default()
        },
        || Agent::new("Assistant", "Be brief."),
    );
    let report = run(
        &rig,
        "CA0000000000000000000000000000a004",
        common::short_call(),
    );
    assert_eq!(report.played_ms(), 300, "the call went on");
    let text = metrics(rig.addr);
    for (name, value) in [
        (
            "twilio_realtime_bad_input_total{peer=\"model\",kind=\"bad_event\"}",
            1.0,
        ),
        (
            "twilio_realtime_bad_input_total{peer=\"model\",kind=\"error_event\"}",
            1.0,
        ),
        (
            "twilio_realtime_calls_total{reason=\"twilio_stopped\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    assert!(!text.contains("peer=\"twilio\",kind"), "{text}");
    assert!(
        !text.contains("invalid_value") && !text.contains("+1555"),
        "the peer's text in a label:\n{text}"
    );
    let lines = summaries(&report.call_sid);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (
            lines[0]["bad_model"].as_u64(),
            lines[0]["bad_twilio"].as_u64()
        ),
        (Some(2), Some(0))
    );
    rig.stop();
}
