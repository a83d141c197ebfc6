//! The small part of HTTP/1.1 our servers need: reading a request head with limits, reading
//! a `Content-Length` body, writing a response, and decoding Twilio's form-encoded webhooks.
//!
//! Heads are parsed with [`httparse`]. Timeouts are the socket's: wrap it in [`ReadBy`] for an
//! overall deadline (what the server does), or set `TcpStream::set_read_timeout` for a
//! per-read one; a read that times out becomes [`HttpError::Timeout`].
//!
//! ```
//! use twilio_realtime::io::http::{read_head, HttpLimits};
//!
//! let raw = b"GET /media-stream?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
//! let (head, rest) = read_head(&mut &raw[..], &HttpLimits::default()).unwrap();
//! assert_eq!(head.path(), "/media-stream");
//! assert_eq!(head.query(), Some("x=1"));
//! assert_eq!(head.header("HOST"), Some("example.com"));
//! assert!(head.is_websocket_upgrade());
//! assert!(rest.is_empty());
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Limits on a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest head (request line + headers) in bytes. Default 16 KiB.
    pub max_head_bytes: usize,
    /// Most header lines. Default 100.
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
        }
    }
}

/// Errors reading a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum HttpError {
    /// The client did not finish its request in time (socket read timeout).
    Timeout,
    /// The connection closed before the head (or body) was complete.
    Incomplete,
    /// The head is larger than allowed.
    HeadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// More header lines than allowed.
    TooManyHeaders,
    /// The request line or a header line is not valid HTTP/1.x.
    Malformed(&'static str),
    /// The body is larger than allowed.
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Chunked or otherwise unsupported body encoding.
    UnsupportedBody,
    /// Another socket error.
    Io(io::Error),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Timeout => f.write_str("request timed out"),
            HttpError::Incomplete => f.write_str("connection closed mid-request"),
            HttpError::HeadTooLarge { limit } => {
                write!(f, "request head larger than {limit} bytes")
            }
            HttpError::TooManyHeaders => f.write_str("too many header lines"),
            HttpError::Malformed(what) => write!(f, "malformed request: {what}"),
            HttpError::BodyTooLarge { limit } => {
                write!(f, "request body larger than {limit} bytes")
            }
            HttpError::UnsupportedBody => f.write_str("unsupported body encoding"),
            HttpError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn io_err(e: io::Error) -> HttpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout,
        _ => HttpError::Io(e),
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Headers in order (names as sent).
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// A head as another HTTP server parsed it (version `HTTP/1.1`): for
    /// [`crate::io::ws::check_upgrade`] and [`crate::io::ws::WsConn::accept_upgrade`].
    pub fn new<K, V>(
        method: impl Into<String>,
        target: impl Into<String>,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> RequestHead
    where
        K: Into<String>,
        V: Into<String>,
    {
        RequestHead {
            method: method.into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The path (target without the query).
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }

    /// The query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True for a WebSocket upgrade request (`Upgrade: websocket`, `Connection: upgrade`).
    pub fn is_websocket_upgrade(&self) -> bool {
        let upgrade = self
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let connection = self.header("connection").is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        upgrade && connection
    }

    /// The head as bytes again (to hand to a WebSocket handshake).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// Reads a request head; returns it and any bytes read past it.
///
/// The head is parsed by [`httparse`] once its end (an empty line) has arrived; the search for
/// that end looks at each byte once, so a client that sends its head a byte at a time costs
/// linear time, not quadratic. Wrap a socket in [`ReadBy`] for an overall deadline.
pub fn read_head<R: Read>(
    r: &mut R,
    limits: &HttpLimits,
) -> Result<(RequestHead, Vec<u8>), HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Bytes already searched for the end of the head.
    let mut searched = 0usize;
    loop {
        let n = r.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            return Err(HttpError::Incomplete);
        }
        buf.extend_from_slice(&chunk[..n]);
        // A head ends with "\r\n\r\n" (or a bare "\n\n", which httparse also accepts): look
        // for "\n\r\n" / "\n\n" in the new bytes and the two before them.
        let from = searched.saturating_sub(2);
        searched = buf.len();
        let window = &buf[from..];
        let maybe_end = window
            .windows(2)
            .enumerate()
            .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && window.get(i + 2) == Some(&b'\n')));
        if maybe_end {
            if let Some((head, len)) = parse_head(&buf, limits)? {
                if len > limits.max_head_bytes {
                    return Err(HttpError::HeadTooLarge {
                        limit: limits.max_head_bytes,
                    });
                }
                let leftover = buf[len..].to_vec();
                return Ok((head, leftover));
            }
        }
        if buf.len() > limits.max_head_bytes {
            return Err(HttpError::HeadTooLarge {
                limit: limits.max_head_bytes,
            });
        }
    }
}

