//! Serving: preparing every capability from a loaded configuration, the gateway and admin
//! listeners, the two engines that decide (native and component), and `serve-wasm`, the
//! plain `wasi:http` runtime for edge bundles.

pub mod admin;
pub mod carry;
pub mod component;
pub mod listener;
pub mod native;
pub mod plain;
pub mod preinit;
pub mod reload;
pub mod server;
pub mod tls;
pub mod upgrade;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::audit::traces::Traces;
use crate::audit::{self, AuditService, AuditSink};
use crate::client::{BackendOutcome, ClientService, backend_client};
use crate::config::{ConfigService, LoadedConfig};
use crate::health::Health;
use crate::keys::KeyService;
use crate::metrics::Metrics;
use crate::risk::PluginRuntime;
use crate::state::{StateService, Store};

/// How to run the gateway.
#[derive(Clone)]
pub struct ServeOptions {
    /// Where audit records go (`-` for standard output).
    pub audit: String,
    /// Audit records that may wait for the writer.
    pub audit_queue: usize,
    /// What a full audit queue does.
    pub audit_when_full: audit::WhenFull,
    /// Compiled-component cache directory (`None`: compile at every start).
    pub cache_dir: Option<PathBuf>,
    /// Concurrent gateway instances.
    pub max_instances: u32,
    /// Requests one gateway-component instance serves, one after another, before it is
    /// dropped (component engine; 1: a fresh instance per request, as edge runtimes run).
    pub instance_reuse: u32,
    /// Longest a request may run inside the component.
    pub request_timeout: Duration,
    /// Verified tokens cached.
    pub token_cache: usize,
    /// The OTLP/HTTP collector spans are exported to (none: no export).
    pub otlp_endpoint: Option<String>,
    /// How long shutdown waits for in-flight requests.
    pub drain: Duration,
    /// Where requests are decided.
    pub engine: EngineKind,
    /// Where the component engine's gateway is pre-initialized with the configuration and
    /// compiled, at start and at every reload.
    pub compiler: component::Compiler,
}

/// Where requests are decided: both run the same `portcullis-core` decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// In a fresh instance of the gateway component per request (sandboxed, as edge
    /// runtimes run the gateway), the host carrying the decision out.
    Component,
    /// Natively in the host (the fast path: no per-request instance). The default.
    #[default]
    Native,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            audit: "-".into(),
            audit_queue: audit::DEFAULT_QUEUE,
            audit_when_full: audit::WhenFull::default(),
            cache_dir: crate::wasm::default_cache_dir(),
            max_instances: 256,
            instance_reuse: 1,
            request_timeout: Duration::from_secs(30),
            token_cache: 100_000,
            otlp_endpoint: None,
            drain: Duration::from_secs(30),
            engine: EngineKind::default(),
            compiler: component::Compiler::default(),
        }
    }
}

/// State shared by every request: one slice per capability.
pub struct Shared {
    /// The configuration as the component asks for it.
    pub config: Arc<ConfigService>,
    /// Keys and token verification.
    pub keys: Arc<KeyService>,
    /// Shared state (the gateway's and, namespaced, the plugins') and its policy.
    pub state: Arc<StateService>,
    /// Outbound calls and the trusted proxies.
    pub client: Arc<ClientService>,
    /// Backend health and allow-list.
    pub health: Arc<Health>,
    /// Audit records, decision counters and span export.
    pub audit: Arc<AuditService>,
    /// Risk plugins.
    pub risk: Arc<PluginRuntime>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// TLS on the gateway listener (`[server.tls]`), if configured.
    pub tls: Option<Arc<tls::TlsFront>>,
}

impl Shared {
    /// Audits and counts a refusal the host made itself, before or around the decision
    /// (the request timeout, a failed gateway component): `deny`, with the refusal's status
    /// and reason.
    pub fn refused(
        &self,
        refusal: &portcullis_core::Response,
        request_id: &str,
        method: String,
        path: String,
    ) {
        self.audit.emit(
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
            // A backend that is not who it must be is out of rotation too (failover stays
            // within the jurisdiction).
            BackendOutcome::Identity => {
                self.health.mark_down(backend);
                "identity"
            }
            // Out of descriptors here says nothing about the backend: it stays in rotation.
            BackendOutcome::Local => "local",
            BackendOutcome::Other => "other",
        };
        self.metrics.backend_failed(region, kind);
    }
}

