//! The I/O layer under the call: one WebSocket shared by a reader and a writer thread
//! ([`ws`], plain or TLS, client or server), the small HTTP/1.1 request handling our servers
//! need ([`http`]), and the crate's only `unsafe` (`poll(2)`, TCP keepalive, `malloc_trim`) in
//! a private `sys` module.
//!
//! Unix only: the socket layer waits with `poll(2)`.
//!
//! This is plumbing, public for embedding ([`ws::WsConn::accept_upgrade`]), the simulators
//! and tests; it evolves faster than the crate root. [`ws`] re-exports, deliberately, the
//! dependency types its signatures carry (tungstenite's `Message`, `Bytes`, `Utf8Bytes`,
//! native-tls's `TlsConnector` / `TlsAcceptor`, crossbeam-channel's `Receiver`); its errors
//! wrap theirs ([`ws::ProtocolError`]).

pub mod http;
pub(crate) mod rest;
pub(crate) mod sys;
pub mod ws;
