//! Token authentication (used by the `authenticate` phase, [`crate::phase::authenticate`]): bearer token → [`VerifiedIdentity`].
//!
//! Order matters: parse the compact JWS (size, structure, `alg`, `crit`) → read `iss` from
//! the payload and pick that issuer (so one issuer's key can never validate another's
//! token) → check `alg` against the issuer's allow-list and `typ` against its types →
//! choose the key from that issuer's set only → verify the signature → validate claims.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use serde_json::Value;

use crate::claims::{ClaimError, VerifiedIdentity, validate};
use crate::config::{Config, FOREIGN_TOKEN_TYPES, IssuerConfig};
use crate::crypto::{Algorithm, SignatureVerifier};
use crate::jws::{CompactJws, JwsError, normalize_media_type, parse_compact, parse_object};
use crate::keyset::{KeySelectError, KeySet, KeyStore};
use crate::model::IssuerId;
use crate::reason::Reason;
use crate::time::Timestamp;

/// A failed authentication: the reason, a detail for logs and problem details, the issuer
/// if one was identified, and whether a key-set refetch could help (unknown `kid`).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthFailure {
    /// The reason code.
    pub reason: Reason,
    /// What exactly was wrong.
    pub detail: String,
    /// The issuer the token claimed, when it is a configured one.
    pub issuer: Option<IssuerId>,
    /// True when the token named a `kid` the issuer's set lacks.
    pub unknown_kid: bool,
}

impl AuthFailure {
    /// A failure with `reason` and `detail`, no issuer.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            issuer: None,
            unknown_kid: false,
        }
    }

    /// The same failure, attributed to `issuer`.
    pub fn at(mut self, issuer: IssuerId) -> Self {
        self.issuer = Some(issuer);
        self
    }
}

impl From<JwsError> for AuthFailure {
    fn from(e: JwsError) -> Self {
        let reason = match e {
            JwsError::TooLarge { .. } => Reason::TokenTooLarge,
            JwsError::Malformed(_) => Reason::TokenMalformed,
            JwsError::AlgorithmNotAllowed(_) => Reason::AlgorithmNotAllowed,
            JwsError::CritUnsupported(_) => Reason::CriticalHeaderUnsupported,
        };
        AuthFailure::new(reason, e.to_string())
    }
}

/// How an access token was presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenScheme {
    /// `Authorization: Bearer` (RFC 6750).
    Bearer,
    /// `Authorization: DPoP` with a `DPoP` proof header (RFC 9449).
    Dpop,
}

/// The bearer token of a request (`Authorization: Bearer`), if any. Several
/// `Authorization` headers are refused.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    Ok(access_token(headers)?
        .filter(|(scheme, _)| *scheme == TokenScheme::Bearer)
        .map(|(_, t)| t))
}

/// The access token of a request and its scheme (`Bearer` or `DPoP`), if any. Several
/// `Authorization` headers are refused; other schemes count as no token.
pub fn access_token(headers: &HeaderMap) -> Result<Option<(TokenScheme, &str)>, AuthFailure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthFailure::new(
            Reason::InvalidRequest,
            "more than one Authorization header",
        ));
    }
    let text = value.to_str().map_err(|_| {
        AuthFailure::new(Reason::TokenMalformed, "Authorization header is not ASCII")
    })?;
    let Some((scheme, rest)) = text.split_once(' ') else {
        return Ok(None);
    };
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        TokenScheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        TokenScheme::Dpop
    } else {
        return Ok(None); // another scheme: no access token
    };
    let token = rest.trim_matches(' ');
    // RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    if body.is_empty()
        || !body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
    {
        return Err(AuthFailure::new(
            Reason::TokenMalformed,
            "access token has characters outside token68",
        ));
    }
    Ok(Some((scheme, token)))
}

