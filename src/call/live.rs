//! The GPT-Live side of the call core: the same [`CallCore`] (Twilio, playback ledger, tools,
//! approvals, handoffs, guardrails, history, hang-ups, timers) speaking OpenAI GPT-Live
//! (`/v1/live`) instead of Realtime, chosen per call with [`CallConfig::model_api`](crate::call::CallConfig::model_api).
//!
//! The seam is a protocol adapter inside the core: what the core decides in Realtime terms
//! (a function call's output, a response to ask for, an agent's new configuration, a
//! message) is written as GPT-Live client events ([`Output::LiveModel`]), and GPT-Live's
//! server events ([`Input::LiveModel`](crate::call::Input::LiveModel)) drive the core's shared rules. What differs, from the
//! protocol brief `spec/gpt-live.md` (§ numbers are the brief's):
//!
//! * **Setup (§2).** On connect the core sends `session.start` (model, the agent's
//!   instructions and voice, µ-law 8 kHz, Responses delegation with the agent's tools) and
//!   nothing else; the call is ready — caller audio flows — only when `session.started`
//!   shows `audio/pcmu` at 8000 Hz. An `error` before it, or another format, ends the call
//!   with [`CallError::ModelConfigRejected`].
//! * **Immutable settings (§2.4).** Instructions, voice and audio are fixed at start. A handoff
//!   (or [`Command::UpdateAgent`]) sends `session.update` with the new agent's tools (the
//!   delegation stays `responses`) and appends the new agent's instructions with
//!   `session.instructions.append` (in pieces of at most [`MAX_APPEND_CHARS`]); the voice
//!   cannot change: a new agent with another voice keeps the first one, reported as
//!   [`CallError::CommandRefused`].
//! * **Turns (§5.2).** The model decides when it speaks and stops; there is no cancel, no
//!   truncate and no playback report. Agent and caller turns are the transcript fragments
//!   grouped until [`LiveConfig::turn_gap`] passes without one (§5.1: 0.8 s, as pipecat and
//!   LiveKit do): [`SessionEvent::AgentStart`] / [`SessionEvent::AgentEnd`] and history items.
//! * **Audio out (§4, §5.3).** Every delta (silence included: the server streams continuously)
//!   goes through the [`Pacer`], which keeps Twilio's buffer at most
//!   [`LiveConfig::pacer`]`.max_lead` ahead of what the caller has heard (the ledger's
//!   echoed marks): the model assumes its audio is heard as it streams it. Twilio `clear` is
//!   never sent. A hard stop ([`Command::Interrupt`], a guardrail trip) drops the audio held
//!   back and the rest of the current agent turn; the lead already sent (at most `max_lead`)
//!   still plays, and the model is not told (nothing in the protocol can tell it).
//! * **Greeting (§5.4).** `session.commentary.append` worded as an instruction.
//! * **Tools (§6.3).** Function calls are read from `response.event` envelopes
//!   (`response.output_item.done` with a completed `function_call`), run when their backend
//!   response completes (dropped when it fails or is incomplete), answered with
//!   `response.item.create` each, then **one** `response.create` once every call of the batch
//!   has its output (LiveKit's and pipecat's rule; the brief §10.3 leaves it open).
//! * **Messages.** A user message ([`Command::SendMessage`], DTMF with
//!   [`CallConfig::forward_dtmf`](crate::call::CallConfig::forward_dtmf)) becomes `session.thinking.append` (silent context, §7.7);
//!   a system message (a guardrail's "apologise and answer again") becomes
//!   `session.commentary.append` (spoken).
//! * **Close (§7.3).** Whenever the core closes the model connection it first sends
//!   `session.close` (it does not wait for `session.closed`). A `session.closed` the bridge
//!   did not ask for ends the call with [`CloseReason::ModelSessionClosed`] after the audio
//!   sent has played; an `error` whose code LiveKit treats as fatal (§7.4) with
//!   [`CloseReason::Error`] with [`CallError::ModelError`].
//! * **Not available:** [`Command::CreateResponse`] and [`Command::CommitAudio`] (GPT-Live runs
//!   the turns; `response.create` only continues a delegated response) are refused with an
//!   error event; there is no reconnect (§1.4: a new connection is a new session).
//!
//! ```
//! use std::time::Instant;
//! use twilio_realtime::agent::Agent;
//! use twilio_realtime::call::{CallCore, CallConfig, Input, ModelApi, Output};
//! use twilio_realtime::call::live::LiveConfig;
//! use twilio_realtime::proto::live::{ClientEvent, ServerEvent};
//!
//! let now = Instant::now();
//! let mut opts = CallConfig::default();
//! opts.model_api = ModelApi::Live(LiveConfig::default());
//! let mut core = CallCore::new(Agent::new("Assistant", "Be brief."), opts, now);
//! assert!(matches!(core.poll_output(), Some(Output::ConnectModel)));
//! core.handle_input(now, Input::ModelConnected);
//! let start = core.poll_output();
//! assert!(matches!(start, Some(Output::LiveModel(ClientEvent::SessionStart { .. }))));
//! let started = ServerEvent::parse(r#"{"type":"session.started","event_id":"e1","session":{
//!     "id":"live_1","audio":{"format":{"type":"audio/pcmu","rate":8000}}}}"#).unwrap();
//! core.handle_input(now, Input::LiveModel(started));
//! let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
//! assert!(matches!(outputs.last(), Some(Output::ModelReady)));
//! ```

