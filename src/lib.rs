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
//! The folders are the architecture, bottom up:
//!
//! * [`proto`]: the wire protocols as plain serde types: [`proto::twilio`] (Media Streams
//!   messages), [`proto::realtime`] (OpenAI Realtime GA client and server events, the session
//!   configuration builder), [`proto::mulaw`] (the G.711 µ-law codec and audio helpers).
//! * [`io`]: [`io::ws`], one WebSocket shared by a dedicated reader thread and writer thread,
//!   plain or TLS, client or server (idle connections cost no wake-ups); [`io::http`], the
//!   small HTTP/1.1 request handling our servers need; the crate's only `unsafe`.
//! * [`call`]: the sans-I/O call logic: [`call::CallCore`] (forwarding decisions, the
//!   [`call::playback`] ledger, barge-in truncation, tools, handoffs, guardrails, history) and
//!   [`call::inbound::InboundAudio`] (the caller-audio lane). No sockets, threads or clocks
//!   inside: every rule is tested with an injected clock.
//! * [`agent`]: what the application configures; [`events`]: what it hears back.
//! * [`session`]: the threaded shell that runs one call (and [`session::recording`]).
//! * [`telephony`]: who is on the line, cold transfers, outbound calls.
//! * [`server`] (cargo feature `server`, on by default): the bundled Twilio server: webhook,
//!   signatures, stream tokens, `/call-ended`, `/outbound`, graceful shutdown.
//! * [`sim`] (cargo feature `sim`, off by default): the simulator: a fake OpenAI Realtime
//!   server, a simulated Twilio call, a fake Twilio REST API, the soak. For tests and demos;
//!   a production build does not compile it.
//!
//! Unix only: the socket layer waits with `poll(2)`.
//!
//! What an application uses is re-exported at the crate root: [`Agent`], [`FunctionTool`],
//! [`Session`], [`SessionConfig`], [`SessionEvent`], [`CloseReason`],
//! [`CallError`], [`CallConfig`], [`WsConn`], [`WsConfig`], [`CallInfo`], and with the
//! `server` feature [`Server`] and [`ServerConfig`]. The modules hold the rest; `proto`, `call`
//! and `io` are the layers underneath, public for tests, simulators and the curious, and
//! evolve faster than the root.
//!
//! Logging goes through the `log` crate with one target per side, so
//! `RUST_LOG=twilio_realtime::twilio=debug` shows just the Twilio side (also `::model`,
//! `::session`, `::tools`, `::ws`). Audio payloads, keys, tokens and a peer's free text are
//! never in the crate's own log lines, at any level; [`logging::init`] sets up `env_logger` so
//! that the dependencies' frame dumps (tungstenite at `trace`) stay out unless asked for.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod agent;
pub mod call;
pub mod error;
pub mod events;
pub mod io;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proto;
mod redact;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
pub mod session;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod telephony;

// What an application touches, importable from the crate root (`use twilio_realtime::{Agent,
// Session, SessionEvent, …}`); the modules keep the rest.
pub use agent::{Agent, FunctionTool, OutputGuardrail, ToolCall, ToolError, ToolFailure, Verdict};
pub use call::{CallConfig, Greeting};
// The former names, deprecated aliases so that code written against them still compiles.
#[allow(deprecated)]
pub use call::CallOptions;
pub use error::{CallError, Cause, ErrorSource};
pub use events::{
    CloseReason, EventReceiver, HistoryItem, HistoryKind, InterruptCause, SessionEvent,
    TransportEvent,
};
pub use io::ws::{WsConfig, WsConn};
#[cfg(feature = "server")]
pub use server::{Server, ServerConfig};
#[allow(deprecated)]
pub use session::{AgentSource, CallControl, ModelConfig, Session, SessionConfig, SessionHandle};
#[allow(deprecated)]
pub use session::{ModelOptions, SessionOptions};
pub use telephony::call_info::CallInfo;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
