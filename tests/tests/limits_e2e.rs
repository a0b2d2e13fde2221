//! End to end: GCRA rate limits over real sockets, in memory (both engines) and in a real
//! Redis server shared by two `portcullis` processes; Redis killed and restarted under load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use portcullis_tests::host::{Gateway, get, reason, start_engine};
use portcullis_tests::net::{Backend, KeyServer, Resp, request};
use portcullis_tests::redis::Redis;
use portcullis_tests::*;
use serde_json::json;

/// A configuration with `state` as its `[state]` section body (empty: in memory).
fn config(keys: &KeyServer, backend: &str, state: &str) -> String {
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

[client]
trusted_proxies = ["127.0.0.0/8"]
ip_header = "x-forwarded-for"

[[route]]
path = "/per-ip"
auth = "public"
[[route.rate_limit]]
name = "per-ip"
key = "ip"
rate = 60
per = "1m"
burst = 3

[[route]]
path = "/per-user"
[[route.rate_limit]]
key = "subject"
rate = 2
per = "1h"
burst = 2

[[route]]
path = "/per-client"
[[route.rate_limit]]
key = "client_id"
rate = 1
per = "1h"
burst = 1

[[route]]
path = "/global"
auth = "public"
[[route.rate_limit]]
name = "global"
key = "route"
rate = 20
per = "1s"
burst = 10

[[route]]
path = "/open"
auth = "public"

[audit]
subject_key_file = "audit.key"

{state}
"#,
        keys = keys.server.url(),
    )
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers))
}

fn ip_limits_answer_429_with_retry_after_and_ratelimit_headers(engine: &str) {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let gw = start_engine(&config(&keys, &backend.server.url(), ""), engine);
    let from = |ip: &str| get(&gw, "/per-ip/x", None, &[("x-forwarded-for", ip)]);
    for left in (0..3).rev() {
        let r = from("198.51.100.7");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(header(&r, "ratelimit-policy"), "\"per-ip\";q=3;w=3");
        assert!(
            header(&r, "ratelimit").starts_with(&format!("\"per-ip\";r={left};t=")),
            "{:?}",
            r.headers
        );
    }
    let r = from("198.51.100.7");
    assert_eq!((r.status, reason(&r).as_str()), (429, "rate_limited"));
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "ratelimit-policy"), "\"per-ip\";q=3;w=3");
    assert!(header(&r, "ratelimit").starts_with("\"per-ip\";r=0;t="));
    // Another client (per address; the trusted proxy's header names it) is unaffected.
    assert_eq!(from("198.51.100.8").status, 200);
    // IPv6 clients count per /64.
    for _ in 0..3 {
        assert_eq!(from("2001:db8:1:2::a").status, 200);
    }
    assert_eq!(from("2001:db8:1:2::b").status, 429);
    assert_eq!(from("2001:db8:1:3::a").status, 200);
    // One second later one more request of the first client passes (60/min).
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(from("198.51.100.7").status, 200);
}

