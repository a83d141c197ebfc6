//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::{json, Value};

/// The vendored specification folder (`spec/` in the repository; see its README).
pub fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("spec")
}

/// The official GA schemas, vendored in `spec/`.
pub fn spec_path() -> PathBuf {
    spec_dir().join("openai-realtime-schemas.json")
}

/// Validates events against `#/components/schemas/NAME` of the official spec, strictly: every
/// object schema that lists its properties is closed (`additionalProperties: false`), so a
/// misnamed field fails instead of slipping through as an "extra" property.
pub struct Schemas {
    components: Value,
    cache:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

fn close_objects(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            // OpenAPI example payloads are not schemas.
            m.remove("x-oaiMeta");
            for (_, child) in m.iter_mut() {
                close_objects(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close_objects),
        _ => {}
    }
}

impl Schemas {
    /// Loads the vendored spec. Panics when it is missing or unreadable: a schema test that
    /// cannot find its schemas must fail, not pass without checking anything.
    pub fn load() -> Schemas {
        let path = spec_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the official OpenAI schemas must be at {} (vendored in the repository, see \
                 spec/README.md): {e}",
                path.display()
            )
        });
        let mut doc: Value = serde_json::from_str(&text).expect("schema file is JSON");
        close_objects(&mut doc);
        assert!(
            doc["components"]["schemas"].is_object(),
            "{} has no components.schemas",
            path.display()
        );
        Schemas {
            components: doc["components"].take(),
            cache: Default::default(),
        }
    }

    /// The validation errors of `instance` against schema `name` (empty when valid).
    pub fn errors(&self, name: &str, instance: &Value) -> Vec<String> {
        assert!(
            self.components["schemas"].get(name).is_some(),
            "no schema named {name}"
        );
        let v = self
            .cache
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_insert_with(|| {
                let root = json!({
                    "components": self.components,
                    "$ref": format!("#/components/schemas/{name}"),
                });
                std::sync::Arc::new(
                    jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft202012)
                        .build(&root)
                        .expect("schema compiles"),
                )
            })
            .clone();
        v.iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Panics with the errors unless `instance` is valid against `name`.
    pub fn assert_valid(&self, name: &str, instance: &Value) {
        let errs = self.errors(name, instance);
        assert!(
            errs.is_empty(),
            "{name} rejects {instance}:\n{}",
            errs.join("\n")
        );
    }

    /// Validates a client event against the schema its `type` names.
    pub fn assert_client_event(&self, instance: &Value) {
        let ty = instance["type"].as_str().expect("event has a type");
        self.assert_valid(client_schema(ty), instance);
    }

    /// Validates a server event against the `RealtimeServerEvent…` schema whose `type` it
    /// names (panics for a type the spec has no server event for).
    pub fn assert_server_event(&self, instance: &Value) {
        let ty = instance["type"].as_str().expect("event has a type");
        let name = self.components["schemas"]
            .as_object()
            .expect("schemas")
            .iter()
            .find(|(name, s)| {
                name.starts_with("RealtimeServerEvent") && s["properties"]["type"]["enum"][0] == ty
            })
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| panic!("no server event schema for {ty}"));
        self.assert_valid(&name, instance);
    }
}

/// The schema name of a GA client event type.
pub fn client_schema(ty: &str) -> &'static str {
    match ty {
        "session.update" => "RealtimeClientEventSessionUpdate",
        "input_audio_buffer.append" => "RealtimeClientEventInputAudioBufferAppend",
        "input_audio_buffer.commit" => "RealtimeClientEventInputAudioBufferCommit",
        "input_audio_buffer.clear" => "RealtimeClientEventInputAudioBufferClear",
        "conversation.item.create" => "RealtimeClientEventConversationItemCreate",
        "conversation.item.truncate" => "RealtimeClientEventConversationItemTruncate",
        "conversation.item.delete" => "RealtimeClientEventConversationItemDelete",
        "conversation.item.retrieve" => "RealtimeClientEventConversationItemRetrieve",
        "response.create" => "RealtimeClientEventResponseCreate",
        "response.cancel" => "RealtimeClientEventResponseCancel",
        "output_audio_buffer.clear" => "RealtimeClientEventOutputAudioBufferClear",
        other => panic!("not a GA client event: {other}"),
    }
}

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use twilio_realtime::agent::Agent;
use twilio_realtime::events::SessionEvent;
use twilio_realtime::server::{IntoAgentFactory, Server, ServerConfig, ServerStats, Stopper};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig};

/// A fake model plus the bridge server on 127.0.0.1, collecting every session event.
pub struct Rig {
    pub model: FakeModel,
    pub addr: SocketAddr,
    pub stopper: Stopper,
    pub events: Arc<Mutex<Vec<(u64, SessionEvent)>>>,
    server: Option<JoinHandle<std::io::Result<ServerStats>>>,
}

impl Rig {
    pub fn start(model: FakeModelConfig, agent: fn() -> Agent) -> Rig {
        Rig::start_with(model, agent, |_| {})
    }

