//! `portcullis serve-wasm`: the host as a plain `wasi:http` runtime, for edge bundles. It
//! links WASI, `wasi:http` and the standard `wasi:keyvalue` (over the host's shared state:
//! in memory for every instance of the process, or in Redis for every process) — no
//! Portcullis host service — so a component that runs here needs nothing an edge runtime
//! lacks. A fresh instance per request (as Spin, Fastly and `wasmtime serve` do), the
//! connecting address in `spin-client-addr` (as Spin sets it), stderr inherited (the
//! bundle's audit lines), no sockets, no files, outbound HTTP to any address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::client::{BackendClient, backend_client};
use crate::state::keyvalue::{self, KeyValue, KeyValueHost};
use crate::wasm::WasiRequest;

/// The header that carries the connecting address to the component, as Spin sets it.
pub const PEER_HEADER: &str = "spin-client-addr";

/// Per-request store data of a plain wasi:http guest.
pub struct PlainState {
    request: WasiRequest<AnyOutbound>,
    keyvalue: KeyValueHost,
}

impl WasiView for PlainState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.request.wasi()
    }
}

impl WasiHttpView for PlainState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.request.http()
    }
}

/// Outbound requests go wherever the guest sends them (a plain runtime has no allow-list
/// of ours; the bundle's gateway only sends to its configured backends).
struct AnyOutbound {
    client: BackendClient,
}

type ResponseFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for AnyOutbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, ResponseFuture), HttpError>> + Send,
    > {
        let client = self.client.clone();
        Box::new(async move {
            let first_byte = options
                .and_then(|o| o.first_byte_timeout)
                .unwrap_or(Duration::from_secs(30));
            let response = match tokio::time::timeout(first_byte, client.request(request)).await {
                Err(_) => return Err(HttpError::ConnectionReadTimeout),
                Ok(Err(e)) if e.is_connect() => return Err(HttpError::ConnectionRefused),
                Ok(Err(e)) => return Err(HttpError::InternalError(Some(e.to_string()))),
                Ok(Ok(mut r)) => {
                    crate::client::drop_connection_listed(&mut r);
                    r
                }
            };
            let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
            let done: ResponseFuture = Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// A plain wasi:http server for one component.
pub struct PlainServer {
    pre: ProxyPre<PlainState>,
    /// One permit per instance that may exist at once: a request that finds none free
    /// waits for one (an instance lives until its response body is sent, so a slow backend
    /// holds it) instead of failing to instantiate.
    slots: Arc<tokio::sync::Semaphore>,
    client: BackendClient,
    keyvalue: Arc<KeyValue>,
    /// The engine's epoch clock, running while an instance runs (its deadline fires by it).
    ticker: crate::epoch::EpochTicker,
}

impl PlainServer {
    /// Compiles and links `wasm` against WASI, wasi:http and wasi:keyvalue (over
    /// `keyvalue`) only: a component importing anything else is refused here, as an edge
    /// runtime would. With `cache_dir`, the compiled component is kept there and later
    /// starts load it instead of compiling (as `serve` does with the gateway component):
    /// compiling a bundle takes seconds and leaves tens of MiB in the process's heap. At
    /// most `max_instances` instances exist at once; a request beyond waits for one.
    pub fn new(
        wasm: &[u8],
        keyvalue: Arc<KeyValue>,
        cache_dir: Option<&std::path::Path>,
        max_instances: u32,
    ) -> anyhow::Result<Arc<Self>> {
        let max_instances = max_instances.max(1);
        let engine = crate::wasm::engine(max_instances, false)?;
        let component = crate::wasm::load_component(&engine, wasm, cache_dir)?;
        Self::with_component(&engine, &component, keyvalue, max_instances)
    }

    fn with_component(
        engine: &Engine,
        component: &Component,
        keyvalue: Arc<KeyValue>,
        max_instances: u32,
    ) -> anyhow::Result<Arc<Self>> {
        let mut linker: Linker<PlainState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        keyvalue::add_to_linker(&mut linker, |s: &mut PlainState| &mut s.keyvalue)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let pre = linker.instantiate_pre(component).map_err(|e| {
            anyhow::anyhow!("link the component with WASI, wasi:http and wasi:keyvalue only: {e}")
        })?;
        let pre = ProxyPre::new(pre).map_err(|e| anyhow::anyhow!("{e}"))?;
        let ticker = crate::epoch::EpochTicker::start(engine)?;
        Ok(Arc::new(Self {
            pre,
            ticker,
            slots: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(max_instances).unwrap_or(1),
            )),
            client: backend_client(portcullis_core::config::BackendTimeouts::default().connect),
            keyvalue,
        }))
    }

    async fn handle(
        &self,
        mut req: Request<hyper::body::Incoming>,
        peer: std::net::SocketAddr,
    ) -> anyhow::Result<Response<HyperOutgoingBody>> {
        // As Spin does: the connecting address in `spin-client-addr`, replacing any value
        // the client sent (a bundle reads it with `[client] peer_header`).
        req.headers_mut().remove(PEER_HEADER);
        if let Ok(v) = http::HeaderValue::from_str(&peer.to_string()) {
            req.headers_mut().insert(PEER_HEADER, v);
        }
        // Like any HTTP/1.1 server (RFC 9112 §3.2): 400 for a missing, repeated or invalid
        // Host, before a wasi:http request (which needs an authority) is made of it.
        if let Err(detail) = portcullis_core::request_authority(req.uri(), req.headers()) {
            let refusal = portcullis_core::decision::problem(
                portcullis_core::Reason::HostInvalid,
                &detail,
                "",
                &[],
            );
            return Ok(crate::serve::carry::respond(&refusal));
        }
        let slot = self.slots.clone().acquire_owned().await?;
        let mut store = Store::new(
            self.pre.engine(),
            PlainState {
                request: WasiRequest::new(AnyOutbound {
                    client: self.client.clone(),
                }),
                keyvalue: KeyValueHost::new(self.keyvalue.clone()),
            },
        );
        // 30 s of 1 ms epoch ticks, the clock running until the instance is done.
        let busy = self.ticker.busy();
        store.set_epoch_deadline(30_000);
        crate::wasm::handle(&self.pre, store, req, (slot, busy)).await
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let limits = portcullis_core::config::ServerLimits::default();
        crate::serve::listener::serve(listener, limits, None, shutdown, &graceful, |peer, _| {
            let server = self.clone();
            service_fn(move |req| {
                let server = server.clone();
                async move {
                    // The client's request id, if it sent one (the bundle makes its own
                    // otherwise, which a failed instance never returned).
                    let request_id = portcullis_driver::client_request_id(req.headers())
                        .unwrap_or_default()
                        .to_owned();
                    let response = match server.handle(req, peer).await {
                        Ok(r) => r,
                        // A trap, the deadline, a failed instantiation: 500 as a plain
                        // runtime answers, as the gateway's problem document. The cause (a
                        // trap's message and backtrace) goes to the log, never to the client.
                        Err(e) => {
                            tracing::warn!(request_id, error = %e, "request failed in the component");
                            crate::serve::carry::respond(&portcullis_driver::gateway_error(
                                http::StatusCode::INTERNAL_SERVER_ERROR,
                                "the component failed on this request (the runtime's log has the cause)",
                                &request_id,
                            ))
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            })
        })
        .await;
    }
}
