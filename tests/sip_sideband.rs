//! Whole SIP calls over the sideband WebSocket (`Session::start_sideband`) against the fake
//! SIP control plane (`sim::sip`), over loopback: a tool call, the agent hanging up after its
//! goodbye stopped playing (REST `hangup`), a transfer as a REFER to the configured
//! destination only, a handoff, an output guardrail, DTMF, bad events skipped, the caller
//! hanging up, session expiry, the call's recording named after its call id. Every
//! event the fake sent is checked against the official server-event schemas and every event
//! the bridge sent against the client-event schemas.

mod common;

use std::time::Duration;

use serde_json::Value;
use twilio_realtime::agent::{Agent, OutputGuardrail, Verdict};
use twilio_realtime::call::Greeting;
use twilio_realtime::events::{CloseReason, InterruptCause, SessionEvent};
use twilio_realtime::server::sip::OpenAiCalls;
use twilio_realtime::session::{Session, SessionConfig};
use twilio_realtime::sim::fake_model::Reply;
use twilio_realtime::sim::sip::{CallState, CallerStep, FakeSip, FakeSipConfig};
use twilio_realtime::CallError;

/// Runs one accepted call on the sideband; `on_event` sees each event with the handle.
fn call(
    fake: &FakeSip,
    agent: Agent,
    greeting: Option<Greeting>,
    on_event: impl FnMut(&Session, &SessionEvent),
) -> (String, Vec<SessionEvent>) {
    call_with(fake, agent, |o| o.call.greeting = greeting, on_event)
}

/// [`call`] with the session options as `tweak` leaves them.
fn call_with(
    fake: &FakeSip,
    agent: Agent,
    tweak: impl FnOnce(&mut SessionConfig),
    on_event: impl FnMut(&Session, &SessionEvent),
) -> (String, Vec<SessionEvent>) {
    let rest = OpenAiCalls::new(fake.base_url(), "sk-test", Duration::from_secs(5));
    let call = fake.new_call("+14155550100", "+18005550199");
    let body = twilio_realtime::proto::sip::accept_body(
        &agent,
        &Default::default(),
        twilio_realtime::proto::sip::DEFAULT_SIP_MODEL,
    )
    .unwrap();
    rest.accept(&call.call_id, &body).unwrap();
    let mut opts = SessionConfig::new(Some("sk-test".into())).url(fake.realtime_url());
    tweak(&mut opts);
    let handle = Session::start_sideband(&call, rest, agent, opts).unwrap();
    let events = common::run_session(handle, Duration::from_secs(15), on_event);
    (call.call_id, events)
}

/// Every event either side sent conforms to the official schemas (`raw` frames, sent as
/// faults, excepted), and the bridge broke no rule of the SIP sideband.
fn assert_conforms(fake: &FakeSip, raw: &[&str]) {
    let schemas = common::Schemas::load();
    let rec = fake.sideband();
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    for text in rec.sent.iter().filter(|t| !raw.contains(&t.as_str())) {
        schemas.assert_server_event(&serde_json::from_str::<Value>(text).unwrap());
    }
    for text in &rec.received {
        schemas.assert_client_event(&serde_json::from_str::<Value>(text).unwrap());
    }
}

fn closed(events: &[SessionEvent]) -> CloseReason {
    match events.last() {
        Some(SessionEvent::Closed { reason }) => reason.clone(),
        other => panic!("the call did not close: {other:?}"),
    }
}

fn position(events: &[SessionEvent], f: impl Fn(&SessionEvent) -> bool) -> usize {
    events
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("event not found in {events:#?}"))
}

