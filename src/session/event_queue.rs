//! The bounded queue that carries a session's events to the application.
//!
//! An application that reads its events late, or never, must not grow the call's memory, and
//! must never slow the audio path: so a full queue never blocks a sender. It makes room by
//! dropping the oldest audio and transport event ([`SessionEvent::Audio`],
//! [`SessionEvent::Transport`]: a copy of what went over a socket, already acted on) and only
//! when there is none of those the oldest event of any other kind. [`SessionEvent::Closed`]
//! is the last event of a call, so it is never the one dropped. The reader learns of drops
//! from a [`SessionEvent::EventsDropped`] delivered before the next event after them, and from
//! [`EventReceiver::dropped`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::events::SessionEvent;

/// Why [`EventReceiver::recv_timeout`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// Nothing arrived in time; the session goes on.
    Timeout,
    /// The session is over and every event has been read.
    Disconnected,
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvTimeoutError::Timeout => "no event in time",
            RecvTimeoutError::Disconnected => "the session has ended and its events are read",
        })
    }
}

impl std::error::Error for RecvTimeoutError {}

struct State {
    /// Audio and transport events, with their sequence numbers.
    droppable: VecDeque<(u64, SessionEvent)>,
    /// Every other event.
    kept: VecDeque<(u64, SessionEvent)>,
    next_seq: u64,
    capacity: usize,
    dropped: u64,
    /// Drops not yet told to the reader.
    unreported: u64,
    peak: usize,
    senders: usize,
    receiver: bool,
    /// The reader sleeps on the condvar: only then is the wake-up syscall made.
    waiting: bool,
}

impl State {
    fn len(&self) -> usize {
        self.droppable.len() + self.kept.len()
    }

    fn pop(&mut self) -> Option<SessionEvent> {
        if self.unreported > 0 {
            let count = std::mem::take(&mut self.unreported);
            return Some(SessionEvent::EventsDropped { count });
        }
        let take_droppable = match (self.droppable.front(), self.kept.front()) {
            (Some((a, _)), Some((b, _))) => a < b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let q = if take_droppable {
            &mut self.droppable
        } else {
            &mut self.kept
        };
        q.pop_front().map(|(_, e)| e)
    }

    fn disconnected(&self) -> bool {
        self.senders == 0 && self.len() == 0 && self.unreported == 0
    }
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side (the call's threads).
pub(crate) struct EventSender(Arc<Shared>);

/// A session's events, in order (see [`crate::session::Session::events`]). Bounded: when
/// the application does not keep up, a full queue never blocks the call; it drops the oldest
/// audio and transport events first, then the oldest event of any other kind (never
/// [`SessionEvent::Closed`]), and the reader learns of drops from a
/// [`SessionEvent::EventsDropped`] and from [`EventReceiver::dropped`].
pub struct EventReceiver(Arc<Shared>);

impl fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.0.lock();
        f.debug_struct("EventReceiver")
            .field("queued", &st.len())
            .field("capacity", &st.capacity)
            .field("dropped", &st.dropped)
            .finish()
    }
}

impl fmt::Debug for EventSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSender")
    }
}

/// A queue holding at most `capacity` events (at least 1).
pub(crate) fn event_queue(capacity: usize) -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            droppable: VecDeque::new(),
            kept: VecDeque::new(),
            next_seq: 0,
            capacity: capacity.max(1),
            dropped: 0,
            unreported: 0,
            peak: 0,
            senders: 1,
            receiver: true,
            waiting: false,
        }),
        ready: Condvar::new(),
    });
    (EventSender(shared.clone()), EventReceiver(shared))
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        EventSender(self.0.clone())
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let last = {
            let mut st = self.0.lock();
            st.senders = st.senders.saturating_sub(1);
            st.senders == 0
        };
        if last {
            self.0.ready.notify_all();
        }
    }
}

impl EventSender {
    /// Queues `e`, dropping the oldest audio/transport event (else the oldest event) when
    /// full. Never blocks beyond the queue's lock.
    pub(crate) fn send(&self, e: SessionEvent) {
        let mut st = self.0.lock();
        if !st.receiver {
            return;
        }
        if st.len() >= st.capacity {
            let gone = st.droppable.pop_front().or_else(|| st.kept.pop_front());
            if gone.is_some() {
                st.dropped = st.dropped.saturating_add(1);
                st.unreported = st.unreported.saturating_add(1);
            }
        }
        let seq = st.next_seq;
        st.next_seq = st.next_seq.wrapping_add(1);
        if matches!(e, SessionEvent::Audio { .. } | SessionEvent::Transport(_)) {
            st.droppable.push_back((seq, e));
        } else {
            st.kept.push_back((seq, e));
        }
        st.peak = st.peak.max(st.len());
        if std::mem::take(&mut st.waiting) {
            drop(st);
            self.0.ready.notify_one();
        }
    }
}

