//! A Twilio call simulator: connects to a bridge's `/media-stream` like Twilio does, plays a
//! caller script in real time, plays the agent's audio out at 8 bytes per millisecond, echoes
//! marks when playback reaches them, obeys `clear`, models network delay both ways, and
//! records the ground truth of what the caller heard.
//!
//! Playout is modelled exactly, not by ticks: a media chunk that arrives at `a` plays from
//! `max(a, end of the previous chunk)` for `bytes / 8` ms; a mark is echoed when playback
//! reaches it (at once if nothing is buffered); a `clear` cuts the playing chunk at the moment
//! it arrives, drops the rest and echoes every pending mark.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use crossbeam_channel::RecvTimeoutError;
use tungstenite::Message;

use crate::call::playback::MarkName;
use crate::io::ws::{ClientRequest, Incoming, WsConfig, WsConn, WsError};
use crate::proto::mulaw;
use crate::proto::twilio::{
    Connected, Dtmf, DtmfInfo, Mark, MarkInfo, Media, MediaFormat, MediaInfo, Start, StartInfo,
    Stop, StopInfo, TwilioCommand, TwilioMessage,
};

/// One step of the caller's script.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Segment {
    /// Silence for this many ms.
    Silence(u32),
    /// Speech-like audio (loud enough for a VAD) for this many ms.
    Speech(u32),
    /// A sine tone.
    Tone {
        /// Duration.
        ms: u32,
        /// Frequency.
        freq_hz: f32,
    },
    /// These µ-law bytes (e.g. read from a WAV file with [`crate::sim::wav::read`]).
    Audio(Vec<u8>),
    /// Press a key.
    Dtmf(char),
    /// Silence until the agent has spoken and finished (nothing played for `quiet_ms`), or
    /// `timeout_ms` passed.
    WaitForAgent {
        /// Quiet time that counts as "finished".
        quiet_ms: u32,
        /// Give up after this long.
        timeout_ms: u32,
    },
    /// Silence until agent audio has been playing for `after_ms`, then speech for `speech_ms`
    /// (a barge-in).
    BargeIn {
        /// How far into the agent's audio to interrupt.
        after_ms: u32,
        /// How long the caller speaks.
        speech_ms: u32,
        /// Give up waiting for agent audio after this long.
        timeout_ms: u32,
    },
    /// Send nothing for this many ms (the timestamps jump): no media and no mark echoes (a
    /// network outage: what Twilio has to send meanwhile goes out when it ends, in order).
    Gap(u32),
    /// Send `stop` and close.
    HangUp,
}

/// Settings of a simulated call.
#[derive(Debug, Clone)]
pub struct TwilioCallConfig {
    /// The bridge's address.
    pub addr: SocketAddr,
    /// The WebSocket path. Default `/media-stream`.
    pub path: String,
    /// Extra upgrade headers (e.g. `X-Twilio-Signature`).
    pub headers: Vec<(String, String)>,
    /// `<Parameter>`s of the TwiML, sent in `start.customParameters`.
    pub custom_parameters: BTreeMap<String, String>,
    /// The CallSid to present in `start` (e.g. the one a webhook was called with). Default: a
    /// random, realistic one.
    pub call_sid: Option<String>,
    /// The AccountSid to present in `start`. Default: a random, realistic one.
    pub account_sid: Option<String>,
    /// The caller's script.
    pub script: Vec<Segment>,
    /// One-way network delay between the bridge and Twilio (both directions).
    pub one_way_delay: Duration,
    /// Extra random delay per message, uniform from zero to this much, drawn for each message
    /// independently; a message never overtakes the one sent before it in the same direction
    /// (one TCP connection each way).
    pub jitter: Duration,
    /// Seed of the jitter.
    pub seed: u64,
    /// End the call after this long at the latest.
    pub max_duration: Duration,
    /// After the script ends, keep listening this long if the bridge does not close.
    pub linger: Duration,
    /// Keep the agent's and the caller's audio for WAV files.
    pub keep_audio: bool,
}

