//! The call core's GPT-Live rules, one test each, with an injected clock (no sockets). Every
//! GPT-Live client event the core emits is validated against the vendored client schema,
//! strictly, as it comes out.

mod common;

use std::time::{Duration, Instant};

use common::live::LiveSchemas;
use common::{audio_b64, session_events};
use serde_json::{json, Value};
use twilio_realtime::agent::{Agent, FunctionTool, OutputGuardrail, Verdict};
use twilio_realtime::call::live::LiveConfig;
use twilio_realtime::call::{CallConfig, CallCore, Command, Greeting, Input, ModelApi, Output};
use twilio_realtime::events::{CloseReason, SessionEvent};
use twilio_realtime::proto::live::{ServerEvent, SessionCloseReason};
use twilio_realtime::proto::realtime::ResponseConfig;
use twilio_realtime::proto::twilio::{TwilioCommand, TwilioMessage};
use twilio_realtime::CallError;

const SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

struct H {
    core: CallCore,
    now: Instant,
    out: Vec<Output>,
    schemas: LiveSchemas,
    /// Marks sent to Twilio and not echoed yet.
    unechoed: Vec<String>,
}

impl H {
    fn with(agent: Agent, opts: CallConfig) -> H {
        let now = Instant::now();
        let mut opts = opts;
        opts.model_api = ModelApi::Live(LiveConfig::default());
        H {
            core: CallCore::new(agent, opts, now),
            now,
            out: vec![],
            schemas: LiveSchemas::load(),
            unechoed: vec![],
        }
    }

    /// Connected, `session.started` with µ-law 8 kHz, Twilio started; outputs drained.
    fn ready(agent: Agent, opts: CallConfig) -> H {
        let mut h = H::with(agent, opts);
        h.core.handle_input(h.now, Input::ModelConnected);
        h.started(json!({"type":"audio/pcmu","rate":8000}));
        h.start();
        h.drain();
        h
    }

    fn started(&mut self, format: Value) {
        self.model(json!({"type":"session.started","event_id":"e1","client_event_id":"live_start_1",
            "session":{"id":"live_abc","expires_at":1790000000,"model":"gpt-live-1","status":"active",
                "audio":{"format":format,"output":{"voice":"marin"}}}}));
    }

    fn ms(&mut self, n: u64) {
        self.now += Duration::from_millis(n);
    }

    fn model(&mut self, v: Value) {
        let ev = ServerEvent::parse(&v.to_string()).expect("valid server event");
        self.core.handle_input(self.now, Input::LiveModel(ev));
        self.collect();
    }

