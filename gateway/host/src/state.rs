//! In-memory shared state with TTL, sharded and bounded (the embedded default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// One shard: key → (value, expiry).
type Shard = Mutex<HashMap<String, (Vec<u8>, Instant)>>;

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
        let h = portcullis_core::engine::fnv1a(key);
        self.shards
            .get(usize::try_from(h % SHARDS as u64).unwrap_or(0))
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

    /// Removes `key`.
    pub fn delete(&self, key: &str) {
        if let Some(Ok(mut map)) = self.shard(key).map(|s| s.lock()) {
            map.remove(key);
        }
    }
}
