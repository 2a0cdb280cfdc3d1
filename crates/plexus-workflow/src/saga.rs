//! Sagas: a workflow of kind `saga` driven by
//! [`plexus_resilience::saga::SagaJournal`] over a durable [`FileJournal`].
//!
//! The driver persists each journal entry (and syncs it) before performing
//! the effect it announces. Steps run in order with the idempotency key
//! [`crate::step_key`]`(saga_id, index)`; when one fails for good, every completed
//! step is compensated, last first, with [`crate::compensation_key`]. Compensation
//! inputs are rendered from the step's recorded result (`{{result.…}}`).
//! After a crash, [`SagaRun::resume`] replays the journal and continues where
//! it stopped: an effect that may have run before the crash is re-sent with
//! the same key (the executor or plugin drops the duplicate), and a step
//! whose `Compensated` entry is recorded is never compensated again.
//!
//! A compensation is retried with the workflow's backoff until it succeeds,
//! at most `saga.compensation_max_attempts` times; then the saga stops with
//! status [`RunStatus::Stuck`] (recorded in the journal) and a later resume
//! tries again.
//!
//! A step whose last try is in doubt ([`StepError::is_in_doubt`]: it timed
//! out, or its node went down with the request) is not failed: it may have
//! run, and compensating only the steps before it would leave its effect in
//! place. The driver re-sends it with the same key (the plugin's effect log
//! answers a run that already happened) until an answer settles it, within
//! the same `compensation_max_attempts` budget; then the saga is stuck on
//! that step and a resume re-sends it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use plexus_resilience::saga::{SagaAction, SagaEntry, SagaJournal};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::WorkflowError;
use crate::format::{Workflow, WorkflowKind};
use crate::journal::{
    FileJournal, JournalFileError, JournalHeader, JournalRecord, JOURNAL_SUFFIX, JOURNAL_VERSION,
};
use crate::runner::{
    call_with_retries, exec_within, now_ms, step_input, step_transform, Delivery, Observer,
    RunReport, RunStatus, StepError, StepExecutor, StepStatus,
};
use crate::template;

/// Why a saga could not be started, resumed or driven. `path` is the
/// journal file's.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// Only workflows of kind `saga` run as sagas.
    #[error("workflow {name:?} is of kind {kind:?}; only kind \"saga\" runs as a saga")]
    NotASaga { name: String, kind: WorkflowKind },
    #[error(
        "bad saga id {0:?}: use 1 to 128 letters, digits, '.', '_' and '-', not starting with '.'"
    )]
    /// Saga ids name files: they must be safe as file names.
    BadId(String),
    /// The journal file cannot be created, read or appended to. When an
    /// append fails the saga stops before the effect: resume it later.
    #[error(transparent)]
    Journal(#[from] JournalFileError),
    /// The workflow text kept in the journal no longer parses.
    #[error("{path}: the journal's workflow does not parse: {error}")]
    Workflow {
        path: String,
        error: Box<WorkflowError>,
    },
    /// The journal's entries do not form a valid saga history.
    #[error("{path}:{line}: {message}")]
    Replay {
        path: String,
        line: usize,
        message: String,
    },
    /// The driver broke the journal's protocol (a bug).
    #[error("saga {id}: {message}")]
    Internal { id: String, message: String },
}

/// The journal file of saga `id` in `dir`: `dir/<id>.saga.jsonl`.
pub fn journal_path(dir: impl AsRef<Path>, id: &str) -> PathBuf {
    dir.as_ref().join(format!("{id}{JOURNAL_SUFFIX}"))
}

fn valid_saga_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

enum Store {
    Memory,
    File(FileJournal),
}

impl Store {
    fn append(&mut self, entries: &[SagaEntry<Value>]) -> Result<(), JournalFileError> {
        match self {
            Store::Memory => Ok(()),
            Store::File(f) => f.append(entries),
        }
    }

