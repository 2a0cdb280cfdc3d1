//! The workflow file format (TOML) and its validation. See `docs/workflows.md`
//! for the reference.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path as FsPath;
use std::time::Duration;

use plexus_resilience::retry::{Backoff, RetryPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use toml::Spanned;

use crate::condition::Condition;
use crate::error::WorkflowError;
use crate::plan::{Branch, Plan, PlannedStep, Stage};
use crate::template::{self, Path};

/// How the steps of a workflow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowKind {
    /// In file order; steps may carry conditions, and consecutive steps may
    /// form parallel groups (`parallel = "group"`).
    Sequential,
    /// Every step at once, under `workflow.timeout_ms`.
    Parallel,
    /// In file order; when a step fails, the completed steps are compensated
    /// in reverse order. Journaled by [`crate::SagaRun`].
    Saga,
}

/// What a step whose `when` is false does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFalse {
    /// Skip this step only (the default).
    Skip,
    /// Skip this step and every step up to the named one, which runs next.
    Jump(String),
}

/// What a failed step does to the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The workflow stops and fails (the default).
    #[default]
    Fail,
    /// The workflow goes on; later conditions can test `steps.ID.failed`.
    Continue,
}

/// A saga step's compensating command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compensation {
    /// Defaults to the step's plugin.
    pub plugin: String,
    /// The compensating command.
    pub command: String,
    /// Templates may read `result.…` (the step's output), `input.…` and
    /// `steps.ID.output.…` of steps up to this one.
    pub input: Value,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Unique in the workflow; letters, digits, `_` and `-`.
    pub id: String,
    /// The plugin that runs the command.
    pub plugin: String,
    /// The plugin's command.
    pub command: String,
    /// A JSON object; string values may hold templates.
    pub input: Value,
    /// Run only when this holds.
    pub when: Option<Condition>,
    /// What happens when `when` is false.
    pub on_false: OnFalse,
    /// What a failure of this step does to the run.
    pub on_error: OnError,
    /// Fields added to the input of the next step(s) that run: each value is
    /// a template that may read `output.…` (this step's output), `input.…`
    /// and `steps.…`.
    pub transform: Option<Value>,
    /// The parallel group this step belongs to.
    pub parallel: Option<String>,
    /// The compensating command (sagas).
    pub compensate: Option<Compensation>,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Attempts for a retryable error, with the workflow's backoff (default 1).
    pub max_attempts: u32,
}

/// A parallel group: its steps run at once; those not done when the timeout
/// elapses fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// How long the group's steps may run, together.
    pub timeout_ms: u64,
}

/// The `[retry]` table: the backoff between attempts of a step and of a
/// compensation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// The shape of the delays (linear, exponential, fibonacci).
    pub backoff: Backoff,
    /// The wait before the first retry.
    pub initial_delay_ms: u64,
    /// Cap on every wait.
    pub max_delay_ms: u64,
    /// 0–1, see [`RetryPolicy::jitter`].
    pub jitter: f64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            backoff: Backoff::Exponential,
            initial_delay_ms: 100,
            max_delay_ms: 2_000,
            jitter: 0.0,
        }
    }
}

impl RetrySpec {
    /// The policy for at most `attempts` attempts.
    pub fn policy(&self, attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries: attempts.saturating_sub(1),
            backoff: self.backoff,
            initial_delay: Duration::from_millis(self.initial_delay_ms),
            max_delay: Duration::from_millis(self.max_delay_ms),
            jitter: self.jitter,
        }
    }
}

/// The `[saga]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SagaSpec {
    /// Attempts of one compensation before the saga is reported `stuck`
    /// (a resume tries again).
    pub compensation_max_attempts: u32,
}

impl Default for SagaSpec {
    fn default() -> Self {
        SagaSpec {
            compensation_max_attempts: 10,
        }
    }
}

/// A parsed and validated workflow. Build one with [`Workflow::parse`] or
/// [`Workflow::load`].
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    name: String,
    kind: WorkflowKind,
    description: Option<String>,
    timeout_ms: Option<u64>,
    steps: Vec<Step>,
    groups: BTreeMap<String, Group>,
    retry: RetrySpec,
    saga: SagaSpec,
    #[serde(skip)]
    source: String,
    #[serde(skip)]
    plan: Plan,
}

