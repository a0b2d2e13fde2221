//! Outbound calls: the pooled client backends and providers are reached with, the OIDC
//! token-endpoint calls of the login flow and Turnstile-compatible site verification
//! ([`ClientService`]); and the WIT `client` interface the gateway component asks them
//! through ([`ClientHost`]), which also tells it the connecting peer.

pub mod attest;
pub mod backends;
pub mod forms;
mod wit;

use std::net::IpAddr;

use portcullis_core::config::{ClientConfig, SiteVerify};
use portcullis_core::{BackendId, IssuerId};

pub use backends::{
    BackendClient, BackendOutcome, backend_client, drop_connection_listed, full_body,
};
pub use wit::ClientHost;

use crate::keys::KeyService;

/// What the host calls out with, and who it trusts to say who the client is.
pub struct ClientService {
    /// The pooled client for backends, token endpoints and site verification.
    pub backends: BackendClient,
    /// The clients of regions whose backends must prove who they are
    /// (`[region.NAME.tls]`), by region index.
    pub regions: Vec<Option<BackendClient>>,
    /// The Turnstile-compatible challenge service, if configured.
    pub site_verify: Option<SiteVerify>,
    /// Trusted proxies and client headers (`[client]`).
    pub proxies: ClientConfig,
}

impl ClientService {
    /// The client that reaches `backend`: its region's own, or the shared one.
    pub fn for_backend(&self, backend: BackendId) -> &BackendClient {
        self.regions
            .get(backend.region.0)
            .and_then(Option::as_ref)
            .unwrap_or(&self.backends)
    }

    /// Asks the site-verification service whether `site_token` is genuine.
    pub async fn verify_site_token(
        &self,
        site_token: &str,
        remote_ip: Option<IpAddr>,
    ) -> Result<bool, String> {
        let Some(site) = &self.site_verify else {
            return Err("no site verification service is configured".into());
        };
        forms::verify(&self.backends, site, site_token, remote_ip).await
    }

    /// POSTs a login-flow form to `issuer`'s `endpoint`.
    pub async fn token_request(
        &self,
        keys: &KeyService,
        issuer: IssuerId,
        endpoint: portcullis_core::ports::FormEndpoint,
        authorization: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        forms::token_request(keys, &self.backends, issuer, endpoint, authorization, body).await
    }
}
