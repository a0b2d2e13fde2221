//! The decision pipeline end to end (normalize → authenticate → authorize → route →
//! record) on the standard test configuration, with tokens minted by jwt-simple.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_core::config::RegionId;
use portcullis_core::{
    BackendHealth, BackendId, Decision, Forward, Outcome, RequestParts, Response, Timestamp,
};
use portcullis_tests::*;
use serde_json::{Value, json};

fn forward(d: &Decision) -> &Forward {
    match &d.outcome {
        Outcome::Forward(f) => f,
        Outcome::Respond(r) => panic!(
            "expected a forward, got {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ),
    }
}

fn response(d: &Decision) -> &Response {
    match &d.outcome {
        Outcome::Respond(r) => r,
        Outcome::Forward(f) => panic!("expected a response, got a forward to {:?}", f.backend),
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap())
}

fn set_header<'a>(f: &'a Forward, name: &str) -> Option<&'a str> {
    f.set_headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn valid_tokens_of_every_algorithm_reach_the_home_region_with_verified_headers() {
    let h = Harness::new();
    for alg in ["ES256", "ES384", "RS256", "PS256", "EdDSA"] {
        let token = h
            .idp
            .sign(alg, claims(json!({"sub": format!("user-{alg}")})));
        let d = h.get_with_token("/api/orders/42?expand=items", &token);
        let f = forward(&d);
        assert_eq!(f.backend.region, RegionId(0), "{alg} → eu");
        assert_eq!(f.path_and_query, "/api/orders/42?expand=items");
        assert_eq!(
            set_header(f, "x-user-id"),
            Some(format!("user-{alg}").as_str())
        );
        assert_eq!(set_header(f, "x-user-scopes"), Some("orders:read profile"));
        assert_eq!(set_header(f, "x-user-region"), Some("eu"));
        assert_eq!(d.audit.decision, "forward");
        assert_eq!(d.audit.issuer.as_deref(), Some("main"));
    }
    // The shared-secret issuer, on the route that accepts it.
    let t = forge(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims_for(INTERNAL_ISSUER, json!({"sub": "svc-billing"})),
        hs256(&INTERNAL_SECRET),
    );
    let d = h.get_with_token("/api/internal/jobs", &t);
    assert_eq!(set_header(forward(&d), "x-user-id"), Some("svc-billing"));
}

#[test]
fn spoofed_identity_headers_are_stripped_in_every_spelling() {
    let h = Harness::new();
    let token = h.idp.sign("ES256", claims(json!({})));
    let d = h.get(
        "/api/orders",
        &[
            ("authorization", &bearer(&token)),
            ("X-User-Id", "admin"),
            ("x-user-id", "root"),
            ("X_USER_ID", "admin"),
            ("x-user-roles", "superuser"),
            ("X-Portcullis-Verified", "true"),
            ("x-userid", "kept: not an identity header"),
            ("accept", "application/json"),
        ],
    );
    let f = forward(&d);
    let removed: Vec<&str> = f.remove_headers.iter().map(|n| n.as_str()).collect();
    for name in [
        "x-user-id",
        "x_user_id",
        "x-user-roles",
        "x-portcullis-verified",
    ] {
        assert!(removed.contains(&name), "{name} stripped: {removed:?}");
    }
    assert!(
        !removed.contains(&"x-userid") && !removed.contains(&"accept"),
        "{removed:?}"
    );
    assert_eq!(
        set_header(f, "x-user-id"),
        Some("user-1"),
        "the verified value replaces the spoofed one"
    );
    // Also on public routes, where nothing is injected.
    let d = h.get("/public/page", &[("x-user-id", "admin")]);
    assert!(forward(&d).remove_headers.iter().any(|n| n == "x-user-id"));
    assert_eq!(set_header(forward(&d), "x-user-id"), None);
}

#[test]
fn a_missing_token_gets_401_with_a_bare_bearer_challenge_and_problem_details() {
    let h = Harness::new();
    for headers in [vec![], vec![("authorization", "Basic dXNlcjpwYXNz")]] {
        let d = h.get("/api/orders", &headers);
        let r = response(&d);
        assert_eq!(r.status, 401);
        assert_eq!(r.reason.code(), "authentication_required");
        assert_eq!(
            header(r, "www-authenticate"),
            Some("Bearer realm=\"portcullis\"")
        );
        assert_eq!(header(r, "content-type"), Some("application/problem+json"));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["status"], 401);
        assert_eq!(body["reason"], "authentication_required");
        assert_eq!(
            body["type"],
            "urn:portcullis:reason:authentication_required"
        );
        assert_eq!(body["request_id"], "req-1");
        assert!(body["title"].as_str().unwrap().len() > 5);
    }
}

