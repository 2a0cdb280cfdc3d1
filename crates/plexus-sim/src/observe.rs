//! What the harness learns from inside the nodes (breaker decisions and
//! handler calls), checked for the `breaker_respected` invariant.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use plexus_node::observe::{Observation, Observer};

#[derive(Debug, Default, Clone)]
struct PerPlugin {
    grants: u64,
    refusals: u64,
    guarded_calls: u64,
    unguarded_calls: u64,
    opened: u64,
    state: &'static str,
}

/// Collects observations of every node.
#[derive(Default)]
pub struct Observations {
    per: Mutex<BTreeMap<(String, String), PerPlugin>>,
    violations: Mutex<Vec<String>>,
}

impl Observer for Observations {
    fn observe(&self, node: &str, what: Observation<'_>) {
        let mut per = self.per.lock();
        let key = |p: &str| (node.to_string(), p.to_string());
        match what {
            Observation::BreakerGrant { plugin, state } => {
                let e = per.entry(key(plugin)).or_default();
                e.grants += 1;
                if state == "open" || state == "forced-open" {
                    self.violations.lock().push(format!(
                        "{node}: the breaker of {plugin} granted a call while {state}"
                    ));
                }
            }
            Observation::BreakerRefused { plugin, .. } => {
                per.entry(key(plugin)).or_default().refusals += 1;
            }
            Observation::BreakerTransition { plugin, to, .. } => {
                let e = per.entry(key(plugin)).or_default();
                e.state = to;
                if to == "open" {
                    e.opened += 1;
                }
            }
            Observation::HandlerCall {
                plugin,
                command,
                guarded,
            } => {
                let e = per.entry(key(plugin)).or_default();
                if guarded {
                    e.guarded_calls += 1;
                    if e.guarded_calls > e.grants {
                        self.violations.lock().push(format!(
                            "{node}: {plugin}/{command} reached the handler without a breaker permit ({} calls, {} permits)",
                            e.guarded_calls, e.grants
                        ));
                    }
                } else {
                    e.unguarded_calls += 1;
                }
            }
        }
    }
}

/// Totals over all nodes and plugins.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BreakerTotals {
    pub permits: u64,
    pub refusals: u64,
    pub handler_calls: u64,
    /// Calls made while the breaker actor was restarting (no permit asked).
    pub unguarded_calls: u64,
    pub opened: u64,
}

impl Observations {
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().clone()
    }

    pub fn totals(&self) -> BreakerTotals {
        let per = self.per.lock();
        let mut t = BreakerTotals::default();
        for p in per.values() {
            t.permits += p.grants;
            t.refusals += p.refusals;
            t.handler_calls += p.guarded_calls + p.unguarded_calls;
            t.unguarded_calls += p.unguarded_calls;
            t.opened += p.opened;
        }
        t
    }
}
