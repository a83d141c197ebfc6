//! A sans-I/O pacer that keeps Twilio's playout buffer **shallow** for a model that owns its
//! own output timeline (GPT-Live, issue 14 §4).
//!
//! GPT-Live has no truncate, no cancel and no way to report playback: "the model assumes audio
//! is heard as it is sent" (brief `spec/gpt-live.md` §5.2), and it stops by itself when talked
//! over. Sending a Twilio `clear` on a guess would drop the model's own post-interruption audio
//! (§5.3). So instead of cutting late, the bridge never lets Twilio get far ahead: model audio
//! is queued here and released only while the **lead** — audio sent to Twilio minus audio the
//! caller has heard — is below [`PacerConfig::max_lead`]. What the caller has heard comes from
//! the playback ledger's echoed marks (a mark echoes when playback reaches it); between echoes
//! the estimate advances with the clock at real time, capped at what was sent, and never more
//! than [`PacerConfig::max_unconfirmed`] past the last echo (a stalled Twilio stops the pacer).
//!
//! Audio arriving faster than real time is paced; audio arriving at real time (what production
//! does, §4) passes at once. Large deltas are split at base64 boundaries (4 characters = 3
//! bytes, no decoding) into pieces of at most [`PacerConfig::piece_ms`]. No clock and no I/O:
//! the caller passes `now` in and sends what [`Pacer::poll`] returns.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use twilio_realtime::call::pacer::{Pacer, PacerConfig};
//!
//! let t0 = Instant::now();
//! let mut p = Pacer::new(PacerConfig::default());
//! // One second of model audio arrives at once (160 bytes of µ-law per 20 ms).
//! for _ in 0..50 { p.push(&"/".repeat(216)).unwrap(); } // 216 base64 chars = 162 bytes
//! let mut sent = 0;
//! while let Some(piece) = p.poll(t0) { sent += piece.len(); }
//! assert!(p.lead_ms(t0) <= 160 + 20, "only the lead goes out before anything is heard");
//! assert!(sent > 0);
//! // 500 ms later (the caller heard it as it played), more may go.
//! let t1 = t0 + Duration::from_millis(500);
//! p.on_heard(p.sent_ms(), t1);
//! assert!(p.poll(t1).is_some());
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::proto::mulaw;

/// Settings of a [`Pacer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PacerConfig {
    /// The most audio sent ahead of what the caller has heard (estimated). Default 160 ms
    /// (issue 14 §4: "e.g. 100–200 ms").
    pub max_lead: Duration,
    /// The most audio sent past the last echoed mark (confirmed), whatever the estimate says:
    /// covers the echo's network delay. Default 400 ms.
    pub max_unconfirmed: Duration,
    /// The longest piece sent at once. Default 20 ms (one Twilio frame).
    pub piece_ms: u32,
    /// The most audio held back; more is refused ([`PacerError::Full`]). Default 10 minutes
    /// (Twilio's own outbound cap, DESIGN.md §3).
    pub max_queued: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            max_lead: Duration::from_millis(160),
            max_unconfirmed: Duration::from_millis(400),
            piece_ms: 20,
            max_queued: Duration::from_secs(600),
        }
    }
}

impl PacerConfig {
    /// The default settings with this lead.
    pub fn with_lead(max_lead: Duration) -> PacerConfig {
        PacerConfig {
            max_lead,
            ..PacerConfig::default()
        }
    }
}

/// Errors of a [`Pacer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacerError {
    /// The queue already holds [`PacerConfig::max_queued`] of audio: the delta is dropped.
    Full {
        /// Milliseconds queued.
        queued_ms: u64,
    },
}

impl fmt::Display for PacerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacerError::Full { queued_ms } => {
                write!(f, "pacer queue full ({queued_ms} ms held back)")
            }
        }
    }
}

impl std::error::Error for PacerError {}

/// Lead samples in 5 ms buckets up to 2 s (bounded memory for any call length).
const BUCKET_MS: u64 = 5;
const BUCKETS: usize = 400;

