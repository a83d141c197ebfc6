//! OpenAI GPT-Live (`/v1/live`) WebSocket events: what the bridge sends ([`ClientEvent`]), what
//! the model sends ([`ServerEvent`]) and the startup [`SessionSettings`] builder.
//!
//! The facts come from the protocol brief vendored in `spec/gpt-live.md` (section numbers
//! below are the brief's) and the JSON Schemas beside it, generated from openai-python 3.57.0:
//!
//! * the connection is `wss://api.openai.com/v1/live/sessions` with **no query parameters**
//!   and only `Authorization: Bearer …` (§1.1, §1.2); the model goes in the config;
//! * the first client event is `session.start`, and nothing else may be sent until
//!   `session.started` (§2); its config is **strict** — unknown fields are refused with
//!   `unknown_parameter` (§2.1) — so this module writes only the fields the schema names and
//!   **omits** unset optional ones instead of sending `null` (§9: the SDK serialises with
//!   `exclude_unset`), except `delegation_id` on the three `*.append` events, which is a
//!   required, nullable key (§6.4) and is always written;
//! * µ-law for Twilio is `audio.format = {"type":"audio/pcmu","rate":8000}`, one format for both
//!   directions (§2.1, §2.2); model, instructions, audio and startup input are **immutable**
//!   after start (§2.4); only `delegation` (same type) and `triggers` can change;
//! * function tools exist only with **Responses delegation** (§6.1, §6.3): they come back as
//!   `response.event` envelopes wrapping a Responses `response.output_item.done` whose item is a
//!   completed `function_call` ([`ResponseEnvelope::function_call`]); results go back as
//!   `response.item.create` with a `function_call_output` item, then `response.create`.
//!
//! Server events this crate does not type are kept whole as [`ServerEvent::Unknown`]; they
//! never end a call (§9.2: "Unknown event types may appear. Parse leniently").
//!
//! ```
//! use twilio_realtime::proto::live::{ClientEvent, ServerEvent, SessionSettings};
//!
//! let start = ClientEvent::SessionStart {
//!     event_id: Some("start".into()),
//!     session: SessionSettings::new("gpt-live-1").instructions("Be brief.").voice("marin"),
//! };
//! let json: serde_json::Value = serde_json::from_str(&start.to_json()).unwrap();
//! assert_eq!(json["session"]["audio"]["format"], serde_json::json!({"type":"audio/pcmu","rate":8000}));
//! assert!(json["session"].get("store").is_none(), "unset fields are omitted");
//!
//! let ev = ServerEvent::parse(r#"{"type":"session.output_audio.delta","delta":"//8="}"#).unwrap();
//! assert!(matches!(ev, ServerEvent::OutputAudioDelta(d) if d.delta == "//8="));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::proto::realtime::ModelError;

/// The default model name (§2.2: `"gpt-live-1"`, `"gpt-live-1.1"` or another string).
pub const DEFAULT_MODEL: &str = "gpt-live-1";

/// The default GPT-Live WebSocket URL (§1.1).
pub const DEFAULT_URL: &str = "wss://api.openai.com/v1/live/sessions";

/// The backend model this crate puts in `delegation.responses.model` when an agent has tools and
/// none is chosen (§2.1: "`gpt-5.6-luna` is only an example backend model … Any supported
/// Responses model may go in `delegation.responses.model`"; it is LiveKit's default).
pub const DEFAULT_BACKEND_MODEL: &str = "gpt-5.6-luna";

// -------------------------------------------------------------------------------------------
// Session configuration

/// An audio format of a GPT-Live primary WebSocket, used for **both** directions (§2.2).
/// `rate` is required inside the object (openai-python `audio_format_param.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AudioFormat {
    /// G.711 µ-law — what Twilio speaks, at 8000 Hz.
    #[serde(rename = "audio/pcmu")]
    Pcmu {
        /// Sample rate (G.711 "uses 8000 Hz").
        rate: u32,
    },
    /// G.711 A-law.
    #[serde(rename = "audio/pcma")]
    Pcma {
        /// Sample rate.
        rate: u32,
    },
    /// 16-bit PCM, 16000 or 24000 Hz (the schema allows only those two).
    #[serde(rename = "audio/pcm")]
    Pcm {
        /// Sample rate.
        rate: u32,
    },
}

