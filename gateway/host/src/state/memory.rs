//! In-memory shared state with TTL, sharded and bounded (the embedded default).
//!
//! Live security state is never dropped to make room: a full shard first sweeps its expired
//! entries, and when it is still full the write fails with [`Full`], which the caller treats
//! as the state being unavailable (`[state] on_unavailable`). Evicting a live `sess/<sid>`
//! would log a user out, a rate-limit bucket would reset a limit, a replay marker would let
//! a replay through.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// One shard: key → (value, expiry).
type Shard = Mutex<HashMap<String, (Vec<u8>, Instant)>>;

/// A locked shard.
type ShardGuard<'a> = std::sync::MutexGuard<'a, HashMap<String, (Vec<u8>, Instant)>>;

/// A shard is full of live entries: the write was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the in-memory state is full of live entries ([state] capacity)")
    }
}

/// Key-value state with expiry.
#[derive(Debug)]
pub struct MemoryState {
    shards: Vec<Shard>,
    per_shard: usize,
    /// Keyed per process (SipHash with random keys): which shard a key lands in cannot be
    /// predicted from outside, so a client choosing keys (addresses, subjects) cannot fill
    /// one shard — and make the state unavailable — while the others stay empty.
    spread: RandomState,
}

impl MemoryState {
    /// At most `capacity` entries in all.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            spread: RandomState::new(),
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

    /// Stores `value` for `ttl`; [`Full`] when a new key finds its shard full of live
    /// entries.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Full> {
        let shard = self.shard(key).ok_or(Full)?;
        let mut map = shard.lock().map_err(|_| Full)?;
        let now = Instant::now();
        make_room(&mut map, key, self.per_shard, now)?;
        map.insert(key.to_owned(), (value, now + ttl));
        Ok(())
    }

    /// Adds `delta` to the counter at `key` (an 8-byte big-endian integer), creating it
    /// with `ttl`; returns the new value.
    pub fn increment(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, Full> {
        let shard = self.shard(key).ok_or(Full)?;
        let mut map = shard.lock().map_err(|_| Full)?;
        let now = Instant::now();
        make_room(&mut map, key, self.per_shard, now)?;
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
        Ok(next)
    }

    /// Stores `value` for `ttl` only when the live value of `key` is `expected` (`None`:
    /// absent); true when stored.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, Full> {
        let shard = self.shard(key).ok_or(Full)?;
        let mut map = shard.lock().map_err(|_| Full)?;
        let now = Instant::now();
        let current = map
            .get(key)
            .filter(|(_, exp)| now < *exp)
            .map(|(v, _)| v.as_slice());
        if current != expected {
            return Ok(false);
        }
        make_room(&mut map, key, self.per_shard, now)?;
        map.insert(key.to_owned(), (value, now + ttl));
        Ok(true)
    }

    /// Up to `limit` live keys starting with `prefix` and sorting after `after`, in order.
    pub fn keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
        let now = Instant::now();
        let mut keys: Vec<String> = self
            .shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .flat_map(|map| {
                map.iter()
                    .filter(|(k, (_, exp))| {
                        now < *exp && k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a)
                    })
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort_unstable();
        keys.truncate(limit);
        keys
    }

    /// GCRA over `checks`, all or nothing, on the gateway's clock: the shards involved are
    /// locked together (in index order, so concurrent checks cannot deadlock).
    pub fn gcra(
        &self,
        checks: &[portcullis_core::limits::LimitCheck],
        now: portcullis_core::Timestamp,
    ) -> Result<Vec<portcullis_core::limits::LimitStatus>, Full> {
        let now_us = now.unix_micros();
        let mut indices: Vec<usize> = checks.iter().map(|c| self.shard_index(&c.key)).collect();
        indices.sort_unstable();
        indices.dedup();
        let mut guards: Vec<(usize, ShardGuard<'_>)> = Vec::with_capacity(indices.len());
        for i in indices {
            let g = self.shards.get(i).ok_or(Full)?.lock().map_err(|_| Full)?;
            guards.push((i, g));
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
            // All or nothing: room for every new bucket first, then the writes.
            for c in checks {
                let i = self.shard_index(&c.key);
                if let Some((_, map)) = guards.iter_mut().find(|(j, _)| *j == i) {
                    make_room(map, &c.key, self.per_shard, instant)?;
                }
            }
            for (c, tat) in checks.iter().zip(next) {
                let i = self.shard_index(&c.key);
                if let Some((_, map)) = guards.iter_mut().find(|(j, _)| *j == i) {
                    let ttl = Duration::from_micros(tat.saturating_sub(now_us).max(1));
                    map.insert(c.key.clone(), (tat.to_be_bytes().to_vec(), instant + ttl));
                }
            }
        }
        Ok(statuses)
    }

    /// Removes every expired entry (the store's sweeper calls this periodically, so memory
    /// follows live state even without writes); returns how many were removed.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for shard in &self.shards {
            if let Ok(mut map) = shard.lock() {
                let before = map.len();
                map.retain(|_, (_, exp)| now < *exp);
                removed += before - map.len();
            }
        }
        removed
    }

    /// Entries held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|m| m.len()))
            .sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_index(&self, key: &str) -> usize {
        usize::try_from(self.spread.hash_one(key) % SHARDS as u64).unwrap_or(0)
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) {
        if let Some(Ok(mut map)) = self.shard(key).map(|s| s.lock()) {
            map.remove(key);
        }
    }
}

/// Makes room for `key` in `map`: nothing to do when it is there or there is space; else
/// expired entries are swept; [`Full`] when the shard still holds `per_shard` live ones.
fn make_room(
    map: &mut HashMap<String, (Vec<u8>, Instant)>,
    key: &str,
    per_shard: usize,
    now: Instant,
) -> Result<(), Full> {
    if map.len() < per_shard || map.contains_key(key) {
        return Ok(());
    }
    map.retain(|_, (_, exp)| now < *exp);
    if map.len() < per_shard {
        Ok(())
    } else {
        Err(Full)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_state_refuses_new_keys_instead_of_evicting_live_ones() {
        // 16 shards of one entry each.
        let state = MemoryState::new(16);
        let long = Duration::from_secs(600);
        let mut stored = Vec::new();
        let mut refused = 0;
        for i in 0..64 {
            let key = format!("sess/{i}");
            match state.set(&key, b"live".to_vec(), long) {
                Ok(()) => stored.push(key),
                Err(Full) => refused += 1,
            }
        }
        assert!(refused > 0, "a bounded state must refuse at some point");
        // Every key that was stored is still there: nothing live was evicted.
        for key in &stored {
            assert_eq!(state.get(key).as_deref(), Some(&b"live"[..]), "{key}");
        }
        // Counters and replay markers are bounded too.
        assert!((0..64).any(|i| state.increment(&format!("dpop/{i}"), 1, long).is_err()));
    }

    #[test]
    fn expired_entries_make_room_and_are_swept() {
        let state = MemoryState::new(16);
        for i in 0..64 {
            let _ = state.set(&format!("k{i}"), vec![1], Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        // Expired entries give way to new ones.
        for i in 0..64 {
            let _ = state.set(&format!("n{i}"), vec![1], Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(state.set("x", vec![1], Duration::from_secs(60)).is_ok());
        assert!(state.sweep() > 0);
        assert_eq!(state.len(), 1);
        assert_eq!(state.get("x").as_deref(), Some(&[1u8][..]));
    }
}
