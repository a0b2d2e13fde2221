//! The host's outbound form POSTs: Turnstile-compatible site verification for challenges
//! answered through such a service (`[challenge.turnstile]`), and the OIDC token endpoint
//! calls of the login flow.

use std::net::IpAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use portcullis_core::config::SiteVerify;
use portcullis_core::{siteverify_body, siteverify_result};

use crate::client::backends::BackendClient;

/// Longest a verification may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read.
const MAX_ANSWER: usize = 64 << 10;

/// Asks `site.verify_url` whether `site_token` is genuine.
pub async fn verify(
    client: &BackendClient,
    site: &SiteVerify,
    site_token: &str,
    remote_ip: Option<IpAddr>,
) -> Result<bool, String> {
    let body = siteverify_body(&site.secret, site_token, remote_ip);
    let request = http::Request::post(&site.verify_url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(
            http_body_util::Full::new(bytes::Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| format!("siteverify request: {e}"))?;
    let call = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{}: {e}", site.verify_url))?;
        if !response.status().is_success() {
            return Err(format!(
                "{} answered {}",
                site.verify_url,
                response.status()
            ));
        }
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{}: {e}", site.verify_url))?
            .to_bytes();
        siteverify_result(&bytes)
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("{} did not answer in {TIMEOUT:?}", site.verify_url)))
}

/// POSTs a form to `issuer`'s `endpoint` (from its discovery document) for the login flow
/// of either engine.
pub async fn token_request(
    keys: &crate::keys::KeyService,
    client: &BackendClient,
    issuer: portcullis_core::IssuerId,
    endpoint: portcullis_core::ports::FormEndpoint,
    authorization: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), String> {
    let endpoints = keys
        .endpoints(issuer)
        .ok_or("the provider has not been discovered yet")?;
    let url = endpoint
        .url(&endpoints)
        .ok_or_else(|| format!("the provider offers no {} endpoint", endpoint.name()))?
        .to_owned();
    post_form(client, &url, authorization, body).await
}

/// POSTs a form to `url` (an OIDC token endpoint) with the `Authorization` header
/// `authorization` (none when it is empty): the status and at most [`portcullis_core::login::MAX_TOKEN_RESPONSE`]
/// bytes of body.
pub async fn post_form(
    client: &BackendClient,
    url: &str,
    authorization: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), String> {
    let mut request = http::Request::post(url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    // An empty `authorization`: the client authenticates in the body.
    if !authorization.is_empty() {
        request = request.header(http::header::AUTHORIZATION, authorization);
    }
    let request = request
        .body(
            http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| format!("token request: {e}"))?;
    let call = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(
            response.into_body(),
            portcullis_core::login::MAX_TOKEN_RESPONSE,
        )
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
        Ok((status, bytes.to_vec()))
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("{url} did not answer in {TIMEOUT:?}")))
}
