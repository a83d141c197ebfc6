//! A soak run in one process: bridge servers (in-process) in front of a healthy fake model, a
//! model that fails mid-call, one that refuses, one that never finishes its handshake, one that
//! stops reading mid-call, and one whose agent's tool panics; many calls in a row, then many at
//! once with misbehaving callers (half-open ones among them) and calls to an application that
//! never reads its events; and the process's threads, descriptors and memory before and
//! after. `examples/soak.rs` runs the full size; the test
//! suite a small one.
//!
//! ```no_run
//! use twilio_realtime::sim::soak::{soak, SoakConfig};
//!
//! let report = soak(&SoakConfig { in_a_row: 1000, lanes: 8, at_once: 100, ..Default::default() }).unwrap();
//! println!("{report}");
//! assert!(report.leaks().is_empty());
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::agent::Agent;
use crate::server::{Server, ServerConfig, ServerStats, Stopper};

use super::chaos::{run_faulty_call, CallerFault, ProcessStats};
use super::fake_model::{FakeModel, FakeModelConfig, Faults, Reply};
use super::twilio_call::{Segment, TwilioCall, TwilioCallConfig};

/// Size of a soak run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Healthy calls one after another (spread over `lanes` threads). Default 1000.
    pub in_a_row: usize,
    /// Parallel lanes for the calls in a row. Default 8.
    pub lanes: usize,
    /// Calls started at the same moment, half of them misbehaving callers, spread over the
    /// healthy and the faulty models. Default 100.
    pub at_once: usize,
    /// How long threads and descriptors may take to return to the baseline. Default 10 s.
    pub settle: Duration,
    /// Counters the run updates as it goes, for a progress display (`examples/soak.rs`).
    pub progress: Arc<SoakProgress>,
    /// Calls, during the calls at once, to an application that runs sessions itself and never
    /// reads their events (every socket message and audio chunk an event). Default 20.
    pub deaf_calls: usize,
}

/// Where a soak run is, updated as it goes (read it from another thread).
#[derive(Debug, Default)]
pub struct SoakProgress {
    phase: AtomicUsize,
    started: AtomicUsize,
    done: AtomicUsize,
    ok: AtomicUsize,
}

/// The stage a soak run is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SoakPhase {
    /// Starting the bridges and warming every path up.
    WarmUp,
    /// The calls in a row.
    InARow,
    /// The calls at once.
    AtOnce,
    /// Waiting for threads and descriptors to come back.
    Settling,
    /// Finished.
    Done,
}

impl SoakPhase {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            SoakPhase::WarmUp => "warm-up",
            SoakPhase::InARow => "calls in a row",
            SoakPhase::AtOnce => "calls at once",
            SoakPhase::Settling => "settling",
            SoakPhase::Done => "done",
        }
    }
}

impl SoakProgress {
    /// The current stage.
    pub fn phase(&self) -> SoakPhase {
        match self.phase.load(Ordering::Relaxed) {
            0 => SoakPhase::WarmUp,
            1 => SoakPhase::InARow,
            2 => SoakPhase::AtOnce,
            3 => SoakPhase::Settling,
            _ => SoakPhase::Done,
        }
    }

    /// Measured calls started so far (warm-up calls are not counted).
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// Measured calls finished so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Healthy measured calls that went as expected so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn set(&self, phase: SoakPhase) {
        let n = match phase {
            SoakPhase::WarmUp => 0,
            SoakPhase::InARow => 1,
            SoakPhase::AtOnce => 2,
            SoakPhase::Settling => 3,
            SoakPhase::Done => 4,
        };
        self.phase.store(n, Ordering::Relaxed);
    }

    fn call<T>(&self, f: impl FnOnce() -> T, ok: impl FnOnce(&T) -> bool) -> T {
        self.started.fetch_add(1, Ordering::Relaxed);
        let r = f();
        if ok(&r) {
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        r
    }
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            in_a_row: 1000,
            lanes: 8,
            at_once: 100,
            settle: Duration::from_secs(10),
            progress: Arc::default(),
            deaf_calls: 20,
        }
    }
}

