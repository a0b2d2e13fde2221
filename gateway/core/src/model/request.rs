//! The request as the pipeline reads it, and backend health as the adapter knows it.

use std::net::IpAddr;

use http::{HeaderMap, Method, Uri};

use crate::model::BackendId;

/// The parts of a request the engine reads. Adapters borrow them from their own request
/// type; nothing is copied.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    /// Method.
    pub method: &'a Method,
    /// Request target (origin-form or absolute).
    pub uri: &'a Uri,
    /// Headers as received.
    pub headers: &'a HeaderMap,
    /// The adapter's request id (for problem details, audit and backend spread).
    pub request_id: &'a str,
    /// The connecting peer's address, when the adapter knows it (the client's address is
    /// taken from proxy headers only when this peer is a trusted proxy).
    pub peer: Option<IpAddr>,
    /// What the runtime itself vouches for about the peer besides its address (Cloudflare's
    /// `cf.country` and `cf.asn`): used when the peer is the client, not a trusted proxy.
    pub peer_hints: PeerHints,
    /// The request body, read by the adapter only where [`Gateway::wants_body`] says so
    /// (the back-channel logout endpoint); empty otherwise.
    pub body: &'a [u8],
}

/// What a runtime vouches for about the connecting peer besides its address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerHints {
    /// ISO 3166-1 alpha-2 country (ASCII letters; upper-cased when used).
    pub country: Option<[u8; 2]>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Where the runtime geolocates the peer (Cloudflare's `cf.latitude` / `longitude`).
    pub location: Option<crate::geo::GeoPoint>,
}

/// Backend health as the adapter knows it (health checks, circuit breakers).
pub trait BackendHealth {
    /// True when `backend` may receive requests.
    fn is_healthy(&self, backend: BackendId) -> bool;
}

/// Every backend healthy (adapters without health checks, tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllHealthy;

impl BackendHealth for AllHealthy {
    fn is_healthy(&self, _: BackendId) -> bool {
        true
    }
}

/// What is known about the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// ISO 3166-1 alpha-2 country, uppercase.
    pub country: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Where a trusted CDN or proxy geolocates the client.
    pub location: Option<crate::geo::GeoPoint>,
}
