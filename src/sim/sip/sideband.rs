//! The fake's sideband WebSocket: one simulated SIP call per connection (see the module docs
//! of [`crate::sim::sip`] for the behaviour and the facts it rests on).

use std::collections::{HashSet, VecDeque};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use super::{unix_now, CallState, CallerStep, Shared};
use crate::io::http::{self, RequestHead};
use crate::io::ws::{Incoming, WsConfig, WsSender};
use crate::proto::realtime::{ClientEvent, Item};
use crate::sim::fake_model::{function_call_events, merge, next_reply, Reply, VOICES};

const LOG: &str = "twilio_realtime::sim";

/// Upgrades `GET /v1/realtime?call_id=…` and runs the call until it ends.
pub(super) fn serve(sh: &Arc<Shared>, mut conn: TcpStream, head: &RequestHead, leftover: Vec<u8>) {
    let refuse = |conn: &mut TcpStream, (status, body): (u16, String)| {
        let _ = http::write_response(conn, status, "application/json", &[], body.as_bytes());
    };
    let bearer = head
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(sh.cfg.api_key.as_str()) {
        return refuse(
            &mut conn,
            super::error(
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided.",
            ),
        );
    }
    let call_id = head
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "call_id")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let accepted = sh.calls.lock().ok().and_then(|c| match c.get(&call_id) {
        Some(CallState::Accepted(session)) => Some(session.clone()),
        _ => None,
    });
    let Some(accepted) = accepted else {
        return refuse(&mut conn, super::not_found(&call_id));
    };
    let _ = conn.set_read_timeout(None);
    let cfg = WsConfig::default();
    let Some((duplex, rx)) =
        crate::sim::accept_ws_channel(conn, head, leftover, &cfg, "fake-sideband")
    else {
        return;
    };
    rec(sh).connections += 1;
    let mut call = Call::new(sh.clone(), duplex.sender(), call_id, accepted);
    call.send(
        json!({"type":"session.created","event_id": call.id("event"),"session": call.session}),
    );
    loop {
        let wait = call
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(20))
            .min(Duration::from_millis(20));
        match rx.recv_timeout(wait) {
            Ok(Incoming::Text(t)) => call.on_client(t.as_str()),
            Ok(Incoming::Binary(_)) => call.violation("binary frame on the sideband".into()),
            Ok(Incoming::Closed(_)) | Ok(Incoming::Error(_)) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        match call.tick() {
            Next::Go => {}
            Next::Close => {
                duplex.close();
                break;
            }
            Next::Drop => {
                duplex.sender().abort();
                break;
            }
        }
    }
    drop(rx);
    duplex.join();
}

fn rec(sh: &Shared) -> std::sync::MutexGuard<'_, super::SidebandRecording> {
    sh.sideband.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the connection does after a tick.
enum Next {
    Go,
    /// The call was ended through REST or expired: close with a frame.
    Close,
    /// The caller hung up: the socket drops without a frame.
    Drop,
}

/// The response being generated.
struct Active {
    id: String,
    item_id: String,
    /// Events still to send, at their times.
    queue: VecDeque<(Instant, Value)>,
}

/// Audio the server is playing to the caller.
struct Playing {
    response_id: String,
    until: Instant,
}

/// Where the caller is in their steps.
enum Step {
    Next,
    Speaking {
        until: Instant,
        item_id: String,
        text: String,
        started_ms: u64,
    },
    Until(Instant),
    Waiting {
        quiet: Duration,
        until: Instant,
    },
    Done,
}

struct Call {
    sh: Arc<Shared>,
    out: WsSender,
    call_id: String,
    opened: Instant,
    session: Value,
    spoke: bool,
    last_item: Option<String>,
    items: HashSet<String>,
    active: Option<Active>,
    playing: Option<Playing>,
    /// Since when the agent has been quiet (no response, nothing playing).
    quiet_since: Option<Instant>,
    steps: VecDeque<CallerStep>,
    step: Step,
    raw_fired: Vec<bool>,
}

