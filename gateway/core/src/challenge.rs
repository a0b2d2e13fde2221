//! Proof-of-work challenges for browser navigations the risk phase marks "challenge".
//!
//! The pure pieces only; the engine wires them up:
//!
//! 1. A navigation scores in the challenge band: [`check_clearance`] first. If the request
//!    carries a [`Clearance::Valid`] cookie, it passes. Otherwise the gateway [`issue`]s a
//!    token (with [`difficulty`] bits, bound to the client's [`Binding`] and the request's
//!    [`safe_return_path`]) and answers with [`page`] (status 403 suggested, the page's
//!    headers, `no-store`).
//! 2. The page's script finds a nonce such that SHA-256(`token` ‖ `":"` ‖ `nonce`) starts
//!    with `bits` zero bits and navigates to
//!    `CHALLENGE_PATH?token=…&nonce=…`.
//! 3. On [`CHALLENGE_PATH`] the gateway reads [`solution_from_query`] and calls [`verify`];
//!    on success it answers 303 to [`Solved::return_to`] with `Set-Cookie:`
//!    [`set_cookie`]`(&`[`clearance`]`(…), ttl)`. A token may be solved more than once until
//!    it expires (each solution only yields another cookie for the same client); a caller that
//!    wants single use records [`Solved::id`] in its replay store.
//!
//! Formats (all ASCII, no `;`, `,` or space):
//!
//! - token: `base64url(payload) "." base64url(mac)`, where payload is the JSON object
//!   `{"v":1,"id":…,"iat":…,"exp":…,"bits":…,"ret":…,"bnd":…}` (`iat`/`exp` in Unix
//!   seconds, `ret` the return path, `bnd` the keyed hash of the binding) and `mac` is
//!   HMAC-SHA256 under the purpose label `"challenge"`.
//! - clearance cookie value: `"1." exp "." bnd "." base64url(mac)`, `exp` in decimal Unix
//!   seconds, `mac` HMAC-SHA256 under the purpose label `"clearance"` over `1.exp.bnd`.
//!
//! Every MAC input starts with its purpose label, so a token never verifies as a cookie nor a
//! cookie as a token, and tags are compared in constant time. Keys come from [`derive_key`],
//! domain-separated from every other use of the gateway's secret. Nothing here reads a clock
//! or a random source, and no input makes any function panic.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use http::header::{self, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::b64;
use crate::time::Timestamp;

pub use crate::model::reserved::CHALLENGE_PATH;

/// The clearance cookie's name. The `__Host-` prefix makes browsers accept it only with
/// `Secure`, `Path=/` and no `Domain`, so a sibling subdomain cannot plant or shadow it.
pub const CLEARANCE_COOKIE: &str = "__Host-portcullis-clearance";

/// The fewest leading zero bits a puzzle asks for ([`issue`] and [`page`] raise lower values).
pub const MIN_BITS: u8 = 8;

/// The most leading zero bits a puzzle asks for ([`issue`] and [`page`] lower higher values).
///
/// The page hashes with `crypto.subtle`, whose per-call cost dominates: headless Chromium
/// managed about 55 000 hashes a second on a busy 2-core machine, so 16 bits (65 536 hashes
/// expected) took about 1.2 s on average, 20 bits would take about 20 s and 24 bits minutes.
/// Configure the maximum with that in mind.
pub const MAX_BITS: u8 = 24;

/// The longest token [`verify`] looks at; longer ones are [`ChallengeError::Malformed`].
pub const MAX_TOKEN_LEN: usize = 4096;

/// The longest return path [`safe_return_path`] accepts.
pub const MAX_RETURN_PATH_LEN: usize = 2048;

/// The longest nonce a solution may carry.
pub const MAX_NONCE_LEN: usize = 32;

/// How many occurrences of [`CLEARANCE_COOKIE`] [`check_clearance`] examines at most.
pub const MAX_COOKIE_OCCURRENCES: usize = 16;

const VERSION: u8 = 1;
const KEY_LABEL: &[u8] = b"portcullis challenge v1";
const PURPOSE_CHALLENGE: &str = "challenge";
const PURPOSE_CLEARANCE: &str = "clearance";
const PURPOSE_BINDING: &str = "binding";
const PURPOSE_ID: &str = "id";
const BINDING_HASH_LEN: usize = 16;
const ID_LEN: usize = 16;
const MAX_COOKIE_LEN: usize = 256;

/// What a challenge and a clearance are bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The client's IP prefix as the adapter computes it, e.g. `"203.0.113.0/24"` or
    /// `"2001:db8:1::/48"`, so a cookie survives address changes inside one network only.
    pub network: &'a str,
    /// The request's `User-Agent` (empty when absent).
    pub user_agent: &'a str,
}

/// A verified solution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Solved {
    /// Where to send the browser back to (always a [`safe_return_path`]).
    pub return_to: String,
    /// The token's identifier, for a caller that wants each token used once.
    pub id: String,
    /// The difficulty the token asked for and the solution met.
    pub bits: u8,
}

/// Why a token, a solution or a clearance cookie was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChallengeError {
    /// Not in the expected format: wrong shape, bad base64url or JSON, unknown version,
    /// oversized, a nonce that is not 1–32 ASCII letters and digits, a missing parameter.
    Malformed,
    /// Well-formed, but the MAC does not match: tampered, made under another key, or made
    /// for the other purpose (a token offered as a cookie or the reverse).
    Forged,
    /// Genuine but past its expiry.
    Expired,
    /// Genuine and current, but issued to another network or User-Agent.
    WrongClient,
    /// Genuine, current and for this client, but the nonce's hash has too few leading zero
    /// bits.
    Unsolved,
}

/// What [`check_clearance`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clearance {
    /// No clearance cookie in the request.
    Absent,
    /// At least one clearance cookie is genuine, current and bound to this client.
    Valid,
    /// Clearance cookies were sent but none is valid; the error is that of the first one.
    Invalid(ChallengeError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    v: u8,
    id: String,
    iat: u64,
    exp: u64,
    bits: u8,
    ret: String,
    bnd: String,
}

impl ChallengeError {
    /// A stable, machine-readable code (for logs, metrics and problem details).
    pub fn code(self) -> &'static str {
        match self {
            ChallengeError::Malformed => "challenge_malformed",
            ChallengeError::Forged => "challenge_forged",
            ChallengeError::Expired => "challenge_expired",
            ChallengeError::WrongClient => "challenge_wrong_client",
            ChallengeError::Unsolved => "challenge_unsolved",
        }
    }
}

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChallengeError::Malformed => {
                "challenge token, solution or clearance cookie is malformed"
            }
            ChallengeError::Forged => {
                "challenge token or clearance cookie has an invalid signature \
                 (tampered, another key, or made for the other purpose)"
            }
            ChallengeError::Expired => "challenge token or clearance cookie has expired",
            ChallengeError::WrongClient => {
                "challenge token or clearance cookie was issued to another network or User-Agent"
            }
            ChallengeError::Unsolved => {
                "the nonce does not solve the challenge: too few leading zero bits"
            }
        })
    }
}

impl std::error::Error for ChallengeError {}

/// The challenge key derived from the gateway's secret: HMAC-SHA256(`secret`,
/// `"portcullis challenge v1"`), so it is unrelated to any other key made from that secret.
pub fn derive_key(secret: &[u8]) -> [u8; 32] {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(KEY_LABEL);
            mac.finalize().into_bytes().into()
        }
        // HMAC accepts keys of any length; still secret-dependent if that ever changed.
        Err(_) => Sha256::new()
            .chain_update(KEY_LABEL)
            .chain_update([0])
            .chain_update(secret)
            .finalize()
            .into(),
    }
}