#[test]
fn several_authorization_headers_are_a_bad_request() {
    let h = Harness::new();
    let t = h.idp.sign("ES256", claims(json!({})));
    let d = h.get(
        "/api/orders",
        &[
            ("authorization", &bearer(&t)),
            ("authorization", &bearer(&t)),
        ],
    );
    assert_eq!(
        (response(&d).status.as_u16(), verdict(&d).as_str()),
        (400, "invalid_request")
    );
}

#[test]
fn a_missing_scope_gets_403_insufficient_scope_naming_the_scope() {
    let h = Harness::new();
    let t = h.idp.sign("ES256", claims(json!({"scope": "profile"})));
    let d = h.get_with_token("/api/orders", &t);
    let r = response(&d);
    assert_eq!(
        (r.status.as_u16(), r.reason.code()),
        (403, "insufficient_scope")
    );
    let www = header(r, "www-authenticate").unwrap();
    assert!(
        www.contains("error=\"insufficient_scope\"") && www.contains("scope=\"orders:read\""),
        "{www}"
    );
    // `scp` arrays (Azure AD, Okta) count as scopes too.
    let t = h.idp.sign(
        "ES256",
        claims(json!({"scope": null, "scp": ["orders:read"]})),
    );
    forward(&h.get_with_token("/api/orders", &t));
}

#[test]
fn claim_rules_and_scopes_all_are_enforced() {
    let h = Harness::new();
    let staff =
        json!({"scope": "admin orders:read", "email_verified": true, "groups": ["staff", "ops"]});
    forward(&h.get_with_token("/api/admin", &h.idp.sign("ES256", claims(staff.clone()))));
    for (change, want) in [
        (json!({"scope": "admin"}), "insufficient_scope"),
        (json!({"email_verified": "true"}), "claim_mismatch"),
        (json!({"email_verified": null}), "claim_mismatch"),
        (json!({"groups": ["ops"]}), "claim_mismatch"),
        (json!({"groups": "staff ops"}), "forward:eu"),
    ] {
        let mut c = staff.clone();
        for (k, v) in change.as_object().unwrap() {
            c[k] = v.clone();
        }
        let t = h.idp.sign("ES256", claims(c));
        assert_eq!(
            verdict(&h.get_with_token("/api/admin", &t)),
            want,
            "{change}"
        );
    }
}

#[test]
fn weak_or_stale_authentication_gets_an_rfc9470_step_up_challenge() {
    let h = Harness::new();
    let strong = json!({"acr": "urn:portcullis:mfa", "amr": ["pwd", "mfa"], "auth_time": NOW - 60});
    forward(&h.get_with_token(
        "/api/payments",
        &h.idp.sign("ES256", claims(strong.clone())),
    ));
    for change in [
        json!({"acr": "urn:portcullis:pwd"}),
        json!({"acr": null}),
        json!({"amr": ["pwd"]}),
        json!({"auth_time": NOW - 301}),
        json!({"auth_time": null}),
    ] {
        let mut c = strong.clone();
        for (k, v) in change.as_object().unwrap() {
            c[k] = v.clone();
        }
        let t = h.idp.sign("ES256", claims(c));
        let d = h.get_with_token("/api/payments", &t);
        let r = response(&d);
        assert_eq!(
            (r.status.as_u16(), r.reason.code()),
            (401, "insufficient_user_authentication"),
            "{change}"
        );
        let www = header(r, "www-authenticate").unwrap();
        assert!(
            www.contains("error=\"insufficient_user_authentication\""),
            "{www}"
        );
        assert!(www.contains("acr_values=\"urn:portcullis:mfa\""), "{www}");
        assert!(www.contains("max_age=300"), "{www}");
    }
}

