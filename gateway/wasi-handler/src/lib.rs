//! The gateway's `wasi:http` request handler: each request is decided by
//! [`portcullis_core::Gateway`], then either answered here or forwarded to the chosen
//! backend through `wasi:http/outgoing-handler` with both bodies streamed, never buffered
//! whole.
//!
//! The edge bundle's gateway runs it with portable host services compiled in ([`Host`]).
//! (The gateway component has no `wasi:http` handler: its host asks it for the decision
//! and forwards itself.)
#![forbid(unsafe_code)]

pub mod forward;

use std::net::IpAddr;

use portcullis_core::decision::problem;
use portcullis_core::{Adapters, AuditRecord, Gateway, MonotonicClock, Outcome, Reason, Timestamp};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

/// Where a wasm gateway's configuration and host services come from.
pub trait Host {
    /// The gateway of this instance (its configuration restored once), or why there is
    /// none.
    fn gateway(&self) -> Result<&Gateway, String>;
    /// The connecting peer's address, when the runtime tells.
    fn peer(&self) -> Option<IpAddr>;
    /// The core's adapters for one decision, timed on `clock`.
    fn adapters<'a>(&'a self, clock: &'a dyn MonotonicClock) -> Adapters<'a>;
    /// Tells the risk plugins that assessed the request the status the client received.
    fn observe(&self, status: u16);
    /// Records the decision.
    fn emit_audit(&self, record: AuditRecord);
}

/// Decides `request` and answers it on `response_out`: the gateway's own answer, or the
/// backend's response relayed.
pub fn handle(host: &impl Host, request: IncomingRequest, response_out: ResponseOutparam) {
    let mut parts = match forward::request_head(&request, host.peer()) {
        Ok(p) => p,
        Err(detail) => {
            forward::respond(
                response_out,
                &problem(Reason::InvalidRequest, &detail, "", &[]),
            );
            return;
        }
    };
    let gateway = match host.gateway() {
        Ok(g) => g,
        Err(e) => {
            forward::respond_error(
                response_out,
                http::StatusCode::INTERNAL_SERVER_ERROR,
                &format!("gateway configuration: {e}"),
                &parts.request_id,
            );
            return;
        }
    };
    // A host that gives no peer (an edge bundle's runtime) may set it in a header of its
    // own (`[client] peer_header`).
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
    let decision = gateway.decide(&host.adapters(&clock), &parts.parts(&body), now);
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
        host.observe(status);
    }
    host.emit_audit(audit);
}
