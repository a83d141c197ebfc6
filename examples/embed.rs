//! The bridge inside someone else's synchronous HTTP server, on one port.
//!
//! The application serves its own routes with the [`touche`](https://docs.rs/touche) HTTP
//! server (thread per connection, no async runtime): `GET /` (its own page), `POST
//! /incoming-call` (the TwiML that points Twilio at the stream). `GET /media-stream` is read
//! and parsed by touche like any request; the application checks it with
//! `io::ws::check_upgrade`, answers `101` through touche, and hands the socket touche gives
//! its upgrade callback to the library (`WsConn::from_upgraded`), which runs the call
//! (`Session::start`) on that thread.
//!
//! ```sh
//! OPENAI_API_KEY=sk-... cargo run --example embed -- 127.0.0.1:5050
//! ```
//!
//! reads `OPENAI_API_KEY` and `OPENAI_REALTIME_URL` (optional), like the example server.
//! `tests/embed.rs` runs a simulated call through [`serve`] against the fake model.
//!
//! Why touche and not `tiny_http`: `tiny_http`'s upgrade hands back a boxed
//! `Read + Write` stream that cannot be split or polled, while the library runs a reader and
//! a writer thread on the socket and waits with `poll(2)`; touche hands the upgrade callback
//! the `TcpStream` itself.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use touche::{header, upgrade::Upgrade, Body, Connection, Method, Request, Response, StatusCode};
use twilio_realtime::io::http::RequestHead;
use twilio_realtime::io::ws::check_upgrade;
use twilio_realtime::{Agent, Session, SessionConfig, SessionEvent, WsConfig, WsConn};

/// What the application does with each call's events (it sees them on the call's thread).
pub type OnEvent = Arc<dyn Fn(&SessionEvent) + Send + Sync>;

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

/// Runs one call on the socket touche handed over after it wrote the `101`.
fn run_call(conn: Connection, opts: &SessionConfig, on_event: &OnEvent) {
    let Ok(tcp) = conn.downcast::<TcpStream>() else {
        eprintln!("embed: the upgraded connection is not plain TCP");
        return;
    };
    // touche read the head; nothing past it (Twilio waits for the 101 before it sends).
    let twilio = match WsConn::from_upgraded(tcp, Vec::new(), &WsConfig::default()) {
        Ok(ws) => ws,
        Err(e) => return eprintln!("embed: upgrade failed: {e}"),
    };
    let session = match Session::start(twilio, agent(), opts.clone()) {
        Ok(s) => s,
        Err(e) => return eprintln!("embed: the call did not start: {e}"),
    };
    for event in session.events().iter() {
        on_event(&event);
        if let SessionEvent::Closed { reason } = &event {
            eprintln!("embed: call ended: {reason}");
            break;
        }
    }
    session.join();
}

/// Serves the application's routes and the Media Streams upgrade on `listener` until the
/// process ends.
pub fn serve(listener: TcpListener, opts: SessionConfig, on_event: OnEvent) -> std::io::Result<()> {
    touche::Server::from(listener).serve(move |req: Request<Body>| {
        let head = head_of(&req);
        let res = match (req.method(), head.path()) {
            (&Method::GET, "/") => text(StatusCode::OK, "text/plain", "my application\n".into()),
            (&Method::POST, "/incoming-call") => {
                let host = head.header("host").unwrap_or("localhost");
                let url = twilio_realtime::server::stream_url(host);
                let twiml = twilio_realtime::server::twiml(&url, None, &[]);
                text(StatusCode::OK, "text/xml", twiml)
            }
            (&Method::GET, "/media-stream") => match check_upgrade(&head) {
                Ok(accept) => {
                    let (opts, on_event) = (opts.clone(), on_event.clone());
                    Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(header::UPGRADE, "websocket")
                        .header(header::CONNECTION, "Upgrade")
                        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
                        .upgrade(move |conn: Connection| run_call(conn, &opts, &on_event))
                        .body(Body::empty())
                        .unwrap_or_default()
                }
                Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
            },
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
    let mut opts = SessionConfig::new(std::env::var("OPENAI_API_KEY").ok());
    if let Ok(url) = std::env::var("OPENAI_REALTIME_URL") {
        opts = opts.url(url);
    }
    let listener = TcpListener::bind(&addr)?;
    eprintln!("embed: my application and the media stream on http://{addr}");
    serve(
        listener,
        opts,
        Arc::new(|e| {
            if let SessionEvent::AgentEnd { text, .. } = e {
                eprintln!("embed: agent said {text:?}");
            }
        }),
    )
}
