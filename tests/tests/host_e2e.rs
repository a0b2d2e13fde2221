//! End to end: the `portcullis` binary serving the gateway component, against a real key-set
//! server and two regional backends on 127.0.0.1, driven over real sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use portcullis_tests::host::{Gateway, audit_records, get, reason, start_engine};
use portcullis_tests::net::{Backend, KeyServer, request};
use portcullis_tests::*;
use serde_json::{Value, json};

fn config(keys: &KeyServer, eu: &str, us: &str) -> String {
    config_with(keys, eu, us, "30s")
}

fn config_with(keys: &KeyServer, eu: &str, us: &str, unknown_kid_interval: &str) -> String {
    format!(
        r#"
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_uri = "{}/jwks.json"
insecure_http_jwks = true
audiences = ["{AUDIENCE}"]
algorithms = ["ES256", "RS256", "EdDSA"]
jwks_refresh_min = "1s"
jwks_unknown_kid_interval = "{unknown_kid_interval}"

[region.eu]
jurisdiction = "EU"
backends = ["{eu}"]

[region.us]
jurisdiction = "US"
backends = ["{us}"]

[residency]
missing = "us"
anonymous = "us"

[[route]]
path = "/api/orders"
scopes_any = ["orders:read"]

[[route]]
path = "/public"
auth = "public"

[identity]
strip = ["x-user-*"]
headers = {{ "x-user-id" = "sub", "x-user-region" = "region", "x-user-scopes" = "scope" }}

[audit]
subject_key_file = "audit.key"
"#,
        keys.server.url()
    )
}

struct World {
    keys: KeyServer,
    eu: Backend,
    us: Backend,
}

fn world() -> World {
    World {
        keys: KeyServer::start(TestIdp::shared().jwks()),
        eu: Backend::start("eu"),
        us: Backend::start("us"),
    }
}

fn valid_tokens_reach_their_region_with_verified_headers_and_without_spoofed_ones(engine: &str) {
    let w = world();
    let gw = start_engine(
        &config(&w.keys, &w.eu.server.url(), &w.us.server.url()),
        engine,
    );
    let idp = TestIdp::shared();
    for alg in ["ES256", "RS256", "EdDSA"] {
        let eu = idp.sign(alg, live_claims(json!({"sub": format!("eu-{alg}")})));
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r = get(
            &gw,
            "/api/orders/7?x=1",
            Some(&eu),
            &[
                ("x-user-id", "admin"),
                ("X_User_Region", "us"),
                ("traceparent", trace),
            ],
        );
        assert_eq!(r.status, 200, "{alg}: {}", String::from_utf8_lossy(&r.body));
        let body = r.json_body();
        assert_eq!(body["backend"], "eu", "{alg}");
        assert_eq!(body["path"], "/api/orders/7?x=1");
        assert_eq!(body["headers"]["x-user-id"], format!("eu-{alg}"));
        assert_eq!(body["headers"]["x-user-region"], "eu");
        assert!(
            body["headers"].get("x_user_region").is_none(),
            "underscore spoof stripped: {body}"
        );
        assert!(
            body["headers"]["x-request-id"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
        // The trace goes on, with the gateway's backend-call span as the backend's parent.
        let sent = body["headers"]["traceparent"].as_str().unwrap();
        assert_eq!(sent.split('-').nth(1), trace.split('-').nth(1), "{sent}");
        assert_ne!(sent, trace);
        let us = idp.sign(alg, live_claims(json!({"residency": "us"})));
        assert_eq!(
            get(&gw, "/api/orders", Some(&us), &[]).json_body()["backend"],
            "us",
            "{alg}"
        );
    }
    // The compiled component was cached on disk for the next start.
    let cached =
        std::fs::read_dir(repo_root().join("target/e2e-component-cache/portcullis")).unwrap();
    assert!(
        cached
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
    );
    // Audit records name the decision and never the raw subject.
    audit_records(&gw, |r| r.len() >= 6);
    let audit = std::fs::read_to_string(gw.dir.join("audit.jsonl")).unwrap();
    assert!(audit.lines().count() >= 6, "{audit}");
    assert!(!audit.contains("eu-ES256"), "raw subject in audit log");
    let first: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["decision"].as_str(), first["region"].as_str()),
        (Some("forward"), Some("eu"))
    );
}

