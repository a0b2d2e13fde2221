//! The risk sections: `[plugin.NAME]`, a route's `[route.risk]` and `[client]` (the
//! route's bot `checks` are read by `super::bot`).

use serde_json::{Map, Number, Value};
use toml::de::DeValue;

use super::model::*;
use super::reader::{Diags, Table, closest};

/// Headers a plugin may never see: they carry credentials.
const SECRET_HEADERS: [&str; 4] = ["authorization", "cookie", "proxy-authorization", "dpop"];

pub(super) fn read_plugins(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Vec<PluginConfig> {
    let Some(table) = top.table(d, "plugin") else {
        return Vec::new();
    };
    let mut plugins = Vec::new();
    let mut entries: Vec<_> = table.entries().collect();
    entries.sort_by(|a, b| a.0.0.cmp(b.0.0));
    for ((name, name_span), value) in entries {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            d.error(
                &name_span,
                format!("plugin name `{name}` must be lowercase letters, digits, `-` or `_`"),
                None,
            );
        }
        let Some(mut t) = Table::of(value, format!("plugin.{name}"), d) else {
            continue;
        };
        let path = t.req_string(
            d,
            "path",
            Some("the plugin component, e.g. path = \"plugins/ip_reputation.wasm\""),
        );
        let on_error = match t.string(d, "on_error") {
            None => Some(FailPolicy::Deny),
            Some((v, span)) => match v.as_str() {
                "deny" => Some(FailPolicy::Deny),
                "allow" => Some(FailPolicy::Allow),
                other => {
                    d.error(
                        &span,
                        format!("unknown on_error policy `{other}`"),
                        Some("use \"deny\" (fail closed, the default) or \"allow\"".into()),
                    );
                    None
                }
            },
        };
        let deadline = match t.duration(d, "deadline") {
            None => DEFAULT_PLUGIN_DEADLINE,
            Some((v, span)) => {
                if !PLUGIN_DEADLINE_BOUNDS.contains(&v) {
                    d.error(
                        &span,
                        format!("plugin deadline {v:?} is outside 1ms..=1s"),
                        Some("plugins run on the request path; a few ms is typical".into()),
                    );
                }
                v
            }
        };
        let memory_bytes = match t.integer(d, "memory_mb") {
            None => DEFAULT_PLUGIN_MEMORY,
            Some((n, span)) => match u64::try_from(n) {
                Ok(n) if PLUGIN_MEMORY_MB_BOUNDS.contains(&n) => n << 20,
                _ => {
                    d.error(
                        &span,
                        format!("`plugin.{name}.memory_mb` = {n} is outside 1..=64"),
                        None,
                    );
                    DEFAULT_PLUGIN_MEMORY
                }
            },
        };
        let fuel = t
            .integer(d, "fuel")
            .and_then(|(n, span)| match u64::try_from(n) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    d.error(
                        &span,
                        format!("`plugin.{name}.fuel` must be positive"),
                        None,
                    );
                    None
                }
            });
        let weight = match t.get("weight") {
            None => 1.0,
            Some(v) => match number(v.get_ref()) {
                Some(w) if (0.0..=10.0).contains(&w) => w,
                _ => {
                    d.error(
                        &v.span(),
                        format!("`plugin.{name}.weight` must be a number in 0..=10"),
                        None,
                    );
                    1.0
                }
            },
        };
        let mut headers = Vec::new();
        for (h, span) in t.strings(d, "headers").map(|l| l.0).unwrap_or_default() {
            let lower = h.to_ascii_lowercase();
            if SECRET_HEADERS.contains(&lower.as_str()) {
                d.error(
                    &span,
                    format!("plugins may not see the `{lower}` header: it carries credentials"),
                    None,
                );
            } else if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                d.error(&span, format!("`{h}` is not a header name"), None);
            } else {
                headers.push(lower);
            }
        }
        let config_json = match t.get("config") {
            None => "{}".to_owned(),
            Some(v) => match v.get_ref() {
                DeValue::Table(_) => toml_to_json(v.get_ref()).to_string(),
                other => {
                    d.error(
                        &v.span(),
                        format!(
                            "`plugin.{name}.config` must be a table, found {}",
                            other.type_str()
                        ),
                        None,
                    );
                    "{}".to_owned()
                }
            },
        };
        t.finish(d);
        // Kept even when a value was wrong (already reported), so routes naming the plugin
        // do not report it as unknown too.
        plugins.push(PluginConfig {
            name: name.to_owned(),
            path: path.map(|p| p.0).unwrap_or_default(),
            on_error: on_error.unwrap_or(FailPolicy::Deny),
            deadline,
            memory_bytes,
            fuel,
            weight,
            headers,
            config_json,
            component_sha256: None,
        });
    }
    plugins
}

