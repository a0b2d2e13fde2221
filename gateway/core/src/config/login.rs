//! Browser sessions: `[session]` (cookie keys and lifetimes) and each provider's login
//! client (`[issuer.login]`), read for the OIDC login flow in [`crate::login`].

use std::time::Duration;

use super::ConfigFiles;
use super::model::{
    AnomalyWeights, AuthMode, BotCheck, Introspection, IssuerConfig, KeySource, LoginClient, Route,
    SessionConfig,
};
use super::reader::{Diags, Span, Table};
use crate::client_auth::{ClientAuth, ClientKey, ClientSecret};

/// Default scopes of a login client.
const DEFAULT_SCOPES: [&str; 3] = ["openid", "profile", "email"];

pub(super) fn read_login_client(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
    issuer_name: &str,
    allow_http: bool,
) -> Option<LoginClient> {
    let mut lt = t.table(d, "login")?;
    let (client_id, client_auth) = read_client(&mut lt, d, files);
    let authorize_params = read_authorize_params(&mut lt, d);
    let par = lt.boolean(d, "par").is_none_or(|(b, _)| b);
    let form_post = match lt.string(d, "response_mode") {
        None => false,
        Some((m, _)) if m == "query" => false,
        Some((m, _)) if m == "form_post" => true,
        Some((m, span)) => {
            d.error(
                &span,
                format!("unknown response_mode {m:?}"),
                Some("query (default) or form_post".into()),
            );
            false
        }
    };
    let redirect_uri = lt.req_string(
        d,
        "redirect_uri",
        Some("the gateway's callback as registered, e.g. \"https://app.example/_portcullis/callback\""),
    );
    if let Some((uri, span)) = &redirect_uri
        && !absolute_url_with_path(uri, allow_http, crate::model::reserved::CALLBACK_PATH)
    {
        d.error(
            span,
            format!(
                "redirect_uri {uri:?} must be an https URL ending in {}",
                crate::model::reserved::CALLBACK_PATH
            ),
            Some("http is allowed only with insecure_http_jwks = true (local testing)".into()),
        );
    }
    let post_logout_redirect_uri =
        lt.string(d, "post_logout_redirect_uri")
            .and_then(|(u, span)| {
                if absolute_url_with_path(&u, allow_http, "") {
                    Some(u)
                } else {
                    d.error(
                        &span,
                        format!("post_logout_redirect_uri {u:?} must be an absolute https URL"),
                        None,
                    );
                    None
                }
            });
    let scopes = match lt.strings(d, "scopes") {
        Some((list, span)) => {
            let list: Vec<String> = list.into_iter().map(|(s, _)| s).collect();
            if !list.iter().any(|s| s == "openid") {
                d.error(
                    &span,
                    format!("`issuer.login.scopes` of `{issuer_name}` lacks \"openid\""),
                    Some("OpenID Connect needs the openid scope to return an ID token".into()),
                );
            }
            if list
                .iter()
                .any(|s| s.is_empty() || s.contains([' ', '"', '\\']))
            {
                d.error(&span, "a scope is empty or has a space or quote", None);
            }
            list
        }
        None => DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let label = lt
        .string(d, "label")
        .map_or_else(|| issuer_name.to_owned(), |(l, _)| l);
    lt.finish(d);
    Some(LoginClient {
        client_id: client_id?,
        client_auth: client_auth?,
        authorize_params,
        form_post,
        par,
        redirect_uri: redirect_uri?.0,
        post_logout_redirect_uri,
        scopes,
        label,
    })
}

/// A provider client's id and authentication (`[issuer.login]`, `[issuer.introspection]`):
/// `client_id`, `client_auth` and the secret or key file it needs.
pub(super) fn read_client(
    lt: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> (Option<String>, Option<ClientAuth>) {
    let client_id = lt.req_string(
        d,
        "client_id",
        Some("the client id registered at the provider"),
    );
    let method = lt.string(d, "client_auth");
    let key_file = lt.string(d, "client_key_file");
    let secret_file = lt.string(d, "client_secret_file");
    let signs = matches!(&method, Some((m, _)) if m == "private_key_jwt");
    if let (false, Some((_, span))) = (signs, &key_file) {
        d.error(
            span,
            "client_key_file is used only with client_auth = \"private_key_jwt\"",
            None,
        );
    }
    let secret = |lt: &Table<'_, '_>, d: &mut Diags<'_>| match &secret_file {
        Some((path, span)) => read_text_secret(d, files, path, span).map(ClientSecret),
        None => {
            lt.missing(
                d,
                "client_secret_file",
                Some("a file holding the client secret (kept out of the configuration)".into()),
            );
            None
        }
    };
    let client_auth = match method.as_ref().map(|(m, span)| (m.as_str(), span)) {
        None | Some(("client_secret_basic", _)) => secret(lt, d).map(ClientAuth::SecretBasic),
        Some(("client_secret_post", _)) => secret(lt, d).map(ClientAuth::SecretPost),
        Some(("private_key_jwt", span)) => {
            if let Some((_, span)) = &secret_file {
                d.error(
                    span,
                    "client_secret_file is not used with client_auth = \"private_key_jwt\"",
                    Some("remove it: the client authenticates with its key".into()),
                );
            }
            match &key_file {
                Some((path, key_span)) => read_bytes(d, files, path, key_span).and_then(|bytes| {
                    ClientKey::from_private_jwk(&bytes)
                        .map_err(|e| {
                            d.error(
                                key_span,
                                format!("client key {path:?}: {e}"),
                                Some(
                                    "a private JWK (with `d`): RSA, EC P-256 or OKP Ed25519".into(),
                                ),
                            )
                        })
                        .ok()
                        .map(ClientAuth::PrivateKeyJwt)
                }),
                None => {
                    d.error(
                        span,
                        "client_auth = \"private_key_jwt\" needs client_key_file",
                        Some("a file holding the client's private JWK".into()),
                    );
                    None
                }
            }
        }
        Some((other, span)) => {
            d.error(
                span,
                format!("unknown client_auth {other:?}"),
                Some("client_secret_basic (default), client_secret_post or private_key_jwt".into()),
            );
            None
        }
    };
    (client_id.map(|(id, _)| id), client_auth)
}

/// `[issuer.introspection]`: the client that asks the issuer about opaque tokens, and how
/// long answers are reused.
pub(super) fn read_introspection(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> Option<Introspection> {
    let mut it = t.table(d, "introspection")?;
    let (client_id, client_auth) = read_client(&mut it, d, files);
    let mut ttl = |it: &mut Table<'_, '_>, key: &'static str, default: u64, max: u64| match it
        .duration(d, key)
    {
        Some((v, span)) if v > Duration::from_secs(max) => {
            d.error(
                &span,
                format!("`introspection.{key}` {v:?} is more than {max}s"),
                Some("a revoked token stays usable for as long as its answer is reused".into()),
            );
            v
        }
        Some((v, _)) => v,
        None => Duration::from_secs(default),
    };
    let cache_ttl = ttl(&mut it, "cache_ttl", 60, 3_600);
    let negative_ttl = ttl(&mut it, "negative_ttl", 10, 300);
    it.finish(d);
    Some(Introspection {
        client_id: client_id?,
        client_auth: client_auth?,
        cache_ttl,
        negative_ttl,
    })
}

/// An issuer with `[issuer.introspection]` needs discovery (its `introspection_endpoint`),
/// and a route may accept opaque tokens from one introspecting issuer at most: an opaque
/// token names no issuer, and it must never be shown to another one.
pub(super) fn check_introspection(
    d: &mut Diags<'_>,
    issuers: &[IssuerConfig],
    routes: &[(Route, Span)],
) {
    for issuer in issuers {
        if issuer.introspection.is_some() && !matches!(issuer.keys, KeySource::Discovery(_)) {
            d.error(
                &(0..0),
                format!(
                    "issuer `{}` has [issuer.introspection] but no discovery",
                    issuer.name
                ),
                Some("set discovery = true: the introspection endpoint comes from the provider's discovery document".into()),
            );
        }
    }
    for (route, span) in routes {
        if route.auth == AuthMode::Public {
            continue;
        }
        let introspecting: Vec<&str> = issuers
            .iter()
            .enumerate()
            .filter(|(i, c)| c.introspection.is_some() && route.accepts(crate::model::IssuerId(*i)))
            .map(|(_, c)| c.name.as_str())
            .collect();
        if introspecting.len() > 1 {
            d.error(
                span,
                format!(
                    "route {:?} would accept opaque tokens from {} introspecting issuers ({})",
                    route.path,
                    introspecting.len(),
                    introspecting.join(", ")
                ),
                Some("an opaque token names no issuer: list at most one introspecting issuer in the route's `issuers`".into()),
            );
        }
    }
}

/// Routes with `login` need `[session]`, a non-public `auth`, and providers with
/// `[issuer.login]` and discovery (the authorize, token and logout endpoints come from it).
pub(super) fn check_login_routes(
    d: &mut Diags<'_>,
    issuers: &[IssuerConfig],
    routes: &[(Route, Span)],
    session: Option<&SessionConfig>,
) {
    for issuer in issuers {
        if issuer.login.is_some() && !matches!(issuer.keys, KeySource::Discovery(_)) {
            d.error(
                &(0..0),
                format!("issuer `{}` has [issuer.login] but no discovery", issuer.name),
                Some("set discovery = true: the authorize, token and end-session endpoints come from the provider's discovery document".into()),
            );
        }
    }
    for (route, span) in routes {
        let risk = route.risk.as_ref();
        let anomaly = risk.is_some_and(|r| r.checks.contains(&BotCheck::SessionAnomaly));
        let revoke = risk.is_some_and(|r| r.revoke.is_some());
        if (anomaly || revoke) && session.is_none() {
            d.error(
                span,
                format!(
                    "route {:?} has {} but there is no [session]",
                    route.path,
                    if anomaly {
                        "check `session_anomaly`"
                    } else {
                        "a `revoke` threshold"
                    }
                ),
                Some(
                    "add [session] (browser sessions, and [session.anomaly] weights), or remove it"
                        .into(),
                ),
            );
        }
        if route.login.is_empty() {
            continue;
        }
        if route.auth == AuthMode::Public {
            d.error(
                span,
                format!("public route {:?} has `login`", route.path),
                Some(
                    "use auth = \"required\" (or \"optional\") on routes that sign browsers in"
                        .into(),
                ),
            );
        }
        if session.is_none() {
            d.error(
                span,
                format!(
                    "route {:?} has `login` but there is no [session]",
                    route.path
                ),
                Some("add [session] with a [[session.key]] to seal session cookies".into()),
            );
        }
        for id in &route.login {
            if let Some(issuer) = issuers.get(id.0)
                && issuer.login.is_none()
            {
                d.error(
                    span,
                    format!(
                        "route {:?} logs in with `{}`, which has no [issuer.login]",
                        route.path, issuer.name
                    ),
                    Some(
                        "add [issuer.login] with client_id, client_secret_file and redirect_uri"
                            .into(),
                    ),
                );
            }
        }
    }
}

/// True for `https://host[:port]/…` (or `http://` when allowed) whose path ends in `suffix`,
/// with no fragment.
fn absolute_url_with_path(url: &str, allow_http: bool, suffix: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let scheme_ok = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => allow_http,
        _ => false,
    };
    scheme_ok && uri.authority().is_some() && !url.contains('#') && uri.path().ends_with(suffix)
}

/// Reads `[session]`; `None` when absent (routes cannot then use `login`).
pub(super) fn read_session(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> Option<SessionConfig> {
    let mut t = top.table(d, "session")?;
    let span = t.span.clone();
    let mut keys: Vec<(String, [u8; 32])> = Vec::new();
    for mut kt in t.tables(d, "key") {
        let id = kt.req_string(d, "id", Some("a short key id, e.g. \"2026-11\""));
        let file = kt.req_string(
            d,
            "file",
            Some("a file with 32 random bytes (64 hex digits or base64url)"),
        );
        kt.finish(d);
        let (Some((id, id_span)), Some((path, file_span))) = (id, file) else {
            continue;
        };
        if id.is_empty()
            || id.len() > crate::model::reserved::MAX_KID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            d.error(
                &id_span,
                format!("session key id {id:?} must be 1–16 of A–Z a–z 0–9 - _"),
                None,
            );
            continue;
        }
        if keys.iter().any(|(k, _)| *k == id) {
            d.error(&id_span, format!("two session keys have id {id:?}"), None);
            continue;
        }
        let Some(bytes) = read_bytes(d, files, &path, &file_span) else {
            continue;
        };
        match parse_key(&bytes) {
            Some(k) => keys.push((id, k)),
            None => d.error(
                &file_span,
                format!("session key file {path:?} does not hold 32 bytes"),
                Some(
                    "write 32 random bytes as 64 hex digits: `openssl rand -hex 32 > session.key`"
                        .into(),
                ),
            ),
        }
    }
    if keys.is_empty() {
        d.error(
            &span,
            "[session] has no [[session.key]]",
            Some("add [[session.key]] id = \"1\", file = \"session.key\" (the first key seals; others only open, for rotation)".into()),
        );
    }
    let mut cfg = SessionConfig {
        keys,
        ..SessionConfig::default()
    };
    let bounded = |t: &mut Table<'_, '_>,
                   d: &mut Diags<'_>,
                   key: &'static str,
                   min: u64,
                   max: u64,
                   into: &mut Duration| {
        if let Some((v, span)) = t.duration(d, key) {
            if v < Duration::from_secs(min) || v > Duration::from_secs(max) {
                d.error(
                    &span,
                    format!("`session.{key}` {v:?} is outside {min}s..={max}s"),
                    None,
                );
            }
            *into = v;
        }
    };
    bounded(
        &mut t,
        d,
        "idle_timeout",
        60,
        30 * 86_400,
        &mut cfg.idle_timeout,
    );
    bounded(
        &mut t,
        d,
        "absolute_lifetime",
        60,
        90 * 86_400,
        &mut cfg.absolute_lifetime,
    );
    bounded(&mut t, d, "renew_after", 1, 86_400, &mut cfg.renew_after);
    bounded(
        &mut t,
        d,
        "refresh_before",
        0,
        3_600,
        &mut cfg.refresh_before,
    );
    bounded(
        &mut t,
        d,
        "login_timeout",
        30,
        3_600,
        &mut cfg.login_timeout,
    );
    if cfg.idle_timeout > cfg.absolute_lifetime {
        d.error(
            &span,
            "session idle_timeout is longer than absolute_lifetime",
            None,
        );
    }
    if let Some((name, span)) = t.string(d, "cookie") {
        let ok = name.starts_with(crate::model::reserved::HOST_PREFIX)
            && name.len() <= crate::model::reserved::MAX_BASE_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            cfg.cookie = name;
        } else {
            d.error(
                &span,
                format!("session cookie name {name:?} must start with __Host- and use only A–Z a–z 0–9 - _ (≤ 64)"),
                Some("the __Host- prefix stops sibling subdomains from planting or shadowing it".into()),
            );
        }
    }
    cfg.forward_access_token = t.boolean(d, "forward_access_token").is_some_and(|(b, _)| b);
    if let Some(mut a) = t.table(d, "anomaly") {
        read_anomaly(&mut a, d, "session.anomaly", &mut cfg.anomaly);
        a.finish(d);
    }
    t.finish(d);
    Some(cfg)
}

