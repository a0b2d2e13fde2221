//! Phase `forward`: the request as the backend will see it. Spoofable headers are removed
//! (client identity headers, `Authorization` unless forwarded, workload tokens, the
//! gateway's own cookies, forwarding headers from untrusted peers); the verified identity,
//! the forwarding headers of this hop and a short-lived gateway-signed token are set
//! ([`crate::forwarding`], [`crate::gateway_token`]), and a `traceparent` naming the
//! backend call's span ([`crate::trace`]); the response gets the rate-limit and session
//! headers.

use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, SET_COOKIE};
use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::{Ctx, Matched, Scope, Step};
use crate::claims::VerifiedIdentity;
use crate::config::{GatewayToken, IdentitySource, Region};
use crate::decision::Forward;
use crate::model::{BackendId, Entropy as _};
use crate::reason::Reason;
use crate::trace::{TRACEPARENT, TRACESTATE};

/// The forward instruction for `backend` in `region`; 503 `gateway_token_unavailable` when
/// `[gateway_token]` is configured and the backend's token cannot be minted (signed, or
/// given a random `jti`): a backend that relies on it is never called without it.
pub fn run(
    scope: &Scope<'_>,
    m: Matched<'_>,
    cx: &mut Ctx,
    backend: BackendId,
    region: &Region,
) -> Step<Forward> {
    let input = &scope.input;
    let (cfg, req) = (input.config(), input.req);
    let identity = cx.identity.as_ref();
    let session = std::mem::take(&mut cx.session);
    let mut remove_headers = scope.norm.strip.clone();
    if !cfg.identity.forward_authorization && req.headers.contains_key(AUTHORIZATION) {
        remove_headers.push(AUTHORIZATION);
    }
    for h in std::mem::take(&mut cx.extra_strip) {
        if req.headers.contains_key(&h) && !remove_headers.contains(&h) {
            remove_headers.push(h);
        }
    }
    let (forward_remove, forward_set) = crate::forwarding::headers(
        &cfg.client,
        &crate::forwarding::Hop {
            peer: req.peer,
            authority: &scope.norm.authority,
            scheme: &scope.norm.scheme,
        },
        req.headers,
    );
    for h in forward_remove {
        if !remove_headers.contains(&h) {
            remove_headers.push(h);
        }
    }
    let mut set_headers = forward_set;
    set_headers.extend(identity_headers(scope, identity, region));
    // The gateway's own cookies never reach a backend, whether or not sessions are
    // configured (a challenge clearance exists without them).
    let session_cookie = cfg.session.as_ref().map(|sc| sc.cookie.as_str());
    match crate::login::strip_own_cookies(req.headers, session_cookie) {
        None => {}
        Some(Some(v)) => set_headers.push((COOKIE, v)),
        Some(None) => remove_headers.push(COOKIE),
    }
    if let Some(sc) = &cfg.session
        && sc.forward_access_token
        && let Some(v) = session
            .access_token
            .as_deref()
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
    {
        remove_headers.retain(|h| h != AUTHORIZATION);
        set_headers.push((AUTHORIZATION, v));
    }
    if let (Some(gt), Some(id), Some(backend_cfg)) = (
        &cfg.gateway_token,
        identity,
        region.backends.get(backend.index),
    ) {
        let token = gateway_token(scope, gt, id, region, &backend_cfg.url)
            .and_then(|t| HeaderValue::from_str(&t).map_err(|_| "the token is not a header value"));
        match token {
            Ok(v) => set_headers.push((gt.header.clone(), v)),
            Err(why) => return Err(input.refuse(Reason::GatewayTokenUnavailable, why)),
        }
    }
    // The backend call is a span of its own in the request's trace.
    if let Some(trace) = &cx.trace
        && let Some(span) = trace.child(input.io)
    {
        set_headers.push((
            HeaderName::from_static(TRACEPARENT),
            trace.traceparent(span),
        ));
        let state = HeaderName::from_static(TRACESTATE);
        if !trace.continued() && req.headers.contains_key(&state) {
            remove_headers.push(state);
        }
    }
    let mut response_headers = super::limits::headers(m.route, &cx.limited);
    if !session.cookies.is_empty() {
        // Never stored by a shared cache: it carries the user's session.
        response_headers.push((CACHE_CONTROL, HeaderValue::from_static("private, no-store")));
    }
    response_headers.extend(session.cookies.into_iter().map(|c| (SET_COOKIE, c)));
    Ok(Forward {
        backend,
        path_and_query: scope.norm.path_and_query.clone(),
        remove_headers,
        set_headers,
        response_headers,
    })
}