#[test]
fn a_tool_call_then_the_agent_hangs_up_after_its_goodbye_played() {
    let fake = FakeSip::start(FakeSipConfig {
        script: vec![
            Reply::say("Hello! How can I help?", 1200),
            Reply::call("get_weather", r#"{"location":"Paris"}"#),
            Reply::say("It is sunny in Paris. Goodbye!", 1600),
            Reply::call("end_call", "{}"),
        ],
        caller: vec![
            CallerStep::WaitForAgent {
                quiet_ms: 300,
                timeout_ms: 10_000,
            },
            CallerStep::say("What is the weather in Paris?", 800),
        ],
        ..Default::default()
    })
    .unwrap();
    let agent = Agent::new("Concierge", "You are a concierge.")
        .voice("marin")
        .tool(common::weather_tool())
        .can_hang_up();
    let mut tool_done = false;
    let mut asked = false;
    let (call_id, events) = call(
        &fake,
        agent,
        Some(Greeting::Say("Hello! How can I help?".into())),
        |h, e| match e {
            SessionEvent::ToolEnd { .. } => tool_done = true,
            // The fake gives one reply per response: the goodbye's response is followed by
            // one that calls end_call while the goodbye still plays.
            SessionEvent::AgentStart { .. } if tool_done && !asked => {
                asked = true;
                h.create_response(None);
            }
            _ => {}
        },
    );
    assert_eq!(closed(&events), CloseReason::AgentHungUp);
    let rec = fake.sideband();
    assert_eq!(
        rec.function_outputs
            .iter()
            .map(|(_, o)| o.as_str())
            .collect::<Vec<_>>(),
        [
            "The weather in Paris is sunny.",
            twilio_realtime::call::END_CALL_OUTPUT
        ]
    );
    let said: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::AgentEnd { text, .. } if !text.is_empty() => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        said,
        ["Hello! How can I help?", "It is sunny in Paris. Goodbye!"]
    );
    // The hang-up waited for the goodbye to stop playing, and the call was still up.
    let ending = position(&events, |e| matches!(e, SessionEvent::Ending { .. }));
    let stopped = events
        .iter()
        .rposition(|e| matches!(e, SessionEvent::AudioStopped))
        .expect("the goodbye stopped");
    let hung_up = position(&events, |e| {
        matches!(e, SessionEvent::SipHangUp { result: Ok(()) })
    });
    assert!(ending < stopped && stopped < hung_up, "{events:#?}");
    let stops = rec
        .sent
        .iter()
        .filter(|t| t.contains("output_audio_buffer.stopped"))
        .count();
    assert_eq!(stops, 2, "the greeting and the goodbye played out");
    assert_eq!(fake.call_state(&call_id), Some(CallState::HungUp));
    let hangups: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.verb == "hangup")
        .map(|r| r.status)
        .collect();
    assert_eq!(hangups, [200]);
    // The sideband's first update carried the agent without audio formats.
    let first = &rec.session_updates[0];
    assert_eq!(first["instructions"], "You are a concierge.");
    assert!(first["audio"]["input"].get("format").is_none(), "{first}");
    assert_conforms(&fake, &[]);
}

#[test]
fn a_transfer_is_a_refer_to_the_configured_destination_only() {
    let fake = FakeSip::start(FakeSipConfig {
        script: vec![
            // The model names a destination nobody configured (e.g. read from the caller's
            // words): refused, the model may choose again.
            Reply::call(
                "transfer_call",
                r#"{"destination":"sip:attacker@evil.example"}"#,
            ),
            Reply::call("transfer_call", r#"{"destination":"a person"}"#),
        ],
        caller: vec![CallerStep::say("Put me through to a person.", 600)],
        ..Default::default()
    })
    .unwrap();
    let agent = Agent::new("Concierge", "You are a concierge.")
        .transfer_to("a person", "+14155550123", "A human agent")
        .unwrap();
    let (call_id, events) = call(&fake, agent, None, |_, _| {});
    assert!(
        matches!(closed(&events), CloseReason::Transferred { ref name, by_agent: true, .. } if name == "a person"),
        "{events:#?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        SessionEvent::SipRefer { target_uri, result: Ok(()) } if target_uri == "tel:+14155550123"
    )));
    assert!(!events
        .iter()
        .any(|e| matches!(e, SessionEvent::SipHangUp { .. })));
    assert_eq!(
        fake.call_state(&call_id),
        Some(CallState::Referred("tel:+14155550123".into()))
    );
    let refers: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r.verb == "refer")
        .filter_map(|r| r.body)
        .collect();
    assert_eq!(
        refers,
        [serde_json::json!({"target_uri":"tel:+14155550123"})]
    );
    common::Schemas::load().assert_valid("RealtimeCallReferRequest", &refers[0]);
    assert_conforms(&fake, &[]);
}

