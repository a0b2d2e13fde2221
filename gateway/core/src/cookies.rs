//! The one `Cookie` header parser: every reader of the gateway's own cookies (session
//! chunks, login attempts, challenge clearance) and the code that strips them before
//! forwarding see the same names, so no spelling is read as ours yet passed to a backend.
//!
//! Parsing follows what browsers and common servers accept (RFC 6265 §5.4 with §5.2's
//! trimming): pairs split on `;`, the name and the value each trimmed of surrounding
//! whitespace (`name =value` is `name`), a pair without `=` has no name. Bytes, not text, so
//! a non-UTF-8 header cannot hide a cookie.

use http::{HeaderMap, HeaderValue};

/// One `name=value` pair as it appears in a `Cookie` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair<'a> {
    /// The trimmed name.
    pub name: &'a [u8],
    /// The trimmed value.
    pub value: &'a [u8],
    /// The whole pair as sent (trimmed), for re-assembling the header.
    pub raw: &'a [u8],
}

/// Every pair of every `Cookie` header, in order. Pairs without `=` are returned with an
/// empty name and the text as value (never a cookie of ours).
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = Pair<'_>> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|raw| !raw.is_empty())
        .map(|raw| match raw.iter().position(|b| *b == b'=') {
            Some(eq) => Pair {
                name: raw.get(..eq).unwrap_or_default().trim_ascii(),
                value: raw.get(eq + 1..).unwrap_or_default().trim_ascii(),
                raw,
            },
            None => Pair {
                name: b"",
                value: raw,
                raw,
            },
        })
}

/// The value of the first cookie named `name`, if it is text.
pub fn value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    pairs(headers)
        .find(|p| p.name == name.as_bytes())
        .and_then(|p| std::str::from_utf8(p.value).ok())
}

/// The `Cookie` header without the pairs whose name `drop` selects: `None` when nothing
/// changes, `Some(None)` when nothing is left, else the remaining pairs joined by `"; "`
/// (several `Cookie` fields become one, RFC 9113 §8.2.3 style).
pub fn without(headers: &HeaderMap, drop: impl Fn(&[u8]) -> bool) -> Option<Option<HeaderValue>> {
    let mut changed = false;
    let mut kept: Vec<u8> = Vec::new();
    for pair in pairs(headers) {
        if !pair.name.is_empty() && drop(pair.name) {
            changed = true;
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair.raw);
    }
    if !changed {
        return None;
    }
    if kept.is_empty() {
        return Some(None);
    }
    // The kept bytes came from valid header values joined by "; ", so this holds; if it
    // ever failed, dropping the whole header is the safe side.
    Some(HeaderValue::from_bytes(&kept).ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn map(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn names_and_values_are_trimmed_the_same_for_reading_and_stripping() {
        let h = map(&[b"a=1; __Host-s-0 =sealed ;b = 2", b"flag; \xffx=y"]);
        let names: Vec<&[u8]> = pairs(&h).map(|p| p.name).collect();
        assert_eq!(names, [&b"a"[..], b"__Host-s-0", b"b", b"", b"\xffx"]);
        assert_eq!(value(&h, "__Host-s-0"), Some("sealed"));
        assert_eq!(value(&h, "b"), Some("2"));
        let kept = without(&h, |n| n == b"__Host-s-0").unwrap().unwrap();
        assert_eq!(kept.as_bytes(), b"a=1; b = 2; flag; \xffx=y");
        assert_eq!(without(&h, |n| n == b"zzz"), None);
        assert_eq!(
            without(&map(&[b" __Host-s-0 = x "]), |n| n == b"__Host-s-0"),
            Some(None)
        );
    }
}
