//! Key-set documents shared between instances through a key-value store (Spin key-value,
//! the edge bundle's `wasi:keyvalue`): what is stored, and when a stored copy may stand in
//! for a fetch.

use std::time::Duration;

use portcullis_core::Config;
use portcullis_core::config::JwksPolicy;
use portcullis_core::keyset::{FetchReason, FetchRequest, freshness};
use serde_json::{Value, json};

/// The store key of the document at `url`.
pub fn store_key(url: &str) -> String {
    format!("portcullis/keyset/{url}")
}

/// A fetched document as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDocument {
    /// When it was fetched (ms since the epoch).
    pub fetched_ms: u64,
    /// The HTTP status.
    pub status: u16,
    /// Its `Cache-Control`.
    pub cache_control: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl StoredDocument {
    /// The stored form (JSON, body in base64url).
    pub fn to_bytes(&self) -> Vec<u8> {
        json!({
            "fetched_ms": self.fetched_ms,
            "status": self.status,
            "cache_control": self.cache_control,
            "body": portcullis_core::b64::encode(&self.body),
        })
        .to_string()
        .into_bytes()
    }

    /// Reads a stored document; `None` for anything malformed.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        Some(Self {
            fetched_ms: v.get("fetched_ms")?.as_u64()?,
            status: u16::try_from(v.get("status")?.as_u64()?).ok()?,
            cache_control: v
                .get("cache_control")
                .and_then(Value::as_str)
                .map(str::to_owned),
            body: portcullis_core::b64::decode(v.get("body")?.as_str()?)?,
        })
    }

    /// The document as the key store takes it; its freshness counts from when it was
    /// fetched, by whichever instance fetched it.
    pub fn into_document(self) -> crate::keys::Document {
        crate::keys::Document {
            status: self.status,
            cache_control: self.cache_control,
            body: self.body,
            fetched_at: portcullis_core::Timestamp::from_duration(
                std::time::Duration::from_millis(self.fetched_ms),
            ),
        }
    }

    /// True when this copy may stand in for a fetch due for `reason` at `now_ms`: a
    /// successful answer, still fresh by its own `Cache-Control` under `policy`, and the
    /// fetch is not a refetch for an unknown `kid` (that one must ask the issuer).
    pub fn usable(&self, reason: FetchReason, policy: &JwksPolicy, now_ms: u64) -> bool {
        let ttl = freshness(self.cache_control.as_deref(), policy);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.status == 200
            && reason != FetchReason::UnknownKid
            && now_ms >= self.fetched_ms
            && now_ms - self.fetched_ms < ttl_ms
    }
}

/// The key-set policy of the issuer `request` is for.
pub fn policy(config: &Config, request: &FetchRequest) -> JwksPolicy {
    config
        .issuers
        .get(request.issuer.0)
        .map(|i| i.jwks_policy)
        .unwrap_or_default()
}

/// A stored copy (`bytes`, as [`StoredDocument::to_bytes`] wrote it) that may stand in for
/// `request` at `now_ms` under `policy` (see [`StoredDocument::usable`]).
pub fn usable_copy(
    bytes: &[u8],
    request: &FetchRequest,
    policy: &JwksPolicy,
    now_ms: u64,
) -> Option<crate::keys::Document> {
    StoredDocument::from_bytes(bytes)
        .filter(|d| d.usable(request.reason, policy, now_ms))
        .map(StoredDocument::into_document)
}

impl StoredDocument {
    /// How long a copy is worth storing for the other instances: while it is fresh (a
    /// failed fetch is not stored: `None`).
    pub fn shared_for(&self, policy: &JwksPolicy) -> Option<Duration> {
        (self.status == 200).then(|| freshness(self.cache_control.as_deref(), policy))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stored_documents_round_trip_and_expire_by_their_own_cache_control() {
        let doc = StoredDocument {
            fetched_ms: 1_000_000,
            status: 200,
            cache_control: Some("max-age=600".into()),
            body: br#"{"keys":[]}"#.to_vec(),
        };
        let back = StoredDocument::from_bytes(&doc.to_bytes()).unwrap();
        assert_eq!(back, doc);
        let policy = JwksPolicy::default();
        let fresh_for = u64::try_from(freshness(Some("max-age=600"), &policy).as_millis()).unwrap();
        assert!(doc.usable(FetchReason::Initial, &policy, 1_000_000 + fresh_for - 1));
        assert!(!doc.usable(FetchReason::Expired, &policy, 1_000_000 + fresh_for));
        assert!(!doc.usable(FetchReason::UnknownKid, &policy, 1_000_001));
        let failed = StoredDocument { status: 503, ..doc };
        assert!(!failed.usable(FetchReason::Initial, &policy, 1_000_001));
        assert_eq!(StoredDocument::from_bytes(b"{}"), None);
    }
}
