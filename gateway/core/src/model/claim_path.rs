//! Paths into a token's claims, for providers that nest what routes test: Keycloak's
//! `realm_access.roles` and `resource_access.<client>.roles`, Auth0's namespaced claims
//! (`["https://example.com/roles"]`), an array element (`groups[0]`).
//!
//! Syntax: segments separated by `.`; a plain segment is a member name without `.`, `[`,
//! `]` or `"`; `["…"]` names a member with any characters (JSON string escapes `\"` and
//! `\\`); `[N]` is the N-th element of an array. The first segment is a member of the
//! claims object.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One step of a [`ClaimPath`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimSegment {
    /// An object member.
    Member(String),
    /// An array element.
    Index(usize),
}

/// A parsed claim path, with the text it was written as (for messages).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimPath {
    /// As written in the configuration.
    pub text: String,
    /// The steps, at least one; the first a member.
    pub segments: Vec<ClaimSegment>,
}

impl ClaimPath {
    /// The top-level claim `name`, literally (dots and all).
    pub fn member(name: &str) -> Self {
        Self {
            text: name.to_owned(),
            segments: vec![ClaimSegment::Member(name.to_owned())],
        }
    }

    /// Parses the path syntax (module documentation).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        let mut first = true;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let close = after
                    .find(']')
                    .filter(|_| !after.starts_with('"'))
                    .map(|i| (after.get(..i).unwrap_or_default(), i));
                if let Some((digits, i)) = close {
                    let index = digits
                        .parse::<usize>()
                        .ok()
                        .filter(|_| {
                            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                        })
                        .ok_or_else(|| format!("`[{digits}]` is not an array index"))?;
                    if first {
                        return Err("a claim path starts with a member name".into());
                    }
                    segments.push(ClaimSegment::Index(index));
                    rest = after.get(i + 1..).unwrap_or_default();
                } else {
                    let (name, len) = quoted(after)?;
                    segments.push(ClaimSegment::Member(name));
                    rest = after
                        .get(len..)
                        .and_then(|r| r.strip_prefix(']'))
                        .ok_or("a quoted member name must be closed with `\"]`")?;
                }
            } else {
                if !first {
                    rest = rest
                        .strip_prefix('.')
                        .ok_or_else(|| format!("expected `.` or `[` at {rest:?}"))?;
                }
                let end = rest.find(['.', '[', ']', '"']).unwrap_or(rest.len());
                let name = rest.get(..end).unwrap_or_default();
                if name.is_empty() {
                    return Err(format!("an empty member name in {text:?}"));
                }
                segments.push(ClaimSegment::Member(name.to_owned()));
                rest = rest.get(end..).unwrap_or_default();
                if rest.starts_with([']', '"']) {
                    return Err(format!(
                        "unexpected {:?} in {text:?}",
                        rest.get(..1).unwrap_or_default()
                    ));
                }
            }
            first = false;
        }
        if segments.is_empty() {
            return Err("an empty claim path".into());
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The value at this path in `claims`, if every step exists.
    pub fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let mut steps = self.segments.iter();
        let mut at = match steps.next()? {
            ClaimSegment::Member(name) => claims.get(name)?,
            ClaimSegment::Index(_) => return None,
        };
        for step in steps {
            at = match step {
                ClaimSegment::Member(name) => at.as_object()?.get(name)?,
                ClaimSegment::Index(i) => at.as_array()?.get(*i)?,
            };
        }
        Some(at)
    }
}

/// A JSON-style quoted string at the start of `s` (after `[`): the unescaped text and the
/// length consumed, quotes included.
fn quoted(s: &str) -> Result<(String, usize), String> {
    let body = s
        .strip_prefix('"')
        .ok_or("`[` must be followed by an index or a quoted member name")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 2)),
            '\\' => match chars.next() {
                Some((_, c @ ('"' | '\\'))) => out.push(c),
                _ => {
                    return Err(
                        "only `\\\"` and `\\\\` escapes are allowed in a member name".into(),
                    );
                }
            },
            c => out.push(c),
        }
    }
    Err("an unterminated quoted member name".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        json!({
            "realm_access": { "roles": ["admin", "user"] },
            "resource_access": { "shop.app": { "roles": ["buyer"] } },
            "https://example.com/roles": ["editor"],
            "groups": ["a", "b"],
            "plain.dotted": "literal",
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn nested_objects_arrays_and_quoted_names_are_reached() {
        let c = claims();
        let at = |p: &str| ClaimPath::parse(p).unwrap().get(&c).cloned();
        assert_eq!(at("realm_access.roles"), Some(json!(["admin", "user"])));
        assert_eq!(
            at(r#"resource_access["shop.app"].roles"#),
            Some(json!(["buyer"]))
        );
        assert_eq!(
            at(r#"["https://example.com/roles"]"#),
            Some(json!(["editor"]))
        );
        assert_eq!(at("groups[1]"), Some(json!("b")));
        assert_eq!(at("realm_access.roles[0]"), Some(json!("admin")));
        // Missing steps and wrong shapes find nothing.
        assert_eq!(at("realm_access.groups"), None);
        assert_eq!(at("groups[9]"), None);
        assert_eq!(at("groups.x"), None);
        assert_eq!(at("plain.dotted"), None);
        // A literal member keeps its dots.
        assert_eq!(
            ClaimPath::member("plain.dotted").get(&c),
            Some(&json!("literal"))
        );
    }

    #[test]
    fn malformed_paths_say_what_is_wrong() {
        for (bad, why) in [
            ("", "empty"),
            ("a..b", "empty member"),
            ("a.", "empty member"),
            ("[0]", "starts with a member"),
            ("a[x]", "not an array index"),
            ("a[-1]", "not an array index"),
            (r#"a["b"#, "unterminated"),
            (r#"a["b"x"#, "closed"),
            ("a]b", "unexpected"),
            ("a[", "index or a quoted"),
            (r#"a["\n"]"#, "escapes"),
        ] {
            let e = ClaimPath::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert_eq!(
            ClaimPath::parse(r#"a["x\"y"]"#).unwrap().segments,
            vec![
                ClaimSegment::Member("a".into()),
                ClaimSegment::Member("x\"y".into())
            ]
        );
    }
}
