//! One node's replica in memory: the CRDT [`Store`] and the [`LeaseTable`]
//! of its lease promises, with a record of what changed since it was last
//! made durable.
//!
//! The [`crate::Coordinator`] changes a replica in memory and says, in its
//! [`crate::Ready`], what must be durable before its messages and replies go
//! out; [`crate::DurableStore`] holds the replica and commits those changes
//! (`DurableStore::commit`). A test drives a replica without a disk and
//! calls [`Replica::take_changes`] where the node would commit.

use std::collections::BTreeSet;

use crate::audit::AuditRecord;
use crate::lease::LeaseTable;
use crate::store::{Store, StoreConfig};
use crate::types::NodeId;

/// A [`Store`] and a [`LeaseTable`] whose changes are tracked for
/// persistence.
#[derive(Clone, Debug)]
pub struct Replica {
    pub(crate) store: Store,
    pub(crate) leases: LeaseTable,
}

/// What changed in a replica since it was last made durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persist {
    /// Keys whose entry changed or was forgotten.
    pub keys: BTreeSet<String>,
    /// Lease names whose promise changed.
    pub leases: BTreeSet<String>,
    /// Audit records appended.
    pub audit_records: usize,
}

impl Persist {
    /// Nothing to persist?
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.leases.is_empty() && self.audit_records == 0
    }
}

/// The changes taken out of a replica to be written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys whose entry changed or was forgotten (write the current state,
    /// or delete the key if the store no longer holds it).
    pub keys: BTreeSet<String>,
    /// Audit records appended, oldest first.
    pub audit: Vec<AuditRecord>,
    /// Lease names whose promise changed.
    pub leases: BTreeSet<String>,
}

impl Replica {
    /// An empty replica of `node`.
    pub fn new(node: impl Into<NodeId>, cfg: StoreConfig) -> Self {
        Self::from_parts(Store::new(node, cfg), LeaseTable::new())
    }

    /// A replica of an existing store and lease table (change tracking
    /// starts now).
    pub fn from_parts(mut store: Store, leases: LeaseTable) -> Self {
        store.track_changes();
        Replica { store, leases }
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        self.store.node()
    }

    /// The CRDT store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The CRDT store, to change (the change is tracked for persistence).
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// This node's lease promises.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// This node's lease promises, to change (tracked for persistence).
    pub fn leases_mut(&mut self) -> &mut LeaseTable {
        &mut self.leases
    }

    /// What changed since the last [`Replica::take_changes`], without
    /// taking it.
    pub fn unpersisted(&self) -> Persist {
        Persist {
            keys: self.store.unpersisted_keys().cloned().unwrap_or_default(),
            leases: self.leases.dirty().clone(),
            audit_records: self.store.audit().unpersisted_len(),
        }
    }

    /// Take what changed, to write it (the record starts empty again).
    pub fn take_changes(&mut self) -> Changes {
        let (keys, audit) = self.store.take_changes();
        Changes {
            keys,
            audit,
            leases: self.leases.take_dirty(),
        }
    }
}
