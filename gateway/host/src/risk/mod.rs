//! The risk-plugin runtime: each configured plugin is compiled and pre-instantiated once at
//! startup; every call runs in a store of the plugin's own (isolated from the gateway and
//! from other plugins) under an epoch deadline, a memory cap and optional fuel. Instances
//! are reused from a small pool; one that traps is discarded. A failure — trap, deadline,
//! memory cap, fuel, malformed answer — is returned as an error (the gateway applies the
//! plugin's `on_error`), logged and counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use portcullis_core::config::{Config, PluginConfig};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod wit;

pub use wit::RiskHost;

use crate::epoch::EpochTicker;
use crate::state::Store as SharedState;
use crate::wasm::EPOCH_TICK;

#[allow(missing_docs, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/plugin",
        world: "risk-plugin",
        imports: {
            "portcullis:plugin/state.get": async | trappable,
            "portcullis:plugin/state.set": async | trappable,
            "portcullis:plugin/state.increment": async | trappable,
            "portcullis:plugin/state.delete": async | trappable,
            default: async,
        },
        exports: { default: async },
    });
}

pub use bindings::exports::portcullis::plugin::risk::{
    Action, Assessment, ClientSignals, Identity, Outcome, RequestContext, Session,
};
use bindings::portcullis::plugin::{clock, config, log, state};
use bindings::{RiskPlugin, RiskPluginPre};

/// Idle instances kept per plugin.
pub const POOL_MAX: usize = 32;
/// Captured plugin stderr per instance before the instance is recycled.
const STDERR_CAP: usize = 64 << 10;
/// Longest log line taken from a plugin.
const LOG_MAX: usize = 1024;
/// Longest a plugin's instantiation and `init` may run when it is loaded (startup, reload,
/// `portcullis check`, `portcullis plugin test`): an `init` that never returns is a clear
/// error there, not a hang. At run time, a new instance's `init` counts against the
/// call's own `deadline` (docs/plugins.md).
pub const LOAD_DEADLINE: Duration = Duration::from_secs(5);

/// What a plugin's store holds.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    env: Arc<PluginEnv>,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A plugin's fixed environment.
struct PluginEnv {
    name: String,
    prefix: String,
    config_json: String,
    state: Arc<SharedState>,
    clock: PluginClock,
}

/// What a plugin's `clock` says.
#[derive(Clone, Debug, Default)]
pub enum PluginClock {
    /// The wall clock (`serve`).
    #[default]
    Wall,
    /// A clock the caller sets, in Unix milliseconds (`plugin test` steps through time).
    Set(Arc<AtomicU64>),
}

/// A live instance with its store.
struct Live {
    store: Store<PluginState>,
    plugin: RiskPlugin,
    stderr: MemoryOutputPipe,
}

/// Counters for one plugin.
#[derive(Debug, Default)]
struct Stats {
    calls: AtomicU64,
    /// `observe` calls that completed.
    observations: AtomicU64,
    nanos: AtomicU64,
    instantiations: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

/// A loaded plugin.
struct Loaded {
    cfg: PluginConfig,
    pre: RiskPluginPre<PluginState>,
    env: Arc<PluginEnv>,
    idle: Mutex<Vec<Live>>,
    stats: Stats,
}

/// A plugin's metric labels.
type ByPlugin = Vec<(&'static str, String)>;

/// Every configured plugin, ready to run.
pub struct PluginRuntime {
    plugins: Vec<Loaded>,
    fuel_enabled: bool,
    /// The engine's epoch clock, running while a plugin runs (none without plugins).
    ticker: Option<EpochTicker>,
    /// How long each call took, per plugin (failed calls included).
    latency: Family<ByPlugin, Histogram, fn() -> Histogram>,
}

/// Why a call failed, for metrics.
fn failure_kind(e: &wasmtime::Error) -> &'static str {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "deadline",
        Some(Trap::OutOfFuel) => "fuel",
        Some(_) if format!("{e:?}").contains("growing memory") => "memory",
        Some(_) => "trap",
        None if format!("{e:?}").contains("growing memory") => "memory",
        None => "error",
    }
}

impl PluginRuntime {
    /// No plugins.
    pub fn empty() -> Self {
        Self {
            plugins: Vec::new(),
            fuel_enabled: false,
            ticker: None,
            latency: Family::new_with_constructor(crate::metrics::latency_histogram),
        }
    }

