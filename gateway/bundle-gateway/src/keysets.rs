//! The gateway and key sets of an edge bundle's instance: the configuration restored
//! once from the embedded snapshot (at bundle time, when the bundle is pre-initialized); remote key sets (and discovery documents) fetched at
//! run time over `wasi:http` when due, and shared between instances through the
//! `wasi:keyvalue` store with the time they were fetched, so an instance uses a copy another
//! one stored while it is fresh by its own `Cache-Control`. A token naming an unknown `kid`
//! makes one refetch from the issuer, at most once per `jwks_unknown_kid_interval` across
//! all instances (a one-time key in the store). Key sets baked in at bundle time
//! (`portcullis bundle --bake-keys`) are static: nothing is fetched for them.

use std::cell::RefCell;
use std::time::Duration;

use portcullis_core::authenticate::{AuthFailure, IssuedKind, identity_from_claims_json};
use portcullis_core::crypto::PortableKey;
use portcullis_core::keyset::{FetchRequest, ProviderEndpoints};
use portcullis_core::verified::{self, SealKey};
use portcullis_core::{
    Config, Gateway, IssuerId, KeyStore, PortableVerifier, Reason, Timestamp, VerifiedIdentity,
};
use portcullis_driver::keycache::{self, StoredDocument, store_key};
use portcullis_driver::keys::{Document, DocumentSource, Refreshed, refresh};

use crate::bindings::portcullis::bundle::embedded;
use crate::fetch;
use portcullis_kv as kv;

/// Longest a document fetch may take (as the native host).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set or discovery document read (as the native host).
const MAX_DOCUMENT: usize = 1 << 20;

/// The gateway and key sets of this instance.
pub struct Loaded {
    /// The gateway, with the one copy of the configuration.
    pub gateway: Gateway,
    keys: RefCell<KeyStore<PortableKey>>,
    /// The key verified tokens are shared under (`[state] verified_token_cache`).
    seal: Option<SealKey>,
}

/// Longest a shared verified token is believed, whatever its `exp`.
const MAX_SHARED_VERIFIED: Duration = Duration::from_secs(3600);

thread_local! {
    static LOADED: RefCell<Option<Result<&'static Loaded, String>>> = const { RefCell::new(None) };
}

/// The instance's gateway and key sets, restored on first use (an instance lives as long
/// as they do: they are never dropped).
pub fn loaded() -> Result<&'static Loaded, String> {
    LOADED.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let snapshot = embedded::snapshot();
            let restored = Config::from_snapshot(&snapshot)
                .map_err(|e| format!("embedded configuration: {e}"))
                .map(|config| {
                    let keys = RefCell::new(KeyStore::new(&config, &PortableVerifier));
                    let seal = config
                        .state
                        .verified_token_cache
                        .then(|| SealKey::derive(&config.audit.subject_key, &snapshot))
                        .flatten();
                    let gateway = Gateway::new(config);
                    &*Box::leak(Box::new(Loaded {
                        gateway,
                        keys,
                        seal,
                    }))
                });
            *slot = Some(restored);
        }
        slot.clone()
            .unwrap_or_else(|| Err("configuration unavailable".into()))
    })
}

/// The wall clock.
pub fn now() -> Timestamp {
    let t = wasip2::clocks::wall_clock::now();
    Timestamp::from_duration(Duration::new(t.seconds, t.nanoseconds))
}

/// Runs a future that never waits (every step of the refresh below is a blocking WASI
/// call) to its end; `None` if it did wait.
fn run_ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Documents from the shared store while fresh, else from the issuer (then stored).
struct SharedDocuments<'a> {
    config: &'a Config,
}

impl DocumentSource for SharedDocuments<'_> {
    async fn fetch(&self, request: &FetchRequest) -> Result<Document, String> {
        let now_ms = now().unix_millis();
        let policy = keycache::policy(self.config, request);
        let key = store_key(&request.url);
        if let Ok(Some(bytes)) = kv::get(&key, now_ms)
            && let Some(copy) = keycache::usable_copy(&bytes, request, &policy, now_ms)
        {
            return Ok(copy);
        }
        let got = fetch::send(&fetch::Call {
            post: false,
            url: &request.url,
            headers: &[("accept", "application/json")],
            body: &[],
            timeout: FETCH_TIMEOUT,
            max_body: MAX_DOCUMENT,
        })?;
        let stored = StoredDocument {
            fetched_ms: now_ms,
            status: got.status,
            cache_control: got.cache_control,
            body: got.body,
        };
        if let Some(fresh) = stored.shared_for(&policy) {
            let ttl_ms = u64::try_from(fresh.as_millis()).unwrap_or(u64::MAX);
            // Shared with the other instances; a failed write only costs them a fetch.
            let _ = kv::set(&key, &stored.to_bytes(), now_ms, ttl_ms);
        }
        Ok(stored.into_document())
    }
}

impl Loaded {
    /// The configuration.
    pub fn config(&self) -> &Config {
        self.gateway.config()
    }

    /// Fetches every document that is due (none for baked or static key sets).
    fn refresh(&self) {
        let source = SharedDocuments {
            config: self.config(),
        };
        let report = |request: &FetchRequest, outcome: &Refreshed| match outcome {
            Refreshed::Loaded => {}
            Refreshed::Rejected(e) => eprintln!(
                "{}",
                serde_json::json!({"keyset_error": e, "url": request.url})
            ),
            Refreshed::Unreachable(e) => {
                eprintln!("{}", serde_json::json!({"keyset_error": e}));
            }
        };
        let done = run_ready(refresh(&self.keys, &PortableVerifier, &source, now, report));
        if done.is_none() {
            eprintln!(
                "{}",
                serde_json::json!({"keyset_error": "the key-set refresh did not finish"})
            );
        }
    }

