//! Claim validation (RFC 7519 §4.1, RFC 9068): strict types — a claim of the wrong JSON type
//! is invalid, never treated as absent.

use serde_json::{Map, Value};

use crate::config::IssuerConfig;
use crate::model::IssuerId;
use crate::time::Timestamp;

/// Who is calling, as established by a verified token.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedIdentity {
    /// Which configured issuer vouched for it.
    pub issuer: IssuerId,
    /// `sub`, if present.
    pub subject: Option<String>,
    /// Scopes from `scope` (space-separated) or `scp` (array or string).
    pub scopes: Vec<String>,
    /// `acr`, if present.
    pub acr: Option<String>,
    /// `amr`, empty if absent.
    pub amr: Vec<String>,
    /// `auth_time` in Unix seconds, if present.
    pub auth_time: Option<f64>,
    /// `exp` in Unix seconds.
    pub expires_at: f64,
    /// Every claim, for claim rules, residency and identity headers.
    pub claims: Map<String, Value>,
}

impl VerifiedIdentity {
    /// True when the identity holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why the claims of a correctly signed token are not acceptable.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimError {
    /// `exp` (plus skew) has passed.
    Expired(String),
    /// `nbf` (minus skew) is still ahead.
    NotYetValid(String),
    /// `iat` is later than now plus skew.
    IssuedInFuture(String),
    /// No configured audience is in `aud`.
    AudienceMismatch(String),
    /// A claim is missing or has the wrong type.
    Invalid(String),
}

/// Validates the claims of a token whose signature `issuer` has verified.
pub fn validate(
    claims: Map<String, Value>,
    issuer_id: IssuerId,
    issuer: &IssuerConfig,
    now: Timestamp,
) -> Result<VerifiedIdentity, ClaimError> {
    let now_s = now.unix_millis() as f64 / 1000.0;
    let skew = issuer.clock_skew.as_secs_f64();

    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !issuer.matches_iss(iss) {
        return Err(ClaimError::Invalid(
            "`iss` does not match the issuer".into(),
        ));
    }
    // A multi-tenant issuer's token names its tenant twice: in `iss` and (Entra) in `tid`.
    if let (Some(tenant), Some(tid)) = (issuer.tenant_of(iss), claims.get("tid"))
        && tid.as_str() != Some(tenant)
    {
        return Err(ClaimError::Invalid(format!(
            "`tid` {tid} is not the tenant {tenant:?} of `iss`"
        )));
    }
    let exp = numeric_date(&claims, "exp")?
        .ok_or_else(|| ClaimError::Invalid("`exp` is required".into()))?;
    if now_s >= exp + skew {
        return Err(ClaimError::Expired(format!(
            "expired at {exp}, now is {}",
            now.unix_secs()
        )));
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now_s + skew < nbf
    {
        return Err(ClaimError::NotYetValid(format!(
            "not valid before {nbf}, now is {}",
            now.unix_secs()
        )));
    }
    if let Some(iat) = numeric_date(&claims, "iat")?
        && iat > now_s + skew
    {
        return Err(ClaimError::IssuedInFuture(format!(
            "issued at {iat}, now is {}",
            now.unix_secs()
        )));
    }
    check_audience(&claims, &issuer.audiences)?;
    extract(claims, issuer_id, exp)
}

/// Builds the identity from claims that were already validated (by this crate, possibly in
/// another process or component): only the claim types are checked again.
pub fn identity_from_claims(
    claims: Map<String, Value>,
    issuer_id: IssuerId,
) -> Result<VerifiedIdentity, ClaimError> {
    let exp = numeric_date(&claims, "exp")?
        .ok_or_else(|| ClaimError::Invalid("`exp` is required".into()))?;
    extract(claims, issuer_id, exp)
}

fn extract(
    claims: Map<String, Value>,
    issuer_id: IssuerId,
    exp: f64,
) -> Result<VerifiedIdentity, ClaimError> {
    let subject = opt_string(&claims, "sub")?;
    let acr = opt_string(&claims, "acr")?;
    let amr = match claims.get("amr") {
        None => Vec::new(),
        Some(v) => string_array(v)
            .ok_or_else(|| ClaimError::Invalid("`amr` must be an array of strings".into()))?,
    };
    let auth_time = numeric_date(&claims, "auth_time")?;
    let scopes = scopes(&claims)?;
    Ok(VerifiedIdentity {
        issuer: issuer_id,
        subject,
        scopes,
        acr,
        amr,
        auth_time,
        expires_at: exp,
        claims,
    })
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z. Later values (`1e300`) are not
/// dates any clock or backend can represent; refusing them keeps a far-future `exp` from
/// being read as "never expires" (`claim_invalid`).
pub const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&f) => Ok(Some(f)),
            _ => Err(ClaimError::Invalid(format!(
                "`{name}` is not a NumericDate between 0 and {MAX_NUMERIC_DATE} (year 9999)"
            ))),
        },
        Some(other) => Err(ClaimError::Invalid(format!(
            "`{name}` must be a number, found {}",
            json_type(other)
        ))),
    }
}

