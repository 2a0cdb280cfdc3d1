//! Pure resilience cores for Plexus.
//!
//! Nothing here performs I/O, spawns, sleeps or reads a clock: every method
//! that depends on time takes `now`, and randomness comes from an injected
//! [`rand::Rng`]. An actor owns these structs and turns messages and timers
//! into calls; the simulation harness drives the very same structs under a
//! seeded clock.
//!
//! The error-handling order of a plugin call (DESIGN.md) maps onto the
//! modules like this:
//!
//! 1. [`breaker::CircuitBreaker`] — may the call be made at all?
//! 2. [`retry::RetryPolicy`] — how long to wait before retrying, and whether
//!    the command may be retried ([`retry::RetryPolicy::should_retry`]).
//! 3. [`degradation::Degradation`] — which fallback plugins to try, in order,
//!    skipping those whose breaker is open; then
//! 4. [`cache::ResultCache`] or the default result. The result records which
//!    path served it as a [`degradation::ServedBy`].
//!
//! Alongside: [`restart::RestartIntensity`] (OTP-style "at most N restarts in
//! T") for supervisors, and [`saga::SagaJournal`], the write-ahead state
//! machine behind saga chains.

pub mod breaker;
pub mod cache;
pub mod degradation;
pub mod restart;
pub mod retry;
pub mod saga;

pub use breaker::{
    BreakerConfig, BreakerSnapshot, BreakerState, CircuitBreaker, Permit, Rejected, SlidingWindow,
    Transition, TransitionReason,
};
pub use cache::ResultCache;
pub use degradation::{Degradation, Plan, PlanStep, ServedBy};
pub use restart::{Decision, RestartIntensity};
pub use retry::{Backoff, RetryPolicy};
pub use saga::{SagaAction, SagaEntry, SagaJournal, SagaOutcome, SagaStatus};
