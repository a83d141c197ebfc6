//! Cold vs warm model: how long a caller waits after Twilio's `start`.
//!
//! ```text
//! cargo run --release --example latency            # 20 calls per row
//! cargo run --release --example latency -- 40      # 40 calls per row
//! ```
//!
//! Runs the bundled server with signed webhooks and one-time stream tokens against the fake
//! Realtime model, whose WebSocket handshake is delayed by 300 ms and by 1 s (a TLS + HTTP
//! upgrade to a far region; see `sim::fake_model::Faults::accept_delay`) and whose every
//! client event → server event exchange costs a network round trip of 100 ms and 300 ms
//! respectively (`Faults::round_trip`), with the warm model off (`WARM_MODEL_POOL=0`: the
//! model connection opens after `start`, then the session is configured) and on (opened and
//! configured at the webhook). Each call is Twilio's signed webhook and then the media
//! stream, with a greeting (`AGENT_GREETING`). The stream starts either at once after the
//! webhook (0 ms: the least a warm model can gain; Twilio itself needs time to run the TwiML
//! and open the stream's own TLS connection to us, not simulated) or 1 s later (e.g. a 1 s
//! `<Say>`, `GREETING`, which Twilio plays before `<Connect>`). Per row: median and p95 of
//! - start → model ready: `start` leaving the simulated Twilio to the greeting's
//!   `response.create` reaching the model (the bridge sends it the moment the session is
//!   confirmed µ-law and the stream has started);
//! - start → first audio: `start` leaving the simulated Twilio to the first byte of agent
//!   audio arriving there.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use twilio_realtime::call::Greeting;
use twilio_realtime::server::{signature, Server, ServerConfig};
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Faults, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};

const AUTH: &str = "latency-example-auth-token";
const PUBLIC: &str = "https://bridge.example.test";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
        .max(1);
    println!("{calls} calls per row; greeting on\n");
    println!("| model handshake | round trip | model | webhook → stream | start → model ready (median / p95) | start → first agent audio (median / p95) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (delay_ms, rtt_ms) in [(300u64, 100u64), (1000, 300)] {
        for (warm, gap_ms) in [(false, 0u64), (true, 0), (true, 1000)] {
            let gap = Duration::from_millis(gap_ms);
            let (delay, rtt) = (
                Duration::from_millis(delay_ms),
                Duration::from_millis(rtt_ms),
            );
            match row(delay, rtt, warm, gap, calls) {
                Ok((ready, audio)) => println!(
                    "| {delay_ms} ms | {rtt_ms} ms | {} | {gap_ms} ms | {:.0} / {:.0} ms | {:.0} / {:.0} ms |",
                    if warm { "warm" } else { "cold" },
                    pct(&ready, 0.5),
                    pct(&ready, 0.95),
                    pct(&audio, 0.5),
                    pct(&audio, 0.95),
                ),
                Err(e) => {
                    eprintln!("latency failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// The `q` quantile (nearest rank) of `v`, in milliseconds.
fn pct(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn row(
    delay: Duration,
    round_trip: Duration,
    warm: bool,
    gap: Duration,
    calls: usize,
) -> Result<(Vec<f64>, Vec<f64>), Box<dyn std::error::Error>> {
    let model = FakeModel::start(FakeModelConfig {
        default_reply: Reply::say("Hello, how can I help?", 300),
        faults: Faults {
            accept_delay: delay,
            round_trip,
            ..Default::default()
        },
        // The client events' arrival times tell when each call's greeting went out.
        keep_events: true,
        ..Default::default()
    })?;
    let mut cfg = ServerConfig::new();
    cfg.bind = "127.0.0.1:0".parse()?;
    cfg.public_url = Some(PUBLIC.into());
    cfg.twilio_auth_token = Some(AUTH.into());
    cfg.stream_token_ttl = Some(Duration::from_secs(30));
    cfg.warm_model_pool = if warm { 100 } else { 0 };
    cfg.session.model.url = model.url();
    cfg.session.model.api_key = Some("latency-key-not-used".into());
    cfg.session.call.greeting = Some(Greeting::Instructions("Greet the caller.".into()));
    let server = Server::bind(cfg, || {
        twilio_realtime::agent::Agent::new("Front", "You answer the phone.")
    })?;
    let addr = server.local_addr();
    let stopper = server.stopper();
    let running = std::thread::spawn(move || server.run());

    let mut audio = Vec::with_capacity(calls);
    let mut ready = Vec::with_capacity(calls);
    for n in 0..calls {
        let call_sid = format!("CA{n:032x}");
        let token = webhook(addr, &call_sid)?;
        // What Twilio does between the webhook and the stream (fetch and run the TwiML: a
        // `<Say>` before `<Connect>` plays first), here a fixed pause.
        std::thread::sleep(gap);
        let mut call = TwilioCallConfig::new(
            addr,
            vec![
                Segment::WaitForAgent {
                    quiet_ms: 200,
                    timeout_ms: 15_000,
                },
                Segment::HangUp,
            ],
        );
        call.call_sid = Some(call_sid);
        call.custom_parameters.insert("token".into(), token);
        call.headers.push((
            "X-Twilio-Signature".into(),
            signature::compute(AUTH, "wss://bridge.example.test/media-stream", &[]),
        ));
        let report = TwilioCall::run(call)?;
        // `start` leaves the simulator at its t0 (no network delay configured).
        let first = report
            .chunks
            .first()
            .ok_or("the agent never spoke (no greeting heard)")?;
        audio.push(first.arrival.as_secs_f64() * 1000.0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stopper.live_calls() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Calls run one after another: this call's greeting is the first `response.create`
        // after its `start`.
        let started = report
            .began
            .ok_or("the simulator did not say when it started")?;
        let greeted = model
            .recording()
            .events
            .iter()
            .find(|(at, e)| *at >= started && e.contains(r#""type":"response.create""#))
            .map(|(at, _)| *at)
            .ok_or("no greeting reached the model")?;
        ready.push(greeted.saturating_duration_since(started).as_secs_f64() * 1000.0);
    }
    stopper.stop();
    let _ = running.join();
    Ok((ready, audio))
}

/// Twilio's signed voice webhook; the stream token from its TwiML.
fn webhook(addr: SocketAddr, call_sid: &str) -> Result<String, Box<dyn std::error::Error>> {
    let form = [
        ("CallSid", call_sid),
        ("From", "+15550100"),
        ("To", "+15550199"),
    ];
    let sig = signature::compute(AUTH, &format!("{PUBLIC}/incoming-call"), &form);
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B")))
        .collect::<Vec<_>>()
        .join("&");
    let mut http = TcpStream::connect(addr)?;
    write!(
        http,
        "POST /incoming-call HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    http.read_to_string(&mut resp)?;
    let key = r#"<Parameter name="token" value=""#;
    let at = resp
        .find(key)
        .ok_or_else(|| format!("no stream token in the webhook's answer: {resp}"))?;
    let rest = &resp[at + key.len()..];
    Ok(rest[..rest.find('"').ok_or("unterminated token")?].to_owned())
}
