//! A ready-made bridge server: one port serving Twilio's call webhook (TwiML), a health check
//! and the Media Streams WebSocket, a thread per connection, a session per call.
//!
//! * `POST /incoming-call` answers TwiML: an optional `<Say>` greeting, then
//!   `<Connect action="https://HOST/call-ended"><Stream url="wss://HOST/media-stream">` with
//!   the caller's number as a `<Parameter name="caller">`.
//! * `POST /call-status` takes Twilio's status callbacks (initiated, ringing, in-progress,
//!   completed, busy, no-answer, failed, canceled, with `CallDuration`) and hands each to the
//!   [`Server::on_call_status`] hook as an [`outbound::StatusCallback`]; `204` (`400` without
//!   `CallSid`/`CallStatus`).
//! * `POST /outbound` (with [`ServerConfig::outbound`] and its secret as
//!   `Authorization: Bearer …`) places a call to the form's `To` through Twilio's REST API;
//!   Twilio then requests `/incoming-call` when the callee answers (with `AnsweredBy` under
//!   machine detection) and posts progress to `/call-status`. Answers `200` with
//!   `{"call_sid", "status"}`, `401` for a wrong secret, `404` when outbound calls are not
//!   configured, `502`/`429`/`504` for Twilio's errors, rate limit and timeout.
//! * `POST /call-ended` is the `action` of the webhook's `<Connect>`: Twilio requests it when
//!   the stream has ended while the call is still up. It answers `<Dial><Number>` or
//!   `<Dial><Sip>` for a transfer pending for that CallSid (the model's `transfer_call` or
//!   [`CallControl::transfer`]), `<Hangup/>` otherwise; signed like the webhook. See
//!   [`crate::telephony::transfer`]. With [`ServerConfig::instance`] the action is
//!   `/call-ended/NAME`, so a balancer can send it to the instance holding the transfer.
//! * `POST /openai-webhook` (path configurable; with [`ServerConfig::sip`]) takes OpenAI's
//!   signed `realtime.call.incoming` webhooks for SIP calls and accepts or rejects them over
//!   OpenAI's REST API: see [`sip`].
//! * `GET /healthz` answers `ok` while the process serves (liveness).
//! * `GET /readyz` answers `200 ready`, or `503` while draining ([`Stopper::drain`], SIGTERM
//!   under [`stop_on_signals`]) or at capacity ([`ServerConfig::max_calls`]): what a load
//!   balancer's health check and a Kubernetes readiness probe ask.
//! * `GET /metrics` answers the Prometheus text format ([`crate::metrics`]); with
//!   [`ServerConfig::admin_bind`] these three routes are also served on a separate port.
//! * `GET /media-stream` with a WebSocket upgrade runs a call; without one it is a 400.
//! * With an auth token configured, `X-Twilio-Signature` is checked on the webhook (URL +
//!   sorted form parameters) and on the upgrade (the `wss://` URL from the TwiML, with or
//!   without a trailing slash) and on `/call-status`; a missing or wrong signature gets a 403. URLs are built from
//!   the configured public URL, never from proxy-rewritten headers, when one is set.
//!
//!
//! The agent factory gets each call's [`CallInfo`] (caller, callee, direction, the webhook's
//! fields such as `CallerName` or `AnsweredBy`), so the agent can be chosen and its
//! instructions personalised per caller; a factory that takes no argument (`Arc<Fn() ->
//! Agent>` or a plain `fn() -> Agent`) works as well and is called when the stream connects.
//! The webhook's fields are kept by CallSid (at most 4,096 calls, 8 MiB, 60 s) until the
//! call's stream starts; see [`crate::telephony::call_info`] for what waits for them (only the model
//! session's configuration, never the model handshake).
//!
//! ```no_run
//! use twilio_realtime::agent::Agent;
//! use twilio_realtime::telephony::call_info::CallInfo;
//! use twilio_realtime::server::{Server, ServerConfig};
//!
//! let cfg = ServerConfig::from_env();
//! let server = Server::bind(cfg, |call: &CallInfo| {
//!     let name = call.caller_name().unwrap_or("the caller");
//!     Agent::new("Assistant", format!("Be helpful. You are speaking with {name}."))
//! })
//! .unwrap();
//! println!("listening on {}", server.local_addr());
//! server.run().unwrap();
//! ```

pub mod signature;
pub mod sip;
pub mod token;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use self::token::{StreamTokens, TOKEN_PARAMETER};
use crate::agent::Agent;
use crate::call::CallCore;
use crate::events::{CloseReason, SessionEvent};
use crate::io::http::{self, HttpError, HttpLimits, RequestHead};
use crate::io::ws::{WsConfig, WsConn};
use crate::metrics::{CallMeter, Metrics, CALLS_LOG};
use crate::proto::realtime;
use crate::session::warm::WarmModels;
use crate::session::{
    AgentForCall, AgentSource, CallControl, Session, SessionCloser, SessionConfig, TransportEvents,
};
use crate::telephony::call_info::{CallInfo, WebhookCalls, WebhookForm};
use crate::telephony::outbound::{
    self, MachineDetection, OutboundCall, RestError, StatusCallback, TwilioRest,
};
use crate::telephony::transfer::{self, PendingTransfers, TransferTarget};

const LOG: &str = "twilio_realtime::server";

/// Builds the agent for each new call (see [`IntoAgentFactory`] for what [`Server::bind`]
/// takes).
#[derive(Clone)]
#[non_exhaustive]
pub enum AgentFactory {
    /// Called when a media stream connects, without the call's details; nothing waits for
    /// `start`. With a warm model also at the webhook.
    Fixed(Arc<dyn Fn() -> Agent + Send + Sync>),
    /// Called on the stream's `start` with the call's [`CallInfo`]. With a warm model
    /// ([`crate::session::warm`]) also at the signed webhook, with the webhook's
    /// [`CallInfo::from_webhook`] (no streamSid yet), to configure the model session before
    /// the stream: keep it quick (it runs before the webhook answers). When the agent it
    /// returns on `start` needs another configuration than the webhook's, the call sends
    /// its own.
    PerCall(AgentForCall),
}

impl std::fmt::Debug for AgentFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentFactory::Fixed(_) => "AgentFactory::Fixed",
            AgentFactory::PerCall(_) => "AgentFactory::PerCall",
        })
    }
}

/// What [`Server::bind`] accepts as the agent factory: a closure or function taking the call's
/// `&CallInfo` (the usual form), a `fn() -> Agent`, an `Arc` of a `Fn() -> Agent` (the form
/// before [`CallInfo`] existed), or an [`AgentFactory`]. `Marker` only tells the forms apart;
/// write a closure's argument type out (`|call: &CallInfo| …`).
pub trait IntoAgentFactory<Marker> {
    /// The factory.
    fn into_agent_factory(self) -> AgentFactory;
}

impl<F> IntoAgentFactory<fn(&CallInfo) -> Agent> for F
where
    F: Fn(&CallInfo) -> Agent + Send + Sync + 'static,
{
    fn into_agent_factory(self) -> AgentFactory {
        AgentFactory::PerCall(Arc::new(self))
    }
}

impl<F> IntoAgentFactory<fn() -> Agent> for F
where
    F: Fn() -> Agent + Send + Sync + 'static,
{
    fn into_agent_factory(self) -> AgentFactory {
        AgentFactory::Fixed(Arc::new(self))
    }
}

impl<F> IntoAgentFactory<Arc<dyn Fn() -> Agent>> for Arc<F>
where
    F: Fn() -> Agent + Send + Sync + ?Sized + 'static,
{
    fn into_agent_factory(self) -> AgentFactory {
        AgentFactory::Fixed(Arc::new(move || self()))
    }
}

impl IntoAgentFactory<AgentFactory> for AgentFactory {
    fn into_agent_factory(self) -> AgentFactory {
        self
    }
}

/// How long the webhook's fields wait for their call's stream to start.
const WEBHOOK_FIELDS_TTL: Duration = Duration::from_secs(60);

/// Sees every event of every call (call number, event). Runs on the call's own thread.
pub type EventHook = Arc<dyn Fn(u64, &SessionEvent) + Send + Sync>;

/// Sees every status callback Twilio posts to `/call-status`. Runs on the request's thread
/// (Twilio waits for the answer: keep it short).
pub type StatusHook = Arc<dyn Fn(&StatusCallback) + Send + Sync>;

/// Outbound calls through Twilio's REST API (the `POST /outbound` route).
#[derive(Clone)]
#[non_exhaustive]
pub struct OutboundConfig {
    /// The REST client (account, credentials, API base, timeout).
    pub rest: TwilioRest,
    /// The caller id calls are placed from (one of the account's numbers).
    pub from: String,
    /// The bearer secret `POST /outbound` requires; without one the route answers 404.
    pub secret: Option<String>,
    /// Answering-machine detection for every call placed. Default off.
    pub machine_detection: Option<MachineDetection>,
}

impl OutboundConfig {
    /// Calls placed through `rest` from the number `from`; no `/outbound` secret (the route
    /// answers 404) and no machine detection until set.
    pub fn new(rest: TwilioRest, from: impl Into<String>) -> OutboundConfig {
        OutboundConfig {
            rest,
            from: from.into(),
            secret: None,
            machine_detection: None,
        }
    }
}

