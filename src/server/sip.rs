//! SIP calls through OpenAI (Realtime over SIP): the `POST /openai-webhook` route of the
//! bundled server and a REST client for OpenAI's call control (`accept`, `reject`, `refer`,
//! `hangup`). The facts cited (brief §…) are in the vendored `spec/realtime-sip.md`.
//!
//! A Twilio Elastic SIP trunk sends the call to `sip.api.openai.com`; OpenAI posts a signed
//! `realtime.call.incoming` webhook; the route verifies it ([`crate::proto::sip::verify`]),
//! ignores a delivery it has already seen (same `webhook-id`, brief §3.3) or a call it already
//! handles (same `call_id`), and then:
//!
//! * at capacity ([`SipConfig::max_calls`] calls under way) it rejects the call with
//!   [`SipConfig::busy_status`] (486 Busy Here by default);
//! * when the application's [`SipConfig::check`] says no, it rejects with the SIP status the
//!   check returned;
//! * otherwise it accepts the call with the agent's configuration
//!   ([`crate::proto::sip::accept_body`]) and runs it over its sideband WebSocket with the
//!   same agent ([`crate::session::sideband`]): the server's [`super::CallHandler`], event
//!   hook and metrics see it as they see a Media Streams call. An application that drives
//!   SIP calls itself sets a [`SipCallHandler`] instead.
//!
//! Like both Agents SDK examples, the route calls `accept` inside the webhook request and
//! answers `200` after it (brief §3.3): a `404` from `accept` means the call is gone or another
//! instance took it and is answered `200` too; any other failure of `accept` is answered
//! `500` (so OpenAI retries the delivery) and the delivery is forgotten so that the retry is
//! handled. A bad or missing signature is answered `400` before anything else happens: no
//! REST call, nothing remembered. Requests time out after [`OpenAiCalls::timeout`] (5 s by
//! default), so the webhook is answered within a few seconds.
//!
//! The SIP headers of the INVITE are the caller's words: they reach the agent factory as the
//! [`CallInfo`]'s `from`/`to`/webhook fields for personalisation only; the route never takes
//! a destination or a decision from them (the check may, at the application's own risk).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::TcpStream;
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::AgentFactory;
use crate::io::http::{self, HttpError, RequestHead};
use crate::proto::sip::{IncomingCall, WebhookSecret};
use crate::telephony::call_info::{CallInfo, Direction, WebhookForm};

const LOG: &str = "twilio_realtime::sip";

/// The default webhook path.
pub const DEFAULT_WEBHOOK_PATH: &str = "/openai-webhook";
/// OpenAI's production REST base (brief §4).
pub const DEFAULT_OPENAI_BASE: &str = "https://api.openai.com/v1";
/// The SIP status a call gets at capacity: 486 Busy Here (brief §4 names it as a reject code).
pub const BUSY_HERE: u16 = 486;

/// Why a call-control request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallsError {
    /// `404`: the call no longer exists (the caller hung up, it expired, or it was already
    /// handled, e.g. accepted by another instance). Not a failure of ours (brief §4.2).
    NotFound,
    /// `401`/`403`: the API key was refused.
    Unauthorized(String),
    /// Another `4xx`: the request was refused (e.g. `400 Unknown parameter`).
    Rejected {
        /// The status.
        status: u16,
        /// OpenAI's error message (or the body).
        message: String,
    },
    /// `429`.
    RateLimited(String),
    /// A `5xx`.
    Server {
        /// The status.
        status: u16,
        /// OpenAI's error message (or the body).
        message: String,
    },
    /// No answer within the client's timeout.
    Timeout,
    /// The request did not get through (DNS, connection, TLS).
    Transport(String),
}

impl fmt::Display for CallsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallsError::NotFound => f.write_str("the call no longer exists (404)"),
            CallsError::Unauthorized(m) => write!(f, "openai refused the API key: {m}"),
            CallsError::Rejected { status, message } => {
                write!(f, "openai refused the request ({status}): {message}")
            }
            CallsError::RateLimited(m) => write!(f, "openai rate limit: {m}"),
            CallsError::Server { status, message } => {
                write!(f, "openai failed ({status}): {message}")
            }
            CallsError::Timeout => f.write_str("openai did not answer in time"),
            CallsError::Transport(e) => write!(f, "could not reach openai: {e}"),
        }
    }
}

