//! The test build reuses what the README's first command compiled: `cargo run -p portcullis`
//! and `cargo test --workspace` must resolve the same features for everything under wasmtime,
//! cranelift, rustls and redis, or every developer and every CI run compiles them twice
//! (issue 25: ~6 minutes on 2 cores). A dev-dependency that turns on a feature of a crate
//! under them breaks this; the host's feature-unifying dependencies (gateway/host/Cargo.toml)
//! are the fix.
//!
//! Compares cargo's unit graphs (`--unit-graph`, unstable, so `RUSTC_BOOTSTRAP=1` for these
//! two metadata-only invocations; nothing is built).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use portcullis_core::internal::fnv1a;
use portcullis_tests::repo_root;
use serde_json::Value;

/// The unit graph of `cargo <args>`.
fn unit_graph(args: &[&str]) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(args)
        .args(["--locked", "--unit-graph", "-Z", "unstable-options"])
        // Never the lock of the target directory the running `cargo test` may hold.
        .arg("--target-dir")
        .arg(repo_root().join("target/unit-graph"))
        .env("RUSTC_BOOTSTRAP", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?} --unit-graph failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// For every library unit, a string naming it with its features, its profile settings (not
/// the profile's name, which cargo does not hash) and, recursively, its dependencies: two
/// units with the same string are one artifact.
fn signatures(graph: &Value) -> HashMap<String, BTreeSet<String>> {
    let units = graph["units"].as_array().unwrap();
    let mut memo: Vec<Option<String>> = vec![None; units.len()];
    fn sig(i: usize, units: &[Value], memo: &mut [Option<String>]) -> String {
        if let Some(s) = &memo[i] {
            return s.clone();
        }
        let u = &units[i];
        let mut profile = u["profile"].clone();
        profile.as_object_mut().unwrap().remove("name");
        let mut deps: Vec<String> = u["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| sig(d["index"].as_u64().unwrap() as usize, units, memo))
            .collect();
        deps.sort();
        let s = format!(
            "{}|{}|{}|{}|{}|[{}]",
            name(u),
            u["mode"],
            u["target"]["kind"],
            u["features"],
            profile,
            deps.join(",")
        );
        // A digest keeps the memo small (the strings nest every dependency's).
        let digest = format!("{}#{:x}", name(u), fnv1a(&s));
        memo[i] = Some(digest.clone());
        digest
    }
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (i, u) in units.iter().enumerate() {
        let kind = &u["target"]["kind"];
        if u["mode"] == "build" && *kind == serde_json::json!(["lib"]) {
            let s = sig(i, units, &mut memo);
            out.entry(name(u)).or_default().insert(s);
        }
    }
    out
}

/// `name@version` of a unit.
fn name(u: &Value) -> String {
    let id = u["pkg_id"].as_str().unwrap();
    id.rsplit('#').next().unwrap().to_owned()
}

#[test]
fn the_test_build_reuses_wasmtime_rustls_and_redis_from_the_first_command() {
    let run = signatures(&unit_graph(&["build", "-p", "portcullis"]));
    let test = signatures(&unit_graph(&["test", "--workspace", "--no-run"]));
    let heavy = [
        "cranelift-codegen@",
        "wasmtime@",
        "wasmtime-environ@",
        "wasmtime-wasi@",
        "wasmtime-wasi-http@",
        "rustls@",
        "redis@",
        "tokio@",
        "hyper@",
    ];
    let mut checked = 0;
    let mut differing = Vec::new();
    for (pkg, sigs) in &run {
        if !heavy.iter().any(|h| pkg.starts_with(h)) {
            continue;
        }
        checked += 1;
        let reused = test
            .get(pkg)
            .is_some_and(|t| sigs.iter().all(|s| t.contains(s)));
        if !reused {
            differing.push(pkg.clone());
        }
    }
    assert_eq!(
        checked,
        heavy.len(),
        "every heavy crate is in the host's build"
    );
    assert!(
        differing.is_empty(),
        "cargo test --workspace would compile these a second time (their features or those of \
         a dependency differ from `cargo build -p portcullis`): {differing:?}"
    );
}
