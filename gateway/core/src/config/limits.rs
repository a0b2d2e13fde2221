//! Rate limits (`[[route.rate_limit]]`), the shared state (`[state]`) and the
//! proof-of-work challenge (`[challenge]`).

use std::time::Duration;

use super::ConfigFiles;
use super::model::*;
use super::reader::{Diags, Span, Table};

/// The keys a rate limit can count by.
const LIMIT_KEYS: [LimitKey; 4] = [
    LimitKey::Ip,
    LimitKey::Subject,
    LimitKey::Route,
    LimitKey::ClientId,
];

pub(super) fn read_rate_limits(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    public_route: bool,
) -> Vec<RateLimit> {
    let mut limits: Vec<RateLimit> = Vec::new();
    for mut lt in t.tables(d, "rate_limit") {
        let span = lt.span.clone();
        let key = match lt.req_string(
            d,
            "key",
            Some("what to count: \"ip\", \"subject\", \"route\" or \"client_id\""),
        ) {
            None => None,
            Some((k, span)) => match LIMIT_KEYS.iter().find(|l| l.name() == k) {
                Some(l) => Some(*l),
                None => {
                    d.error(
                        &span,
                        format!("unknown rate limit key `{k}`"),
                        Some("use \"ip\", \"subject\", \"route\" or \"client_id\"".into()),
                    );
                    None
                }
            },
        };
        let rate = positive(&mut lt, d, "rate", 1_000_000);
        let period = match lt.duration(d, "per") {
            None => {
                lt.missing(
                    d,
                    "per",
                    Some("the period of `rate`, e.g. per = \"1m\"".into()),
                );
                None
            }
            Some((p, span)) => {
                if p < Duration::from_millis(1) || p > Duration::from_secs(86_400) {
                    d.error(
                        &span,
                        format!("rate limit period {p:?} is outside 1ms..=24h"),
                        None,
                    );
                    None
                } else {
                    Some(p)
                }
            }
        };
        let burst = match lt.get("burst") {
            None => rate,
            Some(_) => positive(&mut lt, d, "burst", 1_000_000),
        };
        let name = lt
            .string(d, "name")
            .map(|(n, _)| n)
            .or_else(|| key.map(|k| k.name().to_owned()));
        lt.finish(d);
        if public_route && matches!(key, Some(LimitKey::Subject | LimitKey::ClientId)) {
            d.error(
                &span,
                "a public route has no verified identity: this rate limit could never apply",
                Some("count public routes by \"ip\" or \"route\"".into()),
            );
        }
        if let Some(n) = &name
            && (n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            d.error(
                &span,
                format!("rate limit name {n:?} must be letters, digits, `-` or `_`"),
                None,
            );
        }
        if let Some(n) = &name
            && limits.iter().any(|l| &l.name == n)
        {
            d.error(
                &span,
                format!("two rate limits of this route are named `{n}`"),
                Some("give each [[route.rate_limit]] its own name = \"…\"".into()),
            );
        }
        if let (Some(name), Some(key), Some(rate), Some(period), Some(burst)) =
            (name, key, rate, period, burst)
        {
            limits.push(RateLimit {
                name,
                key,
                rate,
                period,
                burst,
            });
        }
    }
    limits
}

/// A positive integer at most `max`.
fn positive(t: &mut Table<'_, '_>, d: &mut Diags<'_>, key: &'static str, max: u32) -> Option<u32> {
    let Some((n, span)) = t.integer(d, key) else {
        t.missing(d, key, Some(format!("a whole number in 1..={max}")));
        return None;
    };
    match u32::try_from(n) {
        Ok(n) if (1..=max).contains(&n) => Some(n),
        _ => {
            let name = t.key_name(key);
            d.error(&span, format!("`{name}` = {n} is outside 1..={max}"), None);
            None
        }
    }
}

