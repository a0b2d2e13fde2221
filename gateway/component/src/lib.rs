//! The Portcullis gateway as a WebAssembly component.
//!
//! It exports `portcullis:gateway/decide`: the host hands it each request's head (and the
//! body of the gateway's own form endpoints), [`portcullis_core::Gateway`] decides it
//! (configuration from the host's `config` interface, tokens verified by the host's `keys`
//! interface, every other service from the host's `portcullis:gateway` interfaces), and the
//! decision goes back: an answer, or the backend to forward to and the fields to set, with
//! the audit record. The host carries it out: sockets, bodies and the backend allow-list
//! stay outside the sandbox, every rule runs inside it.
#![deny(unsafe_code)]

mod bindings {
    //! Imports and exports of the `portcullis:gateway/gateway-component` world.
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../../wit/gateway",
        world: "gateway-component",
    });
}

mod decide;
mod services;

use std::sync::OnceLock;

use portcullis_core::Gateway;

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

/// The component's exports.
pub struct Component;

impl bindings::exports::portcullis::gateway::decide::Guest for Component {
    fn decide(
        request: bindings::exports::portcullis::gateway::decide::Request,
    ) -> bindings::exports::portcullis::gateway::decide::Decision {
        decide::decide(request)
    }
}

impl bindings::Guest for Component {
    /// Restores the configuration now (a host that snapshots the instance after this starts
    /// every instance with it restored). A configuration that does not restore traps here:
    /// a snapshot is refused, never built to fail every request.
    fn wizer_initialize() {
        if let Err(e) = gateway() {
            eprintln!("gateway configuration: {e}");
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
        }
    }
}

/// The exports' glue (generated; it needs `unsafe`).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Component;
    crate::bindings::export!(Component with_types_in crate::bindings);
}
