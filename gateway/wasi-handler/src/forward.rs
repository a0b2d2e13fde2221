//! HTTP plumbing between wasi:http resources and the core's types: reading the incoming
//! request, answering, and forwarding with streamed bodies.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use portcullis_core::config::Config;
use portcullis_core::decision::problem;
use portcullis_core::{Forward, Reason, Response};
use portcullis_driver::{RequestHead, relay_headers};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, IncomingResponse, Method as WasiMethod,
    OutgoingBody, OutgoingRequest, OutgoingResponse, RequestOptions, ResponseOutparam, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// Splice chunk size.
const CHUNK: u64 = 64 * 1024;

/// Reads method, target (absolute-form when the request names an authority) and headers
/// of an incoming request; the request id is the host's `x-request-id`.
pub fn request_head(
    request: &IncomingRequest,
    peer: Option<std::net::IpAddr>,
) -> Result<RequestHead, String> {
    let method = match request.method() {
        WasiMethod::Get => Method::GET,
        WasiMethod::Head => Method::HEAD,
        WasiMethod::Post => Method::POST,
        WasiMethod::Put => Method::PUT,
        WasiMethod::Delete => Method::DELETE,
        WasiMethod::Connect => Method::CONNECT,
        WasiMethod::Options => Method::OPTIONS,
        WasiMethod::Trace => Method::TRACE,
        WasiMethod::Patch => Method::PATCH,
        WasiMethod::Other(m) => {
            Method::from_bytes(m.as_bytes()).map_err(|_| format!("bad method {m:?}"))?
        }
    };
    let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
    // The connection's scheme as the platform reports it (https where it terminated TLS).
    let scheme = match request.scheme() {
        Some(Scheme::Https) => "https",
        _ => "http",
    };
    let uri: Uri = match request.authority() {
        Some(authority) if !authority.is_empty() => format!("{scheme}://{authority}{path}").parse(),
        _ => path.parse(),
    }
    .map_err(|_| "request target is not a valid URI".to_owned())?;
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers().entries() {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name {name:?}"))?;
        let value = HeaderValue::from_bytes(&value).map_err(|_| format!("bad value for {name}"))?;
        headers.append(name, value);
    }
    // A plain wasi:http runtime assigns no request id: without one the client's, the
    // gateway makes its own (64 random bits).
    Ok(RequestHead::new(method, uri, headers, peer, || {
        format!("{:016x}", wasip2::random::random::get_random_u64())
    }))
}

/// Reads the whole body of `request`, at most `max` bytes (`None` when larger or broken).
pub fn read_body(request: &IncomingRequest, max: usize) -> Option<Vec<u8>> {
    let body = request.consume().ok()?;
    let stream = body.stream().ok()?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(8192) {
            Ok(chunk) => {
                out.extend_from_slice(&chunk);
                if out.len() > max {
                    return None;
                }
            }
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(_) => return None,
        }
    }
    drop(stream);
    Some(out)
}

