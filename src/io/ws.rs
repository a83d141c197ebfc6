//! One WebSocket, used at the same time by a dedicated reader thread and a dedicated writer
//! thread, over plain TCP or native-tls, as a client or as a server.
//!
//! tungstenite needs `&mut` to read and to write, and a TLS stream can be neither cloned nor
//! used from two threads at once, so the socket lives in a mutex. After the (blocking)
//! handshake the TCP socket is made non-blocking:
//!
//! * the **reader** calls `read()` under the lock until it returns `WouldBlock`, then waits for
//!   readability with `poll(2)` *outside* the lock, with no timeout: an idle connection costs
//!   no wake-ups. It polls only after `WouldBlock`, never after a message (the next frame may
//!   already sit in tungstenite's or OpenSSL's buffer), and after a `Ping` it reads again at
//!   once (the `Pong` is written by that call);
//! * the **writer** blocks on a bounded channel and takes the lock only to send; on
//!   `WouldBlock` it waits for `POLLOUT` outside the lock and flushes;
//! * [`WsSender::send_now`] writes from the calling thread under the same lock, with no
//!   hand-off: the caller-audio lane uses it to forward each frame with one thread wake-up. It
//!   never waits for the peer: when the socket is full the frame stays in tungstenite's write
//!   buffer and the writer thread flushes it (and gives the connection up after the write
//!   timeout), so no lock is ever held across a wait and a peer that stops reading delays
//!   nobody else;
//! * a `try_clone` of the `TcpStream` kept aside lets any thread `shutdown` the socket, which
//!   wakes the reader's `poll`.
//!
//! ```no_run
//! use twilio_realtime::io::ws::{ClientRequest, Incoming, WsConfig, WsConn};
//!
//! let req = ClientRequest::new("wss://api.openai.com/v1/realtime?model=gpt-realtime").bearer("sk-...");
//! let conn = WsConn::connect(&req, &WsConfig::default()).unwrap();
//! let (duplex, incoming) = conn.spawn_channel("model").unwrap();
//! duplex.sender().send_text(r#"{"type":"response.create"}"#.to_string()).unwrap();
//! while let Ok(msg) = incoming.recv() {
//!     match msg {
//!         Incoming::Text(t) => println!("{}", t.as_str()),
//!         Incoming::Closed(_) | Incoming::Error(_) => break,
//!         _ => {}
//!     }
//! }
//! duplex.close();
//! duplex.join();
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, unbounded, Sender, TrySendError};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::WebSocket;

use crate::io::http::{self, HttpLimits, RequestHead};

// Re-exported deliberately: messages pass between the sockets and the call without a copy, as
// tungstenite 0.30's own types; TLS settings are native-tls 0.2's; channel consumers get
// crossbeam-channel 0.5's receiver. `io::ws` follows those crates' breaking releases (the
// crate root and `session` do not name them).
use crate::io::sys;
pub use crossbeam_channel::Receiver;
pub use native_tls::{TlsAcceptor, TlsConnector};
pub use tungstenite::{Bytes, Message, Utf8Bytes};

const LOG: &str = "twilio_realtime::ws";

/// How long a flush stuck behind a peer that does not read waits for writability at a time
/// before it looks whether a close was asked for meanwhile (see `Shared::flush_within`).
const CLOSE_CHECK: Duration = Duration::from_millis(100);

type Ws = WebSocket<Sock>;

/// The stream under a running WebSocket. On a plain (non-TLS) socket in non-blocking mode it
/// remembers that the last `recv` came back short, which means the kernel's receive queue was
/// empty at that moment; the next read then reports `WouldBlock` without a syscall and the
/// reader goes straight to `poll`. `poll` is level-triggered, so anything that arrived since is
/// seen at once: this saves one `recv` that would return `EAGAIN` per message, nothing else
/// changes. (Not armed for TLS: a short TLS read says nothing about the kernel's queue.)
///
/// It also keeps [`Backlog::unflushed`] current: tungstenite hands its whole write buffer to
/// every `write`, so what the socket did not take is exactly what stays buffered.
struct Sock {
    inner: MaybeTlsStream<TcpStream>,
    /// Set once the socket is non-blocking and plain.
    armed: bool,
    /// The last read was short: the kernel had nothing more.
    drained: bool,
    backlog: Arc<Backlog>,
}

impl Sock {
    fn new(inner: MaybeTlsStream<TcpStream>) -> Sock {
        Sock {
            inner,
            armed: false,
            drained: false,
            backlog: Arc::new(Backlog::default()),
        }
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // tungstenite's buffer goes with the socket.
        self.backlog.unflushed.store(0, Ordering::Relaxed);
    }
}

/// Bytes one connection holds toward its peer that the kernel has not taken yet (see
/// [`WsSender::queued_bytes`]). Shared by the socket, the writer's queue and whoever watches
/// it (a call's stats); updated with relaxed atomics only, never under a lock of its own.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    /// Payload bytes of the messages waiting in the writer thread's queue.
    queued: AtomicU64,
    /// Bytes of encoded frames left in tungstenite's write buffer by the last write attempt
    /// (the socket was full).
    unflushed: AtomicU64,
}

impl Backlog {
    /// Both parts, now.
    pub(crate) fn bytes(&self) -> u64 {
        self.queued
            .load(Ordering::Relaxed)
            .saturating_add(self.unflushed.load(Ordering::Relaxed))
    }
}

/// A queued message's share of [`Backlog::queued`], given back when the writer takes the
/// message, or when it is dropped unsent (a full or closed queue, a queue dropped with it).
struct Charge {
    backlog: Arc<Backlog>,
    bytes: u64,
}