impl std::error::Error for CallsError {}

impl CallsError {
    fn from_status(status: u16, body: &str) -> CallsError {
        // OpenAI's error body is `{"error":{"message":…,"type":…,"code":…}}`.
        let message = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        match status {
            404 => CallsError::NotFound,
            401 | 403 => CallsError::Unauthorized(message),
            429 => CallsError::RateLimited(message),
            500..=599 => CallsError::Server { status, message },
            _ => CallsError::Rejected { status, message },
        }
    }
}

/// OpenAI's call-control REST API: `POST {base}/realtime/calls/{call_id}/{verb}` with
/// `Authorization: Bearer <key>` and a JSON body; success is `200` with no body (brief §4).
#[derive(Clone)]
pub struct OpenAiCalls {
    base: String,
    api_key: String,
    timeout: Duration,
    agent: ureq::Agent,
}

impl fmt::Debug for OpenAiCalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCalls")
            .field("base", &self.base)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Everything but ASCII letters, digits, `-`, `_` and `~` is percent-encoded in a call id
/// (a dot too, so that no id is a `..` segment): a call id is one path segment whatever it
/// holds.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

pub(crate) fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

impl OpenAiCalls {
    /// A client for `base` (e.g. [`DEFAULT_OPENAI_BASE`], or a fake's) with this API key and
    /// an overall per-request timeout.
    pub fn new(base: impl Into<String>, api_key: impl Into<String>, timeout: Duration) -> Self {
        let agent = crate::io::rest::agent(timeout);
        OpenAiCalls {
            base: base.into().trim_end_matches('/').to_owned(),
            api_key: api_key.into(),
            timeout,
            agent,
        }
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `{base}/realtime/calls/{call_id}/{verb}`.
    pub fn url(&self, call_id: &str, verb: &str) -> String {
        format!(
            "{}/realtime/calls/{}/{verb}",
            self.base,
            path_segment(call_id)
        )
    }

    fn post(&self, call_id: &str, verb: &str, body: Option<&Value>) -> Result<(), CallsError> {
        let req = self
            .agent
            .post(self.url(call_id, verb))
            .header("Authorization", &format!("Bearer {}", self.api_key))
            .header("Accept", "*/*");
        let sent = match body {
            Some(b) => req
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            None => req.send_empty(),
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) if crate::io::rest::is_timeout(&e) => return Err(CallsError::Timeout),
            Err(e) => return Err(CallsError::Transport(e.to_string())),
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Err(CallsError::from_status(status, &text))
    }

    /// Accepts a ringing call with this session configuration (see
    /// [`crate::proto::sip::accept_body`]).
    pub fn accept(&self, call_id: &str, session: &Value) -> Result<(), CallsError> {
        self.post(call_id, "accept", Some(session))
    }

    /// Declines a ringing call with this SIP status (e.g. 486 Busy Here, 603 Decline).
    pub fn reject(&self, call_id: &str, status_code: u16) -> Result<(), CallsError> {
        self.post(
            call_id,
            "reject",
            Some(&crate::proto::sip::reject_body(status_code)),
        )
    }

    /// Transfers an accepted call with a SIP REFER to `target_uri` (`tel:+1…` or `sip:…`).
    pub fn refer(&self, call_id: &str, target_uri: &str) -> Result<(), CallsError> {
        self.post(
            call_id,
            "refer",
            Some(&crate::proto::sip::refer_body(target_uri)),
        )
    }

    /// Ends a call (no body, brief §4).
    pub fn hangup(&self, call_id: &str) -> Result<(), CallsError> {
        self.post(call_id, "hangup", None)
    }
}

/// The application's decision on a ringing call: `Err(sip_status)` rejects it with that status
/// (e.g. 403, 603). Runs on the webhook's thread, before `accept`: keep it short. The call's SIP
/// headers are untrusted.
pub type SipCheck = Arc<dyn Fn(&IncomingCall) -> Result<(), u16> + Send + Sync>;

/// Settings of the SIP path (`ServerConfig::sip`).
#[derive(Clone)]
#[non_exhaustive]
pub struct SipConfig {
    /// The webhook endpoint's signing secret (`whsec_…`).
    pub secret: WebhookSecret,
    /// The route's path. Default [`DEFAULT_WEBHOOK_PATH`].
    pub path: String,
    /// OpenAI's call-control client (REST base, API key, timeout).
    pub rest: OpenAiCalls,
    /// The model calls are accepted with. Default
    /// [`DEFAULT_SIP_MODEL`](crate::proto::sip::DEFAULT_SIP_MODEL).
    pub model: String,
    /// Most SIP calls under way at once; beyond it calls are rejected with
    /// [`SipConfig::busy_status`]. Default 100.
    pub max_calls: usize,
    /// The SIP status of a call rejected at capacity. Default [`BUSY_HERE`].
    pub busy_status: u16,
    /// The application's check of each ringing call; `None` accepts every call.
    pub check: Option<SipCheck>,
    /// How many `webhook-id`s (and call ids) are remembered to ignore duplicate deliveries;
    /// the oldest are forgotten first. Default 10,000.
    pub remember: usize,
}

impl fmt::Debug for SipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipConfig")
            .field("secret", &self.secret)
            .field("path", &self.path)
            .field("rest", &self.rest)
            .field("model", &self.model)
            .field("max_calls", &self.max_calls)
            .field("busy_status", &self.busy_status)
            .field("check", &self.check.as_ref().map(|_| "<fn>"))
            .field("remember", &self.remember)
            .finish()
    }
}

