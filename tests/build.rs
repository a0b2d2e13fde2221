//! Builds the example plugins and the test-fixture plugins for `wasm32-wasip2`, so the
//! end-to-end tests run real plugin components; their directory is `PORTCULLIS_PLUGIN_DIR`.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

include!("../gateway/host/build_wasm.rs");

/// Every plugin the tests load.
const PLUGINS: [&str; 7] = [
    "impossible-travel",
    "credential-stuffing",
    "ip-reputation",
    "fixture-plugin-trivial",
    "fixture-plugin-faulty",
    "fixture-plugin-wrong-world",
    "fixture-plugin-0-1",
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("..");
    for watched in [
        "plugins",
        "tests/fixtures/plugins",
        "wit/plugin",
        "Cargo.lock",
        "gateway/host/build_wasm.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = wasm_out(&root.join("target/component"));
    // Under clippy (a check build) nothing runs: reuse what an earlier build produced.
    let built = PLUGINS
        .iter()
        .all(|p| out.join(format!("{}.wasm", p.replace('-', "_"))).exists());
    let dir = if std::env::var_os("CLIPPY_ARGS").is_some() && built {
        out
    } else {
        build_wasm(&root, &PLUGINS)
    };
    println!("cargo:rustc-env=PORTCULLIS_PLUGIN_DIR={}", dir.display());
}
