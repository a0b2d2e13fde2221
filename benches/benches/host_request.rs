//! One full request through the gateway component in the native host: a fresh instance of
//! the pre-instantiated component per request, configuration from the host, token verified
//! by the host (cached, or natively with `ring` when the cache is off), decision, and
//! either the answer or a forward to a loopback backend over a pooled connection.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use portcullis_host::{LoadedConfig, ServeOptions, prepare, serve::server::Gateway};
use portcullis_tests::net::Backend;
use portcullis_tests::*;
use serde_json::json;

fn gateway(rt: &tokio::runtime::Runtime, backend: &str, token_cache: usize) -> Arc<Gateway> {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-bench-{}-{token_cache}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwks.json"), TestIdp::shared().jwks().to_string()).unwrap();
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    let text = format!(
        "[[issuer]]\nname = \"main\"\nissuer = \"{ISSUER}\"\njwks_file = \"jwks.json\"\naudiences = [\"{AUDIENCE}\"]\nalgorithms = [\"ES256\", \"RS256\", \"EdDSA\"]\n\n[region.eu]\njurisdiction = \"EU\"\nbackends = [\"{backend}\"]\n\n[residency]\nmissing = \"eu\"\n\n[[route]]\npath = \"/api/orders\"\nscopes_any = [\"orders:read\"]\n\n[identity]\nstrip = [\"x-user-*\"]\nheaders = {{ \"x-user-id\" = \"sub\", \"x-user-region\" = \"region\" }}\n\n[audit]\nsubject_key_file = \"audit.key\"\n"
    );
    let loaded: LoadedConfig = portcullis_host::load_config_text(text, "bench.toml", &dir).unwrap();
    let opts = ServeOptions {
        audit: String::new(),
        token_cache,
        cache_dir: None,
        ..ServeOptions::default()
    };
    rt.block_on(prepare(loaded, &opts)).unwrap().gateway
}

fn request(
    token: Option<&str>,
) -> http::Request<http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>> {
    let mut b = http::Request::builder()
        .method("GET")
        .uri("http://gateway.local/api/orders/42")
        .header("accept", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backend = Backend::start("eu");
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let idp = TestIdp::shared();
    let mut group = c.benchmark_group("host_request");

    let cached = gateway(&rt, &backend.server.url(), 100_000);
    let call = |gw: &Arc<Gateway>, token: Option<&str>, want: u16| {
        rt.block_on(async {
            let resp = gw.handle(peer, request(token)).await;
            assert_eq!(resp.status().as_u16(), want);
            resp.into_body().collect().await.unwrap().to_bytes().len()
        })
    };
    let es = idp.sign("ES256", live_claims(json!({"exp": unix_now() + 86_400})));
    let no_scope = idp.sign(
        "ES256",
        live_claims(json!({"scope": "profile", "exp": unix_now() + 86_400})),
    );
    group.bench_function("deny_no_token", |b| b.iter(|| call(&cached, None, 401)));
    group.bench_function("deny_scope_cached_token_ES256", |b| {
        b.iter(|| call(&cached, Some(&no_scope), 403))
    });
    group.bench_function("forward_cached_token_ES256", |b| {
        b.iter(|| call(&cached, Some(&es), 200))
    });

    let uncached = gateway(&rt, &backend.server.url(), 0);
    for alg in ["ES256", "RS256", "EdDSA"] {
        let t = idp.sign(
            alg,
            live_claims(json!({"scope": "profile", "exp": unix_now() + 86_400})),
        );
        group.bench_function(format!("deny_scope_new_token_{alg}"), |b| {
            b.iter(|| call(&uncached, Some(&t), 403))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
