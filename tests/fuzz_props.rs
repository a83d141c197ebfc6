//! Property tests in place of fuzz targets (they run on stable Rust and in CI, and shrink a
//! failure to a minimal case): the Twilio parser, the model-event parser, and the call core
//! together with the caller-audio lane (wired as the session wires them) fed arbitrary event
//! sequences: `media` timestamps over the whole `u64` range (jitter, gaps, jumps, clocks that go
//! backwards), transcripts with multibyte characters from interleaved items.
//!
//! Invariants: nothing panics (debug builds check overflow); a parsed `media` or audio delta
//! always carries valid base64; every frame for Twilio carries the streamSid from `start` (never
//! before it, never empty); every `conversation.item.truncate` claims no more audio than was
//! sent to Twilio for that item; caller frames reach the model only while it is ready, in
//! order, byte-exact, each at most once, and only frames the early buffer dropped go missing;
//! gap padding never exceeds the wall time since the first frame; a response's text is its
//! items' texts in order of first appearance, each item's final text replacing its deltas.
//!
//! CI runs proptest's default 256 cases per property. A long run:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test --release --test fuzz_props
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine;
use proptest::prelude::*;
use serde_json::json;
use twilio_realtime::agent::{Agent, FunctionTool, OutputGuardrail, ToolFailure, Verdict};
use twilio_realtime::call::inbound::{InboundAudio, InboundConfig};
use twilio_realtime::call::playback::MarkName;
use twilio_realtime::call::{CallConfig, CallCore, Command, Input, Output};
use twilio_realtime::events::SessionEvent;
use twilio_realtime::proto::mulaw;
use twilio_realtime::proto::realtime::{AudioDeltaFrame, ClientEvent, ServerEvent};
use twilio_realtime::proto::twilio::{MediaFrame, TwilioCommand, TwilioMessage};
use twilio_realtime::CallError;

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

/// `media` frames whose fields (top level and inside `media`) take random types and values,
/// some left out: numbers of every sign and size, strings with escapes, nulls, objects.
fn mediaish() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        "[0-9]{1,22}".prop_map(|s| json!(s)),
        "[a-zA-Z0-9+/=]{0,16}".prop_map(|s| json!(s)),
        Just(json!("//8=")),
        Just(json!("/w==")),
        Just(json!({})),
        Just(json!(["//8="])),
    ];
    let maybe = prop::option::weighted(0.8, value);
    (
        prop_oneof![Just(json!("media")), Just(json!("mark")), Just(json!(7))],
        [maybe.clone(), maybe.clone(), maybe.clone()],
        [maybe.clone(), maybe.clone(), maybe.clone(), maybe],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(event, [seq, sid, media_value], [track, chunk, ts, payload], has_media, escaped)| {
                let mut m = serde_json::Map::new();
                for (k, v) in [
                    ("track", track),
                    ("chunk", chunk),
                    ("timestamp", ts),
                    ("payload", payload),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                let mut o = serde_json::Map::new();
                o.insert("event".into(), event);
                for (k, v) in [("sequenceNumber", seq), ("streamSid", sid)] {
                    if let Some(v) = v {
                        o.insert(k.into(), v);
                    }
                }
                if has_media {
                    o.insert("media".into(), serde_json::Value::Object(m));
                } else if let Some(v) = media_value {
                    o.insert("media".into(), v);
                }
                let text = serde_json::Value::Object(o).to_string();
                // JSON may escape '/' in strings; the borrowed parse must still read it.
                if escaped {
                    text.replace('/', "\\/")
                } else {
                    text
                }
            },
        )
}

/// `response.output_audio.delta` events whose fields take random types and values, some left
/// out, some of another event type.
fn deltaish() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9+/=_]{0,16}".prop_map(|s| json!(s)),
        Just(json!("//8=")),
        Just(json!("/w==")),
        Just(json!({})),
        Just(json!(["//8="])),
    ];
    let maybe = prop::option::weighted(0.8, value);
    (
        prop_oneof![
            Just(json!("response.output_audio.delta")),
            Just(json!("response.output_audio.done")),
            Just(json!(7)),
        ],
        [maybe.clone(), maybe.clone(), maybe.clone()],
        [maybe.clone(), maybe.clone(), maybe],
        any::<bool>(),
    )
        .prop_map(|(ty, [eid, rid, iid], [oi, ci, delta], escaped)| {
            let mut o = serde_json::Map::new();
            o.insert("type".into(), ty);
            for (k, v) in [
                ("event_id", eid),
                ("response_id", rid),
                ("item_id", iid),
                ("output_index", oi),
                ("content_index", ci),
                ("delta", delta),
            ] {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            }
            let text = serde_json::Value::Object(o).to_string();
            if escaped {
                text.replace('/', "\\/")
            } else {
                text
            }
        })
}

