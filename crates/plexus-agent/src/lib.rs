//! The agent runtime (issue 18): runs a plugin's agents and commands on a
//! language model.
//!
//! - [`prompt`]: system prompt and first message from the catalog;
//!   command templates with `$ARGUMENTS` / `$1`..`$9`.
//! - [`agent_loop`]: the sans-IO loop (turns, max tokens, budget, tool
//!   policy, tool-call records), driven by [`runner`].
//! - [`policy`]: which tools an agent may call.
//! - [`tools`] and [`workspace`]: Claude Code's built-in tools as
//!   processes in the plexus-process sandbox, in a per-run workspace.
//! - [`host`]: [`ToolHost`], what the node provides (Task, MCP tools,
//!   other plugins' commands).
//! - [`handler`]: [`LlmHandler`], the `llm` `CommandHandler`, with a
//!   streaming entry point ([`LlmHandler::stream`] → [`RunEvent`]s).

pub mod agent_loop;
pub mod handler;
pub mod host;
pub mod policy;
pub mod prompt;
pub mod runner;
pub mod tools;
pub mod workspace;

pub use agent_loop::{
    AgentLoop, FinishReason, LoopConfig, Next, Outcome, ToolAnswer, ToolRecord, ToolRun, ToolStatus,
};
pub use handler::LlmHandler;
pub use host::{AgentCall, NoHost, ToolHost};
pub use policy::{Builtin, Decision, ToolKind, ToolPolicy};
pub use prompt::RunInput;
pub use runner::{
    handler_error, step_down_tier, RunEvent, RunReply, RunRequest, RunStream, StepDown, Target,
};
pub use workspace::{Workspace, Workspaces};
