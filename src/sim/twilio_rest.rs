//! A fake of Twilio's REST API for outbound calls, on 127.0.0.1: it takes
//! `POST /2010-04-01/Accounts/{AccountSid}/Calls.json` as Twilio documents it, then plays
//! Twilio's part of the call against the application: status callbacks, the answer webhook,
//! the media stream (a [`TwilioCall`] as the callee) and the final `completed` callback.
//!
//! What it checks and does, each as Twilio's documentation states it:
//!
//! * **Authentication.** HTTP basic with the account SID and auth token, or an API key SID
//!   and its secret; anything else (or another account's path) gets `401` with Twilio's error
//!   body `{"code": 20003, "message": "Authenticate", "more_info": …, "status": 401}`.
//! * **Form fields.** The body is `application/x-www-form-urlencoded`. `To` is required
//!   (`400`, error 21201), `From` too (21213), and one of `Url`, `Twiml` or `ApplicationSid`
//!   (21205). `StatusCallbackEvent` may repeat; without one, only `completed` is posted.
//! * **Success** is `201 Created` with the call resource (`sid` `CA…`, `status` `queued`,
//!   `direction` `outbound-api`, `api_version` `2010-04-01`).
//! * **Then the call.** `initiated` and `ringing` callbacks (if asked for); for an answered call
//!   the `answered` callback (`CallStatus=in-progress`), the `Url` requested with `POST` and the
//!   voice webhook's fields (`CallSid`, `AccountSid`, `From`, `To`, `Called`, `Caller`,
//!   `CallStatus=in-progress`, `Direction=outbound-api`, `ApiVersion`, and `AnsweredBy` when
//!   `MachineDetection` was set); the TwiML's `<Connect><Stream url>` opened with its
//!   `<Parameter>`s; when the stream ends, `completed` with `CallDuration` (whole seconds).
//!   A busy, unanswered or failed call gets only its final callback (`busy`, `no-answer`,
//!   `failed`, no duration). Every request to the application carries `X-Twilio-Signature`
//!   computed with the **auth token** (Twilio signs with it even when the API request used a
//!   key), over the URL and the sorted form fields (none for the stream's upgrade); callbacks
//!   also carry `CallbackSource=call-progress-events` and `SequenceNumber` (from 0); the
//!   fake leaves out `Timestamp` (an RFC 2822 date the bridge does not read).
//! * **Faults** for the client's error handling: a forced status with Twilio's error body
//!   (e.g. 429 with `Retry-After`, code 20429), or a response delayed past the client's timeout.
//!
//! URLs the application hands over (`Url`, `StatusCallback`, the stream URL) name its public
//! host; the fake sends every one of them to [`FakeTwilioConfig::deliver_to`] instead, as a
//! tunnel would, and signs the URL as written.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

use crate::io::http::{self, HttpLimits};
use crate::server::signature;
use crate::sim::twilio_call::{CallReport, Segment, TwilioCall, TwilioCallConfig};

const LOG: &str = "twilio_realtime::sim";

/// How the callee's side goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Answered; machine detection (if asked for) says this `AnsweredBy`.
    Answered {
        /// `human`, `machine_start`, `fax`, `unknown`, …
        answered_by: String,
    },
    /// `busy`.
    Busy,
    /// `no-answer`.
    NoAnswer,
    /// `failed`.
    Failed,
}

/// A forced answer to the REST request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedError {
    /// HTTP status.
    pub status: u16,
    /// Twilio's error code.
    pub code: u32,
    /// Twilio's message.
    pub message: String,
    /// `Retry-After` seconds.
    pub retry_after: Option<u32>,
}

