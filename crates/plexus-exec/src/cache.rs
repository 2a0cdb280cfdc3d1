//! The last layer: the target's last good answer, else its default result.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use plexus_resilience::ResultCache;

use crate::{Exec, ExecCall, Failure, Output, Policies, Served, ServedBy};

/// Keeps the last good answer of each idempotent `(plugin, command,
/// input)` served by its own plugin (primary or retry), and serves it when
/// everything below failed in a way that is not the caller's fault; else
/// the plugin's declared default result, unless the command may have run
/// (a stand-in answer would hide that).
pub struct CacheDefault<S> {
    inner: S,
    policies: Arc<dyn Policies>,
    cache: Mutex<ResultCache<String, (String, Output)>>,
    /// Named as the node that served a default.
    node: String,
}

impl<S: Exec> CacheDefault<S> {
    pub fn new(
        inner: S,
        policies: Arc<dyn Policies>,
        node: impl Into<String>,
        capacity: usize,
        ttl: Duration,
    ) -> CacheDefault<S> {
        CacheDefault {
            inner,
            policies,
            cache: Mutex::new(ResultCache::new(capacity, ttl)),
            node: node.into(),
        }
    }
}

fn key(call: &ExecCall) -> String {
    let t = &call.target;
    format!("{}\u{0}{}\u{0}{}", t.plugin, t.command, call.input)
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl<S: Exec> Exec for CacheDefault<S> {
    fn exec<'a>(&'a self, call: &'a ExecCall) -> BoxFuture<'a, Result<Served, Failure>> {
        Box::pin(async move {
            let t = &call.target;
            let idempotent = self.policies.idempotent(&t.plugin, &t.command);
            match self.inner.exec(call).await {
                Ok(s) => {
                    let own = matches!(s.served_by, ServedBy::Primary | ServedBy::Retry(_));
                    if idempotent && own {
                        self.cache.lock().insert(
                            key(call),
                            (s.node.clone(), s.output.clone()),
                            now(),
                        );
                    }
                    Ok(s)
                }
                Err(f) if f.error.may_pass_elsewhere() => {
                    let cached = if idempotent {
                        self.cache.lock().get(&key(call), now()).cloned()
                    } else {
                        None
                    };
                    if let Some((node, output)) = cached {
                        return Ok(Served {
                            target: t.clone(),
                            node,
                            duration_ms: 0.0,
                            output,
                            served_by: ServedBy::Cache,
                            retries: f.retries,
                            attempts: f.attempts,
                        });
                    }
                    match self.policies.default_result(&t.plugin) {
                        Some(d) if !f.in_doubt => Ok(Served {
                            target: t.clone(),
                            node: self.node.clone(),
                            duration_ms: 0.0,
                            output: Output {
                                output: d,
                                model: None,
                                cost_usd: 0.0,
                                work_minutes: 0.0,
                                llm: None,
                            },
                            served_by: ServedBy::Default,
                            retries: f.retries,
                            attempts: f.attempts,
                        }),
                        _ => Err(f),
                    }
                }
                Err(f) => Err(f),
            }
        })
    }
}
