//! Misbehaving Twilio peers and process gauges, for soak runs: a caller that vanishes, one that
//! sends garbage, one that never sends `start`, one that stops reading, one that goes silent
//! without closing, one whose timestamps jump 10 s on every frame; and the thread, file
//! descriptor and memory counts of this process, to see that they return to their baseline.
//!
//! ```no_run
//! use std::time::Duration;
//! use twilio_realtime::sim::chaos::{run_faulty_call, CallerFault, ProcessStats};
//!
//! let before = ProcessStats::now().unwrap();
//! # let addr = "127.0.0.1:5050".parse().unwrap();
//! run_faulty_call(addr, CallerFault::Vanish, Duration::from_millis(500)).unwrap();
//! let after = ProcessStats::now().unwrap();
//! println!("threads {} -> {}", before.threads, after.threads);
//! ```

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::io::ws::{ClientRequest, WsConfig, WsConn};
use crate::proto::mulaw;

use super::twilio_call::SimError;

/// How a simulated Twilio peer misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallerFault {
    /// Streams audio, then drops the TCP connection without `stop` or a close frame.
    Vanish,
    /// Mixes malformed JSON, bad base64, binary frames and unknown marks into its audio, then
    /// stops normally.
    Garbage,
    /// Connects and sends `connected` but never `start`; waits for the bridge to give up.
    NoStart,
    /// Starts, then never reads again; drops the connection at the end.
    StopReading,
    /// Starts and streams a little audio, then sends nothing more without closing (its host
    /// vanished, the TCP connection was never closed: a half-open peer). The bridge must end
    /// the call by its silence rule (`CallConfig::twilio_silence_timeout`).
    HalfOpen,
    /// Streams audio at the normal pace, but each frame's `timestamp` is 10 s past the last
    /// (a broken or hostile peer: a bridge that padded every gap would append 80 KB of
    /// silence to the billed model session per 20 ms frame), then stops normally.
    TimestampJump,
}

impl CallerFault {
    /// Every fault, for round-robin mixes.
    pub const ALL: [CallerFault; 6] = [
        CallerFault::Vanish,
        CallerFault::Garbage,
        CallerFault::NoStart,
        CallerFault::StopReading,
        CallerFault::HalfOpen,
        CallerFault::TimestampJump,
    ];
}

fn start_json(stream_sid: &str) -> String {
    format!(
        r#"{{"event":"start","sequenceNumber":"1","streamSid":"{stream_sid}","start":{{"accountSid":"ACchaos","streamSid":"{stream_sid}","callSid":"CAchaos","tracks":["inbound"],"customParameters":{{}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
    )
}

fn media_json(stream_sid: &str, n: u64, payload: &str) -> String {
    media_json_at(stream_sid, n, n * 20, payload)
}

fn media_json_at(stream_sid: &str, n: u64, timestamp: u64, payload: &str) -> String {
    format!(
        r#"{{"event":"media","sequenceNumber":"{}","streamSid":"{stream_sid}","media":{{"track":"inbound","chunk":"{n}","timestamp":"{timestamp}","payload":"{payload}"}}}}"#,
        n + 2,
    )
}

