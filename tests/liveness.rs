//! Liveness through the real server (issue 10 §4, §5, §7): dead peers are noticed, panics end
//! only their own call, and a model that stops reading never delays Twilio. Kept in its own
//! test binary: some cases count the process's threads and fds, so they run one at a time.

mod common;

use std::net::TcpListener;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Rig};
use twilio_realtime::agent::Agent;
use twilio_realtime::events::CloseReason;
use twilio_realtime::sim::fake_model::FakeModelConfig;
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn agent() -> Agent {
    Agent::new("Front", "You answer calls.")
}

fn quick(rig: &Rig, script: Vec<Segment>) -> twilio_realtime::sim::twilio_call::CallReport {
    let mut cfg = TwilioCallConfig::new(rig.addr, script);
    cfg.one_way_delay = Duration::from_millis(2);
    cfg.jitter = Duration::ZERO;
    cfg.keep_audio = false;
    TwilioCall::run(cfg).expect("call")
}

// ---------------------------------------------------------------------------------------------
// §5 Dead peers

#[test]
fn a_twilio_stream_that_goes_silent_ends_the_call_and_closes_the_model() {
    let _s = serial();
    let rig = Rig::start_with(FakeModelConfig::default(), agent, |cfg| {
        cfg.session.call.twilio_silence_timeout = Duration::from_secs(1);
    });
    // The caller's network goes quiet without closing the socket (a half-open peer).
    let started = Instant::now();
    let report = quick(
        &rig,
        vec![Segment::Silence(300), Segment::Gap(5000), Segment::HangUp],
    );
    assert!(report.closed_by_bridge, "{:?}", report.timeline);
    let took = started.elapsed();
    rig.wait_idle();
    assert_eq!(rig.closed(), vec![CloseReason::TwilioSilent]);
    // ended by the 1 s rule, not by the caller's hang-up after the 5 s gap
    assert!(took < Duration::from_secs(4), "took {took:?}");
    wait_until("the model socket closed", Duration::from_secs(5), || {
        rig.model.recording().closed_by_client == 1
    });
    rig.stop();
}

#[test]
fn a_quiet_model_that_answers_pings_keeps_the_call() {
    let _s = serial();
    let rig = Rig::start_with(FakeModelConfig::default(), agent, |cfg| {
        cfg.session.call.model_ping_interval = Duration::from_millis(200);
        cfg.session.call.model_pong_timeout = Duration::from_millis(300);
    });
    // The caller is silent for 2 s: the fake model sends nothing unless pinged.
    let report = quick(&rig, vec![Segment::Silence(2000), Segment::HangUp]);
    assert!(!report.closed_by_bridge, "{:?}", report.timeline);
    rig.wait_idle();
    assert_eq!(rig.closed(), vec![CloseReason::TwilioStopped]);
    rig.stop();
}

/// A model endpoint that completes the WebSocket handshake and then neither reads nor writes
/// (a half-open peer: its host vanished, the TCP connection was never closed).
fn black_hole_model() -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let ws = tungstenite::accept(tcp).unwrap();
        // hold the socket open, never read (no pong ever goes back)
        thread::sleep(Duration::from_secs(3));
        drop(ws);
    });
    (format!("ws://{addr}/v1/realtime?model=gpt-realtime"), h)
}

#[test]
fn a_model_that_answers_no_ping_is_lost() {
    let _s = serial();
    let (url, hole) = black_hole_model();
    let rig = Rig::start_with(FakeModelConfig::default(), agent, move |cfg| {
        cfg.session.model.url = url;
        cfg.session.call.model_ping_interval = Duration::from_millis(300);
        cfg.session.call.model_pong_timeout = Duration::from_millis(300);
    });
    let started = Instant::now();
    let report = quick(&rig, vec![Segment::Silence(5000), Segment::HangUp]);
    assert!(report.closed_by_bridge, "{:?}", report.timeline);
    let took = started.elapsed();
    rig.wait_idle();
    match rig.closed().as_slice() {
        [CloseReason::ModelDisconnected(why)] => assert!(why.contains("pong"), "{why}"),
        other => panic!("expected a model loss, got {other:?}"),
    }
    assert!(took < Duration::from_secs(4), "took {took:?}");
    rig.stop();
    hole.join().unwrap();
}