use std::time::{Duration, Instant};

use crate::call::pacer::{Pacer, PacerConfig};
use crate::call::{CallCore, Command, ModelState, Output, MAX_CALLS_PER_RESPONSE};
use crate::error::CallError;
use crate::events::{CloseReason, HistoryItem, HistoryKind, InterruptCause, SessionEvent};
use crate::proto::live::{self, ApiError, ServerEvent};
use crate::proto::realtime::{ClientEvent as RtEvent, Item, ToolDefinition};

const LOG: &str = "twilio_realtime::session";
const TOOLS_LOG: &str = "twilio_realtime::tools";

/// The most characters in one `session.*.append` (the brief §6.4 caps each at 500 tokens;
/// pipecat chunks at about 450 estimated tokens; at ~4 characters a token this stays under).
pub const MAX_APPEND_CHARS: usize = 1_600;

/// Settings of a GPT-Live call (see the module docs).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LiveConfig {
    /// The Live model, in `session.start` (§2.2). Default [`live::DEFAULT_MODEL`].
    pub model: String,
    /// The Responses model that runs the agent's tools (`delegation.responses.model`, §6.3).
    /// Default [`live::DEFAULT_BACKEND_MODEL`].
    pub backend_model: String,
    /// How far Twilio's playout may run ahead of what the caller has heard. Default: a
    /// 150 ms lead.
    pub pacer: PacerConfig,
    /// A turn (agent or caller) ends when no transcript fragment came this long. Default
    /// 800 ms (§5.1).
    pub turn_gap: Duration,
    /// Agent audio is tracked in the playback ledger in segments of at most this many
    /// milliseconds (a done mark each). Default 1,000.
    pub segment_ms: u32,
}

/// The former name of [`LiveConfig`] (one naming scheme: settings structs are `*Config`).
#[deprecated(since = "0.1.0", note = "renamed to `LiveConfig`")]
pub type LiveOptions = LiveConfig;

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            model: live::DEFAULT_MODEL.to_owned(),
            backend_model: live::DEFAULT_BACKEND_MODEL.to_owned(),
            pacer: PacerConfig::with_lead(Duration::from_millis(150)),
            turn_gap: Duration::from_millis(800),
            segment_ms: 1_000,
        }
    }
}

/// Which model API a call speaks (see [`CallConfig::model_api`](crate::call::CallConfig::model_api)).
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum ModelApi {
    /// OpenAI Realtime (`/v1/realtime`): the default.
    #[default]
    Realtime,
    /// OpenAI GPT-Live (`/v1/live/sessions`), see [`crate::call::live`].
    Live(LiveConfig),
}

impl ModelApi {
    /// True for [`ModelApi::Live`].
    pub fn is_live(&self) -> bool {
        matches!(self, ModelApi::Live(_))
    }
}

#[derive(Debug)]
struct Turn {
    id: String,
    last: Instant,
}

