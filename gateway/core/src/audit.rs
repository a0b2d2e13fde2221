//! The audit record: one per decision (completed by the `record` phase,
//! [`crate::phase::record`]). Subjects are pseudonymised with a keyed
//! hash (HMAC-SHA256 over issuer and subject), never written raw.

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::b64;

/// What was decided for one request, for the audit log (JSON lines).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The adapter's request id.
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// Normalised host, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Normalised path (no query: queries may carry personal data).
    pub path: String,
    /// The matched route's path prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// `forward` or `deny`.
    pub decision: &'static str,
    /// Status answered (for `deny`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Reason code (for `deny`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The phase that answered, for every decision but `forward` (`authenticate`,
    /// `risk`, …: the names of [`crate::phase::NAMES`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
    /// The configured issuer's name, if the token named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Pseudonymous subject: `HMAC-SHA256(key, iss 0x00 sub)`, base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The region forwarded to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The backend forwarded to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The actor chain of a delegated token (`agent > sub-agent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The risk phase: combined score, action and every plugin's contribution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<crate::model::RiskVerdict>,
    /// The browser session, when the route takes one: `valid`, `renewed`, `refreshed`,
    /// `adopted`, `refresh_failed`, or why there was none (`none`, `idle_expired`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'static str>,
    /// The purposes the route needs consent for, checked on this request (granted, or the
    /// reason is `consent_required`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consent: Vec<String>,
    /// The W3C trace this request belongs to (32 hex digits; the caller's, or one the
    /// gateway started), when the adapter gives random ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The gateway's span for this request (16 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The caller's span, when its trace was continued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// The backend's response status, once it answered (set by the adapter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_status: Option<u16>,
    /// Microseconds from sending the request to the backend until its response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_us: Option<u64>,
    /// The phases that ran, in order, timed on the adapter's monotonic clock (none when it
    /// has none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseTime>,
}

/// One phase of a decision, timed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhaseTime {
    /// The phase ([`crate::phase::NAMES`]).
    pub phase: &'static str,
    /// Microseconds from the decision's start to the phase's.
    pub start_us: u64,
    /// Microseconds the phase took.
    pub us: u64,
}

/// The pseudonym of `subject` at `issuer` under `key`.
pub fn pseudonymize(key: &[u8], issuer: &str, subject: &str) -> String {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(issuer.as_bytes());
            mac.update(&[0]);
            mac.update(subject.as_bytes());
            b64::encode(&mac.finalize().into_bytes())
        }
        Err(_) => String::from("unkeyed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_depend_on_key_issuer_and_subject_and_hide_the_subject() {
        let a = pseudonymize(&[1; 32], "https://idp", "alice");
        assert_eq!(a, pseudonymize(&[1; 32], "https://idp", "alice"));
        assert_ne!(a, pseudonymize(&[2; 32], "https://idp", "alice"));
        assert_ne!(a, pseudonymize(&[1; 32], "https://other", "alice"));
        assert_ne!(a, pseudonymize(&[1; 32], "https://idp", "bob"));
        assert!(!a.contains("alice"));
        assert_eq!(a.len(), 43);
    }
}
