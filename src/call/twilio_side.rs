//! Twilio's side of the call: `start`, marks, DTMF, `stop`, the stream closing, and the agent audio the core sends it.
//!
//! Part of [`CallCore`]'s `impl` (see the [`crate::call`] module docs).

use super::*;

impl CallCore {
    /// A message from Twilio other than `media` (caller audio takes the
    /// [`crate::call::inbound::InboundAudio`] lane; a `media` given here is ignored).
    pub(super) fn handle_twilio(&mut self, now: Instant, msg: TwilioMessage) {
        if self.is_ended() {
            return;
        }
        self.handle_twilio_activity(now);
        match msg {
            TwilioMessage::Connected(_) | TwilioMessage::Media(_) | TwilioMessage::Unknown(_) => {}
            TwilioMessage::Start(start) => {
                if self.stream_sid.is_some() || self.start_awaiting_approval.is_some() {
                    log::warn!(target: LOG, "second start on one stream ignored");
                    self.bad_twilio("a second start event was ignored");
                    return;
                }
                let format = &start.start.media_format;
                if !format.is_mulaw_8k_mono() {
                    let error = CallError::UnsupportedMediaFormat {
                        encoding: format.encoding.chars().take(64).collect(),
                        sample_rate: format.sample_rate,
                        channels: format.channels,
                    };
                    log::warn!(target: LOG, "stream refused: {error}");
                    self.start_deadline = None;
                    self.close_and_fail(error);
                    return;
                }
                if self.opts.approve_start {
                    // The start timeout keeps running: an approval that never comes ends
                    // the call as a stream that never started would.
                    self.out(Output::ApproveStart(Box::new(start.clone())));
                    self.start_awaiting_approval = Some(Box::new(start));
                    return;
                }
                self.go_live(now, start);
            }
            TwilioMessage::Dtmf(d) => self.on_dtmf(d.dtmf.digit),
            TwilioMessage::Mark(m) => self.on_mark(now, &m.mark.name),
            TwilioMessage::Stop(_) => {
                if self.stream_sid.is_none() {
                    log::warn!(target: LOG, "twilio sent stop before start");
                } else {
                    log::info!(target: LOG, "twilio sent stop");
                }
                self.out(Output::CloseModel);
                self.finish(CloseReason::TwilioStopped);
            }
        }
    }

    /// The first acceptable `start` (approved, when [`CallConfig::approve_start`] asks for it):
    /// the call goes live — the model connection opens if it waited for this, the greeting
    /// and the agent audio held for Twilio go out, the first round-trip probe is sent.
    fn go_live(&mut self, now: Instant, start: crate::proto::twilio::Start) {
        log::info!(target: LOG, "stream started call={}", start.start.call_sid);
        self.start_deadline = None;
        self.twilio_seen = Some(now);
        if self.opts.connect_model_on_start && self.model == ModelState::Connecting {
            self.out(Output::ConnectModel);
        }
        self.stream_sid = Some(start.stream_sid);
        self.call_sid = Some(start.start.call_sid);
        if self.phase == CallPhase::AwaitingStart {
            self.phase = CallPhase::Live;
        }
        self.maybe_greet();
        if let Some(name) = self.ledger.start_probe(now) {
            self.twilio_mark(name);
        }
        for p in std::mem::take(&mut self.pending_twilio) {
            match p {
                PendingTwilio::Audio {
                    response_id,
                    item_id,
                    content_index,
                    payload,
                } => self.send_audio(now, &response_id, &item_id, content_index, payload),
                PendingTwilio::Done {
                    item_id,
                    content_index,
                } => self.send_audio_done(&item_id, content_index),
            }
        }
        self.live_pump(now);
    }

    /// The application approved the `start` the core asked about ([`Output::ApproveStart`]),
    /// choosing `agent` as the call's starting agent if it gave one.
    pub(super) fn handle_start_approved(&mut self, now: Instant, agent: Option<Agent>) {
        if self.is_ended() {
            return;
        }
        let Some(start) = self.start_awaiting_approval.take() else {
            log::warn!(target: LOG, "a start approval with no start waiting for one was ignored");
            return;
        };
        if let Some(agent) = agent {
            if !self.set_starting_agent(agent) {
                log::warn!(target: LOG, "the approved start's agent came too late to be used");
            }
        }
        self.go_live(now, *start);
    }