impl std::fmt::Debug for OutboundConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundConfig")
            .field("rest", &self.rest)
            .field("from", &self.from)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("machine_detection", &self.machine_detection)
            .finish()
    }
}

/// What a [`CallHandler`] returns for a call: it sees each of the call's events in order
/// (`Closed` last), on the call's own thread.
pub type CallEvents = Box<dyn FnMut(&SessionEvent) + Send>;

/// The application's per-call handler under the bundled server ([`Server::on_call`]): told
/// of each call as its media stream connects, with a [`CallControl`] that acts on the call
/// from any thread (approve or reject tool calls, `send_message`, `interrupt`, `hang_up`,
/// `transfer`, …), and returning what sees the call's events. A closure
/// `Fn(u64, CallControl) -> CallEvents` is one.
///
/// The handler and what it returns are application code: a panic in either ends that call
/// ([`crate::CallError::Panicked`]), never the server.
pub trait CallHandler: Send + Sync + 'static {
    /// Call number `call_no` (counting from 1) connected.
    fn on_call(&self, call_no: u64, control: CallControl) -> CallEvents;
}

impl<F> CallHandler for F
where
    F: Fn(u64, CallControl) -> CallEvents + Send + Sync + 'static,
{
    fn on_call(&self, call_no: u64, control: CallControl) -> CallEvents {
        self(call_no, control)
    }
}

/// How long a decided transfer waits for Twilio's request to `/call-ended` (it comes as soon as
/// the stream has closed).
const PENDING_TRANSFER_TTL: Duration = Duration::from_secs(120);
/// Most transfers waiting for `/call-ended` at once.
const MAX_PENDING_TRANSFERS: usize = 10_000;

/// Settings of the bridge server.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:5050`.
    pub bind: SocketAddr,
    /// The public `https://` origin Twilio reaches (e.g. a tunnel's URL). Used for the TwiML
    /// stream URL and for signature checks; without it the request's `Host` is used.
    pub public_url: Option<String>,
    /// Twilio auth token: when set, signatures are required on the webhook and the upgrade.
    pub twilio_auth_token: Option<String>,
    /// Said to the caller (`<Say>`) before the stream connects.
    pub greeting: Option<String>,
    /// Session settings for every call (model URL and key, call options).
    pub session: SessionConfig,
    /// Socket settings for the Twilio side.
    pub twilio_ws: WsConfig,
    /// How long a client may take to send its request (head and webhook body), counted from
    /// the moment the connection was accepted, not per read: a client that dribbles a byte
    /// every few seconds is closed with a 408 when it is up. Default 10 s.
    pub header_timeout: Duration,
    /// Most connections open at once (live calls included). Beyond it a new connection gets
    /// `503 Service Unavailable` at once and is closed; connections already open, live calls
    /// among them, are not touched. Default 2,000 (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// On stop, how long live calls may go on before they are closed. Default 30 s.
    pub shutdown_grace: Duration,
    /// Largest webhook body accepted. Default 64 KiB.
    pub max_body: usize,
    /// One-time stream tokens: the webhook mints one per call (bound to its CallSid, valid for
    /// this long) and the stream must present it on `start` before a model connection is
    /// opened. `None` turns them off. Default: off; [`ServerConfig::from_env`] turns them on
    /// (30 s) when `TWILIO_AUTH_TOKEN` is set, unless `STREAM_TOKENS=off`.
    pub stream_token_ttl: Option<Duration>,
    /// With stream tokens on: most model connections opened at signed webhooks and not yet
    /// claimed by their stream (a warm model, see [`crate::session::warm`]); beyond it a call
    /// connects when its stream starts. `0` turns the warm model off. Default 100
    /// (`WARM_MODEL_POOL`).
    pub warm_model_pool: usize,
    /// Outbound calls (`POST /outbound`). Default: none; [`ServerConfig::from_env`] sets it
    /// when `TWILIO_ACCOUNT_SID`, credentials and `TWILIO_FROM_NUMBER` are set.
    pub outbound: Option<OutboundConfig>,
    /// SIP calls through OpenAI (`POST /openai-webhook`, see [`sip`]). Default: none;
    /// [`ServerConfig::from_env`] sets it when `OPENAI_WEBHOOK_SECRET` is set.
    pub sip: Option<sip::SipConfig>,
    /// Most calls at once: live calls plus answered webhooks whose stream has not started
    /// yet. At the limit the webhook answers [`ServerConfig::at_capacity`]'s TwiML, `/readyz`
    /// answers 503, and a stream that arrives anyway is closed with WebSocket code 1013 (try
    /// again later) before any model connection opens. Default: none (`MAX_CALLS`).
    pub max_calls: Option<usize>,
    /// What the webhook answers at capacity. Default [`AtCapacity::Say`] with a short
    /// apology, then `<Hangup/>` (`AT_CAPACITY=reject` for `<Reject reason="busy"/>`).
    pub at_capacity: AtCapacity,
    /// After [`Stopper::drain`] (SIGTERM), the longest the server waits for its live calls
    /// and answered webhooks before it stops as [`Stopper::stop`] does. Default 1 hour
    /// (`DRAIN_TIMEOUT_SECS`; the deployment's termination grace period should be longer).
    pub drain_timeout: Duration,
    /// Puts the caller's number into each call's summary line ([`crate::metrics::CALLS_LOG`]).
    /// Default off (`LOG_CALLER_NUMBER`).
    pub log_caller_number: bool,
    /// A second address serving only `/healthz`, `/readyz` and `/metrics` (e.g. a port the
    /// public ingress does not route). Default: none (`ADMIN_PORT`, on `BIND_ADDR`).
    pub admin_bind: Option<SocketAddr>,
    /// This instance's name behind a load balancer: the webhook's TwiML then points the
    /// stream at `wss://HOST/media-stream/NAME`, so the balancer can route each call's stream
    /// to the instance that answered its webhook (which holds its one-time stream token, its
    /// webhook fields and its place under [`ServerConfig::max_calls`]). The `<Connect
    /// action>` names it too (`https://HOST/call-ended/NAME`): a transfer the call decides is
    /// held by this instance until Twilio requests the action. Streams and the action are
    /// served on `/media-stream/ANY` and `/call-ended/ANY` whatever the name. Default: none
    /// (`INSTANCE_ID`).
    pub instance: Option<String>,
}

/// What the webhook answers when [`ServerConfig::max_calls`] calls are in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AtCapacity {
    /// `<Say>` this, then `<Hangup/>`: the caller hears why.
    Say(String),
    /// `<Reject reason="busy"/>`: the caller hears a busy signal; the call is not answered
    /// (not billed as answered).
    Reject,
}

/// What the caller hears at capacity by default.
pub const AT_CAPACITY_SAY: &str =
    "Sorry, all our lines are busy right now. Please call again in a few minutes.";

impl AtCapacity {
    /// The TwiML for a call refused at capacity.
    pub fn twiml(&self) -> String {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n");
        match self {
            AtCapacity::Say(text) => {
                x.push_str(&format!("  <Say>{}</Say>\n  <Hangup/>\n", xml_escape(text)));
            }
            AtCapacity::Reject => x.push_str("  <Reject reason=\"busy\"/>\n"),
        }
        x.push_str("</Response>\n");
        x
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line, even through `{:?}`.
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("public_url", &self.public_url)
            .field(
                "twilio_auth_token",
                &self.twilio_auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("greeting", &self.greeting)
            .field("session", &self.session)
            .field("twilio_ws", &self.twilio_ws)
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("max_body", &self.max_body)
            .field("stream_token_ttl", &self.stream_token_ttl)
            .field("warm_model_pool", &self.warm_model_pool)
            .field("outbound", &self.outbound)
            .field("sip", &self.sip)
            .field("max_calls", &self.max_calls)
            .field("at_capacity", &self.at_capacity)
            .field("drain_timeout", &self.drain_timeout)
            .field("log_caller_number", &self.log_caller_number)
            .field("admin_bind", &self.admin_bind)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Default for ServerConfig {
    /// [`ServerConfig::new`].
    fn default() -> ServerConfig {
        ServerConfig::new()
    }
}

impl ServerConfig {
    /// Settings that read no environment variable: listen on `127.0.0.1:5050`, no public URL,
    /// no auth token (so no signature checks and no stream tokens), no greeting,
    /// [`SessionConfig::new`] without an API key, Twilio messages over 64 KiB skipped
    /// (`session.max_twilio_message`) and over 1 MiB ending the call with close code 1009
    /// (`twilio_ws.max_message_size`), 10 s for a request head, 2000 open connections, 30 s shutdown grace, 64 KiB webhook
    /// bodies.
    pub fn new() -> ServerConfig {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 5050)),
            public_url: None,
            twilio_auth_token: None,
            greeting: None,
            session: SessionConfig::new(None),
            // The hard cap (1 MiB, WsConfig's default) ends a call with 1009; messages over
            // `session.max_twilio_message` (64 KiB) are skipped and the call goes on.
            twilio_ws: WsConfig::default(),
            header_timeout: Duration::from_secs(10),
            max_connections: 2000,
            shutdown_grace: Duration::from_secs(30),
            max_body: 64 * 1024,
            stream_token_ttl: None,
            warm_model_pool: 100,
            outbound: None,
            sip: None,
            max_calls: None,
            at_capacity: AtCapacity::Say(AT_CAPACITY_SAY.into()),
            drain_timeout: Duration::from_secs(3600),
            log_caller_number: false,
            admin_bind: None,
            instance: None,
        }
    }

