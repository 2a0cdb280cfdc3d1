//! Trace context across the cluster.
//!
//! A request gets one trace id for its whole life: the client's W3C
//! `traceparent` header if it sent one, else a fresh id. The API layer opens
//! a `http` span carrying `trace_id` and keeps the context in a task-local,
//! so everything the handler does (routing, retries, bus requests) logs
//! inside that span. The bus envelope carries `trace_id`/`span_id` to the
//! node that runs the plugin, whose host opens its own span with the same
//! `trace_id` (see `plugins.rs`). Every API answer carries the trace back in
//! `traceparent` and `x-trace-id`.
//!
//! Our ids already have W3C's shape (32 and 16 lowercase hex digits), so an
//! OpenTelemetry collector fed by the `otlp` feature sees the same ids.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The trace a piece of work belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCtx {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This hop's span, 16 lowercase hex digits.
    pub span_id: String,
}

tokio::task_local! {
    static CURRENT: TraceCtx;
}

/// The trace of the task running now (inside an API request), if any.
pub fn current() -> Option<TraceCtx> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A fresh trace id.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A fresh span id.
pub fn new_span_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parse a W3C `traceparent` (`00-{trace}-{parent span}-{flags}`): the
/// trace id and the caller's span id, or `None` for anything malformed
/// (which the spec says to ignore, starting a new trace).
pub fn parse_traceparent(h: &str) -> Option<(String, String)> {
    let mut it = h.trim().split('-');
    let (v, t, p, f) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if !lower_hex(v, 2) || v == "ff" || !lower_hex(t, 32) || !lower_hex(p, 16) || !lower_hex(f, 2) {
        return None;
    }
    // Version 00 has exactly four parts; later versions may add more.
    if v == "00" && it.next().is_some() {
        return None;
    }
    if t.bytes().all(|b| b == b'0') || p.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((t.to_string(), p.to_string()))
}

/// The `traceparent` value for a span of a trace.
pub fn traceparent(t: &TraceCtx) -> String {
    format!("00-{}-{}-01", t.trace_id, t.span_id)
}

/// The axum middleware: one span per API request, in its trace.
pub async fn layer(req: Request, next: Next) -> Response {
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let (trace_id, parent_span) = match parent {
        Some((t, p)) => (t, Some(p)),
        None => (new_trace_id(), None),
    };
    let t = TraceCtx {
        trace_id,
        span_id: new_span_id(),
    };
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        trace_id = %t.trace_id,
        span_id = %t.span_id,
        parent_span = parent_span.as_deref().unwrap_or(""),
    );
    let mut resp = CURRENT
        .scope(t.clone(), next.run(req).instrument(span))
        .await;
    if let Ok(v) = HeaderValue::from_str(&traceparent(&t)) {
        resp.headers_mut().insert("traceparent", v);
    }
    if let Ok(v) = HeaderValue::from_str(&t.trace_id) {
        resp.headers_mut().insert("x-trace-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let p = "00f067aa0ba902b7";
        assert_eq!(
            parse_traceparent(&format!("00-{t}-{p}-01")),
            Some((t.to_string(), p.to_string()))
        );
        for bad in [
            "",
            "garbage",
            &format!("00-{t}-{p}"),
            &format!("00-{}-{p}-01", t.to_uppercase()),
            &format!("00-{}-{p}-01", "0".repeat(32)),
            &format!("00-{t}-{}-01", "0".repeat(16)),
            &format!("ff-{t}-{p}-01"),
            &format!("00-{t}-{p}-01-extra"),
            &format!("00-{t}x-{p}-01"),
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        let ours = TraceCtx {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
        };
        assert_eq!(
            parse_traceparent(&traceparent(&ours)),
            Some((ours.trace_id.clone(), ours.span_id.clone()))
        );
    }
}