/// The gateway-signed token for one forwarded request, or why there is none.
fn gateway_token(
    scope: &Scope<'_>,
    gt: &GatewayToken,
    id: &VerifiedIdentity,
    region: &Region,
    audience: &str,
) -> Result<String, &'static str> {
    let input = &scope.input;
    let mut claims = serde_json::Map::new();
    if let Some(sub) = &id.subject {
        claims.insert("sub".into(), Value::String(sub.clone()));
    }
    claims.insert("aud".into(), Value::String(audience.to_owned()));
    if let Some(issuer) = input.config().issuers.get(id.issuer.0) {
        claims.insert("idp".into(), Value::String(issuer.issuer.clone()));
    }
    if let Some(act) = id.claims.get("act") {
        claims.insert("act".into(), act.clone());
    }
    claims.insert("scope".into(), Value::String(id.scopes.join(" ")));
    claims.insert("region".into(), Value::String(region.name.clone()));
    if let Some(acr) = &id.acr {
        claims.insert("acr".into(), Value::String(acr.clone()));
    }
    for name in ["client_id", "sid"] {
        if let Some(v) = id.claims.get(name) {
            claims.insert(name.into(), v.clone());
        }
    }
    // 128 random bits (RFC 7519 §4.1.7: a negligible chance of reuse). Not derived from the
    // request: its id is the client's `x-request-id` when it sends one the gateway keeps,
    // which a client may repeat, so two requests would share a `jti`, and a backend that
    // refuses replayed ones would refuse the second.
    let mut jti = [0u8; 16];
    input
        .io
        .fill(&mut jti)
        .map_err(|_| "no random source for the token's `jti`")?;
    claims.insert("jti".into(), Value::String(crate::trace::hex(&jti)));
    let auth = input.services.auth;
    crate::gateway_token::mint(gt, claims, input.now, |key, m| auth.sign_as_gateway(key, m))
        .ok_or("the token for the backend could not be signed")
}

/// The configured identity headers for the caller (region headers for anyone).
fn identity_headers(
    scope: &Scope<'_>,
    id: Option<&VerifiedIdentity>,
    region: &Region,
) -> Vec<(HeaderName, HeaderValue)> {
    let cfg = scope.input.config();
    let mut out = Vec::with_capacity(cfg.identity.headers.len());
    for (name, source) in &cfg.identity.headers {
        let text = match (source, id) {
            (IdentitySource::Region, _) => Some(region.name.clone()),
            (IdentitySource::Jurisdiction, _) => Some(region.jurisdiction.clone()),
            (IdentitySource::Scope, Some(id)) => Some(id.scopes.join(" ")),
            (IdentitySource::Actor, Some(id)) => id
                .claims
                .get("act")
                .and_then(|a| a.get("sub"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            (IdentitySource::IssuerName, Some(id)) => {
                cfg.issuers.get(id.issuer.0).map(|i| i.name.clone())
            }
            (IdentitySource::Claim(claim), Some(id)) => id.claims.get(claim).map(claim_text),
            (IdentitySource::ClaimPath(path), Some(id)) => path.get(&id.claims).map(claim_text),
            (_, None) => None,
        };
        if let Some(value) = text.and_then(|t| HeaderValue::from_str(&header_safe(&t)).ok()) {
            out.push((name.clone(), value));
        }
    }
    out
}

/// Renders a claim for a header: strings as-is, other values as compact JSON.
fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes `%`, controls and non-ASCII (UTF-8 bytes), so no claim can inject a
/// header line or smuggle bytes a backend would read differently.
fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_cannot_inject_lines_or_raw_bytes() {
        assert_eq!(header_safe("alice"), "alice");
        assert_eq!(header_safe("a\r\nx-admin: 1"), "a%0D%0Ax-admin: 1");
        assert_eq!(header_safe("zoë"), "zo%C3%AB");
        assert_eq!(header_safe("50%"), "50%25");
    }
}
