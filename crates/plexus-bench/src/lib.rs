//! Cluster benchmarks for Plexus, side by side with NATS.
//!
//! The `plexus bench` command starts the cluster (node processes, peer
//! processes, nats-server) and calls the workloads here in turn; each
//! returns counts and an HDR latency histogram that [`report`] turns into
//! rows, Plexus/NATS ratios and the table. See docs/benchmarks.md for what
//! each workload measures and why it is built that way.

pub mod catalog;
pub mod cluster;
pub mod embedded;
pub mod hist;
pub mod inproc;
pub mod messaging;
pub mod nats;
pub mod peer;
pub mod report;

pub use hist::{Latency, Summary};
pub use report::{Comparison, Machine, Report, Row};
