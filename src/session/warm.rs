//! A warm model: the model WebSocket opened at the call webhook, before Twilio opens the
//! media stream, and handed to the stream that proves it belongs to that call.
//!
//! Opening the model connection costs a TCP connect, a TLS handshake and the HTTP upgrade:
//! several round trips to the model's region, hundreds of milliseconds and, from far away,
//! seconds. Twilio requests the call webhook before it opens the stream, so the bundled server
//! ([`crate::server`]), when its webhook is signed and one-time stream tokens are on, starts
//! that handshake at the webhook ([`WarmModels::open`], keyed by CallSid). The stream's
//! `start` then presents the token for that CallSid; once the token is redeemed the session
//! takes the connection ([`WarmModels::claim`]) — already open, or still opening, in which
//! case it is handed over the moment it is. A connection no stream claims within the token's
//! lifetime is closed. Without stream tokens nothing is opened early (an unsigned webhook
//! would let anyone spend model sessions) and the model connection opens the moment the
//! stream is accepted, as before.
//!
//! The model session is configured there too: the webhook has the caller's details (its
//! form fields make a [`CallInfo`](crate::telephony::call_info::CallInfo) without a
//! streamSid), so the server builds the call's agent from them and [`WarmModels::open`] gets
//! the first configuration
//! ([`CallCore::first_session_config`](crate::call::CallCore::first_session_config)). As soon
//! as the socket is open, the connector answers `session.created` with that `session.update`
//! and waits for the server's answer ([`WarmSetup`]); the stream that claims the connection
//! gets it with that answer ([`Preconfigured`]) and, when its own agent (chosen again on
//! `start`) needs the same configuration, is ready at once: no round trip to the model's
//! region between Twilio's `start` and the greeting. "Ready means confirmed" still holds: the
//! call core judges the server's `session.updated` as if it had just arrived (µ-law both
//! ways), a refusal ends the call with
//! [`CallError::ModelConfigRejected`] when
//! the stream claims it, and an agent that differs (e.g. chosen from a `<Parameter>` the
//! webhook did not know) sends its own `session.update` on the open session.
//!
//! The decisions live in plain types that take inputs and return what to do: [`WarmPool`]
//! (which connection belongs to whom, until when) and [`WarmSetup`] (the configuring
//! exchange); [`WarmModels`] adds the connector threads and one reaper thread.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use twilio_realtime::session::warm::{Arrival, Claim, Open, WarmPool};
//!
//! // T: the connection, W: whoever waits for it.
//! let mut pool: WarmPool<&str, &str> = WarmPool::new(Duration::from_secs(30), 2);
//! let now = Instant::now();
//! assert_eq!(pool.open_at("CA1", now), Open::Started);
//! // The stream's start came before the handshake finished: the session waits.
//! assert!(matches!(pool.claim_at("CA1", "session 1", now), Claim::Waiting));
//! // The handshake is done: hand it over.
//! assert!(matches!(
//!     pool.connected_at("CA1", Ok("socket"), now),
//!     Arrival::Deliver("session 1", Ok("socket"))
//! ));
//! ```
//!
//! A server that runs on several instances must send each stream to the instance whose
//! webhook opened its model connection (the stream URL of the webhook's TwiML is built in one
//! place, [`crate::server::stream_url`]); a stream that lands elsewhere finds nothing to claim
//! and connects cold, which costs latency, never the call.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::call::Preconfigured;
use crate::error::CallError;
use crate::io::ws::{WsConn, WsError};
use crate::proto::realtime::{ClientEvent, ServerEvent, SessionSettings};
use crate::session::ModelConfig;

const LOG: &str = "twilio_realtime::warm";

/// What [`WarmPool::open_at`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Open {
    /// Start connecting; report the outcome with [`WarmPool::connected_at`].
    Started,
    /// The pool holds its maximum: nothing is opened (the call will connect cold).
    Full,
    /// A connection for this CallSid is already held or opening (a repeated webhook).
    AlreadyOpen,
    /// No CallSid: nothing to key a connection by.
    NoCallSid,
}

/// What [`WarmPool::claim_at`] decided.
#[derive(Debug)]
#[non_exhaustive]
pub enum Claim<T, W> {
    /// The connection is open: the waiter back, with it.
    Ready(T, W),
    /// It is still opening: the waiter is kept and handed the outcome by
    /// [`WarmPool::connected_at`] ([`Arrival::Deliver`]).
    Waiting,
    /// Nothing is held for this CallSid (no webhook here, expired, failed, full): the waiter
    /// back, to connect cold.
    Nothing(W),
}

