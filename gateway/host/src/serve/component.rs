//! The component engine: each request decided in an instance of the pre-instantiated
//! gateway component (a fresh one, or one kept from earlier requests with
//! `--instance-reuse`), through its `portcullis:gateway/decide` export. The instance's store
//! holds one host of each capability (the `portcullis:gateway` interfaces, each implemented
//! in its capability's folder); the decision is carried out by the host, as the native
//! engine's is ([`crate::serve::carry`]): the instance is done with the request once it has
//! decided, and never holds a socket or a body.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use portcullis_core::client::ClientInfo;
use portcullis_core::config::RegionId;
use portcullis_core::{BackendId, Config, Forward, Outcome};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::audit::AuditHost;
use crate::bindings::exports::portcullis::gateway::decide;
use crate::bindings::portcullis::gateway::{audit, client, config, health, keys, risk, state};
use crate::bindings::{GatewayComponent, GatewayComponentPre};
use crate::client::ClientHost;
use crate::config::ConfigHost;
use crate::epoch::EpochTicker;
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

/// The settings of the host's wasmtime engine that a compiled component must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// Pooling-allocator slots (gateway instances and plugin instances).
    pub slots: u32,
    /// Whether the engine meters fuel (a plugin needs it).
    pub fuel: bool,
}

impl EngineSettings {
    /// The engine ([`crate::wasm::engine`]).
    pub fn engine(self) -> anyhow::Result<Engine> {
        crate::wasm::engine(self.slots, self.fuel)
    }
}

/// Where the component engine's gateway is pre-initialized and compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Compiler {
    /// In this process. Much of the compiler's heap stays resident afterwards: 51-67 MiB
    /// more peak RSS under load in the load harness (2026-12-07).
    #[default]
    InProcess,
    /// In a child process running this program's `compile-gateway` command (the
    /// `portcullis` executable, as `serve` does): the compiler's memory ends with the child,
    /// and the compiled component comes back through a pipe, never through a file. The
    /// child is told the digest of this process's gateway component and refuses to
    /// compile another (an executable replaced on disk by an upgrade).
    Child(PathBuf),
}

impl Compiler {
    /// The gateway component pre-initialized with `snapshot` ([`pre_initialized`]) and
    /// compiled for `engine`, whose settings are `settings`.
    pub async fn compile(
        &self,
        engine: &Engine,
        settings: EngineSettings,
        snapshot: &[u8],
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<Component> {
        let component = match self {
            Self::InProcess => pre_initialized(engine, snapshot, cache_dir).await?,
            Self::Child(program) => {
                compiled_in_child(program, engine, settings, snapshot, cache_dir).await?
            }
        };
        with_memory_image(component)
    }
}

/// The running gateway component, for `engine` (a reload's, with the same settings as the
/// running one's) when the configuration did not change: its compiled code copied into the
/// new engine instead of pre-initialized and compiled again (a reload on SIGHUP for
/// logrotate, or a file the watch saw touched, costs milliseconds, not a compile).
pub fn carried_over(engine: &Engine, running: &Component) -> anyhow::Result<Component> {
    let started = std::time::Instant::now();
    let compiled = running
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("copy the running gateway component")?;
    // The bytes are what `Component::serialize` just wrote in this process, from a
    // component this process loaded.
    let component = loaded(
        engine,
        &compiled,
        started,
        "configuration unchanged: the running gateway component carried over, not compiled again",
    )?;
    with_memory_image(component)
}

/// The gateway component pre-initialized and compiled by `program compile-gateway` in a
/// child process, loaded into `engine`.
async fn compiled_in_child(
    program: &Path,
    engine: &Engine,
    settings: EngineSettings,
    snapshot: &[u8],
    cache_dir: Option<&Path>,
) -> anyhow::Result<Component> {
    let started = std::time::Instant::now();
    let mut command = std::process::Command::new(program);
    // `ps` names it `portcullis compile-gateway`, not `/proc/self/exe …`.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::arg0(&mut command, "portcullis");
    command
        .args(["compile-gateway", "--slots", &settings.slots.to_string()])
        .args(["--gateway-sha256", &crate::wasm::component_digest()])
        .args(settings.fuel.then_some("--fuel"));
    match cache_dir {
        Some(dir) => command.arg("--cache-dir").arg(dir),
        None => command.arg("--no-cache"),
    };
    let snapshot = snapshot.to_vec();
    let compiled = tokio::task::spawn_blocking(move || run_child(command, &snapshot))
        .await
        .context("pre-initialize the gateway component")??;
    // The bytes are what `Component::serialize` wrote in a child running this same
    // program, received through its standard output (a pipe only this process reads).
    loaded(
        engine,
        &compiled,
        started,
        "gateway component pre-initialized and compiled in a child process",
    )
}

/// The compiled component whose serialized form is `compiled`, made by this program (this
/// process, or its compiling child), loaded into `engine`; `what` is logged with the time
/// since `started` and the size.
fn loaded(
    engine: &Engine,
    compiled: &[u8],
    started: std::time::Instant,
    what: &'static str,
) -> anyhow::Result<Component> {
    // SAFETY: `compiled` is what `Component::serialize` wrote in this program (the
    // callers say where); wasmtime checks that the artifact was compiled for an engine
    // with this engine's settings, and refuses it otherwise.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, compiled) }
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("load the compiled gateway component ({what})"))?;
    tracing::info!(
        ms = started.elapsed().as_millis(),
        bytes = compiled.len(),
        "{what}"
    );
    Ok(component)
}

