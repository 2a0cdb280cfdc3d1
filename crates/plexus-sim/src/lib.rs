//! Simulation harness for failure injection.
//!
//! Runs several **real** Plexus nodes (`plexus-node`'s supervised actor
//! trees: membership, gateway, bus, registry, state replicas, routers,
//! breakers, plugin hosts, saga runners) in one process, on a paused
//! single-threaded tokio runtime, over an in-memory network the harness
//! controls ([`net::SimNet`]). A scenario file ([`scenario::Scenario`])
//! names the nodes, the workload and the fault schedule; [`run::run`] plays
//! it from a seed and judges the invariants ([`check`]).
//!
//! The seam into the node is small: `plexus_node::testkit::ClusterLinks` (how
//! a node reaches peers), `plexus_node::testkit::Clock` (tokio's clock, so a
//! paused runtime drives breakers and timers; a skewable wall clock for
//! leases and expiry) and `plexus_node::testkit::Observer` (breaker and
//! handler events, in order). See docs/simulation.md.

pub mod catalog;
pub mod check;
pub mod net;
pub mod observe;
pub mod run;
pub mod scenario;
pub mod trace;

pub use run::{run, RunError, RunReport};
pub use scenario::{Invariant, Loaded, Scenario, ScenarioError};