/// The puzzle difficulty for a combined risk `score` (0–100) in the challenge band starting
/// at `threshold`: `min_bits` at the threshold (and below), rising linearly to `max_bits` at
/// 100. Never decreases as the score grows. `min_bits` and `max_bits` are first clamped to
/// [`MIN_BITS`]`..=`[`MAX_BITS`], and `max_bits` below `min_bits` counts as `min_bits`.
pub fn difficulty(score: u8, threshold: u8, min_bits: u8, max_bits: u8) -> u8 {
    let lo = min_bits.clamp(MIN_BITS, MAX_BITS);
    let hi = max_bits.clamp(MIN_BITS, MAX_BITS).max(lo);
    let score = score.min(100);
    if score <= threshold || threshold >= 100 {
        return lo;
    }
    let above = u32::from(score - threshold);
    let band = u32::from(100 - threshold);
    let extra = (above * u32::from(hi - lo)).div_ceil(band);
    let extra = u8::try_from(extra).unwrap_or(u8::MAX);
    lo.saturating_add(extra).min(hi)
}

/// A signed challenge token, valid from `now` for `ttl`, asking for `bits` leading zero bits
/// (clamped to [`MIN_BITS`]`..=`[`MAX_BITS`]), bound to `binding` and remembering
/// `return_to` (replaced by `/` unless it is a [`safe_return_path`]).
///
/// The token's id is derived from its contents (the core has no randomness): two tokens
/// issued in the same millisecond for the same client, path and difficulty are the same.
pub fn issue(
    key: &[u8; 32],
    now: Timestamp,
    ttl: Duration,
    bits: u8,
    binding: &Binding<'_>,
    return_to: &str,
) -> String {
    let bits = bits.clamp(MIN_BITS, MAX_BITS);
    let ret = safe_return_path(return_to).unwrap_or("/");
    let bnd = binding_hash(key, binding);
    let millis = now.unix_millis().to_be_bytes();
    let id_tag = tag(
        key,
        PURPOSE_ID,
        &[&millis, bnd.as_bytes(), ret.as_bytes(), &[bits]],
    );
    let payload = Payload {
        v: VERSION,
        id: b64::encode(id_tag.get(..ID_LEN).unwrap_or(&id_tag)),
        iat: now.unix_secs(),
        exp: now.saturating_add(ttl).unix_secs(),
        bits,
        ret: ret.to_owned(),
        bnd,
    };
    // Serializing a struct of strings and integers cannot fail.
    let json = serde_json::to_vec(&payload).unwrap_or_default();
    let body = b64::encode(&json);
    let mac = tag(key, PURPOSE_CHALLENGE, &[body.as_bytes()]);
    format!("{body}.{}", b64::encode(&mac))
}

/// The interstitial page for `token` and its headers (`content-type`, `cache-control:
/// no-store`, a strict `content-security-policy` whose script and style nonce is derived from
/// the token, `x-content-type-options`, `referrer-policy`).
///
/// The page loads nothing, has no inline event handlers, and reads the token and `bits`
/// (clamped to [`MIN_BITS`]`..=`[`MAX_BITS`]) from data attributes. A `token` that is not
/// made of base64url characters and dots (at most [`MAX_TOKEN_LEN`]) is left out of the page,
/// which then only says the challenge is invalid.
pub fn page(token: &str, bits: u8) -> (String, Vec<(HeaderName, HeaderValue)>) {
    let bits = bits.clamp(MIN_BITS, MAX_BITS);
    let nonce = csp_nonce(b"portcullis csp nonce v1\0", token);
    let token = if token_charset_ok(token) { token } else { "" };
    let html = PAGE_TEMPLATE
        .replace("{nonce}", &nonce)
        .replace("{path}", CHALLENGE_PATH)
        .replace("{bits}", &bits.to_string())
        .replace("{token}", token)
        .replace("{script}", PAGE_SCRIPT);
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    (html, page_headers(csp))
}

/// A CSP nonce for a page: derived from the token (the page holds no other input), so the
/// core needs no randomness.
fn csp_nonce(label: &[u8], token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(label)
        .chain_update(token.as_bytes())
        .finalize();
    b64::encode(digest.get(..18).unwrap_or(&digest))
}

/// The headers of an interstitial page with content security policy `csp`.
pub(crate) fn page_headers(csp: String) -> Vec<(HeaderName, HeaderValue)> {
    let csp = HeaderValue::try_from(csp)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    vec![
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::CONTENT_SECURITY_POLICY, csp),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

/// Checks a solution: `token` must be genuine (else [`ChallengeError::Forged`]), not expired
/// at `now`, issued to `binding`, and SHA-256(`token` ‖ `":"` ‖ `nonce`) must start with the
/// number of zero bits the token names. `nonce` is 1–[`MAX_NONCE_LEN`] ASCII letters and
/// digits.
///
/// Checks run in this order: shape and size (`Malformed`), MAC (`Forged`), payload
/// (`Malformed`), expiry (`Expired`), binding (`WrongClient`), nonce syntax (`Malformed`),
/// work (`Unsolved`).
pub fn verify(
    key: &[u8; 32],
    token: &str,
    nonce: &str,
    now: Timestamp,
    binding: &Binding<'_>,
) -> Result<Solved, ChallengeError> {
    let p = open_token(key, token, now, binding)?;
    if !nonce_ok(nonce) {
        return Err(ChallengeError::Malformed);
    }
    if leading_zero_bits(&work_hash(token, nonce)) < u32::from(p.bits) {
        return Err(ChallengeError::Unsolved);
    }
    Ok(solved(p))
}

/// Checks `token` alone — genuine, not expired, issued to `binding` — for a challenge
/// answered through a site-verification service ([`site_page`]) instead of proof of work;
/// the caller then verifies the service's token (an outbound call, the adapter's job).
pub fn verify_token(
    key: &[u8; 32],
    token: &str,
    now: Timestamp,
    binding: &Binding<'_>,
) -> Result<Solved, ChallengeError> {
    open_token(key, token, now, binding).map(solved)
}

fn solved(p: Payload) -> Solved {
    let return_to = safe_return_path(&p.ret).unwrap_or("/").to_owned();
    Solved {
        return_to,
        id: p.id,
        bits: p.bits,
    }
}

/// Shape and size, MAC, payload, expiry, binding — in that order.
fn open_token(
    key: &[u8; 32],
    token: &str,
    now: Timestamp,
    binding: &Binding<'_>,
) -> Result<Payload, ChallengeError> {
    if !token_charset_ok(token) {
        return Err(ChallengeError::Malformed);
    }
    let (body, mac) = token.split_once('.').ok_or(ChallengeError::Malformed)?;
    let mac = b64::decode(mac).ok_or(ChallengeError::Malformed)?;
    if mac.len() != 32 || body.is_empty() || body.contains('.') {
        return Err(ChallengeError::Malformed);
    }
    if !tag_ok(key, PURPOSE_CHALLENGE, &[body.as_bytes()], &mac) {
        return Err(ChallengeError::Forged);
    }
    let json = b64::decode(body).ok_or(ChallengeError::Malformed)?;
    let p: Payload = serde_json::from_slice(&json).map_err(|_| ChallengeError::Malformed)?;
    if p.v != VERSION || !(MIN_BITS..=MAX_BITS).contains(&p.bits) {
        return Err(ChallengeError::Malformed);
    }
    if now.unix_secs() >= p.exp {
        return Err(ChallengeError::Expired);
    }
    if p.bnd != binding_hash(key, binding) {
        return Err(ChallengeError::WrongClient);
    }
    Ok(p)
}

/// The reference solver: the first nonce (counting 0, 1, 2, … written in base 36, as the
/// page does) whose hash with `token` has `bits` leading zero bits. `bits` above [`MAX_BITS`]
/// counts as [`MAX_BITS`] (no issued token asks for more). Expect 2^`bits` hashes.
pub fn solve(token: &str, bits: u8) -> String {
    let bits = u32::from(bits.min(MAX_BITS));
    let mut n: u64 = 0;
    loop {
        let nonce = base36(n);
        if leading_zero_bits(&work_hash(token, &nonce)) >= bits {
            return nonce;
        }
        n = n.wrapping_add(1);
    }
}

/// A clearance cookie value for `binding`, valid from `now` for `ttl`.
pub fn clearance(key: &[u8; 32], now: Timestamp, ttl: Duration, binding: &Binding<'_>) -> String {
    let signed = format!(
        "{VERSION}.{}.{}",
        now.saturating_add(ttl).unix_secs(),
        binding_hash(key, binding)
    );
    let mac = tag(key, PURPOSE_CLEARANCE, &[signed.as_bytes()]);
    format!("{signed}.{}", b64::encode(&mac))
}

/// The `Set-Cookie` value for a clearance cookie:
/// `__Host-portcullis-clearance=VALUE; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=N`
/// with `N` the whole seconds of `ttl`. A `value` that is not a valid cookie value (only
/// [`clearance`]'s output is meant here) yields a cookie that deletes the clearance instead
/// (`=` with `Max-Age=0`).
pub fn set_cookie(value: &str, ttl: Duration) -> HeaderValue {
    let attributes = "Path=/; Secure; HttpOnly; SameSite=Lax";
    let ok = !value.is_empty() && value.len() <= MAX_COOKIE_LEN && value.bytes().all(cookie_octet);
    let text = if ok {
        format!(
            "{CLEARANCE_COOKIE}={value}; {attributes}; Max-Age={}",
            ttl.as_secs()
        )
    } else {
        format!("{CLEARANCE_COOKIE}=; {attributes}; Max-Age=0")
    };
    HeaderValue::try_from(text).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "__Host-portcullis-clearance=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
        )
    })
}

