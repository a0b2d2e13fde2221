//! The sans-IO key-set state machine: when it asks for fetches, what it does with answers,
//! how it survives an IdP outage, rotates keys, and refuses to be stormed by random kids.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use jwt_simple::prelude::*;
use portcullis_core::keyset::{FetchReason, KeysUnavailable};
use portcullis_core::{FetchKind, FetchRequest, FetchResponse, IssuerId, Timestamp};
use portcullis_tests::*;
use serde_json::{Value, json};

const REMOTE: &str = r#"
[[issuer]]
name = "main"
issuer = "https://idp.test"
jwks_uri = "https://idp.test/jwks.json"
audiences = ["api://shop"]
algorithms = ["ES256"]
jwks_refresh_min = "5m"
jwks_refresh_max = "1h"
jwks_max_stale = "2h"
jwks_unknown_kid_interval = "30s"

[[issuer]]
name = "disco"
issuer = "https://disco.test"
discovery = true
audiences = ["api://shop"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:9101"]

[residency]
missing = "eu"

[[route]]
path = "/"

[audit]
subject_key_file = "audit.key"
"#;

const MAIN: IssuerId = IssuerId(0);
const DISCO: IssuerId = IssuerId(1);

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(NOW + secs)
}

fn jwks_of(keys: &[&ES256KeyPair]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| public_jwk(&k.public_key().to_jwk(), "ES256"))
        .collect();
    json!({ "keys": keys }).to_string()
}

fn ok<'a>(body: &'a str, cache_control: Option<&'a str>) -> FetchResponse<'a> {
    FetchResponse {
        status: 200,
        cache_control,
        body: body.as_bytes(),
    }
}

fn only(reqs: Vec<FetchRequest>, issuer: IssuerId) -> Option<FetchRequest> {
    reqs.into_iter().find(|r| r.issuer == issuer)
}

fn token(key: &ES256KeyPair, now: u64) -> String {
    key.sign(raw_claims(claims(
        json!({ "iat": now - 5, "exp": now + 600 }),
    )))
    .unwrap()
}

fn decide(h: &Harness, token: &str, secs: u64) -> String {
    verdict(&h.request(
        "GET",
        "/x",
        &[("authorization", &format!("Bearer {token}"))],
        NOW + secs,
    ))
}

#[test]
fn first_load_is_requested_and_tokens_wait_for_it_with_503() {
    let mut h = Harness::with_config(REMOTE);
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    let t = token(&k1, NOW);
    assert_eq!(decide(&h, &t, 0), "keys_unavailable");
    assert!(!h.keys.is_ready(at(0)));
    let reqs = h.keys.poll(at(0));
    assert_eq!(
        only(reqs.clone(), MAIN),
        Some(FetchRequest {
            issuer: MAIN,
            kind: FetchKind::Jwks,
            url: "https://idp.test/jwks.json".into(),
            reason: FetchReason::Initial
        })
    );
    assert_eq!(
        only(reqs, DISCO).map(|r| (r.kind, r.url)),
        Some((
            FetchKind::Discovery,
            "https://disco.test/.well-known/openid-configuration".into()
        ))
    );
    assert!(
        h.keys.poll(at(1)).is_empty(),
        "fetches in flight are not handed out twice"
    );
    h.keys
        .on_response(
            h.engine.verifier(),
            MAIN,
            FetchKind::Jwks,
            ok(&jwks_of(&[&k1]), Some("public, max-age=600")),
            at(1),
        )
        .unwrap();
    assert_eq!(decide(&h, &t, 1), "forward:eu");
}

#[test]
fn discovery_leads_to_the_key_set_and_its_issuer_must_match() {
    let mut h = Harness::with_config(REMOTE);
    let v = *h.engine.verifier();
    h.keys.poll(at(0));
    let wrong =
        json!({"issuer": "https://evil.test", "jwks_uri": "https://disco.test/keys"}).to_string();
    let err = h
        .keys
        .on_response(&v, DISCO, FetchKind::Discovery, ok(&wrong, None), at(0))
        .unwrap_err();
    assert!(err.contains("evil.test"), "{err}");
    assert!(
        only(h.keys.poll(at(0)), DISCO).is_none(),
        "back-off after a failure"
    );
    let retry = only(h.keys.poll(at(1)), DISCO).unwrap();
    assert_eq!(
        (retry.kind, retry.reason),
        (FetchKind::Discovery, FetchReason::Retry)
    );
    let http =
        json!({"issuer": "https://disco.test", "jwks_uri": "http://disco.test/keys"}).to_string();
    assert!(
        h.keys
            .on_response(&v, DISCO, FetchKind::Discovery, ok(&http, None), at(1))
            .unwrap_err()
            .contains("not https")
    );
    let good = json!({"issuer": "https://disco.test", "jwks_uri": "https://cdn.disco.test/keys"})
        .to_string();
    only(h.keys.poll(at(10)), DISCO).unwrap();
    h.keys
        .on_response(&v, DISCO, FetchKind::Discovery, ok(&good, None), at(10))
        .unwrap();
    let next = only(h.keys.poll(at(10)), DISCO).unwrap();
    assert_eq!(
        (next.kind, next.url.as_str()),
        (FetchKind::Jwks, "https://cdn.disco.test/keys")
    );
}

