//! The SIP webhook's signature against the vector openai-python's own verifier produced
//! (`spec/webhook-vector.json`), the payload types, and the accept/reject/refer bodies against
//! the official schemas (`spec/openai-realtime-schemas.json`).

mod common;

use base64::Engine;
use serde_json::Value;
use twilio_realtime::agent::{Agent, FunctionTool};
use twilio_realtime::proto::realtime::{
    NoiseReduction, SessionSettings, Transcription, TurnDetection,
};
use twilio_realtime::proto::sip::{
    accept_body, refer_body, reject_body, sign, sip_session, verify, SipConfigError, WebhookError,
    WebhookEvent, WebhookSecret,
};

fn vector() -> Value {
    let path = common::spec_dir().join("webhook-vector.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must be vendored: {e}", path.display()));
    serde_json::from_str(&text).expect("vector is JSON")
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// What the SDK's error message for a case maps to.
fn expected_error(sdk_error: &str) -> WebhookError {
    match sdk_error {
        "Webhook timestamp is too old" => WebhookError::TooOld,
        "Webhook timestamp is too new" => WebhookError::TooNew,
        "The given webhook signature does not match the expected signature" => {
            WebhookError::NoMatch
        }
        "ValueError: Could not find webhook-id header" => WebhookError::MissingHeader("webhook-id"),
        "Invalid webhook timestamp format" => WebhookError::InvalidTimestamp,
        other => panic!("unmapped SDK error {other:?}"),
    }
}

