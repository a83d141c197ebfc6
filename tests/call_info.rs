//! Caller context end to end: the webhook's fields and the stream's `start` become the call's
//! `CallInfo`, which chooses and personalises the agent (its instructions reach the model's
//! `session.update`) and reaches every tool invocation.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;
use twilio_realtime::agent::{Agent, FunctionTool};
use twilio_realtime::events::{CloseReason, SessionEvent};
use twilio_realtime::server::signature;
use twilio_realtime::server::{Server, ServerConfig, ServerStats, Stopper};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, ModelRecording, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::telephony::call_info::{CallInfo, Direction};

const TOKEN: &str = "test-auth-token";
const PUBLIC: &str = "https://bridge.example.test";

type Seen = Arc<Mutex<Vec<CallInfo>>>;

struct Rig {
    model: FakeModel,
    addr: SocketAddr,
    stopper: Stopper,
    factory_saw: Seen,
    tool_saw: Seen,
    events: Arc<Mutex<Vec<SessionEvent>>>,
    server: Option<JoinHandle<std::io::Result<ServerStats>>>,
}

fn agent_for(call: &CallInfo, tool_saw: Seen) -> Agent {
    let lookup = FunctionTool::new(
        "lookup_account",
        "The caller's account",
        json!({"type": "object", "properties": {}}),
        move |c| {
            let info = c.call_info.as_deref().ok_or("no call info")?;
            tool_saw.lock().unwrap().push(info.clone());
            Ok(format!(
                "Account of {} ({}): gold",
                info.from.as_deref().unwrap_or("?"),
                info.field("FromCity").unwrap_or("?")
            ))
        },
    );
    let name = call.caller_name().unwrap_or("a caller we do not know");
    Agent::new("Front", format!("You are speaking with {name}.")).tool(lookup)
}

fn start(auth: bool, panic_for: Option<&'static str>) -> Rig {
    let model = FakeModel::start(FakeModelConfig {
        script: vec![
            Reply::call("lookup_account", "{}"),
            Reply::say("You have a gold account.", 600),
        ],
        ..Default::default()
    })
    .unwrap();
    let mut cfg = ServerConfig::new();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.session.model.url = model.url();
    cfg.shutdown_grace = Duration::from_secs(5);
    if auth {
        cfg.public_url = Some(PUBLIC.into());
        cfg.twilio_auth_token = Some(TOKEN.into());
        cfg.stream_token_ttl = Some(Duration::from_secs(30));
    }
    let factory_saw: Seen = Arc::default();
    let tool_saw: Seen = Arc::default();
    let events: Arc<Mutex<Vec<SessionEvent>>> = Arc::default();
    let (f, t, e) = (factory_saw.clone(), tool_saw.clone(), events.clone());
    let server = Server::bind(cfg, move |call: &CallInfo| {
        f.lock().unwrap().push(call.clone());
        if panic_for.is_some_and(|sid| sid == call.call_sid) {
            panic!("the factory fails for this call");
        }
        agent_for(call, t.clone())
    })
    .unwrap()
    .on_event(Arc::new(move |_, ev: &SessionEvent| {
        e.lock().unwrap().push(ev.clone())
    }));
    let addr = server.local_addr();
    let stopper = server.stopper();
    let server = Some(std::thread::spawn(move || server.run()));
    Rig {
        model,
        addr,
        stopper,
        factory_saw,
        tool_saw,
        events,
        server,
    }
}

impl Rig {
    fn stop(mut self) {
        self.stopper.stop();
        self.server.take().unwrap().join().unwrap().unwrap();
    }

