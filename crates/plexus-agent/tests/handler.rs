//! The `llm` handler end to end with a scripted model: real sandboxed
//! tools, an in-memory ToolHost, streaming, cancellation, deadlines,
//! overload step-down and error mapping.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use plexus_agent::{
    AgentCall, FinishReason, LlmHandler, RunEvent, RunInput, RunRequest, Target, ToolHost,
    ToolStatus, Workspaces,
};
use plexus_catalog::{Agent, Catalog, Command, ModelTier, Plugin, ProviderKind, Sources};
use plexus_handler::{CommandHandler, ExecRequest, HandlerError, ProviderFailure};
use plexus_llm::{
    ChatRequest, Endpoint, EventStream, LlmConfig, PriceTable, Provider, ProviderError, StopReason,
    StreamEvent, ToolCall, Usage,
};
use serde_json::{json, Value};

type Turn = Vec<Result<StreamEvent, ProviderError>>;

/// Plays scripted turns in order and records what it was asked.
struct Scripted {
    turns: Mutex<VecDeque<Turn>>,
    asked: Mutex<Vec<ChatRequest>>,
    /// Set when a stream is dropped (the HTTP request would be aborted).
    dropped: Arc<tokio::sync::Notify>,
    endpoint: Endpoint,
}

impl Scripted {
    fn new(turns: Vec<Turn>) -> Arc<Scripted> {
        Arc::new(Scripted {
            turns: Mutex::new(turns.into()),
            asked: Mutex::new(vec![]),
            dropped: Arc::new(tokio::sync::Notify::new()),
            endpoint: Endpoint {
                kind: ProviderKind::Anthropic,
                base_url: "http://scripted".into(),
            },
        })
    }

    fn asked(&self) -> Vec<ChatRequest> {
        self.asked.lock().unwrap().clone()
    }
}

struct NotifyOnDrop(Arc<tokio::sync::Notify>);
impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl Provider for Scripted {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn stream(&self, req: ChatRequest) -> EventStream {
        self.asked.lock().unwrap().push(req);
        let guard = NotifyOnDrop(self.dropped.clone());
        match self.turns.lock().unwrap().pop_front() {
            Some(events) => Box::pin(
                futures::stream::iter(events).chain(
                    futures::stream::once(async move {
                        drop(guard);
                        Err(ProviderError::BadResponse {
                            endpoint: Endpoint {
                                kind: ProviderKind::Anthropic,
                                base_url: "x".into(),
                            },
                            message: "unreachable".into(),
                        })
                    })
                    .take(0),
                ),
            ),
            // No script left: a model that never answers.
            None => Box::pin(
                futures::stream::pending().chain(futures::stream::once(async move {
                    drop(guard);
                    unreachable!()
                })),
            ),
        }
    }
}

fn text_turn(t: &str, i: u64, o: u64) -> Turn {
    vec![
        Ok(StreamEvent::Start { model: "m".into() }),
        Ok(StreamEvent::TextDelta(t[..t.len() / 2].to_string())),
        Ok(StreamEvent::TextDelta(t[t.len() / 2..].to_string())),
        Ok(StreamEvent::Usage(Usage {
            input_tokens: i,
            output_tokens: o,
            cached_input_tokens: 0,
        })),
        Ok(StreamEvent::Stop(StopReason::EndTurn)),
    ]
}

fn tool_turn(calls: &[(&str, &str, Value)]) -> Turn {
    let mut t = vec![Ok(StreamEvent::Start { model: "m".into() })];
    for (i, (id, name, args)) in calls.iter().enumerate() {
        t.push(Ok(StreamEvent::ToolCallDone {
            index: i as u32,
            call: ToolCall {
                id: id.to_string(),
                name: name.to_string(),
                arguments: args.to_string(),
            },
        }));
    }
    t.push(Ok(StreamEvent::Usage(Usage {
        input_tokens: 100,
        output_tokens: 20,
        cached_input_tokens: 0,
    })));
    t.push(Ok(StreamEvent::Stop(StopReason::ToolUse)));
    t
}

fn overloaded() -> Turn {
    vec![Err(ProviderError::Overloaded {
        endpoint: Endpoint {
            kind: ProviderKind::Anthropic,
            base_url: "http://scripted".into(),
        },
        message: "Overloaded".into(),
    })]
}

/// Records calls; answers MCP and commands, and Task with a canned text.
#[derive(Default)]
struct MemoryHost {
    calls: Mutex<Vec<String>>,
}

