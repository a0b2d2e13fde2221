//! The wasmtime side: engine and component (pre-instantiated once, compiled artifact cached
//! on disk), per-request store state, the host implementations of the
//! `portcullis:gateway` interfaces, and the outbound hook that enforces the backend
//! allow-list on every request the component sends.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::BodyExt;
use portcullis_core::IssuerId;
use portcullis_core::limits::LimitCheck;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::audit::AuditSink;
use crate::health::Health;
use crate::keys::KeyService;
use crate::metrics::Metrics;
use crate::plugins::{self, PluginRuntime};
use crate::store::Store;
use portcullis_core::client::ClientInfo;
use portcullis_core::config::ClientConfig;

pub use crate::backends::{BackendClient, BackendOutcome, backend_client, full_body};
use crate::bindings::portcullis::gateway::{audit, client, config, health, keys, risk, state};
pub use crate::wasm::{
    COMPONENT, EPOCH_TICK, INSTANCE_MEMORY, default_cache_dir, engine, load_component,
};

/// State shared by every request.
pub struct Shared {
    /// Keys and token verification.
    pub keys: Arc<KeyService>,
    /// The configuration text.
    pub config_source: String,
    /// The validated configuration as a snapshot for the component.
    pub config_snapshot: Vec<u8>,
    /// Files the configuration names, read once at startup.
    pub config_files: BTreeMap<String, Vec<u8>>,
    /// Backend health and allow-list.
    pub health: Health,
    /// Shared state (the gateway's and, namespaced, the plugins').
    pub state: Arc<Store>,
    /// What requests needing unreachable state get.
    pub on_unavailable: portcullis_core::config::FailPolicy,
    /// The Turnstile-compatible challenge service, if configured.
    pub site_verify: Option<portcullis_core::config::SiteVerify>,
    /// Risk plugins.
    pub plugins: PluginRuntime,
    /// Trusted proxies and client headers.
    pub client: ClientConfig,
    /// Audit sink.
    pub audit: AuditSink,
    /// Metrics.
    pub metrics: Metrics,
    /// Backend client.
    pub backends: BackendClient,
    /// Span export (OTLP), when configured.
    pub traces: crate::traces::Traces,
}

impl Shared {
    /// Records how a call to `backend` started at `started` ended, for both engines: a
    /// failed connection ejects the backend (passive health), an answer restores it, and
    /// the region's latency or failure metric counts it.
    pub fn backend_done(
        &self,
        backend: portcullis_core::BackendId,
        started: std::time::Instant,
        outcome: BackendOutcome,
    ) {
        let region = self.health.region_name(backend);
        let kind = match outcome {
            BackendOutcome::Answered => {
                self.metrics.backend_answered(region, started.elapsed());
                self.health.mark_up(backend);
                return;
            }
            BackendOutcome::Timeout => "timeout",
            BackendOutcome::Connect => {
                self.health.mark_down(backend);
                "connect"
            }
            BackendOutcome::Other => "other",
        };
        self.metrics.backend_failed(region, kind);
    }
}

/// Per-request store data.
pub struct StoreState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    shared: Arc<Shared>,
    /// Memory limits.
    pub limits: StoreLimits,
    /// Who the client is (peer and trusted proxy headers).
    client: ClientInfo,
    /// The connecting peer.
    peer: IpAddr,
    /// The plugins that assessed this request and what they saw, for `observe`.
    assessed: Option<(Vec<usize>, Vec<plugins::RequestContext>)>,
    /// When the request arrived (its span's start).
    started: std::time::SystemTime,
    /// The backend calls made for it, for its trace (only while traces are exported).
    calls: Arc<std::sync::Mutex<Vec<crate::traces::BackendCall>>>,
}

