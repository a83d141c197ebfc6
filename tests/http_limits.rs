//! The HTTP side of the server under hostile clients: an overall deadline on request heads, a
//! cap on open connections (503 beyond it, live calls untouched), and no secret in `Debug`
//! output or transport events.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Rig};
use tungstenite::Message;
use twilio_realtime::agent::Agent;
use twilio_realtime::events::{SessionEvent, TransportEvent};
use twilio_realtime::io::ws::{ClientRequest, WsConfig, WsConn};
use twilio_realtime::session::SessionConfig;
use twilio_realtime::sim::fake_model::FakeModelConfig;

const SID: &str = "MZ00000000000000000000000000000001";

fn agent() -> Agent {
    Agent::new("Front", "You answer calls.")
}

fn read_all(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_client_dribbling_its_head_is_closed_when_the_overall_deadline_passes() {
    let rig = Rig::start_with(FakeModelConfig::default(), agent, |cfg| {
        cfg.header_timeout = Duration::from_millis(600);
    });
    let addr = rig.addr;
    let sent = Arc::new(AtomicUsize::new(0));
    let mut conn = TcpStream::connect(addr).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let counter = sent.clone();
    // One byte every 100 ms, 100 bytes: every single read is quick, the head takes 10 s.
    let dribbler = std::thread::spawn(move || {
        let head = format!("GET /healthz HTTP/1.1\r\nX-Slow: {}", "a".repeat(200));
        for b in head.bytes().take(100) {
            if writer.write_all(&[b]).is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let resp = read_all(&mut conn);
    let at = sent.load(Ordering::SeqCst);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(
        at < 50,
        "closed only after {at} of 100 bytes: the deadline is per read, not overall"
    );
    drop(conn);
    dribbler.join().unwrap();
    rig.stop();
}

fn upgrade(addr: SocketAddr) -> twilio_realtime::io::ws::Duplex {
    let req = ClientRequest::new(format!("ws://{addr}/media-stream"));
    WsConn::connect(&req, &WsConfig::default())
        .expect("upgrade")
        .spawn("raw-twilio", |_| {})
        .unwrap()
}

fn start_json(token: &str) -> String {
    format!(
        r#"{{"event":"start","sequenceNumber":"1","streamSid":"{SID}","start":{{"accountSid":"AC1","streamSid":"{SID}","callSid":"CA1","tracks":["inbound"],"customParameters":{{"caller":"+15550100","token":"{token}"}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
    )
}

fn media_json(ts: u64) -> String {
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD.encode([0xFEu8; 160]);
    format!(
        r#"{{"event":"media","sequenceNumber":"{}","streamSid":"{SID}","media":{{"track":"inbound","chunk":"{}","timestamp":"{ts}","payload":"{payload}"}}}}"#,
        ts / 20 + 2,
        ts / 20 + 1
    )
}

#[test]
fn connections_over_the_cap_get_503_at_once_and_the_live_call_goes_on() {
    let rig = Rig::start_with(FakeModelConfig::default(), agent, |cfg| {
        cfg.max_connections = 3;
        cfg.header_timeout = Duration::from_secs(30);
    });
    let addr = rig.addr;
    let call = upgrade(addr);
    call.sender().send(Message::text(start_json("x"))).unwrap();
    call.sender().send(Message::text(media_json(0))).unwrap();
    wait_until("first frame forwarded", Duration::from_secs(10), || {
        rig.model.recording().appended_bytes >= 160
    });
    // Two clients that connect and send nothing fill the cap.
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until("3 connections open", Duration::from_secs(5), || {
        rig.stopper.open_connections() == 3
    });
    // The next one is refused at once, before it sends anything.
    let mut extra = TcpStream::connect(addr).unwrap();
    let resp = read_all(&mut extra);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp:?}");
    assert!(resp.contains("Retry-After: 1"), "{resp:?}");
    // The live call is untouched: its audio still reaches the model.
    for i in 1..=10 {
        call.sender()
            .send(Message::text(media_json(i * 20)))
            .unwrap();
    }
    wait_until("the live call forwards on", Duration::from_secs(10), || {
        rig.model.recording().appended_bytes >= 11 * 160
    });
    assert!(rig.closed().is_empty(), "{:?}", rig.closed());
    // Freed slots take new connections again.
    drop(idle);
    wait_until("idle connections gone", Duration::from_secs(5), || {
        rig.stopper.open_connections() == 1
    });
    let mut ok = TcpStream::connect(addr).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_all(&mut ok).starts_with("HTTP/1.1 200"));
    call.close();
    rig.wait_idle();
    let stats = rig.stop();
    assert_eq!(stats.busy, 1, "{stats:?}");
}

#[test]
fn the_stream_token_never_reaches_a_transport_event() {
    let rig = Rig::start(FakeModelConfig::default(), agent);
    let call = upgrade(rig.addr);
    let token = "f00dfacecafe0123456789abcdef0000";
    call.sender()
        .send(Message::text(start_json(token)))
        .unwrap();
    wait_until("start reported", Duration::from_secs(10), || {
        rig.events().iter().any(|e| {
            matches!(e, SessionEvent::Transport(TransportEvent::TwilioMessage(m)) if m.contains("\"start\""))
        })
    });
    call.close();
    rig.wait_idle();
    let starts: Vec<String> = rig
        .events()
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Transport(TransportEvent::TwilioMessage(m))
                if m.contains("\"start\"") =>
            {
                Some(m)
            }
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert!(!starts[0].contains(token), "{}", starts[0]);
    assert!(starts[0].contains("+15550100"), "{}", starts[0]);
    assert!(starts[0].contains("<redacted>"), "{}", starts[0]);
    let all = format!("{:?}", rig.events());
    assert!(!all.contains(token), "the token is in an event");
    rig.stop();
}

#[test]
fn debug_output_shows_no_keys() {
    let req = ClientRequest::new("wss://x.example/realtime?deployment=d&api-key=AZ-SECRET")
        .bearer("sk-BEARER")
        .header("api-key", "AZ-HEADER")
        .header("OpenAI-Project", "proj_visible");
    let shown = format!("{req:?}");
    for secret in ["AZ-SECRET", "sk-BEARER", "AZ-HEADER"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("deployment=d") && shown.contains("proj_visible"),
        "{shown}"
    );
    let opts = SessionConfig::new(Some("sk-OPTS".into()))
        .url("wss://x.example/realtime?api-key=AZ-URL&deployment=d");
    let shown = format!("{opts:?}");
    for secret in ["sk-OPTS", "AZ-URL"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // A bad URL's error message does not echo its key either.
    let err = WsConn::connect(
        &ClientRequest::new("nope://x?api-key=AZ-ERR"),
        &WsConfig::default(),
    )
    .expect_err("a bad url fails");
    assert!(!err.to_string().contains("AZ-ERR"), "{err}");
}
