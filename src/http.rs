//! The small part of HTTP/1.1 our servers need: reading a request head with limits, reading
//! a `Content-Length` body, writing a response, and decoding Twilio's form-encoded webhooks.
//!
//! Timeouts are the socket's: set `TcpStream::set_read_timeout` before [`read_head`]; a read
//! that times out becomes [`HttpError::Timeout`].
//!
//! ```
//! use twilio_realtime::http::{read_head, HttpLimits};
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
pub fn read_head<R: Read>(
    r: &mut R,
    limits: &HttpLimits,
) -> Result<(RequestHead, Vec<u8>), HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        if buf.len() > limits.max_head_bytes {
            return Err(HttpError::HeadTooLarge {
                limit: limits.max_head_bytes,
            });
        }
        let n = r.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            return Err(HttpError::Incomplete);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if end > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge {
            limit: limits.max_head_bytes,
        });
    }
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(HttpError::Malformed("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("bad request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("bad request target"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Malformed("unsupported HTTP version"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= limits.max_headers {
            return Err(HttpError::TooManyHeaders);
        }
        let (k, v) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header without colon"))?;
        if k.is_empty()
            || k.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(HttpError::Malformed("bad header name"));
        }
        headers.push((k.to_owned(), v.trim().to_owned()));
    }
    let leftover = buf[end + 4..].to_vec();
    Ok((
        RequestHead {
            method: method.to_owned(),
            target: target.to_owned(),
            version: version.to_owned(),
            headers,
        },
        leftover,
    ))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
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

/// Decodes an `application/x-www-form-urlencoded` body (`+` is a space; bad escapes are
/// kept literally).
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let k = it.next().unwrap_or_default();
            let v = it.next().unwrap_or_default();
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
}