impl Charge {
    fn new(backlog: &Arc<Backlog>, msg: &Message) -> Charge {
        let bytes = u64::try_from(msg.len()).unwrap_or(u64::MAX);
        backlog.queued.fetch_add(bytes, Ordering::Relaxed);
        Charge {
            backlog: backlog.clone(),
            bytes,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.backlog.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.armed {
            return self.inner.read(buf);
        }
        if self.drained && !buf.is_empty() {
            self.drained = false;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.inner.read(buf)?;
        self.drained = n > 0 && n < buf.len();
        Ok(n)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        let left = match &r {
            Ok(n) => buf.len().saturating_sub(*n),
            Err(_) => buf.len(),
        };
        self.backlog
            .unflushed
            .store(u64::try_from(left).unwrap_or(u64::MAX), Ordering::Relaxed);
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Settings of one duplex WebSocket.
#[derive(Clone)]
#[non_exhaustive]
pub struct WsConfig {
    /// tungstenite's read buffer (allocated up front per socket). Default 4 KiB — Twilio's
    /// frames are ~400 bytes and larger model events simply take several reads; tungstenite's
    /// 128 KiB default would cost 250 KiB per call.
    pub read_buffer_size: usize,
    /// Bytes buffered before a write goes to the socket (0: every message at once). Default 0.
    pub write_buffer_size: usize,
    /// Most bytes queued inside tungstenite when the peer does not read. Default 4 MiB.
    pub max_write_buffer_size: usize,
    /// Largest incoming message. Default 1 MiB.
    pub max_message_size: usize,
    /// Messages queued for the writer thread; [`WsSender::send`] waits while it is full.
    /// Default 64: the queue's slots are allocated up front (~56 bytes each, so 256 would cost
    /// ~14 KiB per socket), and sessions write audio with [`WsSender::send_now`] and barely use
    /// it.
    pub outbound_capacity: usize,
    /// Messages queued for a channel consumer ([`WsConn::spawn_channel`]). Default 1024.
    pub inbound_capacity: usize,
    /// One deadline for the client's DNS resolution and TCP connect together (every address
    /// tried shares it). Default 10 s.
    pub connect_timeout: Duration,
    /// TLS + WebSocket handshake timeout. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long a write may wait for a peer that does not read before the connection is
    /// given up. Default 10 s.
    pub write_timeout: Duration,
    /// How long a graceful close waits for the peer's close frame, and for writes still stuck
    /// behind a peer that stopped reading. Default 1 s.
    pub close_timeout: Duration,
    /// Stack size of the reader and writer threads. Default 256 KiB.
    pub thread_stack_size: usize,
    /// TCP keepalive once the connection runs: the first probe after this long without any
    /// traffic, then one every third of it (at least 1 s); three unanswered probes fail the
    /// socket (the reader reports the error). `None` leaves the system default (off).
    /// Default 15 s (a dead peer is noticed within about 25 s even when nothing is sent).
    pub tcp_keepalive: Option<Duration>,
    /// The kernel's send buffer for the socket (`SO_SNDBUF`, which the kernel doubles), once
    /// the connection runs. `None` leaves the kernel's autotuning (up to `tcp_wmem`'s maximum,
    /// megabytes). A small one bounds the kernel memory a peer that stops reading can hold and
    /// lets the write timeout notice it sooner. Default `None`.
    pub send_buffer_size: Option<usize>,
    /// TLS settings for `wss://` (default: the system's roots).
    pub tls_connector: Option<native_tls::TlsConnector>,
}

impl fmt::Debug for WsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConfig")
            .field("read_buffer_size", &self.read_buffer_size)
            .field("max_message_size", &self.max_message_size)
            .field("outbound_capacity", &self.outbound_capacity)
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("send_buffer_size", &self.send_buffer_size)
            .field("custom_tls", &self.tls_connector.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            read_buffer_size: 4 * 1024,
            write_buffer_size: 0,
            max_write_buffer_size: 4 * 1024 * 1024,
            max_message_size: 1024 * 1024,
            outbound_capacity: 64,
            inbound_capacity: 1024,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(1),
            thread_stack_size: 256 * 1024,
            tcp_keepalive: Some(Duration::from_secs(15)),
            send_buffer_size: None,
            tls_connector: None,
        }
    }
}

impl WsConfig {
    fn tungstenite(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(self.write_buffer_size)
            .max_write_buffer_size(self.max_write_buffer_size.max(self.write_buffer_size + 1))
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

/// Errors of the WebSocket layer.
#[derive(Debug)]
#[non_exhaustive]
pub enum WsError {
    /// The URL is not a valid `ws://` or `wss://` URL.
    BadUrl(String),
    /// No address of the host accepted a TCP connection.
    Connect(io::Error),
    /// The TLS handshake failed.
    Tls(String),
    /// The server refused the upgrade with this HTTP status.
    Rejected {
        /// The HTTP status.
        status: u16,
    },
    /// The request is not a valid WebSocket upgrade.
    NotAnUpgrade(&'static str),
    /// The WebSocket handshake failed.
    Handshake(String),
    /// The TLS and WebSocket handshake did not finish within `WsConfig::handshake_timeout`.
    HandshakeTimeout(Duration),
    /// The client request could not be built (a header name or value HTTP does not allow).
    InvalidRequest(String),
    /// The HTTP request could not be read.
    Http(http::HttpError),
    /// A WebSocket protocol error (bad frame, message too big, …).
    Protocol(ProtocolError),
    /// A socket error.
    Io(io::Error),
    /// The peer did not read for longer than the write timeout.
    WriteTimeout,
    /// The connection is closed.
    Closed,
    /// The outbound queue is full (the peer is not keeping up).
    QueueFull,
    /// The message handler given to [`WsConn::spawn`] panicked (with this message); the
    /// connection was closed. The handler gets this as its last message.
    HandlerPanicked(String),
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::BadUrl(u) => write!(f, "bad websocket url: {u}"),
            WsError::Connect(e) => write!(f, "connect failed: {e}"),
            WsError::Tls(e) => write!(f, "tls failed: {e}"),
            WsError::Rejected { status } => write!(f, "upgrade rejected with HTTP {status}"),
            WsError::NotAnUpgrade(why) => write!(f, "not a websocket upgrade: {why}"),
            WsError::Handshake(e) => write!(f, "websocket handshake failed: {e}"),
            WsError::HandshakeTimeout(t) => write!(f, "websocket handshake timed out after {t:?}"),
            WsError::InvalidRequest(e) => write!(f, "invalid request: {e}"),
            WsError::Http(e) => write!(f, "http: {e}"),
            WsError::Protocol(e) => write!(f, "websocket protocol error: {e}"),
            WsError::Io(e) => write!(f, "socket error: {e}"),
            WsError::WriteTimeout => f.write_str("peer stopped reading (write timeout)"),
            WsError::Closed => f.write_str("connection closed"),
            WsError::QueueFull => f.write_str("outbound queue full"),
            WsError::HandlerPanicked(m) => write!(f, "message handler panicked: {m}"),
        }
    }
}

impl std::error::Error for WsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WsError::Connect(e) | WsError::Io(e) => Some(e),
            WsError::Http(e) => Some(e),
            WsError::Protocol(e) => Some(&e.0),
            _ => None,
        }
    }
}

/// A WebSocket protocol error (a bad frame, a message over the size limit, a full write
/// buffer, …): its text, and tungstenite's error as its [`source`](std::error::Error::source).
/// Wrapped so that this crate's API does not name tungstenite's error type.
#[derive(Debug)]
pub struct ProtocolError(tungstenite::Error);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