/// Checks a parsed JWS's signature against a key set: the key is chosen by `kid` (or as the
/// only fitting key), must fit `alg` and its own metadata, and `alg` must be in `allowed`.
/// This is the signature layer alone, without claims; the Wycheproof suite drives it.
pub fn verify_signature<V: SignatureVerifier>(
    jws: &CompactJws<'_>,
    keys: &KeySet<V::Key>,
    allowed: &[Algorithm],
    verifier: &V,
) -> Result<(), AuthFailure> {
    let alg = jws.header.alg;
    if !allowed.contains(&alg) {
        return Err(AuthFailure::new(
            Reason::AlgorithmNotAllowed,
            format!("{alg} is not allowed for this issuer"),
        ));
    }
    let entry = keys
        .select(jws.header.kid.as_deref(), alg)
        .map_err(|e| match e {
            KeySelectError::UnknownKid(m) => AuthFailure {
                unknown_kid: true,
                ..AuthFailure::new(Reason::KeyNotFound, m)
            },
            KeySelectError::NoKey(m) => AuthFailure::new(Reason::KeyNotFound, m),
            KeySelectError::Mismatch(m) => AuthFailure::new(Reason::KeyMismatch, m),
        })?;
    if verifier.verify(
        alg,
        &entry.key,
        jws.signing_input.as_bytes(),
        &jws.signature,
    ) {
        Ok(())
    } else {
        Err(AuthFailure::new(
            Reason::SignatureInvalid,
            "signature does not verify",
        ))
    }
}

/// Why a runtime without provider calls or shared state refuses browser login.
pub const NO_BROWSER_LOGIN: &str = "this runtime cannot sign browsers in (no calls to \
     identity providers, no shared state); bearer tokens still work";

/// Why the provider's endpoints are not known yet on a runtime that fetches them.
pub const NOT_DISCOVERED_YET: &str =
    "its discovery document has not been loaded yet; try again shortly";

/// Verifies bearer tokens for the pipeline. [`LocalAuthenticator`] does it in-process from a
/// [`KeyStore`]; a wasm gateway asks its host (which may verify natively and cache).
pub trait Authenticator {
    /// Authenticates `token`, accepting only `route_issuers` when non-empty.
    fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure>;

    /// Verifies a signature with a key the request itself carried (a DPoP proof's `jwk`).
    /// Default: the portable pure-Rust verifier; native adapters use their own crypto.
    fn verify_with_key(
        &self,
        alg: crate::crypto::Algorithm,
        material: &crate::crypto::KeyMaterial,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        let v = crate::crypto::PortableVerifier;
        v.prepare(material)
            .is_ok_and(|k| v.verify(alg, &k, message, signature))
    }

    /// The login endpoints `issuer`'s discovery document named, once loaded; otherwise
    /// why not (not loaded yet, or this runtime cannot sign browsers in). Default: none —
    /// an adapter without key sets cannot sign browsers in.
    fn endpoints(&self, issuer: IssuerId) -> Result<crate::keyset::ProviderEndpoints, String> {
        let _ = issuer;
        Err(NO_BROWSER_LOGIN.to_owned())
    }

    /// The signature check this adapter's platform should make, asynchronously, before
    /// `token` is authenticated (the Workers runtime's WebCrypto); the decision waits for
    /// it and hands the verdict to [`Authenticator::checked`]. Default: none — verification
    /// happens inside [`Authenticator::authenticate`].
    fn signature_check(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        now: Timestamp,
    ) -> Option<crate::crypto::SignatureCheck> {
        let _ = (token, route_issuers, now);
        None
    }

    /// The platform's verdict on a [`Authenticator::signature_check`] (`authenticate` uses
    /// it instead of checking the signature again). Default: ignored.
    fn checked(&self, check: &crate::crypto::SignatureCheck, valid: bool) {
        let _ = (check, valid);
    }