impl SipConfig {
    /// The defaults above, with this secret and REST client.
    pub fn new(secret: WebhookSecret, rest: OpenAiCalls) -> SipConfig {
        SipConfig {
            secret,
            path: DEFAULT_WEBHOOK_PATH.to_owned(),
            rest,
            model: crate::proto::sip::DEFAULT_SIP_MODEL.to_owned(),
            max_calls: 100,
            busy_status: BUSY_HERE,
            check: None,
            remember: 10_000,
        }
    }
}

/// A bounded set of recently seen keys: inserting past the bound forgets the oldest.
#[derive(Debug)]
pub(crate) struct Recent {
    order: VecDeque<String>,
    set: HashSet<String>,
    cap: usize,
}

impl Recent {
    pub(crate) fn new(cap: usize) -> Recent {
        Recent {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap: cap.max(1),
        }
    }

    /// True if `key` was new (and is now remembered).
    pub(crate) fn insert(&mut self, key: &str) -> bool {
        if self.set.contains(key) {
            return false;
        }
        while self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(key.to_owned());
        self.set.insert(key.to_owned());
        true
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if self.set.remove(key) {
            self.order.retain(|k| k != key);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

/// An accepted SIP call, handed to the [`SipCallHandler`]. It counts toward
/// [`SipConfig::max_calls`] until dropped.
pub struct AcceptedCall {
    /// The call as the webhook announced it.
    pub call: IncomingCall,
    /// The call-control client (for `refer` and `hangup`).
    pub rest: OpenAiCalls,
    /// The agent the call was accepted with.
    pub agent: crate::agent::Agent,
    guard: LiveSip,
}

impl fmt::Debug for AcceptedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptedCall")
            .field("call_id", &self.call.call_id)
            .finish_non_exhaustive()
    }
}

impl AcceptedCall {
    /// The call id.
    pub fn call_id(&self) -> &str {
        &self.call.call_id
    }

    /// Hangs the call up (REST `hangup`); a `404` (already ended) counts as done.
    pub fn hang_up(&self) -> Result<(), CallsError> {
        match self.rest.hangup(&self.call.call_id) {
            Err(CallsError::NotFound) => Ok(()),
            other => other,
        }
    }

