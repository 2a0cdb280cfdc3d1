//! MCP servers as Plexus plugins.
//!
//! A plugin whose manifest says `[handler] kind = "mcp"` is one or more
//! Model Context Protocol servers, declared inline in the manifest or in the
//! Claude Code plugin's `.mcp.json`, reached over stdio (a child process) or
//! streamable HTTP with the official Rust SDK (`rmcp`). [`McpHandler`] keeps
//! each server connected and supervised, lists its tools, publishes them as
//! the plugin's commands (through [`CommandHandler::report`]), and runs each
//! `exec` as a tool call.
//!
//! [`CommandHandler::report`]: plexus_handler::CommandHandler::report

pub mod config;
pub mod handler;
pub mod output;

pub use config::{ConfigError, ServerConfig, Transport};
pub use handler::{McpHandler, McpOptions};