/// What a soak run saw.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// After warm-up, before the run.
    pub baseline: ProcessStats,
    /// After the calls in a row.
    pub after_in_a_row: ProcessStats,
    /// After the calls at once (and at the end).
    pub after_at_once: ProcessStats,
    /// Healthy calls in a row that heard the agent and ended normally.
    pub in_a_row_ok: usize,
    /// Healthy calls in a row in all.
    pub in_a_row: usize,
    /// Calls at once, by kind: (kind, how many).
    pub at_once: Vec<(String, usize)>,
    /// Calls at once to the healthy model from a well-behaved caller that heard the agent.
    pub healthy_at_once_ok: usize,
    /// Calls at once to the healthy model from a well-behaved caller.
    pub healthy_at_once: usize,
    /// Calls the servers counted, all servers together.
    pub server_calls: u64,
    /// The calls to the application that never reads its events.
    pub deaf: DeafStats,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// What the sessions of an application that never reads its events held.
#[derive(Debug, Clone, Default)]
pub struct DeafStats {
    /// Calls that heard the agent and ended normally.
    pub ok: usize,
    /// Calls in all.
    pub calls: usize,
    /// Events dropped over all calls, because nobody read them.
    pub events_dropped: u64,
    /// The most events any one call held at once.
    pub events_peak: usize,
    /// The bound (`SessionConfig::event_capacity`).
    pub capacity: usize,
}

/// How far above the baseline RSS may end before it counts as a leak.
const RSS_SLACK_KB: u64 = 16 * 1024;

impl SoakReport {
    /// What did not come back to the baseline (threads, descriptors, RSS within 16 MiB), or
    /// went wrong; empty when all is well.
    pub fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (b, a) = (&self.baseline, &self.after_at_once);
        if a.threads > b.threads {
            out.push(format!("threads {} -> {}", b.threads, a.threads));
        }
        if a.fds > b.fds {
            out.push(format!("file descriptors {} -> {}", b.fds, a.fds));
        }
        // Idle servers hand freed memory back to the OS, so RSS comes back to within a few MiB
        // of the baseline (warm caches, this report's own data); 100 calls at once would leave
        // ~30 MiB behind if it did not.
        if a.rss_kb > b.rss_kb + RSS_SLACK_KB {
            out.push(format!(
                "RSS {:.1} -> {:.1} MiB",
                b.rss_kb as f64 / 1024.0,
                a.rss_kb as f64 / 1024.0
            ));
        }
        if self.in_a_row_ok < self.in_a_row {
            out.push(format!(
                "{} of {} healthy calls in a row failed",
                self.in_a_row - self.in_a_row_ok,
                self.in_a_row
            ));
        }
        if self.deaf.ok < self.deaf.calls {
            out.push(format!(
                "{} of {} calls to an application that never reads events failed",
                self.deaf.calls - self.deaf.ok,
                self.deaf.calls
            ));
        }
        if self.deaf.ok > 0 && self.deaf.events_dropped == 0 {
            out.push(
                "calls to the application that never reads events dropped none: the bound was \
                 never reached"
                    .into(),
            );
        }
        if self.deaf.events_peak > self.deaf.capacity {
            out.push(format!(
                "a call held {} unread events, over its bound of {}",
                self.deaf.events_peak, self.deaf.capacity
            ));
        }
        if self.healthy_at_once_ok < self.healthy_at_once {
            out.push(format!(
                "{} of {} healthy calls under faults failed",
                self.healthy_at_once - self.healthy_at_once_ok,
                self.healthy_at_once
            ));
        }
        out
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, name: &str, s: &ProcessStats| {
            writeln!(
                f,
                "  {name:<16} threads {:>4}  fds {:>4}  rss {:>7.1} MiB  peak {:>7.1} MiB",
                s.threads,
                s.fds,
                s.rss_kb as f64 / 1024.0,
                s.peak_rss_kb as f64 / 1024.0
            )
        };
        writeln!(f, "soak run, {:.1} s:", self.elapsed.as_secs_f64())?;
        row(f, "baseline", &self.baseline)?;
        row(f, "after in a row", &self.after_in_a_row)?;
        row(f, "after at once", &self.after_at_once)?;
        writeln!(
            f,
            "  {} calls in a row: {} ok",
            self.in_a_row, self.in_a_row_ok
        )?;
        let kinds: Vec<String> = self
            .at_once
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        writeln!(
            f,
            "  {} calls at once: {}; healthy ones ok: {}/{}",
            self.at_once.iter().map(|(_, n)| n).sum::<usize>(),
            kinds.join(", "),
            self.healthy_at_once_ok,
            self.healthy_at_once
        )?;
        writeln!(
            f,
            "  {} calls to an app that never reads events: {} ok; {} events dropped, at most {} \
             held by one call (bound {})",
            self.deaf.calls,
            self.deaf.ok,
            self.deaf.events_dropped,
            self.deaf.events_peak,
            self.deaf.capacity
        )?;
        let leaks = self.leaks();
        if leaks.is_empty() {
            write!(f, "  leaks: none")
        } else {
            write!(f, "  LEAKS: {}", leaks.join("; "))
        }
    }
}

