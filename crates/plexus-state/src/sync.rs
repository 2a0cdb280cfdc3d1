//! Anti-entropy: the gossip protocol between two replicas, and packing of
//! deltas and entry states into messages under a byte limit.
//!
//! A round between `A` (initiator) and `B`:
//!
//! 1. `A → B` [`GossipMsg::Digest`]: `A`'s [`BUCKETS`] bucket hashes
//!    (about 2.3 KiB, whatever the store's size).
//! 2. `B → A` [`GossipMsg::Summaries`] `{ reply: true }`: for the buckets
//!    whose hashes differ, `B`'s per-key generation and version (nothing if
//!    none differ: a round between equal replicas costs one message).
//! 3. `A → B` [`GossipMsg::Items`]: what `B` lacks, and
//!    [`GossipMsg::Summaries`] `{ reply: false }`: `A`'s summaries of the
//!    same buckets.
//! 4. `B → A` [`GossipMsg::Items`]: what `A` lacks.
//!
//! What a side lacks is sent as the exact deltas it is missing when the
//! sender still has them in its per-key log (they are ACL-checked on arrival
//! like any delta), else as the whole entry state. Every message is kept
//! under the caller's byte limit: items and summaries are split over several
//! messages. Which peers and how often (fan-out, interval) is the node's
//! configuration; this module is pure.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::delta::{Delta, StateEvent};
use crate::digest::{bucket_of, Digest, KeyDigest, KeySummary, SyncItem, BUCKETS};
use crate::store::{Slot, Store};
use crate::types::StateError;

/// Bytes an [`GossipMsg::Items`] or [`GossipMsg::Summaries`] message adds
/// around its contents (enum tag, lengths, flag), with margin.
const MSG_OVERHEAD: usize = 32;

/// The smallest message limit the protocol works with: a digest must fit.
pub const MIN_MESSAGE_BYTES: usize = 4 * 1024;

/// A message of the anti-entropy protocol (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// Start of a round: the sender's bucket hashes.
    Digest(Digest),
    /// Per-key summaries of buckets that differ.
    Summaries {
        /// The summaries.
        summary: KeyDigest,
        /// Answer with your own summaries of the same buckets as well as
        /// with the items the sender lacks.
        reply: bool,
    },
    /// Deltas or entry states the receiver lacks (also used to push fresh
    /// local deltas eagerly).
    Items(Vec<SyncItem>),
}

impl GossipMsg {
    /// Encode with the Plexus codec, refusing results over `max_bytes`.
    pub fn encode(&self, max_bytes: usize) -> Result<Vec<u8>, StateError> {
        plexus_codec::encode_limited(self, max_bytes).map_err(|e| match e {
            plexus_codec::CodecError::TooLarge { size, limit } => StateError::TooLarge {
                what: "gossip message",
                size,
                limit,
            },
            other => StateError::Invalid(other.to_string()),
        })
    }

    /// Decode bytes received from a peer (at most `max_bytes`); malformed
    /// input is [`StateError::Invalid`], never a panic.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Self, StateError> {
        plexus_codec::decode_limited(bytes, max_bytes).map_err(|e| match e {
            plexus_codec::CodecError::TooLarge { size, limit } => StateError::TooLarge {
                what: "gossip message",
                size,
                limit,
            },
            other => StateError::Invalid(format!("malformed gossip message: {other}")),
        })
    }
}

/// What handling a gossip message produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipOutput {
    /// Messages to send back to the peer, each under the byte limit.
    pub replies: Vec<GossipMsg>,
    /// Events of every change applied (publish them on the bus).
    pub events: Vec<StateEvent>,
    /// Items refused (ACL, integrity); each was audited.
    pub rejected: Vec<StateError>,
    /// Keys whose state alone exceeds the byte limit and so could not be
    /// sent (a configuration problem: raise the limit or shrink the entry).
    pub oversized: Vec<String>,
}

/// Items packed into messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// [`GossipMsg::Items`] messages, each encoding to at most the limit.
    pub messages: Vec<GossipMsg>,
    /// Keys of items that alone exceed the limit (not packed).
    pub oversized: Vec<String>,
}

