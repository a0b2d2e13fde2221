//! One request through each runtime, side by side, over real loopback sockets (a new TCP
//! connection per request, so the figures include connect and the backend hop):
//!
//! * `native`: `portcullis serve --engine native`;
//! * `component`: `portcullis serve --engine component` (a gateway-component instance per
//!   request, tokens verified natively by the host);
//! * `bundle`: the self-contained edge bundle under `portcullis serve-wasm`, a plain
//!   wasi:http host (an instance per request, signatures checked inside wasm);
//! * `worker`: the Cloudflare Worker under `workerd` (one isolate kept between requests,
//!   signatures checked with WebCrypto); `worker-portable`: the same with
//!   `PORTCULLIS_VERIFY = "portable"` (pure Rust inside wasm).
//!
//! `cached`: the same ES256 token every time (the hosts' verified-token cache answers);
//! `uncached`: a fresh ES256 token per request (a signature check every time). A bundle
//! has no cache that outlives its per-request instance, and the worker keeps no
//! verified-token cache (only imported keys), so their `cached` rows verify as well.
//!
//! Needs the release binary: `cargo build --release -p portcullis` first.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis_tests::host::{Gateway, start_bundle, start_engine};
use portcullis_tests::net::{Backend, KeyServer, request};
use portcullis_tests::*;
use serde_json::json;

fn config(keys: &KeyServer, backend: &str) -> String {
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

[identity]
headers = {{ "x-user-id" = "sub" }}

[audit]
subject_key_file = "audit.key"
"#,
        keys = keys.server.url()
    )
}

fn token(sub: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    TestIdp::shared().sign(
        "ES256",
        claims(json!({"sub": format!("user-{sub}"), "iat": now, "exp": now + 3600})),
    )
}

fn call(gw: &Gateway, token: &str) {
    let auth = format!("Bearer {token}");
    let r = request(
        gw.addr,
        "GET",
        "/api/orders",
        &[("authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn runtimes(c: &mut Criterion) {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let text = config(&keys, &backend.server.url());
    let gateways = [
        ("native", start_engine(&text, "native")),
        ("component", start_engine(&text, "component")),
        ("bundle", start_bundle(&text, &[]).0),
        (
            "worker",
            portcullis_tests::workerd::start_worker(&text, &[]),
        ),
        (
            "worker-portable",
            portcullis_tests::workerd::start_worker_with(
                &text,
                &[],
                &[("PORTCULLIS_VERIFY", "portable")],
            ),
        ),
    ];
    let cached = token(0);
    let mut n = 1u64;
    let mut g = c.benchmark_group("runtime");
    for (name, gw) in &gateways {
        call(gw, &cached);
        g.bench_function(format!("{name}/cached"), |b| b.iter(|| call(gw, &cached)));
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    token(n)
                },
                |t| call(gw, &t),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = runtimes
}
criterion_main!(benches);