    fn append_stuck(
        &mut self,
        step: u32,
        attempts: u32,
        error: &str,
    ) -> Result<(), JournalFileError> {
        match self {
            Store::Memory => Ok(()),
            Store::File(f) => f.append_stuck(step, attempts, error),
        }
    }
}

/// A saga being driven. See the [module docs](self).
pub struct SagaRun<E> {
    id: String,
    workflow: Workflow,
    input: Value,
    executor: E,
    journal: SagaJournal<Value>,
    store: Store,
    report: RunReport,
    observer: Option<Observer>,
    /// The step a resumed journal shows started and never answered: it may
    /// have run, so it stays in doubt until a re-send is answered.
    unsettled: Option<u32>,
}

impl<E: StepExecutor> SagaRun<E> {
    /// Creates the saga's journal `journal_dir/<id>.saga.jsonl` (with the
    /// workflow text and input, synced) and returns the run, not yet
    /// started: call [`SagaRun::run`]. Fails if that journal exists.
    pub fn start(
        id: &str,
        workflow: &Workflow,
        input: Value,
        journal_dir: impl AsRef<Path>,
        executor: E,
    ) -> Result<SagaRun<E>, SagaError> {
        check_saga(id, workflow)?;
        let dir = journal_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| JournalFileError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let header = JournalHeader {
            version: JOURNAL_VERSION,
            saga_id: id.to_string(),
            workflow: workflow.name().to_string(),
            source: workflow.source().to_string(),
            input: input.clone(),
            created_ms: now_ms(),
        };
        let created = header.created_ms;
        let file = FileJournal::create(journal_path(dir, id), header)?;
        let mut run = SagaRun::new(id, workflow.clone(), input, executor, Store::File(file));
        run.report.started_ms = Some(created);
        Ok(run)
    }

    /// Reopens a saga from its journal (after a crash or restart): replays
    /// the entries and returns the run positioned where it stopped; call
    /// [`SagaRun::run`] to finish or compensate it. A finished saga's run
    /// returns its report without calling the executor.
    pub fn resume(journal_path: impl AsRef<Path>, executor: E) -> Result<SagaRun<E>, SagaError> {
        let file = FileJournal::open(journal_path.as_ref())?;
        let (workflow, journal, report) = replay(&file)?;
        let header = file.header().clone();
        if !valid_saga_id(&header.saga_id) {
            return Err(SagaError::BadId(header.saga_id));
        }
        tracing::info!(saga = %header.saga_id, status = ?report.status, "resuming saga");
        let unsettled = report
            .steps
            .iter()
            .position(|s| s.status == StepStatus::Running)
            .map(|i| i as u32);
        Ok(SagaRun {
            id: header.saga_id,
            workflow,
            input: header.input,
            executor,
            journal,
            store: Store::File(file),
            report,
            observer: None,
            unsettled,
        })
    }

    /// A saga without a journal (what [`crate::run`] uses for saga
    /// workflows): same semantics, nothing survives a crash.
    pub fn in_memory(id: &str, workflow: &Workflow, input: Value, executor: E) -> SagaRun<E> {
        let mut run = SagaRun::new(id, workflow.clone(), input, executor, Store::Memory);
        run.report.started_ms = Some(now_ms());
        run
    }

    fn new(id: &str, workflow: Workflow, input: Value, executor: E, store: Store) -> SagaRun<E> {
        let report = RunReport::new(id, &workflow);
        SagaRun {
            id: id.to_string(),
            journal: SagaJournal::new(id, workflow.steps().len() as u32),
            workflow,
            input,
            executor,
            store,
            report,
            observer: None,
            unsettled: None,
        }
    }

    /// Calls `observer` with the report after every change.
    pub fn with_observer(mut self, observer: Observer) -> SagaRun<E> {
        self.observer = Some(observer);
        self
    }

    /// The saga id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The workflow (as kept in the journal).
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// The journal file, unless in memory.
    pub fn journal_path(&self) -> Option<&Path> {
        match &self.store {
            Store::File(f) => Some(f.path()),
            Store::Memory => None,
        }
    }

