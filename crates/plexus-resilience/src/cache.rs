//! A bounded TTL cache of results, the last step before a default result.
//!
//! Entries expire `ttl` after they were inserted. When the cache is full, an
//! insert first drops expired entries, then the least recently used one.
//! Every operation takes `now`; nothing reads a clock.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use plexus_resilience::cache::ResultCache;
//!
//! let t0 = Instant::now();
//! let mut c = ResultCache::new(2, Duration::from_secs(60));
//! c.insert("weather:paris", "sunny", t0);
//! assert_eq!(c.get(&"weather:paris", t0 + Duration::from_secs(59)), Some(&"sunny"));
//! assert_eq!(c.get(&"weather:paris", t0 + Duration::from_secs(60)), None);
//! ```

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    expires_at: Instant,
    /// Position in the LRU order (larger = used more recently).
    used: u64,
    /// Unique per insert, to key the expiry index.
    id: u64,
}

/// TTL + capacity-bounded cache. Operations are O(log n).
#[derive(Debug, Clone)]
pub struct ResultCache<K, V> {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<K, Entry<V>>,
    /// `used` → key, oldest first.
    lru: BTreeMap<u64, K>,
    /// `(expires_at, id)` → key, soonest first.
    expiry: BTreeMap<(Instant, u64), K>,
    tick: u64,
}

impl<K: Hash + Eq + Clone, V> ResultCache<K, V> {
    /// A cache of at most `capacity` entries (0 stores nothing), each living
    /// `ttl` unless inserted with [`insert_with_ttl`](Self::insert_with_ttl).
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ResultCache {
            capacity,
            ttl,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            expiry: BTreeMap::new(),
            tick: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Stored entries, including expired ones not yet dropped.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inserts with the cache's TTL; returns the value previously stored
    /// under `key` (expired or not).
    pub fn insert(&mut self, key: K, value: V, now: Instant) -> Option<V> {
        self.insert_with_ttl(key, value, now, self.ttl)
    }

    pub fn insert_with_ttl(&mut self, key: K, value: V, now: Instant, ttl: Duration) -> Option<V> {
        let previous = self.remove(&key);
        if self.capacity == 0 {
            return previous;
        }
        if self.entries.len() >= self.capacity {
            self.purge_expired(now);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.expiry.remove(&(e.expires_at, e.id));
            }
        }
        let id = self.next_tick();
        let expires_at = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(u32::MAX.into()));
        self.lru.insert(id, key.clone());
        self.expiry.insert((expires_at, id), key.clone());
        self.entries.insert(
            key,
            Entry {
                value,
                expires_at,
                used: id,
                id,
            },
        );
        previous
    }

    /// The live value under `key`, marking it recently used. An expired entry
    /// is dropped and reads as absent.
    pub fn get<Q>(&mut self, key: &Q, now: Instant) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let expired = now >= self.entries.get(key)?.expires_at;
        if expired {
            self.remove(key);
            return None;
        }
        let tick = self.next_tick();
        let e = self.entries.get_mut(key)?;
        if let Some(k) = self.lru.remove(&e.used) {
            self.lru.insert(tick, k);
        }
        e.used = tick;
        Some(&e.value)
    }

    /// The live value under `key`, without touching the LRU order.
    pub fn peek<Q>(&self, key: &Q, now: Instant) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .get(key)
            .filter(|e| now < e.expires_at)
            .map(|e| &e.value)
    }

    /// How long the entry under `key` has left to live.
    pub fn time_to_live<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let e = self.entries.get(key)?;
        (now < e.expires_at).then(|| e.expires_at - now)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let e = self.entries.remove(key)?;
        self.lru.remove(&e.used);
        self.expiry.remove(&(e.expires_at, e.id));
        Some(e.value)
    }

    /// Drops every entry expired at `now`; returns how many.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(e) = self.entries.remove(&key) {
                self.lru.remove(&e.used);
            }
            n += 1;
        }
        n
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.lru.clear();
        self.expiry.clear();
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn ttl_expiry() {
        let t = Instant::now();
        let mut c = ResultCache::new(10, s(5));
        assert_eq!(c.insert("a", 1, t), None);
        assert_eq!(c.get("a", t + s(4)), Some(&1));
        assert_eq!(c.time_to_live("a", t + s(4)), Some(s(1)));
        assert_eq!(c.peek("a", t + s(5)), None, "expires exactly at ttl");
        assert_eq!(c.len(), 1, "peek does not drop");
        assert_eq!(c.get("a", t + s(5)), None);
        assert_eq!(c.len(), 0, "get drops the expired entry");
    }

    #[test]
    fn reinsert_refreshes_ttl_and_returns_old() {
        let t = Instant::now();
        let mut c = ResultCache::new(10, s(5));
        c.insert("a", 1, t);
        assert_eq!(c.insert("a", 2, t + s(4)), Some(1));
        assert_eq!(c.get("a", t + s(8)), Some(&2));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn evicts_least_recently_used() {
        let t = Instant::now();
        let mut c = ResultCache::new(2, s(100));
        c.insert("a", 1, t);
        c.insert("b", 2, t);
        assert_eq!(c.get("a", t), Some(&1), "a is now more recent than b");
        c.insert("c", 3, t);
        assert_eq!(c.peek("b", t), None, "b evicted");
        assert_eq!(c.peek("a", t), Some(&1));
        assert_eq!(c.peek("c", t), Some(&3));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn evicts_expired_before_live() {
        let t = Instant::now();
        let mut c = ResultCache::new(2, s(100));
        c.insert("live", 1, t);
        c.insert_with_ttl("short", 2, t, s(1));
        c.get("short", t); // most recently used, but expiring
        c.insert("new", 3, t + s(2));
        assert_eq!(
            c.peek("live", t + s(2)),
            Some(&1),
            "expired entry went first"
        );
        assert_eq!(c.peek("new", t + s(2)), Some(&3));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn purge_and_zero_capacity() {
        let t = Instant::now();
        let mut c = ResultCache::new(10, s(1));
        for i in 0..5 {
            c.insert(i, i, t + s(i));
        }
        assert_eq!(c.purge_expired(t + s(3)), 3);
        assert_eq!(c.len(), 2);
        assert_eq!(c.remove(&4), Some(4));
        c.clear();
        assert!(c.is_empty());

        let mut z = ResultCache::new(0, s(1));
        z.insert("a", 1, t);
        assert!(z.is_empty());
    }

    #[test]
    fn string_keys_borrow_as_str() {
        let t = Instant::now();
        let mut c: ResultCache<String, u32> = ResultCache::new(4, s(1));
        c.insert("k".to_string(), 7, t);
        assert_eq!(c.get("k", t), Some(&7));
    }

    #[test]
    fn indexes_stay_consistent() {
        let t = Instant::now();
        let mut c = ResultCache::new(5, s(10));
        for i in 0..1_000u64 {
            let now = t + Duration::from_millis(i * 37);
            let k = (i * 7919) % 13;
            match i % 3 {
                0 | 1 => {
                    c.insert(k, i, now);
                }
                _ => {
                    c.get(&k, now);
                }
            }
            assert!(c.len() <= 5);
            assert_eq!(c.lru.len(), c.len());
            assert_eq!(c.expiry.len(), c.len());
        }
    }
}
