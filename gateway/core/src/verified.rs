//! Verified tokens shared through a store, for runtimes whose instances keep nothing
//! between requests (an edge bundle runs each request in a fresh instance): the first
//! instance that checks a token's signature leaves a sealed entry under a key derived from
//! the token, and the next instance given the same token uses it instead of checking again.
//!
//! A store may be reachable by more than the gateway (a shared Redis, a platform's key-value
//! service), so an entry is only believed when it is:
//! - **sealed**: HMAC-SHA256 under a key derived from the configuration's audit secret and
//!   the whole configuration snapshot ([`SealKey::derive`]), over the token's SHA-256 and the
//!   entry: whoever can write the store but does not hold the bundle cannot mint an
//!   identity, move an entry to another token, or carry one over from another configuration;
//! - **live**: until the token's `exp` plus the issuer's clock skew (the entry's own bound,
//!   beside the store's expiry);
//! - **from the current keys**: it names the fingerprint of the issuer's key set it was
//!   checked against ([`crate::keyset::KeySet::fingerprint`]); a rotation that changes the
//!   set drops every entry made under the old one.
//!
//! The rest of authentication (the route's issuers, DPoP binding, claim rules) runs on the
//! entry's claims exactly as on a freshly verified token.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::IssuerId;

/// The format tag of a sealed entry.
const TAG: &[u8; 4] = b"pvt1";
/// The label of the key derivation (domain separation from the audit secret's own use).
const LABEL: &[u8] = b"portcullis verified-token cache v1";
/// Where entries live in the store.
pub const STORE_PREFIX: &str = "portcullis/verified/";

/// The key entries are sealed with.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// HMAC-SHA256(`secret`, label ‖ SHA-256(`snapshot`)): one key per configuration, from a
    /// secret only the configuration's holder has (the audit subject key).
    /// `None` only if HMAC refused the secret (it takes keys of any length).
    pub fn derive(secret: &[u8], snapshot: &[u8]) -> Option<Self> {
        let mut mac = mac_with(secret)?;
        mac.update(LABEL);
        mac.update(&Sha256::digest(snapshot));
        Some(Self(mac.finalize().into_bytes().into()))
    }
}

fn mac_with(key: &[u8]) -> Option<Hmac<Sha256>> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()
}

/// A verified token's outcome, as an entry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The issuer that vouched for it.
    pub issuer: IssuerId,
    /// Unix milliseconds after which the token must be checked again (`exp` + skew).
    pub valid_until_ms: u64,
    /// The fingerprint of the issuer's key set it was checked against.
    pub key_set: [u8; 32],
    /// Its claims (a JSON object).
    pub claims: String,
}

/// SHA-256 of `token`: what a verified-token cache keys its entry by (never the token).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The store key of `token`'s entry: the prefix and its SHA-256, base64url.
pub fn store_key(token: &str) -> String {
    format!("{STORE_PREFIX}{}", crate::b64::encode(&token_digest(token)))
}

/// Until when (Unix milliseconds) a token verified at `now_ms` may be believed without
/// checking it again: its `exp` plus the issuer's clock skew, and at most `cap` from now;
/// `None` when that is not after `now_ms` (nothing worth keeping).
pub fn believed_until_ms(
    expires_at: f64,
    skew: std::time::Duration,
    now_ms: u64,
    cap: std::time::Duration,
) -> Option<u64> {
    let until_ms = ((expires_at + skew.as_secs_f64()) * 1000.0).max(0.0);
    // Saturating: a signed `exp` may be any number, 1e300 included.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let until_ms = until_ms.min(u64::MAX as f64) as u64;
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let until_ms = until_ms.min(now_ms.saturating_add(cap_ms));
    (until_ms > now_ms).then_some(until_ms)
}

fn mac_input(mac: &mut Hmac<Sha256>, token: &str, body: &[u8]) {
    mac.update(&Sha256::digest(token.as_bytes()));
    mac.update(body);
}

/// `entry` sealed for `token`.
pub fn seal(key: &SealKey, token: &str, entry: &Entry) -> Option<Vec<u8>> {
    let issuer = u32::try_from(entry.issuer.0).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + 4 + 8 + 32 + entry.claims.len() + 32);
    out.extend_from_slice(TAG);
    out.extend_from_slice(&issuer.to_be_bytes());
    out.extend_from_slice(&entry.valid_until_ms.to_be_bytes());
    out.extend_from_slice(&entry.key_set);
    out.extend_from_slice(entry.claims.as_bytes());
    let mut mac = mac_with(&key.0)?;
    mac_input(&mut mac, token, &out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    Some(out)
}