fn opt_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ClaimError::Invalid(format!(
            "`{name}` must be a string, found {}",
            json_type(other)
        ))),
    }
}

fn string_array(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_owned))
        .collect()
}

fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), ClaimError> {
    let auds: Vec<&str> = match claims.get("aud") {
        None => {
            return Err(ClaimError::AudienceMismatch(
                "the token has no `aud`".into(),
            ));
        }
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ClaimError::Invalid("`aud` must be a string or an array of strings".into())
            })?,
        Some(other) => {
            return Err(ClaimError::Invalid(format!(
                "`aud` must be a string or an array of strings, found {}",
                json_type(other)
            )));
        }
    };
    if auds.iter().any(|a| accepted.iter().any(|x| x == a)) {
        Ok(())
    } else {
        Err(ClaimError::AudienceMismatch(format!(
            "`aud` {auds:?} names none of the accepted audiences"
        )))
    }
}

/// The scopes an issuer's `scopes_claim` holds: an array of strings or a space-separated
/// string; absent is none. Any other shape is refused (it cannot be read as scopes).
pub fn scopes_at(
    path: &crate::model::ClaimPath,
    claims: &Map<String, Value>,
) -> Result<Vec<String>, String> {
    match path.get(claims) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(v @ Value::Array(_)) => string_array(v)
            .ok_or_else(|| format!("the scopes claim `{}` must hold strings", path.text)),
        Some(other) => Err(format!(
            "the scopes claim `{}` must be an array of strings or a string, found {}",
            path.text,
            json_type(other)
        )),
    }
}

fn scopes(claims: &Map<String, Value>) -> Result<Vec<String>, ClaimError> {
    let mut out = Vec::new();
    match claims.get("scope") {
        None => {}
        Some(Value::String(s)) => {
            out.extend(s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned))
        }
        Some(other) => {
            return Err(ClaimError::Invalid(format!(
                "`scope` must be a space-separated string, found {}",
                json_type(other)
            )));
        }
    }
    match claims.get("scp") {
        None => {}
        Some(Value::String(s)) => {
            out.extend(s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned))
        }
        Some(v @ Value::Array(_)) => out.extend(
            string_array(v).ok_or_else(|| ClaimError::Invalid("`scp` must hold strings".into()))?,
        ),
        Some(other) => {
            return Err(ClaimError::Invalid(format!(
                "`scp` must be a string or an array of strings, found {}",
                json_type(other)
            )));
        }
    }
    Ok(out)
}

/// The JSON type name of a value, for messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn date(v: Value) -> Result<Option<f64>, ClaimError> {
        let mut m = Map::new();
        m.insert("exp".into(), v);
        numeric_date(&m, "exp")
    }

    #[test]
    fn numeric_dates_outside_the_representable_range_are_invalid() {
        assert_eq!(date(serde_json::json!(1_700_000_000)), Ok(Some(1.7e9)));
        assert_eq!(
            date(serde_json::json!(MAX_NUMERIC_DATE)),
            Ok(Some(MAX_NUMERIC_DATE))
        );
        for bad in [
            serde_json::json!(1e300),
            serde_json::json!(253_402_300_800_u64),
            serde_json::json!(u64::MAX),
            serde_json::json!(-1),
            serde_json::json!("1700000000"),
        ] {
            assert!(
                matches!(date(bad.clone()), Err(ClaimError::Invalid(_))),
                "{bad}"
            );
        }
        // Also through identity building: a far-future `exp` never yields an identity.
        let mut claims = Map::new();
        claims.insert("exp".into(), serde_json::json!(1e300));
        assert!(identity_from_claims(claims, IssuerId(0)).is_err());
    }
}
