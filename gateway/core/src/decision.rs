//! What the engine returns: forward to a backend with these header changes, or answer.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

use crate::audit::AuditRecord;
pub use crate::model::BackendId;
use crate::model::IssuerId;
use crate::reason::Reason;

/// Forward the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Where to.
    pub backend: BackendId,
    /// Path and query to request (slashes merged).
    pub path_and_query: String,
    /// Request headers to remove (every value) before forwarding.
    pub remove_headers: Vec<HeaderName>,
    /// Headers to set (replacing any value) after removal.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to add to the backend's response (`RateLimit`, `RateLimit-Policy`,
    /// session `Set-Cookie`); a `Cache-Control` here replaces the backend's.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Answer the client directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Headers (`Content-Type`, `WWW-Authenticate`, …).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body: RFC 9457 problem details as JSON.
    pub body: Vec<u8>,
    /// The reason code.
    pub reason: Reason,
}

impl Forward {
    /// The configured backend this forward goes to; `backend_unavailable` when the
    /// configuration has no such backend (never for a decision made on that configuration).
    pub fn target<'c>(
        &self,
        config: &'c crate::config::Config,
    ) -> Result<&'c crate::config::Backend, (Reason, String)> {
        config
            .regions
            .get(self.backend.region.0)
            .and_then(|r| r.backends.get(self.backend.index))
            .ok_or((Reason::BackendUnavailable, "unknown backend".to_owned()))
    }

    /// The URL to request at `backend`.
    pub fn url(&self, backend: &crate::config::Backend) -> String {
        format!(
            "{}://{}{}",
            backend.scheme, backend.authority, self.path_and_query
        )
    }

    /// The client's request headers that go on to the backend, in order, followed by the
    /// headers the decision sets: every field except the hop-by-hop ones ([`HOP_BY_HOP`]
    /// and any the client's `Connection` lists, but `TE: trailers`), the ones the decision
    /// removes, and the ones it replaces. Adapters add their own forwarding headers (`X-Forwarded-*`).
    pub fn backend_headers<'a>(
        &'a self,
        client: &'a http::HeaderMap,
    ) -> Vec<(&'a HeaderName, &'a HeaderValue)> {
        let listed = connection_listed(client);
        let mut out: Vec<(&HeaderName, &HeaderValue)> = client
            .iter()
            .filter(|(name, value)| {
                let n = name.as_str();
                // `TE: trailers` says the client takes trailers; the gateway relays them, so
                // it says so to the backend too (gRPC needs it; RFC 9113 §8.2.2).
                let trailers = n == "te"
                    && value
                        .to_str()
                        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("trailers"));
                trailers
                    || !(HOP_BY_HOP.contains(&n)
                        || listed.iter().any(|c| c == n)
                        || self.remove_headers.contains(name)
                        || self.set_headers.iter().any(|(s, _)| s == *name))
            })
            .collect();
        out.extend(self.set_headers.iter().map(|(n, v)| (n, v)));
        out
    }
}

/// Refuses a request whose declared `Content-Length` exceeds `max` bytes (413
/// `body_too_large` before anything is sent; adapters also stop a body that grows past it).
pub fn check_declared_length(headers: &http::HeaderMap, max: u64) -> Result<(), (Reason, String)> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err((
            Reason::BodyTooLarge,
            format!("the body exceeds {max} bytes"),
        ));
    }
    Ok(())
}

/// The field names a message's `Connection` field lists (lowercase): hop-by-hop for that
/// message (RFC 9110 §7.6.1).
pub fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

/// Headers that describe one connection (RFC 9110 §7.6.1) and `host` (the backend's
/// authority is set instead): never copied between client and backend, in either direction
/// (`host` only towards the backend).
pub const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The outcome for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send it on.
    Forward(Forward),
    /// Answer it.
    Respond(Response),
}

/// A decision: the outcome, its audit record, and a hint for the adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub outcome: Outcome,
    /// What to record.
    pub audit: AuditRecord,
    /// Set when the token named a `kid` this issuer's set lacks: the adapter may ask
    /// [`crate::KeyStore::request_refetch`], fetch, and decide again.
    pub refetch: Option<IssuerId>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    reason: &'static str,
    request_id: &'a str,
}

