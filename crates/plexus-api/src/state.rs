//! `/v1/state/...`: the replicated state's request and response types.

use plexus_state::{Access, AuditRecord};
use serde::{Deserialize, Serialize};

/// A successful write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteDone {
    pub node: String,
    pub key: String,
    pub ops: Vec<String>,
    pub consistency: String,
    pub acks: usize,
    pub required: usize,
    pub acked_by: Vec<String>,
}

/// A successful read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadDone {
    pub node: String,
    pub key: String,
    pub kind: String,
    pub value: serde_json::Value,
    pub owner: String,
    pub access: AccessView,
    pub expires_at_ms: Option<u64>,
    pub generation: u64,
    /// Version vector: node → changes seen.
    pub version: std::collections::BTreeMap<String, u64>,
    pub consistency: String,
    pub acks: usize,
    pub required: usize,
}

/// An access level in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessView {
    pub level: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
}

impl From<&Access> for AccessView {
    fn from(a: &Access) -> Self {
        match a {
            Access::Public => AccessView {
                level: "public".into(),
                readers: vec![],
            },
            Access::Private => AccessView {
                level: "private".into(),
                readers: vec![],
            },
            Access::Protected(l) => AccessView {
                level: "protected".into(),
                readers: l.iter().cloned().collect(),
            },
        }
    }
}

/// Body of the write endpoints (`put`, `incr`, `add`, `remove`, `delete`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteBody {
    /// The acting plugin; a plugin's own token implies it.
    #[serde(rename = "as", default)]
    pub plugin: String,
    pub key: String,
    /// `put`: the JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// `incr`: amount (negative counts down; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<i64>,
    /// `add` / `remove`: set members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// `public` | `protected` | `private` (creates the key with it, or
    /// changes it: owner only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// Plugins that may read and write a `protected` key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
    /// Expire this long from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Value type for a new key: `lww`, `gcounter`, `pncounter`, `orset`,
    /// `map` (default: implied by the operation).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Map field the operation applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `local` (default) | `majority` | `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Query of `GET /v1/state/get`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// The acting plugin; a plugin's own token implies it.
    #[serde(rename = "as", default)]
    pub plugin: String,
    pub key: String,
    #[serde(default)]
    pub consistency: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Query of `GET /v1/state/list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The acting plugin; a plugin's own token implies it.
    #[serde(rename = "as", default)]
    pub plugin: String,
}

/// Answer of `GET /v1/state/list`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListReply {
    pub node: String,
    pub keys: Vec<String>,
}

/// Query of `GET /v1/state/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// The acting plugin; a plugin's own token implies it.
    #[serde(rename = "as", default)]
    pub plugin: String,
    #[serde(default)]
    pub key: Option<String>,
    /// Only changes authored by this plugin.
    #[serde(default)]
    pub author: Option<String>,
    /// `true`: accepted only; `false`: rejected only.
    #[serde(default)]
    pub accepted: Option<bool>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Answer of `GET /v1/state/audit`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditReply {
    pub node: String,
    pub records: Vec<AuditRecord>,
}

/// Body of `POST /v1/state/lease/acquire`. The holder is `{as}@{node}`: a
/// plugin hosted on two nodes holds a lease on one of them at a time, and
/// releases it through the node it acquired it on.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// The acting plugin; a plugin's own token implies it.
    #[serde(rename = "as", default)]
    pub plugin: String,
    pub name: String,
    pub ttl_ms: u64,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Body of `POST /v1/state/lease/release`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The acting plugin; a plugin's own token implies it.
    #[serde(rename = "as", default)]
    pub plugin: String,
    pub name: String,
    pub token: u64,
}

/// Answer of `POST /v1/state/lease/release`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseReply {
    pub released: bool,
}