/// Everything the gateway needs, ready to serve.
pub struct Prepared {
    /// The server.
    pub gateway: Arc<server::Gateway>,
    /// Shared state (keys, metrics).
    pub shared: Arc<Shared>,
    /// The listener's connection limits (`[server]`).
    pub server_limits: portcullis_core::config::ServerLimits,
    /// A reload's `[server.tls]` certificates, for the running listener once it swaps in.
    pub staged_tls: Option<tls::Staged>,
}

/// A listening socket on `addr` for what `what` names (`--listen`, `--admin`, …). A
/// refusal names the address and the option, so an operator who starts a second gateway
/// on a port in use reads which one ("--admin 127.0.0.1:9901: Address already in use"),
/// not the bare system error.
pub async fn bind(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} {addr}"))
}

/// Builds every capability, the engine and (for the component engine) the pre-instantiated
/// component; starts the background key refresh.
pub async fn prepare(loaded: LoadedConfig, opts: &ServeOptions) -> anyhow::Result<Prepared> {
    build(loaded, opts, None).await
}

/// What a reload carries over from the running configuration.
struct Running<'a> {
    shared: &'a Shared,
    /// The compiled gateway component and its engine's settings (component engine).
    compiled: Option<(
        component::EngineSettings,
        &'a wasmtime::component::Component,
    )>,
}

/// Prepares `loaded` to replace the `running` configuration (a reload): the metrics, the
/// audit sink, the shared state, the listener's TLS (with the new certificate list, staged)
/// and every key set of an issuer configured as before carry over, and so does the compiled
/// gateway component when the configuration did not change. A change to `[state]`, to
/// `[server]` limits, or to `[server.tls]` beyond its certificates needs a restart and is
/// refused.
pub async fn prepare_next(
    loaded: LoadedConfig,
    opts: &ServeOptions,
    running: &server::Gateway,
) -> anyhow::Result<Prepared> {
    let previous = running.shared().as_ref();
    let old = previous.keys.config();
    if loaded.config.state != old.state {
        anyhow::bail!("`[state]` changed: switching the shared state needs a restart");
    }
    // The listener keeps running: its limits, whether it speaks TLS and its ALPN stay;
    // only the certificate list may change.
    let staged_tls = match (&loaded.config.tls, &previous.tls) {
        (Some(new), Some(front)) if front.accepts(new) => Some(front.stage(new, &loaded.base)?),
        (None, None) => None,
        _ => anyhow::bail!(
            "`[server.tls]` changed beyond its certificates: TLS on or off, `http2` or `watch` need a restart"
        ),
    };
    if loaded.config.server != old.server {
        anyhow::bail!("`[server]` changed: listener settings need a restart");
    }
    let carried = Running {
        shared: previous,
        compiled: running.compiled(),
    };
    let mut prepared = build(loaded, opts, Some(carried)).await?;
    prepared.staged_tls = staged_tls;
    Ok(prepared)
}