fn number(v: &DeValue<'_>) -> Option<f64> {
    match v {
        DeValue::Float(f) => f.as_str().replace('_', "").parse().ok(),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(|i| i as f64),
        _ => None,
    }
}

/// Any TOML value as JSON (datetimes as their RFC 3339 text).
fn toml_to_json(v: &DeValue<'_>) -> Value {
    match v {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(Value::from)
            .unwrap_or(Value::Null),
        DeValue::Float(_) => number(v)
            .and_then(Number::from_f64)
            .map_or(Value::Null, Value::Number),
        DeValue::Datetime(dt) => Value::String(dt.to_string()),
        DeValue::Array(a) => Value::Array(a.iter().map(|x| toml_to_json(x.get_ref())).collect()),
        DeValue::Table(t) => Value::Object(
            t.iter()
                .map(|(k, x)| (k.get_ref().to_string(), toml_to_json(x.get_ref())))
                .collect::<Map<String, Value>>(),
        ),
    }
}

/// What a route's `[route.risk]` is read against.
pub(super) struct RiskEnv<'a> {
    /// The configured plugins.
    pub plugins: &'a [PluginConfig],
    /// `[bot]`: the lists and verified bots `checks` need.
    pub bot: &'a BotConfig,
    /// `[session.anomaly]`: what `[route.risk.anomaly]` overrides.
    pub anomaly: &'a AnomalyWeights,
}

