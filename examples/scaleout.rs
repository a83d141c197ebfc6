//! Scale-out run: several bridge processes (the example server) behind HAProxy, simulated
//! calls through the balancer as Twilio makes them (signed webhook, then the signed stream the
//! TwiML names, presenting its one-time token), and a SIGTERM to one instance in the middle.
//! Reports calls, calls dropped, agent audio lost, caller audio lost (what the callers sent
//! against what reached the model), model connections against answered webhooks (each
//! instance opens and configures the model session at its webhook, a warm model, and only
//! the stream routed back to that instance can claim it), where calls went after the SIGTERM,
//! and how long the drained instance took to exit.
//!
//! ```text
//! apt-get install -y haproxy
//! cargo build --examples
//! target/debug/examples/scaleout --instances 3 --calls 30 --spread 10 --sigterm-at 4
//! ```
//!
//! Options: `--instances K` (3), `--calls N` (30), `--spread S` (calls start evenly over S
//! seconds, 10), `--sigterm-at S` (4), `--reply-ms MS` (the agent's answer, 3000), `--bridge
//! PATH` (`target/debug/examples/twilio_server`), `--haproxy PATH` (`haproxy`), `--port P`
//! (the balancer's port, 18080; instances take the next K ports).
//!
//! Routing: each instance runs with `INSTANCE_ID=bI`, so its webhook's TwiML points the stream
//! at `/media-stream/bI` (and `<Connect action>` at `/call-ended/bI`); HAProxy sends webhooks round-robin to the instances whose
//! `GET /readyz` answers 200 (`option httpchk`), and each stream by its path to the instance
//! that answered its webhook, ready or not (a draining instance still takes the streams of the
//! calls it answered). The instances run with `TWILIO_AUTH_TOKEN` and `PUBLIC_URL` set, so
//! webhooks and stream upgrades are signed, streams carry one-time tokens and the model session
//! is opened at the webhook (`WARM_MODEL_POOL`'s default). The fake model and the simulated
//! callers run in this process on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use twilio_realtime::server::signature;
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};

/// The Twilio auth token the instances verify signatures with.
const AUTH: &str = "scaleout-auth-token";

/// The public origin Twilio would use: the balancer.
fn public_url(lb: SocketAddr) -> String {
    format!("https://{lb}")
}

struct Args {
    instances: usize,
    calls: usize,
    spread: f64,
    sigterm_at: f64,
    reply_ms: u32,
    bridge: String,
    haproxy: String,
    port: u16,
}

fn args() -> Args {
    let mut a = Args {
        instances: 3,
        calls: 30,
        spread: 10.0,
        sigterm_at: 4.0,
        reply_ms: 3000,
        bridge: "target/debug/examples/twilio_server".into(),
        haproxy: "haproxy".into(),
        port: 18080,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--instances" => a.instances = v.parse().expect("--instances K"),
            "--calls" => a.calls = v.parse().expect("--calls N"),
            "--spread" => a.spread = v.parse().expect("--spread S"),
            "--sigterm-at" => a.sigterm_at = v.parse().expect("--sigterm-at S"),
            "--reply-ms" => a.reply_ms = v.parse().expect("--reply-ms MS"),
            "--bridge" => a.bridge = v,
            "--haproxy" => a.haproxy = v,
            "--port" => a.port = v.parse().expect("--port P"),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn haproxy_cfg(lb: u16, ports: &[u16]) -> String {
    let mut c = format!(
        "global\n  maxconn 4000\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\nfrontend calls\n  bind 127.0.0.1:{lb}\n"
    );
    for i in 0..ports.len() {
        c.push_str(&format!(
            "  use_backend stream_b{i} if {{ path /media-stream/b{i} }} || {{ path /call-ended/b{i} }}\n"
        ));
    }
    c.push_str("  default_backend webhooks\n\nbackend webhooks\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  default-server inter 250ms fall 1 rise 2\n");
    for (i, p) in ports.iter().enumerate() {
        c.push_str(&format!("  server b{i} 127.0.0.1:{p} check\n"));
    }
    for (i, p) in ports.iter().enumerate() {
        c.push_str(&format!(
            "\nbackend stream_b{i}\n  server b{i} 127.0.0.1:{p}\n"
        ));
    }
    c
}

fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not come up");
        thread::sleep(Duration::from_millis(50));
    }
}

/// POSTs the signed call webhook through the balancer; returns the TwiML.
fn webhook(lb: SocketAddr, call_sid: &str) -> Result<String, String> {
    let form = [
        ("CallSid", call_sid),
        ("From", "+15550100"),
        ("To", "+15550199"),
        ("Direction", "inbound"),
    ];
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let sig = signature::compute(AUTH, &format!("{}/incoming-call", public_url(lb)), &form);
    let req = format!(
        "POST /incoming-call HTTP/1.1\r\nHost: {lb}\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(lb).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).map_err(|e| e.to_string())?;
    if !resp.starts_with("HTTP/1.1 200") {
        return Err(resp.lines().next().unwrap_or("no answer").to_owned());
    }
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default())
}

