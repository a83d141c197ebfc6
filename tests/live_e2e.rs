//! Whole GPT-Live calls over loopback: the simulated Twilio caller, the session, and the fake
//! GPT-Live server (`sim::fake_live`). Greeting, a question answered with a tool, a barge-in
//! (the model stops by itself; the bridge never clears Twilio), a goodbye with `end_call`.
//! Every client event the bridge sent is validated against the vendored client schema
//! (strict), and Twilio's playout buffer never runs more than the pacer's lead ahead of what
//! the caller heard (ground truth from the simulated Twilio).

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::live::LiveSchemas;
use common::weather_tool;
use twilio_realtime::agent::Agent;
use twilio_realtime::call::live::LiveConfig;
use twilio_realtime::call::{Greeting, ModelApi};
use twilio_realtime::events::{CloseReason, SessionEvent};
use twilio_realtime::io::ws::{WsConfig, WsConn};
use twilio_realtime::session::model_log::ModelEventLog;
use twilio_realtime::session::{Session, SessionConfig};
use twilio_realtime::sim::fake_live::{FakeLive, FakeLiveConfig, LiveRecording, LiveReply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::CallError;

/// A `Write` into a shared buffer (the model-event log under test).
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Call {
    events: Vec<SessionEvent>,
    report: CallReport,
    rec: LiveRecording,
    log: String,
    /// `Session::live_session_id` and the session's stats' copy of it, after the call.
    session_id: Option<String>,
    stats_session_id: Option<String>,
}

fn run(
    agent: Agent,
    live: FakeLiveConfig,
    script: Vec<Segment>,
    greeting: Option<Greeting>,
) -> Call {
    let fake = FakeLive::start(live).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let caller = std::thread::spawn(move || {
        let mut cfg = TwilioCallConfig::new(addr, script);
        cfg.max_duration = Duration::from_secs(40);
        TwilioCall::run(cfg)
    });
    let (tcp, _) = listener.accept().unwrap();
    let (twilio, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
    let buf = Buf::default();
    let mut opts = SessionConfig::new(Some("test-key".into()))
        .model_api(ModelApi::Live(LiveConfig::default()))
        .url(fake.url());
    opts.call.greeting = greeting;
    opts.model_events = Some(ModelEventLog::new(buf.clone()));
    let session = Session::start(twilio, agent, opts).unwrap();
    let mut events = Vec::new();
    for e in session.events().iter() {
        let closed = matches!(e, SessionEvent::Closed { .. });
        events.push(e);
        if closed {
            break;
        }
    }
    let session_id = session.live_session_id().map(str::to_owned);
    let stats_session_id = session.call_stats().live_session_id;
    session.join();
    let report = caller.join().unwrap().unwrap();
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    Call {
        events,
        report,
        rec: fake.recording(),
        log,
        session_id,
        stats_session_id,
    }
}

fn said(events: &[SessionEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::AgentEnd { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn assert_clean(call: &Call) {
    let schemas = LiveSchemas::load();
    assert!(!call.rec.client_events.is_empty());
    for text in &call.rec.client_events {
        schemas.assert_client_event(&serde_json::from_str(text).unwrap());
    }
    assert!(call.rec.violations.is_empty(), "{:?}", call.rec.violations);
    assert!(call.rec.errors.is_empty(), "{:?}", call.rec.errors);
    assert_eq!(call.rec.appended_before_start, 0);
    assert!(
        call.report.violations.is_empty(),
        "{:?}",
        call.report.violations
    );
    assert!(
        call.report.clears.is_empty(),
        "the bridge never clears Twilio with GPT-Live"
    );
    // Ground truth: audio buffered at Twilio when each chunk arrived, never more than the
    // pacer's lead (150 ms) and one 20 ms piece.
    let max_buffered = call
        .report
        .chunks
        .iter()
        .map(|c| c.start.saturating_sub(c.arrival))
        .max()
        .unwrap_or_default();
    assert!(
        max_buffered <= Duration::from_millis(170),
        "buffered {max_buffered:?}"
    );
    // The session id the server gave is on the handle, in the stats (the summary line's
    // source) and in the model-event log, right after `session.start`.
    let given = call.rec.session_ids.first().cloned();
    assert!(given.is_some());
    assert_eq!(call.session_id, given);
    assert_eq!(call.stats_session_id, given);
    let (received, lines): (Vec<serde_json::Value>, Vec<serde_json::Value>) = call
        .log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .partition(|l| l["received"] == true);
    assert_eq!(
        received,
        [serde_json::json!({"type":"session.started","received":true,"session":{"id":given}})]
    );
    let second: serde_json::Value = serde_json::from_str(call.log.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second, received[0]);
    // The model-event log has the same events, in order, audio elided.
    // (The log can be a few lines longer: what was written as the fake closed its socket.)
    assert!(lines.len() >= call.rec.client_events.len());
    assert!(lines.len() <= call.rec.client_events.len() + 5);
    for (line, sent) in lines.iter().zip(&call.rec.client_events) {
        let sent: serde_json::Value = serde_json::from_str(sent).unwrap();
        assert_eq!(line["type"], sent["type"]);
        if let Some(a) = line["audio"].as_str() {
            assert!(a.starts_with("<elided "), "{a}");
        }
    }
}

#[test]
fn whole_call_greeting_question_tool_barge_in_goodbye() {
    let agent = Agent::new("Assistant", "You are a friendly weather assistant.")
        .voice("marin")
        .tool(weather_tool())
        .can_hang_up();
    let live = FakeLiveConfig {
        script: vec![
            LiveReply::say("Hello! How can I help?", 1200),
            LiveReply::say("Let me check.", 600)
                .then_call("get_weather", r#"{"location":"Paris"}"#),
            LiveReply::say(
                "It is sunny in Paris and it stays sunny all week long.",
                4000,
            ),
            LiveReply::say("Sorry, go ahead.", 800),
            LiveReply::say("Goodbye!", 700).then_call("end_call", "{}"),
        ],
        caller_transcripts: vec![
            "What is the weather in Paris?".into(),
            "Thanks!".into(),
            "Bye.".into(),
        ],
        audio_speed: 4.0,
        ..Default::default()
    };
    let script = vec![
        Segment::WaitForAgent {
            quiet_ms: 700,
            timeout_ms: 8_000,
        },
        Segment::Speech(800),
        Segment::BargeIn {
            after_ms: 900,
            speech_ms: 600,
            timeout_ms: 10_000,
        },
        Segment::WaitForAgent {
            quiet_ms: 700,
            timeout_ms: 8_000,
        },
        Segment::Speech(600),
        Segment::WaitForAgent {
            quiet_ms: 3_000,
            timeout_ms: 10_000,
        },
        Segment::HangUp,
    ];
    let call = run(
        agent,
        live,
        script,
        Some(Greeting::Say("Hello! How can I help?".into())),
    );
    assert_clean(&call);
    let said = said(&call.events);
    assert_eq!(
        said.first().map(String::as_str),
        Some("Hello! How can I help?"),
        "{said:?}"
    );
    // "Let me check." and the answer after the tool are one turn: less than the turn gap
    // (0.8 s) passed between their transcripts.
    assert!(said.contains(&"Sorry, go ahead.".to_owned()), "{said:?}");
    assert_eq!(
        said.last().map(String::as_str),
        Some("Goodbye!"),
        "{said:?}"
    );
    // The weather answer was cut by the model itself (it stopped for the caller).
    let weather = said
        .iter()
        .find(|t| t.starts_with("Let me check. It is sunny"))
        .expect("weather answer");
    assert!(
        weather.len()
            < "Let me check. It is sunny in Paris and it stays sunny all week long.".len()
    );
    assert!(call.rec.stopped_for_caller >= 1);
    // The tool ran once, its output went back, and one response.create continued it.
    assert_eq!(
        call.rec.function_outputs.len(),
        2,
        "{:?}",
        call.rec.function_outputs
    ); // weather + end_call
    assert_eq!(
        call.rec.function_outputs[0].1,
        "The weather in Paris is sunny."
    );
    assert_eq!(call.rec.continuations, 1);
    assert!(call
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::ToolEnd { tool, .. } if tool == "get_weather")));
    // The greeting was commentary worded as an instruction, the first thing after start.
    assert_eq!(call.rec.commentary.len(), 1);
    assert!(call.rec.commentary[0].contains("Do not wait for the caller"));
    let start = &call.rec.starts[0];
    assert_eq!(
        start["audio"]["format"],
        serde_json::json!({"type":"audio/pcmu","rate":8000})
    );
    assert_eq!(
        start["delegation"]["responses"]["tools"][0]["name"],
        "get_weather"
    );
    // The goodbye was heard in full, then the bridge ended the call and closed the session.
    assert!(
        matches!(
            call.events.last(),
            Some(SessionEvent::Closed {
                reason: CloseReason::AgentHungUp
            })
        ),
        "{:?}",
        call.events.last()
    );
    assert!(call.report.closed_by_bridge);
    assert_eq!(call.rec.close_requests, 1);
}

#[test]
fn production_pace_greeting_is_heard_and_the_lead_stays_shallow() {
    let agent = Agent::new("Assistant", "Be brief.");
    let live = FakeLiveConfig {
        script: vec![LiveReply::say("Hello there, this is the assistant.", 1500)],
        audio_speed: 1.0,
        ..Default::default()
    };
    let script = vec![
        Segment::WaitForAgent {
            quiet_ms: 600,
            timeout_ms: 8_000,
        },
        Segment::HangUp,
    ];
    let call = run(
        agent,
        live,
        script,
        Some(Greeting::Instructions("Greet the caller.".into())),
    );
    assert_clean(&call);
    assert_eq!(said(&call.events), ["Hello there, this is the assistant."]);
    let audible: u64 = call
        .report
        .chunks
        .iter()
        .filter(|c| c.audible)
        .map(|c| c.played)
        .sum();
    assert!(
        audible / 8 >= 1400,
        "heard {} ms of the greeting",
        audible / 8
    );
    assert!(matches!(
        call.events.last(),
        Some(SessionEvent::Closed {
            reason: CloseReason::TwilioStopped
        })
    ));
    assert_eq!(
        call.rec.close_requests, 1,
        "session.close on the caller's hang-up"
    );
}

#[test]
fn an_expired_session_ends_the_call_with_its_reason() {
    let live = FakeLiveConfig {
        script: vec![LiveReply::say("Hello.", 500)],
        max_session: Duration::from_millis(2500),
        ..Default::default()
    };
    let script = vec![
        Segment::WaitForAgent {
            quiet_ms: 5_000,
            timeout_ms: 8_000,
        },
        Segment::HangUp,
    ];
    let call = run(
        Agent::new("A", "x"),
        live,
        script,
        Some(Greeting::Instructions("Greet.".into())),
    );
    assert_clean(&call);
    assert!(
        matches!(
            call.events.last(),
            Some(SessionEvent::Closed { reason: CloseReason::ModelSessionClosed(r) })
                if *r == twilio_realtime::proto::live::SessionCloseReason::Expired
        ),
        "{:?}",
        call.events.last()
    );
    assert!(call.report.closed_by_bridge);
    assert_eq!(
        call.rec.close_requests, 0,
        "the server closed it; nothing to ask"
    );
}

#[test]
fn a_voice_the_server_refuses_ends_the_call_before_any_audio() {
    let live = FakeLiveConfig::default();
    let script = vec![Segment::Silence(3_000), Segment::HangUp];
    let call = run(Agent::new("A", "x").voice("fable"), live, script, None);
    assert_eq!(
        call.rec.errors,
        [(
            "forbidden".to_owned(),
            Some("session.audio.output.voice".to_owned())
        )]
    );
    assert!(
        matches!(
            call.events.last(),
            Some(SessionEvent::Closed { reason: CloseReason::Error(CallError::ModelConfigRejected { param: Some(p), .. }) })
                if p == "session.audio.output.voice"
        ),
        "{:?}",
        call.events.last()
    );
    assert_eq!(
        call.rec.appended_bytes + call.rec.appended_before_start,
        0,
        "no caller audio flowed"
    );
    assert!(call.report.chunks.is_empty(), "no agent audio played");
    assert_eq!(call.session_id, None, "a refused session.start gives no id");
    assert!(!call.log.contains("\"received\""), "{}", call.log);
}