    /// True while the call counts toward the capacity (always, until dropped).
    pub fn is_live(&self) -> bool {
        self.guard.0.live_count() > 0
    }
}

/// What runs an accepted call (on its own thread, after the webhook was answered). The
/// default (with no handler set) runs the call over its sideband with the agent it was
/// accepted with ([`crate::session::Session::start_sideband`]); with a handler, the handler
/// decides (it may start the sideband itself, or leave the call to run at OpenAI on the
/// configuration it was accepted with).
pub type SipCallHandler = Arc<dyn Fn(AcceptedCall) + Send + Sync>;

/// Shared state of the route: the deliveries and calls seen, the calls under way.
pub(crate) struct SipState {
    pub(crate) cfg: SipConfig,
    seen: Mutex<(Recent, Recent)>,
    live: Mutex<HashMap<String, Instant>>,
}

impl fmt::Debug for SipState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipState").finish_non_exhaustive()
    }
}

struct LiveSip(Arc<SipState>, String);

impl Drop for LiveSip {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.live.lock() {
            l.remove(&self.1);
        }
    }
}

/// What the route decided about one delivery (for the response and the tests).
#[derive(Debug)]
pub(crate) enum Outcome {
    /// 400: the signature (or headers) did not verify.
    BadSignature(String),
    /// 400: verified, but not a webhook event.
    BadPayload(String),
    /// 200: another event type.
    Ignored(String),
    /// 200: a delivery already seen, or a call already handled.
    Duplicate,
    /// 200: rejected with this SIP status (capacity or the check).
    Rejected(u16),
    /// 200: accept answered 404 (gone or handled elsewhere).
    Gone,
    /// 200: accepted.
    Accepted(Box<AcceptedCall>),
    /// 500: could not build the accept body or accept failed (retry wanted).
    Failed(String),
}

impl SipState {
    pub(crate) fn new(cfg: SipConfig) -> Arc<SipState> {
        let cap = cfg.remember;
        Arc::new(SipState {
            cfg,
            seen: Mutex::new((Recent::new(cap), Recent::new(cap))),
            live: Mutex::new(HashMap::new()),
        })
    }

    fn live_count(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn forget(&self, webhook_id: &str, call_id: &str) {
        if let Ok(mut s) = self.seen.lock() {
            s.0.remove(webhook_id);
            s.1.remove(call_id);
        }
    }

    /// Handles one delivery: `headers` and the raw `body` as received, `now_unix` the wall
    /// clock. `agent` builds the agent for an accepted call; `base` is the session settings
    /// the accept body starts from.
    pub(crate) fn handle(
        self: &Arc<SipState>,
        headers: &[(&str, &str)],
        body: &[u8],
        now_unix: i64,
        agent: impl FnOnce(&IncomingCall) -> crate::agent::Agent,
        base: &crate::proto::realtime::SessionSettings,
    ) -> Outcome {
        use crate::proto::sip::{self, WebhookEvent};
        let verified = match sip::verify(&self.cfg.secret, headers, body, now_unix) {
            Ok(v) => v,
            Err(e) => return Outcome::BadSignature(e.to_string()),
        };
        let call = match WebhookEvent::parse(body) {
            Ok(WebhookEvent::CallIncoming(c)) => c,
            Ok(WebhookEvent::Other { kind, .. }) => return Outcome::Ignored(kind),
            Err(e) => return Outcome::BadPayload(e.to_string()),
        };
        {
            let Ok(mut seen) = self.seen.lock() else {
                return Outcome::Failed("state poisoned".into());
            };
            if !seen.0.insert(&verified.webhook_id) {
                return Outcome::Duplicate;
            }
            // Each call gets one handler (brief §3.3, §8): a second event for it is ignored.
            if !seen.1.insert(&call.call_id) {
                return Outcome::Duplicate;
            }
        }
        let cfg = &self.cfg;
        let id = call.call_id.clone();
        let reject = |status: u16| match cfg.rest.reject(&id, status) {
            Ok(()) | Err(CallsError::NotFound) => Outcome::Rejected(status),
            Err(e) => {
                self.forget(&verified.webhook_id, &id);
                Outcome::Failed(format!("reject: {e}"))
            }
        };
        // Capacity: counted and reserved together, so two webhooks at once cannot both pass.
        {
            let Ok(mut live) = self.live.lock() else {
                return Outcome::Failed("state poisoned".into());
            };
            if live.len() >= cfg.max_calls {
                drop(live);
                log::warn!(target: LOG, "call {id}: at capacity ({}), rejecting", cfg.max_calls);
                return reject(cfg.busy_status);
            }
            live.insert(id.clone(), Instant::now());
        }
        let guard = LiveSip(self.clone(), id.clone());
        if let Some(check) = &cfg.check {
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&call)));
            match verdict {
                Ok(Ok(())) => {}
                Ok(Err(status)) => {
                    log::info!(target: LOG, "call {id}: the application's check refused it ({status})");
                    drop(guard);
                    return reject(status);
                }
                Err(_) => {
                    log::error!(target: LOG, "call {id}: the SIP check panicked; rejecting");
                    drop(guard);
                    return reject(500);
                }
            }
        }
        let agent = agent(&call);
        let body = match sip::accept_body(&agent, base, &cfg.model) {
            Ok(b) => b,
            Err(e) => {
                log::error!(target: LOG, "call {id}: cannot accept: {e}");
                drop(guard);
                return reject(500);
            }
        };
        match cfg.rest.accept(&id, &body) {
            Ok(()) => {
                log::info!(target: LOG, "call {id}: accepted");
                Outcome::Accepted(Box::new(AcceptedCall {
                    call,
                    rest: cfg.rest.clone(),
                    agent,
                    guard,
                }))
            }
            Err(CallsError::NotFound) => {
                log::info!(target: LOG, "call {id}: accept answered 404 (gone or handled elsewhere)");
                Outcome::Gone
            }
            Err(e) => {
                log::warn!(target: LOG, "call {id}: accept failed: {e}");
                drop(guard);
                self.forget(&verified.webhook_id, &id);
                Outcome::Failed(format!("accept: {e}"))
            }
        }
    }
}

