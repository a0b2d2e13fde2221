//! RS256 signatures with a client's RSA private key (`private_key_jwt` client assertions).
//!
//! The private operation is the `rsa` crate's own ([`rsa::hazmat::rsa_decrypt_and_check`]:
//! constant-time Montgomery exponentiation, then the result raised to `e` again and compared,
//! so a faulty computation never leaves the gateway). What this module adds is the key in the
//! form that function takes, built from the JWK's `n`, `e` and `d` as they are, and the
//! RFC 8017 §9.2 encoding (EMSA-PKCS1-v1_5) of the SHA-256 digest, with the crate's own
//! `DigestInfo` prefix.
//!
//! Why not `rsa::PrivateKey`: building one from the JWK derives and checks the CRT
//! parameters (products, inverses, square roots of the primes), which links ~180 KB of
//! general big-integer multiplication and division into every wasm build, the edge bundle
//! included, for an operation a gateway performs only when it calls a provider's token
//! endpoint. The exponentiation with `d` needs nothing the signature checks do not already
//! link. The signature is the same: PKCS#1 v1.5 is deterministic.

use std::convert::Infallible;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams, MontyParams};
use crypto_bigint::{NonZero, Odd};
use rsa::BoxedUint;
use rsa::CrtValue;
use rsa::rand_core::{TryCryptoRng, TryRng};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use sha2::{Digest as _, Sha256};

use crate::jwk::strip_leading_zeros;

/// An RSA private key as `n`, `e` and `d`, with the modulus's Montgomery parameters.
struct PrivateExponent {
    n: NonZero<BoxedUint>,
    e: BoxedUint,
    d: BoxedUint,
    params: BoxedMontyParams,
}

impl PrivateExponent {
    /// The key from big-endian `n`, `e` and `d`; an error for an even or zero modulus.
    fn new(n: &[u8], e: &[u8], d: &[u8]) -> Result<Self, String> {
        let n = strip_leading_zeros(n);
        let bits = u32::try_from(n.len() * 8).map_err(|_| "RSA modulus too large")?;
        let int = |b: &[u8], what: &str| {
            let b = strip_leading_zeros(b);
            if b.len() > n.len() {
                return Err(format!("RSA `{what}` is longer than the modulus"));
            }
            BoxedUint::from_be_slice(b, bits).map_err(|_| format!("RSA `{what}` is not an integer"))
        };
        let modulus = int(n, "n")?;
        let odd = Option::<Odd<BoxedUint>>::from(Odd::new(modulus.clone()))
            .ok_or("the RSA modulus is even")?;
        let n = Option::<NonZero<BoxedUint>>::from(NonZero::new(modulus))
            .ok_or("the RSA modulus is zero")?;
        Ok(Self {
            n,
            e: int(e, "e")?,
            d: int(d, "d")?,
            params: BoxedMontyParams::new(odd),
        })
    }
}

impl PublicKeyParts for PrivateExponent {
    fn n(&self) -> &NonZero<BoxedUint> {
        &self.n
    }

    fn e(&self) -> &BoxedUint {
        &self.e
    }

    fn n_params(&self) -> &BoxedMontyParams {
        &self.params
    }
}

impl PrivateKeyParts for PrivateExponent {
    fn d(&self) -> &BoxedUint {
        &self.d
    }

    // No primes and no CRT values: the operation is `m^d mod n`.
    fn primes(&self) -> &[Odd<BoxedUint>] {
        &[]
    }

    fn p(&self) -> Option<&MontyParams<BoxedUint>> {
        None
    }

    fn q(&self) -> Option<&MontyParams<BoxedUint>> {
        None
    }

    fn dp(&self) -> Option<&BoxedUint> {
        None
    }

    fn dq(&self) -> Option<&BoxedUint> {
        None
    }

    fn qinv(&self) -> Option<&BoxedMontyForm> {
        None
    }

    fn crt_values(&self) -> Option<&[CrtValue]> {
        None
    }
}

/// No random source: the exponentiation is constant-time, so it is not blinded (as
/// `rsa::PrivateKey::sign` without a random source). Uninhabited: never called.
enum Unblinded {}

impl TryRng for Unblinded {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        match *self {}
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        match *self {}
    }

    fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), Infallible> {
        match *self {}
    }
}

impl TryCryptoRng for Unblinded {}