impl AudioFormat {
    /// µ-law at 8 kHz, the format a Twilio call passes through unchanged (§2.1).
    pub const TWILIO: AudioFormat = AudioFormat::Pcmu { rate: 8000 };

    /// The wire `type` (`audio/pcmu`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            AudioFormat::Pcmu { .. } => "audio/pcmu",
            AudioFormat::Pcma { .. } => "audio/pcma",
            AudioFormat::Pcm { .. } => "audio/pcm",
        }
    }
}

impl Default for AudioFormat {
    fn default() -> Self {
        AudioFormat::TWILIO
    }
}

/// A function tool for the Responses backend (§6.3, openai-python `function_tool.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionTool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: FunctionToolType,
    /// The function's name.
    pub name: String,
    /// What it does, for the backend model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Strict argument validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// The `type` of a [`FunctionTool`]: always `"function"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FunctionToolType {
    /// `"function"`.
    #[default]
    #[serde(rename = "function")]
    Function,
}

impl FunctionTool {
    /// A function tool with a description and a parameters schema.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        FunctionTool {
            kind: FunctionToolType::Function,
            name: name.into(),
            description: Some(description.into()),
            parameters: Some(parameters),
            strict: None,
        }
    }
}

/// `tool_choice` of the Responses backend: the three string modes (other shapes go through
/// [`ToolChoice::Other`], written as given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `auto`, `none` or `required`.
    Mode(ToolMode),
    /// Any other `tool_choice` object of the schema, as JSON.
    Other(Value),
}

/// The string forms of [`ToolChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    /// The backend decides.
    Auto,
    /// No tools.
    None,
    /// At least one tool.
    Required,
}

/// `delegation.responses` at start (openai-python `responses_delegation_config.py`): `model` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResponsesConfig {
    /// The backend Responses model.
    pub model: String,
    /// The backend's instructions (business rules and tool workflow, §2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Its tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<FunctionTool>>,
    /// How it chooses tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Whether it may call several tools at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Output token cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

/// `delegation.responses` in a `session.update` (openai-python `responses_delegation_update_config.py`):
/// every field optional, omitted ones keep their values (§2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResponsesUpdate {
    /// A new backend model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// New backend instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// New tools (replacing the old ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<FunctionTool>>,
    /// New tool choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Parallel tool calls on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
}

/// Who handles delegated work (§6.1). The type is fixed for the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Delegation {
    /// The application (the default when omitted): no function tools can be declared.
    Client {
        /// Delay before the model's automatic "one moment".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acknowledgement_delay_ms: Option<u32>,
    },
    /// A Responses backend run by OpenAI; function tools come back to the application.
    Responses {
        /// The backend.
        responses: ResponsesConfig,
        /// Delay before the model's automatic "one moment".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acknowledgement_delay_ms: Option<u32>,
    },
}

/// The delegation part of a `session.update` (same type as at start, sparse).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DelegationUpdate {
    /// Client delegation.
    Client {
        /// Delay before the model's automatic "one moment".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acknowledgement_delay_ms: Option<u32>,
    },
    /// Responses delegation.
    Responses {
        /// What changes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        responses: Option<ResponsesUpdate>,
        /// Delay before the model's automatic "one moment".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acknowledgement_delay_ms: Option<u32>,
    },
}

/// The voice, under `audio.output.voice`: a built-in name or a custom voice id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Voice {
    /// A built-in voice (`marin`, `cedar`, …).
    Named(String),
    /// `{"id": "voice_…"}`.
    Custom {
        /// The custom voice's id.
        id: String,
    },
}

/// `audio.output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AudioOutput {
    /// The voice (default `marin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<Voice>,
}

/// `audio` of the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Audio {
    /// The one format of both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    /// Output settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<AudioOutput>,
}

/// The role of a startup [`InputMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A developer message.
    Developer,
    /// What the caller said.
    User,
    /// What the assistant said.
    Assistant,
}

