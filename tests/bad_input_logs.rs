//! Bad-input log lines are rate-limited per call: a peer that sends 60 bad messages in a burst
//! costs one warning line (each message is still an error event). In its own test binary: it
//! installs a logger that counts lines.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{wait_until, Rig};
use tungstenite::Message;
use twilio_realtime::agent::Agent;
use twilio_realtime::events::SessionEvent;
use twilio_realtime::io::ws::{ClientRequest, WsConfig, WsConn};
use twilio_realtime::sim::fake_model::FakeModelConfig;
use twilio_realtime::CallError;

static BAD_LINES: AtomicUsize = AtomicUsize::new(0);

struct Counter;

impl log::Log for Counter {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target() == "twilio_realtime::twilio"
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) && r.args().to_string().contains("bad message from twilio") {
            BAD_LINES.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

static LOGGER: Counter = Counter;

#[test]
fn a_burst_of_bad_messages_costs_one_log_line_and_one_event_each() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let rig = Rig::start(FakeModelConfig::default(), || Agent::new("A", "Answer."));
    let req = ClientRequest::new(format!("ws://{}/media-stream", rig.addr));
    let ws = WsConn::connect(&req, &WsConfig::default())
        .unwrap()
        .spawn("raw-twilio", |_| {})
        .unwrap();
    for i in 0..60 {
        ws.sender()
            .send(Message::text(format!("{{not json {i}")))
            .unwrap();
    }
    let twilio_errors = || {
        rig.events()
            .iter()
            .filter(|e| matches!(e, SessionEvent::Error(CallError::BadTwilioMessage { .. })))
            .count()
    };
    wait_until("60 error events", Duration::from_secs(10), || {
        twilio_errors() == 60
    });
    assert_eq!(BAD_LINES.load(Ordering::SeqCst), 1, "one line per 5 s");
    assert!(
        rig.closed().is_empty(),
        "under the budget: the call goes on"
    );
    ws.close();
    rig.wait_idle();
    rig.stop();
}