    /// [`ServerConfig::new`] overridden from the environment: `PORT` (5050), `BIND_ADDR`
    /// (127.0.0.1), `OPENAI_API_KEY`, `MODEL_API` (`realtime`, the default, or `live` for
    /// GPT-Live on Twilio calls), `OPENAI_REALTIME_URL` (default
    /// [`DEFAULT_REALTIME_URL`](crate::session::DEFAULT_REALTIME_URL)), `OPENAI_LIVE_URL`
    /// (with `MODEL_API=live`; default [`crate::proto::live::DEFAULT_URL`]), `PUBLIC_URL`,
    /// `TWILIO_AUTH_TOKEN` (also turns one-time stream tokens on, 30 s), `GREETING`,
    /// `STREAM_TOKENS` (`off` disables one-time stream tokens), `MAX_CONNECTIONS` (2000),
    /// `WARM_MODEL_POOL` (100; `0` turns the warm model off),
    /// `AGENT_GREETING` (the instruction for the agent's first response: the agent speaks
    /// first; unset, it waits for the caller). Empty values count as unset.
    ///
    /// Outbound calls ([`ServerConfig::outbound`]) are on when `TWILIO_ACCOUNT_SID`,
    /// credentials (`TWILIO_API_KEY` with `TWILIO_API_SECRET`, else `TWILIO_AUTH_TOKEN`) and
    /// `TWILIO_FROM_NUMBER` are set; `TWILIO_API_BASE` (default
    /// [`outbound::DEFAULT_API_BASE`]), `OUTBOUND_SECRET` (the bearer secret of
    /// `POST /outbound`; without it the route answers 404) and `OUTBOUND_MACHINE_DETECTION`
    /// (`Enable` or `DetectMessageEnd`; default off) go with them.
    ///
    /// SIP calls through OpenAI ([`ServerConfig::sip`]) are on when `OPENAI_WEBHOOK_SECRET`
    /// (the webhook's `whsec_…` signing secret) is set, with `OPENAI_BASE_URL` (the REST base,
    /// default [`sip::DEFAULT_OPENAI_BASE`]), `OPENAI_WEBHOOK_PATH` (default
    /// [`sip::DEFAULT_WEBHOOK_PATH`]), `SIP_MODEL` (default
    /// [`DEFAULT_SIP_MODEL`](crate::proto::sip::DEFAULT_SIP_MODEL)) and `SIP_MAX_CALLS` (100).
    /// Operations: `MAX_CALLS` (no limit), `AT_CAPACITY` (`reject` for a busy signal, else
    /// the text said before hanging up; default [`AT_CAPACITY_SAY`]), `DRAIN_TIMEOUT_SECS`
    /// (3600), `LOG_CALLER_NUMBER` (`1`/`true`/`on`), `ADMIN_PORT` (none), `INSTANCE_ID`
    /// (none; letters, digits, `-`, `_`).
    ///
    /// This is the only place the library reads the environment, and only when called.
    pub fn from_env() -> ServerConfig {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let port: u16 = env("PORT").and_then(|p| p.parse().ok()).unwrap_or(5050);
        let ip = env("BIND_ADDR")
            .and_then(|a| a.parse().ok())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let twilio_auth_token = env("TWILIO_AUTH_TOKEN");
        let tokens_off = env("STREAM_TOKENS").is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "0" | "off" | "false" | "no"
            )
        });
        let credentials = match (env("TWILIO_API_KEY"), env("TWILIO_API_SECRET")) {
            (Some(sid), Some(secret)) => Some(outbound::Credentials::ApiKey { sid, secret }),
            _ => twilio_auth_token
                .clone()
                .map(outbound::Credentials::AuthToken),
        };
        let outbound = match (
            env("TWILIO_ACCOUNT_SID"),
            credentials,
            env("TWILIO_FROM_NUMBER"),
        ) {
            (Some(account), Some(credentials), Some(from)) => Some(OutboundConfig {
                rest: TwilioRest::with_options(
                    env("TWILIO_API_BASE").unwrap_or_else(|| outbound::DEFAULT_API_BASE.into()),
                    account,
                    credentials,
                    Duration::from_secs(10),
                ),
                from,
                secret: env("OUTBOUND_SECRET"),
                machine_detection: env("OUTBOUND_MACHINE_DETECTION").and_then(|v| {
                    match v.to_ascii_lowercase().as_str() {
                        "enable" | "on" | "true" | "1" => Some(MachineDetection::Enable),
                        "detectmessageend" => Some(MachineDetection::DetectMessageEnd),
                        _ => None,
                    }
                }),
            }),
            _ => None,
        };
        let mut session = SessionConfig::new(env("OPENAI_API_KEY"));
        match env("MODEL_API").map(|v| v.to_ascii_lowercase()).as_deref() {
            Some("live") => {
                use crate::call::{live::LiveConfig, ModelApi};
                if let Some(url) = env("OPENAI_REALTIME_URL") {
                    session.model.url = url; // kept for SIP calls' sidebands
                }
                session = session.model_api(ModelApi::Live(LiveConfig::default()));
                if let Some(url) = env("OPENAI_LIVE_URL") {
                    session.model.url = url;
                }
            }
            other => {
                if let Some(v) = other.filter(|v| *v != "realtime") {
                    log::error!(target: LOG, "MODEL_API={v:?} is neither realtime nor live: using realtime");
                }
                if let Some(url) = env("OPENAI_REALTIME_URL") {
                    session.model.url = url;
                }
            }
        }
        session.call.greeting = env("AGENT_GREETING").map(crate::call::Greeting::Instructions);
        let sip = env("OPENAI_WEBHOOK_SECRET").and_then(|secret| {
            let secret = match crate::proto::sip::WebhookSecret::new(&secret) {
                Ok(s) => s,
                Err(e) => {
                    log::error!(target: LOG, "OPENAI_WEBHOOK_SECRET unusable ({e}): SIP calls are off");
                    return None;
                }
            };
            let rest = sip::OpenAiCalls::new(
                env("OPENAI_BASE_URL").unwrap_or_else(|| sip::DEFAULT_OPENAI_BASE.into()),
                session.model.api_key.clone().unwrap_or_default(),
                Duration::from_secs(5),
            );
            let mut c = sip::SipConfig::new(secret, rest);
            if let Some(p) = env("OPENAI_WEBHOOK_PATH") {
                c.path = p;
            }
            if let Some(m) = env("SIP_MODEL") {
                c.model = m;
            }
            if let Some(n) = env("SIP_MAX_CALLS").and_then(|n| n.parse().ok()) {
                c.max_calls = n;
            }
            Some(c)
        });
        ServerConfig {
            bind: SocketAddr::new(ip, port),
            public_url: env("PUBLIC_URL"),
            stream_token_ttl: (twilio_auth_token.is_some() && !tokens_off)
                .then_some(Duration::from_secs(30)),
            twilio_auth_token,
            greeting: env("GREETING"),
            session,
            max_connections: env("MAX_CONNECTIONS")
                .and_then(|n| n.parse().ok())
                .unwrap_or(2000),
            outbound,
            sip,
            max_calls: env("MAX_CALLS").and_then(|n| n.parse().ok()),
            at_capacity: match env("AT_CAPACITY") {
                Some(v) if v.eq_ignore_ascii_case("reject") => AtCapacity::Reject,
                Some(v) => AtCapacity::Say(v),
                None => AtCapacity::Say(AT_CAPACITY_SAY.into()),
            },
            drain_timeout: env("DRAIN_TIMEOUT_SECS")
                .and_then(|n| n.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(3600)),
            log_caller_number: env("LOG_CALLER_NUMBER").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "true" | "yes")
            }),
            admin_bind: env("ADMIN_PORT")
                .and_then(|p| p.parse::<u16>().ok())
                .map(|p| SocketAddr::new(ip, p)),
            instance: env("INSTANCE_ID").filter(|i| {
                let ok = i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    log::error!(target: LOG, "INSTANCE_ID must be letters, digits, - or _: ignored");
                }
                ok
            }),
            warm_model_pool: env("WARM_MODEL_POOL")
                .and_then(|n| n.parse().ok())
                .unwrap_or(100),
            ..ServerConfig::new()
        }
    }
}

/// Counters of a server run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Calls (media streams) started.
    pub calls: u64,
    /// Requests refused for a missing or wrong signature.
    pub forbidden: u64,
    /// Connections refused with a 503 because `max_connections` were open.
    pub busy: u64,
    /// Failed `accept(2)` calls (e.g. out of file descriptors); the accept loop backs off.
    pub accept_errors: u64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    live_calls: AtomicUsize,
    connections: AtomicU64,
    calls: AtomicU64,
    forbidden: AtomicU64,
    busy: AtomicU64,
    accept_errors: AtomicU64,
    open_connections: AtomicUsize,
    /// Live calls: their number and a closer (each call's meter watches its queued bytes).
    sessions: Mutex<Vec<(u64, SessionCloser)>>,
    /// Signal iterators to close when the server stops (see [`stop_on_signals`]).
    signals: Mutex<Vec<signal_hook::iterator::Handle>>,
    /// Draining: not ready, stops once no call is live or pending.
    draining: AtomicBool,
    /// Answered webhooks whose stream has not started: CallSid → when answered.
    pending: Mutex<HashMap<String, Instant>>,
    metrics: Arc<Metrics>,
}