    /// Whether Twilio's echo of the mark `name` may reach the core late, batched with others
    /// and fed (with its arrival time as `now`) just before the next input of another kind,
    /// instead of as soon as it arrives.
    ///
    /// True for the chunk marks the core puts after each piece of agent audio: they only
    /// move the playback position that the next barge-in reads, and a position fed late with
    /// its arrival time is the same position. False for every other name — an item's last
    /// mark (the audio stopped), a round-trip probe, a name the core did not send — because
    /// those can change what happens next (an event, the end of a drain) and must be handled
    /// when they arrive. The threaded shell uses this to save a wake-up per echoed chunk, and
    /// to pick what to let go first when echoes flood in faster than it handles them.
    ///
    /// ```
    /// use twilio_realtime::call::CallCore;
    ///
    /// assert!(!CallCore::echo_can_wait("not one of ours"));
    /// ```
    pub fn echo_can_wait(name: &str) -> bool {
        matches!(MarkName::parse(name), Some(MarkName::Chunk { .. }))
    }

    /// The application refused the stream (e.g. a failed one-time token check on `start`):
    /// ends the call without opening or keeping a model connection.
    pub(super) fn reject(&mut self, _now: Instant, why: String) {
        if self.is_ended() {
            return;
        }
        log::warn!(target: LOG, "stream rejected: {why}");
        self.start_awaiting_approval = None;
        self.close_and_fail(CallError::StreamRefused { reason: why });
    }

    /// Code on one of the call's threads panicked (`what` says where and why): the call
    /// cannot be trusted to go on, so both sockets close and it ends with
    /// [`CallError::Panicked`]. (Tools and guardrails that panic are reported as their
    /// results instead and the call goes on.)
    pub(super) fn handle_panic(&mut self, _now: Instant, what: String) {
        if self.is_ended() {
            return;
        }
        log::error!(target: LOG, "ending the call after a panic: {what}");
        self.out(Output::CloseModel);
        self.out(Output::CloseTwilio);
        self.finish(CloseReason::Error(CallError::Panicked { message: what }));
    }

    /// Twilio spent its bad-message budget (`messages` bad ones in the call): the call ends
    /// with [`CallError::TooManyBadMessages`] and both sockets are closed.
    pub(super) fn handle_twilio_over_budget(&mut self, _now: Instant, messages: u64) {
        if self.is_ended() {
            return;
        }
        log::warn!(target: LOG, "twilio sent {messages} bad messages: ending the call");
        self.close_and_fail(CallError::TooManyBadMessages { messages });
    }

    /// The Twilio WebSocket closed or failed ([`CallError::TwilioGone`]).
    pub(super) fn handle_twilio_closed(&mut self, _now: Instant, error: CallError) {
        if self.is_ended() {
            return;
        }
        log::info!(target: LOG, "{error}");
        self.out(Output::CloseModel);
        self.finish(CloseReason::Error(error));
    }

    pub(super) fn twilio_mark(&mut self, name: String) {
        if let Some(sid) = &self.stream_sid {
            let stream_sid = sid.clone();
            self.out(Output::Twilio(TwilioCommand::Mark { stream_sid, name }));
        }
    }

    pub(super) fn on_mark(&mut self, now: Instant, name: &str) {
        let outcome = self.ledger.on_mark(now, name);
        self.live_on_mark(now);
        match outcome {
            MarkOutcome::Played => {}
            MarkOutcome::ItemFinished { item_id, .. } => {
                log::trace!(target: LOG, "item {item_id} played out");
                if !self.ledger.is_playing() {
                    self.schedule_probe(now);
                }
                self.maybe_audio_stopped();
            }
            MarkOutcome::Probe => {
                log::debug!(target: LOG, "twilio round trip {:?}", self.ledger.rtt().get());
                self.next_probe_at = after(now, self.probe_interval());
            }
            MarkOutcome::Stale => log::trace!(target: LOG, "stale mark ignored"),
            MarkOutcome::Unknown => {
                // The name is the peer's text: never logged as it is.
                log::warn!(target: LOG, "a mark nobody sent ignored ({} bytes)", name.len());
                self.bad_twilio("twilio echoed a mark nobody sent; ignored");
            }
        }
        if self.draining.is_some() && !self.ledger.is_playing() {
            self.finish_drain();
        }
        self.maybe_end();
    }