/// Runs one misbehaving Twilio peer against the bridge at `addr` for about `duration`.
/// Returns when the peer is done (whatever the bridge did); an error only if it could not
/// connect at all.
pub fn run_faulty_call(
    addr: SocketAddr,
    fault: CallerFault,
    duration: Duration,
) -> Result<(), SimError> {
    let sid = "MZ00000000000000000000000000chaos";
    let payload = base64::engine::general_purpose::STANDARD.encode(mulaw::silence(160));
    let url = format!("ws://{addr}/media-stream");
    if fault == CallerFault::StopReading {
        // A raw tungstenite client: it writes `start` and then simply never reads.
        let tcp = TcpStream::connect(addr)
            .map_err(|e| SimError::Connect(crate::io::ws::WsError::Connect(e)))?;
        let (mut ws, _) = tungstenite::client(url.as_str(), tcp)
            .map_err(|e| SimError::Connect(crate::io::ws::WsError::Handshake(e.to_string())))?;
        let _ = ws.send(tungstenite::Message::text(start_json(sid)));
        thread::sleep(duration);
        return Ok(()); // dropped without a close frame
    }
    let conn = WsConn::connect(&ClientRequest::new(url), &WsConfig::default())
        .map_err(SimError::Connect)?;
    let (duplex, rx) = conn
        .spawn_channel("chaos-twilio")
        .map_err(SimError::Connect)?;
    let out = duplex.sender();
    let send = |s: String| {
        let _ = out.send(tungstenite::Message::text(s));
    };
    send(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_owned());
    let t0 = Instant::now();
    match fault {
        CallerFault::NoStart => {
            // The bridge should close the stream on its own.
            while t0.elapsed() < duration.max(Duration::from_secs(10)) {
                if duplex.is_closed() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        CallerFault::Vanish | CallerFault::Garbage | CallerFault::TimestampJump => {
            send(start_json(sid));
            let mut n = 0;
            while t0.elapsed() < duration && !duplex.is_closed() {
                if fault == CallerFault::TimestampJump {
                    send(media_json_at(sid, n, n.saturating_mul(10_000), &payload));
                } else {
                    send(media_json(sid, n, &payload));
                }
                if fault == CallerFault::Garbage && n % 5 == 0 {
                    send("{not json".to_owned());
                    send(media_json(sid, n, "%%%not base64%%%"));
                    send(format!(
                        r#"{{"event":"mark","streamSid":"{sid}","mark":{{"name":"0:0:{n}:nobody"}}}}"#
                    ));
                    let _ = out.send(tungstenite::Message::binary(vec![0u8, 1, 2]));
                }
                // Drain what the bridge sent (audio, marks) without acting on it.
                while rx.try_recv().is_ok() {}
                n += 1;
                thread::sleep(Duration::from_millis(20));
            }
            if fault != CallerFault::Vanish {
                send(format!(
                    r#"{{"event":"stop","streamSid":"{sid}","stop":{{"accountSid":"ACchaos","callSid":"CAchaos"}}}}"#
                ));
                out.close();
            } else {
                out.abort();
            }
        }
        CallerFault::HalfOpen => {
            send(start_json(sid));
            let mut n = 0;
            while t0.elapsed() < duration.min(Duration::from_millis(300)) {
                send(media_json(sid, n, &payload));
                n += 1;
                thread::sleep(Duration::from_millis(20));
            }
            // Silence on the wire; whatever the bridge sends is drained unread. Waits for the
            // bridge to close the stream (or gives up after 30 s).
            while t0.elapsed() < Duration::from_secs(30) && !duplex.is_closed() {
                while rx.try_recv().is_ok() {}
                thread::sleep(Duration::from_millis(20));
            }
            out.abort();
        }
        CallerFault::StopReading => unreachable!("handled above"),
    }
    // The reader may be waiting for room in the full channel: dropping the receiver frees it.
    drop(rx);
    duplex.join();
    Ok(())
}

/// Threads, open file descriptors and memory of this process (Linux `/proc/self`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStats {
    /// Threads.
    pub threads: usize,
    /// Open file descriptors.
    pub fds: usize,
    /// Resident set size, KiB.
    pub rss_kb: u64,
    /// Peak resident set size, KiB.
    pub peak_rss_kb: u64,
}

impl ProcessStats {
    /// Reads the current figures.
    pub fn now() -> io::Result<ProcessStats> {
        ProcessStats::read("/proc/self")
    }

    /// The figures of another process (e.g. a bridge a load generator started).
    pub fn of_pid(pid: u32) -> io::Result<ProcessStats> {
        ProcessStats::read(&format!("/proc/{pid}"))
    }

    fn read(dir: &str) -> io::Result<ProcessStats> {
        let status = std::fs::read_to_string(format!("{dir}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(ProcessStats {
            threads: field("Threads:") as usize,
            fds: std::fs::read_dir(format!("{dir}/fd"))?.count(),
            rss_kb: field("VmRSS:"),
            peak_rss_kb: field("VmHWM:"),
        })
    }

    /// Waits (up to `within`) until threads and descriptors are back to `baseline` or below;
    /// the figures at that moment.
    pub fn settle(baseline: &ProcessStats, within: Duration) -> io::Result<ProcessStats> {
        let deadline = Instant::now() + within;
        loop {
            let now = ProcessStats::now()?;
            if (now.threads <= baseline.threads && now.fds <= baseline.fds)
                || Instant::now() >= deadline
            {
                return Ok(now);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}
