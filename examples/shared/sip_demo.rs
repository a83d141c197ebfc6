//! `cargo run --example demo -- --sip`: the demo's agent on a SIP call through OpenAI, against
//! the fake SIP control plane (`sim::sip`), all on 127.0.0.1. The fake posts the signed
//! `realtime.call.incoming` webhook, the server accepts the call over REST and drives it over
//! its sideband WebSocket (no audio crosses the bridge); the simulated caller asks about the
//! weather, presses 1 and asks for a person; the agent says it puts them through, and the
//! server sends the SIP REFER once OpenAI reports the goodbye played
//! (`output_audio_buffer.stopped`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twilio_realtime::call::Greeting;
use twilio_realtime::events::{HistoryKind, SessionEvent};
use twilio_realtime::proto::sip::WebhookSecret;
use twilio_realtime::server::sip::{OpenAiCalls, SipConfig};
use twilio_realtime::server::{Server, ServerConfig};
use twilio_realtime::sim::fake_model::Reply;
use twilio_realtime::sim::sip::{CallerStep, FakeSip, FakeSipConfig};
use twilio_realtime::telephony::call_info::CallInfo;

use super::{agent_for, collect_events, event_line, goodbye_then_next_response, CALLER};

/// Where the agent may transfer callers (the demo's `TRANSFER_TO`).
const DESK: &str = "+15550142";
const KEY: &str = "demo-key-not-used";

pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    println!(
        "twilio-realtime demo, SIP: bridge + fake OpenAI SIP control plane (webhook, REST, \
         sideband), all on 127.0.0.1.\nThe call's audio would flow between Twilio's SIP trunk \
         and OpenAI; none of it crosses the bridge.\n"
    );
    let listen = CallerStep::WaitForAgent {
        quiet_ms: 600,
        timeout_ms: 15_000,
    };
    let fake = FakeSip::start(FakeSipConfig {
        api_key: KEY.into(),
        script: vec![
            Reply::say("Hello Ada, welcome back! How can I help you today?", 2600),
            Reply::call("get_weather", r#"{"location":"Paris"}"#),
            Reply::say("In Paris it is 18 degrees and sunny today.", 2400),
            Reply::say(
                "Of course, Ada. I am putting you through to a colleague now. Goodbye!",
                3000,
            ),
            Reply::call("transfer_call", r#"{"destination":"a person"}"#),
        ],
        caller: vec![
            listen.clone(),
            CallerStep::say("What is the weather in Paris?", 1400),
            listen,
            CallerStep::Dtmf("1".into()),
            CallerStep::say("I would like to talk to a person, please.", 1600),
        ],
        ..Default::default()
    })?;

    let mut cfg = ServerConfig::from_env();
    cfg.bind = "127.0.0.1:0".parse()?;
    cfg.twilio_auth_token = None;
    cfg.stream_token_ttl = None;
    // OPENAI_REALTIME_URL and OPENAI_BASE_URL, as the example server reads them.
    cfg.session.model.url = fake.realtime_url();
    cfg.session.model.api_key = Some(KEY.into());
    cfg.session.call.greeting = Some(Greeting::Instructions(
        "Greet the caller by name and ask how you can help.".into(),
    ));
    let rest = OpenAiCalls::new(fake.base_url(), KEY, Duration::from_secs(5));
    cfg.sip = Some(SipConfig::new(
        WebhookSecret::new(fake.webhook_secret())?,
        rest,
    ));
    let events: Arc<Mutex<Vec<(Duration, SessionEvent)>>> = Arc::default();
    let agent = |call: &CallInfo| {
        // TRANSFER_TO for the example server: the one destination the agent may choose.
        let agent = agent_for(call);
        agent
            .clone()
            .transfer_to(
                "a person",
                DESK,
                "A colleague, when the caller asks for a person.",
            )
            .unwrap_or(agent)
    };
    let server = Server::bind(cfg, agent)?
        .on_event(collect_events(t0, &events))
        // The goodbye follows the key press; transfer_call follows it and waits for
        // `output_audio_buffer.stopped`.
        .on_call(goodbye_then_next_response(|e| {
            matches!(e, SessionEvent::Dtmf { .. })
        }));
    let url = format!("http://{}/openai-webhook", server.local_addr());
    let stopper = server.stopper();
    let running = std::thread::spawn(move || server.run());

    let rang = t0.elapsed();
    let delivery = fake.ring(&url, CALLER, "+15550199");
    let answered = t0.elapsed();
    println!(
        "OpenAI posted realtime.call.incoming for {} (From sip:{CALLER}@sip.example.com, signed) \
         to {url}: answered {}",
        delivery.call_id, delivery.status
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed = || {
        events.lock().is_ok_and(|v| {
            v.iter()
                .any(|(_, e)| matches!(e, SessionEvent::Closed { .. }))
        })
    };
    while !closed() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while stopper.live_calls() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stopper.stop();
    let _ = running.join();

    let mut lines: Vec<(Duration, String)> = vec![
        (
            rang,
            "openai   webhook realtime.call.incoming posted".into(),
        ),
        (
            answered,
            format!("openai   webhook answered {}", delivery.status),
        ),
    ];
    for r in fake.requests() {
        let body = r.body.map(|b| format!(" {b}")).unwrap_or_default();
        let body = if r.verb == "accept" {
            " (the agent's session configuration, printed below)".into()
        } else {
            body
        };
        lines.push((
            r.at.saturating_duration_since(t0),
            format!("rest     {}{body} -> {}", r.verb, r.status),
        ));
    }
    let mut caller_items = Vec::new();
    for (t, e) in events.lock().map(|v| v.clone()).unwrap_or_default() {
        let line = match e {
            // The caller's turns as OpenAI transcribed them (the audio never came here).
            SessionEvent::HistoryUpdated(item)
                if item.kind == HistoryKind::User
                    && !item.text.is_empty()
                    && !caller_items.contains(&item.item_id) =>
            {
                caller_items.push(item.item_id.clone());
                format!("caller   said: \"{}\"", item.text)
            }
            SessionEvent::AudioStopped => {
                "session  the agent's audio played out (output_audio_buffer.stopped)".into()
            }
            e => match event_line(&e) {
                Some(line) => line,
                None => continue,
            },
        };
        lines.push((t, line));
    }
    lines.sort_by_key(|l| l.0);
    println!("\nTimeline (seconds since start):");
    for (t, l) in &lines {
        println!("  {:>6.2}  {l}", t.as_secs_f64());
    }
    let accepted = fake
        .requests()
        .into_iter()
        .find(|r| r.verb == "accept")
        .and_then(|r| r.body);
    if let Some(body) = accepted {
        println!(
            "\nThe call was accepted with (no audio format: the codec is negotiated in SDP):\n  {body}"
        );
    }
    let sideband = fake.sideband();
    println!(
        "\nThe sideband carried {} server events and {} client events; the fake saw {} \
         protocol violation(s).",
        sideband.sent.len(),
        sideband.received.len(),
        sideband.violations.len()
    );
    println!(
        "The call ended at OpenAI as: {:?}",
        fake.call_state(&delivery.call_id)
    );
    println!("Done in {:.1} s.", t0.elapsed().as_secs_f64());
    Ok(())
}
