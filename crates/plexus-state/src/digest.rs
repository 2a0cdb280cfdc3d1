//! Anti-entropy summaries.
//!
//! Two levels, so that two replicas that agree exchange a fixed 2 KiB and two
//! that differ in a few keys exchange only those keys' summaries:
//!
//! 1. [`Digest`]: [`BUCKETS`] bucket hashes; a key falls in bucket
//!    `hash(key) % BUCKETS`, and a bucket's hash is the wrapping sum of its
//!    keys' summary hashes (maintained incrementally on every change, so
//!    computing a digest costs O(buckets), not O(keys)).
//! 2. [`KeyDigest`]: for the buckets that differ, each key's generation and
//!    version vector. Comparing version vectors (not only hashes, as Akka
//!    Distributed Data does) tells which side is ahead, so only the side
//!    that has something new sends it, and only those entries.
//!
//! The hash is a fixed FNV-1a, identical on every build and platform.

use serde::{Deserialize, Serialize};

use crate::delta::Delta;
use crate::entry::EntryState;
use crate::types::{Gen, Version};

/// Number of top-level buckets.
pub const BUCKETS: usize = 256;

/// Stable 64-bit FNV-1a.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn bytes(mut self, b: &[u8]) -> Self {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    pub(crate) fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    pub(crate) fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    pub(crate) fn finish(self) -> u64 {
        // Final avalanche (from splitmix64) so sums of hashes stay spread.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Bucket of a key.
pub fn bucket_of(key: &str) -> u16 {
    (Fnv::new().str(key).finish() % BUCKETS as u64) as u16
}

/// Summary hash of one key's state: key, generation, tombstone flag and
/// version vector (the value is a function of the changes the version names,
/// so it need not be hashed).
pub(crate) fn summary_hash(key: &str, st: &EntryState) -> u64 {
    let mut h = Fnv::new()
        .str(key)
        .u64(st.gen)
        .u64(u64::from(st.is_tombstone()));
    for dot in st.version.iter() {
        h = h.str(dot.actor).u64(dot.counter);
    }
    h.finish()
}

/// Top-level digest: one hash per bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// `BUCKETS` bucket hashes.
    pub buckets: Vec<u64>,
    /// Number of keys (tombstones included).
    pub keys: u64,
}

impl Digest {
    /// Buckets whose hashes differ from `other`'s.
    pub fn differing(&self, other: &Digest) -> Vec<u16> {
        (0..BUCKETS)
            .filter(|&i| self.buckets.get(i) != other.buckets.get(i))
            .map(|i| i as u16)
            .collect()
    }
}

/// One key's summary in a [`KeyDigest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySummary {
    /// Key.
    pub key: String,
    /// Generation.
    pub gen: Gen,
    /// Version vector.
    pub version: Version,
    /// Summary hash.
    pub hash: u64,
}

/// Per-key summaries of some buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDigest {
    /// Buckets covered (a key of ours in one of these that the peer does not
    /// list is missing at the peer).
    pub buckets: Vec<u16>,
    /// Keys in those buckets.
    pub keys: Vec<KeySummary>,
}

/// What anti-entropy sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncItem {
    /// A delta (ACL-checked on apply).
    Delta(Delta),
    /// A full entry state (joined; peers are trusted nodes).
    State {
        /// Key.
        key: String,
        /// Its state.
        state: EntryState,
    },
}
