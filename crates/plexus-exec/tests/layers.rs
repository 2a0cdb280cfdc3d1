//! The layers on a paused clock, around a scripted transport.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use plexus_exec::{
    CacheDefault, Exec, ExecCall, ExecError, Failure, Fallback, Output, Policies, RawJson, Retry,
    Served, ServedBy, Target,
};
use plexus_handler::HandlerError;
use tokio::time::Instant;

/// One scripted try: it takes `after`, then answers (or the deadline comes
/// first, and the transport answers a timeout, as the node's does).
#[derive(Clone)]
struct Step {
    after: Duration,
    result: Result<(), ExecError>,
}

fn ok(ms: u64) -> Step {
    Step {
        after: Duration::from_millis(ms),
        result: Ok(()),
    }
}

fn err(ms: u64, e: ExecError) -> Step {
    Step {
        after: Duration::from_millis(ms),
        result: Err(e),
    }
}

fn failed(plugin: &str) -> ExecError {
    ExecError::Plugin {
        plugin: plugin.into(),
        node: "n1".into(),
        error: HandlerError::Failed("boom".into()),
        duration_ms: 1.0,
    }
}

fn unavailable(plugin: &str) -> ExecError {
    ExecError::Unavailable {
        plugin: plugin.into(),
        why: "its node n1 is down".into(),
    }
}

#[derive(Default)]
struct Script {
    steps: Mutex<HashMap<String, VecDeque<Step>>>,
    /// (plugin, virtual ms since start when the try began, ms left then)
    log: Mutex<Vec<(String, u64, u64)>>,
    start: Mutex<Option<Instant>>,
}

impl Script {
    fn new(steps: &[(&str, Vec<Step>)]) -> Arc<Script> {
        let s = Script::default();
        for (p, v) in steps {
            s.steps
                .lock()
                .insert(p.to_string(), v.iter().cloned().collect());
        }
        *s.start.lock() = Some(Instant::now());
        Arc::new(s)
    }

    fn tries(&self) -> Vec<(String, u64, u64)> {
        self.log.lock().clone()
    }
}

struct Transport(Arc<Script>);