/// One text part of an [`InputMessage`]: `input_text` for developer/user, `output_text` for
/// the assistant (§2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputText {
    /// `input_text` or `output_text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
}

/// A startup history message (`session.input`, text only, one part each, §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputMessage {
    /// Who said it.
    pub role: Role,
    /// Its one text part.
    pub content: Vec<InputText>,
}

impl InputMessage {
    /// A message of `role` with one text part of the right kind.
    pub fn new(role: Role, text: impl Into<String>) -> InputMessage {
        let kind = match role {
            Role::Assistant => "output_text",
            Role::Developer | Role::User => "input_text",
        };
        InputMessage {
            role,
            content: vec![InputText {
                kind: kind.into(),
                text: text.into(),
            }],
        }
    }
}

/// The `session` of `session.start` (openai-python `session_config.py`). Build it with the methods; it
/// always carries an audio format, µ-law 8 kHz unless told otherwise.
///
/// ```
/// use serde_json::json;
/// use twilio_realtime::proto::live::{FunctionTool, SessionSettings};
///
/// let s = SessionSettings::new("gpt-live-1")
///     .instructions("You are a phone assistant.")
///     .voice("cedar")
///     .tools("gpt-5.6-luna", Some("Look orders up.".into()), vec![FunctionTool::new(
///         "lookup_order", "Look up an order", json!({"type":"object"}))]);
/// let v = serde_json::to_value(&s).unwrap();
/// assert_eq!(v["delegation"]["type"], "responses");
/// assert_eq!(v["delegation"]["responses"]["tools"][0]["name"], "lookup_order");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSettings {
    /// The Live model (required).
    pub model: String,
    /// Frontend (voice) instructions; immutable after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Audio format and voice; immutable after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Audio>,
    /// Delegation; its type is fixed for the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,
    /// Startup text history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Vec<InputMessage>>,
    /// Keep the session (forking, recording download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    /// A stable end-user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
}

/// The former name of [`SessionSettings`], renamed so that no two public types share a name
/// with the crate root's [`SessionConfig`](crate::SessionConfig) (the per-call session options).
/// Code that names it still compiles (with a deprecation warning):
///
/// ```
/// use twilio_realtime::proto::live::SessionSettings;
///
/// #[allow(deprecated)]
/// let old: twilio_realtime::proto::live::SessionConfig = SessionSettings::new("gpt-live-1");
/// let _: SessionSettings = old;
/// ```
#[deprecated(since = "0.1.0", note = "renamed to `proto::live::SessionSettings`")]
pub type SessionConfig = SessionSettings;

impl SessionSettings {
    /// A config for `model` with µ-law 8 kHz audio.
    pub fn new(model: impl Into<String>) -> SessionSettings {
        SessionSettings {
            model: model.into(),
            instructions: None,
            audio: Some(Audio {
                format: Some(AudioFormat::TWILIO),
                output: None,
            }),
            delegation: None,
            input: None,
            store: None,
            safety_identifier: None,
        }
    }

    /// Frontend instructions. Blank text is left out (the server's defaults apply, §2.2).
    pub fn instructions(mut self, text: impl Into<String>) -> Self {
        let t = text.into();
        self.instructions = if t.trim().is_empty() { None } else { Some(t) };
        self
    }

    /// The audio format (both directions).
    pub fn format(mut self, f: AudioFormat) -> Self {
        self.audio.get_or_insert_with(Audio::default).format = Some(f);
        self
    }

    /// A built-in voice.
    pub fn voice(mut self, name: impl Into<String>) -> Self {
        self.audio.get_or_insert_with(Audio::default).output = Some(AudioOutput {
            voice: Some(Voice::Named(name.into())),
        });
        self
    }

    /// Responses delegation with these function tools (§6.3), also when there are none: the
    /// delegation type cannot change after `session.start` (§2.4), and a later agent may
    /// bring tools.
    pub fn tools(
        mut self,
        backend_model: impl Into<String>,
        backend_instructions: Option<String>,
        tools: Vec<FunctionTool>,
    ) -> Self {
        self.delegation = Some(Delegation::Responses {
            responses: ResponsesConfig {
                model: backend_model.into(),
                instructions: backend_instructions,
                tools: Some(tools),
                tool_choice: None,
                parallel_tool_calls: None,
                max_output_tokens: None,
            },
            acknowledgement_delay_ms: None,
        });
        self
    }

