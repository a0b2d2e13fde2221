//! The portable signature verifier: pure-Rust RustCrypto primitives (the same crates
//! jwt-simple's `pure-rust` backend uses), building for native and both wasm targets.

use hmac::{Hmac, KeyInit, Mac};
use p256::elliptic_curve::point::AffineCoordinates as _;
use rsa::traits::SignatureScheme as _;
use rsa::{BoxedUint, Pkcs1v15Sign, PublicKey, pss::Pss};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::{Algorithm, Curve, KeyError, KeyMaterial, SignatureVerifier};
use crate::jwk::{check_rsa_public, strip_leading_zeros};

/// A key prepared by [`PortableVerifier`].
#[derive(Clone, Debug)]
pub enum PortableKey {
    /// An RSA public key: checked when prepared, its Montgomery form built on first use.
    Rsa(LazyRsa),
    /// A P-256 ECDSA key.
    P256(p256::ecdsa::VerifyingKey),
    /// A P-384 ECDSA key.
    P384(p384::ecdsa::VerifyingKey),
    /// An Ed25519 key.
    Ed25519(ed25519_compact::PublicKey),
    /// An HMAC secret.
    Hmac(Vec<u8>),
}

/// An RSA public key whose expensive form (`rsa::PublicKey`, Montgomery parameters of the
/// modulus) is built the first time it verifies a signature. An edge bundle prepares every
/// key of its sets in each instance, one per request, while a token names only one: building
/// them all dominated the cost of RSA keys in a set (issue 18). The key policy
/// ([`check_rsa_public`]) still runs when the key is prepared.
#[derive(Clone, Debug)]
pub struct LazyRsa {
    n: BoxedUint,
    e: BoxedUint,
    built: std::sync::OnceLock<Option<PublicKey>>,
}

impl LazyRsa {
    /// The key; `None` if the `rsa` crate refuses it (then nothing verifies: fail closed).
    fn key(&self) -> Option<&PublicKey> {
        self.built
            .get_or_init(|| PublicKey::new(self.n.clone(), self.e.clone()).ok())
            .as_ref()
    }
}

/// Pure-Rust verifier; the default wherever the host offers nothing faster.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortableVerifier;

/// The ECDSA key at the point (`x`, `y`) with one curve's crate (`p256`, `p384`); `None`
/// for a coordinate of another length or at or above the field's modulus, a point off the
/// curve, or the identity.
macro_rules! ec_key {
    ($curve:ident, $x:expr, $y:expr) => {
        $curve::FieldBytes::try_from($x.as_slice())
            .ok()
            .zip($curve::FieldBytes::try_from($y.as_slice()).ok())
            .and_then(|(x, y)| Option::from($curve::AffinePoint::from_coordinates(&x, &y)))
            .and_then(|p| $curve::ecdsa::VerifyingKey::from_affine(p).ok())
    };
}

impl SignatureVerifier for PortableVerifier {
    type Key = PortableKey;

    fn prepare(&self, material: &KeyMaterial) -> Result<PortableKey, KeyError> {
        match material {
            KeyMaterial::Rsa { n, e } => prepare_rsa(n, e),
            KeyMaterial::Ec { curve, x, y } => {
                let len = curve.coordinate_len();
                if x.len() != len || y.len() != len {
                    return Err(KeyError(format!(
                        "{} coordinates must be {len} bytes each",
                        curve.name()
                    )));
                }
                // From the coordinates, as a JWK gives them: the point must be on the curve
                // (and not the identity), each coordinate below the field's modulus. (Not
                // through a SEC1 encoding: its decoder also takes compressed points, which
                // links a field square root no JWK needs.)
                let bad = || KeyError(format!("point is not on {}", curve.name()));
                match curve {
                    Curve::P256 => ec_key!(p256, x, y).map(PortableKey::P256),
                    Curve::P384 => ec_key!(p384, x, y).map(PortableKey::P384),
                }
                .ok_or_else(bad)
            }
            KeyMaterial::Ed25519 { x } => ed25519_compact::PublicKey::from_slice(x)
                .map(PortableKey::Ed25519)
                .map_err(|_| KeyError("Ed25519 key must be 32 bytes".into())),
            KeyMaterial::Symmetric { secret } => {
                if secret.is_empty() {
                    return Err(KeyError("empty HMAC secret".into()));
                }
                Ok(PortableKey::Hmac(secret.clone()))
            }
        }
    }