/// The pacer. See the module docs.
#[derive(Debug, Clone)]
pub struct Pacer {
    cfg: PacerConfig,
    /// Base64 pieces, each at most `piece_chars` long, and their µ-law bytes.
    queue: VecDeque<(String, u64)>,
    queued_bytes: u64,
    piece_chars: usize,
    /// µ-law bytes sent to Twilio so far.
    sent_bytes: u64,
    /// Milliseconds the caller has heard per the last echoed mark, and when it echoed.
    confirmed_ms: u64,
    confirmed_at: Option<Instant>,
    lead_hist: Box<[u64; BUCKETS]>,
    samples: u64,
    max_seen_ms: u64,
}

impl Pacer {
    /// A pacer with these settings.
    pub fn new(cfg: PacerConfig) -> Pacer {
        let bytes = (cfg.piece_ms.max(1) as usize) * mulaw::BYTES_PER_MS;
        // Whole base64 quads only: a prefix of 4k characters decodes to 3k bytes on its own.
        let piece_chars = (bytes.div_ceil(3) * 4).max(4);
        Pacer {
            cfg,
            queue: VecDeque::new(),
            queued_bytes: 0,
            piece_chars,
            sent_bytes: 0,
            confirmed_ms: 0,
            confirmed_at: None,
            lead_hist: Box::new([0; BUCKETS]),
            samples: 0,
            max_seen_ms: 0,
        }
    }

    /// Queues a model audio delta (base64 µ-law).
    pub fn push(&mut self, b64: &str) -> Result<(), PacerError> {
        let max = self.cfg.max_queued.as_millis() as u64 * mulaw::BYTES_PER_MS as u64;
        if self.queued_bytes >= max {
            return Err(PacerError::Full {
                queued_ms: self.queued_ms(),
            });
        }
        let mut rest = b64;
        while !rest.is_empty() {
            // Base64 is ASCII: any index is a char boundary; split only at whole quads.
            let cut = if rest.len() > self.piece_chars && rest.is_char_boundary(self.piece_chars) {
                self.piece_chars
            } else {
                rest.len()
            };
            let (piece, tail) = rest.split_at(cut);
            let n = mulaw::base64_decoded_len(piece) as u64;
            self.queued_bytes = self.queued_bytes.saturating_add(n);
            self.queue.push_back((piece.to_owned(), n));
            rest = tail;
        }
        Ok(())
    }

    /// The playback ledger says the caller has heard `heard_ms` of everything sent (a mark
    /// echoed at `now`). Older or smaller reports are ignored.
    pub fn on_heard(&mut self, heard_ms: u64, now: Instant) {
        let heard_ms = heard_ms.min(self.sent_ms());
        if heard_ms >= self.confirmed_ms {
            self.confirmed_ms = heard_ms;
            self.confirmed_at = Some(now);
        }
    }

    /// Milliseconds sent to Twilio so far.
    pub fn sent_ms(&self) -> u64 {
        self.sent_bytes / mulaw::BYTES_PER_MS as u64
    }

    /// Milliseconds held back.
    pub fn queued_ms(&self) -> u64 {
        self.queued_bytes / mulaw::BYTES_PER_MS as u64
    }

    /// What the caller has heard by `now` (estimated): the last echo plus real time since,
    /// capped at what was sent. Before any echo, nothing.
    pub fn heard_ms(&self, now: Instant) -> u64 {
        let Some(at) = self.confirmed_at else {
            return 0;
        };
        let since = now.saturating_duration_since(at).as_millis() as u64;
        self.confirmed_ms.saturating_add(since).min(self.sent_ms())
    }

    /// Audio sent but not yet heard at `now`: what a hard stop now would still play (unless
    /// the bridge sends Twilio `clear`, which it does only on a decision, never on a guess).
    pub fn lead_ms(&self, now: Instant) -> u64 {
        self.sent_ms().saturating_sub(self.heard_ms(now))
    }

