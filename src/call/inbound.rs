//! The caller-audio lane: what happens to each inbound Twilio `media` frame on its way to the
//! model, as a plain state machine.
//!
//! This is the one rule of the call that runs 50 times a second, so the threaded shell runs it
//! on the Twilio reader thread and writes the resulting `input_audio_buffer.append` straight to
//! the model socket: one thread wake-up per frame (DESIGN.md §2.6). It holds no decision that
//! needs the rest of the call, only:
//!
//! * **early buffering** — audio that arrives before the model session is ready is kept
//!   (bounded, 10 s by default) and sent in order once it is: the caller's first words are
//!   never dropped;
//! * **gap padding** — when Twilio's `timestamp` jumps, the gap is filled with µ-law silence
//!   so the model's clock and the caller's stay aligned. A gap gets at most
//!   [`InboundConfig::max_gap_fill`], minus any inactivity padding already sent for it, and
//!   never more than the wall time that passed without audio: the lane keeps a credit of wall
//!   time not yet covered by audio or padding (capped at `max_gap_fill`), so a peer that jumps
//!   its timestamp on every frame gets no silence for it, and over any stretch of wall time the
//!   gap padding is at most `max_gap_fill` plus that stretch. A timestamp that goes backwards
//!   (a peer whose clock restarted) restarts gap inference from it;
//! * **inactivity padding** — while the caller is speaking, if media stops for a while
//!   (750 ms by default) one second of silence is sent, once per stall, so the server's VAD can
//!   end the turn;
//! * counters.
//!
//! Payloads pass through as the base64 strings Twilio sent; sizes come from their length. No
//! arithmetic on a peer's timestamp or on a configured duration can overflow: timestamps up to
//! `u64::MAX` and options up to `Duration::MAX` are handled (padding of one kind is never more
//! than [`MAX_PADDING`] in one go).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::mulaw;

/// The most silence one gap or one inactivity stall ever gets, whatever the options say.
pub const MAX_PADDING: Duration = Duration::from_secs(60);

/// Settings of the caller-audio lane.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboundConfig {
    /// Most audio kept while the model is not ready (bytes of µ-law; 8 per ms). Default 10 s.
    pub max_buffered_bytes: usize,
    /// Longest timestamp gap filled with silence, and the most wall-time credit kept for gap
    /// padding (see the module docs). Default 10 s; at most [`MAX_PADDING`] is used.
    pub max_gap_fill: Duration,
    /// Gaps shorter than this are not padded (jitter). Default 20 ms (one frame).
    pub min_gap_fill: Duration,
    /// Media silence during caller speech after which padding is sent. Default 750 ms.
    pub inactivity_timeout: Duration,
    /// Silence sent after an inactivity timeout. Default 1 s; at most [`MAX_PADDING`] is used.
    pub inactivity_padding: Duration,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            max_buffered_bytes: 10 * 1000 * mulaw::BYTES_PER_MS,
            max_gap_fill: Duration::from_secs(10),
            min_gap_fill: Duration::from_millis(20),
            inactivity_timeout: Duration::from_millis(750),
            inactivity_padding: Duration::from_secs(1),
        }
    }
}

/// Counters of the caller-audio lane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundStats {
    /// Media frames received from Twilio.
    pub frames_in: u64,
    /// µ-law bytes received from Twilio.
    pub bytes_in: u64,
    /// Appends handed to the model (audio and padding).
    pub appends_out: u64,
    /// µ-law bytes handed to the model, padding included.
    pub bytes_out: u64,
    /// Bytes of silence added for timestamp gaps.
    pub gap_padding_bytes: u64,
    /// Bytes of silence added after caller inactivity.
    pub inactivity_padding_bytes: u64,
    /// Frames dropped because the early buffer was full (oldest first).
    pub frames_dropped: u64,
    /// Most bytes held while the model was not ready.
    pub max_buffered_bytes: u64,
    /// Timestamps that went backwards (gap inference restarted from them).
    pub timestamp_restarts: u64,
    /// Milliseconds of timestamp gaps left unpadded because they outran the wall clock (or
    /// were longer than [`InboundConfig::max_gap_fill`]).
    pub gap_unpadded_ms: u64,
}

