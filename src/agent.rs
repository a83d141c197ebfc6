//! Agents, function tools, handoffs and output guardrails: what the application configures.
//!
//! ```
//! use serde_json::json;
//! use twilio_realtime::agent::{Agent, FunctionTool, OutputGuardrail, Verdict};
//!
//! let weather = FunctionTool::new(
//!     "get_weather",
//!     "Get the weather in a city.",
//!     json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}),
//!     |call| {
//!         let city = call.arguments["location"].as_str().unwrap_or("nowhere");
//!         Ok(format!("It is sunny in {city}."))
//!     },
//! );
//! let billing = Agent::new("Billing", "You help with invoices.")
//!     .handoff_description("Questions about invoices and payments");
//! let agent = Agent::new("Greeter", "You greet callers and route them.")
//!     .voice("marin")
//!     .tool(weather)
//!     .handoff(&billing)
//!     .output_guardrail(OutputGuardrail::new("no_prices", |text: &str| {
//!         if text.contains('$') { Verdict::trip("mentioned a price") } else { Verdict::Pass }
//!     }));
//! assert_eq!(agent.tool_definitions().len(), 2); // get_weather + transfer_to_billing
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::proto::realtime::ToolDefinition;
use crate::telephony::transfer::{Destination, DestinationError, TransferTarget};

/// The built-in tool an agent with [`Agent::can_hang_up`] offers the model to end the call.
pub const END_CALL_TOOL: &str = "end_call";

/// The built-in tool an agent with [`Agent::transfer_to`] offers the model to transfer the
/// caller to a person; its one parameter, `destination`, is an enum of the configured names.
pub const TRANSFER_TOOL: &str = "transfer_call";

/// The error type a tool handler returns; its text becomes the output the model sees.
pub type ToolError = Box<dyn std::error::Error + Send + Sync>;

/// Why a tool run gave no output ([`FunctionTool::invoke`], `call::Input::ToolResult`). The
/// model is told `Error: <text>` either way; the application gets a
/// [`crate::CallError::ToolPanicked`] event for a panic, and `ToolEnd { is_error: true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolFailure {
    /// The handler returned an error (its text).
    Failed(String),
    /// The handler panicked (the panic's message).
    Panicked(String),
    /// The tool was not started: too many of the call's tools are running, or no worker
    /// thread could be spawned (why).
    NotStarted(String),
}

impl std::fmt::Display for ToolFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolFailure::Failed(e) | ToolFailure::NotStarted(e) => f.write_str(e),
            ToolFailure::Panicked(_) => f.write_str("the tool panicked"),
        }
    }
}

impl std::error::Error for ToolFailure {}

/// A function call the model made, as handed to a tool handler.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The model's call id.
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, parsed from the model's JSON (an empty object if the model sent none).
    pub arguments: Value,
    /// The arguments exactly as the model sent them.
    pub raw_arguments: String,
    /// Who is on the line (e.g. look the caller's account up by
    /// [`CallInfo::from`](crate::telephony::call_info::CallInfo::from)). Set by the session for every
    /// invocation once Twilio's `start` has arrived; `None` when a [`crate::call::CallCore`] is
    /// driven without a session.
    pub call_info: Option<Arc<crate::telephony::call_info::CallInfo>>,
}

type Handler = dyn Fn(&ToolCall) -> Result<String, ToolError> + Send + Sync;