    fn may_send(&self, now: Instant, piece_bytes: u64) -> bool {
        let lead = self.lead_ms(now);
        let unconfirmed = self.sent_ms().saturating_sub(self.confirmed_ms);
        let piece_ms = piece_bytes / mulaw::BYTES_PER_MS as u64;
        lead + piece_ms <= self.cfg.max_lead.as_millis() as u64 + piece_ms.min(1)
            && unconfirmed + piece_ms <= self.cfg.max_unconfirmed.as_millis() as u64
            || lead == 0 && unconfirmed == 0
    }

    /// The next piece to send to Twilio now, if the lead allows one. Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<String> {
        let &(_, n) = self.queue.front()?;
        if !self.may_send(now, n) {
            return None;
        }
        let (piece, n) = self.queue.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(n);
        self.sent_bytes = self.sent_bytes.saturating_add(n);
        self.sample(self.lead_ms(now));
        Some(piece)
    }

    /// When [`Pacer::poll`] may next return a piece (`None`: nothing queued, or waiting for
    /// a mark echo).
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let &(_, n) = self.queue.front()?;
        if self.may_send(now, n) {
            return Some(now);
        }
        let unconfirmed = self.sent_ms().saturating_sub(self.confirmed_ms);
        let piece_ms = n / mulaw::BYTES_PER_MS as u64;
        if self.confirmed_at.is_none()
            || unconfirmed + piece_ms > self.cfg.max_unconfirmed.as_millis() as u64
        {
            return None; // only a mark echo helps (the estimate starts at the first one)
        }
        let excess = (self.lead_ms(now) + piece_ms)
            .saturating_sub(self.cfg.max_lead.as_millis() as u64 + piece_ms.min(1));
        Some(now + Duration::from_millis(excess.max(1)))
    }

    /// A hard stop (hang-up, transfer, guardrail): drops the audio not yet sent and returns
    /// its length in ms. Twilio still plays the lead already sent.
    pub fn drop_queued(&mut self) -> u64 {
        let ms = self.queued_ms();
        self.queue.clear();
        self.queued_bytes = 0;
        ms
    }

    fn sample(&mut self, lead_ms: u64) {
        let i = ((lead_ms / BUCKET_MS) as usize).min(BUCKETS - 1);
        self.lead_hist[i] += 1;
        self.samples += 1;
        self.max_seen_ms = self.max_seen_ms.max(lead_ms);
    }

    /// The lead right after each send, at quantile `q` (0..=1), to 5 ms (`None` before any
    /// send).
    pub fn lead_quantile(&self, q: f64) -> Option<u64> {
        if self.samples == 0 {
            return None;
        }
        let want = ((self.samples as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.lead_hist.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some((i as u64 + 1) * BUCKET_MS);
            }
        }
        Some(self.max_seen_ms)
    }

    /// The largest lead seen right after a send.
    pub fn max_lead_seen(&self) -> u64 {
        self.max_seen_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn b64(ms: u32) -> String {
        base64::engine::general_purpose::STANDARD.encode(vec![0xFFu8; ms as usize * 8])
    }

    /// A Twilio that plays at real time and echoes a mark per piece when it has played it,
    /// `echo_delay` later (the network); the model sends `chunk_ms` deltas `speed` times
    /// faster than real time. Returns the pacer after `total_ms` of model audio.
    fn run(speed: u32, chunk_ms: u32, total_ms: u32, echo_delay: u64, cfg: PacerConfig) -> Pacer {
        let t0 = Instant::now();
        let mut p = Pacer::new(cfg);
        let mut pushed = 0;
        let mut next_push = 0u64;
        // (play end in ms since t0, sent_ms after that piece)
        let mut playing: VecDeque<(u64, u64)> = VecDeque::new();
        let mut play_end = 0u64;
        for now_ms in 0..(total_ms as u64 * 3 + 2000) {
            let now = t0 + Duration::from_millis(now_ms);
            while pushed < total_ms && now_ms >= next_push {
                p.push(&b64(chunk_ms)).unwrap();
                pushed += chunk_ms;
                next_push += (chunk_ms / speed).max(1) as u64;
            }
            while playing
                .front()
                .is_some_and(|&(end, _)| end + echo_delay <= now_ms)
            {
                let (_, upto) = playing.pop_front().unwrap();
                p.on_heard(upto, now);
            }
            while let Some(piece) = p.poll(now) {
                let ms = mulaw::base64_decoded_len(&piece) as u64 / 8;
                play_end = play_end.max(now_ms) + ms;
                playing.push_back((play_end, p.sent_ms()));
                // What Twilio buffers ahead of its playout position, exactly.
                let buffered = play_end - now_ms;
                assert!(
                    buffered <= cfg.max_lead.as_millis() as u64 + cfg.piece_ms as u64 + 1,
                    "Twilio holds {buffered} ms at {now_ms} ms"
                );
            }
        }
        assert_eq!(
            p.sent_ms(),
            total_ms as u64,
            "every byte goes out, in order"
        );
        p
    }

    #[test]
    fn faster_than_real_time_is_paced_to_the_lead() {
        for speed in [2, 4, 10] {
            let p = run(speed, 200, 6000, 0, PacerConfig::default());
            assert!(p.max_lead_seen() <= 180, "{}", p.max_lead_seen());
            assert!(p.lead_quantile(0.5).unwrap() >= 100, "the lead is used");
        }
    }

    #[test]
    fn real_time_audio_passes_at_once() {
        let p = run(1, 20, 3000, 0, PacerConfig::default());
        // Each 20 ms delta goes out as it arrives: the lead is one piece.
        assert!(
            p.lead_quantile(0.99).unwrap() <= 25,
            "{:?}",
            p.lead_quantile(0.99)
        );
    }

    #[test]
    fn a_late_echo_costs_no_depth() {
        // Marks echo 150 ms after playback: the estimate carries on, the cap holds.
        let p = run(
            4,
            100,
            4000,
            150,
            PacerConfig::with_lead(Duration::from_millis(120)),
        );
        assert!(p.max_lead_seen() <= 140);
    }

    #[test]
    fn a_stalled_twilio_stops_the_pacer() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        p.push(&b64(2000)).unwrap();
        let mut t = t0;
        for _ in 0..200 {
            while p.poll(t).is_some() {}
            t += Duration::from_millis(10);
        }
        // No echo at all: at most max_unconfirmed went out.
        assert!(p.sent_ms() <= 400, "{}", p.sent_ms());
        assert_eq!(p.next_deadline(t), None, "only an echo can unblock it");
        p.on_heard(p.sent_ms(), t);
        assert!(p.poll(t).is_some());
    }

    #[test]
    fn a_hard_stop_leaves_only_the_lead_playing() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        p.push(&b64(3000)).unwrap();
        while p.poll(t0).is_some() {}
        let lead = p.lead_ms(t0);
        let dropped = p.drop_queued();
        assert_eq!(lead + dropped, 3000);
        assert!(lead <= 180);
        assert_eq!(p.poll(t0), None);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut p = Pacer::new(PacerConfig {
            max_queued: Duration::from_millis(100),
            ..PacerConfig::default()
        });
        p.push(&b64(100)).unwrap();
        assert!(matches!(p.push(&b64(20)), Err(PacerError::Full { .. })));
    }

    #[test]
    fn pieces_decode_on_their_own() {
        let mut p = Pacer::new(PacerConfig::default());
        let audio: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        p.push(&base64::engine::general_purpose::STANDARD.encode(&audio))
            .unwrap();
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut t = t0;
        while got.len() < audio.len() {
            while let Some(piece) = p.poll(t) {
                got.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(piece)
                        .unwrap(),
                );
            }
            p.on_heard(p.sent_ms(), t);
            t += Duration::from_millis(20);
        }
        assert_eq!(got, audio);
    }
}
