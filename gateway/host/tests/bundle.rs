//! `portcullis bundle` composes the gateway component, the portable providers and the
//! configuration into one component that imports only `wasi:*`; remote key sets are
//! fetched (from a real key-set server on 127.0.0.1) and baked in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::config::KeySource;
use portcullis_host::bundle::{self, Section};
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

    let b = bundle::compose(portcullis_host::runtime::COMPONENT, &cfg, &[]).unwrap();
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
        bundle::component_names(portcullis_host::runtime::COMPONENT, Section::Imports).unwrap();
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
