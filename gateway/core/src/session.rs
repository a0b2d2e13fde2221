//! Pure building blocks for browser sessions (the OIDC login flow): sealed cookies, the
//! session payload and its freshness rules, chunked `Set-Cookie` headers, per-attempt login
//! state with PKCE, and the ID token's `at_hash`.
//!
//! Nothing here reads a clock or a random source or performs I/O: callers pass the current
//! [`Timestamp`] and fresh random bytes (a 24-byte nonce per [`seal`], 96 bytes per
//! [`LoginState::new`]). No input makes any function panic.
//!
//! Formats:
//!
//! - sealed text: `v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>` — XChaCha20-Poly1305
//!   with a 24-byte nonce and a 16-byte tag, under the key named `kid` (1–16 characters of
//!   `[A-Za-z0-9_-]`). The associated data is the ASCII text `v1.<kid>.<purpose>`, so a
//!   text sealed for one purpose (say [`PURPOSE_LOGIN`]) never opens for another
//!   ([`PURPOSE_SESSION`]), and neither the version nor the key id can be swapped. The text
//!   uses only cookie-safe characters and is at most [`MAX_SEALED_LEN`] bytes.
//! - session cookies: the sealed JSON of a [`Session`], split over `<base>-0`, `<base>-1`, …
//!   (at most [`MAX_CHUNKS`]), each `name=value` at most [`MAX_COOKIE_PAIR_LEN`] bytes, with
//!   the attributes `Path=/; Secure; HttpOnly; SameSite=Lax` (+ `Max-Age`). Cookie names
//!   carry the `__Host-` prefix, so browsers accept them only with `Secure`, `Path=/` and no
//!   `Domain`: a sibling subdomain cannot plant or shadow them.
//! - login-attempt cookies: one cookie per attempt, named by [`login_cookie_name`] from the
//!   attempt's `state`, so several tabs logging in at once keep separate attempts; the value
//!   is the sealed JSON of a [`LoginState`] under [`PURPOSE_LOGIN`].
//!
//! Key rotation: a [`SessionKeys`] ring seals with its first key and opens with any, so a new
//! key can be put first while the old one still opens existing cookies until they expire.

use std::fmt;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use http::header::HeaderValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::b64;
use crate::challenge::safe_return_path;
use crate::crypto::Algorithm;
use crate::time::Timestamp;

/// The purpose label of session cookies ([`Session::seal`]).
pub const PURPOSE_SESSION: &str = "session";

/// The purpose label of login-attempt cookies ([`LoginState::seal`]).
pub const PURPOSE_LOGIN: &str = "login";

/// The longest sealed text [`open`] looks at (and [`seal`] produces); longer is
/// [`SessionError::TooLarge`]. Four cookies' worth.
pub const MAX_SEALED_LEN: usize = 16 * 1024;

/// The most cookies one value is split into ([`encode_cookies`], [`decode_cookies`]).
pub const MAX_CHUNKS: usize = 4;

/// The longest `name=value` of one cookie [`encode_cookies`] and [`set_cookie`] emit.
/// Browsers cap a cookie (name, value and attributes) near 4096 bytes; this leaves room for
/// the attributes.
pub const MAX_COOKIE_PAIR_LEN: usize = 3800;

/// How many chunk names [`clear_cookies`], the stale-chunk deletions of [`encode_cookies`] and
/// [`chunks_present`] consider at most (`<base>-0` … `<base>-7`).
pub const MAX_CLEAR_CHUNKS: usize = 8;

/// The most keys a [`SessionKeys`] ring holds.
pub const MAX_KEYS: usize = 16;

pub use crate::model::reserved::MAX_KID_LEN;

pub use crate::model::reserved::MAX_BASE_LEN;

pub use crate::model::reserved::HOST_PREFIX;

/// The prefix of login-attempt cookie names ([`login_cookie_name`]).
pub const LOGIN_COOKIE_PREFIX: &str = "__Host-portcullis-login-";

/// How many characters of the `state` name a login-attempt cookie.
pub const LOGIN_COOKIE_STATE_CHARS: usize = 12;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KNOWN_PURPOSES: [&str; 2] = [PURPOSE_SESSION, PURPOSE_LOGIN];
/// The longest chunk value [`decode_cookies`] accepts (a whole browser cookie).
const MAX_CHUNK_VALUE_LEN: usize = 4096;
const COOKIE_ATTRIBUTES: &str = "Path=/; Secure; HttpOnly; SameSite=Lax";

/// Why a key ring, sealed text or cookie set was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionError {
    /// Not a sealed text or cookie value of the expected shape: wrong number of parts, a key
    /// id or base64url that is not well formed, too short to hold nonce and tag, characters
    /// a cookie value may not carry, or a payload that does not parse after opening.
    Malformed,
    /// Sealed with a format version this build does not know.
    UnsupportedVersion,
    /// Sealed under a key id that is not (or no longer) in the ring.
    UnknownKey,
    /// Genuine, but sealed for another of this module's purposes (a login-attempt cookie
    /// offered as a session or the reverse).
    WrongPurpose,
    /// The authentication tag does not match: modified, sealed under another key with the
    /// same id, or sealed for a purpose this module does not know.
    Tampered,
    /// Longer than the limit: a sealed text over [`MAX_SEALED_LEN`], a value needing more
    /// than [`MAX_CHUNKS`] cookies, or one cookie over [`MAX_COOKIE_PAIR_LEN`].
    TooLarge,
    /// The request carries the same chunk name more than once, so the value is ambiguous.
    DuplicateChunk,
    /// The request carries more than [`MAX_CHUNKS`] consecutive chunks.
    TooManyChunks,
    /// A cookie name that is not an RFC 6265 token, lacks the `__Host-` prefix or is longer
    /// than [`MAX_BASE_LEN`].
    InvalidCookieName,
    /// A key ring that is empty, has more than [`MAX_KEYS`] keys, a key id that is not 1–16
    /// characters of `[A-Za-z0-9_-]`, or the same key id twice.
    InvalidKeyRing,
}

impl SessionError {
    /// A stable, machine-readable code (for logs, metrics and problem details).
    pub fn code(self) -> &'static str {
        match self {
            SessionError::Malformed => "session_malformed",
            SessionError::UnsupportedVersion => "session_unsupported_version",
            SessionError::UnknownKey => "session_unknown_key",
            SessionError::WrongPurpose => "session_wrong_purpose",
            SessionError::Tampered => "session_tampered",
            SessionError::TooLarge => "session_too_large",
            SessionError::DuplicateChunk => "session_duplicate_chunk",
            SessionError::TooManyChunks => "session_too_many_chunks",
            SessionError::InvalidCookieName => "session_invalid_cookie_name",
            SessionError::InvalidKeyRing => "session_invalid_key_ring",
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionError::Malformed => "sealed value or session cookie is malformed",
            SessionError::UnsupportedVersion => "sealed value has an unsupported version",
            SessionError::UnknownKey => "sealed value names a key id that is not configured",
            SessionError::WrongPurpose => "sealed value was made for another purpose",
            SessionError::Tampered => {
                "sealed value fails authentication (modified, another key or another purpose)"
            }
            SessionError::TooLarge => "value exceeds the size limit",
            SessionError::DuplicateChunk => "request carries a session cookie chunk twice",
            SessionError::TooManyChunks => "request carries too many session cookie chunks",
            SessionError::InvalidCookieName => {
                "cookie name is not a __Host- prefixed token of at most 64 characters"
            }
            SessionError::InvalidKeyRing => {
                "session key ring is empty, too long, or has an invalid or repeated key id"
            }
        })
    }
}

impl std::error::Error for SessionError {}

// ---------------------------------------------------------------------------------------
// Key ring, seal and open

/// An ordered ring of 32-byte XChaCha20-Poly1305 keys, each with a key id: the first seals,
/// all open. Its `Debug` shows the key ids only.
#[derive(Clone)]
pub struct SessionKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl SessionKeys {
    /// A ring of `keys` in order (the first seals). Refused ([`SessionError::InvalidKeyRing`])
    /// when empty, longer than [`MAX_KEYS`], with a key id that is not 1–16 characters of
    /// `[A-Za-z0-9_-]`, or with a repeated key id.
    pub fn new(keys: Vec<(String, [u8; 32])>) -> Result<Self, SessionError> {
        let ok = !keys.is_empty()
            && keys.len() <= MAX_KEYS
            && keys.iter().all(|(kid, _)| kid_ok(kid))
            && keys
                .iter()
                .enumerate()
                .all(|(i, (kid, _))| keys.iter().skip(i + 1).all(|(other, _)| other != kid));
        if ok {
            Ok(Self { keys })
        } else {
            Err(SessionError::InvalidKeyRing)
        }
    }

    /// The key id new values are sealed under.
    pub fn sealing_kid(&self) -> &str {
        self.keys
            .first()
            .map(|(kid, _)| kid.as_str())
            .unwrap_or_default()
    }

