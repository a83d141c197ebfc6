//! SIP calls (Realtime over SIP) driven over OpenAI's sideband WebSocket: the same call core,
//! agent machinery and events as a Media Streams call, with no Twilio stream and no audio
//! lane. The facts cited (brief §…) are in the vendored `spec/realtime-sip.md`.
//!
//! Audio flows between Twilio's SIP trunk and OpenAI directly; after the webhook accepted the
//! call ([`crate::server::sip`]), [`Session::start_sideband`] connects
//! `wss://…/v1/realtime?call_id={call_id}` with `Authorization: Bearer` (brief §5.1) and runs
//! the call on it: the agent's `session.update` on connect, the greeting, tools (in parallel,
//! with timeouts and approvals), handoffs (session updates without audio formats), output
//! guardrails (an interrupt is `response.cancel` + `output_audio_buffer.clear`, §5.4),
//! history, DTMF ([`SessionEvent::Dtmf`] from `input_audio_buffer.dtmf_event_received`,
//! §5.3). "Playing" follows `output_audio_buffer.started` / `.stopped` / `.cleared`.
//!
//! A call the core closes is ended through OpenAI's call-control API (brief §4, §5.5): a
//! transfer ([`CloseReason::Transferred`]) becomes a REST `refer` to the transfer's configured
//! destination (never a value from the SIP headers, which are the caller's words), anything
//! else a REST `hangup`; both only once the agent's last words were played
//! (`output_audio_buffer.stopped`) or the hang-up timeout passed. What they came to is
//! reported as [`SessionEvent::SipRefer`] / [`SessionEvent::SipHangUp`] before
//! [`SessionEvent::Closed`]. A REFER that fails is followed by a hang-up (the caller is not
//! left with nobody driving the call), and a `404` on `hangup` means the call had ended. If
//! `output_audio_buffer.stopped` never comes, the call is ended after
//! [`CallConfig::hang_up_timeout`](crate::call::CallConfig::hang_up_timeout) anyway. Every
//! other end hangs up too, at once: `close()`, a sideband that cannot connect or is lost, a
//! panic; a call the bridge no longer drives is not left running at OpenAI.
//!
//! The sideband closes when the call ends (brief §5.1): the caller hanging up closes it, and
//! the session ends with [`CallError::ModelDisconnected`](crate::CallError::ModelDisconnected). A `session_expired` ends the call
//! with [`CloseReason::SessionExpired`]: the call's session cannot be renewed.
//!
//! ```
//! use std::time::Duration;
//! use twilio_realtime::agent::Agent;
//! use twilio_realtime::events::SessionEvent;
//! use twilio_realtime::server::sip::OpenAiCalls;
//! use twilio_realtime::session::{Session, SessionConfig};
//! use twilio_realtime::sim::fake_model::Reply;
//! use twilio_realtime::sim::sip::{CallerStep, FakeSip, FakeSipConfig};
//!
//! // OpenAI's SIP control plane, faked: the caller asks something, waits, hangs up.
//! let fake = FakeSip::start(FakeSipConfig {
//!     script: vec![Reply::say("It is sunny.", 400)],
//!     caller: vec![
//!         CallerStep::say("What is the weather?", 600),
//!         CallerStep::WaitForAgent { quiet_ms: 500, timeout_ms: 5_000 },
//!         CallerStep::HangUp,
//!     ],
//!     ..Default::default()
//! })?;
//! let rest = OpenAiCalls::new(fake.base_url(), "sk-test", Duration::from_secs(5));
//! // The webhook's call, accepted (the bundled server does both, see `server::sip`).
//! let call = fake.new_call("+14155550100", "+18005550199");
//! rest.accept(&call.call_id, &serde_json::json!({"type": "realtime", "model": "gpt-realtime"}))?;
//!
//! let agent = Agent::new("Assistant", "You are a friendly phone assistant.");
//! let opts = SessionConfig::new(Some("sk-test".into())).url(fake.realtime_url());
//! let session = Session::start_sideband(&call, rest, agent, opts)?;
//! let mut said = Vec::new();
//! for event in session.events().iter() {
//!     match event {
//!         SessionEvent::AgentEnd { text, .. } => said.push(text),
//!         SessionEvent::Closed { .. } => break,
//!         _ => {}
//!     }
//! }
//! session.join();
//! assert_eq!(said, ["It is sunny."]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::agent::Agent;
use crate::events::{CloseReason, SessionEvent};
use crate::proto::sip::IncomingCall;
use crate::server::sip::{CallsError, OpenAiCalls};
use crate::session::{AgentSource, EndCall, Session, SessionConfig, SessionError};
use crate::telephony::transfer::Destination;

const LOG: &str = "twilio_realtime::sip";