#[test]
fn token_lifetime_is_checked_with_the_issuers_skew() {
    let h = Harness::new();
    let cases = [
        (json!({"exp": NOW - 59}), "forward:eu"),
        (json!({"exp": NOW - 60}), "token_expired"),
        (json!({"exp": NOW - 3600}), "token_expired"),
        (json!({"exp": null}), "claim_invalid"),
        (json!({"nbf": NOW + 59}), "forward:eu"),
        (json!({"nbf": NOW + 61}), "token_not_yet_valid"),
        (json!({"iat": NOW + 61}), "token_issued_in_future"),
        (json!({"exp": (NOW + 600) as f64 + 0.5}), "forward:eu"),
    ];
    for (extra, want) in cases {
        let t = h.idp.sign("ES256", claims(extra.clone()));
        assert_eq!(
            verdict(&h.get_with_token("/api/orders", &t)),
            want,
            "{extra}"
        );
    }
}

#[test]
fn public_and_optional_routes_serve_anonymous_callers_in_the_anonymous_region() {
    let h = Harness::new();
    let d = h.get("/public/logo.png", &[]);
    assert_eq!(verdict(&d), "forward:us");
    assert_eq!(set_header(forward(&d), "x-user-region"), Some("us"));
    // A bad token on a public route is not even looked at.
    assert_eq!(
        verdict(&h.get("/public/x", &[("authorization", "Bearer garbage")])),
        "forward:us"
    );
    // Optional: anonymous without a token, the user's region with one, refused with a bad one.
    assert_eq!(verdict(&h.get("/catalog", &[])), "forward:us");
    let t = h.idp.sign("ES256", claims(json!({})));
    assert_eq!(
        verdict(&h.get_with_token("/catalog/shoes", &t)),
        "forward:eu"
    );
    assert_eq!(
        verdict(&h.get("/catalog", &[("authorization", "Bearer a.b.c")])),
        "token_malformed"
    );
}

#[test]
fn route_issuer_lists_confine_issuers_to_their_routes() {
    let h = Harness::new();
    let main = h.idp.sign("ES256", claims(json!({})));
    assert_eq!(
        verdict(&h.get_with_token("/api/internal", &main)),
        "issuer_unknown"
    );
    let unknown = h
        .idp
        .sign("ES256", claims_for("https://evil.test", json!({})));
    assert_eq!(
        verdict(&h.get_with_token("/api/orders", &unknown)),
        "issuer_unknown"
    );
}

#[test]
fn routes_match_whole_segments_and_ambiguous_paths_are_refused() {
    let h = Harness::new();
    let t = h.idp.sign("ES256", claims(json!({"scope": "profile"})));
    // /api/ordersX is not under /api/orders (no route: 404); /api//orders is.
    assert_eq!(
        verdict(&h.get_with_token("/api/ordersX", &t)),
        "route_not_found"
    );
    assert_eq!(
        verdict(&h.get_with_token("//api//orders", &t)),
        "insufficient_scope"
    );
    for p in [
        "/public/../api/orders",
        "/public/%2e%2e/api/orders",
        "/public%2Fx",
        "/public/a%5Cb",
    ] {
        let d = h.get(p, &[]);
        assert_eq!(
            (response(&d).status.as_u16(), verdict(&d).as_str()),
            (400, "path_invalid"),
            "{p}"
        );
    }
}

#[test]
fn residency_comes_from_the_claim_and_unknown_regions_are_refused() {
    let h = Harness::new();
    for (residency, want) in [
        (json!("eu"), "forward:eu"),
        (json!("us"), "forward:us"),
        (json!(null), "forward:us"), // missing = "us"
        (json!("mars"), "residency_unknown"),
        (json!("EU"), "residency_unknown"),
        (json!(["eu"]), "residency_unknown"),
    ] {
        let t = h
            .idp
            .sign("ES256", claims(json!({ "residency": residency })));
        let d = h.get_with_token("/api/orders", &t);
        assert_eq!(verdict(&d), want, "{residency}");
        if want.starts_with("residency") {
            assert_eq!(response(&d).status, 403);
        }
    }
}

struct Down(Vec<BackendId>);

impl BackendHealth for Down {
    fn is_healthy(&self, b: BackendId) -> bool {
        !self.0.contains(&b)
    }
}

