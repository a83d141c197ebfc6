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
use twilio_realtime::io::ws::WsError;
use twilio_realtime::sim::fake_model::FakeModelConfig;
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::CallError;

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
    assert!(
        matches!(
            rig.closed()[..],
            [CloseReason::Error(CallError::TwilioSilent { .. })]
        ),
        "{:?}",
        rig.closed()
    );
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
        [CloseReason::Error(CallError::ModelUnresponsive { waited })] => {
            assert!(*waited < Duration::from_secs(4), "{waited:?}")
        }
        other => panic!("expected a model loss, got {other:?}"),
    }
    assert!(took < Duration::from_secs(4), "took {took:?}");
    rig.stop();
    hole.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// §4 A panic ends one call, never wedges it

use std::sync::Arc;
use twilio_realtime::agent::{FunctionTool, OutputGuardrail};
use twilio_realtime::events::SessionEvent;
use twilio_realtime::sim::chaos::ProcessStats;
use twilio_realtime::sim::fake_model::{FakeModel, Reply};

/// Runs `f` after a warm-up call and checks that threads and descriptors come back.
fn no_leaks(rig: &Rig, f: impl FnOnce()) {
    quick(rig, vec![Segment::Silence(100), Segment::HangUp]);
    rig.wait_idle();
    thread::sleep(Duration::from_millis(300));
    let baseline = ProcessStats::now().unwrap();
    f();
    rig.wait_idle();
    let after = ProcessStats::settle(&baseline, Duration::from_secs(10)).unwrap();
    eprintln!(
        "threads {} -> {}, fds {} -> {}",
        baseline.threads, after.threads, baseline.fds, after.fds
    );
    assert!(
        after.threads <= baseline.threads,
        "{baseline:?} -> {after:?}"
    );
    assert!(after.fds <= baseline.fds, "{baseline:?} -> {after:?}");
}

fn talk() -> Vec<Segment> {
    vec![
        Segment::Silence(200),
        Segment::Speech(700),
        Segment::WaitForAgent {
            quiet_ms: 400,
            timeout_ms: 8000,
        },
        Segment::HangUp,
    ]
}

fn agent_with_a_panicking_tool() -> Agent {
    let boom = FunctionTool::new(
        "boom",
        "Always fails.",
        serde_json::json!({"type":"object"}),
        |_| panic!("tool bug"),
    );
    agent().tool(boom)
}

#[test]
fn a_panicking_tool_is_an_error_output_and_the_call_goes_on() {
    let _s = serial();
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![
                Reply::call("boom", "{}"),
                Reply::say("Sorry, that did not work.", 600),
            ],
            ..Default::default()
        },
        agent_with_a_panicking_tool,
    );
    let mut report = None;
    no_leaks(&rig, || report = Some(quick(&rig, talk())));
    let report = report.unwrap();
    let rec = rig.model.recording();
    assert_eq!(rec.function_outputs.len(), 1, "{:?}", rec.function_outputs);
    assert_eq!(rec.function_outputs[0].1, "Error: tool boom panicked");
    assert_eq!(
        report.played_ms(),
        600,
        "the answer after the failed tool played"
    );
    let ev = rig.events();
    assert!(ev
        .iter()
        .any(|e| matches!(e, SessionEvent::ToolEnd { is_error: true, .. })));
    assert_eq!(rig.closed(), vec![CloseReason::TwilioStopped; 2]);
    rig.stop();
}

fn agent_with_a_panicking_guardrail() -> Agent {
    agent().output_guardrail(OutputGuardrail::new("buggy", |_: &str| {
        panic!("guardrail bug")
    }))
}

