//! What the harness learns from inside the nodes (breaker decisions and
//! handler calls), checked for the `breaker_respected` invariant.

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;
use plexus_node::testkit::{Observation, Observer};

#[derive(Debug, Default, Clone)]
struct PerPlugin {
    grants: u64,
    refusals: u64,
    calls: u64,
    /// Calls whose permit this breaker never granted, or granted to an
    /// earlier call (each one is also a violation).
    unpermitted_calls: u64,
    /// Permits granted and not yet used by a handler call (a request the
    /// effect log answered, or one whose host crashed, never uses its own).
    unused: BTreeSet<u64>,
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
            Observation::BreakerGrant {
                plugin,
                state,
                permit,
            } => {
                let e = per.entry(key(plugin)).or_default();
                e.grants += 1;
                e.unused.insert(permit);
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
                permit,
            } => {
                // Each call must hold a permit this node's breaker of this
                // plugin granted, and no earlier call may have used it.
                let e = per.entry(key(plugin)).or_default();
                e.calls += 1;
                if !e.unused.remove(&permit) {
                    e.unpermitted_calls += 1;
                    self.violations.lock().push(format!(
                        "{node}: {plugin}/{command} reached the handler under permit {permit}, which its breaker did not grant or which an earlier call used ({} calls, {} permits)",
                        e.calls, e.grants
                    ));
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
    /// Handler calls without a permit of their own (must be 0).
    pub unpermitted_calls: u64,
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
            t.handler_calls += p.calls;
            t.unpermitted_calls += p.unpermitted_calls;
            t.opened += p.opened;
        }
        t
    }
}