fn decide_with(h: &Harness, token: &str, health: &dyn BackendHealth, request_id: &str) -> Decision {
    let headers = {
        let mut m = http::HeaderMap::new();
        m.insert("authorization", bearer(token).parse().unwrap());
        m.insert("host", "gw.test".parse().unwrap());
        m
    };
    let uri: http::Uri = "/api/orders".parse().unwrap();
    let req = RequestParts {
        method: &http::Method::GET,
        uri: &uri,
        headers: &headers,
        request_id,
        peer: None,
        peer_hints: Default::default(),
        body: &[],
    };
    h.engine
        .decide(&h.keys, &req, Timestamp::from_unix_secs(NOW), health)
}

#[test]
fn a_down_region_fails_over_within_its_jurisdiction_or_answers_503() {
    let h = Harness::new();
    let eu = h.idp.sign("ES256", claims(json!({})));
    let us = h.idp.sign("ES256", claims(json!({"residency": "us"})));
    let b = |r, i| BackendId {
        region: RegionId(r),
        index: i,
    };
    // One eu backend down: always the other one.
    for id in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(
            forward(&decide_with(&h, &eu, &Down(vec![b(0, 0)]), id)).backend,
            b(0, 1)
        );
    }
    // Both eu backends down: eu2 (same jurisdiction).
    assert_eq!(
        forward(&decide_with(&h, &eu, &Down(vec![b(0, 0), b(0, 1)]), "x")).backend,
        b(1, 0)
    );
    // All EU down: 503, even though us is healthy.
    let d = decide_with(&h, &eu, &Down(vec![b(0, 0), b(0, 1), b(1, 0)]), "x");
    assert_eq!(
        (response(&d).status.as_u16(), verdict(&d).as_str()),
        (503, "residency_unavailable")
    );
    // US has no failover.
    let d = decide_with(&h, &us, &Down(vec![b(2, 0)]), "x");
    assert_eq!(verdict(&d), "residency_unavailable");
    // Requests spread over healthy backends.
    let used: std::collections::HashSet<BackendId> = (0..32)
        .map(|i| {
            forward(&decide_with(
                &h,
                &eu,
                &portcullis_core::AllHealthy,
                &format!("r{i}"),
            ))
            .backend
        })
        .collect();
    assert_eq!(used.len(), 2);
}

#[test]
fn audit_records_pseudonymise_the_subject_and_name_the_decision() {
    let h = Harness::new();
    let t = h
        .idp
        .sign("ES256", claims(json!({"sub": "alice@example.com"})));
    let d = h.get_with_token("/api/orders/7?email=alice@example.com", &t);
    let json = serde_json::to_string(&d.audit).unwrap();
    assert!(!json.contains("alice"), "{json}");
    let expected = portcullis_core::internal::pseudonymize(&AUDIT_KEY, ISSUER, "alice@example.com");
    assert_eq!(d.audit.subject.as_deref(), Some(expected.as_str()));
    assert_eq!(d.audit.route.as_deref(), Some("/api/orders"));
    assert_eq!(d.audit.region.as_deref(), Some("eu"));
    assert_eq!(
        d.audit
            .backend
            .as_deref()
            .map(|b| b.starts_with("http://127.0.0.1:910")),
        Some(true)
    );
    assert_eq!(d.audit.time_ms, NOW * 1000);
    assert_eq!(d.audit.path, "/api/orders/7");
    let d = h.get_with_token(
        "/api/orders",
        &h.idp.sign("ES256", claims(json!({"exp": NOW - 3600}))),
    );
    assert_eq!(
        (d.audit.decision, d.audit.status, d.audit.reason),
        ("deny", Some(401), Some("token_expired"))
    );
    assert_eq!(d.audit.issuer.as_deref(), Some("main"));
}

#[test]
fn authorization_is_removed_when_configured_not_to_forward_it() {
    let h = Harness::with_config(
        &TEST_CONFIG.replace("[identity]", "[identity]\nforward_authorization = false"),
    );
    let t = h.idp.sign("ES256", claims(json!({})));
    assert!(
        forward(&h.get_with_token("/api/orders", &t))
            .remove_headers
            .iter()
            .any(|n| n == "authorization")
    );
    let h = Harness::new();
    assert!(
        !forward(&h.get_with_token("/api/orders", &t))
            .remove_headers
            .iter()
            .any(|n| n == "authorization")
    );
}