    /// After a token named a `kid` that `issuer`'s set lacks: fetches the set again from the
    /// issuer, at most once per `jwks_unknown_kid_interval` across every instance sharing
    /// the store. True when a fetch was made.
    fn refetch_for_unknown_kid(&self, issuer: IssuerId) -> bool {
        let t = now();
        let interval = self
            .config()
            .issuers
            .get(issuer.0)
            .map_or(Duration::from_secs(60), |i| {
                i.jwks_policy.unknown_kid_interval
            });
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let granted_here = self.keys.borrow_mut().request_refetch(issuer, t);
        if !granted_here {
            return false;
        }
        // Fails closed: an unreachable store grants no refetch.
        let key = format!("portcullis/keyset-refetch/{}", issuer.0);
        if !kv::first_use(&key, t.unix_millis(), interval_ms).unwrap_or(false) {
            return false;
        }
        self.refresh();
        true
    }

    /// Verifies an access token — from a verified-token entry another instance shared, or
    /// by its signature with one rate-limited refetch for an unknown `kid` (then shares
    /// it).
    pub fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
    ) -> Result<VerifiedIdentity, AuthFailure> {
        self.refresh();
        let t = now();
        if let Some(seal) = &self.seal
            && let Some(shared) = self.shared_verified(seal, token, route_issuers, t)
        {
            return shared;
        }
        let id = self.verify_token(token, route_issuers)?;
        if let Some(seal) = &self.seal
            && let Ok(claims) = serde_json::to_string(&id.claims)
        {
            self.share_verified(seal, token, id.issuer, id.expires_at, &claims, t);
        }
        Ok(id)
    }

    /// The entry another instance left for `token`, when it is sealed with this
    /// configuration's key, live, and made under the issuer's current (usable) key set.
    fn shared_verified(
        &self,
        seal: &SealKey,
        token: &str,
        route_issuers: &[IssuerId],
        t: Timestamp,
    ) -> Option<Result<VerifiedIdentity, AuthFailure>> {
        let now_ms = t.unix_millis();
        let bytes = kv::get(&verified::store_key(token), now_ms)
            .ok()
            .flatten()?;
        let entry = verified::open(seal, token, &bytes, now_ms)?;
        let current = self.keys.borrow().keys(entry.issuer, t).ok()?.fingerprint();
        if current != entry.key_set {
            return None;
        }
        if !route_issuers.is_empty() && !route_issuers.contains(&entry.issuer) {
            return Some(Err(AuthFailure::new(
                Reason::IssuerUnknown,
                "the token's issuer is not accepted on this route",
            )
            .at(entry.issuer)));
        }
        Some(identity_from_claims_json(
            entry.claims.as_bytes(),
            entry.issuer,
            "shared",
        ))
    }

    /// Leaves a sealed entry for `token` (just verified) for the other instances, until its
    /// `exp` plus the issuer's skew and at most [`MAX_SHARED_VERIFIED`]. A failed write only
    /// costs them a signature check.
    fn share_verified(
        &self,
        seal: &SealKey,
        token: &str,
        issuer: IssuerId,
        expires_at: f64,
        claims: &str,
        t: Timestamp,
    ) {
        let now_ms = t.unix_millis();
        let skew = self
            .config()
            .issuers
            .get(issuer.0)
            .map_or(Duration::ZERO, |i| i.clock_skew);
        let Some(until_ms) =
            verified::believed_until_ms(expires_at, skew, now_ms, MAX_SHARED_VERIFIED)
        else {
            return;
        };
        let Ok(set) = self.keys.borrow().keys(issuer, t).map(|s| s.fingerprint()) else {
            return;
        };
        let entry = verified::Entry {
            issuer,
            valid_until_ms: until_ms,
            key_set: set,
            claims: claims.to_owned(),
        };
        if let Some(sealed) = verified::seal(seal, token, &entry) {
            let _ = kv::set(
                &verified::store_key(token),
                &sealed,
                now_ms,
                until_ms - now_ms,
            );
        }
    }

    /// Verifies an access token's signature and claims, with one rate-limited refetch for
    /// an unknown `kid`.
    fn verify_token(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
    ) -> Result<VerifiedIdentity, AuthFailure> {
        let verify = || {
            portcullis_core::authenticate::authenticate(
                token,
                self.config(),
                &self.keys.borrow(),
                &PortableVerifier,
                route_issuers,
                now(),
            )
        };
        match verify() {
            Err(f) if f.unknown_kid => match f.issuer {
                Some(issuer) if self.refetch_for_unknown_kid(issuer) => verify(),
                _ => Err(f),
            },
            other => other,
        }
    }

    /// Verifies an ID token or logout token `issuer` issued to `client_id`.
    pub fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: IssuedKind,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        self.refresh();
        let verify = || {
            portcullis_core::authenticate::verify_issued(
                token,
                self.config(),
                &self.keys.borrow(),
                &PortableVerifier,
                issuer,
                client_id,
                kind,
                now(),
            )
        };
        match verify() {
            Err(f) if f.unknown_kid && self.refetch_for_unknown_kid(issuer) => verify(),
            other => other,
        }
    }

    /// The login endpoints from `issuer`'s discovery document.
    pub fn endpoints(&self, issuer: IssuerId) -> Result<ProviderEndpoints, String> {
        self.refresh();
        self.keys
            .borrow()
            .endpoints(issuer)
            .cloned()
            .ok_or_else(|| "the provider's discovery document is not loaded".to_owned())
    }
}