/// The keys of an anomaly table (`[session.anomaly]`, or a route's `[route.risk.anomaly]`
/// named `prefix` in errors) over `w`: the weights are 0..=100, the use rules' limits
/// bounded.
pub(super) fn read_anomaly(
    a: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    prefix: &str,
    w: &mut AnomalyWeights,
) {
    for (key, into) in [
        ("network", &mut w.network),
        ("asn", &mut w.asn),
        ("country", &mut w.country),
        ("agent", &mut w.agent),
        ("platform", &mut w.platform),
        ("repeated", &mut w.repeated),
        ("travel", &mut w.travel),
        ("concurrent", &mut w.concurrent),
    ] {
        if let Some((n, span)) = a.integer(d, key) {
            match u8::try_from(n) {
                Ok(n) if n <= 100 => *into = n,
                _ => d.error(
                    &span,
                    format!("`{prefix}.{key}` = {n} is outside 0..=100"),
                    None,
                ),
            }
        }
    }
    for (key, min, max, into) in [
        ("max_speed_kmh", 100, 20_000, &mut w.max_speed_kmh),
        ("distant_km", 10, 20_000, &mut w.distant_km),
    ] {
        if let Some((n, span)) = a.integer(d, key) {
            match u32::try_from(n) {
                Ok(n) if (min..=max).contains(&n) => *into = n,
                _ => d.error(
                    &span,
                    format!("`{prefix}.{key}` = {n} is outside {min}..={max}"),
                    None,
                ),
            }
        }
    }
    if let Some((v, span)) = a.duration(d, "concurrent_window") {
        if v < Duration::from_secs(10) || v > Duration::from_secs(3_600) {
            d.error(
                &span,
                format!("`{prefix}.concurrent_window` {v:?} is outside 10s..=3600s"),
                None,
            );
        } else {
            w.concurrent_window = v;
        }
    }
}

