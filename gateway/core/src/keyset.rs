//! Key sets per issuer as a sans-IO state machine.
//!
//! The core never fetches. [`KeyStore::poll`] says which documents are due (first load,
//! expiry per `Cache-Control` bounded by configuration, a granted unknown-`kid` refetch,
//! a retry after failure); the adapter fetches them and hands the bytes to
//! [`KeyStore::on_response`] or reports [`KeyStore::on_failure`]. On failure the last good
//! set keeps serving up to `max_stale` past its freshness; then the issuer's tokens are
//! refused with `keys_unavailable` (fail closed).

use std::time::Duration;

use serde_json::Value;

use crate::config::{Config, IssuerConfig, JwksPolicy, KeySource};
use crate::crypto::{Algorithm, SignatureVerifier};
use crate::jwk::{Jwk, ParsedJwks, SkippedKey, parse_jwks};
use crate::time::Timestamp;

pub use crate::model::IssuerId;

/// How long a fetch handed out by [`KeyStore::poll`] may stay unanswered before it is
/// considered lost and may be handed out again.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Which document a fetch is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchKind {
    /// The OpenID Connect discovery document.
    Discovery,
    /// The JWK Set.
    Jwks,
}

/// Why a fetch is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchReason {
    /// No key set loaded yet.
    Initial,
    /// The loaded set reached the end of its freshness.
    Expired,
    /// A token named a `kid` the set does not hold.
    UnknownKid,
    /// The previous attempt failed; retrying after back-off.
    Retry,
}

/// A document the adapter should fetch (GET `url`) and report back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// For which issuer.
    pub issuer: IssuerId,
    /// Which document.
    pub kind: FetchKind,
    /// Where from.
    pub url: String,
    /// Why now.
    pub reason: FetchReason,
}

/// What the adapter received.
#[derive(Clone, Copy, Debug)]
pub struct FetchResponse<'a> {
    /// HTTP status code.
    pub status: u16,
    /// The `Cache-Control` header, if any.
    pub cache_control: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// Why an issuer's keys cannot be used right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeysUnavailable {
    /// Nothing was ever loaded (the last error, if any).
    NeverLoaded(Option<String>),
    /// The last good set is older than freshness + `max_stale`.
    TooStale(Option<String>),
}

/// A usable key: the parsed JWK (for its metadata) and the verifier's prepared form.
#[derive(Debug)]
pub struct KeyEntry<K> {
    /// The JWK with `kid`, `alg`, `use`, `key_ops`.
    pub jwk: Jwk,
    /// The verifier's key.
    pub key: K,
}

/// A loaded key set.
#[derive(Debug)]
pub struct KeySet<K> {
    entries: Vec<KeyEntry<K>>,
    skipped: Vec<SkippedKey>,
    /// [`KeySet::fingerprint`], computed once when the set is prepared (a verified-token
    /// cache compares it on every lookup).
    fingerprint: [u8; 32],
}

/// SHA-256 over `entries` in order (see [`KeySet::fingerprint`]).
fn fingerprint_of<K>(entries: &[KeyEntry<K>]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for entry in entries {
        let bytes = postcard::to_allocvec(&entry.jwk).unwrap_or_default();
        hash.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
        hash.update(&bytes);
    }
    hash.finalize().into()
}

/// Why no key of a set can verify a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySelectError {
    /// The token's `kid` is not in the set (a refetch may help).
    UnknownKid(String),
    /// No `kid` and no single key fits the algorithm.
    NoKey(String),
    /// The `kid` names a key that may not verify this algorithm.
    Mismatch(String),
}

impl<K> KeySet<K> {
    /// Prepares every key of a parsed set with `verifier`; keys it refuses join `skipped`.
    pub fn prepare<V: SignatureVerifier<Key = K>>(parsed: ParsedJwks, verifier: &V) -> Self {
        let mut skipped = parsed.skipped;
        let mut entries = Vec::with_capacity(parsed.keys.len());
        for (index, jwk) in parsed.keys.into_iter().enumerate() {
            match verifier.prepare(&jwk.material) {
                Ok(key) => entries.push(KeyEntry { jwk, key }),
                Err(e) => skipped.push(SkippedKey {
                    index,
                    kid: jwk.kid.clone(),
                    reason: e.0,
                }),
            }
        }
        let fingerprint = fingerprint_of(&entries);
        Self {
            entries,
            skipped,
            fingerprint,
        }
    }

