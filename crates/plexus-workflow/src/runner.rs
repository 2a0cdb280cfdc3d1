//! The async engine: runs a [`Workflow`] over a [`StepExecutor`] and reports
//! every step's state in a [`RunReport`].
//!
//! Sequential stages run one after the other; a parallel stage starts all its
//! steps and joins them under the group's timeout (steps still running then
//! are dropped and fail). A step whose `when` is false is skipped, or jumps
//! forward (`on_false = "STEP"`). A failed step stops the run unless it has
//! `on_error = "continue"`. Saga workflows given to [`run`] run as an
//! in-memory saga (no journal); use [`crate::SagaRun`] for the durable one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::format::{OnError, RetrySpec, Step, Workflow, WorkflowKind};
use crate::plan::{Branch, Stage};
use crate::template;

/// Whether a failed call reached the plugin, as far as the caller can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// The plugin ran the command and answered with this failure: with the
    /// same idempotency key, that answer is what happened.
    #[default]
    Answered,
    /// Refused before it reached the plugin (no host, breaker open, bad
    /// request): it had no effect, but says nothing about earlier tries.
    NotDelivered,
    /// It may have run and no answer came (a timeout, the plugin's node went
    /// down after the request left).
    InDoubt,
}

/// Why a step's command failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// What went wrong.
    pub message: String,
    /// Whether the same call (same idempotency key) may succeed if tried
    /// again: timeouts and transient failures. Retried up to the step's
    /// `max_attempts`.
    pub retryable: bool,
    /// Whether the command may have run. A saga never compensates around a
    /// step in doubt: it re-sends it with the same key until answered.
    #[serde(default)]
    pub delivery: Delivery,
}

impl StepError {
    /// A definite failure: retrying will not help.
    pub fn permanent(message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
            retryable: false,
            delivery: Delivery::Answered,
        }
    }

    /// A failure that may go away when tried again.
    pub fn transient(message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
            retryable: true,
            delivery: Delivery::Answered,
        }
    }

    /// A failure whose effect is unknown (a timeout, the node lost
    /// mid-request): retryable, and the command may have run.
    pub fn in_doubt(message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
            retryable: true,
            delivery: Delivery::InDoubt,
        }
    }

    /// The same failure, refused before it reached the plugin.
    pub fn not_delivered(self) -> StepError {
        StepError {
            delivery: Delivery::NotDelivered,
            ..self
        }
    }

    /// Whether the command may have run without an answer saying so.
    pub fn is_in_doubt(&self) -> bool {
        self.delivery == Delivery::InDoubt
    }
}

/// Runs one command of one plugin. The node implements it over its plugin
/// hosts; tests use fakes.
///
/// `idempotency_key` is stable for a step of a run (and for a saga step
/// across crashes and resumes): a call re-sent with the same key must have
/// one effect, so the implementation (or the plugin) drops duplicates.
pub trait StepExecutor: Send + Sync {
    /// Runs `plugin`'s `command` with `input`; the output is the step's
    /// result.
    fn exec(
        &self,
        plugin: &str,
        command: &str,
        input: Value,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<Value, StepError>>;
}

impl<T: StepExecutor + ?Sized> StepExecutor for &T {
    fn exec(
        &self,
        plugin: &str,
        command: &str,
        input: Value,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<Value, StepError>> {
        (**self).exec(plugin, command, input, idempotency_key)
    }
}

impl<T: StepExecutor + ?Sized> StepExecutor for Arc<T> {
    fn exec(
        &self,
        plugin: &str,
        command: &str,
        input: Value,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<Value, StepError>> {
        (**self).exec(plugin, command, input, idempotency_key)
    }
}

impl<T: StepExecutor + ?Sized> StepExecutor for Box<T> {
    fn exec(
        &self,
        plugin: &str,
        command: &str,
        input: Value,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<Value, StepError>> {
        (**self).exec(plugin, command, input, idempotency_key)
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Not started (or never reached: the run stopped before it).
    Pending,
    /// Its command is running (for a saga: its intent is journaled).
    Running,
    /// Succeeded; `output` holds its result.
    Ok,
    /// Failed; `error` says why.
    Failed,
    /// Its condition was false, or a jump passed over it; `error` says which.
    Skipped,
    /// A saga step whose compensation is under way.
    Compensating,
    /// A saga step that completed and was then compensated.
    Compensated,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Steps are running (or, read from a journal, the saga was interrupted).
    Running,
    /// Every step that ran succeeded (or failed with `on_error = "continue"`).
    Completed,
    /// A step failed and stopped the run.
    Failed,
    /// A saga step failed; completed steps are being compensated.
    Compensating,
    /// A saga step failed and every completed step was compensated.
    Compensated,
    /// A saga compensation kept failing past its attempts: an operator must
    /// look, then resume the saga (which tries again).
    Stuck,
}

impl RunStatus {
    /// Whether the run has nothing left to do by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Compensated
        )
    }
}

/// One step's state in a [`RunReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepState {
    /// The step's id.
    pub id: String,
    /// Where it stands.
    pub status: StepStatus,
    /// The step's output, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When it succeeded or failed.
    pub finished_ms: Option<u64>,
    /// Calls made to the executor for this step (by this process, for a
    /// resumed saga at least 1 when the step ran).
    #[serde(default)]
    pub attempts: u32,
    /// Calls made for the step's compensation (sagas).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compensation_attempts: u32,
    /// The last compensation error (sagas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl StepState {
    /// A step that has not started.
    pub fn pending(id: impl Into<String>) -> StepState {
        StepState {
            id: id.into(),
            status: StepStatus::Pending,
            output: None,
            error: None,
            started_ms: None,
            finished_ms: None,
            attempts: 0,
            compensation_attempts: 0,
            compensation_error: None,
        }
    }
}

/// The state of a run: what `plexus workflows` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunReport {
    /// The run (or saga) id.
    pub id: String,
    /// The workflow's name.
    pub name: String,
    /// The workflow's kind.
    pub kind: WorkflowKind,
    /// Where the run stands.
    pub status: RunStatus,
    /// One per workflow step, in file order.
    pub steps: Vec<StepState>,
    /// Why the run failed, was compensated or is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the run (or saga) started, ms since the Unix epoch.
    pub started_ms: Option<u64>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

impl RunReport {
    /// A report with every step pending.
    pub fn new(id: impl Into<String>, workflow: &Workflow) -> RunReport {
        RunReport {
            id: id.into(),
            name: workflow.name().to_string(),
            kind: workflow.kind(),
            status: RunStatus::Running,
            steps: workflow
                .steps()
                .iter()
                .map(|s| StepState::pending(&s.id))
                .collect(),
            error: None,
            started_ms: None,
            finished_ms: None,
        }
    }

