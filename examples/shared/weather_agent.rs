//! The example agent shared by the example server and the demo.

use serde_json::json;
use twilio_realtime::agent::{Agent, FunctionTool};

/// A friendly phone agent with one tool, `get_weather(location)`.
pub fn weather_agent() -> Agent {
    Agent::new(
        "Assistant",
        "You are a friendly phone assistant. Keep answers short: the caller is listening, not \
         reading. Use get_weather when asked about the weather.",
    )
    .voice("marin")
    .tool(weather_tool())
}

/// `get_weather(location)`.
pub fn weather_tool() -> FunctionTool {
    FunctionTool::new(
        "get_weather",
        "Get the current weather for a location.",
        json!({
            "type": "object",
            "properties": {"location": {"type": "string", "description": "City name"}},
            "required": ["location"],
            "additionalProperties": false
        }),
        |call| {
            let location = call.arguments["location"].as_str().unwrap_or("").trim();
            if location.is_empty() {
                return Err("no location given".into());
            }
            // A real agent would call a weather service here.
            Ok(format!(
                "The weather in {location} is 18 degrees and sunny."
            ))
        },
    )
}
