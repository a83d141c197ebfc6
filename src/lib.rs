//! # twilio-realtime
//!
//! Connect phone calls on Twilio to OpenAI Realtime voice agents, synchronously: no async
//! runtime, a handful of threads per call, nothing shared between calls.
//!
//! Twilio streams a call's audio over a WebSocket (Media Streams: JSON frames carrying base64
//! G.711 µ-law at 8 kHz). The OpenAI Realtime API is a speech-to-speech model behind another
//! WebSocket that speaks the same µ-law, so audio passes through without transcoding. This
//! crate joins the two per call and gives the application a session: agents with
//! instructions, function tools, handoffs and output guardrails, the conversation history,
//! and a stream of [`events::SessionEvent`]s.
//!
//! ```text
//! caller ⇄ Twilio ⇄ ws /media-stream ⇄ [twilio reader │ twilio writer]
//!                                          │ caller audio: one hop, straight to the model socket
//!                                          ▼               ▲
//!            app ⇄ events/commands ⇄ [session thread: call::CallCore] ⇄ tool workers
//!                                          ▲               │
//!                                          │               ▼
//!                          OpenAI ⇄ wss ⇄ [model reader  │ model writer]
//! ```
//!
//! ## Layers
//!
//! * Protocols, as plain serde types: [`twilio`] (Media Streams messages) and [`model`]
//!   (OpenAI Realtime GA client and server events, the session configuration builder).
//! * [`mulaw`]: the G.711 µ-law codec and audio helpers.
//! * [`ws`]: one WebSocket shared by a dedicated reader thread and writer thread, plain or
//!   TLS, client or server; idle connections cost no wake-ups. [`http`]: the small HTTP/1.1
//!   request handling our servers need.
//! * The sans-I/O call logic: [`call::CallCore`] (forwarding decisions, the [`playback`]
//!   ledger, barge-in truncation, tools, handoffs, guardrails, history) and
//!   [`inbound::InboundAudio`] (the caller-audio lane). No sockets, threads or clocks inside:
//!   every rule is tested with an injected clock.
//! * [`agent`]: what the application configures. [`session`]: the threaded shell that runs a
//!   call.
//!
//! Logging goes through the `log` crate with one target per side, so
//! `RUST_LOG=twilio_realtime::twilio=debug` shows just the Twilio side (also `::model`,
//! `::session`, `::tools`, `::ws`). Audio payloads, keys, tokens and a peer's free text are
//! never in the crate's own log lines, at any level; [`logging::init`] sets up `env_logger` so
//! that the dependencies' frame dumps (tungstenite at `trace`) stay out unless asked for.
#![deny(missing_docs)]

pub mod agent;
pub mod call;
pub mod call_info;
mod event_queue;
pub mod events;
pub mod http;
pub mod inbound;
mod inbox;
pub mod limits;
pub mod logging;
pub mod model;
pub mod mulaw;
pub mod outbound;
pub mod playback;
pub mod recording;
mod redact;
pub mod server;
pub mod session;
pub mod signature;
pub mod sim;
mod sys;
pub mod token;
pub mod transfer;
pub mod twilio;
pub mod ws;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