/// Settings of the fake.
#[derive(Debug, Clone)]
pub struct FakeTwilioConfig {
    /// The account (`AC…`).
    pub account_sid: String,
    /// Its auth token: accepted for basic auth, and the key every signature is made with.
    pub auth_token: String,
    /// API keys (SID, secret) accepted for basic auth.
    pub api_keys: Vec<(String, String)>,
    /// Where every application URL is delivered (the bridge's address; change it on the
    /// running fake with [`FakeTwilio::deliver_to`]).
    pub deliver_to: SocketAddr,
    /// How the callee answers.
    pub outcome: Outcome,
    /// How long it rings before the outcome.
    pub ring: Duration,
    /// The callee's script once the stream is up.
    pub callee: Vec<Segment>,
    /// Answer every REST request with this error instead.
    pub force_error: Option<ForcedError>,
    /// Wait this long before answering a REST request.
    pub response_delay: Duration,
}

impl FakeTwilioConfig {
    /// An account whose calls are answered by a human who says something and hangs up.
    pub fn new(deliver_to: SocketAddr) -> FakeTwilioConfig {
        FakeTwilioConfig {
            account_sid: "AC00000000000000000000000000000001".into(),
            auth_token: "fake-auth-token".into(),
            api_keys: Vec::new(),
            deliver_to,
            outcome: Outcome::Answered {
                answered_by: "human".into(),
            },
            ring: Duration::from_millis(100),
            callee: vec![
                Segment::Silence(300),
                Segment::Speech(800),
                Segment::WaitForAgent {
                    quiet_ms: 600,
                    timeout_ms: 10_000,
                },
                Segment::HangUp,
            ],
            force_error: None,
            response_delay: Duration::ZERO,
        }
    }
}

/// One REST request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestRequest {
    /// Method and path.
    pub target: String,
    /// The basic-auth user name, if the header decoded.
    pub user: Option<String>,
    /// Decoded form fields in order.
    pub form: Vec<(String, String)>,
    /// The status answered.
    pub status: u16,
}

/// A request the fake made to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The URL as the application gave it.
    pub url: String,
    /// The form sent.
    pub form: Vec<(String, String)>,
    /// The application's status (0 if the request failed).
    pub status: u16,
    /// The application's body.
    pub body: String,
}

/// One call the fake placed.
#[derive(Debug, Clone, Default)]
pub struct PlacedCallRecord {
    /// The call's SID.
    pub sid: String,
    /// Status callbacks posted, in order.
    pub callbacks: Vec<Delivery>,
    /// The answer webhook request, if one was made.
    pub webhook: Option<Delivery>,
    /// The callee's side of the stream, if it ran.
    pub report: Option<CallReport>,
    /// What went wrong on Twilio's side (bad TwiML, no stream, …).
    pub errors: Vec<String>,
    /// True once the call is over and its final callback was posted.
    pub done: bool,
}

/// What the fake saw and did.
#[derive(Debug, Clone, Default)]
pub struct FakeTwilioRecording {
    /// Every REST request.
    pub requests: Vec<RestRequest>,
    /// Every call placed.
    pub calls: Vec<PlacedCallRecord>,
}

struct Shared {
    cfg: FakeTwilioConfig,
    deliver_to: Mutex<SocketAddr>,
    rec: Mutex<FakeTwilioRecording>,
    ids: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn rec(&self) -> std::sync::MutexGuard<'_, FakeTwilioRecording> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn target(&self) -> SocketAddr {
        *self.deliver_to.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call(&self, sid: &str, f: impl FnOnce(&mut PlacedCallRecord)) {
        let mut r = self.rec();
        if let Some(c) = r.calls.iter_mut().find(|c| c.sid == sid) {
            f(c);
        }
    }
}

