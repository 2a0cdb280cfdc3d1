//! `/v1/state/...`: the replicated state over HTTP. Every call names the
//! acting plugin (`as`); the replica checks it against the entry's access
//! level. Errors are problem documents: 403 names the access rule, 404 an
//! unknown key, 504 a consistency level not reached in time (with the acks
//! that did arrive).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use plexus_auth::{Caller, Denied};
use plexus_state::{Access, AuditQuery, Consistency, Kind, Lease};
use ractor::RpcReplyPort;

use crate::actors::state::{parse_consistency, ReadReq, StateMsg, StateProblem, WriteOp, WriteReq};
use crate::ctx::NodeCtx;
use crate::http::api::call_actor;
use crate::http::problem::Problem;
pub use plexus_api::state::{
    AuditParams, AuditReply, GetQuery, LeaseBody, ListQuery, ListReply, ReadDone, ReleaseBody,
    ReleaseReply, WriteBody, WriteDone,
};

/// The state routes (merged into [`crate::http::api::router`]).
pub fn routes() -> Router<Arc<NodeCtx>> {
    Router::new()
        .route("/v1/state/put", post(put))
        .route("/v1/state/incr", post(incr))
        .route("/v1/state/add", post(add))
        .route("/v1/state/remove", post(remove))
        .route("/v1/state/delete", post(delete))
        .route("/v1/state/get", get(read))
        .route("/v1/state/list", get(list))
        .route("/v1/state/audit", get(audit))
        .route("/v1/state/lease/acquire", post(lease_acquire))
        .route("/v1/state/lease/release", post(lease_release))
}

pub(crate) fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
}

fn to_problem(p: StateProblem) -> Problem {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Problem::new(status, p.kind, p.detail)
}

/// The plugin a call acts as: a plugin token's own plugin (naming another
/// is refused, 403), or the `as` an admin or operator names.
fn acting(caller: Option<&Extension<Caller>>, requested: &str) -> Result<String, Problem> {
    // The auth layer puts a caller on every state route.
    let Some(Extension(c)) = caller else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no authenticated caller",
        ));
    };
    c.principal.acting_as(Some(requested)).map_err(|d| match d {
        Denied::NoActingPlugin => bad(d.to_string()),
        d => {
            tracing::warn!(target: "plexus::audit", caller = %c.describe(), requested, denied = %d, "state call refused");
            Problem::new(StatusCode::FORBIDDEN, "forbidden", d.to_string())
        }
    })
}

fn parse_access(access: Option<&str>, readers: &[String]) -> Result<Option<Access>, Problem> {
    match access {
        None if readers.is_empty() => Ok(None),
        None | Some("protected") => Ok(Some(Access::protected(readers.iter().cloned()))),
        Some("public") | Some("private") if !readers.is_empty() => {
            Err(bad("readers are only allowed with access `protected`"))
        }
        Some("public") => Ok(Some(Access::Public)),
        Some("private") => Ok(Some(Access::Private)),
        Some(other) => Err(bad(format!(
            "unknown access {other:?}: use public, protected or private"
        ))),
    }
}

fn consistency(
    ctx: &NodeCtx,
    c: Option<&str>,
    t: Option<u64>,
) -> Result<(Consistency, Duration), Problem> {
    let level = match c {
        None => Consistency::Local,
        Some(s) => parse_consistency(s).map_err(bad)?,
    };
    let timeout = match t {
        None => ctx.config.state.consistency_timeout,
        Some(0) => return Err(bad("timeout_ms must be positive")),
        Some(ms) => Duration::from_millis(ms.min(600_000)),
    };
    Ok((level, timeout))
}

pub(crate) async fn ask<T: Send + 'static>(
    ctx: &NodeCtx,
    wait: Duration,
    build: impl FnOnce(RpcReplyPort<Result<T, StateProblem>>) -> StateMsg,
) -> Result<T, Problem> {
    call_actor(
        &ctx.actors.state,
        "the state replica",
        wait + Duration::from_secs(5),
        build,
    )
    .await?
    .map_err(to_problem)
}

pub(crate) fn json_body<T>(ctx: &NodeCtx, b: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    b.map(|Json(x)| x)
        .map_err(|e| crate::http::api::body_problem(ctx, e))
}