    /// SHA-256 over the usable keys in order (each one's `kid`, metadata and material, as
    /// postcard): the same keys loaded again give the same fingerprint, any key added,
    /// removed or changed gives another. What a shared verified-token entry names
    /// ([`crate::verified`]).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The usable keys.
    pub fn entries(&self) -> &[KeyEntry<K>] {
        &self.entries
    }

    /// Keys that were skipped, with reasons.
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// Chooses the key for a token: by `kid` when the token has one (the key must then fit
    /// `alg`), otherwise the only key that fits `alg`.
    pub fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<&KeyEntry<K>, KeySelectError> {
        match kid {
            Some(kid) => {
                let named: Vec<&KeyEntry<K>> = self
                    .entries
                    .iter()
                    .filter(|e| e.jwk.kid.as_deref() == Some(kid))
                    .collect();
                let Some(first) = named.first() else {
                    // A shared secret configured without a `kid` matches any `kid`: many
                    // HS256 libraries put one in the header, and a secret has no key set to
                    // look it up in. Only when exactly one such secret fits `alg`.
                    let mut unnamed = self.entries.iter().filter(|e| {
                        e.jwk.kid.is_none()
                            && matches!(
                                e.jwk.material,
                                crate::crypto::KeyMaterial::Symmetric { .. }
                            )
                            && e.jwk.permits(alg).is_ok()
                    });
                    if let (Some(only), None) = (unnamed.next(), unnamed.next()) {
                        return Ok(only);
                    }
                    return Err(KeySelectError::UnknownKid(format!(
                        "no key with kid `{kid}`"
                    )));
                };
                if self.skipped.iter().any(|s| s.kid.as_deref() == Some(kid)) {
                    return Err(KeySelectError::NoKey(format!(
                        "kid `{kid}` also names a key of the set that could not be loaded: ambiguous"
                    )));
                }
                let mut fitting = named.iter().filter(|e| e.jwk.permits(alg).is_ok());
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Ok(only),
                    (Some(_), Some(_)) => Err(KeySelectError::NoKey(format!(
                        "several keys with kid `{kid}` fit {alg}: ambiguous"
                    ))),
                    (None, _) => Err(KeySelectError::Mismatch(format!(
                        "key `{kid}`: {}",
                        first.jwk.permits(alg).err().unwrap_or_default()
                    ))),
                }
            }
            None => {
                let mut fitting = self.entries.iter().filter(|e| e.jwk.permits(alg).is_ok());
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Ok(only),
                    (None, _) => Err(KeySelectError::NoKey(format!("no key fits {alg}"))),
                    (Some(_), Some(_)) => Err(KeySelectError::NoKey(format!(
                        "the token has no kid and several keys fit {alg}"
                    ))),
                }
            }
        }
    }
}

#[derive(Debug)]
struct Loaded<K> {
    /// Shared with a reloaded configuration's store ([`KeyStore::carry_over`]).
    set: std::sync::Arc<KeySet<K>>,
    loaded_at: Timestamp,
    fresh_until: Timestamp,
}

/// When an issuer's key set was loaded and how long it stays fresh (for age and staleness
/// metrics: alert before `jwks_max_stale` runs out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetAge {
    /// When the set in use was loaded.
    pub loaded_at: Timestamp,
    /// Until when it is fresh; `None` for a fixed set, which never goes stale.
    pub fresh_until: Option<Timestamp>,
    /// Until when it may still be used without a successful refresh; `None` for a fixed
    /// set.
    pub usable_until: Option<Timestamp>,
}

/// Counters an adapter exports as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyStats {
    /// Successful key-set loads.
    pub refreshes: u64,
    /// Failed fetches or unusable documents.
    pub failures: u64,
    /// Unknown-`kid` refetches granted.
    pub unknown_kid_refetches: u64,
    /// Unknown-`kid` refetches refused by the rate limit.
    pub unknown_kid_throttled: u64,
}