/// Checks that a request head is a WebSocket upgrade this crate can take (`GET`,
/// `Upgrade: websocket`, `Connection: upgrade`, `Sec-WebSocket-Version: 13`, a
/// `Sec-WebSocket-Key`) and returns the `Sec-WebSocket-Accept` value its `101` answer must
/// carry (RFC 6455 §4.2.2), for a server that writes that answer itself (then
/// [`WsConn::from_upgraded`]).
///
/// ```
/// use twilio_realtime::io::http::RequestHead;
/// use twilio_realtime::io::ws::check_upgrade;
///
/// let head = RequestHead::new("GET", "/media-stream", [
///     ("Upgrade", "websocket"),
///     ("Connection", "Upgrade"),
///     ("Sec-WebSocket-Version", "13"),
///     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
/// ]);
/// // RFC 6455's own example.
/// assert_eq!(check_upgrade(&head).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn check_upgrade(head: &RequestHead) -> Result<String, WsError> {
    if head.method != "GET" {
        return Err(WsError::NotAnUpgrade("method is not GET"));
    }
    if !head.is_websocket_upgrade() {
        return Err(WsError::NotAnUpgrade(
            "no Upgrade: websocket / Connection: upgrade",
        ));
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(WsError::NotAnUpgrade("Sec-WebSocket-Version is not 13"));
    }
    let key = head
        .header("sec-websocket-key")
        .ok_or(WsError::NotAnUpgrade("no Sec-WebSocket-Key"))?;
    Ok(tungstenite::handshake::derive_accept_key(
        key.trim().as_bytes(),
    ))
}

/// The close code and reason a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The WebSocket close code.
    pub code: u16,
    /// The reason text.
    pub reason: String,
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "closed with code {}", self.code)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// What the reader thread hands over.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A text message.
    Text(tungstenite::Utf8Bytes),
    /// A binary message.
    Binary(tungstenite::Bytes),
    /// The connection closed (with the peer's close frame, if it sent one). Last message.
    Closed(Option<CloseInfo>),
    /// The connection failed. Last message.
    Error(WsError),
}

/// A client connection request. Its `Debug` output shows no secrets: the bearer token and
/// credential headers print as `<redacted>`, and so do keys in the URL's query.
#[derive(Clone)]
pub struct ClientRequest {
    url: String,
    bearer: Option<String>,
    headers: Vec<(String, String)>,
}

impl fmt::Debug for ClientRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if crate::redact::is_secret_name(k) {
                    crate::redact::REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("ClientRequest")
            .field("url", &crate::redact::url(&self.url))
            .field(
                "bearer",
                &self.bearer.as_ref().map(|_| crate::redact::REDACTED),
            )
            .field("headers", &headers)
            .finish()
    }
}

impl ClientRequest {
    /// A request for a `ws://` or `wss://` URL.
    pub fn new(url: impl Into<String>) -> ClientRequest {
        ClientRequest {
            url: url.into(),
            bearer: None,
            headers: Vec::new(),
        }
    }

    /// Sends `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: impl Into<String>) -> ClientRequest {
        self.bearer = Some(token.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> ClientRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A handshaken WebSocket whose threads have not started yet.
pub struct WsConn {
    ws: Ws,
    tcp: TcpStream,
    cfg: WsConfig,
}

impl fmt::Debug for WsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConn")
            .field("peer", &self.tcp.peer_addr().ok())
            .finish()
    }
}

fn tcp_of(s: &MaybeTlsStream<TcpStream>) -> io::Result<TcpStream> {
    match s {
        MaybeTlsStream::Plain(t) => t.try_clone(),
        MaybeTlsStream::NativeTls(t) => t.get_ref().try_clone(),
        _ => Err(io::Error::other("unsupported stream kind")),
    }
}

