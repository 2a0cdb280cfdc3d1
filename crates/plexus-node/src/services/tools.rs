//! The node's [`ToolHost`]: what an agent's tools reach beyond its sandbox.
//!
//! - `Task` runs another agent, anywhere in the cluster, as an exec of
//!   `agent:NAME` with `$request` (the prompt), `$depth` (the runtime's
//!   `Task` depth limit reads it) and what is left of the budget.
//! - A slash command (`/plugin:command args`) runs that command through the
//!   same exec pipeline: host choice, breakers, retry policy.
//! - An MCP tool `mcp__SERVER__TOOL` runs as the plugin's command `TOOL`
//!   (its MCP handler announces the server's tools as commands).
//!
//! The cluster side is [`Calls`]: the node's exec pipeline ([`NodeCalls`]),
//! or a script in tests.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use plexus_agent::{AgentCall, ToolHost};
use plexus_exec::{RawJson, Target};
use plexus_handler::HandlerError;
use serde_json::Value;

use crate::ctx::NodeCtx;
use crate::services::exec::{self, CallSpec};

/// What the host needs of the cluster.
pub trait Calls: Send + Sync + 'static {
    /// A plugin that has agent `name`, when the caller did not say which.
    fn plugin_with_agent(&self, name: &str) -> Option<String>;
    /// Run one call through the exec pipeline: the output's JSON text, or
    /// the error as the model should read it.
    fn exec(&self, spec: CallSpec) -> BoxFuture<'static, Result<String, String>>;
}

/// The node's [`ToolHost`] over [`Calls`].
pub struct ClusterHost {
    calls: Arc<dyn Calls>,
}

impl ClusterHost {
    pub fn new(calls: Arc<dyn Calls>) -> ClusterHost {
        ClusterHost { calls }
    }

    /// Over the node's exec pipeline (held weakly: no cycle through the
    /// plugin handlers the node owns).
    pub fn for_node(ctx: &Arc<NodeCtx>) -> ClusterHost {
        ClusterHost::new(Arc::new(NodeCalls(Arc::downgrade(ctx))))
    }

    /// Run `target` for an agent of plugin `from`: the call carries
    /// `plugin:FROM` as its caller, whoever asked for the agent's run.
    fn run(
        &self,
        from: &str,
        target: Target,
        input: Value,
        trace_id: Option<String>,
    ) -> BoxFuture<'static, Result<String, HandlerError>> {
        let spec = CallSpec {
            trace_id,
            caller: Some(format!("plugin:{from}")),
            ..CallSpec::new(target, Some(RawJson::from_value(&input)))
        };
        let f = self.calls.exec(spec);
        Box::pin(async move { f.await.map_err(HandlerError::Failed) })
    }
}

impl ToolHost for ClusterHost {
    fn run_agent(&self, call: AgentCall) -> BoxFuture<'static, Result<String, HandlerError>> {
        let plugin = call
            .plugin
            .clone()
            .or_else(|| self.calls.plugin_with_agent(&call.agent));
        let Some(plugin) = plugin else {
            let m = format!("Task: no plugin in the cluster has an agent {}", call.agent);
            return Box::pin(async move { Err(HandlerError::Failed(m)) });
        };
        let mut input = serde_json::json!({
            "$request": call.prompt,
            "$depth": call.depth,
        });
        if let Some(b) = call.budget_usd {
            input["$budget_usd"] = serde_json::json!(b);
        }
        let target = Target::new(plugin, format!("agent:{}", call.agent));
        let run = self.run(&call.from_plugin, target, input, call.trace_id);
        // The sub-agent's answer is its reply's text.
        Box::pin(async move {
            let out = run.await?;
            Ok(serde_json::from_str::<Value>(&out)
                .ok()
                .and_then(|v| v["text"].as_str().map(str::to_string))
                .unwrap_or(out))
        })
    }

    fn call_mcp(
        &self,
        plugin: &str,
        _server: &str,
        tool: &str,
        input: Value,
    ) -> BoxFuture<'static, Result<String, HandlerError>> {
        self.run(plugin, Target::new(plugin, tool), input, None)
    }

    fn call_command(
        &self,
        from_plugin: &str,
        plugin: &str,
        command: &str,
        input: Value,
    ) -> BoxFuture<'static, Result<String, HandlerError>> {
        self.run(from_plugin, Target::new(plugin, command), input, None)
    }
}

