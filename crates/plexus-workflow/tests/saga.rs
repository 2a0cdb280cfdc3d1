//! Sagas: reverse-order compensation, crash and resume with exactly-once
//! effects, torn journals, stuck compensations, listings.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use common::{Behaviour, Fake};
use plexus_workflow::{
    journal_path, journal_report, list_journals, FileJournal, RunReport, RunStatus, SagaError,
    SagaRun, StepStatus, Workflow,
};
use serde_json::json;

/// A saga of `n` steps: step i runs `do{i}` and compensates with `undo{i}`,
/// whose input comes from the step's result.
fn saga(n: usize) -> Workflow {
    let mut t = String::from(
        "[workflow]\nname = \"s\"\nkind = \"saga\"\n\n[retry]\ninitial_delay_ms = 1\nmax_delay_ms = 5\n\n[saga]\ncompensation_max_attempts = 3\n",
    );
    for i in 0..n {
        t.push_str(&format!(
            "\n[[steps]]\nid = \"s{i}\"\nplugin = \"p\"\ncommand = \"do{i}\"\ninput = {{ n = {i}, order = \"{{{{input.order}}}}\" }}\n\
             compensate = {{ command = \"undo{i}\", input = {{ n = \"{{{{result.input.n}}}}\", ref = \"{{{{result.digest}}}}\", order = \"{{{{input.order}}}}\" }} }}\n"
        ));
    }
    Workflow::parse(&t).unwrap_or_else(|e| panic!("{e}\n{t}"))
}

/// Starts saga `id` of `saga(n)` with input `{"order": order}` in `dir`.
fn start(dir: &Path, id: &str, n: usize, order: &str, fake: &Arc<Fake>) -> SagaRun<Arc<Fake>> {
    SagaRun::start(id, &saga(n), json!({ "order": order }), dir, fake.clone())
        .unwrap_or_else(|e| panic!("start {id}: {e}"))
}

fn statuses(r: &RunReport) -> Vec<StepStatus> {
    r.steps.iter().map(|s| s.status).collect()
}

#[tokio::test]
async fn third_step_failure_compensates_two_then_one() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    fake.set("do2", Behaviour::Fail);
    let mut run = start(dir.path(), "order-1", 4, "o-1", &fake);
    let r = run.run().await.unwrap();
    assert_eq!(fake.commands(), ["do0", "do1", "do2", "undo1", "undo0"]);
    assert_eq!(
        fake.keys(),
        [
            "order-1:0",
            "order-1:1",
            "order-1:2",
            "order-1:1:compensate",
            "order-1:0:compensate"
        ]
    );
    assert_eq!(r.status, RunStatus::Compensated);
    use StepStatus::*;
    assert_eq!(statuses(&r), [Compensated, Compensated, Failed, Pending]);
    assert_eq!(r.error.as_deref(), Some("step \"s2\" failed: do2 failed"));
    // Compensation input rendered from the step's recorded result.
    let calls = fake.calls.lock().unwrap().clone();
    let undo1 = &calls[3];
    let do1_out = r.steps[1].output.clone().unwrap();
    assert_eq!(
        undo1.input,
        json!({"n": 1, "ref": do1_out["digest"], "order": "o-1"})
    );
    // The journal says the same.
    let from_disk = journal_report(journal_path(dir.path(), "order-1")).unwrap();
    assert_eq!(from_disk.status, RunStatus::Compensated);
    assert_eq!(statuses(&from_disk), statuses(&r));
}

#[tokio::test]
async fn all_steps_complete() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    let mut run = start(dir.path(), "ok-1", 3, "o", &fake);
    let r = run.run().await.unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(fake.commands(), ["do0", "do1", "do2"]);
    assert!(r.finished_ms.is_some());
    // Resuming a finished saga does nothing.
    let mut again = SagaRun::resume(journal_path(dir.path(), "ok-1"), fake.clone()).unwrap();
    let r2 = again.run().await.unwrap();
    assert_eq!(r2.status, RunStatus::Completed);
    assert_eq!(fake.calls(), 3);
}

