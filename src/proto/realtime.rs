//! OpenAI Realtime API (GA) events: what the bridge sends ([`ClientEvent`]), what the model
//! sends ([`ServerEvent`]), conversation [`Item`]s and the [`SessionSettings`] builder.
//!
//! The wire is the GA interface: `session.type = "realtime"`, audio settings nested under
//! `session.audio.input` / `session.audio.output`, µ-law as `{"type":"audio/pcmu"}`. Every
//! `session.update` this crate writes carries both audio formats (µ-law unless told otherwise)
//! and a `tools` array, empty when the agent has none — two things the TypeScript SDK gets
//! wrong after a handoff. Server events this crate does not type are kept whole as
//! [`ServerEvent::Unknown`]; they never end a call.
//!
//! ```
//! use twilio_realtime::proto::realtime::{ClientEvent, ServerEvent, SessionSettings, TurnDetection};
//!
//! let update = ClientEvent::SessionUpdate {
//!     event_id: None,
//!     session: SessionSettings::new().instructions("Be brief.").voice("marin")
//!         .turn_detection(TurnDetection::server_vad()),
//! };
//! let json: serde_json::Value = serde_json::from_str(&update.to_json()).unwrap();
//! assert_eq!(json["session"]["audio"]["input"]["format"]["type"], "audio/pcmu");
//! assert_eq!(json["session"]["tools"], serde_json::json!([]));
//!
//! let ev = ServerEvent::parse(r#"{"type":"response.output_audio.delta","event_id":"e1",
//!     "response_id":"r1","item_id":"i1","output_index":0,"content_index":0,"delta":"//8="}"#).unwrap();
//! assert!(matches!(ev, ServerEvent::OutputAudioDelta(d) if d.delta == "//8="));
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Errors parsing a model event.
#[derive(Debug)]
#[non_exhaustive]
pub enum ModelError {
    /// The text is not JSON, or not a JSON object.
    Json {
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The object has no string `type` field.
    MissingType,
    /// A known event whose fields are missing or of the wrong type.
    InvalidEvent {
        /// The event's `type`.
        event_type: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A `response.output_audio.delta` whose audio is not valid base64.
    InvalidAudio {
        /// What the base64 decoder found.
        source: crate::proto::mulaw::Base64Error,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Json { source } => write!(f, "model event is not a JSON object: {source}"),
            ModelError::MissingType => f.write_str("model event has no \"type\" field"),
            ModelError::InvalidEvent { event_type, source } => {
                write!(f, "invalid {event_type:?} event: {source}")
            }
            ModelError::InvalidAudio { source } => {
                write!(f, "model audio delta is not valid base64: {source}")
            }
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Json { source } | ModelError::InvalidEvent { source, .. } => Some(source),
            ModelError::InvalidAudio { source } => Some(source),
            ModelError::MissingType => None,
        }
    }
}

// -------------------------------------------------------------------------------------------
// Session configuration

/// An audio format of the Realtime API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type")]
pub enum AudioFormat {
    /// G.711 µ-law, 8 kHz — what Twilio speaks.
    #[default]
    #[serde(rename = "audio/pcmu")]
    Pcmu,
    /// G.711 A-law, 8 kHz.
    #[serde(rename = "audio/pcma")]
    Pcma,
    /// 16-bit PCM (the API takes 24000 Hz).
    #[serde(rename = "audio/pcm")]
    Pcm {
        /// Sample rate.
        rate: u32,
    },
}

/// Voice activity detection, under `audio.input.turn_detection`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TurnDetection {
    /// Energy-based VAD on the server.
    ServerVad {
        /// Activation threshold 0..1.
        threshold: Option<f32>,
        /// Audio kept before speech starts (ms).
        prefix_padding_ms: Option<u32>,
        /// Silence that ends a turn (ms).
        silence_duration_ms: Option<u32>,
        /// Answer automatically when a turn ends (server default true).
        create_response: Option<bool>,
        /// Cancel the active response when the caller speaks (server default true).
        interrupt_response: Option<bool>,
        /// Prompt the model after this much silence (5000–30000 ms).
        idle_timeout_ms: Option<u32>,
    },
    /// Model-based end-of-turn detection.
    SemanticVad {
        /// `low`, `medium`, `high` or `auto`.
        eagerness: Option<String>,
        /// Answer automatically when a turn ends (server default true).
        create_response: Option<bool>,
        /// Cancel the active response when the caller speaks (server default true).
        interrupt_response: Option<bool>,
    },
    /// No turn detection (`null`): the application commits audio and asks for responses.
    Disabled,
}

