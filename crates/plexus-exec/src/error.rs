//! Why a call failed, typed: the layers decide on these cases, and the HTTP
//! edge alone turns them into problem documents.

use plexus_handler::HandlerError;
use serde::{Deserialize, Serialize};

use crate::call::Attempt;

/// Why one try (or the whole call) failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum ExecError {
    /// The caller's fault: a malformed request (priority, input).
    #[error("{0}")]
    BadRequest(String),
    #[error("input of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("unknown plugin {plugin:?}; the cluster hosts: {}", hosted.join(", "))]
    UnknownPlugin { plugin: String, hosted: Vec<String> },
    #[error("plugin {plugin:?} has no command {command:?}; its commands: {}", known.join(", "))]
    UnknownCommand {
        plugin: String,
        command: String,
        known: Vec<String>,
    },
    #[error("plugin {plugin:?} is in the catalog but no node hosts it")]
    NotHosted { plugin: String },
    /// No host can take it now (its node is down, it failed, it restarts).
    #[error("plugin {plugin:?} is unavailable: {why}")]
    Unavailable { plugin: String, why: String },
    /// Every host that could take it has its breaker open.
    #[error("circuit breaker of plugin {plugin:?} is open (on {}){}", nodes.join(", "), retry_after(*retry_after_ms))]
    BreakerOpen {
        plugin: String,
        nodes: Vec<String>,
        retry_after_ms: Option<u64>,
    },
    /// The host's node went down after the request left: it may have run.
    #[error("plugin {plugin:?}: its node {node} went down before answering (the command may or may not have run there)")]
    NodeDown { plugin: String, node: String },
    /// No answer before the deadline: it may have run.
    #[error("no answer from plugin {plugin:?} within the request's {budget_ms} ms")]
    Timeout { plugin: String, budget_ms: u64 },
    #[error("plugin host of {plugin} crashed while handling the request; it is being restarted")]
    Crashed { plugin: String, node: String },
    /// The handler ran the command and it failed.
    #[error("{error}")]
    Plugin {
        plugin: String,
        node: String,
        error: HandlerError,
        duration_ms: f64,
    },
    /// The host answered something that does not decode.
    #[error("malformed reply from {node}: {message}")]
    BadReply { node: String, message: String },
    /// A node service this call needs is restarting or did not answer.
    #[error("{0}")]
    Busy(String),
    /// The caller may not call this plugin (the plugins' `[routing]`
    /// permissions); the same everywhere, so never retried or re-routed.
    #[error("{why}")]
    Forbidden { plugin: String, why: String },
}

fn retry_after(ms: Option<u64>) -> String {
    ms.map(|ms| format!("; retry after {ms} ms"))
        .unwrap_or_default()
}

impl ExecError {
    /// Whether another try, node or plugin may succeed where this failed
    /// (unlike a bad request, which fails the same way everywhere).
    pub fn may_pass_elsewhere(&self) -> bool {
        match self {
            ExecError::BadRequest(_)
            | ExecError::TooLarge { .. }
            | ExecError::UnknownPlugin { .. }
            | ExecError::UnknownCommand { .. }
            | ExecError::Forbidden { .. } => false,
            ExecError::Plugin { error, .. } => !matches!(
                error,
                HandlerError::BadInput(_) | HandlerError::UnknownCommand { .. }
            ),
            _ => true,
        }
    }

    /// Whether the command may have run although no answer said so.
    pub fn leaves_doubt(&self) -> bool {
        matches!(
            self,
            ExecError::Timeout { .. }
                | ExecError::NodeDown { .. }
                | ExecError::Plugin {
                    error: HandlerError::Timeout(_),
                    ..
                }
        )
    }

    /// Whether the same call may succeed if tried again.
    pub fn retryable(&self) -> bool {
        match self {
            ExecError::Timeout { .. } => true,
            ExecError::Plugin { error, .. } => error.retryable(),
            _ => false,
        }
    }

    /// Whether the plugin's handler ran the request and answered (past its
    /// breaker and its effect log): such an answer settles an earlier doubt.
    pub fn answered_by_handler(&self) -> bool {
        matches!(self, ExecError::Plugin { error, .. } if !matches!(error, HandlerError::Timeout(_)))
    }

    /// Whether the plugin ran the request (its outcome says something about
    /// the plugin).
    pub fn reached_plugin(&self) -> bool {
        matches!(
            self,
            ExecError::Plugin { .. } | ExecError::Crashed { .. } | ExecError::Timeout { .. }
        )
    }

    /// The node that answered, if one did.
    pub fn node(&self) -> Option<&str> {
        match self {
            ExecError::Plugin { node, .. } | ExecError::Crashed { node, .. } => Some(node),
            _ => None,
        }
    }
}

/// A call that failed, with what the layers learnt on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: ExecError,
    /// The command may have run (a try timed out or lost its node, and no
    /// later answer settled it). Re-send with the same idempotency key to
    /// learn the outcome.
    pub in_doubt: bool,
    /// A try reached the plugin's handler and was answered after any try in
    /// doubt: the key had no successful run then.
    pub answered: bool,
    pub retries: u32,
    /// Every target tried, in order.
    pub attempts: Vec<Attempt>,
}

impl Failure {
    /// The error's message, saying how many retries came before it.
    pub fn detail(&self) -> String {
        match self.retries {
            0 => self.error.to_string(),
            n => format!("{} (after {n} retries)", self.error),
        }
    }
}

impl From<ExecError> for Failure {
    fn from(error: ExecError) -> Failure {
        Failure {
            in_doubt: error.leaves_doubt(),
            answered: error.answered_by_handler(),
            error,
            retries: 0,
            attempts: Vec::new(),
        }
    }
}
