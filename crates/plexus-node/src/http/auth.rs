//! Who is calling the client API, and whether they may (plexus-auth does
//! the deciding; this is the HTTP shell).
//!
//! With any credential configured (`[api] token`, `[[api.tokens]]`, a
//! signing key), every request must carry `Authorization: Bearer <token>`,
//! except the ones [`is_open`] lists: the liveness and readiness probes (an
//! orchestrator's probe carries no token) and the dashboard's static page
//! (which holds no data; the data comes from `/v1/events`, which is
//! protected). A browser's `EventSource` cannot set headers, so
//! `/v1/events` alone also takes the token as `?access_token=` (RFC 6750
//! §2.3). The token names a principal ([`plexus_auth::Principal`]); the
//! route needs an [`Action`] the principal may do; then the caller's rate
//! is charged. The [`Caller`] rides on the request for the handlers (state
//! calls act as the caller's plugin). Without any credential the API is
//! open, as on a laptop (loopback only, unless `--insecure-open-api`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use plexus_auth::{Action, Caller, Unauthenticated};

use crate::ctx::NodeCtx;
use crate::http::problem::Problem;

/// Paths served without a token.
pub fn is_open(path: &str) -> bool {
    path == "/v1/health" || path == "/v1/ready" || path == "/" || path.starts_with("/dashboard/")
}

/// What a request does, by its route. Unknown routes need `Admin`, so a
/// new endpoint is closed until it is listed here.
pub fn action_for(method: &Method, path: &str) -> Action {
    let state_read = ["/v1/state/get", "/v1/state/list", "/v1/state/audit"];
    match path {
        "/v1/status" | "/metrics" | "/v1/events" | "/v1/openapi.json" | "/v1/route" => {
            Action::Observe
        }
        "/v1/exec" | "/v1/ask" => Action::Exec,
        p if p == "/v1/workflows" || p.starts_with("/v1/workflows/") => Action::Workflows,
        p if state_read.contains(&p) && method == Method::GET => Action::StateRead,
        p if p.starts_with("/v1/state/") => Action::StateWrite,
        _ => Action::Admin,
    }
}

/// The bearer token a request presents, if any.
pub fn bearer<'a>(
    path: &str,
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, Unauthenticated> {
    match authorization {
        Some(h) => h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .map(|t| Some(t.trim()))
            .ok_or(Unauthenticated::Malformed),
        None if path == "/v1/events" => {
            Ok(query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token="))))
        }
        None => Ok(None),
    }
}

fn refuse(ctx: &NodeCtx, status: StatusCode, kind: &str, why: String) -> Response {
    ctx.metrics.api_refused(kind);
    let mut r = Problem::new(status, kind, why).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"plexus\""),
        );
    }
    r
}

/// The axum middleware.
pub async fn authenticate(
    State(ctx): State<Arc<NodeCtx>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if is_open(&path) {
        return next.run(req).await;
    }
    let now = ctx.clock.wall_ms();
    let (caller, rate) = if ctx.auth.is_open() {
        // Open, but a hosted plugin's own token still binds it to its plugin.
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| bearer(&path, Some(h), None).ok().flatten());
        presented
            .and_then(|t| ctx.auth.authenticate(t, now).ok())
            .unwrap_or((Caller::open(), None))
    } else {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = match bearer(&path, auth, req.uri().query()) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return refuse(
                    &ctx,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    Unauthenticated::Missing.to_string(),
                )
            }
            Err(e) => {
                return refuse(
                    &ctx,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    e.to_string(),
                )
            }
        };
        match ctx.auth.authenticate(token, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%path, why = %e, "API request refused");
                return refuse(
                    &ctx,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    e.to_string(),
                );
            }
        }
    };
    if let Err(d) = caller.check(action_for(req.method(), &path)) {
        tracing::warn!(target: "plexus::audit", caller = %caller.describe(), %path, denied = %d, "API request forbidden");
        return refuse(&ctx, StatusCode::FORBIDDEN, "forbidden", d.to_string());
    }
    if let Some(rate) = rate.or(ctx.config.api_auth.default_rate) {
        if let Err(wait_ms) = ctx.quotas.lock().take(&caller.credential, rate, now) {
            let mut r = refuse(
                &ctx,
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!(
                    "{} is over its rate ({}/s); retry in {} ms",
                    caller.describe(),
                    rate.per_sec,
                    wait_ms
                ),
            );
            let secs = wait_ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The caller as a request names it to the plugins it reaches
/// ([`plexus_exec::ExecCall::caller`]): its principal, or `None` when the
/// API takes no tokens and nothing identified the caller.
pub fn caller_name(c: Option<&Extension<Caller>>) -> Option<String> {
    let Extension(c) = c?;
    (!c.is_open()).then(|| c.principal.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_or_only_for_events_the_query() {
        assert_eq!(
            bearer("/v1/status", Some("Bearer abc"), None),
            Ok(Some("abc"))
        );
        assert_eq!(
            bearer("/v1/status", Some("Basic abc"), None),
            Err(Unauthenticated::Malformed)
        );
        assert_eq!(
            bearer("/v1/status", None, Some("access_token=abc")),
            Ok(None)
        );
        assert_eq!(
            bearer("/v1/events", None, Some("x=1&access_token=abc")),
            Ok(Some("abc"))
        );
    }

    #[test]
    fn routes_need_the_action_they_do() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(action_for(&get, "/v1/status"), Action::Observe);
        assert_eq!(action_for(&get, "/metrics"), Action::Observe);
        assert_eq!(action_for(&post, "/v1/exec"), Action::Exec);
        assert_eq!(action_for(&post, "/v1/ask"), Action::Exec);
        assert_eq!(action_for(&get, "/v1/workflows/abc"), Action::Workflows);
        assert_eq!(action_for(&get, "/v1/state/get"), Action::StateRead);
        assert_eq!(action_for(&post, "/v1/state/put"), Action::StateWrite);
        assert_eq!(
            action_for(&post, "/v1/state/lease/acquire"),
            Action::StateWrite
        );
        assert_eq!(action_for(&post, "/v1/tokens"), Action::Admin);
        assert_eq!(action_for(&get, "/v1/dead-letters"), Action::Admin);
        assert_eq!(action_for(&get, "/v1/new-thing"), Action::Admin);
        assert!(is_open("/v1/health") && is_open("/v1/ready") && !is_open("/metrics"));
    }
}
