//! Builds the gateway component (`gateway/component`, target `wasm32-wasip2`) so that the
//! host can embed it: nobody builds the component by hand. The nested cargo uses its own
//! target directory (the outer build holds the lock on the main one).
#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "portcullis-component",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    // Settings meant for the outer (native) build must not leak into the wasm build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the gateway component");
    if !status.success() {
        panic!(
            "building the gateway component failed ({status}); is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`"
        );
    }
    std::fs::copy(&built, &dest).expect("copy the component");
}