    fn start(&mut self) {
        let m = TwilioMessage::parse(&json!({"event":"start","sequenceNumber":"1","streamSid":SID,"start":{
            "accountSid":"AC123","streamSid":SID,"callSid":"CA123","tracks":["inbound"],
            "customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}).to_string())
        .unwrap();
        self.core.handle_input(self.now, Input::Twilio(m));
        self.collect();
    }

    fn mark(&mut self, name: &str) {
        let m = TwilioMessage::parse(
            &json!({"event":"mark","sequenceNumber":"9","streamSid":SID,"mark":{"name":name}})
                .to_string(),
        )
        .unwrap();
        self.core.handle_input(self.now, Input::Twilio(m));
        self.collect();
    }

    /// Echoes every mark sent so far (Twilio played everything).
    fn echo_all(&mut self) {
        while !self.unechoed.is_empty() {
            for name in std::mem::take(&mut self.unechoed) {
                self.mark(&name);
            }
        }
    }

    fn input(&mut self, i: Input) {
        self.core.handle_input(self.now, i);
        self.collect();
    }

    fn tick(&mut self) {
        self.input(Input::Timeout);
    }

    fn collect(&mut self) {
        while let Some(o) = self.core.poll_output() {
            if let Output::LiveModel(ev) = &o {
                let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
                self.schemas.assert_client_event(&v);
            }
            assert!(
                !matches!(o, Output::Model(_)),
                "a GPT-Live call never writes a Realtime event: {o:?}"
            );
            if let Output::Twilio(TwilioCommand::Mark { name, .. }) = &o {
                self.unechoed.push(name.clone());
            }
            self.out.push(o);
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        self.collect();
        std::mem::take(&mut self.out)
    }

    fn audio(&mut self, ms: usize) {
        self.model(json!({"type":"session.output_audio.delta","delta": audio_b64(ms * 8)}));
    }

    fn said(&mut self, text: &str) {
        self.model(json!({"type":"session.output_transcript.delta","event_id":"e","delta":text,"start_ms":0,"end_ms":200}));
    }

    fn backend(&mut self, dlg: &str, ev: Value) {
        self.model(json!({"type":"response.event","event_id":"e","delegation_id":dlg,"event":ev}));
    }

    fn call(&mut self, dlg: &str, call_id: &str, name: &str, args: &str) {
        self.backend(dlg, json!({"type":"response.output_item.done","output_index":1,
            "item":{"type":"function_call","id":"fc","call_id":call_id,"name":name,"arguments":args,"status":"completed"}}));
    }

    fn completed(&mut self, dlg: &str, status: &str) {
        self.backend(
            dlg,
            json!({"type": format!("response.{status}"),"response":{"id":"resp_1","status":status,"output":[]}}),
        );
    }
}

fn live_events(out: &[Output]) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            Output::LiveModel(ev) => Some(serde_json::from_str(&ev.to_json()).unwrap()),
            _ => None,
        })
        .collect()
}

fn types(out: &[Output]) -> Vec<String> {
    live_events(out)
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect()
}

fn media_bytes(out: &[Output]) -> usize {
    out.iter()
        .map(|o| match o {
            Output::Twilio(TwilioCommand::Media { payload, .. }) => {
                twilio_realtime::proto::mulaw::base64_decoded_len(payload)
            }
            _ => 0,
        })
        .sum()
}

fn media_ms(out: &[Output]) -> usize {
    media_bytes(out) / 8
}

fn closed(out: &[Output]) -> Option<CloseReason> {
    session_events(out).into_iter().find_map(|e| match e {
        SessionEvent::Closed { reason } => Some(reason),
        _ => None,
    })
}

fn weather() -> FunctionTool {
    common::weather_tool()
}

#[test]
fn session_start_first_and_ready_only_on_pcmu_8k() {
    let agent = Agent::new("A", "Be brief.").voice("cedar").tool(weather());
    let mut h = H::with(agent, CallConfig::default());
    h.input(Input::ModelConnected);
    let out = h.drain();
    assert_eq!(types(&out), ["session.start"]);
    let start = &live_events(&out)[0];
    assert_eq!(start["session"]["model"], "gpt-live-1");
    assert_eq!(start["session"]["instructions"], "Be brief.");
    assert_eq!(
        start["session"]["audio"]["format"],
        json!({"type":"audio/pcmu","rate":8000})
    );
    assert_eq!(start["session"]["audio"]["output"]["voice"], "cedar");
    assert_eq!(start["session"]["delegation"]["type"], "responses");
    assert_eq!(
        start["session"]["delegation"]["responses"]["tools"][0]["name"],
        "get_weather"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::ModelReady)));
    // Commands before the start wait; audio from the model before it is dropped.
    h.cmd_message("hello");
    h.audio(100);
    assert!(h
        .drain()
        .iter()
        .all(|o| !matches!(o, Output::LiveModel(_) | Output::Twilio(_))));
    h.started(json!({"type":"audio/pcmu","rate":8000}));
    let out = h.drain();
    let ready = out
        .iter()
        .position(|o| matches!(o, Output::ModelReady))
        .expect("ready");
    let thinking = out
        .iter()
        .position(
            |o| matches!(o, Output::LiveModel(ev) if ev.event_type() == "session.thinking.append"),
        )
        .expect("the queued message after ready");
    assert!(ready < thinking);
    assert_eq!(h.core.live_session_id(), Some("live_abc"));
}

impl H {
    fn cmd_message(&mut self, text: &str) {
        self.input(Input::Command(Command::SendMessage(text.into())));
    }
}

