//! Signature verification per algorithm through the portable verifier (keys prepared once,
//! as the key store does), and compact-JWS parsing.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
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

criterion_group!(benches, verify);
criterion_main!(benches);
