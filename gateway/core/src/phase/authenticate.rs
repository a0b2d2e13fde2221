//! Phase `authenticate`: who is calling. A bearer or DPoP-bound access token
//! ([`crate::authenticate`], [`crate::dpop`]) or, on login routes without one, the browser
//! session cookie ([`crate::login`]). The identity, its issuer and the pseudonymous subject
//! go into the context and the audit record.

use http::HeaderValue;

use super::{Ctx, Matched, Scope, Step};
use crate::audit::pseudonymize;
use crate::authenticate::{TokenScheme, access_token};
use crate::claims::VerifiedIdentity;
use crate::config::{AuthMode, FailPolicy};
use crate::decision::problem;
use crate::login::Lookup;
use crate::reason::Reason;

/// Authenticates the request as the route requires.
pub fn run(scope: &Scope<'_>, m: Matched<'_>, cx: &mut Ctx) -> Step {
    let input = &scope.input;
    let cfg = input.config();
    let route = m.route;
    if route.auth == AuthMode::Public {
        return Ok(());
    }
    let presented =
        access_token(input.req.headers).map_err(|f| input.refuse(f.reason, &f.detail))?;
    let identity = match presented {
        None if !route.login.is_empty() => session(scope, m, cx)?,
        None if route.auth == AuthMode::Required => {
            let reason = if route.require_dpop {
                Reason::DpopRequired
            } else {
                Reason::AuthenticationRequired
            };
            return Err(input.refuse(reason, "this route needs an access token"));
        }
        None => None,
        Some((TokenScheme::Bearer, _)) if route.require_dpop => {
            return Err(input.refuse(
                Reason::DpopRequired,
                "this route accepts only DPoP-bound tokens (Authorization: DPoP)",
            ));
        }
        Some((scheme, token)) => Some(token_identity(scope, m, scheme, token, cx)?),
    };
    let mut identity = identity;
    if let Some(id) = identity.as_mut()
        && let Some(path) = cfg
            .issuers
            .get(id.issuer.0)
            .and_then(|i| i.scopes_claim.as_ref())
    {
        id.scopes = crate::claims::scopes_at(path, &id.claims)
            .map_err(|e| input.refuse(Reason::ClaimInvalid, &e))?;
    }
    if let Some(id) = &identity {
        let issuer = cfg.issuers.get(id.issuer.0);
        cx.audit.issuer = issuer.map(|c| c.name.clone());
        cx.audit.subject = match (issuer, &id.subject) {
            // The token's own `iss`: a multi-tenant issuer's subjects are per tenant.
            (Some(i), Some(sub)) => {
                let iss = id.claims.get("iss").and_then(serde_json::Value::as_str);
                Some(pseudonymize(
                    &cfg.audit.subject_key,
                    iss.filter(|iss| i.matches_iss(iss)).unwrap_or(&i.issuer),
                    sub,
                ))
            }
            _ => None,
        };
    }
    cx.identity = identity;
    Ok(())
}

/// A login route's request without a token: its session cookie, a login redirect when the
/// route requires one, or anonymous (with any stale session cookies cleared).
fn session(scope: &Scope<'_>, m: Matched<'_>, cx: &mut Ctx) -> Step<Option<VerifiedIdentity>> {
    let input = &scope.input;
    let route = m.route;
    let Some(flow) = &scope.flow else {
        return Err(input.refuse(Reason::ProviderUnavailable, "sessions are not configured"));
    };
    let fail_open = input.config().state.on_unavailable == FailPolicy::Allow;
    match flow.lookup(&route.login, fail_open) {
        Lookup::Session(found) => {
            cx.audit.session = Some(found.event);
            cx.session.cookies = found.set_cookies;
            cx.session.access_token = found.access_token;
            cx.session.provider = Some(found.provider);
            cx.session.consent_asked = found.consent_asked;
            cx.session.sid = Some(found.sid);
            cx.session.signals = found.signals;
            cx.session.op_sid = found.op_sid;
            cx.session.created = Some(found.created);
            Ok(Some(found.identity))
        }
        Lookup::Refuse(r) => Err(r),
        Lookup::Absent { clear, why } => {
            cx.audit.session = Some(why);
            if route.auth == AuthMode::Required {
                return Err(flow.login_required(&route.login, &scope.norm.path_and_query, clear));
            }
            cx.session.cookies = clear;
            Ok(None)
        }
    }
}