impl StoreState {
    /// Fresh state for one request from `peer`, whose client is `client`.
    pub fn new(shared: Arc<Shared>, peer: IpAddr, client: ClientInfo) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stderr()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let calls: Arc<std::sync::Mutex<Vec<crate::traces::BackendCall>>> = Arc::default();
        Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outbound {
                calls: calls.clone(),
                shared: shared.clone(),
            },
            shared,
            limits: StoreLimitsBuilder::new()
                .memory_size(INSTANCE_MEMORY)
                .instances(32)
                .build(),
            client,
            peer,
            assessed: None,
            started: std::time::SystemTime::now(),
            calls,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Links WASI, wasi:http and the host services, and pre-instantiates the component.
pub fn pre_instantiate(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<ProxyPre<StoreState>> {
    let mut linker: Linker<StoreState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::bindings::HostServices::add_to_linker::<StoreState, HasSelf<StoreState>>(
        &mut linker,
        |s| s,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("link the gateway component")?;
    ProxyPre::new(pre).map_err(|e| anyhow::anyhow!("{e}"))
}

impl config::Host for StoreState {
    fn snapshot(&mut self) -> Vec<u8> {
        self.shared.config_snapshot.clone()
    }

    fn source(&mut self) -> String {
        self.shared.config_source.clone()
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, String> {
        self.shared
            .config_files
            .get(&path)
            .cloned()
            .ok_or_else(|| format!("{path}: not part of the configuration"))
    }
}

impl keys::Host for StoreState {
    async fn authenticate(
        &mut self,
        token: String,
        route_issuers: Vec<u32>,
    ) -> Result<keys::Verified, keys::Failure> {
        let issuers: Vec<IssuerId> = route_issuers
            .into_iter()
            .map(|i| IssuerId(i as usize))
            .collect();
        match self.shared.keys.authenticate(&token, &issuers).await {
            Ok((issuer, claims)) => Ok(keys::Verified {
                issuer: u32::try_from(issuer.0).unwrap_or(u32::MAX),
                claims: claims.to_string(),
            }),
            Err(f) => Err(keys::Failure {
                reason: f.reason.code().to_owned(),
                detail: f.detail,
                issuer: f.issuer.and_then(|i| u32::try_from(i.0).ok()),
            }),
        }
    }

    fn endpoints(&mut self, issuer: u32) -> Result<keys::ProviderEndpoints, String> {
        self.shared
            .keys
            .endpoints(IssuerId(issuer as usize))
            .map(|e| keys::ProviderEndpoints {
                authorization: e.authorization,
                token: e.token,
                end_session: e.end_session,
            })
            .ok_or_else(|| portcullis_core::login::NOT_DISCOVERED_YET.to_owned())
    }

    fn verify_issued(
        &mut self,
        token: String,
        issuer: u32,
        client_id: String,
        kind: keys::IssuedKind,
    ) -> Result<keys::Verified, keys::Failure> {
        use portcullis_core::authenticate::IssuedKind;
        let kind = match kind {
            keys::IssuedKind::IdToken => IssuedKind::IdToken,
            keys::IssuedKind::LogoutToken => IssuedKind::LogoutToken,
        };
        match self
            .shared
            .keys
            .verify_issued(&token, IssuerId(issuer as usize), &client_id, kind)
        {
            Ok(id) => Ok(keys::Verified {
                issuer,
                claims: serde_json::Value::Object(id.claims).to_string(),
            }),
            Err(f) => Err(keys::Failure {
                reason: f.reason.code().to_owned(),
                detail: f.detail,
                issuer: f.issuer.and_then(|i| u32::try_from(i.0).ok()),
            }),
        }
    }
}

impl health::Host for StoreState {
    fn is_healthy(&mut self, region: u32, index: u32) -> bool {
        self.shared.health.is_healthy(portcullis_core::BackendId {
            region: portcullis_core::config::RegionId(region as usize),
            index: index as usize,
        })
    }
}

impl state::Host for StoreState {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        let got = self.shared.state.get(&key).await;
        got.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "state get failed");
            None
        })
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) {
        if let Err(e) = self
            .shared
            .state
            .set(&key, value, Duration::from_millis(ttl_ms))
            .await
        {
            tracing::warn!(error = %e, "state set failed");
        }
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_ms: u64) -> i64 {
        // An unreachable store reads as "seen very often": callers counting towards a
        // limit then refuse rather than allow.
        let counted = self
            .shared
            .state
            .increment(&key, delta, Duration::from_millis(ttl_ms))
            .await;
        counted.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "state increment failed");
            i64::MAX
        })
    }

    async fn delete(&mut self, key: String) -> Result<(), String> {
        self.shared
            .state
            .delete(&key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn first_use(&mut self, key: String, ttl_ms: u64) -> Result<bool, String> {
        first_use(&self.shared, &key, Duration::from_millis(ttl_ms)).await
    }

    async fn rate_limit(
        &mut self,
        checks: Vec<state::LimitCheck>,
    ) -> Result<Vec<state::LimitStatus>, String> {
        let checks: Vec<LimitCheck> = checks
            .into_iter()
            .map(|c| LimitCheck {
                key: c.key,
                interval_us: c.interval_us,
                burst: c.burst,
            })
            .collect();
        let statuses = self
            .shared
            .state
            .rate_limit(&checks, crate::keys::now())
            .await
            .map_err(|e| e.to_string())?;
        Ok(statuses
            .into_iter()
            .map(|s| state::LimitStatus {
                allowed: s.allowed,
                remaining: s.remaining,
                retry_after_us: s.retry_after_us,
                reset_us: s.reset_us,
            })
            .collect())
    }
}

/// A replay-cache check against the shared state; while it is unreachable the
/// configuration's `on_unavailable` answers: `"allow"` counts the value as new, `"deny"`
/// returns the error (the core refuses with 503 `state_unavailable`).
pub async fn first_use(shared: &Shared, key: &str, ttl: Duration) -> Result<bool, String> {
    replay_policy(shared, shared.state.first_use(key, ttl).await)
}

/// A replay check's answer under `[state] on_unavailable`: an unreachable store counts the
/// value as new under `"allow"` and is an error under `"deny"`.
pub fn replay_policy(
    shared: &Shared,
    answer: Result<bool, crate::store::StoreError>,
) -> Result<bool, String> {
    match answer {
        Ok(first) => Ok(first),
        Err(e) => {
            tracing::warn!(error = %e, "replay check failed: state unavailable");
            if shared.on_unavailable == portcullis_core::config::FailPolicy::Allow {
                Ok(true)
            } else {
                Err(e.to_string())
            }
        }
    }
}

impl client::Host for StoreState {
    fn peer(&mut self) -> Option<String> {
        Some(self.peer.to_string())
    }

    async fn verify_site_token(
        &mut self,
        site_token: String,
        remote_ip: Option<String>,
    ) -> Result<bool, String> {
        let Some(site) = &self.shared.site_verify else {
            return Err("no site verification service is configured".into());
        };
        let ip = remote_ip.and_then(|i| i.parse().ok());
        crate::site_verify::verify(&self.shared.backends, site, &site_token, ip).await
    }

    async fn token_request(
        &mut self,
        issuer: u32,
        authorization: String,
        body: String,
    ) -> Result<(u16, Vec<u8>), String> {
        crate::site_verify::token_request(
            &self.shared.keys,
            &self.shared.backends,
            IssuerId(issuer as usize),
            &authorization,
            &body,
        )
        .await
    }
}

impl audit::Host for StoreState {
    fn emit(&mut self, record: audit::DecisionRecord) {
        self.shared.metrics.decision(
            &record.decision,
            record.reason.as_deref(),
            record.session.as_deref(),
        );
        if self.shared.traces.enabled() {
            let calls = self
                .calls
                .lock()
                .map(|mut c| std::mem::take(&mut *c))
                .unwrap_or_default();
            let span = crate::traces::DecisionSpan::from(&record);
            let now = std::time::SystemTime::now();
            self.shared
                .traces
                .decision(&span, self.started, now, &calls);
        }
        self.shared.audit.write(record);
    }
}

impl risk::Host for StoreState {
    async fn assess(
        &mut self,
        ids: Vec<u32>,
        ctx: risk::RequestContext,
    ) -> Vec<Result<risk::Assessment, String>> {
        let shared = self.shared.clone();
        let runtime = &shared.plugins;
        let base = plugin_context(ctx, &self.client);
        let mut answers = Vec::with_capacity(ids.len());
        let mut seen = Vec::with_capacity(ids.len());
        let mut contexts = Vec::with_capacity(ids.len());
        for id in ids {
            let id = id as usize;
            let mut ctx = base.clone();
            let wanted = runtime.headers(id);
            ctx.headers.retain(|(n, _)| wanted.contains(n));
            let answer = runtime.assess(id, &ctx).await.map(|a| risk::Assessment {
                score: a.score,
                labels: a.labels,
                action: match a.action {
                    plugins::Action::Allow => risk::Action::Allow,
                    plugins::Action::StepUp => risk::Action::StepUp,
                    plugins::Action::Challenge => risk::Action::Challenge,
                    plugins::Action::Deny => risk::Action::Deny,
                },
                reason: a.reason,
            });
            answers.push(answer);
            seen.push(id);
            contexts.push(ctx);
        }
        self.assessed = Some((seen, contexts));
        answers
    }

    async fn observe(&mut self, status: u16) {
        let Some((ids, contexts)) = self.assessed.take() else {
            return;
        };
        let shared = self.shared.clone();
        for (id, ctx) in ids.into_iter().zip(contexts) {
            shared.plugins.observe(id, &ctx, status).await;
        }
    }
}

/// The plugin's view of a request: the gateway's context plus what the host knows of the
/// client.
fn plugin_context(ctx: risk::RequestContext, client: &ClientInfo) -> plugins::RequestContext {
    plugins::RequestContext {
        request_id: ctx.request_id,
        route: ctx.route,
        method: ctx.method,
        path: ctx.path,
        query: ctx.query,
        host: ctx.host,
        headers: ctx.headers,
        client_ip: client.ip.map(|ip| ip.to_string()),
        country: client.country.clone(),
        asn: client.asn,
        identity: ctx.identity.map(|i| plugins::Identity {
            subject: i.subject,
            issuer: i.issuer,
            scopes: i.scopes,
            acr: i.acr,
            amr: i.amr,
            actor: i.actor,
            session_id: i.session_id,
            client_id: i.client_id,
        }),
    }
}

pub use crate::bindings::DecisionRecord;

/// The outbound hook: only configured backends, with pooling.
struct Outbound {
    shared: Arc<Shared>,
    /// The request's backend calls, for its trace.
    calls: Arc<std::sync::Mutex<Vec<crate::traces::BackendCall>>>,
}

type ResponseFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, ResponseFuture), HttpError>> + Send,
    > {
        let shared = self.shared.clone();
        let calls = self.calls.clone();
        Box::new(async move {
            let uri = request.uri();
            let backend = match (uri.scheme_str(), uri.authority()) {
                (Some(scheme), Some(authority)) => {
                    shared.health.backend(scheme, authority.as_str())
                }
                _ => None,
            };
            let Some(backend) = backend else {
                tracing::warn!(uri = %request.uri(), "outbound request to a host that is not a configured backend refused");
                return Err(HttpError::HttpRequestDenied);
            };
            // The forwarding headers (`X-Forwarded-*`, `Forwarded`) are the core's decision
            // (portcullis_core::forwarding), already on the request: one rule everywhere.
            let first_byte = options
                .and_then(|o| o.first_byte_timeout)
                .unwrap_or(Duration::from_secs(30));
            let mut call = shared.traces.enabled().then(|| {
                crate::traces::BackendCall::new(
                    request.method().as_str(),
                    request.uri().authority().map_or("", |a| a.as_str()),
                    shared.health.region_name(backend),
                    request.headers(),
                )
            });
            let started = std::time::Instant::now();
            let sent = tokio::time::timeout(first_byte, shared.backends.request(request)).await;
            let mut done = |outcome, status| {
                shared.backend_done(backend, started, outcome);
                if let Some(mut c) = call.take() {
                    c.finish(outcome, status);
                    if let Ok(mut calls) = calls.lock() {
                        calls.push(c);
                    }
                }
            };
            let response = match sent {
                Err(_) => {
                    done(BackendOutcome::Timeout, None);
                    return Err(HttpError::ConnectionReadTimeout);
                }
                Ok(Err(e)) if e.is_connect() => {
                    done(BackendOutcome::Connect, None);
                    return Err(HttpError::ConnectionRefused);
                }
                Ok(Err(e)) => {
                    done(BackendOutcome::Other, None);
                    return Err(HttpError::InternalError(Some(e.to_string())));
                }
                Ok(Ok(r)) => r,
            };
            done(BackendOutcome::Answered, Some(response.status().as_u16()));
            let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
            let done: ResponseFuture = Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}
