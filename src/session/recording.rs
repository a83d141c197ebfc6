//! Call recordings: one call's timeline as a JSON-lines file, to look at afterwards (the
//! `call_report` example turns one into a picture and a one-screen summary).
//!
//! Opt in per session with [`crate::session::SessionConfig::recording`] (the example server
//! does it for every call when `CALL_RECORDING_DIR` is set). A recording holds what the
//! bridge saw and decided, each with the time since the session started:
//!
//! * Twilio's messages without payloads: `connected`, `start` (call and stream ids, tracks,
//!   the *names* of the custom parameters, never their values: one of them may be a stream
//!   token), echoed marks, `stop`, a key press (without the digit: it may be a PIN), and the
//!   caller's audio as one loudness figure per 100 ms ([`Record::CallerAudio`]).
//! * What the bridge sent Twilio: per agent audio chunk its length and loudness
//!   ([`Record::AgentAudio`]), every mark, every `clear`.
//! * The model connection (connecting, connected, closed and why), the `type` of every model
//!   event but the high-rate deltas, the `type` of every client event, and each
//!   `conversation.item.truncate` with its `audio_end_ms` and the round-trip estimate it used.
//! * The session's events, without text: agent turns (with their length in characters),
//!   tools (name, call id, error or not), handoffs, barge-ins and what was heard, errors, the
//!   close reason.
//!
//! Never recorded: audio payloads, transcripts, tool arguments and outputs, custom parameter
//! values, DTMF digits, the API key or any header, and the text of malformed input.
//!
//! # Cost
//!
//! A session without a recording does one `Option` check per frame. With one, lines are
//! formatted on the thread that saw the event (a small struct, no audio) into that thread's
//! batch, and batches (8 KiB, or half a second old) go to one writer thread per recorded call
//! through a bounded queue: one wake-up per batch, not per line. When the queue is full a
//! batch is dropped rather than the call slowed, and the count of dropped lines is the file's
//! last record ([`Record::Dropped`]). A file that cannot be created costs a warning, not the
//! call.
//!
//! # Format
//!
//! One JSON object per line: `t_us` (microseconds since the session started) and `kind`
//! (the [`Record`] variant in `snake_case`) with its fields. The first line is a
//! [`Record::Header`]. Lines from the session thread and from the Twilio reader (the caller's
//! loudness) arrive in batches, so the file is in `t_us` order only per thread (sort by
//! `t_us` to merge them; echoed marks are recorded with their arrival time, a little before
//! the session thread picks them up). [`read`] parses a file back.
//!
//! ```
//! use twilio_realtime::session::recording::{read, Entry, Record};
//! let text = "{\"t_us\":0,\"kind\":\"header\",\"format\":1,\"version\":\"0.1.0\",\"started_unix_ms\":1}\n\
//!             {\"t_us\":1500,\"kind\":\"clear\"}\n";
//! let entries = read(text.as_bytes()).unwrap();
//! assert_eq!(entries[1], Entry { t_us: 1500, record: Record::Clear });
//! ```

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use crate::call::Output;
use crate::events::{CallError, ErrorSource, SessionEvent};
use crate::proto::realtime::{ClientEvent, ServerEvent};
use crate::proto::twilio::{TwilioCommand, TwilioMessage};

const LOG: &str = "twilio_realtime::recording";

/// The version of the file format written in [`Record::Header::format`].
pub const FORMAT_VERSION: u32 = 1;

/// Batches of lines waiting for the writer thread at most; past that, batches are dropped and
/// their lines counted.
const QUEUE: usize = 64;

/// A thread's lines go to the writer in batches of about this many bytes, or older than
/// [`BATCH_AGE`]: one writer wake-up per batch, not per line.
const BATCH_BYTES: usize = 8 * 1024;

/// The oldest line a batch may hold before it is sent (checked at the next line, and when the
/// recorder is dropped).
const BATCH_AGE: Duration = Duration::from_millis(500);

/// Bytes kept in memory before a [`RecordTo::Dir`] file can be named (no `start` yet).
const MAX_UNNAMED: usize = 256 * 1024;

/// Peer-supplied strings (mark names, ids) are cut to this many bytes.
const MAX_STR: usize = 128;

/// Caller audio is summed up over this much audio per [`Record::CallerAudio`] line.
const CALLER_BUCKET_MS: u32 = 100;

