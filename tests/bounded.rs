//! Issue 10 §6: every per-call queue has a bound, tested with a misbehaving application or
//! peer: an application that never reads its events, a model that calls more tools at once
//! than the call runs.

mod common;

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use common::{wait_until, Rig};
use serde_json::json;
use tungstenite::Message;
use twilio_realtime::agent::{Agent, FunctionTool};
use twilio_realtime::events::SessionEvent;
use twilio_realtime::io::ws::{ClientRequest, WsConfig, WsConn};
use twilio_realtime::session::{Session, SessionConfig, TransportEvents};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Faults, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};

const SID: &str = "MZ00000000000000000000000000000001";

#[test]
fn an_application_that_never_reads_events_holds_at_most_their_capacity() {
    let mut model = FakeModel::start(FakeModelConfig {
        script: vec![Reply::say("Here is a long answer for you.", 2000)],
        ..Default::default()
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let caller = std::thread::spawn(move || {
        TwilioCall::run(TwilioCallConfig::new(
            addr,
            vec![
                Segment::Speech(400),
                Segment::WaitForAgent {
                    quiet_ms: 300,
                    timeout_ms: 10_000,
                },
                Segment::HangUp,
            ],
        ))
    });
    let (tcp, _) = listener.accept().unwrap();
    let (twilio, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
    let mut opts = SessionConfig::new(Some("sk-test".into())).url(model.url());
    // Every message and every audio chunk becomes an event: hundreds in a few seconds.
    opts.transport_events = TransportEvents::All;
    opts.call.audio_events = true;
    opts.event_capacity = 32;
    let handle = Session::start(twilio, Agent::new("A", "Answer."), opts).unwrap();
    // The application never calls events() while the call runs.
    let report = caller.join().unwrap().expect("the call ran");
    assert_eq!(report.played_ms(), 2000, "the audio path was never held up");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    wait_until("the session ended", Duration::from_secs(10), || {
        handle.is_finished()
    });
    let q = handle.queue_stats();
    assert!(q.events_peak <= 32, "{q:?}");
    assert!(q.events_dropped > 100, "{q:?}");
    let events: Vec<SessionEvent> = handle.events().iter().collect();
    assert!(events.len() <= 33, "{}", events.len());
    assert!(
        matches!(events[0], SessionEvent::EventsDropped { count } if count == q.events_dropped),
        "{:?}",
        events[0]
    );
    // What survived: the call's own events, not the copies of audio and socket traffic.
    assert!(
        matches!(events.last(), Some(SessionEvent::Closed { .. })),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, SessionEvent::AgentEnd { .. })));
    handle.join();
    model.stop();
}

fn start_json() -> String {
    format!(
        r#"{{"event":"start","sequenceNumber":"1","streamSid":"{SID}","start":{{"accountSid":"AC1","streamSid":"{SID}","callSid":"CA1","tracks":["inbound"],"customParameters":{{}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
    )
}

/// A model that asks for five tool calls in one response.
fn five_tool_calls() -> Faults {
    let at = Duration::from_millis(300);
    let mut raw = vec![(
        at,
        json!({"type":"response.created","event_id":"ev_c","response":{"id":"resp_t","object":"realtime.response","status":"in_progress","output":[]}}).to_string(),
    )];
    let items: Vec<serde_json::Value> = (0..5)
        .map(|i| json!({"id":format!("item_t{i}"),"object":"realtime.item","type":"function_call","status":"completed","name":"slow","call_id":format!("call_{i}"),"arguments":"{}"}))
        .collect();
    for (i, item) in items.iter().enumerate() {
        raw.push((
            at,
            json!({"type":"response.output_item.done","event_id":format!("ev_{i}"),"response_id":"resp_t","output_index":i,"item":item}).to_string(),
        ));
    }
    raw.push((
        at,
        json!({"type":"response.done","event_id":"ev_d","response":{"id":"resp_t","object":"realtime.response","status":"completed","output":items}}).to_string(),
    ));
    Faults {
        raw,
        ..Default::default()
    }
}

static GATE: Mutex<Option<crossbeam_channel::Receiver<()>>> = Mutex::new(None);

fn slow_agent() -> Agent {
    let slow = FunctionTool::new(
        "slow",
        "Takes its time.",
        json!({"type":"object","properties":{}}),
        |_| {
            let gate = GATE.lock().unwrap().clone();
            if let Some(g) = gate {
                let _ = g.recv_timeout(Duration::from_secs(20));
            }
            Ok("done".into())
        },
    );
    Agent::new("A", "Answer.").tool(slow)
}

#[test]
fn tool_calls_beyond_the_worker_cap_get_an_error_output_not_a_thread() {
    let (release, gate) = crossbeam_channel::unbounded::<()>();
    *GATE.lock().unwrap() = Some(gate);
    let rig = Rig::start_with(
        FakeModelConfig {
            faults: five_tool_calls(),
            ..Default::default()
        },
        slow_agent,
        |cfg| cfg.session.max_tool_workers = 2,
    );
    let req = ClientRequest::new(format!("ws://{}/media-stream", rig.addr));
    let call = WsConn::connect(&req, &WsConfig::default())
        .unwrap()
        .spawn("raw-twilio", |_| {})
        .unwrap();
    call.sender().send(Message::text(start_json())).unwrap();
    // Three of five are refused at once, while two workers are busy.
    wait_until("3 refusals", Duration::from_secs(10), || {
        rig.model.recording().function_outputs.len() >= 3
    });
    let outs = rig.model.recording().function_outputs;
    assert_eq!(outs.len(), 3, "{outs:?}");
    assert!(
        outs.iter()
            .all(|(_, o)| o.contains("too many tools are running")),
        "{outs:?}"
    );
    // Let the two running ones finish: their outputs follow.
    release.send(()).unwrap();
    release.send(()).unwrap();
    wait_until("5 outputs", Duration::from_secs(10), || {
        rig.model.recording().function_outputs.len() >= 5
    });
    let outs = rig.model.recording().function_outputs;
    assert_eq!(
        outs.iter().filter(|(_, o)| o.contains("done")).count(),
        2,
        "{outs:?}"
    );
    let errors = rig
        .events()
        .into_iter()
        .filter(|e| matches!(e, SessionEvent::ToolEnd { is_error: true, .. }))
        .count();
    assert_eq!(errors, 3);
    call.close();
    rig.wait_idle();
    rig.stop();
}