    /// Compiles and links every plugin of `config` (files relative to `base`), and checks
    /// each one's configuration by instantiating it once (`init`, within
    /// [`LOAD_DEADLINE`]). Any failure is a startup error naming the plugin. `ticker` is
    /// `engine`'s epoch clock: plugin deadlines fire by it.
    pub async fn load(
        (engine, ticker): (&Engine, &EpochTicker),
        config: &Config,
        base: &Path,
        state: Arc<SharedState>,
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let fuel = engine_uses_fuel(config);
        Self::load_plugins(
            (engine, ticker),
            &config.plugins,
            fuel,
            base,
            state,
            cache_dir,
            PluginClock::Wall,
        )
        .await
    }

    /// [`PluginRuntime::load`] for `plugins` (fuel metered when `fuel`; the engine must
    /// agree), their clock `clock`.
    pub async fn load_plugins(
        (engine, ticker): (&Engine, &EpochTicker),
        configs: &[PluginConfig],
        fuel: bool,
        base: &Path,
        state: Arc<SharedState>,
        cache_dir: Option<&Path>,
        clock: PluginClock,
    ) -> anyhow::Result<Self> {
        let mut plugins = Vec::new();
        for cfg in configs {
            let path = base.join(&cfg.path);
            let wasm = std::fs::read(&path)
                .with_context(|| format!("plugin `{}`: {}", cfg.name, path.display()))?;
            let component = crate::wasm::load_component(engine, &wasm, cache_dir)
                .with_context(|| format!("plugin `{}`: not a component", cfg.name))?;
            let pre = link(engine, &component)
                .with_context(|| format!("plugin `{}` ({})", cfg.name, path.display()))?;
            let env = Arc::new(PluginEnv {
                name: cfg.name.clone(),
                prefix: format!("plugin/{}/", cfg.name),
                config_json: cfg.config_json.clone(),
                state: state.clone(),
                clock: clock.clone(),
            });
            plugins.push(Loaded {
                cfg: cfg.clone(),
                pre,
                env,
                idle: Mutex::new(Vec::new()),
                stats: Stats::default(),
            });
        }
        let runtime = Self {
            fuel_enabled: fuel,
            ticker: Some(ticker.clone()),
            plugins,
            latency: Family::new_with_constructor(crate::metrics::latency_histogram),
        };
        for (i, p) in runtime.plugins.iter().enumerate() {
            let _busy = runtime.busy();
            let live = runtime.instantiate(p, LOAD_DEADLINE).await.map_err(|e| {
                // `describe`'s words for the epoch trap (a plugin's own refusal may mention
                // a deadline too: only the trap gets the explanation).
                if e.starts_with("deadline exceeded") {
                    anyhow::anyhow!(
                        "plugin `{}`: {e}: its instantiation and `init` did not finish within {}s",
                        p.cfg.name,
                        LOAD_DEADLINE.as_secs()
                    )
                } else {
                    anyhow::anyhow!("plugin `{}`: {e}", p.cfg.name)
                }
            })?;
            runtime.give_back(i, live);
        }
        Ok(runtime)
    }

    /// Whether the engine meters fuel (every store then needs a fuel budget).
    pub fn fuel_enabled(&self) -> bool {
        self.fuel_enabled
    }

