//! The client API (HTTP + JSON): routes, auth, tracing, the dashboard and
//! the OpenAPI document. Typed errors become problem documents here only.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod openapi;
pub mod problem;
pub mod serve;
pub mod sse;
pub mod state;
pub mod tokens;
pub mod trace;
