//! The library's own log lines, captured at `trace` in this process, never carry a peer's
//! mark names, the `start` parameters (the one-time stream token) or audio payloads (issue 16
//! item 5). The example server's whole log at `trace` is checked in `tests/example_server.rs`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use twilio_realtime::agent::Agent;
use twilio_realtime::call::inbound::{InboundAudio, InboundConfig};
use twilio_realtime::call::{CallConfig, CallCore, Input};
use twilio_realtime::proto::twilio::TwilioMessage;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if !r.target().starts_with("twilio_realtime") {
            return;
        }
        LINES
            .lock()
            .unwrap()
            .push(format!("{} {} {}", r.level(), r.target(), r.args()));
    }
    fn flush(&self) {}
}

#[test]
fn the_library_never_logs_peer_mark_names_tokens_or_payloads() {
    let _ = log::set_logger(&Capture);
    log::set_max_level(log::LevelFilter::Trace);
    let secret = "s3cr3t-mark-name-0042";
    let token = "0123456789abcdef0123456789abcdef";
    let payload = base64::engine::general_purpose::STANDARD.encode([0x3Cu8; 160]);
    let now = Instant::now();
    let mut core = CallCore::new(Agent::new("A", "x"), CallConfig::default(), now);
    let parse = |s: String| TwilioMessage::parse(&s).unwrap();
    core.handle_input(now, Input::Twilio(parse(format!(
        r#"{{"event":"start","streamSid":"MZ1","start":{{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{{"token":"{token}"}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
    ))));
    core.handle_input(
        now,
        Input::Twilio(parse(format!(
            r#"{{"event":"mark","streamSid":"MZ1","mark":{{"name":"{secret}"}}}}"#
        ))),
    );
    core.handle_input(now, Input::Twilio(parse(format!(
        r#"{{"event":"start","streamSid":"MZ2","start":{{"accountSid":"AC1","streamSid":"MZ2","callSid":"CA1","customParameters":{{"token":"{token}"}}}}}}"#
    ))));
    while core.poll_output().is_some() {}
    let mut lane = InboundAudio::new(InboundConfig::default());
    lane.set_caller_speaking(true);
    for i in 0..5u64 {
        let t = now + Duration::from_millis(i * 1000);
        lane.on_media(t, &payload, Some(i * 5000), &mut |_: &str| {});
        lane.on_timeout(t + Duration::from_millis(800), &mut |_: &str| {});
    }
    let lines = LINES.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("mark nobody sent")),
        "{lines:#?}"
    );
    for l in &lines {
        for s in [secret, token, &payload[..40]] {
            assert!(!l.contains(s), "{s:?} in the log line {l:?}");
        }
    }
}
