//! The example bridge server: Twilio's call webhook, the Media Streams WebSocket and a voice
//! agent with one tool, on one port.
//!
//! ```text
//! OPENAI_API_KEY=sk-... cargo run --release --example twilio_server
//! ```
//!
//! Environment: `PORT` (5050), `BIND_ADDR` (127.0.0.1), `OPENAI_API_KEY`,
//! `MODEL_API` (`realtime`, the default, or `live` for GPT-Live),
//! `OPENAI_REALTIME_URL` (default wss://api.openai.com/v1/realtime?model=gpt-realtime),
//! `OPENAI_LIVE_URL` (with `MODEL_API=live`; default wss://api.openai.com/v1/live/sessions),
//! `PUBLIC_URL` (the https origin Twilio reaches, e.g. your tunnel), `TWILIO_AUTH_TOKEN`
//! (verify X-Twilio-Signature), `GREETING` (said before the stream connects),
//! `CALL_RECORDING_DIR` (record every call's timeline there, see `recording`),
//! `AGENT_GREETING` (the instruction for the agent's first response, e.g. "Greet the caller
//! and ask how you can help."; unset, the agent waits for the caller to speak),
//! `AGENT_HANGUP` (on unless `off`/`0`/`false`/`no`: the agent may end the call with the
//! built-in `end_call` tool once its goodbye has been heard), `TRANSFER_TO` (an E.164 number
//! or a SIP URI: the agent may transfer the caller to a person there with the built-in
//! `transfer_call` tool), `RUST_LOG`
//! (default `info`; tungstenite's frame dumps stay out even at `trace` unless the filter names
//! `tungstenite`, see `twilio_realtime::logging`).
//! Outbound calls (`POST /outbound`, see README): `TWILIO_ACCOUNT_SID`, `TWILIO_API_KEY` +
//! `TWILIO_API_SECRET` (or `TWILIO_AUTH_TOKEN`), `TWILIO_FROM_NUMBER`, `OUTBOUND_SECRET`,
//! `TWILIO_API_BASE`, `OUTBOUND_MACHINE_DETECTION`. Status callbacks arrive at
//! `POST /call-status` and are logged.
//! SIP calls through OpenAI (an Elastic SIP trunk to OpenAI's SIP endpoint, see README):
//! `OPENAI_WEBHOOK_SECRET` turns on `POST /openai-webhook`, with `OPENAI_BASE_URL`,
//! `OPENAI_WEBHOOK_PATH`, `SIP_MODEL`, `SIP_MAX_CALLS`; each accepted call runs the same agent
//! (greeting, tools, `end_call`, `TRANSFER_TO` as a SIP REFER) over its sideband WebSocket,
//! derived from `OPENAI_REALTIME_URL`.

use std::sync::Arc;

#[path = "shared/weather_agent.rs"]
mod weather_agent;

use twilio_realtime::server::{stop_on_signals, Server, ServerConfig};
use twilio_realtime::session::recording::RecordTo;

fn main() {
    if let Err(e) = twilio_realtime::logging::init("info") {
        eprintln!("no logging: {e}");
    }
    let mut cfg = ServerConfig::from_env();
    if let Some(dir) = std::env::var_os("CALL_RECORDING_DIR").filter(|d| !d.is_empty()) {
        log::info!(
            "recording every call's timeline into {}",
            std::path::Path::new(&dir).display()
        );
        cfg.session.recording = Some(RecordTo::Dir(dir.into()));
    }
    if cfg.session.model.api_key.is_none()
        && cfg.session.model.url.starts_with("wss://api.openai.com")
    {
        log::warn!("OPENAI_API_KEY is not set: calls will fail to reach the model");
    }
    if cfg.twilio_auth_token.is_none() {
        log::warn!("TWILIO_AUTH_TOKEN is not set: requests are not authenticated");
    }
    if let Some(sip) = &cfg.sip {
        log::info!(
            "SIP calls through OpenAI: POST {} (accepted with {})",
            sip.path,
            sip.model
        );
    }
    match &cfg.outbound {
        Some(o) if o.secret.is_some() => log::info!("outbound calls: POST /outbound"),
        Some(_) => log::warn!("OUTBOUND_SECRET is not set: POST /outbound is off"),
        None => {}
    }
    let hang_up = !std::env::var("AGENT_HANGUP").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        )
    });
    let transfer_to = std::env::var("TRANSFER_TO")
        .ok()
        .filter(|v| !v.trim().is_empty());
    if let Some(dest) = &transfer_to {
        match twilio_realtime::telephony::transfer::Destination::parse(dest.trim()) {
            Ok(d) => log::info!("the agent may transfer callers to {d}"),
            Err(e) => {
                eprintln!("TRANSFER_TO: {e}");
                std::process::exit(1);
            }
        }
    }
    let agent = move || {
        let mut agent = weather_agent::weather_agent();
        if hang_up {
            agent = agent.can_hang_up();
        }
        if let Some(dest) = &transfer_to {
            // Checked above: a bad TRANSFER_TO stops the server before it listens.
            if let Ok(a) = agent.clone().transfer_to(
                "a person",
                dest.trim(),
                "A human colleague: when the caller asks for a person, or you cannot help.",
            ) {
                agent = a;
            }
        }
        agent
    };
    let server = match Server::bind(cfg, Arc::new(agent)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot listen: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = stop_on_signals(server.stopper()) {
        log::warn!("no signal handling: {e}");
    }
    println!("twilio_server listening on http://{}", server.local_addr());
    match server.run() {
        Ok(stats) => log::info!("stopped: {stats:?}"),
        Err(e) => {
            eprintln!("server failed: {e}");
            std::process::exit(1);
        }
    }
}
