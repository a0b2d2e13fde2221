//! End to end: risk plugins (real components built from `plugins/` and
//! `tests/fixtures/plugins/`) loaded by the `portcullis` binary, changing decisions over real
//! sockets; faulty plugins contained by their `on_error` policy while the gateway keeps
//! serving; plugin tooling (`plugin new`, `plugin check`, `check`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_tests::host::{Gateway, audit_records, binary, get, reason, start_engine};
use portcullis_tests::net::{Backend, KeyServer, Resp, Server, request};
use portcullis_tests::*;
use serde_json::json;

fn plugin(name: &str) -> String {
    let p =
        Path::new(env!("PORTCULLIS_PLUGIN_DIR")).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(p.exists(), "{} was not built", p.display());
    p.display().to_string()
}

/// A backend for the `us` region whose `/login` accepts only `x-password: secret`.
fn login_backend() -> Server {
    Server::start(|req| {
        let password = req
            .headers
            .iter()
            .find(|(k, _)| k == "x-password")
            .map(|(_, v)| v.as_str());
        if req.path.starts_with("/login") && password != Some("secret") {
            return Resp::json(401, &json!({"error": "bad credentials"}));
        }
        Resp::json(200, &json!({"backend": "us", "path": req.path}))
    })
}

fn config(keys: &KeyServer, eu: &str, us: &str) -> String {
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
backends = ["{eu}"]

[region.us]
jurisdiction = "US"
backends = ["{us}"]

[residency]
missing = "us"
anonymous = "us"

[client]
trusted_proxies = ["127.0.0.0/8"]
# Read by an edge bundle only (serve-wasm sets it to the connecting address, as Spin does).
peer_header = "spin-client-addr"
ip_header = "x-forwarded-for"
country_header = "cf-ipcountry"
asn_header = "x-asn"

# A 1 s deadline where a test is not about deadlines: the 5 ms default is wall-clock
# time, which a loaded CI machine (Chromium beside the gateway) once overran.
[plugin.trivial]
path = "{trivial}"
deadline = "1s"
headers = ["x-risk"]

[plugin.panics]
path = "{faulty}"
deadline = "1s"
headers = ["x-fault"]
on_error = "deny"
config = {{ mode = "panic" }}

[plugin.spins]
path = "{faulty}"
headers = ["x-fault"]
on_error = "allow"
deadline = "5ms"
config = {{ mode = "spin" }}

[plugin.hogs]
path = "{faulty}"
headers = ["x-fault"]
on_error = "deny"
memory_mb = 16
# Long enough that the memory cap, not the deadline, stops the allocation.
deadline = "500ms"
config = {{ mode = "hog" }}

[plugin.burns]
path = "{faulty}"
headers = ["x-fault"]
on_error = "allow"
deadline = "1s"
fuel = 20_000_000
config = {{ mode = "spin" }}

[plugin.travel]
path = "{travel}"
deadline = "1s"
on_error = "allow"

[plugin.stuffing]
path = "{stuffing}"
deadline = "1s"
headers = ["x-login-username"]
config = {{ paths = ["/login"], ip_threshold = 3, user_threshold = 100 }}

[plugin.reputation]
path = "{reputation}"
config = {{ deny = ["203.0.113.0/24", "2001:db8:bad::/48"], allow = ["203.0.113.7"], deny_asns = [64512] }}

[[route]]
path = "/risk/trivial"
auth = "public"
risk = {{ plugins = ["trivial"], challenge = 60, deny = 90 }}

[[route]]
path = "/fault/panic"
auth = "public"
risk = {{ plugins = ["panics"] }}

[[route]]
path = "/fault/spin"
auth = "public"
risk = {{ plugins = ["spins"] }}

[[route]]
path = "/fault/fuel"
auth = "public"
risk = {{ plugins = ["burns"] }}

[[route]]
path = "/fault/hog"
auth = "public"
risk = {{ plugins = ["hogs"] }}

[[route]]
path = "/api/account"
risk = {{ plugins = ["travel", "reputation"], step_up = 50, deny = 95, step_up_acr = ["mfa"] }}

[[route]]
path = "/login"
auth = "public"
risk = {{ plugins = ["reputation", "stuffing"], deny = 60 }}

[[route]]
path = "/public"
auth = "public"

[audit]
subject_key_file = "audit.key"
"#,
        keys = keys.server.url(),
        trivial = plugin("fixture-plugin-trivial"),
        faulty = plugin("fixture-plugin-faulty"),
        travel = plugin("impossible-travel"),
        stuffing = plugin("credential-stuffing"),
        reputation = plugin("ip-reputation"),
    )
}