struct Bridge {
    name: &'static str,
    addr: SocketAddr,
    stopper: Stopper,
    thread: thread::JoinHandle<io::Result<ServerStats>>,
    model: FakeModel,
}

fn soak_agent() -> Agent {
    Agent::new("Soak", "You answer calls briefly.")
}

fn bridge(name: &'static str, model: FakeModelConfig, handshake: Duration) -> io::Result<Bridge> {
    bridge_with(name, model, handshake, soak_agent, |_| {})
}

fn bridge_with(
    name: &'static str,
    model: FakeModelConfig,
    handshake: Duration,
    agent: fn() -> Agent,
    tweak: impl FnOnce(&mut ServerConfig),
) -> io::Result<Bridge> {
    // Counters only: the fake model's event log would grow with every call and hide what the
    // bridge itself holds.
    let model = FakeModel::start(FakeModelConfig {
        keep_events: false,
        ..model
    })?;
    let mut cfg = ServerConfig::new();
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.public_url = None;
    cfg.twilio_auth_token = None;
    cfg.stream_token_ttl = None;
    cfg.session.model.url = model.url();
    cfg.session.model.api_key = Some("sk-soak".into());
    cfg.session.model.ws.handshake_timeout = handshake;
    cfg.session.call.start_timeout = Duration::from_secs(1);
    cfg.session.call.drain_timeout = Duration::from_secs(1);
    // The agent greets each caller (the model, like production, never speaks first).
    cfg.session.call.greeting = Some(crate::call::Greeting::Instructions(
        "Greet the caller briefly.".into(),
    ));
    cfg.twilio_ws.write_timeout = Duration::from_secs(2);
    // Half-open callers are given up after 1 s of silence (live streams send every 20 ms).
    cfg.session.call.twilio_silence_timeout = Duration::from_secs(1);
    cfg.shutdown_grace = Duration::from_secs(5);
    tweak(&mut cfg);
    let server = Server::bind(cfg, Arc::new(agent))?;
    let addr = server.local_addr();
    let stopper = server.stopper();
    let thread = thread::Builder::new()
        .name("soak-server".into())
        .spawn(move || server.run())?;
    Ok(Bridge {
        name,
        addr,
        stopper,
        thread,
        model,
    })
}

/// The event bound of the sessions of the application that never reads events.
pub const DEAF_EVENT_CAPACITY: usize = 64;

/// An application that runs sessions on its own listener and never reads their events:
/// every socket message and every audio chunk becomes an event, and the bounded queue must
/// hold the call's memory down while the call goes on.
struct DeafApp {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    live: Arc<AtomicUsize>,
    stats: Arc<std::sync::Mutex<DeafStats>>,
    thread: thread::JoinHandle<()>,
    model: FakeModel,
}