#[derive(Debug)]
struct IssuerKeys<K> {
    issuer: String,
    remote: Option<Remote>,
    loaded: Option<Loaded<K>>,
    static_set: bool,
    last_error: Option<String>,
    stats: KeyStats,
}

#[derive(Clone, Debug)]
struct Remote {
    discovery_url: Option<String>,
    jwks_uri: Option<String>,
    policy: JwksPolicy,
    allow_http: bool,
    in_flight: Option<(FetchReason, Timestamp)>,
    next_attempt: Timestamp,
    failures: u32,
    /// A key-set fetch to hand out at the next poll regardless of back-off: after a
    /// discovery document arrived, or for a granted unknown-kid refetch.
    jwks_next: Option<FetchReason>,
    last_unknown_kid_refetch: Option<Timestamp>,
    /// The login endpoints of the last discovery document.
    endpoints: Option<ProviderEndpoints>,
}

/// An OpenID Provider's endpoints for the login flow, from its discovery document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderEndpoints {
    /// `authorization_endpoint`.
    pub authorization: String,
    /// `token_endpoint`.
    pub token: String,
    /// `end_session_endpoint` (RP-initiated logout), if offered.
    pub end_session: Option<String>,
    /// `pushed_authorization_request_endpoint` (RFC 9126), if offered.
    pub pushed_authorization: Option<String>,
    /// `introspection_endpoint` (RFC 7662, RFC 8414), if offered.
    pub introspection: Option<String>,
}

/// Reads the login endpoints of a discovery document: each must be https (or http when
/// allowed); `None` when the provider lacks an authorization or token endpoint.
pub fn parse_endpoints(body: &[u8], allow_http: bool) -> Option<ProviderEndpoints> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let url = |name: &str| {
        doc.get(name)
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://") || (allow_http && u.starts_with("http://")))
            .map(str::to_owned)
    };
    Some(ProviderEndpoints {
        authorization: url("authorization_endpoint")?,
        token: url("token_endpoint")?,
        end_session: url("end_session_endpoint"),
        pushed_authorization: url("pushed_authorization_request_endpoint"),
        introspection: url("introspection_endpoint"),
    })
}

/// The key sets of every configured issuer.
#[derive(Debug)]
pub struct KeyStore<K> {
    issuers: Vec<IssuerKeys<K>>,
}

impl<K> KeyStore<K> {
    /// The login endpoints `issuer`'s discovery document named, once loaded.
    pub fn endpoints(&self, issuer: IssuerId) -> Option<&ProviderEndpoints> {
        self.issuers
            .get(issuer.0)
            .and_then(|i| i.remote.as_ref())
            .and_then(|r| r.endpoints.as_ref())
    }

    /// Builds the store for `config`: static sets (`jwks_file`, HMAC secrets) are prepared
    /// now; remote ones are due at the first [`poll`](Self::poll).
    pub fn new<V: SignatureVerifier<Key = K>>(config: &Config, verifier: &V) -> Self {
        let issuers = config
            .issuers
            .iter()
            .map(|cfg| IssuerKeys::new(cfg, verifier))
            .collect();
        Self { issuers }
    }

    /// Takes what `old` learned — fetched key sets (shared, not copied), discovery
    /// endpoints, back-off — for each remote issuer of this store that
    /// `unchanged(new_index, old_index)` says is configured as before (a reloaded
    /// configuration), so it is not fetched again; `old` keeps serving meanwhile. A fetch
    /// `old` had in flight is not carried: this store asks again when it is due.
    pub fn carry_over(&mut self, old: &KeyStore<K>, unchanged: impl Fn(usize, usize) -> bool) {
        for (i, keys) in self.issuers.iter_mut().enumerate() {
            if keys.static_set {
                continue;
            }
            let found = old.issuers.iter().position(|o| o.issuer == keys.issuer);
            let Some(kept) = found
                .filter(|j| unchanged(i, *j))
                .and_then(|j| old.issuers.get(j))
            else {
                continue;
            };
            keys.remote.clone_from(&kept.remote);
            if let Some(remote) = keys.remote.as_mut() {
                remote.in_flight = None;
            }
            keys.loaded = kept.loaded.as_ref().map(|l| Loaded {
                set: l.set.clone(),
                loaded_at: l.loaded_at,
                fresh_until: l.fresh_until,
            });
            keys.last_error.clone_from(&kept.last_error);
            keys.stats = kept.stats;
        }
    }

