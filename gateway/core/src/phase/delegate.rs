//! Phase `delegate`: agents acting for a user (RFC 8693 `act`, [`crate::delegation`]). The
//! actor chain is checked against the route's `[route.agents]` rules, the identity's
//! scopes narrowed to what the delegation allows, and an agent's own workload token, when
//! the route asks for one, must name the acting agent.

use super::{Ctx, Matched, Scope, Step};
use crate::delegation::{self, Actor, actor_chain};
use crate::reason::Reason;

/// Applies the route's delegation rules to the identity, if any.
pub fn run(scope: &Scope<'_>, m: Matched<'_>, cx: &mut Ctx) -> Step {
    let input = &scope.input;
    let route = m.route;
    let refuse = |(reason, detail): (Reason, String)| input.refuse(reason, &detail);
    let Some(id) = cx.identity.as_mut() else {
        return Ok(());
    };
    let max_depth = route.agents.as_ref().map_or(1, |a| a.max_depth);
    let chain = actor_chain(id, max_depth).map_err(refuse)?;
    if chain.is_empty() {
        return Ok(());
    }
    cx.audit.actor = Some(delegation::describe(&chain));
    delegation::apply(
        route.agents.as_ref(),
        &route.scopes_any,
        &route.scopes_all,
        &chain,
        id,
    )
    .map_err(refuse)?;
    let Some(rules) = &route.agents else {
        return Ok(());
    };
    let Some(header) = &rules.workload_header else {
        return Ok(());
    };
    cx.extra_strip.push(header.clone());
    match input.req.headers.get(header).map(|v| v.to_str()) {
        Some(Ok(token)) => {
            let workload = input
                .services
                .auth
                .authenticate(token, &[], input.now)
                .map_err(|f| input.refuse(f.reason, &format!("workload token: {}", f.detail)))?;
            let actor = chain.first().map(Actor::name).unwrap_or("");
            if workload.subject.as_deref() != Some(actor) {
                return Err(input.refuse(
                    Reason::ActorMismatch,
                    &format!(
                        "the workload token is for {:?}, the delegation names the actor {actor:?}",
                        workload.subject.as_deref().unwrap_or("")
                    ),
                ));
            }
            Ok(())
        }
        Some(Err(_)) => Err(input.refuse(
            Reason::InvalidRequest,
            "the workload token header is not text",
        )),
        None if rules.require_workload => Err(input.refuse(
            Reason::ActorMismatch,
            &format!("agents must present their workload token in `{header}`"),
        )),
        None => Ok(()),
    }
}