#[test]
fn freshness_follows_cache_control_within_the_configured_bounds() {
    for (cc, fresh_for) in [
        (Some("max-age=600"), 600),
        (Some("public, max-age=10"), 300), // below jwks_refresh_min
        (Some("max-age=86400"), 3600),     // above jwks_refresh_max
        (Some("no-store"), 300),
        (None, 3600),
    ] {
        let mut h = Harness::with_config(REMOTE);
        let v = *h.engine.verifier();
        let k1 = ES256KeyPair::generate().with_key_id("k1");
        h.keys.poll(at(0));
        h.keys
            .on_response(&v, MAIN, FetchKind::Jwks, ok(&jwks_of(&[&k1]), cc), at(0))
            .unwrap();
        assert!(
            only(h.keys.poll(at(fresh_for - 1)), MAIN).is_none(),
            "{cc:?}: still fresh"
        );
        let r = only(h.keys.poll(at(fresh_for)), MAIN).unwrap();
        assert_eq!(r.reason, FetchReason::Expired, "{cc:?}");
    }
}

#[test]
fn an_idp_outage_keeps_the_last_good_keys_until_max_stale_then_fails_closed() {
    let mut h = Harness::with_config(REMOTE);
    let v = *h.engine.verifier();
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    h.keys.poll(at(0));
    h.keys
        .on_response(
            &v,
            MAIN,
            FetchKind::Jwks,
            ok(&jwks_of(&[&k1]), Some("max-age=600")),
            at(0),
        )
        .unwrap();
    // Every refresh from t=600 on fails.
    let mut t = 600;
    let mut attempts = 0;
    while t < 600 + 7200 {
        if only(h.keys.poll(at(t)), MAIN).is_some() {
            h.keys.on_failure(MAIN, "connection refused", at(t));
            attempts += 1;
        }
        t += 1;
    }
    assert!(
        attempts > 5 && attempts < 60,
        "bounded exponential back-off: {attempts} attempts in 2 h"
    );
    let tok = token(&k1, NOW + 7000);
    assert_eq!(
        decide(&h, &tok, 7000),
        "forward:eu",
        "stale but within max_stale: still served"
    );
    let tok = token(&k1, NOW + 7801);
    assert_eq!(
        decide(&h, &tok, 7801),
        "keys_unavailable",
        "past max_stale: fail closed"
    );
    assert!(
        matches!(h.keys.keys(MAIN, at(7801)), Err(KeysUnavailable::TooStale(Some(e))) if e.contains("refused"))
    );
    // A bad document is a failure too, and does not replace the good set.
    let mut h = Harness::with_config(REMOTE);
    h.keys.poll(at(0));
    h.keys
        .on_response(&v, MAIN, FetchKind::Jwks, ok(&jwks_of(&[&k1]), None), at(0))
        .unwrap();
    h.keys.poll(at(3600));
    let empty = json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}).to_string();
    let err = h
        .keys
        .on_response(&v, MAIN, FetchKind::Jwks, ok(&empty, None), at(3600))
        .unwrap_err();
    assert!(
        err.contains("no usable key") && err.contains("P-521"),
        "{err}"
    );
    assert!(
        h.keys
            .on_response(
                &v,
                MAIN,
                FetchKind::Jwks,
                FetchResponse {
                    status: 500,
                    cache_control: None,
                    body: b""
                },
                at(3601)
            )
            .is_err()
    );
    assert_eq!(decide(&h, &token(&k1, NOW + 3602), 3602), "forward:eu");
    let (stats, last) = h.keys.stats(MAIN).unwrap();
    assert_eq!((stats.refreshes, stats.failures), (1, 2));
    assert_eq!(last, Some("HTTP status 500"));
}

