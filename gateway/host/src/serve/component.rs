//! The component engine: each request decided in an instance of the pre-instantiated
//! gateway component (a fresh one, or one kept from earlier requests with
//! `--instance-reuse`), through its `portcullis:gateway/decide` export. The instance's store
//! holds one host of each capability (the `portcullis:gateway` interfaces, each implemented
//! in its capability's folder); the decision is carried out by the host, as the native
//! engine's is ([`crate::serve::carry`]): the instance is done with the request once it has
//! decided, and never holds a socket or a body.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use portcullis_core::client::ClientInfo;
use portcullis_core::config::RegionId;
use portcullis_core::{BackendId, Config, Forward, Outcome};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::audit::AuditHost;
use crate::bindings::exports::portcullis::gateway::decide;
use crate::bindings::portcullis::gateway::{audit, client, config, health, keys, risk, state};
use crate::bindings::{GatewayComponent, GatewayComponentPre};
use crate::client::ClientHost;
use crate::client::backends::full_body;
use crate::config::ConfigHost;
use crate::health::HealthHost;
use crate::keys::KeysHost;
use crate::risk::RiskHost;
use crate::serve::Shared;
use crate::serve::carry::{self, Shown, respond};
use crate::state::StateHost;
use crate::wasm::INSTANCE_MEMORY;