#[test]
fn dtmf_and_bad_events_then_the_caller_hangs_up() {
    const BAD: &str = "{this is not json";
    const UNKNOWN: &str = r#"{"type":"some.future_event","event_id":"e1"}"#;
    let fake = FakeSip::start(FakeSipConfig {
        caller: vec![
            CallerStep::Pause(400),
            CallerStep::Dtmf("5".into()),
            CallerStep::Pause(400),
            CallerStep::HangUp,
        ],
        raw: vec![
            (Duration::from_millis(10), BAD.into()),
            (Duration::from_millis(20), UNKNOWN.into()),
        ],
        ..Default::default()
    })
    .unwrap();
    let (call_id, events) = call(&fake, Agent::new("A", "Be brief."), None, |_, _| {});
    assert!(events
        .iter()
        .any(|e| matches!(e, SessionEvent::Dtmf { digit } if digit == "5")));
    assert!(events
        .iter()
        .any(|e| matches!(e, SessionEvent::Error(CallError::BadModelEvent { .. }))));
    // The sideband dropped with the call: the session ends, and hangup's 404 counts as done.
    assert!(
        matches!(
            closed(&events),
            CloseReason::Error(CallError::ModelDisconnected { .. })
        ),
        "{events:#?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, SessionEvent::SipHangUp { result: Ok(()) })));
    assert_eq!(fake.call_state(&call_id), Some(CallState::CallerEnded));
    assert_conforms(&fake, &[BAD, UNKNOWN]);
}

#[test]
fn an_expired_session_hangs_the_call_up() {
    let fake = FakeSip::start(FakeSipConfig {
        session_expires_after: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .unwrap();
    let (call_id, events) = call(&fake, Agent::new("A", "Be brief."), None, |_, _| {});
    assert_eq!(closed(&events), CloseReason::SessionExpired);
    assert!(events.iter().any(|e| matches!(
        e,
        SessionEvent::Error(CallError::ModelError { code: Some(c), .. }) if c == "session_expired"
    )));
    assert!(events
        .iter()
        .any(|e| matches!(e, SessionEvent::SipHangUp { result: Ok(()) })));
    assert_eq!(fake.call_state(&call_id), Some(CallState::Expired));
    // One sideband: an expired SIP session is not reconnected.
    assert_eq!(fake.sideband().connections, 1);
    assert_conforms(&fake, &[]);
}

/// A handoff is a session update without audio formats; an output guardrail cuts the reply
/// with `response.cancel` (when it is still generated) and `output_audio_buffer.clear`, and
/// the agent answers again. The recording is named after the call id.
#[test]
fn a_handoff_and_a_guardrail_on_the_sideband() {
    let fake = FakeSip::start(FakeSipConfig {
        script: vec![
            Reply::call("transfer_to_billing", "{}"),
            Reply::say(
                "Sure. The card number on file is 4111 1111 1111 1111, and it expires next \
                 month, so please send us a new one before then.",
                4000,
            ),
            Reply::say("Sorry, I cannot read that out. Anything else?", 1200),
        ],
        caller: vec![
            CallerStep::say("I have a question about my bill.", 600),
            CallerStep::WaitForAgent {
                quiet_ms: 500,
                timeout_ms: 10_000,
            },
            CallerStep::HangUp,
        ],
        ..Default::default()
    })
    .unwrap();
    let billing = Agent::new("Billing", "You handle billing.")
        .handoff_description("Questions about bills.")
        .output_guardrail(OutputGuardrail::new("no card numbers", |text| {
            if text.contains("card number") {
                Verdict::trip("reads out a card number")
            } else {
                Verdict::Pass
            }
        }));
    let front = Agent::new("Front", "You answer the phone.").handoff(&billing);
    let dir = std::env::temp_dir().join(format!("sip-sideband-rec-{}", std::process::id()));
    let to = dir.clone();
    let (call_id, events) = call_with(
        &fake,
        front,
        |o| {
            o.recording = Some(twilio_realtime::session::recording::RecordTo::Dir(to));
        },
        |_, _| {},
    );
    assert!(events.iter().any(|e| matches!(
        e,
        SessionEvent::Handoff { from, to } if from == "Front" && to == "Billing"
    )));
    let rec = fake.sideband();
    let handoff = rec
        .session_updates
        .iter()
        .find(|u| u["instructions"] == "You handle billing.")
        .expect("the handoff's session update");
    assert!(
        handoff["audio"]["input"].get("format").is_none(),
        "{handoff}"
    );
    assert!(
        handoff["audio"]["output"].get("format").is_none(),
        "{handoff}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        SessionEvent::GuardrailTripped { guardrail, .. } if guardrail == "no card numbers"
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        SessionEvent::AudioInterrupted {
            cause: InterruptCause::Guardrail,
            ..
        }
    )));
    assert_eq!(rec.cleared, 1, "the playing reply was cut");
    let said: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::AgentEnd { text, .. } if text.starts_with("Sorry") => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(said, ["Sorry, I cannot read that out. Anything else?"]);
    assert!(
        matches!(
            closed(&events),
            CloseReason::Error(CallError::ModelDisconnected { .. })
        ),
        "{events:#?}"
    );
    assert_conforms(&fake, &[]);
    let file = dir.join(format!("{call_id}.jsonl"));
    let recorded = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(recorded.contains("no card numbers"), "{recorded}");
}

/// A sideband that cannot connect (here: a call that was never accepted, which the fake
/// refuses with 404) ends the session with the connection error and hangs the call up: a call
/// nobody drives is not left running.
#[test]
fn a_sideband_that_cannot_connect_hangs_the_call_up() {
    let fake = FakeSip::start(FakeSipConfig::default()).unwrap();
    let rest = OpenAiCalls::new(fake.base_url(), "sk-test", Duration::from_secs(5));
    let call = fake.new_call("+14155550100", "+18005550199");
    let opts = SessionConfig::new(Some("sk-test".into())).url(fake.realtime_url());
    let handle = Session::start_sideband(&call, rest, Agent::new("A", "x"), opts).unwrap();
    let events = common::run_session(handle, Duration::from_secs(15), |_, _| {});
    assert!(
        matches!(
            closed(&events),
            CloseReason::Error(CallError::ModelRejected { status: 404 })
        ),
        "{events:#?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, SessionEvent::SipHangUp { .. })));
    let verbs: Vec<String> = fake.requests().into_iter().map(|r| r.verb).collect();
    assert_eq!(verbs, ["hangup"]);
    assert_eq!(fake.sideband().connections, 0);
}
