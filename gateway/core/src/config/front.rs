//! `[paths]`, `[server]` and `[timeouts]`: how the front door reads paths, how long clients
//! may hold connections, and how long backends may take.

use std::time::Duration;

use super::model::{
    BackendTimeouts, ClientConfig, ForwardAuth, PathRules, ServerLimits, ServerTls, TlsCertificate,
};
use super::reader::{Diags, Table};

pub(super) fn read_paths(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> PathRules {
    let mut rules = PathRules::default();
    let Some(mut t) = top.table(d, "paths") else {
        return rules;
    };
    if let Some(v) = choice(
        &mut t,
        d,
        "semicolons",
        [("allow", true), ("refuse", false)],
    ) {
        rules.allow_semicolons = v;
    }
    if let Some(v) = choice(
        &mut t,
        d,
        "case",
        [("sensitive", true), ("insensitive", false)],
    ) {
        rules.case_sensitive = v;
    }
    t.finish(d);
    rules
}

pub(super) fn read_server(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
) -> (ServerLimits, Option<ServerTls>) {
    let mut limits = ServerLimits::default();
    let Some(mut t) = top.table(d, "server") else {
        return (limits, None);
    };
    if let Some(v) = bounded(&mut t, d, "header_timeout", (1, 300)) {
        limits.header_timeout = v;
    }
    if let Some(v) = bounded(&mut t, d, "idle_timeout", (1, 3600)) {
        limits.idle_timeout = v;
    }
    if let Some((n, span)) = t.integer(d, "max_connections") {
        match usize::try_from(n) {
            Ok(n) if (1..=1_000_000).contains(&n) => limits.max_connections = n,
            _ => d.error(
                &span,
                format!("`server.max_connections` = {n} is outside 1..=1000000"),
                None,
            ),
        }
    }
    let tls = t.table(d, "tls").and_then(|tls| read_tls(tls, d));
    t.finish(d);
    (limits, tls)
}

/// `[server.tls]`: at least one certificate, each a `cert` and a `key` file.
fn read_tls(mut t: Table<'_, '_>, d: &mut Diags<'_>) -> Option<ServerTls> {
    let mut certificates = Vec::new();
    let listed = t.tables(d, "certificates");
    let none_listed = listed.is_empty();
    for mut c in listed {
        let cert = c.req_string(d, "cert", Some("the PEM certificate chain, leaf first"));
        let key = c.req_string(d, "key", Some("the PEM private key of the leaf"));
        c.finish(d);
        if let (Some((cert, _)), Some((key, _))) = (cert, key) {
            certificates.push(TlsCertificate { cert, key });
        }
    }
    if none_listed {
        t.missing(
            d,
            "certificates",
            Some("certificates = [{ cert = \"tls/site.pem\", key = \"tls/site.key\" }]".into()),
        );
    }
    let mut watch = Duration::from_secs(5);
    if let Some((v, span)) = t.duration(d, "watch") {
        if v < Duration::from_millis(100) || v > Duration::from_secs(3600) {
            d.error(
                &span,
                format!("`server.tls.watch` {v:?} is outside 100ms..=1h"),
                None,
            );
        } else {
            watch = v;
        }
    }
    let http2 = t.boolean(d, "http2").is_none_or(|(b, _)| b);
    t.finish(d);
    (!certificates.is_empty()).then_some(ServerTls {
        certificates,
        watch,
        http2,
    })
}

/// `[forward_auth]`: only with trusted proxies to ask.
pub(super) fn read_forward_auth(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    client: &ClientConfig,
) -> Option<ForwardAuth> {
    let mut t = top.table(d, "forward_auth")?;
    let routing_headers = t.boolean(d, "routing_headers").is_none_or(|(b, _)| b);
    if client.trusted_proxies.is_empty() {
        let span = t.span.clone();
        d.error(
            &span,
            "`[forward_auth]` needs `[client] trusted_proxies`: only those proxies may ask the gateway to decide a request".to_owned(),
            Some("trusted_proxies = [\"10.0.0.0/8\"] (the addresses your proxies connect from)".into()),
        );
    }
    t.finish(d);
    Some(ForwardAuth { routing_headers })
}

pub(super) fn read_timeouts(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> BackendTimeouts {
    let mut timeouts = BackendTimeouts::default();
    let Some(mut t) = top.table(d, "timeouts") else {
        return timeouts;
    };
    if let Some(v) = bounded(&mut t, d, "connect", (1, 60)) {
        timeouts.connect = v;
    }
    if let Some(v) = bounded(&mut t, d, "response", (1, 3600)) {
        timeouts.response = v;
    }
    let total = t.duration(d, "total");
    if let Some((v, span)) = total {
        if v < Duration::from_secs(1) || v > Duration::from_secs(24 * 3600) {
            d.error(
                &span,
                format!("`timeouts.total` {v:?} is outside 1s..=24h"),
                None,
            );
        } else if v < timeouts.response {
            d.error(
                &span,
                format!(
                    "`timeouts.total` {v:?} is shorter than `timeouts.response` {:?}",
                    timeouts.response
                ),
                Some("the total covers the response headers and the body".into()),
            );
        } else {
            timeouts.total = v;
        }
    } else if timeouts.total < timeouts.response {
        timeouts.total = timeouts.response;
    }
    t.finish(d);
    timeouts
}

/// A key with one of two spellings (the second is the default, named in the hint).
fn choice(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    key: &'static str,
    values: [(&str, bool); 2],
) -> Option<bool> {
    let (v, span) = t.string(d, key)?;
    let found = values.iter().find(|(name, _)| *name == v).map(|(_, b)| *b);
    if found.is_none() {
        let [(a, _), (b, _)] = values;
        d.error(
            &span,
            format!("unknown `{}` value `{v}`", t.key_name(key)),
            Some(format!("use \"{b}\" (the default) or \"{a}\"")),
        );
    }
    found
}

/// A duration key between `secs.0` and `secs.1` seconds.
fn bounded(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    key: &'static str,
    secs: (u64, u64),
) -> Option<Duration> {
    let (v, span) = t.duration(d, key)?;
    let (lo, hi) = (Duration::from_secs(secs.0), Duration::from_secs(secs.1));
    if v < lo || v > hi {
        d.error(
            &span,
            format!("`{}` {v:?} is outside {lo:?}..={hi:?}", t.key_name(key)),
            None,
        );
        return None;
    }
    Some(v)
}