/// Looks for [`CLEARANCE_COOKIE`] in every `Cookie` header of the request.
///
/// Any valid occurrence wins: a `__Host-` cookie cannot be planted by a sibling domain, and
/// each occurrence is checked on its own (MAC, expiry, binding), so an extra bogus cookie can
/// neither grant access nor lock a cleared client out. When occurrences exist but none is
/// valid, the result carries the first one's error. At most [`MAX_COOKIE_OCCURRENCES`] are
/// examined; header values that are not UTF-8 are read byte-wise and a non-ASCII cookie value
/// is [`ChallengeError::Malformed`].
pub fn check_clearance(
    key: &[u8; 32],
    headers: &http::HeaderMap,
    now: Timestamp,
    binding: &Binding<'_>,
) -> Clearance {
    let values = crate::cookies::pairs(headers)
        .filter(|p| p.name == CLEARANCE_COOKIE.as_bytes())
        .map(|p| p.value)
        .take(MAX_COOKIE_OCCURRENCES);
    let mut first_error = None;
    for value in values {
        match std::str::from_utf8(value)
            .map_err(|_| ChallengeError::Malformed)
            .and_then(|v| check_cookie(key, v, now, binding))
        {
            Ok(()) => return Clearance::Valid,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Clearance::Invalid(e),
        None => Clearance::Absent,
    }
}

/// `path` if it is safe to redirect to: a same-origin absolute path (starts with exactly one
/// `/`, not `//` nor `/\`), at most [`MAX_RETURN_PATH_LEN`] bytes of printable ASCII with no
/// whitespace and no backslash. Anything else (`https://…`, `javascript:…`, `//host`,
/// `/\host`, CR/LF, the empty string) is `None`, so it can never become an open redirect.
pub fn safe_return_path(path: &str) -> Option<&str> {
    let bytes = path.as_bytes();
    let ok = bytes.first() == Some(&b'/')
        && bytes.len() <= MAX_RETURN_PATH_LEN
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && bytes.iter().all(|b| b.is_ascii_graphic() && *b != b'\\');
    ok.then_some(path)
}

/// The `token` and `nonce` parameters of the solution URL's query (with or without the
/// leading `?`), percent-decoded. `None` when either is missing, repeated, not valid
/// percent-encoding of UTF-8, or the query is longer than twice [`MAX_TOKEN_LEN`]. Other
/// parameters are ignored; `+` is kept as is (no issued token or nonce contains it).
pub fn solution_from_query(query: &str) -> Option<(String, String)> {
    query_pair(query, "nonce")
}

/// The `token` and `site_token` parameters of a site-verified answer (see
/// [`solution_from_query`] for the rules).
pub fn site_solution_from_query(query: &str) -> Option<(String, String)> {
    query_pair(query, "site_token")
}

fn query_pair(query: &str, second: &str) -> Option<(String, String)> {
    let query = query.strip_prefix('?').unwrap_or(query);
    if query.len() > 2 * MAX_TOKEN_LEN {
        return None;
    }
    let mut token = None;
    let mut other = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name)?;
        let slot = if name == "token" {
            &mut token
        } else if name == second {
            &mut other
        } else {
            continue;
        };
        if slot.replace(percent_decode(value)?).is_some() {
            return None;
        }
    }
    Some((token?, other?))
}

/// The interstitial page for a challenge answered through a Turnstile-compatible
/// site-verification service instead of proof of work: it loads the service's widget script
/// from `script_url` (the one third-party resource, allowed by origin in the CSP), and when
/// the widget calls back with its token, navigates to
/// `CHALLENGE_PATH?token=…&site_token=…`. `site_key` and `script_url` come from the validated
/// configuration (a site key of letters, digits, `-`, `_`; an https URL).
pub fn site_page(
    token: &str,
    site_key: &str,
    script_url: &str,
) -> (String, Vec<(HeaderName, HeaderValue)>) {
    let nonce = csp_nonce(b"portcullis csp nonce v1\0site\0", token);
    let token = if token_charset_ok(token) { token } else { "" };
    let site_key_ok = !site_key.is_empty()
        && site_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let site_key = if site_key_ok { site_key } else { "" };
    let origin = url_origin(script_url).unwrap_or("https://invalid.invalid");
    let html = SITE_PAGE_TEMPLATE
        .replace("{nonce}", &nonce)
        .replace("{path}", CHALLENGE_PATH)
        .replace("{site_key}", site_key)
        .replace(
            "{script_url}",
            if url_origin(script_url).is_some() {
                script_url
            } else {
                ""
            },
        )
        .replace("{token}", token);
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}' {origin}; frame-src {origin}; \
         connect-src {origin}; style-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    (html, page_headers(csp))
}

