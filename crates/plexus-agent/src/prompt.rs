//! Prompts from the catalog: an agent's markdown body becomes the system
//! prompt (with its plugin as context), a command's markdown is a template
//! whose `$ARGUMENTS` and `$1`..`$9` are filled in as Claude Code does.

use plexus_catalog::{Agent, Command, Plugin};
use serde_json::{Map, Value};

/// What a run was asked, read from the request input. The `$`-prefixed
/// keys are the runtime's (like `$sim` for the sim handler); everything
/// else is the plugin's input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInput {
    /// The original request text (`$request`), as `plexus ask` got it.
    pub request: Option<String>,
    /// A model id that overrides the tier's (`$model`).
    pub model: Option<String>,
    /// Output tokens per model turn (`$max_tokens`).
    pub max_tokens: Option<u32>,
    /// The run stops once this is spent (`$budget_usd`).
    pub budget_usd: Option<f64>,
    /// Model turns (`$max_turns`).
    pub max_turns: Option<u32>,
    /// Nesting depth of a `Task` run (`$depth`, set by the runtime).
    pub depth: u32,
    /// Command arguments (`arguments`: a string or a list of strings).
    pub arguments: Option<String>,
    /// Files to seed the workspace with (`files`: `{"path": "text"}`).
    pub files: Vec<(String, String)>,
    /// The rest of the input, for the prompt.
    pub rest: Map<String, Value>,
}

impl RunInput {
    /// Read an input JSON text. Empty text is an empty input; a JSON
    /// string is the request text; a malformed reserved key is an error
    /// naming it.
    pub fn parse(input: &str) -> Result<RunInput, String> {
        if input.trim().is_empty() {
            return Ok(RunInput::default());
        }
        let v: Value =
            serde_json::from_str(input).map_err(|e| format!("input is not JSON: {e}"))?;
        let obj = match v {
            Value::Object(o) => o,
            Value::String(s) => {
                return Ok(RunInput {
                    request: Some(s),
                    ..Default::default()
                })
            }
            Value::Null => return Ok(RunInput::default()),
            other => {
                let mut m = Map::new();
                m.insert("input".into(), other);
                m
            }
        };
        let mut r = RunInput::default();
        for (k, v) in obj {
            match k.as_str() {
                "$request" => r.request = Some(string(&k, v)?),
                "$model" => r.model = Some(string(&k, v)?),
                "$max_tokens" => r.max_tokens = Some(positive(&k, &v)? as u32),
                "$max_turns" => r.max_turns = Some(positive(&k, &v)? as u32),
                "$depth" => {
                    r.depth = v.as_u64().ok_or_else(|| format!("{k} must be a number"))? as u32
                }
                "$budget_usd" => {
                    let b = v.as_f64().filter(|b| b.is_finite() && *b >= 0.0);
                    r.budget_usd =
                        Some(b.ok_or_else(|| format!("{k} must be a number >= 0, not {v}"))?);
                }
                "arguments" => {
                    r.arguments = Some(match v {
                        Value::String(s) => s,
                        Value::Array(a) => a
                            .iter()
                            .map(|x| match x {
                                Value::String(s) if s.contains(char::is_whitespace) => {
                                    format!("\"{s}\"")
                                }
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(" "),
                        other => other.to_string(),
                    })
                }
                "files" => {
                    let Value::Object(files) = v else {
                        return Err("files must be an object of path to text".into());
                    };
                    for (path, text) in files {
                        let Value::String(text) = text else {
                            return Err(format!("files.{path} must be text"));
                        };
                        r.files.push((path, text));
                    }
                }
                k if k.starts_with('$') => {} // `$sim` and other runtime keys
                _ => {
                    r.rest.insert(k, v);
                }
            }
        }
        Ok(r)
    }
}

fn string(k: &str, v: Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("{k} must be a string, not {other}")),
    }
}

