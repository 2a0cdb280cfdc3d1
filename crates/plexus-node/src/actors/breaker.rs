//! The Breaker actor: one per hosted plugin, a thin shell around
//! `plexus_resilience::CircuitBreaker` configured from the plugin's manifest
//! (`errorHandling.circuitBreaker`).
//!
//! It lives next to the plugin host on the hosting node, so it sees every
//! call to the plugin from anywhere in the cluster. Its state travels in the
//! node's announce (`plexus status`, the routers on every node) and each
//! transition is published on `system/health`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus_bus::{Envelope, MessageKind};
use plexus_catalog::Plugin;
use plexus_resilience::{BreakerSnapshot, BreakerState, CircuitBreaker, Permit, Transition};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use crate::actors::registry::RegistryMsg;
use crate::ctx::NodeCtx;
use crate::services::observe::Observation;

/// Why a call was refused.
#[derive(Debug, Clone)]
pub struct Refused {
    pub state: BreakerState,
    pub retry_after: Option<Duration>,
}

/// How a permitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Success,
    /// The plugin's fault (failed, timed out, crashed).
    Failure,
    /// Not the plugin's fault (bad input, unknown command): not counted.
    Ignored,
}

#[derive(RactorMessage)]
pub enum BreakerMsg {
    /// Ask to make one call; the answer is a permit id.
    Acquire(RpcReplyPort<Result<u64, Refused>>),
    /// Report a permitted call's outcome.
    Report {
        permit: u64,
        result: CallResult,
        duration: Duration,
    },
    Snapshot(RpcReplyPort<BreakerSnapshot>),
    /// Publish Open → HalfOpen promptly.
    Tick,
}

pub struct BreakerArgs {
    pub ctx: Arc<NodeCtx>,
    pub plugin: Arc<Plugin>,
}

pub struct BreakerActorState {
    ctx: Arc<NodeCtx>,
    plugin: String,
    breaker: CircuitBreaker,
    permits: HashMap<u64, Permit>,
}

/// Permit ids are unique in the process, not per breaker: a report of a
/// permit granted before a breaker restarted cannot settle a new permit of
/// the restarted one, and the simulation can match each handler call to
/// the grant it holds.
static NEXT_PERMIT: AtomicU64 = AtomicU64::new(1);

pub struct BreakerActor;

impl Actor for BreakerActor {
    type Msg = BreakerMsg;
    type State = BreakerActorState;
    type Arguments = BreakerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        a: BreakerArgs,
    ) -> Result<BreakerActorState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(200), || BreakerMsg::Tick);
        let st = BreakerActorState {
            breaker: CircuitBreaker::from_spec(&a.plugin.manifest.error_handling.circuit_breaker),
            plugin: a.plugin.name.clone(),
            ctx: a.ctx,
            permits: HashMap::new(),
        };
        report(&st);
        Ok(st)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: BreakerMsg,
        st: &mut BreakerActorState,
    ) -> Result<(), ActorProcessingErr> {
        let now = crate::net::links::now();
        match msg {
            BreakerMsg::Acquire(reply) => match st.breaker.try_acquire(now) {
                Ok(p) => {
                    if let Some(t) = p.transition() {
                        on_transition(st, t);
                    }
                    let id = NEXT_PERMIT.fetch_add(1, Ordering::Relaxed);
                    observe(st, |plugin, state| Observation::BreakerGrant {
                        plugin,
                        state,
                        permit: id,
                    });
                    st.permits.insert(id, p);
                    let _ = reply.send(Ok(id));
                }
                Err(r) => {
                    if let Some(t) = r.transition {
                        on_transition(st, t);
                    }
                    observe(st, |plugin, state| Observation::BreakerRefused {
                        plugin,
                        state,
                    });
                    let _ = reply.send(Err(Refused {
                        state: r.state,
                        retry_after: r.retry_after,
                    }));
                }
            },
            BreakerMsg::Report {
                permit,
                result,
                duration,
            } => {
                if let Some(p) = st.permits.remove(&permit) {
                    let t = match result {
                        CallResult::Success => st.breaker.on_success(p, now, duration),
                        CallResult::Failure => st.breaker.on_failure(p, now, duration),
                        CallResult::Ignored => {
                            st.breaker.release(p);
                            None
                        }
                    };
                    if let Some(t) = t {
                        on_transition(st, t);
                    }
                }
            }
            BreakerMsg::Snapshot(reply) => {
                let _ = reply.send(st.breaker.snapshot(now));
            }
            BreakerMsg::Tick => {
                if let Some(t) = st.breaker.poll(now) {
                    on_transition(st, t);
                }
                // Permits of calls that never reported (host crashed) expire
                // with the breaker's own half-open timeout; drop their ids.
                if st.permits.len() > 10_000 {
                    st.permits.clear();
                }
            }
        }
        Ok(())
    }
}

/// The state name used in status and events.
pub fn state_name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
        BreakerState::ForcedOpen => "forced-open",
    }
}

fn report(st: &BreakerActorState) {
    st.ctx.actors.registry.cast(RegistryMsg::LocalBreaker {
        plugin: st.plugin.clone(),
        state: state_name(st.breaker.state()).to_string(),
    });
}

/// Tell the simulation harness (if any) what the breaker just decided.
fn observe(
    st: &BreakerActorState,
    what: impl for<'a> FnOnce(&'a str, &'static str) -> Observation<'a>,
) {
    if let Some(o) = &st.ctx.observer {
        o.observe(
            st.ctx.name(),
            what(&st.plugin, state_name(st.breaker.state())),
        );
    }
}

fn on_transition(st: &BreakerActorState, t: Transition) {
    if let Some(o) = &st.ctx.observer {
        o.observe(
            st.ctx.name(),
            Observation::BreakerTransition {
                plugin: &st.plugin,
                from: state_name(t.from),
                to: state_name(t.to),
            },
        );
    }
    st.ctx
        .metrics
        .breaker_transition(&st.plugin, state_name(t.from), state_name(t.to));
    tracing::warn!(plugin = %st.plugin, from = state_name(t.from), to = state_name(t.to), reason = ?t.reason, "circuit breaker transition");
    let ev = serde_json::json!({
        "node": st.ctx.name(),
        "plugin": st.plugin,
        "breaker": state_name(t.to),
        "from": state_name(t.from),
        "reason": t.reason,
    });
    let _ = st.ctx.bus.publish(Envelope::new(
        MessageKind::Event,
        "system/health",
        st.ctx.name(),
        ev.to_string().into_bytes(),
    ));
    report(st);
}
