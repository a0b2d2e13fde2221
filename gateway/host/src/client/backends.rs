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
        .enable_http1()
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
    /// Any other failure.
    Other,
}

/// Bytes of a body, for host-generated responses.
pub fn full_body(bytes: impl Into<Bytes>) -> wasmtime_wasi_http::p2::body::HyperOutgoingBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
