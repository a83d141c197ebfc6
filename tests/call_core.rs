//! The call core's rules, one test each, driven with an injected clock (no sockets).

mod common;

use std::time::{Duration, Instant};

use common::{audio_b64 as audio, session_events as events};
use serde_json::{json, Value};
use twilio_realtime::agent::ToolFailure;
use twilio_realtime::agent::{Agent, FunctionTool, OutputGuardrail, Verdict};
use twilio_realtime::call::{
    CallConfig, CallCore, CallPhase, Command, Greeting, Input, Output, Preconfigured,
};
use twilio_realtime::events::{CloseReason, ErrorSource, InterruptCause, SessionEvent};
use twilio_realtime::CallError;

/// The model socket closed without a close frame.
fn gone() -> CallError {
    CallError::model_closed(None, None)
}
use twilio_realtime::proto::realtime::{ClientEvent, ResponseConfig, ServerEvent};
use twilio_realtime::proto::twilio::{TwilioCommand, TwilioMessage};

const SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

struct H {
    core: CallCore,
    now: Instant,
    out: Vec<Output>,
}

fn weather_tool() -> FunctionTool {
    FunctionTool::new(
        "get_weather",
        "Weather in a city",
        json!({"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}),
        |c| {
            Ok(format!(
                "sunny in {}",
                c.arguments["location"].as_str().unwrap_or("?")
            ))
        },
    )
}

impl H {
    fn new(agent: Agent) -> H {
        H::with(agent, CallConfig::default())
    }

    fn with(agent: Agent, opts: CallConfig) -> H {
        let now = Instant::now();
        H {
            core: CallCore::new(agent, opts, now),
            now,
            out: vec![],
        }
    }

    /// A call with the model ready and Twilio started, outputs drained.
    fn ready(agent: Agent) -> H {
        let mut h = H::new(agent);
        h.configured();
        h.start();
        h.drain();
        h
    }

    /// `session.created`, then the `session.updated` that confirms µ-law both ways.
    fn configured(&mut self) {
        self.model(json!({"type":"session.created","event_id":"e0","session":{"type":"realtime"}}));
        self.updated("audio/pcmu");
    }

    /// A `session.updated` showing `format` both ways.
    fn updated(&mut self, format: &str) {
        self.model(json!({"type":"session.updated","event_id":"e1","session":{"type":"realtime",
            "audio":{"input":{"format":{"type":format}},"output":{"format":{"type":format},"voice":"marin"}}}}));
    }

    fn ms(&mut self, n: u64) {
        self.now += Duration::from_millis(n);
    }

    fn model(&mut self, v: Value) {
        let ev = ServerEvent::parse(&v.to_string()).expect("valid server event");
        self.core.handle_input(self.now, Input::Model(ev));
        self.collect();
    }

    fn twilio(&mut self, v: Value) {
        let m = TwilioMessage::parse(&v.to_string()).expect("valid twilio message");
        self.core.handle_input(self.now, Input::Twilio(m));
        self.collect();
    }

    fn start(&mut self) {
        self.twilio(
            json!({"event":"start","sequenceNumber":"1","streamSid":SID,"start":{
            "accountSid":"AC123","streamSid":SID,"callSid":"CA123","tracks":["inbound"],
            "customParameters":{"caller":"+15550100"},
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}),
        );
    }

    fn mark(&mut self, name: &str) {
        self.twilio(
            json!({"event":"mark","sequenceNumber":"9","streamSid":SID,"mark":{"name":name}}),
        );
    }

    fn cmd(&mut self, c: Command) {
        self.core.handle_input(self.now, Input::Command(c));
        self.collect();
    }

    fn tick(&mut self) {
        self.core.handle_input(self.now, Input::Timeout);
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.out.push(o);
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        self.collect();
        std::mem::take(&mut self.out)
    }

    fn response_created(&mut self, id: &str) {
        self.model(json!({"type":"response.created","event_id":"e","response":{"id":id,"object":"realtime.response","status":"in_progress","output":[]}}));
    }

    fn response_done(&mut self, id: &str, status: &str) {
        self.model(json!({"type":"response.done","event_id":"e","response":{"id":id,"object":"realtime.response","status":status,"output":[]}}));
    }

    fn delta(&mut self, resp: &str, item: &str, content_index: u32, payload: &str) {
        self.model(
            json!({"type":"response.output_audio.delta","event_id":"e","response_id":resp,
            "item_id":item,"output_index":0,"content_index":content_index,"delta":payload}),
        );
    }

    fn audio_done(&mut self, resp: &str, item: &str) {
        self.model(
            json!({"type":"response.output_audio.done","event_id":"e","response_id":resp,
            "item_id":item,"output_index":0,"content_index":0}),
        );
    }

    /// A function call, then its response's `response.done` (calls run only then).
    fn function_call_done(
        &mut self,
        resp: &str,
        item: &str,
        call_id: &str,
        name: &str,
        args: &str,
    ) {
        self.function_call(resp, item, call_id, name, args);
        self.response_done(resp, "completed");
    }

    fn function_call(&mut self, resp: &str, item: &str, call_id: &str, name: &str, args: &str) {
        self.model(json!({"type":"response.output_item.done","event_id":"e","response_id":resp,"output_index":0,
            "item":{"id":item,"object":"realtime.item","type":"function_call","status":"completed",
            "name":name,"call_id":call_id,"arguments":args}}));
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

fn types(out: &[Output]) -> Vec<String> {
    model_events(out)
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect()
}

fn twilio_cmds(out: &[Output]) -> Vec<TwilioCommand> {
    out.iter()
        .filter_map(|o| match o {
            Output::Twilio(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn marks(out: &[Output]) -> Vec<String> {
    twilio_cmds(out)
        .into_iter()
        .filter_map(|c| match c {
            TwilioCommand::Mark { name, .. } => Some(name),
            _ => None,
        })
        .collect()
}

fn assert_pcmu(session: &Value) {
    assert_eq!(session["type"], "realtime");
    assert_eq!(
        session["audio"]["input"]["format"]["type"], "audio/pcmu",
        "{session}"
    );
    assert_eq!(
        session["audio"]["output"]["format"]["type"], "audio/pcmu",
        "{session}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Start fast, lose nothing; 2. formats

#[test]
fn first_session_update_is_pcmu_with_empty_tools_then_ready() {
    let mut h = H::new(Agent::new("A", "Be brief."));
    let first = h.drain();
    assert!(
        matches!(first.as_slice(), [Output::ConnectModel]),
        "the model connection is asked for first, and nothing else before the model session exists: {first:?}"
    );
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    let out = h.drain();
    let evs = model_events(&out);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "session.update");
    assert!(
        evs[0]["event_id"].as_str().is_some_and(|id| !id.is_empty()),
        "the update is tagged so a refusal can name it"
    );
    assert_pcmu(&evs[0]["session"]);
    assert_eq!(evs[0]["session"]["tools"], json!([]));
    assert_eq!(evs[0]["session"]["instructions"], "Be brief.");
    assert!(
        !out.iter().any(|o| matches!(o, Output::ModelReady)),
        "not ready before the server confirmed the update"
    );
    h.updated("audio/pcmu");
    assert!(
        matches!(h.drain().last(), Some(Output::ModelReady)),
        "ready once session.updated shows µ-law both ways"
    );
}

#[test]
fn commands_before_ready_wait_for_the_session_update() {
    let mut h = H::new(Agent::new("A", "x"));
    h.cmd(Command::SendMessage("hello".into()));
    assert!(model_events(&h.drain()).is_empty());
    h.configured();
    assert_eq!(
        types(&h.drain()),
        [
            "session.update",
            "conversation.item.create",
            "response.create"
        ]
    );
}

fn refusal(event_id: &Value, code: &str, param: &str) -> Value {
    json!({"type":"error","event_id":"e_err","error":{"type":"invalid_request_error","code":code,
        "message":"Invalid value: 'robot'. Supported values are: 'alloy', 'marin'.","param":param,"event_id":event_id}})
}

fn closed_reason(out: &[Output]) -> Option<CloseReason> {
    events(out).into_iter().find_map(|e| match e {
        SessionEvent::Closed { reason } => Some(reason),
        _ => None,
    })
}

#[test]
fn refused_first_session_update_ends_the_call_before_any_audio() {
    let mut h = H::new(Agent::new("A", "x").voice("robot"));
    h.start();
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    let out = h.drain();
    let id = model_events(&out)[0]["event_id"].clone();
    h.model(refusal(&id, "invalid_value", "session.audio.output.voice"));
    let out = h.drain();
    assert!(!out.iter().any(|o| matches!(o, Output::ModelReady)));
    assert!(out.iter().any(|o| matches!(o, Output::CloseModel)));
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    assert_eq!(
        closed_reason(&out),
        Some(CloseReason::Error(CallError::ModelConfigRejected {
            param: Some("session.audio.output.voice".into()),
            message: "Invalid value: 'robot'. Supported values are: 'alloy', 'marin'.".into(),
        }))
    );
    // whatever the model sends now goes nowhere
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(160));
    assert!(twilio_cmds(&h.drain()).is_empty());
}

/// Not ready, ended: the server's session is not µ-law.
fn assert_ended_without_pcmu(out: &[Output]) {
    assert!(!out.iter().any(|o| matches!(o, Output::ModelReady)));
    assert!(matches!(
        closed_reason(out),
        Some(CloseReason::Error(CallError::ModelConfigRejected { param: Some(p), .. })) if p == "session.audio.input.format"
    ));
}

#[test]
fn session_updated_without_pcmu_ends_the_call() {
    let mut h = H::new(Agent::new("A", "x"));
    h.start();
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    h.drain();
    h.updated("audio/pcm");
    assert_ended_without_pcmu(&h.drain());
}

#[test]
fn model_audio_before_the_session_is_confirmed_is_never_forwarded() {
    let mut h = H::new(Agent::new("A", "x"));
    h.start();
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(480));
    let out = h.drain();
    assert!(
        !twilio_cmds(&out)
            .iter()
            .any(|c| matches!(c, TwilioCommand::Media { .. })),
        "24 kHz PCM would be noise on the phone"
    );
    h.updated("audio/pcmu");
    assert!(h.drain().iter().any(|o| matches!(o, Output::ModelReady)));
}

#[test]
fn refused_later_update_keeps_the_call_on_the_confirmed_configuration() {
    let billing = Agent::new("Billing", "You do billing.");
    let mut h = H::ready(Agent::new("Front", "You route.").handoff(&billing));
    h.response_created("r1");
    h.function_call("r1", "fc1", "call_1", "transfer_to_billing", "{}");
    h.response_done("r1", "completed");
    let evs = model_events(&h.drain());
    let upd = evs.iter().find(|e| e["type"] == "session.update").unwrap();
    let id = upd["event_id"].clone();
    assert!(id.as_str().is_some(), "every session.update is tagged");
    h.model(refusal(&id, "invalid_value", "session.instructions"));
    let out = h.drain();
    assert_eq!(closed_reason(&out), None, "the call goes on");
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::Error { .. })));
    assert_eq!(types(&out), ["response.create"]);
}

fn greeting_opts(g: Greeting) -> CallConfig {
    let mut o = CallConfig::default();
    o.greeting = Some(g);
    o
}

#[test]
fn greeting_goes_out_once_confirmed_and_started() {
    // confirmed first, then start
    let mut h = H::with(
        Agent::new("A", "You are Ann."),
        greeting_opts(Greeting::Instructions("Greet the caller.".into())),
    );
    h.configured();
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::ModelReady)));
    assert!(
        !types(&out).contains(&"response.create".to_owned()),
        "no greeting before Twilio gave a streamSid"
    );
    h.start();
    let evs = model_events(&h.drain());
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "response.create");
    let instr = evs[0]["response"]["instructions"].as_str().unwrap();
    assert!(instr.starts_with("You are Ann."), "{instr}");
    assert!(instr.ends_with("Greet the caller."), "{instr}");

    // started first, then confirmed: the greeting follows the confirmation
    let mut h = H::with(
        Agent::new("A", "x"),
        greeting_opts(Greeting::Say("Hello, this is Ann.".into())),
    );
    h.start();
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    assert_eq!(types(&h.drain()), ["session.update"]);
    h.updated("audio/pcmu");
    let out = h.drain();
    let evs = model_events(&out);
    assert_eq!(evs.len(), 1);
    assert!(evs[0]["response"]["instructions"]
        .as_str()
        .unwrap()
        .contains("Hello, this is Ann."));
    let ready = out.iter().position(|o| matches!(o, Output::ModelReady));
    let create = out.iter().position(|o| matches!(o, Output::Model(_)));
    assert!(ready < create, "caller audio kept so far goes first");
}

#[test]
fn greeting_is_cut_by_barge_in_like_any_response_and_not_repeated() {
    let mut h = H::with(
        Agent::new("A", "x"),
        greeting_opts(Greeting::Instructions("Greet.".into())),
    );
    h.configured();
    h.start();
    h.drain();
    h.response_created("r1");
    for _ in 0..5 {
        h.delta("r1", "i1", 0, &audio(800));
    }
    h.drain();
    h.ms(200);
    speech_started(&mut h);
    let out = h.drain();
    assert!(matches!(
        twilio_cmds(&out).first(),
        Some(TwilioCommand::Clear { .. })
    ));
    assert_eq!(types(&out), ["conversation.item.truncate"]);
    h.response_done("r1", "cancelled");
    assert!(
        types(&h.drain()).is_empty(),
        "the greeting is one response, not retried"
    );
}

#[test]
fn greeting_is_skipped_when_the_agent_already_answers() {
    let mut h = H::with(
        Agent::new("A", "x"),
        greeting_opts(Greeting::Instructions("Greet.".into())),
    );
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    h.updated("audio/pcmu");
    // the caller spoke first (buffered audio) and the server answers that turn
    h.response_created("r1");
    h.drain();
    h.start();
    assert!(types(&h.drain()).is_empty());
}

#[test]
fn create_response_commit_and_raw_commands() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.cmd(Command::CreateResponse(ResponseConfig {
        instructions: Some("Say hi.".into()),
        ..Default::default()
    }));
    let evs = model_events(&h.drain());
    assert_eq!(evs[0]["type"], "response.create");
    assert_eq!(evs[0]["response"]["instructions"], "Say hi.");
    h.response_created("r1");
    // one response at a time: the next waits for response.done
    h.cmd(Command::CreateResponse(ResponseConfig::default()));
    assert!(types(&h.drain()).is_empty());
    h.response_done("r1", "completed");
    let evs = model_events(&h.drain());
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "response.create");
    assert!(evs[0].get("response").is_none());
    h.response_created("r2");
    h.response_done("r2", "completed");
    h.drain();

    h.cmd(Command::CommitAudio);
    assert_eq!(types(&h.drain()), ["input_audio_buffer.commit"]);

    let raw = r#"{"type":"input_audio_buffer.clear","event_id":"mine"}"#;
    h.cmd(Command::SendRaw(raw.into()));
    let out = h.drain();
    assert!(matches!(&out[..], [Output::Model(ev)] if ev.to_json() == raw));

    for bad in [
        "not json",
        "[1,2]",
        r#"{"no_type":1}"#,
        r#"{"type":"session.update","session":{"type":"realtime","audio":{"output":{"format":{"type":"audio/pcm","rate":24000}}}}}"#,
    ] {
        h.cmd(Command::SendRaw(bad.into()));
        let out = h.drain();
        assert!(types(&out).is_empty(), "{bad} was sent");
        assert!(
            matches!(events(&out)[..], [SessionEvent::Error { .. }]),
            "{bad}"
        );
    }
    // a raw session.update is tagged and tracked: its refusal does not end the call
    h.cmd(Command::SendRaw(
        r#"{"type":"session.update","session":{"type":"realtime","instructions":"y"}}"#.into(),
    ));
    let evs = model_events(&h.drain());
    let id = evs[0]["event_id"].clone();
    assert!(id.as_str().is_some());
    h.model(refusal(&id, "invalid_value", "session.instructions"));
    assert_eq!(closed_reason(&h.drain()), None);
}

