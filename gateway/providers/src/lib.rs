//! Portable providers of the `portcullis:gateway` host services, for self-contained edge
//! bundles (`portcullis bundle`): composed with the gateway component, they leave a
//! component that imports only `wasi:*` and runs on any `wasi:http` host.
//!
//! - `config`: the snapshot fixed at bundle time (from the generated `embedded` component);
//! - `keys`: signatures checked in the guest with the pure-Rust verifier; remote key sets
//!   and discovery documents fetched at run time over `wasi:http` and shared between
//!   instances through the key-value store ([`keysets`]), or baked in at bundle time;
//! - `state`: the runtime's standard `wasi:keyvalue` store ([`kv`]), shared by every
//!   instance the runtime connects to it: rate limits, one-time values (DPoP proofs,
//!   challenge answers), sessions and login state; a store that cannot be opened or
//!   answers with errors is unavailable state (`on_unavailable`, fail closed);
//! - `health`: every backend healthy; `client`: no peer address (wasi:http does not say
//!   who is connected); the provider's token endpoint and site verification over
//!   `wasi:http` ([`fetch`]);
//! - `audit`: one JSON line per decision on stderr;
//! - `risk`: the end of the plugin chain — plugins composed into the bundle answer in the
//!   links in front of it (`gateway/plugin-link`); any plugin that reaches this point is not
//!   in the bundle and answers with a failure, so its `on_error` policy decides;
//! - the plugins' own host services (`portcullis:plugin/state`, `log`, `clock`): the same
//!   key-value store, stderr, the wall clock.
#![deny(unsafe_code)]

mod fetch;
mod keysets;
mod kv;

mod bindings;

use bindings::exports::portcullis::gateway::{audit, client, config, health, keys, risk, state};
use bindings::exports::portcullis::plugin::{
    clock as plugin_clock, log as plugin_log, state as plugin_state,
};
use bindings::portcullis::bundle::embedded;
use keysets::{loaded, now};
use portcullis_core::authenticate::{AuthFailure, IssuedKind};
use portcullis_core::ports::FormEndpoint;
use portcullis_core::{IssuerId, VerifiedIdentity};

fn now_ms() -> u64 {
    now().unix_millis()
}

fn failure(f: AuthFailure) -> keys::Failure {
    keys::Failure {
        reason: f.reason.code().to_owned(),
        detail: f.detail,
        issuer: f.issuer.and_then(|i| u32::try_from(i.0).ok()),
    }
}

fn unavailable(detail: String) -> keys::Failure {
    keys::Failure {
        reason: portcullis_core::Reason::KeysUnavailable.code().to_owned(),
        detail,
        issuer: None,
    }
}

/// The exported services.
struct Providers;

impl config::Guest for Providers {
    fn snapshot() -> Vec<u8> {
        embedded::snapshot()
    }

    fn source() -> String {
        String::new()
    }

    fn read_file(path: String) -> Result<Vec<u8>, String> {
        Err(format!(
            "{path}: an edge bundle carries its configuration as a snapshot, not files"
        ))
    }
}

fn verified(id: VerifiedIdentity) -> keys::Verified {
    keys::Verified {
        issuer: u32::try_from(id.issuer.0).unwrap_or(u32::MAX),
        claims: serde_json::Value::Object(id.claims).to_string(),
    }
}

impl keys::Guest for Providers {
    fn authenticate(
        token: String,
        route_issuers: Vec<u32>,
    ) -> Result<keys::Verified, keys::Failure> {
        let l = loaded().map_err(unavailable)?;
        let issuers: Vec<IssuerId> = route_issuers
            .iter()
            .map(|i| IssuerId(*i as usize))
            .collect();
        l.authenticate(&token, &issuers)
            .map(|(issuer, claims)| keys::Verified {
                issuer: u32::try_from(issuer.0).unwrap_or(u32::MAX),
                claims,
            })
            .map_err(failure)
    }

    fn endpoints(issuer: u32) -> Result<keys::ProviderEndpoints, String> {
        let e = loaded()?.endpoints(IssuerId(issuer as usize))?;
        Ok(keys::ProviderEndpoints {
            authorization: e.authorization,
            token: e.token,
            end_session: e.end_session,
            pushed_authorization: e.pushed_authorization,
            introspection: e.introspection,
        })
    }

    fn verify_issued(
        token: String,
        issuer: u32,
        client_id: String,
        kind: keys::IssuedKind,
    ) -> Result<keys::Verified, keys::Failure> {
        let l = loaded().map_err(unavailable)?;
        let kind = match kind {
            keys::IssuedKind::IdToken => IssuedKind::IdToken,
            keys::IssuedKind::LogoutToken => IssuedKind::LogoutToken,
        };
        l.verify_issued(&token, IssuerId(issuer as usize), &client_id, kind)
            .map(verified)
            .map_err(failure)
    }