/// How long an answered webhook counts as a call on its way (Twilio opens the stream within
/// a second or two; one that never comes stops counting after this).
const PENDING_STREAM_TTL: Duration = Duration::from_secs(30);
/// Most answered webhooks remembered at once.
const MAX_PENDING: usize = 4096;

impl Shared {
    /// Answered webhooks still waiting for their stream (expired ones forgotten).
    fn pending_calls(&self, now: Instant) -> usize {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|_, t| now.saturating_duration_since(*t) < PENDING_STREAM_TTL);
        p.len()
    }

    fn stream_arrived(&self, call_sid: &str) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(call_sid);
    }

    /// Why the server takes no new call now, if it does not.
    fn not_ready(&self, max_calls: Option<usize>) -> Option<&'static str> {
        if self.stop.load(Ordering::SeqCst) || self.draining.load(Ordering::SeqCst) {
            return Some("draining");
        }
        let max = max_calls?;
        let busy = self.live_calls.load(Ordering::SeqCst) + self.pending_calls(Instant::now());
        (busy >= max).then_some("at capacity")
    }
}

/// Stops a running [`Server`] from any thread.
#[derive(Clone)]
pub struct Stopper {
    shared: Arc<Shared>,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper").field("addr", &self.addr).finish()
    }
}

impl Stopper {
    /// Stops accepting; live calls get the grace period to finish.
    pub fn stop(&self) {
        if !self.shared.stop.swap(true, Ordering::SeqCst) {
            // Wake the blocking accept()s.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            if let Some(admin) = self.admin {
                let _ = TcpStream::connect_timeout(&admin, Duration::from_secs(1));
            }
            if let Ok(handles) = self.shared.signals.lock() {
                for h in handles.iter() {
                    h.close();
                }
            }
        }
    }

    /// Drains: `/readyz` answers 503 at once (the load balancer sends new calls elsewhere),
    /// streams of webhooks already answered are still taken, and the server stops once no
    /// call is live or on its way (or [`ServerConfig::drain_timeout`] passed, then as
    /// [`Stopper::stop`]). What SIGTERM does under [`stop_on_signals`].
    pub fn drain(&self) {
        if self.shared.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        log::info!(target: LOG, "draining: {} live calls, {} on their way",
            self.live_calls(), self.shared.pending_calls(Instant::now()));
        let stopper = self.clone();
        let timeout = self.drain_timeout;
        let spawned = thread::Builder::new()
            .name("drain".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let began = Instant::now();
                let s = &stopper.shared;
                while !s.stop.load(Ordering::SeqCst) {
                    let idle = s.live_calls.load(Ordering::SeqCst) == 0
                        && s.pending_calls(Instant::now()) == 0;
                    if idle || began.elapsed() >= timeout {
                        log::info!(target: LOG, "drained after {:?}{}", began.elapsed(),
                            if idle { "" } else { " (drain timeout)" });
                        stopper.stop();
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            });
        if let Err(e) = spawned {
            log::error!(target: LOG, "could not spawn the drain thread ({e}): stopping now");
            self.stop();
        }
    }

    /// True once [`Stopper::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Connections open now (live calls included).
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// Calls in progress.
    pub fn live_calls(&self) -> usize {
        self.shared.live_calls.load(Ordering::SeqCst)
    }
}

/// The bridge server. See the module docs for its routes.
///
/// A call through the server on 127.0.0.1, with the fake model in place of OpenAI and a
/// simulated Twilio caller (no key, no phone, no network):
///
/// ```
/// use std::sync::Arc;
/// use twilio_realtime::agent::Agent;
/// use twilio_realtime::server::{Server, ServerConfig};
/// use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
/// use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
///
/// let model = FakeModel::start(FakeModelConfig {
///     script: vec![Reply::say("Hello, how can I help?", 400)],
///     ..Default::default()
/// })?;
/// let mut cfg = ServerConfig::new(); // reads no environment variable
/// cfg.bind = "127.0.0.1:0".parse()?;
/// cfg.session = cfg.session.url(model.url());
/// let server = Server::bind(cfg, Arc::new(|| Agent::new("Assistant", "Be brief.")))?;
/// let (addr, stopper) = (server.local_addr(), server.stopper());
/// let running = std::thread::spawn(move || server.run());
///
/// let report = TwilioCall::run(TwilioCallConfig::new(addr, vec![
///     Segment::Speech(600),
///     Segment::WaitForAgent { quiet_ms: 300, timeout_ms: 10_000 },
///     Segment::HangUp,
/// ]))?;
/// assert_eq!(report.played_ms(), 400); // the caller heard the whole answer
///
/// stopper.stop();
/// let stats = running.join().unwrap()?;
/// assert_eq!(stats.calls, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    cfg: Arc<ServerConfig>,
    agent: AgentFactory,
    hook: Option<EventHook>,
    status_hook: Option<StatusHook>,
    call_handler: Option<Arc<dyn CallHandler>>,
    shared: Arc<Shared>,
    tokens: Option<Arc<StreamTokens>>,
    webhooks: Arc<WebhookCalls>,
    transfers: Arc<PendingTransfers>,
    sip: Option<Arc<sip::SipState>>,
    sip_handler: Option<sip::SipCallHandler>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the listening socket. `agent` builds each call's agent; see [`IntoAgentFactory`].
    pub fn bind<M>(cfg: ServerConfig, agent: impl IntoAgentFactory<M>) -> io::Result<Server> {
        let agent = agent.into_agent_factory();
        let listener = TcpListener::bind(cfg.bind)?;
        let admin = cfg.admin_bind.map(TcpListener::bind).transpose()?;
        let tokens = cfg
            .stream_token_ttl
            .map(|ttl| Arc::new(StreamTokens::new(ttl, 100_000)));
        let mut cfg = cfg;
        if let Some(tokens) = &tokens {
            cfg.session.start_check = Some(tokens.clone().start_check());
            if let (Some(ttl), true) = (cfg.stream_token_ttl, cfg.warm_model_pool > 0) {
                // Only with tokens: the webhook is signed (strangers cannot open model
                // sessions) and the stream proves which call it is before it claims one.
                cfg.session.warm_models = Some(WarmModels::start(ttl, cfg.warm_model_pool)?);
            }
        }
        let webhooks = Arc::new(WebhookCalls::new(WEBHOOK_FIELDS_TTL, 4096, 8 << 20));
        let directory = webhooks.clone();
        let shared = Arc::new(Shared::default());
        let arrived = shared.clone();
        cfg.session.webhook_fields = Some(Arc::new(move |call_sid: &str| {
            // The stream's `start`: the call is live now, no longer on its way.
            arrived.stream_arrived(call_sid);
            directory.take(call_sid)
        }));
        // A transfer is remembered by CallSid before the stream closes, for Twilio's request
        // to `/call-ended` that follows the close.
        let transfers = Arc::new(PendingTransfers::new(
            PENDING_TRANSFER_TTL,
            MAX_PENDING_TRANSFERS,
        ));
        let pending = transfers.clone();
        let app_hook = cfg.session.on_ending.take();
        cfg.session.on_ending = Some(Arc::new(
            move |call_sid: Option<&str>, reason: &CloseReason| {
                if let (
                    Some(sid),
                    CloseReason::Transferred {
                        name, destination, ..
                    },
                ) = (call_sid, reason)
                {
                    pending.insert(
                        Instant::now(),
                        sid,
                        TransferTarget {
                            name: name.clone(),
                            destination: destination.clone(),
                            description: String::new(),
                        },
                    );
                }
                if let Some(h) = &app_hook {
                    h(call_sid, reason);
                }
            },
        ));
        let sip = cfg.sip.clone().map(sip::SipState::new);
        Ok(Server {
            sip,
            sip_handler: None,
            listener,
            admin,
            cfg: Arc::new(cfg),
            agent,
            hook: None,
            status_hook: None,
            call_handler: None,
            shared,
            tokens,
            webhooks,
            transfers,
        })
    }

    /// Sees every event of every call.
    pub fn on_event(mut self, hook: EventHook) -> Server {
        self.hook = Some(hook);
        self
    }

    /// Gives the application each call as it connects, with a [`CallControl`] to act on it
    /// from any thread, and its events (see [`CallHandler`]). With [`Server::on_event`] too,
    /// the event hook sees each event first.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use twilio_realtime::agent::Agent;
    /// use twilio_realtime::events::SessionEvent;
    /// use twilio_realtime::server::{CallEvents, Server, ServerConfig};
    /// use twilio_realtime::session::CallControl;
    ///
    /// let server = Server::bind(ServerConfig::from_env(), Arc::new(|| Agent::new("A", "Be brief.")))?
    ///     .on_call(|_call_no: u64, control: CallControl| -> CallEvents {
    ///         Box::new(move |event: &SessionEvent| {
    ///             if let SessionEvent::ToolApprovalRequested { call_id, .. } = event {
    ///                 control.approve(call_id.clone()); // or ask a person, on another thread
    ///             }
    ///         })
    ///     });
    /// server.run()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_call(mut self, handler: impl CallHandler) -> Server {
        self.call_handler = Some(Arc::new(handler));
        self
    }

    /// Runs each SIP call the webhook accepted (see [`sip::SipCallHandler`]), on its own
    /// thread once the webhook has been answered, instead of the default: the call's sideband
    /// session with the server's agent ([`crate::session::Session::start_sideband`]).
    pub fn on_sip_call(mut self, handler: sip::SipCallHandler) -> Server {
        self.sip_handler = Some(handler);
        self
    }

    /// Sees every status callback posted to `/call-status`.
    pub fn on_call_status(mut self, hook: StatusHook) -> Server {
        self.status_hook = Some(hook);
        self
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.cfg.bind)
    }

    /// A handle that stops the server.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shared: self.shared.clone(),
            addr: self.local_addr(),
            admin: self.admin.as_ref().and_then(|l| l.local_addr().ok()),
            drain_timeout: self.cfg.drain_timeout,
        }
    }

    /// The server's metrics (what `GET /metrics` answers); mount them in an application's
    /// own registry with [`Metrics::register_into`].
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The bound admin address ([`ServerConfig::admin_bind`]), if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until stopped, then waits (up to the grace period) for live calls to end and
    /// closes the rest.
    pub fn run(self) -> io::Result<ServerStats> {
        let addr = self.local_addr();
        log::info!(target: LOG, "listening on {addr}");
        let admin = match self
            .admin
            .as_ref()
            .map(TcpListener::try_clone)
            .transpose()?
        {
            Some(l) => {
                let (shared, cfg) = (self.shared.clone(), self.cfg.clone());
                Some(
                    thread::Builder::new()
                        .name("admin".into())
                        .stack_size(128 * 1024)
                        .spawn(move || serve_admin(l, shared, cfg))?,
                )
            }
            None => None,
        };
        let mut backoff = Backoff::default();
        for stream in self.listener.incoming() {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(s) => {
                    backoff.reset();
                    s
                }
                Err(e) => {
                    self.shared.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(pause) = backoff.on_error(&e) {
                        thread::sleep(pause);
                    }
                    continue;
                }
            };
            let accepted = Instant::now();
            self.shared.connections.fetch_add(1, Ordering::Relaxed);
            let open = self.shared.open_connections.fetch_add(1, Ordering::SeqCst);
            let slot = ConnSlot(self.shared.clone());
            if open >= self.cfg.max_connections {
                self.shared.busy.fetch_add(1, Ordering::Relaxed);
                busy(stream, self.cfg.max_connections);
                drop(slot);
                continue;
            }
            let ctx = ConnCtx {
                cfg: self.cfg.clone(),
                agent: self.agent.clone(),
                hook: self.hook.clone(),
                status_hook: self.status_hook.clone(),
                call_handler: self.call_handler.clone(),
                transfers: self.transfers.clone(),
                shared: self.shared.clone(),
                tokens: self.tokens.clone(),
                webhooks: self.webhooks.clone(),
                sip: self.sip.clone(),
                sip_handler: self.sip_handler.clone(),
            };
            let spawned = thread::Builder::new()
                .name("conn".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    let _slot = slot;
                    ctx.serve(stream, accepted)
                });
            if let Err(e) = spawned {
                log::error!(target: LOG, "could not spawn a connection thread: {e}");
            }
        }
        log::info!(target: LOG, "stopped accepting; {} live calls", self.shared.live_calls.load(Ordering::SeqCst));
        // A grace past what an Instant holds (Duration::MAX) means: wait for every call.
        let deadline = Instant::now().checked_add(self.cfg.shutdown_grace);
        while self.shared.live_calls.load(Ordering::SeqCst) > 0
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            thread::sleep(Duration::from_millis(20));
        }
        if self.shared.live_calls.load(Ordering::SeqCst) > 0 {
            log::warn!(target: LOG, "grace period over; closing live calls");
            if let Ok(s) = self.shared.sessions.lock() {
                for (_, closer) in s.iter() {
                    closer.close();
                }
            }
            let hard = Instant::now() + Duration::from_secs(5);
            while self.shared.live_calls.load(Ordering::SeqCst) > 0 && Instant::now() < hard {
                thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(a) = admin {
            let _ = a.join();
        }
        Ok(ServerStats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            calls: self.shared.calls.load(Ordering::Relaxed),
            forbidden: self.shared.forbidden.load(Ordering::Relaxed),
            busy: self.shared.busy.load(Ordering::Relaxed),
            accept_errors: self.shared.accept_errors.load(Ordering::Relaxed),
        })
    }
}