#[test]
fn agent_audio_before_start_waits_for_stream_sid() {
    let mut h = H::new(Agent::new("A", "x"));
    h.configured();
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(160));
    h.delta("r1", "i1", 0, &audio(320));
    h.audio_done("r1", "i1");
    assert!(
        twilio_cmds(&h.drain()).is_empty(),
        "nothing may go out with a null streamSid"
    );
    h.start();
    let cmds = twilio_cmds(&h.drain());
    // probe mark, then media+mark, media+mark, done mark, all with the real streamSid
    let kinds: Vec<&str> = cmds
        .iter()
        .map(|c| match c {
            TwilioCommand::Media { stream_sid, .. } => {
                assert_eq!(stream_sid, SID);
                "media"
            }
            TwilioCommand::Mark { stream_sid, .. } => {
                assert_eq!(stream_sid, SID);
                "mark"
            }
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["mark", "media", "mark", "media", "mark", "mark"]);
}

#[test]
fn handoff_and_update_agent_keep_pcmu_and_send_empty_tools() {
    let billing = Agent::new("Billing", "You do billing.");
    let mut h = H::ready(
        Agent::new("Front", "You route.")
            .tool(weather_tool())
            .handoff(&billing),
    );
    h.response_created("r1");
    h.function_call("r1", "fc1", "call_1", "transfer_to_billing", "{}");
    assert!(
        types(&h.drain()).is_empty(),
        "the handoff waits for its response.done"
    );
    h.response_done("r1", "completed");
    let out = h.drain();
    let evs = model_events(&out);
    let upd = evs
        .iter()
        .find(|e| e["type"] == "session.update")
        .expect("session.update on handoff");
    assert_pcmu(&upd["session"]);
    assert_eq!(upd["session"]["tools"], json!([]), "billing has no tools");
    assert_eq!(upd["session"]["instructions"], "You do billing.");
    let output = evs
        .iter()
        .find(|e| e["type"] == "conversation.item.create")
        .unwrap();
    assert_eq!(output["item"]["type"], "function_call_output");
    assert_eq!(output["item"]["call_id"], "call_1");
    assert!(events(&out).contains(&SessionEvent::Handoff {
        from: "Front".into(),
        to: "Billing".into()
    }));
    assert!(
        !types(&out).contains(&"response.create".to_owned()),
        "the next response waits until the server confirmed the new agent's session"
    );
    h.updated("audio/pcmu");
    assert_eq!(types(&h.drain()), ["response.create"]);

    h.cmd(Command::UpdateAgent(
        Agent::new("Other", "New rules.").tool(weather_tool()),
    ));
    let evs = model_events(&h.drain());
    assert_pcmu(&evs[0]["session"]);
    assert_eq!(evs[0]["session"]["tools"][0]["name"], "get_weather");
}

#[test]
fn voice_is_not_changed_after_the_assistant_spoke() {
    let b = Agent::new("B", "b").voice("cedar");
    let mut h = H::new(Agent::new("A", "a").voice("marin").handoff(&b));
    h.configured();
    let first = model_events(&h.drain());
    assert_eq!(first[0]["session"]["audio"]["output"]["voice"], "marin");
    h.start();
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(160));
    h.function_call("r1", "fc", "c1", "transfer_to_b", "");
    h.response_done("r1", "completed");
    let evs = model_events(&h.drain());
    let upd = evs.iter().find(|e| e["type"] == "session.update").unwrap();
    assert!(
        upd["session"]["audio"]["output"].get("voice").is_none(),
        "{upd}"
    );
    assert_pcmu(&upd["session"]);
}

// ---------------------------------------------------------------------------------------------
// 3. Pass-through; 4. playback ledger