impl WsConn {
    /// Connects as a client: resolves the host, connects with a timeout, sets TCP_NODELAY,
    /// does TLS for `wss://`, and the WebSocket handshake with the bearer token and headers.
    pub fn connect(req: &ClientRequest, cfg: &WsConfig) -> Result<WsConn, WsError> {
        let mut request = req
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| WsError::BadUrl(crate::redact::url(&req.url)))?;
        let uri = request.uri().clone();
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(WsError::BadUrl(crate::redact::url(&req.url))),
        };
        let host = uri
            .host()
            .ok_or_else(|| WsError::BadUrl(crate::redact::url(&req.url)))?
            .to_owned();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        {
            let h = request.headers_mut();
            if let Some(token) = &req.bearer {
                let v = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| WsError::InvalidRequest("invalid bearer token".into()))?;
                h.insert("Authorization", v);
            }
            for (k, v) in &req.headers {
                let name: tungstenite::http::HeaderName = k
                    .parse()
                    .map_err(|_| WsError::InvalidRequest(format!("invalid header name {k}")))?;
                let value = v
                    .parse()
                    .map_err(|_| WsError::InvalidRequest(format!("invalid value for {k}")))?;
                h.insert(name, value);
            }
        }
        // DNS and connect share one deadline.
        // (A timeout too large for the clock means no deadline.)
        let deadline = Instant::now().checked_add(cfg.connect_timeout);
        let addrs = resolve(&host, port, deadline).map_err(WsError::Connect)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            let left = deadline.map_or(cfg.connect_timeout, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", cfg.connect_timeout),
                );
                break;
            }
            match TcpStream::connect_timeout(&a, left) {
                Ok(t) => {
                    tcp = Some(t);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(WsError::Connect(last))?;
        tcp.set_nodelay(true).map_err(WsError::Io)?;
        tcp.set_read_timeout(Some(cfg.handshake_timeout))
            .map_err(WsError::Io)?;
        tcp.set_write_timeout(Some(cfg.handshake_timeout))
            .map_err(WsError::Io)?;
        let keep = tcp.try_clone().map_err(WsError::Io)?;
        let stream = if tls {
            let connector = match &cfg.tls_connector {
                Some(c) => c.clone(),
                None => native_tls::TlsConnector::new().map_err(|e| WsError::Tls(e.to_string()))?,
            };
            let s = connector
                .connect(&host, tcp)
                .map_err(|e| WsError::Tls(e.to_string()))?;
            MaybeTlsStream::NativeTls(s)
        } else {
            MaybeTlsStream::Plain(tcp)
        };
        let (ws, _resp) = tungstenite::client::client_with_config(
            request,
            Sock::new(stream),
            Some(cfg.tungstenite()),
        )
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => {
                WsError::Rejected {
                    status: r.status().as_u16(),
                }
            }
            tungstenite::HandshakeError::Failure(tungstenite::Error::Io(io))
                if matches!(
                    io.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                WsError::HandshakeTimeout(cfg.handshake_timeout)
            }
            // A read timeout mid-handshake surfaces as an interrupted handshake.
            tungstenite::HandshakeError::Interrupted(_) => {
                WsError::HandshakeTimeout(cfg.handshake_timeout)
            }
            other => WsError::Handshake(other.to_string()),
        })?;
        log::debug!(target: LOG, "connected to {host}:{port}");
        Ok(WsConn {
            ws,
            tcp: keep,
            cfg: cfg.clone(),
        })
    }

    /// Completes a WebSocket upgrade on a connection another HTTP server accepted and whose
    /// request head it already read and parsed, but did not answer (so one port serves the
    /// application's own routes and the Media Streams upgrade): checks the head
    /// ([`check_upgrade`]), answers `101 Switching Protocols`, and keeps `leftover`, the bytes
    /// that server read past the head (usually none: a WebSocket client waits for the `101`).
    /// Then hand the connection to [`crate::session::Session::start`].
    ///
    /// For a server that writes the `101` itself, see [`WsConn::from_upgraded`].
    ///
    /// ```no_run
    /// use std::net::TcpListener;
    /// use twilio_realtime::io::http::{read_head, HttpLimits};
    /// use twilio_realtime::{Agent, Session, SessionConfig, WsConfig, WsConn};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:5050")?;
    /// let (mut tcp, _) = listener.accept()?;
    /// // Someone else's server read the request (here: the crate's own small reader).
    /// let (head, leftover) = read_head(&mut tcp, &HttpLimits::default())?;
    /// if head.path() == "/media-stream" {
    ///     let twilio = WsConn::accept_upgrade(tcp, &head, leftover, &WsConfig::default())?;
    ///     let agent = Agent::new("Assistant", "Be brief.");
    ///     Session::start(twilio, agent, SessionConfig::new(None))?.join();
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn accept_upgrade(
        tcp: TcpStream,
        head: &RequestHead,
        leftover: Vec<u8>,
        cfg: &WsConfig,
    ) -> Result<WsConn, WsError> {
        WsConn::accept_head(MaybeTlsStream::Plain(tcp), head, leftover, cfg)
    }

    /// Takes over a connection whose WebSocket upgrade another HTTP server already read and
    /// answered with `101 Switching Protocols` (carrying the `Sec-WebSocket-Accept` value
    /// [`check_upgrade`] returned), e.g. the socket an HTTP crate hands to its upgrade
    /// callback. `leftover` is what that server read past the request head, if it kept it.
    /// `examples/embed.rs` does this under the `touche` HTTP server.
    pub fn from_upgraded(
        tcp: TcpStream,
        leftover: Vec<u8>,
        cfg: &WsConfig,
    ) -> Result<WsConn, WsError> {
        tcp.set_nodelay(true).map_err(WsError::Io)?;
        let keep = tcp.try_clone().map_err(WsError::Io)?;
        let ws = WebSocket::from_partially_read(
            Sock::new(MaybeTlsStream::Plain(tcp)),
            leftover,
            Role::Server,
            Some(cfg.tungstenite()),
        );
        Ok(WsConn {
            ws,
            tcp: keep,
            cfg: cfg.clone(),
        })
    }

    /// [`WsConn::accept_upgrade`] over plain TCP or TLS.
    pub(crate) fn accept_head(
        stream: MaybeTlsStream<TcpStream>,
        head: &RequestHead,
        leftover: Vec<u8>,
        cfg: &WsConfig,
    ) -> Result<WsConn, WsError> {
        let mut stream = stream;
        let accept = check_upgrade(head)?;
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        let tcp = tcp_of(&stream).map_err(WsError::Io)?;
        tcp.set_nodelay(true).map_err(WsError::Io)?;
        tcp.set_write_timeout(Some(cfg.handshake_timeout))
            .map_err(WsError::Io)?;
        stream.write_all(resp.as_bytes()).map_err(WsError::Io)?;
        stream.flush().map_err(WsError::Io)?;
        let ws = WebSocket::from_partially_read(
            Sock::new(stream),
            leftover,
            Role::Server,
            Some(cfg.tungstenite()),
        );
        Ok(WsConn {
            ws,
            tcp,
            cfg: cfg.clone(),
        })
    }

    /// Accepts a connection on an accepted `TcpStream`: optional TLS handshake, reads the
    /// request head (with the handshake timeout) and upgrades. The head is returned so the
    /// caller can check the path and headers (e.g. `X-Twilio-Signature`).
    pub fn accept(
        tcp: TcpStream,
        tls: Option<&native_tls::TlsAcceptor>,
        cfg: &WsConfig,
    ) -> Result<(WsConn, RequestHead), WsError> {
        tcp.set_read_timeout(Some(cfg.handshake_timeout))
            .map_err(WsError::Io)?;
        tcp.set_write_timeout(Some(cfg.handshake_timeout))
            .map_err(WsError::Io)?;
        let mut stream = match tls {
            Some(acceptor) => MaybeTlsStream::NativeTls(
                acceptor
                    .accept(tcp)
                    .map_err(|e| WsError::Tls(e.to_string()))?,
            ),
            None => MaybeTlsStream::Plain(tcp),
        };
        let (head, leftover) =
            http::read_head(&mut stream, &HttpLimits::default()).map_err(WsError::Http)?;
        if !head.is_websocket_upgrade() {
            let _ = http::write_response(
                &mut stream,
                400,
                "text/plain",
                &[],
                b"expected a websocket upgrade\n",
            );
            return Err(WsError::NotAnUpgrade(
                "no Upgrade: websocket / Connection: upgrade",
            ));
        }
        let conn = WsConn::accept_head(stream, &head, leftover, cfg)?;
        Ok((conn, head))
    }

    fn prepare(mut self) -> Result<(Arc<Shared>, Receiver<()>, WsConfig), WsError> {
        if let Some(idle) = self.cfg.tcp_keepalive {
            let interval = (idle / 3).max(Duration::from_secs(1));
            sys::set_tcp_keepalive(self.tcp.as_raw_fd(), idle, interval, 3).map_err(WsError::Io)?;
        }
        if let Some(bytes) = self.cfg.send_buffer_size {
            sys::set_send_buffer(self.tcp.as_raw_fd(), bytes).map_err(WsError::Io)?;
        }
        self.tcp.set_read_timeout(None).map_err(WsError::Io)?;
        self.tcp.set_write_timeout(None).map_err(WsError::Io)?;
        self.tcp.set_nonblocking(true).map_err(WsError::Io)?;
        let sock = self.ws.get_mut();
        sock.armed = matches!(sock.inner, MaybeTlsStream::Plain(_));
        let backlog = sock.backlog.clone();
        let fd = self.tcp.as_raw_fd();
        let (flush_tx, flush_rx) = bounded(1);
        Ok((
            Arc::new(Shared {
                ws: Mutex::new(self.ws),
                tcp: self.tcp,
                fd,
                closed: AtomicBool::new(false),
                write_timeout: self.cfg.write_timeout,
                close_timeout: self.cfg.close_timeout,
                close_asked_us: AtomicU64::new(0),
                epoch: Instant::now(),
                last_rx_us: AtomicU64::new(0),
                flush_tx,
                failure: Mutex::new(None),
                backlog,
            }),
            flush_rx,
            self.cfg,
        ))
    }

    /// Before the threads start ([`WsConn::spawn`]): writes one text message, waiting at most
    /// the handshake timeout for the socket. For a short exchange right after the handshake
    /// (a warm model's configuration, [`crate::session::warm`]).
    pub fn send_text_blocking(&mut self, text: &str) -> Result<(), WsError> {
        self.tcp
            .set_write_timeout(Some(self.cfg.handshake_timeout))
            .map_err(WsError::Io)?;
        self.ws.send(Message::text(text)).map_err(closed_or)
    }

    /// Before the threads start: the next text message, waiting until `deadline` at most
    /// (pings are answered, other frames skipped). Past the deadline: [`WsError::Io`] of kind
    /// `TimedOut`. A message not read here is read by the threads [`WsConn::spawn`] starts.
    pub fn read_text_blocking(&mut self, deadline: Instant) -> Result<String, WsError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WsError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no message before the deadline",
                )));
            }
            self.tcp.set_read_timeout(Some(left)).map_err(WsError::Io)?;
            match self.ws.read() {
                Ok(Message::Text(t)) => return Ok(t.as_str().to_owned()),
                Ok(Message::Close(_)) => return Err(WsError::Closed),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(closed_or(e)),
            }
        }
    }

    /// Starts the reader and writer threads (named `{name}-rd`, `{name}-wr`). `on_message`
    /// runs on the reader thread for every text and binary message, then once with
    /// [`Incoming::Closed`] or [`Incoming::Error`].
    pub fn spawn<F>(self, name: &str, on_message: F) -> Result<Duplex, WsError>
    where
        F: FnMut(Incoming) + Send + 'static,
    {
        let (shared, flush_rx, cfg) = self.prepare()?;
        let (tx, rx) = bounded::<Out>(cfg.outbound_capacity.max(1));
        let (stop_tx, stop_rx) = unbounded::<()>();
        let writer = {
            let shared = shared.clone();
            let close_timeout = cfg.close_timeout;
            thread::Builder::new()
                .name(format!("{name}-wr"))
                .stack_size(cfg.thread_stack_size)
                .spawn(move || writer_loop(&shared, &rx, &flush_rx, &stop_rx, close_timeout))
                .map_err(WsError::Io)?
        };
        let reader = {
            let shared = shared.clone();
            let stop = stop_tx.clone();
            let spawned = thread::Builder::new()
                .name(format!("{name}-rd"))
                .stack_size(cfg.thread_stack_size)
                .spawn(move || reader_loop(&shared, on_message, &stop));
            match spawned {
                Ok(h) => h,
                Err(e) => {
                    let _ = stop_tx.send(());
                    let _ = writer.join();
                    return Err(WsError::Io(e));
                }
            }
        };
        Ok(Duplex {
            sender: WsSender {
                tx,
                stop_tx,
                shared,
            },
            reader: Some(reader),
            writer: Some(writer),
        })
    }

    /// Starts the threads with a handler that forwards every message into a bounded channel
    /// (`inbound_capacity`); the reader waits when the consumer falls behind.
    pub fn spawn_channel(self, name: &str) -> Result<(Duplex, Receiver<Incoming>), WsError> {
        let (tx, rx) = bounded(self.cfg.inbound_capacity.max(1));
        let d = self.spawn(name, move |m| {
            let _ = tx.send(m);
        })?;
        Ok((d, rx))
    }
}

