//! The agent's text, output guardrails and the conversation history.
//!
//! Part of [`CallCore`]'s `impl` (see the [`crate::call`] module docs).

use super::*;

impl CallCore {
    pub(super) fn agent_text(&mut self, response_id: &str, item_id: &str, text: &str, done: bool) {
        // Text is kept per item: the items of one response may interleave their deltas, and a
        // final text replaces exactly its own item's deltas (never a cut inside another item's
        // text, or inside a character).
        let seq = self.next_text_seq;
        let at = self
            .agent_text
            .entry(item_id.to_owned())
            .or_insert_with(|| AgentText {
                response_id: response_id.to_owned(),
                seq,
                ..Default::default()
            });
        if at.seq == seq {
            // A new entry (only a new one has the next sequence number).
            self.next_text_seq = self.next_text_seq.saturating_add(1);
        }
        if done {
            at.text.clear();
        }
        at.text.push_str(text);
        at.checked = at.checked.min(at.text.len());
        // Keep the history's transcript current (it survives truncation).
        let snapshot = at.text.clone();
        if let Some(h) = self.history.iter_mut().find(|h| h.item_id == item_id) {
            h.text = snapshot.clone();
        }
        if done {
            self.history_updated(item_id);
        }
        let guardrails = self.agent.guardrails().to_vec();
        if guardrails.is_empty()
            || self.tripped_responses.contains(response_id)
            || self.cut_responses.contains(response_id)
        {
            return;
        }
        let Some(at) = self.agent_text.get_mut(item_id) else {
            return;
        };
        if !done
            && at.text.len()
                < at.checked
                    .saturating_add(self.opts.guardrail_debounce_chars)
        {
            return;
        }
        at.checked = at.text.len();
        self.next_guardrail_id += 1;
        let id = self.next_guardrail_id;
        self.guardrail_runs.insert(id, response_id.to_owned());
        self.out(Output::RunGuardrails(GuardrailRun {
            id,
            text: snapshot,
            guardrails,
        }));
    }

    /// The result of a [`GuardrailRun`]: `None` if every guardrail passed, else the first
    /// trip as (guardrail name, reason).
    pub(super) fn handle_guardrail_result(
        &mut self,
        now: Instant,
        run: &GuardrailRun,
        trip: Option<(String, String)>,
    ) {
        let Some(response_id) = self.guardrail_runs.remove(&run.id) else {
            return;
        };
        let Some((guardrail, reason)) = trip else {
            return;
        };
        if self.is_ended() || !self.tripped_responses.insert(response_id.clone()) {
            return;
        }
        log::info!(target: LOG, "output guardrail {guardrail} tripped");
        self.event(SessionEvent::GuardrailTripped {
            guardrail: guardrail.clone(),
            reason: reason.clone(),
            text: run.text.clone(),
        });
        self.barge_in(now, InterruptCause::Guardrail);
        self.send_model(ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::system_text(format!(
                "Your last reply was stopped because it broke the rule \"{guardrail}\" ({reason}). \
                 Briefly apologise and answer again without breaking that rule."
            )),
        });
        self.needs_response = true;
        self.maybe_create_response();
    }

    pub(super) fn history_add(&mut self, previous: Option<String>, item: &Item) {
        let Some(id) = item.id.clone() else { return };
        if self.history.iter().any(|h| h.item_id == id) {
            self.history_done(item);
            return;
        }
        let h = history_item(item);
        let pos = previous
            .and_then(|p| self.history.iter().position(|h| h.item_id == p))
            .map(|i| i + 1)
            .unwrap_or(self.history.len());
        self.history.insert(pos, h.clone());
        self.event(SessionEvent::HistoryAdded(h));
    }

    pub(super) fn history_done(&mut self, item: &Item) {
        let Some(id) = item.id.as_deref() else { return };
        let fresh = history_item(item);
        let Some(h) = self.history.iter_mut().find(|h| h.item_id == id) else {
            self.history_add(None, item);
            return;
        };
        if !fresh.text.is_empty() && h.truncated.is_none() {
            h.text = fresh.text;
        }
        h.status = fresh.status;
        h.kind = fresh.kind;
        self.history_updated(id);
    }

    /// Reports the item that changed, not the whole history: a copy of the whole history on
    /// every change would cost O(n²) over a long call. `Session::history()` gives the
    /// whole of it on demand.
    pub(super) fn history_updated(&mut self, item_id: &str) {
        if let Some(h) = self.history.iter().find(|h| h.item_id == item_id) {
            let h = h.clone();
            self.event(SessionEvent::HistoryUpdated(h));
        }
    }
}
