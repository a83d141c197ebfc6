//! Prometheus metrics and per-call statistics, for the bundled server and for applications
//! that run sessions themselves.
//!
//! * [`CallStats`] is one call's summary: fed the call's [`SessionEvent`]s
//!   ([`CallStats::observe`]) and, at the end, the session's own counters
//!   ([`CallStats::finish`] with [`Session::call_stats`](crate::session::Session::call_stats)). Its
//!   [`summary_json`](CallStats::summary_json) is the one line per call the server logs at
//!   target [`CALLS_LOG`].
//! * [`Metrics`] holds the process's metrics in a `prometheus-client` [`Registry`]: live
//!   events as they happen ([`Metrics::observe`]: barge-ins, tool calls, dropped events, bad
//!   input), a call's traffic and latencies once it ends ([`Metrics::call_ended`]), and gauges
//!   of live calls (among them the bytes they hold queued toward their peers, summed when
//!   scraped from the [`QueueGauge`] of each call a [`CallMeter`] watches,
//!   [`CallMeter::watch_queues`]). [`Metrics::encode`] writes the Prometheus text format (what
//!   `GET /metrics` answers); [`Metrics::register_into`] mounts the same metrics in an
//!   application's own registry.
//!
//! Nothing here is touched per audio frame: traffic is counted by the session (a relaxed
//! atomic add per frame, which it does anyway) and published when the call ends. Labels never
//! carry phone numbers, CallSids or other caller data: only close reasons, tool names (at most
//! [`MAX_TOOL_LABELS`] distinct ones, then `other`), outcomes, directions, peers and fixed
//! kinds of bad input.
//!
//! Without the server, an application publishes its own calls:
//!
//! ```
//! use std::time::Instant;
//! use twilio_realtime::events::{CloseReason, SessionEvent};
//! use twilio_realtime::metrics::{CallStats, Metrics};
//!
//! let metrics = Metrics::new();
//! let mut stats = CallStats::new(Instant::now());
//! let events = [SessionEvent::Closed { reason: CloseReason::TwilioStopped }];
//! metrics.call_started();
//! for event in &events {
//!     // In a real loop: `for event in session.events().iter()`.
//!     let now = Instant::now();
//!     metrics.observe(&mut stats, now, event);
//! }
//! // With a session: `stats.finish(now, &session.call_stats())`.
//! metrics.call_ended(&stats);
//! let text = metrics.encode();
//! assert!(text.contains("twilio_realtime_calls_total{reason=\"twilio_stopped\"} 1"));
//! assert!(text.contains("twilio_realtime_calls_active 0"));
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::events::{CallError, CloseReason, InterruptCause, SessionEvent};
use crate::session::{QueueGauge, Session, SessionStats};

/// The log target of the one summary line per call (`RUST_LOG=twilio_realtime::calls=info`).
pub const CALLS_LOG: &str = "twilio_realtime::calls";

/// Most distinct tool names used as label values; further names count as `other`.
pub const MAX_TOOL_LABELS: usize = 64;

/// The `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// A stable, short name for a close reason, for labels and the summary line (no free text:
/// the reason's details can carry peer data).
pub fn close_reason_label(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::TwilioStopped => "twilio_stopped",
        CloseReason::Closed => "closed",
        CloseReason::AgentHungUp => "agent_hung_up",
        CloseReason::HungUp => "hung_up",
        CloseReason::Transferred { .. } => "transferred",
        CloseReason::SessionExpired => "session_expired",
        CloseReason::Error(e) if e.is_model_connect() => "model_connect_failed",
        CloseReason::Error(e) => match e {
            CallError::TwilioGone { .. } => "twilio_disconnected",
            CallError::ModelDisconnected { .. } | CallError::ModelUnresponsive { .. } => {
                "model_disconnected"
            }
            CallError::StreamNeverStarted { .. } => "no_start",
            CallError::StreamRefused { .. } => "rejected",
            CallError::UnsupportedMediaFormat { .. } => "unsupported_media_format",
            CallError::TwilioSilent { .. } => "twilio_silent",
            CallError::Panicked { .. } => "panicked",
            CallError::ModelConfigRejected { .. } => "model_config_rejected",
            CallError::ModelSetupTimeout { .. } => "model_setup_timeout",
            CallError::TooManyBadMessages { .. } => "too_many_bad_messages",
            _ => "failed",
        },
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// The peer whose bad input an error reports (`twilio`, `model`) and its kind, for
/// `bad_input_total`: a message skipped or refused, not a socket that failed. Kinds are fixed
/// names of the error's variant, never text from the peer.
fn bad_input_kind(e: &CallError) -> Option<(&'static str, &'static str)> {
    Some(match e {
        CallError::BadTwilioMessage { .. } => ("twilio", "bad_message"),
        CallError::TooManyBadMessages { .. } => ("twilio", "too_many_bad_messages"),
        CallError::UnsupportedMediaFormat { .. } => ("twilio", "unsupported_media_format"),
        CallError::ModelError { .. } => ("model", "error_event"),
        CallError::BadModelEvent { .. } => ("model", "bad_event"),
        CallError::ModelConfigRejected { .. } => ("model", "config_rejected"),
        _ => return None,
    })
}

/// One tool call of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolCallStat {
    /// The tool's name.
    pub tool: String,
    /// True if it failed, timed out, was rejected or unknown.
    pub is_error: bool,
    /// From `ToolStart` to `ToolEnd`, when both were seen.
    pub latency: Option<Duration>,
}