/// Pack items into [`GossipMsg::Items`] messages of at most `max_bytes`
/// encoded bytes each, keeping their order (deltas of one key stay in
/// causal order).
pub fn pack_items(items: Vec<SyncItem>, max_bytes: usize) -> Packed {
    let budget = max_bytes.saturating_sub(MSG_OVERHEAD);
    let mut out = Packed::default();
    let mut cur = Vec::new();
    let mut used = 0usize;
    for item in items {
        let size = match plexus_codec::encode_limited(&item, budget) {
            Ok(b) => b.len(),
            Err(_) => {
                out.oversized.push(item_key(&item).to_string());
                continue;
            }
        };
        if !cur.is_empty() && used + size > budget {
            out.messages
                .push(GossipMsg::Items(std::mem::take(&mut cur)));
            used = 0;
        }
        used += size;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.messages.push(GossipMsg::Items(cur));
    }
    out
}

/// Pack fresh local deltas (a [`crate::Change`]'s) for eager push to peers.
pub fn pack_deltas(deltas: Vec<Delta>, max_bytes: usize) -> Packed {
    pack_items(deltas.into_iter().map(SyncItem::Delta).collect(), max_bytes)
}

fn item_key(item: &SyncItem) -> &str {
    match item {
        SyncItem::Delta(d) => &d.key,
        SyncItem::State { key, .. } => key,
    }
}

/// Split a key digest into [`GossipMsg::Summaries`] messages of at most
/// `max_bytes`, whole buckets per message (a bucket whose summaries alone
/// exceed the limit is sent alone and will be refused by the codec: with a
/// 4 MiB limit that takes some 50,000 keys in one bucket).
pub fn pack_summaries(kd: KeyDigest, reply: bool, max_bytes: usize) -> Vec<GossipMsg> {
    let budget = max_bytes.saturating_sub(MSG_OVERHEAD);
    let mut by_bucket: Vec<(u16, Vec<KeySummary>)> =
        kd.buckets.iter().map(|b| (*b, Vec::new())).collect();
    let index: HashMap<u16, usize> = kd
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| (*b, i))
        .collect();
    for s in kd.keys {
        if let Some(i) = index.get(&bucket_of(&s.key)) {
            by_bucket[*i].1.push(s);
        }
    }
    let mut out = Vec::new();
    let mut cur = KeyDigest::default();
    let mut used = 0usize;
    for (b, keys) in by_bucket {
        let size = 3 + keys
            .iter()
            .map(|k| plexus_codec::encode(k).map(|v| v.len()).unwrap_or(budget))
            .sum::<usize>();
        if !cur.buckets.is_empty() && used + size > budget {
            out.push(GossipMsg::Summaries {
                summary: std::mem::take(&mut cur),
                reply,
            });
            used = 0;
        }
        used += size;
        cur.buckets.push(b);
        cur.keys.extend(keys);
    }
    if !cur.buckets.is_empty() {
        out.push(GossipMsg::Summaries {
            summary: cur,
            reply,
        });
    }
    out
}

fn bucket_mask(buckets: &[u16]) -> Vec<bool> {
    let mut m = vec![false; BUCKETS];
    for b in buckets {
        if let Some(x) = m.get_mut(*b as usize) {
            *x = true;
        }
    }
    m
}

impl Store {
    /// Top-level digest (fixed size; O(buckets), maintained incrementally).
    pub fn digest(&self) -> Digest {
        Digest {
            buckets: self.buckets.clone(),
            keys: self.entries.len() as u64,
        }
    }

    /// The message that starts a gossip round with a peer.
    pub fn gossip_digest(&self) -> GossipMsg {
        GossipMsg::Digest(self.digest())
    }

    /// Per-key summaries of the keys in `buckets` (ids out of range and
    /// repeats, which only a faulty peer sends, are ignored).
    pub fn key_digest(&self, buckets: &[u16]) -> KeyDigest {
        let wanted = bucket_mask(buckets);
        KeyDigest {
            buckets: (0..BUCKETS as u16)
                .filter(|b| wanted[*b as usize])
                .collect(),
            keys: self
                .entries
                .iter()
                .filter(|(_, s)| wanted[s.bucket as usize])
                .map(|(k, s)| KeySummary {
                    key: k.clone(),
                    gen: s.state.gen,
                    version: s.state.version.clone(),
                    hash: s.hash,
                })
                .collect(),
        }
    }

