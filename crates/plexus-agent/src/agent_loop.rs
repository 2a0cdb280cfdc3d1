//! The agent loop as a plain state machine (sans-IO, like foca or
//! raft-rs's `Ready`): it takes the model's stream events and tool results
//! and says what to do next. It enforces max turns, max tokens, the budget
//! and the tool policy, and records every tool call. The runner does the
//! I/O; tests drive it with scripted model replies.

use std::sync::Arc;

use plexus_llm::{
    ChatRequest, Message, Part, PriceTable, Role, StopReason, StreamEvent, ToolCall, ToolChoice,
    ToolSpec, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::{Decision, ToolKind, ToolPolicy};

/// Longest tool output sent back to the model, in bytes.
pub const MAX_TOOL_RESULT: usize = 30_000;
/// Longest tool output kept in a [`ToolRecord`].
pub const MAX_RECORDED: usize = 2_000;

/// The limits and prompt of one run.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The provider's model id.
    pub model: String,
    pub system: String,
    /// Messages before the request (examples), usually none.
    pub history: Vec<Message>,
    /// The first user message.
    pub user: String,
    /// Model turns at most.
    pub max_turns: u32,
    /// Output tokens per turn at most.
    pub max_tokens: u32,
    /// Stop once this much is spent; each turn's `max_tokens` is bounded
    /// by what is left.
    pub budget_usd: Option<f64>,
    pub temperature: Option<f32>,
    /// Tool choice of the first turn (later turns: auto).
    pub first_tool_choice: ToolChoice,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Stream this model turn, feed its events to [`AgentLoop::on_event`],
    /// then call [`AgentLoop::turn_ended`].
    CallModel(ChatRequest),
    /// Run these allowed calls, then call [`AgentLoop::tool_results`].
    RunTools(Vec<ToolRun>),
    /// The run is over.
    Finish(Outcome),
}

/// One allowed tool call to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRun {
    pub call: ToolCall,
    pub kind: ToolKind,
    pub input: Value,
}

/// What a tool answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolAnswer {
    pub call_id: String,
    /// `Err`: the tool failed; the text is shown to the model as an error.
    pub output: Result<String, String>,
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished its answer.
    Completed,
    /// The last turn hit `max_tokens`.
    MaxTokens,
    /// The model still wanted tools after `max_turns` turns.
    MaxTurns,
    /// The budget is spent (or cannot buy another turn).
    BudgetSpent,
    /// The provider stopped for another reason (`content_filter`, `refusal`).
    Other(String),
}

/// How one tool call went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    Ok,
    /// The tool ran and failed.
    Error,
    /// The policy refused it; the model was told why.
    Refused,
    /// Not run: the run ended first.
    NotRun,
}

/// One tool call, for the reply and the trace. `input` is JSON text (the
/// cluster's codec carries no free-form JSON values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub id: String,
    pub name: String,
    pub input: String,
    pub turn: u32,
    pub status: ToolStatus,
    /// The output (cut), the error, or why it was refused or not run.
    pub detail: String,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The text of the last turn that had any.
    pub text: String,
    pub finish: FinishReason,
    pub turns: u32,
    pub model: String,
    pub usage: Usage,
    pub cost_usd: f64,
    /// False when some turn's model had no price (its cost counted as 0).
    pub priced: bool,
    pub tool_calls: Vec<ToolRecord>,
}

/// The loop's state.
pub struct AgentLoop {
    cfg: LoopConfig,
    policy: ToolPolicy,
    prices: Arc<PriceTable>,
    tools: Vec<ToolSpec>,
    messages: Vec<Message>,
    turns: u32,
    // The turn being streamed.
    text: String,
    calls: Vec<ToolCall>,
    turn_usage: Usage,
    turn_stop: Option<StopReason>,
    // Totals.
    usage: Usage,
    cost_usd: f64,
    priced: bool,
    last_text: String,
    records: Vec<ToolRecord>,
    /// Answers of the current turn's calls, in call order (refusals are
    /// filled in at once, allowed calls when they come back).
    answers: Vec<(String, Option<Result<String, String>>)>,
    /// Estimated prompt tokens of the next turn.
    next_input_estimate: u64,
    finished: bool,
}

