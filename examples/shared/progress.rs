//! Progress of a long run (the load generator, the soak): calls connected / running / done,
//! elapsed time, and the bridge's current CPU and memory. On a terminal it is an `indicatif`
//! bar on stderr, redrawn a few times a second; elsewhere (CI logs) a plain line on stderr
//! every few seconds.
#![allow(dead_code)]

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use twilio_realtime::sim::chaos::ProcessStats;

/// What the run reports at each update.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The stage, e.g. `ramp-up` or `measuring`.
    pub phase: String,
    /// Progress through the whole run, in `unit`s.
    pub pos: u64,
    /// The whole run, in `unit`s.
    pub len: u64,
    /// Calls connected so far.
    pub connected: u64,
    /// Calls running now.
    pub running: u64,
    /// Calls finished.
    pub done: u64,
}

/// CPU time of a process in clock ticks (user + system), from `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// A running progress display; [`Progress::finish`] ends it.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `what()` for the process `pid` (its CPU is measured between updates),
    /// called `who` (e.g. `bridge`). `unit` names what `pos`/`len` count (`s` or `calls`);
    /// `every` is the interval of the plain lines.
    pub fn start(
        pid: u32,
        who: &'static str,
        unit: &'static str,
        every: Duration,
        what: impl Fn() -> Snapshot + Send + 'static,
    ) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("progress".into())
            .spawn(move || run(pid, who, unit, every, what, &flag))
            .ok();
        Progress { stop, thread }
    }

    /// Stops the display (the bar is cleared; the last plain line stays).
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// CPU share of one core since the previous sample.
struct CpuMeter {
    pid: u32,
    last: Mutex<Option<(Instant, u64)>>,
}

impl CpuMeter {
    fn percent(&self) -> Option<f64> {
        let now = Instant::now();
        let ticks = cpu_ticks(self.pid)?;
        let mut last = self.last.lock().ok()?;
        let out = last.and_then(|(t, n)| {
            let dt = now.duration_since(t).as_secs_f64();
            (dt > 0.0).then(|| 100.0 * ticks.saturating_sub(n) as f64 / clk_tck() / dt)
        });
        *last = Some((now, ticks));
        out
    }
}

fn line(s: &Snapshot, cpu: Option<f64>, pid: u32, who: &str) -> String {
    let rss = ProcessStats::of_pid(pid)
        .map(|p| format!("{:.1} MiB", p.rss_kb as f64 / 1024.0))
        .unwrap_or_else(|_| "?".into());
    let cpu = cpu.map_or("?".into(), |c| format!("{c:.0}%"));
    format!(
        "calls connected {}, running {}, done {} | {who} CPU {cpu} of a core, RSS {rss}",
        s.connected, s.running, s.done
    )
}

fn run(
    pid: u32,
    who: &str,
    unit: &'static str,
    every: Duration,
    what: impl Fn() -> Snapshot,
    stop: &AtomicBool,
) {
    let t0 = Instant::now();
    let cpu = CpuMeter {
        pid,
        last: Mutex::new(None),
    };
    let _ = cpu.percent();
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(1);
        let style = ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:24.cyan/blue}}] {{prefix}} {{pos}}/{{len}} {unit} | {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        let mut last_cpu = None;
        let mut last_cpu_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let s = what();
            // CPU over at least a second, so the figure does not jump around.
            if last_cpu_at.elapsed() >= Duration::from_secs(1) {
                last_cpu = cpu.percent();
                last_cpu_at = Instant::now();
            }
            bar.set_length(s.len.max(1));
            bar.set_position(s.pos.min(s.len));
            bar.set_prefix(s.phase.clone());
            bar.set_message(line(&s, last_cpu, pid, who));
            thread::sleep(Duration::from_millis(250));
        }
        bar.finish_and_clear();
    } else {
        let mut next = Instant::now() + every;
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                next += every;
                let s = what();
                eprintln!(
                    "[{:>7.1} s] {} {}/{} {unit} | {}",
                    t0.elapsed().as_secs_f64(),
                    s.phase,
                    s.pos.min(s.len),
                    s.len,
                    line(&s, cpu.percent(), pid, who)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}
