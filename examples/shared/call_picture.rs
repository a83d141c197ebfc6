//! The call picture and the one-screen summary, shared by the demo (`out/demo/call.svg`) and
//! `call_report` (any recording). Drawn with `plotters`' SVG backend (a dev-dependency: the
//! library itself does not pull it in).
//!
//! One time axis; top to bottom: the caller's speech energy (with the model's VAD under it),
//! the agent's audio as Twilio played it, the marks sent and echoed, the model's responses,
//! tool calls, and the model connection. A `clear`, a truncation (the `audio_end_ms` claimed
//! against what the caller heard) and the end of the call are vertical lines across all
//! lanes, labelled where they happen.
#![allow(dead_code)]

use std::collections::BTreeMap;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use twilio_realtime::call::playback::MarkName;
use twilio_realtime::session::recording::{Entry, Record};
use twilio_realtime::sim::twilio_call::CallReport;

/// Mean absolute sample value drawn as a full lane (a loud voice is about 3500-6000).
const FULL_SCALE: f64 = 6000.0;
/// Caller buckets above this level count as talking when the model's VAD said nothing.
const TALK_LEVEL: u16 = 400;

/// A stretch of audio with its loudness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// From (ms on the bridge's clock).
    pub from: f64,
    /// To.
    pub to: f64,
    /// Mean absolute sample value.
    pub level: f64,
}

/// A truncation sent to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    /// When the bridge sent it (ms).
    pub at: f64,
    /// The item cut.
    pub item_id: String,
    /// `audio_end_ms` the bridge claimed.
    pub claimed_ms: u64,
    /// Milliseconds of the item's audio that went to Twilio.
    pub sent_ms: u64,
    /// What the caller really heard (known for a simulated call only).
    pub heard_ms: Option<u64>,
    /// When the item's audio started playing (ms), to place the claim on the time axis.
    pub item_start: Option<f64>,
    /// The round-trip estimate the bridge used.
    pub rtt_ms: u64,
}

/// A bar on a lane.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// From (ms).
    pub from: f64,
    /// To (ms).
    pub to: f64,
    /// What it was.
    pub label: String,
    /// It failed / was only being set up.
    pub faint: bool,
}

/// Everything the picture shows, in ms on the bridge's clock (0 = the session started).
#[derive(Debug, Clone, Default)]
pub struct Picture {
    /// The title line.
    pub title: String,
    /// The call's length.
    pub duration: f64,
    /// The caller's audio.
    pub caller: Vec<Level>,
    /// How the caller's track was obtained.
    pub caller_source: String,
    /// The model's VAD: speech started .. stopped.
    pub vad: Vec<(f64, f64)>,
    /// The agent's audio as played.
    pub agent: Vec<Level>,
    /// How the agent's track was obtained.
    pub agent_source: String,
    /// Marks sent.
    pub marks_sent: Vec<f64>,
    /// Marks echoed.
    pub marks_echoed: Vec<f64>,
    /// Clears sent.
    pub clears: Vec<f64>,
    /// Clears as applied at Twilio (simulated calls only).
    pub clears_applied: Vec<f64>,
    /// Truncations.
    pub cuts: Vec<Cut>,
    /// The model's responses (`response.created` .. `response.done`).
    pub responses: Vec<Span>,
    /// Tool calls.
    pub tools: Vec<Span>,
    /// Model connections (faint while connecting).
    pub model: Vec<Span>,
    /// Hang-ups, handoffs, the end: (time, label).
    pub events: Vec<(f64, String)>,
    /// Round-trip estimate to Twilio (ms).
    pub rtt_ms: f64,
}

fn ms(e: &Entry) -> f64 {
    e.t_us as f64 / 1000.0
}

/// The item a mark names, if it is one of ours.
fn mark_item(name: &str) -> Option<String> {
    match MarkName::parse(name)? {
        MarkName::Chunk { item_id, .. } | MarkName::Done { item_id, .. } => Some(item_id.into()),
        MarkName::Probe(_) => None,
    }
}

