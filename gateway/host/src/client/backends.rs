//! The pooled HTTP(S) client the host reaches backends and providers with.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wasmtime_wasi_http::WasiBody;

/// An HTTP(S) client for backends (pooled connections).
pub type BackendClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, WasiBody>;

/// A pooled backend client.
pub fn backend_client(connect_timeout: Duration) -> BackendClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        // HTTP/2 where a TLS backend offers it by ALPN (gRPC); HTTP/1.1 otherwise.
        .enable_all_versions()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(https)
}

/// How a call to a backend ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendOutcome {
    /// Its response head arrived.
    Answered,
    /// No response head within the timeout.
    Timeout,
    /// The connection failed: nothing was sent.
    Connect,
    /// This host could not open a connection (out of descriptors, buffers or memory):
    /// nothing was sent, and the backend is not to blame.
    Local,
    /// The backend's certificate failed the region's checks (`[region.NAME.tls]`): nothing
    /// was sent.
    Identity,
    /// Any other failure.
    Other,
}

/// Drops the fields a backend's response lists in its `Connection` field (RFC 9110 §7.6.1)
/// before the response is handed to a `wasi:http` guest: `wasi:http` withholds `Connection`
/// itself (a forbidden field), so the guest could not tell which fields it listed, and a
/// field meant for this one connection would reach the client.
pub fn drop_connection_listed<B>(response: &mut http::Response<B>) {
    for name in portcullis_core::decision::connection_listed(response.headers()) {
        response.headers_mut().remove(name.as_str());
    }
}

/// Bytes of a body, for host-generated responses.
pub fn full_body(bytes: impl Into<Bytes>) -> wasmtime_wasi_http::p2::body::HyperOutgoingBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// How a call that failed before any answer ended: `Identity` when the backend's
/// certificate failed its region's checks, `Local` when this host could not open a
/// socket (EMFILE, ENFILE, ENOBUFS, ENOMEM anywhere in the error's chain), `Connect` for any
/// other connection failure, `Other` otherwise.
pub fn failure_outcome(e: &hyper_util::client::legacy::Error) -> BackendOutcome {
    if !e.is_connect() {
        return BackendOutcome::Other;
    }
    if is_identity_failure(e) {
        return BackendOutcome::Identity;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|code| {
                [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM].contains(&code)
            })
        {
            return BackendOutcome::Local;
        }
        cause = c.source();
    }
    BackendOutcome::Connect
}

/// Whether `e` (anywhere in its chain, inside `io::Error`s too) is a certificate a TLS
/// verifier refused (`[region.NAME.tls]`, see [`super::attest`]).
fn is_identity_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(tokio_rustls::rustls::Error::InvalidCertificate(_)) =
            c.downcast_ref::<tokio_rustls::rustls::Error>()
        {
            return true;
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && is_identity_failure(inner)
        {
            return true;
        }
        cause = c.source();
    }
    false
}
