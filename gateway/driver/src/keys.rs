//! Key-set refresh, the same on every runtime: the core's [`KeyStore`] says which
//! documents are due (discovery, then the key set it names), the runtime's
//! [`DocumentSource`] fetches them however its platform fetches, and the answers go back to
//! the store.

use std::cell::RefCell;
use std::sync::RwLock;

use portcullis_core::keyset::FetchRequest;
use portcullis_core::{FetchResponse, KeyStore, SignatureVerifier, Timestamp};

/// How many rounds of due fetches one refresh performs at most: discovery, then the key
/// set it names, with room for one retry of each.
pub const ROUNDS: usize = 4;

/// A fetched document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// HTTP status.
    pub status: u16,
    /// The `Cache-Control` field, if any.
    pub cache_control: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// When it was fetched, by whichever instance fetched it: its freshness counts from
    /// then (a runtime that shares fetched documents between instances passes the
    /// original time).
    pub fetched_at: Timestamp,
}

/// How a runtime fetches key documents (its HTTP client, the Fetch API, a shared cache
/// in front of either).
pub trait DocumentSource {
    /// Fetches `request.url`; an `Err` is a fetch that could not complete (the text is
    /// logged and kept as the issuer's last error).
    fn fetch(&self, request: &FetchRequest) -> impl Future<Output = Result<Document, String>>;
}

/// The key store as a runtime holds it: in a `RefCell` in a single-threaded isolate, behind
/// a lock in a multi-threaded host.
pub trait KeyHolder {
    /// The verifier's prepared key type.
    type Key;

    /// Runs `f` on the store; `None` when it cannot be reached (a poisoned lock).
    fn with_store<R>(&self, f: impl FnOnce(&mut KeyStore<Self::Key>) -> R) -> Option<R>;
}

impl<K> KeyHolder for RefCell<KeyStore<K>> {
    type Key = K;

    fn with_store<R>(&self, f: impl FnOnce(&mut KeyStore<K>) -> R) -> Option<R> {
        Some(f(&mut self.borrow_mut()))
    }
}

impl<K> KeyHolder for RwLock<KeyStore<K>> {
    type Key = K;

    fn with_store<R>(&self, f: impl FnOnce(&mut KeyStore<K>) -> R) -> Option<R> {
        self.write().ok().map(|mut s| f(&mut s))
    }
}

/// What became of one due document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// Fetched and accepted.
    Loaded,
    /// Fetched but refused (a bad status, an unparsable or unusable document).
    Rejected(String),
    /// Not fetched (unreachable, timed out, too large).
    Unreachable(String),
}

/// Fetches every due document through `source` and hands each answer to the store, for up
/// to [`ROUNDS`] rounds (a discovery document makes its key set due in the next round).
/// `now` is read at each step (a fetch may take a while); `report` hears of each document,
/// for logs and caches.
pub async fn refresh<H, V>(
    keys: &H,
    verifier: &V,
    source: &impl DocumentSource,
    now: impl Fn() -> Timestamp,
    mut report: impl FnMut(&FetchRequest, &Refreshed),
) where
    H: KeyHolder,
    V: SignatureVerifier<Key = H::Key>,
{
    for _ in 0..ROUNDS {
        let due = keys.with_store(|s| s.poll(now())).unwrap_or_default();
        if due.is_empty() {
            return;
        }
        for request in due {
            let fetched = source.fetch(&request).await;
            let outcome = keys.with_store(|store| match fetched {
                Ok(d) => {
                    let response = FetchResponse {
                        status: d.status,
                        cache_control: d.cache_control.as_deref(),
                        body: &d.body,
                    };
                    match store.on_response(
                        verifier,
                        request.issuer,
                        request.kind,
                        response,
                        d.fetched_at,
                    ) {
                        Ok(()) => Refreshed::Loaded,
                        Err(e) => Refreshed::Rejected(e),
                    }
                }
                Err(e) => {
                    store.on_failure(request.issuer, &e, now());
                    Refreshed::Unreachable(e)
                }
            });
            if let Some(outcome) = outcome {
                report(&request, &outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::cell::{Cell, RefCell};

    use portcullis_core::{FetchKind, IssuerId, PortableVerifier};

    use super::*;
    use crate::test_support::block_on;

    const CONFIG: &str = r#"
[[issuer]]
name = "idp"
issuer = "http://127.0.0.1:9"
discovery = true
insecure_http_jwks = true
audiences = ["api"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:10"]

[residency]
claim = "residency"
missing = "eu"
anonymous = "eu"

[[route]]
path = "/"

[audit]
subject_key_file = "audit.key"
"#;

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    /// Serves discovery and the key set from memory; counts fetches.
    struct Documents {
        fetched: RefCell<Vec<String>>,
        unreachable: Cell<bool>,
        now: Timestamp,
    }

    impl DocumentSource for Documents {
        async fn fetch(&self, request: &FetchRequest) -> Result<Document, String> {
            self.fetched.borrow_mut().push(request.url.clone());
            if self.unreachable.get() {
                return Err("connection refused".into());
            }
            let body = match request.kind {
                FetchKind::Discovery => {
                    r#"{"issuer":"http://127.0.0.1:9","jwks_uri":"http://127.0.0.1:9/jwks"}"#
                }
                FetchKind::Jwks => JWKS,
            };
            Ok(Document {
                status: 200,
                cache_control: Some("max-age=600".into()),
                body: body.as_bytes().to_vec(),
                fetched_at: self.now,
            })
        }
    }

    fn store(
        now: Timestamp,
    ) -> (
        RefCell<KeyStore<portcullis_core::crypto::PortableKey>>,
        Documents,
    ) {
        let config = crate::test_support::config(CONFIG);
        let keys = RefCell::new(KeyStore::new(&config, &PortableVerifier));
        let docs = Documents {
            fetched: RefCell::new(Vec::new()),
            unreachable: Cell::new(false),
            now,
        };
        (keys, docs)
    }

    #[test]
    fn discovery_then_the_key_set_it_names_in_one_refresh() {
        let now = Timestamp::from_unix_secs(1_800_000_000);
        let (keys, docs) = store(now);
        let mut seen = Vec::new();
        block_on(refresh(
            &keys,
            &PortableVerifier,
            &docs,
            || now,
            |r, o| {
                seen.push((r.kind, o.clone()));
            },
        ));
        assert_eq!(
            *docs.fetched.borrow(),
            [
                "http://127.0.0.1:9/.well-known/openid-configuration",
                "http://127.0.0.1:9/jwks"
            ]
        );
        assert_eq!(
            seen,
            [
                (FetchKind::Discovery, Refreshed::Loaded),
                (FetchKind::Jwks, Refreshed::Loaded)
            ]
        );
        assert!(keys.borrow().keys(IssuerId(0), now).is_ok());
        // Nothing is due while the set is fresh.
        block_on(refresh(&keys, &PortableVerifier, &docs, || now, |_, _| {}));
        assert_eq!(docs.fetched.borrow().len(), 2);
    }

    #[test]
    fn an_unreachable_issuer_is_reported_and_leaves_no_keys() {
        let now = Timestamp::from_unix_secs(1_800_000_000);
        let (keys, docs) = store(now);
        docs.unreachable.set(true);
        let mut seen = Vec::new();
        block_on(refresh(
            &keys,
            &PortableVerifier,
            &docs,
            || now,
            |_, o| {
                seen.push(o.clone());
            },
        ));
        assert_eq!(seen, [Refreshed::Unreachable("connection refused".into())]);
        assert!(keys.borrow().keys(IssuerId(0), now).is_err());
    }
}