struct World {
    keys: KeyServer,
    eu: Backend,
    _us: Server,
    gw: Gateway,
}

fn world(engine: &str) -> World {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let eu = Backend::start("eu");
    let us = login_backend();
    let gw = start_engine(&config(&keys, &eu.server.url(), &us.url()), engine);
    World {
        keys,
        eu,
        _us: us,
        gw,
    }
}

fn metrics(gw: &Gateway) -> String {
    String::from_utf8(request(gw.admin, "GET", "/metrics", &[], b"").unwrap().body).unwrap()
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn plugin_scores_choose_allow_challenge_or_deny_through_route_thresholds(engine: &str) {
    let w = world(engine);
    let r = get(&w.gw, "/risk/trivial", None, &[("x-risk", "10")]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = get(&w.gw, "/risk/trivial", None, &[("x-risk", "70")]);
    assert_eq!((r.status, reason(&r).as_str()), (403, "challenge_required"));
    let r = get(&w.gw, "/risk/trivial", None, &[("x-risk", "95")]);
    assert_eq!((r.status, reason(&r).as_str()), (403, "risk_denied"));
    assert!(
        r.json_body()["detail"]
            .as_str()
            .unwrap()
            .contains("trivial")
    );
    // The audit record lists the plugin's contribution.
    let records = audit_records(&w.gw, |r| r.iter().any(|a| a["reason"] == "risk_denied"));
    let denied = records
        .iter()
        .find(|a| a["reason"] == "risk_denied")
        .expect("audit record for the denial");
    let risk = &denied["risk"];
    assert_eq!(risk["score"], 95);
    assert_eq!(risk["plugins"][0]["plugin"], "trivial");
    assert_eq!(risk["plugins"][0]["labels"][0], "test");
    // Routes without plugins never call them.
    let before = metric(
        &metrics(&w.gw),
        "portcullis_plugin_calls_total{plugin=\"trivial\"}",
    );
    assert_eq!(
        get(&w.gw, "/public/x", None, &[("x-risk", "99")]).status,
        200
    );
    let after = metric(
        &metrics(&w.gw),
        "portcullis_plugin_calls_total{plugin=\"trivial\"}",
    );
    assert_eq!(before, after);
    // Each call is in the plugin's latency histogram too.
    let text = metrics(&w.gw);
    assert_eq!(
        metric(
            &text,
            "portcullis_plugin_call_seconds_count{plugin=\"trivial\"}"
        ),
        after,
        "{text}"
    );
    drop(w.eu);
}

fn faulty_plugins_are_contained_by_on_error_while_other_requests_are_served(engine: &str) {
    let w = world(engine);
    let addr = w.gw.addr;
    let faults = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..3 {
            for path in ["/fault/panic", "/fault/spin", "/fault/hog", "/fault/fuel"] {
                let started = Instant::now();
                let r = request(addr, "GET", path, &[("x-fault", "yes")], b"").unwrap();
                seen.push((path, r.status, reason(&r), started.elapsed()));
            }
        }
        seen
    });
    // Meanwhile, ordinary requests — including on the faulty plugins' own routes — pass.
    let mut normal = 0;
    while !faults.is_finished() || normal < 30 {
        for path in [
            "/public/ok",
            "/fault/panic",
            "/fault/spin",
            "/fault/hog",
            "/fault/fuel",
        ] {
            let r = request(addr, "GET", path, &[], b"").unwrap();
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            normal += 1;
        }
    }
    for (path, status, why, took) in faults.join().unwrap() {
        match path {
            // on_error = "deny": refused, fail closed.
            "/fault/panic" | "/fault/hog" => {
                assert_eq!((status, why.as_str()), (503, "risk_check_failed"), "{path}")
            }
            // on_error = "allow": the request proceeds once the 5 ms deadline (or, for
            // `burns`, the fuel budget well before its 1 s deadline) stops the loop.
            _ => {
                assert_eq!(status, 200, "{path}");
                assert!(took < Duration::from_secs(5), "{path} took {took:?}");
            }
        }
    }
    let m = metrics(&w.gw);
    assert!(
        metric(
            &m,
            "portcullis_plugin_failures_total{plugin=\"panics\",kind=\"trap\"}"
        ) >= 3,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "portcullis_plugin_failures_total{plugin=\"spins\",kind=\"deadline\"}"
        ) >= 3,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "portcullis_plugin_failures_total{plugin=\"hogs\",kind=\"memory\"}"
        ) >= 3,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "portcullis_plugin_failures_total{plugin=\"burns\",kind=\"fuel\"}"
        ) >= 3,
        "{m}"
    );
    // The panic message reaches the log and the audit record.
    let records = audit_records(&w.gw, |r| {
        r.iter()
            .any(|a| a["reason"] == "risk_check_failed" && a["path"] == "/fault/panic")
    });
    let failed = records
        .iter()
        .find(|a| a["reason"] == "risk_check_failed" && a["path"] == "/fault/panic")
        .unwrap();
    let error = failed["risk"]["plugins"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("fault injected: panic on /fault/panic"),
        "{error}"
    );
    // The gateway process is still alive.
    assert_eq!(
        request(w.gw.admin, "GET", "/healthz", &[], b"")
            .unwrap()
            .status,
        200
    );
}