/// The GPT-Live state of a call.
#[derive(Debug)]
pub(crate) struct LiveState {
    opts: LiveConfig,
    pacer: Pacer,
    start_sent: bool,
    /// The voice `session.start` asked for (`None`: the server's default), fixed for the session.
    voice: Option<String>,
    close_sent: bool,
    session_id: Option<String>,
    /// The ledger item the pacer's pieces go to now, and its bytes so far.
    segment: Option<(String, u64)>,
    next_seq: u64,
    agent_turn: Option<Turn>,
    user_turn: Option<Turn>,
    /// Drop the model's audio until the current agent turn ends (a hard stop).
    dropping: bool,
    /// Function outputs given since the last `response.create`.
    outputs_sent: usize,
    pacer_deadline: Option<Instant>,
    full_reported: bool,
}

impl LiveState {
    pub(crate) fn new(opts: LiveConfig) -> LiveState {
        LiveState {
            pacer: Pacer::new(opts.pacer),
            opts,
            start_sent: false,
            voice: None,
            close_sent: false,
            session_id: None,
            segment: None,
            next_seq: 0,
            agent_turn: None,
            user_turn: None,
            dropping: false,
            outputs_sent: 0,
            pacer_deadline: None,
            full_reported: false,
        }
    }

    fn next(&mut self, what: &str) -> String {
        self.next_seq += 1;
        format!("live_{what}_{}", self.next_seq)
    }

    /// When the core wants a timeout for GPT-Live's sake.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let gap = self.opts.turn_gap;
        let turn = |t: &Option<Turn>| t.as_ref().and_then(|t| t.last.checked_add(gap));
        [
            self.pacer_deadline,
            turn(&self.agent_turn),
            turn(&self.user_turn),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// An agent's tool as a Responses function tool (§6.3).
fn to_live_tool(d: ToolDefinition) -> live::FunctionTool {
    live::FunctionTool {
        kind: live::FunctionToolType::Function,
        name: d.name,
        description: Some(d.description).filter(|s| !s.is_empty()),
        parameters: Some(d.parameters).filter(|p| !p.is_null()),
        strict: None,
    }
}

/// Splits `text` into pieces of at most [`MAX_APPEND_CHARS`] characters, at whitespace where
/// one is near the end.
fn append_pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if rest.chars().count() <= MAX_APPEND_CHARS {
            out.push(rest.to_owned());
            break;
        }
        let hard = rest
            .char_indices()
            .nth(MAX_APPEND_CHARS)
            .map_or(rest.len(), |(i, _)| i);
        let cut = rest[..hard]
            .rfind(char::is_whitespace)
            .filter(|&i| i > hard / 2)
            .unwrap_or(hard);
        let (head, tail) = rest.split_at(cut);
        out.push(head.trim_end().to_owned());
        rest = tail.trim_start();
    }
    out
}

impl CallCore {
    fn live_mut(&mut self) -> Option<&mut LiveState> {
        self.live.as_deref_mut()
    }

    fn live_out(&mut self, ev: live::ClientEvent) {
        self.out(Output::LiveModel(ev));
    }

    /// The current agent's tools as Responses function tools.
    fn live_tools(&self) -> Vec<live::FunctionTool> {
        self.agent
            .tool_definitions()
            .into_iter()
            .map(to_live_tool)
            .collect()
    }

    /// The `session.start` configuration from the current agent (§2.1).
    pub(crate) fn live_session_config(&self) -> Option<live::SessionSettings> {
        let l = self.live.as_deref()?;
        let tools = self.live_tools();
        let mut cfg = live::SessionSettings::new(l.opts.model.clone())
            .instructions(self.agent.instructions())
            .tools(
                l.opts.backend_model.clone(),
                Some(self.agent.instructions().to_owned()).filter(|i| !i.trim().is_empty()),
                tools,
            );
        if let Some(v) = self.agent.voice_name() {
            cfg = cfg.voice(v);
        }
        Some(cfg)
    }

    /// The model socket is open: `session.start` goes first, and nothing else until
    /// `session.started` (§2).
    pub(crate) fn live_connected(&mut self) {
        if self.is_ended() || self.model != ModelState::Connecting {
            return;
        }
        let Some(session) = self.live_session_config() else {
            return;
        };
        let voice = self.agent.voice_name().map(str::to_owned);
        let Some(l) = self.live_mut() else { return };
        if std::mem::replace(&mut l.start_sent, true) {
            return;
        }
        let event_id = l.next("start");
        l.voice = voice;
        self.config_pending.clear();
        self.config_pending.push_back(event_id.clone());
        self.live_out(live::ClientEvent::SessionStart {
            event_id: Some(event_id),
            session,
        });
        self.model = ModelState::Configuring;
    }