fn attacks_get_401_wrong_scope_403_and_public_routes_pass(engine: &str) {
    let w = world();
    let gw = start_engine(
        &config(&w.keys, &w.eu.server.url(), &w.us.server.url()),
        engine,
    );
    let idp = TestIdp::shared();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(live_claims(json!({})).to_string().as_bytes())
    );
    let rsa_as_hmac = forge(
        &json!({"alg": "HS256", "kid": "rs-1"}),
        &live_claims(json!({})),
        hs256(&idp.rs256.public_key().to_der().unwrap()),
    );
    let valid = idp.sign("ES256", live_claims(json!({})));
    let (input, _) = valid.rsplit_once('.').unwrap();
    let zero_sig = format!("{input}.{}", b64(&[0u8; 64]));
    let expired = idp.sign("ES256", live_claims(json!({"exp": unix_now() - 3600})));
    let wrong_aud = idp.sign("ES256", live_claims(json!({"aud": "api://other"})));
    for (token, want) in [
        (none.as_str(), "token_malformed"),
        (rsa_as_hmac.as_str(), "algorithm_not_allowed"),
        (zero_sig.as_str(), "signature_invalid"),
        (expired.as_str(), "token_expired"),
        (wrong_aud.as_str(), "audience_mismatch"),
    ] {
        let r = get(&gw, "/api/orders", Some(token), &[]);
        assert_eq!((r.status, reason(&r).as_str()), (401, want));
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains("invalid_token")),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    let r = get(&gw, "/api/orders", None, &[]);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "authentication_required")
    );
    let r = get(
        &gw,
        "/api/orders",
        Some(&idp.sign("ES256", live_claims(json!({"scope": "profile"})))),
        &[],
    );
    assert_eq!((r.status, reason(&r).as_str()), (403, "insufficient_scope"));
    let r = get(&gw, "/public/page", None, &[]);
    assert_eq!(
        (r.status, r.json_body()["backend"].as_str()),
        (200, Some("us"))
    );
    assert_eq!(
        w.eu.hits.load(Ordering::SeqCst),
        0,
        "no refused request reached a backend"
    );
    // Metrics count decisions by reason.
    let m =
        String::from_utf8(request(gw.admin, "GET", "/metrics", &[], b"").unwrap().body).unwrap();
    assert!(
        m.contains("portcullis_requests_total{decision=\"deny\",reason=\"signature_invalid\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_request_duration_seconds_count"),
        "{m}"
    );
    assert_eq!(
        request(gw.admin, "GET", "/healthz", &[], b"")
            .unwrap()
            .status,
        200
    );
}

fn key_rotation_at_the_idp_is_followed_while_serving(engine: &str) {
    let w = world();
    let gw = start_engine(
        &config_with(&w.keys, &w.eu.server.url(), &w.us.server.url(), "2s"),
        engine,
    );
    let idp = TestIdp::shared();
    let old = idp.sign("ES256", live_claims(json!({})));
    assert_eq!(get(&gw, "/api/orders", Some(&old), &[]).status, 200);
    // The IdP adds a new key and starts signing with it.
    let new_key = ES256KeyPair::generate().with_key_id("es-2");
    let jwk = public_jwk(&new_key.public_key().to_jwk(), "ES256");
    w.keys.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(jwk.clone());
    let before = w.keys.jwks_fetches.load(Ordering::SeqCst);
    let new = new_key
        .sign(raw_claims(live_claims(json!({"sub": "rotated"}))))
        .unwrap();
    let r = get(&gw, "/api/orders", Some(&new), &[]);
    assert_eq!(
        r.status,
        200,
        "new kid accepted after one refetch: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json_body()["headers"]["x-user-id"], "rotated");
    let after = w.keys.jwks_fetches.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&(after - before)),
        "one refetch (plus at most one scheduled refresh): {before} → {after}"
    );
    // The IdP retires the old key. Once the gateway next loads the set (here: the next
    // unknown kid after the 2 s interval), tokens of the old key are refused.
    *w.keys.jwks.lock().unwrap() = json!({"keys": [jwk]});
    let probe = idp.forge_es256(
        &json!({"alg": "ES256", "kid": "es-3"}),
        &live_claims(json!({})),
    );
    // Unknown kids until the gateway is granted its next refetch (one per 2 s).
    let fetched = w.keys.jwks_fetches.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.keys.jwks_fetches.load(Ordering::SeqCst) == fetched {
        assert!(Instant::now() < deadline, "no refetch for an unknown kid");
        assert_eq!(
            reason(&get(&gw, "/api/orders", Some(&probe), &[])),
            "key_not_found"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = get(&gw, "/api/orders", Some(&old), &[]);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "key_not_found"),
        "the retired key no longer verifies"
    );
    assert_eq!(get(&gw, "/api/orders", Some(&new), &[]).status, 200);
}

