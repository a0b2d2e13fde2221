//! Stateful conformance on the edge bundle: its shared state is the runtime's standard
//! `wasi:keyvalue` store, which `portcullis serve-wasm` provides in its memory (every
//! instance of the process: each request runs in a fresh one) or in Redis (every process
//! pointed at the server). Rate limits, DPoP replay checks and their fail-closed answers
//! match the native engine's over real sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_tests::host::{Gateway, bundle, bundle_with, reason, serve_wasm, start_engine};
use portcullis_tests::interop::tool;
use portcullis_tests::net::{Backend, KeyServer, Resp, raw_request, request};
use portcullis_tests::redis::{Redis, RedisCluster};
use portcullis_tests::workerd::{start_worker, start_worker_pair};
use portcullis_tests::*;
use serde_json::json;

/// The authority DPoP proofs name (sent as `Host` to every instance).
const AUTHORITY: &str = "edge.test";

/// A limited route (3 requests, then one per 20 s), a per-address one (2, then one an
/// hour), a DPoP route, and `[state] on_unavailable = policy`.
fn config(keys: &KeyServer, backend: &str, policy: &str) -> String {
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

[dpop]
scheme = "http"
max_age = "60s"

[state]
on_unavailable = "{policy}"

[audit]
subject_key_file = "audit.key"

[[route]]
path = "/limited"
auth = "public"
[[route.rate_limit]]
key = "route"
rate = 3
per = "1m"

[[route]]
path = "/per-ip"
auth = "public"
[[route.rate_limit]]
key = "ip"
rate = 2
per = "1h"

[[route]]
path = "/dpop"
issuers = ["main"]
require_dpop = true
"#,
        keys = keys.server.url()
    )
}

struct World {
    _keys: KeyServer,
    _backend: Backend,
    text: String,
}

fn world(policy: &str) -> World {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let text = config(&keys, &backend.server.url(), policy);
    World {
        _keys: keys,
        _backend: backend,
        text,
    }
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(gw.addr, "GET", path, headers, b"").unwrap()
}

/// A DPoP-bound token and a maker of proofs for `GET http://edge.test/dpop/1`.
struct DpopClient {
    private: String,
    bound: String,
}

impl DpopClient {
    fn new() -> Self {
        let key: serde_json::Value =
            serde_json::from_str(&tool(&["keys", "client-key"]).unwrap()).unwrap();
        let private = key["private"].to_string();
        let jkt = tool(&["thumbprint", &private]).unwrap();
        let bound = TestIdp::shared().sign("ES256", live_claims(json!({"cnf": {"jkt": jkt}})));
        Self { private, bound }
    }

    fn proof(&self) -> String {
        let url = format!("http://{AUTHORITY}/dpop/1");
        tool(&["dpop", &self.private, "GET", &url, &self.bound, "0"]).unwrap()
    }

    /// Sends `proof` to `addr` with `Host: edge.test`.
    fn send(&self, addr: std::net::SocketAddr, proof: &str) -> Resp {
        let wire = format!(
            "GET /dpop/1 HTTP/1.1\r\nhost: {AUTHORITY}\r\nconnection: close\r\nauthorization: DPoP {}\r\ndpop: {proof}\r\n\r\n",
            self.bound
        );
        raw_request(addr, wire.as_bytes()).unwrap()
    }
}

