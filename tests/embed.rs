//! `examples/embed.rs`: the application's own routes and the Media Streams upgrade on one port
//! under another HTTP server (touche), a simulated call through it against the fake model.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http_request, wait_until};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::{CloseReason, SessionConfig, SessionEvent};

#[allow(dead_code)] // its `main`
#[path = "../examples/embed.rs"]
mod embed;

#[test]
fn a_call_runs_through_someone_elses_http_server_on_its_port() {
    let model = FakeModel::start(FakeModelConfig {
        script: vec![Reply::say("Hello from the embedded bridge.", 1500)],
        ..Default::default()
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The application's event hook keeps each call's close reason.
    let closed: Arc<Mutex<Vec<CloseReason>>> = Arc::default();
    let seen = closed.clone();
    let opts = SessionConfig::new(None).url(model.url());
    std::thread::spawn(move || {
        embed::serve(
            listener,
            opts,
            Arc::new(move |e| {
                if let SessionEvent::Closed { reason } = e {
                    seen.lock().unwrap().push(reason.clone());
                }
            }),
        )
    });

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
    // A plain GET of the stream path is not an upgrade.
    let (status, refused) = http_request(
        addr,
        "GET /media-stream HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{refused}");

    // A call: the caller speaks, hears the agent's answer, hangs up.
    let report = TwilioCall::run(TwilioCallConfig::new(
        addr,
        vec![
            Segment::Speech(800),
            Segment::WaitForAgent {
                quiet_ms: 700,
                timeout_ms: 15_000,
            },
            Segment::HangUp,
        ],
    ))
    .expect("the call runs");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(!report.closed_by_bridge, "{:?}", report.timeline);
    assert!(
        report.played_ms() >= 1400,
        "the caller heard the answer: {} ms",
        report.played_ms()
    );
    let rec = model.recording();
    assert!(rec.appended_bytes >= 6400, "caller audio reached the model");
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    wait_until("the call closed", Duration::from_secs(5), || {
        !closed.lock().unwrap().is_empty()
    });
    let closed = closed.lock().unwrap().clone();
    assert_eq!(closed, vec![CloseReason::TwilioStopped]);
}