/// `component` with its initial memory's copy-on-write image made (a memfd on Linux: a
/// loaded component is not a mapped file) now, not by the first request, which could find
/// the process out of descriptors and fail for a reason of its own.
fn with_memory_image(component: Component) -> anyhow::Result<Component> {
    component
        .initialize_copy_on_write_image()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the gateway component's initial memory image")?;
    Ok(component)
}

/// Runs `command` with `snapshot` on its standard input; its standard output, or why not.
fn run_child(mut command: std::process::Command, snapshot: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {:?}", command.get_program()))?;
    // The child reads its whole input before it writes anything. A child that refused
    // before reading (another gateway component) closes its input: its own reason, below,
    // says more than the broken pipe.
    let handed = child
        .stdin
        .take()
        .map_or(Ok(()), |mut stdin| stdin.write_all(snapshot));
    let output = child
        .wait_with_output()
        .context("wait for the compiling process")?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!(
            "the compiling process failed ({}): {}",
            output.status,
            said.trim()
        );
    }
    handed.context("hand the configuration to the compiling process")?;
    Ok(output.stdout)
}

/// The gateway component pre-initialized with the configuration `snapshot` and compiled for
/// `engine`: every instance starts with the configuration restored
/// (the instrumented component, which holds no configuration, is cached in `cache_dir`)
/// ([`preinit`](crate::serve::preinit)). Its random numbers are seeded afresh (the restored
/// state's hash-map keys differ between starts). The result holds the configuration and its
/// secrets, so it stays in memory: it is never written to the compiled-component cache. A
/// configuration that does not restore fails here, at start or reload, not on each request.
pub async fn pre_initialized(
    engine: &Engine,
    snapshot: &[u8],
    cache_dir: Option<&Path>,
) -> anyhow::Result<Component> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| anyhow::anyhow!("no random numbers to seed the gateway component"))?;
    let engine = engine.clone();
    let snapshot = snapshot.to_vec();
    let cache_dir = cache_dir.map(Path::to_path_buf);
    let runtime = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    // Instrumenting, running and compiling take CPU for a while: not on a request worker.
    tokio::task::spawn_blocking(move || {
        let wasm = runtime.block_on(crate::serve::preinit::pre_initialize(
            crate::wasm::COMPONENT,
            &snapshot,
            CONFIG_INTERFACE,
            seed,
            cache_dir.as_deref(),
        ))?;
        let initialized = started.elapsed();
        let component = Component::new(&engine, &wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(
            initialize_ms = initialized.as_millis(),
            compile_ms = (started.elapsed() - initialized).as_millis(),
            bytes = wasm.len(),
            "gateway component pre-initialized with the configuration"
        );
        anyhow::Ok(component)
    })
    .await
    .context("pre-initialize the gateway component")?
    .context("pre-initialize the gateway component")
}

