//! The exec pipeline.
//!
//! One service, [`Exec`], runs a plugin command somewhere in the cluster
//! and answers [`Served`] or a [`Failure`] whose [`ExecError`] is typed: no
//! decision downstream reads a string or an HTTP status. Resilience is a
//! stack of layers around the node's transport, in the seed's order, all
//! under the call's one deadline:
//!
//! ```text
//! CacheDefault( Fallback( Retry( transport ) ) )
//!                                 └ host choice per try: up, available, breaker closed (host::choose)
//!                         └ the plugin's retry policy, for retryable errors of idempotent or keyed calls
//!               └ the call's fallback targets, in order, each with what is left of the deadline
//! └ the primary's last good answer (idempotent commands), else its manifest's defaultResult
//! ```
//!
//! Each layer is a plain struct over an inner `Exec`, unit-tested here on
//! a paused clock with a scripted inner service. `exec`, `ask`, workflow
//! steps and the simulation all call the node's one stack.

mod cache;
mod call;
mod error;
mod fallback;
pub mod host;
mod retry;

pub use cache::CacheDefault;
pub use call::{
    Attempt, ExecCall, HostFailure, HostPart, HostReply, Output, RawJson, Served, ServedBy, Target,
};
pub use error::{ExecError, Failure};
pub use fallback::Fallback;
pub use retry::Retry;

use std::time::Duration;

use futures::future::BoxFuture;

/// Runs one call: the transport, or a layer around another `Exec`.
pub trait Exec: Send + Sync {
    fn exec<'a>(&'a self, call: &'a ExecCall) -> BoxFuture<'a, Result<Served, Failure>>;
}

/// What the layers need to know about plugins (the node answers from its
/// catalog and the tools its handlers discovered).
pub trait Policies: Send + Sync {
    /// Whether `command` of `plugin` may run twice (retry and cache it
    /// without an idempotency key).
    fn idempotent(&self, plugin: &str, command: &str) -> bool;
    /// The wait before retry number `retry` (1-based, jittered), or `None`
    /// when the plugin's policy allows no more retries.
    fn retry_delay(&self, plugin: &str, retry: u32) -> Option<Duration>;
    /// The plugin's `errorHandling.defaultResult`, as JSON text.
    fn default_result(&self, plugin: &str) -> Option<RawJson>;
}
