//! Serving: the gateway listener (every request through an instance of the
//! pre-instantiated component, in its own store, under an epoch deadline, or natively),
//! and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::client::full_body;
use crate::serve::Shared;
use crate::serve::component::StoreState;
use crate::serve::native::NativeEngine;
use crate::wasm::{EPOCH_TICK, Instance};

/// The gateway server.
pub struct Gateway {
    engine: wasmtime::Engine,
    mode: Mode,
    shared: Arc<Shared>,
    deadline_ticks: u64,
    request_timeout: Duration,
    next_id: AtomicU64,
    boot: u64,
}

/// How requests are decided.
enum Mode {
    /// In an instance of the pre-instantiated gateway component.
    Component(Instances),
    /// Natively, by the same core (the fast path).
    Native(Box<NativeEngine>),
}

/// The component engine's instances: the pre-instantiated component, and the instances
/// kept to serve further requests when one may serve more than one.
struct Instances {
    pre: ProxyPre<StoreState>,
    /// Requests one instance serves at most (1: a fresh instance for every request).
    reuse: u32,
    /// Instances whose last request returned cleanly, ready for another.
    idle: Arc<Mutex<Vec<Kept>>>,
    /// Idle instances kept at most (each holds its memory).
    max_idle: usize,
}

/// An idle instance, in its store.
struct Kept {
    store: Store<StoreState>,
    proxy: Proxy,
    /// Requests it has served.
    served: u32,
}

impl Gateway {
    /// A server for a pre-instantiated component; each request may run `timeout` at most.
    /// An instance serves `reuse` requests at most, one at a time (1: a fresh instance per
    /// request, as edge runtimes run it); at most `max_idle` wait between requests.
    pub fn new(
        pre: ProxyPre<StoreState>,
        shared: Arc<Shared>,
        timeout: Duration,
        reuse: u32,
        max_idle: usize,
    ) -> Self {
        let engine = pre.engine().clone();
        // A new configuration starts with no kept instance.
        shared.metrics.idle_instances(0);
        let instances = Instances {
            pre,
            reuse: reuse.max(1),
            idle: Arc::default(),
            max_idle,
        };
        Self::with_mode(engine, Mode::Component(instances), shared, timeout)
    }

    /// A server deciding natively (no component instance per request). `engine` runs the
    /// risk plugins.
    pub fn native(
        engine: wasmtime::Engine,
        native: NativeEngine,
        shared: Arc<Shared>,
        timeout: Duration,
    ) -> Self {
        Self::with_mode(engine, Mode::Native(Box::new(native)), shared, timeout)
    }