impl TwilioCallConfig {
    /// A call to `addr` with the given script, 30 ms each way, 5 ms jitter.
    pub fn new(addr: SocketAddr, script: Vec<Segment>) -> TwilioCallConfig {
        let mut custom = BTreeMap::new();
        custom.insert("caller".to_owned(), "+15550100".to_owned());
        TwilioCallConfig {
            addr,
            path: "/media-stream".into(),
            headers: Vec::new(),
            custom_parameters: custom,
            call_sid: None,
            account_sid: None,
            script,
            one_way_delay: Duration::from_millis(30),
            jitter: Duration::from_millis(5),
            seed: 1,
            max_duration: Duration::from_secs(60),
            linger: Duration::from_millis(500),
            keep_audio: true,
        }
    }
}

/// Errors of the simulator.
#[derive(Debug)]
#[non_exhaustive]
pub enum SimError {
    /// The bridge refused or failed the connection.
    Connect(WsError),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::Connect(e) => write!(f, "could not connect to the bridge: {e}"),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SimError::Connect(e) => Some(e),
        }
    }
}

/// One media chunk the bridge sent, as Twilio played it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// µ-law bytes.
    pub bytes: u64,
    /// When it arrived at "Twilio".
    pub arrival: Duration,
    /// When it started playing.
    pub start: Duration,
    /// When it would finish playing.
    pub end: Duration,
    /// Bytes actually played (less than `bytes` if a clear cut it).
    pub played: u64,
    /// The first mark the bridge sent after it (names the item, for this crate's bridge).
    pub mark: Option<String>,
    /// Not digital silence: the caller hears a voice (a model that streams silence between
    /// its words, like GPT-Live, sends chunks that are all µ-law zero).
    pub audible: bool,
}

/// A `clear` as Twilio applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearRecord {
    /// When it took effect.
    pub at: Duration,
    /// Bytes that were buffered and never played.
    pub dropped_bytes: u64,
    /// Marks echoed because of it.
    pub marks_flushed: usize,
}

/// What happened on the call, from Twilio's side.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    /// The stream id used.
    pub stream_sid: String,
    /// The call id used.
    pub call_sid: String,
    /// Media chunks received, in order.
    pub chunks: Vec<ChunkRecord>,
    /// Clears received.
    pub clears: Vec<ClearRecord>,
    /// Marks received.
    pub marks_received: usize,
    /// Marks echoed.
    pub marks_echoed: usize,
    /// Caller media frames sent.
    pub frames_sent: u64,
    /// Frames from the bridge that broke Twilio's rules.
    pub violations: Vec<String>,
    /// A readable timeline: (time since connect, what).
    pub timeline: Vec<(Duration, String)>,
    /// The agent's audio as the caller heard it, aligned to the call's clock (µ-law).
    pub agent_audio: Vec<u8>,
    /// The caller's audio as sent (µ-law).
    pub caller_audio: Vec<u8>,
    /// The bridge closed the stream (rather than the caller hanging up).
    pub closed_by_bridge: bool,
    /// How long the call lasted.
    pub duration: Duration,
    /// When the stream's `connected` and `start` were sent: the origin of
    /// [`CallReport::timeline`] and of each chunk's arrival.
    pub began: Option<Instant>,
}

impl CallReport {
    /// Milliseconds of each item's audio the caller actually heard, attributed by the item id
    /// in the mark that followed each chunk.
    pub fn heard_ms_by_item(&self) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for c in &self.chunks {
            let Some(name) = &c.mark else { continue };
            let item = match MarkName::parse(name) {
                Some(MarkName::Chunk { item_id, .. }) | Some(MarkName::Done { item_id, .. }) => {
                    item_id.to_owned()
                }
                _ => continue,
            };
            *m.entry(item).or_default() += c.played;
        }
        m.values_mut()
            .for_each(|v| *v /= mulaw::BYTES_PER_MS as u64);
        m
    }

    /// Total agent audio played, in ms.
    pub fn played_ms(&self) -> u64 {
        self.chunks.iter().map(|c| c.played).sum::<u64>() / mulaw::BYTES_PER_MS as u64
    }

    /// Writes `agent.wav` and `caller.wav` (8 kHz 16-bit PCM) into `dir`.
    pub fn write_wavs(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let a = dir.join("agent.wav");
        let c = dir.join("caller.wav");
        super::wav::write(&a, &self.agent_audio)?;
        super::wav::write(&c, &self.caller_audio)?;
        Ok((a, c))
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, max: Duration) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if max.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_micros((self.0 >> 33) % (max.as_micros() as u64 + 1))
    }
}