    /// Every fetch that is due at `now`; each is marked in flight until reported back.
    pub fn poll(&mut self, now: Timestamp) -> Vec<FetchRequest> {
        self.issuers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, keys)| keys.poll(IssuerId(i), now))
            .collect()
    }

    /// The earliest time at which [`poll`](Self::poll) may return something new.
    pub fn next_poll_at(&self) -> Option<Timestamp> {
        self.issuers
            .iter()
            .filter_map(IssuerKeys::next_poll_at)
            .min()
    }

    /// Accepts a fetched document. Errors (bad status, unparsable or unusable document)
    /// count as a failed fetch and are returned for logging.
    pub fn on_response<V: SignatureVerifier<Key = K>>(
        &mut self,
        verifier: &V,
        issuer: IssuerId,
        kind: FetchKind,
        response: FetchResponse<'_>,
        now: Timestamp,
    ) -> Result<(), String> {
        let keys = self
            .issuers
            .get_mut(issuer.0)
            .ok_or_else(|| format!("no issuer #{}", issuer.0))?;
        let result = keys.accept(verifier, kind, response, now);
        if let Err(e) = &result {
            keys.fail(e.clone(), now);
        }
        result
    }

    /// Reports a fetch that could not be completed (connection refused, timeout, …).
    pub fn on_failure(&mut self, issuer: IssuerId, error: &str, now: Timestamp) {
        if let Some(keys) = self.issuers.get_mut(issuer.0) {
            keys.fail(error.to_owned(), now);
        }
    }

    /// Asks for a refetch because a token named an unknown `kid`. Granted (true) at most
    /// once per the issuer's `unknown_kid_interval`, so random kids cannot cause a storm;
    /// when granted, the next [`poll`](Self::poll) returns the fetch.
    pub fn request_refetch(&mut self, issuer: IssuerId, now: Timestamp) -> bool {
        let Some(keys) = self.issuers.get_mut(issuer.0) else {
            return false;
        };
        let Some(remote) = keys.remote.as_mut() else {
            return false;
        };
        let allowed = remote
            .last_unknown_kid_refetch
            .is_none_or(|last| now.saturating_since(last) >= remote.policy.unknown_kid_interval);
        if allowed && remote.in_flight.is_none() && remote.jwks_uri.is_some() {
            remote.last_unknown_kid_refetch = Some(now);
            remote.jwks_next = Some(FetchReason::UnknownKid);
            keys.stats.unknown_kid_refetches += 1;
            true
        } else {
            keys.stats.unknown_kid_throttled += 1;
            false
        }
    }

    /// The usable key set of `issuer` at `now`.
    pub fn keys(&self, issuer: IssuerId, now: Timestamp) -> Result<&KeySet<K>, KeysUnavailable> {
        let Some(keys) = self.issuers.get(issuer.0) else {
            return Err(KeysUnavailable::NeverLoaded(None));
        };
        match (&keys.loaded, keys.usable_until()) {
            (None, _) => Err(KeysUnavailable::NeverLoaded(keys.last_error.clone())),
            (Some(_), Some(until)) if now > until => {
                Err(KeysUnavailable::TooStale(keys.last_error.clone()))
            }
            (Some(l), _) => Ok(l.set.as_ref()),
        }
    }

    /// True when every issuer has a usable key set (the host's readiness).
    pub fn is_ready(&self, now: Timestamp) -> bool {
        (0..self.issuers.len()).all(|i| self.keys(IssuerId(i), now).is_ok())
    }

    /// When `issuer`'s key set in use was loaded and until when it is fresh and usable;
    /// `None` before anything was loaded.
    pub fn age(&self, issuer: IssuerId) -> Option<SetAge> {
        let keys = self.issuers.get(issuer.0)?;
        let loaded = keys.loaded.as_ref()?;
        let usable_until = keys.usable_until();
        Some(SetAge {
            loaded_at: loaded.loaded_at,
            fresh_until: usable_until.map(|_| loaded.fresh_until),
            usable_until,
        })
    }

    /// Counters and the last error of `issuer`.
    pub fn stats(&self, issuer: IssuerId) -> Option<(KeyStats, Option<&str>)> {
        self.issuers
            .get(issuer.0)
            .map(|k| (k.stats, k.last_error.as_deref()))
    }

    /// The issuer URL of `issuer` (for logs and metrics labels).
    pub fn issuer_url(&self, issuer: IssuerId) -> Option<&str> {
        self.issuers.get(issuer.0).map(|k| k.issuer.as_str())
    }
}

