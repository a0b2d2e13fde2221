//! Portable providers of the `portcullis:gateway` host services, for self-contained edge
//! bundles (`portcullis bundle`): composed with the gateway component, they leave a
//! component that imports only `wasi:*` and runs on any `wasi:http` host.
//!
//! - `config`: the snapshot fixed at bundle time (from the generated `embedded` component);
//! - `keys`: signatures checked in the guest with the pure-Rust verifier against key sets
//!   baked in at bundle time;
//! - `state`: per-instance, in memory (most `wasi:http` hosts create an instance per
//!   request): plain values work within a request; replay checks never see a value as new
//!   and rate limits report the state unreachable, so both fail closed;
//! - `health`: every backend healthy; `client`: no peer address, no outbound calls
//!   (site verification and browser login are refused: fail closed);
//! - `audit`: one JSON line per decision on stderr;
//! - `risk`: the end of the plugin chain — plugins composed into the bundle answer in the
//!   links in front of it (`gateway/plugin-link`); any plugin that reaches this point is not
//!   in the bundle and answers with a failure, so its `on_error` policy decides;
//! - the plugins' own host services (`portcullis:plugin/state`, `log`, `clock`): the same
//!   per-instance memory, stderr, the wall clock.
#![deny(unsafe_code)]

mod bindings {
    //! The `portcullis:gateway/providers` world.
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../../wit/bundle",
        world: "providers",
        generate_all,
        additional_derives: [serde::Serialize],
    });
}

use std::cell::RefCell;
use std::collections::HashMap;

use bindings::exports::portcullis::gateway::{audit, client, config, health, keys, risk, state};
use bindings::exports::portcullis::plugin::{
    clock as plugin_clock, log as plugin_log, state as plugin_state,
};
use bindings::portcullis::bundle::embedded;
use portcullis_core::authenticate::{AuthFailure, IssuedKind};
use portcullis_core::crypto::PortableKey;
use portcullis_core::{Config, IssuerId, KeyStore, PortableVerifier, Timestamp};

/// The configuration and key sets of this instance, restored once.
struct Loaded {
    config: Config,
    keys: KeyStore<PortableKey>,
}

thread_local! {
    static LOADED: RefCell<Option<Result<std::rc::Rc<Loaded>, String>>> = const { RefCell::new(None) };
    static STATE: RefCell<HashMap<String, (Vec<u8>, u64)>> = RefCell::new(HashMap::new());
}

fn loaded() -> Result<std::rc::Rc<Loaded>, String> {
    LOADED.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let restored = Config::from_snapshot(&embedded::snapshot())
                .map_err(|e| format!("embedded configuration: {e}"))
                .map(|config| {
                    let keys = KeyStore::new(&config, &PortableVerifier);
                    std::rc::Rc::new(Loaded { config, keys })
                });
            *slot = Some(restored);
        }
        slot.clone()
            .unwrap_or_else(|| Err("configuration unavailable".into()))
    })
}

fn now() -> Timestamp {
    let t = wasip2::clocks::wall_clock::now();
    Timestamp::from_duration(std::time::Duration::new(t.seconds, t.nanoseconds))
}

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
        let id = portcullis_core::authenticate::authenticate(
            &token,
            &l.config,
            &l.keys,
            &PortableVerifier,
            &issuers,
            now(),
        )
        .map_err(failure)?;
        Ok(keys::Verified {
            issuer: u32::try_from(id.issuer.0).unwrap_or(u32::MAX),
            claims: serde_json::Value::Object(id.claims).to_string(),
        })
    }

    fn endpoints(_issuer: u32) -> Result<keys::ProviderEndpoints, String> {
        // Browser login needs the provider's discovery document and a token endpoint
        // call: not offered inside a bundle (login routes refuse with 503).
        Err(portcullis_core::login::NO_BROWSER_LOGIN.to_owned())
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
        let id = portcullis_core::authenticate::verify_issued(
            &token,
            &l.config,
            &l.keys,
            &PortableVerifier,
            IssuerId(issuer as usize),
            &client_id,
            kind,
            now(),
        )
        .map_err(failure)?;
        Ok(keys::Verified {
            issuer,
            claims: serde_json::Value::Object(id.claims).to_string(),
        })
    }
}

