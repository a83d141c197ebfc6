//! A warm model end to end over loopback: with signed webhooks and one-time stream tokens, the
//! server opens the model connection at the webhook and hands it to the stream that presents
//! the token; an unclaimed one is closed when the token's lifetime is over; without tokens
//! nothing is opened before the stream.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{wait_until, Rig};
use twilio_realtime::agent::Agent;
use twilio_realtime::server::signature;
use twilio_realtime::sim::fake_model::{FakeModelConfig, Faults, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};

const TOKEN: &str = "warm-test-auth-token";
const PUBLIC: &str = "https://bridge.example.test";

fn agent() -> Agent {
    Agent::new("Warm", "You answer the phone.")
}

fn model(accept_delay: Duration) -> FakeModelConfig {
    FakeModelConfig {
        default_reply: Reply::say("Hello, you are through.", 400),
        faults: Faults {
            accept_delay,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn rig(accept_delay: Duration, tokens: Option<Duration>, pool: usize) -> Rig {
    Rig::start_with(model(accept_delay), agent, |cfg| {
        common::greet(cfg);
        if let Some(ttl) = tokens {
            cfg.public_url = Some(PUBLIC.into());
            cfg.twilio_auth_token = Some(TOKEN.into());
            cfg.stream_token_ttl = Some(ttl);
        }
        cfg.warm_model_pool = pool;
    })
}

/// Twilio's webhook for `call_sid` (signed when `signed`); the stream token of its TwiML.
fn webhook(addr: SocketAddr, call_sid: &str, signed: bool) -> Option<String> {
    let form = [
        ("CallSid", call_sid),
        ("From", "+15550100"),
        ("To", "+15550199"),
    ];
    let sig = signed.then(|| signature::compute(TOKEN, &format!("{PUBLIC}/incoming-call"), &form));
    let (status, body) = common::post_form(
        addr,
        "/incoming-call",
        &common::form_encode(&form),
        sig.as_deref(),
    );
    assert_eq!(status, 200, "{body}");
    let key = r#"<Parameter name="token" value=""#;
    let rest = &body[body.find(key)? + key.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

fn stream(addr: SocketAddr, call_sid: &str, token: Option<&str>) -> CallReport {
    let mut cfg = TwilioCallConfig::new(
        addr,
        vec![
            Segment::WaitForAgent {
                quiet_ms: 300,
                timeout_ms: 10_000,
            },
            Segment::HangUp,
        ],
    );
    cfg.call_sid = Some(call_sid.into());
    if let Some(t) = token {
        cfg.custom_parameters.insert("token".into(), t.into());
        cfg.headers.push((
            "X-Twilio-Signature".into(),
            signature::compute(TOKEN, "wss://bridge.example.test/media-stream", &[]),
        ));
    }
    cfg.max_duration = Duration::from_secs(20);
    TwilioCall::run(cfg).expect("the call runs")
}

#[test]
fn the_model_connection_opened_at_the_webhook_serves_the_call() {
    let rig = rig(
        Duration::from_millis(300),
        Some(Duration::from_secs(30)),
        10,
    );
    let token = webhook(rig.addr, "CA0001", true).expect("a stream token");
    // The handshake completes with no stream yet.
    wait_until("the warm connection", Duration::from_secs(10), || {
        rig.model.recording().connections == 1
    });
    let report = stream(rig.addr, "CA0001", Some(&token));
    assert_eq!(report.played_ms(), 400, "{:?}", report.timeline);
    rig.wait_idle();
    let rec = rig.model.recording();
    assert_eq!(rec.connections, 1, "the call used the warm connection");
    assert_eq!(rec.violations, Vec::<String>::new());
    // The session was configured after `start` on that connection: µ-law both ways.
    assert_eq!(rec.session_updates.len(), 1);
    assert_eq!(
        rec.session_updates[0]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    rig.stop();
}

#[test]
fn a_stream_that_starts_during_the_handshake_waits_for_it() {
    // The handshake takes 1 s, the stream starts right after the webhook: the stream claims
    // a connection that is still opening and gets it when it opens; no second connection.
    let rig = rig(Duration::from_secs(1), Some(Duration::from_secs(30)), 10);
    let token = webhook(rig.addr, "CA0002", true).expect("a stream token");
    let report = stream(rig.addr, "CA0002", Some(&token));
    assert_eq!(report.played_ms(), 400, "{:?}", report.timeline);
    rig.wait_idle();
    assert_eq!(rig.model.recording().connections, 1);
    rig.stop();
}

#[test]
fn an_unclaimed_connection_is_closed_when_the_token_expires() {
    let rig = rig(Duration::ZERO, Some(Duration::from_millis(300)), 10);
    let token = webhook(rig.addr, "CA0003", true).expect("a stream token");
    wait_until("the warm connection", Duration::from_secs(10), || {
        rig.model.recording().connections == 1
    });
    wait_until(
        "the unclaimed connection to close",
        Duration::from_secs(10),
        || rig.model.recording().closed_by_client == 1,
    );
    // Its stream comes too late: refused (the token expired), nothing more is opened.
    let late = stream(rig.addr, "CA0003", Some(&token));
    assert!(late.closed_by_bridge && late.played_ms() == 0);
    rig.wait_idle();
    assert_eq!(rig.model.recording().connections, 1);
    rig.stop();
}

#[test]
fn another_calls_stream_cannot_take_it() {
    let rig = rig(Duration::ZERO, Some(Duration::from_secs(30)), 10);
    let first = webhook(rig.addr, "CA0004", true).expect("a stream token");
    wait_until("the warm connection", Duration::from_secs(10), || {
        rig.model.recording().connections == 1
    });
    // CA0004's token presented by a stream for CA0005: refused by the token check, so the
    // warm connection is never offered to it.
    let wrong = stream(rig.addr, "CA0005", Some(&first));
    assert!(wrong.closed_by_bridge && wrong.played_ms() == 0);
    // CA0005's own webhook and stream: its own warm connection.
    let second = webhook(rig.addr, "CA0005", true).expect("a stream token");
    let ok = stream(rig.addr, "CA0005", Some(&second));
    assert_eq!(ok.played_ms(), 400, "{:?}", ok.timeline);
    rig.wait_idle();
    assert_eq!(rig.model.recording().connections, 2);
    rig.stop();
}

#[test]
fn a_full_pool_connects_cold() {
    let rig = rig(Duration::ZERO, Some(Duration::from_secs(30)), 1);
    let _held = webhook(rig.addr, "CA0006", true).expect("a stream token");
    wait_until("the warm connection", Duration::from_secs(10), || {
        rig.model.recording().connections == 1
    });
    let token = webhook(rig.addr, "CA0007", true).expect("a stream token");
    let report = stream(rig.addr, "CA0007", Some(&token));
    assert_eq!(report.played_ms(), 400, "{:?}", report.timeline);
    rig.wait_idle();
    // One warm (CA0006, still waiting for its stream) and one cold for CA0007.
    assert_eq!(rig.model.recording().connections, 2);
    rig.stop();
}

#[test]
fn without_stream_tokens_nothing_opens_before_the_stream() {
    let rig = rig(Duration::ZERO, None, 10);
    assert_eq!(webhook(rig.addr, "CA0008", false), None, "no token");
    let report = stream(rig.addr, "CA0008", None);
    assert_eq!(report.played_ms(), 400, "{:?}", report.timeline);
    rig.wait_idle();
    // A connection opened at the webhook would be a second one, never claimed.
    assert_eq!(rig.model.recording().connections, 1);
    rig.stop();
}
