//! The bridge inside someone else's synchronous HTTP server, on one port.
//!
//! The application serves its own routes with the [`touche`](https://docs.rs/touche) HTTP
//! server (thread per connection, no async runtime): `GET /` (its own page), `POST
//! /incoming-call` (the TwiML that points Twilio at the stream), `GET /metrics` (its
//! Prometheus metrics, embedded calls included). `GET /media-stream` is read and parsed by
//! touche like any request; the application checks it with `io::ws::check_upgrade`, answers
//! `101` through touche, and hands the socket touche gives its upgrade callback to the library
//! (`WsConn::from_upgraded`), which runs the call (`Session::start`) on that thread.
//!
//! With Twilio's auth token the embedded calls are guarded as the bundled server's are:
//! the webhook and the upgrade must carry a valid `X-Twilio-Signature`
//! (`server::signature::verify_webhook` / `verify_upgrade`, 403 otherwise), and the webhook
//! mints a one-time stream token for the call (`server::token::StreamTokens`) that the
//! stream's `start` must present before the model is called (`StreamTokens::start_check`).
//! Each call reports into the application's `metrics::Metrics` (`Metrics::start_call`).
//!
//! ```sh
//! OPENAI_API_KEY=sk-... TWILIO_AUTH_TOKEN=... PUBLIC_URL=https://YOUR-TUNNEL \
//!   cargo run --example embed -- 127.0.0.1:5050
//! ```
//!
//! reads `OPENAI_API_KEY`, `OPENAI_REALTIME_URL`, `TWILIO_AUTH_TOKEN` and `PUBLIC_URL` (all
//! optional), as the example server does. `tests/embed.rs` runs simulated calls through
//! [`serve`] against the fake model.
//!
//! Why touche and not `tiny_http`: `tiny_http`'s upgrade hands back a boxed
//! `Read + Write` stream that cannot be split or polled, while the library runs a reader and
//! a writer thread on the socket and waits with `poll(2)`; touche hands the upgrade callback
//! the `TcpStream` itself.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use touche::{
    header, upgrade::Upgrade, Body, Connection, HttpBody, Method, Request, Response, StatusCode,
};
use twilio_realtime::io::http::{parse_form, RequestHead};
use twilio_realtime::io::ws::check_upgrade;
use twilio_realtime::metrics::{self, Metrics};
use twilio_realtime::server::signature::{verify_upgrade, verify_webhook};
use twilio_realtime::server::token::{StreamTokens, TOKEN_PARAMETER};
use twilio_realtime::server::{public_origin, stream_url, twiml};
use twilio_realtime::{Agent, Session, SessionConfig, SessionEvent, WsConfig, WsConn};

/// What the application does with each call's events (it sees them on the call's thread).
pub type OnEvent = Arc<dyn Fn(&SessionEvent) + Send + Sync>;

/// Largest webhook body read (Twilio's forms are a few KiB).
const MAX_FORM: u64 = 64 * 1024;

/// How the application runs its calls.
#[derive(Clone)]
pub struct App {
    /// Each call's session configuration.
    pub session: SessionConfig,
    /// Twilio's auth token: when set, the webhook and the upgrade must be signed (403
    /// otherwise) and each call's stream must present the one-time token its webhook minted.
    pub auth_token: Option<String>,
    /// The public `https://` origin Twilio reaches (else the request's `Host`).
    pub public_url: Option<String>,
    /// The application's metrics: every embedded call reports into them; `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// The application's look at each call's events.
    pub on_event: OnEvent,
}

/// The application's agent.
fn agent() -> Agent {
    Agent::new("Assistant", "You are a helpful phone agent. Be brief.").voice("marin")
}

/// touche's request head as the library's [`RequestHead`].
fn head_of(req: &Request<Body>) -> RequestHead {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let headers = req.headers().iter().map(|(k, v)| {
        (
            k.as_str().to_owned(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )
    });
    RequestHead::new(req.method().as_str(), target, headers)
}

fn text(status: StatusCode, ctype: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .body(Body::from(body))
        .unwrap_or_default()
}

/// `POST /incoming-call`: checks Twilio's signature, mints the call's stream token and
/// answers the TwiML that connects the stream.
fn incoming_call(
    app: &App,
    tokens: Option<&StreamTokens>,
    head: &RequestHead,
    body: Body,
) -> Response<Body> {
    let Some(origin) = public_origin(app.public_url.as_deref(), head) else {
        return text(StatusCode::BAD_REQUEST, "text/plain", "no Host\n".into());
    };
    let mut raw = Vec::new();
    if body
        .into_reader()
        .take(MAX_FORM)
        .read_to_end(&mut raw)
        .is_err()
    {
        return text(StatusCode::BAD_REQUEST, "text/plain", "bad body\n".into());
    }
    let form = parse_form(&raw);
    if let Some(token) = &app.auth_token {
        if let Err(e) = verify_webhook(token, &origin, head, &form) {
            return text(StatusCode::FORBIDDEN, "text/plain", format!("{e}\n"));
        }
    }
    let mut params = Vec::new();
    if let Some(tokens) = tokens {
        let call_sid = form.iter().find(|(k, _)| k == "CallSid").map(|(_, v)| v);
        match tokens.issue(call_sid.map_or("", String::as_str)) {
            Ok(t) => params.push((TOKEN_PARAMETER, t)),
            Err(e) => {
                eprintln!("embed: could not mint a stream token: {e}");
                return text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "\n".into());
            }
        }
    }
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let xml = twiml(&stream_url(&origin), None, &params);
    text(StatusCode::OK, "text/xml", xml)
}

