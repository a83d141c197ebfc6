//! Tools and handoffs: function calls run at their response's end, approvals, timeouts, results back to the model, agent switches.
//!
//! Part of [`CallCore`]'s `impl` (see the [`crate::call`] module docs).

use super::*;

impl CallCore {
    /// At `response.done`: runs the response's function calls, unless it was cut (barge-in,
    /// `interrupt()`, a guardrail) or did not complete (`cancelled`, `incomplete`, `failed`),
    /// or the call item itself is not `completed`. Calls that are not run get no output and
    /// no `response.create`: the caller has the floor, and their next turn is answered as
    /// usual (the model sees the unfinished call in the conversation).
    pub(super) fn run_function_calls(
        &mut self,
        now: Instant,
        response: &crate::proto::realtime::Response,
    ) {
        let mut calls = self
            .calls_by_response
            .remove(&response.id)
            .unwrap_or_default();
        // Calls only listed in `response.done` (no `output_item.done` seen) count too.
        for item in response.output.iter().filter(|i| is_function_call(i)) {
            if calls.len() < MAX_CALLS_PER_RESPONSE
                && !calls.iter().any(|c| c.call_id == item.call_id)
            {
                calls.push(item.clone());
            }
        }
        if calls.is_empty() {
            return;
        }
        let completed = response.status.as_deref().is_none_or(|s| s == "completed")
            && !self.cut_responses.contains(&response.id);
        for item in calls {
            let item_done = item.status.as_deref().is_none_or(|s| s == "completed");
            if completed && item_done {
                self.on_function_call(now, &item);
            } else {
                let name = item.name.as_deref().unwrap_or("?");
                log::info!(
                    target: TOOLS_LOG,
                    "function call {name} not run: its response was cut or did not complete"
                );
            }
        }
    }

    pub(super) fn on_function_call(&mut self, now: Instant, item: &Item) {
        let name = item.name.clone().unwrap_or_default();
        let call_id = item.call_id.clone().unwrap_or_default();
        let raw = item.arguments.clone().unwrap_or_default();
        if call_id.is_empty() || self.tools.contains_key(&call_id) {
            log::warn!(target: TOOLS_LOG, "function call without a usable call id ignored");
            return;
        }
        let arguments = if raw.trim().is_empty() {
            Ok(Value::Object(Default::default()))
        } else {
            serde_json::from_str::<Value>(&raw)
        };
        let agent_name = self.agent.name().to_owned();
        if name == END_CALL_TOOL && self.agent.hangs_up() {
            log::info!(target: TOOLS_LOG, "the agent ends the call");
            self.builtin_output(&call_id, END_CALL_OUTPUT.to_owned());
            self.begin_ending(now, CloseReason::AgentHungUp);
            return;
        }
        if name == TRANSFER_TOOL && !self.agent.transfers().is_empty() {
            self.on_transfer_call(now, &call_id, arguments.ok());
            return;
        }
        if let Some(target) = self.handoff_target(&name) {
            self.handoff(&call_id, target);
            return;
        }
        let Some(tool) = self.agent.find_tool(&name).cloned() else {
            log::warn!(target: TOOLS_LOG, "model called unknown tool {name}");
            self.error(CallError::UnknownTool {
                message: format!("the model called an unknown tool: {name}"),
            });
            self.tool_output(
                &agent_name,
                &name,
                &call_id,
                format!("Error: there is no tool named {name}."),
                true,
            );
            return;
        };
        let arguments = match arguments {
            Ok(v) => v,
            Err(e) => {
                self.tool_output(
                    &agent_name,
                    &name,
                    &call_id,
                    format!("Error: the arguments are not valid JSON ({e})."),
                    true,
                );
                return;
            }
        };
        let call = ToolCall {
            call_id: call_id.clone(),
            name: name.clone(),
            arguments,
            raw_arguments: raw.clone(),
            call_info: None,
        };
        if tool.requires_approval() {
            self.tools.insert(
                call_id.clone(),
                PendingTool {
                    call,
                    tool,
                    deadline: now.checked_add(self.opts.approval_timeout),
                    awaiting_approval: true,
                    interrupted: false,
                },
            );
            self.event(SessionEvent::ToolApprovalRequested {
                agent: agent_name,
                tool: name,
                call_id,
                arguments: raw,
            });
            return;
        }
        self.start_tool(now, call, tool);
    }

