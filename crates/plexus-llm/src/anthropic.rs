//! Anthropic Messages API (`POST /v1/messages`, `stream: true`).

use serde_json::{json, Value};

use crate::decode::{bad, json, Decoder};
use crate::error::{Endpoint, ProviderError};
use crate::types::{ChatRequest, Part, Role, StopReason, StreamEvent, ToolCall, ToolChoice, Usage};

/// The API version header every request carries.
pub const VERSION: &str = "2023-06-01";

/// The request body.
pub fn body(req: &ChatRequest) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let content: Vec<Value> = m
                .parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => json!({"type": "text", "text": t}),
                    Part::ToolCall(c) => json!({
                        "type": "tool_use", "id": c.id, "name": c.name,
                        // What the model wrote, or {} when that was not an object.
                        "input": c.input().unwrap_or_else(|_| json!({})),
                    }),
                    Part::ToolResult {
                        call_id,
                        content,
                        is_error,
                    } => json!({
                        "type": "tool_result", "tool_use_id": call_id,
                        "content": content, "is_error": is_error,
                    }),
                })
                .collect();
            json!({
                "role": match m.role { Role::User => "user", Role::Assistant => "assistant" },
                "content": content,
            })
        })
        .collect();
    let mut b = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "messages": messages,
        "stream": true,
    });
    if !req.system.is_empty() {
        b["system"] = json!(req.system);
    }
    if let Some(t) = req.temperature {
        b["temperature"] = json!(t);
    }
    if !req.tools.is_empty() {
        b["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
            .collect();
        b["tool_choice"] = match &req.tool_choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
    }
    b
}

/// A content block being streamed.
enum Block {
    Text,
    Tool {
        id: String,
        name: String,
        args: String,
    },
    /// Thinking and blocks of kinds we do not use.
    Other,
}

/// Decodes Anthropic's named SSE events.
pub struct AnthropicDecoder {
    endpoint: Endpoint,
    blocks: Vec<(u32, Block)>,
    usage: Usage,
    stop: Option<StopReason>,
    started: bool,
    done: bool,
}

impl AnthropicDecoder {
    pub fn new(endpoint: Endpoint) -> AnthropicDecoder {
        AnthropicDecoder {
            endpoint,
            blocks: vec![],
            usage: Usage::default(),
            stop: None,
            started: false,
            done: false,
        }
    }

    fn read_usage(&mut self, u: &Value) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        let cache_read = n("cache_read_input_tokens");
        if n("input_tokens").is_some() || cache_read.is_some() {
            self.usage.input_tokens = n("input_tokens").unwrap_or(0)
                + cache_read.unwrap_or(0)
                + n("cache_creation_input_tokens").unwrap_or(0);
            self.usage.cached_input_tokens = cache_read.unwrap_or(0);
        }
        if let Some(o) = n("output_tokens") {
            // Cumulative in message_delta.
            self.usage.output_tokens = o;
        }
    }

    fn block(&mut self, index: u32) -> Result<&mut Block, ProviderError> {
        match self.blocks.iter_mut().find(|(i, _)| *i == index) {
            Some((_, b)) => Ok(b),
            None => Err(bad(
                &self.endpoint,
                format!("delta for content block {index}, which never started"),
            )),
        }
    }

    /// An `error` event in the stream: the same kinds as an HTTP error.
    fn stream_error(&self, v: &Value) -> ProviderError {
        let kind = v
            .pointer("/error/type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let message = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("error event without a message")
            .to_string();
        let endpoint = self.endpoint.clone();
        match kind {
            "overloaded_error" => ProviderError::Overloaded { endpoint, message },
            "rate_limit_error" => ProviderError::RateLimited {
                endpoint,
                retry_after: None,
                message,
            },
            "api_error" => ProviderError::Server {
                endpoint,
                status: 500,
                message,
            },
            _ => bad(&self.endpoint, format!("error event {kind:?}: {message}")),
        }
    }
}