impl<K> IssuerKeys<K> {
    /// Until when the loaded set may serve without a successful refresh: its freshness plus
    /// `max_stale`; `None` for a fixed set (never stale) or before anything was loaded.
    fn usable_until(&self) -> Option<Timestamp> {
        let loaded = self.loaded.as_ref()?;
        let remote = self.remote.as_ref().filter(|_| !self.static_set)?;
        Some(loaded.fresh_until.saturating_add(remote.policy.max_stale))
    }

    fn new<V: SignatureVerifier<Key = K>>(cfg: &IssuerConfig, verifier: &V) -> Self {
        let mut keys = IssuerKeys {
            issuer: cfg.issuer.clone(),
            remote: None,
            loaded: None,
            static_set: false,
            last_error: None,
            stats: KeyStats::default(),
        };
        let remote = |discovery_url: Option<String>, jwks_uri: Option<String>| Remote {
            discovery_url,
            jwks_uri,
            policy: cfg.jwks_policy,
            allow_http: cfg.insecure_http_jwks,
            in_flight: None,
            next_attempt: Timestamp::default(),
            failures: 0,
            jwks_next: None,
            last_unknown_kid_refetch: None,
            endpoints: None,
        };
        match &cfg.keys {
            KeySource::JwksUri(uri) => keys.remote = Some(remote(None, Some(uri.clone()))),
            KeySource::Discovery(url) => keys.remote = Some(remote(Some(url.clone()), None)),
            KeySource::Static(parsed) => {
                keys.static_set = true;
                keys.loaded = Some(Loaded {
                    set: std::sync::Arc::new(KeySet::prepare(parsed.clone(), verifier)),
                    loaded_at: Timestamp::default(),
                    fresh_until: Timestamp::default(),
                });
            }
        }
        keys
    }

    fn poll(&mut self, id: IssuerId, now: Timestamp) -> Option<FetchRequest> {
        let remote = self.remote.as_mut()?;
        if let Some((_, since)) = remote.in_flight {
            if now.saturating_since(since) < FETCH_TIMEOUT {
                return None;
            }
            remote.in_flight = None; // lost: hand it out again
        }
        if let (Some(reason), Some(jwks)) = (remote.jwks_next.take(), &remote.jwks_uri) {
            remote.in_flight = Some((reason, now));
            return Some(FetchRequest {
                issuer: id,
                kind: FetchKind::Jwks,
                url: jwks.clone(),
                reason,
            });
        }
        if now < remote.next_attempt {
            return None;
        }
        let reason = if remote.failures > 0 {
            FetchReason::Retry
        } else {
            match &self.loaded {
                None => FetchReason::Initial,
                Some(l) if now >= l.fresh_until => FetchReason::Expired,
                Some(_) => return None,
            }
        };
        // Scheduled loads refresh discovery first, so a moved jwks_uri is followed; a retry
        // with a known jwks_uri goes straight to the key set.
        let (kind, url) = match (&remote.discovery_url, &remote.jwks_uri) {
            (Some(disc), None) => (FetchKind::Discovery, disc.clone()),
            (Some(disc), Some(_)) if reason != FetchReason::Retry => {
                (FetchKind::Discovery, disc.clone())
            }
            (_, Some(jwks)) => (FetchKind::Jwks, jwks.clone()),
            (None, None) => return None,
        };
        remote.in_flight = Some((reason, now));
        Some(FetchRequest {
            issuer: id,
            kind,
            url,
            reason,
        })
    }

    fn next_poll_at(&self) -> Option<Timestamp> {
        let remote = self.remote.as_ref()?;
        if let Some((_, since)) = remote.in_flight {
            return Some(since.saturating_add(FETCH_TIMEOUT));
        }
        if remote.jwks_next.is_some() {
            return Some(Timestamp::default());
        }
        match &self.loaded {
            Some(l) if remote.failures == 0 => Some(l.fresh_until),
            _ => Some(remote.next_attempt),
        }
    }

