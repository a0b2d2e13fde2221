//! Backends that must prove who they are (`[region.NAME.tls]`): each such region gets a
//! client of its own whose TLS verifier checks, during the handshake and so before any byte
//! of a request is written, that the backend's certificate chains to the region's CA (or
//! the public roots), carries the expected identity (the URL's host, a configured DNS name,
//! or a SPIFFE ID as its URI SAN) and, with `pins`, holds one of the pinned keys. The
//! gateway presents the region's client certificate (mTLS) when one is configured. A
//! failed check is [`BackendOutcome::Identity`]: 502 `backend_identity_mismatch`
//! ([`super::backends::failure_outcome`] tells it).
//!
//! [`BackendOutcome::Identity`]: crate::client::BackendOutcome::Identity

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_core::config::{BackendIdentity, BackendTls, Config};
use sha2::Digest as _;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use tokio_rustls::rustls::crypto::{
    WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use super::BackendClient;

/// A client per region: `Some` for regions with `[region.NAME.tls]`.
pub fn region_clients(
    config: &Config,
    base: &Path,
    connect_timeout: Duration,
) -> anyhow::Result<Vec<Option<BackendClient>>> {
    config
        .regions
        .iter()
        .map(|r| {
            r.tls
                .as_ref()
                .map(|tls| {
                    client(tls, base, connect_timeout)
                        .with_context(|| format!("region.{}.tls", r.name))
                })
                .transpose()
        })
        .collect()
}

fn client(
    tls: &BackendTls,
    base: &Path,
    connect_timeout: Duration,
) -> anyhow::Result<BackendClient> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            let path = base.join(ca);
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                .and_then(Iterator::collect)
                .map_err(|e| anyhow!("ca {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(anyhow!("ca {}: no usable CA certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let verifier = Arc::new(Attesting {
        roots: Arc::new(roots),
        identity: match &tls.identity {
            BackendIdentity::UrlHost => Expect::UrlHost,
            BackendIdentity::DnsName(n) => Expect::Dns(
                ServerName::try_from(n.clone()).map_err(|e| anyhow!("server_name {n:?}: {e}"))?,
            ),
            BackendIdentity::Spiffe(id) => Expect::Spiffe(id.clone()),
        },
        pins: tls.pins.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &tls.client {
        Some((cert, key)) => {
            let (cert, key) = (base.join(cert), base.join(key));
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
                .and_then(Iterator::collect)
                .map_err(|e| anyhow!("client_cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| anyhow!("client_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| anyhow!("client_cert and client_key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(https))
}

/// The identity a region's backends must carry.
#[derive(Debug)]
enum Expect {
    UrlHost,
    Dns(ServerName<'static>),
    Spiffe(String),
}

/// The region's certificate checks, made during the handshake.
#[derive(Debug)]
struct Attesting {
    roots: Arc<RootCertStore>,
    identity: Expect,
    pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Attesting {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match &self.identity {
            Expect::UrlHost => verify_server_name(&cert, server_name)?,
            Expect::Dns(name) => verify_server_name(&cert, name)?,
            Expect::Spiffe(id) => {
                let ee = webpki::EndEntityCert::try_from(end_entity)
                    .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
                if !ee.valid_uri_names().any(|uri| uri == id) {
                    return Err(Error::InvalidCertificate(CertificateError::Other(
                        tokio_rustls::rustls::OtherError(Arc::new(Mismatch(format!(
                            "the certificate is not the SVID of {id}"
                        )))),
                    )));
                }
            }
        }
        if !self.pins.is_empty() {
            let ee = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
            let digest: [u8; 32] =
                sha2::Sha256::digest(ee.subject_public_key_info().as_ref()).into();
            if !self.pins.contains(&digest) {
                return Err(Error::InvalidCertificate(CertificateError::Other(
                    tokio_rustls::rustls::OtherError(Arc::new(Mismatch(
                        "the certificate's key is none of the pinned keys".into(),
                    ))),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// An identity check that failed.
#[derive(Debug)]
struct Mismatch(String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Mismatch {}
