//! End to end, with tokens minted and checked by an independent library (Python `jwcrypto`,
//! run by the test): delegated agent tokens (RFC 8693 `act`) with intersected scopes,
//! over-privileged and unknown agents refused, the agent's workload token matched to the
//! actor, and the gateway-signed identity token verified by "a backend" through the key set
//! the gateway serves — before, during and after a key rotation. Every scenario runs on both
//! engines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::Ordering;

use portcullis_tests::host::{Gateway, audit_records, get, reason, start_engine_with};
use portcullis_tests::interop::tool;
use portcullis_tests::net::{Backend, KeyServer, request};
use portcullis_tests::*;
use serde_json::{Value, json};

struct Issuer {
    private: Value,
    jwks: Value,
}

fn issuer(kid: &str) -> Issuer {
    let v: Value = serde_json::from_str(&tool(&["keys", kid]).unwrap()).unwrap();
    Issuer {
        private: v["private"].clone(),
        jwks: v["jwks"].clone(),
    }
}

fn sign(iss: &Issuer, claims: Value) -> String {
    tool(&["sign", &iss.private.to_string(), &claims.to_string()]).unwrap()
}

fn verify(jwks: &str, token: &str) -> Result<Value, String> {
    tool(&["verify", jwks, token]).map(|s| serde_json::from_str(&s).unwrap())
}

const WORKLOAD_ISSUER: &str = "https://workload.test";

fn user_token(idp: &Issuer, extra: Value) -> String {
    let mut c = live_claims(
        json!({"sub": "alice", "scope": "orders:read orders:write payments:write profile"}),
    );
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    sign(idp, c)
}

fn workload_token(wl: &Issuer, sub: &str) -> String {
    sign(
        wl,
        json!({"iss": WORKLOAD_ISSUER, "sub": sub, "aud": "portcullis", "iat": unix_now() - 5, "exp": unix_now() + 300}),
    )
}

fn config(keys: &KeyServer, backend: &str, gateway_keys: &[&str]) -> String {
    let key_files: Vec<String> = gateway_keys
        .iter()
        .map(|k| format!("\"{k}.key\""))
        .collect();
    format!(
        r#"
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_uri = "{keys}/jwks.json"
insecure_http_jwks = true
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]

[[issuer]]
name = "workload"
issuer = "{WORKLOAD_ISSUER}"
jwks_file = "workload.jwks.json"
audiences = ["portcullis"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["{backend}"]

[residency]
missing = "eu"
anonymous = "eu"

[[route]]
path = "/api/orders"
issuers = ["main"]
scopes_any = ["orders:read"]
[route.agents]
actors = ["shopping-assistant"]
scopes = ["orders:read"]
workload_header = "x-workload-token"

[[route]]
path = "/api/payments"
issuers = ["main"]
scopes_any = ["payments:write"]
[route.agents]
scopes = ["orders:read"]

[[route]]
path = "/api/profile"
issuers = ["main"]

[[route]]
path = "/api/dpop"
issuers = ["main"]
require_dpop = true

[dpop]
scheme = "http"
max_age = "60s"

[identity]
headers = {{ "x-user-id" = "sub", "x-user-scopes" = "scope", "x-user-actor" = "actor" }}

[gateway_token]
header = "x-portcullis-identity"
issuer = "https://gateway.test"
ttl = "30s"
key_files = [{files}]

[audit]
subject_key_file = "audit.key"
"#,
        keys = keys.server.url(),
        files = key_files.join(", "),
    )
}

fn seed_file(name: &str, byte: u8) -> (String, Vec<u8>) {
    (format!("{name}.key"), b64(&[byte; 32]).into_bytes())
}

fn start_with(
    keys: &KeyServer,
    backend: &Backend,
    wl: &Issuer,
    gateway_keys: &[&str],
    engine: &str,
) -> Gateway {
    start_text(
        &config(keys, &backend.server.url(), gateway_keys),
        wl,
        engine,
    )
}

fn start_text(text: &str, wl: &Issuer, engine: &str) -> Gateway {
    start_engine_with(
        text,
        engine,
        &[
            (
                "workload.jwks.json".into(),
                wl.jwks.to_string().into_bytes(),
            ),
            seed_file("gw-1", 1),
            seed_file("gw-2", 2),
        ],
    )
}

