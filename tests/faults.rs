//! Faults on either side, through the real server: the caller is never left in silence, a
//! vanished peer closes the other side, and a Twilio peer that stops reading ends only its own
//! call.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{wait_until, Rig};
use tungstenite::Message;
use twilio_realtime::agent::Agent;
use twilio_realtime::events::CloseReason;
use twilio_realtime::io::ws::{ClientRequest, WsConfig, WsConn, WsError};
use twilio_realtime::sim::fake_model::{FakeModelConfig, Faults, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::CallError;

const SID: &str = "MZ00000000000000000000000000000001";

fn agent() -> Agent {
    Agent::new("Front", "You answer calls.")
}

fn start_json() -> String {
    format!(
        r#"{{"event":"start","streamSid":"{SID}","start":{{"accountSid":"AC1","streamSid":"{SID}","callSid":"CA1","tracks":["inbound"],"customParameters":{{}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
    )
}

fn media_json(ts: u64) -> String {
    format!(
        r#"{{"event":"media","streamSid":"{SID}","media":{{"track":"inbound","chunk":"1","timestamp":"{ts}","payload":"{}"}}}}"#,
        twilio_realtime::proto::mulaw::silence_base64(160)
    )
}

/// A caller who would talk for 5 s; the bridge must end the call instead.
fn caller_left_waiting(rig: &Rig) -> Duration {
    let report = TwilioCall::run(TwilioCallConfig::new(
        rig.addr,
        vec![Segment::Speech(5000), Segment::HangUp],
    ))
    .expect("call");
    assert!(report.closed_by_bridge, "{:?}", report.timeline);
    rig.wait_idle();
    report.duration
}

/// Changes the server config for one case (gets the fake model's URL).
type Tweak = Box<dyn Fn(&mut twilio_realtime::server::ServerConfig, &str)>;

/// A TLS listener with a throw-away self-signed certificate; its port.
fn untrusted_tls() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (acceptor, _) = common::tls_pair();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = acceptor.accept(tcp); // fails: the client rejects the certificate
        }
    });
    port
}

/// What the application must be able to tell apart without reading text.
type Expect = fn(&CallError) -> bool;

#[test]
fn a_model_that_refuses_ends_the_call_at_once_with_a_typed_error() {
    // Connection refused: a port nobody listens on.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let plain = FakeModelConfig::default();
    let cases: Vec<(&str, FakeModelConfig, Tweak, Expect)> = vec![
        (
            "connection refused",
            plain.clone(),
            Box::new(move |cfg: &mut twilio_realtime::server::ServerConfig, _| {
                cfg.session.model.url = format!("ws://{free}/v1/realtime");
            }),
            |e| {
                matches!(e, CallError::ModelUnreachable { cause }
                    if cause.io_kind() == Some(std::io::ErrorKind::ConnectionRefused))
            },
        ),
        (
            // The fake model answers a wrong key as the API does: 401 instead of the upgrade.
            "401",
            FakeModelConfig {
                require_key: Some("sk-the-right-key".into()),
                ..Default::default()
            },
            Box::new(|cfg: &mut twilio_realtime::server::ServerConfig, _| {
                cfg.session.model.api_key = Some("sk-a-wrong-key".into());
            }),
            |e| matches!(e, CallError::ModelRejected { status: 401 }),
        ),
        (
            "tls failure",
            plain.clone(),
            Box::new(move |cfg: &mut twilio_realtime::server::ServerConfig, _| {
                // A TLS server whose certificate nobody trusts.
                cfg.session.model.url = format!("wss://localhost:{}/v1/realtime", untrusted_tls());
            }),
            |e| matches!(e, CallError::ModelTls { .. }),
        ),
        (
            "handshake timeout",
            FakeModelConfig {
                faults: Faults {
                    accept_delay: Duration::from_secs(3),
                    ..Default::default()
                },
                ..Default::default()
            },
            Box::new(|cfg: &mut twilio_realtime::server::ServerConfig, _| {
                cfg.session.model.ws.handshake_timeout = Duration::from_millis(500);
            }),
            |e| matches!(e, CallError::ModelHandshakeTimeout),
        ),
    ];
    for (name, model, tweak, expect) in cases {
        let mut url = String::new();
        let rig = Rig::start_with(model, agent, |cfg| {
            url = cfg.session.model.url.clone();
            tweak(cfg, &url);
        });
        let took = caller_left_waiting(&rig);
        let r = rig.closed_reasons();
        assert!(
            matches!(&r[..], [(_, CloseReason::Error(e))] if expect(e) && e.is_model_connect()),
            "{name}: {r:?}"
        );
        // The same error as an event before `Closed`, with its cause chained.
        let errors = rig.errors();
        assert!(errors.iter().any(expect), "{name}: error events {errors:?}");
        if let Some(CloseReason::Error(e)) = r.first().map(|(_, r)| r) {
            use std::error::Error;
            assert_eq!(e.source().is_some(), e.cause().is_some(), "{name}");
        }
        eprintln!("{name}: the call ended after {took:?}: {:?}", r[0].1);
        assert!(took < Duration::from_secs(2), "{name}: took {took:?}");
        rig.stop();
    }
}

