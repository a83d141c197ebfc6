//! The model's side of the call: connecting, configuring (`session.update` until µ-law is confirmed), its events, its loss and reconnection.
//!
//! Part of [`CallCore`]'s `impl` (see the [`crate::call`] module docs).

use super::*;

impl CallCore {
    /// The model WebSocket is open (its `session.created` is still to come).
    pub(super) fn handle_model_connected(&mut self, now: Instant) {
        log::debug!(target: LOG, "model socket open");
        if !self.is_ended() {
            self.model_seen = Some(now);
            self.ping_sent = None;
            self.setup_deadline = after(now, self.opts.model_setup_timeout);
        }
        self.live_connected();
        if self.opts.sideband
            && matches!(
                self.model,
                ModelState::Connecting | ModelState::Reconnecting
            )
            && !self.is_ended()
        {
            // The session was configured by `accept`; the sideband is live at once. One
            // update carries the current agent (as the Agents SDKs do on connect).
            self.pending_model
                .retain(|ev| !matches!(ev, ClientEvent::SessionUpdate { .. }));
            self.config_pending.clear();
            let update = self.session_update();
            self.emit_model(update);
            self.on_configured();
        }
    }

    /// The model WebSocket is open and its session was configured before the call
    /// ([`Preconfigured`]): if that configuration is the one this call's agent needs, its
    /// answer is judged as `session.updated` would be (µ-law both ways: ready at once; a
    /// refusal ends the call with [`CallError::ModelConfigRejected`]); if the agent differs
    /// (chosen again on `start`, from details the webhook did not have), the call's own
    /// `session.update` goes out and is awaited as usual.
    pub(super) fn handle_model_preconfigured(&mut self, now: Instant, pre: Preconfigured) {
        self.handle_model_connected(now);
        if self.is_ended() || self.model != ModelState::Connecting {
            return;
        }
        // As on `session.created`: the session exists, nothing but its configuration goes
        // out until it is confirmed.
        self.pending_model
            .retain(|ev| !matches!(ev, ClientEvent::SessionUpdate { .. }));
        self.config_pending.clear();
        self.model = ModelState::Configuring;
        let wanted = self.session_config();
        if *pre.sent() != wanted {
            log::info!(
                target: LOG,
                "the call's agent differs from the one configured ahead: updating the session"
            );
            let update = self.session_update();
            self.emit_model(update);
            return;
        }
        match pre {
            Preconfigured::Confirmed { session, .. } => self.on_session_updated(&session),
            Preconfigured::Refused { param, message, .. } => {
                log::error!(
                    target: LOG,
                    "model refused the session configuration ({}): {message}; ending the call",
                    param.as_deref().unwrap_or("no parameter named")
                );
                self.config_rejected(param, message)
            }
        }
    }

    /// The model connection could not be opened.
    pub(super) fn handle_model_connect_failed(&mut self, _now: Instant, error: CallError) {
        if self.is_ended() {
            return;
        }
        log::warn!(target: LOG, "model connection failed: {error}");
        self.model = ModelState::Gone;
        self.out(Output::CloseTwilio);
        self.fail(error);
    }

    /// The model WebSocket closed or failed.
    pub(super) fn handle_model_closed(&mut self, now: Instant, error: CallError) {
        if self.is_ended() || self.model == ModelState::Gone {
            return;
        }
        self.active_response = None;
        self.response_requested = None;
        self.model_seen = None;
        self.ping_sent = None;
        if self.ending.is_some() {
            // Nothing more is asked of the model: the ending waits only for the audio sent.
            log::info!(target: LOG, "while the call is ending: {error}");
            self.model = ModelState::Gone;
            self.out(Output::ModelNotReady);
            self.maybe_end();
            return;
        }
        if self.reconnect_pending {
            self.reconnect_pending = false;
            log::info!(target: LOG, "model session expired; reconnecting");
            self.reset_model_session();
            self.model = ModelState::Reconnecting;
            self.out(Output::ModelNotReady);
            self.out(Output::ConnectModel);
            return;
        }
        log::warn!(target: LOG, "{error}");
        self.model = ModelState::Gone;
        self.out(Output::ModelNotReady);
        self.error(error.clone());
        self.drain_or_finish(now, CloseReason::Error(error));
    }