/// The `application/x-www-form-urlencoded` body of a `siteverify` request.
pub fn siteverify_body(
    secret: &str,
    site_token: &str,
    remote_ip: Option<std::net::IpAddr>,
) -> String {
    let mut body = format!(
        "secret={}&response={}",
        crate::forms::encode_component(secret),
        crate::forms::encode_component(site_token)
    );
    if let Some(ip) = remote_ip {
        body.push_str("&remoteip=");
        body.push_str(&crate::forms::encode_component(&ip.to_string()));
    }
    body
}

/// Reads a `siteverify` answer: `{"success": true|false, "error-codes": [...]}`.
pub fn siteverify_result(body: &[u8]) -> Result<bool, String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the verification service answered no JSON: {e}"))?;
    match v.get("success").and_then(serde_json::Value::as_bool) {
        Some(ok) => Ok(ok),
        None => Err("the verification service's answer has no boolean `success`".into()),
    }
}

pub use crate::canonical::url_origin;

fn check_cookie(
    key: &[u8; 32],
    value: &str,
    now: Timestamp,
    binding: &Binding<'_>,
) -> Result<(), ChallengeError> {
    if value.len() > MAX_COOKIE_LEN {
        return Err(ChallengeError::Malformed);
    }
    let (signed, mac) = value.rsplit_once('.').ok_or(ChallengeError::Malformed)?;
    let mut parts = signed.split('.');
    let (Some(version), Some(exp), Some(bnd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ChallengeError::Malformed);
    };
    let mac = b64::decode(mac).ok_or(ChallengeError::Malformed)?;
    let canonical_exp = !exp.is_empty()
        && exp.bytes().all(|b| b.is_ascii_digit())
        && (exp == "0" || !exp.starts_with('0'));
    if version != VERSION.to_string()
        || !canonical_exp
        || mac.len() != 32
        || b64::decode(bnd).map(|b| b.len()) != Some(BINDING_HASH_LEN)
    {
        return Err(ChallengeError::Malformed);
    }
    if !tag_ok(key, PURPOSE_CLEARANCE, &[signed.as_bytes()], &mac) {
        return Err(ChallengeError::Forged);
    }
    let exp: u64 = exp.parse().map_err(|_| ChallengeError::Malformed)?;
    if now.unix_secs() >= exp {
        return Err(ChallengeError::Expired);
    }
    if bnd != binding_hash(key, binding) {
        return Err(ChallengeError::WrongClient);
    }
    Ok(())
}

/// HMAC-SHA256 under `key` of the purpose label, a zero byte, and each part prefixed with its
/// length (so no two lists of parts share an input).
fn mac_for(key: &[u8], purpose: &str, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(purpose.as_bytes());
    mac.update(&[0]);
    for part in parts {
        mac.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        mac.update(part);
    }
    Some(mac)
}

/// The HMAC tag of `parts` for `purpose` (see [`mac_for`]).
pub(crate) fn tag(key: &[u8], purpose: &str, parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; an all-zero tag would never verify (`tag_ok` fails
    // closed on the same error).
    mac_for(key, purpose, parts).map_or([0; 32], |m| m.finalize().into_bytes().into())
}

/// True when `expected` is the tag of `parts` for `purpose`, compared in constant time.
pub(crate) fn tag_ok(key: &[u8], purpose: &str, parts: &[&[u8]], expected: &[u8]) -> bool {
    mac_for(key, purpose, parts).is_some_and(|m| m.verify_slice(expected).is_ok())
}

fn binding_hash(key: &[u8; 32], binding: &Binding<'_>) -> String {
    let t = tag(
        key,
        PURPOSE_BINDING,
        &[binding.network.as_bytes(), binding.user_agent.as_bytes()],
    );
    b64::encode(t.get(..BINDING_HASH_LEN).unwrap_or(&t))
}

fn work_hash(token: &str, nonce: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(token.as_bytes())
        .chain_update(b":")
        .chain_update(nonce.as_bytes())
        .finalize()
        .into()
}

fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        bits += byte.leading_zeros();
        if *byte != 0 {
            break;
        }
    }
    bits
}