#[test]
fn the_gateways_own_cookies_never_reach_a_backend_even_without_sessions() {
    let h = Harness::new();
    assert!(h.engine.config().session.is_none());
    let t = h.idp.sign("ES256", claims(json!({})));
    let d = h.get(
        "/api/orders",
        &[
            ("authorization", &bearer(&t)),
            (
                "cookie",
                "__Host-portcullis-clearance=c; app=1; __Host-portcullis-login-abc=l",
            ),
            ("cookie", "theme=dark"),
        ],
    );
    let f = forward(&d);
    assert_eq!(set_header(f, "cookie"), Some("app=1; theme=dark"));
    // Only the gateway's cookies: the header is removed.
    let d = h.get(
        "/api/orders",
        &[
            ("authorization", &bearer(&t)),
            ("cookie", "__Host-portcullis-clearance=c"),
        ],
    );
    let f = forward(&d);
    assert_eq!(set_header(f, "cookie"), None);
    assert!(f.remove_headers.iter().any(|n| n == "cookie"));
}

#[test]
fn claim_values_cannot_inject_header_lines() {
    let h = Harness::new();
    let t = h
        .idp
        .sign("ES256", claims(json!({"sub": "eve\r\nx-admin: true"})));
    let d = h.get_with_token("/api/orders", &t);
    assert_eq!(
        set_header(forward(&d), "x-user-id"),
        Some("eve%0D%0Ax-admin: true")
    );
}

#[test]
fn mutated_tokens_are_always_refused_and_never_panic() {
    let h = Harness::new();
    let valid = h.idp.sign("ES256", claims(json!({})));
    let mut seed = 0x1234_5678_u64;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bytes = valid.clone().into_bytes();
        let i = (seed as usize) % bytes.len();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
        bytes[i] = alphabet[(seed >> 32) as usize % alphabet.len()];
        if seed.is_multiple_of(7) {
            bytes.truncate(i);
        }
        let token = String::from_utf8(bytes).unwrap();
        if token.is_empty() {
            continue;
        }
        let d = h.get_with_token("/api/orders", &token);
        if token != valid {
            assert!(
                matches!(d.outcome, Outcome::Respond(_)),
                "a mutated token was accepted: {token}"
            );
        }
    }
}

#[test]
fn a_configuration_snapshot_decides_exactly_like_the_original() {
    let h = Harness::new();
    let bytes = h.engine.config().to_snapshot();
    let restored = portcullis_core::Config::from_snapshot(&bytes).unwrap();
    let engine = portcullis_core::Engine::new(restored, portcullis_core::PortableVerifier);
    let keys = engine.new_key_store();
    let tokens = [
        h.idp.sign("ES256", claims(json!({}))),
        h.idp.sign("ES256", claims(json!({"scope": "profile"}))),
        h.idp.sign("ES256", claims(json!({"residency": "us", "scope": "admin orders:read", "email_verified": true, "groups": ["staff"]}))),
        forge(&json!({"alg": "HS256"}), &claims_for(INTERNAL_ISSUER, json!({})), hs256(&INTERNAL_SECRET)),
    ];
    for path in [
        "/api/orders/1",
        "/api/admin",
        "/api/internal",
        "/public/x",
        "/catalog",
        "/nowhere",
    ] {
        for token in &tokens {
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", bearer(token).parse().unwrap());
            headers.insert("x-user-id", "spoof".parse().unwrap());
            headers.insert("host", "gw.test".parse().unwrap());
            let uri: http::Uri = path.parse().unwrap();
            let req = RequestParts {
                method: &http::Method::GET,
                uri: &uri,
                headers: &headers,
                request_id: "s",
                peer: None,
                peer_hints: Default::default(),
                body: &[],
            };
            let now = Timestamp::from_unix_secs(NOW);
            let a = h
                .engine
                .decide(&h.keys, &req, now, &portcullis_core::AllHealthy);
            let b = engine.decide(&keys, &req, now, &portcullis_core::AllHealthy);
            assert_eq!(a, b, "{path}");
        }
    }
    let mut wrong = bytes.clone();
    wrong[5] ^= 1;
    assert!(
        portcullis_core::Config::from_snapshot(&wrong).is_err(),
        "another version's snapshot is refused"
    );
    assert!(portcullis_core::Config::from_snapshot(b"garbage").is_err());
}