    /// Any delegation.
    pub fn delegation(mut self, d: Delegation) -> Self {
        self.delegation = Some(d);
        self
    }

    /// Startup history.
    pub fn input(mut self, messages: Vec<InputMessage>) -> Self {
        self.input = Some(messages);
        self
    }

    /// `store`.
    pub fn store(mut self, store: bool) -> Self {
        self.store = Some(store);
        self
    }

    /// `safety_identifier`.
    pub fn safety_identifier(mut self, id: impl Into<String>) -> Self {
        self.safety_identifier = Some(id.into());
        self
    }

    /// The audio format asked for (µ-law 8 kHz when unset by a caller of the builder; `None`
    /// only for a config built by hand without one, which the server would start as 24 kHz PCM).
    pub fn audio_format(&self) -> Option<AudioFormat> {
        self.audio.as_ref().and_then(|a| a.format)
    }

    /// The function tools of a Responses delegation (empty otherwise).
    pub fn function_tools(&self) -> &[FunctionTool] {
        match &self.delegation {
            Some(Delegation::Responses { responses, .. }) => {
                responses.tools.as_deref().unwrap_or(&[])
            }
            _ => &[],
        }
    }
}

/// The `session` of `session.update`: only delegation and triggers (§2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SessionUpdate {
    /// Delegation changes (same type as at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<DelegationUpdate>,
    /// Decision triggers: a list replaces them, `[]` disables them (as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Vec<Value>>,
}

/// An input item for the Responses backend (`response.item.create`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ResponseItem {
    /// A tool's result.
    #[serde(rename = "function_call_output")]
    FunctionCallOutput {
        /// The call it answers.
        call_id: String,
        /// The result (text, usually JSON).
        output: String,
    },
}

// -------------------------------------------------------------------------------------------
// Client events

