//! Stable, machine-readable reason codes: each denial names exactly one.

use http::StatusCode;

/// Why a request was refused. The [`code`](Reason::code) strings are a public contract:
/// they appear in problem details, `WWW-Authenticate`, audit records and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The request is malformed (e.g. several `Authorization` headers).
    InvalidRequest,
    /// The path is ambiguous (dot segments, encoded slashes, control characters).
    PathInvalid,
    /// The request's authority is missing, repeated or malformed (RFC 9112 §3.2).
    HostInvalid,
    /// No route matches.
    RouteNotFound,
    /// The route needs a token and none was sent.
    AuthenticationRequired,
    /// The token is not a well-formed compact JWS or its payload is not a JSON object.
    TokenMalformed,
    /// The backend's certificate is not the identity its region requires
    /// (`[region.NAME.tls]`): nothing was sent to it.
    BackendIdentityMismatch,
    /// A forward-auth call came from a peer that is not a trusted proxy.
    ForwardAuthUntrusted,
    /// A forward-auth call does not describe a request (missing or repeated target,
    /// method, host or scheme).
    ForwardAuthInvalid,
    /// The token exceeds the size limit.
    TokenTooLarge,
    /// `alg` is `none`, unsupported, or not allowed for the issuer.
    AlgorithmNotAllowed,
    /// The `crit` header lists an extension we do not implement.
    CriticalHeaderUnsupported,
    /// `iss` names no configured issuer (or one not accepted on this route).
    IssuerUnknown,
    /// No key of the issuer's set matches the token.
    KeyNotFound,
    /// The key named by `kid` may not verify this algorithm.
    KeyMismatch,
    /// The signature does not verify.
    SignatureInvalid,
    /// The issuer's key set is not available (never loaded, or stale past the limit).
    KeysUnavailable,
    /// `typ` is not accepted for the issuer.
    TokenTypeInvalid,
    /// `exp` has passed.
    TokenExpired,
    /// `nbf` is in the future.
    TokenNotYetValid,
    /// `iat` is in the future.
    TokenIssuedInFuture,
    /// `aud` holds none of the accepted audiences.
    AudienceMismatch,
    /// A claim is missing or of the wrong type.
    ClaimInvalid,
    /// The token lacks a required scope.
    InsufficientScope,
    /// A route claim rule does not hold.
    ClaimMismatch,
    /// The authentication is too weak or too old for the route (RFC 9470).
    InsufficientUserAuthentication,
    /// The residency claim names no configured region, or is not a string.
    ResidencyUnknown,
    /// The token has no residency claim and the configuration refuses such tokens.
    ResidencyMissing,
    /// The route is not offered to residents of the user's region.
    ResidencyNotPermitted,
    /// No healthy backend in the user's region (or same-jurisdiction failover).
    ResidencyUnavailable,
    /// The chosen backend could not be reached or did not answer in time.
    BackendUnavailable,
    /// The backend did not answer within the configured response or total timeout.
    BackendTimeout,
    /// The request body exceeds the configured limit.
    BodyTooLarge,
    /// The route's risk assessment refused the request.
    RiskDenied,
    /// The client must prove it is not a bot (a challenge page, or 403 for API clients).
    ChallengeRequired,
    /// A risk plugin failed (trap, timeout, memory cap, bad answer) under `on_error = "deny"`.
    RiskCheckFailed,
    /// A delegated (agent) token on a route that does not accept it, or its actor.
    AgentNotAllowed,
    /// The agent asks for scopes beyond what the route lets agents exercise.
    AgentScopeExceeded,
    /// The agent's workload credential does not name the token's actor.
    ActorMismatch,
    /// The route (or the DPoP-bound token) needs `Authorization: DPoP` with a proof.
    DpopRequired,
    /// The DPoP proof is invalid, replayed, or for another key than the token's.
    DpopProofInvalid,
    /// A route rate limit is exhausted (429 with `Retry-After` and `RateLimit` headers).
    RateLimited,
    /// The shared state (rate limits, replay caches) is unreachable and the configuration
    /// says `on_unavailable = "deny"`.
    StateUnavailable,
    /// The challenge clearance cookie is forged, expired or bound to another client.
    ClearanceInvalid,
    /// A challenge solution was wrong, expired, replayed or for another client.
    ChallengeFailed,
    /// The DPoP proof must carry the server nonce sent in `DPoP-Nonce`.
    DpopNonceRequired,
    /// The session cookie is tampered with, truncated, or sealed with an unknown key.
    SessionInvalid,
    /// The session was ended because its requests' risk reached the route's `revoke`
    /// threshold (e.g. its cookie used from another client): every copy of it is refused.
    SessionRevoked,
    /// A login callback's `state` or its login-attempt cookie is missing, tampered with,
    /// expired or already used.
    LoginStateInvalid,
    /// The provider refused the login, or its answer (code exchange, ID token) was invalid.
    LoginFailed,
    /// The identity provider cannot be reached or has not been discovered yet.
    ProviderUnavailable,
    /// A back-channel logout token is invalid, replayed or lacks `sid` and `sub`.
    LogoutTokenInvalid,
    /// The issuer's introspection endpoint says the opaque token is not active (RFC 7662).
    TokenInactive,
    /// The issuer's introspection endpoint cannot be reached (or its address is unknown).
    IntrospectionUnavailable,
    /// The issuer's introspection endpoint answered, but not with a valid RFC 7662 answer.
    IntrospectionInvalid,
    /// The user has not granted a purpose the route needs (consent).
    ConsentRequired,
    /// `[gateway_token]` is configured and the token for the backend could not be minted
    /// (the host that signs for a wasm gateway does not hold the key, or the runtime has no
    /// random source for its `jti`): nothing is forwarded without it.
    GatewayTokenUnavailable,
    /// The gateway itself failed and cannot decide or relay this request: its configuration
    /// does not load, its component failed (a trap, its deadline, no free instance), or the
    /// backend's answer cannot be passed on. The answer's status says which (500, 503, 502:
    /// [`crate::decision::gateway_error`]); this reason's own is 500.
    GatewayError,
}

