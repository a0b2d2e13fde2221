//! JWS algorithms, key material and the signature-check trait a host can implement natively.

mod portable;
mod rsa_signer;

pub use portable::{PortableKey, PortableVerifier, ed25519_sign};
pub use rsa_signer::rs256_sign;

use std::fmt;

/// A JWS signature algorithm Portcullis accepts (RFC 7518 §3, RFC 8037). `none` is not one.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[allow(missing_docs)] // the names are the JOSE registry's
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The family of key an algorithm needs (the JWK `kty`, plus the curve where there is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    /// A shared secret (`kty` = `oct`).
    Symmetric,
    /// An RSA public key (`kty` = `RSA`).
    Rsa,
    /// An elliptic-curve public key (`kty` = `EC`) on this curve.
    Ec(Curve),
    /// An Edwards-curve public key (`kty` = `OKP`, `crv` = `Ed25519`).
    Ed25519,
}

/// Elliptic curves for ECDSA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Curve {
    /// NIST P-256 (`ES256`).
    P256,
    /// NIST P-384 (`ES384`).
    P384,
}

impl Curve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    /// Byte length of one coordinate (and of one half of a P1363 signature).
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The algorithm with this exact (case-sensitive) JOSE name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JOSE name, e.g. `ES256`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// The kind of key this algorithm verifies with.
    pub fn key_family(self) -> KeyFamily {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Symmetric,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::Ec(Curve::P256),
            Algorithm::ES384 => KeyFamily::Ec(Curve::P384),
            Algorithm::EdDSA => KeyFamily::Ed25519,
        }
    }

    /// True for the HMAC algorithms.
    pub fn is_symmetric(self) -> bool {
        self.key_family() == KeyFamily::Symmetric
    }

    /// For HMAC: the hash output length, the minimum secret length (RFC 7518 §3.2).
    pub fn hmac_min_secret_len(self) -> Option<usize> {
        match self {
            Algorithm::HS256 => Some(32),
            Algorithm::HS384 => Some(48),
            Algorithm::HS512 => Some(64),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Public key material as it arrives in a JWK, before any verifier has prepared it.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KeyMaterial {
    /// RSA modulus and public exponent, big-endian.
    Rsa {
        /// Modulus `n`.
        n: Vec<u8>,
        /// Public exponent `e`.
        e: Vec<u8>,
    },
    /// An uncompressed elliptic-curve point.
    Ec {
        /// The curve.
        curve: Curve,
        /// Affine x, big-endian, exactly the curve's coordinate length.
        x: Vec<u8>,
        /// Affine y, big-endian, exactly the curve's coordinate length.
        y: Vec<u8>,
    },
    /// An Ed25519 public key (32 bytes).
    Ed25519 {
        /// The encoded point.
        x: Vec<u8>,
    },
    /// A shared HMAC secret.
    Symmetric {
        /// The secret bytes.
        secret: Vec<u8>,
    },
}

impl KeyMaterial {
    /// The key family of this material.
    pub fn family(&self) -> KeyFamily {
        match self {
            KeyMaterial::Rsa { .. } => KeyFamily::Rsa,
            KeyMaterial::Ec { curve, .. } => KeyFamily::Ec(*curve),
            KeyMaterial::Ed25519 { .. } => KeyFamily::Ed25519,
            KeyMaterial::Symmetric { .. } => KeyFamily::Symmetric,
        }
    }
}

/// One signature check an adapter's platform makes itself, asynchronously (the Workers
/// runtime's WebCrypto): the decision asks for it and is resumed with the verdict (see
/// [`crate::ports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The algorithm.
    pub alg: Algorithm,
    /// The public key.
    pub material: KeyMaterial,
    /// The signing input.
    pub message: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            KeyMaterial::Ec { curve, .. } => write!(f, "Ec({})", curve.name()),
            KeyMaterial::Ed25519 { .. } => f.write_str("Ed25519"),
            KeyMaterial::Symmetric { secret } => write!(f, "Symmetric({} bytes)", secret.len()),
        }
    }
}

/// Why key material could not be prepared for verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks signatures. The core calls [`prepare`](Self::prepare) once when a key set is
/// loaded and [`verify`](Self::verify) per token, so a host can keep parsed native keys
/// (aws-lc-rs, WebCrypto handles, …) and never parse a key on the request path.
///
/// The core has already checked that `alg` fits the key's family, the issuer's allow-list
/// and the JWK's `alg`/`use`/`key_ops`; an implementation must still return `false` on any
/// mismatch it notices rather than panic.
pub trait SignatureVerifier: Send + Sync {
    /// The verifier's own form of a public key or secret.
    type Key: Send + Sync;

    /// Turns JWK material into a prepared key, rejecting material that is malformed or
    /// too weak (e.g. an RSA modulus under 2048 bits, a point not on the curve).
    fn prepare(&self, material: &KeyMaterial) -> Result<Self::Key, KeyError>;

    /// True when `signature` is a valid `alg` signature of `message` under `key`.
    fn verify(&self, alg: Algorithm, key: &Self::Key, message: &[u8], signature: &[u8]) -> bool;

    /// True when this verifier has the platform check some signatures itself (see
    /// [`SignatureVerifier::platform_check`]); false spares every other verifier the work
    /// of finding the token's key twice. Default: false.
    fn platform_checks(&self) -> bool {
        false
    }

    /// The material of `key` when this verifier has the platform check `alg` signatures
    /// under it first, asynchronously (the Workers runtime's WebCrypto): the decision then
    /// waits for a [`SignatureCheck`] and hands the verdict to [`SignatureVerifier::record`].
    /// Default: `None` — [`SignatureVerifier::verify`] checks it.
    fn platform_check(&self, key: &Self::Key, alg: Algorithm) -> Option<KeyMaterial> {
        let _ = (key, alg);
        None
    }

    /// The platform's verdict on a [`SignatureCheck`], for `verify` to answer with. Default:
    /// ignored.
    fn record(&self, check: &SignatureCheck, valid: bool) {
        let _ = (check, valid);
    }
}
