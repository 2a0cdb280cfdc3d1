//! The store persisted in redb.
//!
//! Every mutating call applies the change in memory, then commits the
//! changed keys, the new audit records and the changed lease promises in one
//! redb write transaction before returning. A commit that changes state
//! (entries or leases) uses [`redb::Durability::Immediate`] (fsync'd before
//! `commit` returns), so a local write is acknowledged only once it
//! survives `kill -9` or a power cut; a commit that only adds audit records
//! of refused changes uses `Eventual` (a later immediate commit makes them
//! durable too).
//!
//! If a commit fails, memory may be ahead of disk: the store then refuses
//! every further call with [`StateError::Storage`] until it is reopened,
//! which reloads the durable state (nothing unacknowledged was shipped).
//!
//! redb calls block on disk I/O: a node actor should run them on a blocking
//! thread (`tokio::task::spawn_blocking` or a dedicated thread).

use std::path::Path;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditQuery, AuditRecord};
use crate::delta::{Delta, StateEvent};
use crate::entry::EntryState;
use crate::lease::{Lease, LeaseRequest, LeaseTable, LeaseVote};
use crate::remote::RemoteOutcome;
use crate::replica::{Changes, Replica};
use crate::store::{Change, LocalOp, Store, StoreConfig};
use crate::sync::{GossipMsg, GossipOutput};
use crate::types::{NodeId, StateError};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_NODE: &str = "node";
const META_AUDIT_NEXT: &str = "audit_next_seq";
const META_FORMAT: &str = "format";
const FORMAT: u64 = 1;

/// Largest record decoded from disk (an entry state or audit record).
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// Configuration of a [`DurableStore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableConfig {
    /// The in-memory store's configuration.
    pub store: StoreConfig,
    /// Audit records kept on disk (older ones are deleted).
    pub audit_retention: u64,
}

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig {
            store: StoreConfig::default(),
            audit_retention: 100_000,
        }
    }
}

/// A [`Replica`] (a [`Store`] and a [`LeaseTable`]) persisted in a redb
/// file.
///
/// Either call the mutating methods here (each commits before it returns),
/// or change the replica through [`DurableStore::replica_mut`] (what a
/// [`crate::Coordinator`] does) and call [`DurableStore::commit`] before
/// acting on the change.
pub struct DurableStore {
    db: Database,
    replica: Replica,
    audit_retention: u64,
    poisoned: Option<String>,
}

