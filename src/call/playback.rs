//! The playback ledger: what audio was sent to Twilio, what Twilio has confirmed playing, and
//! an estimate of what the caller has actually heard at any instant.
//!
//! Twilio plays the µ-law audio we send in order, at 8 bytes per millisecond, and echoes a
//! `mark` when playback reaches it. After every outbound chunk the call core sends a mark named
//! with a generation, the content index, the byte offset inside the item and the item id (see
//! [`MarkName`]). A `clear` flushes Twilio's buffer and makes it echo every pending mark, so
//! each barge-in starts a new generation and echoes of older generations are ignored.
//!
//! # Where the caller really is
//!
//! Playback goes in *runs*: a run starts when a chunk reaches an empty buffer at Twilio, and
//! from then on each byte plays 1/8 ms after the one before it. If a run started playing at
//! `T0`, the caller has heard `8 × (t_land − T0)` bytes of it when a `clear` lands at
//! `t_land`. The ledger estimates both from what it sees, with `rtt` the measured round trip
//! and one-way delays taken as `rtt/2`:
//!
//! - `t_land = now + rtt/2`, plus the expected wait behind media sent just before the clear
//!   (one TCP connection delivers in order; see [`PlaybackLedger::heard_at_clear`]). The
//!   clear's own one-way delay is unknowable per message: under jitter it is the one error no
//!   estimate removes (the physical limit).
//! - `T0` two ways, combined by their variances. Every chunk echo of the run says "offset `X`
//!   played one way back before this": the mean over the run's echoes of
//!   `t_echo − X/8` − rtt/2 is `T0` up to the echoes' *mean* jitter (not one echo's) and the
//!   round-trip estimate's error. And the run's first chunk was sent at `t_sent`: `T0 =
//!   t_sent + rtt/2` is off by that chunk's own one-way jitter, but the clear takes the same
//!   way, so this estimate needs no round trip at all (it cancels). The echoes win once the
//!   run and the round-trip estimate have a few samples each; the send time carries the first
//!   echoes of a call (see [`PlaybackLedger::heard_at_clear`]).
//!
//! From that anchor the ledger replays its unacknowledged chunks through a small playout model
//! (a chunk starts at the later of "previous chunk ended" and "chunk arrived at Twilio",
//! `sent_at + rtt/2`, and one that arrives at an empty buffer starts a new run) so under-runs
//! are accounted for, and it never claims more than was sent.
//!
//! The round trip is measured on the call itself: a mark sent while nothing is buffered at
//! Twilio echoes after exactly one round trip (a probe, every 500 ms while nothing plays by
//! default), and a chunk sent while every earlier mark was echoed echoes after one round trip
//! plus its own duration. Under jitter what matters is the *mean* round trip, so samples are
//! averaged (see [`RttEstimator`]). The TypeScript SDK instead adds a flat 50 ms to the last
//! acknowledged mark.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::mulaw::BYTES_PER_MS;

/// A parsed mark name. Marks we send look like `"{generation}:{content_index}:{offset}:{item_id}"`
/// for audio chunks, `"{generation}:{content_index}:done:{item_id}"` when an item's audio is
/// complete, and `"rtt:{n}"` for round-trip probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkName<'a> {
    /// Playback reached `offset` bytes into an item's audio.
    Chunk {
        /// Ledger generation (bumped by every `clear`).
        generation: u64,
        /// Content index inside the item.
        content_index: u32,
        /// Bytes of the item's audio played when the mark is echoed.
        offset: u64,
        /// The model's item id.
        item_id: &'a str,
    },
    /// Playback reached the end of an item's audio.
    Done {
        /// Ledger generation.
        generation: u64,
        /// Content index inside the item.
        content_index: u32,
        /// The model's item id.
        item_id: &'a str,
    },
    /// A round-trip probe sent while nothing was buffered.
    Probe(u64),
}

impl<'a> MarkName<'a> {
    /// Parses a mark name; `None` for names this crate did not produce.
    pub fn parse(name: &'a str) -> Option<MarkName<'a>> {
        if let Some(n) = name.strip_prefix("rtt:") {
            return n.parse().ok().map(MarkName::Probe);
        }
        let mut parts = name.splitn(4, ':');
        let generation = parts.next()?.parse().ok()?;
        let content_index = parts.next()?.parse().ok()?;
        let offset = parts.next()?;
        let item_id = parts.next()?;
        if item_id.is_empty() {
            return None;
        }
        if offset == "done" {
            return Some(MarkName::Done {
                generation,
                content_index,
                item_id,
            });
        }
        Some(MarkName::Chunk {
            generation,
            content_index,
            offset: offset.parse().ok()?,
            item_id,
        })
    }

    /// Formats the mark name (the inverse of [`MarkName::parse`]).
    pub fn format(&self) -> String {
        match self {
            MarkName::Chunk {
                generation,
                content_index,
                offset,
                item_id,
            } => format!("{generation}:{content_index}:{offset}:{item_id}"),
            MarkName::Done {
                generation,
                content_index,
                item_id,
            } => format!("{generation}:{content_index}:done:{item_id}"),
            MarkName::Probe(n) => format!("rtt:{n}"),
        }
    }
}

/// One (response, item, content index) whose audio went to Twilio in the current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The response that produced the audio.
    pub response_id: String,
    /// The assistant item the audio belongs to.
    pub item_id: String,
    /// The content index of the audio part inside the item.
    pub content_index: u32,
    /// Offset of this entry's first byte in the generation's outbound stream.
    pub stream_start: u64,
    /// Bytes of this entry's audio sent to Twilio.
    pub sent: u64,
    /// Bytes of this entry's audio Twilio confirmed playing (by echoing a mark).
    pub acked: u64,
    /// The model said this item's audio is complete (`response.output_audio.done`).
    pub complete: bool,
}