#[test]
fn wrong_format_or_an_error_before_start_ends_the_call_without_audio() {
    let mut h = H::with(Agent::new("A", "x"), CallConfig::default());
    h.input(Input::ModelConnected);
    h.drain();
    h.started(json!({"type":"audio/pcm","rate":24000}));
    let out = h.drain();
    assert!(
        matches!(closed(&out), Some(CloseReason::Error(CallError::ModelConfigRejected { param: Some(p), .. })) if p == "session.audio.format")
    );
    assert!(!out.iter().any(|o| matches!(o, Output::ModelReady)));
    assert_eq!(
        types(&out),
        ["session.close"],
        "the session started: it is closed"
    );

    let mut h = H::with(Agent::new("A", "x").voice("fable"), CallConfig::default());
    h.input(Input::ModelConnected);
    h.drain();
    h.model(json!({"type":"error","event_id":"e","client_event_id":"live_start_1","error":{
        "type":"invalid_request_error","code":"forbidden","message":"voice","param":"session.audio.output.voice"}}));
    let out = h.drain();
    assert!(
        matches!(closed(&out), Some(CloseReason::Error(CallError::ModelConfigRejected { param: Some(p), .. })) if p == "session.audio.output.voice")
    );
    assert!(
        types(&out).is_empty(),
        "a session that never started is not closed"
    );
}

#[test]
fn the_pacer_keeps_twilio_shallow_and_never_clears() {
    let mut h = H::ready(Agent::new("A", "x"), CallConfig::default());
    // Two seconds of audio arrive at once (a model faster than real time).
    for _ in 0..20 {
        h.audio(100);
    }
    let out = h.drain();
    let sent = media_ms(&out);
    assert!(
        (120..=170).contains(&sent),
        "only the lead goes out before an echo: {sent} ms"
    );
    // Twilio plays: each echo lets about as much out as it confirms.
    let mut bytes = media_bytes(&out);
    for _ in 0..200 {
        h.ms(20);
        for m in std::mem::take(&mut h.unechoed) {
            h.mark(&m);
        }
        h.tick();
        let out = h.drain();
        bytes += media_bytes(&out);
        assert!(!out
            .iter()
            .any(|o| matches!(o, Output::Twilio(TwilioCommand::Clear { .. }))));
    }
    assert_eq!(bytes, 2000 * 8, "all of it is sent, paced");
    let p99 = h.core.live_lead_quantile(0.99).unwrap();
    assert!(p99 <= 175, "lead p99 {p99} ms");
}

#[test]
fn interrupt_drops_what_is_held_back_and_the_rest_of_the_turn_without_clear() {
    let mut h = H::ready(Agent::new("A", "x"), CallConfig::default());
    h.said(" Hello there");
    for _ in 0..10 {
        h.audio(100);
    }
    h.drain();
    h.input(Input::Command(Command::Interrupt));
    let out = h.drain();
    assert!(session_events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::AudioInterrupted { .. })));
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Twilio(TwilioCommand::Clear { .. }))));
    assert!(live_events(&out).is_empty(), "the model cannot be told");
    // The rest of this turn is dropped; after the turn gap, audio flows again.
    h.audio(100);
    h.echo_all();
    h.tick();
    assert_eq!(media_ms(&h.drain()), 0);
    h.ms(900);
    h.tick();
    let out = h.drain();
    assert!(session_events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::AgentEnd { text, .. } if text == "Hello there")));
    h.audio(100);
    assert!(media_ms(&h.drain()) > 0);
}

#[test]
fn greeting_is_commentary_worded_as_an_instruction() {
    let mut opts = CallConfig::default();
    opts.greeting = Some(Greeting::Say("Hi, this is Ada.".into()));
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.input(Input::ModelConnected);
    h.started(json!({"type":"audio/pcmu","rate":8000}));
    assert!(
        !types(&h.out).contains(&"session.commentary.append".to_owned()),
        "waits for Twilio's start"
    );
    h.start();
    let evs = live_events(&h.drain());
    let c = evs
        .iter()
        .find(|v| v["type"] == "session.commentary.append")
        .unwrap();
    assert!(c["delegation_id"].is_null());
    let text = c["content"].as_str().unwrap();
    assert!(text.contains("Hi, this is Ada.") && text.contains("Do not wait for the caller"));
}

