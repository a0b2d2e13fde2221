//! Issue 19: hot reload. `POST /reload`, SIGHUP and the file watch load the configuration
//! again; a valid one is swapped in (new routes decide the next request), an invalid one is
//! refused with its located errors and the running one stays; key sets of unchanged
//! issuers are not fetched again, rate-limit state carries over, a `[state]` change is
//! refused, and SIGHUP reopens the audit file. Both engines, the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portcullis_tests::host::{Gateway, get, reason};
use portcullis_tests::net::{Backend, KeyServer, request};
use portcullis_tests::{AUDIENCE, ISSUER, TestIdp, live_claims, on_every_engine};

fn config(keys: &KeyServer, backend: &Backend, routes: &str, state: &str) -> String {
    format!(
        r#"
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_uri = "{keys}/jwks.json"
insecure_http_jwks = true
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["{backend}"]

[residency]
missing = "eu"
anonymous = "eu"

[[route]]
path = "/api"
auth = "required"

[[route]]
path = "/limited"
auth = "public"
[[route.rate_limit]]
key = "route"
rate = 2
per = "1m"
burst = 2

{routes}

{state}

[audit]
subject_key_file = "audit.key"
"#,
        keys = keys.server.url(),
        backend = backend.server.url(),
    )
}

fn start(text: &str, engine: &str, watch: &str) -> Gateway {
    let watch = watch.to_owned();
    portcullis_tests::host::start_engine_args(text, engine, &[], "127.0.0.1:0", move |_| {
        vec!["--watch-config".into(), watch]
    })
}

fn reload(gw: &Gateway) -> (u16, String) {
    let r = request(gw.admin, "POST", "/reload", &[], b"").unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn metric(gw: &Gateway, line: &str) -> u64 {
    let r = request(gw.admin, "GET", "/metrics", &[], b"").unwrap();
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_reload_swaps_in_a_valid_configuration_and_refuses_a_broken_one(engine: &str) {
    let idp = TestIdp::shared();
    let keys = KeyServer::start(idp.jwks());
    let backend = Backend::start("eu");
    let gw = start(&config(&keys, &backend, "", ""), engine, "0");
    let token = idp.sign("ES256", live_claims(serde_json::json!({})));
    assert_eq!(get(&gw, "/api/x", Some(&token), &[]).status, 200);
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 404);
    let fetched = keys.jwks_fetches.load(Ordering::SeqCst);
    // Two requests of the burst of 2 used before the reload.
    assert_eq!(get(&gw, "/limited", None, &[]).status, 200);
    assert_eq!(get(&gw, "/limited", None, &[]).status, 200);

    // A valid change: the new route decides the next request.
    let file = gw.dir.join("gateway.toml");
    let added = "[[route]]\npath = \"/new\"\nauth = \"public\"\n";
    std::fs::write(&file, config(&keys, &backend, added, "")).unwrap();
    assert_eq!(reload(&gw), (200, "reloaded: generation 2\n".into()));
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 200);
    // The unchanged issuer's key set came along: no fetch, the token still verifies.
    assert_eq!(get(&gw, "/api/x", Some(&token), &[]).status, 200);
    assert_eq!(keys.jwks_fetches.load(Ordering::SeqCst), fetched);
    // The rate-limit state came along: the burst is spent.
    let limited = get(&gw, "/limited", None, &[]);
    assert_eq!(
        (limited.status, reason(&limited)),
        (429, "rate_limited".into())
    );

    // A broken one: refused with its location; the running configuration stays.
    let broken = config(&keys, &backend, &format!("{added}color = \"blue\"\n"), "");
    std::fs::write(&file, broken).unwrap();
    let (status, body) = reload(&gw);
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("gateway.toml:") && body.contains("color"),
        "{body}"
    );
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 200);
    assert_eq!(
        metric(&gw, "portcullis_config_reloads_total{result=\"loaded\"} "),
        1
    );
    assert_eq!(
        metric(&gw, "portcullis_config_reloads_total{result=\"refused\"} "),
        1
    );
    assert_eq!(metric(&gw, "portcullis_config_generation "), 2);
    let log = std::fs::read_to_string(gw.dir.join("gateway.log")).unwrap();
    assert!(log.contains("configuration reload refused"), "{log}");

    // Switching the shared state needs a restart.
    let redis = "[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\n";
    std::fs::write(&file, config(&keys, &backend, added, redis)).unwrap();
    let (status, body) = reload(&gw);
    assert_eq!(status, 422);
    assert!(
        body.contains("[state]") && body.contains("restart"),
        "{body}"
    );
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 200);
}