impl Reason {
    /// The stable code, e.g. `token_expired`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "invalid_request",
            Reason::PathInvalid => "path_invalid",
            Reason::HostInvalid => "host_invalid",
            Reason::RouteNotFound => "route_not_found",
            Reason::AuthenticationRequired => "authentication_required",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenTooLarge => "token_too_large",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::CriticalHeaderUnsupported => "critical_header_unsupported",
            Reason::IssuerUnknown => "issuer_unknown",
            Reason::KeyNotFound => "key_not_found",
            Reason::KeyMismatch => "key_mismatch",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::TokenTypeInvalid => "token_type_invalid",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenIssuedInFuture => "token_issued_in_future",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::ClaimInvalid => "claim_invalid",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ClaimMismatch => "claim_mismatch",
            Reason::InsufficientUserAuthentication => "insufficient_user_authentication",
            Reason::ResidencyUnknown => "residency_unknown",
            Reason::ResidencyMissing => "residency_missing",
            Reason::ResidencyNotPermitted => "residency_not_permitted",
            Reason::ResidencyUnavailable => "residency_unavailable",
            Reason::BackendUnavailable => "backend_unavailable",
            Reason::BackendTimeout => "backend_timeout",
            Reason::BodyTooLarge => "body_too_large",
            Reason::RiskDenied => "risk_denied",
            Reason::ChallengeRequired => "challenge_required",
            Reason::RiskCheckFailed => "risk_check_failed",
            Reason::AgentNotAllowed => "agent_not_allowed",
            Reason::AgentScopeExceeded => "agent_scope_exceeded",
            Reason::ActorMismatch => "actor_mismatch",
            Reason::DpopRequired => "dpop_required",
            Reason::DpopProofInvalid => "dpop_proof_invalid",
            Reason::DpopNonceRequired => "dpop_nonce_required",
            Reason::RateLimited => "rate_limited",
            Reason::StateUnavailable => "state_unavailable",
            Reason::ClearanceInvalid => "clearance_invalid",
            Reason::ChallengeFailed => "challenge_failed",
            Reason::SessionInvalid => "session_invalid",
            Reason::SessionRevoked => "session_revoked",
            Reason::LoginStateInvalid => "login_state_invalid",
            Reason::LoginFailed => "login_failed",
            Reason::ProviderUnavailable => "provider_unavailable",
            Reason::LogoutTokenInvalid => "logout_token_invalid",
            Reason::TokenInactive => "token_inactive",
            Reason::IntrospectionUnavailable => "introspection_unavailable",
            Reason::IntrospectionInvalid => "introspection_invalid",
            Reason::ConsentRequired => "consent_required",
            Reason::ForwardAuthUntrusted => "forward_auth_untrusted",
            Reason::ForwardAuthInvalid => "forward_auth_invalid",
            Reason::BackendIdentityMismatch => "backend_identity_mismatch",
            Reason::GatewayTokenUnavailable => "gateway_token_unavailable",
            Reason::GatewayError => "gateway_error",
        }
    }

    /// Every reason, for lookups and metrics.
    pub const ALL: [Reason; 58] = [
        Reason::InvalidRequest,
        Reason::PathInvalid,
        Reason::HostInvalid,
        Reason::RouteNotFound,
        Reason::AuthenticationRequired,
        Reason::TokenMalformed,
        Reason::TokenTooLarge,
        Reason::AlgorithmNotAllowed,
        Reason::CriticalHeaderUnsupported,
        Reason::IssuerUnknown,
        Reason::KeyNotFound,
        Reason::KeyMismatch,
        Reason::SignatureInvalid,
        Reason::KeysUnavailable,
        Reason::TokenTypeInvalid,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::TokenIssuedInFuture,
        Reason::AudienceMismatch,
        Reason::ClaimInvalid,
        Reason::InsufficientScope,
        Reason::ClaimMismatch,
        Reason::InsufficientUserAuthentication,
        Reason::ResidencyUnknown,
        Reason::ResidencyMissing,
        Reason::ResidencyNotPermitted,
        Reason::ResidencyUnavailable,
        Reason::BackendUnavailable,
        Reason::BackendTimeout,
        Reason::BodyTooLarge,
        Reason::RiskDenied,
        Reason::ChallengeRequired,
        Reason::RiskCheckFailed,
        Reason::AgentNotAllowed,
        Reason::AgentScopeExceeded,
        Reason::ActorMismatch,
        Reason::DpopRequired,
        Reason::DpopProofInvalid,
        Reason::DpopNonceRequired,
        Reason::RateLimited,
        Reason::StateUnavailable,
        Reason::ClearanceInvalid,
        Reason::ChallengeFailed,
        Reason::SessionInvalid,
        Reason::SessionRevoked,
        Reason::LoginStateInvalid,
        Reason::LoginFailed,
        Reason::ProviderUnavailable,
        Reason::LogoutTokenInvalid,
        Reason::TokenInactive,
        Reason::IntrospectionUnavailable,
        Reason::IntrospectionInvalid,
        Reason::ConsentRequired,
        Reason::ForwardAuthUntrusted,
        Reason::ForwardAuthInvalid,
        Reason::BackendIdentityMismatch,
        Reason::GatewayTokenUnavailable,
        Reason::GatewayError,
    ];

    /// The reason with this code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The HTTP status this reason answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::InvalidRequest
            | Reason::PathInvalid
            | Reason::HostInvalid
            | Reason::ForwardAuthInvalid
            | Reason::LoginStateInvalid
            | Reason::LogoutTokenInvalid => StatusCode::BAD_REQUEST,
            Reason::RouteNotFound => StatusCode::NOT_FOUND,
            Reason::InsufficientScope
            | Reason::ClaimMismatch
            | Reason::ResidencyUnknown
            | Reason::ResidencyMissing
            | Reason::ResidencyNotPermitted
            | Reason::RiskDenied
            | Reason::ChallengeRequired
            | Reason::AgentNotAllowed
            | Reason::AgentScopeExceeded
            | Reason::ActorMismatch
            | Reason::ClearanceInvalid
            | Reason::ChallengeFailed
            | Reason::ConsentRequired
            | Reason::ForwardAuthUntrusted => StatusCode::FORBIDDEN,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::KeysUnavailable
            | Reason::ResidencyUnavailable
            | Reason::BackendUnavailable
            | Reason::RiskCheckFailed
            | Reason::StateUnavailable
            | Reason::ProviderUnavailable
            | Reason::IntrospectionUnavailable
            | Reason::GatewayTokenUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reason::IntrospectionInvalid | Reason::BackendIdentityMismatch => {
                StatusCode::BAD_GATEWAY
            }
            Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::GatewayError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// A one-line human title for problem details.
    pub fn title(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "The request is malformed",
            Reason::PathInvalid => "The request path is ambiguous",
            Reason::HostInvalid => "The request's host is missing or invalid",
            Reason::ForwardAuthUntrusted => "Only a trusted proxy may ask for this decision",
            Reason::ForwardAuthInvalid => "The forward-auth call does not describe a request",
            Reason::BackendIdentityMismatch => "The backend could not prove its identity",
            Reason::RouteNotFound => "No route matches this request",
            Reason::AuthenticationRequired => "Authentication is required",
            Reason::TokenMalformed => "The access token is malformed",
            Reason::TokenTooLarge => "The access token is too large",
            Reason::AlgorithmNotAllowed => "The token's algorithm is not allowed",
            Reason::CriticalHeaderUnsupported => "The token has an unsupported critical header",
            Reason::IssuerUnknown => "The token's issuer is not trusted here",
            Reason::KeyNotFound => "No key matches the token",
            Reason::KeyMismatch => "The token's key may not be used this way",
            Reason::SignatureInvalid => "The token's signature is invalid",
            Reason::KeysUnavailable => "The issuer's keys are unavailable",
            Reason::TokenTypeInvalid => "The token's type is not accepted",
            Reason::TokenExpired => "The access token has expired",
            Reason::TokenNotYetValid => "The access token is not valid yet",
            Reason::TokenIssuedInFuture => "The access token is issued in the future",
            Reason::AudienceMismatch => "The access token is for another audience",
            Reason::ClaimInvalid => "The access token has an invalid claim",
            Reason::InsufficientScope => "The access token lacks a required scope",
            Reason::ClaimMismatch => "The access token does not meet the route's claim rules",
            Reason::InsufficientUserAuthentication => {
                "Stronger or more recent authentication is required"
            }
            Reason::ResidencyUnknown => "The user's home region is not known here",
            Reason::ResidencyMissing => "The user's home region is not stated",
            Reason::ResidencyNotPermitted => "This route is not offered in the user's region",
            Reason::ResidencyUnavailable => "The user's home region is unavailable",
            Reason::BackendUnavailable => "The backend is unavailable",
            Reason::BackendTimeout => "The backend did not answer in time",
            Reason::BodyTooLarge => "The request body is too large",
            Reason::RiskDenied => "The request was refused as too risky",
            Reason::ChallengeRequired => "The client must complete a challenge",
            Reason::RiskCheckFailed => "A risk check failed",
            Reason::AgentNotAllowed => "Agents may not call this route",
            Reason::AgentScopeExceeded => "The agent exceeds what it may do here",
            Reason::ActorMismatch => "The agent's credential does not match the delegation",
            Reason::DpopRequired => "A DPoP-bound token and proof are required",
            Reason::DpopProofInvalid => "The DPoP proof is invalid",
            Reason::DpopNonceRequired => "The DPoP proof must use the server's nonce",
            Reason::RateLimited => "Too many requests",
            Reason::StateUnavailable => "The gateway's shared state is unavailable",
            Reason::ClearanceInvalid => "The challenge clearance is invalid",
            Reason::ChallengeFailed => "The challenge was not solved",
            Reason::SessionInvalid => "The session cookie is invalid",
            Reason::SessionRevoked => "The session was ended: sign in again",
            Reason::LoginStateInvalid => "The sign-in attempt is invalid or expired",
            Reason::LoginFailed => "The sign-in at the identity provider failed",
            Reason::ProviderUnavailable => "The identity provider is unavailable",
            Reason::LogoutTokenInvalid => "The logout token is invalid",
            Reason::TokenInactive => "The access token is not active",
            Reason::IntrospectionUnavailable => {
                "The issuer's introspection endpoint is unavailable"
            }
            Reason::IntrospectionInvalid => "The issuer's introspection answer is invalid",
            Reason::ConsentRequired => "The user has not consented to this use",
            Reason::GatewayTokenUnavailable => "The gateway could not mint the backend's token",
            Reason::GatewayError => "Gateway error",
        }
    }

    /// The RFC 6750 / RFC 9470 `error` value for `WWW-Authenticate`, if any.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Reason::AuthenticationRequired
            | Reason::DpopRequired
            | Reason::DpopProofInvalid
            | Reason::DpopNonceRequired => None,
            Reason::InvalidRequest => Some("invalid_request"),
            Reason::SessionInvalid | Reason::SessionRevoked | Reason::LoginFailed => None,
            Reason::InsufficientScope => Some("insufficient_scope"),
            Reason::InsufficientUserAuthentication => Some("insufficient_user_authentication"),
            r if r.status() == StatusCode::UNAUTHORIZED => Some("invalid_token"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }

    #[test]
    fn statuses_are_precise() {
        let status = |r: Reason| r.status().as_u16();
        assert_eq!(status(Reason::BackendUnavailable), 503);
        assert_eq!(status(Reason::ResidencyUnavailable), 503);
        assert_eq!(status(Reason::KeysUnavailable), 503);
        assert_eq!(status(Reason::BodyTooLarge), 413);
        assert_eq!(status(Reason::InsufficientScope), 403);
        assert_eq!(status(Reason::RouteNotFound), 404);
        assert_eq!(status(Reason::PathInvalid), 400);
        assert_eq!(status(Reason::HostInvalid), 400);
        assert_eq!(status(Reason::BackendTimeout), 504);
        assert_eq!(status(Reason::RateLimited), 429);
        assert_eq!(status(Reason::StateUnavailable), 503);
        assert_eq!(status(Reason::TokenExpired), 401);
        assert_eq!(status(Reason::TokenInactive), 401);
        assert_eq!(status(Reason::IntrospectionUnavailable), 503);
        assert_eq!(status(Reason::IntrospectionInvalid), 502);
        assert_eq!(status(Reason::ConsentRequired), 403);
        assert_eq!(status(Reason::GatewayTokenUnavailable), 503);
        assert_eq!(status(Reason::GatewayError), 500);
        // Only 401s about tokens and the scope refusal carry a bearer error (a bad session
        // cookie or a failed browser login is no token error).
        for r in Reason::ALL {
            let bearer = r.bearer_error().is_some();
            assert_eq!(
                bearer,
                status(r) == 401
                    && !matches!(
                        r,
                        Reason::AuthenticationRequired
                            | Reason::DpopRequired
                            | Reason::DpopProofInvalid
                            | Reason::DpopNonceRequired
                            | Reason::SessionInvalid
                            | Reason::SessionRevoked
                            | Reason::LoginFailed
                    )
                    || r == Reason::InsufficientScope
                    || r == Reason::InvalidRequest,
                "{r:?}"
            );
        }
    }
}