#[test]
fn parallel_tools_get_their_outputs_then_one_response_create() {
    let agent = Agent::new("A", "x").tool(weather());
    let mut h = H::ready(agent, CallConfig::default());
    h.model(
        json!({"type":"session.delegation.created","event_id":"e","offset_ms":10,
        "delegation":{"id":"dlg_1","target":"responses","type":"delegation"}}),
    );
    h.call("dlg_1", "call_a", "get_weather", r#"{"location":"Paris"}"#);
    h.call("dlg_1", "call_b", "get_weather", r#"{"location":"Oslo"}"#);
    assert!(
        !h.out.iter().any(|o| matches!(o, Output::RunTool { .. })),
        "run only when the backend response completes"
    );
    h.completed("dlg_1", "completed");
    let runs: Vec<_> = h
        .drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::RunTool { call_id, .. } => h.core.tool_invocation(&call_id),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 2);
    let (call_b, tool_b) = &runs[1];
    h.input(Input::ToolResult {
        call_id: "call_b".into(),
        result: tool_b.invoke(call_b),
    });
    assert_eq!(types(&h.drain()), ["response.item.create"]);
    let (call_a, tool_a) = &runs[0];
    h.input(Input::ToolResult {
        call_id: "call_a".into(),
        result: tool_a.invoke(call_a),
    });
    let out = h.drain();
    assert_eq!(types(&out), ["response.item.create", "response.create"]);
    let item = &live_events(&out)[0]["item"];
    assert_eq!(item["call_id"], "call_a");
    assert_eq!(item["output"], "The weather in Paris is sunny.");
}

#[test]
fn calls_of_a_failed_backend_response_are_not_run() {
    let mut h = H::ready(Agent::new("A", "x").tool(weather()), CallConfig::default());
    h.call("dlg_1", "call_a", "get_weather", "{}");
    h.completed("dlg_1", "failed");
    let out = h.drain();
    assert!(!out.iter().any(|o| matches!(o, Output::RunTool { .. })));
    assert!(live_events(&out).is_empty());
}

#[test]
fn handoff_updates_tools_and_appends_instructions() {
    let billing = Agent::new("Billing", "You handle invoices.").tool(weather());
    let front = Agent::new("Front", "You greet.").handoff(&billing);
    let mut h = H::ready(front, CallConfig::default());
    h.call("dlg_1", "call_h", "transfer_to_billing", "{}");
    h.completed("dlg_1", "completed");
    let out = h.drain();
    let t = types(&out);
    assert_eq!(
        t,
        [
            "session.update",
            "session.instructions.append",
            "response.item.create"
        ],
        "{t:?}"
    );
    let evs = live_events(&out);
    assert_eq!(
        evs[0]["session"]["delegation"]["responses"]["tools"][0]["name"],
        "get_weather"
    );
    assert!(evs[1]["content"]
        .as_str()
        .unwrap()
        .contains("You handle invoices."));
    // The continuation waits for the update's confirmation.
    let id = evs[0]["event_id"].as_str().unwrap().to_owned();
    h.model(json!({"type":"session.updated","event_id":"e","client_event_id":id,"session":{"id":"live_abc"}}));
    assert_eq!(types(&h.drain()), ["response.create"]);
}

#[test]
fn guardrail_trip_is_a_hard_stop_and_an_apology_commentary() {
    let agent =
        Agent::new("A", "x").output_guardrail(OutputGuardrail::new("no_secrets", |t: &str| {
            if t.contains("secret") {
                Verdict::trip("said secret")
            } else {
                Verdict::Pass
            }
        }));
    let mut opts = CallConfig::default();
    opts.guardrail_debounce_chars = 1;
    let mut h = H::ready(agent, opts);
    h.said(" the secret is");
    let run = h
        .drain()
        .into_iter()
        .find_map(|o| match o {
            Output::RunGuardrails(r) => Some(r),
            _ => None,
        })
        .unwrap();
    let trip = run.run();
    h.input(Input::GuardrailResult { run, trip });
    let out = h.drain();
    assert!(session_events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::GuardrailTripped { .. })));
    let evs = live_events(&out);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "session.commentary.append");
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Twilio(TwilioCommand::Clear { .. }))));
}