/// A function tool the model may call. Its handler runs on a worker thread, never on the
/// thread that moves audio, so a slow tool cannot delay the call.
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use twilio_realtime::agent::{FunctionTool, ToolCall, ToolFailure};
///
/// let lookup = FunctionTool::new(
///     "order_status",
///     "Look up an order by its number.",
///     json!({"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}),
///     |call| match call.arguments["order"].as_str() {
///         Some("A-1") => Ok("Shipped yesterday.".to_owned()),
///         Some(other) => Err(format!("no order {other}").into()),
///         None => Err("no order number".into()),
///     },
/// )
/// .timeout(Duration::from_secs(5));
///
/// // What the session does on a worker thread when the model calls it: the output, or the
/// // error's text, goes back to the model as the function call's output.
/// let call = |args: &str| ToolCall {
///     call_id: "call_1".into(),
///     name: "order_status".into(),
///     arguments: serde_json::from_str(args).unwrap(),
///     raw_arguments: args.into(),
///     call_info: None, // the session sets who is on the line
/// };
/// assert_eq!(lookup.invoke(&call(r#"{"order":"A-1"}"#)), Ok("Shipped yesterday.".to_owned()));
/// assert_eq!(
///     lookup.invoke(&call(r#"{"order":"Z-9"}"#)),
///     Err(ToolFailure::Failed("no order Z-9".to_owned()))
/// );
/// assert_eq!(lookup.definition().name, "order_status");
/// ```
#[derive(Clone)]
pub struct FunctionTool {
    name: String,
    description: String,
    parameters: Value,
    handler: Arc<Handler>,
    needs_approval: bool,
    timeout: Option<Duration>,
}

impl fmt::Debug for FunctionTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionTool")
            .field("name", &self.name)
            .field("needs_approval", &self.needs_approval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl FunctionTool {
    /// A tool with a name, a description for the model, JSON-schema `parameters` and a handler
    /// returning the output text (or an error, whose text the model sees instead).
    pub fn new<F>(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        handler: F,
    ) -> FunctionTool
    where
        F: Fn(&ToolCall) -> Result<String, ToolError> + Send + Sync + 'static,
    {
        FunctionTool {
            name: name.into(),
            description: description.into(),
            parameters,
            handler: Arc::new(handler),
            needs_approval: false,
            timeout: None,
        }
    }

    /// Require the application's approval ([`crate::session::Session::approve`]) before
    /// each call runs.
    pub fn needs_approval(mut self, yes: bool) -> FunctionTool {
        self.needs_approval = yes;
        self
    }

    /// Give up on a call after `timeout`; the model is told the tool timed out.
    pub fn timeout(mut self, timeout: Duration) -> FunctionTool {
        self.timeout = Some(timeout);
        self
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if every call waits for the application's approval.
    pub fn requires_approval(&self) -> bool {
        self.needs_approval
    }

    /// The per-call timeout, if set.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The definition sent to the model.
    pub fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.parameters.clone(),
        }
    }

    /// Runs the handler on the calling thread. Panics inside the handler are caught and
    /// reported as [`ToolFailure::Panicked`].
    pub fn invoke(&self, call: &ToolCall) -> Result<String, ToolFailure> {
        let handler = self.handler.clone();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(call))) {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(ToolFailure::Failed(e.to_string())),
            Err(p) => Err(ToolFailure::Panicked(crate::io::ws::panic_text(p.as_ref()))),
        }
    }
}

/// The verdict of an output guardrail on the agent's text so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong.
    Pass,
    /// The output must be stopped.
    Trip {
        /// Why, for the application and for the feedback sent to the model.
        reason: String,
    },
}

impl Verdict {
    /// A tripped verdict.
    pub fn trip(reason: impl Into<String>) -> Verdict {
        Verdict::Trip {
            reason: reason.into(),
        }
    }
}

type GuardrailFn = dyn Fn(&str) -> Verdict + Send + Sync;

/// A check run on the agent's spoken transcript while it speaks (every
/// [`crate::call::CallConfig::guardrail_debounce_chars`] characters and on the final text),
/// off the audio path. A trip interrupts the agent like a barge-in.
#[derive(Clone)]
pub struct OutputGuardrail {
    name: String,
    check: Arc<GuardrailFn>,
}

impl fmt::Debug for OutputGuardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputGuardrail")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl OutputGuardrail {
    /// A named guardrail.
    pub fn new<F>(name: impl Into<String>, check: F) -> OutputGuardrail
    where
        F: Fn(&str) -> Verdict + Send + Sync + 'static,
    {
        OutputGuardrail {
            name: name.into(),
            check: Arc::new(check),
        }
    }

    /// The guardrail's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the check; a panic counts as a pass and is logged.
    pub fn check(&self, text: &str) -> Verdict {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.check)(text))) {
            Ok(v) => v,
            Err(_) => {
                log::error!(target: "twilio_realtime::tools", "guardrail {} panicked", self.name);
                Verdict::Pass
            }
        }
    }
}