impl Exec for Transport {
    fn exec<'a>(&'a self, call: &'a ExecCall) -> BoxFuture<'a, Result<Served, Failure>> {
        Box::pin(async move {
            let s = &self.0;
            let since = s.start.lock().unwrap().elapsed().as_millis() as u64;
            s.log.lock().push((
                call.target.plugin.clone(),
                since,
                call.left().as_millis() as u64,
            ));
            let step = s
                .steps
                .lock()
                .get_mut(&call.target.plugin)
                .and_then(|q| q.pop_front())
                .expect("an unscripted try");
            if step.after >= call.left() {
                tokio::time::sleep_until(call.deadline).await;
                return Err(ExecError::Timeout {
                    plugin: call.target.plugin.clone(),
                    budget_ms: call.budget.as_millis() as u64,
                }
                .into());
            }
            tokio::time::sleep(step.after).await;
            match step.result {
                Ok(()) => Ok(Served {
                    target: call.target.clone(),
                    node: "n1".into(),
                    duration_ms: step.after.as_millis() as f64,
                    output: Output {
                        output: RawJson::parse(format!("{{\"by\":\"{}\"}}", call.target.plugin))
                            .unwrap(),
                        model: None,
                        cost_usd: 0.0,
                        work_minutes: 0.0,
                        llm: None,
                    },
                    served_by: ServedBy::Primary,
                    retries: 0,
                    attempts: vec![],
                }),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Idempotent commands except `write`; 100 ms, 200 ms, ... backoff, three
/// retries; `p` declares a default result.
struct Pol;

impl Policies for Pol {
    fn idempotent(&self, _plugin: &str, command: &str) -> bool {
        command != "write"
    }
    fn retry_delay(&self, _plugin: &str, retry: u32) -> Option<Duration> {
        (retry <= 3).then(|| Duration::from_millis(100 * u64::from(retry)))
    }
    fn default_result(&self, plugin: &str) -> Option<RawJson> {
        (plugin == "p").then(|| RawJson::parse("{\"default\":true}").unwrap())
    }
}

fn call(plugin: &str, command: &str, budget_ms: u64, fallbacks: &[&str]) -> ExecCall {
    let mut c = ExecCall::new(
        Target::new(plugin, command),
        RawJson::empty_object(),
        Duration::from_millis(budget_ms),
    );
    c.fallbacks = fallbacks.iter().map(|f| Target::new(*f, command)).collect();
    c
}

type Stack = CacheDefault<Fallback<Retry<Transport>>>;

fn stack(s: &Arc<Script>) -> Stack {
    let pol: Arc<dyn Policies> = Arc::new(Pol);
    CacheDefault::new(
        Fallback::new(Retry::new(Transport(s.clone()), pol.clone())),
        pol,
        "here",
        16,
        Duration::from_secs(300),
    )
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_is_retried_after_the_policys_backoff() {
    let s = Script::new(&[("p", vec![err(10, failed("p")), ok(10)])]);
    let r = Retry::new(Transport(s.clone()), Arc::new(Pol))
        .exec(&call("p", "read", 5_000, &[]))
        .await
        .unwrap();
    assert_eq!((r.served_by, r.retries), (ServedBy::Retry(1), 1));
    // First try at 0, backoff 100 ms after its 10 ms.
    assert_eq!(s.tries().iter().map(|t| t.1).collect::<Vec<_>>(), [0, 110]);
}

#[tokio::test(start_paused = true)]
async fn an_unkeyed_write_is_not_retried_but_a_keyed_one_is() {
    let s = Script::new(&[("p", vec![err(10, failed("p"))])]);
    let f = Retry::new(Transport(s.clone()), Arc::new(Pol))
        .exec(&call("p", "write", 5_000, &[]))
        .await
        .unwrap_err();
    assert_eq!((f.retries, s.tries().len()), (0, 1));
    assert!(f.answered && !f.in_doubt);

    let s = Script::new(&[("p", vec![err(10, failed("p")), ok(10)])]);
    let mut c = call("p", "write", 5_000, &[]);
    c.idempotency_key = Some("k".into());
    let r = Retry::new(Transport(s), Arc::new(Pol))
        .exec(&c)
        .await
        .unwrap();
    assert_eq!(r.served_by, ServedBy::Retry(1));
}

#[tokio::test(start_paused = true)]
async fn a_retry_whose_backoff_does_not_fit_before_the_deadline_is_not_tried() {
    // 10 + 100 backoff fits in 150; the second backoff (200) does not.
    let s = Script::new(&[("p", vec![err(10, failed("p")), err(10, failed("p"))])]);
    let f = Retry::new(Transport(s.clone()), Arc::new(Pol))
        .exec(&call("p", "read", 150, &[]))
        .await
        .unwrap_err();
    assert_eq!((f.retries, s.tries().len()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_crash_is_never_retried() {
    let crashed = ExecError::Crashed {
        plugin: "p".into(),
        node: "n1".into(),
    };
    let s = Script::new(&[("p", vec![err(10, crashed)])]);
    let f = Retry::new(Transport(s.clone()), Arc::new(Pol))
        .exec(&call("p", "read", 5_000, &[]))
        .await
        .unwrap_err();
    assert_eq!(s.tries().len(), 1);
    assert!(matches!(f.error, ExecError::Crashed { .. }));
}

#[tokio::test(start_paused = true)]
async fn doubt_lasts_until_a_later_answer_settles_it() {
    // Timed out (may have run), then answered "failed": settled, not in doubt.
    let s = Script::new(&[("p", vec![err(6_000, failed("p")), err(10, failed("p"))])]);
    let mut c = call("p", "write", 1_000, &[]);
    c.idempotency_key = Some("k".into());
    // The first try times out at the deadline: nothing after it fits.
    let f = Retry::new(Transport(s.clone()), Arc::new(Pol))
        .exec(&c)
        .await
        .unwrap_err();
    assert!(matches!(f.error, ExecError::Timeout { .. }));
    assert!(f.in_doubt && !f.answered);

    let s = Script::new(&[(
        "p",
        vec![
            err(
                10,
                ExecError::NodeDown {
                    plugin: "p".into(),
                    node: "n1".into(),
                },
            ),
            err(10, failed("p")),
            err(10, failed("p")),
            err(10, failed("p")),
        ],
    )]);
    let mut c = call("p", "write", 5_000, &[]);
    c.idempotency_key = Some("k".into());
    let f = Retry::new(Transport(s), Arc::new(Pol)).exec(&c).await;
    // NodeDown is not retryable: the call stops there, in doubt.
    let f = f.unwrap_err();
    assert!(f.in_doubt && !f.answered);
}

#[tokio::test(start_paused = true)]
async fn each_fallback_gets_what_is_left_of_the_one_deadline() {
    // The primary fails after 600 ms of 1000; the fallback would take 1 s.
    let s = Script::new(&[
        ("p", vec![err(600, unavailable("p"))]),
        ("q", vec![ok(1_000)]),
    ]);
    let started = Instant::now();
    let f = Fallback::new(Transport(s.clone()))
        .exec(&call("p", "x", 1_000, &["q"]))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(1_000));
    assert!(matches!(f.error, ExecError::Timeout { .. }));
    let tries = s.tries();
    assert_eq!(tries[1], ("q".into(), 600, 400));
    assert_eq!(f.attempts.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_fallback_starts_after_the_deadline() {
    let s = Script::new(&[
        ("p", vec![err(5_000, unavailable("p"))]),
        ("q", vec![ok(1)]),
    ]);
    let f = Fallback::new(Transport(s.clone()))
        .exec(&call("p", "x", 1_000, &["q"]))
        .await
        .unwrap_err();
    assert_eq!(s.tries().len(), 1, "q was not tried: no time was left");
    assert!(f.in_doubt);
}

#[tokio::test(start_paused = true)]
async fn bad_input_fails_everywhere_so_no_fallback_runs() {
    let bad = ExecError::Plugin {
        plugin: "p".into(),
        node: "n1".into(),
        error: HandlerError::BadInput("no".into()),
        duration_ms: 1.0,
    };
    let s = Script::new(&[("p", vec![err(1, bad)]), ("q", vec![ok(1)])]);
    let f = Fallback::new(Transport(s.clone()))
        .exec(&call("p", "x", 1_000, &["q"]))
        .await
        .unwrap_err();
    assert_eq!(s.tries().len(), 1);
    assert!(!f.error.may_pass_elsewhere());
}

#[tokio::test(start_paused = true)]
async fn fallbacks_run_before_the_cache_or_the_default_and_say_so() {
    // A good answer of p is cached first.
    let s = Script::new(&[
        ("p", vec![ok(1), err(1, unavailable("p"))]),
        ("q", vec![ok(1)]),
    ]);
    let st = stack(&s);
    let c = call("p", "read", 1_000, &["q"]);
    assert_eq!(st.exec(&c).await.unwrap().served_by, ServedBy::Primary);
    // Now p is down: q serves, not p's cache nor p's default.
    let r = st.exec(&c).await.unwrap();
    assert_eq!(r.served_by, ServedBy::Fallback("q".into()));
    assert_eq!(r.target.plugin, "q");
    assert_eq!(r.output.output.as_str(), "{\"by\":\"q\"}");
    assert_eq!(r.attempts.len(), 2);
    assert!(r.attempts[0].error.is_some() && r.attempts[1].error.is_none());
}

#[tokio::test(start_paused = true)]
async fn when_everything_fails_the_cache_serves_then_the_default() {
    let s = Script::new(&[
        (
            "p",
            vec![ok(1), err(1, unavailable("p")), err(1, unavailable("p"))],
        ),
        (
            "q",
            vec![err(1, unavailable("q")), err(1, unavailable("q"))],
        ),
    ]);
    let st = stack(&s);
    st.exec(&call("p", "read", 1_000, &[])).await.unwrap();
    let r = st.exec(&call("p", "read", 1_000, &["q"])).await.unwrap();
    assert_eq!(r.served_by, ServedBy::Cache);
    assert_eq!(r.attempts.len(), 2);
    // A write is not cached: the default serves.
    let r = st.exec(&call("p", "write", 1_000, &["q"])).await.unwrap();
    assert_eq!(r.served_by, ServedBy::Default);
    assert_eq!(r.output.output.as_str(), "{\"default\":true}");
}

#[tokio::test(start_paused = true)]
async fn no_default_hides_a_command_that_may_have_run() {
    let s = Script::new(&[("p", vec![err(5_000, failed("p"))])]);
    let f = stack(&s)
        .exec(&call("p", "write", 1_000, &[]))
        .await
        .unwrap_err();
    assert!(f.in_doubt);
    assert!(matches!(f.error, ExecError::Timeout { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_fallbacks_answer_is_not_cached_as_the_primarys() {
    let s = Script::new(&[
        (
            "p",
            vec![err(1, unavailable("p")), err(1, unavailable("p"))],
        ),
        ("q", vec![ok(1), err(1, unavailable("q"))]),
        ("r", vec![err(1, unavailable("r"))]),
    ]);
    let st = stack(&s);
    let r = st.exec(&call("p", "read", 1_000, &["q"])).await.unwrap();
    assert_eq!(r.served_by, ServedBy::Fallback("q".into()));
    // Everything fails now: p's cache is empty, so p's default serves.
    let r = st.exec(&call("p", "read", 1_000, &["q"])).await.unwrap();
    assert_eq!(r.served_by, ServedBy::Default);
}

#[test]
fn raw_json_is_checked_once_and_kept_as_text() {
    assert!(RawJson::parse("{\"a\": [1, 2]}").is_ok());
    assert!(RawJson::parse("{\"a\": ").is_err());
    assert_eq!(
        RawJson::from_output("plain text".into()).as_str(),
        "\"plain text\""
    );
    assert_eq!(RawJson::from_output("[1]".into()).as_str(), "[1]");
    // It crosses the wire as a string, not re-encoded JSON.
    let bytes = plexus_codec::encode(&RawJson::parse("{\"k\":1}").unwrap()).unwrap();
    let back: RawJson = plexus_codec::decode(&bytes).unwrap();
    assert_eq!(back.as_str(), "{\"k\":1}");
}