fn sighup_and_the_file_watch_reload_and_sighup_reopens_the_audit_file(engine: &str) {
    let idp = TestIdp::shared();
    let keys = KeyServer::start(idp.jwks());
    let backend = Backend::start("eu");
    let gw = start(&config(&keys, &backend, "", ""), engine, "0.1");
    let file = gw.dir.join("gateway.toml");

    // The watch: a changed file is loaded without being asked.
    let a = "[[route]]\npath = \"/a\"\nauth = \"public\"\n";
    std::fs::write(&file, config(&keys, &backend, a, "")).unwrap();
    wait_for("the watch never loaded the change", || {
        get(&gw, "/a/x", None, &[]).status == 200
    });

    // SIGHUP: the audit file moved away (logrotate) is reopened, and the file reloaded.
    let audit = gw.dir.join("audit.jsonl");
    let rotated = gw.dir.join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    let b = "[[route]]\npath = \"/b\"\nauth = \"public\"\n";
    // Written before the signal: the watch may load it first; either way it is loaded.
    std::fs::write(&file, config(&keys, &backend, b, "")).unwrap();
    let pid = gw.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("SIGHUP did not reload", || {
        get(&gw, "/b/x", None, &[]).status == 200
    });
    assert_eq!(get(&gw, "/a/x", None, &[]).status, 404);
    wait_for("the audit file was not reopened", || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("\"/b/x\""))
    });
    assert!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("\"/a/x\"")
    );
}