/// Builds the problem-details response for `reason`, with `WWW-Authenticate` for 401 and
/// 403-scope answers (RFC 6750 §3, RFC 9470 §3) carrying `challenge` parameters.
pub fn problem(
    reason: Reason,
    detail: &str,
    request_id: &str,
    challenge: &[(&'static str, String)],
) -> Response {
    let status = reason.status();
    let (body, mut headers) = problem_document(reason, status, detail, request_id);
    if matches!(
        reason,
        Reason::DpopRequired | Reason::DpopProofInvalid | Reason::DpopNonceRequired
    ) {
        let algs: Vec<&str> = crate::model::reserved::PROOF_ALGORITHMS
            .iter()
            .map(|a| a.name())
            .collect();
        let error = match reason {
            Reason::DpopProofInvalid => Some("invalid_dpop_proof"),
            Reason::DpopNonceRequired => Some("use_dpop_nonce"),
            _ => None,
        };
        let value = if let Some(error) = error {
            format!(
                "DPoP error=\"{error}\", error_description=\"{}\", algs=\"{}\"",
                quote_safe(reason.title()),
                algs.join(" ")
            )
        } else {
            format!("DPoP algs=\"{}\"", algs.join(" "))
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.push((WWW_AUTHENTICATE, v));
        }
    } else if status == StatusCode::UNAUTHORIZED || reason == Reason::InsufficientScope {
        let mut value = String::from("Bearer realm=\"portcullis\"");
        if let Some(error) = reason.bearer_error() {
            value.push_str(&format!(
                ", error=\"{error}\", error_description=\"{}\"",
                quote_safe(reason.title())
            ));
        }
        for (name, v) in challenge {
            if *name == "max_age" {
                value.push_str(&format!(", {name}={}", quote_safe(v)));
            } else {
                value.push_str(&format!(", {name}=\"{}\"", quote_safe(v)));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.push((WWW_AUTHENTICATE, v));
        }
    }
    Response {
        status,
        headers,
        body,
        reason,
    }
}

/// The gateway's answer when it fails itself and cannot decide or relay the request (reason
/// `gateway_error`): its configuration does not load (500), its component failed (503), the
/// backend's answer cannot be passed on (502). The same problem document as every refusal,
/// with `status` in the head and the body, on every runtime. `detail` is for the client:
/// never an internal error's text (a trap's backtrace stays in the gateway's log).
pub fn gateway_error(status: StatusCode, detail: &str, request_id: &str) -> Response {
    let reason = Reason::GatewayError;
    let (body, headers) = problem_document(reason, status, detail, request_id);
    Response {
        status,
        headers,
        body,
        reason,
    }
}

/// A problem document's body (RFC 9457) and its content fields.
fn problem_document(
    reason: Reason,
    status: StatusCode,
    detail: &str,
    request_id: &str,
) -> (Vec<u8>, Vec<(HeaderName, HeaderValue)>) {
    let body = serde_json::to_vec(&Problem {
        kind: format!("urn:portcullis:reason:{}", reason.code()),
        title: reason.title(),
        status: status.as_u16(),
        detail,
        reason: reason.code(),
        request_id,
    })
    .unwrap_or_default();
    let headers = vec![
        (
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ),
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    (body, headers)
}

/// Keeps a value safe inside a quoted-string: visible ASCII without `"` and `\`.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .collect()
}

#[cfg(test)]
mod forward_tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::config::RegionId;

    #[test]
    fn backend_headers_drop_hop_by_hop_connection_listed_removed_and_replaced_fields() {
        let fwd = Forward {
            backend: BackendId {
                region: RegionId(0),
                index: 0,
            },
            path_and_query: "/x".into(),
            remove_headers: vec![HeaderName::from_static("x-user-id")],
            set_headers: vec![(
                HeaderName::from_static("x-user-region"),
                HeaderValue::from_static("eu"),
            )],
            response_headers: vec![],
        };
        let mut client = http::HeaderMap::new();
        for (n, v) in [
            ("host", "a.example"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("x-user-id", "mallory"),
            ("x-user-region", "us"),
            ("accept", "text/html"),
            ("te", "trailers"),
        ] {
            client.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let names: Vec<(&str, &str)> = fwd
            .backend_headers(&client)
            .into_iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("accept", "text/html"),
                ("te", "trailers"),
                ("x-user-region", "eu")
            ]
        );
        // Any other TE is hop-by-hop.
        client.insert(http::header::TE, HeaderValue::from_static("gzip"));
        assert!(
            fwd.backend_headers(&client)
                .iter()
                .all(|(n, _)| n.as_str() != "te")
        );
        assert!(check_declared_length(&client, 10).is_ok());
        client.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        assert_eq!(
            check_declared_length(&client, 10).unwrap_err().0,
            Reason::BodyTooLarge
        );
    }
}
