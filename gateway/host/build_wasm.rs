// Shared by build scripts (`include!`d): builds workspace packages for `wasm32-wasip2` with a
// nested cargo in its own target directory (the outer build holds the lock on the main one).

/// Builds `packages` in release mode for wasm32-wasip2 into `<root>/target/component`;
/// returns the directory holding the `.wasm` files.
fn build_wasm(root: &std::path::Path, packages: &[&str]) -> std::path::PathBuf {
    let target_dir = root.join("target/component");
    let out = target_dir.join("wasm32-wasip2/release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(root).args(["build", "--release", "--locked"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(["--target", "wasm32-wasip2", "--target-dir"])
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
    let status = cmd.status().expect("run cargo for wasm32-wasip2");
    if !status.success() {
        panic!(
            "building {packages:?} for wasm32-wasip2 failed ({status}); is the target installed? `rustup target add wasm32-wasip2`"
        );
    }
    out
}