/// The RS256 signature (RSASSA-PKCS1-v1_5 with SHA-256, RFC 8017 §8.2.1) of `input` under
/// the private key (`n`, `e`, `d`, big-endian), `k` bytes long where `k` is the modulus's
/// length in bytes.
pub fn rs256_sign(n: &[u8], e: &[u8], d: &[u8], input: &[u8]) -> Result<Vec<u8>, String> {
    let key = PrivateExponent::new(n, e, d)?;
    let k = key.size();
    let digest = Sha256::digest(input);
    // The DER `DigestInfo` prefix of a SHA-256 digest, as the crate's verifier uses it.
    let digest_info = rsa::Pkcs1v15Sign::new::<Sha256>().prefix;
    // EM = 0x00 || 0x01 || PS (0xff…, at least 8) || 0x00 || DigestInfo || H
    let t_len = digest_info.len() + digest.len();
    let ps_len = k
        .checked_sub(t_len + 3)
        .filter(|&l| l >= 8)
        .ok_or("the RSA modulus is too short for an RS256 signature")?;
    let mut em = Vec::with_capacity(k);
    em.extend_from_slice(&[0x00, 0x01]);
    em.resize(2 + ps_len, 0xff);
    em.push(0x00);
    em.extend_from_slice(&digest_info);
    em.extend_from_slice(&digest);
    let m = BoxedUint::from_be_slice(&em, key.n_bits_precision())
        .map_err(|_| "RS256 encoding does not fit the modulus")?;
    // `m < n` by construction (its first byte is zero), so the only refusal is the check:
    // `s^e != m`, a `d` that is not `n` and `e`'s private exponent.
    let s = rsa::hazmat::rsa_decrypt_and_check(&key, None::<&mut Unblinded>, &m)
        .map_err(|_| "the RSA key's `d` does not belong to its `n` and `e`")?;
    // I2OSP(s, k): the integer's bytes, left-padded with zeros to the modulus's length.
    let bytes = s.to_be_bytes();
    let bytes = strip_leading_zeros(&bytes);
    let mut out = vec![0u8; k.saturating_sub(bytes.len())];
    out.extend_from_slice(bytes);
    if out.len() != k {
        return Err("RSA signature longer than the modulus".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn member(jwk: &Value, name: &str) -> Vec<u8> {
        crate::b64::decode(jwk[name].as_str().unwrap()).unwrap()
    }

    fn test_key() -> Value {
        serde_json::from_slice(include_bytes!("../../testdata/client-rsa.jwk.json")).unwrap()
    }

    #[test]
    fn signatures_are_the_rsa_crates_own() {
        let jwk = test_key();
        let (n, e, d) = (member(&jwk, "n"), member(&jwk, "e"), member(&jwk, "d"));
        let int =
            |b: &[u8]| BoxedUint::from_be_slice(b, u32::try_from(b.len() * 8).unwrap()).unwrap();
        let reference = rsa::PrivateKey::from_p_q(
            int(&member(&jwk, "p")),
            int(&member(&jwk, "q")),
            int(strip_leading_zeros(&e)),
        )
        .unwrap();
        for input in [&b""[..], b"portcullis", &[0xa5; 1000]] {
            let ours = rs256_sign(&n, &e, &d, input).unwrap();
            let theirs = reference
                .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input))
                .unwrap();
            assert_eq!(ours, theirs);
            assert_eq!(ours.len(), n.len());
        }
    }

    #[test]
    fn a_private_exponent_of_another_key_is_refused() {
        let jwk = test_key();
        let (n, e) = (member(&jwk, "n"), member(&jwk, "e"));
        let mut d = member(&jwk, "d");
        if let Some(last) = d.last_mut() {
            *last ^= 0x02;
        }
        // The check raises the result to `e` again: a wrong `d` gives no signature at all.
        assert!(
            rs256_sign(&n, &e, &d, b"x")
                .unwrap_err()
                .contains("does not belong")
        );
    }

    #[test]
    fn moduli_that_cannot_sign_are_refused() {
        let jwk = test_key();
        let (n, e, d) = (member(&jwk, "n"), member(&jwk, "e"), member(&jwk, "d"));
        let mut even = n.clone();
        if let Some(last) = even.last_mut() {
            *last &= 0xfe;
        }
        assert!(
            rs256_sign(&even, &e, &d, b"x")
                .unwrap_err()
                .contains("even")
        );
        assert!(rs256_sign(&[0, 0], &e, &d, b"x").is_err());
        // A modulus and an exponent that do not belong together: the check refuses them.
        assert!(rs256_sign(&n[..64], &e, &d[..64], b"x").is_err());
        // Shorter than the encoding needs: 40 bytes leave no room for `DigestInfo` and the
        // digest, 60 leave less than the 8 bytes of padding RFC 8017 requires.
        for len in [40, 60] {
            let mut short = vec![0xc5; len];
            if let Some(last) = short.last_mut() {
                *last |= 1;
            }
            assert!(
                rs256_sign(&short, &e, &[3], b"x")
                    .unwrap_err()
                    .contains("too short")
            );
        }
        assert!(
            rs256_sign(&n, &e, &[1; 300], b"x")
                .unwrap_err()
                .contains("longer")
        );
    }
}