/// One call's summary: traffic, latencies, barge-ins, tools, transfers, how it ended. See the
/// module docs. No audio, no secrets; the caller's number only in
/// [`summary_json`](CallStats::summary_json) when asked for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallStats {
    /// When the call (its stream) began.
    pub started: Instant,
    /// How long it lasted (set by [`CallStats::finish`]).
    pub duration: Duration,
    /// Twilio's CallSid, once known.
    pub call_sid: Option<String>,
    /// The calling party, once known (logged only on request).
    pub caller: Option<String>,
    /// The model the call used (the `model` of a Realtime endpoint's URL, GPT-Live's model from
    /// `session.start`), if known.
    pub model: Option<String>,
    /// The session's counters (frames, bytes, latencies) as of [`CallStats::finish`].
    pub session: SessionStats,
    /// Times the caller talked over the agent and cut it off.
    pub barge_ins: u64,
    /// Agent items truncated to what the caller heard (barge-ins, interrupts, guardrails).
    pub truncations: u64,
    /// Milliseconds of agent audio cut by truncations (sent, never heard), summed.
    pub truncated_cut_ms: u64,
    /// Tool calls, in the order they ended.
    pub tools: Vec<ToolCallStat>,
    /// Handoffs between agents.
    pub handoffs: u64,
    /// 1 if the call was transferred to a person, else 0.
    pub transfers: u64,
    /// Bad messages reported from Twilio.
    pub bad_twilio: u64,
    /// Bad messages or error events from the model.
    pub bad_model: u64,
    /// Events the application did not read in time.
    pub events_dropped: u64,
    /// Why the call ended, once it has.
    pub close_reason: Option<CloseReason>,
    tool_started: HashMap<String, Instant>,
}

impl CallStats {
    /// A call that began at `started`.
    pub fn new(started: Instant) -> CallStats {
        CallStats {
            started,
            duration: Duration::ZERO,
            call_sid: None,
            caller: None,
            model: None,
            session: SessionStats::default(),
            barge_ins: 0,
            truncations: 0,
            truncated_cut_ms: 0,
            tools: Vec::new(),
            handoffs: 0,
            transfers: 0,
            bad_twilio: 0,
            bad_model: 0,
            events_dropped: 0,
            close_reason: None,
            tool_started: HashMap::new(),
        }
    }

