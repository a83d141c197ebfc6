//! The example server binary (`examples/twilio_server.rs`), run as a process and driven by the
//! Twilio simulator and the fake model: TwiML, routes, signatures, SIGTERM during a call, and
//! a log at `trace` with no secret in it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use twilio_realtime::server::signature;
use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
use twilio_realtime::sim::twilio_rest::{FakeTwilio, FakeTwilioConfig};

const TOKEN: &str = "test-auth-token";
const PUBLIC: &str = "https://bridge.example.test";

struct Proc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proc {
    /// Everything the server logged so far (at debug level).
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The example server, built for the profile and target directory of this test binary.
///
/// `cargo test` leaves `examples/twilio_server` beside the test binaries, but
/// `cargo test --all-targets` builds examples as test harnesses instead, and a binary found
/// there may be left over from an older build. So the test asks cargo for it: a no-op when it
/// is up to date, and cargo says where it is (`executable` in its JSON messages). Cargo does
/// not hold the build lock while tests run (`cargo test` and `cargo nextest run` alike).
/// Features are not forwarded: the example needs none.
fn example_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_example("twilio_server"))
}

fn build_example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target-dir>/[<triple>/]<profile-dir>/deps/<this test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary path {}", exe.display()));
    let target_dir = profile_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .unwrap_or_else(|| panic!("no cargo target directory above {}", exe.display()));
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("unexpected profile directory {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", name, "--profile", profile])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if let Some(triple) = profile_dir.parent().filter(|p| *p != target_dir) {
        cmd.arg("--target").arg(triple.file_name().unwrap());
    }
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "cargo build --example {name} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {name} executable"))
}

