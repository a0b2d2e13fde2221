//! Pre-initialization of a gateway component (a Wizer-style snapshot): it is instantiated
//! once, given the configuration snapshot, and runs its `wizer-initialize` export, which
//! restores the configuration (and, in a bundle, builds the key store and the
//! verified-token seal). Its memory and globals are then written back into the component as
//! data, so every instance starts with the configuration restored instead of restoring it
//! per request. Bundles are pre-initialized when they are built (`portcullis bundle`), the
//! component engine's gateway when `serve` starts and at every reload.
//!
//! The instance runs with WASI's clocks, random numbers and stderr, outbound requests refused, a
//! throwaway key-value store, and every other import (the host services) trapping: an
//! initializer cannot reach the network, the shared state or the host.

use anyhow::Context as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Instance, Lift, Linker, WasmList};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::state::keyvalue::{self, KeyValue, KeyValueHost};
use crate::wasm::WasiRequest;
use wasmtime_wizer::ComponentInstanceState;
use wasmtime_wizer::Wizer;

/// The initializing instance's context: WASI without files or sockets (stderr only, where
/// a failed initializer says why), `wasi:http` refusing every request, and a key-value
/// store of its own, dropped after.
struct InitCtx {
    io: WasiRequest<Refuse>,
    keyvalue: KeyValueHost,
}

impl WasiView for InitCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.io.wasi()
    }
}

impl WasiHttpView for InitCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.io.http()
    }
}

/// A seed of the initializer's random numbers (Rust's hash-map keys, for one) for a bundle:
/// a digest of the configuration snapshot, so that bundling the same configuration twice
/// gives the same bytes (reproducible bundles). The snapshot carries the configuration's
/// secrets (the audit key among them), so the seed is as secret as the bundle itself.
pub fn reproducible_seed(snapshot: &[u8]) -> [u8; 32] {
    let mut seed = [0u8; 32];
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &[b"portcullis pre-initialization\0".as_slice(), snapshot].concat(),
    );
    seed.copy_from_slice(digest.as_ref());
    seed
}

/// Outbound requests during initialization: refused (an initializer does not fetch).
struct Refuse;

type ResponseFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for Refuse {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, ResponseFuture), HttpError>> + Send,
    > {
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

/// Runs `component`'s `wizer-initialize` export with `snapshot` answering the `snapshot`
/// function of its imported `interface` (`portcullis:bundle/embedded` for the bundle's
/// gateway, `portcullis:gateway/config` for the component engine's), its random numbers
/// drawn from `seed`, and returns the component rewritten to start in the state it left.
/// The instrumented component (which holds no configuration) is compiled once into
/// `cache_dir` when one is given.
pub async fn pre_initialize(
    component: &[u8],
    snapshot: &[u8],
    interface: &str,
    seed: [u8; 32],
    cache_dir: Option<&Path>,
) -> anyhow::Result<Vec<u8>> {
    let what = || format!("pre-initialize the component importing {interface}");
    let mut wizer = Wizer::new();
    // Removing the export leaves the component lifting a core function that is gone
    // (wasmtime-wizer 48 writes an invalid component): keep it. Calling it again does
    // nothing; the bundle exports only the request handler, and the component engine's
    // host never calls it.
    wizer.keep_init_func(true);
    let (cx, instrumented) = wizer
        .instrument_component(component)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(what)?;
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        // The wide-arithmetic gateway uses 128-bit multiplies.
        .wasm_wide_arithmetic(true);
    let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let instrumented =
        crate::wasm::load_component(&engine, &instrumented, cache_dir).with_context(what)?;
    let throwaway = Arc::new(KeyValue {
        store: Arc::new(crate::state::Store::memory(64)),
        retention: Duration::from_secs(1),
    });
    let mut store = Store::new(
        &engine,
        InitCtx {
            io: WasiRequest::seeded(Refuse, seed),
            keyvalue: KeyValueHost::new(throwaway),
        },
    );
    let mut linker: Linker<InitCtx> = Linker::new(&engine);
    let snapshot = snapshot.to_vec();
    let linked = (|| -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        keyvalue::add_to_linker(&mut linker, |s: &mut InitCtx| &mut s.keyvalue)?;
        linker.instance(interface)?.func_wrap(
            "snapshot",
            move |_, (): ()| -> wasmtime::Result<(Vec<u8>,)> { Ok((snapshot.clone(),)) },
        )?;
        trap_host_services(&mut linker, &engine, &instrumented, interface)
    })();
    linked
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(what)?;
    let instance = linker
        .instantiate_async(&mut store, &instrumented)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(what)?;
    let init = instance
        .get_typed_func::<(), ()>(&mut store, wizer.get_init_func())
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(what)?;
    init.call_async(&mut store, ())
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("{}: the initializer failed", what()))?;
    let mut state = Instantiated {
        store: &mut store,
        instance,
        failed: None,
    };
    let wizened = wizer
        .snapshot_component(&cx, &mut state)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(what)?;
    if let Some(e) = state.failed {
        anyhow::bail!("{}: reading the initialized instance: {e}", what());
    }
    Ok(wizened)
}

/// Links every function of the component's `portcullis:*` imports but `snapshot` of
/// `answered` (the host services) to a trap: an initializer never calls the host.
fn trap_host_services(
    linker: &mut Linker<InitCtx>,
    engine: &Engine,
    component: &Component,
    answered: &str,
) -> wasmtime::Result<()> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if !name.starts_with("portcullis:") {
            continue;
        }
        let mut linked = linker.instance(name)?;
        for (func, item) in instance.exports(engine) {
            if !matches!(item.ty, ComponentItem::ComponentFunc(_))
                || (name == answered && func == "snapshot")
            {
                continue;
            }
            let called = format!("{name}#{func}");
            linked.func_new(func, move |_, _, _, _| {
                wasmtime::bail!("{called} was called while pre-initializing")
            })?;
        }
    }
    Ok(())
}

/// The initialized instance, read by the snapshot through the instrumentation's exports.
struct Instantiated<'a> {
    store: &'a mut Store<InitCtx>,
    instance: Instance,
    /// The first read that failed (the snapshot is then discarded).
    failed: Option<String>,
}

impl Instantiated<'_> {
    /// Calls the instrumentation's `func` of exported `instance`; if that fails, records
    /// why (the snapshot is discarded) and gives `fallback` so the snapshot can finish.
    async fn call<R: Lift + Send + Sync + 'static, O>(
        &mut self,
        instance: &str,
        func: &str,
        read: impl FnOnce(&mut Store<InitCtx>, R) -> O,
        fallback: O,
    ) -> O {
        let called = async {
            let (_, exported) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or("no such instance export")?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&exported), func)
                .ok_or("no such function export")?;
            let f = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)
                .map_err(|e| e.to_string())?;
            f.call_async(&mut *self.store, ())
                .await
                .map(|(r,)| r)
                .map_err(|e| e.to_string())
        };
        match called.await {
            Ok(r) => read(self.store, r),
            Err(e) => {
                self.failed
                    .get_or_insert_with(|| format!("{instance}#{func}: {e}"));
                fallback
            }
        }
    }
}

impl ComponentInstanceState for Instantiated<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let mut contents = Some(contents);
        self.call(
            instance,
            func,
            |store, list: WasmList<u8>| {
                if let Some(c) = contents.take() {
                    c(list.as_le_slice(&*store));
                }
            },
            (),
        )
        .await;
        if let Some(c) = contents {
            c(&[]);
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, r| r, 0).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, r| r, 0).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, r: f32| r.to_bits(), 0).await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, r: f64| r.to_bits(), 0).await
    }
}