/// [`Calls`] through the node's own exec pipeline.
pub struct NodeCalls(Weak<NodeCtx>);

impl Calls for NodeCalls {
    fn plugin_with_agent(&self, name: &str) -> Option<String> {
        let ctx = self.0.upgrade()?;
        let found = ctx
            .catalog
            .plugins
            .iter()
            .find(|p| p.agent(name).is_some())
            .map(|p| p.name.clone());
        found
    }

    fn exec(&self, spec: CallSpec) -> BoxFuture<'static, Result<String, String>> {
        let ctx = self.0.clone();
        Box::pin(async move {
            let ctx = ctx.upgrade().ok_or("the node is stopping")?;
            let call = exec::call(&ctx, spec).map_err(|e| e.to_string())?;
            match exec::run(&ctx, &call).await {
                Ok(s) => Ok(s.output.output.into_string()),
                Err(f) => Err(f.detail()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::StreamExt;
    use plexus_agent::{LlmHandler, RunInput, RunRequest, Target as RunTarget, ToolStatus};
    use plexus_catalog::{Agent, Catalog, ProviderKind, Sources};
    use plexus_llm::{
        ChatRequest, Endpoint, EventStream, LlmConfig, PriceTable, Provider, StopReason,
        StreamEvent, ToolCall, Usage,
    };

    use super::*;

    /// A model that plays its turns in order.
    struct Scripted {
        turns: Mutex<Vec<Vec<StreamEvent>>>,
        endpoint: Endpoint,
    }

    impl Provider for Scripted {
        fn endpoint(&self) -> &Endpoint {
            &self.endpoint
        }
        fn stream(&self, _: ChatRequest) -> EventStream {
            let turn = self.turns.lock().unwrap().remove(0);
            Box::pin(futures::stream::iter(turn.into_iter().map(Ok)))
        }
    }

    fn turn(calls: &[(&str, &str, Value)], text: &str) -> Vec<StreamEvent> {
        let mut t = vec![StreamEvent::Start { model: "m".into() }];
        if !text.is_empty() {
            t.push(StreamEvent::TextDelta(text.into()));
        }
        for (i, (id, name, args)) in calls.iter().enumerate() {
            t.push(StreamEvent::ToolCallDone {
                index: i as u32,
                call: ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments: args.to_string(),
                },
            });
        }
        t.push(StreamEvent::Usage(Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 0,
        }));
        t.push(StreamEvent::Stop(if calls.is_empty() {
            StopReason::EndTurn
        } else {
            StopReason::ToolUse
        }));
        t
    }

    /// Records each call; a sub-agent answers with a reply, a command fails
    /// as an open breaker would.
    #[derive(Default)]
    struct Script {
        calls: Mutex<Vec<(String, String, Value)>>,
        callers: Mutex<Vec<Option<String>>>,
    }

    impl Calls for Script {
        fn plugin_with_agent(&self, name: &str) -> Option<String> {
            (name == "writer").then(|| "docs".to_string())
        }
        fn exec(&self, spec: CallSpec) -> BoxFuture<'static, Result<String, String>> {
            self.callers.lock().unwrap().push(spec.caller.clone());
            let input: Value = serde_json::from_str(spec.input.unwrap().as_str()).unwrap();
            let (p, c) = (spec.target.plugin, spec.target.command);
            self.calls
                .lock()
                .unwrap()
                .push((p.clone(), c.clone(), input));
            Box::pin(async move {
                match c.as_str() {
                    "agent:writer" => Ok(r#"{"text":"three stories drafted","turns":1}"#.into()),
                    _ => Err(format!("circuit breaker of {p} is open")),
                }
            })
        }
    }

    #[tokio::test]
    async fn an_agents_task_and_slash_command_go_through_the_exec_path() {
        let c = Catalog::load(&Sources {
            embedded: vec![(
                "p.toml".into(),
                "[plugin]\nname = \"jira\"\ndescription = \"Jira work\"\n".into(),
            )],
            dirs: vec![],
        });
        let mut p = c.plugins[0].clone();
        p.agents.push(Agent {
            name: "epic".into(),
            description: "Writes epics".into(),
            tools: vec!["Task".into(), "SlashCommand".into()],
            body: "Break work into stories.".into(),
            ..Default::default()
        });
        let model = Arc::new(Scripted {
            turns: Mutex::new(vec![
                turn(
                    &[
                        (
                            "t1",
                            "Task",
                            serde_json::json!({"subagent_type": "writer", "prompt": "draft the SSO epic", "description": "draft"}),
                        ),
                        (
                            "t2",
                            "SlashCommand",
                            serde_json::json!({"command": "/git:status now"}),
                        ),
                    ],
                    "",
                ),
                turn(&[], "Done: the epic has three stories."),
            ]),
            endpoint: Endpoint {
                kind: ProviderKind::Anthropic,
                base_url: "http://scripted".into(),
            },
        });
        let script = Arc::new(Script::default());
        let dir = tempfile::tempdir().unwrap();
        let cfg = LlmConfig::new(ProviderKind::Anthropic)
            .resolve(None)
            .unwrap();
        let h = LlmHandler::with_provider(
            Arc::new(p),
            model,
            &cfg,
            Arc::new(PriceTable::default()),
            Arc::new(ClusterHost::new(script.clone())),
            plexus_agent::Workspaces::new(dir.path().join("ws")).unwrap(),
        );
        let input = RunInput::parse(r#"{"$request": "plan SSO", "$budget_usd": 1.0}"#).unwrap();
        let mut events = h.stream(RunRequest::new(RunTarget::Agent("epic".into()), input));
        let mut reply = None;
        while let Some(ev) = events.next().await {
            if let plexus_agent::RunEvent::Done(r) = ev {
                reply = Some(r);
            }
        }
        let reply = reply.expect("a reply");
        assert_eq!(reply.text, "Done: the epic has three stories.");

        let calls = script.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let (p, c, input) = &calls[0];
        assert_eq!((p.as_str(), c.as_str()), ("docs", "agent:writer"));
        assert_eq!(input["$request"], "draft the SSO epic");
        assert_eq!(input["$depth"], 1, "the sub-agent runs one level down");
        assert!(input["$budget_usd"].as_f64().unwrap() <= 1.0);
        let (p, c, input) = &calls[1];
        assert_eq!((p.as_str(), c.as_str()), ("git", "status"));
        assert_eq!(input["arguments"], "now");
        // Both calls go out as the agent's plugin, not as whoever asked.
        let callers = script.callers.lock().unwrap().clone();
        assert_eq!(callers, vec![Some("plugin:jira".to_string()); 2]);

        let t = &reply.tool_calls;
        assert_eq!(t[0].status, ToolStatus::Ok, "{t:?}");
        assert!(t[0].detail.contains("three stories drafted"), "{t:?}");
        assert_eq!(t[1].status, ToolStatus::Error, "{t:?}");
        assert!(t[1].detail.contains("breaker of git is open"), "{t:?}");
    }

    #[tokio::test]
    async fn a_task_for_an_agent_no_plugin_has_is_refused_with_its_name() {
        let host = ClusterHost::new(Arc::new(Script::default()));
        let e = host
            .run_agent(AgentCall {
                from_plugin: "jira".into(),
                plugin: None,
                agent: "nobody".into(),
                prompt: "x".into(),
                description: String::new(),
                depth: 1,
                budget_usd: None,
                trace_id: None,
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nobody"), "{e}");
    }
}