/// The call details an agent factory gets for a SIP call: `call_sid` is OpenAI's call id,
/// `from`/`to` the INVITE's `From`/`To` headers and the webhook fields the SIP headers (all
/// untrusted), direction inbound.
pub fn call_info(call: &IncomingCall) -> CallInfo {
    let mut fields: Vec<(String, String)> = Vec::new();
    for h in &call.sip_headers {
        // The first of a repeated header wins, as `IncomingCall::header` reads it.
        if !fields.iter().any(|(k, _)| k.eq_ignore_ascii_case(&h.name)) {
            fields.push((h.name.clone(), h.value.clone()));
        }
    }
    CallInfo {
        call_sid: call.call_id.clone(),
        account_sid: String::new(),
        stream_sid: String::new(),
        from: call.from_header().map(str::to_owned),
        to: call.to_header().map(str::to_owned),
        direction: Some(Direction::Inbound),
        custom_parameters: Default::default(),
        webhook: Some(WebhookForm::from_pairs(fields)),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl super::ConnCtx {
    /// `POST` on the SIP webhook path.
    pub(super) fn openai_webhook(
        &self,
        state: &Arc<SipState>,
        mut stream: TcpStream,
        head: &RequestHead,
        leftover: Vec<u8>,
        deadline: Instant,
    ) {
        let mut by = http::ReadBy::new(&stream, deadline);
        let body = match http::read_body(&mut by, head, leftover, self.cfg.max_body) {
            Ok(b) => b,
            Err(HttpError::Timeout) => {
                super::respond(&mut stream, 408, "text/plain", "request timeout\n");
                return;
            }
            Err(e) => {
                log::debug!(target: LOG, "webhook body unreadable: {e}");
                super::respond(&mut stream, 400, "text/plain", "bad request\n");
                return;
            }
        };
        let headers: Vec<(&str, &str)> = head
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let factory = self.agent.clone();
        let make_agent = move |call: &IncomingCall| match &factory {
            AgentFactory::Fixed(f) => f(),
            AgentFactory::PerCall(f) => f(&call_info(call)),
        };
        let opts = &self.cfg.session.call;
        let mut base = opts.session.clone();
        if base.transcription_setting().is_none() {
            if let Some(t) = &opts.caller_transcription {
                base = base.transcription(t.clone());
            }
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            state.handle(&headers, &body, unix_now(), make_agent, &base)
        }))
        .unwrap_or_else(|_| Outcome::Failed("the agent factory panicked".into()));
        match outcome {
            Outcome::BadSignature(why) => {
                self.shared.forbidden.fetch_add(1, Ordering::Relaxed);
                log::warn!(target: LOG, "webhook refused: {why}");
                super::respond(&mut stream, 400, "text/plain", "invalid signature\n");
            }
            Outcome::BadPayload(why) => {
                log::warn!(target: LOG, "signed webhook is not an event: {why}");
                super::respond(&mut stream, 400, "text/plain", "bad payload\n");
            }
            Outcome::Failed(why) => {
                log::warn!(target: LOG, "webhook not handled ({why}); OpenAI will retry");
                super::respond(&mut stream, 500, "text/plain", "internal error\n");
            }
            Outcome::Ignored(kind) => {
                log::debug!(target: LOG, "webhook {kind} ignored");
                super::respond(&mut stream, 200, "application/json", "{\"ok\":true}");
            }
            Outcome::Rejected(status) => {
                log::info!(target: LOG, "call rejected with SIP {status}");
                super::respond(&mut stream, 200, "application/json", "{\"ok\":true}");
            }
            Outcome::Duplicate | Outcome::Gone => {
                super::respond(&mut stream, 200, "application/json", "{\"ok\":true}");
            }
            Outcome::Accepted(call) => {
                super::respond(&mut stream, 200, "application/json", "{\"ok\":true}");
                drop(stream);
                if let Some(handler) = self.sip_handler.clone() {
                    let id = call.call.call_id.clone();
                    let ran =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(*call)));
                    if ran.is_err() {
                        log::error!(target: LOG, "call {id}: the SIP call handler panicked");
                    }
                } else {
                    self.sideband(*call, &state.cfg.model);
                }
            }
        }
    }

    /// Runs an accepted call over its sideband with the server's agent, handler, event hook
    /// and metrics, as a Media Streams call (the default without [`super::Server::on_sip_call`]).
    /// It counts as a live call, and toward [`SipConfig::max_calls`] until it ends.
    fn sideband(&self, call: AcceptedCall, model: &str) {
        let call_no = self.shared.calls.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.live_calls.fetch_add(1, Ordering::SeqCst);
        let _live = super::LiveGuard(self.shared.clone(), call_no);
        log::info!(target: LOG, "call {call_no}: SIP call {} accepted; opening its sideband", call.call_id());
        let began = Instant::now();
        let opts = self.call_options();
        match crate::session::Session::start_sideband(
            &call.call,
            call.rest.clone(),
            call.agent.clone(),
            opts,
        ) {
            Ok(handle) => self.run_call(call_no, handle, began, Some(model.to_owned())),
            Err(e) => {
                log::error!(target: LOG, "call {call_no}: sideband session did not start ({e}); hanging up");
                if let Err(e) = call.hang_up() {
                    log::warn!(target: LOG, "call {call_no}: hangup failed: {e}");
                }
            }
        }
        // The call's place under `max_calls` is released here, once it has ended.
        drop(call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_is_bounded_and_forgets_the_oldest() {
        let mut r = Recent::new(3);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert("b"));
        assert!(r.insert("c"));
        assert!(r.insert("d"));
        assert_eq!(r.len(), 3);
        assert!(r.insert("a"), "the oldest was forgotten");
        r.remove("c");
        assert!(r.insert("c"));
    }

    #[test]
    fn call_ids_are_one_path_segment() {
        let c = OpenAiCalls::new("http://x/v1/", "k", Duration::from_secs(1));
        assert_eq!(
            c.url("rtc_u1_abc", "accept"),
            "http://x/v1/realtime/calls/rtc_u1_abc/accept"
        );
        assert_eq!(
            c.url("../../x?y", "hangup"),
            "http://x/v1/realtime/calls/%2E%2E%2F%2E%2E%2Fx%3Fy/hangup"
        );
    }
}
