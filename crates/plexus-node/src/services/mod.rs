//! What the request paths share, outside any actor: the directory snapshot,
//! routing and asking, effect logs, metrics, and the simulation's window.

pub mod agents;
pub mod ask;
pub mod directory;
pub mod effects;
pub mod exec;
pub mod lifecycle;
pub mod metrics;
pub mod observe;
pub mod tools;
