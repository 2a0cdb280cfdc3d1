//! Identifiers, stamps, access levels, kinds and errors shared by the crate.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A cluster node's name; it is also the CRDT actor id of every change made
/// on that node.
pub type NodeId = String;

/// A plugin's name (`jira-orchestrator`, ...): the author and owner of entries.
pub type PluginId = String;

/// A per-key version vector (the entry's dot context).
pub type Version = crdts::VClock<NodeId>;

/// A globally unique, totally ordered marker: wall-clock milliseconds at the
/// origin, then the origin node, then the per-key dot counter of the change.
///
/// `(node, seq)` is unique per key, so two different changes never share a
/// stamp: this is what keeps last-writer-wins merges associative.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds at the origin node when the change was made.
    pub ts_ms: u64,
    /// Origin node.
    pub node: NodeId,
    /// The change's dot counter on that node (unique per key and generation).
    pub seq: u64,
}

/// Incarnation of a key: a key that is deleted (or expires) and created again
/// gets a higher generation, and a higher generation wins a merge wholesale.
///
/// The high 32 bits are a coarse epoch (`now_ms / epoch_ms`, a day by
/// default), the low 32 bits count re-creations inside that epoch. Two nodes
/// that create the same unknown key concurrently in the same epoch pick the
/// same generation, so their writes merge instead of one side being dropped;
/// a key re-created after its tombstone was garbage-collected (at least one
/// tombstone TTL later, and the epoch is never longer than that TTL) lands in
/// a later epoch and so above the old tombstone.
pub type Gen = u64;

/// Who may read and write an entry, besides its owner (who always may).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Any plugin reads; only the owner writes.
    #[default]
    Public,
    /// The plugins listed may read and write (the owner always may).
    Protected(BTreeSet<PluginId>),
    /// Only the owner reads or writes.
    Private,
}

impl Access {
    /// A protected access level for the given plugins.
    pub fn protected<I, S>(plugins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<PluginId>,
    {
        Access::Protected(plugins.into_iter().map(Into::into).collect())
    }

    /// May `plugin` read an entry owned by `owner`?
    pub fn can_read(&self, owner: &str, plugin: &str) -> bool {
        owner == plugin
            || match self {
                Access::Public => true,
                Access::Protected(list) => list.contains(plugin),
                Access::Private => false,
            }
    }

    /// May `plugin` change the value of an entry owned by `owner`?
    pub fn can_write(&self, owner: &str, plugin: &str) -> bool {
        owner == plugin
            || match self {
                Access::Public | Access::Private => false,
                Access::Protected(list) => list.contains(plugin),
            }
    }

    /// Total size of the plugin names listed (for the size limit).
    pub(crate) fn byte_len(&self) -> usize {
        match self {
            Access::Protected(list) => list.iter().map(|p| p.len()).sum(),
            _ => 0,
        }
    }
}

/// The CRDT type of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Last-writer-wins register holding a JSON document as text.
    Lww,
    /// Grow-only counter.
    GCounter,
    /// Counter that goes up and down.
    PnCounter,
    /// Observed-remove set of strings (add wins over a concurrent remove).
    Set,
    /// Map of fields, each a register, a counter or a set.
    Map,
}

impl Kind {
    /// All kinds, in merge rank order (a higher kind wins a merge against a
    /// concurrent creation of the same key with a lower kind).
    pub const ALL: [Kind; 5] = [
        Kind::Lww,
        Kind::GCounter,
        Kind::PnCounter,
        Kind::Set,
        Kind::Map,
    ];

    /// Name used on the wire and in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Lww => "lww",
            Kind::GCounter => "gcounter",
            Kind::PnCounter => "pncounter",
            Kind::Set => "orset",
            Kind::Map => "map",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = StateError;

    /// Parse a kind name; an unknown name is [`StateError::UnknownType`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lww" | "lww-register" | "register" => Ok(Kind::Lww),
            "gcounter" | "g-counter" => Ok(Kind::GCounter),
            "pncounter" | "pn-counter" | "counter" => Ok(Kind::PnCounter),
            "orset" | "or-set" | "set" => Ok(Kind::Set),
            "map" => Ok(Kind::Map),
            _ => Err(StateError::UnknownType(s.to_string())),
        }
    }
}

/// Why an operation was refused. On any error nothing stored changes (the
/// refusal itself is written to the audit log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    /// The value type named is not one the store knows.
    #[error("unknown value type `{0}`")]
    UnknownType(String),
    /// The key exists with another type.
    #[error("key `{key}` holds a {found}, not a {expected}")]
    TypeMismatch {
        /// Key operated on.
        key: String,
        /// Type the operation needs.
        expected: Kind,
        /// Type the key holds.
        found: Kind,
    },
    /// A value, member, field or key is larger than the configured limit.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large (`value`, `key`, ...).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The author may not do this to this key.
    #[error("plugin `{plugin}` may not {action} key `{key}`")]
    AccessDenied {
        /// Author of the refused change.
        plugin: PluginId,
        /// Key.
        key: String,
        /// `read`, `write`, `delete`, `change access of`, ...
        action: &'static str,
    },
    /// The key does not exist (or has expired).
    #[error("key `{0}` not found")]
    NotFound(String),
    /// `create` on a key that already exists.
    #[error("key `{0}` already exists")]
    AlreadyExists(String),
    /// Empty key, or a remote change that cannot be valid.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The durable store failed; the change was not acknowledged.
    #[error("storage: {0}")]
    Storage(String),
    /// A fencing token older than one already seen for this lease.
    #[error("lease `{name}`: token {token} is older than {highest}")]
    Fenced {
        /// Lease name.
        name: String,
        /// Token presented.
        token: u64,
        /// Highest token seen.
        highest: u64,
    },
}