pub(super) fn read_state(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> StateConfig {
    let mut cfg = StateConfig::default();
    let Some(mut t) = top.table(d, "state") else {
        return cfg;
    };
    if let Some((p, span)) = t.string(d, "on_unavailable") {
        match p.as_str() {
            "deny" => cfg.on_unavailable = FailPolicy::Deny,
            "allow" => cfg.on_unavailable = FailPolicy::Allow,
            other => d.error(
                &span,
                format!("unknown on_unavailable policy `{other}`"),
                Some("use \"deny\" (fail closed, the default) or \"allow\"".into()),
            ),
        }
    }
    if let Some((share, _)) = t.boolean(d, "verified_token_cache") {
        cfg.verified_token_cache = share;
    }
    let capacity = match t.integer(d, "capacity") {
        None => DEFAULT_STATE_CAPACITY,
        Some((n, span)) => match usize::try_from(n) {
            Ok(n) if (1_000..=100_000_000).contains(&n) => n,
            _ => {
                d.error(
                    &span,
                    format!("`state.capacity` = {n} is outside 1000..=100000000"),
                    None,
                );
                DEFAULT_STATE_CAPACITY
            }
        },
    };
    let backend = t.string(d, "backend");
    match backend.as_ref().map(|(b, s)| (b.as_str(), s.clone())) {
        None | Some(("memory", _)) => {
            cfg.backend = StateBackend::Memory { capacity };
        }
        Some(("redis", backend_span)) => {
            let (servers, tls) = read_redis_servers(&mut t, d, &backend_span);
            let ca = t.string(d, "ca").and_then(|(path, span)| {
                if !tls {
                    d.error(
                        &span,
                        "`state.ca` needs rediss:// servers: it is the CA of their TLS certificates",
                        None,
                    );
                    return None;
                }
                match files.read(&path) {
                    Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => {
                        Some(pem)
                    }
                    Ok(_) => {
                        d.error(&span, format!("{path:?} holds no PEM certificate"), None);
                        None
                    }
                    Err(e) => {
                        d.error(&span, format!("cannot read {path:?}: {e}"), None);
                        None
                    }
                }
            });
            let password =
                t.string(d, "password_file")
                    .and_then(|(path, span)| match files.read(&path) {
                        Ok(bytes) => match String::from_utf8(bytes) {
                            Ok(s) => Some(s.trim().to_owned()),
                            Err(_) => {
                                d.error(&span, format!("{path:?} is not text"), None);
                                None
                            }
                        },
                        Err(e) => {
                            d.error(&span, format!("cannot read {path:?}: {e}"), None);
                            None
                        }
                    });
            let pool = match t.integer(d, "pool") {
                None => 4,
                Some((n, span)) => match usize::try_from(n) {
                    Ok(n) if (1..=64).contains(&n) => n,
                    _ => {
                        d.error(&span, format!("`state.pool` = {n} is outside 1..=64"), None);
                        4
                    }
                },
            };
            let timeout = match t.duration(d, "timeout") {
                None => Duration::from_millis(50),
                Some((v, span)) => {
                    if v < Duration::from_millis(1) || v > Duration::from_secs(5) {
                        d.error(
                            &span,
                            format!("state timeout {v:?} is outside 1ms..=5s"),
                            Some("a state lookup sits on the request path".into()),
                        );
                    }
                    v
                }
            };
            let prefix = match t.string(d, "prefix") {
                None => "portcullis:".to_owned(),
                Some((p, span)) => {
                    if matches!(servers, Some(RedisServers::Cluster { .. }))
                        && p.contains(['{', '}'])
                    {
                        d.error(
                            &span,
                            format!("state prefix {p:?} holds a brace"),
                            Some(
                                "in a cluster a {…} part of a key picks its slot: a braced prefix \
                                 would put every key on one node"
                                    .into(),
                            ),
                        );
                    }
                    p
                }
            };
            if let Some(servers) = servers {
                cfg.backend = StateBackend::Redis {
                    servers,
                    ca,
                    password,
                    pool,
                    timeout,
                    prefix,
                };
            }
        }
        Some((other, span)) => d.error(
            &span,
            format!("unknown state backend `{other}`"),
            Some("use \"memory\" (one process, the default) or \"redis\" (shared)".into()),
        ),
    }
    t.finish(d);
    cfg
}

/// `redis://` (false) or `rediss://` (true); `None` (with an error) for anything else.
fn redis_scheme(d: &mut Diags<'_>, url: &str, span: &Span) -> Option<bool> {
    if url.starts_with("rediss://") {
        Some(true)
    } else if url.starts_with("redis://") {
        Some(false)
    } else {
        d.error(
            span,
            format!("state url {url:?} is not a redis:// or rediss:// URL"),
            Some("use redis://host:port/db, or rediss://host:port/db for TLS".into()),
        );
        None
    }
}

/// The database number a Redis URL names (`/N` after the address), 0 without one.
fn redis_database(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split_once('/').map(|(_, p)| p)?;
    let db = path.split(['?', '#']).next().unwrap_or_default();
    (!db.is_empty() && db != "0").then_some(db)
}

/// Exactly one of `url` (one server), `cluster` (seed nodes) and `sentinels` (with
/// `service`); whether they are reached over TLS.
fn read_redis_servers(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    backend: &Span,
) -> (Option<RedisServers>, bool) {
    let url = t.string(d, "url");
    let cluster = t.strings(d, "cluster");
    let sentinels = t.strings(d, "sentinels");
    let service = t.string(d, "service");
    let given = [
        url.as_ref().map(|(_, s)| ("url", s.clone())),
        cluster.as_ref().map(|(_, s)| ("cluster", s.clone())),
        sentinels.as_ref().map(|(_, s)| ("sentinels", s.clone())),
    ];
    let mut given = given.into_iter().flatten();
    let Some((first, _)) = given.next() else {
        d.error(
            backend,
            "`backend = \"redis\"` needs its servers",
            Some(
                "give one of url = \"redis://10.0.0.5:6379/0\" (one server), cluster = [seed \
                 nodes] (Redis Cluster) or sentinels = [addresses] with service = \"name\" \
                 (Sentinel)"
                    .into(),
            ),
        );
        return (None, false);
    };
    if let Some((second, span)) = given.next() {
        d.error(
            &span,
            format!("`state.{second}` beside `state.{first}`: give only one way to the servers"),
            None,
        );
        return (None, false);
    }
    if let (Some((_, span)), None) = (&service, &sentinels) {
        d.error(
            span,
            "`state.service` is the name Sentinel watches: it needs `sentinels`",
            None,
        );
    }
    if let Some((url, span)) = url {
        let tls = redis_scheme(d, &url, &span).unwrap_or(false);
        return (Some(RedisServers::Single { url }), tls);
    }
    if let Some((nodes, span)) = cluster {
        if nodes.is_empty() {
            d.error(&span, "`state.cluster` names no node", None);
            return (None, false);
        }
        let mut schemes = Vec::new();
        for (node, node_span) in &nodes {
            schemes.extend(redis_scheme(d, node, node_span));
            if let Some(db) = redis_database(node) {
                d.error(
                    node_span,
                    format!("{node:?} names database {db}: a Redis Cluster has only database 0"),
                    None,
                );
            }
        }
        let tls = schemes.first().copied().unwrap_or(false);
        if schemes.iter().any(|s| *s != tls) {
            d.error(
                &span,
                "`state.cluster` mixes redis:// and rediss:// nodes",
                Some("a cluster is reached over TLS or not at all".into()),
            );
        }
        let nodes = nodes.into_iter().map(|(n, _)| n).collect();
        return (Some(RedisServers::Cluster { nodes }), tls);
    }
    let Some((list, span)) = sentinels else {
        return (None, false);
    };
    if list.is_empty() {
        d.error(&span, "`state.sentinels` names no sentinel", None);
    }
    for (s, s_span) in &list {
        if redis_scheme(d, s, s_span) == Some(true) {
            d.error(
                s_span,
                "Sentinel over TLS is not built in",
                Some("use plain redis:// sentinels, a single rediss:// url, or a cluster".into()),
            );
        }
    }
    let Some((service, _)) = service else {
        t.missing(
            d,
            "service",
            Some("the name the sentinels watch, e.g. service = \"portcullis\"".into()),
        );
        return (None, false);
    };
    let sentinels = list.into_iter().map(|(s, _)| s).collect();
    (Some(RedisServers::Sentinel { sentinels, service }), false)
}

pub(super) fn read_challenge(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> ChallengeConfig {
    let mut cfg = ChallengeConfig::default();
    let Some(mut t) = top.table(d, "challenge") else {
        return cfg;
    };
    let mut bits_ok = true;
    let mut bits = |t: &mut Table<'_, '_>, d: &mut Diags<'_>, key: &'static str, into: &mut u8| {
        if let Some((n, span)) = t.integer(d, key) {
            match u8::try_from(n) {
                Ok(n) if (4..=26).contains(&n) => *into = n,
                _ => {
                    bits_ok = false;
                    d.error(
                        &span,
                        format!("`challenge.{key}` = {n} is outside 4..=26"),
                        Some(
                            "each bit doubles the browser's work; 14 takes well under a second"
                                .into(),
                        ),
                    );
                }
            }
        }
    };
    bits(&mut t, d, "min_bits", &mut cfg.min_bits);
    bits(&mut t, d, "max_bits", &mut cfg.max_bits);
    if bits_ok && cfg.min_bits > cfg.max_bits {
        let span = t.span.clone();
        d.error(
            &span,
            format!(
                "challenge min_bits {} is above max_bits {}",
                cfg.min_bits, cfg.max_bits
            ),
            None,
        );
    }
    if let Some((v, span)) = t.duration(d, "ttl") {
        if v < Duration::from_secs(10) || v > Duration::from_secs(3600) {
            d.error(
                &span,
                format!("challenge ttl {v:?} is outside 10s..=1h"),
                None,
            );
        }
        cfg.ttl = v;
    }
    if let Some((v, span)) = t.duration(d, "clearance_ttl") {
        if v < Duration::from_secs(10) || v > Duration::from_secs(86_400) {
            d.error(
                &span,
                format!("challenge clearance_ttl {v:?} is outside 10s..=24h"),
                None,
            );
        }
        cfg.clearance_ttl = v;
    }
    if let Some(mut st) = t.table(d, "turnstile") {
        cfg.site_verify = read_site_verify(&mut st, d, files);
        st.finish(d);
    }
    t.finish(d);
    cfg
}

fn read_site_verify(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> Option<SiteVerify> {
    let site_key = t.req_string(d, "site_key", Some("the widget's public site key"));
    if let Some((k, span)) = &site_key
        && (k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        d.error(
            span,
            format!("site_key {k:?} must be letters, digits, `-` or `_`"),
            None,
        );
    }
    let secret = match t.req_string(
        d,
        "secret_file",
        Some("a file holding the siteverify secret"),
    ) {
        None => None,
        Some((path, span)) => match files.read(&path).map(String::from_utf8) {
            Ok(Ok(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Ok(_) => {
                d.error(&span, format!("{path:?} holds no secret"), None);
                None
            }
            Err(e) => {
                d.error(&span, format!("cannot read {path:?}: {e}"), None);
                None
            }
        },
    };
    let verify_url = t.string(d, "verify_url").map_or_else(
        || TURNSTILE_VERIFY_URL.to_owned(),
        |(u, span)| {
            let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
                .iter()
                .any(|p| u.starts_with(p));
            if !u.starts_with("https://") && !loopback {
                d.error(
                    &span,
                    format!(
                        "verify_url {u:?} must be https (plain http only to a loopback sidecar)"
                    ),
                    None,
                );
            }
            u
        },
    );
    let script_url = t.string(d, "script_url").map_or_else(
        || TURNSTILE_SCRIPT_URL.to_owned(),
        |(u, span)| {
            if crate::canonical::url_origin(&u).is_none() {
                d.error(
                    &span,
                    format!("script_url {u:?} must be a plain https URL"),
                    None,
                );
            }
            u
        },
    );
    Some(SiteVerify {
        site_key: site_key?.0,
        secret: secret?,
        verify_url,
        script_url,
    })
}