/// Runs until the fake crashes (then drops everything: `None`) or the saga
/// returns.
async fn run_or_crash(run: &mut SagaRun<Arc<Fake>>, fake: &Fake) -> Option<RunReport> {
    tokio::select! {
        r = run.run() => Some(r.unwrap()),
        _ = fake.notify.notified() => None,
    }
}

/// No key returned success to the saga twice: nothing the journal had
/// recorded was run again.
#[track_caller]
fn assert_returned_once(fake: &Fake) {
    let returned = fake.returned.lock().unwrap().clone();
    let mut seen = std::collections::HashSet::new();
    for k in &returned {
        assert!(seen.insert(k), "{k} returned twice: {returned:?}");
    }
}

fn effect_counts(fake: &Fake) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for k in fake.effects() {
        *m.entry(k).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn crash_after_step_two_effect_then_resume_completes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    // Call #1 is step 2's (index 1) effect: it happens, then the node dies
    // before the outcome is journaled.
    fake.crash_at(1, true);
    let mut run = start(dir.path(), "c-1", 4, "o", &fake);
    assert!(run_or_crash(&mut run, &fake).await.is_none(), "crashed");
    drop(run);
    let path = journal_path(dir.path(), "c-1");
    let listed = list_journals(dir.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status(), Some(RunStatus::Running));
    assert!(listed[0].needs_resume());

    fake.no_crash();
    let mut run = SagaRun::resume(&path, fake.clone()).unwrap();
    assert_eq!(
        run.report().steps[1].status,
        StepStatus::Running,
        "intent was journaled"
    );
    let r = run_or_crash(&mut run, &fake).await.unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    // Step 2 was re-sent with the same key; it took effect once.
    assert_eq!(fake.keys(), ["c-1:0", "c-1:1", "c-1:1", "c-1:2", "c-1:3"]);
    assert_eq!(fake.effects(), ["c-1:0", "c-1:1", "c-1:2", "c-1:3"]);
    assert!(effect_counts(&fake).values().all(|&n| n == 1));
    assert_returned_once(&fake);
    assert!(!list_journals(dir.path()).unwrap()[0].needs_resume());
}

#[tokio::test]
async fn crash_after_step_two_effect_then_resume_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    fake.set("do2", Behaviour::Fail);
    fake.crash_at(1, true);
    let mut run = start(dir.path(), "c-2", 4, "o", &fake);
    assert!(run_or_crash(&mut run, &fake).await.is_none());
    drop(run);
    fake.no_crash();
    let mut run = SagaRun::resume(journal_path(dir.path(), "c-2"), fake.clone()).unwrap();
    let r = run_or_crash(&mut run, &fake).await.unwrap();
    assert_eq!(r.status, RunStatus::Compensated);
    assert_eq!(
        fake.effects(),
        ["c-2:0", "c-2:1", "c-2:1:compensate", "c-2:0:compensate"]
    );
    assert_eq!(
        fake.keys(),
        [
            "c-2:0",
            "c-2:1",
            "c-2:1",
            "c-2:2",
            "c-2:1:compensate",
            "c-2:0:compensate"
        ]
    );
    assert_returned_once(&fake);
    assert_eq!(
        journal_report(journal_path(dir.path(), "c-2"))
            .unwrap()
            .status,
        RunStatus::Compensated
    );
}

