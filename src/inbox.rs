//! The session thread's inbox: many senders, one receiver that sleeps until a message or its
//! next deadline.
//!
//! A crossbeam channel would do the same job, but its blocking receive spins and calls
//! `sched_yield` several times before it parks, which is the right trade for a busy consumer
//! and the wrong one for a session thread that handles a dozen messages a second per call:
//! under a 200-call load run that spinning was ~5 % of the bridge's CPU. Here the receiver
//! parks on a condvar at once, and a sender only makes the wake-up syscall when the receiver
//! is actually asleep.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver is asleep (or about to be) on the condvar.
    waiting: bool,
    /// The receiver is gone: sends fail and nothing is queued.
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
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

/// A new, empty inbox.
pub(crate) fn inbox<T>() -> (InboxSender<T>, InboxReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(16),
            waiting: false,
            closed: false,
        }),
        ready: Condvar::new(),
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
    /// Queues `msg`; gives it back when the receiver is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        let mut st = self.0.lock();
        if st.closed {
            return Err(msg);
        }
        st.queue.push_back(msg);
        if st.waiting {
            st.waiting = false;
            self.0.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> InboxReceiver<T> {
    /// The next message, waiting at most until `deadline` (forever with `None`); `None` once
    /// the deadline has passed with nothing queued.
    pub(crate) fn recv_deadline(&self, deadline: Option<Instant>) -> Option<T> {
        let mut st = self.0.lock();
        loop {
            if let Some(m) = st.queue.pop_front() {
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
        let (tx, rx) = inbox::<(u32, u32)>();
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
        let (tx, rx) = inbox::<u8>();
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
        let (tx, rx) = inbox::<Arc<()>>();
        let probe = Arc::new(());
        tx.send(probe.clone()).unwrap();
        assert_eq!(Arc::strong_count(&probe), 2);
        drop(rx);
        assert_eq!(Arc::strong_count(&probe), 1, "the queued copy was dropped");
        assert!(tx.send(probe.clone()).is_err());
    }
}
