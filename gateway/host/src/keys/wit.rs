//! The WIT `keys` interface: token verification with the host's key sets, native
//! signature checks and verified-token cache.

use std::sync::Arc;

use portcullis_core::IssuerId;
use portcullis_core::authenticate::AuthFailure;

use crate::bindings::portcullis::gateway::keys;
use crate::keys::KeyService;

/// One request's view of the key service.
pub struct KeysHost(pub Arc<KeyService>);

/// An issuer index on the WIT side.
fn wit_issuer(issuer: IssuerId) -> u32 {
    u32::try_from(issuer.0).unwrap_or(u32::MAX)
}

fn failure(f: AuthFailure) -> keys::Failure {
    keys::Failure {
        reason: f.reason.code().to_owned(),
        detail: f.detail,
        issuer: f.issuer.and_then(|i| u32::try_from(i.0).ok()),
    }
}

impl keys::Host for KeysHost {
    async fn authenticate(
        &mut self,
        token: String,
        route_issuers: Vec<u32>,
    ) -> Result<keys::Verified, keys::Failure> {
        let issuers: Vec<IssuerId> = route_issuers
            .into_iter()
            .map(|i| IssuerId(i as usize))
            .collect();
        match self.0.authenticate(&token, &issuers).await {
            Ok((issuer, claims)) => Ok(keys::Verified {
                issuer: wit_issuer(issuer),
                claims: claims.to_string(),
            }),
            Err(f) => Err(failure(f)),
        }
    }

    fn endpoints(&mut self, issuer: u32) -> Result<keys::ProviderEndpoints, String> {
        self.0
            .endpoints(IssuerId(issuer as usize))
            .map(|e| keys::ProviderEndpoints {
                authorization: e.authorization,
                token: e.token,
                end_session: e.end_session,
                pushed_authorization: e.pushed_authorization,
                introspection: e.introspection,
            })
            .ok_or_else(|| portcullis_core::login::NOT_DISCOVERED_YET.to_owned())
    }

    fn verify_issued(
        &mut self,
        token: String,
        issuer: u32,
        client_id: String,
        kind: keys::IssuedKind,
    ) -> Result<keys::Verified, keys::Failure> {
        use portcullis_core::authenticate::IssuedKind;
        let kind = match kind {
            keys::IssuedKind::IdToken => IssuedKind::IdToken,
            keys::IssuedKind::LogoutToken => IssuedKind::LogoutToken,
        };
        match self
            .0
            .verify_issued(&token, IssuerId(issuer as usize), &client_id, kind)
        {
            Ok(id) => Ok(keys::Verified {
                issuer,
                claims: serde_json::Value::Object(id.claims).to_string(),
            }),
            Err(f) => Err(failure(f)),
        }
    }
}
