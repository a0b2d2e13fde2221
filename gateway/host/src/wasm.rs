//! The wasmtime engine and the gateway component: engine settings (pooling allocator,
//! epoch interruption), the embedded component, and the on-disk cache of its compiled
//! artifact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{
    Config as WasmConfig, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The gateway component, built by this crate's build script.
pub const COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/portcullis_component.wasm"));

/// The SHA-256 of [`COMPONENT`], hex: which gateway component this executable embeds.
pub fn component_digest() -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, COMPONENT).as_ref())
}

/// Memory a gateway or plugin instance may use at most (plugins are capped lower per
/// plugin by their store limits).
pub const INSTANCE_MEMORY: usize = 64 << 20;

/// Epoch tick interval: the resolution of plugin deadlines and request timeouts.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How the pooling allocator resets a linear memory for the next instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryReset {
    /// The pages the instance wrote (found with Linux's `PAGEMAP_SCAN`, kernel 6.7 or
    /// later) are restored in place, up to [`KEEP_RESIDENT`] bytes, and stay mapped: the
    /// next instance in the slot takes no page faults on them.
    PageMap,
    /// Every dirty page is returned to the kernel (`madvise`): the next instance faults
    /// its working set in again.
    Decommit,
}

/// Memory of a linear memory's slot restored in place rather than returned to the
/// kernel, when the page map says which pages were written ([`MemoryReset::PageMap`]):
/// more than a gateway instance writes serving a request.
pub const KEEP_RESIDENT: usize = 4 << 20;

/// The wasmtime engine: pooling allocator, epoch interruption, and fuel metering when a
/// plugin needs it (fuel is engine-wide).
pub fn engine(max_instances: u32, fuel: bool) -> anyhow::Result<Engine> {
    engine_with_reset(max_instances, fuel).map(|(engine, _)| engine)
}

/// As [`engine`], and how it resets linear memories: through the page map where the kernel
/// offers `PAGEMAP_SCAN`, else by returning pages.
///
/// Measured on the load harness (2026-12-06, wasmtime 48, Linux 6.18): restoring written
/// pages in place cut the CPU per request of an instance-per-request gateway by about a
/// fifth (component engine on a repeated token 168 → 130 µs, the wide bundle 196 → 151)
/// for 0-4 MiB more peak RSS. Keeping memory resident *without* the page map (memset of
/// the first MiBs) cost as much CPU as returning pages and 35-60 MiB more RSS (2026-12-05),
/// so without it nothing is kept resident (issue 18).
pub fn engine_with_reset(max_instances: u32, fuel: bool) -> anyhow::Result<(Engine, MemoryReset)> {
    match build_engine(max_instances, fuel, MemoryReset::PageMap) {
        Ok(engine) => Ok((engine, MemoryReset::PageMap)),
        // wasmtime refuses `pagemap_scan(Yes)` where the kernel lacks it.
        Err(why) => {
            tracing::debug!(%why, "no PAGEMAP_SCAN: linear memories are reset by returning pages");
            build_engine(max_instances, fuel, MemoryReset::Decommit)
                .map(|engine| (engine, MemoryReset::Decommit))
        }
    }
}

