//! A bounded cache of verified tokens, keyed by SHA-256 of the token. An entry serves until
//! the token's expiry (plus the issuer's skew) and only while the key sets it was verified
//! against are unchanged (a key-set change bumps the generation and invalidates it).
//!
//! Built on [`moka`]: lock-striped reads and writes, a TinyLFU admission policy (a burst of
//! one-off tokens does not push out the tokens in steady use) and per-entry expiry, so a
//! full cache never scans and an expired entry is gone without a lookup.
//!
//! A token is kept from its second verification on ([`offer`](TokenCache::offer)): the
//! first only leaves its fingerprint in a fixed table (8 bytes a slot). Clients that mint
//! a token per call — common for machine clients — would otherwise fill the cache with
//! entries (about 600 bytes each with their claims) that are never read again; a token in
//! steady use costs one extra signature check over its lifetime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::sync::Cache;
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

/// Each entry lives until its token's `valid_until`, and at most this long: an absurd `exp`
/// (a signed token may carry 1e300) must neither overflow the expiry arithmetic nor pin an
/// entry forever.
const MAX_ENTRY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Each entry lives until its token's `valid_until` (at most [`MAX_ENTRY_LIFETIME`]).
struct UntilValid;

impl Expiry<[u8; 32], Cached> for UntilValid {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Cached,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let left = (value.valid_until - now).clamp(0.0, MAX_ENTRY_LIFETIME.as_secs_f64());
        Some(Duration::try_from_secs_f64(left).unwrap_or(MAX_ENTRY_LIFETIME))
    }
}