    /// Sends a round-trip probe one probe interval from now (if nothing plays by then).
    pub(super) fn schedule_probe(&mut self, now: Instant) {
        if self.next_probe_at.is_none() {
            self.next_probe_at = after(now, self.probe_interval());
        }
    }

    /// Probes come every [`CallConfig::rtt_probe_interval`] until the round trip has
    /// [`RTT_SAMPLES_TO_SETTLE`] samples, then every
    /// [`CallConfig::rtt_probe_interval_settled`].
    pub(super) fn probe_interval(&self) -> Duration {
        if self.ledger.rtt().samples() < RTT_SAMPLES_TO_SETTLE {
            self.opts.rtt_probe_interval
        } else {
            self.opts.rtt_probe_interval_settled
        }
    }

    pub(super) fn maybe_audio_stopped(&mut self) {
        if self.audio_reported
            && !self.ledger.is_playing()
            && !self.sip_playing
            && self.active_response.is_none()
        {
            self.audio_reported = false;
            self.event(SessionEvent::AudioStopped);
        }
    }

    pub(super) fn send_audio(
        &mut self,
        now: Instant,
        response_id: &str,
        item_id: &str,
        content_index: u32,
        payload: String,
    ) {
        let Some(sid) = self.stream_sid.clone() else {
            self.pending_twilio.push(PendingTwilio::Audio {
                response_id: response_id.to_owned(),
                item_id: item_id.to_owned(),
                content_index,
                payload,
            });
            return;
        };
        let bytes = mulaw::base64_decoded_len(&payload) as u64;
        if self.speaking_items.insert(item_id.to_owned()) {
            self.event(SessionEvent::AudioStart {
                item_id: item_id.to_owned(),
            });
        }
        self.audio_reported = true;
        if self.opts.audio_events {
            self.event(SessionEvent::Audio {
                item_id: item_id.to_owned(),
                payload: payload.clone(),
            });
        }
        self.out(Output::Twilio(TwilioCommand::Media {
            stream_sid: sid,
            payload,
        }));
        let mark = self
            .ledger
            .record_chunk(now, response_id, item_id, content_index, bytes);
        self.twilio_mark(mark);
        self.next_probe_at = None;
    }

    /// After forwarding a delta of this item: lets the shell forward the item's next deltas
    /// itself when nothing the core does per delta is needed for them (no audio events, a
    /// Realtime session, the stream known, the call not ending).
    pub(super) fn offer_audio_lane(
        &mut self,
        response_id: &str,
        item_id: &str,
        content_index: u32,
    ) {
        if self.opts.audio_events || self.is_live() || self.ending.is_some() {
            return;
        }
        let (Some(sid), false) = (&self.stream_sid, self.is_ended()) else {
            return;
        };
        let Some(sent) = self
            .ledger
            .entries()
            .iter()
            .find(|e| e.item_id == item_id && e.content_index == content_index)
            .map(|e| e.sent)
        else {
            return;
        };
        let lane = audio_lane::AudioLane::new(
            sid.as_str(),
            response_id,
            item_id,
            content_index,
            self.ledger.generation(),
            sent,
        );
        self.audio_lane = Some(lane.clone());
        self.out(Output::AudioLane(lane));
    }

    /// A chunk the shell sent on the agent-audio lane: the ledger records it as
    /// [`CallCore::send_audio`] would have.
    pub(super) fn handle_audio_lane_sent(&mut self, now: Instant, bytes: u64) {
        let Some(lane) = &self.audio_lane else {
            log::warn!(target: LOG, "audio reported sent on a lane that was not granted");
            return;
        };
        self.ledger.record_chunk(
            now,
            lane.response_id(),
            lane.item_id(),
            lane.content_index(),
            bytes,
        );
        self.audio_reported = true;
        self.next_probe_at = None;
    }

    pub(super) fn send_audio_done(&mut self, item_id: &str, content_index: u32) {
        if self.stream_sid.is_none() {
            self.pending_twilio.push(PendingTwilio::Done {
                item_id: item_id.to_owned(),
                content_index,
            });
            return;
        }
        if let Some(mark) = self.ledger.complete(item_id, content_index) {
            self.twilio_mark(mark);
        }
    }
}