/// A closed connection as [`WsError::Closed`], anything else as a protocol error.
fn closed_or(e: tungstenite::Error) -> WsError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => WsError::Closed,
        tungstenite::Error::Io(io) => WsError::Io(io),
        other => WsError::Protocol(ProtocolError(other)),
    }
}

/// Resolves `host` before `deadline`. An IP literal needs no lookup; a name is looked up on a
/// short-lived thread (the system resolver has no timeout of its own that we control): past the
/// deadline the connect fails and that thread is left to finish its lookup and exit.
fn resolve(
    host: &str,
    port: u16,
    deadline: Option<Instant>,
) -> io::Result<Vec<std::net::SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let Some(deadline) = deadline else {
        return (host, port).to_socket_addrs().map(|a| a.collect());
    };
    let host = host.to_owned();
    resolve_within(
        move || (host.as_str(), port).to_socket_addrs().map(|a| a.collect()),
        deadline,
    )
}

fn resolve_within<F>(lookup: F, deadline: Instant) -> io::Result<Vec<std::net::SocketAddr>>
where
    F: FnOnce() -> io::Result<Vec<std::net::SocketAddr>> + Send + 'static,
{
    let (tx, rx) = bounded(1);
    thread::Builder::new()
        .name("dns".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _ = tx.send(lookup());
        })?;
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "name resolution did not finish before the connect deadline",
        )),
    }
}

struct Shared {
    ws: Mutex<Ws>,
    tcp: TcpStream,
    fd: std::os::fd::RawFd,
    closed: AtomicBool,
    write_timeout: Duration,
    close_timeout: Duration,
    /// When a graceful close was asked for: microseconds from `epoch`, plus one (0: not yet).
    /// A flush stuck behind a peer that does not read gives up `close_timeout` after it.
    close_asked_us: AtomicU64,
    /// When the threads started; `last_rx_us` counts from here.
    epoch: Instant,
    /// Microseconds from `epoch` to the last frame read (of any kind, pings and pongs too).
    last_rx_us: AtomicU64,
    /// Asks the writer thread to flush what [`Shared::write_now`] left in tungstenite's buffer.
    flush_tx: Sender<()>,
    /// Why the writer gave the connection up (the reader reports it as its last message).
    failure: Mutex<Option<WsError>>,
    /// What this connection holds toward the peer (the same one its [`Sock`] updates).
    backlog: Arc<Backlog>,
}

impl Shared {
    fn touch(&self) {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_rx_us.store(us, Ordering::Relaxed);
    }

    fn last_received(&self) -> Instant {
        let us = self.last_rx_us.load(Ordering::Relaxed);
        self.epoch
            .checked_add(Duration::from_micros(us))
            .unwrap_or(self.epoch)
    }

