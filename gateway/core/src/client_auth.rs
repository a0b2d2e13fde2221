//! How the gateway authenticates to a provider's token endpoint (`[issuer.login]
//! client_auth`): HTTP Basic with the client secret, the secret in the form body, or a
//! `private_key_jwt` client assertion (RFC 7523 §2.2, OpenID Connect Core §9) signed with
//! the gateway's own key — RS256, ES256 or EdDSA, chosen by the key. Signing is
//! deterministic (RSASSA-PKCS1-v1_5, RFC 6979 ECDSA, Ed25519), so the core stays pure; the
//! assertion's `jti` comes from the adapter's random bytes.
//!
//! The public half of every client key is served at [`CLIENT_JWKS_PATH`], so a provider
//! can be registered with that URL as the client's `jwks_uri` and follow key rotation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::b64;
use crate::time::Timestamp;

/// Where the public keys of the gateway's login clients (`private_key_jwt`) are served: the
/// client's `jwks_uri` at its provider.
pub const CLIENT_JWKS_PATH: &str = "/.well-known/portcullis/client-jwks.json";

/// How long a client assertion is valid (providers refuse long-lived ones).
pub const ASSERTION_TTL_SECS: u64 = 60;

/// The client-assertion type of RFC 7523.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the gateway authenticates at the provider's token (or introspection) endpoint.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the client id and secret (the default).
    SecretBasic(ClientSecret),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    SecretPost(ClientSecret),
    /// `private_key_jwt`: a signed client assertion in the form body.
    PrivateKeyJwt(ClientKey),
}

impl ClientAuth {
    /// The method's registered name (RFC 8414 `token_endpoint_auth_method`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::SecretBasic(_) => "client_secret_basic",
            Self::SecretPost(_) => "client_secret_post",
            Self::PrivateKeyJwt(_) => "private_key_jwt",
        }
    }

    /// True when requests carry a signed client assertion (its audience and `jti` must be
    /// given to [`authenticate_form`]).
    pub fn signs(&self) -> bool {
        matches!(self, Self::PrivateKeyJwt(_))
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PrivateKeyJwt(key) => write!(f, "PrivateKeyJwt(kid {:?})", key.kid),
            other => f.write_str(other.name()),
        }
    }
}

/// A client secret (never printed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientSecret(pub String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Signs an assertion's input with the client's key (an
/// [`crate::authenticate::Authenticator::sign_as_client`]).
pub type AssertionSigner<'a> = &'a dyn Fn(&ClientKey, &[u8]) -> Result<Vec<u8>, String>;

/// What a signed client assertion needs from the caller: its audience (the provider's
/// token endpoint), random bytes for its `jti` and the signer.
#[derive(Clone, Copy)]
pub struct AssertionInputs<'a> {
    /// The `aud` of the assertion.
    pub audience: &'a str,
    /// Fresh random bytes (the `jti`).
    pub jti: &'a [u8],
    /// Who signs it.
    pub sign: AssertionSigner<'a>,
}

/// `form` with the client `client_id` authenticated as `auth` says: the `Authorization`
/// header (empty when the body carries the authentication) and the encoded body. HTTP
/// Basic, the secret in the body, or a signed client assertion (valid for
/// [`ASSERTION_TTL_SECS`]; `assertion` must then be given).
pub fn authenticate_form(
    client_id: &str,
    auth: &ClientAuth,
    form: &[(&str, String)],
    assertion: Option<AssertionInputs<'_>>,
    now: Timestamp,
) -> Result<(String, String), String> {
    let mut form = form.to_vec();
    let authorization = match auth {
        ClientAuth::SecretBasic(secret) => {
            // RFC 6749 §2.3.1: both parts form-encoded before Basic encoding.
            let basic = format!(
                "{}:{}",
                crate::forms::encode_component(client_id),
                crate::forms::encode_component(&secret.0)
            );
            format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, basic)
            )
        }
        ClientAuth::SecretPost(secret) => {
            form.push(("client_secret", secret.0.clone()));
            String::new()
        }
        ClientAuth::PrivateKeyJwt(key) => {
            let inputs = assertion.ok_or_else(|| {
                "a client assertion needs its audience and random bytes".to_owned()
            })?;
            let signed = crate::client_auth::assertion(
                key,
                client_id,
                inputs.audience,
                inputs.jti,
                now,
                inputs.sign,
            )?;
            form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
            form.push(("client_assertion", signed));
            String::new()
        }
    };
    // The body names the client when it authenticates there (a pushed request already
    // does: once is enough).
    if authorization.is_empty() && !form.iter().any(|(k, _)| *k == "client_id") {
        form.push(("client_id", client_id.to_owned()));
    }
    Ok((authorization, crate::forms::encode(&form)))
}