#[test]
fn deltas_pass_through_byte_exact_with_a_mark_each_and_a_done_mark() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    let payloads = [audio(800), audio(1600), audio(7)];
    for p in &payloads {
        h.delta("r1", "item_1", 0, p);
    }
    h.audio_done("r1", "item_1");
    let cmds = twilio_cmds(&h.drain());
    let media: Vec<&String> = cmds
        .iter()
        .filter_map(|c| match c {
            TwilioCommand::Media { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(media, payloads.iter().collect::<Vec<_>>());
    let names = marks(&h.out);
    let names: Vec<String> = cmds
        .iter()
        .filter_map(|c| match c {
            TwilioCommand::Mark { name, .. } => Some(name.clone()),
            _ => None,
        })
        .chain(names)
        .collect();
    assert_eq!(
        names,
        [
            "0:0:800:item_1",
            "0:0:2400:item_1",
            "0:0:2407:item_1",
            "0:0:done:item_1"
        ]
    );
    let e = &h.core.ledger().entries()[0];
    assert_eq!((e.sent, e.acked), (2407, 0));
    h.ms(120);
    h.mark("0:0:800:item_1");
    assert_eq!(h.core.ledger().entries()[0].acked, 800);
}

#[test]
fn audio_stopped_after_the_last_done_mark_echoes() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.audio_done("r1", "i1");
    h.response_done("r1", "completed");
    let out = h.drain();
    assert!(events(&out).contains(&SessionEvent::AudioStart {
        item_id: "i1".into()
    }));
    assert!(
        !events(&out).contains(&SessionEvent::AudioStopped),
        "still playing at Twilio"
    );
    h.ms(150);
    h.mark("0:0:800:i1");
    h.mark("0:0:done:i1");
    assert!(events(&h.drain()).contains(&SessionEvent::AudioStopped));
}

/// Issue 16 item 6: a mark nobody sent is bad input and is reported (as the README says), not
/// only logged; a stale echo from before a `clear` is normal and stays silent.
#[test]
fn unknown_marks_are_reported_and_stale_ones_ignored() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.mark("somebody-elses-mark");
    h.mark("7:0:100:nope");
    h.mark("0:0:100:unknown_item");
    let out = h.drain();
    let evs = events(&out);
    assert_eq!(evs.len(), out.len(), "nothing but events: {out:?}");
    assert_eq!(evs.len(), 2, "{evs:?}");
    for e in evs {
        match e {
            SessionEvent::Error(e) => {
                assert_eq!(e.origin(), ErrorSource::Twilio);
                let message = e.to_string();
                assert!(!message.contains("somebody") && !message.contains("unknown_item"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Barge-in

fn speech_started(h: &mut H) {
    h.model(json!({"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":1000,"item_id":"u1"}));
}

#[test]
fn barge_in_clears_first_then_truncates_at_what_was_heard() {
    let mut h = H::ready(Agent::new("A", "x"));
    // measure the round trip: the probe sent at start echoes 60 ms later
    let probe = marks(&{
        let mut g = H::new(Agent::new("A", "x"));
        g.configured();
        g.start();
        g.drain()
    });
    assert_eq!(probe, ["rtt:1"]);
    h.ms(60);
    h.mark("rtt:1");
    assert_eq!(h.core.ledger().rtt().get(), Duration::from_millis(60));

    h.response_created("r1");
    // 2 s of audio arrives in a burst at t=0
    for _ in 0..10 {
        h.delta("r1", "i1", 0, &audio(1600));
    }
    h.drain();
    // first chunk (200 ms) arrives after 30 ms, plays to 230 ms, echo at 260 ms
    h.ms(260);
    h.mark("0:0:1600:i1");
    // barge-in at 700 ms: clear lands at 730 ms, playback began at 30 ms → 700 ms heard
    h.ms(440);
    speech_started(&mut h);
    let out = h.drain();
    let first_twilio = out
        .iter()
        .position(|o| matches!(o, Output::Twilio(_)))
        .unwrap();
    let first_model = out
        .iter()
        .position(|o| matches!(o, Output::Model(_)))
        .unwrap();
    assert!(
        first_twilio < first_model,
        "clear goes out before anything else"
    );
    assert!(matches!(twilio_cmds(&out)[0], TwilioCommand::Clear { .. }));
    let evs = model_events(&out);
    let trunc: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "conversation.item.truncate")
        .collect();
    assert_eq!(trunc.len(), 1);
    assert_eq!(trunc[0]["item_id"], "i1");
    assert_eq!(trunc[0]["content_index"], 0);
    assert_eq!(
        trunc[0]["audio_end_ms"],
        json!(700),
        "an integer, what was heard"
    );
    // default server VAD cancels the response itself
    assert!(!evs.iter().any(|e| e["type"] == "response.cancel"));
    // 2 s were sent to Twilio, 700 ms heard: 1,300 ms cut (what the truncation metrics count).
    assert!(events(&out).contains(&SessionEvent::AudioInterrupted {
        cause: InterruptCause::CallerSpeech,
        heard: vec![("i1".into(), 700)],
        cut: vec![("i1".into(), 1300)],
    }));
    assert!(!h.core.ledger().is_playing());
}

#[test]
fn round_trip_probes_resume_whenever_nothing_plays() {
    let mut h = H::ready(Agent::new("A", "x"));
    // The probe sent at start echoes; the next one is due 500 ms later while nothing plays.
    h.ms(60);
    h.mark("rtt:1");
    h.ms(499);
    h.tick();
    assert!(marks(&h.drain()).is_empty());
    h.ms(1);
    h.tick();
    assert_eq!(marks(&h.drain()), ["rtt:2"]);
    h.ms(60);
    h.mark("rtt:2");
    // Audio goes out: no probe while Twilio plays (its echo would wait behind the audio).
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.audio_done("r1", "i1");
    h.response_done("r1", "completed");
    h.drain();
    h.ms(600);
    h.tick();
    assert!(marks(&h.drain()).is_empty(), "still playing");
    // Played out: probing starts again.
    h.mark("0:0:800:i1");
    h.mark("0:0:done:i1");
    h.drain();
    h.ms(500);
    h.tick();
    assert_eq!(marks(&h.drain()), ["rtt:3"]);
    h.ms(60);
    h.mark("rtt:3");
    // And after a barge-in: the clear empties Twilio's buffer.
    h.response_created("r2");
    h.delta("r2", "i2", 0, &audio(8000));
    h.drain();
    h.ms(300);
    speech_started(&mut h);
    h.drain();
    h.ms(500);
    h.tick();
    assert_eq!(marks(&h.drain()), ["rtt:4"]);
    assert_eq!(
        h.core.ledger().rtt().samples(),
        4,
        "three probes and the idle chunk"
    );
}

#[test]
fn round_trip_probes_slow_down_once_the_call_has_eight_samples() {
    let mut h = H::ready(Agent::new("A", "x"));
    // Probes every 500 ms while idle until 8 round trips are measured ...
    // (The first went out when the call became ready.)
    for n in 1..=8u64 {
        if n > 1 {
            h.ms(500);
            h.tick();
            assert_eq!(marks(&h.drain()), [format!("rtt:{n}")]);
        }
        h.ms(60);
        h.mark(&format!("rtt:{n}"));
    }
    assert_eq!(h.core.ledger().rtt().samples(), 8);
    // ... then every 5 s (CallConfig::rtt_probe_interval_settled).
    h.ms(500);
    h.tick();
    assert!(
        marks(&h.drain()).is_empty(),
        "settled: no probe after 500 ms"
    );
    h.ms(4499);
    h.tick();
    assert!(marks(&h.drain()).is_empty());
    h.ms(1);
    h.tick();
    assert_eq!(marks(&h.drain()), ["rtt:9"]);
}

#[test]
fn truncation_never_passes_what_was_sent() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(803)); // 100.375 ms
    h.ms(5000);
    speech_started(&mut h);
    let evs = model_events(&h.drain());
    let t = evs
        .iter()
        .find(|e| e["type"] == "conversation.item.truncate")
        .unwrap();
    assert_eq!(t["audio_end_ms"], json!(100));
}

#[test]
fn barge_in_after_model_finished_sending_still_clears() {
    // The peers' bug: the model is done, Twilio is still playing.
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(8000));
    h.audio_done("r1", "i1");
    h.response_done("r1", "completed");
    h.drain();
    h.ms(300);
    speech_started(&mut h);
    let out = h.drain();
    assert!(matches!(twilio_cmds(&out)[0], TwilioCommand::Clear { .. }));
    assert_eq!(types(&out), ["conversation.item.truncate"]);
}

#[test]
fn interrupt_cancels_the_active_response_and_late_audio_is_dropped() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.ms(50);
    h.cmd(Command::Interrupt);
    let out = h.drain();
    assert_eq!(
        types(&out),
        ["response.cancel", "conversation.item.truncate"]
    );
    assert_eq!(model_events(&out)[0]["response_id"], "r1");
    // late deltas of r1 are dropped until its response.done
    h.delta("r1", "i1", 0, &audio(800));
    h.audio_done("r1", "i1");
    assert!(twilio_cmds(&h.drain()).is_empty());
    h.response_done("r1", "cancelled");
    h.drain();
    // a new response plays again, in the next generation
    h.response_created("r2");
    h.delta("r2", "i2", 0, &audio(800));
    assert_eq!(marks(&h.drain()), ["1:0:800:i2"]);
}

#[test]
fn second_interrupt_with_nothing_playing_does_nothing() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.cmd(Command::Interrupt);
    assert!(!h.drain().is_empty());
    h.response_done("r1", "cancelled");
    h.drain();
    h.cmd(Command::Interrupt);
    speech_started(&mut h);
    let out: Vec<Output> = h
        .drain()
        .into_iter()
        .filter(|o| !matches!(o, Output::CallerSpeaking(_)))
        .collect();
    assert!(out.is_empty(), "{out:?}");
}

/// Issue 16 item 2: a second interrupt or `speech_started` while the cut response is still
/// active (its `response.done` not yet in) sends no second `response.cancel` and reports no
/// second `AudioInterrupted`: one cut per response.
#[test]
fn one_cut_per_response() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.ms(50);
    h.cmd(Command::Interrupt);
    let out = h.drain();
    assert_eq!(
        types(&out),
        ["response.cancel", "conversation.item.truncate"]
    );
    assert_eq!(
        events(&out)
            .iter()
            .filter(|e| matches!(e, SessionEvent::AudioInterrupted { .. }))
            .count(),
        1
    );
    // r1 is still active: late audio, a second interrupt, the server's VAD.
    h.delta("r1", "i1", 0, &audio(800));
    h.cmd(Command::Interrupt);
    speech_started(&mut h);
    h.cmd(Command::Interrupt);
    let out: Vec<Output> = h
        .drain()
        .into_iter()
        .filter(|o| !matches!(o, Output::CallerSpeaking(_)))
        .collect();
    assert!(out.is_empty(), "{out:?}");
    // Once r1 is done, the next response can be cut again.
    h.response_done("r1", "cancelled");
    h.response_created("r2");
    h.drain();
    h.cmd(Command::Interrupt);
    let out = h.drain();
    assert_eq!(types(&out), ["response.cancel"]);
    assert_eq!(model_events(&out)[0]["response_id"], "r2");
}

/// Issue 16 item 6: `clear` goes out when audio sent to Twilio may still be playing, and only
/// then; a response cut before any of its audio reached Twilio is cancelled without one.
#[test]
fn no_clear_when_nothing_was_sent_to_twilio() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.drain();
    h.cmd(Command::Interrupt);
    let out = h.drain();
    assert!(twilio_cmds(&out).is_empty(), "{out:?}");
    assert_eq!(types(&out), ["response.cancel"]);
    assert!(events(&out).contains(&SessionEvent::AudioInterrupted {
        cause: InterruptCause::Application,
        heard: vec![],
        cut: vec![],
    }));
}

#[test]
fn stale_mark_echoes_from_a_clear_are_ignored() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.delta("r1", "i1", 0, &audio(800));
    h.cmd(Command::Interrupt);
    h.response_done("r1", "cancelled");
    h.response_created("r2");
    h.delta("r2", "i2", 0, &audio(800));
    h.drain();
    // Twilio echoes the flushed marks after the new audio was sent
    h.mark("0:0:800:i1");
    h.mark("0:0:1600:i1");
    assert_eq!(h.core.ledger().entries().len(), 1);
    assert_eq!(h.core.ledger().entries()[0].acked, 0);
    h.mark("1:0:800:i2");
    assert_eq!(h.core.ledger().entries()[0].acked, 800);
}