impl AgentLoop {
    pub fn new(cfg: LoopConfig, policy: ToolPolicy, prices: Arc<PriceTable>) -> AgentLoop {
        let tools = policy.offered();
        let mut messages = cfg.history.clone();
        messages.push(Message::user(cfg.user.clone()));
        let chars: usize = cfg.system.len()
            + messages.iter().map(|m| m.text().len()).sum::<usize>()
            + tools
                .iter()
                .map(|t| t.description.len() + t.input_schema.to_string().len())
                .sum::<usize>();
        AgentLoop {
            next_input_estimate: (chars / 4) as u64,
            cfg,
            policy,
            prices,
            tools,
            messages,
            turns: 0,
            text: String::new(),
            calls: vec![],
            turn_usage: Usage::default(),
            turn_stop: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            priced: true,
            last_text: String::new(),
            records: vec![],
            answers: vec![],
            finished: false,
        }
    }

    /// The model id in use.
    pub fn model(&self) -> &str {
        &self.cfg.model
    }

    /// Use another model from the next call on (a step down after an
    /// overload). The caller decides; the loop only records it.
    pub fn set_model(&mut self, model: String) {
        self.cfg.model = model;
    }

    /// The tools offered to the model.
    pub fn tools(&self) -> &[ToolSpec] {
        &self.tools
    }

    /// The first step.
    pub fn start(&mut self) -> Next {
        self.call_model()
    }

    /// The request for the current turn again (a retry of a failed call,
    /// possibly on a stepped-down model).
    pub fn retry_turn(&mut self) -> Next {
        self.reset_turn();
        self.call_model()
    }

    fn reset_turn(&mut self) {
        self.text.clear();
        self.calls.clear();
        self.turn_usage = Usage::default();
        self.turn_stop = None;
    }

    fn call_model(&mut self) -> Next {
        let mut max_tokens = self.cfg.max_tokens;
        if let Some(budget) = self.cfg.budget_usd {
            let left = budget - self.cost_usd;
            if left <= 0.0 {
                return self.finish(FinishReason::BudgetSpent);
            }
            if let Some(n) =
                self.prices
                    .affordable_output(&self.cfg.model, self.next_input_estimate, left)
            {
                if n == 0 {
                    return self.finish(FinishReason::BudgetSpent);
                }
                max_tokens = max_tokens.min(n.min(u32::MAX as u64) as u32);
            }
        }
        let tool_choice = if self.turns == 0 {
            self.cfg.first_tool_choice.clone()
        } else {
            ToolChoice::Auto
        };
        Next::CallModel(ChatRequest {
            model: self.cfg.model.clone(),
            system: self.cfg.system.clone(),
            messages: self.messages.clone(),
            tools: self.tools.clone(),
            tool_choice,
            max_tokens,
            temperature: self.cfg.temperature,
        })
    }

    /// One event of the turn being streamed.
    pub fn on_event(&mut self, ev: &StreamEvent) {
        match ev {
            StreamEvent::TextDelta(t) => self.text.push_str(t),
            StreamEvent::ToolCallDone { call, .. } => self.calls.push(call.clone()),
            StreamEvent::Usage(u) => self.turn_usage = *u,
            StreamEvent::Stop(r) => self.turn_stop = Some(r.clone()),
            StreamEvent::Start { .. }
            | StreamEvent::ToolCallStart { .. }
            | StreamEvent::ToolCallDelta { .. } => {}
        }
    }

