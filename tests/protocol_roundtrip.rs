//! Round trips of every Twilio message shape and every typed Realtime server event, from
//! realistic JSON (string numerics, extra fields), plus each parse error.

use serde_json::{json, Value};
use twilio_realtime::proto::realtime::{ClientEvent, ModelError, ServerEvent};
use twilio_realtime::proto::twilio::{TwilioCommand, TwilioError, TwilioMessage};

fn same(a: &str, b: &Value) {
    let a: Value = serde_json::from_str(a).unwrap();
    assert_eq!(&a, b);
}

#[test]
fn every_twilio_message_round_trips() {
    let sid = "MZ18ad3ab5a668481ce02b83e7395059f0";
    let msgs = [
        json!({"event":"connected","protocol":"Call","version":"1.0.0"}),
        json!({"event":"start","sequenceNumber":"1","streamSid":sid,"start":{"accountSid":"AC123","streamSid":sid,"callSid":"CA123","tracks":["inbound"],"customParameters":{"caller":"+15550100","token":"t"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}),
        json!({"event":"media","sequenceNumber":"3","streamSid":sid,"media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"/////w=="}}),
        json!({"event":"dtmf","streamSid":sid,"sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}),
        json!({"event":"mark","sequenceNumber":"4","streamSid":sid,"mark":{"name":"0:0:800:item_1"}}),
        json!({"event":"stop","sequenceNumber":"5","streamSid":sid,"stop":{"accountSid":"AC123","callSid":"CA123"}}),
    ];
    let names = ["connected", "start", "media", "dtmf", "mark", "stop"];
    for (m, name) in msgs.iter().zip(names) {
        let parsed = TwilioMessage::parse(&m.to_string()).unwrap();
        assert_eq!(parsed.event_name(), name);
        assert!(!matches!(parsed, TwilioMessage::Unknown(_)));
        same(&parsed.to_json(), m);
        if name != "connected" {
            assert_eq!(parsed.stream_sid(), Some(sid));
        }
    }
    // string numerics stay strings and parse on demand
    let TwilioMessage::Media(media) = TwilioMessage::parse(&msgs[2].to_string()).unwrap() else {
        panic!()
    };
    assert_eq!(media.sequence_number.as_deref(), Some("3"));
    assert_eq!(
        (media.media.chunk_number(), media.media.timestamp_ms()),
        (Some(1), Some(5))
    );
    let TwilioMessage::Start(start) = TwilioMessage::parse(&msgs[1].to_string()).unwrap() else {
        panic!()
    };
    assert_eq!(start.start.custom_parameters["caller"], "+15550100");
    assert_eq!(start.start.media_format.sample_rate, 8000);
}

#[test]
fn twilio_tolerates_extra_fields_and_numbers_and_keeps_unknown_events() {
    let m = json!({"event":"media","sequenceNumber":3,"streamSid":"MZ1","extra":{"a":1},
        "media":{"track":"inbound","chunk":7,"timestamp":160,"payload":"//8=","new_field":true}});
    let TwilioMessage::Media(media) = TwilioMessage::parse(&m.to_string()).unwrap() else {
        panic!()
    };
    assert_eq!(media.media.timestamp.as_deref(), Some("160"));
    assert_eq!(media.media.chunk_number(), Some(7));
    let u = json!({"event":"transcription","streamSid":"MZ1","text":"hi"});
    match TwilioMessage::parse(&u.to_string()).unwrap() {
        TwilioMessage::Unknown(v) => assert_eq!(v, u),
        other => panic!("{other:?}"),
    }
}

#[test]
fn twilio_errors_say_what_was_wrong() {
    assert!(matches!(
        TwilioMessage::parse("not json"),
        Err(TwilioError::Json { .. })
    ));
    assert!(matches!(
        TwilioMessage::parse("[1,2]"),
        Err(TwilioError::Json { .. })
    ));
    assert!(matches!(
        TwilioMessage::parse(r#"{"streamSid":"x"}"#),
        Err(TwilioError::MissingEvent)
    ));
    let e =
        TwilioMessage::parse(r#"{"event":"media","streamSid":"x","media":{"track":"inbound"}}"#)
            .unwrap_err();
    assert!(matches!(&e, TwilioError::InvalidMessage { event, .. } if event == "media"));
    assert!(e.to_string().contains("payload"), "{e}");
    let e = TwilioMessage::parse(r#"{"event":"mark","mark":{}}"#).unwrap_err();
    assert!(matches!(e, TwilioError::InvalidMessage { .. }));
}

#[test]
fn twilio_commands_round_trip_and_need_a_stream_sid() {
    let cmds = [
        TwilioCommand::Media {
            stream_sid: "MZ1".into(),
            payload: "//8=".into(),
        },
        TwilioCommand::Mark {
            stream_sid: "MZ1".into(),
            name: "1:0:done:item_x".into(),
        },
        TwilioCommand::Clear {
            stream_sid: "MZ1".into(),
        },
    ];
    let wire = [
        json!({"event":"media","streamSid":"MZ1","media":{"payload":"//8="}}),
        json!({"event":"mark","streamSid":"MZ1","mark":{"name":"1:0:done:item_x"}}),
        json!({"event":"clear","streamSid":"MZ1"}),
    ];
    for (c, w) in cmds.iter().zip(&wire) {
        same(&c.to_json(), w);
        assert_eq!(&TwilioCommand::parse(&w.to_string()).unwrap(), c);
    }
    for bad in [
        json!({"event":"media","media":{"payload":"x"}}),
        json!({"event":"media","streamSid":null,"media":{"payload":"x"}}),
        json!({"event":"clear","streamSid":""}),
        json!({"event":"mark","streamSid":"MZ1"}),
        json!({"event":"play","streamSid":"MZ1"}),
    ] {
        assert!(TwilioCommand::parse(&bad.to_string()).is_err(), "{bad}");
    }
}

fn server_fixtures() -> Vec<Value> {
    let item_msg = json!({"id":"item_1","object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":"Hello there"}]});
    let fc = json!({"id":"item_2","object":"realtime.item","type":"function_call","status":"completed","name":"get_weather","call_id":"call_1","arguments":"{\"location\":\"Paris\"}"});
    let resp = json!({"id":"resp_1","object":"realtime.response","status":"completed","status_details":null,"output":[item_msg.clone()],"usage":{"total_tokens":10},"metadata":null});
    vec![
        json!({"type":"session.created","event_id":"event_1","session":{"type":"realtime","id":"sess_1","model":"gpt-realtime","audio":{"input":{"format":{"type":"audio/pcm","rate":24000}}}}}),
        json!({"type":"session.updated","event_id":"event_2","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}}}}}),
        json!({"type":"error","event_id":"event_3","error":{"type":"invalid_request_error","code":"invalid_value","message":"Audio content of 900 ms is already shorter than 1000 ms","param":null,"event_id":"ev_client"}}),
        json!({"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":1000,"item_id":"item_3"}),
        json!({"type":"input_audio_buffer.speech_stopped","event_id":"e","audio_end_ms":2000,"item_id":"item_3"}),
        json!({"type":"input_audio_buffer.committed","event_id":"e","previous_item_id":null,"item_id":"item_3"}),
        json!({"type":"input_audio_buffer.cleared","event_id":"e"}),
        json!({"type":"input_audio_buffer.timeout_triggered","event_id":"e","audio_start_ms":1,"audio_end_ms":6000,"item_id":"item_4"}),
        json!({"type":"conversation.item.added","event_id":"e","previous_item_id":"item_0","item":item_msg}),
        json!({"type":"conversation.item.done","event_id":"e","previous_item_id":null,"item":fc}),
        json!({"type":"conversation.item.created","event_id":"e","previous_item_id":null,"item":{"id":"item_5","type":"message","role":"user","content":[{"type":"input_audio","transcript":null}]}}),
        json!({"type":"conversation.item.retrieved","event_id":"e","item":{"id":"item_5","type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}}),
        json!({"type":"conversation.item.truncated","event_id":"e","item_id":"item_1","content_index":0,"audio_end_ms":1500}),
        json!({"type":"conversation.item.deleted","event_id":"e","item_id":"item_1"}),
        json!({"type":"conversation.item.input_audio_transcription.delta","event_id":"e","item_id":"item_3","content_index":0,"delta":"Hel","obfuscation":"x"}),
        json!({"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":"item_3","content_index":0,"transcript":"Hello","usage":{"type":"duration","seconds":1}}),
        json!({"type":"conversation.item.input_audio_transcription.failed","event_id":"e","item_id":"item_3","content_index":0,"error":{"type":"transcription_error","code":"audio_unintelligible","message":"x","param":null}}),
        json!({"type":"conversation.item.input_audio_transcription.segment","event_id":"e","item_id":"item_3","content_index":0,"id":"seg_1","text":"Hello","speaker":"A","start":0.0,"end":0.5}),
        json!({"type":"response.created","event_id":"e","response":{"id":"resp_1","object":"realtime.response","status":"in_progress","output":[]}}),
        json!({"type":"response.done","event_id":"e","response":resp}),
        json!({"type":"response.output_item.added","event_id":"e","response_id":"resp_1","output_index":0,"item":{"id":"item_1","type":"message","role":"assistant","status":"in_progress","content":[]}}),
        json!({"type":"response.output_item.done","event_id":"e","response_id":"resp_1","output_index":1,"item":fc}),
        json!({"type":"response.content_part.added","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"part":{"type":"audio","transcript":""}}),
        json!({"type":"response.content_part.done","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"part":{"type":"audio","transcript":"Hello there"}}),
        json!({"type":"response.output_audio.delta","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"/////w=="}),
        json!({"type":"response.output_audio.done","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0}),
        json!({"type":"response.output_audio_transcript.delta","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"Hel","obfuscation":"abc"}),
        json!({"type":"response.output_audio_transcript.done","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"transcript":"Hello there"}),
        json!({"type":"response.output_text.delta","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"Hi"}),
        json!({"type":"response.output_text.done","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"text":"Hi"}),
        json!({"type":"response.function_call_arguments.delta","event_id":"e","response_id":"resp_1","item_id":"item_2","output_index":1,"call_id":"call_1","delta":"{\"loc"}),
        json!({"type":"response.function_call_arguments.done","event_id":"e","response_id":"resp_1","item_id":"item_2","output_index":1,"call_id":"call_1","name":"get_weather","arguments":"{\"location\":\"Paris\"}"}),
        json!({"type":"rate_limits.updated","event_id":"e","rate_limits":[{"name":"requests","limit":1000,"remaining":999,"reset_seconds":60}]}),
    ]
}

/// Removes `null`s and fields the typed event does not carry, to compare round trips.
fn known_subset(original: &Value, back: &Value) -> bool {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => b.iter().all(|(k, bv)| match o.get(k) {
            Some(ov) => known_subset(ov, bv),
            // defaults the typed event filled in are fine when "empty"
            None => bv.is_null() || bv == &json!("") || bv == &json!([]) || bv == &json!(0),
        }),
        (Value::Array(o), Value::Array(b)) => {
            o.len() == b.len() && o.iter().zip(b).all(|(x, y)| known_subset(x, y))
        }
        (o, b) => o == b,
    }
}

#[test]
fn every_typed_server_event_round_trips() {
    let fixtures = server_fixtures();
    let mut types = std::collections::BTreeSet::new();
    for f in &fixtures {
        let ev = ServerEvent::parse(&f.to_string()).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(
            !matches!(ev, ServerEvent::Unknown(_)),
            "{} should be typed",
            f["type"]
        );
        assert_eq!(ev.event_type(), f["type"]);
        types.insert(ev.event_type().to_owned());
        let back: Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert!(known_subset(f, &back), "round trip of {f}\n gave {back}");
        // the re-serialized event parses to the same value
        assert_eq!(ServerEvent::parse(&back.to_string()).unwrap(), ev);
    }
    assert_eq!(types.len(), fixtures.len(), "one fixture per typed event");
}

#[test]
fn typed_fields_are_read() {
    let f = server_fixtures();
    match ServerEvent::parse(&f[2].to_string()).unwrap() {
        ServerEvent::Error(e) => {
            assert_eq!(e.error.code.as_deref(), Some("invalid_value"));
            assert_eq!(e.error.event_id.as_deref(), Some("ev_client"));
        }
        o => panic!("{o:?}"),
    }
    match ServerEvent::parse(&f[19].to_string()).unwrap() {
        ServerEvent::ResponseDone(r) => {
            assert_eq!(r.response.id, "resp_1");
            assert_eq!(r.response.output[0].text().as_deref(), Some("Hello there"));
        }
        o => panic!("{o:?}"),
    }
    match ServerEvent::parse(&f[21].to_string()).unwrap() {
        ServerEvent::OutputItemDone(o) => {
            assert_eq!(o.item.kind, "function_call");
            assert_eq!(
                o.item.arguments.as_deref(),
                Some("{\"location\":\"Paris\"}")
            );
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn unknown_server_events_are_kept_whole() {
    let u = json!({"type":"response.mcp_call.in_progress","event_id":"e","item_id":"x","output_index":0});
    match ServerEvent::parse(&u.to_string()).unwrap() {
        ServerEvent::Unknown(v) => assert_eq!(v, u),
        o => panic!("{o:?}"),
    }
    let ev = ServerEvent::parse(&u.to_string()).unwrap();
    assert_eq!(ev.event_type(), "response.mcp_call.in_progress");
}

#[test]
fn model_parse_errors() {
    assert!(matches!(
        ServerEvent::parse("{"),
        Err(ModelError::Json { .. })
    ));
    assert!(matches!(
        ServerEvent::parse("\"str\""),
        Err(ModelError::Json { .. })
    ));
    assert!(matches!(
        ServerEvent::parse(r#"{"event_id":"x"}"#),
        Err(ModelError::MissingType)
    ));
    let e = ServerEvent::parse(r#"{"type":"response.output_audio.delta","delta":5}"#).unwrap_err();
    assert!(
        matches!(&e, ModelError::InvalidEvent { event_type, .. } if event_type == "response.output_audio.delta")
    );
    let e = ServerEvent::parse(r#"{"type":"conversation.item.truncated","audio_end_ms":"x"}"#)
        .unwrap_err();
    assert!(e.to_string().contains("conversation.item.truncated"));
    assert!(matches!(
        ClientEvent::parse(r#"{"type":"nope"}"#),
        Err(ModelError::InvalidEvent { .. })
    ));
    assert!(matches!(
        ClientEvent::parse(r#"{"audio":"x"}"#),
        Err(ModelError::MissingType)
    ));
}

#[test]
fn fast_writers_match_serde() {
    use twilio_realtime::proto::realtime::write_append_json;
    for audio in ["//8=", "", "we\"ird\\\n"] {
        let mut s = String::new();
        write_append_json(&mut s, audio);
        let a: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(a, json!({"type":"input_audio_buffer.append","audio":audio}));
        let ev = ClientEvent::InputAudioBufferAppend {
            event_id: None,
            audio: audio.into(),
        };
        assert_eq!(ClientEvent::parse(&s).unwrap(), ev);
    }
    let mut s = String::new();
    twilio_realtime::proto::twilio::write_media_json(&mut s, "MZ\"1", "a/b+");
    let v: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        v,
        json!({"event":"media","streamSid":"MZ\"1","media":{"payload":"a/b+"}})
    );
}

#[test]
fn session_settings_round_trips_and_defaults_to_pcmu_and_empty_tools() {
    use twilio_realtime::proto::realtime::{SessionSettings, TurnDetection};
    let ev = ClientEvent::SessionUpdate {
        event_id: None,
        session: SessionSettings::new()
            .instructions("x")
            .turn_detection(TurnDetection::Disabled),
    };
    let j: Value = serde_json::from_str(&ev.to_json()).unwrap();
    assert_eq!(
        j,
        json!({"type":"session.update","session":{"type":"realtime","instructions":"x",
            "audio":{"input":{"format":{"type":"audio/pcmu"},"turn_detection":null},
                     "output":{"format":{"type":"audio/pcmu"}}},"tools":[]}})
    );
    assert_eq!(ClientEvent::parse(&j.to_string()).unwrap(), ev);
    let SessionSettings { .. } = SessionSettings::new();
    assert!(!SessionSettings::new()
        .turn_detection(TurnDetection::Disabled)
        .interrupt_response());
    assert!(SessionSettings::new().interrupt_response());
}