#[test]
fn several_items_and_content_indexes_each_get_a_truncate() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "a", 0, &audio(800));
    h.delta("r1", "a", 1, &audio(800));
    h.delta("r1", "b", 0, &audio(800));
    h.cmd(Command::Interrupt);
    let evs = model_events(&h.drain());
    let t: Vec<(String, u64)> = evs
        .iter()
        .filter(|e| e["type"] == "conversation.item.truncate")
        .map(|e| {
            (
                format!("{}/{}", e["item_id"].as_str().unwrap(), e["content_index"]),
                e["audio_end_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(t.len(), 3, "{t:?}");
    assert_eq!(
        t.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["a/0", "a/1", "b/0"]
    );
}

#[test]
fn server_vad_without_interrupt_response_gets_a_cancel() {
    use twilio_realtime::proto::realtime::{SessionSettings, TurnDetection};
    let session = SessionSettings::new().turn_detection(TurnDetection::ServerVad {
        threshold: None,
        prefix_padding_ms: None,
        silence_duration_ms: None,
        create_response: None,
        interrupt_response: Some(false),
        idle_timeout_ms: None,
    });
    let opts = {
        let mut o = CallConfig::default();
        o.session = session;
        o
    };
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.configured();
    h.start();
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.drain();
    speech_started(&mut h);
    assert_eq!(
        types(&h.drain()),
        ["response.cancel", "conversation.item.truncate"]
    );
}

// ---------------------------------------------------------------------------------------------
// The agent-audio lane (`call::audio_lane`)

fn lane_of(out: &[Output]) -> Option<twilio_realtime::call::audio_lane::AudioLane> {
    out.iter().rev().find_map(|o| match o {
        Output::AudioLane(l) => Some(l.clone()),
        _ => None,
    })
}

/// An answer's deltas sent by the core (`a`) and, after the first, on the lane (`b`): the same
/// marks, the same ledger, the same truncation at a barge-in.
#[test]
fn audio_sent_on_the_lane_keeps_the_ledger_as_the_core_would() {
    let sizes = [1600usize, 800, 1200, 400, 1600, 800];
    let mut a = H::ready(Agent::new("A", "x"));
    let mut b = H::ready(Agent::new("A", "x"));
    for h in [&mut a, &mut b] {
        h.response_created("r1");
        h.delta("r1", "i1", 0, &audio(sizes[0]));
    }
    let mut lane = lane_of(&b.drain()).expect("a lane after the first delta");
    assert!(lane.matches("r1", "i1", 0) && !lane.matches("r1", "i2", 0));
    assert_eq!(lane.stream_sid(), SID);
    let first = marks(&a.drain());
    let mut marks_a = first.clone();
    let mut marks_b = first;
    for n in &sizes[1..] {
        a.ms(40);
        b.ms(40);
        a.delta("r1", "i1", 0, &audio(*n));
        let out = a.drain();
        assert!(
            lane_of(&out).is_some(),
            "each delta the core sends offers the lane"
        );
        marks_a.extend(marks(&out));
        marks_b.push(lane.chunk(*n as u64));
        b.core
            .handle_input(b.now, Input::AudioLaneSent { bytes: *n as u64 });
        assert!(b.drain().is_empty(), "a lane chunk needs no output");
    }
    assert_eq!(
        marks_a, marks_b,
        "the lane names each chunk as the core does"
    );
    assert_eq!(a.core.ledger().entries(), b.core.ledger().entries());
    // The first two chunks are echoed; the caller speaks 300 ms later.
    for h in [&mut a, &mut b] {
        h.ms(200);
        h.mark(&marks_a[0]);
        h.mark(&marks_a[1]);
        h.ms(300);
        speech_started(h);
    }
    let (out_a, out_b) = (a.drain(), b.drain());
    assert_eq!(model_events(&out_a), model_events(&out_b));
    assert_eq!(events(&out_a), events(&out_b));
    assert!(types(&out_b).contains(&"conversation.item.truncate".to_owned()));
}

/// `CallCore::catch_up` (what the shell calls at each wake-up) feeds the lane's chunks before
/// the echoes that waited, so a chunk and its own echo handed over together move the playback
/// position exactly as the core's own path does; the other order would lose the echo.
#[test]
fn catch_up_feeds_lane_chunks_before_the_echoes_that_waited() {
    let echo = |name: &str| {
        TwilioMessage::parse(
            &json!({"event":"mark","sequenceNumber":"9","streamSid":SID,"mark":{"name":name}})
                .to_string(),
        )
        .expect("a mark")
    };
    let mut a = H::ready(Agent::new("A", "x"));
    let mut b = H::ready(Agent::new("A", "x"));
    for h in [&mut a, &mut b] {
        h.response_created("r1");
        h.delta("r1", "i1", 0, &audio(1600));
    }
    let mut lane = lane_of(&b.drain()).expect("a lane after the first delta");
    let mut marks_a = marks(&a.drain());
    let sent_at = a.now + Duration::from_millis(40);
    a.ms(40);
    a.delta("r1", "i1", 0, &audio(800));
    marks_a.extend(marks(&a.drain()));
    let second = lane.chunk(800);
    assert_eq!(marks_a.last(), Some(&second));
    // Both chunks are echoed 250 ms later; the session thread wakes after that.
    a.ms(250);
    a.mark(&marks_a[0]);
    a.mark(&second);
    b.ms(290);
    let echoed_at = b.now;
    b.core.catch_up(
        [(sent_at, 800u64)],
        [(echoed_at, echo(&marks_a[0])), (echoed_at, echo(&second))],
    );
    assert!(b.drain().is_empty());
    assert_eq!(a.core.ledger().entries(), b.core.ledger().entries());
    for h in [&mut a, &mut b] {
        h.ms(100);
        speech_started(h);
    }
    let (out_a, out_b) = (a.drain(), b.drain());
    assert!(types(&out_b).contains(&"conversation.item.truncate".to_owned()));
    assert_eq!(model_events(&out_a), model_events(&out_b));
}

#[test]
fn the_lane_holds_until_the_next_other_input() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    assert!(lane_of(&h.drain()).is_some());
    // Anything else the core handles withdraws the grant: a chunk reported after it is not
    // recorded.
    h.ms(10);
    h.tick();
    let before = h.core.ledger().entries().to_vec();
    h.core
        .handle_input(h.now, Input::AudioLaneSent { bytes: 800 });
    assert_eq!(h.core.ledger().entries(), &before[..]);
}

#[test]
fn no_lane_where_each_delta_needs_the_core() {
    // Audio events for the application: every delta must pass the core.
    let mut opts = CallConfig::default();
    opts.audio_events = true;
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.configured();
    h.start();
    h.drain();
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    assert!(lane_of(&h.drain()).is_none(), "audio events");
    // Before Twilio's `start`: the audio waits in the core.
    let mut h = H::new(Agent::new("A", "x"));
    h.configured();
    h.drain();
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    assert!(lane_of(&h.drain()).is_none(), "no stream yet");
    // A response cut by a barge-in: its late audio is dropped by the core.
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    speech_started(&mut h);
    h.drain();
    h.delta("r1", "i1", 0, &audio(800));
    assert!(lane_of(&h.drain()).is_none(), "a cut response");
}

// ---------------------------------------------------------------------------------------------
// 7. Tools; 8. handoffs

#[test]
fn tool_round_trip_answers_after_the_response_is_done() {
    let mut h = H::ready(Agent::new("A", "x").tool(weather_tool()));
    h.response_created("r1");
    h.function_call(
        "r1",
        "fc1",
        "call_1",
        "get_weather",
        r#"{"location":"Paris"}"#,
    );
    assert!(
        !h.drain()
            .iter()
            .any(|o| matches!(o, Output::RunTool { .. })),
        "a call runs once its response is done (a cut response's calls never run)"
    );
    h.response_done("r1", "completed");
    let out = h.drain();
    let call_id = out
        .iter()
        .find_map(|o| match o {
            Output::RunTool {
                call_id,
                name,
                arguments,
            } => {
                assert_eq!(name, "get_weather");
                assert_eq!(arguments, r#"{"location":"Paris"}"#);
                Some(call_id.clone())
            }
            _ => None,
        })
        .expect("tool runs");
    // The output is data; the function is the agent's, resolved when the model called it.
    let (call, tool) = h.core.tool_invocation(&call_id).expect("a running call");
    assert_eq!(call.arguments["location"], "Paris");
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::ToolStart { tool, .. } if tool == "get_weather")));
    let result = tool.invoke(&call);
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "call_1".into(),
            result,
        },
    );
    assert!(h.core.tool_invocation(&call_id).is_none(), "done");
    let out = h.drain();
    let evs = model_events(&out);
    assert_eq!(types(&out), ["conversation.item.create", "response.create"]);
    assert_eq!(evs[0]["item"]["output"], "sunny in Paris");
}

#[test]
fn parallel_tools_then_one_response_create() {
    let mut h = H::ready(Agent::new("A", "x").tool(weather_tool()));
    h.response_created("r1");
    h.function_call("r1", "f1", "c1", "get_weather", r#"{"location":"A"}"#);
    h.function_call("r1", "f2", "c2", "get_weather", r#"{"location":"B"}"#);
    h.response_done("r1", "completed");
    let runs = h
        .drain()
        .into_iter()
        .filter(|o| matches!(o, Output::RunTool { .. }))
        .count();
    assert_eq!(runs, 2, "both run at once");
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "c2".into(),
            result: Ok("b".into()),
        },
    );
    assert_eq!(types(&h.drain()), ["conversation.item.create"]);
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "c1".into(),
            result: Ok("a".into()),
        },
    );
    let evs = model_events(&h.drain());
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0]["type"], "conversation.item.create");
    assert_eq!(evs[1]["type"], "response.create");
    let id = evs[1]["event_id"].clone();
    // the model's refusal of our response.create lets a later one go out
    h.model(json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"conversation_already_has_active_response","message":"busy","param":null,"event_id":id}}));
    h.cmd(Command::SendMessage("hi".into()));
    assert_eq!(
        types(&h.drain()),
        ["conversation.item.create", "response.create"]
    );
}

#[test]
fn tool_timeout_and_errors_become_outputs() {
    let slow = FunctionTool::new("slow", "d", json!({"type":"object"}), |_| Ok("late".into()))
        .timeout(Duration::from_secs(2));
    let mut h = H::ready(Agent::new("A", "x").tool(slow));
    h.function_call_done("r1", "f1", "c1", "slow", "{}");
    h.drain();
    assert_eq!(h.core.next_deadline(), Some(h.now + Duration::from_secs(2)));
    h.ms(2000);
    h.tick();
    let out = h.drain();
    let evs = model_events(&out);
    assert_eq!(evs[0]["item"]["output"], "Error: the tool timed out.");
    assert_eq!(evs[1]["type"], "response.create");
    // the late result is ignored
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "c1".into(),
            result: Ok("late".into()),
        },
    );
    assert!(h.drain().is_empty());
    // unknown tool
    h.response_done("r-none", "completed");
    h.function_call_done("r2", "f2", "c2", "nope", "{}");
    let out = h.drain();
    assert!(model_events(&out)[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("no tool named nope"));
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::Error { .. })));
    // bad JSON arguments
    let mut h = H::ready(Agent::new("A", "x").tool(weather_tool()));
    h.function_call_done("r1", "f1", "c1", "get_weather", "{not json");
    let out = h.drain();
    assert!(!out.iter().any(|o| matches!(o, Output::RunTool { .. })));
    assert!(model_events(&out)[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    // failing tool
    h.function_call_done("r1", "f2", "c2", "get_weather", "{}");
    h.drain();
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "c2".into(),
            result: Err(ToolFailure::Failed("service down".into())),
        },
    );
    let out = h.drain();
    assert_eq!(
        model_events(&out)[0]["item"]["output"],
        "Error: service down"
    );
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::ToolEnd { is_error: true, .. })));
}

#[test]
fn approval_holds_the_call_until_approved_or_rejected() {
    let t = weather_tool().needs_approval(true);
    let mut h = H::ready(Agent::new("A", "x").tool(t));
    h.function_call_done("r1", "f1", "c1", "get_weather", r#"{"location":"X"}"#);
    let out = h.drain();
    assert!(events(&out).iter().any(
        |e| matches!(e, SessionEvent::ToolApprovalRequested { call_id, .. } if call_id == "c1")
    ));
    assert!(
        model_events(&out).is_empty() && !out.iter().any(|o| matches!(o, Output::RunTool { .. }))
    );
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "c1".into(),
            result: Ok("sneaky".into()),
        },
    );
    assert!(h.drain().is_empty(), "nothing before approval");
    h.cmd(Command::Approve("c1".into()));
    assert!(h
        .drain()
        .iter()
        .any(|o| matches!(o, Output::RunTool { .. })));

    h.function_call_done("r1", "f2", "c2", "get_weather", r#"{"location":"Y"}"#);
    h.drain();
    h.cmd(Command::Reject {
        call_id: "c2".into(),
        message: Some("not allowed".into()),
    });
    let evs = model_events(&h.drain());
    assert_eq!(evs[0]["item"]["output"], "not allowed");
}

// ---------------------------------------------------------------------------------------------
// 9. Guardrails