fn positive(k: &str, v: &Value) -> Result<u64, String> {
    v.as_u64()
        .filter(|n| *n > 0 && *n <= u32::MAX as u64)
        .ok_or_else(|| format!("{k} must be a whole number > 0, not {v}"))
}

/// The plugin as context for any of its prompts.
fn plugin_context(plugin: &Plugin) -> String {
    let mut s = format!("You are part of the plugin \"{}\"", plugin.name);
    if !plugin.description.trim().is_empty() {
        s.push_str(&format!(": {}", plugin.description.trim()));
    }
    s.push('.');
    s
}

/// The system prompt of an agent: its plugin as context, then its
/// markdown body (its description when the catalog has no body).
pub fn agent_system(plugin: &Plugin, agent: &Agent) -> String {
    let body = if agent.body.trim().is_empty() {
        format!(
            "You are the {} agent. {}",
            agent.name,
            agent.description.trim()
        )
    } else {
        agent.body.trim().to_string()
    };
    format!(
        "{}\nYou act as its agent \"{}\".\n\n{body}",
        plugin_context(plugin),
        agent.name
    )
}

/// The system prompt of a command run.
pub fn command_system(plugin: &Plugin, command: &Command) -> String {
    let mut s = format!(
        "{}\nYou are running its command /{}",
        plugin_context(plugin),
        command.name
    );
    if !command.description.trim().is_empty() {
        s.push_str(&format!(": {}", command.description.trim()));
    }
    s.push('.');
    s
}

/// The first user message of an agent run: the request text, then the
/// input JSON (without the runtime's keys) when there is any.
pub fn agent_user(input: &RunInput) -> String {
    let mut s = input
        .request
        .clone()
        .or_else(|| input.arguments.clone())
        .unwrap_or_default();
    append_input(&mut s, input);
    if s.trim().is_empty() {
        s = "(no request text was given)".into();
    }
    s
}

fn append_input(s: &mut String, input: &RunInput) {
    if !input.rest.is_empty() {
        if !s.is_empty() {
            s.push_str("\n\n");
        }
        let json =
            serde_json::to_string_pretty(&Value::Object(input.rest.clone())).unwrap_or_default();
        s.push_str(&format!("Input:\n```json\n{json}\n```"));
    }
}

/// The user message of a command run: its markdown with the arguments
/// substituted; the input JSON is appended when there is any.
pub fn command_user(command: &Command, input: &RunInput) -> String {
    let args = input
        .arguments
        .clone()
        .or_else(|| input.request.clone())
        .unwrap_or_default();
    let template = if command.body.trim().is_empty() {
        format!("/{} $ARGUMENTS", command.name)
    } else {
        command.body.clone()
    };
    let mut s = substitute(&template, &args);
    append_input(&mut s, input);
    s
}

