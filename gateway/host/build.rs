//! Builds the gateway component (`gateway/component`, target `wasm32-wasip2`) so that the
//! host can embed it: nobody builds the component by hand. The nested cargo uses its own
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
        "gateway/core/src",
        "gateway/core/Cargo.toml",
        "wit",
        "gateway/host/build_wasm.rs",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let built = target_dir.join("wasm32-wasip2/release/portcullis_component.wasm");
    let dest = out_dir.join("portcullis_component.wasm");
    // Under clippy (a check build) the embedded bytes are never run: reuse a component that
    // an earlier build produced instead of compiling it again in a second environment.
    if std::env::var_os("CLIPPY_ARGS").is_some() && built.exists() {
        std::fs::copy(&built, &dest).expect("copy the component");
        return;
    }
    build_wasm(&root, &["portcullis-component"]);
    std::fs::copy(&built, &dest).expect("copy the component");
}
