//! Property tests in place of fuzz targets (they run on stable Rust and in CI, and shrink a
//! failure to a minimal case): the Twilio parser, the model-event parser, and the call core fed
//! arbitrary sequences of its own [`Input`]s, with the caller-audio lane and the agent-audio
//! lane wired as the session wires them: `media` timestamps over the whole `u64` range (jitter,
//! gaps, jumps, clocks that go backwards), transcripts with multibyte characters from
//! interleaved items, runs of one item's audio deltas that take the agent-audio lane.
//!
//! Invariants: nothing panics (debug builds check overflow); a parsed `media` or audio delta
//! always carries valid base64; every frame for Twilio carries the streamSid from `start` (never
//! before it, never empty); every `conversation.item.truncate` claims no more audio than was
//! sent to Twilio for that item; caller frames reach the model only while it is ready, in
//! order, byte-exact, each at most once, and only frames the early buffer dropped go missing;
//! gap padding never exceeds the wall time since the first frame; a response's text is its
//! items' texts in order of first appearance, each item's final text replacing its deltas;
//! audio sent on the agent-audio lane leaves the playback ledger where the lane's chunk marks
//! say; every audio frame for Twilio is followed by its chunk mark, whose offset counts the
//! frame on from the item's last one; in a running call, the echo of a chunk mark moves the
//! ledger's playback position of its item at least to it; the core and the caller-audio lane never ask to be woken
//! again and again at a time they were woken at.
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
use twilio_realtime::call::audio_lane::AudioLane;
use twilio_realtime::call::inbound::{InboundAudio, InboundConfig};
use twilio_realtime::call::playback::MarkName;
use twilio_realtime::call::{CallConfig, CallCore, Command, GuardrailRun, Input, Output};
use twilio_realtime::events::SessionEvent;
use twilio_realtime::io::ws::WsError;
use twilio_realtime::proto::mulaw;
use twilio_realtime::proto::realtime::{AudioDelta, AudioDeltaFrame, ClientEvent, ServerEvent};
use twilio_realtime::proto::twilio::{MediaFrame, TwilioCommand, TwilioMessage};
use twilio_realtime::CallError;

mod common;

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
// The call core on arbitrary sequences of its own inputs
//
// A call is a `Vec<(Duration, Input)>`: the core's own `Input`s, each with the time that
// passed before it. The harness feeds them the way the threaded shell (`session`) does: a
// `media` frame goes to the caller-audio lane on the Twilio reader (it does not wake the
// session thread), echoed chunk marks wait for the session thread's next wake-up and are
// applied then with their arrival time, an audio delta the core granted a lane for goes to
// Twilio without the core (reported later as `AudioLaneSent`), everything else wakes the
// session thread, which first applies what waited, then tells the core what its sockets saw
// (`TwilioActivity`, `ModelActivity`), then the input; and it wakes at every deadline the core
// or the lane asked for. The session answers the core's `ApproveStart` at once, as the call's
// application would (generated per call, see `OnStart`), and holds a model connection that
// opened before a per-call agent was chosen.

/// A generated input that names something the core sent earlier (which the generator cannot
/// know) carries a placeholder, resolved by the harness when it feeds the input:
///
/// - a `mark` echo named `#echo N` echoes the N-th (modulo their number) mark sent to Twilio
///   so far, by the core or on the agent-audio lane; with none sent, Twilio has nothing to
///   echo and the input is skipped;
/// - a tool call id `#tool N` (in `ToolResult`, `Approve`, `Reject`) is the N-th (modulo) call
///   id of the function calls the model made so far; with none, the input is skipped;
/// - a guardrail result whose run's text is `#guardrail N` is the worker of the N-th (modulo)
///   guardrail run the core asked for and nobody answered yet finishing: the run as the core
///   handed it out, with what its guardrails return; with none running, it is skipped.
const ECHO: &str = "#echo ";
/// See [`ECHO`].
const TOOL: &str = "#tool ";
/// See [`ECHO`].
const GUARDRAIL: &str = "#guardrail ";

/// The `N` of a placeholder `{prefix}N` (see [`ECHO`]), if `text` is one.
fn placeholder(text: &str, prefix: &str) -> Option<usize> {
    let n = text.strip_prefix(prefix)?;
    Some(n.parse().expect("placeholders carry a number"))
}

/// Resolves a placeholder `{prefix}N` against `sent` (see [`ECHO`]); any other text is kept.
/// False if there is nothing to resolve it to.
fn resolve(text: &mut String, prefix: &str, sent: &[String]) -> bool {
    let Some(n) = placeholder(text, prefix) else {
        return true;
    };
    match sent.len() {
        0 => false,
        len => {
            *text = sent[n % len].clone();
            true
        }
    }
}

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

fn twilio(v: serde_json::Value) -> Input {
    Input::Twilio(TwilioMessage::parse(&v.to_string()).expect("generated messages parse"))
}