async fn build(
    loaded: LoadedConfig,
    opts: &ServeOptions,
    running: Option<Running<'_>>,
) -> anyhow::Result<Prepared> {
    let previous = running.as_ref().map(|r| r.shared);
    let metrics = previous.map_or_else(|| Arc::new(Metrics::default()), |p| p.metrics.clone());
    let config = Arc::new(ConfigService::new(&loaded));
    let health = Arc::new(Health::new(&loaded.config));
    let plugin_slots = u32::try_from(loaded.config.plugins.len() * (crate::risk::POOL_MAX + 1))
        .unwrap_or(u32::MAX);
    let engine_settings = component::EngineSettings {
        slots: opts.max_instances.saturating_add(plugin_slots),
        fuel: crate::risk::engine_uses_fuel(&loaded.config),
    };
    let engine = engine_settings.engine()?;
    // The engine's one epoch clock: the plugins' deadlines and the component's fire by it.
    let ticker = crate::epoch::EpochTicker::start(&engine)?;
    let store = match previous {
        Some(p) => p.state.store.clone(),
        None => {
            let store = Arc::new(Store::from_config(&loaded.config.state)?);
            if let Store::Memory(_) = store.as_ref() {
                sweep_expired(&store);
            }
            store
        }
    };
    let state = Arc::new(StateService {
        store: store.clone(),
        on_unavailable: loaded.config.state.on_unavailable,
    });
    let risk = Arc::new(
        PluginRuntime::load(
            (&engine, &ticker),
            &loaded.config,
            &loaded.base,
            store,
            opts.cache_dir.as_deref(),
        )
        .await?,
    );
    let tls = match (previous, &loaded.config.tls) {
        (Some(p), _) => p.tls.clone(),
        (None, Some(cfg)) => Some(Arc::new(tls::TlsFront::load(cfg, &loaded.base)?)),
        (None, None) => None,
    };
    let core_config = loaded.config.clone();
    let connect = core_config.timeouts.connect;
    let client = Arc::new(ClientService {
        backends: backend_client(connect),
        regions: crate::client::attest::region_clients(&core_config, &loaded.base, connect)?,
        site_verify: core_config.challenge.site_verify.clone(),
        proxies: core_config.client.clone(),
    });
    let audit = match previous {
        Some(p) => p.audit.clone(),
        None => {
            let sink = if opts.audit.is_empty() {
                AuditSink::discard()
            } else {
                AuditSink::open(&opts.audit, opts.audit_queue, opts.audit_when_full)
                    .with_context(|| format!("audit sink {}", opts.audit))?
            };
            let traces = match &opts.otlp_endpoint {
                Some(endpoint) => Traces::otlp(endpoint, backend_client(connect), "portcullis")?,
                None => Traces::disabled(),
            };
            Arc::new(AuditService {
                sink,
                traces,
                metrics: metrics.clone(),
            })
        }
    };
    let keys = Arc::new(KeyService::new(loaded.config, opts.token_cache));
    if let Some(p) = previous {
        keys.carry_over_from(&p.keys);
    }
    keys.refresh_due().await;
    tokio::spawn(keys.clone().run());
    let shared = Arc::new(Shared {
        config,
        keys,
        state,
        client,
        health,
        audit,
        risk,
        metrics,
        tls,
    });
    let server_limits = core_config.server;
    let gateway = match opts.engine {
        EngineKind::Component => {
            // The same configuration on an engine with the same settings: the running
            // component is what pre-initializing and compiling would make again.
            let unchanged = running.as_ref().and_then(|r| {
                r.compiled.filter(|(settings, _)| {
                    *settings == engine_settings
                        && r.shared.config.snapshot == shared.config.snapshot
                })
            });
            let component = match unchanged {
                Some((_, compiled)) => component::carried_over(&engine, compiled)?,
                None => {
                    opts.compiler
                        .compile(
                            &engine,
                            engine_settings,
                            &shared.config.snapshot,
                            opts.cache_dir.as_deref(),
                        )
                        .await?
                }
            };
            let pre = component::pre_instantiate(&engine, &component)?;
            server::Gateway::new(
                (pre, engine_settings),
                ticker,
                shared.clone(),
                core_config,
                opts.request_timeout,
                opts.instance_reuse,
                usize::try_from(opts.max_instances).unwrap_or(usize::MAX),
            )
        }
        EngineKind::Native => server::Gateway::native(
            native::NativeEngine::new(shared.clone(), core_config),
            shared.clone(),
            opts.request_timeout,
        ),
    };
    let gateway = Arc::new(gateway);
    Ok(Prepared {
        gateway,
        shared,
        server_limits,
        staged_tls: None,
    })
}

/// Expired entries leave memory even when nothing writes to their shard: a sweep every
/// 30 s while the store lives.
pub fn sweep_expired(store: &Arc<Store>) {
    let swept = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            match swept.upgrade() {
                Some(s) => {
                    if let Store::Memory(m) = s.as_ref() {
                        m.sweep();
                    }
                }
                None => break,
            }
        }
    });
}

/// Serves until `shutdown` resolves; `reload` says where a reload reads the configuration
/// from (SIGHUP, `POST /reload` on the admin listener, and the file watch).
pub async fn serve(
    prepared: Prepared,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    reload: reload::Reload,
) {
    let drain = reload.opts.drain;
    let limits = prepared.server_limits;
    let tls = prepared.shared.tls.clone();
    let live = reload::Live::new(prepared.gateway, reload);
    live.start_triggers();
    tokio::spawn(admin::serve_admin(live.clone(), admin));
    let current = {
        let live = live.clone();
        Arc::new(move || live.current())
    };
    server::serve(current, listener, limits, tls, shutdown, drain).await;
    // The last requests' records reach the destination before the process exits.
    let shared = live.current().shared().clone();
    let audit =
        tokio::task::spawn_blocking(move || shared.audit.sink.flush(Duration::from_secs(5)));
    if !audit.await.unwrap_or(false) {
        tracing::warn!("audit records still queued at exit were not all written");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            () = term => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
