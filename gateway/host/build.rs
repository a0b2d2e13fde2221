//! Builds the gateway component (`gateway/component`) and the parts of edge bundles (the
//! bundle's gateway `gateway/bundle-gateway`, the plugins' services
//! `gateway/plugin-services`, the plugin link `gateway/plugin-link`), target
//! `wasm32-wasip2`, so that the host can embed them: nobody builds them by hand. The nested cargo uses its own
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
        "gateway/bundle-gateway",
        "gateway/plugin-services",
        "gateway/kv",
        "gateway/wasi-handler",
        "gateway/plugin-link",
        "gateway/driver",
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
    println!("cargo:rustc-env=PORTCULLIS_GIT_REV={}", git_revision(&root));
    let built = wasm_out(&target_dir);
    let outputs = [
        "portcullis_component.wasm",
        "portcullis_bundle_gateway.wasm",
        "portcullis_plugin_services.wasm",
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
                "portcullis-bundle-gateway",
                "portcullis-plugin-services",
                "portcullis-plugin-link",
            ],
        );
    }
    for file in outputs {
        std::fs::copy(built.join(file), out_dir.join(file)).expect("copy a component");
    }
    // The bundle's gateway again with 128-bit multiplies (`portcullis bundle
    // --wide-arithmetic`): signature checks in the bundle run about twice as fast where the
    // runtime supports the wide-arithmetic proposal (serve-wasm does).
    let wide = wasm_out(&root.join("target/component-wide")).join("portcullis_bundle_gateway.wasm");
    if !(std::env::var_os("CLIPPY_ARGS").is_some() && wide.exists()) {
        build_wasm_with(
            &root,
            &["portcullis-bundle-gateway"],
            "target/component-wide",
            Some("+wide-arithmetic"),
        );
    }
    std::fs::copy(&wide, out_dir.join("portcullis_bundle_gateway_wide.wasm"))
        .expect("copy the wide-arithmetic bundle gateway");
    std::fs::write(out_dir.join("portcullis_risk_end.wasm"), risk_end(&root))
        .expect("write the risk chain's end");
}

/// The end of the risk chain of a bundle without plugins (`portcullis:bundle/risk-end`):
/// a component exporting `portcullis:gateway/risk` whose every function traps. The bundle's
/// gateway asks no chain when there are no plugins; a few hundred bytes where the plugin
/// services would add a hundred kilobytes.
fn risk_end(root: &std::path::Path) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(root.join("wit/bundle"))
        .expect("parse wit/bundle");
    let world = resolve
        .select_world(&[package], Some("risk-end"))
        .expect("the risk-end world");
    let mangling = wit_parser::ManglingAndAbi::Legacy(wit_parser::LiftLowerAbi::Sync);
    let mut module = wit_component::dummy_module(&resolve, world, mangling);
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .expect("embed the risk-end world");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("the risk-end module")
        .validate(true)
        .encode()
        .expect("encode the risk-end component")
}

/// The commit this binary is built from: `PORTCULLIS_GIT_REV` when set (a build without the
/// repository, such as the Docker image, passes it in), else `git rev-parse`, else
/// `unknown`. The build reruns when `HEAD` moves.
fn git_revision(root: &std::path::Path) -> String {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_GIT_REV");
    if let Ok(rev) = std::env::var("PORTCULLIS_GIT_REV")
        && !rev.trim().is_empty()
    {
        return rev.trim().to_owned();
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    // HEAD and the branch it points at (a commit moves the branch's ref, or packed-refs).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = PathBuf::from(dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("packed-refs").display()
        );
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", dir.join(head).display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}
