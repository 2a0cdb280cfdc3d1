//! Which tools an agent may call. The agent's `tools` frontmatter is the
//! allow-list (none listed: every tool Plexus has); MCP tools also need a
//! server the plugin configures; web tools need the manifest's network
//! grant; `Task` needs depth left. A refusal is a sentence for the model.

use std::collections::BTreeSet;

use plexus_llm::ToolSpec;
use serde_json::{json, Value};

/// Claude Code's built-in tools that run in the process sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    Read,
    Write,
    Edit,
    Glob,
    Grep,
    Bash,
}

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::Read,
        Builtin::Write,
        Builtin::Edit,
        Builtin::Glob,
        Builtin::Grep,
        Builtin::Bash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Read => "Read",
            Builtin::Write => "Write",
            Builtin::Edit => "Edit",
            Builtin::Glob => "Glob",
            Builtin::Grep => "Grep",
            Builtin::Bash => "Bash",
        }
    }
}

/// What an allowed call is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolKind {
    Builtin(Builtin),
    /// Start another agent (`Task`), through the [`crate::ToolHost`].
    Task,
    /// A tool of one of the plugin's MCP servers.
    Mcp {
        server: String,
        tool: String,
    },
    /// A command of this or another plugin (`SlashCommand`, input
    /// `{"command": "/plugin:command args"}`).
    SlashCommand,
    /// The model's own to-do list (kept in the run's trace).
    TodoWrite,
    /// `WebFetch` (in the sandbox, with network).
    WebFetch,
}

/// The verdict on one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(ToolKind),
    /// Why not, addressed to the model.
    Refuse(String),
}

/// One entry of a `tools` list: a name, or `mcp__server__*`, or
/// `Bash(prefix:*)` / `Bash(exact command)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    name: String,
    /// For `Bash(...)`: the command prefix (`git:*` → `git`) or exact command.
    bash: Option<BashRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BashRule {
    Prefix(String),
    Exact(String),
}

impl Rule {
    fn parse(s: &str) -> Rule {
        let s = s.trim();
        if let Some(inner) = s.strip_prefix("Bash(").and_then(|r| r.strip_suffix(')')) {
            let inner = inner.trim();
            let bash = match inner.strip_suffix(":*").or_else(|| inner.strip_suffix('*')) {
                Some(p) => BashRule::Prefix(p.trim().to_string()),
                None => BashRule::Exact(inner.to_string()),
            };
            return Rule {
                name: "Bash".into(),
                bash: Some(bash),
            };
        }
        // `Read(path)` and other argument patterns: the tool is granted.
        let name = s.split('(').next().unwrap_or(s).trim().to_string();
        Rule { name, bash: None }
    }

    fn matches(&self, name: &str) -> bool {
        if let Some(prefix) = self.name.strip_suffix('*') {
            return name.starts_with(prefix);
        }
        self.name == name
            // `mcp__server` grants every tool of the server.
            || (self.name.starts_with("mcp__")
                && self.name.matches("__").count() == 1
                && name.starts_with(&format!("{}__", self.name)))
    }
}

/// The policy of one run.
#[derive(Debug, Clone)]
pub struct ToolPolicy {
    agent: String,
    plugin: String,
    /// `None`: the agent lists no tools and may use all of them.
    rules: Option<Vec<Rule>>,
    mcp_servers: BTreeSet<String>,
    network: bool,
    task_allowed: bool,
    max_depth: u32,
}

impl ToolPolicy {
    /// `tools` as the frontmatter lists them; `mcp_servers` the plugin's
    /// configured servers; `network` the manifest's grant; `task_allowed`
    /// false once the `Task` depth limit `max_depth` is reached.
    pub fn new(
        plugin: &str,
        agent: &str,
        tools: &[String],
        mcp_servers: impl IntoIterator<Item = String>,
        network: bool,
        task_allowed: bool,
        max_depth: u32,
    ) -> ToolPolicy {
        let rules: Vec<Rule> = tools
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(Rule::parse)
            .collect();
        ToolPolicy {
            agent: agent.to_string(),
            plugin: plugin.to_string(),
            rules: (!tools.is_empty()).then_some(rules),
            mcp_servers: mcp_servers.into_iter().collect(),
            network,
            task_allowed,
            max_depth,
        }
    }

