//! Gateway-signed identity tokens: for each forwarded request the gateway mints a
//! short-lived JWT (EdDSA) for the chosen backend — `aud` is that backend — carrying the
//! verified subject, the actor chain, effective scopes, region and `acr`. Backends verify
//! it with any JWT library against the key set the gateway serves at [`JWKS_PATH`], and need
//! no shared secret. Signing is deterministic (Ed25519), so the core stays pure.

use serde_json::{Map, Value, json};

use crate::b64;
use crate::config::{GatewayKey, GatewayToken};
use crate::time::Timestamp;

pub use crate::model::reserved::JWKS_PATH;

fn public_jwk(k: &GatewayKey) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64::encode(&k.public),
        "kid": k.kid,
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// The public key set (every configured key: the signing one and those kept for overlap).
pub fn jwks(cfg: &GatewayToken) -> String {
    json!({ "keys": cfg.keys.iter().map(public_jwk).collect::<Vec<_>>() }).to_string()
}

/// Signs `claims` (to which `iss`, `iat`, `exp` are added) with the first key, through
/// `sign` (an [`crate::authenticate::Authenticator::sign_as_gateway`]).
pub fn mint(
    cfg: &GatewayToken,
    mut claims: Map<String, Value>,
    now: Timestamp,
    sign: impl FnOnce(&GatewayKey, &[u8]) -> Option<Vec<u8>>,
) -> Option<String> {
    let key = cfg.keys.first()?;
    let iat = now.unix_secs();
    claims.insert("iss".into(), Value::String(cfg.issuer.clone()));
    claims.insert("iat".into(), Value::from(iat));
    claims.insert("exp".into(), Value::from(iat + cfg.ttl.as_secs()));
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid});
    let signing_input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(Value::Object(claims).to_string().as_bytes())
    );
    let signature = sign(key, signing_input.as_bytes())?;
    Some(format!("{signing_input}.{}", b64::encode(&signature)))
}

/// The Ed25519 signature of `input` with `key` (the core's pure-Rust signer).
pub fn sign(key: &GatewayKey, input: &[u8]) -> Option<Vec<u8>> {
    crate::crypto::ed25519_sign(&key.seed, &key.public, input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk::okp_thumbprint;
    use std::time::Duration;

    fn key(seed: u8) -> GatewayKey {
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        GatewayKey {
            kid: okp_thumbprint(pair.pk.as_ref()),
            seed: vec![seed; 32],
            public: pair.pk.to_vec(),
        }
    }

    #[test]
    fn minted_tokens_verify_with_the_published_key_and_expire_soon() {
        let cfg = GatewayToken {
            header: http::HeaderName::from_static("x-portcullis-identity"),
            issuer: "https://gw".into(),
            ttl: Duration::from_secs(30),
            keys: vec![key(1), key(2)],
        };
        let mut claims = Map::new();
        claims.insert("sub".into(), "alice".into());
        claims.insert("aud".into(), "http://backend".into());
        let token = mint(&cfg, claims, Timestamp::from_unix_secs(1_000), sign).unwrap();
        let jwks: Value = serde_json::from_str(&jwks(&cfg)).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        let parts: Vec<&str> = token.split('.').collect();
        let header: Value = serde_json::from_slice(&b64::decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
        let payload: Value = serde_json::from_slice(&b64::decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            (payload["iat"].as_u64(), payload["exp"].as_u64()),
            (Some(1_000), Some(1_030))
        );
        let pk = ed25519_compact::PublicKey::from_slice(&cfg.keys[0].public).unwrap();
        let sig = ed25519_compact::Signature::from_slice(&b64::decode(parts[2]).unwrap()).unwrap();
        pk.verify(format!("{}.{}", parts[0], parts[1]), &sig)
            .unwrap();
        // RFC 8037 appendix A.3 thumbprint of its example key.
        let x = b64::decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        assert_eq!(
            okp_thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
