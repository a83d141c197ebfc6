//! The application's commands and the passing of time (timeouts, probes, the end of a drain).
//!
//! Part of [`CallCore`]'s `impl` (see the [`crate::call`] module docs).

use super::*;

impl CallCore {
    /// A command from the application.
    pub(super) fn handle_command(&mut self, now: Instant, cmd: Command) {
        if self.is_ended() {
            return;
        }
        let Some(cmd) = (if self.live.is_some() {
            self.live_command(cmd)
        } else {
            Some(cmd)
        }) else {
            return;
        };
        match cmd {
            Command::SendMessage(text) => {
                self.send_model(ClientEvent::ConversationItemCreate {
                    event_id: None,
                    previous_item_id: None,
                    item: Item::user_text(text),
                });
                self.needs_response = true;
                self.maybe_create_response();
            }
            Command::Interrupt => self.barge_in(now, InterruptCause::Application),
            Command::Approve(call_id) => match self.tools.get(&call_id) {
                Some(p) if p.awaiting_approval => {
                    let Some(p) = self.tools.remove(&call_id) else {
                        return;
                    };
                    self.start_tool(now, p.call, p.tool);
                }
                _ => log::warn!(target: TOOLS_LOG, "approve: no call {call_id} waits for approval"),
            },
            Command::Reject { call_id, message } => match self.tools.get(&call_id) {
                Some(p) if p.awaiting_approval => {
                    let Some(p) = self.tools.remove(&call_id) else {
                        return;
                    };
                    let agent = self.agent.name().to_owned();
                    let msg = message.unwrap_or_else(|| {
                        "The caller's operator did not allow this tool call.".into()
                    });
                    self.tool_output(&agent, &p.call.name, &call_id, msg, true);
                }
                _ => log::warn!(target: TOOLS_LOG, "reject: no call {call_id} waits for approval"),
            },
            Command::UpdateAgent(agent) => self.set_agent(agent),
            Command::CreateResponse(cfg) => {
                self.next_response = (cfg != ResponseConfig::default()).then_some(cfg);
                self.needs_response = true;
                self.maybe_create_response();
            }
            Command::CommitAudio => {
                self.send_model(ClientEvent::InputAudioBufferCommit { event_id: None })
            }
            Command::SendRaw(json) => match self.raw_event(&json) {
                Ok(ev) => self.send_model(ev),
                Err(why) => {
                    log::warn!(target: LOG, "raw client event refused: {why}");
                    self.error(CallError::CommandRefused {
                        message: format!("raw client event refused: {why}"),
                    });
                }
            },
            Command::HangUp => self.begin_ending(now, CloseReason::HungUp),
            Command::Transfer(target) => self.begin_ending(
                now,
                CloseReason::Transferred {
                    name: target.name,
                    destination: target.destination,
                    by_agent: false,
                },
            ),
            Command::Close => {
                self.out(Output::CloseModel);
                self.out(Output::CloseTwilio);
                self.finish(CloseReason::Closed);
            }
        }
    }

    /// Checks a raw client event of the application (see [`Command::SendRaw`]).
    pub(super) fn raw_event(&mut self, json: &str) -> Result<ClientEvent, String> {
        let mut v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON ({e})"))?;
        let Some(event_type) = v.get("type").and_then(Value::as_str).map(str::to_owned) else {
            return Err("not a JSON object with a string \"type\"".into());
        };
        if event_type != "session.update" {
            return Ok(ClientEvent::Raw {
                json: json.to_owned(),
                event_type,
            });
        }
        for dir in ["input", "output"] {
            let f = &v["session"]["audio"][dir]["format"];
            if !f.is_null() && f["type"] != "audio/pcmu" {
                return Err(format!(
                    "session.audio.{dir}.format must stay audio/pcmu on a phone call, not {f}"
                ));
            }
        }
        // Tag it so a refusal can be told apart and a confirmation waited for.
        if v.get("event_id").and_then(Value::as_str).is_none() {
            v["event_id"] = Value::String(self.next_id("session"));
        }
        Ok(ClientEvent::Raw {
            json: v.to_string(),
            event_type,
        })
    }

    /// Time passed: tool and approval timeouts, the end of a drain, round-trip probes, a
    /// silent Twilio stream, model pings and their answers.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if self.is_ended() {
            return;
        }
        let expired: Vec<String> = self
            .tools
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for call_id in expired {
            let Some(p) = self.tools.remove(&call_id) else {
                continue;
            };
            let agent = self.agent.name().to_owned();
            if p.awaiting_approval {
                log::warn!(
                    target: TOOLS_LOG,
                    "tool {} ({call_id}) was not approved within {:?}; rejected",
                    p.call.name,
                    self.opts.approval_timeout
                );
                self.error(CallError::ToolApprovalTimedOut {
                    tool: p.call.name.clone(),
                    call_id: call_id.clone(),
                });
                self.tool_output(
                    &agent,
                    &p.call.name,
                    &call_id,
                    APPROVAL_TIMEOUT_OUTPUT.into(),
                    true,
                );
            } else {
                log::warn!(target: TOOLS_LOG, "tool {} timed out", p.call.name);
                self.error(CallError::ToolTimedOut {
                    tool: p.call.name.clone(),
                    call_id: call_id.clone(),
                });
                self.tool_output(
                    &agent,
                    &p.call.name,
                    &call_id,
                    "Error: the tool timed out.".into(),
                    true,
                );
            }
        }
        if self
            .draining
            .as_ref()
            .is_some_and(|d| d.0.is_some_and(|t| t <= now))
        {
            self.finish_drain();
        }
        if self
            .ending
            .as_ref()
            .is_some_and(|e| e.0.is_some_and(|t| t <= now))
        {
            log::warn!(
                target: LOG,
                "the agent's last words were not heard within {:?}; ending the call anyway",
                self.opts.hang_up_timeout
            );
            self.finish_ending();
            return;
        }
        if self.model_setup_deadline().is_some_and(|t| t <= now) {
            self.setup_deadline = None;
            self.model = ModelState::Gone;
            self.out(Output::ModelNotReady);
            return self.timed_out(CallError::ModelSetupTimeout {
                waited: self.opts.model_setup_timeout,
            });
        }
        if self.start_deadline.is_some_and(|t| t <= now) {
            self.start_deadline = None;
            return self.timed_out(CallError::StreamNeverStarted {
                waited: self.opts.start_timeout,
            });
        }
        if self.twilio_silence_deadline().is_some_and(|t| t <= now) {
            return self.timed_out(CallError::TwilioSilent {
                waited: self.opts.twilio_silence_timeout,
            });
        }
        if self.model_liveness_deadline().is_some_and(|t| t <= now) {
            if self.ping_sent.is_some() {
                let error = CallError::ModelUnresponsive {
                    waited: self.opts.model_pong_timeout,
                };
                // The socket may still be open (a half-open peer): close it ourselves.
                self.out(Output::CloseModel);
                self.handle_model_closed(now, error);
                if self.is_ended() {
                    return;
                }
            } else {
                self.ping_sent = Some(now);
                self.out(Output::PingModel);
            }
        }
        if self.next_probe_at.is_some_and(|t| t <= now) {
            self.next_probe_at = None;
            if let Some(name) = self.ledger.start_probe(now) {
                self.twilio_mark(name);
            }
        }
        self.live_on_timeout(now);
    }

    /// A call-ending timer ran out (`error` says which and how long it waited): log it, close
    /// both sockets, end the call.
    fn timed_out(&mut self, error: CallError) {
        log::warn!(target: LOG, "{error}; ending the call");
        self.close_and_fail(error);
    }
}
