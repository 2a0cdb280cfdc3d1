//! One key's replicated state: generation, version vector and body.

use std::collections::BTreeMap;

use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};

use crate::types::{Access, Gen, Kind, PluginId, Stamp, Version};
use crate::value::{Value, View};

/// Access level and expiry of an entry, changed last-writer-wins by its owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Who may read and write.
    pub access: Access,
    /// Milliseconds timestamp after which the entry is invisible and, after a
    /// grace period, purged.
    pub expires_at: Option<u64>,
}

/// One creation of a key. Normally a key has one; two nodes that create the
/// same key concurrently (same generation) leave two, and the earliest stamp
/// wins ownership and access. Both are kept so that the join stays
/// associative; only the winner is visible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creation {
    /// Plugin that created the key: its owner.
    pub owner: PluginId,
    /// Access and expiry, last-writer-wins by stamp.
    pub meta: LWWReg<Meta, Stamp>,
}

/// A live entry: its creations and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// Creations by stamp; the first is the winner.
    pub creations: BTreeMap<Stamp, Creation>,
    /// The CRDT value.
    pub value: Value,
}

/// What an entry holds in its generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A live entry.
    Live(Live),
    /// Deleted (or expired and purged) at `at_ms`: wins over any concurrent
    /// change of the same generation, and is garbage-collected after the
    /// store's tombstone TTL.
    Tombstone {
        /// When it was deleted (origin clock), or when it expired.
        at_ms: u64,
    },
}

/// The full replicated state of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryState {
    /// Incarnation; a higher generation wins a join wholesale.
    pub gen: Gen,
    /// Every change of this generation, as dots (node, counter). Every change
    /// advances it, removals and deletes included, so two replicas that
    /// differ in any change have different versions.
    pub version: Version,
    /// The entry itself.
    pub body: Body,
}

impl EntryState {
    /// A state for a generation that has seen nothing yet.
    pub(crate) fn fresh(gen: Gen) -> Self {
        EntryState {
            gen,
            version: Version::new(),
            body: Body::Live(Live {
                creations: BTreeMap::new(),
                value: Value::Lww(None),
            }),
        }
    }

    /// Join `other` into `self`: commutative, associative, idempotent.
    pub fn join(&mut self, other: EntryState) {
        if other.gen > self.gen {
            *self = other;
            return;
        }
        if other.gen < self.gen {
            return;
        }
        self.version.merge(other.version);
        match (&mut self.body, other.body) {
            (Body::Tombstone { at_ms }, Body::Tombstone { at_ms: b }) => *at_ms = (*at_ms).max(b),
            (Body::Tombstone { .. }, Body::Live(_)) => {}
            (body @ Body::Live(_), tomb @ Body::Tombstone { .. }) => *body = tomb,
            (Body::Live(a), Body::Live(b)) => {
                for (stamp, c) in b.creations {
                    match a.creations.get_mut(&stamp) {
                        Some(mine) => mine.meta.merge(c.meta),
                        None => {
                            a.creations.insert(stamp, c);
                        }
                    }
                }
                a.value.join(b.value);
            }
        }
    }

    /// The live body, if not deleted.
    pub fn live(&self) -> Option<&Live> {
        match &self.body {
            Body::Live(l) => Some(l),
            Body::Tombstone { .. } => None,
        }
    }

    /// The winning creation (owner, meta) of a live entry.
    pub fn winner(&self) -> Option<(&Stamp, &Creation)> {
        self.live().and_then(|l| l.creations.first_key_value())
    }

    /// Live, created, and not expired at `now_ms`.
    pub fn is_visible(&self, now_ms: u64) -> bool {
        match self.winner() {
            Some((_, c)) => c.meta.val.expires_at.is_none_or(|e| now_ms < e),
            None => false,
        }
    }

    /// Is this a tombstone?
    pub fn is_tombstone(&self) -> bool {
        matches!(self.body, Body::Tombstone { .. })
    }

    /// Owner of the winning creation.
    pub fn owner(&self) -> Option<&PluginId> {
        self.winner().map(|(_, c)| &c.owner)
    }

    /// Meta (access, expiry) of the winning creation.
    pub fn meta(&self) -> Option<&Meta> {
        self.winner().map(|(_, c)| &c.meta.val)
    }

    /// Kind of the live value.
    pub fn kind(&self) -> Option<Kind> {
        self.live().map(|l| l.value.kind())
    }

    /// Plain-data read of the live value.
    pub fn view(&self) -> Option<View> {
        self.live().map(|l| l.value.view())
    }
}

/// Metadata of a visible entry, as shown to a reader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Owner plugin.
    pub owner: PluginId,
    /// Access level.
    pub access: Access,
    /// Value type.
    pub kind: Kind,
    /// Generation.
    pub gen: Gen,
    /// Version vector.
    pub version: Version,
    /// Expiry, if any.
    pub expires_at: Option<u64>,
    /// Stamp of the winning creation.
    pub created: Stamp,
}
