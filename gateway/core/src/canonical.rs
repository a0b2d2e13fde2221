//! The canonical form of a request target: one path (RFC 3986 §6.2.2) and one authority
//! (RFC 9112 §3.2) that route matching, rate limits, risk, DPoP `htu`, the audit record and
//! the forwarded request all use, so no spelling of a URL reaches a backend as another
//! resource than the one the gateway decided on.
//!
//! Pure functions of their input (no configuration types, no crate imports): the fuzz
//! targets and the property tests drive them directly.

use std::net::Ipv6Addr;

/// How paths are read, from `[paths]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathOptions {
    /// Accept `;` in path segments (servlet containers read `;name=value` as a path
    /// parameter and match `/a;x=1` as `/a`); refused by default.
    pub allow_semicolons: bool,
}

/// The RFC 3986 §6.2.2 canonical form of an origin-form path:
///
/// - percent-encoded unreserved characters (`A–Z a–z 0–9 - . _ ~`) are decoded, the hex
///   digits of every other escape are upper-cased (§6.2.2.1, §6.2.2.2);
/// - bytes outside `pchar` and `/` (controls, space, `"`, `<`, `>`, `{`, `|`, non-ASCII, …)
///   are percent-encoded, so a decoding backend reads exactly the same octets;
/// - runs of `/` are merged and a trailing `/` is kept.
///
/// Refused, with a message: a path not starting with `/`; a backslash (raw or encoded);
/// an encoded `/` or NUL, a raw NUL; a malformed escape; a dot segment (`.`/`..`, also when spelled
/// with escapes such as `%2e%2E`); `;` unless `options.allow_semicolons`.
pub fn canonical_path(raw: &str, options: PathOptions) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err("path must start with `/`".into());
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "malformed percent escape in path".to_owned())?;
                match value {
                    b'/' => return Err("encoded `/` in path".into()),
                    b'\\' => return Err("encoded `\\` in path".into()),
                    0 => return Err("encoded NUL in path".into()),
                    v if is_unreserved(v) => decoded.push(char::from(v)),
                    v => push_escape(&mut decoded, v),
                }
                i += 3;
            }
            b'\\' => return Err("path contains a backslash".into()),
            0 => return Err("NUL in path".into()),
            b';' if !options.allow_semicolons => {
                return Err("`;` path parameters are refused (see [paths] semicolons)".into());
            }
            b if b == b'/' || is_pchar(b) => {
                decoded.push(char::from(b));
                i += 1;
            }
            b => {
                push_escape(&mut decoded, b);
                i += 1;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err("dot segment in path".into());
        }
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || decoded.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

/// What a backend that percent-decodes paths (WSGI, Go `net/http`, servlets, nginx
/// `location`) reads for a canonical path: every escape decoded, bytes as Latin-1 for
/// non-UTF-8. For property tests and documentation: routing on the canonical path equals
/// routing on this.
pub fn decoded_path(canonical: &str) -> String {
    let bytes = canonical.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let value = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match value {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(text) => text,
        Err(e) => e.into_bytes().into_iter().map(char::from).collect(),
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(
        HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
    ));
    out.push(char::from(
        HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0'),
    ));
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `pct-encoded`: unreserved, sub-delims, `:` and `@`.
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// A request's authority (RFC 9110 §4.2.4 without userinfo): lowercase host without a
/// trailing dot, and the port if one was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// `example.com`, `192.0.2.1` or `::1` (without brackets).
    pub host: String,
    /// The port, when the request named one.
    pub port: Option<u16>,
}

impl Authority {
    /// Parses a `Host` field value or an absolute-form authority strictly: `host[:port]`
    /// with `host` a DNS name (letters, digits, `-`, `_`, `.`), an IPv4 address or a
    /// bracketed IPv6 address. Refuses userinfo (`a@b`), empty or over-long names, empty
    /// labels, ports outside 1–65535 and anything else a backend could read as another host.
    pub fn parse(text: &str) -> Result<Authority, String> {
        if text.is_empty() {
            return Err("empty host".into());
        }
        if text.len() > 262 {
            return Err("host is too long".into());
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| "unterminated IPv6 literal".to_owned())?;
            let ip: Ipv6Addr = v6
                .parse()
                .map_err(|_| format!("`[{v6}]` is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| "junk after the IPv6 literal".to_owned())?,
                ),
            };
            (ip.to_string(), port)
        } else {
            let (host, port) = match text.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            };
            (reg_name(host)?, port)
        };
        let port = match port {
            None | Some("") => None,
            Some(p) => {
                if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("port `{p}` is not a number"));
                }
                match p.parse::<u16>() {
                    Ok(0) | Err(_) => return Err(format!("port `{p}` is out of range")),
                    Ok(n) => Some(n),
                }
            }
        };
        Ok(Authority { host, port })
    }

    /// `host[:port]` as sent on (`X-Forwarded-Host`), IPv6 in brackets.
    pub fn to_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// `scheme://host[:port]` with the scheme's default port left out (RFC 3986 §6.2.3),
    /// for comparing origins (DPoP `htu`).
    pub fn origin(&self, scheme: &str) -> String {
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        let port = self.port.filter(|p| Some(*p) != default);
        let host = Authority {
            host: self.host.clone(),
            port,
        };
        format!("{scheme}://{}", host.to_header())
    }
}

/// An absolute `http(s)`-style URL split into its scheme, parsed [`Authority`] and path
/// (query and fragment dropped; `/` when empty): for comparing a URL from a header (DPoP
/// `htu`, `Origin`, `Referer`) with the request. `None` when it does not parse.
pub fn split_url(url: &str) -> Option<(&str, Authority, &str)> {
    let url = url.split(['?', '#']).next()?;
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = Authority::parse(authority).ok()?;
    Some((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// A DNS name or IPv4 address: lowercase, one trailing dot removed, no empty labels.
fn reg_name(host: &str) -> Result<String, String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{host}` is not a host name"));
    }
    if let Some(bad) = name
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        return Err(format!(
            "`{}` is not allowed in a host name",
            char::from(bad).escape_default()
        ));
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.len() > 63)
    {
        return Err(format!("`{host}` has an empty or over-long label"));
    }
    Ok(name.to_ascii_lowercase())
}

/// `https://host[:port]` of an https URL whose text is safe in HTML and CSP, else `None`.
pub fn url_origin(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let host_len = rest.find('/').unwrap_or(rest.len());
    let safe = url.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'.' | b'-' | b'_' | b'~' | b'%')
    });
    (safe && host_len > 0)
        .then(|| url.get(..8 + host_len))
        .flatten()
}

#[cfg(test)]
#[path = "canonical_tests.rs"]
mod tests;