    /// Counts one of the call's events, seen at `now`.
    pub fn observe(&mut self, now: Instant, event: &SessionEvent) {
        match event {
            SessionEvent::AudioInterrupted { cause, cut, .. } => {
                if *cause == InterruptCause::CallerSpeech {
                    self.barge_ins = self.barge_ins.saturating_add(1);
                }
                for (_, ms) in cut {
                    self.truncations = self.truncations.saturating_add(1);
                    self.truncated_cut_ms = self.truncated_cut_ms.saturating_add(*ms);
                }
            }
            // Bounded: a model that never ends its call ids cannot grow this past 1,024.
            SessionEvent::ToolStart { call_id, .. } if self.tool_started.len() < 1024 => {
                self.tool_started.insert(call_id.clone(), now);
            }
            SessionEvent::ToolEnd {
                tool,
                call_id,
                is_error,
                ..
            } => {
                let latency = self
                    .tool_started
                    .remove(call_id)
                    .map(|t| now.saturating_duration_since(t));
                if self.tools.len() < 10_000 {
                    self.tools.push(ToolCallStat {
                        tool: tool.clone(),
                        is_error: *is_error,
                        latency,
                    });
                }
            }
            SessionEvent::Handoff { .. } => self.handoffs = self.handoffs.saturating_add(1),
            SessionEvent::Error(e) => match bad_input_kind(e).map(|(peer, _)| peer) {
                Some("twilio") => self.bad_twilio = self.bad_twilio.saturating_add(1),
                Some(_) => self.bad_model = self.bad_model.saturating_add(1),
                None => {}
            },
            SessionEvent::EventsDropped { count } => {
                self.events_dropped = self.events_dropped.saturating_add(*count)
            }
            SessionEvent::Closed { reason } => {
                if matches!(reason, CloseReason::Transferred { .. }) {
                    self.transfers = 1;
                }
                self.close_reason = Some(reason.clone());
            }
            _ => {}
        }
    }

    /// Ends the summary at `now` with the session's counters
    /// ([`Session::call_stats`](crate::session::Session::call_stats)).
    pub fn finish(&mut self, now: Instant, session: &SessionStats) {
        self.duration = now.saturating_duration_since(self.started);
        self.session = session.clone();
        self.events_dropped = self.events_dropped.max(session.events_dropped);
    }

    /// The summary as one JSON object: `call_sid`, `duration_ms`, `bytes_from_caller`,
    /// `bytes_to_caller`, `frames_from_caller`, `frames_to_caller`, `barge_ins`,
    /// `truncations`, `truncated_cut_ms`, `tools` (count), `tool_errors`, `tool_names`, `handoffs`, `transfers`,
    /// `model`, `model_connect_ms`, `first_audio_ms`, `events_dropped`, `bad_twilio`,
    /// `bad_model`, `close_reason` (a [`close_reason_label`]), `live_session_id` (GPT-Live's
    /// session id, `null` with Realtime); `caller` only when
    /// `with_caller` (the operator opted in).
    pub fn summary_json(&self, with_caller: bool) -> String {
        let ms = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut names: Vec<&str> = self.tools.iter().map(|t| t.tool.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut v = serde_json::json!({
            "call_sid": self.call_sid,
            "duration_ms": ms(Some(self.duration)),
            "bytes_from_caller": self.session.bytes_from_caller,
            "bytes_to_caller": self.session.bytes_to_caller,
            "frames_from_caller": self.session.frames_from_caller,
            "frames_to_caller": self.session.frames_to_caller,
            "barge_ins": self.barge_ins,
            "truncations": self.truncations,
            "truncated_cut_ms": self.truncated_cut_ms,
            "tools": self.tools.len(),
            "tool_errors": self.tools.iter().filter(|t| t.is_error).count(),
            "tool_names": names,
            "handoffs": self.handoffs,
            "transfers": self.transfers,
            "model": self.model,
            "model_connect_ms": ms(self.session.model_connect),
            "first_audio_ms": ms(self.session.first_audio),
            "events_dropped": self.events_dropped,
            "bad_twilio": self.bad_twilio,
            "bad_model": self.bad_model,
            "close_reason": self.close_reason.as_ref().map(close_reason_label),
            "live_session_id": self.session.live_session_id,
        });
        if with_caller {
            v["caller"] = serde_json::json!(self.caller);
        }
        v.to_string()
    }
}

/// The `model` query parameter of a Realtime endpoint URL (`…/v1/realtime?model=gpt-realtime`).
pub fn model_of_url(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v.into_owned())
}

/// The process's metrics (see the module docs). Share it in an `Arc`; every method takes
/// `&self`.
pub struct Metrics {
    registry: Registry,
    families: Families,
    tool_names: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn seconds_histogram() -> Histogram {
    // 10 ms .. ~20 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.01, 2.0, 12,
    ))
}