    fn lock(&self) -> MutexGuard<'_, Ws> {
        self.ws.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one message without ever waiting: the lock is held only for non-blocking
    /// syscalls. When the socket is full, the rest stays in tungstenite's write buffer (bounded
    /// by `max_write_buffer_size`) and the writer thread flushes it, giving the connection up
    /// after the write timeout. So a peer that stops reading never blocks the caller.
    fn write_now(&self, msg: Message) -> Result<(), WsError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WsError::Closed);
        }
        let first = self.lock().send(msg);
        match first {
            Ok(()) => Ok(()),
            Err(e) if is_would_block(&e) => {
                // Full: a flush is already requested if the slot is taken.
                if self.flush_tx.try_send(()).is_ok() {
                    log::debug!(target: LOG, "socket full; the writer thread flushes");
                }
                Ok(())
            }
            Err(e) => Err(map_err(e)),
        }
    }

    /// Writes (or queues inside tungstenite) one message and flushes it, waiting for
    /// writability outside the lock. Only the writer thread waits like this.
    fn write(&self, msg: Message) -> Result<(), WsError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WsError::Closed);
        }
        let first = self.lock().send(msg);
        match first {
            Ok(()) => return Ok(()),
            Err(e) if is_would_block(&e) => {}
            Err(e) => return Err(map_err(e)),
        }
        self.flush_within()
    }

    /// Flushes tungstenite's buffer, waiting for writability outside the lock, for at most
    /// the write timeout, or the close timeout once a graceful close was asked for (a peer
    /// that does not read takes no close frame either: the close must not wait for the write
    /// timeout). It waits in slices of [`CLOSE_CHECK`] so that it sees such a request; only a
    /// connection whose peer stopped reading waits here at all.
    fn flush_within(&self) -> Result<(), WsError> {
        let deadline = std::time::Instant::now()
            .checked_add(self.write_timeout)
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(86_400 * 365));
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(WsError::Closed);
            }
            match self.lock().flush() {
                Ok(()) => return Ok(()),
                Err(e) if is_would_block(&e) => {}
                Err(e) => return Err(map_err(e)),
            }
            let until = self
                .close_deadline()
                .map_or(deadline, |close| close.min(deadline));
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(WsError::WriteTimeout);
            }
            sys::wait_writable(self.fd, Some(left.min(CLOSE_CHECK))).map_err(WsError::Io)?;
        }
    }

    /// Notes that a graceful close was asked for (the first time counts).
    fn ask_close(&self) {
        let us = u64::try_from(self.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let _ = self
            .close_asked_us
            .compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The close timeout's end, once a graceful close was asked for.
    fn close_deadline(&self) -> Option<Instant> {
        match self.close_asked_us.load(Ordering::Relaxed) {
            0 => None,
            us => self
                .epoch
                .checked_add(Duration::from_micros(us - 1))?
                .checked_add(self.close_timeout),
        }
    }

    /// Gives the connection up for `why` (kept for the reader's last message).
    fn fail(&self, why: WsError) {
        if !matches!(why, WsError::Closed) {
            log::debug!(target: LOG, "write failed: {why}");
            let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(why);
            }
        }
        self.shutdown();
    }

    /// How the reader ends once the socket is shut: with the writer's failure, if any.
    fn end(&self) -> Incoming {
        let f = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        f.map_or(Incoming::Closed(None), Incoming::Error)
    }

    fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

fn map_err(e: tungstenite::Error) -> WsError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => WsError::Closed,
        // A close frame already went out (e.g. the reader refused an oversize message): the
        // connection is closing, and the reader reports why.
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SendAfterClosing) => {
            WsError::Closed
        }
        tungstenite::Error::Io(io) => WsError::Io(io),
        other => WsError::Protocol(ProtocolError(other)),
    }
}

enum Out {
    Msg(Message, Charge),
    Close(Option<CloseFrame>),
}

fn writer_loop(
    shared: &Shared,
    rx: &Receiver<Out>,
    flush_rx: &Receiver<()>,
    stop_rx: &Receiver<()>,
    close_timeout: Duration,
) {
    loop {
        select! {
            recv(rx) -> m => match m {
                Ok(Out::Msg(msg, charge)) => {
                    // From here on tungstenite's buffer counts it, if the socket is full.
                    drop(charge);
                    if let Err(e) = shared.write(msg) {
                        shared.fail(e);
                        return;
                    }
                }
                Ok(Out::Close(frame)) => {
                    // Graceful: our close frame, then wait (bounded) for the reader to see the
                    // peer's reply, then close the socket either way.
                    let sent = shared.lock().close(frame);
                    let flushed = match sent {
                        Ok(()) => Ok(()),
                        Err(e) if is_would_block(&e) => Ok(()),
                        Err(e) => Err(e),
                    };
                    if flushed.is_ok() {
                        let _ = shared.write_pending();
                        let _ = stop_rx.recv_timeout(close_timeout);
                    }
                    shared.shutdown();
                    return;
                }
                Err(_) => {
                    shared.shutdown();
                    return;
                }
            },
            // A `write_now` found the socket full: push the rest out, or give up after the
            // write timeout.
            recv(flush_rx) -> _ => {
                if let Err(e) = shared.flush_within() {
                    shared.fail(e);
                    return;
                }
            }
            recv(stop_rx) -> _ => {
                shared.shutdown();
                return;
            }
        }
    }
}

impl Shared {
    fn write_pending(&self) -> Result<(), WsError> {
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        loop {
            match self.lock().flush() {
                Ok(()) => return Ok(()),
                Err(e) if is_would_block(&e) => {}
                Err(e) => return Err(map_err(e)),
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(WsError::WriteTimeout);
            }
            sys::wait_writable(self.fd, Some(left)).map_err(WsError::Io)?;
        }
    }
}

/// The text of a caught panic's payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Runs the handler; a panic in it comes back as its message.
fn deliver<F: FnMut(Incoming)>(on_message: &mut F, m: Incoming) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_message(m)))
        .map_err(|p| panic_text(p.as_ref()))
}

