//! Calls and connections leave no thread behind. Kept in its own test binary: the thread
//! count of the process is the measurement, so nothing else may run beside it.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::Rig;
use twilio_realtime::agent::Agent;
use twilio_realtime::sim::fake_model::{FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};

fn threads() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn settle(target: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads() > target && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    threads()
}

#[test]
fn a_hundred_calls_in_a_row_leave_no_thread_behind() {
    let _serial = SERIAL.lock().unwrap();
    // The agent greets every caller (the model never speaks first).
    let rig = Rig::start_with(
        FakeModelConfig {
            default_reply: Reply::say("Hi.", 200),
            ..Default::default()
        },
        || Agent::new("A", "x"),
        common::greet,
    );
    // one call to warm up (lazy statics, the fake model's first connection thread)
    let run = |n| {
        for _ in 0..n {
            let mut cfg =
                TwilioCallConfig::new(rig.addr, vec![Segment::Silence(60), Segment::HangUp]);
            cfg.one_way_delay = Duration::from_millis(1);
            cfg.jitter = Duration::ZERO;
            cfg.keep_audio = false;
            TwilioCall::run(cfg).unwrap();
            rig.wait_idle();
        }
    };
    run(1);
    thread::sleep(Duration::from_millis(300));
    let baseline = threads();
    run(100);
    let after = settle(baseline);
    eprintln!("threads: baseline {baseline}, after 100 calls {after}");
    assert!(after <= baseline, "threads leaked: {baseline} -> {after}");
    rig.stop();
}

#[test]
fn fifty_websocket_connections_leave_no_thread_behind() {
    use std::net::TcpListener;
    use tungstenite::Message;
    use twilio_realtime::io::ws::{ClientRequest, Incoming, WsConfig, WsConn};
    let _serial = SERIAL.lock().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::sleep(Duration::from_millis(100));
    let baseline = threads();
    for _ in 0..50 {
        let server = thread::spawn({
            let l = listener.try_clone().unwrap();
            move || {
                let (tcp, _) = l.accept().unwrap();
                let (c, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
                c.spawn_channel("sv").unwrap()
            }
        });
        let client = WsConn::connect(
            &ClientRequest::new(format!("ws://{addr}/")),
            &WsConfig::default(),
        )
        .unwrap();
        let (client, _crx) = client.spawn_channel("cl").unwrap();
        let (server, srx) = server.join().unwrap();
        client.sender().send(Message::text("hi")).unwrap();
        assert!(matches!(
            srx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Incoming::Text(_)
        ));
        server.close();
        server.join();
        client.join();
    }
    let after = settle(baseline);
    eprintln!("threads: baseline {baseline}, after 50 connections {after}");
    assert!(after <= baseline, "threads leaked: {baseline} -> {after}");
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