#[test]
fn guardrail_runs_debounced_and_a_trip_interrupts_and_reprompts() {
    let g = OutputGuardrail::new("no_secret", |t: &str| {
        if t.contains("secret") {
            Verdict::trip("said the secret")
        } else {
            Verdict::Pass
        }
    });
    let mut h = H::ready(Agent::new("A", "x").output_guardrail(g));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    let piece = |h: &mut H, t: &str| {
        h.model(json!({"type":"response.output_audio_transcript.delta","event_id":"e","response_id":"r1","item_id":"i1","output_index":0,"content_index":0,"delta":t}));
    };
    piece(&mut h, &"a".repeat(60));
    let runs = |out: &[Output]| -> Vec<twilio_realtime::call::GuardrailRun> {
        out.iter()
            .filter_map(|o| match o {
                Output::RunGuardrails(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    };
    assert!(runs(&h.drain()).is_empty(), "under 100 characters");
    piece(&mut h, &format!("{} the secret", "b".repeat(40)));
    let r = runs(&h.drain());
    assert_eq!(r.len(), 1);
    let trip = r[0].run();
    assert_eq!(trip, Some(("no_secret".into(), "said the secret".into())));
    h.ms(100);
    h.core.handle_input(
        h.now,
        Input::GuardrailResult {
            run: r[0].clone(),
            trip,
        },
    );
    let out = h.drain();
    assert!(events(&out).iter().any(|e| matches!(e, SessionEvent::GuardrailTripped { guardrail, .. } if guardrail == "no_secret")));
    assert!(matches!(twilio_cmds(&out)[0], TwilioCommand::Clear { .. }));
    assert_eq!(
        types(&out),
        [
            "response.cancel",
            "conversation.item.truncate",
            "conversation.item.create"
        ]
    );
    assert_eq!(model_events(&out)[2]["item"]["role"], "system");
    h.response_done("r1", "cancelled");
    assert_eq!(types(&h.drain()), ["response.create"]);
}

// ---------------------------------------------------------------------------------------------
// 10. History

#[test]
fn history_follows_items_and_transcripts_survive_truncation() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.model(json!({"type":"conversation.item.added","event_id":"e","previous_item_id":null,"item":{"id":"u1","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]}}));
    h.model(json!({"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":"u1","content_index":0,"transcript":"What's the weather?"}));
    h.model(json!({"type":"conversation.item.added","event_id":"e","previous_item_id":"u1","item":{"id":"a1","object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]}}));
    h.response_created("r1");
    h.delta("r1", "a1", 0, &audio(800));
    h.model(json!({"type":"response.output_audio_transcript.delta","event_id":"e","response_id":"r1","item_id":"a1","output_index":0,"content_index":0,"delta":"It is sunny "}));
    h.model(json!({"type":"response.output_audio_transcript.delta","event_id":"e","response_id":"r1","item_id":"a1","output_index":0,"content_index":0,"delta":"and warm."}));
    h.cmd(Command::Interrupt);
    h.model(json!({"type":"conversation.item.truncated","event_id":"e","item_id":"a1","content_index":0,"audio_end_ms":40}));
    h.model(json!({"type":"conversation.item.done","event_id":"e","previous_item_id":"u1","item":{"id":"a1","object":"realtime.item","type":"message","status":"incomplete","role":"assistant","content":[{"type":"output_audio","transcript":""}]}}));
    let hist = h.core.history();
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[0].text, "What's the weather?");
    assert_eq!(hist[1].text, "It is sunny and warm.");
    assert_eq!(hist[1].truncated, Some(40));
    assert_eq!(hist[1].status.as_deref(), Some("incomplete"));
    let out = h.drain();
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::HistoryAdded(i) if i.item_id == "u1")));
    // Issue 10 §6: an update carries the one item that changed, as it now is, not a copy of
    // the whole history (O(n²) over a long call).
    let updates: Vec<_> = events(&out)
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::HistoryUpdated(i) => Some(i),
            _ => None,
        })
        .collect();
    assert!(updates
        .iter()
        .any(|i| i.item_id == "u1" && i.text == "What's the weather?"));
    let last = updates.last().expect("updates");
    assert_eq!((last.item_id.as_str(), last.truncated), ("a1", Some(40)));
    h.model(json!({"type":"conversation.item.deleted","event_id":"e","item_id":"u1"}));
    assert_eq!(h.core.history().len(), 1);
    assert!(events(&h.drain()).contains(&SessionEvent::HistoryRemoved {
        item_id: "u1".into()
    }));
}

/// Issue 10 §8: agent text is kept per item. Two items of one response interleave their
/// transcript deltas (multibyte characters included); a final text replaces only its own
/// item's deltas (this used to cut the response's text byte-wise, inside a character).
#[test]
fn interleaved_multibyte_transcripts_are_kept_per_item() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    let tr = |h: &mut H, item: &str, text: &str, done: bool| {
        if done {
            h.model(json!({"type":"response.output_audio_transcript.done","event_id":"e","response_id":"r1","item_id":item,"output_index":0,"content_index":0,"transcript":text}));
        } else {
            h.model(json!({"type":"response.output_audio_transcript.delta","event_id":"e","response_id":"r1","item_id":item,"output_index":0,"content_index":0,"delta":text}));
        }
    };
    tr(&mut h, "i1", "a", false);
    tr(&mut h, "i2", "café ", false);
    tr(&mut h, "i2", "🎉", false);
    tr(&mut h, "i1", "a—b ", true);
    tr(&mut h, "i2", "café 🎉", true);
    h.drain();
    h.response_done("r1", "completed");
    let ends: Vec<String> = events(&h.drain())
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::AgentEnd { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(ends, ["a—b café 🎉"]);
}

/// Issue 10 §8: options at their extremes (`Duration::MAX`, `usize::MAX`) mean "never", they
/// do not overflow an `Instant` or a counter.
#[test]
fn extreme_options_never_panic() {
    let opts = {
        let mut o = CallConfig::default();
        o.default_rtt = Duration::MAX;
        o.rtt_probe_interval = Duration::MAX;
        o.guardrail_debounce_chars = usize::MAX;
        o.drain_timeout = Duration::MAX;
        o.tool_timeout = Duration::MAX;
        o.start_timeout = Duration::MAX;
        o.twilio_silence_timeout = Duration::MAX;
        o.model_ping_interval = Duration::MAX;
        o.model_pong_timeout = Duration::MAX;
        o.approval_timeout = Duration::MAX;
        o
    };
    let agent = Agent::new("A", "x")
        .tool(weather_tool())
        .output_guardrail(OutputGuardrail::new("g", |_| Verdict::Pass));
    let mut h = H::with(agent, opts);
    h.configured();
    h.start();
    h.ms(20);
    h.mark("rtt:1");
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.model(json!({"type":"response.output_audio_transcript.delta","event_id":"e","response_id":"r1","item_id":"i1","output_index":0,"content_index":0,"delta":"hello"}));
    h.function_call("r1", "fc1", "c1", "get_weather", r#"{"location":"Oslo"}"#);
    h.ms(60_000);
    h.tick();
    h.core
        .handle_input(h.now, Input::ModelClosed { error: gone() });
    h.collect();
    h.ms(60_000);
    h.tick();
    assert!(h.core.ended().is_none(), "waits for the last mark, forever");
    h.mark("0:0:800:i1");
    h.cmd(Command::Interrupt);
    h.drain();
}

/// Issue 16 item 4: a `start` announcing anything but µ-law 8 kHz mono is refused with a typed
/// reason, before any audio goes either way.
#[test]
fn a_start_in_another_media_format_is_refused() {
    for (encoding, rate, channels) in [
        ("audio/l16", 8000, 1),
        ("audio/x-mulaw", 16000, 1),
        ("audio/x-mulaw", 8000, 2),
    ] {
        let mut h = H::new(Agent::new("A", "x"));
        h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
        h.drain();
        h.twilio(
            json!({"event":"start","sequenceNumber":"1","streamSid":SID,"start":{
            "accountSid":"AC123","streamSid":SID,"callSid":"CA123","tracks":["inbound"],
            "customParameters":{},
            "mediaFormat":{"encoding":encoding,"sampleRate":rate,"channels":channels}}}),
        );
        h.response_created("r1");
        h.delta("r1", "i1", 0, &audio(800));
        let out = h.drain();
        assert!(twilio_cmds(&out).is_empty(), "{out:?}");
        assert!(out.iter().any(|o| matches!(o, Output::CloseModel)));
        assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
        let expected = CloseReason::Error(CallError::UnsupportedMediaFormat {
            encoding: encoding.into(),
            sample_rate: rate,
            channels,
        });
        assert_eq!(h.core.ended(), Some(&expected));
        assert!(events(&out).contains(&SessionEvent::Closed { reason: expected }));
        assert_eq!(h.core.stream_sid(), None);
    }
}

/// Issue 11 §2: the core decides when the application's start check runs (the first
/// acceptable `start`: not a refused format, not a second one) and when the model connection
/// opens (at once, or after an approved `start`); the shell only answers.
#[test]
fn the_core_asks_to_approve_the_first_start_then_connects_the_model() {
    let mut opts = CallConfig::default();
    opts.approve_start = true;
    opts.connect_model_on_start = true;
    let mut h = H::with(Agent::new("Default", "Default agent."), opts);
    assert!(
        h.drain().is_empty(),
        "no model connection before an approved start"
    );
    h.start();
    let out = h.drain();
    match out.as_slice() {
        [Output::ApproveStart(start)] => assert_eq!(start.start.call_sid, "CA123"),
        other => panic!("expected exactly an approval request, got {other:?}"),
    }
    assert_eq!(h.core.phase(), &CallPhase::AwaitingStart);
    assert_eq!(h.core.stream_sid(), None, "not live before the approval");
    // A second start while the first waits is Twilio misbehaving, not a second question.
    h.start();
    let out = h.drain();
    assert!(
        !out.iter().any(|o| matches!(o, Output::ApproveStart(_))),
        "{out:?}"
    );
    // The application approves, naming the call's agent.
    let chosen = Agent::new("Chosen", "You were chosen for this caller.");
    h.core.handle_input(
        h.now,
        Input::StartApproved {
            agent: Some(chosen),
        },
    );
    let out = h.drain();
    assert!(
        out.iter().any(|o| matches!(o, Output::ConnectModel)),
        "{out:?}"
    );
    assert_eq!(h.core.phase(), &CallPhase::Live);
    assert_eq!(h.core.stream_sid(), Some(SID));
    h.core.handle_input(h.now, Input::ModelConnected);
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    let update = model_events(&h.drain())
        .into_iter()
        .find(|e| e["type"] == "session.update")
        .expect("a session.update");
    assert_eq!(
        update["session"]["instructions"],
        "You were chosen for this caller."
    );
    // An answer with no question waiting changes nothing.
    h.core
        .handle_input(h.now, Input::StartApproved { agent: None });
    assert!(h.drain().is_empty());
}

#[test]
fn a_refused_start_ends_the_call_without_ever_asking_for_a_model() {
    let mut opts = CallConfig::default();
    opts.approve_start = true;
    opts.connect_model_on_start = true;
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.start();
    h.drain();
    h.core.handle_input(
        h.now,
        Input::Rejected {
            why: "bad token".into(),
        },
    );
    let out = h.drain();
    assert!(
        !out.iter().any(|o| matches!(o, Output::ConnectModel)),
        "{out:?}"
    );
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    let expected = CloseReason::Error(CallError::StreamRefused {
        reason: "bad token".into(),
    });
    assert_eq!(h.core.ended(), Some(&expected));
    // A late approval does not revive it.
    h.core
        .handle_input(h.now, Input::StartApproved { agent: None });
    assert!(h.drain().is_empty());
}

#[test]
fn an_approval_that_never_comes_ends_the_call_like_a_start_that_never_came() {
    let mut opts = CallConfig::default();
    opts.approve_start = true;
    opts.start_timeout = Duration::from_secs(5);
    let mut h = H::with(Agent::new("A", "x"), opts);
    let first = h.drain();
    assert!(
        matches!(first.as_slice(), [Output::ConnectModel]),
        "{first:?}"
    );
    h.start();
    h.drain();
    h.ms(5_001);
    h.tick();
    assert!(
        matches!(
            h.core.ended(),
            Some(CloseReason::Error(CallError::StreamNeverStarted { .. }))
        ),
        "{:?}",
        h.core.ended()
    );
}

/// Which echoes may wait for the shell's next wake-up is the core's rule: chunk marks only
/// move the playback position; an item's last mark, a probe or a stranger's name must not wait.
#[test]
fn only_chunk_echoes_may_wait() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.audio_done("r1", "i1");
    let sent = marks(&h.drain());
    let (chunks, others): (Vec<_>, Vec<_>) = sent.iter().partition(|m| !m.contains(":done:"));
    assert!(!chunks.is_empty() && !others.is_empty(), "{sent:?}");
    for m in chunks {
        assert!(CallCore::echo_can_wait(m), "{m}");
    }
    for m in others {
        assert!(!CallCore::echo_can_wait(m), "{m}");
    }
    assert!(!CallCore::echo_can_wait("rtt:3"));
    assert!(!CallCore::echo_can_wait("someone else's mark"));
}

// ---------------------------------------------------------------------------------------------
// 11. Endings; 12. DTMF

#[test]
fn twilio_stop_closes_the_model() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.twilio(json!({"event":"stop","sequenceNumber":"5","streamSid":SID,"stop":{"accountSid":"AC1","callSid":"CA1"}}));
    let out = h.drain();
    assert!(matches!(out[0], Output::CloseModel));
    assert_eq!(
        events(&out),
        [SessionEvent::Closed {
            reason: CloseReason::TwilioStopped
        }]
    );
    assert_eq!(h.core.next_deadline(), None);
}

#[test]
fn model_loss_ends_the_stream_after_the_last_mark() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.audio_done("r1", "i1");
    h.drain();
    h.core
        .handle_input(h.now, Input::ModelClosed { error: gone() });
    let out = h.drain();
    assert!(
        !out.iter().any(|o| matches!(o, Output::CloseTwilio)),
        "goodbye still playing"
    );
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::Error { .. })));
    h.ms(120);
    h.mark("0:0:800:i1");
    assert!(!h.drain().iter().any(|o| matches!(o, Output::CloseTwilio)));
    h.mark("0:0:done:i1");
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    assert!(matches!(
        events(&out).last(),
        Some(SessionEvent::Closed {
            reason: CloseReason::Error(CallError::ModelDisconnected { .. })
        })
    ));
}

#[test]
fn model_loss_drain_is_bounded() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.core
        .handle_input(h.now, Input::ModelClosed { error: gone() });
    h.drain();
    h.ms(5000);
    h.tick();
    assert!(h.drain().iter().any(|o| matches!(o, Output::CloseTwilio)));
}

#[test]
fn model_loss_while_idle_ends_at_once_and_connect_failure_too() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.core
        .handle_input(h.now, Input::ModelClosed { error: gone() });
    assert!(h.drain().iter().any(|o| matches!(o, Output::CloseTwilio)));
    let mut h = H::new(Agent::new("A", "x"));
    h.core.handle_input(
        h.now,
        Input::ModelConnectFailed {
            error: CallError::ModelRejected { status: 401 },
        },
    );
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    assert!(matches!(
        events(&out).last(),
        Some(SessionEvent::Closed {
            reason: CloseReason::Error(CallError::ModelRejected { status: 401 })
        })
    ));
}

