//! Turns TOML text into a [`Config`], collecting every problem.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use serde_json::Value;
use toml::de::{DeTable, DeValue};

use super::model::*;
use super::reader::{At, Diags, Span, Table, closest};
use super::{ConfigError, ConfigFiles};
use crate::b64;
use crate::crypto::Algorithm;
use crate::jwk::{ParsedJwks, hmac_secret_jwk, parse_jwks};
use crate::jws::{DEFAULT_MAX_TOKEN_BYTES, normalize_media_type};
use crate::model::ClaimPath;
use crate::model::IssuerId;

const TOP_LEVEL_HINT: &str = "a configuration has [[issuer]], [region.NAME], [residency], [[route]], [identity], [audit], [limits], [plugin.NAME], [client], [bot], [gateway_token], [dpop], [state], [challenge], [session], [paths], [server], [timeouts] and [forward_auth]";

pub(super) fn load(
    source: &str,
    file: &str,
    files: &dyn ConfigFiles,
) -> Result<Config, ConfigError> {
    parse(source, file, |top, d| read_config(top, d, files))
}

/// Parses and validates a file holding only a `[state]` table (a host that runs
/// components without a gateway configuration, `serve-wasm`, keeps its store there).
pub(super) fn load_state(
    source: &str,
    file: &str,
    files: &dyn ConfigFiles,
) -> Result<StateConfig, ConfigError> {
    parse(source, file, |top, d| {
        if top.get("state").is_none() {
            d.error(
                &(0..0),
                "no [state] table",
                Some("this file holds the store's [state] table only".into()),
            );
        }
        Some(super::limits::read_state(top, d, files))
    })
}

/// Parses `source` (named `file`) as TOML and reads it with `read` from its top table, which
/// is then finished (unknown tables reported); every diagnostic, in source order, when
/// anything was wrong.
fn parse<T>(
    source: &str,
    file: &str,
    read: impl FnOnce(&mut Table<'_, '_>, &mut Diags<'_>) -> Option<T>,
) -> Result<T, ConfigError> {
    let mut d = Diags::new(file, source);
    let (root, parse_errors) = DeTable::parse_recoverable(source);
    for e in &parse_errors {
        let span = e.span().unwrap_or(0..0);
        d.error(&span, format!("TOML syntax: {}", e.message().trim()), None);
    }
    let read = if parse_errors.is_empty() {
        let mut top = Table::from_map(root.get_ref(), root.span(), String::new());
        let read = read(&mut top, &mut d);
        finish_top(top, &mut d);
        read
    } else {
        None
    };
    match read {
        Some(r) if d.list.is_empty() => Ok(r),
        _ => {
            d.list.sort_by_key(|(offset, _)| *offset);
            Err(ConfigError {
                diagnostics: d.list.into_iter().map(|(_, diag)| diag).collect(),
            })
        }
    }
}

fn finish_top(top: Table<'_, '_>, d: &mut Diags<'_>) {
    // At the top level, list the sections rather than the keys asked for.
    let before = d.list.len();
    top.finish(d);
    for (_, diag) in d.list.iter_mut().skip(before) {
        if diag
            .hint
            .as_deref()
            .is_some_and(|h| h.starts_with("known keys"))
        {
            diag.hint = Some(TOP_LEVEL_HINT.into());
        }
    }
}

fn read_config(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> Option<Config> {
    // Regions first: issuers and routes refer to them.
    let regions = read_regions(top, d);
    let issuer_tables = top.tables(d, "issuer");
    if issuer_tables.is_empty() {
        d.error(
            &(0..0),
            "no [[issuer]]: no token could ever be verified",
            Some(
                "add an [[issuer]] table with issuer, audiences, algorithms and a key source"
                    .into(),
            ),
        );
    }
    let issuers: Vec<Option<IssuerConfig>> = issuer_tables
        .into_iter()
        .map(|t| read_issuer(t, d, files))
        .collect();
    check_unique(d, issuers.iter().flatten().map(|i| (&i.name, &i.issuer)));
    let names: Vec<(String, RegionId)> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), RegionId(i)))
        .collect();
    let residency = read_residency(top, d, &names);
    let issuer_names: Vec<String> = issuers
        .iter()
        .map(|i| i.as_ref().map(|i| i.name.clone()).unwrap_or_default())
        .collect();
    let plugins = super::risk::read_plugins(top, d);
    // Before routes: their `checks` need the lists and verified bots, and their
    // `[route.risk.anomaly]` the session's weights.
    let bot = super::bot::read_bot(top, d);
    let session = super::login::read_session(top, d, files);
    let default_weights = AnomalyWeights::default();
    let risk_env = super::risk::RiskEnv {
        plugins: &plugins,
        bot: &bot,
        anomaly: session.as_ref().map_or(&default_weights, |s| &s.anomaly),
    };
    let route_tables = top.tables(d, "route");
    if route_tables.is_empty() {
        d.error(
            &(0..0),
            "no [[route]]: every request would be refused",
            Some("add a [[route]] with a path, e.g. path = \"/\"".into()),
        );
    }
    let routes: Vec<Option<(Route, Span)>> = route_tables
        .into_iter()
        .map(|t| read_route(t, d, &issuer_names, &names, residency.as_ref(), &risk_env))
        .collect();
    check_duplicate_routes(d, routes.iter().flatten());
    let identity = read_identity(top, d);
    let audit = read_audit(top, d, files);
    let limits = read_limits(top, d);
    let client = super::risk::read_client(top, d);
    let gateway_token = super::agents::read_gateway_token(top, d, files);
    let dpop = super::agents::read_dpop(top, d);
    let state = super::limits::read_state(top, d, files);
    let challenge = super::limits::read_challenge(top, d, files);
    let paths = super::front::read_paths(top, d);
    let (server, tls) = super::front::read_server(top, d);
    let timeouts = super::front::read_timeouts(top, d);
    let forward_auth = super::front::read_forward_auth(top, d, &client);
    let issuers: Vec<IssuerConfig> = issuers.into_iter().collect::<Option<Vec<_>>>()?;
    let routes: Vec<(Route, Span)> = routes.into_iter().collect::<Option<Vec<_>>>()?;
    super::login::check_login_routes(d, &issuers, &routes, session.as_ref());
    super::login::check_introspection(d, &issuers, &routes);
    super::consent::check_consent_routes(d, &issuers, &routes);

    Some(Config {
        issuers,
        regions,
        residency: residency?,
        routes: routes.into_iter().map(|(r, _)| r).collect(),
        identity: identity?,
        audit: audit?,
        limits,
        plugins,
        client,
        gateway_token,
        dpop,
        state,
        challenge,
        bot,
        session,
        paths,
        server,
        tls,
        forward_auth,
        timeouts,
    })
}