fn impossible_travel_steps_up_a_subject_seen_in_de_then_au(engine: &str) {
    let w = world(engine);
    let idp = TestIdp::shared();
    let alice = idp.sign("ES256", live_claims(json!({"sub": "alice"})));
    let de = get(
        &w.gw,
        "/api/account",
        Some(&alice),
        &[("cf-ipcountry", "DE")],
    );
    assert_eq!(de.status, 200, "{}", String::from_utf8_lossy(&de.body));
    let au = get(
        &w.gw,
        "/api/account",
        Some(&alice),
        &[("cf-ipcountry", "AU")],
    );
    assert_eq!(
        (au.status, reason(&au).as_str()),
        (401, "insufficient_user_authentication")
    );
    let challenge = au.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("insufficient_user_authentication"),
        "{challenge}"
    );
    assert!(challenge.contains("acr_values=\"mfa\""), "{challenge}");
    // Stepped up (acr = mfa), the same trip is allowed.
    let alice_mfa = idp.sign("ES256", live_claims(json!({"sub": "alice", "acr": "mfa"})));
    let back = get(
        &w.gw,
        "/api/account",
        Some(&alice_mfa),
        &[("cf-ipcountry", "DE")],
    );
    assert_eq!(back.status, 200);
    // Another subject is unaffected; so is a neighbouring country.
    let bob = idp.sign("ES256", live_claims(json!({"sub": "bob"})));
    assert_eq!(
        get(&w.gw, "/api/account", Some(&bob), &[("cf-ipcountry", "AU")]).status,
        200
    );
    let carol = idp.sign("ES256", live_claims(json!({"sub": "carol"})));
    assert_eq!(
        get(
            &w.gw,
            "/api/account",
            Some(&carol),
            &[("cf-ipcountry", "DE")]
        )
        .status,
        200
    );
    assert_eq!(
        get(
            &w.gw,
            "/api/account",
            Some(&carol),
            &[("cf-ipcountry", "FR")]
        )
        .status,
        200
    );
    // Country headers from an untrusted peer would be ignored: only 127.0.0.0/8 is trusted
    // here, which is every test client, so the client-info unit tests cover that case.
}