/// Counts an open connection; dropped when its thread ends (or if it never started).
struct ConnSlot(Arc<Shared>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers a connection over the cap from the accept thread: a 503 fits in the socket's send
/// buffer, and the short write timeout bounds the rare case where it does not.
fn busy(mut stream: TcpStream, max: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    log::debug!(target: LOG, "{max} connections open: new connection refused with 503");
    if let Err(e) = http::write_response(
        &mut stream,
        503,
        "text/plain",
        &[("Retry-After", "1")],
        b"too many connections\n",
    ) {
        log::debug!(target: LOG, "503 not written: {e}");
    }
}

/// How long the accept loop waits after a failed `accept(2)`.
///
/// Running out of descriptors (`EMFILE`, `ENFILE`) or kernel memory (`ENOBUFS`, `ENOMEM`)
/// leaves the pending connection in the backlog, so accepting again at once fails again at
/// once: a spinning thread. Those errors pause the loop, 10 ms doubling up to 1 s while they
/// last; a success resets the pause. Other errors (a client that reset before we accepted)
/// are about one connection only and do not pause. One warning per run of errors.
#[derive(Debug, Default)]
struct Backoff {
    pause: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn reset(&mut self) {
        if self.pause.take().is_some() {
            log::info!(target: LOG, "accepting connections again");
        }
    }

    fn on_error(&mut self, e: &io::Error) -> Option<Duration> {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !exhausted {
            log::debug!(target: LOG, "accept failed: {e}");
            return (e.kind() == io::ErrorKind::WouldBlock).then_some(Self::FIRST);
        }
        let pause = match self.pause {
            None => {
                log::warn!(target: LOG, "accept failed: {e}; backing off until it works again");
                Self::FIRST
            }
            Some(p) => p.saturating_mul(2).min(Self::MAX),
        };
        self.pause = Some(pause);
        Some(pause)
    }
}

struct ConnCtx {
    cfg: Arc<ServerConfig>,
    agent: AgentFactory,
    hook: Option<EventHook>,
    status_hook: Option<StatusHook>,
    shared: Arc<Shared>,
    tokens: Option<Arc<StreamTokens>>,
    webhooks: Arc<WebhookCalls>,
    call_handler: Option<Arc<dyn CallHandler>>,
    transfers: Arc<PendingTransfers>,
    sip: Option<Arc<sip::SipState>>,
    sip_handler: Option<sip::SipCallHandler>,
}

fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &str) {
    if let Err(e) = http::write_response(stream, status, ctype, &[], body.as_bytes()) {
        log::debug!(target: LOG, "response not written: {e}");
    }
    let _ = stream.flush();
}

impl ConnCtx {
    fn serve(self, mut stream: TcpStream, accepted: Instant) {
        let _ = stream.set_nodelay(true);
        // Responses are small; a client that does not read them is not waited for long.
        let _ = stream.set_write_timeout(Some(self.cfg.header_timeout));
        let deadline = accepted + self.cfg.header_timeout;
        let limits = HttpLimits::default();
        let read = http::read_head(&mut http::ReadBy::new(&stream, deadline), &limits);
        let (head, leftover) = match read {
            Ok(x) => x,
            Err(HttpError::Timeout) => {
                log::debug!(target: LOG, "request head timed out");
                respond(&mut stream, 408, "text/plain", "request timeout\n");
                return;
            }
            Err(e @ HttpError::HeadTooLarge { .. }) => {
                log::debug!(target: LOG, "bad request: {e}");
                respond(
                    &mut stream,
                    431,
                    "text/plain",
                    "request header fields too large\n",
                );
                return;
            }
            Err(e) => {
                log::debug!(target: LOG, "bad request: {e}");
                respond(&mut stream, 400, "text/plain", "bad request\n");
                return;
            }
        };
        if let Some(state) = self.sip.clone() {
            if head.path() == state.cfg.path {
                if head.method == "POST" {
                    self.openai_webhook(&state, stream, &head, leftover, deadline);
                } else {
                    respond(&mut stream, 405, "text/plain", "method not allowed\n");
                }
                return;
            }
        }
        match (head.method.as_str(), head.path()) {
            ("POST", "/incoming-call") => self.incoming_call(stream, &head, leftover, deadline),
            (_, "/incoming-call") => {
                respond(&mut stream, 405, "text/plain", "method not allowed\n")
            }
            ("POST", "/call-status") => self.call_status(stream, &head, leftover, deadline),
            (_, "/call-status") => respond(&mut stream, 405, "text/plain", "method not allowed\n"),
            ("POST", "/outbound") => self.outbound(stream, &head, leftover, deadline),
            (_, "/outbound") => respond(&mut stream, 405, "text/plain", "method not allowed\n"),
            // `/call-ended/NAME` with an instance name, like the stream's path.
            ("POST", p) if p == "/call-ended" || p.starts_with("/call-ended/") => {
                self.call_ended(stream, &head, leftover, deadline)
            }
            (_, p) if p == "/call-ended" || p.starts_with("/call-ended/") => {
                respond(&mut stream, 405, "text/plain", "method not allowed\n")
            }
            (_, "/healthz" | "/readyz" | "/metrics") => {
                ops_route(&self.shared, &self.cfg, &mut stream, &head)
            }
            ("GET", p) if p == "/media-stream" || p.starts_with("/media-stream/") => {
                if !head.is_websocket_upgrade() {
                    respond(
                        &mut stream,
                        400,
                        "text/plain",
                        "expected a WebSocket upgrade\n",
                    );
                    return;
                }
                self.media_stream(stream, &head, leftover);
            }
            (_, "/media-stream") => respond(&mut stream, 405, "text/plain", "method not allowed\n"),
            _ => respond(&mut stream, 404, "text/plain", "not found\n"),
        }
    }

