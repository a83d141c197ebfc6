//! Whole calls over loopback: the bridge server, the fake Realtime model and the Twilio call
//! simulator (which plays audio out in real time and echoes marks like Twilio).

mod common;

use std::time::Duration;

use common::Rig;
use serde_json::{json, Value};
use twilio_realtime::agent::{Agent, OutputGuardrail, Verdict};
use twilio_realtime::events::{CloseReason, SessionEvent};
use twilio_realtime::sim::fake_model::{FakeModelConfig, Faults, ModelRecording, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::CallError;

fn agent() -> Agent {
    let weather = common::weather_tool();
    let billing = Agent::new("Billing", "You handle billing questions.");
    Agent::new("Front", "You answer calls.")
        .voice("marin")
        .tool(weather)
        .handoff(&billing)
        .output_guardrail(OutputGuardrail::new("no_forbidden", |t: &str| {
            if t.contains("forbidden") {
                Verdict::trip("said a forbidden word")
            } else {
                Verdict::Pass
            }
        }))
}

fn call(
    rig: &Rig,
    script: Vec<Segment>,
    delay_ms: u64,
    jitter_ms: u64,
) -> (CallReport, ModelRecording) {
    let mut cfg = TwilioCallConfig::new(rig.addr, script);
    cfg.one_way_delay = Duration::from_millis(delay_ms);
    cfg.jitter = Duration::from_millis(jitter_ms);
    cfg.max_duration = Duration::from_secs(30);
    let report = TwilioCall::run(cfg).expect("call runs");
    rig.wait_idle();
    std::thread::sleep(Duration::from_millis(100)); // let the fake model record the last frames
    let rec = rig.model.recording();
    check_protocol(&report, &rec);
    (report, rec)
}

/// Nothing either side received broke the protocol, and every client event is schema-valid.
fn check_protocol(report: &CallReport, rec: &ModelRecording) {
    assert!(
        report.violations.is_empty(),
        "twilio side: {:?}",
        report.violations
    );
    assert!(
        rec.violations.is_empty(),
        "model side: {:?}",
        rec.violations
    );
    let s = common::Schemas::load();
    for (_, raw) in &rec.events {
        s.assert_client_event(&serde_json::from_str::<Value>(raw).unwrap());
    }
}

fn wait_for_agent() -> Segment {
    Segment::WaitForAgent {
        quiet_ms: 700,
        timeout_ms: 15_000,
    }
}

#[test]
fn a_basic_turn_is_byte_exact_both_ways() {
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![Reply::say("Hello there, how can I help you today?", 1200)],
            ..Default::default()
        },
        agent,
    );
    let (report, rec) = call(
        &rig,
        vec![
            Segment::Silence(200),
            Segment::Speech(800),
            wait_for_agent(),
            Segment::HangUp,
        ],
        30,
        5,
    );
    assert_eq!(
        rec.appended_audio.len(),
        report.caller_audio.len(),
        "every caller byte reached the model"
    );
    assert!(
        rec.appended_audio == report.caller_audio,
        "caller audio byte-exact"
    );
    let received: u64 = report.chunks.iter().map(|c| c.bytes).sum();
    assert_eq!(
        received, rec.audio_sent_bytes,
        "every agent byte reached Twilio"
    );
    assert_eq!(report.played_ms(), 1200);
    assert_eq!(report.marks_received, report.marks_echoed);
    assert!(report.clears.is_empty());
    let ev = rig.events();
    assert!(ev
        .iter()
        .any(|e| matches!(e, SessionEvent::AgentStart { .. })));
    assert!(ev.iter().any(|e| matches!(e, SessionEvent::AudioStopped)));
    assert_eq!(rig.closed(), [CloseReason::TwilioStopped]);
    // the agent's formats and tools
    let upd = &rec.session_updates[0];
    assert_eq!(upd["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(upd["tools"].as_array().unwrap().len(), 2);
    rig.stop();
}

fn barge_in(delay_ms: u64, jitter_ms: u64) {
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![
                Reply::say(
                    "This is a long answer that the caller will interrupt before it is over.",
                    6000,
                ),
                Reply::say("Sure.", 500),
            ],
            ..Default::default()
        },
        agent,
    );
    let (report, rec) = call(
        &rig,
        vec![
            Segment::Silence(200),
            Segment::Speech(700),
            Segment::BargeIn {
                after_ms: 1500,
                speech_ms: 800,
                timeout_ms: 15_000,
            },
            wait_for_agent(),
            Segment::HangUp,
        ],
        delay_ms,
        jitter_ms,
    );
    assert_eq!(report.clears.len(), 1, "one clear");
    assert!(
        report.clears[0].dropped_bytes > 0,
        "the clear stopped buffered audio"
    );
    let heard = report.heard_ms_by_item();
    assert_eq!(rec.truncations.len(), 1, "{:?}", rec.truncations);
    let t = &rec.truncations[0];
    assert!(t.accepted, "truncate within the item: {t:?}");
    let truth = heard[&t.item_id];
    let err = t.audio_end_ms as i64 - truth as i64;
    eprintln!(
        "one-way {delay_ms} ms ± {jitter_ms}: truncate claimed {} ms, caller heard {truth} ms, error {err} ms",
        t.audio_end_ms
    );
    assert!(err.abs() <= 20, "truncation error {err} ms");
    assert!(rig
        .events()
        .iter()
        .any(|e| matches!(e, SessionEvent::AudioInterrupted { .. })));
    rig.stop();
}

