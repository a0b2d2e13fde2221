//! # portcullis-driver
//!
//! What every Portcullis runtime does around the core's decision, written once: the native
//! host, the gateway component, the Spin application and the Cloudflare Worker each keep
//! only their sockets and platform APIs.
//!
//! - [`RequestHead`]: the request as received, owned, with its request id; it lends the
//!   core its [`RequestParts`](portcullis_core::RequestParts).
//! - [`early`]: what is answered before deciding (the gateway's own key set).
//! - [`decide_refetching`]: decide; when a token names a key its issuer's set lacks, one
//!   rate-limited refetch and a second decision.
//! - [`decide_resuming`]: the decide → perform → resume loop for ports that wait.
//! - [`keys::refresh`]: every due key-set document fetched through the runtime's
//!   [`keys::DocumentSource`], discovery first, applied to the key store.
//! - [`relay_headers`]: the backend's response headers as the client gets them.
//! - [`refused_in_forward`]: the audit record of a request the decision forwarded but the
//!   forward refused (body too large, backend down or slow).
//! - [`backend_answered`]: the backend's status and latency in the audit record.
//! - [`SystemEntropy`], [`InstantClock`]: random ids and phase timings for the core.
//! - [`audit::json_line`]: the audit line every runtime writes.
//! - [`token_cache`]: verified access tokens kept in process, for a runtime that checks
//!   signatures itself and keeps its process between requests (a Workers isolate).
//! - [`risk_context!`], [`risk_assessment!`], [`risk_action!`], [`assess_through!`]: the risk-plugin records
//!   copied between the core's, the WIT bindings' and the plugin SDK's types.
#![forbid(unsafe_code)]

pub mod audit;
mod head;
pub mod keycache;
pub mod keys;
mod records;
mod respond;
mod runtime;
#[cfg(test)]
mod test_support;
pub mod token_cache;

pub use head::{
    MAX_REQUEST_ID, REQUEST_ID_HEADER, RequestHead, assign_request_id, client_request_id,
    keeps_request_id,
};
pub use respond::{
    backend_answered, early, gateway_error, refused_in_forward, relay_headers, relay_removals,
};
pub use runtime::{InstantClock, SystemEntropy};

use portcullis_core::{Answer, Decision, IssuerId, Need, Suspended};

/// A decision, alone or with what the adapter learned while it was made (the native host
/// keeps what its plugins were shown, for `observe`).
pub trait Decided {
    /// The decision.
    fn decision(&self) -> &Decision;
}

impl Decided for Decision {
    fn decision(&self) -> &Decision {
        self
    }
}

impl<T> Decided for (Decision, T) {
    fn decision(&self) -> &Decision {
        &self.0
    }
}

/// Decides with `decide`; when the decision asks for a key-set refetch (a token named a
/// `kid` its issuer's set lacks), asks `refetch` — which requests the refetch from the key
/// store (rate-limited there) and performs it — and, when it did, decides again.
pub async fn decide_refetching<D: Decided, F: Future<Output = D>, R: Future<Output = bool>>(
    decide: impl Fn() -> F,
    refetch: impl FnOnce(IssuerId) -> R,
) -> D {
    let decided = decide().await;
    match decided.decision().refetch {
        Some(issuer) if refetch(issuer).await => decide().await,
        _ => decided,
    }
}

/// One run of a decision: decided (with whatever the adapter keeps beside it), or waiting.
// Lives for one turn of the loop in `decide_resuming`; boxing either side buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Step<D> {
    /// Decided.
    Decided(D),
    /// Waiting for the adapter to perform what it needs.
    Waiting(Suspended),
}

/// Decides a request whose ports may wait (the decide → perform → resume loop): `step`
/// starts the decision (`None`) or resumes it with the answer to what it waited for, and
/// `perform` carries out a [`Need`] the way the platform does (awaiting Redis, an HTTP
/// client). `step` builds the ports afresh on each call, so nothing it borrows is held
/// across a wait.
pub async fn decide_resuming<D, P: Future<Output = Answer>>(
    step: impl Fn(Option<(Suspended, Answer)>) -> Step<D>,
    perform: impl Fn(Need) -> P,
) -> D {
    let mut resume = None;
    loop {
        match step(resume.take()) {
            Step::Decided(d) => return d,
            Step::Waiting(w) => {
                let answer = perform(w.need().clone()).await;
                resume = Some((w, answer));
            }
        }
    }
}
