//! The host's `keys` service: key sets fetched in the background by the core's state
//! machine, tokens verified natively and cached.

pub mod token_cache;
pub mod verifier;
mod wit;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_core::authenticate::{AuthFailure, authenticate};
use portcullis_core::config::Config;
use portcullis_core::keyset::FetchRequest;
use portcullis_core::{Engine, FetchKind, IssuerId, KeyStore, Reason, Timestamp};
use portcullis_driver::keys::{Document, DocumentSource, Refreshed};
use tracing::{info, warn};

use token_cache::{TokenCache, token_key};
use verifier::{NativeKey, NativeVerifier};

pub use wit::KeysHost;

/// Largest key-set or discovery document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Timeout of one key-set fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP(S) client for key sets.
pub type FetchClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The current time.
pub fn now() -> Timestamp {
    Timestamp::from_duration(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Key sets, verification and the verified-token cache.
pub struct KeyService {
    engine: Engine<NativeVerifier>,
    store: RwLock<KeyStore<NativeKey>>,
    /// Verified tokens.
    pub cache: TokenCache,
    client: FetchClient,
}

fn https_connector() -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

impl KeyService {
    /// The service for `config`, caching up to `cache_capacity` verified tokens.
    pub fn new(config: Config, cache_capacity: usize) -> Self {
        let engine = Engine::new(config, NativeVerifier);
        let store = RwLock::new(engine.new_key_store());
        Self {
            engine,
            store,
            cache: TokenCache::new(cache_capacity),
            client: Client::builder(TokioExecutor::new()).build(https_connector()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// The engine (native verifier).
    pub fn engine(&self) -> &Engine<NativeVerifier> {
        &self.engine
    }

    /// Runs `f` with the key store (read access).
    pub fn with_store<R>(&self, f: impl FnOnce(&KeyStore<NativeKey>) -> R) -> Option<R> {
        self.store.read().ok().map(|s| f(&s))
    }

    /// `f` for every configured issuer, in configuration order, with the key store (`None`
    /// while the store is poisoned).
    fn each_issuer<T>(
        &self,
        f: impl Fn(&KeyStore<NativeKey>, IssuerId, &portcullis_core::config::IssuerConfig) -> T,
    ) -> Option<Vec<T>> {
        let issuers = &self.engine.config().issuers;
        self.with_store(|s| {
            issuers
                .iter()
                .enumerate()
                .map(|(i, cfg)| f(s, IssuerId(i), cfg))
                .collect()
        })
    }

    /// `check --online`: per issuer (by name) what its key set holds, or why it could not be
    /// loaded (unreachable, a discovery document naming another issuer, no usable key),
    /// and for login providers whether discovery named the login endpoints.
    pub fn online_report(&self) -> Vec<(String, Result<String, String>)> {
        let at = now();
        self.each_issuer(|s, id, cfg| {
            let outcome = match s.keys(id, at) {
                Err(_) => Err(s
                    .stats(id)
                    .and_then(|(_, e)| e.map(str::to_owned))
                    .unwrap_or_else(|| "no key set loaded".to_owned())),
                Ok(set) => {
                    let kids: Vec<&str> = set
                        .entries()
                        .iter()
                        .map(|e| e.jwk.kid.as_deref().unwrap_or("(no kid)"))
                        .collect();
                    let mut summary = format!("{} key(s): {}", kids.len(), kids.join(", "));
                    if !set.skipped().is_empty() {
                        summary.push_str(&format!(
                            "; {} skipped (unsupported or unusable)",
                            set.skipped().len()
                        ));
                    }
                    match (&cfg.login, s.endpoints(id)) {
                        (Some(_), None) => Err(format!(
                            "{summary}; but discovery named no authorization and token \
                             endpoints for its login"
                        )),
                        (Some(_), Some(_)) => Ok(format!("{summary}; login endpoints found")),
                        (None, _) => Ok(summary),
                    }
                }
            };
            (cfg.name.clone(), outcome)
        })
        .unwrap_or_default()
    }

    /// The names of the issuers whose keys cannot be used now (never loaded, or too stale);
    /// all of them while the key store cannot be read.
    pub fn unusable_issuers(&self) -> Vec<String> {
        let at = now();
        self.each_issuer(|s, id, cfg| s.keys(id, at).is_err().then(|| cfg.name.clone()))
            .map(|names| names.into_iter().flatten().collect())
            .unwrap_or_else(|| {
                let issuers = &self.engine.config().issuers;
                issuers.iter().map(|c| c.name.clone()).collect()
            })
    }

    /// Fetches everything that is due, following discovery to the key set.
    pub async fn refresh_due(&self) {
        let report = |req: &FetchRequest, outcome: &Refreshed| {
            let issuer = self
                .with_store(|s| s.issuer_url(req.issuer).map(str::to_owned))
                .flatten()
                .unwrap_or_else(|| "?".to_owned());
            match outcome {
                Refreshed::Loaded => {
                    if req.kind == FetchKind::Jwks {
                        self.cache.invalidate();
                    }
                    info!(issuer, url = req.url, kind = ?req.kind, reason = ?req.reason, "key document loaded");
                }
                Refreshed::Rejected(e) => {
                    warn!(issuer, url = req.url, error = e, "key document rejected")
                }
                Refreshed::Unreachable(e) => {
                    warn!(
                        issuer,
                        url = req.url,
                        error = e,
                        "key document fetch failed"
                    )
                }
            }
        };
        portcullis_driver::keys::refresh(&self.store, self.engine.verifier(), self, now, report)
            .await;
    }

    /// Refreshes in the background while the service is in use (a reload retires it).
    pub async fn run(self: Arc<Self>) {
        let service = Arc::downgrade(&self);
        drop(self);
        loop {
            match service.upgrade() {
                Some(s) => s.refresh_due().await,
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Takes over what `previous` (the service of the configuration this one replaces)
    /// learned about every issuer configured exactly as before: its key sets are not
    /// fetched again.
    pub fn carry_over_from(&self, previous: &KeyService) {
        let fingerprint =
            |c: &Config, i: usize| c.issuers.get(i).and_then(|i| serde_json::to_vec(i).ok());
        let (new_cfg, old_cfg) = (self.config(), previous.config());
        let (Ok(old), Ok(mut store)) = (previous.store.read(), self.store.write()) else {
            return;
        };
        store.carry_over(&old, |i, j| {
            fingerprint(new_cfg, i).is_some_and(|f| Some(f) == fingerprint(old_cfg, j))
        });
    }

    /// Verifies `token`: from the verified-token cache, or natively against the current key
    /// sets. Never waits: an unknown `kid` comes back as a failure with `unknown_kid` set
    /// (see [`refetch_for_unknown_kid`](Self::refetch_for_unknown_kid)).
    pub fn authenticate_now(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
    ) -> Result<(IssuerId, Arc<str>), AuthFailure> {
        let t = now();
        let now_s = t.unix_millis() as f64 / 1000.0;
        let key = token_key(token);
        let generation = self.cache.generation();
        // A cached verification stands only while its issuer's key set is usable: past
        // `jwks_max_stale` the issuer's tokens get `keys_unavailable`, cached or not.
        let hit = self.cache.get(&key, now_s).filter(|hit| {
            self.store
                .read()
                .is_ok_and(|s| s.keys(hit.issuer, t).is_ok())
        });
        if let Some(hit) = hit {
            if route_issuers.is_empty() || route_issuers.contains(&hit.issuer) {
                return Ok((hit.issuer, hit.claims));
            }
            return Err(AuthFailure::new(
                Reason::IssuerUnknown,
                "the token's issuer is not accepted on this route",
            )
            .at(hit.issuer));
        }
        self.verify(token, route_issuers, t, key, generation)
    }

    /// After a token named a `kid` that `issuer`'s set lacks: fetches the set again, at most
    /// once per `jwks_unknown_kid_interval`. True when a fetch was made.
    pub async fn refetch_for_unknown_kid(&self, issuer: IssuerId) -> bool {
        let t = now();
        let granted = self
            .store
            .write()
            .map(|mut s| s.request_refetch(issuer, t))
            .unwrap_or(false);
        if !granted {
            return false;
        }
        self.refresh_due().await;
        true
    }

    /// Verifies `token` like [`authenticate_now`](Self::authenticate_now), with one
    /// rate-limited key-set refetch when it names an unknown `kid`.
    pub async fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
    ) -> Result<(IssuerId, Arc<str>), AuthFailure> {
        match self.authenticate_now(token, route_issuers) {
            Err(f) if f.unknown_kid => match f.issuer {
                Some(issuer) if self.refetch_for_unknown_kid(issuer).await => {
                    self.authenticate_now(token, route_issuers)
                }
                _ => Err(f),
            },
            other => other,
        }
    }

    fn verify(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        t: Timestamp,
        key: [u8; 32],
        generation: u64,
    ) -> Result<(IssuerId, Arc<str>), AuthFailure> {
        let store = self
            .store
            .read()
            .map_err(|_| AuthFailure::new(Reason::KeysUnavailable, "key store unavailable"))?;
        let config = self.engine.config();
        let id = authenticate(
            token,
            config,
            &store,
            self.engine.verifier(),
            route_issuers,
            t,
        )?;
        drop(store);
        let claims: Arc<str> = Arc::from(serde_json::Value::Object(id.claims).to_string());
        let skew = config
            .issuers
            .get(id.issuer.0)
            .map_or(0.0, |i| i.clock_skew.as_secs_f64());
        self.cache.offer(
            key,
            id.issuer,
            claims.clone(),
            id.expires_at + skew,
            generation,
        );
        Ok((id.issuer, claims))
    }

    /// The login endpoints `issuer`'s discovery document named, once loaded.
    pub fn endpoints(
        &self,
        issuer: IssuerId,
    ) -> Option<portcullis_core::keyset::ProviderEndpoints> {
        self.with_store(|s| s.endpoints(issuer).cloned()).flatten()
    }

    /// Verifies an ID or logout token `issuer` issued to the client `client_id` (never
    /// cached: these arrive once per login or logout).
    pub fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: portcullis_core::authenticate::IssuedKind,
    ) -> Result<portcullis_core::VerifiedIdentity, AuthFailure> {
        let store = self
            .store
            .read()
            .map_err(|_| AuthFailure::new(Reason::KeysUnavailable, "key store unavailable"))?;
        portcullis_core::authenticate::verify_issued(
            token,
            self.engine.config(),
            &store,
            self.engine.verifier(),
            issuer,
            client_id,
            kind,
            now(),
        )
    }

    /// Key-set and token-cache metrics for one scrape: per issuer the refresh counters,
    /// the set's age, how long past its freshness it is, and how long it may still be used
    /// if refreshes keep failing (alert on that before `jwks_max_stale` runs out).
    pub fn add_metrics(&self, scrape: &mut crate::metrics::Scrape) {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;

        type ByIssuer = Vec<(&'static str, String)>;
        let refreshes = Family::<ByIssuer, Counter>::default();
        let failures = Family::<ByIssuer, Counter>::default();
        let refetches = Family::<ByIssuer, Counter>::default();
        let throttled = Family::<ByIssuer, Counter>::default();
        let usable = Family::<ByIssuer, Gauge>::default();
        let age = Family::<ByIssuer, crate::metrics::SecondsGauge>::default();
        let stale = Family::<ByIssuer, crate::metrics::SecondsGauge>::default();
        let left = Family::<ByIssuer, crate::metrics::SecondsGauge>::default();
        let at = now();
        let seconds = |d: Duration| d.as_secs_f64();
        let _ = self.with_store(|s| {
            for (i, issuer) in self.engine.config().issuers.iter().enumerate() {
                let id = IssuerId(i);
                let labels = vec![("issuer", issuer.name.clone())];
                if let Some((stats, _)) = s.stats(id) {
                    refreshes.get_or_create(&labels).inc_by(stats.refreshes);
                    failures.get_or_create(&labels).inc_by(stats.failures);
                    refetches
                        .get_or_create(&labels)
                        .inc_by(stats.unknown_kid_refetches);
                    throttled
                        .get_or_create(&labels)
                        .inc_by(stats.unknown_kid_throttled);
                }
                usable
                    .get_or_create(&labels)
                    .set(i64::from(s.keys(id, at).is_ok()));
                if let Some(set) = s.age(id) {
                    if let Some(until) = set.fresh_until {
                        age.get_or_create(&labels)
                            .set(seconds(at.saturating_since(set.loaded_at)));
                        stale
                            .get_or_create(&labels)
                            .set(seconds(at.saturating_since(until)));
                    }
                    if let Some(until) = set.usable_until {
                        left.get_or_create(&labels)
                            .set(seconds(until.saturating_since(at)));
                    }
                }
            }
        });
        scrape.add(
            "key_set_refreshes",
            "Key-set loads that succeeded",
            refreshes,
        );
        scrape.add("key_set_failures", "Key-set fetches that failed", failures);
        scrape.add(
            "unknown_kid_refetches",
            "Key-set refetches for a token naming an unknown kid",
            refetches,
        );
        scrape.add(
            "unknown_kid_throttled",
            "Unknown-kid refetches refused by jwks_unknown_kid_interval",
            throttled,
        );
        scrape.add(
            "key_set_usable",
            "1 while the issuer's tokens can be verified, 0 when its keys are unavailable",
            usable,
        );
        scrape.add(
            "key_set_age_seconds",
            "Time since the key set in use was loaded (fetched sets only)",
            age,
        );
        scrape.add(
            "key_set_stale_seconds",
            "Time the key set in use is past its freshness (0 while fresh)",
            stale,
        );
        scrape.add(
            "key_set_usable_remaining_seconds",
            "Time left before the key set is too stale to use (jwks_max_stale) if refreshes keep failing",
            left,
        );
        let counter = crate::metrics::counter_of;
        scrape.add(
            "token_cache_hits",
            "Verified-token cache hits",
            counter(&self.cache.hits),
        );
        scrape.add(
            "token_cache_misses",
            "Verified-token cache misses",
            counter(&self.cache.misses),
        );
        scrape.add(
            "token_cache_first_sightings",
            "Verified tokens not kept because it was their first verification (kept from the second)",
            counter(&self.cache.first_sightings),
        );
        let entries = Gauge::<i64>::default();
        entries.set(i64::try_from(self.cache.len()).unwrap_or(i64::MAX));
        scrape.add(
            "token_cache_entries",
            "Verified tokens held (bounded by --token-cache)",
            entries,
        );
    }
}
impl DocumentSource for KeyService {
    async fn fetch(&self, request: &FetchRequest) -> Result<Document, String> {
        let url = &request.url;
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| format!("timed out after {FETCH_TIMEOUT:?}"))?
            .map_err(|e| format!("{e}"))?;
        let status = response.status().as_u16();
        let cache_control = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_DOCUMENT).collect(),
        )
        .await
        .map_err(|_| "body timed out".to_owned())?
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
        Ok(Document {
            status,
            cache_control,
            body: body.to_vec(),
            fetched_at: now(),
        })
    }
}