fn credential_stuffing_blocks_a_burst_of_failed_logins_from_one_network(engine: &str) {
    let w = world(engine);
    let login = |ip: &str, password: &str| {
        request(
            w.gw.addr,
            "POST",
            "/login",
            &[
                ("x-forwarded-for", ip),
                ("x-password", password),
                ("x-login-username", "victim"),
            ],
            b"",
        )
        .unwrap()
    };
    // Failures from one /24, from different addresses, reach the backend and are counted.
    for i in 1..=3 {
        assert_eq!(login(&format!("198.51.100.{i}"), "guess").status, 401);
    }
    // The plugin hears each outcome after the response went out: wait until it has heard
    // all three (a busy machine may take a moment).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(
        &metrics(&w.gw),
        "portcullis_plugin_observations_total{plugin=\"stuffing\"}",
    ) < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin never heard the three outcomes: {}",
            metrics(&w.gw)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Now the network is refused before the backend sees the attempt, right password or not.
    let blocked = login("198.51.100.200", "secret");
    assert_eq!(
        (blocked.status, reason(&blocked).as_str()),
        (403, "risk_denied")
    );
    assert!(
        blocked.json_body()["detail"]
            .as_str()
            .unwrap()
            .contains("stuffing")
    );
    // Another network logs in fine.
    assert_eq!(login("192.0.2.10", "secret").status, 200);
}