/// Where a session's recording goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordTo {
    /// This file (created, or truncated if it exists).
    File(PathBuf),
    /// A new file in this directory (created if missing), named after the call:
    /// `{CallSid}.jsonl` (a SIP call's: `{call_id}.jsonl`; `-2`, `-3`, … appended if taken),
    /// or `nostart-{unix ms}.jsonl` when the stream ended before a `start`.
    Dir(PathBuf),
}

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Microseconds since the session started.
    pub t_us: u64,
    /// What happened.
    #[serde(flatten)]
    pub record: Record,
}

/// What one line of a recording says happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Record {
    /// The first line.
    Header {
        /// [`FORMAT_VERSION`] of the writer.
        format: u32,
        /// The crate version that wrote it.
        version: String,
        /// Wall-clock time of `t_us = 0`, in milliseconds since the Unix epoch.
        started_unix_ms: u64,
    },
    /// Twilio's `connected`.
    TwilioConnected,
    /// Twilio's `start`.
    TwilioStart {
        /// The call.
        call_sid: String,
        /// The stream.
        stream_sid: String,
        /// The tracks streamed.
        tracks: Vec<String>,
        /// The names of the TwiML `<Parameter>`s (their values are never recorded).
        parameter_names: Vec<String>,
    },
    /// The caller's audio over the last `ms` (up to 100 ms) before `t_us`.
    CallerAudio {
        /// Milliseconds of audio summed up.
        ms: u32,
        /// Mean absolute sample value (16-bit linear scale, 0–32767).
        level: u16,
    },
    /// Twilio echoed a mark (recorded with the time it arrived).
    MarkEchoed {
        /// The mark's name.
        name: String,
    },
    /// The caller pressed a key (which one is not recorded).
    Dtmf,
    /// Twilio's `stop`.
    TwilioStop,
    /// Any other Twilio event.
    TwilioOther,
    /// Twilio sent something unusable (what it was is not recorded).
    TwilioBad,
    /// The Twilio socket closed.
    TwilioClosed {
        /// Why.
        why: String,
    },
    /// A chunk of agent audio went to Twilio.
    AgentAudio {
        /// Its length in µ-law bytes (8 per millisecond).
        bytes: u64,
        /// Mean absolute sample value (16-bit linear scale, 0–32767).
        level: u16,
    },
    /// A mark went to Twilio.
    MarkSent {
        /// The mark's name.
        name: String,
    },
    /// A `clear` went to Twilio.
    Clear,
    /// A model connection is being opened.
    ModelConnecting,
    /// The model connection is open.
    ModelConnected,
    /// The model connection could not be opened.
    ModelConnectFailed {
        /// Why.
        why: String,
    },
    /// The model connection closed.
    ModelClosed {
        /// Why.
        why: String,
    },
    /// The model sent an event (only its type; `*.delta` events are not recorded).
    ModelEvent {
        /// The event's `type`.
        event: String,
    },
    /// The model sent something unusable (what it was is not recorded).
    ModelBad,
    /// The bridge sent the model an event (only its type; truncations have their own record
    /// and caller audio appends are not recorded).
    ModelSent {
        /// The event's `type`.
        event: String,
    },
    /// The bridge told the model the caller heard `audio_end_ms` of an item.
    Truncate {
        /// The item.
        item_id: String,
        /// Its audio content part.
        content_index: u32,
        /// Milliseconds the bridge claims the caller heard.
        audio_end_ms: u64,
        /// The round-trip estimate to Twilio at that moment.
        rtt_ms: u64,
    },
    /// The model started a response.
    AgentStart {
        /// The current agent.
        agent: String,
    },
    /// The model finished a response.
    AgentEnd {
        /// The current agent.
        agent: String,
        /// Length of what it said, in characters (the text is not recorded).
        chars: u64,
    },
    /// The call moved to another agent.
    Handoff {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// A tool call started.
    ToolStart {
        /// The tool.
        tool: String,
        /// The model's call id.
        call_id: String,
    },
    /// A tool call waits for approval.
    ToolApproval {
        /// The tool.
        tool: String,
        /// The model's call id.
        call_id: String,
    },
    /// A tool call ended.
    ToolEnd {
        /// The tool.
        tool: String,
        /// The model's call id.
        call_id: String,
        /// It failed, timed out, was refused or unknown.
        is_error: bool,
    },
    /// The agent's audio for an item started going to the caller.
    AudioStart {
        /// The item.
        item_id: String,
    },
    /// The caller heard everything the agent said.
    AudioStopped,
    /// The agent's audio was cut off (a barge-in).
    Interrupted {
        /// What caused it (`CallerSpeech`, `Application`, `Guardrail`).
        cause: String,
        /// Per truncated item: (item id, ms heard).
        heard: Vec<(String, u64)>,
    },
    /// An output guardrail tripped.
    GuardrailTripped {
        /// The guardrail.
        guardrail: String,
    },
    /// A session error event.
    Error {
        /// Where it came from.
        source: String,
        /// What happened (the session's message, which never holds audio or keys).
        message: String,
    },
    /// The session ended.
    Closed {
        /// Why.
        reason: String,
    },
    /// The last line when lines were dropped (the writer fell behind).
    Dropped {
        /// How many.
        lines: u64,
    },
}

