//! Issue 19: the shared state over TLS (`rediss://`, a private CA in `[state] ca`). Two
//! gateways share one rate limit through a Redis server that only speaks TLS; a gateway
//! that does not trust the server's certificate reports the state unreachable and fails
//! closed (503 `state_unavailable`). Both engines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_tests::host::{get, reason};
use portcullis_tests::net::{Backend, request};
use portcullis_tests::redis::TlsRedis;
use portcullis_tests::tls::TestCa;
use portcullis_tests::{INTERNAL_ISSUER_TABLE, eu_only, internal_key_file, on_every_engine};

fn config(backend: &str, url: &str) -> String {
    format!(
        r#"{INTERNAL_ISSUER_TABLE}
{eu}
[[route]]
path = "/limited"
auth = "public"
[[route.rate_limit]]
key = "route"
rate = 2
per = "1m"
burst = 2

[state]
backend = "redis"
url = "{url}"
ca = "redis-ca.pem"
timeout = "1s"
"#,
        eu = eu_only(backend)
    )
}

fn a_limit_is_shared_through_redis_over_tls(engine: &str) {
    let ca = TestCa::new("Redis CA");
    let leaf = ca.leaf("redis", &["127.0.0.1"]);
    let redis = TlsRedis::start(&leaf.cert, &leaf.key, &ca.pem());
    let backend = Backend::start("eu");
    let files = vec![
        internal_key_file(),
        ("redis-ca.pem".to_owned(), ca.pem().into_bytes()),
    ];
    let text = config(&backend.server.url(), &redis.url());
    let a = portcullis_tests::host::start_engine_with(&text, engine, &files);
    let b = portcullis_tests::host::start_engine_with(&text, engine, &files);
    assert_eq!(get(&a, "/limited", None, &[]).status, 200);
    assert_eq!(get(&b, "/limited", None, &[]).status, 200);
    let third = get(&a, "/limited", None, &[]);
    assert_eq!((third.status, reason(&third)), (429, "rate_limited".into()));

    // A gateway that trusts another CA cannot reach it: not ready, and the limited route
    // fails closed.
    let other = TestCa::new("Someone else");
    let files = vec![
        internal_key_file(),
        ("redis-ca.pem".to_owned(), other.pem().into_bytes()),
    ];
    let c = portcullis_tests::host::start_engine_unready(&text, engine, &files, "127.0.0.1:0");
    let ready = request(c.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(ready.status, 503);
    assert!(
        String::from_utf8_lossy(&ready.body).contains("shared state unreachable"),
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    let refused = get(&c, "/limited", None, &[]);
    assert_eq!(
        (refused.status, reason(&refused)),
        (503, "state_unavailable".into())
    );
}

on_every_engine!(a_limit_is_shared_through_redis_over_tls);