/// The caller-audio lane state machine. See the module docs.
///
/// Outputs are handed to a sink closure that receives base64 µ-law to send as one
/// `input_audio_buffer.append` each, in order.
///
/// ```
/// use std::time::Instant;
/// use twilio_realtime::call::inbound::{InboundAudio, InboundConfig};
///
/// let mut lane = InboundAudio::new(InboundConfig::default());
/// let mut sent = Vec::new();
/// let t0 = Instant::now();
/// lane.on_media(t0, "//////8=", Some(0), &mut |b64: &str| sent.push(b64.to_owned()));
/// assert!(sent.is_empty(), "kept until the model is ready");
/// lane.set_ready(true, &mut |b64: &str| sent.push(b64.to_owned()));
/// assert_eq!(sent, ["//////8="]);
/// ```
#[derive(Debug)]
pub struct InboundAudio {
    cfg: InboundConfig,
    ready: bool,
    pending: VecDeque<String>,
    pending_bytes: usize,
    /// Twilio timestamp (ms) expected for the next frame.
    next_ts: Option<u64>,
    /// Timestamp of the last frame that carried one.
    last_ts: Option<u64>,
    last_media_at: Option<Instant>,
    /// Wall time not yet covered by audio or padding (the most silence a gap may get now).
    credit: Duration,
    /// When `credit` was last brought up to date.
    credit_at: Option<Instant>,
    caller_speaking: bool,
    /// The inactivity rule already padded this stall.
    stall_padded: bool,
    /// Inactivity padding sent since the last frame (the next gap is filled minus this).
    padded_since_media: Duration,
    /// A `start` was seen (later ones are ignored, as the call core ignores them).
    started: bool,
    /// The stream's audio must never reach the model.
    refused: bool,
    stats: InboundStats,
}

/// µ-law bytes in `d` (8 per ms), saturating.
fn duration_bytes(d: Duration) -> usize {
    usize::try_from(d.as_millis().saturating_mul(mulaw::BYTES_PER_MS as u128)).unwrap_or(usize::MAX)
}

/// How long `bytes` of µ-law last (125 µs each).
fn bytes_duration(bytes: usize) -> Duration {
    Duration::from_micros((bytes as u64).saturating_mul(125))
}

