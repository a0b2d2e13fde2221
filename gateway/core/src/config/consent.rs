//! Consent-aware routes: `[issuer.consent]` (where an issuer's tokens carry the purposes a
//! user granted, and the scope that asks the provider for each) and a route's `consent`
//! list (checked by [`crate::policy::authorize`]).

use super::model::{AuthMode, ConsentConfig, IssuerConfig, Route};
use super::reader::{Diags, Span, Table};
use crate::model::ClaimPath;

/// `[issuer.consent]`: `claim` (a claim path) and `scopes` (purpose → scope).
pub(super) fn read_issuer_consent(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
) -> Option<ConsentConfig> {
    let mut ct = t.table(d, "consent")?;
    let claim = ct
        .req_string(
            d,
            "claim",
            Some("the claim path where tokens list the purposes granted, e.g. \"consents\""),
        )
        .and_then(|(p, span)| {
            ClaimPath::parse(&p)
                .map_err(|e| d.error(&span, format!("consent claim {p:?}: {e}"), None))
                .ok()
        });
    let mut scopes = Vec::new();
    if let Some(table) = ct.table(d, "scopes") {
        for ((purpose, span), value) in table.entries() {
            match value.get_ref().as_str() {
                Some(scope) if valid_word(scope) && valid_word(purpose) => {
                    scopes.push((purpose.to_owned(), scope.to_owned()));
                }
                _ => d.error(
                    &span,
                    format!(
                        "consent scope of {purpose:?} must be one scope (a string without spaces)"
                    ),
                    None,
                ),
            }
        }
    }
    ct.finish(d);
    Some(ConsentConfig {
        claim: claim?,
        scopes,
    })
}

/// A route's `consent = ["purpose", …]`.
pub(super) fn read_route_consent(t: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Vec<String> {
    let Some((list, _)) = t.strings(d, "consent") else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|(p, span)| {
            if valid_word(&p) {
                Some(p)
            } else {
                d.error(
                    &span,
                    format!("consent purpose {p:?} must be a word without spaces or quotes"),
                    None,
                );
                None
            }
        })
        .collect()
}

/// A route with `consent` is not public, and every issuer it accepts says where its
/// tokens carry consent (`[issuer.consent]`): a purpose that cannot be checked is never
/// taken as granted, so the configuration refuses it up front.
pub(super) fn check_consent_routes(
    d: &mut Diags<'_>,
    issuers: &[IssuerConfig],
    routes: &[(Route, Span)],
) {
    for (route, span) in routes {
        if route.consent.is_empty() {
            continue;
        }
        if route.auth == AuthMode::Public {
            d.error(
                span,
                format!("public route {:?} has `consent`", route.path),
                Some("consent is checked on a verified identity: use auth = \"required\"".into()),
            );
            continue;
        }
        let silent: Vec<&str> = issuers
            .iter()
            .enumerate()
            .filter(|(i, c)| c.consent.is_none() && route.accepts(crate::model::IssuerId(*i)))
            .map(|(_, c)| c.name.as_str())
            .collect();
        if !silent.is_empty() {
            d.error(
                span,
                format!(
                    "route {:?} needs consent, but issuer(s) {} record none",
                    route.path,
                    silent.join(", ")
                ),
                Some(
                    "add [issuer.consent] claim = \"…\" to them, or name the route's `issuers`"
                        .into(),
                ),
            );
        }
    }
}

fn valid_word(s: &str) -> bool {
    !s.is_empty() && !s.contains([' ', '"', '\\']) && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn purposes_are_granted_by_an_array_or_a_space_separated_string_only() {
        let consent = ConsentConfig {
            claim: ClaimPath::parse("consents.granted").unwrap(),
            scopes: vec![("order-history".into(), "consent:orders".into())],
        };
        let claims = |v: serde_json::Value| {
            json!({"consents": {"granted": v}})
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(consent.granted(&claims(json!(["a", "b", 3]))), ["a", "b"]);
        assert_eq!(consent.granted(&claims(json!("a  b"))), ["a", "b"]);
        assert!(consent.granted(&claims(json!({"a": true}))).is_empty());
        assert!(
            consent
                .granted(&json!({}).as_object().unwrap().clone())
                .is_empty()
        );
        assert_eq!(consent.scope_for("order-history"), "consent:orders");
        assert_eq!(consent.scope_for("marketing"), "marketing");
    }
}