    /// What this replica has that the peer (described by `peer`) lacks, in
    /// the buckets `peer` covers: for each key where this replica is ahead
    /// or concurrent, the exact deltas the peer lacks when all are still in
    /// the key's delta log, else the whole entry state.
    pub fn missing_for(&self, peer: &KeyDigest) -> Vec<SyncItem> {
        let wanted = bucket_mask(&peer.buckets);
        let theirs: HashMap<&str, &KeySummary> =
            peer.keys.iter().map(|s| (s.key.as_str(), s)).collect();
        let mut out = Vec::new();
        for (key, slot) in &self.entries {
            if !wanted[slot.bucket as usize] {
                continue;
            }
            let st = &slot.state;
            match theirs.get(key.as_str()) {
                None => out.push(whole(key, slot)),
                Some(t) if st.gen != t.gen => {
                    if st.gen > t.gen {
                        out.push(whole(key, slot));
                    }
                }
                Some(t) if st.version <= t.version => {
                    // Equal versions but different hashes: one side purged an
                    // expired entry (no dot); the state carries it.
                    if st.version == t.version && slot.hash != t.hash {
                        out.push(whole(key, slot));
                    }
                }
                Some(t) => match missing_deltas(slot, &t.version) {
                    Some(ds) => out.extend(ds.into_iter().map(SyncItem::Delta)),
                    None => out.push(whole(key, slot)),
                },
            }
        }
        out
    }

    /// Apply items sent by peer `from` (deltas through [`Store::apply_remote`],
    /// states through [`Store::merge_state`]), in order.
    pub fn apply_items(
        &mut self,
        from: &str,
        items: Vec<SyncItem>,
        now_ms: u64,
    ) -> (Vec<StateEvent>, Vec<StateError>) {
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for item in items {
            let res = match item {
                SyncItem::Delta(d) => self.apply_remote(d, now_ms).map(|o| o.events),
                SyncItem::State { key, state } => self.merge_state(from, &key, state, now_ms),
            };
            match res {
                Ok(evs) => events.extend(evs),
                Err(e) => rejected.push(e),
            }
        }
        (events, rejected)
    }

    /// Handle one gossip message from peer `from`; replies are kept under
    /// `max_bytes` each (at least [`MIN_MESSAGE_BYTES`]).
    pub fn handle_gossip(
        &mut self,
        from: &str,
        msg: GossipMsg,
        now_ms: u64,
        max_bytes: usize,
    ) -> GossipOutput {
        let max_bytes = max_bytes.max(MIN_MESSAGE_BYTES);
        let mut out = GossipOutput::default();
        match msg {
            GossipMsg::Digest(theirs) => {
                let differing = self.digest().differing(&theirs);
                if !differing.is_empty() {
                    out.replies = pack_summaries(self.key_digest(&differing), true, max_bytes);
                }
            }
            GossipMsg::Summaries { summary, reply } => {
                let packed = pack_items(self.missing_for(&summary), max_bytes);
                out.replies = packed.messages;
                out.oversized = packed.oversized;
                if reply {
                    let mine = self.key_digest(&summary.buckets);
                    out.replies.extend(pack_summaries(mine, false, max_bytes));
                }
            }
            GossipMsg::Items(items) => {
                let (events, rejected) = self.apply_items(from, items, now_ms);
                out.events = events;
                out.rejected = rejected;
            }
        }
        out
    }
}

fn whole(key: &str, slot: &Slot) -> SyncItem {
    SyncItem::State {
        key: key.to_string(),
        state: slot.state.clone(),
    }
}

/// The deltas of `slot`'s log the peer (at `theirs`, same generation) lacks,
/// in log (causal) order, if the log holds every one of them.
fn missing_deltas(slot: &Slot, theirs: &crate::types::Version) -> Option<Vec<Delta>> {
    let needed: u64 = slot
        .state
        .version
        .iter()
        .map(|dot| dot.counter.saturating_sub(theirs.get(dot.actor)))
        .sum();
    if needed == 0 || needed > slot.log.len() as u64 {
        return None;
    }
    let ds: Vec<Delta> = slot
        .log
        .iter()
        .filter(|d| d.counter > theirs.get(&d.origin))
        .cloned()
        .collect();
    (ds.len() as u64 == needed).then_some(ds)
}
