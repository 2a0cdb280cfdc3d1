//! The API's OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the request/response types' `ToSchema`
//! derives. Served at `GET /v1/openapi.json`; `plexus openapi` prints it and
//! `docs/openapi.json` is its checked-in copy (a test keeps them equal).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::state::{AuditReply, LeaseBody, ListReply, ReleaseBody, ReleaseReply, WriteBody};
use plexus_api::state::{AccessView, ReadDone, WriteDone};
use plexus_api::{
    AskBody, AskReply, Attempt, ExecBody, ExecErrorBody, ExecReply, HealthBody, LinkRow, MemberRow,
    PlacementRow, PluginRow, Problem, ReadyBody, RouteBody, StartWorkflowBody, StatusBody,
    WorkflowStarted,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Plexus node API",
        description = "The HTTP API every Plexus node serves. Errors are RFC 9457 problem documents (`application/problem+json`). When the node has API credentials, every endpoint except `/v1/health` and `/v1/ready` needs `Authorization: Bearer <token>`; the token's role (admin, operator, reader, plugin:NAME) decides what it may do (403 otherwise), and its rate how often (429 with Retry-After).",
        license(name = "MIT"),
    ),
    paths(
        crate::http::api::health,
        crate::http::api::ready,
        crate::http::api::status,
        crate::http::api::dead_letters,
        crate::http::api::exec,
        crate::http::api::route,
        crate::http::api::ask,
        crate::http::api::start_workflow,
        crate::http::api::list_workflows,
        crate::http::api::get_workflow,
        crate::http::api::metrics,
        crate::http::dashboard::one,
        crate::http::state::put,
        crate::http::state::incr,
        crate::http::state::add,
        crate::http::state::remove,
        crate::http::state::delete,
        crate::http::state::read,
        crate::http::state::list,
        crate::http::state::audit,
        crate::http::state::lease_acquire,
        crate::http::state::lease_release,
        crate::http::tokens::issue,
        crate::http::tokens::revoke,
    ),
    components(schemas(
        Problem,
        HealthBody,
        ReadyBody,
        StatusBody,
        MemberRow,
        LinkRow,
        PluginRow,
        PlacementRow,
        ExecBody,
        ExecReply,
        ExecErrorBody,
        RouteBody,
        AskBody,
        AskReply,
        Attempt,
        StartWorkflowBody,
        WorkflowStarted,
        WriteBody,
        WriteDone,
        ReadDone,
        AccessView,
        ListReply,
        AuditReply,
        LeaseBody,
        ReleaseBody,
        ReleaseReply,
        plexus_api::TokenRequest,
        plexus_api::TokenIssued,
        plexus_api::RevokeRequest,
        plexus_api::Revoked,
        crate::http::dashboard::Snapshot,
        crate::services::metrics::DecisionRecord,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness"),
        (name = "status", description = "What the node sees of the cluster"),
        (name = "exec", description = "Run plugin commands"),
        (name = "route", description = "Route free-text requests"),
        (name = "workflows", description = "Workflow runs and sagas"),
        (name = "state", description = "Replicated state (CRDTs) and leases"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "tokens", description = "Issued API tokens (admin)"),
    )
)]
struct ApiDoc;

/// Declares the bearer scheme and requires it everywhere but the probes.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token: the admin token (`[api] token`, PLEXUS_API_TOKEN), a declared one (`[[api.tokens]]`) or an issued one (`plexus token create`); only required when the node has any",
                    ))
                    .build(),
            ),
        );
        for (path, item) in api.paths.paths.iter_mut() {
            if path == "/v1/health" || path == "/v1/ready" {
                continue;
            }
            for op in operations(item) {
                op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
                    &str,
                    [&str; 0],
                    &str,
                >("bearer", [])]);
                op.responses.responses.insert(
                    "401".into(),
                    utoipa::openapi::RefOr::T(
                        utoipa::openapi::ResponseBuilder::new()
                            .description("Missing or wrong API token")
                            .content(
                                "application/problem+json",
                                utoipa::openapi::ContentBuilder::new()
                                    .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
                                    .build(),
                            )
                            .build(),
                    ),
                );
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> Vec<&mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The OpenAPI document.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // The crate version would make every release rewrite docs/openapi.json
    // for nothing; the API has its own version.
    doc.info.version = "1".into();
    doc
}

/// The OpenAPI document as pretty JSON with a trailing newline (the exact
/// bytes of `docs/openapi.json`).
pub fn spec_json() -> String {
    let mut s = spec()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_checked_in_spec_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == super::spec_json(),
            "docs/openapi.json is stale: regenerate it with `cargo run -p plexus-cli -- openapi > docs/openapi.json`"
        );
    }
}