/// Claude Code's substitution: `$ARGUMENTS` is the whole argument text,
/// `$1`..`$9` its words (quotes group words; a missing one is empty).
/// A template without `$ARGUMENTS` gets `ARGUMENTS: ...` appended when
/// there are arguments.
pub fn substitute(template: &str, args: &str) -> String {
    let words = split_args(args);
    let mut out = String::with_capacity(template.len() + args.len());
    let mut saw_arguments = false;
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("ARGUMENTS") {
            out.push_str(args);
            saw_arguments = true;
            rest = tail;
            continue;
        }
        let mut chars = after.chars();
        match (chars.next(), chars.next()) {
            (Some(d @ '1'..='9'), next) if !next.is_some_and(|c| c.is_ascii_digit()) => {
                let n = d as usize - '1' as usize;
                out.push_str(words.get(n).map(String::as_str).unwrap_or(""));
                rest = &after[1..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    if !saw_arguments && !args.trim().is_empty() {
        out.push_str(&format!("\n\nARGUMENTS: {args}"));
    }
    out
}

/// Words of an argument text; `"..."` and `'...'` keep spaces.
pub fn split_args(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                any = true;
            }
            None if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            None => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_positionals_are_substituted_as_claude_code_does() {
        let t = "Create epic $1 in project $2.\nAll: $ARGUMENTS\nCost $10 stays; $x stays; $9 is empty.";
        let s = substitute(t, "\"SSO migration\" PLAT extra");
        assert_eq!(
            s,
            "Create epic SSO migration in project PLAT.\nAll: \"SSO migration\" PLAT extra\nCost $10 stays; $x stays;  is empty."
        );
        // No $ARGUMENTS in the template: appended.
        assert_eq!(substitute("Do it.", "now"), "Do it.\n\nARGUMENTS: now");
        assert_eq!(substitute("Do it.", ""), "Do it.");
        assert_eq!(substitute("$ARGUMENTS$ARGUMENTS", "a"), "aa");
        assert_eq!(
            substitute("ends with $", "a"),
            "ends with $\n\nARGUMENTS: a"
        );
        assert_eq!(split_args(" a  'b c' \"\" d"), vec!["a", "b c", "", "d"]);
    }

    #[test]
    fn reserved_keys_are_read_and_the_rest_goes_to_the_prompt() {
        let r = RunInput::parse(r#"{"$request":"make an epic","$max_tokens":200,"$budget_usd":0.5,"arguments":["SSO migration","PLAT"],"project":"PLAT","files":{"a.txt":"hi"},"$sim":{}}"#).unwrap();
        assert_eq!(r.request.as_deref(), Some("make an epic"));
        assert_eq!(r.max_tokens, Some(200));
        assert_eq!(r.budget_usd, Some(0.5));
        assert_eq!(r.arguments.as_deref(), Some("\"SSO migration\" PLAT"));
        assert_eq!(r.files, vec![("a.txt".to_string(), "hi".to_string())]);
        assert_eq!(r.rest.len(), 1);
        let u = agent_user(&r);
        assert!(
            u.starts_with("make an epic\n\nInput:\n```json") && u.contains("\"project\": \"PLAT\""),
            "{u}"
        );
        assert!(RunInput::parse(r#"{"$max_tokens":0}"#)
            .unwrap_err()
            .contains("$max_tokens"));
        assert!(RunInput::parse(r#"{"$budget_usd":-1}"#)
            .unwrap_err()
            .contains("$budget_usd"));
        assert!(RunInput::parse(r#"{"files":{"a":1}}"#)
            .unwrap_err()
            .contains("files.a"));
        assert!(RunInput::parse("{oops").unwrap_err().contains("not JSON"));
        assert_eq!(
            RunInput::parse("\"just text\"").unwrap().request.as_deref(),
            Some("just text")
        );
    }

    #[test]
    fn prompts_carry_the_body_and_the_plugin() {
        let plugin = Plugin {
            name: "jira-orchestrator".into(),
            version: "1".into(),
            description: "Jira orchestration".into(),
            keywords: vec![],
            agents: vec![],
            commands: vec![],
            mcp_servers: vec![],
            manifest: Default::default(),
            claude_dir: None,
            manifest_file: None,
        };
        let a = Agent {
            name: "epic-writer".into(),
            body: "# Epic writer\nWrite epics.".into(),
            ..Default::default()
        };
        let s = agent_system(&plugin, &a);
        assert!(
            s.contains("jira-orchestrator")
                && s.contains("Jira orchestration")
                && s.ends_with("Write epics."),
            "{s}"
        );
        let bare = Agent {
            name: "x".into(),
            description: "Does x.".into(),
            ..Default::default()
        };
        assert!(agent_system(&plugin, &bare).contains("Does x."));
        let c = Command {
            name: "batch".into(),
            body: "Run $1 on $ARGUMENTS".into(),
            ..Default::default()
        };
        let input = RunInput {
            arguments: Some("transition PLAT-1".into()),
            ..Default::default()
        };
        assert_eq!(
            command_user(&c, &input),
            "Run transition on transition PLAT-1"
        );
        assert!(command_system(&plugin, &c).contains("/batch"));
    }
}
