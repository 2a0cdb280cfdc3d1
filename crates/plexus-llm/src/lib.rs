//! Language-model providers behind one trait.
//!
//! - [`Provider`]: start a streamed model turn, get [`StreamEvent`]s (text
//!   deltas, tool calls, usage, stop reason), the same for every API.
//!   [`HttpProvider`] speaks Anthropic Messages and OpenAI-compatible Chat
//!   Completions over SSE; the per-API decoders ([`anthropic`], [`openai`])
//!   are sans-IO and tested on recorded, broken and truncated streams.
//! - [`ProviderError`]: rate limited (with `retry-after`), overloaded,
//!   server error, timeout, unreachable, context too long, auth, bad
//!   request, bad response; each says whether it is retryable and whether
//!   it is the provider's fault.
//! - [`LlmConfig`] (the node's `[llm]` table) resolved with a plugin's
//!   `[llm]` override into a [`ProviderConfig`]; the key is read from the
//!   environment at use and held in an [`ApiKey`] that never prints.
//! - [`PriceTable`]: dollars per million tokens per model id, as data.

pub mod anthropic;
pub mod config;
pub mod decode;
pub mod error;
pub mod local;
pub mod openai;
pub mod price;
pub mod provider;
pub mod secret;
pub mod types;

pub use config::{parse_model_map, ConfigError, LlmConfig, ProviderConfig, KEY_ENV};
pub use error::{Endpoint, ProviderError};
pub use plexus_catalog::{LlmSpec, ModelTier, ProviderKind};
pub use price::{Cost, Price, PriceError, PriceTable};
pub use provider::{collect, until_cancelled, Completion, EventStream, HttpProvider, Provider};
pub use secret::ApiKey;
pub use tokio_util::sync::CancellationToken;
pub use types::{
    ChatRequest, Message, Part, Role, StopReason, StreamEvent, ToolCall, ToolChoice, ToolSpec,
    Usage,
};