    /// Number of plugins.
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// True without plugins.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// A new instance of `p`, instantiated and `init`ed within `deadline` (the caller holds
    /// the clock running: [`PluginRuntime::busy`]).
    async fn instantiate(&self, p: &Loaded, deadline: Duration) -> Result<Live, String> {
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(p.cfg.memory_bytes).unwrap_or(usize::MAX))
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            p.pre.engine(),
            PluginState {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                limits,
                env: p.env.clone(),
            },
        );
        store.limiter(|s| &mut s.limits);
        self.arm(&mut store, deadline, p.cfg.fuel);
        p.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let plugin = p
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| describe(&e, &stderr))?;
        match plugin.portcullis_plugin_risk().call_init(&mut store).await {
            Ok(Ok(())) => Ok(Live {
                store,
                plugin,
                stderr,
            }),
            Ok(Err(msg)) => Err(format!("refused its configuration: {msg}")),
            Err(e) => Err(describe(&e, &stderr)),
        }
    }

    /// Sets a call's budget: `deadline` of wall time, and `fuel` when the engine meters it.
    fn arm(&self, store: &mut Store<PluginState>, deadline: Duration, fuel: Option<u64>) {
        let tick = EPOCH_TICK.as_micros().max(1);
        let ticks = deadline.as_micros().div_ceil(tick) + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        if self.fuel_enabled {
            let _ = store.set_fuel(fuel.unwrap_or(u64::MAX));
        }
    }

    /// Keeps the epoch clock running while the guard lives: held across every call into a
    /// plugin, from before its deadline is armed until its wasm has returned.
    fn busy(&self) -> Option<crate::epoch::Busy> {
        self.ticker.as_ref().map(EpochTicker::busy)
    }

    fn take(&self, p: &Loaded) -> Option<Live> {
        p.idle.lock().ok()?.pop()
    }

    fn give_back(&self, id: usize, live: Live) {
        let Some(p) = self.plugins.get(id) else {
            return;
        };
        if live.stderr.contents().len() > STDERR_CAP / 2 {
            return; // recycle chatty instances before their stderr fills
        }
        if let Ok(mut idle) = p.idle.lock()
            && idle.len() < POOL_MAX
        {
            idle.push(live);
        }
    }

    fn fail(&self, p: &Loaded, kind: &'static str, detail: &str) -> String {
        if let Ok(mut f) = p.stats.failures.lock() {
            *f.entry(kind).or_default() += 1;
        }
        tracing::warn!(plugin = %p.cfg.name, kind, detail, "risk plugin failed");
        format!("{kind}: {detail}")
    }

    /// Runs plugin `id` on `ctx` (headers already filtered for it).
    pub async fn assess(&self, id: usize, ctx: &RequestContext) -> Result<Assessment, String> {
        let Some(p) = self.plugins.get(id) else {
            return Err(format!("no plugin #{id}"));
        };
        let started = Instant::now();
        p.stats.calls.fetch_add(1, Ordering::Relaxed);
        let _busy = self.busy();
        let mut live = match self.take(p) {
            Some(l) => l,
            None => match self.instantiate(p, p.cfg.deadline).await {
                Ok(l) => l,
                Err(e) => return Err(self.fail(p, "instantiate", &e)),
            },
        };
        self.arm(&mut live.store, p.cfg.deadline, p.cfg.fuel);
        let result = live
            .plugin
            .portcullis_plugin_risk()
            .call_assess(&mut live.store, ctx)
            .await;
        let took = started.elapsed();
        p.stats.nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.latency
            .get_or_create(&vec![("plugin", p.cfg.name.clone())])
            .observe(took.as_secs_f64());
        match result {
            Ok(a) if a.score <= 100 => {
                self.give_back(id, live);
                Ok(a)
            }
            Ok(a) => {
                self.give_back(id, live);
                Err(self.fail(
                    p,
                    "malformed",
                    &format!("score {} is outside 0..=100", a.score),
                ))
            }
            Err(e) => {
                let kind = failure_kind(&e);
                let detail = describe(&e, &live.stderr);
                Err(self.fail(p, kind, &detail))
            }
        }
    }

    /// Runs the plugins `ids` in order on `base`, each shown only the headers it asked for:
    /// each plugin's answer, and what it was shown (kept for `observe`).
    pub async fn run(
        &self,
        ids: &[usize],
        base: &RequestContext,
    ) -> Vec<(Result<Assessment, String>, (usize, RequestContext))> {
        let mut runs = Vec::with_capacity(ids.len());
        for &id in ids {
            let mut ctx = base.clone();
            let wanted = self.headers(id);
            ctx.headers.retain(|(n, _)| wanted.contains(n));
            runs.push((self.assess(id, &ctx).await, (id, ctx)));
        }
        runs
    }

    /// Tells plugin `id` how the request ended.
    pub async fn observe(&self, id: usize, ctx: &RequestContext, status: u16) {
        let Some(p) = self.plugins.get(id) else {
            return;
        };
        let _busy = self.busy();
        let mut live = match self.take(p) {
            Some(l) => l,
            None => match self.instantiate(p, p.cfg.deadline).await {
                Ok(l) => l,
                Err(e) => {
                    self.fail(p, "instantiate", &e);
                    return;
                }
            },
        };
        self.arm(&mut live.store, p.cfg.deadline, p.cfg.fuel);
        match live
            .plugin
            .portcullis_plugin_risk()
            .call_observe(&mut live.store, ctx, Outcome { status })
            .await
        {
            Ok(()) => {
                p.stats.observations.fetch_add(1, Ordering::Relaxed);
                self.give_back(id, live);
            }
            Err(e) => {
                let kind = failure_kind(&e);
                let detail = describe(&e, &live.stderr);
                self.fail(p, kind, &detail);
            }
        }
    }

    /// The headers plugin `id` asked for.
    pub fn headers(&self, id: usize) -> &[String] {
        self.plugins
            .get(id)
            .map_or(&[], |p| p.cfg.headers.as_slice())
    }

    /// Plugin metrics for one scrape: calls, time, instantiations and failures per plugin.
    pub fn add_metrics(&self, scrape: &mut crate::metrics::Scrape) {
        use prometheus_client::metrics::counter::Counter;
        if self.plugins.is_empty() {
            return;
        }
        let calls = Family::<ByPlugin, Counter>::default();
        let observations = Family::<ByPlugin, Counter>::default();
        let seconds = Family::<ByPlugin, crate::metrics::SecondsCounter>::default();
        let instantiations = Family::<ByPlugin, Counter>::default();
        let failures = Family::<ByPlugin, Counter>::default();
        for p in &self.plugins {
            let labels = vec![("plugin", p.cfg.name.clone())];
            calls
                .get_or_create(&labels)
                .inc_by(p.stats.calls.load(Ordering::Relaxed));
            observations
                .get_or_create(&labels)
                .inc_by(p.stats.observations.load(Ordering::Relaxed));
            seconds
                .get_or_create(&labels)
                .inc_by(p.stats.nanos.load(Ordering::Relaxed) as f64 / 1e9);
            instantiations
                .get_or_create(&labels)
                .inc_by(p.stats.instantiations.load(Ordering::Relaxed));
            if let Ok(f) = p.stats.failures.lock() {
                for (kind, n) in f.iter() {
                    let labels = vec![("plugin", p.cfg.name.clone()), ("kind", (*kind).to_owned())];
                    failures.get_or_create(&labels).inc_by(*n);
                }
            }
        }
        scrape.add("plugin_calls", "Plugin calls", calls);
        scrape.add(
            "plugin_observations",
            "Outcomes told to plugins (observe calls completed; made after the response)",
            observations,
        );
        scrape.add("plugin_seconds", "Time spent in plugin calls", seconds);
        scrape.add(
            "plugin_call_seconds",
            "How long each plugin call took (failed calls included)",
            self.latency.clone(),
        );
        scrape.add(
            "plugin_instantiations",
            "Plugin instances created",
            instantiations,
        );
        scrape.add(
            "plugin_failures",
            "Plugin failures by kind (on_error applied)",
            failures,
        );
    }
}

