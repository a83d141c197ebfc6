//! A small soak in its own test binary (the process's thread and descriptor counts are the
//! measurement): calls in a row, then calls at once with misbehaving callers and failing
//! models; everything returns to the baseline. `examples/soak.rs` runs the full size.

use twilio_realtime::sim::soak::{soak, SoakConfig};

#[test]
fn calls_and_faults_leave_nothing_behind() {
    let report = soak(&SoakConfig {
        in_a_row: 30,
        lanes: 6,
        at_once: 32,
        ..Default::default()
    })
    .expect("soak runs");
    eprintln!("{report}");
    assert!(report.leaks().is_empty(), "{report}");
    assert!(report.server_calls >= 30 + 32, "{report}");
}