/// The cache.
pub struct TokenCache {
    entries: Option<Cache<[u8; 32], Cached>>,
    /// Fingerprints of tokens verified once: a slot per token (direct-mapped, a newer
    /// token overwrites an older one), so the table never grows.
    seen: Box<[AtomicU64]>,
    generation: AtomicU64,
    /// Verified tokens not kept because this was their first verification, for metrics.
    pub first_sightings: AtomicU64,
    /// Hits, for metrics.
    pub hits: AtomicU64,
    /// Misses, for metrics.
    pub misses: AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.as_ref().map(Cache::entry_count))
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
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
        let entries = (capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(u64::try_from(capacity).unwrap_or(u64::MAX))
                .expire_after(UntilValid)
                .build()
        });
        // A slot per cache entry or more (a power of two: the slot is a mask of the key).
        let slots = if capacity == 0 {
            0
        } else {
            capacity.clamp(1024, 1 << 24).next_power_of_two()
        };
        Self {
            entries,
            seen: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            first_sightings: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached outcome for `key` if still valid at `now` (Unix seconds).
    pub fn get(&self, key: &[u8; 32], now: f64) -> Option<Cached> {
        let entries = self.entries.as_ref()?;
        let generation = self.generation.load(Ordering::Acquire);
        // The expiry above runs on the cache's clock; `now` is the request's, which decides.
        let hit = entries
            .get(key)
            .filter(|c| c.generation == generation && now < c.valid_until);
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

    /// Offers a token verified against the key sets of `generation`: kept as
    /// [`insert`](Self::insert) keeps it if this is at least its second verification, else
    /// only its fingerprint is noted. True when it was kept.
    pub fn offer(
        &self,
        key: [u8; 32],
        issuer: IssuerId,
        claims: Arc<str>,
        valid_until: f64,
        generation: u64,
    ) -> bool {
        if self.entries.is_none() {
            return false;
        }
        if !self.seen_before(&key) {
            self.first_sightings.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.insert(key, issuer, claims, valid_until, generation);
        true
    }

    /// Notes `key` as verified; true if its fingerprint was already there. The key is a
    /// SHA-256 digest: its first 8 bytes are the fingerprint (never 0, the empty slot), the
    /// next 8 choose the slot.
    fn seen_before(&self, key: &[u8; 32]) -> bool {
        let word = |at: usize| {
            key.get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let fingerprint = word(0) | 1;
        let mask = self.seen.len().saturating_sub(1) as u64;
        let slot = usize::try_from(word(8) & mask).unwrap_or(0);
        self.seen
            .get(slot)
            .is_some_and(|s| s.swap(fingerprint, Ordering::Relaxed) == fingerprint)
    }

    /// Remembers a token verified against the key sets of `generation`; dropped when the
    /// key sets changed meanwhile (a rotation racing the verification must not leave a
    /// token checked against the old keys tagged as checked against the new ones: an entry
    /// of an older generation never serves, see [`get`](Self::get)).
    pub fn insert(
        &self,
        key: [u8; 32],
        issuer: IssuerId,
        claims: Arc<str>,
        valid_until: f64,
        generation: u64,
    ) {
        let Some(entries) = &self.entries else {
            return;
        };
        if self.generation.load(Ordering::Acquire) != generation {
            return;
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
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }

    /// Number of entries (after the cache's pending evictions have run).
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            usize::try_from(e.entry_count()).unwrap_or(usize::MAX)
        })
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds now: entries expire on the cache's real clock.
    fn unix_now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[test]
    fn a_far_future_exp_is_cached_without_overflow() {
        let cache = TokenCache::new(2);
        let t = unix_now();
        cache.insert(
            token_key("far"),
            IssuerId(0),
            Arc::from("{}"),
            1e300,
            cache.generation(),
        );
        assert!(cache.get(&token_key("far"), t).is_some());
    }

    #[test]
    fn entries_expire_are_bounded_and_invalidate_with_key_sets() {
        let cache = TokenCache::new(2);
        let claims: Arc<str> = Arc::from("{}");
        let t = unix_now();
        cache.insert(
            token_key("a"),
            IssuerId(0),
            claims.clone(),
            t + 100.0,
            cache.generation(),
        );
        assert!(cache.get(&token_key("a"), t + 99.0).is_some());
        assert!(cache.get(&token_key("a"), t + 100.0).is_none(), "expired");
        cache.insert(
            token_key("b"),
            IssuerId(0),
            claims.clone(),
            t + 100.0,
            cache.generation(),
        );
        cache.insert(
            token_key("c"),
            IssuerId(0),
            claims.clone(),
            t + 100.0,
            cache.generation(),
        );
        cache.insert(
            token_key("d"),
            IssuerId(0),
            claims.clone(),
            t + 100.0,
            cache.generation(),
        );
        assert!(cache.len() <= 2);
        cache.invalidate();
        assert!(cache.get(&token_key("d"), t).is_none());
    }

    #[test]
    fn a_verification_that_raced_a_key_set_change_is_not_cached() {
        let cache = TokenCache::new(8);
        let claims: Arc<str> = Arc::from("{}");
        let t = unix_now();
        let before = cache.generation();
        cache.invalidate(); // the key set rotated while the token was being verified
        cache.insert(
            token_key("a"),
            IssuerId(0),
            claims.clone(),
            t + 100.0,
            before,
        );
        assert!(cache.get(&token_key("a"), t).is_none());
        cache.insert(
            token_key("a"),
            IssuerId(0),
            claims,
            t + 100.0,
            cache.generation(),
        );
        assert!(cache.get(&token_key("a"), t).is_some());
    }

    #[test]
    fn a_burst_of_one_off_tokens_does_not_push_out_the_tokens_in_use() {
        let cache = TokenCache::new(64);
        let claims: Arc<str> = Arc::from("{}");
        let hot = token_key("hot");
        let t = unix_now();
        cache.insert(
            hot,
            IssuerId(0),
            claims.clone(),
            t + 600.0,
            cache.generation(),
        );
        for _ in 0..20 {
            assert!(cache.get(&hot, t).is_some());
        }
        for i in 0..10_000 {
            let key = token_key(&format!("one-off {i}"));
            cache.insert(
                key,
                IssuerId(0),
                claims.clone(),
                t + 600.0,
                cache.generation(),
            );
        }
        assert!(cache.len() <= 64, "bounded: {}", cache.len());
        assert!(cache.get(&hot, t).is_some(), "the token in use was evicted");
    }

    #[test]
    fn a_token_is_kept_from_its_second_verification_on() {
        let cache = TokenCache::new(64);
        let claims: Arc<str> = Arc::from("{}");
        let t = unix_now();
        let offer = |name: &str| {
            cache.offer(
                token_key(name),
                IssuerId(0),
                claims.clone(),
                t + 600.0,
                cache.generation(),
            )
        };
        assert!(!offer("a"), "kept on its first verification");
        assert!(cache.get(&token_key("a"), t).is_none());
        assert!(offer("a"));
        assert!(cache.get(&token_key("a"), t).is_some());
        // A key-set change drops the entries, not the sightings: the next verification of a
        // token in use is kept at once.
        cache.invalidate();
        assert!(cache.get(&token_key("a"), t).is_none());
        assert!(offer("a"));
        // A flood of one-off tokens leaves the cache empty, the table its fixed size.
        for i in 0..10_000 {
            assert!(!offer(&format!("one-off {i}")));
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.seen.len(), 1024);
        assert_eq!(cache.first_sightings.load(Ordering::Relaxed), 10_001);
        assert!(cache.get(&token_key("a"), t).is_some());
        // A disabled cache keeps nothing and notes nothing.
        let off = TokenCache::new(0);
        for _ in 0..2 {
            assert!(!off.offer(token_key("a"), IssuerId(0), claims.clone(), t + 600.0, 0));
        }
        assert_eq!(off.first_sightings.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_entry_leaves_at_its_tokens_expiry_without_being_looked_up() {
        let cache = TokenCache::new(8);
        let now = unix_now();
        let claims: Arc<str> = Arc::from("{}");
        cache.insert(
            token_key("short"),
            IssuerId(0),
            claims.clone(),
            now + 0.1,
            0,
        );
        cache.insert(token_key("long"), IssuerId(0), claims, now + 600.0, 0);
        assert_eq!(cache.len(), 2);
        // The cache's timer wheel has ~1 s buckets: wait for the sweep, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(cache.len(), 1, "the expired entry is still held");
    }
}
