//! `/readyz` flips at capacity (`MAX_CALLS`) and on drain (SIGTERM): at the limit the webhook
//! answers a polite hang-up or a busy reject, a stream that arrives anyway is closed with 1013,
//! and a draining server still takes the streams of webhooks it answered, then exits.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{form_encode, http_request, post_form, wait_until, Rig};
use twilio_realtime::agent::Agent;
use twilio_realtime::server::AtCapacity;
use twilio_realtime::sim::fake_model::{FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, resp) = http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    (
        status,
        resp.split_once("\r\n\r\n")
            .map(|x| x.1.to_owned())
            .unwrap_or_default(),
    )
}

fn webhook(addr: SocketAddr, call_sid: &str) -> String {
    let body = form_encode(&[
        ("CallSid", call_sid),
        ("From", "+15550100"),
        ("To", "+15550199"),
    ]);
    let (status, resp) = post_form(addr, "/incoming-call", &body, None);
    assert_eq!(status, 200, "{resp}");
    resp
}

fn agent() -> Agent {
    Agent::new("Assistant", "Be brief.")
}

fn model() -> FakeModelConfig {
    FakeModelConfig {
        script: vec![Reply::say("Hello there.", 400)],
        ..Default::default()
    }
}

fn call(addr: SocketAddr, call_sid: &str, script: Vec<Segment>) -> TwilioCallConfig {
    let mut cfg = TwilioCallConfig::new(addr, script);
    cfg.call_sid = Some(call_sid.into());
    cfg
}

/// Connects a bare WebSocket to the media stream and returns the close code it gets.
fn close_code_of_a_stream(addr: SocketAddr) -> Option<u16> {
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/media-stream")).ok()?;
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => return frame.map(|f| f.code.into()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[test]
fn at_capacity_the_webhook_says_sorry_readyz_fails_and_a_stream_gets_1013() {
    let rig = Rig::start_with(model(), agent, |cfg| cfg.max_calls = Some(1));
    assert_eq!(get(rig.addr, "/readyz"), (200, "ready\n".into()));
    let twiml = webhook(rig.addr, "CA00000000000000000000000000000001");
    assert!(twiml.contains("<Connect"), "{twiml}");
    // The answered webhook holds the one place until its stream comes.
    assert_eq!(get(rig.addr, "/readyz"), (503, "at capacity\n".into()));
    let refused = webhook(rig.addr, "CA00000000000000000000000000000002");
    assert!(!refused.contains("<Connect"), "{refused}");
    assert!(
        refused.contains("<Say>") && refused.contains("<Hangup/>"),
        "{refused}"
    );
    assert_eq!(get(rig.addr, "/healthz").0, 200, "alive while full");

    // The first call's stream arrives and stays on the line.
    let addr = rig.addr;
    let caller = std::thread::spawn(move || {
        TwilioCall::run(call(addr, "CA00000000000000000000000000000001", {
            let mut s = vec![Segment::Silence(2500)];
            s.extend(common::short_call());
            s
        }))
    });
    wait_until("the call is live", Duration::from_secs(10), || {
        rig.stopper.live_calls() == 1
    });
    assert_eq!(get(rig.addr, "/readyz").0, 503);
    // A stream nobody answered a webhook for, over the limit: closed cleanly, try again later.
    assert_eq!(close_code_of_a_stream(rig.addr), Some(1013));
    let report = caller.join().unwrap().expect("call runs");
    assert_eq!(report.played_ms(), 400, "the live call was not disturbed");
    rig.wait_idle();
    assert_eq!(get(rig.addr, "/readyz"), (200, "ready\n".into()));
    let (_, m) = get(rig.addr, "/metrics");
    assert!(
        m.contains("twilio_realtime_calls_refused_total{where=\"webhook\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("twilio_realtime_calls_refused_total{where=\"stream\"} 1"),
        "{m}"
    );
    rig.stop();
}

#[test]
fn at_capacity_the_webhook_can_reject_busy() {
    let rig = Rig::start_with(model(), agent, |cfg| {
        cfg.max_calls = Some(0);
        cfg.at_capacity = AtCapacity::Reject;
    });
    assert_eq!(get(rig.addr, "/readyz").0, 503);
    let twiml = webhook(rig.addr, "CA00000000000000000000000000000003");
    assert!(twiml.contains(r#"<Reject reason="busy"/>"#), "{twiml}");
    rig.stop();
}

#[test]
fn draining_fails_readyz_serves_the_answered_call_then_exits() {
    let rig = Rig::start(model(), agent);
    let sid = "CA00000000000000000000000000000009";
    webhook(rig.addr, sid);
    rig.stopper.drain();
    assert_eq!(get(rig.addr, "/readyz"), (503, "draining\n".into()));
    assert_eq!(get(rig.addr, "/healthz").0, 200);
    // The stream of the webhook answered before the drain is still taken and served whole.
    let report = TwilioCall::run(call(rig.addr, sid, common::short_call())).expect("call runs");
    assert_eq!(report.played_ms(), 400);
    // No call live or on its way: the server exits by itself.
    wait_until("the drained server exits", Duration::from_secs(10), || {
        TcpStream::connect_timeout(&rig.addr, Duration::from_millis(200)).is_err()
    });
    rig.stop();
}

#[test]
fn a_named_instance_points_its_streams_at_its_own_path_and_serves_them() {
    let rig = Rig::start_with(model(), agent, |cfg| cfg.instance = Some("b7".into()));
    let sid = "CA00000000000000000000000000000007";
    let twiml = webhook(rig.addr, sid);
    let want = format!("wss://{}/media-stream/b7", rig.addr);
    assert!(
        twiml.contains(&format!("<Stream url=\"{want}\">")),
        "{twiml}"
    );
    let mut cfg = call(rig.addr, sid, common::short_call());
    cfg.path = "/media-stream/b7".into();
    let report = TwilioCall::run(cfg).expect("call runs");
    assert_eq!(report.played_ms(), 400);
    rig.stop();
}

#[test]
fn the_admin_port_serves_health_readiness_and_metrics_only() {
    use std::sync::Arc;
    use twilio_realtime::server::{Server, ServerConfig};
    let mut cfg = ServerConfig::new();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.admin_bind = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::bind(cfg, Arc::new(agent)).expect("bind");
    let admin = server.admin_addr().expect("an admin port");
    let (main, stopper) = (server.local_addr(), server.stopper());
    let running = std::thread::spawn(move || server.run());
    assert_eq!(get(admin, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(admin, "/readyz"), (200, "ready\n".into()));
    let (status, m) = get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(m.contains("twilio_realtime_calls_active 0"), "{m}");
    assert_eq!(
        get(admin, "/incoming-call").0,
        404,
        "no call routes on the admin port"
    );
    // A call on its way keeps the draining server up while readiness is asked.
    webhook(main, "CA00000000000000000000000000000005");
    stopper.drain();
    assert_eq!(get(admin, "/readyz"), (503, "draining\n".into()));
    stopper.stop();
    running.join().unwrap().expect("the server stops");
}