/// An access token: its DPoP proof first (with the server nonce when required), then the
/// token itself, its key binding, and last the proof's one-time use, so that refused
/// requests do not use up proof ids.
fn token_identity(
    scope: &Scope<'_>,
    m: Matched<'_>,
    scheme: TokenScheme,
    token: &str,
    cx: &mut Ctx,
) -> Step<VerifiedIdentity> {
    let input = &scope.input;
    let (cfg, req, now, auth) = (input.config(), input.req, input.now, input.services.auth);
    let proof = if scheme == TokenScheme::Dpop {
        let url = format!(
            "{}{}",
            scope.norm.authority.origin(&cfg.dpop.scheme),
            scope.norm.path
        );
        let proof = crate::dpop::request_proof(
            req.headers,
            req.method,
            &url,
            token,
            now,
            cfg.dpop.max_age,
            auth,
        )
        .map_err(|detail| input.refuse(Reason::DpopProofInvalid, &detail))?;
        if cfg.dpop.require_nonce
            && !proof
                .nonce
                .as_deref()
                .is_some_and(|n| crate::dpop::nonce_valid(&cfg.audit.subject_key, n, now))
        {
            let mut r = problem(
                Reason::DpopNonceRequired,
                "send the proof again with the nonce from the DPoP-Nonce header",
                req.request_id,
                &[],
            );
            let fresh = crate::dpop::nonce(&cfg.audit.subject_key, now);
            if let Ok(v) = HeaderValue::from_str(&fresh) {
                r.headers
                    .push((http::HeaderName::from_static("dpop-nonce"), v));
            }
            return Err(r);
        }
        Some(proof)
    } else {
        None
    };
    let id = match crate::introspect::issuer_for(cfg, &m.route.issuers) {
        Some(issuer) if !crate::introspect::looks_like_jwt(token) => {
            crate::introspect::identify(input.io, auth, cfg, issuer, token, now)
                .map_err(|f| token_refusal(scope, f, cx))?
        }
        _ => jwt_identity(scope, m, token, cx)?,
    };
    crate::dpop::check_binding(&id.claims, proof.as_ref())
        .map_err(|(reason, detail)| input.refuse(reason, detail))?;
    provider_session_live(scope, &id)?;
    if let Some(p) = &proof {
        match input.io.first_use(
            &format!("dpop/{}/{}", p.jkt, p.jti),
            cfg.dpop.max_age.saturating_mul(2),
        ) {
            Ok(true) => {}
            Ok(false) => {
                return Err(input.refuse(
                    Reason::DpopProofInvalid,
                    "this DPoP proof was already used (replay)",
                ));
            }
            Err(e) => {
                return Err(input.refuse(
                    Reason::StateUnavailable,
                    &format!("the DPoP proof cannot be checked for replay: {e}"),
                ));
            }
        }
    }
    Ok(id)
}

/// An access token of a `session_bound_tokens` issuer that names its provider session
/// (`sid`) is refused once that session ended (a back-channel logout, or a browser session
/// of it the gateway revoked): 401 `token_inactive`. One shared-state lookup; while the
/// state is unreachable, `on_unavailable` decides.
fn provider_session_live(scope: &Scope<'_>, id: &VerifiedIdentity) -> Step {
    let input = &scope.input;
    let cfg = input.config();
    let Some(issuer) = cfg.issuers.get(id.issuer.0) else {
        return Ok(());
    };
    let sid = id.claims.get("sid").and_then(serde_json::Value::as_str);
    let (true, Some(sid)) = (issuer.session_bound_tokens, sid) else {
        return Ok(());
    };
    let iss = id
        .claims
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(&issuer.issuer);
    match input.io.get(&crate::login::ended_session_key(iss, sid)) {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(input.refuse(
            Reason::TokenInactive,
            "the provider session this token belongs to has ended",
        )),
        Err(_) if cfg.state.on_unavailable == FailPolicy::Allow => Ok(()),
        Err(e) => Err(input.refuse(
            Reason::StateUnavailable,
            &format!("the token's provider session cannot be checked: {e}"),
        )),
    }
}

/// A JWT access token: the platform's signature check first (where the platform checks
/// signatures), then the token verified against its issuer's keys.
fn jwt_identity(
    scope: &Scope<'_>,
    m: Matched<'_>,
    token: &str,
    cx: &mut Ctx,
) -> Step<VerifiedIdentity> {
    let input = &scope.input;
    let (now, auth) = (input.now, input.services.auth);
    if let Some(check) = auth.signature_check(token, &m.route.issuers, now) {
        let verdict = input.io.verify(check.clone());
        if input.io.waiting() {
            // The platform checks it first; this run's answer is discarded.
            return Err(input.refuse(Reason::KeysUnavailable, "waiting for the signature check"));
        }
        if let Some(valid) = verdict {
            auth.checked(&check, valid);
        }
    }
    auth.authenticate(token, &m.route.issuers, now)
        .map_err(|f| token_refusal(scope, f, cx))
}

/// The refusal of a token: the issuer it named goes into the audit record, and an unknown
/// `kid` asks for the issuer's keys to be fetched again.
fn token_refusal(
    scope: &Scope<'_>,
    f: crate::authenticate::AuthFailure,
    cx: &mut Ctx,
) -> crate::decision::Response {
    let input = &scope.input;
    if let Some(i) = f.issuer {
        cx.audit.issuer = input.config().issuers.get(i.0).map(|c| c.name.clone());
    }
    if f.unknown_kid {
        cx.refetch = f.issuer;
    }
    input.refuse(f.reason, &f.detail)
}
