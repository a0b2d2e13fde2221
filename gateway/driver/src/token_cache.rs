//! An in-process cache of verified access tokens, for a runtime whose process outlives its
//! requests and checks signatures itself (a Workers isolate, where each check is a
//! WebCrypto round trip the decision waits for).
//!
//! A token verified once is believed again without checking its signature and claims:
//! - until its `exp` plus its issuer's clock skew, and at most [`MAX_BELIEVED`];
//! - only while its issuer's key set is the one it was checked against
//!   ([`KeySet::fingerprint`](portcullis_core::keyset::KeySet::fingerprint)): a rotation
//!   that changes the set drops it;
//! - keyed by the token's SHA-256, so the cache holds no token.
//!
//! Everything after the signature runs on the cached identity as on a fresh one: the
//! route's issuers (checked here), the DPoP binding, claim and scope rules, and the ended
//! provider session check. Refusals are never cached. The cache is bounded, with
//! `quick_cache`'s scan-resistant S3-FIFO policy: a burst of one-off tokens does not push
//! out the tokens in steady use (as the native host's cache, `--token-cache`).

use std::cell::{Cell, RefCell};
use std::time::Duration;

use portcullis_core::authenticate::{IssuedKind, LocalAuthenticator};
use portcullis_core::crypto::SignatureCheck;
use portcullis_core::keyset::ProviderEndpoints;
use portcullis_core::verified::{believed_until_ms, token_digest};
use portcullis_core::{
    Algorithm, AuthFailure, Authenticator, IssuerId, KeyMaterial, KeyStore, Reason,
    SignatureVerifier, Timestamp, VerifiedIdentity,
};

/// Longest a verified token is believed without a check, whatever its `exp` (as the edge
/// bundle's shared entries).
pub const MAX_BELIEVED: Duration = Duration::from_secs(3600);

/// Tokens a Worker's isolate keeps by default (a few hundred bytes each).
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A verified token, as the cache keeps it.
#[derive(Clone)]
struct Entry {
    identity: VerifiedIdentity,
    until_ms: u64,
    key_set: [u8; 32],
}

/// The cache: bounded, single-threaded (one per isolate).
pub struct TokenCache {
    entries: RefCell<quick_cache::unsync::Cache<[u8; 32], Entry>>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl TokenCache {
    /// A cache of at most about `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RefCell::new(quick_cache::unsync::Cache::new(capacity.max(1))),
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    /// Tokens a request found live and verified under the issuer's current key set
    /// (counted once per request and token).
    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    /// Tokens a request did not find (then verified).
    pub fn misses(&self) -> u64 {
        self.misses.get()
    }

    /// Tokens held (expired ones leave when looked up or pushed out).
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The identity `token` was verified as, if it is live at `now` and its issuer's key
    /// set in `keys` is still the one it was checked against; a stale entry is dropped.
    fn lookup<K>(
        &self,
        digest: &[u8; 32],
        keys: &KeyStore<K>,
        now: Timestamp,
    ) -> Option<VerifiedIdentity> {
        let found = self.entries.borrow().get(digest).cloned()?;
        let live = now.unix_millis() < found.until_ms
            && keys
                .keys(found.identity.issuer, now)
                .is_ok_and(|set| set.fingerprint() == found.key_set);
        if live {
            Some(found.identity)
        } else {
            self.entries.borrow_mut().remove(digest);
            None
        }
    }

    /// Keeps `identity`, just verified from `token` against `keys`, for as long as it may
    /// be believed (nothing when its issuer's keys are not usable at `now`).
    fn insert<K>(
        &self,
        digest: [u8; 32],
        identity: &VerifiedIdentity,
        skew: Duration,
        keys: &KeyStore<K>,
        now: Timestamp,
    ) {
        let now_ms = now.unix_millis();
        let Some(until_ms) = believed_until_ms(identity.expires_at, skew, now_ms, MAX_BELIEVED)
        else {
            return;
        };
        let Ok(set) = keys.keys(identity.issuer, now) else {
            return;
        };
        let entry = Entry {
            identity: identity.clone(),
            until_ms,
            key_set: set.fingerprint(),
        };
        self.entries.borrow_mut().insert(digest, entry);
    }
}

/// What the cache answered for the tokens of one request. A decision that waits (for a
/// WebCrypto check, a state operation) runs again from the start when it resumes, and must
/// be asked the same things each time: so the first lookup of a token decides for the rest
/// of the request, whatever the request itself or others running meanwhile put into the
/// cache or pushed out of it.
#[derive(Default)]
pub struct RequestTokens(RefCell<Vec<([u8; 32], Option<VerifiedIdentity>)>>);

impl RequestTokens {
    /// Whether the cache answered a token of this request with an identity it held
    /// (verified earlier, so checked without a signature check).
    pub fn answered_from_cache(&self) -> bool {
        self.0.borrow().iter().any(|(_, answer)| answer.is_some())
    }
}

/// A [`LocalAuthenticator`] that answers from a [`TokenCache`] first: a cached token
/// needs no signature check (so a decision on a platform that checks signatures
/// asynchronously does not wait), and a token it verifies is kept for later requests.
pub struct CachedAuthenticator<'a, V: SignatureVerifier> {
    /// Verifies what the cache does not hold.
    pub inner: LocalAuthenticator<'a, V>,
    /// The cache.
    pub cache: &'a TokenCache,
    /// This request's answers (one per request, kept across the runs of its decision).
    pub request: &'a RequestTokens,
}

