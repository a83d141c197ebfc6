//! The SIP webhook route of the bundled server against the fake OpenAI SIP control plane
//! (`sim::sip`), over loopback: verify, accept with the agent's configuration (checked
//! against the official schema), duplicates, bad signatures without side effects, capacity,
//! the application's check, 404 on accept, a failing accept retried.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use twilio_realtime::agent::Agent;
use twilio_realtime::server::sip::{AcceptedCall, OpenAiCalls, SipCheck, SipConfig};
use twilio_realtime::server::{Server, ServerConfig, Stopper};
use twilio_realtime::sim::sip::{post_webhook, CallState, FakeSip, FakeSipConfig};

struct Rig {
    fake: FakeSip,
    url: String,
    stopper: Stopper,
    accepted: Arc<Mutex<Vec<AcceptedCall>>>,
    server: Option<std::thread::JoinHandle<std::io::Result<twilio_realtime::server::ServerStats>>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.accepted.lock().unwrap().clear();
        self.stopper.stop();
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

fn agent() -> Agent {
    Agent::new("Concierge", "You are a concierge.")
        .voice("marin")
        .can_hang_up()
}

fn rig(key: &str, tweak: impl FnOnce(&mut SipConfig, &FakeSip)) -> Rig {
    let fake = FakeSip::start(FakeSipConfig::default()).unwrap();
    let mut cfg = ServerConfig::new();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    let secret = twilio_realtime::proto::sip::WebhookSecret::new(fake.webhook_secret()).unwrap();
    let mut sip = SipConfig::new(
        secret,
        OpenAiCalls::new(fake.base_url(), key, Duration::from_secs(5)),
    );
    tweak(&mut sip, &fake);
    cfg.sip = Some(sip);
    let accepted: Arc<Mutex<Vec<AcceptedCall>>> = Arc::default();
    let keep = accepted.clone();
    let server = Server::bind(cfg, agent as fn() -> Agent)
        .unwrap()
        .on_sip_call(Arc::new(move |call: AcceptedCall| {
            keep.lock().unwrap().push(call)
        }));
    let url = format!("http://{}/openai-webhook", server.local_addr());
    let stopper = server.stopper();
    let server = std::thread::spawn(move || server.run());
    Rig {
        fake,
        url,
        stopper,
        accepted,
        server: Some(server),
    }
}

#[test]
fn a_signed_call_is_accepted_with_the_agents_configuration() {
    let r = rig("sk-test", |_, _| {});
    let d = r.fake.ring(&r.url, "+14155550100", "+18005550199");
    assert_eq!(d.status, 200);
    let Some(CallState::Accepted(body)) = r.fake.call_state(&d.call_id) else {
        panic!("not accepted: {:?}", r.fake.call_state(&d.call_id))
    };
    common::Schemas::load().assert_valid("RealtimeSessionCreateRequestGA", &body);
    assert_eq!(body["instructions"], "You are a concierge.");
    assert_eq!(body["audio"]["output"]["voice"], "marin");
    assert!(body["audio"]["input"].get("format").is_none());
    let accepted = r.accepted.lock().unwrap();
    assert_eq!(accepted.len(), 1);
    let call = &accepted[0];
    assert_eq!(call.call_id(), d.call_id);
    assert!(call.call.from_header().unwrap().contains("+14155550100"));
    // The handler can end the call through REST hangup.
    call.hang_up().unwrap();
    assert_eq!(r.fake.call_state(&d.call_id), Some(CallState::HungUp));
    // Once ended, a second hangup's 404 counts as done.
    call.hang_up().unwrap();
    let verbs: Vec<(String, u16)> = r
        .fake
        .requests()
        .into_iter()
        .map(|q| (q.verb, q.status))
        .collect();
    assert_eq!(
        verbs,
        vec![
            ("accept".into(), 200),
            ("hangup".into(), 200),
            ("hangup".into(), 404)
        ]
    );
}

#[test]
fn a_redelivery_is_answered_but_not_handled_again() {
    let r = rig("sk-test", |_, _| {});
    let d = r.fake.ring(&r.url, "+1", "+2");
    assert_eq!(d.status, 200);
    assert_eq!(r.fake.redeliver(&r.url, &d), 200);
    assert_eq!(r.fake.redeliver(&r.url, &d), 200);
    let accepts = r
        .fake
        .requests()
        .iter()
        .filter(|q| q.verb == "accept")
        .count();
    assert_eq!(accepts, 1);
    assert_eq!(r.accepted.lock().unwrap().len(), 1);
}

#[test]
fn bad_signatures_are_refused_without_side_effects() {
    let r = rig("sk-test", |_, _| {});
    // A delivery whose body was altered after signing.
    let d = r.fake.ring(&r.url, "+1", "+2");
    assert_eq!(d.status, 200);
    let before = r.fake.requests().len();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let secret = twilio_realtime::proto::sip::WebhookSecret::new(r.fake.webhook_secret()).unwrap();
    let body = d.body.replace("+1@", "+9@").replace("fake", "fakf");
    let sig = twilio_realtime::proto::sip::sign(
        &secret,
        "wh_new",
        now.parse().unwrap(),
        d.body.as_bytes(),
    );
    assert_eq!(post_webhook(&r.url, "wh_new", &now, &sig, &body), 400);
    // No signature, an old timestamp, a wrong secret.
    assert_eq!(post_webhook(&r.url, "wh_new", &now, "", &d.body), 400);
    let old = (now.parse::<i64>().unwrap() - 301).to_string();
    let sig_old = twilio_realtime::proto::sip::sign(
        &secret,
        "wh_new",
        old.parse().unwrap(),
        d.body.as_bytes(),
    );
    assert_eq!(post_webhook(&r.url, "wh_new", &old, &sig_old, &d.body), 400);
    let other = twilio_realtime::proto::sip::WebhookSecret::new(
        "whsec_AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    )
    .unwrap();
    let sig_other = twilio_realtime::proto::sip::sign(
        &other,
        "wh_new",
        now.parse().unwrap(),
        d.body.as_bytes(),
    );
    assert_eq!(
        post_webhook(&r.url, "wh_new", &now, &sig_other, &d.body),
        400
    );
    assert_eq!(
        r.fake.requests().len(),
        before,
        "no REST call for a bad signature"
    );
    // The refused id was not remembered: a genuine delivery under it is handled.
    let fresh = r.fake.ring_with_id(&r.url, Some("wh_new"), "+3", "+4");
    assert_eq!(fresh.status, 200);
    assert!(matches!(
        r.fake.call_state(&fresh.call_id),
        Some(CallState::Accepted(_))
    ));
    // A GET on the route is not a delivery.
    let (status, _) = common::http_request(
        r.url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        "GET /openai-webhook HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, 405);
}

#[test]
fn at_capacity_calls_are_rejected_busy() {
    let r = rig("sk-test", |s, _| s.max_calls = 1);
    let first = r.fake.ring(&r.url, "+1", "+2");
    assert!(matches!(
        r.fake.call_state(&first.call_id),
        Some(CallState::Accepted(_))
    ));
    let second = r.fake.ring(&r.url, "+3", "+2");
    assert_eq!(second.status, 200);
    assert_eq!(
        r.fake.call_state(&second.call_id),
        Some(CallState::Rejected(486))
    );
    // The first call ends (its handle dropped): there is room again.
    r.accepted.lock().unwrap().clear();
    let third = r.fake.ring(&r.url, "+5", "+2");
    assert!(matches!(
        r.fake.call_state(&third.call_id),
        Some(CallState::Accepted(_))
    ));
    let reject = r
        .fake
        .requests()
        .into_iter()
        .find(|q| q.verb == "reject")
        .unwrap();
    common::Schemas::load()
        .assert_valid("RealtimeCallRejectRequest", reject.body.as_ref().unwrap());
}

#[test]
fn the_applications_check_can_refuse_a_call() {
    let r = rig("sk-test", |s, _| {
        let check: SipCheck = Arc::new(|call| {
            if call.from_header().is_some_and(|f| f.contains("+1666")) {
                Err(403)
            } else {
                Ok(())
            }
        });
        s.check = Some(check);
    });
    let bad = r.fake.ring(&r.url, "+16665550100", "+2");
    assert_eq!(bad.status, 200);
    assert_eq!(
        r.fake.call_state(&bad.call_id),
        Some(CallState::Rejected(403))
    );
    let good = r.fake.ring(&r.url, "+14155550100", "+2");
    assert!(matches!(
        r.fake.call_state(&good.call_id),
        Some(CallState::Accepted(_))
    ));
}

#[test]
fn a_404_on_accept_is_not_an_error() {
    let r = rig("sk-test", |_, _| {});
    let d = r.fake.ring(&r.url, "+1", "+2");
    assert_eq!(d.status, 200);
    // A signed webhook for a call that is no longer ringing (the caller hung up, or another
    // instance took it): accept answers 404, the webhook 200, no handler runs.
    let gone = twilio_realtime::sim::sip::Delivery {
        webhook_id: "wh_other".into(),
        call_id: "rtc_gone".into(),
        body: d.body.replace(&d.call_id, "rtc_gone"),
        status: 0,
    };
    assert_eq!(r.fake.redeliver(&r.url, &gone), 200);
    let last = r.fake.requests().last().cloned().unwrap();
    assert_eq!(
        (last.verb.as_str(), last.call_id.as_str(), last.status),
        ("accept", "rtc_gone", 404)
    );
    assert_eq!(r.accepted.lock().unwrap().len(), 1);
}

#[test]
fn a_failed_accept_is_answered_500_and_retried() {
    let r = rig("sk-wrong", |_, _| {});
    let d = r.fake.ring(&r.url, "+1", "+2");
    assert_eq!(d.status, 500);
    assert_eq!(r.fake.call_state(&d.call_id), Some(CallState::Ringing));
    // OpenAI's retry is handled again (the failed delivery was forgotten).
    assert_eq!(r.fake.redeliver(&r.url, &d), 500);
    let statuses: Vec<u16> = r.fake.requests().iter().map(|q| q.status).collect();
    assert_eq!(statuses, vec![401, 401]);
}

/// Without `on_sip_call`, an accepted call runs over its sideband with the server's agent,
/// greeting and event hook, as a Media Streams call does; it holds its place under
/// `SIP_MAX_CALLS` and counts as live until it ends.
#[test]
fn without_a_handler_the_server_runs_the_sideband_with_its_agent() {
    use twilio_realtime::events::{CloseReason, SessionEvent};
    use twilio_realtime::sim::fake_model::Reply;
    use twilio_realtime::sim::sip::CallerStep;
    let fake = FakeSip::start(FakeSipConfig {
        script: vec![
            Reply::say("Hello! How can I help?", 800),
            Reply::say("Goodbye!", 400),
        ],
        caller: vec![
            CallerStep::WaitForAgent {
                quiet_ms: 300,
                timeout_ms: 10_000,
            },
            CallerStep::Dtmf("7".into()),
            CallerStep::say("That is all, thanks.", 600),
            CallerStep::WaitForAgent {
                quiet_ms: 300,
                timeout_ms: 10_000,
            },
            CallerStep::HangUp,
        ],
        ..Default::default()
    })
    .unwrap();
    let mut cfg = ServerConfig::new();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.session.model.url = fake.realtime_url();
    cfg.session.model.api_key = Some("sk-test".into());
    common::greet(&mut cfg);
    let secret = twilio_realtime::proto::sip::WebhookSecret::new(fake.webhook_secret()).unwrap();
    let mut sip = SipConfig::new(
        secret,
        OpenAiCalls::new(fake.base_url(), "sk-test", Duration::from_secs(5)),
    );
    sip.max_calls = 1;
    cfg.sip = Some(sip);
    let events: Arc<Mutex<Vec<SessionEvent>>> = Arc::default();
    let sink = events.clone();
    let server = Server::bind(cfg, agent as fn() -> Agent)
        .unwrap()
        .on_event(Arc::new(move |_, e: &SessionEvent| {
            sink.lock().unwrap().push(e.clone())
        }));
    let url = format!("http://{}/openai-webhook", server.local_addr());
    let stopper = server.stopper();
    let running = std::thread::spawn(move || server.run());

    let first = fake.ring(&url, "+14155550100", "+18005550199");
    assert_eq!(first.status, 200);
    // Under way: a second call is over SIP_MAX_CALLS.
    let second = fake.ring(&url, "+14155550101", "+18005550199");
    assert_eq!(
        fake.call_state(&second.call_id),
        Some(CallState::Rejected(486))
    );
    common::wait_until("the call ended", Duration::from_secs(20), || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, SessionEvent::Closed { .. }))
    });
    common::wait_until("no live call", Duration::from_secs(5), || {
        stopper.live_calls() == 0
    });
    let seen = events.lock().unwrap().clone();
    let said: Vec<&str> = seen
        .iter()
        .filter_map(|e| match e {
            SessionEvent::AgentEnd { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(said, ["Hello! How can I help?", "Goodbye!"]);
    assert!(seen
        .iter()
        .any(|e| matches!(e, SessionEvent::Dtmf { digit } if digit == "7")));
    assert!(matches!(
        seen.last(),
        Some(SessionEvent::Closed {
            reason: CloseReason::Error(twilio_realtime::CallError::ModelDisconnected { .. })
        })
    ));
    assert_eq!(
        fake.call_state(&first.call_id),
        Some(CallState::CallerEnded)
    );
    // The greeting went out as the first response, with the agent's instructions.
    let rec = fake.sideband();
    assert!(rec.response_requests[0]["instructions"]
        .as_str()
        .is_some_and(|i| i.starts_with("You are a concierge.")));
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    // The call's place is free again.
    let third = fake.ring(&url, "+14155550102", "+18005550199");
    assert_eq!(third.status, 200);
    assert!(matches!(
        fake.call_state(&third.call_id),
        Some(CallState::Accepted(_))
    ));
    stopper.stop();
    let _ = running.join();
}
