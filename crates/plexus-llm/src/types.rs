//! The provider-neutral shape of a model call and of what streams back.

use serde::{Deserialize, Serialize};

/// One call to a model: the conversation so far and what it may do next.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The provider's model id (`claude-sonnet-4-5`, `gpt-4.1`, ...).
    pub model: String,
    pub system: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    /// Output tokens of this turn.
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

/// Whether the model must call a tool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// The model must call some tool.
    Required,
    /// The model must call this tool.
    Tool(String),
}

/// A tool the model may call: its name, what it does, and its input's JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One message: a role and its parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

impl Message {
    pub fn user(text: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            parts: vec![Part::Text(text.into())],
        }
    }

    pub fn assistant(text: impl Into<String>) -> Message {
        Message {
            role: Role::Assistant,
            parts: vec![Part::Text(text.into())],
        }
    }

    /// The text parts, joined.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// A piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Part {
    Text(String),
    /// The model called a tool (assistant messages).
    ToolCall(ToolCall),
    /// What a tool answered (user messages).
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
}

/// A complete tool call as the model made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call, echoed with its result.
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them (JSON text, possibly invalid:
    /// a model can get it wrong, and is then told so).
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as a JSON object (empty text is `{}`).
    pub fn input(&self) -> Result<serde_json::Value, String> {
        if self.arguments.trim().is_empty() {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        match serde_json::from_str::<serde_json::Value>(&self.arguments) {
            Ok(v @ serde_json::Value::Object(_)) => Ok(v),
            Ok(other) => Err(format!(
                "the arguments of {} must be a JSON object, not {other}",
                self.name
            )),
            Err(e) => Err(format!(
                "the arguments of {} are not valid JSON ({e})",
                self.name
            )),
        }
    }
}

/// Tokens a call used, as the provider counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, how many were read from the provider's prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, o: Usage) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its answer.
    EndTurn,
    /// It reached `max_tokens`.
    MaxTokens,
    /// It wants its tool calls answered.
    ToolUse,
    /// A stop sequence.
    StopSequence,
    /// Something else the provider said (`content_filter`, `refusal`, ...).
    Other(String),
}

/// One event of a streamed model turn, the same for every provider.
///
/// A well-formed turn is: `Start`, then text deltas and tool calls in the
/// order the model produced them, then `Usage` and `Stop` (either order),
/// after which the stream ends. A stream that ends before `Stop` is a
/// [`crate::ProviderError::BadResponse`] (truncated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// The provider accepted the call; the model id it reports.
    Start {
        model: String,
    },
    TextDelta(String),
    /// A tool call begins (`index` orders calls within the turn).
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// More of a tool call's argument text.
    ToolCallDelta {
        index: u32,
        arguments: String,
    },
    /// A tool call is complete.
    ToolCallDone {
        index: u32,
        call: ToolCall,
    },
    Usage(Usage),
    Stop(StopReason),
}