impl Decoder for AnthropicDecoder {
    fn feed(&mut self, event: Option<&str>, data: &str) -> Result<Vec<StreamEvent>, ProviderError> {
        let v = json(&self.endpoint, "an event's data", data)?;
        // The event name is repeated as `type` in the data; trust the data.
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .or(event)
            .unwrap_or_default()
            .to_string();
        let idx = || v.get("index").and_then(Value::as_u64).map(|i| i as u32);
        let mut out = vec![];
        match ty.as_str() {
            "message_start" => {
                let model = v
                    .pointer("/message/model")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if let Some(u) = v.pointer("/message/usage") {
                    self.read_usage(&u.clone());
                }
                self.started = true;
                out.push(StreamEvent::Start { model });
            }
            "content_block_start" => {
                let index = idx()
                    .ok_or_else(|| bad(&self.endpoint, "content_block_start without index"))?;
                let cb = v.get("content_block").cloned().unwrap_or_default();
                let block = match cb.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = cb
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            out.push(StreamEvent::TextDelta(t.to_string()));
                        }
                        Block::Text
                    }
                    Some("tool_use") => {
                        let id = cb
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let name = cb
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        if name.is_empty() {
                            return Err(bad(&self.endpoint, "tool_use block without a name"));
                        }
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: id.clone(),
                            name: name.clone(),
                        });
                        Block::Tool {
                            id,
                            name,
                            args: String::new(),
                        }
                    }
                    _ => Block::Other,
                };
                self.blocks.push((index, block));
            }
            "content_block_delta" => {
                let index = idx()
                    .ok_or_else(|| bad(&self.endpoint, "content_block_delta without index"))?;
                let delta = v.get("delta").cloned().unwrap_or_default();
                match (
                    self.block(index)?,
                    delta.get("type").and_then(Value::as_str),
                ) {
                    (Block::Text, Some("text_delta")) => {
                        let t = delta
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if !t.is_empty() {
                            out.push(StreamEvent::TextDelta(t.to_string()));
                        }
                    }
                    (Block::Tool { args, .. }, Some("input_json_delta")) => {
                        let j = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        args.push_str(j);
                        if !j.is_empty() {
                            out.push(StreamEvent::ToolCallDelta {
                                index,
                                arguments: j.to_string(),
                            });
                        }
                    }
                    (Block::Other, _) => {}
                    (_, other) => {
                        return Err(bad(
                            &self.endpoint,
                            format!("delta {other:?} does not fit content block {index}"),
                        ));
                    }
                }
            }
            "content_block_stop" => {
                let index =
                    idx().ok_or_else(|| bad(&self.endpoint, "content_block_stop without index"))?;
                if let Block::Tool { id, name, args } = self.block(index)? {
                    out.push(StreamEvent::ToolCallDone {
                        index,
                        call: ToolCall {
                            id: id.clone(),
                            name: name.clone(),
                            arguments: std::mem::take(args),
                        },
                    });
                }
            }
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(match r {
                        "end_turn" => StopReason::EndTurn,
                        "max_tokens" => StopReason::MaxTokens,
                        "tool_use" => StopReason::ToolUse,
                        "stop_sequence" => StopReason::StopSequence,
                        other => StopReason::Other(other.to_string()),
                    });
                }
                if let Some(u) = v.get("usage") {
                    self.read_usage(&u.clone());
                }
            }
            "message_stop" => {
                if !self.started {
                    return Err(bad(&self.endpoint, "message_stop before message_start"));
                }
                let stop = self
                    .stop
                    .clone()
                    .ok_or_else(|| bad(&self.endpoint, "message_stop without a stop_reason"))?;
                self.done = true;
                out.push(StreamEvent::Usage(self.usage));
                out.push(StreamEvent::Stop(stop));
            }
            "ping" => {}
            "error" => return Err(self.stream_error(&v)),
            // New event types may be added to the API: skip them.
            _ => tracing::debug!(event = %ty, "unknown Anthropic stream event skipped"),
        }
        Ok(out)
    }

    fn done(&self) -> bool {
        self.done
    }

    fn truncated(&self) -> ProviderError {
        bad(
            &self.endpoint,
            if self.started {
                "the stream ended before message_stop (truncated)"
            } else {
                "the stream ended before message_start (no event at all)"
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_all;
    use plexus_catalog::ProviderKind;

    fn dec() -> AnthropicDecoder {
        AnthropicDecoder::new(Endpoint {
            kind: ProviderKind::Anthropic,
            base_url: "http://x".into(),
        })
    }

    /// A tool-use turn as the API streams it (from Anthropic's docs).
    const TOOL_TURN: &[(Option<&str>, &str)] = &[
        (
            Some("message_start"),
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":472,"cache_read_input_tokens":28,"output_tokens":2}}}"#,
        ),
        (
            Some("content_block_start"),
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        (Some("ping"), r#"{"type": "ping"}"#),
        (
            Some("content_block_delta"),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me "}}"#,
        ),
        (
            Some("content_block_delta"),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"look."}}"#,
        ),
        (
            Some("content_block_stop"),
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            Some("content_block_start"),
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01","name":"Read","input":{}}}"#,
        ),
        (
            Some("content_block_delta"),
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"file_path\": \"a"}}"#,
        ),
        (
            Some("content_block_delta"),
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":".txt\"}"}}"#,
        ),
        (
            Some("content_block_stop"),
            r#"{"type":"content_block_stop","index":1}"#,
        ),
        (
            Some("message_delta"),
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
        ),
        (Some("message_stop"), r#"{"type":"message_stop"}"#),
    ];

    #[test]
    fn a_tool_use_turn_decodes_in_order() {
        let ev = decode_all(&mut dec(), TOOL_TURN).unwrap();
        assert_eq!(
            ev[0],
            StreamEvent::Start {
                model: "claude-sonnet-4-5".into()
            }
        );
        assert_eq!(ev[1], StreamEvent::TextDelta("Let me ".into()));
        assert_eq!(ev[2], StreamEvent::TextDelta("look.".into()));
        assert_eq!(
            ev[3],
            StreamEvent::ToolCallStart {
                index: 1,
                id: "toolu_01".into(),
                name: "Read".into()
            }
        );
        let done = ev.iter().find_map(|e| match e {
            StreamEvent::ToolCallDone { call, .. } => Some(call.clone()),
            _ => None,
        });
        let call = done.unwrap();
        assert_eq!(call.input().unwrap(), json!({"file_path": "a.txt"}));
        let n = ev.len();
        assert_eq!(
            ev[n - 2],
            StreamEvent::Usage(Usage {
                input_tokens: 500,
                output_tokens: 89,
                cached_input_tokens: 28
            })
        );
        assert_eq!(ev[n - 1], StreamEvent::Stop(StopReason::ToolUse));
    }

    #[test]
    fn truncated_garbage_and_error_events_are_typed() {
        // Cut before message_stop.
        let e = decode_all(&mut dec(), &TOOL_TURN[..8]).unwrap_err();
        assert_eq!(e.kind(), "bad_response");
        assert!(e.to_string().contains("truncated"), "{e}");
        // Nothing at all.
        let e = decode_all(&mut dec(), &[]).unwrap_err();
        assert!(e.to_string().contains("no event"), "{e}");
        // Not JSON.
        let e =
            decode_all(&mut dec(), &[(Some("message_start"), "<html>oops</html>")]).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        // A delta for a block that never started.
        let e = decode_all(
            &mut dec(),
            &[TOOL_TURN[0], (Some("content_block_delta"), r#"{"type":"content_block_delta","index":5,"delta":{"type":"text_delta","text":"x"}}"#)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("block 5"), "{e}");
        // The API's mid-stream overload.
        let e = decode_all(
            &mut dec(),
            &[TOOL_TURN[0], (Some("error"), r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)],
        )
        .unwrap_err();
        assert_eq!(e.kind(), "overloaded");
        // Unknown event types are skipped.
        let mut with_unknown = TOOL_TURN.to_vec();
        with_unknown.insert(1, (Some("future_event"), r#"{"type":"future_event"}"#));
        assert!(decode_all(&mut dec(), &with_unknown).is_ok());
    }

    #[test]
    fn the_body_carries_tools_history_and_choice() {
        let req = ChatRequest {
            model: "m".into(),
            system: "sys".into(),
            messages: vec![
                crate::Message::user("hi"),
                crate::Message {
                    role: Role::Assistant,
                    parts: vec![Part::ToolCall(ToolCall {
                        id: "t1".into(),
                        name: "Read".into(),
                        arguments: "{\"file_path\":\"a\"}".into(),
                    })],
                },
                crate::Message {
                    role: Role::User,
                    parts: vec![Part::ToolResult {
                        call_id: "t1".into(),
                        content: "text".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![crate::ToolSpec {
                name: "Read".into(),
                description: "d".into(),
                input_schema: json!({"type":"object"}),
            }],
            tool_choice: ToolChoice::Tool("Read".into()),
            max_tokens: 100,
            temperature: Some(0.0),
        };
        let b = body(&req);
        assert_eq!(b["system"], "sys");
        assert_eq!(b["messages"][1]["content"][0]["input"]["file_path"], "a");
        assert_eq!(b["messages"][2]["content"][0]["tool_use_id"], "t1");
        assert_eq!(b["tool_choice"], json!({"type": "tool", "name": "Read"}));
        assert_eq!(b["stream"], true);
    }
}
