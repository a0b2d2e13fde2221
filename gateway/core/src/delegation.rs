//! Delegated tokens (RFC 8693 `act`): an agent acting for a user. The route decides whether
//! agents may call it, which actors, and which scopes an agent may exercise: the effective
//! scopes are the token's scopes ∩ the route's allowance. The actor chain is recorded.

use serde_json::Value;

use crate::claims::VerifiedIdentity;
use crate::config::RouteAgents;
use crate::reason::Reason;

/// One party of an `act` chain, outermost (the current actor) first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `act.sub`.
    pub subject: Option<String>,
    /// `act.client_id`.
    pub client_id: Option<String>,
}

impl Actor {
    /// The actor's name for allow-lists and audit: `sub`, else `client_id`.
    pub fn name(&self) -> &str {
        self.subject
            .as_deref()
            .or(self.client_id.as_deref())
            .unwrap_or("")
    }
}

/// The `act` chain of an identity, outermost first (empty when not delegated). Refuses
/// malformed `act` values and chains longer than `max_depth`.
pub fn actor_chain(
    id: &VerifiedIdentity,
    max_depth: usize,
) -> Result<Vec<Actor>, (Reason, String)> {
    let mut chain = Vec::new();
    let mut next = id.claims.get("act");
    while let Some(act) = next {
        let Value::Object(obj) = act else {
            return Err((Reason::ClaimInvalid, "`act` must be an object".into()));
        };
        let text = |k: &str| match obj.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err((Reason::ClaimInvalid, format!("`act.{k}` must be a string"))),
        };
        let actor = Actor {
            subject: text("sub")?,
            client_id: text("client_id")?,
        };
        if actor.subject.is_none() && actor.client_id.is_none() {
            return Err((
                Reason::ClaimInvalid,
                "`act` names no actor (sub or client_id)".into(),
            ));
        }
        chain.push(actor);
        if chain.len() > max_depth.max(1) * 8 {
            break; // absurd nesting: stop reading, the depth check below refuses it
        }
        next = obj.get("act");
    }
    if chain.len() > max_depth {
        return Err((
            Reason::AgentNotAllowed,
            format!(
                "delegation chain of {} actors, this route accepts at most {max_depth}",
                chain.len()
            ),
        ));
    }
    Ok(chain)
}

/// Applies a route's agent rules to a delegated identity: the actor must be accepted and
/// the identity's scopes become the effective ones (token ∩ allowance). Route scope rules
/// the token meets but the allowance does not give `agent_scope_exceeded`.
pub fn apply(
    rules: Option<&RouteAgents>,
    route_scopes_any: &[String],
    route_scopes_all: &[String],
    chain: &[Actor],
    id: &mut VerifiedIdentity,
) -> Result<(), (Reason, String)> {
    let Some(actor) = chain.first() else {
        return Ok(());
    };
    let Some(rules) = rules else {
        return Err((
            Reason::AgentNotAllowed,
            format!("agent `{}` may not call this route", actor.name()),
        ));
    };
    if !rules.actors.is_empty()
        && !rules.actors.iter().any(|a| {
            Some(a.as_str()) == actor.subject.as_deref()
                || Some(a.as_str()) == actor.client_id.as_deref()
        })
    {
        return Err((
            Reason::AgentNotAllowed,
            format!("agent `{}` is not an accepted actor here", actor.name()),
        ));
    }
    let effective: Vec<String> = id
        .scopes
        .iter()
        .filter(|s| rules.scopes.contains(s))
        .cloned()
        .collect();
    let token_meets = (route_scopes_any.is_empty()
        || route_scopes_any.iter().any(|s| id.has_scope(s)))
        && route_scopes_all.iter().all(|s| id.has_scope(s));
    let agent_meets = (route_scopes_any.is_empty()
        || route_scopes_any.iter().any(|s| effective.contains(s)))
        && route_scopes_all.iter().all(|s| effective.contains(s));
    if token_meets && !agent_meets {
        let beyond: Vec<&str> = route_scopes_any
            .iter()
            .chain(route_scopes_all)
            .filter(|s| id.has_scope(s) && !effective.contains(s))
            .map(String::as_str)
            .collect();
        return Err((
            Reason::AgentScopeExceeded,
            format!(
                "agent `{}` may not exercise {beyond:?} here (allowed: {:?})",
                actor.name(),
                rules.scopes
            ),
        ));
    }
    id.scopes = effective;
    Ok(())
}

/// The chain as recorded: actor names, outermost first, joined by ` > `.
pub fn describe(chain: &[Actor]) -> String {
    chain
        .iter()
        .map(Actor::name)
        .collect::<Vec<_>>()
        .join(" > ")
}