/// What [`WarmPool::connected_at`] decided about a finished handshake.
#[derive(Debug)]
#[non_exhaustive]
pub enum Arrival<T, W> {
    /// A stream claimed it meanwhile: give it the outcome.
    Deliver(W, Result<T, CallError>),
    /// Held until a stream claims it or it expires.
    Kept,
    /// Nobody wants it (expired before it opened, or the handshake failed): close it.
    Discard(Option<T>),
}

enum Entry<T, W> {
    Connecting { expires: Instant },
    Ready { conn: T, expires: Instant },
    Claimed { waiter: W },
}

/// Warm connections by CallSid: at most `capacity` opening or held, each for `ttl` (the
/// stream token's lifetime) unless a stream claims it. No sockets, threads or clocks inside.
pub struct WarmPool<T, W> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<String, Entry<T, W>>,
}

impl<T, W> fmt::Debug for WarmPool<T, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmPool")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl<T, W> WarmPool<T, W> {
    /// An empty pool (a capacity of 0 is taken as 1).
    pub fn new(ttl: Duration, capacity: usize) -> WarmPool<T, W> {
        WarmPool {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// A webhook for `call_sid` arrived at `now` (its signature checked): start a connection?
    pub fn open_at(&mut self, call_sid: &str, now: Instant) -> Open {
        if call_sid.is_empty() {
            return Open::NoCallSid;
        }
        if self.entries.contains_key(call_sid) {
            return Open::AlreadyOpen;
        }
        if self.entries.len() >= self.capacity {
            return Open::Full;
        }
        // A ttl past what an Instant holds means: until claimed (bounded by the capacity).
        let expires = now
            .checked_add(self.ttl)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(now);
        self.entries
            .insert(call_sid.to_owned(), Entry::Connecting { expires });
        Open::Started
    }

    /// The handshake for `call_sid` finished at `now` with `result`.
    pub fn connected_at(
        &mut self,
        call_sid: &str,
        result: Result<T, CallError>,
        now: Instant,
    ) -> Arrival<T, W> {
        match self.entries.remove(call_sid) {
            Some(Entry::Claimed { waiter }) => Arrival::Deliver(waiter, result),
            Some(Entry::Connecting { expires }) => match result {
                Ok(conn) if expires > now => {
                    self.entries
                        .insert(call_sid.to_owned(), Entry::Ready { conn, expires });
                    Arrival::Kept
                }
                other => Arrival::Discard(other.ok()),
            },
            Some(held @ Entry::Ready { .. }) => {
                // Cannot happen (one handshake per entry); keep the one held.
                self.entries.insert(call_sid.to_owned(), held);
                Arrival::Discard(result.ok())
            }
            None => Arrival::Discard(result.ok()),
        }
    }

    /// The stream of `call_sid` passed its token check and wants its connection.
    pub fn claim_at(&mut self, call_sid: &str, waiter: W, now: Instant) -> Claim<T, W> {
        match self.entries.remove(call_sid) {
            Some(Entry::Ready { conn, .. }) => Claim::Ready(conn, waiter),
            Some(Entry::Connecting { expires }) if expires > now => {
                self.entries
                    .insert(call_sid.to_owned(), Entry::Claimed { waiter });
                Claim::Waiting
            }
            Some(claimed @ Entry::Claimed { .. }) => {
                // A second claim for one CallSid (its token is spent: cannot pass the check).
                self.entries.insert(call_sid.to_owned(), claimed);
                Claim::Nothing(waiter)
            }
            Some(Entry::Connecting { .. }) | None => Claim::Nothing(waiter),
        }
    }

    /// Removes what expired unclaimed by `now`; returns the open connections to close.
    pub fn expire_at(&mut self, now: Instant) -> Vec<T> {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| match e {
                Entry::Connecting { expires } | Entry::Ready { expires, .. } => *expires <= now,
                Entry::Claimed { .. } => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut closed = Vec::new();
        for k in expired {
            if let Some(Entry::Ready { conn, .. }) = self.entries.remove(&k) {
                closed.push(conn);
            }
        }
        closed
    }

    /// When the next unclaimed entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Connecting { expires } | Entry::Ready { expires, .. } => Some(*expires),
                Entry::Claimed { .. } => None,
            })
            .min()
    }

    /// Connections opening, held or awaited.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is opening, held or awaited.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Open connections held for a stream.
    pub fn ready(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e, Entry::Ready { .. }))
            .count()
    }
}