/// Per-instance store data: WASI (clocks, random, stderr; no sockets, no files) and one
/// host per `portcullis:gateway` interface.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
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
        Self {
            wasi: crate::wasm::sandboxed(WasiCtx::builder()),
            table: ResourceTable::new(),
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
            },
            risk: RiskHost {
                runtime: shared.risk.clone(),
                client,
                assessed: None,
            },
        }
    }

    /// Points a kept instance's store at its next request: the peer, the client, the
    /// start time and no plugin verdict, so nothing of the previous request is seen by the
    /// next one through the host services.
    pub fn begin(&mut self, peer: IpAddr, client: ClientInfo) {
        self.client.peer = peer;
        self.audit.started = SystemTime::now();
        self.risk.client = client;
        self.risk.assessed = None;
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

/// Links WASI and the host services, and pre-instantiates the component.
pub fn pre_instantiate(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<GatewayComponentPre<StoreState>> {
    let mut linker: Linker<StoreState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    link_services(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("link the gateway component")?;
    GatewayComponentPre::new(pre).map_err(|e| anyhow::anyhow!("{e}"))
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

/// The component engine.
pub struct ComponentEngine {
    shared: Arc<Shared>,
    /// The configuration the component was given (the host reads the form bodies it asks
    /// for, and carries out its forwards, by the same one).
    config: Config,
    pre: GatewayComponentPre<StoreState>,
    /// Requests one instance decides at most (1: a fresh instance for every request).
    reuse: u32,
    /// Instances whose last decision returned cleanly, ready for another.
    idle: Mutex<Vec<Kept>>,
    /// Idle instances kept at most (each holds its memory).
    max_idle: usize,
    /// How long a decision may run, in epoch ticks.
    deadline_ticks: u64,
}

/// An idle instance, in its store.
struct Kept {
    store: Store<StoreState>,
    instance: GatewayComponent,
    /// Requests it has decided.
    served: u32,
}

impl ComponentEngine {
    /// An engine deciding in instances of `pre` over the host's shared services: an
    /// instance decides `reuse` requests at most, one at a time (1: a fresh instance per
    /// request, as edge runtimes run it); at most `max_idle` wait between requests; a
    /// decision runs `deadline_ticks` epochs at most.
    pub fn new(
        shared: Arc<Shared>,
        config: Config,
        pre: GatewayComponentPre<StoreState>,
        reuse: u32,
        max_idle: usize,
        deadline_ticks: u64,
    ) -> Self {
        // A new configuration starts with no kept instance.
        shared.metrics.idle_instances(0);
        Self {
            shared,
            config,
            pre,
            reuse: reuse.max(1),
            idle: Mutex::default(),
            max_idle,
            deadline_ticks,
        }
    }

    /// Decides one request in an instance and carries the decision out (the request id is
    /// already set).
    pub async fn handle<B>(
        &self,
        peer: SocketAddr,
        req: Request<B>,
        request_id: &str,
    ) -> Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = SystemTime::now();
        let (parts, body) = req.into_parts();
        // A request to the gateway's own form endpoints is read here and answered, never
        // forwarded (as the native engine does).
        let (body, form) =
            if portcullis_core::login::wants_body(&self.config, &parts.method, parts.uri.path()) {
                match carry::form_body(body, request_id).await {
                    Ok(form) => (None, form.to_vec()),
                    Err(refusal) => return respond(&refusal),
                }
            } else {
                (Some(body), Vec::new())
            };
        let request = decide::Request {
            method: parts.method.as_str().to_owned(),
            target: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            peer: Some(peer.ip().to_string()),
            body: form,
        };
        let client = portcullis_core::client::client_info(
            &self.shared.client.proxies,
            Some(peer.ip()),
            &parts.headers,
        );
        let (decision, assessed) = match self.decide(peer.ip(), client, &request).await {
            Ok(d) => d,
            Err(e) => {
                self.shared.metrics.host_error();
                tracing::error!(error = %e, "request failed in the gateway component");
                return component_failed();
            }
        };
        let outcome = match outcome(decision.outcome) {
            Ok(o) => o,
            Err(detail) => {
                self.shared.metrics.host_error();
                tracing::error!(
                    detail,
                    "the gateway component's decision cannot be carried out"
                );
                return component_failed();
            }
        };
        let Some(audit) = decision.audit else {
            // Answered before deciding (the gateway's key set, an unreadable request, a
            // configuration that does not restore): nothing to audit, nothing to forward.
            return match outcome {
                Outcome::Respond(r) => respond(&r),
                Outcome::Forward(_) => {
                    self.shared.metrics.host_error();
                    tracing::error!("the gateway component forwarded without an audit record");
                    component_failed()
                }
            };
        };
        match body {
            None => carry::answer_only(&self.shared, request_id, started, outcome, audit),
            Some(body) => {
                carry::carry_out(
                    &self.shared,
                    &self.config,
                    Request::from_parts(parts, body),
                    request_id,
                    started,
                    outcome,
                    audit,
                    assessed,
                )
                .await
            }
        }
    }

    /// Runs `request`'s decision in a kept instance if one is idle, else in a fresh one;
    /// the instance is kept afterwards if it returned cleanly and may decide more. A trap
    /// or a deadline drops it. Returns the decision and what the plugins were shown.
    async fn decide(
        &self,
        peer: IpAddr,
        client: ClientInfo,
        request: &decide::Request,
    ) -> anyhow::Result<(decide::Decision, Shown)> {
        let kept = if self.reuse > 1 {
            self.idle.lock().ok().and_then(|mut idle| {
                let kept = idle.pop();
                self.shared.metrics.idle_instances(idle.len());
                kept
            })
        } else {
            None
        };
        let (mut store, instance, served) = match kept {
            Some(Kept {
                mut store,
                instance,
                served,
            }) => {
                store.data_mut().begin(peer, client);
                self.arm(&mut store);
                (store, instance, served)
            }
            None => {
                self.shared.metrics.instance_created();
                let mut store = Store::new(
                    self.pre.engine(),
                    StoreState::new(&self.shared, peer, client),
                );
                store.limiter(|s| &mut s.limits);
                // Instantiation runs under the same deadline as the decision.
                self.arm(&mut store);
                let instance = self.pre.instantiate_async(&mut store).await?;
                (store, instance, 0)
            }
        };
        let decision = instance
            .portcullis_gateway_decide()
            .call_decide(&mut store, request)
            .await?;
        let assessed = store.data_mut().risk.assessed.take().unwrap_or_default();
        let served = served.saturating_add(1);
        if served < self.reuse
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(Kept {
                store,
                instance,
                served,
            });
            self.shared.metrics.idle_instances(idle.len());
        }
        Ok((decision, assessed))
    }

    /// Sets a store's deadline for the next decision, and its fuel when the engine meters
    /// fuel (for plugins that need it: the gateway itself is bounded by the deadline).
    fn arm(&self, store: &mut Store<StoreState>) {
        store.set_epoch_deadline(self.deadline_ticks);
        if self.shared.risk.fuel_enabled() {
            let _ = store.set_fuel(u64::MAX);
        }
    }
}

/// The host's answer when the component fails (a trap, the deadline, a failed
/// instantiation) or returns a decision that cannot be carried out.
fn component_failed() -> Response<HyperOutgoingBody> {
    let body = r#"{"title":"Gateway error","status":503,"reason":"gateway_error"}"#;
    let mut r = Response::new(full_body(body));
    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// The component's outcome as the core's; why not when a field it returned is not a valid
/// HTTP field or status (a faulty component: the request fails closed).
fn outcome(outcome: decide::Outcome) -> Result<Outcome, String> {
    Ok(match outcome {
        decide::Outcome::Answer(a) => Outcome::Respond(portcullis_core::Response {
            status: http::StatusCode::from_u16(a.status)
                .map_err(|_| format!("status {}", a.status))?,
            headers: fields(a.headers)?,
            body: a.body,
            // The audit record carries the reason; an answer is written as it is.
            reason: portcullis_core::Reason::InvalidRequest,
        }),
        decide::Outcome::Forward(f) => Outcome::Forward(Forward {
            backend: BackendId {
                region: RegionId(f.region as usize),
                index: f.backend as usize,
            },
            path_and_query: f.path_and_query,
            remove_headers: f
                .remove_headers
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("field {n:?}")))
                .collect::<Result<_, _>>()?,
            set_headers: fields(f.set_headers)?,
            response_headers: fields(f.response_headers)?,
        }),
    })
}

fn fields(list: Vec<(String, Vec<u8>)>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    list.into_iter()
        .map(|(n, v)| {
            let name =
                HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("field name {n:?}"))?;
            let value = HeaderValue::from_bytes(&v).map_err(|_| format!("value of {n}"))?;
            Ok((name, value))
        })
        .collect()
}
