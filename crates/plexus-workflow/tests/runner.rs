//! The runner: conditions, jumps, transforms, templates, parallel groups with
//! timeouts, retries.
//!
//! Every test runs on a paused tokio clock: the fake executor's delays, the
//! runner's timeouts and retry backoff are tokio timers, so time jumps to the
//! next one when all tasks wait, and durations are exact, not raced against
//! a loaded machine.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use common::{Behaviour, Fake};
use plexus_workflow::{run, run_observed, RunReport, RunStatus, StepStatus, Workflow};
use serde_json::json;

fn wf(text: &str) -> Workflow {
    Workflow::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn status(r: &RunReport, id: &str) -> StepStatus {
    r.step(id).unwrap().status
}

const BRANCH: &str = r#"
[workflow]
name = "branch"
kind = "sequential"

[[steps]]
id = "classify"
plugin = "jira-orchestrator"
command = "triage"

[[steps]]
id = "ui"
plugin = "frontend-powerhouse"
command = "create-component"
when = "steps.classify.output.kind == 'ui'"

[[steps]]
id = "api"
plugin = "lobbi-platform-manager"
command = "service"
when = "steps.classify.output.kind == 'api'"

[[steps]]
id = "done"
plugin = "jira-orchestrator"
command = "notify"
when = "steps.ui.ok || steps.api.ok"
"#;

#[tokio::test(start_paused = true)]
async fn conditional_branch_taken_and_skipped() {
    let w = wf(BRANCH);
    for (kind, ran, skipped) in [("ui", "ui", "api"), ("api", "api", "ui")] {
        let fake = Fake::new();
        fake.set("triage", Behaviour::Output(json!({"kind": kind})));
        let r = run("r1", &w, json!({}), &fake).await;
        assert_eq!(r.status, RunStatus::Completed, "{r:?}");
        assert_eq!(status(&r, ran), StepStatus::Ok);
        assert_eq!(status(&r, skipped), StepStatus::Skipped);
        assert!(r
            .step(skipped)
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("condition false"));
        assert_eq!(status(&r, "done"), StepStatus::Ok);
        assert_eq!(fake.calls.lock().unwrap().len(), 3);
    }
    // Neither branch: the final step is skipped too.
    let fake = Fake::new();
    fake.set("triage", Behaviour::Output(json!({"kind": "docs"})));
    let r = run("r1", &w, json!({}), &fake).await;
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(fake.commands(), ["triage"]);
    assert_eq!(status(&r, "done"), StepStatus::Skipped);
}

const JUMP: &str = r#"
[workflow]
name = "jump"
kind = "sequential"

[[steps]]
id = "a"
plugin = "p"
command = "a"

[[steps]]
id = "b"
plugin = "p"
command = "b"
when = "input.go"
on_false = "d"

[[steps]]
id = "c"
plugin = "p"
command = "c"

[[steps]]
id = "d"
plugin = "p"
command = "d"
"#;

#[tokio::test(start_paused = true)]
async fn on_false_jumps_forward() {
    let w = wf(JUMP);
    let fake = Fake::new();
    let r = run("r", &w, json!({"go": false}), &fake).await;
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(fake.commands(), ["a", "d"]);
    assert_eq!(status(&r, "b"), StepStatus::Skipped);
    assert_eq!(status(&r, "c"), StepStatus::Skipped);
    assert!(r
        .step("c")
        .unwrap()
        .error
        .as_deref()
        .unwrap()
        .contains("jumped over"));
    let fake = Fake::new();
    let r = run("r", &w, json!({"go": true}), &fake).await;
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(fake.commands(), ["a", "b", "c", "d"]);
}

#[tokio::test(start_paused = true)]
async fn templates_and_transforms_feed_inputs() {
    let w = wf(r#"
[workflow]
name = "t"
kind = "sequential"

[[steps]]
id = "reserve"
plugin = "p"
command = "reserve"
input = { order = "{{input.order_id}}", qty = "{{input.qty}}" }

[steps.transform]
reservation = "{{output.reservation_id}}"
note = "from transform"

[[steps]]
id = "skipme"
plugin = "p"
command = "never"
when = "false"

[[steps]]
id = "charge"
plugin = "p"
command = "charge"
input = { order = "order-{{input.order_id}}", res = "{{steps.reserve.output.reservation_id}}", note = "own" }

[[steps]]
id = "ship"
plugin = "p"
command = "ship"
"#);
    let fake = Fake::new();
    fake.set(
        "reserve",
        Behaviour::Output(json!({"reservation_id": "r-9"})),
    );
    let r = run("run-7", &w, json!({"order_id": "o-1", "qty": 2}), &fake).await;
    assert_eq!(r.status, RunStatus::Completed, "{r:?}");
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls[0].input, json!({"order": "o-1", "qty": 2}));
    // The transform reaches the next step that runs (past the skipped one);
    // the step's own fields win.
    assert_eq!(
        calls[1].input,
        json!({"order": "order-o-1", "res": "r-9", "note": "own", "reservation": "r-9"})
    );
    // ... and only that one.
    assert_eq!(calls[2].input, json!({}));
    assert_eq!(calls[1].key, "run-7:charge");
}

#[tokio::test(start_paused = true)]
async fn missing_template_path_fails_the_step_naming_it() {
    let w = wf(r#"
[workflow]
name = "t"
kind = "sequential"

[[steps]]
id = "a"
plugin = "p"
command = "a"

[[steps]]
id = "b"
plugin = "p"
command = "b"
input = { x = "{{steps.a.output.nope}}" }

[[steps]]
id = "c"
plugin = "p"
command = "c"
"#);
    let fake = Fake::new();
    let r = run("r", &w, json!({}), &fake).await;
    assert_eq!(r.status, RunStatus::Failed);
    let e = r.step("b").unwrap().error.clone().unwrap();
    assert_eq!(
        e,
        "step \"b\": input.x: template {{steps.a.output.nope}}: steps.a.output has no field \"nope\""
    );
    assert!(r.error.as_deref().unwrap().contains("step \"b\" failed"));
    assert_eq!(status(&r, "c"), StepStatus::Pending);
    assert_eq!(fake.commands(), ["a"], "b never ran");
}

const GROUP: &str = r#"
[workflow]
name = "g"
kind = "sequential"

[groups.fan]
timeout_ms = 300

[[steps]]
id = "fast"
plugin = "p"
command = "fast"
parallel = "fan"

[[steps]]
id = "slow"
plugin = "p"
command = "slow"
parallel = "fan"

[[steps]]
id = "fast2"
plugin = "p"
command = "fast2"
parallel = "fan"

[[steps]]
id = "after"
plugin = "p"
command = "after"
"#;

#[tokio::test(start_paused = true)]
async fn parallel_group_times_out() {
    let w = wf(GROUP);
    let fake = Fake::new();
    fake.set("fast", Behaviour::Delay(50));
    fake.set("fast2", Behaviour::Delay(100));
    fake.set("slow", Behaviour::Delay(5_000));
    let t0 = Instant::now();
    let r = run("r", &w, json!({}), &fake).await;
    // The group's 300 ms, not the slow step's 5 s.
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    assert_eq!(status(&r, "fast"), StepStatus::Ok);
    assert_eq!(status(&r, "fast2"), StepStatus::Ok);
    assert_eq!(status(&r, "slow"), StepStatus::Failed);
    assert_eq!(
        r.step("slow").unwrap().error.as_deref(),
        Some("parallel group \"fan\" timed out after 300 ms")
    );
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(status(&r, "after"), StepStatus::Pending);
}

#[tokio::test(start_paused = true)]
async fn parallel_group_runs_concurrently() {
    let w = wf(GROUP);
    let fake = Fake::new();
    for c in ["fast", "slow", "fast2"] {
        fake.set(c, Behaviour::Delay(90));
    }
    let t0 = Instant::now();
    let r = run("r", &w, json!({}), &fake).await;
    assert_eq!(r.status, RunStatus::Completed, "{r:?}");
    // Side by side: 90 ms. One after the other would take 270 ms.
    assert_eq!(t0.elapsed(), Duration::from_millis(90));
    assert_eq!(fake.commands().last().unwrap(), "after");
}

#[tokio::test(start_paused = true)]
async fn parallel_kind_with_timeout_and_continue() {
    let w = wf(r#"
[workflow]
name = "all"
kind = "parallel"
timeout_ms = 200

[[steps]]
id = "a"
plugin = "p"
command = "a"

[[steps]]
id = "b"
plugin = "p"
command = "b"
on_error = "continue"
"#);
    let fake = Fake::new();
    fake.set("b", Behaviour::Delay(2_000));
    let r = run("r", &w, json!({}), &fake).await;
    assert_eq!(r.status, RunStatus::Completed, "b may fail: {r:?}");
    assert_eq!(status(&r, "a"), StepStatus::Ok);
    assert_eq!(status(&r, "b"), StepStatus::Failed);
    assert!(r
        .step("b")
        .unwrap()
        .error
        .as_deref()
        .unwrap()
        .contains("\"workflow\" timed out"));
}

#[tokio::test(start_paused = true)]
async fn on_error_continue_and_failed_condition() {
    let w = wf(r#"
[workflow]
name = "t"
kind = "sequential"

[[steps]]
id = "try"
plugin = "p"
command = "try"
on_error = "continue"

[[steps]]
id = "recover"
plugin = "p"
command = "recover"
when = "steps.try.failed"

[[steps]]
id = "celebrate"
plugin = "p"
command = "celebrate"
when = "steps.try.ok"
"#);
    let fake = Fake::new();
    fake.set("try", Behaviour::Fail);
    let r = run("r", &w, json!({}), &fake).await;
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(fake.commands(), ["try", "recover"]);
    assert_eq!(r.step("try").unwrap().error.as_deref(), Some("try failed"));
}

#[tokio::test(start_paused = true)]
async fn retries_reuse_the_key_and_stop_on_permanent_errors() {
    let w = wf(r#"
[workflow]
name = "t"
kind = "sequential"

[retry]
backoff = "linear"
initial_delay_ms = 5
max_delay_ms = 20

[[steps]]
id = "flaky"
plugin = "p"
command = "flaky"
max_attempts = 3

[[steps]]
id = "broken"
plugin = "p"
command = "broken"
max_attempts = 3
"#);
    let fake = Fake::new();
    fake.set("flaky", Behaviour::Flaky(2));
    fake.set("broken", Behaviour::Fail);
    let r = run("r", &w, json!({}), &fake).await;
    assert_eq!(r.step("flaky").unwrap().attempts, 3);
    assert_eq!(status(&r, "flaky"), StepStatus::Ok);
    assert_eq!(
        r.step("broken").unwrap().attempts,
        1,
        "permanent errors are not retried"
    );
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(fake.keys(), ["r:flaky", "r:flaky", "r:flaky", "r:broken"]);

    // Too flaky: attempts run out.
    let fake = Fake::new();
    fake.set("flaky", Behaviour::Flaky(5));
    let r = run("r", &w, json!({}), &fake).await;
    assert_eq!(r.step("flaky").unwrap().attempts, 3);
    assert_eq!(status(&r, "flaky"), StepStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn step_timeout_is_retryable() {
    let w = wf(r#"
[workflow]
name = "t"
kind = "sequential"

[retry]
initial_delay_ms = 1

[[steps]]
id = "s"
plugin = "p"
command = "s"
timeout_ms = 50
max_attempts = 2
"#);
    let fake = Fake::new();
    fake.set("s", Behaviour::Delay(1_000));
    let r = run("r", &w, json!({}), &fake).await;
    let s = r.step("s").unwrap();
    assert_eq!(s.status, StepStatus::Failed);
    assert_eq!(s.attempts, 2);
    assert_eq!(s.error.as_deref(), Some("timed out after 50 ms"));
}

#[tokio::test(start_paused = true)]
async fn observer_sees_progress_and_report_roundtrips() {
    let w = wf(JUMP);
    let fake = Fake::new();
    let seen: Arc<Mutex<Vec<RunReport>>> = Arc::default();
    let s2 = seen.clone();
    let r = run_observed(
        "obs",
        &w,
        json!({"go": true}),
        &fake,
        Some(Arc::new(move |r: &RunReport| {
            s2.lock().unwrap().push(r.clone())
        })),
    )
    .await;
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 5, "{}", seen.len());
    assert!(seen
        .iter()
        .any(|r| r.steps[0].status == StepStatus::Running));
    assert_eq!(seen.last().unwrap(), &r);
    let s = r.step("a").unwrap();
    assert!(s.started_ms.unwrap() <= s.finished_ms.unwrap());
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains(r#""status":"completed""#), "{json}");
    let back: RunReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}

#[tokio::test(start_paused = true)]
async fn example_workflows_run_against_a_sim_like_executor() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-config/workflows");
    let input = json!({
        "issue": "PLX-1", "kind": "ui", "component": "Card", "app": "portal",
        "url": "https://x.invalid", "service": "billing", "brand": "lobbi", "owner": "ana"
    });
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let w = Workflow::load(&path).unwrap();
        let fake = Fake::new();
        let r = run("ex", &w, input.clone(), &fake).await;
        assert_eq!(r.status, RunStatus::Completed, "{}: {r:#?}", path.display());
        assert!(
            r.steps.iter().all(|s| s.status == StepStatus::Ok),
            "{}: {r:#?}",
            path.display()
        );
    }
}

/// The node spawns these futures on tokio: they must be `Send + 'static`
/// given an owned executor.
#[test]
fn futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_static<T: 'static>(_: &T) {}
    let exec: Arc<dyn plexus_workflow::StepExecutor> = Fake::new();
    let w = wf(JUMP);
    let fut = async move { run("r", &w, json!({}), &exec).await };
    assert_send(&fut);
    assert_static(&fut);
    let dir = tempfile::tempdir().unwrap();
    let saga = Workflow::parse(
        "[workflow]\nname = \"s\"\nkind = \"saga\"\n[[steps]]\nid = \"a\"\nplugin = \"p\"\ncommand = \"c\"\ncompensate = { command = \"u\" }\n",
    )
    .unwrap();
    let exec: Arc<dyn plexus_workflow::StepExecutor> = Fake::new();
    let mut s = plexus_workflow::SagaRun::start("s", &saga, json!({}), dir.path(), exec).unwrap();
    let fut = async move { s.run().await };
    assert_send(&fut);
    assert_static(&fut);
}