/// The IdP goes down and stays down past the key set's freshness (`max-age=1`): the
/// gateway's refreshes fail (the key server counts them) and tokens keep verifying against
/// the last good set — until `jwks_max_stale`, which the next test covers.
fn an_idp_outage_past_a_due_refresh_is_served_from_the_last_good_set(engine: &str) {
    let w = world();
    w.keys.max_age.store(1, Ordering::SeqCst);
    let text = config(&w.keys, &w.eu.server.url(), &w.us.server.url()).replace(
        "jwks_refresh_min = \"1s\"",
        "jwks_refresh_min = \"1s\"\njwks_refresh_max = \"1s\"\njwks_max_stale = \"1h\"",
    );
    let gw = start_engine(&text, engine);
    let idp = TestIdp::shared();
    let token = |i: usize| idp.sign("EdDSA", live_claims(json!({"sub": format!("u{i}")})));
    assert_eq!(get(&gw, "/api/orders", Some(&token(0)), &[]).status, 200);
    w.keys.down.store(true, Ordering::SeqCst);
    // Two refused fetches: the refresh that fell due and its retry, so the set the gateway
    // holds is past its freshness.
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.keys.refused.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the gateway never tried to refresh"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 1..=5 {
        let r = get(&gw, "/api/orders", Some(&token(i)), &[]);
        assert_eq!(
            r.status,
            200,
            "stale keys serve during the outage: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(w.keys.refused.load(Ordering::SeqCst) >= 2);
}

/// Tokens naming random unknown kids trigger at most one key-set fetch per
/// `jwks_unknown_kid_interval` (30 s here).
fn random_kids_cannot_storm_the_idp(engine: &str) {
    let w = world();
    let gw = start_engine(
        &config(&w.keys, &w.eu.server.url(), &w.us.server.url()),
        engine,
    );
    let idp = TestIdp::shared();
    assert_eq!(
        get(
            &gw,
            "/api/orders",
            Some(&idp.sign("ES256", live_claims(json!({})))),
            &[]
        )
        .status,
        200
    );
    let before = w.keys.jwks_fetches.load(Ordering::SeqCst);
    for i in 0..20 {
        let t = idp.forge_es256(
            &json!({"alg": "ES256", "kid": format!("random-{i}")}),
            &live_claims(json!({})),
        );
        let r = get(&gw, "/api/orders", Some(&t), &[]);
        assert_eq!((r.status, reason(&r).as_str()), (401, "key_not_found"));
    }
    let fetched = w.keys.jwks_fetches.load(Ordering::SeqCst) - before;
    assert!(
        fetched <= 1,
        "20 unknown kids caused {fetched} key-set fetches (allowed: 1 per 30 s)"
    );
}

/// The EU region's only backend refuses connections and the region has no failover: the
/// first request finds out (503 `backend_unavailable`) and ejects it; the next ones are
/// refused before any connection (503 `residency_unavailable`), and never go to the US.
fn a_down_regional_backend_gives_503_and_never_spills_to_another_region(engine: &str) {
    let w = world();
    // Port 1 is outside the ephemeral range, so no parallel test can be listening there.
    let dead = "http://127.0.0.1:1".to_owned();
    let gw = start_engine(&config(&w.keys, &dead, &w.us.server.url()), engine);
    let eu = TestIdp::shared().sign("ES256", live_claims(json!({})));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = get(&gw, "/api/orders", Some(&eu), &[]);
        seen.push((r.status, reason(&r)));
    }
    let expected = |reason: &str| (503, reason.to_owned());
    assert_eq!(
        seen,
        [
            expected("backend_unavailable"),
            expected("residency_unavailable"),
            expected("residency_unavailable"),
        ],
        "the refused connection ejects the backend"
    );
    let m =
        String::from_utf8(request(gw.admin, "GET", "/metrics", &[], b"").unwrap().body).unwrap();
    assert!(
        m.contains("portcullis_backend_failures_total{region=\"eu\",kind=\"connect\"} 1\n"),
        "{m}"
    );
    assert_eq!(
        w.us.hits.load(Ordering::SeqCst),
        0,
        "the US backend received an EU resident's request"
    );
}

/// The EU region's backend is down and the region fails over to `eu2` (same jurisdiction):
/// once the dead backend is ejected, EU residents are served from `eu2`, never from the US.
fn a_down_region_fails_over_within_its_jurisdiction(engine: &str) {
    let w = world();
    let eu2 = Backend::start("eu2");
    let dead = "http://127.0.0.1:1";
    let text = config(&w.keys, dead, &w.us.server.url()).replace(
        &format!("backends = [\"{dead}\"]\n"),
        &format!(
            "backends = [\"{dead}\"]\nfailover = [\"eu2\"]\n\n[region.eu2]\njurisdiction = \"EU\"\nbackends = [\"{}\"]\n",
            eu2.server.url()
        ),
    );
    assert!(text.contains("[region.eu2]"));
    let gw = start_engine(&text, engine);
    let eu = TestIdp::shared().sign("ES256", live_claims(json!({"sub": "eve"})));
    let r = get(&gw, "/api/orders", Some(&eu), &[]);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (503, "backend_unavailable")
    );
    for _ in 0..3 {
        let r = get(&gw, "/api/orders", Some(&eu), &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let body = r.json_body();
        assert_eq!(body["backend"], "eu2");
        assert_eq!(body["headers"]["x-user-id"], "eve");
    }
    assert_eq!(eu2.hits.load(Ordering::SeqCst), 3);
    assert_eq!(w.us.hits.load(Ordering::SeqCst), 0);
}