impl<V: SignatureVerifier> CachedAuthenticator<'_, V> {
    /// The identity the cache holds for `digest`, as first answered in this request.
    fn looked_up(&self, digest: [u8; 32], now: Timestamp) -> Option<VerifiedIdentity> {
        if let Some((_, answer)) = self.request.0.borrow().iter().find(|(d, _)| *d == digest) {
            return answer.clone();
        }
        let answer = self.cache.lookup(&digest, self.inner.keys, now);
        let counter = if answer.is_some() {
            &self.cache.hits
        } else {
            &self.cache.misses
        };
        counter.set(counter.get() + 1);
        self.request.0.borrow_mut().push((digest, answer.clone()));
        answer
    }

    /// The cached identity of `token`, refused if the route does not accept its issuer.
    fn cached(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        now: Timestamp,
    ) -> Option<Result<VerifiedIdentity, AuthFailure>> {
        let identity = self.looked_up(token_digest(token), now)?;
        if !route_issuers.is_empty() && !route_issuers.contains(&identity.issuer) {
            return Some(Err(AuthFailure::new(
                Reason::IssuerUnknown,
                "the token's issuer is not accepted on this route",
            )
            .at(identity.issuer)));
        }
        Some(Ok(identity))
    }
}

impl<V: SignatureVerifier> Authenticator for CachedAuthenticator<'_, V> {
    fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        if let Some(cached) = self.cached(token, route_issuers, now) {
            return cached;
        }
        let identity = self.inner.authenticate(token, route_issuers, now)?;
        let skew = self
            .inner
            .config
            .issuers
            .get(identity.issuer.0)
            .map_or(Duration::ZERO, |i| i.clock_skew);
        self.cache
            .insert(token_digest(token), &identity, skew, self.inner.keys, now);
        Ok(identity)
    }

    fn verify_with_key(
        &self,
        alg: Algorithm,
        material: &KeyMaterial,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        self.inner
            .verify_with_key(alg, material, message, signature)
    }

    fn endpoints(&self, issuer: IssuerId) -> Result<ProviderEndpoints, String> {
        self.inner.endpoints(issuer)
    }

    fn signature_check(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        now: Timestamp,
    ) -> Option<SignatureCheck> {
        // A cached token is answered without one (`authenticate` gets the same answer).
        if self.cached(token, route_issuers, now).is_some() {
            return None;
        }
        self.inner.signature_check(token, route_issuers, now)
    }

    fn checked(&self, check: &SignatureCheck, valid: bool) {
        self.inner.checked(check, valid);
    }

    fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: IssuedKind,
        now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        // ID and logout tokens are checked every time (nonces, one-time use).
        self.inner
            .verify_issued(token, issuer, client_id, kind, now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::cell::RefCell;

    use portcullis_core::crypto::{KeyError, PortableKey};
    use portcullis_core::{Config, FetchRequest, PortableVerifier};
    use serde_json::json;

    use super::*;
    use crate::keys::{Document, DocumentSource, refresh};
    use crate::test_support::block_on;

    const CONFIG: &str = r#"
[[issuer]]
name = "idp"
issuer = "http://127.0.0.1:9"
jwks_uri = "http://127.0.0.1:9/jwks"
insecure_http_jwks = true
audiences = ["api"]
algorithms = ["EdDSA"]
clock_skew = "30s"

[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:10"]

[residency]
claim = "residency"
missing = "eu"
anonymous = "eu"

[[route]]
path = "/"

[audit]
subject_key_file = "audit.key"
"#;

    const T0: u64 = 1_800_000_000;

    fn key(seed: u8) -> ed25519_compact::KeyPair {
        ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]))
    }

    fn jwks(kp: &ed25519_compact::KeyPair) -> String {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
            "x": portcullis_core::b64::encode(kp.pk.as_ref())}]})
        .to_string()
    }

    fn token(kp: &ed25519_compact::KeyPair, exp: u64) -> String {
        let b64 = |v: serde_json::Value| portcullis_core::b64::encode(v.to_string().as_bytes());
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "EdDSA", "kid": "k1", "typ": "at+jwt"})),
            b64(
                json!({"iss": "http://127.0.0.1:9", "aud": "api", "sub": "alice",
                "iat": T0, "exp": exp})
            )
        );
        let sig = kp.sk.sign(input.as_bytes(), None);
        format!("{input}.{}", portcullis_core::b64::encode(sig.as_ref()))
    }

    /// Serves the key set in `jwks`.
    struct Documents {
        jwks: RefCell<String>,
        now: Timestamp,
    }

    impl DocumentSource for Documents {
        async fn fetch(&self, _: &FetchRequest) -> Result<Document, String> {
            Ok(Document {
                status: 200,
                cache_control: Some("max-age=600".into()),
                body: self.jwks.borrow().as_bytes().to_vec(),
                fetched_at: self.now,
            })
        }
    }

    /// The portable verifier, but asking the platform to check signatures first (as the
    /// worker's WebCrypto path does).
    struct PlatformFirst;

    impl SignatureVerifier for PlatformFirst {
        type Key = PortableKey;
        fn prepare(&self, material: &KeyMaterial) -> Result<PortableKey, KeyError> {
            PortableVerifier.prepare(material)
        }
        fn verify(&self, alg: Algorithm, key: &PortableKey, m: &[u8], s: &[u8]) -> bool {
            PortableVerifier.verify(alg, key, m, s)
        }
        fn platform_checks(&self) -> bool {
            true
        }
        fn platform_check(&self, _: &PortableKey, _: Algorithm) -> Option<KeyMaterial> {
            Some(KeyMaterial::Ed25519 { x: vec![0; 32] })
        }
    }

    struct World {
        config: Config,
        keys: RefCell<KeyStore<PortableKey>>,
        docs: Documents,
        cache: TokenCache,
    }

    impl World {
        fn new(kp: &ed25519_compact::KeyPair) -> Self {
            let config = crate::test_support::config(CONFIG);
            let keys = RefCell::new(KeyStore::new(&config, &PlatformFirst));
            let w = Self {
                config,
                keys,
                docs: Documents {
                    jwks: RefCell::new(jwks(kp)),
                    now: Timestamp::from_unix_secs(T0),
                },
                cache: TokenCache::new(100),
            };
            w.refresh();
            w
        }

        fn refresh(&self) {
            let now = self.docs.now;
            block_on(refresh(
                &self.keys,
                &PlatformFirst,
                &self.docs,
                || now,
                |_, _| {},
            ));
        }

        /// One step of `request`'s decision.
        fn step<R>(
            &self,
            request: &RequestTokens,
            f: impl FnOnce(&CachedAuthenticator<'_, PlatformFirst>) -> R,
        ) -> R {
            let keys = self.keys.borrow();
            let auth = CachedAuthenticator {
                inner: LocalAuthenticator {
                    config: &self.config,
                    keys: &keys,
                    verifier: &PlatformFirst,
                },
                cache: &self.cache,
                request,
            };
            f(&auth)
        }

        /// A request of its own.
        fn auth<R>(&self, f: impl FnOnce(&CachedAuthenticator<'_, PlatformFirst>) -> R) -> R {
            self.step(&RequestTokens::default(), f)
        }

        fn rotate(&self, to: &ed25519_compact::KeyPair) {
            *self.docs.jwks.borrow_mut() = jwks(to);
            self.keys
                .borrow_mut()
                .request_refetch(IssuerId(0), Timestamp::from_unix_secs(T0));
            self.refresh();
        }

        fn authenticate(&self, token: &str, at: u64) -> Result<VerifiedIdentity, AuthFailure> {
            self.auth(|a| a.authenticate(token, &[], Timestamp::from_unix_secs(at)))
        }
    }

    #[test]
    fn a_verified_token_is_answered_from_the_cache_without_a_signature_check() {
        let kp = key(1);
        let w = World::new(&kp);
        let t = token(&kp, T0 + 600);
        let now = Timestamp::from_unix_secs(T0);
        // Not cached yet: the platform is asked to check the signature.
        let (check, first) = w.auth(|a| {
            (
                a.signature_check(&t, &[], now),
                a.authenticate(&t, &[], now).unwrap(),
            )
        });
        assert!(check.is_some());
        assert_eq!(first.subject.as_deref(), Some("alice"));
        assert_eq!((w.cache.hits(), w.cache.misses(), w.cache.len()), (0, 1, 1));
        // Cached: no platform check, the same identity.
        let later = Timestamp::from_unix_secs(T0 + 1);
        let (check, again) = w.auth(|a| {
            (
                a.signature_check(&t, &[], later),
                a.authenticate(&t, &[], later).unwrap(),
            )
        });
        assert!(check.is_none());
        assert_eq!(again, first);
        assert_eq!((w.cache.hits(), w.cache.misses()), (1, 1));
        // Each request knows whether the cache answered it, whatever others did.
        let (verified, hit, idle) = (
            RequestTokens::default(),
            RequestTokens::default(),
            RequestTokens::default(),
        );
        let t2 = token(&kp, T0 + 700);
        w.step(&verified, |a| a.authenticate(&t2, &[], later))
            .unwrap();
        w.step(&hit, |a| a.authenticate(&t, &[], later)).unwrap();
        assert!(!verified.answered_from_cache());
        assert!(hit.answered_from_cache());
        assert!(!idle.answered_from_cache());
        // The route's issuers still apply to a cached token.
        let other = w
            .auth(|a| a.authenticate(&t, &[IssuerId(3)], now))
            .unwrap_err();
        assert_eq!(other.reason, Reason::IssuerUnknown);
    }

    #[test]
    fn refusals_are_not_cached() {
        let kp = key(1);
        let w = World::new(&kp);
        let forged = token(&key(2), T0 + 600);
        for _ in 0..2 {
            let f = w.authenticate(&forged, T0).unwrap_err();
            assert_eq!(f.reason, Reason::SignatureInvalid);
        }
        assert_eq!((w.cache.hits(), w.cache.misses(), w.cache.len()), (0, 2, 0));
    }

    #[test]
    fn a_cached_token_expires_with_its_exp_plus_skew() {
        let kp = key(1);
        let w = World::new(&kp);
        let t = token(&kp, T0 + 60);
        w.authenticate(&t, T0).unwrap();
        // Within exp + 30 s of skew: believed.
        w.authenticate(&t, T0 + 89).unwrap();
        assert_eq!(w.cache.hits(), 1);
        // Past it: checked again, and refused as expired.
        let f = w.authenticate(&t, T0 + 91).unwrap_err();
        assert_eq!(f.reason, Reason::TokenExpired);
        assert_eq!((w.cache.hits(), w.cache.len()), (1, 0));
    }

    #[test]
    fn a_key_set_change_drops_the_tokens_verified_under_the_old_one() {
        let kp = key(1);
        let w = World::new(&kp);
        let t = token(&kp, T0 + 600);
        w.authenticate(&t, T0).unwrap();
        // The issuer rotates to another key under the same `kid`.
        w.rotate(&key(2));
        let f = w.authenticate(&t, T0 + 1).unwrap_err();
        assert_eq!(f.reason, Reason::SignatureInvalid);
        assert_eq!(w.cache.hits(), 0);
    }

    #[test]
    fn a_requests_answer_holds_while_its_decision_runs() {
        let kp = key(1);
        let w = World::new(&kp);
        let t = token(&kp, T0 + 600);
        let now = Timestamp::from_unix_secs(T0);
        // Request A asks for a platform check and waits; meanwhile request B verifies the
        // same token. A resumes: it is asked the same thing again, and verifies.
        let a = RequestTokens::default();
        assert!(w.step(&a, |x| x.signature_check(&t, &[], now)).is_some());
        w.auth(|x| x.authenticate(&t, &[], now)).unwrap();
        assert!(w.step(&a, |x| x.signature_check(&t, &[], now)).is_some());
        w.step(&a, |x| x.authenticate(&t, &[], now)).unwrap();
        // Request C finds it cached; the issuer's keys rotate while C waits for something
        // else: C keeps its answer, a new request checks the token again.
        let c = RequestTokens::default();
        assert!(w.step(&c, |x| x.signature_check(&t, &[], now)).is_none());
        w.rotate(&key(2));
        assert!(w.step(&c, |x| x.signature_check(&t, &[], now)).is_none());
        assert_eq!(
            w.step(&c, |x| x.authenticate(&t, &[], now))
                .unwrap()
                .subject
                .as_deref(),
            Some("alice")
        );
        let f = w.authenticate(&t, T0).unwrap_err();
        assert_eq!(f.reason, Reason::SignatureInvalid);
        // Counted once per request and token: A and B missed, C hit, the last one missed.
        assert_eq!((w.cache.hits(), w.cache.misses()), (1, 3));
    }
}
