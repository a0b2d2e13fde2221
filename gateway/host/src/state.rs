//! In-memory shared state with TTL, sharded and bounded (the embedded default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// One shard: key → (value, expiry).
type Shard = Mutex<HashMap<String, (Vec<u8>, Instant)>>;

/// A locked shard.
type ShardGuard<'a> = std::sync::MutexGuard<'a, HashMap<String, (Vec<u8>, Instant)>>;

/// Key-value state with expiry.
#[derive(Debug)]
pub struct MemoryState {
    shards: Vec<Shard>,
    per_shard: usize,
}

impl MemoryState {
    /// At most `capacity` entries in all.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> Option<&Shard> {
        self.shards.get(self.shard_index(key))
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let map = self.shard(key)?.lock().ok()?;
        map.get(key)
            .filter(|(_, exp)| Instant::now() < *exp)
            .map(|(v, _)| v.clone())
    }

    /// Stores `value` for `ttl`.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        let Some(shard) = self.shard(key) else { return };
        let Ok(mut map) = shard.lock() else { return };
        let now = Instant::now();
        if map.len() >= self.per_shard {
            map.retain(|_, (_, exp)| now < *exp);
            if map.len() >= self.per_shard
                && let Some(victim) = map.keys().next().cloned()
            {
                map.remove(&victim);
            }
        }
        map.insert(key.to_owned(), (value, now + ttl));
    }

    /// Adds `delta` to the counter at `key` (an 8-byte big-endian integer), creating it
    /// with `ttl`; returns the new value.
    pub fn increment(&self, key: &str, delta: i64, ttl: Duration) -> i64 {
        let Some(shard) = self.shard(key) else {
            return delta;
        };
        let Ok(mut map) = shard.lock() else {
            return delta;
        };
        let now = Instant::now();
        let entry = map
            .entry(key.to_owned())
            .or_insert_with(|| (0i64.to_be_bytes().to_vec(), now + ttl));
        if now >= entry.1 {
            *entry = (0i64.to_be_bytes().to_vec(), now + ttl);
        }
        let current = <[u8; 8]>::try_from(entry.0.as_slice())
            .map(i64::from_be_bytes)
            .unwrap_or(0);
        let next = current.saturating_add(delta);
        entry.0 = next.to_be_bytes().to_vec();
        next
    }

    /// GCRA over `checks`, all or nothing, on the gateway's clock: the shards involved are
    /// locked together (in index order, so concurrent checks cannot deadlock).
    pub fn gcra(
        &self,
        checks: &[portcullis_core::limits::LimitCheck],
        now: portcullis_core::Timestamp,
    ) -> Vec<portcullis_core::limits::LimitStatus> {
        let now_us = now.unix_micros();
        let mut indices: Vec<usize> = checks.iter().map(|c| self.shard_index(&c.key)).collect();
        indices.sort_unstable();
        indices.dedup();
        let mut guards: Vec<(usize, ShardGuard<'_>)> = Vec::with_capacity(indices.len());
        for i in indices {
            if let Some(Ok(g)) = self.shards.get(i).map(|s| s.lock()) {
                guards.push((i, g));
            }
        }
        let instant = Instant::now();
        let tats: Vec<Option<u64>> = checks
            .iter()
            .map(|c| {
                let i = self.shard_index(&c.key);
                guards
                    .iter()
                    .find(|(j, _)| *j == i)
                    .and_then(|(_, map)| map.get(&c.key))
                    .filter(|(_, exp)| instant < *exp)
                    .and_then(|(v, _)| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map(u64::from_be_bytes)
            })
            .collect();
        let (statuses, next) = portcullis_core::limits::gcra_all(&tats, now_us, checks);
        if let Some(next) = next {
            for (c, tat) in checks.iter().zip(next) {
                let i = self.shard_index(&c.key);
                if let Some((_, map)) = guards.iter_mut().find(|(j, _)| *j == i) {
                    let ttl = Duration::from_micros(tat.saturating_sub(now_us).max(1));
                    if map.len() >= self.per_shard && !map.contains_key(&c.key) {
                        map.retain(|_, (_, exp)| instant < *exp);
                    }
                    map.insert(c.key.clone(), (tat.to_be_bytes().to_vec(), instant + ttl));
                }
            }
        }
        statuses
    }

    fn shard_index(&self, key: &str) -> usize {
        usize::try_from(portcullis_core::engine::fnv1a(key) % SHARDS as u64).unwrap_or(0)
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) {
        if let Some(Ok(mut map)) = self.shard(key).map(|s| s.lock()) {
            map.remove(key);
        }
    }
}
