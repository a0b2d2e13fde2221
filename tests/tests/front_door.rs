//! Issue 15 regressions decided by the shared core (every runtime runs this same decision;
//! `conformance.rs` checks the wire-level answers on each runtime): rate limits and bot
//! checks see the canonical path, case-insensitive matching, the session cookie stripped in
//! every spelling, logout only from this origin, kid-less HMAC secrets, NumericDate range,
//! and the property that routing on the raw path equals routing on what a decoding backend
//! sees.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::HashMap;

use portcullis_core::{
    Adapters, AllHealthy, Decision, NoState, Outcome, RequestParts, State, StateAnswer, StateOp,
    StateResult, Timestamp,
};
use portcullis_tests::*;
use serde_json::json;

/// GCRA in a map: the in-process equivalent of the host's memory state.
#[derive(Default)]
struct MapLimiter(RefCell<HashMap<String, u64>>);

impl State for MapLimiter {
    fn now(&self, op: &StateOp) -> Option<StateResult> {
        let StateOp::RateLimit { checks, now } = op else {
            return NoState.now(op);
        };
        let mut map = self.0.borrow_mut();
        let tats: Vec<Option<u64>> = checks.iter().map(|c| map.get(&c.key).copied()).collect();
        let (statuses, next) = portcullis_core::limits::gcra_all(&tats, now.unix_micros(), checks);
        if let Some(next) = next {
            for (c, t) in checks.iter().zip(next) {
                map.insert(c.key.clone(), t);
            }
        }
        Some(Ok(StateAnswer::Limits(statuses)))
    }
}

fn decide(h: &Harness, limiter: &dyn State, path: &str, headers: &[(&str, &str)]) -> Decision {
    let mut map = http::HeaderMap::new();
    map.insert("host", "gw.test".parse().unwrap());
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let uri: http::Uri = path.parse().unwrap();
    let auth = h.engine.authenticator(&h.keys);
    let adapters = Adapters {
        auth: &auth,
        risk: &portcullis_core::risk::NoPlugins,
        state: limiter,
        client: &portcullis_core::NoClient,
        health: &AllHealthy,
        entropy: &portcullis_core::NoEntropy,
        clock: &portcullis_core::NoClock,
    };
    let req = RequestParts {
        method: &http::Method::GET,
        uri: &uri,
        headers: &map,
        request_id: "fd",
        peer: Some("203.0.113.7".parse().unwrap()),
        peer_hints: Default::default(),
        body: &[],
    };
    h.engine
        .gateway()
        .decide(&adapters, &req, Timestamp::from_unix_secs(NOW))
}

fn with_routes(extra: &str) -> Harness {
    Harness::with_config(&TEST_CONFIG.replace("[identity]", &format!("{extra}\n[identity]")))
}

#[test]
fn an_encoded_spelling_counts_against_the_same_rate_limit() {
    let h = with_routes(
        "[[route]]\npath = \"/limited\"\nauth = \"public\"\n[[route.rate_limit]]\nkey = \"route\"\nrate = 1\nper = \"1m\"\n",
    );
    let limiter = MapLimiter::default();
    assert_eq!(
        verdict(&decide(&h, &limiter, "/limited", &[])),
        "forward:us"
    );
    for spelling in ["/%6Cimited", "/%6cimited/x", "//limited", "/l%69mited"] {
        let d = decide(&h, &limiter, spelling, &[]);
        assert_eq!(verdict(&d), "rate_limited", "{spelling}");
        assert!(d.audit.path.starts_with("/limited"), "{}", d.audit.path);
    }
}

#[test]
fn an_encoded_spelling_gets_the_same_bot_checks() {
    let h = with_routes(
        "[[route]]\npath = \"/signup\"\nauth = \"public\"\nrisk = { checks = [\"automation\"], deny = 50 }\n",
    );
    let limiter = MapLimiter::default();
    for spelling in ["/signup", "/%73ignup", "/sign%75p/x"] {
        let d = decide(&h, &limiter, spelling, &[("user-agent", "curl/8.5.0")]);
        assert_eq!(verdict(&d), "risk_denied", "{spelling}");
    }
}

#[test]
fn case_insensitive_matching_is_a_setting() {
    let limiter = MapLimiter::default();
    // Case-sensitive (the default, RFC 3986): `/API/orders` is not `/api/orders`.
    let sensitive = Harness::new();
    assert_eq!(
        verdict(&decide(&sensitive, &limiter, "/API/Orders", &[])),
        "route_not_found"
    );
    // `case = "insensitive"`: the protected route matches in any case, so a case-insensitive
    // backend cannot be reached around it.
    let insensitive = with_routes("[paths]\ncase = \"insensitive\"\n");
    for spelling in ["/API/Orders", "/api/ORDERS/1", "/%41PI/orders"] {
        assert_eq!(
            verdict(&decide(&insensitive, &limiter, spelling, &[])),
            "authentication_required",
            "{spelling}"
        );
    }
}