    fn verify(&self, alg: Algorithm, key: &PortableKey, message: &[u8], signature: &[u8]) -> bool {
        match (alg, key) {
            (Algorithm::HS256, PortableKey::Hmac(k)) => {
                hmac_ok::<Hmac<Sha256>>(k, message, signature)
            }
            (Algorithm::HS384, PortableKey::Hmac(k)) => {
                hmac_ok::<Hmac<Sha384>>(k, message, signature)
            }
            (Algorithm::HS512, PortableKey::Hmac(k)) => {
                hmac_ok::<Hmac<Sha512>>(k, message, signature)
            }
            (Algorithm::RS256, PortableKey::Rsa(k)) => pkcs1_ok(
                k,
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(message),
                signature,
            ),
            (Algorithm::RS384, PortableKey::Rsa(k)) => pkcs1_ok(
                k,
                Pkcs1v15Sign::new::<Sha384>(),
                &Sha384::digest(message),
                signature,
            ),
            (Algorithm::RS512, PortableKey::Rsa(k)) => pkcs1_ok(
                k,
                Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(message),
                signature,
            ),
            (Algorithm::PS256, PortableKey::Rsa(k)) => k.key().is_some_and(|k| {
                Pss::<Sha256>::new()
                    .verify(k, &Sha256::digest(message), signature)
                    .is_ok()
            }),
            (Algorithm::PS384, PortableKey::Rsa(k)) => k.key().is_some_and(|k| {
                Pss::<Sha384>::new()
                    .verify(k, &Sha384::digest(message), signature)
                    .is_ok()
            }),
            (Algorithm::PS512, PortableKey::Rsa(k)) => k.key().is_some_and(|k| {
                Pss::<Sha512>::new()
                    .verify(k, &Sha512::digest(message), signature)
                    .is_ok()
            }),
            (Algorithm::ES256, PortableKey::P256(k)) => {
                use p256::ecdsa::signature::Verifier as _;
                // Exactly r‖s (JWS uses IEEE P1363, not DER); r = 0 or s = 0 is refused here.
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| k.verify(message, &sig).is_ok())
            }
            (Algorithm::ES384, PortableKey::P384(k)) => {
                use p384::ecdsa::signature::Verifier as _;
                p384::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| k.verify(message, &sig).is_ok())
            }
            (Algorithm::EdDSA, PortableKey::Ed25519(k)) => {
                ed25519_compact::Signature::from_slice(signature)
                    .is_ok_and(|sig| k.verify(message, &sig).is_ok())
            }
            _ => false,
        }
    }
}

fn prepare_rsa(n: &[u8], e: &[u8]) -> Result<PortableKey, KeyError> {
    // The key policy (size, exponent, ROCA) is the core's, whatever the verifier.
    check_rsa_public(n, e).map_err(KeyError)?;
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let precision = u32::try_from(n.len() * 8).map_err(|_| KeyError("modulus too large".into()))?;
    let n = BoxedUint::from_be_slice(n, precision)
        .map_err(|_| KeyError("RSA modulus is not a valid integer".into()))?;
    let e_bits =
        u32::try_from(e.len().max(1) * 8).map_err(|_| KeyError("exponent too large".into()))?;
    let e = BoxedUint::from_be_slice(e, e_bits)
        .map_err(|_| KeyError("RSA exponent is not a valid integer".into()))?;
    Ok(PortableKey::Rsa(LazyRsa {
        n,
        e,
        built: std::sync::OnceLock::new(),
    }))
}

fn pkcs1_ok(key: &LazyRsa, scheme: Pkcs1v15Sign, hashed: &[u8], signature: &[u8]) -> bool {
    key.key()
        .is_some_and(|k| scheme.verify(k, hashed, signature).is_ok())
}

fn hmac_ok<M: Mac + KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    match <M as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.verify_slice(tag).is_ok() // constant-time comparison
        }
        Err(_) => false,
    }
}