/// (status, reason) of each of `n` requests.
fn run(gw: &Gateway, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<(u16, String)> {
    (0..n)
        .map(|_| {
            let r = get(gw, path, headers);
            (r.status, reason(&r))
        })
        .collect()
}

fn ok() -> (u16, String) {
    (200, String::new())
}

fn limited() -> (u16, String) {
    (429, "rate_limited".to_owned())
}

/// Every request to a bundle runs in a fresh instance, and a worker keeps its buckets in
/// Durable Objects; the limit holds, and the answers (429 `rate_limited`, `Retry-After`,
/// the `RateLimit` headers) are the native engine's.
#[test]
fn edge_runtimes_keep_rate_limits_like_the_native_engine() {
    let w = world("deny");
    let b = bundle(&w.text, &[]);
    let edge = serve_wasm(&b.wasm, &[]);
    // The same bundle told that its runtime names the connecting address in
    // `spin-client-addr` (Spin and serve-wasm do).
    let spin_like = w.text.replace(
        "[client]\n",
        "[client]\npeer_header = \"spin-client-addr\"\n",
    );
    let with_peer = bundle(&spin_like, &[]);
    let edge_with_peer = serve_wasm(&with_peer.wasm, &[]);
    let native = start_engine(&w.text, "native");
    let worker = start_worker(&w.text, &[]);
    for (name, gw) in [
        ("native", &native),
        ("bundle", &edge),
        ("bundle+peer_header", &edge_with_peer),
        ("worker", &worker),
    ] {
        assert_eq!(
            run(gw, "/limited/x", &[], 4),
            [ok(), ok(), ok(), limited()],
            "{name}"
        );
        let r = get(gw, "/limited/x", &[]);
        assert_eq!(r.status, 429, "{name}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=20).contains(&retry), "{name}: retry-after {retry}");
        assert!(
            r.header("ratelimit-policy").is_some(),
            "{name}: {:?}",
            r.headers
        );
        // Per-address limits: a second address has a bucket of its own where the client's
        // address is known. wasi:http does not tell a component who is connected (unless
        // the runtime's own header is named: `peer_header`), and a worker outside
        // Cloudflare has no `cf` object to trust CF-Connecting-IP by, so those count every
        // client of a per-address limit in one bucket (tighter, never looser).
        let one = [("x-forwarded-for", "192.0.2.1")];
        let two = [("x-forwarded-for", "192.0.2.2")];
        assert_eq!(
            run(gw, "/per-ip/x", &one, 3),
            [ok(), ok(), limited()],
            "{name}"
        );
        let known = matches!(name, "native" | "bundle+peer_header");
        let other = if known { ok() } else { limited() };
        assert_eq!(run(gw, "/per-ip/x", &two, 1), [other], "{name}");
    }
    // serve-wasm replaces a `spin-client-addr` the client sends: a client claiming an
    // untrusted peer (which would make its own X-Forwarded-For ignored and each claim a
    // bucket of its own) still counts as the address its trusted proxy named.
    let spoofed = |n: u8| {
        let claim = format!("198.51.100.{n}:1");
        let r = request(
            edge_with_peer.addr,
            "GET",
            "/per-ip/x",
            &[
                ("x-forwarded-for", "192.0.2.60"),
                ("spin-client-addr", &claim),
            ],
            b"",
        )
        .unwrap();
        (r.status, reason(&r))
    };
    assert_eq!(
        [spoofed(1), spoofed(2), spoofed(3)],
        [ok(), ok(), limited()]
    );
}

/// Two instances `one` and `two` sharing one state: one limit of 3 (alternating between
/// them, the fourth request is refused) and one replay cache (a DPoP proof accepted at
/// `one` is refused at `two`; a fresh proof passes there).
fn share_limits_and_replay_checks(one: std::net::SocketAddr, two: std::net::SocketAddr) {
    let answers: Vec<(u16, String)> = [one, two, one, two]
        .into_iter()
        .map(|addr| {
            let r = request(addr, "GET", "/limited/x", &[], b"").unwrap();
            (r.status, reason(&r))
        })
        .collect();
    assert_eq!(answers, [ok(), ok(), ok(), limited()]);
    let client = DpopClient::new();
    let proof = client.proof();
    let first = client.send(one, &proof);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let replayed = client.send(two, &proof);
    assert_eq!(
        (replayed.status, reason(&replayed).as_str()),
        (401, "dpop_proof_invalid"),
        "{}",
        String::from_utf8_lossy(&replayed.body)
    );
    let fresh = client.send(two, &client.proof());
    assert_eq!(
        fresh.status,
        200,
        "{}",
        String::from_utf8_lossy(&fresh.body)
    );
}

/// Two `serve-wasm` processes running the same bundle on one Redis server share one limit
/// and one replay cache: a DPoP proof accepted at one is refused at the other.
#[test]
fn two_bundle_processes_on_one_redis_share_limits_and_replay_checks() {
    let redis = Redis::start();
    let w = world("deny");
    let b = bundle(&w.text, &[]);
    let url = redis.url();
    let one = serve_wasm(&b.wasm, &["--state", &url]);
    let two = serve_wasm(&b.wasm, &["--state", &url]);
    share_limits_and_replay_checks(one.addr, two.addr);
    // The state is in Redis, under serve-wasm's prefix and the store's name.
    // (the limit's bucket and the proof's `jti` at least: the reply starts `*<count>`).
    let listed = redis.command("KEYS portcullis:kv/default/*").unwrap();
    let count: usize = listed.trim_start_matches('*').parse().unwrap();
    assert!(count >= 2, "{listed}");
}

/// `serve-wasm --state-config` takes a `[state]` table with a gateway configuration's keys
/// and checks: two processes on a 3-primary Redis Cluster share one limit and one replay
/// cache; a file with a mistake is refused at startup, located.
#[test]
fn two_bundle_processes_on_a_redis_cluster_share_limits_and_replay_checks() {
    let cluster = RedisCluster::start(3);
    let w = world("deny");
    let b = bundle(&w.text, &[]);
    let dir =
        std::env::temp_dir().join(format!("portcullis-state-config-{}", cluster.nodes[0].port));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.toml");
    std::fs::write(
        &file,
        format!(
            "[state]\nbackend = \"redis\"\ncluster = {}\ntimeout = \"1s\"\n",
            cluster.seeds()
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let one = serve_wasm(&b.wasm, &["--state-config", path]);
    let two = serve_wasm(&b.wasm, &["--state-config", path]);
    share_limits_and_replay_checks(one.addr, two.addr);
    let stored: usize = cluster
        .nodes
        .iter()
        .map(|n| {
            n.keys()
                .iter()
                .filter(|k| k.starts_with("portcullis:kv/default/"))
                .count()
        })
        .sum();
    assert!(stored >= 2, "{stored}");

    std::fs::write(
        &file,
        "[state]\nbackend = \"redis\"\nsentinels = [\"redis://127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(portcullis_tests::host::binary())
        .args(["serve-wasm", "--listen", "127.0.0.1:0", "--component"])
        .arg(&b.wasm)
        .args(["--state-config", path])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("state.toml:1:1") && err.contains("`state.service` is required"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two worker isolates (two workers in one workerd) bound to one Durable Object namespace
/// share one limit, one replay cache and the fetched key set.
#[test]
fn two_worker_isolates_on_one_durable_object_namespace_share_limits_and_replay_checks() {
    let w = world("deny");
    let (one, second) = start_worker_pair(&w.text, &[]);
    share_limits_and_replay_checks(one.addr, second);
    // The second isolate used the key set the first one fetched and stored.
    let fetched = w
        ._keys
        .jwks_fetches
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetched, 1, "one key-set fetch for both isolates");
}

/// A bundle whose store is unreachable follows `on_unavailable` as the native engine does:
/// `"deny"` refuses limited routes and DPoP proofs with 503 `state_unavailable` (never a
/// 401 calling a fresh proof a replay); `"allow"` lets both through.
#[test]
fn a_bundle_whose_store_is_unreachable_follows_on_unavailable() {
    let closed = format!("redis://127.0.0.1:{}/0", portcullis_tests::net::free_port());
    let client = DpopClient::new();
    for (policy, limited_answer, dpop_answer) in [
        (
            "deny",
            (503, "state_unavailable"),
            (503, "state_unavailable"),
        ),
        ("allow", (200, ""), (200, "")),
    ] {
        let w = world(policy);
        let b = bundle(&w.text, &[]);
        let gw = serve_wasm(&b.wasm, &["--state", &closed]);
        let r = get(&gw, "/limited/x", &[]);
        assert_eq!(
            (r.status, reason(&r).as_str()),
            limited_answer,
            "{policy}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let r = client.send(gw.addr, &client.proof());
        assert_eq!(
            (r.status, reason(&r).as_str()),
            dpop_answer,
            "{policy}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// The edge runtimes keep no backend health: a region whose backend is down is refused
/// (502/503 `backend_unavailable`, as the native engine answers a first failure), and the
/// request never spills to a backend of another jurisdiction.
#[test]
fn a_down_backend_is_refused_on_every_runtime_and_never_spills_to_another_region() {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let us = Backend::start("us");
    let down = format!("http://127.0.0.1:{}", portcullis_tests::net::free_port());
    let text = config(&keys, &down, "deny").replace(
        "[residency]",
        &format!(
            "[region.us]\njurisdiction = \"US\"\nbackends = [\"{}\"]\n\n[residency]",
            us.server.url()
        ),
    );
    let b = bundle(&text, &[]);
    let edge = serve_wasm(&b.wasm, &[]);
    let native = start_engine(&text, "native");
    let worker = start_worker(&text, &[]);
    let mut answers = Vec::new();
    for (name, gw) in [("native", &native), ("bundle", &edge), ("worker", &worker)] {
        let r = get(gw, "/limited/x", &[]);
        assert!(
            [502, 503].contains(&r.status) && reason(&r) == "backend_unavailable",
            "{name}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        answers.push((name, r.status));
    }
    assert_eq!(
        us.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the other jurisdiction: {answers:?}"
    );
}

/// Risk plugins composed into a bundle keep their state in the runtime's store too, apart
/// from the gateway's keys (under `plugin/`): impossible travel is caught across instances
/// (a fresh one per request) and across two processes on one Redis.
#[test]
fn bundled_plugins_keep_state_in_the_store_apart_from_the_gateways_keys() {
    let redis = Redis::start();
    let w = world("deny");
    let plugin = std::path::Path::new(env!("PORTCULLIS_PLUGIN_DIR")).join("impossible_travel.wasm");
    let text = w.text.replace(
        "[client]\n",
        "[client]\npeer_header = \"spin-client-addr\"\ncountry_header = \"cf-ipcountry\"\n",
    ) + &format!(
        r#"
[plugin.impossible-travel]
path = "{}"
deadline = "1s"
config = {{ action = "deny", score = 100 }}

[[route]]
path = "/travel"
issuers = ["main"]
risk = {{ plugins = ["impossible-travel"], deny = 90 }}
"#,
        plugin.display()
    );
    let b = bundle(&text, &[]);
    let url = redis.url();
    let one = serve_wasm(&b.wasm, &["--state", &url]);
    let two = serve_wasm(&b.wasm, &["--state", &url]);
    let alice = TestIdp::shared().sign("ES256", live_claims(json!({"sub": "alice"})));
    let auth = format!("Bearer {alice}");
    let from = |gw: &Gateway, country: &str| {
        let r = get(
            gw,
            "/travel/x",
            &[("authorization", &auth), ("cf-ipcountry", country)],
        );
        (r.status, reason(&r))
    };
    assert_eq!(from(&one, "DE"), ok());
    assert_eq!(
        from(&two, "AU"),
        (403, "risk_denied".to_owned()),
        "{:?}",
        portcullis_tests::host::bundle_audit(&two)
    );
    let listed = redis
        .command("KEYS portcullis:kv/default/plugin/*")
        .unwrap();
    let count: usize = listed.trim_start_matches('*').parse().unwrap();
    assert!(
        count >= 1,
        "the plugin's sighting is under plugin/: {listed}"
    );
}

/// `portcullis bundle --wide-arithmetic` (a gateway built with 128-bit multiplies) gives
/// the default bundle's answers for every signature algorithm, its key set fetched at run
/// time: valid tokens pass, a signature made by another key or over another payload is
/// refused, and an RSA key is built when a token first needs it (the lazy form) without
/// changing what it accepts.
#[test]
fn a_wide_arithmetic_bundle_gives_the_default_bundles_answers() {
    let w = world("deny");
    let text = w.text.replace(
        "algorithms = [\"ES256\"]",
        "algorithms = [\"ES256\", \"ES384\", \"RS256\", \"PS256\", \"EdDSA\"]",
    );
    assert_ne!(text, w.text);
    let text = text.replace(
        "[[route]]\npath = \"/dpop\"",
        "[[route]]\npath = \"/api\"\n[[route]]\npath = \"/dpop\"",
    );
    let plain = bundle(&text, &[]);
    let wide = bundle_with(&text, &[], &["--wide-arithmetic"]);
    assert!(wide.printed.contains("wide arithmetic"), "{}", wide.printed);
    let plain_gw = serve_wasm(&plain.wasm, &[]);
    let wide_gw = serve_wasm(&wide.wasm, &[]);
    let idp = TestIdp::shared();
    let other = TestIdp::generate();
    let mut cases: Vec<(String, String, (u16, &str))> = Vec::new();
    for alg in ["ES256", "ES384", "RS256", "PS256", "EdDSA"] {
        let good = idp.sign(alg, live_claims(json!({})));
        cases.push((format!("{alg} valid"), good.clone(), (200, "")));
        // Signed by another key with the same kid.
        let forged = other.sign(alg, live_claims(json!({})));
        cases.push((
            format!("{alg} other key"),
            forged,
            (401, "signature_invalid"),
        ));
        // The signature of another payload.
        let other_payload = idp.sign(alg, live_claims(json!({"sub": "someone-else"})));
        let mut parts: Vec<&str> = good.split('.').collect();
        let sig = other_payload.rsplit('.').next().unwrap();
        parts[2] = sig;
        cases.push((
            format!("{alg} swapped signature"),
            parts.join("."),
            (401, "signature_invalid"),
        ));
    }
    for (name, token, (status, why)) in &cases {
        let auth = format!("Bearer {token}");
        for (gw_name, gw) in [("default", &plain_gw), ("wide", &wide_gw)] {
            let r = get(gw, "/api/orders", &[("authorization", &auth)]);
            assert_eq!(
                (r.status, reason(&r).as_str()),
                (*status, *why),
                "{gw_name} bundle, {name}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
}

/// The store key serve-wasm gives a bundle's `wasi:keyvalue` key in Redis.
fn redis_key(key: &str) -> String {
    format!("portcullis:kv/default/{key}")
}

/// A value as the bundle's store envelope holds it: `pcx1`, the expiry (Unix ms), the value.
fn envelope(expires_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut out = b"pcx1".to_vec();
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Edge bundle instances (one per request) share verified tokens through the store: an
/// entry is believed only when sealed with the configuration's key (here minted by the test,
/// which holds the audit secret and the configuration, to show the path is taken), never
/// when a byte of it was changed by whoever can write the store, and never after the
/// issuer's key set changed. `verified_token_cache = false` shares nothing.
#[test]
fn bundle_instances_share_verified_tokens_sealed_and_tied_to_the_key_set() {
    use portcullis_core::verified::{self, Entry, SealKey};
    let redis = Redis::start();
    let w = world("deny");
    let text = format!(
        "{}\n[identity]\nheaders = {{ \"x-user-id\" = \"sub\" }}\n",
        w.text.replace(
            "[[route]]\npath = \"/dpop\"",
            "[[route]]\npath = \"/api\"\n[[route]]\npath = \"/dpop\""
        )
    );
    let b = bundle(&text, &[]);
    let url = redis.url();
    let gw = serve_wasm(&b.wasm, &["--state", &url]);
    let idp = TestIdp::shared();
    let user_seen = |token: &str| -> String {
        let r = get(
            &gw,
            "/api/me",
            &[("authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let last = w._backend.last.lock().unwrap().clone().unwrap();
        last.headers
            .iter()
            .find(|(k, _)| k == "x-user-id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };

    // A verified token leaves a sealed entry under its hash.
    let alice = idp.sign("ES256", live_claims(json!({"sub": "alice"})));
    assert_eq!(user_seen(&alice), "alice");
    let stored = redis
        .get_bytes(&redis_key(&verified::store_key(&alice)))
        .expect("an entry for the verified token");
    assert!(stored.starts_with(b"pcx1"), "{stored:?}");
    assert_eq!(stored.get(12..16), Some(b"pvt1".as_slice()));

    // An entry sealed with this configuration's key is what an instance believes: the
    // key is derived from the audit secret and the configuration snapshot.
    let snapshot = String::from_utf8(
        std::process::Command::new(portcullis_tests::host::binary())
            .args(["snapshot", "--config"])
            .arg(b.dir.join("gateway.toml"))
            .args(["-o", "-"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let snapshot = portcullis_core::b64::decode(snapshot.trim()).unwrap();
    let files = portcullis_core::MapFiles::default().with("audit.key", b64(&AUDIT_KEY));
    let cfg = portcullis_core::config::load(&text, "edge.toml", &files).unwrap();
    let seal = SealKey::derive(&cfg.audit.subject_key, &snapshot).unwrap();
    let set = |jwks: &serde_json::Value| {
        let parsed = portcullis_core::jwk::parse_jwks(jwks.to_string().as_bytes()).unwrap();
        portcullis_core::keyset::KeySet::prepare(parsed, &portcullis_core::PortableVerifier)
            .fingerprint()
    };
    let now_ms = unix_now() * 1000;
    let mint = |token: &str, sub: &str, key_set: [u8; 32]| -> Vec<u8> {
        let entry = Entry {
            issuer: portcullis_core::IssuerId(0),
            valid_until_ms: now_ms + 120_000,
            key_set,
            claims: live_claims(json!({"sub": sub})).to_string(),
        };
        envelope(
            now_ms + 120_000,
            &verified::seal(&seal, token, &entry).unwrap(),
        )
    };
    let bob = idp.sign("ES256", live_claims(json!({"sub": "bob"})));
    let bob_key = redis_key(&verified::store_key(&bob));
    let before = set(&idp.jwks());
    assert!(redis.set_bytes(&bob_key, &mint(&bob, "minted", before)));
    assert_eq!(user_seen(&bob), "minted", "the shared entry is used");

    // One byte changed anywhere in the sealed part: not believed, the token is checked.
    let mut tampered = mint(&bob, "minted", before);
    let last = tampered.len() - 40;
    tampered[last] ^= 1;
    assert!(redis.set_bytes(&bob_key, &tampered));
    assert_eq!(user_seen(&bob), "bob");
    // Alice's genuine entry moved under Bob's key: not believed either.
    assert!(redis.set_bytes(&bob_key, &stored));
    assert_eq!(user_seen(&bob), "bob");

    // The issuer's key set changes (a new key appears, found through an unknown `kid`):
    // entries made under the old set are dropped.
    assert!(redis.set_bytes(&bob_key, &mint(&bob, "minted", before)));
    assert_eq!(user_seen(&bob), "minted");
    let other = TestIdp::generate();
    let mut rotated = idp.jwks();
    let mut new_key = public_jwk(&other.es256.public_key().to_jwk(), "ES256");
    new_key["kid"] = json!("es-2");
    rotated["keys"].as_array_mut().unwrap().push(new_key);
    *w._keys.jwks.lock().unwrap() = rotated.clone();
    let carol = other.forge_es256(
        &json!({"alg": "ES256", "kid": "es-2", "typ": "JWT"}),
        &live_claims(json!({"sub": "carol"})),
    );
    assert_eq!(user_seen(&carol), "carol");
    assert_ne!(set(&rotated), before);
    assert_eq!(user_seen(&bob), "bob", "an entry from the old key set");

    // Turned off: nothing is shared.
    let off = text.replace("[state]\n", "[state]\nverified_token_cache = false\n");
    assert_ne!(off, text);
    let b_off = bundle(&off, &[]);
    let gw_off = serve_wasm(&b_off.wasm, &["--state", &url]);
    let dave = idp.sign("ES256", live_claims(json!({"sub": "dave"})));
    let r = get(
        &gw_off,
        "/api/me",
        &[("authorization", &format!("Bearer {dave}"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        redis.get_bytes(&redis_key(&verified::store_key(&dave))),
        None
    );
}

/// The harness itself: a worker asked for a port another server already listens on does
/// not count that server as the worker (it answered in the worker's place once, a "Not
/// Found" page in a login test); starting fails instead.
#[test]
fn a_worker_on_a_taken_port_is_never_mistaken_for_the_server_there() {
    let w = world("deny");
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let started =
        std::panic::catch_unwind(|| portcullis_tests::workerd::start_worker_on(&w.text, &[], port));
    let message = match started {
        Ok(gw) => panic!("a worker 'started' on a port it does not hold: {}", gw.addr),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    };
    assert!(message.contains("workerd exited"), "{message}");
    drop(squatter);
}