    /// The model is gone for good (either API): the audio sent to Twilio plays out first (the
    /// call drains, for at most `drain_timeout`, then ends with `reason`); with nothing
    /// playing, Twilio is closed and the call ends now.
    pub(super) fn drain_or_finish(&mut self, now: Instant, reason: CloseReason) {
        if self.ledger.is_playing() && self.stream_sid.is_some() {
            self.draining = Some((after(now, self.opts.drain_timeout), reason));
            self.enter_draining();
        } else {
            self.out(Output::CloseTwilio);
            self.finish(reason);
        }
    }

    /// What belonged to the expired model session goes: its items do not exist in the next
    /// one. Audio still playing is cleared (its truncation could not be told to anyone),
    /// pending tool calls are dropped (their call ids are unknown to the new session; a late
    /// result is ignored), responses and config updates in flight are forgotten, and the voice
    /// may be set again. The conversation itself is carried over as text on confirmation.
    pub(super) fn reset_model_session(&mut self) {
        if self.ledger.is_playing() {
            if let Some(sid) = self.stream_sid.clone() {
                self.out(Output::Twilio(TwilioCommand::Clear { stream_sid: sid }));
            }
        }
        self.ledger.clear();
        self.pending_twilio.clear();
        self.speaking_items.clear();
        for (call_id, p) in std::mem::take(&mut self.tools) {
            log::info!(target: TOOLS_LOG, "tool call {} ({call_id}) dropped: the model session expired", p.call.name);
            self.error(CallError::ToolDropped {
                tool: p.call.name.clone(),
                call_id,
            });
        }
        // (Cut responses and agent texts stay until their `response.done`, which the old
        // session can no longer send: a few entries, once an hour at most.)
        self.calls_by_response.clear();
        self.config_pending.clear();
        self.needs_response = false;
        self.next_response = None;
        self.assistant_audio_seen = false;
        if self.audio_reported {
            self.audio_reported = false;
            self.event(SessionEvent::AudioStopped);
        }
    }

    pub(super) fn finish_drain(&mut self) {
        if let Some((_, reason)) = self.draining.take() {
            self.out(Output::CloseTwilio);
            self.finish(reason);
        }
    }

    pub(super) fn finish(&mut self, reason: CloseReason) {
        if self.is_ended() {
            return;
        }
        self.model = ModelState::Gone;
        self.live_end_turns();
        self.phase = CallPhase::Ended(reason.clone());
        self.event(SessionEvent::Closed { reason });
    }

