//! A fake executor for the runner and saga tests.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use plexus_workflow::{StepError, StepExecutor};
use serde_json::{json, Value};

/// What a command does.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Succeed with this output.
    Output(Value),
    /// Fail for good.
    Fail,
    /// Fail with a retryable error this many times, then succeed.
    Flaky(usize),
    /// Succeed after a delay.
    Delay(u64),
    /// Take effect, but lose the answer (an in-doubt error) on the first
    /// this many calls of a key.
    LostReply(usize),
    /// An in-doubt error with no effect this many times per key, then a
    /// definite failure.
    InDoubtThenFail(usize),
    /// Never delivered (its node is down): no effect, a retryable error.
    Unreachable,
}

/// One call as the executor saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub plugin: String,
    pub command: String,
    pub input: Value,
    pub key: String,
}

/// Records calls; commands behave as configured (default: echo, sim-style).
/// Effects are deduplicated by idempotency key: a second call with a key
/// that already took effect returns the first result and counts no effect.
#[derive(Default)]
pub struct Fake {
    pub behaviours: Mutex<HashMap<String, Behaviour>>,
    pub calls: Mutex<Vec<Call>>,
    /// Effects that happened, in order, by key.
    pub effects: Mutex<Vec<String>>,
    pub results: Mutex<HashMap<String, Value>>,
    flaky_seen: Mutex<HashMap<String, usize>>,
    /// Crash (never return) once this many effects have happened, either
    /// just before performing the next one or just after.
    pub crash: Mutex<Option<Crash>>,
    pub crashed: AtomicBool,
    pub notify: tokio::sync::Notify,
    pub calls_made: AtomicUsize,
    /// Keys of calls that returned success to the caller, in order.
    pub returned: Mutex<Vec<String>>,
}

#[derive(Clone, Copy, Debug)]
pub struct Crash {
    /// Crash at the call with this 0-based index.
    pub at_call: usize,
    /// Crash after the call's effect happened (else before).
    pub after_effect: bool,
}

impl Fake {
    pub fn new() -> Arc<Fake> {
        Arc::new(Fake::default())
    }

    pub fn set(&self, command: &str, b: Behaviour) {
        self.behaviours.lock().unwrap().insert(command.into(), b);
    }

    pub fn commands(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.command.clone())
            .collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.key.clone())
            .collect()
    }

    pub fn effects(&self) -> Vec<String> {
        self.effects.lock().unwrap().clone()
    }

    pub fn unique_effects(&self) -> bool {
        let e = self.effects();
        e.iter().collect::<HashSet<_>>().len() == e.len()
    }

    pub fn crash_at(&self, at_call: usize, after_effect: bool) {
        *self.crash.lock().unwrap() = Some(Crash {
            at_call,
            after_effect,
        });
        self.crashed.store(false, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls_made.load(Ordering::SeqCst)
    }

    /// How many times `key` has been called with a counting behaviour
    /// (this call included).
    fn seen(&self, key: &str) -> usize {
        let mut seen = self.flaky_seen.lock().unwrap();
        let k = seen.entry(key.to_string()).or_default();
        *k += 1;
        *k
    }

    pub fn no_crash(&self) {
        *self.crash.lock().unwrap() = None;
    }
}

/// The sim handler's output shape.
pub fn sim_output(plugin: &str, command: &str, input: &Value) -> Value {
    json!({
        "plugin": plugin,
        "command": command,
        "summary": format!("{command}: done"),
        "input": input,
        "digest": format!("{:x}", fxhash(&format!("{plugin}/{command}/{input}"))),
    })
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

impl StepExecutor for Fake {
    fn exec(
        &self,
        plugin: &str,
        command: &str,
        input: Value,
        key: String,
    ) -> BoxFuture<'_, Result<Value, StepError>> {
        let call_no = self.calls_made.fetch_add(1, Ordering::SeqCst);
        self.calls.lock().unwrap().push(Call {
            plugin: plugin.into(),
            command: command.into(),
            input: input.clone(),
            key: key.clone(),
        });
        let crash = *self.crash.lock().unwrap();
        let crash_now = crash.filter(|c| c.at_call == call_no);
        let behaviour = self.behaviours.lock().unwrap().get(command).cloned();
        let plugin = plugin.to_string();
        let command = command.to_string();
        Box::pin(async move {
            if let Some(c) = crash_now {
                if !c.after_effect {
                    self.crashed.store(true, Ordering::SeqCst);
                    self.notify.notify_one();
                    futures::future::pending::<()>().await;
                }
            }
            let res = match behaviour.clone() {
                Some(Behaviour::Fail) => Err(StepError::permanent(format!("{command} failed"))),
                Some(Behaviour::Flaky(n)) => {
                    if self.seen(&key) <= n {
                        Err(StepError::transient(format!("{command} flaked")))
                    } else {
                        Ok(sim_output(&plugin, &command, &input))
                    }
                }
                Some(Behaviour::Delay(ms)) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(sim_output(&plugin, &command, &input))
                }
                Some(Behaviour::Output(v)) => Ok(v),
                Some(Behaviour::LostReply(_)) | None => Ok(sim_output(&plugin, &command, &input)),
                Some(Behaviour::Unreachable) => {
                    Err(StepError::transient(format!("{command}: its node is down"))
                        .not_delivered())
                }
                Some(Behaviour::InDoubtThenFail(n)) => {
                    if self.seen(&key) <= n {
                        Err(StepError::in_doubt(format!("{command} timed out")))
                    } else {
                        Err(StepError::permanent(format!("{command} failed")))
                    }
                }
            };
            let res = match res {
                Ok(v) => {
                    // Dedupe by key: one effect per key.
                    let mut results = self.results.lock().unwrap();
                    if let Some(prev) = results.get(&key) {
                        Ok(prev.clone())
                    } else {
                        results.insert(key.clone(), v.clone());
                        self.effects.lock().unwrap().push(key.clone());
                        Ok(v)
                    }
                }
                Err(e) => Err(e),
            };
            if let (Some(Behaviour::LostReply(n)), Ok(_)) = (&behaviour, &res) {
                if self.seen(&key) <= *n {
                    return Err(StepError::in_doubt(format!("{command}: no answer")));
                }
            }
            if let Some(c) = crash_now {
                if c.after_effect {
                    self.crashed.store(true, Ordering::SeqCst);
                    self.notify.notify_one();
                    futures::future::pending::<()>().await;
                }
            }
            if res.is_ok() {
                self.returned.lock().unwrap().push(key.clone());
            }
            res
        })
    }
}
