//! The session thread's inbox: many senders, one receiver that sleeps until a message or its
//! next deadline.
//!
//! Bounded for what peers and the application send: [`InboxSender::send_wait`] waits while
//! `capacity` messages are queued (backpressure: a socket reader stops reading its socket, so
//! a peer that floods the call fills its own TCP window, not our memory), until there is
//! room, the receiver is gone, or the sender's cancel flag is set (so the session thread can
//! join a reader it no longer drains). Messages whose number is bounded by the call's threads
//! (a socket closed, a connection made, a tool finished) use [`InboxSender::send`], which
//! never waits, so that nothing the session thread itself waits for can be stuck behind a
//! full inbox.
//!
//! A crossbeam channel would do the same job, but its blocking receive spins and calls
//! `sched_yield` several times before it parks, which is the right trade for a busy consumer
//! and the wrong one for a session thread that handles a dozen messages a second per call:
//! under a 200-call load run that spinning was ~5 % of the bridge's CPU. Here the receiver
//! parks on a condvar at once, and a sender only makes the wake-up syscall when the receiver
//! is actually asleep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver is asleep (or about to be) on the condvar.
    waiting: bool,
    /// The receiver is gone: sends fail and nothing is queued.
    closed: bool,
    /// Bound for [`InboxSender::send_wait`].
    capacity: usize,
    /// Senders waiting for room.
    blocked: usize,
    /// Most messages queued at once.
    peak: usize,
    /// Times a sender had to wait for room.
    waits: u64,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    room: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side (cheap to clone).
pub(crate) struct InboxSender<T>(Arc<Shared<T>>);

/// The receiving side; dropping it closes the inbox and frees what was queued.
pub(crate) struct InboxReceiver<T>(Arc<Shared<T>>);

/// How often a sender waiting for room looks at its cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// A new, empty inbox; [`InboxSender::send_wait`] waits while `capacity` messages are queued.
pub(crate) fn inbox<T>(capacity: usize) -> (InboxSender<T>, InboxReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(16),
            waiting: false,
            closed: false,
            capacity: capacity.max(1),
            blocked: 0,
            peak: 0,
            waits: 0,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
    });
    (InboxSender(shared.clone()), InboxReceiver(shared))
}

impl<T> Clone for InboxSender<T> {
    fn clone(&self) -> Self {
        InboxSender(self.0.clone())
    }
}

impl<T> std::fmt::Debug for InboxSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxSender")
            .field("closed", &self.0.lock().closed)
            .finish()
    }
}

impl<T> InboxSender<T> {
    /// Queues `msg` whatever the queue holds (for messages bounded by the call's threads);
    /// gives it back when the receiver is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        let st = self.0.lock();
        self.push(st, msg)
    }

    fn push(&self, mut st: MutexGuard<'_, State<T>>, msg: T) -> Result<(), T> {
        if st.closed {
            return Err(msg);
        }
        st.queue.push_back(msg);
        st.peak = st.peak.max(st.queue.len());
        if st.waiting {
            st.waiting = false;
            self.0.ready.notify_one();
        }
        Ok(())
    }

    /// Queues `msg` once fewer than `capacity` messages are queued, waiting for room; gives
    /// it back when the receiver is gone or `cancel` was set while it waited.
    pub(crate) fn send_wait(&self, msg: T, cancel: Option<&AtomicBool>) -> Result<(), T> {
        let mut st = self.0.lock();
        if st.queue.len() >= st.capacity && !st.closed {
            st.waits = st.waits.saturating_add(1);
        }
        while st.queue.len() >= st.capacity && !st.closed {
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Err(msg);
            }
            st.blocked += 1;
            st = self
                .0
                .room
                .wait_timeout(st, CANCEL_CHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.blocked -= 1;
        }
        self.push(st, msg)
    }

    /// (most messages queued at once, times a sender waited for room)
    pub(crate) fn stats(&self) -> (usize, u64) {
        let st = self.0.lock();
        (st.peak, st.waits)
    }
}