/// The `event_id` of the `session.update` a warm connection sends.
pub const WARM_UPDATE_ID: &str = "tr_warm_session";

/// What [`WarmSetup::on_event`] decided.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SetupStep {
    /// Send this to the model.
    Send(ClientEvent),
    /// Nothing to do: wait for the next event.
    Wait,
    /// The configuration was answered: hand the connection over with this.
    Done(Preconfigured),
}

/// The configuring exchange of a warm connection, without the socket: `session.created` →
/// our `session.update` ([`WARM_UPDATE_ID`]) → `session.updated`, or an `error` naming that
/// update. No judgement on the answer here: the call core makes it when the stream claims the
/// connection (see [`Preconfigured`]).
///
/// ```
/// use twilio_realtime::call::Preconfigured;
/// use twilio_realtime::proto::realtime::{ServerEvent, SessionSettings};
/// use twilio_realtime::session::warm::{SetupStep, WarmSetup};
///
/// let mut setup = WarmSetup::new(SessionSettings::new().instructions("Be brief."));
/// let created = ServerEvent::parse(r#"{"type":"session.created","event_id":"e1","session":{}}"#)?;
/// assert!(matches!(setup.on_event(created), SetupStep::Send(u) if u.event_type() == "session.update"));
/// let updated = ServerEvent::parse(r#"{"type":"session.updated","event_id":"e2","session":{"type":"realtime"}}"#)?;
/// assert!(matches!(setup.on_event(updated), SetupStep::Done(Preconfigured::Confirmed { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WarmSetup {
    config: SessionSettings,
    sent: bool,
    done: bool,
}

impl WarmSetup {
    /// Will configure the session with `config`.
    pub fn new(config: SessionSettings) -> WarmSetup {
        WarmSetup {
            config,
            sent: false,
            done: false,
        }
    }

    /// An event from the model.
    pub fn on_event(&mut self, ev: ServerEvent) -> SetupStep {
        if self.done {
            return SetupStep::Wait;
        }
        match ev {
            ServerEvent::SessionCreated(_) if !self.sent => {
                self.sent = true;
                SetupStep::Send(ClientEvent::SessionUpdate {
                    event_id: Some(WARM_UPDATE_ID.to_owned()),
                    session: self.config.clone(),
                })
            }
            ServerEvent::SessionUpdated(e) if self.sent => {
                self.done = true;
                SetupStep::Done(Preconfigured::Confirmed {
                    sent: self.config.clone(),
                    session: e.session,
                })
            }
            ServerEvent::Error(e)
                if self.sent && e.error.event_id.as_deref() == Some(WARM_UPDATE_ID) =>
            {
                self.done = true;
                SetupStep::Done(Preconfigured::Refused {
                    sent: self.config.clone(),
                    param: e.error.param,
                    message: e.error.message,
                })
            }
            _ => SetupStep::Wait,
        }
    }
}

/// A model connection opened ahead of its stream, with how its configuration was answered
/// (`None`: not configured; the session configures it on `session.created` as usual).
#[derive(Debug)]
pub struct WarmConn {
    /// The open socket (its threads not started).
    pub conn: WsConn,
    /// The configuring exchange's outcome, if a configuration was given.
    pub configured: Option<Preconfigured>,
}

/// Gets the outcome of a claimed warm connection (on the connector thread, or at once on the
/// claiming thread).
pub type Delivery = Box<dyn FnOnce(Result<WarmConn, CallError>) + Send>;

/// Runs [`WarmSetup`] on a socket whose threads have not started, within `within`.
fn configure(
    mut conn: WsConn,
    config: Option<SessionSettings>,
    within: Duration,
) -> Result<WarmConn, CallError> {
    let Some(config) = config else {
        return Ok(WarmConn {
            conn,
            configured: None,
        });
    };
    let began = Instant::now();
    let deadline = began.checked_add(within).unwrap_or(began);
    let mut setup = WarmSetup::new(config);
    loop {
        let text = conn.read_text_blocking(deadline).map_err(|e| match e {
            WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                CallError::ModelHandshakeTimeout
            }
            other => CallError::model_connect(other),
        })?;
        let ev = match ServerEvent::parse(&text) {
            Ok(ev) => ev,
            Err(e) => {
                log::warn!(target: LOG, "warm model sent an unreadable event, skipped: {e}");
                continue;
            }
        };
        match setup.on_event(ev) {
            SetupStep::Send(update) => conn
                .send_text_blocking(&update.to_json())
                .map_err(CallError::model_connect)?,
            SetupStep::Done(pre) => {
                log::debug!(
                    target: LOG,
                    "warm model session configured in {} ms",
                    began.elapsed().as_millis()
                );
                return Ok(WarmConn {
                    conn,
                    configured: Some(pre),
                });
            }
            SetupStep::Wait => {}
        }
    }
}

