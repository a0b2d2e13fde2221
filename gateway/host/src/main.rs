//! `portcullis`: serve the gateway, check a configuration, verify a token, run the demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use portcullis_core::Outcome;
use portcullis_host::{ServeOptions, keys, load_config_file};

/// mimalloc (v2) instead of glibc's malloc: every request allocates and frees a wasm
/// store, its resource tables and the hyper request on the host, and glibc's free lists
/// took ~8% of the component engine's samples. Measured on the load harness (2026-12-06,
/// partial runs against Envoy in the same run): CPU per request -12..17% for the component
/// engine and the wide bundle on a repeated token, -20% for the native engine; peak RSS
/// +8-12 MiB, all still under Envoy's (issue 18).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version = VERSION,
    about = "Portcullis edge authentication gateway"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax, e.g. `info,portcullis_host=debug`); default:
    /// `RUST_LOG`, else `info`. A filter that does not parse is an error.
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log format on standard error: `json` (one object per line) or `text`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--version`: the release, the commit, the WIT contract and the wasmtime it embeds.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("PORTCULLIS_GIT_REV"),
    ", WIT ",
    env!("PORTCULLIS_WIT_PACKAGE"),
    ", wasmtime ",
    env!("PORTCULLIS_WASMTIME_VERSION"),
    ")"
);

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// `token verify`: the token was refused (as `check` and `plugin check` use 1).
const EXIT_REJECTED: u8 = 1;
/// The configuration does not load (`token verify`, `serve`, `bundle`, `snapshot`).
const EXIT_CONFIG: u8 = 3;

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway.
    Serve {
        /// The edge configuration.
        #[arg(short = 'c', long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Gateway address.
        #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin address (/healthz, /readyz, /metrics).
        #[arg(long, env = "PORTCULLIS_ADMIN", default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Audit records: a file, or `-` for standard output.
        #[arg(long, default_value = "-")]
        audit: String,
        /// Audit records that may wait for the writer thread.
        #[arg(long, default_value_t = portcullis_host::audit::DEFAULT_QUEUE)]
        audit_queue: usize,
        /// What a full audit queue does: `block` (requests wait: no record is lost) or
        /// `drop` (requests never wait; lost records are counted in
        /// `portcullis_audit_dropped_total` and logged).
        #[arg(long, value_enum, default_value_t = WhenFullArg::Block)]
        audit_when_full: WhenFullArg,
        /// Compile the component at every start instead of caching it on disk.
        #[arg(long)]
        no_cache: bool,
        /// Gateway component instances at once, deciding or kept idle (pooling allocator
        /// slots): a request that finds none free waits for one, within --request-timeout.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
        max_instances: u32,
        /// With `--engine component`: requests one instance serves, one after another,
        /// before it is dropped. 1 (the default) gives every request a fresh instance, as
        /// edge runtimes do; more keeps instances whose request returned cleanly (no trap,
        /// no deadline) instead of creating one per request, for a fraction of the CPU per
        /// request. Requests never share an instance at the same time.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        instance_reuse: u32,
        /// Longest a request may run in the gateway, seconds (at least 1).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        request_timeout: u64,
        /// Longest shutdown waits for in-flight requests, seconds.
        #[arg(long, default_value_t = 30)]
        drain: u64,
        /// Where requests are decided: `native` (the core natively in the host: the fast
        /// path) or `component` (each request decided in a fresh gateway-component
        /// instance, sandboxed, and carried out by the host). Both make the same decisions.
        #[arg(long, value_enum, default_value_t = EngineArg::Native)]
        engine: EngineArg,
        /// Verified tokens kept (0 turns the verified-token cache off).
        #[arg(long, default_value_t = 100_000)]
        token_cache: usize,
        /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g.
        /// `http://127.0.0.1:4318` (`/v1/traces` is appended). Off when unset.
        #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
        /// How often the configuration file is checked for change, seconds (a change
        /// reloads it; so do SIGHUP and `POST /reload` on the admin listener). 0: no watch.
        #[arg(long, default_value_t = 2.0)]
        watch_config: f64,
    },
    /// Compose a self-contained edge bundle for any wasi:http runtime: the gateway with
    /// portable host services compiled in, the configuration's risk plugins (chained in
    /// configuration order) with their host services, and the validated configuration. The result imports only
    /// `wasi:*`: wasi:http (requests, backends, key sets, the provider's token endpoint)
    /// and wasi:keyvalue (the shared state, key sets shared between instances).
    Bundle {
        /// The edge configuration.
        #[arg(short = 'c', long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Where to write the bundle.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Fetch remote key sets now and bake them in (an offline bundle: nothing is
        /// fetched at run time, and a key rotated at the issuer needs a new bundle).
        /// Without it the bundle fetches key sets itself and follows rotation.
        #[arg(long)]
        bake_keys: bool,
        /// Build the signature checks with 128-bit multiplies (the wasm wide-arithmetic
        /// proposal): about twice as fast, but only runtimes that enable the proposal can
        /// load the bundle (`portcullis serve-wasm` does; wasmtime with
        /// `-W wide-arithmetic`). Other runtimes refuse it when loading it.
        #[arg(long)]
        wide_arithmetic: bool,
        /// Do not pre-initialize: by default the gateway is instantiated once at bundle
        /// time, restores the configuration, and is snapshotted in that state (Wizer), so
        /// no instance restores it per request. With this flag every instance
        /// restores it from the embedded snapshot (more CPU per request; for comparison).
        #[arg(long)]
        no_pre_init: bool,
        /// Keep the names of functions and items (the `name` custom sections): a trap's
        /// backtrace then names the functions it passed through. Without it they are
        /// dropped, with any DWARF, and backtraces give function indices; the bundle is
        /// otherwise the same.
        #[arg(long)]
        keep_names: bool,
    },
    /// Write the validated configuration as a snapshot for the Cloudflare Worker
    /// (`gateway/worker`): base64url text for its `PORTCULLIS_SNAPSHOT` secret. Key sets are
    /// not baked in: the worker fetches and rotates them itself.
    Snapshot {
        /// The edge configuration.
        #[arg(short = 'c', long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Where to write the snapshot (`-` for standard output).
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Make the configuration's risk-plugin components loadable by the Cloudflare Worker
    /// without rebuilding it: each is transpiled (jco's generator) into JavaScript and core
    /// modules under OUT/plugins/, with a registry, the shared plugin host and `main.js`,
    /// the entry module to deploy. OUT is the worker's build directory (beside its
    /// `index.js`). The worker refuses components whose SHA-256 differs from the one its
    /// snapshot (`portcullis snapshot`) names.
    WorkerPlugins {
        /// The edge configuration.
        #[arg(short = 'c', long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// The worker's build directory (worker-build's `--out-dir`).
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Serve any wasi:http component (an edge bundle) the way a plain wasi:http host
    /// does: WASI, wasi:http and the standard wasi:keyvalue only, no Portcullis host
    /// services, a fresh instance per request, outbound requests to any loopback or public
    /// address.
    ServeWasm {
        /// The component.
        #[arg(long)]
        component: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where wasi:keyvalue keeps its data: `memory` (every instance of this process)
        /// or a `redis://` / `rediss://` URL (every process using that server).
        #[arg(long, env = "PORTCULLIS_STATE", default_value = "memory")]
        state: String,
        /// Instead of `--state`: a TOML file holding a `[state]` table with the keys of a
        /// gateway configuration's (a Redis Cluster, Sentinel, `rediss://` with a private
        /// CA, a password file, pool, timeout, prefix; files relative to it).
        #[arg(long, conflicts_with_all = ["state", "state_capacity", "state_prefix"])]
        state_config: Option<PathBuf>,
        /// Most entries kept in memory (a full store refuses new keys: fail closed).
        #[arg(long, default_value_t = portcullis_core::config::DEFAULT_STATE_CAPACITY)]
        state_capacity: usize,
        /// Key prefix in Redis.
        #[arg(long, default_value = "portcullis:")]
        state_prefix: String,
        /// How long a value without an edge bundle's expiry tag lives after its last
        /// write (wasi:keyvalue has no expiry of its own).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        state_retention: std::time::Duration,
        /// Compile the component at every start instead of caching the compiled form on
        /// disk (`$XDG_CACHE_HOME/portcullis`, else `~/.cache/portcullis`).
        #[arg(long)]
        no_cache: bool,
        /// Component instances at once (an instance lives until its response is sent): a
        /// request that finds none free waits for one.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
        max_instances: u32,
    },
    /// Validate a configuration and print every problem.
    Check {
        /// The edge configuration.
        #[arg(short = 'c', long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Also fetch every issuer's discovery document and key set, as `serve` would at
        /// start, and report per issuer what was found or why it failed.
        #[arg(long)]
        online: bool,
    },
    /// Token tools.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Risk-plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Print a shell completion script (e.g. `portcullis completions bash >
    /// /etc/bash_completion.d/portcullis`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Internal, run by `serve --engine component` at every start and reload: reads a
    /// configuration snapshot on standard input, pre-initializes the gateway component
    /// with it, compiles it for an engine with these settings and writes the compiled
    /// component to standard output (a child process, so the compiler's memory is not
    /// kept by the server).
    #[command(hide = true)]
    CompileGateway {
        /// The engine's pooling-allocator slots.
        #[arg(long)]
        slots: u32,
        /// The engine meters fuel.
        #[arg(long)]
        fuel: bool,
        /// Cache of the instrumented component (it holds no configuration).
        #[arg(long, conflicts_with = "no_cache")]
        cache_dir: Option<PathBuf>,
        /// No cache.
        #[arg(long)]
        no_cache: bool,
        /// The SHA-256 of the gateway component the server embeds: this executable
        /// refuses to compile its own if it differs.
        #[arg(long)]
        gateway_sha256: String,
    },
    /// Run the demo: gateway, demo issuer and two regional echo backends on 127.0.0.1.
    Demo {
        /// Gateway address.
        #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin address.
        #[arg(long, env = "PORTCULLIS_ADMIN", default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WhenFullArg {
    Block,
    Drop,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    Component,
    Native,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin crate that builds (`cargo build --release --target wasm32-wasip2`)
    /// and passes its test (`cargo test`).
    New {
        /// Crate name (lowercase, digits, `-`).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on this portcullis-plugin SDK checkout instead of the copy `plugin new`
        /// writes into the crate (`vendor/portcullis-plugin`).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Say whether a file is a plugin component for this host's WIT version, and what it
    /// imports beyond the allowed set.
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
    },
    /// Run a plugin component, under the sandbox limits `serve` applies, against a
    /// scenario of requests (TOML: `[plugin]` configuration and limits, `[[request]]`
    /// steps with identity, client, time steps, backend outcomes and expectations); print
    /// each assessment. Exit status 1 when an expectation does not hold.
    Test {
        /// The component (`.wasm`).
        file: PathBuf,
        /// The scenario file.
        #[arg(long)]
        scenario: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Verify a token offline (keys from the configured key sets) and explain the result.
    Verify {
        /// The edge configuration.
        #[arg(short = 'c', long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Decide a GET of this path with the pipeline `serve` runs (route rules, risk
        /// plugins, rate limits, residency) instead of only verifying.
        #[arg(long)]
        path: Option<String>,
        /// A request header for `--path`, `NAME: VALUE` (repeatable; `Host` picks a
        /// host-specific route, default `localhost`).
        #[arg(long = "header", short = 'H', requires = "path")]
        headers: Vec<String>,
        /// The token, or `-` to read it from standard input (keeps it out of the shell
        /// history and the process list).
        token: String,
    },
}

/// A duration flag (`30s`, `24h`, …).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    portcullis_core::config::parse_duration(text)
}

/// Where `serve` compiles the component engine's gateway: in a child process running this
/// executable (`compile-gateway`), so the compiler's memory is not kept by the server;
/// in-process where the executable cannot be named. On Linux the child runs
/// `/proc/self/exe`, the running executable itself even after an upgrade replaced or
/// removed its file (a reload then still compiles with the server's own code).
fn compiler() -> portcullis_host::serve::component::Compiler {
    let running = std::path::Path::new("/proc/self/exe");
    if running.exists() {
        return portcullis_host::serve::component::Compiler::Child(running.to_path_buf());
    }
    match std::env::current_exe() {
        Ok(exe) => portcullis_host::serve::component::Compiler::Child(exe),
        Err(e) => {
            tracing::warn!(error = %e, "this executable cannot be named: the gateway component is compiled in-process");
            portcullis_host::serve::component::Compiler::InProcess
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty()))
        .unwrap_or_else(|| "info".to_owned());
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("portcullis: log filter {filter:?} does not parse: {e}");
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            config,
            listen,
            admin,
            audit,
            audit_queue,
            audit_when_full,
            no_cache,
            max_instances,
            instance_reuse,
            request_timeout,
            drain,
            engine,
            token_cache,
            otlp_endpoint,
            watch_config,
        } => {
            if instance_reuse > 1 && matches!(engine, EngineArg::Native) {
                eprintln!(
                    "--instance-reuse applies to --engine component (the native engine runs no gateway instance)"
                );
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            let read = portcullis_host::serve::reload::FileStamp::of(&config);
            let loaded = match load_config_file(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let opts = ServeOptions {
                audit,
                audit_queue,
                audit_when_full: match audit_when_full {
                    WhenFullArg::Block => portcullis_host::audit::WhenFull::Block,
                    WhenFullArg::Drop => portcullis_host::audit::WhenFull::Drop,
                },
                cache_dir: if no_cache {
                    None
                } else {
                    portcullis_host::wasm::default_cache_dir()
                },
                max_instances,
                instance_reuse,
                request_timeout: Duration::from_secs(request_timeout),
                drain: Duration::from_secs(drain),
                token_cache,
                otlp_endpoint,
                engine: match engine {
                    EngineArg::Component => portcullis_host::EngineKind::Component,
                    EngineArg::Native => portcullis_host::EngineKind::Native,
                },
                compiler: compiler(),
            };
            let prepared = portcullis_host::prepare(loaded, &opts).await?;
            let listener = portcullis_host::serve::bind("--listen", listen).await?;
            let admin_listener = portcullis_host::serve::bind("--admin", admin).await?;
            tracing::info!(listen = %listener.local_addr()?, admin = %admin_listener.local_addr()?, "portcullis serving");
            let watch = (watch_config.is_finite() && watch_config > 0.0)
                .then(|| Duration::from_secs_f64(watch_config.clamp(0.05, 3600.0)));
            portcullis_host::serve(
                prepared,
                listener,
                admin_listener,
                portcullis_host::shutdown_signal(),
                portcullis_host::serve::reload::Reload {
                    source: Some(config),
                    read,
                    opts,
                    watch,
                },
            )
            .await;
            Ok(ExitCode::SUCCESS)
        }
        Command::CompileGateway {
            slots,
            fuel,
            cache_dir,
            no_cache: _,
            gateway_sha256,
        } => {
            use anyhow::Context as _;
            use std::io::{Read as _, Write as _};
            let embedded = portcullis_host::wasm::component_digest();
            if gateway_sha256 != embedded {
                anyhow::bail!(
                    "this executable embeds a different gateway component ({embedded}) from the server's ({gateway_sha256}): it was replaced on disk; restart the server to run it"
                );
            }
            let mut snapshot = Vec::new();
            std::io::stdin()
                .read_to_end(&mut snapshot)
                .context("read the configuration snapshot")?;
            let settings = portcullis_host::serve::component::EngineSettings { slots, fuel };
            // No memory image here: the server makes its own from what it loads.
            let component = portcullis_host::serve::component::pre_initialized(
                &settings.engine()?,
                &snapshot,
                cache_dir.as_deref(),
            )
            .await?;
            let compiled = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut out = std::io::stdout().lock();
            out.write_all(&compiled)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot { config, output } => {
            let loaded = match load_config_file(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            if let Err(e) = platform_connects(&loaded.config, "the Worker's fetch") {
                eprintln!("{}: {e}", config.display());
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            warn_login_routes(&loaded.config, "the Worker and Spin cannot yet");
            let mut loaded = loaded;
            // The worker runs the plugin components deployed beside it (`worker-plugins`)
            // only when they are the files this configuration names. A file that cannot be
            // read leaves no hash: only a plugin crate linked into the worker can serve it.
            for p in &mut loaded.config.plugins {
                let path = loaded.base.join(&p.path);
                match std::fs::read(&path) {
                    Ok(wasm) => {
                        p.component_sha256 = Some(
                            portcullis_host::tools::worker_plugins::component_sha256(&wasm),
                        );
                    }
                    Err(e) => eprintln!(
                        "warning: plugin `{}`: {}: {e}; the worker will refuse a component deployed for it (a linked plugin crate can still serve it)",
                        p.name,
                        path.display()
                    ),
                }
            }
            let text = portcullis_core::b64::encode(&loaded.config.to_snapshot());
            if output.as_os_str() == "-" {
                println!("{text}");
            } else {
                std::fs::write(&output, &text)?;
                eprintln!("{}: {} bytes of base64url", output.display(), text.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::WorkerPlugins { config, output } => {
            let loaded = match load_config_file(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let written = portcullis_host::tools::worker_plugins::write(&loaded, &output)?;
            for w in &written {
                let bytes: usize = w.files.iter().map(|(_, n)| n).sum();
                eprintln!(
                    "plugin `{}` (sha256 {}): {} files, {bytes} bytes",
                    w.name,
                    w.sha256,
                    w.files.len()
                );
            }
            eprintln!(
                "{}: deploy main.js as the worker's entry module",
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bundle {
            config,
            output,
            bake_keys,
            wide_arithmetic,
            no_pre_init,
            keep_names,
        } => {
            let mut loaded = match load_config_file(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            if let Err(e) = platform_connects(&loaded.config, "a bundle's wasi:http host") {
                eprintln!("{}: {e}", config.display());
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            let mut plugins = Vec::with_capacity(loaded.config.plugins.len());
            for p in &loaded.config.plugins {
                let path = loaded.base.join(&p.path);
                plugins.push(std::fs::read(&path).map_err(|e| {
                    anyhow::anyhow!("plugin `{}`: {}: {e}", p.name, path.display())
                })?);
            }
            let baked = if bake_keys {
                portcullis_host::tools::bundle::bake_keys(&mut loaded.config).await?
            } else {
                Vec::new()
            };
            let gateway = if wide_arithmetic {
                portcullis_host::tools::bundle::BUNDLE_GATEWAY_WIDE
            } else {
                portcullis_host::tools::bundle::BUNDLE_GATEWAY
            };
            let bundle = portcullis_host::tools::bundle::compose_with(
                gateway,
                &loaded.config,
                &plugins,
                if no_pre_init {
                    portcullis_host::tools::bundle::PreInit::No
                } else {
                    portcullis_host::tools::bundle::PreInit::Yes
                },
            )
            .await?;
            let wasm = if keep_names {
                bundle.wasm
            } else {
                portcullis_host::tools::strip::strip_debug_names(&bundle.wasm)?.0
            };
            std::fs::write(&output, &wasm)?;
            println!(
                "{}: {} KB, {} plugin(s), imports {} (all wasi:*){}; key sets baked in: {} (others fetched at run time)",
                output.display(),
                wasm.len().div_ceil(1024),
                plugins.len(),
                bundle.imports.len(),
                if wide_arithmetic {
                    ", needs wide arithmetic"
                } else {
                    ""
                },
                if baked.is_empty() {
                    "none".to_owned()
                } else {
                    baked.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ServeWasm {
            component,
            listen,
            state,
            state_config,
            state_capacity,
            state_prefix,
            state_retention,
            no_cache,
            max_instances,
        } => {
            let wasm = std::fs::read(&component)
                .map_err(|e| anyhow::anyhow!("{}: {e}", component.display()))?;
            let store = if let Some(path) = state_config {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                let base = path
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                let files = portcullis_host::config::RecordingFiles::new(base);
                let cfg =
                    portcullis_core::config::load_state(&text, &path.display().to_string(), &files)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                portcullis_host::state::Store::from_config(&cfg)?
            } else if state == "memory" {
                portcullis_host::state::Store::memory(state_capacity)
            } else if state.starts_with("redis://") || state.starts_with("rediss://") {
                let r = portcullis_host::state::RedisStore::new(
                    &state,
                    4,
                    std::time::Duration::from_millis(50),
                    &state_prefix,
                )?;
                portcullis_host::state::Store::Redis(Box::new(r))
            } else {
                anyhow::bail!("--state {state:?}: use `memory` or a redis:// URL");
            };
            let store = std::sync::Arc::new(store);
            portcullis_host::serve::sweep_expired(&store);
            let keyvalue = std::sync::Arc::new(portcullis_host::state::keyvalue::KeyValue {
                store,
                retention: state_retention,
            });
            let listener = portcullis_host::serve::bind("--listen", listen).await?;
            let cache_dir = if no_cache {
                None
            } else {
                portcullis_host::wasm::default_cache_dir()
            };
            let server = portcullis_host::serve::plain::PlainServer::new(
                &wasm,
                keyvalue,
                cache_dir.as_deref(),
                max_instances,
            )?;
            tracing::info!(listen = %listener.local_addr()?, admin = %listener.local_addr()?, "portcullis serving");
            server
                .serve(listener, portcullis_host::shutdown_signal())
                .await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, online } => match load_config_file(&config) {
            Ok(l) => {
                // Plugins are loaded and asked to accept their configuration, as at startup.
                if !l.config.plugins.is_empty() {
                    let engine = portcullis_host::wasm::engine(64, false)?;
                    let ticker = portcullis_host::epoch::EpochTicker::start(&engine)?;
                    let state = std::sync::Arc::new(portcullis_host::state::Store::memory(16));
                    if let Err(e) = portcullis_host::risk::PluginRuntime::load(
                        (&engine, &ticker),
                        &l.config,
                        &l.base,
                        state,
                        None,
                    )
                    .await
                    {
                        eprintln!("{}: {e:#}", config.display());
                        return Ok(ExitCode::FAILURE);
                    }
                    // Each plugin's WIT version (loading it already proved it compatible).
                    for p in &l.config.plugins {
                        let wasm = std::fs::read(l.base.join(&p.path))?;
                        let report = portcullis_host::tools::plugin::check(&wasm)?;
                        println!(
                            "plugin {}: built for portcullis:plugin@{}; this host speaks {}",
                            p.name,
                            report.built_for.as_deref().unwrap_or("?"),
                            portcullis_host::risk::WIT_VERSION
                        );
                    }
                }
                // The listener's certificates load as at startup.
                if let Some(tls) = &l.config.tls {
                    if let Err(e) = portcullis_host::serve::tls::TlsFront::load(tls, &l.base) {
                        eprintln!("{}: {e:#}", config.display());
                        return Ok(ExitCode::FAILURE);
                    }
                    println!(
                        "tls: {} certificate(s), HTTP/2 {}",
                        tls.certificates.len(),
                        if tls.http2 { "offered" } else { "off" }
                    );
                }
                println!(
                    "{}: ok ({} issuer(s), {} region(s), {} route(s), {} plugin(s))",
                    config.display(),
                    l.config.issuers.len(),
                    l.config.regions.len(),
                    l.config.routes.len(),
                    l.config.plugins.len()
                );
                if !online {
                    return Ok(ExitCode::SUCCESS);
                }
                let service = keys::KeyService::new(l.config, 0);
                service.refresh_due().await;
                let mut failed = false;
                for (issuer, outcome) in service.online_report() {
                    match outcome {
                        Ok(summary) => println!("issuer {issuer}: ok, {summary}"),
                        Err(why) => {
                            failed = true;
                            println!("issuer {issuer}: FAILED: {why}");
                        }
                    }
                }
                Ok(if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                })
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Plugin {
            command: PluginCommand::New { name, dir, sdk },
        } => {
            use portcullis_host::tools::plugin::{PLUGIN_TARGET, plugin_target_installed};
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            portcullis_host::tools::plugin::scaffold(&name, &dir, sdk.as_deref())?;
            println!("created {}", dir.display());
            // Plugins build for wasm32-wasip2: add the target when rustup can.
            match plugin_target_installed() {
                Some(true) => {}
                Some(false) => {
                    println!(
                        "adding the {PLUGIN_TARGET} target: rustup target add {PLUGIN_TARGET}"
                    );
                    let added = std::process::Command::new("rustup")
                        .args(["target", "add", PLUGIN_TARGET])
                        .status();
                    if !added.is_ok_and(|s| s.success()) {
                        println!("  that failed: run `rustup target add {PLUGIN_TARGET}` yourself");
                    }
                }
                None => println!(
                    "  no rustup: give your toolchain the {PLUGIN_TARGET} target (its standard library)"
                ),
            }
            println!(
                "  cd {}\n  cargo test\n  cargo build --release --target {PLUGIN_TARGET}\n  portcullis plugin check target/{PLUGIN_TARGET}/release/{}.wasm",
                dir.display(),
                name.replace('-', "_")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => {
            let wasm =
                std::fs::read(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            match portcullis_host::tools::plugin::check(&wasm) {
                Ok(report) => {
                    print!("{}", report.render(&file.display().to_string()));
                    Ok(if report.ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Err(e) => {
                    println!("{}: {e:#}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Plugin {
            command: PluginCommand::Test { file, scenario },
        } => {
            let text = std::fs::read_to_string(&scenario)
                .map_err(|e| anyhow::anyhow!("{}: {e}", scenario.display()))?;
            let parsed = match portcullis_host::tools::scenario::parse(&text) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{}: {e:#}", scenario.display());
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let report = portcullis_host::tools::scenario::run(&file, &parsed).await?;
            print!("{}", report.text);
            if report.failed.is_empty() {
                println!(
                    "{}: {} request(s), every expectation held",
                    scenario.display(),
                    parsed.requests.len()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "{}: {} expectation(s) not met:",
                    scenario.display(),
                    report.failed.len()
                );
                for f in &report.failed {
                    println!("  {f}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Token {
            command:
                TokenCommand::Verify {
                    config,
                    path,
                    headers,
                    token,
                },
        } => verify(config, path, &headers, token).await,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "portcullis",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen, admin } => {
            portcullis_host::tools::demo::run(listen, admin).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn verify(
    config: PathBuf,
    path: Option<String>,
    extra_headers: &[String],
    token: String,
) -> anyhow::Result<ExitCode> {
    let loaded = match load_config_file(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let token = if token == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        text.trim().to_owned()
    } else {
        token
    };
    let Some(path) = path else {
        let service = keys::KeyService::new(loaded.config, 0);
        service.refresh_due().await;
        return Ok(match service.authenticate(&token, &[]).await {
            Ok((issuer, claims)) => {
                let name = service
                    .config()
                    .issuers
                    .get(issuer.0)
                    .map_or("?", |i| i.name.as_str());
                println!("accepted: issuer {name}\n{claims}");
                ExitCode::SUCCESS
            }
            Err(f) => {
                println!("rejected: {} ({})", f.reason.code(), f.detail);
                ExitCode::from(EXIT_REJECTED)
            }
        });
    };
    let mut headers = http::HeaderMap::new();
    for line in extra_headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header {line:?}: expected `NAME: VALUE`"))?;
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| anyhow::anyhow!("--header {line:?}: {e}"))?,
            http::HeaderValue::from_str(value.trim())
                .map_err(|e| anyhow::anyhow!("--header {line:?}: {e}"))?,
        );
    }
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    // Routes are matched for this host (routes without `host` match any).
    if !headers.contains_key(http::header::HOST) {
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
    }
    let offline =
        portcullis_host::tools::offline::decide(loaded, &http::Method::GET, &path, &headers)
            .await?;
    let audit = serde_json::to_string(&offline.decision.audit)?;
    let code = match offline.decision.outcome {
        Outcome::Forward(f) => {
            let backend = offline
                .config
                .regions
                .get(f.backend.region.0)
                .and_then(|r| r.backends.get(f.backend.index))
                .map_or("?", |b| b.url.as_str());
            println!("accepted: GET {path} → {backend}");
            for (name, value) in &f.set_headers {
                println!("  {name}: {}", value.to_str().unwrap_or("?"));
            }
            println!("{audit}");
            ExitCode::SUCCESS
        }
        Outcome::Respond(r) => {
            println!(
                "rejected: {} {}\n{}",
                r.status.as_u16(),
                r.reason.code(),
                String::from_utf8_lossy(&r.body)
            );
            ExitCode::from(EXIT_REJECTED)
        }
    };
    for note in offline.notes {
        println!("offline: {note}");
    }
    Ok(code)
}

/// Warns about routes that sign browsers in, which `target` cannot do (their browsers get
/// 503 `provider_unavailable`; bearer tokens still work).
/// Refuses backend identity checks (`[region.NAME.tls]`) where `platform` makes the backend
/// connections: it could not check them, and a silent skip would send customer data to a
/// backend nobody verified.
fn platform_connects(config: &portcullis_core::Config, platform: &str) -> Result<(), String> {
    match config.regions.iter().find(|r| r.tls.is_some()) {
        Some(r) => Err(format!(
            "[region.{}.tls]: {platform} makes the backend connections and cannot check a backend's identity or present a client certificate; run `portcullis serve` for such regions",
            r.name
        )),
        None => Ok(()),
    }
}

fn warn_login_routes(config: &portcullis_core::Config, target: &str) {
    for route in config.routes.iter().filter(|r| !r.login.is_empty()) {
        eprintln!(
            "portcullis: warning: route {:?} signs browsers in; {target} (login answers 503 provider_unavailable), bearer tokens still work",
            route.path
        );
    }
}