#[test]
fn executor_panic_mid_saga_then_resume_in_a_new_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_path(dir.path(), "p-1");
    let fake = Fake::new();

    /// Panics right after step 2's effect: the "process" dies.
    struct PanicAfter(Arc<Fake>);
    impl plexus_workflow::StepExecutor for PanicAfter {
        fn exec(
            &self,
            plugin: &str,
            command: &str,
            input: serde_json::Value,
            key: String,
        ) -> futures::future::BoxFuture<'_, Result<serde_json::Value, plexus_workflow::StepError>>
        {
            let inner = self.0.exec(plugin, command, input, key);
            let boom = command == "do1";
            Box::pin(async move {
                let r = inner.await;
                if boom {
                    panic!("simulated crash after the effect");
                }
                r
            })
        }
    }

    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let wf = saga(3);
        let exec = PanicAfter(fake.clone());
        let dirp = dir.path().to_path_buf();
        let res = rt.block_on(async move {
            tokio::spawn(async move {
                let mut run =
                    SagaRun::start("p-1", &wf, json!({"order": "o"}), &dirp, exec).unwrap();
                run.run().await
            })
            .await
        });
        assert!(res.unwrap_err().is_panic());
    } // the runtime and everything in it is gone
    assert_eq!(fake.effects(), ["p-1:0", "p-1:1"]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async {
        let mut run = SagaRun::resume(&path, fake.clone()).unwrap();
        run.run().await.unwrap()
    });
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(fake.effects(), ["p-1:0", "p-1:1", "p-1:2"]);
    assert_eq!(fake.keys(), ["p-1:0", "p-1:1", "p-1:1", "p-1:2"]);
    assert_eq!(journal_report(&path).unwrap().status, RunStatus::Completed);
}

#[tokio::test]
async fn torn_last_journal_line_is_tolerated_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    // Crash after step 1's effect: StepStarted{1} is the last whole line.
    fake.crash_at(1, true);
    let mut run = start(dir.path(), "t-1", 3, "o", &fake);
    assert!(run_or_crash(&mut run, &fake).await.is_none());
    drop(run);
    let path = journal_path(dir.path(), "t-1");
    // The crash also tore the next line half-way.
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"t":"entry","atMs":1,"entry":{"stepCompleted":{"step":1,"res"#)
        .unwrap();
    drop(f);
    // Listing copes and leaves the file alone.
    assert_eq!(
        list_journals(dir.path()).unwrap()[0].status(),
        Some(RunStatus::Running)
    );
    fake.no_crash();
    let mut run = SagaRun::resume(&path, fake.clone()).unwrap();
    let r = run.run().await.unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(fake.effects(), ["t-1:0", "t-1:1", "t-1:2"]);
    // The journal is whole again.
    let j = FileJournal::open(&path).unwrap();
    assert!(!j.had_torn_tail());
    assert_eq!(j.entries().count(), 7); // 3 × (started, completed) + SagaCompleted
}

#[tokio::test]
async fn corrupt_middle_line_refuses_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    let mut run = start(dir.path(), "x-1", 2, "o", &fake);
    run.run().await.unwrap();
    let path = journal_path(dir.path(), "x-1");
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2] = "garbage".into();
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    let err = SagaRun::resume(&path, fake.clone()).err().unwrap();
    assert!(
        err.to_string()
            .contains("x-1.saga.jsonl:3: corrupt journal line"),
        "{err}"
    );
    let listed = list_journals(dir.path()).unwrap();
    assert!(listed[0].error.as_deref().unwrap().contains(":3: corrupt"));
    assert!(!listed[0].needs_resume());
}