proptest! {
    /// The borrowed one-pass parse the agent-audio lane uses accepts exactly the frames the
    /// full parse reads as `response.output_audio.delta`, with the same fields.
    #[test]
    fn delta_fast_path_agrees_with_the_full_parse(text in prop_oneof![deltaish(), objectish(), jsonish()]) {
        let fast = AudioDeltaFrame::parse(&text);
        match ServerEvent::parse(&text) {
            Ok(ServerEvent::OutputAudioDelta(d)) => {
                let fast = fast.expect("the fast path refused a delta the full parse took");
                prop_assert_eq!(fast.response_id(), d.response_id.as_str());
                prop_assert_eq!(fast.item_id(), d.item_id.as_str());
                prop_assert_eq!(fast.content_index(), d.content_index);
                prop_assert_eq!(fast.delta(), d.delta.as_str());
            }
            _ => prop_assert!(fast.is_none(), "the fast path took what the full parse refused"),
        }
    }
}

proptest! {
    /// The borrowed one-pass parse the caller-audio lane uses accepts exactly the frames the
    /// full parse reads as `media`, with the same payload and timestamp.
    #[test]
    fn media_fast_path_agrees_with_the_full_parse(text in prop_oneof![mediaish(), objectish(), jsonish()]) {
        let fast = MediaFrame::parse(&text);
        match TwilioMessage::parse(&text) {
            Ok(TwilioMessage::Media(m)) => {
                let fast = fast.expect("the fast path refused a media frame the full parse took");
                prop_assert_eq!(fast.payload(), m.media.payload.as_str());
                prop_assert_eq!(fast.timestamp_ms(), m.media.timestamp_ms());
            }
            _ => prop_assert!(fast.is_none(), "the fast path took what the full parse refused"),
        }
    }
}

