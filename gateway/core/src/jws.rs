//! Compact JWS parsing (RFC 7515 §7.1): exactly three base64url parts, a strict JOSE header.
//!
//! Refused here, before any key is touched: JSON serialization, JWE (five parts), `alg`
//! `none` in any spelling and every algorithm we do not implement, unknown `crit`
//! parameters, nested JWTs (`cty: JWT`), duplicate header members, oversized tokens.
//! The `jku`, `x5u`, `jwk` and `x5c` headers are ignored: keys only ever come from
//! configuration, so they are never fetched nor trusted.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::b64;
use crate::crypto::Algorithm;

/// Default maximum token length in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The protected header members Portcullis acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoseHeader {
    /// The signature algorithm.
    pub alg: Algorithm,
    /// The key id, if present.
    pub kid: Option<String>,
    /// The media type of the whole token (`typ`), if present.
    pub typ: Option<String>,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Clone, Debug)]
pub struct CompactJws<'t> {
    /// The protected header.
    pub header: JoseHeader,
    /// `BASE64URL(header) '.' BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'t str,
    /// The decoded payload.
    pub payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Why a token is not an acceptable compact JWS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwsError {
    /// Longer than the configured limit.
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a well-formed compact JWS.
    Malformed(String),
    /// `alg` is `none`, unknown, or not a string.
    AlgorithmNotAllowed(String),
    /// A `crit` header we do not understand.
    CritUnsupported(String),
}

impl fmt::Display for JwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwsError::TooLarge { len, max } => {
                write!(f, "token is {len} bytes, the limit is {max}")
            }
            JwsError::Malformed(m)
            | JwsError::AlgorithmNotAllowed(m)
            | JwsError::CritUnsupported(m) => f.write_str(m),
        }
    }
}

/// Parses a compact JWS of at most `max_len` bytes.
pub fn parse_compact(token: &str, max_len: usize) -> Result<CompactJws<'_>, JwsError> {
    if token.len() > max_len {
        return Err(JwsError::TooLarge {
            len: token.len(),
            max: max_len,
        });
    }
    let malformed = |m: &str| JwsError::Malformed(m.to_owned());
    if token.starts_with('{') {
        return Err(malformed(
            "JSON serialization is not accepted, only compact JWS",
        ));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        let n = token.split('.').count();
        return Err(JwsError::Malformed(if n == 5 {
            "encrypted tokens (JWE) are not accepted".into()
        } else {
            format!("a compact JWS has 3 parts, this token has {n}")
        }));
    };
    if h.is_empty() {
        return Err(malformed("empty header"));
    }
    if s.is_empty() {
        return Err(malformed("empty signature"));
    }
    let header_bytes = b64::decode(h).ok_or_else(|| malformed("header is not base64url"))?;
    let header = parse_object(&header_bytes)
        .map_err(|e| JwsError::Malformed(format!("header is not a JSON object: {e}")))?;
    let header = check_header(&header)?;
    let payload = b64::decode(p).ok_or_else(|| malformed("payload is not base64url"))?;
    let signature = b64::decode(s).ok_or_else(|| malformed("signature is not base64url"))?;
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or_else(|| malformed("token is not UTF-8 at a part boundary"))?;
    Ok(CompactJws {
        header,
        signing_input,
        payload,
        signature,
    })
}