#[test]
fn a_panicking_guardrail_counts_as_passed() {
    let _s = serial();
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![Reply::say("Hello, how can I help you today?", 600)],
            ..Default::default()
        },
        agent_with_a_panicking_guardrail,
    );
    let mut report = None;
    no_leaks(&rig, || report = Some(quick(&rig, talk())));
    let report = report.unwrap();
    assert_eq!(report.played_ms(), 600, "not cut: the guardrail passed");
    let ev = rig.events();
    assert!(!ev
        .iter()
        .any(|e| matches!(e, SessionEvent::GuardrailTripped { .. })));
    assert_eq!(rig.closed(), vec![CloseReason::TwilioStopped; 2]);
    rig.stop();
}

#[test]
fn a_panic_on_the_session_thread_ends_only_that_call() {
    let _s = serial();
    // The start check runs on the session thread; this one panics on the second call.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rig = Rig::start_with(FakeModelConfig::default(), agent, |cfg| {
        cfg.stream_token_ttl = None;
        cfg.session.start_check = Some(Arc::new(move |_, _| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                panic!("start check bug");
            }
            Ok(())
        }));
    });
    let mut report = None;
    no_leaks(&rig, || {
        report = Some(quick(&rig, vec![Segment::Silence(3000), Segment::HangUp]))
    });
    let report = report.unwrap();
    assert!(report.closed_by_bridge, "{:?}", report.timeline);
    let closed = rig.closed();
    assert_eq!(closed.len(), 2);
    assert!(
        matches!(&closed[1], CloseReason::Error(CallError::Panicked { message: why }) if why.starts_with("session thread:") && why.contains("start check bug")),
        "{closed:?}"
    );
    // the check panicked before the model connection opened (it opens after the check)
    wait_until("every model socket closed", Duration::from_secs(5), || {
        let r = rig.model.recording();
        r.connections == 1 && r.closed_by_client == 1
    });
    // the server still takes calls
    quick(&rig, vec![Segment::Silence(100), Segment::HangUp]);
    rig.wait_idle();
    assert_eq!(rig.closed()[2], CloseReason::TwilioStopped);
    rig.stop();
}

#[test]
fn a_panicking_event_hook_ends_only_that_call_and_shutdown_is_not_stalled() {
    use twilio_realtime::server::{Server, ServerConfig};
    let _s = serial();
    let model = FakeModel::start(FakeModelConfig::default()).unwrap();
    let mut cfg = ServerConfig::from_env();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.public_url = None;
    cfg.twilio_auth_token = None;
    cfg.stream_token_ttl = None;
    cfg.session.model.url = model.url();
    cfg.shutdown_grace = Duration::from_secs(5);
    let closed = Arc::new(Mutex::new(Vec::new()));
    let seen = closed.clone();
    let panics_left = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let server = Server::bind(cfg, Arc::new(agent))
        .unwrap()
        .on_event(Arc::new(move |n, e: &SessionEvent| {
            if let SessionEvent::Closed { reason } = e {
                seen.lock().unwrap().push((n, reason.clone()));
            } else if n == 2
                && panics_left
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |v| v.checked_sub(1),
                    )
                    .is_ok()
            {
                panic!("hook bug");
            }
        }));
    let addr = server.local_addr();
    let stopper = server.stopper();
    let running = thread::spawn(move || server.run());
    let call = move |ms| {
        let mut c = TwilioCallConfig::new(addr, vec![Segment::Silence(ms), Segment::HangUp]);
        c.one_way_delay = Duration::from_millis(2);
        c.jitter = Duration::ZERO;
        TwilioCall::run(c).unwrap()
    };
    call(100);
    wait_until("call 1 over", Duration::from_secs(5), || {
        stopper.live_calls() == 0
    });
    thread::sleep(Duration::from_millis(300));
    let baseline = ProcessStats::now().unwrap();
    let report = call(3000);
    assert!(report.closed_by_bridge, "{:?}", report.timeline);
    wait_until("call 2 over", Duration::from_secs(5), || {
        stopper.live_calls() == 0
    });
    let after = ProcessStats::settle(&baseline, Duration::from_secs(10)).unwrap();
    assert!(
        after.threads <= baseline.threads,
        "{baseline:?} -> {after:?}"
    );
    assert!(after.fds <= baseline.fds, "{baseline:?} -> {after:?}");
    {
        let c = closed.lock().unwrap();
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(
            matches!(&c[1], (2, CloseReason::Error(CallError::Panicked { message: why })) if why.starts_with("event hook:")),
            "{c:?}"
        );
    }
    // A live call, then stop: the server's shutdown is not held up by the earlier panic.
    let live = thread::spawn(move || call(1000));
    wait_until("call 3 live", Duration::from_secs(5), || {
        stopper.live_calls() == 1
    });
    let t = Instant::now();
    stopper.stop();
    running.join().unwrap().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        t.elapsed()
    );
    live.join().unwrap();
}