#[tokio::test]
async fn invalid_history_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    let mut run = start(dir.path(), "h-1", 2, "o", &fake);
    run.run().await.unwrap();
    let path = journal_path(dir.path(), "h-1");
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // Line 4 is StepStarted{1}; make it claim step 0 was compensated.
    lines[3] = r#"{"t":"entry","atMs":1,"entry":{"compensated":{"step":0}}}"#.into();
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    match SagaRun::resume(&path, fake.clone()) {
        Err(SagaError::Replay { line, message, .. }) => {
            assert_eq!(line, 4);
            assert!(message.contains("not allowed here"), "{message}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("resumed an invalid journal"),
    }
}

#[tokio::test]
async fn stuck_compensation_is_reported_then_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    fake.set("do2", Behaviour::Fail);
    fake.set("undo1", Behaviour::Fail);
    let mut run = start(dir.path(), "k-1", 3, "o", &fake);
    let r = run.run().await.unwrap();
    assert_eq!(r.status, RunStatus::Stuck);
    assert_eq!(
        r.steps[1].compensation_attempts, 3,
        "compensation_max_attempts"
    );
    assert_eq!(r.steps[1].status, StepStatus::Compensating);
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("compensation of step \"s1\" failed 3 times"),
        "{r:?}"
    );
    assert_eq!(
        fake.commands(),
        ["do0", "do1", "do2", "undo1", "undo1", "undo1"]
    );
    drop(run);
    let listed = list_journals(dir.path()).unwrap();
    assert_eq!(listed[0].status(), Some(RunStatus::Stuck));
    assert!(listed[0].needs_resume());

    // The operator fixes the plugin; the resume finishes the rollback.
    fake.set("undo1", Behaviour::Output(json!({"undone": true})));
    let mut run = SagaRun::resume(journal_path(dir.path(), "k-1"), fake.clone()).unwrap();
    assert_eq!(run.report().status, RunStatus::Stuck);
    let r = run.run().await.unwrap();
    assert_eq!(r.status, RunStatus::Compensated);
    assert_eq!(
        fake.effects(),
        ["k-1:0", "k-1:1", "k-1:1:compensate", "k-1:0:compensate"]
    );
    assert_eq!(
        list_journals(dir.path()).unwrap()[0].status(),
        Some(RunStatus::Compensated)
    );
}

#[tokio::test]
async fn start_checks() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    let seq = Workflow::parse("[workflow]\nname = \"q\"\nkind = \"sequential\"\n[[steps]]\nid = \"a\"\nplugin = \"p\"\ncommand = \"c\"\n").unwrap();
    assert!(matches!(
        SagaRun::start("a", &seq, json!({}), dir.path(), fake.clone()),
        Err(SagaError::NotASaga { .. })
    ));
    for bad in ["", "../x", "a/b", ".hidden", "a b"] {
        assert!(
            matches!(
                SagaRun::start(bad, &saga(1), json!({}), dir.path(), fake.clone()),
                Err(SagaError::BadId(_))
            ),
            "{bad:?}"
        );
    }
    SagaRun::start("dup", &saga(1), json!({}), dir.path(), fake.clone()).unwrap();
    let e = SagaRun::start("dup", &saga(1), json!({}), dir.path(), fake.clone())
        .err()
        .unwrap();
    assert!(e.to_string().contains("already exists"), "{e}");
    // A never-run saga lists as running (it needs resuming).
    let l = list_journals(dir.path()).unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].saga_id.as_deref(), Some("dup"));
    assert!(l[0].needs_resume());
    assert!(list_journals(dir.path().join("none")).unwrap().is_empty());
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn in_memory_saga_via_run() {
    let fake = Fake::new();
    fake.set("do1", Behaviour::Fail);
    let r = plexus_workflow::run("m", &saga(3), json!({"order": "o"}), &*fake).await;
    assert_eq!(r.status, RunStatus::Compensated);
    assert_eq!(fake.commands(), ["do0", "do1", "undo0"]);
}

