//! Call recordings: a recorded simulated call reads back, writes back byte for byte, matches
//! what the simulated caller saw, holds nothing sensitive, and `call_report` turns it into a
//! well-formed picture and a summary.

mod common;

#[path = "../examples/shared/call_picture.rs"]
mod call_picture;

use std::path::{Path, PathBuf};

use common::Rig;
use serde_json::json;
use twilio_realtime::agent::{Agent, FunctionTool};
use twilio_realtime::session::recording::{read, read_file, write, Entry, Record, RecordTo};
use twilio_realtime::sim::fake_model::{FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};

const KEY: &str = "sk-test-secret-key-0123456789";
const TOKEN: &str = "tok_9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const SECRET_ARGUMENT: &str = "Reykjavik";
const SECRET_SPEECH: &str = "Your account number is 4242 4242";

fn agent() -> Agent {
    let weather = FunctionTool::new(
        "get_weather",
        "Weather for a city",
        json!({"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}),
        |c| {
            Ok(format!(
                "It is sunny in {}.",
                c.arguments["location"].as_str().unwrap_or("?")
            ))
        },
    );
    Agent::new("Front", "You answer calls.").tool(weather)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("twr-recording-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A call with a tool, a barge-in, a key press and a secret stream parameter, recorded into
/// `to`.
fn recorded_call(to: RecordTo) -> (Rig, CallReport) {
    let rig = Rig::start_with(
        FakeModelConfig {
            script: vec![
                Reply::call(
                    "get_weather",
                    format!(r#"{{"location":"{SECRET_ARGUMENT}"}}"#),
                ),
                Reply::say(SECRET_SPEECH, 4000),
                Reply::say("Goodbye!", 800),
            ],
            ..Default::default()
        },
        agent,
        move |cfg| {
            cfg.session.model.api_key = Some(KEY.into());
            cfg.session.recording = Some(to);
        },
    );
    let mut call = TwilioCallConfig::new(
        rig.addr,
        vec![
            Segment::Silence(200),
            Segment::Speech(800),
            Segment::BargeIn {
                after_ms: 1500,
                speech_ms: 700,
                timeout_ms: 15_000,
            },
            Segment::Dtmf('7'),
            Segment::WaitForAgent {
                quiet_ms: 700,
                timeout_ms: 15_000,
            },
            Segment::HangUp,
        ],
    );
    call.call_sid = Some("CA00000000000000000000000000000042".into());
    call.custom_parameters.insert("token".into(), TOKEN.into());
    let report = TwilioCall::run(call).expect("call");
    rig.wait_idle();
    (rig, report)
}

fn count(entries: &[Entry], f: impl Fn(&Record) -> bool) -> usize {
    entries.iter().filter(|e| f(&e.record)).count()
}

#[test]
fn a_recorded_call_reads_back_matches_the_call_and_holds_nothing_sensitive() {
    let dir = temp_dir("call");
    let (rig, report) = recorded_call(RecordTo::Dir(dir.clone()));
    let file = dir.join("CA00000000000000000000000000000042.jsonl");
    let text = std::fs::read_to_string(&file).expect("the recording is named after the call");
    let entries = read(text.as_bytes()).expect("reads back");

    // The format round-trips: what was read writes back byte for byte.
    let mut again = Vec::new();
    write(&mut again, &entries).unwrap();
    assert_eq!(String::from_utf8(again).unwrap(), text);
    assert!(matches!(
        entries[0].record,
        Record::Header { format: 1, .. }
    ));

    // It matches what the simulated Twilio saw.
    let sent: u64 = entries
        .iter()
        .map(|e| match e.record {
            Record::AgentAudio { bytes, .. } => bytes,
            _ => 0,
        })
        .sum();
    let received: u64 = report.chunks.iter().map(|c| c.bytes).sum();
    assert_eq!(
        sent, received,
        "every agent chunk is recorded with its length"
    );
    assert_eq!(
        count(&entries, |r| matches!(r, Record::MarkSent { .. })),
        report.marks_received
    );
    assert_eq!(
        count(&entries, |r| matches!(r, Record::MarkEchoed { .. })),
        report.marks_echoed
    );
    assert_eq!(
        count(&entries, |r| matches!(r, Record::Clear)),
        report.clears.len()
    );
    assert_eq!(report.clears.len(), 1, "one barge-in");
    let caller_ms: u64 = entries
        .iter()
        .map(|e| match e.record {
            Record::CallerAudio { ms, .. } => u64::from(ms),
            _ => 0,
        })
        .sum();
    let sent_ms = report.caller_audio.len() as u64 / 8;
    assert!(
        caller_ms <= sent_ms && caller_ms + 100 >= sent_ms,
        "caller audio summed per 100 ms: {caller_ms} of {sent_ms} ms"
    );
    let loud = entries
        .iter()
        .any(|e| matches!(e.record, Record::CallerAudio { level, .. } if level > 1000));
    assert!(loud, "the caller's speech shows in its level");
    let truncs: Vec<u64> = entries
        .iter()
        .filter_map(|e| match e.record {
            Record::Truncate { audio_end_ms, .. } => Some(audio_end_ms),
            _ => None,
        })
        .collect();
    let model_truncs: Vec<u64> = rig
        .model
        .recording()
        .truncations
        .iter()
        .map(|t| t.audio_end_ms)
        .collect();
    assert_eq!(truncs.len(), 1, "the barge-in's truncation is recorded");
    assert_eq!(truncs, model_truncs);
    assert_eq!(
        count(&entries, |r| matches!(r, Record::ToolStart { .. })),
        1
    );
    assert_eq!(
        count(&entries, |r| matches!(
            r,
            Record::ToolEnd {
                is_error: false,
                ..
            }
        )),
        1
    );
    assert_eq!(count(&entries, |r| matches!(r, Record::Dtmf)), 1);
    assert!(matches!(
        entries.iter().find(|e| matches!(e.record, Record::TwilioStart { .. })).map(|e| &e.record),
        Some(Record::TwilioStart { parameter_names, .. }) if parameter_names.iter().any(|p| p == "token")
    ));
    assert!(entries.iter().any(
        |e| matches!(&e.record, Record::Closed { reason } if reason == "twilio stream stopped")
    ));
    assert!(
        !entries
            .iter()
            .any(|e| matches!(e.record, Record::Dropped { .. })),
        "nothing dropped"
    );

    // Nothing sensitive: no key, token, spoken text, tool argument, digit or audio.
    for secret in [
        KEY,
        TOKEN,
        SECRET_ARGUMENT,
        SECRET_SPEECH,
        "account number",
        "sunny",
        "+15550100",
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the recording");
    }
    for key in [
        "\"payload\"",
        "\"audio\"",
        "\"digit\"",
        "\"arguments\"",
        "\"output\"",
        "\"text\"",
    ] {
        assert!(!text.contains(key), "{key} is in the recording");
    }
    let longest_base64_run = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest_base64_run < 40,
        "a {longest_base64_run}-character base64-like run (audio?) is in the recording"
    );
    rig.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn call_report_draws_a_recorded_call_and_sums_it_up() {
    let dir = temp_dir("report");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("call.jsonl");
    let (rig, report) = recorded_call(RecordTo::File(file.clone()));
    rig.stop();
    let svg_path = dir.join("call.svg");
    let summary = call_picture::report(&file, &svg_path).expect("call_report");
    assert!(
        summary.contains("CA00000000000000000000000000000042"),
        "{summary}"
    );
    assert!(
        summary.contains("closed: twilio stream stopped"),
        "{summary}"
    );
    assert!(summary.contains("barge-ins 1"), "{summary}");
    assert!(summary.contains("CallerSpeech: item_"), "{summary}");
    assert!(summary.contains("get_weather"), "{summary}");
    assert!(summary.contains("1 clear(s)"), "{summary}");
    assert!(summary.lines().count() <= 25, "one screen:\n{summary}");

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    check_svg(
        &svg,
        &[
            "caller",
            "agent, as played",
            "clear",
            "truncate item_",
            "get_weather",
        ],
    );

    // The demo's picture: the same recording with the simulated caller's ground truth.
    let entries = read_file(&file).unwrap();
    let picture = call_picture::Picture::from_recording(&entries).with_ground_truth(&report, 0.0);
    let svg = picture.svg().unwrap();
    check_svg(&svg, &["what the simulated caller heard", "caller heard"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Well-formed SVG with the given texts and something drawn in it.
fn check_svg(svg: &str, texts: &[&str]) {
    let doc = roxmltree::Document::parse(svg).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert!(root.attribute("width").is_some() && root.attribute("height").is_some());
    let shapes = root
        .descendants()
        .filter(|n| {
            matches!(
                n.tag_name().name(),
                "rect" | "polyline" | "polygon" | "path"
            )
        })
        .count();
    assert!(shapes > 50, "only {shapes} shapes drawn");
    let all_text: String = root
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n");
    for t in texts {
        assert!(all_text.contains(t), "{t:?} is not in the picture");
    }
}

#[test]
fn a_recording_that_cannot_be_written_does_not_cost_the_call() {
    let (rig, report) = recorded_call(RecordTo::File(PathBuf::from(
        "/nonexistent-dir/twilio-realtime/call.jsonl",
    )));
    assert_eq!(report.clears.len(), 1);
    assert!(!Path::new("/nonexistent-dir").exists());
    assert_eq!(rig.closed().len(), 1);
    rig.stop();
}

#[test]
fn every_record_round_trips() {
    let all = vec![
        Record::Header {
            format: 1,
            version: "0.1.0".into(),
            started_unix_ms: 1_700_000_000_000,
        },
        Record::TwilioConnected,
        Record::TwilioStart {
            call_sid: "CA1".into(),
            stream_sid: "MZ1".into(),
            tracks: vec!["inbound".into()],
            parameter_names: vec!["caller".into()],
        },
        Record::CallerAudio {
            ms: 100,
            level: 3200,
        },
        Record::MarkEchoed {
            name: "0:0:800:item_1".into(),
        },
        Record::Dtmf,
        Record::TwilioStop,
        Record::TwilioOther,
        Record::TwilioBad,
        Record::TwilioClosed {
            why: "closed by twilio".into(),
        },
        Record::AgentAudio {
            bytes: 800,
            level: 5000,
        },
        Record::MarkSent {
            name: "rtt:1".into(),
        },
        Record::Clear,
        Record::ModelConnecting,
        Record::ModelConnected,
        Record::ModelConnectFailed {
            why: "refused".into(),
        },
        Record::ModelClosed { why: "eof".into() },
        Record::ModelEvent {
            event: "response.done".into(),
        },
        Record::ModelBad,
        Record::ModelSent {
            event: "response.create".into(),
        },
        Record::Truncate {
            item_id: "item_1".into(),
            content_index: 0,
            audio_end_ms: 1234,
            rtt_ms: 80,
        },
        Record::AgentStart {
            agent: "Front".into(),
        },
        Record::AgentEnd {
            agent: "Front".into(),
            chars: 42,
        },
        Record::Handoff {
            from: "Front".into(),
            to: "Billing".into(),
        },
        Record::ToolStart {
            tool: "t".into(),
            call_id: "c".into(),
        },
        Record::ToolApproval {
            tool: "t".into(),
            call_id: "c".into(),
        },
        Record::ToolEnd {
            tool: "t".into(),
            call_id: "c".into(),
            is_error: true,
        },
        Record::AudioStart {
            item_id: "item_1".into(),
        },
        Record::AudioStopped,
        Record::Interrupted {
            cause: "CallerSpeech".into(),
            heard: vec![("item_1".into(), 1234)],
        },
        Record::GuardrailTripped {
            guardrail: "g".into(),
        },
        Record::Error {
            source: "tool".into(),
            message: "timed out".into(),
        },
        Record::Closed {
            reason: "twilio stream stopped".into(),
        },
        Record::Dropped { lines: 3 },
    ];
    let entries: Vec<Entry> = all
        .into_iter()
        .enumerate()
        .map(|(i, record)| Entry {
            t_us: i as u64 * 1000,
            record,
        })
        .collect();
    let mut buf = Vec::new();
    write(&mut buf, &entries).unwrap();
    assert_eq!(read(buf.as_slice()).unwrap(), entries);
    // A last line cut short (the process died mid-write) is ignored; a bad line elsewhere is not.
    let cut = &buf[..buf.len() - 5];
    assert_eq!(read(cut).unwrap().len(), entries.len() - 1);
    let mut bad = b"{\"t_us\":1,\"kind\":\"nonsense\"}\n".to_vec();
    bad.extend_from_slice(&buf);
    assert!(read(bad.as_slice()).is_err());
}

#[test]
fn recording_is_off_by_default() {
    let opts = twilio_realtime::session::SessionConfig::new(None);
    assert_eq!(opts.recording, None);
}

#[test]
fn a_long_call_makes_a_small_picture() {
    // Half an hour: caller audio and agent audio every 100 ms, a mark after each chunk.
    let mut entries = vec![Entry {
        t_us: 0,
        record: Record::Header {
            format: 1,
            version: "0.1.0".into(),
            started_unix_ms: 0,
        },
    }];
    for i in 1..=18_000u64 {
        let t_us = i * 100_000;
        entries.push(Entry {
            t_us,
            record: Record::CallerAudio {
                ms: 100,
                level: (i % 40 * 100) as u16,
            },
        });
        entries.push(Entry {
            t_us,
            record: Record::AgentAudio {
                bytes: 800,
                level: 4000,
            },
        });
        entries.push(Entry {
            t_us,
            record: Record::MarkSent {
                name: format!("0:0:{}:item_1", i * 800),
            },
        });
    }
    let svg = call_picture::Picture::from_recording(&entries)
        .svg()
        .unwrap();
    assert!(svg.len() < 1_000_000, "{} bytes", svg.len());
    check_svg(&svg, &["caller", "marks sent"]);
}

#[test]
fn a_reconnect_shows_both_model_connections() {
    let at = |ms: u64, record: Record| Entry {
        t_us: ms * 1000,
        record,
    };
    let entries = vec![
        at(0, Record::ModelConnecting),
        at(50, Record::ModelConnected),
        at(60_000, Record::ModelConnecting),
        at(60_080, Record::ModelConnected),
        at(
            90_000,
            Record::Closed {
                reason: "twilio stream stopped".into(),
            },
        ),
    ];
    let p = call_picture::Picture::from_recording(&entries);
    let spans: Vec<(f64, f64, bool)> = p.model.iter().map(|s| (s.from, s.to, s.faint)).collect();
    assert_eq!(
        spans,
        [
            (0.0, 50.0, true),
            (50.0, 60_000.0, false),
            (60_000.0, 60_080.0, true),
            (60_080.0, 90_000.0, false)
        ]
    );
    assert!(call_picture::summary(&entries).contains("2 connection(s)"));
}