fn check_unique<'a>(d: &mut Diags<'_>, issuers: impl Iterator<Item = (&'a String, &'a String)>) {
    let mut seen_names = BTreeMap::new();
    let mut seen_iss = BTreeMap::new();
    for (name, iss) in issuers {
        if seen_names.insert(name.clone(), ()).is_some() {
            d.error(
                &(0..0),
                format!("two issuers are named `{name}`"),
                Some("issuer names must be unique".into()),
            );
        }
        if seen_iss.insert(iss.clone(), ()).is_some() {
            d.error(
                &(0..0),
                format!("two issuers have issuer = {iss:?}"),
                Some("one [[issuer]] per `iss` value".into()),
            );
        }
    }
}

fn read_issuer(
    mut t: Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> Option<IssuerConfig> {
    let name = t.req_string(
        d,
        "name",
        Some("a short name for logs and route `issuers` lists"),
    );
    let issuer = t.req_string(d, "issuer", Some("the exact `iss` value of the tokens"));
    let audiences = match t.strings(d, "audiences") {
        Some((list, span)) if list.is_empty() => {
            d.error(
                &span,
                format!("`{}.audiences` is empty", t.name),
                Some("list the `aud` values this gateway accepts".into()),
            );
            None
        }
        Some((list, _)) => Some(list.into_iter().map(|(s, _)| s).collect::<Vec<_>>()),
        None => {
            t.missing(
                d,
                "audiences",
                Some("e.g. audiences = [\"api://shop\"]".into()),
            );
            None
        }
    };
    let algorithms = read_algorithms(&mut t, d);
    let clock_skew = t
        .duration(d, "clock_skew")
        .map_or(Duration::from_secs(60), |(v, span)| {
            if v > Duration::from_secs(600) {
                d.error(
                    &span,
                    format!(
                        "`{}.clock_skew` of {}s is more than 10 minutes",
                        t.name,
                        v.as_secs()
                    ),
                    Some(
                        "a skew this large accepts long-expired tokens; fix the clocks instead"
                            .into(),
                    ),
                );
            }
            v
        });
    let insecure_http_jwks = t.boolean(d, "insecure_http_jwks").is_some_and(|(b, _)| b);
    let token_types = t.strings(d, "typ").map(|(list, _)| {
        list.into_iter()
            .map(|(s, _)| normalize_media_type(&s))
            .collect()
    });
    let jwks_policy = read_jwks_policy(&mut t, d);
    let tenants = read_tenants(&mut t, d, issuer.as_ref());
    let scopes_claim = t.string(d, "scopes_claim").and_then(|(p, span)| {
        ClaimPath::parse(&p)
            .map_err(|e| d.error(&span, format!("scopes_claim {p:?}: {e}"), None))
            .ok()
    });
    let login = super::login::read_login_client(
        &mut t,
        d,
        files,
        name.as_ref().map_or("", |n| n.0.as_str()),
        insecure_http_jwks,
    );
    let session_bound = t.boolean(d, "session_bound_tokens");
    if let Some((true, span)) = &session_bound
        && login.is_none()
    {
        d.error(
            span,
            format!(
                "`{}.session_bound_tokens` needs [issuer.login]: the provider's sessions end through its back-channel logout",
                t.name
            ),
            None,
        );
    }
    let introspection = super::login::read_introspection(&mut t, d, files);
    let consent = super::consent::read_issuer_consent(&mut t, d);
    let keys = read_key_source(
        &mut t,
        d,
        files,
        issuer.as_ref(),
        algorithms.as_deref(),
        insecure_http_jwks,
    );
    t.finish(d);
    Some(IssuerConfig {
        name: name?.0,
        issuer: issuer?.0,
        audiences: audiences?,
        algorithms: algorithms?,
        clock_skew,
        keys: keys?,
        token_types,
        jwks_policy,
        insecure_http_jwks,
        login,
        scopes_claim,
        tenants,
        introspection,
        consent,
        session_bound_tokens: session_bound.is_some_and(|(b, _)| b),
    })
}

/// `tenants` of a multi-tenant issuer (one whose `issuer` holds `{tenantid}`): required
/// there, refused elsewhere; each a tenant id (letters, digits, `-`, `.`, `_`).
fn read_tenants(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    issuer: Option<&At<String>>,
) -> Vec<String> {
    let templated = issuer.is_some_and(|(i, _)| i.contains(TENANT_PLACEHOLDER));
    let list = t.strings(d, "tenants");
    match (templated, list) {
        (true, Some((list, span))) if list.is_empty() => {
            d.error(
                &span,
                "`tenants` is empty: no token could be accepted",
                None,
            );
            Vec::new()
        }
        (true, Some((list, _))) => list
            .into_iter()
            .filter_map(|(tenant, span)| {
                let ok = !tenant.is_empty()
                    && tenant
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !ok {
                    d.error(&span, format!("{tenant:?} is not a tenant id"), None);
                }
                ok.then_some(tenant)
            })
            .collect(),
        (true, None) => {
            if let Some((i, span)) = issuer {
                d.error(
                    span,
                    format!(
                        "the multi-tenant issuer {i:?} needs `tenants`, the tenants it accepts"
                    ),
                    Some(
                        "tenants = [\"<tenant id>\", …]: a token from any other tenant is refused"
                            .into(),
                    ),
                );
            }
            Vec::new()
        }
        (false, Some((_, span))) => {
            d.error(
                &span,
                format!("`tenants` is for a multi-tenant issuer, whose `issuer` holds {TENANT_PLACEHOLDER}"),
                None,
            );
            Vec::new()
        }
        (false, None) => Vec::new(),
    }
}

fn read_algorithms(t: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Option<Vec<Algorithm>> {
    let Some((list, span)) = t.strings(d, "algorithms") else {
        t.missing(
            d,
            "algorithms",
            Some("an allow-list, e.g. algorithms = [\"ES256\", \"RS256\"]".into()),
        );
        return None;
    };
    if list.is_empty() {
        d.error(
            &span,
            format!(
                "`{}.algorithms` is empty: no token could be accepted",
                t.name
            ),
            Some("an allow-list, e.g. algorithms = [\"ES256\", \"RS256\"]".into()),
        );
        return None;
    }
    let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    let mut out = Vec::new();
    let mut ok = true;
    for (name, span) in list {
        match Algorithm::from_name(&name) {
            Some(a) => out.push(a),
            None if name.eq_ignore_ascii_case("none") => {
                d.error(
                    &span,
                    "algorithm `none` (unsecured tokens) can never be allowed",
                    None,
                );
                ok = false;
            }
            None => {
                let hint = names
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(&name))
                    .copied()
                    .or_else(|| closest(&name, &names));
                d.error(
                    &span,
                    format!("unknown algorithm `{name}`"),
                    Some(hint.map_or_else(
                        || format!("supported: {}", names.join(", ")),
                        |h| format!("did you mean `{h}`?"),
                    )),
                );
                ok = false;
            }
        }
    }
    let symmetric = out.iter().filter(|a| a.is_symmetric()).count();
    if symmetric > 0 && symmetric < out.len() {
        d.error(&span, format!("`{}.algorithms` mixes HMAC and public-key algorithms", t.name), Some("use one [[issuer]] for the shared-secret issuer and one for the public-key issuer (mixing them invites key-confusion attacks)".into()));
        ok = false;
    }
    ok.then_some(out)
}

fn read_jwks_policy(t: &mut Table<'_, '_>, d: &mut Diags<'_>) -> JwksPolicy {
    let def = JwksPolicy::default();
    let policy = JwksPolicy {
        refresh_min: t
            .duration(d, "jwks_refresh_min")
            .map_or(def.refresh_min, |v| v.0),
        refresh_max: t
            .duration(d, "jwks_refresh_max")
            .map_or(def.refresh_max, |v| v.0),
        max_stale: t
            .duration(d, "jwks_max_stale")
            .map_or(def.max_stale, |v| v.0),
        unknown_kid_interval: t
            .duration(d, "jwks_unknown_kid_interval")
            .map_or(def.unknown_kid_interval, |v| v.0),
    };
    if policy.refresh_max < policy.refresh_min {
        let span = t.span.clone();
        d.error(
            &span,
            format!("`{}.jwks_refresh_max` is below `jwks_refresh_min`", t.name),
            None,
        );
    }
    policy
}

fn read_key_source(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
    issuer: Option<&At<String>>,
    algorithms: Option<&[Algorithm]>,
    allow_http: bool,
) -> Option<KeySource> {
    let jwks_uri = t.string(d, "jwks_uri");
    let discovery = t.boolean(d, "discovery").filter(|(b, _)| *b);
    let discovery_tenant = t.string(d, "discovery_tenant");
    let discovery_tenant = discovery_tenant
        .as_ref()
        .map(|(s, span)| (s.as_str(), span));
    let templated = issuer.is_some_and(|(i, _)| i.contains(TENANT_PLACEHOLDER));
    if let Some((_, span)) = discovery_tenant
        && !(templated && discovery.is_some())
    {
        d.error(
            span,
            "`discovery_tenant` is for discovery of a multi-tenant issuer (its `issuer` holds {tenantid})",
            None,
        );
    }
    let jwks_file = t.string(d, "jwks_file");
    let secret_file = t.string(d, "hmac_secret_file");
    let given = [
        jwks_uri.is_some(),
        discovery.is_some(),
        jwks_file.is_some(),
        secret_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        let span = t.span.clone();
        d.error(
            &span,
            format!("`{}` needs exactly one key source, found {given}", t.name),
            Some("set one of jwks_uri, discovery = true, jwks_file, hmac_secret_file".into()),
        );
        return None;
    }
    let symmetric = algorithms.map(|a| a.iter().any(|a| a.is_symmetric()));
    let check_http = |d: &mut Diags<'_>, url: &str, span: &Span, key: &str| -> bool {
        if url.starts_with("https://") || (url.starts_with("http://") && allow_http) {
            return true;
        }
        if url.starts_with("http://") {
            d.error(
                span,
                format!("`{key}` {url:?} is plain http: anyone on the path could swap the keys"),
                Some("use https, or set insecure_http_jwks = true for local testing".into()),
            );
        } else {
            d.error(span, format!("`{key}` {url:?} is not an https URL"), None);
        }
        false
    };
    if let Some((_, span)) = &secret_file
        && symmetric == Some(false)
    {
        d.error(
            span,
            "`hmac_secret_file` needs HMAC algorithms (HS256, HS384, HS512)",
            None,
        );
        return None;
    }
    if secret_file.is_none() && symmetric == Some(true) {
        let span = t.span.clone();
        d.error(
            &span,
            format!(
                "`{}` lists HMAC algorithms but has no hmac_secret_file",
                t.name
            ),
            Some("HMAC keys never come from a published key set".into()),
        );
        return None;
    }
    if let Some((url, span)) = jwks_uri {
        return check_http(d, &url, &span, "jwks_uri").then_some(KeySource::JwksUri(url));
    }
    if let Some((_, span)) = discovery {
        let (iss, _) = issuer?;
        // A multi-tenant issuer publishes one document for all its tenants, at the
        // template with `discovery_tenant` (Entra: "common" or "organizations").
        let base = match discovery_tenant {
            Some((tenant, _)) => iss.replace(TENANT_PLACEHOLDER, tenant),
            None => iss.to_owned(),
        };
        if base.contains(TENANT_PLACEHOLDER) {
            d.error(
                &span,
                format!("discovery for the multi-tenant issuer {iss:?} needs `discovery_tenant`"),
                Some("the tenant segment of its shared discovery document, e.g. \"common\" or \"organizations\" (Microsoft Entra)".into()),
            );
            return None;
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            base.trim_end_matches('/')
        );
        return check_http(d, &url, &span, "discovery (from issuer)")
            .then_some(KeySource::Discovery(url));
    }
    if let Some((path, span)) = jwks_file {
        let bytes = read_file(d, files, &path, &span)?;
        return match parse_jwks(&bytes) {
            Ok(parsed) if parsed.keys.is_empty() => {
                let why: Vec<String> = parsed.skipped.iter().map(|s| s.reason.clone()).collect();
                d.error(
                    &span,
                    format!("`jwks_file` {path:?} has no usable key"),
                    Some(why.join("; ")),
                );
                None
            }
            Ok(parsed) => Some(KeySource::Static(parsed)),
            Err(e) => {
                d.error(&span, format!("`jwks_file` {path:?}: {e}"), None);
                None
            }
        };
    }
    let (path, span) = secret_file?;
    let bytes = read_file(d, files, &path, &span)?;
    let text = String::from_utf8_lossy(&bytes);
    let Some(secret) = b64::decode(text.trim()) else {
        d.error(&span, format!("`hmac_secret_file` {path:?} is not base64url"), Some("store the secret base64url-encoded without padding, e.g. `openssl rand 32 | basenc --base64url | tr -d =`".into()));
        return None;
    };
    let algorithms = algorithms?;
    match hmac_secret_jwk(&secret, algorithms) {
        Ok(jwk) => Some(KeySource::Static(ParsedJwks {
            keys: vec![jwk],
            skipped: Vec::new(),
        })),
        Err(e) => {
            d.error(
                &span,
                format!("{e} ({path:?})"),
                Some(
                    "a secret shorter than the hash output can be brute-forced (RFC 7518 §3.2)"
                        .into(),
                ),
            );
            None
        }
    }
}

