//! Property tests in place of fuzz targets (they run on stable Rust and in CI, and shrink a
//! failure to a minimal case): the Twilio parser, the model-event parser, and the call core fed
//! arbitrary event sequences.
//!
//! Invariants: nothing panics; a parsed `media` or audio delta always carries valid base64;
//! every frame for Twilio carries the streamSid from `start` (never before it, never empty);
//! every `conversation.item.truncate` claims no more audio than was sent to Twilio for that item.
//!
//! CI runs proptest's default 256 cases per property. A long run:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test --release --test fuzz_props
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use proptest::prelude::*;
use serde_json::json;
use twilio_realtime::agent::{Agent, FunctionTool, OutputGuardrail, Verdict};
use twilio_realtime::call::{CallCore, CallOptions, Command, Output};
use twilio_realtime::model::{ClientEvent, ServerEvent};
use twilio_realtime::mulaw;
use twilio_realtime::playback::MarkName;
use twilio_realtime::twilio::{TwilioCommand, TwilioMessage};

const SIDS: [&str; 2] = [
    "MZ18ad3ab5a668481ce02b83e7395059f0",
    "MZ00000000000000000000000000000002",
];

// ---------------------------------------------------------------------------------------------
// Parsers on arbitrary input

/// Strings that look a bit like the real thing: JSON fragments, known names, junk.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("\"event\"".to_owned()),
        Just("\"type\"".to_owned()),
        Just("\"media\"".to_owned()),
        Just("\"payload\"".to_owned()),
        Just("\"start\"".to_owned()),
        Just("\"mark\"".to_owned()),
        Just("\"response.output_audio.delta\"".to_owned()),
        Just("\"delta\"".to_owned()),
        Just("\"//8=\"".to_owned()),
        Just("null".to_owned()),
        Just("12".to_owned()),
        "\"[a-zA-Z0-9+/=_.]{0,12}\"",
        any::<String>(),
    ];
    prop::collection::vec(atom, 0..24).prop_map(|v| v.concat())
}

/// Well-formed objects with known event names and fields of random types.
fn objectish() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9+/=]{0,16}".prop_map(|s| json!(s)),
        Just(json!({})),
        Just(json!([])),
        Just(json!({"payload": "//8=", "name": "x", "track": "inbound"})),
    ];
    let key = prop_oneof![
        Just("event"),
        Just("type"),
        Just("streamSid"),
        Just("media"),
        Just("start"),
        Just("mark"),
        Just("payload"),
        Just("delta"),
        Just("item_id"),
        Just("response_id"),
        Just("item"),
        Just("response"),
        Just("error"),
    ];
    let name = prop_oneof![
        Just("connected"),
        Just("start"),
        Just("media"),
        Just("mark"),
        Just("stop"),
        Just("dtmf"),
        Just("session.created"),
        Just("error"),
        Just("response.output_audio.delta"),
        Just("response.created"),
        Just("response.done"),
        Just("response.output_item.added"),
        Just("conversation.item.truncated"),
        Just("input_audio_buffer.speech_started"),
    ];
    (name, prop::collection::vec((key, value), 0..8)).prop_map(|(name, fields)| {
        let mut o = serde_json::Map::new();
        o.insert("event".into(), json!(name));
        o.insert("type".into(), json!(name));
        for (k, v) in fields {
            o.insert(k.into(), v);
        }
        serde_json::Value::Object(o).to_string()
    })
}

proptest! {
    #[test]
    fn twilio_parser_never_panics(text in prop_oneof![jsonish(), objectish()]) {
        if let Ok(TwilioMessage::Media(m)) = TwilioMessage::parse(&text) {
            prop_assert!(mulaw::validate_base64(&m.media.payload).is_ok());
        }
        let _ = twilio_realtime::twilio::TwilioCommand::parse(&text);
    }

    #[test]
    fn model_parser_never_panics(text in prop_oneof![jsonish(), objectish()]) {
        if let Ok(ServerEvent::OutputAudioDelta(d)) = ServerEvent::parse(&text) {
            prop_assert!(mulaw::validate_base64(&d.delta).is_ok());
        }
        let _ = ClientEvent::parse(&text);
    }
}