    /// The output of a built-in tool (`end_call`, `transfer_call`): given so the model's
    /// conversation stays consistent, with no response asked for after it.
    pub(super) fn builtin_output(&mut self, call_id: &str, output: String) {
        self.send_model(ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::function_call_output(call_id, output),
        });
    }

    pub(super) fn on_transfer_call(
        &mut self,
        now: Instant,
        call_id: &str,
        arguments: Option<Value>,
    ) {
        let chosen = arguments
            .as_ref()
            .and_then(|a| a["destination"].as_str())
            .unwrap_or("");
        let target = self
            .agent
            .transfers()
            .iter()
            .find(|t| t.name == chosen)
            .cloned();
        let Some(target) = target else {
            // Only configured destinations can be dialled; the model may choose again.
            let names: Vec<String> = self
                .agent
                .transfers()
                .iter()
                .map(|t| t.name.clone())
                .collect();
            log::warn!(
                target: TOOLS_LOG,
                "transfer_call with an unknown destination ({} bytes) refused",
                chosen.len()
            );
            self.error(CallError::UnknownTool {
                message: "the model asked for a transfer destination that is not configured".into(),
            });
            let agent = self.agent.name().to_owned();
            self.tool_output(
                &agent,
                TRANSFER_TOOL,
                call_id,
                format!(
                    "Error: there is no such destination. Choose one of: {}.",
                    names.join(", ")
                ),
                true,
            );
            return;
        };
        log::info!(target: TOOLS_LOG, "the agent transfers the call to {}", target.name);
        self.builtin_output(
            call_id,
            format!(
                "The caller is being transferred to {} once they have heard what you said. Say nothing more.",
                target.name
            ),
        );
        self.begin_ending(
            now,
            CloseReason::Transferred {
                name: target.name,
                destination: target.destination,
                by_agent: true,
            },
        );
    }

    /// The call will end once the agent's last words are heard (see [`CloseReason::HungUp`]).
    /// The first decision stands.
    pub(super) fn begin_ending(&mut self, now: Instant, reason: CloseReason) {
        if self.ending.is_some() || self.is_ended() {
            log::debug!(target: LOG, "the call is already ending; {reason} ignored");
            return;
        }
        log::info!(target: LOG, "call ending ({reason}) once the last words are heard");
        self.needs_response = false;
        self.greeting = None;
        self.event(SessionEvent::Ending {
            reason: reason.clone(),
        });
        self.ending = Some((after(now, self.opts.hang_up_timeout), reason));
        self.enter_draining();
        self.maybe_end();
    }

    /// Ends an ending call once no response is under way and the caller has heard all the
    /// audio sent (every mark echoed, or what was left cut by a barge-in).
    pub(super) fn maybe_end(&mut self) {
        if self.ending.is_none() || self.is_ended() {
            return;
        }
        let heard = if self.opts.sideband {
            !self.sip_playing
        } else if self.live.is_some() {
            self.live_heard()
        } else {
            self.stream_sid.is_none()
                || (!self.ledger.is_playing() && self.pending_twilio.is_empty())
        };
        if heard && self.active_response.is_none() && self.response_requested.is_none() {
            self.finish_ending();
        }
    }

    pub(super) fn finish_ending(&mut self) {
        if let Some((_, reason)) = self.ending.take() {
            self.out(Output::CloseTwilio);
            self.out(Output::CloseModel);
            self.finish(reason);
        }
    }

    pub(super) fn start_tool(&mut self, now: Instant, call: ToolCall, tool: FunctionTool) {
        let timeout = tool.call_timeout().unwrap_or(self.opts.tool_timeout);
        log::debug!(target: TOOLS_LOG, "running tool {} ({})", call.name, call.call_id);
        self.event(SessionEvent::ToolStart {
            agent: self.agent.name().to_owned(),
            tool: call.name.clone(),
            call_id: call.call_id.clone(),
            arguments: call.raw_arguments.clone(),
        });
        self.out(Output::RunTool {
            call_id: call.call_id.clone(),
            name: call.name.clone(),
            arguments: call.raw_arguments.clone(),
        });
        self.tools.insert(
            call.call_id.clone(),
            PendingTool {
                call,
                tool,
                deadline: after(now, timeout),
                awaiting_approval: false,
                interrupted: false,
            },
        );
    }

    pub(super) fn tool_output(
        &mut self,
        agent: &str,
        tool: &str,
        call_id: &str,
        output: String,
        is_error: bool,
    ) {
        self.tool_output_then(agent, tool, call_id, output, is_error, true);
    }

    /// Gives the model a call's output; asks for a response only when `respond`.
    pub(super) fn tool_output_then(
        &mut self,
        agent: &str,
        tool: &str,
        call_id: &str,
        output: String,
        is_error: bool,
        respond: bool,
    ) {
        self.send_model(ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::function_call_output(call_id, output.clone()),
        });
        self.event(SessionEvent::ToolEnd {
            agent: agent.to_owned(),
            tool: tool.to_owned(),
            call_id: call_id.to_owned(),
            output,
            is_error,
        });
        if respond {
            self.needs_response = true;
        } else {
            log::debug!(target: TOOLS_LOG, "no response.create after {tool}: the agent was interrupted since the call");
        }
        self.maybe_create_response();
    }

    /// A tool run finished (`Ok(output)` or `Err(message)`). Results of calls that timed out
    /// or are unknown are ignored.
    pub(super) fn handle_tool_result(
        &mut self,
        _now: Instant,
        call_id: &str,
        result: Result<String, ToolFailure>,
    ) {
        if self.is_ended() {
            return;
        }
        let Some(p) = self.tools.get(call_id) else {
            log::debug!(target: TOOLS_LOG, "late or unknown tool result for {call_id} ignored");
            return;
        };
        if p.awaiting_approval {
            return;
        }
        let Some(p) = self.tools.remove(call_id) else {
            return;
        };
        let agent = self.agent.name().to_owned();
        let (output, is_error) = match result {
            Ok(s) => (s, false),
            Err(ToolFailure::Panicked(message)) => {
                log::warn!(target: TOOLS_LOG, "tool {} panicked", p.call.name);
                self.error(CallError::ToolPanicked {
                    tool: p.call.name.clone(),
                    call_id: call_id.to_owned(),
                    message,
                });
                (format!("Error: tool {} panicked", p.call.name), true)
            }
            Err(e) => {
                log::info!(target: TOOLS_LOG, "tool {} failed: {e}", p.call.name);
                (format!("Error: {e}"), true)
            }
        };
        self.tool_output_then(
            &agent,
            &p.call.name,
            call_id,
            output,
            is_error,
            !p.interrupted,
        );
    }

    pub(super) fn handoff_target(&self, tool_name: &str) -> Option<Agent> {
        if !tool_name.starts_with("transfer_to_") {
            return None;
        }
        let target = self
            .agent
            .handoff_names()
            .into_iter()
            .find(|n| handoff_tool_name(n) == tool_name)?;
        self.agents.iter().find(|a| a.name() == target).cloned()
    }

    pub(super) fn handoff(&mut self, call_id: &str, target: Agent) {
        let from = self.agent.name().to_owned();
        let to = target.name().to_owned();
        log::info!(target: LOG, "handoff {from} -> {to}");
        self.set_agent(target);
        self.send_model(ClientEvent::ConversationItemCreate {
            event_id: None,
            previous_item_id: None,
            item: Item::function_call_output(
                call_id,
                serde_json::json!({ "assistant": to }).to_string(),
            ),
        });
        self.event(SessionEvent::Handoff { from, to });
        self.needs_response = true;
        self.maybe_create_response();
    }

    pub(super) fn set_agent(&mut self, agent: Agent) {
        self.agent = agent;
        for a in self.agent.reachable() {
            if !self.agents.iter().any(|x| x.name() == a.name()) {
                self.agents.push(a);
            }
        }
        let update = self.session_update();
        self.send_model(update);
    }
}