/// The threaded shell around a [`WarmPool`] of model connections: a named connector thread
/// per opened connection and one reaper thread that closes unclaimed connections when they
/// expire (it sleeps until the next expiry; it exits when the `WarmModels` is dropped).
pub struct WarmModels {
    pool: Mutex<WarmPool<WarmConn, Delivery>>,
    wake: Sender<()>,
}

impl fmt::Debug for WarmModels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmModels")
            .field("pool", &*self.lock())
            .finish()
    }
}

impl WarmModels {
    /// Connections are held for `ttl` (use the stream token's lifetime); at most `capacity`
    /// open or opening at once.
    pub fn start(ttl: Duration, capacity: usize) -> std::io::Result<Arc<WarmModels>> {
        let (wake, woken) = bounded::<()>(1);
        let warm = Arc::new(WarmModels {
            pool: Mutex::new(WarmPool::new(ttl, capacity)),
            wake,
        });
        let weak: Weak<WarmModels> = Arc::downgrade(&warm);
        thread::Builder::new()
            .name("model-warm-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || loop {
                let next = match weak.upgrade() {
                    Some(w) => w.lock().next_expiry(),
                    None => return,
                };
                let wait = next.map_or(Duration::from_secs(3600), |n| {
                    n.saturating_duration_since(Instant::now())
                });
                match woken.recv_timeout(wait) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Timeout) => {
                        let Some(w) = weak.upgrade() else { return };
                        let closed = w.lock().expire_at(Instant::now());
                        if !closed.is_empty() {
                            log::info!(
                                target: LOG,
                                "closing {} warm model connection(s) no stream claimed",
                                closed.len()
                            );
                        }
                        drop(closed);
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(warm)
    }

    fn lock(&self) -> MutexGuard<'_, WarmPool<WarmConn, Delivery>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_reaper(&self) {
        let _ = self.wake.try_send(());
    }