proptest! {
    #[test]
    fn twilio_parser_never_panics(text in prop_oneof![jsonish(), objectish()]) {
        if let Ok(TwilioMessage::Media(m)) = TwilioMessage::parse(&text) {
            prop_assert!(mulaw::validate_base64(&m.media.payload).is_ok());
        }
        let _ = twilio_realtime::proto::twilio::TwilioCommand::parse(&text);
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

/// A `media` timestamp: the next one Twilio would send moved by some ms (jitter, a gap, a
/// step back), any `u64`, one near `u64::MAX`, or none (it did not parse).
#[derive(Debug, Clone)]
enum Ts {
    Next(i32),
    Any(u64),
    NearMax(u16),
    Missing,
}

fn ts() -> impl Strategy<Value = Ts> {
    prop_oneof![
        40 => (-3..3i32).prop_map(Ts::Next),
        8 => (-60_000..60_000i32).prop_map(Ts::Next),
        4 => any::<u64>().prop_map(Ts::Any),
        2 => any::<u16>().prop_map(Ts::NearMax),
        1 => Just(Ts::Missing),
    ]
}

/// Caller frame sizes in µ-law bytes (20 ms is 160).
const FRAME_SIZES: [usize; 4] = [160, 160, 8, 1600];

/// Agent text, often with multibyte characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("hello forbidden words".to_owned()),
        "[a-zé🎉— ]{0,8}",
        any::<String>(),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Start(usize),
    /// A caller frame of one of [`FRAME_SIZES`] bytes with this timestamp.
    Media(Ts, usize),
    EchoMark(usize),
    BogusMark(String),
    Stop,
    Dtmf,
    SessionCreated,
    ResponseCreated(u8),
    ItemAdded(u8, u8),
    Delta(u8, u8, u16),
    AudioDone(u8, u8),
    Transcript(u8, u8, bool, String),
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
        // 0 and 1: the two stream ids; 2: the first id in a format the bridge refuses.
        40 => (0..2usize).prop_map(Step::Start),
        3 => Just(Step::Start(2)),
        64 => (ts(), 0..FRAME_SIZES.len()).prop_map(|(t, n)| Step::Media(t, n)),
        48 => any::<usize>().prop_map(Step::EchoMark),
        8 => "[a-z0-9:_]{0,20}".prop_map(Step::BogusMark),
        1 => Just(Step::Stop),
        8 => Just(Step::Dtmf),
        16 => Just(Step::SessionCreated),
        24 => (0..3u8).prop_map(Step::ResponseCreated),
        24 => (0..3u8, 0..4u8).prop_map(|(r, i)| Step::ItemAdded(r, i)),
        80 => (0..3u8, 0..4u8, 1..4000u16).prop_map(|(r, i, n)| Step::Delta(r, i, n)),
        16 => (0..3u8, 0..4u8).prop_map(|(r, i)| Step::AudioDone(r, i)),
        24 => (0..3u8, 0..4u8, any::<bool>(), text())
            .prop_map(|(r, i, d, t)| Step::Transcript(r, i, d, t)),
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

/// What the application should see as a response's text, kept the documented way: per item,
/// in order of first appearance, a final text replacing the item's deltas.
#[derive(Default)]
struct Texts {
    /// item -> (response, order, text)
    items: HashMap<String, (String, u64, String)>,
    seq: u64,
    /// Responses whose `AgentEnd` is due, with the expected text.
    expected: VecDeque<String>,
}

struct World {
    core: CallCore,
    lane: InboundAudio,
    /// The model is ready for caller audio (as the core said).
    ready: bool,
    now: Instant,
    first_media_at: Option<Instant>,
    /// Twilio's clock: the timestamp of the last frame sent.
    last_ts: u64,
    /// Tags of caller frames sent but not yet seen at the model, in order.
    in_flight: VecDeque<u8>,
    next_tag: u8,
    /// Frames that went missing on the way (must be ones the early buffer dropped).
    skipped: u64,
    texts: Texts,
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
        self.core.handle_input(self.now, Input::Model(ev));
    }

    fn twilio(&mut self, v: serde_json::Value) {
        let msg = TwilioMessage::parse(&v.to_string()).expect("generated messages parse");
        self.core.handle_input(self.now, Input::Twilio(msg));
    }

    /// Runs `f` on the lane with a sink that checks every append.
    fn lane(
        &mut self,
        f: impl FnOnce(&mut InboundAudio, &mut dyn FnMut(&str)),
    ) -> Result<(), TestCaseError> {
        let mut appends: Vec<String> = Vec::new();
        f(&mut self.lane, &mut |b64: &str| {
            appends.push(b64.to_owned())
        });
        if !appends.is_empty() {
            prop_assert!(self.ready, "caller audio sent to a model that is not ready");
        }
        for a in appends {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&a)
                .map_err(|e| TestCaseError::fail(format!("append is not base64: {e}")))?;
            let Some(&first) = bytes.first() else {
                continue;
            };
            if first == mulaw::SILENCE {
                prop_assert!(
                    bytes.iter().all(|&b| b == mulaw::SILENCE),
                    "padding is silence"
                );
                prop_assert!(bytes.len() <= 8000, "padding in appends of at most 1 s");
                continue;
            }
            prop_assert!(
                bytes.iter().all(|&b| b == first),
                "a frame arrives byte-exact"
            );
            // In order, at most once: skip the frames the early buffer dropped.
            loop {
                match self.in_flight.pop_front() {
                    Some(t) if t == first => break,
                    Some(_) => self.skipped += 1,
                    None => prop_assert!(false, "frame {first} out of order or twice"),
                }
            }
        }
        Ok(())
    }

    fn media(&mut self, t: &Ts, size: usize) -> Result<(), TestCaseError> {
        let ts = match t {
            Ts::Next(d) => Some(
                self.last_ts
                    .saturating_add(20)
                    .saturating_add_signed(*d as i64),
            ),
            Ts::Any(v) => Some(*v),
            Ts::NearMax(d) => Some(u64::MAX - *d as u64),
            Ts::Missing => None,
        };
        if let Some(ts) = ts {
            self.last_ts = ts;
        }
        // Tags 1..=250: never silence, never 0.
        self.next_tag = self.next_tag % 250 + 1;
        let tag = self.next_tag;
        let payload = base64::engine::general_purpose::STANDARD.encode(vec![tag; size]);
        self.in_flight.push_back(tag);
        self.first_media_at.get_or_insert(self.now);
        let now = self.now;
        self.core.handle_input(now, Input::TwilioActivity);
        self.lane(|lane, sink| lane.on_media(now, &payload, ts, sink))
    }

    fn transcript(&mut self, r: u8, i: u8, done: bool, text: &str) {
        let (resp, item) = (format!("resp_{r}"), format!("item_{i}"));
        let t = &mut self.texts;
        let seq = t.seq;
        let e = t
            .items
            .entry(item.clone())
            .or_insert_with(|| (resp.clone(), seq, String::new()));
        if e.1 == seq {
            t.seq += 1;
        }
        if done {
            e.2.clear();
        }
        e.2.push_str(text);
        let v = if done {
            json!({"type":"response.output_audio_transcript.done","event_id":"e",
                "response_id":resp,"item_id":item,"output_index":0,"content_index":0,
                "transcript":text})
        } else {
            json!({"type":"response.output_audio_transcript.delta","event_id":"e",
                "response_id":resp,"item_id":item,"output_index":0,"content_index":0,
                "delta":text})
        };
        self.model(v);
    }

    fn response_done(&mut self, r: u8, cancelled: bool) {
        let resp = format!("resp_{r}");
        if self.core.ended().is_none() {
            let mut items: Vec<(u64, String)> = Vec::new();
            self.texts.items.retain(|_, (owner, seq, text)| {
                if *owner != resp {
                    return true;
                }
                items.push((*seq, std::mem::take(text)));
                false
            });
            items.sort_by_key(|(seq, _)| *seq);
            self.texts
                .expected
                .push_back(items.into_iter().map(|(_, t)| t).collect());
        }
        self.model(json!({"type":"response.done",
            "event_id":"e","response":{"id":resp,
            "status": if cancelled {"cancelled"} else {"completed"},"output":[]}}));
    }

    fn apply(&mut self, s: &Step) -> Result<(), TestCaseError> {
        let now = self.now;
        let resp = |r: u8| format!("resp_{r}");
        let item = |i: u8| format!("item_{i}");
        match s {
            Step::Start(i) => {
                let (sid, encoding) = match i {
                    2 => (SIDS[0], "audio/l16"),
                    _ => (SIDS[*i], "audio/x-mulaw"),
                };
                let v = json!({"event":"start","streamSid":sid,
                    "start":{"accountSid":"AC1","streamSid":sid,"callSid":"CA1","tracks":["inbound"],
                    "customParameters":{},"mediaFormat":{"encoding":encoding,"sampleRate":8000,"channels":1}}});
                // The Twilio reader tells the lane, then the session thread tells the core.
                if let Ok(TwilioMessage::Start(st)) = TwilioMessage::parse(&v.to_string()) {
                    self.lane.on_start(&st.start.media_format);
                }
                self.twilio(v)
            }
            Step::Media(t, n) => self.media(t, FRAME_SIZES[*n])?,
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
            Step::ResponseCreated(r) => self
                .model(json!({"type":"response.created","event_id":"e",
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
            Step::Transcript(r, i, done, text) => self.transcript(*r, *i, *done, text),
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
            Step::ResponseDone(r, cancelled) => self.response_done(*r, *cancelled),
            Step::SpeechStarted => self.model(json!({"type":"input_audio_buffer.speech_started",
                "event_id":"e","audio_start_ms":100,"item_id":"item_user"})),
            Step::SpeechStopped => self.model(json!({"type":"input_audio_buffer.speech_stopped",
                "event_id":"e","audio_end_ms":900,"item_id":"item_user"})),
            Step::Truncated(i, ms) => self.model(json!({"type":"conversation.item.truncated",
                "event_id":"e","item_id":item(*i),"content_index":0,"audio_end_ms":ms})),
            Step::ModelError(expired) => {
                let code = if *expired {
                    "session_expired"
                } else {
                    "invalid_value"
                };
                self.model(json!({"type":"error","event_id":"e","error":{
                    "type":"invalid_request_error","code":code,"message":"m","param":null,
                    "event_id":null}}))
            }
            Step::Interrupt => self
                .core
                .handle_input(now, Input::Command(Command::Interrupt)),
            Step::SendMessage => self
                .core
                .handle_input(now, Input::Command(Command::SendMessage("hi".into()))),
            Step::ToolDone(i, ok) => {
                if !self.tools.is_empty() {
                    let id = self.tools[i % self.tools.len()].clone();
                    let r = if *ok {
                        Ok("ok".into())
                    } else {
                        Err(ToolFailure::Failed("bad".into()))
                    };
                    self.core.handle_input(
                        now,
                        Input::ToolResult {
                            call_id: id.to_owned(),
                            result: r,
                        },
                    );
                }
            }
            Step::Approve(i) => {
                if !self.tools.is_empty() {
                    let id = self.tools[i % self.tools.len()].clone();
                    self.core
                        .handle_input(now, Input::Command(Command::Approve(id)));
                }
            }
            Step::ModelClosed => self.core.handle_input(
                now,
                Input::ModelClosed {
                    error: CallError::model_closed(None, None),
                },
            ),
            Step::ModelConnected => self.core.handle_input(now, Input::ModelConnected),
            Step::TwilioClosed => self.core.handle_input(
                now,
                Input::TwilioClosed {
                    error: CallError::twilio_gone(None, None),
                },
            ),
            Step::Advance(ms) => {
                self.now += Duration::from_millis(*ms as u64);
                let now = self.now;
                self.core.handle_input(now, Input::Timeout);
                if self.lane.next_deadline().is_some_and(|d| d <= now) {
                    self.lane(|lane, sink| lane.on_timeout(now, sink))?;
                }
            }
        }
        Ok(())
    }

    /// Checks every output against the invariants.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(o) = self.core.poll_output() {
            match o {
                // Wired to the lane as the session wires them.
                Output::ModelReady => {
                    self.ready = true;
                    self.lane(|lane, sink| lane.set_ready(true, sink))?;
                }
                Output::ModelNotReady => {
                    self.ready = false;
                    self.lane(|lane, sink| lane.set_ready(false, sink))?;
                }
                Output::CallerSpeaking(s) => self.lane.set_caller_speaking(s),
                Output::Event(SessionEvent::AgentEnd { text, .. }) => {
                    let expected = self.texts.expected.pop_front();
                    prop_assert_eq!(Some(text), expected, "a response's text, per item");
                }
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
        let stats = self.lane.stats();
        let wall = self
            .first_media_at
            .map_or(Duration::ZERO, |t| self.now.saturating_duration_since(t));
        prop_assert!(
            u128::from(stats.gap_padding_bytes) <= wall.as_millis() * 8,
            "{} bytes of gap padding in {wall:?}",
            stats.gap_padding_bytes
        );
        prop_assert!(
            stats.inactivity_padding_bytes <= stats.frames_in * 8000,
            "one inactivity padding per stall at most"
        );
        prop_assert!(self.skipped <= stats.frames_dropped, "a frame went missing");
        Ok(())
    }
}

proptest! {
    #[test]
    fn call_core_keeps_its_invariants(steps in prop::collection::vec(step(), 1..150)) {
        let now = Instant::now();
        let mut w = World {
            core: CallCore::new(agent(), CallConfig::default(), now),
            // A small early buffer, so that dropping the oldest is exercised too.
            lane: InboundAudio::new({
let mut o = InboundConfig::default();
o.max_buffered_bytes = 4000;
o
}),
            ready: false,
            now,
            first_media_at: None,
            last_ts: 0,
            in_flight: VecDeque::new(),
            next_tag: 0,
            skipped: 0,
            texts: Texts::default(),
            stream_sid: None,
            marks: Vec::new(),
            sent: HashMap::new(),
            tools: Vec::new(),
            truncations: 0,
        };
        for s in &steps {
            if let Step::Start(i) = s {
                // The first start wins; a second one is ignored by the core.
                if w.stream_sid.is_none() && w.core.ended().is_none() && *i < 2 {
                    w.stream_sid = Some(SIDS[*i].to_owned());
                }
            }
            w.apply(s)?;
            w.drain()?;
        }
    }
}
