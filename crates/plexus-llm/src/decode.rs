//! Sans-IO decoders: one SSE event in, provider-neutral [`StreamEvent`]s
//! out. No sockets or clocks, so tests feed them recorded streams,
//! garbage and truncations directly.

use crate::error::{Endpoint, ProviderError};
use crate::types::StreamEvent;

/// Turns one provider's SSE events into [`StreamEvent`]s.
pub trait Decoder: Send {
    /// One SSE event: its `event:` name (if any) and its `data:`.
    fn feed(&mut self, event: Option<&str>, data: &str) -> Result<Vec<StreamEvent>, ProviderError>;
    /// Whether the turn is complete (the stream may end now).
    fn done(&self) -> bool;
    /// The stream ended. A turn that is not complete is truncated.
    fn finish(&mut self) -> Result<Vec<StreamEvent>, ProviderError> {
        if self.done() {
            Ok(vec![])
        } else {
            Err(self.truncated())
        }
    }
    /// The error for a stream that ended early.
    fn truncated(&self) -> ProviderError;
}

pub(crate) fn bad(endpoint: &Endpoint, message: impl Into<String>) -> ProviderError {
    ProviderError::BadResponse {
        endpoint: endpoint.clone(),
        message: message.into(),
    }
}

/// Parse an event's data as JSON, or say which event was not.
pub(crate) fn json(
    endpoint: &Endpoint,
    what: &str,
    data: &str,
) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_str(data).map_err(|e| {
        bad(
            endpoint,
            format!(
                "{what} is not JSON ({e}): {:?}",
                crate::error::cut(data, 120)
            ),
        )
    })
}

/// Decode a whole recorded stream (tests, and the non-streaming fallback).
pub fn decode_all(
    dec: &mut dyn Decoder,
    events: &[(Option<&str>, &str)],
) -> Result<Vec<StreamEvent>, ProviderError> {
    let mut out = vec![];
    for (e, d) in events {
        out.extend(dec.feed(*e, d)?);
        if dec.done() {
            break;
        }
    }
    out.extend(dec.finish()?);
    Ok(out)
}