/// `GET path` with `token`, the same request id every time (as a client that sends its own
/// `x-request-id`, or a runtime that assigns none), decided with `entropy`.
fn decide_signed(
    h: &Harness,
    path: &str,
    token: &str,
    entropy: &dyn portcullis_core::Entropy,
) -> Decision {
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", bearer(token).parse().unwrap());
    headers.insert("host", "gw.test".parse().unwrap());
    let uri: http::Uri = path.parse().unwrap();
    let req = RequestParts {
        method: &http::Method::GET,
        uri: &uri,
        headers: &headers,
        request_id: "client-chosen",
        peer: None,
        peer_hints: Default::default(),
        body: &[],
    };
    h.decide_with_entropy(&req, Timestamp::from_unix_secs(NOW), entropy)
}

#[test]
fn gateway_tokens_verify_with_the_published_key_and_never_share_a_jti() {
    use jwt_simple::prelude::EdDSAPublicKeyLike as _;
    let h = Harness::with_config(&format!("{TEST_CONFIG}{GATEWAY_TOKEN_SECTION}"));
    let gt = h.engine.config().gateway_token.clone().unwrap();
    let public = jwt_simple::prelude::Ed25519PublicKey::from_bytes(&gt.keys[0].public).unwrap();
    let t = TestIdp::shared().sign("ES256", claims(json!({"sub": "alice"})));
    let entropy = CountingEntropy::default();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        // Same request id, same millisecond: only the random source tells them apart.
        let d = decide_signed(&h, "/api/orders/7", &t, &entropy);
        let token = set_header(forward(&d), "x-portcullis-identity").unwrap();
        let verified = public
            .verify_token::<Value>(
                token,
                Some(jwt_simple::prelude::VerificationOptions {
                    artificial_time: Some(jwt_simple::prelude::Duration::from_secs(NOW)),
                    ..Default::default()
                }),
            )
            .expect("the gateway token verifies with the published key");
        assert_eq!(verified.subject.as_deref(), Some("alice"));
        let jti = verified.jwt_id.unwrap();
        assert_eq!(jti.len(), 32, "128 bits, hex: {jti}");
        assert!(seen.insert(jti), "a jti was minted twice");
    }
}

#[test]
fn a_gateway_token_that_cannot_be_signed_refuses_the_request_instead_of_forwarding_without_it() {
    let config = format!("{TEST_CONFIG}{GATEWAY_TOKEN_SECTION}");
    let t = TestIdp::shared().sign("ES256", claims(json!({"sub": "alice"})));
    let refused = |d: &Decision, detail: &str| {
        let r = response(d);
        assert_eq!(r.status, 503);
        assert_eq!(d.audit.reason, Some("gateway_token_unavailable"));
        assert_eq!(d.audit.phase, Some("forward"));
        let problem: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(problem["reason"], "gateway_token_unavailable");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{problem}"
        );
    };
    // Not signable (in a wasm gateway: a host without the key the gateway names): 503,
    // never a forward without the token the backend relies on.
    let h = Harness::with_edited_config(&config, |c| {
        c.gateway_token.as_mut().unwrap().keys[0].seed.truncate(31)
    });
    let d = decide_signed(&h, "/api/orders/7", &t, &CountingEntropy::default());
    refused(&d, "could not be signed");
    // No random source for its `jti`: no token either.
    let h = Harness::with_config(&config);
    refused(&h.get_with_token("/api/orders/7", &t), "no random source");
    // Anonymous callers get no token, so nothing needs signing for them.
    forward(&h.get("/public/x", &[]));
}

#[test]
fn requests_spread_over_healthy_backends_at_random_whatever_their_request_id() {
    let h = Harness::new();
    let t = h.idp.sign("ES256", claims(json!({})));
    let entropy = CountingEntropy::default();
    // The same request id every time (a runtime that assigns none, or a client that pins
    // its own): the random source still spreads them over the region's two backends.
    let used: std::collections::HashSet<BackendId> = (0..32)
        .map(|_| forward(&decide_signed(&h, "/api/orders/7", &t, &entropy)).backend)
        .collect();
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(used.iter().all(|b| b.region == RegionId(0)));
    // A region with one backend has no choice to make, so it costs no random draw: a
    // us-resident request draws one word less than an eu-resident one.
    let drawn = |token: &str| {
        let entropy = CountingEntropy::default();
        forward(&decide_signed(&h, "/api/orders/7", token, &entropy));
        entropy.words_drawn()
    };
    let us = h.idp.sign("ES256", claims(json!({"residency": "us"})));
    assert_eq!(drawn(&t), drawn(&us) + 1);
}