impl DeafApp {
    fn start(model: FakeModelConfig) -> io::Result<DeafApp> {
        use crate::io::ws::{WsConfig, WsConn};
        use crate::session::{Session, SessionConfig, TransportEvents};
        let model = FakeModel::start(FakeModelConfig {
            keep_events: false,
            ..model
        })?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        let mut opts = SessionConfig::new(Some("sk-soak".into())).url(model.url());
        opts.transport_events = TransportEvents::All;
        opts.call.audio_events = true;
        // A bound a short soak call overflows (one holds ~160 events), so the drop policy
        // runs on every call; the default is 1,024.
        opts.event_capacity = DEAF_EVENT_CAPACITY;
        // Its calls are healthy ones that end by hanging up; the start and silence rules
        // keep their defaults (5 s, 10 s): at 1 s, a loaded test machine that stalled the
        // simulated caller for a second ended a call the soak counts as healthy (seen once
        // in a full-suite run on 2 cores). tests/liveness.rs tests those rules.
        opts.call.drain_timeout = Duration::from_secs(1);
        // The agent greets each caller, as on the bridges above.
        opts.call.greeting = Some(crate::call::Greeting::Instructions(
            "Greet the caller briefly.".into(),
        ));
        let stats = Arc::new(std::sync::Mutex::new(DeafStats {
            capacity: opts.event_capacity,
            ..Default::default()
        }));
        let (stop2, live2, stats2) = (stop.clone(), live.clone(), stats.clone());
        let thread = thread::Builder::new()
            .name("deaf-app".into())
            .spawn(move || {
                for tcp in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(tcp) = tcp else { continue };
                    let (opts, live, stats) = (opts.clone(), live2.clone(), stats2.clone());
                    live.fetch_add(1, Ordering::SeqCst);
                    let spawned = thread::Builder::new()
                        .name("deaf-call".into())
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            let session = WsConn::accept(tcp, None, &WsConfig::default())
                                .ok()
                                .and_then(|(conn, _)| {
                                    Session::start(conn, Agent::new("Soak", "Answer."), opts).ok()
                                });
                            if let Some(h) = session {
                                // Never reads events(): only waits for the call to end.
                                while !h.is_finished() {
                                    thread::sleep(Duration::from_millis(20));
                                }
                                let q = h.queue_stats();
                                if let Ok(mut s) = stats.lock() {
                                    s.events_dropped += q.events_dropped;
                                    s.events_peak = s.events_peak.max(q.events_peak);
                                }
                                h.join();
                            }
                            live.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        live2.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })?;
        Ok(DeafApp {
            addr,
            stop,
            live,
            stats,
            thread,
            model,
        })
    }