    /// Verifies a token `issuer` issued to the gateway itself as an OIDC client: an ID token
    /// or a back-channel logout token, with `aud` = `client_id` (see [`verify_issued`]).
    /// Default: refused — an adapter without key sets cannot sign browsers in.
    fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: IssuedKind,
        now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        let _ = (token, client_id, kind, now);
        Err(AuthFailure::new(
            Reason::KeysUnavailable,
            "this adapter cannot verify ID tokens",
        )
        .at(issuer))
    }

    /// Signs `input` with the login client's private key `key` (a `private_key_jwt` client
    /// assertion, RFC 7523). Default: the core's pure-Rust signer. A wasm gateway asks its
    /// host instead, which holds the same configuration: the gateway component then carries
    /// no signing code.
    fn sign_as_client(
        &self,
        key: &crate::client_auth::ClientKey,
        input: &[u8],
    ) -> Result<Vec<u8>, String> {
        key.sign(input)
    }

    /// Signs `input` with the gateway-token key `key` (Ed25519, see
    /// `gateway_token`); `None` when it cannot. Default: the core's pure-Rust
    /// signer; a wasm gateway asks its host, as for [`Authenticator::sign_as_client`].
    fn sign_as_gateway(&self, key: &crate::config::GatewayKey, input: &[u8]) -> Option<Vec<u8>> {
        crate::crypto::ed25519_sign(&key.seed, &key.public, input)
    }
}

/// The identity in claims `json` (a JSON object) that `issuer`'s token carried when it was
/// verified elsewhere (by a host, or by another instance that shared it): only the claim
/// types are checked again ([`crate::claims::identity_from_claims`]). `what` names where
/// the claims came from in the failure's detail.
pub fn identity_from_claims_json(
    json: &[u8],
    issuer: IssuerId,
    what: &str,
) -> Result<VerifiedIdentity, AuthFailure> {
    let claims = parse_object(json).map_err(|e| {
        AuthFailure::new(Reason::ClaimInvalid, format!("{what} claims: {e}")).at(issuer)
    })?;
    crate::claims::identity_from_claims(claims, issuer)
        .map_err(|e| AuthFailure::new(Reason::ClaimInvalid, format!("{e:?}")).at(issuer))
}

/// A token a provider issued to the gateway as its OIDC client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuedKind {
    /// An ID token (OIDC Core §2): any `typ` but those of other JWT kinds.
    IdToken,
    /// A back-channel logout token (OIDC Back-Channel Logout §2.4): `typ` `logout+jwt`,
    /// `JWT` or none.
    LogoutToken,
}

/// Verifies `token` as issued by `issuer` to the client `client_id`: the signature with the
/// issuer's keys and algorithms, `iss`, `exp`/`nbf`/`iat` with the issuer's skew, `aud`
/// containing `client_id`, and the `typ` of `kind`. Claims particular to the kind (`nonce`,
/// `azp`, `at_hash`, `events`) are the caller's to check.
#[allow(clippy::too_many_arguments)]
pub fn verify_issued<V: SignatureVerifier>(
    token: &str,
    config: &Config,
    keys: &KeyStore<V::Key>,
    verifier: &V,
    issuer: IssuerId,
    client_id: &str,
    kind: IssuedKind,
    now: Timestamp,
) -> Result<VerifiedIdentity, AuthFailure> {
    let cfg = config
        .issuers
        .get(issuer.0)
        .ok_or_else(|| AuthFailure::new(Reason::IssuerUnknown, "issuer index out of range"))?;
    let jws = parse_compact(token, config.limits.max_token_bytes)
        .map_err(|e| AuthFailure::from(e).at(issuer))?;
    let claims = parse_object(&jws.payload).map_err(|e| {
        AuthFailure::new(
            Reason::TokenMalformed,
            format!("payload is not a JSON object: {e}"),
        )
        .at(issuer)
    })?;
    if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
        return Err(AuthFailure::new(
            Reason::IssuerUnknown,
            format!("the token is not from {:?}", cfg.issuer),
        )
        .at(issuer));
    }
    let typ = jws.header.typ.as_deref().map(normalize_media_type);
    let type_ok = match (kind, typ.as_deref()) {
        (IssuedKind::LogoutToken, None | Some("jwt" | "logout+jwt")) => true,
        (IssuedKind::LogoutToken, Some(_)) => false,
        (IssuedKind::IdToken, Some(t)) => !FOREIGN_TOKEN_TYPES.contains(&t),
        (IssuedKind::IdToken, None) => true,
    };
    if !type_ok {
        return Err(AuthFailure::new(
            Reason::TokenTypeInvalid,
            format!("`typ` {typ:?} does not fit a {kind:?}"),
        )
        .at(issuer));
    }
    let set = keys.keys(issuer, now).map_err(|e| {
        AuthFailure::new(
            Reason::KeysUnavailable,
            format!("keys of {:?} unavailable: {e:?}", cfg.issuer),
        )
        .at(issuer)
    })?;
    verify_signature(&jws, set, &cfg.algorithms, verifier).map_err(|f| f.at(issuer))?;
    let mut as_client = cfg.clone();
    as_client.audiences = vec![client_id.to_owned()];
    validate(claims, issuer, &as_client, now).map_err(|e| claim_failure(e).at(issuer))
}

