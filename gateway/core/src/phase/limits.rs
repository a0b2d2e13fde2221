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
                key: format!("rl:{}:{}:{counted}", m.index, limit.name),
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