    /// The public origin (`https://host`) for URLs Twilio used.
    fn origin(&self, head: &RequestHead) -> Option<String> {
        public_origin(self.cfg.public_url.as_deref(), head)
    }

    fn forbidden(&self, stream: &mut TcpStream, what: &str) {
        self.shared.forbidden.fetch_add(1, Ordering::Relaxed);
        log::warn!(target: LOG, "rejected {what}: missing or invalid X-Twilio-Signature");
        respond(stream, 403, "text/plain", "forbidden\n");
    }

    /// Reads a form body; answers 408/400 itself and returns `None` when it cannot.
    fn read_form(
        &self,
        stream: &mut TcpStream,
        head: &RequestHead,
        leftover: Vec<u8>,
        deadline: Instant,
    ) -> Option<Vec<(String, String)>> {
        let mut by = http::ReadBy::new(stream, deadline);
        match http::read_body(&mut by, head, leftover, self.cfg.max_body) {
            Ok(b) => Some(http::parse_form(&b)),
            Err(HttpError::Timeout) => {
                log::debug!(target: LOG, "request body timed out");
                respond(stream, 408, "text/plain", "request timeout\n");
                None
            }
            Err(e) => {
                log::debug!(target: LOG, "request body unreadable: {e}");
                respond(stream, 400, "text/plain", "bad request\n");
                None
            }
        }
    }

    /// With an auth token configured: true if the request carries Twilio's signature of its
    /// URL and form; else answers 403 and returns false. True without a token.
    fn signed(
        &self,
        stream: &mut TcpStream,
        head: &RequestHead,
        form: &[(String, String)],
        what: &str,
    ) -> bool {
        let Some(token) = &self.cfg.twilio_auth_token else {
            return true;
        };
        let ok = self
            .origin(head)
            .is_some_and(|origin| signature::verify_webhook(token, &origin, head, form).is_ok());
        if !ok {
            self.forbidden(stream, what);
        }
        ok
    }

    fn incoming_call(
        &self,
        mut stream: TcpStream,
        head: &RequestHead,
        leftover: Vec<u8>,
        deadline: Instant,
    ) {
        let Some(form) = self.read_form(&mut stream, head, leftover, deadline) else {
            return;
        };
        if !self.signed(&mut stream, head, &form, "webhook") {
            return;
        }
        let Some(origin) = self.origin(head) else {
            respond(
                &mut stream,
                400,
                "text/plain",
                "no Host header and no PUBLIC_URL\n",
            );
            return;
        };
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        if !self.take_pending(field("CallSid")) {
            self.shared.metrics.call_refused("webhook");
            log::warn!(target: LOG, "incoming call refused: {} calls in progress or on their way",
                self.cfg.max_calls.unwrap_or(0));
            respond(&mut stream, 200, "text/xml", &self.cfg.at_capacity.twiml());
            return;
        }
        // Kept for the call's `CallInfo` until its stream starts (signature checked above).
        let webhook_form = WebhookForm::from_pairs(form.iter().cloned());
        self.webhooks.insert(field("CallSid"), webhook_form.clone());
        let mut params = vec![("caller", field("From").to_owned())];
        if let Some(tokens) = &self.tokens {
            match tokens.issue(field("CallSid")) {
                Ok(t) => params.push((TOKEN_PARAMETER, t)),
                Err(e) => {
                    log::error!(target: LOG, "could not mint a stream token: {e}");
                    respond(&mut stream, 500, "text/plain", "internal error\n");
                    return;
                }
            }
        }
        if let Some(warm) = &self.cfg.session.warm_models {
            // The model handshake and the session's configuration run while Twilio fetches
            // this TwiML and opens the stream.
            let config = self.webhook_session_config(webhook_form, &params);
            warm.open(field("CallSid"), &self.cfg.session.model, config);
        }
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut url = stream_url(&origin);
        let mut action = format!("{origin}/call-ended");
        if let Some(name) = &self.cfg.instance {
            url = format!("{url}/{name}");
            // The transfer the call may decide is held here too: Twilio's request to the
            // action must come back to this instance.
            action = format!("{action}/{name}");
        }
        let twiml = connect_twiml(&url, Some(&action), self.cfg.greeting.as_deref(), &params);
        log::info!(target: LOG, "incoming call webhook answered");
        respond(&mut stream, 200, "text/xml", &twiml);
    }

