//! Bearer-token access control for the client API.
//!
//! When the node has a token (`[api] token`, `--api-token`,
//! `PLEXUS_API_TOKEN`), every request must carry `Authorization: Bearer
//! <token>`, except the ones [`is_open`] lists: the liveness and readiness
//! probes (an orchestrator's probe carries no token) and the
//! dashboard's static page (which holds no data; the data comes from
//! `/v1/events`, which is protected). A browser's `EventSource` cannot set
//! headers, so `/v1/events` alone also takes the token as `?access_token=`
//! (RFC 6750 §2.3). Without a token the API is open, as on a laptop.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ctx::NodeCtx;
use crate::http::problem::Problem;

/// Paths served without a token.
pub fn is_open(path: &str) -> bool {
    path == "/v1/health" || path == "/v1/ready" || path == "/" || path.starts_with("/dashboard/")
}

/// Why a request was refused, or `None` when it may pass.
pub fn check(
    expected: Option<&str>,
    path: &str,
    authorization: Option<&str>,
    query: Option<&str>,
) -> Option<&'static str> {
    let expected = expected?;
    if is_open(path) {
        return None;
    }
    let presented = match authorization {
        Some(h) => match h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
        {
            Some(t) => Some(t.trim()),
            None => return Some("the Authorization header is not `Bearer <token>`"),
        },
        None if path == "/v1/events" => {
            query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")))
        }
        None => None,
    };
    match presented {
        None => Some("this node needs an API token: send `Authorization: Bearer <token>` (plexus --api-token or PLEXUS_API_TOKEN)"),
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some("wrong API token"),
    }
}

/// Compare without an early exit, so the time taken does not tell how much
/// of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The axum middleware.
pub async fn require_token(State(ctx): State<Arc<NodeCtx>>, req: Request, next: Next) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match check(
        ctx.config.api_token.as_deref(),
        req.uri().path(),
        auth,
        req.uri().query(),
    ) {
        None => next.run(req).await,
        Some(why) => {
            tracing::debug!(path = %req.uri().path(), why, "API request refused");
            let mut r = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", why).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"plexus\""),
            );
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    const T: &str = "0123456789abcdef";

    #[test]
    fn no_token_configured_lets_everything_pass() {
        assert_eq!(check(None, "/v1/status", None, None), None);
    }

    #[test]
    fn a_token_is_required_except_on_open_paths() {
        assert!(check(Some(T), "/v1/status", None, None).is_some());
        assert!(check(Some(T), "/metrics", None, None).is_some());
        assert!(check(Some(T), "/v1/status", Some("Bearer nope"), None).is_some());
        assert!(check(Some(T), "/v1/status", Some(T), None).is_some());
        assert_eq!(
            check(Some(T), "/v1/status", Some(&format!("Bearer {T}")), None),
            None
        );
        assert_eq!(check(Some(T), "/v1/health", None, None), None);
        assert_eq!(check(Some(T), "/v1/ready", None, None), None);
        assert_eq!(check(Some(T), "/", None, None), None);
    }

    #[test]
    fn only_the_event_stream_takes_the_token_in_the_query() {
        let q = format!("x=1&access_token={T}");
        assert_eq!(check(Some(T), "/v1/events", None, Some(&q)), None);
        assert!(check(Some(T), "/v1/status", None, Some(&q)).is_some());
        assert!(check(Some(T), "/v1/events", None, Some("access_token=bad")).is_some());
    }
}