    fn listed(&self, name: &str) -> bool {
        match &self.rules {
            None => true,
            Some(rules) => rules.iter().any(|r| r.matches(name)),
        }
    }

    fn listed_names(&self) -> String {
        match &self.rules {
            None => "all".into(),
            Some(r) => r
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Decide one call of `name` with `input`.
    pub fn check(&self, name: &str, input: &Value) -> Decision {
        if !self.listed(name) {
            return Decision::Refuse(format!(
                "tool {name} is not allowed for {}: its tools are {}",
                self.who(),
                self.listed_names()
            ));
        }
        if let Some(rest) = name.strip_prefix("mcp__") {
            let Some((server, tool)) = rest
                .split_once("__")
                .filter(|(s, t)| !s.is_empty() && !t.is_empty())
            else {
                return Decision::Refuse(format!(
                    "{name} is not an MCP tool name (mcp__SERVER__TOOL)"
                ));
            };
            if !self.mcp_servers.contains(server) {
                let have = if self.mcp_servers.is_empty() {
                    "none".to_string()
                } else {
                    self.mcp_servers
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Decision::Refuse(format!(
                    "tool {name} is refused: plugin {} does not configure the MCP server {server:?} (its servers: {have})",
                    self.plugin
                ));
            }
            return Decision::Allow(ToolKind::Mcp {
                server: server.to_string(),
                tool: tool.to_string(),
            });
        }
        match name {
            "Read" | "Write" | "Edit" | "Glob" | "Grep" => {
                let b = Builtin::ALL.into_iter().find(|b| b.name() == name).expect("listed above");
                Decision::Allow(ToolKind::Builtin(b))
            }
            "Bash" => self.check_bash(input),
            "Task" if !self.task_allowed => Decision::Refuse(format!(
                "tool Task is refused: the nesting depth limit ({}) is reached",
                self.max_depth
            )),
            "Task" => Decision::Allow(ToolKind::Task),
            "SlashCommand" => Decision::Allow(ToolKind::SlashCommand),
            "TodoWrite" => Decision::Allow(ToolKind::TodoWrite),
            "WebFetch" | "WebSearch" if !self.network => Decision::Refuse(format!(
                "tool {name} is refused: plugin {}'s manifest does not grant network ([llm.sandbox] network = true)",
                self.plugin
            )),
            "WebFetch" => Decision::Allow(ToolKind::WebFetch),
            "WebSearch" => Decision::Refuse("tool WebSearch is not available: Plexus has no search backend; use WebFetch with a URL".into()),
            other => Decision::Refuse(format!("tool {other} is not available in Plexus")),
        }
    }

    fn check_bash(&self, input: &Value) -> Decision {
        let cmd = input
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim();
        let Some(rules) = &self.rules else {
            return Decision::Allow(ToolKind::Builtin(Builtin::Bash));
        };
        let bash: Vec<&Rule> = rules.iter().filter(|r| r.name == "Bash").collect();
        if bash.iter().any(|r| r.bash.is_none()) {
            return Decision::Allow(ToolKind::Builtin(Builtin::Bash));
        }
        let ok = bash.iter().any(|r| match &r.bash {
            Some(BashRule::Prefix(p)) => cmd == p || cmd.starts_with(&format!("{p} ")),
            Some(BashRule::Exact(e)) => cmd == e,
            None => true,
        });
        if ok {
            Decision::Allow(ToolKind::Builtin(Builtin::Bash))
        } else {
            let allowed: Vec<String> = bash
                .iter()
                .filter_map(|r| match &r.bash {
                    Some(BashRule::Prefix(p)) => Some(format!("{p} ...")),
                    Some(BashRule::Exact(e)) => Some(e.clone()),
                    None => None,
                })
                .collect();
            Decision::Refuse(format!(
                "Bash command {cmd:?} is not allowed for {}: it may only run {}",
                self.who(),
                allowed.join(", ")
            ))
        }
    }

    fn who(&self) -> String {
        format!("{} of plugin {}", self.agent, self.plugin)
    }

    /// The tools offered to the model: what is listed and would be allowed
    /// (MCP tools named explicitly, with a generic schema).
    pub fn offered(&self) -> Vec<ToolSpec> {
        let mut names: Vec<String> = vec![];
        let all = [
            "Read",
            "Write",
            "Edit",
            "Glob",
            "Grep",
            "Bash",
            "Task",
            "SlashCommand",
            "TodoWrite",
            "WebFetch",
        ];
        for n in all {
            if self.listed(n) && matches!(self.check(n, &json!({})), Decision::Allow(_))
                || (n == "Bash" && self.listed(n))
            {
                names.push(n.to_string());
            }
        }
        if let Some(rules) = &self.rules {
            for r in rules {
                if r.name.starts_with("mcp__")
                    && !r.name.ends_with('*')
                    && matches!(self.check(&r.name, &json!({})), Decision::Allow(_))
                {
                    names.push(r.name.clone());
                }
            }
        }
        names.dedup();
        names.into_iter().filter_map(|n| spec(&n)).collect()
    }
}

/// The schema the model sees for a tool (Claude Code's parameter names).
pub fn spec(name: &str) -> Option<ToolSpec> {
    let (description, schema) = match name {
        "Read" => (
            "Read a text file. Paths are relative to the run's workspace unless absolute. Returns numbered lines.",
            json!({"type":"object","properties":{"file_path":{"type":"string","description":"the file to read"},"offset":{"type":"integer","description":"first line (1-based)"},"limit":{"type":"integer","description":"number of lines"}},"required":["file_path"]}),
        ),
        "Write" => (
            "Write a file (created, or replaced), making its directories.",
            json!({"type":"object","properties":{"file_path":{"type":"string"},"content":{"type":"string"}},"required":["file_path","content"]}),
        ),
        "Edit" => (
            "Replace old_string by new_string in a file; old_string must occur once unless replace_all.",
            json!({"type":"object","properties":{"file_path":{"type":"string"},"old_string":{"type":"string"},"new_string":{"type":"string"},"replace_all":{"type":"boolean"}},"required":["file_path","old_string","new_string"]}),
        ),
        "Glob" => (
            "List files matching a glob pattern (e.g. **/*.md), newest first.",
            json!({"type":"object","properties":{"pattern":{"type":"string"},"path":{"type":"string","description":"directory to search (default: the workspace)"}},"required":["pattern"]}),
        ),
        "Grep" => (
            "Search file contents with an extended regular expression.",
            json!({"type":"object","properties":{"pattern":{"type":"string"},"path":{"type":"string"},"glob":{"type":"string","description":"only files matching this glob"},"output_mode":{"type":"string","enum":["content","files_with_matches","count"]},"-i":{"type":"boolean"}},"required":["pattern"]}),
        ),
        "Bash" => (
            "Run a shell command in the run's workspace (sandboxed; no network unless the plugin has it).",
            json!({"type":"object","properties":{"command":{"type":"string"},"timeout":{"type":"integer","description":"ms"},"description":{"type":"string"}},"required":["command"]}),
        ),
        "Task" => (
            "Start another agent on a task and get its final answer.",
            json!({"type":"object","properties":{"description":{"type":"string"},"prompt":{"type":"string"},"subagent_type":{"type":"string","description":"agent name, or plugin:agent"}},"required":["prompt","subagent_type"]}),
        ),
        "SlashCommand" => (
            "Run a command of this or another plugin, e.g. /jira-orchestrator:status PLAT-1.",
            json!({"type":"object","properties":{"command":{"type":"string"}},"required":["command"]}),
        ),
        "TodoWrite" => (
            "Record your to-do list for this task.",
            json!({"type":"object","properties":{"todos":{"type":"array","items":{"type":"object","properties":{"content":{"type":"string"},"status":{"type":"string","enum":["pending","in_progress","completed"]}},"required":["content","status"]}}},"required":["todos"]}),
        ),
        "WebFetch" => (
            "Fetch a URL and return its text.",
            json!({"type":"object","properties":{"url":{"type":"string"},"prompt":{"type":"string"}},"required":["url"]}),
        ),
        n if n.starts_with("mcp__") => (
            "A tool of one of the plugin's MCP servers.",
            json!({"type":"object"}),
        ),
        _ => return None,
    };
    Some(ToolSpec {
        name: name.to_string(),
        description: description.to_string(),
        input_schema: schema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tools: &[&str], network: bool) -> ToolPolicy {
        ToolPolicy::new(
            "jira-orchestrator",
            "epic-writer",
            &tools.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["atlassian".to_string()],
            network,
            true,
            2,
        )
    }

    fn refused(d: Decision) -> String {
        match d {
            Decision::Refuse(r) => r,
            other => panic!("allowed: {other:?}"),
        }
    }

    #[test]
    fn the_frontmatter_is_the_allow_list() {
        let p = policy(
            &[
                "Read",
                "Grep",
                "mcp__atlassian__create_issue",
                "mcp__context7__get_docs",
            ],
            false,
        );
        assert_eq!(
            p.check("Read", &json!({})),
            Decision::Allow(ToolKind::Builtin(Builtin::Read))
        );
        let r = refused(p.check("Write", &json!({})));
        assert!(
            r.contains("Write is not allowed for epic-writer") && r.contains("Read, Grep"),
            "{r}"
        );
        assert_eq!(
            p.check("mcp__atlassian__create_issue", &json!({})),
            Decision::Allow(ToolKind::Mcp {
                server: "atlassian".into(),
                tool: "create_issue".into()
            })
        );
        // Listed, but the plugin does not configure that server.
        let r = refused(p.check("mcp__context7__get_docs", &json!({})));
        assert!(
            r.contains("\"context7\"") && r.contains("its servers: atlassian"),
            "{r}"
        );
        let r = refused(p.check("mcp__atlassian__delete_everything", &json!({})));
        assert!(r.contains("not allowed"), "{r}");
        let offered: Vec<String> = p.offered().into_iter().map(|t| t.name).collect();
        assert_eq!(
            offered,
            vec!["Read", "Grep", "mcp__atlassian__create_issue"]
        );
    }

    #[test]
    fn web_tools_need_the_network_grant_and_task_needs_depth() {
        let p = policy(&[], false);
        let r = refused(p.check("WebFetch", &json!({"url": "https://x"})));
        assert!(r.contains("does not grant network"), "{r}");
        assert!(refused(p.check("WebSearch", &json!({}))).contains("network"));
        assert_eq!(
            policy(&[], true).check("WebFetch", &json!({})),
            Decision::Allow(ToolKind::WebFetch)
        );
        assert!(!p.offered().iter().any(|t| t.name == "WebFetch"));
        assert!(p.offered().iter().any(|t| t.name == "Task"));
        let deep = ToolPolicy::new("p", "a", &[], Vec::<String>::new(), false, false, 2);
        assert!(refused(deep.check("Task", &json!({}))).contains("depth limit (2)"));
        assert!(refused(p.check("NotebookEdit", &json!({}))).contains("not available"));
    }

    #[test]
    fn bash_patterns_restrict_commands() {
        let p = policy(&["Bash(git:*)", "Bash(make test)"], false);
        assert!(matches!(
            p.check("Bash", &json!({"command": "git status"})),
            Decision::Allow(_)
        ));
        assert!(matches!(
            p.check("Bash", &json!({"command": "make test"})),
            Decision::Allow(_)
        ));
        let r = refused(p.check("Bash", &json!({"command": "gitx; rm -rf /"})));
        assert!(r.contains("git ...") && r.contains("make test"), "{r}");
        let p = policy(&["mcp__atlassian"], false);
        assert!(matches!(
            p.check("mcp__atlassian__anything", &json!({})),
            Decision::Allow(_)
        ));
    }
}
