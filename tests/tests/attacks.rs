//! Every JWT attack class of ../shared/STYLE.md, each against the full decision pipeline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use jwt_simple::prelude::ECDSAP256KeyPairLike as _;
use portcullis_core::Outcome;
use portcullis_tests::*;
use serde_json::json;

fn assert_refused(h: &Harness, token: &str, reason: &str) {
    let d = h.get_with_token("/api/orders", token);
    assert_eq!(verdict(&d), reason, "token {token}");
    let Outcome::Respond(r) = &d.outcome else {
        unreachable!()
    };
    assert_eq!(r.status, 401, "{reason} answers 401");
    let www = r
        .headers
        .iter()
        .find(|(n, _)| n == "www-authenticate")
        .map(|(_, v)| v.to_str().unwrap().to_owned())
        .expect("401 carries WWW-Authenticate");
    assert!(www.starts_with("Bearer "), "{www}");
    assert!(www.contains("error=\"invalid_token\""), "{www}");
}

#[test]
fn a_valid_es256_token_is_forwarded_so_the_refusals_below_mean_something() {
    let h = Harness::new();
    let token = h.idp.sign("ES256", claims(json!({})));
    assert_eq!(
        verdict(&h.get_with_token("/api/orders", &token)),
        "forward:eu"
    );
}

#[test]
fn alg_none_in_any_case_is_rejected() {
    let h = Harness::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let payload = claims(json!({}));
        let unsigned = format!(
            "{}.{}.",
            b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        // With an empty signature part and with a bogus one.
        assert_refused(&h, &unsigned, "token_malformed");
        assert_refused(&h, &format!("{unsigned}c2ln"), "algorithm_not_allowed");
    }
}

#[test]
fn rsa_public_key_used_as_hmac_secret_is_rejected() {
    let h = Harness::new();
    let rsa_pub = h.idp.rs256.public_key();
    let secrets: Vec<Vec<u8>> = vec![
        rsa_pub.to_der().unwrap(),
        rsa_pub.to_pem().unwrap().into_bytes(),
        rsa_pub.to_jwk().into_bytes(),
        rsa_pub.to_components().n,
    ];
    for secret in secrets {
        let token = forge(
            &json!({"alg": "HS256", "kid": "rs-1"}),
            &claims(json!({})),
            hs256(&secret),
        );
        assert_refused(&h, &token, "algorithm_not_allowed");
    }
}

#[test]
fn one_issuers_key_never_validates_another_issuers_token() {
    let h = Harness::new();
    // The internal issuer's HMAC secret signing a token that claims the main issuer.
    let t = forge(
        &json!({"alg": "HS256"}),
        &claims(json!({})),
        hs256(&INTERNAL_SECRET),
    );
    assert_refused(&h, &t, "algorithm_not_allowed");
    // The main issuer's ES256 key signing a token that claims the internal issuer.
    let t = h.idp.sign("ES256", claims_for(INTERNAL_ISSUER, json!({})));
    assert_refused(&h, &t, "algorithm_not_allowed");
    // The partner's ES256 key signing a token that claims the main issuer: its kid is not in
    // main's set, and without a kid main's keys do not verify it.
    let partner_token = h
        .partner
        .sign_with_options(raw_claims(claims(json!({}))), &Default::default());
    assert_refused(&h, &partner_token.unwrap(), "key_not_found");
    let partner_key = p256::ecdsa::SigningKey::from_slice(&h.partner.to_bytes()).unwrap();
    let t = forge(&json!({"alg": "ES256"}), &claims(json!({})), |input| {
        use p256::ecdsa::signature::Signer as _;
        let s: p256::ecdsa::Signature = partner_key.sign(input);
        s.to_bytes().to_vec()
    });
    assert_refused(&h, &t, "signature_invalid");
    // And the partner's own tokens pass for the partner issuer.
    let t = forge(
        &json!({"alg": "ES256", "kid": "partner-1"}),
        &claims_for(PARTNER_ISSUER, json!({})),
        |input| {
            use p256::ecdsa::signature::Signer as _;
            let s: p256::ecdsa::Signature = partner_key.sign(input);
            s.to_bytes().to_vec()
        },
    );
    assert_eq!(verdict(&h.get_with_token("/api/orders", &t)), "forward:eu");
}