    /// Every key id, in ring order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(kid, _)| kid.as_str())
    }

    fn find(&self, kid: &str) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key)
    }
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("kids", &self.kids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Seals `plaintext` for `purpose` under the ring's first key with the caller's fresh random
/// `nonce` (never reuse one: 24 random bytes make collisions negligible): the text
/// `v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>` (see the module docs).
///
/// [`SessionError::TooLarge`] when the text would exceed [`MAX_SEALED_LEN`] (which [`open`]
/// would refuse).
pub fn seal(
    keys: &SessionKeys,
    purpose: &str,
    plaintext: &[u8],
    nonce: [u8; 24],
) -> Result<String, SessionError> {
    if plaintext.len() > MAX_SEALED_LEN {
        return Err(SessionError::TooLarge);
    }
    let kid = keys.sealing_kid();
    let key = keys.find(kid).ok_or(SessionError::InvalidKeyRing)?;
    let cipher = XChaCha20Poly1305::new(&Key::from(*key));
    let aad = associated_data(kid, purpose);
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        // Only for messages of 256 GiB and more, far above the limit checked first.
        .map_err(|_| SessionError::TooLarge)?;
    let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&ciphertext);
    let text = format!("{VERSION}.{kid}.{}", b64::encode(&raw));
    if text.len() > MAX_SEALED_LEN {
        return Err(SessionError::TooLarge);
    }
    Ok(text)
}

/// Opens a text made by [`seal`] for `purpose` under any key of the ring.
///
/// Errors: [`SessionError::TooLarge`] over [`MAX_SEALED_LEN`] bytes (checked first);
/// [`SessionError::UnsupportedVersion`] for `v<digits>` other than `v1`;
/// [`SessionError::Malformed`] for any other shape problem; [`SessionError::UnknownKey`];
/// [`SessionError::WrongPurpose`] when it opens for the other purpose of this module
/// ([`PURPOSE_SESSION`] / [`PURPOSE_LOGIN`]: tried only after authentication failed, to tell
/// the two apart — authenticated encryption cannot otherwise distinguish a wrong purpose from
/// a modification); [`SessionError::Tampered`] otherwise.
pub fn open(keys: &SessionKeys, purpose: &str, text: &str) -> Result<Vec<u8>, SessionError> {
    if text.len() > MAX_SEALED_LEN {
        return Err(SessionError::TooLarge);
    }
    let mut parts = text.splitn(3, '.');
    let (Some(version), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SessionError::Malformed);
    };
    if version != VERSION {
        let numbered = version.strip_prefix('v').is_some_and(|n| {
            !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit())
        });
        return Err(if numbered {
            SessionError::UnsupportedVersion
        } else {
            SessionError::Malformed
        });
    }
    if !kid_ok(kid) {
        return Err(SessionError::Malformed);
    }
    let raw = b64::decode(body).ok_or(SessionError::Malformed)?;
    let Some((nonce, ciphertext)) = raw.split_first_chunk::<NONCE_LEN>() else {
        return Err(SessionError::Malformed);
    };
    if ciphertext.len() < TAG_LEN {
        return Err(SessionError::Malformed);
    }
    let key = keys.find(kid).ok_or(SessionError::UnknownKey)?;
    let cipher = XChaCha20Poly1305::new(&Key::from(*key));
    let nonce = XNonce::from(*nonce);
    let attempt = |purpose: &str| {
        let aad = associated_data(kid, purpose);
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    };
    if let Some(plaintext) = attempt(purpose) {
        return Ok(plaintext);
    }
    let other_purpose = KNOWN_PURPOSES
        .into_iter()
        .filter(|p| *p != purpose)
        .any(|p| attempt(p).is_some());
    Err(if other_purpose {
        SessionError::WrongPurpose
    } else {
        SessionError::Tampered
    })
}

fn associated_data(kid: &str, purpose: &str) -> String {
    format!("{VERSION}.{kid}.{purpose}")
}

fn kid_ok(kid: &str) -> bool {
    (1..=MAX_KID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

// ---------------------------------------------------------------------------------------
// Session payload

/// A browser session after a successful login: who logged in, how, and the provider's
/// tokens. Sealed into cookies with [`Session::seal`]. Its `Debug` hides the tokens.
///
/// Times are whole Unix seconds. Optional fields may be absent from the JSON, and unknown
/// fields are ignored, so cookies survive adding a field (or rolling back a release that
/// added one).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session id (random, chosen by the caller): names the session in logs and in a
    /// server-side revocation list.
    pub sid: String,
    /// The configured provider the user logged in with.
    pub provider: String,
    /// The ID token's issuer.
    pub iss: String,
    /// The ID token's subject.
    pub sub: String,
    /// The claims the gateway forwards (email, name, …), a small subset of the ID token's.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The authentication context class reference, if the provider sent one.
    #[serde(default)]
    pub acr: Option<String>,
    /// The authentication methods used.
    #[serde(default)]
    pub amr: Vec<String>,
    /// When the user actually authenticated at the provider.
    #[serde(default)]
    pub auth_time: Option<u64>,
    /// When the session started (the absolute lifetime counts from here).
    pub created: u64,
    /// When the session was last seen in use, as last written ([`Session::touch`]).
    pub last_seen: u64,
    /// The provider's access token, if kept.
    #[serde(default)]
    pub access_token: Option<String>,
    /// When the access token expires.
    #[serde(default)]
    pub access_expires: Option<u64>,
    /// When the access token was received (with `access_expires`, its lifetime).
    #[serde(default)]
    pub access_issued: Option<u64>,
    /// The provider's refresh token, if one was issued.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// The ID token, kept for `id_token_hint` at logout.
    #[serde(default)]
    pub id_token: Option<String>,
    /// The scopes this sign-in asked the provider's consent screen for (space-separated),
    /// when it was a consent login: a purpose still missing after it is refused, not asked
    /// for again (no consent loop).
    #[serde(default)]
    pub consent_asked: Option<String>,
    /// What the sign-in's request showed of the client, for the `session_anomaly` check
    /// (`None` in sessions sealed before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<crate::client_signals::ClientSignals>,
    /// The provider's session id (the ID token's `sid`), if it sent one: a revocation here
    /// ends that provider session for its access tokens too (`session_bound_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_sid: Option<String>,
}

/// Whether a session may still be used ([`Session::state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Freshness {
    /// Within both the idle and the absolute lifetime.
    Valid,
    /// Not used for the idle lifetime.
    IdleExpired,
    /// Older than the absolute lifetime (regardless of use).
    AbsoluteExpired,
}

impl Session {
    /// Whether the session is usable at `now`: [`Freshness::AbsoluteExpired`] once `absolute`
    /// has passed since `created` (checked first), [`Freshness::IdleExpired`] once `idle` has
    /// passed since `last_seen`, else [`Freshness::Valid`]. Whole seconds; a `created` or
    /// `last_seen` in the future (clock skew between edge locations) counts as zero elapsed.
    pub fn state(&self, now: Timestamp, idle: Duration, absolute: Duration) -> Freshness {
        if elapsed(now, self.created) >= absolute {
            Freshness::AbsoluteExpired
        } else if elapsed(now, self.last_seen) >= idle {
            Freshness::IdleExpired
        } else {
            Freshness::Valid
        }
    }

    /// Whether to refresh now: a refresh token exists and the access token's known expiry is
    /// within the refresh window of `now` (or past). The window is `refresh_before`, but at
    /// most half the token's lifetime when that is known, so a provider issuing tokens that
    /// live no longer than `refresh_before` does not get a refresh on every request. Without
    /// `access_expires` the expiry is unknown and this is `false`.
    pub fn needs_refresh(&self, now: Timestamp, refresh_before: Duration) -> bool {
        let (Some(_), Some(exp)) = (&self.refresh_token, self.access_expires) else {
            return false;
        };
        let window = match self.access_issued {
            Some(issued) if exp >= issued => {
                refresh_before.min(Duration::from_secs((exp - issued) / 2))
            }
            _ => refresh_before,
        };
        now.saturating_add(window).unix_secs() >= exp
    }

    /// Rolling renewal: when `last_seen` is `renew_after` or more before `now`, sets it to
    /// `now` and returns `true` (the caller re-seals and re-sets the cookies); otherwise
    /// changes nothing and returns `false`, so not every request rewrites the cookies.
    pub fn touch(&mut self, now: Timestamp, renew_after: Duration) -> bool {
        if elapsed(now, self.last_seen) >= renew_after {
            self.last_seen = now.unix_secs();
            true
        } else {
            false
        }
    }

    /// This session as JSON sealed for [`PURPOSE_SESSION`] (see [`seal`]).
    pub fn seal(&self, keys: &SessionKeys, nonce: [u8; 24]) -> Result<String, SessionError> {
        let json = serde_json::to_vec(self).map_err(|_| SessionError::Malformed)?;
        seal(keys, PURPOSE_SESSION, &json, nonce)
    }