/// A client's private key (from a private JWK), with the `kid` it is published under.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientKey {
    /// `kid`: the JWK's own, else its RFC 7638 thumbprint.
    pub kid: String,
    /// The key.
    pub material: ClientKeyMaterial,
}

/// The private key material, by family.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientKeyMaterial {
    /// RSA (signs RS256): modulus, public and private exponents, big-endian.
    Rsa {
        /// `n`.
        n: Vec<u8>,
        /// `e`.
        e: Vec<u8>,
        /// `d`.
        d: Vec<u8>,
    },
    /// P-256 (signs ES256): the private scalar and the public point's coordinates.
    P256 {
        /// `d`.
        d: Vec<u8>,
        /// `x`.
        x: Vec<u8>,
        /// `y`.
        y: Vec<u8>,
    },
    /// Ed25519 (signs EdDSA): the 32-byte seed and the public key.
    Ed25519 {
        /// `d` (the seed).
        seed: Vec<u8>,
        /// `x`.
        public: Vec<u8>,
    },
}

impl ClientKey {
    /// Reads a private JWK (JSON): RSA, EC P-256, or OKP Ed25519. The key
    /// must sign, and its public half must match the private one.
    pub fn from_private_jwk(text: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| format!("not a JWK: {e}"))?;
        let obj = v.as_object().ok_or("not a JWK: not a JSON object")?;
        let field = |name: &str| -> Result<Vec<u8>, String> {
            let text = obj
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("the private JWK lacks `{name}`"))?;
            b64::decode(text)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| format!("`{name}` is not base64url"))
        };
        let kty = obj.get("kty").and_then(Value::as_str).unwrap_or_default();
        let crv = obj.get("crv").and_then(Value::as_str).unwrap_or_default();
        let material = match (kty, crv) {
            ("RSA", _) => {
                let material = ClientKeyMaterial::Rsa {
                    n: field("n")?,
                    e: field("e")?,
                    d: field("d")?,
                };
                crate::jwk::check_rsa_public(
                    match &material {
                        ClientKeyMaterial::Rsa { n, .. } => n,
                        _ => &[],
                    },
                    match &material {
                        ClientKeyMaterial::Rsa { e, .. } => e,
                        _ => &[],
                    },
                )?;
                material
            }
            ("EC", "P-256") => ClientKeyMaterial::P256 {
                d: field("d")?,
                x: field("x")?,
                y: field("y")?,
            },
            ("OKP", "Ed25519") => ClientKeyMaterial::Ed25519 {
                seed: field("d")?,
                public: field("x")?,
            },
            (kty, crv) => {
                return Err(format!(
                    "a client key must be RSA, EC P-256 or OKP Ed25519 (kty {kty:?}, crv {crv:?})"
                ));
            }
        };
        let mut key = Self {
            kid: String::new(),
            material,
        };
        key.check()?;
        key.kid = match obj.get("kid").and_then(Value::as_str) {
            Some(kid) if !kid.is_empty() => kid.to_owned(),
            _ => key.thumbprint(),
        };
        Ok(key)
    }

    /// The JWS algorithm the key signs with.
    pub fn alg(&self) -> &'static str {
        match self.material {
            ClientKeyMaterial::Rsa { .. } => "RS256",
            ClientKeyMaterial::P256 { .. } => "ES256",
            ClientKeyMaterial::Ed25519 { .. } => "EdDSA",
        }
    }

    /// The public JWK (with `kid`, `alg` and `use`).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.public_members();
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".into(), self.kid.clone().into());
            o.insert("alg".into(), self.alg().into());
            o.insert("use".into(), "sig".into());
        }
        jwk
    }

    /// The required public members only, in RFC 7638 order.
    fn public_members(&self) -> Value {
        match &self.material {
            ClientKeyMaterial::Rsa { n, e, .. } => {
                json!({"e": b64::encode(e), "kty": "RSA", "n": b64::encode(n)})
            }
            ClientKeyMaterial::P256 { x, y, .. } => {
                json!({"crv": "P-256", "kty": "EC", "x": b64::encode(x), "y": b64::encode(y)})
            }
            ClientKeyMaterial::Ed25519 { public, .. } => {
                json!({"crv": "Ed25519", "kty": "OKP", "x": b64::encode(public)})
            }
        }
    }

    /// The RFC 7638 thumbprint of the public key (serde_json keeps the members sorted).
    pub fn thumbprint(&self) -> String {
        b64::encode(&Sha256::digest(
            self.public_members().to_string().as_bytes(),
        ))
    }

    /// Signs a test message and checks the signature against the public half.
    fn check(&self) -> Result<(), String> {
        let probe = b"portcullis client key check";
        let signature = self.sign(probe)?;
        let ok = match &self.material {
            ClientKeyMaterial::Rsa { n, e, .. } => {
                let key = crate::crypto::KeyMaterial::Rsa {
                    n: n.clone(),
                    e: e.clone(),
                };
                portable_check(&key, crate::crypto::Algorithm::RS256, probe, &signature)
            }
            ClientKeyMaterial::P256 { x, y, .. } => {
                let key = crate::crypto::KeyMaterial::Ec {
                    curve: crate::crypto::Curve::P256,
                    x: x.clone(),
                    y: y.clone(),
                };
                portable_check(&key, crate::crypto::Algorithm::ES256, probe, &signature)
            }
            ClientKeyMaterial::Ed25519 { public, .. } => {
                let key = crate::crypto::KeyMaterial::Ed25519 { x: public.clone() };
                portable_check(&key, crate::crypto::Algorithm::EdDSA, probe, &signature)
            }
        };
        if ok {
            Ok(())
        } else {
            Err("the JWK's private and public members do not belong together".into())
        }
    }

    /// The JWS signature of `input` (`alg` as [`alg`](Self::alg)).
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        match &self.material {
            ClientKeyMaterial::Rsa { n, e, d } => crate::crypto::rs256_sign(n, e, d, input),
            ClientKeyMaterial::P256 { d, .. } => {
                use p256::ecdsa::signature::Signer as _;
                let key = p256::ecdsa::SigningKey::from_slice(d)
                    .map_err(|_| "not a P-256 private key")?;
                let signature: p256::ecdsa::Signature = key.sign(input);
                Ok(signature.to_bytes().to_vec())
            }
            ClientKeyMaterial::Ed25519 { seed, .. } => {
                let seed: [u8; 32] = seed
                    .as_slice()
                    .try_into()
                    .map_err(|_| "an Ed25519 seed is 32 bytes")?;
                let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
                Ok(pair.sk.sign(input, None).to_vec())
            }
        }
    }
}