fn model(v: serde_json::Value) -> Input {
    Input::Model(ServerEvent::parse(&v.to_string()).expect("generated events parse"))
}

/// One generated input, the time before it, and for a `media` frame how its timestamp follows
/// the previous frame's (set by [`call`] once the frames are in order).
type Gen = (Duration, Input, Option<Ts>);

/// Inputs at the moment the one before them was fed.
fn now(input: Input) -> Vec<Gen> {
    vec![(Duration::ZERO, input, None)]
}

fn start(sid: &str, encoding: &str) -> Input {
    twilio(json!({"event":"start","streamSid":sid,
        "start":{"accountSid":"AC1","streamSid":sid,"callSid":"CA1","tracks":["inbound"],
        "customParameters":{},"mediaFormat":{"encoding":encoding,"sampleRate":8000,"channels":1}}}))
}

/// A caller frame of `size` bytes, each in 1..=250 (never silence) and from `tag`, so frames
/// with different tags differ.
fn media(tag: u32, size: usize) -> Input {
    let tag = tag.to_le_bytes();
    let bytes: Vec<u8> = (0..size).map(|i| 1 + tag[i % 4] % 250).collect();
    let payload = base64::engine::general_purpose::STANDARD.encode(bytes);
    twilio(json!({"event":"media","streamSid":SIDS[0],
        "media":{"track":"inbound","chunk":"1","timestamp":"0","payload":payload}}))
}

fn resp(r: u8) -> String {
    format!("resp_{r}")
}

fn item(i: u8) -> String {
    format!("item_{i}")
}

fn delta(r: u8, i: u8, bytes: u16) -> Input {
    model(json!({"type":"response.output_audio.delta",
        "event_id":"e","response_id":resp(r),"item_id":item(i),"output_index":0,
        "content_index":0,"delta":common::audio_b64(bytes as usize)}))
}

/// The tool call `#tool n` (see [`ECHO`]).
fn tool(n: u32) -> String {
    format!("{TOOL}{n}")
}