/// The metric handles (cheap clones sharing their values), registered in one or more
/// registries.
#[derive(Clone)]
struct Families {
    calls_active: Gauge,
    calls: Family<Labels, Counter>,
    pending_webhooks: Gauge,
    refused: Family<Labels, Counter>,
    model_connect: Histogram,
    first_audio: Histogram,
    barge_ins: Counter,
    truncations: Counter,
    truncated_cut: Histogram,
    tool_calls: Family<Labels, Counter>,
    tool_latency: Family<Labels, Histogram>,
    handoffs: Counter,
    transfers: Counter,
    audio_bytes: Family<Labels, Counter>,
    audio_frames: Family<Labels, Counter>,
    events_dropped: Counter,
    bad_input: Family<Labels, Counter>,
    ready: Gauge,
    queued_bytes: QueuedBytes,
}

/// The `queued_bytes` gauge: the [`QueueGauge`]s of the live calls [`CallMeter`]s watch,
/// summed each time the metrics are encoded (a collector, so a scrape of an application's
/// own registry sums them too).
#[derive(Debug, Clone, Default)]
struct QueuedBytes {
    /// Watched calls by meter number; an entry lives until its meter finishes or drops.
    calls: Arc<Mutex<HashMap<u64, QueueGauge>>>,
    next: Arc<AtomicU64>,
}

impl QueuedBytes {
    fn watch(&self, gauge: QueueGauge) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.calls).insert(id, gauge);
        id
    }

    fn forget(&self, id: u64) {
        lock(&self.calls).remove(&id);
    }

    /// Bytes the watched calls hold toward Twilio and toward the model, summed.
    fn sum(&self) -> (u64, u64) {
        // Copied out first: no call's lane is locked while the map is.
        let gauges: Vec<QueueGauge> = lock(&self.calls).values().cloned().collect();
        gauges.iter().fold((0, 0), |(twilio, model), g| {
            (
                twilio.saturating_add(g.to_twilio()),
                model.saturating_add(g.to_model()),
            )
        })
    }
}

impl Collector for QueuedBytes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (twilio, model) = self.sum();
        let mut metric = encoder.encode_descriptor(
            "queued_bytes",
            "Bytes live calls hold queued toward a peer (twilio, model) that its socket has not taken yet",
            None,
            MetricType::Gauge,
        )?;
        for (peer, bytes) in [("twilio", twilio), ("model", model)] {
            metric
                .encode_family(&label("peer", peer))?
                .encode_gauge(&i64::try_from(bytes).unwrap_or(i64::MAX))?;
        }
        Ok(())
    }
}

/// A poisoned lock still holds a usable map (entries are inserted or removed whole).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Families {
    fn new() -> Families {
        Families {
            calls_active: Gauge::default(),
            calls: Family::default(),
            pending_webhooks: Gauge::default(),
            refused: Family::default(),
            model_connect: seconds_histogram(),
            first_audio: seconds_histogram(),
            barge_ins: Counter::default(),
            truncations: Counter::default(),
            truncated_cut: seconds_histogram(),
            tool_calls: Family::default(),
            tool_latency: Family::new_with_constructor(seconds_histogram),
            handoffs: Counter::default(),
            transfers: Counter::default(),
            audio_bytes: Family::default(),
            audio_frames: Family::default(),
            events_dropped: Counter::default(),
            bad_input: Family::default(),
            ready: Gauge::default(),
            queued_bytes: QueuedBytes::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("twilio_realtime");
        let f = self.clone();
        r.register("calls_active", "Calls in progress", f.calls_active);
        r.register("calls", "Calls ended, by close reason", f.calls);
        r.register(
            "pending_webhooks",
            "Calls whose webhook was answered and whose stream has not started yet",
            f.pending_webhooks,
        );
        r.register(
            "calls_refused",
            "Calls refused at capacity or while draining (where: webhook, stream)",
            f.refused,
        );
        r.register(
            "model_connect_seconds",
            "Time to open the model connection (TCP, TLS, WebSocket handshake)",
            f.model_connect,
        );
        r.register(
            "first_audio_seconds",
            "Time from Twilio's start to the first agent audio sent to the caller",
            f.first_audio,
        );
        r.register(
            "barge_ins",
            "Times the caller talked over the agent",
            f.barge_ins,
        );
        r.register(
            "truncations",
            "Agent items truncated to what the caller heard",
            f.truncations,
        );
        r.register(
            "truncated_cut_seconds",
            "Agent audio cut by each truncation: sent, never heard",
            f.truncated_cut,
        );
        r.register(
            "tool_calls",
            "Tool calls by tool name and outcome (ok, error)",
            f.tool_calls,
        );
        r.register(
            "tool_call_seconds",
            "Tool call latency by tool name",
            f.tool_latency,
        );
        r.register("handoffs", "Handoffs between agents", f.handoffs);
        r.register("transfers", "Calls transferred to a person", f.transfers);
        r.register(
            "audio_bytes",
            "µ-law audio bytes by direction (from_caller, to_caller), counted when calls end",
            f.audio_bytes,
        );
        r.register(
            "audio_frames",
            "Twilio media frames by direction (from_caller, to_caller), counted when calls end",
            f.audio_frames,
        );
        r.register(
            "events_dropped",
            "Session events the application did not read in time",
            f.events_dropped,
        );
        r.register(
            "bad_input",
            "Bad input by peer (twilio, model) and kind (bad_message, too_many_bad_messages, unsupported_media_format, error_event, bad_event, config_rejected)",
            f.bad_input,
        );
        r.register(
            "ready",
            "1 while the server takes new calls (what /readyz says)",
            f.ready,
        );
        r.register_collector(Box::new(f.queued_bytes));
    }
}

fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

impl Metrics {
    /// Metrics in their own registry.
    pub fn new() -> Metrics {
        let families = Families::new();
        let mut registry = Registry::default();
        families.register(&mut registry);
        Metrics {
            registry,
            families,
            tool_names: Mutex::new(HashSet::new()),
        }
    }

    /// Registers the same metrics (their values shared) in `registry`, under the
    /// `twilio_realtime_` prefix, so an application serves them with its own.
    pub fn register_into(&self, registry: &mut Registry) {
        self.families.register(registry);
    }

    /// The metrics in the Prometheus text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String does not fail; an encoder error leaves what was written.
            log::debug!(target: "twilio_realtime::metrics", "metrics encoding failed");
        }
        out
    }

    /// A call began (its stream connected).
    pub fn call_started(&self) {
        self.families.calls_active.inc();
    }

    /// A call began at `began`: raises the live calls gauge and returns the call's
    /// [`CallMeter`], which counts its events and publishes it when it ends (or is dropped).
    /// What the bundled server does for each call, for an application that runs sessions
    /// itself.
    pub fn start_call(&self, began: Instant) -> CallMeter<'_> {
        self.call_started();
        CallMeter {
            metrics: self,
            stats: CallStats::new(began),
            ended: false,
            queues: None,
        }
    }

    /// Counts one of a call's events as it happens and adds it to the call's `stats`.
    pub fn observe(&self, stats: &mut CallStats, now: Instant, event: &SessionEvent) {
        let f = &self.families;
        match event {
            SessionEvent::AudioInterrupted { cause, cut, .. } => {
                if *cause == InterruptCause::CallerSpeech {
                    f.barge_ins.inc();
                }
                for (_, ms) in cut {
                    f.truncations.inc();
                    f.truncated_cut.observe(*ms as f64 / 1000.0);
                }
            }
            SessionEvent::ToolEnd {
                tool,
                call_id,
                is_error,
                ..
            } => {
                let name = self.tool_label(tool);
                let outcome = if *is_error { "error" } else { "ok" };
                f.tool_calls
                    .get_or_create(&vec![("tool", name.clone()), ("outcome", outcome.into())])
                    .inc();
                if let Some(t) = stats.tool_started.get(call_id) {
                    let secs = now.saturating_duration_since(*t).as_secs_f64();
                    f.tool_latency
                        .get_or_create(&label("tool", name))
                        .observe(secs);
                }
            }
            SessionEvent::Handoff { .. } => {
                f.handoffs.inc();
            }
            SessionEvent::Error(e) => {
                if let Some((peer, kind)) = bad_input_kind(e) {
                    f.bad_input
                        .get_or_create(&vec![("peer", peer.into()), ("kind", kind.into())])
                        .inc();
                }
            }
            SessionEvent::EventsDropped { count } => {
                f.events_dropped.inc_by(*count);
            }
            _ => {}
        }
        stats.observe(now, event);
    }

    /// A call ended: publishes its traffic, latencies and close reason, and lowers the live
    /// calls gauge.
    pub fn call_ended(&self, stats: &CallStats) {
        let f = &self.families;
        f.calls_active.dec();
        let reason = stats
            .close_reason
            .as_ref()
            .map(close_reason_label)
            .unwrap_or("unknown");
        f.calls.get_or_create(&label("reason", reason)).inc();
        if stats.transfers > 0 {
            f.transfers.inc_by(stats.transfers);
        }
        let s = &stats.session;
        for (dir, bytes, frames) in [
            ("from_caller", s.bytes_from_caller, s.frames_from_caller),
            ("to_caller", s.bytes_to_caller, s.frames_to_caller),
        ] {
            f.audio_bytes
                .get_or_create(&label("direction", dir))
                .inc_by(bytes);
            f.audio_frames
                .get_or_create(&label("direction", dir))
                .inc_by(frames);
        }
        if let Some(d) = s.model_connect {
            f.model_connect.observe(d.as_secs_f64());
        }
        if let Some(d) = s.first_audio {
            f.first_audio.observe(d.as_secs_f64());
        }
    }

    /// A call refused at capacity or while draining; `at` is `webhook` or `stream`.
    pub fn call_refused(&self, at: &'static str) {
        self.families
            .refused
            .get_or_create(&label("where", at))
            .inc();
    }

    /// Sets the gauge of answered webhooks whose stream has not started.
    pub fn set_pending_webhooks(&self, n: usize) {
        self.families
            .pending_webhooks
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the readiness gauge.
    pub fn set_ready(&self, ready: bool) {
        self.families.ready.set(i64::from(ready));
    }

    /// The label for a tool name: the name itself for the first [`MAX_TOOL_LABELS`] names
    /// seen, `other` after.
    fn tool_label(&self, tool: &str) -> String {
        let mut seen = self.tool_names.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(tool) {
            return tool.to_owned();
        }
        if seen.len() < MAX_TOOL_LABELS {
            seen.insert(tool.to_owned());
            return tool.to_owned();
        }
        "other".to_owned()
    }
}

