//! How accurate is the barge-in truncation under network delay and jitter?
//!
//! ```text
//! cargo run --example bargein_jitter              # the README table (~2 min)
//! cargo run --example bargein_jitter -- --calls 4 --rounds 3 --settings 40:10
//! ```
//!
//! Runs many simulated barge-ins through the real session (the bridge server and the fake
//! Realtime model on 127.0.0.1, the Twilio call simulator as the caller) and compares the
//! `audio_end_ms` the bridge sent in `conversation.item.truncate` with what the simulated
//! caller had actually heard of that item when the `clear` landed (the simulator's ground
//! truth). Error = claimed − heard, in ms: positive means the model is told the caller heard
//! words they did not.
//!
//! A setting `D:J` is a one-way delay uniform in `[D − J, D + J]` ms, drawn independently for
//! every message in both directions; each direction is one TCP connection, so a message is
//! never delivered before the one sent ahead of it (the simulator's model).
//!
//! Two scenarios: the caller barges in while the model is still streaming the answer (a 12 s
//! answer sent at the fake model's 4× real time, interrupted 0.5–1.5 s into playback), and
//! after the model has finished sending it (a 4 s answer interrupted 1.2–2.2 s in). Each call
//! has several barge-ins in a row (the round-trip estimate carries over, as in a real call),
//! calls run concurrently, each with its own jitter seed.
//!
//! Columns: the error's median, 10th and 90th percentiles, extremes, the 90th percentile of
//! |error|, its mean, and how many claims were past what had been sent (must be 0).
//!
//! Options: `--calls N` calls per scenario and setting (default 12), `--rounds R` barge-ins
//! per call (default 5), `--concurrency C` calls at a time (default 12), `--settings
//! D:J,D:J,…` (default `0:0,20:5,40:10,80:20`), `--scenarios streaming,finished`, `--seed S`
//! (another set of jitter draws; default 0), `--raw` (print every barge-in).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twilio_realtime::agent::Agent;
use twilio_realtime::call::playback::MarkName;
use twilio_realtime::server::{Server, ServerConfig};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// The model is still sending the answer when the caller barges in.
    Streaming,
    /// The model sent the whole answer before the caller barges in.
    Finished,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Streaming => "during streaming",
            Scenario::Finished => "after the model finished",
        }
    }
    /// (answer length, earliest barge-in, spread of the barge-in point), ms.
    fn shape(self) -> (u32, u32, u32) {
        match self {
            Scenario::Streaming => (12_000, 500, 1000),
            Scenario::Finished => (4_000, 1200, 1000),
        }
    }
}

struct Opts {
    calls: usize,
    rounds: usize,
    concurrency: usize,
    settings: Vec<(u64, u64)>,
    scenarios: Vec<Scenario>,
    raw: bool,
    seed: u64,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        calls: 12,
        rounds: 5,
        concurrency: 12,
        settings: vec![(0, 0), (20, 5), (40, 10), (80, 20)],
        scenarios: vec![Scenario::Streaming, Scenario::Finished],
        raw: false,
        seed: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--calls" => o.calls = val()?.parse().map_err(|e| format!("--calls: {e}"))?,
            "--rounds" => o.rounds = val()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--concurrency" => {
                o.concurrency = val()?.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--settings" => {
                o.settings = val()?
                    .split(',')
                    .map(|s| {
                        let (d, j) = s.split_once(':').ok_or(format!("bad setting {s}"))?;
                        let d: u64 = d.parse().map_err(|e| format!("{s}: {e}"))?;
                        let j: u64 = j.parse().map_err(|e| format!("{s}: {e}"))?;
                        if j > d {
                            return Err(format!("{s}: jitter larger than the delay"));
                        }
                        Ok((d, j))
                    })
                    .collect::<Result<_, String>>()?
            }
            "--scenarios" => {
                o.scenarios = val()?
                    .split(',')
                    .map(|s| match s {
                        "streaming" => Ok(Scenario::Streaming),
                        "finished" => Ok(Scenario::Finished),
                        _ => Err(format!("unknown scenario {s}")),
                    })
                    .collect::<Result<_, String>>()?
            }
            "--raw" => o.raw = true,
            "--seed" => o.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    o.concurrency = o.concurrency.max(1);
    Ok(o)
}

fn agent() -> Agent {
    Agent::new("Bench", "You answer calls.")
}

/// One barge-in as measured.
#[derive(Debug, Clone)]
struct Sample {
    call: usize,
    round: usize,
    claimed: i64,
    heard: i64,
    sent_to_twilio: i64,
    accepted: bool,
}

fn script(s: Scenario, call: usize, rounds: usize) -> Vec<Segment> {
    let (_, earliest, spread) = s.shape();
    let mut v = vec![Segment::Silence(200), Segment::Speech(600)];
    for r in 0..rounds {
        // Spread the barge-in point over the answer (and over chunk boundaries).
        let k = (call * 7919 + r * 104_729) as u32;
        v.push(Segment::BargeIn {
            after_ms: earliest + k % spread,
            speech_ms: 600,
            timeout_ms: 15_000,
        });
    }
    v.push(Segment::Silence(400));
    v.push(Segment::HangUp);
    v
}

