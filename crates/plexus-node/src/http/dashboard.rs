//! The live web dashboard every node serves.
//!
//! `GET /` is a static page (HTML, CSS and JS built into the binary with
//! `include_str!`; no npm). The page reads `GET /v1/events`, a Server-Sent
//! Events stream that sends a [`Snapshot`] at once and then every second:
//! members and their health, plugins per node with their breaker states, the
//! bus counters (the page turns them into message rates), the node's recent
//! routing decisions with their reasons, and its workflow runs and sagas
//! with step states. `GET /v1/dashboard` answers one snapshot (same JSON).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::ctx::NodeCtx;
use crate::http::api::status_body;
use crate::http::problem::Problem;
use crate::services::metrics::DecisionRecord;
use plexus_api::StatusBody;

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

/// How often the event stream sends a snapshot.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Runs shown: every running one, then the most recent finished ones.
const MAX_RUNS: usize = 30;

/// What the dashboard shows, as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// Wall-clock ms when taken (the page computes rates between snapshots).
    pub at_ms: u64,
    /// Members, plugins with breakers, bus and link counters.
    pub status: StatusBody,
    /// This node's recent routing decisions, newest first.
    pub decisions: Vec<DecisionRecord>,
    /// This node's workflow runs and sagas: running first, then the newest
    /// finished ones.
    pub workflows: Vec<plexus_workflow::RunReport>,
    /// Set when a part could not be read this time (e.g. a service restarting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The dashboard's routes (merged into [`crate::http::api::router`]).
pub fn routes() -> Router<Arc<NodeCtx>> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/style.css", get(style))
        .route("/v1/dashboard", get(one))
        .route("/v1/events", get(events))
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// Take a snapshot.
pub async fn snapshot(ctx: &NodeCtx) -> Result<Snapshot, Problem> {
    let status = status_body(ctx).await?;
    let (workflows, warning) = match crate::http::api::workflow_reports(ctx).await {
        Ok(mut runs) => {
            // Running first, then by start time, newest first.
            runs.sort_by_key(|r| {
                (
                    r.status.is_final(),
                    std::cmp::Reverse(r.started_ms.unwrap_or(0)),
                )
            });
            runs.truncate(MAX_RUNS);
            (runs, None)
        }
        Err(p) => (vec![], Some(p.0.detail)),
    };
    Ok(Snapshot {
        at_ms: plexus_bus::now_ms(),
        status,
        decisions: ctx.metrics.recent_decisions(),
        workflows,
        warning,
    })
}

#[utoipa::path(
    get,
    path = "/v1/dashboard",
    tag = "status",
    description = "One dashboard snapshot: what `GET /v1/events` streams every second as `snapshot` events (Server-Sent Events; a browser's EventSource may pass the token as `?access_token=`).",
    responses(
        (status = 200, description = "The snapshot", body = Snapshot),
        (status = 503, description = "A node service is restarting or busy", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn one(State(ctx): State<Arc<NodeCtx>>) -> Result<Json<Snapshot>, Problem> {
    snapshot(&ctx).await.map(Json)
}

async fn events(
    State(ctx): State<Arc<NodeCtx>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((ctx, true), |(ctx, first)| async move {
        if !first {
            tokio::time::sleep(INTERVAL).await;
        }
        let ev = match snapshot(&ctx).await {
            Ok(s) => Event::default()
                .event("snapshot")
                .json_data(&s)
                .unwrap_or_else(|e| Event::default().event("problem").data(e.to_string())),
            // A service restarting is news for the page, not the end of the stream.
            Err(p) => Event::default().event("problem").data(p.0.detail),
        };
        Some((Ok(ev), (ctx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