    /// An event from GPT-Live.
    pub(crate) fn handle_live_model(&mut self, now: Instant, ev: ServerEvent) {
        if self.is_ended() || self.live.is_none() {
            return;
        }
        self.handle_model_activity(now);
        match ev {
            ServerEvent::SessionStarted(e) => self.live_started(e.session),
            ServerEvent::SessionUpdated(e) => {
                if let Some(id) = &e.client_event_id {
                    self.config_pending.retain(|p| p != id);
                } else {
                    self.config_pending.pop_front();
                }
                self.maybe_create_response();
            }
            ServerEvent::OutputAudioDelta(d) => self.live_audio(now, &d.delta),
            ServerEvent::OutputTranscriptDelta(d) => self.live_agent_text(now, &d.delta),
            ServerEvent::InputTranscriptDelta(d) => self.live_user_text(now, &d.delta),
            ServerEvent::ResponseEvent(env) => self.live_backend(now, env),
            ServerEvent::DelegationCreated(d) => {
                log::debug!(target: TOOLS_LOG, "delegation {} to {}", d.delegation.id, d.delegation.target)
            }
            ServerEvent::SessionClosed(c) => self.live_closed(now, c.reason),
            ServerEvent::Error(e) => self.live_error(now, e.error),
            ServerEvent::Info(i) => log::debug!(target: LOG, "model info {}", i.code),
            _ => {}
        }
    }

    fn live_started(&mut self, session: live::SessionResource) {
        if self.model != ModelState::Configuring {
            log::warn!(target: LOG, "session.started while not starting ignored");
            return;
        }
        self.config_pending.clear();
        log::info!(target: LOG, "live session {} started", session.id);
        let format = session.audio_format();
        if let Some(l) = self.live_mut() {
            l.session_id = Some(session.id);
        }
        match format {
            Some(live::AudioFormat::Pcmu { rate: 8000 }) => {}
            other => {
                let shown = other.map_or("none".to_owned(), |f| format!("{f:?}"));
                let message = format!(
                    "session.started shows audio format {shown}, not audio/pcmu at 8000 Hz"
                );
                log::error!(target: LOG, "model session is not µ-law 8 kHz: {message}; ending the call");
                return self.config_rejected(Some("session.audio.format".into()), message);
            }
        }
        self.on_configured();
    }

    /// True when the call speaks GPT-Live ([`ModelApi::Live`]).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// GPT-Live's session id, once `session.started` gave it (support asks for it, §2.3).
    pub fn live_session_id(&self) -> Option<&str> {
        self.live.as_deref()?.session_id.as_deref()
    }

    fn live_audio(&mut self, now: Instant, delta: &str) {
        if self.model != ModelState::Ready {
            log::debug!(target: LOG, "audio before session.started dropped");
            return;
        }
        if delta.is_empty() {
            return;
        }
        self.assistant_audio_seen = true;
        let ending_quiet =
            self.ending.is_some() && self.live.as_deref().is_some_and(|l| l.agent_turn.is_none());
        let Some(l) = self.live_mut() else { return };
        if l.dropping || ending_quiet {
            return;
        }
        if let Err(e) = l.pacer.push(delta) {
            if !std::mem::replace(&mut l.full_reported, true) {
                log::warn!(target: LOG, "model audio dropped: {e}");
                self.error(CallError::BadModelEvent {
                    message: format!("model audio dropped: {e}"),
                });
            }
            return;
        }
        self.live_pump(now);
    }

    /// Sends what the pacer allows now; closes the ledger segment when it is full, or when
    /// the call is ending (or the model gone) and nothing is held back.
    pub(crate) fn live_pump(&mut self, now: Instant) {
        if self.stream_sid.is_none() {
            return;
        }
        loop {
            let Some(l) = self.live_mut() else { return };
            let Some(piece) = l.pacer.poll(now) else {
                break;
            };
            let bytes = crate::proto::mulaw::base64_decoded_len(&piece) as u64;
            let limit = u64::from(l.opts.segment_ms) * crate::proto::mulaw::BYTES_PER_MS as u64;
            let (item, sent) = match l.segment.take() {
                Some((id, n)) => (id, n),
                None => (l.next("out"), 0),
            };
            let sent = sent.saturating_add(bytes);
            let full = sent >= limit;
            if !full {
                l.segment = Some((item.clone(), sent));
            }
            self.send_audio(now, "live", &item, 0, piece);
            if full {
                self.send_audio_done(&item, 0);
            }
        }
        let quiet = self.ending.is_some() || self.model == ModelState::Gone;
        let Some(l) = self.live_mut() else { return };
        l.pacer_deadline = l.pacer.next_deadline(now);
        if quiet && l.pacer.queued_ms() == 0 && l.agent_turn.is_none() {
            if let Some((item, _)) = l.segment.take() {
                self.send_audio_done(&item, 0);
            }
        }
    }

