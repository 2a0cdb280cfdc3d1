//! Execution plans: a workflow as ordered stages.
//!
//! A [`Stage::Step`] runs one step; a [`Stage::Parallel`] runs its steps at
//! once and fails those still running when `timeout_ms` elapses. A step with
//! a `when` condition is a conditional branch: when the condition is false
//! the step is skipped ([`Branch::Skip`]) or the run jumps forward to a later
//! stage ([`Branch::Jump`]), skipping everything in between.
//!
//! ```
//! use plexus_workflow::{Stage, Workflow};
//!
//! let wf = Workflow::parse(r#"
//! [workflow]
//! name = "demo"
//! kind = "sequential"
//!
//! [groups.checks]
//! timeout_ms = 5000
//!
//! [[steps]]
//! id = "triage"
//! plugin = "jira-orchestrator"
//! command = "triage"
//!
//! [[steps]]
//! id = "a11y"
//! plugin = "frontend-powerhouse"
//! command = "audit-a11y"
//! parallel = "checks"
//!
//! [[steps]]
//! id = "perf"
//! plugin = "frontend-powerhouse"
//! command = "analyze-performance"
//! parallel = "checks"
//! "#).unwrap();
//! let plan = wf.plan();
//! assert_eq!(plan.stages.len(), 2);
//! assert!(matches!(&plan.stages[1], Stage::Parallel { timeout_ms: 5000, steps, .. } if steps.len() == 2));
//! ```

use serde::Serialize;

use crate::condition::Condition;

/// What a conditional step does when its condition is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Branch {
    /// Skip the step.
    Skip,
    /// Skip the step and every stage before `to_stage`.
    Jump {
        /// The step that runs next.
        to_step: String,
        /// Its stage.
        to_stage: usize,
    },
}

/// One step as planned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedStep {
    /// Index in [`crate::Workflow::steps`].
    pub index: usize,
    /// The step's id.
    pub id: String,
    /// The step's condition, if any.
    pub when: Option<Condition>,
    /// What a false condition does.
    pub on_false: Branch,
}

/// A unit of execution.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// One step.
    Step(PlannedStep),
    /// Steps run at once, joined under a timeout.
    Parallel {
        /// The group's name (`workflow` for a parallel workflow).
        group: String,
        /// Steps still running after this fail.
        timeout_ms: u64,
        /// The group's steps, in file order.
        steps: Vec<PlannedStep>,
    },
}

impl Stage {
    /// The steps of the stage.
    pub fn steps(&self) -> &[PlannedStep] {
        match self {
            Stage::Step(s) => std::slice::from_ref(s),
            Stage::Parallel { steps, .. } => steps,
        }
    }
}

/// The ordered stages of a workflow (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Plan {
    /// The stages, in execution order.
    pub stages: Vec<Stage>,
}

impl Plan {
    /// The stage index of each step, by step index.
    pub fn stage_of(&self, step_index: usize) -> Option<usize> {
        self.stages
            .iter()
            .position(|st| st.steps().iter().any(|s| s.index == step_index))
    }
}
