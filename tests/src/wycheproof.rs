//! Wycheproof vector files (../shared/testdata/wycheproof) and a runner for the raw
//! signature suites, shared by every verifier's tests.

use portcullis_core::crypto::Curve;
use portcullis_core::{Algorithm, KeyMaterial, SignatureVerifier};
use serde_json::Value;

/// Decodes hex.
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A vector file.
pub fn vectors(name: &str) -> Value {
    let path = crate::repo_root()
        .join("../shared/testdata/wycheproof")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("vector JSON")
}

/// Runs a raw signature suite through `verifier`: every `valid` case must verify, every
/// `invalid` one must not (`acceptable` ones only must not panic). Returns the number of
/// cases run.
pub fn run_signature_suite<V: SignatureVerifier>(
    verifier: &V,
    name: &str,
    alg: Algorithm,
    key_of: impl Fn(&Value) -> KeyMaterial,
) -> usize {
    let suite = vectors(name);
    let mut checked = 0;
    let mut failures = Vec::new();
    for group in suite["testGroups"].as_array().expect("groups") {
        let key = verifier.prepare(&key_of(group));
        for case in group["tests"].as_array().expect("tests") {
            let (msg, sig) = (
                hex(case["msg"].as_str().expect("msg")),
                hex(case["sig"].as_str().expect("sig")),
            );
            let ok = key
                .as_ref()
                .is_ok_and(|k| verifier.verify(alg, k, &msg, &sig));
            let id = case["tcId"].as_u64().unwrap_or(0);
            match case["result"].as_str().expect("result") {
                "valid" if !ok => failures.push(format!("tc {id} ({}) rejected", case["comment"])),
                "invalid" if ok => failures.push(format!("tc {id} ({}) accepted", case["comment"])),
                _ => {}
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{name}: {failures:#?}");
    checked
}

/// The EC key of a group.
pub fn ec_key(curve: Curve) -> impl Fn(&Value) -> KeyMaterial {
    move |group| {
        let point = hex(group["publicKey"]["uncompressed"].as_str().expect("point"));
        let len = curve.coordinate_len();
        KeyMaterial::Ec {
            curve,
            x: point[1..1 + len].to_vec(),
            y: point[1 + len..].to_vec(),
        }
    }
}

/// The RSA key of a group.
pub fn rsa_key(group: &Value) -> KeyMaterial {
    let pk = &group["publicKey"];
    KeyMaterial::Rsa {
        n: hex(pk["modulus"].as_str().expect("n")),
        e: hex(pk["publicExponent"].as_str().expect("e")),
    }
}

/// The Ed25519 key of a group.
pub fn ed25519_key(group: &Value) -> KeyMaterial {
    KeyMaterial::Ed25519 {
        x: hex(group["publicKey"]["pk"].as_str().expect("pk")),
    }
}

/// Runs all five raw signature suites through `verifier`, asserting the case counts.
pub fn run_all_signature_suites<V: SignatureVerifier>(verifier: &V) {
    assert_eq!(
        run_signature_suite(
            verifier,
            "ecdsa_secp256r1_sha256_p1363_test.json",
            Algorithm::ES256,
            ec_key(Curve::P256)
        ),
        262
    );
    assert_eq!(
        run_signature_suite(
            verifier,
            "ecdsa_secp384r1_sha384_p1363_test.json",
            Algorithm::ES384,
            ec_key(Curve::P384)
        ),
        280
    );
    assert_eq!(
        run_signature_suite(verifier, "ed25519_test.json", Algorithm::EdDSA, ed25519_key),
        151
    );
    assert_eq!(
        run_signature_suite(
            verifier,
            "rsa_signature_2048_sha256_test.json",
            Algorithm::RS256,
            rsa_key
        ),
        259
    );
    assert_eq!(
        run_signature_suite(
            verifier,
            "rsa_pss_2048_sha256_mgf1_32_test.json",
            Algorithm::PS256,
            rsa_key
        ),
        108
    );
}