#[test]
fn session_expired_reconnects_and_replays_the_conversation() {
    let mut h = H::ready(Agent::new("A", "Be kind.").tool(weather_tool()));
    h.model(json!({"type":"conversation.item.added","event_id":"e","previous_item_id":null,"item":{"id":"u1","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_text","text":"Hi there"}]}}));
    h.model(json!({"type":"conversation.item.added","event_id":"e","previous_item_id":"u1","item":{"id":"a1","object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":"Hello!"}]}}));
    h.model(json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"session_expired","message":"Your session hit the maximum duration of 60 minutes."}}));
    h.core
        .handle_input(h.now, Input::ModelClosed { error: gone() });
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::ModelNotReady)));
    assert!(out.iter().any(|o| matches!(o, Output::ConnectModel)));
    assert!(!out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    h.core.handle_input(h.now, Input::ModelConnected);
    h.model(json!({"type":"session.created","event_id":"e9","session":{}}));
    let out = h.drain();
    let evs = model_events(&out);
    assert_eq!(
        types(&out),
        ["session.update"],
        "only the update until it is confirmed"
    );
    assert_pcmu(&evs[0]["session"]);
    assert_eq!(evs[0]["session"]["tools"][0]["name"], "get_weather");
    assert!(!out.iter().any(|o| matches!(o, Output::ModelReady)));
    h.updated("audio/pcmu");
    let out = h.drain();
    let evs = model_events(&out);
    assert_eq!(evs[0]["item"]["content"][0]["text"], "Hi there");
    assert_eq!(evs[0]["item"]["role"], "user");
    assert_eq!(evs[1]["item"]["role"], "assistant");
    assert!(out.iter().any(|o| matches!(o, Output::ModelReady)));
}

#[test]
fn dtmf_is_an_event_and_optionally_a_message() {
    let mut h = H::ready(Agent::new("A", "x"));
    let dtmf = json!({"event":"dtmf","streamSid":SID,"sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"7"}});
    h.twilio(dtmf.clone());
    let out = h.drain();
    assert_eq!(events(&out), [SessionEvent::Dtmf { digit: "7".into() }]);
    assert!(model_events(&out).is_empty());
    let opts = {
        let mut o = CallConfig::default();
        o.forward_dtmf = true;
        o
    };
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.configured();
    h.start();
    h.drain();
    h.twilio(dtmf);
    assert_eq!(
        types(&h.drain()),
        ["conversation.item.create", "response.create"]
    );
}

#[test]
fn close_command_closes_both_sides() {
    let mut h = H::ready(Agent::new("A", "x"));
    h.cmd(Command::Close);
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::CloseModel)));
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    assert_eq!(
        events(&out),
        [SessionEvent::Closed {
            reason: CloseReason::Closed
        }]
    );
    h.cmd(Command::SendMessage("ignored".into()));
    assert!(h.drain().is_empty());
}

#[test]
fn every_model_event_the_core_sends_is_a_known_client_event() {
    // Round trip through the crate's own parser (the schema test validates the shapes).
    let mut h = H::ready(Agent::new("A", "x").tool(weather_tool()));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.function_call("r1", "f1", "c1", "get_weather", "{}");
    h.cmd(Command::Interrupt);
    for o in h.drain() {
        if let Output::Model(ev) = o {
            let back = ClientEvent::parse(&ev.to_json()).unwrap();
            assert_eq!(back.to_json(), ev.to_json());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dead peers (issue 10 §5): decided here with the clock, not with socket timeouts.

#[test]
fn approval_that_never_comes_is_rejected_at_the_deadline() {
    let t = weather_tool().needs_approval(true);
    let opts = {
        let mut o = CallConfig::default();
        o.approval_timeout = Duration::from_secs(60);
        o
    };
    let mut h = H::with(Agent::new("A", "x").tool(t), opts);
    h.configured();
    h.start();
    h.drain();
    h.function_call_done("r1", "f1", "c1", "get_weather", r#"{"location":"X"}"#);
    h.drain();
    h.ms(59_000);
    // Twilio keeps the stream alive meanwhile.
    h.mark("unrelated");
    h.tick();
    assert!(
        model_events(&h.drain()).is_empty(),
        "not rejected before the deadline"
    );
    assert!(h
        .core
        .next_deadline()
        .is_some_and(|d| d <= h.now + Duration::from_secs(1)));
    h.ms(1000);
    h.mark("unrelated");
    h.tick();
    let out = h.drain();
    let evs = model_events(&out);
    assert_eq!(
        evs[0]["item"]["output"],
        twilio_realtime::call::APPROVAL_TIMEOUT_OUTPUT
    );
    assert!(events(&out).iter().any(
        |e| matches!(e, SessionEvent::ToolEnd { is_error: true, call_id, .. } if call_id == "c1")
    ));
    assert!(!out.iter().any(|o| matches!(o, Output::RunTool { .. })));
    // a late approval runs nothing
    h.cmd(Command::Approve("c1".into()));
    assert!(!h
        .drain()
        .iter()
        .any(|o| matches!(o, Output::RunTool { .. })));
    assert!(h.core.ended().is_none(), "the call goes on");
}

#[test]
fn a_twilio_stream_that_goes_silent_ends_the_call_and_closes_the_model() {
    let opts = {
        let mut o = CallConfig::default();
        o.twilio_silence_timeout = Duration::from_secs(10);
        o
    };
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.configured();
    // no silence rule before start (the start timeout covers that)
    assert_ne!(h.core.next_deadline(), None);
    h.start();
    h.drain();
    // media frames arrive on the lane; the shell reports the latest one
    for _ in 0..5 {
        h.ms(2000);
        let at = h.now;
        h.core.handle_input(at, Input::TwilioActivity);
    }
    h.tick();
    assert!(h.core.ended().is_none());
    assert_eq!(
        h.core.next_deadline(),
        Some(h.now + Duration::from_secs(10))
    );
    // an activity report older than what the core knows does not move the deadline back
    let old = h.now - Duration::from_secs(5);
    h.core.handle_input(old, Input::TwilioActivity);
    h.ms(9_999);
    h.tick();
    assert!(h.core.ended().is_none());
    h.ms(1);
    h.tick();
    assert!(matches!(
        h.core.ended(),
        Some(CloseReason::Error(CallError::TwilioSilent { .. }))
    ));
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::CloseModel)));
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    assert!(events(&out).iter().any(|e| matches!(
        e,
        SessionEvent::Closed {
            reason: CloseReason::Error(CallError::TwilioSilent { .. })
        }
    )));
}

#[test]
fn a_quiet_model_is_pinged_and_lost_when_nothing_answers() {
    let opts = {
        let mut o = CallConfig::default();
        o.model_ping_interval = Duration::from_secs(20);
        o.model_pong_timeout = Duration::from_secs(10);
        o.twilio_silence_timeout = Duration::MAX;
        o
    };
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.core.handle_input(h.now, Input::ModelConnected);
    h.configured();
    h.start();
    h.drain();
    // model events postpone the ping
    h.ms(15_000);
    h.model(json!({"type":"input_audio_buffer.speech_stopped","event_id":"e","audio_end_ms":10,"item_id":"u1"}));
    h.ms(15_000);
    h.tick();
    assert!(!h.drain().iter().any(|o| matches!(o, Output::PingModel)));
    h.ms(5_000);
    h.tick();
    assert!(h.drain().iter().any(|o| matches!(o, Output::PingModel)));
    // a pong (any frame) after the ping answers it; the next ping is 20 s after that
    h.ms(50);
    let at = h.now;
    h.core.handle_input(at, Input::ModelActivity);
    assert_eq!(
        h.core.next_deadline(),
        Some(h.now + Duration::from_secs(20))
    );
    h.ms(20_000);
    h.tick();
    assert!(h.drain().iter().any(|o| matches!(o, Output::PingModel)));
    // a frame from before the ping does not answer it
    let before = h.now - Duration::from_millis(1);
    h.core.handle_input(before, Input::ModelActivity);
    h.ms(9_999);
    h.tick();
    assert!(h.core.ended().is_none());
    assert!(h.drain().is_empty());
    h.ms(1);
    h.tick();
    // nothing was playing: the model-loss rule ends the call at once
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::CloseModel)));
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    match h.core.ended() {
        Some(CloseReason::Error(CallError::ModelUnresponsive { .. })) => {}
        other => panic!("expected a model loss, got {other:?}"),
    }
}

#[test]
fn a_session_never_confirmed_ends_the_call_at_the_setup_timeout() {
    let opts = {
        let mut o = CallConfig::default();
        o.model_setup_timeout = Duration::from_secs(3);
        o.twilio_silence_timeout = Duration::MAX;
        o
    };
    let mut h = H::with(Agent::new("A", "x"), opts);
    h.core.handle_input(h.now, Input::ModelConnected);
    h.start();
    h.ms(1_000);
    h.model(json!({"type":"session.created","event_id":"e0","session":{"type":"realtime"}}));
    assert_eq!(types(&h.drain()), ["session.update"]);
    // The update is never answered: 3 s after the socket opened the call ends.
    h.ms(1_999);
    h.tick();
    assert!(h.core.ended().is_none());
    h.ms(1);
    h.tick();
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::CloseModel)));
    assert!(out.iter().any(|o| matches!(o, Output::CloseTwilio)));
    assert_eq!(
        closed_reason(&out),
        Some(CloseReason::Error(CallError::ModelSetupTimeout {
            waited: Duration::from_secs(3)
        }))
    );
}

#[test]
fn liveness_options_at_duration_max_never_fire() {
    let opts = {
        let mut o = CallConfig::default();
        o.model_ping_interval = Duration::MAX;
        o.model_pong_timeout = Duration::MAX;
        o.twilio_silence_timeout = Duration::MAX;
        o.approval_timeout = Duration::MAX;
        o
    };
    let t = weather_tool().needs_approval(true);
    let mut h = H::with(Agent::new("A", "x").tool(t), opts);
    h.core.handle_input(h.now, Input::ModelConnected);
    h.configured();
    h.start();
    h.function_call("r1", "f1", "c1", "get_weather", "{}");
    h.drain();
    h.mark("x");
    h.drain();
    h.ms(10 * 365 * 24 * 3600 * 1000);
    h.tick();
    assert!(h.core.ended().is_none());
    assert!(!h.drain().iter().any(|o| matches!(o, Output::PingModel)));
}

// ---------------------------------------------------------------------------------------------
// Protocol details the real API enforces (issue 10 §9)

fn runs(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::RunTool { .. }))
        .count()
}

#[test]
fn function_calls_of_a_cut_response_are_not_run_and_nothing_talks_over_the_caller() {
    let billing = Agent::new("Billing", "You do billing.");
    let mut h = H::ready(Agent::new("A", "x").tool(weather_tool()).handoff(&billing));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.function_call("r1", "f1", "c1", "get_weather", r#"{"location":"Oslo"}"#);
    h.function_call("r1", "f2", "c2", "transfer_to_billing", "{}");
    assert_eq!(runs(&h.drain()), 0, "calls wait for their response.done");
    speech_started(&mut h); // the caller barges in before the response is done
    h.drain();
    h.response_done("r1", "cancelled");
    let out = h.drain();
    assert_eq!(runs(&out), 0, "a cut response's calls are not run");
    assert!(
        types(&out).is_empty(),
        "no output, no handoff, no response.create"
    );
    assert!(!events(&out).iter().any(|e| matches!(
        e,
        SessionEvent::Handoff { .. } | SessionEvent::ToolStart { .. }
    )));
    assert_eq!(h.core.agent().name(), "A");

    // interrupt() cuts too, even if the server then reports the response completed
    h.response_created("r2");
    h.delta("r2", "i2", 0, &audio(800));
    h.function_call("r2", "f3", "c3", "get_weather", r#"{"location":"Rome"}"#);
    h.cmd(Command::Interrupt);
    h.drain();
    h.response_done("r2", "completed");
    assert_eq!(runs(&h.drain()), 0);

    // an incomplete call item is not run either
    h.response_created("r3");
    h.model(json!({"type":"response.output_item.done","event_id":"e","response_id":"r3","output_index":0,
        "item":{"id":"f4","object":"realtime.item","type":"function_call","status":"incomplete",
        "name":"get_weather","call_id":"c4","arguments":"{\"loc"}}));
    h.response_done("r3", "incomplete");
    let out = h.drain();
    assert_eq!(runs(&out), 0);
    assert!(types(&out).is_empty());
}

#[test]
fn a_tool_running_when_the_caller_barges_in_answers_without_a_response_create() {
    let mut h = H::ready(Agent::new("A", "x").tool(weather_tool()));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(1600));
    h.function_call("r1", "f1", "c1", "get_weather", r#"{"location":"Oslo"}"#);
    h.response_done("r1", "completed");
    assert_eq!(runs(&h.drain()), 1);
    h.ms(50);
    speech_started(&mut h); // still hearing "let me check"
    h.drain();
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "c1".into(),
            result: Ok("sunny".into()),
        },
    );
    let out = h.drain();
    assert_eq!(
        types(&out),
        ["conversation.item.create"],
        "the output is given; the caller's turn is answered as usual"
    );
}