fn read_bytes(
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
    path: &str,
    span: &std::ops::Range<usize>,
) -> Option<Vec<u8>> {
    match files.read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            d.error(
                span,
                format!("cannot read {path:?}: {e}"),
                Some("paths are relative to the configuration file".into()),
            );
            None
        }
    }
}

/// Parameters the gateway sets itself in every authorization request: an extra value for
/// one of them would change the protocol, not add to it.
const OWN_AUTHORIZE_PARAMS: [&str; 11] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "request",
    "request_uri",
];

/// `authorize_params = { audience = "…", access_type = "offline" }`: names and string values.
fn read_authorize_params(lt: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Vec<(String, String)> {
    let Some(table) = lt.table(d, "authorize_params") else {
        return Vec::new();
    };
    let mut params = Vec::new();
    for ((name, span), value) in table.entries() {
        if OWN_AUTHORIZE_PARAMS.contains(&name) {
            d.error(
                &span,
                format!("authorize_params may not set `{name}`: the gateway sets it"),
                Some("scopes go in `scopes`".into()),
            );
            continue;
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            d.error(&span, format!("`{name}` is not a parameter name"), None);
            continue;
        }
        match value.get_ref().as_str() {
            Some(v) => params.push((name.to_owned(), v.to_owned())),
            None => d.error(
                &value.span(),
                format!("authorize parameter `{name}` must be a string"),
                None,
            ),
        }
    }
    params
}

fn read_text_secret(
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
    path: &str,
    span: &std::ops::Range<usize>,
) -> Option<String> {
    let bytes = read_bytes(d, files, path, span)?;
    match String::from_utf8(bytes) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => {
            d.error(span, format!("{path:?} holds no secret (UTF-8 text)"), None);
            None
        }
    }
}