    /// The turn's stream ended normally.
    pub fn turn_ended(&mut self) -> Next {
        self.turns += 1;
        let u = self.turn_usage;
        self.usage.add(u);
        let c = self.prices.cost(&self.cfg.model, &u);
        self.cost_usd += c.usd;
        self.priced &= c.priced;
        let mut parts = vec![];
        if !self.text.is_empty() {
            parts.push(Part::Text(self.text.clone()));
            self.last_text = self.text.clone();
        }
        let calls = std::mem::take(&mut self.calls);
        parts.extend(calls.iter().cloned().map(Part::ToolCall));
        if !parts.is_empty() {
            self.messages.push(Message {
                role: Role::Assistant,
                parts,
            });
        }
        let stop = self.turn_stop.take();
        self.text.clear();
        self.next_input_estimate = u.input_tokens + u.output_tokens;

        if calls.is_empty() {
            return self.finish(match stop {
                Some(StopReason::MaxTokens) => FinishReason::MaxTokens,
                Some(StopReason::Other(o)) => FinishReason::Other(o),
                _ => FinishReason::Completed,
            });
        }
        let over_budget = self.cfg.budget_usd.is_some_and(|b| self.cost_usd >= b);
        if over_budget || self.turns >= self.cfg.max_turns {
            let why = if over_budget {
                "the run's budget is spent"
            } else {
                "the run reached its turn limit"
            };
            for call in &calls {
                self.record(call, ToolStatus::NotRun, why.to_string());
            }
            return self.finish(if over_budget {
                FinishReason::BudgetSpent
            } else {
                FinishReason::MaxTurns
            });
        }
        let mut runs = vec![];
        self.answers.clear();
        for call in calls {
            let decision = match call.input() {
                Err(e) => Decision::Refuse(e),
                Ok(input) => match self.policy.check(&call.name, &input) {
                    Decision::Allow(kind) => {
                        runs.push(ToolRun {
                            call: call.clone(),
                            kind: kind.clone(),
                            input,
                        });
                        Decision::Allow(kind)
                    }
                    refuse => refuse,
                },
            };
            match decision {
                Decision::Allow(_) => self.answers.push((call.id.clone(), None)),
                Decision::Refuse(why) => {
                    self.record(&call, ToolStatus::Refused, why.clone());
                    self.answers.push((call.id.clone(), Some(Err(why))));
                }
            }
        }
        if runs.is_empty() {
            return self.send_answers();
        }
        Next::RunTools(runs)
    }

    /// The answers of the allowed calls of [`Next::RunTools`].
    pub fn tool_results(&mut self, results: Vec<ToolAnswer>) -> Next {
        for r in results {
            let Some(slot) = self
                .answers
                .iter_mut()
                .find(|(id, a)| *id == r.call_id && a.is_none())
            else {
                continue;
            };
            slot.1 = Some(r.output.clone());
            let call = self.messages.iter().rev().find_map(|m| {
                m.parts.iter().find_map(|p| match p {
                    Part::ToolCall(c) if c.id == r.call_id => Some(c.clone()),
                    _ => None,
                })
            });
            if let Some(call) = call {
                let (status, detail) = match &r.output {
                    Ok(o) => (ToolStatus::Ok, o.clone()),
                    Err(e) => (ToolStatus::Error, e.clone()),
                };
                self.record(&call, status, detail);
            }
        }
        self.send_answers()
    }

    fn send_answers(&mut self) -> Next {
        let mut parts = vec![];
        let mut chars = 0;
        for (id, a) in self.answers.drain(..) {
            let (content, is_error) = match a {
                Some(Ok(o)) => (o, false),
                Some(Err(e)) => (e, true),
                None => ("the tool gave no answer".to_string(), true),
            };
            let content = plexus_llm::error::cut(&content, MAX_TOOL_RESULT);
            chars += content.len();
            parts.push(Part::ToolResult {
                call_id: id,
                content,
                is_error,
            });
        }
        self.messages.push(Message {
            role: Role::User,
            parts,
        });
        self.next_input_estimate += (chars / 3) as u64;
        self.call_model()
    }

    fn record(&mut self, call: &ToolCall, status: ToolStatus, detail: String) {
        // The record of a refused call is replaced when it is not re-run.
        self.records.push(ToolRecord {
            id: call.id.clone(),
            name: call.name.clone(),
            input: plexus_llm::error::cut(&call.arguments, MAX_RECORDED),
            turn: self.turns,
            status,
            detail: plexus_llm::error::cut(&detail, MAX_RECORDED),
        });
    }

