//! A whole call on this machine, with no phone and no API key.
//!
//! ```text
//! cargo run --example demo                  # OpenAI Realtime (the fake)
//! cargo run --example demo -- --model live  # OpenAI GPT-Live (the fake)
//! ```
//!
//! Starts the bridge server, a fake OpenAI model (Realtime, or GPT-Live with `--model live`)
//! and a simulated Twilio caller, all on 127.0.0.1. The webhook's `From` chooses the agent: the caller is looked up in the demo's
//! customer records and greeted by name. The caller asks about the weather (the agent calls
//! `get_weather`), interrupts the answer to ask for their next appointment (the agent calls
//! `next_appointment`, a tool that finds the caller by the call's `From`), hears the goodbye
//! in full, and the agent ends the call with its built-in `end_call` tool. Then Twilio's
//! request to the `<Connect action>` URL, `/call-ended`, is made and its TwiML printed.
//!
//! The demo prints a timeline, the barge-in's truncation against what the caller really
//! heard, writes the two sides of the call as WAV files under `out/demo/`, the bridge's
//! recording of the call (`out/demo/call.jsonl`), a picture of it (`out/demo/call.svg`) and
//! every client event the bridge sent the model (`out/demo/model-events.jsonl`, audio
//! elided). With GPT-Live there is no truncation: the model stops by itself, and the demo
//! prints how far Twilio's playout ran ahead of what the caller heard instead.
//!
//! The fake model's words are scripted (it cannot understand speech); the instructions, tool
//! outputs and the call's ending are the bridge's own, and the demo prints them.
//!
//! `cargo run --example demo -- --sip` runs the same agent on a SIP call through OpenAI
//! instead, against the fake SIP control plane (`sim::sip`): the signed webhook, the REST
//! accept, the call driven over its sideband (greeting, `get_weather`, a key press, the
//! goodbye), and the transfer as a SIP REFER once the goodbye has played.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use twilio_realtime::agent::{Agent, FunctionTool};
use twilio_realtime::call::live::LiveConfig;
use twilio_realtime::call::playback::MarkName;
use twilio_realtime::call::{Greeting, ModelApi};
use twilio_realtime::events::SessionEvent;
use twilio_realtime::server::{CallEvents, Server, ServerConfig};
use twilio_realtime::session::model_log::ModelEventLog;
use twilio_realtime::session::recording::{self, Record, RecordTo};
use twilio_realtime::session::CallControl;
use twilio_realtime::sim::fake_live::{FakeLive, FakeLiveConfig, LiveReply};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::telephony::call_info::CallInfo;

// The demo takes only its `get_weather` tool; its agent is chosen per caller.
#[allow(dead_code)]
#[path = "shared/weather_agent.rs"]
mod weather_agent;

#[path = "shared/call_picture.rs"]
mod call_picture;

/// `--sip`: the same agent on a SIP call through OpenAI.
#[path = "shared/sip_demo.rs"]
mod sip_demo;

/// The simulated caller's number and CallSid.
const CALLER: &str = "+15550100";
const CALL_SID: &str = "CA00000000000000000000000000000001";
/// How long the scripted goodbye lasts.
const GOODBYE_MS: u64 = 2500;

/// The demo's customer records, by phone number: what a deployment looks up in its CRM.
fn customer(number: &str) -> Option<(&'static str, &'static str)> {
    match number {
        CALLER => Some(("Ada", "Tuesday at 10:00 with Dr. Babbage")),
        _ => None,
    }
}

/// The caller's number from the call's `From`: as Twilio sends it (`+1…`), or the user part
/// of a SIP URI (`sip:+1…@host`, a SIP call's INVITE).
fn caller_number(call: &CallInfo) -> Option<&str> {
    let from = call.from.as_deref()?;
    let user = from.strip_prefix("sip:").unwrap_or(from);
    user.split(['@', ';']).next()
}