async fn write(
    ctx: &NodeCtx,
    caller: Option<Extension<Caller>>,
    mut b: WriteBody,
    op: WriteOp,
) -> Result<Json<WriteDone>, Problem> {
    b.plugin = acting(caller.as_ref(), &b.plugin)?;
    let by = caller.map(|Extension(c)| c.describe()).unwrap_or_default();
    let access = parse_access(b.access.as_deref(), &b.readers)?;
    let (level, timeout) = consistency(ctx, b.consistency.as_deref(), b.timeout_ms)?;
    let kind = match b.kind.as_deref() {
        None => None,
        Some(k) => Some(k.parse::<Kind>().map_err(|e| bad(e.to_string()))?),
    };
    let req = WriteReq {
        plugin: b.plugin,
        by,
        key: b.key,
        op,
        access,
        ttl_ms: b.ttl_ms,
        kind,
        field: b.field,
        consistency: level,
        timeout,
    };
    ask(ctx, timeout, |r| StateMsg::Write(req, r))
        .await
        .map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/state/put",
    tag = "state",
    description = "Set a key (last writer wins, or a map field).",
    request_body = WriteBody,
    responses(
        (status = 200, description = "Written", body = WriteDone),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The acting plugin may not do this (names the access rule)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The consistency level was not reached in time", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn put(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<WriteBody>, JsonRejection>,
) -> Result<Json<WriteDone>, Problem> {
    let mut b = json_body(&ctx, b)?;
    let v = b.value.take().ok_or_else(|| bad("`value` is required"))?;
    write(&ctx, caller, b, WriteOp::Put(v)).await
}

#[utoipa::path(
    post,
    path = "/v1/state/incr",
    tag = "state",
    description = "Add to a counter.",
    request_body = WriteBody,
    responses(
        (status = 200, description = "Written", body = WriteDone),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The acting plugin may not do this (names the access rule)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The consistency level was not reached in time", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn incr(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<WriteBody>, JsonRejection>,
) -> Result<Json<WriteDone>, Problem> {
    let b = json_body(&ctx, b)?;
    let by = b.by.unwrap_or(1);
    write(&ctx, caller, b, WriteOp::Incr(by)).await
}

#[utoipa::path(
    post,
    path = "/v1/state/add",
    tag = "state",
    description = "Add members to a set.",
    request_body = WriteBody,
    responses(
        (status = 200, description = "Written", body = WriteDone),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The acting plugin may not do this (names the access rule)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The consistency level was not reached in time", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn add(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<WriteBody>, JsonRejection>,
) -> Result<Json<WriteDone>, Problem> {
    let b = json_body(&ctx, b)?;
    let m = members(&b)?;
    write(&ctx, caller, b, WriteOp::Add(m)).await
}

#[utoipa::path(
    post,
    path = "/v1/state/remove",
    tag = "state",
    description = "Remove members from a set.",
    request_body = WriteBody,
    responses(
        (status = 200, description = "Written", body = WriteDone),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The acting plugin may not do this (names the access rule)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The consistency level was not reached in time", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn remove(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<WriteBody>, JsonRejection>,
) -> Result<Json<WriteDone>, Problem> {
    let b = json_body(&ctx, b)?;
    let m = members(&b)?;
    write(&ctx, caller, b, WriteOp::Remove(m)).await
}

#[utoipa::path(
    post,
    path = "/v1/state/delete",
    tag = "state",
    description = "Delete a key.",
    request_body = WriteBody,
    responses(
        (status = 200, description = "Deleted", body = WriteDone),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The acting plugin may not do this (names the access rule)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The consistency level was not reached in time", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown key", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn delete(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<WriteBody>, JsonRejection>,
) -> Result<Json<WriteDone>, Problem> {
    let b = json_body(&ctx, b)?;
    write(&ctx, caller, b, WriteOp::Delete).await
}

/// The set members of an `add` or `remove`: at least one.
fn members(b: &WriteBody) -> Result<Vec<String>, Problem> {
    if b.members.is_empty() {
        return Err(bad("`members` must name at least one member"));
    }
    Ok(b.members.clone())
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    q.map(|Query(x)| x)
        .map_err(|e| bad(format!("malformed query: {}", e.body_text())))
}

#[utoipa::path(
    get,
    path = "/v1/state/get",
    tag = "state",
    description = "Read a key.",
    params(GetQuery),
    responses(
        (status = 200, description = "The value", body = ReadDone),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The acting plugin may not do this (names the access rule)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "The consistency level was not reached in time", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown key", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn read(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    q: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<ReadDone>, Problem> {
    let mut q = query(q)?;
    q.plugin = acting(caller.as_ref(), &q.plugin)?;
    let (level, timeout) = consistency(&ctx, q.consistency.as_deref(), q.timeout_ms)?;
    let req = ReadReq {
        plugin: q.plugin,
        key: q.key,
        consistency: level,
        timeout,
    };
    ask(&ctx, timeout, |r| StateMsg::Read(req, r))
        .await
        .map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/state/list",
    tag = "state",
    description = "Keys the acting plugin may read.",
    params(ListQuery),
    responses(
        (status = 200, description = "Keys", body = ListReply),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn list(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListReply>, Problem> {
    let mut q = query(q)?;
    q.plugin = acting(caller.as_ref(), &q.plugin)?;
    let keys = ask(&ctx, Duration::ZERO, |r| StateMsg::List(q.plugin, r)).await?;
    Ok(Json(ListReply {
        node: ctx.name().to_string(),
        keys,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/state/audit",
    tag = "state",
    description = "Audit records of accepted and rejected changes.",
    params(AuditParams),
    responses(
        (status = 200, description = "Records", body = AuditReply),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The acting plugin may not read this", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn audit(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditReply>, Problem> {
    let mut q = query(q)?;
    q.plugin = acting(caller.as_ref(), &q.plugin)?;
    let aq = AuditQuery {
        key: q.key,
        plugin: q.author,
        accepted: q.accepted,
        limit: q.limit.unwrap_or(100).min(10_000),
        ..Default::default()
    };
    let records = ask(&ctx, Duration::ZERO, |r| StateMsg::Audit(q.plugin, aq, r)).await?;
    Ok(Json(AuditReply {
        node: ctx.name().to_string(),
        records,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/state/lease/acquire",
    tag = "state",
    description = "Acquire or renew a lease (majority vote); the holder is `{as}@{node}`.",
    request_body = LeaseBody,
    responses(
        (status = 200, description = "Granted", body = plexus_state::Lease),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Held by another holder (names it)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "No majority answered in time", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn lease_acquire(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<LeaseBody>, JsonRejection>,
) -> Result<Json<Lease>, Problem> {
    let mut b = json_body(&ctx, b)?;
    b.plugin = acting(caller.as_ref(), &b.plugin)?;
    if b.name.is_empty() {
        return Err(bad("`name` is required"));
    }
    if b.ttl_ms == 0 {
        return Err(bad("ttl_ms must be positive"));
    }
    let (_, timeout) = consistency(&ctx, None, b.timeout_ms)?;
    ask(&ctx, timeout, |reply| StateMsg::LeaseAcquire {
        name: b.name,
        holder: format!("{}@{}", b.plugin, ctx.name()),
        ttl_ms: b.ttl_ms,
        timeout,
        reply,
    })
    .await
    .map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/state/lease/release",
    tag = "state",
    description = "Release a lease (best effort).",
    request_body = ReleaseBody,
    responses(
        (status = 200, description = "Released or not held", body = ReleaseReply),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The state replica is restarting or its membership view is unavailable", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn lease_release(
    State(ctx): State<Arc<NodeCtx>>,
    caller: Option<Extension<Caller>>,
    b: Result<Json<ReleaseBody>, JsonRejection>,
) -> Result<Json<ReleaseReply>, Problem> {
    let mut b = json_body(&ctx, b)?;
    b.plugin = acting(caller.as_ref(), &b.plugin)?;
    let released = ask(&ctx, Duration::ZERO, |reply| StateMsg::LeaseRelease {
        name: b.name,
        holder: format!("{}@{}", b.plugin, ctx.name()),
        token: b.token,
        reply,
    })
    .await?;
    Ok(Json(ReleaseReply { released }))
}