/// Answers with a gateway response.
pub fn respond(out: ResponseOutparam, response: &Response) {
    let mut entries: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    entries.push((
        "content-length".into(),
        response.body.len().to_string().into_bytes(),
    ));
    let Ok(fields) = Fields::from_list(&entries) else {
        return;
    };
    let resp = OutgoingResponse::new(fields);
    if resp.set_status_code(response.status.as_u16()).is_err() {
        return;
    }
    let Ok(body) = resp.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(stream) = body.write() {
        for chunk in response.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(body, None);
}

/// Answers with the gateway's own error (`gateway_error`):
/// [`portcullis_driver::gateway_error`].
pub fn respond_error(
    out: ResponseOutparam,
    status: http::StatusCode,
    detail: &str,
    request_id: &str,
) {
    respond(
        out,
        &portcullis_driver::gateway_error(status, detail, request_id),
    );
}

/// Forwards the request as decided, streaming both bodies. Returns the status relayed and
/// how long the backend took to its response head, or the reason of the refusal it
/// answered with when the forward could not complete.
pub fn forward(
    config: &Config,
    request: IncomingRequest,
    parts: &RequestHead,
    fwd: &Forward,
    max_body: u64,
    out: ResponseOutparam,
) -> Result<(u16, std::time::Duration), Reason> {
    let refuse = |out: ResponseOutparam, reason: Reason, detail: &str| {
        respond(out, &problem(reason, detail, &parts.request_id, &[]));
        Err(reason)
    };
    let backend = match fwd.target(config) {
        Ok(b) => b,
        Err((reason, detail)) => return refuse(out, reason, &detail),
    };
    if let Err((reason, detail)) =
        portcullis_core::decision::check_declared_length(&parts.headers, max_body)
    {
        return refuse(out, reason, &detail);
    }

    let entries: Vec<(String, Vec<u8>)> = fwd
        .backend_headers(&parts.headers)
        .into_iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let Ok(fields) = Fields::from_list(&entries) else {
        return refuse(
            out,
            Reason::InvalidRequest,
            "request headers cannot be forwarded",
        );
    };
    let outgoing = OutgoingRequest::new(fields);
    let scheme = if backend.scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let method = to_wasi_method(&parts.method);
    if outgoing.set_method(&method).is_err()
        || outgoing.set_scheme(Some(&scheme)).is_err()
        || outgoing.set_authority(Some(&backend.authority)).is_err()
        || outgoing
            .set_path_with_query(Some(&fwd.path_and_query))
            .is_err()
    {
        return refuse(
            out,
            Reason::InvalidRequest,
            "request target cannot be forwarded",
        );
    }
    let Ok(out_body) = outgoing.body() else {
        return refuse(out, Reason::BackendUnavailable, "no request body");
    };
    let timeouts = config.timeouts;
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(duration_ns(timeouts.connect)));
    let _ = options.set_first_byte_timeout(Some(duration_ns(timeouts.response)));
    let _ = options.set_between_bytes_timeout(Some(duration_ns(timeouts.response)));
    let sent = std::time::Instant::now();
    let pending = match outgoing_handler::handle(outgoing, Some(options)) {
        Ok(p) => p,
        Err(e) => return refuse(out, failure_reason(&e), &describe(&e)),
    };

    // Stream the request body, counting against the limit.
    let Ok(in_body) = request.consume() else {
        return refuse(out, Reason::InvalidRequest, "request body unavailable");
    };
    let copied = match (in_body.stream(), out_body.write()) {
        (Ok(src), Ok(dst)) => {
            let r = splice(&src, &dst, max_body);
            drop(dst);
            drop(src);
            r
        }
        _ => Err(SpliceError::Io),
    };
    drop(in_body);
    match copied {
        Ok(_) => {
            if OutgoingBody::finish(out_body, None).is_err() {
                return refuse(
                    out,
                    Reason::BackendUnavailable,
                    "the backend refused the request body",
                );
            }
        }
        Err(SpliceError::TooLarge) => {
            drop(out_body); // unfinished: the backend sees an aborted request
            return refuse(
                out,
                Reason::BodyTooLarge,
                &format!("the body exceeds {max_body} bytes"),
            );
        }
        Err(SpliceError::Io) => {
            drop(out_body);
            return refuse(
                out,
                Reason::BackendUnavailable,
                "the request body could not be forwarded",
            );
        }
    }

    let response = loop {
        if let Some(r) = pending.get() {
            break r;
        }
        pending.subscribe().block();
    };
    let incoming = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return refuse(out, failure_reason(&e), &describe(&e)),
        Err(()) => return refuse(out, Reason::BackendUnavailable, "response already taken"),
    };
    let latency = sent.elapsed();
    Ok((
        relay(incoming, out, &fwd.response_headers, &parts.request_id),
        latency,
    ))
}

