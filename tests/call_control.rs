//! Ending calls over loopback (issue 12 §2–§4): the fake model, the Twilio call simulator
//! (which plays audio out in real time and echoes marks like Twilio) and the bridge. The
//! simulator's ground truth says what the caller heard and when the stream closed.

mod common;

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use twilio_realtime::agent::Agent;
use twilio_realtime::events::{CloseReason, SessionEvent};
use twilio_realtime::io::ws::{WsConfig, WsConn};
use twilio_realtime::session::{Session, SessionConfig};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, ModelRecording, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};

/// One call through `Session::start`; `on_event` sees every event with the handle.
fn session_call(
    model: FakeModelConfig,
    agent: Agent,
    on_event: impl FnMut(&Session, &SessionEvent) + Send + 'static,
) -> (CallReport, Vec<SessionEvent>, ModelRecording) {
    let fake = FakeModel::start(model).expect("fake model");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let url = fake.url();
    let bridge = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let (conn, _) = WsConn::accept(tcp, None, &WsConfig::default()).unwrap();
        let handle = Session::start(conn, agent, SessionConfig::new(None).url(url)).unwrap();
        common::run_session(handle, Duration::from_secs(20), on_event)
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

// ---------------------------------------------------------------------------------------------
// Under the bundled server: transfers through `<Connect action>` + `/call-ended` (§3) and the
// per-call handler (§4)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::json;
use twilio_realtime::agent::FunctionTool;
use twilio_realtime::server::signature;
use twilio_realtime::server::{CallEvents, Server, ServerConfig, Stopper};
use twilio_realtime::session::CallControl;

fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
    common::http_request(addr, raw)
}

fn post(addr: SocketAddr, path: &str, body: &str, sig: Option<&str>) -> (u16, String) {
    common::post_form(addr, path, body, sig)
}

struct Bridge {
    model: FakeModel,
    addr: SocketAddr,
    stopper: Stopper,
    events: Arc<Mutex<Vec<SessionEvent>>>,
    server: Option<thread::JoinHandle<std::io::Result<twilio_realtime::server::ServerStats>>>,
}

impl Bridge {
    fn start(
        model: FakeModelConfig,
        agent: fn() -> Agent,
        tweak: impl FnOnce(&mut ServerConfig),
        handler: impl Fn(u64, CallControl) -> CallEvents + Send + Sync + 'static,
    ) -> Bridge {
        let model = FakeModel::start(model).expect("fake model");
        let mut cfg = ServerConfig::new();
        cfg.bind = "127.0.0.1:0".parse().unwrap();
        cfg.session.model.url = model.url();
        cfg.shutdown_grace = Duration::from_secs(5);
        tweak(&mut cfg);
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let server = Server::bind(cfg, Arc::new(agent))
            .expect("bind")
            .on_event(Arc::new(move |_, e: &SessionEvent| {
                seen.lock().unwrap().push(e.clone())
            }))
            .on_call(handler);
        let addr = server.local_addr();
        let stopper = server.stopper();
        let server = Some(thread::spawn(move || server.run()));
        Bridge {
            model,
            addr,
            stopper,
            events,
            server,
        }
    }

    fn call(&self, call_sid: &str, silence_ms: u32) -> CallReport {
        self.call_on("/media-stream", call_sid, silence_ms)
    }

