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
        // ...unless this session's sign-in already asked for exactly that: the provider
        // did not grant it (or does not say so), and asking again would loop.
        Reason::ConsentRequired
            if !already_asked(cx.session.consent_asked.as_deref(), &refusal.challenge) =>
        {
            Some(StepUp::consent(&refusal.challenge))
        }
        _ => None,
    };
    if let (Some(provider), Some(step_up)) = (cx.session.provider, step_up)
        && is_navigation(input.req.method, input.req.headers)
        && let Some(flow) = &scope.flow
    {
        return Err(flow.begin(provider, &scope.norm.path_and_query, &step_up));
    }
    let mut detail = refusal.detail;
    if refusal.reason == Reason::ConsentRequired
        && already_asked(cx.session.consent_asked.as_deref(), &refusal.challenge)
    {
        detail.push_str("; this sign-in asked the provider for it, and it was not granted");
    }
    Err(problem(
        refusal.reason,
        &detail,
        input.req.request_id,
        &refusal.challenge,
    ))
}

/// True when `asked` (the scopes a consent login asked for) holds every scope of the
/// refusal's `scope` challenge.
fn already_asked(asked: Option<&str>, challenge: &[(&'static str, String)]) -> bool {
    let Some(asked) = asked else {
        return false;
    };
    challenge
        .iter()
        .filter(|(n, _)| *n == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .all(|s| asked.split(' ').any(|a| a == s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consent_already_asked_for_is_not_asked_again() {
        let challenge = [("scope", "consent:a consent:b".to_owned())];
        assert!(!already_asked(None, &challenge));
        assert!(!already_asked(Some("openid consent:a"), &challenge));
        assert!(already_asked(
            Some("consent:b openid consent:a"),
            &challenge
        ));
    }
}