/// The stream URL, its path and the `<Parameter>`s of the TwiML, as Twilio reads them.
fn stream_of(twiml: &str) -> Result<(String, String, BTreeMap<String, String>), String> {
    let doc = roxmltree::Document::parse(twiml).map_err(|e| e.to_string())?;
    let stream = doc
        .descendants()
        .find(|n| n.has_tag_name("Stream"))
        .ok_or_else(|| format!("no <Stream> (refused?): {twiml}"))?;
    let url = stream.attribute("url").ok_or("no url")?;
    let path = url
        .split_once("://")
        .and_then(|(_, r)| r.find('/').map(|i| r[i..].to_owned()))
        .ok_or("url without a path")?;
    let params = stream
        .children()
        .filter(|n| n.has_tag_name("Parameter"))
        .filter_map(|p| Some((p.attribute("name")?.into(), p.attribute("value")?.into())))
        .collect();
    Ok((url.to_owned(), path, params))
}

/// Child processes, killed if the run panics half-way.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[derive(Debug)]
struct Outcome {
    started: Duration,
    instance: String,
    played_ms: u64,
    closed_by_bridge: bool,
    /// µ-law bytes the caller sent (160 a frame).
    caller_bytes: u64,
    /// The webhook was answered with a stream (the instance opened a model session for it).
    answered: bool,
    error: Option<String>,
}

fn one_call(lb: SocketAddr, n: usize, reply_ms: u32, t0: Instant) -> Outcome {
    let started = t0.elapsed();
    let sid = format!("CA{:032x}", 0x5ca1e000_u64 as u128 * 1_000_000 + n as u128);
    let fail = |e: String| Outcome {
        started,
        instance: "-".into(),
        played_ms: 0,
        closed_by_bridge: false,
        caller_bytes: 0,
        answered: false,
        error: Some(e),
    };
    let twiml = match webhook(lb, &sid) {
        Ok(t) => t,
        Err(e) => return fail(format!("webhook: {e}")),
    };
    let (url, path, params) = match stream_of(&twiml) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let instance = path.rsplit('/').next().unwrap_or("-").to_owned();
    let mut cfg = TwilioCallConfig::new(
        lb,
        vec![
            Segment::Speech(600),
            Segment::WaitForAgent {
                quiet_ms: 500,
                timeout_ms: 20_000,
            },
            Segment::HangUp,
        ],
    );
    cfg.path = path;
    cfg.headers.push((
        "X-Twilio-Signature".into(),
        signature::compute(AUTH, &url, &[]),
    ));
    cfg.call_sid = Some(sid);
    cfg.custom_parameters = params;
    cfg.keep_audio = false;
    cfg.max_duration = Duration::from_secs(60);
    match TwilioCall::run(cfg) {
        Ok(r) => Outcome {
            started,
            instance,
            played_ms: r.played_ms(),
            closed_by_bridge: r.closed_by_bridge,
            caller_bytes: r.frames_sent * 160,
            answered: true,
            error: (r.played_ms() != u64::from(reply_ms))
                .then(|| format!("heard {} of {reply_ms} ms", r.played_ms())),
        },
        Err(e) => Outcome {
            instance,
            answered: true,
            ..fail(format!("stream: {e}"))
        },
    }
}