#[test]
fn barge_in_truncates_within_20_ms_of_what_was_heard_at_20_ms() {
    barge_in(20, 5);
}

#[test]
fn barge_in_truncates_within_20_ms_of_what_was_heard_at_80_ms() {
    barge_in(80, 15);
}

#[test]
fn a_tool_round_trip() {
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![
                Reply::call("get_weather", r#"{"location":"Paris"}"#),
                Reply::say("It is sunny in Paris.", 1000),
            ],
            ..Default::default()
        },
        agent,
    );
    let (report, rec) = call(
        &rig,
        vec![
            Segment::Silence(200),
            Segment::Speech(700),
            wait_for_agent(),
            Segment::HangUp,
        ],
        30,
        5,
    );
    assert_eq!(rec.function_outputs.len(), 1);
    assert_eq!(rec.function_outputs[0].1, "The weather in Paris is sunny.");
    assert_eq!(report.played_ms(), 1000, "the answer after the tool played");
    let ev = rig.events();
    assert!(ev.iter().any(|e| matches!(
        e,
        SessionEvent::ToolEnd {
            is_error: false,
            ..
        }
    )));
    assert!(!rec
        .errors_sent
        .contains(&"conversation_already_has_active_response".to_owned()));
    rig.stop();
}

#[test]
fn a_handoff_switches_instructions_and_keeps_pcmu() {
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![
                Reply::call("transfer_to_billing", "{}"),
                Reply::say("Billing here.", 800),
            ],
            ..Default::default()
        },
        agent,
    );
    let (report, rec) = call(
        &rig,
        vec![
            Segment::Silence(200),
            Segment::Speech(700),
            wait_for_agent(),
            Segment::HangUp,
        ],
        30,
        5,
    );
    let last = rec.session_updates.last().unwrap();
    assert_eq!(last["instructions"], "You handle billing questions.");
    assert_eq!(last["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(last["audio"]["output"]["format"]["type"], "audio/pcmu");
    assert_eq!(last["tools"], json!([]));
    assert_eq!(report.played_ms(), 800);
    assert!(rig
        .events()
        .iter()
        .any(|e| matches!(e, SessionEvent::Handoff { to, .. } if to == "Billing")));
    rig.stop();
}

#[test]
fn a_guardrail_trip_cuts_the_agent_and_reprompts() {
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![
                Reply::say(
                    "Let me tell you something forbidden, which goes on for a while so that there is plenty of audio left to cut off when the guardrail trips.",
                    5000,
                ),
                Reply::say("Sorry about that.", 800),
            ],
            ..Default::default()
        },
        agent,
    );
    let (report, rec) = call(
        &rig,
        vec![
            Segment::Silence(200),
            Segment::Speech(700),
            wait_for_agent(),
            Segment::HangUp,
        ],
        30,
        5,
    );
    assert!(rig
        .events()
        .iter()
        .any(|e| matches!(e, SessionEvent::GuardrailTripped { .. })));
    let sent: Vec<Value> = rec
        .events
        .iter()
        .map(|(_, r)| serde_json::from_str(r).unwrap())
        .collect();
    assert!(sent.iter().any(|e| e["type"] == "response.cancel"));
    assert!(sent
        .iter()
        .any(|e| e["type"] == "conversation.item.create" && e["item"]["role"] == "system"));
    assert_eq!(report.clears.len(), 1);
    assert!(
        report.played_ms() < 5000,
        "the rest of the forbidden reply was not played"
    );
    rig.stop();
}

