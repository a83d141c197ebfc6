//! Every GPT-Live client event the crate can produce, validated strictly against the vendored
//! client schema (`spec/gpt-live-client-events.schema.json`, objects closed so misnamed fields
//! fail, and no `null` but `delegation_id`); the vendored example server events parse into
//! their typed variants; negative cases prove the validator bites. A missing file fails.

mod common;

use common::live::{examples, LiveSchemas};
use serde_json::{json, Value};
use twilio_realtime::proto::live::{
    AudioFormat, ClientEvent, Delegation, DelegationUpdate, FunctionTool, InputMessage,
    ResponseItem, ResponsesConfig, ResponsesUpdate, Role, ServerEvent, SessionSettings,
    SessionUpdate, ToolChoice, ToolMode,
};

fn v(ev: &ClientEvent) -> Value {
    serde_json::from_str(&ev.to_json()).unwrap()
}

fn tool() -> FunctionTool {
    FunctionTool::new(
        "lookup_order",
        "Look up an order",
        json!({"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}),
    )
}

fn sessions() -> Vec<SessionSettings> {
    let mut strict = tool();
    strict.strict = Some(true);
    vec![
        SessionSettings::new("gpt-live-1"),
        SessionSettings::new("gpt-live-1.1")
            .instructions("Be brief.")
            .voice("marin"),
        SessionSettings::new("gpt-live-1").instructions("   "),
        SessionSettings::new("gpt-live-1").tools("gpt-5.6-luna", None, vec![tool()]),
        SessionSettings::new("gpt-live-1").tools(
            "gpt-5.6-luna",
            Some("Business rules.".into()),
            vec![tool(), strict],
        ),
        SessionSettings::new("gpt-live-1").delegation(Delegation::Client {
            acknowledgement_delay_ms: Some(400),
        }),
        SessionSettings::new("gpt-live-1").delegation(Delegation::Responses {
            responses: ResponsesConfig {
                model: "gpt-5.6-luna".into(),
                instructions: Some("x".into()),
                tools: Some(vec![]),
                tool_choice: Some(ToolChoice::Mode(ToolMode::Required)),
                parallel_tool_calls: Some(true),
                max_output_tokens: Some(300),
            },
            acknowledgement_delay_ms: Some(0),
        }),
        SessionSettings::new("gpt-live-1").format(AudioFormat::Pcm { rate: 24000 }),
        SessionSettings::new("gpt-live-1").format(AudioFormat::Pcma { rate: 8000 }),
        SessionSettings::new("gpt-live-1")
            .input(vec![
                InputMessage::new(Role::Developer, "The caller is a customer."),
                InputMessage::new(Role::User, "Hi"),
                InputMessage::new(Role::Assistant, "Hello!"),
            ])
            .store(false)
            .safety_identifier("caller-1"),
    ]
}

fn every_client_event() -> Vec<ClientEvent> {
    let mut evs: Vec<ClientEvent> = sessions()
        .into_iter()
        .map(|s| ClientEvent::SessionStart {
            event_id: Some("start".into()),
            session: s,
        })
        .collect();
    evs.extend([
        ClientEvent::SessionUpdate {
            event_id: Some("u1".into()),
            session: SessionUpdate {
                delegation: Some(DelegationUpdate::Responses {
                    responses: Some(ResponsesUpdate {
                        tools: Some(vec![tool()]),
                        tool_choice: Some(ToolChoice::Mode(ToolMode::Auto)),
                        instructions: Some("New rules.".into()),
                        ..Default::default()
                    }),
                    acknowledgement_delay_ms: None,
                }),
                triggers: Some(vec![]),
            },
        },
        ClientEvent::SessionUpdate {
            event_id: None,
            session: SessionUpdate {
                delegation: Some(DelegationUpdate::Client {
                    acknowledgement_delay_ms: Some(100),
                }),
                triggers: None,
            },
        },
        ClientEvent::InputAudioAppend {
            event_id: None,
            audio: "//////8=".into(),
        },
        ClientEvent::InputAudioAppend {
            event_id: Some("a1".into()),
            audio: "//8=".into(),
        },
        ClientEvent::InputAudioMute { event_id: None },
        ClientEvent::InputAudioUnmute {
            event_id: Some("m".into()),
        },
        ClientEvent::CommentaryAppend {
            event_id: None,
            content: "Greet the caller now.".into(),
            delegation_id: None,
        },
        ClientEvent::CommentaryAppend {
            event_id: Some("c".into()),
            content: "Order 42 shipped.".into(),
            delegation_id: Some("dlg_1".into()),
        },
        ClientEvent::ThinkingAppend {
            event_id: None,
            content: "The caller pressed 1.".into(),
            delegation_id: None,
        },
        ClientEvent::InstructionsAppend {
            event_id: None,
            content: "From now on you are Billing.".into(),
            delegation_id: None,
        },
        ClientEvent::ResponseItemCreate {
            event_id: Some("out_1".into()),
            item: ResponseItem::FunctionCallOutput {
                call_id: "call_abc".into(),
                output: "{\"status\":\"shipped\"}".into(),
            },
        },
        ClientEvent::ResponseCreate { event_id: None },
        ClientEvent::SessionClose {
            event_id: Some("bye".into()),
        },
    ]);
    evs
}

#[test]
fn every_client_event_is_strictly_schema_valid() {
    let s = LiveSchemas::load();
    let evs = every_client_event();
    for ev in &evs {
        let j = v(ev);
        assert_eq!(j["type"], ev.event_type());
        s.assert_client_event(&j);
        // And it reads back as the same event (what the fake server does with it).
        assert_eq!(&ClientEvent::parse(&ev.to_json()).unwrap(), ev);
    }
}

fn fails(s: &LiveSchemas, mut j: Value, edit: impl FnOnce(&mut Value)) {
    edit(&mut j);
    assert!(
        !s.client.errors(&j).is_empty(),
        "the strict schema accepted {j}"
    );
}

#[test]
fn the_validator_bites() {
    let s = LiveSchemas::load();
    let start = v(&ClientEvent::SessionStart {
        event_id: None,
        session: SessionSettings::new("gpt-live-1").voice("marin").tools(
            "gpt-5.6-luna",
            None,
            vec![tool()],
        ),
    });
    s.assert_client_event(&start);
    // Realtime-style fields the brief says are refused (§2.1).
    fails(&s, start.clone(), |j| {
        j["session"]["turn_detection"] = json!({"type":"server_vad"})
    });
    fails(&s, start.clone(), |j| {
        j["session"]["voice"] = json!("marin")
    });
    fails(&s, start.clone(), |j| j["session"]["tools"] = json!([]));
    fails(&s, start.clone(), |j| {
        j["session"]["audio"]["output"]["voyce"] = json!("marin")
    });
    fails(&s, start.clone(), |j| {
        j["session"]["delegation"]["responses"]["tools"][0]["nmae"] = json!("x")
    });
    fails(&s, start.clone(), |j| {
        j["session"]["audio"]["format"] = json!({"type":"audio/pcmu"})
    });
    fails(&s, start.clone(), |j| j["sesion"] = j["session"].take());
    fails(&s, start, |j| {
        j["session"]["delegation"]["responses"]
            .as_object_mut()
            .unwrap()
            .remove("model");
    });
    let append = v(&ClientEvent::InputAudioAppend {
        event_id: None,
        audio: "//8=".into(),
    });
    fails(&s, append, |j| {
        j["type"] = json!("input_audio_buffer.append")
    });
    for bad in examples()["client_invalid"].as_array().unwrap() {
        assert!(
            !s.client.errors(&bad["event"]).is_empty(),
            "accepted: {}",
            bad["why"]
        );
    }
}

#[test]
fn example_client_events_are_valid_and_the_typed_ones_round_trip() {
    let s = LiveSchemas::load();
    let ex = examples();
    for ev in ex["client_valid"].as_array().unwrap() {
        s.client.assert_valid(ev);
        let ty = ev["type"].as_str().unwrap();
        if ty == "session.output_audio.fixture.play" {
            continue; // not sent by the bridge, not typed (send it raw)
        }
        let parsed = ClientEvent::parse(&ev.to_string())
            .unwrap_or_else(|e| panic!("{ty} does not parse: {e}"));
        let back: Value = serde_json::from_str(&parsed.to_json()).unwrap();
        assert_eq!(&back, ev, "{ty} does not round-trip");
    }
}

#[test]
fn example_server_events_parse_typed() {
    let s = LiveSchemas::load();
    let ex = examples();
    for ev in ex["server_valid"].as_array().unwrap() {
        s.server.assert_valid(ev);
        let text = ev.to_string();
        let parsed = ServerEvent::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(
            !matches!(parsed, ServerEvent::Unknown(_)),
            "{} is not typed",
            ev["type"]
        );
        assert_eq!(parsed.event_type(), ev["type"].as_str().unwrap());
        // What the fake server writes from the typed event is valid too.
        let again: Value = serde_json::from_str(&parsed.to_json()).unwrap();
        s.server.assert_valid(&again);
    }
    for bad in ex["server_invalid"].as_array().unwrap() {
        assert!(
            !s.server.errors(&bad["event"]).is_empty(),
            "accepted: {}",
            bad["why"]
        );
    }
    // A function call found in a response.event, as the brief's example (§6.3).
    let rev = ex["server_valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "response.event")
        .unwrap();
    let ServerEvent::ResponseEvent(env) = ServerEvent::parse(&rev.to_string()).unwrap() else {
        panic!()
    };
    let call = env.function_call().unwrap();
    assert_eq!(
        (call.call_id.as_str(), call.name.as_str()),
        ("call_abc", "lookup_order")
    );
}

#[test]
fn unknown_server_events_are_kept_whole() {
    let text = r#"{"type":"session.brand_new","event_id":"e","x":{"y":1}}"#;
    let ev = ServerEvent::parse(text).unwrap();
    assert_eq!(
        ev,
        ServerEvent::Unknown(serde_json::from_str(text).unwrap())
    );
    assert_eq!(ev.event_type(), "session.brand_new");
}
