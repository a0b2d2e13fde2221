//! `portcullis bundle` composes the bundle's gateway (the gateway with portable host
//! services compiled in), the plugin services and the configuration into one component that imports only `wasi:*`; remote key sets are
//! fetched (from a real key-set server on 127.0.0.1) and baked in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::config::KeySource;
use portcullis_host::tools::bundle::{self, Section};
use portcullis_tests::net::KeyServer;
use portcullis_tests::*;

/// Runs `f` to its end on a runtime of its own.
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config(keys: &KeyServer) -> String {
    format!(
        r#"
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_uri = "{}/jwks.json"
insecure_http_jwks = true
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:9"]

[residency]
missing = "eu"
anonymous = "eu"

[[route]]
path = "/"

[audit]
subject_key_file = "audit.key"
"#,
        keys.server.url()
    )
}

#[test]
fn the_bundle_imports_only_wasi_and_carries_the_baked_key_sets() {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let files = portcullis_core::MapFiles::default().with("audit.key", b64(&AUDIT_KEY));
    let mut cfg = portcullis_core::config::load(&config(&keys), "edge.toml", &files).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let baked = rt.block_on(bundle::bake_keys(&mut cfg)).unwrap();
    assert_eq!(baked, ["main"]);
    assert!(matches!(cfg.issuers[0].keys, KeySource::Static(_)));

    let b = rt.block_on(bundle::compose(&cfg, &[])).unwrap();
    assert!(
        b.imports.iter().all(|i| i.starts_with("wasi:")),
        "{:?}",
        b.imports
    );
    assert!(
        b.imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler")),
        "{:?}",
        b.imports
    );
    let exports = bundle::component_names(&b.wasm, Section::Exports).unwrap();
    assert!(
        exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler")),
        "{exports:?}"
    );
    // One copy of the core: the bundle's gateway has the host services compiled in and
    // imports, beside wasi:*, only the configuration and the risk chain, which the
    // composition satisfied.
    let gateway_imports = bundle::component_names(bundle::BUNDLE_GATEWAY, Section::Imports)
        .unwrap()
        .into_iter()
        .filter(|i| !i.starts_with("wasi:"))
        .collect::<Vec<_>>();
    assert_eq!(
        gateway_imports,
        [
            "portcullis:bundle/embedded@0.1.0",
            "portcullis:gateway/risk@0.1.0"
        ]
    );
    println!(
        "bundle {} KB, {} imports: {:?}",
        b.wasm.len() / 1024,
        b.imports.len(),
        b.imports
    );
}

#[test]
fn an_unreachable_key_set_fails_the_bundle_with_a_clear_error() {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let text = config(&keys);
    drop(keys);
    let files = portcullis_core::MapFiles::default().with("audit.key", b64(&AUDIT_KEY));
    let mut cfg = portcullis_core::config::load(&text, "edge.toml", &files).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(bundle::bake_keys(&mut cfg)).unwrap_err();
    assert!(format!("{err:#}").contains("/jwks.json"), "{err:#}");
}

/// Spin runs the bundle (`edge-config/spin.toml`): it must import only interfaces Spin 3
/// provides — wasi:http 0.2, wasi:keyvalue 0.2.0-draft2 (`store`, `atomics`) and WASI 0.2
/// `cli`/`io`/`clocks`/`random` — and the manifest must give it the key-value store it
/// opens and build it with `portcullis bundle`.
#[test]
fn spin_runs_the_bundle_which_imports_only_what_spin_provides() {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let files = portcullis_core::MapFiles::default().with("audit.key", b64(&AUDIT_KEY));
    let cfg = portcullis_core::config::load(&config(&keys), "edge.toml", &files).unwrap();
    let b = block_on(bundle::compose(&cfg, &[])).unwrap();
    let spin_provides = [
        "wasi:http/types@0.2.",
        "wasi:http/outgoing-handler@0.2.",
        "wasi:keyvalue/store@0.2.0-draft2",
        "wasi:keyvalue/atomics@0.2.0-draft2",
        "wasi:cli/",
        "wasi:io/",
        "wasi:clocks/",
        "wasi:random/",
    ];
    let foreign: Vec<&String> = b
        .imports
        .iter()
        .filter(|i| !spin_provides.iter().any(|p| i.starts_with(p)))
        .collect();
    assert!(foreign.is_empty(), "{foreign:?} of {:?}", b.imports);
    assert!(
        b.imports
            .iter()
            .any(|i| i.starts_with("wasi:keyvalue/atomics@0.2.0-draft2")),
        "{:?}",
        b.imports
    );

    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(repo_root().join("edge-config/spin.toml")).unwrap(),
    )
    .unwrap();
    let component = &manifest["component"]["portcullis"];
    assert_eq!(component["source"].as_str(), Some("edge.wasm"));
    let stores: Vec<&str> = component["key_value_stores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    // The store the bundle opens (`gateway/kv`: Spin's default).
    assert_eq!(stores, ["default"]);
    let build = component["build"]["command"].as_str().unwrap();
    assert!(build.starts_with("portcullis bundle "), "{build}");
    assert!(
        manifest.get("variables").is_none(),
        "the bundle reads no Spin variables"
    );
}