#[test]
fn path_parameters_are_refused_unless_allowed() {
    let limiter = MapLimiter::default();
    let h = Harness::new();
    assert_eq!(
        verdict(&decide(&h, &limiter, "/api/orders;jsessionid=1", &[])),
        "path_invalid"
    );
    // Allowed, parameters are kept for the backend but routing ignores them, as servlet
    // containers do: `/api/orders;x=1` is still the protected `/api/orders`.
    let allowing = with_routes("[paths]\nsemicolons = \"allow\"\n");
    for spelling in [
        "/api/orders;jsessionid=1",
        "/api;x=1/orders",
        "/api/orders;/1",
    ] {
        assert_eq!(
            verdict(&decide(&allowing, &limiter, spelling, &[])),
            "authentication_required",
            "{spelling}"
        );
    }
    let t = h.idp.sign("ES256", claims(json!({"scope": "orders:read"})));
    let d = decide(
        &allowing,
        &limiter,
        "/api/orders;jsessionid=1",
        &[("authorization", &format!("Bearer {t}"))],
    );
    let Outcome::Forward(f) = &d.outcome else {
        panic!("{}", verdict(&d))
    };
    assert_eq!(f.path_and_query, "/api/orders;jsessionid=1");
}

#[test]
fn a_shared_secret_without_kid_accepts_tokens_that_name_one() {
    let h = Harness::new();
    for header in [
        json!({"alg": "HS256", "kid": "any-kid"}),
        json!({"alg": "HS256", "kid": ""}),
        json!({"alg": "HS256"}),
    ] {
        let t = forge(
            &header,
            &claims_for(INTERNAL_ISSUER, json!({})),
            hs256(&INTERNAL_SECRET),
        );
        let d = h.get_with_token("/api/internal", &t);
        assert!(
            matches!(d.outcome, Outcome::Forward(_)),
            "{header}: {}",
            verdict(&d)
        );
    }
    // A wrong secret with a kid is still a bad signature, not an unknown key.
    let t = forge(
        &json!({"alg": "HS256", "kid": "any-kid"}),
        &claims_for(INTERNAL_ISSUER, json!({})),
        hs256(&[8u8; 48]),
    );
    assert_eq!(
        verdict(&h.get_with_token("/api/internal", &t)),
        "signature_invalid"
    );
}

#[test]
fn out_of_range_numeric_dates_are_claim_invalid() {
    let h = Harness::new();
    for claim in [
        json!({"exp": 1e300}),
        json!({"nbf": 1e300}),
        json!({"iat": -5}),
        json!({"exp": 253_402_300_800_u64}),
    ] {
        let t = h.idp.sign("ES256", claims(claim.clone()));
        assert_eq!(
            verdict(&h.get_with_token("/api/orders", &t)),
            "claim_invalid",
            "{claim}"
        );
    }
}

proptest::proptest! {
    /// For any path, the route chosen for the raw path is the route a decoding backend's
    /// path would get: no spelling reaches a route other than its decoded meaning.
    #[test]
    fn routing_on_the_raw_path_equals_routing_on_the_decoded_path(
        segments in proptest::collection::vec(
            proptest::sample::select(vec![
                "api", "%61pi", "%61%70%69", "orders", "%6Frders", "%6frders", "admin",
                "%2e%2e", "..", "%2F", ";x=1", "public", "%70ublic", "_portcullis",
                "%5Fportcullis", "x%20y", "%7e", "a%2cb", "", "API",
            ]),
            1..5,
        )
    ) {
        let raw = format!("/{}", segments.join("/"));
        let options = portcullis_core::internal::canonical::PathOptions { allow_semicolons: false };
        let h = Harness::new();
        let routes = &h.engine.config().routes;
        match portcullis_core::internal::canonical::canonical_path(&raw, options) {
            Err(_) => {} // refused with 400: nothing reaches a backend
            Ok(canonical) => {
                let decoded = portcullis_core::internal::canonical::decoded_path(&canonical);
                let on_raw = portcullis_core::internal::policy::match_route(routes, "gw.test", &canonical, true);
                let on_decoded = portcullis_core::internal::policy::match_route(routes, "gw.test", &decoded, true);
                proptest::prop_assert_eq!(on_raw, on_decoded, "{} → {} → {}", raw, canonical, decoded);
            }
        }
    }
}