#[test]
fn caller_audio_sent_while_the_model_connects_is_kept() {
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![Reply::say("Hi.", 500)],
            faults: Faults {
                accept_delay: Duration::from_millis(1000),
                ..Default::default()
            },
            ..Default::default()
        },
        agent,
    );
    let (report, rec) = call(
        &rig,
        vec![Segment::Speech(600), wait_for_agent(), Segment::HangUp],
        30,
        5,
    );
    assert!(
        rec.appended_audio == report.caller_audio,
        "no caller audio lost while the model connected"
    );
    assert!(
        rec.turns[0].0 <= 20,
        "the first words were heard from the start: {:?}",
        rec.turns
    );
    rig.stop();
}

#[test]
fn the_model_dropping_mid_call_ends_the_stream() {
    let rig = Rig::start(
        FakeModelConfig {
            faults: Faults {
                close_after: Some(Duration::from_millis(1500)),
                ..Default::default()
            },
            ..Default::default()
        },
        agent,
    );
    let (report, _) = call(&rig, vec![Segment::Silence(10_000), Segment::HangUp], 30, 5);
    assert!(report.closed_by_bridge, "the bridge ended the stream");
    assert!(
        report.duration < Duration::from_secs(5),
        "{:?}",
        report.duration
    );
    assert!(matches!(
        rig.closed()[..],
        [CloseReason::Error(CallError::ModelDisconnected { .. })]
    ));
    rig.stop();
}

#[test]
fn the_model_sees_the_extra_headers_and_query_parameters() {
    // Azure OpenAI's key header and API version, OpenAI's project and organization headers.
    let rig = Rig::start_with(FakeModelConfig::default(), agent, |cfg| {
        let model = &mut cfg.session.model;
        model.api_key = None;
        for (name, value) in [
            ("api-key", "azure-key-1"),
            ("OpenAI-Project", "proj_123"),
            ("OpenAI-Organization", "org-456"),
        ] {
            model.headers.push((name.into(), value.into()));
        }
        model
            .query
            .push(("api-version".into(), "2025-04-01-preview".into()));
        model.query.push(("note".into(), "a b&c".into()));
    });
    let (report, rec) = call(&rig, vec![Segment::Silence(300), Segment::HangUp], 0, 0);
    assert!(!report.closed_by_bridge);
    let [head] = &rec.upgrade_requests[..] else {
        panic!("{:?}", rec.upgrade_requests);
    };
    for (name, value) in [
        ("api-key", "azure-key-1"),
        ("openai-project", "proj_123"),
        ("openai-organization", "org-456"),
    ] {
        assert_eq!(head.header(name), Some(value), "{name}: {:?}", head.headers);
    }
    assert_eq!(head.header("authorization"), None, "no key, no bearer");
    assert_eq!(
        head.query(),
        Some("model=gpt-realtime&api-version=2025-04-01-preview&note=a+b%26c")
    );
    assert_eq!(rig.closed(), vec![CloseReason::TwilioStopped]);
    rig.stop();
}