fn check_header(header: &Map<String, Value>) -> Result<JoseHeader, JwsError> {
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Algorithm::from_name(name).ok_or_else(|| {
            JwsError::AlgorithmNotAllowed(if name.eq_ignore_ascii_case("none") {
                format!("unsecured tokens (alg `{name}`) are never accepted")
            } else {
                format!("algorithm `{name}` is not supported")
            })
        })?,
        Some(_) => {
            return Err(JwsError::AlgorithmNotAllowed(
                "`alg` must be a string".into(),
            ));
        }
        None => return Err(JwsError::Malformed("header has no `alg`".into())),
    };
    if header.contains_key("enc") {
        return Err(JwsError::Malformed(
            "encrypted tokens (JWE) are not accepted".into(),
        ));
    }
    if let Some(crit) = header.get("crit") {
        let names = crit
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| JwsError::Malformed("`crit` must be a non-empty array".into()))?;
        // RFC 7515 §4.1.11: every listed extension must be understood; we implement none.
        let listed: Vec<String> = names.iter().map(|v| v.to_string()).collect();
        return Err(JwsError::CritUnsupported(format!(
            "critical header parameters not understood: {}",
            listed.join(", ")
        )));
    }
    if let Some(b64) = header.get("b64")
        && b64 != &Value::Bool(true)
    {
        return Err(JwsError::Malformed(
            "unencoded payloads (`b64`) are not accepted".into(),
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwsError::Malformed("`kid` must be a string".into())),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(JwsError::Malformed("`typ` must be a string".into())),
    };
    match header.get("cty") {
        None => {}
        Some(Value::String(cty)) if is_jwt_media_type(cty) => {
            return Err(JwsError::Malformed(
                "nested JWTs (`cty: JWT`) are not accepted".into(),
            ));
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(JwsError::Malformed("`cty` must be a string".into())),
    }
    Ok(JoseHeader { alg, kid, typ })
}

/// Normalises a JOSE media type for comparison: case-insensitive, `application/` optional
/// (RFC 7515 §4.1.9).
pub fn normalize_media_type(t: &str) -> String {
    let lower = t.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

fn is_jwt_media_type(t: &str) -> bool {
    normalize_media_type(t) == "jwt"
}

/// Parses a JSON object, refusing duplicate member names at the top level (two parsers
/// reading one token differently is a known attack).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    serde_json::from_slice::<StrictObject>(bytes)
        .map(|o| o.0)
        .map_err(|e| e.to_string())
}

struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate member `{k}`")));
                    }
                    map.insert(k, v);
                }
                Ok(StrictObject(map))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            b64::encode(header.as_bytes()),
            b64::encode(payload.as_bytes())
        )
    }

    #[test]
    fn alg_none_is_refused_in_every_spelling() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#), "{}");
            assert!(
                matches!(
                    parse_compact(&t, 1000),
                    Err(JwsError::AlgorithmNotAllowed(_))
                ),
                "{alg}"
            );
        }
    }

    #[test]
    fn algorithm_names_are_case_sensitive() {
        let t = token(r#"{"alg":"hs256"}"#, "{}");
        assert!(matches!(
            parse_compact(&t, 1000),
            Err(JwsError::AlgorithmNotAllowed(_))
        ));
    }

    #[test]
    fn unknown_crit_is_refused() {
        let t = token(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#, "{}");
        assert!(matches!(
            parse_compact(&t, 1000),
            Err(JwsError::CritUnsupported(_))
        ));
    }

    #[test]
    fn nested_jwt_json_serialization_and_jwe_are_refused() {
        let nested = token(r#"{"alg":"ES256","cty":"JWT"}"#, "{}");
        assert!(matches!(
            parse_compact(&nested, 1000),
            Err(JwsError::Malformed(_))
        ));
        assert!(matches!(
            parse_compact(r#"{"payload":"e30","signatures":[]}"#, 1000),
            Err(JwsError::Malformed(_))
        ));
        assert!(matches!(
            parse_compact("a.b.c.d.e", 1000),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn duplicate_header_members_are_refused() {
        let t = token(r#"{"alg":"ES256","alg":"HS256"}"#, "{}");
        assert!(matches!(
            parse_compact(&t, 1000),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_tokens_are_refused_before_decoding() {
        let t = "a".repeat(20_000);
        assert_eq!(
            parse_compact(&t, DEFAULT_MAX_TOKEN_BYTES).err(),
            Some(JwsError::TooLarge {
                len: 20_000,
                max: DEFAULT_MAX_TOKEN_BYTES
            })
        );
    }

    #[test]
    fn embedded_key_headers_are_parsed_but_ignored() {
        let t = token(
            r#"{"alg":"ES256","jku":"https://evil","jwk":{"kty":"EC"},"x5u":"https://evil"}"#,
            "{}",
        );
        let jws = parse_compact(&t, 1000).expect("parses");
        assert_eq!(jws.header.alg, Algorithm::ES256);
        assert_eq!(jws.header.kid, None);
    }
}