fn build_engine(max_instances: u32, fuel: bool, reset: MemoryReset) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 8)
        .total_memories(max_instances * 4)
        .total_tables(max_instances * 8)
        .max_memory_size(INSTANCE_MEMORY)
        .table_keep_resident(64 << 10);
    match reset {
        MemoryReset::PageMap => pool
            .pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT),
        MemoryReset::Decommit => pool
            .pagemap_scan(Enabled::No)
            .linear_memory_keep_resident(0),
    };
    let mut cfg = WasmConfig::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        // Guests built with `-C target-feature=+wide-arithmetic` (in-guest RSA/ECDSA
        // fallbacks) get 128-bit multiplies; others are unaffected.
        .wasm_wide_arithmetic(true)
        .consume_fuel(fuel)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // `PORTCULLIS_WASM_PROFILER=perfmap` (or `jitdump`) names compiled wasm functions for
    // `perf` (benches/README.md: profiling a component's request path).
    match std::env::var("PORTCULLIS_WASM_PROFILER").as_deref() {
        Ok("perfmap") => {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Ok("jitdump") => {
            cfg.profiler(wasmtime::ProfilingStrategy::JitDump);
        }
        Ok(other) if !other.is_empty() => {
            anyhow::bail!("PORTCULLIS_WASM_PROFILER={other}: expected perfmap or jitdump")
        }
        _ => {}
    }
    Engine::new(&cfg).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Compiles the component, or loads the artifact a previous run cached in `cache_dir`.
pub fn load_component(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
) -> anyhow::Result<Component> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, wasm).map_err(|e| anyhow::anyhow!("{e}"));
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    let key = ring::digest::digest(&ring::digest::SHA256, wasm);
    let name = format!(
        "{}-{:016x}.cwasm",
        hex(key.as_ref().get(..16).unwrap_or_default()),
        std::hash::Hasher::finish(&hasher)
    );
    if let Err(why) = private_dir(dir) {
        tracing::warn!(dir = %dir.display(), why, "compiled-component cache not used: compiling");
        return Component::new(engine, wasm).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let path = dir.join(name);
    if let Err(why) = private_file(&path) {
        tracing::warn!(path = %path.display(), why, "cached component not trusted; recompiling");
    } else if path.exists() {
        // SAFETY: the file is one this host serialized itself into its private cache
        // directory, named by the hash of the source component and of the engine's
        // compatibility settings; wasmtime additionally checks the artifact's header.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached component unusable; recompiling")
            }
        }
    }
    let component = Component::new(engine, wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Ok(bytes) = component.serialize() {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        if write_private(&tmp, &bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(component)
}

/// Writes a compiled artifact only this user may read or write, whatever the umask: under
/// a umask of 002 a plain write leaves it group-writable, and the next start would refuse
/// it (see [`private_file`]) and compile again every time.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// Makes sure `dir` is a cache directory only this user can write to, creating it (mode
/// 0700) if missing: an artifact in it is native code wasmtime runs without recompiling,
/// so whoever can write there could run code in the gateway.
#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    owned_and_private(meta.uid(), meta.mode())
}

/// A cached artifact is loaded only if this user owns it and no one else may write it.
#[cfg(unix)]
fn private_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err("a symbolic link".into()),
        Ok(meta) => owned_and_private(meta.uid(), meta.mode()),
        Err(_) => Ok(()), // not there yet
    }
}

#[cfg(unix)]
fn owned_and_private(uid: u32, mode: u32) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    #[allow(unsafe_code)]
    let me = unsafe { libc::geteuid() };
    if uid != me {
        return Err(format!("owned by user {uid}, not {me}"));
    }
    if mode & 0o022 != 0 {
        return Err(format!("writable by others (mode {:o})", mode & 0o777));
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())
}

#[cfg(not(unix))]
fn private_file(_: &Path) -> Result<(), String> {
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default compiled-component cache directory.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("portcullis"))
}

/// Runs one request through a fresh instance of a `wasi:http` proxy component in `store`
/// (`serve-wasm`'s bundles). The instance keeps running after the response head is sent
/// (streaming bodies); `held` (its pool slot, the epoch clock's guard) is dropped once the
/// instance has returned and its store is dropped.
pub async fn handle<T, B, H>(
    pre: &ProxyPre<T>,
    mut store: wasmtime::Store<T>,
    req: http::Request<B>,
    held: H,
) -> anyhow::Result<http::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>>
where
    T: wasmtime_wasi_http::WasiHttpView + Send + 'static,
    H: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    // The listener set the target's scheme to the connection's.
    let scheme = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let wreq = store
        .data_mut()
        .http()
        .new_incoming_request(scheme, req)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pre = pre.clone();
    let task = tokio::spawn(async move {
        let ran = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, wreq, out)
                .await?;
            anyhow::Ok(())
        }
        .await;
        // The instance goes back to the pool before its slot goes to the next request.
        drop(store);
        drop(held);
        ran
    });
    match receiver.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => anyhow::bail!("component answered with error {e:?}"),
        Err(_) => match task.await {
            Ok(Ok(())) => anyhow::bail!("component never answered"),
            Ok(Err(e)) => anyhow::bail!("component failed: {e:?}"),
            Err(e) => anyhow::bail!("component task: {e}"),
        },
    }
}

