//! The saga journal: a pure state machine that says what to do next.
//!
//! A saga runs steps 0, 1, … in order. If a step fails, every step that
//! completed is compensated, last first. The journal is the write-ahead log
//! of that: the driver (an actor) persists each entry before acting on it,
//! so after a crash [`SagaJournal::replay`] on the persisted entries and
//! [`SagaJournal::next_action`] resume exactly where the saga stopped.
//!
//! It works like raft-rs's `Ready`: `next_action` either hands back entries
//! to persist ([`SagaAction::Persist`], then call [`SagaJournal::advance`]) or
//! an effect to perform, and it never asks for an effect whose intent entry
//! (`StepStarted`, `CompensationStarted`) is not yet persisted. The driver
//! loop:
//!
//! ```
//! use plexus_resilience::saga::{SagaAction, SagaJournal, SagaOutcome};
//!
//! let mut journal: SagaJournal<String> = SagaJournal::new("order-42", 2);
//! let mut disk = Vec::new();
//! let outcome = loop {
//!     match journal.next_action() {
//!         SagaAction::Persist(entries) => {
//!             disk.extend_from_slice(entries); // fsync here
//!             journal.advance();
//!         }
//!         SagaAction::RunStep { step, idempotency_key } => {
//!             // call the step's command with the key; report the outcome
//!             journal.step_completed(step, format!("ok {idempotency_key}")).unwrap();
//!         }
//!         SagaAction::Compensate { step, .. } => journal.compensated(step).unwrap(),
//!         SagaAction::Done(outcome) => break outcome,
//!     }
//! };
//! assert_eq!(outcome, SagaOutcome::Completed);
//! // After a crash: SagaJournal::replay("order-42", 2, disk) and the same loop.
//! let replayed = SagaJournal::<String>::replay("order-42", 2, disk).unwrap();
//! assert_eq!(replayed.outcome(), Some(SagaOutcome::Completed));
//! ```
//!
//! Effects may run more than once (a crash after the effect, before its
//! outcome was persisted), always with the same idempotency key — see
//! [`step_key`] and [`compensation_key`] — so the receiver can drop the
//! duplicate. The journal itself never asks to compensate a step twice once
//! its `Compensated` entry is recorded, and compensates in reverse order.
//!
//! A step reports `StepFailed` only once it has definitely failed (retries
//! exhausted, not in doubt). Compensations are expected to succeed
//! eventually: the driver retries one until it does.

use serde::{Deserialize, Serialize};

/// One journal record. `R` is a step's result, from which its compensating
/// command takes its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SagaEntry<R> {
    StepStarted { step: u32 },
    StepCompleted { step: u32, result: R },
    StepFailed { step: u32, error: String },
    CompensationStarted { step: u32 },
    Compensated { step: u32 },
    SagaCompleted,
    SagaAborted { reason: String },
}

impl<R> SagaEntry<R> {
    /// The variant's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            SagaEntry::StepStarted { .. } => "StepStarted",
            SagaEntry::StepCompleted { .. } => "StepCompleted",
            SagaEntry::StepFailed { .. } => "StepFailed",
            SagaEntry::CompensationStarted { .. } => "CompensationStarted",
            SagaEntry::Compensated { .. } => "Compensated",
            SagaEntry::SagaCompleted => "SagaCompleted",
            SagaEntry::SagaAborted { .. } => "SagaAborted",
        }
    }
}

/// How a finished saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SagaOutcome {
    /// Every step completed.
    Completed,
    /// A step failed and every completed step was compensated.
    Aborted,
}

/// Where the saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SagaStatus {
    Running,
    Compensating,
    Completed,
    Aborted,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum SagaAction<'a, R> {
    /// Write these entries durably, in order, then call
    /// [`SagaJournal::advance`].
    Persist(&'a [SagaEntry<R>]),
    /// Run the step's command with this key, then report
    /// [`SagaJournal::step_completed`] or [`SagaJournal::step_failed`].
    RunStep { step: u32, idempotency_key: String },
    /// Run the step's compensating command (parameters from `result`) with
    /// this key, then report [`SagaJournal::compensated`].
    Compensate {
        step: u32,
        idempotency_key: String,
        result: &'a R,
    },
    /// Nothing left to do.
    Done(SagaOutcome),
}

/// The idempotency key of a step's command: `"{saga_id}:{step}"`.
pub fn step_key(saga_id: &str, step: u32) -> String {
    format!("{saga_id}:{step}")
}

