//! Serving: the gateway listener (every request decided in an instance of the
//! pre-instantiated component, in its own store, under an epoch deadline, or natively, and
//! carried out by the host), and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::bindings::GatewayComponentPre;
use crate::epoch::EpochTicker;
use crate::serve::Shared;
use crate::serve::component::{ComponentEngine, EngineSettings, StoreState};
use crate::serve::native::NativeEngine;
use crate::wasm::EPOCH_TICK;

/// The gateway server.
pub struct Gateway {
    mode: Mode,
    shared: Arc<Shared>,
    request_timeout: Duration,
    next_id: AtomicU64,
    boot: u64,
}

/// How requests are decided.
enum Mode {
    /// In an instance of the pre-instantiated gateway component.
    Component(Box<ComponentEngine>),
    /// Natively, by the same core (the fast path).
    Native(Box<NativeEngine>),
}

impl Gateway {
    /// A server deciding in gateway-component instances (`pre`, compiled for an engine with
    /// `settings`); each request may run
    /// `timeout` at most. An instance decides `reuse` requests at most, one at a time (1: a
    /// fresh instance per request, as edge runtimes run it); at most `max_instances` exist
    /// at once, deciding or idle (a request that finds none free waits for one).
    pub fn new(
        (pre, settings): (GatewayComponentPre<StoreState>, EngineSettings),
        ticker: EpochTicker,
        shared: Arc<Shared>,
        config: portcullis_core::Config,
        timeout: Duration,
        reuse: u32,
        max_instances: usize,
    ) -> Self {
        let component = ComponentEngine::new(
            shared.clone(),
            config,
            (pre, settings),
            ticker,
            reuse,
            max_instances,
            deadline_ticks(timeout),
        );
        Self::with_mode(Mode::Component(Box::new(component)), shared, timeout)
    }

    /// A server deciding natively (no component instance per request; the risk plugins run
    /// in `shared`'s plugin runtime).
    pub fn native(native: NativeEngine, shared: Arc<Shared>, timeout: Duration) -> Self {
        Self::with_mode(Mode::Native(Box::new(native)), shared, timeout)
    }

    fn with_mode(mode: Mode, shared: Arc<Shared>, timeout: Duration) -> Self {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            mode,
            shared,
            request_timeout: timeout,
            next_id: AtomicU64::new(0),
            boot,
        }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The compiled gateway component and its engine's settings (component engine only).
    pub fn compiled(&self) -> Option<(EngineSettings, &wasmtime::component::Component)> {
        match &self.mode {
            Mode::Component(component) => Some(component.compiled()),
            Mode::Native(_) => None,
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
        let id = portcullis_driver::assign_request_id(req.headers_mut(), || {
            format!(
                "{:x}-{:x}",
                self.boot,
                self.next_id.fetch_add(1, Ordering::Relaxed)
            )
        });
        // `--request-timeout` bounds the decision and the backend's response head (the
        // component engine's decision is also bounded by the epoch deadline); the cut
        // request is audited like any refusal.
        let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
        let handled = async {
            match &self.mode {
                Mode::Native(native) => native.handle(peer, req, &id).await,
                Mode::Component(component) => component.handle(peer, req, &id).await,
            }
        };
        let response = match tokio::time::timeout(self.request_timeout, handled).await {
            Ok(r) => r,
            Err(_) => {
                let refusal = portcullis_core::decision::problem(
                    portcullis_core::Reason::BackendTimeout,
                    "the request did not complete within the gateway's request timeout",
                    &id,
                    &[],
                );
                self.shared.refused(&refusal, &id, method, path);
                crate::serve::carry::respond(&refusal)
            }
        };
        self.shared.metrics.latency(started.elapsed());
        response
    }
}

/// A request timeout in epoch ticks.
fn deadline_ticks(timeout: Duration) -> u64 {
    let ticks = (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX)
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