    /// The state so far.
    pub fn report(&self) -> &RunReport {
        &self.report
    }

    fn notify(&self) {
        if let Some(o) = &self.observer {
            o(&self.report);
        }
    }

    fn internal(&self, e: impl std::fmt::Display) -> SagaError {
        SagaError::Internal {
            id: self.id.clone(),
            message: e.to_string(),
        }
    }

    /// Drives the saga until it completes, is fully compensated, or is
    /// stuck (on a compensation, or on a step in doubt). `Err` only when the journal cannot be
    /// written (the saga stopped before the next effect: resume it later).
    pub async fn run(&mut self) -> Result<RunReport, SagaError> {
        if self.report.status == RunStatus::Stuck {
            self.report.status = if self.journal.failure().is_some() {
                RunStatus::Compensating
            } else {
                RunStatus::Running
            };
        }
        self.notify();
        loop {
            match self.journal.next_action() {
                SagaAction::Persist(entries) => {
                    let entries = entries.to_vec();
                    self.store.append(&entries)?;
                    self.journal.advance();
                    let at = now_ms();
                    for e in &entries {
                        apply_entry(&mut self.report, &self.workflow, at, e);
                    }
                    self.notify();
                }
                SagaAction::RunStep {
                    step,
                    idempotency_key,
                } => {
                    let outcome = self.run_step(step, &idempotency_key).await;
                    match outcome {
                        Ok(v) => self.journal.step_completed(step, v),
                        Err(e) if e.is_in_doubt() => {
                            // Compensating now could leave this step's effect
                            // in place: stop here, and a resume re-sends it.
                            let attempts = self.report.steps[step as usize].attempts;
                            self.store.append_stuck(step, attempts, &e.message)?;
                            tracing::error!(saga = %self.id, step, attempts, error = %e.message, "saga stuck on a step in doubt");
                            mark_stuck(&mut self.report, &self.workflow, step, attempts, &e.message, true);
                            self.notify();
                            return Ok(self.report.clone());
                        }
                        Err(e) => self.journal.step_failed(step, e.message),
                    }
                    .map_err(|e| self.internal(e))?;
                }
                SagaAction::Compensate {
                    step,
                    idempotency_key,
                    result,
                } => {
                    let result = result.clone();
                    match self.compensate(step, &idempotency_key, &result).await {
                        Ok(()) => self
                            .journal
                            .compensated(step)
                            .map_err(|e| self.internal(e))?,
                        Err((attempts, error)) => {
                            self.store.append_stuck(step, attempts, &error)?;
                            tracing::error!(saga = %self.id, step, attempts, %error, "saga stuck on a compensation");
                            mark_stuck(
                                &mut self.report,
                                &self.workflow,
                                step,
                                attempts,
                                &error,
                                false,
                            );
                            self.notify();
                            return Ok(self.report.clone());
                        }
                    }
                }
                SagaAction::Done(_) => {
                    self.notify();
                    return Ok(self.report.clone());
                }
            }
        }
    }

    /// The render context: input and the steps so far, plus `result`.
    fn context(&self, result: Option<&Value>) -> Value {
        let mut ctx = self.report.context(&self.input);
        if let (Some(r), Value::Object(m)) = (result, &mut ctx) {
            m.insert("result".into(), r.clone());
        }
        ctx
    }