fn ip_reputation_refuses_listed_networks_and_asns_with_specific_allows(engine: &str) {
    let w = world(engine);
    let from = |headers: &[(&str, &str)]| {
        let mut h = vec![("x-password", "secret")];
        h.extend_from_slice(headers);
        request(w.gw.addr, "POST", "/login", &h, b"").unwrap()
    };
    let denied = from(&[("x-forwarded-for", "203.0.113.5")]);
    assert_eq!(
        (denied.status, reason(&denied).as_str()),
        (403, "risk_denied")
    );
    assert_eq!(from(&[("x-forwarded-for", "203.0.113.7")]).status, 200);
    assert_eq!(from(&[("x-forwarded-for", "2001:db8:bad::1")]).status, 403);
    assert_eq!(from(&[("x-forwarded-for", "2001:db8:900d::1")]).status, 200);
    assert_eq!(
        from(&[("x-forwarded-for", "192.0.2.1"), ("x-asn", "AS64512")]).status,
        403
    );
    assert_eq!(
        from(&[("x-forwarded-for", "192.0.2.1"), ("x-asn", "AS3320")]).status,
        200
    );
    drop(w.keys);
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn wrong_world_and_refused_configurations_stop_startup_with_the_reason() {
    let dir = temp_dir("plugin-startup");
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    let base = |plugin_table: &str| {
        format!(
            r#"
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_file = "jwks.json"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]
[region.us]
jurisdiction = "US"
backends = ["http://127.0.0.1:9"]
[residency]
missing = "us"
anonymous = "us"
{plugin_table}
[[route]]
path = "/"
risk = {{ plugins = ["p"] }}
[audit]
subject_key_file = "audit.key"
"#
        )
    };
    std::fs::write(dir.join("jwks.json"), TestIdp::shared().jwks().to_string()).unwrap();
    let cases = [
        (
            format!(
                "[plugin.p]\npath = \"{}\"",
                plugin("fixture-plugin-wrong-world")
            ),
            "does not have export `init`",
        ),
        (
            format!("[plugin.p]\npath = \"{}\"", plugin("fixture-plugin-0-1")),
            "built for portcullis:plugin@0.1.0, which this host (0.2.0) does not speak: rebuild it with an SDK for 0.2.0",
        ),
        (
            format!(
                "[plugin.p]\npath = \"{}\"\nconfig = {{ mode = \"refuse\" }}",
                plugin("fixture-plugin-faulty")
            ),
            "refused its configuration",
        ),
        (
            // An `init` that never returns is an error once the load deadline passes,
            // never a `check` (or a startup, a reload) that hangs.
            format!(
                "[plugin.p]\npath = \"{}\"\nconfig = {{ mode = \"spin-init\" }}",
                plugin("fixture-plugin-faulty")
            ),
            "deadline exceeded: its instantiation and `init` did not finish within 5s",
        ),
        (
            format!(
                "[plugin.p]\npath = \"{}\"\nconfig = {{ deny = [\"10.0.0.0/33\"] }}",
                plugin("ip-reputation")
            ),
            "10.0.0.0/33",
        ),
    ];
    for (table, expected) in cases {
        std::fs::write(dir.join("gateway.toml"), base(&table)).unwrap();
        // `timeout`: a check that hangs fails the test instead of stalling the suite.
        let (ok, text) = run(Command::new("timeout")
            .arg("120")
            .arg(binary())
            .arg("check")
            .arg("--config")
            .arg(dir.join("gateway.toml")));
        assert!(!ok, "{table}: {text}");
        assert!(
            text.contains("plugin `p`") && text.contains(expected),
            "{table}: {text}"
        );
    }
    // A good one: `check` names the WIT version each plugin was built against.
    std::fs::write(
        dir.join("gateway.toml"),
        base(&format!(
            "[plugin.p]\npath = \"{}\"\ndeadline = \"1s\"\nconfig = {{ deny = [\"10.0.0.0/8\"] }}",
            plugin("ip-reputation")
        )),
    )
    .unwrap();
    let (ok, text) = run(Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(dir.join("gateway.toml")));
    assert!(
        ok && text.contains("plugin p: built for portcullis:plugin@0.2.0; this host speaks 0.2.0"),
        "{text}"
    );
    // `plugin check` says what is wrong with each file.
    let (ok, text) = run(Command::new(binary()).args([
        "plugin",
        "check",
        &plugin("fixture-plugin-wrong-world"),
    ]));
    assert!(!ok && text.contains("NOT A PLUGIN"), "{text}");
    let gateway_component =
        Path::new(env!("PORTCULLIS_PLUGIN_DIR")).join("portcullis_component.wasm");
    let (ok, text) = run(Command::new(binary())
        .arg("plugin")
        .arg("check")
        .arg(&gateway_component));
    assert!(
        !ok && text.contains("NOT ALLOWED: imports portcullis:gateway/keys@0.1.0"),
        "{text}"
    );
    for good in [
        "impossible-travel",
        "credential-stuffing",
        "ip-reputation",
        "fixture-plugin-trivial",
    ] {
        let (ok, text) = run(Command::new(binary()).args(["plugin", "check", &plugin(good)]));
        assert!(
            ok && text.contains("ok: a portcullis:plugin@0.2.0 risk plugin")
                && text.contains(
                    "built for portcullis:plugin@0.2.0; this host speaks 0.2.0: compatible"
                ),
            "{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `plugin new` writes a crate that needs nothing of this repository: it carries its own
/// copy of the SDK (sources and WIT). Scaffolded, then moved elsewhere (no path back into
/// the repository or to where it was made), it tests, builds for wasm32-wasip2, passes
/// `plugin check` and its own scenario under `plugin test`, and the built file scores alike
/// on the native host, in a bundle and in the Worker.
#[test]
fn plugin_new_scaffolds_a_crate_that_tests_builds_checks_and_runs_on_its_own() {
    let dir = temp_dir("scaffold");
    let made = dir.join("made/geo-fence");
    let (ok, text) = run(Command::new(binary())
        .args(["plugin", "new", "geo-fence", "--dir"])
        .arg(&made));
    assert!(ok, "{text}");
    assert!(
        text.contains("cargo build --release --target wasm32-wasip2"),
        "{text}"
    );
    let crate_dir = dir.join("elsewhere/geo-fence");
    std::fs::create_dir_all(crate_dir.parent().unwrap()).unwrap();
    std::fs::rename(&made, &crate_dir).unwrap();
    std::fs::remove_dir_all(dir.join("made")).unwrap();
    let root = repo_root().display().to_string();
    for manifest in ["Cargo.toml", "vendor/portcullis-plugin/Cargo.toml"] {
        let text = std::fs::read_to_string(crate_dir.join(manifest)).unwrap();
        assert!(
            !text.contains(&root),
            "{manifest} points into the repository: {text}"
        );
        assert!(
            !text.contains("path = \"/"),
            "{manifest} has an absolute path: {text}"
        );
    }
    // The vendored SDK is the SDK.
    assert_eq!(
        std::fs::read_to_string(crate_dir.join("vendor/portcullis-plugin/src/lib.rs")).unwrap(),
        std::fs::read_to_string(repo_root().join("plugins/sdk/src/lib.rs")).unwrap()
    );
    // Reuse the workspace's resolved versions and a persistent target directory (offline:
    // every crate the scaffold needs is one this workspace already uses).
    std::fs::copy(repo_root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = repo_root().join("target/scaffold");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_cmd = |args: &[&str]| {
        let mut c = Command::new(&cargo);
        c.current_dir(&crate_dir)
            .args(args)
            .arg("--offline")
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        c
    };
    let (ok, text) = run(&mut cargo_cmd(&["test", "--quiet"]));
    assert!(ok && text.contains("2 passed"), "{text}");
    let (ok, text) = run(&mut cargo_cmd(&[
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
    ]));
    assert!(ok, "{text}");
    let wasm = target.join("wasm32-wasip2/release/geo_fence.wasm");
    let (ok, text) = run(Command::new(binary()).arg("plugin").arg("check").arg(&wasm));
    assert!(ok, "{text}");
    // The scaffold's scenario keeps serve's 5 ms default deadline; on a loaded test
    // machine a wall-clock 5 ms can pass before the plugin is scheduled, so the test gives
    // it a second (deadlines have their own tests).
    let scenario = crate_dir.join("scenario.toml");
    let scenario_text = std::fs::read_to_string(&scenario).unwrap();
    assert!(scenario_text.contains("\n[plugin]\n"), "{scenario_text}");
    std::fs::write(
        &scenario,
        scenario_text.replacen("\n[plugin]\n", "\n[plugin]\ndeadline = \"1s\"\n", 1),
    )
    .unwrap();
    let (ok, text) = run(Command::new(binary())
        .args(["plugin", "test"])
        .arg(&wasm)
        .arg("--scenario")
        .arg(&scenario));
    assert!(ok && text.contains("every expectation held"), "{text}");

    // Deployed unchanged on every runtime: the scaffold scores a request without a
    // User-Agent 40, which this route's threshold turns into a challenge. (It imports no
    // state: the bundle plugs in only the interfaces a plugin imports.)
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let eu = Backend::start("eu");
    let text = format!(
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
backends = ["{eu}"]

[residency]
missing = "eu"
anonymous = "eu"

[plugin.geo-fence]
path = "{wasm}"
deadline = "1s"
headers = ["user-agent"]

[[route]]
path = "/"
auth = "public"
risk = {{ plugins = ["geo-fence"], challenge = 30 }}

[audit]
subject_key_file = "audit.key"
"#,
        keys = keys.server.url(),
        eu = eu.server.url(),
        wasm = wasm.display()
    );
    let native = start_engine(&text, "native");
    let (bundle, printed) = portcullis_tests::host::start_bundle(&text, &[]);
    assert!(printed.contains("1 plugin(s)"), "{printed}");
    let worker = portcullis_tests::workerd::start_worker(&text, &[]);
    for (runtime, gw) in [
        ("native", &native),
        ("bundle", &bundle),
        ("worker", &worker),
    ] {
        let r = request(gw.addr, "GET", "/shop", &[], b"").unwrap();
        assert_eq!(
            r.status,
            403,
            "{runtime}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(reason(&r), "challenge_required", "{runtime}");
        let browser = [("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")];
        let r = request(gw.addr, "GET", "/shop", &browser, b"").unwrap();
        assert_eq!(
            r.status,
            200,
            "{runtime}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same ip-reputation component composed into an edge bundle answers as on the host:
/// the bundle reads the client from serve-wasm's `spin-client-addr` (`peer_header`) and
/// the trusted proxy's headers, and hands it to the plugin.
#[test]
fn ip_reputation_in_a_bundle_refuses_listed_networks_and_asns_like_the_host() {
    ip_reputation_refuses_listed_networks_and_asns_with_specific_allows("bundle");
}

portcullis_tests::on_every_engine!(
    plugin_scores_choose_allow_challenge_or_deny_through_route_thresholds,
    faulty_plugins_are_contained_by_on_error_while_other_requests_are_served,
    impossible_travel_steps_up_a_subject_seen_in_de_then_au,
    credential_stuffing_blocks_a_burst_of_failed_logins_from_one_network,
    ip_reputation_refuses_listed_networks_and_asns_with_specific_allows,
);

/// The same tests on the component engine keeping instances (`--instance-reuse`): the
/// plugins see each request's own client, and a request after a refused one is answered
/// on its own.
mod kept_instances {
    #[test]
    fn ip_reputation_refuses_listed_networks_and_asns_with_specific_allows() {
        super::ip_reputation_refuses_listed_networks_and_asns_with_specific_allows(
            "component-reuse",
        );
    }
    #[test]
    fn plugin_scores_choose_allow_challenge_or_deny_through_route_thresholds() {
        super::plugin_scores_choose_allow_challenge_or_deny_through_route_thresholds(
            "component-reuse",
        );
    }
    #[test]
    fn faulty_plugins_are_contained_by_on_error_while_other_requests_are_served() {
        super::faulty_plugins_are_contained_by_on_error_while_other_requests_are_served(
            "component-reuse",
        );
    }
    #[test]
    fn impossible_travel_steps_up_a_subject_seen_in_de_then_au() {
        super::impossible_travel_steps_up_a_subject_seen_in_de_then_au("component-reuse");
    }
}

/// `portcullis token verify --path` decides with the pipeline `serve` runs: the route's risk
/// plugin scores the request (a high score is refused as `serve` would refuse it, not waved
/// through), and the output names what an offline check cannot evaluate.
#[test]
fn token_verify_runs_the_routes_plugins_and_says_what_it_cannot_check() {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let dir =
        std::env::temp_dir().join(format!("portcullis-verify-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    // The suite's configuration (its `trivial` plugin scores `x-risk`), plus a route that
    // denies at 60 and limits each subject.
    let unused = "http://127.0.0.1:9";
    let config = format!(
        "{}\n[[route]]\npath = \"/risky\"\nrisk = {{ plugins = [\"trivial\"], deny = 60 }}\n[[route.rate_limit]]\nkey = \"subject\"\nrate = 1\nper = \"1h\"\n",
        config(&keys, unused, unused)
    );
    let path = dir.join("gw.toml");
    std::fs::write(&path, config).unwrap();
    let token = TestIdp::shared().sign("ES256", live_claims(json!({"sub": "alice"})));
    let verify = |risk: &str| {
        let out = Command::new(binary())
            .args(["token", "verify", "--config"])
            .arg(&path)
            .args([
                "--path",
                "/risky/x",
                "--header",
                &format!("x-risk: {risk}"),
                &token,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), format!("{stdout}{stderr}"))
    };
    let (ok, out) = verify("90");
    assert!(!ok && out.starts_with("rejected: 403 risk_denied"), "{out}");
    let (ok, out) = verify("10");
    assert!(ok && out.starts_with("accepted: GET /risky/x"), "{out}");
    for note in [
        "offline: risk plugins: run on this one request",
        "offline: rate limits: counted in an empty state as a first request",
        "offline: backends: not contacted",
    ] {
        assert!(out.contains(note), "missing {note:?}:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `portcullis plugin test` runs a built component against a scenario under `serve`'s
/// sandbox: time steps reach the plugin's clock (impossible travel within five minutes,
/// not within two days), a trap is a failure the scenario can expect, and a broken
/// expectation fails the run (exit 1) naming the request and what differed.
#[test]
fn plugin_test_runs_a_scenario_and_fails_on_a_broken_expectation() {
    let dir = temp_dir("scenario");
    let travel = r#"
[plugin]
config = { action = "step-up", score = 80 }
deadline = "1s"

[[request]]
name = "alice in Germany"
path = "/api/account"
country = "DE"
identity = { subject = "alice" }
expect = { action = "allow", score = 0 }

[[request]]
name = "alice in Australia five minutes later"
path = "/api/account"
country = "AU"
after = "5m"
identity = { subject = "alice" }
expect = { action = "step-up", score_min = 80, labels = ["impossible-travel"] }

[[request]]
name = "alice back in Germany two days later"
path = "/api/account"
country = "DE"
after = "48h"
identity = { subject = "alice" }
expect = { action = "allow" }
"#;
    std::fs::write(dir.join("travel.toml"), travel).unwrap();
    // `timeout`: a run that hangs fails the test instead of stalling the suite.
    let test = |wasm: &str, scenario: &str| {
        let out = Command::new("timeout")
            .arg("60")
            .arg(binary())
            .args(["plugin", "test", wasm, "--scenario"])
            .arg(dir.join(scenario))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = test(&plugin("impossible-travel"), "travel.toml");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("DE→AU 12,565 km in 0.08 h"), "{out}");
    assert!(out.contains("every expectation held"), "{out}");

    // The same trip two days apart is no longer flagged: the expectation breaks.
    std::fs::write(
        dir.join("wrong.toml"),
        travel.replace("after = \"5m\"", "after = \"48h\""),
    )
    .unwrap();
    let (code, out) = test(&plugin("impossible-travel"), "wrong.toml");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "request 2 (alice in Australia five minutes later): action allow (expected step-up)"
        ),
        "{out}"
    );

    // A trap is a failure (its `on_error` decides in `serve`), which a scenario can expect;
    // so is a call past its deadline, which is `serve`'s (the run once hung on a call
    // that never returns, its epoch never ticking).
    for (mode, deadline, failed) in [
        (
            "panic",
            "1s",
            "FAILED (trap: panicked: fault injected: panic on /)",
        ),
        ("spin", "50ms", "FAILED (deadline: deadline exceeded)"),
    ] {
        let scenario = format!(
            "[plugin]\nconfig = {{ mode = \"{mode}\" }}\nheaders = [\"x-fault\"]\n\
             deadline = \"{deadline}\"\n\n[[request]]\npath = \"/\"\n\
             headers = {{ \"x-fault\" = \"yes\" }}\nexpect = {{ failure = true }}\n"
        );
        std::fs::write(dir.join("faulty.toml"), scenario).unwrap();
        let (code, out) = test(&plugin("fixture-plugin-faulty"), "faulty.toml");
        assert_eq!(code, Some(0), "{mode}: {out}");
        assert!(out.contains(failed), "{mode}: {out}");
    }

    // A scenario with a typo is refused before anything runs (exit 3, as a bad
    // configuration).
    std::fs::write(
        dir.join("typo.toml"),
        "[[request]]\npath = \"/\"\nexpct = {}\n",
    )
    .unwrap();
    let (code, out) = test(&plugin("impossible-travel"), "typo.toml");
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("expct"), "{out}");
}

/// The SDK packages as a crate of its own (`cargo package`: its WIT inside it, no path back
/// into the repository), and a plugin builds against the packaged crate alone; the WIT it
/// carries is the host's.
#[test]
fn the_sdk_packages_on_its_own_and_a_plugin_builds_against_the_package() {
    assert_eq!(
        std::fs::read_to_string(repo_root().join("plugins/sdk/wit/plugin.wit")).unwrap(),
        std::fs::read_to_string(repo_root().join("wit/plugin/plugin.wit")).unwrap(),
        "plugins/sdk/wit/plugin.wit must be wit/plugin/plugin.wit"
    );
    let dir = temp_dir("sdk-package");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let package_target = repo_root().join("target/sdk-package");
    let (ok, text) = run(Command::new(&cargo)
        .current_dir(repo_root())
        .args([
            "package",
            "-p",
            "portcullis-plugin",
            "--offline",
            "--allow-dirty",
            "--no-verify",
        ])
        .env("CARGO_TARGET_DIR", &package_target));
    assert!(ok, "{text}");
    let crate_file = package_target.join(format!(
        "package/portcullis-plugin-{}.crate",
        env!("CARGO_PKG_VERSION")
    ));
    let (ok, text) = run(Command::new("tar")
        .arg("xzf")
        .arg(&crate_file)
        .arg("-C")
        .arg(&dir));
    assert!(ok, "{text}");
    let sdk = dir.join(format!("portcullis-plugin-{}", env!("CARGO_PKG_VERSION")));
    assert!(
        sdk.join("wit/plugin.wit").exists(),
        "the WIT is in the package"
    );
    let crate_dir = dir.join("packaged-fence");
    let (ok, text) = run(Command::new(binary())
        .args(["plugin", "new", "packaged-fence", "--dir"])
        .arg(&crate_dir)
        .arg("--sdk")
        .arg(&sdk));
    assert!(ok, "{text}");
    std::fs::copy(repo_root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = repo_root().join("target/scaffold");
    let (ok, text) = run(Command::new(&cargo)
        .current_dir(&crate_dir)
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-wasip2",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS"));
    assert!(ok, "{text}");
    let wasm = target.join("wasm32-wasip2/release/packaged_fence.wasm");
    let (ok, text) = run(Command::new(binary()).arg("plugin").arg("check").arg(&wasm));
    assert!(ok, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