    /// An event from the model.
    pub(super) fn handle_model(&mut self, now: Instant, ev: ServerEvent) {
        if self.is_ended() {
            return;
        }
        self.handle_model_activity(now);
        match ev {
            ServerEvent::SessionCreated(_) => self.on_session_created(),
            ServerEvent::Error(e) => self.on_model_error(e.error),
            ServerEvent::SessionUpdated(e) => self.on_session_updated(&e.session),
            ServerEvent::SpeechStarted(_) => {
                self.out(Output::CallerSpeaking(true));
                self.barge_in(now, InterruptCause::CallerSpeech);
            }
            ServerEvent::SpeechStopped(_) => self.out(Output::CallerSpeaking(false)),
            ServerEvent::ConversationItemAdded(e) => self.history_add(e.previous_item_id, &e.item),
            ServerEvent::ConversationItemCreated(e) => {
                self.history_add(e.previous_item_id, &e.item)
            }
            ServerEvent::ConversationItemDone(e) => self.history_done(&e.item),
            ServerEvent::ConversationItemTruncated(e) => {
                if let Some(h) = self.history.iter_mut().find(|h| h.item_id == e.item_id) {
                    h.truncated = Some(e.audio_end_ms);
                    self.history_updated(&e.item_id);
                }
            }
            ServerEvent::ConversationItemDeleted(e) => {
                let before = self.history.len();
                self.history.retain(|h| h.item_id != e.item_id);
                if self.history.len() != before {
                    self.event(SessionEvent::HistoryRemoved { item_id: e.item_id });
                }
            }
            ServerEvent::InputAudioTranscriptionCompleted(e) => {
                if let Some(h) = self.history.iter_mut().find(|h| h.item_id == e.item_id) {
                    h.text = e.transcript;
                    self.history_updated(&e.item_id);
                }
            }
            ServerEvent::ResponseCreated(e) => {
                let id = e.response.id;
                if self.model != ModelState::Ready {
                    // A model that speaks before the session is confirmed speaks 24 kHz PCM:
                    // none of this response's audio goes to the phone, even after the
                    // confirmation arrives mid-response.
                    log::warn!(target: LOG, "response {id} started before the session was confirmed; its audio is dropped");
                    self.cut_responses.insert(id.clone());
                }
                self.response_requested = None;
                self.active_response = Some(id);
                let agent = self.agent.name().to_owned();
                self.event(SessionEvent::AgentStart { agent });
            }
            ServerEvent::OutputAudioDelta(_) | ServerEvent::OutputAudioDone(_)
                if self.opts.sideband =>
            {
                // No audio lane: the audio goes to the caller over RTP, not through us.
                self.assistant_audio_seen = true;
            }
            ServerEvent::OutputAudioDelta(d) => {
                if !d.delta.is_empty() {
                    // The model has spoken in this session (heard or not): its voice is fixed
                    // now, and asking to change it would be refused (`cannot_update_voice`).
                    self.assistant_audio_seen = true;
                }
                if self.model != ModelState::Ready {
                    // Until `session.updated` confirms µ-law out, the model's audio may be
                    // 24 kHz PCM: noise on a phone line. Never forwarded.
                    log::debug!(target: LOG, "audio before the session was confirmed dropped");
                    return;
                }
                if self.cut_responses.contains(&d.response_id) {
                    log::trace!(target: LOG, "late audio of a cut response dropped");
                    return;
                }
                if d.delta.is_empty() || d.item_id.is_empty() {
                    log::debug!(target: LOG, "audio delta without audio or item ignored");
                    return;
                }
                self.send_audio(now, &d.response_id, &d.item_id, d.content_index, d.delta);
                self.offer_audio_lane(&d.response_id, &d.item_id, d.content_index);
            }
            ServerEvent::OutputAudioDone(d) if !self.cut_responses.contains(&d.response_id) => {
                self.send_audio_done(&d.item_id, d.content_index);
            }
            ServerEvent::OutputAudioTranscriptDelta(d) => {
                self.agent_text(&d.response_id, &d.item_id, &d.delta, false)
            }
            ServerEvent::OutputAudioTranscriptDone(d) => {
                self.agent_text(&d.response_id, &d.item_id, &d.transcript, true)
            }
            ServerEvent::OutputTextDelta(d) => {
                self.agent_text(&d.response_id, &d.item_id, &d.delta, false)
            }
            ServerEvent::OutputTextDone(d) => {
                self.agent_text(&d.response_id, &d.item_id, &d.text, true)
            }
            ServerEvent::OutputItemDone(e) if is_function_call(&e.item) => {
                if !self.calls_by_response.contains_key(&e.response_id)
                    && self.calls_by_response.len() >= MAX_CALLS_PER_RESPONSE
                {
                    // Responses that never end: a peer out of protocol.
                    log::warn!(target: TOOLS_LOG, "function calls of too many unfinished responses; one ignored");
                    return;
                }
                let calls = self.calls_by_response.entry(e.response_id).or_default();
                if calls.len() < MAX_CALLS_PER_RESPONSE {
                    calls.push(e.item);
                } else {
                    log::warn!(target: TOOLS_LOG, "too many function calls in one response; one ignored");
                }
            }
            ServerEvent::ResponseDone(e) => {
                self.run_function_calls(now, &e.response);
                self.on_response_done(&e.response);
            }
            ServerEvent::Unknown(v) if self.opts.sideband => self.on_sideband_event(now, &v),
            _ => {}
        }
    }

