//! The one-hop floor: the least a Twilio ↔ Realtime bridge can do. A reader thread per socket
//! rewrites Twilio `media` → `input_audio_buffer.append` and model
//! `response.output_audio.delta` → Twilio `media` + `mark`, and writes straight to the other
//! socket. Nothing else: no barge-in, no ledger, no tools, no early buffer. It exists to be
//! measured beside the real engine by `examples/loadgen.rs`.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/loadgen --calls 100 --seconds 60 --bridge target/release/examples/floor
//! ```
//!
//! Environment: `PORT` (5050), `OPENAI_API_KEY`, `OPENAI_REALTIME_URL` (a `ws://` URL);
//! `MODEL_API=live` speaks GPT-Live instead, at `OPENAI_LIVE_URL`: `session.start` (µ-law
//! 8 kHz) first, caller audio as `session.input_audio.append`, and every
//! `session.output_audio.delta` forwarded as it comes (no pacing, nothing else), so that
//! `loadgen --model live` has the same floor to measure the engine against.

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::thread;

use serde::Deserialize;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

#[derive(Deserialize)]
struct TwilioIn<'a> {
    event: &'a str,
    #[serde(rename = "streamSid", default)]
    stream_sid: Option<String>,
    #[serde(default, borrow)]
    media: Option<MediaIn<'a>>,
}

#[derive(Deserialize)]
struct MediaIn<'a> {
    payload: &'a str,
}

#[derive(Deserialize)]
struct ModelIn<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    /// Absent on GPT-Live's deltas (marks are then named `live:N`).
    #[serde(default = "live_item")]
    item_id: &'a str,
    #[serde(default)]
    delta: &'a str,
}

fn live_item() -> &'static str {
    "live"
}

fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5050);
    let live = std::env::var("MODEL_API").is_ok_and(|m| m == "live");
    let model_url = if live {
        std::env::var("OPENAI_LIVE_URL")
    } else {
        std::env::var("OPENAI_REALTIME_URL")
    }
    .unwrap_or_else(|_| "ws://127.0.0.1:9/v1/realtime".into());
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    println!("floor listening on http://127.0.0.1:{port}");
    for tcp in listener.incoming().flatten() {
        let (url, key) = (model_url.clone(), key.clone());
        thread::spawn(move || {
            if let Err(e) = call(tcp, &url, &key, live) {
                eprintln!("call failed: {e}");
            }
        });
    }
}

fn call(
    twilio_tcp: TcpStream,
    model_url: &str,
    key: &str,
    live: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    twilio_tcp.set_nodelay(true)?;
    let twilio_write_tcp = twilio_tcp.try_clone()?;
    let mut twilio_read = tungstenite::accept(twilio_tcp)?;
    let mut twilio_write = WebSocket::from_raw_socket(twilio_write_tcp, Role::Server, None);

    let host = model_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or("");
    let model_tcp = TcpStream::connect(host)?;
    model_tcp.set_nodelay(true)?;
    let model_write_tcp = model_tcp.try_clone()?;
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(model_url)?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {key}").parse()?);
    let (mut model_read, _) = tungstenite::client(req, model_tcp)?;
    let mut model_write = WebSocket::from_raw_socket(model_write_tcp, Role::Client, None);
    model_write.send(Message::text(if live {
        r#"{"type":"session.start","session":{"model":"gpt-live-1","audio":{"format":{"type":"audio/pcmu","rate":8000}}}}"#
    } else {
        r#"{"type":"session.update","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#
    }))?;
    let (delta_kind, append_head) = if live {
        (
            "session.output_audio.delta",
            r#"{"type":"session.input_audio.append","audio":""#,
        )
    } else {
        (
            "response.output_audio.delta",
            r#"{"type":"input_audio_buffer.append","audio":""#,
        )
    };

    let sid: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let sid2 = sid.clone();
    // Model → Twilio on its own thread.
    let down = thread::spawn(move || {
        let mut n: u64 = 0;
        let mut out = String::with_capacity(1200);
        while let Ok(msg) = model_read.read() {
            let Message::Text(t) = msg else { continue };
            let Ok(ev) = serde_json::from_str::<ModelIn>(t.as_str()) else {
                continue;
            };
            if ev.kind != delta_kind {
                continue;
            }
            let Some(sid) = sid2.get() else { continue };
            out.clear();
            out.push_str(r#"{"event":"media","streamSid":""#);
            out.push_str(sid);
            out.push_str(r#"","media":{"payload":""#);
            out.push_str(ev.delta);
            out.push_str(r#""}}"#);
            if twilio_write.send(Message::text(out.as_str())).is_err() {
                break;
            }
            n += 1;
            let mark = format!(
                r#"{{"event":"mark","streamSid":"{sid}","mark":{{"name":"{}:{n}"}}}}"#,
                ev.item_id
            );
            if twilio_write.send(Message::text(mark)).is_err() {
                break;
            }
        }
    });
    // Twilio → model on this thread.
    let mut out = String::with_capacity(300);
    while let Ok(msg) = twilio_read.read() {
        let Message::Text(t) = msg else { continue };
        let Ok(m) = serde_json::from_str::<TwilioIn>(t.as_str()) else {
            continue;
        };
        match m.event {
            "start" => {
                if let Some(s) = m.stream_sid {
                    let _ = sid.set(s);
                }
            }
            "media" => {
                if let Some(media) = m.media {
                    out.clear();
                    out.push_str(append_head);
                    out.push_str(media.payload);
                    out.push_str(r#""}"#);
                    model_write.send(Message::text(out.as_str()))?;
                }
            }
            "stop" => break,
            _ => {}
        }
    }
    let _ = model_write.close(None);
    let _ = model_write.flush();
    let _ = down.join();
    Ok(())
}
