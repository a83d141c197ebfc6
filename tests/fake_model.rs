//! The fake Realtime model behaves like production where a bridge can tell (issue 10 §1):
//! production's session defaults, no speaking first, and production's refusals in
//! production's error shape. Driven with a bare WebSocket client, event by event.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};

struct Client {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    schemas: common::Schemas,
}

impl Client {
    fn connect(model: &FakeModel) -> Client {
        let tcp = TcpStream::connect(model.addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (ws, _) = tungstenite::client(model.url(), MaybeTlsStream::Plain(tcp)).unwrap();
        Client {
            ws,
            schemas: common::Schemas::load(),
        }
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    /// The next server event of type `ty` (others are skipped), within 3 s.
    fn next(&mut self, ty: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            assert!(Instant::now() < deadline, "no {ty} from the fake model");
            let msg = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) => panic!("read: {e}"),
            };
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == ty {
                if ty == "error" {
                    self.schemas.assert_valid("RealtimeServerEventError", &v);
                }
                return v;
            }
        }
    }

    /// Sends `ev` and expects an `error` naming it, with `code` and `param`.
    fn refused(&mut self, ev: Value, code: &str, param: Option<&str>) -> Value {
        let id = ev["event_id"].clone();
        self.send(ev);
        let e = self.next("error");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        assert_eq!(e["error"]["code"], code, "{e}");
        assert_eq!(e["error"]["param"], json!(param), "{e}");
        assert_eq!(e["error"]["event_id"], id, "{e}");
        assert!(e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        e
    }
}

fn pcmu_update(id: &str, voice: &str) -> Value {
    json!({"type":"session.update","event_id":id,"session":{"type":"realtime",
        "audio":{"input":{"format":{"type":"audio/pcmu"}},
                 "output":{"format":{"type":"audio/pcmu"},"voice":voice}}}})
}

#[test]
fn a_new_session_has_production_defaults_and_the_model_never_speaks_first() {
    let model = FakeModel::start(FakeModelConfig::default()).unwrap();
    let mut c = Client::connect(&model);
    let created = c.next("session.created");
    let s = &created["session"];
    for dir in ["input", "output"] {
        assert_eq!(
            s["audio"][dir]["format"],
            json!({"type":"audio/pcm","rate":24000})
        );
    }
    assert_eq!(s["audio"]["output"]["voice"], "alloy");
    let td = &s["audio"]["input"]["turn_detection"];
    assert_eq!(td["type"], "server_vad");
    assert_eq!(td["create_response"], true);
    assert_eq!(td["interrupt_response"], true);
    // Configured, the model still says nothing until asked.
    c.send(pcmu_update("u1", "marin"));
    c.next("session.updated");
    std::thread::sleep(Duration::from_millis(500));
    let rec = model.recording();
    assert_eq!(rec.responses, 0);
    assert_eq!(rec.audio_sent_bytes, 0);
}

#[test]
fn the_fake_refuses_what_production_refuses_in_productions_error_shape() {
    let model = FakeModel::start(FakeModelConfig {
        script: vec![Reply::say("Hi there.", 400)],
        audio_speed: 20.0,
        ..Default::default()
    })
    .unwrap();
    let mut c = Client::connect(&model);
    c.next("session.created");
    // An unknown voice; a tool whose name breaks OpenAI's function-name rule. Each refused
    // update leaves the session as it was.
    c.refused(
        pcmu_update("u1", "robot"),
        "invalid_value",
        Some("session.audio.output.voice"),
    );
    c.refused(
        json!({"type":"session.update","event_id":"u2","session":{"type":"realtime",
            "tools":[{"type":"function","name":"get weather!","description":"","parameters":{}}]}}),
        "invalid_value",
        Some("session.tools[0].name"),
    );
    c.send(pcmu_update("u3", "marin"));
    let updated = c.next("session.updated");
    assert_eq!(updated["session"]["audio"]["output"]["voice"], "marin");
    assert_eq!(
        updated["session"]["tools"],
        json!([]),
        "the refused tools never applied"
    );
    // Committing an empty buffer.
    c.refused(
        json!({"type":"input_audio_buffer.commit","event_id":"c1"}),
        "input_audio_buffer_commit_empty",
        None,
    );
    // A second response while one is active.
    c.send(json!({"type":"response.create","event_id":"r1"}));
    c.next("response.created");
    c.refused(
        json!({"type":"response.create","event_id":"r2"}),
        "conversation_already_has_active_response",
        None,
    );
    let done = c.next("response.done");
    let item = done["response"]["output"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Truncation past the end of the item (400 ms long).
    c.refused(
        json!({"type":"conversation.item.truncate","event_id":"t1","item_id":item,"content_index":0,"audio_end_ms":401}),
        "invalid_value",
        Some("audio_end_ms"),
    );
    c.send(json!({"type":"conversation.item.truncate","event_id":"t2","item_id":item,"content_index":0,"audio_end_ms":400}));
    c.next("conversation.item.truncated");
    // The assistant has spoken: the voice is fixed now (the same voice is fine).
    c.refused(pcmu_update("u4", "cedar"), "cannot_update_voice", None);
    c.send(pcmu_update("u5", "marin"));
    c.next("session.updated");
    let rec = model.recording();
    assert_eq!(
        rec.sent_by_format.keys().collect::<Vec<_>>(),
        ["audio/pcmu"]
    );
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
}

#[test]
fn audio_in_the_default_format_is_recorded_as_such_and_not_heard() {
    let model = FakeModel::start(FakeModelConfig {
        audio_speed: 20.0,
        ..Default::default()
    })
    .unwrap();
    let mut c = Client::connect(&model);
    c.next("session.created");
    // A bridge that never switched to µ-law: its µ-law is noise to the model...
    let loud = twilio_realtime::sim::fake_model::voice(1000, 0);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&loud);
    c.send(json!({"type":"input_audio_buffer.append","audio":b64}));
    // ...and what the model says is 24 kHz PCM (6 bytes per µ-law byte).
    c.send(json!({"type":"response.create","event_id":"r1"}));
    c.next("response.done");
    let rec = model.recording();
    assert_eq!(rec.appended_by_format.get("audio/pcm"), Some(&8000));
    assert!(rec.turns.is_empty(), "noise starts no turn");
    assert_eq!(
        rec.sent_by_format.get("audio/pcm"),
        Some(&(600 * 48)),
        "{:?}",
        rec.sent_by_format
    );
    assert!(
        rec.violations.iter().any(|v| v.contains("audio/pcm")),
        "{:?}",
        rec.violations
    );
}
