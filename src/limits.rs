//! Per-call limits on bad input, as plain values that take the time: how often a bad-input
//! log line may be written ([`LogLimiter`]) and how many bad messages a peer may send before
//! its call is cut off ([`BadMessageBudget`], [`BadInput`]).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use twilio_realtime::limits::{BadInput, BadMessageBudget, BadVerdict};
//!
//! let t0 = Instant::now();
//! let mut bad = BadInput::new(BadMessageBudget { burst: 3, per_second: 1 }, Duration::from_secs(10));
//! // The first bad message is logged, the next ones in the same 10 s are counted, not logged.
//! assert_eq!(bad.on_bad(t0), BadVerdict::Log { suppressed: 0 });
//! assert_eq!(bad.on_bad(t0), BadVerdict::Quiet);
//! assert_eq!(bad.on_bad(t0), BadVerdict::Quiet);
//! // A fourth at once is over the budget: the caller ends the call.
//! assert_eq!(bad.on_bad(t0), BadVerdict::OverBudget { total: 4 });
//! ```

use std::time::{Duration, Instant};

/// How many bad messages a peer may send: a leaky bucket that holds `burst` messages and
/// drains `per_second` of them every second. One more while it is full ends the call. With
/// the default (100, 10/s) an occasional bad message never matters, a burst of 100 is
/// tolerated, and a peer that keeps sending more than 10 bad messages a second is cut off
/// within about 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMessageBudget {
    /// Bad messages tolerated at once. 0 cuts a peer off at its first bad message.
    pub burst: u32,
    /// Bad messages forgiven per second.
    pub per_second: u32,
}

impl Default for BadMessageBudget {
    fn default() -> Self {
        BadMessageBudget {
            burst: 100,
            per_second: 10,
        }
    }
}

impl BadMessageBudget {
    /// A budget that never runs out (bad messages are still reported and logged).
    pub const UNLIMITED: BadMessageBudget = BadMessageBudget {
        burst: u32::MAX,
        per_second: u32::MAX,
    };
}

/// Lets one log line through per interval and counts the ones it held back.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be written now (`n` lines were held back since the last one),
    /// `None` if this one is held back.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

/// What to do about one bad message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadVerdict {
    /// Report it and write a log line (`suppressed` lines were held back before it).
    Log {
        /// Bad messages not logged since the last line.
        suppressed: u64,
    },
    /// Report it without a log line (one was written recently).
    Quiet,
    /// The budget is spent: end the call. `total` bad messages were seen in the call.
    OverBudget {
        /// Bad messages in the whole call.
        total: u64,
    },
}

/// One peer's bad messages in one call: the budget and the log rate limit together.
#[derive(Debug, Clone)]
pub struct BadInput {
    budget: BadMessageBudget,
    /// Bucket level in thousandths of a message.
    level: u64,
    drained_at: Option<Instant>,
    total: u64,
    log: LogLimiter,
}

impl BadInput {
    /// A fresh tracker: `budget` for the call, one log line per `log_interval`.
    pub fn new(budget: BadMessageBudget, log_interval: Duration) -> BadInput {
        BadInput {
            budget,
            level: 0,
            drained_at: None,
            total: 0,
            log: LogLimiter::new(log_interval),
        }
    }

    /// Bad messages seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// A message that is odd but not the peer's fault (e.g. an event type newer than this
    /// crate): logged under the same rate limit, not counted against the budget.
    pub fn on_odd(&mut self, now: Instant) -> BadVerdict {
        match self.log.check(now) {
            Some(suppressed) => BadVerdict::Log { suppressed },
            None => BadVerdict::Quiet,
        }
    }

    /// Counts one bad message at `now`.
    pub fn on_bad(&mut self, now: Instant) -> BadVerdict {
        self.total = self.total.saturating_add(1);
        if let Some(at) = self.drained_at {
            let ms = now.saturating_duration_since(at).as_millis();
            let ms = u64::try_from(ms).unwrap_or(u64::MAX);
            // per_second messages a second = per_second thousandths a millisecond.
            self.level = self
                .level
                .saturating_sub(ms.saturating_mul(u64::from(self.budget.per_second)));
        }
        self.drained_at = Some(now);
        self.level = self.level.saturating_add(1000);
        if self.level > u64::from(self.budget.burst).saturating_mul(1000) {
            return BadVerdict::OverBudget { total: self.total };
        }
        match self.log.check(now) {
            Some(suppressed) => BadVerdict::Log { suppressed },
            None => BadVerdict::Quiet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_log_line_per_interval_with_the_count_of_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(5));
        assert_eq!(l.check(t0), Some(0));
        for i in 1..=9 {
            assert_eq!(l.check(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(l.check(t0 + Duration::from_secs(5)), Some(9));
        assert_eq!(l.check(t0 + Duration::from_secs(6)), None);
        // Time going backwards holds lines back; it does not panic.
        assert_eq!(l.check(t0), None);
    }

    #[test]
    fn the_budget_forgives_a_steady_trickle_and_cuts_off_a_flood() {
        let t0 = Instant::now();
        let budget = BadMessageBudget::default();
        // 5 bad messages a second for 10 minutes: under the drain rate, never cut off.
        let mut trickle = BadInput::new(budget, Duration::from_secs(10));
        for i in 0..3000u64 {
            let v = trickle.on_bad(t0 + Duration::from_millis(i * 200));
            assert!(!matches!(v, BadVerdict::OverBudget { .. }), "{i}: {v:?}");
        }
        // A burst of 100 at once is tolerated, the 101st is not.
        let mut flood = BadInput::new(budget, Duration::from_secs(10));
        for _ in 0..100 {
            assert!(!matches!(flood.on_bad(t0), BadVerdict::OverBudget { .. }));
        }
        assert_eq!(flood.on_bad(t0), BadVerdict::OverBudget { total: 101 });
        // 20 a second: cut off after about 10 s (100 / (20 - 10)).
        let mut steady = BadInput::new(budget, Duration::from_secs(10));
        let cut = (0..1000u64)
            .find(|i| {
                matches!(
                    steady.on_bad(t0 + Duration::from_millis(i * 50)),
                    BadVerdict::OverBudget { .. }
                )
            })
            .expect("cut off");
        assert!((190..=215).contains(&cut), "cut off at message {cut}");
        // Unlimited never cuts off, and extreme values do not overflow.
        let mut any = BadInput::new(BadMessageBudget::UNLIMITED, Duration::MAX);
        for _ in 0..10_000 {
            assert!(!matches!(any.on_bad(t0), BadVerdict::OverBudget { .. }));
        }
        let mut zero = BadInput::new(
            BadMessageBudget {
                burst: 0,
                per_second: 0,
            },
            Duration::ZERO,
        );
        assert_eq!(zero.on_bad(t0), BadVerdict::OverBudget { total: 1 });
    }
}
