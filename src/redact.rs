//! Keeping secrets out of `Debug` output, log lines and events: URLs with keys in their query,
//! credential headers, and the one-time stream token inside Twilio's raw `start` message.

/// What a secret prints as.
pub(crate) const REDACTED: &str = "<redacted>";

/// True for a query parameter or header name that carries a credential (`api-key`,
/// `api_key`, `key`, `token`, `access_token`, `secret`, `password`, `signature`, `sig`,
/// `authorization`, `cookie`, …).
pub(crate) fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(n.as_str(), "key" | "sig" | "cookie" | "set-cookie")
        || ["key", "token", "secret", "password", "signature", "auth"]
            .iter()
            .any(|s| n.contains(s))
}

/// `url` with the value of every credential-like query parameter (and any `user:password@`)
/// replaced by `<redacted>`; other parameters, such as `model=…`, stay readable.
pub(crate) fn url(url: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (base, query) = match base.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (base, None),
    };
    let mut out = String::with_capacity(url.len());
    // Userinfo: scheme://user:pass@host → scheme://<redacted>@host
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((_, host)) => {
                    out.push_str(REDACTED);
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(base),
    }
    if let Some(q) = query {
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) if is_secret_name(k) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Twilio's raw `start` message with the values of its secret-looking `customParameters`
/// (the one-time stream token) replaced. Other messages come back unchanged.
pub(crate) fn twilio_start(raw: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(raw) else {
        return raw.to_owned();
    };
    let Some(params) = v
        .get_mut("start")
        .and_then(|s| s.get_mut("customParameters"))
        .and_then(|p| p.as_object_mut())
    else {
        return raw.to_owned();
    };
    let mut changed = false;
    for (k, val) in params.iter_mut() {
        if is_secret_name(k) {
            *val = serde_json::Value::String(REDACTED.to_owned());
            changed = true;
        }
    }
    if changed {
        v.to_string()
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_shape_and_lose_their_keys() {
        assert_eq!(
            url("wss://x.openai.azure.com/openai/realtime?api-version=2025-04-01&deployment=gpt&api-key=s3cr3t"),
            "wss://x.openai.azure.com/openai/realtime?api-version=2025-04-01&deployment=gpt&api-key=<redacted>"
        );
        assert_eq!(
            url("wss://api.openai.com/v1/realtime?model=gpt-realtime"),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        assert_eq!(
            url("ws://user:pw@127.0.0.1:9/x?token=abc#frag"),
            "ws://<redacted>@127.0.0.1:9/x?token=<redacted>#frag"
        );
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn the_stream_token_leaves_the_start_message() {
        let raw = r#"{"event":"start","start":{"callSid":"CA1","customParameters":{"caller":"+1555","token":"0123abcd"}}}"#;
        let out = twilio_start(raw);
        assert!(!out.contains("0123abcd"), "{out}");
        assert!(out.contains("+1555") && out.contains("<redacted>"), "{out}");
        let plain = r#"{"event":"start","start":{"customParameters":{"caller":"+1555"}}}"#;
        assert_eq!(twilio_start(plain), plain);
        assert_eq!(twilio_start("{oops"), "{oops");
    }
}