#[test]
fn audio_queued_before_start_that_a_barge_in_discards_is_truncated_at_zero() {
    let mut h = H::new(Agent::new("A", "x"));
    h.configured();
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.drain();
    speech_started(&mut h);
    let out = h.drain();
    let evs = model_events(&out);
    let t = evs
        .iter()
        .find(|e| e["type"] == "conversation.item.truncate")
        .expect("the unheard item is truncated");
    assert_eq!(t["item_id"], "i1");
    assert_eq!(t["audio_end_ms"], 0);
    assert!(
        events(&out).iter().any(|e| matches!(e,
        SessionEvent::AudioInterrupted { heard, cut, .. }
            if heard == &vec![("i1".to_owned(), 0)] && cut == &vec![("i1".to_owned(), 100)])),
        "800 bytes held for the stream, none heard: 100 ms cut"
    );
    h.start();
    assert!(
        !twilio_cmds(&h.drain())
            .iter()
            .any(|c| matches!(c, TwilioCommand::Media { .. })),
        "the discarded audio never plays"
    );
}

#[test]
fn session_expiry_resets_tools_and_playback_and_carries_the_callers_words() {
    let mut h = H::ready(Agent::new("A", "x").voice("marin").tool(weather_tool()));
    // the first update asks for caller transcription by default
    // a caller turn, transcribed
    h.model(json!({"type":"conversation.item.added","event_id":"e","previous_item_id":null,"item":{"id":"u1","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]}}));
    h.model(json!({"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":"u1","content_index":0,"transcript":"Weather in Oslo?","usage":{"type":"duration","seconds":1.2}}));
    // the agent speaks and calls a tool
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(1600));
    h.function_call("r1", "f1", "c1", "get_weather", r#"{"location":"Oslo"}"#);
    h.response_done("r1", "completed");
    assert_eq!(runs(&h.drain()), 1);
    // the session expires while the audio plays and the tool runs
    h.model(json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"session_expired","message":"Your session hit the maximum duration of 60 minutes."}}));
    h.core
        .handle_input(h.now, Input::ModelClosed { error: gone() });
    let out = h.drain();
    assert!(
        twilio_cmds(&out)
            .iter()
            .any(|c| matches!(c, TwilioCommand::Clear { .. })),
        "the old session's audio is cleared"
    );
    assert!(!h.core.ledger().is_playing());
    // the old tool's late result is ignored
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "c1".into(),
            result: Ok("sunny".into()),
        },
    );
    assert!(types(&h.drain()).is_empty());
    // the new session: voice set again, then the conversation with the caller's words
    h.core.handle_input(h.now, Input::ModelConnected);
    h.model(json!({"type":"session.created","event_id":"e9","session":{}}));
    let evs = model_events(&h.drain());
    assert_eq!(evs[0]["session"]["audio"]["output"]["voice"], "marin");
    assert!(evs[0]["session"]["audio"]["input"]["transcription"]["model"].is_string());
    h.updated("audio/pcmu");
    let evs = model_events(&h.drain());
    let user: Vec<&Value> = evs.iter().filter(|e| e["item"]["role"] == "user").collect();
    assert_eq!(user.len(), 1, "{evs:?}");
    assert_eq!(user[0]["item"]["content"][0]["text"], "Weather in Oslo?");
    assert!(
        !evs.iter().any(|e| e["type"] == "response.create"),
        "nothing answers the dropped tool call"
    );
}

#[test]
fn a_later_session_updated_without_pcmu_ends_the_call() {
    let mut h = H::ready(Agent::new("A", "x"));
    // e.g. a raw update the server took, or a server that changed the format by itself
    h.updated("audio/pcm");
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::ModelNotReady)));
    assert!(matches!(
        closed_reason(&out),
        Some(CloseReason::Error(CallError::ModelConfigRejected { param: Some(p), .. })) if p == "session.audio.input.format"
    ));
}

#[test]
fn audio_the_model_produced_unheard_still_fixes_its_voice() {
    let b = Agent::new("B", "b").voice("cedar");
    let mut h = H::new(Agent::new("A", "a").handoff(&b));
    h.start();
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    // the model speaks before it confirmed the session: dropped, but it did speak
    h.response_created("r0");
    h.delta("r0", "i0", 0, &audio(480));
    h.updated("audio/pcmu");
    h.response_done("r0", "completed");
    h.response_created("r1");
    h.function_call("r1", "fc", "c1", "transfer_to_b", "");
    h.response_done("r1", "completed");
    let evs = model_events(&h.drain());
    let upd = evs.iter().find(|e| e["type"] == "session.update").unwrap();
    assert!(
        upd["session"]["audio"]["output"].get("voice").is_none(),
        "production would refuse it: {upd}"
    );
}

// ---------------------------------------------------------------------------------------------
// Ending the call: hang-up and transfer after the last words are heard (issue 12 §2, §3)

/// The agent says a goodbye of `chunks` × 100 ms in `resp`/`item`; returns the marks sent.
fn goodbye(h: &mut H, resp: &str, item: &str, chunks: usize) -> Vec<String> {
    h.response_created(resp);
    for _ in 0..chunks {
        h.delta(resp, item, 0, &audio(800));
    }
    h.audio_done(resp, item);
    marks(&h.drain())
}

fn ended_with(out: &[Output]) -> Option<CloseReason> {
    out.iter()
        .any(|o| matches!(o, Output::CloseTwilio))
        .then(|| closed_reason(out))?
}

#[test]
fn end_call_in_the_goodbye_response_ends_after_the_last_mark_echoes() {
    let mut h = H::ready(Agent::new("A", "x").can_hang_up());
    let sent = goodbye(&mut h, "r1", "i1", 5);
    assert_eq!(sent.len(), 6, "five chunk marks and the item's done mark");
    h.function_call("r1", "f1", "c1", "end_call", "{}");
    assert!(
        model_events(&h.drain()).is_empty(),
        "calls run at response.done"
    );
    h.response_done("r1", "completed");
    let out = h.drain();
    let evs = model_events(&out);
    assert_eq!(evs.len(), 1, "only the tool's output: {evs:?}");
    assert_eq!(evs[0]["item"]["type"], "function_call_output");
    assert_eq!(evs[0]["item"]["call_id"], "c1");
    assert!(events(&out).contains(&SessionEvent::Ending {
        reason: CloseReason::AgentHungUp
    }));
    assert!(
        !types(&out).contains(&"response.create".to_owned()),
        "nothing may talk after the goodbye"
    );
    assert_eq!(ended_with(&out), None, "the goodbye has not been heard yet");
    for m in &sent[..sent.len() - 1] {
        h.ms(100);
        h.mark(m);
        assert_eq!(ended_with(&h.drain()), None, "still playing at {m}");
    }
    h.ms(100);
    h.mark(&sent[sent.len() - 1]);
    let out = h.drain();
    assert_eq!(ended_with(&out), Some(CloseReason::AgentHungUp));
    let close_twilio = out.iter().position(|o| matches!(o, Output::CloseTwilio));
    let close_model = out.iter().position(|o| matches!(o, Output::CloseModel));
    assert!(
        close_twilio < close_model,
        "the stream closes, then the model"
    );
    assert_eq!(h.core.ended(), Some(&CloseReason::AgentHungUp));
}

#[test]
fn end_call_in_the_response_after_the_goodbye_waits_for_the_goodbye_to_play() {
    let mut h = H::ready(Agent::new("A", "x").can_hang_up());
    let sent = goodbye(&mut h, "r1", "i1", 3);
    h.response_done("r1", "completed");
    h.drain();
    // the model answers its own turn with just the tool call
    h.response_created("r2");
    h.function_call("r2", "f1", "c1", "end_call", "{}");
    h.response_done("r2", "completed");
    let out = h.drain();
    assert!(!types(&out).contains(&"response.create".to_owned()));
    assert_eq!(ended_with(&out), None);
    for m in &sent {
        h.ms(100);
        h.mark(m);
    }
    assert_eq!(ended_with(&h.drain()), Some(CloseReason::AgentHungUp));
}

#[test]
fn end_call_with_nothing_playing_ends_when_its_response_is_done() {
    let mut h = H::ready(Agent::new("A", "x").can_hang_up());
    h.response_created("r1");
    h.function_call("r1", "f1", "c1", "end_call", "{}");
    assert_eq!(
        ended_with(&h.drain()),
        None,
        "its response is still under way"
    );
    h.response_done("r1", "completed");
    assert_eq!(ended_with(&h.drain()), Some(CloseReason::AgentHungUp));
}

#[test]
fn hang_up_is_bounded_by_the_timeout_when_marks_never_echo() {
    let opts = {
        let mut o = CallConfig::default();
        o.hang_up_timeout = Duration::from_secs(3);
        o
    };
    let mut h = H::with(Agent::new("A", "x").can_hang_up(), opts);
    h.configured();
    h.start();
    h.drain();
    goodbye(&mut h, "r1", "i1", 5);
    h.function_call("r1", "f1", "c1", "end_call", "{}");
    h.response_done("r1", "completed");
    h.drain();
    let deadline = h.core.next_deadline().expect("a deadline");
    assert!(deadline <= h.now + Duration::from_secs(3));
    h.ms(2900);
    h.tick();
    assert_eq!(ended_with(&h.drain()), None);
    h.ms(100);
    h.tick();
    assert_eq!(ended_with(&h.drain()), Some(CloseReason::AgentHungUp));
}

