//! The request head as received, owned by the adapter for the length of a request.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method, Uri};
use portcullis_core::{PeerHints, RequestParts};

/// The header an upstream proxy or the host sets to correlate a request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id a client may give that the gateway keeps.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether the gateway keeps `id`, a request id the client (or the platform in front of the
/// gateway) gave: 1-128 visible ASCII characters. Any other is replaced by one the runtime
/// makes, so audit records, log lines and problem documents never carry a client's spaces,
/// control characters or an unbounded field. The same rule on every runtime.
pub fn keeps_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The request's `X-Request-Id` when the gateway keeps it ([`keeps_request_id`]).
pub fn client_request_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| keeps_request_id(id))
}

/// The request's id: the client's `X-Request-Id` when the gateway keeps it, else `make()`'s,
/// which then replaces the field (the backend sees the id the audit record carries, never
/// the client's refused one).
pub fn assign_request_id(headers: &mut HeaderMap, make: impl FnOnce() -> String) -> String {
    if let Some(id) = client_request_id(headers) {
        return id.to_owned();
    }
    let id = make();
    match HeaderValue::from_str(&id) {
        Ok(value) => {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        Err(_) => {
            headers.remove(REQUEST_ID_HEADER);
        }
    }
    id
}

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
    /// The request id: the client's `x-request-id` when the gateway keeps it, else one the
    /// runtime made ([`assign_request_id`]).
    pub request_id: String,
    /// The connecting peer, when the runtime knows it.
    pub peer: Option<IpAddr>,
    /// What the runtime vouches for about the peer besides its address (Cloudflare's
    /// `cf` object), none elsewhere.
    pub peer_hints: PeerHints,
}

impl RequestHead {
    /// A head whose request id is its `x-request-id` field's when the gateway keeps it, else
    /// `make_id()`'s, written into the field ([`assign_request_id`]).
    pub fn new(
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        peer: Option<IpAddr>,
        make_id: impl FnOnce() -> String,
    ) -> Self {
        let request_id = assign_request_id(&mut headers, make_id);
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
    fn the_request_id_is_the_clients_when_kept_else_the_runtimes_written_into_the_field() {
        let made = || "made-1".to_owned();
        let mut headers = HeaderMap::new();
        let head = RequestHead::new(
            Method::GET,
            Uri::from_static("/"),
            headers.clone(),
            None,
            made,
        );
        assert_eq!(head.request_id, "made-1");
        assert_eq!(client_request_id(&head.headers), Some("made-1"));
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("r-1"));
        let head = RequestHead::new(Method::GET, Uri::from_static("/a?b"), headers, None, made);
        assert_eq!(head.request_id, "r-1");
        let parts = head.parts(b"x");
        assert_eq!(parts.request_id, "r-1");
        assert_eq!(parts.uri.path(), "/a");
        assert_eq!(parts.body, b"x");
    }

    #[test]
    fn a_client_request_id_is_kept_only_as_1_to_128_visible_ascii_characters() {
        let longest = "a".repeat(MAX_REQUEST_ID);
        for kept in ["r", "probe-Abc.123_~:/", longest.as_str()] {
            assert!(keeps_request_id(kept), "{kept}");
        }
        let longer = "a".repeat(MAX_REQUEST_ID + 1);
        for refused in ["", "a b", "a\tb", "caf\u{e9}", longer.as_str()] {
            assert!(!keeps_request_id(refused), "{refused:?}");
        }
        // A refused id is replaced in the field too; a replacement that is no field value
        // removes the client's.
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&longer).unwrap());
        assert_eq!(assign_request_id(&mut headers, || "g-2".into()), "g-2");
        assert_eq!(headers.get_all(REQUEST_ID_HEADER).iter().count(), 1);
        assert_eq!(client_request_id(&headers), Some("g-2"));
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("a b"));
        assert_eq!(
            assign_request_id(&mut headers, || "bad\nid".into()),
            "bad\nid"
        );
        assert!(headers.get(REQUEST_ID_HEADER).is_none());
    }
}
