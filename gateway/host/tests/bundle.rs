//! `portcullis bundle` composes the gateway component, the portable providers and the
//! configuration into one component that imports only `wasi:*`; remote key sets are
//! fetched (from a real key-set server on 127.0.0.1) and baked in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::config::KeySource;
use portcullis_host::tools::bundle::{self, Section};
use portcullis_tests::net::KeyServer;
use portcullis_tests::*;

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

    let b = bundle::compose(portcullis_host::wasm::COMPONENT, &cfg, &[]).unwrap();
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
    // The gateway component alone imports the host services: the bundle satisfied them.
    let gateway_imports =
        bundle::component_names(portcullis_host::wasm::COMPONENT, Section::Imports).unwrap();
    for service in bundle::SERVICES {
        assert!(
            gateway_imports
                .iter()
                .any(|i| i.starts_with(&format!("portcullis:gateway/{service}"))),
            "{gateway_imports:?}"
        );
    }
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

/// The Spin build (`gateway/spin`, spin-sdk 7) is a WASI 0.3 component that exports the
/// 0.3 HTTP handler and imports only WASI and Spin's own interfaces. No runtime here serves
/// Spin's imports, so this is what can be checked of it locally (its decisions are the
/// core's; the conformance suite runs the edge bundle in its place).
#[test]
fn the_spin_component_exports_the_wasi_0_3_handler_and_imports_only_wasi_and_spin() {
    let root = repo_root();
    let target = root.join("target/component");
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "portcullis-spin",
            "--target",
            "wasm32-wasip2",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = std::fs::read(target.join("wasm32-wasip2/release/portcullis_spin.wasm")).unwrap();
    let exports = bundle::component_names(&wasm, Section::Exports).unwrap();
    assert!(
        exports
            .iter()
            .any(|e| e.starts_with("wasi:http/handler@0.3")),
        "{exports:?}"
    );
    let imports = bundle::component_names(&wasm, Section::Imports).unwrap();
    let foreign: Vec<&String> = imports
        .iter()
        .filter(|i| {
            !(i.starts_with("wasi:") || i.starts_with("spin:") || i.starts_with("fermyon:spin/"))
        })
        .collect();
    assert!(foreign.is_empty(), "{foreign:?} of {imports:?}");
    for needed in ["key-value", "variables"] {
        assert!(
            imports.iter().any(|i| i.contains(needed)),
            "Spin {needed} is used: {imports:?}"
        );
    }
    println!(
        "spin component: {} KB, imports {imports:?}",
        wasm.len().div_ceil(1024)
    );
}
