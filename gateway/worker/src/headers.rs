//! Header values as the Fetch API hands them over: a `Headers` object joins repeated fields
//! into one value with `", "`. The core must still see a request with two credentials as
//! two fields (and refuse it with `invalid_request`), so the credential fields are split
//! back where the join is unambiguous.

/// Header fields carrying one credential that the core refuses when repeated.
const CREDENTIAL_FIELDS: [&str; 3] = ["authorization", "dpop", "proxy-authorization"];

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// True when `part` starts as credentials do: an auth scheme, a space, and more (not an
/// `auth-param` of a list, which has `=` after its name).
fn starts_credentials(part: &str) -> bool {
    let part = part.trim_start();
    let scheme_len = part.chars().take_while(|&c| is_tchar(c)).count();
    scheme_len > 0
        && part
            .get(scheme_len..)
            .is_some_and(|rest| rest.starts_with(' ') && !rest.trim().is_empty())
}

/// The field values of `name` whose joined form is `value`: split at each `,` that starts
/// new credentials (for `authorization`) or at every `,` (for `dpop`, a compact JWS has
/// none); other fields are returned whole.
pub fn split_joined<'a>(name: &str, value: &'a str) -> Vec<&'a str> {
    if !CREDENTIAL_FIELDS.contains(&name) || !value.contains(',') {
        return vec![value];
    }
    if name == "dpop" {
        return value.split(',').map(str::trim).collect();
    }
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in value.match_indices(',') {
        let rest = value.get(i + 1..).unwrap_or_default();
        if starts_credentials(rest) {
            parts.push(value.get(start..i).unwrap_or_default().trim());
            start = i + 1;
        }
    }
    parts.push(value.get(start..).unwrap_or_default().trim());
    parts
}

#[cfg(test)]
mod tests {
    use super::split_joined;

    #[test]
    fn repeated_credentials_are_split_back() {
        assert_eq!(
            split_joined("authorization", "Bearer a.b.c, Bearer d.e.f"),
            ["Bearer a.b.c", "Bearer d.e.f"]
        );
        assert_eq!(
            split_joined("authorization", "Bearer a, DPoP b"),
            ["Bearer a", "DPoP b"]
        );
        assert_eq!(split_joined("dpop", "x.y.z, p.q.r"), ["x.y.z", "p.q.r"]);
    }

    #[test]
    fn auth_param_lists_and_other_fields_stay_whole() {
        let digest = r#"Digest username="a", realm="b", nonce="c""#;
        assert_eq!(split_joined("authorization", digest), [digest]);
        assert_eq!(split_joined("accept", "a, b"), ["a, b"]);
        assert_eq!(split_joined("authorization", "Bearer abc"), ["Bearer abc"]);
    }
}