impl<T> InboxReceiver<T> {
    /// The next message, waiting at most until `deadline` (forever with `None`); `None` once
    /// the deadline has passed with nothing queued.
    pub(crate) fn recv_deadline(&self, deadline: Option<Instant>) -> Option<T> {
        let mut st = self.0.lock();
        loop {
            if let Some(m) = st.queue.pop_front() {
                if st.blocked > 0 {
                    self.0.room.notify_one();
                }
                return Some(m);
            }
            st.waiting = true;
            st = match deadline {
                None => self.0.ready.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        st.waiting = false;
                        return None;
                    }
                    self.0
                        .ready
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            st.waiting = false;
        }
    }
}

impl<T> Drop for InboxReceiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut st = self.0.lock();
            st.closed = true;
            std::mem::take(&mut st.queue)
        };
        self.0.room.notify_all();
        // Outside the lock: a queued message may own a channel whose drop wakes someone.
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn messages_arrive_in_order_from_many_threads() {
        let (tx, rx) = inbox::<(u32, u32)>(16);
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                thread::spawn(move || {
                    for i in 0..1000 {
                        tx.send((t, i)).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        for _ in 0..4000 {
            let (t, i) = rx.recv_deadline(None).unwrap();
            assert_eq!(next[t as usize], i, "per-sender order");
            next[t as usize] += 1;
        }
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(next, [1000; 4]);
    }

    #[test]
    fn a_deadline_ends_the_wait_and_a_send_cuts_it_short() {
        let (tx, rx) = inbox::<u8>(16);
        let t0 = Instant::now();
        assert_eq!(rx.recv_deadline(Some(t0 + Duration::from_millis(30))), None);
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert_eq!(
            rx.recv_deadline(Some(t0)),
            None,
            "a past deadline returns at once"
        );
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
        });
        let got = rx.recv_deadline(Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(got, Some(7));
        sender.join().unwrap();
    }

    #[test]
    fn sends_fail_once_the_receiver_is_gone_and_queued_messages_are_freed() {
        let (tx, rx) = inbox::<Arc<()>>(16);
        let probe = Arc::new(());
        tx.send(probe.clone()).unwrap();
        assert_eq!(Arc::strong_count(&probe), 2);
        drop(rx);
        assert_eq!(Arc::strong_count(&probe), 1, "the queued copy was dropped");
        assert!(tx.send(probe.clone()).is_err());
    }

    #[test]
    fn a_full_inbox_holds_bounded_senders_back_until_there_is_room() {
        let (tx, rx) = inbox::<u32>(4);
        for i in 0..4 {
            tx.send_wait(i, None).unwrap();
        }
        // Unbounded sends still go in (they are bounded by the call's threads).
        tx.send(100).unwrap();
        let tx2 = tx.clone();
        let sender = thread::spawn(move || {
            for i in 4..50 {
                tx2.send_wait(i, None).unwrap();
            }
        });
        // Nothing is received until the sender has had to wait: the inbox is full, so it must.
        // (Receiving at once raced with the sender thread's start: it could find room.)
        let t0 = std::time::Instant::now();
        while tx.stats().1 == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the sender never waited"
            );
            thread::sleep(Duration::from_millis(1));
        }
        let mut got = Vec::new();
        while got.len() < 51 {
            got.push(rx.recv_deadline(None).unwrap());
        }
        sender.join().unwrap();
        let (peak, waits) = tx.stats();
        assert!(peak <= 5, "at most capacity + the unbounded one: {peak}");
        assert!(waits >= 1);
        let mut want: Vec<u32> = (0..4).chain([100]).chain(4..50).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn a_waiting_sender_gives_up_when_cancelled_or_when_the_receiver_goes() {
        let (tx, rx) = inbox::<u32>(1);
        tx.send_wait(0, None).unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx2, c2) = (tx.clone(), cancel.clone());
        let waiting = thread::spawn(move || tx2.send_wait(1, Some(&c2)));
        thread::sleep(Duration::from_millis(20));
        cancel.store(true, Ordering::SeqCst);
        assert_eq!(waiting.join().unwrap(), Err(1));
        let tx3 = tx.clone();
        let waiting = thread::spawn(move || tx3.send_wait(2, None));
        thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert_eq!(waiting.join().unwrap(), Err(2));
    }
}
