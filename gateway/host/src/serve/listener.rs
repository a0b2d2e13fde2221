//! The front-door listener both servers (`serve`, `serve-wasm`) use: plain HTTP/1.1 or TLS
//! with HTTP/2 and HTTP/1.1 by ALPN, bounded connections,
//! a header-read timeout (slow-loris), an idle timeout for keep-alive connections, and an
//! accept loop that backs off when `accept()` fails (descriptors exhausted) instead of
//! spinning a core.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;

use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use portcullis_core::config::ServerLimits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::tls::TlsFront;

/// The longest pause between failed `accept()` calls.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// The first pause after a failed `accept()`.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// Serves connections from `listener` until `shutdown` resolves: at most
/// `limits.max_connections` at once (further clients wait in the kernel's backlog), each
/// closed when its request headers (or, with `tls`, its handshake) take longer than
/// `limits.header_timeout` or when it sits idle (no request in flight, no bytes either
/// way) for `limits.idle_timeout`. Without `tls` it speaks HTTP/1.1; with it, HTTP/2 or
/// HTTP/1.1 as ALPN chose. `make_service(peer, secure)` makes each connection's service.
/// Connections are registered with `graceful` for draining.
pub async fn serve<S, F, B>(
    listener: TcpListener,
    limits: ServerLimits,
    tls: Option<Arc<TlsFront>>,
    shutdown: impl Future<Output = ()>,
    graceful: &GracefulShutdown,
    make_service: F,
) where
    F: Fn(SocketAddr, bool) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = FIRST_ACCEPT_BACKOFF;
    if let Some(tls) = &tls {
        tls.start_watching();
    }
    tokio::pin!(shutdown);
    loop {
        let next = async {
            // A closed semaphore never happens (we never close it); treat it as no slot.
            let permit = slots.clone().acquire_owned().await.ok();
            (permit, listener.accept().await)
        };
        let (permit, accepted) = tokio::select! {
            got = next => got,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = FIRST_ACCEPT_BACKOFF;
                a
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: retrying at once would spin; wait, doubling.
                tracing::warn!(error = %e, pause_ms = backoff.as_millis(), "accept failed; backing off");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let tracked = Tracked {
            inner: stream,
            activity: activity.clone(),
        };
        let permit = Arc::new(permit);
        let service = Counted {
            inner: make_service(peer, tls.is_some()),
            activity: activity.clone(),
            secure: tls.is_some(),
            slot: ConnectionSlot {
                activity: activity.clone(),
                _permit: permit.clone(),
                idle: limits.idle_timeout,
            },
        };
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let served = async {
                let Some(tls) = tls else {
                    return serve_io(tracked, false, limits, service, watcher).await;
                };
                let accepted =
                    tokio::time::timeout(limits.header_timeout, tls.acceptor().accept(tracked))
                        .await;
                let stream = match accepted {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return Ok(());
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return Ok(());
                    }
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(super::tls::H2);
                serve_io(stream, h2, limits, service, watcher).await
            };
            tokio::select! {
                ended = served => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = activity.idle_for(limits.idle_timeout) => {
                    tracing::debug!(%peer, "idle connection closed");
                }
            }
        });
    }
}

/// Streams one HTTP/2 client may have open at once.
const MAX_H2_STREAMS: u32 = 128;

/// Serves one connection: HTTP/2 when `h2` (ALPN chose it), else HTTP/1.1 with the
/// header-read timeout and keep-alive; upgrades (WebSocket) are handed to the service.
async fn serve_io<I, S, B>(
    io: I,
    h2: bool,
    limits: ServerLimits,
    service: Counted<S>,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS);
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    watcher
        .watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service))
        .await
}

/// What a request that upgrades its connection (WebSocket) keeps of it once the tunnel
/// runs: the connection's slot among `max_connections`, and its idle timeout.
#[derive(Clone)]
pub struct ConnectionSlot {
    activity: Arc<Activity>,
    _permit: Arc<Option<OwnedSemaphorePermit>>,
    idle: Duration,
}

impl ConnectionSlot {
    /// Resolves once no byte has moved on the client's connection for the idle timeout.
    pub async fn idle(&self) {
        self.activity.idle_for(self.idle).await;
    }
}

/// The request as the connection carried it: its target's scheme is the connection's
/// (`https` over TLS, `http` otherwise), whatever an absolute-form target or an HTTP/2
/// `:scheme` claimed; an origin-form target over TLS becomes absolute-form with the `Host`
/// field's authority when that is a valid one (otherwise it stays, and the core refuses
/// the Host as it would without TLS).
pub fn with_connection_scheme<B>(mut req: Request<B>, secure: bool) -> Request<B> {
    let scheme = if secure {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    let uri = req.uri();
    if uri.scheme() == Some(&scheme) {
        return req;
    }
    let authority = match uri.authority() {
        Some(a) => Some(a.clone()),
        None if secure => {
            let mut hosts = req.headers().get_all(http::header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(h), None) => h
                    .to_str()
                    .ok()
                    .filter(|h| portcullis_core::Authority::parse(h).is_ok())
                    .and_then(|h| http::uri::Authority::try_from(h).ok()),
                _ => None,
            }
        }
        None => None,
    };
    let Some(authority) = authority else {
        return req;
    };
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req
}

/// When a connection last moved bytes, and how many of its requests are in flight.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no request has been in flight and no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.started.elapsed().saturating_sub(last);
            if self.in_flight.load(Ordering::Relaxed) == 0 && quiet >= limit {
                return;
            }
            let wait = if quiet >= limit { limit } else { limit - quiet };
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }
}

/// A socket that records activity on every read and write.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A service that counts its requests in flight (a connection waiting on a slow backend
/// is not idle) and gives each request its connection's scheme.
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
    secure: bool,
    slot: ConnectionSlot,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let activity = self.activity.clone();
        let mut req = with_connection_scheme(req, self.secure);
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(self.slot.clone());
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            activity.touch();
            activity.in_flight.fetch_sub(1, Ordering::Relaxed);
            out
        })
    }
}