/// 32 key bytes from 64 hex digits, 43 base64url characters or 32 raw bytes.
fn parse_key(bytes: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(bytes).map(str::trim);
    let decoded = match text {
        Ok(t) if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) => (0..32)
            .map(|i| {
                t.get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>(),
        Ok(t) if t.len() == 43 => crate::b64::decode(t),
        _ if bytes.len() == 32 => Some(bytes.to_vec()),
        _ => None,
    }?;
    decoded.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys a host signs with for a wasm gateway are found by thumbprint or key id
    /// among every configured client (login and introspection) and gateway-token key, and
    /// no other key answers.
    #[test]
    fn configured_signing_keys_are_found_by_their_thumbprint() {
        let rsa = include_bytes!("../../testdata/client-rsa.jwk.json");
        let text = r#"
[[issuer]]
name = "t"
issuer = "https://t"
audiences = ["a"]
algorithms = ["ES256"]
discovery = true
[issuer.introspection]
client_id = "rs"
client_auth = "private_key_jwt"
client_key_file = "client.jwk"
[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:1"]
[residency]
claim = "region"
missing = "eu"
anonymous = "eu"
[gateway_token]
header = "x-portcullis-identity"
issuer = "https://gw"
key_files = ["gw1", "gw2"]
[audit]
subject_key_file = "gw1"
[[route]]
path = "/"
auth = "public"
"#;
        let files = crate::MapFiles::default()
            .with("client.jwk", rsa.to_vec())
            .with("gw1", crate::b64::encode(&[1u8; 32]))
            .with("gw2", crate::b64::encode(&[2u8; 32]));
        let cfg = crate::config::load(text, "t.toml", &files).unwrap();
        let key = crate::client_auth::ClientKey::from_private_jwk(rsa).unwrap();
        let found = cfg
            .client_key(&key.thumbprint())
            .expect("the introspection client's key");
        assert_eq!(found.kid, "rsa-test-client");
        assert!(
            cfg.client_key(&key.kid).is_none(),
            "a kid is not a thumbprint"
        );
        assert!(cfg.client_key("").is_none());
        let gt = cfg.gateway_token.as_ref().unwrap();
        for k in &gt.keys {
            assert_eq!(cfg.gateway_key(&k.kid), Some(k));
        }
        assert_ne!(gt.keys[0].kid, gt.keys[1].kid);
        assert!(cfg.gateway_key("other").is_none());
    }

    #[test]
    fn keys_parse_from_hex_base64url_or_raw_bytes() {
        let hex = "00".repeat(31) + "ff\n";
        assert_eq!(parse_key(hex.as_bytes()).map(|k| k[31]), Some(0xff));
        let b64 = crate::b64::encode(&[7u8; 32]);
        assert_eq!(parse_key(b64.as_bytes()), Some([7u8; 32]));
        assert_eq!(parse_key(&[9u8; 32]), Some([9u8; 32]));
        assert_eq!(parse_key(b"short"), None);
        assert_eq!(parse_key(&[1u8; 33]), None);
    }

    #[test]
    fn redirect_uris_must_be_absolute_and_secure() {
        assert!(absolute_url_with_path(
            "https://app.example/_portcullis/callback",
            false,
            "/_portcullis/callback"
        ));
        assert!(!absolute_url_with_path(
            "http://app.example/_portcullis/callback",
            false,
            "/_portcullis/callback"
        ));
        assert!(absolute_url_with_path(
            "http://localhost:8080/_portcullis/callback",
            true,
            "/_portcullis/callback"
        ));
        assert!(!absolute_url_with_path(
            "/_portcullis/callback",
            true,
            "/_portcullis/callback"
        ));
        assert!(!absolute_url_with_path(
            "https://app.example/cb",
            false,
            "/_portcullis/callback"
        ));
    }
}
