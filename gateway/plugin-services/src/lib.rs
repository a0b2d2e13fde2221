//! The risk plugins' host services inside an edge bundle, and the end of the gateway's risk
//! chain. A component apart from the bundle's gateway: the gateway imports the plugins (its
//! `risk` chain) and the plugins import these services, so the gateway cannot provide them.
//!
//! - `portcullis:plugin/state`: the runtime's `wasi:keyvalue` store ([`portcullis_kv`]),
//!   under `plugin/` apart from the gateway's own keys (sessions, limits, one-time
//!   values), which no plugin may read or change. The plugins of one bundle share this
//!   namespace: they are composed against one instance of these services, which cannot
//!   tell them apart;
//! - `portcullis:plugin/log`: one JSON line per message on stderr;
//! - `portcullis:plugin/clock`: the wall clock;
//! - `portcullis:gateway/risk`: the end of the chain of plugin links; a plugin that reaches
//!   it is not in the bundle and answers with a failure, so its `on_error` policy decides.
#![deny(unsafe_code)]

mod bindings {
    //! The `portcullis:bundle/plugin-services` world (wit-bindgen).
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../../wit/bundle",
        world: "plugin-services",
        generate_all,
    });
}

use bindings::exports::portcullis::gateway::risk;
use bindings::exports::portcullis::plugin::{clock, log, state};
use portcullis_kv as kv;

/// The wall clock in Unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where a plugin's `key` lives in the store.
fn plugin_key(key: &str) -> String {
    format!("plugin/{key}")
}

/// A store error, on stderr (the plugin interface has no error to return).
fn report(op: &str, e: &str) {
    eprintln!("{}", serde_json::json!({"state_error": e, "op": op}));
}

/// The exported services.
struct Services;

impl state::Guest for Services {
    fn get(key: String) -> Option<Vec<u8>> {
        kv::get(&plugin_key(&key), now_ms()).unwrap_or_else(|e| {
            report("get", &e);
            None
        })
    }

    fn set(key: String, value: Vec<u8>, ttl_ms: u64) {
        if let Err(e) = kv::set(&plugin_key(&key), &value, now_ms(), ttl_ms) {
            report("set", &e);
        }
    }

    fn increment(key: String, delta: i64, ttl_ms: u64) -> i64 {
        // An unreachable store reads as "seen very often": plugins counting towards a
        // threshold then score high rather than low.
        kv::increment(&plugin_key(&key), delta, now_ms(), ttl_ms).unwrap_or_else(|e| {
            report("increment", &e);
            i64::MAX
        })
    }

    fn delete(key: String) {
        if let Err(e) = kv::delete(&plugin_key(&key)) {
            report("delete", &e);
        }
    }
}

impl log::Guest for Services {
    fn log(level: log::Level, message: String) {
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        eprintln!(
            "{}",
            serde_json::json!({"plugin_log": level, "message": message})
        );
    }
}

impl clock::Guest for Services {
    fn now_ms() -> u64 {
        crate::now_ms()
    }
}

impl risk::Guest for Services {
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

/// The component's exports (the generated glue needs `unsafe`). Only for wasm: the export
/// names are no valid native symbol names.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Services;
    crate::bindings::export!(Services with_types_in crate::bindings);
}
