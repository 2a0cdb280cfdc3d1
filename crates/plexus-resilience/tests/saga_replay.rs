//! Crash-and-replay scenarios for the saga journal.
//!
//! A driver runs a saga against a simulated world whose commands are
//! idempotent by key. The process "crashes" before any durable write or
//! effect chosen by the test; the survivor replays the persisted journal and
//! carries on. Whatever the crash points, the saga must end completed (every
//! step effective once) or aborted with every completed step compensated
//! exactly once, in reverse order.

use std::collections::{HashMap, HashSet};

use plexus_resilience::saga::{
    compensation_key, step_key, SagaAction, SagaEntry, SagaJournal, SagaOutcome,
};
use proptest::prelude::*;

const SAGA: &str = "saga-7";

/// The outside world: commands are idempotent by key.
#[derive(Default)]
struct World {
    fail_step: Option<u32>,
    /// Key → first outcome, replayed for duplicates.
    step_outcomes: HashMap<String, Result<String, String>>,
    /// Effective (first-time) compensations, in order.
    compensations: Vec<u32>,
    compensation_keys: HashSet<String>,
    /// Raw invocations per key, duplicates included.
    invocations: HashMap<String, u32>,
}

impl World {
    fn run_step(&mut self, step: u32, key: &str) -> Result<String, String> {
        assert_eq!(key, step_key(SAGA, step));
        *self.invocations.entry(key.to_owned()).or_default() += 1;
        let fail = self.fail_step == Some(step);
        self.step_outcomes
            .entry(key.to_owned())
            .or_insert_with(|| {
                if fail {
                    Err(format!("step {step} refused"))
                } else {
                    Ok(format!("result-{step}"))
                }
            })
            .clone()
    }

    fn compensate(&mut self, step: u32, key: &str, result: &str) {
        assert_eq!(key, compensation_key(SAGA, step));
        assert_eq!(
            result,
            format!("result-{step}"),
            "compensation gets the step's result"
        );
        *self.invocations.entry(key.to_owned()).or_default() += 1;
        if self.compensation_keys.insert(key.to_owned()) {
            self.compensations.push(step);
        }
    }
}

struct Crashed;

/// Runs until done, or until `budget` durable writes/effects have happened.
fn drive(
    journal: &mut SagaJournal<String>,
    disk: &mut Vec<SagaEntry<String>>,
    world: &mut World,
    mut budget: Option<u32>,
) -> Result<SagaOutcome, Crashed> {
    let mut tick = || match &mut budget {
        Some(0) => Err(Crashed),
        Some(n) => {
            *n -= 1;
            Ok(())
        }
        None => Ok(()),
    };
    loop {
        match journal.next_action() {
            SagaAction::Persist(entries) => {
                tick()?;
                disk.extend_from_slice(entries);
                journal.advance();
            }
            SagaAction::RunStep {
                step,
                idempotency_key,
            } => {
                tick()?;
                match world.run_step(step, &idempotency_key) {
                    Ok(r) => journal.step_completed(step, r).unwrap(),
                    Err(e) => journal.step_failed(step, e).unwrap(),
                }
            }
            SagaAction::Compensate {
                step,
                idempotency_key,
                result,
            } => {
                let already = disk
                    .iter()
                    .any(|e| matches!(e, SagaEntry::Compensated { step: s } if *s == step));
                assert!(!already, "asked to compensate step {step} again");
                tick()?;
                let result = result.clone();
                world.compensate(step, &idempotency_key, &result);
                journal.compensated(step).unwrap();
            }
            SagaAction::Done(outcome) => return Ok(outcome),
        }
    }
}

/// Runs the saga through the given crashes (each a budget of writes/effects
/// before dying), replaying from disk after each; returns the final state.
fn run_with_crashes(
    steps: u32,
    fail_step: Option<u32>,
    crashes: &[u32],
) -> (SagaOutcome, Vec<SagaEntry<String>>, World) {
    let mut world = World {
        fail_step,
        ..World::default()
    };
    let mut disk = Vec::new();
    let mut journal = SagaJournal::new(SAGA, steps);
    for &budget in crashes {
        match drive(&mut journal, &mut disk, &mut world, Some(budget)) {
            Ok(outcome) => return (outcome, disk, world),
            Err(Crashed) => {
                journal = SagaJournal::replay(SAGA, steps, disk.clone()).expect("valid journal");
            }
        }
    }
    let outcome =
        drive(&mut journal, &mut disk, &mut world, None).unwrap_or_else(|_| unreachable!());
    (outcome, disk, world)
}

fn check(steps: u32, fail_step: Option<u32>, crashes: &[u32]) {
    let (outcome, disk, world) = run_with_crashes(steps, fail_step, crashes);
    let failing = fail_step.filter(|&f| f < steps);

    // The final journal replays to the same end.
    let mut replayed = SagaJournal::replay(SAGA, steps, disk.clone()).expect("valid journal");
    assert_eq!(replayed.next_action(), SagaAction::Done(outcome));

    let compensated: Vec<u32> = disk
        .iter()
        .filter_map(|e| match e {
            SagaEntry::Compensated { step } => Some(*step),
            _ => None,
        })
        .collect();
    match failing {
        None => {
            assert_eq!(outcome, SagaOutcome::Completed);
            for s in 0..steps {
                assert_eq!(
                    world.step_outcomes.get(&step_key(SAGA, s)),
                    Some(&Ok(format!("result-{s}")))
                );
            }
            assert!(world.compensations.is_empty());
            assert!(compensated.is_empty());
            assert_eq!(disk.last(), Some(&SagaEntry::SagaCompleted));
        }
        Some(f) => {
            assert_eq!(outcome, SagaOutcome::Aborted);
            let reverse: Vec<u32> = (0..f).rev().collect();
            assert_eq!(
                world.compensations, reverse,
                "effective compensations, reverse order"
            );
            assert_eq!(compensated, reverse, "journaled once each, reverse order");
            for s in f + 1..steps {
                assert!(
                    !world.invocations.contains_key(&step_key(SAGA, s)),
                    "step {s} never runs"
                );
            }
            assert!(matches!(disk.last(), Some(SagaEntry::SagaAborted { .. })));
        }
    }
    // A key is re-sent at most once per crash.
    let max_dup = 1 + crashes.len() as u32;
    for (key, n) in &world.invocations {
        assert!(
            *n <= max_dup,
            "{key} invoked {n} times with {} crashes",
            crashes.len()
        );
    }
}

#[test]
fn every_single_crash_point() {
    for steps in 0..=4 {
        for fail_step in (0..=steps).map(Some).chain([None]) {
            // Far more budget than any run of ≤ 4 steps needs.
            for crash in 0..40 {
                check(steps, fail_step, &[crash]);
            }
        }
    }
}

#[test]
fn crash_right_after_effect_reruns_with_same_key() {
    // Budget 2: persist StepStarted 0, run step 0, crash before persisting
    // its completion. The rerun is a duplicate the world drops.
    let (outcome, _, world) = run_with_crashes(2, None, &[2]);
    assert_eq!(outcome, SagaOutcome::Completed);
    assert_eq!(world.invocations[&step_key(SAGA, 0)], 2);
    assert_eq!(world.invocations[&step_key(SAGA, 1)], 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn replay_after_random_crashes_completes_or_compensates(
        steps in 0u32..8,
        fail in proptest::option::of(0u32..8),
        crashes in proptest::collection::vec(0u32..40, 0..5),
    ) {
        check(steps, fail, &crashes);
    }
}
