//! The fallback layer: the call's fallback targets, in order, each with
//! what is left of the one deadline.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::{Attempt, Exec, ExecCall, Failure, Served, ServedBy, Target};

/// Runs the call's target; when that fails in a way another plugin may not
/// (unavailable, breaker open, failed, timed out), runs each fallback in
/// order until one serves. A failure that would fail anywhere (bad input)
/// ends the call. Records every target tried in `attempts`.
pub struct Fallback<S> {
    inner: S,
}

impl<S: Exec> Fallback<S> {
    pub fn new(inner: S) -> Fallback<S> {
        Fallback { inner }
    }
}

fn attempt(target: &Target, r: &Result<Served, Failure>, took: Duration) -> Attempt {
    match r {
        Ok(s) => Attempt {
            target: target.clone(),
            node: Some(s.node.clone()),
            error: None,
            duration: took,
        },
        Err(f) => Attempt {
            target: target.clone(),
            node: f.error.node().map(str::to_string),
            error: Some(f.error.clone()),
            duration: took,
        },
    }
}

impl<S: Exec> Exec for Fallback<S> {
    fn exec<'a>(&'a self, call: &'a ExecCall) -> BoxFuture<'a, Result<Served, Failure>> {
        Box::pin(async move {
            let mut attempts = Vec::with_capacity(1 + call.fallbacks.len());
            let started = Instant::now();
            let r = self.inner.exec(call).await;
            attempts.push(attempt(&call.target, &r, started.elapsed()));
            let mut last = match r {
                Ok(mut s) => {
                    s.attempts = attempts;
                    return Ok(s);
                }
                Err(f) => f,
            };
            let mut in_doubt = last.in_doubt;
            for fb in &call.fallbacks {
                if !last.error.may_pass_elsewhere() || Instant::now() >= call.deadline {
                    break;
                }
                let next = ExecCall {
                    target: fb.clone(),
                    fallbacks: Vec::new(),
                    ..call.clone()
                };
                let started = Instant::now();
                let r = self.inner.exec(&next).await;
                attempts.push(attempt(fb, &r, started.elapsed()));
                match r {
                    Ok(mut s) => {
                        s.served_by = ServedBy::Fallback(fb.plugin.clone());
                        s.attempts = attempts;
                        return Ok(s);
                    }
                    Err(f) => {
                        in_doubt |= f.in_doubt;
                        last = f;
                    }
                }
            }
            last.in_doubt = in_doubt;
            last.attempts = attempts;
            Err(last)
        })
    }
}