/// A change loaded by `POST /reload` (or SIGHUP) is not loaded a second time by the file
/// watch: the watch compares the file with the version the last reload read. (A second
/// reload of the same file would replace the engine again, dropping the component engine's
/// kept instances and the new engine's warm state for nothing.)
fn a_change_loaded_on_request_is_not_loaded_again_by_the_watch(engine: &str) {
    let idp = TestIdp::shared();
    let keys = KeyServer::start(idp.jwks());
    let backend = Backend::start("eu");
    let gw = start(&config(&keys, &backend, "", ""), engine, "0.1");
    let file = gw.dir.join("gateway.toml");
    let generation = || metric(&gw, "portcullis_config_generation ");
    let a = "[[route]]\npath = \"/a\"\nauth = \"public\"\n";
    std::fs::write(&file, config(&keys, &backend, a, "")).unwrap();
    // The watch may have seen the write first; after the request, the change is loaded.
    let (status, body) = reload(&gw);
    assert_eq!(status, 200, "{body}");
    let asked = generation();
    assert!(asked == 2 || asked == 3, "generation {asked}");
    assert_eq!(get(&gw, "/a/x", None, &[]).status, 200);
    // Ten of the watch's looks later, nothing more was loaded.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        generation(),
        asked,
        "the watch loaded the same change again"
    );
    // The watch still loads the next change, once.
    let b = "[[route]]\npath = \"/b\"\nauth = \"public\"\n";
    std::fs::write(&file, config(&keys, &backend, b, "")).unwrap();
    wait_for("the watch never loaded the change", || {
        get(&gw, "/b/x", None, &[]).status == 200
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(generation(), asked + 1);
}

on_every_engine!(
    a_reload_swaps_in_a_valid_configuration_and_refuses_a_broken_one,
    sighup_and_the_file_watch_reload_and_sighup_reopens_the_audit_file,
    a_change_loaded_on_request_is_not_loaded_again_by_the_watch,
);

/// An upgrade replaces the executable on disk while the server runs: a reload still
/// pre-initializes and compiles the component engine's gateway with the running server's
/// own code (its compiling child runs the running executable, not the file now at its
/// path). And an executable embedding another gateway component refuses to compile for
/// this server.
#[test]
fn a_reload_after_the_executable_was_replaced_compiles_with_the_running_one() {
    let idp = TestIdp::shared();
    let keys = KeyServer::start(idp.jwks());
    let backend = Backend::start("eu");
    let dir = std::env::temp_dir().join(format!("portcullis-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("portcullis");
    std::fs::copy(portcullis_tests::host::binary(), &program).unwrap();
    let gw = portcullis_tests::host::start_engine_from(
        &program,
        &config(&keys, &backend, "", ""),
        "component",
    );
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 404);
    // The upgrade: the file is gone (a package manager unlinks it and writes another).
    std::fs::remove_file(&program).unwrap();
    let routes = "[[route]]\npath = \"/new\"\nauth = \"public\"\n";
    std::fs::write(
        gw.dir.join("gateway.toml"),
        config(&keys, &backend, routes, ""),
    )
    .unwrap();
    let (status, body) = reload(&gw);
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 200);
    let _ = std::fs::remove_dir_all(&dir);

    // An executable whose gateway component is not the server's refuses.
    let out = std::process::Command::new(portcullis_tests::host::binary())
        .args(["compile-gateway", "--slots", "4", "--no-cache"])
        .args(["--gateway-sha256", &"0".repeat(64)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("embeds a different gateway component"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "a refusal writes no component");
}

/// A reload that finds the configuration unchanged (SIGHUP for logrotate, a file the watch
/// saw touched) carries the running gateway component over to the component engine's new
/// engine instead of pre-initializing and compiling it again; a changed configuration is
/// compiled, and served.
#[test]
fn an_unchanged_configuration_reloads_without_compiling_the_gateway_again() {
    let idp = TestIdp::shared();
    let keys = KeyServer::start(idp.jwks());
    let backend = Backend::start("eu");
    let gw = start(&config(&keys, &backend, "", ""), "component", "0");
    let token = idp.sign("ES256", live_claims(serde_json::json!({})));
    let count = |what: &str| {
        std::fs::read_to_string(gw.dir.join("gateway.log"))
            .unwrap()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    const COMPILED: &str = "gateway component pre-initialized and compiled in a child process";
    const CARRIED: &str = "the running gateway component carried over, not compiled again";
    assert_eq!((count(COMPILED), count(CARRIED)), (1, 0));
    assert_eq!(reload(&gw), (200, "reloaded: generation 2\n".into()));
    assert_eq!((count(COMPILED), count(CARRIED)), (1, 1));
    // The carried-over component decides as before.
    assert_eq!(get(&gw, "/api/x", Some(&token), &[]).status, 200);
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 404);
    // A change is compiled (and its route served); unchanged again, carried over again.
    let added = "[[route]]\npath = \"/new\"\nauth = \"public\"\n";
    std::fs::write(
        gw.dir.join("gateway.toml"),
        config(&keys, &backend, added, ""),
    )
    .unwrap();
    assert_eq!(reload(&gw), (200, "reloaded: generation 3\n".into()));
    assert_eq!((count(COMPILED), count(CARRIED)), (2, 1));
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 200);
    assert_eq!(reload(&gw), (200, "reloaded: generation 4\n".into()));
    assert_eq!((count(COMPILED), count(CARRIED)), (2, 2));
    assert_eq!(get(&gw, "/new/x", None, &[]).status, 200);
    assert_eq!(get(&gw, "/api/x", Some(&token), &[]).status, 200);
}
