//! OpenAI-compatible Chat Completions (`POST /v1/chat/completions`,
//! `stream: true`): OpenAI, vLLM, llama.cpp's server, Ollama, LiteLLM.

use serde_json::{json, Value};

use crate::decode::{bad, json, Decoder};
use crate::error::{Endpoint, ProviderError};
use crate::types::{ChatRequest, Part, Role, StopReason, StreamEvent, ToolCall, ToolChoice, Usage};

/// The request body.
pub fn body(req: &ChatRequest) -> Value {
    let mut messages: Vec<Value> = vec![];
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system}));
    }
    for m in &req.messages {
        match m.role {
            Role::Assistant => {
                let text = m.text();
                let calls: Vec<Value> = m
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::ToolCall(c) => Some(json!({
                            "id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        })),
                        _ => None,
                    })
                    .collect();
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = json!(calls);
                }
                messages.push(msg);
            }
            Role::User => {
                // Tool results are messages of their own, before any text.
                for p in &m.parts {
                    if let Part::ToolResult {
                        call_id,
                        content,
                        is_error,
                    } = p
                    {
                        let content = if *is_error {
                            format!("Error: {content}")
                        } else {
                            content.clone()
                        };
                        messages.push(
                            json!({"role": "tool", "tool_call_id": call_id, "content": content}),
                        );
                    }
                }
                let text = m.text();
                if !text.is_empty() {
                    messages.push(json!({"role": "user", "content": text}));
                }
            }
        }
    }
    let mut b = json!({
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(t) = req.temperature {
        b["temperature"] = json!(t);
    }
    if !req.tools.is_empty() {
        b["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}))
            .collect();
        b["tool_choice"] = match &req.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
    }
    b
}

struct OpenCall {
    index: u32,
    id: String,
    name: String,
    args: String,
}

/// Decodes `data:` chunks up to `data: [DONE]`.
pub struct OpenAiDecoder {
    endpoint: Endpoint,
    started: bool,
    calls: Vec<OpenCall>,
    usage: Option<Usage>,
    stop: Option<StopReason>,
    done: bool,
}

impl OpenAiDecoder {
    pub fn new(endpoint: Endpoint) -> OpenAiDecoder {
        OpenAiDecoder {
            endpoint,
            started: false,
            calls: vec![],
            usage: None,
            stop: None,
            done: false,
        }
    }

    fn end(&mut self) -> Result<Vec<StreamEvent>, ProviderError> {
        let stop = self.stop.clone().ok_or_else(|| {
            bad(
                &self.endpoint,
                "the stream ended without a finish_reason (truncated)",
            )
        })?;
        self.done = true;
        // Without stream_options support a server sends no usage: say 0
        // rather than invent counts.
        Ok(vec![
            StreamEvent::Usage(self.usage.unwrap_or_default()),
            StreamEvent::Stop(stop),
        ])
    }

    fn stream_error(&self, e: &Value) -> ProviderError {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error without a message")
            .to_string();
        let code = e.get("code").and_then(Value::as_u64).unwrap_or(0) as u16;
        let body = json!({ "error": e }).to_string();
        if (400..600).contains(&code) {
            return crate::error::from_status(&self.endpoint, code, None, &body, "");
        }
        let lower = body.to_ascii_lowercase();
        if lower.contains("overloaded") {
            ProviderError::Overloaded {
                endpoint: self.endpoint.clone(),
                message,
            }
        } else if lower.contains("context_length_exceeded") {
            ProviderError::ContextTooLong {
                endpoint: self.endpoint.clone(),
                message,
            }
        } else {
            ProviderError::Server {
                endpoint: self.endpoint.clone(),
                status: 500,
                message,
            }
        }
    }
}

impl Decoder for OpenAiDecoder {
    fn feed(
        &mut self,
        _event: Option<&str>,
        data: &str,
    ) -> Result<Vec<StreamEvent>, ProviderError> {
        if data.trim() == "[DONE]" {
            return self.end();
        }
        let v = json(&self.endpoint, "a chunk", data)?;
        if let Some(e) = v.get("error") {
            return Err(self.stream_error(e));
        }
        let mut out = vec![];
        if !self.started {
            self.started = true;
            let model = v
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            out.push(StreamEvent::Start { model });
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Some(Usage {
                input_tokens: n("/prompt_tokens"),
                output_tokens: n("/completion_tokens"),
                cached_input_tokens: n("/prompt_tokens_details/cached_tokens"),
            });
        }
        let choices = match v.get("choices") {
            Some(Value::Array(c)) => c.clone(),
            None | Some(Value::Null) => vec![],
            Some(other) => {
                return Err(bad(
                    &self.endpoint,
                    format!(
                        "choices is not an array: {}",
                        crate::error::cut(&other.to_string(), 80)
                    ),
                ))
            }
        };
        // One completion is asked for: choice 0.
        if let Some(c) = choices
            .iter()
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        {
            let delta = c.get("delta").cloned().unwrap_or_default();
            if let Some(t) = delta
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                out.push(StreamEvent::TextDelta(t.to_string()));
            }
            if let Some(Value::Array(tcs)) = delta.get("tool_calls") {
                for tc in tcs {
                    let index = tc.get("index").and_then(Value::as_u64).unwrap_or(0) as u32;
                    let id = tc.get("id").and_then(Value::as_str);
                    let name = tc.pointer("/function/name").and_then(Value::as_str);
                    let args = tc
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !self.calls.iter().any(|c| c.index == index) {
                        let name = name.filter(|n| !n.is_empty()).ok_or_else(|| {
                            bad(
                                &self.endpoint,
                                format!("tool call {index} starts without a function name"),
                            )
                        })?;
                        let id = id
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("call_{index}"));
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: id.clone(),
                            name: name.to_string(),
                        });
                        self.calls.push(OpenCall {
                            index,
                            id,
                            name: name.to_string(),
                            args: String::new(),
                        });
                    }
                    if !args.is_empty() {
                        if let Some(c) = self.calls.iter_mut().find(|c| c.index == index) {
                            c.args.push_str(args);
                        }
                        out.push(StreamEvent::ToolCallDelta {
                            index,
                            arguments: args.to_string(),
                        });
                    }
                }
            }
            if let Some(r) = c.get("finish_reason").and_then(Value::as_str) {
                self.stop = Some(match r {
                    "stop" => StopReason::EndTurn,
                    "length" => StopReason::MaxTokens,
                    "tool_calls" | "function_call" => StopReason::ToolUse,
                    other => StopReason::Other(other.to_string()),
                });
                self.calls.sort_by_key(|c| c.index);
                for c in self.calls.drain(..) {
                    out.push(StreamEvent::ToolCallDone {
                        index: c.index,
                        call: ToolCall {
                            id: c.id,
                            name: c.name,
                            arguments: c.args,
                        },
                    });
                }
            }
        }
        Ok(out)
    }

    fn done(&self) -> bool {
        self.done
    }

    /// A server that closes the stream after the finish chunk without
    /// `[DONE]` has still finished the turn.
    fn finish(&mut self) -> Result<Vec<StreamEvent>, ProviderError> {
        if self.done {
            return Ok(vec![]);
        }
        if self.stop.is_some() {
            return self.end();
        }
        Err(self.truncated())
    }

    fn truncated(&self) -> ProviderError {
        bad(
            &self.endpoint,
            if self.started {
                "the stream ended before a finish_reason (truncated)"
            } else {
                "the stream ended before its first chunk (no event at all)"
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_all;
    use plexus_catalog::ProviderKind;

    fn dec() -> OpenAiDecoder {
        OpenAiDecoder::new(Endpoint {
            kind: ProviderKind::Openai,
            base_url: "http://x".into(),
        })
    }

    /// Text then usage, as llama.cpp's server sent it (recorded).
    const TEXT_TURN: &[(Option<&str>, &str)] = &[
        (
            None,
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":1,"id":"c1","model":"smollm2-135m-instruct","object":"chat.completion.chunk"}"#,
        ),
        (
            None,
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hello"}}],"created":1,"id":"c1","model":"smollm2-135m-instruct","object":"chat.completion.chunk"}"#,
        ),
        (
            None,
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" there"}}],"created":1,"id":"c1","model":"smollm2-135m-instruct","object":"chat.completion.chunk"}"#,
        ),
        (
            None,
            r#"{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1,"id":"c1","model":"smollm2-135m-instruct","object":"chat.completion.chunk"}"#,
        ),
        (
            None,
            r#"{"choices":[],"created":1,"id":"c1","model":"smollm2-135m-instruct","object":"chat.completion.chunk","usage":{"completion_tokens":8,"prompt_tokens":32,"total_tokens":40,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        ),
        (None, "[DONE]"),
    ];

    /// Two parallel tool calls as OpenAI streams them.
    const TOOL_TURN: &[(Option<&str>, &str)] = &[
        (
            None,
            r#"{"id":"c2","model":"gpt-4.1","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"Read","arguments":""}}]},"finish_reason":null}]}"#,
        ),
        (
            None,
            r#"{"id":"c2","model":"gpt-4.1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"file_"}}]},"finish_reason":null}]}"#,
        ),
        (
            None,
            r#"{"id":"c2","model":"gpt-4.1","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"Glob","arguments":"{\"pattern\":\"*.md\"}"}}]},"finish_reason":null}]}"#,
        ),
        (
            None,
            r#"{"id":"c2","model":"gpt-4.1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"path\":\"a\"}"}}]},"finish_reason":null}]}"#,
        ),
        (
            None,
            r#"{"id":"c2","model":"gpt-4.1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ),
        (
            None,
            r#"{"id":"c2","model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":30}}"#,
        ),
        (None, "[DONE]"),
    ];

    #[test]
    fn a_text_turn_decodes_with_usage_last() {
        let ev = decode_all(&mut dec(), TEXT_TURN).unwrap();
        assert_eq!(
            ev,
            vec![
                StreamEvent::Start {
                    model: "smollm2-135m-instruct".into()
                },
                StreamEvent::TextDelta("Hello".into()),
                StreamEvent::TextDelta(" there".into()),
                StreamEvent::Usage(Usage {
                    input_tokens: 32,
                    output_tokens: 8,
                    cached_input_tokens: 4
                }),
                StreamEvent::Stop(StopReason::MaxTokens),
            ]
        );
    }

    #[test]
    fn interleaved_tool_calls_are_assembled_per_index() {
        let ev = decode_all(&mut dec(), TOOL_TURN).unwrap();
        let calls: Vec<ToolCall> = ev
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallDone { call, .. } => Some(call.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id, "call_a");
        assert_eq!(calls[0].input().unwrap(), json!({"file_path": "a"}));
        assert_eq!(calls[1].name, "Glob");
        assert_eq!(ev.last(), Some(&StreamEvent::Stop(StopReason::ToolUse)));
    }

    #[test]
    fn truncated_garbage_and_error_chunks_are_typed() {
        let e = decode_all(&mut dec(), &TEXT_TURN[..3]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Finished but no [DONE]: complete.
        assert!(decode_all(&mut dec(), &TEXT_TURN[..5]).is_ok());
        let e = decode_all(&mut dec(), &[]).unwrap_err();
        assert!(e.to_string().contains("no event"), "{e}");
        let e = decode_all(&mut dec(), &[(None, "{\"choices\": [")]).unwrap_err();
        assert_eq!(e.kind(), "bad_response");
        let e = decode_all(&mut dec(), &[(None, r#"{"choices":"nope"}"#)]).unwrap_err();
        assert!(e.to_string().contains("choices"), "{e}");
        let e = decode_all(
            &mut dec(),
            &[(
                None,
                r#"{"error":{"message":"The server is overloaded","type":"server_error"}}"#,
            )],
        )
        .unwrap_err();
        assert_eq!(e.kind(), "overloaded");
        let e = decode_all(&mut dec(), &[(None, r#"{"error":{"code":400,"message":"request exceeds the available context size","type":"exceed_context_size_error"}}"#)]).unwrap_err();
        assert_eq!(e.kind(), "context_too_long");
        let e = decode_all(&mut dec(), &[(None, r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#)]).unwrap_err();
        assert!(e.to_string().contains("without a function name"), "{e}");
    }

    #[test]
    fn the_body_splits_tool_results_into_tool_messages() {
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
                        arguments: "{}".into(),
                    })],
                },
                crate::Message {
                    role: Role::User,
                    parts: vec![Part::ToolResult {
                        call_id: "t1".into(),
                        content: "no such file".into(),
                        is_error: true,
                    }],
                },
            ],
            tools: vec![crate::ToolSpec {
                name: "Read".into(),
                description: "d".into(),
                input_schema: json!({"type":"object"}),
            }],
            tool_choice: ToolChoice::Required,
            max_tokens: 10,
            temperature: None,
        };
        let b = body(&req);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][2]["content"], Value::Null);
        assert_eq!(
            b["messages"][2]["tool_calls"][0]["function"]["name"],
            "Read"
        );
        assert_eq!(
            b["messages"][3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "Error: no such file"})
        );
        assert_eq!(b["tool_choice"], "required");
        assert_eq!(b["stream_options"]["include_usage"], true);
    }
}