/// Runs the demo with `args` in a fresh directory: its exit status, stdout, and the
/// model-event log it wrote.
fn run_demo(args: &[&str]) -> (std::process::ExitStatus, String, String, String) {
    let demo = build_example("demo");
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "twilio-realtime-demo-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(demo)
        .args(args)
        .current_dir(&dir)
        .env_remove("TWILIO_AUTH_TOKEN")
        .env_remove("OPENAI_API_KEY")
        .env_remove("MODEL_API")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let events =
        std::fs::read_to_string(dir.join("out/demo/model-events.jsonl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status, text, err, events)
}

/// `cargo run --example demo`, the README's first command: the caller is greeted by the name
/// found for their `From`, a tool answers from the caller context, the goodbye is heard in
/// full before the agent's hang-up closes the stream, and `/call-ended`'s TwiML is printed.
#[test]
fn the_demo_greets_by_name_uses_the_caller_context_and_hangs_up_after_the_goodbye() {
    let (status, text, err, events) = run_demo(&[]);
    assert!(status.success(), "{text}{err}");
    for expected in [
        // the agent chosen from From: the customer record's name in its instructions
        "The caller is Ada, a customer: greet them by name.",
        "said: \"Hello Ada, welcome back!",
        // a tool answering from the call's From
        "tool next_appointment -> \"Ada (+15550100): next appointment",
        // the built-in end_call, after the goodbye was heard in full
        "ending: hung up by the agent",
        "Goodbye: the caller heard 2500 of 2500 ms; the bridge closed the stream",
        "closed: hung up by the agent",
        // Twilio's request to the <Connect action> URL
        "POST /call-ended answered with TwiML",
        "<Hangup/>",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(events
        .lines()
        .next()
        .unwrap_or("")
        .contains("\"session.update\""));
}

/// `cargo run --example demo -- --model live`: the same call against the fake GPT-Live: the
/// greeting, both tools, the model stopping by itself at the barge-in (no clear), the goodbye
/// heard in full, and every client event written to `out/demo/model-events.jsonl`.
#[test]
fn the_demo_runs_the_same_call_on_gpt_live() {
    let (status, text, err, events) = run_demo(&["--model", "live"]);
    assert!(status.success(), "{text}{err}");
    for expected in [
        "fake GPT-Live model",
        "said: \"Hello Ada, welcome back!",
        "tool get_weather -> ",
        "tool next_appointment -> \"Ada (+15550100): next appointment",
        "the model stopped by itself 1 time(s)",
        "0 clear(s)",
        "Goodbye: the caller heard 2500 of 2500 ms; the bridge closed the stream",
        "closed: hung up by the agent",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let types: Vec<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("session.start"));
    assert_eq!(types.last().map(String::as_str), Some("session.close"));
    assert!(types.iter().any(|t| t == "session.input_audio.append"));
    assert!(
        !events.contains("\"audio\":\"/"),
        "audio payloads are elided"
    );
}

/// `MODEL_API=live` and `OPENAI_LIVE_URL`: the example server bridges Twilio calls to GPT-Live.
#[test]
fn model_api_live_selects_gpt_live() {
    use twilio_realtime::sim::fake_live::{FakeLive, FakeLiveConfig, LiveReply};
    let live = FakeLive::start(FakeLiveConfig {
        script: vec![LiveReply::say("Hello from GPT-Live.", 600)],
        require_key: Some("test-key".into()),
        ..Default::default()
    })
    .unwrap();
    let p = start_with(
        "ws://127.0.0.1:9/unused-realtime",
        None,
        "info",
        &[("MODEL_API", "live"), ("OPENAI_LIVE_URL", &live.url())],
    );
    let report = TwilioCall::run(TwilioCallConfig::new(
        p.addr,
        vec![
            Segment::WaitForAgent {
                quiet_ms: 600,
                timeout_ms: 10_000,
            },
            Segment::HangUp,
        ],
    ))
    .unwrap();
    let rec = live.recording();
    assert_eq!(rec.connections, 1);
    assert_eq!(rec.starts.len(), 1);
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    // AGENT_GREETING became commentary worded as an instruction.
    assert!(rec.commentary[0].starts_with("Greet the caller."));
    assert!(report.chunks.iter().any(|c| c.audible));
    // The per-call summary line names GPT-Live's model and the session id the server gave.
    let summary = || {
        p.log()
            .lines()
            .filter(|l| l.contains("twilio_realtime::calls"))
            .find_map(|l| serde_json::from_str::<serde_json::Value>(&l[l.find('{')?..]).ok())
    };
    common::wait_until("the summary line", Duration::from_secs(10), || {
        summary().is_some()
    });
    let line = summary().unwrap();
    assert_eq!(line["model"], "gpt-live-1", "{line}");
    assert_eq!(
        line["live_session_id"],
        rec.session_ids[0].as_str(),
        "{line}"
    );
}

fn start(model_url: &str, token: Option<&str>) -> Proc {
    start_with(model_url, token, "debug", &[])
}

fn start_logging(model_url: &str, token: Option<&str>, rust_log: &str) -> Proc {
    start_with(model_url, token, rust_log, &[])
}

fn start_with(
    model_url: &str,
    token: Option<&str>,
    rust_log: &str,
    extra_env: &[(&str, &str)],
) -> Proc {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let log = std::env::temp_dir().join(format!(
        "twilio-realtime-server-{}-{}.log",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut cmd = Command::new(example_binary());
    // Hermetic: the server sees only what this test sets (an exported TWILIO_AUTH_TOKEN,
    // STREAM_TOKENS, RUST_LOG or OPENAI_* must not change the result). PATH and the library
    // path are kept so the binary starts as it would for a user.
    cmd.env_clear();
    for keep in ["PATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("OPENAI_API_KEY", "test-key")
        .env("OPENAI_REALTIME_URL", model_url)
        .env("PUBLIC_URL", PUBLIC)
        .env("GREETING", "Connecting you now.")
        .env("AGENT_GREETING", "Greet the caller.")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(t) = token {
        cmd.env("TWILIO_AUTH_TOKEN", t);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Proc { child, addr, log }
}

fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
    common::http_request(addr, raw)
}

fn webhook(addr: SocketAddr, sig: Option<&str>) -> (u16, String) {
    let body = "CallSid=CA0001&From=%2B15550100&To=%2B15550199";
    common::post_form(addr, "/incoming-call", body, sig)
}

fn form() -> [(&'static str, &'static str); 3] {
    [
        ("CallSid", "CA0001"),
        ("From", "+15550100"),
        ("To", "+15550199"),
    ]
}

#[test]
fn twiml_routes_and_errors() {
    let model = FakeModel::start(FakeModelConfig::default()).unwrap();
    let p = start(&model.url(), None);
    let (status, resp) = webhook(p.addr, None);
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("Content-Type: text/xml"));
    let xml = resp.split("\r\n\r\n").nth(1).unwrap();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    assert!(xml.contains("<Say>Connecting you now.</Say>"));
    assert!(
        xml.contains("<Connect action=\"https://bridge.example.test/call-ended\">")
            && xml.contains("</Connect>")
            && xml.trim_end().ends_with("</Response>")
    );
    assert!(xml.contains("<Stream url=\"wss://bridge.example.test/media-stream\">"));
    assert!(xml.contains("<Parameter name=\"caller\" value=\"+15550100\"/>"));
    // balanced tags
    for tag in ["Response", "Connect", "Stream"] {
        assert_eq!(
            xml.matches(&format!("<{tag}")).count(),
            xml.matches(&format!("</{tag}>")).count(),
            "{tag}"
        );
    }
    assert_eq!(
        request(p.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0,
        200
    );
    assert_eq!(
        request(p.addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").0,
        404
    );
    assert_eq!(
        request(p.addr, "GET /incoming-call HTTP/1.1\r\nHost: x\r\n\r\n").0,
        405
    );
    assert_eq!(
        request(p.addr, "DELETE /media-stream HTTP/1.1\r\nHost: x\r\n\r\n").0,
        405
    );
    assert_eq!(
        request(p.addr, "GET /media-stream HTTP/1.1\r\nHost: x\r\n\r\n").0,
        400
    );
    assert_eq!(request(p.addr, "BROKEN\r\n\r\n").0, 400);
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(40_000));
    assert_eq!(request(p.addr, &big).0, 431);
}

#[test]
fn signatures_are_required_when_a_token_is_set() {
    let model = FakeModel::start(FakeModelConfig {
        default_reply: (Reply::say("Hi.", 300)),
        ..Default::default()
    })
    .unwrap();
    let p = start(&model.url(), Some(TOKEN));
    // webhook: missing, wrong, right
    assert_eq!(webhook(p.addr, None).0, 403);
    let wrong = signature::compute("other-token", &format!("{PUBLIC}/incoming-call"), &form());
    assert_eq!(webhook(p.addr, Some(&wrong)).0, 403);
    let right = signature::compute(TOKEN, &format!("{PUBLIC}/incoming-call"), &form());
    assert_eq!(webhook(p.addr, Some(&right)).0, 200);
    // The signed webhook opens the call's model connection (a warm model); nothing else does.
    common::wait_until("the warm connection", Duration::from_secs(10), || {
        model.recording().connections == 1
    });
    // the upgrade: missing and wrong signatures are refused before any model connection
    let script = || vec![Segment::Silence(200), Segment::HangUp];
    let err = TwilioCall::run(TwilioCallConfig::new(p.addr, script())).unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut cfg = TwilioCallConfig::new(p.addr, script());
    cfg.headers.push((
        "X-Twilio-Signature".into(),
        signature::compute(TOKEN, "wss://evil.example/media-stream", &[]),
    ));
    assert!(TwilioCall::run(cfg)
        .unwrap_err()
        .to_string()
        .contains("403"));
    assert_eq!(
        model.recording().connections,
        1,
        "no model credits spent on refused calls (only the signed webhook's)"
    );
    // with and without a trailing slash in the signed URL (each call with its own token)
    for url in [
        "wss://bridge.example.test/media-stream",
        "wss://bridge.example.test/media-stream/",
    ] {
        let token = stream_token(p.addr, &right);
        let mut cfg = TwilioCallConfig::new(
            p.addr,
            vec![
                Segment::WaitForAgent {
                    quiet_ms: 300,
                    timeout_ms: 10_000,
                },
                Segment::HangUp,
            ],
        );
        cfg.headers.push((
            "X-Twilio-Signature".into(),
            signature::compute(TOKEN, url, &[]),
        ));
        cfg.call_sid = Some("CA0001".into());
        cfg.custom_parameters.insert("token".into(), token);
        let report = TwilioCall::run(cfg).unwrap();
        assert_eq!(report.played_ms(), 300, "{url}: the call works");
    }
}

/// Calls the signed webhook (CallSid CA0001) and takes the one-time token out of its TwiML.
fn stream_token(addr: SocketAddr, sig: &str) -> String {
    let (status, body) = webhook(addr, Some(sig));
    assert_eq!(status, 200, "{body}");
    common::twiml_token(&body).unwrap_or_else(|| panic!("no token parameter in {body}"))
}

#[test]
fn one_time_stream_tokens_are_checked_before_the_model_is_called() {
    let model = FakeModel::start(FakeModelConfig {
        default_reply: (Reply::say("Hi.", 300)),
        ..Default::default()
    })
    .unwrap();
    let p = start(&model.url(), Some(TOKEN));
    let sig = signature::compute(TOKEN, &format!("{PUBLIC}/incoming-call"), &form());
    let upgrade_sig = signature::compute(TOKEN, "wss://bridge.example.test/media-stream", &[]);
    let call = |token: Option<&str>, call_sid: &str| {
        let mut cfg = TwilioCallConfig::new(
            p.addr,
            vec![
                Segment::WaitForAgent {
                    quiet_ms: 300,
                    timeout_ms: 5_000,
                },
                Segment::HangUp,
            ],
        );
        cfg.headers
            .push(("X-Twilio-Signature".into(), upgrade_sig.clone()));
        cfg.call_sid = Some(call_sid.into());
        if let Some(t) = token {
            cfg.custom_parameters.insert("token".into(), t.into());
        }
        TwilioCall::run(cfg).unwrap()
    };

    // A correctly signed upgrade without a token, with a made-up one, or with a token minted
    // for another CallSid: the stream is closed and no model session is opened.
    let refused = |r: &twilio_realtime::sim::twilio_call::CallReport| {
        r.closed_by_bridge && r.played_ms() == 0
    };
    assert!(refused(&call(None, "CA0001")));
    assert!(refused(&call(
        Some("00112233445566778899aabbccddeeff"),
        "CA0001"
    )));
    assert_eq!(model.recording().connections, 0, "no model credits spent");
    // Only a signed webhook opens one (the warm model), for its own call.
    let t = stream_token(p.addr, &sig);
    common::wait_until("the warm connection", Duration::from_secs(10), || {
        model.recording().connections == 1
    });
    assert!(refused(&call(Some(&t), "CA0002")));
    // that token is spent now, even for the right call
    assert!(refused(&call(Some(&t), "CA0001")));
    assert_eq!(model.recording().connections, 1, "refusals spent nothing");

    // The real thing works once, on the connection CA0001's first webhook opened (held for
    // CA0001 until its token's lifetime is over; the repeated webhook opens no second one);
    // a replay is refused.
    let t = stream_token(p.addr, &sig);
    let ok = call(Some(&t), "CA0001");
    assert_eq!(ok.played_ms(), 300, "{:?}", ok.timeline);
    assert_eq!(model.recording().connections, 1);
    assert!(refused(&call(Some(&t), "CA0001")));
    assert_eq!(model.recording().connections, 1, "the replay cost nothing");

    // Neither the stream tokens nor the auth token nor the API key appear in the log, which
    // does say why each stream was refused.
    let log = p.log();
    assert!(log.contains("stream token"), "{log}");
    for secret in [t.as_str(), TOKEN, "test-key"] {
        assert!(!log.contains(secret), "{secret:?} leaked into the log");
    }
}

#[test]
fn sigterm_during_a_call_lets_it_finish() {
    let model = FakeModel::start(FakeModelConfig {
        default_reply: (Reply::say("Hello, I am still talking to you.", 2500)),
        ..Default::default()
    })
    .unwrap();
    let mut p = start(&model.url(), None);
    let addr = p.addr;
    let call = std::thread::spawn(move || {
        TwilioCall::run(TwilioCallConfig::new(
            addr,
            vec![
                Segment::WaitForAgent {
                    quiet_ms: 300,
                    timeout_ms: 10_000,
                },
                Segment::HangUp,
            ],
        ))
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) }, 0);
    let report = call.join().unwrap();
    assert!(
        !report.closed_by_bridge,
        "the call was not cut by the shutdown"
    );
    assert_eq!(report.played_ms(), 2500, "the whole greeting played");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after the call"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    eprintln!(
        "server exited {:?} after SIGTERM, once the call ended",
        t0.elapsed()
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "no longer accepting"
    );
}

#[test]
fn call_recording_dir_records_every_call() {
    let model = FakeModel::start(FakeModelConfig {
        default_reply: Reply::say("Hello there.", 600),
        ..Default::default()
    })
    .unwrap();
    let dir =
        std::env::temp_dir().join(format!("twilio-realtime-recordings-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_str = dir.to_str().expect("a UTF-8 temp dir");
    let p = start_with(
        &model.url(),
        None,
        "info",
        &[("CALL_RECORDING_DIR", dir_str)],
    );
    let mut call = TwilioCallConfig::new(
        p.addr,
        vec![
            Segment::WaitForAgent {
                quiet_ms: 300,
                timeout_ms: 10_000,
            },
            Segment::HangUp,
        ],
    );
    call.call_sid = Some("CA000000000000000000000000000000ee".into());
    let report = TwilioCall::run(call).unwrap();
    assert!(report.played_ms() > 0, "the greeting played");
    // The file is complete once the session has shut down.
    let file = dir.join("CA000000000000000000000000000000ee.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let entries = twilio_realtime::session::recording::read_file(&file).unwrap_or_default();
        if entries.iter().any(|e| {
            matches!(
                e.record,
                twilio_realtime::session::recording::Record::Closed { .. }
            )
        }) {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "no complete recording at {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(matches!(
        entries[0].record,
        twilio_realtime::session::recording::Record::Header { .. }
    ));
    assert!(entries.iter().any(|e| matches!(
        e.record,
        twilio_realtime::session::recording::Record::AgentAudio { .. }
    )));
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The longest run of base64 alphabet characters in `s`, and the run (a 20 ms audio payload is
/// 216 of them; a hex dump of a frame is longer still; nothing else the server logs comes near).
fn longest_base64_run(s: &str) -> (usize, &str) {
    let mut best = (0, "");
    let mut start = None;
    for (i, c) in s.char_indices().chain(std::iter::once((s.len(), ' '))) {
        let b64 = c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=';
        match (b64, start) {
            (true, None) => start = Some(i),
            (false, Some(st)) => {
                if i - st > best.0 {
                    best = (i - st, &s[st..i]);
                }
                start = None;
            }
            _ => {}
        }
    }
    best
}

/// Issue 16 item 5: at `RUST_LOG=trace`, through a whole call (signed webhook, one-time stream
/// token in `start`, caller speech, a tool call, agent audio with marks, a barge-in, hang-up),
/// the server's log holds no audio payload, no API key, no auth token and no stream token.
#[test]
fn at_trace_the_log_holds_no_payload_key_or_token() {
    let model = FakeModel::start(FakeModelConfig {
        require_key: Some("test-key".into()),
        script: vec![
            Reply::call("get_weather", r#"{"location":"Paris"}"#),
            Reply::say("It is eighteen degrees and sunny in Paris today.", 1500),
            Reply::say(
                "Let me tell you a much longer story about the weather.",
                3000,
            ),
        ],
        ..Default::default()
    })
    .unwrap();
    let p = start_logging(&model.url(), Some(TOKEN), "trace");
    let sig = signature::compute(TOKEN, &format!("{PUBLIC}/incoming-call"), &form());
    let token = stream_token(p.addr, &sig);
    let mut cfg = TwilioCallConfig::new(
        p.addr,
        vec![
            Segment::Silence(200),
            Segment::Speech(900),
            Segment::WaitForAgent {
                quiet_ms: 400,
                timeout_ms: 10_000,
            },
            Segment::Speech(900),
            Segment::BargeIn {
                after_ms: 500,
                speech_ms: 700,
                timeout_ms: 10_000,
            },
            Segment::Silence(500),
            Segment::HangUp,
        ],
    );
    cfg.headers.push((
        "X-Twilio-Signature".into(),
        signature::compute(TOKEN, "wss://bridge.example.test/media-stream", &[]),
    ));
    cfg.call_sid = Some("CA0001".into());
    cfg.custom_parameters.insert("token".into(), token.clone());
    let report = TwilioCall::run(cfg).unwrap();
    assert!(report.played_ms() > 1000, "{:#?}", report.timeline);
    assert!(
        !report.clears.is_empty(),
        "a barge-in: {:#?}",
        report.timeline
    );
    assert_eq!(model.recording().function_outputs.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = p.log();
        if log.contains("ended") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.contains("TRACE"), "the server ran at trace: {log}");

    for (what, secret) in [
        ("API key", "test-key"),
        ("auth token", TOKEN),
        ("stream token", token.as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} leaked into the log");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    for frame in report.caller_audio.chunks_exact(160) {
        assert!(
            !log.contains(&b64.encode(frame)[..40]),
            "a caller payload leaked into the log"
        );
    }
    let (n, run) = longest_base64_run(&log);
    assert!(
        n < 64,
        "something like a payload is in the log ({n} chars): {run}"
    );
}

#[test]
fn outbound_calls_and_status_callbacks_through_the_example_server() {
    let model = FakeModel::start(FakeModelConfig {
        script: vec![
            Reply::say("Hello from the bridge.", 600),
            Reply::say("Goodbye.", 400),
        ],
        ..Default::default()
    })
    .unwrap();
    // The server greets first (AGENT_GREETING): the callee listens to it, answers, listens.
    let mut tc = FakeTwilioConfig::new("127.0.0.1:9".parse().unwrap());
    let listen = Segment::WaitForAgent {
        quiet_ms: 500,
        timeout_ms: 10_000,
    };
    tc.callee = vec![
        listen.clone(),
        Segment::Speech(700),
        listen,
        Segment::HangUp,
    ];
    let twilio = FakeTwilio::start(tc).unwrap();
    let base = twilio.base_url();
    // At trace: ureq's protocol layer would dump the REST request's raw bytes.
    let p = start_with(
        &model.url(),
        Some("fake-auth-token"),
        "trace",
        &[
            ("TWILIO_ACCOUNT_SID", twilio.account_sid()),
            ("TWILIO_FROM_NUMBER", "+15550199"),
            ("TWILIO_API_BASE", &base),
            ("OUTBOUND_SECRET", "operator-secret"),
            ("OUTBOUND_MACHINE_DETECTION", "Enable"),
        ],
    );
    twilio.deliver_to(p.addr);
    let dial = |secret: &str| {
        let body = "To=%2B15550100";
        request(
            p.addr,
            &format!(
                "POST /outbound HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                p.addr,
                body.len()
            ),
        )
    };
    assert_eq!(dial("wrong").0, 401);
    let (status, resp) = dial("operator-secret");
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("\"call_sid\":\"CA"), "{resp}");
    assert!(
        twilio.wait_done(1, Duration::from_secs(30)),
        "the call ended"
    );
    let rec = twilio.recording();
    let req = &rec.requests[0];
    // TWILIO_AUTH_TOKEN is the REST credential when no API key is set.
    assert_eq!(req.user.as_deref(), Some(twilio.account_sid()));
    assert!(req
        .form
        .contains(&("Url".into(), format!("{PUBLIC}/incoming-call"))));
    assert!(req
        .form
        .contains(&("MachineDetection".into(), "Enable".into())));
    let call = &rec.calls[0];
    assert!(call.errors.is_empty(), "{:?}", call.errors);
    assert_eq!(call.webhook.as_ref().map(|w| w.status), Some(200));
    assert_eq!(call.callbacks.len(), 4);
    assert!(
        call.callbacks.iter().all(|c| c.status == 204),
        "{:?}",
        call.callbacks
    );
    assert_eq!(
        call.report.as_ref().map(|r| r.played_ms()),
        Some(1000),
        "the greeting and the answer played in full: {:#?}",
        call.report.as_ref().map(|r| &r.timeline)
    );
    let log = p.log();
    assert!(
        log.contains("is completed after"),
        "status callbacks are logged"
    );
    let basic =
        twilio_realtime::telephony::outbound::Credentials::AuthToken("fake-auth-token".into())
            .basic_auth(twilio.account_sid());
    let basic = basic.trim_start_matches("Basic ");
    for secret in ["operator-secret", "fake-auth-token", basic] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
    // ureq_proto's trace lines are a hex dump of the request (16 bytes a line, so the
    // credentials would not show up whole above): none may be there at all.
    assert!(
        !log.lines()
            .any(|l| l.contains("TRACE") && l.contains("ureq_proto")),
        "ureq_proto's raw request dump is in the log"
    );
}

/// SIP calls through the example server's documented variables: `OPENAI_WEBHOOK_SECRET`
/// turns the webhook on, `OPENAI_BASE_URL` and `OPENAI_REALTIME_URL` point it at the fake
/// control plane, and the call runs over its sideband with the same agent as Media Streams
/// calls: greeted (`AGENT_GREETING`), then transferred with a REFER to `TRANSFER_TO`, the
/// only destination the agent has. Media Streams calls are served on the same port.
#[test]
fn sip_calls_run_the_agent_over_the_sideband_and_transfer_with_refer() {
    use twilio_realtime::sim::sip::{CallState, CallerStep, FakeSip, FakeSipConfig};
    let fake = FakeSip::start(FakeSipConfig {
        api_key: "test-key".into(),
        script: vec![
            Reply::say("Hello! How can I help?", 800),
            Reply::call("transfer_call", r#"{"destination":"a person"}"#),
        ],
        caller: vec![
            CallerStep::WaitForAgent {
                quiet_ms: 300,
                timeout_ms: 10_000,
            },
            CallerStep::say("Put me through to a person, please.", 800),
        ],
        ..Default::default()
    })
    .unwrap();
    let base = fake.base_url();
    let p = start_with(
        &fake.realtime_url(),
        None,
        "debug",
        &[
            ("OPENAI_WEBHOOK_SECRET", fake.webhook_secret()),
            ("OPENAI_BASE_URL", &base),
            ("TRANSFER_TO", "+14155550123"),
        ],
    );
    let d = fake.ring(
        &format!("http://{}/openai-webhook", p.addr),
        "+14155550100",
        "+18005550199",
    );
    assert_eq!(d.status, 200, "{}", p.log());
    assert!(
        fake.wait_for(Duration::from_secs(20), |r| r
            .iter()
            .any(|q| q.verb == "refer")),
        "no REFER: {}",
        p.log()
    );
    assert_eq!(
        fake.call_state(&d.call_id),
        Some(CallState::Referred("tel:+14155550123".into()))
    );
    let rec = fake.sideband();
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    assert!(rec.response_requests[0]["instructions"]
        .as_str()
        .is_some_and(|i| i.ends_with("Greet the caller.")));
    // The same port still answers Twilio's webhook with TwiML.
    let (status, twiml) = webhook(p.addr, None);
    assert_eq!(status, 200);
    assert!(twiml.contains("<Stream"), "{twiml}");
}

/// `demo --sip`: the same agent on a SIP call against the fake control plane: the signed
/// webhook, the REST accept, the greeting by name, a tool, a key press, and the transfer as a
/// SIP REFER after the goodbye played.
#[test]
fn the_sip_demo_accepts_runs_a_tool_and_transfers_with_refer_after_the_goodbye() {
    let out = Command::new(build_example("demo"))
        .arg("--sip")
        .env_remove("TWILIO_AUTH_TOKEN")
        .env_remove("OPENAI_API_KEY")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = [
        "webhook realtime.call.incoming posted",
        "rest     accept",
        "webhook answered 200",
        "said: \"Hello Ada, welcome back!",
        "caller   said: \"What is the weather in Paris?\"",
        "tool get_weather -> \"The weather in Paris is",
        "the caller pressed 1",
        "ending: transferred to a person (by the agent)",
        "the agent's audio played out (output_audio_buffer.stopped)",
        "rest     refer {\"target_uri\":\"tel:+15550142\"} -> 200",
        "SIP REFER to tel:+15550142: Ok(())",
        "closed: transferred to a person",
        "0 protocol violation(s)",
        "Referred(\"tel:+15550142\")",
    ];
    // In this order in the timeline.
    let mut at = 0;
    for e in expected {
        let found = text[at..]
            .find(e)
            .unwrap_or_else(|| panic!("missing {e:?} (in order) in:\n{text}"));
        at += found + e.len();
    }
}