fn last_header(backend: &Backend, name: &str) -> Option<String> {
    let last = backend.last.lock().unwrap();
    last.as_ref()?
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn delegated_agents_get_intersected_scopes_and_over_privileged_ones_are_refused(engine: &str) {
    let idp = issuer("idp-1");
    let wl = issuer("wl-1");
    let keys = KeyServer::start(idp.jwks.clone());
    let backend = Backend::start("eu");
    let gw = start_with(&keys, &backend, &wl, &["gw-1"], engine);
    let delegated = user_token(&idp, json!({"act": {"sub": "shopping-assistant"}}));
    let with_workload = |sub: &str| workload_token(&wl, sub);

    // Accepted: the backend sees the user, the actor and only the scopes agents may use here.
    let ok = get(
        &gw,
        "/api/orders/7",
        Some(&delegated),
        &[("x-workload-token", &with_workload("shopping-assistant"))],
    );
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(last_header(&backend, "x-user-id").as_deref(), Some("alice"));
    assert_eq!(
        last_header(&backend, "x-user-actor").as_deref(),
        Some("shopping-assistant")
    );
    assert_eq!(
        last_header(&backend, "x-user-scopes").as_deref(),
        Some("orders:read")
    );
    assert_eq!(
        last_header(&backend, "x-workload-token"),
        None,
        "credentials are not forwarded"
    );
    // The same user without an agent keeps all her scopes.
    let direct = user_token(&idp, json!({}));
    assert_eq!(get(&gw, "/api/orders/7", Some(&direct), &[]).status, 200);
    assert_eq!(
        last_header(&backend, "x-user-scopes").as_deref(),
        Some("orders:read orders:write payments:write profile")
    );
    // Over-privileged: the token has payments:write, agents may not use it here.
    let r = get(&gw, "/api/payments", Some(&delegated), &[]);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (403, "agent_scope_exceeded")
    );
    // Routes without an agent policy refuse agents; unknown actors are refused.
    let r = get(&gw, "/api/profile", Some(&delegated), &[]);
    assert_eq!((r.status, reason(&r).as_str()), (403, "agent_not_allowed"));
    let rogue = user_token(&idp, json!({"act": {"sub": "rogue-bot"}}));
    let r = get(&gw, "/api/orders/7", Some(&rogue), &[]);
    assert_eq!((r.status, reason(&r).as_str()), (403, "agent_not_allowed"));
    // Sub-delegation deeper than the route allows.
    let nested = user_token(
        &idp,
        json!({"act": {"sub": "shopping-assistant", "act": {"sub": "orchestrator"}}}),
    );
    let r = get(&gw, "/api/orders/7", Some(&nested), &[]);
    assert_eq!((r.status, reason(&r).as_str()), (403, "agent_not_allowed"));
    // The agent's own workload credential must name the actor.
    let r = get(
        &gw,
        "/api/orders/7",
        Some(&delegated),
        &[("x-workload-token", &with_workload("other-agent"))],
    );
    assert_eq!((r.status, reason(&r).as_str()), (403, "actor_mismatch"));
    // The audit record names both parties.
    let forwarded_agent = |a: &Value| a["decision"] == "forward" && a["actor"].is_string();
    let records = audit_records(&gw, |r| r.iter().any(forwarded_agent));
    let record = records.into_iter().find(forwarded_agent).unwrap();
    assert_eq!(record["actor"], "shopping-assistant");
    assert!(record["subject"].is_string());
}