    /// The session in a text made by [`Session::seal`] (see [`open`] for the errors; a
    /// payload that is not a session is [`SessionError::Malformed`]).
    pub fn open(keys: &SessionKeys, text: &str) -> Result<Self, SessionError> {
        let json = open(keys, PURPOSE_SESSION, text)?;
        serde_json::from_slice(&json).map_err(|_| SessionError::Malformed)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .field("provider", &self.provider)
            .field("iss", &self.iss)
            .field("sub", &self.sub)
            .field("claims", &self.claims)
            .field("acr", &self.acr)
            .field("amr", &self.amr)
            .field("auth_time", &self.auth_time)
            .field("created", &self.created)
            .field("last_seen", &self.last_seen)
            .field("access_token", &redacted(&self.access_token))
            .field("access_expires", &self.access_expires)
            .field("access_issued", &self.access_issued)
            .field("refresh_token", &redacted(&self.refresh_token))
            .field("id_token", &redacted(&self.id_token))
            .field("consent_asked", &self.consent_asked)
            .finish()
    }
}

fn redacted(token: &Option<String>) -> Option<&'static str> {
    token.as_ref().map(|_| "<redacted>")
}

fn elapsed(now: Timestamp, since_secs: u64) -> Duration {
    now.saturating_since(Timestamp::from_unix_secs(since_secs))
}

// ---------------------------------------------------------------------------------------
// Cookies

/// The attributes of every cookie here: `Path=/; Secure; HttpOnly; SameSite=Lax`, plus
/// `Max-Age` when set (without it the cookies last until the browser session ends).
/// `SameSite=Lax` lets the provider's top-level redirect back carry the cookies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CookieAttrs {
    /// `Max-Age` in whole seconds, if any.
    pub max_age: Option<Duration>,
    /// `SameSite=None` instead of `Lax`: the cookie must come along on a cross-site POST
    /// (a login attempt answered with `response_mode=form_post`).
    pub cross_site_post: bool,
}

impl CookieAttrs {
    /// The attribute text, e.g. `Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=3600`.
    pub fn render(&self) -> String {
        let base = if self.cross_site_post {
            COOKIE_ATTRIBUTES.replace("SameSite=Lax", "SameSite=None")
        } else {
            COOKIE_ATTRIBUTES.to_owned()
        };
        match self.max_age {
            Some(age) => format!("{base}; Max-Age={}", age.as_secs()),
            None => base,
        }
    }
}

/// One `Set-Cookie` value `name=value; <attrs>`. [`SessionError::InvalidCookieName`] unless
/// `name` is a `__Host-` prefixed RFC 6265 token of at most [`MAX_BASE_LEN`] + 2 bytes;
/// [`SessionError::Malformed`] for an empty value or one with characters outside RFC 6265
/// `cookie-octet`; [`SessionError::TooLarge`] when `name=value` exceeds
/// [`MAX_COOKIE_PAIR_LEN`].
pub fn set_cookie(
    name: &str,
    value: &str,
    attrs: &CookieAttrs,
) -> Result<HeaderValue, SessionError> {
    if !cookie_name_ok(name, MAX_BASE_LEN + 2) {
        return Err(SessionError::InvalidCookieName);
    }
    if value.is_empty() || !value.bytes().all(cookie_octet) {
        return Err(SessionError::Malformed);
    }
    if name.len() + 1 + value.len() > MAX_COOKIE_PAIR_LEN {
        return Err(SessionError::TooLarge);
    }
    header(format!("{name}={value}; {}", attrs.render()))
}

/// The `Set-Cookie` value that deletes cookie `name` (`name=; <attrs>; Max-Age=0`; the
/// attributes must match the ones it was set with, which they do here).
pub fn delete_cookie(name: &str) -> Result<HeaderValue, SessionError> {
    if !cookie_name_ok(name, MAX_BASE_LEN + 2) {
        return Err(SessionError::InvalidCookieName);
    }
    header(format!("{name}=; {COOKIE_ATTRIBUTES}; Max-Age=0"))
}

/// The `Set-Cookie` values carrying `value` (a sealed text) as cookies `<base>-0`,
/// `<base>-1`, …, each `name=value` at most [`MAX_COOKIE_PAIR_LEN`] bytes, followed by
/// deletions (`Max-Age=0`) of `<base>-n` … `<base>-(previous_chunks - 1)` when the request
/// carried more chunks (`previous_chunks`, see [`chunks_present`]) than the new value needs
/// (at most up to [`MAX_CLEAR_CHUNKS`]).
///
/// Errors: [`SessionError::InvalidCookieName`] unless `base` is a `__Host-` prefixed RFC 6265
/// token of at most [`MAX_BASE_LEN`] bytes; [`SessionError::Malformed`] for an empty value or
/// one with characters outside `cookie-octet`; [`SessionError::TooLarge`] when it needs more
/// than [`MAX_CHUNKS`] cookies.
pub fn encode_cookies(
    base: &str,
    value: &str,
    attrs: &CookieAttrs,
    previous_chunks: usize,
) -> Result<Vec<HeaderValue>, SessionError> {
    if !base_ok(base) {
        return Err(SessionError::InvalidCookieName);
    }
    if value.is_empty() || !value.bytes().all(cookie_octet) {
        return Err(SessionError::Malformed);
    }
    // `<base>-N=`: the index is one digit since MAX_CHUNKS <= 10.
    let capacity = MAX_COOKIE_PAIR_LEN.saturating_sub(base.len() + 3).max(1);
    let chunks: Vec<&[u8]> = value.as_bytes().chunks(capacity).collect();
    if chunks.len() > MAX_CHUNKS {
        return Err(SessionError::TooLarge);
    }
    let attributes = attrs.render();
    let mut out = Vec::with_capacity(chunks.len().max(previous_chunks.min(MAX_CLEAR_CHUNKS)));
    for (i, chunk) in chunks.iter().enumerate() {
        // Cookie octets are ASCII, so every split point is a character boundary.
        let chunk = std::str::from_utf8(chunk).map_err(|_| SessionError::Malformed)?;
        out.push(header(format!("{base}-{i}={chunk}; {attributes}"))?);
    }
    for i in chunks.len()..previous_chunks.min(MAX_CLEAR_CHUNKS) {
        out.push(header(format!(
            "{base}-{i}=; {COOKIE_ATTRIBUTES}; Max-Age=0"
        ))?);
    }
    Ok(out)
}

/// The value split over cookies `<base>-0`, `<base>-1`, … in every `Cookie` header of the
/// request, joined in order and stopping at the first missing index. `None` without
/// `<base>-0`. Cookies with an empty value count as absent (a browser may keep an emptied
/// cookie).
///
/// Errors: [`SessionError::InvalidCookieName`] for an invalid `base` (see
/// [`encode_cookies`]); [`SessionError::DuplicateChunk`] when a chunk name among the first
/// [`MAX_CHUNKS`] + 1 appears twice with a value; [`SessionError::TooManyChunks`] for more
/// than [`MAX_CHUNKS`] consecutive chunks; [`SessionError::Malformed`] for a chunk value
/// with characters outside `cookie-octet`; [`SessionError::TooLarge`] for a chunk value over
/// 4096 bytes.
pub fn decode_cookies(
    headers: &http::HeaderMap,
    base: &str,
) -> Result<Option<String>, SessionError> {
    if !base_ok(base) {
        return Err(SessionError::InvalidCookieName);
    }
    let mut slots: [Option<&[u8]>; MAX_CHUNKS + 1] = [None; MAX_CHUNKS + 1];
    for (index, value) in chunk_cookies(headers, base) {
        if value.is_empty() {
            continue;
        }
        let Some(slot) = slots.get_mut(index) else {
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(SessionError::DuplicateChunk);
        }
    }
    let mut joined = String::new();
    for (i, slot) in slots.iter().enumerate() {
        let Some(value) = slot else { break };
        if i == MAX_CHUNKS {
            return Err(SessionError::TooManyChunks);
        }
        if value.len() > MAX_CHUNK_VALUE_LEN {
            return Err(SessionError::TooLarge);
        }
        if !value.iter().copied().all(cookie_octet) {
            return Err(SessionError::Malformed);
        }
        joined.push_str(std::str::from_utf8(value).map_err(|_| SessionError::Malformed)?);
    }
    Ok((!joined.is_empty()).then_some(joined))
}

/// How many chunk cookies to delete or overwrite: one more than the highest index `N` <
/// [`MAX_CLEAR_CHUNKS`] of any `<base>-N` in the request (gaps included), 0 when there is
/// none or `base` is invalid. Pass it as `previous_chunks` to [`encode_cookies`] or as
/// `count` to [`clear_cookies`].
pub fn chunks_present(headers: &http::HeaderMap, base: &str) -> usize {
    if !base_ok(base) {
        return 0;
    }
    chunk_cookies(headers, base)
        .filter(|(index, _)| *index < MAX_CLEAR_CHUNKS)
        .map(|(index, _)| index + 1)
        .max()
        .unwrap_or(0)
}

