//! Signature checks for the worker: the runtime's WebCrypto (`crypto.subtle.verify`) is
//! asynchronous, so the decision asks for it like any other operation it must wait for: the
//! verifier says which keys WebCrypto checks ([`SignatureVerifier::platform_check`]), the
//! core names the check the request's token needs (key, algorithm and bytes), the decision
//! waits, the worker runs it through WebCrypto and resumes the decision with the verdict,
//! which the [`WorkerVerifier`] then answers with.
//! Anything not checked that way (a DPoP proof, an algorithm WebCrypto lacks) is checked by
//! the core's pure-Rust verifier, so the decision never depends on which path ran.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_core::crypto::{KeyError, PortableKey};
use portcullis_core::{
    Algorithm, KeyMaterial, PortableVerifier, SignatureCheck, SignatureVerifier,
};

/// A prepared key: the portable form, plus what WebCrypto needs to import it.
#[derive(Debug)]
pub struct WebKey {
    /// The JWK material.
    pub material: KeyMaterial,
    /// The pure-Rust form (fallback).
    pub portable: PortableKey,
}

/// One signature the platform checked, with its verdict.
#[derive(Debug)]
struct Checked {
    check: SignatureCheck,
    valid: bool,
}

/// The worker's verifier: answers from the platform's checks, else pure Rust.
#[derive(Debug, Default)]
pub struct WorkerVerifier {
    /// Whether signatures go to WebCrypto (`PORTCULLIS_VERIFY`).
    webcrypto: bool,
    checked: Mutex<Vec<Checked>>,
    fallbacks: AtomicU64,
    used: Mutex<Option<&'static str>>,
}

impl WorkerVerifier {
    /// A verifier that has WebCrypto check what it can (`webcrypto`), or pure Rust only.
    pub fn new(webcrypto: bool) -> Self {
        Self {
            webcrypto,
            ..Self::default()
        }
    }

    /// A verifier for one request, with the same settings and nothing recorded: the
    /// platform's verdicts and which path checked a signature belong to the request that
    /// asked (an isolate runs requests interleaved at every await, so a verifier shared by
    /// the isolate would hand one request's records to another).
    pub fn for_request(&self) -> Self {
        Self::new(self.webcrypto)
    }

    /// How the last signature this verifier checked was checked: `"webcrypto"` (the
    /// platform's verdict) or `"portable"` (pure Rust); `None` if none was.
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
            material: material.clone(),
            portable,
        })
    }

    fn verify(&self, alg: Algorithm, key: &WebKey, message: &[u8], signature: &[u8]) -> bool {
        let recorded = self.checked.lock().ok().and_then(|c| {
            c.iter()
                .find(|c| {
                    c.check.material == key.material
                        && c.check.alg == alg
                        && c.check.message == message
                        && c.check.signature == signature
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

    fn platform_checks(&self) -> bool {
        self.webcrypto
    }

    fn platform_check(&self, key: &WebKey, alg: Algorithm) -> Option<KeyMaterial> {
        // WebCrypto's HMAC keys are secrets imported raw: those stay in pure Rust.
        let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        (self.webcrypto && !hmac).then(|| key.material.clone())
    }

    fn record(&self, check: &SignatureCheck, valid: bool) {
        if let Ok(mut c) = self.checked.lock() {
            c.push(Checked {
                check: check.clone(),
                valid,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ed25519(seed: u8) -> (KeyMaterial, ed25519_compact::KeyPair) {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        (KeyMaterial::Ed25519 { x: kp.pk.to_vec() }, kp)
    }

    #[test]
    fn recorded_answers_are_used_for_exactly_that_key_and_input() {
        let (material, kp) = ed25519(7);
        let (other_material, other_kp) = ed25519(8);
        let v = WorkerVerifier::new(true);
        let key = v.prepare(&material).unwrap();
        let other = v.prepare(&other_material).unwrap();
        let sig = kp.sk.sign(b"msg", None).to_vec();
        let sig2 = kp.sk.sign(b"msg2", None).to_vec();
        let other_sig = other_kp.sk.sign(b"msg", None).to_vec();
        // Nothing recorded: pure Rust decides.
        assert!(v.verify(Algorithm::EdDSA, &key, b"msg", &sig));
        assert_eq!(v.used(), Some("portable"));
        // A recorded refusal wins for that key and input only.
        let check = SignatureCheck {
            material: material.clone(),
            alg: Algorithm::EdDSA,
            message: b"msg".to_vec(),
            signature: sig.clone(),
        };
        v.record(&check, false);
        assert!(!v.verify(Algorithm::EdDSA, &key, b"msg", &sig));
        assert_eq!(v.used(), Some("webcrypto"));
        assert!(v.verify(Algorithm::EdDSA, &key, b"msg2", &sig2));
        assert_eq!(v.used(), Some("portable"));
        assert!(v.verify(Algorithm::EdDSA, &other, b"msg", &other_sig));
        assert_eq!(v.used(), Some("portable"));
        assert_eq!(v.fallbacks(), 3);
        // Another request's verifier has none of this one's records.
        let next = v.for_request();
        assert_eq!(next.used(), None);
        assert!(next.verify(Algorithm::EdDSA, &key, b"msg", &sig));
        assert_eq!(next.used(), Some("portable"));
        assert_eq!(v.used(), Some("portable"));
    }
}
