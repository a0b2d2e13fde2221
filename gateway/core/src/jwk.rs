//! JSON Web Key and key-set parsing (RFC 7517, RFC 7518 §6, RFC 8037), ours because
//! jwt-simple has no key-set parser. Unsupported keys are skipped with a reason, never fatal
//! for the rest of the set.

use serde_json::{Map, Value};

use sha2::{Digest, Sha256};

use crate::b64;
use crate::crypto::{Algorithm, Curve, KeyFamily, KeyMaterial};

/// One parsed public JWK with the metadata that restricts its use.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Jwk {
    /// `kid`, if present.
    pub kid: Option<String>,
    /// `alg`, if present (an unsupported `alg` makes the key skipped instead).
    pub alg: Option<Algorithm>,
    /// `use`, if present.
    pub usage: Option<String>,
    /// `key_ops`, if present.
    pub key_ops: Option<Vec<String>>,
    /// The key itself.
    pub material: KeyMaterial,
}

/// A key of a set that was not loaded, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedKey {
    /// Position in the `keys` array.
    pub index: usize,
    /// Its `kid`, if it had a string one.
    pub kid: Option<String>,
    /// Why it was skipped.
    pub reason: String,
}

/// A parsed key set: usable keys and skipped ones.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ParsedJwks {
    /// Keys that parsed.
    pub keys: Vec<Jwk>,
    /// Keys that did not, with reasons.
    pub skipped: Vec<SkippedKey>,
}

impl Jwk {
    /// Checks that this key may verify a signature made with `alg`: family and curve match,
    /// the JWK's `alg` (if any) equals `alg`, `use` (if any) is `sig`, `key_ops` (if any)
    /// contains `verify`. Returns the first mismatch.
    pub fn permits(&self, alg: Algorithm) -> Result<(), String> {
        if self.material.family() != alg.key_family() {
            return Err(format!(
                "{alg} needs {}, the key is {}",
                family_name(alg.key_family()),
                family_name(self.material.family())
            ));
        }
        if let Some(own) = self.alg
            && own != alg
        {
            return Err(format!("the key is for {own}, the token says {alg}"));
        }
        if let Some(usage) = &self.usage
            && usage != "sig"
        {
            return Err(format!("the key's use is `{usage}`, not `sig`"));
        }
        if let Some(ops) = &self.key_ops
            && !ops.iter().any(|op| op == "verify")
        {
            return Err("the key's key_ops do not include `verify`".into());
        }
        Ok(())
    }
}

fn family_name(f: KeyFamily) -> &'static str {
    match f {
        KeyFamily::Symmetric => "a symmetric key",
        KeyFamily::Rsa => "an RSA key",
        KeyFamily::Ec(Curve::P256) => "an EC P-256 key",
        KeyFamily::Ec(Curve::P384) => "an EC P-384 key",
        KeyFamily::Ed25519 => "an Ed25519 key",
    }
}

/// Parses a JWK Set document (`{"keys": [...]}`). Symmetric (`oct`) keys are skipped: a
/// shared secret never comes from a published key set.
pub fn parse_jwks(bytes: &[u8]) -> Result<ParsedJwks, String> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("key set is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("key set has no `keys` array")?;
    let mut out = ParsedJwks::default();
    for (index, key) in keys.iter().enumerate() {
        let kid = key.get("kid").and_then(Value::as_str).map(str::to_owned);
        let parsed = key
            .as_object()
            .ok_or_else(|| "not a JSON object".to_owned())
            .and_then(|obj| parse_jwk_object(obj, false));
        match parsed {
            Ok(jwk) => out.keys.push(jwk),
            Err(reason) => out.skipped.push(SkippedKey { index, kid, reason }),
        }
    }
    Ok(out)
}