/// At most one level per `px_ms` of time: contiguous levels that start within one pixel of
/// the current one merge into it (the loudest wins), so a long call's picture stays small.
fn thin(levels: &[Level], px_ms: f64) -> Vec<Level> {
    let mut out: Vec<Level> = Vec::new();
    for l in levels {
        match out.last_mut() {
            Some(cur) if l.from - cur.from < px_ms && l.from <= cur.to + 1.0 => {
                cur.to = cur.to.max(l.to);
                cur.level = cur.level.max(l.level);
            }
            _ => out.push(*l),
        }
    }
    out
}

/// At most one tick per `px_ms` of time.
fn thin_ticks(times: &[f64], px_ms: f64) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for t in times {
        if out.last().is_none_or(|last| t - last >= px_ms) {
            out.push(*t);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

impl Picture {
    /// The picture of a recording: the agent's track is the playout the bridge's own records
    /// imply (each chunk plays from the later of its arrival, half a round trip after it was
    /// sent, and the end of the previous one; a `clear` cuts it half a round trip after it
    /// was sent).
    pub fn from_recording(entries: &[Entry]) -> Picture {
        let mut es: Vec<&Entry> = entries.iter().collect();
        es.sort_by_key(|e| e.t_us);
        let mut p = Picture {
            caller_source: "caller audio as the bridge received it".into(),
            agent_source: "agent audio, playout estimated by the bridge".into(),
            ..Default::default()
        };
        let mut call_sid = String::from("?");
        let mut version = String::new();
        // Round trip: probes first (sent -> echoed), else the truncations' estimate.
        let mut probe_sent: BTreeMap<String, f64> = BTreeMap::new();
        let mut probe_rtts = Vec::new();
        let mut trunc_rtts = Vec::new();
        for e in &es {
            match &e.record {
                Record::MarkSent { name } if name.starts_with("rtt:") => {
                    probe_sent.insert(name.clone(), ms(e));
                }
                Record::MarkEchoed { name } => {
                    if let Some(s) = probe_sent.remove(name) {
                        probe_rtts.push(ms(e) - s);
                    }
                }
                Record::Truncate { rtt_ms, .. } => trunc_rtts.push(*rtt_ms as f64),
                _ => {}
            }
        }
        p.rtt_ms = median(probe_rtts).or(median(trunc_rtts)).unwrap_or(0.0);
        let half = p.rtt_ms / 2.0;

        // Agent chunks: (start, end, level, item once the following mark names it, bytes).
        let mut chunks: Vec<(f64, f64, f64, Option<String>, u64)> = Vec::new();
        let mut unmarked = 0usize;
        let mut play_end = 0.0f64;
        let mut sent_bytes: BTreeMap<String, u64> = BTreeMap::new();
        let mut vad_from: Option<f64> = None;
        let mut resp_from: Option<f64> = None;
        let mut tools: BTreeMap<String, (f64, String)> = BTreeMap::new();
        let mut model_from: Option<(f64, bool)> = None;
        for e in &es {
            let t = ms(e);
            p.duration = p.duration.max(t);
            match &e.record {
                Record::Header { version: v, .. } => version = v.clone(),
                Record::TwilioStart { call_sid: c, .. } => call_sid = c.clone(),
                Record::CallerAudio { ms: len, level } => p.caller.push(Level {
                    from: t - f64::from(*len),
                    to: t,
                    level: f64::from(*level),
                }),
                Record::AgentAudio { bytes, level } => {
                    let start = (t + half).max(play_end);
                    let end = start + *bytes as f64 / 8.0;
                    play_end = end;
                    chunks.push((start, end, f64::from(*level), None, *bytes));
                }
                Record::MarkSent { name } => {
                    p.marks_sent.push(t);
                    if let Some(item) = mark_item(name) {
                        for c in &mut chunks[unmarked..] {
                            c.3 = Some(item.clone());
                            *sent_bytes.entry(item.clone()).or_default() += c.4;
                        }
                        unmarked = chunks.len();
                    }
                }
                Record::MarkEchoed { .. } => p.marks_echoed.push(t),
                Record::Clear => {
                    p.clears.push(t);
                    let cut = t + half;
                    chunks.retain(|c| c.0 < cut);
                    for c in &mut chunks {
                        c.1 = c.1.min(cut);
                    }
                    unmarked = unmarked.min(chunks.len());
                    play_end = play_end.min(cut);
                }
                Record::Truncate {
                    item_id,
                    audio_end_ms,
                    rtt_ms,
                    ..
                } => p.cuts.push(Cut {
                    at: t,
                    item_id: item_id.clone(),
                    claimed_ms: *audio_end_ms,
                    sent_ms: 0,
                    heard_ms: None,
                    item_start: None,
                    rtt_ms: *rtt_ms,
                }),
                Record::ModelEvent { event } => match event.as_str() {
                    "input_audio_buffer.speech_started" => vad_from = Some(t),
                    "input_audio_buffer.speech_stopped" => {
                        p.vad.push((vad_from.take().unwrap_or(t), t));
                    }
                    "response.created" => resp_from = Some(t),
                    "response.done" => p.responses.push(Span {
                        from: resp_from.take().unwrap_or(t),
                        to: t,
                        label: String::new(),
                        faint: false,
                    }),
                    _ => {}
                },
                Record::ToolStart { tool, call_id } => {
                    tools.insert(call_id.clone(), (t, tool.clone()));
                }
                Record::ToolEnd {
                    tool,
                    call_id,
                    is_error,
                } => {
                    let from = tools.remove(call_id).map_or(t, |x| x.0);
                    p.tools.push(Span {
                        from,
                        to: t,
                        label: format!(
                            "{tool} {}{}",
                            if t - from < 1.0 {
                                "<1 ms".to_string()
                            } else {
                                format!("{:.0} ms", t - from)
                            },
                            if *is_error { " (error)" } else { "" }
                        ),
                        faint: *is_error,
                    });
                }
                Record::ModelConnecting => {
                    // A reconnect replaces the connection that was open.
                    if let Some((from, up)) = model_from.take() {
                        p.model.push(Span {
                            from,
                            to: t,
                            label: "replaced".into(),
                            faint: !up,
                        });
                    }
                    model_from = Some((t, false));
                }
                Record::ModelConnected => {
                    if let Some((from, false)) = model_from {
                        p.model.push(Span {
                            from,
                            to: t,
                            label: String::new(),
                            faint: true,
                        });
                    }
                    model_from = Some((t, true));
                }
                Record::ModelConnectFailed { why } => {
                    let from = model_from.take().map_or(t, |x| x.0);
                    p.model.push(Span {
                        from,
                        to: t,
                        label: format!("connect failed: {why}"),
                        faint: true,
                    });
                }
                Record::ModelClosed { why } => {
                    if let Some((from, up)) = model_from.take() {
                        p.model.push(Span {
                            from,
                            to: t,
                            label: format!("closed: {why}"),
                            faint: !up,
                        });
                    }
                }
                Record::TwilioStop => p.events.push((t, "Twilio stop (caller hung up)".into())),
                Record::TwilioClosed { .. } => {}
                Record::Handoff { from, to } => {
                    p.events.push((t, format!("handoff {from} → {to}")))
                }
                Record::Closed { reason } => {
                    if let Some((from, up)) = model_from.take() {
                        p.model.push(Span {
                            from,
                            to: t,
                            label: String::new(),
                            faint: !up,
                        });
                    }
                    p.events.push((t, format!("closed: {reason}")));
                }
                _ => {}
            }
        }
        if let Some((from, up)) = model_from.take() {
            p.model.push(Span {
                from,
                to: p.duration,
                label: String::new(),
                faint: !up,
            });
        }
        if let Some(from) = vad_from {
            p.vad.push((from, p.duration));
        }
        let mut item_start: BTreeMap<String, f64> = BTreeMap::new();
        for c in &chunks {
            if let Some(i) = &c.3 {
                item_start.entry(i.clone()).or_insert(c.0);
            }
        }
        for cut in &mut p.cuts {
            cut.sent_ms = sent_bytes.get(&cut.item_id).copied().unwrap_or(0) / 8;
            cut.item_start = item_start.get(&cut.item_id).copied();
        }
        p.agent = chunks
            .iter()
            .filter(|c| c.1 > c.0)
            .map(|c| Level {
                from: c.0,
                to: c.1,
                level: c.2,
            })
            .collect();
        p.title = format!("call {call_sid} (twilio-realtime {version})");
        p
    }

    /// Replaces both audio tracks by what a simulated caller said and heard, and adds what it
    /// heard of each truncated item. `offset_ms` is the simulated call's start on the bridge's
    /// clock.
    pub fn with_ground_truth(mut self, report: &CallReport, offset_ms: f64) -> Picture {
        const FRAME: usize = 160; // 20 ms
        let frames = |audio: &[u8]| -> Vec<Level> {
            audio
                .chunks(FRAME)
                .enumerate()
                .map(|(i, f)| Level {
                    from: offset_ms + i as f64 * 20.0,
                    to: offset_ms + (i as f64 + 1.0) * 20.0,
                    level: f64::from(twilio_realtime::proto::mulaw::mean_abs(f)),
                })
                .collect()
        };
        self.caller = frames(&report.caller_audio);
        self.caller_source = "what the simulated caller said".into();
        self.agent = frames(&report.agent_audio);
        self.agent_source = "what the simulated caller heard (Twilio's playout)".into();
        self.clears_applied = report
            .clears
            .iter()
            .map(|c| offset_ms + c.at.as_secs_f64() * 1000.0)
            .collect();
        let heard = report.heard_ms_by_item();
        let mut starts: BTreeMap<String, f64> = BTreeMap::new();
        for c in &report.chunks {
            if let Some(item) = c.mark.as_deref().and_then(mark_item) {
                starts
                    .entry(item)
                    .or_insert(offset_ms + c.start.as_secs_f64() * 1000.0);
            }
        }
        for cut in &mut self.cuts {
            cut.heard_ms = heard.get(&cut.item_id).copied();
            if let Some(s) = starts.get(&cut.item_id) {
                cut.item_start = Some(*s);
            }
        }
        self.duration = self
            .duration
            .max(offset_ms + report.duration.as_secs_f64() * 1000.0);
        self
    }

    /// The picture as an SVG document.
    pub fn svg(&self) -> Result<String, String> {
        let mut out = String::new();
        self.draw(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn draw(&self, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
        const W: u32 = 1400;
        const H: u32 = 640;
        let dur_s = (self.duration / 1000.0).max(1.0) * 1.02;
        let s = |t: f64| t / 1000.0;
        let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        // Lanes, bottom to top: (y from, y to).
        let model_y = (0.4, 0.9);
        let tools_y = (1.2, 1.7);
        let resp_y = (2.0, 2.5);
        let echo_y = (2.9, 3.4);
        let sent_y = (3.5, 4.0);
        let agent_y = (4.4, 6.4);
        // Between the agent and the caller: the truncations' numbers (and the VAD bar).
        let cut_y = 6.55;
        let caller_y = (8.3, 10.3);
        let top = 11.2;
        let title = if self.rtt_ms > 0.0 {
            format!(
                "{} · round trip to Twilio ~{:.0} ms",
                self.title, self.rtt_ms
            )
        } else {
            self.title.clone()
        };
        let mut chart = ChartBuilder::on(&root)
            .margin(14)
            .margin_right(30)
            .caption(title, ("sans-serif", 22))
            .set_label_area_size(LabelAreaPosition::Left, 210)
            .set_label_area_size(LabelAreaPosition::Bottom, 44)
            .build_cartesian_2d(0f64..dur_s, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_desc("seconds since the call started")
            .x_labels(((dur_s).ceil() as usize + 1).min(40))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(225, 225, 225))
            .label_style(("sans-serif", 14))
            .draw()?;

        let caller_c = RGBColor(31, 119, 180);
        let agent_c = RGBColor(44, 160, 44);
        let clear_c = RGBColor(214, 39, 40);
        let cut_c = RGBColor(230, 120, 0);
        let tool_c = RGBColor(148, 103, 189);
        let grey = RGBColor(110, 110, 110);
        let light = RGBColor(200, 200, 200);

        // Lane names, in the left margin.
        let names: [(&str, &str, (f64, f64)); 7] = [
            ("caller", &self.caller_source, caller_y),
            ("agent, as played", &self.agent_source, agent_y),
            ("marks sent", "", sent_y),
            ("marks echoed", "", echo_y),
            ("model responses", "", resp_y),
            ("tool calls", "", tools_y),
            ("model connection", "", model_y),
        ];
        for (name, _, (y0, y1)) in names {
            let (x, y) = chart.backend_coord(&(0.0, (y0 + y1) / 2.0));
            root.draw(&Text::new(
                name.to_string(),
                (x - 10, y),
                ("sans-serif", 16)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))?;
        }
        // Lane backgrounds.
        for (_, _, (y0, y1)) in names {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y0), (dur_s, y1)],
                RGBColor(250, 250, 250).filled(),
            )))?;
        }
        let small = |c: &RGBColor| ("sans-serif", 13).into_font().color(c);
        for (_, source, (_, y1)) in names {
            if !source.is_empty() {
                chart.draw_series(std::iter::once(Text::new(
                    source.to_string(),
                    (dur_s * 0.005, y1 + 0.12),
                    small(&grey).pos(Pos::new(HPos::Left, VPos::Bottom)),
                )))?;
            }
        }

        // Audio tracks: mirrored envelopes around the lane's middle.
        // Plot width in pixels is about W - 260: one pixel is this many ms.
        let px_ms = dur_s * 1000.0 / f64::from(W - 260);
        let envelope = |levels: &[Level], (y0, y1): (f64, f64)| -> Vec<(f64, f64, f64, f64)> {
            let mid = (y0 + y1) / 2.0;
            let half = (y1 - y0) / 2.0 * 0.95;
            thin(levels, px_ms)
                .iter()
                .filter(|l| l.level > 30.0)
                .map(|l| {
                    let h = (l.level / FULL_SCALE).min(1.0) * half;
                    (s(l.from), s(l.to), mid - h, mid + h)
                })
                .collect()
        };
        for (levels, lane, color) in [
            (&self.caller, caller_y, caller_c),
            (&self.agent, agent_y, agent_c),
        ] {
            let mid = (lane.0 + lane.1) / 2.0;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(0.0, mid), (dur_s, mid)],
                light,
            )))?;
            chart.draw_series(
                envelope(levels, lane)
                    .into_iter()
                    .map(|(a, b, lo, hi)| Rectangle::new([(a, lo), (b, hi)], color.filled())),
            )?;
        }
        // The model's VAD, as a thin bar under the caller's track.
        chart.draw_series(self.vad.iter().map(|(a, b)| {
            Rectangle::new(
                [(s(*a), caller_y.0 - 0.22), (s(*b), caller_y.0 - 0.08)],
                caller_c.mix(0.45).filled(),
            )
        }))?;
        if let Some((a, _)) = self.vad.first() {
            chart.draw_series(std::iter::once(Text::new(
                "model hears speech",
                (s(*a), caller_y.0 - 0.25),
                small(&caller_c).pos(Pos::new(HPos::Left, VPos::Top)),
            )))?;
        }

        // Marks: one tick each.
        for (times, (y0, y1)) in [(&self.marks_sent, sent_y), (&self.marks_echoed, echo_y)] {
            chart.draw_series(
                thin_ticks(times, px_ms)
                    .into_iter()
                    .map(|t| PathElement::new(vec![(s(t), y0), (s(t), y1)], grey)),
            )?;
        }

        // Bars: responses, tools, model connection.
        let bars = |spans: &[Span], (y0, y1): (f64, f64), color: RGBColor| {
            spans
                .iter()
                .map(|sp| {
                    let style = if sp.faint {
                        color.mix(0.3).filled()
                    } else {
                        color.mix(0.75).filled()
                    };
                    Rectangle::new([(s(sp.from), y0), (s(sp.to.max(sp.from + 8.0)), y1)], style)
                })
                .collect::<Vec<_>>()
        };
        chart.draw_series(bars(&self.responses, resp_y, agent_c))?;
        chart.draw_series(bars(&self.tools, tools_y, tool_c))?;
        chart.draw_series(bars(&self.model, model_y, grey))?;
        for (spans, (_, y1), color) in
            [(&self.tools, tools_y, tool_c), (&self.model, model_y, grey)]
        {
            chart.draw_series(spans.iter().filter(|sp| !sp.label.is_empty()).map(|sp| {
                Text::new(
                    sp.label.clone(),
                    (s(sp.from), y1 + 0.06),
                    small(&color).pos(Pos::new(HPos::Left, VPos::Bottom)),
                )
            }))?;
        }

        // Vertical lines: clears (sent, and applied at Twilio), the end of the call.
        let vline = |t: f64, color: RGBColor, w: u32| {
            PathElement::new(
                vec![(s(t), 0.2), (s(t), caller_y.1 + 0.15)],
                color.stroke_width(w),
            )
        };
        chart.draw_series(self.clears.iter().map(|t| vline(*t, clear_c, 2)))?;
        chart.draw_series(
            self.clears_applied
                .iter()
                .map(|t| vline(*t, RGBColor(235, 150, 150), 1)),
        )?;
        for t in &self.clears {
            let applied = self
                .clears_applied
                .iter()
                .find(|a| **a >= *t)
                .map(|a| format!(" (applied at Twilio {:+.0} ms)", a - t))
                .unwrap_or_default();
            chart.draw_series(std::iter::once(Text::new(
                format!("clear{applied}"),
                (s(*t), caller_y.1 + 0.2),
                ("sans-serif", 14)
                    .into_font()
                    .color(&clear_c)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )))?;
        }
        for (i, (t, label)) in self.events.iter().enumerate() {
            chart.draw_series(std::iter::once(vline(*t, BLACK, 1)))?;
            chart.draw_series(std::iter::once(Text::new(
                label.clone(),
                (s(*t) - dur_s * 0.003, caller_y.1 + 0.55 - 0.3 * i as f64),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Bottom)),
            )))?;
        }

        // Truncations: where the claim falls on the agent's track, and the numbers.
        for cut in &self.cuts {
            let mut lines = vec![
                format!("truncate {}", cut.item_id),
                format!(
                    "audio_end_ms {} of {} ms sent (rtt {} ms)",
                    cut.claimed_ms, cut.sent_ms, cut.rtt_ms
                ),
            ];
            if let Some(h) = cut.heard_ms {
                lines.push(format!(
                    "caller heard {h} ms: error {:+} ms",
                    cut.claimed_ms as i64 - h as i64
                ));
            }
            let at = cut.item_start.map(|st| s(st + cut.claimed_ms as f64));
            if let (Some(start), Some(at)) = (cut.item_start, at) {
                // A bracket from the item's first audio to the claimed point, then a marker.
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(s(start), agent_y.1 + 0.02), (s(start), cut_y), (at, cut_y)],
                    cut_c.stroke_width(1),
                )))?;
                chart.draw_series(std::iter::once(Polygon::new(
                    vec![
                        (at, agent_y.1 - 0.02),
                        (at - dur_s * 0.004, cut_y + 0.08),
                        (at + dur_s * 0.004, cut_y + 0.08),
                    ],
                    cut_c.filled(),
                )))?;
            }
            let x = at.unwrap_or(s(cut.at));
            let (hpos, dx) = if x < dur_s * 0.6 {
                (HPos::Left, dur_s * 0.008)
            } else {
                (HPos::Right, -dur_s * 0.008)
            };
            let n = lines.len();
            for (k, line) in lines.iter().enumerate() {
                chart.draw_series(std::iter::once(Text::new(
                    line.clone(),
                    (x + dx, cut_y + 0.12 + 0.32 * (n - 1 - k) as f64),
                    ("sans-serif", 14)
                        .into_font()
                        .color(&cut_c)
                        .pos(Pos::new(hpos, VPos::Bottom)),
                )))?;
            }
        }
        root.present()?;
        Ok(())
    }
}