/// Errors reading a recording.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be read.
    Io(std::io::Error),
    /// A line is not a record.
    Line {
        /// 1-based line number.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "cannot read the recording: {e}"),
            ReadError::Line { line, source } => write!(f, "line {line}: {source}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            ReadError::Line { source, .. } => Some(source),
        }
    }
}

/// Parses a recording. Blank lines are skipped; a last line without its newline that does not
/// parse (the writer was killed mid-line) is ignored; any other bad line is an error.
pub fn read(r: impl BufRead) -> Result<Vec<Entry>, ReadError> {
    let mut out = Vec::new();
    let mut lines = r.split(b'\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(ReadError::Io)?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(text) {
            Ok(e) => out.push(e),
            Err(_) if lines.peek().is_none() => {}
            Err(source) => {
                return Err(ReadError::Line {
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// Reads a recording file.
pub fn read_file(path: &Path) -> Result<Vec<Entry>, ReadError> {
    let f = File::open(path).map_err(ReadError::Io)?;
    read(std::io::BufReader::new(f))
}

/// Writes entries as JSON lines (what a recording file holds).
pub fn write(mut w: impl Write, entries: &[Entry]) -> std::io::Result<()> {
    for e in entries {
        serde_json::to_writer(&mut w, e)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

enum Msg {
    /// Whole lines, each ending in a newline.
    Lines(Vec<u8>, u64),
    /// The call's id is known: a [`RecordTo::Dir`] file can be named.
    Name(String),
}

/// A session's recorder, one per thread that records (a clone starts with an empty batch).
/// Lines collect in a batch that goes to the writer thread when it is big or old enough, and
/// when the recorder is dropped; dropping the last clone ends the file.
#[derive(Debug)]
pub(crate) struct Recorder {
    t0: Instant,
    tx: Sender<Msg>,
    dropped: Arc<AtomicU64>,
    batch: Vec<u8>,
    lines: u64,
    oldest: Option<Instant>,
}

impl Clone for Recorder {
    fn clone(&self) -> Recorder {
        Recorder {
            t0: self.t0,
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
            batch: Vec::new(),
            lines: 0,
            oldest: None,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// The writer thread of a recorder.
#[derive(Debug)]
pub(crate) struct RecorderThread(JoinHandle<()>);

impl RecorderThread {
    /// Waits until every line is written (after every [`Recorder`] clone was dropped).
    pub(crate) fn join(self) {
        let _ = self.0.join();
    }
}

impl Recorder {
    /// Starts recording at `t0` into `to`; `None` (with a warning) if no thread can start.
    pub(crate) fn start(to: &RecordTo, t0: Instant) -> Option<(Recorder, RecorderThread)> {
        let (tx, rx) = bounded(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let to = to.clone();
        let counter = dropped.clone();
        let res = thread::Builder::new()
            .name("recorder".into())
            .stack_size(128 * 1024)
            .spawn(move || writer(to, rx, counter));
        let handle = match res {
            Ok(h) => h,
            Err(e) => {
                log::warn!(target: LOG, "call not recorded: no writer thread: {e}");
                return None;
            }
        };
        let mut rec = Recorder {
            t0,
            tx,
            dropped,
            batch: Vec::with_capacity(BATCH_BYTES + 512),
            lines: 0,
            oldest: None,
        };
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(t0.elapsed().as_millis() as u64);
        rec.at(
            t0,
            Record::Header {
                format: FORMAT_VERSION,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_unix_ms,
            },
        );
        Some((rec, RecorderThread(handle)))
    }

    /// Records `r` as happening now.
    pub(crate) fn now(&mut self, r: Record) {
        self.at(Instant::now(), r);
    }

    /// Records `r` as happening at `t`.
    pub(crate) fn at(&mut self, t: Instant, record: Record) {
        let e = Entry {
            t_us: t.saturating_duration_since(self.t0).as_micros() as u64,
            record,
        };
        let start = self.batch.len();
        if serde_json::to_writer(&mut self.batch, &e).is_err() {
            self.batch.truncate(start);
            return;
        }
        self.batch.push(b'\n');
        self.lines += 1;
        let oldest = *self.oldest.get_or_insert(t);
        if self.batch.len() >= BATCH_BYTES || t.saturating_duration_since(oldest) >= BATCH_AGE {
            self.flush();
        }
    }

    /// Hands the batch to the writer thread.
    fn flush(&mut self) {
        if self.lines == 0 {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_BYTES + 512));
        let lines = std::mem::take(&mut self.lines);
        self.oldest = None;
        self.send(Msg::Lines(batch, lines));
    }

    fn send(&self, m: Msg) {
        match self.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Lines(_, n))) => {
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }

    /// Names a [`RecordTo::Dir`] recording after a call known before any Twilio `start` (a
    /// SIP call: its call id).
    pub(crate) fn name(&mut self, call_id: &str) {
        self.flush();
        self.send(Msg::Name(call_id.to_owned()));
    }

    /// A message Twilio sent (not media: see [`CallerMeter`]).
    pub(crate) fn twilio_in(&mut self, msg: &TwilioMessage) {
        let r = match msg {
            TwilioMessage::Connected(_) => Record::TwilioConnected,
            TwilioMessage::Start(s) => {
                // The lines so far go first: the writer names the file before writing them.
                self.flush();
                self.send(Msg::Name(s.start.call_sid.clone()));
                Record::TwilioStart {
                    call_sid: cut(&s.start.call_sid),
                    stream_sid: cut(&s.stream_sid),
                    tracks: s.start.tracks.iter().take(4).map(|t| cut(t)).collect(),
                    parameter_names: s
                        .start
                        .custom_parameters
                        .keys()
                        .take(32)
                        .map(|k| cut(k))
                        .collect(),
                }
            }
            TwilioMessage::Media(_) => return,
            TwilioMessage::Dtmf(_) => Record::Dtmf,
            TwilioMessage::Mark(m) => Record::MarkEchoed {
                name: cut(&m.mark.name),
            },
            TwilioMessage::Stop(_) => Record::TwilioStop,
            TwilioMessage::Unknown(_) => Record::TwilioOther,
        };
        self.now(r);
    }

    /// An echoed mark, at the time it arrived.
    pub(crate) fn mark_echoed(&mut self, at: Instant, msg: &TwilioMessage) {
        if let TwilioMessage::Mark(m) = msg {
            self.at(
                at,
                Record::MarkEchoed {
                    name: cut(&m.mark.name),
                },
            );
        }
    }

    /// An event from the model (deltas skipped).
    pub(crate) fn model_in(&mut self, ev: &ServerEvent) {
        self.model_type_in(ev.event_type());
    }

    /// An event from the model, by type (deltas skipped; GPT-Live's too).
    pub(crate) fn model_type_in(&mut self, ty: &str) {
        if ty.ends_with(".delta") {
            return;
        }
        self.now(Record::ModelEvent { event: cut(ty) });
    }

    /// One output of the call core, about to be performed; `rtt_ms` is the ledger's current
    /// round-trip estimate.
    pub(crate) fn output(&mut self, o: &Output, rtt_ms: u64) {
        let r = match o {
            Output::Twilio(TwilioCommand::Media { payload, .. }) => {
                let (bytes, level) = level_of_base64(payload);
                Record::AgentAudio { bytes, level }
            }
            Output::Twilio(TwilioCommand::Mark { name, .. }) => {
                Record::MarkSent { name: cut(name) }
            }
            Output::Twilio(TwilioCommand::Clear { .. }) => Record::Clear,
            Output::Model(ClientEvent::ConversationItemTruncate {
                item_id,
                content_index,
                audio_end_ms,
                ..
            }) => Record::Truncate {
                item_id: cut(item_id),
                content_index: *content_index,
                audio_end_ms: *audio_end_ms,
                rtt_ms,
            },
            Output::Model(ClientEvent::InputAudioBufferAppend { .. }) => return,
            Output::Model(ev) => Record::ModelSent {
                event: ev.event_type().to_owned(),
            },
            Output::LiveModel(ev) => Record::ModelSent {
                event: ev.event_type().to_owned(),
            },
            Output::Event(e) => match session_record(e) {
                Some(r) => r,
                None => return,
            },
            Output::ConnectModel => Record::ModelConnecting,
            _ => return,
        };
        self.now(r);
    }
}

fn session_record(e: &SessionEvent) -> Option<Record> {
    Some(match e {
        SessionEvent::AgentStart { agent } => Record::AgentStart { agent: cut(agent) },
        SessionEvent::AgentEnd { agent, text } => Record::AgentEnd {
            agent: cut(agent),
            chars: text.chars().count() as u64,
        },
        SessionEvent::Handoff { from, to } => Record::Handoff {
            from: cut(from),
            to: cut(to),
        },
        SessionEvent::ToolStart { tool, call_id, .. } => Record::ToolStart {
            tool: cut(tool),
            call_id: cut(call_id),
        },
        SessionEvent::ToolApprovalRequested { tool, call_id, .. } => Record::ToolApproval {
            tool: cut(tool),
            call_id: cut(call_id),
        },
        SessionEvent::ToolEnd {
            tool,
            call_id,
            is_error,
            ..
        } => Record::ToolEnd {
            tool: cut(tool),
            call_id: cut(call_id),
            is_error: *is_error,
        },
        SessionEvent::AudioStart { item_id } => Record::AudioStart {
            item_id: cut(item_id),
        },
        SessionEvent::AudioStopped => Record::AudioStopped,
        SessionEvent::AudioInterrupted { cause, heard, .. } => Record::Interrupted {
            cause: format!("{cause:?}"),
            heard: heard.iter().take(16).map(|(i, ms)| (cut(i), *ms)).collect(),
        },
        SessionEvent::GuardrailTripped { guardrail, .. } => Record::GuardrailTripped {
            guardrail: cut(guardrail),
        },
        SessionEvent::Error(e) => Record::Error {
            source: match (e.origin(), e) {
                (_, CallError::ModelError { code: Some(c), .. }) => format!("model {}", cut(c)),
                (ErrorSource::Model, _) => "model".into(),
                (ErrorSource::Twilio, _) => "twilio".into(),
                (ErrorSource::Tool, _) => "tool".into(),
                _ => "application".into(),
            },
            message: cut_to(&e.to_string(), 300),
        },
        SessionEvent::Closed { reason } => Record::Closed {
            reason: cut_to(&reason.to_string(), 300),
        },
        _ => return None,
    })
}

/// The caller's audio level, summed up per 100 ms on the Twilio reader thread.
#[derive(Debug)]
pub(crate) struct CallerMeter {
    rec: Recorder,
    bytes: u64,
    sum: u64,
}

impl CallerMeter {
    pub(crate) fn new(rec: Recorder) -> CallerMeter {
        CallerMeter {
            rec,
            bytes: 0,
            sum: 0,
        }
    }

    /// One media frame (base64 µ-law) arrived at `now`.
    pub(crate) fn on_frame(&mut self, now: Instant, payload: &str) {
        let (n, sum) = sum_of_base64(payload);
        self.bytes = self.bytes.saturating_add(n);
        self.sum = self.sum.saturating_add(sum);
        if self.bytes >= u64::from(CALLER_BUCKET_MS) * crate::proto::mulaw::BYTES_PER_MS as u64 {
            self.flush(now);
        }
    }

    fn flush(&mut self, now: Instant) {
        if self.bytes == 0 {
            return;
        }
        let level = self.sum.checked_div(self.bytes).unwrap_or(0).min(32767) as u16;
        let ms =
            (self.bytes / crate::proto::mulaw::BYTES_PER_MS as u64).min(u64::from(u32::MAX)) as u32;
        self.rec.at(now, Record::CallerAudio { ms, level });
        self.bytes = 0;
        self.sum = 0;
    }
}

/// Decodes base64 µ-law piecewise into a stack buffer: (bytes, sum of |sample|). Invalid
/// base64 counts what decoded before the error.
fn sum_of_base64(b64: &str) -> (u64, u64) {
    const CHUNK: usize = 1024;
    let mut buf = [0u8; CHUNK / 4 * 3];
    let engine = &base64::engine::general_purpose::STANDARD;
    let (mut n, mut sum) = (0u64, 0u64);
    for piece in b64.as_bytes().chunks(CHUNK) {
        let Ok(len) = engine.decode_slice(piece, &mut buf) else {
            break;
        };
        for &b in &buf[..len] {
            sum += u64::from((crate::proto::mulaw::decode(b) as i32).unsigned_abs());
        }
        n += len as u64;
    }
    (n, sum)
}

fn level_of_base64(b64: &str) -> (u64, u16) {
    let (n, sum) = sum_of_base64(b64);
    let level = sum.checked_div(n).unwrap_or(0).min(32767) as u16;
    (n, level)
}

fn cut(s: &str) -> String {
    cut_to(s, MAX_STR)
}

fn cut_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A call id reduced to what is safe in a file name.
fn file_stem(call_sid: &str) -> Option<String> {
    let s: String = call_sid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    (!s.is_empty()).then_some(s)
}

fn create_new_in(dir: &Path, stem: &str) -> std::io::Result<(PathBuf, File)> {
    std::fs::create_dir_all(dir)?;
    let mut last = None;
    for n in 1..=100u32 {
        let name = if n == 1 {
            format!("{stem}.jsonl")
        } else {
            format!("{stem}-{n}.jsonl")
        };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free file name")))
}

fn writer(to: RecordTo, rx: Receiver<Msg>, dropped: Arc<AtomicU64>) {
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut out: Option<BufWriter<File>> = None;
    let mut failed = false;
    let open = |res: std::io::Result<(PathBuf, File)>| match res {
        Ok((path, f)) => {
            log::debug!(target: LOG, "recording the call to {}", path.display());
            Some(BufWriter::with_capacity(BATCH_BYTES, f))
        }
        Err(e) => {
            log::warn!(target: LOG, "call not recorded: {e}");
            None
        }
    };
    let unix_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    };
    if let RecordTo::File(path) = &to {
        out = open(File::create(path).map(|f| (path.clone(), f)));
        failed = out.is_none();
    }
    // `lines` are whole lines, each with its newline.
    let write_lines = |out: &mut Option<BufWriter<File>>, failed: &mut bool, lines: &[u8]| {
        if let Some(w) = out {
            if let Err(e) = w.write_all(lines) {
                log::warn!(target: LOG, "recording stopped: {e}");
                *out = None;
                *failed = true;
            }
        }
    };
    for m in rx.iter() {
        match m {
            Msg::Lines(lines, n) => {
                if out.is_some() {
                    write_lines(&mut out, &mut failed, &lines);
                } else if !failed {
                    if pending_bytes + lines.len() > MAX_UNNAMED {
                        dropped.fetch_add(n, Ordering::Relaxed);
                    } else {
                        pending_bytes += lines.len();
                        pending.push_back(lines);
                    }
                }
            }
            Msg::Name(sid) => {
                if let (RecordTo::Dir(dir), None, false) = (&to, &out, failed) {
                    let stem = file_stem(&sid).unwrap_or_else(|| format!("nostart-{}", unix_ms()));
                    out = open(create_new_in(dir, &stem));
                    failed = out.is_none();
                    for lines in pending.drain(..) {
                        write_lines(&mut out, &mut failed, &lines);
                    }
                }
            }
        }
    }
    if let (RecordTo::Dir(dir), None, false) = (&to, &out, failed) {
        out = open(create_new_in(dir, &format!("nostart-{}", unix_ms())));
        failed = out.is_none();
        for lines in pending.drain(..) {
            write_lines(&mut out, &mut failed, &lines);
        }
    }
    let lost = dropped.load(Ordering::Relaxed);
    if lost > 0 {
        let e = Entry {
            t_us: 0,
            record: Record::Dropped { lines: lost },
        };
        if let Ok(line) = serde_json::to_string(&e) {
            write_lines(&mut out, &mut failed, format!("{line}\n").as_bytes());
        }
    }
    if let Some(mut w) = out {
        if let Err(e) = w.flush() {
            log::warn!(target: LOG, "recording not flushed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_levels() {
        let silence = crate::proto::mulaw::silence_base64(160);
        assert_eq!(level_of_base64(&silence), (160, 0));
        let loud = base64::engine::general_purpose::STANDARD
            .encode(crate::proto::mulaw::tone(440.0, 20, 8000));
        let (n, level) = level_of_base64(&loud);
        assert_eq!(n, 160);
        assert!((4000..6500).contains(&level), "{level}");
        assert_eq!(level_of_base64("not base64!"), (0, 0));
    }

    #[test]
    fn cut_keeps_char_boundaries() {
        let s = "é".repeat(100);
        let c = cut(&s);
        assert!(c.len() <= MAX_STR && s.starts_with(&c));
        assert_eq!(file_stem("CA../../etc"), Some("CAetc".into()));
        assert_eq!(file_stem("/.."), None);
    }
}
