//! Signature checks through the Workers runtime's WebCrypto (`crypto.subtle`), natively
//! implemented (BoringSSL) instead of pure Rust compiled to wasm. Imported keys are kept
//! per isolate, by algorithm and key material, and so are `crypto.subtle` and each
//! algorithm's parameter objects: a request that checks a signature hands WebCrypto only
//! the check's own signature and message.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;

use js_sys::{Array, Object, Promise, Reflect};
use portcullis_core::crypto::Curve;
use portcullis_core::{Algorithm, KeyMaterial, SignatureCheck};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CryptoKey, SubtleCrypto};

/// Imported keys of this isolate, with what every check needs.
#[derive(Default)]
pub struct KeyCache {
    /// By algorithm, then key material.
    keys: RefCell<HashMap<Algorithm, HashMap<KeyMaterial, CryptoKey>>>,
    /// `crypto.subtle`, when the runtime has it.
    subtle: OnceCell<Option<SubtleCrypto>>,
    /// Each algorithm's (import, verify) parameters, parsed once.
    params: RefCell<HashMap<Algorithm, (Object, Object)>>,
}

/// At most this many imported keys are kept (key sets rotate).
const MAX_IMPORTED: usize = 256;

fn subtle() -> Option<SubtleCrypto> {
    let crypto = Reflect::get(&js_sys::global(), &JsValue::from_str("crypto")).ok()?;
    Some(crypto.dyn_into::<web_sys::Crypto>().ok()?.subtle())
}

fn json(text: &str) -> Option<Object> {
    js_sys::JSON::parse(text).ok()?.dyn_into::<Object>().ok()
}

fn b64(bytes: &[u8]) -> String {
    portcullis_core::b64::encode(bytes)
}

/// The (import, verify) algorithm parameters of `alg` for WebCrypto; `None` for what
/// WebCrypto does not do the way JWS needs (the pure-Rust verifier checks those).
fn params(alg: Algorithm) -> Option<(String, String)> {
    let rsa = |name: &str, hash: &str| {
        (
            format!(r#"{{"name":"{name}","hash":"{hash}"}}"#),
            format!(r#"{{"name":"{name}"}}"#),
        )
    };
    let pss = |hash: &str, salt: u32| {
        (
            format!(r#"{{"name":"RSA-PSS","hash":"{hash}"}}"#),
            format!(r#"{{"name":"RSA-PSS","saltLength":{salt}}}"#),
        )
    };
    let ec = |curve: &str, hash: &str| {
        (
            format!(r#"{{"name":"ECDSA","namedCurve":"{curve}"}}"#),
            format!(r#"{{"name":"ECDSA","hash":"{hash}"}}"#),
        )
    };
    Some(match alg {
        Algorithm::RS256 => rsa("RSASSA-PKCS1-v1_5", "SHA-256"),
        Algorithm::RS384 => rsa("RSASSA-PKCS1-v1_5", "SHA-384"),
        Algorithm::RS512 => rsa("RSASSA-PKCS1-v1_5", "SHA-512"),
        Algorithm::PS256 => pss("SHA-256", 32),
        Algorithm::PS384 => pss("SHA-384", 48),
        Algorithm::PS512 => pss("SHA-512", 64),
        Algorithm::ES256 => ec("P-256", "SHA-256"),
        Algorithm::ES384 => ec("P-384", "SHA-384"),
        Algorithm::EdDSA => (
            r#"{"name":"Ed25519"}"#.into(),
            r#"{"name":"Ed25519"}"#.into(),
        ),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return None,
    })
}

fn jwk(material: &KeyMaterial) -> Option<String> {
    Some(match material {
        KeyMaterial::Rsa { n, e } => {
            format!(r#"{{"kty":"RSA","n":"{}","e":"{}"}}"#, b64(n), b64(e))
        }
        KeyMaterial::Ec { curve, x, y } => {
            let crv = match curve {
                Curve::P256 => "P-256",
                Curve::P384 => "P-384",
            };
            format!(
                r#"{{"kty":"EC","crv":"{crv}","x":"{}","y":"{}"}}"#,
                b64(x),
                b64(y)
            )
        }
        KeyMaterial::Ed25519 { x } => {
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"}}"#, b64(x))
        }
        KeyMaterial::Symmetric { .. } => return None,
    })
}

async fn promise(p: Result<Promise, JsValue>) -> Result<JsValue, JsValue> {
    JsFuture::from(p?).await
}

impl KeyCache {
    fn subtle(&self) -> Option<SubtleCrypto> {
        self.subtle.get_or_init(subtle).clone()
    }

    /// The (import, verify) parameter objects of `alg`, made on its first check.
    fn params(&self, alg: Algorithm) -> Option<(Object, Object)> {
        if let Some(p) = self.params.borrow().get(&alg) {
            return Some(p.clone());
        }
        let (import, verify) = params(alg)?;
        let made = (json(&import)?, json(&verify)?);
        self.params.borrow_mut().insert(alg, made.clone());
        Some(made)
    }

    async fn key(
        &self,
        subtle: &SubtleCrypto,
        check: &SignatureCheck,
        import: &Object,
    ) -> Option<CryptoKey> {
        if let Some(k) = self
            .keys
            .borrow()
            .get(&check.alg)
            .and_then(|keys| keys.get(&check.material))
        {
            return Some(k.clone());
        }
        let jwk = json(&jwk(&check.material)?)?;
        let usages = Array::of1(&JsValue::from_str("verify"));
        let key: CryptoKey =
            promise(subtle.import_key_with_object("jwk", &jwk, import, false, &usages))
                .await
                .ok()?
                .dyn_into()
                .ok()?;
        let mut keys = self.keys.borrow_mut();
        if keys.values().map(HashMap::len).sum::<usize>() >= MAX_IMPORTED {
            keys.clear();
        }
        keys.entry(check.alg)
            .or_default()
            .insert(check.material.clone(), key.clone());
        Some(key)
    }

    /// Checks the signature with WebCrypto: `Some(valid)`, or `None` when WebCrypto cannot
    /// (algorithm or key it does not support, import refused): the caller then leaves the
    /// check to the pure-Rust verifier.
    pub async fn verify(&self, check: &SignatureCheck) -> Option<bool> {
        let subtle = self.subtle()?;
        let (import, verify) = self.params(check.alg)?;
        let key = self.key(&subtle, check, &import).await?;
        let outcome = promise(subtle.verify_with_object_and_u8_array_and_u8_array(
            &verify,
            &key,
            &check.signature,
            &check.message,
        ))
        .await;
        match outcome {
            Ok(v) => Some(v.as_bool() == Some(true)),
            // A signature WebCrypto cannot even parse (wrong length) does not verify.
            Err(_) => Some(false),
        }
    }
}
