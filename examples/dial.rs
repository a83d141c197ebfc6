//! Places an outbound call whose callee talks to the bridge server (`twilio_server`) at
//! `PUBLIC_URL`: Twilio requests `PUBLIC_URL/incoming-call` when the callee answers and posts
//! the call's progress to `PUBLIC_URL/call-status`.
//!
//! ```text
//! TWILIO_ACCOUNT_SID=AC... TWILIO_API_KEY=SK... TWILIO_API_SECRET=... \
//!   TWILIO_FROM_NUMBER=+15550199 PUBLIC_URL=https://YOUR-TUNNEL \
//!   cargo run --example dial -- +15550100
//! ```
//!
//! Reads the same variables as the server (`ServerConfig::from_env`): `TWILIO_ACCOUNT_SID`,
//! `TWILIO_API_KEY` + `TWILIO_API_SECRET` (or `TWILIO_AUTH_TOKEN`), `TWILIO_FROM_NUMBER`,
//! `PUBLIC_URL`, `TWILIO_API_BASE` (default https://api.twilio.com),
//! `OUTBOUND_MACHINE_DETECTION` (`Enable` or `DetectMessageEnd`).

use twilio_realtime::server::ServerConfig;
use twilio_realtime::telephony::outbound::OutboundCall;

fn main() {
    // Keeps ureq's raw request dumps (the Authorization header) out even at RUST_LOG=trace.
    if let Err(e) = twilio_realtime::logging::init("info") {
        eprintln!("no logging: {e}");
    }
    let Some(to) = std::env::args().nth(1) else {
        eprintln!("usage: dial NUMBER (E.164, e.g. +15550100)");
        std::process::exit(2);
    };
    let cfg = ServerConfig::from_env();
    let Some(out) = cfg.outbound else {
        eprintln!(
            "set TWILIO_ACCOUNT_SID, TWILIO_API_KEY + TWILIO_API_SECRET (or TWILIO_AUTH_TOKEN) \
             and TWILIO_FROM_NUMBER"
        );
        std::process::exit(2);
    };
    let Some(public) = cfg.public_url else {
        eprintln!("set PUBLIC_URL to the https origin Twilio reaches the server at");
        std::process::exit(2);
    };
    let mut call = OutboundCall::to_bridge(&public, to, out.from.clone());
    call.machine_detection = out.machine_detection;
    match out.rest.place_call(&call) {
        Ok(placed) => println!("{} {}", placed.sid, placed.status),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
