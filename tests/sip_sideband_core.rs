//! The call core in sideband mode (`CallConfig::sideband`, a SIP call driven over OpenAI's
//! sideband WebSocket, brief `spec/realtime-sip.md` §5): ready on connect, no audio lane,
//! playing from `output_audio_buffer.*`, interrupt = `response.cancel` +
//! `output_audio_buffer.clear`, DTMF from `input_audio_buffer.dtmf_event_received`, hang-up
//! after the goodbye stopped playing. Driven with an injected clock; every client event the
//! core writes is validated against the official schema.

mod common;

use common::session_events as events;

use std::time::Instant;

use serde_json::{json, Value};
use twilio_realtime::agent::{Agent, FunctionTool};
use twilio_realtime::call::{CallConfig, CallCore, Command, Greeting, Input, Output};
use twilio_realtime::events::{CloseReason, InterruptCause, SessionEvent};
use twilio_realtime::proto::realtime::ServerEvent;

struct H {
    core: CallCore,
    now: Instant,
    out: Vec<Output>,
    schemas: common::Schemas,
}

fn agent() -> Agent {
    Agent::new("Concierge", "You are a concierge.")
        .voice("marin")
        .tool(FunctionTool::new(
            "lookup_order",
            "Look an order up",
            json!({"type":"object","properties":{"order_id":{"type":"string"}}}),
            |c| {
                Ok(format!(
                    "order {} shipped",
                    c.arguments["order_id"].as_str().unwrap_or("?")
                ))
            },
        ))
        .can_hang_up()
}

impl H {
    fn new(greeting: Option<Greeting>) -> H {
        let opts = {
            let mut o = CallConfig::default();
            o.sideband = true;
            o.greeting = greeting;
            o
        };
        let now = Instant::now();
        H {
            core: CallCore::new(agent(), opts, now),
            now,
            out: vec![],
            schemas: common::Schemas::load(),
        }
    }

    fn connected(&mut self) {
        self.core.handle_input(self.now, Input::ModelConnected);
        self.collect();
    }

    fn model(&mut self, v: Value) {
        let ev = ServerEvent::parse(&v.to_string()).expect("valid server event");
        self.core.handle_input(self.now, Input::Model(ev));
        self.collect();
    }

    fn cmd(&mut self, c: Command) {
        self.core.handle_input(self.now, Input::Command(c));
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(o) = self.core.poll_output() {
            if let Output::Model(ev) = &o {
                let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
                self.schemas.assert_client_event(&v);
            }
            assert!(
                !matches!(o, Output::Twilio(_)),
                "a sideband call has no Twilio side: {o:?}"
            );
            self.out.push(o);
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        self.collect();
        std::mem::take(&mut self.out)
    }

    fn ready() -> H {
        let mut h = H::new(None);
        h.connected();
        h.updated();
        h.drain();
        h
    }

    fn updated(&mut self) {
        // A SIP session's `session.updated` shows whatever codec SDP negotiated (or none).
        self.model(json!({"type":"session.updated","event_id":"e1","session":{"type":"realtime"}}));
    }

    fn response_created(&mut self, id: &str) {
        self.model(json!({"type":"response.created","event_id":"e","response":{"id":id,"object":"realtime.response","status":"in_progress","output":[]}}));
    }

    fn response_done(&mut self, id: &str) {
        self.model(json!({"type":"response.done","event_id":"e","response":{"id":id,"object":"realtime.response","status":"completed","output":[]}}));
    }

    fn buffer(&mut self, what: &str, resp: &str) {
        self.model(
            json!({"type":format!("output_audio_buffer.{what}"),"event_id":"e","response_id":resp}),
        );
    }
}

fn model_events(out: &[Output]) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            Output::Model(ev) => Some(serde_json::from_str(&ev.to_json()).unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn ready_on_connect_with_one_update_without_audio_formats() {
    let mut h = H::new(Some(Greeting::Say("Hello!".into())));
    h.connected();
    let out = h.drain();
    let sent = model_events(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["type"], "session.update");
    let session = &sent[0]["session"];
    assert!(
        session["audio"]["input"].get("format").is_none(),
        "{session}"
    );
    assert!(
        session["audio"]["output"].get("format").is_none(),
        "{session}"
    );
    assert_eq!(session["instructions"], "You are a concierge.");
    assert!(out.iter().any(|o| matches!(o, Output::ModelReady)));
    // The greeting goes once the update is confirmed; no `start` is awaited.
    h.updated();
    let sent = model_events(&h.drain());
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["type"], "response.create");
    assert!(sent[0]["response"]["instructions"]
        .as_str()
        .unwrap()
        .contains("Hello!"));
    // A late `session.created` (documented by Azure only) changes nothing.
    h.model(json!({"type":"session.created","event_id":"e0","session":{"type":"realtime"}}));
    assert!(model_events(&h.drain()).is_empty());
}

#[test]
fn no_start_timeout_and_audio_deltas_are_ignored() {
    let mut h = H::ready();
    assert_eq!(
        h.core
            .next_deadline()
            .map(|d| d > h.now + std::time::Duration::from_secs(10)),
        Some(true)
    );
    h.response_created("r1");
    h.model(
        json!({"type":"response.output_audio.delta","event_id":"e","response_id":"r1",
        "item_id":"i1","output_index":0,"content_index":0,"delta":"VVVV"}),
    );
    let out = h.drain();
    assert!(!out.iter().any(|o| matches!(o, Output::Twilio(_))));
    assert!(h.core.ended().is_none());
}

#[test]
fn tools_run_and_their_output_goes_back() {
    let mut h = H::ready();
    h.response_created("r1");
    h.model(json!({"type":"response.output_item.done","event_id":"e","response_id":"r1","output_index":0,
        "item":{"id":"fc1","object":"realtime.item","type":"function_call","status":"completed",
        "name":"lookup_order","call_id":"call_1","arguments":"{\"order_id\":\"42\"}"}}));
    h.response_done("r1");
    let out = h.drain();
    let call_id = out
        .iter()
        .find_map(|o| match o {
            Output::RunTool { call_id, name, .. } if name == "lookup_order" => {
                Some(call_id.clone())
            }
            _ => None,
        })
        .expect("the tool runs");
    let (call, tool) = h.core.tool_invocation(&call_id).expect("a running call");
    let result = tool.invoke(&call);
    assert_eq!(result.as_deref(), Ok("order 42 shipped"));
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "call_1".into(),
            result,
        },
    );
    h.collect();
    let sent = model_events(&h.drain());
    let types: Vec<&str> = sent.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["conversation.item.create", "response.create"]);
    assert_eq!(sent[0]["item"]["output"], "order 42 shipped");
}