    fn verify_with_key(
        alg: String,
        key: keys::PublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        use portcullis_core::crypto::Curve;
        use portcullis_core::{KeyMaterial, PortableVerifier, SignatureVerifier as _};
        let Some(alg) = portcullis_core::Algorithm::from_name(&alg) else {
            return false;
        };
        let material = match key {
            keys::PublicKey::Rsa(k) => KeyMaterial::Rsa { n: k.n, e: k.e },
            keys::PublicKey::Ec(k) => KeyMaterial::Ec {
                curve: match k.curve {
                    keys::Curve::P256 => Curve::P256,
                    keys::Curve::P384 => Curve::P384,
                },
                x: k.x,
                y: k.y,
            },
            keys::PublicKey::Ed25519(x) => KeyMaterial::Ed25519 { x },
        };
        PortableVerifier
            .prepare(&material)
            .is_ok_and(|k| PortableVerifier.verify(alg, &k, &message, &signature))
    }

    fn sign_as_client(thumbprint: String, input: Vec<u8>) -> Result<Vec<u8>, String> {
        loaded()?
            .config
            .client_key(&thumbprint)
            .ok_or_else(|| format!("no configured client key has the thumbprint {thumbprint:?}"))?
            .sign(&input)
    }

    fn sign_as_gateway(kid: String, input: Vec<u8>) -> Option<Vec<u8>> {
        let l = loaded().ok()?;
        portcullis_core::gateway_token::sign(l.config.gateway_key(&kid)?, &input)
    }
}

impl health::Guest for Providers {
    fn is_healthy(_region: u32, _index: u32) -> bool {
        true
    }
}

/// A replay check's answer under `[state] on_unavailable`, as the native host gives it: an
/// unreachable store counts the value as new under `"allow"` and is an error under
/// `"deny"` (the core refuses with 503 `state_unavailable`).
fn replay_policy(answer: Result<bool, String>) -> Result<bool, String> {
    match answer {
        Ok(first) => Ok(first),
        Err(e) => match loaded() {
            Ok(l)
                if l.config.state.on_unavailable == portcullis_core::config::FailPolicy::Allow =>
            {
                Ok(true)
            }
            _ => Err(e),
        },
    }
}

impl state::Guest for Providers {
    fn get(key: String) -> Option<Vec<u8>> {
        kv::get(&key, now_ms()).unwrap_or_else(|e| {
            eprintln!("{}", serde_json::json!({"state_error": e, "op": "get"}));
            None
        })
    }

    fn delete(key: String) -> Result<(), String> {
        kv::delete(&key)
    }

    fn set(key: String, value: Vec<u8>, ttl_ms: u64) {
        if let Err(e) = kv::set(&key, &value, now_ms(), ttl_ms) {
            eprintln!("{}", serde_json::json!({"state_error": e, "op": "set"}));
        }
    }

    fn increment(key: String, delta: i64, ttl_ms: u64) -> i64 {
        // An unreachable store reads as "seen very often": callers counting towards a
        // limit then refuse rather than allow.
        kv::increment(&key, delta, now_ms(), ttl_ms).unwrap_or(i64::MAX)
    }

    fn first_use(key: String, ttl_ms: u64) -> Result<bool, String> {
        replay_policy(kv::first_use(&key, now_ms(), ttl_ms))
    }

    fn rate_limit(checks: Vec<state::LimitCheck>) -> Result<Vec<state::LimitStatus>, String> {
        let checks: Vec<portcullis_core::limits::LimitCheck> = checks
            .into_iter()
            .map(|c| portcullis_core::limits::LimitCheck {
                key: c.key,
                interval_us: c.interval_us,
                burst: c.burst,
            })
            .collect();
        let now_us = now().unix_micros();
        let statuses = kv::rate_limit(&checks, now_us)?;
        Ok(statuses
            .into_iter()
            .map(|s| state::LimitStatus {
                allowed: s.allowed,
                remaining: s.remaining,
                retry_after_us: s.retry_after_us,
                reset_us: s.reset_us,
            })
            .collect())
    }
}

impl client::Guest for Providers {
    fn peer() -> Option<String> {
        // wasi:http does not tell a component who is connected.
        None
    }