/// The sideband URL of a call: the Realtime endpoint `realtime_url` (e.g.
/// [`DEFAULT_REALTIME_URL`](crate::session::DEFAULT_REALTIME_URL)) with its query replaced by
/// `call_id={call_id}` (percent-encoded). No `model`: the server does not use it for an
/// existing call (brief §5.1).
///
/// ```
/// use twilio_realtime::session::sideband::sideband_url;
/// assert_eq!(
///     sideband_url("wss://api.openai.com/v1/realtime?model=gpt-realtime", "rtc_u1_9c65"),
///     "wss://api.openai.com/v1/realtime?call_id=rtc_u1_9c65"
/// );
/// ```
pub fn sideband_url(realtime_url: &str, call_id: &str) -> String {
    let base = realtime_url
        .split(['?', '#'])
        .next()
        .unwrap_or(realtime_url);
    format!(
        "{base}?call_id={}",
        crate::server::sip::path_segment(call_id)
    )
}

/// The `Refer-To` target of a transfer destination: `tel:+…` for a number (brief §4's
/// `"tel:+14155550123"`), the SIP URI as configured.
///
/// ```
/// use twilio_realtime::session::sideband::refer_target;
/// use twilio_realtime::telephony::transfer::Destination;
/// let desk = Destination::parse("+14155550100").unwrap();
/// assert_eq!(refer_target(&desk), "tel:+14155550100");
/// ```
pub fn refer_target(destination: &Destination) -> String {
    match destination {
        Destination::Number(n) => format!("tel:{n}"),
        Destination::Sip(uri) => uri.clone(),
    }
}

impl Session {
    /// Runs an accepted SIP call over its sideband WebSocket (see [`crate::session::sideband`]):
    /// connects `sideband_url(opts.model.url, call.call_id)` with `opts.model.api_key` as the
    /// bearer, runs `agent` on it with `opts.call` (its `sideband` flag set), and ends the call
    /// through `rest` (`hangup`, or `refer` for a transfer). `agent` should be the agent the
    /// call was accepted with. The call's [`CallInfo`](crate::telephony::call_info::CallInfo)
    /// comes from the webhook ([`crate::server::sip::call_info`]): untrusted SIP headers.
    pub fn start_sideband(
        call: &IncomingCall,
        rest: OpenAiCalls,
        agent: Agent,
        opts: SessionConfig,
    ) -> Result<Session, SessionError> {
        let mut opts = opts;
        opts.call.sideband = true;
        opts.call.connect_model_on_start = false;
        // Twilio's `start` and warm models belong to Media Streams calls.
        opts.start_check = None;
        opts.warm_models = None;
        opts.webhook_fields = None;
        // SIP sidebands speak Realtime, whatever the server's Twilio calls speak.
        opts = opts.model_api(crate::call::ModelApi::Realtime);
        opts.model.url = sideband_url(&opts.model.url, &call.call_id);
        let info = crate::server::sip::call_info(call);
        let end = end_call(call.call_id.clone(), rest);
        Session::launch(None, AgentSource::Ready(agent), opts, Some(end), Some(info))
    }
}

/// REST `refer` for a transfer (then `hangup` if it failed), `hangup` otherwise.
fn end_call(call_id: String, rest: OpenAiCalls) -> EndCall {
    Box::new(move |reason: &CloseReason| {
        let mut events = Vec::with_capacity(2);
        if let CloseReason::Transferred {
            name, destination, ..
        } = reason
        {
            let target_uri = refer_target(destination);
            let result = rest.refer(&call_id, &target_uri).map_err(|e| e.to_string());
            match &result {
                Ok(()) => log::info!(target: LOG, "call {call_id}: transferred to {name} (REFER)"),
                Err(e) => {
                    log::warn!(target: LOG, "call {call_id}: REFER to {name} failed ({e}); hanging up")
                }
            }
            let referred = result.is_ok();
            events.push(SessionEvent::SipRefer { target_uri, result });
            if referred {
                return events;
            }
        }
        let result = match rest.hangup(&call_id) {
            Ok(()) => {
                log::info!(target: LOG, "call {call_id}: hung up ({reason})");
                Ok(())
            }
            Err(CallsError::NotFound) => {
                log::debug!(target: LOG, "call {call_id}: hangup answered 404 (already ended)");
                Ok(())
            }
            Err(e) => {
                log::warn!(target: LOG, "call {call_id}: hangup failed: {e}");
                Err(e.to_string())
            }
        };
        events.push(SessionEvent::SipHangUp { result });
        events
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sideband_url_replaces_the_query_and_encodes_the_call_id() {
        assert_eq!(
            sideband_url("ws://127.0.0.1:9/v1/realtime", "rtc_1"),
            "ws://127.0.0.1:9/v1/realtime?call_id=rtc_1"
        );
        assert_eq!(
            sideband_url("wss://h/v1/realtime?model=m#x", "a&b=c"),
            "wss://h/v1/realtime?call_id=a%26b%3Dc"
        );
    }

    #[test]
    fn sip_destinations_are_referred_as_configured() {
        let pbx = Destination::parse("sip:desk@pbx.example.com;transport=tls").unwrap();
        assert_eq!(refer_target(&pbx), "sip:desk@pbx.example.com;transport=tls");
    }
}
