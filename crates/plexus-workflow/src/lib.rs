//! Workflow chains and journaled sagas for Plexus.
//!
//! Pure: no actors and no sockets. The node wraps these in actors and gives
//! them a [`StepExecutor`] that calls plugins.
//!
//! - [`Workflow::parse`] / [`Workflow::load`] read the TOML format
//!   (`docs/workflows.md`), with errors naming line, column and field.
//! - [`Workflow::plan`] gives the ordered [`Stage`]s: sequential steps,
//!   parallel groups with a timeout, conditional branches.
//! - [`run`] executes sequential, parallel and conditional workflows and
//!   returns a [`RunReport`].
//! - [`SagaRun`] drives a saga over a durable [`FileJournal`]:
//!   [`SagaRun::start`], [`SagaRun::resume`] after a crash, [`list_journals`].
//!
//! ```
//! use futures::future::BoxFuture;
//! use plexus_workflow::{run, RunStatus, StepError, StepExecutor, Workflow};
//! use serde_json::{json, Value};
//!
//! struct Echo;
//! impl StepExecutor for Echo {
//!     fn exec(&self, _plugin: &str, command: &str, input: Value, _key: String)
//!         -> BoxFuture<'_, Result<Value, StepError>> {
//!         let out = json!({"command": command, "input": input});
//!         Box::pin(async move { Ok(out) })
//!     }
//! }
//!
//! let wf = Workflow::parse(r#"
//! [workflow]
//! name = "hello"
//! kind = "sequential"
//!
//! [[steps]]
//! id = "triage"
//! plugin = "jira-orchestrator"
//! command = "triage"
//! input = { issue = "{{input.issue}}" }
//!
//! [[steps]]
//! id = "notify"
//! plugin = "jira-orchestrator"
//! command = "notify"
//! when = "steps.triage.ok"
//! input = { about = "{{steps.triage.output.input.issue}}" }
//! "#).unwrap();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let report = rt.block_on(run("run-1", &wf, json!({"issue": "PLX-1"}), &Echo));
//! assert_eq!(report.status, RunStatus::Completed);
//! assert_eq!(report.steps[1].output.as_ref().unwrap()["input"]["about"], "PLX-1");
//! ```

#![warn(missing_docs)]

pub mod condition;
pub mod error;
pub mod format;
pub mod journal;
pub mod plan;
pub mod runner;
pub mod saga;
pub mod template;

pub use condition::Condition;
pub use error::WorkflowError;
pub use format::{
    Compensation, Group, OnError, OnFalse, RetrySpec, SagaSpec, Step, Workflow, WorkflowKind,
};
pub use journal::{FileJournal, JournalFileError, JournalHeader, JournalRecord, JOURNAL_SUFFIX};
pub use plan::{Branch, Plan, PlannedStep, Stage};
pub use plexus_resilience::saga::{compensation_key, step_key};
pub use runner::{
    run, run_observed, Delivery, Observer, RunReport, RunStatus, StepError, StepExecutor,
    StepState, StepStatus,
};
pub use saga::{journal_path, journal_report, list_journals, JournalSummary, SagaError, SagaRun};
pub use template::TemplateError;