    /// A step's state by id.
    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The context templates and conditions read: `{"input": …, "steps":
    /// {ID: {ok, failed, skipped, status, output, error}}}`.
    pub fn context(&self, input: &Value) -> Value {
        let mut steps = Map::new();
        for s in &self.steps {
            let mut m = Map::new();
            m.insert("ok".into(), Value::Bool(s.status == StepStatus::Ok));
            m.insert("failed".into(), Value::Bool(s.status == StepStatus::Failed));
            m.insert(
                "skipped".into(),
                Value::Bool(s.status == StepStatus::Skipped),
            );
            m.insert(
                "status".into(),
                serde_json::to_value(s.status).unwrap_or(Value::Null),
            );
            if let Some(o) = &s.output {
                m.insert("output".into(), o.clone());
            }
            if let Some(e) = &s.error {
                m.insert("error".into(), Value::String(e.clone()));
            }
            steps.insert(s.id.clone(), Value::Object(m));
        }
        let mut ctx = Map::new();
        ctx.insert("input".into(), input.clone());
        ctx.insert("steps".into(), Value::Object(steps));
        Value::Object(ctx)
    }
}

/// Called with the report after every change (for live listings).
pub type Observer = Arc<dyn Fn(&RunReport) + Send + Sync>;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Calls the executor until success, a permanent error, or `max_attempts`
/// (retryable errors wait the backoff of `retry`). Counts calls in
/// `attempts`. `in_doubt`: the step was sent before (a resumed saga's step
/// that was never answered), so it stays in doubt until a try is answered.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn call_with_retries<E: StepExecutor + ?Sized>(
    exec: &E,
    plugin: &str,
    command: &str,
    input: &Value,
    key: &str,
    timeout_ms: Option<u64>,
    max_attempts: u32,
    retry: &RetrySpec,
    attempts: &AtomicU32,
    in_doubt: bool,
) -> Result<Value, StepError> {
    let policy = retry.policy(max_attempts.max(1));
    let mut tries = 0u32;
    let mut doubt = in_doubt;
    loop {
        tries += 1;
        attempts.fetch_add(1, Ordering::Relaxed);
        let res = exec_within(exec, plugin, command, input, key, timeout_ms).await;
        let mut err = match res {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        // An earlier try may have run; only an answer (same key) settles it.
        match err.delivery {
            Delivery::InDoubt => doubt = true,
            Delivery::Answered => doubt = false,
            Delivery::NotDelivered => {}
        }
        if doubt {
            err.delivery = Delivery::InDoubt;
        }
        if !err.retryable {
            return Err(err);
        }
        let delay = policy.delay_for(tries, &mut rand::thread_rng());
        match delay {
            Some(d) => {
                tracing::debug!(plugin, command, key, attempt = tries, error = %err.message, "retrying step");
                tokio::time::sleep(d).await;
            }
            None => return Err(err),
        }
    }
}

/// One call of `plugin`'s `command`, bounded by the step's `timeout_ms`; a
/// call that runs past it is in doubt (it may still take effect).
pub(crate) async fn exec_within<E: StepExecutor + ?Sized>(
    exec: &E,
    plugin: &str,
    command: &str,
    input: &Value,
    key: &str,
    timeout_ms: Option<u64>,
) -> Result<Value, StepError> {
    let fut = exec.exec(plugin, command, input.clone(), key.to_string());
    match timeout_ms {
        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), fut).await {
            Ok(r) => r,
            Err(_) => Err(StepError::in_doubt(format!("timed out after {ms} ms"))),
        },
        None => fut.await,
    }
}