impl ToolHost for MemoryHost {
    fn run_agent(&self, call: AgentCall) -> BoxFuture<'static, Result<String, HandlerError>> {
        self.calls.lock().unwrap().push(format!(
            "task {:?}:{} depth {} {}",
            call.plugin, call.agent, call.depth, call.prompt
        ));
        Box::pin(async { Ok("sub-agent says hi".to_string()) })
    }
    fn call_mcp(
        &self,
        plugin: &str,
        server: &str,
        tool: &str,
        input: Value,
    ) -> BoxFuture<'static, Result<String, HandlerError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("mcp {plugin} {server} {tool} {input}"));
        Box::pin(async { Ok("{\"key\":\"PLAT-7\"}".to_string()) })
    }
    fn call_command(
        &self,
        from: &str,
        plugin: &str,
        command: &str,
        input: Value,
    ) -> BoxFuture<'static, Result<String, HandlerError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("command {from} -> {plugin}/{command} {input}"));
        Box::pin(async { Err(HandlerError::Failed("breaker open".into())) })
    }
}

fn plugin(extra_manifest: &str) -> Arc<Plugin> {
    let c = Catalog::load(&Sources {
        embedded: vec![(
            "p.toml".into(),
            format!("[plugin]\nname = \"jira\"\ndescription = \"Jira work\"\n{extra_manifest}"),
        )],
        dirs: vec![],
    });
    assert!(c.errors().next().is_none(), "{:?}", c.diagnostics);
    let mut p = c.plugins[0].clone();
    p.mcp_servers.push(plexus_catalog::McpServer {
        name: "atlassian".into(),
        command: Some("true".into()),
        args: vec![],
        url: None,
        env: vec![],
        description: None,
    });
    p.agents.push(Agent {
        name: "epic-writer".into(),
        description: "Writes epics".into(),
        model: Some(ModelTier::Sonnet),
        tools: [
            "Read",
            "Write",
            "Task",
            "SlashCommand",
            "mcp__atlassian__create_issue",
            "mcp__github__pr",
        ]
        .map(String::from)
        .to_vec(),
        body: "# Epic writer\nBreak work into stories.".into(),
        ..Default::default()
    });
    p.commands.push(Command {
        name: "summarize".into(),
        description: "Summarize".into(),
        body: "Summarize $1 for $ARGUMENTS".into(),
        ..Default::default()
    });
    Arc::new(p)
}

struct Setup {
    _dir: tempfile::TempDir,
    handler: LlmHandler,
    model: Arc<Scripted>,
    host: Arc<MemoryHost>,
}

fn setup(turns: Vec<Turn>, manifest: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let model = Scripted::new(turns);
    let host = Arc::new(MemoryHost::default());
    let cfg = LlmConfig::new(ProviderKind::Anthropic)
        .resolve(None)
        .unwrap();
    let handler = LlmHandler::with_provider(
        plugin(manifest),
        model.clone(),
        &cfg,
        Arc::new(PriceTable::default()),
        host.clone(),
        Workspaces::new(dir.path().join("ws")).unwrap(),
    );
    Setup {
        _dir: dir,
        handler,
        model,
        host,
    }
}

fn agent_request(input: Value) -> RunRequest {
    RunRequest::new(
        Target::Agent("epic-writer".into()),
        RunInput::parse(&input.to_string()).unwrap(),
    )
}

#[tokio::test]
async fn an_agent_writes_and_reads_in_its_sandboxed_workspace_and_streams_every_step() {
    let s = setup(
        vec![
            tool_turn(&[(
                "t1",
                "Write",
                json!({"file_path": "plan.md", "content": "1. SSO story"}),
            )]),
            tool_turn(&[
                ("t2", "Read", json!({"file_path": "plan.md"})),
                ("t3", "Bash", json!({"command": "id"})),
            ]),
            text_turn("Epic created with 1 story.", 300, 40),
        ],
        "[llm.workspace]\nreturnFiles = true\n",
    );
    let mut stream = s.handler.stream(agent_request(
        json!({"$request": "create an epic for SSO", "project": "PLAT"}),
    ));
    let mut events = vec![];
    while let Some(ev) = stream.next().await {
        events.push(ev);
    }
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            RunEvent::Start { .. } => "start".into(),
            RunEvent::Text(_) => "text".into(),
            RunEvent::ToolCall { name, .. } => format!("call {name}"),
            RunEvent::ToolResult { name, status, .. } => format!("result {name} {status:?}"),
            RunEvent::StepDown(_) => "step".into(),
            RunEvent::Done(_) => "done".into(),
            RunEvent::Failed(e) => format!("failed {e}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "start",
            "call Write",
            "result Write Ok",
            "call Read",
            "call Bash",
            "result Bash Refused",
            "result Read Ok",
            "text",
            "text",
            "done"
        ]
    );
    let RunEvent::Done(reply) = events.last().unwrap() else {
        panic!()
    };
    assert_eq!(reply.text, "Epic created with 1 story.");
    assert_eq!(reply.model, "claude-sonnet-4-5");
    assert_eq!(reply.finish, FinishReason::Completed);
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 500,
            output_tokens: 80,
            cached_input_tokens: 0
        }
    );
    assert!((reply.cost_usd - (500.0 * 3.0 + 80.0 * 15.0) / 1e6).abs() < 1e-12);
    assert_eq!(
        reply.files,
        vec![("plan.md".to_string(), "1. SSO story".to_string())]
    );
    let read = reply.tool_calls.iter().find(|t| t.name == "Read").unwrap();
    assert_eq!(
        (read.status.clone(), read.detail.as_str()),
        (ToolStatus::Ok, "     1\t1. SSO story\n")
    );
    // The model saw the Read result and the Bash refusal, in call order.
    let asked = s.model.asked();
    assert_eq!(asked.len(), 3);
    let last = asked[2].messages.last().unwrap();
    assert_eq!(last.parts.len(), 2);
    assert!(
        format!("{:?}", last.parts[1]).contains("Bash is not allowed"),
        "{:?}",
        last.parts
    );
    // The system prompt is the agent's body with its plugin.
    assert!(
        asked[0].system.contains("plugin \"jira\": Jira work")
            && asked[0].system.contains("Break work into stories.")
    );
    assert!(asked[0].messages[0]
        .text()
        .starts_with("create an epic for SSO\n\nInput:"));
}

