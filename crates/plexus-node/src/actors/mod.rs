//! The node's supervised actor tree (see [`supervisor`]): each actor is a
//! thin shell that owns one plain struct and moves messages.

pub mod breaker;
pub mod membership;
pub mod plugins;
pub mod registry;
pub mod router;
pub mod state;
pub mod supervisor;
pub mod workflows;
