//! The component engine: each request in an instance of the pre-instantiated gateway
//! component (a fresh one, or one kept from earlier requests with `--instance-reuse`),
//! whose store holds one host of each capability (the `portcullis:gateway` interfaces,
//! each implemented in its capability's folder), and the outbound hook that enforces the
//! backend allow-list on every request the component sends.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use http_body_util::BodyExt;
use portcullis_core::client::ClientInfo;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::audit::AuditHost;
use crate::audit::traces::BackendCall;
use crate::bindings::portcullis::gateway::{audit, client, config, health, keys, risk, state};
use crate::client::{BackendOutcome, ClientHost};
use crate::config::ConfigHost;
use crate::health::HealthHost;
use crate::keys::KeysHost;
use crate::risk::RiskHost;
use crate::serve::Shared;
use crate::state::StateHost;
use crate::wasm::{INSTANCE_MEMORY, WasiRequest};

/// The backend calls made for one request, for its trace.
type Calls = Arc<Mutex<Vec<BackendCall>>>;

/// Per-request store data: WASI, wasi:http, and one host per `portcullis:gateway`
/// interface.
pub struct StoreState {
    io: WasiRequest<Outbound>,
    /// Memory limits.
    pub limits: StoreLimits,
    config: ConfigHost,
    keys: KeysHost,
    state: StateHost,
    client: ClientHost,
    health: HealthHost,
    audit: AuditHost,
    risk: RiskHost,
}

impl StoreState {
    /// Fresh state for one request from `peer`, whose client is `client`.
    pub fn new(shared: &Arc<Shared>, peer: IpAddr, client: ClientInfo) -> Self {
        let calls: Calls = Arc::default();
        Self {
            io: WasiRequest::new(Outbound {
                calls: calls.clone(),
                shared: shared.clone(),
            }),
            limits: StoreLimitsBuilder::new()
                .memory_size(INSTANCE_MEMORY)
                .instances(32)
                .build(),
            config: ConfigHost(shared.config.clone()),
            keys: KeysHost(shared.keys.clone()),
            state: StateHost(shared.state.clone()),
            client: ClientHost {
                service: shared.client.clone(),
                keys: shared.keys.clone(),
                peer,
            },
            health: HealthHost(shared.health.clone()),
            audit: AuditHost {
                service: shared.audit.clone(),
                started: SystemTime::now(),
                calls,
            },
            risk: RiskHost {
                runtime: shared.risk.clone(),
                client,
                assessed: None,
            },
        }
    }

    /// Points a kept instance's store at its next request: the peer, the client, the
    /// start time, a new list of backend calls and no plugin verdict, so nothing of the
    /// previous request is seen by the next one through the host services.
    pub fn begin(&mut self, peer: IpAddr, client: ClientInfo) {
        let calls: Calls = Arc::default();
        self.io.hooks_mut().calls = calls.clone();
        self.client.peer = peer;
        self.audit.started = SystemTime::now();
        self.audit.calls = calls;
        self.risk.client = client;
        self.risk.assessed = None;
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.io.wasi()
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.io.http()
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
    link_services(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("link the gateway component")?;
    ProxyPre::new(pre).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Links each `portcullis:gateway` interface to its capability's host in the store.
fn link_services(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    config::add_to_linker::<_, HasSelf<ConfigHost>>(linker, |s| &mut s.config)?;
    keys::add_to_linker::<_, HasSelf<KeysHost>>(linker, |s| &mut s.keys)?;
    state::add_to_linker::<_, HasSelf<StateHost>>(linker, |s| &mut s.state)?;
    client::add_to_linker::<_, HasSelf<ClientHost>>(linker, |s| &mut s.client)?;
    health::add_to_linker::<_, HasSelf<HealthHost>>(linker, |s| &mut s.health)?;
    audit::add_to_linker::<_, HasSelf<AuditHost>>(linker, |s| &mut s.audit)?;
    risk::add_to_linker::<_, HasSelf<RiskHost>>(linker, |s| &mut s.risk)
}

/// The outbound hook: only configured backends, with pooling.
struct Outbound {
    shared: Arc<Shared>,
    /// The request's backend calls, for its trace.
    calls: Calls,
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
            let mut call = shared.audit.traces.enabled().then(|| {
                BackendCall::new(
                    request.method().as_str(),
                    request.uri().authority().map_or("", |a| a.as_str()),
                    shared.health.region_name(backend),
                    request.headers(),
                )
            });
            let started = std::time::Instant::now();
            let sent = tokio::time::timeout(
                first_byte,
                shared.client.for_backend(backend).request(request),
            )
            .await;
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
                    let outcome = crate::client::backends::failure_outcome(&e);
                    done(outcome, None);
                    if outcome == BackendOutcome::Identity {
                        return Err(HttpError::TlsCertificateError);
                    }
                    return Err(HttpError::ConnectionRefused);
                }
                Ok(Err(e)) => {
                    done(BackendOutcome::Other, None);
                    return Err(HttpError::InternalError(Some(e.to_string())));
                }
                Ok(Ok(mut r)) => {
                    crate::client::drop_connection_listed(&mut r);
                    r
                }
            };
            done(BackendOutcome::Answered, Some(response.status().as_u16()));
            let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
            let done: ResponseFuture = Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}
