//! A warm model end to end over loopback: with signed webhooks and one-time stream tokens, the
//! server opens the model connection at the webhook, configures its session for the call's
//! agent (built from the webhook's caller details) and hands it to the stream that presents
//! the token, ready; an unclaimed one is closed when the token's lifetime is over; without
//! tokens nothing is opened before the stream.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{wait_until, Rig};
use twilio_realtime::agent::Agent;
use twilio_realtime::events::CloseReason;
use twilio_realtime::server::signature;
use twilio_realtime::sim::fake_model::{FakeModelConfig, Faults, ModelRecording, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::telephony::call_info::CallInfo;
use twilio_realtime::CallError;

const TOKEN: &str = "warm-test-auth-token";
const PUBLIC: &str = "https://bridge.example.test";

fn agent() -> Agent {
    Agent::new("Warm", "You answer the phone.")
}

fn model_with(faults: Faults) -> FakeModelConfig {
    FakeModelConfig {
        default_reply: Reply::say("Hello, you are through.", 400),
        faults,
        ..Default::default()
    }
}

fn model(accept_delay: Duration) -> FakeModelConfig {
    model_with(Faults {
        accept_delay,
        ..Default::default()
    })
}

fn tokens_on(
    ttl: Option<Duration>,
    pool: usize,
) -> impl FnOnce(&mut twilio_realtime::server::ServerConfig) {
    move |cfg| {
        common::greet(cfg);
        if let Some(ttl) = ttl {
            cfg.public_url = Some(PUBLIC.into());
            cfg.twilio_auth_token = Some(TOKEN.into());
            cfg.stream_token_ttl = Some(ttl);
        }
        cfg.warm_model_pool = pool;
    }
}

fn rig(accept_delay: Duration, tokens: Option<Duration>, pool: usize) -> Rig {
    Rig::start_with(model(accept_delay), agent, tokens_on(tokens, pool))
}

/// Twilio's webhook for `call_sid` (signed when `signed`); the stream token of its TwiML.
fn webhook(addr: SocketAddr, call_sid: &str, signed: bool) -> Option<String> {
    let form = [
        ("CallSid", call_sid),
        ("AccountSid", "AC0001"),
        ("From", "+15550100"),
        ("To", "+15550199"),
        ("CallerName", "Ada Lovelace"),
    ];
    let sig = signed.then(|| signature::compute(TOKEN, &format!("{PUBLIC}/incoming-call"), &form));
    let (status, body) = common::post_form(
        addr,
        "/incoming-call",
        &common::form_encode(&form),
        sig.as_deref(),
    );
    assert_eq!(status, 200, "{body}");
    common::twiml_token(&body)
}

fn stream_with(
    addr: SocketAddr,
    call_sid: &str,
    token: Option<&str>,
    script: Vec<Segment>,
) -> CallReport {
    let mut cfg = TwilioCallConfig::new(addr, script);
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

fn stream(addr: SocketAddr, call_sid: &str, token: Option<&str>) -> CallReport {
    stream_with(
        addr,
        call_sid,
        token,
        vec![
            Segment::WaitForAgent {
                quiet_ms: 300,
                timeout_ms: 10_000,
            },
            Segment::HangUp,
        ],
    )
}

/// When each client event of type `ty` reached the model.
fn arrivals(rec: &ModelRecording, ty: &str) -> Vec<Instant> {
    let needle = format!(r#""type":"{ty}""#);
    rec.events
        .iter()
        .filter(|(_, e)| e.contains(&needle))
        .map(|(at, _)| *at)
        .collect()
}

#[test]
fn the_session_is_configured_at_the_webhook_before_the_stream_starts() {
    let rig = rig(
        Duration::from_millis(300),
        Some(Duration::from_secs(30)),
        10,
    );
    let token = webhook(rig.addr, "CA0001", true).expect("a stream token");
    // The handshake and the configuring update complete with no stream yet.
    wait_until("the warm session's update", Duration::from_secs(10), || {
        rig.model.recording().session_updates.len() == 1
    });
    let stream_began = Instant::now();
    let report = stream(rig.addr, "CA0001", Some(&token));
    assert_eq!(report.played_ms(), 400, "{:?}", report.timeline);
    rig.wait_idle();
    let rec = rig.model.recording();
    assert_eq!(rec.connections, 1, "the call used the warm connection");
    assert_eq!(rec.violations, Vec::<String>::new());
    // One configuration, sent before the stream, µ-law both ways, for the agent: none after.
    assert_eq!(rec.session_updates.len(), 1);
    assert!(arrivals(&rec, "session.update")[0] < stream_began);
    let update = &rec.session_updates[0];
    assert_eq!(update["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(update["audio"]["output"]["format"]["type"], "audio/pcmu");
    assert_eq!(update["instructions"], "You answer the phone.");
    // The greeting went out once the stream started (it needs a streamSid).
    assert!(arrivals(&rec, "response.create")[0] > stream_began);
    assert_eq!(rec.appended_by_format.get("audio/pcm"), None);
    rig.stop();
}

#[test]
fn the_claimed_call_forwards_the_callers_first_frame_without_waiting() {
    // Every client event costs the model's round trip (1 s): a call that configured its
    // session after `start` would hold the caller's audio for at least that long.
    let round_trip = Duration::from_secs(1);
    let rig = Rig::start_with(
        model_with(Faults {
            round_trip,
            ..Default::default()
        }),
        agent,
        tokens_on(Some(Duration::from_secs(30)), 10),
    );
    let token = webhook(rig.addr, "CA0009", true).expect("a stream token");
    // `session.updated` comes one round trip after the update reached the model.
    wait_until("the warm session's update", Duration::from_secs(10), || {
        rig.model.recording().session_updates.len() == 1
    });
    std::thread::sleep(round_trip + Duration::from_millis(200));
    let stream_began = Instant::now();
    let report = stream_with(rig.addr, "CA0009", Some(&token), common::short_call());
    rig.wait_idle();
    // The fake acts on (and records) what is still on its way when it reads the close: wait
    // for that, or a loaded machine reads the recording a round trip short.
    wait_until("the model saw the close", Duration::from_secs(10), || {
        rig.model.recording().closed_by_client >= 1
    });
    let rec = rig.model.recording();
    assert_eq!(rec.violations, Vec::<String>::new());
    assert_eq!(
        rec.session_updates.len(),
        1,
        "nothing configured after start"
    );
    let first_append = arrivals(&rec, "input_audio_buffer.append")[0];
    assert!(
        first_append.saturating_duration_since(stream_began) < round_trip,
        "the caller's first frame reached the model {:?} after the stream began",
        first_append.saturating_duration_since(stream_began)
    );
    // The caller's audio (speech, then the line's silence) reached the model as µ-law only.
    assert_eq!(rec.appended_by_format.get("audio/pcm"), None);
    assert!(rec.appended_by_format.get("audio/pcmu") >= Some(&4800));
    assert!(!report.closed_by_bridge, "{:?}", report.timeline);
    rig.stop();
}

#[test]
fn a_configuration_refused_at_the_webhook_ends_the_call_when_its_stream_claims_it() {
    fn robot() -> Agent {
        Agent::new("Robot", "You answer the phone.").voice("robot")
    }
    let rig = Rig::start_with(
        model(Duration::ZERO),
        robot,
        tokens_on(Some(Duration::from_secs(30)), 10),
    );
    let token = webhook(rig.addr, "CA0010", true).expect("a stream token");
    wait_until("the refusal", Duration::from_secs(10), || {
        rig.model.recording().errors_sent.len() == 1
    });
    let report = stream(rig.addr, "CA0010", Some(&token));
    assert!(report.closed_by_bridge);
    assert_eq!(report.played_ms(), 0);
    rig.wait_idle();
    let rec = rig.model.recording();
    assert_eq!(rec.connections, 1);
    assert_eq!(rec.errors_sent, ["invalid_value"]);
    assert_eq!(
        rec.session_updates.len(),
        1,
        "no retry without the refused voice"
    );
    assert_eq!(rec.appended_bytes, 0, "not a byte of audio");
    assert!(matches!(
        &rig.closed()[..],
        [CloseReason::Error(CallError::ModelConfigRejected { param: Some(p), .. })] if p == "session.audio.output.voice"
    ));
    rig.stop();
}

#[test]
fn an_agent_chosen_differently_on_start_configures_the_session_again() {
    // The application's data changed between the webhook and `start` (say, the caller's
    // language in its CRM): the agent chosen on `start` differs from the webhook's.
    static FRENCH: AtomicBool = AtomicBool::new(false);
    let factory = |call: &CallInfo| {
        let lang = if FRENCH.load(Ordering::SeqCst) {
            "Parlez français."
        } else {
            "Speak English."
        };
        let name = call.caller_name().unwrap_or("the caller");
        Agent::new("Front", format!("{lang} Greet {name}."))
    };
    let rig = Rig::start_factory(
        model(Duration::ZERO),
        factory,
        tokens_on(Some(Duration::from_secs(30)), 10),
    );
    let token = webhook(rig.addr, "CA0011", true).expect("a stream token");
    wait_until("the warm session's update", Duration::from_secs(10), || {
        rig.model.recording().session_updates.len() == 1
    });
    FRENCH.store(true, Ordering::SeqCst);
    let report = stream(rig.addr, "CA0011", Some(&token));
    assert_eq!(report.played_ms(), 400, "{:?}", report.timeline);
    rig.wait_idle();
    let rec = rig.model.recording();
    assert_eq!(rec.connections, 1);
    assert_eq!(rec.violations, Vec::<String>::new());
    let instructions: Vec<&str> = rec
        .session_updates
        .iter()
        .map(|u| u["instructions"].as_str().unwrap_or(""))
        .collect();
    // The webhook's caller details reached the factory there (CallerName).
    assert_eq!(
        instructions,
        [
            "Speak English. Greet Ada Lovelace.",
            "Parlez français. Greet Ada Lovelace."
        ]
    );
    assert_eq!(
        rec.session_updates[1]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    // The greeting waited for the second configuration's confirmation.
    let updates = arrivals(&rec, "session.update");
    assert!(arrivals(&rec, "response.create")[0] > updates[1]);
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
    // It had been configured: closing it is what frees the model session.
    assert_eq!(rig.model.recording().session_updates.len(), 1);
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
    std::thread::sleep(Duration::from_millis(200));
    let stream_began = Instant::now();
    let report = stream(rig.addr, "CA0008", None);
    assert_eq!(report.played_ms(), 400, "{:?}", report.timeline);
    rig.wait_idle();
    let rec = rig.model.recording();
    // A connection opened at the webhook would be a second one, never claimed.
    assert_eq!(rec.connections, 1);
    // Configured as always: after the stream was accepted, once.
    assert_eq!(arrivals(&rec, "session.update").len(), 1);
    assert!(arrivals(&rec, "session.update")[0] > stream_began);
    rig.stop();
}