/// The WASI context every gateway instance gets from `wasi`: stderr inherited, no sockets,
/// no name lookups, no files (the gateway's outbound calls go through its host services or
/// `wasi:http`, never a socket of its own).
pub fn sandboxed(mut wasi: wasmtime_wasi::WasiCtxBuilder) -> wasmtime_wasi::WasiCtx {
    wasi.inherit_stderr()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    wasi.build()
}

/// An instance's WASI and `wasi:http` context (one request's: `serve-wasm`, and
/// pre-initialization), sandboxed:
/// stderr inherited, no sockets, no name lookups, no files; outbound HTTP through `hooks`.
pub struct WasiRequest<H> {
    wasi: wasmtime_wasi::WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    table: wasmtime::component::ResourceTable,
    hooks: H,
}

impl<H: wasmtime_wasi_http::WasiHttpHooks> WasiRequest<H> {
    /// A fresh context whose outbound requests go through `hooks`.
    pub fn new(hooks: H) -> Self {
        Self::build(hooks, wasmtime_wasi::WasiCtx::builder())
    }

    /// As [`new`](Self::new), with every `wasi:random` interface answered from `seed`
    /// (pre-initialization, for reproducible bundles).
    pub fn seeded(hooks: H, seed: [u8; 32]) -> Self {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::from_seed(seed);
        let insecure = rand::rngs::StdRng::seed_from_u64(rng.next_u64());
        let insecure_seed = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        let mut wasi = wasmtime_wasi::WasiCtx::builder();
        wasi.secure_random(rng)
            .insecure_random(insecure)
            .insecure_random_seed(insecure_seed);
        Self::build(hooks, wasi)
    }

    fn build(hooks: H, wasi: wasmtime_wasi::WasiCtxBuilder) -> Self {
        Self {
            wasi: sandboxed(wasi),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            table: wasmtime::component::ResourceTable::new(),
            hooks,
        }
    }

    /// The WASI view of it.
    pub fn wasi(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }

    /// The `wasi:http` view of it.
    pub fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// The kernel's release as (major, minor), from `/proc/sys/kernel/osrelease`.
    fn kernel() -> Option<(u32, u32)> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    #[test]
    fn memories_are_reset_through_the_page_map_where_the_kernel_has_it() {
        let (_, reset) = engine_with_reset(4, false).unwrap();
        match kernel() {
            Some(v) if v >= (6, 7) => assert_eq!(reset, MemoryReset::PageMap, "kernel {v:?}"),
            Some(v) => assert_eq!(reset, MemoryReset::Decommit, "kernel {v:?}"),
            // No Linux kernel release to read: no `PAGEMAP_SCAN` either.
            None => assert_eq!(reset, MemoryReset::Decommit),
        }
    }