/// Authentication from a local key store and verifier.
pub struct LocalAuthenticator<'a, V: SignatureVerifier> {
    /// The configuration.
    pub config: &'a Config,
    /// The key sets.
    pub keys: &'a KeyStore<V::Key>,
    /// The signature verifier.
    pub verifier: &'a V,
}

impl<V: SignatureVerifier> Authenticator for LocalAuthenticator<'_, V> {
    fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        authenticate(
            token,
            self.config,
            self.keys,
            self.verifier,
            route_issuers,
            now,
        )
    }

    fn signature_check(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        now: Timestamp,
    ) -> Option<crate::crypto::SignatureCheck> {
        platform_check(
            token,
            self.config,
            self.keys,
            self.verifier,
            route_issuers,
            now,
        )
    }

    fn checked(&self, check: &crate::crypto::SignatureCheck, valid: bool) {
        self.verifier.record(check, valid);
    }

    fn endpoints(&self, issuer: IssuerId) -> Result<crate::keyset::ProviderEndpoints, String> {
        self.keys
            .endpoints(issuer)
            .cloned()
            .ok_or_else(|| NOT_DISCOVERED_YET.to_owned())
    }

    fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: IssuedKind,
        now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        verify_issued(
            token,
            self.config,
            self.keys,
            self.verifier,
            issuer,
            client_id,
            kind,
            now,
        )
    }
}

/// The signature check `token` will need from the platform, when `verifier` has the
/// platform check signatures ([`SignatureVerifier::platform_check`]): the token parses,
/// names an issuer the route accepts whose keys are loaded, an allowed algorithm, and a key
/// the set selects for it. Anything else is left to [`authenticate`], which refuses with the
/// precise reason.
pub fn platform_check<V: SignatureVerifier>(
    token: &str,
    config: &Config,
    keys: &KeyStore<V::Key>,
    verifier: &V,
    route_issuers: &[IssuerId],
    now: Timestamp,
) -> Option<crate::crypto::SignatureCheck> {
    if !verifier.platform_checks() {
        return None;
    }
    let jws = parse_compact(token, config.limits.max_token_bytes).ok()?;
    let claims = parse_object(&jws.payload).ok()?;
    let iss = claims.get("iss")?.as_str()?;
    let id = IssuerId(config.issuers.iter().position(|i| i.matches_iss(iss))?);
    if !route_issuers.is_empty() && !route_issuers.contains(&id) {
        return None;
    }
    if !config
        .issuers
        .get(id.0)?
        .algorithms
        .contains(&jws.header.alg)
    {
        return None;
    }
    let set = keys.keys(id, now).ok()?;
    let entry = set.select(jws.header.kid.as_deref(), jws.header.alg).ok()?;
    Some(crate::crypto::SignatureCheck {
        material: verifier.platform_check(&entry.key, jws.header.alg)?,
        alg: jws.header.alg,
        message: jws.signing_input.as_bytes().to_vec(),
        signature: jws.signature,
    })
}

