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
//! An echo for byte offset `X` arrives one-way delay *after* `X` was played, and a `clear` sent
//! now takes another one-way delay to stop playback. With `rtt` the round-trip time between
//! us and Twilio, the caller has heard, at the moment the `clear` lands,
//! `X + 8 × (now − t_echo + rtt)` bytes — provided the audio after `X` arrived in time to play
//! without a gap. The ledger replays its unacknowledged chunks through a small playout model
//! (a chunk starts at the later of "previous chunk ended" and "chunk arrived at Twilio",
//! `sent_at + rtt/2`) so under-runs are accounted for, and it never claims more than was sent.
//!
//! The round trip is measured on the call itself: a mark sent while nothing is buffered at
//! Twilio echoes after exactly one round trip (a probe), and a chunk sent while every earlier
//! mark was echoed echoes after one round trip plus its own duration. Samples are smoothed like
//! TCP's SRTT. The TypeScript SDK instead adds a flat 50 ms to the last acknowledged mark.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::mulaw::BYTES_PER_MS;

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
}

/// Smoothed round-trip estimate between the bridge and Twilio.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    default: Duration,
    samples: u64,
}

impl RttEstimator {
    /// A new estimator that answers `default` until it has a sample.
    pub fn new(default: Duration) -> RttEstimator {
        RttEstimator {
            srtt: None,
            default,
            samples: 0,
        }
    }

    /// Adds one round-trip sample (EWMA with gain 1/4 after the first sample).
    pub fn sample(&mut self, rtt: Duration) {
        // A sample of more than 5 s means the echo was held up by something else (e.g. a
        // buffer we did not know about); it would poison the estimate.
        if rtt > Duration::from_secs(5) {
            return;
        }
        self.samples += 1;
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 3 + rtt) / 4,
        });
    }

    /// The current estimate.
    pub fn get(&self) -> Duration {
        self.srtt.unwrap_or(self.default)
    }

    /// How many samples were taken.
    pub fn samples(&self) -> u64 {
        self.samples
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
                self.ack_to(now, global);
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
                self.ack_to(now, global);
                MarkOutcome::ItemFinished {
                    item_id: entry.item_id,
                    response_id: entry.response_id,
                }
            }
        }
    }

    fn ack_to(&mut self, now: Instant, global: u64) {
        while let Some(front) = self.chunks.front() {
            if front.end > global {
                break;
            }
            if front.end == global && front.from_idle {
                let played = Duration::from_millis(front.len / BYTES_PER_MS as u64);
                let elapsed = now.saturating_duration_since(front.sent_at);
                if elapsed >= played {
                    self.rtt.sample(elapsed - played);
                }
            }
            self.chunks.pop_front();
        }
        if self.last_ack.is_none_or(|(g, _)| global >= g) {
            self.last_ack = Some((global, now));
        }
    }

    fn find(&self, item_id: &str, content_index: u32) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.item_id == item_id && e.content_index == content_index)
    }

    /// Estimated stream offset the caller will have heard when a `clear` sent at `now` takes
    /// effect at Twilio (one-way delay later).
    pub fn heard_at_clear(&self, now: Instant) -> u64 {
        let rtt = self.rtt.get();
        let half = rtt / 2;
        let clear_lands = now + half;
        // Anchor: where playback was, and when.
        let (mut pos, mut cursor) = match self.last_ack {
            // Offset `g` was played one-way delay before its echo arrived.
            Some((g, t)) => (g, t.checked_sub(half).unwrap_or(t)),
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
            cursor = play_start + Duration::from_micros(remaining * 1000 / BYTES_PER_MS as u64);
        }
        pos.min(self.stream_end)
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
    pub fn clear(&mut self) {
        self.generation += 1;
        self.entries.clear();
        self.chunks.clear();
        self.stream_end = 0;
        self.last_ack = None;
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
}
