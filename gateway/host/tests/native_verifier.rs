//! The native (`ring`) verifier against the same Wycheproof signature suites as the portable
//! one, and against tokens minted by jwt-simple.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_core::SignatureVerifier;
use portcullis_host::keys::verifier::NativeVerifier;
use portcullis_tests::wycheproof::run_all_signature_suites;

#[test]
fn native_verifier_passes_the_wycheproof_signature_suites() {
    run_all_signature_suites(&NativeVerifier);
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