impl TurnDetection {
    /// Server VAD with the server's defaults.
    pub fn server_vad() -> TurnDetection {
        TurnDetection::ServerVad {
            threshold: None,
            prefix_padding_ms: None,
            silence_duration_ms: None,
            create_response: None,
            interrupt_response: None,
            idle_timeout_ms: None,
        }
    }

    /// Semantic VAD with the server's defaults.
    pub fn semantic_vad() -> TurnDetection {
        TurnDetection::SemanticVad {
            eagerness: None,
            create_response: None,
            interrupt_response: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum VadWire {
    ServerVad {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_padding_ms: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        silence_duration_ms: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_response: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interrupt_response: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idle_timeout_ms: Option<u32>,
    },
    SemanticVad {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eagerness: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_response: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interrupt_response: Option<bool>,
    },
}

impl Serialize for TurnDetection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.clone() {
            TurnDetection::Disabled => s.serialize_none(),
            TurnDetection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
                create_response,
                interrupt_response,
                idle_timeout_ms,
            } => VadWire::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
                create_response,
                interrupt_response,
                idle_timeout_ms,
            }
            .serialize(s),
            TurnDetection::SemanticVad {
                eagerness,
                create_response,
                interrupt_response,
            } => VadWire::SemanticVad {
                eagerness,
                create_response,
                interrupt_response,
            }
            .serialize(s),
        }
    }
}

fn turn_detection_de<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TurnDetection>, D::Error> {
    Ok(Some(match Option::<VadWire>::deserialize(d)? {
        None => TurnDetection::Disabled,
        Some(VadWire::ServerVad {
            threshold,
            prefix_padding_ms,
            silence_duration_ms,
            create_response,
            interrupt_response,
            idle_timeout_ms,
        }) => TurnDetection::ServerVad {
            threshold,
            prefix_padding_ms,
            silence_duration_ms,
            create_response,
            interrupt_response,
            idle_timeout_ms,
        },
        Some(VadWire::SemanticVad {
            eagerness,
            create_response,
            interrupt_response,
        }) => TurnDetection::SemanticVad {
            eagerness,
            create_response,
            interrupt_response,
        },
    }))
}

/// Input transcription settings (`audio.input.transcription`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Transcription {
    /// e.g. `gpt-4o-transcribe`, `whisper-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// ISO-639-1 language, e.g. `en`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// A hint for the transcriber.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// Input noise reduction (`audio.input.noise_reduction.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseReduction {
    /// Close-talking microphones (headsets).
    NearField,
    /// Far-field microphones (speakerphones).
    FarField,
}

/// A function tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of its arguments.
    #[serde(default)]
    pub parameters: Value,
}

#[derive(Serialize, Deserialize)]
struct ToolWire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    def: ToolDefinition,
}

/// How the model may choose tools.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tools.
    None,
    /// Some tool must be called.
    Required,
    /// This function must be called.
    Function(String),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ToolChoiceWire {
    Mode(String),
    Function {
        #[serde(rename = "type")]
        kind: String,
        name: String,
    },
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolChoice::Auto => s.serialize_str("auto"),
            ToolChoice::None => s.serialize_str("none"),
            ToolChoice::Required => s.serialize_str("required"),
            ToolChoice::Function(name) => ToolChoiceWire::Function {
                kind: "function".into(),
                name: name.clone(),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ToolChoiceWire::deserialize(d)? {
            ToolChoiceWire::Mode(m) => match m.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" => Ok(ToolChoice::Required),
                other => Err(serde::de::Error::custom(format!(
                    "unknown tool_choice {other}"
                ))),
            },
            ToolChoiceWire::Function { name, .. } => Ok(ToolChoice::Function(name)),
        }
    }
}

/// Session settings sent with `session.update`, built fluently. Always written in the GA
/// shape, with both audio formats and a `tools` array.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionSettings {
    model: Option<String>,
    instructions: Option<String>,
    voice: Option<String>,
    speed: Option<f32>,
    input_format: AudioFormat,
    output_format: AudioFormat,
    turn_detection: Option<TurnDetection>,
    transcription: Option<Transcription>,
    noise_reduction: Option<NoiseReduction>,
    output_modalities: Option<Vec<String>>,
    tools: Vec<ToolDefinition>,
    tool_choice: Option<ToolChoice>,
    max_output_tokens: Option<u32>,
    without_formats: bool,
}