    /// A mark echoed: the pacer learns what the caller has heard and may send more.
    pub(crate) fn live_on_mark(&mut self, now: Instant) {
        let heard = self.ledger.heard_bytes() / crate::proto::mulaw::BYTES_PER_MS as u64;
        if let Some(l) = self.live_mut() {
            l.pacer.on_heard(heard, now);
        }
        self.live_pump(now);
    }

    /// The open agent (or caller) turn, with a fragment at `now`; a new one if none is open.
    /// True when it is new.
    fn live_turn(&mut self, now: Instant, agent: bool) -> Option<(String, bool)> {
        let l = self.live_mut()?;
        let slot = if agent {
            &mut l.agent_turn
        } else {
            &mut l.user_turn
        };
        if let Some(t) = slot {
            t.last = now;
            return Some((t.id.clone(), false));
        }
        let id = l.next(if agent { "agent" } else { "caller" });
        let turn = Turn {
            id: id.clone(),
            last: now,
        };
        if agent {
            l.agent_turn = Some(turn);
        } else {
            l.user_turn = Some(turn);
        }
        Some((id, true))
    }

    fn live_agent_text(&mut self, now: Instant, delta: &str) {
        let Some((id, new)) = self.live_turn(now, true) else {
            return;
        };
        if new {
            let agent = self.agent.name().to_owned();
            self.event(SessionEvent::AgentStart { agent });
            self.live_history(id.clone(), HistoryKind::Assistant, String::new());
        }
        // Per-turn text, history transcript and guardrails: the core's own rule.
        self.agent_text(&id, &id, delta, false);
    }

    fn live_user_text(&mut self, now: Instant, delta: &str) {
        let Some((id, new)) = self.live_turn(now, false) else {
            return;
        };
        if new {
            self.out(Output::CallerSpeaking(true));
            self.live_history(id.clone(), HistoryKind::User, String::new());
        }
        if let Some(h) = self.history.iter_mut().find(|h| h.item_id == id) {
            h.text.push_str(delta);
        }
    }

    fn live_history(&mut self, item_id: String, kind: HistoryKind, text: String) {
        let h = HistoryItem {
            item_id,
            kind,
            text,
            status: Some("in_progress".into()),
            truncated: None,
        };
        self.history.push(h.clone());
        self.event(SessionEvent::HistoryAdded(h));
    }

    fn live_history_done(&mut self, item_id: &str) {
        if let Some(h) = self.history.iter_mut().find(|h| h.item_id == item_id) {
            h.status = Some("completed".into());
            h.text = h.text.trim().to_owned();
        }
        self.history_updated(item_id);
    }

    /// Turns that had no fragment for the turn gap end; the pacer sends what it may.
    pub(crate) fn live_on_timeout(&mut self, now: Instant) {
        let Some(l) = self.live_mut() else { return };
        let gap = l.opts.turn_gap;
        let over = |t: &Option<Turn>| {
            t.as_ref()
                .and_then(|t| t.last.checked_add(gap))
                .is_some_and(|end| now >= end)
        };
        let agent_over = over(&l.agent_turn);
        let user_over = over(&l.user_turn);
        if user_over {
            if let Some(t) = l.user_turn.take() {
                self.out(Output::CallerSpeaking(false));
                self.live_history_done(&t.id);
            }
        }
        if agent_over {
            self.live_end_agent_turn();
        }
        self.live_pump(now);
        self.maybe_end();
    }

    /// The call ends: open turns end with it.
    pub(crate) fn live_end_turns(&mut self) {
        let Some(l) = self.live_mut() else { return };
        if let Some(t) = l.user_turn.take() {
            self.live_history_done(&t.id);
        }
        self.live_end_agent_turn();
    }

