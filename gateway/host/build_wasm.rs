// Shared by build scripts (`include!`d): builds workspace packages for `wasm32-wasip2` with a
// nested cargo in its own target directory (the outer build holds the lock on the main one).

/// The terminal the outer `cargo` runs in, when there is one: a build script's own output is
/// captured until it ends, so progress of the nested build goes here (`None` in CI).
fn terminal() -> Option<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open("/dev/tty").ok()
}

/// Writes one progress line to the terminal, formatted as cargo's own status lines.
fn say(tty: &mut Option<std::fs::File>, verb: &str, what: &str) {
    use std::io::Write;
    if let Some(t) = tty {
        // `\r` and a clear-line first: cargo's progress bar is drawn on the current line.
        let _ = writeln!(t, "\r\x1b[2K\x1b[1;32m{verb:>12}\x1b[0m {what}");
    }
}

/// Adds `target` to the active rustup toolchain when its standard library is missing (the
/// pinned toolchain is often installed without the wasm targets); a no-op without rustup.
fn ensure_target(target: &str, tty: &mut Option<std::fs::File>) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = std::process::Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.is_some_and(|d| d.is_dir()) {
        return;
    }
    say(tty, "Adding", &format!("the {target} target (rustup target add {target})"));
    let mut cmd = std::process::Command::new("rustup");
    cmd.args(["target", "add", target]);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        // Without rustup (or offline) the nested build below fails with the usual hint.
        Ok(s) => println!("cargo:warning=`rustup target add {target}` failed ({s})"),
        Err(e) => println!("cargo:warning=could not run rustup to add {target}: {e}"),
    }
}

/// The cargo profile of the wasm builds (`[profile.edge]` in the workspace manifest: sized
/// for the edge, signature checks at full speed).
const WASM_PROFILE: &str = "edge";

/// Where a wasm build into `target_dir` puts its `.wasm` files.
#[allow(dead_code)]
fn wasm_out(target_dir: &std::path::Path) -> std::path::PathBuf {
    target_dir.join("wasm32-wasip2").join(WASM_PROFILE)
}

/// Builds `packages` with the edge profile for wasm32-wasip2 into `<root>/target/component`;
/// returns the directory holding the `.wasm` files. On a terminal, the nested cargo's own
/// progress is shown (it would otherwise be minutes of silence on a first build).
fn build_wasm(root: &std::path::Path, packages: &[&str]) -> std::path::PathBuf {
    build_wasm_with(root, packages, "target/component", None)
}

/// As [`build_wasm`], into `target_dir` (relative to `root`) with `features` as the wasm
/// target features when given (`+wide-arithmetic`: a second build of the bundle's gateway for
/// runtimes with 128-bit multiplies).
#[allow(dead_code)]
fn build_wasm_with(
    root: &std::path::Path,
    packages: &[&str],
    target_dir: &str,
    features: Option<&str>,
) -> std::path::PathBuf {
    let mut tty = terminal();
    ensure_target("wasm32-wasip2", &mut tty);
    let target_dir = root.join(target_dir);
    let out = wasm_out(&target_dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--profile", WASM_PROFILE, "--locked"]);
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
    if let Some(features) = features {
        cmd.env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("-Ctarget-feature={features}"),
        );
    }
    if let Some(t) = tty.as_ref().and_then(|t| t.try_clone().ok()) {
        say(
            &mut tty,
            "Building",
            &format!(
                "{} for wasm32-wasip2 (nested cargo, {}{})",
                packages.join(", "),
                target_dir.strip_prefix(root).unwrap_or(&target_dir).display(),
                features.map(|f| format!(", {f}")).unwrap_or_default()
            ),
        );
        cmd.stderr(t).env("CARGO_TERM_PROGRESS_WHEN", "never");
    }
    let status = cmd.status().expect("run cargo for wasm32-wasip2");
    if !status.success() {
        panic!(
            "building {packages:?} for wasm32-wasip2 failed ({status}); is the target installed? `rustup target add wasm32-wasip2`"
        );
    }
    out
}