#[test]
fn every_vector_case_matches_the_official_verifier() {
    let v = vector();
    let cases = v["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 15, "the vector has 15 cases");
    let (mut valid, mut invalid) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let secret = WebhookSecret::new(case["secret"].as_str().unwrap()).unwrap();
        let body = b64(case["body_b64"].as_str().unwrap());
        let headers: Vec<(&str, &str)> = case["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let now = case["now"].as_i64().unwrap();
        let got = verify(&secret, &headers, &body, now);
        if case["expect_valid"].as_bool().unwrap() {
            valid += 1;
            let ok = got.unwrap_or_else(|e| panic!("{name}: refused: {e}"));
            let id = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("webhook-id"))
                .unwrap()
                .1;
            assert_eq!(ok.webhook_id, id, "{name}");
        } else {
            invalid += 1;
            let want = expected_error(case["sdk_error"].as_str().unwrap());
            assert_eq!(got, Err(want), "{name}");
        }
    }
    assert!(
        valid >= 5 && invalid >= 5,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn sign_reproduces_the_vector_signature() {
    let v = vector();
    let ex = &v["example"];
    let secret = WebhookSecret::new(v["secret"].as_str().unwrap()).unwrap();
    let ts: i64 = ex["webhook_timestamp"].as_str().unwrap().parse().unwrap();
    let sig = sign(
        &secret,
        ex["webhook_id"].as_str().unwrap(),
        ts,
        ex["body"].as_str().unwrap().as_bytes(),
    );
    assert_eq!(sig, "v1,a37vO6ulTYhsz29kyZlKvIlUpOEQjdU1TnfZayOLmQs=");
    let live = &v["live_example"];
    let ts: i64 = live["webhook_timestamp"].as_str().unwrap().parse().unwrap();
    let sig = sign(
        &secret,
        live["webhook_id"].as_str().unwrap(),
        ts,
        live["body"].as_str().unwrap().as_bytes(),
    );
    assert_eq!(sig, "v1,h3FBzA5VOdi8dM7MynLogk9nhYMOvHIWQ1kDPRGNRu4=");
}

fn signed(secret: &WebhookSecret, ts: i64, body: &[u8]) -> (String, String) {
    (ts.to_string(), sign(secret, "wh_x", ts, body))
}

#[test]
fn tolerance_edges_and_rotation() {
    let secret = WebhookSecret::new("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let other = WebhookSecret::new("whsec_AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap();
    let body = br#"{"a":1}"#;
    let ts = 1_000_000;
    let (t, sig) = signed(&secret, ts, body);
    let check = |sigs: &str, now: i64| {
        verify(
            &secret,
            &[
                ("webhook-id", "wh_x"),
                ("webhook-timestamp", t.as_str()),
                ("webhook-signature", sigs),
            ],
            body,
            now,
        )
    };
    assert!(check(&sig, ts + 300).is_ok());
    assert_eq!(check(&sig, ts + 301), Err(WebhookError::TooOld));
    assert!(check(&sig, ts - 300).is_ok());
    assert_eq!(check(&sig, ts - 301), Err(WebhookError::TooNew));
    // Rotation: the old secret's and the new one's signatures, either order, extra spaces.
    let (_, old) = signed(&other, ts, body);
    assert!(check(&format!("{old} {sig}"), ts).is_ok());
    assert!(check(&format!("  {sig}\t{old} "), ts).is_ok());
    assert_eq!(check(&old, ts), Err(WebhookError::NoMatch));
    assert_eq!(check("", ts), Err(WebhookError::NoMatch));
    assert_eq!(check("v1,not base64!", ts), Err(WebhookError::NoMatch));
    // A truncated tag does not match (the comparison is over the whole MAC).
    let short = &sig[..sig.len() - 8];
    assert_eq!(check(short, ts), Err(WebhookError::NoMatch));
}

#[test]
fn tampering_with_id_timestamp_or_body_fails() {
    let secret = WebhookSecret::new("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let body = br#"{"a":1}"#;
    let sig = sign(&secret, "wh_x", 1000, body);
    let run = |id: &str, ts: &str, body: &[u8]| {
        verify(
            &secret,
            &[
                ("webhook-id", id),
                ("webhook-timestamp", ts),
                ("webhook-signature", sig.as_str()),
            ],
            body,
            1000,
        )
    };
    assert!(run("wh_x", "1000", body).is_ok());
    assert_eq!(run("wh_y", "1000", body), Err(WebhookError::NoMatch));
    assert_eq!(run("wh_x", "+1000", body), Err(WebhookError::NoMatch));
    assert_eq!(
        run("wh_x", "1000", br#"{"a":2}"#),
        Err(WebhookError::NoMatch)
    );
    assert_eq!(run("wh_x", "1000", b"\xff"), Err(WebhookError::BodyNotUtf8));
    assert_eq!(
        verify(&secret, &[("webhook-id", "wh_x")], body, 1000),
        Err(WebhookError::MissingHeader("webhook-signature"))
    );
}

#[test]
fn the_incoming_call_payload_is_typed() {
    let v = vector();
    let ev = WebhookEvent::parse(v["example"]["body"].as_str().unwrap().as_bytes()).unwrap();
    let WebhookEvent::CallIncoming(call) = ev else {
        panic!("not a call: {ev:?}")
    };
    assert_eq!(call.call_id, "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce");
    assert_eq!(call.event_id, "evt_685343a1381c819085d44c354e1b330e");
    assert_eq!(call.created_at, 1750287018);
    assert_eq!(call.sip_media_security.as_deref(), Some("srtp"));
    assert_eq!(call.to_header(), Some("sip:+18005551212@sip.example.com"));
    assert!(call.from_header().unwrap().contains("+142555512112"));
    assert_eq!(
        call.header("call-id"),
        Some("03782086-4ce9-44bf-8b0d-4e303d2cc590")
    );
    let live = WebhookEvent::parse(v["live_example"]["body"].as_str().unwrap().as_bytes()).unwrap();
    assert!(
        matches!(&live, WebhookEvent::Other { kind, .. } if kind == "live.transport.incoming"),
        "{live:?}"
    );
    for bad in [
        &b"not json"[..],
        br#"{"type":"realtime.call.incoming","id":"e","created_at":1,"data":{}}"#,
        br#"{"type":"realtime.call.incoming","id":"e","created_at":1,"data":{"call_id":7,"sip_headers":[]}}"#,
        br#"{"id":"e","created_at":1}"#,
    ] {
        assert!(
            matches!(WebhookEvent::parse(bad), Err(WebhookError::Payload(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn the_webhook_payload_conforms_to_the_official_schema() {
    let schemas = common::Schemas::load();
    let v = vector();
    let mut body: Value = serde_json::from_str(v["example"]["body"].as_str().unwrap()).unwrap();
    // `data.sip_media_security` is newer than the vendored OpenAPI schema (openapi.json of
    // 2026-08-21 closes `data` without it; openai-python 3.57.0 declares it optional, brief
    // §3.1): the schema refuses it, and without it the payload is valid.
    assert!(!schemas
        .errors("WebhookRealtimeCallIncoming", &body)
        .is_empty());
    body["data"]
        .as_object_mut()
        .unwrap()
        .remove("sip_media_security");
    schemas.assert_valid("WebhookRealtimeCallIncoming", &body);
    // The parser does not need it either.
    let WebhookEvent::CallIncoming(call) =
        WebhookEvent::parse(body.to_string().as_bytes()).unwrap()
    else {
        panic!("not a call")
    };
    assert_eq!(call.sip_media_security, None);
}

fn agent() -> Agent {
    let billing = Agent::new("Billing", "You handle billing.").handoff_description("billing");
    Agent::new("Concierge", "You are a concierge.")
        .voice("marin")
        .tool(FunctionTool::new(
            "lookup_order",
            "Look an order up",
            serde_json::json!({"type":"object","properties":{"order_id":{"type":"string"}}}),
            |_call: &twilio_realtime::agent::ToolCall| Ok("shipped".to_string()),
        ))
        .handoff(&billing)
        .can_hang_up()
}

#[test]
fn accept_bodies_validate_against_the_official_schema() {
    let schemas = common::Schemas::load();
    let bases = [
        SessionSettings::new(),
        SessionSettings::new().turn_detection(TurnDetection::SemanticVad {
            eagerness: Some("auto".into()),
            create_response: Some(true),
            interrupt_response: Some(true),
        }),
        SessionSettings::new()
            .turn_detection(TurnDetection::ServerVad {
                threshold: None,
                prefix_padding_ms: None,
                silence_duration_ms: None,
                create_response: Some(true),
                interrupt_response: Some(true),
                idle_timeout_ms: Some(6000),
            })
            .transcription(Transcription {
                model: Some("gpt-4o-mini-transcribe".into()),
                ..Default::default()
            })
            .noise_reduction(NoiseReduction::FarField)
            .speed(1.1),
        SessionSettings::new().turn_detection(TurnDetection::Disabled),
    ];
    for base in &bases {
        let body = accept_body(&agent(), base, "gpt-realtime").unwrap();
        schemas.assert_valid("RealtimeSessionCreateRequestGA", &body);
        assert_eq!(body["type"], "realtime");
        assert_eq!(body["model"], "gpt-realtime");
        assert_eq!(body["instructions"], "You are a concierge.");
        assert_eq!(body["audio"]["output"]["voice"], "marin");
        // No audio format on SIP (brief §4.1): the codec is negotiated in SDP.
        assert!(body["audio"]["input"].get("format").is_none(), "{body}");
        assert!(body["audio"]["output"].get("format").is_none(), "{body}");
        let names: Vec<&str> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"lookup_order"), "{names:?}");
        assert!(names.contains(&"transfer_to_billing"), "{names:?}");
        assert!(names.contains(&"end_call"), "{names:?}");
    }
    // And a sideband session.update carrying the same configuration.
    let update = serde_json::json!({
        "type": "session.update",
        "session": sip_session(&SessionSettings::new().instructions("x")).unwrap(),
    });
    schemas.assert_client_event(&update);
}

#[test]
fn sip_refused_vad_fields_fail_fast() {
    for (field, td) in [
        (
            "threshold",
            TurnDetection::ServerVad {
                threshold: Some(0.5),
                prefix_padding_ms: None,
                silence_duration_ms: None,
                create_response: None,
                interrupt_response: None,
                idle_timeout_ms: None,
            },
        ),
        (
            "prefix_padding_ms",
            TurnDetection::ServerVad {
                threshold: None,
                prefix_padding_ms: Some(300),
                silence_duration_ms: None,
                create_response: None,
                interrupt_response: None,
                idle_timeout_ms: None,
            },
        ),
        (
            "silence_duration_ms",
            TurnDetection::ServerVad {
                threshold: None,
                prefix_padding_ms: None,
                silence_duration_ms: Some(500),
                create_response: None,
                interrupt_response: None,
                idle_timeout_ms: None,
            },
        ),
    ] {
        let got = accept_body(&agent(), &SessionSettings::new().turn_detection(td), "m");
        assert_eq!(
            got,
            Err(SipConfigError::UnsupportedTurnDetectionField(field))
        );
    }
}

#[test]
fn reject_and_refer_bodies_conform() {
    let schemas = common::Schemas::load();
    schemas.assert_valid("RealtimeCallRejectRequest", &reject_body(486));
    schemas.assert_valid("RealtimeCallRejectRequest", &reject_body(603));
    schemas.assert_valid("RealtimeCallReferRequest", &refer_body("tel:+14155550123"));
    assert!(!schemas
        .errors("RealtimeCallReferRequest", &serde_json::json!({}))
        .is_empty());
}