/// What may happen next in a call, with the weights of a busy one: mostly caller audio, agent
/// audio (single deltas and runs of one item's deltas, as the model sends them), echoes and
/// time passing.
fn step() -> impl Strategy<Value = Vec<Gen>> {
    prop_oneof![
        // The two stream ids, and the first in a format the bridge refuses.
        40 => (0..2usize).prop_map(|i| now(start(SIDS[i], "audio/x-mulaw"))),
        3 => Just(()).prop_map(|_| now(start(SIDS[0], "audio/l16"))),
        64 => (ts(), 0..FRAME_SIZES.len(), any::<u32>())
            .prop_map(|(t, n, tag)| vec![(Duration::ZERO, media(tag, FRAME_SIZES[n]), Some(t))]),
        48 => any::<u32>().prop_map(|n| now(twilio(json!({"event":"mark","streamSid":SIDS[0],
            "mark":{"name":format!("{ECHO}{n}")}})))),
        8 => "[a-z0-9:_]{0,20}".prop_map(|name| now(twilio(json!({"event":"mark",
            "streamSid":SIDS[0],"mark":{"name":name}})))),
        1 => Just(()).prop_map(|_| now(twilio(json!({"event":"stop","streamSid":SIDS[0],
            "stop":{"accountSid":"AC1","callSid":"CA1"}})))),
        8 => Just(()).prop_map(|_| now(twilio(json!({"event":"dtmf","streamSid":SIDS[0],
            "dtmf":{"track":"inbound_track","digit":"5"}})))),
        // The model's handshake: created, then the server confirms µ-law (the core is ready
        // only then).
        16 => Just(()).prop_map(|_| {
            let mut v = now(model(json!({"type":"session.created","event_id":"e",
                "session":{"type":"realtime"}})));
            v.extend(now(model(json!({"type":"session.updated","event_id":"e",
                "session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}},
                "output":{"format":{"type":"audio/pcmu"}}}}}))));
            v
        }),
        24 => (0..3u8).prop_map(|r| now(model(json!({"type":"response.created","event_id":"e",
            "response":{"id":resp(r),"status":"in_progress","output":[]}})))),
        24 => (0..3u8, 0..4u8).prop_map(|(r, i)| now(model(json!({
            "type":"response.output_item.added","event_id":"e","response_id":resp(r),
            "output_index":0,"item":{"id":item(i),"type":"message","role":"assistant",
            "content":[]}})))),
        80 => (0..3u8, 0..4u8, 1..4000u16).prop_map(|(r, i, n)| now(delta(r, i, n))),
        // A run of one item's deltas (what the agent-audio lane takes), caller audio between.
        24 => (0..3u8, 0..4u8, prop::collection::vec((1..4000u16, any::<bool>(), any::<u32>()), 2..6))
            .prop_map(|(r, i, run)| {
                let mut v = Vec::new();
                for (n, frame, tag) in run {
                    v.extend(now(delta(r, i, n)));
                    if frame {
                        v.push((Duration::ZERO, media(tag, 160), Some(Ts::Next(0))));
                    }
                }
                v
            }),
        16 => (0..3u8, 0..4u8).prop_map(|(r, i)| now(model(json!({
            "type":"response.output_audio.done","event_id":"e","response_id":resp(r),
            "item_id":item(i),"output_index":0,"content_index":0})))),
        24 => (0..3u8, 0..4u8, any::<bool>(), text()).prop_map(|(r, i, done, text)| {
            let (ty, field) = if done {
                ("response.output_audio_transcript.done", "transcript")
            } else {
                ("response.output_audio_transcript.delta", "delta")
            };
            let mut v = json!({"type":ty,"event_id":"e","response_id":resp(r),
                "item_id":item(i),"output_index":0,"content_index":0});
            v[field] = json!(text);
            now(model(v))
        }),
        8 => (0..3u8, any::<bool>(), any::<u32>()).prop_map(|(r, known, id)| {
            let name = if known { "get_weather" } else { "nope" };
            now(model(json!({"type":"response.output_item.done","event_id":"e",
                "response_id":resp(r),"output_index":0,
                "item":{"id":format!("fc_{id}"),"type":"function_call","status":"completed",
                "name":name,"call_id":format!("call_{id}"),
                "arguments":"{\"location\":\"Paris\"}"}})))
        }),
        24 => (0..3u8, any::<bool>()).prop_map(|(r, cancelled)| now(model(json!({
            "type":"response.done","event_id":"e","response":{"id":resp(r),
            "status": if cancelled {"cancelled"} else {"completed"},"output":[]}})))),
        24 => Just(()).prop_map(|_| now(model(json!({"type":"input_audio_buffer.speech_started",
            "event_id":"e","audio_start_ms":100,"item_id":"item_user"})))),
        16 => Just(()).prop_map(|_| now(model(json!({"type":"input_audio_buffer.speech_stopped",
            "event_id":"e","audio_end_ms":900,"item_id":"item_user"})))),
        8 => (0..4u8, any::<u32>()).prop_map(|(i, ms)| now(model(json!({
            "type":"conversation.item.truncated","event_id":"e","item_id":item(i),
            "content_index":0,"audio_end_ms":ms})))),
        8 => any::<bool>().prop_map(|expired| {
            let code = if expired { "session_expired" } else { "invalid_value" };
            now(model(json!({"type":"error","event_id":"e","error":{
                "type":"invalid_request_error","code":code,"message":"m","param":null,
                "event_id":null}})))
        }),
        16 => Just(()).prop_map(|_| now(Input::Command(Command::Interrupt))),
        8 => Just(()).prop_map(|_| now(Input::Command(Command::SendMessage("hi".into())))),
        4 => Just(()).prop_map(|_| now(Input::Command(Command::CreateResponse(Default::default())))),
        1 => Just(()).prop_map(|_| now(Input::Command(Command::HangUp))),
        8 => (any::<u32>(), any::<bool>()).prop_map(|(n, ok)| now(Input::ToolResult {
            call_id: tool(n),
            result: if ok { Ok("ok".into()) } else { Err(ToolFailure::Failed("bad".into())) },
        })),
        8 => any::<u32>().prop_map(|n| now(Input::Command(Command::Approve(tool(n))))),
        4 => any::<u32>().prop_map(|n| now(Input::Command(Command::Reject {
            call_id: tool(n),
            message: None,
        }))),
        8 => any::<u32>().prop_map(|n| now(Input::GuardrailResult {
            run: GuardrailRun { id: 0, text: format!("{GUARDRAIL}{n}"), guardrails: Vec::new() },
            trip: None,
        })),
        2 => Just(()).prop_map(|_| now(Input::Command(Command::UpdateAgent(agent())))),
        2 => Just(()).prop_map(|_| now(Input::Command(Command::CommitAudio))),
        2 => prop_oneof![
            Just(r#"{"type":"response.cancel"}"#),
            Just(r#"{"type":"session.update","session":{"type":"realtime","instructions":"x"}}"#),
            Just(r#"{"type":"session.update","session":{"type":"realtime","audio":{"output":{"format":{"type":"audio/pcm","rate":24000}}}}}"#),
            Just("[1]"),
        ].prop_map(|raw| now(Input::Command(Command::SendRaw(raw.into())))),
        // Ends the call at once, one way or another.
        1 => prop_oneof![
            Just(()).prop_map(|_| Input::Command(Command::Close)),
            any::<u64>().prop_map(|messages| Input::TwilioOverBudget { messages }),
            Just(()).prop_map(|_| Input::Panicked { what: "a reader".into() }),
            (400..600u16).prop_map(|status| Input::ModelConnectFailed {
                error: CallError::model_connect(WsError::Rejected { status }),
            }),
        ].prop_map(now),
        1 => Just(()).prop_map(|_| now(Input::ModelClosed {
            error: CallError::model_closed(None, None),
        })),
        8 => Just(()).prop_map(|_| now(Input::ModelConnected)),
        1 => Just(()).prop_map(|_| now(Input::TwilioClosed {
            error: CallError::twilio_gone(None, None),
        })),
        40 => (0..60u64).prop_map(|ms| vec![(Duration::from_millis(ms), Input::Timeout, None)]),
        8 => (0..3000u64).prop_map(|ms| vec![(Duration::from_millis(ms), Input::Timeout, None)]),
    ]
}

/// What the application does with a call's first `start` (the session thread runs it when the
/// core asks, [`Output::ApproveStart`], and answers at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnStart {
    /// Nothing to check: approved.
    Approve,
    /// A per-call agent factory (`AgentSource::per_call`) picks the agent: approved with it.
    PerCallAgent,
    /// A start check (then the model connects only once it passed) that passes.
    CheckPasses,
    /// A start check that refuses the stream.
    CheckRefuses,
}