/// An event the bridge sends GPT-Live (§9.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum ClientEvent {
    /// The first event: the session's configuration (§2).
    #[serde(rename = "session.start")]
    SessionStart {
        /// Client-chosen id, echoed as `client_event_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The configuration.
        session: SessionSettings,
    },
    /// Change delegation or triggers (§2.4).
    #[serde(rename = "session.update")]
    SessionUpdate {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The changes.
        session: SessionUpdate,
    },
    /// Caller audio in the session's format (§3): no commit, no acknowledgement.
    #[serde(rename = "session.input_audio.append")]
    InputAudioAppend {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// Base64 audio.
        audio: String,
    },
    /// The server hears silence instead of the caller; the model keeps speaking (§7.1).
    #[serde(rename = "session.input_audio.mute")]
    InputAudioMute {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// Undo a mute.
    #[serde(rename = "session.input_audio.unmute")]
    InputAudioUnmute {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// A standing developer instruction (≤500 tokens, §6.4).
    #[serde(rename = "session.instructions.append")]
    InstructionsAppend {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The text.
        content: String,
        /// Always written, `null` when none (required, nullable).
        delegation_id: Option<String>,
    },
    /// Speakable context: the model relays it in its own words (§5.4, §6.2).
    #[serde(rename = "session.commentary.append")]
    CommentaryAppend {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The text.
        content: String,
        /// Always written, `null` when none.
        delegation_id: Option<String>,
    },
    /// Silent context (§6.4).
    #[serde(rename = "session.thinking.append")]
    ThinkingAppend {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The text.
        content: String,
        /// Always written, `null` when none.
        delegation_id: Option<String>,
    },
    /// An input item for the Responses backend (§6.3 step 4).
    #[serde(rename = "response.item.create")]
    ResponseItemCreate {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The item.
        item: ResponseItem,
    },
    /// Continue a delegated response waiting for tool results (§6.3 step 4).
    #[serde(rename = "response.create")]
    ResponseCreate {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// Ask the server to finish; it answers `session.closed` (§7.3).
    #[serde(rename = "session.close")]
    SessionClose {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// Any client event, as JSON text written exactly as given (the application's escape
    /// hatch). Never produced by [`ClientEvent::parse`].
    #[serde(skip)]
    Raw {
        /// The event's JSON object.
        json: String,
        /// Its `type`.
        event_type: String,
    },
}

impl ClientEvent {
    /// The event's JSON.
    pub fn to_json(&self) -> String {
        match self {
            ClientEvent::Raw { json, .. } => json.clone(),
            ClientEvent::InputAudioAppend {
                event_id: None,
                audio,
            } => {
                let mut s = String::new();
                write_append_json(&mut s, audio);
                s
            }
            // Serializing these types cannot fail (string keys, no floats).
            _ => serde_json::to_string(self).unwrap_or_default(),
        }
    }

    /// Parses a client event (what a fake server receives).
    pub fn parse(text: &str) -> Result<ClientEvent, ModelError> {
        let ty = peek_type(text)?;
        serde_json::from_str(text).map_err(|source| ModelError::InvalidEvent {
            event_type: ty,
            source,
        })
    }

    /// The wire `type`.
    pub fn event_type(&self) -> &str {
        match self {
            ClientEvent::Raw { event_type, .. } => event_type,
            ClientEvent::SessionStart { .. } => "session.start",
            ClientEvent::SessionUpdate { .. } => "session.update",
            ClientEvent::InputAudioAppend { .. } => "session.input_audio.append",
            ClientEvent::InputAudioMute { .. } => "session.input_audio.mute",
            ClientEvent::InputAudioUnmute { .. } => "session.input_audio.unmute",
            ClientEvent::InstructionsAppend { .. } => "session.instructions.append",
            ClientEvent::CommentaryAppend { .. } => "session.commentary.append",
            ClientEvent::ThinkingAppend { .. } => "session.thinking.append",
            ClientEvent::ResponseItemCreate { .. } => "response.item.create",
            ClientEvent::ResponseCreate { .. } => "response.create",
            ClientEvent::SessionClose { .. } => "session.close",
        }
    }
}

/// Appends `{"type":"session.input_audio.append","audio":"…"}` to `out` without serde (the
/// caller-audio fast path; base64 needs no escaping, other text is escaped correctly).
pub fn write_append_json(out: &mut String, audio_b64: &str) {
    out.reserve(50 + audio_b64.len());
    out.push_str(r#"{"type":"session.input_audio.append","audio":"#);
    if audio_b64
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(audio_b64);
        out.push('"');
    } else {
        out.push_str(&Value::String(audio_b64.to_owned()).to_string());
    }
    out.push('}');
}

// -------------------------------------------------------------------------------------------
// Server events

/// The resolved session (`SessionResource`, §2.3). Fields this crate does not name are kept in
/// `other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SessionResource {
    /// Opaque session id (`live_…`); support asks for it.
    #[serde(default)]
    pub id: String,
    /// Unix seconds when the session expires (`session.closed{reason:"expired"}`).
    #[serde(default)]
    pub expires_at: i64,
    /// The model.
    #[serde(default)]
    pub model: String,
    /// Always `active`.
    #[serde(default)]
    pub status: String,
    /// The resolved audio (format and voice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Audio>,
    /// Everything else (delegation, instructions, input, store, triggers, …).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl SessionResource {
    /// The confirmed audio format, if the server said one.
    pub fn audio_format(&self) -> Option<AudioFormat> {
        self.audio.as_ref().and_then(|a| a.format)
    }
}

/// The `error` object (§7.4): `type`, `code`, `message` required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ApiError {
    /// e.g. `invalid_request_error`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// e.g. `unknown_parameter`, `forbidden`.
    #[serde(default)]
    pub code: String,
    /// Human-readable text.
    #[serde(default)]
    pub message: String,
    /// The offending parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The client event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_event_id: Option<String>,
}

impl ApiError {
    /// Codes LiveKit treats as fatal (§7.4), matched on `code` or `type` ("OpenAI has changed
    /// the code while keeping the type").
    pub fn is_fatal(&self) -> bool {
        const FATAL: [&str; 6] = [
            "insufficient_quota",
            "credit_balance_exhausted",
            "invalid_api_key",
            "account_deactivated",
            "billing_hard_limit_reached",
            "forbidden",
        ];
        FATAL.contains(&self.code.as_str()) || FATAL.contains(&self.kind.as_str())
    }
}

/// Why a session closed (`session.closed.reason`, §7.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionCloseReason {
    /// The application asked (`session.close`), or hung up.
    CloseRequested,
    /// The duration limit (`expires_at`).
    Expired,
    /// The safety filter.
    Content,
    /// The remote end hung up.
    RemoteHangup,
    /// The connection was lost.
    ConnectionLost,
    /// A reason this crate does not know, as sent.
    #[serde(untagged)]
    Other(String),
}