/// The former name of [`SessionSettings`], renamed so that no two public types share a name
/// with the crate root's [`SessionConfig`](crate::SessionConfig) (the per-call session options).
/// Code that names it still compiles (with a deprecation warning):
///
/// ```
/// use twilio_realtime::proto::realtime::SessionSettings;
///
/// #[allow(deprecated)]
/// let old: twilio_realtime::proto::realtime::SessionConfig = SessionSettings::new();
/// let _: SessionSettings = old;
/// ```
#[deprecated(
    since = "0.1.0",
    note = "renamed to `proto::realtime::SessionSettings`"
)]
pub type SessionConfig = SessionSettings;

impl SessionSettings {
    /// Defaults: µ-law both ways, no tools, everything else left to the server.
    pub fn new() -> SessionSettings {
        SessionSettings::default()
    }
    /// The model (usually chosen in the URL instead).
    pub fn model(mut self, m: impl Into<String>) -> Self {
        self.model = Some(m.into());
        self
    }
    /// System instructions.
    pub fn instructions(mut self, i: impl Into<String>) -> Self {
        self.instructions = Some(i.into());
        self
    }
    /// The output voice, e.g. `marin`.
    pub fn voice(mut self, v: impl Into<String>) -> Self {
        self.voice = Some(v.into());
        self
    }
    /// Speaking speed 0.25–1.5.
    pub fn speed(mut self, s: f32) -> Self {
        self.speed = Some(s);
        self
    }
    /// Format of the audio we append.
    pub fn input_format(mut self, f: AudioFormat) -> Self {
        self.input_format = f;
        self
    }
    /// Format of the audio the model produces.
    pub fn output_format(mut self, f: AudioFormat) -> Self {
        self.output_format = f;
        self
    }
    /// Turn detection ([`TurnDetection::Disabled`] writes `null`).
    pub fn turn_detection(mut self, t: TurnDetection) -> Self {
        self.turn_detection = Some(t);
        self
    }
    /// Transcribe the caller's audio.
    pub fn transcription(mut self, t: Transcription) -> Self {
        self.transcription = Some(t);
        self
    }
    /// Input noise reduction.
    pub fn noise_reduction(mut self, n: NoiseReduction) -> Self {
        self.noise_reduction = Some(n);
        self
    }
    /// `["audio"]` or `["text"]`.
    pub fn output_modalities(mut self, m: Vec<String>) -> Self {
        self.output_modalities = Some(m);
        self
    }
    /// The function tools (replaces earlier ones).
    pub fn tools(mut self, t: Vec<ToolDefinition>) -> Self {
        self.tools = t;
        self
    }
    /// How tools are chosen.
    pub fn tool_choice(mut self, c: ToolChoice) -> Self {
        self.tool_choice = Some(c);
        self
    }
    /// Token limit of one response.
    pub fn max_output_tokens(mut self, n: u32) -> Self {
        self.max_output_tokens = Some(n);
        self
    }
    /// Write no audio format at all (a SIP call's codec is negotiated in SDP, so its session
    /// configuration leaves `audio.*.format` out).
    pub fn without_audio_formats(mut self) -> Self {
        self.without_formats = true;
        self
    }

    /// The tools.
    pub fn tool_definitions(&self) -> &[ToolDefinition] {
        &self.tools
    }
    /// The voice, if set.
    pub fn voice_name(&self) -> Option<&str> {
        self.voice.as_deref()
    }
    /// The instructions, if set.
    pub fn instructions_text(&self) -> Option<&str> {
        self.instructions.as_deref()
    }
    /// The input transcription setting, if set.
    pub fn transcription_setting(&self) -> Option<&Transcription> {
        self.transcription.as_ref()
    }
    /// The turn detection setting (`None`: left to the server, which uses server VAD).
    pub fn turn_detection_setting(&self) -> Option<&TurnDetection> {
        self.turn_detection.as_ref()
    }
    /// The audio formats (input, output).
    pub fn formats(&self) -> (AudioFormat, AudioFormat) {
        (self.input_format, self.output_format)
    }

    /// True when the server itself cancels the active response when the caller starts
    /// speaking (turn detection on, `interrupt_response` not false).
    pub fn interrupt_response(&self) -> bool {
        match &self.turn_detection {
            None => true,
            Some(TurnDetection::Disabled) => false,
            Some(TurnDetection::ServerVad {
                interrupt_response, ..
            })
            | Some(TurnDetection::SemanticVad {
                interrupt_response, ..
            }) => interrupt_response.unwrap_or(true),
        }
    }