#[test]
fn create_response_and_commit_are_refused_with_an_error() {
    let mut h = H::ready(Agent::new("A", "x"), CallConfig::default());
    h.input(Input::Command(Command::CreateResponse(
        ResponseConfig::default(),
    )));
    h.input(Input::Command(Command::CommitAudio));
    let out = h.drain();
    assert!(live_events(&out).is_empty());
    assert_eq!(
        session_events(&out)
            .iter()
            .filter(|e| matches!(e, SessionEvent::Error(_)))
            .count(),
        2
    );
}

#[test]
fn an_expired_session_ends_the_call_after_the_audio_sent_played() {
    let mut h = H::ready(Agent::new("A", "x"), CallConfig::default());
    h.audio(100);
    h.drain();
    h.model(json!({"type":"session.closed","event_id":"e","reason":"expired","session":{"id":"live_abc"},"usage":{"seconds":7200.0}}));
    let out = h.drain();
    assert!(closed(&out).is_none(), "the lead plays first");
    assert!(
        !types(&out).contains(&"session.close".to_owned()),
        "the server closed it already"
    );
    h.echo_all();
    let out = h.drain();
    assert_eq!(
        closed(&out),
        Some(CloseReason::ModelSessionClosed(SessionCloseReason::Expired))
    );
}

#[test]
fn a_fatal_error_ends_the_call_with_its_code() {
    let mut h = H::ready(Agent::new("A", "x"), CallConfig::default());
    h.model(json!({"type":"error","event_id":"e","error":{"type":"insufficient_quota","code":"insufficient_quota","message":"quota"}}));
    let out = h.drain();
    assert!(
        matches!(closed(&out), Some(CloseReason::Error(CallError::ModelError { code: Some(code), .. })) if code == "insufficient_quota")
    );
    // A non-fatal error is only reported.
    let mut h = H::ready(Agent::new("A", "x"), CallConfig::default());
    h.model(json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"invalid_value","message":"x"}}));
    let out = h.drain();
    assert!(closed(&out).is_none());
    assert!(session_events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::Error(_))));
}

#[test]
fn hang_up_waits_for_the_turn_to_end_and_the_audio_to_be_heard() {
    let mut h = H::ready(Agent::new("A", "x"), CallConfig::default());
    h.said(" Goodbye");
    h.audio(100);
    h.input(Input::Command(Command::HangUp));
    let out = h.drain();
    assert!(closed(&out).is_none());
    h.echo_all();
    h.ms(900);
    h.tick(); // the turn ends; the silence after it is not forwarded
    h.audio(100);
    h.echo_all();
    let out = h.drain();
    assert_eq!(closed(&out), Some(CloseReason::HungUp));
    let t = types(&out);
    assert_eq!(t, ["session.close"], "{t:?}");
}

