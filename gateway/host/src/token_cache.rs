//! A bounded cache of verified tokens, keyed by SHA-256 of the token. An entry serves until
//! the token's expiry (plus the issuer's skew) and only while the key sets it was verified
//! against are unchanged (a key-set change bumps the generation and invalidates it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_core::IssuerId;

/// A verified token's outcome.
#[derive(Clone, Debug)]
pub struct Cached {
    /// The issuer that verified it.
    pub issuer: IssuerId,
    /// Its claims, serialized once.
    pub claims: Arc<str>,
    /// Unix seconds after which it must be verified again.
    pub valid_until: f64,
    generation: u64,
}

/// The cache.
#[derive(Debug)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
    capacity: usize,
    generation: AtomicU64,
    /// Hits, for metrics.
    pub hits: AtomicU64,
    /// Misses, for metrics.
    pub misses: AtomicU64,
}

/// The cache key of a token.
pub fn token_key(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::with_capacity(capacity.min(1 << 16))),
            capacity,
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached outcome for `key` if still valid at `now` (Unix seconds).
    pub fn get(&self, key: &[u8; 32], now: f64) -> Option<Cached> {
        if self.capacity == 0 {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let mut entries = self.entries.lock().ok()?;
        let hit = match entries.get(key) {
            Some(c) if c.generation == generation && now < c.valid_until => Some(c.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        };
        drop(entries);
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// The current key-set generation: read it before verifying, pass it to
    /// [`insert`](Self::insert).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers a token verified against the key sets of `generation`; dropped when the
    /// key sets changed meanwhile (a rotation racing the verification must not leave a
    /// token checked against the old keys tagged as checked against the new ones).
    pub fn insert(
        &self,
        key: [u8; 32],
        issuer: IssuerId,
        claims: Arc<str>,
        valid_until: f64,
        generation: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        // Under the lock: `invalidate` bumps the generation before it clears the map.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= self.capacity {
            // Evict expired or stale entries first, then an arbitrary one.
            let now_gen = generation;
            entries.retain(|_, c| c.generation == now_gen && c.valid_until > 0.0);
            if entries.len() >= self.capacity
                && let Some(victim) = entries.keys().next().copied()
            {
                entries.remove(&victim);
            }
        }
        entries.insert(
            key,
            Cached {
                issuer,
                claims,
                valid_until,
                generation,
            },
        );
    }

    /// Forgets everything (a key set changed).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_are_bounded_and_invalidate_with_key_sets() {
        let cache = TokenCache::new(2);
        let claims: Arc<str> = Arc::from("{}");
        cache.insert(
            token_key("a"),
            IssuerId(0),
            claims.clone(),
            100.0,
            cache.generation(),
        );
        assert!(cache.get(&token_key("a"), 99.0).is_some());
        assert!(cache.get(&token_key("a"), 100.0).is_none(), "expired");
        cache.insert(
            token_key("b"),
            IssuerId(0),
            claims.clone(),
            100.0,
            cache.generation(),
        );
        cache.insert(
            token_key("c"),
            IssuerId(0),
            claims.clone(),
            100.0,
            cache.generation(),
        );
        cache.insert(
            token_key("d"),
            IssuerId(0),
            claims.clone(),
            100.0,
            cache.generation(),
        );
        assert!(cache.len() <= 2);
        cache.invalidate();
        assert!(cache.get(&token_key("d"), 1.0).is_none());
    }

    #[test]
    fn a_verification_that_raced_a_key_set_change_is_not_cached() {
        let cache = TokenCache::new(8);
        let claims: Arc<str> = Arc::from("{}");
        let before = cache.generation();
        cache.invalidate(); // the key set rotated while the token was being verified
        cache.insert(token_key("a"), IssuerId(0), claims.clone(), 100.0, before);
        assert!(cache.get(&token_key("a"), 1.0).is_none());
        cache.insert(
            token_key("a"),
            IssuerId(0),
            claims,
            100.0,
            cache.generation(),
        );
        assert!(cache.get(&token_key("a"), 1.0).is_some());
    }
}