/// The idempotency key of a step's compensation:
/// `"{saga_id}:{step}:compensate"`.
pub fn compensation_key(saga_id: &str, step: u32) -> String {
    format!("{saga_id}:{step}:compensate")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// The entry does not follow from the journal so far.
    #[error("saga {saga_id}: entry #{index} {got} not allowed here (expected {expected})")]
    Unexpected {
        saga_id: String,
        index: usize,
        got: String,
        expected: String,
    },
    /// An outcome was reported while the journal still had entries to
    /// persist: the effect ran before its intent was durable.
    #[error("saga {saga_id}: outcome reported before the journal was persisted")]
    NotPersisted { saga_id: String },
}

/// The journal plus the state it implies. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SagaJournal<R> {
    saga_id: String,
    step_count: u32,
    entries: Vec<SagaEntry<R>>,
    /// Entries `[..persisted]` are durable.
    persisted: usize,
    /// Index in `entries` of each completed step's `StepCompleted`.
    completed: Vec<usize>,
    /// The current forward step has a `StepStarted`.
    step_started: bool,
    /// The failed step and its error: the saga is compensating.
    failure: Option<(u32, String)>,
    /// Compensations done (they go from the last completed step down).
    compensated: u32,
    /// The current compensation has a `CompensationStarted`.
    compensation_started: bool,
    outcome: Option<SagaOutcome>,
}

/// The next entry the journal accepts.
enum Expect {
    StepStarted(u32),
    StepOutcome(u32),
    SagaCompleted,
    CompensationStarted(u32),
    Compensated(u32),
    SagaAborted,
    Nothing,
}

impl Expect {
    fn describe(&self) -> String {
        match self {
            Expect::StepStarted(s) => format!("StepStarted {{ step: {s} }}"),
            Expect::StepOutcome(s) => format!("StepCompleted or StepFailed {{ step: {s} }}"),
            Expect::SagaCompleted => "SagaCompleted".into(),
            Expect::CompensationStarted(s) => format!("CompensationStarted {{ step: {s} }}"),
            Expect::Compensated(s) => format!("Compensated {{ step: {s} }}"),
            Expect::SagaAborted => "SagaAborted".into(),
            Expect::Nothing => "nothing: the saga is finished".into(),
        }
    }
}

impl<R> SagaJournal<R> {
    /// An empty journal for a saga of `step_count` steps.
    pub fn new(saga_id: impl Into<String>, step_count: u32) -> Self {
        SagaJournal {
            saga_id: saga_id.into(),
            step_count,
            entries: Vec::new(),
            persisted: 0,
            completed: Vec::new(),
            step_started: false,
            failure: None,
            compensated: 0,
            compensation_started: false,
            outcome: None,
        }
    }

    /// Rebuilds a journal from persisted entries (all counted as durable),
    /// checking that they form a valid history.
    pub fn replay(
        saga_id: impl Into<String>,
        step_count: u32,
        entries: impl IntoIterator<Item = SagaEntry<R>>,
    ) -> Result<Self, JournalError> {
        let mut j = SagaJournal::new(saga_id, step_count);
        for e in entries {
            j.apply(e)?;
        }
        j.persisted = j.entries.len();
        Ok(j)
    }

    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    pub fn step_count(&self) -> u32 {
        self.step_count
    }

    /// Every entry, persisted or not.
    pub fn entries(&self) -> &[SagaEntry<R>] {
        &self.entries
    }

    /// Entries not yet persisted.
    pub fn unpersisted(&self) -> &[SagaEntry<R>] {
        &self.entries[self.persisted..]
    }

    pub fn status(&self) -> SagaStatus {
        match (self.outcome, &self.failure) {
            (Some(SagaOutcome::Completed), _) => SagaStatus::Completed,
            (Some(SagaOutcome::Aborted), _) => SagaStatus::Aborted,
            (None, Some(_)) => SagaStatus::Compensating,
            (None, None) => SagaStatus::Running,
        }
    }

    pub fn outcome(&self) -> Option<SagaOutcome> {
        self.outcome
    }

    /// The step that failed and its error, once one has.
    pub fn failure(&self) -> Option<(u32, &str)> {
        self.failure.as_ref().map(|(s, e)| (*s, e.as_str()))
    }

    /// Steps completed so far.
    pub fn completed_steps(&self) -> u32 {
        self.completed.len() as u32
    }