#[test]
fn a_refused_model_connection_ends_the_call_promptly() {
    let rig = Rig::start(
        FakeModelConfig {
            faults: Faults {
                reject_status: Some(401),
                ..Default::default()
            },
            ..Default::default()
        },
        agent,
    );
    let (report, _) = call(&rig, vec![Segment::Silence(10_000), Segment::HangUp], 30, 5);
    assert!(report.closed_by_bridge);
    assert!(
        report.duration < Duration::from_secs(2),
        "{:?}",
        report.duration
    );
    assert!(matches!(
        rig.closed()[..],
        [CloseReason::Error(CallError::ModelRejected { status: 401 })]
    ));
    rig.stop();
}

#[test]
fn dtmf_reaches_the_application() {
    let rig = Rig::start(FakeModelConfig::default(), agent);
    let _ = call(
        &rig,
        vec![
            Segment::Silence(300),
            Segment::Dtmf('7'),
            Segment::Silence(300),
            Segment::HangUp,
        ],
        30,
        5,
    );
    assert!(rig
        .events()
        .iter()
        .any(|e| matches!(e, SessionEvent::Dtmf { digit } if digit == "7")));
    rig.stop();
}

#[test]
fn audio_stopped_comes_from_the_last_mark_not_from_the_hang_up() {
    // The session thread applies chunk marks lazily; an item's last mark must still wake it,
    // so `AudioStopped` is seen while the caller sits in silence, seconds before it hangs up.
    let rig = Rig::start(
        FakeModelConfig {
            script: vec![Reply::say("Hello there.", 600)],
            ..Default::default()
        },
        agent,
    );
    let addr = rig.addr;
    // Not `call()`: it waits for the server to go idle after the hang-up, which would keep the
    // thread alive past it and hide exactly the delay this test looks for.
    let caller = std::thread::spawn(move || {
        let mut cfg = TwilioCallConfig::new(
            addr,
            vec![
                Segment::Silence(200),
                Segment::Speech(600),
                Segment::WaitForAgent {
                    quiet_ms: 300,
                    timeout_ms: 15_000,
                },
                Segment::Silence(4000),
                Segment::HangUp,
            ],
        );
        cfg.one_way_delay = Duration::from_millis(20);
        TwilioCall::run(cfg).expect("call runs")
    });
    common::wait_until("AudioStopped", Duration::from_secs(15), || {
        rig.events()
            .iter()
            .any(|e| matches!(e, SessionEvent::AudioStopped))
    });
    assert!(
        !caller.is_finished(),
        "AudioStopped came only with the hang-up"
    );
    let report = caller.join().expect("caller thread");
    assert_eq!(report.played_ms(), 600);
    rig.wait_idle();
    rig.stop();
}

// ---------------------------------------------------------------------------------------------
// Who speaks first, and what the model confirmed (issue 10 §1–§3)

#[test]
fn without_a_greeting_the_agent_waits_for_the_caller() {
    let rig = Rig::start(FakeModelConfig::default(), agent);
    let (report, rec) = call(&rig, vec![Segment::Silence(1500), Segment::HangUp], 5, 0);
    assert_eq!(report.played_ms(), 0, "the model never speaks first");
    assert_eq!(rec.responses, 0);
    assert!(rec.response_requests.is_empty());
    rig.stop();
}

#[test]
fn the_agent_greets_first_and_the_caller_can_talk_over_it() {
    let model = FakeModelConfig {
        script: vec![Reply::say(
            "Hello, thanks for calling, how can I help?",
            3000,
        )],
        audio_speed: 1.0,
        ..Default::default()
    };
    let rig = Rig::start_with(model, agent, common::greet);
    let (report, rec) = call(
        &rig,
        vec![
            Segment::BargeIn {
                after_ms: 800,
                speech_ms: 700,
                timeout_ms: 10_000,
            },
            Segment::Silence(1500),
            Segment::HangUp,
        ],
        20,
        0,
    );
    // One response.create, with the greeting's instructions after the agent's own.
    let greet = &rec.response_requests[0];
    let instr = greet["instructions"].as_str().unwrap_or("");
    assert!(
        instr.starts_with("You answer calls.") && instr.ends_with("Greet the caller."),
        "{greet}"
    );
    // Only µ-law went either way.
    assert_eq!(
        rec.appended_by_format.keys().collect::<Vec<_>>(),
        ["audio/pcmu"]
    );
    assert_eq!(
        rec.sent_by_format.keys().collect::<Vec<_>>(),
        ["audio/pcmu"]
    );
    // The greeting was cut like any response: clear, then a truncation the server accepted.
    assert!(!report.clears.is_empty(), "{:?}", report.timeline);
    let t = &rec.truncations[0];
    assert!(t.accepted, "{t:?}");
    let heard = report.heard_ms_by_item();
    let truth = heard.get(&t.item_id).copied().unwrap_or(0);
    assert!(
        (t.audio_end_ms as i64 - truth as i64).abs() <= 60,
        "told {} ms, heard {truth} ms",
        t.audio_end_ms
    );
    rig.stop();
}

