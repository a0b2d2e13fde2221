//! The WIT `client` interface: the connecting peer, and the outbound calls the gateway
//! component asks the host to make.

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_core::IssuerId;

use crate::bindings::portcullis::gateway::client;
use crate::bindings::portcullis::gateway::client::FormEndpoint;
use crate::client::ClientService;
use crate::keys::KeyService;

/// One request's view of the outbound client.
pub struct ClientHost {
    /// The outbound client.
    pub service: Arc<ClientService>,
    /// The key service (token endpoints come from discovery).
    pub keys: Arc<KeyService>,
    /// The connecting peer.
    pub peer: IpAddr,
}

impl client::Host for ClientHost {
    fn peer(&mut self) -> Option<String> {
        Some(self.peer.to_string())
    }

    async fn verify_site_token(
        &mut self,
        site_token: String,
        remote_ip: Option<String>,
    ) -> Result<bool, String> {
        let ip = remote_ip.and_then(|i| i.parse().ok());
        self.service.verify_site_token(&site_token, ip).await
    }

    async fn token_request(
        &mut self,
        issuer: u32,
        endpoint: FormEndpoint,
        authorization: String,
        body: String,
    ) -> Result<(u16, Vec<u8>), String> {
        let endpoint = match endpoint {
            FormEndpoint::Token => portcullis_core::ports::FormEndpoint::Token,
            FormEndpoint::PushedAuthorization => {
                portcullis_core::ports::FormEndpoint::PushedAuthorization
            }
            FormEndpoint::Introspection => portcullis_core::ports::FormEndpoint::Introspection,
        };
        self.service
            .token_request(
                &self.keys,
                IssuerId(issuer as usize),
                endpoint,
                &authorization,
                &body,
            )
            .await
    }
}