#[test]
fn application_hang_up_waits_for_the_response_under_way_and_asks_for_none() {
    let mut h = H::ready(Agent::new("A", "x").tool(weather_tool()));
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.cmd(Command::HangUp);
    let out = h.drain();
    assert!(events(&out).contains(&SessionEvent::Ending {
        reason: CloseReason::HungUp
    }));
    assert_eq!(ended_with(&out), None);
    // more of the same response still plays
    h.delta("r1", "i1", 0, &audio(800));
    h.audio_done("r1", "i1");
    let mut sent = marks(&h.drain());
    h.function_call("r1", "f1", "c1", "get_weather", r#"{"location":"Oslo"}"#);
    h.core.handle_input(
        h.now,
        Input::ToolResult {
            call_id: "c1".into(),
            result: Ok("sunny".into()),
        },
    );
    h.cmd(Command::SendMessage("one more thing".into()));
    h.response_done("r1", "completed");
    let out = h.drain();
    assert!(
        !types(&out).contains(&"response.create".to_owned()),
        "no response after a hang-up: {:?}",
        types(&out)
    );
    assert_eq!(ended_with(&out), None);
    // the first chunk's mark was sent before the hang-up
    let first = "0:0:800:i1".to_owned();
    sent.insert(0, first);
    for m in &sent {
        h.mark(m);
    }
    assert_eq!(ended_with(&h.drain()), Some(CloseReason::HungUp));
}

#[test]
fn a_barge_in_during_the_goodbye_ends_the_call_at_once() {
    let mut h = H::ready(Agent::new("A", "x").can_hang_up());
    goodbye(&mut h, "r1", "i1", 5);
    h.function_call("r1", "f1", "c1", "end_call", "{}");
    h.response_done("r1", "completed");
    h.drain();
    h.ms(150);
    speech_started(&mut h);
    let out = h.drain();
    assert!(matches!(
        twilio_cmds(&out).first(),
        Some(TwilioCommand::Clear { .. })
    ));
    assert_eq!(ended_with(&out), Some(CloseReason::AgentHungUp));
}

#[test]
fn end_call_is_only_built_in_for_agents_that_can_hang_up() {
    let plain = Agent::new("A", "x");
    assert!(plain.tool_definitions().is_empty());
    let mut h = H::ready(plain);
    h.response_created("r1");
    h.function_call("r1", "f1", "c1", "end_call", "{}");
    h.response_done("r1", "completed");
    let out = h.drain();
    assert_eq!(ended_with(&out), None);
    let evs = model_events(&out);
    assert!(evs[0]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("no tool named end_call"));
    assert_eq!(
        types(&out).last().map(String::as_str),
        Some("response.create")
    );

    let defs = Agent::new("A", "x").can_hang_up().tool_definitions();
    assert_eq!(defs.len(), 1);
    assert_eq!(defs[0].name, "end_call");
}

fn desk_agent() -> Agent {
    Agent::new("A", "x")
        .transfer_to("Sales", "+14155550100", "Buying something")
        .unwrap()
        .transfer_to("Support", "sip:help@pbx.example.com", "")
        .unwrap()
}

#[test]
fn transfer_call_offers_only_configured_destinations() {
    let defs = desk_agent().tool_definitions();
    assert_eq!(defs.len(), 1);
    assert_eq!(defs[0].name, "transfer_call");
    assert_eq!(
        defs[0].parameters["properties"]["destination"]["enum"],
        json!(["Sales", "Support"])
    );
    assert_eq!(defs[0].parameters["required"], json!(["destination"]));
    assert!(defs[0].description.contains("Sales: Buying something"));
    for bad in ["4155550100", "+1 415 555 0100", "sip:", "tel:+14155550100"] {
        assert!(
            Agent::new("A", "x").transfer_to("X", bad, "").is_err(),
            "{bad}"
        );
    }
    // the session.update carries it
    let mut h = H::new(desk_agent());
    h.model(json!({"type":"session.created","event_id":"e0","session":{}}));
    let evs = model_events(&h.drain());
    assert_eq!(evs[0]["session"]["tools"][0]["name"], "transfer_call");
}

#[test]
fn transfer_call_ends_after_the_last_words_with_the_destination() {
    let mut h = H::ready(desk_agent());
    let sent = goodbye(&mut h, "r1", "i1", 2);
    h.function_call(
        "r1",
        "f1",
        "c1",
        "transfer_call",
        r#"{"destination":"Support"}"#,
    );
    h.response_done("r1", "completed");
    let out = h.drain();
    let reason = CloseReason::Transferred {
        name: "Support".into(),
        destination: twilio_realtime::telephony::transfer::Destination::Sip(
            "sip:help@pbx.example.com".into(),
        ),
        by_agent: true,
    };
    assert!(events(&out).contains(&SessionEvent::Ending {
        reason: reason.clone()
    }));
    assert_eq!(
        model_events(&out)[0]["item"]["type"],
        "function_call_output"
    );
    assert!(!types(&out).contains(&"response.create".to_owned()));
    for m in &sent {
        h.mark(m);
    }
    let out = h.drain();
    assert_eq!(ended_with(&out), Some(reason.clone()));
    assert_eq!(reason.to_string(), "transferred to Support (by the agent)");
}

#[test]
fn transfer_call_to_an_unknown_destination_is_refused_and_the_model_may_choose_again() {
    let mut h = H::ready(desk_agent());
    h.response_created("r1");
    h.function_call(
        "r1",
        "f1",
        "c1",
        "transfer_call",
        r#"{"destination":"+19005550199"}"#,
    );
    h.response_done("r1", "completed");
    let out = h.drain();
    assert_eq!(ended_with(&out), None);
    assert!(!events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::Ending { .. })));
    let evs = model_events(&out);
    let output = evs[0]["item"]["output"].as_str().unwrap();
    assert!(output.contains("Sales, Support"), "{output}");
    assert_eq!(
        types(&out).last().map(String::as_str),
        Some("response.create")
    );
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::Error(CallError::UnknownTool { .. }))));
}

#[test]
fn application_transfer_and_the_first_decision_stands() {
    let mut h = H::ready(Agent::new("A", "x").can_hang_up());
    goodbye(&mut h, "r1", "i1", 1);
    let target = twilio_realtime::telephony::transfer::TransferTarget {
        name: "Desk".into(),
        destination: twilio_realtime::telephony::transfer::Destination::parse("+15550100").unwrap(),
        description: String::new(),
    };
    h.cmd(Command::Transfer(target));
    h.function_call("r1", "f1", "c1", "end_call", "{}");
    h.response_done("r1", "completed");
    let out = h.drain();
    let endings: Vec<_> = events(&out)
        .into_iter()
        .filter(|e| matches!(e, SessionEvent::Ending { .. }))
        .collect();
    assert_eq!(endings.len(), 1, "{endings:?}");
    h.cmd(Command::Close);
    assert_eq!(
        closed_reason(&h.drain()),
        Some(CloseReason::Closed),
        "close() still ends at once"
    );
}

#[test]
fn the_model_lost_while_ending_keeps_the_reason_and_the_wait_for_the_audio() {
    let mut h = H::ready(Agent::new("A", "x").can_hang_up());
    let sent = goodbye(&mut h, "r1", "i1", 2);
    h.function_call("r1", "f1", "c1", "end_call", "{}");
    h.response_done("r1", "completed");
    h.core
        .handle_input(h.now, Input::ModelClosed { error: gone() });
    let out = h.drain();
    assert_eq!(ended_with(&out), None);
    assert!(!out.iter().any(|o| matches!(o, Output::ConnectModel)));
    for m in &sent {
        h.mark(m);
    }
    assert_eq!(ended_with(&h.drain()), Some(CloseReason::AgentHungUp));
}

#[test]
fn a_goodbye_cut_before_its_response_is_done_does_not_hang_up() {
    let mut h = H::ready(Agent::new("A", "x").can_hang_up());
    goodbye(&mut h, "r1", "i1", 5);
    h.function_call("r1", "f1", "c1", "end_call", "{}");
    h.ms(150);
    speech_started(&mut h);
    h.response_done("r1", "cancelled");
    let out = h.drain();
    assert_eq!(ended_with(&out), None, "the caller has the floor");
    assert!(!events(&out)
        .iter()
        .any(|e| matches!(e, SessionEvent::Ending { .. })));
    assert!(h.core.ended().is_none());
}

// ---------------------------------------------------------------------------------------------
// A warm model: the session was configured at the webhook (Input::ModelConnectedConfigured)

fn pcmu_session() -> Value {
    json!({"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}},
        "output":{"format":{"type":"audio/pcmu"},"voice":"marin"}}})
}

impl H {
    fn preconfigured(&mut self, pre: Preconfigured) {
        self.core
            .handle_input(self.now, Input::ModelConnectedConfigured(pre));
        self.collect();
    }
}

#[test]
fn a_session_configured_at_the_webhook_for_this_agent_is_ready_at_once_and_greets() {
    let agent = Agent::new("A", "You are Ann.");
    let opts = greeting_opts(Greeting::Instructions("Greet the caller.".into()));
    let sent = CallCore::first_session_config(&agent, &opts);
    let mut h = H::with(agent, opts);
    h.start();
    assert!(model_events(&h.drain()).is_empty());
    h.preconfigured(Preconfigured::Confirmed {
        sent,
        session: pcmu_session(),
    });
    let out = h.drain();
    assert!(
        matches!(out.first(), Some(Output::ModelReady)),
        "ready before anything else: no session.update, no wait ({:?})",
        types(&out)
    );
    // The greeting at once, and no session.update of its own.
    assert_eq!(types(&out), ["response.create"]);
}

#[test]
fn a_webhook_configuration_the_server_showed_without_pcmu_is_not_ready() {
    let agent = Agent::new("A", "x");
    let sent = CallCore::first_session_config(&agent, &CallConfig::default());
    let mut h = H::new(agent);
    h.start();
    h.preconfigured(Preconfigured::Confirmed {
        sent,
        session: json!({"type":"realtime","audio":{"input":{"format":{"type":"audio/pcm"}},
            "output":{"format":{"type":"audio/pcm"}}}}),
    });
    assert_ended_without_pcmu(&h.drain());
}

#[test]
fn a_webhook_configuration_the_server_refused_ends_the_call_at_claim() {
    let agent = Agent::new("A", "x").voice("robot");
    let sent = CallCore::first_session_config(&agent, &CallConfig::default());
    let mut h = H::new(agent);
    h.start();
    h.preconfigured(Preconfigured::Refused {
        sent,
        param: Some("session.audio.output.voice".into()),
        message: "Invalid value: 'robot'.".into(),
    });
    let out = h.drain();
    assert!(!out.iter().any(|o| matches!(o, Output::ModelReady)));
    assert!(model_events(&out).is_empty(), "no retry: {:?}", types(&out));
    assert_eq!(
        closed_reason(&out),
        Some(CloseReason::Error(CallError::ModelConfigRejected {
            param: Some("session.audio.output.voice".into()),
            message: "Invalid value: 'robot'.".into(),
        }))
    );
}

#[test]
fn an_agent_that_differs_from_the_webhooks_sends_its_own_update_and_waits_for_it() {
    let webhook_agent = Agent::new("A", "You speak English.");
    let opts = greeting_opts(Greeting::Instructions("Greet the caller.".into()));
    let sent = CallCore::first_session_config(&webhook_agent, &opts);
    // On `start` the agent was chosen again, from details the webhook did not have.
    let mut h = H::with(Agent::new("A", "Vous parlez français."), opts);
    h.start();
    h.preconfigured(Preconfigured::Confirmed {
        sent,
        session: pcmu_session(),
    });
    let out = h.drain();
    assert!(!out.iter().any(|o| matches!(o, Output::ModelReady)));
    let evs = model_events(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["type"], "session.update");
    assert_eq!(evs[0]["session"]["instructions"], "Vous parlez français.");
    assert_pcmu(&evs[0]["session"]);
    h.updated("audio/pcmu");
    let out = h.drain();
    assert!(matches!(out.first(), Some(Output::ModelReady)));
    assert_eq!(types(&out), ["response.create"]);

    // The same after a refusal at the webhook: the call's own configuration is judged.
    let webhook_agent = Agent::new("A", "x").voice("robot");
    let sent = CallCore::first_session_config(&webhook_agent, &CallConfig::default());
    let mut h = H::new(Agent::new("A", "x").voice("marin"));
    h.start();
    h.preconfigured(Preconfigured::Refused {
        sent,
        param: Some("session.audio.output.voice".into()),
        message: "Invalid value: 'robot'.".into(),
    });
    assert_eq!(types(&h.drain()), ["session.update"]);
    h.updated("audio/pcmu");
    assert!(matches!(h.drain().first(), Some(Output::ModelReady)));
}

#[test]
fn the_phase_moves_from_awaiting_start_through_live_and_draining_to_ended() {
    let mut h = H::new(Agent::new("A", "x"));
    h.configured();
    assert_eq!(h.core.phase(), &CallPhase::AwaitingStart);
    h.start();
    assert_eq!(h.core.phase(), &CallPhase::Live);
    h.response_created("r1");
    h.delta("r1", "i1", 0, &audio(800));
    h.cmd(Command::HangUp);
    assert_eq!(
        h.core.phase(),
        &CallPhase::Draining,
        "the goodbye is still heard"
    );
    // Nobody echoes the marks: the hang-up deadline ends it.
    h.ms(60_000);
    h.tick();
    assert_eq!(h.core.phase(), &CallPhase::Ended(CloseReason::HungUp));
    assert_eq!(h.core.ended(), Some(&CloseReason::HungUp));
    // An ended call stays ended, whatever comes.
    h.start();
    h.response_created("r2");
    assert_eq!(h.core.phase(), &CallPhase::Ended(CloseReason::HungUp));
}

#[test]
fn a_sideband_call_has_no_stream_to_wait_for() {
    let mut opts = CallConfig::default();
    opts.sideband = true;
    let h = H::with(Agent::new("A", "x"), opts);
    assert_eq!(h.core.phase(), &CallPhase::Live);
}
