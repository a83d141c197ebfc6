//! Outbound calls and status callbacks end to end over loopback: the bridge server's
//! `POST /outbound` places a call through the fake Twilio REST API (`sim::twilio_rest`), which
//! checks the auth header and form fields, posts signed status callbacks to `/call-status`,
//! requests the answer webhook (with `AnsweredBy`) and connects a simulated callee's stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use twilio_realtime::agent::Agent;
use twilio_realtime::server::signature;
use twilio_realtime::server::{OutboundConfig, Server, ServerConfig, ServerStats, Stopper};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_rest::{FakeTwilio, FakeTwilioConfig, ForcedError, Outcome};
use twilio_realtime::telephony::call_info::{CallInfo, Direction};
use twilio_realtime::telephony::outbound::{
    Answer, CallStatus, Credentials, MachineDetection, OutboundCall, RestError, StatusCallback,
    TwilioRest,
};

const PUBLIC: &str = "https://bridge.example.test";
const SECRET: &str = "dial-secret";
const KEY_SID: &str = "SK00000000000000000000000000000007";
const KEY_SECRET: &str = "key-secret";
const OUR_NUMBER: &str = "+15550199";

struct Rig {
    twilio: FakeTwilio,
    _model: FakeModel,
    addr: SocketAddr,
    stopper: Stopper,
    calls: Arc<Mutex<Vec<CallInfo>>>,
    statuses: Arc<Mutex<Vec<StatusCallback>>>,
    server: Option<JoinHandle<std::io::Result<ServerStats>>>,
}

fn start(tweak: impl FnOnce(&mut FakeTwilioConfig)) -> Rig {
    let model = FakeModel::start(FakeModelConfig {
        script: vec![Reply::say("Hello, this is the clinic calling.", 800)],
        ..Default::default()
    })
    .unwrap();
    let mut tc = FakeTwilioConfig::new("127.0.0.1:9".parse().unwrap());
    tc.api_keys.push((KEY_SID.into(), KEY_SECRET.into()));
    tc.outcome = Outcome::Answered {
        answered_by: "machine_start".into(),
    };
    tweak(&mut tc);
    let auth_token = tc.auth_token.clone();
    let twilio = FakeTwilio::start(tc).unwrap();

    let mut cfg = ServerConfig::new();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.session.model.url = model.url();
    cfg.shutdown_grace = Duration::from_secs(5);
    cfg.public_url = Some(PUBLIC.into());
    cfg.twilio_auth_token = Some(auth_token);
    cfg.stream_token_ttl = Some(Duration::from_secs(30));
    let rest = TwilioRest::with_options(
        twilio.base_url(),
        twilio.account_sid(),
        Credentials::ApiKey {
            sid: KEY_SID.into(),
            secret: KEY_SECRET.into(),
        },
        Duration::from_secs(5),
    );
    let mut outbound = OutboundConfig::new(rest, OUR_NUMBER);
    outbound.secret = Some(SECRET.into());
    outbound.machine_detection = Some(MachineDetection::Enable);
    cfg.outbound = Some(outbound);
    let calls: Arc<Mutex<Vec<CallInfo>>> = Arc::default();
    let statuses: Arc<Mutex<Vec<StatusCallback>>> = Arc::default();
    let (c, s) = (calls.clone(), statuses.clone());
    let server = Server::bind(cfg, move |call: &CallInfo| {
        c.lock().unwrap().push(call.clone());
        let who = match call.answered_by() {
            Some("human") => "the patient",
            Some(_) => "their voicemail",
            None => "someone",
        };
        Agent::new("Reminder", format!("You are leaving a reminder for {who}."))
    })
    .unwrap()
    .on_call_status(Arc::new(move |st: &StatusCallback| {
        s.lock().unwrap().push(st.clone())
    }));
    let addr = server.local_addr();
    twilio.deliver_to(addr);
    let stopper = server.stopper();
    let server = Some(std::thread::spawn(move || server.run()));
    Rig {
        twilio,
        _model: model,
        addr,
        stopper,
        calls,
        statuses,
        server,
    }
}

impl Rig {
    fn stop(mut self) {
        self.stopper.stop();
        self.server.take().unwrap().join().unwrap().unwrap();
    }

