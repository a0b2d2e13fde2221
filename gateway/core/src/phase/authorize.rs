//! Phase `authorize`: the route's rules on the verified identity ([`crate::policy`]):
//! scopes, claims, consent, `acr`/`amr`/`auth_time`. A browser session that is not strong
//! or recent enough logs in again with its provider, asking for it (RFC 9470 §4), and one
//! that lacks a consent goes to the provider's consent screen for it; other clients get
//! the RFC 9470 error or 403 `consent_required`.

use super::{Ctx, Matched, Scope, Step};
use crate::decision::problem;
use crate::login::{StepUp, is_navigation};
use crate::policy::authorize;
use crate::reason::Reason;

/// Applies the route's rules (anonymous requests on public routes have none to meet).
pub fn run(scope: &Scope<'_>, m: Matched<'_>, cx: &mut Ctx) -> Step {
    let input = &scope.input;
    let Some(id) = &cx.identity else {
        return Ok(());
    };
    let consent = input
        .config()
        .issuers
        .get(id.issuer.0)
        .and_then(|i| i.consent.as_ref());
    let verdict = authorize(m.route, id, consent, input.now);
    // The purposes checked go into the audit record, granted or not (consent is checked
    // after scopes and claims, before authentication strength).
    let checked = match &verdict {
        Ok(()) => true,
        Err(r) => matches!(
            r.reason,
            Reason::ConsentRequired | Reason::InsufficientUserAuthentication
        ),
    };
    if checked {
        cx.audit.consent.clone_from(&m.route.consent);
    }
    let Err(refusal) = verdict else {
        return Ok(());
    };
    // A browser that can fix it at its provider goes there: a stronger or fresher login
    // (RFC 9470 §4), or the consent screen for the missing purposes' scopes.
    let step_up = match refusal.reason {
        Reason::InsufficientUserAuthentication => Some(StepUp::from_challenge(&refusal.challenge)),
        Reason::ConsentRequired => Some(StepUp::consent(&refusal.challenge)),
        _ => None,
    };
    if let (Some(provider), Some(step_up)) = (cx.session.provider, step_up)
        && is_navigation(input.req.method, input.req.headers)
        && let Some(flow) = &scope.flow
    {
        return Err(flow.begin(provider, &scope.norm.path_and_query, &step_up));
    }
    Err(problem(
        refusal.reason,
        &refusal.detail,
        input.req.request_id,
        &refusal.challenge,
    ))
}