/// True when `signature` is a valid `alg` signature of `input` under `material` (the
/// core's own verifier).
fn portable_check(
    material: &crate::crypto::KeyMaterial,
    alg: crate::crypto::Algorithm,
    input: &[u8],
    signature: &[u8],
) -> bool {
    use crate::crypto::{PortableVerifier, SignatureVerifier as _};
    PortableVerifier
        .prepare(material)
        .is_ok_and(|key| PortableVerifier.verify(alg, &key, input, signature))
}

/// A client assertion for `client` at `audience` (the token endpoint): `iss` = `sub` = the
/// client id, a `jti` from `jti_bytes`, valid for [`ASSERTION_TTL_SECS`].
pub fn assertion(
    key: &ClientKey,
    client_id: &str,
    audience: &str,
    jti_bytes: &[u8],
    now: Timestamp,
    sign: AssertionSigner<'_>,
) -> Result<String, String> {
    let iat = now.unix_secs();
    let mut claims = Map::new();
    claims.insert("iss".into(), client_id.into());
    claims.insert("sub".into(), client_id.into());
    claims.insert("aud".into(), audience.into());
    claims.insert("jti".into(), b64::encode(jti_bytes).into());
    claims.insert("iat".into(), iat.into());
    claims.insert("exp".into(), (iat + ASSERTION_TTL_SECS).into());
    let header = json!({"alg": key.alg(), "typ": "JWT", "kid": key.kid});
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(Value::Object(claims).to_string().as_bytes())
    );
    let signature = sign(key, input.as_bytes())?;
    Ok(format!("{input}.{}", b64::encode(&signature)))
}