    /// `POST /outbound` as an operator would (curl with the bearer secret).
    fn dial(&self, secret: Option<&str>, form: &[(&str, &str)]) -> (u16, String) {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .new_agent();
        let mut req = agent.post(format!("http://{}/outbound", self.addr));
        if let Some(s) = secret {
            req = req.header("Authorization", format!("Bearer {s}"));
        }
        let mut resp = req.send_form(form.iter().copied()).expect("request");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }
}

#[test]
fn an_outbound_call_reaches_the_agent_with_answered_by_and_reports_its_progress() {
    let rig = start(|_| {});
    let (status, body) = rig.dial(Some(SECRET), &[("To", "+15550100")]);
    assert_eq!(status, 200, "{body}");
    let placed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sid = placed["call_sid"].as_str().unwrap().to_owned();
    assert_eq!(placed["status"], "queued");
    assert!(
        rig.twilio.wait_done(1, Duration::from_secs(30)),
        "the call ended"
    );

    let rec = rig.twilio.recording();
    // What the bridge sent Twilio: authenticated with the API key, Twilio's documented fields.
    assert_eq!(rec.requests.len(), 1);
    let req = &rec.requests[0];
    assert_eq!(req.status, 201);
    assert_eq!(req.user.as_deref(), Some(KEY_SID));
    let field = |k: &str| {
        req.form
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(field("To"), ["+15550100"]);
    assert_eq!(field("From"), [OUR_NUMBER]);
    assert_eq!(field("Url"), [format!("{PUBLIC}/incoming-call").as_str()]);
    assert_eq!(
        field("StatusCallback"),
        [format!("{PUBLIC}/call-status").as_str()]
    );
    assert_eq!(
        field("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    assert_eq!(field("MachineDetection"), ["Enable"]);

    // Twilio's side of the call: every request was accepted (signatures checked), the callee
    // heard the agent.
    let call = &rec.calls[0];
    assert_eq!(call.sid, sid);
    assert!(call.errors.is_empty(), "{:?}", call.errors);
    assert_eq!(call.webhook.as_ref().map(|w| w.status), Some(200));
    assert!(call.callbacks.iter().all(|c| c.status == 204));
    let report = call.report.as_ref().expect("the stream ran");
    assert_eq!(report.played_ms(), 800, "the callee heard the agent");

    // The caller context: outbound, with the machine-detection verdict, chose the agent.
    // The factory ran at the signed webhook (for the warm model) and on `start`.
    let calls = rig.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(call.call_sid, sid);
        assert_eq!(call.direction, Some(Direction::OutboundApi));
        assert_eq!(call.answered_by(), Some("machine_start"));
        assert_eq!(call.to.as_deref(), Some("+15550100"));
        assert_eq!(call.from.as_deref(), Some(OUR_NUMBER));
        assert_eq!(call.account_sid, rig.twilio.account_sid());
    }

    // The status callbacks reached the application, typed, in order, with the duration.
    let st = rig.statuses.lock().unwrap().clone();
    let kinds: Vec<CallStatus> = st.iter().map(|s| s.status.clone()).collect();
    assert_eq!(
        kinds,
        [
            CallStatus::Initiated,
            CallStatus::Ringing,
            CallStatus::InProgress,
            CallStatus::Completed
        ]
    );
    assert!(st.iter().all(|s| s.call_sid == sid));
    assert_eq!(
        st.iter().map(|s| s.sequence_number).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2), Some(3)]
    );
    assert!(st[3].duration.is_some());
    assert_eq!(st[3].answered_by.as_deref(), Some("machine_start"));
    rig.stop();
}

#[test]
fn a_busy_callee_gets_only_its_final_status() {
    let rig = start(|c| c.outcome = Outcome::Busy);
    assert_eq!(rig.dial(Some(SECRET), &[("To", "+15550100")]).0, 200);
    assert!(rig.twilio.wait_done(1, Duration::from_secs(10)));
    let st = rig.statuses.lock().unwrap().clone();
    let kinds: Vec<CallStatus> = st.iter().map(|s| s.status.clone()).collect();
    assert_eq!(
        kinds,
        [CallStatus::Initiated, CallStatus::Ringing, CallStatus::Busy]
    );
    assert_eq!(st[2].duration, None);
    let rec = rig.twilio.recording();
    assert!(rec.calls[0].webhook.is_none() && rec.calls[0].report.is_none());
    assert!(rig.calls.lock().unwrap().is_empty(), "no stream, no agent");
    rig.stop();
}