/// Parses a complete head with httparse; `None` if it is not complete yet.
fn parse_head(buf: &[u8], limits: &HttpLimits) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(HttpError::Malformed("unsupported HTTP version"))
        }
        Err(httparse::Error::HeaderName) => return Err(HttpError::Malformed("bad header name")),
        Err(httparse::Error::HeaderValue) => return Err(HttpError::Malformed("bad header value")),
        Err(_) => return Err(HttpError::Malformed("bad request line")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("bad request line"));
    };
    // httparse takes any token as a method; ours are upper case (RFC 9110 methods are
    // case-sensitive and every registered one is upper case).
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("bad request target"));
    }
    let mut out = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let v = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed("header value is not UTF-8"))?;
        out.push((h.name.to_owned(), v.trim().to_owned()));
    }
    Ok(Some((
        RequestHead {
            method: method.to_owned(),
            target: target.to_owned(),
            version: format!("HTTP/1.{version}"),
            headers: out,
        },
        len,
    )))
}

/// A socket read against an overall deadline: before each read the socket's read timeout is
/// set to the time left, so a client that dribbles a byte every few seconds is still cut off
/// when the deadline passes (a per-read timeout would let it go on for ever).
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use twilio_realtime::io::http::{read_head, HttpLimits, ReadBy};
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let (tcp, _) = listener.accept().unwrap();
/// let deadline = Instant::now() + Duration::from_secs(10);
/// let head = read_head(&mut ReadBy::new(&tcp, deadline), &HttpLimits::default());
/// ```
#[derive(Debug)]
pub struct ReadBy<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl<'a> ReadBy<'a> {
    /// Reads from `stream` until `deadline`.
    pub fn new(stream: &'a TcpStream, deadline: Instant) -> ReadBy<'a> {
        ReadBy { stream, deadline }
    }
}

impl Read for ReadBy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        // A zero timeout would mean "block for ever".
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

/// Reads the body announced by `Content-Length` (none → empty), at most `max` bytes.
pub fn read_body<R: Read>(
    r: &mut R,
    head: &RequestHead,
    leftover: Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, HttpError> {
    if head.header("transfer-encoding").is_some() {
        return Err(HttpError::UnsupportedBody);
    }
    let len: usize = match head.header("content-length") {
        None => return Ok(Vec::new()),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| HttpError::Malformed("bad content-length"))?,
    };
    if len > max {
        return Err(HttpError::BodyTooLarge { limit: max });
    }
    let mut body = leftover;
    body.truncate(len);
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        let want = (len - body.len()).min(chunk.len());
        let n = r.read(&mut chunk[..want]).map_err(io_err)?;
        if n == 0 {
            return Err(HttpError::Incomplete);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Writes a complete response with `Content-Length` and `Connection: close`.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Decodes an `application/x-www-form-urlencoded` body with the `form_urlencoded` crate (`+`
/// is a space; bad escapes are kept literally; invalid UTF-8 is replaced).
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form(b"From=%2B15550100&Body=hello+world&Bad=%zz&Empty=&Tail=%4");
        assert_eq!(
            f,
            vec![
                ("From".to_owned(), "+15550100".to_owned()),
                ("Body".into(), "hello world".into()),
                ("Bad".into(), "%zz".into()),
                ("Empty".into(), "".into()),
                ("Tail".into(), "%4".into()),
            ]
        );
    }

    #[test]
    fn head_limits_and_errors() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(matches!(
            read_head(&mut big.as_bytes(), &HttpLimits::default()),
            Err(HttpError::HeadTooLarge { .. })
        ));
        assert!(matches!(
            read_head(
                &mut &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],
                &HttpLimits::default()
            ),
            Err(HttpError::Incomplete)
        ));
        for bad in [
            "get / HTTP/1.1",
            "GET nope HTTP/1.1",
            "GET / HTTP/2",
            "GET /",
            "GET / HTTP/1.1\r\nNoColon",
        ] {
            let raw = format!("{bad}\r\n\r\n");
            assert!(
                matches!(
                    read_head(&mut raw.as_bytes(), &HttpLimits::default()),
                    Err(HttpError::Malformed(_))
                ),
                "{bad}"
            );
        }
        let many: String = (0..200).map(|i| format!("H{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            read_head(&mut raw.as_bytes(), &HttpLimits::default()),
            Err(HttpError::TooManyHeaders)
        ));
    }