/// One call's share of [`Metrics`] ([`Metrics::start_call`]): feed it the call's events
/// ([`observe`](CallMeter::observe)), then [`finish`](CallMeter::finish) it with the
/// session. A meter dropped unfinished (the application's loop panicked or returned early)
/// still ends its call in the metrics, so the live calls gauge never drifts.
///
/// ```
/// use std::time::Instant;
/// use twilio_realtime::events::{CloseReason, SessionEvent};
/// use twilio_realtime::metrics::Metrics;
///
/// let metrics = Metrics::new();
/// let mut meter = metrics.start_call(Instant::now());
/// assert!(metrics.encode().contains("twilio_realtime_calls_active 1"));
/// // In a real loop: `for event in session.events().iter() { meter.observe(&event); … }`,
/// // then `let stats = meter.finish(&session);`.
/// meter.observe(&SessionEvent::Closed { reason: CloseReason::TwilioStopped });
/// drop(meter);
/// let text = metrics.encode();
/// assert!(text.contains("twilio_realtime_calls_active 0"));
/// assert!(text.contains("twilio_realtime_calls_total{reason=\"twilio_stopped\"} 1"));
/// ```
#[derive(Debug)]
pub struct CallMeter<'a> {
    metrics: &'a Metrics,
    stats: CallStats,
    ended: bool,
    /// The watched [`QueueGauge`]'s entry in the `queued_bytes` gauge.
    queues: Option<u64>,
}