/// The `Set-Cookie` values deleting `<base>-0` … `<base>-(count - 1)` (at most
/// [`MAX_CLEAR_CHUNKS`]), for logout: `<base>-N=; Path=/; Secure; HttpOnly; SameSite=Lax;
/// Max-Age=0`. Takes no [`CookieAttrs`]: a browser matches a deletion by name and path only,
/// and `Max-Age` is always 0. [`SessionError::InvalidCookieName`] for an invalid `base` (see
/// [`encode_cookies`]).
pub fn clear_cookies(base: &str, count: usize) -> Result<Vec<HeaderValue>, SessionError> {
    if !base_ok(base) {
        return Err(SessionError::InvalidCookieName);
    }
    (0..count.min(MAX_CLEAR_CHUNKS))
        .map(|i| header(format!("{base}-{i}=; {COOKIE_ATTRIBUTES}; Max-Age=0")))
        .collect()
}

/// Every `(index, value)` of a cookie named `<base>-<index>` (index in canonical decimal, no
/// leading zeros, at most two digits) in the request's `Cookie` headers, values trimmed.
fn chunk_cookies<'a>(
    headers: &'a http::HeaderMap,
    base: &'a str,
) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
    crate::cookies::pairs(headers).filter_map(move |pair| {
        let digits = pair
            .name
            .strip_prefix(base.as_bytes())?
            .strip_prefix(b"-")?;
        let canonical = matches!(digits, [b'0'..=b'9'] | [b'1'..=b'9', b'0'..=b'9']);
        if !canonical {
            return None;
        }
        let index = digits
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        Some((index, pair.value))
    })
}

fn header(text: String) -> Result<HeaderValue, SessionError> {
    HeaderValue::try_from(text).map_err(|_| SessionError::Malformed)
}

fn base_ok(base: &str) -> bool {
    cookie_name_ok(base, MAX_BASE_LEN)
}

fn cookie_name_ok(name: &str, max_len: usize) -> bool {
    name.len() <= max_len
        && name.len() > HOST_PREFIX.len()
        && name.starts_with(HOST_PREFIX)
        && name.bytes().all(token_char)
}

/// RFC 6265 `token` (RFC 2616): visible ASCII except separators.
fn token_char(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'(' | b')'
                | b'<'
                | b'>'
                | b'@'
                | b','
                | b';'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'='
                | b'{'
                | b'}'
        )
}

/// RFC 6265 `cookie-octet`.
fn cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

// ---------------------------------------------------------------------------------------
// Login attempts

/// One login attempt, kept in its own cookie ([`login_cookie_name`]) between the redirect to
/// the provider and the callback. Its `Debug` hides the nonce and the PKCE verifier.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` parameter sent to the provider (43 base64url characters).
    pub state: String,
    /// The `nonce` parameter sent to the provider, expected back in the ID token.
    pub nonce: String,
    /// The PKCE `code_verifier` (43 characters; its challenge is [`pkce_challenge`]).
    pub pkce_verifier: String,
    /// Where to send the browser after login: a same-origin path.
    pub return_to: String,
    /// The configured provider this attempt logs in with.
    pub provider: String,
    /// When the attempt started, Unix seconds.
    pub created: u64,
    /// The scopes this attempt asks the consent screen for, when it is a consent login.
    #[serde(default)]
    pub consent_scopes: Option<String>,
}

impl LoginState {
    /// A new attempt from 96 fresh random bytes: `state`, `nonce` and `pkce_verifier` are the
    /// base64url of bytes 0–31, 32–63 and 64–95 (43 characters each, within the RFC 7636
    /// verifier charset and length). A `return_to` that [`safe_return_path`] refuses becomes
    /// `/`.
    pub fn new(random: &[u8; 96], provider: &str, return_to: &str, now: Timestamp) -> Self {
        let mut parts = random.chunks_exact(32).map(b64::encode);
        let state = parts.next().unwrap_or_default();
        let nonce = parts.next().unwrap_or_default();
        let pkce_verifier = parts.next().unwrap_or_default();
        Self {
            state,
            nonce,
            pkce_verifier,
            return_to: safe_return_path(return_to).unwrap_or("/").to_owned(),
            provider: provider.to_owned(),
            created: now.unix_secs(),
            consent_scopes: None,
        }
    }

    /// Whether `ttl` or more has passed since the attempt started (whole seconds).
    pub fn expired(&self, now: Timestamp, ttl: Duration) -> bool {
        elapsed(now, self.created) >= ttl
    }

    /// The name of this attempt's cookie ([`login_cookie_name`] of its `state`).
    pub fn cookie_name(&self) -> String {
        login_cookie_name(&self.state)
    }

    /// Whether the callback's `state` parameter is this attempt's (compared in constant
    /// time).
    pub fn state_matches(&self, state: &str) -> bool {
        let (a, b) = (self.state.as_bytes(), state.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// This attempt as JSON sealed for [`PURPOSE_LOGIN`] (see [`seal`]).
    pub fn seal(&self, keys: &SessionKeys, nonce: [u8; 24]) -> Result<String, SessionError> {
        let json = serde_json::to_vec(self).map_err(|_| SessionError::Malformed)?;
        seal(keys, PURPOSE_LOGIN, &json, nonce)
    }

    /// The attempt in a text made by [`LoginState::seal`] (see [`open`] for the errors; a
    /// payload that is not a login state, or whose `return_to` is not a safe return path, is
    /// [`SessionError::Malformed`]).
    pub fn open(keys: &SessionKeys, text: &str) -> Result<Self, SessionError> {
        let json = open(keys, PURPOSE_LOGIN, text)?;
        let login: Self = serde_json::from_slice(&json).map_err(|_| SessionError::Malformed)?;
        if safe_return_path(&login.return_to).is_none() {
            return Err(SessionError::Malformed);
        }
        Ok(login)
    }
}

impl fmt::Debug for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginState")
            .field("state", &self.state)
            .field("nonce", &"<redacted>")
            .field("pkce_verifier", &"<redacted>")
            .field("return_to", &self.return_to)
            .field("provider", &self.provider)
            .field("created", &self.created)
            .field("consent_scopes", &self.consent_scopes)
            .finish()
    }
}

/// The cookie name of the login attempt with this `state`:
/// `__Host-portcullis-login-<first 12 characters of state>`. Characters outside
/// `[A-Za-z0-9_-]` are left out first (a `state` from [`LoginState::new`] has none), so the
/// name is always a valid cookie name.
pub fn login_cookie_name(state: &str) -> String {
    let short: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(LOGIN_COOKIE_STATE_CHARS)
        .collect();
    format!("{LOGIN_COOKIE_PREFIX}{short}")
}

/// The PKCE `S256` code challenge of `verifier` (RFC 7636 §4.2): base64url(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    b64::encode(&Sha256::digest(verifier.as_bytes()))
}

// ---------------------------------------------------------------------------------------
// at_hash

