//! Paths and names the gateway reserves for itself, and the limits of its cookie names.

use crate::crypto::Algorithm;

/// Paths under this prefix belong to the gateway and never reach a backend.
pub const INTERNAL_PREFIX: &str = "/_portcullis/";

/// Where the challenge page sends its solution (`?token=…&nonce=…`).
pub const CHALLENGE_PATH: &str = "/_portcullis/challenge";

/// The redirect URI path: the provider sends the browser back here with `code` and `state`.
pub const CALLBACK_PATH: &str = "/_portcullis/callback";

/// Starts a login: `?provider=<name>&return_to=<path>` (the provider-choice page links here).
pub const LOGIN_PATH: &str = "/_portcullis/login";

/// Ends the session here and at the provider.
pub const LOGOUT_PATH: &str = "/_portcullis/logout";

/// OIDC Back-Channel Logout: the provider POSTs `logout_token` here.
pub const BACKCHANNEL_PATH: &str = "/_portcullis/backchannel-logout";

/// Where the gateway's public keys are served.
pub const JWKS_PATH: &str = "/.well-known/portcullis/jwks.json";

// The login clients' public keys (`private_key_jwt`) are served at
// `crate::client_auth::CLIENT_JWKS_PATH`.

/// The longest session-key id.
pub const MAX_KID_LEN: usize = 16;

/// The longest session-cookie base name.
pub const MAX_BASE_LEN: usize = 64;

/// The prefix of every session cookie's name (RFC 6265bis `__Host-`: Secure, no Domain, Path=/).
pub const HOST_PREFIX: &str = "__Host-";

/// The DPoP proof algorithms the gateway accepts (for `WWW-Authenticate: DPoP algs=…`).
pub const PROOF_ALGORITHMS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::PS256,
];