    fn live_end_agent_turn(&mut self) {
        let Some(l) = self.live_mut() else { return };
        let Some(t) = l.agent_turn.take() else { return };
        l.dropping = false;
        let text = self
            .agent_text
            .remove(&t.id)
            .map(|a| a.text)
            .unwrap_or_default();
        self.tripped_responses.remove(&t.id);
        self.live_history_done(&t.id);
        let agent = self.agent.name().to_owned();
        self.event(SessionEvent::AgentEnd {
            agent,
            text: text.trim().to_owned(),
        });
    }

    /// A wrapped Responses event of the tool backend (§6.3).
    fn live_backend(&mut self, now: Instant, env: live::ResponseEnvelope) {
        // Correlated by delegation, else by one shared key (as LiveKit and pipecat do).
        let key = env.delegation_id.clone().unwrap_or_default();
        if let Some(call) = env.function_call() {
            if !self.calls_by_response.contains_key(&key)
                && self.calls_by_response.len() >= MAX_CALLS_PER_RESPONSE
            {
                log::warn!(target: TOOLS_LOG, "function calls of too many unfinished delegations; one ignored");
                return;
            }
            let calls = self.calls_by_response.entry(key).or_default();
            if calls.len() < MAX_CALLS_PER_RESPONSE
                && !calls
                    .iter()
                    .any(|c| c.call_id.as_deref() == Some(&call.call_id))
            {
                calls.push(Item {
                    id: Some(format!("live_fc_{}", call.call_id)),
                    kind: "function_call".into(),
                    status: Some("completed".into()),
                    call_id: Some(call.call_id),
                    name: Some(call.name),
                    arguments: Some(call.arguments),
                    ..Default::default()
                });
            }
            return;
        }
        match env.outcome() {
            Some(live::BackendOutcome::Completed) => {
                let calls = self.calls_by_response.remove(&key).unwrap_or_default();
                for item in calls {
                    self.history_add(None, &item);
                    self.on_function_call(now, &item);
                }
            }
            Some(outcome) => {
                // The service discards that response's calls (§6.3).
                if let Some(calls) = self.calls_by_response.remove(&key) {
                    log::info!(target: TOOLS_LOG, "{} function call(s) not run: the backend response ended {outcome:?}", calls.len());
                }
                self.error(CallError::ModelError {
                    code: None,
                    message: format!("the tool backend's response ended {outcome:?}"),
                });
            }
            None => {}
        }
    }

    fn live_closed(&mut self, now: Instant, reason: Option<live::SessionCloseReason>) {
        let reason = reason.unwrap_or(live::SessionCloseReason::Other(String::new()));
        if let Some(l) = self.live_mut() {
            l.close_sent = true; // nothing more to close
        }
        if self.ending.is_some() {
            log::info!(target: LOG, "live session closed ({reason:?}) while the call is ending");
            self.model = ModelState::Gone;
            self.out(Output::ModelNotReady);
            self.live_pump(now);
            self.maybe_end();
            return;
        }
        log::warn!(target: LOG, "live session closed: {reason:?}");
        self.live_lost(now, CloseReason::ModelSessionClosed(reason));
    }

    /// The model is gone for good: the audio sent plays out, then the call ends.
    fn live_lost(&mut self, now: Instant, reason: CloseReason) {
        self.model = ModelState::Gone;
        self.out(Output::ModelNotReady);
        self.out(Output::CloseModel);
        self.live_pump(now);
        self.drain_or_finish(now, reason);
    }

    fn live_error(&mut self, now: Instant, e: ApiError) {
        let for_config = e
            .client_event_id
            .as_ref()
            .and_then(|id| self.config_pending.iter().position(|p| p == id));
        if self.model == ModelState::Configuring || self.model == ModelState::Connecting {
            // An error before `session.started`: the session did not start (§7.4).
            log::error!(target: LOG, "model refused the session start ({:?}): {} {}", e.param, e.code, e.message);
            return self.config_rejected(e.param, format!("{}: {}", e.code, e.message));
        }
        if let Some(pos) = for_config {
            self.config_pending.remove(pos);
            log::warn!(target: LOG, "model refused a session update: {} {}; the previous configuration stays", e.code, e.message);
            self.error(CallError::ModelError {
                code: Some(e.code),
                message: e.message,
            });
            self.maybe_create_response();
            return;
        }
        if e.is_fatal() {
            log::error!(target: LOG, "fatal model error {}: {}", e.code, e.message);
            let error = CallError::ModelError {
                code: Some(e.code),
                message: e.message,
            };
            self.error(error.clone());
            return self.live_lost(now, CloseReason::Error(error));
        }
        log::warn!(target: LOG, "model error {} {}: {}", e.kind, e.code, e.message);
        self.error(CallError::ModelError {
            code: Some(e.code),
            message: e.message,
        });
    }

