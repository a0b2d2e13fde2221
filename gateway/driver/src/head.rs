//! The request head as received, owned by the adapter for the length of a request.

use std::net::IpAddr;

use http::{HeaderMap, Method, Uri};
use portcullis_core::{PeerHints, RequestParts};

/// The header an upstream proxy or the host sets to correlate a request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request's method, target, headers, id and peer, as the adapter received them.
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// Method.
    pub method: Method,
    /// The target as received: origin-form, or absolute-form when the request (or the
    /// runtime) names an authority. The core derives the authority from it and `Host`.
    pub uri: Uri,
    /// Header fields, repeated ones kept apart.
    pub headers: HeaderMap,
    /// The request id: the `x-request-id` field when present, else `-`.
    pub request_id: String,
    /// The connecting peer, when the runtime knows it.
    pub peer: Option<IpAddr>,
    /// What the runtime vouches for about the peer besides its address (Cloudflare's
    /// `cf` object), none elsewhere.
    pub peer_hints: PeerHints,
}

impl RequestHead {
    /// A head whose request id comes from its `x-request-id` field.
    pub fn new(method: Method, uri: Uri, headers: HeaderMap, peer: Option<IpAddr>) -> Self {
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        Self {
            method,
            uri,
            headers,
            request_id,
            peer,
            peer_hints: PeerHints::default(),
        }
    }

    /// The parts the core reads, with `body` (read only where
    /// [`Gateway::wants_body`](portcullis_core::Gateway::wants_body) says so).
    pub fn parts<'a>(&'a self, body: &'a [u8]) -> RequestParts<'a> {
        RequestParts {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            request_id: &self.request_id,
            peer: self.peer,
            peer_hints: self.peer_hints,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_id_is_the_field_or_a_dash() {
        let mut headers = HeaderMap::new();
        let head = RequestHead::new(Method::GET, Uri::from_static("/"), headers.clone(), None);
        assert_eq!(head.request_id, "-");
        headers.insert(REQUEST_ID_HEADER, http::HeaderValue::from_static("r-1"));
        let head = RequestHead::new(Method::GET, Uri::from_static("/a?b"), headers, None);
        assert_eq!(head.request_id, "r-1");
        let parts = head.parts(b"x");
        assert_eq!(parts.request_id, "r-1");
        assert_eq!(parts.uri.path(), "/a");
        assert_eq!(parts.body, b"x");
    }
}