#[test]
fn twilio_vanishing_mid_call_closes_the_model_socket() {
    let rig = Rig::start(FakeModelConfig::default(), agent);
    let req = ClientRequest::new(format!("ws://{}/media-stream", rig.addr));
    let (ws, _rx) = WsConn::connect(&req, &WsConfig::default())
        .unwrap()
        .spawn_channel("raw")
        .unwrap();
    ws.sender().send(Message::text(start_json())).unwrap();
    for i in 0..10 {
        ws.sender().send(Message::text(media_json(i * 20))).unwrap();
    }
    wait_until("caller audio at the model", Duration::from_secs(5), || {
        rig.model.recording().appended_bytes >= 1600
    });
    ws.sender().abort(); // no close frame, no stop: the peer is just gone
    wait_until("the model socket closed", Duration::from_secs(5), || {
        rig.model.recording().closed_by_client == 1
    });
    rig.wait_idle();
    let r = rig.closed_reasons();
    assert!(
        matches!(
            &r[..],
            [(_, CloseReason::Error(CallError::TwilioGone { .. }))]
        ),
        "{r:?}"
    );
    rig.stop();
}

/// A 4 KiB receive buffer, so a peer that stops reading stalls the sender quickly.
fn shrink_receive_buffer(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket and a pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn a_twilio_peer_that_stops_reading_ends_only_its_own_call() {
    // A long greeting sent 300x faster than real time: 7 MB for each caller, more than the
    // kernel's socket buffers and the outbound queue hold.
    let model = FakeModelConfig {
        default_reply: Reply::say("A very long story.", 900_000),
        audio_speed: 300.0,
        ..Default::default()
    };
    let rig = Rig::start_with(model, agent, |cfg| {
        common::greet(cfg);
        cfg.twilio_ws.write_timeout = Duration::from_secs(1);
    });

    // The stuck peer: upgrades, starts, then never reads again.
    let tcp = TcpStream::connect(rig.addr).unwrap();
    shrink_receive_buffer(&tcp);
    let (mut stuck, _) =
        tungstenite::client(format!("ws://{}/media-stream", rig.addr), tcp).unwrap();
    stuck.send(Message::text(start_json())).unwrap();
    wait_until(
        "the stuck call's model session",
        Duration::from_secs(5),
        || rig.model.recording().connections == 1,
    );

    // A healthy call at the same time.
    let healthy = TwilioCall::run(TwilioCallConfig::new(
        rig.addr,
        vec![Segment::Silence(4000), Segment::HangUp],
    ))
    .expect("healthy call");
    let received: u64 = healthy.chunks.iter().map(|c| c.bytes).sum();
    eprintln!(
        "healthy call received {} KiB of agent audio in {:?}",
        received / 1024,
        healthy.duration
    );
    assert!(
        received > 1024 * 1024,
        "the healthy call kept receiving: {received} bytes"
    );
    wait_until("the stuck call to end", Duration::from_secs(20), || {
        rig.closed_reasons().len() == 2
    });
    let r = rig.closed_reasons();
    let stuck_reason = r.iter().find(|(n, _)| *n == 1).map(|(_, r)| r.clone());
    let healthy_reason = r.iter().find(|(n, _)| *n == 2).map(|(_, r)| r.clone());
    assert_eq!(healthy_reason, Some(CloseReason::TwilioStopped), "{r:?}");
    assert!(
        matches!(&stuck_reason, Some(CloseReason::Error(CallError::TwilioGone { cause: Some(cause), .. }))
            if matches!(cause.downcast_ref::<WsError>(), Some(WsError::WriteTimeout | WsError::Protocol(_)))),
        "{r:?}"
    );
    drop(stuck);
    rig.wait_idle();
    rig.stop();
}