fn subject_limits_count_each_verified_user(engine: &str) {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let gw = start_engine(&config(&keys, &backend.server.url(), ""), engine);
    let idp = TestIdp::shared();
    let alice = idp.sign("ES256", live_claims(json!({"sub": "alice"})));
    let bob = idp.sign("ES256", live_claims(json!({"sub": "bob"})));
    for _ in 0..2 {
        let r = get(&gw, "/per-user", Some(&alice), &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = get(&gw, "/per-user", Some(&alice), &[]);
    assert_eq!((r.status, reason(&r).as_str()), (429, "rate_limited"));
    // Retry-After: one emission interval (30 minutes).
    assert_eq!(header(&r, "retry-after"), "1800");
    assert_eq!(get(&gw, "/per-user", Some(&bob), &[]).status, 200);
    // A refused token is not a subject: 401, and it does not count. Forged tokens claiming
    // carol (signed by another key under the IdP's kid) would spend her budget if the
    // limit counted claims before verification.
    let r = get(&gw, "/per-user", Some("not.a.token"), &[]);
    assert_eq!((r.status, reason(&r).as_str()), (401, "token_malformed"));
    let forger = ES256KeyPair::generate().with_key_id("es-1");
    for _ in 0..3 {
        let forged = forger
            .sign(raw_claims(live_claims(json!({"sub": "carol"}))))
            .unwrap();
        let r = get(&gw, "/per-user", Some(&forged), &[]);
        assert_eq!((r.status, reason(&r).as_str()), (401, "signature_invalid"));
    }
    let carol = idp.sign("ES256", live_claims(json!({"sub": "carol"})));
    for n in 1..=2 {
        let r = get(&gw, "/per-user", Some(&carol), &[]);
        assert_eq!(r.status, 200, "carol's request {n} of her burst of 2");
    }
    assert_eq!(get(&gw, "/per-user", Some(&carol), &[]).status, 429);
}

fn client_limits_count_each_oauth_client(engine: &str) {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let gw = start_engine(&config(&keys, &backend.server.url(), ""), engine);
    let idp = TestIdp::shared();
    let token = |sub: &str, client: serde_json::Value| {
        let mut claims = json!({"sub": sub});
        if let (Some(c), serde_json::Value::Object(extra)) = (claims.as_object_mut(), client) {
            c.extend(extra);
        }
        idp.sign("ES256", live_claims(claims))
    };
    let status = |t: &str| get(&gw, "/per-client", Some(t), &[]).status;
    assert_eq!(status(&token("alice", json!({"client_id": "app-1"}))), 200);
    // Another user of the same client shares its budget.
    assert_eq!(status(&token("bob", json!({"client_id": "app-1"}))), 429);
    assert_eq!(status(&token("alice", json!({"client_id": "app-2"}))), 200);
    // `azp` names the client when `client_id` is absent.
    assert_eq!(status(&token("carol", json!({"azp": "app-3"}))), 200);
    assert_eq!(status(&token("dave", json!({"azp": "app-3"}))), 429);
    // Tokens naming no client are not counted by this limit.
    assert_eq!(status(&token("erin", json!({}))), 200);
    assert_eq!(status(&token("erin", json!({}))), 200);
}

on_every_engine!(
    ip_limits_answer_429_with_retry_after_and_ratelimit_headers,
    subject_limits_count_each_verified_user,
    client_limits_count_each_oauth_client,
);

fn redis_config(keys: &KeyServer, backend: &str, redis: &Redis, on_unavailable: &str) -> String {
    config(
        keys,
        backend,
        &format!(
            "[state]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"100ms\"\non_unavailable = \"{on_unavailable}\"",
            redis.url()
        ),
    )
}

/// Two gateways share one Redis: one route-wide limit of 20/s, burst 10, holds across both
/// while eight client threads hammer them for two seconds.
#[test]
fn two_gateways_sharing_redis_enforce_one_global_limit() {
    let redis = Redis::start();
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let text = redis_config(&keys, &backend.server.url(), &redis, "deny");
    let a = Arc::new(start_engine(&text, "native"));
    let b = Arc::new(start_engine(&text, "component"));
    let allowed = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let refused = Arc::new(AtomicUsize::new(0));
    // Requests allowed after the first refusal: the bucket refilled (a rate, not a wall).
    let refilled = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let gw: Arc<Gateway> = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (allowed, refused, refilled) = (allowed.clone(), refused.clone(), refilled.clone());
            std::thread::spawn(move || {
                while started.elapsed() < run_for {
                    // Whether a refusal had been received before this request was sent: if
                    // so and it is allowed, the bucket refilled in between.
                    let after_a_refusal = refused.load(Ordering::SeqCst) > 0;
                    let r = request(gw.addr, "GET", "/global", &[], b"").unwrap();
                    match r.status {
                        200 => {
                            if after_a_refusal {
                                refilled.fetch_add(1, Ordering::Relaxed);
                            }
                            allowed[i % 2].fetch_add(1, Ordering::Relaxed)
                        }
                        429 => refused.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (on_a, on_b) = (
        allowed[0].load(Ordering::Relaxed),
        allowed[1].load(Ordering::Relaxed),
    );
    let total = on_a + on_b;
    // At most burst + rate × elapsed (the server's clock decides; one extra for rounding).
    let ceiling = 10.0 + 20.0 * elapsed + 1.0;
    assert!(
        (total as f64) <= ceiling,
        "{total} allowed in {elapsed:.2}s, ceiling {ceiling:.1}"
    );
    // And the limit is a rate, not a wall: requests were allowed again after the burst was
    // spent. (How many depends on how fast two busy cores send them, so no lower bound on
    // the total: the ceiling above is the property.)
    assert!(
        refilled.load(Ordering::Relaxed) > 0,
        "nothing allowed after the first refusal: {total} allowed in {elapsed:.2}s"
    );
    assert!(
        on_a > 0 && on_b > 0,
        "both gateways served: {on_a} / {on_b}"
    );
    assert!(refused.load(Ordering::Relaxed) > 0);
    eprintln!(
        "allowed {total} (a {on_a}, b {on_b}), refused {} in {elapsed:.2}s; ceiling {ceiling:.1}",
        refused.load(Ordering::Relaxed)
    );
}

fn metric(gw: &Gateway, name: &str) -> u64 {
    let text =
        String::from_utf8(request(gw.admin, "GET", "/metrics", &[], b"").unwrap().body).unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Redis killed mid-test: `on_unavailable = "deny"` refuses limited routes with 503
/// `state_unavailable`, `"allow"` lets them through; neither gateway crashes, unlimited
/// routes keep working, and both recover when Redis returns.
#[test]
fn redis_outage_follows_on_unavailable_and_recovers() {
    let mut redis = Redis::start();
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let strict = start_engine(
        &redis_config(&keys, &backend.server.url(), &redis, "deny"),
        "native",
    );
    let lenient = start_engine(
        &redis_config(&keys, &backend.server.url(), &redis, "allow"),
        "component",
    );
    let ip = |n: u8| format!("192.0.2.{n}");
    assert_eq!(
        get(&strict, "/per-ip", None, &[("x-forwarded-for", &ip(1))]).status,
        200
    );
    assert_eq!(
        get(&lenient, "/per-ip", None, &[("x-forwarded-for", &ip(2))]).status,
        200
    );

    redis.kill();
    for n in 10..15 {
        let started = Instant::now();
        let r = get(&strict, "/per-ip", None, &[("x-forwarded-for", &ip(n))]);
        assert_eq!((r.status, reason(&r).as_str()), (503, "state_unavailable"));
        // The state timeout is 100 ms; 2 s is twenty of them (room for two busy cores),
        // and far below the seconds a connect or reconnect loop without a timeout takes.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused promptly, not after a long wait: {:?}",
            started.elapsed()
        );
        let r = get(&lenient, "/per-ip", None, &[("x-forwarded-for", &ip(n))]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // Routes without limits never touch the state.
    assert_eq!(get(&strict, "/open", None, &[]).status, 200);
    // Readiness says what is missing.
    let ready = request(strict.admin, "GET", "/readyz", &[], b"").unwrap();
    let said = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 503, "{said}");
    assert!(said.starts_with("shared state unreachable: "), "{said}");
    let errors = metric(&strict, "portcullis_state_errors_total");
    assert!(
        errors >= 5,
        "{errors} state errors counted: {}",
        String::from_utf8_lossy(
            &request(strict.admin, "GET", "/metrics", &[], b"")
                .unwrap()
                .body
        )
    );

    redis.restart();
    // Redis answers again. A second later both gateways have reconnected (a failed
    // connection attempt waits 250 ms before the next): the first request passes, and the
    // lenient gateway counts again instead of letting everything through.
    std::thread::sleep(Duration::from_secs(1));
    let r = get(&strict, "/per-ip", None, &[("x-forwarded-for", &ip(99))]);
    assert_eq!(
        r.status,
        200,
        "not reconnected a second after Redis came back: {}",
        String::from_utf8_lossy(&r.body)
    );
    let ready = request(strict.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(
        (ready.status, ready.body.as_slice()),
        (200, &b"ready\n"[..])
    );
    let lenient_from = |n| get(&lenient, "/per-ip", None, &[("x-forwarded-for", &ip(n))]).status;
    assert_eq!(
        [
            lenient_from(60),
            lenient_from(60),
            lenient_from(60),
            lenient_from(60)
        ],
        [200, 200, 200, 429],
        "the lenient gateway limits again"
    );
    // Limits hold again (the restarted Redis is empty: a fresh bucket of 3).
    let from = |n| get(&strict, "/per-ip", None, &[("x-forwarded-for", &ip(n))]).status;
    assert_eq!(
        [from(50), from(50), from(50), from(50)],
        [200, 200, 200, 429]
    );
    // The gateways are alive.
    assert_eq!(
        request(strict.admin, "GET", "/healthz", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        request(lenient.admin, "GET", "/healthz", &[], b"")
            .unwrap()
            .status,
        200
    );
}

/// Plugin state lives in the shared store too: failed logins observed by one gateway's
/// credential-stuffing plugin block the network at the other gateway. (The plugin's
/// deadline is generous: its calls wait on Redis round trips, and on a loaded test machine
/// the default 5 ms is a speed check this test is not about.)
#[test]
fn plugin_state_is_shared_through_redis() {
    let redis = Redis::start();
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = portcullis_tests::net::Server::start(|req| {
        let ok = req
            .headers
            .iter()
            .any(|(k, v)| k == "x-password" && v == "secret");
        Resp::json(if ok { 200 } else { 401 }, &json!({"login": ok}))
    });
    let plugin =
        std::path::Path::new(env!("PORTCULLIS_PLUGIN_DIR")).join("credential_stuffing.wasm");
    let text = format!(
        "{}\n[plugin.stuffing]\npath = \"{}\"\nheaders = [\"x-login-username\"]\ndeadline = \"1s\"\nconfig = {{ paths = [\"/login\"], ip_threshold = 3, user_threshold = 100 }}\n\n[[route]]\npath = \"/login\"\nauth = \"public\"\nrisk = {{ plugins = [\"stuffing\"], deny = 60 }}\n",
        redis_config(&keys, &backend.url(), &redis, "deny"),
        plugin.display()
    );
    let a = start_engine(&text, "native");
    let b = start_engine(&text, "component");
    let login = |gw: &Gateway, ip: &str, password: &str| {
        request(
            gw.addr,
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
    for i in 1..=3 {
        assert_eq!(login(&a, &format!("198.51.100.{i}"), "guess").status, 401);
    }
    // `observe` runs after the response: give gateway A's plugin a moment to count.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = login(&b, "198.51.100.200", "secret");
        if r.status == 403 {
            assert_eq!(reason(&r), "risk_denied");
            break;
        }
        assert_eq!(r.status, 200);
        assert!(
            Instant::now() < deadline,
            "gateway B never saw A's failures"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another network logs in at either gateway.
    assert_eq!(login(&b, "192.0.2.10", "secret").status, 200);
    assert_eq!(login(&a, "192.0.2.11", "secret").status, 200);
}

/// A DPoP proof's replay check needs the shared state: while Redis is down (`"deny"`), a
/// fresh proof gets 503 `state_unavailable` — not a 401 calling it a replay, which would
/// send a client after the wrong fault — and passes again once Redis is back.
fn dpop_proofs_while_redis_is_down_are_unavailable_not_replays(engine: &str) {
    use portcullis_tests::interop::tool;
    let mut redis = Redis::start();
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let text = format!(
        "{}\n[dpop]\nscheme = \"http\"\nmax_age = \"60s\"\n\n[[route]]\npath = \"/dpop\"\nrequire_dpop = true\n",
        redis_config(&keys, &backend.server.url(), &redis, "deny")
    );
    let gw = start_engine(&text, engine);
    let key: serde_json::Value =
        serde_json::from_str(&tool(&["keys", "client-key"]).unwrap()).unwrap();
    let private = key["private"].to_string();
    let jkt = tool(&["thumbprint", &private]).unwrap();
    let bound = TestIdp::shared().sign("ES256", live_claims(json!({"cnf": {"jkt": jkt}})));
    let url = format!("http://{}/dpop/1", gw.addr);
    let send = || {
        let proof = tool(&["dpop", &private, "GET", &url, &bound, "0"]).unwrap();
        let auth = format!("DPoP {bound}");
        request(
            gw.addr,
            "GET",
            "/dpop/1",
            &[("authorization", &auth), ("dpop", &proof)],
            b"",
        )
        .unwrap()
    };
    let r = send();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    redis.kill();
    let r = send();
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (503, "state_unavailable"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    redis.restart();
    std::thread::sleep(Duration::from_secs(1));
    let r = send();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

on_every_engine!(dpop_proofs_while_redis_is_down_are_unavailable_not_replays);
