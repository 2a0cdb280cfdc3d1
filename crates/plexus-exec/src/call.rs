//! A call, what serves it, and what a plugin host answers over the wire.

use std::fmt;
use std::time::Duration;

use plexus_catalog::ModelTier;
use plexus_handler::HandlerError;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::ExecError;

/// JSON text that is known to be valid, carried as it came: parsed once,
/// where it is used (by the handler for an input, by the client for an
/// output), never re-encoded inside another JSON document on the way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(String);

impl RawJson {
    /// Check `text` is one JSON value (without building it).
    pub fn parse(text: impl Into<String>) -> Result<RawJson, serde_json::Error> {
        let text = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(RawJson(text))
    }

    /// Text a JSON parser has already checked (a `RawValue`'s): kept as is.
    pub fn checked(text: String) -> RawJson {
        RawJson(text)
    }

    /// Text that is JSON already (serialised by the caller).
    pub fn from_value(v: &serde_json::Value) -> RawJson {
        RawJson(v.to_string())
    }

    /// Handler output: JSON text as is, anything else as a JSON string.
    pub fn from_output(text: String) -> RawJson {
        match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
            Ok(_) => RawJson(text),
            Err(_) => RawJson(serde_json::Value::String(text).to_string()),
        }
    }

    /// `{}`.
    pub fn empty_object() -> RawJson {
        RawJson("{}".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plugin and one of its commands (`agent:NAME`, `command:NAME` or a
/// plain command name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    pub plugin: String,
    pub command: String,
}

impl Target {
    pub fn new(plugin: impl Into<String>, command: impl Into<String>) -> Target {
        Target {
            plugin: plugin.into(),
            command: command.into(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.plugin, self.command)
    }
}

/// One request through the pipeline.
#[derive(Debug, Clone)]
pub struct ExecCall {
    pub target: Target,
    pub input: RawJson,
    pub idempotency_key: Option<String>,
    pub priority: u8,
    /// The model the router chose; the command's own when absent.
    pub model: Option<ModelTier>,
    pub trace_id: Option<String>,
    /// Who asks, as authenticated where the request came in (`plugin:NAME`
    /// for a plugin's own calls and its agents' tool calls, `admin`,
    /// `operator`); `None` on an API that takes no tokens.
    pub caller: Option<String>,
    /// The whole request's deadline: tries, backoff and fallbacks included.
    pub deadline: Instant,
    /// The whole request's time (for messages: "within the request's N ms").
    pub budget: Duration,
    /// Tried in order when the target cannot serve (the fallback layer).
    pub fallbacks: Vec<Target>,
}

impl ExecCall {
    /// A call of `target` with `budget` from now and the defaults.
    pub fn new(target: Target, input: RawJson, budget: Duration) -> ExecCall {
        ExecCall {
            target,
            input,
            idempotency_key: None,
            priority: 5,
            model: None,
            trace_id: None,
            caller: None,
            deadline: Instant::now() + budget,
            budget,
            fallbacks: Vec::new(),
        }
    }

    /// What is left of the deadline.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Which path served a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServedBy {
    Primary,
    /// The Nth retry of the target.
    Retry(u32),
    /// A fallback plugin.
    Fallback(String),
    /// The target's last good answer.
    Cache,
    /// The target plugin's declared default result.
    Default,
}

impl ServedBy {
    /// The metric label: primary | retry | fallback | cache | default.
    pub fn class(&self) -> &'static str {
        match self {
            ServedBy::Primary => "primary",
            ServedBy::Retry(_) => "retry",
            ServedBy::Fallback(_) => "fallback",
            ServedBy::Cache => "cache",
            ServedBy::Default => "default",
        }
    }
}

impl fmt::Display for ServedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServedBy::Primary => f.write_str("primary"),
            ServedBy::Retry(n) => write!(f, "retry {n}"),
            ServedBy::Fallback(p) => write!(f, "fallback:{p}"),
            ServedBy::Cache => f.write_str("cache"),
            ServedBy::Default => f.write_str("default"),
        }
    }
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub output: RawJson,
    pub model: Option<String>,
    pub cost_usd: f64,
    pub work_minutes: f64,
    /// The model id and token counts of an `llm` run.
    pub llm: Option<plexus_handler::ModelUse>,
}

/// A plugin host's answer to one exec request (the bus response's payload,
/// encoded by plexus-codec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReply {
    pub node: String,
    pub duration_ms: f64,
    pub outcome: Result<Output, HostFailure>,
}

/// One part of a streamed exec's answer (a bus stream part, encoded by
/// plexus-codec): `Started`, then the command's progress, then exactly one
/// `Reply`. A refusal before anything ran is a lone `Reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostPart {
    /// The host took the request and runs it now.
    Started { node: String },
    /// Something the command produced on the way (a model's text).
    Progress(plexus_handler::Progress),
    /// The answer, as a non-streamed request gets it.
    Reply(HostReply),
}

/// Why a host did not run a request, or how it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostFailure {
    /// The plugin's breaker on that node refused the call.
    BreakerOpen {
        state: String,
        retry_after_ms: Option<u64>,
    },
    /// The host died with the request in hand (not retried: it may be the
    /// poison).
    Crashed,
    /// The handler ran and failed.
    Handler(HandlerError),
    /// The request did not decode.
    Malformed(String),
    /// The host's plugin does not accept calls from the caller
    /// (`acceptsRoutingFrom`).
    Forbidden(String),
}

/// A served call.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// What ran (a fallback's target when a fallback served).
    pub target: Target,
    pub node: String,
    pub duration_ms: f64,
    pub output: Output,
    pub served_by: ServedBy,
    pub retries: u32,
    /// Every target tried, in order (the fallback layer records them).
    pub attempts: Vec<Attempt>,
}

/// One target tried by the fallback layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub target: Target,
    /// The node that answered, if one did.
    pub node: Option<String>,
    /// `None` when it served.
    pub error: Option<ExecError>,
    pub duration: Duration,
}

impl Attempt {
    /// Whether the plugin ran it (so its outcome says something about the
    /// plugin: the router learns from it).
    pub fn reached_plugin(&self) -> bool {
        self.error.as_ref().is_none_or(ExecError::reached_plugin)
    }
}

#[cfg(test)]
mod part_tests {
    use super::*;

    /// Every part crosses the wire through plexus-codec (bincode, serde
    /// mode), which refuses some serde shapes at run time.
    #[test]
    fn every_stream_part_round_trips_through_the_codec() {
        use plexus_handler::Progress;
        let parts = vec![
            HostPart::Started { node: "n3".into() },
            HostPart::Progress(Progress::Text { text: "Hel".into() }),
            HostPart::Progress(Progress::ToolCall {
                id: "t1".into(),
                name: "Read".into(),
                input: "{\"path\":\"a\"}".into(),
            }),
            HostPart::Progress(Progress::ToolResult {
                id: "t1".into(),
                name: "Read".into(),
                status: "ok".into(),
                output: "text".into(),
            }),
            HostPart::Reply(HostReply {
                node: "n3".into(),
                duration_ms: 1.5,
                outcome: Err(HostFailure::Crashed),
            }),
        ];
        for p in parts {
            let bytes = plexus_codec::encode(&p).unwrap();
            assert_eq!(plexus_codec::decode::<HostPart>(&bytes).unwrap(), p);
        }
    }
}