/// Sends the backend's response on, streaming its body; returns the status sent.
fn relay(
    incoming: IncomingResponse,
    out: ResponseOutparam,
    extra: &[(http::HeaderName, http::HeaderValue)],
    request_id: &str,
) -> u16 {
    let mut headers = HeaderMap::new();
    for (name, value) in incoming.headers().entries() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    relay_headers(&mut headers, extra);
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let Ok(fields) = Fields::from_list(&entries) else {
        respond_error(
            out,
            http::StatusCode::BAD_GATEWAY,
            "backend response headers are invalid",
            request_id,
        );
        return 502;
    };
    let status = incoming.status();
    let resp = OutgoingResponse::new(fields);
    let _ = resp.set_status_code(status);
    let Ok(body) = resp.body() else {
        return status;
    };
    ResponseOutparam::set(out, Ok(resp));
    let Ok(in_body) = incoming.consume() else {
        let _ = OutgoingBody::finish(body, None);
        return status;
    };
    if let (Ok(src), Ok(dst)) = (in_body.stream(), body.write()) {
        let _ = splice(&src, &dst, u64::MAX);
        drop(dst);
        drop(src);
    }
    // The backend's trailers (gRPC's status) follow the body to the client. A gRPC
    // "trailers-only" answer (its status in the only header block) cannot stay one here:
    // wasi:http sends the headers before it knows the body is empty, and gRPC clients then
    // look for the status in trailers, so it is repeated there.
    let trailers = trailers_of(in_body).or_else(|| grpc_status_trailers(&headers));
    let _ = OutgoingBody::finish(body, trailers);
    status
}

/// gRPC's status fields of a trailers-only answer's headers, as trailers.
fn grpc_status_trailers(headers: &HeaderMap) -> Option<Fields> {
    headers.get("grpc-status")?;
    let entries: Vec<(String, Vec<u8>)> =
        ["grpc-status", "grpc-message", "grpc-status-details-bin"]
            .iter()
            .filter_map(|n| {
                headers
                    .get(*n)
                    .map(|v| ((*n).to_owned(), v.as_bytes().to_vec()))
            })
            .collect();
    Fields::from_list(&entries).ok()
}

/// The trailers after a body that has been read to its end, if it had any.
fn trailers_of(body: IncomingBody) -> Option<Fields> {
    let future = IncomingBody::finish(body);
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(trailers))) => trailers,
        _ => None,
    }
}

enum SpliceError {
    TooLarge,
    Io,
}

fn splice(src: &InputStream, dst: &OutputStream, max: u64) -> Result<u64, SpliceError> {
    let mut total: u64 = 0;
    loop {
        match dst.blocking_splice(src, CHUNK) {
            Ok(n) => {
                total = total.saturating_add(n);
                if total > max {
                    return Err(SpliceError::TooLarge);
                }
            }
            Err(StreamError::Closed) => return Ok(total),
            Err(StreamError::LastOperationFailed(_)) => return Err(SpliceError::Io),
        }
    }
}

fn to_wasi_method(m: &Method) -> WasiMethod {
    match *m {
        Method::GET => WasiMethod::Get,
        Method::HEAD => WasiMethod::Head,
        Method::POST => WasiMethod::Post,
        Method::PUT => WasiMethod::Put,
        Method::DELETE => WasiMethod::Delete,
        Method::CONNECT => WasiMethod::Connect,
        Method::OPTIONS => WasiMethod::Options,
        Method::TRACE => WasiMethod::Trace,
        Method::PATCH => WasiMethod::Patch,
        ref other => WasiMethod::Other(other.as_str().to_owned()),
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// 504 `backend_timeout` for a backend that took too long, 502 `backend_identity_mismatch`
/// for one whose certificate the host refused, 503 `backend_unavailable` for one that could
/// not be reached or failed.
fn failure_reason(e: &ErrorCode) -> Reason {
    match e {
        ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::ConnectionWriteTimeout => Reason::BackendTimeout,
        // The host refused the backend's certificate ([region.NAME.tls]).
        ErrorCode::TlsCertificateError => Reason::BackendIdentityMismatch,
        _ => Reason::BackendUnavailable,
    }
}

fn describe(e: &ErrorCode) -> String {
    format!("backend error: {e:?}")
}