// ---------------------------------------------------------------------------------------------
// The call core on arbitrary sequences

#[derive(Debug, Clone)]
enum Step {
    Start(usize),
    Media(u16),
    EchoMark(usize),
    BogusMark(String),
    Stop,
    Dtmf,
    SessionCreated,
    ResponseCreated(u8),
    ItemAdded(u8, u8),
    Delta(u8, u8, u16),
    AudioDone(u8, u8),
    Transcript(u8, u8, bool),
    FunctionCall(u8, bool),
    ResponseDone(u8, bool),
    SpeechStarted,
    SpeechStopped,
    Truncated(u8, u32),
    ModelError(bool),
    Interrupt,
    SendMessage,
    ToolDone(usize, bool),
    Approve(usize),
    ModelClosed,
    ModelConnected,
    TwilioClosed,
    Advance(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        40 => (0..2usize).prop_map(Step::Start),
        32 => any::<u16>().prop_map(Step::Media),
        48 => any::<usize>().prop_map(Step::EchoMark),
        8 => "[a-z0-9:_]{0,20}".prop_map(Step::BogusMark),
        1 => Just(Step::Stop),
        8 => Just(Step::Dtmf),
        16 => Just(Step::SessionCreated),
        24 => (0..3u8).prop_map(Step::ResponseCreated),
        24 => (0..3u8, 0..4u8).prop_map(|(r, i)| Step::ItemAdded(r, i)),
        80 => (0..3u8, 0..4u8, 1..4000u16).prop_map(|(r, i, n)| Step::Delta(r, i, n)),
        16 => (0..3u8, 0..4u8).prop_map(|(r, i)| Step::AudioDone(r, i)),
        16 => (0..3u8, 0..4u8, any::<bool>()).prop_map(|(r, i, d)| Step::Transcript(r, i, d)),
        8 => (0..3u8, any::<bool>()).prop_map(|(r, known)| Step::FunctionCall(r, known)),
        24 => (0..3u8, any::<bool>()).prop_map(|(r, c)| Step::ResponseDone(r, c)),
        24 => Just(Step::SpeechStarted),
        16 => Just(Step::SpeechStopped),
        8 => (0..4u8, any::<u32>()).prop_map(|(i, ms)| Step::Truncated(i, ms)),
        8 => any::<bool>().prop_map(Step::ModelError),
        16 => Just(Step::Interrupt),
        8 => Just(Step::SendMessage),
        8 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Step::ToolDone(i, ok)),
        8 => any::<usize>().prop_map(Step::Approve),
        1 => Just(Step::ModelClosed),
        8 => Just(Step::ModelConnected),
        1 => Just(Step::TwilioClosed),
        40 => (0..60u16).prop_map(Step::Advance),
        8 => (0..3000u16).prop_map(Step::Advance),
    ]
}

fn agent() -> Agent {
    let weather = FunctionTool::new(
        "get_weather",
        "Weather",
        json!({"type":"object","properties":{"location":{"type":"string"}}}),
        |_| Ok("sunny".into()),
    );
    let careful = FunctionTool::new("refund", "Refund", json!({"type":"object"}), |_| {
        Ok("done".into())
    })
    .needs_approval(true);
    let billing = Agent::new("Billing", "Billing.");
    Agent::new("Front", "Calls.")
        .tool(weather)
        .tool(careful)
        .handoff(&billing)
        .output_guardrail(OutputGuardrail::new("no_x", |t: &str| {
            if t.contains("forbidden") {
                Verdict::trip("x")
            } else {
                Verdict::Pass
            }
        }))
}

struct World {
    core: CallCore,
    now: Instant,
    stream_sid: Option<String>,
    marks: Vec<String>,
    /// Bytes of each (item, content index) sent to Twilio, from the ledger marks.
    sent: HashMap<String, u64>,
    tools: Vec<String>,
    truncations: u64,
}

fn b64(n: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![0x55u8; n])
}

impl World {
    fn model(&mut self, v: serde_json::Value) {
        let ev = ServerEvent::parse(&v.to_string()).expect("generated events parse");
        self.core.handle_model(self.now, ev);
    }