    pub fn start_with(
        model: FakeModelConfig,
        agent: fn() -> Agent,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Rig {
        Rig::start_factory(model, Arc::new(agent), tweak)
    }

    /// With any agent factory the server takes (e.g. one that reads the call's `CallInfo`).
    pub fn start_factory<M>(
        model: FakeModelConfig,
        agent: impl IntoAgentFactory<M>,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Rig {
        let model = FakeModel::start(model).expect("fake model");
        let mut cfg = ServerConfig::new();
        cfg.bind = "127.0.0.1:0".parse().unwrap();
        cfg.public_url = None;
        cfg.twilio_auth_token = None;
        cfg.session.model.url = model.url();
        cfg.session.model.api_key = Some("test-key".into());
        cfg.shutdown_grace = std::time::Duration::from_secs(5);
        tweak(&mut cfg);
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let server = Server::bind(cfg, agent).expect("bind").on_event(Arc::new(
            move |n, e: &SessionEvent| ev.lock().unwrap().push((n, e.clone())),
        ));
        let addr = server.local_addr();
        let stopper = server.stopper();
        let server = std::thread::spawn(move || server.run());
        Rig {
            model,
            addr,
            stopper,
            events,
            server: Some(server),
        }
    }

    pub fn events(&self) -> Vec<SessionEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Every call's `Closed` reason so far, with its call number, in order.
    pub fn closed_reasons(&self) -> Vec<(u64, twilio_realtime::events::CloseReason)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(n, e)| match e {
                SessionEvent::Closed { reason } => Some((*n, reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// The errors the calls reported (`SessionEvent::Error`), in order.
    pub fn errors(&self) -> Vec<twilio_realtime::CallError> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, e)| match e {
                SessionEvent::Error(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// The `Closed` reasons without call numbers.
    pub fn closed(&self) -> Vec<twilio_realtime::events::CloseReason> {
        self.closed_reasons().into_iter().map(|(_, r)| r).collect()
    }

    /// Waits until the server has no live call (the session shut down).
    pub fn wait_idle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.stopper.live_calls() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(self.stopper.live_calls(), 0, "the call did not end");
    }

    pub fn stop(mut self) -> ServerStats {
        self.stopper.stop();
        self.server.take().unwrap().join().unwrap().unwrap()
    }
}

/// A throw-away self-signed certificate for "localhost", made in the test.
pub fn tls_pair() -> (native_tls::TlsAcceptor, native_tls::TlsConnector) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509Builder, X509NameBuilder};

    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let cert_pem = cert.to_pem().unwrap();
    let key_pem = key.private_key_to_pem_pkcs8().unwrap();
    let identity = native_tls::Identity::from_pkcs8(&cert_pem, &key_pem).unwrap();
    let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
    let root = native_tls::Certificate::from_pem(&cert_pem).unwrap();
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    (acceptor, connector)
}

/// Server settings in which the agent greets each caller first (a `response.create` once the
/// model confirmed the session): the fake model, like production, never speaks first.
pub fn greet(cfg: &mut ServerConfig) {
    cfg.session.call.greeting = Some(twilio_realtime::call::Greeting::Instructions(
        "Greet the caller.".into(),
    ));
}

/// Polls `f` every 10 ms until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// One HTTP/1.1 request on a fresh connection (read until the server closes it, 10 s at
/// most): the status code (0 when there is none) and the whole response.
pub fn http_request(addr: std::net::SocketAddr, raw: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("read timeout");
    s.write_all(raw.as_bytes()).expect("write request");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

/// A form POST as Twilio sends its webhooks (`application/x-www-form-urlencoded`), with
/// `X-Twilio-Signature: sig` when one is given.
pub fn post_form(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
    sig: Option<&str>,
) -> (u16, String) {
    let sig = sig
        .map(|s| format!("X-Twilio-Signature: {s}\r\n"))
        .unwrap_or_default();
    http_request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n{sig}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The one-time stream token a webhook's TwiML passes as `<Parameter name="token">`.
pub fn twiml_token(twiml: &str) -> Option<String> {
    let key = r#"<Parameter name="token" value=""#;
    let rest = &twiml[twiml.find(key)? + key.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// `application/x-www-form-urlencoded` of the pairs, in order.
pub fn form_encode(form: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}

pub mod live;

/// The `get_weather` tool the end-to-end tests give their agents: answers "The weather in
/// {location} is sunny."
pub fn weather_tool() -> twilio_realtime::agent::FunctionTool {
    twilio_realtime::agent::FunctionTool::new(
        "get_weather",
        "Weather for a city",
        serde_json::json!({"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}),
        |c| {
            Ok(format!(
                "The weather in {} is sunny.",
                c.arguments["location"].as_str().unwrap_or("?")
            ))
        },
    )
}

/// Reads a session's events until `Closed` (or `timeout` without one), showing each to
/// `on_event` with the handle first, then waits for the call's threads.
pub fn run_session(
    handle: twilio_realtime::session::Session,
    timeout: std::time::Duration,
    mut on_event: impl FnMut(&twilio_realtime::session::Session, &SessionEvent),
) -> Vec<SessionEvent> {
    let mut seen = Vec::new();
    while let Ok(ev) = handle.events().recv_timeout(timeout) {
        on_event(&handle, &ev);
        let closed = matches!(ev, SessionEvent::Closed { .. });
        seen.push(ev);
        if closed {
            break;
        }
    }
    handle.join();
    seen
}

/// The caller's usual short call: 600 ms of speech, the agent's answer, then hang up.
pub fn short_call() -> Vec<twilio_realtime::sim::twilio_call::Segment> {
    use twilio_realtime::sim::twilio_call::Segment;
    vec![
        Segment::Speech(600),
        Segment::WaitForAgent {
            quiet_ms: 300,
            timeout_ms: 10_000,
        },
        Segment::HangUp,
    ]
}

/// The call core's outputs that are session events, in order.
pub fn session_events(
    out: &[twilio_realtime::call::Output],
) -> Vec<twilio_realtime::events::SessionEvent> {
    out.iter()
        .filter_map(|o| match o {
            twilio_realtime::call::Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// base64 of `n` µ-law bytes (all 0x55, loud enough to be speech).
pub fn audio_b64(n: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(vec![0x55u8; n])
}