/// Milliseconds of each item's audio that reached "Twilio" (played or dropped by a clear).
fn sent_ms_by_item(report: &CallReport) -> BTreeMap<String, u64> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for c in &report.chunks {
        let Some(name) = &c.mark else { continue };
        if let Some(MarkName::Chunk { item_id, .. }) | Some(MarkName::Done { item_id, .. }) =
            MarkName::parse(name)
        {
            *m.entry(item_id.to_owned()).or_default() += c.bytes;
        }
    }
    m.values_mut().for_each(|v| *v /= 8);
    m
}

fn run_setting(
    o: &Opts,
    s: Scenario,
    (delay, jitter): (u64, u64),
) -> Result<Vec<Sample>, Box<dyn std::error::Error>> {
    let (answer_ms, _, _) = s.shape();
    let replies = o.calls * (o.rounds + 2) + 8;
    let model = FakeModel::start(FakeModelConfig {
        script: (0..replies)
            .map(|_| {
                Reply::say(
                    "This is a long answer that the caller interrupts.",
                    answer_ms,
                )
            })
            .collect(),
        keep_events: false,
        ..Default::default()
    })?;
    let mut cfg = ServerConfig::from_env();
    cfg.bind = "127.0.0.1:0".parse()?;
    cfg.public_url = None;
    cfg.twilio_auth_token = None;
    cfg.stream_token_ttl = None;
    cfg.session.model.url = model.url();
    cfg.session.model.api_key = Some("bench-key-not-used".into());
    cfg.shutdown_grace = Duration::from_secs(5);
    let server = Server::bind(cfg, Arc::new(agent))?;
    let addr = server.local_addr();
    let stopper = server.stopper();
    let server = std::thread::spawn(move || server.run());

    let next = AtomicUsize::new(0);
    let reports: Mutex<Vec<(usize, CallReport)>> = Mutex::new(Vec::new());
    let failures = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..o.concurrency.min(o.calls) {
            scope.spawn(|| loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= o.calls {
                    break;
                }
                let mut c = TwilioCallConfig::new(addr, script(s, call, o.rounds));
                c.one_way_delay = Duration::from_millis(delay - jitter);
                c.jitter = Duration::from_millis(2 * jitter);
                c.seed = 1 + call as u64 * 7 + delay * 1000 + jitter + o.seed * 1_000_003;
                c.max_duration = Duration::from_secs(60);
                c.keep_audio = false;
                match TwilioCall::run(c) {
                    Ok(r) => {
                        if let Ok(mut v) = reports.lock() {
                            v.push((call, r));
                        }
                    }
                    Err(e) => {
                        eprintln!("call {call} failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while stopper.live_calls() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    stopper.stop();
    let _ = server.join();
    let rec = model.recording();

    let mut samples = Vec::new();
    let reports = reports.into_inner().unwrap_or_default();
    for (call, report) in &reports {
        let heard = report.heard_ms_by_item();
        let sent = sent_ms_by_item(report);
        let mut round = 0;
        for t in rec.truncations.iter() {
            let Some(&h) = heard.get(&t.item_id) else {
                continue;
            };
            samples.push(Sample {
                call: *call,
                round,
                claimed: t.audio_end_ms as i64,
                heard: h as i64,
                sent_to_twilio: sent.get(&t.item_id).copied().unwrap_or(0) as i64,
                accepted: t.accepted,
            });
            round += 1;
        }
    }
    let f = failures.load(Ordering::Relaxed);
    if f > 0 {
        eprintln!("{f} call(s) failed");
    }
    Ok(samples)
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bargein_jitter: {e}");
            std::process::exit(2);
        }
    };
    let t0 = Instant::now();
    println!(
        "barge-in truncation error (claimed audio_end_ms − heard), ms; {} calls × {} barge-ins per row",
        o.calls, o.rounds
    );
    println!(
        "| scenario | one-way delay | n | median | p10 | p90 | min | max | p90 of abs | mean abs | over sent |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &s in &o.scenarios {
        for &setting in &o.settings {
            let samples = match run_setting(&o, s, setting) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("bargein_jitter: {e}");
                    std::process::exit(1);
                }
            };
            if o.raw {
                for x in &samples {
                    eprintln!(
                        "{} {}:{} call {} round {}: claimed {} heard {} sent {} err {:+}",
                        s.name(),
                        setting.0,
                        setting.1,
                        x.call,
                        x.round,
                        x.claimed,
                        x.heard,
                        x.sent_to_twilio,
                        x.claimed - x.heard
                    );
                }
            }
            let mut err: Vec<i64> = samples.iter().map(|x| x.claimed - x.heard).collect();
            err.sort_unstable();
            let over = samples
                .iter()
                .filter(|x| !x.accepted || x.claimed > x.sent_to_twilio)
                .count();
            let mut abs: Vec<i64> = err.iter().map(|e| e.abs()).collect();
            abs.sort_unstable();
            let mean_abs = if err.is_empty() {
                0.0
            } else {
                err.iter().map(|e| e.abs() as f64).sum::<f64>() / err.len() as f64
            };
            println!(
                "| {} | {} ± {} ms | {} | {:+} | {:+} | {:+} | {:+} | {:+} | {} | {:.1} | {} |",
                s.name(),
                setting.0,
                setting.1,
                err.len(),
                pct(&err, 50.0),
                pct(&err, 10.0),
                pct(&err, 90.0),
                err.first().copied().unwrap_or(0),
                err.last().copied().unwrap_or(0),
                pct(&abs, 90.0),
                mean_abs,
                over
            );
        }
    }
    eprintln!("done in {:.0} s", t0.elapsed().as_secs_f64());
}