#[test]
fn a_refused_session_update_ends_the_call_before_any_audio() {
    let rig = Rig::start_with(
        FakeModelConfig::default(),
        || Agent::new("Robot", "Beep.").voice("robot"),
        common::greet,
    );
    let mut cfg = TwilioCallConfig::new(rig.addr, vec![Segment::Speech(3000), Segment::HangUp]);
    cfg.max_duration = Duration::from_secs(10);
    let report = TwilioCall::run(cfg).expect("call runs");
    rig.wait_idle();
    let rec = rig.model.recording();
    assert!(report.closed_by_bridge, "{:?}", report.timeline);
    assert_eq!(report.played_ms(), 0);
    assert_eq!(rec.errors_sent, ["invalid_value"]);
    assert_eq!(rec.appended_bytes, 0, "no caller audio in the wrong format");
    assert!(rec.response_requests.is_empty(), "no greeting either");
    assert!(
        matches!(
            &rig.closed()[..],
            [CloseReason::Error(CallError::ModelConfigRejected { param: Some(p), .. })] if p == "session.audio.output.voice"
        ),
        "{:?}",
        rig.closed()
    );
    rig.stop();
}

#[test]
fn a_model_that_speaks_unasked_before_confirming_is_never_heard() {
    let model = FakeModelConfig {
        default_reply: Reply::say("Fine.", 400),
        faults: Faults {
            unsolicited_greeting: Some(Reply::say("Static!", 1500)),
            ..Default::default()
        },
        audio_speed: 1.0,
        ..Default::default()
    };
    // No voice: once the model has spoken, production refuses a voice change.
    let rig = Rig::start(model, || Agent::new("A", "x"));
    let (report, rec) = call(&rig, vec![Segment::Silence(2500), Segment::HangUp], 5, 0);
    assert!(
        rec.sent_by_format.get("audio/pcm").copied().unwrap_or(0) > 0,
        "the fault spoke 24 kHz PCM: {:?}",
        rec.sent_by_format
    );
    assert_eq!(report.played_ms(), 0, "none of it reached the caller");
    rig.stop();
}

/// One session on its own socket (no server), so the test holds the `Session`.
fn session_call(
    model: &twilio_realtime::sim::fake_model::FakeModel,
    agent: Agent,
    call_opts: twilio_realtime::call::CallConfig,
) -> (
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<twilio_realtime::session::Session>,
) {
    use twilio_realtime::io::ws::{WsConfig, WsConn};
    use twilio_realtime::session::{Session, SessionConfig};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut opts = SessionConfig::new(Some("test-key".into())).url(model.url());
    opts.call = call_opts;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let (twilio, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
        tx.send(Session::start(twilio, agent, opts).unwrap())
            .unwrap();
    });
    (addr, rx)
}