/// `usage` (cumulative, §7.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Usage {
    /// Session seconds so far.
    #[serde(default)]
    pub seconds: f64,
    /// Active seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_seconds: Option<i64>,
    /// Paused seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_seconds: Option<i64>,
}

/// A delegation (§6.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DelegationInfo {
    /// `dlg_…`.
    #[serde(default)]
    pub id: String,
    /// `client`, `responses` or `decisions`.
    #[serde(default)]
    pub target: String,
    /// Always `delegation`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The backend response, for `responses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
}

/// A completed function call found in a `response.event` (§6.3 step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    /// The id to answer with.
    pub call_id: String,
    /// The tool.
    pub name: String,
    /// Arguments (JSON text).
    pub arguments: String,
}

/// How a backend response ended (`response.completed` / `.failed` / `.incomplete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendOutcome {
    /// `response.completed`.
    Completed,
    /// `response.failed`: the service discards its calls (§6.3).
    Failed,
    /// `response.incomplete`: likewise.
    Incomplete,
}

macro_rules! payloads {
    ($( $(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)? } )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
        pub struct $name {
            $( $(#[$fdoc])* #[serde(default)] pub $field: $ty, )*
        }
    )*};
}

payloads! {
    /// `session.started` / `session.updated`.
    SessionEvent {
        /// The server's event id.
        event_id: String,
        /// The client event it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
        /// The resolved session.
        session: SessionResource,
    }
    /// Acknowledgements with no payload (`session.input_audio.muted`, fixture events).
    Ack {
        /// The server's event id.
        event_id: String,
        /// The client event it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
    }
    /// `session.output_audio.delta`: on a primary WebSocket only the audio (§4).
    AudioDelta {
        /// Base64 audio in the session's format.
        delta: String,
        /// Sideband copies only.
        #[serde(skip_serializing_if = "Option::is_none")]
        start_ms: Option<i64>,
        /// Sideband copies only.
        #[serde(skip_serializing_if = "Option::is_none")]
        end_ms: Option<i64>,
    }
    /// `session.input_transcript.delta` / `session.output_transcript.delta` (§5.1).
    TranscriptDelta {
        /// The server's event id.
        event_id: String,
        /// More text (with its own leading space).
        delta: String,
        /// Session-timeline start.
        start_ms: i64,
        /// Session-timeline end.
        end_ms: i64,
        /// The client event it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
    }
    /// `session.instructions.appended` / `.commentary.appended` / `.thinking.appended`.
    Appended {
        /// The server's event id.
        event_id: String,
        /// Where it went on the session timeline.
        start_ms: i64,
        /// Its end.
        end_ms: i64,
        /// The client event it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
    }
    /// `session.delegation.created` (§6.2).
    DelegationCreated {
        /// The server's event id.
        event_id: String,
        /// Session-timeline position.
        offset_ms: i64,
        /// The delegation.
        delegation: DelegationInfo,
        /// The client event it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
    }
    /// `response.event`: a Responses streaming event, wrapped (§6.3).
    ResponseEnvelope {
        /// The server's event id.
        event_id: String,
        /// The delegation it belongs to (may be missing).
        #[serde(skip_serializing_if = "Option::is_none")]
        delegation_id: Option<String>,
        /// The client event it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
        /// The Responses event.
        event: Value,
    }
    /// `session.usage.updated` (§7.5).
    UsageUpdated {
        /// The server's event id.
        event_id: String,
        /// Cumulative usage.
        usage: Usage,
        /// `{usage_ratio}`.
        #[serde(skip_serializing_if = "Option::is_none")]
        context_window: Option<Value>,
        /// The client event it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
    }
    /// `session.closed` (§7.3).
    Closed {
        /// The server's event id.
        event_id: String,
        /// Why.
        reason: Option<SessionCloseReason>,
        /// The final session.
        session: SessionResource,
        /// Final usage.
        usage: Usage,
        /// The client event it answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
    }
    /// `error` (§7.4).
    ErrorEvent {
        /// The server's event id.
        event_id: String,
        /// The error.
        error: ApiError,
        /// The client event that caused it.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_event_id: Option<String>,
    }
    /// `info` (§7.4).
    Info {
        /// The server's event id.
        event_id: String,
        /// e.g. `data_channel_permissions`.
        code: String,
        /// Text.
        message: String,
    }
}

