//! Run whole calls with no phone and no API key: a fake OpenAI Realtime server
//! ([`fake_model`]) and a Twilio call simulator ([`twilio_call`]), both on 127.0.0.1, and a
//! fake of OpenAI's SIP control plane ([`sip`]). The
//! crate's integration tests, the demo and the load generator use exactly this code; use it to
//! test your own agents.
//!
//! ```no_run
//! use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
//! use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
//!
//! let model = FakeModel::start(FakeModelConfig {
//!     script: vec![Reply::say("Hello! How can I help?", 1500)],
//!     ..Default::default()
//! }).unwrap();
//! // ... start a bridge whose model URL is model.url(), listening on `addr` ...
//! # let addr = "127.0.0.1:5050".parse().unwrap();
//! let report = TwilioCall::run(TwilioCallConfig::new(addr, vec![
//!     Segment::Silence(300),
//!     Segment::Speech(1000),
//!     Segment::WaitForAgent { quiet_ms: 500, timeout_ms: 10_000 },
//!     Segment::HangUp,
//! ])).unwrap();
//! println!("caller heard {} ms of agent audio", report.played_ms());
//! ```

pub mod chaos;
pub mod fake_live;
pub mod fake_model;
pub mod sip;
pub mod soak;
pub mod twilio_call;
pub mod twilio_rest;
pub mod wav;

/// The accept loop of the simulator's HTTP fakes: one named thread takes connections on
/// `listener` and serves each on its own thread (`serve(&shared, conn)`) until `stopped`
/// says so (checked as each connection arrives; the fake's `Drop` sets its flag and makes
/// one last connection to wake the loop).
pub(crate) fn spawn_accept_loop<S: Send + Sync + 'static>(
    name: &str,
    listener: std::net::TcpListener,
    shared: std::sync::Arc<S>,
    stopped: fn(&S) -> bool,
    serve: fn(&std::sync::Arc<S>, std::net::TcpStream),
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let conn_name = format!("{name}-conn");
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            for conn in listener.incoming() {
                if stopped(&shared) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let sh = shared.clone();
                let _ = std::thread::Builder::new()
                    .name(conn_name.clone())
                    .spawn(move || serve(&sh, conn));
            }
        })
}

/// Upgrades a fake's accepted connection whose request head was read already, and runs its
/// socket threads (`name` for them and for the log); `None` (logged) when the upgrade failed.
pub(crate) fn accept_ws_channel(
    tcp: std::net::TcpStream,
    head: &crate::io::http::RequestHead,
    leftover: Vec<u8>,
    cfg: &crate::io::ws::WsConfig,
    name: &str,
) -> Option<(
    crate::io::ws::Duplex,
    crossbeam_channel::Receiver<crate::io::ws::Incoming>,
)> {
    let conn = match crate::io::ws::WsConn::accept_upgrade(tcp, head, leftover, cfg) {
        Ok(c) => c,
        Err(e) => {
            log::warn!(target: "twilio_realtime::sim", "{name}: upgrade failed: {e}");
            return None;
        }
    };
    conn.spawn_channel(name).ok()
}
