//! DPoP (RFC 9449): sender-constrained access tokens. A request presents
//! `Authorization: DPoP <token>` and a `DPoP` proof: a JWT of type `dpop+jwt`, signed with
//! the client's key that travels in its `jwk` header, naming the method (`htm`) and URL
//! (`htu`) of this request, a fresh `iat`, a unique `jti` and the hash of the access token
//! (`ath`). The token must be bound to that key (`cnf.jkt` = the key's RFC 7638 thumbprint).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::authenticate::Authenticator;
use crate::b64;
use crate::crypto::KeyMaterial;
use crate::jwk::parse_jwk_object;
use crate::jws::{normalize_media_type, parse_compact, parse_object};
use crate::time::Timestamp;

/// Longest proof accepted.
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// A checked proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof key.
    pub jkt: String,
    /// The proof's unique id.
    pub jti: String,
    /// The server nonce the proof carries, if any.
    pub nonce: Option<String>,
}

/// How long a server nonce is valid: the current and the previous window.
pub const NONCE_WINDOW_SECS: u64 = 300;

/// The server nonce for the window containing `now`, derived from `key` (shared by every
/// gateway instance, so a nonce from one is good at all of them; no state).
pub fn nonce(key: &[u8], now: Timestamp) -> String {
    nonce_for(key, now.unix_secs() / NONCE_WINDOW_SECS)
}

fn nonce_for(key: &[u8], window: u64) -> String {
    crate::audit::pseudonymize(key, "portcullis-dpop-nonce", &window.to_string())
}

/// True when `value` is the nonce of the current or the previous window.
pub fn nonce_valid(key: &[u8], value: &str, now: Timestamp) -> bool {
    let window = now.unix_secs() / NONCE_WINDOW_SECS;
    value == nonce_for(key, window) || value == nonce_for(key, window.saturating_sub(1))
}

/// The request a proof must describe.
#[derive(Clone, Copy, Debug)]
pub struct ProofTarget<'a> {
    /// `htm`.
    pub method: &'a str,
    /// `htu`: scheme, host and path, without query or fragment.
    pub url: &'a str,
    /// The access token the proof accompanies (for `ath`).
    pub access_token: &'a str,
    /// Now.
    pub now: Timestamp,
    /// How far `iat` may be from now.
    pub max_age: std::time::Duration,
}

/// Checks a proof (not yet its `jti` against replays: see [`Authenticator::first_use`]).
pub fn check_proof(
    proof: &str,
    target: &ProofTarget<'_>,
    auth: &dyn Authenticator,
) -> Result<Proof, String> {
    let jws = parse_compact(proof, MAX_PROOF_BYTES).map_err(|e| format!("DPoP proof: {e}"))?;
    if jws
        .header
        .typ
        .as_deref()
        .map(normalize_media_type)
        .as_deref()
        != Some("dpop+jwt")
    {
        return Err("DPoP proof: `typ` must be dpop+jwt".into());
    }
    if jws.header.alg.is_symmetric() {
        return Err(format!(
            "DPoP proof: {} is not an asymmetric algorithm",
            jws.header.alg
        ));
    }
    let header_b64 = proof.split('.').next().unwrap_or_default();
    let header = b64::decode(header_b64)
        .and_then(|h| parse_object(&h).ok())
        .ok_or_else(|| "DPoP proof: unreadable header".to_owned())?;
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err("DPoP proof: no `jwk` header".into());
    };
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|k| jwk.contains_key(*k))
    {
        return Err("DPoP proof: the `jwk` header holds private key material".into());
    }
    let key = parse_jwk_object(jwk, false).map_err(|e| format!("DPoP proof key: {e}"))?;
    if key.material.family() != jws.header.alg.key_family() {
        return Err(format!(
            "DPoP proof: a {} key cannot sign {}",
            kty(&key.material),
            jws.header.alg
        ));
    }
    if !auth.verify_with_key(
        jws.header.alg,
        &key.material,
        jws.signing_input.as_bytes(),
        &jws.signature,
    ) {
        return Err("DPoP proof: the signature does not verify".into());
    }
    let claims = parse_object(&jws.payload).map_err(|e| format!("DPoP proof claims: {e}"))?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| "DPoP proof: `jti` missing".to_owned())?;
    if text("htm") != Some(target.method) {
        return Err(format!("DPoP proof: `htm` is not {}", target.method));
    }
    match text("htu") {
        Some(htu) if same_url(htu, target.url) => {}
        Some(htu) => {
            return Err(format!(
                "DPoP proof: `htu` {htu:?} is not this request's URL"
            ));
        }
        None => return Err("DPoP proof: `htu` missing".into()),
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or_else(|| "DPoP proof: `iat` missing".to_owned())?;
    let now = target.now.unix_millis() as f64 / 1000.0;
    if (now - iat).abs() > target.max_age.as_secs_f64() {
        return Err(format!(
            "DPoP proof: `iat` {iat} is too far from now ({now:.0})"
        ));
    }
    let ath = b64::encode(&Sha256::digest(target.access_token.as_bytes()));
    if text("ath") != Some(ath.as_str()) {
        return Err("DPoP proof: `ath` does not match the access token".into());
    }
    Ok(Proof {
        jkt: thumbprint(&key.material).ok_or_else(|| "DPoP proof: unsupported key".to_owned())?,
        jti: jti.to_owned(),
        nonce: text("nonce").map(str::to_owned),
    })
}