/// Parses one JWK object. `allow_symmetric` admits `oct` keys (configured secrets only).
pub fn parse_jwk_object(obj: &Map<String, Value>, allow_symmetric: bool) -> Result<Jwk, String> {
    let kid = opt_str(obj, "kid")?.map(str::to_owned);
    let alg = match opt_str(obj, "alg")? {
        None => None,
        Some(name) => Some(
            Algorithm::from_name(name)
                .ok_or_else(|| format!("algorithm `{name}` is not supported"))?,
        ),
    };
    let usage = opt_str(obj, "use")?.map(str::to_owned);
    let key_ops = match obj.get("key_ops") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("`key_ops` must be an array of strings")?,
        ),
        Some(_) => return Err("`key_ops` must be an array of strings".into()),
    };
    if obj.contains_key("d") || obj.contains_key("p") {
        return Err("private key material published in a key set".into());
    }
    let kty = opt_str(obj, "kty")?.ok_or("missing `kty`")?;
    let material = match kty {
        "RSA" => {
            let n = b64_field(obj, "n")?;
            let e = b64_field(obj, "e")?;
            check_rsa_public(&n, &e)?;
            KeyMaterial::Rsa { n, e }
        }
        "EC" => {
            let crv = opt_str(obj, "crv")?.ok_or("missing `crv`")?;
            let curve = match crv {
                "P-256" => Curve::P256,
                "P-384" => Curve::P384,
                other => return Err(format!("curve `{other}` is not supported")),
            };
            let x = b64_field(obj, "x")?;
            let y = b64_field(obj, "y")?;
            if x.len() != curve.coordinate_len() || y.len() != curve.coordinate_len() {
                return Err(format!(
                    "{} coordinates must be {} bytes",
                    curve.name(),
                    curve.coordinate_len()
                ));
            }
            KeyMaterial::Ec { curve, x, y }
        }
        "OKP" => {
            let crv = opt_str(obj, "crv")?.ok_or("missing `crv`")?;
            if crv != "Ed25519" {
                return Err(format!("OKP curve `{crv}` is not supported"));
            }
            let x = b64_field(obj, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 `x` must be 32 bytes".into());
            }
            KeyMaterial::Ed25519 { x }
        }
        "oct" if allow_symmetric => KeyMaterial::Symmetric {
            secret: b64_field(obj, "k")?,
        },
        "oct" => return Err("symmetric keys are not accepted from a key set".into()),
        other => return Err(format!("key type `{other}` is not supported")),
    };
    let jwk = Jwk {
        kid,
        alg,
        usage,
        key_ops,
        material,
    };
    if let Some(alg) = jwk.alg
        && alg.key_family() != jwk.material.family()
    {
        return Err(format!("`alg` {alg} does not fit key type `{kty}`"));
    }
    Ok(jwk)
}

/// Smallest RSA modulus accepted (RFC 7518 §3.3 requires 2048 bits).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (bounds the cost of one verification).
pub const MAX_RSA_BITS: usize = 8192;

/// Refuses RSA public keys no verifier should use: moduli outside 2048–8192 bits, even
/// moduli, exponents that are even, below 3 or above 2^33, and keys with the ROCA
/// fingerprint (CVE-2017-15361: factorable keys from Infineon chips).
pub fn check_rsa_public(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_leading_zeros(n);
    let bits = (n.len() * 8).saturating_sub(n.first().map_or(8, |b| b.leading_zeros() as usize));
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA modulus of {bits} bits is below the {MIN_RSA_BITS}-bit minimum"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!(
            "RSA modulus of {bits} bits is above the {MAX_RSA_BITS}-bit maximum"
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus is even".into());
    }
    let e = strip_leading_zeros(e);
    let exponent = if e.len() <= 8 {
        e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    } else {
        u64::MAX
    };
    if exponent < 3 || exponent & 1 == 0 || exponent > (1 << 33) - 1 {
        return Err(format!(
            "RSA public exponent {exponent} is not an odd number in 3..2^33"
        ));
    }
    if has_roca_fingerprint(n) {
        return Err("RSA key has the ROCA fingerprint (CVE-2017-15361) and is factorable".into());
    }
    Ok(())
}