/// Drives a saga through crashes: `crashes` are (calls after the previous
/// (re)start, crash after the effect?, tear the journal's tail?).
async fn drive(
    dir: &Path,
    n: usize,
    fail_at: Option<usize>,
    crashes: &[(usize, bool, bool)],
) -> (RunReport, Arc<Fake>) {
    let fake = Fake::new();
    if let Some(k) = fail_at {
        fake.set(&format!("do{k}"), Behaviour::Fail);
    }
    let path = journal_path(dir, "prop");
    let mut rounds = crashes.iter();
    let mut first = true;
    loop {
        match rounds.next() {
            Some(&(k, after, _)) => fake.crash_at(fake.calls() + k, after),
            None => fake.no_crash(),
        }
        let mut run = if first {
            SagaRun::start("prop", &saga(n), json!({"order": "o"}), dir, fake.clone()).unwrap()
        } else {
            SagaRun::resume(&path, fake.clone()).unwrap()
        };
        first = false;
        match run_or_crash(&mut run, &fake).await {
            Some(r) => return (r, fake),
            None => {
                drop(run);
                let torn = crashes
                    .get(crashes.len() - rounds.len() - 1)
                    .is_some_and(|c| c.2);
                if torn {
                    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                    f.write_all(br#"{"t":"entry","atMs":1,"ent"#).unwrap();
                }
            }
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn resume_ends_completed_or_compensated_exactly_once(
            n in 1usize..5,
            fail in proptest::option::of(0usize..5),
            crashes in proptest::collection::vec((0usize..8, any::<bool>(), any::<bool>()), 0..3),
        ) {
            let fail_at = fail.filter(|&k| k < n);
            let dir = tempfile::tempdir().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (r, fake) = rt.block_on(drive(dir.path(), n, fail_at, &crashes));

            let fwd: Vec<String> = fake.effects().into_iter().filter(|k| !k.ends_with(":compensate")).collect();
            let comp: Vec<String> = fake.effects().into_iter().filter(|k| k.ends_with(":compensate")).collect();
            match fail_at {
                None => {
                    prop_assert_eq!(r.status, RunStatus::Completed);
                    prop_assert!(r.steps.iter().all(|s| s.status == StepStatus::Ok));
                    let want: Vec<String> = (0..n).map(|i| format!("prop:{i}")).collect();
                    prop_assert_eq!(fwd, want);
                    prop_assert!(comp.is_empty());
                }
                Some(k) => {
                    prop_assert_eq!(r.status, RunStatus::Compensated);
                    let want: Vec<String> = (0..k).map(|i| format!("prop:{i}")).collect();
                    prop_assert_eq!(fwd, want);
                    // Every completed step compensated, in reverse order.
                    let want: Vec<String> = (0..k).rev().map(|i| format!("prop:{i}:compensate")).collect();
                    prop_assert_eq!(comp, want);
                    for i in 0..k {
                        prop_assert_eq!(r.steps[i].status, StepStatus::Compensated);
                    }
                    prop_assert_eq!(r.steps[k].status, StepStatus::Failed);
                }
            }
            // Never compensated (nor run) twice: no key returned success
            // to the saga more than once.
            let mut seen = std::collections::HashSet::new();
            for key in fake.returned.lock().unwrap().iter() {
                prop_assert!(seen.insert(key.clone()), "{} returned twice", key);
            }
            // The journal on disk agrees.
            let disk = journal_report(journal_path(dir.path(), "prop")).unwrap();
            prop_assert_eq!(disk.status, r.status);
            prop_assert_eq!(statuses(&disk), statuses(&r));
        }
    }
}

/// The last step ran but its answer was lost (the simulation's
/// rolling-restart seed 19): the saga must re-send it with the same key and
/// complete, not compensate the steps before it and leave its effect.
#[tokio::test]
async fn step_in_doubt_is_resent_until_answered_not_compensated_around() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    fake.set("do2", Behaviour::LostReply(2));
    let mut run = start(dir.path(), "d-1", 3, "o", &fake);
    let r = run.run().await.unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{r:?}");
    assert_eq!(fake.effects(), ["d-1:0", "d-1:1", "d-1:2"]);
    assert_eq!(fake.keys(), ["d-1:0", "d-1:1", "d-1:2", "d-1:2", "d-1:2"]);
    assert!(r.steps[2].error.is_none(), "{r:?}");
}

/// In doubt, then a definite answer that it failed: nothing of the step
/// to undo, so the saga compensates the steps before it.
#[tokio::test]
async fn step_in_doubt_then_answered_failure_compensates_earlier_steps() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    fake.set("do2", Behaviour::InDoubtThenFail(1));
    let mut run = start(dir.path(), "d-2", 3, "o", &fake);
    let r = run.run().await.unwrap();
    assert_eq!(r.status, RunStatus::Compensated, "{r:?}");
    assert_eq!(
        fake.effects(),
        ["d-2:0", "d-2:1", "d-2:1:compensate", "d-2:0:compensate"]
    );
    assert_eq!(
        fake.commands(),
        ["do0", "do1", "do2", "do2", "undo1", "undo0"]
    );
}