#[test]
fn a_panicking_socket_handler_closes_only_its_connection() {
    use twilio_realtime::io::ws::{ClientRequest, Incoming, WsConfig, WsConn, WsError};
    let _s = serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::sleep(Duration::from_millis(100));
    let baseline = ProcessStats::now().unwrap();
    for _ in 0..5 {
        let server = thread::spawn({
            let l = listener.try_clone().unwrap();
            move || {
                let (tcp, _) = l.accept().unwrap();
                let (c, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
                let (tx, rx) = crossbeam_channel::unbounded();
                let d = c
                    .spawn("sv", move |m| match m {
                        Incoming::Text(_) => panic!("handler bug"),
                        other => {
                            let _ = tx.send(other);
                        }
                    })
                    .unwrap();
                (d, rx)
            }
        });
        let client = WsConn::connect(
            &ClientRequest::new(format!("ws://{addr}/")),
            &WsConfig::default(),
        )
        .unwrap();
        let (client, crx) = client.spawn_channel("cl").unwrap();
        let (server, srx) = server.join().unwrap();
        client
            .sender()
            .send(tungstenite::Message::text("hi"))
            .unwrap();
        // the handler hears why, last
        match srx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Incoming::Error(WsError::HandlerPanicked(m)) => assert_eq!(m, "handler bug"),
            other => panic!("{other:?}"),
        }
        // the peer gets 1011
        match crx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Incoming::Closed(Some(c)) => assert_eq!(c.code, 1011),
            other => panic!("{other:?}"),
        }
        server.join();
        client.join();
    }
    let after = ProcessStats::settle(&baseline, Duration::from_secs(10)).unwrap();
    assert!(
        after.threads <= baseline.threads,
        "{baseline:?} -> {after:?}"
    );
    assert!(after.fds <= baseline.fds, "{baseline:?} -> {after:?}");
}

// ---------------------------------------------------------------------------------------------
// §7 No lock across blocking I/O on the audio path