/// The public keys of every client authentication that signs client assertions, as a JWK
/// set.
pub fn jwks<'a>(methods: impl Iterator<Item = &'a ClientAuth>) -> String {
    let keys: Vec<Value> = methods
        .filter_map(|m| match m {
            ClientAuth::PrivateKeyJwt(key) => Some(key.public_jwk()),
            _ => None,
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey({} {:?})", self.alg(), self.kid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::crypto::{Algorithm, Curve, KeyMaterial};

    fn ed25519_jwk(seed: u8, kid: Option<&str>) -> String {
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        let mut v = json!({"kty": "OKP", "crv": "Ed25519", "d": b64::encode(&[seed; 32]), "x": b64::encode(pair.pk.as_ref())});
        if let Some(k) = kid {
            v["kid"] = k.into();
        }
        v.to_string()
    }

    fn p256_jwk() -> String {
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let point = sk.verifying_key().to_sec1_point(false);
        json!({
            "kty": "EC", "crv": "P-256", "kid": "ec-1",
            "d": b64::encode(&[7u8; 32]),
            "x": b64::encode(point.x().unwrap()),
            "y": b64::encode(point.y().unwrap()),
        })
        .to_string()
    }

    /// The signed parts and signature of a compact JWS.
    fn split(jws: &str) -> (Value, Value, String, Vec<u8>) {
        let parts: Vec<&str> = jws.split('.').collect();
        let header = serde_json::from_slice(&b64::decode(parts[0]).unwrap()).unwrap();
        let claims = serde_json::from_slice(&b64::decode(parts[1]).unwrap()).unwrap();
        (
            header,
            claims,
            format!("{}.{}", parts[0], parts[1]),
            b64::decode(parts[2]).unwrap(),
        )
    }

    #[test]
    fn an_ed25519_assertion_verifies_with_the_published_key_and_says_who_and_for_whom() {
        let key = ClientKey::from_private_jwk(ed25519_jwk(3, None).as_bytes()).unwrap();
        assert_eq!(key.alg(), "EdDSA");
        let jws = assertion(
            &key,
            "portcullis",
            "https://op.example/token",
            &[9; 16],
            Timestamp::from_unix_secs(1_000),
            &|k, m| k.sign(m),
        )
        .unwrap();
        let (header, claims, input, signature) = split(&jws);
        assert_eq!(header["kid"], key.kid.as_str());
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(claims["iss"], "portcullis");
        assert_eq!(claims["sub"], "portcullis");
        assert_eq!(claims["aud"], "https://op.example/token");
        assert_eq!(claims["exp"], 1_060);
        let published = key.public_jwk();
        let x = b64::decode(published["x"].as_str().unwrap()).unwrap();
        assert!(portable_check(
            &KeyMaterial::Ed25519 { x },
            Algorithm::EdDSA,
            input.as_bytes(),
            &signature
        ));
        // The kid defaults to the RFC 7638 thumbprint (the gateway-token keys' scheme).
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([3; 32]));
        assert_eq!(key.kid, crate::jwk::okp_thumbprint(pair.pk.as_ref()));
    }

    #[test]
    fn an_es256_assertion_verifies_and_keeps_its_kid() {
        let key = ClientKey::from_private_jwk(p256_jwk().as_bytes()).unwrap();
        assert_eq!((key.alg(), key.kid.as_str()), ("ES256", "ec-1"));
        let jws = assertion(
            &key,
            "c",
            "aud",
            &[1; 16],
            Timestamp::from_unix_secs(5),
            &|k, m| k.sign(m),
        )
        .unwrap();
        let (_, _, input, signature) = split(&jws);
        let ClientKeyMaterial::P256 { x, y, .. } = &key.material else {
            panic!("not P-256")
        };
        let public = KeyMaterial::Ec {
            curve: Curve::P256,
            x: x.clone(),
            y: y.clone(),
        };
        assert!(portable_check(
            &public,
            Algorithm::ES256,
            input.as_bytes(),
            &signature
        ));
        assert!(!portable_check(
            &public,
            Algorithm::ES256,
            b"other",
            &signature
        ));
    }

    #[test]
    fn an_rs256_assertion_verifies_with_the_public_half() {
        // A 2048-bit test key (openssl genrsa), private members as a JWK.
        let key =
            ClientKey::from_private_jwk(include_bytes!("../testdata/client-rsa.jwk.json")).unwrap();
        assert_eq!((key.alg(), key.kid.as_str()), ("RS256", "rsa-test-client"));
        let jws = assertion(
            &key,
            "c",
            "aud",
            &[2; 16],
            Timestamp::from_unix_secs(5),
            &|k, m| k.sign(m),
        )
        .unwrap();
        let (header, _, input, signature) = split(&jws);
        assert_eq!(header["alg"], "RS256");
        let published = key.public_jwk();
        let public = KeyMaterial::Rsa {
            n: b64::decode(published["n"].as_str().unwrap()).unwrap(),
            e: b64::decode(published["e"].as_str().unwrap()).unwrap(),
        };
        assert!(portable_check(
            &public,
            Algorithm::RS256,
            input.as_bytes(),
            &signature
        ));
        assert!(published.get("p").is_none() && published.get("d").is_none());
    }

    #[test]
    fn keys_that_cannot_sign_or_do_not_match_are_refused() {
        // A public JWK (no `d`).
        let public = json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(&[1; 32])});
        assert!(
            ClientKey::from_private_jwk(public.to_string().as_bytes())
                .unwrap_err()
                .contains("lacks `d`")
        );
        // A private member from another key.
        let mut mixed: Value = serde_json::from_str(&ed25519_jwk(3, Some("k"))).unwrap();
        mixed["d"] = b64::encode(&[4; 32]).into();
        assert!(
            ClientKey::from_private_jwk(mixed.to_string().as_bytes())
                .unwrap_err()
                .contains("do not belong together")
        );
        // RSA: without `d`, and with the `d` of another key.
        let rsa: Value =
            serde_json::from_slice(include_bytes!("../testdata/client-rsa.jwk.json")).unwrap();
        let mut public = rsa.clone();
        public.as_object_mut().unwrap().remove("d");
        assert!(
            ClientKey::from_private_jwk(public.to_string().as_bytes())
                .unwrap_err()
                .contains("lacks `d`")
        );
        let mut mixed = rsa.clone();
        let mut d = b64::decode(rsa["d"].as_str().unwrap()).unwrap();
        d[10] ^= 1;
        mixed["d"] = b64::encode(&d).into();
        assert!(
            ClientKey::from_private_jwk(mixed.to_string().as_bytes())
                .unwrap_err()
                .contains("does not belong")
        );
        let hmac = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(ClientKey::from_private_jwk(hmac.to_string().as_bytes()).is_err());
        assert!(ClientKey::from_private_jwk(b"not json").is_err());
    }

    #[test]
    fn the_client_key_set_publishes_public_members_only() {
        let key = ClientKey::from_private_jwk(p256_jwk().as_bytes()).unwrap();
        let published = key.public_jwk();
        assert!(published.get("d").is_none(), "{published}");
        assert_eq!(published["kid"], "ec-1");
        assert_eq!(published["alg"], "ES256");
    }
}