#[test]
fn push_to_talk_commits_and_asks_for_responses_through_the_handle() {
    use twilio_realtime::proto::realtime::{SessionSettings, TurnDetection};
    let model = twilio_realtime::sim::fake_model::FakeModel::start(FakeModelConfig {
        script: vec![Reply::say("You said something.", 600)],
        caller_transcripts: vec!["Is it raining?".into()],
        ..Default::default()
    })
    .unwrap();
    let call_opts = {
        let mut o = twilio_realtime::CallConfig::default();
        o.session = SessionSettings::new().turn_detection(TurnDetection::Disabled);
        o
    };
    let (addr, handle) = session_call(&model, Agent::new("A", "x"), call_opts);
    let caller = std::thread::spawn(move || {
        TwilioCall::run(TwilioCallConfig::new(
            addr,
            vec![
                Segment::Speech(1000),
                Segment::WaitForAgent {
                    quiet_ms: 500,
                    timeout_ms: 8_000,
                },
                Segment::HangUp,
            ],
        ))
        .unwrap()
    });
    let session = handle.recv_timeout(Duration::from_secs(5)).unwrap();
    // The caller talks; nobody detects turns: the application commits and asks.
    common::wait_until("the caller's audio", Duration::from_secs(5), || {
        model.recording().appended_bytes >= 1000 * 8
    });
    session.commit_audio();
    session.create_response(Some("Answer the question.".into()));
    let report = caller.join().unwrap();
    session.join();
    let rec = model.recording();
    check_protocol(&report, &rec);
    assert!(rec.turns.is_empty(), "no VAD ran: {:?}", rec.turns);
    assert_eq!(
        rec.session_updates[0]["audio"]["input"]["turn_detection"],
        Value::Null
    );
    assert_eq!(
        rec.events
            .iter()
            .filter(|(_, e)| e.contains("input_audio_buffer.commit"))
            .count(),
        1
    );
    assert!(rec.errors_sent.is_empty(), "{:?}", rec.errors_sent);
    assert_eq!(
        rec.transcribed,
        [(rec.transcribed[0].0.clone(), "Is it raining?".to_owned())],
        "the committed turn was transcribed (caller transcription is on by default)"
    );
    assert_eq!(rec.response_requests.len(), 1);
    assert_eq!(
        rec.response_requests[0]["instructions"],
        "Answer the question."
    );
    assert_eq!(report.played_ms(), 600, "{:?}", report.timeline);
}

#[test]
fn after_session_expired_the_new_session_gets_the_whole_conversation() {
    // Issue 10 §9, through the threaded session: the fake expires the session mid-call.
    let model = FakeModelConfig {
        script: vec![
            Reply::say("It is sunny in Oslo.", 800),
            Reply::say("Still sunny.", 600),
        ],
        caller_transcripts: vec!["What is the weather in Oslo?".into(), "And now?".into()],
        faults: Faults {
            // Per connection: the second session would expire 4 s after it began, after
            // this call has ended.
            session_expired_after: Some(Duration::from_millis(4000)),
            ..Default::default()
        },
        ..Default::default()
    };
    let rig = Rig::start(model, agent);
    let (report, rec) = call(
        &rig,
        vec![
            Segment::Speech(800),
            Segment::WaitForAgent {
                quiet_ms: 600,
                timeout_ms: 8_000,
            },
            // the session expires around here; the call goes on
            Segment::Silence(1500),
            Segment::Speech(800),
            Segment::WaitForAgent {
                quiet_ms: 600,
                timeout_ms: 8_000,
            },
            Segment::HangUp,
        ],
        5,
        0,
    );
    assert_eq!(rec.connections, 2, "reconnected after session_expired");
    // The new session was told what the caller said and what the agent answered.
    assert!(
        rec.user_texts
            .iter()
            .any(|t| t == "What is the weather in Oslo?"),
        "caller turns carried over: {:?}",
        rec.user_texts
    );
    let replayed_agent = rec
        .events
        .iter()
        .any(|(_, e)| e.contains("conversation.item.create") && e.contains("It is sunny in Oslo."));
    assert!(replayed_agent, "agent turns carried over");
    // Its first update set the voice again (a new session may) and confirmed µ-law.
    assert_eq!(rec.session_updates.len(), 2);
    assert_eq!(rec.session_updates[1]["audio"]["output"]["voice"], "marin");
    assert_eq!(
        rec.appended_by_format.keys().collect::<Vec<_>>(),
        ["audio/pcmu"]
    );
    // Both answers were heard, and the call ended normally.
    assert_eq!(report.played_ms(), 1400, "{:?}", report.timeline);
    assert_eq!(rig.closed(), vec![CloseReason::TwilioStopped]);
    rig.stop();
}