    /// True when the server answers by itself at the end of the caller's turn.
    pub fn creates_responses(&self) -> bool {
        match &self.turn_detection {
            None => true,
            Some(TurnDetection::Disabled) => false,
            Some(TurnDetection::ServerVad {
                create_response, ..
            })
            | Some(TurnDetection::SemanticVad {
                create_response, ..
            }) => create_response.unwrap_or(true),
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct NoiseWire {
    #[serde(rename = "type")]
    kind: Option<NoiseReduction>,
}

#[derive(Serialize, Deserialize, Default)]
struct AudioInWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<AudioFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transcription: Option<Transcription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    noise_reduction: Option<NoiseWire>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "turn_detection_de"
    )]
    turn_detection: Option<TurnDetection>,
}

#[derive(Serialize, Deserialize, Default)]
struct AudioOutWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<AudioFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    voice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    speed: Option<f32>,
}

#[derive(Serialize, Deserialize, Default)]
struct AudioWire {
    #[serde(default)]
    input: AudioInWire,
    #[serde(default)]
    output: AudioOutWire,
}

#[derive(Serialize, Deserialize)]
struct SessionWire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output_modalities: Option<Vec<String>>,
    #[serde(default)]
    audio: AudioWire,
    #[serde(default)]
    tools: Vec<ToolWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
}

impl Serialize for SessionSettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.clone();
        SessionWire {
            kind: "realtime".into(),
            model: c.model,
            instructions: c.instructions,
            output_modalities: c.output_modalities,
            audio: AudioWire {
                input: AudioInWire {
                    format: (!c.without_formats).then_some(c.input_format),
                    transcription: c.transcription,
                    noise_reduction: c.noise_reduction.map(|n| NoiseWire { kind: Some(n) }),
                    turn_detection: c.turn_detection,
                },
                output: AudioOutWire {
                    format: (!c.without_formats).then_some(c.output_format),
                    voice: c.voice,
                    speed: c.speed,
                },
            },
            tools: c
                .tools
                .into_iter()
                .map(|def| ToolWire {
                    kind: "function".into(),
                    def,
                })
                .collect(),
            tool_choice: c.tool_choice,
            max_output_tokens: c.max_output_tokens,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SessionSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = SessionWire::deserialize(d)?;
        if w.kind != "realtime" {
            return Err(serde::de::Error::custom(format!(
                "session type {:?} is not \"realtime\"",
                w.kind
            )));
        }
        Ok(SessionSettings {
            model: w.model,
            instructions: w.instructions,
            voice: w.audio.output.voice,
            speed: w.audio.output.speed,
            input_format: w.audio.input.format.unwrap_or_default(),
            output_format: w.audio.output.format.unwrap_or_default(),
            turn_detection: w.audio.input.turn_detection,
            transcription: w.audio.input.transcription,
            noise_reduction: w.audio.input.noise_reduction.and_then(|n| n.kind),
            output_modalities: w.output_modalities,
            tools: w.tools.into_iter().map(|t| t.def).collect(),
            tool_choice: w.tool_choice,
            max_output_tokens: w.max_output_tokens,
            without_formats: false,
        })
    }
}

/// Options of one `response.create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResponseConfig {
    /// Instructions for this response only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// `["audio"]` or `["text"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<String>>,
    /// How tools are chosen for this response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// `auto` (add to the conversation) or `none` (out of band).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    /// Up to 16 string pairs echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Items to use as the input instead of the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Vec<Item>>,
}

// -------------------------------------------------------------------------------------------
// Items

/// A conversation item (message, function call, function call output, …), both as sent and
/// as received. Unknown fields of received items are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Item {
    /// The item id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `message`, `function_call`, `function_call_output`, or another kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// `realtime.item` on received items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// `completed`, `incomplete`, `in_progress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `user`, `assistant`, `system` (messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Message content.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub content: Vec<ContentPart>,
    /// Function call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// Function name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Function arguments (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// Function output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContentPart {
    /// `input_text`, `input_audio`, `output_text`, `output_audio`, `text`, `audio`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Text content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Base64 audio content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    /// Transcript of audio content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
}