    /// Runs step `step`; `Err` with the reason it failed for good, or why
    /// it is still in doubt after re-sending it within the saga's budget.
    async fn run_step(&mut self, step: u32, key: &str) -> Result<Value, StepError> {
        let idx = step as usize;
        let wf = &self.workflow;
        let s = &wf.steps()[idx];
        let ctx = self.context(None);
        // Fields from the previous step's transform.
        let mut carry = Map::new();
        if idx > 0 {
            let prev = &wf.steps()[idx - 1];
            if let Some(out) = self.journal.result(step - 1) {
                match step_transform(prev, &ctx, out) {
                    Ok(Some(m)) => carry = m,
                    Ok(None) => {}
                    Err(e) => return Err(StepError::permanent(format!("step {:?}: {e}", prev.id))),
                }
            }
        }
        let input = step_input(s, &ctx, &carry)
            .map_err(|e| StepError::permanent(format!("step {:?}: {e}", s.id)))?;
        self.report.steps[idx].status = StepStatus::Running;
        self.notify();
        let attempts = AtomicU32::new(0);
        // Started before the resume and never answered: in doubt from the start.
        let sent_before = self.unsettled.take() == Some(step);
        let res = call_with_retries(
            &self.executor,
            &s.plugin,
            &s.command,
            &input,
            key,
            s.timeout_ms,
            s.max_attempts,
            wf.retry(),
            &attempts,
            sent_before,
        )
        .await;
        self.report.steps[idx].attempts += attempts.load(Ordering::Relaxed);
        match res {
            Err(e) if e.is_in_doubt() => self.settle(step, key, &input, e).await,
            res => res,
        }
    }

    /// Re-sends a step in doubt with the same idempotency key until an
    /// answer says what happened (the plugin's effect log answers a request
    /// that already ran), at most `saga.compensation_max_attempts` times.
    async fn settle(
        &mut self,
        step: u32,
        key: &str,
        input: &Value,
        first: StepError,
    ) -> Result<Value, StepError> {
        let idx = step as usize;
        let wf = &self.workflow;
        let s = &wf.steps()[idx];
        tracing::warn!(saga = %self.id, step, error = %first.message, "step in doubt: re-sending it with the same key until answered");
        self.report.steps[idx].error = Some(format!("in doubt: {}", first.message));
        self.notify();
        let policy = wf
            .retry()
            .policy(wf.saga().compensation_max_attempts.max(1));
        let mut last = first;
        let mut tries = 0;
        loop {
            tries += 1;
            let Some(delay) = policy.delay_for(tries, &mut rand::thread_rng()) else {
                return Err(last);
            };
            tokio::time::sleep(delay).await;
            self.report.steps[idx].attempts += 1;
            let res = exec_within(
                &self.executor,
                &s.plugin,
                &s.command,
                input,
                key,
                s.timeout_ms,
            )
            .await;
            match res {
                Ok(v) => {
                    self.report.steps[idx].error = None;
                    return Ok(v);
                }
                // Answered: the key had no successful run, so nothing to undo.
                Err(e) if e.delivery == Delivery::Answered => return Err(e),
                Err(e) => {
                    tracing::debug!(saga = %self.id, step, attempt = tries, error = %e.message, "step still in doubt");
                    last = StepError {
                        delivery: Delivery::InDoubt,
                        ..e
                    };
                }
            }
        }
    }

    /// Runs a compensation until it succeeds or runs out of attempts
    /// (`Err((attempts, last error))`).
    async fn compensate(
        &mut self,
        step: u32,
        key: &str,
        result: &Value,
    ) -> Result<(), (u32, String)> {
        let idx = step as usize;
        let wf = &self.workflow;
        let s = &wf.steps()[idx];
        let Some(c) = &s.compensate else {
            // Validation requires one; nothing to undo otherwise.
            return Ok(());
        };
        let ctx = self.context(Some(result));
        let input = template::render(&c.input, &ctx, "compensate.input")
            .map_err(|e| (0, format!("step {:?}: {e}", s.id)))?;
        let max = wf.saga().compensation_max_attempts.max(1);
        let policy = wf.retry().policy(max);
        let mut tries = 0;
        loop {
            tries += 1;
            self.report.steps[idx].compensation_attempts += 1;
            let res = exec_within(
                &self.executor,
                &c.plugin,
                &c.command,
                &input,
                key,
                s.timeout_ms,
            )
            .await;
            let err = match res {
                Ok(_) => {
                    self.report.steps[idx].compensation_error = None;
                    return Ok(());
                }
                Err(e) => e.message,
            };
            tracing::warn!(saga = %self.id, step, attempt = tries, error = %err, "compensation failed");
            self.report.steps[idx].compensation_error = Some(err.clone());
            self.notify();
            let delay = policy.delay_for(tries, &mut rand::thread_rng());
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => return Err((tries, err)),
            }
        }
    }
}

