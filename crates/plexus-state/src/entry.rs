//! One key's replicated state: generation, version vector and body.

use std::collections::BTreeMap;

use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};

use crate::types::{Access, Gen, Kind, PluginId, Stamp, Version};
use crate::value::{Value, View};

/// Initial access level and expiry of an entry (carried by its creation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Who may read and write.
    pub access: Access,
    /// Milliseconds timestamp from which the entry is invisible; it is purged
    /// to a tombstone [`crate::StoreConfig::expiry_grace_ms`] later.
    pub expires_at: Option<u64>,
}

/// One creation of a key. Normally a key has one; two nodes that create the
/// same key concurrently (same generation) leave two, and the earliest stamp
/// wins ownership. Both are kept so that the join stays associative; only the
/// winner is visible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creation {
    /// Plugin that created the key: its owner (never changes).
    pub owner: PluginId,
    /// Every access level this creation has had, keyed by the stamp of the
    /// change that set it (the first is the creation's own stamp). The
    /// current level is the last. The history is what makes remote ACL
    /// checks deterministic: a write is judged under the latest level its
    /// author had seen (the latest whose stamp's dot is in the write's
    /// dependencies), so every replica reaches the same verdict.
    pub access: BTreeMap<Stamp, Access>,
    /// Expiry, last-writer-wins by stamp.
    pub expiry: LWWReg<Option<u64>, Stamp>,
}

/// Access level used when a (malformed) creation has no history: deny.
static DENY: Access = Access::Private;

impl Creation {
    /// A creation by `owner` stamped `stamp` with initial `meta`.
    pub fn new(owner: PluginId, stamp: Stamp, meta: Meta) -> Self {
        Creation {
            owner,
            access: BTreeMap::from([(stamp.clone(), meta.access)]),
            expiry: LWWReg {
                val: meta.expires_at,
                marker: stamp,
            },
        }
    }

    /// The current access level.
    pub fn current_access(&self) -> &Access {
        self.access.values().next_back().unwrap_or(&DENY)
    }

    /// Stamp of the current access level.
    pub fn access_stamp(&self) -> Option<&Stamp> {
        self.access.keys().next_back()
    }

    /// The access level a change with dependencies `deps` was made under:
    /// the latest level whose setting change is in `deps`.
    pub fn access_at(&self, deps: &Version) -> &Access {
        self.access
            .iter()
            .rev()
            .find(|(s, _)| deps.get(&s.node) >= s.seq)
            .map(|(_, a)| a)
            .unwrap_or(&DENY)
    }

    /// The current expiry.
    pub fn expires_at(&self) -> Option<u64> {
        self.expiry.val
    }

    /// Join another replica's copy of the same creation.
    pub fn join(&mut self, other: Creation) {
        for (s, a) in other.access {
            self.access.entry(s).or_insert(a);
        }
        self.expiry.merge(other.expiry);
    }
}

/// A live entry: its creations and one value per owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// Creations by stamp; the first is the winner.
    pub creations: BTreeMap<Stamp, Creation>,
    /// The CRDT value written under each owner's creations. Writes go to the
    /// value of the owner of the creation they target, and readers see the
    /// winner's owner's value, so the data of a plugin that lost a creation
    /// race is never shown under the winner's access level.
    pub values: BTreeMap<PluginId, Value>,
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
                values: BTreeMap::new(),
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
                        Some(mine) => mine.join(c),
                        None => {
                            a.creations.insert(stamp, c);
                        }
                    }
                }
                for (owner, v) in b.values {
                    match a.values.get_mut(&owner) {
                        Some(mine) => mine.join(v),
                        None => {
                            a.values.insert(owner, v);
                        }
                    }
                }
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

    /// The winning creation of a live entry.
    pub fn winner(&self) -> Option<(&Stamp, &Creation)> {
        self.live().and_then(|l| l.creations.first_key_value())
    }

    /// Live, created, and not expired at `now_ms`.
    pub fn is_visible(&self, now_ms: u64) -> bool {
        match self.winner() {
            Some((_, c)) => c.expires_at().is_none_or(|e| now_ms < e),
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

    /// Current access level of the winning creation.
    pub fn access(&self) -> Option<&Access> {
        self.winner().map(|(_, c)| c.current_access())
    }

    /// Expiry of the winning creation.
    pub fn expires_at(&self) -> Option<u64> {
        self.winner().and_then(|(_, c)| c.expires_at())
    }

    /// The visible value: the one written under the winner's owner.
    pub fn value(&self) -> Option<&Value> {
        let live = self.live()?;
        let (_, c) = live.creations.first_key_value()?;
        live.values.get(&c.owner)
    }

    /// Kind of the visible value.
    pub fn kind(&self) -> Option<Kind> {
        self.value().map(Value::kind)
    }

    /// Plain-data read of the visible value.
    pub fn view(&self) -> Option<View> {
        self.value().map(Value::view)
    }

    /// Can `plugin` read this entry (live and allowed by the current
    /// access level; expiry is not considered)?
    pub fn readable_by(&self, plugin: &str) -> bool {
        self.winner()
            .is_some_and(|(_, c)| c.current_access().can_read(&c.owner, plugin))
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