pub(super) fn read_route_risk(
    route: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    env: &RiskEnv<'_>,
) -> Option<RouteRisk> {
    let (plugins, bot) = (env.plugins, env.bot);
    let mut t = route.table(d, "risk")?;
    let span = t.span.clone();
    let mut ids = Vec::new();
    for (name, span) in t.strings(d, "plugins").map(|l| l.0).unwrap_or_default() {
        match plugins.iter().position(|p| p.name == name) {
            Some(i) if ids.contains(&PluginId(i)) => {
                d.error(&span, format!("plugin `{name}` is listed twice"), None)
            }
            Some(i) => ids.push(PluginId(i)),
            None => {
                let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
                let hint = closest(&name, &names)
                    .map(|c| format!("did you mean `{c}`?"))
                    .or_else(|| Some(format!("declare it as [plugin.{name}] with a path")));
                d.error(&span, format!("unknown plugin `{name}`"), hint);
            }
        }
    }
    let combine = match t.string(d, "combine") {
        None => Combine::Max,
        Some((v, span)) => match v.as_str() {
            "max" => Combine::Max,
            "weighted" => Combine::WeightedSum,
            other => {
                d.error(
                    &span,
                    format!("unknown combine mode `{other}`"),
                    Some("use \"max\" or \"weighted\"".into()),
                );
                Combine::Max
            }
        },
    };
    let threshold = |t: &mut Table<'_, '_>, d: &mut Diags<'_>, key: &'static str| {
        t.integer(d, key)
            .and_then(|(n, span)| match u8::try_from(n) {
                Ok(n) if (1..=100).contains(&n) => Some(n),
                _ => {
                    d.error(
                        &span,
                        format!("`risk.{key}` = {n} is outside 1..=100"),
                        None,
                    );
                    None
                }
            })
    };
    let step_up = threshold(&mut t, d, "step_up");
    let challenge = threshold(&mut t, d, "challenge");
    let deny = threshold(&mut t, d, "deny");
    let revoke = threshold(&mut t, d, "revoke");
    let step_up_acr: Vec<String> = t
        .strings(d, "step_up_acr")
        .map(|(l, _)| l.into_iter().map(|(s, _)| s).collect())
        .unwrap_or_default();
    let plugin_actions = t.boolean(d, "plugin_actions").is_none_or(|b| b.0);
    let checks = super::bot::read_checks(&mut t, d, bot);
    let anomaly = t.table(d, "anomaly").map(|mut a| {
        let mut weights = env.anomaly.clone();
        super::login::read_anomaly(&mut a, d, "risk.anomaly", &mut weights);
        a.finish(d);
        weights
    });
    if anomaly.is_some() && !checks.contains(&BotCheck::SessionAnomaly) {
        d.error(
            &span,
            "`[route.risk.anomaly]` weighs the `session_anomaly` check, which the route does not run",
            Some("add \"session_anomaly\" to checks, or remove the table".into()),
        );
    }
    t.finish(d);
    // Either kind of scorer makes a risk phase; built-in checks need no plugin.
    if ids.is_empty() && checks.is_empty() {
        d.error(
            &span,
            "`risk` lists no plugins and no checks",
            Some(
                "add plugins = [\"name\", …] and/or checks = [\"automation\", …], or remove the table"
                    .into(),
            ),
        );
    }
    let ordered = [step_up, challenge, deny];
    let set: Vec<u8> = ordered.iter().flatten().copied().collect();
    if set.windows(2).any(|w| matches!(w, [a, b] if a >= b)) {
        d.error(
            &span,
            "risk thresholds must rise: step_up < challenge < deny",
            None,
        );
    }
    if step_up.is_some() && step_up_acr.is_empty() {
        d.error(
            &span,
            "a `step_up` threshold needs `step_up_acr`: the acr values a caller must reach",
            Some("e.g. step_up_acr = [\"urn:example:mfa\"]".into()),
        );
    }
    Some(RouteRisk {
        plugins: ids,
        combine,
        step_up,
        challenge,
        deny,
        revoke,
        step_up_acr,
        plugin_actions,
        checks,
        anomaly,
    })
}

pub(super) fn read_client(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> ClientConfig {
    let mut client = ClientConfig::default();
    let Some(mut t) = top.table(d, "client") else {
        return client;
    };
    for (text, span) in t
        .strings(d, "trusted_proxies")
        .map(|l| l.0)
        .unwrap_or_default()
    {
        match IpNet::parse(&text) {
            Ok(n) => client.trusted_proxies.push(n),
            Err(e) => d.error(&span, e, None),
        }
    }
    let header = |t: &mut Table<'_, '_>, d: &mut Diags<'_>, key: &'static str| {
        t.string(d, key).and_then(|(h, span)| {
            let lower = h.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_ok() {
                Some(lower)
            } else {
                d.error(&span, format!("`{h}` is not a header name"), None);
                None
            }
        })
    };
    client.ip_header = header(&mut t, d, "ip_header");
    client.country_header = header(&mut t, d, "country_header");
    client.asn_header = header(&mut t, d, "asn_header");
    client.peer_header = header(&mut t, d, "peer_header");
    client.latitude_header = header(&mut t, d, "latitude_header");
    client.longitude_header = header(&mut t, d, "longitude_header");
    let span = t.span.clone();
    t.finish(d);
    if client.latitude_header.is_some() != client.longitude_header.is_some() {
        d.error(
            &span,
            "[client] names one of latitude_header and longitude_header: give both or neither",
            Some("e.g. latitude_header = \"cloudfront-viewer-latitude\", longitude_header = \"cloudfront-viewer-longitude\"".into()),
        );
    }
    let uses_headers = client.ip_header.is_some()
        || client.country_header.is_some()
        || client.asn_header.is_some()
        || client.latitude_header.is_some();
    if uses_headers && client.trusted_proxies.is_empty() {
        d.error(
            &span,
            "client headers are set but no trusted_proxies: they would never be believed",
            Some(
                "list the CDN or load balancer networks, e.g. trusted_proxies = [\"10.0.0.0/8\"]"
                    .into(),
            ),
        );
    }
    client
}
