//! The I/O layer under the call: one WebSocket shared by a reader and a writer thread
//! ([`ws`], plain or TLS, client or server), the small HTTP/1.1 request handling our servers
//! need ([`http`]), and the crate's only `unsafe` (`poll(2)`, TCP keepalive, `malloc_trim`) in
//! a private `sys` module.
//!
//! Unix only: the socket layer waits with `poll(2)`.

pub mod http;
pub(crate) mod rest;
pub(crate) mod sys;
pub mod ws;