    /// The result of a completed step.
    pub fn result(&self, step: u32) -> Option<&R> {
        let &i = self.completed.get(step as usize)?;
        match &self.entries[i] {
            SagaEntry::StepCompleted { result, .. } => Some(result),
            _ => None,
        }
    }

    /// What to do next. May append an intent or terminal entry, which is then
    /// handed back to persist first.
    pub fn next_action(&mut self) -> SagaAction<'_, R> {
        if self.persisted < self.entries.len() {
            return SagaAction::Persist(&self.entries[self.persisted..]);
        }
        let entry = match self.expect() {
            Expect::Nothing => {
                return SagaAction::Done(self.outcome.unwrap_or(SagaOutcome::Completed))
            }
            Expect::StepOutcome(step) => {
                return SagaAction::RunStep {
                    step,
                    idempotency_key: step_key(&self.saga_id, step),
                }
            }
            Expect::Compensated(step) => {
                let idempotency_key = compensation_key(&self.saga_id, step);
                let result = self.result(step).expect("compensating a completed step");
                return SagaAction::Compensate {
                    step,
                    idempotency_key,
                    result,
                };
            }
            Expect::StepStarted(step) => SagaEntry::StepStarted { step },
            Expect::CompensationStarted(step) => SagaEntry::CompensationStarted { step },
            Expect::SagaCompleted => SagaEntry::SagaCompleted,
            Expect::SagaAborted => SagaEntry::SagaAborted {
                reason: match &self.failure {
                    Some((step, error)) => format!("step {step} failed: {error}"),
                    None => String::new(),
                },
            },
        };
        self.apply(entry)
            .expect("the journal only appends the entry it expects");
        SagaAction::Persist(&self.entries[self.persisted..])
    }

    /// The entries handed out by the last `Persist` are durable.
    pub fn advance(&mut self) {
        self.persisted = self.entries.len();
    }

    /// The step's command succeeded with `result`.
    pub fn step_completed(&mut self, step: u32, result: R) -> Result<(), JournalError> {
        self.report(SagaEntry::StepCompleted { step, result })
    }

    /// The step's command failed for good: compensation begins.
    pub fn step_failed(&mut self, step: u32, error: impl Into<String>) -> Result<(), JournalError> {
        self.report(SagaEntry::StepFailed {
            step,
            error: error.into(),
        })
    }

    /// The step's compensation succeeded.
    pub fn compensated(&mut self, step: u32) -> Result<(), JournalError> {
        self.report(SagaEntry::Compensated { step })
    }

    fn report(&mut self, entry: SagaEntry<R>) -> Result<(), JournalError> {
        if self.persisted < self.entries.len() {
            return Err(JournalError::NotPersisted {
                saga_id: self.saga_id.clone(),
            });
        }
        self.apply(entry)
    }

    fn expect(&self) -> Expect {
        if self.outcome.is_some() {
            return Expect::Nothing;
        }
        let done = self.completed.len() as u32;
        if self.failure.is_some() {
            if self.compensated < done {
                let step = done - 1 - self.compensated;
                if self.compensation_started {
                    Expect::Compensated(step)
                } else {
                    Expect::CompensationStarted(step)
                }
            } else {
                Expect::SagaAborted
            }
        } else if done < self.step_count {
            if self.step_started {
                Expect::StepOutcome(done)
            } else {
                Expect::StepStarted(done)
            }
        } else {
            Expect::SagaCompleted
        }
    }

    /// Validates `entry` against the state and appends it.
    fn apply(&mut self, entry: SagaEntry<R>) -> Result<(), JournalError> {
        let expect = self.expect();
        let ok = match (&expect, &entry) {
            (Expect::StepStarted(s), SagaEntry::StepStarted { step }) if s == step => {
                self.step_started = true;
                true
            }
            (Expect::StepOutcome(s), SagaEntry::StepCompleted { step, .. }) if s == step => {
                self.completed.push(self.entries.len());
                self.step_started = false;
                true
            }
            (Expect::StepOutcome(s), SagaEntry::StepFailed { step, error }) if s == step => {
                self.failure = Some((*step, error.clone()));
                self.step_started = false;
                true
            }
            (Expect::SagaCompleted, SagaEntry::SagaCompleted) => {
                self.outcome = Some(SagaOutcome::Completed);
                true
            }
            (Expect::CompensationStarted(s), SagaEntry::CompensationStarted { step })
                if s == step =>
            {
                self.compensation_started = true;
                true
            }
            (Expect::Compensated(s), SagaEntry::Compensated { step }) if s == step => {
                self.compensated += 1;
                self.compensation_started = false;
                true
            }
            (Expect::SagaAborted, SagaEntry::SagaAborted { .. }) => {
                self.outcome = Some(SagaOutcome::Aborted);
                true
            }
            _ => false,
        };
        if !ok {
            return Err(JournalError::Unexpected {
                saga_id: self.saga_id.clone(),
                index: self.entries.len(),
                got: describe(&entry),
                expected: expect.describe(),
            });
        }
        self.entries.push(entry);
        Ok(())
    }
}

