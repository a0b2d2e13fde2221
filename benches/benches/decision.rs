//! One full decision (normalize → authenticate → authorize → route → audit record) on a
//! cached key set, per algorithm, plus the cheap refusal paths.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::{AllHealthy, Outcome, RequestParts, Timestamp};
use portcullis_tests::{
    CountingEntropy, GATEWAY_TOKEN_SECTION, Harness, INTERNAL_ISSUER, INTERNAL_SECRET, NOW,
    TEST_CONFIG, claims, claims_for, forge, hs256,
};
use serde_json::json;
use std::hint::black_box;

fn request_headers(token: Option<&str>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if let Some(t) = token {
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    h.insert("accept", "application/json".parse().unwrap());
    h.insert("host", "gw.test".parse().unwrap());
    h.insert("user-agent", "bench/1.0".parse().unwrap());
    h.insert("x-user-id", "spoofed".parse().unwrap());
    h
}

fn decision(c: &mut Criterion) {
    let h = Harness::new();
    let now = Timestamp::from_unix_secs(NOW);
    let uri: http::Uri = "/api/orders/42?expand=items".parse().unwrap();
    let internal_uri: http::Uri = "/api/internal/jobs".parse().unwrap();
    let mut group = c.benchmark_group("decision");
    let mut cases: Vec<(String, Option<String>, &http::Uri, bool)> =
        ["ES256", "RS256", "PS256", "EdDSA"]
            .iter()
            .map(|alg| {
                (
                    format!("forward_{alg}"),
                    Some(h.idp.sign(alg, claims(json!({})))),
                    &uri,
                    true,
                )
            })
            .collect();
    cases.push((
        "forward_HS256".into(),
        Some(forge(
            &json!({"alg": "HS256"}),
            &claims_for(INTERNAL_ISSUER, json!({})),
            hs256(&INTERNAL_SECRET),
        )),
        &internal_uri,
        true,
    ));
    cases.push(("deny_no_token".into(), None, &uri, false));
    let valid = h.idp.sign("ES256", claims(json!({})));
    let (input, _) = valid.rsplit_once('.').unwrap();
    cases.push((
        "deny_bad_signature_ES256".into(),
        Some(format!("{input}.{}", portcullis_tests::b64(&[1u8; 64]))),
        &uri,
        false,
    ));
    cases.push((
        "deny_expired_ES256".into(),
        Some(h.idp.sign("ES256", claims(json!({"exp": NOW - 3600})))),
        &uri,
        false,
    ));
    let signing = Harness::with_config(&format!("{TEST_CONFIG}{GATEWAY_TOKEN_SECTION}"));
    for (name, token, uri, forwards) in &cases {
        let headers = request_headers(token.as_deref());
        let req = RequestParts {
            method: &http::Method::GET,
            uri,
            headers: &headers,
            request_id: "bench-1",
            peer: None,
            peer_hints: Default::default(),
            body: &[],
        };
        let d = h.engine.decide(&h.keys, &req, now, &AllHealthy);
        assert_eq!(
            matches!(d.outcome, Outcome::Forward(_)),
            *forwards,
            "{name}: {:?}",
            d.audit.reason
        );
        group.bench_function(name.as_str(), |b| {
            b.iter(|| h.engine.decide(&h.keys, black_box(&req), now, &AllHealthy))
        });
        // The same request when the backend gets a gateway-signed token (Ed25519).
        if name == "forward_ES256" {
            // Random bytes for its `jti` (a real runtime's source costs a little more).
            let entropy = CountingEntropy::default();
            let d = signing.decide_with_entropy(&req, now, &entropy);
            let Outcome::Forward(f) = &d.outcome else {
                panic!("{:?}", d.audit.reason)
            };
            assert!(
                f.set_headers
                    .iter()
                    .any(|(n, _)| n == "x-portcullis-identity")
            );
            group.bench_function("forward_ES256_gateway_token", |b| {
                b.iter(|| signing.decide_with_entropy(black_box(&req), now, &entropy))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