fn backends_verify_the_gateway_token_through_the_served_key_set_across_a_rotation(engine: &str) {
    let idp = issuer("idp-1");
    let wl = issuer("wl-1");
    let keys = KeyServer::start(idp.jwks.clone());
    let backend = Backend::start("eu");
    let delegated = user_token(&idp, json!({"act": {"sub": "shopping-assistant"}}));
    let fetch_jwks = |gw: &Gateway| {
        let r = request(
            gw.addr,
            "GET",
            "/.well-known/portcullis/jwks.json",
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    };
    let minted = |gw: &Gateway| {
        assert_eq!(get(gw, "/api/orders/1", Some(&delegated), &[]).status, 200);
        last_header(&backend, "x-portcullis-identity").expect("gateway token forwarded")
    };

    // Key 1 only.
    let gw = start_with(&keys, &backend, &wl, &["gw-1"], engine);
    let jwks1 = fetch_jwks(&gw);
    let t1 = minted(&gw);
    let checked = verify(&jwks1, &t1).expect("jwcrypto verifies the gateway token");
    let c = &checked["claims"];
    assert_eq!(c["iss"], "https://gateway.test");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["act"]["sub"], "shopping-assistant");
    assert_eq!(c["aud"], backend.server.url());
    assert_eq!(c["scope"], "orders:read");
    assert_eq!(c["region"], "eu");
    let ttl = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
    assert!(ttl <= 60, "lifetime {ttl}s");
    // A client cannot smuggle its own "gateway token" to the backend: the request is served
    // and the backend receives the gateway's token in its place.
    let hits = backend.hits.load(Ordering::SeqCst);
    let r = get(
        &gw,
        "/api/orders/1",
        Some(&delegated),
        &[("x-portcullis-identity", "forged")],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(backend.hits.load(Ordering::SeqCst), hits + 1);
    let received = last_header(&backend, "x-portcullis-identity").expect("gateway token");
    assert_ne!(received, "forged");
    let checked = verify(&jwks1, &received).expect("the gateway's own token");
    assert_eq!(checked["claims"]["sub"], "alice");
    // Each token has a jti of its own (128 random bits from the runtime), also for requests
    // that carry the same client-chosen request id.
    let mut jtis = std::collections::HashSet::new();
    for _ in 0..3 {
        let r = get(
            &gw,
            "/api/orders/1",
            Some(&delegated),
            &[("x-request-id", "same-id")],
        );
        assert_eq!(r.status, 200);
        let token = last_header(&backend, "x-portcullis-identity").expect("gateway token");
        let claims = &verify(&jwks1, &token).unwrap()["claims"];
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert!(
            jti.len() == 32 && jti.bytes().all(|b| b.is_ascii_hexdigit()),
            "{jti}"
        );
        assert!(jtis.insert(jti), "a jti was minted twice");
    }
    drop(gw);

    // Rotation: key 2 signs, key 1 is still published — tokens already issued still verify.
    let gw = start_with(&keys, &backend, &wl, &["gw-2", "gw-1"], engine);
    let jwks2 = fetch_jwks(&gw);
    let t2 = minted(&gw);
    verify(&jwks2, &t1).expect("old tokens verify during the overlap");
    let h2 = verify(&jwks2, &t2).unwrap();
    assert_ne!(
        h2["header"]["kid"], checked["header"]["kid"],
        "the new key signs"
    );
    drop(gw);

    // Key 1 retired: its tokens no longer verify; the new ones do.
    let gw = start_with(&keys, &backend, &wl, &["gw-2"], engine);
    let jwks3 = fetch_jwks(&gw);
    assert!(
        verify(&jwks3, &t1).is_err(),
        "a retired key's tokens are refused"
    );
    verify(&jwks3, &t2).expect("current tokens verify");
    // A forged token (signed by the user's IdP key, not the gateway's) is refused by the backend.
    assert!(verify(&jwks3, &delegated).is_err());
}

/// `jws` with one character of its signature changed (in the middle: the last character
/// of a base64url signature may carry only padding bits).
fn tampered_signature(jws: &str) -> String {
    let (input, signature) = jws.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = signature.chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    format!("{input}.{}", sig.into_iter().collect::<String>())
}

fn dpop_proofs_from_another_library_are_accepted_and_replays_refused(engine: &str) {
    let idp = issuer("idp-1");
    let wl = issuer("wl-1");
    let client = issuer("client-key");
    let other = issuer("other-key");
    let keys = KeyServer::start(idp.jwks.clone());
    let backend = Backend::start("eu");
    let gw = start_with(&keys, &backend, &wl, &["gw-1"], engine);
    let jkt = tool(&["thumbprint", &client.private.to_string()]).unwrap();
    let bound = user_token(&idp, json!({"cnf": {"jkt": jkt}}));
    let url = format!("http://{}/api/dpop/1", gw.addr);
    let proof = |key: &Issuer, method: &str, url: &str, token: &str, offset: &str| {
        tool(&["dpop", &key.private.to_string(), method, url, token, offset]).unwrap()
    };
    let send = |token: &str, proof: Option<&str>| {
        let auth = format!("DPoP {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(p) = proof {
            headers.push(("dpop", p));
        }
        request(gw.addr, "GET", "/api/dpop/1", &headers, b"").unwrap()
    };

    let p1 = proof(&client, "GET", &url, &bound, "0");
    let ok = send(&bound, Some(&p1));
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    // The same proof again is a replay.
    let r = send(&bound, Some(&p1));
    assert_eq!((r.status, reason(&r).as_str()), (401, "dpop_proof_invalid"));
    assert!(r.json_body()["detail"].as_str().unwrap().contains("replay"));
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .starts_with("DPoP error=\"invalid_dpop_proof\"")
    );
    // Wrong method, wrong URL, stale, or signed by another key than the token is bound to.
    for bad in [
        proof(&client, "POST", &url, &bound, "0"),
        proof(
            &client,
            "GET",
            &format!("http://{}/api/other", gw.addr),
            &bound,
            "0",
        ),
        proof(&client, "GET", &url, &bound, "-600"),
        proof(&other, "GET", &url, &bound, "0"),
        proof(&client, "GET", &url, "another-token", "0"),
        // Right key, right claims, but a signature that does not verify.
        tampered_signature(&proof(&client, "GET", &url, &bound, "0")),
    ] {
        let r = send(&bound, Some(&bad));
        assert_eq!(
            (r.status, reason(&r).as_str()),
            (401, "dpop_proof_invalid"),
            "{}",
            r.json_body()
        );
    }
    // No proof at all.
    let r = send(&bound, None);
    assert_eq!((r.status, reason(&r).as_str()), (401, "dpop_proof_invalid"));
    // A bound token used as a bearer token is refused on every route.
    let r = get(&gw, "/api/profile", Some(&bound), &[]);
    assert_eq!((r.status, reason(&r).as_str()), (401, "dpop_required"));
    // This route accepts only DPoP: a plain bearer token gets the DPoP challenge.
    let plain = user_token(&idp, json!({}));
    let r = get(&gw, "/api/dpop/1", Some(&plain), &[]);
    assert_eq!((r.status, reason(&r).as_str()), (401, "dpop_required"));
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .starts_with("DPoP algs=")
    );
    // A fresh proof works again.
    let p2 = proof(&client, "GET", &url, &bound, "0");
    assert_eq!(send(&bound, Some(&p2)).status, 200);
}

