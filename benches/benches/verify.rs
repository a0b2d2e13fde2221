//! Signature verification per algorithm through the portable verifier (keys prepared once,
//! as the key store does), compact-JWS parsing, and client-assertion signatures
//! (`private_key_jwt`) per client-key family.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::client_auth::ClientKey;
use portcullis_core::jwk::parse_jwks;
use portcullis_core::jws::parse_compact;
use portcullis_core::keyset::KeySet;
use portcullis_core::{Algorithm, PortableVerifier, SignatureVerifier};
use portcullis_tests::{TestIdp, claims, forge, hs256};
use serde_json::json;
use std::hint::black_box;

fn verify(c: &mut Criterion) {
    let idp = TestIdp::shared();
    let set = KeySet::prepare(
        parse_jwks(idp.jwks().to_string().as_bytes()).unwrap(),
        &PortableVerifier,
    );
    let mut group = c.benchmark_group("verify");
    for (alg, name) in [
        (Algorithm::ES256, "ES256"),
        (Algorithm::ES384, "ES384"),
        (Algorithm::RS256, "RS256"),
        (Algorithm::PS256, "PS256"),
        (Algorithm::EdDSA, "EdDSA"),
    ] {
        let token = idp.sign(name, claims(json!({})));
        let jws = parse_compact(&token, 16 * 1024).unwrap();
        let key = &set.select(jws.header.kid.as_deref(), alg).unwrap().key;
        assert!(PortableVerifier.verify(alg, key, jws.signing_input.as_bytes(), &jws.signature));
        group.bench_function(name, |b| {
            b.iter(|| {
                PortableVerifier.verify(
                    alg,
                    key,
                    black_box(jws.signing_input.as_bytes()),
                    black_box(&jws.signature),
                )
            })
        });
    }
    let secret = [7u8; 32];
    let token = forge(&json!({"alg": "HS256"}), &claims(json!({})), hs256(&secret));
    let jws = parse_compact(&token, 16 * 1024).unwrap();
    let key = PortableVerifier
        .prepare(&portcullis_core::KeyMaterial::Symmetric {
            secret: secret.to_vec(),
        })
        .unwrap();
    assert!(PortableVerifier.verify(
        Algorithm::HS256,
        &key,
        jws.signing_input.as_bytes(),
        &jws.signature
    ));
    group.bench_function("HS256", |b| {
        b.iter(|| {
            PortableVerifier.verify(
                Algorithm::HS256,
                &key,
                black_box(jws.signing_input.as_bytes()),
                black_box(&jws.signature),
            )
        })
    });
    group.finish();

    let token = idp.sign("ES256", claims(json!({})));
    c.bench_function("parse_compact", |b| {
        b.iter(|| {
            parse_compact(black_box(&token), 16 * 1024)
                .unwrap()
                .signature
                .len()
        })
    });
}

/// One client-assertion signature per key family, as a token-endpoint call makes it.
fn sign(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_key_sign");
    let rsa = include_bytes!("../../gateway/core/testdata/client-rsa.jwk.json");
    // RFC 7515 A.3 and RFC 8037 A.1's example keys.
    let p256 = json!({
        "kty": "EC", "crv": "P-256",
        "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    });
    let ed25519 = json!({
        "kty": "OKP", "crv": "Ed25519",
        "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    });
    for (name, jwk) in [
        ("RS256", rsa.to_vec()),
        ("ES256", p256.to_string().into_bytes()),
        ("EdDSA", ed25519.to_string().into_bytes()),
    ] {
        let key = ClientKey::from_private_jwk(&jwk).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| key.sign(black_box(b"header.claims")).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, verify, sign);
criterion_main!(benches);