    /// The first model session configuration of the call a signed webhook announces: its
    /// agent, built from what the webhook knows ([`CallInfo::from_webhook`], with the TwiML's
    /// `<Parameter>`s but the stream token). `None` when the factory panicked (the stream's
    /// `start` runs it again and ends that call).
    fn webhook_session_config(
        &self,
        form: WebhookForm,
        params: &[(&str, String)],
    ) -> Option<realtime::SessionSettings> {
        if self.cfg.session.call.model_api.is_live() {
            // GPT-Live starts with the call's own `session.start`, sent on connect: a warm
            // connection is only opened, never configured with Realtime's update.
            return None;
        }
        let custom = params
            .iter()
            .filter(|(k, _)| *k != TOKEN_PARAMETER)
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let info = CallInfo::from_webhook(form, custom);
        let agent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &self.agent {
            AgentFactory::Fixed(f) => f(),
            AgentFactory::PerCall(f) => f(&info),
        }));
        match agent {
            Ok(agent) => Some(CallCore::first_session_config(
                &agent,
                &self.cfg.session.call,
            )),
            Err(_) => {
                log::error!(target: LOG, "the agent factory panicked at the webhook");
                None
            }
        }
    }

    /// Counts an answered webhook as a call on its way, unless that makes more than
    /// `max_calls` (then false). Check and insert under one lock, so concurrent webhooks
    /// cannot both take the last place.
    fn take_pending(&self, call_sid: &str) -> bool {
        let now = Instant::now();
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.retain(|_, t| now.saturating_duration_since(*t) < PENDING_STREAM_TTL);
        if let Some(max) = self.cfg.max_calls {
            if self.shared.live_calls.load(Ordering::SeqCst) + p.len() >= max {
                return false;
            }
        }
        if p.len() < MAX_PENDING && !call_sid.is_empty() {
            p.insert(call_sid.to_owned(), now);
        }
        true
    }

    fn call_status(
        &self,
        mut stream: TcpStream,
        head: &RequestHead,
        leftover: Vec<u8>,
        deadline: Instant,
    ) {
        let Some(form) = self.read_form(&mut stream, head, leftover, deadline) else {
            return;
        };
        if !self.signed(&mut stream, head, &form, "status callback") {
            return;
        }
        let Some(status) = StatusCallback::from_form(WebhookForm::from_pairs(form)) else {
            log::debug!(target: LOG, "status callback without CallSid or CallStatus");
            respond(
                &mut stream,
                400,
                "text/plain",
                "CallSid and CallStatus required\n",
            );
            return;
        };
        log::info!(
            target: LOG,
            "call {} is {}{}",
            status.call_sid,
            status.status.as_str(),
            status
                .duration
                .map(|d| format!(" after {} s", d.as_secs()))
                .unwrap_or_default()
        );
        if let Some(hook) = &self.status_hook {
            // The application's code: a panic there fails this request only.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&status)));
            if run.is_err() {
                log::error!(target: LOG, "the status hook panicked");
                respond(&mut stream, 500, "text/plain", "internal error\n");
                return;
            }
        }
        if let Err(e) = http::write_response(&mut stream, 204, "text/plain", &[], b"") {
            log::debug!(target: LOG, "response not written: {e}");
        }
    }

    fn outbound(
        &self,
        mut stream: TcpStream,
        head: &RequestHead,
        leftover: Vec<u8>,
        deadline: Instant,
    ) {
        let Some(cfg) = self.cfg.outbound.as_ref() else {
            respond(
                &mut stream,
                404,
                "text/plain",
                "outbound calls are not configured\n",
            );
            return;
        };
        let Some(secret) = cfg.secret.as_deref() else {
            respond(
                &mut stream,
                404,
                "text/plain",
                "outbound calls are not configured\n",
            );
            return;
        };
        let presented = head
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|p| secret_matches(secret, p)) {
            self.shared.forbidden.fetch_add(1, Ordering::Relaxed);
            log::warn!(target: LOG, "rejected /outbound: missing or wrong bearer secret");
            respond(&mut stream, 401, "text/plain", "unauthorized\n");
            return;
        }
        let Some(form) = self.read_form(&mut stream, head, leftover, deadline) else {
            return;
        };
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        let Some(to) = field("To") else {
            respond(&mut stream, 400, "text/plain", "To is required\n");
            return;
        };
        let Some(origin) = self.cfg.public_url.as_deref() else {
            respond(
                &mut stream,
                500,
                "text/plain",
                "PUBLIC_URL is required for outbound calls (Twilio must reach this server)\n",
            );
            return;
        };
        let from = field("From").unwrap_or(&cfg.from);
        let mut call = OutboundCall::to_bridge(origin, to, from);
        call.machine_detection = cfg.machine_detection;
        match cfg.rest.place_call(&call) {
            Ok(placed) => {
                let body = serde_json::json!({"call_sid": placed.sid, "status": placed.status});
                if let Err(e) = http::write_response(
                    &mut stream,
                    200,
                    "application/json",
                    &[],
                    body.to_string().as_bytes(),
                ) {
                    log::debug!(target: LOG, "response not written: {e}");
                }
            }
            Err(e) => {
                let (status, retry) = match &e {
                    RestError::RateLimited { retry_after, .. } => {
                        (429, retry_after.map(|d| d.as_secs().to_string()))
                    }
                    RestError::Timeout => (504, None),
                    _ => (502, None),
                };
                let code = match &e {
                    RestError::Unauthorized(b)
                    | RestError::Rejected { error: b, .. }
                    | RestError::RateLimited { error: b, .. }
                    | RestError::Server { error: b, .. } => b.code,
                    _ => None,
                };
                let body = serde_json::json!({"error": e.to_string(), "twilio_code": code});
                let extra: Vec<(&str, &str)> = retry
                    .as_deref()
                    .map(|r| vec![("Retry-After", r)])
                    .unwrap_or_default();
                if let Err(e) = http::write_response(
                    &mut stream,
                    status,
                    "application/json",
                    &extra,
                    body.to_string().as_bytes(),
                ) {
                    log::debug!(target: LOG, "response not written: {e}");
                }
            }
        }
    }

    /// Twilio's request to the `<Connect action>` URL once the stream has ended: dial the
    /// transfer pending for the CallSid, or hang up.
    fn call_ended(
        &self,
        mut stream: TcpStream,
        head: &RequestHead,
        leftover: Vec<u8>,
        deadline: Instant,
    ) {
        let Some(form) = self.read_form(&mut stream, head, leftover, deadline) else {
            return;
        };
        if !self.signed(&mut stream, head, &form, "call-ended request") {
            return;
        }
        let call_sid = form
            .iter()
            .find(|(k, _)| k == "CallSid")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let twiml = match self.transfers.take(Instant::now(), call_sid) {
            Some(t) => {
                log::info!(target: LOG, "stream ended: dialling the transfer to {}", t.name);
                transfer::dial_twiml(&t.destination)
            }
            None => {
                log::debug!(target: LOG, "stream ended with no transfer pending: hanging up");
                transfer::hangup_twiml()
            }
        };
        respond(&mut stream, 200, "text/xml", &twiml);
    }

    fn media_stream(self, stream: TcpStream, head: &RequestHead, leftover: Vec<u8>) {
        let mut stream = stream;
        if let Some(token) = &self.cfg.twilio_auth_token {
            let ok = self
                .origin(head)
                .is_some_and(|origin| signature::verify_upgrade(token, &origin, head).is_ok());
            if !ok {
                self.forbidden(&mut stream, "media stream upgrade");
                return;
            }
        }
        let _ = stream.set_read_timeout(None);
        let conn = match WsConn::accept_upgrade(stream, head, leftover, &self.cfg.twilio_ws) {
            Ok(c) => c,
            Err(e) => {
                log::warn!(target: LOG, "media stream upgrade failed: {e}");
                return;
            }
        };
        let live = self.shared.live_calls.fetch_add(1, Ordering::SeqCst);
        if self.cfg.max_calls.is_some_and(|max| live >= max) {
            self.shared.live_calls.fetch_sub(1, Ordering::SeqCst);
            self.shared.metrics.call_refused("stream");
            log::warn!(target: LOG, "media stream refused: {live} calls in progress");
            refuse_stream(conn);
            return;
        }
        let call_no = self.shared.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let _guard = LiveGuard(self.shared.clone(), call_no);
        log::info!(target: LOG, "call {call_no}: media stream connected");
        let agent = match &self.agent {
            AgentFactory::Fixed(f) => AgentSource::Ready(f()),
            AgentFactory::PerCall(f) => AgentSource::PerCall(f.clone()),
        };
        let began = Instant::now();
        let handle = match Session::start(conn, agent, self.call_options()) {
            Ok(h) => h,
            Err(e) => {
                log::error!(target: LOG, "call {call_no}: session did not start: {e}");
                return;
            }
        };
        // GPT-Live's model is in `session.start`, not the URL.
        let model = match &self.cfg.session.call.model_api {
            crate::call::ModelApi::Live(live) => Some(live.model.clone()),
            _ => crate::metrics::model_of_url(&self.cfg.session.model.url),
        };
        self.run_call(call_no, handle, began, model);
    }

    /// The session options of a call on this server.
    fn call_options(&self) -> SessionConfig {
        let mut opts = self.cfg.session.clone();
        if self.hook.is_none() && self.call_handler.is_none() {
            // Nobody looks at the raw messages: do not copy each one into an event.
            opts.transport_events = TransportEvents::None;
        }
        opts
    }

    /// Runs a started call to its end on this thread: the application's handler and event
    /// hook, metrics, the summary line (Media Streams and SIP calls alike).
    fn run_call(&self, call_no: u64, handle: Session, began: Instant, model: Option<String>) {
        let metrics = self.shared.metrics.clone();
        let mut meter = metrics.start_call(began);
        meter.stats_mut().model = model;
        meter.watch_queues(handle.queue_gauge());
        if let Ok(mut s) = self.shared.sessions.lock() {
            s.push((call_no, handle.closer()));
        }
        let mut on_events = None;
        if let Some(h) = &self.call_handler {
            let control = handle.control();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                h.on_call(call_no, control)
            })) {
                Ok(f) => on_events = Some(f),
                Err(p) => {
                    let why = crate::io::ws::panic_text(p.as_ref());
                    log::error!(target: LOG, "call {call_no}: call handler panicked: {why}");
                    handle.end_after_panic(format!("call handler: {why}"));
                }
            }
        }
        self.pump(call_no, &handle, on_events, &mut meter);
        let stats = meter.finish(&handle);
        log::info!(target: CALLS_LOG, "{}", stats.summary_json(self.cfg.log_caller_number));
        handle.join();
    }

    fn pump(
        &self,
        call_no: u64,
        handle: &Session,
        mut on_events: Option<CallEvents>,
        meter: &mut CallMeter<'_>,
    ) {
        let mut hook_panicked = false;
        let mut handler_panicked = false;
        while let Some(ev) = handle.events().recv() {
            meter.observe(&ev);
            if let Some(h) = &self.hook {
                // The hook is application code: a panic in it ends this call
                // (`CallError::Panicked`), never the server; the hook still
                // sees the rest of the call's events, `Closed` included.
                let ran =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(call_no, &ev)));
                if let Err(p) = ran {
                    let why = crate::io::ws::panic_text(p.as_ref());
                    if !hook_panicked {
                        hook_panicked = true;
                        log::error!(target: LOG, "call {call_no}: event hook panicked: {why}");
                        handle.end_after_panic(format!("event hook: {why}"));
                    } else {
                        log::debug!(target: LOG, "call {call_no}: event hook panicked again: {why}");
                    }
                }
            }
            if let Some(f) = &mut on_events {
                // The per-call handler's closure: the same rule as the hook.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ev)));
                if let Err(p) = ran {
                    let why = crate::io::ws::panic_text(p.as_ref());
                    if !handler_panicked {
                        handler_panicked = true;
                        log::error!(target: LOG, "call {call_no}: call handler panicked: {why}");
                        handle.end_after_panic(format!("call handler: {why}"));
                    }
                }
            }
            if let SessionEvent::Closed { reason } = &ev {
                log::info!(target: LOG, "call {call_no}: ended ({reason})");
                return;
            }
        }
    }
}

struct LiveGuard(Arc<Shared>, u64);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.sessions.lock() {
            s.retain(|(n, _)| *n != self.1);
        }
        if self.0.live_calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The last call just ended: hand the heap pages the calls freed back to the OS,
            // so an idle server's RSS returns to its baseline after a burst.
            crate::io::sys::release_free_memory();
        }
    }
}