fn reader_loop<F: FnMut(Incoming)>(shared: &Shared, mut on_message: F, stop_tx: &Sender<()>) {
    // A handler that panics ends this connection, never the process or its other threads:
    // the socket is shut down, the writer stopped, and the handler told why (its last call).
    let last = loop {
        let r = shared.lock().read();
        if r.is_ok() {
            shared.touch();
        }
        match r {
            Ok(Message::Text(t)) => {
                if let Err(why) = deliver(&mut on_message, Incoming::Text(t)) {
                    log::error!(target: LOG, "message handler panicked: {why}");
                    break Incoming::Error(WsError::HandlerPanicked(why));
                }
            }
            Ok(Message::Binary(b)) => {
                if let Err(why) = deliver(&mut on_message, Incoming::Binary(b)) {
                    log::error!(target: LOG, "message handler panicked: {why}");
                    break Incoming::Error(WsError::HandlerPanicked(why));
                }
            }
            // Read again at once: that call writes the queued Pong.
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
            Ok(Message::Close(frame)) => {
                // tungstenite queued the close reply; push it out (best effort).
                let _ = shared.write_pending();
                break Incoming::Closed(frame.map(|f| CloseInfo {
                    code: u16::from(f.code),
                    reason: f.reason.to_string(),
                }));
            }
            Err(e) if is_would_block(&e) => {
                if shared.closed.load(Ordering::Acquire) {
                    break shared.end();
                }
                if let Err(e) = sys::wait_readable(shared.fd, None) {
                    break Incoming::Error(WsError::Io(e));
                }
            }
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                break shared.end()
            }
            Err(e) => {
                if shared.closed.load(Ordering::Acquire) {
                    // We closed it ourselves: not an error (unless the writer gave up).
                    break shared.end();
                }
                // Tell the peer why before dropping it: 1009 for a message over the size cap,
                // 1002 for a broken frame (best effort; the connection is ending either way).
                let code = match &e {
                    tungstenite::Error::Capacity(_) => Some(CloseCode::Size),
                    tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
                        Some(CloseCode::Protocol)
                    }
                    _ => None,
                };
                if let Some(code) = code {
                    let frame = CloseFrame {
                        code,
                        reason: "".into(),
                    };
                    let queued = shared.lock().close(Some(frame));
                    if queued.is_ok() || queued.as_ref().is_err_and(is_would_block) {
                        let _ = shared.write_pending();
                    }
                }
                break Incoming::Error(map_err(e));
            }
        }
    };
    log::debug!(target: LOG, "reader done: {last:?}");
    if matches!(last, Incoming::Error(WsError::HandlerPanicked(_))) {
        // Tell the peer it was our fault (1011), best effort.
        let frame = CloseFrame {
            code: CloseCode::Error,
            reason: "".into(),
        };
        let queued = shared.lock().close(Some(frame));
        if queued.is_ok() || queued.as_ref().is_err_and(is_would_block) {
            let _ = shared.write_pending();
        }
    }
    shared.shutdown();
    let _ = stop_tx.send(());
    if let Err(why) = deliver(&mut on_message, last) {
        log::error!(target: LOG, "message handler panicked on the last message: {why}");
    }
}

/// A running duplex WebSocket: its sender and its two threads.
pub struct Duplex {
    sender: WsSender,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl fmt::Debug for Duplex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Duplex")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Duplex {
    /// A sender for this connection (cheap to clone).
    pub fn sender(&self) -> WsSender {
        self.sender.clone()
    }

    /// Closes gracefully (see [`WsSender::close`]).
    pub fn close(&self) {
        self.sender.close();
    }

    /// True once the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// See [`WsSender::last_received`].
    pub fn last_received(&self) -> Instant {
        self.sender.last_received()
    }

    /// Waits for both threads to exit (call [`Duplex::close`] first to make them).
    pub fn join(mut self) {
        for h in [self.writer.take(), self.reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
    }
}

/// Sends on a duplex WebSocket from any thread.
#[derive(Clone)]
pub struct WsSender {
    tx: Sender<Out>,
    stop_tx: Sender<()>,
    shared: Arc<Shared>,
}

impl fmt::Debug for WsSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsSender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl WsSender {
    /// Queues a message for the writer thread, waiting while the queue is full.
    pub fn send(&self, msg: Message) -> Result<(), WsError> {
        if self.is_closed() {
            return Err(WsError::Closed);
        }
        let charge = Charge::new(&self.shared.backlog, &msg);
        self.tx
            .send(Out::Msg(msg, charge))
            .map_err(|_| WsError::Closed)
    }

    /// Queues a message for the writer thread; fails at once when the queue is full.
    pub fn try_send(&self, msg: Message) -> Result<(), WsError> {
        if self.is_closed() {
            return Err(WsError::Closed);
        }
        let charge = Charge::new(&self.shared.backlog, &msg);
        self.tx
            .try_send(Out::Msg(msg, charge))
            .map_err(|e| match e {
                TrySendError::Full(_) => WsError::QueueFull,
                TrySendError::Disconnected(_) => WsError::Closed,
            })
    }

    /// Queues a text message.
    pub fn send_text(&self, text: String) -> Result<(), WsError> {
        self.send(Message::text(text))
    }

    /// Writes a message directly from the calling thread, under the socket lock, with no
    /// hand-off to the writer thread. Its order relative to messages still waiting in the
    /// writer's queue is not defined; messages sent with `send_now` keep their order. Never
    /// waits for the peer: if the socket is full, the message stays in the write buffer
    /// (`max_write_buffer_size`; beyond it this fails) and the writer thread flushes it; if
    /// the peer takes nothing for the write timeout the connection is given up and the reader
    /// ends with [`WsError::WriteTimeout`].
    pub fn send_now(&self, msg: Message) -> Result<(), WsError> {
        let r = self.shared.write_now(msg);
        if let Err(e) = &r {
            if !matches!(e, WsError::Closed) {
                self.abort();
            }
        }
        r
    }

    /// Like [`WsSender::send_now`] for a thread that writes on another's behalf and has
    /// nobody to tell of a failure: a failed write gives the connection up with its cause kept
    /// for the reader, whose last message is then [`Incoming::Error`] with it. True if the
    /// message was written (or buffered to be flushed).
    pub(crate) fn send_now_or_give_up(&self, msg: Message) -> bool {
        match self.shared.write_now(msg) {
            Ok(()) => true,
            Err(WsError::Closed) => false,
            Err(e) => {
                self.shared.fail(e);
                let _ = self.stop_tx.send(());
                false
            }
        }
    }

    /// Closes gracefully: queued messages go out, then a close frame; the socket is shut
    /// down when the peer answers or after the close timeout. Idempotent. A peer that stopped
    /// reading gets the close timeout too, not the write timeout: the writes still waiting for
    /// it give up then, and the reader ends with [`WsError::WriteTimeout`].
    pub fn close(&self) {
        self.close_with(CloseCode::Normal.into(), "");
    }

