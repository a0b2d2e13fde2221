//! Native signature checks with `ring` (assembly-optimised, constant-time primitives).
//! Key material is validated once with the portable verifier's checks (point on curve,
//! RSA size/exponent/ROCA policy from the core) and kept in ring's form.

use portcullis_core::crypto::{Curve, KeyError, KeyMaterial};
use portcullis_core::jwk::strip_leading_zeros;
use portcullis_core::{Algorithm, PortableVerifier, SignatureVerifier};
use ring::{hmac, signature};

/// A key prepared for [`NativeVerifier`].
#[derive(Debug)]
pub enum NativeKey {
    /// RSA modulus and exponent (big-endian, leading zeros stripped).
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Exponent.
        e: Vec<u8>,
    },
    /// An uncompressed EC point `04 ‖ x ‖ y`.
    Ec(Curve, Vec<u8>),
    /// An Ed25519 public key.
    Ed25519(Vec<u8>),
    /// HMAC keys for SHA-256, SHA-384 and SHA-512.
    Hmac(Box<HmacKeys>),
}

/// One HMAC key per hash.
#[derive(Debug)]
pub struct HmacKeys {
    sha256: hmac::Key,
    sha384: hmac::Key,
    sha512: hmac::Key,
}

/// `ring`-backed verifier for the native host.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeVerifier;

impl SignatureVerifier for NativeVerifier {
    type Key = NativeKey;

    fn prepare(&self, material: &KeyMaterial) -> Result<NativeKey, KeyError> {
        // The portable checks are the policy; ring keeps the fast path.
        PortableVerifier.prepare(material)?;
        Ok(match material {
            KeyMaterial::Rsa { n, e } => NativeKey::Rsa {
                n: strip_leading_zeros(n).to_vec(),
                e: strip_leading_zeros(e).to_vec(),
            },
            KeyMaterial::Ec { curve, x, y } => {
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                NativeKey::Ec(*curve, point)
            }
            KeyMaterial::Ed25519 { x } => NativeKey::Ed25519(x.clone()),
            KeyMaterial::Symmetric { secret } => NativeKey::Hmac(Box::new(HmacKeys {
                sha256: hmac::Key::new(hmac::HMAC_SHA256, secret),
                sha384: hmac::Key::new(hmac::HMAC_SHA384, secret),
                sha512: hmac::Key::new(hmac::HMAC_SHA512, secret),
            })),
        })
    }

    fn verify(&self, alg: Algorithm, key: &NativeKey, message: &[u8], sig: &[u8]) -> bool {
        let rsa = |params: &'static signature::RsaParameters, n: &[u8], e: &[u8]| {
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, message, sig)
                .is_ok()
        };
        let unparsed = |a: &'static dyn signature::VerificationAlgorithm, k: &[u8]| {
            signature::UnparsedPublicKey::new(a, k)
                .verify(message, sig)
                .is_ok()
        };
        match (alg, key) {
            (Algorithm::RS256, NativeKey::Rsa { n, e }) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA256, n, e)
            }
            (Algorithm::RS384, NativeKey::Rsa { n, e }) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA384, n, e)
            }
            (Algorithm::RS512, NativeKey::Rsa { n, e }) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA512, n, e)
            }
            (Algorithm::PS256, NativeKey::Rsa { n, e }) => {
                rsa(&signature::RSA_PSS_2048_8192_SHA256, n, e)
            }
            (Algorithm::PS384, NativeKey::Rsa { n, e }) => {
                rsa(&signature::RSA_PSS_2048_8192_SHA384, n, e)
            }
            (Algorithm::PS512, NativeKey::Rsa { n, e }) => {
                rsa(&signature::RSA_PSS_2048_8192_SHA512, n, e)
            }
            (Algorithm::ES256, NativeKey::Ec(Curve::P256, p)) => {
                unparsed(&signature::ECDSA_P256_SHA256_FIXED, p)
            }
            (Algorithm::ES384, NativeKey::Ec(Curve::P384, p)) => {
                unparsed(&signature::ECDSA_P384_SHA384_FIXED, p)
            }
            (Algorithm::EdDSA, NativeKey::Ed25519(k)) => unparsed(&signature::ED25519, k),
            (Algorithm::HS256, NativeKey::Hmac(keys)) => {
                hmac::verify(&keys.sha256, message, sig).is_ok()
            }
            (Algorithm::HS384, NativeKey::Hmac(keys)) => {
                hmac::verify(&keys.sha384, message, sig).is_ok()
            }
            (Algorithm::HS512, NativeKey::Hmac(keys)) => {
                hmac::verify(&keys.sha512, message, sig).is_ok()
            }
            _ => false,
        }
    }
}
