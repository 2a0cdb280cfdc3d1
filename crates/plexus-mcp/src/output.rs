//! Turning MCP tool results and errors into Plexus results: pure functions.

use plexus_handler::{DiscoveredCommand, HandlerError};
use rmcp::model::{CallToolResult, ContentBlock, ErrorCode, Tool};
use rmcp::ServiceError;
use serde_json::Value;

/// The JSON output of a successful tool call, or the tool's own error text
/// when it answered `isError`.
///
/// Structured content wins; otherwise text blocks are joined and parsed as
/// JSON when they are JSON (most servers print their result as JSON text),
/// else kept as a string; other blocks (images, resources) are passed on as
/// the MCP content array.
pub fn tool_output(r: &CallToolResult) -> Result<Value, String> {
    let texts: Vec<&str> = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    if r.is_error == Some(true) {
        let msg = if texts.is_empty() {
            r.structured_content
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "the tool reported an error without a message".into())
        } else {
            texts.join("\n")
        };
        return Err(msg);
    }
    if let Some(v) = &r.structured_content {
        return Ok(v.clone());
    }
    if texts.len() == r.content.len() {
        let joined = texts.join("\n");
        return Ok(serde_json::from_str(&joined).unwrap_or(Value::String(joined)));
    }
    Ok(serde_json::to_value(&r.content).unwrap_or(Value::Null))
}

/// A failed call as a typed handler error. `server` describes the server for
/// the message. Transport failures are `Failed` (they count against the
/// breaker); the server refusing the arguments is bad input.
pub fn call_error(plugin: &str, server: &str, tool: &str, e: &ServiceError) -> HandlerError {
    match e {
        ServiceError::McpError(d) if d.code == ErrorCode::INVALID_PARAMS => {
            HandlerError::BadInput(format!("{server} refused the arguments of {tool}: {}", d.message))
        }
        ServiceError::McpError(d) if d.code == ErrorCode::METHOD_NOT_FOUND => {
            HandlerError::UnknownCommand {
                plugin: plugin.to_string(),
                command: tool.to_string(),
            }
        }
        ServiceError::McpError(d) => HandlerError::Failed(format!(
            "{server} failed {tool}: {} (MCP error {})",
            d.message, d.code.0
        )),
        ServiceError::Timeout { timeout } => HandlerError::Timeout(timeout.as_millis() as u64),
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => HandlerError::Failed(
            format!("{server} of plugin {plugin} went away during the call of {tool} ({e}); it is being restarted"),
        ),
        other => HandlerError::Failed(format!("{server} failed {tool}: {other}")),
    }
}

/// Whether the error means the connection is gone (the server must be
/// restarted) rather than one call failing.
pub fn is_connection_lost(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::TransportClosed | ServiceError::TransportSend(_)
    )
}

/// A listed tool as a command of the plugin, named `name`.
pub fn discovered(server: &str, name: &str, t: &Tool) -> DiscoveredCommand {
    let hints = t.annotations.as_ref();
    DiscoveredCommand {
        name: name.to_string(),
        description: t
            .description
            .as_deref()
            .map(str::to_string)
            .or_else(|| t.title.clone())
            .unwrap_or_default(),
        input_schema: serde_json::to_string(t.input_schema.as_ref())
            .unwrap_or_else(|_| "{}".into()),
        // MCP's hints default to false: only a tool that says it is
        // read-only or idempotent is retried without an idempotency key.
        idempotent: hints
            .is_some_and(|h| h.read_only_hint == Some(true) || h.idempotent_hint == Some(true)),
        server: server.to_string(),
    }
}

/// Text blocks of a content list (for logs and tests).
pub fn texts(content: &[ContentBlock]) -> Vec<String> {
    content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ErrorData;
    use serde_json::json;

    #[test]
    fn structured_content_then_json_text_then_plain_text() {
        let mut r = CallToolResult::success(vec![ContentBlock::text("{\"a\":1}")]);
        r.structured_content = Some(json!({"b": 2}));
        assert_eq!(tool_output(&r).unwrap(), json!({"b": 2}));
        let r = CallToolResult::success(vec![ContentBlock::text("{\"a\":1}")]);
        assert_eq!(tool_output(&r).unwrap(), json!({"a": 1}));
        let r = CallToolResult::success(vec![ContentBlock::text("On branch main")]);
        assert_eq!(tool_output(&r).unwrap(), json!("On branch main"));
    }

    #[test]
    fn is_error_results_are_failures_with_the_tools_text() {
        let r = CallToolResult::error(vec![ContentBlock::text("Invalid timezone: Mars/Base")]);
        assert_eq!(tool_output(&r).unwrap_err(), "Invalid timezone: Mars/Base");
    }

    #[test]
    fn protocol_errors_are_typed() {
        let bad = ServiceError::McpError(ErrorData::invalid_params("missing timezone", None));
        assert!(matches!(
            call_error("p", "s", "t", &bad),
            HandlerError::BadInput(m) if m.contains("missing timezone")
        ));
        let gone = call_error("p", "s", "t", &ServiceError::TransportClosed);
        assert!(matches!(&gone, HandlerError::Failed(m) if m.contains("went away")));
        assert!(gone.retryable());
        assert!(is_connection_lost(&ServiceError::TransportClosed));
    }
}