/// What `call_report` does: reads the recording at `file`, writes its picture to `svg` and
/// returns the summary.
pub fn report(file: &std::path::Path, svg: &std::path::Path) -> Result<String, String> {
    let entries =
        twilio_realtime::session::recording::read_file(file).map_err(|e| e.to_string())?;
    if entries.is_empty() {
        return Err("the recording is empty".into());
    }
    let picture = Picture::from_recording(&entries).svg()?;
    if let Some(dir) = svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(svg, picture).map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    Ok(summary(&entries))
}

/// A one-screen text summary of a recording.
pub fn summary(entries: &[Entry]) -> String {
    use std::fmt::Write;
    let p = Picture::from_recording(entries);
    let mut es: Vec<&Entry> = entries.iter().collect();
    es.sort_by_key(|e| e.t_us);
    let mut out = String::new();
    let mut call_sid = "?".to_string();
    let mut stream_sid = "?".to_string();
    let mut params = Vec::new();
    let mut closed = "(no close record: the recording is incomplete)".to_string();
    let mut connected_at = None;
    let mut connections = 0;
    let mut interrupts = Vec::new();
    let mut errors = Vec::new();
    let mut dropped = 0;
    let mut turns = 0;
    for e in &es {
        match &e.record {
            Record::TwilioStart {
                call_sid: c,
                stream_sid: s,
                parameter_names,
                ..
            } => {
                call_sid = c.clone();
                stream_sid = s.clone();
                params = parameter_names.clone();
            }
            Record::ModelConnected => {
                connections += 1;
                connected_at.get_or_insert(ms(e));
            }
            Record::Closed { reason } => closed = reason.clone(),
            Record::Interrupted { cause, heard } => interrupts.push((ms(e), cause, heard)),
            Record::Error { source, message } => errors.push(format!("{source}: {message}")),
            Record::Dropped { lines } => dropped = *lines,
            Record::AgentStart { .. } => turns += 1,
            _ => {}
        }
    }
    let secs = |ms: f64| ms / 1000.0;
    let span_sum = |v: &[(f64, f64)]| v.iter().map(|(a, b)| b - a).sum::<f64>();
    let caller_talk = if p.vad.is_empty() {
        let talk: f64 = es
            .iter()
            .filter_map(|e| match &e.record {
                Record::CallerAudio { ms, level } if *level >= TALK_LEVEL => Some(f64::from(*ms)),
                _ => None,
            })
            .sum();
        format!("{:.1} s (audio above level {TALK_LEVEL})", secs(talk))
    } else {
        format!("{:.1} s (the model's VAD)", secs(span_sum(&p.vad)))
    };
    let agent_talk: f64 = p.agent.iter().map(|l| l.to - l.from).sum();
    let _ = writeln!(out, "call      {call_sid}  stream {stream_sid}");
    if !params.is_empty() {
        let _ = writeln!(out, "params    {} (values not recorded)", params.join(", "));
    }
    let _ = writeln!(out, "duration  {:.1} s; closed: {closed}", secs(p.duration));
    let _ = writeln!(
        out,
        "talk      caller {caller_talk}; agent {:.1} s played (estimated), {turns} response(s)",
        secs(agent_talk)
    );
    let _ = writeln!(
        out,
        "model     {connections} connection(s){}",
        connected_at
            .map(|t| format!(", first one open after {t:.0} ms"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "twilio    {} marks sent, {} echoed, {} clear(s), round trip ~{:.0} ms",
        p.marks_sent.len(),
        p.marks_echoed.len(),
        p.clears.len(),
        p.rtt_ms
    );
    const MAX_ROWS: usize = 8;
    let _ = writeln!(out, "barge-ins {}", interrupts.len());
    for (t, cause, heard) in interrupts.iter().take(MAX_ROWS) {
        let items: Vec<String> = heard
            .iter()
            .map(|(item, h)| {
                let sent = p
                    .cuts
                    .iter()
                    .find(|c| &c.item_id == item)
                    .map(|c| format!(" of {} ms sent", c.sent_ms))
                    .unwrap_or_default();
                format!("{item} truncated at {h} ms{sent}")
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:>6.2} s  {cause}: {}",
            secs(*t),
            if items.is_empty() {
                "nothing was playing".to_string()
            } else {
                items.join("; ")
            }
        );
    }
    if interrupts.len() > MAX_ROWS {
        let _ = writeln!(out, "  … and {} more", interrupts.len() - MAX_ROWS);
    }
    let _ = writeln!(out, "tools     {}", p.tools.len());
    for t in p.tools.iter().take(MAX_ROWS) {
        let _ = writeln!(out, "  {:>6.2} s  {}", secs(t.from), t.label);
    }
    if p.tools.len() > MAX_ROWS {
        let _ = writeln!(out, "  … and {} more", p.tools.len() - MAX_ROWS);
    }
    if !errors.is_empty() {
        let _ = writeln!(out, "errors    {}", errors.len());
        for e in errors.iter().take(5) {
            let _ = writeln!(out, "  {e}");
        }
    }
    if dropped > 0 {
        let _ = writeln!(
            out,
            "warning   {dropped} line(s) were dropped while recording"
        );
    }
    out
}
