//! A fast HTTP/1.1 backend for load tests: answers every request with a small fixed body,
//! on one thread (it shares a core with the gateway under test).
//!
//! `load-backend 127.0.0.1:PORT` (port 0: any free port); prints `listening on ADDR` once
//! bound.
#![allow(clippy::expect_used)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9301".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind the backend address");
    let bound = listener.local_addr().expect("the bound address");
    println!("listening on {bound}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"{\"ok\":true}\n",
                ))))
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