    fn with_mode(
        engine: wasmtime::Engine,
        mode: Mode,
        shared: Arc<Shared>,
        timeout: Duration,
    ) -> Self {
        let ticks = (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1);
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            engine,
            mode,
            shared,
            deadline_ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
            request_timeout: timeout,
            next_id: AtomicU64::new(0),
            boot,
        }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Drives the epoch clock of the wasmtime engine from a thread of its own, so that
    /// deadlines fire even while every runtime worker is busy inside wasm.
    pub fn start_epoch_ticker(&self) {
        let engine = self.engine.weak();
        let spawned = std::thread::Builder::new()
            .name("portcullis-epoch".into())
            .spawn(move || {
                while let Some(engine) = engine.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the epoch thread: deadlines will not fire");
        }
    }

    /// Handles one request through the component.
    pub async fn handle<B>(
        &self,
        peer: SocketAddr,
        mut req: Request<B>,
    ) -> Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error> + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let valid_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
            });
        if !valid_id {
            let id = format!(
                "{:x}-{:x}",
                self.boot,
                self.next_id.fetch_add(1, Ordering::Relaxed)
            );
            if let Ok(v) = http::HeaderValue::from_str(&id) {
                req.headers_mut().insert("x-request-id", v);
            }
        }
        let instances = match &self.mode {
            Mode::Native(native) => {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                // `--request-timeout` bounds the decision and the backend's response head
                // here as the epoch deadline does in the component engine; the cut request
                // is audited like any refusal.
                let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
                let response =
                    match tokio::time::timeout(self.request_timeout, native.handle(peer, req, &id))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            let refusal = portcullis_core::decision::problem(
                                portcullis_core::Reason::BackendTimeout,
                                "the request did not complete within the gateway's request timeout",
                                &id,
                                &[],
                            );
                            self.refused(&refusal, &id, method, path);
                            crate::serve::native::respond(&refusal)
                        }
                    };
                self.shared.metrics.latency(started.elapsed());
                return response;
            }
            Mode::Component(instances) => instances,
        };
        // The component's wasi:http request needs an authority: refuse what the core would
        // refuse (missing, repeated or invalid Host) with the core's own answer.
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let Some(refusal) = crate::serve::native::host_refusal(&req, id) {
            self.refused(
                &refusal,
                id,
                req.method().to_string(),
                req.uri().path().to_owned(),
            );
            self.shared.metrics.latency(started.elapsed());
            return crate::serve::native::respond(&refusal);
        }
        let response = match self.run(instances, peer, req).await {
            Ok(r) => r,
            Err(e) => {
                self.shared.metrics.host_error();
                tracing::error!(error = %e, "request failed in the gateway component");
                let body = r#"{"title":"Gateway error","status":503,"reason":"gateway_error"}"#;
                let mut r = Response::new(full_body(body));
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/problem+json"),
                );
                r
            }
        };
        self.shared.metrics.latency(started.elapsed());
        response
    }

    /// Audits and counts a refusal the host made itself, before or around the decision.
    fn refused(
        &self,
        refusal: &portcullis_core::Response,
        request_id: &str,
        method: String,
        path: String,
    ) {
        self.shared.audit.emit(
            portcullis_core::AuditRecord {
                time_ms: crate::keys::now().unix_millis(),
                request_id: request_id.to_owned(),
                method,
                path,
                decision: "deny",
                status: Some(refusal.status.as_u16()),
                reason: Some(refusal.reason.code()),
                ..portcullis_core::AuditRecord::default()
            },
            None,
            &[],
        );
    }

    /// Runs `req` in a kept instance if one is idle, else in a fresh one; the instance is
    /// kept afterwards if it returned cleanly and may serve more requests. A trap or a
    /// deadline drops it.
    async fn run<B>(
        &self,
        instances: &Instances,
        peer: SocketAddr,
        req: Request<B>,
    ) -> anyhow::Result<Response<HyperOutgoingBody>>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let client = portcullis_core::client::client_info(
            &self.shared.client.proxies,
            Some(peer.ip()),
            req.headers(),
        );
        let kept = if instances.reuse > 1 {
            instances.idle.lock().ok().and_then(|mut idle| {
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
                proxy,
                served,
            }) => {
                store.data_mut().begin(peer.ip(), client);
                (store, Instance::Kept(proxy), served)
            }
            None => {
                self.shared.metrics.instance_created();
                let mut store = Store::new(
                    instances.pre.engine(),
                    StoreState::new(&self.shared, peer.ip(), client),
                );
                store.limiter(|s| &mut s.limits);
                (store, Instance::Fresh(instances.pre.clone()), 0)
            }
        };
        store.set_epoch_deadline(self.deadline_ticks);
        if self.shared.risk.fuel_enabled() {
            let _ = store.set_fuel(u64::MAX);
        }
        let served = served.saturating_add(1);
        let keep = (served < instances.reuse).then(|| (instances.idle.clone(), instances.max_idle));
        let shared = self.shared.clone();
        crate::wasm::handle_in(instance, store, req, move |store, proxy| {
            if let Some((idle, max_idle)) = keep
                && let Ok(mut idle) = idle.lock()
                && idle.len() < max_idle
            {
                idle.push(Kept {
                    store,
                    proxy,
                    served,
                });
                shared.metrics.idle_instances(idle.len());
            }
        })
        .await
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains in-flight
/// requests for at most `drain`; `current` gives the gateway of the configuration in use.
pub async fn serve(
    current: Arc<dyn Fn() -> Arc<Gateway> + Send + Sync>,
    listener: TcpListener,
    limits: portcullis_core::config::ServerLimits,
    tls: Option<Arc<crate::serve::tls::TlsFront>>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    crate::serve::listener::serve(listener, limits, tls, shutdown, &graceful, |peer, _| {
        let current = current.clone();
        service_fn(move |req| {
            // Each request is decided by the configuration current when it arrives.
            let gw = current();
            async move { Ok::<_, Infallible>(gw.handle(peer, req).await) }
        })
    })
    .await;
    tracing::info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain deadline reached"),
    }
}
