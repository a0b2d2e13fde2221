//! Opaque access tokens (RFC 7662 token introspection; used by the `authenticate` phase,
//! [`crate::phase::authenticate`]).
//!
//! A token that is not a compact JWS names no issuer, so a route accepts opaque tokens
//! from one introspecting issuer at most (the configuration refuses more): the token is
//! POSTed, with the gateway's client authentication, to that issuer's
//! `introspection_endpoint` through the client port, and the answer is judged like a
//! JWT's claims (`iss`, `exp`, `nbf`, `iat`, `aud`, scopes), with `active` and
//! `token_type` first. Answers are kept in the shared state under the token's SHA-256: an
//! active one until `exp` or `cache_ttl`, whichever comes first, an inactive one for
//! `negative_ttl`. An endpoint that cannot be reached, or answers anything but an RFC 7662
//! answer, refuses the request (503 / 502): an opaque token is never accepted unasked.

use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::authenticate::{AuthFailure, Authenticator, claim_failure};
use crate::claims::{VerifiedIdentity, validate};
use crate::config::{Config, IssuerConfig};
use crate::model::IssuerId;
use crate::ports::{FormEndpoint, Io};
use crate::reason::Reason;
use crate::time::Timestamp;

/// True when `token` has the shape of a compact JWS (three dot-separated parts, the first
/// a base64url JSON object): such tokens are verified locally, never introspected.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(_), Some(_), None) => crate::b64::decode(header)
            .is_some_and(|h| h.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')),
        _ => false,
    }
}

/// The issuer that introspects a route's opaque tokens: the first accepted issuer with
/// `[issuer.introspection]` (the configuration allows one at most).
pub fn issuer_for(config: &Config, route_issuers: &[IssuerId]) -> Option<IssuerId> {
    config
        .issuers
        .iter()
        .enumerate()
        .find(|(i, c)| {
            c.introspection.is_some()
                && (route_issuers.is_empty() || route_issuers.contains(&IssuerId(*i)))
        })
        .map(|(i, _)| IssuerId(i))
}

/// Why the decision stopped: it waits for the state or the endpoint (the run is discarded).
const WAITING: &str = "waiting for the introspection answer";

/// The identity behind the opaque `token`, as `issuer`'s introspection endpoint (or its
/// cached answer) vouches for it.
pub fn identify(
    io: &Io<'_>,
    auth: &dyn Authenticator,
    config: &Config,
    issuer: IssuerId,
    token: &str,
    now: Timestamp,
) -> Result<VerifiedIdentity, AuthFailure> {
    let fail = |reason: Reason, detail: String| AuthFailure::new(reason, detail).at(issuer);
    let Some(cfg) = config.issuers.get(issuer.0) else {
        return Err(fail(
            Reason::IssuerUnknown,
            "issuer index out of range".into(),
        ));
    };
    let Some(client) = &cfg.introspection else {
        return Err(fail(
            Reason::TokenMalformed,
            format!("issuer `{}` does not introspect opaque tokens", cfg.name),
        ));
    };
    let key = cache_key(&cfg.name, token);
    // A cache that cannot answer is no refusal: the endpoint is asked instead.
    let cached = io.get(&key);
    if io.waiting() {
        return Err(fail(Reason::IntrospectionUnavailable, WAITING.into()));
    }
    if let Ok(Some(bytes)) = cached
        && let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&bytes)
    {
        return judge(answer, issuer, cfg, now);
    }
    let form = [
        ("token", token.to_owned()),
        ("token_type_hint", "access_token".to_owned()),
    ];
    let (authorization, body) = crate::login::client_form(
        io,
        auth,
        issuer,
        &client.client_id,
        &client.client_auth,
        &form,
        now,
    )
    .map_err(|(_, detail)| fail(Reason::IntrospectionUnavailable, detail))?;
    let answered = io.token_request(issuer, FormEndpoint::Introspection, &authorization, &body);
    if io.waiting() {
        return Err(fail(Reason::IntrospectionUnavailable, WAITING.into()));
    }
    let (status, body) = answered.map_err(|e| {
        fail(
            Reason::IntrospectionUnavailable,
            format!("the introspection endpoint cannot be reached: {e}"),
        )
    })?;
    if status != 200 {
        let reason = if status >= 500 {
            Reason::IntrospectionUnavailable
        } else {
            Reason::IntrospectionInvalid
        };
        return Err(fail(
            reason,
            format!("the introspection endpoint answered {status}"),
        ));
    }
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&body) else {
        return Err(fail(
            Reason::IntrospectionInvalid,
            "the introspection answer is not a JSON object".into(),
        ));
    };
    let judged = judge(answer.clone(), issuer, cfg, now);
    // Only answers that decide are kept: an active token that passed, or an inactive one.
    let ttl = match &judged {
        Ok(id) => Some(positive_ttl(id.expires_at, now, client.cache_ttl)),
        Err(f) if f.reason == Reason::TokenInactive => Some(client.negative_ttl),
        Err(_) => None,
    };
    if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
        let kept = if judged.is_ok() {
            Value::Object(answer).to_string()
        } else {
            r#"{"active":false}"#.to_owned()
        };
        // A store that cannot keep it costs a later call, nothing more.
        let _ = io.set(&key, kept.as_bytes(), ttl);
    }
    judged
}