/// The entry in `bytes` if it is sealed with `key` for `token` and still live at `now_ms`;
/// `None` for anything else (forged, moved, truncated, expired, another format).
pub fn open(key: &SealKey, token: &str, bytes: &[u8], now_ms: u64) -> Option<Entry> {
    let split = bytes.len().checked_sub(32)?;
    let (body, tag) = bytes.split_at_checked(split)?;
    let mut mac = mac_with(&key.0)?;
    mac_input(&mut mac, token, body);
    mac.verify_slice(tag).ok()?; // constant-time
    let rest = body.strip_prefix(TAG.as_slice())?;
    let (issuer, rest) = rest.split_first_chunk::<4>()?;
    let (until, rest) = rest.split_first_chunk::<8>()?;
    let (key_set, claims) = rest.split_first_chunk::<32>()?;
    let valid_until_ms = u64::from_be_bytes(*until);
    if now_ms >= valid_until_ms {
        return None;
    }
    Some(Entry {
        issuer: IssuerId(usize::try_from(u32::from_be_bytes(*issuer)).ok()?),
        valid_until_ms,
        key_set: *key_set,
        claims: String::from_utf8(claims.to_vec()).ok()?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            issuer: IssuerId(2),
            valid_until_ms: 2_000,
            key_set: [7; 32],
            claims: r#"{"sub":"a"}"#.into(),
        }
    }

    fn key() -> SealKey {
        SealKey::derive(&[1; 32], b"snapshot").unwrap()
    }

    #[test]
    fn a_token_is_believed_until_exp_plus_skew_and_at_most_the_cap() {
        use std::time::Duration;
        let hour = Duration::from_secs(3600);
        let skew = Duration::from_secs(30);
        // exp 1,000 s, skew 30 s: until 1,030 s.
        assert_eq!(
            believed_until_ms(1_000.0, skew, 900_000, hour),
            Some(1_030_000)
        );
        // The cap wins over a far `exp`, an absurd one included.
        assert_eq!(believed_until_ms(1e300, skew, 5_000, hour), Some(3_605_000));
        assert_eq!(
            believed_until_ms(f64::INFINITY, skew, u64::MAX - 1, hour),
            Some(u64::MAX)
        );
        // Expired (with the skew), or a negative / NaN `exp`: nothing to keep.
        assert_eq!(believed_until_ms(1_000.0, skew, 1_030_000, hour), None);
        assert_eq!(believed_until_ms(-5.0, skew, 40_000, hour), None);
        assert_eq!(believed_until_ms(f64::NAN, Duration::ZERO, 0, hour), None);
    }

    #[test]
    fn a_sealed_entry_opens_for_its_token_while_live() {
        let sealed = seal(&key(), "t1", &entry()).unwrap();
        assert_eq!(open(&key(), "t1", &sealed, 1_999), Some(entry()));
        assert_eq!(open(&key(), "t1", &sealed, 2_000), None, "expired");
    }

    #[test]
    fn forged_moved_or_foreign_entries_are_not_believed() {
        let sealed = seal(&key(), "t1", &entry()).unwrap();
        // Another token's key.
        assert_eq!(open(&key(), "t2", &sealed, 0), None);
        // Another configuration (or another secret).
        assert_eq!(
            open(
                &SealKey::derive(&[1; 32], b"other").unwrap(),
                "t1",
                &sealed,
                0
            ),
            None
        );
        assert_eq!(
            open(
                &SealKey::derive(&[2; 32], b"snapshot").unwrap(),
                "t1",
                &sealed,
                0
            ),
            None
        );
        // Any changed byte: the issuer, the expiry, the claims, the tag itself.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open(&key(), "t1", &bad, 0), None, "byte {i}");
        }
        // Truncated anywhere.
        for n in 0..sealed.len() {
            assert_eq!(open(&key(), "t1", &sealed[..n], 0), None, "{n} bytes");
        }
        // An entry sealed without the key (what a store writer could make).
        let mut unsealed = sealed[..sealed.len() - 32].to_vec();
        unsealed.extend_from_slice(&[0; 32]);
        assert_eq!(open(&key(), "t1", &unsealed, 0), None);
    }

    #[test]
    fn store_keys_name_the_token_by_its_hash_only() {
        let k = store_key("secret-token");
        assert!(k.starts_with(STORE_PREFIX));
        assert!(!k.contains("secret-token"));
        assert_ne!(k, store_key("secret-token2"));
        assert_eq!(k, store_key("secret-token"));
    }
}