#[test]
fn the_outbound_route_needs_its_secret_and_a_number() {
    let rig = start(|_| {});
    assert_eq!(rig.dial(None, &[("To", "+15550100")]).0, 401);
    assert_eq!(rig.dial(Some("wrong"), &[("To", "+15550100")]).0, 401);
    assert_eq!(rig.dial(Some(SECRET), &[("To", "")]).0, 400);
    assert!(
        rig.twilio.recording().requests.is_empty(),
        "nothing reached Twilio"
    );
    rig.stop();
}

#[test]
fn twilio_errors_reach_the_operator_typed() {
    let rig = start(|c| {
        c.force_error = Some(ForcedError {
            status: 429,
            code: 20429,
            message: "Too Many Requests".into(),
            retry_after: Some(2),
        })
    });
    let (status, body) = rig.dial(Some(SECRET), &[("To", "+15550100")]);
    assert_eq!(status, 429, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["twilio_code"], 20429);
    rig.stop();
}

#[test]
fn the_rest_client_types_twilios_errors() {
    let twilio = FakeTwilio::start(FakeTwilioConfig::new("127.0.0.1:9".parse().unwrap())).unwrap();
    let call = OutboundCall::new(
        "+15550100",
        OUR_NUMBER,
        Answer::Twiml("<Response><Hangup/></Response>".into()),
    );
    let rest = |creds: Credentials, timeout_ms: u64| {
        TwilioRest::with_options(
            twilio.base_url(),
            twilio.account_sid(),
            creds,
            Duration::from_millis(timeout_ms),
        )
    };
    // Wrong auth token: 401 with Twilio's 20003 body.
    match rest(Credentials::AuthToken("wrong".into()), 5000).place_call(&call) {
        Err(RestError::Unauthorized(e)) => {
            assert_eq!(e.code, Some(20003));
            assert_eq!(e.status, Some(401));
            assert!(e.more_info.is_some_and(|m| m.ends_with("20003")));
        }
        other => panic!("{other:?}"),
    }
    // The right one, but no `To`: 400 with 21201.
    let good = rest(Credentials::AuthToken("fake-auth-token".into()), 5000);
    let mut no_to = call.clone();
    no_to.to = String::new();
    match good.place_call(&no_to) {
        Err(RestError::Rejected { status: 400, error }) => assert_eq!(error.code, Some(21201)),
        other => panic!("{other:?}"),
    }
    // And a call that is placed (inline TwiML: no webhook; it hangs up at once).
    let placed = good.place_call(&call).unwrap();
    assert!(placed.sid.starts_with("CA"));
    assert_eq!(placed.direction, "outbound-api");
    // Nothing listens at the API base: a transport error, not a panic.
    let nowhere = TwilioRest::with_options(
        "http://127.0.0.1:9",
        "AC1",
        Credentials::AuthToken("x".into()),
        Duration::from_secs(2),
    );
    assert!(matches!(
        nowhere.place_call(&call),
        Err(RestError::Transport(_))
    ));
    drop(twilio);

    // A slow API: the client's timeout.
    let mut slow = FakeTwilioConfig::new("127.0.0.1:9".parse().unwrap());
    slow.response_delay = Duration::from_secs(3);
    let slow = FakeTwilio::start(slow).unwrap();
    let client = TwilioRest::with_options(
        slow.base_url(),
        slow.account_sid(),
        Credentials::AuthToken("fake-auth-token".into()),
        Duration::from_millis(300),
    );
    assert!(matches!(client.place_call(&call), Err(RestError::Timeout)));
}

#[test]
fn status_callbacks_must_be_signed() {
    let rig = start(|_| {});
    let form = [("CallSid", "CA1"), ("CallStatus", "ringing")];
    let post = |sig: Option<String>| {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut req = agent.post(format!("http://{}/call-status", rig.addr));
        if let Some(s) = sig {
            req = req.header("X-Twilio-Signature", s);
        }
        req.send_form(form.iter().copied())
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post(None), 403);
    let wrong = signature::compute("other", &format!("{PUBLIC}/call-status"), &form);
    assert_eq!(post(Some(wrong)), 403);
    assert!(rig.statuses.lock().unwrap().is_empty());
    let right = signature::compute("fake-auth-token", &format!("{PUBLIC}/call-status"), &form);
    assert_eq!(post(Some(right)), 204);
    assert_eq!(rig.statuses.lock().unwrap()[0].status, CallStatus::Ringing);
    rig.stop();
}