fn describe<R>(e: &SagaEntry<R>) -> String {
    match e {
        SagaEntry::StepStarted { step }
        | SagaEntry::StepCompleted { step, .. }
        | SagaEntry::StepFailed { step, .. }
        | SagaEntry::CompensationStarted { step }
        | SagaEntry::Compensated { step } => format!("{} {{ step: {step} }}", e.kind()),
        SagaEntry::SagaCompleted | SagaEntry::SagaAborted { .. } => e.kind().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type E = SagaEntry<String>;

    fn started(step: u32) -> E {
        SagaEntry::StepStarted { step }
    }
    fn done(step: u32) -> E {
        SagaEntry::StepCompleted {
            step,
            result: format!("r{step}"),
        }
    }
    fn failed(step: u32) -> E {
        SagaEntry::StepFailed {
            step,
            error: "boom".into(),
        }
    }
    fn comp_started(step: u32) -> E {
        SagaEntry::CompensationStarted { step }
    }
    fn comped(step: u32) -> E {
        SagaEntry::Compensated { step }
    }

    /// Takes the pending Persist and acknowledges it, returning what it held.
    fn persist(j: &mut SagaJournal<String>) -> Vec<E> {
        match j.next_action() {
            SagaAction::Persist(e) => {
                let e = e.to_vec();
                j.advance();
                e
            }
            other => panic!("expected Persist, got {other:?}"),
        }
    }

    #[test]
    fn happy_path_sequence() {
        let mut j = SagaJournal::new("s", 2);
        assert_eq!(persist(&mut j), [started(0)]);
        assert_eq!(
            j.next_action(),
            SagaAction::RunStep {
                step: 0,
                idempotency_key: "s:0".into()
            }
        );
        j.step_completed(0, "r0".into()).unwrap();
        assert_eq!(persist(&mut j), [done(0)]);
        assert_eq!(persist(&mut j), [started(1)]);
        j.step_completed(1, "r1".into()).unwrap();
        assert_eq!(persist(&mut j), [done(1)]);
        assert_eq!(persist(&mut j), [SagaEntry::SagaCompleted]);
        assert_eq!(j.next_action(), SagaAction::Done(SagaOutcome::Completed));
        assert_eq!(j.status(), SagaStatus::Completed);
        assert_eq!(j.result(1), Some(&"r1".to_string()));
    }

    #[test]
    fn failure_compensates_in_reverse() {
        let mut j = SagaJournal::replay(
            "s",
            4,
            [started(0), done(0), started(1), done(1), started(2)],
        )
        .unwrap();
        assert_eq!(j.status(), SagaStatus::Running);
        // Crash mid-step 2: it is re-run with the same key.
        assert_eq!(
            j.next_action(),
            SagaAction::RunStep {
                step: 2,
                idempotency_key: "s:2".into()
            }
        );
        j.step_failed(2, "no stock").unwrap();
        assert_eq!(persist(&mut j), [failed(2).with_error("no stock")]);
        assert_eq!(j.status(), SagaStatus::Compensating);
        assert_eq!(persist(&mut j), [comp_started(1)]);
        let r1 = "r1".to_string();
        assert_eq!(
            j.next_action(),
            SagaAction::Compensate {
                step: 1,
                idempotency_key: "s:1:compensate".into(),
                result: &r1
            }
        );
        j.compensated(1).unwrap();
        assert_eq!(persist(&mut j), [comped(1)]);
        assert_eq!(persist(&mut j), [comp_started(0)]);
        j.compensated(0).unwrap();
        assert_eq!(persist(&mut j), [comped(0)]);
        assert_eq!(
            persist(&mut j),
            [SagaEntry::SagaAborted {
                reason: "step 2 failed: no stock".into()
            }]
        );
        assert_eq!(j.next_action(), SagaAction::Done(SagaOutcome::Aborted));
        assert_eq!(j.failure(), Some((2, "no stock")));
    }

    #[test]
    fn first_step_failing_aborts_without_compensation() {
        let mut j = SagaJournal::replay("s", 3, [started(0), failed(0)]).unwrap();
        assert!(matches!(
            persist(&mut j).as_slice(),
            [SagaEntry::SagaAborted { .. }]
        ));
        assert_eq!(j.next_action(), SagaAction::Done(SagaOutcome::Aborted));
    }

    #[test]
    fn empty_saga_completes() {
        let mut j: SagaJournal<String> = SagaJournal::new("s", 0);
        assert_eq!(persist(&mut j), [SagaEntry::SagaCompleted]);
        assert_eq!(j.next_action(), SagaAction::Done(SagaOutcome::Completed));
    }

    #[test]
    fn crash_during_compensation_resumes_same_step_never_a_finished_one() {
        let base = vec![
            started(0),
            done(0),
            started(1),
            done(1),
            started(2),
            failed(2),
            comp_started(1),
        ];
        let mut j = SagaJournal::replay("s", 3, base.clone()).unwrap();
        assert!(matches!(
            j.next_action(),
            SagaAction::Compensate { step: 1, .. }
        ));
        let mut more = base;
        more.push(comped(1));
        let mut j = SagaJournal::replay("s", 3, more).unwrap();
        assert_eq!(persist(&mut j), [comp_started(0)]);
        assert!(matches!(
            j.next_action(),
            SagaAction::Compensate { step: 0, .. }
        ));
    }

    #[test]
    fn invalid_histories_are_rejected() {
        let bad: Vec<Vec<E>> = vec![
            vec![done(0)],                                                     // not started
            vec![started(1)],                                                  // out of order
            vec![started(0), started(0)],                                      // started twice
            vec![started(0), done(0), SagaEntry::SagaCompleted],               // steps left
            vec![started(0), done(0), started(1), failed(1), comped(0)],       // not started
            vec![started(0), done(0), started(1), failed(1), comp_started(1)], // not completed
            vec![
                started(0),
                done(0),
                started(1),
                failed(1),
                comp_started(0),
                comped(0),
                comp_started(0),
            ], // twice
            vec![
                started(0),
                done(0),
                started(1),
                done(1),
                started(2),
                failed(2),
                comp_started(0),
            ], // order
            vec![
                started(0),
                failed(0),
                SagaEntry::SagaAborted {
                    reason: String::new(),
                },
                started(1),
            ],
        ];
        for (i, entries) in bad.into_iter().enumerate() {
            let err = SagaJournal::replay("s", 3, entries).unwrap_err();
            assert!(
                matches!(err, JournalError::Unexpected { .. }),
                "case {i}: {err}"
            );
        }
    }

    #[test]
    fn outcome_before_persist_is_refused() {
        let mut j: SagaJournal<String> = SagaJournal::new("s", 1);
        let _ = j.next_action(); // StepStarted pending, not acknowledged
        assert_eq!(
            j.step_completed(0, "r0".into()),
            Err(JournalError::NotPersisted {
                saga_id: "s".into()
            })
        );
        j.advance();
        j.step_completed(0, "r0".into()).unwrap();
    }

    #[test]
    fn wrong_step_reported_is_refused() {
        let mut j: SagaJournal<String> = SagaJournal::new("s", 2);
        persist(&mut j);
        let err = j.step_completed(1, "x".into()).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected StepCompleted or StepFailed { step: 0 }"),
            "{err}"
        );
    }

    #[test]
    fn entries_roundtrip_serde() {
        let entries = vec![
            started(0),
            done(0),
            failed(1),
            comp_started(0),
            comped(0),
            SagaEntry::SagaCompleted,
            SagaEntry::SagaAborted { reason: "x".into() },
        ];
        let json = serde_json::to_string(&entries).unwrap();
        let back: Vec<E> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, entries);
        assert!(
            json.contains(r#"{"stepCompleted":{"step":0,"result":"r0"}}"#),
            "{json}"
        );
    }

    impl SagaEntry<String> {
        fn with_error(self, e: &str) -> Self {
            match self {
                SagaEntry::StepFailed { step, .. } => SagaEntry::StepFailed {
                    step,
                    error: e.into(),
                },
                other => other,
            }
        }
    }
}
