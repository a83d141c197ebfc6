//! `examples/embed.rs`: the application's own routes and the Media Streams upgrade on one port
//! under another HTTP server (touche), simulated calls through it against the fake model; with
//! an auth token, the same guards as the bundled server's calls (signatures, one-time stream
//! tokens), and the embedded calls counted in the application's metrics.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{form_encode, http_request, post_form, twiml_token, wait_until};
use twilio_realtime::metrics::Metrics;
use twilio_realtime::server::signature;
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::{CloseReason, SessionConfig, SessionEvent};

#[allow(dead_code)] // its `main`
#[path = "../examples/embed.rs"]
mod embed;

const TOKEN: &str = "test-auth-token";
const PUBLIC: &str = "https://bridge.example.test";

/// The embedding application on a loopback port, against a fake model that answers each
/// caller turn.
struct App {
    addr: SocketAddr,
    model: FakeModel,
    metrics: Arc<Metrics>,
    closed: Arc<Mutex<Vec<CloseReason>>>,
}

impl App {
    fn start(auth_token: Option<&str>) -> App {
        let model = FakeModel::start(FakeModelConfig {
            default_reply: Reply::say("Hello from the embedded bridge.", 1500),
            ..Default::default()
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The application's event hook keeps each call's close reason.
        let closed: Arc<Mutex<Vec<CloseReason>>> = Arc::default();
        let seen = closed.clone();
        let metrics = Arc::new(Metrics::new());
        let app = embed::App {
            session: SessionConfig::new(None).url(model.url()),
            auth_token: auth_token.map(str::to_owned),
            public_url: auth_token.map(|_| PUBLIC.to_owned()),
            metrics: metrics.clone(),
            on_event: Arc::new(move |e| {
                if let SessionEvent::Closed { reason } = e {
                    seen.lock().unwrap().push(reason.clone());
                }
            }),
        };
        std::thread::spawn(move || embed::serve(listener, app));
        App {
            addr,
            model,
            metrics,
            closed,
        }
    }

    /// Waits until `n` calls have closed and returns their reasons.
    fn closed(&self, n: usize) -> Vec<CloseReason> {
        wait_until("the calls closed", Duration::from_secs(10), || {
            self.closed.lock().unwrap().len() >= n
        });
        self.closed.lock().unwrap().clone()
    }

    /// `GET /metrics` from the application's own route.
    fn scrape(&self) -> String {
        let (status, text) = http_request(
            self.addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200, "{text}");
        text
    }
}

/// The caller speaks, hears the agent's answer, hangs up.
fn conversation() -> Vec<Segment> {
    vec![
        Segment::Speech(800),
        Segment::WaitForAgent {
            quiet_ms: 700,
            timeout_ms: 15_000,
        },
        Segment::HangUp,
    ]
}

#[test]
fn a_call_runs_through_someone_elses_http_server_on_its_port() {
    let app = App::start(None);
    let addr = app.addr;

    // The application's own routes answer on the same port.
    let (status, page) = http_request(
        addr,
        "GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.ends_with("my application\n"), "{page}");
    let (status, twiml) = http_request(
        addr,
        "POST /incoming-call HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{twiml}");
    assert!(
        twiml.contains(r#"<Stream url="wss://example.com/media-stream""#),
        "{twiml}"
    );
    assert_eq!(twiml_token(&twiml), None, "no tokens without an auth token");
    // A plain GET of the stream path is not an upgrade.
    let (status, refused) = http_request(
        addr,
        "GET /media-stream HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{refused}");

    let report =
        TwilioCall::run(TwilioCallConfig::new(addr, conversation())).expect("the call runs");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(!report.closed_by_bridge, "{:?}", report.timeline);
    assert!(
        report.played_ms() >= 1400,
        "the caller heard the answer: {} ms",
        report.played_ms()
    );
    let rec = app.model.recording();
    assert!(rec.appended_bytes >= 6400, "caller audio reached the model");
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    assert_eq!(app.closed(1), vec![CloseReason::TwilioStopped]);

    // The embedded call is in the application's metrics, as a server's call would be.
    let text = app.scrape();
    assert!(
        text.contains(r#"twilio_realtime_calls_total{reason="twilio_stopped"} 1"#),
        "{text}"
    );
    assert!(text.contains("twilio_realtime_calls_active 0"), "{text}");
    let sent = report.frames_sent * 160;
    assert!(
        text.contains(&format!(
            r#"twilio_realtime_audio_bytes_total{{direction="from_caller"}} {sent}"#
        )),
        "{sent} bytes from the caller in {text}"
    );
    assert!(
        text.ends_with(&app.metrics.encode()),
        "the route serves the application's metrics"
    );
}

#[test]
fn signatures_and_one_time_tokens_guard_embedded_calls() {
    let app = App::start(Some(TOKEN));
    let addr = app.addr;
    let form = [("CallSid", "CA0001"), ("From", "+15550100")];
    let body = form_encode(&form);
    let webhook_url = format!("{PUBLIC}/incoming-call");

    // The webhook: unsigned and wrongly signed requests get 403 and no token.
    let (status, text) = post_form(addr, "/incoming-call", &body, None);
    assert_eq!(status, 403, "{text}");
    let wrong = signature::compute("other-token", &webhook_url, &form);
    let (status, text) = post_form(addr, "/incoming-call", &body, Some(&wrong));
    assert_eq!(status, 403, "{text}");
    assert_eq!(twiml_token(&text), None);

    // The upgrade: unsigned, or signed for another URL, is refused before any call starts.
    let stream = |sig: Option<String>, token: Option<&str>| -> Result<CallReport, String> {
        let mut cfg = TwilioCallConfig::new(addr, conversation());
        cfg.call_sid = Some("CA0001".into());
        if let Some(sig) = sig {
            cfg.headers.push(("X-Twilio-Signature".into(), sig));
        }
        if let Some(t) = token {
            cfg.custom_parameters.insert("token".into(), t.into());
        }
        TwilioCall::run(cfg).map_err(|e| e.to_string())
    };
    let err = stream(None, None).unwrap_err();
    assert!(err.contains("403"), "{err}");
    let elsewhere = signature::compute(TOKEN, "wss://evil.example/media-stream", &[]);
    let err = stream(Some(elsewhere), None).unwrap_err();
    assert!(err.contains("403"), "{err}");

    // A signed upgrade without the call's token, or with a made-up one: the stream is closed
    // at `start`, and the model is never called.
    let upgrade = || {
        Some(signature::compute(
            TOKEN,
            "wss://bridge.example.test/media-stream",
            &[],
        ))
    };
    let refused = |r: &CallReport| r.closed_by_bridge && r.played_ms() == 0;
    assert!(refused(&stream(upgrade(), None).unwrap()));
    assert!(refused(
        &stream(upgrade(), Some("00112233445566778899aabbccddeeff")).unwrap()
    ));
    assert_eq!(
        app.model.recording().connections,
        0,
        "no model credits spent"
    );

    // The signed webhook mints the call's token; the stream that presents it works, once.
    let right = signature::compute(TOKEN, &webhook_url, &form);
    let (status, twiml) = post_form(addr, "/incoming-call", &body, Some(&right));
    assert_eq!(status, 200, "{twiml}");
    assert!(
        twiml.contains(r#"<Stream url="wss://bridge.example.test/media-stream""#),
        "{twiml}"
    );
    let token = twiml_token(&twiml).expect("a stream token");
    let ok = stream(upgrade(), Some(&token)).unwrap();
    assert!(ok.played_ms() >= 1400, "{:?}", ok.timeline);
    assert!(
        refused(&stream(upgrade(), Some(&token)).unwrap()),
        "a replay"
    );
    assert_eq!(app.model.recording().connections, 1);

    // Three refused streams and one call, in the application's metrics.
    let reasons = app.closed(4);
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == CloseReason::TwilioStopped)
            .count(),
        1,
        "{reasons:?}"
    );
    let text = app.scrape();
    assert!(
        text.contains(r#"twilio_realtime_calls_total{reason="rejected"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"twilio_realtime_calls_total{reason="twilio_stopped"} 1"#),
        "{text}"
    );
    assert!(text.contains("twilio_realtime_calls_active 0"), "{text}");
}