/// Still in doubt after the budget: the saga is stuck on that step (not
/// compensated); the journal says so, and a resume re-sends the step.
#[tokio::test]
async fn step_in_doubt_past_the_budget_is_stuck_then_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    fake.set("do1", Behaviour::LostReply(100));
    let mut run = start(dir.path(), "d-3", 3, "o", &fake);
    let r = run.run().await.unwrap();
    assert_eq!(r.status, RunStatus::Stuck, "{r:?}");
    let err = r.error.clone().unwrap_or_default();
    assert!(err.contains("step \"s1\" is in doubt"), "{err}");
    // compensation_max_attempts (3) tries in all.
    assert_eq!(fake.commands(), ["do0", "do1", "do1", "do1"]);
    assert_eq!(fake.effects(), ["d-3:0", "d-3:1"], "no compensation ran");
    drop(run);
    let listed = list_journals(dir.path()).unwrap();
    assert_eq!(listed[0].status(), Some(RunStatus::Stuck));
    assert!(listed[0].needs_resume());
    let replayed = listed[0].report.clone().unwrap();
    assert!(
        replayed.error.unwrap_or_default().contains("in doubt"),
        "the journal keeps why it is stuck"
    );

    // The answers come back: the resume re-sends step 1 and completes.
    fake.set("do1", Behaviour::LostReply(0));
    let mut run = SagaRun::resume(journal_path(dir.path(), "d-3"), fake.clone()).unwrap();
    let r = run.run().await.unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{r:?}");
    assert_eq!(fake.effects(), ["d-3:0", "d-3:1", "d-3:2"]);
}

/// The saga's node crashed after step 1 ran and before its answer was
/// journaled; on resume, step 1's node is unreachable. "Not delivered" now
/// says nothing about the try before the crash, so the step stays in doubt:
/// the saga is stuck, not compensated around it (docker_kill found this).
#[tokio::test]
async fn step_started_before_a_crash_stays_in_doubt_while_its_node_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    fake.crash_at(1, true);
    let mut run = start(dir.path(), "d-4", 3, "o", &fake);
    assert!(run_or_crash(&mut run, &fake).await.is_none(), "crashed");
    drop(run);

    fake.no_crash();
    fake.set("do1", Behaviour::Unreachable);
    let path = journal_path(dir.path(), "d-4");
    let mut run = SagaRun::resume(&path, fake.clone()).unwrap();
    let r = run_or_crash(&mut run, &fake).await.unwrap();
    assert_eq!(r.status, RunStatus::Stuck, "{r:?}");
    assert_eq!(r.steps[1].status, StepStatus::Running, "{r:?}");
    assert!(
        r.error.clone().unwrap_or_default().contains("in doubt"),
        "{r:?}"
    );
    assert_eq!(fake.effects(), ["d-4:0", "d-4:1"], "nothing compensated");
    drop(run);

    // Its node is back: the resume re-sends step 1 (answered from the
    // effect log) and completes, each effect once.
    fake.set("do1", Behaviour::LostReply(0));
    let mut run = SagaRun::resume(&path, fake.clone()).unwrap();
    let r = run_or_crash(&mut run, &fake).await.unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{r:?}");
    assert_eq!(fake.effects(), ["d-4:0", "d-4:1", "d-4:2"]);
    assert_returned_once(&fake);
}
