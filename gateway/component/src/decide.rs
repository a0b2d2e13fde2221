//! The `decide` export: a request head in, the core's decision out.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use portcullis_core::decision::problem;
use portcullis_core::{Adapters, Outcome, Reason, Response, Timestamp};
use portcullis_driver::RequestHead;

use crate::bindings::exports::portcullis::gateway::decide::{
    Answer, Decision, Field, Forward, Outcome as WitOutcome, Request,
};
use crate::services;

/// Decides `request`: the gateway's answer, or where to forward it, with the audit record.
pub fn decide(request: Request) -> Decision {
    let mut head = match head(&request) {
        Ok(h) => h,
        Err(detail) => {
            return unaudited(&problem(Reason::InvalidRequest, &detail, "", &[]));
        }
    };
    let gateway = match crate::gateway() {
        Ok(g) => g,
        Err(e) => {
            return unaudited(&portcullis_driver::gateway_error(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                &format!("gateway configuration: {e}"),
                &head.request_id,
            ));
        }
    };
    // A host that gives no peer may set it in a header of its own (`[client] peer_header`).
    if head.peer.is_none() {
        head.peer =
            portcullis_core::client::peer_from_header(&gateway.config().client, &head.headers);
    }
    if let Some(r) = portcullis_driver::early(gateway, head.uri.path()) {
        return unaudited(&r);
    }
    let clock = portcullis_driver::InstantClock::start();
    let now = Timestamp::from_duration(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let adapters = Adapters {
        auth: &services::HostAuthenticator,
        risk: &services::HostRisk,
        state: &services::HostState,
        client: &services::HostClient,
        health: &services::HostHealth,
        entropy: &portcullis_driver::SystemEntropy,
        clock: &clock,
    };
    let decision = gateway.decide(&adapters, &head.parts(&request.body), now);
    let outcome = match decision.outcome {
        Outcome::Respond(r) => WitOutcome::Answer(answer(&r)),
        Outcome::Forward(f) => WitOutcome::Forward(Forward {
            region: index(f.backend.region.0),
            backend: index(f.backend.index),
            path_and_query: f.path_and_query,
            remove_headers: f
                .remove_headers
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect(),
            set_headers: fields(&f.set_headers),
            response_headers: fields(&f.response_headers),
        }),
    };
    Decision {
        outcome,
        audit: Some(services::decision_record(decision.audit)),
    }
}

/// The request head as the core reads it; why not when it cannot be read.
fn head(request: &Request) -> Result<RequestHead, String> {
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("bad method {:?}", request.method))?;
    let uri: Uri = request
        .target
        .parse()
        .map_err(|_| "request target is not a valid URI".to_owned())?;
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name {name:?}"))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| format!("bad value for {name}"))?;
        headers.append(name, value);
    }
    let peer = request.peer.as_deref().and_then(|p| p.parse().ok());
    // The host assigned the id (its `x-request-id`, always one it keeps).
    Ok(RequestHead::new(method, uri, headers, peer, || {
        "-".to_owned()
    }))
}

/// An answer with no audit record (made before deciding).
fn unaudited(r: &Response) -> Decision {
    Decision {
        outcome: WitOutcome::Answer(answer(r)),
        audit: None,
    }
}

fn answer(r: &Response) -> Answer {
    Answer {
        status: r.status.as_u16(),
        headers: fields(&r.headers),
        body: r.body.clone(),
        reason: r.reason.code().to_owned(),
    }
}

fn fields(list: &[(HeaderName, HeaderValue)]) -> Vec<Field> {
    list.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// A configuration index as the WIT carries it (configurations are far smaller than
/// `u32::MAX` entries; an index past it names no backend and is refused by the host).
fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}