// ---------------------------------------------------------------- raw form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    workflow: Spanned<RawHeader>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<Group>>,
    #[serde(default)]
    retry: RetrySpec,
    #[serde(default)]
    saga: Option<Spanned<SagaSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: Spanned<String>,
    kind: WorkflowKind,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: Spanned<String>,
    plugin: Spanned<String>,
    command: Spanned<String>,
    #[serde(default)]
    input: Option<Spanned<toml::Table>>,
    #[serde(default)]
    when: Option<Spanned<String>>,
    #[serde(default)]
    on_false: Option<Spanned<String>>,
    #[serde(default)]
    on_error: OnError,
    #[serde(default)]
    transform: Option<Spanned<toml::Table>>,
    #[serde(default)]
    parallel: Option<Spanned<String>>,
    #[serde(default)]
    compensate: Option<Spanned<RawCompensate>>,
    #[serde(default)]
    timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    max_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompensate {
    #[serde(default)]
    plugin: Option<Spanned<String>>,
    command: Spanned<String>,
    #[serde(default)]
    input: Option<Spanned<toml::Table>>,
}

/// TOML to JSON (datetimes become strings).
fn to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        toml::Value::Table(t) => table_json(t),
    }
}

fn table_json(t: &toml::Table) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
}

/// Cleans serde_path_to_error's path of the `Spanned` wrapper segments.
fn clean_path(path: &str) -> String {
    path.replace(".$__serde_spanned_private_value", "")
        .replace("$__serde_spanned_private_value", "")
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Collects semantic errors; the first one is reported.
struct Check<'a> {
    text: &'a str,
}

impl Check<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> WorkflowError {
        WorkflowError::at(self.text, Some(span.start), Some(field.into()), msg)
    }
}

/// Where a template or condition may look.
#[derive(Clone, Copy)]
enum Scope {
    /// A step's input or condition: `input`, earlier steps.
    Input,
    /// A step's transform: also `output` and this step.
    Transform,
    /// A compensation's input: also `result` and this step.
    Compensation,
}

