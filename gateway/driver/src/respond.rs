//! Answers around the decision: before it (the gateway's own documents), and after it
//! (the backend's response headers, and refusals the forward itself made).

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use portcullis_core::decision::{HOP_BY_HOP, connection_listed};
use portcullis_core::{AuditRecord, Gateway, Reason, Response};

/// What the gateway answers at `path` before deciding: its public key set for
/// gateway-signed tokens (cacheable for five minutes), else nothing.
pub fn early(gateway: &Gateway, path: &str) -> Option<Response> {
    let (content_type, body) = gateway.well_known(path)?;
    Some(Response {
        status: StatusCode::OK,
        headers: vec![
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("max-age=300")),
        ],
        body: body.into_bytes(),
        reason: Reason::InvalidRequest,
    })
}

/// The gateway's answer when it cannot decide or relay at all: the core's
/// [`portcullis_core::decision::gateway_error`], the same on every runtime.
pub use portcullis_core::decision::gateway_error;

/// Records in `audit` that the forward of a request the decision let through was refused
/// with `reason` (the request body too large, the backend unreachable, slow or invalid):
/// the client got a refusal, so the record says `deny`, in the `forward` phase.
pub fn refused_in_forward(audit: &mut AuditRecord, reason: Reason) {
    audit.decision = "deny";
    audit.status = Some(reason.status().as_u16());
    audit.reason = Some(reason.code());
    audit.phase = Some("forward");
}

/// Records in `audit` that the backend answered with `status`, its response head
/// `latency` after the request was sent.
pub fn backend_answered(audit: &mut AuditRecord, status: u16, latency: std::time::Duration) {
    audit.backend_status = Some(status);
    audit.backend_us = Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
}

/// The backend's response headers as the client gets them: hop-by-hop fields removed
/// (the standard ones and those its `Connection` field lists, RFC 9110 §7.6.1), and the
/// gateway's own `extra` headers (rate-limit fields, session cookies) added; the gateway's
/// `Cache-Control` replaces the backend's (a response that sets the session cookie must
/// never be stored by a shared cache).
pub fn relay_headers(headers: &mut HeaderMap, extra: &[(HeaderName, HeaderValue)]) {
    for name in relay_removals(headers, extra) {
        headers.remove(name.as_str());
    }
    for (name, value) in extra {
        headers.append(name.clone(), value.clone());
    }
}

/// The fields [`relay_headers`] removes from a backend's response head (lowercase names),
/// for a runtime that edits the head in place instead (a Worker's `Headers`, then appending
/// `extra`): the hop-by-hop ones, those its `Connection` field lists, and `Cache-Control`
/// when the gateway sets its own. Only the `Connection` field of `headers` is read.
pub fn relay_removals(headers: &HeaderMap, extra: &[(HeaderName, HeaderValue)]) -> Vec<String> {
    let mut names: Vec<String> = HOP_BY_HOP
        .iter()
        .filter(|n| **n != "host")
        .map(|n| (*n).to_owned())
        .collect();
    names.extend(connection_listed(headers));
    if extra.iter().any(|(name, _)| *name == CACHE_CONTROL) {
        names.push(CACHE_CONTROL.as_str().to_owned());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_error_is_a_problem_document_with_its_status_in_the_head_and_the_body() {
        let r = gateway_error(
            StatusCode::BAD_GATEWAY,
            "backend response headers are invalid",
            "req-7",
        );
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.reason, Reason::GatewayError);
        assert_eq!(
            r.headers,
            vec![
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json")
                ),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ]
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "urn:portcullis:reason:gateway_error",
                "title": "Gateway error",
                "status": 502,
                "detail": "backend response headers are invalid",
                "reason": "gateway_error",
                "request_id": "req-7",
            })
        );
    }

    #[test]
    fn relayed_headers_drop_hop_by_hop_and_take_the_gateways_cache_control() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-internal"));
        h.insert("x-internal", HeaderValue::from_static("secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=600"),
        );
        h.append("set-cookie", HeaderValue::from_static("app=1"));
        h.insert("x-app", HeaderValue::from_static("v"));
        relay_headers(
            &mut h,
            &[
                (CACHE_CONTROL, HeaderValue::from_static("private, no-store")),
                (
                    http::header::SET_COOKIE,
                    HeaderValue::from_static("__Host-s=1"),
                ),
            ],
        );
        assert!(h.get("connection").is_none() && h.get("keep-alive").is_none());
        assert!(
            h.get("x-internal").is_none(),
            "a field Connection lists is hop-by-hop"
        );
        let cc: Vec<_> = h.get_all(CACHE_CONTROL).iter().collect();
        assert_eq!(cc, ["private, no-store"]);
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["app=1", "__Host-s=1"]);
        assert_eq!(h["x-app"], "v");
    }

    #[test]
    fn without_a_gateway_cache_control_the_backends_stays() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        relay_headers(&mut h, &[]);
        assert_eq!(h[CACHE_CONTROL], "max-age=60");
    }

    #[test]
    fn a_refused_forward_is_a_deny_in_the_forward_phase() {
        let mut audit = AuditRecord {
            decision: "forward",
            ..AuditRecord::default()
        };
        refused_in_forward(&mut audit, Reason::BackendTimeout);
        assert_eq!(audit.decision, "deny");
        assert_eq!(audit.status, Some(504));
        assert_eq!(audit.reason, Some("backend_timeout"));
        assert_eq!(audit.phase, Some("forward"));
    }
}