/// `GET /media-stream`: checks the upgrade's signature, answers `101` and runs the call.
fn media_stream(app: &App, head: &RequestHead) -> Response<Body> {
    if let Some(token) = &app.auth_token {
        match public_origin(app.public_url.as_deref(), head)
            .map(|o| verify_upgrade(token, &o, head))
        {
            Some(Ok(())) => {}
            Some(Err(e)) => return text(StatusCode::FORBIDDEN, "text/plain", format!("{e}\n")),
            None => return text(StatusCode::BAD_REQUEST, "text/plain", "no Host\n".into()),
        }
    }
    match check_upgrade(head) {
        Ok(accept) => {
            let app = app.clone();
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::UPGRADE, "websocket")
                .header(header::CONNECTION, "Upgrade")
                .header(header::SEC_WEBSOCKET_ACCEPT, accept)
                .upgrade(move |conn: Connection| run_call(conn, &app))
                .body(Body::empty())
                .unwrap_or_default()
        }
        Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

/// Runs one call on the socket touche handed over after it wrote the `101`.
fn run_call(conn: Connection, app: &App) {
    let Ok(tcp) = conn.downcast::<TcpStream>() else {
        eprintln!("embed: the upgraded connection is not plain TCP");
        return;
    };
    // touche read the head; nothing past it (Twilio waits for the 101 before it sends).
    let twilio = match WsConn::from_upgraded(tcp, Vec::new(), &WsConfig::default()) {
        Ok(ws) => ws,
        Err(e) => return eprintln!("embed: upgrade failed: {e}"),
    };
    let began = Instant::now();
    let session = match Session::start(twilio, agent(), app.session.clone()) {
        Ok(s) => s,
        Err(e) => return eprintln!("embed: the call did not start: {e}"),
    };
    let mut meter = app.metrics.start_call(began);
    meter.watch_queues(session.queue_gauge());
    for event in session.events().iter() {
        meter.observe(&event);
        (app.on_event)(&event);
        if let SessionEvent::Closed { reason } = &event {
            eprintln!("embed: call ended: {reason}");
            break;
        }
    }
    let stats = meter.finish(&session);
    eprintln!("embed: {}", stats.summary_json(false));
    session.join();
}

/// Serves the application's routes and the Media Streams upgrade on `listener` until the
/// process ends.
pub fn serve(listener: TcpListener, app: App) -> std::io::Result<()> {
    let mut app = app;
    // One-time stream tokens whenever requests are signed: minted by the webhook, spent by
    // the stream's `start` before the model is called.
    let tokens = app.auth_token.as_ref().map(|_| {
        let tokens = Arc::new(StreamTokens::new(Duration::from_secs(30), 10_000));
        app.session.start_check = Some(tokens.clone().start_check());
        tokens
    });
    touche::Server::from(listener).serve(move |req: Request<Body>| {
        let head = head_of(&req);
        let res = match (req.method(), head.path()) {
            (&Method::GET, "/") => text(StatusCode::OK, "text/plain", "my application\n".into()),
            (&Method::GET, "/metrics") => {
                text(StatusCode::OK, metrics::CONTENT_TYPE, app.metrics.encode())
            }
            (&Method::POST, "/incoming-call") => {
                incoming_call(&app, tokens.as_deref(), &head, req.into_body())
            }
            (&Method::GET, "/media-stream") => media_stream(&app, &head),
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        Ok::<_, std::convert::Infallible>(res)
    })
}

#[allow(dead_code)] // `tests/embed.rs` includes this file for `serve`.
fn main() -> std::io::Result<()> {
    let _ = twilio_realtime::logging::init("info");
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5050".into());
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut session = SessionConfig::new(env("OPENAI_API_KEY"));
    if let Some(url) = env("OPENAI_REALTIME_URL") {
        session = session.url(url);
    }
    let app = App {
        session,
        auth_token: env("TWILIO_AUTH_TOKEN"),
        public_url: env("PUBLIC_URL"),
        metrics: Arc::new(Metrics::new()),
        on_event: Arc::new(|e| {
            if let SessionEvent::AgentEnd { text, .. } = e {
                eprintln!("embed: agent said {text:?}");
            }
        }),
    };
    let listener = TcpListener::bind(&addr)?;
    eprintln!("embed: my application and the media stream on http://{addr}");
    serve(listener, app)
}
