//! The Portcullis gateway as a WebAssembly component.
//!
//! It exports `wasi:http/incoming-handler` ([`portcullis_wasi_handler`]): each request is
//! decided by [`portcullis_core::Gateway`] (configuration from the host's `config`
//! interface, tokens verified by the host's `keys` interface, every other service from the
//! host's `portcullis:gateway` interfaces), then either answered or forwarded to the chosen
//! backend through `wasi:http/outgoing-handler`. The host is expected to enforce the backend
//! allow-list on every outbound request as well (defence in depth).
#![deny(unsafe_code)]

mod bindings {
    //! Imports of the `portcullis:gateway/host-services` world.
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../../wit/gateway",
        world: "gateway-component",
    });
}

mod services;

use std::sync::OnceLock;

use portcullis_core::{Adapters, AuditRecord, Gateway, MonotonicClock};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

/// The gateway of this instance, built once from the host's configuration.
fn gateway() -> Result<&'static Gateway, &'static str> {
    static GATEWAY: OnceLock<Result<Gateway, String>> = OnceLock::new();
    GATEWAY
        .get_or_init(|| {
            // The host hands over the validated configuration as a snapshot; the component
            // carries no configuration parser of its own.
            let snapshot = bindings::portcullis::gateway::config::snapshot();
            portcullis_core::Config::from_snapshot(&snapshot).map(Gateway::new)
        })
        .as_ref()
        .map_err(String::as_str)
}

/// The exported handler.
pub struct Handler;

/// The host's services, imported through `portcullis:gateway`.
struct Imported;

impl portcullis_wasi_handler::Host for Imported {
    fn gateway(&self) -> Result<&Gateway, String> {
        gateway().map_err(str::to_owned)
    }

    fn peer(&self) -> Option<std::net::IpAddr> {
        bindings::portcullis::gateway::client::peer().and_then(|p| p.parse().ok())
    }

    fn adapters<'a>(&'a self, clock: &'a dyn MonotonicClock) -> Adapters<'a> {
        Adapters {
            auth: &services::HostAuthenticator,
            risk: &services::HostRisk,
            state: &services::HostState,
            client: &services::HostClient,
            health: &services::HostHealth,
            entropy: &portcullis_driver::SystemEntropy,
            clock,
        }
    }

    fn observe(&self, status: u16) {
        services::observe(status);
    }

    fn emit_audit(&self, record: AuditRecord) {
        services::emit_audit(record);
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        portcullis_wasi_handler::handle(&Imported, request, response_out);
    }
}

impl bindings::Guest for Handler {
    /// Restores the configuration now (`portcullis bundle` snapshots the instance after
    /// this, so the bundle's instances start with it restored). A configuration that does
    /// not restore traps here: the bundle is refused, never built to fail every request.
    fn wizer_initialize() {
        if let Err(e) = gateway() {
            eprintln!("gateway configuration: {e}");
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
        }
    }
}

#[cfg(target_arch = "wasm32")]
wasip2::http::proxy::export!(Handler);

/// The initializer's export (the generated glue needs `unsafe`).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Handler;
    crate::bindings::export!(Handler with_types_in crate::bindings);
}
