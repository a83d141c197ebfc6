//! The audio path, frame by frame: what one caller frame and one agent chunk cost.
//!
//! ```text
//! cargo bench --bench audio_path
//! ```

use std::time::{Duration, Instant};

use base64::Engine;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use twilio_realtime::agent::Agent;
use twilio_realtime::call::inbound::{InboundAudio, InboundConfig};
use twilio_realtime::call::{CallConfig, CallCore, Command, Input, Output};
use twilio_realtime::proto::mulaw;
use twilio_realtime::proto::realtime::{write_append_json, AudioDeltaFrame, ServerEvent};
use twilio_realtime::proto::twilio::{
    write_mark_json, write_media_json, TwilioCommand, TwilioMessage,
};

const SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

fn b64(n: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(mulaw::tone(440.0, (n / 8) as u32, 6000))
}

fn media_frame(ts: u64) -> String {
    format!(
        r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{ts}","payload":"{}"}},"streamSid":"{SID}"}}"#,
        ts / 20 + 2,
        ts / 20 + 1,
        b64(160)
    )
}

fn delta(resp: &str, item: &str, bytes: usize) -> String {
    format!(
        r#"{{"type":"response.output_audio.delta","event_id":"event_123","response_id":"{resp}","item_id":"{item}","output_index":0,"content_index":0,"delta":"{}"}}"#,
        b64(bytes)
    )
}

fn ready_core() -> (CallCore, Instant) {
    let now = Instant::now();
    let mut core = CallCore::new(Agent::new("A", "x"), CallConfig::default(), now);
    core.handle_input(
        now,
        Input::Model(
            ServerEvent::parse(r#"{"type":"session.created","event_id":"e","session":{}}"#)
                .unwrap(),
        ),
    );
    core.handle_input(now, Input::Model(ServerEvent::parse(
            r#"{"type":"session.updated","event_id":"e","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}"#,
        )
        .unwrap()));
    let start = format!(
        r#"{{"event":"start","streamSid":"{SID}","start":{{"accountSid":"AC1","callSid":"CA1","tracks":["inbound"],"customParameters":{{}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
    );
    core.handle_input(now, Input::Twilio(TwilioMessage::parse(&start).unwrap()));
    core.handle_input(
        now,
        Input::Model(
            ServerEvent::parse(
                r#"{"type":"response.created","event_id":"e","response":{"id":"resp_1"}}"#,
            )
            .unwrap(),
        ),
    );
    while core.poll_output().is_some() {}
    (core, now)
}

fn inbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbound");
    g.throughput(Throughput::Elements(1));
    let frame = media_frame(1000);
    // Twilio media JSON in -> input_audio_buffer.append JSON out, as the Twilio reader does it.
    g.bench_function("twilio_media_to_append_json", |b| {
        let mut lane = InboundAudio::new(InboundConfig::default());
        let mut buf = String::with_capacity(512);
        lane.set_ready(true, &mut |_: &str| {});
        let mut ts = 0u64;
        let t0 = Instant::now();
        b.iter(|| {
            ts += 20;
            let TwilioMessage::Media(m) = TwilioMessage::parse(black_box(&frame)).unwrap() else {
                unreachable!()
            };
            lane.on_media(t0, &m.media.payload, Some(ts), &mut |a: &str| {
                buf.clear();
                write_append_json(&mut buf, a);
                black_box(&buf);
            });
        })
    });
    g.bench_function("parse_media_only", |b| {
        b.iter(|| TwilioMessage::parse(black_box(&frame)).unwrap())
    });
    g.finish();
}