/// A truncation to send for one ledger entry at a barge-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The response that produced the audio.
    pub response_id: String,
    /// Item to truncate.
    pub item_id: String,
    /// Content index to truncate.
    pub content_index: u32,
    /// Milliseconds of the item's audio the caller heard (integer, never past what was sent).
    pub audio_end_ms: u64,
    /// Milliseconds of the item's audio that were sent to Twilio.
    pub sent_ms: u64,
}

#[derive(Debug, Clone)]
struct Chunk {
    /// Stream offset one past the chunk's last byte.
    end: u64,
    len: u64,
    sent_at: Instant,
    /// Every earlier mark had been echoed when this chunk was sent (Twilio's buffer was empty),
    /// so its echo measures one round trip plus its own duration.
    from_idle: bool,
    /// The chunk reached (by the playout model) an empty buffer at Twilio: it starts a run.
    run_start: bool,
}

/// A stretch of playback without a gap: it starts when a chunk reaches an empty buffer at
/// Twilio, and from then on each byte plays 1/8 ms after the one before it.
#[derive(Debug, Clone)]
struct Run {
    /// Stream offset of the run's first byte.
    start: u64,
    /// When the run's first chunk was sent.
    first_sent: Instant,
    /// Mean over the run's echoes of "echo arrival − `first_sent` − time to play the run up to
    /// the echoed offset", in µs: the first chunk's way out plus the echoes' (averaged) way back.
    lag_us: i64,
    /// Chunk echoes averaged into `lag_us`.
    echoes: u64,
}

/// Time to play `bytes` of µ-law at 8 bytes per ms.
fn play_time(bytes: u64) -> Duration {
    Duration::from_micros(bytes.saturating_mul(1000) / BYTES_PER_MS as u64)
}

