//! Phase `route`: the gateway's reserved paths never reach a backend, in any ASCII case;
//! otherwise the first route for the host and path. Refusal: `route_not_found` (404).

use super::{Ctx, Matched, Scope, Step};
use crate::model::reserved::INTERNAL_PREFIX;
use crate::policy::match_route;
use crate::reason::Reason;

/// Finds the route; the audit record gets its path prefix.
pub fn run<'a>(scope: &Scope<'a>, cx: &mut Ctx) -> Step<Matched<'a>> {
    let input = &scope.input;
    let cfg = input.config();
    let path = scope.norm.route_path();
    // A case-insensitive backend would serve `/_PORTCULLIS/…` as `/_portcullis/…`.
    if path
        .get(..INTERNAL_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(INTERNAL_PREFIX))
    {
        return Err(input.refuse(Reason::RouteNotFound, "no such gateway endpoint"));
    }
    let matched = match_route(
        &cfg.routes,
        &scope.norm.authority.host,
        path,
        cfg.paths.case_sensitive,
    )
    .and_then(|index| cfg.routes.get(index).map(|route| Matched { index, route }));
    let Some(matched) = matched else {
        return Err(input.refuse(Reason::RouteNotFound, "no route matches this host and path"));
    };
    cx.audit.route = Some(matched.route.path.clone());
    Ok(matched)
}