fn kty(m: &KeyMaterial) -> &'static str {
    match m {
        KeyMaterial::Rsa { .. } => "RSA",
        KeyMaterial::Ec { .. } => "EC",
        KeyMaterial::Ed25519 { .. } => "OKP",
        KeyMaterial::Symmetric { .. } => "oct",
    }
}

/// `htu` comparison after RFC 3986 §6.2.2/§6.2.3 normalization (RFC 9449 §4.3): scheme
/// and host in any case, the scheme's default port left out, the path in canonical form;
/// query and fragment ignored. A URL that does not parse never matches.
fn same_url(htu: &str, url: &str) -> bool {
    fn canonical(u: &str) -> Option<String> {
        let (scheme, authority, path) = crate::canonical::split_url(u)?;
        let options = crate::canonical::PathOptions {
            allow_semicolons: true,
        };
        let path = crate::canonical::canonical_path(path, options).ok()?;
        Some(format!("{}{path}", authority.origin(scheme)))
    }
    matches!((canonical(htu), canonical(url)), (Some(a), Some(b)) if a == b)
}

/// The RFC 7638 thumbprint of a public key.
pub fn thumbprint(m: &KeyMaterial) -> Option<String> {
    let canonical = match m {
        KeyMaterial::Ec { curve, x, y } => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            curve.name(),
            b64::encode(x),
            b64::encode(y)
        ),
        KeyMaterial::Rsa { n, e } => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            b64::encode(crate::jwk::strip_leading_zeros(e)),
            b64::encode(crate::jwk::strip_leading_zeros(n))
        ),
        KeyMaterial::Ed25519 { x } => {
            format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                b64::encode(x)
            )
        }
        KeyMaterial::Symmetric { .. } => return None,
    };
    Some(b64::encode(&Sha256::digest(canonical.as_bytes())))
}

/// Checks the request's single `DPoP` proof header against the request and `token`.
/// `url` is the request's canonical URL (default port left out, RFC 9449 §4.3).
pub fn request_proof(
    headers: &http::HeaderMap,
    method: &http::Method,
    url: &str,
    token: &str,
    now: Timestamp,
    max_age: std::time::Duration,
    auth: &dyn Authenticator,
) -> Result<Proof, String> {
    let mut proofs = headers.get_all("dpop").iter();
    let (Some(proof), None) = (proofs.next(), proofs.next()) else {
        return Err("exactly one DPoP proof header is required".into());
    };
    let proof = proof
        .to_str()
        .map_err(|_| "the DPoP header is not ASCII".to_owned())?;
    check_proof(
        proof,
        &ProofTarget {
            method: method.as_str(),
            url,
            access_token: token,
            now,
            max_age,
        },
        auth,
    )
}

/// Checks that a token's key binding (`cnf.jkt` of its `claims`) and the request's proof
/// agree: both absent, or both present with the same thumbprint.
pub fn check_binding(
    claims: &serde_json::Map<String, Value>,
    proof: Option<&Proof>,
) -> Result<(), (crate::reason::Reason, &'static str)> {
    use crate::reason::Reason;
    let bound = claims
        .get("cnf")
        .and_then(|c| c.get("jkt"))
        .and_then(Value::as_str);
    match (bound, proof) {
        (Some(jkt), Some(p)) if jkt == p.jkt => Ok(()),
        (Some(_), Some(_)) => Err((
            Reason::DpopProofInvalid,
            "the token is bound to another key than the proof's",
        )),
        (Some(_), None) => Err((
            Reason::DpopRequired,
            "this token is DPoP-bound: send it as Authorization: DPoP with a proof",
        )),
        (None, Some(_)) => Err((
            Reason::DpopProofInvalid,
            "the token is not DPoP-bound (no cnf.jkt)",
        )),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_without_query_and_with_case_folded_host() {
        assert!(same_url(
            "https://API.example/a/b?x=1",
            "https://api.example/a/b"
        ));
        assert!(same_url("HTTPS://api.example", "https://api.example/"));
        assert!(!same_url("https://api.example/a", "https://api.example/b"));
        assert!(!same_url("http://api.example/a", "https://api.example/a"));
        assert!(!same_url("https://evil.example/a", "https://api.example/a"));
        // RFC 9449 §4.3: default ports and percent-encoding are normalized first.
        assert!(same_url("http://gw.test:80/x", "http://gw.test/x"));
        assert!(same_url("https://gw.test:443/x", "https://gw.test/x"));
        assert!(!same_url("https://gw.test:80/x", "https://gw.test/x"));
        assert!(same_url(
            "https://gw.test/%7Euser/%61",
            "https://gw.test/~user/a"
        ));
        assert!(!same_url("https://user@gw.test/x", "https://gw.test/x"));
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1 example RSA key.
        let n = b64::decode("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw").unwrap();
        let e = b64::decode("AQAB").unwrap();
        assert_eq!(
            thumbprint(&KeyMaterial::Rsa { n, e }).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