#[test]
fn a_model_that_stops_reading_never_delays_the_clear_and_the_call_ends_by_the_write_timeout() {
    use twilio_realtime::sim::fake_model::Faults;
    let _s = serial();
    // The caller asks, the agent answers with 20 s of audio sent in real time; 1.5 s after the
    // connection opened the model stops reading: with a 16 KiB send buffer on the bridge's
    // model socket its window closes ~2.5 s later while caller audio keeps coming (measured).
    // At 6.5 s it reports that the caller spoke (it heard it before it stalled); the model
    // socket's 5 s write timeout runs from the moment it filled. With a lock held across the
    // blocked write (the bug this guards against) the clear waited ~3.3 s and the agent's
    // audio stopped reaching Twilio.
    let stall_at = Duration::from_millis(1500);
    let barge_at = Duration::from_millis(6_500);
    let speech_started = r#"{"type":"input_audio_buffer.speech_started","event_id":"ev_stall","audio_start_ms":1200,"item_id":"item_caller_2"}"#;
    let rig = Rig::start_with(
        FakeModelConfig {
            script: vec![Reply::say("A very long answer.", 20_000)],
            audio_speed: 1.0,
            faults: Faults {
                stall_reads: Some((stall_at, Duration::from_secs(30))),
                raw: vec![(barge_at, speech_started.to_owned())],
                ..Default::default()
            },
            ..Default::default()
        },
        agent,
        |cfg| {
            cfg.session.model.ws.write_timeout = Duration::from_secs(5);
            cfg.session.model.ws.send_buffer_size = Some(16 * 1024);
            cfg.session.call.twilio_silence_timeout = Duration::from_secs(30);
        },
    );
    let t0 = Instant::now();
    let mut call = TwilioCallConfig::new(
        rig.addr,
        vec![
            Segment::Speech(600),
            Segment::Silence(20_000),
            Segment::HangUp,
        ],
    );
    call.one_way_delay = Duration::from_millis(2);
    call.jitter = Duration::ZERO;
    call.keep_audio = false;
    let report = TwilioCall::run(call).expect("call");
    rig.wait_idle();
    let rec = rig.model.recording();
    // When the model's connection started, on the test's clock: its first client event.
    let model_t0 = rec.events.first().expect("a session.update").0;
    let barge = model_t0 + barge_at;
    let clear = report.clears.first().expect("a clear reached twilio");
    let clear_at = t0 + clear.at;
    let delay = clear_at.saturating_duration_since(barge);
    eprintln!(
        "clear reached twilio {:.1} ms after the model reported the barge-in (model stalled {:?} earlier)",
        delay.as_secs_f64() * 1000.0,
        barge_at - stall_at
    );
    // The point: not held behind the 4 s write timeout of the stalled model socket.
    assert!(delay < Duration::from_secs(1), "clear delayed {delay:?}");
    assert!(clear.dropped_bytes > 0, "the clear cut playing audio");
    // Then the write-timeout rule ends the call (the model socket is given up).
    match rig.closed().as_slice() {
        [CloseReason::Error(CallError::ModelDisconnected {
            cause: Some(why), ..
        })] => {
            assert!(
                matches!(why.downcast_ref::<WsError>(), Some(WsError::WriteTimeout)),
                "{why}"
            )
        }
        other => panic!("expected the model's write timeout, got {other:?}"),
    }
    assert!(report.closed_by_bridge, "{:?}", report.timeline);
    assert!(
        report.duration < Duration::from_secs(15),
        "ended by the rule, not the hang-up: {:?}",
        report.duration
    );
    rig.stop();
}

#[test]
fn a_tool_approval_nobody_gives_is_rejected_after_the_deadline_and_the_call_goes_on() {
    let _s = serial();
    fn agent_with_a_guarded_tool() -> Agent {
        let refund = FunctionTool::new(
            "refund",
            "Refunds the last order.",
            serde_json::json!({"type":"object"}),
            |_| Ok("refunded".into()),
        )
        .needs_approval(true);
        agent().tool(refund)
    }
    let rig = Rig::start_with(
        FakeModelConfig {
            script: vec![
                Reply::call("refund", "{}"),
                Reply::say("Sorry, I could not do that.", 600),
            ],
            ..Default::default()
        },
        agent_with_a_guarded_tool,
        |cfg| cfg.session.call.approval_timeout = Duration::from_millis(500),
    );
    // The application (the rig's hook) never approves or rejects.
    let report = quick(&rig, talk());
    rig.wait_idle();
    let rec = rig.model.recording();
    assert_eq!(
        rec.function_outputs
            .iter()
            .map(|(_, o)| o.as_str())
            .collect::<Vec<_>>(),
        vec![twilio_realtime::call::APPROVAL_TIMEOUT_OUTPUT]
    );
    assert_eq!(
        report.played_ms(),
        600,
        "the model answered after the rejection"
    );
    let ev = rig.events();
    assert!(ev.iter().any(
        |e| matches!(e, SessionEvent::ToolApprovalRequested { tool, .. } if tool == "refund")
    ));
    assert!(
        !ev.iter()
            .any(|e| matches!(e, SessionEvent::ToolStart { .. })),
        "the tool never ran"
    );
    assert_eq!(rig.closed(), vec![CloseReason::TwilioStopped]);
    rig.stop();
}