/// When a message sent at `sent` arrives at the other end of one direction of the simulated
/// network.
///
/// Every message draws its own delay, `one_way_delay + U[0, jitter]`, independently of the
/// others. Each direction is one TCP connection (Twilio's media stream is one WebSocket, RFC
/// 6455), and TCP hands the receiver the bytes in the order they were sent (RFC 9293): a
/// message that drew a shorter delay than the one sent before it still waits for that one
/// (head-of-line blocking). So it arrives at the later of its own time and the previous
/// message's arrival, `last`, which this updates.
fn deliver(sent: Instant, cfg: &TwilioCallConfig, rng: &mut Rng, last: &mut Instant) -> Instant {
    let t = (sent + cfg.one_way_delay + rng.below(cfg.jitter)).max(*last);
    *last = t;
    t
}

/// Runs simulated calls: [`TwilioCall::run`] dials the bridge like Twilio Media Streams,
/// plays the caller's script in real time and returns a [`CallReport`] with the ground
/// truth (what was played when, marks, clears, protocol violations).
///
/// A caller who interrupts a long answer over a network with 40 ms of delay each way:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use twilio_realtime::agent::Agent;
/// use twilio_realtime::server::{Server, ServerConfig};
/// use twilio_realtime::sim::fake_model::{FakeModel, FakeModelConfig, Reply};
/// use twilio_realtime::sim::twilio_call::{Segment, TwilioCall, TwilioCallConfig};
///
/// let model = FakeModel::start(FakeModelConfig {
///     script: vec![Reply::say("Let me tell you everything about our opening hours.", 6000)],
///     ..Default::default()
/// })?;
/// let mut cfg = ServerConfig::new();
/// cfg.bind = "127.0.0.1:0".parse()?;
/// cfg.session = cfg.session.url(model.url());
/// let server = Server::bind(cfg, Arc::new(|| Agent::new("Assistant", "Be thorough.")))?;
/// let (addr, stopper) = (server.local_addr(), server.stopper());
/// let running = std::thread::spawn(move || server.run());
///
/// let mut call = TwilioCallConfig::new(addr, vec![
///     Segment::Speech(600),
///     Segment::Silence(1500), // the answer starts playing
///     Segment::Speech(600),   // the caller talks over it
///     Segment::WaitForAgent { quiet_ms: 300, timeout_ms: 10_000 },
///     Segment::HangUp,
/// ]);
/// call.one_way_delay = Duration::from_millis(40);
/// let report = TwilioCall::run(call)?;
/// stopper.stop();
/// running.join().unwrap()?;
///
/// assert!(report.violations.is_empty(), "{:?}", report.violations);
/// assert_eq!(report.clears.len(), 1, "the bridge cleared Twilio's buffer on the barge-in");
/// assert!(report.played_ms() < 6000, "the caller did not hear the whole answer");
/// for (at, what) in &report.timeline {
///     println!("{:>6} ms  {what}", at.as_millis());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TwilioCall;

fn sid(prefix: &str, rng: &mut Rng) -> String {
    let mut s = String::from(prefix);
    for _ in 0..32 {
        let d = (rng.below(Duration::from_micros(15)).as_micros()) as u32;
        s.push(char::from_digit(d, 16).unwrap_or('0'));
    }
    s
}

struct Playout {
    t0: Instant,
    end: Instant,
    chunks: Vec<ChunkRecord>,
    unmarked_from: usize,
    /// (echo time, name) of marks waiting for playback.
    pending_marks: VecDeque<(Instant, String)>,
    agent_run_started: Option<Instant>,
    payloads: Vec<(Instant, Vec<u8>)>,
    /// When the last audible chunk finishes playing, and when its run of audible audio
    /// started (what `WaitForAgent` and `BargeIn` listen for: silence is not the agent).
    voice_end: Instant,
    voice_run_started: Option<Instant>,
}

