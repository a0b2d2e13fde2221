//! Signature checks for the worker: the runtime's WebCrypto (`crypto.subtle.verify`) is
//! asynchronous and the core's pipeline is not, so the worker checks the request's token
//! signature *before* deciding ([`pending_check`] says which key, algorithm and bytes) and
//! records the answer in a [`WorkerVerifier`]; the pipeline then finds it there. Anything
//! not checked beforehand (a DPoP proof, an algorithm WebCrypto lacks) is checked by the
//! core's pure-Rust verifier, so the decision never depends on which path ran.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_core::crypto::{KeyError, PortableKey};
use portcullis_core::{
    Algorithm, Config, KeyMaterial, KeyStore, PortableVerifier, SignatureVerifier,
};
use portcullis_core::{IssuerId, Timestamp};

/// A prepared key: the portable form, plus what WebCrypto needs to import it.
#[derive(Debug)]
pub struct WebKey {
    /// Unique per prepared key in this isolate (identifies its imported `CryptoKey`).
    pub serial: u64,
    /// The JWK material.
    pub material: KeyMaterial,
    /// The pure-Rust form (fallback).
    pub portable: PortableKey,
}

/// One signature checked ahead of the decision.
#[derive(Debug)]
struct Checked {
    serial: u64,
    alg: Algorithm,
    message: Vec<u8>,
    signature: Vec<u8>,
    valid: bool,
}

/// The worker's verifier: answers from checks done ahead of the decision, else pure Rust.
#[derive(Debug, Default)]
pub struct WorkerVerifier {
    checked: Mutex<Vec<Checked>>,
    fallbacks: AtomicU64,
    used: Mutex<Option<&'static str>>,
}

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

impl WorkerVerifier {
    /// Records the outcome of a signature check done ahead of the decision.
    pub fn record(&self, check: &PendingCheck, valid: bool) {
        if let Ok(mut c) = self.checked.lock() {
            c.push(Checked {
                serial: check.serial,
                alg: check.alg,
                message: check.message.clone(),
                signature: check.signature.clone(),
                valid,
            });
        }
    }

    /// Forgets every recorded check (called at the end of each request).
    pub fn clear(&self) {
        if let Ok(mut c) = self.checked.lock() {
            c.clear();
        }
        if let Ok(mut u) = self.used.lock() {
            *u = None;
        }
    }

    /// How the last signature since [`clear`](Self::clear) was checked: `"webcrypto"`
    /// (recorded ahead of the decision) or `"portable"` (pure Rust); `None` if none was.
    pub fn used(&self) -> Option<&'static str> {
        self.used.lock().ok().and_then(|u| *u)
    }

    /// How many signatures were checked in pure Rust because nothing was recorded.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
}

impl SignatureVerifier for WorkerVerifier {
    type Key = WebKey;

    fn prepare(&self, material: &KeyMaterial) -> Result<WebKey, KeyError> {
        let portable = PortableVerifier.prepare(material)?;
        Ok(WebKey {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            material: material.clone(),
            portable,
        })
    }

    fn verify(&self, alg: Algorithm, key: &WebKey, message: &[u8], signature: &[u8]) -> bool {
        let recorded = self.checked.lock().ok().and_then(|c| {
            c.iter()
                .find(|c| {
                    c.serial == key.serial
                        && c.alg == alg
                        && c.message == message
                        && c.signature == signature
                })
                .map(|c| c.valid)
        });
        let (path, valid) = match recorded {
            Some(valid) => ("webcrypto", valid),
            None => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                (
                    "portable",
                    PortableVerifier.verify(alg, &key.portable, message, signature),
                )
            }
        };
        if let Ok(mut u) = self.used.lock() {
            *u = Some(path);
        }
        valid
    }
}

/// A signature to check ahead of the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCheck {
    /// The key's serial.
    pub serial: u64,
    /// The key material.
    pub material: KeyMaterial,
    /// The token's algorithm.
    pub alg: Algorithm,
    /// The JWS signing input.
    pub message: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

/// The signature check the pipeline will need for the request's access token, if it will
/// need one: the token parses, names a configured issuer whose keys are loaded, an allowed
/// algorithm, and a key the set selects for it. Anything else is left to the pipeline,
/// which refuses with the precise reason.
pub fn pending_check(
    config: &Config,
    keys: &KeyStore<WebKey>,
    headers: &http::HeaderMap,
    now: Timestamp,
) -> Option<PendingCheck> {
    let (_, token) = portcullis_core::authenticate::access_token(headers).ok()??;
    let jws = portcullis_core::jws::parse_compact(token, config.limits.max_token_bytes).ok()?;
    let claims = portcullis_core::jws::parse_object(&jws.payload).ok()?;
    let iss = claims.get("iss")?.as_str()?;
    let index = config.issuers.iter().position(|i| i.issuer == iss)?;
    let issuer = config.issuers.get(index)?;
    if !issuer.algorithms.contains(&jws.header.alg) {
        return None;
    }
    let set = keys.keys(IssuerId(index), now).ok()?;
    let entry = set.select(jws.header.kid.as_deref(), jws.header.alg).ok()?;
    Some(PendingCheck {
        serial: entry.key.serial,
        material: entry.key.material.clone(),
        alg: jws.header.alg,
        message: jws.signing_input.as_bytes().to_vec(),
        signature: jws.signature,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ed25519() -> (KeyMaterial, ed25519_compact::KeyPair) {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
        (KeyMaterial::Ed25519 { x: kp.pk.to_vec() }, kp)
    }

    #[test]
    fn recorded_answers_are_used_for_exactly_that_key_and_input() {
        let (material, kp) = ed25519();
        let v = WorkerVerifier::default();
        let key = v.prepare(&material).unwrap();
        let other = v.prepare(&material).unwrap();
        assert_ne!(key.serial, other.serial);
        let sig = kp.sk.sign(b"msg", None).to_vec();
        // Nothing recorded: pure Rust decides.
        assert!(v.verify(Algorithm::EdDSA, &key, b"msg", &sig));
        assert_eq!(v.used(), Some("portable"));
        // A recorded refusal wins for that key and input only.
        let check = PendingCheck {
            serial: key.serial,
            material: material.clone(),
            alg: Algorithm::EdDSA,
            message: b"msg".to_vec(),
            signature: sig.clone(),
        };
        v.record(&check, false);
        assert!(!v.verify(Algorithm::EdDSA, &key, b"msg", &sig));
        assert_eq!(v.used(), Some("webcrypto"));
        assert!(v.verify(Algorithm::EdDSA, &other, b"msg", &sig));
        v.clear();
        assert_eq!(v.used(), None);
        assert!(v.verify(Algorithm::EdDSA, &key, b"msg", &sig));
        assert_eq!(v.fallbacks(), 3);
    }
}