#[test]
fn an_interrupt_cancels_and_clears_the_output_buffer() {
    let mut h = H::ready();
    h.response_created("r1");
    h.buffer("started", "r1");
    h.drain();
    h.cmd(Command::Interrupt);
    let out = h.drain();
    let sent = model_events(&out);
    let types: Vec<&str> = sent.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["response.cancel", "output_audio_buffer.clear"]);
    assert!(!sent
        .iter()
        .any(|e| e["type"] == "conversation.item.truncate"));
    assert!(events(&out).iter().any(|e| matches!(
        e,
        SessionEvent::AudioInterrupted {
            cause: InterruptCause::Application,
            ..
        }
    )));
    // Nothing plays, nothing is under way: a second interrupt sends nothing.
    h.buffer("cleared", "r1");
    h.response_done("r1");
    h.drain();
    h.cmd(Command::Interrupt);
    assert!(model_events(&h.drain()).is_empty());
}

#[test]
fn caller_speech_is_left_to_the_server() {
    let mut h = H::ready();
    h.response_created("r1");
    h.buffer("started", "r1");
    h.drain();
    // interrupt_response is on by default: the server cancels and clears by itself.
    h.model(json!({"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":100,"item_id":"u1"}));
    let out = h.drain();
    assert!(model_events(&out).is_empty(), "{:?}", model_events(&out));
    assert!(events(&out).iter().any(|e| matches!(
        e,
        SessionEvent::AudioInterrupted {
            cause: InterruptCause::CallerSpeech,
            ..
        }
    )));
}

#[test]
fn dtmf_comes_from_the_sideband() {
    let mut h = H::ready();
    h.model(json!({"type":"input_audio_buffer.dtmf_event_received","event":"5","received_at":1750287100}));
    let evs = events(&h.drain());
    assert!(
        evs.iter()
            .any(|e| matches!(e, SessionEvent::Dtmf { digit } if digit == "5")),
        "{evs:?}"
    );
}

#[test]
fn hang_up_waits_for_the_goodbye_to_stop_playing() {
    let mut h = H::ready();
    h.response_created("r1");
    h.buffer("started", "r1");
    h.cmd(Command::HangUp);
    h.response_done("r1");
    let out = h.drain();
    assert!(
        !out.iter().any(|o| matches!(o, Output::CloseTwilio)),
        "still playing: {out:?}"
    );
    assert!(h.core.ended().is_none());
    h.buffer("stopped", "r1");
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    assert_eq!(h.core.ended(), Some(&CloseReason::HungUp));
}