fn read_file(
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
    path: &str,
    span: &Span,
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

fn read_regions(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Vec<Region> {
    let Some(table) = top.table(d, "region") else {
        d.error(
            &(0..0),
            "no [region.NAME]: requests could not be routed anywhere",
            Some("add e.g. [region.eu] with jurisdiction and backends".into()),
        );
        return Vec::new();
    };
    let entries: Vec<_> = table.entries().collect();
    let names: Vec<String> = entries.iter().map(|((n, _), _)| (*n).to_owned()).collect();
    let mut regions = Vec::new();
    let mut failovers: Vec<Vec<At<String>>> = Vec::new();
    for ((name, _), value) in entries {
        let Some(mut t) = Table::of(value, format!("region.{name}"), d) else {
            continue;
        };
        let jurisdiction = t
            .req_string(d, "jurisdiction", Some("e.g. jurisdiction = \"EU\""))
            .map(|j| j.0);
        let backends = match t.strings(d, "backends") {
            Some((list, span)) if list.is_empty() => {
                d.error(&span, format!("region `{name}` has no backends"), None);
                None
            }
            Some((list, _)) => list
                .into_iter()
                .map(|(u, span)| parse_backend(d, &u, &span))
                .collect::<Option<Vec<_>>>(),
            None => {
                t.missing(
                    d,
                    "backends",
                    Some("e.g. backends = [\"https://eu.backend.internal\"]".into()),
                );
                None
            }
        };
        let failover = t.strings(d, "failover").map(|(l, _)| l).unwrap_or_default();
        let tls = t.table(d, "tls").and_then(|tls| {
            let plain = backends
                .iter()
                .flatten()
                .any(|b: &crate::config::model::Backend| b.scheme != "https");
            super::backend_tls::read(tls, d, name, plain)
        });
        t.finish(d);
        if let (Some(jurisdiction), Some(backends)) = (jurisdiction, backends) {
            regions.push(Region {
                name: name.to_owned(),
                jurisdiction,
                backends,
                failover: Vec::new(),
                tls,
            });
            failovers.push(failover);
        }
    }
    // Resolve failover lists now that all regions are known.
    let resolved: Vec<Vec<RegionId>> = failovers
        .iter()
        .enumerate()
        .map(|(i, list)| {
            let mut ids = Vec::new();
            for (target, span) in list {
                let Some(j) = regions.iter().position(|r| &r.name == target) else {
                    unknown_region(d, target, span, &names);
                    continue;
                };
                let (from, to) = (regions.get(i), regions.get(j));
                if let (Some(from), Some(to)) = (from, to) {
                    if i == j {
                        d.error(span, format!("region `{}` lists itself as failover", from.name), None);
                    } else if from.jurisdiction != to.jurisdiction {
                        d.error(span, format!("region `{}` ({}) may not fail over to `{}` ({}): data would leave its jurisdiction", from.name, from.jurisdiction, to.name, to.jurisdiction), Some("failover is only allowed between regions of the same jurisdiction".into()));
                    } else {
                        ids.push(RegionId(j));
                    }
                }
            }
            ids
        })
        .collect();
    for (region, ids) in regions.iter_mut().zip(resolved) {
        region.failover = ids;
    }
    regions
}

fn unknown_region(d: &mut Diags<'_>, name: &str, span: &Span, known: &[String]) {
    let refs: Vec<&str> = known.iter().map(String::as_str).collect();
    let hint = closest(name, &refs).map_or_else(
        || format!("configured regions: {}", refs.join(", ")),
        |c| format!("did you mean `{c}`?"),
    );
    d.error(span, format!("unknown region `{name}`"), Some(hint));
}

fn parse_backend(d: &mut Diags<'_>, url: &str, span: &Span) -> Option<Backend> {
    let trimmed = url.trim_end_matches('/');
    let parsed: Result<http::Uri, _> = trimmed.parse();
    match parsed {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri.query().is_none() =>
        {
            Some(Backend {
                url: trimmed.to_owned(),
                scheme: uri.scheme_str().unwrap_or("http").to_owned(),
                authority: uri
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .unwrap_or_default(),
            })
        }
        _ => {
            d.error(
                span,
                format!("backend {url:?} is not an http(s) URL with a host"),
                Some("e.g. \"https://eu.backend.internal:8443\"".into()),
            );
            None
        }
    }
}

fn region_choice(
    d: &mut Diags<'_>,
    value: Option<At<String>>,
    names: &[(String, RegionId)],
) -> Option<RegionChoice> {
    match value {
        None => Some(RegionChoice::Deny),
        Some((v, _)) if v == "deny" => Some(RegionChoice::Deny),
        Some((v, span)) => match names.iter().find(|(n, _)| *n == v) {
            Some((_, id)) => Some(RegionChoice::Region(*id)),
            None => {
                let known: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
                unknown_region(d, &v, &span, &known);
                None
            }
        },
    }
}

fn read_residency(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    names: &[(String, RegionId)],
) -> Option<Residency> {
    let Some(mut t) = top.table(d, "residency") else {
        return Some(Residency {
            claim: "residency".into(),
            missing: RegionChoice::Deny,
            anonymous: RegionChoice::Deny,
        });
    };
    let claim = t
        .string(d, "claim")
        .map_or_else(|| "residency".to_owned(), |c| c.0);
    let missing = t.string(d, "missing");
    let missing = region_choice(d, missing, names);
    let anonymous = t.string(d, "anonymous");
    let anonymous = region_choice(d, anonymous, names);
    t.finish(d);
    Some(Residency {
        claim,
        missing: missing?,
        anonymous: anonymous?,
    })
}

fn read_route(
    mut t: Table<'_, '_>,
    d: &mut Diags<'_>,
    issuer_names: &[String],
    regions: &[(String, RegionId)],
    residency: Option<&Residency>,
    risk_env: &super::risk::RiskEnv<'_>,
) -> Option<(Route, Span)> {
    let span = t.span.clone();
    let path = t.req_string(d, "path", Some("a path prefix such as \"/api/orders\""));
    if let Some((p, span)) = &path
        && (!p.starts_with('/')
            || p.contains("//")
            || p.split('/').any(|s| s == "." || s == "..")
            || p.contains(['?', '#', '*']))
    {
        d.error(
            span,
            format!("route path {p:?} must start with `/` and be a plain prefix"),
            Some(
                "no dot segments, `//`, query, fragment or wildcard; prefixes match whole segments"
                    .into(),
            ),
        );
    }
    if let Some((p, span)) = &path {
        let options = crate::canonical::PathOptions {
            allow_semicolons: true,
        };
        match crate::canonical::canonical_path(p, options) {
            Ok(c) if c == *p => {}
            Ok(c) => d.error(
                span,
                format!("route path {p:?} is not in canonical form"),
                Some(format!(
                    "requests are matched on their RFC 3986 canonical path: write {c:?}"
                )),
            ),
            // Reported above, or as the parse error here.
            Err(e) if p.starts_with('/') => d.error(span, format!("route path {p:?}: {e}"), None),
            Err(_) => {}
        }
    }
    let host =
        t.string(d, "host")
            .and_then(|(h, span)| match crate::canonical::Authority::parse(&h) {
                Ok(a) if a.port.is_none() => Some(a.host),
                Ok(_) => {
                    d.error(
                        &span,
                        format!("route host {h:?} has a port"),
                        Some("routes match the host name; every port of it".into()),
                    );
                    None
                }
                Err(e) => {
                    d.error(&span, format!("route host {h:?}: {e}"), None);
                    None
                }
            });
    let auth = match t.string(d, "auth") {
        None => Some(AuthMode::Required),
        Some((v, span)) => match v.as_str() {
            "required" => Some(AuthMode::Required),
            "optional" => Some(AuthMode::Optional),
            "public" => Some(AuthMode::Public),
            other => {
                d.error(
                    &span,
                    format!("unknown auth mode `{other}`"),
                    Some("use \"required\", \"optional\" or \"public\"".into()),
                );
                None
            }
        },
    };
    let mut issuers = Vec::new();
    for (name, span) in t.strings(d, "issuers").map(|l| l.0).unwrap_or_default() {
        match issuer_names.iter().position(|n| *n == name) {
            Some(i) => issuers.push(IssuerId(i)),
            None => {
                let refs: Vec<&str> = issuer_names.iter().map(String::as_str).collect();
                let hint = closest(&name, &refs).map(|c| format!("did you mean `{c}`?"));
                d.error(&span, format!("unknown issuer `{name}`"), hint);
            }
        }
    }
    let list = |t: &mut Table<'_, '_>, d: &mut Diags<'_>, key: &'static str| -> Vec<String> {
        t.strings(d, key)
            .map(|(l, _)| l.into_iter().map(|(s, _)| s).collect())
            .unwrap_or_default()
    };
    let scopes_any = list(&mut t, d, "scopes_any");
    let scopes_all = list(&mut t, d, "scopes_all");
    let acr_values = list(&mut t, d, "acr_values");
    let amr = list(&mut t, d, "amr");
    let max_auth_age = t.duration(d, "max_auth_age").map(|v| v.0);
    let claims: Vec<ClaimRule> = t
        .tables(d, "claims")
        .into_iter()
        .filter_map(|ct| read_claim_rule(ct, d))
        .collect();
    let mut route_regions = Vec::new();
    for (name, span) in t.strings(d, "regions").map(|l| l.0).unwrap_or_default() {
        match regions.iter().find(|(n, _)| *n == name) {
            Some((_, id)) => route_regions.push(*id),
            None => {
                let known: Vec<String> = regions.iter().map(|(n, _)| n.clone()).collect();
                unknown_region(d, &name, &span, &known);
            }
        }
    }
    let risk = super::risk::read_route_risk(&mut t, d, risk_env);
    let agents = super::agents::read_route_agents(&mut t, d);
    let require_dpop = t.boolean(d, "require_dpop").is_some_and(|b| b.0);
    let rate_limits = super::limits::read_rate_limits(&mut t, d, auth == Some(AuthMode::Public));
    let mut login = Vec::new();
    for (name, span) in t.strings(d, "login").map(|l| l.0).unwrap_or_default() {
        match issuer_names.iter().position(|n| *n == name) {
            Some(i) => login.push(IssuerId(i)),
            None => {
                let refs: Vec<&str> = issuer_names.iter().map(String::as_str).collect();
                let hint = closest(&name, &refs).map(|c| format!("did you mean `{c}`?"));
                d.error(&span, format!("unknown login provider `{name}`"), hint);
            }
        }
    }
    let consent = super::consent::read_route_consent(&mut t, d);
    t.finish(d);
    let route = Route {
        path: path?.0,
        host,
        auth: auth?,
        issuers,
        scopes_any,
        scopes_all,
        claims,
        acr_values,
        amr,
        max_auth_age,
        regions: route_regions,
        risk,
        agents,
        require_dpop,
        rate_limits,
        login,
        consent,
    };
    if route.auth == AuthMode::Public {
        if route.has_rules() || !route.issuers.is_empty() {
            d.error(&span, format!("public route {:?} has authorization rules that can never apply", route.path), Some("use auth = \"required\" (or \"optional\") for routes with scope, claim or acr rules".into()));
        }
        // A public request has no identity, so it is served in the anonymous region.
        if let Some(res) = residency {
            match res.anonymous {
                RegionChoice::Deny => d.error(&span, format!("public route {:?} can never be served: residency.anonymous = \"deny\"", route.path), Some("set residency.anonymous to a region, or make the route auth = \"required\"".into())),
                RegionChoice::Region(id) if !route.regions.is_empty() && !route.regions.contains(&id) => d.error(&span, format!("public route {:?} can never be served: its regions exclude the anonymous region", route.path), Some("add the residency.anonymous region to the route's regions".into())),
                RegionChoice::Region(_) => {}
            }
        }
    }
    Some((route, span))
}

/// Headers that can never carry identity (they mean something to the hop or the backend).
fn reserved_identity_header(header: &HeaderName) -> bool {
    matches!(
        header.as_str(),
        "authorization" | "host" | "cookie" | "content-length" | "transfer-encoding" | "connection"
    )
}

fn read_claim_rule(mut t: Table<'_, '_>, d: &mut Diags<'_>) -> Option<ClaimRule> {
    let name = t.string(d, "name");
    let path = t.string(d, "path");
    let path = match (name, path) {
        (Some((n, _)), None) => Some(ClaimPath::member(&n)),
        (None, Some((p, span))) => ClaimPath::parse(&p)
            .map_err(|e| {
                d.error(
                    &span,
                    format!("claim path {p:?}: {e}"),
                    Some("e.g. \"realm_access.roles\", \"resource_access[\\\"app\\\"].roles\", \"groups[0]\"".into()),
                )
            })
            .ok(),
        _ => {
            d.error(
                &t.span,
                "a claim rule names its claim with exactly one of `name` (a top-level claim) or `path` (nested)",
                None,
            );
            None
        }
    };
    let equals = t.get("equals").and_then(|v| {
        toml_to_json(v.get_ref()).or_else(|| {
            d.error(
                &v.span(),
                "`equals` must be a string, integer or boolean",
                None,
            );
            None
        })
    });
    let contains = t.string(d, "contains");
    let span = t.span.clone();
    t.finish(d);
    let test = match (equals, contains) {
        (Some(v), None) => ClaimTest::Equals(v),
        (None, Some((c, _))) => ClaimTest::Contains(c),
        _ => {
            d.error(
                &span,
                "a claim rule needs exactly one of `equals` or `contains`",
                None,
            );
            return None;
        }
    };
    Some(ClaimRule { path: path?, test })
}

fn toml_to_json(v: &DeValue<'_>) -> Option<Value> {
    match v {
        DeValue::String(s) => Some(Value::String(s.to_string())),
        DeValue::Boolean(b) => Some(Value::Bool(*b)),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(Value::from),
        _ => None,
    }
}

fn check_duplicate_routes<'a>(d: &mut Diags<'_>, routes: impl Iterator<Item = &'a (Route, Span)>) {
    let mut seen: BTreeMap<(Option<String>, String), ()> = BTreeMap::new();
    for (route, span) in routes {
        if seen
            .insert((route.host.clone(), route.path.clone()), ())
            .is_some()
        {
            d.error(
                span,
                format!("route {:?} is defined twice for the same host", route.path),
                None,
            );
        }
    }
}

fn read_identity(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Option<Identity> {
    let mut identity = Identity {
        strip: Vec::new(),
        headers: Vec::new(),
        forward_authorization: true,
    };
    let Some(mut t) = top.table(d, "identity") else {
        return Some(identity);
    };
    let mut ok = true;
    for (pattern, span) in t.strings(d, "strip").map(|l| l.0).unwrap_or_default() {
        let (body, prefix) = match pattern.strip_suffix('*') {
            Some(b) => (b, true),
            None => (pattern.as_str(), false),
        };
        let text: String = body
            .bytes()
            .map(|b| char::from(normalize_header_byte(b)))
            .collect();
        if body.is_empty() || HeaderName::from_bytes(text.as_bytes()).is_err() || text.contains('*')
        {
            d.error(
                &span,
                format!(
                    "strip pattern {pattern:?} is not a header name (optionally ending in `*`)"
                ),
                None,
            );
            ok = false;
        } else {
            identity.strip.push(HeaderPattern { text, prefix });
        }
    }
    if let Some(headers) = t.table(d, "headers") {
        for ((name, span), value) in headers.entries() {
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                d.error(&span, format!("`{name}` is not a valid header name"), None);
                ok = false;
                continue;
            };
            // `{ path = "realm_access.roles" }`: a value inside nested claims.
            if let DeValue::Table(table) = value.get_ref() {
                let path = table
                    .get("path")
                    .filter(|_| table.len() == 1)
                    .and_then(|p| p.get_ref().as_str());
                match path.map(ClaimPath::parse) {
                    Some(Ok(path)) => {
                        if reserved_identity_header(&header) {
                            d.error(&span, format!("`{name}` cannot carry identity"), None);
                            ok = false;
                        } else {
                            identity
                                .headers
                                .push((header, IdentitySource::ClaimPath(path)));
                        }
                    }
                    Some(Err(e)) => {
                        d.error(
                            &value.span(),
                            format!("identity header `{name}`: claim path: {e}"),
                            None,
                        );
                        ok = false;
                    }
                    None => {
                        d.error(
                            &value.span(),
                            format!("identity header `{name}`: a table names a nested claim with `path` only"),
                            Some("e.g. { path = \"realm_access.roles\" }".into()),
                        );
                        ok = false;
                    }
                }
                continue;
            }
            let Some(source) = value.get_ref().as_str() else {
                d.error(
                    &value.span(),
                    format!("identity header `{name}` must name a claim as a string"),
                    Some("e.g. \"sub\", \"scope\", \"region\", \"email\", or { path = \"realm_access.roles\" }".into()),
                );
                ok = false;
                continue;
            };
            let source = match source {
                "region" => IdentitySource::Region,
                "jurisdiction" => IdentitySource::Jurisdiction,
                "scope" => IdentitySource::Scope,
                "issuer" => IdentitySource::IssuerName,
                "actor" => IdentitySource::Actor,
                other => match other.strip_prefix("claims.") {
                    Some(claim) if !claim.is_empty() => IdentitySource::Claim(claim.to_owned()),
                    Some(_) | None if other.is_empty() => {
                        d.error(
                            &value.span(),
                            format!("identity header `{name}` names no claim"),
                            None,
                        );
                        ok = false;
                        continue;
                    }
                    _ => IdentitySource::Claim(other.to_owned()),
                },
            };
            if reserved_identity_header(&header) {
                d.error(
                    &span,
                    format!("`{name}` cannot carry identity"),
                    Some("pick an x- header such as x-user-id".into()),
                );
                ok = false;
                continue;
            }
            identity.headers.push((header, source));
        }
    }
    if let Some((b, _)) = t.boolean(d, "forward_authorization") {
        identity.forward_authorization = b;
    }
    t.finish(d);
    ok.then_some(identity)
}

fn read_audit(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> Option<AuditConfig> {
    let hint =
        "a base64url file of at least 32 random bytes, shared by all gateways so pseudonyms match";
    let Some(mut t) = top.table(d, "audit") else {
        d.error(
            &(0..0),
            "no [audit]: subjects in audit records need a pseudonymisation key",
            Some(format!(
                "add [audit] subject_key_file = \"secrets/audit.key\": {hint}"
            )),
        );
        return None;
    };
    let file = t.req_string(d, "subject_key_file", Some(hint));
    t.finish(d);
    let (path, span) = file?;
    let bytes = read_file(d, files, &path, &span)?;
    match b64::decode(String::from_utf8_lossy(&bytes).trim()) {
        Some(key) if key.len() >= 32 => Some(AuditConfig { subject_key: key }),
        Some(key) => {
            d.error(
                &span,
                format!(
                    "audit subject key is {} bytes, at least 32 are needed",
                    key.len()
                ),
                Some(hint.into()),
            );
            None
        }
        None => {
            d.error(
                &span,
                format!("audit subject key {path:?} is not base64url"),
                Some(hint.into()),
            );
            None
        }
    }
}

fn read_limits(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Limits {
    let mut limits = Limits {
        max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
    };
    if let Some(mut t) = top.table(d, "limits") {
        if let Some((n, span)) = t.integer(d, "max_token_bytes") {
            match usize::try_from(n) {
                Ok(n) if (512..=65_536).contains(&n) => limits.max_token_bytes = n,
                _ => d.error(
                    &span,
                    format!("`limits.max_token_bytes` = {n} is outside 512..=65536"),
                    None,
                ),
            }
        }
        if let Some((n, span)) = t.integer(d, "max_body_bytes") {
            match u64::try_from(n) {
                Ok(n) => limits.max_body_bytes = n,
                Err(_) => d.error(
                    &span,
                    format!("`limits.max_body_bytes` = {n} must not be negative"),
                    None,
                ),
            }
        }
        t.finish(d);
    }
    limits
}