/// The interface whose `snapshot` the gateway component restores its configuration from.
const CONFIG_INTERFACE: &str = "portcullis:gateway/config@0.1.0";

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
    idle: Mutex<Vec<Held>>,
    /// One permit per instance that may exist at once (`--max-instances`, the pool's
    /// gateway slots): a request that finds none free and no idle instance waits for one,
    /// within its request timeout, instead of failing.
    slots: Arc<Semaphore>,
    /// Signalled when an instance is kept idle: a request waiting for a slot may take it
    /// (a kept instance holds its slot).
    kept: Notify,
    /// How long a decision may run, in epoch ticks.
    deadline_ticks: u64,
    /// The engine's epoch clock, running while a decision runs.
    ticker: EpochTicker,
    /// The settings of the engine the component was compiled for.
    settings: EngineSettings,
}

/// An instance, in its store, and its slot of the pool. The fields drop in this order: the
/// store gives its instance's memory back to the pool before the slot is released to the
/// next request.
struct Held {
    store: Store<StoreState>,
    instance: GatewayComponent,
    /// Requests it has decided.
    served: u32,
    /// Held, never read: released when the instance is dropped.
    _slot: OwnedSemaphorePermit,
}

/// What a request got to decide in: an idle instance, or a slot for a fresh one.
enum Taken {
    Idle(Held),
    Slot(OwnedSemaphorePermit),
}

