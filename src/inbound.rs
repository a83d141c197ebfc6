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
//!   (capped) so the model's clock and the caller's stay aligned;
//! * **inactivity padding** — while the caller is speaking, if media stops for a while
//!   (750 ms by default) one second of silence is sent so the server's VAD can end the turn;
//! * counters.
//!
//! Payloads pass through as the base64 strings Twilio sent; sizes come from their length.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::mulaw;

/// Settings of the caller-audio lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConfig {
    /// Most audio kept while the model is not ready (bytes of µ-law; 8 per ms). Default 10 s.
    pub max_buffered_bytes: usize,
    /// Longest timestamp gap filled with silence. Default 10 s.
    pub max_gap_fill: Duration,
    /// Gaps shorter than this are not padded (jitter). Default 20 ms (one frame).
    pub min_gap_fill: Duration,
    /// Media silence during caller speech after which padding is sent. Default 750 ms.
    pub inactivity_timeout: Duration,
    /// Silence sent after an inactivity timeout. Default 1 s.
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
}

/// The caller-audio lane state machine. See the module docs.
///
/// Outputs are handed to a sink closure that receives base64 µ-law to send as one
/// `input_audio_buffer.append` each, in order.
///
/// ```
/// use std::time::Instant;
/// use twilio_realtime::inbound::{InboundAudio, InboundConfig};
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
    last_media_at: Option<Instant>,
    caller_speaking: bool,
    padded_since_media: bool,
    stats: InboundStats,
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
            last_media_at: None,
            caller_speaking: false,
            padded_since_media: false,
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
        self.stats.frames_in += 1;
        self.stats.bytes_in += bytes as u64;
        self.last_media_at = Some(now);
        self.padded_since_media = false;

        if let Some(ts) = timestamp_ms {
            if let Some(expected) = self.next_ts {
                if ts > expected {
                    let gap = Duration::from_millis(ts - expected);
                    if gap >= self.cfg.min_gap_fill {
                        let fill = gap.min(self.cfg.max_gap_fill);
                        let fill_bytes = fill.as_millis() as usize * mulaw::BYTES_PER_MS;
                        self.stats.gap_padding_bytes += fill_bytes as u64;
                        self.emit_silence(fill_bytes, sink);
                    }
                }
            }
            let frame_ms = (bytes / mulaw::BYTES_PER_MS) as u64;
            let end = ts + frame_ms;
            self.next_ts = Some(self.next_ts.map_or(end, |n| n.max(end)));
        }
        self.emit(payload.to_owned(), bytes, sink);
    }

    /// The model session became ready (`true`: flush what was kept, in order) or went away
    /// (`false`: keep audio again, e.g. while reconnecting).
    pub fn set_ready(&mut self, ready: bool, sink: &mut dyn FnMut(&str)) {
        self.ready = ready;
        if ready {
            while let Some(p) = self.pending.pop_front() {
                self.stats.appends_out += 1;
                self.stats.bytes_out += mulaw::base64_decoded_len(&p) as u64;
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
        if !self.caller_speaking || self.padded_since_media {
            return None;
        }
        self.last_media_at.map(|t| t + self.cfg.inactivity_timeout)
    }

    /// Checks the inactivity rule at `now`.
    pub fn on_timeout(&mut self, now: Instant, sink: &mut dyn FnMut(&str)) {
        match self.next_deadline() {
            Some(d) if now >= d => {
                self.padded_since_media = true;
                let n = self.cfg.inactivity_padding.as_millis() as usize * mulaw::BYTES_PER_MS;
                self.stats.inactivity_padding_bytes += n as u64;
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
            self.emit(mulaw::silence_base64(k), k, sink);
            n -= k;
        }
    }

    fn emit(&mut self, b64: String, bytes: usize, sink: &mut dyn FnMut(&str)) {
        if self.ready {
            self.stats.appends_out += 1;
            self.stats.bytes_out += bytes as u64;
            sink(&b64);
            return;
        }
        self.pending.push_back(b64);
        self.pending_bytes += bytes;
        while self.pending_bytes > self.cfg.max_buffered_bytes {
            match self.pending.pop_front() {
                Some(old) => {
                    self.pending_bytes -= mulaw::base64_decoded_len(&old);
                    self.stats.frames_dropped += 1;
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

    #[test]
    fn timestamp_gap_is_padded_with_silence() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(0), &mut collect(&mut out));
        lane.on_media(t0, &frame(2), Some(20), &mut collect(&mut out));
        // 100 ms of frames missing.
        lane.on_media(t0, &frame(3), Some(140), &mut collect(&mut out));
        let bytes = decoded(&out);
        assert_eq!(bytes.len(), 3 * 160 + 800);
        assert!(bytes[320..1120].iter().all(|&b| b == mulaw::SILENCE));
        assert!(bytes[1120..].iter().all(|&b| b == 3));
        assert_eq!(lane.stats().gap_padding_bytes, 800);
        // Jitter below one frame and reordering are not padded.
        lane.on_media(t0, &frame(4), Some(170), &mut collect(&mut out));
        lane.on_media(t0, &frame(5), Some(100), &mut collect(&mut out));
        assert_eq!(lane.stats().gap_padding_bytes, 800);
    }

    #[test]
    fn gap_fill_is_capped() {
        let t0 = Instant::now();
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut out = vec![];
        lane.set_ready(true, &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(0), &mut collect(&mut out));
        lane.on_media(t0, &frame(1), Some(3_600_000), &mut collect(&mut out));
        assert_eq!(lane.stats().gap_padding_bytes, 80_000);
        assert_eq!(
            out.len(),
            12,
            "10 one-second silence appends between two frames"
        );
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
