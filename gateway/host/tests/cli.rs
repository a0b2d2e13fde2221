//! The `portcullis` command line: `check` and `token verify`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use portcullis_tests::net::KeyServer;
use portcullis_tests::*;
use serde_json::json;

fn portcullis(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_configurations() {
    for file in ["example.toml", "demo.toml"] {
        let path = repo_root().join("edge-config").join(file);
        let (ok, stdout, stderr) = portcullis(&["check", "--config", path.to_str().unwrap()]);
        assert!(ok, "{file}: {stderr}");
        assert!(stdout.contains(": ok ("), "{stdout}");
    }
}

#[test]
fn check_accepts_the_minimal_configuration_with_its_audit_key() {
    // minimal.toml names secrets/audit.key, which is not shipped: a user creates it first.
    let dir = std::env::temp_dir().join(format!("portcullis-cli-minimal-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::copy(
        repo_root().join("edge-config/minimal.toml"),
        dir.join("minimal.toml"),
    )
    .unwrap();
    let path = dir.join("minimal.toml");
    let (ok, _, stderr) = portcullis(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok && stderr.contains("secrets/audit.key"), "{stderr}");
    std::fs::write(dir.join("secrets/audit.key"), b64(&AUDIT_KEY)).unwrap();
    let (ok, stdout, stderr) = portcullis(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(": ok (1 issuer(s), 1 region(s), 1 route(s), 0 plugin(s))"),
        "{stdout}"
    );
}

#[test]
fn check_prints_every_problem_with_locations_and_fails() {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[[issuer]]\nname = \"x\"\nissuer = \"https://x\"\naudiences = []\nalgorithms = [\"none\"]\njwks_uri = \"http://x/jwks\"\n").unwrap();
    let (ok, _, stderr) = portcullis(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    let _ = std::fs::remove_dir_all(&dir);
    for needle in [
        "bad.toml:4:",
        "audiences` is empty",
        "bad.toml:5:",
        "algorithm `none`",
        "bad.toml:6:",
        "plain http",
        "no [region.NAME]",
        "problem(s) in the configuration",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn token_verify_explains_acceptance_and_rejection() {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let dir = std::env::temp_dir().join(format!("portcullis-cli-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    let config = format!(
        "[[issuer]]\nname = \"main\"\nissuer = \"{ISSUER}\"\njwks_uri = \"{}/jwks.json\"\ninsecure_http_jwks = true\naudiences = [\"{AUDIENCE}\"]\nalgorithms = [\"ES256\"]\n\n[region.eu]\njurisdiction = \"EU\"\nbackends = [\"http://127.0.0.1:9\"]\n\n[residency]\nmissing = \"eu\"\n\n[[route]]\npath = \"/api\"\nscopes_any = [\"orders:read\"]\n\n[audit]\nsubject_key_file = \"audit.key\"\n",
        keys.server.url()
    );
    let path = dir.join("gw.toml");
    std::fs::write(&path, config).unwrap();
    let p = path.to_str().unwrap();
    let good = TestIdp::shared().sign("ES256", live_claims(json!({"sub": "alice"})));
    let (ok, stdout, stderr) = portcullis(&["token", "verify", "--config", p, &good]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("accepted: issuer main") && stdout.contains("\"sub\":\"alice\""),
        "{stdout}"
    );
    let (ok, stdout, _) =
        portcullis(&["token", "verify", "--config", p, "--path", "/api/x", &good]);
    assert!(ok && stdout.contains("→ http://127.0.0.1:9"), "{stdout}");
    let expired = TestIdp::shared().sign("ES256", live_claims(json!({"exp": unix_now() - 600})));
    let (ok, stdout, _) = portcullis(&["token", "verify", "--config", p, &expired]);
    assert!(
        !ok && stdout.starts_with("rejected: token_expired"),
        "{stdout}"
    );
    let no_scope = TestIdp::shared().sign("ES256", live_claims(json!({"scope": "profile"})));
    let (ok, stdout, _) = portcullis(&[
        "token", "verify", "--config", p, "--path", "/api/x", &no_scope,
    ]);
    assert!(
        !ok && stdout.starts_with("rejected: 403 insufficient_scope"),
        "{stdout}"
    );

    // Exit codes tell a rejected token (1) from a configuration that does not load (3);
    // `-` reads the token from standard input; `PORTCULLIS_CONFIG` stands in for `--config`.
    let run = |args: &[&str], env: &[(&str, &str)], stdin: &str| {
        use std::io::Write as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(
        &["token", "verify", "-c", p, "-"],
        &[],
        &format!("{good}\n"),
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with("accepted: issuer main"), "{stdout}");
    let (code, stdout, _) = run(
        &["token", "verify", "-"],
        &[("PORTCULLIS_CONFIG", p)],
        &expired,
    );
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.starts_with("rejected: token_expired"), "{stdout}");
    let missing = dir.join("missing.toml");
    let (code, _, stderr) = run(
        &["token", "verify", "-c", missing.to_str().unwrap(), &good],
        &[],
        "",
    );
    assert_eq!(code, Some(3), "{stderr}");
    // A log filter that does not parse is an error, from `--log` and from `RUST_LOG`.
    let (code, _, stderr) = run(&["--log", "portcullis=loud", "check", "-c", p], &[], "");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("log filter"), "{stderr}");
    let (code, _, stderr) = run(&["check", "-c", p], &[("RUST_LOG", "portcullis=loud")], "");
    assert_eq!(code, Some(2), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_online_fetches_every_issuer_and_names_what_failed() {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let dir = std::env::temp_dir().join(format!("portcullis-cli-online-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    std::fs::write(dir.join("client.secret"), "secret").unwrap();
    std::fs::write(dir.join("session.key"), "5a".repeat(32)).unwrap();
    let base = keys.server.url();
    let issuer = |name: &str, url: &str| {
        format!(
            "[[issuer]]\nname = \"{name}\"\nissuer = \"{url}\"\ndiscovery = true\ninsecure_http_jwks = true\naudiences = [\"{AUDIENCE}\"]\nalgorithms = [\"ES256\"]\n\n"
        )
    };
    let config = format!(
        "{}[issuer.login]\nclient_id = \"gw\"\nclient_secret_file = \"client.secret\"\nredirect_uri = \"http://localhost:8080/_portcullis/callback\"\n\n{}[session]\n[[session.key]]\nid = \"k1\"\nfile = \"session.key\"\n\n[region.eu]\njurisdiction = \"EU\"\nbackends = [\"http://127.0.0.1:9\"]\n\n[residency]\nmissing = \"eu\"\n\n[[route]]\npath = \"/api\"\n\n[audit]\nsubject_key_file = \"audit.key\"\n",
        issuer("good", &base),
        // Port 1: nothing listens there.
        issuer("gone", "http://127.0.0.1:1"),
    );
    let path = dir.join("gw.toml");
    std::fs::write(&path, config).unwrap();
    let p = path.to_str().unwrap();
    let (ok, stdout, stderr) = portcullis(&["check", "--config", p]);
    assert!(ok, "offline check: {stdout}{stderr}");
    let (ok, stdout, stderr) = portcullis(&["check", "--config", p, "--online"]);
    assert!(!ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("issuer good: ok, ")
            && stdout.contains("es-1")
            && stdout.contains("login endpoints found"),
        "{stdout}"
    );
    assert!(stdout.contains("issuer gone: FAILED: "), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_names_the_commit_the_wit_and_wasmtime_and_completions_cover_every_command() {
    let (ok, stdout, _) = portcullis(&["--version"]);
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap();
    let wasmtime = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .unwrap()
        .trim_end_matches('"');
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let rev = String::from_utf8(git.stdout).unwrap();
    assert!(ok, "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!(
            "portcullis {} (rev {}, WIT portcullis:gateway@0.1.0, wasmtime {wasmtime})",
            env!("CARGO_PKG_VERSION"),
            rev.trim()
        )
    );
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script, stderr) = portcullis(&["completions", shell]);
        assert!(ok, "{shell}: {stderr}");
        for command in ["serve", "check", "verify", "bundle", "serve-wasm", "demo"] {
            assert!(script.contains(command), "{shell}: no {command}");
        }
    }
}