/// The plugin's view of a request decided natively: the core's context plus what the host
/// knows of the client.
pub fn context(
    ctx: &portcullis_core::risk::RiskContext,
    client: &portcullis_core::client::ClientInfo,
) -> RequestContext {
    portcullis_driver::risk_context!(ctx => RequestContext, Identity, Session, ClientSignals;
        headers: ctx.headers.clone(),
        client_ip: client.ip.map(|ip| ip.to_string()),
        country: client.country.clone(),
        asn: client.asn,
    )
}

/// A plugin's assessment in the core's terms.
pub fn to_core(a: Assessment) -> portcullis_core::risk::Assessment {
    portcullis_driver::risk_assessment!(a => portcullis_core::risk::Assessment, Action => portcullis_core::risk::Action)
}

/// Whether any plugin sets a fuel budget (fuel is engine-wide).
pub fn engine_uses_fuel(config: &Config) -> bool {
    config.plugins.iter().any(|p| p.fuel.is_some())
}

/// A readable failure: the trap, or the panic message the plugin wrote to stderr.
fn describe(e: &wasmtime::Error, stderr: &MemoryOutputPipe) -> String {
    let out = stderr.contents();
    let said = String::from_utf8_lossy(&out);
    // Rust prints "thread '…' panicked at FILE:LINE:COL:\nMESSAGE\nnote: …".
    if let Some(at) = said.rfind("panicked at ") {
        let message: Vec<&str> = said
            .get(at..)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("note:") && !l.starts_with("stack backtrace"))
            .collect();
        let message: String = message.join(" ").chars().take(300).collect();
        if !message.trim().is_empty() {
            return format!("panicked: {}", message.trim());
        }
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "deadline exceeded".to_owned(),
        Some(Trap::OutOfFuel) => "fuel exhausted".to_owned(),
        Some(t) => t.to_string(),
        None => format!("{e:#}").chars().take(300).collect(),
    }
}

/// Checks that `component` links as a plugin (for `plugin check`).
pub fn link_only(engine: &Engine, component: &Component) -> anyhow::Result<()> {
    link(engine, component).map(|_| ())
}