fn storage(e: impl std::fmt::Display) -> StateError {
    StateError::Storage(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Storage(format!("corrupt {what}: {e}"))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StateError> {
    plexus_codec::encode_limited(v, MAX_RECORD).map_err(storage)
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StateError> {
    plexus_codec::decode_limited(b, MAX_RECORD).map_err(|e| corrupt(what, e))
}

fn read_u64(what: &str, b: &[u8]) -> Result<u64, StateError> {
    let arr: [u8; 8] = b.try_into().map_err(|_| corrupt(what, "not 8 bytes"))?;
    Ok(u64::from_le_bytes(arr))
}

impl DurableStore {
    /// Open (or create) the store at `path` for `node`. A file written by
    /// another node id is refused: a node's id is the CRDT actor of its
    /// changes and must not be shared. A node that lost its file must come
    /// back under a new id (e.g. with a new incarnation suffix).
    pub fn open(
        path: impl AsRef<Path>,
        node: impl Into<NodeId>,
        cfg: DurableConfig,
    ) -> Result<Self, StateError> {
        let node = node.into();
        let db = Database::create(path.as_ref()).map_err(storage)?;
        let mut store = Store::new(node.clone(), cfg.store);

        // Create the tables and claim the file for this node.
        let tx = db.begin_write().map_err(storage)?;
        {
            let mut meta = tx.open_table(META).map_err(storage)?;
            if let Some(v) = meta.get(META_FORMAT).map_err(storage)? {
                let f = read_u64("format", v.value())?;
                if f != FORMAT {
                    return Err(StateError::Storage(format!("unknown store format {f}")));
                }
            }
            let owner = meta
                .get(META_NODE)
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            match owner {
                Some(o) if o != node.as_bytes() => {
                    return Err(StateError::Invalid(format!(
                        "store file belongs to node `{}`, not `{node}`",
                        String::from_utf8_lossy(&o)
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert(META_NODE, node.as_bytes()).map_err(storage)?;
                    meta.insert(META_FORMAT, FORMAT.to_le_bytes().as_slice())
                        .map_err(storage)?;
                }
            }
            tx.open_table(ENTRIES).map_err(storage)?;
            tx.open_table(AUDIT).map_err(storage)?;
            tx.open_table(LEASES).map_err(storage)?;
        }
        tx.commit().map_err(storage)?;

        // Load.
        let rx = db.begin_read().map_err(storage)?;
        let mut states = Vec::new();
        for row in rx
            .open_table(ENTRIES)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (k, v) = row.map_err(storage)?;
            let state: EntryState = decode("entry", v.value())?;
            states.push((k.value().to_string(), state));
        }
        let next_seq = match rx
            .open_table(META)
            .map_err(storage)?
            .get(META_AUDIT_NEXT)
            .map_err(storage)?
        {
            Some(v) => read_u64("audit sequence", v.value())?,
            None => 0,
        };
        let keep = store.config().audit_capacity as u64;
        let mut audit = Vec::new();
        for row in rx
            .open_table(AUDIT)
            .map_err(storage)?
            .range(next_seq.saturating_sub(keep)..)
            .map_err(storage)?
        {
            let (_, v) = row.map_err(storage)?;
            audit.push(
                AuditRecord::decode_stored(v.value(), MAX_RECORD)
                    .map_err(|e| corrupt("audit record", e))?,
            );
        }
        let mut leases = Vec::new();
        for row in rx
            .open_table(LEASES)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (_, v) = row.map_err(storage)?;
            leases.push(decode::<Lease>("lease", v.value())?);
        }
        drop(rx);

        store.track_changes();
        store.restore(states, audit, next_seq);
        Ok(DurableStore {
            db,
            replica: Replica::from_parts(store, LeaseTable::restore(leases)),
            audit_retention: cfg.audit_retention.max(1),
            poisoned: None,
        })
    }

    /// The in-memory store, for reads (`get`, `keys`, `info`, `digest`,
    /// `state`, `covers`, ...). Refused after a failed commit.
    pub fn store(&self) -> Result<&Store, StateError> {
        self.check()?;
        Ok(&self.replica.store)
    }

    /// The lease promises of this node (acceptor side).
    pub fn leases(&self) -> Result<&LeaseTable, StateError> {
        self.check()?;
        Ok(&self.replica.leases)
    }

    /// The replica, to change in memory (by a [`crate::Coordinator`]).
    /// Nothing changed is durable until [`DurableStore::commit`] returned:
    /// commit before sending or answering anything the change justifies.
    /// Refused after a failed commit.
    pub fn replica_mut(&mut self) -> Result<&mut Replica, StateError> {
        self.check()?;
        Ok(&mut self.replica)
    }

    /// Commit what changed in the replica since the last commit (one
    /// transaction; fsync'd if entries or leases changed). On failure the
    /// store refuses every further call until reopened.
    pub fn commit(&mut self) -> Result<(), StateError> {
        self.check()?;
        self.persist()
    }

    /// [`Store::apply_local`], acknowledged (returned) only once durable.
    pub fn apply_local(
        &mut self,
        author: &str,
        key: &str,
        op: LocalOp,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.check()?;
        let res = self.replica.store.apply_local(author, key, op, now_ms);
        self.persist()?;
        res
    }

    /// [`Store::apply_remote`], persisted before returning.
    pub fn apply_remote(&mut self, delta: Delta, now_ms: u64) -> Result<RemoteOutcome, StateError> {
        self.check()?;
        let res = self.replica.store.apply_remote(delta, now_ms);
        self.persist()?;
        res
    }

    /// [`Store::handle_gossip`], persisted (one commit) before returning, so
    /// an ack sent after it covers only durable changes.
    pub fn handle_gossip(
        &mut self,
        from: &str,
        msg: GossipMsg,
        now_ms: u64,
        max_bytes: usize,
    ) -> Result<GossipOutput, StateError> {
        self.check()?;
        let out = self
            .replica
            .store
            .handle_gossip(from, msg, now_ms, max_bytes);
        self.persist()?;
        Ok(out)
    }

    /// [`Store::merge_state`], persisted before returning.
    pub fn merge_state(
        &mut self,
        from: &str,
        key: &str,
        state: EntryState,
        now_ms: u64,
    ) -> Result<Vec<StateEvent>, StateError> {
        self.check()?;
        let res = self.replica.store.merge_state(from, key, state, now_ms);
        self.persist()?;
        res
    }

    /// [`Store::purge`], persisted before returning.
    pub fn purge(&mut self, now_ms: u64) -> Result<Vec<StateEvent>, StateError> {
        self.check()?;
        let events = self.replica.store.purge(now_ms);
        self.persist()?;
        Ok(events)
    }

    /// [`LeaseTable::vote`], with a grant made durable before the vote is
    /// returned (an acceptor that restarts keeps its promises).
    pub fn lease_vote(&mut self, req: &LeaseRequest, now_ms: u64) -> Result<LeaseVote, StateError> {
        self.check()?;
        let vote = self.replica.leases.vote(req, now_ms);
        self.persist()?;
        Ok(vote)
    }

    /// [`LeaseTable::release`], persisted.
    pub fn lease_release(
        &mut self,
        name: &str,
        holder: &str,
        token: u64,
        now_ms: u64,
    ) -> Result<bool, StateError> {
        self.check()?;
        let changed = self.replica.leases.release(name, holder, token, now_ms);
        self.persist()?;
        Ok(changed)
    }

    /// Audit records matching `q`, read from disk (up to
    /// [`DurableConfig::audit_retention`] records, survives restarts).
    pub fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StateError> {
        self.check()?;
        let rx = self.db.begin_read().map_err(storage)?;
        let table = rx.open_table(AUDIT).map_err(storage)?;
        // Newest first, so that a `limit` stops the scan early.
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)?.rev() {
            let (_, v) = row.map_err(storage)?;
            let r = AuditRecord::decode_stored(v.value(), MAX_RECORD)
                .map_err(|e| corrupt("audit record", e))?;
            if q.matches(&r) {
                out.push(r);
                if q.limit > 0 && out.len() >= q.limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Number of audit records on disk.
    pub fn audit_len(&self) -> Result<u64, StateError> {
        let rx = self.db.begin_read().map_err(storage)?;
        rx.open_table(AUDIT)
            .map_err(storage)?
            .len()
            .map_err(storage)
    }

    fn check(&self) -> Result<(), StateError> {
        match &self.poisoned {
            Some(why) => Err(StateError::Storage(format!(
                "store unusable after a failed commit ({why}); reopen it"
            ))),
            None => Ok(()),
        }
    }

    /// Commit what changed since the last commit; on failure, poison.
    fn persist(&mut self) -> Result<(), StateError> {
        let res = self.try_persist();
        if let Err(e) = &res {
            tracing::error!(error = %e, "state commit failed; store refuses further calls until reopened");
            self.poisoned = Some(e.to_string());
        }
        res
    }

    fn try_persist(&mut self) -> Result<(), StateError> {
        let Changes {
            keys,
            audit,
            leases,
        } = self.replica.take_changes();
        if keys.is_empty() && audit.is_empty() && leases.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(storage)?;
        tx.set_durability(if keys.is_empty() && leases.is_empty() {
            Durability::Eventual
        } else {
            Durability::Immediate
        });
        {
            let mut entries = tx.open_table(ENTRIES).map_err(storage)?;
            for key in &keys {
                match self.replica.store.state(key) {
                    Some(st) => {
                        entries
                            .insert(key.as_str(), encode(st)?.as_slice())
                            .map_err(storage)?;
                    }
                    None => {
                        entries.remove(key.as_str()).map_err(storage)?;
                    }
                }
            }
            let mut table = tx.open_table(LEASES).map_err(storage)?;
            for name in &leases {
                if let Some(l) = self.replica.leases.get(name) {
                    table
                        .insert(name.as_str(), encode(l)?.as_slice())
                        .map_err(storage)?;
                }
            }
            if !audit.is_empty() {
                let mut table = tx.open_table(AUDIT).map_err(storage)?;
                for r in &audit {
                    table
                        .insert(r.seq, encode(r)?.as_slice())
                        .map_err(storage)?;
                }
                let next = self.replica.store.audit().next_seq();
                let cut = next.saturating_sub(self.audit_retention);
                if cut > 0 {
                    table.retain_in(..cut, |_, _| false).map_err(storage)?;
                }
                let mut meta = tx.open_table(META).map_err(storage)?;
                meta.insert(META_AUDIT_NEXT, next.to_le_bytes().as_slice())
                    .map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)
    }
}