/// Where a handoff leads: an agent, or an agent's name resolved among every agent reachable
/// from the session's starting agent (which lets two agents hand off to each other).
#[derive(Debug, Clone)]
enum HandoffTarget {
    Agent(Agent),
    Named(String),
}

/// A voice agent: instructions, voice, tools, handoffs and output guardrails. Cheap to clone.
///
/// ```
/// use twilio_realtime::agent::Agent;
///
/// let orders = Agent::new("Orders", "You answer questions about orders. Be brief.")
///     .handoff_description("Anything about an existing order");
/// let front = Agent::new("Front desk", "You greet callers and pass them on.")
///     .voice("marin")
///     .handoff(&orders);
///
/// // A handoff is a tool the model can call; calling it switches the session to `orders`.
/// let tools: Vec<String> = front.tool_definitions().into_iter().map(|t| t.name).collect();
/// assert_eq!(tools, ["transfer_to_orders"]);
/// assert_eq!(front.reachable().len(), 2); // every agent a call can end up with
/// ```
#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

#[derive(Debug, Clone)]
struct AgentInner {
    name: String,
    instructions: String,
    handoff_description: String,
    voice: Option<String>,
    tools: Vec<FunctionTool>,
    handoffs: Vec<HandoffTarget>,
    guardrails: Vec<OutputGuardrail>,
    hang_up: bool,
    transfers: Vec<TransferTarget>,
}

