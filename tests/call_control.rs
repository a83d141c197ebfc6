//! Ending calls over loopback (issue 12 §2–§4): the fake model, the Twilio call simulator
//! (which plays audio out in real time and echoes marks like Twilio) and the bridge. The
//! simulator's ground truth says what the caller heard and when the stream closed.

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use twilio_realtime::agent::Agent;
use twilio_realtime::events::{CloseReason, SessionEvent};
use twilio_realtime::session::{Session, SessionHandle, SessionOptions};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, ModelRecording, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::ws::{WsConfig, WsConn};

/// One call through `Session::start`; `on_event` sees every event with the handle.
fn session_call(
    model: FakeModelConfig,
    agent: Agent,
    on_event: impl FnMut(&SessionHandle, &SessionEvent) + Send + 'static,
) -> (CallReport, Vec<SessionEvent>, ModelRecording) {
    let fake = FakeModel::start(model).expect("fake model");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let url = fake.url();
    let bridge = thread::spawn(move || {
        let mut on_event = on_event;
        let (tcp, _) = listener.accept().unwrap();
        let (conn, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
        let handle = Session::start(conn, agent, SessionOptions::new(None).url(url)).unwrap();
        let mut seen = Vec::new();
        while let Ok(ev) = handle.events().recv_timeout(Duration::from_secs(20)) {
            on_event(&handle, &ev);
            let closed = matches!(ev, SessionEvent::Closed { .. });
            seen.push(ev);
            if closed {
                break;
            }
        }
        handle.join();
        seen
    });
    let mut cfg = TwilioCallConfig::new(
        addr,
        vec![
            Segment::Speech(800),
            Segment::Silence(12_000),
            Segment::HangUp,
        ],
    );
    cfg.one_way_delay = Duration::from_millis(20);
    cfg.jitter = Duration::from_millis(3);
    let report = TwilioCall::run(cfg).expect("call runs");
    let events = bridge.join().unwrap();
    thread::sleep(Duration::from_millis(100));
    (report, events, fake.recording())
}

fn closed(events: &[SessionEvent]) -> Option<CloseReason> {
    events.iter().find_map(|e| match e {
        SessionEvent::Closed { reason } => Some(reason.clone()),
        _ => None,
    })
}

/// When the bridge closed the stream, from the simulator's timeline.
fn bridge_closed_at(report: &CallReport) -> Duration {
    report
        .timeline
        .iter()
        .find(|(_, what)| what == "bridge closed the stream")
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("the bridge never closed the stream: {:?}", report.timeline))
}

/// The goodbye was heard in full and the stream closed within 1 s after its last sample.
fn assert_heard_then_closed(report: &CallReport, goodbye_ms: u64) {
    assert!(report.closed_by_bridge, "{:?}", report.timeline);
    assert!(
        report.clears.is_empty(),
        "nothing was cut: {:?}",
        report.clears
    );
    let heard: u64 = report.heard_ms_by_item().values().sum();
    assert_eq!(heard, goodbye_ms, "the whole goodbye was heard");
    let last_sample = report.chunks.iter().map(|c| c.end).max().expect("audio");
    let closed = bridge_closed_at(report);
    assert!(
        closed >= last_sample,
        "closed at {closed:?}, before the goodbye ended at {last_sample:?}"
    );
    assert!(
        closed - last_sample < Duration::from_secs(1),
        "closed {:?} after the goodbye ended",
        closed - last_sample
    );
}

#[test]
fn the_agent_hangs_up_right_after_its_goodbye_and_the_caller_hears_all_of_it() {
    let model = FakeModelConfig {
        // The goodbye, then (asked for while it still plays) a response that only calls
        // end_call: the goodbye's audio is still in Twilio's buffer when end_call arrives.
        script: vec![
            Reply::say("Thanks for calling, have a lovely day. Goodbye!", 2000),
            Reply::call("end_call", "{}"),
        ],
        ..Default::default()
    };
    let mut asked = false;
    let (report, events, rec) = session_call(
        model,
        Agent::new("A", "Say goodbye, then end the call.").can_hang_up(),
        move |h, ev| {
            if matches!(ev, SessionEvent::AgentStart { .. }) && !asked {
                asked = true;
                h.create_response(None);
            }
        },
    );
    assert_eq!(closed(&events), Some(CloseReason::AgentHungUp));
    assert!(events.contains(&SessionEvent::Ending {
        reason: CloseReason::AgentHungUp
    }));
    assert_heard_then_closed(&report, 2000);
    assert_eq!(rec.function_outputs.len(), 1, "end_call got its output");
    assert_eq!(rec.responses, 2, "no response after end_call");
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    assert_eq!(rec.closed_by_client, 1, "the model socket closed");
}

#[test]
fn the_application_hangs_up_and_the_agents_last_words_are_heard() {
    let model = FakeModelConfig {
        script: vec![Reply::say("Your order ships tomorrow. Goodbye.", 1500)],
        ..Default::default()
    };
    let (report, events, rec) = session_call(model, Agent::new("A", "x"), |h, ev| {
        if matches!(ev, SessionEvent::AudioStart { .. }) {
            h.hang_up();
        }
    });
    assert_eq!(closed(&events), Some(CloseReason::HungUp));
    assert_heard_then_closed(&report, 1500);
    assert_eq!(rec.responses, 1);
}