fn main() {
    let a = args();
    let model = FakeModel::start(FakeModelConfig {
        default_reply: Reply::say(
            "Thank you for calling; this is the agent speaking.",
            a.reply_ms,
        ),
        // Counters only: the run would keep every append otherwise.
        keep_events: false,
        ..Default::default()
    })
    .expect("fake model");
    let dir = std::env::temp_dir().join(format!("scaleout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("work dir");
    let ports: Vec<u16> = (1..=a.instances as u16).map(|i| a.port + i).collect();
    let lb = SocketAddr::from(([127, 0, 0, 1], a.port));
    let mut bridges = Kids(
        ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let log = std::fs::File::create(dir.join(format!("b{i}.log"))).expect("log file");
                Command::new(&a.bridge)
                    .env_clear()
                    .env("PORT", p.to_string())
                    .env("BIND_ADDR", "127.0.0.1")
                    .env("OPENAI_API_KEY", "sk-test")
                    .env("OPENAI_REALTIME_URL", model.url())
                    .env("INSTANCE_ID", format!("b{i}"))
                    .env("TWILIO_AUTH_TOKEN", AUTH)
                    .env("PUBLIC_URL", public_url(lb))
                    .env("RUST_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("start the bridge (build it: cargo build --examples)")
            })
            .collect(),
    );
    for p in &ports {
        wait_port(SocketAddr::from(([127, 0, 0, 1], *p)));
    }
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, haproxy_cfg(a.port, &ports)).expect("haproxy.cfg");
    let haproxy = Command::new(&a.haproxy)
        .arg("-f")
        .arg(&cfg_path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy (apt-get install -y haproxy)");
    let mut haproxy = Kids(vec![haproxy]);
    wait_port(lb);
    thread::sleep(Duration::from_millis(1000)); // the first health checks pass (rise 2)
    eprintln!(
        "{} instances behind haproxy on {lb}; {} calls over {} s; SIGTERM to b0 at {} s",
        a.instances, a.calls, a.spread, a.sigterm_at
    );

    let t0 = Instant::now();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut callers = Vec::new();
    let (reply_ms, calls, spread) = (a.reply_ms, a.calls, a.spread);
    let starter = {
        let outcomes = outcomes.clone();
        thread::spawn(move || {
            for n in 0..calls {
                let at = Duration::from_secs_f64(spread * n as f64 / calls.max(1) as f64);
                if let Some(wait) = at.checked_sub(t0.elapsed()) {
                    thread::sleep(wait);
                }
                let outcomes = outcomes.clone();
                callers.push(thread::spawn(move || {
                    let o = one_call(lb, n, reply_ms, t0);
                    outcomes.lock().unwrap().push(o);
                }));
            }
            for c in callers {
                let _ = c.join();
            }
        })
    };
    thread::sleep(Duration::from_secs_f64(a.sigterm_at));
    let sigterm = t0.elapsed();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(bridges.0[0].id() as i32, libc::SIGTERM) };
    let exited = loop {
        if let Ok(Some(status)) = bridges.0[0].try_wait() {
            break Some((t0.elapsed() - sigterm, status));
        }
        if t0.elapsed() > sigterm + Duration::from_secs(120) {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    starter.join().expect("callers");
    let outcomes = outcomes.lock().unwrap();

    let dropped: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let cut = outcomes.iter().filter(|o| o.closed_by_bridge).count();
    let lost_ms: u64 = outcomes
        .iter()
        .filter(|o| o.error.is_none() || o.played_ms > 0)
        .map(|o| u64::from(a.reply_ms).saturating_sub(o.played_ms))
        .sum();
    let on_b0_live = outcomes
        .iter()
        .filter(|o| o.instance == "b0" && o.started < sigterm)
        .filter(|o| o.started + Duration::from_millis(u64::from(a.reply_ms) + 1500) > sigterm)
        .count();
    let mut after: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.started >= sigterm) {
        *after.entry(o.instance.as_str()).or_default() += 1;
    }
    let mut before: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.started < sigterm) {
        *before.entry(o.instance.as_str()).or_default() += 1;
    }
    println!("calls: {}", outcomes.len());
    println!(
        "dropped (no full answer heard, or refused): {}",
        dropped.len()
    );
    for d in &dropped {
        println!("  {:?}", d);
    }
    // Caller audio: every byte the callers sent should have reached the model (the bridge
    // adds silence only for timestamp gaps or a caller gone quiet, neither of which the
    // simulated callers do, so more received than sent would be padding, less is loss).
    let caller_sent: u64 = outcomes.iter().map(|o| o.caller_bytes).sum();
    let rec = model.recording();
    let caller_received = rec
        .appended_by_format
        .get("audio/pcmu")
        .copied()
        .unwrap_or(0);
    let caller_lost_ms = caller_sent.saturating_sub(caller_received) / 8;
    let not_pcmu: u64 = rec
        .appended_by_format
        .iter()
        .filter(|(f, _)| f.as_str() != "audio/pcmu")
        .map(|(_, b)| b)
        .sum();
    // One model connection per answered webhook: each opened warm at the webhook and claimed
    // by the stream the balancer routed back to that instance (a stream that reached another
    // instance would open a second, cold one).
    let answered = outcomes.iter().filter(|o| o.answered).count() as u64;
    println!("cut by a bridge: {cut}");
    println!("agent audio lost: {lost_ms} ms");
    println!(
        "caller audio: {caller_sent} bytes sent, {caller_received} reached the model as µ-law \
         ({not_pcmu} in another format); lost: {caller_lost_ms} ms"
    );
    println!(
        "model connections: {} for {answered} answered webhooks (opened warm at the webhook)",
        rec.connections
    );
    println!("calls by instance before the SIGTERM: {before:?}");
    println!("calls by instance after the SIGTERM: {after:?}");
    println!("calls on b0 around the SIGTERM (probably live): {on_b0_live}");
    match exited {
        Some((d, status)) => println!(
            "b0 exited {:.2} s after SIGTERM ({status})",
            d.as_secs_f64()
        ),
        None => println!("b0 did not exit within 120 s"),
    }
    println!("logs: {}", dir.display());

    let _ = haproxy.0[0].kill();
    let _ = haproxy.0[0].wait();
    for b in bridges.0.iter_mut().skip(1) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    }
    for b in bridges.0.iter_mut() {
        let _ = b.wait();
    }
    if !dropped.is_empty()
        || cut > 0
        || exited.is_none()
        || caller_lost_ms > 0
        || not_pcmu > 0
        || rec.connections != answered
    {
        std::process::exit(1);
    }
}