/// The running fake. Stops when dropped.
pub struct FakeTwilio {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeTwilio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTwilio")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeTwilio {
    /// Listens on 127.0.0.1 (a free port).
    pub fn start(cfg: FakeTwilioConfig) -> std::io::Result<FakeTwilio> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            deliver_to: Mutex::new(cfg.deliver_to),
            cfg,
            rec: Mutex::new(FakeTwilioRecording::default()),
            ids: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
        let accept = super::spawn_accept_loop(
            "fake-twilio",
            listener,
            shared.clone(),
            |sh| sh.stop.load(Ordering::SeqCst),
            serve,
        )?;
        Ok(FakeTwilio {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The API origin to configure (`TWILIO_API_BASE`): `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Delivers the application's URLs to `addr` from now on (e.g. a bridge bound after the
    /// fake, whose configuration needed [`FakeTwilio::base_url`]).
    pub fn deliver_to(&self, addr: SocketAddr) {
        *self
            .shared
            .deliver_to
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// The account SID.
    pub fn account_sid(&self) -> &str {
        &self.shared.cfg.account_sid
    }

    /// What happened so far.
    pub fn recording(&self) -> FakeTwilioRecording {
        self.shared.rec().clone()
    }

    /// Waits until `n` calls are over (their final callback posted); false on timeout.
    pub fn wait_done(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.rec().calls.iter().filter(|c| c.done).count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn error_body(status: u16, code: u32, message: &str) -> String {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
    .to_string()
}

fn respond(conn: &mut TcpStream, status: u16, extra: &[(&str, &str)], body: &str) {
    let _ = http::write_response(conn, status, "application/json", extra, body.as_bytes());
}

/// (user, password) of a basic `Authorization` header.
fn basic_auth(value: Option<&str>) -> Option<(String, String)> {
    let b64 = value?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn serve(sh: &Arc<Shared>, mut conn: TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let Ok((head, leftover)) = http::read_head(
        &mut http::ReadBy::new(&conn, deadline),
        &HttpLimits::default(),
    ) else {
        return;
    };
    let body = http::read_body(
        &mut http::ReadBy::new(&conn, deadline),
        &head,
        leftover,
        1 << 20,
    )
    .unwrap_or_default();
    let form = http::parse_form(&body);
    let auth = basic_auth(head.header("authorization"));
    let cfg = &sh.cfg;
    let record = |status: u16| {
        sh.rec().requests.push(RestRequest {
            target: format!("{} {}", head.method, head.target),
            user: auth.as_ref().map(|a| a.0.clone()),
            form: form.clone(),
            status,
        });
    };
    thread::sleep(cfg.response_delay);
    let calls_path = format!("/2010-04-01/Accounts/{}/Calls.json", cfg.account_sid);
    let path_account = head
        .path()
        .strip_prefix("/2010-04-01/Accounts/")
        .and_then(|p| p.strip_suffix("/Calls.json"));
    if head.method != "POST" || path_account.is_none() {
        record(404);
        let msg = format!("The requested resource {} was not found", head.path());
        return respond(&mut conn, 404, &[], &error_body(404, 20404, &msg));
    }
    let authorized = match &auth {
        Some((u, p)) => {
            (u == &cfg.account_sid && p == &cfg.auth_token)
                || cfg.api_keys.iter().any(|(k, s)| k == u && s == p)
        }
        None => false,
    };
    if !authorized || head.path() != calls_path {
        record(401);
        return respond(&mut conn, 401, &[], &error_body(401, 20003, "Authenticate"));
    }
    if let Some(f) = &cfg.force_error {
        record(f.status);
        let retry = f.retry_after.map(|s| s.to_string());
        let extra: Vec<(&str, &str)> = retry
            .as_deref()
            .map(|r| vec![("Retry-After", r)])
            .unwrap_or_default();
        return respond(
            &mut conn,
            f.status,
            &extra,
            &error_body(f.status, f.code, &f.message),
        );
    }
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let missing = if field("To").is_none() {
        Some((21201, "No 'To' number is specified"))
    } else if field("From").is_none() {
        Some((21213, "No 'From' number is specified"))
    } else if field("Url").is_none()
        && field("Twiml").is_none()
        && field("ApplicationSid").is_none()
    {
        Some((21205, "Url parameter is required"))
    } else {
        None
    };
    if let Some((code, msg)) = missing {
        record(400);
        return respond(&mut conn, 400, &[], &error_body(400, code, msg));
    }
    let n = sh.ids.fetch_add(1, Ordering::Relaxed);
    let sid = format!("CA{n:032x}");
    let (to, from) = (
        field("To").unwrap_or_default(),
        field("From").unwrap_or_default(),
    );
    let resource = json!({
        "sid": sid,
        "account_sid": cfg.account_sid,
        "to": to,
        "from": from,
        "status": "queued",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": format!("/2010-04-01/Accounts/{}/Calls/{sid}.json", cfg.account_sid),
    });
    record(201);
    sh.rec().calls.push(PlacedCallRecord {
        sid: sid.clone(),
        ..PlacedCallRecord::default()
    });
    respond(&mut conn, 201, &[], &resource.to_string());
    drop(conn);
    let sh2 = sh.clone();
    let _ = thread::Builder::new()
        .name("fake-twilio-call".into())
        .spawn(move || run_call(&sh2, &sid, &form));
}

/// Twilio's side of one placed call.
fn run_call(sh: &Arc<Shared>, sid: &str, form: &[(String, String)]) {
    let cfg = &sh.cfg;
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let (to, from) = (
        field("To").unwrap_or_default(),
        field("From").unwrap_or_default(),
    );
    let callback = field("StatusCallback");
    let mut events: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "StatusCallbackEvent")
        .flat_map(|(_, v)| v.split([' ', ',']).map(str::to_owned).collect::<Vec<_>>())
        .filter(|e| !e.is_empty())
        .collect();
    if events.is_empty() {
        events.push("completed".into());
    }
    let amd = field("MachineDetection").is_some();
    let base = |status: &str| -> Vec<(String, String)> {
        let mut f = vec![
            ("AccountSid", cfg.account_sid.clone()),
            ("ApiVersion", "2010-04-01".into()),
            ("CallSid", sid.to_owned()),
            ("CallStatus", status.to_owned()),
            ("Called", to.clone()),
            ("Caller", from.clone()),
            ("Direction", "outbound-api".into()),
            ("From", from.clone()),
            ("To", to.clone()),
        ];
        if amd {
            if let Outcome::Answered { answered_by } = &cfg.outcome {
                f.push(("AnsweredBy", answered_by.clone()));
            }
        }
        f.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let mut seq = 0u32;
    let mut post_status = |event: &str, status: &str, duration: Option<u64>| {
        let Some(url) = &callback else { return };
        if !events.iter().any(|e| e == event) {
            return;
        }
        let mut f = base(status);
        f.push(("CallbackSource".into(), "call-progress-events".into()));
        f.push(("SequenceNumber".into(), seq.to_string()));
        if let Some(d) = duration {
            f.push(("CallDuration".into(), d.to_string()));
        }
        seq += 1;
        let d = deliver(sh, url, &f);
        sh.call(sid, |c| c.callbacks.push(d));
    };
    post_status("initiated", "initiated", None);
    post_status("ringing", "ringing", None);
    thread::sleep(cfg.ring);
    let final_status = match &cfg.outcome {
        Outcome::Busy => "busy",
        Outcome::NoAnswer => "no-answer",
        Outcome::Failed => "failed",
        Outcome::Answered { .. } => "",
    };
    if !final_status.is_empty() {
        post_status("completed", final_status, None);
        sh.call(sid, |c| c.done = true);
        return;
    }
    let answered = Instant::now();
    post_status("answered", "in-progress", None);
    let twiml = match (field("Url"), field("Twiml")) {
        (Some(url), _) => {
            let d = deliver(sh, &url, &base("in-progress"));
            let ok = d.status == 200;
            let body = d.body.clone();
            sh.call(sid, |c| c.webhook = Some(d));
            ok.then_some(body)
        }
        (None, Some(t)) => Some(t),
        _ => None,
    };
    match twiml.as_deref().map(stream_of) {
        Some(Ok((url, params))) => {
            if let Err(e) = stream(sh, sid, &url, params) {
                sh.call(sid, |c| c.errors.push(e));
            }
        }
        Some(Err(e)) => sh.call(sid, |c| c.errors.push(e)),
        None => sh.call(sid, |c| c.errors.push("no TwiML to run".into())),
    }
    let secs = answered.elapsed().as_secs();
    post_status("completed", "completed", Some(secs));
    sh.call(sid, |c| c.done = true);
}

/// The `<Connect><Stream url>` of a TwiML document and its `<Parameter>`s.
fn stream_of(twiml: &str) -> Result<(String, Vec<(String, String)>), String> {
    let doc = roxmltree::Document::parse(twiml).map_err(|e| format!("TwiML is not XML: {e}"))?;
    let stream = doc
        .descendants()
        .find(|n| n.has_tag_name("Stream") && n.parent().is_some_and(|p| p.has_tag_name("Connect")))
        .ok_or("no <Connect><Stream> in the TwiML")?;
    let url = stream.attribute("url").ok_or("<Stream> without url")?;
    let params = stream
        .children()
        .filter(|n| n.has_tag_name("Parameter"))
        .filter_map(|p| {
            Some((
                p.attribute("name")?.to_owned(),
                p.attribute("value")?.to_owned(),
            ))
        })
        .collect();
    Ok((url.to_owned(), params))
}

fn stream(
    sh: &Arc<Shared>,
    sid: &str,
    url: &str,
    params: Vec<(String, String)>,
) -> Result<(), String> {
    let cfg = &sh.cfg;
    let path = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
        .and_then(|rest| rest.find('/').map(|i| rest[i..].to_owned()))
        .ok_or_else(|| format!("stream url {url:?} is not a ws(s):// URL with a path"))?;
    let mut call = TwilioCallConfig::new(sh.target(), cfg.callee.clone());
    call.path = path;
    call.call_sid = Some(sid.to_owned());
    call.account_sid = Some(cfg.account_sid.clone());
    call.custom_parameters = params.into_iter().collect();
    call.headers.push((
        "X-Twilio-Signature".into(),
        signature::compute(&cfg.auth_token, url, &[]),
    ));
    call.max_duration = Duration::from_secs(30);
    let report = TwilioCall::run(call).map_err(|e| e.to_string())?;
    sh.call(sid, |c| c.report = Some(report));
    Ok(())
}

/// POSTs `form` to the application's `url` (delivered to `deliver_to`), signed like Twilio.
fn deliver(sh: &Shared, url: &str, form: &[(String, String)]) -> Delivery {
    let cfg = &sh.cfg;
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let sig = signature::compute(&cfg.auth_token, url, &pairs);
    let target = match url
        .split_once("://")
        .and_then(|(_, r)| r.find('/').map(|i| &r[i..]))
    {
        Some(t) => t.to_owned(),
        None => "/".to_owned(),
    };
    let local = format!("http://{}{target}", sh.target());
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let sent = agent
        .post(&local)
        .header("X-Twilio-Signature", &sig)
        .header("User-Agent", "TwilioProxy/1.1")
        .send_form(pairs);
    let (status, body) = match sent {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => {
            log::warn!(target: LOG, "fake twilio: request to {url} failed: {e}");
            (0, String::new())
        }
    };
    Delivery {
        url: url.to_owned(),
        form: form.to_vec(),
        status,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stream_and_its_parameters() {
        let x = crate::server::twiml(
            "wss://h.example/media-stream",
            Some("Hi"),
            &[("caller", "+1555&1"), ("token", "t")],
        );
        let (url, params) = stream_of(&x).unwrap();
        assert_eq!(url, "wss://h.example/media-stream");
        assert_eq!(
            params,
            vec![
                ("caller".to_owned(), "+1555&1".to_owned()),
                ("token".into(), "t".into())
            ]
        );
        assert!(stream_of("<Response><Say>hi</Say></Response>").is_err());
        assert!(stream_of("not xml").is_err());
    }

    #[test]
    fn basic_auth_decodes() {
        assert_eq!(
            basic_auth(Some("Basic QUMxOnRvaw==")),
            Some(("AC1".into(), "tok".into()))
        );
        assert_eq!(basic_auth(Some("Bearer x")), None);
        assert_eq!(basic_auth(None), None);
    }
}