impl Item {
    fn message(role: &str, part: &str, text: String) -> Item {
        Item {
            kind: "message".into(),
            role: Some(role.into()),
            content: vec![ContentPart {
                kind: part.into(),
                text: Some(text),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A user text message.
    pub fn user_text(text: impl Into<String>) -> Item {
        Item::message("user", "input_text", text.into())
    }

    /// A system text message.
    pub fn system_text(text: impl Into<String>) -> Item {
        Item::message("system", "input_text", text.into())
    }

    /// An assistant text message (e.g. to carry a conversation into a new session).
    pub fn assistant_text(text: impl Into<String>) -> Item {
        Item::message("assistant", "output_text", text.into())
    }

    /// The output of a function call.
    pub fn function_call_output(call_id: impl Into<String>, output: impl Into<String>) -> Item {
        Item {
            kind: "function_call_output".into(),
            call_id: Some(call_id.into()),
            output: Some(output.into()),
            ..Default::default()
        }
    }

    /// The item's text: its text parts and transcripts, concatenated (`None` if it has none).
    pub fn text(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|p| p.text.as_deref().or(p.transcript.as_deref()))
            .collect();
        if parts.is_empty() {
            None
        } else {
            Some(parts.concat())
        }
    }
}

// -------------------------------------------------------------------------------------------
// Client events

/// An event the bridge sends the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum ClientEvent {
    /// Configure the session.
    #[serde(rename = "session.update")]
    SessionUpdate {
        /// Client-chosen id, echoed in errors.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The settings.
        session: SessionSettings,
    },
    /// Append caller audio (base64).
    #[serde(rename = "input_audio_buffer.append")]
    InputAudioBufferAppend {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// Base64 audio in the session's input format.
        audio: String,
    },
    /// Commit the input buffer as a user item (without server VAD).
    #[serde(rename = "input_audio_buffer.commit")]
    InputAudioBufferCommit {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// Drop the input buffer.
    #[serde(rename = "input_audio_buffer.clear")]
    InputAudioBufferClear {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// Add an item to the conversation.
    #[serde(rename = "conversation.item.create")]
    ConversationItemCreate {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// Insert after this item (default: at the end).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_item_id: Option<String>,
        /// The item.
        item: Item,
    },
    /// Cut an assistant item's audio at what the user heard.
    #[serde(rename = "conversation.item.truncate")]
    ConversationItemTruncate {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The assistant item.
        item_id: String,
        /// Its audio content part.
        content_index: u32,
        /// Milliseconds heard (an integer).
        audio_end_ms: u64,
    },
    /// Remove an item.
    #[serde(rename = "conversation.item.delete")]
    ConversationItemDelete {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The item.
        item_id: String,
    },
    /// Ask for an item's full content.
    #[serde(rename = "conversation.item.retrieve")]
    ConversationItemRetrieve {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The item.
        item_id: String,
    },
    /// Ask for a response.
    #[serde(rename = "response.create")]
    ResponseCreate {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// Options of this response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<ResponseConfig>,
    },
    /// Cancel the active (or the given) response.
    #[serde(rename = "response.cancel")]
    ResponseCancel {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The response to cancel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response_id: Option<String>,
    },
    /// Cut off the audio being played to the caller (WebRTC and SIP only; send it after a
    /// `response.cancel`). The server answers `output_audio_buffer.cleared`.
    #[serde(rename = "output_audio_buffer.clear")]
    OutputAudioBufferClear {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// Any client event, as JSON text written exactly as given (the application's escape
    /// hatch, see `Session::send_raw`). Never produced by [`ClientEvent::parse`].
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
        if let ClientEvent::Raw { json, .. } = self {
            return json.clone();
        }
        if let ClientEvent::InputAudioBufferAppend {
            event_id: None,
            audio,
        } = self
        {
            let mut s = String::new();
            write_append_json(&mut s, audio);
            return s;
        }
        // Serializing these types cannot fail (string keys, no non-finite floats we write).
        serde_json::to_string(self).unwrap_or_default()
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
            ClientEvent::SessionUpdate { .. } => "session.update",
            ClientEvent::InputAudioBufferAppend { .. } => "input_audio_buffer.append",
            ClientEvent::InputAudioBufferCommit { .. } => "input_audio_buffer.commit",
            ClientEvent::InputAudioBufferClear { .. } => "input_audio_buffer.clear",
            ClientEvent::ConversationItemCreate { .. } => "conversation.item.create",
            ClientEvent::ConversationItemTruncate { .. } => "conversation.item.truncate",
            ClientEvent::ConversationItemDelete { .. } => "conversation.item.delete",
            ClientEvent::ConversationItemRetrieve { .. } => "conversation.item.retrieve",
            ClientEvent::ResponseCreate { .. } => "response.create",
            ClientEvent::ResponseCancel { .. } => "response.cancel",
            ClientEvent::OutputAudioBufferClear { .. } => "output_audio_buffer.clear",
        }
    }
}

/// Appends `{"type":"input_audio_buffer.append","audio":"…"}` to `out` without serde (the
/// caller-audio fast path; base64 needs no escaping, other text is escaped correctly).
pub fn write_append_json(out: &mut String, audio_b64: &str) {
    out.reserve(50 + audio_b64.len());
    out.push_str(r#"{"type":"input_audio_buffer.append","audio":"#);
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

/// A `response.output_audio.delta` read in one pass with every string borrowed from the frame
/// (the agent-audio fast path: no `type` peek, no owned copy of the audio). The fields and
/// their types are [`AudioDelta`]'s, so exactly the frames [`ServerEvent::parse`] reads as
/// [`ServerEvent::OutputAudioDelta`] parse here, with the same base64 check; anything else is
/// `None` (and goes the general way).
///
/// ```
/// use twilio_realtime::proto::realtime::AudioDeltaFrame;
///
/// let text = r#"{"type":"response.output_audio.delta","event_id":"e1","response_id":"r1",
///   "item_id":"i1","output_index":0,"content_index":0,"delta":"//8="}"#;
/// let d = AudioDeltaFrame::parse(text).expect("an audio delta");
/// assert_eq!((d.response_id(), d.item_id(), d.content_index(), d.delta()), ("r1", "i1", 0, "//8="));
/// assert!(AudioDeltaFrame::parse(r#"{"type":"response.done","response":{}}"#).is_none());
/// ```
#[derive(Debug)]
pub struct AudioDeltaFrame<'a> {
    response_id: std::borrow::Cow<'a, str>,
    item_id: std::borrow::Cow<'a, str>,
    content_index: u32,
    delta: std::borrow::Cow<'a, str>,
}

impl<'a> AudioDeltaFrame<'a> {
    /// The frame, if `text` is a valid `response.output_audio.delta`.
    pub fn parse(text: &'a str) -> Option<AudioDeltaFrame<'a>> {
        let w: AudioDeltaWire<'a> = serde_json::from_str(text).ok()?;
        if w.ty != "response.output_audio.delta" {
            return None;
        }
        crate::proto::mulaw::validate_base64(&w.delta).ok()?;
        Some(AudioDeltaFrame {
            response_id: w.response_id,
            item_id: w.item_id,
            content_index: w.content_index,
            delta: w.delta,
        })
    }

    /// The response the audio belongs to.
    pub fn response_id(&self) -> &str {
        &self.response_id
    }

    /// The assistant item the audio belongs to.
    pub fn item_id(&self) -> &str {
        &self.item_id
    }

    /// The content part inside the item.
    pub fn content_index(&self) -> u32 {
        self.content_index
    }

    /// The base64 audio.
    pub fn delta(&self) -> &str {
        &self.delta
    }
}

/// [`AudioDelta`] with every string borrowed: the same names, types and defaults.
#[derive(Deserialize)]
struct AudioDeltaWire<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    #[allow(dead_code)] // checked for its type, like `AudioDelta::event_id`
    event_id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    response_id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    item_id: std::borrow::Cow<'a, str>,
    #[serde(default)]
    #[allow(dead_code)]
    output_index: u32,
    #[serde(default)]
    content_index: u32,
    #[serde(default, borrow)]
    delta: std::borrow::Cow<'a, str>,
}

// -------------------------------------------------------------------------------------------
// Server events

/// An error reported by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ApiError {
    /// e.g. `invalid_request_error`, `server_error`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// e.g. `invalid_value`, `session_expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human-readable text.
    #[serde(default)]
    pub message: String,
    /// The offending parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The client event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// A response object (`response.created`, `response.done`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Response {
    /// The response id.
    #[serde(default)]
    pub id: String,
    /// `realtime.response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// `in_progress`, `completed`, `cancelled`, `failed`, `incomplete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why it ended so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_details: Option<Value>,
    /// Its output items.
    #[serde(default, deserialize_with = "null_as_default")]
    pub output: Vec<Item>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
    /// Echoed metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

macro_rules! payloads {
    ($( $(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)? } )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
        pub struct $name {
            /// The server's event id.
            #[serde(default)]
            pub event_id: String,
            $( $(#[$fdoc])* #[serde(default)] pub $field: $ty, )*
        }
    )*};
}

payloads! {
    /// `session.created` / `session.updated`.
    SessionEvent {
        /// The session as the server has it.
        session: Value,
    }
    /// `error`.
    ErrorEvent {
        /// The error.
        error: ApiError,
    }
    /// `input_audio_buffer.speech_started`.
    SpeechStarted {
        /// Offset in the appended audio where speech started.
        audio_start_ms: u64,
        /// The user item that will hold it.
        item_id: String,
    }
    /// `input_audio_buffer.speech_stopped`.
    SpeechStopped {
        /// Offset in the appended audio where speech stopped.
        audio_end_ms: u64,
        /// The user item.
        item_id: String,
    }
    /// `input_audio_buffer.committed`.
    Committed {
        /// The item before it.
        previous_item_id: Option<String>,
        /// The new user item.
        item_id: String,
    }
    /// `input_audio_buffer.cleared` and other events with no fields.
    Bare {}
    /// `input_audio_buffer.timeout_triggered`.
    TimeoutTriggered {
        /// Start of the idle audio.
        audio_start_ms: u64,
        /// End of the idle audio.
        audio_end_ms: u64,
        /// The item.
        item_id: String,
    }
    /// `conversation.item.added` / `.done` / `.created` / `.retrieved`.
    ItemEvent {
        /// The item before it.
        previous_item_id: Option<String>,
        /// The item.
        item: Item,
    }
    /// `conversation.item.truncated`.
    Truncated {
        /// The item.
        item_id: String,
        /// Its content part.
        content_index: u32,
        /// Where it was cut.
        audio_end_ms: u64,
    }
    /// `conversation.item.deleted`.
    Deleted {
        /// The item.
        item_id: String,
    }
    /// `conversation.item.input_audio_transcription.delta`.
    TranscriptionDelta {
        /// The user item.
        item_id: String,
        /// Its content part.
        content_index: u32,
        /// More text.
        delta: String,
    }
    /// `conversation.item.input_audio_transcription.completed`.
    TranscriptionCompleted {
        /// The user item.
        item_id: String,
        /// Its content part.
        content_index: u32,
        /// The transcript.
        transcript: String,
    }
    /// `conversation.item.input_audio_transcription.failed`.
    TranscriptionFailed {
        /// The user item.
        item_id: String,
        /// Its content part.
        content_index: u32,
        /// What failed.
        error: Value,
    }
    /// `conversation.item.input_audio_transcription.segment`.
    TranscriptionSegment {
        /// The user item.
        item_id: String,
        /// Its content part.
        content_index: u32,
        /// Segment id.
        id: String,
        /// Segment text.
        text: String,
        /// Speaker label.
        speaker: String,
        /// Start (s).
        start: f64,
        /// End (s).
        end: f64,
    }
    /// `response.created` / `response.done`.
    ResponseEvent {
        /// The response.
        response: Response,
    }
    /// `response.output_item.added` / `.done`.
    OutputItemEvent {
        /// The response.
        response_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// The item.
        item: Item,
    }
    /// `response.content_part.added` / `.done`.
    ContentPartEvent {
        /// The response.
        response_id: String,
        /// The item.
        item_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// Position in the item's content.
        content_index: u32,
        /// The part.
        part: Value,
    }
    /// `response.output_audio.delta`.
    AudioDelta {
        /// The response.
        response_id: String,
        /// The item.
        item_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// Position in the item's content.
        content_index: u32,
        /// Base64 audio.
        delta: String,
    }
    /// `response.output_audio.done`.
    PartDone {
        /// The response.
        response_id: String,
        /// The item.
        item_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// Position in the item's content.
        content_index: u32,
    }
    /// `response.output_audio_transcript.delta` / `response.output_text.delta`.
    TextDelta {
        /// The response.
        response_id: String,
        /// The item.
        item_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// Position in the item's content.
        content_index: u32,
        /// More text.
        delta: String,
    }
    /// `response.output_audio_transcript.done`.
    TranscriptDone {
        /// The response.
        response_id: String,
        /// The item.
        item_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// Position in the item's content.
        content_index: u32,
        /// The whole transcript.
        transcript: String,
    }
    /// `response.output_text.done`.
    TextDone {
        /// The response.
        response_id: String,
        /// The item.
        item_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// Position in the item's content.
        content_index: u32,
        /// The whole text.
        text: String,
    }
    /// `response.function_call_arguments.delta`.
    ArgumentsDelta {
        /// The response.
        response_id: String,
        /// The function call item.
        item_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// The call id.
        call_id: String,
        /// More argument text.
        delta: String,
    }
    /// `response.function_call_arguments.done`.
    ArgumentsDone {
        /// The response.
        response_id: String,
        /// The function call item.
        item_id: String,
        /// Position in the response's output.
        output_index: u32,
        /// The call id.
        call_id: String,
        /// The function (GA servers send it).
        name: Option<String>,
        /// The arguments (JSON text).
        arguments: String,
    }
    /// `rate_limits.updated`.
    RateLimits {
        /// The limits.
        rate_limits: Value,
    }
}

macro_rules! server_events {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $wire:literal, )*) => {
        /// An event the model sends. Events this crate does not type are kept whole in
        /// [`ServerEvent::Unknown`].
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum ServerEvent {
            $( $(#[$doc])* $variant($ty), )*
            /// Any other event, kept whole.
            Unknown(Value),
        }

        impl ServerEvent {
            /// Parses one text frame from the model: the `type` is peeked first, then only the
            /// matching payload is deserialized (no intermediate `Value` for known events).
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
                let mut out = serde_json::Map::new();
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
    /// `session.created`: the first event of a connection.
    SessionCreated(SessionEvent) = "session.created",
    /// `session.updated`.
    SessionUpdated(SessionEvent) = "session.updated",
    /// `error`.
    Error(ErrorEvent) = "error",
    /// `input_audio_buffer.speech_started`.
    SpeechStarted(SpeechStarted) = "input_audio_buffer.speech_started",
    /// `input_audio_buffer.speech_stopped`.
    SpeechStopped(SpeechStopped) = "input_audio_buffer.speech_stopped",
    /// `input_audio_buffer.committed`.
    InputAudioBufferCommitted(Committed) = "input_audio_buffer.committed",
    /// `input_audio_buffer.cleared`.
    InputAudioBufferCleared(Bare) = "input_audio_buffer.cleared",
    /// `input_audio_buffer.timeout_triggered`.
    InputAudioBufferTimeoutTriggered(TimeoutTriggered) = "input_audio_buffer.timeout_triggered",
    /// `conversation.item.added`.
    ConversationItemAdded(ItemEvent) = "conversation.item.added",
    /// `conversation.item.done`.
    ConversationItemDone(ItemEvent) = "conversation.item.done",
    /// `conversation.item.created` (the beta-era name, still in the GA union).
    ConversationItemCreated(ItemEvent) = "conversation.item.created",
    /// `conversation.item.retrieved`.
    ConversationItemRetrieved(ItemEvent) = "conversation.item.retrieved",
    /// `conversation.item.truncated`.
    ConversationItemTruncated(Truncated) = "conversation.item.truncated",
    /// `conversation.item.deleted`.
    ConversationItemDeleted(Deleted) = "conversation.item.deleted",
    /// `conversation.item.input_audio_transcription.delta`.
    InputAudioTranscriptionDelta(TranscriptionDelta) = "conversation.item.input_audio_transcription.delta",
    /// `conversation.item.input_audio_transcription.completed`.
    InputAudioTranscriptionCompleted(TranscriptionCompleted) = "conversation.item.input_audio_transcription.completed",
    /// `conversation.item.input_audio_transcription.failed`.
    InputAudioTranscriptionFailed(TranscriptionFailed) = "conversation.item.input_audio_transcription.failed",
    /// `conversation.item.input_audio_transcription.segment`.
    InputAudioTranscriptionSegment(TranscriptionSegment) = "conversation.item.input_audio_transcription.segment",
    /// `response.created`.
    ResponseCreated(ResponseEvent) = "response.created",
    /// `response.done`.
    ResponseDone(ResponseEvent) = "response.done",
    /// `response.output_item.added`.
    OutputItemAdded(OutputItemEvent) = "response.output_item.added",
    /// `response.output_item.done`.
    OutputItemDone(OutputItemEvent) = "response.output_item.done",
    /// `response.content_part.added`.
    ContentPartAdded(ContentPartEvent) = "response.content_part.added",
    /// `response.content_part.done`.
    ContentPartDone(ContentPartEvent) = "response.content_part.done",
    /// `response.output_audio.delta`.
    OutputAudioDelta(AudioDelta) = "response.output_audio.delta",
    /// `response.output_audio.done`.
    OutputAudioDone(PartDone) = "response.output_audio.done",
    /// `response.output_audio_transcript.delta`.
    OutputAudioTranscriptDelta(TextDelta) = "response.output_audio_transcript.delta",
    /// `response.output_audio_transcript.done`.
    OutputAudioTranscriptDone(TranscriptDone) = "response.output_audio_transcript.done",
    /// `response.output_text.delta`.
    OutputTextDelta(TextDelta) = "response.output_text.delta",
    /// `response.output_text.done`.
    OutputTextDone(TextDone) = "response.output_text.done",
    /// `response.function_call_arguments.delta`.
    FunctionCallArgumentsDelta(ArgumentsDelta) = "response.function_call_arguments.delta",
    /// `response.function_call_arguments.done`.
    FunctionCallArgumentsDone(ArgumentsDone) = "response.function_call_arguments.done",
    /// `rate_limits.updated`.
    RateLimitsUpdated(RateLimits) = "rate_limits.updated",
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