    /// The greeting: commentary worded as an instruction (§5.4).
    pub(crate) fn live_greet(&mut self, greeting: super::Greeting) {
        let what = match greeting {
            super::Greeting::Instructions(i) => i,
            super::Greeting::Say(text) => format!(
                "Greet the caller by saying exactly the following words, word for word: {text}"
            ),
        };
        let content = format!(
            "{what} Do not wait for the caller to speak first. After that, pause and listen."
        );
        log::debug!(target: LOG, "greeting the caller");
        self.live_appends(content, Append::Commentary);
    }

    fn live_appends(&mut self, text: String, kind: Append) {
        for content in append_pieces(&text) {
            let ev = match kind {
                Append::Instructions => live::ClientEvent::InstructionsAppend {
                    event_id: None,
                    content,
                    delegation_id: None,
                },
                Append::Commentary => live::ClientEvent::CommentaryAppend {
                    event_id: None,
                    content,
                    delegation_id: None,
                },
                Append::Thinking => live::ClientEvent::ThinkingAppend {
                    event_id: None,
                    content,
                    delegation_id: None,
                },
            };
            self.live_out(ev);
        }
    }

    /// The adapter: a client event the core decided on, in Realtime terms, written as what
    /// GPT-Live allows (see the module docs); what has no equivalent is dropped (logged).
    pub(crate) fn live_emit(&mut self, ev: RtEvent) {
        match ev {
            RtEvent::SessionUpdate { .. } => {
                // Instructions and voice are immutable (§2.4): new tools by update, the new
                // agent's instructions appended; a new voice is refused, said so.
                let wanted = self.agent.voice_name().map(str::to_owned);
                let fixed = self.live.as_deref().and_then(|l| l.voice.clone());
                if wanted.is_some() && wanted != fixed {
                    let (wanted, fixed) = (wanted.unwrap_or_default(), fixed.unwrap_or_default());
                    log::warn!(target: LOG, "voice {wanted} not applied: GPT-Live fixes the voice at session.start");
                    self.error(CallError::CommandRefused {
                        message: format!(
                            "agent {}'s voice {wanted} is not available with GPT-Live: the voice is fixed at session.start ({})",
                            self.agent.name(),
                            if fixed.is_empty() { "the server's default" } else { fixed.as_str() }
                        ),
                    });
                }
                let tools = self.live_tools();
                let Some(l) = self.live_mut() else { return };
                let event_id = l.next("update");
                self.config_pending.push_back(event_id.clone());
                self.live_out(live::ClientEvent::SessionUpdate {
                    event_id: Some(event_id),
                    session: live::SessionUpdate {
                        delegation: Some(live::DelegationUpdate::Responses {
                            responses: Some(live::ResponsesUpdate {
                                tools: Some(tools),
                                instructions: Some(self.agent.instructions().to_owned())
                                    .filter(|i| !i.trim().is_empty()),
                                ..Default::default()
                            }),
                            acknowledgement_delay_ms: None,
                        }),
                        triggers: None,
                    },
                });
                let text = format!(
                    "From now on you are {}. {}",
                    self.agent.name(),
                    self.agent.instructions()
                );
                self.live_appends(text, Append::Instructions);
            }
            RtEvent::ConversationItemCreate { item, .. } => match item.kind.as_str() {
                "function_call_output" => {
                    let call_id = item.call_id.clone().unwrap_or_default();
                    let output = item.output.clone().unwrap_or_default();
                    let mut hist = item.clone();
                    hist.id = Some(format!("live_fco_{call_id}"));
                    self.history_add(None, &hist);
                    if let Some(l) = self.live_mut() {
                        l.outputs_sent += 1;
                    }
                    self.live_out(live::ClientEvent::ResponseItemCreate {
                        event_id: None,
                        item: live::ResponseItem::FunctionCallOutput { call_id, output },
                    });
                }
                "message" => {
                    let text = item.text().unwrap_or_default();
                    match item.role.as_deref() {
                        Some("system") => self.live_appends(text, Append::Commentary),
                        _ => self.live_appends(text, Append::Thinking),
                    }
                }
                other => {
                    log::debug!(target: LOG, "{other} item has no GPT-Live equivalent; not sent")
                }
            },
            RtEvent::ResponseCreate { .. } => {
                // GPT-Live runs the turns: `response.create` only continues a delegated
                // response waiting for its tool outputs (§6.3).
                self.response_requested = None;
                let Some(l) = self.live_mut() else { return };
                if std::mem::take(&mut l.outputs_sent) > 0 {
                    self.live_out(live::ClientEvent::ResponseCreate { event_id: None });
                }
            }
            RtEvent::Raw { json, event_type } => {
                self.live_out(live::ClientEvent::Raw { json, event_type })
            }
            other => {
                log::debug!(target: LOG, "{} has no GPT-Live equivalent; not sent", other.event_type())
            }
        }
    }