/// The agent for this call, chosen from its caller context (`From`).
fn agent_for(call: &CallInfo) -> Agent {
    let name = caller_number(call).and_then(customer).map(|c| c.0);
    let instructions = format!(
        "You are a friendly phone assistant. Keep answers short: the caller is listening, not \
         reading. Use get_weather when asked about the weather and next_appointment when asked \
         about appointments. {} When the caller has what they need, say goodbye and end the \
         call.",
        match name {
            Some(n) => format!("The caller is {n}, a customer: greet them by name."),
            None => "The caller is not a customer we know.".to_owned(),
        }
    );
    let appointment = FunctionTool::new(
        "next_appointment",
        "The caller's next appointment, found by the number they are calling from.",
        json!({"type": "object", "properties": {}, "additionalProperties": false}),
        |call| {
            let from = call
                .call_info
                .as_deref()
                .and_then(caller_number)
                .ok_or("no caller number")?;
            let (name, next) = customer(from).ok_or("no customer with this number")?;
            Ok(format!("{name} ({from}): next appointment {next}."))
        },
    );
    Agent::new("Assistant", instructions)
        .voice("marin")
        .tool(weather_agent::weather_tool())
        .tool(appointment)
        .can_hang_up()
}

const OUT: &str = "out/demo";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let sip = std::env::args().skip(1).any(|a| a == "--sip");
    if let Err(e) = if sip { sip_demo::run() } else { run() } {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

/// The fake model of the chosen API.
enum Fake {
    Realtime(FakeModel),
    Live(FakeLive),
}

/// The GPT-Live fake's script: the same conversation. The model speaks on its own (after the
/// greeting commentary, when the caller's turn ends, when a tool's result comes back) and
/// stops by itself when talked over; tools run through its Responses backend.
fn live_model() -> std::io::Result<FakeLive> {
    FakeLive::start(FakeLiveConfig {
        script: vec![
            LiveReply::say("Hello Ada, welcome back! How can I help you today?", 2600),
            // No spoken preamble ("Let me look."): the caller's barge-in counts from the first
            // agent audio after the question, which must be the answer (as with Realtime).
            LiveReply::call("get_weather", r#"{"location":"Paris"}"#),
            LiveReply::say(
                "In Paris it is 18 degrees and sunny today, and the rest of the week looks just as \
                 pleasant, with light winds from the west and",
                6000,
            ),
            // The caller cut in: "When is my next appointment?"
            LiveReply::call("next_appointment", "{}"),
            LiveReply::say(
                "Your next appointment is on Tuesday at ten with Dr. Babbage. Thanks for calling, \
                 Ada. Goodbye!",
                GOODBYE_MS as u32,
            )
            .then_call("end_call", "{}"),
        ],
        caller_transcripts: vec![
            "What's the weather in Paris?".into(),
            "When is my next appointment?".into(),
        ],
        ..Default::default()
    })
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let live = match args
        .iter()
        .position(|a| a == "--model")
        .map(|i| args.get(i + 1))
    {
        None => false,
        Some(Some(m)) if m == "live" => true,
        Some(Some(m)) if m == "realtime" => false,
        Some(other) => return Err(format!("--model takes live or realtime, not {other:?}").into()),
    };
    println!(
        "twilio-realtime demo: bridge + fake {} model + simulated caller, all on 127.0.0.1\n",
        if live { "GPT-Live" } else { "Realtime" }
    );
    if live {
        return call(t0, Fake::Live(live_model()?));
    }

    let model = FakeModel::start(FakeModelConfig {
        script: vec![
            // The greeting: the agent speaks first because the bridge asks it to (below).
            Reply::say("Hello Ada, welcome back! How can I help you today?", 2600),
            Reply::call("get_weather", r#"{"location":"Paris"}"#),
            Reply::say(
                "In Paris it is 18 degrees and sunny today, and the rest of the week looks just as \
                 pleasant, with light winds from the west and",
                6000,
            ),
            // The caller cut in: "When is my next appointment?"
            Reply::call("next_appointment", "{}"),
            Reply::say(
                "Your next appointment is on Tuesday at ten with Dr. Babbage. Thanks for calling, \
                 Ada. Goodbye!",
                GOODBYE_MS as u32,
            ),
            Reply::call("end_call", "{}"),
        ],
        ..Default::default()
    })?;
    call(t0, Fake::Realtime(model))
}

fn call(t0: Instant, model: Fake) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = ServerConfig::from_env();
    cfg.bind = "127.0.0.1:0".parse()?;
    cfg.public_url = Some("https://demo.example".into());
    cfg.twilio_auth_token = None;
    cfg.stream_token_ttl = None;
    let live = matches!(model, Fake::Live(_));
    let (api, url) = match &model {
        Fake::Realtime(m) => (ModelApi::Realtime, m.url()),
        Fake::Live(m) => (ModelApi::Live(LiveConfig::default()), m.url()),
    };
    cfg.session = cfg.session.model_api(api);
    cfg.session.model.url = url;
    cfg.session.model.api_key = Some("demo-key-not-used".into());
    // What AGENT_GREETING sets for the example server: the Realtime API never speaks first.
    cfg.session.call.greeting = Some(Greeting::Instructions(
        "Greet the caller by name and ask how you can help.".into(),
    ));
    std::fs::create_dir_all(OUT)?;
    let recording = Path::new(OUT).join("call.jsonl");
    cfg.session.recording = Some(RecordTo::File(recording.clone()));
    let model_events = Path::new(OUT).join("model-events.jsonl");
    cfg.session.model_events = Some(ModelEventLog::new(std::io::BufWriter::new(
        std::fs::File::create(&model_events)?,
    )));
    let events: Arc<Mutex<Vec<(Duration, SessionEvent)>>> = Arc::default();
    let server =
        Server::bind(cfg, |call: &CallInfo| agent_for(call))?.on_event(collect_events(t0, &events));
    // The goodbye follows next_appointment's answer (GPT-Live needs no help: its model says
    // the goodbye and delegates end_call in one turn).
    let server = if live {
        server
    } else {
        server.on_call(goodbye_then_next_response(
            |e| matches!(e, SessionEvent::ToolEnd { tool, .. } if tool == "next_appointment"),
        ))
    };
    let addr = server.local_addr();
    let stopper = server.stopper();
    let server = std::thread::spawn(move || server.run());

    // What Twilio does first: the call webhook, with the caller's number in `From`.
    let body = format!(
        "CallSid={CALL_SID}&AccountSid=AC00000000000000000000000000000001&From=%2B15550100&To=%2B15550199&Direction=inbound"
    );
    let twiml = post(addr, "/incoming-call", &body)?;
    println!("POST /incoming-call (From={CALLER}) answered with TwiML:\n{twiml}");

    // Then the media stream: a caller 40 ms away (± 10 ms jitter).
    let mut call = TwilioCallConfig::new(
        addr,
        vec![
            Segment::WaitForAgent {
                quiet_ms: 600,
                timeout_ms: 15_000,
            },
            Segment::Speech(1200),
            // Early in the 6 s weather answer, its first audible audio since the question: the
            // simulated caller counts from the start of an unbroken run of agent audio, and on
            // a loaded machine a late chunk (the lead ahead of the caller is ~35 ms with
            // GPT-Live's paced stream) starts a new run, so a late barge-in could miss the
            // answer altogether.
            Segment::BargeIn {
                after_ms: 800,
                speech_ms: 900,
                timeout_ms: 15_000,
            },
            // The agent answers, says goodbye and ends the call: the caller would hang up
            // only after 3 s of silence, and never has to.
            Segment::WaitForAgent {
                quiet_ms: 3000,
                timeout_ms: 20_000,
            },
            Segment::HangUp,
        ],
    );
    call.call_sid = Some(CALL_SID.into());
    call.custom_parameters
        .insert("caller".into(), CALLER.into());
    call.one_way_delay = Duration::from_millis(40);
    call.jitter = Duration::from_millis(10);
    let call_start = t0.elapsed();
    let call_start_unix = SystemTime::now();
    let report = TwilioCall::run(call)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while stopper.live_calls() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The stream has ended: Twilio asks the <Connect action> URL what to do next.
    let after = post(
        addr,
        "/call-ended",
        &format!("CallSid={CALL_SID}&CallStatus=in-progress"),
    )?;
    stopper.stop();
    let _ = server.join();
    let configured = match &model {
        Fake::Realtime(m) => m.recording().session_updates.first().cloned(),
        Fake::Live(m) => m.recording().starts.first().cloned(),
    };
    if let Some(instructions) = configured.as_ref().and_then(|s| s["instructions"].as_str()) {
        println!("\nThe agent chosen for From={CALLER} was configured with:\n  \"{instructions}\"");
    }

    // The timeline: the caller's side (ground truth) and the bridge's session events.
    let mut lines: Vec<(Duration, String)> = report
        .timeline
        .iter()
        .enumerate()
        // The simulator's reader and writer may both see the close: one line is enough.
        .filter(|(i, (_, s))| {
            s != "bridge closed the stream" || !report.timeline[..*i].iter().any(|(_, p)| p == s)
        })
        .map(|(_, l)| l)
        .map(|(t, s)| (call_start + *t, format!("twilio   {s}")))
        .collect();
    for (t, e) in events.lock().map(|v| v.clone()).unwrap_or_default() {
        if let Some(line) = event_line(&e) {
            lines.push((t, line));
        }
    }
    lines.sort_by_key(|l| l.0);
    println!("\nTimeline (seconds since start):");
    for (t, l) in &lines {
        println!("  {:>6.2}  {l}", t.as_secs_f64());
    }

    match &model {
        Fake::Realtime(m) => truncations(&report, &m.recording().truncations),
        Fake::Live(m) => lead(&report, m.recording().stopped_for_caller),
    }
    // The goodbye: the last item the caller heard, and when the bridge closed the stream.
    let last_item =
        report
            .chunks
            .iter()
            .rev()
            .find_map(|c| match MarkName::parse(c.mark.as_deref()?)? {
                MarkName::Chunk { item_id, .. } | MarkName::Done { item_id, .. } => {
                    Some(item_id.to_owned())
                }
                _ => None,
            });
    // With GPT-Live the ledger's items are 1 s segments: the goodbye is the last run of
    // audible audio.
    let goodbye = if live {
        let heard: u64 = report
            .chunks
            .iter()
            .rev()
            .skip_while(|c| !c.audible)
            .take_while(|c| c.audible)
            .map(|c| c.played)
            .sum();
        Some(heard / 8)
    } else {
        last_item.map(|last| report.heard_ms_by_item().get(&last).copied().unwrap_or(0))
    };
    if let Some(heard) = goodbye {
        let ended = report
            .chunks
            .iter()
            .map(|c| c.end)
            .max()
            .unwrap_or_default();
        let closed = report
            .timeline
            .iter()
            .find(|(_, l)| l == "bridge closed the stream")
            .map(|(t, _)| *t);
        println!(
            "\nGoodbye: the caller heard {heard} of {GOODBYE_MS} ms; {}",
            match closed {
                Some(c) => format!(
                    "the bridge closed the stream {} ms after it finished playing.",
                    c.saturating_sub(ended).as_millis()
                ),
                None => "the caller hung up first.".into(),
            }
        );
    }
    println!("POST /call-ended answered with TwiML (what Twilio does next):\n{after}");
    let appended = match &model {
        Fake::Realtime(m) => m.recording().appended_bytes,
        Fake::Live(m) => m.recording().appended_bytes,
    };
    println!(
        "\nCaller audio: {} ms sent, {} ms reached the model. Agent audio: {} ms played, {} clear(s), {} marks echoed.",
        report.caller_audio.len() / 8,
        appended / 8,
        report.played_ms(),
        report.clears.len(),
        report.marks_echoed
    );
    match &model {
        Fake::Realtime(m) => {
            let rec = m.recording();
            println!(
                "Audio formats at the model (bytes): caller audio received as {:?}, agent audio sent as {:?} (the session starts as 24 kHz audio/pcm; nothing flows before it is confirmed as audio/pcmu).",
                rec.appended_by_format, rec.sent_by_format
            );
        }
        Fake::Live(m) => {
            let rec = m.recording();
            println!(
                "GPT-Live session {}: {} ms of audio streamed ({} ms speech, the rest silence), {} ms of caller audio before session.started (none may be sent).",
                rec.session_ids.join(", "),
                rec.audio_sent_ms,
                rec.speech_sent_ms,
                rec.appended_before_start / 8
            );
        }
    }
    println!(
        "Model events: {} (every client event sent to the model, audio elided; with GPT-Live also the session id as received)",
        model_events.display()
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
    picture.title =
        "The demo call: greeting by name, get_weather, barge-in, next_appointment, goodbye, end_call"
            .into();
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

/// Realtime: each truncation the bridge told the model against what the caller heard.
fn truncations(
    report: &twilio_realtime::sim::twilio_call::CallReport,
    truncations: &[twilio_realtime::sim::fake_model::TruncationRecord],
) {
    println!("\nBarge-in accuracy (what the bridge told the model vs what the caller heard):");
    let heard = report.heard_ms_by_item();
    if truncations.is_empty() {
        println!("  no truncation happened");
    }
    for t in truncations {
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
}

/// GPT-Live: no truncation exists; how far Twilio's playout ran ahead of what the caller
/// heard (ground truth: audio buffered at Twilio as each chunk arrived).
fn lead(report: &twilio_realtime::sim::twilio_call::CallReport, stopped: u64) {
    let mut buffered: Vec<u128> = report
        .chunks
        .iter()
        .map(|c| c.start.saturating_sub(c.arrival).as_millis())
        .collect();
    buffered.sort_unstable();
    let q = |p: f64| {
        buffered
            .get(((buffered.len() as f64 * p) as usize).min(buffered.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "\nBarge-in: the model stopped by itself {stopped} time(s) (GPT-Live has no truncation and the bridge sends no clear). Twilio's buffer ahead of the caller: p50 {} ms, p99 {} ms, max {} ms.",
        q(0.5),
        q(0.99),
        buffered.last().copied().unwrap_or(0)
    );
}

/// An event hook that keeps every event with its time since `t0`.
fn collect_events(
    t0: Instant,
    events: &Arc<Mutex<Vec<(Duration, SessionEvent)>>>,
) -> twilio_realtime::server::EventHook {
    let sink = events.clone();
    Arc::new(move |_, e| {
        if let Ok(mut v) = sink.lock() {
            v.push((t0.elapsed(), e.clone()));
        }
    })
}

/// A call handler for the scripted goodbye: a real model says its goodbye and calls its
/// ending tool (`end_call`, `transfer_call`) in one response; the fake model gives one
/// scripted reply per response. So, once the response after `before_goodbye` starts (the
/// goodbye), ask for the next one (sent when the goodbye's response is done): the ending
/// tool then arrives while the goodbye still plays, and the bridge must wait until the
/// caller has heard it all.
fn goodbye_then_next_response(
    before_goodbye: fn(&SessionEvent) -> bool,
) -> impl Fn(u64, CallControl) -> CallEvents {
    move |_, control: CallControl| -> CallEvents {
        let mut seen = false;
        let mut asked = false;
        Box::new(move |e| match e {
            e if before_goodbye(e) => seen = true,
            SessionEvent::AgentStart { .. } if seen && !asked => {
                asked = true;
                control.create_response(None);
            }
            _ => {}
        })
    }
}

/// A timeline line for a session event (`None` for those the demos do not show).
fn event_line(e: &SessionEvent) -> Option<String> {
    Some(match e {
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
        SessionEvent::Ending { reason } => format!("session  ending: {reason}"),
        SessionEvent::AudioInterrupted { cause, heard, .. } => {
            format!("session  barge-in ({cause:?}); truncated at {heard:?} ms")
        }
        SessionEvent::Dtmf { digit } => format!("session  the caller pressed {digit}"),
        SessionEvent::SipRefer { target_uri, result } => {
            format!("session  SIP REFER to {target_uri}: {result:?}")
        }
        SessionEvent::SipHangUp { result } => format!("session  SIP hangup: {result:?}"),
        SessionEvent::Closed { reason } => format!("session  closed: {reason}"),
        SessionEvent::Error(e) => format!("session  error: {e}"),
        _ => return None,
    })
}

/// A form POST as Twilio makes it (unsigned: the demo sets no auth token); the body answered.
fn post(addr: SocketAddr, path: &str, body: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut http = TcpStream::connect(addr)?;
    write!(
        http,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    http.read_to_string(&mut resp)?;
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}