    /// Starts opening a model connection for `call_sid` (call it only for a webhook whose
    /// signature was checked) and, with `config`, configuring its session (see the module
    /// docs; bounded by the model's handshake timeout); returns what the pool decided.
    pub fn open(
        self: &Arc<Self>,
        call_sid: &str,
        model: &ModelConfig,
        config: Option<SessionSettings>,
    ) -> Open {
        let decided = self.lock().open_at(call_sid, Instant::now());
        if decided != Open::Started {
            if decided == Open::Full {
                log::warn!(target: LOG, "warm model pool full; this call connects cold");
            }
            return decided;
        }
        self.wake_reaper();
        let req = model.request();
        let cfg = model.ws.clone();
        let sid = call_sid.to_owned();
        let me = self.clone();
        let spawned = thread::Builder::new()
            .name("model-warm".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let within = cfg.handshake_timeout;
                let result = WsConn::connect(&req, &cfg)
                    .map_err(CallError::model_connect)
                    .and_then(|conn| configure(conn, config, within));
                if let Err(e) = &result {
                    log::warn!(target: LOG, "warm model connection failed: {e}");
                }
                me.arrived(&sid, result);
            });
        if let Err(e) = spawned {
            log::error!(target: LOG, "could not spawn a warm model connector: {e}");
            self.arrived(call_sid, Err(CallError::model_connect(WsError::Io(e))));
        }
        Open::Started
    }

    fn arrived(&self, call_sid: &str, result: Result<WarmConn, CallError>) {
        let arrival = self.lock().connected_at(call_sid, result, Instant::now());
        match arrival {
            Arrival::Deliver(deliver, result) => deliver(result),
            Arrival::Kept => self.wake_reaper(),
            // Dropping the connection closes its socket.
            Arrival::Discard(conn) => drop(conn),
        }
    }

    /// The stream of `call_sid` passed its token check: hands its connection to `deliver`
    /// (at once, or when its handshake finishes) and returns true, or returns false when
    /// nothing is held for that call (connect cold).
    pub fn claim(&self, call_sid: &str, deliver: Delivery) -> bool {
        let claim = self.lock().claim_at(call_sid, deliver, Instant::now());
        match claim {
            Claim::Ready(conn, deliver) => {
                self.wake_reaper();
                deliver(Ok(conn));
                true
            }
            Claim::Waiting => {
                self.wake_reaper();
                true
            }
            Claim::Nothing(_) => false,
        }
    }

    /// Connections opening, held or awaited now.
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }

    /// Open connections waiting for their stream now.
    pub fn ready(&self) -> usize {
        self.lock().ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn a_held_connection_goes_to_its_stream_once() {
        let mut pool: WarmPool<u32, &str> = WarmPool::new(TTL, 10);
        let t0 = Instant::now();
        assert_eq!(pool.open_at("CA1", t0), Open::Started);
        assert_eq!(pool.open_at("CA1", t0), Open::AlreadyOpen);
        assert!(matches!(pool.connected_at("CA1", Ok(7), t0), Arrival::Kept));
        assert_eq!(pool.ready(), 1);
        assert!(matches!(
            pool.claim_at("CA1", "s", t0),
            Claim::Ready(7, "s")
        ));
        assert!(matches!(
            pool.claim_at("CA1", "again", t0),
            Claim::Nothing("again")
        ));
        assert!(pool.is_empty());
    }

    #[test]
    fn another_call_finds_nothing() {
        let mut pool: WarmPool<u32, &str> = WarmPool::new(TTL, 10);
        let t0 = Instant::now();
        pool.open_at("CA1", t0);
        pool.connected_at("CA1", Ok(1), t0);
        assert!(matches!(pool.claim_at("CA2", "s", t0), Claim::Nothing("s")));
        assert_eq!(pool.ready(), 1, "CA1's connection stays for CA1");
    }

    #[test]
    fn a_claim_before_the_handshake_waits_for_it() {
        let mut pool: WarmPool<u32, &str> = WarmPool::new(TTL, 10);
        let t0 = Instant::now();
        pool.open_at("CA1", t0);
        assert!(matches!(pool.claim_at("CA1", "s", t0), Claim::Waiting));
        // A claimed entry never expires: its stream is waiting.
        assert!(pool.expire_at(t0 + TTL + Duration::from_secs(1)).is_empty());
        assert_eq!(pool.next_expiry(), None);
        match pool.connected_at("CA1", Ok(9), t0 + TTL + Duration::from_secs(2)) {
            Arrival::Deliver("s", Ok(9)) => {}
            other => panic!("{other:?}"),
        }
        assert!(pool.is_empty());
    }

    #[test]
    fn a_failed_handshake_reaches_the_waiting_stream_or_frees_the_slot() {
        let mut pool: WarmPool<u32, &str> = WarmPool::new(TTL, 10);
        let t0 = Instant::now();
        pool.open_at("CA1", t0);
        pool.claim_at("CA1", "s", t0);
        assert!(matches!(
            pool.connected_at("CA1", Err(CallError::ModelRejected { status: 401 }), t0),
            Arrival::Deliver("s", Err(_))
        ));
        pool.open_at("CA2", t0);
        assert!(matches!(
            pool.connected_at("CA2", Err(CallError::ModelRejected { status: 401 }), t0),
            Arrival::Discard(None)
        ));
        // The stream then connects cold.
        assert!(matches!(pool.claim_at("CA2", "s", t0), Claim::Nothing("s")));
    }

    #[test]
    fn unclaimed_connections_are_closed_at_the_token_lifetime() {
        let mut pool: WarmPool<u32, &str> = WarmPool::new(TTL, 10);
        let t0 = Instant::now();
        pool.open_at("CA1", t0);
        pool.connected_at("CA1", Ok(1), t0);
        pool.open_at("CA2", t0 + Duration::from_secs(10));
        assert_eq!(pool.next_expiry(), Some(t0 + TTL));
        assert!(pool
            .expire_at(t0 + TTL - Duration::from_millis(1))
            .is_empty());
        assert_eq!(pool.expire_at(t0 + TTL), vec![1]);
        // CA2 is still opening; its handshake finishes after its lifetime: closed at once.
        let late = t0 + Duration::from_secs(41);
        assert!(pool.expire_at(late).is_empty());
        assert!(matches!(
            pool.connected_at("CA2", Ok(2), late),
            Arrival::Discard(Some(2))
        ));
        assert!(pool.is_empty());
    }

    #[test]
    fn a_handshake_that_finishes_after_its_lifetime_is_closed() {
        let mut pool: WarmPool<u32, &str> = WarmPool::new(TTL, 10);
        let t0 = Instant::now();
        pool.open_at("CA1", t0);
        assert!(matches!(
            pool.connected_at("CA1", Ok(1), t0 + TTL),
            Arrival::Discard(Some(1))
        ));
        let mut pool: WarmPool<u32, &str> = WarmPool::new(TTL, 10);
        pool.open_at("CA1", t0);
        // A stream claiming after the lifetime does not wait for it.
        assert!(matches!(
            pool.claim_at("CA1", "s", t0 + TTL),
            Claim::Nothing("s")
        ));
    }

    #[test]
    fn bounded() {
        let mut pool: WarmPool<u32, &str> = WarmPool::new(TTL, 2);
        let t0 = Instant::now();
        assert_eq!(pool.open_at("CA1", t0), Open::Started);
        assert_eq!(pool.open_at("CA2", t0), Open::Started);
        assert_eq!(pool.open_at("CA3", t0), Open::Full);
        assert_eq!(pool.open_at("", t0), Open::NoCallSid);
        pool.connected_at("CA1", Ok(1), t0);
        pool.claim_at("CA1", "s", t0);
        assert_eq!(pool.open_at("CA3", t0), Open::Started);
    }

    fn ev(json: &str) -> ServerEvent {
        ServerEvent::parse(json).expect("a server event")
    }

    #[test]
    fn setup_answers_session_created_with_its_update_once() {
        let config = SessionSettings::new().instructions("Be brief.");
        let mut setup = WarmSetup::new(config.clone());
        // Nothing is sent before the session exists.
        assert_eq!(
            setup.on_event(ev(r#"{"type":"session.updated","session":{}}"#)),
            SetupStep::Wait
        );
        let created = r#"{"type":"session.created","session":{}}"#;
        assert_eq!(
            setup.on_event(ev(created)),
            SetupStep::Send(ClientEvent::SessionUpdate {
                event_id: Some(WARM_UPDATE_ID.into()),
                session: config.clone(),
            })
        );
        assert_eq!(setup.on_event(ev(created)), SetupStep::Wait);
        // An error about something else is not the answer.
        let other = r#"{"type":"error","error":{"type":"invalid_request_error","code":"x","message":"m","event_id":"other"}}"#;
        assert_eq!(setup.on_event(ev(other)), SetupStep::Wait);
        let updated = r#"{"type":"session.updated","session":{"type":"realtime"}}"#;
        assert_eq!(
            setup.on_event(ev(updated)),
            SetupStep::Done(Preconfigured::Confirmed {
                sent: config,
                session: serde_json::json!({"type": "realtime"}),
            })
        );
        assert_eq!(setup.on_event(ev(updated)), SetupStep::Wait, "done once");
    }

    #[test]
    fn setup_reports_a_refusal_of_its_update() {
        let config = SessionSettings::new().voice("robot");
        let mut setup = WarmSetup::new(config.clone());
        assert!(matches!(
            setup.on_event(ev(r#"{"type":"session.created","session":{}}"#)),
            SetupStep::Send(_)
        ));
        let refused = r#"{"type":"error","error":{"type":"invalid_request_error","code":"invalid_value",
            "message":"Invalid value: 'robot'.","param":"session.audio.output.voice","event_id":"tr_warm_session"}}"#;
        assert_eq!(
            setup.on_event(ev(refused)),
            SetupStep::Done(Preconfigured::Refused {
                sent: config,
                param: Some("session.audio.output.voice".into()),
                message: "Invalid value: 'robot'.".into(),
            })
        );
    }

    #[test]
    fn a_ttl_of_duration_max_does_not_overflow() {
        let mut pool: WarmPool<u32, &str> = WarmPool::new(Duration::MAX, 2);
        let t0 = Instant::now();
        assert_eq!(pool.open_at("CA1", t0), Open::Started);
        assert!(matches!(
            pool.connected_at("CA1", Ok(1), t0 + Duration::from_secs(86_400)),
            Arrival::Kept
        ));
    }
}