#[test]
fn key_rotation_is_picked_up_by_one_refetch_and_removed_keys_stop_working() {
    let mut h = Harness::with_config(REMOTE);
    let v = *h.engine.verifier();
    let (k1, k2) = (
        ES256KeyPair::generate().with_key_id("k1"),
        ES256KeyPair::generate().with_key_id("k2"),
    );
    h.keys.poll(at(0));
    h.keys
        .on_response(
            &v,
            MAIN,
            FetchKind::Jwks,
            ok(&jwks_of(&[&k1]), Some("max-age=3600")),
            at(0),
        )
        .unwrap();
    // The IdP starts signing with k2 and publishes [k1, k2].
    let d = h.request(
        "GET",
        "/x",
        &[(
            "authorization",
            &format!("Bearer {}", token(&k2, NOW + 100)),
        )],
        NOW + 100,
    );
    assert_eq!(
        (verdict(&d).as_str(), d.refetch),
        ("key_not_found", Some(MAIN))
    );
    assert!(h.keys.request_refetch(MAIN, at(100)));
    let r = only(h.keys.poll(at(100)), MAIN).unwrap();
    assert_eq!(
        (r.kind, r.reason),
        (FetchKind::Jwks, FetchReason::UnknownKid)
    );
    h.keys
        .on_response(
            &v,
            MAIN,
            FetchKind::Jwks,
            ok(&jwks_of(&[&k1, &k2]), Some("max-age=3600")),
            at(100),
        )
        .unwrap();
    assert_eq!(decide(&h, &token(&k2, NOW + 100), 100), "forward:eu");
    assert_eq!(decide(&h, &token(&k1, NOW + 100), 100), "forward:eu");
    // k1 is retired: after the next refresh its tokens are refused.
    h.keys.poll(at(3700));
    h.keys
        .on_response(
            &v,
            MAIN,
            FetchKind::Jwks,
            ok(&jwks_of(&[&k2]), Some("max-age=3600")),
            at(3700),
        )
        .unwrap();
    assert_eq!(decide(&h, &token(&k1, NOW + 3700), 3700), "key_not_found");
    assert_eq!(decide(&h, &token(&k2, NOW + 3700), 3700), "forward:eu");
}

#[test]
fn random_kids_cause_at_most_one_refetch_per_interval() {
    let mut h = Harness::with_config(REMOTE);
    let v = *h.engine.verifier();
    let k1 = ES256KeyPair::generate().with_key_id("k1");
    h.keys.poll(at(0));
    h.keys
        .on_response(
            &v,
            MAIN,
            FetchKind::Jwks,
            ok(&jwks_of(&[&k1]), Some("max-age=3600")),
            at(0),
        )
        .unwrap();
    let mut fetches = 0;
    for i in 0..1000u64 {
        let now = 100 + i / 10; // 1000 attacker requests over 100 s
        let forged = h.idp.forge_es256(
            &json!({"alg": "ES256", "kid": format!("rand-{i}")}),
            &claims(json!({})),
        );
        let d = h.request(
            "GET",
            "/x",
            &[("authorization", &format!("Bearer {forged}"))],
            NOW + now,
        );
        assert_eq!(verdict(&d), "key_not_found");
        if h.keys.request_refetch(d.refetch.unwrap(), at(now)) {
            let r = only(h.keys.poll(at(now)), MAIN).unwrap();
            assert_eq!(r.reason, FetchReason::UnknownKid);
            h.keys
                .on_response(
                    &v,
                    MAIN,
                    FetchKind::Jwks,
                    ok(&jwks_of(&[&k1]), Some("max-age=3600")),
                    at(now),
                )
                .unwrap();
            fetches += 1;
        }
    }
    assert_eq!(fetches, 4, "t=100, 130, 160, 190 with a 30 s interval");
    let (stats, _) = h.keys.stats(MAIN).unwrap();
    assert_eq!(
        (stats.unknown_kid_refetches, stats.unknown_kid_throttled),
        (4, 996)
    );
}

#[test]
fn a_lost_fetch_is_handed_out_again_after_the_timeout() {
    let mut h = Harness::with_config(REMOTE);
    assert!(only(h.keys.poll(at(0)), MAIN).is_some());
    assert!(only(h.keys.poll(at(29)), MAIN).is_none());
    assert!(only(h.keys.poll(at(30)), MAIN).is_some());
    assert!(h.keys.next_poll_at().is_some());
}

/// A key set's fingerprint (what shared verified-token entries name) is the same for the
/// same keys loaded again, whatever the document's other members, and differs as soon as a
/// key is added, removed or changed.
#[test]
fn a_key_set_fingerprint_follows_its_keys() {
    use portcullis_core::PortableVerifier;
    use portcullis_core::jwk::parse_jwks;
    use portcullis_core::keyset::KeySet;
    let fp = |doc: &str| {
        KeySet::prepare(parse_jwks(doc.as_bytes()).unwrap(), &PortableVerifier).fingerprint()
    };
    let (a, b) = (
        ES256KeyPair::generate().with_key_id("a"),
        ES256KeyPair::generate().with_key_id("b"),
    );
    let one = jwks_of(&[&a]);
    let both = jwks_of(&[&a, &b]);
    assert_eq!(fp(&one), fp(&one));
    let mut extra: Value = serde_json::from_str(&one).unwrap();
    extra["note"] = json!("members other than keys do not count");
    assert_eq!(fp(&extra.to_string()), fp(&one));
    assert_ne!(fp(&one), fp(&both), "a key added");
    assert_ne!(fp(&both), fp(&jwks_of(&[&b])), "a key removed");
    let a_again = ES256KeyPair::generate().with_key_id("a");
    assert_ne!(fp(&one), fp(&jwks_of(&[&a_again])), "same kid, another key");
}