impl health::Guest for Providers {
    fn is_healthy(_region: u32, _index: u32) -> bool {
        true
    }
}

/// The live value of `key`, dropping it when expired.
fn live(map: &mut HashMap<String, (Vec<u8>, u64)>, key: &str, now: u64) -> Option<Vec<u8>> {
    match map.get(key) {
        Some((v, expires)) if *expires > now => Some(v.clone()),
        Some(_) => {
            map.remove(key);
            None
        }
        None => None,
    }
}

impl state::Guest for Providers {
    fn get(key: String) -> Option<Vec<u8>> {
        let now = now_ms();
        STATE.with(|s| live(&mut s.borrow_mut(), &key, now))
    }

    fn delete(key: String) -> Result<(), String> {
        STATE.with(|s| s.borrow_mut().remove(&key));
        Ok(())
    }

    fn set(key: String, value: Vec<u8>, ttl_ms: u64) {
        let expires = now_ms().saturating_add(ttl_ms);
        STATE.with(|s| s.borrow_mut().insert(key, (value, expires)));
    }

    fn increment(key: String, delta: i64, ttl_ms: u64) -> i64 {
        let now = now_ms();
        STATE.with(|s| {
            let mut map = s.borrow_mut();
            let current = live(&mut map, &key, now)
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, i64::from_be_bytes);
            let next = current.saturating_add(delta);
            let expires = map
                .get(&key)
                .map_or(now.saturating_add(ttl_ms), |(_, e)| *e);
            map.insert(key, (next.to_be_bytes().to_vec(), expires));
            next
        })
    }

    fn first_use(_key: String, _ttl_ms: u64) -> Result<bool, String> {
        // Per-instance memory cannot rule out a replay on another instance (most hosts run
        // one per request): no one-time value is ever known to be new, so DPoP proofs and
        // challenge answers are refused with 503 `state_unavailable` (fail closed).
        Err(portcullis_core::ports::NO_SHARED_STATE.to_owned())
    }

    fn rate_limit(_checks: Vec<state::LimitCheck>) -> Result<Vec<state::LimitStatus>, String> {
        // A per-instance bucket would never fill: report the state unreachable, so the
        // configuration's `on_unavailable` decides (deny by default).
        Err("an edge bundle has no shared state for rate limits".into())
    }
}

impl client::Guest for Providers {
    fn peer() -> Option<String> {
        // wasi:http does not tell a component who is connected.
        None
    }

    fn verify_site_token(_site_token: String, _remote_ip: Option<String>) -> Result<bool, String> {
        Err("site verification is not available inside an edge bundle".into())
    }

    fn token_request(
        _issuer: u32,
        _authorization: String,
        _body: String,
    ) -> Result<(u16, Vec<u8>), String> {
        Err("browser login is not available inside an edge bundle".into())
    }
}

impl audit::Guest for Providers {
    fn emit(r: audit::DecisionRecord) {
        eprintln!("{}", portcullis_driver::audit::json_line(&r));
    }
}

impl plugin_state::Guest for Providers {
    fn get(key: String) -> Option<Vec<u8>> {
        <Providers as state::Guest>::get(key)
    }

    fn set(key: String, value: Vec<u8>, ttl_ms: u64) {
        <Providers as state::Guest>::set(key, value, ttl_ms);
    }

    fn increment(key: String, delta: i64, ttl_ms: u64) -> i64 {
        <Providers as state::Guest>::increment(key, delta, ttl_ms)
    }

    fn delete(key: String) {
        STATE.with(|s| s.borrow_mut().remove(&key));
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

/// The component's exports (the generated glue needs `unsafe`). Only for wasm: the
/// export names (`portcullis:gateway/…`) are no valid native symbol names.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Providers;
    crate::bindings::export!(Providers with_types_in crate::bindings);
}