#[test]
fn approvals_timeouts_and_errors_answer_the_backend_then_one_response_create() {
    let slow = FunctionTool::new("slow", "d", json!({"type":"object"}), |_| Ok("late".into()))
        .timeout(Duration::from_secs(2));
    let agent = Agent::new("A", "x")
        .tool(weather().needs_approval(true))
        .tool(slow);
    let mut h = H::ready(agent, CallConfig::default());
    h.call("dlg_1", "c1", "get_weather", r#"{"location":"X"}"#);
    h.call("dlg_1", "c2", "slow", "{}");
    h.call("dlg_1", "c3", "nope", "{}");
    h.completed("dlg_1", "completed");
    let out = h.drain();
    let evs = session_events(&out);
    assert!(evs.iter().any(
        |e| matches!(e, SessionEvent::ToolApprovalRequested { call_id, .. } if call_id == "c1")
    ));
    let runs: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Output::RunTool { call_id, .. } => Some(call_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(runs, ["c2"], "the approval holds c1; c3 names no tool");
    // The unknown tool is answered at once with an error output; the batch waits.
    assert_eq!(types(&out), ["response.item.create"]);
    let unknown = &live_events(&out)[0]["item"];
    assert_eq!(unknown["call_id"], "c3");
    assert!(unknown["output"]
        .as_str()
        .unwrap()
        .contains("no tool named nope"));
    // The slow tool times out: an error output, still no response.create (c1 waits).
    h.ms(2000);
    h.tick();
    let out = h.drain();
    assert_eq!(types(&out), ["response.item.create"]);
    assert_eq!(
        live_events(&out)[0]["item"]["output"],
        "Error: the tool timed out."
    );
    // The rejection is c1's output, and the batch is whole: one response.create.
    h.input(Input::Command(Command::Reject {
        call_id: "c1".into(),
        message: Some("not allowed".into()),
    }));
    let out = h.drain();
    assert_eq!(types(&out), ["response.item.create", "response.create"]);
    assert_eq!(live_events(&out)[0]["item"]["call_id"], "c1");
    assert_eq!(live_events(&out)[0]["item"]["output"], "not allowed");
}

#[test]
fn forwarded_dtmf_is_silent_context() {
    let mut opts = CallConfig::default();
    opts.forward_dtmf = true;
    let mut h = H::ready(Agent::new("A", "x"), opts);
    let dtmf = TwilioMessage::parse(
        &json!({"event":"dtmf","streamSid":SID,"sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"7"}})
            .to_string(),
    )
    .unwrap();
    h.input(Input::Twilio(dtmf));
    let out = h.drain();
    assert_eq!(types(&out), ["session.thinking.append"]);
    let ev = &live_events(&out)[0];
    assert!(ev["content"].as_str().unwrap().contains('7'), "{ev}");
    assert_eq!(ev["delegation_id"], Value::Null);
    assert!(session_events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::Dtmf { digit } if digit == "7")));
}

#[test]
fn a_session_never_started_ends_the_call_at_the_setup_timeout() {
    // A server that answers pings but never `session.started`: the caller is not kept in
    // silence for ever (loadgen's fake once lost a `session.start` this way).
    let mut opts = CallConfig::default();
    opts.twilio_silence_timeout = Duration::MAX;
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.input(Input::ModelConnected);
    h.start();
    assert_eq!(types(&h.drain()), ["session.start"]);
    assert_eq!(
        h.core.next_deadline(),
        Some(h.now + Duration::from_secs(10))
    );
    h.ms(9_999);
    h.tick();
    assert!(closed(&h.drain()).is_none());
    h.ms(1);
    h.tick();
    let out = h.drain();
    assert_eq!(
        closed(&out),
        Some(CloseReason::Error(CallError::ModelSetupTimeout {
            waited: Duration::from_secs(10)
        }))
    );
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    assert!(out.iter().any(|o| matches!(o, Output::CloseModel)));
    assert!(
        live_events(&out).is_empty(),
        "no session.close: no session started"
    );
    // Once started, the setup deadline is gone.
    let mut h = H::ready(Agent::new("A", "x"), CallConfig::default());
    h.ms(10_000);
    h.mark("unrelated");
    h.tick();
    assert!(closed(&h.drain()).is_none());
}

#[test]
fn a_new_agent_with_another_voice_is_told_the_voice_is_fixed() {
    let front = Agent::new("Front", "You greet.").voice("marin");
    let mut h = H::ready(front, CallConfig::default());
    let sales = Agent::new("Sales", "You sell.")
        .voice("cedar")
        .tool(weather());
    h.input(Input::Command(Command::UpdateAgent(sales)));
    let out = h.drain();
    // Tools and instructions are applied as GPT-Live allows; the voice is refused, said so.
    assert_eq!(
        types(&out),
        ["session.update", "session.instructions.append"]
    );
    let refused = session_events(&out)
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Error(CallError::CommandRefused { message }) => Some(message),
            _ => None,
        })
        .expect("the voice change is refused with an error event");
    assert!(
        refused.contains("cedar") && refused.contains("marin"),
        "{refused}"
    );
    // The same voice, or none, is no change.
    for voice in [Some("marin"), None] {
        let mut h = H::ready(
            Agent::new("Front", "You greet.").voice("marin"),
            CallConfig::default(),
        );
        let mut next = Agent::new("Next", "You help.");
        if let Some(v) = voice {
            next = next.voice(v);
        }
        h.input(Input::Command(Command::UpdateAgent(next)));
        assert!(!session_events(&h.drain())
            .iter()
            .any(|e| matches!(e, SessionEvent::Error(_))));
    }
}