/// ROCA moduli are built as k·M + (65537^a mod M) with M the product of the first primes,
/// so n mod p lies in the subgroup generated by 65537 for every such p. For a random
/// modulus that happens with negligible probability.
fn has_roca_fingerprint(n: &[u8]) -> bool {
    const PRIMES: [u32; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
        97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&p| {
        let residue = n.iter().fold(0u32, |r, b| (r * 256 + u32::from(*b)) % p);
        let generator = 65_537 % p;
        let mut element = 1u32;
        loop {
            if element == residue {
                return true;
            }
            element = element * generator % p;
            if element == 1 {
                return false;
            }
        }
    })
}

/// The big-endian integer `bytes` without leading zero bytes.
pub fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// The key for a configured HMAC secret, refusing secrets shorter than the hash output of
/// any of `algorithms` (RFC 7518 §3.2).
pub fn hmac_secret_jwk(secret: &[u8], algorithms: &[Algorithm]) -> Result<Jwk, String> {
    for alg in algorithms {
        let Some(need) = alg.hmac_min_secret_len() else {
            return Err(format!("{alg} is not an HMAC algorithm"));
        };
        if secret.len() < need {
            return Err(format!(
                "HMAC secret is {} bytes; {alg} needs at least {need}",
                secret.len()
            ));
        }
    }
    Ok(Jwk {
        kid: None,
        alg: None,
        usage: None,
        key_ops: None,
        material: KeyMaterial::Symmetric {
            secret: secret.to_vec(),
        },
    })
}

fn opt_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{name}` must be a string")),
    }
}

fn b64_field(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = opt_str(obj, name)?.ok_or_else(|| format!("missing `{name}`"))?;
    let bytes = b64::decode(text).ok_or_else(|| format!("`{name}` is not base64url"))?;
    if bytes.is_empty() {
        return Err(format!("`{name}` is empty"));
    }
    Ok(bytes)
}

/// The RFC 7638 thumbprint of an Ed25519 public key.
pub fn okp_thumbprint(public: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        b64::encode(public)
    );
    b64::encode(&Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_unsupported_keys_with_reasons_and_keeps_the_rest() {
        let doc = br#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"EC","crv":"P-521","kid":"b","x":"AA","y":"AA"},
            {"kty":"oct","kid":"c","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"d","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"},
            {"kty":"EC","crv":"P-256","kid":"e","x":"AA","y":"AA","d":"AA"},
            "nonsense"
        ]}"#;
        let parsed = parse_jwks(doc).expect("parses");
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys[0].kid.as_deref(), Some("a"));
        let reasons: Vec<_> = parsed.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert!(reasons[0].contains("P-521"), "{reasons:?}");
        assert!(reasons[1].contains("symmetric"), "{reasons:?}");
        assert!(reasons[2].contains("RSA-OAEP"), "{reasons:?}");
        assert!(reasons[3].contains("private"), "{reasons:?}");
        assert!(reasons[4].contains("object"), "{reasons:?}");
    }

    #[test]
    fn permits_checks_family_alg_use_and_key_ops() {
        let key = |extra: &str| {
            let text = format!(
                r#"{{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"{extra}}}"#
            );
            let obj: Map<String, Value> = serde_json::from_str(&text).expect("json");
            parse_jwk_object(&obj, false).expect("jwk")
        };
        assert!(key("").permits(Algorithm::EdDSA).is_ok());
        assert!(key("").permits(Algorithm::ES256).is_err());
        assert!(key(r#","use":"enc""#).permits(Algorithm::EdDSA).is_err());
        assert!(
            key(r#","key_ops":["encrypt"]"#)
                .permits(Algorithm::EdDSA)
                .is_err()
        );
        assert!(
            key(r#","key_ops":["verify"]"#)
                .permits(Algorithm::EdDSA)
                .is_ok()
        );
    }

    #[test]
    fn rejects_documents_that_are_not_key_sets() {
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"{\"keys\":{}}").is_err());
        assert!(parse_jwks(b"\xff").is_err());
    }
}