impl TwilioCall {
    /// Runs one call to completion (blocking) and reports what happened.
    pub fn run(cfg: TwilioCallConfig) -> Result<CallReport, SimError> {
        let mut rng = Rng(cfg.seed.wrapping_mul(2654435761).wrapping_add(7));
        let mut req = ClientRequest::new(format!("ws://{}{}", cfg.addr, cfg.path));
        for (k, v) in &cfg.headers {
            req = req.header(k.clone(), v.clone());
        }
        let conn = WsConn::connect(&req, &WsConfig::default()).map_err(SimError::Connect)?;
        let (duplex, rx) = conn
            .spawn_channel("twilio-sim")
            .map_err(SimError::Connect)?;
        let out = duplex.sender();
        let t0 = Instant::now();
        let at = |t: Instant| t.saturating_duration_since(t0);
        let stream_sid = sid("MZ", &mut rng);
        let call_sid = cfg.call_sid.clone().unwrap_or_else(|| sid("CA", &mut rng));
        let account_sid = cfg
            .account_sid
            .clone()
            .unwrap_or_else(|| sid("AC", &mut rng));
        let mut report = CallReport {
            stream_sid: stream_sid.clone(),
            call_sid: call_sid.clone(),
            began: Some(t0),
            ..Default::default()
        };

        // Outbound (to the bridge) and inbound (from the bridge) delay lines, order kept.
        let mut outq: VecDeque<(Instant, String)> = VecDeque::new();
        let mut last_out = t0;
        let mut inq: VecDeque<(Instant, String)> = VecDeque::new();
        let mut last_in = t0;
        let mut seq = 0u64;
        let mut next_seq = || {
            seq += 1;
            Some(seq.to_string())
        };
        macro_rules! push_out {
            ($msg:expr) => {{
                let now = Instant::now();
                let t = deliver(now, &cfg, &mut rng, &mut last_out);
                outq.push_back((t, $msg.to_json()));
            }};
        }
        push_out!(TwilioMessage::Connected(Connected {
            protocol: Some("Call".into()),
            version: Some("1.0.0".into()),
        }));
        push_out!(TwilioMessage::Start(Start {
            sequence_number: next_seq(),
            stream_sid: stream_sid.clone(),
            start: StartInfo {
                stream_sid: Some(stream_sid.clone()),
                account_sid: account_sid.clone(),
                call_sid: call_sid.clone(),
                tracks: vec!["inbound".into()],
                custom_parameters: cfg.custom_parameters.clone(),
                media_format: MediaFormat::default(),
            },
        }));

        let mut play = Playout {
            t0,
            end: t0,
            chunks: Vec::new(),
            unmarked_from: 0,
            pending_marks: VecDeque::new(),
            agent_run_started: None,
            payloads: Vec::new(),
            voice_end: t0,
            voice_run_started: None,
        };
        let mut script: VecDeque<Segment> = cfg.script.iter().cloned().collect();
        let mut current: VecDeque<u8> = VecDeque::new(); // audio of the current segment
        let mut seg_started = t0;
        let mut waiting: Option<Segment> = None;
        let mut speaking = false;
        let mut next_frame = t0;
        let mut media_ts: u64 = 0;
        let mut chunk_no = 0u64;
        let mut hung_up = false;
        let mut script_done_at: Option<Instant> = None;
        let mut bridge_closed = false;
        // During a `Gap`, nothing goes out until this instant.
        let mut gap_until = t0;
        let deadline = t0 + cfg.max_duration;

        loop {
            let now = Instant::now();
            // 1. deliver what the bridge sent, after the network delay
            while let Some((t, _)) = inq.front() {
                if *t > now {
                    break;
                }
                let Some((t, text)) = inq.pop_front() else {
                    break;
                };
                Self::on_bridge(
                    &cfg,
                    &mut report,
                    &mut play,
                    t,
                    &text,
                    &stream_sid,
                    &mut outq,
                    &mut last_out,
                    &mut rng,
                );
            }
            // 2. marks whose playback point has passed
            while play.pending_marks.front().is_some_and(|(t, _)| *t <= now) {
                let Some((t, name)) = play.pending_marks.pop_front() else {
                    break;
                };
                report.marks_echoed += 1;
                let m = TwilioMessage::Mark(Mark {
                    sequence_number: Some(report.marks_echoed.to_string()),
                    stream_sid: Some(stream_sid.clone()),
                    mark: MarkInfo { name },
                });
                let ts = deliver(t, &cfg, &mut rng, &mut last_out);
                outq.push_back((ts, m.to_json()));
            }
            if play.agent_run_started.is_some() && play.end <= now && play.pending_marks.is_empty()
            {
                if let Some(s) = play.agent_run_started.take() {
                    report.timeline.push((
                        at(play.end),
                        format!(
                            "agent audio stopped ({} ms played)",
                            (play.end - s).as_millis()
                        ),
                    ));
                }
            }
            // 3. the caller: one 20 ms frame when due
            if !hung_up && now >= next_frame {
                let mut frame: Option<Vec<u8>> = None;
                let mut gap = false;
                loop {
                    if !current.is_empty() {
                        let n = current.len().min(160);
                        let mut f: Vec<u8> = current.drain(..n).collect();
                        f.resize(160, mulaw::SILENCE);
                        frame = Some(f);
                        break;
                    }
                    if let Some(w) = &waiting {
                        match w {
                            Segment::WaitForAgent {
                                quiet_ms,
                                timeout_ms,
                            } => {
                                let heard_some = play
                                    .chunks
                                    .iter()
                                    .any(|c| c.audible && c.arrival >= at(seg_started));
                                // Quiet: no voice for `quiet_ms`, and every mark sent with
                                // the voice echoed.
                                let quiet =
                                    play.voice_end + Duration::from_millis(*quiet_ms as u64) <= now
                                        && play
                                            .pending_marks
                                            .front()
                                            .is_none_or(|(t, _)| *t > play.voice_end);
                                if (heard_some && quiet)
                                    || now
                                        >= seg_started + Duration::from_millis(*timeout_ms as u64)
                                {
                                    waiting = None;
                                    continue;
                                }
                            }
                            Segment::BargeIn {
                                after_ms,
                                speech_ms,
                                timeout_ms,
                            } => {
                                let playing_for = play
                                    .voice_run_started
                                    .filter(|s| *s >= seg_started || play.voice_end > now)
                                    .map(|s| now.saturating_duration_since(s));
                                let timed_out =
                                    now >= seg_started + Duration::from_millis(*timeout_ms as u64);
                                if playing_for
                                    .is_some_and(|d| d >= Duration::from_millis(*after_ms as u64))
                                    || timed_out
                                {
                                    report.timeline.push((
                                        at(now),
                                        format!("caller barges in ({speech_ms} ms)"),
                                    ));
                                    current.extend(super::fake_model::voice(*speech_ms, 7));
                                    speaking = true;
                                    waiting = None;
                                    continue;
                                }
                            }
                            _ => {}
                        }
                        frame = Some(vec![mulaw::SILENCE; 160]);
                        break;
                    }
                    if speaking {
                        speaking = false;
                        report
                            .timeline
                            .push((at(now), "caller stops speaking".into()));
                    }
                    let Some(seg) = script.pop_front() else {
                        if script_done_at.is_none() {
                            script_done_at = Some(now);
                        }
                        frame = Some(vec![mulaw::SILENCE; 160]);
                        break;
                    };
                    seg_started = now;
                    match seg {
                        Segment::Silence(ms) => current.extend(mulaw::silence(ms as usize * 8)),
                        Segment::Speech(ms) => {
                            report
                                .timeline
                                .push((at(now), format!("caller speaks ({ms} ms)")));
                            speaking = true;
                            current.extend(super::fake_model::voice(ms, 3));
                        }
                        Segment::Tone { ms, freq_hz } => {
                            current.extend(mulaw::tone(freq_hz, ms, 8000))
                        }
                        Segment::Audio(bytes) => {
                            report
                                .timeline
                                .push((at(now), format!("caller audio ({} ms)", bytes.len() / 8)));
                            speaking = true;
                            current.extend(bytes);
                        }
                        Segment::Dtmf(d) => {
                            report
                                .timeline
                                .push((at(now), format!("caller presses {d}")));
                            push_out!(TwilioMessage::Dtmf(Dtmf {
                                sequence_number: next_seq(),
                                stream_sid: Some(stream_sid.clone()),
                                dtmf: DtmfInfo {
                                    track: Some("inbound_track".into()),
                                    digit: d.to_string(),
                                },
                            }));
                        }
                        w @ (Segment::WaitForAgent { .. } | Segment::BargeIn { .. }) => {
                            waiting = Some(w)
                        }
                        Segment::Gap(ms) => {
                            report
                                .timeline
                                .push((at(now), format!("network gap ({ms} ms)")));
                            media_ts += ms as u64;
                            next_frame += Duration::from_millis(ms as u64);
                            gap_until = gap_until.max(next_frame);
                            gap = true;
                            break;
                        }
                        Segment::HangUp => {
                            report.timeline.push((at(now), "caller hangs up".into()));
                            push_out!(TwilioMessage::Stop(Stop {
                                sequence_number: next_seq(),
                                stream_sid: Some(stream_sid.clone()),
                                stop: StopInfo {
                                    account_sid: Some(account_sid.clone()),
                                    call_sid: Some(call_sid.clone()),
                                },
                            }));
                            hung_up = true;
                            break;
                        }
                    }
                }
                if let Some(f) = frame {
                    chunk_no += 1;
                    if cfg.keep_audio {
                        report.caller_audio.extend_from_slice(&f);
                    }
                    let payload = base64::engine::general_purpose::STANDARD.encode(&f);
                    push_out!(TwilioMessage::Media(Media {
                        sequence_number: next_seq(),
                        stream_sid: Some(stream_sid.clone()),
                        media: MediaInfo {
                            track: Some("inbound".into()),
                            chunk: Some(chunk_no.to_string()),
                            timestamp: Some(media_ts.to_string()),
                            payload,
                        },
                    }));
                    report.frames_sent += 1;
                    media_ts += 20;
                    next_frame += Duration::from_millis(20);
                } else if !gap && !hung_up {
                    next_frame += Duration::from_millis(20);
                }
            }
            // 4. send what is due
            while now >= gap_until && outq.front().is_some_and(|(t, _)| *t <= now) {
                let Some((_, text)) = outq.pop_front() else {
                    break;
                };
                if out.send_now(Message::text(text)).is_err() {
                    // The socket is gone under us: the bridge closed it (this side only closes
                    // after hanging up), whichever of the reader and this write saw it first.
                    report
                        .timeline
                        .push((at(Instant::now()), "bridge closed the stream".into()));
                    report.closed_by_bridge = true;
                    bridge_closed = true;
                    break;
                }
            }
            // 5. end conditions
            let linger_over = script_done_at.is_some_and(|t| now >= t + cfg.linger);
            if (hung_up && outq.is_empty()) || bridge_closed || now >= deadline || linger_over {
                if !hung_up && !bridge_closed {
                    let stop = TwilioMessage::Stop(Stop {
                        sequence_number: next_seq(),
                        stream_sid: Some(stream_sid.clone()),
                        stop: StopInfo {
                            account_sid: Some(account_sid.clone()),
                            call_sid: Some(call_sid.clone()),
                        },
                    });
                    let _ = out.send_now(Message::text(stop.to_json()));
                }
                break;
            }
            // 6. wait for the next thing to happen
            let mut wake = next_frame;
            for t in [
                inq.front().map(|x| x.0),
                outq.front().map(|x| x.0.max(gap_until)),
                play.pending_marks.front().map(|x| x.0),
            ]
            .into_iter()
            .flatten()
            {
                wake = wake.min(t);
            }
            if play.agent_run_started.is_some() {
                wake = wake.min(play.end.max(now));
            }
            let timeout = wake
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            match rx.recv_timeout(timeout) {
                Ok(Incoming::Text(t)) => {
                    let arrive = deliver(Instant::now(), &cfg, &mut rng, &mut last_in);
                    inq.push_back((arrive, t.as_str().to_owned()));
                }
                Ok(Incoming::Binary(_)) => report.violations.push("binary frame".into()),
                Ok(Incoming::Closed(_)) | Ok(Incoming::Error(_)) => {
                    // deliver what is still in flight, then stop
                    for (t, text) in std::mem::take(&mut inq) {
                        Self::on_bridge(
                            &cfg,
                            &mut report,
                            &mut play,
                            t,
                            &text,
                            &stream_sid,
                            &mut outq,
                            &mut last_out,
                            &mut rng,
                        );
                    }
                    report
                        .timeline
                        .push((at(Instant::now()), "bridge closed the stream".into()));
                    report.closed_by_bridge = true;
                    bridge_closed = true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bridge_closed = true,
            }
        }
        duplex.close();
        // The reader may be waiting for room in the full channel (agent audio arriving faster
        // than this loop reads it): dropping the receiver frees it, else join waits forever.
        drop(rx);
        duplex.join();
        report.duration = t0.elapsed();
        // close the books: chunks play out fully unless a clear cut them
        let call_end = report.duration;
        for c in &mut play.chunks {
            if c.played == u64::MAX {
                c.played = if c.end <= call_end {
                    c.bytes
                } else if c.start >= call_end {
                    0
                } else {
                    ((call_end - c.start).as_micros() as u64 * mulaw::BYTES_PER_MS as u64 / 1000)
                        .min(c.bytes)
                };
            }
        }
        if cfg.keep_audio {
            let total_ms = report.duration.as_millis() as usize;
            let mut audio = vec![mulaw::SILENCE; total_ms * 8];
            for ((_, bytes), c) in play.payloads.iter().zip(&play.chunks) {
                let from = c.start.as_millis() as usize * 8;
                for (i, b) in bytes.iter().take(c.played as usize).enumerate() {
                    if let Some(slot) = audio.get_mut(from + i) {
                        *slot = *b;
                    }
                }
            }
            report.agent_audio = audio;
        }
        report.chunks = play.chunks;
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_bridge(
        cfg: &TwilioCallConfig,
        report: &mut CallReport,
        play: &mut Playout,
        t: Instant,
        text: &str,
        stream_sid: &str,
        outq: &mut VecDeque<(Instant, String)>,
        last_out: &mut Instant,
        rng: &mut Rng,
    ) {
        let at = |x: Instant| x.saturating_duration_since(play.t0);
        let cmd = match TwilioCommand::parse(text) {
            Ok(c) => c,
            Err(e) => {
                report
                    .violations
                    .push(format!("invalid frame from the bridge: {e}"));
                return;
            }
        };
        let sid = match &cmd {
            TwilioCommand::Media { stream_sid, .. }
            | TwilioCommand::Mark { stream_sid, .. }
            | TwilioCommand::Clear { stream_sid } => stream_sid,
        };
        if sid != stream_sid {
            report.violations.push(format!("wrong streamSid {sid}"));
            return;
        }
        match cmd {
            TwilioCommand::Media { payload, .. } => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(payload.as_bytes())
                    .unwrap_or_else(|_| {
                        report.violations.push("media payload is not base64".into());
                        Vec::new()
                    });
                let n = bytes.len() as u64;
                let start = t.max(play.end);
                let end = start + Duration::from_micros(n * 1000 / mulaw::BYTES_PER_MS as u64);
                if play.agent_run_started.is_none() {
                    report
                        .timeline
                        .push((at(start), "agent audio starts".into()));
                    play.agent_run_started = Some(start);
                }
                play.end = end;
                let audible = bytes.iter().any(|&b| b != 0xFF && b != 0x7F);
                if audible {
                    if play.voice_run_started.is_none() || play.voice_end < start {
                        play.voice_run_started = Some(start);
                    }
                    play.voice_end = end;
                }
                play.chunks.push(ChunkRecord {
                    bytes: n,
                    arrival: at(t),
                    start: at(start),
                    end: at(end),
                    played: u64::MAX,
                    mark: None,
                    audible,
                });
                if cfg.keep_audio {
                    play.payloads.push((start, bytes));
                } else {
                    play.payloads.push((start, Vec::new()));
                }
            }
            TwilioCommand::Mark { name, .. } => {
                report.marks_received += 1;
                for c in &mut play.chunks[play.unmarked_from..] {
                    c.mark.get_or_insert_with(|| name.clone());
                }
                play.unmarked_from = play.chunks.len();
                let echo = t.max(play.end);
                play.pending_marks.push_back((echo, name));
            }
            TwilioCommand::Clear { .. } => {
                let mut dropped = 0;
                for c in &mut play.chunks {
                    if c.played != u64::MAX {
                        continue;
                    }
                    let (s, e) = (play.t0 + c.start, play.t0 + c.end);
                    if e <= t {
                        c.played = c.bytes;
                    } else if s >= t {
                        c.played = 0;
                        dropped += c.bytes;
                    } else {
                        let p = ((t - s).as_micros() as u64 * mulaw::BYTES_PER_MS as u64 / 1000)
                            .min(c.bytes);
                        c.played = p;
                        dropped += c.bytes - p;
                    }
                }
                play.end = t;
                play.voice_end = play.voice_end.min(t);
                let flushed = play.pending_marks.len();
                for (_, name) in std::mem::take(&mut play.pending_marks) {
                    report.marks_echoed += 1;
                    let m = TwilioMessage::Mark(Mark {
                        sequence_number: Some(report.marks_echoed.to_string()),
                        stream_sid: Some(stream_sid.to_owned()),
                        mark: MarkInfo { name },
                    });
                    let ts = deliver(t, cfg, rng, last_out);
                    outq.push_back((ts, m.to_json()));
                }
                if let Some(s) = play.agent_run_started.take() {
                    report.timeline.push((
                        at(t),
                        format!("clear: agent cut after {} ms", (t - s).as_millis()),
                    ));
                } else {
                    report
                        .timeline
                        .push((at(t), "clear (nothing playing)".into()));
                }
                report.clears.push(ClearRecord {
                    at: at(t),
                    dropped_bytes: dropped,
                    marks_flushed: flushed,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_is_delayed_independently_but_never_overtakes() {
        let mut cfg = TwilioCallConfig::new("127.0.0.1:1".parse().unwrap(), Vec::new());
        cfg.one_way_delay = Duration::from_millis(30);
        cfg.jitter = Duration::from_millis(20);
        let mut rng = Rng(12345);
        let t0 = Instant::now();
        // Far apart (100 ms > the jitter): every delay is the message's own, uniform 30..50 ms.
        let mut last = t0;
        let delays: Vec<Duration> = (0..2000u32)
            .map(|i| {
                let sent = t0 + Duration::from_millis(100) * i;
                deliver(sent, &cfg, &mut rng, &mut last) - sent
            })
            .collect();
        let (lo, hi) = (Duration::from_millis(30), Duration::from_millis(50));
        assert!(delays.iter().all(|d| *d >= lo && *d <= hi));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(31)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(49)));
        let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
        assert!(mean > Duration::from_millis(39) && mean < Duration::from_millis(41));
        // Sent 1 ms apart: arrivals keep the sending order, so some wait behind the one before.
        let mut last = t0;
        let mut prev = t0;
        let mut held = 0;
        for i in 0..2000u32 {
            let sent = t0 + Duration::from_millis(1) * i;
            let own_latest = sent + hi;
            let at = deliver(sent, &cfg, &mut rng, &mut last);
            assert!(at >= prev && at >= sent + lo);
            // It waits only for earlier messages, which arrive by their own latest.
            assert!(at <= own_latest);
            if at == prev {
                held += 1;
            }
            prev = at;
        }
        assert!(held > 500, "head-of-line blocking happens: {held}");
    }
}