    fn call_on(&self, path: &str, call_sid: &str, silence_ms: u32) -> CallReport {
        let mut cfg = TwilioCallConfig::new(
            self.addr,
            vec![
                Segment::Speech(800),
                Segment::Silence(silence_ms),
                Segment::HangUp,
            ],
        );
        cfg.call_sid = Some(call_sid.into());
        cfg.path = path.into();
        cfg.one_way_delay = Duration::from_millis(20);
        cfg.jitter = Duration::from_millis(3);
        let report = TwilioCall::run(cfg).expect("call runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.stopper.live_calls() > 0 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        report
    }

    fn events(&self) -> Vec<SessionEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

fn desk_agent() -> Agent {
    Agent::new("Front desk", "You put callers through.")
        .transfer_to(
            "Desk",
            "sip:desk&1@pbx.example.com;transport=tls",
            "A person at the front desk",
        )
        .expect("a valid SIP URI")
}

/// Asks for one more response when the first starts (the model's next scripted reply), as an
/// application would after the agent's announcement.
fn one_more_response(_call_no: u64, control: CallControl) -> CallEvents {
    let mut asked = false;
    Box::new(move |ev: &SessionEvent| {
        if matches!(ev, SessionEvent::AgentStart { .. }) && !asked {
            asked = true;
            control.create_response(None);
        }
    })
}

#[test]
fn a_transfer_ends_the_stream_after_the_announcement_and_call_ended_dials_it() {
    transfer_through_call_ended(None);
}

/// Behind a load balancer (`INSTANCE_ID`): the instance that ran the call holds its transfer,
/// so `<Connect action>` names it (`/call-ended/NAME`) for the balancer to route it back.
#[test]
fn with_an_instance_name_the_action_names_it_and_call_ended_name_dials_the_transfer() {
    transfer_through_call_ended(Some("twilio-realtime-1"));
}

fn transfer_through_call_ended(instance: Option<&str>) {
    let suffix = instance.map(|n| format!("/{n}")).unwrap_or_default();
    let name = instance.map(str::to_owned);
    let bridge = Bridge::start(
        FakeModelConfig {
            script: vec![
                Reply::say("Let me put you through to the front desk.", 1500),
                Reply::call("transfer_call", r#"{"destination":"Desk"}"#),
            ],
            ..Default::default()
        },
        desk_agent,
        |cfg| cfg.instance = name,
        one_more_response,
    );
    // the webhook's TwiML names /call-ended (/call-ended/NAME) as <Connect>'s action
    let (status, twiml) = post(
        bridge.addr,
        "/incoming-call",
        "CallSid=CA77&From=%2B15550100",
        None,
    );
    assert_eq!(status, 200);
    assert!(
        twiml.contains(&format!(
            "<Connect action=\"https://{}/call-ended{suffix}\">",
            bridge.addr
        )),
        "{twiml}"
    );
    assert!(
        twiml.contains(&format!(
            "<Stream url=\"wss://{}/media-stream{suffix}\">",
            bridge.addr
        )),
        "{twiml}"
    );
    let report = bridge.call_on(&format!("/media-stream{suffix}"), "CA77", 12_000);
    assert_heard_then_closed(&report, 1500);
    let reason = CloseReason::Transferred {
        name: "Desk".into(),
        destination: twilio_realtime::telephony::transfer::Destination::parse(
            "sip:desk&1@pbx.example.com;transport=tls",
        )
        .unwrap(),
        by_agent: true,
    };
    assert_eq!(closed(&bridge.events()), Some(reason));
    // Twilio requests the action once the stream is gone: it dials the destination (escaped)
    let action = format!("/call-ended{suffix}");
    let (status, twiml) = post(
        bridge.addr,
        &action,
        "CallSid=CA77&CallStatus=in-progress",
        None,
    );
    assert_eq!(status, 200);
    assert!(
        twiml.contains("<Dial><Sip>sip:desk&amp;1@pbx.example.com;transport=tls</Sip></Dial>"),
        "{twiml}"
    );
    assert!(!twiml.contains("<Hangup/>"));
    // taken once; any other call hangs up
    for sid in ["CA77", "CA-unknown"] {
        let (status, twiml) = post(bridge.addr, &action, &format!("CallSid={sid}"), None);
        assert_eq!(status, 200);
        assert!(twiml.contains("<Hangup/>"), "{twiml}");
        assert!(!twiml.contains("<Dial>"), "{twiml}");
    }
    let rec = bridge.model.recording();
    assert_eq!(rec.responses, 2, "nothing talks after the transfer");
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
}

#[test]
fn call_ended_is_signed_like_the_webhook() {
    const TOKEN: &str = "test-auth-token";
    const PUBLIC: &str = "https://bridge.example.com";
    let bridge = Bridge::start(
        FakeModelConfig::default(),
        desk_agent,
        |cfg| {
            cfg.twilio_auth_token = Some(TOKEN.into());
            cfg.public_url = Some(PUBLIC.into());
        },
        one_more_response,
    );
    let body = "CallSid=CA1&CallStatus=in-progress";
    let form = [("CallSid", "CA1"), ("CallStatus", "in-progress")];
    assert_eq!(post(bridge.addr, "/call-ended", body, None).0, 403);
    let wrong = signature::compute("other", &format!("{PUBLIC}/call-ended"), &form);
    assert_eq!(post(bridge.addr, "/call-ended", body, Some(&wrong)).0, 403);
    let right = signature::compute(TOKEN, &format!("{PUBLIC}/call-ended"), &form);
    let (status, twiml) = post(bridge.addr, "/call-ended", body, Some(&right));
    assert_eq!(status, 200);
    assert!(twiml.contains("<Hangup/>"), "{twiml}");
    assert_eq!(
        request(bridge.addr, "GET /call-ended HTTP/1.1\r\nHost: x\r\n\r\n").0,
        405
    );
    // /call-ended/NAME (an instance's action) is signed over its own URL
    let named = format!("{PUBLIC}/call-ended/b1");
    let elsewhere = signature::compute(TOKEN, &format!("{PUBLIC}/call-ended"), &form);
    assert_eq!(
        post(bridge.addr, "/call-ended/b1", body, Some(&elsewhere)).0,
        403
    );
    let right = signature::compute(TOKEN, &named, &form);
    let (status, twiml) = post(bridge.addr, "/call-ended/b1", body, Some(&right));
    assert_eq!(status, 200);
    assert!(twiml.contains("<Hangup/>"), "{twiml}");
    assert_eq!(
        request(
            bridge.addr,
            "GET /call-ended/b1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .0,
        405
    );
}

fn approval_agent() -> Agent {
    Agent::new("A", "You refund orders.").tool(
        FunctionTool::new(
            "refund",
            "Refund an order.",
            json!({"type":"object","properties":{"order":{"type":"string"}},"required":["order"]}),
            |c| {
                Ok(format!(
                    "Refunded {}.",
                    c.arguments["order"].as_str().unwrap_or("?")
                ))
            },
        )
        .needs_approval(true),
    )
}

#[test]
fn the_per_call_handler_approves_from_another_thread_and_hangs_up() {
    let approved = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let log = approved.clone();
    let bridge = Bridge::start(
        FakeModelConfig {
            script: vec![
                Reply::call("refund", r#"{"order":"A-1"}"#),
                Reply::say("Your refund is on its way. Goodbye.", 1200),
            ],
            ..Default::default()
        },
        approval_agent,
        |_| {},
        move |call_no: u64, control: CallControl| -> CallEvents {
            let log = log.clone();
            Box::new(move |ev: &SessionEvent| match ev {
                SessionEvent::ToolApprovalRequested { call_id, .. } => {
                    // a person decides elsewhere: approve from another thread
                    let (control, call_id, log) = (control.clone(), call_id.clone(), log.clone());
                    thread::spawn(move || {
                        thread::sleep(Duration::from_millis(50));
                        log.lock().unwrap().push((call_no, call_id.clone()));
                        control.approve(call_id);
                    });
                }
                SessionEvent::AudioStart { .. } => {
                    let control = control.clone();
                    thread::spawn(move || control.hang_up());
                }
                _ => {}
            })
        },
    );
    let report = bridge.call("CA42", 12_000);
    assert_eq!(approved.lock().unwrap().len(), 1);
    assert_eq!(approved.lock().unwrap()[0].0, 1, "the handler got call 1");
    let rec = bridge.model.recording();
    assert_eq!(
        rec.function_outputs
            .iter()
            .map(|(_, o)| o.as_str())
            .collect::<Vec<_>>(),
        ["Refunded A-1."],
        "the approved tool ran"
    );
    assert_eq!(closed(&bridge.events()), Some(CloseReason::HungUp));
    assert_heard_then_closed(&report, 1200);
}

#[test]
fn the_per_call_handler_rejects_and_the_model_is_told() {
    let bridge = Bridge::start(
        FakeModelConfig {
            script: vec![
                Reply::call("refund", r#"{"order":"A-1"}"#),
                Reply::say("Sorry, I cannot refund that.", 800),
            ],
            ..Default::default()
        },
        approval_agent,
        |_| {},
        |_, control: CallControl| -> CallEvents {
            Box::new(move |ev: &SessionEvent| {
                if let SessionEvent::ToolApprovalRequested { call_id, .. } = ev {
                    control.reject(call_id.clone(), Some("Refunds need a manager.".into()));
                }
            })
        },
    );
    let report = bridge.call("CA43", 4_000);
    let rec = bridge.model.recording();
    assert_eq!(
        rec.function_outputs
            .iter()
            .map(|(_, o)| o.as_str())
            .collect::<Vec<_>>(),
        ["Refunds need a manager."]
    );
    assert_eq!(report.played_ms(), 800);
}