    fn finish(&mut self, finish: FinishReason) -> Next {
        self.finished = true;
        Next::Finish(self.outcome(finish))
    }

    /// Whether the run is over.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The outcome so far (also what a failed run had done).
    pub fn outcome(&self, finish: FinishReason) -> Outcome {
        Outcome {
            text: self.last_text.clone(),
            finish,
            turns: self.turns,
            model: self.cfg.model.clone(),
            usage: self.usage,
            cost_usd: self.cost_usd,
            priced: self.priced,
            tool_calls: self.records.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Builtin;
    use serde_json::json;

    fn cfg() -> LoopConfig {
        LoopConfig {
            model: "claude-sonnet-4-5".into(),
            system: "sys".into(),
            history: vec![],
            user: "make an epic".into(),
            max_turns: 4,
            max_tokens: 1000,
            budget_usd: None,
            temperature: None,
            first_tool_choice: ToolChoice::Auto,
        }
    }

    fn policy(tools: &[&str]) -> ToolPolicy {
        ToolPolicy::new(
            "jira",
            "epic-writer",
            &tools.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["atlassian".to_string()],
            false,
            true,
            2,
        )
    }

    fn lp(c: LoopConfig, tools: &[&str]) -> AgentLoop {
        AgentLoop::new(c, policy(tools), Arc::new(PriceTable::default()))
    }

    fn usage(i: u64, o: u64) -> StreamEvent {
        StreamEvent::Usage(Usage {
            input_tokens: i,
            output_tokens: o,
            cached_input_tokens: 0,
        })
    }

    fn call(id: &str, name: &str, args: Value) -> StreamEvent {
        StreamEvent::ToolCallDone {
            index: 0,
            call: ToolCall {
                id: id.into(),
                name: name.into(),
                arguments: args.to_string(),
            },
        }
    }

    /// Feed one scripted model turn.
    fn turn(l: &mut AgentLoop, events: Vec<StreamEvent>) -> Next {
        for e in &events {
            l.on_event(e);
        }
        l.turn_ended()
    }

    fn request(n: Next) -> ChatRequest {
        match n {
            Next::CallModel(r) => r,
            other => panic!("expected a model call, got {other:?}"),
        }
    }

    fn outcome(n: Next) -> Outcome {
        match n {
            Next::Finish(o) => o,
            other => panic!("expected the end, got {other:?}"),
        }
    }

    #[test]
    fn a_tool_turn_then_an_answer() {
        let mut l = lp(cfg(), &["Read", "Write"]);
        let r = request(l.start());
        assert_eq!(
            r.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            vec!["Read", "Write"]
        );
        let n = turn(
            &mut l,
            vec![
                StreamEvent::TextDelta("Reading.".into()),
                call("t1", "Read", json!({"file_path": "a.txt"})),
                usage(1000, 50),
                StreamEvent::Stop(StopReason::ToolUse),
            ],
        );
        let Next::RunTools(runs) = n else {
            panic!("{n:?}")
        };
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].kind, ToolKind::Builtin(Builtin::Read));
        assert_eq!(runs[0].input["file_path"], "a.txt");
        let r = request(l.tool_results(vec![ToolAnswer {
            call_id: "t1".into(),
            output: Ok("hello".into()),
        }]));
        // The conversation: user, assistant (text + call), user (result).
        assert_eq!(r.messages.len(), 3);
        assert_eq!(
            r.messages[2].parts,
            vec![Part::ToolResult {
                call_id: "t1".into(),
                content: "hello".into(),
                is_error: false
            }]
        );
        let o = outcome(turn(
            &mut l,
            vec![
                StreamEvent::TextDelta("Done: hello".into()),
                usage(1100, 20),
                StreamEvent::Stop(StopReason::EndTurn),
            ],
        ));
        assert_eq!(o.finish, FinishReason::Completed);
        assert_eq!(o.text, "Done: hello");
        assert_eq!(o.turns, 2);
        assert_eq!(
            o.usage,
            Usage {
                input_tokens: 2100,
                output_tokens: 70,
                cached_input_tokens: 0
            }
        );
        // sonnet: $3 / $15 per million.
        assert!(
            (o.cost_usd - (2100.0 * 3.0 + 70.0 * 15.0) / 1e6).abs() < 1e-12,
            "{}",
            o.cost_usd
        );
        assert!(o.priced);
        assert_eq!(o.tool_calls.len(), 1);
        assert_eq!(o.tool_calls[0].status, ToolStatus::Ok);
        assert_eq!(o.tool_calls[0].detail, "hello");
    }