/// The Ed25519 signature of `input` under the private key with this 32-byte `seed` and
/// its 32-byte `public` key (deterministic, RFC 8032 §5.1.6); `None` for a seed or key of
/// another length.
///
/// The public key is the one derived from the seed when the configuration was loaded
/// (`config::agents`): deriving it again for every signature would cost a second
/// base-point multiplication, as much as the signature itself.
pub fn ed25519_sign(seed: &[u8], public: &[u8], input: &[u8]) -> Option<Vec<u8>> {
    if seed.len() != 32 || public.len() != 32 {
        return None;
    }
    // RFC 8032's secret key as the library holds it: the seed, then the public key.
    let mut secret = [0u8; 64];
    for (out, byte) in secret.iter_mut().zip(seed.iter().chain(public)) {
        *out = *byte;
    }
    let sk = ed25519_compact::SecretKey::new(secret);
    Some(sk.sign(input, None).to_vec())
}

#[cfg(test)]
mod tests {
    use super::{PortableKey, PortableVerifier, ed25519_sign};
    use crate::crypto::{Algorithm, Curve, KeyMaterial, SignatureVerifier};

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8032 §7.1, TEST 1 and TEST 2: the secret key is signed with as configured, seed
    /// and the public key loaded with it, without deriving the key pair again.
    #[test]
    fn ed25519_signatures_are_rfc_8032s() {
        let cases = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                 5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
                 085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (seed, public, message, signature) in cases {
            let (seed, public) = (unhex(seed), unhex(public));
            assert_eq!(
                ed25519_sign(&seed, &public, &unhex(message)),
                Some(unhex(signature))
            );
        }
        assert_eq!(ed25519_sign(&[7; 31], &[7; 32], b"m"), None);
        assert_eq!(ed25519_sign(&[7; 32], &[7; 33], b"m"), None);
    }

    /// EC keys are built from the JWK's coordinates: a point on the curve verifies what its
    /// private key signed; a point off the curve, coordinates at or above the field's modulus
    /// and the wrong lengths are refused, as the SEC1 decoder refuses them.
    #[test]
    fn ec_keys_are_points_on_their_curve() {
        use p256::ecdsa::signature::Signer as _;
        let prepare = |curve, x: &[u8], y: &[u8]| {
            PortableVerifier.prepare(&KeyMaterial::Ec {
                curve,
                x: x.to_vec(),
                y: y.to_vec(),
            })
        };
        let signer = p256::ecdsa::SigningKey::from_slice(&[0x5a; 32]).unwrap();
        let point = signer.verifying_key().to_sec1_point(false);
        let (x, y) = (point.x().unwrap().to_vec(), point.y().unwrap().to_vec());
        let key = prepare(Curve::P256, &x, &y).unwrap();
        let signature: p256::ecdsa::Signature = signer.sign(b"m");
        let bytes = signature.to_bytes();
        assert!(PortableVerifier.verify(Algorithm::ES256, &key, b"m", &bytes));
        assert!(!PortableVerifier.verify(Algorithm::ES256, &key, b"n", &bytes));

        let mut off = y.clone();
        off[31] ^= 1;
        let mut sec1 = vec![4];
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&off);
        assert!(p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).is_err());
        for (px, py) in [
            (&x[..], &off[..]),
            (&[0xff; 32][..], &y[..]),
            (&x[..], &[0xff; 32][..]),
            (&[0; 32][..], &[0; 32][..]),
        ] {
            let refused = prepare(Curve::P256, px, py).err().unwrap();
            assert!(refused.0.contains("not on P-256"), "{}", refused.0);
        }
        assert!(prepare(Curve::P256, &x[1..], &y).is_err());

        // P-384: a public key is on the curve; the point with another `x` is not.
        let signer = p384::ecdsa::SigningKey::from_slice(&[0x5a; 48]).unwrap();
        let point = signer.verifying_key().to_sec1_point(false);
        let (x, y) = (point.x().unwrap().to_vec(), point.y().unwrap().to_vec());
        assert!(matches!(
            prepare(Curve::P384, &x, &y),
            Ok(PortableKey::P384(_))
        ));
        let mut off = x.clone();
        off[0] ^= 0x80;
        assert!(prepare(Curve::P384, &off, &y).is_err());
    }
}