impl EventReceiver {
    /// The next event, waiting for it; `None` once the session has ended and every event has
    /// been read.
    pub fn recv(&self) -> Option<SessionEvent> {
        let mut st = self.0.lock();
        loop {
            if let Some(e) = st.pop() {
                return Some(e);
            }
            if st.disconnected() {
                return None;
            }
            st.waiting = true;
            st = self.0.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<SessionEvent, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.0.lock();
        loop {
            if let Some(e) = st.pop() {
                return Ok(e);
            }
            if st.disconnected() {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            st.waiting = true;
            st = self
                .0
                .ready
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<SessionEvent> {
        self.0.lock().pop()
    }

    /// Every event until the session ends (blocking).
    pub fn iter(&self) -> impl Iterator<Item = SessionEvent> + '_ {
        std::iter::from_fn(move || self.recv())
    }

    /// Events waiting to be read.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// True when no event waits to be read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most events that can wait; beyond it the oldest are dropped.
    pub fn capacity(&self) -> usize {
        self.0.lock().capacity
    }

    /// Events dropped because the queue was full, over the whole call.
    pub fn dropped(&self) -> u64 {
        self.0.lock().dropped
    }

    /// The most events that were waiting at once.
    pub fn peak(&self) -> usize {
        self.0.lock().peak
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let freed = {
            let mut st = self.0.lock();
            st.receiver = false;
            (
                std::mem::take(&mut st.droppable),
                std::mem::take(&mut st.kept),
            )
        };
        drop(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CloseReason, TransportEvent};

    fn audio(i: u32) -> SessionEvent {
        SessionEvent::Audio {
            item_id: format!("a{i}"),
            payload: String::new(),
        }
    }

    fn dtmf(i: u32) -> SessionEvent {
        SessionEvent::Dtmf {
            digit: i.to_string(),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_audio_first_and_says_so() {
        let (tx, rx) = event_queue(4);
        tx.send(dtmf(1));
        tx.send(audio(1));
        tx.send(SessionEvent::Transport(TransportEvent::ModelEvent(
            "m".into(),
        )));
        tx.send(dtmf(2));
        // Full: the next two push out audio 1, then the transport event.
        tx.send(dtmf(3));
        tx.send(dtmf(4));
        assert_eq!(rx.len(), 4);
        assert_eq!(rx.dropped(), 2);
        assert_eq!(rx.recv(), Some(SessionEvent::EventsDropped { count: 2 }));
        let rest: Vec<_> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(rest, vec![dtmf(1), dtmf(2), dtmf(3), dtmf(4)]);
        // Nothing droppable left: the oldest of the rest goes; Closed, the newest, stays.
        for i in 5..=8 {
            tx.send(dtmf(i));
        }
        tx.send(SessionEvent::Closed {
            reason: CloseReason::Closed,
        });
        drop(tx);
        let rest: Vec<_> = rx.iter().collect();
        assert_eq!(
            rest,
            vec![
                SessionEvent::EventsDropped { count: 1 },
                dtmf(6),
                dtmf(7),
                dtmf(8),
                SessionEvent::Closed {
                    reason: CloseReason::Closed
                }
            ]
        );
        assert_eq!(
            rx.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Disconnected)
        );
        assert_eq!(rx.peak(), 4);
    }

    #[test]
    fn order_is_kept_across_kinds_and_a_flood_stays_bounded() {
        let (tx, rx) = event_queue(100);
        for i in 0..10 {
            tx.send(audio(i));
            tx.send(dtmf(i));
        }
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv()).collect();
        let want: Vec<_> = (0..10).flat_map(|i| [audio(i), dtmf(i)]).collect();
        assert_eq!(got, want);
        for i in 0..100_000 {
            tx.send(audio(i));
        }
        assert_eq!(rx.len(), 100);
        assert_eq!(rx.dropped(), 99_900);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Ok(SessionEvent::EventsDropped { count: 99_900 })
        );
        assert_eq!(rx.try_recv(), Some(audio(99_900)));
    }

    #[test]
    fn a_waiting_reader_wakes_for_an_event_and_for_the_end() {
        let (tx, rx) = event_queue(8);
        let tx2 = tx.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx2.send(dtmf(1));
            drop(tx2);
            std::thread::sleep(Duration::from_millis(20));
            drop(tx);
        });
        assert_eq!(rx.recv(), Some(dtmf(1)));
        assert_eq!(rx.recv(), None);
        t.join().unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(RecvTimeoutError::Disconnected)
        );
        // Sending after the reader is gone frees the event at once.
        let (tx, rx) = event_queue(8);
        drop(rx);
        tx.send(dtmf(1));
    }
}