fn outbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbound");
    g.throughput(Throughput::Elements(1));
    let d = delta("resp_1", "item_1", 800);
    // Model delta JSON in -> Twilio media + mark JSON out, ledger included.
    g.bench_function("delta_to_media_and_mark_json", |b| {
        let (mut core, now) = ready_core();
        let mut buf = String::with_capacity(2048);
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let ev = ServerEvent::parse(black_box(&d)).unwrap();
            core.handle_input(now, Input::Model(ev));
            while let Some(o) = core.poll_output() {
                if let Output::Twilio(cmd) = o {
                    buf.clear();
                    match &cmd {
                        TwilioCommand::Media { stream_sid, payload } => write_media_json(&mut buf, stream_sid, payload),
                        TwilioCommand::Mark { stream_sid, name } => write_mark_json(&mut buf, stream_sid, name),
                        other => buf.push_str(&other.to_json()),
                    }
                    black_box(&buf);
                }
            }
            // keep the ledger bounded like a real call: acknowledge every 50 chunks
            if n % 50 == 0 {
                core.handle_input(now, Input::Command(Command::Interrupt));
                while core.poll_output().is_some() {}
                core.handle_input(now, Input::Model(ServerEvent::parse(r#"{"type":"response.done","event_id":"e","response":{"id":"resp_1","status":"cancelled"}}"#).unwrap()));
                core.handle_input(now, Input::Model(ServerEvent::parse(r#"{"type":"response.created","event_id":"e","response":{"id":"resp_1"}}"#).unwrap()));
                while core.poll_output().is_some() {}
            }
        })
    });
    g.bench_function("parse_delta_only", |b| {
        b.iter(|| ServerEvent::parse(black_box(&d)).unwrap())
    });
    // The same delta on the agent-audio lane: the model reader's borrowed parse, the media and
    // mark JSON, and the core recording the chunk later (all of the lane's work but the
    // session thread's wake-up it saves).
    g.bench_function("delta_on_the_agent_lane", |b| {
        let (mut core, now) = ready_core();
        // A delta through the core, which grants the lane (and acknowledges what played, so
        // the ledger stays as small as in a real call).
        let grant = |core: &mut CallCore, mark: Option<&str>| {
            if let Some(name) = mark {
                let echo =
                    format!(r#"{{"event":"mark","streamSid":"{SID}","mark":{{"name":"{name}"}}}}"#);
                core.handle_input(now, Input::Twilio(TwilioMessage::parse(&echo).unwrap()));
            }
            core.handle_input(now, Input::Model(ServerEvent::parse(&d).unwrap()));
            let mut lane = None;
            while let Some(o) = core.poll_output() {
                if let Output::AudioLane(l) = o {
                    lane = Some(l);
                }
            }
            lane.expect("a lane after a delta")
        };
        let mut lane = grant(&mut core, None);
        let mut buf = String::with_capacity(2048);
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            if n % 50 == 0 {
                let last = lane.chunk(0);
                lane = grant(&mut core, Some(&last));
            }
            let f = AudioDeltaFrame::parse(black_box(&d)).unwrap();
            assert!(lane.matches(f.response_id(), f.item_id(), f.content_index()));
            buf.clear();
            write_media_json(&mut buf, lane.stream_sid(), f.delta());
            black_box(&buf);
            let bytes = mulaw::base64_decoded_len(f.delta()) as u64;
            let mark = lane.chunk(bytes);
            buf.clear();
            write_mark_json(&mut buf, lane.stream_sid(), &mark);
            black_box(&buf);
            core.handle_input(now, Input::AudioLaneSent { bytes });
        })
    });
    g.bench_function("parse_delta_borrowed", |b| {
        b.iter(|| AudioDeltaFrame::parse(black_box(&d)).unwrap())
    });
    g.finish();
}

fn barge_in(c: &mut Criterion) {
    let mut g = c.benchmark_group("barge_in");
    for chunks in [10usize, 1000] {
        g.bench_function(format!("ledger_{chunks}_chunks"), |b| {
            b.iter_batched(
                || {
                    let (mut core, now) = ready_core();
                    for i in 0..chunks {
                        let item = format!("item_{}", i % 3);
                        core.handle_input(
                            now,
                            Input::Model(ServerEvent::parse(&delta("resp_1", &item, 160)).unwrap()),
                        );
                    }
                    while core.poll_output().is_some() {}
                    (core, now)
                },
                |(mut core, now)| {
                    core.handle_input(
                        now + Duration::from_millis(500),
                        Input::Command(Command::Interrupt),
                    );
                    let mut n = 0;
                    while let Some(o) = core.poll_output() {
                        black_box(&o);
                        n += 1;
                    }
                    n
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("mulaw");
    let pcm: Vec<i16> = (0..8000)
        .map(|i| ((i as f32 * 0.05).sin() * 12000.0) as i16)
        .collect();
    let law = mulaw::tone(300.0, 1000, 9000);
    g.throughput(Throughput::Bytes(8000));
    g.bench_function("encode_1s", |b| {
        let mut out = Vec::with_capacity(8000);
        b.iter(|| {
            out.clear();
            mulaw::encode_into(black_box(&pcm), &mut out);
        })
    });
    g.bench_function("decode_1s", |b| {
        let mut out = Vec::with_capacity(8000);
        b.iter(|| {
            out.clear();
            mulaw::decode_into(black_box(&law), &mut out);
        })
    });
    g.finish();
}

criterion_group!(benches, inbound, outbound, barge_in, codec);
criterion_main!(benches);