    fn twilio(&mut self, v: serde_json::Value) {
        let msg = TwilioMessage::parse(&v.to_string()).expect("generated messages parse");
        self.core.handle_twilio(self.now, msg);
    }

    fn apply(&mut self, s: &Step) {
        let now = self.now;
        let resp = |r: u8| format!("resp_{r}");
        let item = |i: u8| format!("item_{i}");
        match s {
            Step::Start(i) => self.twilio(json!({"event":"start","streamSid":SIDS[*i],
                "start":{"accountSid":"AC1","streamSid":SIDS[*i],"callSid":"CA1","tracks":["inbound"],
                "customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}})),
            Step::Media(ts) => self.twilio(json!({"event":"media","streamSid":SIDS[0],
                "media":{"track":"inbound","chunk":"1","timestamp":ts.to_string(),"payload":b64(160)}})),
            Step::EchoMark(i) => {
                if !self.marks.is_empty() {
                    let name = self.marks[i % self.marks.len()].clone();
                    self.twilio(json!({"event":"mark","streamSid":SIDS[0],"mark":{"name":name}}));
                }
            }
            Step::BogusMark(name) => {
                self.twilio(json!({"event":"mark","streamSid":SIDS[0],"mark":{"name":name}}))
            }
            Step::Stop => self.twilio(json!({"event":"stop","streamSid":SIDS[0],
                "stop":{"accountSid":"AC1","callSid":"CA1"}})),
            Step::Dtmf => self.twilio(json!({"event":"dtmf","streamSid":SIDS[0],
                "dtmf":{"track":"inbound_track","digit":"5"}})),
            Step::SessionCreated => {
                self.model(json!({"type":"session.created","event_id":"e",
                    "session":{"type":"realtime"}}));
                // The server confirms µ-law (the core is ready only then).
                self.model(json!({"type":"session.updated","event_id":"e","session":{"type":"realtime",
                    "audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}))
            }
            Step::ResponseCreated(r) => self.model(json!({"type":"response.created","event_id":"e",
                "response":{"id":resp(*r),"status":"in_progress","output":[]}})),
            Step::ItemAdded(r, i) => self.model(json!({"type":"response.output_item.added",
                "event_id":"e","response_id":resp(*r),"output_index":0,
                "item":{"id":item(*i),"type":"message","role":"assistant","content":[]}})),
            Step::Delta(r, i, n) => self.model(json!({"type":"response.output_audio.delta",
                "event_id":"e","response_id":resp(*r),"item_id":item(*i),"output_index":0,
                "content_index":0,"delta":b64(*n as usize)})),
            Step::AudioDone(r, i) => self.model(json!({"type":"response.output_audio.done",
                "event_id":"e","response_id":resp(*r),"item_id":item(*i),"output_index":0,
                "content_index":0})),
            Step::Transcript(r, i, done) => {
                let text = "hello forbidden words";
                if *done {
                    self.model(json!({"type":"response.output_audio_transcript.done","event_id":"e",
                        "response_id":resp(*r),"item_id":item(*i),"output_index":0,"content_index":0,
                        "transcript":text}))
                } else {
                    self.model(json!({"type":"response.output_audio_transcript.delta","event_id":"e",
                        "response_id":resp(*r),"item_id":item(*i),"output_index":0,"content_index":0,
                        "delta":text}))
                }
            }
            Step::FunctionCall(r, known) => {
                let name = if *known { "get_weather" } else { "nope" };
                let call_id = format!("call_{}", self.tools.len());
                self.model(json!({"type":"response.output_item.done","event_id":"e",
                    "response_id":resp(*r),"output_index":0,
                    "item":{"id":format!("fc_{}", self.tools.len()),"type":"function_call",
                    "status":"completed","name":name,"call_id":call_id,
                    "arguments":"{\"location\":\"Paris\"}"}}));
                self.tools.push(call_id);
            }
            Step::ResponseDone(r, cancelled) => self.model(json!({"type":"response.done",
                "event_id":"e","response":{"id":resp(*r),
                "status": if *cancelled {"cancelled"} else {"completed"},"output":[]}})),
            Step::SpeechStarted => self.model(json!({"type":"input_audio_buffer.speech_started",
                "event_id":"e","audio_start_ms":100,"item_id":"item_user"})),
            Step::SpeechStopped => self.model(json!({"type":"input_audio_buffer.speech_stopped",
                "event_id":"e","audio_end_ms":900,"item_id":"item_user"})),
            Step::Truncated(i, ms) => self.model(json!({"type":"conversation.item.truncated",
                "event_id":"e","item_id":item(*i),"content_index":0,"audio_end_ms":ms})),
            Step::ModelError(expired) => {
                let code = if *expired { "session_expired" } else { "invalid_value" };
                self.model(json!({"type":"error","event_id":"e","error":{
                    "type":"invalid_request_error","code":code,"message":"m","param":null,
                    "event_id":null}}))
            }
            Step::Interrupt => self.core.handle_command(now, Command::Interrupt),
            Step::SendMessage => self
                .core
                .handle_command(now, Command::SendMessage("hi".into())),
            Step::ToolDone(i, ok) => {
                if !self.tools.is_empty() {
                    let id = self.tools[i % self.tools.len()].clone();
                    let r = if *ok { Ok("ok".into()) } else { Err("bad".into()) };
                    self.core.handle_tool_result(now, &id, r);
                }
            }
            Step::Approve(i) => {
                if !self.tools.is_empty() {
                    let id = self.tools[i % self.tools.len()].clone();
                    self.core.handle_command(now, Command::Approve(id));
                }
            }
            Step::ModelClosed => self.core.handle_model_closed(now, "gone"),
            Step::ModelConnected => self.core.handle_model_connected(now),
            Step::TwilioClosed => self.core.handle_twilio_closed(now, "gone"),
            Step::Advance(ms) => {
                self.now += Duration::from_millis(*ms as u64);
                self.core.handle_timeout(self.now);
            }
        }
    }

    /// Checks every output against the invariants.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Twilio(cmd) => {
                    let sid = match &cmd {
                        TwilioCommand::Media { stream_sid, .. }
                        | TwilioCommand::Mark { stream_sid, .. }
                        | TwilioCommand::Clear { stream_sid } => stream_sid.clone(),
                        _ => String::new(), // a new kind of frame: must carry a sid too
                    };
                    prop_assert!(!sid.is_empty(), "empty streamSid: {cmd:?}");
                    prop_assert_eq!(Some(&sid), self.stream_sid.as_ref(), "frame before start");
                    if let TwilioCommand::Mark { name, .. } = &cmd {
                        if let Some(MarkName::Chunk {
                            content_index,
                            offset,
                            item_id,
                            ..
                        }) = MarkName::parse(name)
                        {
                            let e = self.sent.entry(format!("{item_id}/{content_index}"));
                            let v = e.or_default();
                            *v = (*v).max(offset);
                        }
                        self.marks.push(name.clone());
                    }
                }
                Output::Model(ClientEvent::ConversationItemTruncate {
                    item_id,
                    content_index,
                    audio_end_ms,
                    ..
                }) => {
                    self.truncations += 1;
                    let sent = self
                        .sent
                        .get(&format!("{item_id}/{content_index}"))
                        .copied()
                        .unwrap_or(0);
                    prop_assert!(
                        audio_end_ms <= mulaw::bytes_to_ms(sent),
                        "truncate {item_id} at {audio_end_ms} ms but only {sent} bytes were sent"
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn call_core_keeps_its_invariants(steps in prop::collection::vec(step(), 1..150)) {
        let now = Instant::now();
        let mut w = World {
            core: CallCore::new(agent(), CallOptions::default(), now),
            now,
            stream_sid: None,
            marks: Vec::new(),
            sent: HashMap::new(),
            tools: Vec::new(),
            truncations: 0,
        };
        for s in &steps {
            if let Step::Start(i) = s {
                // The first start wins; a second one is ignored by the core.
                if w.stream_sid.is_none() && w.core.ended().is_none() {
                    w.stream_sid = Some(SIDS[*i].to_owned());
                }
            }
            w.apply(s);
            w.drain()?;
        }
    }
}
