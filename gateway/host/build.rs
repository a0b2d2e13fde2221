//! Builds the gateway component (`gateway/component`) and the portable providers of edge
//! bundles (`gateway/providers`), target `wasm32-wasip2`, so that the host can embed them:
//! nobody builds them by hand. The nested cargo uses its own
//! target directory (the outer build holds the lock on the main one).
#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

include!("build_wasm.rs");

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target_dir = root.join("target/component");
    for watched in [
        "gateway/component",
        "gateway/providers",
        "gateway/plugin-link",
        "gateway/core/src",
        "gateway/core/Cargo.toml",
        "wit",
        "gateway/host/build_wasm.rs",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // `portcullis --version` and the build-info metric name the WIT package and the
    // wasmtime release this binary was built with.
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let wasmtime = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("unknown");
    println!("cargo:rustc-env=PORTCULLIS_WASMTIME_VERSION={wasmtime}");
    let wit = std::fs::read_to_string(root.join("wit/gateway/gateway.wit")).expect("gateway.wit");
    let package = wit
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .and_then(|p| p.strip_suffix(';'))
        .unwrap_or("unknown");
    println!("cargo:rustc-env=PORTCULLIS_WIT_PACKAGE={package}");
    let built = target_dir.join("wasm32-wasip2/release");
    let outputs = [
        "portcullis_component.wasm",
        "portcullis_providers.wasm",
        "portcullis_plugin_link.wasm",
    ];
    // Under clippy (a check build) the embedded bytes are never run: reuse components that
    // an earlier build produced instead of compiling them again in a second environment.
    let reusable = outputs.iter().all(|f| built.join(f).exists());
    if !(std::env::var_os("CLIPPY_ARGS").is_some() && reusable) {
        build_wasm(
            &root,
            &[
                "portcullis-component",
                "portcullis-providers",
                "portcullis-plugin-link",
            ],
        );
    }
    for file in outputs {
        std::fs::copy(built.join(file), out_dir.join(file)).expect("copy a component");
    }
}
