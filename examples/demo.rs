//! A whole call on this machine, with no phone and no API key.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Starts the example bridge server, a fake OpenAI Realtime model and a simulated Twilio
//! caller, all on 127.0.0.1. The caller hears a greeting, asks about the weather (the agent
//! calls its `get_weather` tool), then interrupts the answer. The demo prints a timeline, the
//! barge-in's truncation against what the caller really heard, writes the two sides of the
//! call as WAV files under `out/demo/`, the bridge's recording of the call
//! (`out/demo/call.jsonl`) and a picture of it (`out/demo/call.svg`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use twilio_realtime::call::Greeting;
use twilio_realtime::events::SessionEvent;
use twilio_realtime::server::{Server, ServerConfig};
use twilio_realtime::session::recording::{self, Record, RecordTo};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};

#[path = "shared/weather_agent.rs"]
mod weather_agent;

#[path = "shared/call_picture.rs"]
mod call_picture;

const OUT: &str = "out/demo";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    println!(
        "twilio-realtime demo: bridge + fake Realtime model + simulated caller, all on 127.0.0.1\n"
    );

    let model = FakeModel::start(FakeModelConfig {
        script: vec![
            // The greeting: the agent speaks first because the bridge asks it to (below).
            Reply::say(
                "Hello! This is the demo agent. Ask me about the weather.",
                2600,
            ),
            Reply::call("get_weather", r#"{"location":"Paris"}"#),
            Reply::say(
                "In Paris it is 18 degrees and sunny today, and the rest of the week looks just as \
                 pleasant, with light winds from the west and",
                6000,
            ),
            Reply::say("Of course. Goodbye!", 1500),
        ],
        ..Default::default()
    })?;

    let mut cfg = ServerConfig::from_env();
    cfg.bind = "127.0.0.1:0".parse()?;
    cfg.public_url = Some("https://demo.example".into());
    cfg.twilio_auth_token = None;
    cfg.session.model.url = model.url();
    cfg.session.model.api_key = Some("demo-key-not-used".into());
    // What AGENT_GREETING sets for the example server: the Realtime API never speaks first.
    cfg.session.call.greeting = Some(Greeting::Instructions(
        "Greet the caller and offer to tell them the weather.".into(),
    ));
    std::fs::create_dir_all(OUT)?;
    let recording = Path::new(OUT).join("call.jsonl");
    cfg.session.recording = Some(RecordTo::File(recording.clone()));
    let events: Arc<Mutex<Vec<(Duration, SessionEvent)>>> = Arc::default();
    let sink = events.clone();
    let server = Server::bind(cfg, Arc::new(weather_agent::weather_agent))?.on_event(Arc::new(
        move |_, e| {
            if let Ok(mut v) = sink.lock() {
                v.push((t0.elapsed(), e.clone()));
            }
        },
    ));
    let addr = server.local_addr();
    let stopper = server.stopper();
    let server = std::thread::spawn(move || server.run());

    // What Twilio does first: the call webhook.
    let mut http = TcpStream::connect(addr)?;
    let body = "CallSid=CA0001&From=%2B15550100&To=%2B15550199";
    write!(
        http,
        "POST /incoming-call HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    http.read_to_string(&mut resp)?;
    let twiml = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    println!("POST /incoming-call answered with TwiML:\n{twiml}");

    // Then the media stream: a caller 40 ms away (± 10 ms jitter).
    let mut call = TwilioCallConfig::new(
        addr,
        vec![
            Segment::WaitForAgent {
                quiet_ms: 600,
                timeout_ms: 15_000,
            },
            Segment::Speech(1200),
            Segment::BargeIn {
                after_ms: 2200,
                speech_ms: 900,
                timeout_ms: 15_000,
            },
            Segment::WaitForAgent {
                quiet_ms: 600,
                timeout_ms: 15_000,
            },
            Segment::HangUp,
        ],
    );
    call.one_way_delay = Duration::from_millis(40);
    call.jitter = Duration::from_millis(10);
    let call_start = t0.elapsed();
    let call_start_unix = SystemTime::now();
    let report = TwilioCall::run(call)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while stopper.live_calls() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stopper.stop();
    let _ = server.join();
    let rec = model.recording();

    // The timeline: the caller's side (ground truth) and the bridge's session events.
    let mut lines: Vec<(Duration, String)> = report
        .timeline
        .iter()
        .map(|(t, s)| (call_start + *t, format!("twilio   {s}")))
        .collect();
    for (t, e) in events.lock().map(|v| v.clone()).unwrap_or_default() {
        let line = match e {
            SessionEvent::AgentStart { agent } => format!("session  {agent} starts a response"),
            SessionEvent::AgentEnd { agent, text } if !text.is_empty() => {
                format!("session  {agent} said: \"{text}\"")
            }
            SessionEvent::ToolStart {
                tool, arguments, ..
            } => format!("session  tool {tool}({arguments})"),
            SessionEvent::ToolEnd { tool, output, .. } => {
                format!("session  tool {tool} -> \"{output}\"")
            }
            SessionEvent::AudioInterrupted { cause, heard } => {
                format!("session  barge-in ({cause:?}); truncated at {heard:?} ms")
            }
            SessionEvent::Closed { reason } => format!("session  closed: {reason}"),
            SessionEvent::Error { message, .. } => format!("session  error: {message}"),
            _ => continue,
        };
        lines.push((t, line));
    }
    lines.sort_by_key(|l| l.0);
    println!("\nTimeline (seconds since start):");
    for (t, l) in &lines {
        println!("  {:>6.2}  {l}", t.as_secs_f64());
    }

    println!("\nBarge-in accuracy (what the bridge told the model vs what the caller heard):");
    let heard = report.heard_ms_by_item();
    if rec.truncations.is_empty() {
        println!("  no truncation happened");
    }
    for t in &rec.truncations {
        let truth = heard.get(&t.item_id).copied().unwrap_or(0);
        println!(
            "  item {}: audio_end_ms {} ms, caller heard {} ms, error {:+} ms (model {})",
            t.item_id,
            t.audio_end_ms,
            truth,
            t.audio_end_ms as i64 - truth as i64,
            if t.accepted {
                "accepted it"
            } else {
                "refused it"
            }
        );
    }
    println!(
        "\nCaller audio: {} ms sent, {} ms reached the model. Agent audio: {} ms played, {} clear(s), {} marks echoed.",
        report.caller_audio.len() / 8,
        rec.appended_bytes / 8,
        report.played_ms(),
        report.clears.len(),
        report.marks_echoed
    );
    println!(
        "Audio formats at the model (bytes): caller audio received as {:?}, agent audio sent as {:?} (the session starts as 24 kHz audio/pcm; nothing flows before it is confirmed as audio/pcmu).",
        rec.appended_by_format, rec.sent_by_format
    );
    let (agent_wav, caller_wav) = report.write_wavs(Path::new(OUT))?;
    println!(
        "WAV files: {} (what the caller heard), {} (what the caller said)",
        agent_wav.display(),
        caller_wav.display()
    );

    // The picture: the bridge's recording, with the simulated caller's ground truth for the
    // two audio tracks and what was really heard at the barge-in.
    let entries = recording::read_file(&recording)?;
    let bridge_start_ms = entries.iter().find_map(|e| match e.record {
        Record::Header {
            started_unix_ms, ..
        } => Some(started_unix_ms as f64),
        _ => None,
    });
    let call_start_ms = call_start_unix
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let offset = bridge_start_ms.map_or(0.0, |b| (call_start_ms - b).max(0.0));
    let mut picture =
        call_picture::Picture::from_recording(&entries).with_ground_truth(&report, offset);
    picture.title = "The demo call: greeting, question, get_weather, barge-in, goodbye".into();
    let svg = picture.svg()?;
    let svg_path = Path::new(OUT).join("call.svg");
    std::fs::write(&svg_path, svg)?;
    println!(
        "Recording: {} (see it with: cargo run --example call_report -- {})",
        recording.display(),
        recording.display()
    );
    println!("Picture: {}", svg_path.display());
    println!("Done in {:.1} s.", t0.elapsed().as_secs_f64());
    if std::env::var_os("OPENAI_API_KEY").is_some() {
        println!(
            "\nOPENAI_API_KEY is set: to talk to the real model, run the server instead:\n  \
             cargo run --release --example twilio_server\nand point a Twilio number's webhook at \
             https://YOUR-TUNNEL/incoming-call (see README, \"Going live\")."
        );
    }
    Ok(())
}