    #[test]
    fn a_refused_tool_is_answered_with_why_and_recorded() {
        let mut l = lp(cfg(), &["Read", "mcp__context7__docs"]);
        l.start();
        // Two calls: one not listed, one of an unconfigured server; nothing to run.
        let r = request(turn(
            &mut l,
            vec![
                call("t1", "Bash", json!({"command": "rm -rf /"})),
                call("t2", "mcp__context7__docs", json!({})),
                usage(10, 10),
                StreamEvent::Stop(StopReason::ToolUse),
            ],
        ));
        let last = r.messages.last().unwrap();
        let Part::ToolResult {
            content, is_error, ..
        } = &last.parts[0]
        else {
            panic!()
        };
        assert!(
            *is_error && content.contains("Bash is not allowed"),
            "{content}"
        );
        let Part::ToolResult { content, .. } = &last.parts[1] else {
            panic!()
        };
        assert!(content.contains("\"context7\""), "{content}");
        let o = outcome(turn(
            &mut l,
            vec![
                StreamEvent::TextDelta("ok".into()),
                usage(10, 1),
                StreamEvent::Stop(StopReason::EndTurn),
            ],
        ));
        assert_eq!(
            o.tool_calls
                .iter()
                .map(|t| t.status.clone())
                .collect::<Vec<_>>(),
            vec![ToolStatus::Refused, ToolStatus::Refused]
        );
    }

