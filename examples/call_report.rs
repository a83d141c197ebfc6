//! Turns a call recording into a picture and a one-screen summary.
//!
//! ```text
//! cargo run --example call_report -- FILE.jsonl [OUT.svg]
//! ```
//!
//! `FILE.jsonl` is a recording made with `SessionConfig::recording` (the example server
//! writes one per call into `CALL_RECORDING_DIR`; the demo writes `out/demo/call.jsonl`).
//! The picture goes to `OUT.svg`, by default beside the recording with the extension `.svg`.

use std::path::PathBuf;

#[path = "shared/call_picture.rs"]
mod call_picture;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: call_report FILE.jsonl [OUT.svg]");
        std::process::exit(2);
    };
    let file = PathBuf::from(file);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| file.with_extension("svg"));
    match call_picture::report(&file, &out) {
        Ok(summary) => {
            print!("{summary}");
            println!("picture   {}", out.display());
        }
        Err(e) => {
            eprintln!("call_report: {}: {e}", file.display());
            std::process::exit(1);
        }
    }
}
