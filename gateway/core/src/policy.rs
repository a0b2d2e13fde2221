//! Route matching (for the `route` phase) and the route's rules on scopes, claims and
//! authentication strength (`acr`, `amr`, `auth_time` — RFC 9470 step-up; for the
//! `authorize` phase).

use serde_json::Value;

use crate::claims::VerifiedIdentity;
use crate::config::{ClaimTest, ConsentConfig, Route};
use crate::reason::Reason;
use crate::time::Timestamp;

/// Finds the route for `host` and `path`: host-specific routes first, then host-less ones;
/// within each, the longest path prefix matching whole segments.
pub fn match_route(
    routes: &[Route],
    host: &str,
    path: &str,
    case_sensitive: bool,
) -> Option<usize> {
    let best = |host_specific: bool| {
        routes
            .iter()
            .enumerate()
            .filter(|(_, r)| match &r.host {
                Some(rh) => host_specific && rh == host,
                None => !host_specific,
            })
            .filter(|(_, r)| prefix_matches(&r.path, path, case_sensitive))
            .max_by_key(|(_, r)| r.path.len())
            .map(|(i, _)| i)
    };
    best(true).or_else(|| best(false))
}

/// True when `prefix` matches `path` in whole segments (in any ASCII case when matching
/// is case-insensitive).
fn prefix_matches(prefix: &str, path: &str, case_sensitive: bool) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let same = if case_sensitive {
        head == prefix
    } else {
        head.eq_ignore_ascii_case(prefix)
    };
    let rest = path.get(prefix.len()..).unwrap_or_default();
    same && (rest.is_empty() || rest.starts_with('/'))
}

/// A refusal by a route rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The reason code.
    pub reason: Reason,
    /// What failed.
    pub detail: String,
    /// Extra `WWW-Authenticate` parameters (`scope`, `acr_values`, `max_age`).
    pub challenge: Vec<(&'static str, String)>,
}

/// Applies `route`'s rules to a verified identity (whose issuer records consent as
/// `consent` says). Scope and claim rules come first (neither consent nor stepping up can
/// fix them), then consent, then authentication strength.
pub fn authorize(
    route: &Route,
    id: &VerifiedIdentity,
    consent: Option<&ConsentConfig>,
    now: Timestamp,
) -> Result<(), Refusal> {
    let scope_refusal = |detail: String, wanted: &[String]| Refusal {
        reason: Reason::InsufficientScope,
        detail,
        challenge: vec![("scope", wanted.join(" "))],
    };
    if !route.scopes_any.is_empty() && !route.scopes_any.iter().any(|s| id.has_scope(s)) {
        return Err(scope_refusal(
            format!("needs one of the scopes {:?}", route.scopes_any),
            &route.scopes_any,
        ));
    }
    if let Some(missing) = route.scopes_all.iter().find(|s| !id.has_scope(s)) {
        return Err(scope_refusal(
            format!("needs the scope {missing:?}"),
            &route.scopes_all,
        ));
    }
    for rule in &route.claims {
        let value = rule.path.get(&id.claims);
        let ok = match (&rule.test, value) {
            (ClaimTest::Equals(want), Some(have)) => want == have,
            (ClaimTest::Contains(want), Some(Value::Array(items))) => {
                items.iter().any(|v| v.as_str() == Some(want.as_str()))
            }
            (ClaimTest::Contains(want), Some(Value::String(s))) => s.split(' ').any(|p| p == want),
            _ => false,
        };
        if !ok {
            let detail = match &rule.test {
                ClaimTest::Equals(want) => format!("claim `{}` must equal {want}", rule.path.text),
                ClaimTest::Contains(want) => {
                    format!("claim `{}` must contain {want:?}", rule.path.text)
                }
            };
            return Err(Refusal {
                reason: Reason::ClaimMismatch,
                detail,
                challenge: Vec::new(),
            });
        }
    }
    if !route.consent.is_empty() {
        let granted = consent.map(|c| c.granted(&id.claims)).unwrap_or_default();
        let missing: Vec<&str> = route
            .consent
            .iter()
            .map(String::as_str)
            .filter(|p| !granted.contains(p))
            .collect();
        if !missing.is_empty() {
            let scopes: Vec<&str> = missing
                .iter()
                .map(|p| consent.map_or(*p, |c| c.scope_for(p)))
                .collect();
            return Err(Refusal {
                reason: Reason::ConsentRequired,
                detail: format!("the user has not consented to {missing:?}"),
                challenge: vec![("scope", scopes.join(" "))],
            });
        }
    }
    let step_up = |detail: String| {
        let mut challenge = Vec::new();
        if !route.acr_values.is_empty() {
            challenge.push(("acr_values", route.acr_values.join(" ")));
        }
        if let Some(max) = route.max_auth_age {
            challenge.push(("max_age", max.as_secs().to_string()));
        }
        Refusal {
            reason: Reason::InsufficientUserAuthentication,
            detail,
            challenge,
        }
    };
    if !route.acr_values.is_empty()
        && !id
            .acr
            .as_ref()
            .is_some_and(|a| route.acr_values.contains(a))
    {
        return Err(step_up(format!(
            "acr {:?} is not one of {:?}",
            id.acr.as_deref().unwrap_or(""),
            route.acr_values
        )));
    }
    if let Some(missing) = route.amr.iter().find(|m| !id.amr.contains(m)) {
        return Err(step_up(format!("amr lacks {missing:?}")));
    }
    if let Some(max) = route.max_auth_age {
        let now_s = now.unix_millis() as f64 / 1000.0;
        match id.auth_time {
            None => return Err(step_up("the token has no auth_time".into())),
            Some(t) if now_s - t > max.as_secs_f64() => {
                return Err(step_up(format!(
                    "authenticated {:.0}s ago, the route allows {}s",
                    now_s - t,
                    max.as_secs()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/api/orders", "/api/orders", true));
        assert!(prefix_matches("/api/orders", "/api/orders/7", true));
        assert!(prefix_matches("/api/orders/", "/api/orders/7", true));
        assert!(!prefix_matches("/api/orders", "/api/ordersX", true));
        assert!(!prefix_matches("/api/orders", "/api", true));
        assert!(prefix_matches("/", "/anything", true));
        // Case variants match only when matching is case-insensitive.
        assert!(!prefix_matches("/api/profile", "/API/profile", true));
        assert!(prefix_matches("/api/profile", "/API/Profile/x", false));
        assert!(!prefix_matches("/api/profile", "/API/Profiles", false));
        // A multi-byte character across the prefix boundary does not panic.
        assert!(!prefix_matches("/ab", "/a\u{e9}", false));
    }
}