    /// Events only a SIP (or WebRTC) session has (brief §5.3).
    pub(super) fn on_sideband_event(&mut self, _now: Instant, v: &Value) {
        match v["type"].as_str().unwrap_or("") {
            "output_audio_buffer.started" => {
                self.sip_playing = true;
                self.assistant_audio_seen = true;
                self.audio_reported = true;
            }
            "output_audio_buffer.stopped" | "output_audio_buffer.cleared" => {
                self.sip_playing = false;
                self.maybe_audio_stopped();
                self.maybe_end();
            }
            "input_audio_buffer.dtmf_event_received" => {
                let Some(digit) = v["event"].as_str() else {
                    log::debug!(target: LOG, "dtmf event without a key ignored");
                    return;
                };
                let digit: String = digit.chars().take(4).collect();
                self.on_dtmf(digit);
            }
            _ => {}
        }
    }

    pub(super) fn on_dtmf(&mut self, digit: String) {
        if self.opts.forward_dtmf {
            self.send_model(ClientEvent::ConversationItemCreate {
                event_id: None,
                previous_item_id: None,
                item: Item::user_text(format!("The caller pressed the key {digit}.")),
            });
            self.needs_response = true;
            self.maybe_create_response();
        }
        self.event(SessionEvent::Dtmf { digit });
    }

    /// An interruption on a sideband call: the server owns playback, so there is nothing to
    /// truncate; `response.cancel` stops generation and `output_audio_buffer.clear` cuts
    /// what is playing (brief §5.4), unless the server did it itself on caller speech.
    pub(super) fn sideband_interrupt(&mut self, cause: InterruptCause) {
        let response = self
            .active_response
            .clone()
            .filter(|r| !self.cut_responses.contains(r));
        if !self.sip_playing && response.is_none() {
            return;
        }
        for t in self.tools.values_mut() {
            t.interrupted = true;
        }
        let server_cancels =
            cause == InterruptCause::CallerSpeech && self.opts.session.interrupt_response();
        if !server_cancels {
            if let Some(r) = &response {
                self.send_model(ClientEvent::ResponseCancel {
                    event_id: None,
                    response_id: Some(r.clone()),
                });
            }
            if self.sip_playing {
                self.send_model(ClientEvent::OutputAudioBufferClear { event_id: None });
            }
        }
        if let Some(r) = response {
            self.cut_responses.insert(r);
        }
        self.speaking_items.clear();
        self.event(SessionEvent::AudioInterrupted {
            cause,
            heard: Vec::new(),
            cut: Vec::new(),
        });
        self.maybe_end();
    }

    pub(super) fn on_session_created(&mut self) {
        match self.model {
            ModelState::Connecting => {}
            ModelState::Reconnecting => self.resumed = true,
            ModelState::Configuring | ModelState::Ready | ModelState::Gone => return,
        }
        // The session starts with the server's defaults (24 kHz PCM both ways): nothing but
        // our update goes out until the server confirms µ-law. Updates queued before this are
        // superseded by this one (it is built from the current agent).
        self.pending_model
            .retain(|ev| !matches!(ev, ClientEvent::SessionUpdate { .. }));
        self.config_pending.clear();
        let update = self.session_update();
        self.emit_model(update);
        self.model = ModelState::Configuring;
    }