    fn wait_idle(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.stopper.live_calls() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(self.stopper.live_calls(), 0, "the call did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Twilio's voice webhook request: a form POST, signed when a token is given.
fn webhook(addr: SocketAddr, form: &[(&str, &str)], token: Option<&str>) -> (u16, String) {
    let sig = token.map(|t| signature::compute(t, &format!("{PUBLIC}/incoming-call"), form));
    common::post_form(
        addr,
        "/incoming-call",
        &common::form_encode(form),
        sig.as_deref(),
    )
}

/// The `<Parameter>` value named `name` in the webhook's TwiML.
fn parameter(twiml: &str, name: &str) -> Option<String> {
    let key = format!("<Parameter name=\"{name}\" value=\"");
    let rest = &twiml[twiml.find(&key)? + key.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

fn run_call(rig: &Rig, call_sid: &str, params: &[(&str, String)], auth: bool) {
    let mut cfg = TwilioCallConfig::new(
        rig.addr,
        vec![
            Segment::Silence(200),
            Segment::Speech(600),
            Segment::WaitForAgent {
                quiet_ms: 600,
                timeout_ms: 10_000,
            },
            Segment::HangUp,
        ],
    );
    cfg.call_sid = Some(call_sid.into());
    cfg.custom_parameters = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    if auth {
        let sig = signature::compute(TOKEN, "wss://bridge.example.test/media-stream", &[]);
        cfg.headers.push(("X-Twilio-Signature".into(), sig));
    }
    cfg.max_duration = Duration::from_secs(20);
    TwilioCall::run(cfg).expect("call runs");
    rig.wait_idle();
}

fn first_instructions(rec: &ModelRecording) -> String {
    rec.session_updates
        .first()
        .and_then(|s| s["instructions"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn webhook_fields_choose_the_agent_and_reach_the_tool() {
    let rig = start(true, None);
    let form = [
        ("AccountSid", "AC0123"),
        ("CallSid", "CA7001"),
        ("From", "+442071838750"),
        ("To", "+15550199"),
        ("Direction", "inbound"),
        ("CallStatus", "ringing"),
        ("CallerName", "Ada Lovelace"),
        ("FromCity", "LONDON"),
    ];
    let (status, twiml) = webhook(rig.addr, &form, Some(TOKEN));
    assert_eq!(status, 200, "{twiml}");
    let token = parameter(&twiml, "token").expect("a stream token");
    let caller = parameter(&twiml, "caller").expect("the caller parameter");
    run_call(
        &rig,
        "CA7001",
        &[("caller", caller), ("token", token)],
        true,
    );

    let seen = rig.factory_saw.lock().unwrap().clone();
    // Twice: at the signed webhook, for the warm model's configuration (no streamSid yet),
    // and on `start`; the same caller details both times.
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].stream_sid, "");
    assert!(!seen[1].stream_sid.is_empty());
    for call in &seen {
        assert_eq!(call.call_sid, "CA7001");
        assert_eq!(call.from.as_deref(), Some("+442071838750"));
        assert_eq!(call.to.as_deref(), Some("+15550199"));
        assert_eq!(call.direction, Some(Direction::Inbound));
        assert_eq!(call.caller_name(), Some("Ada Lovelace"));
        assert_eq!(call.field("FromCity"), Some("LONDON"));
        assert!(
            !call.custom_parameters.contains_key("token"),
            "the stream token is not part of the call info"
        );
    }

    let rec = rig.model.recording();
    assert_eq!(
        first_instructions(&rec),
        "You are speaking with Ada Lovelace.",
        "the personalised agent configured the model session"
    );
    assert_eq!(
        rec.function_outputs.first().map(|o| o.1.as_str()),
        Some("Account of +442071838750 (LONDON): gold")
    );
    // Tools see the call as `start` gave it.
    assert_eq!(rig.tool_saw.lock().unwrap().as_slice(), &seen[1..]);
    rig.stop();
}

#[test]
fn without_a_webhook_the_stream_start_is_the_call_info() {
    // No auth: the model connection opens at accept and is held unread until `start` has
    // chosen the agent; the session is configured with that agent only.
    let rig = start(false, None);
    run_call(&rig, "CA7002", &[("caller", "+15550100".into())], false);
    let seen = rig.factory_saw.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].call_sid, "CA7002");
    assert_eq!(seen[0].from.as_deref(), Some("+15550100"));
    assert_eq!(seen[0].webhook, None);
    assert_eq!(seen[0].direction, None);
    let rec = rig.model.recording();
    assert_eq!(rec.connections, 1);
    assert_eq!(
        first_instructions(&rec),
        "You are speaking with a caller we do not know."
    );
    assert!(rec
        .session_updates
        .iter()
        .all(|s| s["instructions"] != json!("")));
    assert_eq!(
        rec.function_outputs.first().map(|o| o.1.as_str()),
        Some("Account of +15550100 (?): gold")
    );
    rig.stop();
}

#[test]
fn webhook_fields_are_only_for_their_own_call_and_only_once() {
    let rig = start(false, None);
    let form = [
        ("CallSid", "CA7003"),
        ("From", "+15550111"),
        ("CallerName", "Grace Hopper"),
    ];
    assert_eq!(webhook(rig.addr, &form, None).0, 200);
    // Another CallSid does not get them.
    run_call(&rig, "CA7004", &[("caller", "+15550222".into())], false);
    // The right one does, once.
    run_call(&rig, "CA7003", &[], false);
    run_call(&rig, "CA7003", &[], false);
    let seen = rig.factory_saw.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].caller_name(), None);
    assert_eq!(seen[0].from.as_deref(), Some("+15550222"));
    assert_eq!(seen[1].caller_name(), Some("Grace Hopper"));
    assert_eq!(seen[1].from.as_deref(), Some("+15550111"));
    assert_eq!(seen[2].webhook, None);
    rig.stop();
}

#[test]
fn a_panicking_factory_ends_only_its_call() {
    let rig = start(false, Some("CA7005"));
    run_call(&rig, "CA7005", &[], false);
    run_call(&rig, "CA7006", &[], false);
    let closed: Vec<CloseReason> = rig
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Closed { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(
        matches!(&closed[0], CloseReason::Error(twilio_realtime::CallError::StreamRefused { reason }) if reason.contains("factory")),
        "{closed:?}"
    );
    assert!(
        !matches!(
            &closed[1],
            CloseReason::Error(twilio_realtime::CallError::StreamRefused { .. })
        ),
        "{closed:?}"
    );
    assert_eq!(rig.model.recording().function_outputs.len(), 1);
    rig.stop();
}

#[test]
fn the_core_takes_a_starting_agent_only_before_the_session_is_configured() {
    use std::time::Instant;
    use twilio_realtime::call::{CallConfig, CallCore, Input};
    use twilio_realtime::proto::realtime::ServerEvent;
    let now = Instant::now();
    let mut core = CallCore::new(Agent::new("pending", ""), CallConfig::default(), now);
    assert!(core.set_starting_agent(Agent::new("Chosen", "Greet Ada.")));
    assert_eq!(core.agent().name(), "Chosen");
    let created =
        ServerEvent::parse(r#"{"type":"session.created","event_id":"e1","session":{}}"#).unwrap();
    core.handle_input(now, Input::Model(created));
    assert!(!core.set_starting_agent(Agent::new("Late", "")));
    assert_eq!(core.agent().name(), "Chosen");
}
