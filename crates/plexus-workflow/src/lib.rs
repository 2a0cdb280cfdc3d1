//! Workflow chains and journaled sagas for Plexus.
pub mod condition;
pub mod error;
pub mod format;
pub mod plan;
pub mod template;

pub use condition::Condition;
pub use error::WorkflowError;
pub use format::{Compensation, Group, OnError, OnFalse, RetrySpec, SagaSpec, Step, Workflow, WorkflowKind};
pub use plan::{Branch, Plan, PlannedStep, Stage};