fn token_charset_ok(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn nonce_ok(nonce: &str) -> bool {
    (1..=MAX_NONCE_LEN).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// RFC 6265 `cookie-octet`.
fn cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS.get((n % 36) as usize).copied().unwrap_or(b'0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(bytes.next()?)?;
            let lo = hex_value(bytes.next()?)?;
            out.push((hi << 4) | lo);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const PAGE_TEMPLATE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>Checking your browser</title>
<style nonce="{nonce}">
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;color:#1f2328;background:#fff;line-height:1.5}
h1{font-size:1.4rem;font-weight:600}
#status{font-variant-numeric:tabular-nums}
</style>
</head>
<body>
<main id="portcullis-challenge" data-token="{token}" data-bits="{bits}" data-path="{path}">
<h1>Checking your browser</h1>
<p>This site checks that visitors are real browsers. This takes a few seconds and happens
at most once in a while.</p>
<p id="status" role="status" aria-live="polite">Starting…</p>
<noscript><p><strong>JavaScript is required to continue.</strong> Please enable JavaScript
and reload this page.</p></noscript>
</main>
<script nonce="{nonce}">
{script}
</script>
</body>
</html>
"#;

const SITE_PAGE_TEMPLATE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>Checking your browser</title>
<style nonce="{nonce}">
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;color:#1f2328;background:#fff;line-height:1.5}
h1{font-size:1.4rem;font-weight:600}
</style>
</head>
<body>
<main id="portcullis-challenge" data-token="{token}" data-path="{path}">
<h1>Checking your browser</h1>
<p>This site checks that visitors are real browsers.</p>
<div class="cf-turnstile" data-sitekey="{site_key}" data-callback="portcullisSiteToken"></div>
<noscript><p><strong>JavaScript is required to continue.</strong> Please enable JavaScript
and reload this page.</p></noscript>
</main>
<script nonce="{nonce}">
"use strict";
window.portcullisSiteToken = function (siteToken) {
  var root = document.getElementById("portcullis-challenge");
  var token = root.getAttribute("data-token") || "";
  location.replace(root.getAttribute("data-path") + "?token=" + encodeURIComponent(token) +
    "&site_token=" + encodeURIComponent(siteToken));
};
</script>
<script nonce="{nonce}" src="{script_url}" async defer></script>
</body>
</html>
"#;

const PAGE_SCRIPT: &str = r#""use strict";
(async function () {
  var root = document.getElementById("portcullis-challenge");
  var status = document.getElementById("status");
  var token = root.getAttribute("data-token") || "";
  var bits = Number(root.getAttribute("data-bits"));
  var path = root.getAttribute("data-path");
  if (!/^[A-Za-z0-9_.-]+$/.test(token) || !(bits >= 1 && bits <= 32)) {
    status.textContent = "This challenge is invalid. Please reload the page.";
    return;
  }
  if (!window.crypto || !window.crypto.subtle || !window.TextEncoder) {
    status.textContent = "Your browser cannot run this check (no Web Crypto). Please use a current browser over HTTPS.";
    return;
  }
  var full = bits >> 3;
  var mask = (0xff << (8 - (bits & 7))) & 0xff;
  function solved(h) {
    for (var i = 0; i < full; i++) { if (h[i] !== 0) { return false; } }
    return (bits & 7) === 0 || (h[full] & mask) === 0;
  }
  var encoder = new TextEncoder();
  var prefix = token + ":";
  var expected = Math.pow(2, bits);
  var batch = 512;
  try {
    for (var n = 0; ; n += batch) {
      var nonces = [];
      var work = [];
      for (var i = 0; i < batch; i++) {
        var nonce = (n + i).toString(36);
        nonces.push(nonce);
        work.push(crypto.subtle.digest("SHA-256", encoder.encode(prefix + nonce)));
      }
      var hashes = await Promise.all(work);
      for (var j = 0; j < batch; j++) {
        if (solved(new Uint8Array(hashes[j]))) {
          status.textContent = "Done. Taking you back…";
          location.replace(path + "?token=" + encodeURIComponent(token) + "&nonce=" + nonces[j]);
          return;
        }
      }
      var tried = n + batch;
      status.textContent = "Checking your browser… " + Math.min(99, Math.floor(100 * tried / expected)) + "% (" + tried + " tries)";
    }
  } catch (e) {
    status.textContent = "The check failed. Please reload the page.";
  }
})();"#;

/// What a challenge and its clearance are bound to: the client's /24 (IPv4) or /64 (IPv6),
/// so a cookie does not travel to another network (mobile clients moving within one keep it).
pub fn binding_network(client: &crate::client::ClientInfo) -> String {
    client.ip.map_or_else(
        || "unknown".to_owned(),
        |ip| crate::client::network_of(ip).to_string(),
    )
}

/// The request's `User-Agent` (empty when absent or not text), which clearances bind.
pub fn user_agent(headers: &http::HeaderMap) -> &str {
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const NOW: Timestamp = Timestamp::from_unix_secs(1_700_000_000);
    const TTL: Duration = Duration::from_secs(300);
    const ALICE: Binding<'static> = Binding {
        network: "203.0.113.0/24",
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) Chrome/148",
    };

    fn later(secs: u64) -> Timestamp {
        NOW.saturating_add(Duration::from_secs(secs))
    }

    fn solved_token(bits: u8) -> (String, String) {
        let token = issue(&KEY, NOW, TTL, bits, &ALICE, "/account?tab=1");
        let nonce = solve(&token, bits);
        (token, nonce)
    }

    fn cookies(values: &[&[u8]]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for v in values {
            map.append(header::COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    fn payload_of(token: &str) -> serde_json::Value {
        let (body, _) = token.split_once('.').unwrap();
        serde_json::from_slice(&b64::decode(body).unwrap()).unwrap()
    }

    #[test]
    fn site_verified_answers_check_the_token_but_not_the_work() {
        let token = issue(&KEY, NOW, TTL, 16, &ALICE, "/signup");
        let solved = verify_token(&KEY, &token, later(5), &ALICE).unwrap();
        assert_eq!(solved.return_to, "/signup");
        assert_eq!(
            verify_token(&KEY, &token, later(400), &ALICE).unwrap_err(),
            ChallengeError::Expired
        );
        let other = Binding {
            network: "198.51.100.0/24",
            ..ALICE
        };
        assert_eq!(
            verify_token(&KEY, &token, later(5), &other).unwrap_err(),
            ChallengeError::WrongClient
        );
        assert_eq!(
            verify_token(&[8; 32], &token, later(5), &ALICE).unwrap_err(),
            ChallengeError::Forged
        );
        let q = format!("?token={token}&site_token=abc%2Bdef");
        assert_eq!(
            site_solution_from_query(&q),
            Some((token.clone(), "abc+def".to_owned()))
        );
        assert_eq!(site_solution_from_query(&format!("token={token}")), None);
        assert_eq!(
            site_solution_from_query(&format!("token={token}&site_token=a&site_token=b")),
            None
        );
    }

    #[test]
    fn the_site_page_loads_only_the_configured_widget() {
        let token = issue(&KEY, NOW, TTL, 16, &ALICE, "/");
        let (html, headers) = site_page(
            &token,
            "0x4AAA-key_1",
            "https://challenges.cloudflare.com/turnstile/v0/api.js",
        );
        assert!(html.contains("data-sitekey=\"0x4AAA-key_1\""));
        assert!(html.contains("src=\"https://challenges.cloudflare.com/turnstile/v0/api.js\""));
        let csp = headers
            .iter()
            .find(|(n, _)| n == header::CONTENT_SECURITY_POLICY)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .unwrap();
        assert!(
            csp.contains("frame-src https://challenges.cloudflare.com;"),
            "{csp}"
        );
        // Unsafe key or script URL never reach the page.
        let (html, _) = site_page(&token, "\"><script>", "javascript:alert(1)");
        assert!(!html.contains("<script>\""));
        assert!(!html.contains("javascript:"));
        assert_eq!(
            url_origin("https://a.example:8443/x.js"),
            Some("https://a.example:8443")
        );
        assert_eq!(url_origin("http://a.example/x.js"), None);
        assert_eq!(url_origin("https://a.example/x.js?\"a"), None);
    }

    #[test]
    fn siteverify_requests_and_answers() {
        let ip: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            siteverify_body("s&cret", "t o+k", Some(ip)),
            "secret=s%26cret&response=t%20o%2Bk&remoteip=2001%3Adb8%3A%3A1"
        );
        assert_eq!(siteverify_body("s", "t", None), "secret=s&response=t");
        assert_eq!(siteverify_result(br#"{"success":true}"#), Ok(true));
        assert_eq!(
            siteverify_result(br#"{"success":false,"error-codes":["invalid-input-response"]}"#),
            Ok(false)
        );
        assert!(siteverify_result(br#"{"success":"yes"}"#).is_err());
        assert!(siteverify_result(b"<html>").is_err());
    }

    #[test]
    fn issued_token_solved_by_the_reference_solver_verifies() {
        let (token, nonce) = solved_token(12);
        let solved = verify(&KEY, &token, &nonce, later(10), &ALICE).unwrap();
        assert_eq!(solved.return_to, "/account?tab=1");
        assert_eq!(solved.bits, 12);
        assert_eq!(solved.id, payload_of(&token)["id"]);
        assert!(leading_zero_bits(&work_hash(&token, &nonce)) >= 12);
    }

    #[test]
    fn token_payload_has_version_id_times_bits_return_path_and_binding_hash() {
        let token = issue(&KEY, NOW, TTL, 16, &ALICE, "/x");
        let p = payload_of(&token);
        assert_eq!(p["v"], 1);
        assert_eq!(p["iat"], NOW.unix_secs());
        assert_eq!(p["exp"], NOW.unix_secs() + 300);
        assert_eq!(p["bits"], 16);
        assert_eq!(p["ret"], "/x");
        assert_eq!(p["bnd"], binding_hash(&KEY, &ALICE));
        assert_eq!(
            b64::decode(p["id"].as_str().unwrap()).unwrap().len(),
            ID_LEN
        );
        assert!(!p.to_string().contains("203.0.113"), "binding is hashed");
        assert!(token_charset_ok(&token));
        // ids differ between clients, paths and instants
        let other = issue(&KEY, later(1), TTL, 16, &ALICE, "/x");
        assert_ne!(payload_of(&other)["id"], p["id"]);
    }

    #[test]
    fn unsafe_return_path_is_replaced_by_root_and_bits_are_clamped_when_issuing() {
        let token = issue(&KEY, NOW, TTL, 200, &ALICE, "//evil.example/");
        let p = payload_of(&token);
        assert_eq!(p["ret"], "/");
        assert_eq!(p["bits"], MAX_BITS);
        let token = issue(&KEY, NOW, TTL, 0, &ALICE, "https://evil.example/");
        assert_eq!(payload_of(&token)["bits"], MIN_BITS);
        assert_eq!(payload_of(&token)["ret"], "/");
    }

    #[test]
    fn tampered_payload_or_mac_is_forged() {
        let (token, nonce) = solved_token(8);
        let (body, mac) = token.split_once('.').unwrap();
        // payload rewritten to ask for fewer bits and another return path
        let mut p = payload_of(&token);
        p["bits"] = serde_json::json!(8);
        p["ret"] = serde_json::json!("/admin");
        let forged_body = b64::encode(p.to_string().as_bytes());
        let forged = format!("{forged_body}.{mac}");
        assert_eq!(
            verify(&KEY, &forged, &nonce, NOW, &ALICE),
            Err(ChallengeError::Forged)
        );
        // one MAC character changed (keeping canonical base64url)
        let mut mac_bytes = b64::decode(mac).unwrap();
        mac_bytes[0] ^= 1;
        let forged = format!("{body}.{}", b64::encode(&mac_bytes));
        assert_eq!(
            verify(&KEY, &forged, &nonce, NOW, &ALICE),
            Err(ChallengeError::Forged)
        );
        // another key
        assert_eq!(
            verify(&[8; 32], &token, &nonce, NOW, &ALICE),
            Err(ChallengeError::Forged)
        );
    }

    #[test]
    fn token_is_not_a_cookie_and_cookie_is_not_a_token() {
        let token = issue(&KEY, NOW, TTL, 8, &ALICE, "/");
        let cookie = clearance(&KEY, NOW, TTL, &ALICE);
        let header = format!("{CLEARANCE_COOKIE}={token}");
        assert_eq!(
            check_clearance(&KEY, &cookies(&[header.as_bytes()]), NOW, &ALICE),
            Clearance::Invalid(ChallengeError::Malformed)
        );
        assert!(verify(&KEY, &cookie, "0", NOW, &ALICE).is_err());
        // Even when the shapes match, the purpose label keeps them apart: a cookie-shaped
        // value MACed as a challenge, and a token-shaped value MACed as a clearance.
        let signed = format!(
            "1.{}.{}",
            later(300).unix_secs(),
            binding_hash(&KEY, &ALICE)
        );
        let as_challenge = tag(&KEY, PURPOSE_CHALLENGE, &[signed.as_bytes()]);
        let value = format!("{signed}.{}", b64::encode(&as_challenge));
        assert_eq!(
            check_cookie(&KEY, &value, NOW, &ALICE),
            Err(ChallengeError::Forged)
        );
        let (body, _) = token.split_once('.').unwrap();
        let as_clearance = tag(&KEY, PURPOSE_CLEARANCE, &[body.as_bytes()]);
        let token2 = format!("{body}.{}", b64::encode(&as_clearance));
        let nonce = solve(&token2, 8);
        assert_eq!(
            verify(&KEY, &token2, &nonce, NOW, &ALICE),
            Err(ChallengeError::Forged)
        );
    }

    #[test]
    fn expired_token_is_refused_even_when_solved() {
        let (token, nonce) = solved_token(8);
        assert!(verify(&KEY, &token, &nonce, later(299), &ALICE).is_ok());
        assert_eq!(
            verify(&KEY, &token, &nonce, later(300), &ALICE),
            Err(ChallengeError::Expired)
        );
        assert_eq!(
            verify(&KEY, &token, &nonce, later(100_000), &ALICE),
            Err(ChallengeError::Expired)
        );
    }

    #[test]
    fn token_from_another_network_or_user_agent_is_wrong_client() {
        let (token, nonce) = solved_token(8);
        let other_net = Binding {
            network: "198.51.100.0/24",
            ..ALICE
        };
        let other_ua = Binding {
            user_agent: "curl/8.0",
            ..ALICE
        };
        // moving bytes between the fields changes the binding too
        let shifted = Binding {
            network: "203.0.113.0/24M",
            user_agent: "ozilla/5.0 (X11; Linux x86_64) Chrome/148",
        };
        for b in [other_net, other_ua, shifted] {
            assert_eq!(
                verify(&KEY, &token, &nonce, NOW, &b),
                Err(ChallengeError::WrongClient)
            );
        }
    }

    #[test]
    fn nonce_with_too_few_zero_bits_is_unsolved() {
        let token = issue(&KEY, NOW, TTL, 16, &ALICE, "/");
        // a nonce meeting 8 bits but not 16
        let weak = (0u64..)
            .map(base36)
            .find(|n| {
                let z = leading_zero_bits(&work_hash(&token, n));
                (8..16).contains(&z)
            })
            .unwrap();
        assert_eq!(
            verify(&KEY, &token, &weak, NOW, &ALICE),
            Err(ChallengeError::Unsolved)
        );
        let good = solve(&token, 16);
        assert!(verify(&KEY, &token, &good, NOW, &ALICE).is_ok());
    }

    #[test]
    fn malformed_tokens_and_nonces_are_refused_without_panicking() {
        let (token, nonce) = solved_token(8);
        let huge = "A".repeat(1 << 20);
        let huge_token = format!("{huge}.{huge}");
        let bad_tokens: Vec<&str> = vec![
            "",
            ".",
            "..",
            "abc",
            "abc.",
            ".abc",
            "a.b.c",
            "!!!.???",
            "Zm9v.Zm9v",
            "Zm9v=.Zm9v",
            "é.é",
            "\0.\0",
            &huge,
            &huge_token,
        ];
        for t in bad_tokens {
            assert_eq!(
                verify(&KEY, t, &nonce, NOW, &ALICE),
                Err(ChallengeError::Malformed),
                "{:.40}",
                t
            );
        }
        let long_nonce = "a".repeat(33);
        for n in ["", "a b", "a-b", "é", "%30", &long_nonce] {
            assert_eq!(
                verify(&KEY, &token, n, NOW, &ALICE),
                Err(ChallengeError::Malformed),
                "{n:?}"
            );
        }
        // a genuine MAC over something that is not our JSON
        let body = b64::encode(b"[1,2,3]");
        let mac = tag(&KEY, PURPOSE_CHALLENGE, &[body.as_bytes()]);
        let t = format!("{body}.{}", b64::encode(&mac));
        assert_eq!(
            verify(&KEY, &t, "0", NOW, &ALICE),
            Err(ChallengeError::Malformed)
        );
        // bytes that are not UTF-8 never reach verify (it takes &str); the solver copes too
        assert!(!solve("", 1).is_empty());
    }

    #[test]
    fn clearance_cookie_round_trips_and_has_the_documented_format() {
        let value = clearance(&KEY, NOW, TTL, &ALICE);
        let parts: Vec<&str> = value.split('.').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "1");
        assert_eq!(parts[1], (NOW.unix_secs() + 300).to_string());
        assert_eq!(parts[2], binding_hash(&KEY, &ALICE));
        assert_eq!(b64::decode(parts[3]).unwrap().len(), 32);
        assert!(value.bytes().all(cookie_octet));
        let header = format!("{CLEARANCE_COOKIE}={value}");
        assert_eq!(
            check_clearance(&KEY, &cookies(&[header.as_bytes()]), later(299), &ALICE),
            Clearance::Valid
        );
    }

    #[test]
    fn expired_forged_or_foreign_clearance_is_invalid_with_its_reason() {
        let value = clearance(&KEY, NOW, TTL, &ALICE);
        let header = format!("{CLEARANCE_COOKIE}={value}");
        let map = cookies(&[header.as_bytes()]);
        assert_eq!(
            check_clearance(&KEY, &map, later(300), &ALICE),
            Clearance::Invalid(ChallengeError::Expired)
        );
        let other = Binding {
            user_agent: "curl/8.0",
            ..ALICE
        };
        assert_eq!(
            check_clearance(&KEY, &map, NOW, &other),
            Clearance::Invalid(ChallengeError::WrongClient)
        );
        assert_eq!(
            check_clearance(&[9; 32], &map, NOW, &ALICE),
            Clearance::Invalid(ChallengeError::Forged)
        );
        // expiry pushed into the future without re-signing
        let (signed, mac) = value.rsplit_once('.').unwrap();
        let mut fields: Vec<&str> = signed.split('.').collect();
        fields[1] = "99999999999";
        let tampered = format!("{CLEARANCE_COOKIE}={}.{mac}", fields.join("."));
        assert_eq!(
            check_clearance(&KEY, &cookies(&[tampered.as_bytes()]), later(400), &ALICE),
            Clearance::Invalid(ChallengeError::Forged)
        );
    }

    #[test]
    fn malformed_clearance_cookies_never_panic() {
        let valid = clearance(&KEY, NOW, TTL, &ALICE);
        let huge = format!("{CLEARANCE_COOKIE}={}", "A".repeat(100_000));
        let leading_zero = valid.replacen(".1", ".01", 1);
        let bad: Vec<Vec<u8>> = vec![
            format!("{CLEARANCE_COOKIE}=").into_bytes(),
            format!("{CLEARANCE_COOKIE}=1").into_bytes(),
            format!("{CLEARANCE_COOKIE}=1.2.3").into_bytes(),
            format!("{CLEARANCE_COOKIE}=2.1.AAAAAAAAAAAAAAAAAAAAAA.AAAA").into_bytes(),
            format!("{CLEARANCE_COOKIE}=1.x.y.z").into_bytes(),
            format!("{CLEARANCE_COOKIE}=1.-5.AAAAAAAAAAAAAAAAAAAAAA.AAAA").into_bytes(),
            format!("{CLEARANCE_COOKIE}={leading_zero}").into_bytes(),
            format!("{CLEARANCE_COOKIE}={valid}.extra").into_bytes(),
            huge.into_bytes(),
            [CLEARANCE_COOKIE.as_bytes(), b"=\xff\xfe\x80abc"].concat(),
            [CLEARANCE_COOKIE.as_bytes(), b"=1.\xc3\xa9.x.y"].concat(),
        ];
        for b in &bad {
            assert_eq!(
                check_clearance(&KEY, &cookies(&[b]), NOW, &ALICE),
                Clearance::Invalid(ChallengeError::Malformed),
                "{:.60}",
                String::from_utf8_lossy(b)
            );
        }
        // not our cookie at all, or not even a name=value pair
        for b in [
            &b""[..],
            b";;;",
            b"a=b; c",
            b"\xff\xff",
            b"__Host-portcullis-clearanc=x",
        ] {
            assert_eq!(
                check_clearance(&KEY, &cookies(&[b]), NOW, &ALICE),
                Clearance::Absent
            );
        }
        assert_eq!(
            check_clearance(&KEY, &http::HeaderMap::new(), NOW, &ALICE),
            Clearance::Absent
        );
    }

    #[test]
    fn any_valid_clearance_among_several_cookies_wins_else_the_first_error() {
        let valid = clearance(&KEY, NOW, TTL, &ALICE);
        let stale = clearance(&KEY, Timestamp::from_unix_secs(1), TTL, &ALICE);
        let foreign = clearance(
            &KEY,
            NOW,
            TTL,
            &Binding {
                network: "198.51.100.0/24",
                ..ALICE
            },
        );
        let line = format!(
            "theme=dark; {CLEARANCE_COOKIE}=junk; sid=1;{CLEARANCE_COOKIE}={stale}; \
             {CLEARANCE_COOKIE} = {valid}"
        );
        assert_eq!(
            check_clearance(&KEY, &cookies(&[line.as_bytes()]), NOW, &ALICE),
            Clearance::Valid
        );
        // across several Cookie headers, with a non-UTF-8 one in between
        let a = format!("{CLEARANCE_COOKIE}={foreign}");
        let b = format!("x=1; {CLEARANCE_COOKIE}={valid}");
        assert_eq!(
            check_clearance(
                &KEY,
                &cookies(&[a.as_bytes(), b"y=\xff", b.as_bytes()]),
                NOW,
                &ALICE
            ),
            Clearance::Valid
        );
        // none valid: the first occurrence's error
        let c = format!("{CLEARANCE_COOKIE}={stale}; {CLEARANCE_COOKIE}={foreign}");
        assert_eq!(
            check_clearance(&KEY, &cookies(&[a.as_bytes(), c.as_bytes()]), NOW, &ALICE),
            Clearance::Invalid(ChallengeError::WrongClient)
        );
        // a valid cookie beyond the examined occurrences is not looked at
        let mut many = vec![format!("{CLEARANCE_COOKIE}=junk"); MAX_COOKIE_OCCURRENCES];
        many.push(format!("{CLEARANCE_COOKIE}={valid}"));
        let line = many.join("; ");
        assert_eq!(
            check_clearance(&KEY, &cookies(&[line.as_bytes()]), NOW, &ALICE),
            Clearance::Invalid(ChallengeError::Malformed)
        );
    }

    #[test]
    fn set_cookie_has_host_prefix_attributes_and_refuses_unsafe_values() {
        let value = clearance(&KEY, NOW, TTL, &ALICE);
        assert_eq!(
            set_cookie(&value, Duration::from_secs(1800)),
            format!(
                "__Host-portcullis-clearance={value}; Path=/; Secure; HttpOnly; \
                 SameSite=Lax; Max-Age=1800"
            )
        );
        for bad in ["", "a;b", "a b", "a,b", "é", "a\r\nSet-Cookie: x=y"] {
            assert_eq!(
                set_cookie(bad, TTL),
                "__Host-portcullis-clearance=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
            );
        }
    }

    #[test]
    fn safe_return_path_accepts_same_origin_paths_only() {
        for ok in [
            "/",
            "/a?b=c",
            "/a/b/c?x=%2F%2F#frag",
            "/.well-known/x",
            "/a//b",
        ] {
            assert_eq!(safe_return_path(ok), Some(ok), "{ok:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_RETURN_PATH_LEN));
        for bad in [
            "",
            "//evil",
            "//evil.example/path",
            "/\\evil",
            "/\\/evil",
            "\\\\evil",
            "https://x",
            "http:/x",
            "javascript:alert(1)",
            "a/b",
            "/a\r\n",
            "/a\nb",
            "/a\tb",
            "/a b",
            "/a\u{0}",
            "/a\u{7f}",
            "/\u{a0}x",
            "/é",
            "/a\\b",
            " /a",
            &long,
        ] {
            assert_eq!(safe_return_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn difficulty_grows_with_the_score_and_stays_within_bounds() {
        assert_eq!(difficulty(60, 60, 12, 20), 12);
        assert_eq!(difficulty(10, 60, 12, 20), 12, "below threshold: minimum");
        assert_eq!(difficulty(100, 60, 12, 20), 20);
        assert_eq!(difficulty(255, 60, 12, 20), 20);
        assert_eq!(difficulty(80, 60, 12, 20), 16);
        assert_eq!(difficulty(61, 60, 12, 20), 13, "any score above adds work");
        assert_eq!(difficulty(90, 100, 12, 20), 12);
        assert_eq!(difficulty(90, 60, 0, 255), 20, "configured bounds clamped");
        assert_eq!(difficulty(90, 60, 18, 10), 18, "inverted bounds");
        for (threshold, lo, hi) in [(0, 8, 24), (60, 12, 20), (99, 8, 24), (50, 16, 16)] {
            let mut previous = 0;
            for score in 0..=u8::MAX {
                let d = difficulty(score, threshold, lo, hi);
                assert!(d >= previous, "monotonic");
                assert!((lo..=hi).contains(&d));
                previous = d;
            }
        }
    }

    #[test]
    fn solution_query_is_parsed_and_percent_decoded() {
        assert_eq!(
            solution_from_query("token=abc.def&nonce=1z"),
            Some(("abc.def".into(), "1z".into()))
        );
        assert_eq!(
            solution_from_query("?nonce=9&x=1&token=a%2Eb%2e"),
            Some(("a.b.".into(), "9".into()))
        );
        assert_eq!(
            solution_from_query("token=&nonce="),
            Some((String::new(), String::new()))
        );
        for bad in [
            "",
            "token=a",
            "nonce=1",
            "token=a&token=b&nonce=1",
            "token=a&nonce=1&nonce=2",
            "token=%zz&nonce=1",
            "token=%4&nonce=1",
            "token=%ff&nonce=1",
        ] {
            assert_eq!(solution_from_query(bad), None, "{bad:?}");
        }
        let huge = format!("token={}&nonce=1", "a".repeat(3 * MAX_TOKEN_LEN));
        assert_eq!(solution_from_query(&huge), None);
        // the URL the page builds parses back to what verify accepts
        let (token, nonce) = solved_token(8);
        let query = format!("token={token}&nonce={nonce}");
        let (t, n) = solution_from_query(&query).unwrap();
        assert!(verify(&KEY, &t, &n, NOW, &ALICE).is_ok());
    }

    #[test]
    fn page_embeds_token_and_bits_in_data_attributes_under_a_token_derived_csp_nonce() {
        let token = issue(&KEY, NOW, TTL, 16, &ALICE, "/");
        let (html, headers) = page(&token, 16);
        let get = |name: HeaderName| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
                .unwrap()
        };
        assert_eq!(get(header::CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(get(header::CACHE_CONTROL), "no-store");
        assert_eq!(get(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(get(header::REFERRER_POLICY), "no-referrer");
        let csp = get(header::CONTENT_SECURITY_POLICY);
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .and_then(|s| s.split('\'').next())
            .unwrap();
        assert_eq!(
            csp,
            format!(
                "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
                 base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            )
        );
        assert!(nonce.len() >= 22);
        assert_eq!(page(&token, 16).1, headers, "deterministic");
        assert_ne!(page(&format!("{token}x"), 16).1, headers);
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains(&format!("<script nonce=\"{nonce}\">")));
        assert!(html.contains(&format!("<style nonce=\"{nonce}\">")));
        assert!(html.contains(&format!("data-token=\"{token}\"")));
        assert!(html.contains("data-bits=\"16\""));
        assert!(html.contains(&format!("data-path=\"{CHALLENGE_PATH}\"")));
        assert!(html.contains("<noscript>"));
        assert!(html.contains("crypto.subtle.digest(\"SHA-256\""));
        assert!(html.contains("location.replace("));
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("src="), "no external resources");
        assert!(!html.contains("href="), "no external resources");
        let handler = html
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '=')
            .any(|w| w.starts_with("on") && w.contains('='));
        assert!(!handler, "no inline event handlers");
        for placeholder in ["{nonce}", "{path}", "{bits}", "{token}", "{script}"] {
            assert!(!html.contains(placeholder), "{placeholder} filled in");
        }
        // bits clamped
        assert!(page(&token, 99).0.contains("data-bits=\"24\""));
    }

    #[test]
    fn page_leaves_out_a_token_that_is_not_html_safe() {
        let evil = "\"><script>alert(1)</script>";
        let (html, headers) = page(evil, 16);
        assert!(!html.contains("alert"));
        assert!(html.contains("data-token=\"\""));
        assert_eq!(headers.len(), 5);
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(page(&huge, 16).0.contains("data-token=\"\""));
        assert!(page("", 16).0.contains("data-token=\"\""));
    }

    #[test]
    fn derived_keys_depend_on_the_secret_and_the_label() {
        let k = derive_key(b"gateway secret");
        assert_eq!(k, derive_key(b"gateway secret"));
        assert_ne!(k, derive_key(b"gateway secret2"));
        assert_ne!(k, derive_key(b""));
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"gateway secret").unwrap();
        mac.update(b"portcullis challenge v1");
        assert_eq!(k.as_slice(), mac.finalize().into_bytes().as_slice());
    }

    #[test]
    fn error_codes_are_stable_and_messages_precise() {
        let all = [
            ChallengeError::Malformed,
            ChallengeError::Forged,
            ChallengeError::Expired,
            ChallengeError::WrongClient,
            ChallengeError::Unsolved,
        ];
        let codes: Vec<&str> = all.iter().map(|e| e.code()).collect();
        assert_eq!(
            codes,
            [
                "challenge_malformed",
                "challenge_forged",
                "challenge_expired",
                "challenge_wrong_client",
                "challenge_unsolved"
            ]
        );
        for e in all {
            assert!(e.to_string().len() > 20);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_inputs_never_panic(
            token in ".{0,300}",
            nonce in ".{0,40}",
            path in ".{0,80}",
            cookie in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let _ = verify(&KEY, &token, &nonce, NOW, &ALICE);
            let _ = safe_return_path(&path);
            let _ = solution_from_query(&token);
            let _ = page(&token, 8);
            let _ = set_cookie(&token, TTL);
            let _ = issue(&KEY, NOW, TTL, 8, &Binding { network: &nonce, user_agent: &path }, &path);
            if let Ok(v) = HeaderValue::from_bytes(&cookie) {
                let mut map = http::HeaderMap::new();
                map.append(header::COOKIE, v);
                let _ = check_clearance(&KEY, &map, NOW, &ALICE);
            }
        }

        #[test]
        fn any_changed_byte_of_a_solved_token_or_cookie_is_refused(
            index in 0usize..512,
            byte in 0x21u8..0x7f,
        ) {
            let (token, nonce) = solved_token(8);
            let mut t = token.clone().into_bytes();
            let i = index % t.len();
            proptest::prop_assume!(t[i] != byte);
            t[i] = byte;
            let t = String::from_utf8(t).unwrap();
            proptest::prop_assert!(verify(&KEY, &t, &nonce, NOW, &ALICE).is_err());
            let value = clearance(&KEY, NOW, TTL, &ALICE);
            let mut c = value.into_bytes();
            let i = index % c.len();
            proptest::prop_assume!(c[i] != byte && byte != b';');
            c[i] = byte;
            let line = [CLEARANCE_COOKIE.as_bytes(), b"=", &c].concat();
            proptest::prop_assert_ne!(
                check_clearance(&KEY, &cookies(&[&line]), NOW, &ALICE),
                Clearance::Valid
            );
        }
    }

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0x01]), 7);
        assert_eq!(leading_zero_bits(&[0, 0, 0x10, 0]), 19);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(u64::MAX), "3w5e11264sgsf");
    }
}
