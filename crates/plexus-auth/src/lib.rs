//! Who is calling the API, and what they may do. Sans-IO: every check takes
//! `now` (ms since the Unix epoch) and returns a decision; the node's HTTP
//! layer only extracts the bearer token and applies the answer.
//!
//! - [`Principal`]: `admin` (everything), `operator` (read, exec,
//!   workflows), `reader` (status and metrics), `plugin:NAME` (acts only as
//!   that plugin).
//! - [`Authenticator`] resolves a bearer token: the node's admin token, the
//!   tokens declared in its config (stored as SHA-256 hashes), or a token
//!   issued by [`Authenticator::issue`] and signed with the cluster's signing
//!   key (HMAC-SHA256), so any node with the key verifies it. Issued tokens
//!   expire, and can be revoked by id.
//! - [`Quotas`]: a token bucket per caller; past it, a retry-after.

mod quota;
mod token;

pub use quota::{Bucket, Quotas, Rate};
pub use token::{hash_token, Authenticator, Claims, DeclaredToken, IssueError, TOKEN_PREFIX};

use std::fmt;

use serde::{Deserialize, Serialize};

/// A role, and for `plugin` the plugin it acts as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "role", content = "plugin")]
pub enum Principal {
    Admin,
    Operator,
    Reader,
    Plugin(String),
}

impl Principal {
    /// `admin`, `operator`, `reader` or `plugin:NAME`.
    pub fn parse(s: &str) -> Result<Principal, String> {
        match s {
            "admin" => Ok(Principal::Admin),
            "operator" => Ok(Principal::Operator),
            "reader" => Ok(Principal::Reader),
            _ => match s.strip_prefix("plugin:") {
                // `plexus` owns the cluster's own state keys (revocations).
                Some("plexus") => Err("plugin:plexus is reserved for the cluster itself".into()),
                Some(p) if !p.trim().is_empty() && !p.contains(char::is_whitespace) => {
                    Ok(Principal::Plugin(p.to_string()))
                }
                _ => Err(format!(
                    "unknown role {s:?}: use admin, operator, reader or plugin:NAME"
                )),
            },
        }
    }

    /// What this principal may do.
    pub fn may(&self, a: Action) -> bool {
        use Action::*;
        match self {
            Principal::Admin => true,
            Principal::Operator => matches!(a, Observe | Exec | Workflows | StateRead),
            Principal::Reader => matches!(a, Observe),
            Principal::Plugin(_) => matches!(a, Observe | Exec | StateRead | StateWrite),
        }
    }

    /// The plugin a state call acts as. A plugin principal acts as itself
    /// (naming another is refused); an admin or operator must name one.
    pub fn acting_as(&self, requested: Option<&str>) -> Result<String, Denied> {
        let requested = requested.map(str::trim).filter(|r| !r.is_empty());
        match (self, requested) {
            (Principal::Plugin(me), None) => Ok(me.clone()),
            (Principal::Plugin(me), Some(r)) if r == me => Ok(me.clone()),
            (Principal::Plugin(me), Some(r)) => Err(Denied::NotThatPlugin {
                me: me.clone(),
                requested: r.to_string(),
            }),
            (_, Some(r)) => Ok(r.to_string()),
            (_, None) => Err(Denied::NoActingPlugin),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin => f.write_str("admin"),
            Principal::Operator => f.write_str("operator"),
            Principal::Reader => f.write_str("reader"),
            Principal::Plugin(p) => write!(f, "plugin:{p}"),
        }
    }
}

/// What a request does, as far as access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Status, metrics, events, routing, the catalog.
    Observe,
    /// Run a command or an agent (`exec`, `ask`).
    Exec,
    /// Start, read or resume workflows and sagas.
    Workflows,
    StateRead,
    StateWrite,
    /// Tokens, dead letters and everything else.
    Admin,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Observe => "observe (status, metrics, events, route)",
            Action::Exec => "exec",
            Action::Workflows => "workflows",
            Action::StateRead => "read state",
            Action::StateWrite => "write state",
            Action::Admin => "administer",
        })
    }
}

/// The caller of one request: who, and by which credential (for the audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// The credential's name: `admin-token`, a declared token's name, the
    /// id of an issued one, or `open` when the API takes no tokens.
    pub credential: String,
}

impl Caller {
    /// Whoever calls an API that takes no tokens (a loopback laptop setup).
    pub fn open() -> Caller {
        Caller {
            principal: Principal::Admin,
            credential: "open".into(),
        }
    }

    /// Is this the anonymous caller of an API that takes no tokens?
    pub fn is_open(&self) -> bool {
        self.credential == "open"
    }

    /// `principal (credential)`, as the audit records it.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.principal, self.credential)
    }

    pub fn check(&self, a: Action) -> Result<(), Denied> {
        if self.principal.may(a) {
            Ok(())
        } else {
            Err(Denied::Role {
                principal: self.principal.clone(),
                action: a,
            })
        }
    }
}

/// Why an authenticated caller may not do something (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{principal} may not {action}")]
    Role {
        principal: Principal,
        action: Action,
    },
    #[error("a token of plugin {me} acts only as {me}, not as {requested}")]
    NotThatPlugin { me: String, requested: String },
    #[error("`as` (the acting plugin) is required")]
    NoActingPlugin,
}

/// Why a bearer token was not accepted (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("this node needs an API token: send `Authorization: Bearer <token>` (plexus --api-token or PLEXUS_API_TOKEN)")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("wrong API token")]
    Wrong,
    #[error("the token expired")]
    Expired,
    #[error("the token was revoked")]
    Revoked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_the_issue_says() {
        use Action::*;
        let all = [Observe, Exec, Workflows, StateRead, StateWrite, Admin];
        let allowed = |p: Principal| all.iter().filter(|a| p.may(**a)).count();
        assert_eq!(allowed(Principal::Admin), 6);
        assert!(Principal::Operator.may(Exec) && Principal::Operator.may(Workflows));
        assert!(!Principal::Operator.may(StateWrite) && !Principal::Operator.may(Admin));
        assert!(Principal::Reader.may(Observe));
        assert_eq!(allowed(Principal::Reader), 1, "a reader cannot exec");
        let p = Principal::Plugin("jira".into());
        assert!(p.may(StateWrite) && p.may(Exec) && !p.may(Workflows) && !p.may(Admin));
    }

    #[test]
    fn a_plugin_acts_only_as_itself() {
        let p = Principal::Plugin("jira".into());
        assert_eq!(p.acting_as(None).unwrap(), "jira");
        assert_eq!(p.acting_as(Some("jira")).unwrap(), "jira");
        assert_eq!(
            p.acting_as(Some("frontend")),
            Err(Denied::NotThatPlugin {
                me: "jira".into(),
                requested: "frontend".into()
            })
        );
        assert_eq!(
            Principal::Admin.acting_as(Some("frontend")).unwrap(),
            "frontend"
        );
        assert_eq!(
            Principal::Admin.acting_as(Some(" ")),
            Err(Denied::NoActingPlugin)
        );
    }

    #[test]
    fn principals_parse_and_print() {
        for s in ["admin", "operator", "reader", "plugin:jira-orchestrator"] {
            assert_eq!(Principal::parse(s).unwrap().to_string(), s);
        }
        for bad in ["", "root", "plugin:", "plugin:a b", "plugin:plexus"] {
            assert!(Principal::parse(bad).is_err(), "{bad}");
        }
    }
}
