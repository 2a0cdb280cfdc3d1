//! The retry layer: the plugin's retry policy, within the call's deadline.

use std::sync::Arc;

use futures::future::BoxFuture;
use plexus_resilience::RetryPolicy;
use tokio::time::Instant;

use crate::{Exec, ExecCall, Failure, Policies, Served, ServedBy};

/// Retries retryable failures (a failed or timed-out handler, no answer in
/// time) of idempotent commands and of keyed calls, with the plugin's
/// backoff. A retry runs only if its backoff fits before the deadline.
/// A crash is never retried: the request may be the poison.
pub struct Retry<S> {
    inner: S,
    policies: Arc<dyn Policies>,
}

impl<S: Exec> Retry<S> {
    pub fn new(inner: S, policies: Arc<dyn Policies>) -> Retry<S> {
        Retry { inner, policies }
    }
}

impl<S: Exec> Exec for Retry<S> {
    fn exec<'a>(&'a self, call: &'a ExecCall) -> BoxFuture<'a, Result<Served, Failure>> {
        Box::pin(async move {
            let t = &call.target;
            let idempotent = self.policies.idempotent(&t.plugin, &t.command);
            let mut retries = 0u32;
            // Set by a try that may have run; cleared by a later answer,
            // which (same idempotency key) tells what happened.
            let mut doubt = false;
            // Set by a try the plugin's host answered; cleared by a later doubt.
            let mut answered = false;
            loop {
                match self.inner.exec(call).await {
                    Ok(mut s) => {
                        s.retries = retries;
                        s.served_by = if retries == 0 {
                            ServedBy::Primary
                        } else {
                            ServedBy::Retry(retries)
                        };
                        return Ok(s);
                    }
                    Err(mut f) => {
                        if f.error.leaves_doubt() || f.in_doubt {
                            doubt = true;
                            answered = false;
                        } else if f.error.answered_by_handler() {
                            doubt = false;
                            answered = true;
                        }
                        f.in_doubt = doubt;
                        f.answered = answered;
                        f.retries = retries;
                        let may = RetryPolicy::should_retry(
                            idempotent,
                            call.idempotency_key.is_some(),
                            f.error.retryable(),
                        );
                        let delay = may
                            .then(|| self.policies.retry_delay(&t.plugin, retries + 1))
                            .flatten()
                            // A retry needs time for its backoff and its own try.
                            .filter(|d| Instant::now() + *d < call.deadline);
                        let Some(d) = delay else { return Err(f) };
                        retries += 1;
                        tracing::debug!(target = %t, retries, delay_ms = d.as_millis() as u64, error = %f.error, "retrying");
                        tokio::time::sleep(d).await;
                    }
                }
            }
        })
    }
}