    /// Before the model connection closes: `session.close` (§7.3), once, if the session
    /// started (a refused `session.start` left nothing to close).
    pub(crate) fn live_before_close(&mut self) {
        let Some(l) = self.live_mut() else { return };
        if l.session_id.is_none() || std::mem::replace(&mut l.close_sent, true) {
            return;
        }
        // Caller audio stops first: `session.close` is the last event the server gets.
        self.outputs.push_back(Output::ModelNotReady);
        self.outputs
            .push_back(Output::LiveModel(live::ClientEvent::SessionClose {
                event_id: None,
            }));
    }

    /// A hard stop (the application's interrupt, a guardrail): what the pacer holds back and
    /// the rest of this agent turn are dropped; the lead already sent plays (no `clear`).
    pub(crate) fn live_hard_stop(&mut self, cause: InterruptCause) {
        let Some(l) = self.live_mut() else { return };
        let dropped = l.pacer.drop_queued();
        let turn = l.agent_turn.as_ref().map(|t| t.id.clone());
        l.dropping = turn.is_some();
        if dropped == 0 && turn.is_none() {
            return;
        }
        log::info!(target: LOG, "hard stop ({cause:?}): {dropped} ms of agent audio dropped");
        for t in self.tools.values_mut() {
            t.interrupted = true;
        }
        // What was held back and dropped (the rest of the turn is never received whole).
        let item = turn.unwrap_or_default();
        self.event(SessionEvent::AudioInterrupted {
            cause,
            heard: Vec::new(),
            cut: vec![(item, dropped)],
        });
    }

    /// True when everything the agent said has been heard (for an ending call).
    pub(crate) fn live_heard(&self) -> bool {
        let Some(l) = self.live.as_deref() else {
            return true;
        };
        self.stream_sid.is_none()
            || (!self.ledger.is_playing()
                && l.pacer.queued_ms() == 0
                && l.agent_turn.is_none()
                && l.segment.is_none())
    }

    /// Commands GPT-Live has no way to carry out are refused with an error event.
    pub(crate) fn live_command(&mut self, cmd: Command) -> Option<Command> {
        let what = match &cmd {
            Command::CreateResponse(_) => "create_response",
            Command::CommitAudio => "commit_audio",
            _ => return Some(cmd),
        };
        log::warn!(target: LOG, "{what} refused: GPT-Live decides the turns itself");
        self.error(CallError::CommandRefused {
            message: format!(
                "{what} is not available with GPT-Live: the model decides when it speaks"
            ),
        });
        None
    }

    /// The lead of Twilio's playout over what the caller heard, at quantile `q` (GPT-Live
    /// calls only; `None` before any audio).
    pub fn live_lead_quantile(&self, q: f64) -> Option<u64> {
        self.live.as_deref()?.pacer.lead_quantile(q)
    }
}

#[derive(Debug, Clone, Copy)]
enum Append {
    Instructions,
    Commentary,
    Thinking,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_appends_are_split_under_the_cap() {
        let text = "word ".repeat(1000);
        let pieces = append_pieces(&text);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| p.chars().count() <= MAX_APPEND_CHARS));
        assert_eq!(pieces.join(" ").split_whitespace().count(), 1000);
        assert_eq!(append_pieces("  short  "), vec!["short".to_owned()]);
        assert!(append_pieces("   ").is_empty());
    }
}