/// `t` moved by `us` µs, either way (saturating at `t` if the clock cannot go there).
fn shift(t: Instant, us: i64) -> Instant {
    let d = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        t.checked_add(d).unwrap_or(t)
    } else {
        t.checked_sub(d).unwrap_or(t)
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Echoes that weigh fully in a playout run's mean lag before it becomes an EWMA of the same
/// gain (see [`PlaybackLedger::heard_at_clear`]).
const MEAN_WINDOW: u64 = 16;

/// Round-trip samples [`RttEstimator`] keeps.
const RTT_WINDOW: usize = 32;

/// Round-trip samples above this are ignored (and a larger default is capped to it).
const MAX_SAMPLE: Duration = Duration::from_secs(5);

/// Round-trip estimate between the bridge and Twilio.
///
/// Under jitter every sample is the sum of two independent one-way delays, and what a barge-in
/// needs is their *mean* (the clear's own delay is unknowable; its expectation is not). An
/// SRTT-style EWMA of gain 1/4 or 1/8 (RFC 6298) follows the last few samples: its error, a
/// good part of one sample's jitter, is a bias every barge-in of the call inherits, and it
/// moves from call to call. So the estimate is the mean of the middle half of the last 32
/// samples (all of them while there are fewer than 4): nearly as steady as a plain mean of
/// that many, and one echo held up by a stall or a retransmission does not move it. The
/// window's interquartile range measures the jitter ([`RttEstimator::spread`]).
#[derive(Debug, Clone)]
pub struct RttEstimator {
    /// The latest samples in µs, a ring (`samples` were ever taken).
    window: [u32; RTT_WINDOW],
    /// Trimmed mean of the window in µs, once there is a sample.
    mean_us: Option<u64>,
    /// Interquartile range of the window in µs (0 with fewer than 8 samples).
    iqr_us: u64,
    default: Duration,
    samples: u64,
}

impl RttEstimator {
    /// A new estimator that answers `default` (at most 5 s, the largest sample it takes) until
    /// it has a sample.
    pub fn new(default: Duration) -> RttEstimator {
        RttEstimator {
            window: [0; RTT_WINDOW],
            mean_us: None,
            iqr_us: 0,
            default: default.min(MAX_SAMPLE),
            samples: 0,
        }
    }

    /// Adds one round-trip sample.
    pub fn sample(&mut self, rtt: Duration) {
        // A sample of more than 5 s means the echo was held up by something else (e.g. a
        // buffer we did not know about); it would poison the estimate.
        if rtt > MAX_SAMPLE {
            return;
        }
        // At most 5 s in µs: fits a u32.
        let x = rtt.as_micros() as u32;
        self.window[(self.samples % RTT_WINDOW as u64) as usize] = x;
        self.samples = self.samples.saturating_add(1);
        let n = (self.samples as usize).min(RTT_WINDOW);
        let mut sorted = self.window;
        let v = &mut sorted[..n];
        v.sort_unstable();
        let trim = if n >= 4 { n / 4 } else { 0 };
        let kept = &v[trim..n - trim];
        let sum: u64 = kept.iter().map(|&x| x as u64).sum();
        let len = kept.len() as u64;
        self.mean_us = Some((sum + len / 2) / len);
        self.iqr_us = if n >= 8 {
            (v[n - 1 - n / 4] - v[n / 4]) as u64
        } else {
            0
        };
    }

    /// The current estimate.
    pub fn get(&self) -> Duration {
        self.mean_us.map_or(self.default, Duration::from_micros)
    }

    /// The interquartile range of the recent samples (zero with fewer than 8): how much the
    /// round trip jitters.
    pub fn spread(&self) -> Duration {
        Duration::from_micros(self.iqr_us)
    }

    /// How many samples were taken.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// How many independent samples the estimate is worth (its variance is about that of one
    /// sample divided by this): the window's length, less a little for the trimming.
    fn effective_samples(&self) -> u64 {
        let n = self.samples.min(RTT_WINDOW as u64);
        if n >= 4 {
            n * 3 / 4
        } else {
            n
        }
    }
}

/// The ledger of audio sent to Twilio in the current generation.
#[derive(Debug, Clone)]
pub struct PlaybackLedger {
    generation: u64,
    entries: Vec<LedgerEntry>,
    chunks: VecDeque<Chunk>,
    /// Next stream offset in this generation.
    stream_end: u64,
    /// Last acknowledged stream offset and when its echo arrived.
    last_ack: Option<(u64, Instant)>,
    /// The playout run the latest echo belongs to.
    run: Option<Run>,
    /// Unacknowledged chunks that start a run.
    pending_run_starts: usize,
    /// When Twilio is estimated to finish playing everything sent (to spot under-runs).
    play_end: Option<Instant>,
    rtt: RttEstimator,
    probe_seq: u64,
    probe_out: Option<(u64, Instant)>,
}

impl PlaybackLedger {
    /// A new, empty ledger; `default_rtt` is used until the call measured its round trip.
    pub fn new(default_rtt: Duration) -> PlaybackLedger {
        PlaybackLedger {
            generation: 0,
            entries: Vec::new(),
            chunks: VecDeque::new(),
            stream_end: 0,
            last_ack: None,
            run: None,
            pending_run_starts: 0,
            play_end: None,
            rtt: RttEstimator::new(default_rtt),
            probe_seq: 0,
            probe_out: None,
        }
    }

    /// The current generation (bumped by [`PlaybackLedger::clear`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The round-trip estimator.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Entries with audio sent and not yet confirmed fully played.
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// Bytes of this generation's stream Twilio has confirmed playing (the latest echoed
    /// chunk or done mark); with no `clear`, every byte ever sent in the call.
    pub fn heard_bytes(&self) -> u64 {
        self.last_ack.map_or(0, |(g, _)| g)
    }

    /// True when audio was sent that Twilio has not confirmed playing.
    pub fn is_playing(&self) -> bool {
        !self.entries.is_empty()
    }

    /// True when no sent mark is waiting for its echo (Twilio's buffer is empty).
    fn idle(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Records `bytes` of audio for an item sent to Twilio at `now`; returns the mark name to
    /// send right after the media frame.
    pub fn record_chunk(
        &mut self,
        now: Instant,
        response_id: &str,
        item_id: &str,
        content_index: u32,
        bytes: u64,
    ) -> String {
        let from_idle = self.idle();
        // By the playout model, does this chunk find Twilio's buffer empty (a new run)?
        let arrival = now + self.rtt.get() / 2;
        let (run_start, play_from) = match self.play_end {
            Some(end) if !from_idle && arrival <= end => (false, end),
            _ => (true, arrival),
        };
        self.play_end = Some(play_from + play_time(bytes));
        if run_start {
            self.pending_run_starts += 1;
        }
        let idx = match self.find(item_id, content_index) {
            Some(i) => i,
            None => {
                self.entries.push(LedgerEntry {
                    response_id: response_id.to_owned(),
                    item_id: item_id.to_owned(),
                    content_index,
                    stream_start: self.stream_end,
                    sent: 0,
                    acked: 0,
                    complete: false,
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[idx];
        entry.sent += bytes;
        let offset = entry.sent;
        self.stream_end += bytes;
        self.chunks.push_back(Chunk {
            end: self.stream_end,
            len: bytes,
            sent_at: now,
            from_idle,
            run_start,
        });
        MarkName::Chunk {
            generation: self.generation,
            content_index,
            offset,
            item_id,
        }
        .format()
    }

    /// Marks an item's audio complete; returns the "done" mark name to send, or `None` if no
    /// audio of that item was sent in this generation.
    pub fn complete(&mut self, item_id: &str, content_index: u32) -> Option<String> {
        let idx = self.find(item_id, content_index)?;
        self.entries[idx].complete = true;
        Some(
            MarkName::Done {
                generation: self.generation,
                content_index,
                item_id,
            }
            .format(),
        )
    }

    /// Starts a round-trip probe when nothing is buffered and no probe is out; returns the
    /// mark name to send.
    pub fn start_probe(&mut self, now: Instant) -> Option<String> {
        if !self.idle() || self.probe_out.is_some() {
            return None;
        }
        self.probe_seq += 1;
        self.probe_out = Some((self.probe_seq, now));
        Some(MarkName::Probe(self.probe_seq).format())
    }

    /// True while a probe mark is waiting for its echo.
    pub fn probe_pending(&self) -> bool {
        self.probe_out.is_some()
    }

    /// Handles an echoed mark.
    pub fn on_mark(&mut self, now: Instant, name: &str) -> MarkOutcome {
        let Some(mark) = MarkName::parse(name) else {
            return MarkOutcome::Unknown;
        };
        match mark {
            MarkName::Probe(n) => match self.probe_out {
                Some((seq, sent)) if seq == n => {
                    self.probe_out = None;
                    // A probe sent while audio was queued behind nothing echoes after one RTT;
                    // if audio was sent after it, the echo still came first (marks are in order).
                    self.rtt.sample(now.saturating_duration_since(sent));
                    MarkOutcome::Probe
                }
                _ => MarkOutcome::Stale,
            },
            MarkName::Chunk {
                generation,
                content_index,
                offset,
                item_id,
            } => {
                if generation != self.generation {
                    return MarkOutcome::Stale;
                }
                let Some(idx) = self.find(item_id, content_index) else {
                    return MarkOutcome::Unknown;
                };
                let entry = &mut self.entries[idx];
                if offset > entry.sent || offset < entry.acked {
                    return MarkOutcome::Unknown;
                }
                entry.acked = offset;
                let global = entry.stream_start + offset;
                self.ack_to(now, global, true);
                MarkOutcome::Played
            }
            MarkName::Done {
                generation,
                content_index,
                item_id,
            } => {
                if generation != self.generation {
                    return MarkOutcome::Stale;
                }
                let Some(idx) = self.find(item_id, content_index) else {
                    return MarkOutcome::Unknown;
                };
                let entry = self.entries.remove(idx);
                let global = entry.stream_start + entry.sent;
                // A done mark may be sent after its audio finished playing (the model said
                // "done" late): its echo time is not a playback time, so it is no run sample.
                self.ack_to(now, global, false);
                MarkOutcome::ItemFinished {
                    item_id: entry.item_id,
                    response_id: entry.response_id,
                }
            }
        }
    }

    fn ack_to(&mut self, now: Instant, global: u64, playback_sample: bool) {
        while let Some(front) = self.chunks.front() {
            if front.end > global {
                break;
            }
            if front.end == global && front.from_idle {
                let played = play_time(front.len);
                let elapsed = now.saturating_duration_since(front.sent_at);
                if elapsed >= played {
                    self.rtt.sample(elapsed - played);
                }
            }
            if front.run_start {
                self.pending_run_starts = self.pending_run_starts.saturating_sub(1);
                self.run = Some(Run {
                    start: front.end - front.len,
                    first_sent: front.sent_at,
                    lag_us: 0,
                    echoes: 0,
                });
            }
            self.chunks.pop_front();
        }
        if playback_sample {
            // One jitter width and a little (5 ms), if the estimator can tell the width yet.
            let w = match micros(self.jitter_width()) {
                0 => 0,
                w => w.saturating_add(5_000),
            };
            if let Some(run) = self.run.as_mut().filter(|r| global > r.start) {
                let mut lag = micros(now.saturating_duration_since(run.first_sent))
                    .saturating_sub(micros(play_time(global - run.start)));
                // The echoes' way back varies over about one jitter width: an echo much later
                // than that was held up by something else (a stall, a retransmission) and
                // counts as no later than the width allows.
                if run.echoes > 0 && w > 0 {
                    lag = lag.clamp(run.lag_us.saturating_sub(w), run.lag_us.saturating_add(w));
                }
                run.echoes = run.echoes.saturating_add(1);
                let n = run.echoes.min(MEAN_WINDOW) as i64;
                run.lag_us = run
                    .lag_us
                    .saturating_add(lag.saturating_sub(run.lag_us) / n);
            }
        }
        if self.last_ack.is_none_or(|(g, _)| global >= g) {
            self.last_ack = Some((global, now));
        }
        // Everything still buffered follows the anchored run without a gap: re-base the
        // estimated end of playout on it (it is better than the send-time model).
        if self.pending_run_starts == 0 {
            if let Some((pos, at)) = self.anchor() {
                self.play_end = Some(at + play_time(self.stream_end.saturating_sub(pos)));
            }
        }
    }

    /// When the anchored run started playing, in µs after its first chunk was sent.
    ///
    /// Two estimates, combined by their variances (in units of one one-way delay's variance
    /// σ², with `n` echoes in the run and `m` round-trip samples in the estimate):
    /// - from the echoes: mean lag − rtt/2. Its error at a barge-in is the echoes' mean way
    ///   back (σ²/n) plus the round-trip estimate's error (2σ²/m);
    /// - from the send time: rtt/2 after the first chunk was sent. Its error at a barge-in is
    ///   that chunk's own way out (σ²), but it needs no round-trip estimate at all: the clear
    ///   takes the same way, so the estimate's error cancels.
    fn run_start_us(&self, run: &Run) -> i64 {
        let half = micros(self.rtt.get()) / 2;
        let from_echoes = run.lag_us.saturating_sub(half);
        let from_send = half;
        let n = run.echoes.min(2 * MEAN_WINDOW - 1) as i64;
        let m = self.rtt.effective_samples() as i64;
        if n == 0 || m == 0 {
            return from_send;
        }
        // weight(echoes) = 1 / (1 + 1/n + 2/m) = nm / (nm + m + 2n); in i128, no overflow.
        let (n, m) = (n as i128, m as i128);
        let start =
            (from_echoes as i128 * n * m + from_send as i128 * (m + 2 * n)) / (n * m + m + 2 * n);
        i64::try_from(start).unwrap_or(from_send)
    }

    /// The best estimate of a stream offset and the moment Twilio played it: the anchored
    /// run's start (see [`PlaybackLedger::run_start_us`]) carried forward to the last
    /// acknowledged offset; the last echo minus half a round trip if no run has echoes.
    fn anchor(&self) -> Option<(u64, Instant)> {
        let (g, t) = self.last_ack?;
        match &self.run {
            Some(run) if run.echoes > 0 && g >= run.start => {
                let start = shift(run.first_sent, self.run_start_us(run));
                Some((g, start + play_time(g - run.start)))
            }
            _ => {
                let half = self.rtt.get() / 2;
                Some((g, t.checked_sub(half).unwrap_or(t)))
            }
        }
    }

    fn find(&self, item_id: &str, content_index: u32) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.item_id == item_id && e.content_index == content_index)
    }

    /// Estimated stream offset the caller will have heard when a `clear` sent at `now` takes
    /// effect at Twilio: the anchored run's estimated start (see the module docs), carried to
    /// the last acknowledged offset, then the unacknowledged chunks through the playout model
    /// up to half a round trip after `now`, plus the clear's expected wait behind the media
    /// and marks sent less than one jitter width before it (each message's one-way delay taken
    /// as independent and uniform over a width estimated from the round-trip samples' spread);
    /// never past what was sent.
    pub fn heard_at_clear(&self, now: Instant) -> u64 {
        let half = self.rtt.get() / 2;
        let clear_lands = now + half + self.clear_queueing(now);
        // Anchor: where playback was, and when.
        let (mut pos, mut cursor) = match self.anchor() {
            Some(a) => a,
            None => match self.chunks.front() {
                Some(c) => (c.end - c.len, c.sent_at + half),
                None => return self.stream_end,
            },
        };
        for c in &self.chunks {
            let start = c.end - c.len;
            if c.end <= pos {
                continue;
            }
            let arrival = c.sent_at + half;
            let play_start = cursor.max(arrival);
            if play_start >= clear_lands {
                break;
            }
            // Part of the chunk may already be behind the anchor (never with marks after each
            // chunk, but keep the arithmetic honest).
            let from = pos.max(start);
            let remaining = c.end - from;
            let available_ms = (clear_lands - play_start).as_micros() as u64;
            let playable = available_ms * BYTES_PER_MS as u64 / 1000;
            if playable < remaining {
                return from + playable;
            }
            pos = c.end;
            cursor = play_start + play_time(remaining);
        }
        pos.min(self.stream_end)
    }

    /// The width `w` over which one message's one-way delay is spread, if each is uniform over
    /// it and independent: a round trip is then the sum of two, whose quartiles lie
    /// `(2 − √2)·w` apart, so `w = IQR / (2 − √2)`; capped at the round trip itself (zero
    /// until the estimator has 8 samples).
    fn jitter_width(&self) -> Duration {
        self.rtt
            .spread()
            .div_f64(2.0 - std::f64::consts::SQRT_2)
            .min(self.rtt.get())
    }

    /// How much later than half a round trip after `now` a `clear` sent at `now` is expected to
    /// land, because on one TCP connection it cannot overtake the media and marks sent just
    /// before it (RFC 9293 delivers in order).
    ///
    /// Each message's one-way delay is taken as independent and uniform over a width `w`
    /// ([`PlaybackLedger::jitter_width`]). The clear lands at the
    /// latest of its own arrival and those of the two messages (media, mark) of every chunk
    /// sent less than `w` before it; this is the expectation of that latest arrival minus the
    /// clear's own mean, integrated numerically (32 steps, only at a barge-in). Zero without
    /// jitter, with fewer than 8 samples, and when nothing was sent within `w` (the model had
    /// finished sending).
    fn clear_queueing(&self, now: Instant) -> Duration {
        let w = self.jitter_width().as_secs_f64();
        if w <= 0.0 {
            return Duration::ZERO;
        }
        // How long before `now` each recent chunk was sent, as a fraction of `w`.
        let ago: Vec<f64> = self
            .chunks
            .iter()
            .rev()
            .map(|c| now.saturating_duration_since(c.sent_at).as_secs_f64() / w)
            .take_while(|a| *a < 1.0)
            .take(32)
            .collect();
        if ago.is_empty() {
            return Duration::ZERO;
        }
        // The latest arrival M, relative to the clear's earliest, in units of w, is in [0, 1]:
        // P(M <= x) = x · Π (min(1, x + ago))² ; E[M] = ∫ (1 − P(M <= x)) dx.
        const STEPS: usize = 32;
        let mut expect = 0.0;
        for i in 0..STEPS {
            let x = (i as f64 + 0.5) / STEPS as f64;
            let cdf = ago
                .iter()
                .fold(x, |p, a| p * (x + a).min(1.0) * (x + a).min(1.0));
            expect += (1.0 - cdf) / STEPS as f64;
        }
        Duration::from_secs_f64(((expect - 0.5) * w).max(0.0))
    }

    /// Computes one truncation per entry whose audio the caller did not hear completely, as of
    /// a `clear` sent at `now`. Does not change the ledger; call [`PlaybackLedger::clear`] next.
    pub fn truncations(&self, now: Instant) -> Vec<Truncation> {
        let heard = self.heard_at_clear(now);
        self.entries
            .iter()
            .filter_map(|e| {
                let heard_bytes = heard.saturating_sub(e.stream_start).min(e.sent);
                if e.complete && heard_bytes >= e.sent {
                    return None;
                }
                Some(Truncation {
                    response_id: e.response_id.clone(),
                    item_id: e.item_id.clone(),
                    content_index: e.content_index,
                    audio_end_ms: heard_bytes / BYTES_PER_MS as u64,
                    sent_ms: e.sent / BYTES_PER_MS as u64,
                })
            })
            .collect()
    }

    /// Forgets everything sent in this generation and starts the next one (after a `clear`).
    ///
    /// The marks the clear makes Twilio echo are no round-trip samples: they come back in one
    /// burst, and on one TCP connection each waits for the one before it, so the last of them
    /// is the latest of many delays (not a typical one), and which of them was still buffered
    /// depends on the very position being estimated.
    pub fn clear(&mut self) {
        self.generation += 1;
        self.entries.clear();
        self.chunks.clear();
        self.stream_end = 0;
        self.last_ack = None;
        self.run = None;
        self.pending_run_starts = 0;
        self.play_end = None;
    }
}

/// What an echoed mark meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkOutcome {
    /// Playback reached a chunk boundary.
    Played,
    /// Playback reached the end of an item's audio; the entry left the ledger.
    ItemFinished {
        /// The finished item.
        item_id: String,
        /// Its response.
        response_id: String,
    },
    /// A round-trip probe came back.
    Probe,
    /// An echo from before the last `clear` (or an old probe): ignored.
    Stale,
    /// A mark this ledger never sent: logged and ignored by the caller.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn mark_names_round_trip() {
        for m in [
            MarkName::Chunk {
                generation: 3,
                content_index: 0,
                offset: 1600,
                item_id: "item_a:b_c",
            },
            MarkName::Done {
                generation: 0,
                content_index: 2,
                item_id: "item_x",
            },
            MarkName::Probe(7),
        ] {
            assert_eq!(MarkName::parse(&m.format()), Some(m.clone()));
        }
        assert_eq!(MarkName::parse("hello"), None);
        assert_eq!(MarkName::parse("1:0:12:"), None);
        assert_eq!(MarkName::parse("x:0:12:item"), None);
        assert_eq!(MarkName::parse("rtt:abc"), None);
    }

    #[test]
    fn probe_measures_round_trip() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(100));
        let name = l.start_probe(t0).unwrap();
        assert!(l.start_probe(t0).is_none(), "one probe at a time");
        assert_eq!(l.on_mark(t0 + ms(60), &name), MarkOutcome::Probe);
        assert_eq!(l.rtt().get(), ms(60));
        assert_eq!(l.on_mark(t0 + ms(70), &name), MarkOutcome::Stale);
    }

    #[test]
    fn idle_chunk_echo_is_a_sample() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(100));
        // 160 ms of audio sent with nothing buffered; echo after 40 ms RTT + 160 ms play.
        let m = l.record_chunk(t0, "r", "i", 0, 1280);
        assert_eq!(l.on_mark(t0 + ms(200), &m), MarkOutcome::Played);
        assert_eq!(l.rtt().get(), ms(40));
    }

    #[test]
    fn heard_uses_last_ack_plus_rtt() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(40));
        // Burst of 1 s of audio in 10 chunks at t0 (faster than real time).
        let mut marks = vec![];
        for _ in 0..10 {
            marks.push(l.record_chunk(t0, "r", "i", 0, 800));
        }
        // First chunk (100 ms) plays from t0+20 to t0+120, echo at t0+140.
        l.on_mark(t0 + ms(140), &marks[0]);
        // Barge-in at t0+300: clear lands at t0+320; played since t0+20 → 300 ms = 2400 bytes.
        assert_eq!(l.heard_at_clear(t0 + ms(300)), 2400);
        let tr = l.truncations(t0 + ms(300));
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].audio_end_ms, 300);
        assert_eq!(tr[0].sent_ms, 1000);
    }

    #[test]
    fn heard_never_exceeds_sent() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(40));
        let m = l.record_chunk(t0, "r", "i", 0, 800);
        l.on_mark(t0 + ms(140), &m);
        assert_eq!(l.heard_at_clear(t0 + ms(5000)), 800);
        let tr = l.truncations(t0 + ms(5000));
        assert_eq!(tr[0].audio_end_ms, 100);
    }

    #[test]
    fn underrun_is_accounted() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(40));
        // 100 ms sent at t0, next 100 ms only at t0+500 (the model stalled).
        let a = l.record_chunk(t0, "r", "i", 0, 800);
        l.record_chunk(t0 + ms(500), "r", "i", 0, 800);
        l.on_mark(t0 + ms(140), &a);
        // Second chunk arrives t0+520, plays; barge-in at t0+550 → clear lands t0+570 → 50 ms.
        assert_eq!(l.heard_at_clear(t0 + ms(550)), 800 + 400);
    }

    #[test]
    fn no_ack_yet_starts_at_arrival() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(40));
        l.record_chunk(t0, "r", "i", 0, 1600);
        // Arrives t0+20; barge-in at t0+50 → clear lands t0+70 → 50 ms heard.
        assert_eq!(l.heard_at_clear(t0 + ms(50)), 400);
        // Barge-in before it even arrived: nothing heard.
        assert_eq!(l.heard_at_clear(t0), 0);
    }

    #[test]
    fn several_items_truncate_each() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(40));
        let a = l.record_chunk(t0, "r", "a", 0, 800);
        l.complete("a", 0);
        l.record_chunk(t0, "r", "b", 0, 800);
        l.record_chunk(t0, "r", "b", 1, 800);
        l.on_mark(t0 + ms(140), &a);
        // heard at t0+150 (lands t0+170): 150 ms from t0+20 = 1200 bytes: a fully, b 50 ms.
        let tr = l.truncations(t0 + ms(150));
        assert_eq!(tr.len(), 2, "{tr:?}");
        assert_eq!((tr[0].item_id.as_str(), tr[0].audio_end_ms), ("b", 50));
        assert_eq!((tr[1].content_index, tr[1].audio_end_ms), (1, 0));
    }

    #[test]
    fn stale_marks_after_clear_are_ignored() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(40));
        let a = l.record_chunk(t0, "r", "a", 0, 800);
        let done = l.complete("a", 0).unwrap();
        l.clear();
        assert!(!l.is_playing());
        assert_eq!(l.on_mark(t0 + ms(30), &a), MarkOutcome::Stale);
        assert_eq!(l.on_mark(t0 + ms(30), &done), MarkOutcome::Stale);
        // New audio under the same item id in the new generation is tracked afresh.
        let b = l.record_chunk(t0 + ms(40), "r2", "a", 0, 160);
        assert_eq!(l.on_mark(t0 + ms(100), &b), MarkOutcome::Played);
        assert_eq!(l.on_mark(t0, "someone-else"), MarkOutcome::Unknown);
    }

    #[test]
    fn done_mark_finishes_entry() {
        let t0 = Instant::now();
        let mut l = PlaybackLedger::new(ms(40));
        l.record_chunk(t0, "r", "a", 0, 800);
        let done = l.complete("a", 0).unwrap();
        assert!(l.complete("zzz", 0).is_none());
        assert_eq!(
            l.on_mark(t0 + ms(140), &done),
            MarkOutcome::ItemFinished {
                item_id: "a".into(),
                response_id: "r".into()
            }
        );
        assert!(!l.is_playing());
        assert!(l.truncations(t0 + ms(150)).is_empty());
    }

    /// Pins the round trip at `rtt` with `n` probes, each echoed exactly `rtt` after it left.
    fn probed(
        default: Duration,
        rtt: Duration,
        n: usize,
        t0: Instant,
    ) -> (PlaybackLedger, Instant) {
        let mut l = PlaybackLedger::new(default);
        let mut t = t0;
        for _ in 0..n {
            let p = l.start_probe(t).unwrap();
            t += rtt;
            assert_eq!(l.on_mark(t, &p), MarkOutcome::Probe);
        }
        (l, t)
    }

    #[test]
    fn rtt_is_a_trimmed_mean_of_the_recent_samples() {
        let mut r = RttEstimator::new(ms(100));
        assert_eq!(r.get(), ms(100), "the default until a sample");
        r.sample(ms(60));
        r.sample(ms(20));
        // The mean; an EWMA of gain 1/4 would say 50 and follow whichever sample came last.
        assert_eq!(r.get(), ms(40));
        for i in 0..14 {
            r.sample(ms(if i % 2 == 0 { 30 } else { 50 }));
        }
        assert_eq!((r.samples(), r.get()), (16, ms(40)));
        // 20 · 30 · 30 · 30 | 30 30 30 30 50 50 50 50 | 50 50 50 60: quartiles 30 and 50.
        assert_eq!(r.spread(), ms(20));
        // An echo held up for 400 ms by a stall is trimmed away: it only shifts the middle
        // half by one sample (a plain mean would jump to 61 ms).
        r.sample(ms(400));
        assert_eq!(r.get(), Duration::from_micros(41_111));
        r.sample(Duration::from_secs(6));
        assert_eq!(r.samples(), 17, "a 6 s sample is ignored");
        // A route change: once half the window says 100 ms, the estimate follows.
        for _ in 0..24 {
            r.sample(ms(100));
        }
        assert_eq!(r.get(), ms(100));
    }

    #[test]
    fn the_anchor_averages_the_runs_echoes_instead_of_trusting_the_last() {
        let t0 = Instant::now();
        // 80 ms round trip, well measured (16 probes), 40 ms each way on average.
        let (mut l, t1) = probed(ms(100), ms(80), 16, t0);
        // 2 s of audio in 100 ms chunks, sent at t1 (a burst faster than real time).
        let marks: Vec<String> = (0..20)
            .map(|_| l.record_chunk(t1, "r", "i", 0, 800))
            .collect();
        // The first chunk took 50 ms to get there: playback starts at t1 + 50. The echoes take
        // 30 and 50 ms in turn (40 on average); the last of them took 50.
        for (k, m) in marks.iter().take(10).enumerate() {
            let back = if k % 2 == 0 { 30 } else { 50 };
            let at = t1 + ms(50 + 100 * (k as u64 + 1) + back);
            assert_eq!(l.on_mark(at, m), MarkOutcome::Played);
        }
        // Barge-in 1.5 s after the burst: the clear lands 40 ms later (on average), 1490 ms
        // into playback = 11920 bytes.
        let heard = l.heard_at_clear(t1 + ms(1500)) as i64;
        // The last echo alone (t − 40 ms) would put playback 10 ms late: 11840 bytes. The
        // send time alone (t1 + 40 ms) 10 ms early: 12000. The run's mean echo says 50 ms,
        // weighted against the send time by their variances (10 echoes, 17 round-trip
        // samples worth 12 after trimming): 48 ms, i.e. 16 bytes (2 ms) over.
        assert!((heard - 11920).abs() <= 16, "heard {heard}");
    }

    #[test]
    fn before_any_echo_a_wrong_default_round_trip_cancels_out() {
        let t0 = Instant::now();
        // The default says 300 ms, the call has not measured anything yet.
        let mut l = PlaybackLedger::new(ms(300));
        l.record_chunk(t0, "r", "i", 0, 8000);
        // Playback starts a one-way delay after t0 and the clear stops it a one-way delay
        // after it is sent: whatever that delay is, 50 ms were heard.
        assert_eq!(l.heard_at_clear(t0 + ms(50)), 400);
        // Even an absurd default (capped to 5 s) does not change that, nor panic.
        let mut l = PlaybackLedger::new(Duration::MAX);
        l.record_chunk(t0, "r", "i", 0, 8000);
        assert_eq!(l.rtt().get(), Duration::from_secs(5));
        assert_eq!(l.heard_at_clear(t0 + ms(50)), 400);
    }

    #[test]
    fn a_chunk_that_finds_the_buffer_empty_starts_a_new_run() {
        let t0 = Instant::now();
        let (mut l, t1) = probed(ms(100), ms(40), 16, t0);
        // A: 100 ms, plays t1+20 .. t1+120, echo at t1+140.
        let a = l.record_chunk(t1, "r", "i", 0, 800);
        assert_eq!(l.on_mark(t1 + ms(140), &a), MarkOutcome::Played);
        // The model stalls: B (200 ms) and C (1 s) are sent at t1+500, B plays t1+520 .. 720.
        let b = l.record_chunk(t1 + ms(500), "r", "i", 0, 1600);
        l.record_chunk(t1 + ms(500), "r", "i", 0, 8000);
        assert_eq!(l.on_mark(t1 + ms(740), &b), MarkOutcome::Played);
        // Barge-in at t1+900, the clear lands at t1+920: A, B and 200 ms of C. Anchored on
        // A's run (no gap), offset 2400 would have played at t1+320: 400 ms too many.
        assert_eq!(l.heard_at_clear(t1 + ms(900)), 800 + 1600 + 1600);
    }

    #[test]
    fn a_clear_right_behind_media_is_expected_to_land_later() {
        let t0 = Instant::now();
        // Round trips of 60 and 100 ms in turn: quartiles 40 ms apart, i.e. one-way delays
        // spread uniformly over w = 68 ms.
        let mut l = PlaybackLedger::new(ms(100));
        let mut t = t0;
        for i in 0..16 {
            let p = l.start_probe(t).unwrap();
            t += ms(if i % 2 == 0 { 60 } else { 100 });
            l.on_mark(t, &p);
        }
        assert_eq!((l.rtt().get(), l.rtt().spread()), (ms(80), ms(40)));
        // (The quartiles of a sum of two uniform delays lie (2 − √2)·w apart.)
        let w = 40.0 / (2.0 - 2f64.sqrt());
        assert!((l.jitter_width().as_secs_f64() * 1000.0 - w).abs() < 0.01);
        assert_eq!(
            l.clear_queueing(t),
            Duration::ZERO,
            "nothing sent: no queue"
        );
        // A chunk (media + mark) sent just now: the clear lands at the latest of three
        // uniform delays, 3/4 of w instead of 1/2, a quarter of w later.
        l.record_chunk(t, "r", "i", 0, 800);
        let q = l.clear_queueing(t).as_secs_f64() * 1000.0;
        assert!((q - w / 4.0).abs() < 0.5, "{q} ms");
        // Sent longer than w ago: it has arrived before the clear could.
        assert_eq!(l.clear_queueing(t + ms(70)), Duration::ZERO);
        // In between, less.
        let half_way = l.clear_queueing(t + ms(34)).as_secs_f64() * 1000.0;
        assert!(half_way > 0.0 && half_way < q / 2.0, "{half_way} ms");
    }
}