    pub(super) fn on_session_updated(&mut self, session: &Value) {
        self.config_pending.pop_front();
        let fmt = |dir: &str| {
            session["audio"][dir]["format"]["type"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        };
        let (fmt_in, fmt_out) = (fmt("input"), fmt("output"));
        if !self.opts.sideband && (fmt_in != "audio/pcmu" || fmt_out != "audio/pcmu") {
            let param = if fmt_in != "audio/pcmu" {
                "session.audio.input.format"
            } else {
                "session.audio.output.format"
            };
            let message = format!(
                "session.updated shows input {fmt_in} / output {fmt_out}, not audio/pcmu both ways"
            );
            log::error!(target: LOG, "model session is not µ-law ({param}): {message}; ending the call");
            return self.config_rejected(Some(param.to_owned()), message);
        }
        if self.model == ModelState::Configuring {
            self.on_configured();
        } else if self.config_pending.is_empty() {
            // A handoff's or update_agent's configuration is in force now (on a sideband
            // call, also the one sent on connect: the greeting waits for it).
            if self.opts.sideband {
                self.maybe_greet();
            }
            self.maybe_create_response();
        }
    }

    /// The model confirmed µ-law both ways: the call is live.
    pub(super) fn on_configured(&mut self) {
        self.model = ModelState::Ready;
        self.setup_deadline = None;
        if std::mem::take(&mut self.resumed) {
            // A fresh model session after `session_expired`: carry the conversation over as
            // text so the agent remembers it.
            let mut replay = Vec::new();
            for h in &self.history {
                if h.text.is_empty() {
                    continue;
                }
                let item = match &h.kind {
                    HistoryKind::User => Item::user_text(h.text.clone()),
                    HistoryKind::Assistant => Item::assistant_text(h.text.clone()),
                    HistoryKind::System => Item::system_text(h.text.clone()),
                    HistoryKind::FunctionCallOutput { .. } => {
                        Item::system_text(format!("Earlier tool result: {}", h.text))
                    }
                    _ => continue,
                };
                replay.push(item);
            }
            log::info!(target: LOG, "replaying {} history items into the new model session", replay.len());
            for item in replay {
                self.emit_model(ClientEvent::ConversationItemCreate {
                    event_id: None,
                    previous_item_id: None,
                    item,
                });
            }
        }
        // Caller audio kept so far goes first, then what the application asked for meanwhile.
        self.out(Output::ModelReady);
        for ev in std::mem::take(&mut self.pending_model) {
            self.emit_model(ev);
        }
        self.maybe_greet();
        self.maybe_create_response();
    }

    /// The model refused the configuration the call needs: end the call before any audio.
    pub(super) fn config_rejected(&mut self, param: Option<String>, message: String) {
        self.out(Output::ModelNotReady);
        self.close_and_fail(CallError::ModelConfigRejected { param, message });
    }

    /// Sends the greeting once the session is confirmed and Twilio has started the stream.
    pub(super) fn maybe_greet(&mut self) {
        if self.greeting.is_none()
            || self.ending.is_some()
            || self.model != ModelState::Ready
            || (self.stream_sid.is_none() && !self.opts.sideband)
            || !self.config_pending.is_empty()
        {
            return;
        }
        let Some(greeting) = self.greeting.take() else {
            return;
        };
        if self.live.is_some() {
            return self.live_greet(greeting);
        }
        if self.active_response.is_some() || self.response_requested.is_some() {
            log::info!(target: LOG, "greeting skipped: the agent is already answering");
            return;
        }
        let instructions = greeting.instructions(self.agent.instructions());
        let id = self.next_id("greeting");
        log::debug!(target: LOG, "greeting the caller");
        self.response_requested = Some(id.clone());
        self.emit_model(ClientEvent::ResponseCreate {
            event_id: Some(id),
            response: Some(ResponseConfig {
                instructions: Some(instructions),
                ..Default::default()
            }),
        });
    }

    pub(super) fn on_model_error(&mut self, e: crate::proto::realtime::ApiError) {
        let crate::proto::realtime::ApiError {
            kind,
            code,
            message,
            param,
            event_id,
        } = e;
        if event_id.is_some() && event_id == self.response_requested {
            // Our response.create was refused: allow another one later.
            self.response_requested = None;
        }
        if let Some(pos) = event_id
            .as_ref()
            .and_then(|id| self.config_pending.iter().position(|p| p == id))
        {
            self.config_pending.remove(pos);
            let what = param.as_deref().unwrap_or("no parameter named");
            if self.model == ModelState::Configuring {
                log::error!(
                    target: LOG,
                    "model refused the session configuration ({what}): {code:?} {message}; ending the call"
                );
                return self.config_rejected(param, message);
            }
            // A later update (handoff, update_agent, raw): the server keeps the previous
            // configuration, which was confirmed µ-law; the call goes on with it.
            log::warn!(
                target: LOG,
                "model refused a session update ({what}): {code:?} {message}; the previous configuration stays"
            );
            self.error(CallError::ModelError { code, message });
            if self.config_pending.is_empty() {
                self.maybe_create_response();
            }
            return;
        }
        match code.as_deref() {
            Some("session_expired") if self.opts.sideband => {
                // A SIP call's session is the call's own: a new sideband cannot renew it
                // (brief §5.1: `call_id` attaches to the existing session). Hang up.
                log::warn!(target: LOG, "the SIP call's session expired: {message}; hanging up");
                self.error(CallError::ModelError { code, message });
                self.out(Output::CloseTwilio);
                self.out(Output::CloseModel);
                self.finish(CloseReason::SessionExpired);
                return;
            }
            Some("session_expired") => self.reconnect_pending = true,
            Some("response_cancel_not_active") => {
                log::debug!(target: LOG, "cancel raced with the end of the response");
                return;
            }
            _ => {}
        }
        log::warn!(target: LOG, "model error {kind} {code:?}: {message}");
        self.error(CallError::ModelError { code, message });
    }

    pub(super) fn on_response_done(&mut self, response: &crate::proto::realtime::Response) {
        let id = response.id.clone();
        if self.active_response.as_deref() == Some(id.as_str()) {
            self.active_response = None;
        }
        self.cut_responses.remove(&id);
        self.tripped_responses.remove(&id);
        let mut items: Vec<(u64, String)> = Vec::new();
        self.agent_text.retain(|_, t| {
            if t.response_id != id {
                return true;
            }
            items.push((t.seq, std::mem::take(&mut t.text)));
            false
        });
        items.sort_unstable_by_key(|(seq, _)| *seq);
        let text: String = items.into_iter().map(|(_, t)| t).collect();
        if response.status.as_deref() == Some("failed") {
            let details = response
                .status_details
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default();
            self.error(CallError::ModelError {
                code: None,
                message: format!("response failed: {details}"),
            });
        }
        let agent = self.agent.name().to_owned();
        self.event(SessionEvent::AgentEnd { agent, text });
        self.maybe_audio_stopped();
        self.maybe_create_response();
        self.maybe_end();
    }

    pub(super) fn maybe_create_response(&mut self) {
        if self.ending.is_some() {
            // The call is ending: nothing may talk after the last words.
            self.needs_response = false;
            return;
        }
        if !self.needs_response
            || self.model != ModelState::Ready
            || !self.config_pending.is_empty()
            || self.active_response.is_some()
            || self.response_requested.is_some()
            || !self.tools.is_empty()
        {
            return;
        }
        self.needs_response = false;
        let id = self.next_id("resp");
        self.response_requested = Some(id.clone());
        let response = self.next_response.take();
        self.emit_model(ClientEvent::ResponseCreate {
            event_id: Some(id),
            response,
        });
    }
}
