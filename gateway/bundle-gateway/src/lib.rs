//! The gateway of a self-contained edge bundle (`portcullis bundle`): the gateway
//! component's request handler ([`portcullis_wasi_handler`]) with portable implementations
//! of its host services compiled in ([`services`]), so the bundle carries one copy of the
//! core. Composed with the embedded configuration, the plugin services and the
//! configuration's risk plugins, it leaves a component that imports only `wasi:*` and runs
//! on any `wasi:http` host.
//!
//! - configuration: the snapshot fixed at bundle time (from the generated `embedded`
//!   component), restored once ([`keysets`]; at bundle time when pre-initialized);
//! - tokens: signatures checked in the guest with the pure-Rust verifier; remote key sets
//!   and discovery documents fetched at run time over `wasi:http` and shared between
//!   instances through the key-value store ([`keysets`]), or baked in at bundle time;
//! - shared state: the runtime's standard `wasi:keyvalue` store ([`portcullis_kv`]), shared
//!   by every instance the runtime connects to it: rate limits, one-time values (DPoP
//!   proofs, challenge answers), sessions and login state; a store that cannot be opened or
//!   answers with errors is unavailable state (`on_unavailable`, fail closed);
//! - backends: every one healthy; the client: no peer address (wasi:http does not say who
//!   is connected; `[client] peer_header` may); the provider's token endpoint and site
//!   verification over `wasi:http` ([`fetch`]);
//! - audit: one JSON line per decision on stderr;
//! - risk: the imported chain of the plugins composed into the bundle, ending in the plugin
//!   services (`gateway/plugin-services`).
#![deny(unsafe_code)]

mod bindings;
mod fetch;
mod keysets;
mod services;

use portcullis_core::{Adapters, AuditRecord, Gateway, MonotonicClock};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

/// The exported handler and initializer.
pub struct Handler;

/// The portable host services.
struct Portable;

impl portcullis_wasi_handler::Host for Portable {
    fn gateway(&self) -> Result<&Gateway, String> {
        keysets::loaded().map(|l| &l.gateway)
    }

    fn peer(&self) -> Option<std::net::IpAddr> {
        // wasi:http does not tell a component who is connected.
        None
    }

    fn adapters<'a>(&'a self, clock: &'a dyn MonotonicClock) -> Adapters<'a> {
        Adapters {
            auth: &services::PortableAuthenticator,
            risk: &services::LinkedRisk,
            state: &services::KeyValueState,
            client: &services::WasiClient,
            health: &services::AllHealthy,
            entropy: &portcullis_driver::SystemEntropy,
            clock,
        }
    }

    fn observe(&self, status: u16) {
        services::observe(status);
    }

    fn emit_audit(&self, record: AuditRecord) {
        services::emit_audit(&record);
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        portcullis_wasi_handler::handle(&Portable, request, response_out);
    }
}

impl bindings::Guest for Handler {
    /// Restores the configuration, the key store and the seal now (`portcullis bundle`
    /// snapshots the instance after this). A configuration that does not restore traps
    /// here: the bundle is refused, never built to fail every request.
    fn wizer_initialize() {
        if let Err(e) = keysets::loaded() {
            eprintln!("{e}");
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
        }
    }
}

#[cfg(target_arch = "wasm32")]
wasip2::http::proxy::export!(Handler);

/// The initializer's export (the generated glue needs `unsafe`). Only for wasm: the export
/// names are no valid native symbol names.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Handler;
    crate::bindings::export!(Handler with_types_in crate::bindings);
}
