//! What the simulation harness (`plexus-sim`) and the benchmarks
//! (`plexus-bench`, `plexus bench`) reach inside a node for: in-process
//! links and clock, the actors' messages they drive, and the observer hook.
//! Not an API for plugins or clients; those speak HTTP (`plexus-api`).

pub use crate::actors::membership::MembershipMsg;
pub use crate::actors::state::{parse_consistency, ReadReq, StateMsg, WriteOp, WriteReq};
pub use crate::actors::workflows::WorkflowsMsg;
pub use crate::ctx::{LinkError, NodeCtx};
pub use crate::net::links::{Clock, ClusterLinks, LinkInbox};
pub use crate::services::observe::{Observation, Observer};