/// The step's input: its templates rendered, plus fields carried from the
/// previous step's transform (the step's own fields win).
pub(crate) fn step_input(
    step: &Step,
    ctx: &Value,
    carry: &Map<String, Value>,
) -> Result<Value, template::TemplateError> {
    let mut input = template::render(&step.input, ctx, "input")?;
    if let Value::Object(m) = &mut input {
        for (k, v) in carry {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Ok(input)
}

/// Renders a step's transform with `output` bound to its output.
pub(crate) fn step_transform(
    step: &Step,
    ctx: &Value,
    output: &Value,
) -> Result<Option<Map<String, Value>>, template::TemplateError> {
    let Some(t) = &step.transform else {
        return Ok(None);
    };
    let mut ctx = ctx.clone();
    if let Value::Object(m) = &mut ctx {
        m.insert("output".into(), output.clone());
    }
    match template::render(t, &ctx, "transform")? {
        Value::Object(m) => Ok(Some(m)),
        _ => Ok(None),
    }
}

/// Runs a workflow to its end. Never fails as a call: failures are in the
/// report. Saga workflows run in memory (see [`crate::SagaRun`] for the
/// journaled form).
pub async fn run<E: StepExecutor + ?Sized>(
    id: &str,
    workflow: &Workflow,
    input: Value,
    executor: &E,
) -> RunReport {
    run_observed(id, workflow, input, executor, None).await
}

/// [`run`], calling `observer` with the report after every change.
pub async fn run_observed<E: StepExecutor + ?Sized>(
    id: &str,
    workflow: &Workflow,
    input: Value,
    executor: &E,
    observer: Option<Observer>,
) -> RunReport {
    if workflow.kind() == WorkflowKind::Saga {
        let mut saga = crate::saga::SagaRun::in_memory(id, workflow, input, executor);
        if let Some(o) = observer {
            saga = saga.with_observer(o);
        }
        return match saga.run().await {
            Ok(r) => r,
            // In memory there is no journal to fail.
            Err(e) => {
                let mut r = saga.report().clone();
                r.status = RunStatus::Failed;
                r.error = Some(e.to_string());
                r
            }
        };
    }
    let mut engine = Engine {
        wf: workflow,
        exec: executor,
        input,
        report: RunReport::new(id, workflow),
        carry: Map::new(),
        observer,
    };
    engine.report.started_ms = Some(now_ms());
    engine.notify();
    engine.run().await;
    engine.report.finished_ms = Some(now_ms());
    engine.notify();
    engine.report
}

struct Engine<'a, E: ?Sized> {
    wf: &'a Workflow,
    exec: &'a E,
    input: Value,
    report: RunReport,
    /// Fields from the last transform, for the next stage that runs.
    carry: Map<String, Value>,
    observer: Option<Observer>,
}

impl<E: StepExecutor + ?Sized> Engine<'_, E> {
    fn notify(&self) {
        if let Some(o) = &self.observer {
            o(&self.report);
        }
    }

    fn skip(&mut self, index: usize, why: String) {
        let s = &mut self.report.steps[index];
        s.status = StepStatus::Skipped;
        s.error = Some(why);
    }

    async fn run(&mut self) {
        let stages = &self.wf.plan().stages;
        let mut i = 0;
        while i < stages.len() {
            let ctx = self.report.context(&self.input);
            let mut runnable = Vec::new();
            let mut jump = None;
            for ps in stages[i].steps() {
                match &ps.when {
                    Some(c) if !c.eval(&ctx) => {
                        self.skip(ps.index, format!("condition false: {c}"));
                        if let Branch::Jump { to_step, to_stage } = &ps.on_false {
                            jump = Some((to_step.clone(), *to_stage));
                        }
                    }
                    _ => runnable.push(ps.index),
                }
            }
            if let Some((to_step, to_stage)) = jump {
                let from = &self.wf.steps()[stages[i].steps()[0].index].id;
                let why = format!("jumped over: {from} went to {to_step}");
                for st in &stages[i + 1..to_stage] {
                    for ps in st.steps() {
                        self.skip(ps.index, why.clone());
                    }
                }
                self.notify();
                i = to_stage;
                continue;
            }
            self.notify();
            if !runnable.is_empty() {
                let timeout = match &stages[i] {
                    Stage::Step(_) => None,
                    Stage::Parallel {
                        group, timeout_ms, ..
                    } => Some((group.clone(), *timeout_ms)),
                };
                if let Err(e) = self.run_stage(&runnable, timeout, ctx).await {
                    self.report.status = RunStatus::Failed;
                    self.report.error = Some(e);
                    return;
                }
            }
            i += 1;
        }
        self.report.status = RunStatus::Completed;
    }

    /// Runs the stage's runnable steps; `Err` with the reason when a failure
    /// stops the run.
    async fn run_stage(
        &mut self,
        indices: &[usize],
        timeout: Option<(String, u64)>,
        ctx: Value,
    ) -> Result<(), String> {
        let wf = self.wf;
        let carry = std::mem::take(&mut self.carry);
        let attempts: Vec<AtomicU32> = indices.iter().map(|_| AtomicU32::new(0)).collect();
        let mut calls = Vec::new();
        for (slot, &idx) in indices.iter().enumerate() {
            let step = &wf.steps()[idx];
            let now = now_ms();
            let state = &mut self.report.steps[idx];
            state.started_ms = Some(now);
            match step_input(step, &ctx, &carry) {
                Ok(input) => {
                    state.status = StepStatus::Running;
                    calls.push((slot, idx, input));
                }
                Err(e) => {
                    state.status = StepStatus::Failed;
                    state.error = Some(format!("step {:?}: {e}", step.id));
                    state.finished_ms = Some(now);
                }
            }
        }
        self.notify();

        let run_id = self.report.id.clone();
        let exec = self.exec;
        let retry = wf.retry();
        let mut pending: FuturesUnordered<_> = calls
            .into_iter()
            .map(|(slot, idx, input)| {
                let step = &wf.steps()[idx];
                let key = format!("{run_id}:{}", step.id);
                let counter = &attempts[slot];
                async move {
                    let res = call_with_retries(
                        exec,
                        &step.plugin,
                        &step.command,
                        &input,
                        &key,
                        step.timeout_ms,
                        step.max_attempts,
                        retry,
                        counter,
                        false,
                    )
                    .await;
                    (slot, idx, res)
                }
            })
            .collect();

        let deadline = timeout
            .as_ref()
            .map(|(_, ms)| tokio::time::Instant::now() + Duration::from_millis(*ms));
        while !pending.is_empty() {
            let next = match deadline {
                None => pending.next().await,
                Some(d) => tokio::select! {
                    n = pending.next() => n,
                    _ = tokio::time::sleep_until(d) => break,
                },
            };
            let Some((slot, idx, res)) = next else { break };
            let step = &wf.steps()[idx];
            let state = &mut self.report.steps[idx];
            state.attempts = attempts[slot].load(Ordering::Relaxed);
            state.finished_ms = Some(now_ms());
            match res {
                Ok(output) => {
                    state.status = StepStatus::Ok;
                    match step_transform(step, &ctx, &output) {
                        Ok(Some(m)) => self.carry.extend(m),
                        Ok(None) => {}
                        Err(e) => {
                            state.status = StepStatus::Failed;
                            state.error = Some(format!("step {:?}: {e}", step.id));
                        }
                    }
                    state.output = Some(output);
                }
                Err(e) => {
                    state.status = StepStatus::Failed;
                    state.error = Some(e.message);
                }
            }
            self.notify();
        }
        drop(pending);
        // Whatever is still running timed out with its group.
        if let Some((group, ms)) = &timeout {
            for (slot, &idx) in indices.iter().enumerate() {
                let state = &mut self.report.steps[idx];
                if state.status == StepStatus::Running {
                    state.status = StepStatus::Failed;
                    state.error = Some(format!("parallel group {group:?} timed out after {ms} ms"));
                    state.attempts = attempts[slot].load(Ordering::Relaxed);
                    state.finished_ms = Some(now_ms());
                }
            }
            self.notify();
        }
        for &idx in indices {
            let step = &wf.steps()[idx];
            let state = &self.report.steps[idx];
            if state.status == StepStatus::Failed && step.on_error == OnError::Fail {
                return Err(format!(
                    "step {:?} failed: {}",
                    step.id,
                    state.error.as_deref().unwrap_or("")
                ));
            }
        }
        Ok(())
    }
}