/// The ID token's expected `at_hash` for `access_token` (OIDC Core §3.1.3.6): base64url of
/// the left half of the hash of the token's ASCII octets, with the hash of the ID token's
/// `alg`: SHA-256 for `*256`, SHA-384 for `*384`, SHA-512 for `*512`. For `EdDSA` (the core
/// verifies Ed25519 only) SHA-512, the hash inside Ed25519 — what providers and libraries
/// commonly use, as OIDC Core names no hash for it. `None` is reserved for an algorithm with
/// no defined hash; every algorithm of [`Algorithm`] has one today.
pub fn at_hash(alg: Algorithm, access_token: &str) -> Option<String> {
    let token = access_token.as_bytes();
    let digest: Vec<u8> = match alg {
        Algorithm::HS256 | Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 => {
            Sha256::digest(token).to_vec()
        }
        Algorithm::HS384 | Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 => {
            Sha384::digest(token).to_vec()
        }
        Algorithm::HS512 | Algorithm::RS512 | Algorithm::PS512 | Algorithm::EdDSA => {
            Sha512::digest(token).to_vec()
        }
    };
    digest.get(..digest.len() / 2).map(b64::encode)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use http::HeaderMap;
    use http::header::COOKIE;
    use proptest::prelude::*;

    const BASE: &str = "__Host-portcullis-session";
    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];
    const N1: [u8; 24] = [7; 24];
    const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);

    fn ring(keys: &[(&str, [u8; 32])]) -> SessionKeys {
        SessionKeys::new(keys.iter().map(|(k, v)| (k.to_string(), *v)).collect()).unwrap()
    }

    fn keys() -> SessionKeys {
        ring(&[("k1", K1)])
    }

    fn at(secs_after_now: u64) -> Timestamp {
        NOW.saturating_add(Duration::from_secs(secs_after_now))
    }

    /// A request whose `Cookie` header(s) carry the `name=value` pairs of `set_cookies`
    /// (deletions, `Max-Age=0`, left out as a browser would).
    fn request_with(set_cookies: &[HeaderValue]) -> HeaderMap {
        let pairs: Vec<&str> = set_cookies
            .iter()
            .map(|v| v.to_str().unwrap())
            .filter(|v| !v.ends_with("Max-Age=0"))
            .map(|v| v.split(';').next().unwrap())
            .collect();
        cookies(&[&pairs.join("; ")])
    }

    fn cookies(headers: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for h in headers {
            map.append(COOKIE, HeaderValue::from_str(h).unwrap());
        }
        map
    }

    fn session() -> Session {
        let mut claims = serde_json::Map::new();
        claims.insert("email".into(), "alice@example.com".into());
        claims.insert("name".into(), "Alice Example".into());
        Session {
            sid: "c2lkLTEyMzQ1Njc4OTAxMjM0NTY".into(),
            provider: "corp".into(),
            iss: "https://login.example.com".into(),
            sub: "248289761001".into(),
            claims,
            acr: Some("urn:mace:incommon:iap:silver".into()),
            amr: vec!["pwd".into(), "otp".into()],
            auth_time: Some(NOW.unix_secs() - 10),
            created: NOW.unix_secs(),
            last_seen: NOW.unix_secs(),
            access_token: Some("access-secret".into()),
            access_expires: Some(NOW.unix_secs() + 3600),
            access_issued: Some(NOW.unix_secs()),
            refresh_token: Some("refresh-secret".into()),
            id_token: Some("id-token-secret".into()),
            consent_asked: None,
            signals: None,
            op_sid: None,
        }
    }

    // ---- seal / open ----

    #[test]
    fn a_cookie_for_a_cross_site_post_is_samesite_none() {
        let attrs = CookieAttrs {
            max_age: Some(Duration::from_secs(600)),
            cross_site_post: true,
        };
        assert_eq!(
            attrs.render(),
            "Path=/; Secure; HttpOnly; SameSite=None; Max-Age=600"
        );
    }

    #[test]
    fn seal_and_open_round_trip_in_the_documented_format() {
        let text = seal(&keys(), PURPOSE_SESSION, b"hello", N1).unwrap();
        assert!(text.starts_with("v1.k1."), "{text}");
        assert!(text.bytes().all(cookie_octet));
        let raw = b64::decode(text.strip_prefix("v1.k1.").unwrap()).unwrap();
        assert_eq!(raw.len(), 24 + 5 + 16, "nonce ‖ ciphertext ‖ tag");
        assert_eq!(&raw[..24], &N1);
        assert_eq!(open(&keys(), PURPOSE_SESSION, &text).unwrap(), b"hello");
        // Empty plaintext too.
        let empty = seal(&keys(), PURPOSE_SESSION, b"", N1).unwrap();
        assert_eq!(open(&keys(), PURPOSE_SESSION, &empty).unwrap(), b"");
    }

    #[test]
    fn the_same_plaintext_under_different_nonces_seals_differently() {
        let a = seal(&keys(), PURPOSE_SESSION, b"x", [1; 24]).unwrap();
        let b = seal(&keys(), PURPOSE_SESSION, b"x", [2; 24]).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn rotation_seals_with_the_first_key_and_opens_with_every_key() {
        let old = ring(&[("old", K1)]);
        let sealed_before = seal(&old, PURPOSE_SESSION, b"before", N1).unwrap();
        let rotated = ring(&[("new", K2), ("old", K1)]);
        assert_eq!(rotated.sealing_kid(), "new");
        assert_eq!(rotated.kids().collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(
            open(&rotated, PURPOSE_SESSION, &sealed_before).unwrap(),
            b"before"
        );
        let sealed_after = seal(&rotated, PURPOSE_SESSION, b"after", N1).unwrap();
        assert!(sealed_after.starts_with("v1.new."));
        assert_eq!(
            open(&rotated, PURPOSE_SESSION, &sealed_after).unwrap(),
            b"after"
        );
        // Once the old key is retired, its cookies no longer open.
        let retired = ring(&[("new", K2)]);
        assert_eq!(
            open(&retired, PURPOSE_SESSION, &sealed_before),
            Err(SessionError::UnknownKey)
        );
    }

    #[test]
    fn changing_any_single_character_is_refused() {
        let text = seal(&keys(), PURPOSE_SESSION, b"the session payload", N1).unwrap();
        for i in 0..text.len() {
            for replacement in [b'A', b'z', b'0', b'-', b'_', b'.'] {
                let mut bytes = text.clone().into_bytes();
                if bytes[i] == replacement {
                    continue;
                }
                bytes[i] = replacement;
                let tampered = String::from_utf8(bytes).unwrap();
                assert!(
                    open(&keys(), PURPOSE_SESSION, &tampered).is_err(),
                    "byte {i} -> {}",
                    replacement as char
                );
            }
        }
        // Flipping a bit of the ciphertext or tag is specifically Tampered.
        let body = text.strip_prefix("v1.k1.").unwrap();
        let mut raw = b64::decode(body).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            let tampered = format!("v1.k1.{}", b64::encode(&raw));
            assert_eq!(
                open(&keys(), PURPOSE_SESSION, &tampered),
                Err(SessionError::Tampered),
                "raw byte {i}"
            );
            raw[i] ^= 1;
        }
    }

    #[test]
    fn another_key_under_the_same_kid_is_tampered() {
        let text = seal(&keys(), PURPOSE_SESSION, b"x", N1).unwrap();
        assert_eq!(
            open(&ring(&[("k1", K2)]), PURPOSE_SESSION, &text),
            Err(SessionError::Tampered)
        );
    }

    #[test]
    fn swapping_the_kid_between_two_keys_fails_authentication() {
        // Same key bytes under two ids: the kid is bound by the associated data.
        let both = ring(&[("a", K1), ("b", K1)]);
        let text = seal(&both, PURPOSE_SESSION, b"x", N1).unwrap();
        let swapped = text.replacen("v1.a.", "v1.b.", 1);
        assert_eq!(
            open(&both, PURPOSE_SESSION, &swapped),
            Err(SessionError::Tampered)
        );
    }

    #[test]
    fn a_login_cookie_never_opens_as_a_session_nor_the_reverse() {
        let login = seal(&keys(), PURPOSE_LOGIN, b"x", N1).unwrap();
        let session = seal(&keys(), PURPOSE_SESSION, b"x", N1).unwrap();
        assert_eq!(
            open(&keys(), PURPOSE_SESSION, &login),
            Err(SessionError::WrongPurpose)
        );
        assert_eq!(
            open(&keys(), PURPOSE_LOGIN, &session),
            Err(SessionError::WrongPurpose)
        );
        // A purpose outside this module's is indistinguishable from a modification.
        let other = seal(&keys(), "csrf", b"x", N1).unwrap();
        assert_eq!(
            open(&keys(), PURPOSE_SESSION, &other),
            Err(SessionError::Tampered)
        );
        assert_eq!(open(&keys(), "csrf", &other).unwrap(), b"x");
        assert_eq!(
            open(&keys(), "csrf", &session),
            Err(SessionError::WrongPurpose)
        );
    }

    #[test]
    fn unknown_kid_is_refused_as_such() {
        let text = seal(&ring(&[("gone", K1)]), PURPOSE_SESSION, b"x", N1).unwrap();
        assert_eq!(
            open(&keys(), PURPOSE_SESSION, &text),
            Err(SessionError::UnknownKey)
        );
        assert_eq!(SessionError::UnknownKey.code(), "session_unknown_key");
    }

    #[test]
    fn malformed_versions_and_oversized_inputs_get_their_own_errors() {
        let good = seal(&keys(), PURPOSE_SESSION, b"x", N1).unwrap();
        let body = good.strip_prefix("v1.k1.").unwrap();
        assert_eq!(
            open(&keys(), PURPOSE_SESSION, &format!("v2.k1.{body}")),
            Err(SessionError::UnsupportedVersion)
        );
        for bad in [
            String::new(),
            "v1".into(),
            "v1.k1".into(),
            "v1.k1.".into(),
            format!("V1.k1.{body}"),
            format!("v.k1.{body}"),
            format!("v1..{body}"),
            format!("v1.k/1.{body}"),
            format!("v1.abcdefghijklmnopq.{body}"),
            format!("v1.k1.{body}="),
            format!("v1.k1.{body}.x"),
            format!("v1.k1.{}", b64::encode(&[0; 39])),
            "v1.k1.AAAA".into(),
            "\u{0}\u{ffff}".into(),
        ] {
            assert_eq!(
                open(&keys(), PURPOSE_SESSION, &bad),
                Err(SessionError::Malformed),
                "{bad:?}"
            );
        }
        // Exactly nonce + tag (empty plaintext) is the shortest well-formed body.
        assert_eq!(
            open(
                &keys(),
                PURPOSE_SESSION,
                &format!("v1.k1.{}", b64::encode(&[0; 40]))
            ),
            Err(SessionError::Tampered)
        );
        let huge = format!("v1.k1.{}", "A".repeat(MAX_SEALED_LEN));
        assert_eq!(
            open(&keys(), PURPOSE_SESSION, &huge),
            Err(SessionError::TooLarge)
        );
        assert_eq!(
            seal(&keys(), PURPOSE_SESSION, &vec![0; MAX_SEALED_LEN], N1),
            Err(SessionError::TooLarge)
        );
        // The largest plaintext that seals also opens.
        let max_plain = (MAX_SEALED_LEN - "v1.k1.".len()) * 3 / 4 - 40;
        let text = seal(&keys(), PURPOSE_SESSION, &vec![9; max_plain], N1).unwrap();
        assert!(text.len() <= MAX_SEALED_LEN);
        assert_eq!(
            open(&keys(), PURPOSE_SESSION, &text).unwrap().len(),
            max_plain
        );
        assert_eq!(
            seal(&keys(), PURPOSE_SESSION, &vec![9; max_plain + 3], N1),
            Err(SessionError::TooLarge)
        );
    }

    #[test]
    fn key_rings_are_validated() {
        let new = |kids: &[&str]| {
            SessionKeys::new(kids.iter().map(|k| (k.to_string(), K1)).collect()).map(|_| ())
        };
        assert_eq!(new(&["a", "b-2", "C_3", "abcdefghijklmnop"]), Ok(()));
        for bad in [
            &[][..],
            &[""][..],
            &["a.b"][..],
            &["a b"][..],
            &["abcdefghijklmnopq"][..],
            &["a", "a"][..],
            &["é"][..],
        ] {
            assert_eq!(new(bad), Err(SessionError::InvalidKeyRing), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_KEYS).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(new(&refs), Err(SessionError::InvalidKeyRing));
        assert_eq!(new(&refs[..MAX_KEYS]), Ok(()));
    }

    #[test]
    fn debug_output_shows_no_key_material_or_tokens() {
        let keys = ring(&[("k1", [0xAB; 32])]);
        let shown = format!("{keys:?}");
        assert!(shown.contains("k1"), "{shown}");
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
            "{shown}"
        );
        let shown = format!("{:?}", session());
        for secret in ["access-secret", "refresh-secret", "id-token-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("alice@example.com"));
        let login = LoginState::new(&random96(), "corp", "/", NOW);
        let shown = format!("{login:?}");
        assert!(shown.contains(&login.state));
        assert!(!shown.contains(&login.pkce_verifier) && !shown.contains(&login.nonce));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn every_error_has_a_distinct_code_and_a_message() {
        let all = [
            SessionError::Malformed,
            SessionError::UnsupportedVersion,
            SessionError::UnknownKey,
            SessionError::WrongPurpose,
            SessionError::Tampered,
            SessionError::TooLarge,
            SessionError::DuplicateChunk,
            SessionError::TooManyChunks,
            SessionError::InvalidCookieName,
            SessionError::InvalidKeyRing,
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(all.iter().all(|e| e.code().starts_with("session_")));
        assert!(all.iter().all(|e| !e.to_string().is_empty()));
    }

    proptest! {
        #[test]
        fn open_never_panics_on_arbitrary_text(text in ".{0,200}") {
            let _ = open(&keys(), PURPOSE_SESSION, &text);
            let _ = Session::open(&keys(), &text);
            let _ = LoginState::open(&keys(), &text);
        }

        #[test]
        fn open_never_panics_on_well_shaped_garbage(
            version in "v[0-9]{0,3}",
            kid in "[A-Za-z0-9_-]{0,20}",
            body in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let text = format!("{version}.{kid}.{}", b64::encode(&body));
            prop_assert!(open(&keys(), PURPOSE_SESSION, &text).is_err());
        }

        #[test]
        fn truncations_of_a_sealed_text_never_open(cut in 0usize..80) {
            let text = seal(&keys(), PURPOSE_SESSION, b"a session payload", N1).unwrap();
            let cut = cut.min(text.len() - 1);
            prop_assert!(open(&keys(), PURPOSE_SESSION, &text[..cut]).is_err());
        }

        #[test]
        fn any_plaintext_round_trips(
            plaintext in proptest::collection::vec(any::<u8>(), 0..600),
            nonce in any::<[u8; 24]>(),
        ) {
            let text = seal(&keys(), PURPOSE_LOGIN, &plaintext, nonce).unwrap();
            prop_assert_eq!(open(&keys(), PURPOSE_LOGIN, &text).unwrap(), plaintext);
        }

        #[test]
        fn decode_cookies_never_panics(header in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut map = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&header) {
                map.append(COOKIE, v);
            }
            let _ = decode_cookies(&map, BASE);
            let _ = chunks_present(&map, BASE);
        }
    }

    // ---- session payload ----

    #[test]
    fn a_session_seals_and_opens_and_is_not_a_login_state() {
        let s = session();
        let text = s.seal(&keys(), N1).unwrap();
        assert_eq!(Session::open(&keys(), &text).unwrap(), s);
        assert_eq!(
            LoginState::open(&keys(), &text),
            Err(SessionError::WrongPurpose)
        );
        // A genuine payload that is not a session.
        let not_json = seal(&keys(), PURPOSE_SESSION, b"[1,2]", N1).unwrap();
        assert_eq!(
            Session::open(&keys(), &not_json),
            Err(SessionError::Malformed)
        );
    }

    #[test]
    fn session_json_tolerates_missing_optional_and_unknown_fields() {
        let json = br#"{"sid":"s","provider":"p","iss":"i","sub":"u","created":1,"last_seen":2,"future":true}"#;
        let text = seal(&keys(), PURPOSE_SESSION, json, N1).unwrap();
        let s = Session::open(&keys(), &text).unwrap();
        assert_eq!((s.created, s.last_seen), (1, 2));
        assert!(s.claims.is_empty() && s.amr.is_empty() && s.access_token.is_none());
    }

    #[test]
    fn freshness_expires_on_idle_and_on_absolute_lifetime() {
        let idle = Duration::from_secs(1800);
        let absolute = Duration::from_secs(8 * 3600);
        let mut s = session();
        assert_eq!(s.state(NOW, idle, absolute), Freshness::Valid);
        assert_eq!(s.state(at(1799), idle, absolute), Freshness::Valid);
        assert_eq!(s.state(at(1800), idle, absolute), Freshness::IdleExpired);
        // Kept in use, it still ends at the absolute lifetime.
        s.last_seen = at(8 * 3600 - 1).unix_secs();
        assert_eq!(s.state(at(8 * 3600 - 1), idle, absolute), Freshness::Valid);
        assert_eq!(
            s.state(at(8 * 3600), idle, absolute),
            Freshness::AbsoluteExpired
        );
        // Absolute wins over idle when both have passed.
        s.last_seen = NOW.unix_secs();
        assert_eq!(
            s.state(at(9 * 3600), idle, absolute),
            Freshness::AbsoluteExpired
        );
        // Timestamps from a clock ahead of ours count as zero elapsed.
        s.last_seen = at(60).unix_secs();
        s.created = at(60).unix_secs();
        assert_eq!(s.state(NOW, idle, absolute), Freshness::Valid);
    }

    #[test]
    fn refresh_is_needed_only_near_expiry_and_with_a_refresh_token() {
        let skew = Duration::from_secs(60);
        let mut s = session(); // access token expires at NOW + 3600
        assert!(!s.needs_refresh(NOW, skew));
        assert!(!s.needs_refresh(at(3539), skew));
        assert!(s.needs_refresh(at(3540), skew));
        assert!(s.needs_refresh(at(7200), skew), "already expired");
        s.refresh_token = None;
        assert!(!s.needs_refresh(at(3540), skew), "nothing to refresh with");
        s.refresh_token = Some("r".into());
        s.access_expires = None;
        assert!(!s.needs_refresh(at(3540), skew), "unknown expiry");
    }

    #[test]
    fn tokens_living_no_longer_than_refresh_before_refresh_at_half_their_life() {
        // A 60 s token (oidc-provider's default) and the default `refresh_before` of 60 s:
        // not on every request, but once half its life has passed.
        let refresh_before = Duration::from_secs(60);
        let mut s = session();
        s.access_issued = Some(NOW.unix_secs());
        s.access_expires = Some(NOW.unix_secs() + 60);
        assert!(!s.needs_refresh(NOW, refresh_before));
        assert!(!s.needs_refresh(at(29), refresh_before));
        assert!(s.needs_refresh(at(30), refresh_before));
        // A long-lived token still refreshes `refresh_before` ahead.
        s.access_expires = Some(NOW.unix_secs() + 3600);
        assert!(!s.needs_refresh(at(3539), refresh_before));
        assert!(s.needs_refresh(at(3540), refresh_before));
        // Sessions sealed before the lifetime was recorded keep the plain window.
        s.access_issued = None;
        s.access_expires = Some(NOW.unix_secs() + 60);
        assert!(s.needs_refresh(NOW, refresh_before));
    }

    #[test]
    fn touch_rewrites_last_seen_only_after_renew_after() {
        let renew_after = Duration::from_secs(300);
        let mut s = session();
        assert!(!s.touch(at(299), renew_after));
        assert_eq!(s.last_seen, NOW.unix_secs());
        assert!(s.touch(at(300), renew_after));
        assert_eq!(s.last_seen, at(300).unix_secs());
        assert!(!s.touch(at(301), renew_after), "just renewed");
        // A last_seen from a clock ahead of ours is not rewritten backwards.
        s.last_seen = at(10_000).unix_secs();
        assert!(!s.touch(at(400), renew_after));
        assert_eq!(s.last_seen, at(10_000).unix_secs());
    }

    // ---- cookies ----

    #[test]
    fn cookie_attributes_render_as_documented() {
        assert_eq!(
            CookieAttrs::default().render(),
            "Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        let attrs = CookieAttrs {
            cross_site_post: false,
            max_age: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            attrs.render(),
            "Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=3600"
        );
    }

    fn value_of_len(n: usize) -> String {
        // Cookie-safe, and not periodic with the chunk size, so order mistakes show.
        (0..n)
            .map(|i| {
                char::from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."[i % 65],
                )
            })
            .collect()
    }

    fn capacity() -> usize {
        MAX_COOKIE_PAIR_LEN - BASE.len() - 3
    }

    #[test]
    fn chunked_cookies_round_trip_at_one_three_and_four_chunks() {
        let attrs = CookieAttrs {
            cross_site_post: false,
            max_age: Some(Duration::from_secs(86400)),
        };
        for (len, chunks) in [
            (1, 1),
            (100, 1),
            (capacity(), 1),
            (capacity() + 1, 2),
            (2 * capacity() + 5, 3),
            (4 * capacity(), 4),
        ] {
            let value = value_of_len(len);
            let set = encode_cookies(BASE, &value, &attrs, 0).unwrap();
            assert_eq!(set.len(), chunks, "len {len}");
            for (i, h) in set.iter().enumerate() {
                let h = h.to_str().unwrap();
                let (pair, rest) = h.split_once("; ").unwrap();
                assert!(pair.starts_with(&format!("{BASE}-{i}=")), "{pair}");
                assert!(pair.len() <= MAX_COOKIE_PAIR_LEN);
                assert_eq!(
                    rest,
                    "Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=86400"
                );
                assert!(h.len() < 4096, "whole Set-Cookie under the browser limit");
            }
            assert_eq!(
                decode_cookies(&request_with(&set), BASE).unwrap(),
                Some(value)
            );
            assert_eq!(chunks_present(&request_with(&set), BASE), chunks);
        }
    }

    #[test]
    fn chunks_may_arrive_in_any_order_and_in_separate_cookie_headers() {
        let value = value_of_len(2 * capacity() + 10);
        let set = encode_cookies(BASE, &value, &CookieAttrs::default(), 0).unwrap();
        let pairs: Vec<String> = set
            .iter()
            .map(|h| h.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect();
        let map = cookies(&[
            &format!("other=1; {}", pairs[2]),
            &format!("{}; {}", pairs[1], pairs[0]),
        ]);
        assert_eq!(decode_cookies(&map, BASE).unwrap(), Some(value));
    }

    #[test]
    fn more_than_max_chunks_is_too_large() {
        let value = value_of_len(4 * capacity() + 1);
        assert_eq!(
            encode_cookies(BASE, &value, &CookieAttrs::default(), 0),
            Err(SessionError::TooLarge)
        );
    }

    #[test]
    fn a_shorter_value_deletes_the_stale_chunks_of_a_longer_one() {
        let long = encode_cookies(
            BASE,
            &value_of_len(3 * capacity()),
            &CookieAttrs::default(),
            0,
        )
        .unwrap();
        let browser = request_with(&long);
        let previous = chunks_present(&browser, BASE);
        assert_eq!(previous, 3);
        let short = encode_cookies(BASE, "v1.k1.short", &CookieAttrs::default(), previous).unwrap();
        let texts: Vec<&str> = short.iter().map(|h| h.to_str().unwrap()).collect();
        assert_eq!(
            texts,
            [
                "__Host-portcullis-session-0=v1.k1.short; Path=/; Secure; HttpOnly; SameSite=Lax",
                "__Host-portcullis-session-1=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
                "__Host-portcullis-session-2=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
            ]
        );
        // Fewer previous chunks than new ones: nothing to delete; absurd counts are capped.
        assert_eq!(
            encode_cookies(BASE, "v", &CookieAttrs::default(), 1)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            encode_cookies(BASE, "v", &CookieAttrs::default(), usize::MAX)
                .unwrap()
                .len(),
            MAX_CLEAR_CHUNKS
        );
    }

    #[test]
    fn decoding_stops_at_the_first_gap_and_needs_chunk_zero() {
        let map = cookies(&[&format!("{BASE}-0=aa; {BASE}-1=bb; {BASE}-3=dd")]);
        assert_eq!(decode_cookies(&map, BASE).unwrap(), Some("aabb".into()));
        assert_eq!(
            chunks_present(&map, BASE),
            4,
            "stale chunk 3 is still counted"
        );
        let map = cookies(&[&format!("{BASE}-1=bb; {BASE}-2=cc")]);
        assert_eq!(decode_cookies(&map, BASE).unwrap(), None);
        assert_eq!(decode_cookies(&HeaderMap::new(), BASE).unwrap(), None);
        // Emptied cookies count as absent.
        let map = cookies(&[&format!("{BASE}-0=aa; {BASE}-1=; {BASE}-2=cc")]);
        assert_eq!(decode_cookies(&map, BASE).unwrap(), Some("aa".into()));
        // Other names that merely start alike are not chunks.
        let map = cookies(&[&format!(
            "{BASE}=x; {BASE}-00=x; {BASE}-01=x; {BASE}-a=x; {BASE}x-0=x; {BASE}-0=ok"
        )]);
        assert_eq!(decode_cookies(&map, BASE).unwrap(), Some("ok".into()));
    }

    #[test]
    fn a_duplicated_chunk_is_ambiguous() {
        let map = cookies(&[
            &format!("{BASE}-0=aa; {BASE}-1=bb"),
            &format!("{BASE}-1=cc"),
        ]);
        assert_eq!(
            decode_cookies(&map, BASE),
            Err(SessionError::DuplicateChunk)
        );
        let map = cookies(&[&format!("{BASE}-0=aa; {BASE}-0=aa")]);
        assert_eq!(
            decode_cookies(&map, BASE),
            Err(SessionError::DuplicateChunk)
        );
    }

    #[test]
    fn more_than_max_consecutive_chunks_is_refused() {
        let five: Vec<String> = (0..=MAX_CHUNKS).map(|i| format!("{BASE}-{i}=x")).collect();
        let map = cookies(&[&five.join("; ")]);
        assert_eq!(decode_cookies(&map, BASE), Err(SessionError::TooManyChunks));
        assert_eq!(chunks_present(&map, BASE), MAX_CHUNKS + 1);
    }

    #[test]
    fn bad_chunk_values_are_refused() {
        let map = cookies(&[&format!("{BASE}-0=\"quoted\"")]);
        assert_eq!(decode_cookies(&map, BASE), Err(SessionError::Malformed));
        let map = cookies(&[&format!("{BASE}-0={}", "a".repeat(4097))]);
        assert_eq!(decode_cookies(&map, BASE), Err(SessionError::TooLarge));
        let mut map = HeaderMap::new();
        map.append(
            COOKIE,
            HeaderValue::from_bytes(format!("{BASE}-0=caf\u{e9}").as_bytes()).unwrap(),
        );
        assert_eq!(decode_cookies(&map, BASE), Err(SessionError::Malformed));
    }

    #[test]
    fn cookie_names_must_be_host_prefixed_tokens() {
        let a = CookieAttrs::default();
        for bad in [
            "portcullis-session",
            "__Host-",
            "__Host-a b",
            "__Host-a;b",
            "__Host-a=b",
            "__host-a",
            "__Secure-a",
            &format!("__Host-{}", "a".repeat(MAX_BASE_LEN)),
        ] {
            assert_eq!(
                encode_cookies(bad, "v", &a, 0),
                Err(SessionError::InvalidCookieName),
                "{bad}"
            );
            assert_eq!(
                decode_cookies(&HeaderMap::new(), bad),
                Err(SessionError::InvalidCookieName)
            );
            assert_eq!(clear_cookies(bad, 1), Err(SessionError::InvalidCookieName));
            assert_eq!(chunks_present(&HeaderMap::new(), bad), 0);
        }
        for bad_value in ["", "a b", "a;b", "a,b", "\"a\"", "a\\b"] {
            assert_eq!(
                encode_cookies(BASE, bad_value, &a, 0),
                Err(SessionError::Malformed),
                "{bad_value:?}"
            );
        }
    }

    #[test]
    fn logout_clears_every_chunk() {
        let cleared = clear_cookies(BASE, 2).unwrap();
        let texts: Vec<&str> = cleared.iter().map(|h| h.to_str().unwrap()).collect();
        assert_eq!(
            texts,
            [
                "__Host-portcullis-session-0=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
                "__Host-portcullis-session-1=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
            ]
        );
        assert_eq!(clear_cookies(BASE, 100).unwrap().len(), MAX_CLEAR_CHUNKS);
        assert!(clear_cookies(BASE, 0).unwrap().is_empty());
    }

    #[test]
    fn single_cookies_are_set_and_deleted() {
        let attrs = CookieAttrs {
            cross_site_post: false,
            max_age: Some(Duration::from_secs(600)),
        };
        let name = login_cookie_name("abcdefghijklmnop");
        assert_eq!(
            set_cookie(&name, "v1.k1.x", &attrs).unwrap(),
            "__Host-portcullis-login-abcdefghijkl=v1.k1.x; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600"
        );
        assert_eq!(
            delete_cookie(&name).unwrap(),
            "__Host-portcullis-login-abcdefghijkl=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
        );
        assert_eq!(
            set_cookie(&name, &"a".repeat(MAX_COOKIE_PAIR_LEN), &attrs),
            Err(SessionError::TooLarge)
        );
        assert_eq!(
            set_cookie("plain", "v", &attrs),
            Err(SessionError::InvalidCookieName)
        );
        assert_eq!(set_cookie(&name, "", &attrs), Err(SessionError::Malformed));
        assert_eq!(delete_cookie("a=b"), Err(SessionError::InvalidCookieName));
    }

    #[test]
    fn a_typical_session_fits_in_one_or_two_cookies() {
        // A 1 KB ID token and a 1 KB access token (JWT-like base64url text), with an opaque
        // 100-byte refresh token (Okta, Auth0 style) or an 800-byte JWT one (Keycloak style).
        for (refresh_len, chunks) in [(100, 1), (800, 2)] {
            let mut s = session();
            s.id_token = Some(value_of_len(1024).replace('.', "A"));
            s.access_token = Some(value_of_len(1024).replace('.', "B"));
            s.refresh_token = Some(value_of_len(refresh_len).replace('.', "C"));
            let json_len = serde_json::to_vec(&s).unwrap().len();
            let sealed = s.seal(&keys(), N1).unwrap();
            let set = encode_cookies(BASE, &sealed, &CookieAttrs::default(), 0).unwrap();
            let header_bytes: usize = set.iter().map(|h| h.len()).sum();
            println!(
                "refresh token {refresh_len} B: JSON {json_len} B, sealed {} B, {} cookie(s), \
                 {header_bytes} B of Set-Cookie",
                sealed.len(),
                set.len()
            );
            assert_eq!(set.len(), chunks);
            let decoded = decode_cookies(&request_with(&set), BASE).unwrap().unwrap();
            assert_eq!(Session::open(&keys(), &decoded).unwrap(), s);
        }
    }

    // ---- login attempts ----

    fn random96() -> [u8; 96] {
        let mut r = [0u8; 96];
        for (i, b) in r.iter_mut().enumerate() {
            *b = i as u8;
        }
        r
    }

    #[test]
    fn login_state_derives_state_nonce_and_verifier_from_distinct_slices() {
        let r = random96();
        let login = LoginState::new(&r, "corp", "/app?x=1", NOW);
        assert_eq!(login.state, b64::encode(&r[0..32]));
        assert_eq!(login.nonce, b64::encode(&r[32..64]));
        assert_eq!(login.pkce_verifier, b64::encode(&r[64..96]));
        for v in [&login.state, &login.nonce, &login.pkce_verifier] {
            assert_eq!(v.len(), 43);
            // RFC 7636 §4.1: unreserved characters, 43–128 long.
            assert!(
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            );
        }
        assert_ne!(login.state, login.nonce);
        assert_ne!(login.nonce, login.pkce_verifier);
        assert_eq!(login.return_to, "/app?x=1");
        assert_eq!(login.provider, "corp");
        assert_eq!(login.created, NOW.unix_secs());
    }

    #[test]
    fn unsafe_return_paths_fall_back_to_the_root() {
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(
                LoginState::new(&random96(), "p", bad, NOW).return_to,
                "/",
                "{bad}"
            );
        }
    }

    #[test]
    fn login_cookie_names_use_the_first_twelve_state_characters() {
        let login = LoginState::new(&random96(), "corp", "/", NOW);
        let name = login.cookie_name();
        assert_eq!(
            name,
            format!("__Host-portcullis-login-{}", &login.state[..12])
        );
        assert_eq!(name, login_cookie_name(&login.state));
        assert!(cookie_name_ok(&name, MAX_BASE_LEN + 2));
        // Two tabs, two attempts, two cookies.
        let mut other = random96();
        other[0] ^= 0xff;
        assert_ne!(
            LoginState::new(&other, "corp", "/", NOW).cookie_name(),
            name
        );
        // A hostile state from a query string still yields a valid name.
        let hostile = login_cookie_name("a;b=c d\r\n/é");
        assert_eq!(hostile, "__Host-portcullis-login-abcd");
        assert!(cookie_name_ok(&hostile, MAX_BASE_LEN + 2));
    }

    #[test]
    fn login_state_seals_opens_expires_and_matches_its_state() {
        let login = LoginState::new(&random96(), "corp", "/back", NOW);
        let text = login.seal(&keys(), N1).unwrap();
        let opened = LoginState::open(&keys(), &text).unwrap();
        assert_eq!(opened, login);
        assert_eq!(
            Session::open(&keys(), &text),
            Err(SessionError::WrongPurpose)
        );
        let header = set_cookie(&login.cookie_name(), &text, &CookieAttrs::default()).unwrap();
        assert!(header.len() < 4096);
        assert!(opened.state_matches(&login.state));
        assert!(!opened.state_matches(&login.state[..42]));
        assert!(!opened.state_matches(&login.nonce));
        let ttl = Duration::from_secs(600);
        assert!(!login.expired(at(599), ttl));
        assert!(login.expired(at(600), ttl));
        // A sealed login state with an unsafe return path (impossible via `new`) is refused.
        let mut evil = login.clone();
        evil.return_to = "//evil.example".into();
        let json = serde_json::to_vec(&evil).unwrap();
        let text = seal(&keys(), PURPOSE_LOGIN, &json, N1).unwrap();
        assert_eq!(
            LoginState::open(&keys(), &text),
            Err(SessionError::Malformed)
        );
    }

    #[test]
    fn a_login_state_with_the_longest_return_path_fits_one_cookie() {
        let long = format!("/{}", "a".repeat(crate::challenge::MAX_RETURN_PATH_LEN - 1));
        let login = LoginState::new(&random96(), "a-provider-name", &long, NOW);
        assert_eq!(login.return_to, long);
        let text = login.seal(&keys(), N1).unwrap();
        assert!(set_cookie(&login.cookie_name(), &text, &CookieAttrs::default()).is_ok());
    }

    #[test]
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        // RFC 7636 Appendix B: the verifier is the base64url of the 32 octets listed there.
        let octets = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let verifier = b64::encode(&octets);
        assert_eq!(verifier, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            pkce_challenge(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    // ---- at_hash ----

    #[test]
    fn at_hash_matches_the_oidc_example_and_independent_vectors() {
        // OIDC Core 1.0 Appendix A.3/A.4 example (RS256).
        let token = "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y";
        assert_eq!(
            at_hash(Algorithm::RS256, token).as_deref(),
            Some("77QmUPtjPfzWtF2AnpK9RQ")
        );
        // Computed independently with Python's hashlib: base64url of the left half of
        // sha384(token) / sha512(token).
        let sha384 = "jtAeDp945y1dDqU3nkIVGNZP1HjH_MFs";
        let sha512 = "q7nS86GgvvFaZkzALLWqJYaJIKw2wCDAVfCAsm5CrBM";
        for alg in Algorithm::ALL {
            let expected = match alg.name() {
                n if n.ends_with("256") => "77QmUPtjPfzWtF2AnpK9RQ",
                n if n.ends_with("384") => sha384,
                _ => sha512, // *512 and EdDSA (Ed25519 → SHA-512)
            };
            assert_eq!(
                at_hash(alg, token).as_deref(),
                Some(expected),
                "{}",
                alg.name()
            );
        }
    }
}