impl InboundAudio {
    /// A new lane; audio is buffered until [`InboundAudio::set_ready`] is called.
    pub fn new(cfg: InboundConfig) -> InboundAudio {
        InboundAudio {
            cfg,
            ready: false,
            pending: VecDeque::new(),
            pending_bytes: 0,
            next_ts: None,
            last_ts: None,
            last_media_at: None,
            credit: Duration::ZERO,
            credit_at: None,
            caller_speaking: false,
            stall_padded: false,
            padded_since_media: Duration::ZERO,
            started: false,
            refused: false,
            stats: InboundStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &InboundStats {
        &self.stats
    }

    /// True once the model session is ready to take audio.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Bytes currently held back waiting for the model.
    pub fn buffered_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Twilio's `start` for this stream arrived, announcing `format`. The first `start` only
    /// counts (the call core ignores later ones). A format other than µ-law 8 kHz mono
    /// refuses the stream's audio for good (see [`InboundAudio::refuse`]): the call core ends
    /// such a call, and not one byte of it may reach the model as `audio/pcmu` meanwhile.
    pub fn on_start(&mut self, format: &crate::proto::twilio::MediaFormat) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        if !format.is_mulaw_8k_mono() {
            self.refuse();
        }
    }

    /// Drops every frame kept and every frame from now on; the lane never sends again.
    pub fn refuse(&mut self) {
        self.refused = true;
        self.ready = false;
        let kept = self.pending.len() as u64;
        self.stats.frames_dropped = self.stats.frames_dropped.saturating_add(kept);
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Brings the wall-time credit up to `now`.
    fn accrue(&mut self, now: Instant) {
        if let Some(at) = self.credit_at {
            let cap = self.cfg.max_gap_fill.min(MAX_PADDING);
            self.credit = self
                .credit
                .saturating_add(now.saturating_duration_since(at))
                .min(cap);
        }
        if self.credit_at.is_none_or(|at| now > at) {
            self.credit_at = Some(now);
        }
    }

    /// One inbound `media` frame: `payload` is Twilio's base64 µ-law and `timestamp_ms` its
    /// `timestamp` (ms since the stream started), if it parsed.
    pub fn on_media(
        &mut self,
        now: Instant,
        payload: &str,
        timestamp_ms: Option<u64>,
        sink: &mut dyn FnMut(&str),
    ) {
        let bytes = mulaw::base64_decoded_len(payload);
        self.stats.frames_in = self.stats.frames_in.saturating_add(1);
        self.stats.bytes_in = self.stats.bytes_in.saturating_add(bytes as u64);
        if self.refused {
            self.stats.frames_dropped = self.stats.frames_dropped.saturating_add(1);
            return;
        }
        self.accrue(now);
        self.last_media_at = Some(now);
        self.stall_padded = false;
        let already_padded = std::mem::take(&mut self.padded_since_media);

        if let Some(ts) = timestamp_ms {
            let frame_ms = (bytes / mulaw::BYTES_PER_MS) as u64;
            let end = ts.saturating_add(frame_ms);
            match (self.last_ts, self.next_ts) {
                (Some(last), _) if ts < last => {
                    // The peer's clock went backwards: padding against the old maximum would
                    // miss every gap until it caught up. Start again from this frame.
                    self.stats.timestamp_restarts = self.stats.timestamp_restarts.saturating_add(1);
                    log::debug!("caller audio timestamp went backwards; gap inference restarted");
                    self.next_ts = Some(end);
                }
                (_, Some(expected)) => {
                    if ts > expected {
                        self.fill_gap(Duration::from_millis(ts - expected), already_padded, sink);
                    }
                    self.next_ts = Some(expected.max(end));
                }
                (_, None) => self.next_ts = Some(end),
            }
            self.last_ts = Some(ts);
        }
        self.credit = self.credit.saturating_sub(bytes_duration(bytes));
        if self.ready {
            self.sent(bytes);
            sink(payload);
        } else {
            self.keep(payload.to_owned(), bytes);
        }
    }

    /// Pads a timestamp gap: the gap less what the inactivity rule already sent for it, at
    /// most `max_gap_fill` and at most the wall-time credit.
    fn fill_gap(&mut self, gap: Duration, already_padded: Duration, sink: &mut dyn FnMut(&str)) {
        if gap < self.cfg.min_gap_fill {
            return;
        }
        let wanted = gap.saturating_sub(already_padded);
        let fill = wanted
            .min(self.cfg.max_gap_fill)
            .min(MAX_PADDING)
            .min(self.credit);
        let unpadded = wanted.saturating_sub(fill);
        if !unpadded.is_zero() {
            let ms = u64::try_from(unpadded.as_millis()).unwrap_or(u64::MAX);
            self.stats.gap_unpadded_ms = self.stats.gap_unpadded_ms.saturating_add(ms);
            log::debug!("caller audio gap of {gap:?}: {ms} ms left unpadded (wall-clock bound)");
        }
        let fill_bytes = duration_bytes(fill);
        if fill_bytes == 0 {
            return;
        }
        self.credit = self.credit.saturating_sub(bytes_duration(fill_bytes));
        self.stats.gap_padding_bytes = self
            .stats
            .gap_padding_bytes
            .saturating_add(fill_bytes as u64);
        self.emit_silence(fill_bytes, sink);
    }

    /// The model session became ready (`true`: flush what was kept, in order) or went away
    /// (`false`: keep audio again, e.g. while reconnecting).
    pub fn set_ready(&mut self, ready: bool, sink: &mut dyn FnMut(&str)) {
        self.ready = ready && !self.refused;
        if ready {
            while let Some(p) = self.pending.pop_front() {
                self.sent(mulaw::base64_decoded_len(&p));
                sink(&p);
            }
            self.pending_bytes = 0;
        }
    }

    /// The server's VAD says the caller started (`true`) or stopped (`false`) speaking.
    pub fn set_caller_speaking(&mut self, speaking: bool) {
        self.caller_speaking = speaking;
    }

    /// When [`InboundAudio::on_timeout`] should next be called, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.caller_speaking || self.stall_padded || self.refused {
            return None;
        }
        self.last_media_at?.checked_add(self.cfg.inactivity_timeout)
    }