#[tokio::test]
async fn task_mcp_and_other_plugins_go_through_the_tool_host() {
    let s = setup(
        vec![
            tool_turn(&[
                (
                    "a",
                    "Task",
                    json!({"subagent_type": "github:pr-reviewer", "prompt": "review it"}),
                ),
                (
                    "b",
                    "mcp__atlassian__create_issue",
                    json!({"summary": "SSO"}),
                ),
                ("c", "mcp__github__pr", json!({})),
                (
                    "d",
                    "SlashCommand",
                    json!({"command": "/lobbi:deploy staging"}),
                ),
            ]),
            text_turn("ok", 10, 2),
        ],
        "",
    );
    let reply = s
        .handler
        .run(agent_request(json!({"$request": "go", "$depth": 1})))
        .await
        .unwrap();
    let calls = s.host.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            "task Some(\"github\"):pr-reviewer depth 2 review it".to_string(),
            "mcp jira atlassian create_issue {\"summary\":\"SSO\"}".to_string(),
            "command jira -> lobbi/deploy {\"arguments\":\"staging\"}".to_string(),
        ]
    );
    let status: Vec<(String, ToolStatus)> = reply
        .tool_calls
        .iter()
        .map(|t| (t.name.clone(), t.status.clone()))
        .collect();
    assert!(
        status.contains(&("mcp__github__pr".into(), ToolStatus::Refused)),
        "{status:?}"
    );
    assert!(
        status.contains(&("SlashCommand".into(), ToolStatus::Error)),
        "{status:?}"
    );
    let refused = reply
        .tool_calls
        .iter()
        .find(|t| t.name == "mcp__github__pr")
        .unwrap();
    assert!(refused.detail.contains("\"github\""), "{}", refused.detail);

    // At the depth limit, Task is refused with why.
    let s = setup(
        vec![
            tool_turn(&[("a", "Task", json!({"subagent_type": "x", "prompt": "p"}))]),
            text_turn("ok", 1, 1),
        ],
        "",
    );
    let reply = s
        .handler
        .run(agent_request(json!({"$request": "go", "$depth": 2})))
        .await
        .unwrap();
    assert_eq!(reply.tool_calls[0].status, ToolStatus::Refused);
    assert!(
        reply.tool_calls[0].detail.contains("depth limit (2)"),
        "{}",
        reply.tool_calls[0].detail
    );
    assert!(s.host.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_overload_steps_down_one_tier_and_says_so() {
    let s = setup(vec![overloaded(), text_turn("from haiku", 10, 2)], "");
    let reply = s.handler.run(agent_request(json!("hi"))).await.unwrap();
    assert_eq!(reply.model, "claude-haiku-4-5");
    assert_eq!(reply.tier, Some(ModelTier::Haiku));
    assert_eq!(reply.step_downs.len(), 1);
    assert_eq!(reply.step_downs[0].from_model, "claude-sonnet-4-5");
    let asked = s.model.asked();
    assert_eq!(
        (asked[0].model.as_str(), asked[1].model.as_str()),
        ("claude-sonnet-4-5", "claude-haiku-4-5")
    );
    // Not when the request forces a model, nor below haiku.
    let s = setup(vec![overloaded()], "");
    let e = s
        .handler
        .run(agent_request(
            json!({"$request": "hi", "$model": "claude-sonnet-4-5"}),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            HandlerError::Provider {
                failure: ProviderFailure::Overloaded,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.retryable() && e.is_plugin_fault());
    let s = setup(vec![overloaded(), overloaded()], "");
    let mut r = agent_request(json!("hi"));
    r.tier = Some(ModelTier::Haiku);
    assert!(s.handler.run(r).await.is_err());
}

#[tokio::test]
async fn provider_failures_become_typed_handler_errors() {
    let ep = Endpoint {
        kind: ProviderKind::Anthropic,
        base_url: "https://api.anthropic.com".into(),
    };
    let cases = vec![
        (
            ProviderError::Auth {
                endpoint: ep.clone(),
                env: "ANTHROPIC_API_KEY".into(),
                message: "invalid x-api-key".into(),
            },
            "auth",
            false,
            false,
        ),
        (
            ProviderError::RateLimited {
                endpoint: ep.clone(),
                retry_after: Some(Duration::from_secs(3)),
                message: "slow down".into(),
            },
            "rate_limited",
            true,
            false,
        ),
        (
            ProviderError::ContextTooLong {
                endpoint: ep.clone(),
                message: "too long".into(),
            },
            "context_too_long",
            false,
            false,
        ),
        (
            ProviderError::Server {
                endpoint: ep.clone(),
                status: 502,
                message: "bad gateway".into(),
            },
            "provider_error",
            true,
            true,
        ),
        (
            ProviderError::Timeout {
                endpoint: ep.clone(),
                phase: "between chunks",
                after: Duration::from_secs(9),
            },
            "timeout",
            true,
            true,
        ),
    ];
    for (pe, kind, retry, fault) in cases {
        let s = setup(vec![vec![Err(pe.clone())]], "");
        let e = s.handler.run(agent_request(json!("hi"))).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.retryable(), e.is_plugin_fault()),
            (kind, retry, fault),
            "{pe}"
        );
        if kind == "auth" {
            assert!(
                e.to_string().contains("ANTHROPIC_API_KEY") && e.to_string().contains("anthropic"),
                "{e}"
            );
        }
        if kind == "rate_limited" {
            assert_eq!(e.retry_after_ms(), Some(3000));
        }
    }
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_model_call() {
    // No script: the model never answers.
    let s = setup(vec![], "");
    let mut stream = s.handler.stream(agent_request(json!("hi")));
    assert!(matches!(stream.next().await, Some(RunEvent::Start { .. })));
    let dropped = s.model.dropped.clone();
    let waiting = dropped.notified();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the model stream was dropped");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_run_that_waits_on_its_model() {
    let s = setup(vec![], "");
    let mut r = agent_request(json!("hi"));
    r.deadline = Some(Duration::from_secs(30));
    let e = s.handler.run(r).await.unwrap_err();
    assert_eq!(e, HandlerError::Timeout(30_000));
}

#[tokio::test]
async fn execute_runs_commands_with_their_template_and_reports_usage() {
    let s = setup(vec![text_turn("Summary.", 50, 5)], "");
    let out = s
        .handler
        .execute(ExecRequest {
            caller: None,
            plugin: "jira".into(),
            command: "/summarize".into(),
            input: json!({"arguments": "PLAT-1 the-board"}).to_string(),
            idempotency_key: None,
            trace_id: None,
            model: Some(ModelTier::Haiku),
        })
        .await
        .unwrap();
    assert_eq!(out.model, Some(ModelTier::Haiku));
    let v: Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(v["text"], "Summary.");
    assert_eq!(v["model"], "claude-haiku-4-5");
    assert_eq!(v["usage"]["input_tokens"], 50);
    assert!((out.cost_usd - (50.0 * 1.0 + 5.0 * 5.0) / 1e6).abs() < 1e-12);
    assert_eq!(
        s.model.asked()[0].messages[0].text(),
        "Summarize PLAT-1 for PLAT-1 the-board"
    );
    let unknown = s.handler.execute(ExecRequest {
        caller: None,
        plugin: "jira".into(),
        command: "agent:nobody".into(),
        input: "{}".into(),
        idempotency_key: None,
        trace_id: None,
        model: None,
    });
    assert!(matches!(
        unknown.await,
        Err(HandlerError::UnknownCommand { .. })
    ));
    let bad = s.handler.execute(ExecRequest {
        caller: None,
        plugin: "jira".into(),
        command: "summarize".into(),
        input: "{\"$max_tokens\": -3}".into(),
        idempotency_key: None,
        trace_id: None,
        model: None,
    });
    assert!(matches!(bad.await, Err(HandlerError::BadInput(m)) if m.contains("$max_tokens")));
}