/// How long an active answer for a token expiring at `expires_at` (Unix seconds) is kept:
/// until then, at most `cache_ttl` (an absurd `exp` such as 1e300 included).
fn positive_ttl(expires_at: f64, now: Timestamp, cache_ttl: Duration) -> Duration {
    let left = expires_at - now.unix_millis() as f64 / 1000.0;
    let left = if left.is_nan() { 0.0 } else { left };
    Duration::try_from_secs_f64(left.clamp(0.0, cache_ttl.as_secs_f64())).unwrap_or(cache_ttl)
}

/// The shared-state key of `token`'s answer at issuer `name`.
fn cache_key(name: &str, token: &str) -> String {
    format!(
        "introspect/{name}/{}",
        crate::b64::encode(&Sha256::digest(token.as_bytes()))
    )
}

/// Token types an access token may be introspected as (RFC 7662 §2.2 `token_type`, which
/// providers fill with the RFC 6749 type or the RFC 8693 URI).
const ACCESS_TOKEN_TYPES: [&str; 4] = [
    "bearer",
    "dpop",
    "access_token",
    "urn:ietf:params:oauth:token-type:access_token",
];

/// Judges an RFC 7662 answer: `active`, `token_type`, then the claims as a JWT's.
fn judge(
    mut answer: Map<String, Value>,
    issuer: IssuerId,
    cfg: &IssuerConfig,
    now: Timestamp,
) -> Result<VerifiedIdentity, AuthFailure> {
    let fail = |reason: Reason, detail: String| AuthFailure::new(reason, detail).at(issuer);
    match answer.remove("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Err(fail(
                Reason::TokenInactive,
                "the issuer says the token is not active (revoked, expired or unknown)".into(),
            ));
        }
        _ => {
            return Err(fail(
                Reason::IntrospectionInvalid,
                "the introspection answer has no boolean `active`".into(),
            ));
        }
    }
    if let Some(t) = answer.get("token_type") {
        let t = t.as_str().unwrap_or_default();
        if !ACCESS_TOKEN_TYPES.iter().any(|a| a.eq_ignore_ascii_case(t)) {
            return Err(fail(
                Reason::TokenTypeInvalid,
                format!("the issuer says this is a {t:?} token, not an access token"),
            ));
        }
    }
    // `iss` is optional in an answer: the issuer asked is the one vouching.
    if !answer.contains_key("iss") && cfg.tenants.is_empty() {
        answer.insert("iss".into(), Value::String(cfg.issuer.clone()));
    }
    validate(answer, issuer, cfg, now).map_err(|e| claim_failure(e).at(issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_compact_jws_shapes_count_as_jwts() {
        let header = crate::b64::encode(br#"{"alg":"ES256"}"#);
        assert!(looks_like_jwt(&format!("{header}.e30.sig")));
        // Google's opaque tokens have dots too; a JWE has five parts.
        assert!(!looks_like_jwt("ya29.a0AfH6SMBx"));
        assert!(!looks_like_jwt("2YotnFZFEjr1zCsicMWpAA"));
        assert!(!looks_like_jwt(&format!("{header}.a.b.c.d")));
        assert!(!looks_like_jwt("abc.def.ghi"));
    }

    #[test]
    fn answers_are_kept_until_exp_at_most_cache_ttl() {
        let now = Timestamp::from_unix_millis(1_000_000);
        let ttl = Duration::from_secs(60);
        assert_eq!(positive_ttl(1_030.0, now, ttl), Duration::from_secs(30));
        assert_eq!(positive_ttl(5_000.0, now, ttl), ttl);
        assert_eq!(positive_ttl(1e300, now, ttl), ttl);
        assert_eq!(positive_ttl(10.0, now, ttl), Duration::ZERO);
    }

    #[test]
    fn cache_keys_hold_a_hash_never_the_token() {
        let key = cache_key("op", "secret-token");
        assert!(key.starts_with("introspect/op/"));
        assert!(!key.contains("secret-token"));
        assert_ne!(key, cache_key("op", "secret-token2"));
        assert_ne!(key, cache_key("other", "secret-token"));
    }
}