    /// Checks the inactivity rule at `now`.
    pub fn on_timeout(&mut self, now: Instant, sink: &mut dyn FnMut(&str)) {
        match self.next_deadline() {
            Some(d) if now >= d => {
                self.stall_padded = true;
                self.accrue(now);
                let pad = self.cfg.inactivity_padding.min(MAX_PADDING);
                let n = duration_bytes(pad);
                self.padded_since_media = self.padded_since_media.saturating_add(pad);
                self.credit = self.credit.saturating_sub(pad);
                self.stats.inactivity_padding_bytes =
                    self.stats.inactivity_padding_bytes.saturating_add(n as u64);
                log::debug!("caller audio stopped mid-speech; padding {n} bytes of silence");
                self.emit_silence(n, sink);
            }
            _ => {}
        }
    }

    fn emit_silence(&mut self, mut n: usize, sink: &mut dyn FnMut(&str)) {
        // Chunks of at most 1 s keep each append small.
        const CHUNK: usize = 1000 * mulaw::BYTES_PER_MS;
        while n > 0 {
            let k = n.min(CHUNK);
            let b64 = mulaw::silence_base64(k);
            if self.ready {
                self.sent(k);
                sink(&b64);
            } else {
                self.keep(b64, k);
            }
            n -= k;
        }
    }

    fn sent(&mut self, bytes: usize) {
        self.stats.appends_out = self.stats.appends_out.saturating_add(1);
        self.stats.bytes_out = self.stats.bytes_out.saturating_add(bytes as u64);
    }

    fn keep(&mut self, b64: String, bytes: usize) {
        self.pending.push_back(b64);
        self.pending_bytes = self.pending_bytes.saturating_add(bytes);
        while self.pending_bytes > self.cfg.max_buffered_bytes {
            match self.pending.pop_front() {
                Some(old) => {
                    self.pending_bytes = self
                        .pending_bytes
                        .saturating_sub(mulaw::base64_decoded_len(&old));
                    self.stats.frames_dropped = self.stats.frames_dropped.saturating_add(1);
                }
                None => break,
            }
        }
        self.stats.max_buffered_bytes =
            self.stats.max_buffered_bytes.max(self.pending_bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn frame(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 160])
    }