    #[test]
    fn an_instance_never_sees_what_the_last_one_in_its_slot_wrote() {
        // A memory with an image (the data segment) and zero pages, 6 MiB: what an
        // instance wrote must be gone for the next, whether its page was restored in place
        // (image and zero pages within `KEEP_RESIDENT`) or returned to the kernel (past
        // it).
        let wasm = wat::parse_str(
            r#"(module
                (memory (export "memory") 96)
                (data (i32.const 0) "image")
                (data (i32.const 131072) "more")
                (func (export "swap") (param $at i32) (param $v i32) (result i32)
                    (local $old i32)
                    (local.set $old (i32.load (local.get $at)))
                    (i32.store (local.get $at) (local.get $v))
                    (local.get $old)))"#,
        )
        .unwrap();
        let (engine, _) = engine_with_reset(4, false).unwrap();
        let module = wasmtime::Module::new(&engine, &wasm).unwrap();
        let image = u32::from_le_bytes(*b"imag") as i32;
        let more = u32::from_le_bytes(*b"more") as i32;
        let addresses = [(0, image), (131_072, more), (70_000, 0), (5 << 20, 0)];
        let mut slots = std::collections::BTreeSet::new();
        for round in 0..20 {
            let mut store = wasmtime::Store::new(&engine, ());
            store.set_epoch_deadline(1); // nothing ticks the epoch here
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let swap = instance
                .get_typed_func::<(i32, i32), i32>(&mut store, "swap")
                .unwrap();
            let memory = instance.get_memory(&mut store, "memory").unwrap();
            slots.insert(memory.data_ptr(&store) as usize);
            for (at, original) in addresses {
                let old = swap.call(&mut store, (at, 0x5eed_0000 + round)).unwrap();
                assert_eq!(old, original, "round {round}, address {at}");
            }
        }
        // The same slot every round (the pool keeps the module's warm slot), so each round
        // ran in memory the previous one wrote.
        assert_eq!(slots.len(), 1, "{slots:x?}");
    }

    /// A component whose only export names it, so a test can tell which one it got.
    fn component(export: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component (core module $m) (core instance (instantiate $m)) (type $t (func)) (export "{export}" (type $t)))"#
        ))
        .unwrap()
    }

    fn exports(engine: &Engine, c: &Component) -> Vec<String> {
        c.component_type()
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The cached artifact `load_component` would look for for `wasm` in `dir`, replaced by
    /// the compiled form of `planted` (what someone able to write there could leave).
    fn plant(engine: &Engine, dir: &Path, wasm: &[u8], planted: &[u8]) {
        let _ = load_component(engine, wasm, Some(dir)).unwrap();
        let artifacts: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(artifacts.len(), 1, "{artifacts:?}");
        let bytes = Component::new(engine, planted)
            .unwrap()
            .serialize()
            .unwrap();
        std::fs::write(&artifacts[0], bytes).unwrap();
    }

    /// The cache directory is created private (0700) and its artifacts are loaded from it;
    /// a directory or an artifact others may write is not trusted: the component is
    /// compiled from its bytes instead, and nothing is written there.
    #[test]
    fn the_compiled_cache_is_used_only_where_no_one_else_can_write() {
        let engine = Engine::default();
        let (real, planted) = (component("real"), component("planted"));

        let dir = scratch("private").join("nested");
        let c = load_component(&engine, &real, Some(&dir)).unwrap();
        assert_eq!(exports(&engine, &c), ["real"]);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // The artifact is this user's alone whatever the umask (a group-writable one would
        // be refused at the next start).
        let artifact_mode = |dir: &Path| {
            let entry = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap();
            entry.metadata().unwrap().permissions().mode() & 0o777
        };
        assert_eq!(artifact_mode(&dir), 0o600);
        // A private cache is trusted: what is stored under the component's name is loaded.
        plant(&engine, &dir, &real, &planted);
        let c = load_component(&engine, &real, Some(&dir)).unwrap();
        assert_eq!(exports(&engine, &c), ["planted"]);
        // The same artifact, writable by others: not loaded.
        let artifact = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o666)).unwrap();
        let c = load_component(&engine, &real, Some(&dir)).unwrap();
        assert_eq!(exports(&engine, &c), ["real"]);
        // ... and replaced by a private one of its own compiling.
        assert_eq!(artifact_mode(&dir), 0o600);

        // A directory others may write: nothing is loaded from it, nothing written to it.
        let shared = scratch("shared");
        std::fs::create_dir_all(&shared).unwrap();
        plant(&engine, &shared, &real, &planted);
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let c = load_component(&engine, &real, Some(&shared)).unwrap();
        assert_eq!(exports(&engine, &c), ["real"]);
        let other = component("other");
        load_component(&engine, &other, Some(&shared)).unwrap();
        assert_eq!(
            std::fs::read_dir(&shared).unwrap().count(),
            1,
            "written into a shared dir"
        );

        let _ = std::fs::remove_dir_all(scratch("private"));
        let _ = std::fs::remove_dir_all(&shared);
    }
}