    fn verify_site_token(site_token: String, remote_ip: Option<String>) -> Result<bool, String> {
        let l = loaded()?;
        let site = l
            .config
            .challenge
            .site_verify
            .as_ref()
            .ok_or("no site-verification service is configured")?;
        let ip = remote_ip.and_then(|ip| ip.parse().ok());
        let body = portcullis_core::siteverify_body(&site.secret, &site_token, ip);
        let got = fetch::send(&fetch::Call {
            post: true,
            url: &site.verify_url,
            headers: &[("content-type", "application/x-www-form-urlencoded")],
            body: body.as_bytes(),
            timeout: FORM_TIMEOUT,
            max_body: MAX_SITEVERIFY_ANSWER,
        })?;
        if !(200..300).contains(&got.status) {
            return Err(format!("{} answered {}", site.verify_url, got.status));
        }
        portcullis_core::siteverify_result(&got.body)
    }

    fn token_request(
        issuer: u32,
        endpoint: client::FormEndpoint,
        authorization: String,
        body: String,
    ) -> Result<(u16, Vec<u8>), String> {
        let endpoints = loaded()?.endpoints(IssuerId(issuer as usize))?;
        let endpoint = match endpoint {
            client::FormEndpoint::Token => FormEndpoint::Token,
            client::FormEndpoint::PushedAuthorization => FormEndpoint::PushedAuthorization,
            client::FormEndpoint::Introspection => FormEndpoint::Introspection,
        };
        let url = endpoint
            .url(&endpoints)
            .ok_or_else(|| format!("the provider offers no {} endpoint", endpoint.name()))?;
        // An empty `authorization`: the client authenticates in the body.
        let all = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
            ("authorization", authorization.as_str()),
        ];
        let headers = if authorization.is_empty() {
            &all[..2]
        } else {
            &all[..]
        };
        let got = fetch::send(&fetch::Call {
            post: true,
            url,
            headers,
            body: body.as_bytes(),
            timeout: FORM_TIMEOUT,
            max_body: portcullis_core::login::MAX_TOKEN_RESPONSE,
        })?;
        Ok((got.status, got.body))
    }
}

/// Longest a form POST (token endpoint, site verification) may take, as on the host.
const FORM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest site-verification answer read, as on the host.
const MAX_SITEVERIFY_ANSWER: usize = 64 << 10;

impl audit::Guest for Providers {
    fn emit(r: audit::DecisionRecord) {
        eprintln!("{}", portcullis_driver::audit::json_line(&r));
    }
}

/// Where plugins' keys live in the store: apart from the gateway's own (sessions, limits,
/// one-time values), which no plugin may read or change. (The plugins of one bundle share
/// this namespace: they are composed against one instance of these providers, which cannot
/// tell them apart.)
fn plugin_key(key: &str) -> String {
    format!("plugin/{key}")
}

impl plugin_state::Guest for Providers {
    fn get(key: String) -> Option<Vec<u8>> {
        <Providers as state::Guest>::get(plugin_key(&key))
    }

    fn set(key: String, value: Vec<u8>, ttl_ms: u64) {
        <Providers as state::Guest>::set(plugin_key(&key), value, ttl_ms);
    }

    fn increment(key: String, delta: i64, ttl_ms: u64) -> i64 {
        <Providers as state::Guest>::increment(plugin_key(&key), delta, ttl_ms)
    }

    fn delete(key: String) {
        let _ = kv::delete(&plugin_key(&key));
    }
}

impl plugin_log::Guest for Providers {
    fn log(level: plugin_log::Level, message: String) {
        let level = match level {
            plugin_log::Level::Debug => "debug",
            plugin_log::Level::Info => "info",
            plugin_log::Level::Warn => "warn",
            plugin_log::Level::Error => "error",
        };
        eprintln!(
            "{}",
            serde_json::json!({"plugin_log": level, "message": message})
        );
    }
}

impl plugin_clock::Guest for Providers {
    fn now_ms() -> u64 {
        crate::now_ms()
    }
}

impl risk::Guest for Providers {
    fn assess(
        plugins: Vec<u32>,
        _ctx: risk::RequestContext,
    ) -> Vec<Result<risk::Assessment, String>> {
        plugins
            .iter()
            .map(|_| Err("this risk plugin is not part of the edge bundle".to_owned()))
            .collect()
    }

    fn observe(_status: u16) {}
}

impl bindings::Guest for Providers {
    /// Restores the configuration, the key store and the seal now (`portcullis bundle`
    /// snapshots the instance after this). A configuration that does not restore traps
    /// here: the bundle is refused, never built to fail every request.
    fn wizer_initialize() {
        if let Err(e) = loaded() {
            eprintln!("{e}");
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
        }
    }
}

/// The component's exports (the generated glue needs `unsafe`). Only for wasm: the
/// export names (`portcullis:gateway/…`) are no valid native symbol names.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Providers;
    crate::bindings::export!(Providers with_types_in crate::bindings);
}
