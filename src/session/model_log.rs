//! Every client event a call sends its model, as JSON lines with audio payloads elided
//! ([`SessionConfig::model_events`](crate::session::SessionConfig::model_events)): the first
//! thing to look at when a real call misbehaves.
//!
//! One line per event, in the order written to the socket: the session thread's events
//! (`session.update` / `session.start`, tool outputs, …) and the caller-audio lane's appends
//! (`input_audio_buffer.append` / `session.input_audio.append`, with `"audio":"<elided N
//! chars>"`). Write errors are logged once and the log stops; the call goes on.
//!
//! One line is not a client event: with GPT-Live, when the session starts, the server's
//! `session.started` with only the session id (the one OpenAI's support asks for) and
//! `"received":true`, e.g. `{"received":true,"session":{"id":"live_…"},"type":"session.started"}`.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use twilio_realtime::session::model_log::ModelEventLog;
//!
//! let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
//! let log = ModelEventLog::new(SharedBuf(buf.clone()));
//! log.write_event(r#"{"type":"session.input_audio.append","audio":"//8="}"#);
//! assert_eq!(
//!     String::from_utf8(buf.lock().unwrap().clone()).unwrap(),
//!     "{\"audio\":\"<elided 4 chars>\",\"type\":\"session.input_audio.append\"}\n"
//! );
//! # struct SharedBuf(Arc<Mutex<Vec<u8>>>);
//! # impl std::io::Write for SharedBuf {
//! #     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(b) }
//! #     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
//! # }
//! ```

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;

const LOG: &str = "twilio_realtime::session";

/// Fields whose string value is audio (client events of both APIs).
const AUDIO_FIELDS: [&str; 2] = ["audio", "delta"];

struct Inner {
    out: Box<dyn Write + Send>,
    failed: bool,
}

/// A shared writer of client-event lines (cheap to clone; every clone writes to the same
/// writer, one whole line at a time).
#[derive(Clone)]
pub struct ModelEventLog(Arc<Mutex<Inner>>);

impl std::fmt::Debug for ModelEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelEventLog")
    }
}

impl ModelEventLog {
    /// Lines go to `out` (a file, a `Vec`, stderr…). Wrap a file in a `BufWriter`; each line
    /// is flushed when the call ends, not per line.
    pub fn new(out: impl Write + Send + 'static) -> ModelEventLog {
        ModelEventLog(Arc::new(Mutex::new(Inner {
            out: Box::new(out),
            failed: false,
        })))
    }

    /// Writes one client event's JSON as a line, audio elided. Text that is not a JSON object
    /// is written as a JSON string.
    pub fn write_event(&self, json: &str) {
        let line = match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(mut m)) => {
                for f in AUDIO_FIELDS {
                    if let Some(Value::String(a)) = m.get(f) {
                        let n = a.len();
                        m.insert(f.into(), Value::String(format!("<elided {n} chars>")));
                    }
                }
                Value::Object(m).to_string()
            }
            _ => Value::String(json.to_owned()).to_string(),
        };
        self.write_line(&line);
    }

    /// The caller-audio lane's append (written without parsing): `event_type` with `n`
    /// base64 characters elided.
    pub fn write_append(&self, event_type: &str, n: usize) {
        self.write_line(&format!(
            "{{\"audio\":\"<elided {n} chars>\",\"type\":\"{event_type}\"}}"
        ));
    }

    /// GPT-Live's `session.started` as received: a line with the session id only, marked
    /// `"received":true` (see the module docs).
    pub fn write_session_started(&self, session_id: &str) {
        let line = serde_json::json!({
            "type": "session.started",
            "received": true,
            "session": {"id": session_id},
        });
        self.write_line(&line.to_string());
    }

    fn write_line(&self, line: &str) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.failed {
            return;
        }
        let res = g
            .out
            .write_all(line.as_bytes())
            .and_then(|_| g.out.write_all(b"\n"));
        if let Err(e) = res {
            g.failed = true;
            log::warn!(target: LOG, "model event log stopped: {e}");
        }
    }

    /// Flushes the writer.
    pub fn flush(&self) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = g.out.flush() {
            log::warn!(target: LOG, "model event log not flushed: {e}");
        }
    }
}
