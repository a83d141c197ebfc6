//! Everything that can happen to a call, as one type: [`Input`], fed to
//! [`CallCore::handle_input`] with the current time.
//!
//! The shell ([`crate::session`]) turns what its threads see into `Input`s; tests and property
//! tests build them directly (a call is a `Vec<(Instant, Input)>`). Outputs come back through
//! [`CallCore::poll_output`], and the next time the core wants to be woken without an input
//! through [`CallCore::next_deadline`] (then feed [`Input::Timeout`]).

use std::time::Instant;

use crate::agent::ToolFailure;
use crate::call::{CallCore, Command, GuardrailRun};
use crate::error::CallError;
use crate::proto::realtime::ServerEvent;
use crate::proto::twilio::TwilioMessage;

/// One thing that happened to a call.
///
/// ```
/// use std::time::Instant;
/// use twilio_realtime::agent::Agent;
/// use twilio_realtime::call::{CallCore, CallConfig, Input, Output};
/// use twilio_realtime::proto::realtime::ServerEvent;
///
/// let now = Instant::now();
/// let mut core = CallCore::new(Agent::new("Assistant", "Be brief."), CallConfig::default(), now);
/// assert!(matches!(core.poll_output(), Some(Output::ConnectModel)));
/// core.handle_input(now, Input::ModelConnected);
/// let created = ServerEvent::parse(r#"{"type":"session.created","event_id":"e1","session":{}}"#).unwrap();
/// core.handle_input(now, Input::Model(created));
/// assert!(matches!(core.poll_output(), Some(Output::Model(update)) if update.event_type() == "session.update"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// A message from Twilio's Media Streams socket (`media` frames take the caller-audio lane
    /// in the threaded shell, but the core accepts them too).
    Twilio(TwilioMessage),
    /// The latest frame on the Twilio socket (any frame, `media` included) arrived at the
    /// `now` given with this input: feeds the silence rule
    /// ([`crate::call::CallConfig::twilio_silence_timeout`]).
    TwilioActivity,
    /// Twilio spent its bad-message budget (`messages` bad ones in the call): the call ends
    /// with [`CallError::TooManyBadMessages`].
    TwilioOverBudget {
        /// How many bad messages the call saw.
        messages: u64,
    },
    /// The Twilio WebSocket closed or failed: the call ends with this error (normally a
    /// [`CallError::TwilioGone`], see [`CallError::twilio_gone`]).
    TwilioClosed {
        /// What happened.
        error: CallError,
    },
    /// The application approved the `start` the core asked about
    /// ([`crate::call::Output::ApproveStart`]): the call goes live, speaking as `agent` if one
    /// is given (an agent chosen from the call's details; ignored once the model session is
    /// configured).
    StartApproved {
        /// The call's starting agent, if the application chose one for this call.
        agent: Option<crate::agent::Agent>,
    },
    /// The application refused the stream (a failed one-time token, the start check): the
    /// call ends with [`CallError::StreamRefused`] without a model session.
    Rejected {
        /// Why, for the logs and the close reason.
        why: String,
    },
    /// The model WebSocket is open (its `session.created` is still to come).
    ModelConnected,
    /// The model WebSocket is open and its session was already configured, before the call
    /// (a warm model: see [`crate::session::warm`]); stands for `session.created` and the
    /// answer to the first `session.update`.
    ModelConnectedConfigured(crate::call::Preconfigured),
    /// The model connection could not be opened: the call ends with this error (see
    /// [`CallError::model_connect`]).
    ModelConnectFailed {
        /// What happened.
        error: CallError,
    },
    /// An event from the model.
    Model(ServerEvent),
    /// An event from the model, on a GPT-Live call ([`crate::call::ModelApi::Live`]).
    LiveModel(crate::proto::live::ServerEvent),
    /// The model connection sent something (any frame, a pong included) at the `now` given
    /// with this input: answers an outstanding ping and postpones the next.
    ModelActivity,
    /// The model WebSocket closed or failed (normally a [`CallError::ModelDisconnected`], see
    /// [`CallError::model_closed`]): the model-loss rule runs.
    ModelClosed {
        /// What happened.
        error: CallError,
    },
    /// A tool run ([`crate::call::Output::RunTool`]) finished: `Ok(output)` or why it gave
    /// none. Results of calls that timed out or are unknown are ignored.
    ToolResult {
        /// The model's call id.
        call_id: String,
        /// The tool's output, or its failure.
        result: Result<String, ToolFailure>,
    },
    /// A guardrail run ([`crate::call::Output::RunGuardrails`]) finished: `trip` is `None` if
    /// every guardrail passed, else the first trip as (guardrail name, reason).
    GuardrailResult {
        /// The run, as it was handed out.
        run: GuardrailRun,
        /// The first trip, if any.
        trip: Option<(String, String)>,
    },
    /// The application asks something of the call.
    Command(Command),
    /// Code on one of the call's threads panicked: the call ends with
    /// [`CallError::Panicked`].
    Panicked {
        /// Where and why.
        what: String,
    },
    /// The shell sent a chunk of `bytes` of µ-law audio (and its chunk mark) to Twilio on the
    /// agent-audio lane the core granted ([`crate::call::Output::AudioLane`]), at the `now`
    /// given with this input. Fed in order, before any other input.
    AudioLaneSent {
        /// The chunk's µ-law bytes (decoded size).
        bytes: u64,
    },
    /// Time passed (the shell woke at [`CallCore::next_deadline`]): tool and approval
    /// timeouts, the end of a drain, round-trip probes, silence and ping rules.
    Timeout,
}

