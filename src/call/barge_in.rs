//! Barge-in: stopping the agent where the caller heard it (`clear`, cancel, truncation at the playback ledger's position).
//!
//! Part of [`CallCore`]'s `impl` (see the [`crate::call`] module docs).

use super::*;

impl CallCore {
    pub(super) fn barge_in(&mut self, now: Instant, cause: InterruptCause) {
        if self.live.is_some() {
            return self.live_hard_stop(cause);
        }
        if self.opts.sideband {
            return self.sideband_interrupt(cause);
        }
        let playing = self.ledger.is_playing() || !self.pending_twilio.is_empty();
        // One cut per response: a response already cut (its late audio is being dropped until
        // its `response.done`) is not cancelled or reported again.
        let response = self
            .active_response
            .clone()
            .filter(|r| !self.cut_responses.contains(r));
        if !playing && response.is_none() {
            return;
        }
        if self.ledger.is_playing() {
            if let Some(sid) = self.stream_sid.clone() {
                self.out(Output::Twilio(TwilioCommand::Clear { stream_sid: sid }));
            }
        }
        // Audio that never reached Twilio (it came before `start`) was heard for 0 ms; all
        // of it (µ-law: 8 bytes a millisecond) is cut.
        let mut unsent: Vec<(String, u32, u64)> = Vec::new();
        for p in self.pending_twilio.drain(..) {
            if let PendingTwilio::Audio {
                item_id,
                content_index,
                payload,
                ..
            } = p
            {
                let bytes = mulaw::base64_decoded_len(&payload) as u64;
                match unsent
                    .iter_mut()
                    .find(|(i, c, _)| *i == item_id && *c == content_index)
                {
                    Some((_, _, b)) => *b = b.saturating_add(bytes),
                    None => unsent.push((item_id, content_index, bytes)),
                }
            }
        }
        // Tools already running were asked for before the interruption: their output is
        // still given to the model, but without a response.create that would talk over the
        // caller (the caller's turn is answered as usual).
        for t in self.tools.values_mut() {
            t.interrupted = true;
        }
        if let Some(r) = &response {
            let server_cancels =
                cause == InterruptCause::CallerSpeech && self.opts.session.interrupt_response();
            if !server_cancels {
                self.send_model(ClientEvent::ResponseCancel {
                    event_id: None,
                    response_id: Some(r.clone()),
                });
            }
            self.cut_responses.insert(r.clone());
        }
        let truncations = self.ledger.truncations(now);
        let mut heard = Vec::with_capacity(truncations.len());
        let mut cut = Vec::with_capacity(truncations.len());
        for t in truncations {
            log::debug!(
                target: LOG,
                "truncate {} at {} ms of {} ms sent",
                t.item_id,
                t.audio_end_ms,
                t.sent_ms
            );
            heard.push((t.item_id.clone(), t.audio_end_ms));
            cut.push((t.item_id.clone(), t.sent_ms.saturating_sub(t.audio_end_ms)));
            self.send_model(ClientEvent::ConversationItemTruncate {
                event_id: None,
                item_id: t.item_id,
                content_index: t.content_index,
                audio_end_ms: t.audio_end_ms,
            });
        }
        for (item_id, content_index, bytes) in unsent {
            if heard.iter().any(|(i, _)| *i == item_id) {
                continue;
            }
            log::debug!(target: LOG, "truncate {item_id} at 0 ms (never reached twilio)");
            heard.push((item_id.clone(), 0));
            cut.push((item_id.clone(), bytes / 8));
            self.send_model(ClientEvent::ConversationItemTruncate {
                event_id: None,
                item_id,
                content_index,
                audio_end_ms: 0,
            });
        }
        self.ledger.clear();
        // Twilio's buffer is empty once the clear lands: keep measuring the round trip while
        // nothing plays.
        self.schedule_probe(now);
        self.speaking_items.clear();
        self.audio_reported = false;
        self.event(SessionEvent::AudioInterrupted { cause, heard, cut });
        if self.draining.is_some() {
            self.finish_drain();
        }
        self.maybe_end();
    }
}
