//! The client port: the outbound calls a decision may need (a provider's token endpoint
//! for sign-in and refresh, a Turnstile-compatible site-verification service).

use std::net::IpAddr;

use crate::config::SiteVerify;
use crate::model::IssuerId;

/// Longest token-endpoint answer read.
pub const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// One outbound call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOp {
    /// POST `body` (`application/x-www-form-urlencoded`) to `issuer`'s token endpoint (from
    /// discovery) with the `Authorization` header `authorization`
    /// ([`CallAnswer::Token`]: the status and at most [`MAX_TOKEN_RESPONSE`] bytes).
    Token {
        /// The provider.
        issuer: IssuerId,
        /// Which of its endpoints.
        endpoint: FormEndpoint,
        /// The `Authorization` header (client authentication); empty: send none (the client
        /// authenticates in the body: `client_secret_post`, `private_key_jwt`).
        authorization: String,
        /// The form body.
        body: String,
    },
    /// Ask a site-verification service whether `site_token` (from a client at
    /// `remote_ip`) is genuine ([`CallAnswer::SiteVerified`]).
    SiteVerify {
        /// The service.
        site: SiteVerify,
        /// The token the challenge page returned.
        site_token: String,
        /// The client's address, when known.
        remote_ip: Option<IpAddr>,
    },
}

/// The answer to a [`CallOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallAnswer {
    /// The token endpoint's status and body.
    Token {
        /// HTTP status.
        status: u16,
        /// At most [`MAX_TOKEN_RESPONSE`] bytes of body.
        body: Vec<u8>,
    },
    /// Whether the service accepted the site token.
    SiteVerified(bool),
}

/// An answer, or why the call failed (the feature that needed it then fails closed).
pub type CallResult = Result<CallAnswer, String>;

/// The adapter's outbound calls.
pub trait Client {
    /// Performs `op` at once when this adapter can (a synchronous host call): its result.
    /// `None` when the call must be awaited: the decision suspends with `op` as its need.
    fn now(&self, op: &CallOp) -> Option<CallResult>;
}

/// An adapter that cannot call out: sign-in, refresh and site verification fail closed.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoClient;

impl Client for NoClient {
    fn now(&self, op: &CallOp) -> Option<CallResult> {
        Some(Err(match op {
            CallOp::Token { .. } => "this adapter cannot call identity providers".to_owned(),
            CallOp::SiteVerify { .. } => "this adapter makes no outbound calls".to_owned(),
        }))
    }
}

impl CallAnswer {
    /// The status and body of a `Token` call.
    pub fn token(self) -> Result<(u16, Vec<u8>), String> {
        match self {
            CallAnswer::Token { status, body } => Ok((status, body)),
            CallAnswer::SiteVerified(_) => {
                Err("a site verification answered a token request".to_owned())
            }
        }
    }

    /// The verdict of a `SiteVerify` call.
    pub fn site_verified(self) -> Result<bool, String> {
        match self {
            CallAnswer::SiteVerified(ok) => Ok(ok),
            CallAnswer::Token { .. } => {
                Err("a token endpoint answered a site verification".to_owned())
            }
        }
    }
}

/// The provider endpoints a login form goes to ([`CallOp::Token`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormEndpoint {
    /// `token_endpoint`: code exchange and refresh.
    Token,
    /// `pushed_authorization_request_endpoint` (RFC 9126).
    PushedAuthorization,
    /// `introspection_endpoint` (RFC 7662).
    Introspection,
}

impl FormEndpoint {
    /// Its URL among `endpoints`, if the provider offers it.
    pub fn url(self, endpoints: &crate::keyset::ProviderEndpoints) -> Option<&str> {
        match self {
            Self::Token => Some(endpoints.token.as_str()),
            Self::PushedAuthorization => endpoints.pushed_authorization.as_deref(),
            Self::Introspection => endpoints.introspection.as_deref(),
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::PushedAuthorization => "pushed-authorization",
            Self::Introspection => "introspection",
        }
    }
}
