//! The native (`ring`) verifier against the same Wycheproof signature suites as the portable
//! one, and against tokens minted by jwt-simple.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_core::crypto::Curve;
use portcullis_core::{Algorithm, KeyMaterial, SignatureVerifier};
use portcullis_host::native_verifier::NativeVerifier;
use portcullis_tests::repo_root;
use serde_json::Value;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn run(name: &str, alg: Algorithm, key_of: impl Fn(&Value) -> KeyMaterial) -> usize {
    let path = repo_root().join("../shared/testdata/wycheproof").join(name);
    let suite: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut n = 0;
    for group in suite["testGroups"].as_array().unwrap() {
        let key = NativeVerifier.prepare(&key_of(group));
        for case in group["tests"].as_array().unwrap() {
            let ok = key.as_ref().is_ok_and(|k| {
                NativeVerifier.verify(
                    alg,
                    k,
                    &hex(case["msg"].as_str().unwrap()),
                    &hex(case["sig"].as_str().unwrap()),
                )
            });
            match case["result"].as_str().unwrap() {
                "valid" => assert!(ok, "{name} tc {} rejected", case["tcId"]),
                "invalid" => assert!(!ok, "{name} tc {} accepted", case["tcId"]),
                _ => {}
            }
            n += 1;
        }
    }
    n
}

fn ec(curve: Curve) -> impl Fn(&Value) -> KeyMaterial {
    move |g| {
        let p = hex(g["publicKey"]["uncompressed"].as_str().unwrap());
        let l = curve.coordinate_len();
        KeyMaterial::Ec {
            curve,
            x: p[1..1 + l].to_vec(),
            y: p[1 + l..].to_vec(),
        }
    }
}

fn rsa(g: &Value) -> KeyMaterial {
    KeyMaterial::Rsa {
        n: hex(g["publicKey"]["modulus"].as_str().unwrap()),
        e: hex(g["publicKey"]["publicExponent"].as_str().unwrap()),
    }
}

#[test]
fn native_verifier_passes_the_wycheproof_signature_suites() {
    assert_eq!(
        run(
            "ecdsa_secp256r1_sha256_p1363_test.json",
            Algorithm::ES256,
            ec(Curve::P256)
        ),
        262
    );
    assert_eq!(
        run(
            "ecdsa_secp384r1_sha384_p1363_test.json",
            Algorithm::ES384,
            ec(Curve::P384)
        ),
        280
    );
    assert_eq!(
        run("ed25519_test.json", Algorithm::EdDSA, |g| {
            KeyMaterial::Ed25519 {
                x: hex(g["publicKey"]["pk"].as_str().unwrap()),
            }
        }),
        151
    );
    assert_eq!(
        run("rsa_signature_2048_sha256_test.json", Algorithm::RS256, rsa),
        259
    );
    assert_eq!(
        run(
            "rsa_pss_2048_sha256_mgf1_32_test.json",
            Algorithm::PS256,
            rsa
        ),
        108
    );
}

#[test]
fn native_and_portable_verifiers_agree_on_real_tokens() {
    use portcullis_core::jwk::parse_jwks;
    use portcullis_core::jws::parse_compact;
    use portcullis_core::keyset::KeySet;
    let idp = portcullis_tests::TestIdp::shared();
    let native = KeySet::prepare(
        parse_jwks(idp.jwks().to_string().as_bytes()).unwrap(),
        &NativeVerifier,
    );
    for alg in ["ES256", "ES384", "RS256", "PS256", "EdDSA"] {
        let token = idp.sign(alg, portcullis_tests::claims(serde_json::json!({})));
        let jws = parse_compact(&token, 16_384).unwrap();
        let entry = native
            .select(jws.header.kid.as_deref(), jws.header.alg)
            .unwrap();
        assert!(
            NativeVerifier.verify(
                jws.header.alg,
                &entry.key,
                jws.signing_input.as_bytes(),
                &jws.signature
            ),
            "{alg}"
        );
        let mut bad = jws.signature.clone();
        bad[5] ^= 1;
        assert!(
            !NativeVerifier.verify(
                jws.header.alg,
                &entry.key,
                jws.signing_input.as_bytes(),
                &bad
            ),
            "{alg} tampered"
        );
    }
}
