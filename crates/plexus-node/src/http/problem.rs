//! Problem documents (RFC 9457): where typed errors become HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use plexus_api::{ExecErrorBody, ExecReply};
use plexus_exec::{ExecError, Failure};

/// The API's error answer: a `plexus_api::Problem` that axum can send.
#[derive(Debug, Clone)]
pub struct Problem(pub plexus_api::Problem);

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Problem {
        Problem(plexus_api::Problem::new(
            status.as_u16(),
            status.canonical_reason().unwrap_or("error"),
            kind,
            detail,
        ))
    }
}

impl std::ops::Deref for Problem {
    type Target = plexus_api::Problem;
    fn deref(&self) -> &plexus_api::Problem {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut plexus_api::Problem {
        &mut self.0
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(self.0)).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/problem+json"),
        );
        r
    }
}

/// The HTTP status of an exec error.
pub fn status_of(e: &ExecError) -> StatusCode {
    match crate::services::exec::kind(e) {
        "bad-request" | "bad-input" => StatusCode::BAD_REQUEST,
        "too-large" => StatusCode::PAYLOAD_TOO_LARGE,
        "unknown-plugin" | "unknown-command" => StatusCode::NOT_FOUND,
        "forbidden" => StatusCode::FORBIDDEN,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "plugin-failed" | "bad-reply" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The problem document of a failed call (with the host's answer when
/// one came back).
pub fn of_failure(f: &Failure, plugin: &str, command: &str) -> Problem {
    let e = &f.error;
    let mut p = Problem::new(status_of(e), crate::services::exec::kind(e), f.detail());
    p.in_doubt = f.in_doubt;
    p.reply = failed_reply(e, plugin, command).map(|mut r| {
        r.retries = f.retries;
        Box::new(r)
    });
    p
}

/// Problem of an error that ended a call before it started.
pub fn of_error(e: &ExecError) -> Problem {
    Problem::new(status_of(e), crate::services::exec::kind(e), e.to_string())
}

/// The host's answer to a failed try, as the API shows it.
fn failed_reply(e: &ExecError, plugin: &str, command: &str) -> Option<ExecReply> {
    let (node, kind, message, retryable, limit, duration_ms) = match e {
        ExecError::Plugin {
            node,
            error,
            duration_ms,
            ..
        } => {
            let limit = match error {
                plexus_handler::HandlerError::LimitExceeded { limit, .. } => {
                    Some(limit.as_str().to_string())
                }
                _ => None,
            };
            (
                node,
                error.kind().to_string(),
                error.to_string(),
                error.retryable(),
                limit,
                *duration_ms,
            )
        }
        ExecError::Crashed { node, .. } => {
            (node, "crashed".into(), e.to_string(), false, None, 0.0)
        }
        _ => return None,
    };
    Some(ExecReply {
        ok: false,
        plugin: plugin.to_string(),
        command: command.to_string(),
        node: node.clone(),
        output: None,
        error: Some(ExecErrorBody {
            kind,
            message,
            retryable,
            limit,
        }),
        duration_ms,
        model: None,
        usage: None,
        cost_usd: None,
        work_minutes: None,
        served_by: None,
        retries: 0,
    })
}