fn dpop_server_nonces_are_issued_and_required(engine: &str) {
    let idp = issuer("idp-1");
    let wl = issuer("wl-1");
    let client = issuer("client-key");
    let keys = KeyServer::start(idp.jwks.clone());
    let backend = Backend::start("eu");
    let text = config(&keys, &backend.server.url(), &["gw-1"]).replace(
        "max_age = \"60s\"",
        "max_age = \"60s\"\nrequire_nonce = true",
    );
    let gw = start_text(&text, &wl, engine);
    let jkt = tool(&["thumbprint", &client.private.to_string()]).unwrap();
    let bound = user_token(&idp, json!({"cnf": {"jkt": jkt}}));
    let url = format!("http://{}/api/dpop/1", gw.addr);
    let send = |nonce: Option<&str>| {
        let mut args = vec!["dpop", "", "GET", &url, &bound, "0"];
        let private = client.private.to_string();
        args[1] = &private;
        if let Some(n) = nonce {
            args.push(n);
        }
        let proof = tool(&args).unwrap();
        let auth = format!("DPoP {bound}");
        request(
            gw.addr,
            "GET",
            "/api/dpop/1",
            &[("authorization", &auth), ("dpop", &proof)],
            b"",
        )
        .unwrap()
    };
    let first = send(None);
    assert_eq!(
        (first.status, reason(&first).as_str()),
        (401, "dpop_nonce_required")
    );
    assert!(
        first
            .header("www-authenticate")
            .unwrap()
            .contains("use_dpop_nonce")
    );
    let nonce = first
        .header("dpop-nonce")
        .expect("a DPoP-Nonce header")
        .to_owned();
    let wrong = send(Some("made-up"));
    assert_eq!(reason(&wrong), "dpop_nonce_required");
    let ok = send(Some(&nonce));
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
}

portcullis_tests::on_every_runtime!(
    dpop_proofs_from_another_library_are_accepted_and_replays_refused,
    backends_verify_the_gateway_token_through_the_served_key_set_across_a_rotation,
);
portcullis_tests::on_every_engine!(
    dpop_server_nonces_are_issued_and_required,
    delegated_agents_get_intersected_scopes_and_over_privileged_ones_are_refused,
);
