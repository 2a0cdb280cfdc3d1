//! `/v1/tokens`: issue signed tokens and revoke them (admin only; the auth
//! layer checks the role). Revoked ids live in the replicated state, in the
//! set [`REVOKED_KEY`] owned by [`SYSTEM`]; every node reloads it into its
//! authenticator ([`sync_revoked`]), so a revocation reaches the whole
//! cluster with the state's gossip.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use plexus_api::{RevokeRequest, Revoked, TokenIssued, TokenRequest};
use plexus_auth::Caller;
use plexus_state::{Access, Consistency};

use crate::actors::state::{ReadReq, StateMsg, WriteOp, WriteReq};
use crate::ctx::NodeCtx;
use crate::http::problem::Problem;
use crate::http::state::{ask, bad, json_body};

/// The state key of revoked token ids.
pub const REVOKED_KEY: &str = "plexus.auth.revoked-tokens";
/// The owner of that key (no plugin token can act as it: see `acting`).
pub const SYSTEM: &str = "plexus";

const DAY_MS: u64 = 24 * 3600 * 1000;

pub fn routes() -> Router<Arc<NodeCtx>> {
    Router::new()
        .route("/v1/tokens", post(issue))
        .route("/v1/tokens/revoke", post(revoke))
}

#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    description = "Issue a token for a role, signed with the cluster's key (admin only). Shown once.",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Issued", body = TokenIssued),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 409, description = "This node has no signing key", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn issue(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Json<TokenIssued>, Problem> {
    let b = json_body(&ctx, b)?;
    let principal = plexus_auth::Principal::parse(&b.role).map_err(bad)?;
    let ttl = b.ttl_ms.unwrap_or(DAY_MS);
    if ttl == 0 || ttl > 366 * DAY_MS {
        return Err(bad("ttl_ms must be between 1 ms and 366 days"));
    }
    let rate = b
        .rate
        .as_deref()
        .map(plexus_auth::Rate::parse)
        .transpose()
        .map_err(bad)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (token, claims) = ctx
        .auth
        .issue(&principal, &id, ttl, rate, ctx.clock.wall_ms())
        .map_err(|e| Problem::new(StatusCode::CONFLICT, "no-signing-key", e.to_string()))?;
    let by = caller.map(|Extension(c)| c.describe()).unwrap_or_default();
    tracing::info!(target: "plexus::audit", %id, role = %principal, ttl_ms = ttl, %by, "token issued");
    Ok(Json(TokenIssued {
        token,
        id,
        role: principal.to_string(),
        expires_ms: claims.expires_ms,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/tokens/revoke",
    tag = "tokens",
    description = "Revoke an issued token everywhere (admin only): its id joins a replicated set, written by a majority.",
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "No majority answered in time", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<Json<Revoked>, Problem> {
    let b = json_body(&ctx, b)?;
    let id = b.id.trim().to_string();
    if id.is_empty() {
        return Err(bad("`id` is required"));
    }
    let timeout = ctx.config.state.consistency_timeout;
    let by = caller.map(|Extension(c)| c.describe()).unwrap_or_default();
    let req = WriteReq {
        plugin: SYSTEM.into(),
        by: by.clone(),
        key: REVOKED_KEY.into(),
        op: WriteOp::Add(vec![id.clone()]),
        access: Some(Access::Public),
        ttl_ms: None,
        kind: None,
        field: None,
        consistency: Consistency::Majority,
        timeout,
    };
    ask(&ctx, timeout, |r| StateMsg::Write(req, r)).await?;
    let revoked = read_revoked(&ctx).await.unwrap_or_default();
    let n = revoked.len();
    ctx.auth.set_revoked(revoked);
    tracing::info!(target: "plexus::audit", %id, %by, "token revoked");
    Ok(Json(Revoked { id, revoked: n }))
}

/// The revoked ids in this node's replica (`None`: the replica did not
/// answer; an unknown key is an empty set).
async fn read_revoked(ctx: &NodeCtx) -> Option<HashSet<String>> {
    let req = ReadReq {
        plugin: SYSTEM.into(),
        key: REVOKED_KEY.into(),
        consistency: Consistency::Local,
        timeout: Duration::from_secs(1),
    };
    match ask(ctx, Duration::from_secs(1), |r| StateMsg::Read(req, r)).await {
        Ok(done) => Some(
            done.value
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        // An unknown key: nothing revoked yet.
        Err(p) if p.0.status == 404 => Some(HashSet::new()),
        Err(_) => None,
    }
}

/// Keep the authenticator's revoked ids in step with the replicated set
/// (every second; revocations from other nodes arrive by gossip).
pub async fn sync_revoked(ctx: std::sync::Weak<NodeCtx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        if !ctx.auth.can_issue() {
            // No issued tokens here, nothing to revoke.
            return;
        }
        if let Some(ids) = read_revoked(&ctx).await {
            ctx.auth.set_revoked(ids);
        }
    }
}
