//! The Portcullis gateway as a WebAssembly component.
//!
//! It exports `wasi:http/incoming-handler`: each request is decided by
//! [`portcullis_core::Gateway`] (configuration from the host's `config` interface, tokens
//! verified by the host's `keys` interface), then either answered here or forwarded to the
//! chosen backend through `wasi:http/outgoing-handler` with both bodies streamed, never
//! buffered whole. The host is expected to enforce the backend allow-list on every outbound
//! request as well (defence in depth).
#![deny(unsafe_code)]

mod bindings {
    //! Imports of the `portcullis:gateway/host-services` world.
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../../wit/gateway",
        world: "gateway-component",
    });
}

mod forward;
mod services;

use std::sync::OnceLock;

use portcullis_core::decision::problem;
use portcullis_core::{Gateway, Outcome, Reason, Timestamp};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

/// The gateway of this instance, built once from the host's configuration.
fn gateway() -> Result<&'static Gateway, &'static str> {
    static GATEWAY: OnceLock<Result<Gateway, String>> = OnceLock::new();
    GATEWAY
        .get_or_init(|| {
            // The host (or the bundle's providers) hands over the validated configuration
            // as a snapshot; the component carries no configuration parser of its own.
            let snapshot = bindings::portcullis::gateway::config::snapshot();
            portcullis_core::Config::from_snapshot(&snapshot).map(Gateway::new)
        })
        .as_ref()
        .map_err(String::as_str)
}

/// The exported handler.
pub struct Handler;

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let peer = bindings::portcullis::gateway::client::peer().and_then(|p| p.parse().ok());
        let mut parts = match forward::request_head(&request, peer) {
            Ok(p) => p,
            Err(detail) => {
                forward::respond(
                    response_out,
                    &problem(Reason::InvalidRequest, &detail, "", &[]),
                );
                return;
            }
        };
        let gateway = match gateway() {
            Ok(g) => g,
            Err(e) => {
                forward::respond_error(response_out, 500, &format!("gateway configuration: {e}"));
                return;
            }
        };
        // A host that gives no peer (an edge bundle's runtime) may set it in a header of
        // its own (`[client] peer_header`).
        if parts.peer.is_none() {
            parts.peer =
                portcullis_core::client::peer_from_header(&gateway.config().client, &parts.headers);
        }
        if let Some(r) = portcullis_driver::early(gateway, parts.uri.path()) {
            forward::respond(response_out, &r);
            return;
        }
        let clock = portcullis_driver::InstantClock::start();
        let now = Timestamp::from_duration(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let body = if gateway.wants_body(&parts.method, parts.uri.path()) {
            match forward::read_body(&request, portcullis_core::login::MAX_FORM_BODY) {
                Some(b) => b,
                None => {
                    forward::respond(
                        response_out,
                        &problem(
                            Reason::BodyTooLarge,
                            "the form body is too large or incomplete",
                            &parts.request_id,
                            &[],
                        ),
                    );
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let adapters = portcullis_core::Adapters {
            auth: &services::HostAuthenticator,
            risk: &services::HostRisk,
            state: &services::HostState,
            client: &services::HostClient,
            health: &services::HostHealth,
            entropy: &portcullis_driver::SystemEntropy,
            clock: &clock,
        };
        let decision = gateway.decide(&adapters, &parts.parts(&body), now);
        let mut audit = decision.audit;
        let status = match decision.outcome {
            Outcome::Respond(response) => {
                forward::respond(response_out, &response);
                response.status.as_u16()
            }
            Outcome::Forward(fwd) => {
                let limits = gateway.config().limits;
                match forward::forward(
                    gateway.config(),
                    request,
                    &parts,
                    &fwd,
                    limits.max_body_bytes,
                    response_out,
                ) {
                    Ok((status, latency)) => {
                        portcullis_driver::backend_answered(&mut audit, status, latency);
                        status
                    }
                    Err(reason) => {
                        portcullis_driver::refused_in_forward(&mut audit, reason);
                        reason.status().as_u16()
                    }
                }
            }
        };
        if audit.risk.is_some() {
            services::observe(status);
        }
        services::emit_audit(audit);
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