impl CallMeter<'_> {
    /// Counts the call's queued bytes ([`Session::queue_gauge`]) in the
    /// `twilio_realtime_queued_bytes{peer}` gauge until the meter finishes or is dropped: the
    /// gauge is read whenever the metrics are encoded (through [`Metrics::encode`] or an
    /// application's registry, [`Metrics::register_into`]). What the bundled server does for
    /// each call. A second call replaces the first gauge.
    ///
    /// ```
    /// use std::time::Instant;
    /// use twilio_realtime::metrics::Metrics;
    /// use twilio_realtime::session::Session;
    ///
    /// fn run(metrics: &Metrics, session: &Session) {
    ///     let mut meter = metrics.start_call(Instant::now());
    ///     meter.watch_queues(session.queue_gauge());
    ///     for event in session.events().iter() {
    ///         meter.observe(&event);
    ///     }
    ///     meter.finish(session);
    /// }
    /// // No call watched: nothing queued.
    /// let text = Metrics::new().encode();
    /// assert!(text.contains("twilio_realtime_queued_bytes{peer=\"model\"} 0"));
    /// ```
    pub fn watch_queues(&mut self, gauge: QueueGauge) {
        self.forget_queues();
        self.queues = Some(self.metrics.families.queued_bytes.watch(gauge));
    }

    fn forget_queues(&mut self) {
        if let Some(id) = self.queues.take() {
            self.metrics.families.queued_bytes.forget(id);
        }
    }

    /// Counts one of the call's events, as it happens.
    pub fn observe(&mut self, event: &SessionEvent) {
        self.metrics.observe(&mut self.stats, Instant::now(), event);
    }

    /// The call's summary so far (e.g. to set [`CallStats::model`]).
    pub fn stats_mut(&mut self) -> &mut CallStats {
        &mut self.stats
    }

    /// The call ended: completes its summary with the session's counters and caller details
    /// ([`Session::call_stats`], [`Session::call_info`]), publishes it and returns it (for
    /// [`CallStats::summary_json`]).
    pub fn finish(mut self, session: &Session) -> CallStats {
        self.stats.finish(Instant::now(), &session.call_stats());
        if let Some(info) = session.call_info() {
            self.stats.call_sid = Some(info.call_sid.clone());
            self.stats.caller = info.from.clone();
        }
        self.ended = true;
        self.forget_queues();
        self.metrics.call_ended(&self.stats);
        let started = self.stats.started;
        std::mem::replace(&mut self.stats, CallStats::new(started))
    }
}

impl Drop for CallMeter<'_> {
    fn drop(&mut self) {
        self.forget_queues();
        if !self.ended {
            self.stats.duration = self.stats.started.elapsed();
            self.metrics.call_ended(&self.stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_TOOL_LABELS {
            assert_eq!(m.tool_label(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(m.tool_label("one_too_many"), "other");
        assert_eq!(m.tool_label("t0"), "t0");
    }

    #[test]
    fn model_from_url() {
        assert_eq!(
            model_of_url("wss://api.openai.com/v1/realtime?model=gpt-realtime").as_deref(),
            Some("gpt-realtime")
        );
        assert_eq!(model_of_url("ws://127.0.0.1:1/"), None);
    }

    #[test]
    fn stats_count_events() {
        let t0 = Instant::now();
        let m = Metrics::new();
        let mut s = CallStats::new(t0);
        m.call_started();
        let evs = [
            SessionEvent::ToolStart {
                agent: "a".into(),
                tool: "weather".into(),
                call_id: "c1".into(),
                arguments: "{}".into(),
            },
            SessionEvent::ToolEnd {
                agent: "a".into(),
                tool: "weather".into(),
                call_id: "c1".into(),
                output: "sunny".into(),
                is_error: false,
            },
            SessionEvent::AudioInterrupted {
                cause: InterruptCause::CallerSpeech,
                heard: vec![("item".into(), 1200)],
                cut: vec![("item".into(), 800)],
            },
            SessionEvent::Closed {
                reason: CloseReason::HungUp,
            },
        ];
        for e in &evs {
            m.observe(&mut s, t0 + Duration::from_millis(250), e);
        }
        assert_eq!(
            (s.barge_ins, s.truncations, s.truncated_cut_ms),
            (1, 1, 800)
        );
        assert_eq!(s.tools.len(), 1);
        m.call_ended(&s);
        let text = m.encode();
        for want in [
            "twilio_realtime_calls_total{reason=\"hung_up\"} 1",
            "twilio_realtime_calls_active 0",
            "twilio_realtime_barge_ins_total 1",
            "twilio_realtime_tool_calls_total{tool=\"weather\",outcome=\"ok\"} 1",
            "twilio_realtime_tool_call_seconds_count{tool=\"weather\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        let line: serde_json::Value = serde_json::from_str(&s.summary_json(false)).unwrap();
        assert_eq!(line["close_reason"], "hung_up");
        assert!(line.get("caller").is_none());
    }
}