fn check_saga(id: &str, workflow: &Workflow) -> Result<(), SagaError> {
    if workflow.kind() != WorkflowKind::Saga {
        return Err(SagaError::NotASaga {
            name: workflow.name().to_string(),
            kind: workflow.kind(),
        });
    }
    if !valid_saga_id(id) {
        return Err(SagaError::BadId(id.to_string()));
    }
    Ok(())
}

/// Rebuilds the workflow, the journal state and the report from a file.
fn replay(file: &FileJournal) -> Result<(Workflow, SagaJournal<Value>, RunReport), SagaError> {
    let path = file.path().display().to_string();
    let header = file.header();
    let workflow = Workflow::parse(&header.source).map_err(|error| SagaError::Workflow {
        path: path.clone(),
        error: Box::new(error),
    })?;
    if workflow.kind() != WorkflowKind::Saga {
        return Err(SagaError::NotASaga {
            name: workflow.name().to_string(),
            kind: workflow.kind(),
        });
    }
    let lines: Vec<usize> = file.entries().map(|(l, _)| l).collect();
    let entries: Vec<SagaEntry<Value>> = file.entries().map(|(_, e)| e.clone()).collect();
    let journal = SagaJournal::replay(&header.saga_id, workflow.steps().len() as u32, entries)
        .map_err(|e| {
            let line = match &e {
                plexus_resilience::saga::JournalError::Unexpected { index, .. } => {
                    lines.get(*index).copied().unwrap_or(0)
                }
                _ => 0,
            };
            SagaError::Replay {
                path: path.clone(),
                line,
                message: e.to_string(),
            }
        })?;
    let mut report = RunReport::new(&header.saga_id, &workflow);
    report.started_ms = Some(header.created_ms);
    for r in file.records() {
        match r {
            JournalRecord::Entry { at_ms, entry, .. } => {
                apply_entry(&mut report, &workflow, *at_ms, entry)
            }
            JournalRecord::Stuck {
                step,
                attempts,
                error,
                ..
            } => {
                // Before any failure, a saga can only be stuck on a step in doubt.
                let in_doubt = !report.steps.iter().any(|s| s.status == StepStatus::Failed);
                mark_stuck(&mut report, &workflow, *step, *attempts, error, in_doubt)
            }
        }
    }
    Ok((workflow, journal, report))
}

fn step_id(workflow: &Workflow, step: u32) -> String {
    workflow
        .steps()
        .get(step as usize)
        .map(|s| s.id.clone())
        .unwrap_or_else(|| step.to_string())
}

/// Folds one durable entry into the report.
fn apply_entry(report: &mut RunReport, workflow: &Workflow, at: u64, entry: &SagaEntry<Value>) {
    match entry {
        SagaEntry::StepStarted { step } => {
            if let Some(s) = report.steps.get_mut(*step as usize) {
                s.status = StepStatus::Running;
                s.started_ms = Some(at);
            }
            report.status = RunStatus::Running;
        }
        SagaEntry::StepCompleted { step, result } => {
            if let Some(s) = report.steps.get_mut(*step as usize) {
                s.status = StepStatus::Ok;
                s.output = Some(result.clone());
                s.finished_ms = Some(at);
                s.attempts = s.attempts.max(1);
            }
        }
        SagaEntry::StepFailed { step, error } => {
            if let Some(s) = report.steps.get_mut(*step as usize) {
                s.status = StepStatus::Failed;
                s.error = Some(error.clone());
                s.finished_ms = Some(at);
                s.attempts = s.attempts.max(1);
            }
            report.status = RunStatus::Compensating;
            report.error = Some(format!(
                "step {:?} failed: {error}",
                step_id(workflow, *step)
            ));
        }
        SagaEntry::CompensationStarted { step } => {
            if let Some(s) = report.steps.get_mut(*step as usize) {
                s.status = StepStatus::Compensating;
            }
            report.status = RunStatus::Compensating;
        }
        SagaEntry::Compensated { step } => {
            if let Some(s) = report.steps.get_mut(*step as usize) {
                s.status = StepStatus::Compensated;
                s.compensation_error = None;
            }
        }
        SagaEntry::SagaCompleted => {
            report.status = RunStatus::Completed;
            report.finished_ms = Some(at);
        }
        SagaEntry::SagaAborted { .. } => {
            report.status = RunStatus::Compensated;
            report.finished_ms = Some(at);
        }
    }
}

