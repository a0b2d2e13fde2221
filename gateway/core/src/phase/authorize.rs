//! Phase `authorize`: the route's rules on the verified identity ([`crate::policy`]):
//! scopes, claims, `acr`/`amr`/`auth_time`. A browser session that is not strong or recent
//! enough logs in again with its provider, asking for it (RFC 9470 §4); other clients get
//! the RFC 9470 error.

use super::{Ctx, Matched, Scope, Step};
use crate::decision::problem;
use crate::login::{StepUp, is_navigation};
use crate::policy::authorize;
use crate::reason::Reason;

/// Applies the route's rules (anonymous requests on public routes have none to meet).
pub fn run(scope: &Scope<'_>, m: Matched<'_>, cx: &Ctx) -> Step {
    let input = &scope.input;
    let Some(id) = &cx.identity else {
        return Ok(());
    };
    let Err(refusal) = authorize(m.route, id, input.now) else {
        return Ok(());
    };
    if let Some(provider) = cx.session.provider
        && refusal.reason == Reason::InsufficientUserAuthentication
        && is_navigation(input.req.method, input.req.headers)
        && let Some(flow) = &scope.flow
    {
        return Err(flow.begin(
            provider,
            &scope.norm.path_and_query,
            &StepUp::from_challenge(&refusal.challenge),
        ));
    }
    Err(problem(
        refusal.reason,
        &refusal.detail,
        input.req.request_id,
        &refusal.challenge,
    ))
}
