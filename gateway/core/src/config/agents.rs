//! `[route.agents]`, `require_dpop`, `[gateway_token]` and `[dpop]`.

use std::time::Duration;

use http::HeaderName;

use super::ConfigFiles;
use super::model::*;
use super::reader::{Diags, Table};
use crate::b64;

pub(super) fn read_route_agents(
    route: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
) -> Option<RouteAgents> {
    let mut t = route.table(d, "agents")?;
    let list = |t: &mut Table<'_, '_>, d: &mut Diags<'_>, key: &'static str| -> Vec<String> {
        t.strings(d, key)
            .map(|(l, _)| l.into_iter().map(|(s, _)| s).collect())
            .unwrap_or_default()
    };
    let actors = list(&mut t, d, "actors");
    let scopes = match t.strings(d, "scopes") {
        Some((l, _)) => l.into_iter().map(|(s, _)| s).collect(),
        None => {
            t.missing(
                d,
                "scopes",
                Some("the scopes agents may exercise here, e.g. scopes = [\"orders:read\"] (empty: none)".into()),
            );
            Vec::new()
        }
    };
    let max_depth = match t.integer(d, "max_depth") {
        None => 1,
        Some((n, span)) => match usize::try_from(n) {
            Ok(n) if (1..=5).contains(&n) => n,
            _ => {
                d.error(
                    &span,
                    format!("`agents.max_depth` = {n} is outside 1..=5"),
                    None,
                );
                1
            }
        },
    };
    let workload_header = t.string(d, "workload_header").and_then(|(h, span)| {
        HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
            .map_err(|_| d.error(&span, format!("`{h}` is not a header name"), None))
            .ok()
    });
    let require_workload = t.boolean(d, "require_workload").is_some_and(|b| b.0);
    let span = t.span.clone();
    t.finish(d);
    if require_workload && workload_header.is_none() {
        d.error(
            &span,
            "`require_workload` needs `workload_header`",
            Some("e.g. workload_header = \"x-workload-token\"".into()),
        );
    }
    Some(RouteAgents {
        actors,
        scopes,
        max_depth,
        workload_header,
        require_workload,
    })
}

pub(super) fn read_gateway_token(
    top: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    files: &dyn ConfigFiles,
) -> Option<GatewayToken> {
    let mut t = top.table(d, "gateway_token")?;
    let header = t
        .req_string(d, "header", Some("e.g. header = \"x-portcullis-identity\""))
        .and_then(|(h, span)| {
            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| d.error(&span, format!("`{h}` is not a header name"), None))
                .ok()
        });
    let issuer = t.req_string(
        d,
        "issuer",
        Some("the `iss` backends expect, e.g. \"https://gateway.example\""),
    );
    let ttl = match t.duration(d, "ttl") {
        None => Duration::from_secs(30),
        Some((v, span)) => {
            if v < Duration::from_secs(1) || v > Duration::from_secs(60) {
                d.error(
                    &span,
                    format!("gateway token ttl {v:?} is outside 1s..=60s"),
                    None,
                );
            }
            v
        }
    };
    if let Some((alg, span)) = t.string(d, "algorithm")
        && alg != "EdDSA"
    {
        d.error(
            &span,
            format!("gateway tokens are signed with EdDSA, not `{alg}`"),
            None,
        );
    }
    let mut keys = Vec::new();
    match t.strings(d, "key_files") {
        Some((list, span)) if list.is_empty() => {
            d.error(&span, "`key_files` is empty: nothing to sign with", None)
        }
        Some((list, _)) => {
            for (path, span) in list {
                match files.read(&path) {
                    Err(e) => d.error(&span, format!("gateway key {path:?}: {e}"), None),
                    Ok(bytes) => match gateway_key(&bytes) {
                        Ok(k) => keys.push(k),
                        Err(e) => d.error(
                            &span,
                            format!("gateway key {path:?}: {e}"),
                            Some("32 random bytes, base64url: `openssl rand 32 | basenc --base64url | tr -d =`".into()),
                        ),
                    },
                }
            }
        }
        None => t.missing(
            d,
            "key_files",
            Some("Ed25519 seeds; the first signs, all are published: key_files = [\"secrets/gw-2.key\", \"secrets/gw-1.key\"]".into()),
        ),
    }
    t.finish(d);
    Some(GatewayToken {
        header: header?,
        issuer: issuer?.0,
        ttl,
        keys,
    })
}

/// An Ed25519 key from a file holding its 32-byte seed, base64url.
fn gateway_key(bytes: &[u8]) -> Result<GatewayKey, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
    let seed = b64::decode(text.trim()).ok_or_else(|| "not base64url".to_owned())?;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|v: Vec<u8>| format!("{} bytes, an Ed25519 seed has 32", v.len()))?;
    let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
    let public = pair.pk.to_vec();
    Ok(GatewayKey {
        kid: crate::jwk::okp_thumbprint(&public),
        seed: seed.to_vec(),
        public,
    })
}

pub(super) fn read_dpop(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> DpopConfig {
    let mut cfg = DpopConfig::default();
    let Some(mut t) = top.table(d, "dpop") else {
        return cfg;
    };
    if let Some((scheme, span)) = t.string(d, "scheme") {
        if scheme == "https" || scheme == "http" {
            cfg.scheme = scheme;
        } else {
            d.error(
                &span,
                format!("dpop scheme `{scheme}` must be https or http"),
                None,
            );
        }
    }
    if let Some((v, span)) = t.duration(d, "max_age") {
        if v > Duration::from_secs(600) {
            d.error(&span, format!("dpop max_age {v:?} is over 10m"), None);
        }
        cfg.max_age = v;
    }
    cfg.require_nonce = t.boolean(d, "require_nonce").is_some_and(|b| b.0);
    t.finish(d);
    cfg
}
