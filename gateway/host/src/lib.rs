//! The Portcullis native host: serves the gateway component with wasmtime, implements the
//! `portcullis:gateway` host interfaces natively (key sets, `ring` signature checks, a
//! verified-token cache, state, audit), and enforces the backend allow-list on every
//! outbound request.
#![deny(unsafe_code)] // one audited exception: loading our own cached compiled component

pub mod audit;
pub mod backends;
pub mod bindings;
pub mod bundle;
pub mod demo;
pub mod health;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod native;
pub mod native_verifier;
pub mod offline;
pub mod plain;
pub mod plugin_tool;
pub mod plugins;
pub mod runtime;
pub mod server;
pub mod site_verify;
pub mod state;
pub mod store;
pub mod token_cache;
pub mod traces;
pub mod wasm;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use portcullis_core::ConfigFiles;
use portcullis_core::config::{self, Config};
use tokio::net::TcpListener;

use crate::audit::AuditSink;
use crate::health::Health;
use crate::keys::KeyService;
use crate::metrics::Metrics;
use crate::runtime::Shared;
use crate::store::Store;

/// Reads files relative to a directory and remembers them, so the component gets the same
/// bytes the host validated, without touching the file system per request.
pub struct RecordingFiles {
    base: PathBuf,
    read: RefCell<BTreeMap<String, Vec<u8>>>,
}

impl RecordingFiles {
    /// Files under `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self {
            base: base.into(),
            read: RefCell::new(BTreeMap::new()),
        }
    }

    /// Everything read so far.
    pub fn into_files(self) -> BTreeMap<String, Vec<u8>> {
        self.read.into_inner()
    }
}

impl ConfigFiles for RecordingFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(self.base.join(path)).map_err(|e| e.to_string())?;
        self.read
            .borrow_mut()
            .insert(path.to_owned(), bytes.clone());
        Ok(bytes)
    }
}

/// A loaded configuration with its text and the files it named.
pub struct LoadedConfig {
    /// The validated configuration.
    pub config: Config,
    /// Its text.
    pub source: String,
    /// The files it named.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The directory relative paths (files, plugins) are resolved against.
    pub base: PathBuf,
}

/// Loads and validates `source` (named `name`), with files relative to `base`. The error
/// is every diagnostic, rendered.
pub fn load_config_text(source: String, name: &str, base: &Path) -> Result<LoadedConfig, String> {
    let files = RecordingFiles::new(base);
    let config = config::load(&source, name, &files).map_err(|e| e.to_string())?;
    Ok(LoadedConfig {
        config,
        source,
        files: files.into_files(),
        base: base.to_path_buf(),
    })
}

/// Loads a configuration file.
pub fn load_config_file(path: &Path) -> Result<LoadedConfig, String> {
    let source = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_config_text(source, &path.display().to_string(), &base)
}

/// How to run the gateway.
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
}

/// Where requests are decided: both run the same `portcullis-core` decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// In a fresh instance of the gateway component per request (what edge runtimes run).
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
            cache_dir: runtime::default_cache_dir(),
            max_instances: 256,
            request_timeout: Duration::from_secs(30),
            token_cache: 100_000,
            otlp_endpoint: None,
            drain: Duration::from_secs(30),
            engine: EngineKind::default(),
        }
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
}

/// Builds keys, engine and pre-instantiated component; starts background key refresh.
pub async fn prepare(loaded: LoadedConfig, opts: &ServeOptions) -> anyhow::Result<Prepared> {
    let audit = if opts.audit.is_empty() {
        AuditSink::discard()
    } else {
        AuditSink::open(&opts.audit, opts.audit_queue, opts.audit_when_full)
            .with_context(|| format!("audit sink {}", opts.audit))?
    };
    let health = Health::new(&loaded.config);
    let config_snapshot = loaded.config.to_snapshot();
    let plugin_slots =
        u32::try_from(loaded.config.plugins.len() * (plugins::POOL_MAX + 1)).unwrap_or(u32::MAX);
    let engine = runtime::engine(
        opts.max_instances.saturating_add(plugin_slots),
        plugins::engine_uses_fuel(&loaded.config),
    )?;
    let state = Arc::new(Store::from_config(&loaded.config.state)?);
    if let Store::Memory(_) = state.as_ref() {
        // Expired entries leave memory even when nothing writes to their shard.
        let swept = Arc::downgrade(&state);
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
    let on_unavailable = loaded.config.state.on_unavailable;
    let plugins = plugins::PluginRuntime::load(
        &engine,
        &loaded.config,
        &loaded.base,
        state.clone(),
        opts.cache_dir.as_deref(),
    )
    .await?;
    let client = loaded.config.client.clone();
    let core_config = loaded.config.clone();
    let core_config_limits = loaded.config.server;
    let keys = Arc::new(KeyService::new(loaded.config, opts.token_cache));
    keys.refresh_due().await;
    tokio::spawn(keys.clone().run());
    let shared = Arc::new(Shared {
        keys,
        config_source: loaded.source,
        config_snapshot,
        config_files: loaded.files,
        health,
        state,
        on_unavailable,
        site_verify: core_config.challenge.site_verify.clone(),
        plugins,
        client,
        audit,
        metrics: Metrics::default(),
        traces: match &opts.otlp_endpoint {
            Some(endpoint) => traces::Traces::otlp(
                endpoint,
                runtime::backend_client(core_config.timeouts.connect),
                "portcullis",
            )?,
            None => traces::Traces::disabled(),
        },
        backends: runtime::backend_client(core_config.timeouts.connect),
    });
    let gateway = match opts.engine {
        EngineKind::Component => {
            let component =
                runtime::load_component(&engine, runtime::COMPONENT, opts.cache_dir.as_deref())?;
            let pre = runtime::pre_instantiate(&engine, &component)?;
            server::Gateway::new(pre, shared.clone(), opts.request_timeout)
        }
        EngineKind::Native => server::Gateway::native(
            engine,
            native::NativeEngine::new(shared.clone(), core_config),
            shared.clone(),
            opts.request_timeout,
        ),
    };
    let gateway = Arc::new(gateway);
    let server_limits = core_config_limits;
    // Epochs bound wasm execution; a native engine without plugins runs none.
    if opts.engine == EngineKind::Component || !shared.plugins.is_empty() {
        gateway.start_epoch_ticker();
    }
    Ok(Prepared {
        gateway,
        shared,
        server_limits,
    })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    prepared: Prepared,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let shared = prepared.shared.clone();
    tokio::spawn(server::serve_admin(prepared.shared.clone(), admin));
    server::serve(
        prepared.gateway,
        listener,
        prepared.server_limits,
        shutdown,
        drain,
    )
    .await;
    // The last requests' records reach the destination before the process exits.
    let audit = tokio::task::spawn_blocking(move || shared.audit.flush(Duration::from_secs(5)));
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
