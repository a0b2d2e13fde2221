//! Request normalization (the `normalize` phase, [`crate::phase::normalize`]): one canonical request before anything else looks at it — the
//! RFC 3986 canonical path ([`crate::canonical::canonical_path`]), the one authority
//! (RFC 9112 §3.2: exactly one valid `Host`, replaced by an absolute-form target's), the
//! scheme — and every client-supplied identity header marked for removal (all case
//! variants, `_` spellings and duplicates).

use http::HeaderName;

use crate::canonical::{Authority, PathOptions, canonical_path};
use crate::config::{HeaderPattern, PathRules};
use crate::model::RequestParts;
use crate::reason::Reason;

/// A request reduced to what routing needs; the forwarded request uses exactly this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// The canonical path; no query.
    pub path: String,
    /// The canonical path without `;` path parameters, when it has any (only with
    /// `[paths] semicolons = "allow"`): see [`Normalized::route_path`].
    without_parameters: Option<String>,
    /// The path as forwarded: the canonical path plus the original query, if any.
    pub path_and_query: String,
    /// The request's authority: the absolute-form target's, else the `Host` field's.
    pub authority: Authority,
    /// The scheme the client used as far as this hop knows (`http` for origin-form).
    pub scheme: String,
    /// Header names present on the request that must not reach the backend.
    pub strip: Vec<HeaderName>,
}

/// Normalizes a request against the strip patterns and the path rules. Refusals are
/// `path_invalid` or `host_invalid` (both 400) with a detail.
pub fn normalize(
    req: &RequestParts<'_>,
    strip: &[HeaderPattern],
    rules: &PathRules,
) -> Result<Normalized, (Reason, String)> {
    let authority = authority(req.uri, req.headers).map_err(|m| (Reason::HostInvalid, m))?;
    let options = PathOptions {
        allow_semicolons: rules.allow_semicolons,
    };
    let path = canonical_path(req.uri.path(), options).map_err(|m| (Reason::PathInvalid, m))?;
    let without_parameters = path.contains(';').then(|| without_parameters(&path));
    let path_and_query = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let strip = req
        .headers
        .keys()
        .filter(|name| strip.iter().any(|p| p.matches(name.as_str())))
        .cloned()
        .collect();
    Ok(Normalized {
        path,
        without_parameters,
        path_and_query,
        authority,
        scheme: req.uri.scheme_str().unwrap_or("http").to_ascii_lowercase(),
        strip,
    })
}

impl Normalized {
    /// The path routes are matched on: the canonical path without `;` path parameters
    /// (`/a;x=1/b` → `/a/b`, as servlet containers read it; only with `[paths] semicolons =
    /// "allow"` can a path hold any), else the canonical path itself.
    pub fn route_path(&self) -> &str {
        self.without_parameters.as_deref().unwrap_or(&self.path)
    }
}

/// `path` with every segment's `;` parameters removed (`/a;x=1/b;y` → `/a/b`).
fn without_parameters(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or_default());
    }
    out
}

/// The request's authority per RFC 9112 §3.2: more than one `Host` field, a `Host` that is
/// not a valid `uri-host [":" port]`, or no authority at all is refused; an absolute-form
/// target's authority replaces `Host` (§3.2.2), and userinfo in it is refused (RFC 9110
/// §4.2.4).
/// Adapters whose platform needs an authority before the core runs (wasi:http) call this
/// too, so they refuse with the core's answer.
pub fn authority(uri: &http::Uri, headers: &http::HeaderMap) -> Result<Authority, String> {
    let mut fields = headers.get_all(http::header::HOST).iter();
    let host = match (fields.next(), fields.next()) {
        (Some(_), Some(_)) => return Err("more than one Host field".into()),
        (Some(v), None) => {
            let text = v
                .to_str()
                .map_err(|_| "the Host field is not ASCII".to_owned())?;
            Some(Authority::parse(text).map_err(|e| format!("Host: {e}"))?)
        }
        (None, _) => None,
    };
    match (uri.authority(), host) {
        (Some(target), _) => {
            Authority::parse(target.as_str()).map_err(|e| format!("request target: {e}"))
        }
        (None, Some(host)) => Ok(host),
        (None, None) => Err("the request has no Host field".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parts_authority(uri: &str, hosts: &[&str]) -> Result<Authority, String> {
        let uri: http::Uri = uri.parse().unwrap();
        let mut headers = http::HeaderMap::new();
        for h in hosts {
            headers.append(http::header::HOST, h.parse().unwrap());
        }
        authority(&uri, &headers)
    }

    #[test]
    fn the_absolute_form_authority_replaces_host() {
        let a = parts_authority("http://www.example.com/api/admin", &["admin.example.com"]);
        assert_eq!(a.unwrap().host, "www.example.com");
    }

    #[test]
    fn missing_duplicate_and_invalid_hosts_are_refused() {
        assert!(parts_authority("/x", &[]).is_err());
        assert!(parts_authority("/x", &["a.example", "b.example"]).is_err());
        assert!(parts_authority("/x", &["admin.example.com@www.example.com"]).is_err());
        assert!(parts_authority("http://u@www.example.com/x", &["www.example.com"]).is_err());
        // An invalid Host is refused even when the target names the authority.
        assert!(parts_authority("http://www.example.com/x", &["a b"]).is_err());
        assert!(parts_authority("http://www.example.com/x", &["a", "b"]).is_err());
    }

    #[test]
    fn path_parameters_are_removed_for_routing() {
        assert_eq!(without_parameters("/a;x=1/b;y"), "/a/b");
        assert_eq!(without_parameters("/a/;x"), "/a/");
        assert_eq!(without_parameters("/"), "/");
    }

    #[test]
    fn the_trailing_dot_and_case_are_normalized() {
        let a = parts_authority("/x", &["Admin.Example.com.:8080"]).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("admin.example.com", Some(8080)));
    }
}
