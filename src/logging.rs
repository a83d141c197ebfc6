//! Logging that keeps secrets out: an `env_logger` setup whose default leaves out the
//! dependency log lines that dump whole WebSocket frames.
//!
//! The crate's own log lines (targets under `twilio_realtime::`) never carry audio payloads,
//! API keys, auth tokens, one-time stream tokens or a peer's free text (e.g. a mark's name), at
//! any level. Its dependencies are another matter: at `trace`, tungstenite logs every frame it
//! reads or writes (caller audio, the `start` message with its one-time stream token) and the
//! client handshake request (with the `Authorization: Bearer` API key), and `ureq_proto` dumps
//! the raw bytes of each REST request (with the `Authorization: Basic` credentials of outbound
//! calls). [`init`] therefore keeps
//! the [`FRAME_DUMPING_TARGETS`] at `debug` at most, whatever `RUST_LOG` says, unless the
//! filter names such a target itself: `RUST_LOG=trace` is safe to turn on in production, and
//! `RUST_LOG=trace,tungstenite=trace` opts in to frame dumps (secrets included) on purpose.
//!
//! ```no_run
//! twilio_realtime::logging::init("info").expect("no other logger yet");
//! ```

use log::{Level, LevelFilter, Log, Metadata, Record, SetLoggerError};

/// Log targets of dependencies that print whole frames or requests (payloads, tokens, keys)
/// at `trace`. Kept at `debug` by [`init`] unless the filter names them.
/// (`ureq_proto`: the REST client's protocol layer, which dumps every request's raw bytes, the
/// `Authorization: Basic` header of [`crate::telephony::outbound`] included.)
pub const FRAME_DUMPING_TARGETS: &[&str] = &["tungstenite", "ureq_proto"];

/// Whether `target` is one of the [`FRAME_DUMPING_TARGETS`] (or a module inside one).
pub fn is_frame_dumping_target(target: &str) -> bool {
    FRAME_DUMPING_TARGETS.iter().any(|t| {
        target == *t
            || target
                .strip_prefix(t)
                .is_some_and(|rest| rest.starts_with("::"))
    })
}

/// Whether an `env_logger` filter (`RUST_LOG` syntax) names a frame-dumping target in one of
/// its directives, i.e. asks for its lines on purpose.
pub fn names_frame_dumping_target(filter: &str) -> bool {
    let spec = filter.split('/').next().unwrap_or("");
    spec.split(',').any(|directive| {
        let name = directive.split('=').next().unwrap_or("").trim();
        is_frame_dumping_target(name)
    })
}

/// A logger that passes everything to `inner` except the `trace` lines of the
/// [`FRAME_DUMPING_TARGETS`] (unless `allow_frame_dumps`).
#[derive(Debug)]
pub struct QuietFrames<L> {
    inner: L,
    allow_frame_dumps: bool,
}

impl<L: Log> QuietFrames<L> {
    /// Wraps `inner`.
    pub fn new(inner: L, allow_frame_dumps: bool) -> QuietFrames<L> {
        QuietFrames {
            inner,
            allow_frame_dumps,
        }
    }

    fn passes(&self, level: Level, target: &str) -> bool {
        self.allow_frame_dumps || level < Level::Trace || !is_frame_dumping_target(target)
    }
}

impl<L: Log> Log for QuietFrames<L> {
    fn enabled(&self, m: &Metadata) -> bool {
        self.passes(m.level(), m.target()) && self.inner.enabled(m)
    }

    fn log(&self, r: &Record) {
        if self.passes(r.level(), r.target()) {
            self.inner.log(r);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs an `env_logger` configured from `RUST_LOG` (or `default_filter` when it is unset),
/// with the [`FRAME_DUMPING_TARGETS`] kept below `trace` unless the filter names them.
pub fn init(default_filter: &str) -> Result<(), SetLoggerError> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.to_owned());
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
            .build();
    let max = inner.filter();
    log::set_boxed_logger(Box::new(QuietFrames::new(
        inner,
        names_frame_dumping_target(&filter),
    )))?;
    log::set_max_level(max.min(LevelFilter::Trace));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_filters() {
        assert!(is_frame_dumping_target("tungstenite"));
        assert!(is_frame_dumping_target("tungstenite::protocol::frame"));
        assert!(!is_frame_dumping_target("tungstenite_extra"));
        assert!(!is_frame_dumping_target("twilio_realtime::ws"));
        assert!(!names_frame_dumping_target("trace"));
        assert!(!names_frame_dumping_target(
            "info,twilio_realtime::twilio=trace"
        ));
        assert!(names_frame_dumping_target("trace,tungstenite=trace"));
        assert!(names_frame_dumping_target("tungstenite::protocol"));
        assert!(names_frame_dumping_target(
            "debug, tungstenite = trace/frame"
        ));
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Log for Count {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, _: &Record) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn flush(&self) {}
    }

    #[test]
    fn trace_lines_of_frame_dumping_targets_are_dropped_unless_asked_for() {
        let line = |l: &dyn Log, level: Level, target: &str| {
            l.log(
                &Record::builder()
                    .level(level)
                    .target(target)
                    .args(format_args!("received frame"))
                    .build(),
            )
        };
        let quiet = QuietFrames::new(Count(Default::default()), false);
        line(&quiet, Level::Trace, "tungstenite::protocol");
        line(&quiet, Level::Trace, "twilio_realtime::session");
        line(&quiet, Level::Debug, "tungstenite::protocol");
        assert_eq!(quiet.inner.0.into_inner(), 2);
        let loud = QuietFrames::new(Count(Default::default()), true);
        line(&loud, Level::Trace, "tungstenite::protocol");
        assert_eq!(loud.inner.0.into_inner(), 1);
    }
}