fn sigterm_drains_in_flight_requests(engine: &str) {
    let w = world();
    let mut gw = start_engine(
        &config(&w.keys, &w.eu.server.url(), &w.us.server.url()),
        engine,
    );
    let t = TestIdp::shared().sign("ES256", live_claims(json!({})));
    let addr = gw.addr;
    let token = t.clone();
    let in_flight = std::thread::spawn(move || {
        request(
            addr,
            "GET",
            "/api/orders/slow",
            &[("authorization", &format!("Bearer {token}"))],
            b"",
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(400));
    let pid = gw.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let r = in_flight.join().unwrap();
    assert_eq!(
        (r.status, r.json_body()["backend"].as_str()),
        (200, Some("eu")),
        "the in-flight request completed"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status}");
    assert!(
        request(addr, "GET", "/api/orders", &[], b"").is_err(),
        "no longer accepting"
    );
}

fn request_bodies_stream_to_the_backend_up_to_the_limit(engine: &str) {
    let w = world();
    let text = format!(
        "{}\n[limits]\nmax_body_bytes = 300000\n",
        config(&w.keys, &w.eu.server.url(), &w.us.server.url())
    );
    let gw = start_engine(&text, engine);
    let auth = format!(
        "Bearer {}",
        TestIdp::shared().sign("ES256", live_claims(json!({})))
    );
    let body = vec![b'x'; 250_000];
    let r = request(
        gw.addr,
        "POST",
        "/api/orders",
        &[
            ("authorization", &auth),
            ("content-type", "application/octet-stream"),
        ],
        &body,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json_body()["body_len"].as_u64()),
        (200, Some(250_000)),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let big = vec![b'x'; 300_001];
    let r = request(
        gw.addr,
        "POST",
        "/api/orders",
        &[("authorization", &auth)],
        &big,
    )
    .unwrap();
    assert_eq!((r.status, reason(&r).as_str()), (413, "body_too_large"));
    assert_eq!(
        w.eu.hits.load(Ordering::SeqCst),
        1,
        "the oversized body never reached the backend"
    );
}

/// A verified token in the gateway's cache is only as good as its issuer's key set: once the
/// set is older than freshness + `jwks_max_stale` (IdP down), the same token gets 503
/// `keys_unavailable` like an uncached one; when the IdP is back, it passes again.
fn a_cached_token_is_refused_once_its_key_set_is_too_stale(engine: &str) {
    let w = world();
    w.keys.max_age.store(1, Ordering::SeqCst);
    let text = config(&w.keys, &w.eu.server.url(), &w.us.server.url()).replace(
        "jwks_refresh_min = \"1s\"",
        "jwks_refresh_min = \"1s\"\njwks_refresh_max = \"1s\"\njwks_max_stale = \"1s\"",
    );
    let gw = start_engine(&text, engine);
    let t = TestIdp::shared().sign("ES256", live_claims(json!({"sub": "cached"})));
    assert_eq!(get(&gw, "/api/orders", Some(&t), &[]).status, 200);
    assert_eq!(
        get(&gw, "/api/orders", Some(&t), &[]).status,
        200,
        "now cached"
    );
    w.keys.down.store(true, Ordering::SeqCst);
    // Fresh for 1 s, then stale-but-served for 1 s, then refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let r = loop {
        let r = get(&gw, "/api/orders", Some(&t), &[]);
        if r.status != 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((r.status, reason(&r).as_str()), (503, "keys_unavailable"));
    // Readiness names the issuer whose keys are unusable.
    let ready = request(gw.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(ready.status, 503);
    assert_eq!(
        String::from_utf8_lossy(&ready.body),
        "key set of issuer `main` not usable\n"
    );
    w.keys.down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while get(&gw, "/api/orders", Some(&t), &[]).status != 200 {
        assert!(std::time::Instant::now() < deadline, "keys never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = request(gw.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(
        (ready.status, ready.body.as_slice()),
        (200, &b"ready\n"[..])
    );
}

/// `/metrics` is a valid OpenMetrics document (the official Python client's strict parser
/// and its Prometheus text parser both read it): one family per name with two issuers,
/// decisions by reason, key-set age and usability per issuer, process and build metrics.
fn metrics_parse_with_the_official_python_client(engine: &str) {
    let w = world();
    let second = format!(
        "[[issuer]]\nname = \"second\"\nissuer = \"https://second.test\"\njwks_uri = \"{}/jwks.json\"\ninsecure_http_jwks = true\naudiences = [\"{AUDIENCE}\"]\nalgorithms = [\"ES256\"]\n\n[region.eu]",
        w.keys.server.url()
    );
    let text =
        config(&w.keys, &w.eu.server.url(), &w.us.server.url()).replacen("[region.eu]", &second, 1);
    let gw = start_engine(&text, engine);
    let idp = TestIdp::shared();
    assert_eq!(
        get(
            &gw,
            "/api/orders",
            Some(&idp.sign("ES256", live_claims(json!({})))),
            &[]
        )
        .status,
        200
    );
    let forged = idp.forge_es256(
        &json!({"alg": "ES256", "kid": "es-1"}),
        &live_claims(json!({})),
    );
    let forged = format!("{}AAAA", &forged[..forged.len() - 4]);
    assert_eq!(get(&gw, "/api/orders", Some(&forged), &[]).status, 401);
    assert_eq!(get(&gw, "/public", None, &[]).status, 200);
    // A decision is counted when its record is written (before the response, on both
    // engines; the writer may still be busy): wait until all three are counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = request(gw.admin, "GET", "/metrics", &[], b"").unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let counted: f64 = text
            .lines()
            .filter(|l| l.starts_with("portcullis_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted >= 3.0 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    let file = gw.dir.join("metrics.txt");
    std::fs::write(&file, &r.body).unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/interop/metrics_parse.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python client refused the document: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&r.body)
    );
    let families: Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = |family: &str| -> Vec<Value> {
        families[family]["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no family {family}: {families}"))
            .clone()
    };
    let value = |family: &str, labels: Value| -> f64 {
        samples(family)
            .iter()
            .find(|s| {
                labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| s[1][k] == *v)
            })
            .unwrap_or_else(|| panic!("no {family} sample with {labels}: {families}"))[2]
            .as_f64()
            .unwrap()
    };
    assert_eq!(families["portcullis_requests"]["type"], "counter");
    assert_eq!(
        value(
            "portcullis_requests",
            json!({"decision": "deny", "reason": "signature_invalid"})
        ),
        1.0
    );
    assert_eq!(
        value("portcullis_requests", json!({"decision": "forward"})),
        2.0
    );
    for issuer in ["main", "second"] {
        assert_eq!(
            value("portcullis_key_set_usable", json!({"issuer": issuer})),
            1.0
        );
        let age = value("portcullis_key_set_age_seconds", json!({"issuer": issuer}));
        assert!((0.0..60.0).contains(&age), "{issuer}: {age}");
        let left = value(
            "portcullis_key_set_usable_remaining_seconds",
            json!({"issuer": issuer}),
        );
        assert!(
            left > 86_000.0,
            "{issuer}: {left} s left of the default day"
        );
        assert_eq!(
            value("portcullis_key_set_refreshes", json!({"issuer": issuer})),
            1.0
        );
    }
    assert_eq!(
        families["portcullis_request_duration_seconds"]["type"],
        "histogram"
    );
    assert_eq!(
        value(
            "portcullis_build",
            json!({"version": env!("CARGO_PKG_VERSION")})
        ),
        1.0
    );
    // The EU token went to the EU backend, the anonymous request to the US one.
    for region in ["eu", "us"] {
        assert_eq!(
            value(
                "portcullis_backend_response_seconds",
                json!({"region": region, "le": "+Inf"})
            ),
            1.0,
            "{region}"
        );
    }
    assert!(value("process_resident_memory_bytes", json!({})) > 1e6);
    assert!(value("process_open_fds", json!({})) > 3.0);
}

/// A gateway whose audit destination is a FIFO nobody reads yet (the writer blocks), with
/// a queue of 4 records.
fn with_stuck_audit(w: &World, engine: &str, when_full: &str) -> (Gateway, std::path::PathBuf) {
    let fifo = std::cell::RefCell::new(std::path::PathBuf::new());
    let gw = portcullis_tests::host::start_engine_args(
        &config(&w.keys, &w.eu.server.url(), &w.us.server.url()),
        engine,
        &[],
        "127.0.0.1:0",
        |dir| {
            let path = dir.join("audit.fifo");
            assert!(
                Command::new("mkfifo")
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success()
            );
            *fifo.borrow_mut() = path.clone();
            [
                "--audit",
                path.to_str().unwrap(),
                "--audit-queue",
                "4",
                "--audit-when-full",
                when_full,
            ]
            .map(str::to_owned)
            .to_vec()
        },
    );
    (gw, fifo.into_inner())
}

/// Reads every line the FIFO delivers, from a thread (opening it unblocks the writer).
fn drain(fifo: std::path::PathBuf) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let f = std::fs::File::open(fifo).unwrap();
        for line in std::io::BufReader::new(f).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn admin_metric(gw: &Gateway, name: &str) -> u64 {
    let m =
        String::from_utf8(request(gw.admin, "GET", "/metrics", &[], b"").unwrap().body).unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

/// `--audit-when-full drop`: a stuck audit destination never holds a request up; what does
/// not fit the queue is counted as dropped, and the queued records arrive once the
/// destination drains.
fn a_stuck_audit_sink_drops_and_counts_instead_of_holding_requests(engine: &str) {
    let w = world();
    let (gw, fifo) = with_stuck_audit(&w, engine, "drop");
    for _ in 0..20 {
        assert_eq!(get(&gw, "/public", None, &[]).status, 200);
    }
    // The component writes a record after its response: wait until all 20 are counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = || {
        admin_metric(&gw, "portcullis_audit_dropped_total")
            + admin_metric(&gw, "portcullis_audit_queued")
    };
    while counted() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(admin_metric(&gw, "portcullis_audit_dropped_total"), 16);
    assert_eq!(admin_metric(&gw, "portcullis_audit_queued"), 4);
    let lines = drain(fifo);
    for _ in 0..4 {
        let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
        let record: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["path"], "/public");
    }
    assert_eq!(get(&gw, "/public", None, &[]).status, 200);
    assert!(lines.recv_timeout(Duration::from_secs(10)).is_ok());
    // The writer counts a record after writing it: the reader may see the line first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_metric(&gw, "portcullis_audit_written_total") < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(admin_metric(&gw, "portcullis_audit_written_total"), 5);
}

/// `--audit-when-full block` (the default): once the queue is full no record is lost. The
/// native engine writes the record before it answers, so the request waits for room; the
/// component writes it after its response, so there the task waits (off the runtime's
/// other work) and the client already has its answer.
fn a_stuck_audit_sink_holds_requests_when_told_to_block(engine: &str) {
    let w = world();
    let (gw, fifo) = with_stuck_audit(&w, engine, "block");
    for _ in 0..4 {
        assert_eq!(get(&gw, "/public", None, &[]).status, 200);
    }
    let addr = gw.addr;
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = request(addr, "GET", "/public", &[], b"").unwrap();
        let _ = done_tx.send(r.status);
    });
    if engine == "native" {
        assert!(
            done.recv_timeout(Duration::from_secs(1)).is_err(),
            "the fifth request finished while its record had no room"
        );
    }
    // The fifth record waits for room (the gateway keeps answering the admin listener).
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_metric(&gw, "portcullis_audit_queued") != 5 {
        assert!(Instant::now() < deadline, "the fifth record never waited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = drain(fifo);
    assert_eq!(done.recv_timeout(Duration::from_secs(10)).unwrap(), 200);
    for _ in 0..5 {
        lines.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    assert_eq!(admin_metric(&gw, "portcullis_audit_dropped_total"), 0);
}

/// The component engine keeping each instance for several requests (`component-reuse`),
/// with a 1 s request timeout.
fn start_keeping(text: &str) -> Gateway {
    portcullis_tests::host::start_engine_args(text, "component-reuse", &[], "127.0.0.1:0", |_| {
        vec!["--request-timeout".into(), "1".into()]
    })
}

/// Waits until an instance is idle again: it goes back to the idle ones once the component
/// has returned, which may be just after the client has its response.
fn settled(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_metric(gw, "portcullis_gateway_instances_idle") < 1 {
        assert!(Instant::now() < deadline, "the instance was never kept");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `--instance-reuse`: the component engine keeps an instance whose decision returned
/// cleanly for the next requests (the configuration restored once), answers each request
/// as its own (identity, region, refusals), keeps no instance waiting on a backend, and a
/// reload brings instances of the new configuration.
#[test]
fn kept_instances_answer_each_request_as_its_own_and_are_replaced_on_reload() {
    let w = world();
    let text = config(&w.keys, &w.eu.server.url(), &w.us.server.url());
    let gw = start_keeping(&text);
    let instances = || admin_metric(&gw, "portcullis_gateway_instances_total");
    let settled = || settled(&gw);
    let idp = TestIdp::shared();
    let eu = idp.sign("ES256", live_claims(json!({"sub": "alice"})));
    let us = idp.sign(
        "ES256",
        live_claims(json!({"sub": "bob", "residency": "us"})),
    );
    // One request at a time: every one runs in the same instance, and each is answered by
    // its own token and headers only.
    for round in 0..2 {
        if round > 0 {
            settled();
        }
        let r = get(&gw, "/api/orders/1", Some(&eu), &[("x-user-id", "mallory")]);
        assert_eq!(
            r.status,
            200,
            "round {round}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json_body();
        assert_eq!(
            (
                body["backend"].as_str(),
                body["headers"]["x-user-id"].as_str()
            ),
            (Some("eu"), Some("alice"))
        );
        settled();
        let r = get(&gw, "/api/orders/2", Some(&us), &[]);
        let body = r.json_body();
        assert_eq!(
            (
                body["backend"].as_str(),
                body["headers"]["x-user-id"].as_str()
            ),
            (Some("us"), Some("bob")),
            "round {round}"
        );
        settled();
        let r = get(&gw, "/api/orders/3", None, &[("x-user-id", "alice")]);
        assert_eq!(
            (r.status, reason(&r).as_str()),
            (401, "authentication_required")
        );
        settled();
        let r = get(&gw, "/public", None, &[("x-user-id", "alice")]);
        assert_eq!(r.status, 200);
        assert!(
            r.json_body()["headers"].get("x-user-id").is_none(),
            "round {round}"
        );
    }
    assert_eq!(
        instances(),
        1,
        "eight requests one after another, one instance"
    );
    // The ninth request needs a new instance: each serves eight at most.
    assert_eq!(get(&gw, "/public", None, &[]).status, 200);
    assert_eq!(instances(), 2);
    settled();
    // The backend answers after 1.5 s, past the 1 s request deadline: the request is cut
    // (504, as on the native engine), and the instance, done once it had decided, was kept
    // for the next request: a slow backend holds no instance.
    let r = get(&gw, "/public/slow", None, &[]);
    assert_eq!((r.status, reason(&r).as_str()), (504, "backend_timeout"));
    settled();
    assert_eq!(get(&gw, "/public", None, &[]).status, 200);
    assert_eq!(
        instances(),
        2,
        "an instance was dropped for its backend's delay"
    );
    settled();
    // A reload: the kept instances hold the old configuration, new requests get new ones.
    let moved = text.replace("path = \"/public\"", "path = \"/open\"");
    std::fs::write(gw.dir.join("gateway.toml"), moved).unwrap();
    let r = request(gw.admin, "POST", "/reload", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(&gw, "/open", None, &[]).status, 200);
    settled();
    assert_eq!(get(&gw, "/public", None, &[]).status, 404);
    assert_eq!(instances(), 3);
    // The native engine runs no gateway instance: asking it to keep some is refused.
    let mut native = Command::new(portcullis_tests::host::binary())
        .args(["serve", "--config"])
        .arg(gw.dir.join("gateway.toml"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--instance-reuse", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = native.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            native.kill().unwrap();
            panic!("the native engine started with --instance-reuse 2");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut native.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("--instance-reuse applies to --engine component"),
        "{stderr}"
    );
}

/// `--instance-reuse`: a kept instance whose decision was cut by the request deadline is
/// dropped, never kept for the next request (it stopped mid-decision, its state unknown).
/// The decision waits in the host's key service: the token names a `kid` the key set lacks,
/// and the key server answers the refetch after the 1 s request timeout.
#[test]
fn a_kept_instance_whose_decision_was_cut_is_not_kept_again() {
    let w = world();
    let text = config(&w.keys, &w.eu.server.url(), &w.us.server.url());
    let gw = start_keeping(&text);
    let instances = || admin_metric(&gw, "portcullis_gateway_instances_total");
    let idle = || admin_metric(&gw, "portcullis_gateway_instances_idle");
    let settled = || settled(&gw);
    let idp = TestIdp::shared();
    let token = idp.sign("ES256", live_claims(json!({"sub": "alice"})));
    assert_eq!(get(&gw, "/api/orders", Some(&token), &[]).status, 200);
    settled();
    assert_eq!(instances(), 1);
    // The kept instance takes the next request, whose decision waits on the refetch.
    w.keys.jwks_delay_ms.store(2_000, Ordering::SeqCst);
    let fetched = w.keys.jwks_fetches.load(Ordering::SeqCst);
    let unknown = idp.forge_es256(
        &json!({"alg": "ES256", "kid": "not-yet-published"}),
        &live_claims(json!({})),
    );
    let r = get(&gw, "/api/orders", Some(&unknown), &[]);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (504, "backend_timeout"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        w.keys.jwks_fetches.load(Ordering::SeqCst),
        fetched + 1,
        "the decision was not waiting on the key set's refetch"
    );
    assert_eq!(instances(), 1, "the cut request ran in the kept instance");
    // The next request needs a new instance: the cut one was dropped.
    w.keys.jwks_delay_ms.store(0, Ordering::SeqCst);
    let r = get(&gw, "/api/orders", Some(&token), &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        instances(),
        2,
        "an instance whose decision was cut was kept for the next request"
    );
    settled();
    assert_eq!(idle(), 1);
}

/// A request that finds every gateway instance in use (`--max-instances 1`, the only one
/// held by a decision waiting on a key-set refetch) waits for one within its request
/// timeout, and is served, not refused: with fresh instances it takes the slot the finished
/// decision released; with kept instances (`component-reuse`) it takes the kept instance
/// itself, which holds the only slot. The wait is counted.
fn a_request_that_finds_every_instance_busy_waits_for_one(engine: &str) {
    let w = world();
    let text = config(&w.keys, &w.eu.server.url(), &w.us.server.url());
    let gw = portcullis_tests::host::start_engine_args(&text, engine, &[], "127.0.0.1:0", |_| {
        vec![
            "--max-instances".into(),
            "1".into(),
            "--request-timeout".into(),
            "5".into(),
        ]
    });
    let idp = TestIdp::shared();
    let token = idp.sign("ES256", live_claims(json!({"sub": "alice"})));
    assert_eq!(get(&gw, "/api/orders", Some(&token), &[]).status, 200);
    if engine == "component-reuse" {
        settled(&gw);
    }
    // A decision holds the only instance while the key server takes 1.5 s to answer.
    w.keys.jwks_delay_ms.store(1_500, Ordering::SeqCst);
    let fetched = w.keys.jwks_fetches.load(Ordering::SeqCst);
    let unknown = idp.forge_es256(
        &json!({"alg": "ES256", "kid": "not-yet-published"}),
        &live_claims(json!({})),
    );
    let addr = gw.addr;
    let holding = std::thread::spawn(move || {
        let auth = format!("Bearer {unknown}");
        request(addr, "GET", "/api/orders", &[("authorization", &auth)], b"").unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.keys.jwks_fetches.load(Ordering::SeqCst) == fetched {
        assert!(
            Instant::now() < deadline,
            "the first decision never asked for the key set"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        admin_metric(&gw, "portcullis_gateway_instance_waits_total"),
        0
    );
    let r = get(
        &gw,
        "/api/orders",
        Some(&token),
        &[("x-request-id", "probe-7")],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json_body()["headers"]["x-user-id"], "alice");
    let held = holding.join().unwrap();
    assert_eq!(
        (held.status, reason(&held).as_str()),
        (401, "key_not_found"),
        "{}",
        String::from_utf8_lossy(&held.body)
    );
    assert_eq!(
        admin_metric(&gw, "portcullis_gateway_instance_waits_total"),
        1
    );
    assert_eq!(admin_metric(&gw, "portcullis_host_errors_total"), 0);
    // Fresh instances: one per request. Kept: the one instance decided all three.
    let created = if engine == "component-reuse" { 1 } else { 3 };
    assert_eq!(
        admin_metric(&gw, "portcullis_gateway_instances_total"),
        created
    );
    w.keys.jwks_delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(get(&gw, "/api/orders", Some(&token), &[]).status, 200);
}

mod a_request_that_finds_every_instance_busy_waits_for_one {
    #[test]
    fn component() {
        super::a_request_that_finds_every_instance_busy_waits_for_one("component")
    }
    #[test]
    fn component_reuse() {
        super::a_request_that_finds_every_instance_busy_waits_for_one("component-reuse")
    }
}

/// `serve-wasm` (a plain wasi:http runtime, an instance per request that lives until its
/// response is sent) with `--max-instances 1`: two requests to a backend that takes 1.5 s
/// are both served, the second once the first's instance is gone, instead of failing to
/// instantiate (500 `gateway_error`).
#[test]
fn serve_wasm_waits_for_a_free_instance() {
    let w = world();
    let text = config(&w.keys, &w.eu.server.url(), &w.us.server.url());
    let gw = portcullis_tests::host::start_engine_args(&text, "bundle", &[], "127.0.0.1:0", |_| {
        vec!["--max-instances".into(), "1".into()]
    });
    let addr = gw.addr;
    let slow = || {
        std::thread::spawn(move || {
            portcullis_tests::net::request(addr, "GET", "/public/slow", &[], b"").unwrap()
        })
    };
    let (first, second) = (slow(), slow());
    for r in [first.join().unwrap(), second.join().unwrap()] {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

/// A second gateway told to listen where the first one does exits at once, and its error
/// names the option and the address it could not take, not the bare system error.
#[test]
fn a_port_in_use_is_refused_naming_the_option_and_the_address() {
    let w = world();
    let gw = start_engine(
        &config(&w.keys, &w.eu.server.url(), &w.us.server.url()),
        "native",
    );
    for (option, taken) in [("--listen", gw.addr), ("--admin", gw.admin)] {
        let (listen, admin) = if option == "--listen" {
            (taken.to_string(), "127.0.0.1:0".to_owned())
        } else {
            ("127.0.0.1:0".to_owned(), taken.to_string())
        };
        let second = Command::new(portcullis_tests::host::binary())
            .args(["serve", "--config"])
            .arg(gw.dir.join("gateway.toml"))
            .args(["--listen", &listen, "--admin", &admin, "--audit", ""])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("{option} {taken}: ")), "{stderr}");
        assert!(stderr.contains("in use"), "{stderr}");
    }
    assert_eq!(get(&gw, "/public", None, &[]).status, 200);
}

portcullis_tests::on_every_engine!(
    valid_tokens_reach_their_region_with_verified_headers_and_without_spoofed_ones,
    attacks_get_401_wrong_scope_403_and_public_routes_pass,
    key_rotation_at_the_idp_is_followed_while_serving,
    an_idp_outage_past_a_due_refresh_is_served_from_the_last_good_set,
    random_kids_cannot_storm_the_idp,
    a_cached_token_is_refused_once_its_key_set_is_too_stale,
    metrics_parse_with_the_official_python_client,
    a_stuck_audit_sink_drops_and_counts_instead_of_holding_requests,
    a_stuck_audit_sink_holds_requests_when_told_to_block,
    a_down_regional_backend_gives_503_and_never_spills_to_another_region,
    a_down_region_fails_over_within_its_jurisdiction,
    sigterm_drains_in_flight_requests,
    request_bodies_stream_to_the_backend_up_to_the_limit,
);