    fn stop(self) -> DeafStats {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
        let _ = self.thread.join();
        let mut m = self.model;
        m.stop();
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// One well-behaved caller: speaks, waits for the agent, hangs up. True if it heard the agent
/// and nothing broke the protocol.
fn healthy_call(addr: SocketAddr, seed: u64) -> bool {
    let mut cfg = TwilioCallConfig::new(
        addr,
        vec![
            Segment::Speech(300),
            Segment::WaitForAgent {
                quiet_ms: 200,
                timeout_ms: 5_000,
            },
            Segment::HangUp,
        ],
    );
    cfg.one_way_delay = Duration::from_millis(2);
    cfg.jitter = Duration::from_millis(1);
    cfg.seed = seed;
    cfg.keep_audio = false;
    cfg.max_duration = Duration::from_secs(15);
    match TwilioCall::run(cfg) {
        Ok(r) => r.played_ms() > 0 && r.violations.is_empty(),
        Err(e) => {
            log::warn!(target: "twilio_realtime::sim", "soak call failed: {e}");
            false
        }
    }
}

/// Runs a soak; see the module docs.
pub fn soak(cfg: &SoakConfig) -> io::Result<SoakReport> {
    let t0 = Instant::now();
    let progress = cfg.progress.clone();
    progress.set(SoakPhase::WarmUp);
    let say = || Reply::say("Sure, here you are.", 400);
    let bridges = vec![
        bridge(
            "healthy",
            FakeModelConfig {
                script: vec![Reply::say("Hi.", 200)],
                default_reply: say(),
                audio_speed: 8.0,
                ..Default::default()
            },
            Duration::from_secs(5),
        )?,
        bridge(
            "model fails mid-call",
            FakeModelConfig {
                default_reply: Reply::say("Hello there, one moment.", 1500),
                faults: Faults {
                    errors: vec![(
                        Duration::from_millis(100),
                        json!({"type":"error","event_id":"ev_soak","error":{"type":"server_error","code":"soak","message":"injected","param":null,"event_id":null}}),
                    )],
                    malformed_after: Some(Duration::from_millis(200)),
                    close_after: Some(Duration::from_millis(600)),
                    ..Default::default()
                },
                ..Default::default()
            },
            Duration::from_secs(5),
        )?,
        bridge(
            "model refuses",
            FakeModelConfig {
                faults: Faults {
                    reject_status: Some(401),
                    ..Default::default()
                },
                ..Default::default()
            },
            Duration::from_secs(5),
        )?,
        bridge(
            "model hangs",
            FakeModelConfig {
                faults: Faults {
                    accept_delay: Duration::from_secs(1),
                    ..Default::default()
                },
                ..Default::default()
            },
            Duration::from_millis(300),
        )?,
        // Stops reading 300 ms into each connection for 6 s: the bridge's model socket fills
        // (a 16 KiB send buffer) and is given up after its 1 s write timeout.
        bridge_with(
            "model stops reading",
            FakeModelConfig {
                faults: Faults {
                    stall_reads: Some((Duration::from_millis(300), Duration::from_secs(6))),
                    ..Default::default()
                },
                ..Default::default()
            },
            Duration::from_secs(5),
            soak_agent,
            |cfg| {
                cfg.session.model.ws.send_buffer_size = Some(16 * 1024);
                cfg.session.model.ws.write_timeout = Duration::from_secs(1);
            },
        )?,
        // Every first reply calls a tool that panics; the call goes on with the next reply.
        bridge_with(
            "tool panics",
            FakeModelConfig {
                script: [
                    Reply::call("boom", "{}"),
                    Reply::say("Sorry, that failed.", 300),
                ]
                .into_iter()
                .cycle()
                .take(2_000)
                .collect(),
                audio_speed: 8.0,
                ..Default::default()
            },
            Duration::from_secs(5),
            || {
                soak_agent().tool(crate::agent::FunctionTool::new(
                    "boom",
                    "Always fails.",
                    json!({"type": "object"}),
                    |_| panic!("soak: a tool that panics"),
                ))
            },
            |_| {},
        )?,
    ];

    let deaf = DeafApp::start(FakeModelConfig {
        script: vec![Reply::say("Hi.", 200)],
        default_reply: say(),
        audio_speed: 8.0,
        ..Default::default()
    })?;

    // Warm up every path once (lazy statics, first threads of the fake models), then measure.
    healthy_call(deaf.addr, 99);
    for (i, b) in bridges.iter().enumerate() {
        healthy_call(b.addr, i as u64);
        for fault in CallerFault::ALL {
            run_faulty_call(b.addr, fault, Duration::from_millis(200)).ok();
        }
    }
    let idle = |within: Duration| {
        let deadline = Instant::now() + within;
        while (bridges.iter().any(|b| b.stopper.live_calls() > 0)
            || deaf.live.load(Ordering::SeqCst) > 0)
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        // Let the last socket threads exit after their sessions, and the hanging model's
        // delayed handshakes (1 s) run out.
        thread::sleep(Duration::from_millis(1300));
    };
    idle(Duration::from_secs(10));
    let baseline = ProcessStats::now()?;

    // Calls in a row on the healthy bridge.
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let healthy = bridges[0].addr;
    progress.set(SoakPhase::InARow);
    let lanes: Vec<_> = (0..cfg.lanes.max(1))
        .map(|_| {
            let (next, ok, total) = (next.clone(), ok.clone(), cfg.in_a_row);
            let progress = progress.clone();
            thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    break;
                }
                if progress.call(|| healthy_call(healthy, n as u64), |ok| *ok) {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for l in lanes {
        let _ = l.join();
    }
    progress.set(SoakPhase::Settling);
    idle(cfg.settle);
    let after_in_a_row = ProcessStats::settle(&baseline, cfg.settle)?;

    // Calls at once: even ones well-behaved, odd ones misbehaving, over all four bridges.
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let healthy_ok = Arc::new(AtomicUsize::new(0));
    let mut healthy_total = 0;
    progress.set(SoakPhase::AtOnce);
    let barrier = Arc::new(std::sync::Barrier::new(cfg.at_once.max(1)));
    let mut calls = Vec::with_capacity(cfg.at_once);
    for i in 0..cfg.at_once {
        // Every bridge gets both kinds of caller; the faults rotate.
        let bridge_no = (i / 2) % bridges.len();
        let b = &bridges[bridge_no];
        let addr = b.addr;
        let fault = (i % 2 == 1).then(|| CallerFault::ALL[(i / 2) % CallerFault::ALL.len()]);
        let kind = match fault {
            None => format!("callers to '{}'", b.name),
            Some(f) => format!("{f:?} callers"),
        };
        *kinds.entry(kind).or_default() += 1;
        let counts = fault.is_none() && bridge_no == 0;
        if counts {
            healthy_total += 1;
        }
        let (barrier, healthy_ok) = (barrier.clone(), healthy_ok.clone());
        let progress = progress.clone();
        calls.push(
            thread::Builder::new()
                .name("soak-call".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    match fault {
                        None => {
                            let fine =
                                progress.call(|| healthy_call(addr, 10_000 + i as u64), |ok| *ok);
                            if fine && counts {
                                healthy_ok.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Some(f) => {
                            let _ = progress.call(
                                || run_faulty_call(addr, f, Duration::from_millis(1500)),
                                |_| false,
                            );
                        }
                    }
                })?,
        );
    }
    // Meanwhile, calls to the application that never reads its events.
    let deaf_ok = Arc::new(AtomicUsize::new(0));
    let deaf_addr = deaf.addr;
    for i in 0..cfg.deaf_calls {
        let deaf_ok = deaf_ok.clone();
        calls.push(
            thread::Builder::new()
                .name("soak-deaf-call".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    if healthy_call(deaf_addr, 20_000 + i as u64) {
                        deaf_ok.fetch_add(1, Ordering::SeqCst);
                    }
                })?,
        );
    }
    for c in calls {
        let _ = c.join();
    }
    progress.set(SoakPhase::Settling);
    idle(cfg.settle);
    let after_at_once = ProcessStats::settle(&baseline, cfg.settle)?;
    let mut deaf_stats = deaf.stop();
    deaf_stats.calls = cfg.deaf_calls;
    deaf_stats.ok = deaf_ok.load(Ordering::SeqCst);

    progress.set(SoakPhase::Done);
    let mut server_calls = 0;
    for b in bridges {
        b.stopper.stop();
        if let Ok(Ok(stats)) = b.thread.join() {
            server_calls += stats.calls;
        }
        let mut m = b.model;
        m.stop();
    }
    Ok(SoakReport {
        baseline,
        after_in_a_row,
        after_at_once,
        in_a_row_ok: ok.load(Ordering::SeqCst),
        in_a_row: cfg.in_a_row,
        at_once: kinds.into_iter().collect(),
        healthy_at_once_ok: healthy_ok.load(Ordering::SeqCst),
        healthy_at_once: healthy_total,
        server_calls,
        deaf: deaf_stats,
        elapsed: t0.elapsed(),
    })
}