impl Workflow {
    /// Parses and validates workflow TOML. Errors name the line, column and
    /// field (see [`WorkflowError`]).
    pub fn parse(text: &str) -> Result<Workflow, WorkflowError> {
        let de = toml::Deserializer::new(text);
        let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            let offset = inner.span().map(|s| s.start);
            let message = inner.message().to_string();
            let (field, message) = describe(&path, &message);
            WorkflowError::at(text, offset, field, message)
        })?;
        Self::from_raw(text, raw)
    }

    /// Reads and parses a workflow file; errors start with the file name
    /// (`flow.toml:12:1: steps[2].plugin: missing field`).
    pub fn load(path: impl AsRef<FsPath>) -> Result<Workflow, WorkflowError> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let text = std::fs::read_to_string(path)
            .map_err(|e| WorkflowError::plain(format!("cannot read: {e}")).in_file(&name))?;
        Workflow::parse(&text).map_err(|e| e.in_file(name))
    }

    fn from_raw(text: &str, raw: RawFile) -> Result<Workflow, WorkflowError> {
        let ck = Check { text };
        let header_span = raw.workflow.span();
        let header = raw.workflow.into_inner();
        if header.name.get_ref().trim().is_empty() {
            return Err(ck.err(header.name.span(), "workflow.name", "must not be empty"));
        }
        let kind = header.kind;
        if raw.steps.is_empty() {
            return Err(ck.err(
                header_span,
                "steps",
                "empty workflow: add at least one [[steps]] table",
            ));
        }
        if kind == WorkflowKind::Parallel {
            match header.timeout_ms {
                None => {
                    return Err(ck.err(
                        header_span,
                        "workflow.timeout_ms",
                        "missing field (a parallel workflow needs a timeout)",
                    ))
                }
                Some(0) => {
                    return Err(ck.err(header_span, "workflow.timeout_ms", "must be above 0"))
                }
                Some(_) => {}
            }
        }
        if kind == WorkflowKind::Saga {
            if let Some(s) = &raw.saga {
                if s.get_ref().compensation_max_attempts == 0 {
                    return Err(ck.err(
                        s.span(),
                        "saga.compensation_max_attempts",
                        "must be at least 1",
                    ));
                }
            }
        } else if let Some(s) = &raw.saga {
            return Err(ck.err(
                s.span(),
                "saga",
                "only allowed in a workflow of kind \"saga\"",
            ));
        }
        for (name, g) in &raw.groups {
            if !valid_id(name) {
                return Err(ck.err(
                    g.span(),
                    format!("groups.{name}"),
                    "group names use letters, digits, _ and -",
                ));
            }
            if g.get_ref().timeout_ms == 0 {
                return Err(ck.err(
                    g.span(),
                    format!("groups.{name}.timeout_ms"),
                    "must be above 0",
                ));
            }
        }

        // Ids first: conditions and templates refer to them.
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, s) in raw.steps.iter().enumerate() {
            let s = s.get_ref();
            let id = s.id.get_ref();
            if !valid_id(id) {
                return Err(ck.err(
                    s.id.span(),
                    format!("steps[{i}].id"),
                    format!("bad step id {id:?}: use letters, digits, _ and -"),
                ));
            }
            if let Some(j) = index.get(id) {
                return Err(ck.err(
                    s.id.span(),
                    format!("steps[{i}].id"),
                    format!("duplicate step id {id:?} (also steps[{j}])"),
                ));
            }
            index.insert(id.clone(), i);
            for (f, v) in [("plugin", &s.plugin), ("command", &s.command)] {
                if v.get_ref().trim().is_empty() {
                    return Err(ck.err(v.span(), format!("steps[{i}].{f}"), "must not be empty"));
                }
            }
        }

        // Stages: which steps run together, in which order.
        let mut stage_of = vec![0usize; raw.steps.len()];
        let mut stages: Vec<(Option<String>, Vec<usize>)> = Vec::new();
        let mut used_groups: HashMap<String, usize> = HashMap::new();
        for (i, s) in raw.steps.iter().enumerate() {
            let s = s.get_ref();
            let group = match (&s.parallel, kind) {
                (Some(p), WorkflowKind::Saga) => {
                    return Err(ck.err(
                        p.span(),
                        format!("steps[{i}].parallel"),
                        "not allowed in a saga: saga steps run one at a time",
                    ))
                }
                (Some(p), WorkflowKind::Parallel) => {
                    return Err(ck.err(
                        p.span(),
                        format!("steps[{i}].parallel"),
                        "not needed: every step of a parallel workflow runs at once",
                    ))
                }
                (Some(p), WorkflowKind::Sequential) => {
                    let name = p.get_ref();
                    if !raw.groups.contains_key(name) {
                        return Err(ck.err(
                            p.span(),
                            format!("steps[{i}].parallel"),
                            format!(
                                "parallel group {name:?} has no timeout: add [groups.{name}] with timeout_ms"
                            ),
                        ));
                    }
                    Some(name.clone())
                }
                (None, WorkflowKind::Parallel) => Some(String::new()),
                (None, _) => None,
            };
            match (&group, stages.last_mut()) {
                (Some(g), Some((Some(last), members))) if last == g => members.push(i),
                _ => {
                    if let (Some(g), Some(p)) = (&group, &s.parallel) {
                        if used_groups.contains_key(g) {
                            return Err(ck.err(
                                p.span(),
                                format!("steps[{i}].parallel"),
                                format!("the steps of group {g:?} must be consecutive"),
                            ));
                        }
                    }
                    if let Some(g) = &group {
                        used_groups.insert(g.clone(), stages.len());
                    }
                    stages.push((group.clone(), vec![i]));
                }
            }
            stage_of[i] = stages.len() - 1;
        }
        for (name, g) in &raw.groups {
            if !used_groups.contains_key(name) {
                return Err(ck.err(
                    g.span(),
                    format!("groups.{name}"),
                    "no step uses this group (set parallel = \"NAME\" on its steps)",
                ));
            }
        }

        let mut steps = Vec::with_capacity(raw.steps.len());
        let mut planned: Vec<PlannedStep> = Vec::with_capacity(raw.steps.len());
        for (i, spanned) in raw.steps.iter().enumerate() {
            let step_span = spanned.span();
            let s = spanned.get_ref();
            let id = s.id.get_ref().clone();
            let in_group = stages[stage_of[i]].1.len() > 1 || stages[stage_of[i]].0.is_some();
            let input = s
                .input
                .as_ref()
                .map(|t| table_json(t.get_ref()))
                .unwrap_or_else(|| Value::Object(Default::default()));

            // Where a reference may point: steps in earlier stages (and the
            // step itself for transforms and compensations).
            let check_refs = |paths: Vec<(String, Path)>,
                              span: Range<usize>,
                              field: String,
                              scope: Scope|
             -> Result<(), WorkflowError> {
                for (at, p) in paths {
                    let where_ = if at.is_empty() { field.clone() } else { at };
                    let roots: &[&str] = match scope {
                        Scope::Input => &["input", "steps"],
                        Scope::Transform => &["input", "steps", "output"],
                        Scope::Compensation => &["input", "steps", "result"],
                    };
                    if !roots.contains(&p.root()) {
                        return Err(ck.err(
                            span.clone(),
                            where_,
                            format!(
                                "{p}: a path starts with {}",
                                roots
                                    .iter()
                                    .map(|r| format!("`{r}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                    if p.root() != "steps" {
                        continue;
                    }
                    let Some(target) = p.step() else {
                        return Err(ck.err(
                            span.clone(),
                            where_,
                            format!("{p}: name a step: steps.ID.…"),
                        ));
                    };
                    let Some(&j) = index.get(target) else {
                        return Err(ck.err(
                            span.clone(),
                            where_,
                            format!("{p}: unknown step {target:?}"),
                        ));
                    };
                    let self_ok = !matches!(scope, Scope::Input);
                    let earlier = stage_of[j] < stage_of[i] || (self_ok && j == i);
                    if !earlier {
                        return Err(ck.err(
                            span.clone(),
                            where_,
                            format!("{p}: step {target:?} does not run before step {id:?}"),
                        ));
                    }
                    if let Some(field) = p.segments().get(2) {
                        const FIELDS: [&str; 6] =
                            ["ok", "failed", "skipped", "status", "output", "error"];
                        if !FIELDS.contains(&field.as_str()) {
                            return Err(ck.err(
                                span.clone(),
                                where_,
                                format!(
                                    "{p}: a step has ok, failed, skipped, status, output and error"
                                ),
                            ));
                        }
                    }
                }
                Ok(())
            };

            if let Some(t) = &s.input {
                let paths = template::collect(&input, "")
                    .map_err(|(f, e)| ck.err(t.span(), format!("steps[{i}].input{f}"), e))?;
                let paths = paths
                    .into_iter()
                    .map(|(f, p)| (format!("steps[{i}].input{f}"), p))
                    .collect();
                check_refs(paths, t.span(), format!("steps[{i}].input"), Scope::Input)?;
            }

            let when = match &s.when {
                None => None,
                Some(w) => {
                    let field = format!("steps[{i}].when");
                    if kind == WorkflowKind::Saga {
                        return Err(ck.err(w.span(), field, "not allowed in a saga"));
                    }
                    let c = Condition::parse(w.get_ref()).map_err(|e| {
                        // Point into the string when it is written plainly
                        // (no escapes), else at its start.
                        let span = w.span();
                        let raw = text.get(span.clone()).unwrap_or("");
                        let plain = raw.len() == w.get_ref().len() + 2
                            && raw.get(1..raw.len() - 1) == Some(w.get_ref().as_str());
                        let at = if plain {
                            span.start + 1 + e.offset
                        } else {
                            span.start
                        };
                        ck.err(at..at, field.clone(), e.to_string())
                    })?;
                    let paths = c
                        .paths()
                        .into_iter()
                        .map(|p| (String::new(), p.clone()))
                        .collect();
                    check_refs(paths, w.span(), field, Scope::Input)?;
                    Some(c)
                }
            };

            let mut branch = Branch::Skip;
            let on_false = match &s.on_false {
                None => OnFalse::Skip,
                Some(o) => {
                    let field = format!("steps[{i}].on_false");
                    if when.is_none() {
                        return Err(ck.err(o.span(), field, "needs a `when` condition"));
                    }
                    let target = o.get_ref();
                    if target == "skip" {
                        OnFalse::Skip
                    } else {
                        if in_group {
                            return Err(ck.err(
                                o.span(),
                                field,
                                "a step in a parallel group can only be skipped (on_false = \"skip\")",
                            ));
                        }
                        let Some(&j) = index.get(target) else {
                            return Err(ck.err(
                                o.span(),
                                field,
                                format!("unknown step {target:?} (use \"skip\" or a step id)"),
                            ));
                        };
                        if stage_of[j] <= stage_of[i] {
                            return Err(ck.err(
                                o.span(),
                                field,
                                format!("can only jump forward: step {target:?} comes before step {id:?}"),
                            ));
                        }
                        if stages[stage_of[j]].1[0] != j {
                            return Err(ck.err(
                                o.span(),
                                field,
                                format!("step {target:?} is inside a parallel group: jump to its first step"),
                            ));
                        }
                        branch = Branch::Jump {
                            to_step: target.clone(),
                            to_stage: stage_of[j],
                        };
                        OnFalse::Jump(target.clone())
                    }
                }
            };

            let transform = match &s.transform {
                None => None,
                Some(t) => {
                    let v = table_json(t.get_ref());
                    let field = format!("steps[{i}].transform");
                    let paths = template::collect(&v, "")
                        .map_err(|(f, e)| ck.err(t.span(), format!("{field}{f}"), e))?
                        .into_iter()
                        .map(|(f, p)| (format!("{field}{f}"), p))
                        .collect();
                    check_refs(paths, t.span(), field, Scope::Transform)?;
                    Some(v)
                }
            };

            let compensate = match &s.compensate {
                None => {
                    if kind == WorkflowKind::Saga {
                        return Err(ck.err(
                            step_span.clone(),
                            format!("steps[{i}].compensate"),
                            "missing field (every saga step names its compensating command)",
                        ));
                    }
                    None
                }
                Some(c) => {
                    let field = format!("steps[{i}].compensate");
                    if kind != WorkflowKind::Saga {
                        return Err(ck.err(
                            c.span(),
                            field,
                            "only allowed in a workflow of kind \"saga\"",
                        ));
                    }
                    let c = c.get_ref();
                    if c.command.get_ref().trim().is_empty() {
                        return Err(ck.err(
                            c.command.span(),
                            format!("{field}.command"),
                            "must not be empty",
                        ));
                    }
                    let plugin = match &c.plugin {
                        Some(p) if p.get_ref().trim().is_empty() => {
                            return Err(ck.err(
                                p.span(),
                                format!("{field}.plugin"),
                                "must not be empty",
                            ))
                        }
                        Some(p) => p.get_ref().clone(),
                        None => s.plugin.get_ref().clone(),
                    };
                    let input = c
                        .input
                        .as_ref()
                        .map(|t| table_json(t.get_ref()))
                        .unwrap_or_else(|| Value::Object(Default::default()));
                    if let Some(t) = &c.input {
                        let paths = template::collect(&input, "")
                            .map_err(|(f, e)| ck.err(t.span(), format!("{field}.input{f}"), e))?
                            .into_iter()
                            .map(|(f, p)| (format!("{field}.input{f}"), p))
                            .collect();
                        check_refs(
                            paths,
                            t.span(),
                            format!("{field}.input"),
                            Scope::Compensation,
                        )?;
                    }
                    Some(Compensation {
                        plugin,
                        command: c.command.get_ref().clone(),
                        input,
                    })
                }
            };

            if kind == WorkflowKind::Saga && s.on_error == OnError::Continue {
                return Err(ck.err(
                    step_span.clone(),
                    format!("steps[{i}].on_error"),
                    "a saga step cannot continue on error: a failure compensates",
                ));
            }
            let max_attempts = match &s.max_attempts {
                Some(m) if *m.get_ref() == 0 => {
                    return Err(ck.err(
                        m.span(),
                        format!("steps[{i}].max_attempts"),
                        "must be at least 1",
                    ))
                }
                Some(m) => *m.get_ref(),
                None => 1,
            };
            let timeout_ms = match &s.timeout_ms {
                Some(t) if *t.get_ref() == 0 => {
                    return Err(ck.err(
                        t.span(),
                        format!("steps[{i}].timeout_ms"),
                        "must be above 0",
                    ))
                }
                t => t.as_ref().map(|t| *t.get_ref()),
            };

            planned.push(PlannedStep {
                index: i,
                id: id.clone(),
                when: when.clone(),
                on_false: branch,
            });
            steps.push(Step {
                id,
                plugin: s.plugin.get_ref().clone(),
                command: s.command.get_ref().clone(),
                input,
                when,
                on_false,
                on_error: s.on_error,
                transform,
                parallel: s.parallel.as_ref().map(|p| p.get_ref().clone()),
                compensate,
                timeout_ms,
                max_attempts,
            });
        }

        let groups: BTreeMap<String, Group> = raw
            .groups
            .into_iter()
            .map(|(k, v)| (k, v.into_inner()))
            .collect();
        let mut planned = planned.into_iter().map(Some).collect::<Vec<_>>();
        let plan_stages = stages
            .into_iter()
            .map(|(group, members)| {
                let mut ps: Vec<PlannedStep> =
                    members.iter().filter_map(|&m| planned[m].take()).collect();
                match group {
                    None => Stage::Step(ps.remove(0)),
                    Some(g) if g.is_empty() => Stage::Parallel {
                        group: "workflow".into(),
                        timeout_ms: header.timeout_ms.unwrap_or(0),
                        steps: ps,
                    },
                    Some(g) => Stage::Parallel {
                        timeout_ms: groups.get(&g).map(|x| x.timeout_ms).unwrap_or(0),
                        group: g,
                        steps: ps,
                    },
                }
            })
            .collect();

        Ok(Workflow {
            name: header.name.into_inner(),
            kind,
            description: header.description,
            timeout_ms: header.timeout_ms,
            steps,
            groups,
            retry: raw.retry,
            saga: raw.saga.map(|s| s.into_inner()).unwrap_or_default(),
            source: text.to_string(),
            plan: Plan {
                stages: plan_stages,
            },
        })
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the steps run.
    pub fn kind(&self) -> WorkflowKind {
        self.kind
    }

    /// The optional description.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The steps in file order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// A step by id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The parallel groups by name.
    pub fn groups(&self) -> &BTreeMap<String, Group> {
        &self.groups
    }

    /// The timeout of a `parallel` workflow.
    pub fn timeout_ms(&self) -> Option<u64> {
        self.timeout_ms
    }

    /// The backoff between attempts.
    pub fn retry(&self) -> &RetrySpec {
        &self.retry
    }

    /// Saga settings (defaults unless the file has a `[saga]` table).
    pub fn saga(&self) -> &SagaSpec {
        &self.saga
    }

    /// The TOML text this workflow was parsed from (a saga journal keeps it,
    /// so a resumed saga runs exactly the workflow it started with).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The execution plan: stages in order (see [`Plan`]).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// Turns serde's path and message into a field path and a short message.
fn describe(path: &str, message: &str) -> (Option<String>, String) {
    let path = if path == "." || path.is_empty() {
        None
    } else {
        Some(path.to_string())
    };
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some(name) = rest.strip_suffix('`') {
            let field = match &path {
                Some(p) => format!("{p}.{name}"),
                None => name.to_string(),
            };
            return (Some(field), "missing field".into());
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((_, expected)) = rest.split_once("`, ") {
            return (path, format!("unknown field ({expected})"));
        }
    }
    (path, message.trim().to_string())
}
