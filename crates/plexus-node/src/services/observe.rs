//! A synchronous window into a node for the simulation harness.
//!
//! The harness checks invariants such as "no request reaches a plugin whose
//! breaker is open". Events on the bus arrive too late to order them against
//! each other, so the few places that matter call an [`Observer`] directly,
//! at the moment they happen. Production nodes have none.

/// Something that happened inside a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation<'a> {
    /// The plugin's breaker let a call through while in `state`, under
    /// `permit` (unique in the process).
    BreakerGrant {
        plugin: &'a str,
        state: &'static str,
        permit: u64,
    },
    /// The plugin's breaker refused a call while in `state`.
    BreakerRefused {
        plugin: &'a str,
        state: &'static str,
    },
    /// The plugin's breaker changed state.
    BreakerTransition {
        plugin: &'a str,
        from: &'static str,
        to: &'static str,
    },
    /// A request is handed to the plugin's handler now, under the breaker
    /// permit it holds (a call cannot be made without one).
    HandlerCall {
        plugin: &'a str,
        command: &'a str,
        permit: u64,
    },
}

/// Receives a node's [`Observation`]s, synchronously and in order.
pub trait Observer: Send + Sync + 'static {
    fn observe(&self, node: &str, what: Observation<'_>);
}