#[test]
fn embedded_jwk_and_remote_key_urls_are_never_trusted() {
    let h = Harness::new();
    // An attacker signs with their own key and ships it in the header, with jku/x5u pointing
    // to their server. The token must be checked against the configured keys only.
    let attacker = jwt_simple::prelude::ES256KeyPair::generate();
    let attacker_jwk: serde_json::Value =
        serde_json::from_str(&attacker.public_key().to_jwk()).unwrap();
    let key = p256::ecdsa::SigningKey::from_slice(&attacker.to_bytes()).unwrap();
    let sign = |input: &[u8]| {
        use p256::ecdsa::signature::Signer as _;
        let s: p256::ecdsa::Signature = key.sign(input);
        s.to_bytes().to_vec()
    };
    for header in [
        json!({"alg": "ES256", "jwk": attacker_jwk}),
        json!({"alg": "ES256", "jku": "http://127.0.0.1:1/jwks.json"}),
        json!({"alg": "ES256", "x5u": "http://127.0.0.1:1/cert.pem"}),
        json!({"alg": "ES256", "kid": "es-1", "jwk": attacker_jwk, "jku": "http://127.0.0.1:1/jwks.json"}),
    ] {
        let t = forge(&header, &claims(json!({})), sign);
        assert_refused(&h, &t, "signature_invalid");
    }
}

#[test]
fn kid_injection_finds_no_key_and_triggers_a_refetch_hint_only() {
    let h = Harness::new();
    for kid in [
        "../../../../dev/null",
        "' OR '1'='1",
        "es-1\u{0}",
        "es-1 ",
        "ES-1",
        &"k".repeat(2000),
    ] {
        let t = h
            .idp
            .forge_es256(&json!({"alg": "ES256", "kid": kid}), &claims(json!({})));
        let d = h.get_with_token("/api/orders", &t);
        assert_eq!(verdict(&d), "key_not_found", "kid {kid:?}");
        assert!(
            d.refetch.is_some(),
            "unknown kid asks the adapter for a (rate-limited) refetch"
        );
    }
}