    fn collect(out: &mut Vec<String>) -> impl FnMut(&str) + '_ {
        |s: &str| out.push(s.to_owned())
    }

    fn decoded(out: &[String]) -> Vec<u8> {
        out.iter()
            .flat_map(|s| base64::engine::general_purpose::STANDARD.decode(s).unwrap())
            .collect()
    }

    #[test]
    fn early_audio_is_kept_in_order() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        for i in 0..50u8 {
            lane.on_media(t0, &frame(i), Some(i as u64 * 20), &mut collect(&mut out));
        }
        assert!(out.is_empty());
        assert_eq!(lane.buffered_bytes(), 50 * 160);
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(50), Some(1000), &mut collect(&mut out));
        assert_eq!(out.len(), 51);
        let bytes = decoded(&out);
        for i in 0..51usize {
            assert!(bytes[i * 160..(i + 1) * 160].iter().all(|&b| b == i as u8));
        }
        assert_eq!(lane.stats().frames_dropped, 0);
        assert_eq!(lane.stats().bytes_out, 51 * 160);
    }

    #[test]
    fn early_buffer_is_bounded_dropping_oldest() {
        let t0 = Instant::now();
        let cfg = InboundConfig {
            max_buffered_bytes: 1600,
            ..Default::default()
        };
        let mut lane = InboundAudio::new(cfg);
        let mut out = vec![];
        for i in 0..15u8 {
            lane.on_media(t0, &frame(i), Some(i as u64 * 20), &mut collect(&mut out));
        }
        assert_eq!(lane.buffered_bytes(), 1600);
        assert_eq!(lane.stats().frames_dropped, 5);
        lane.set_ready(true, &mut collect(&mut out));
        assert_eq!(decoded(&out)[0], 5);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timestamp_gap_is_padded_with_silence() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(0), &mut collect(&mut out));
        lane.on_media(t0 + ms(20), &frame(2), Some(20), &mut collect(&mut out));
        // 100 ms of frames missing.
        lane.on_media(t0 + ms(140), &frame(3), Some(140), &mut collect(&mut out));
        let bytes = decoded(&out);
        assert_eq!(bytes.len(), 3 * 160 + 800);
        assert!(bytes[320..1120].iter().all(|&b| b == mulaw::SILENCE));
        assert!(bytes[1120..].iter().all(|&b| b == 3));
        assert_eq!(lane.stats().gap_padding_bytes, 800);
        // Jitter below one frame is not padded.
        lane.on_media(t0 + ms(170), &frame(4), Some(170), &mut collect(&mut out));
        assert_eq!(lane.stats().gap_padding_bytes, 800);
    }

    #[test]
    fn gap_fill_is_capped() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(0), &mut collect(&mut out));
        let later = t0 + Duration::from_secs(3600);
        lane.on_media(later, &frame(1), Some(3_600_000), &mut collect(&mut out));
        assert_eq!(lane.stats().gap_padding_bytes, 80_000);
        assert_eq!(
            out.len(),
            12,
            "10 one-second silence appends between two frames"
        );
    }

    /// Issue 16 item 1: a stall during caller speech was padded twice, once by the inactivity
    /// rule and again, in full, for the timestamp gap when media resumed.
    #[test]
    fn a_stall_is_padded_once_in_total() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(0), &mut collect(&mut out));
        lane.set_caller_speaking(true);
        lane.on_timeout(t0 + ms(750), &mut collect(&mut out));
        assert_eq!(lane.stats().inactivity_padding_bytes, 8000);
        // Media resumes 5 s later: the timestamp gap is 4980 ms, of which 1000 ms are padded.
        lane.on_media(t0 + ms(5000), &frame(2), Some(5000), &mut collect(&mut out));
        let s = lane.stats();
        assert_eq!(s.gap_padding_bytes, 3980 * 8);
        assert_eq!(
            s.gap_padding_bytes + s.inactivity_padding_bytes,
            4980 * 8,
            "the model gets exactly the gap in silence"
        );
        let bytes = decoded(&out);
        assert_eq!(bytes.len(), 160 + 4980 * 8 + 160);
        assert!(bytes[160..160 + 4980 * 8]
            .iter()
            .all(|&b| b == mulaw::SILENCE));
        assert_eq!(&bytes[bytes.len() - 160..], &[2u8; 160][..]);
    }

    /// Issue 16 item 3: after the peer's clock restarts, gaps are found against the new clock.
    #[test]
    fn backwards_timestamps_restart_gap_inference() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(60_000), &mut collect(&mut out));
        lane.on_media(t0 + ms(20), &frame(1), Some(0), &mut collect(&mut out));
        lane.on_media(t0 + ms(40), &frame(1), Some(20), &mut collect(&mut out));
        assert_eq!(lane.stats().timestamp_restarts, 1);
        assert_eq!(lane.stats().gap_padding_bytes, 0, "a restart is not a gap");
        // One second missing on the new clock.
        lane.on_media(t0 + ms(1040), &frame(1), Some(1040), &mut collect(&mut out));
        assert_eq!(lane.stats().gap_padding_bytes, 1000 * 8);
    }

    /// Issue 10 §6: a peer that jumps its timestamp by 10 s on every frame must not make the
    /// lane append 80 KB of silence per frame: gap padding follows the wall clock.
    #[test]
    fn gap_padding_is_bounded_by_wall_time() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.set_ready(true, &mut collect(&mut out));
        for i in 0..500u64 {
            lane.on_media(
                t0 + ms(i * 20),
                &frame(1),
                Some(i * 10_000),
                &mut collect(&mut out),
            );
        }
        let wall_ms = 499 * 20;
        let s = lane.stats();
        assert!(
            s.gap_padding_bytes <= wall_ms * 8,
            "{} bytes of gap padding in {wall_ms} ms of wall time",
            s.gap_padding_bytes
        );
        assert!(s.gap_unpadded_ms > 4_000_000, "{s:?}");
        // A real stall is still padded in full afterwards.
        let before = s.gap_padding_bytes;
        let last_ts = 499 * 10_000 + 20;
        lane.on_media(
            t0 + ms(wall_ms + 3020),
            &frame(1),
            Some(last_ts + 3000),
            &mut collect(&mut out),
        );
        assert_eq!(lane.stats().gap_padding_bytes - before, 3000 * 8);
    }

    /// Issue 16 item 4: a stream whose first `start` announces another format never sends a
    /// byte to the model, kept audio included; a later `start` changes nothing.
    #[test]
    fn a_stream_in_another_format_is_refused() {
        use crate::proto::twilio::MediaFormat;
        let t0 = Instant::now();
        let l16 = MediaFormat {
            encoding: "audio/l16".into(),
            sample_rate: 16000,
            channels: 1,
        };
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.on_media(t0, &frame(1), Some(0), &mut collect(&mut out));
        lane.on_start(&l16);
        lane.on_start(&MediaFormat::default());
        lane.set_caller_speaking(true);
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0 + ms(20), &frame(2), Some(20), &mut collect(&mut out));
        lane.on_media(t0 + ms(2000), &frame(3), Some(2000), &mut collect(&mut out));
        assert_eq!(lane.next_deadline(), None);
        lane.on_timeout(t0 + ms(5000), &mut collect(&mut out));
        assert!(out.is_empty(), "{} appends", out.len());
        assert_eq!(lane.stats().frames_dropped, 3);
        assert!(!lane.is_ready());

        // µ-law 8 kHz mono (however the encoding is capitalised) goes through.
        let mut lane = InboundAudio::new(InboundConfig::default());
        lane.on_start(&MediaFormat {
            encoding: "audio/X-MULAW".into(),
            ..MediaFormat::default()
        });
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(0), &mut collect(&mut out));
        assert_eq!(out.len(), 1);
    }

    /// Issue 10 §8: timestamps at the ends of `u64`, and options at `Duration::MAX`, never
    /// panic (debug builds check overflow) and never allocate without bound.
    #[test]
    fn extreme_timestamps_and_options_never_panic() {
        let t0 = Instant::now();
        for cfg in [
            InboundConfig::default(),
            InboundConfig {
                max_buffered_bytes: usize::MAX,
                max_gap_fill: Duration::MAX,
                min_gap_fill: Duration::ZERO,
                inactivity_timeout: Duration::MAX,
                inactivity_padding: Duration::MAX,
            },
            InboundConfig {
                max_buffered_bytes: 0,
                max_gap_fill: Duration::MAX,
                min_gap_fill: Duration::MAX,
                inactivity_timeout: Duration::ZERO,
                inactivity_padding: Duration::MAX,
            },
        ] {
            let mut lane = InboundAudio::new(cfg);
            let mut out = vec![];
            lane.set_caller_speaking(true);
            let ts = [u64::MAX, u64::MAX - 1, 0, u64::MAX, 1 << 63, u64::MAX - 10];
            for (i, t) in ts.into_iter().enumerate() {
                let now = t0 + Duration::from_secs(i as u64 * 100);
                lane.on_media(now, &frame(1), Some(t), &mut collect(&mut out));
                if let Some(d) = lane.next_deadline() {
                    lane.on_timeout(d, &mut collect(&mut out));
                }
                lane.on_timeout(now + Duration::from_secs(50), &mut collect(&mut out));
            }
            lane.set_ready(true, &mut collect(&mut out));
            let s = lane.stats();
            assert!(
                s.gap_padding_bytes <= duration_bytes(MAX_PADDING) as u64 * 6,
                "{s:?}"
            );
            assert!(
                s.inactivity_padding_bytes <= duration_bytes(MAX_PADDING) as u64 * 6,
                "{s:?}"
            );
        }
    }

    #[test]
    fn inactivity_during_speech_sends_one_second_once() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(0), &mut collect(&mut out));
        assert_eq!(lane.next_deadline(), None, "not speaking: no timer");
        lane.set_caller_speaking(true);
        let d = lane.next_deadline().unwrap();
        assert_eq!(d, t0 + Duration::from_millis(750));
        lane.on_timeout(t0 + Duration::from_millis(700), &mut collect(&mut out));
        assert_eq!(out.len(), 1);
        lane.on_timeout(d, &mut collect(&mut out));
        assert_eq!(decoded(&out[1..]).len(), 8000);
        assert_eq!(lane.next_deadline(), None, "once per stall");
        lane.on_timeout(d + Duration::from_secs(5), &mut collect(&mut out));
        assert_eq!(out.len(), 2);
        // Media resumes: the timer re-arms.
        lane.on_media(
            d + Duration::from_secs(6),
            &frame(1),
            Some(40),
            &mut collect(&mut out),
        );
        assert!(lane.next_deadline().is_some());
        lane.set_caller_speaking(false);
        assert!(lane.next_deadline().is_none());
    }
}