    #[test]
    fn body_with_leftover() {
        let raw = b"POST /incoming-call HTTP/1.1\r\nContent-Length: 11\r\n\r\nFrom=%2B1&T";
        let mut r = &raw[..];
        let (head, left) = read_head(&mut r, &HttpLimits::default()).unwrap();
        let mut rest = &b"o=2"[..];
        // only 11 bytes are taken even if more are offered
        let body = read_body(&mut rest, &head, left, 1000).unwrap();
        assert_eq!(body, b"From=%2B1&T");
        let (head, left) = read_head(&mut &raw[..], &HttpLimits::default()).unwrap();
        assert!(matches!(
            read_body(&mut &b""[..], &head, left, 5),
            Err(HttpError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn response_shape() {
        let mut out = Vec::new();
        write_response(&mut out, 403, "text/plain", &[("X-A", "1")], b"no").unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.ends_with("\r\n\r\nno"));
    }

    /// Hands out one byte per read, like a client that dribbles its head.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_parses_like_one_sent_whole() {
        let raw = b"GET /media-stream?a=1 HTTP/1.1\r\nHost: h\r\nX-Long: abc\r\n\r\nrest";
        let whole = read_head(&mut &raw[..], &HttpLimits::default()).unwrap();
        let dribbled = read_head(&mut Dribble(raw), &HttpLimits::default()).unwrap();
        // One byte per read: nothing past the head has been read yet.
        assert_eq!(dribbled.0, whole.0);
        assert!(dribbled.1.is_empty());
        assert_eq!(whole.1, b"rest");
        // Bare LF line ends are accepted too.
        let lf = read_head(
            &mut Dribble(b"GET / HTTP/1.0\nHost: h\n\n"),
            &HttpLimits::default(),
        )
        .unwrap()
        .0;
        assert_eq!(
            (lf.version.as_str(), lf.header("host")),
            ("HTTP/1.0", Some("h"))
        );
        // The size limit holds for a dribbled head that never ends.
        let endless = vec![b'a'; 40_000];
        let mut r = Dribble(b"GET / HTTP/1.1\r\nX: ");
        let mut head = Vec::new();
        r.read_to_end(&mut head).unwrap();
        head.extend_from_slice(&endless);
        assert!(matches!(
            read_head(&mut Dribble(&head), &HttpLimits::default()),
            Err(HttpError::HeadTooLarge { limit: 16384 })
        ));
    }

    #[test]
    fn read_by_ends_a_dribbling_client_at_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            // A byte every 50 ms: each read is quick, the whole head never is.
            for b in b"GET /healthz HTTP/1.1\r\nHost: x".iter().cycle().take(200) {
                if c.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (tcp, _) = listener.accept().unwrap();
        let t0 = Instant::now();
        let res = read_head(
            &mut ReadBy::new(&tcp, t0 + Duration::from_millis(400)),
            &HttpLimits::default(),
        );
        assert!(matches!(res, Err(HttpError::Timeout)), "{res:?}");
        drop(tcp);
        client.join().unwrap();
    }
}