impl ResponseEnvelope {
    /// The wrapped event's `type`.
    pub fn inner_type(&self) -> &str {
        self.event.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// The function call this event completes: a `response.output_item.done` whose item is a
    /// `function_call` with status `completed` (§6.3: the integrations ignore the others).
    pub fn function_call(&self) -> Option<FunctionCall> {
        if self.inner_type() != "response.output_item.done" {
            return None;
        }
        let item = self.event.get("item")?;
        if item.get("type")?.as_str()? != "function_call"
            || item.get("status").and_then(Value::as_str) != Some("completed")
        {
            return None;
        }
        Some(FunctionCall {
            call_id: item.get("call_id")?.as_str()?.to_owned(),
            name: item.get("name")?.as_str()?.to_owned(),
            arguments: item
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}")
                .to_owned(),
        })
    }

    /// How the backend response ended, when this is its last event.
    pub fn outcome(&self) -> Option<BackendOutcome> {
        match self.inner_type() {
            "response.completed" => Some(BackendOutcome::Completed),
            "response.failed" => Some(BackendOutcome::Failed),
            "response.incomplete" => Some(BackendOutcome::Incomplete),
            _ => None,
        }
    }

    /// The backend response's id (`event.response.id`), when the event carries it.
    pub fn response_id(&self) -> Option<&str> {
        self.event.get("response")?.get("id")?.as_str()
    }
}

