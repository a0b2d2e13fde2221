//! Phase `limits`: the route's rate limits ([`crate::limits`], GCRA in the adapter's shared
//! state), in two steps: before authentication the limits that need no identity (per
//! address, per route — refused credentials count too), after it those per subject and
//! client. Each step is one atomic check. Refusals: `rate_limited` (429 with `Retry-After`
//! and `RateLimit` headers), `state_unavailable` (503, with `[state] on_unavailable =
//! "deny"`).

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::{Ctx, Matched, Scope, Step};
use crate::audit::pseudonymize;
use crate::config::{FailPolicy, LimitKey, RateLimit, Route};
use crate::limits::{LimitCheck, LimitStatus};
use crate::reason::Reason;

/// The limits that need no identity.
pub fn before_authentication(scope: &Scope<'_>, m: Matched<'_>, cx: &mut Ctx) -> Step {
    check(scope, m, true, cx)
}

/// The limits per subject and client.
pub fn after_authentication(scope: &Scope<'_>, m: Matched<'_>, cx: &mut Ctx) -> Step {
    check(scope, m, false, cx)
}

fn check(scope: &Scope<'_>, m: Matched<'_>, before: bool, cx: &mut Ctx) -> Step {
    let input = &scope.input;
    let cfg = input.config();
    let route = m.route;
    let identity = cx.identity.as_ref();
    let mut which = Vec::new();
    let mut checks = Vec::new();
    let mut kinds = route
        .rate_limits
        .iter()
        .filter(|l| l.key.before_authentication() == before)
        .map(|l| l.key);
    let uniform = kinds.next().is_none_or(|first| kinds.all(|k| k == first));
    for (i, limit) in route.rate_limits.iter().enumerate() {
        if limit.key.before_authentication() != before {
            continue;
        }
        let counted = match limit.key {
            LimitKey::Ip => Some(match scope.client.ip {
                Some(ip) => format!("ip:{}", limit_address(ip)),
                None => "ip:unknown".to_owned(),
            }),
            LimitKey::Route => Some("all".to_owned()),
            LimitKey::Subject => identity.and_then(|id| {
                let issuer = cfg.issuers.get(id.issuer.0)?;
                let sub = id.subject.as_deref()?;
                Some(format!(
                    "sub:{}",
                    pseudonymize(&cfg.audit.subject_key, &issuer.issuer, sub)
                ))
            }),
            LimitKey::ClientId => identity.and_then(|id| {
                let client_id = id
                    .claims
                    .get("client_id")
                    .or_else(|| id.claims.get("azp"))
                    .and_then(Value::as_str)?;
                Some(format!("cid:{client_id}"))
            }),
        };
        if let Some(counted) = counted {
            which.push(i);
            checks.push(LimitCheck {
                key: counter_key(m.index, &limit.name, &counted, uniform),
                interval_us: limit.interval_us(),
                burst: limit.burst,
            });
        }
    }
    if checks.is_empty() {
        return Ok(());
    }
    let count = checks.len();
    let statuses = match input.io.rate_limit(checks, input.now) {
        Ok(s) if s.len() == count => s,
        Ok(_) | Err(_) if cfg.state.on_unavailable == FailPolicy::Allow => return Ok(()),
        Ok(_) => {
            return Err(input.refuse(
                Reason::StateUnavailable,
                "the rate-limit state answered malformed",
            ));
        }
        Err(e) => {
            return Err(input.refuse(
                Reason::StateUnavailable,
                &format!("rate limits cannot be checked: {e}"),
            ));
        }
    };
    cx.limited
        .extend(which.iter().copied().zip(statuses.iter().copied()));
    let refused = which
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| !s.allowed)
        .max_by_key(|(_, s)| s.retry_after_us);
    let Some((&i, status)) = refused else {
        return Ok(());
    };
    let Some(limit) = route.rate_limits.get(i) else {
        return Ok(());
    };
    let mut r = input.refuse(
        Reason::RateLimited,
        &format!(
            "rate limit `{}` ({} per {:?}, burst {}) exceeded",
            limit.name, limit.rate, limit.period, limit.burst
        ),
    );
    r.headers.push(crate::limits::retry_after(status));
    r.headers.extend(headers(route, &[(i, *status)]));
    Err(r)
}

/// The state key of one limit's counter. The part in braces is a Redis Cluster hash tag:
/// every counter of one step is checked by one all-or-nothing script, which must touch a
/// single slot, so they all share it. When the step's limits all count the same thing
/// (`uniform`: one limit, or several windows per address) the tag holds the counted value
/// and a route's counters spread over the cluster's nodes by client; otherwise it is the
/// route alone, and that route's counters of the step share one node.
fn counter_key(route_index: usize, name: &str, counted: &str, uniform: bool) -> String {
    if uniform {
        format!("rl:{{{route_index}:{counted}}}:{name}")
    } else {
        format!("rl:{{{route_index}}}:{name}:{counted}")
    }
}

/// What an address limit counts: the IPv4 address, or the IPv6 /64.
fn limit_address(ip: IpAddr) -> String {
    match crate::client::canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", std::net::Ipv6Addr::from(net))
        }
    }
}

/// `RateLimit-Policy` for the checked limits and `RateLimit` for the most constrained.
pub fn headers(route: &Route, checked: &[(usize, LimitStatus)]) -> Vec<(HeaderName, HeaderValue)> {
    let limits: Vec<&RateLimit> = checked
        .iter()
        .filter_map(|(i, _)| route.rate_limits.get(*i))
        .collect();
    let mut out = Vec::new();
    out.extend(crate::limits::policy_header(&limits));
    let tightest = checked
        .iter()
        .min_by_key(|(_, s)| (s.allowed, s.remaining, u64::MAX - s.reset_us));
    if let Some((i, s)) = tightest
        && let Some(l) = route.rate_limits.get(*i)
    {
        out.extend(crate::limits::status_header(&l.name, s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::counter_key;

    /// The slot-deciding part of a key, as Redis Cluster reads it: the text between the
    /// first `{` and the next `}` when not empty, else the whole key.
    fn hash_tag(key: &str) -> &str {
        key.split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(tag, _)| tag)
            .filter(|tag| !tag.is_empty())
            .unwrap_or(key)
    }

    #[test]
    fn the_counters_checked_together_share_one_hash_tag() {
        // Limits counting the same thing: tagged by route and value, so clients spread.
        let a = counter_key(3, "burst", "ip:192.0.2.1", true);
        let b = counter_key(3, "hourly", "ip:192.0.2.1", true);
        let other_client = counter_key(3, "burst", "ip:192.0.2.2", true);
        assert_eq!(hash_tag(&a), hash_tag(&b));
        assert_ne!(hash_tag(&a), hash_tag(&other_client));
        assert_ne!(a, b);
        // Mixed kinds: the route alone, whatever the values.
        let ip = counter_key(3, "per-ip", "ip:192.0.2.1", false);
        let all = counter_key(3, "global", "all", false);
        assert_eq!(hash_tag(&ip), hash_tag(&all));
        assert_ne!(
            hash_tag(&ip),
            hash_tag(&counter_key(4, "per-ip", "ip:192.0.2.1", false))
        );
    }
}