fn on_start() -> impl Strategy<Value = OnStart> {
    prop_oneof![
        4 => Just(OnStart::Approve),
        2 => Just(OnStart::PerCallAgent),
        2 => Just(OnStart::CheckPasses),
        1 => Just(OnStart::CheckRefuses),
    ]
}

/// A whole call: the steps in order, each `media` timestamp set from the frame before it.
fn call() -> impl Strategy<Value = Vec<(Duration, Input)>> {
    prop::collection::vec(step(), 1..150).prop_map(|steps| {
        // Twilio's clock: the timestamp of the last frame.
        let mut last = 0u64;
        let mut call = Vec::new();
        for (after, mut input, ts) in steps.into_iter().flatten() {
            if let (Some(t), Input::Twilio(TwilioMessage::Media(m))) = (ts, &mut input) {
                let ts = match t {
                    Ts::Next(d) => Some(last.saturating_add(20).saturating_add_signed(d.into())),
                    Ts::Any(v) => Some(v),
                    Ts::NearMax(d) => Some(u64::MAX - u64::from(d)),
                    Ts::Missing => None,
                };
                last = ts.unwrap_or(last);
                m.media.timestamp = ts.map(|t| t.to_string());
            }
            call.push((after, input));
        }
        call
    })
}

fn agent() -> Agent {
    let careful = FunctionTool::new("refund", "Refund", json!({"type":"object"}), |_| {
        Ok("done".into())
    })
    .needs_approval(true);
    let billing = Agent::new("Billing", "Billing.");
    Agent::new("Front", "Calls.")
        .tool(common::weather_tool())
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

impl Texts {
    fn text(&mut self, resp: &str, item: &str, text: &str, done: bool) {
        let seq = self.seq;
        let e = self
            .items
            .entry(item.to_owned())
            .or_insert_with(|| (resp.to_owned(), seq, String::new()));
        if e.1 == seq {
            self.seq += 1;
        }
        if done {
            e.2.clear();
        }
        e.2.push_str(text);
    }

    fn response_done(&mut self, resp: &str) {
        let mut items: Vec<(u64, String)> = Vec::new();
        self.items.retain(|_, (owner, seq, text)| {
            if owner != resp {
                return true;
            }
            items.push((*seq, std::mem::take(text)));
            false
        });
        items.sort_by_key(|(seq, _)| *seq);
        self.expected
            .push_back(items.into_iter().map(|(_, t)| t).collect());
    }
}

/// Echoed chunk marks the Twilio reader lets wait before it wakes the session thread anyway
/// (`session::MAX_DEFERRED_MARKS`).
const MAX_DEFERRED_MARKS: usize = 64;
/// Chunks the agent-audio lane sends before it leaves deltas to the session thread again
/// (`session::MAX_LANE_CHUNKS`).
const MAX_LANE_CHUNKS: usize = 64;
/// Wake-ups at deadlines between two inputs after which the core is taken to busy-loop.
const MAX_WAKES: usize = 10_000;

/// Why the session thread wakes (`session::ShellMsg`, or its deadline).
enum Wake {
    Input(Box<Input>),
    /// Deferred marks are waiting and one of them matters now.
    Marks,
    Deadline,
}

/// The core, its caller-audio lane and its agent-audio lane wired as the threaded shell wires
/// them (see the section comment), and what the checks keep.
struct World {
    core: CallCore,
    lane: InboundAudio,
    now: Instant,
    /// When the Twilio socket last received a frame (it opened at the call's start).
    twilio_rx: Instant,
    /// When the model socket last received a frame, while one is open.
    model_rx: Option<Instant>,
    /// Echoed marks waiting for the session thread, with when each arrived.
    deferred: Vec<(Instant, TwilioMessage)>,
    /// The agent-audio lane the core granted, and the chunks sent on it not yet reported.
    grant: Option<AudioLane>,
    lane_chunks: Vec<(Instant, u64)>,
    /// The model is ready for caller audio (as the core said).
    ready: bool,
    first_media_at: Option<Instant>,
    /// Caller frames sent but not yet seen at the model, in order.
    in_flight: VecDeque<String>,
    /// Frames that went missing on the way (must be ones the early buffer dropped).
    skipped: u64,
    texts: Texts,
    stream_sid: Option<String>,
    /// Every mark sent to Twilio, in order.
    marks: Vec<String>,
    /// Bytes of each (item, content index) sent to Twilio, from the ledger marks.
    sent: HashMap<String, u64>,
    /// The bytes of the last audio frame for Twilio, until its chunk mark follows it.
    unmarked: Option<u64>,
    /// The offset of each (generation, item, content index)'s last chunk mark, until its done
    /// mark is echoed (the item leaves the ledger).
    offsets: HashMap<(u64, String, u32), u64>,
    /// Call ids of the model's function calls.
    tools: Vec<String>,
    /// Guardrail runs the core asked for that no worker answered yet.
    guardrails: Vec<GuardrailRun>,
    on_start: OnStart,
    /// The core asked about a `start` and was answered.
    start_answered: bool,
    /// A model connection that opened before the per-call agent was chosen: the session holds
    /// it unread until then, so what the model sends meanwhile waits (in its socket).
    held_model: Option<Vec<Input>>,
    /// Inputs the held connection's reader delivers once it runs, before the next generated
    /// input.
    replay: VecDeque<Input>,
}

impl World {
    fn new(now: Instant, on_start: OnStart) -> World {
        // A small early buffer, so that dropping the oldest is exercised too.
        let mut inbound = InboundConfig::default();
        inbound.max_buffered_bytes = 4000;
        // As the session configures a Twilio call's core.
        let mut config = CallConfig::default();
        config.approve_start = true;
        config.connect_model_on_start =
            matches!(on_start, OnStart::CheckPasses | OnStart::CheckRefuses);
        World {
            core: CallCore::new(agent(), config, now),
            lane: InboundAudio::new(inbound),
            now,
            twilio_rx: now,
            model_rx: None,
            deferred: Vec::new(),
            grant: None,
            lane_chunks: Vec::new(),
            ready: false,
            first_media_at: None,
            in_flight: VecDeque::new(),
            skipped: 0,
            texts: Texts::default(),
            stream_sid: None,
            marks: Vec::new(),
            sent: HashMap::new(),
            unmarked: None,
            offsets: HashMap::new(),
            tools: Vec::new(),
            guardrails: Vec::new(),
            on_start,
            start_answered: false,
            held_model: None,
            replay: VecDeque::new(),
        }
    }

    /// Feeds a whole call, then what a held model connection delivers after it.
    fn run(&mut self, call: Vec<(Duration, Input)>) -> Result<(), TestCaseError> {
        // What the core asked for before anything happened (the model connection).
        self.drain()?;
        for (after, input) in call {
            self.feed(after, input)?;
            while let Some(input) = self.replay.pop_front() {
                self.feed(Duration::ZERO, input)?;
            }
        }
        Ok(())
    }

    /// Feeds one generated input `after` the one before, as the shell's threads would.
    fn feed(&mut self, after: Duration, input: Input) -> Result<(), TestCaseError> {
        self.advance(after)?;
        let now = self.now;
        match input {
            Input::Twilio(msg) => {
                self.twilio_rx = now;
                match msg {
                    // Caller audio stays on the Twilio reader.
                    TwilioMessage::Media(m) => {
                        self.in_flight.push_back(m.media.payload.clone());
                        self.first_media_at.get_or_insert(now);
                        let ts = m.media.timestamp_ms();
                        self.caller_audio(|lane, sink| {
                            lane.on_media(now, &m.media.payload, ts, sink)
                        })
                    }
                    TwilioMessage::Mark(mut m) => {
                        if !resolve(&mut m.mark.name, ECHO, &self.marks) {
                            return Ok(());
                        }
                        // Chunk marks wait; any other mark wakes the session thread now.
                        let urgent = !CallCore::echo_can_wait(&m.mark.name);
                        self.deferred.push((now, TwilioMessage::Mark(m)));
                        if urgent || self.deferred.len() >= MAX_DEFERRED_MARKS {
                            self.wake(Wake::Marks)?;
                        }
                        Ok(())
                    }
                    TwilioMessage::Start(s) => {
                        // The reader tells the lane, then the session thread tells the core.
                        self.lane.on_start(&s.start.media_format);
                        self.deliver(Input::Twilio(TwilioMessage::Start(s)))
                    }
                    msg => self.deliver(Input::Twilio(msg)),
                }
            }
            input @ (Input::Model(_) | Input::ModelClosed { .. }) if self.held_model.is_some() => {
                if let Some(held) = &mut self.held_model {
                    held.push(input);
                }
                Ok(())
            }
            Input::Model(ev) => {
                self.model_rx = Some(now);
                if let ServerEvent::OutputAudioDelta(d) = &ev {
                    if self.lane_send(d)? {
                        return Ok(());
                    }
                }
                if let ServerEvent::OutputItemDone(e) = &ev {
                    if let Some(id) = &e.item.call_id {
                        self.tools.push(id.clone());
                    }
                }
                self.deliver(Input::Model(ev))
            }
            // The session drops a connection that opens after the call ended.
            Input::ModelConnected if self.core.ended().is_some() => Ok(()),
            Input::ModelConnected
                if self.on_start == OnStart::PerCallAgent && !self.start_answered =>
            {
                self.held_model = Some(Vec::new());
                Ok(())
            }
            Input::ModelConnected => {
                self.model_rx = Some(now);
                self.deliver(Input::ModelConnected)
            }
            Input::ToolResult {
                mut call_id,
                result,
            } => {
                if !resolve(&mut call_id, TOOL, &self.tools) {
                    return Ok(());
                }
                self.deliver(Input::ToolResult { call_id, result })
            }
            Input::Command(Command::Approve(mut call_id)) => {
                if !resolve(&mut call_id, TOOL, &self.tools) {
                    return Ok(());
                }
                self.deliver(Input::Command(Command::Approve(call_id)))
            }
            Input::Command(Command::Reject {
                mut call_id,
                message,
            }) => {
                if !resolve(&mut call_id, TOOL, &self.tools) {
                    return Ok(());
                }
                let c = Command::Reject { call_id, message };
                self.deliver(Input::Command(c))
            }
            Input::GuardrailResult { run, .. } => {
                let Some(n) = placeholder(&run.text, GUARDRAIL) else {
                    return Err(TestCaseError::fail("guardrail results are placeholders"));
                };
                if self.guardrails.is_empty() {
                    return Ok(());
                }
                let run = self.guardrails.remove(n % self.guardrails.len());
                let trip = run.run();
                self.deliver(Input::GuardrailResult { run, trip })
            }
            Input::Timeout => self.wake(Wake::Deadline),
            input => self.deliver(input),
        }
    }

    /// Lets time pass up to `after` from now, waking the session thread at every deadline the
    /// core or the caller-audio lane set on the way.
    fn advance(&mut self, after: Duration) -> Result<(), TestCaseError> {
        let to = self.now + after;
        for _ in 0..MAX_WAKES {
            let due = [self.core.next_deadline(), self.lane.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            match due {
                Some(d) if d <= to => {
                    self.now = self.now.max(d);
                    self.wake(Wake::Deadline)?;
                }
                _ => {
                    self.now = to;
                    return Ok(());
                }
            }
        }
        Err(TestCaseError::fail(
            "the core or the lane keeps asking for a wake-up it has had",
        ))
    }

    /// A delta the model reader sends to Twilio itself on the granted lane (see
    /// `session::AgentLane`); false if it goes to the session thread.
    fn lane_send(&mut self, d: &AudioDelta) -> Result<bool, TestCaseError> {
        let Some(lane) = &mut self.grant else {
            return Ok(false);
        };
        if self.lane_chunks.len() >= MAX_LANE_CHUNKS
            || d.delta.is_empty()
            || !lane.matches(&d.response_id, &d.item_id, d.content_index)
        {
            return Ok(false);
        }
        let bytes = mulaw::base64_decoded_len(&d.delta) as u64;
        self.lane_chunks.push((self.now, bytes));
        let stream_sid = lane.stream_sid().to_owned();
        let name = lane.chunk(bytes);
        self.for_twilio(&TwilioCommand::Media {
            stream_sid: stream_sid.clone(),
            payload: d.delta.clone(),
        })?;
        self.for_twilio(&TwilioCommand::Mark { stream_sid, name })?;
        Ok(true)
    }

    /// The session thread wakes for `input` (a message from a socket reader, a worker or the
    /// application).
    fn deliver(&mut self, input: Input) -> Result<(), TestCaseError> {
        self.wake(Wake::Input(Box::new(input)))
    }

    /// One wake-up of the session thread (`session::Shell::run_loop`).
    fn wake(&mut self, why: Wake) -> Result<(), TestCaseError> {
        // The lane closes first; its chunks are recorded, then the marks that waited.
        let lane = self.grant.take();
        let deferred = std::mem::take(&mut self.deferred);
        let mut echoed = Vec::new();
        let mut finished = Vec::new();
        for (_, mark) in &deferred {
            self.before_core(mark);
            let TwilioMessage::Mark(m) = mark else {
                continue;
            };
            match MarkName::parse(&m.mark.name) {
                Some(MarkName::Chunk {
                    generation,
                    content_index,
                    offset,
                    item_id,
                }) => echoed.push((generation, content_index, offset, item_id.to_owned())),
                Some(MarkName::Done {
                    generation,
                    content_index,
                    item_id,
                }) => finished.push((generation, content_index, item_id.to_owned())),
                _ => {}
            }
        }
        self.core.catch_up(self.lane_chunks.drain(..), deferred);
        // In a call still running, playback reached every chunk echoed for audio the ledger
        // holds.
        let ledger = self.core.ledger();
        let running = self.core.ended().is_none();
        for (generation, content_index, offset, item_id) in echoed.into_iter().filter(|_| running) {
            let entry = ledger
                .entries()
                .iter()
                .find(|e| e.item_id == item_id && e.content_index == content_index);
            if let (true, Some(e)) = (generation == ledger.generation(), entry) {
                prop_assert!(
                    e.sent < offset || e.acked >= offset,
                    "the echo of {item_id} at {offset} was lost: {e:?}"
                );
            }
        }
        if let Some(lane) = lane {
            // The ledger now holds what the lane's last mark says was sent of the item, unless
            // an echo of the item's done mark took the item out of it.
            let mut probe = lane.clone();
            let Some(MarkName::Chunk {
                generation, offset, ..
            }) = MarkName::parse(&probe.chunk(0))
            else {
                unreachable!("a lane names chunk marks");
            };
            let done = (generation, lane.content_index(), lane.item_id().to_owned());
            let kept = self
                .core
                .ledger()
                .entries()
                .iter()
                .find(|e| e.item_id == lane.item_id() && e.content_index == lane.content_index())
                .map(|e| e.sent);
            if !finished.contains(&done) {
                prop_assert_eq!(
                    kept,
                    Some(offset),
                    "the ledger lost count of the lane's audio"
                );
            }
        }
        self.core
            .handle_input(self.twilio_rx, Input::TwilioActivity);
        if let Some(at) = self.model_rx {
            self.core.handle_input(at, Input::ModelActivity);
        }
        let now = self.now;
        match why {
            Wake::Input(input) => match *input {
                Input::Twilio(msg) => {
                    self.before_core(&msg);
                    self.core.handle_input(now, Input::Twilio(msg));
                }
                input => {
                    self.texts_before_core(&input);
                    self.core.handle_input(now, input);
                }
            },
            Wake::Marks => {}
            Wake::Deadline => {
                self.core.handle_input(now, Input::Timeout);
                self.caller_audio(|lane, sink| lane.on_timeout(now, sink))?;
            }
        }
        self.drain()
    }

    /// What the checks note of a Twilio message just before the core takes it.
    fn before_core(&mut self, msg: &TwilioMessage) {
        match msg {
            // The first start wins (a second one is ignored by the core); one in another format
            // ends the call before any frame.
            TwilioMessage::Start(s)
                if self.stream_sid.is_none()
                    && self.core.ended().is_none()
                    && s.start.media_format.is_mulaw_8k_mono() =>
            {
                self.stream_sid = Some(s.stream_sid.clone());
            }
            TwilioMessage::Mark(m) => {
                if let Some(MarkName::Done {
                    generation,
                    content_index,
                    item_id,
                }) = MarkName::parse(&m.mark.name)
                {
                    self.offsets
                        .remove(&(generation, item_id.to_owned(), content_index));
                }
            }
            _ => {}
        }
    }

    /// What the text check notes of a model event just before the core takes it.
    fn texts_before_core(&mut self, input: &Input) {
        match input {
            Input::Model(ServerEvent::OutputAudioTranscriptDelta(d)) => {
                self.texts.text(&d.response_id, &d.item_id, &d.delta, false)
            }
            Input::Model(ServerEvent::OutputAudioTranscriptDone(d)) => {
                self.texts
                    .text(&d.response_id, &d.item_id, &d.transcript, true)
            }
            Input::Model(ServerEvent::ResponseDone(e)) if self.core.ended().is_none() => {
                self.texts.response_done(&e.response.id)
            }
            _ => {}
        }
    }

    /// Runs `f` on the caller-audio lane with a sink that checks every append.
    fn caller_audio(
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
            if bytes.first() == Some(&mulaw::SILENCE) {
                prop_assert!(
                    bytes.iter().all(|&b| b == mulaw::SILENCE),
                    "padding is silence"
                );
                prop_assert!(bytes.len() <= 8000, "padding in appends of at most 1 s");
                continue;
            }
            // In order, byte-exact, at most once: skip the frames the early buffer dropped.
            loop {
                match self.in_flight.pop_front() {
                    Some(f) if f == a => break,
                    Some(_) => self.skipped += 1,
                    None => prop_assert!(false, "a frame out of order, twice or changed: {a}"),
                }
            }
        }
        Ok(())
    }

    /// Checks a frame for Twilio, from the core or the agent-audio lane.
    fn for_twilio(&mut self, cmd: &TwilioCommand) -> Result<(), TestCaseError> {
        let sid = match cmd {
            TwilioCommand::Media { stream_sid, .. }
            | TwilioCommand::Mark { stream_sid, .. }
            | TwilioCommand::Clear { stream_sid } => stream_sid.clone(),
            _ => String::new(), // a new kind of frame: must carry a sid too
        };
        prop_assert!(!sid.is_empty(), "empty streamSid: {cmd:?}");
        prop_assert_eq!(Some(&sid), self.stream_sid.as_ref(), "frame before start");
        match cmd {
            TwilioCommand::Media { payload, .. } => {
                prop_assert!(
                    self.unmarked.is_none(),
                    "an audio frame without its chunk mark"
                );
                self.unmarked = Some(mulaw::base64_decoded_len(payload) as u64);
            }
            TwilioCommand::Mark { name, .. } => {
                let chunk = MarkName::parse(name);
                if let Some(MarkName::Chunk {
                    generation,
                    content_index,
                    offset,
                    item_id,
                }) = chunk
                {
                    // Each chunk mark counts its frame's bytes on from the item's last one.
                    let Some(bytes) = self.unmarked.take() else {
                        return Err(TestCaseError::fail(format!(
                            "a chunk mark without audio: {name}"
                        )));
                    };
                    let last = self
                        .offsets
                        .entry((generation, item_id.to_owned(), content_index))
                        .or_default();
                    prop_assert_eq!(
                        offset,
                        *last + bytes,
                        "chunk mark {} after {} bytes",
                        name,
                        bytes
                    );
                    *last = offset;
                    let v = self
                        .sent
                        .entry(format!("{item_id}/{content_index}"))
                        .or_default();
                    *v = (*v).max(offset);
                } else {
                    prop_assert!(
                        self.unmarked.is_none(),
                        "an audio frame without its chunk mark"
                    );
                }
                self.marks.push(name.clone());
            }
            _ => prop_assert!(
                self.unmarked.is_none(),
                "an audio frame without its chunk mark"
            ),
        }
        Ok(())
    }

    /// The session thread answers the core's `ApproveStart` at once (`Shell::approve_start`).
    fn approve_start(&mut self) {
        self.start_answered = true;
        let now = self.now;
        let answer = match self.on_start {
            OnStart::CheckRefuses => {
                self.held_model = None;
                Input::Rejected {
                    why: "the start check refused".into(),
                }
            }
            OnStart::PerCallAgent => Input::StartApproved {
                agent: Some(agent()),
            },
            OnStart::Approve | OnStart::CheckPasses => Input::StartApproved { agent: None },
        };
        self.core.handle_input(now, answer);
        if let Some(held) = self.held_model.take() {
            // The held connection is taken into use; its reader starts reading.
            self.model_rx = Some(now);
            self.core.handle_input(now, Input::ModelConnected);
            self.replay.extend(held);
        }
    }

    /// Performs the core's outputs as the shell does, checking each against the invariants.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        let mut granted = None;
        let mut ended = false;
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::ModelReady => {
                    self.ready = true;
                    self.caller_audio(|lane, sink| lane.set_ready(true, sink))?;
                }
                Output::ModelNotReady => {
                    self.ready = false;
                    self.caller_audio(|lane, sink| lane.set_ready(false, sink))?;
                }
                Output::CallerSpeaking(s) => self.lane.set_caller_speaking(s),
                Output::Event(SessionEvent::AgentEnd { text, .. }) => {
                    let expected = self.texts.expected.pop_front();
                    prop_assert_eq!(Some(text), expected, "a response's text, per item");
                }
                Output::Event(SessionEvent::Closed { .. }) => ended = true,
                Output::Twilio(cmd) => self.for_twilio(&cmd)?,
                Output::Model(ClientEvent::ConversationItemTruncate {
                    item_id,
                    content_index,
                    audio_end_ms,
                    ..
                }) => {
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
                // The shell drops the connection (and its socket's clock) for a new one.
                Output::ConnectModel => self.model_rx = None,
                Output::RunGuardrails(run) => self.guardrails.push(run),
                Output::ApproveStart(_) => self.approve_start(),
                // Opened once this wake-up's outputs are performed.
                Output::AudioLane(lane) => granted = Some(lane),
                _ => {}
            }
        }
        if !ended {
            self.grant = granted;
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
    fn call_core_keeps_its_invariants(on_start in on_start(), call in call()) {
        World::new(Instant::now(), on_start).run(call)?;
    }
}