    /// Like [`WsSender::close`] with a close code and reason.
    pub fn close_with(&self, code: u16, reason: &str) {
        if self.is_closed() {
            return;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        self.shared.ask_close();
        if self.tx.try_send(Out::Close(Some(frame))).is_err() {
            self.abort();
        }
    }

    /// Shuts the socket down at once (no close frame); both threads exit promptly.
    pub fn abort(&self) {
        self.shared.shutdown();
        let _ = self.stop_tx.send(());
    }

    /// True once the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// When the reader last received a frame of any kind (data, ping, pong or close); the
    /// moment the threads started if none came yet. For liveness rules (a silent Twilio
    /// stream, a model that answers no ping).
    pub fn last_received(&self) -> Instant {
        self.shared.last_received()
    }

    /// Bytes handed to this connection that the kernel has not taken yet: the payloads of
    /// messages waiting for the writer thread ([`WsSender::send`]) plus the encoded frames
    /// tungstenite keeps because the socket was full ([`WsSender::send_now`], or the writer
    /// mid-flush; at most [`WsConfig::max_write_buffer_size`]). About 0 while the peer keeps
    /// up; it grows while the peer does not read, so it shows memory building up behind a
    /// slow peer. The kernel's own send buffer is not counted. Two relaxed atomic loads.
    ///
    /// ```no_run
    /// use twilio_realtime::io::ws::{ClientRequest, WsConfig, WsConn};
    ///
    /// let conn = WsConn::connect(&ClientRequest::new("ws://127.0.0.1:9000/"), &WsConfig::default())?;
    /// let (duplex, _incoming) = conn.spawn_channel("peer")?;
    /// let sender = duplex.sender();
    /// sender.send_now("hello".into())?;
    /// println!("{} bytes still on their way", sender.queued_bytes());
    /// # Ok::<(), twilio_realtime::io::ws::WsError>(())
    /// ```
    pub fn queued_bytes(&self) -> u64 {
        self.shared.backlog.bytes()
    }

    /// The counters behind [`WsSender::queued_bytes`], to read after this sender is gone.
    pub(crate) fn backlog(&self) -> Arc<Backlog> {
        self.shared.backlog.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_lookup_that_hangs_fails_at_the_connect_deadline() {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(200);
        let r = resolve_within(
            || {
                thread::sleep(Duration::from_secs(3));
                Ok(Vec::new())
            },
            deadline,
        );
        let took = started.elapsed();
        let e = r.expect_err("must time out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(took < Duration::from_secs(2), "took {took:?}");
        // a lookup that answers in time is used
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let r = resolve_within(
            move || Ok(vec![addr]),
            Instant::now() + Duration::from_secs(5),
        );
        assert_eq!(r.unwrap(), vec![addr]);
        // IP literals need no lookup at all
        assert_eq!(
            resolve("127.0.0.1", 9, Some(Instant::now())).unwrap(),
            vec![addr]
        );
    }

    /// A connected pair whose peer (the second) stops reading its socket once one message
    /// waits in its channel (nobody reads `Receiver` until the test does); small kernel
    /// buffers both sides, so the window closes after KiB, not megabytes.
    fn pair_with_a_peer_that_stops_reading(
        write_timeout: Duration,
    ) -> (Duplex, Duplex, Receiver<Incoming>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Small kernel buffers both sides: the window closes after KiB, not megabytes.
        sys::set_recv_buffer(listener.as_raw_fd(), 8 * 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            // One message in the channel: the peer's reader stops reading once it is full.
            let cfg = WsConfig {
                inbound_capacity: 1,
                ..WsConfig::default()
            };
            let (c, _) = WsConn::accept(tcp, None, &cfg).unwrap();
            c.spawn_channel("peer").unwrap()
        });
        let cfg = WsConfig {
            send_buffer_size: Some(4 * 1024),
            write_timeout,
            ..WsConfig::default()
        };
        let client = WsConn::connect(&ClientRequest::new(format!("ws://{addr}/")), &cfg).unwrap();
        let client = client.spawn("cl", |_| {}).unwrap();
        let (peer, prx) = server.join().unwrap();
        (client, peer, prx)
    }

    /// 400 KB of 1000-byte messages with `send_now`: far past every buffer on the way.
    fn fill(tx: &WsSender) -> (String, usize) {
        let msg = "x".repeat(1000);
        let n = 400;
        for _ in 0..n {
            tx.send_now(Message::text(msg.as_str())).unwrap();
        }
        (msg, n)
    }

    #[test]
    fn queued_bytes_grow_while_the_peer_does_not_read_and_drain_back_to_zero() {
        let (client, peer, prx) = pair_with_a_peer_that_stops_reading(Duration::from_secs(60));
        let tx = client.sender();
        assert_eq!(tx.queued_bytes(), 0);
        let (msg, sent_now) = fill(&tx);
        let stuck = tx.queued_bytes();
        assert!(stuck > 300_000, "only {stuck} bytes counted as queued");
        // The writer thread is busy flushing: what is queued for it counts as well.
        let queued = 5;
        for _ in 0..queued {
            tx.try_send(Message::text(msg.as_str())).unwrap();
        }
        let more = tx.queued_bytes();
        assert!(more >= stuck + 4_000, "{stuck} -> {more}");

        // The peer reads everything: back to 0.
        let mut got = 0;
        while got < sent_now + queued {
            match prx.recv_timeout(Duration::from_secs(10)).unwrap() {
                Incoming::Text(t) => {
                    assert_eq!(t.len(), msg.len());
                    got += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while tx.queued_bytes() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(tx.queued_bytes(), 0);
        client.close();
        peer.close();
        client.join();
        peer.join();
    }

    #[test]
    fn a_close_gives_a_peer_that_stopped_reading_the_close_timeout_not_the_write_timeout() {
        let (client, peer, prx) = pair_with_a_peer_that_stops_reading(Duration::from_secs(60));
        let tx = client.sender();
        fill(&tx);
        let backlog = tx.backlog();
        drop(tx);
        assert!(backlog.bytes() > 0);
        // The writer thread is flushing into the full socket now (for up to 60 s).
        thread::sleep(Duration::from_millis(200));
        let asked = Instant::now();
        client.close();
        client.join();
        let took = asked.elapsed();
        // The close timeout (1 s) and one CLOSE_CHECK slice, with room for a slow machine.
        assert!(took < Duration::from_secs(5), "the close took {took:?}");
        assert_eq!(backlog.bytes(), 0, "the socket and its buffer are gone");
        // The peer's reader waits for room in its channel: let it go.
        drop(prx);
        peer.close();
        peer.join();
    }

    #[test]
    fn both_ends_of_a_running_socket_have_tcp_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = WsConfig {
            tcp_keepalive: Some(Duration::from_secs(9)),
            ..WsConfig::default()
        };
        let server = {
            let cfg = cfg.clone();
            thread::spawn(move || {
                let (tcp, _) = listener.accept().unwrap();
                let (c, _) = WsConn::accept(tcp, None, &cfg).unwrap();
                c.spawn_channel("sv").unwrap()
            })
        };
        let client = WsConn::connect(&ClientRequest::new(format!("ws://{addr}/")), &cfg).unwrap();
        let (client, _crx) = client.spawn_channel("cl").unwrap();
        let (server, _srx) = server.join().unwrap();
        for d in [&client, &server] {
            let fd = d.sender.shared.fd;
            let on = sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE).unwrap();
            assert_eq!(on, 1);
            #[cfg(target_os = "linux")]
            {
                let idle = sys::get_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE).unwrap();
                let intvl = sys::get_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL).unwrap();
                let cnt = sys::get_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT).unwrap();
                assert_eq!((idle, intvl, cnt), (9, 3, 3));
            }
        }
        client.close();
        server.close();
        client.join();
        server.join();
    }
}
