//! The WIT `keys` interface: token verification with the host's key sets, native
//! signature checks and verified-token cache.

use std::sync::Arc;

use portcullis_core::authenticate::AuthFailure;
use portcullis_core::{IssuerId, KeyMaterial};

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

    fn verify_with_key(
        &mut self,
        alg: String,
        key: keys::PublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        use portcullis_core::SignatureVerifier as _;
        use portcullis_core::crypto::Curve;
        let Some(alg) = portcullis_core::Algorithm::from_name(&alg) else {
            return false;
        };
        let material = match key {
            keys::PublicKey::Rsa(k) => KeyMaterial::Rsa { n: k.n, e: k.e },
            keys::PublicKey::Ec(k) => KeyMaterial::Ec {
                curve: match k.curve {
                    keys::Curve::P256 => Curve::P256,
                    keys::Curve::P384 => Curve::P384,
                },
                x: k.x,
                y: k.y,
            },
            keys::PublicKey::Ed25519(x) => KeyMaterial::Ed25519 { x },
        };
        let v = crate::keys::verifier::NativeVerifier;
        v.prepare(&material)
            .is_ok_and(|k| v.verify(alg, &k, &message, &signature))
    }

    fn sign_as_client(&mut self, thumbprint: String, input: Vec<u8>) -> Result<Vec<u8>, String> {
        self.0
            .config()
            .client_key(&thumbprint)
            .ok_or_else(|| format!("no configured client key has the thumbprint {thumbprint:?}"))?
            .sign(&input)
    }

    fn sign_as_gateway(&mut self, kid: String, input: Vec<u8>) -> Option<Vec<u8>> {
        portcullis_core::gateway_token::sign(self.0.config().gateway_key(&kid)?, &input)
    }
}

#[cfg(test)]
mod tests {
    /// The crates whose functions are signature code, as mangled names spell them.
    const SIGNATURE_CRATES: [&str; 6] = [
        "13crypto_bigint",
        "15ed25519_compact",
        "10primeorder",
        "4p256",
        "4p384",
        "3rsa",
    ];

    /// Whether the mangled `function` is in `krate`: a legacy path starting with it
    /// (`_ZN13crypto_bigint…`) or a v0 crate root (`…Cs<hash>_13crypto_bigint…`).
    fn is_in(function: &str, krate: &str) -> bool {
        function.starts_with(&format!("_ZN{krate}")) || function.contains(&format!("_{krate}"))
    }

    /// Which of [`SIGNATURE_CRATES`] the functions of `wasm` (a component, its core
    /// modules included) come from, by their debugging names.
    fn signature_crates_in(wasm: &[u8]) -> Vec<&'static str> {
        let mut found = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            let wasmparser::Payload::CustomSection(c) = payload.unwrap() else {
                continue;
            };
            let wasmparser::KnownCustom::Name(reader) = c.as_known() else {
                continue;
            };
            for name in reader {
                let wasmparser::Name::Function(map) = name.unwrap() else {
                    continue;
                };
                for naming in map {
                    let function = naming.unwrap().name;
                    for c in SIGNATURE_CRATES {
                        if is_in(function, c) && !found.contains(&c) {
                            found.push(c);
                        }
                    }
                }
            }
        }
        found
    }

    /// The gateway component leaves every signature to its host (`verify-with-key`,
    /// `sign-as-client`, `sign-as-gateway`): it links no signature crate, while the
    /// bundle's gateway, which answers those calls itself, links them all (and the plugin
    /// services none).
    #[test]
    fn the_gateway_component_links_no_signature_code() {
        assert_eq!(
            signature_crates_in(crate::wasm::COMPONENT),
            Vec::<&str>::new()
        );
        assert_eq!(
            signature_crates_in(crate::tools::bundle::PLUGIN_SERVICES),
            Vec::<&str>::new()
        );
        let mut in_bundle = signature_crates_in(crate::tools::bundle::BUNDLE_GATEWAY);
        in_bundle.sort_unstable();
        let mut all = SIGNATURE_CRATES.to_vec();
        all.sort_unstable();
        assert_eq!(in_bundle, all);
    }
}
