//! Soak: 1,000 calls in a row, then 100 at once with misbehaving callers (half-open ones
//! among them) and failing models (one stops reading mid-call, one's tool panics),
//! all through in-process bridge servers; threads, file descriptors and memory must come back
//! to where they were.
//!
//! ```text
//! cargo run --release --example soak                 # 1000 in a row, 100 at once
//! cargo run --release --example soak -- 200 8 50     # in a row, lanes, at once
//! ```
//!
//! Exits non-zero if anything leaked or a healthy call failed. Progress (calls started,
//! running, done; this process's CPU and RSS, bridges and callers together) goes to stderr: a
//! bar on a terminal, a line every 5 s otherwise.

use std::time::Duration;

use twilio_realtime::sim::soak::{soak, SoakConfig};

#[path = "shared/progress.rs"]
mod progress;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: in_a_row lanes at_once"))
        .collect();
    let mut cfg = SoakConfig::default();
    if let Some(&n) = args.first() {
        cfg.in_a_row = n;
    }
    if let Some(&n) = args.get(1) {
        cfg.lanes = n;
    }
    if let Some(&n) = args.get(2) {
        cfg.at_once = n;
    }
    println!(
        "soak: {} calls in a row over {} lanes, then {} at once with faults",
        cfg.in_a_row, cfg.lanes, cfg.at_once
    );
    let total = (cfg.in_a_row + cfg.at_once) as u64;
    let p = cfg.progress.clone();
    let shown = progress::Progress::start(
        std::process::id(),
        "process",
        "calls",
        Duration::from_secs(5),
        move || {
            let (started, done) = (p.started() as u64, p.done() as u64);
            progress::Snapshot {
                phase: p.phase().name().to_owned(),
                pos: done,
                len: total,
                connected: started,
                running: started.saturating_sub(done),
                done,
            }
        },
    );
    let result = soak(&cfg);
    shown.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak could not run: {e}");
            std::process::exit(2);
        }
    };
    println!("{report}");
    if !report.leaks().is_empty() {
        std::process::exit(1);
    }
}