/// Marks the saga stuck on `step`: on its compensation, or (`in_doubt`) on
/// the step itself, sent but never answered.
fn mark_stuck(
    report: &mut RunReport,
    workflow: &Workflow,
    step: u32,
    attempts: u32,
    error: &str,
    in_doubt: bool,
) {
    report.status = RunStatus::Stuck;
    let Some(s) = report.steps.get_mut(step as usize) else {
        return;
    };
    if in_doubt {
        report.error = Some(format!(
            "step {:?} is in doubt after {attempts} tries (it may have run; a resume re-sends it with the same key): {error}",
            step_id(workflow, step)
        ));
        s.error = Some(format!("in doubt: {error}"));
        s.attempts = s.attempts.max(attempts);
    } else {
        report.error = Some(format!(
            "compensation of step {:?} failed {attempts} times: {error}",
            step_id(workflow, step)
        ));
        s.compensation_error = Some(error.to_string());
        s.compensation_attempts = s.compensation_attempts.max(attempts);
    }
}

/// A saga journal found in a directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalSummary {
    /// The journal file.
    pub path: PathBuf,
    /// From the header, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_id: Option<String>,
    /// The saga's state as the journal records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<RunReport>,
    /// Why the journal cannot be used (then `report` is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JournalSummary {
    /// The saga's status, when the journal is readable.
    pub fn status(&self) -> Option<RunStatus> {
        self.report.as_ref().map(|r| r.status)
    }

    /// Whether [`SagaRun::resume`] has work to do: the saga is running,
    /// compensating or stuck.
    pub fn needs_resume(&self) -> bool {
        matches!(
            self.status(),
            Some(RunStatus::Running | RunStatus::Compensating | RunStatus::Stuck)
        )
    }
}

/// Every `*.saga.jsonl` journal in `dir` with its status, sorted by path.
/// Reads only: a torn last line is ignored but left in place. A missing
/// directory lists nothing.
pub fn list_journals(dir: impl AsRef<Path>) -> std::io::Result<Vec<JournalSummary>> {
    let dir = dir.as_ref();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        let path = entry?.path();
        let is_journal = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(JOURNAL_SUFFIX));
        if !is_journal || !path.is_file() {
            continue;
        }
        let summary = match FileJournal::read(&path) {
            Err(e) => JournalSummary {
                path,
                saga_id: None,
                report: None,
                error: Some(e.to_string()),
            },
            Ok(file) => {
                let saga_id = Some(file.header().saga_id.clone());
                match replay(&file) {
                    Ok((_, _, report)) => JournalSummary {
                        path,
                        saga_id,
                        report: Some(report),
                        error: None,
                    },
                    Err(e) => JournalSummary {
                        path,
                        saga_id,
                        report: None,
                        error: Some(e.to_string()),
                    },
                }
            }
        };
        out.push(summary);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The report of the saga journaled at `path` (read only).
pub fn journal_report(path: impl AsRef<Path>) -> Result<RunReport, SagaError> {
    let file = FileJournal::read(path)?;
    Ok(replay(&file)?.2)
}
