//! Twilio request signatures (`X-Twilio-Signature`).
//!
//! Twilio signs every webhook and the Media Streams WebSocket upgrade with the account's auth
//! token: base64 of HMAC-SHA1 over the full URL Twilio used, followed (for form POSTs) by each
//! POST parameter's name and value, sorted by name. For the WebSocket upgrade the URL is the
//! `wss://` URL as written in the TwiML. Build URLs from your configured public origin, not
//! from headers a proxy may rewrite.
//!
//! ```
//! use twilio_realtime::server::signature::{compute, validate};
//!
//! // The vector from Twilio's documentation.
//! let params = [
//!     ("CallSid", "CA1234567890ABCDE"),
//!     ("Caller", "+12349013030"),
//!     ("Digits", "1234"),
//!     ("From", "+12349013030"),
//!     ("To", "+18005551212"),
//! ];
//! let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
//! assert_eq!(compute("12345", url, &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
//! assert!(validate("12345", url, &params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
//! assert!(!validate("12345", url, &params, "AAAATR6DLpKmkAf8muzZqo1nDgQ="));
//! ```

use base64::Engine;

use crate::io::http::RequestHead;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

fn mac(token: &str, url: &str, params: &[(&str, &str)]) -> HmacSha1 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha1 as KeyInit>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(url.as_bytes());
    let mut sorted: Vec<&(&str, &str)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(b.1)));
    for (k, v) in sorted {
        m.update(k.as_bytes());
        m.update(v.as_bytes());
    }
    m
}

/// The signature Twilio would send for `url` and the form `params` (empty for a GET or the
/// WebSocket upgrade).
pub fn compute(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let tag = mac(token, url, params).finalize().into_bytes();
    base64::engine::general_purpose::STANDARD.encode(tag)
}

/// True if `signature` is Twilio's signature of `url` and `params` (compared in constant time).
pub fn validate(token: &str, url: &str, params: &[(&str, &str)], signature: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    mac(token, url, params).verify_slice(&expected).is_ok()
}

/// Like [`validate`], also accepting the URL with or without a trailing slash on its path
/// (Twilio signs the URL exactly as configured, which operators write both ways).
pub fn validate_lenient(token: &str, url: &str, params: &[(&str, &str)], signature: &str) -> bool {
    if validate(token, url, params, signature) {
        return true;
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let other = match base.strip_suffix('/') {
        Some(b) => b.to_owned(),
        None => format!("{base}/"),
    };
    let other = match query {
        Some(q) => format!("{other}?{q}"),
        None => other,
    };
    validate(token, &other, params, signature)
}

/// The header Twilio puts its signature in.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// Why a request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// The request has no `X-Twilio-Signature` header.
    Missing,
    /// The signature is not Twilio's signature of this URL and form with this auth token.
    Invalid,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureError::Missing => "no X-Twilio-Signature",
            SignatureError::Invalid => "invalid X-Twilio-Signature",
        })
    }
}

impl std::error::Error for SignatureError {}

/// Checks a webhook request (e.g. `POST /incoming-call`, `/call-status`) as the bundled
/// server does, for an application whose own HTTP server read it: the signature in `head`
/// over `origin` (the public `https://host` Twilio reached, see
/// [`public_origin`](super::public_origin)) followed by the request target, and the decoded
/// form body (`form`, see [`parse_form`](crate::io::http::parse_form)). A trailing slash on
/// the path is accepted either way.
///
/// ```
/// use twilio_realtime::io::http::RequestHead;
/// use twilio_realtime::server::signature::{compute, verify_webhook, SignatureError};
///
/// let form = vec![("CallSid".to_owned(), "CA123".to_owned())];
/// let sig = compute("token", "https://example.com/incoming-call", &[("CallSid", "CA123")]);
/// let head = |sig: &str| {
///     RequestHead::new("POST", "/incoming-call", [("X-Twilio-Signature", sig)])
/// };
/// assert_eq!(verify_webhook("token", "https://example.com", &head(&sig), &form), Ok(()));
/// assert_eq!(
///     verify_webhook("other", "https://example.com", &head(&sig), &form),
///     Err(SignatureError::Invalid)
/// );
/// ```
pub fn verify_webhook(
    auth_token: &str,
    origin: &str,
    head: &RequestHead,
    form: &[(String, String)],
) -> Result<(), SignatureError> {
    let sig = head
        .header(SIGNATURE_HEADER)
        .ok_or(SignatureError::Missing)?;
    let url = format!("{}{}", origin.trim_end_matches('/'), head.target);
    let params: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match validate_lenient(auth_token, &url, &params, sig) {
        true => Ok(()),
        false => Err(SignatureError::Invalid),
    }
}

/// Checks the Media Streams WebSocket upgrade as the bundled server does: Twilio signs the
/// `wss://` URL as written in the TwiML, i.e. `origin` (the public `https://host`) with the
/// `wss` scheme, followed by the request target; no form. A trailing slash on the path is
/// accepted either way.
///
/// ```
/// use twilio_realtime::io::http::RequestHead;
/// use twilio_realtime::server::signature::{compute, verify_upgrade, SignatureError};
///
/// let sig = compute("token", "wss://example.com/media-stream", &[]);
/// let head = RequestHead::new("GET", "/media-stream", [("X-Twilio-Signature", sig)]);
/// assert_eq!(verify_upgrade("token", "https://example.com", &head), Ok(()));
/// let unsigned = RequestHead::new("GET", "/media-stream", Vec::<(String, String)>::new());
/// assert_eq!(
///     verify_upgrade("token", "https://example.com", &unsigned),
///     Err(SignatureError::Missing)
/// );
/// ```
pub fn verify_upgrade(
    auth_token: &str,
    origin: &str,
    head: &RequestHead,
) -> Result<(), SignatureError> {
    let sig = head
        .header(SIGNATURE_HEADER)
        .ok_or(SignatureError::Missing)?;
    let url = format!("{}{}", super::wss_origin(origin), head.target);
    match validate_lenient(auth_token, &url, &[], sig) {
        true => Ok(()),
        false => Err(SignatureError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: [(&str, &str); 5] = [
        ("To", "+18005551212"),
        ("CallSid", "CA1234567890ABCDE"),
        ("From", "+12349013030"),
        ("Digits", "1234"),
        ("Caller", "+12349013030"),
    ];
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    #[test]
    fn documented_vector_in_any_parameter_order() {
        assert_eq!(
            compute("12345", URL, &PARAMS),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn wrong_token_url_params_or_garbage_fail() {
        let sig = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert!(validate("12345", URL, &PARAMS, sig));
        assert!(!validate("12346", URL, &PARAMS, sig));
        assert!(!validate(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &PARAMS,
            sig
        ));
        assert!(!validate("12345", URL, &PARAMS[1..], sig));
        assert!(!validate("12345", URL, &PARAMS, "not base64!"));
        assert!(!validate("12345", URL, &PARAMS, ""));
    }

    #[test]
    fn websocket_url_with_or_without_trailing_slash() {
        let sig = compute("tok", "wss://example.com/media-stream", &[]);
        assert!(validate_lenient(
            "tok",
            "wss://example.com/media-stream/",
            &[],
            &sig
        ));
        assert!(validate_lenient(
            "tok",
            "wss://example.com/media-stream",
            &[],
            &sig
        ));
        let sig = compute("tok", "wss://example.com/media-stream/", &[]);
        assert!(validate_lenient(
            "tok",
            "wss://example.com/media-stream",
            &[],
            &sig
        ));
        assert!(!validate_lenient(
            "tok",
            "wss://example.com/other",
            &[],
            &sig
        ));
    }
}