impl Agent {
    /// An agent with a name and instructions.
    pub fn new(name: impl Into<String>, instructions: impl Into<String>) -> Agent {
        Agent {
            inner: Arc::new(AgentInner {
                name: name.into(),
                instructions: instructions.into(),
                handoff_description: String::new(),
                voice: None,
                tools: Vec::new(),
                handoffs: Vec::new(),
                guardrails: Vec::new(),
                hang_up: false,
                transfers: Vec::new(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut AgentInner)) -> Agent {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// The voice the model speaks with (e.g. `"marin"`). The Realtime API cannot change the
    /// voice once the assistant has spoken, so a handoff keeps the earlier voice then.
    pub fn voice(self, voice: impl Into<String>) -> Agent {
        let v = voice.into();
        self.edit(|a| a.voice = Some(v))
    }

    /// What other agents' models are told about this agent when they may hand off to it.
    pub fn handoff_description(self, text: impl Into<String>) -> Agent {
        let t = text.into();
        self.edit(|a| a.handoff_description = t)
    }

    /// Adds a function tool.
    pub fn tool(self, tool: FunctionTool) -> Agent {
        self.edit(|a| a.tools.push(tool))
    }

    /// Allows handing the call to `agent` (a tool `transfer_to_<name>` for the model).
    pub fn handoff(self, agent: &Agent) -> Agent {
        let t = HandoffTarget::Agent(agent.clone());
        self.edit(|a| a.handoffs.push(t))
    }

    /// Allows handing the call to the agent named `name`, found among every agent reachable
    /// from the session's starting agent. Use it for cycles (A ⇄ B).
    pub fn handoff_to_name(self, name: impl Into<String>) -> Agent {
        let t = HandoffTarget::Named(name.into());
        self.edit(|a| a.handoffs.push(t))
    }

    /// Adds an output guardrail.
    pub fn output_guardrail(self, guardrail: OutputGuardrail) -> Agent {
        self.edit(|a| a.guardrails.push(guardrail))
    }

    /// Lets the model end the call: adds the built-in tool [`END_CALL_TOOL`] (`end_call`).
    /// When the model calls it (in the response that says goodbye, or in the next one) the
    /// bridge gives it its output but asks for no further response, and the call ends once the
    /// caller has heard everything the agent said (every chunk's mark echoed by Twilio), at
    /// most [`crate::call::CallConfig::hang_up_timeout`] later, with
    /// [`crate::events::CloseReason::AgentHungUp`]. Closing the stream ends `<Connect>`:
    /// Twilio runs the next TwiML verb, and with none the call ends.
    pub fn can_hang_up(self) -> Agent {
        self.edit(|a| a.hang_up = true)
    }

    /// Lets the model transfer the caller to a person at `destination` (an E.164 number such
    /// as `+14155550100`, or a `sip:`/`sips:` URI), chosen by `name`; `description` tells the
    /// model when to choose it. The first destination adds the built-in tool
    /// [`TRANSFER_TOOL`] (`transfer_call`), whose `destination` parameter is an enum of the
    /// configured names: the model can never dial anything else. A transfer ends the stream
    /// like [`Agent::can_hang_up`] (after the agent's last words were heard) with
    /// [`crate::events::CloseReason::Transferred`]; Twilio then dials the destination (see
    /// [`crate::telephony::transfer`]). A second destination with the same name replaces the first.
    ///
    /// ```
    /// use twilio_realtime::agent::Agent;
    ///
    /// let agent = Agent::new("Front desk", "You help callers.")
    ///     .transfer_to("Sales", "+14155550100", "Buying something new")?
    ///     .transfer_to("Support", "sip:support@pbx.example.com", "A problem with an order")?;
    /// let tool = agent.tool_definitions().pop().unwrap();
    /// assert_eq!(tool.name, "transfer_call");
    /// assert_eq!(tool.parameters["properties"]["destination"]["enum"], serde_json::json!(["Sales", "Support"]));
    /// assert!(Agent::new("A", "x").transfer_to("Anyone", "555-0100", "").is_err());
    /// # Ok::<(), twilio_realtime::telephony::transfer::DestinationError>(())
    /// ```
    pub fn transfer_to(
        self,
        name: impl Into<String>,
        destination: &str,
        description: impl Into<String>,
    ) -> Result<Agent, DestinationError> {
        let target = TransferTarget {
            name: name.into(),
            destination: Destination::parse(destination)?,
            description: description.into(),
        };
        Ok(self.edit(|a| {
            a.transfers.retain(|t| t.name != target.name);
            a.transfers.push(target);
        }))
    }

    /// True if the model may end the call ([`Agent::can_hang_up`]).
    pub fn hangs_up(&self) -> bool {
        self.inner.hang_up
    }

    /// The destinations the model may transfer the caller to ([`Agent::transfer_to`]).
    pub fn transfers(&self) -> &[TransferTarget] {
        &self.inner.transfers
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The agent's instructions.
    pub fn instructions(&self) -> &str {
        &self.inner.instructions
    }

    /// The agent's voice, if set.
    pub fn voice_name(&self) -> Option<&str> {
        self.inner.voice.as_deref()
    }

    /// The agent's function tools.
    pub fn tools(&self) -> &[FunctionTool] {
        &self.inner.tools
    }

    /// The agent's output guardrails.
    pub fn guardrails(&self) -> &[OutputGuardrail] {
        &self.inner.guardrails
    }

    /// Names of the agents this one may hand off to.
    pub fn handoff_names(&self) -> Vec<String> {
        self.inner
            .handoffs
            .iter()
            .map(|h| match h {
                HandoffTarget::Agent(a) => a.name().to_owned(),
                HandoffTarget::Named(n) => n.clone(),
            })
            .collect()
    }

    /// Agents given directly (not by name) as handoff targets.
    pub fn handoff_agents(&self) -> impl Iterator<Item = &Agent> {
        self.inner.handoffs.iter().filter_map(|h| match h {
            HandoffTarget::Agent(a) => Some(a),
            HandoffTarget::Named(_) => None,
        })
    }

    /// Looks up a function tool by name.
    pub fn find_tool(&self, name: &str) -> Option<&FunctionTool> {
        self.inner.tools.iter().find(|t| t.name == name)
    }

    /// Every tool definition sent to the model: the function tools, one `transfer_to_<agent>`
    /// per handoff, then the built-ins `end_call` ([`Agent::can_hang_up`]) and
    /// `transfer_call` ([`Agent::transfer_to`]) if enabled.
    pub fn tool_definitions(&self) -> Vec<ToolDefinition> {
        let mut defs: Vec<ToolDefinition> =
            self.inner.tools.iter().map(|t| t.definition()).collect();
        for h in &self.inner.handoffs {
            let (name, desc) = match h {
                HandoffTarget::Agent(a) => {
                    (a.name().to_owned(), a.inner.handoff_description.clone())
                }
                HandoffTarget::Named(n) => (n.clone(), String::new()),
            };
            let mut description = format!("Hand the conversation to the {name} agent.");
            if !desc.is_empty() {
                description.push(' ');
                description.push_str(&desc);
            }
            defs.push(ToolDefinition {
                name: handoff_tool_name(&name),
                description,
                parameters: serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false}),
            });
        }
        if self.inner.hang_up {
            defs.push(ToolDefinition {
                name: END_CALL_TOOL.to_owned(),
                description: "End the phone call. Call it when the conversation is over, after \
                    saying goodbye (in the same response or right after it). The caller hears \
                    everything you said before the line closes. Say nothing after calling it."
                    .to_owned(),
                parameters: serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false}),
            });
        }
        if !self.inner.transfers.is_empty() {
            let names: Vec<&str> = self
                .inner
                .transfers
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            let mut description = String::from(
                "Transfer the caller to a person and leave the call. First tell the caller you \
                 are transferring them; they hear that before the transfer. Say nothing after \
                 calling it. Destinations:",
            );
            for t in &self.inner.transfers {
                description.push_str(&format!("\n- {}", t.name));
                if !t.description.is_empty() {
                    description.push_str(&format!(": {}", t.description));
                }
            }
            defs.push(ToolDefinition {
                name: TRANSFER_TOOL.to_owned(),
                description,
                parameters: serde_json::json!({
                    "type": "object",
                    "properties": {"destination": {
                        "type": "string",
                        "enum": names,
                        "description": "Who to transfer the caller to."
                    }},
                    "required": ["destination"],
                    "additionalProperties": false
                }),
            });
        }
        defs
    }

    /// Every agent reachable from this one through handoffs given as agents (this one first).
    pub fn reachable(&self) -> Vec<Agent> {
        let mut out: Vec<Agent> = vec![self.clone()];
        let mut i = 0;
        while i < out.len() {
            let next: Vec<Agent> = out[i].handoff_agents().cloned().collect();
            for a in next {
                if !out.iter().any(|o| o.name() == a.name()) {
                    out.push(a);
                }
            }
            i += 1;
        }
        out
    }
}

/// The tool name the model calls to hand off to the agent `agent_name`:
/// `transfer_to_` + the name in lower case with every run of other characters as `_`.
pub fn handoff_tool_name(agent_name: &str) -> String {
    let mut s = String::from("transfer_to_");
    let mut last_us = true;
    for c in agent_name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
            last_us = false;
        } else if !last_us {
            s.push('_');
            last_us = true;
        }
    }
    while s.ends_with('_') && s.len() > "transfer_to_".len() {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_names() {
        assert_eq!(handoff_tool_name("Billing"), "transfer_to_billing");
        assert_eq!(
            handoff_tool_name("Tech Support!"),
            "transfer_to_tech_support"
        );
        assert_eq!(handoff_tool_name("  a--b "), "transfer_to_a_b");
    }

    #[test]
    fn reachable_handles_cycles_by_name() {
        let b = Agent::new("B", "b").handoff_to_name("A");
        let a = Agent::new("A", "a").handoff(&b);
        let names: Vec<_> = a.reachable().iter().map(|x| x.name().to_owned()).collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!(b.handoff_names(), ["A"]);
        assert_eq!(b.tool_definitions()[0].name, "transfer_to_a");
    }

    #[test]
    fn tool_errors_and_panics_become_text() {
        let t = FunctionTool::new("t", "d", serde_json::json!({}), |c| {
            if c.arguments["boom"].as_bool() == Some(true) {
                panic!("boom");
            }
            Err("no such city".into())
        });
        let call = |v| ToolCall {
            call_id: "c".into(),
            name: "t".into(),
            arguments: v,
            raw_arguments: String::new(),
            call_info: None,
        };
        assert_eq!(
            t.invoke(&call(serde_json::json!({}))),
            Err(ToolFailure::Failed("no such city".into()))
        );
        assert_eq!(
            t.invoke(&call(serde_json::json!({"boom": true}))),
            Err(ToolFailure::Panicked("boom".into()))
        );
    }
}