    fn accept<V: SignatureVerifier<Key = K>>(
        &mut self,
        verifier: &V,
        kind: FetchKind,
        response: FetchResponse<'_>,
        now: Timestamp,
    ) -> Result<(), String> {
        let remote = self.remote.as_mut().ok_or("issuer has a static key set")?;
        let reason = remote
            .in_flight
            .take()
            .map_or(FetchReason::Initial, |(r, _)| r);
        if response.status != 200 {
            return Err(format!("HTTP status {}", response.status));
        }
        match kind {
            FetchKind::Discovery => {
                let uri = parse_discovery(response.body, &self.issuer, remote.allow_http)?;
                remote.jwks_uri = Some(uri);
                remote.endpoints = parse_endpoints(response.body, remote.allow_http);
                remote.jwks_next = Some(reason); // the key set is due right away
                Ok(())
            }
            FetchKind::Jwks => {
                let parsed = parse_jwks(response.body)?;
                let set = KeySet::prepare(parsed, verifier);
                if set.entries.is_empty() {
                    let reasons: Vec<String> = set
                        .skipped
                        .iter()
                        .map(|s| format!("#{} {}", s.index, s.reason))
                        .collect();
                    return Err(format!(
                        "key set has no usable key ({})",
                        reasons.join("; ")
                    ));
                }
                let ttl = freshness(response.cache_control, &remote.policy);
                remote.failures = 0;
                remote.next_attempt = now;
                self.loaded = Some(Loaded {
                    set: std::sync::Arc::new(set),
                    loaded_at: now,
                    fresh_until: now.saturating_add(ttl),
                });
                self.last_error = None;
                self.stats.refreshes += 1;
                Ok(())
            }
        }
    }

    fn fail(&mut self, error: String, now: Timestamp) {
        self.stats.failures += 1;
        self.last_error = Some(error);
        if let Some(remote) = self.remote.as_mut() {
            remote.in_flight = None;
            remote.jwks_next = None;
            remote.failures = remote.failures.saturating_add(1);
            // 1 s, 2 s, 4 s … capped at the minimum refresh interval.
            let backoff = Duration::from_secs(1u64 << remote.failures.min(16).saturating_sub(1))
                .min(remote.policy.refresh_min.max(Duration::from_secs(1)));
            remote.next_attempt = now.saturating_add(backoff);
        }
    }
}

/// Freshness of a fetched key set: `max-age` from `Cache-Control` (absent: one hour;
/// `no-cache`/`no-store`: the minimum), clamped to the configured bounds.
pub fn freshness(cache_control: Option<&str>, policy: &JwksPolicy) -> Duration {
    let mut ttl = Duration::from_secs(3_600);
    if let Some(cc) = cache_control {
        for directive in cc.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                ttl = Duration::ZERO;
                break;
            }
            if let Some(v) = lower.strip_prefix("max-age=")
                && let Ok(secs) = v.trim_matches('"').parse::<u64>()
            {
                ttl = Duration::from_secs(secs);
            }
        }
    }
    ttl.clamp(
        policy.refresh_min,
        policy.refresh_max.max(policy.refresh_min),
    )
}

/// Reads `jwks_uri` from an OpenID Connect discovery document, checking that its `issuer`
/// is exactly the configured one (OIDC Discovery §4.3) and that the URI is `https`.
pub fn parse_discovery(body: &[u8], issuer: &str, allow_http: bool) -> Result<String, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("discovery document is not JSON: {e}"))?;
    let found = doc.get("issuer").and_then(Value::as_str);
    if found != Some(issuer) {
        return Err(format!(
            "discovery document names issuer {:?}, configured is {issuer:?}",
            found.unwrap_or("(none)")
        ));
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or("discovery document has no string `jwks_uri`")?;
    let https = uri.starts_with("https://");
    let http = uri.starts_with("http://");
    if !(https || (http && allow_http)) {
        return Err(format!(
            "jwks_uri {uri:?} is not https (set insecure_http_jwks = true for local testing)"
        ));
    }
    Ok(uri.to_owned())
}