impl Call {
    fn new(sh: Arc<Shared>, out: WsSender, call_id: String, accepted: Value) -> Call {
        // Production's defaults, then what `accept` configured; no audio format (SDP's).
        let mut session = json!({"type":"realtime","object":"realtime.session","model":"gpt-realtime",
            "output_modalities":["audio"],"instructions":"","tools":[],"tool_choice":"auto",
            "max_output_tokens":"inf",
            "audio":{
                "input":{
                    "turn_detection":{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,
                        "silence_duration_ms":500,"create_response":true,"interrupt_response":true,
                        "idle_timeout_ms":null}},
                "output":{"voice":"alloy","speed":1.0}}});
        session["id"] = json!(format!(
            "sess_{:08}",
            sh.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        if let Some(td) = accepted["audio"]["input"]["turn_detection"].as_object() {
            // A turn detection given at accept replaces the default one whole (its own type).
            session["audio"]["input"]["turn_detection"] = Value::Object(td.clone());
        }
        merge(&mut session, accepted);
        let steps: VecDeque<CallerStep> = sh.cfg.caller.iter().cloned().collect();
        let raw = sh.cfg.raw.len();
        Call {
            sh,
            out,
            call_id,
            opened: Instant::now(),
            session,
            spoke: false,
            last_item: None,
            items: HashSet::new(),
            active: None,
            playing: None,
            quiet_since: Some(Instant::now()),
            steps,
            step: Step::Next,
            raw_fired: vec![false; raw],
        }
    }

    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_{:08}",
            self.sh
                .ids
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }

    /// Simulated milliseconds as real time.
    fn real(&self, ms: u64) -> Duration {
        Duration::from_secs_f64(ms as f64 / 1000.0 / f64::from(self.sh.cfg.speed.max(0.1)))
    }

    /// Simulated milliseconds since the sideband opened (the input audio's clock).
    fn audio_ms(&self) -> u64 {
        (self.opened.elapsed().as_secs_f64() * 1000.0 * f64::from(self.sh.cfg.speed.max(0.1)))
            as u64
    }

    fn send_text(&self, text: String) {
        rec(&self.sh).sent.push(text.clone());
        let _ = self.out.send(Message::text(text));
    }

    fn send(&self, v: Value) {
        self.send_text(v.to_string());
    }

    fn event(&self, mut v: Value) -> Value {
        v["event_id"] = json!(self.id("event"));
        v
    }

    fn error(
        &self,
        code: Option<&str>,
        message: String,
        param: Option<&str>,
        event_id: Option<String>,
    ) {
        self.send(json!({"type":"error","event_id": self.id("event"),
            "error":{"type":"invalid_request_error","code":code,"message":message,"param":param,"event_id":event_id}}));
    }

    fn violation(&self, what: String) {
        log::warn!(target: LOG, "fake sip: sideband protocol violation: {what}");
        rec(&self.sh).violations.push(what.clone());
        self.error(None, what, None, None);
    }

    fn turn(&self) -> &Value {
        &self.session["audio"]["input"]["turn_detection"]
    }

    fn flag(&self, name: &str) -> bool {
        self.turn().is_object() && self.turn()[name].as_bool().unwrap_or(true)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let step = match &self.step {
            Step::Speaking { until, .. } | Step::Until(until) => Some(*until),
            _ => None,
        };
        let queue = self
            .active
            .as_ref()
            .and_then(|a| a.queue.front().map(|q| q.0));
        [step, queue, self.playing.as_ref().map(|p| p.until)]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_client(&mut self, text: &str) {
        rec(&self.sh).received.push(text.to_owned());
        let ev = match ClientEvent::parse(text) {
            Ok(ev) => ev,
            Err(e) => return self.violation(format!("unparseable client event: {e}")),
        };
        match ev {
            ClientEvent::SessionUpdate { event_id, .. } => {
                let raw: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                self.session_update(raw["session"].clone(), event_id);
            }
            ClientEvent::InputAudioBufferAppend { .. }
            | ClientEvent::InputAudioBufferCommit { .. }
            | ClientEvent::InputAudioBufferClear { .. } => {
                // Brief §5.2: not usable, the audio arrives over RTP.
                self.violation(
                    "input_audio_buffer events on a SIP call: the audio is handled by the SIP call"
                        .into(),
                )
            }
            ClientEvent::ConversationItemTruncate { .. } => {
                // Brief §5.2: the server owns SIP playback and its truncation boundary.
                self.violation("conversation.item.truncate on a SIP call".into())
            }
            ClientEvent::ConversationItemCreate { item, .. } => self.item_create(item),
            ClientEvent::ConversationItemDelete { item_id, event_id } => {
                if self.items.remove(&item_id) {
                    self.send(
                        self.event(json!({"type":"conversation.item.deleted","item_id": item_id})),
                    );
                } else {
                    self.error(
                        Some("item_not_found"),
                        format!("Item {item_id} not found"),
                        None,
                        event_id,
                    );
                }
            }
            ClientEvent::ConversationItemRetrieve { item_id, event_id } => self.error(
                Some("item_not_found"),
                format!("Item {item_id} not found"),
                None,
                event_id,
            ),
            ClientEvent::ResponseCreate { event_id, response } => {
                let options = serde_json::to_value(&response).unwrap_or(Value::Null);
                rec(&self.sh).response_requests.push(options);
                if let Some(a) = &self.active {
                    let msg = format!("Conversation already has an active response in progress: {}. Wait until the response is finished before creating a new one.", a.id);
                    self.error(
                        Some("conversation_already_has_active_response"),
                        msg,
                        None,
                        event_id,
                    );
                } else {
                    self.respond();
                }
            }
            ClientEvent::ResponseCancel { event_id, .. } => {
                if self.active.is_some() {
                    self.cancel("client_cancelled");
                } else {
                    self.error(
                        Some("response_cancel_not_active"),
                        "Cancellation failed: no active response found".into(),
                        None,
                        event_id,
                    );
                }
            }
            ClientEvent::OutputAudioBufferClear { event_id } => {
                match self.playing.take() {
                    Some(p) => {
                        rec(&self.sh).cleared += 1;
                        self.send(self.event(json!({"type":"output_audio_buffer.cleared","response_id": p.response_id})));
                    }
                    // What the server answers with nothing playing is UNVERIFIED: an error, never
                    // a silent success.
                    None => self.error(
                        None,
                        "There is no audio playing to clear.".into(),
                        None,
                        event_id,
                    ),
                }
            }
            ClientEvent::Raw { .. } => {}
        }
    }

    fn session_update(&mut self, v: Value, event_id: Option<String>) {
        rec(&self.sh).session_updates.push(v.clone());
        for dir in ["input", "output"] {
            if !v["audio"][dir]["format"].is_null() {
                let what = format!(
                    "session.audio.{dir}.format on a SIP call (the codec is negotiated in SDP)"
                );
                rec(&self.sh).violations.push(what.clone());
                let param = format!("session.audio.{dir}.format");
                return self.error(Some("invalid_value"), what, Some(&param), event_id);
            }
        }
        if let Some(td) = v["audio"]["input"]["turn_detection"].as_object() {
            for f in super::SIP_REFUSED_VAD {
                if td.contains_key(*f) {
                    let param = format!("session.audio.input.turn_detection.{f}");
                    rec(&self.sh)
                        .violations
                        .push(format!("{param} on a SIP call"));
                    return self.error(
                        Some("unknown_parameter"),
                        format!("Unknown parameter: '{param}'."),
                        Some(&param),
                        event_id,
                    );
                }
            }
        }
        let voice = &v["audio"]["output"]["voice"];
        if !voice.is_null() {
            let known = voice.as_str().is_some_and(|n| VOICES.contains(&n))
                || voice["id"].as_str().is_some_and(|id| !id.is_empty());
            if !known {
                return self.error(
                    Some("invalid_value"),
                    format!("Invalid value: {voice}."),
                    Some("session.audio.output.voice"),
                    event_id,
                );
            }
            if self.spoke && *voice != self.session["audio"]["output"]["voice"] {
                return self.error(
                    Some("cannot_update_voice"),
                    "Cannot update a conversation's voice if assistant audio is present.".into(),
                    None,
                    event_id,
                );
            }
        }
        if let Some(td) = v["audio"]["input"]["turn_detection"].as_object() {
            self.session["audio"]["input"]["turn_detection"] = Value::Object(td.clone());
        }
        merge(&mut self.session, v);
        self.send(self.event(json!({"type":"session.updated","session": self.session})));
    }

    fn item_create(&mut self, item: Item) {
        let id = item.id.clone().unwrap_or_else(|| self.id("item"));
        if item.kind == "function_call_output" {
            rec(&self.sh).function_outputs.push((
                item.call_id.clone().unwrap_or_default(),
                item.output.clone().unwrap_or_default(),
            ));
        }
        let mut v = serde_json::to_value(&item).unwrap_or(Value::Null);
        v["id"] = json!(id);
        v["object"] = json!("realtime.item");
        v["status"] = json!("completed");
        self.items.insert(id.clone());
        let prev = self.last_item.replace(id);
        for ty in ["conversation.item.added", "conversation.item.done"] {
            self.send(self.event(json!({"type":ty,"previous_item_id": prev,"item": v})));
        }
    }

    fn next_reply(&self) -> Reply {
        next_reply(&self.sh.script, &self.sh.cfg.default_reply)
    }

    /// Starts the model's next reply.
    fn respond(&mut self) {
        let reply = self.next_reply();
        let now = Instant::now();
        let rid = self.id("resp");
        let iid = self.id("item");
        let prev = self.last_item.replace(iid.clone());
        self.items.insert(iid.clone());
        let mut q: VecDeque<(Instant, Value)> = VecDeque::new();
        q.push_back((now, json!({"type":"response.created","response":{"id":rid,"object":"realtime.response","status":"in_progress","output":[]}})));
        match reply {
            Reply::Audio { transcript, ms } => {
                let item = json!({"id":iid,"object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]});
                q.push_back((now, json!({"type":"response.output_item.added","response_id":rid,"output_index":0,"item":item})));
                q.push_back((
                    now,
                    json!({"type":"conversation.item.added","previous_item_id":prev,"item":item}),
                ));
                q.push_back((now, json!({"type":"response.content_part.added","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"part":{"type":"audio","transcript":""}})));
                // Brief §5.3: started follows the content part.
                q.push_back((
                    now,
                    json!({"type":"output_audio_buffer.started","response_id":rid}),
                ));
                // Generated twice as fast as it plays.
                let generate = self.real(u64::from(ms) / 2);
                let words: Vec<&str> = transcript.split_inclusive(' ').collect();
                let n = words.len().max(1) as u32;
                for (i, w) in words.iter().enumerate() {
                    let at = now + generate.mul_f64(i as f64 / f64::from(n));
                    q.push_back((at, json!({"type":"response.output_audio_transcript.delta","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"delta":w})));
                }
                let end = now + generate;
                let done = json!({"id":iid,"object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":transcript}]});
                for v in [
                    json!({"type":"response.output_audio_transcript.done","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"transcript":transcript}),
                    json!({"type":"response.content_part.done","response_id":rid,"item_id":iid,"output_index":0,"content_index":0,"part":{"type":"audio","transcript":transcript}}),
                    json!({"type":"response.output_item.done","response_id":rid,"output_index":0,"item":done}),
                    json!({"type":"conversation.item.done","previous_item_id":prev,"item":done}),
                    json!({"type":"response.done","response":{"id":rid,"object":"realtime.response","status":"completed","output":[done]}}),
                ] {
                    q.push_back((end, v));
                }
                self.spoke = true;
                self.playing = Some(Playing {
                    response_id: rid.clone(),
                    until: now + self.real(u64::from(ms)),
                });
            }
            Reply::FunctionCall { name, arguments } => {
                let call_id = self.id("call");
                let at = now + self.real(100);
                for v in
                    function_call_events(&rid, &iid, prev.as_deref(), &call_id, &name, &arguments)
                {
                    q.push_back((at, v));
                }
            }
        }
        self.quiet_since = None;
        self.active = Some(Active {
            id: rid,
            item_id: iid,
            queue: q,
        });
        self.flush();
    }

    /// Stops generating the active response (`response.done`, `cancelled`).
    fn cancel(&mut self, reason: &str) {
        let Some(a) = self.active.take() else { return };
        rec(&self.sh).cancelled += 1;
        let item = json!({"id":a.item_id,"object":"realtime.item","type":"message","status":"incomplete","role":"assistant","content":[]});
        self.send(self.event(json!({"type":"response.done","response":{"id":a.id,"object":"realtime.response",
            "status":"cancelled","status_details":{"type":"cancelled","reason":reason},"output":[item]}})));
    }

    /// Sends the active response's events that are due.
    fn flush(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut finished = false;
        if let Some(a) = &mut self.active {
            while a.queue.front().is_some_and(|(t, _)| *t <= now) {
                if let Some((_, v)) = a.queue.pop_front() {
                    due.push(v);
                }
            }
            finished = a.queue.is_empty();
        }
        if finished {
            self.active = None;
        }
        for v in due {
            let v = self.event(v);
            self.send(v);
        }
    }

    /// The caller starts speaking: the server's VAD cuts the agent when it may.
    fn speech_started(&mut self, ms: u32, text: String) {
        let item_id = self.id("item");
        let started_ms = self.audio_ms();
        self.send(self.event(json!({"type":"input_audio_buffer.speech_started","audio_start_ms": started_ms,"item_id": item_id})));
        if self.flag("interrupt_response") {
            self.cancel("turn_detected");
            if let Some(p) = self.playing.take() {
                self.send(self.event(
                    json!({"type":"output_audio_buffer.cleared","response_id": p.response_id}),
                ));
            }
        }
        self.step = Step::Speaking {
            until: Instant::now() + self.real(u64::from(ms)),
            item_id,
            text,
            started_ms,
        };
    }

    /// The caller's turn ends: committed, the user item, its transcript, the answer.
    fn speech_stopped(&mut self, item_id: String, text: String, started_ms: u64) {
        let end_ms = self.audio_ms();
        self.send(self.event(json!({"type":"input_audio_buffer.speech_stopped","audio_end_ms": end_ms,"item_id": item_id})));
        let prev = self.last_item.replace(item_id.clone());
        self.items.insert(item_id.clone());
        self.send(self.event(json!({"type":"input_audio_buffer.committed","previous_item_id": prev,"item_id": item_id})));
        let item = json!({"id": item_id,"object":"realtime.item","type":"message","status":"completed","role":"user",
            "content":[{"type":"input_audio"}]});
        for ty in ["conversation.item.added", "conversation.item.done"] {
            self.send(self.event(json!({"type":ty,"previous_item_id": prev,"item": item})));
        }
        if self.session["audio"]["input"]["transcription"].is_object() {
            let seconds = end_ms.saturating_sub(started_ms) as f64 / 1000.0;
            self.send(self.event(json!({"type":"conversation.item.input_audio_transcription.completed",
                "item_id": item_id,"content_index":0,"transcript": text,"usage":{"type":"duration","seconds": seconds}})));
        }
        if self.flag("create_response") && self.active.is_none() {
            self.respond();
        }
    }

    fn state(&self) -> Option<CallState> {
        self.sh.calls.lock().ok()?.get(&self.call_id).cloned()
    }

    fn set_state(&self, s: CallState) {
        if let Ok(mut c) = self.sh.calls.lock() {
            c.insert(self.call_id.clone(), s);
        }
    }

    /// Sends what is due, moves the caller on; what the connection does next.
    fn tick(&mut self) -> Next {
        if !matches!(self.state(), Some(CallState::Accepted(_))) {
            // Ended through REST (hangup, refer): the call and its sideband are over.
            return Next::Close;
        }
        self.flush();
        let now = Instant::now();
        if self.active.is_none() && self.playing.as_ref().is_some_and(|p| p.until <= now) {
            if let Some(p) = self.playing.take() {
                // Brief §5.3: stopped once the buffer drained, after `response.done`.
                self.send(self.event(
                    json!({"type":"output_audio_buffer.stopped","response_id": p.response_id}),
                ));
            }
        }
        if self.active.is_none() && self.playing.is_none() {
            self.quiet_since.get_or_insert(now);
        } else {
            self.quiet_since = None;
        }
        let open = self.opened.elapsed();
        for (i, (at, text)) in self.sh.cfg.raw.iter().enumerate() {
            if !self.raw_fired[i] && open >= *at {
                self.raw_fired[i] = true;
                self.send_text(text.clone());
            }
        }
        if self.sh.cfg.session_expires_after.is_some_and(|t| open >= t) {
            self.send(self.event(json!({"type":"error","error":{"type":"invalid_request_error",
                "code":"session_expired","message":"Your session hit the maximum duration of 60 minutes.","param":null,"event_id":null}})));
            self.set_state(CallState::Expired);
            return Next::Close;
        }
        self.caller(now)
    }

    fn caller(&mut self, now: Instant) -> Next {
        loop {
            match std::mem::replace(&mut self.step, Step::Next) {
                Step::Done => {
                    self.step = Step::Done;
                    return Next::Go;
                }
                Step::Speaking {
                    until,
                    item_id,
                    text,
                    started_ms,
                } => {
                    if until > now {
                        self.step = Step::Speaking {
                            until,
                            item_id,
                            text,
                            started_ms,
                        };
                        return Next::Go;
                    }
                    if self.turn().is_object() {
                        self.speech_stopped(item_id, text, started_ms);
                    }
                }
                Step::Until(t) => {
                    if t > now {
                        self.step = Step::Until(t);
                        return Next::Go;
                    }
                }
                Step::Waiting { quiet, until } => {
                    let quiet_enough = self.quiet_since.is_some_and(|q| now >= q + quiet);
                    if !quiet_enough && until > now {
                        self.step = Step::Waiting { quiet, until };
                        return Next::Go;
                    }
                }
                Step::Next => match self.steps.pop_front() {
                    None => {
                        self.step = Step::Done;
                        return Next::Go;
                    }
                    Some(CallerStep::Say { text, ms }) => {
                        if self.turn().is_object() {
                            self.speech_started(ms, text);
                        } else {
                            // No VAD: nothing is said about the audio on the sideband.
                            self.step = Step::Until(now + self.real(u64::from(ms)));
                        }
                    }
                    Some(CallerStep::Dtmf(key)) => {
                        self.send(json!({"type":"input_audio_buffer.dtmf_event_received","event": key,"received_at": unix_now()}));
                    }
                    Some(CallerStep::Pause(ms)) => {
                        self.step = Step::Until(now + self.real(u64::from(ms)));
                    }
                    Some(CallerStep::WaitForAgent {
                        quiet_ms,
                        timeout_ms,
                    }) => {
                        self.step = Step::Waiting {
                            quiet: self.real(u64::from(quiet_ms)),
                            until: now + self.real(u64::from(timeout_ms)),
                        };
                    }
                    Some(CallerStep::HangUp) => {
                        self.set_state(CallState::CallerEnded);
                        return Next::Drop;
                    }
                },
            }
        }
    }
}