/// Authenticates `token` against the configured issuers (restricted to `route_issuers`
/// when non-empty).
pub fn authenticate<V: SignatureVerifier>(
    token: &str,
    config: &Config,
    keys: &KeyStore<V::Key>,
    verifier: &V,
    route_issuers: &[IssuerId],
    now: Timestamp,
) -> Result<VerifiedIdentity, AuthFailure> {
    let jws = parse_compact(token, config.limits.max_token_bytes)?;
    let claims = parse_object(&jws.payload).map_err(|e| {
        AuthFailure::new(
            Reason::TokenMalformed,
            format!("payload is not a JSON object: {e}"),
        )
    })?;
    let iss = match claims.get("iss") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(AuthFailure::new(
                Reason::ClaimInvalid,
                "`iss` must be a string",
            ));
        }
        None => {
            return Err(AuthFailure::new(
                Reason::IssuerUnknown,
                "the token has no `iss`",
            ));
        }
    };
    let Some(index) = config.issuers.iter().position(|i| i.matches_iss(iss)) else {
        return Err(AuthFailure::new(
            Reason::IssuerUnknown,
            format!("issuer {iss:?} is not configured"),
        ));
    };
    let id = IssuerId(index);
    if !route_issuers.is_empty() && !route_issuers.contains(&id) {
        return Err(AuthFailure::new(
            Reason::IssuerUnknown,
            format!("issuer {iss:?} is not accepted on this route"),
        )
        .at(id));
    }
    let issuer = config
        .issuers
        .get(index)
        .ok_or_else(|| AuthFailure::new(Reason::IssuerUnknown, "issuer index out of range"))?;
    check_type(&jws, issuer).map_err(|f| f.at(id))?;
    let set = keys.keys(id, now).map_err(|e| {
        AuthFailure::new(
            Reason::KeysUnavailable,
            format!("keys of {iss:?} unavailable: {e:?}"),
        )
        .at(id)
    })?;
    verify_signature(&jws, set, &issuer.algorithms, verifier).map_err(|f| f.at(id))?;
    validate(claims, id, issuer, now).map_err(|e| claim_failure(e).at(id))
}

/// The refusal for claims that are not acceptable.
pub(crate) fn claim_failure(e: ClaimError) -> AuthFailure {
    let (reason, detail) = match e {
        ClaimError::Expired(d) => (Reason::TokenExpired, d),
        ClaimError::NotYetValid(d) => (Reason::TokenNotYetValid, d),
        ClaimError::IssuedInFuture(d) => (Reason::TokenIssuedInFuture, d),
        ClaimError::AudienceMismatch(d) => (Reason::AudienceMismatch, d),
        ClaimError::Invalid(d) => (Reason::ClaimInvalid, d),
    };
    AuthFailure::new(reason, detail)
}

fn check_type(jws: &CompactJws<'_>, issuer: &IssuerConfig) -> Result<(), AuthFailure> {
    let typ = jws.header.typ.as_deref().map(normalize_media_type);
    match (&issuer.token_types, typ) {
        (Some(accepted), Some(t)) if accepted.contains(&t) => Ok(()),
        (Some(accepted), t) => Err(AuthFailure::new(
            Reason::TokenTypeInvalid,
            format!("typ {:?} is not one of {accepted:?}", t.unwrap_or_default()),
        )),
        (None, Some(t)) if FOREIGN_TOKEN_TYPES.contains(&t.as_str()) => Err(AuthFailure::new(
            Reason::TokenTypeInvalid,
            format!("a `{t}` token is not an access token"),
        )),
        (None, _) => Ok(()),
    }
}