impl ComponentEngine {
    /// An engine deciding in instances of `pre` over the host's shared services: an
    /// instance decides `reuse` requests at most, one at a time (1: a fresh instance per
    /// request, as edge runtimes run it); at most `max_instances` exist at once, busy or
    /// idle (a request waits for a free one); a decision runs `deadline_ticks` epochs at
    /// most, by the clock of `ticker` (the engine's). `pre`'s component was compiled for an
    /// engine with `settings`.
    pub fn new(
        shared: Arc<Shared>,
        config: Config,
        (pre, settings): (GatewayComponentPre<StoreState>, EngineSettings),
        ticker: EpochTicker,
        reuse: u32,
        max_instances: usize,
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
            slots: Arc::new(Semaphore::new(
                max_instances.clamp(1, Semaphore::MAX_PERMITS),
            )),
            kept: Notify::new(),
            deadline_ticks,
            ticker,
            settings,
        }
    }

    /// The compiled gateway component and the settings of the engine it was compiled for
    /// (a reload with the same configuration carries it over: [`carried_over`]).
    pub fn compiled(&self) -> (EngineSettings, &Component) {
        (self.settings, self.pre.instance_pre().component())
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
                return self.failed(
                    &format!("request failed in the gateway component: {e:#}"),
                    request_id,
                    &parts,
                );
            }
        };
        let outcome = match outcome(decision.outcome) {
            Ok(o) => o,
            Err(detail) => {
                return self.failed(
                    &format!("the gateway component's decision cannot be carried out: {detail}"),
                    request_id,
                    &parts,
                );
            }
        };
        let Some(audit) = decision.audit else {
            // Answered before deciding (the gateway's key set, an unreadable request, a
            // configuration that does not restore): nothing to audit, nothing to forward.
            return match outcome {
                Outcome::Respond(r) => respond(&r),
                Outcome::Forward(_) => self.failed(
                    &"the gateway component forwarded without an audit record",
                    request_id,
                    &parts,
                ),
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

    /// Runs `request`'s decision in a kept instance if one is idle, else in a fresh one
    /// (waiting for a free slot when every instance is in use); the instance is kept
    /// afterwards if it returned cleanly and may decide more. A trap or a deadline drops it.
    /// Returns the decision and what the plugins were shown.
    async fn decide(
        &self,
        peer: IpAddr,
        client: ClientInfo,
        request: &decide::Request,
    ) -> anyhow::Result<(decide::Decision, Shown)> {
        // The clock runs from before the deadline is armed until the decision returns
        // (not while waiting for an instance).
        let busy;
        let mut held = match self.take().await? {
            Taken::Idle(mut kept) => {
                kept.store.data_mut().begin(peer, client);
                busy = self.ticker.busy();
                self.arm(&mut kept.store);
                kept
            }
            Taken::Slot(slot) => {
                self.shared.metrics.instance_created();
                let mut store = Store::new(
                    self.pre.engine(),
                    StoreState::new(&self.shared, peer, client),
                );
                store.limiter(|s| &mut s.limits);
                // Instantiation runs under the same deadline as the decision.
                busy = self.ticker.busy();
                self.arm(&mut store);
                let instance = self.pre.instantiate_async(&mut store).await?;
                Held {
                    store,
                    instance,
                    served: 0,
                    _slot: slot,
                }
            }
        };
        let decision = held
            .instance
            .portcullis_gateway_decide()
            .call_decide(&mut held.store, request)
            .await?;
        drop(busy);
        let assessed = held
            .store
            .data_mut()
            .risk
            .assessed
            .take()
            .unwrap_or_default();
        held.served = held.served.saturating_add(1);
        if held.served < self.reuse {
            self.keep(held);
        }
        Ok((decision, assessed))
    }

    /// An idle instance if one is kept, else a slot for a fresh one: when every slot is
    /// taken, waits until one is released or an instance is kept idle (the request timeout
    /// bounds the wait).
    async fn take(&self) -> anyhow::Result<Taken> {
        if let Some(taken) = self.take_now()? {
            return Ok(taken);
        }
        self.shared.metrics.instance_wait();
        loop {
            // Listening before looking again: an instance kept between the look and the
            // wait still wakes this request (a wake-up stored while nobody listened only
            // costs one more look).
            let kept = self.kept.notified();
            tokio::pin!(kept);
            kept.as_mut().enable();
            if let Some(taken) = self.take_now()? {
                return Ok(taken);
            }
            tokio::select! {
                slot = self.slots.clone().acquire_owned() => {
                    return Ok(Taken::Slot(slot.context("the instance slots are closed")?));
                }
                () = kept => {}
            }
        }
    }

    /// An idle instance or a free slot, if there is one now (no waiting).
    fn take_now(&self) -> anyhow::Result<Option<Taken>> {
        if let Some(idle) = self.pop_idle() {
            return Ok(Some(Taken::Idle(idle)));
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(Some(Taken::Slot(slot))),
            Err(TryAcquireError::Closed) => anyhow::bail!("the instance slots are closed"),
            Err(TryAcquireError::NoPermits) => Ok(None),
        }
    }

    /// The most recently kept idle instance, if any.
    fn pop_idle(&self) -> Option<Held> {
        if self.reuse <= 1 {
            return None;
        }
        let mut idle = self.idle.lock().ok()?;
        let kept = idle.pop();
        self.shared.metrics.idle_instances(idle.len());
        kept
    }

    /// Keeps an instance idle for the next request (it keeps its slot: idle instances
    /// count among `--max-instances`), and wakes a request waiting for one.
    fn keep(&self, held: Held) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.push(held);
        self.shared.metrics.idle_instances(idle.len());
        drop(idle);
        self.kept.notify_one();
    }

    /// The host's answer when the component fails (a trap, the deadline, a failed
    /// instantiation) or returns a decision that cannot be carried out:
    /// 503 `gateway_error` with the request id, the cause logged under that id (never sent
    /// to the client), and the refusal audited and counted.
    fn failed(
        &self,
        cause: &dyn std::fmt::Display,
        request_id: &str,
        parts: &http::request::Parts,
    ) -> Response<HyperOutgoingBody> {
        self.shared.metrics.host_error();
        tracing::error!(request_id, %cause, "the gateway component failed");
        let refusal = portcullis_driver::gateway_error(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "the gateway component failed on this request (the gateway's log has the cause)",
            request_id,
        );
        self.shared.refused(
            &refusal,
            request_id,
            parts.method.to_string(),
            parts.uri.path().to_owned(),
        );
        respond(&refusal)
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

/// The component's outcome as the core's; why not when a field it returned is not a valid
/// HTTP field or status (a faulty component: the request fails closed).
fn outcome(outcome: decide::Outcome) -> Result<Outcome, String> {
    Ok(match outcome {
        decide::Outcome::Answer(a) => Outcome::Respond(portcullis_core::Response {
            status: http::StatusCode::from_u16(a.status)
                .map_err(|_| format!("status {}", a.status))?,
            headers: fields(a.headers)?,
            body: a.body,
            reason: portcullis_core::Reason::from_code(&a.reason)
                .ok_or_else(|| format!("reason code {:?}", a.reason))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `dir`, read.
    fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files(&path));
            } else {
                let bytes = std::fs::read(&path).unwrap();
                found.push((path, bytes));
            }
        }
        found
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn an_answer_keeps_the_components_reason_code_and_an_unknown_one_is_refused() {
        let answer = |reason: &str| {
            decide::Outcome::Answer(decide::Answer {
                status: 404,
                headers: vec![("content-type".into(), b"application/problem+json".to_vec())],
                body: b"{}".to_vec(),
                reason: reason.to_owned(),
            })
        };
        match outcome(answer("route_not_found")) {
            Ok(Outcome::Respond(r)) => {
                assert_eq!(
                    (r.status.as_u16(), r.reason),
                    (404, portcullis_core::Reason::RouteNotFound)
                );
            }
            other => panic!("{other:?}"),
        }
        let Err(why) = outcome(answer("no_such_reason")) else {
            panic!("an unknown reason code was carried out");
        };
        assert!(why.contains("no_such_reason"), "{why}");
    }

    #[test]
    fn a_child_that_refuses_before_reading_is_reported_by_its_own_reason() {
        // More input than a pipe holds: writing it fails once the child has gone.
        let mut command = std::process::Command::new("sh");
        command.args(["-c", "echo 'refused: another gateway' >&2; exit 3"]);
        let Err(e) = run_child(command, &vec![0u8; 1 << 20]) else {
            panic!("a failed child was taken for a compiled component");
        };
        let text = format!("{e:#}");
        assert!(text.contains("refused: another gateway"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pre_initialized_gateway_holds_the_configuration_and_the_cache_never_does() {
        let dir = std::env::temp_dir().join(format!("portcullis-preinit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        std::fs::write(
            dir.join("secrets/audit.key"),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        )
        .unwrap();
        // A backend address found nowhere but in this configuration.
        let marker = "https://canary-7f3a9c.internal.example";
        let text = format!(
            r#"region.eu = {{ jurisdiction = "EU", backends = ["{marker}"] }}
residency = {{ missing = "eu" }}
route = [{{ path = "/" }}]
audit = {{ subject_key_file = "secrets/audit.key" }}

[[issuer]]
name = "login"
issuer = "https://login.example.com"
discovery = true
audiences = ["api://example"]
algorithms = ["ES256"]
"#
        );
        let loaded = crate::load_config_text(text, "gateway.toml", &dir).unwrap();
        let engine = crate::wasm::engine(4, false).unwrap();
        let cache = dir.join("cache");
        let component =
            pre_initialized(&engine, &loaded.config.to_snapshot(), Some(cache.as_path()))
                .await
                .unwrap();

        // The configuration is restored in the component's memory image...
        let compiled = component.serialize().unwrap();
        assert!(
            contains(&compiled, marker.as_bytes()),
            "the compiled component does not hold the restored configuration"
        );
        // ...and the instances of it link as the engine's do.
        pre_instantiate(&engine, &component).unwrap();

        // The cache holds the instrumented component (no configuration), never the
        // pre-initialized one.
        let cached = files(&cache);
        assert!(
            cached
                .iter()
                .any(|(p, _)| p.extension().is_some_and(|e| e == "cwasm")),
            "nothing was cached in {}",
            cache.display()
        );
        for (path, bytes) in &cached {
            assert!(
                !contains(bytes, marker.as_bytes()),
                "{} holds the configuration",
                path.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A kept instance whose decision fails inside the component (here a real trap: a
    /// deadline of no epoch tick, which the decision's first epoch check ends) is dropped,
    /// never kept again, and the host answers: 503 `gateway_error` with the request id and
    /// no trap text, audited and counted. The decision before it, which met its deadline,
    /// kept its instance.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decision_that_traps_gets_an_audited_gateway_error_and_its_instance_is_not_kept() {
        use http_body_util::BodyExt as _;
        let dir = std::env::temp_dir().join(format!("portcullis-trap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("audit.key"),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        )
        .unwrap();
        std::fs::write(
            dir.join("keys.json"),
            portcullis_tests::TestIdp::shared().jwks().to_string(),
        )
        .unwrap();
        let text = r#"region.eu = { jurisdiction = "EU", backends = ["http://127.0.0.1:9"] }
residency = { missing = "eu", anonymous = "eu" }
route = [{ path = "/", auth = "public" }]
audit = { subject_key_file = "audit.key" }

[[issuer]]
name = "main"
issuer = "https://idp.test"
jwks_file = "keys.json"
audiences = ["api://shop"]
algorithms = ["ES256"]
"#;
        let load = || crate::load_config_text(text.to_owned(), "gateway.toml", &dir).unwrap();
        let audit = dir.join("audit.jsonl");
        let opts = crate::serve::ServeOptions {
            audit: audit.display().to_string(),
            cache_dir: None,
            engine: crate::serve::EngineKind::Component,
            ..crate::serve::ServeOptions::default()
        };
        let prepared = crate::prepare(load(), &opts).await.unwrap();
        let (settings, component) = prepared.gateway.compiled().unwrap();
        let pre = pre_instantiate(component.engine(), component).unwrap();
        let ticker = EpochTicker::start(component.engine()).unwrap();
        let mut engine = ComponentEngine::new(
            prepared.shared.clone(),
            load().config,
            (pre, settings),
            ticker,
            8,
            4,
            1_000,
        );
        let request = |id: &str| {
            Request::get("/orders/1")
                .header("host", "api.example")
                .header("x-request-id", id)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap()
        };
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let answer = |r: Response<HyperOutgoingBody>| async move {
            let status = r.status().as_u16();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (status, doc, String::from_utf8_lossy(&body).into_owned())
        };

        // A deadline the decision meets: it decides (to forward; the backend cannot be
        // reached, which is the backend's refusal, not the gateway's), and its instance is
        // kept.
        let (_, doc, _) = answer(engine.handle(peer, request("probe-1"), "probe-1").await).await;
        assert_eq!(doc["reason"].as_str(), Some("backend_unavailable"), "{doc}");
        assert_eq!(engine.idle.lock().unwrap().len(), 1);

        // The kept instance's next decision traps (a deadline of no epoch tick, which the
        // decision's first epoch check ends).
        engine.deadline_ticks = 0;
        let (status, doc, text) =
            answer(engine.handle(peer, request("probe-2"), "probe-2").await).await;
        assert_eq!(
            (status, doc["reason"].as_str(), doc["request_id"].as_str()),
            (503, Some("gateway_error"), Some("probe-2")),
            "{doc}"
        );
        assert!(
            !text.contains("wasm") && !text.contains("trap") && !text.contains("interrupt"),
            "{text}"
        );
        assert_eq!(
            engine.idle.lock().unwrap().len(),
            0,
            "an instance that trapped was kept"
        );
        let scrape = prepared.shared.metrics.render(|_| {});
        assert!(
            scrape.contains("portcullis_host_errors_total 1\n"),
            "{scrape}"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let record = loop {
            let written = std::fs::read_to_string(&audit).unwrap_or_default();
            if let Some(line) = written.lines().find(|l| l.contains("\"probe-2\"")) {
                break serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no audit record: {written}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(
            (
                record["decision"].as_str(),
                record["status"].as_u64(),
                record["reason"].as_str()
            ),
            (Some("deny"), Some(503), Some("gateway_error")),
            "{record}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
