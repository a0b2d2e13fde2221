//! Per-request cost of risk plugins in the native host.
//!
//! * `runtime/*`: one call of a plugin through the plugin runtime (pooled instance, its own
//!   store, deadline armed) — the plugin's own overhead.
//! * `request/*`: a whole request through the gateway component, on routes that differ only
//!   in their plugins. The backend is down, so every request ends in the same fast 503
//!   after the risk phase; the differences are the plugins' cost including the
//!   component → host crossing.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use portcullis_host::risk::RequestContext;
use portcullis_host::{Prepared, ServeOptions, prepare};
use portcullis_tests::*;
use serde_json::json;

fn plugin(name: &str) -> String {
    repo_root()
        .join("target/component/wasm32-wasip2/edge")
        .join(format!("{}.wasm", name.replace('-', "_")))
        .display()
        .to_string()
}

fn gateway(rt: &tokio::runtime::Runtime) -> Prepared {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwks.json"), TestIdp::shared().jwks().to_string()).unwrap();
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    let text = format!(
        r#"
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_file = "jwks.json"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:9"]

[residency]
missing = "eu"
anonymous = "eu"

[client]
trusted_proxies = ["127.0.0.0/8"]
ip_header = "x-forwarded-for"
country_header = "cf-ipcountry"

[plugin.trivial]
path = "{trivial}"
headers = ["x-risk"]

[plugin.travel]
path = "{travel}"

[plugin.stuffing]
path = "{stuffing}"
headers = ["x-login-username"]

[plugin.reputation]
path = "{reputation}"
config = {{ deny = ["203.0.113.0/24"], deny_asns = [64512] }}

[[route]]
path = "/plain"
auth = "optional"

[[route]]
path = "/one"
auth = "optional"
risk = {{ plugins = ["trivial"], deny = 90 }}

[[route]]
path = "/three"
auth = "optional"
risk = {{ plugins = ["travel", "stuffing", "reputation"], deny = 90 }}

[audit]
subject_key_file = "audit.key"
"#,
        trivial = plugin("fixture-plugin-trivial"),
        travel = plugin("impossible-travel"),
        stuffing = plugin("credential-stuffing"),
        reputation = plugin("ip-reputation"),
    );
    let loaded = portcullis_host::load_config_text(text, "bench.toml", &dir).unwrap();
    let opts = ServeOptions {
        audit: String::new(),
        cache_dir: None,
        ..ServeOptions::default()
    };
    rt.block_on(prepare(loaded, &opts)).unwrap()
}

fn request(
    path: &str,
    token: &str,
) -> http::Request<http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://gateway.local{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-forwarded-for", "198.51.100.7")
        .header("cf-ipcountry", "DE")
        .header("x-login-username", "alice")
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    // One thread: every piece of work of a request (including what the component does after
    // the response, e.g. `observe` and the audit record) is counted, without cross-thread
    // wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prepared = gateway(&rt);
    let gw = prepared.gateway.clone();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let token = TestIdp::shared().sign("ES256", live_claims(json!({"exp": unix_now() + 86_400})));
    let call = |gw: &Arc<portcullis_host::serve::server::Gateway>, path: &str| {
        rt.block_on(async {
            let resp = gw.handle(peer, request(path, &token)).await;
            let status = resp.status().as_u16();
            resp.into_body().collect().await.unwrap();
            status
        })
    };
    // The first request finds the backend down; from then on every route answers 503 at the
    // routing phase, after authentication and risk.
    call(&gw, "/plain");
    for path in ["/plain", "/one", "/three"] {
        assert_eq!(call(&gw, path), 503, "{path}");
    }

    let mut group = c.benchmark_group("plugins");
    let runtime = &prepared.shared.risk;
    let ctx = RequestContext {
        request_id: "bench".into(),
        route: "/one".into(),
        method: "GET".into(),
        path: "/one".into(),
        query: None,
        host: None,
        headers: vec![("x-risk".into(), "5".into())],
        client_ip: Some("198.51.100.7".into()),
        country: Some("DE".into()),
        asn: None,
        identity: None,
        session: None,
    };
    // Plugins are in name order: reputation 0, stuffing 1, travel 2, trivial 3.
    group.bench_function("runtime/trivial", |b| {
        b.iter(|| rt.block_on(runtime.assess(3, &ctx)).unwrap())
    });
    group.bench_function("request/no_plugin", |b| b.iter(|| call(&gw, "/plain")));
    group.bench_function("request/trivial_plugin", |b| b.iter(|| call(&gw, "/one")));
    group.bench_function("request/three_examples", |b| b.iter(|| call(&gw, "/three")));
    group.finish();
    // Instances are pooled: instantiations stay near the pool size however many calls ran.
    eprintln!(
        "{}",
        portcullis_host::metrics::Metrics::default().render(|scrape| runtime.add_metrics(scrape))
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
