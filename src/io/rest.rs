//! What the crate's REST clients (Twilio's API for outbound calls, OpenAI's for SIP calls)
//! share: one way to build a blocking `ureq` agent and to tell a timeout from other failures.

use std::time::Duration;

/// A blocking HTTP agent over native-tls with the platform's roots, an overall per-request
/// `timeout` (connect, TLS, request and response together), statuses returned as responses
/// (the caller maps them to its own typed errors) and this crate's user agent.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(tls)
        .user_agent(concat!("twilio-realtime/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Whether `e` means the request ran out of time (ureq's own timer or the socket's).
pub(crate) fn is_timeout(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(e) => e.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}