/// `portcullis bundle --wide-arithmetic` swaps in a gateway built with 128-bit multiplies:
/// an engine without the wide-arithmetic proposal refuses that bundle when loading it
/// (never a half-working instance), while the default bundle needs no proposal beyond the
/// component model and loads there.
#[test]
fn a_wide_arithmetic_bundle_loads_only_where_the_proposal_is_enabled() {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let files = portcullis_core::MapFiles::default().with("audit.key", b64(&AUDIT_KEY));
    let cfg = portcullis_core::config::load(&config(&keys), "edge.toml", &files).unwrap();
    let plain = block_on(bundle::compose(&cfg, &[])).unwrap();
    let wide = block_on(bundle::compose_with(
        bundle::BUNDLE_GATEWAY_WIDE,
        &cfg,
        &[],
        bundle::PreInit::Yes,
    ))
    .unwrap();
    assert_ne!(bundle::BUNDLE_GATEWAY, bundle::BUNDLE_GATEWAY_WIDE);

    let mut without = wasmtime::Config::new();
    without
        .wasm_component_model(true)
        .wasm_wide_arithmetic(false);
    let without = wasmtime::Engine::new(&without).unwrap();
    wasmtime::component::Component::new(&without, &plain.wasm)
        .expect("the default bundle needs no wide arithmetic");
    let Err(refused) = wasmtime::component::Component::new(&without, &wide.wasm) else {
        panic!("a wide-arithmetic bundle loaded without the proposal");
    };
    assert!(
        format!("{refused:#}").contains("wide arithmetic")
            || format!("{refused:#}").contains("wide-arithmetic"),
        "{refused:#}"
    );

    // serve-wasm's engine enables it.
    let with = portcullis_host::wasm::engine(4, false).unwrap();
    wasmtime::component::Component::new(&with, &wide.wasm).unwrap();
}

/// Pre-initialization fails closed: a component whose configuration does not restore traps
/// in its initializer, and the bundle is refused with the reason instead of being built to
/// answer every request with an error.
#[test]
fn a_configuration_that_does_not_restore_refuses_the_bundle() {
    use portcullis_host::serve::preinit::pre_initialize;
    for (component, interface) in [
        (
            portcullis_host::wasm::COMPONENT,
            "portcullis:gateway/config@0.1.0",
        ),
        (bundle::BUNDLE_GATEWAY, "portcullis:bundle/embedded@0.1.0"),
    ] {
        let Err(refused) = block_on(pre_initialize(
            component,
            b"not a snapshot",
            interface,
            [7; 32],
            None,
        )) else {
            panic!("{interface}: pre-initialized with a configuration that does not restore");
        };
        let text = format!("{refused:#}");
        assert!(text.contains("the initializer failed"), "{text}");
    }
    // The same components with a configuration that restores.
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let files = portcullis_core::MapFiles::default().with("audit.key", b64(&AUDIT_KEY));
    let cfg = portcullis_core::config::load(&config(&keys), "edge.toml", &files).unwrap();
    for (component, interface) in [
        (
            portcullis_host::wasm::COMPONENT,
            "portcullis:gateway/config@0.1.0",
        ),
        (bundle::BUNDLE_GATEWAY, "portcullis:bundle/embedded@0.1.0"),
    ] {
        block_on(pre_initialize(
            component,
            &cfg.to_snapshot(),
            interface,
            [7; 32],
            None,
        ))
        .unwrap();
    }
}

/// A bundle without plugins closes the gateway's risk import with the generated risk-end
/// stub instead of the plugin services: it exports exactly `portcullis:gateway/risk`,
/// imports nothing, and every function of it traps (the gateway calls none without
/// plugins); a bundle with plugins ends its chain in the plugin services, which answer.
#[test]
fn a_bundle_without_plugins_ends_its_risk_chain_in_a_trapping_stub() {
    assert_eq!(
        bundle::component_names(bundle::RISK_END, Section::Exports).unwrap(),
        ["portcullis:gateway/risk@0.1.0"]
    );
    assert!(
        bundle::component_names(bundle::RISK_END, Section::Imports)
            .unwrap()
            .is_empty()
    );
    let engine = wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
    let component = wasmtime::component::Component::new(&engine, bundle::RISK_END).unwrap();
    let linker = wasmtime::component::Linker::<()>::new(&engine);
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = block_on(linker.instantiate_async(&mut store, &component)).unwrap();
    let (_, risk) = instance
        .get_export(&mut store, None, "portcullis:gateway/risk@0.1.0")
        .unwrap();
    let (_, observe) = instance
        .get_export(&mut store, Some(&risk), "observe")
        .unwrap();
    let observe = instance
        .get_typed_func::<(u16,), ()>(&mut store, observe)
        .unwrap();
    let trapped = block_on(observe.call_async(&mut store, (200,)));
    assert!(trapped.is_err(), "the stub answered instead of trapping");
    // Several times smaller than the services it stands in for.
    assert!(
        bundle::RISK_END.len() * 50 < bundle::PLUGIN_SERVICES.len(),
        "{} vs {} bytes",
        bundle::RISK_END.len(),
        bundle::PLUGIN_SERVICES.len()
    );
}
