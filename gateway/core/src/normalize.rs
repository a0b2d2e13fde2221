//! Phase 1, normalize: refuse ambiguous paths, find the route key (host, path), and mark
//! every client-supplied identity header for removal — all case variants, `_` spellings
//! and duplicates — before anything else looks at the request.

use http::HeaderName;

use crate::config::HeaderPattern;
use crate::engine::RequestParts;
use crate::reason::Reason;

/// A request reduced to what routing needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// The path with `//` runs merged; no query.
    pub path: String,
    /// The path as forwarded: the merged path plus the original query, if any.
    pub path_and_query: String,
    /// Lowercase host without port, if the request names one.
    pub host: Option<String>,
    /// Header names present on the request that must not reach the backend.
    pub strip: Vec<HeaderName>,
}

/// Normalizes a request against the strip patterns.
pub fn normalize(
    req: &RequestParts<'_>,
    strip: &[HeaderPattern],
) -> Result<Normalized, (Reason, String)> {
    let raw = req.uri.path();
    let path = check_path(raw).map_err(|m| (Reason::PathInvalid, m))?;
    let path_and_query = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let host = req
        .uri
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| strip_port(h).to_owned())
        })
        .map(|h| h.to_ascii_lowercase());
    let strip = req
        .headers
        .keys()
        .filter(|name| strip.iter().any(|p| p.matches(name.as_str())))
        .cloned()
        .collect();
    Ok(Normalized {
        path,
        path_and_query,
        host,
        strip,
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h.get(1..).unwrap_or(h));
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Accepts an origin-form path, merges `//` runs, and refuses what backends might read
/// differently from us: dot segments, backslashes, encoded `/`, `\`, `.` or NUL, and
/// malformed percent escapes.
fn check_path(raw: &str) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err("path must start with `/`".into());
    }
    if raw.contains('\\') {
        return Err("path contains a backslash".into());
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                return Err("malformed percent escape in path".into());
            };
            if matches!(value, b'/' | b'\\' | b'.' | 0) {
                return Err(format!("encoded {:?} in path", char::from(value)));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = String::with_capacity(raw.len());
    for segment in raw.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err("dot segment in path".into());
        }
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || raw.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_slashes_and_keeps_trailing_slash() {
        assert_eq!(check_path("//api///orders/"), Ok("/api/orders/".into()));
        assert_eq!(check_path("/"), Ok("/".into()));
        assert_eq!(check_path("/a%20b"), Ok("/a%20b".into()));
    }

    #[test]
    fn refuses_paths_a_backend_could_read_differently() {
        for p in [
            "/api/../admin",
            "/./x",
            "/api/%2e%2e/admin",
            "/api%2Fadmin",
            "/a\\b",
            "/a%5cb",
            "/a%00",
            "/a%zz",
            "/a%2",
            "api",
        ] {
            assert!(check_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn strips_port_from_host_header() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