macro_rules! server_events {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $wire:literal, )*) => {
        /// An event GPT-Live sends (§9.2). Events this crate does not type are kept whole in
        /// [`ServerEvent::Unknown`].
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum ServerEvent {
            $( $(#[$doc])* $variant($ty), )*
            /// Any other event, kept whole.
            Unknown(Value),
        }

        impl ServerEvent {
            /// Parses one text frame: the `type` is peeked first, then only the matching
            /// payload is deserialized.
            pub fn parse(text: &str) -> Result<ServerEvent, ModelError> {
                let ty = peek_type(text)?;
                let invalid = |source| ModelError::InvalidEvent { event_type: ty.clone(), source };
                let ev = match ty.as_str() {
                    $( $wire => ServerEvent::$variant(serde_json::from_str(text).map_err(invalid)?), )*
                    _ => ServerEvent::Unknown(serde_json::from_str(text).map_err(|source| ModelError::Json { source })?),
                };
                if let ServerEvent::OutputAudioDelta(d) = &ev {
                    crate::proto::mulaw::validate_base64(&d.delta)
                        .map_err(|source| ModelError::InvalidAudio { source })?;
                }
                Ok(ev)
            }

            /// The wire `type`.
            pub fn event_type(&self) -> &str {
                match self {
                    $( ServerEvent::$variant(_) => $wire, )*
                    ServerEvent::Unknown(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
                }
            }

            /// The event's JSON (used by the fake server).
            pub fn to_json(&self) -> String {
                let (ty, v) = match self {
                    $( ServerEvent::$variant(p) => ($wire, serde_json::to_value(p).unwrap_or(Value::Null)), )*
                    ServerEvent::Unknown(v) => return v.to_string(),
                };
                let mut out = Map::new();
                out.insert("type".into(), Value::String(ty.into()));
                if let Value::Object(mut m) = v {
                    out.append(&mut m);
                }
                Value::Object(out).to_string()
            }
        }
    };
}

server_events! {
    /// `session.started`: the session runs; audio may flow (§2).
    SessionStarted(SessionEvent) = "session.started",
    /// `session.updated`.
    SessionUpdated(SessionEvent) = "session.updated",
    /// `session.input_audio.muted`.
    InputAudioMuted(Ack) = "session.input_audio.muted",
    /// `session.input_audio.unmuted`.
    InputAudioUnmuted(Ack) = "session.input_audio.unmuted",
    /// `session.output_audio.fixture.playing`.
    FixturePlaying(Ack) = "session.output_audio.fixture.playing",
    /// `session.output_audio.fixture.played`.
    FixturePlayed(Ack) = "session.output_audio.fixture.played",
    /// `session.output_audio.delta`.
    OutputAudioDelta(AudioDelta) = "session.output_audio.delta",
    /// `session.input_transcript.delta`: what the caller said.
    InputTranscriptDelta(TranscriptDelta) = "session.input_transcript.delta",
    /// `session.output_transcript.delta`: what the model said.
    OutputTranscriptDelta(TranscriptDelta) = "session.output_transcript.delta",
    /// `session.instructions.appended`.
    InstructionsAppended(Appended) = "session.instructions.appended",
    /// `session.commentary.appended`.
    CommentaryAppended(Appended) = "session.commentary.appended",
    /// `session.thinking.appended`.
    ThinkingAppended(Appended) = "session.thinking.appended",
    /// `session.delegation.created`.
    DelegationCreated(DelegationCreated) = "session.delegation.created",
    /// `response.event`.
    ResponseEvent(ResponseEnvelope) = "response.event",
    /// `session.usage.updated`.
    UsageUpdated(UsageUpdated) = "session.usage.updated",
    /// `session.closed`.
    SessionClosed(Closed) = "session.closed",
    /// `error`.
    Error(ErrorEvent) = "error",
    /// `info`.
    Info(Info) = "info",
}

#[derive(Deserialize)]
struct PeekType<'a> {
    #[serde(borrow, rename = "type")]
    ty: Option<std::borrow::Cow<'a, str>>,
}

fn peek_type(text: &str) -> Result<String, ModelError> {
    let p: PeekType<'_> =
        serde_json::from_str(text).map_err(|source| ModelError::Json { source })?;
    p.ty.map(|t| t.into_owned()).ok_or(ModelError::MissingType)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_fast_path_matches_serde() {
        let ev = ClientEvent::InputAudioAppend {
            event_id: None,
            audio: "//8=".into(),
        };
        let fast: Value = serde_json::from_str(&ev.to_json()).unwrap();
        let slow = serde_json::to_value(&ev).unwrap();
        assert_eq!(fast, slow);
    }

    #[test]
    fn delegation_id_is_written_as_null() {
        let ev = ClientEvent::CommentaryAppend {
            event_id: None,
            content: "Greet the caller.".into(),
            delegation_id: None,
        };
        let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert!(v.as_object().unwrap().contains_key("delegation_id"));
        assert!(v["delegation_id"].is_null());
    }

    #[test]
    fn unknown_reason_is_kept() {
        let ev = ServerEvent::parse(
            r#"{"type":"session.closed","event_id":"e","reason":"new_reason","session":{"id":"l"},"usage":{"seconds":1}}"#,
        )
        .unwrap();
        let ServerEvent::SessionClosed(c) = ev else {
            panic!()
        };
        assert_eq!(
            c.reason,
            Some(SessionCloseReason::Other("new_reason".into()))
        );
    }

    #[test]
    fn bad_audio_is_an_error_not_a_panic() {
        assert!(matches!(
            ServerEvent::parse(r#"{"type":"session.output_audio.delta","delta":"@@"}"#),
            Err(ModelError::InvalidAudio { .. })
        ));
        assert!(matches!(
            ServerEvent::parse(r#"{"type":"session.future","x":1}"#),
            Ok(ServerEvent::Unknown(_))
        ));
    }
}