#[test]
fn ecdsa_zero_signatures_are_rejected() {
    let h = Harness::new();
    let valid = h.idp.sign("ES256", claims(json!({})));
    let (input, _) = valid.rsplit_once('.').unwrap();
    // r = s = 0 ("psychic signatures", CVE-2022-21449), r = s = n, and all-ones.
    let n = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    for sig in [
        vec![0u8; 64],
        [n.clone(), n].concat(),
        vec![0xff; 64],
        vec![0u8; 0],
    ] {
        let t = format!("{input}.{}", b64(&sig));
        let want = if sig.is_empty() {
            "token_malformed"
        } else {
            "signature_invalid"
        };
        assert_refused(&h, &t, want);
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn unknown_crit_headers_are_rejected() {
    let h = Harness::new();
    for crit in [
        json!(["exp"]),
        json!(["http://example.com/ext"]),
        json!([]),
        json!("b64"),
    ] {
        let t = h.idp.forge_es256(
            &json!({"alg": "ES256", "kid": "es-1", "crit": crit, "exp": 1}),
            &claims(json!({})),
        );
        let d = h.get_with_token("/api/orders", &t);
        assert!(
            ["critical_header_unsupported", "token_malformed"].contains(&verdict(&d).as_str()),
            "crit {crit}: {}",
            verdict(&d)
        );
        assert!(matches!(d.outcome, Outcome::Respond(_)));
    }
}

#[test]
fn json_serialization_is_rejected() {
    let h = Harness::new();
    let valid = h.idp.sign("ES256", claims(json!({})));
    let parts: Vec<&str> = valid.split('.').collect();
    let general = json!({"payload": parts[1], "signatures": [{"protected": parts[0], "signature": parts[2]}]}).to_string();
    let flattened =
        json!({"payload": parts[1], "protected": parts[0], "signature": parts[2]}).to_string();
    for t in [general, flattened] {
        // JSON has spaces-free but non-token68 characters: refused before parsing.
        assert_refused(&h, &t, "token_malformed");
    }
}

#[test]
fn nested_jwts_are_rejected() {
    let h = Harness::new();
    let inner = h.idp.sign("ES256", claims(json!({})));
    for cty in ["JWT", "jwt", "application/jwt"] {
        let outer = h.idp.forge_es256(
            &json!({"alg": "ES256", "kid": "es-1", "cty": cty}),
            &json!(inner),
        );
        assert_refused(&h, &outer, "token_malformed");
    }
}

#[test]
fn weak_hmac_keys_refuse_to_load() {
    let idp = TestIdp::shared();
    let partner = jwt_simple::prelude::ES256KeyPair::generate();
    let files = test_files(idp, &partner).with("internal.key", b64(&[1u8; 31]));
    let err = portcullis_core::config::load(TEST_CONFIG, "gw.toml", &files).unwrap_err();
    let d = err
        .diagnostics
        .iter()
        .find(|d| d.message.contains("HMAC secret"))
        .expect("HMAC diagnostic");
    assert!(
        d.message.contains("31 bytes") && d.message.contains("HS256 needs at least 32"),
        "{d}"
    );
    assert_eq!((d.line, d.file.as_str()), (13, "gw.toml"), "{d}");
}

#[test]
fn wrongly_typed_time_claims_are_invalid_not_absent() {
    let h = Harness::new();
    for extra in [
        json!({"exp": "1795911000"}),
        json!({"exp": true}),
        json!({"exp": null}),
        json!({"exp": -5}),
        json!({"nbf": "0"}),
        json!({"nbf": [1]}),
        json!({"iat": {"t": 1}}),
        json!({"auth_time": "yesterday"}),
    ] {
        let t = h.idp.sign("ES256", claims(extra.clone()));
        assert_refused(&h, &t, "claim_invalid");
    }
}

#[test]
fn aud_as_string_or_array_must_contain_an_accepted_audience() {
    let h = Harness::new();
    for (aud, want) in [
        (json!(AUDIENCE), "forward:eu"),
        (json!([AUDIENCE]), "forward:eu"),
        (json!(["api://other", AUDIENCE]), "forward:eu"),
        (json!("api://other"), "audience_mismatch"),
        (json!([]), "audience_mismatch"),
        (json!(["api://other"]), "audience_mismatch"),
        (json!("API://SHOP"), "audience_mismatch"),
        (json!([AUDIENCE, 7]), "claim_invalid"),
        (json!(7), "claim_invalid"),
        (json!(null), "audience_mismatch"),
    ] {
        let t = h.idp.sign("ES256", claims(json!({ "aud": aud })));
        assert_eq!(
            verdict(&h.get_with_token("/api/orders", &t)),
            want,
            "aud {aud}"
        );
    }
}

#[test]
fn oversized_tokens_are_rejected_without_parsing() {
    let h = Harness::new();
    let t = h
        .idp
        .sign("ES256", claims(json!({ "pad": "x".repeat(20_000) })));
    assert_refused(&h, &t, "token_too_large");
}

#[test]
fn signature_and_payload_tampering_is_detected_for_every_algorithm() {
    let h = Harness::new();
    for alg in ["ES256", "ES384", "RS256", "PS256", "EdDSA"] {
        let t = h.idp.sign(alg, claims(json!({})));
        assert_eq!(
            verdict(&h.get_with_token("/api/orders", &t)),
            "forward:eu",
            "{alg} valid"
        );
        let (input, sig) = t.rsplit_once('.').unwrap();
        let mut raw = portcullis_core::b64::decode(sig).unwrap();
        raw[3] ^= 1;
        assert_refused(&h, &format!("{input}.{}", b64(&raw)), "signature_invalid");
        // The payload of another, more privileged user with the original signature.
        let (header, _) = input.split_once('.').unwrap();
        let evil = b64(claims(json!({"sub": "admin"})).to_string().as_bytes());
        assert_refused(&h, &format!("{header}.{evil}.{sig}"), "signature_invalid");
    }
}

#[test]
fn an_algorithm_the_key_is_not_for_is_refused() {
    let h = Harness::new();
    // The RSA key published for RS256 (kid rs-1) may not verify PS256 even though the math
    // would work: the JWK's `alg` pins it.
    let ps = h.idp.sign("PS256", claims(json!({})));
    let (_, rest) = ps.split_once('.').unwrap();
    let header = b64(json!({"alg": "PS256", "kid": "rs-1"})
        .to_string()
        .as_bytes());
    let t = format!("{header}.{rest}");
    assert_refused(&h, &t, "key_mismatch");
}

#[test]
fn foreign_token_types_are_not_access_tokens() {
    let h = Harness::new();
    for typ in ["dpop+jwt", "logout+jwt", "application/secevent+jwt"] {
        let t = h.idp.sign_typed("ES256", claims(json!({})), Some(typ));
        assert_refused(&h, &t, "token_type_invalid");
    }
    let t = h.idp.sign_typed("ES256", claims(json!({})), Some("at+jwt"));
    assert_eq!(verdict(&h.get_with_token("/api/orders", &t)), "forward:eu");
}

#[test]
fn duplicate_claims_are_rejected() {
    let h = Harness::new();
    let header = b64(json!({"alg": "ES256", "kid": "es-1"})
        .to_string()
        .as_bytes());
    let body = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"sub":"user-1","sub":"admin"}}"#,
        NOW + 60
    );
    let input = format!("{header}.{}", b64(body.as_bytes()));
    let key = p256::ecdsa::SigningKey::from_slice(&h.idp.es256.to_bytes()).unwrap();
    use p256::ecdsa::signature::Signer as _;
    let s: p256::ecdsa::Signature = key.sign(input.as_bytes());
    assert_refused(
        &h,
        &format!("{input}.{}", b64(&s.to_bytes())),
        "token_malformed",
    );
}
