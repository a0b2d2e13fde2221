//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `POST /reload`.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::client::full_body;
use crate::serve::Shared;
use crate::serve::reload::Live;

/// What keeps the gateway from serving every route (`/readyz`): issuers whose keys cannot
/// be used (never loaded, or too stale) and an unreachable shared state, one line each.
async fn readiness(shared: &Shared) -> Result<(), String> {
    let mut missing = String::new();
    for issuer in shared.keys.unusable_issuers() {
        missing.push_str(&format!("key set of issuer `{issuer}` not usable\n"));
    }
    if let Err(e) = shared.state.store.ping().await {
        missing.push_str(&format!("shared state unreachable: {e}\n"));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// Serves `/healthz`, `/readyz` (200 `ready`, or 503 naming what is not), `/metrics`
/// and `POST /reload` (200 with the new generation, or 422 with why the running
/// configuration stays).
pub async fn serve_admin(live: Arc<Live>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let live = live.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let live = live.clone();
            async move {
                let shared = live.current().shared().clone();
                let (status, body, ctype) = match (req.method(), req.uri().path()) {
                    (&http::Method::POST, "/reload") => match live.reload("admin").await {
                        Ok(generation) => (
                            200,
                            format!("reloaded: generation {generation}\n"),
                            "text/plain",
                        ),
                        Err(why) => (
                            422,
                            format!("configuration refused; the running one stays:\n{why}\n"),
                            "text/plain",
                        ),
                    },
                    (_, path) => match path {
                        "/healthz" => (200, "ok\n".to_owned(), "text/plain"),
                        "/readyz" => match readiness(&shared).await {
                            Ok(()) => (200, "ready\n".to_owned(), "text/plain"),
                            Err(missing) => (503, missing, "text/plain"),
                        },
                        "/metrics" => (
                            200,
                            shared.metrics.render(|scrape| {
                                shared.keys.add_metrics(scrape);
                                shared.risk.add_metrics(scrape);
                                shared.state.store.add_metrics(scrape);
                                shared.audit.sink.add_metrics(scrape);
                                shared.audit.traces.add_metrics(scrape);
                                if let Some(tls) = &shared.tls {
                                    tls.add_metrics(scrape);
                                }
                                live.add_metrics(scrape);
                            }),
                            crate::metrics::CONTENT_TYPE,
                        ),
                        _ => (404, "not found\n".to_owned(), "text/plain"),
                    },
                };
                let mut r = Response::new(full_body(body));
                *r.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(ctype),
                );
                Ok::<_, Infallible>(r)
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