/// Links WASI (locked down: no files, sockets, environment) and the plugin interfaces.
/// Components importing anything beyond the allowed set are refused.
fn link(engine: &Engine, component: &Component) -> anyhow::Result<RiskPluginPre<PluginState>> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if let Some(v) = built_for(&exports).filter(|v| !compatible(v, WIT_VERSION)) {
        anyhow::bail!("{}", other_version(&v));
    }
    let extra = disallowed_imports(engine, component);
    if !extra.is_empty() {
        anyhow::bail!(
            "imports beyond what plugins may use: {} (plugins get state, log, config and clock only)",
            extra.join(", ")
        );
    }
    let mut linker: Linker<PluginState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    RiskPlugin::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    RiskPluginPre::new(pre).map_err(|e| {
        anyhow::anyhow!(
            "{e:#} (is it built against portcullis:plugin@{}?)",
            WIT_VERSION
        )
    })
}

/// A plugin's state operation failed: the call traps, so the plugin's `on_error` decides.
fn unavailable(e: crate::state::StoreError) -> wasmtime::Error {
    wasmtime::Error::msg(format!("shared state unavailable: {e}"))
}

impl state::Host for PluginState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let key = format!("{}{key}", self.env.prefix);
        self.env.state.get(&key).await.map_err(unavailable)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<()> {
        let key = format!("{}{key}", self.env.prefix);
        let ttl = Duration::from_millis(ttl_ms);
        self.env
            .state
            .set(&key, value, ttl)
            .await
            .map_err(unavailable)
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_ms: u64) -> wasmtime::Result<i64> {
        let key = format!("{}{key}", self.env.prefix);
        let ttl = Duration::from_millis(ttl_ms);
        self.env
            .state
            .increment(&key, delta, ttl)
            .await
            .map_err(unavailable)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        let key = format!("{}{key}", self.env.prefix);
        self.env.state.delete(&key).await.map_err(unavailable)
    }
}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, message: String) {
        let message: String = message.chars().take(LOG_MAX).collect();
        let plugin = self.env.name.as_str();
        match level {
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl config::Host for PluginState {
    async fn get(&mut self) -> String {
        self.env.config_json.clone()
    }
}

impl clock::Host for PluginState {
    async fn now_ms(&mut self) -> u64 {
        match &self.env.clock {
            PluginClock::Set(ms) => ms.load(Ordering::Relaxed),
            PluginClock::Wall => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        }
    }
}
/// Imports a plugin may have: the plugin world's own interfaces, and the WASI interfaces
/// Rust's standard library links (served locked down: no directories, sockets or
/// environment).
const ALLOWED_IMPORTS: [&str; 10] = [
    "portcullis:plugin/state@0.2",
    "portcullis:plugin/log@0.2",
    "portcullis:plugin/config@0.2",
    "portcullis:plugin/clock@0.2",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "portcullis:plugin/risk@0.2",
];

/// The `portcullis:plugin` version this host implements.
pub const WIT_VERSION: &str = "0.2.0";

/// Whether a plugin built against `portcullis:plugin@built` runs on a host that speaks
/// `host`. The rule (the component model's own for versioned interfaces, as semver's
/// caret): a minor release only adds, so within one major version a host serves plugins
/// built for the same or an older minor version; before 1.0 each minor version is its own
/// major one. Patch versions never matter.
pub fn compatible(built: &str, host: &str) -> bool {
    fn parts(v: &str) -> Option<(u64, u64)> {
        let mut it = v.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some((major, minor))
    }
    match (parts(built), parts(host)) {
        (Some((0, b)), Some((0, h))) => b == h,
        (Some((bm, b)), Some((hm, h))) => bm == hm && b <= h,
        _ => false,
    }
}

/// The version of the `portcullis:plugin/risk@…` export among `exports`.
pub fn built_for(exports: &[String]) -> Option<String> {
    exports
        .iter()
        .find_map(|e| e.strip_prefix("portcullis:plugin/risk@"))
        .map(str::to_owned)
}

/// Why a plugin built for `portcullis:plugin@built` (incompatible) is refused.
pub fn other_version(built: &str) -> String {
    format!(
        "built for portcullis:plugin@{built}, which this host ({WIT_VERSION}) does not speak: rebuild it with an SDK for {WIT_VERSION}"
    )
}

/// The imports of `component` outside the allowed set.
pub fn disallowed_imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| !ALLOWED_IMPORTS.iter().any(|a| name.starts_with(a)))
        .collect()
}
