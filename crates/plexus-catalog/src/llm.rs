//! The `[llm]` section of a manifest: how a plugin's agents and commands
//! run on a language model. Every key is optional; what is set overrides
//! the node's `[llm]` table (provider, endpoint, key variable, models) or
//! the runtime's defaults (turns, tools' sandbox, workspace).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::ModelTier;
use crate::process::{ProcessLimits, SandboxSpec};

/// Which wire API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
    /// OpenAI-compatible Chat Completions (`POST /v1/chat/completions`):
    /// OpenAI, vLLM, llama.cpp's server, Ollama, LiteLLM.
    Openai,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openai => "openai",
        }
    }

    /// Parse `openai` or `anthropic` (as the command line writes them).
    pub fn parse(s: &str) -> Option<ProviderKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "anthropic" => Some(ProviderKind::Anthropic),
            "openai" => Some(ProviderKind::Openai),
            _ => None,
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A manifest's `[llm]` table (camelCase, like the rest of the manifest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LlmSpec {
    /// Overrides the node's provider.
    #[serde(default)]
    pub provider: Option<ProviderKind>,
    /// Overrides the node's base URL (e.g. `https://api.anthropic.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The *name* of the environment variable that holds this plugin's key
    /// (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Model ids by tier (`[llm.models]`), over the node's map.
    #[serde(default)]
    pub models: BTreeMap<ModelTier, String>,
    /// Model turns an agent run may take (default 16).
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// Output tokens of one model turn when the request names none.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// How long one built-in tool call (Bash, Read, ...) may run, in ms.
    #[serde(default)]
    pub tool_timeout_ms: Option<u64>,
    /// The sandbox of the built-in tools (`[llm.sandbox]`). `network = true`
    /// also grants `WebFetch` and `WebSearch`.
    #[serde(default)]
    pub sandbox: SandboxSpec,
    /// Resource limits of each built-in tool process (`[llm.limits]`).
    #[serde(default)]
    pub limits: ProcessLimits,
    /// The run's workspace directory (`[llm.workspace]`).
    #[serde(default)]
    pub workspace: WorkspaceSpec,
    /// Depth of nested `Task` agents (default 2).
    #[serde(default)]
    pub max_task_depth: Option<u32>,
}

/// What happens to a run's workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Write the input's `files` object (`{"path": "text"}`) into the
    /// workspace before the run (default true).
    #[serde(default = "yes")]
    pub seed: bool,
    /// Put the workspace's files into the reply as `files` (default false).
    #[serde(default)]
    pub return_files: bool,
    /// Keep the directory after the run (its path is in the reply) instead
    /// of deleting it (default false).
    #[serde(default)]
    pub keep: bool,
    /// Largest total size of returned or seeded files, in KiB (default 1024).
    #[serde(default = "ws_max_kb")]
    pub max_kb: u64,
}

fn yes() -> bool {
    true
}
fn ws_max_kb() -> u64 {
    1024
}

impl Default for WorkspaceSpec {
    fn default() -> Self {
        WorkspaceSpec {
            seed: true,
            return_files: false,
            keep: false,
            max_kb: ws_max_kb(),
        }
    }
}

impl LlmSpec {
    /// Checks that types alone cannot express, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(u) = &self.base_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "llm.baseUrl {u:?} must start with http:// or https://"
                ));
            }
        }
        if let Some(v) = &self.api_key_env {
            if !valid_env_name(v) {
                return Err(format!(
                    "llm.apiKeyEnv {v:?} must be an environment variable name (A-Z, 0-9, _), not a key"
                ));
            }
        }
        for (tier, id) in &self.models {
            if id.trim().is_empty() {
                return Err(format!("llm.models.{tier} is empty"));
            }
        }
        if self.max_turns == Some(0) {
            return Err("llm.maxTurns must be > 0".into());
        }
        if self.max_tokens == Some(0) {
            return Err("llm.maxTokens must be > 0".into());
        }
        if self.tool_timeout_ms == Some(0) {
            return Err("llm.toolTimeoutMs must be > 0".into());
        }
        for (field, paths) in [
            ("readPaths", &self.sandbox.read_paths),
            ("writePaths", &self.sandbox.write_paths),
        ] {
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err(format!("llm.sandbox.{field} holds an empty path"));
            }
        }
        Ok(())
    }
}

/// An environment variable name as shells accept it.
pub fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use crate::Manifest;

    #[test]
    fn an_llm_table_parses_and_bad_values_name_their_field() {
        let m = Manifest::parse(
            "[plugin]\nname = \"p\"\n[llm]\nprovider = \"anthropic\"\napiKeyEnv = \"MY_KEY\"\nmaxTurns = 4\n[llm.models]\nhaiku = \"claude-haiku-4-5\"\n[llm.sandbox]\nnetwork = true\n",
        )
        .unwrap();
        let llm = m.llm.unwrap();
        assert_eq!(llm.provider, Some(super::ProviderKind::Anthropic));
        assert_eq!(llm.models[&crate::ModelTier::Haiku], "claude-haiku-4-5");
        assert!(llm.sandbox.network);
        assert!(llm.workspace.seed);

        let e = Manifest::parse("[plugin]\nname = \"p\"\n[llm]\napiKeyEnv = \"sk-ant-123\"\n")
            .unwrap_err();
        assert!(e.message.contains("llm.apiKeyEnv"), "{}", e.message);
        let e = Manifest::parse("[plugin]\nname = \"p\"\n[llm]\nbaseUrl = \"localhost:8080\"\n")
            .unwrap_err();
        assert!(e.message.contains("llm.baseUrl"), "{}", e.message);
        let e =
            Manifest::parse("[plugin]\nname = \"p\"\n[llm]\nprovider = \"gemini\"\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e:?}");
        let e = Manifest::parse("[plugin]\nname = \"p\"\n[llm]\nmaxTurn = 3\n").unwrap_err();
        assert!(e.message.contains("maxTurn"), "{}", e.message);
    }
}