/// SIGTERM drains the server ([`Stopper::drain`]: not ready, live calls and calls whose
/// webhook was answered go on, then it stops); SIGINT (Ctrl-C), or a second signal, stops it
/// ([`Stopper::stop`]: it stops accepting and lets live calls finish within the grace period).
/// The signals are caught with `signal-hook`; a thread sleeps until one arrives (no polling)
/// and exits when the server stops.
pub fn stop_on_signals(stopper: Stopper) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    if let Ok(mut handles) = stopper.shared.signals.lock() {
        handles.push(signals.handle());
    }
    if stopper.shared.stop.load(Ordering::SeqCst) {
        signals.handle().close();
    }
    thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // Ends with a stopping signal, or with none once `stop` closed the iterator.
            for sig in signals.forever() {
                if sig == SIGTERM && !stopper.is_draining() {
                    log::info!(target: LOG, "SIGTERM: draining");
                    stopper.drain();
                    continue;
                }
                log::info!(target: LOG, "termination signal {sig}: stopping");
                stopper.stop();
                break;
            }
        })?;
    Ok(())
}

/// `/healthz`, `/readyz` and `/metrics`, on the main port and the admin port.
fn ops_route(shared: &Shared, cfg: &ServerConfig, stream: &mut TcpStream, head: &RequestHead) {
    if head.method != "GET" {
        respond(stream, 405, "text/plain", "method not allowed\n");
        return;
    }
    match head.path() {
        "/healthz" => respond(stream, 200, "text/plain", "ok\n"),
        "/readyz" => match shared.not_ready(cfg.max_calls) {
            None => respond(stream, 200, "text/plain", "ready\n"),
            Some(why) => respond(stream, 503, "text/plain", &format!("{why}\n")),
        },
        "/metrics" => {
            let m = &shared.metrics;
            m.set_pending_webhooks(shared.pending_calls(Instant::now()));
            m.set_ready(shared.not_ready(cfg.max_calls).is_none());
            respond(stream, 200, crate::metrics::CONTENT_TYPE, &m.encode());
        }
        _ => respond(stream, 404, "text/plain", "not found\n"),
    }
}

/// The admin port's accept loop: one short request per connection, answered on this thread
/// (probes and scrapes are small and rare); ends when the server stops.
fn serve_admin(listener: TcpListener, shared: Arc<Shared>, cfg: Arc<ServerConfig>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let deadline = Instant::now() + Duration::from_secs(2);
        match http::read_head(
            &mut http::ReadBy::new(&stream, deadline),
            &HttpLimits::default(),
        ) {
            Ok((head, _)) => match head.path() {
                "/healthz" | "/readyz" | "/metrics" => ops_route(&shared, &cfg, &mut stream, &head),
                _ => respond(&mut stream, 404, "text/plain", "not found\n"),
            },
            Err(_) => respond(&mut stream, 400, "text/plain", "bad request\n"),
        }
    }
}

/// Closes a stream that arrived at capacity: WebSocket close 1013 (try again later), what
/// the peer sends until it answers the close is read and dropped.
fn refuse_stream(conn: WsConn) {
    let (duplex, rx) = match conn.spawn_channel("refused") {
        Ok(x) => x,
        Err(e) => {
            log::debug!(target: LOG, "refused stream not closed cleanly: {e}");
            return;
        }
    };
    duplex.sender().close_with(1013, "at capacity");
    let until = Instant::now() + Duration::from_secs(5);
    while let Ok(inc) = rx.recv_deadline(until) {
        if matches!(
            inc,
            crate::io::ws::Incoming::Closed(_) | crate::io::ws::Incoming::Error(_)
        ) {
            break;
        }
    }
    duplex.sender().abort();
    duplex.join();
}

/// Compares a presented secret with the configured one in constant time (HMAC tags of both
/// under one key, compared by `hmac`'s constant-time verify).
fn secret_matches(expected: &str, presented: &str) -> bool {
    use hmac::{Hmac, KeyInit, Mac};
    type H = Hmac<sha1::Sha1>;
    let tag = |s: &str| {
        let mut m = <H as KeyInit>::new_from_slice(b"twilio-realtime outbound secret")
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(s.as_bytes());
        m
    };
    let want = tag(expected).finalize().into_bytes();
    tag(presented).verify_slice(&want).is_ok()
}

/// The public origin (`https://host`) of the URLs Twilio requested: `public_url` (the
/// configured public URL, e.g. `PUBLIC_URL`) when there is one, else `https://` and the
/// request's `Host` header (which a proxy may rewrite: configure a public URL behind one).
/// What the server signs and checks URLs against; for an application that serves Twilio's
/// requests itself, the `origin` of [`signature::verify_webhook`] and
/// [`signature::verify_upgrade`].
///
/// ```
/// use twilio_realtime::io::http::RequestHead;
/// use twilio_realtime::server::public_origin;
///
/// let head = RequestHead::new("POST", "/incoming-call", [("Host", "example.com")]);
/// assert_eq!(public_origin(None, &head).as_deref(), Some("https://example.com"));
/// let configured = public_origin(Some("https://calls.example.org/"), &head);
/// assert_eq!(configured.as_deref(), Some("https://calls.example.org"));
/// ```
pub fn public_origin(public_url: Option<&str>, head: &RequestHead) -> Option<String> {
    if let Some(u) = public_url {
        return Some(u.trim_end_matches('/').to_owned());
    }
    head.header("host").map(|h| format!("https://{h}"))
}

/// `wss://host` for a public `https://` (or `http://`) origin.
fn wss_origin(origin: &str) -> String {
    let origin = origin.trim_end_matches('/');
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .or_else(|| origin.strip_prefix("wss://"))
        .or_else(|| origin.strip_prefix("ws://"))
        .unwrap_or(origin);
    format!("wss://{host}")
}

/// The `wss://…/media-stream` URL for a public `https://` (or `http://`) origin.
pub fn stream_url(origin: &str) -> String {
    format!("{}/media-stream", wss_origin(origin))
}

/// TwiML that connects the call to `stream_url`, after an optional greeting, passing
/// `params` as `<Parameter>`s (they arrive in `start`'s `customParameters`).
///
/// ```
/// let x = twilio_realtime::server::twiml("wss://h/media-stream", None, &[("caller", "+1555")]);
/// assert!(x.contains(r#"<Parameter name="caller" value="+1555"/>"#));
/// ```
pub fn twiml(stream_url: &str, greeting: Option<&str>, params: &[(&str, &str)]) -> String {
    connect_twiml(stream_url, None, greeting, params)
}

/// [`twiml`] with `<Connect action="…">`: Twilio requests `action` when the stream ends while
/// the call is up, and runs the TwiML it answers (the server's `/call-ended`).
///
/// ```
/// let x = twilio_realtime::server::connect_twiml(
///     "wss://h/media-stream", Some("https://h/call-ended"), None, &[]);
/// assert!(x.contains(r#"<Connect action="https://h/call-ended">"#));
/// ```
pub fn connect_twiml(
    stream_url: &str,
    action: Option<&str>,
    greeting: Option<&str>,
    params: &[(&str, &str)],
) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n");
    if let Some(g) = greeting {
        x.push_str(&format!("  <Say>{}</Say>\n", xml_escape(g)));
    }
    let action = action
        .map(|a| format!(" action=\"{}\"", xml_escape(a)))
        .unwrap_or_default();
    x.push_str(&format!(
        "  <Connect{action}>\n    <Stream url=\"{}\">\n",
        xml_escape(stream_url)
    ));
    for (name, value) in params {
        x.push_str(&format!(
            "      <Parameter name=\"{}\" value=\"{}\"/>\n",
            xml_escape(name),
            xml_escape(value)
        ));
    }
    x.push_str("    </Stream>\n  </Connect>\n</Response>\n");
    x
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_secrets_stay_out_of_debug() {
        let mut cfg = ServerConfig::new();
        cfg.outbound = Some(OutboundConfig {
            rest: TwilioRest::new(
                "AC1",
                outbound::Credentials::ApiKey {
                    sid: "SK1".into(),
                    secret: "api-secret-value".into(),
                },
            ),
            from: "+1555".into(),
            secret: Some("bearer-secret-value".into()),
            machine_detection: None,
        });
        let d = format!("{cfg:?}");
        assert!(d.contains("SK1") && d.contains("+1555"), "{d}");
        assert!(
            !d.contains("api-secret-value") && !d.contains("bearer-secret-value"),
            "{d}"
        );
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_matches("s3cret", "s3cret"));
        assert!(!secret_matches("s3cret", "s3cre"));
        assert!(!secret_matches("s3cret", "s3cret "));
        assert!(!secret_matches("s3cret", ""));
    }

    #[test]
    fn stream_urls() {
        assert_eq!(
            stream_url("https://abc.ngrok.app/"),
            "wss://abc.ngrok.app/media-stream"
        );
        assert_eq!(
            stream_url("http://localhost:5050"),
            "wss://localhost:5050/media-stream"
        );
    }

    #[test]
    fn twiml_escapes_and_carries_the_caller() {
        let x = twiml(
            "wss://h/media-stream",
            Some("Hi & welcome <3"),
            &[("caller", "+1555\"0100")],
        );
        assert!(x.contains("<Say>Hi &amp; welcome &lt;3</Say>"));
        assert!(x.contains("<Stream url=\"wss://h/media-stream\">"));
        assert!(x.contains("<Parameter name=\"caller\" value=\"+1555&quot;0100\"/>"));
        let x = twiml("wss://h/media-stream", None, &[]);
        assert!(!x.contains("<Say>"));
    }
}