impl CallCore {
    /// Feeds one input at `now`; then drain [`CallCore::poll_output`] and sleep until
    /// [`CallCore::next_deadline`] or the next input, whichever comes first.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        if let Input::AudioLaneSent { bytes } = input {
            return self.handle_audio_lane_sent(now, bytes);
        }
        // A lane holds only until the next input of another kind (see `call::audio_lane`).
        self.audio_lane = None;
        match input {
            Input::Twilio(m) => self.handle_twilio(now, m),
            Input::TwilioActivity => self.handle_twilio_activity(now),
            Input::TwilioOverBudget { messages } => self.handle_twilio_over_budget(now, messages),
            Input::TwilioClosed { error } => self.handle_twilio_closed(now, error),
            Input::StartApproved { agent } => self.handle_start_approved(now, agent),
            Input::Rejected { why } => self.reject(now, why),
            Input::ModelConnected => self.handle_model_connected(now),
            Input::ModelConnectedConfigured(pre) => self.handle_model_preconfigured(now, pre),
            Input::ModelConnectFailed { error } => self.handle_model_connect_failed(now, error),
            Input::Model(ev) => self.handle_model(now, ev),
            Input::LiveModel(ev) => self.handle_live_model(now, ev),
            Input::ModelActivity => self.handle_model_activity(now),
            Input::ModelClosed { error } => self.handle_model_closed(now, error),
            Input::ToolResult { call_id, result } => self.handle_tool_result(now, &call_id, result),
            Input::GuardrailResult { run, trip } => self.handle_guardrail_result(now, &run, trip),
            Input::Command(c) => self.handle_command(now, c),
            Input::Panicked { what } => self.handle_panic(now, what),
            Input::Timeout => self.handle_timeout(now),
            Input::AudioLaneSent { .. } => {}
        }
    }
}

impl CallCore {
    /// Feeds what the shell's other threads did for the call without waking the session
    /// thread, in the one order that keeps the playback ledger exact; call it at the top of
    /// every wake-up, before the input that woke the shell.
    ///
    /// `lane_sent`: each chunk written on the agent-audio lane ([`crate::call::audio_lane`])
    /// since the last wake-up, as (when it was written, its µ-law bytes), fed as
    /// [`Input::AudioLaneSent`]. `echoes`: each mark echo that waited
    /// ([`CallCore::echo_can_wait`]), as (when it arrived, the `mark` message), fed as
    /// [`Input::Twilio`]. The chunks go first: an echo that waited was echoed after its chunk
    /// was written, and the ledger must hold a chunk before its echo can move the playback
    /// position past it.
    ///
    /// ```
    /// use std::time::Instant;
    /// use twilio_realtime::agent::Agent;
    /// use twilio_realtime::call::{CallConfig, CallCore};
    /// use twilio_realtime::proto::twilio::TwilioMessage;
    ///
    /// let now = Instant::now();
    /// let mut core = CallCore::new(Agent::new("A", "x"), CallConfig::default(), now);
    /// let lane_sent: Vec<(Instant, u64)> = Vec::new();
    /// let echoes: Vec<(Instant, TwilioMessage)> = Vec::new();
    /// core.catch_up(lane_sent, echoes);
    /// ```
    pub fn catch_up(
        &mut self,
        lane_sent: impl IntoIterator<Item = (Instant, u64)>,
        echoes: impl IntoIterator<Item = (Instant, TwilioMessage)>,
    ) {
        for (at, bytes) in lane_sent {
            self.handle_input(at, Input::AudioLaneSent { bytes });
        }
        for (at, echo) in echoes {
            self.handle_input(at, Input::Twilio(echo));
        }
    }
}
