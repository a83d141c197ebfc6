//! The wire protocols as plain serde types, with no I/O: Twilio Media Streams messages
//! ([`twilio`]), OpenAI Realtime client and server events and the session configuration
//! ([`realtime`]), OpenAI GPT-Live events ([`live`]), the SIP webhook signature and
//! call-control bodies ([`sip`]), and the G.711 µ-law codec both sides' audio is in ([`mulaw`]).
//!
//! Every type here is typed with an escape hatch: an event we do not model is kept whole
//! (as JSON), never fatal.

pub mod live;
pub mod mulaw;
pub mod realtime;
pub mod sip;
pub mod twilio;