    #[test]
    fn mixed_allowed_and_refused_calls_answer_in_call_order() {
        let mut l = lp(cfg(), &["Read"]);
        l.start();
        let n = turn(
            &mut l,
            vec![
                call("a", "Write", json!({"file_path": "x", "content": "y"})),
                call("b", "Read", json!({"file_path": "x"})),
                call("c", "Read", json!("not an object")),
                usage(10, 10),
                StreamEvent::Stop(StopReason::ToolUse),
            ],
        );
        let Next::RunTools(runs) = n else {
            panic!("{n:?}")
        };
        assert_eq!(
            runs.iter().map(|r| r.call.id.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        let r = request(l.tool_results(vec![ToolAnswer {
            call_id: "b".into(),
            output: Err("no such file".into()),
        }]));
        let ids: Vec<(String, bool)> = r
            .messages
            .last()
            .unwrap()
            .parts
            .iter()
            .map(|p| match p {
                Part::ToolResult {
                    call_id, is_error, ..
                } => (call_id.clone(), *is_error),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            ids,
            vec![("a".into(), true), ("b".into(), true), ("c".into(), true)]
        );
    }

    #[test]
    fn max_turns_stops_a_model_that_keeps_calling_tools() {
        let mut l = lp(
            LoopConfig {
                max_turns: 2,
                ..cfg()
            },
            &["Read"],
        );
        l.start();
        let n = turn(
            &mut l,
            vec![
                call("1", "Read", json!({"file_path": "a"})),
                usage(10, 5),
                StreamEvent::Stop(StopReason::ToolUse),
            ],
        );
        assert!(matches!(n, Next::RunTools(_)));
        request(l.tool_results(vec![ToolAnswer {
            call_id: "1".into(),
            output: Ok("x".into()),
        }]));
        let o = outcome(turn(
            &mut l,
            vec![
                call("2", "Read", json!({"file_path": "b"})),
                usage(10, 5),
                StreamEvent::Stop(StopReason::ToolUse),
            ],
        ));
        assert_eq!(o.finish, FinishReason::MaxTurns);
        assert_eq!(o.turns, 2);
        assert_eq!(o.tool_calls.last().unwrap().status, ToolStatus::NotRun);
    }

    #[test]
    fn the_budget_bounds_max_tokens_and_stops_the_run() {
        // $0.01 on sonnet: the first turn's prompt estimate is small, so
        // max_tokens is bounded to what the rest buys ($15 per M output).
        let mut l = lp(
            LoopConfig {
                budget_usd: Some(0.01),
                max_tokens: 4000,
                ..cfg()
            },
            &["Read"],
        );
        let r = request(l.start());
        assert!(r.max_tokens < 667 && r.max_tokens > 600, "{}", r.max_tokens);
        // The turn spends $0.003 + $0.0075 = $0.0105 > $0.01: stop, tools not run.
        let o = outcome(turn(
            &mut l,
            vec![
                call("1", "Read", json!({"file_path": "a"})),
                usage(1000, 500),
                StreamEvent::Stop(StopReason::ToolUse),
            ],
        ));
        assert_eq!(o.finish, FinishReason::BudgetSpent);
        assert_eq!(o.tool_calls[0].status, ToolStatus::NotRun);
        // A budget too small for the prompt stops before any call.
        let mut l = lp(
            LoopConfig {
                budget_usd: Some(0.0),
                ..cfg()
            },
            &[],
        );
        assert_eq!(outcome(l.start()).finish, FinishReason::BudgetSpent);
        // Within budget, a later turn gets what is left.
        let mut l = lp(
            LoopConfig {
                budget_usd: Some(0.01),
                max_tokens: 4000,
                ..cfg()
            },
            &["Read"],
        );
        l.start();
        let n = turn(
            &mut l,
            vec![
                call("1", "Read", json!({"file_path": "a"})),
                usage(1000, 100),
                StreamEvent::Stop(StopReason::ToolUse),
            ],
        );
        assert!(matches!(n, Next::RunTools(_)));
        let r = request(l.tool_results(vec![ToolAnswer {
            call_id: "1".into(),
            output: Ok("x".repeat(300)),
        }]));
        // Left: 0.01 - 0.0045 = 0.0055; next prompt ~1100 + 100 tokens ($0.0036): ~126 tokens.
        assert!(r.max_tokens < 140 && r.max_tokens > 100, "{}", r.max_tokens);
    }

    #[test]
    fn an_unknown_model_runs_unbounded_and_says_it_was_not_priced() {
        let mut l = lp(
            LoopConfig {
                model: "my-local-model".into(),
                budget_usd: Some(0.01),
                ..cfg()
            },
            &[],
        );
        assert_eq!(request(l.start()).max_tokens, 1000);
        let o = outcome(turn(
            &mut l,
            vec![
                StreamEvent::TextDelta("hi".into()),
                usage(10, 10),
                StreamEvent::Stop(StopReason::MaxTokens),
            ],
        ));
        assert_eq!(o.finish, FinishReason::MaxTokens);
        assert_eq!((o.cost_usd, o.priced), (0.0, false));
    }

    #[test]
    fn a_retried_turn_forgets_the_partial_one_and_uses_the_new_model() {
        let mut l = lp(cfg(), &[]);
        l.start();
        l.on_event(&StreamEvent::TextDelta("partial".into()));
        l.set_model("claude-haiku-4-5".into());
        let r = request(l.retry_turn());
        assert_eq!(r.model, "claude-haiku-4-5");
        let o = outcome(turn(
            &mut l,
            vec![
                StreamEvent::TextDelta("whole".into()),
                usage(1, 1),
                StreamEvent::Stop(StopReason::EndTurn),
            ],
        ));
        assert_eq!(o.text, "whole");
        assert_eq!(o.model, "claude-haiku-4-5");
    }
}
