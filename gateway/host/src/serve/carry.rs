//! Carrying out a decision, for both engines: the gateway's own answer, or the request
//! forwarded to the backend the decision chose (the body streamed and bounded, WebSocket
//! upgrades joined, the total deadline kept), the audit record completed with the backend's
//! answer and written, and the risk plugins told how the request ended. The native engine
//! decides in the host, the component engine in a gateway-component instance; what happens
//! after the decision is this module's, the same for both.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use portcullis_core::decision::{check_declared_length, problem};
use portcullis_core::{Config, Forward, Outcome, Reason};
use portcullis_driver::relay_headers;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::audit::Audited;
use crate::audit::traces::BackendCall;
use crate::bindings::DecisionRecord;
use crate::client::backends::BackendOutcome;
use crate::client::backends::full_body;
use crate::risk;
use crate::serve::Shared;

/// What the plugins were shown, per plugin (for `observe` once the backend answered).
pub type Shown = Vec<(usize, risk::RequestContext)>;

/// An audit record the forward completes: the core's (native engine) or the one a gateway
/// component returned with its decision.
pub trait ForwardAudit: Audited {
    /// The backend answered with `status`, its response head `latency` after the request
    /// was sent.
    fn backend_answered(&mut self, status: u16, latency: Duration);
    /// The decision forwarded, but the forward was refused for `reason`.
    fn refused_in_forward(&mut self, reason: Reason);
}

impl ForwardAudit for portcullis_core::AuditRecord {
    fn backend_answered(&mut self, status: u16, latency: Duration) {
        portcullis_driver::backend_answered(self, status, latency);
    }

    fn refused_in_forward(&mut self, reason: Reason) {
        portcullis_driver::refused_in_forward(self, reason);
    }
}

/// The same fields as [`portcullis_driver::backend_answered`] and
/// [`portcullis_driver::refused_in_forward`] set on the core's record.
impl ForwardAudit for DecisionRecord {
    fn backend_answered(&mut self, status: u16, latency: Duration) {
        self.backend_status = Some(status);
        self.backend_us = Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    fn refused_in_forward(&mut self, reason: Reason) {
        self.decision = "deny".to_owned();
        self.status = Some(reason.status().as_u16());
        self.reason = Some(reason.code().to_owned());
        self.phase = Some("forward".to_owned());
    }
}

/// Carries out `outcome` for `req`: answers, or forwards and relays the backend's
/// response; then tells the plugins in `assessed` the status the client got and writes
/// `audit` (with the backend calls made, for its trace).
#[allow(clippy::too_many_arguments)]
pub async fn carry_out<B, A: ForwardAudit>(
    shared: &Arc<Shared>,
    cfg: &Config,
    req: Request<B>,
    request_id: &str,
    started: SystemTime,
    outcome: Outcome,
    mut audit: A,
    assessed: Shown,
) -> Response<HyperOutgoingBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut calls = Vec::new();
    let (response, status) = match outcome {
        Outcome::Respond(r) => {
            let status = r.status.as_u16();
            (respond(&r), status)
        }
        Outcome::Forward(fwd) => {
            match forward(shared, cfg, req, &fwd, request_id, &mut calls).await {
                Ok((mut r, latency)) => {
                    relay_headers(r.headers_mut(), &fwd.response_headers);
                    if r.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        crate::serve::upgrade::set_fields(r.headers_mut());
                    }
                    let status = r.status().as_u16();
                    audit.backend_answered(status, latency);
                    (r, status)
                }
                Err(refusal) => {
                    audit.refused_in_forward(refusal.reason);
                    (respond(&refusal), refusal.status.as_u16())
                }
            }
        }
    };
    observe(shared, assessed, status);
    shared.audit.emit(audit, Some(started), &calls);
    response
}

/// Carries out the decision on a request whose body was read (the gateway's own form
/// endpoints): it is answered, never forwarded (this host does not forward a body it has
/// read: a decision to forward is refused as `route_not_found`).
pub fn answer_only<A: ForwardAudit>(
    shared: &Shared,
    request_id: &str,
    started: SystemTime,
    outcome: Outcome,
    mut audit: A,
) -> Response<HyperOutgoingBody> {
    let response = match outcome {
        Outcome::Respond(r) => r,
        Outcome::Forward(_) => {
            audit.refused_in_forward(Reason::RouteNotFound);
            problem(
                Reason::RouteNotFound,
                "no such gateway endpoint",
                request_id,
                &[],
            )
        }
    };
    shared.audit.emit(audit, Some(started), &[]);
    respond(&response)
}

/// Reads the form body of a request to the gateway's own endpoints, at most
/// [`portcullis_core::login::MAX_FORM_BODY`] bytes; the refusal to answer when it is larger
/// or incomplete.
pub async fn form_body<B>(body: B, request_id: &str) -> Result<Bytes, portcullis_core::Response>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, portcullis_core::login::MAX_FORM_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(problem(
            Reason::BodyTooLarge,
            "the form body is too large or incomplete",
            request_id,
            &[],
        )),
    }
}

/// Tells the plugins that assessed a request the status the client received (after the
/// response, off the request's path).
fn observe(shared: &Arc<Shared>, assessed: Shown, status: u16) {
    if assessed.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        for (id, ctx) in assessed {
            shared.risk.observe(id, &ctx, status).await;
        }
    });
}

/// Sends the request to the backend as decided: its response (the body streaming,
/// cut at the total deadline) and how long its head took, or the refusal to answer.
async fn forward<B>(
    shared: &Shared,
    cfg: &Config,
    req: Request<B>,
    fwd: &Forward,
    request_id: &str,
    calls: &mut Vec<BackendCall>,
) -> Result<(Response<HyperOutgoingBody>, Duration), portcullis_core::Response>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let refuse = |reason: Reason, detail: &str| problem(reason, detail, request_id, &[]);
    let backend = fwd.target(cfg).map_err(|(r, d)| refuse(r, &d))?;
    let max_body = cfg.limits.max_body_bytes;
    check_declared_length(req.headers(), max_body).map_err(|(r, d)| refuse(r, &d))?;
    let target: Uri = fwd
        .url(backend)
        .parse()
        .map_err(|_| refuse(Reason::InvalidRequest, "request target cannot be forwarded"))?;

    let mut req = req;
    let upgrade = crate::serve::upgrade::websocket(req.method(), req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + fwd.set_headers.len());
    for (name, value) in fwd.backend_headers(&parts.headers) {
        headers.append(name.clone(), value.clone());
    }
    if upgrade.is_some() {
        crate::serve::upgrade::set_fields(&mut headers);
    }
    let too_large = Arc::new(AtomicBool::new(false));
    let flag = too_large.clone();
    let body = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX))
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                flag.store(true, Ordering::Relaxed);
            }
            wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
        })
        .boxed_unsync();
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = target;
    *out.headers_mut() = headers;

    let timeouts = cfg.timeouts;
    let deadline = tokio::time::Instant::now() + timeouts.total;
    let head_wait = timeouts.response.min(timeouts.total);
    let mut call = shared.audit.traces.enabled().then(|| {
        BackendCall::new(
            out.method().as_str(),
            out.uri().authority().map_or("", |a| a.as_str()),
            shared.health.region_name(fwd.backend),
            out.headers(),
        )
    });
    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(
        head_wait,
        shared.client.for_backend(fwd.backend).request(out),
    )
    .await;
    let mut done = |outcome, status| {
        shared.backend_done(fwd.backend, started, outcome);
        if let Some(mut c) = call.take() {
            c.finish(outcome, status);
            calls.push(c);
        }
    };
    let response = match sent {
        Err(_) => {
            done(BackendOutcome::Timeout, None);
            return Err(refuse(
                Reason::BackendTimeout,
                &format!("the backend did not answer within {head_wait:?}"),
            ));
        }
        Ok(Err(_)) if too_large.load(Ordering::Relaxed) => {
            done(BackendOutcome::Other, None);
            return Err(refuse(
                Reason::BodyTooLarge,
                &format!("the body exceeds {max_body} bytes"),
            ));
        }
        Ok(Err(e)) => {
            let outcome = crate::client::backends::failure_outcome(&e);
            done(outcome, None);
            if outcome == BackendOutcome::Identity {
                return Err(refuse(
                    Reason::BackendIdentityMismatch,
                    "the backend's certificate is not the identity its region requires",
                ));
            }
            return Err(refuse(
                Reason::BackendUnavailable,
                &format!("the backend could not be reached: {e}"),
            ));
        }
        Ok(Ok(r)) => r,
    };
    let latency = started.elapsed();
    done(BackendOutcome::Answered, Some(response.status().as_u16()));
    let mut response = response;
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // A switch only the client asked for: the two connections are joined.
        let Some(client) = client_upgrade else {
            return Err(refuse(
                Reason::BackendUnavailable,
                "the backend switched protocols unasked",
            ));
        };
        let backend = hyper::upgrade::on(&mut response);
        let slot = parts
            .extensions
            .get::<crate::serve::listener::ConnectionSlot>()
            .cloned();
        crate::serve::upgrade::tunnel(client, backend, slot);
        let (head, _) = response.into_parts();
        return Ok((Response::from_parts(head, full_body(Bytes::new())), latency));
    }
    let (parts, body) = response.into_parts();
    // The total timeout covers the body too: past it the stream ends with an error
    // (the client sees a truncated response, never a silent hang).
    let body = DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
    }
    .boxed_unsync();
    Ok((Response::from_parts(parts, body), latency))
}

/// A backend response body cut off at the request's total deadline.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(
                Some("the backend exceeded the total timeout".into()),
            ))));
        }
        std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(wasmtime_wasi_http::Error::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A core response as an HTTP response.
pub fn respond(r: &portcullis_core::Response) -> Response<HyperOutgoingBody> {
    let mut out = Response::new(full_body(r.body.clone()));
    *out.status_mut() = r.status;
    for (name, value) in &r.headers {
        out.headers_mut().append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(record: &impl serde::Serialize) -> String {
        portcullis_driver::audit::json_line(record)
    }

    /// A component's record with the fields the core's default record has.
    fn component_record() -> DecisionRecord {
        DecisionRecord {
            time_ms: 0,
            request_id: String::new(),
            method: String::new(),
            host: None,
            path: "/a".into(),
            route: None,
            decision: "forward".into(),
            status: None,
            reason: None,
            phase: None,
            issuer: None,
            subject: None,
            region: None,
            backend: None,
            actor: None,
            risk: None,
            session: None,
            consent: Vec::new(),
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            backend_status: None,
            backend_us: None,
            phases: Vec::new(),
        }
    }

    /// Both engines' records say the same after the forward: the backend's answer, or the
    /// refusal that replaced it.
    #[test]
    fn a_forward_completes_both_engines_records_alike() {
        let core = || portcullis_core::AuditRecord {
            decision: "forward",
            path: "/a".into(),
            ..portcullis_core::AuditRecord::default()
        };

        let (mut native, mut component) = (core(), component_record());
        assert_eq!(line(&native), line(&component));
        native.backend_answered(201, Duration::from_micros(1500));
        component.backend_answered(201, Duration::from_micros(1500));
        assert_eq!(line(&native), line(&component));
        assert!(line(&component).contains(r#""backend_us":1500"#));

        let (mut native, mut component) = (core(), component_record());
        native.refused_in_forward(Reason::BackendTimeout);
        component.refused_in_forward(Reason::BackendTimeout);
        assert_eq!(line(&native), line(&component));
        assert!(line(&component).contains(r#""reason":"backend_timeout""#));
        assert!(line(&component).contains(r#""phase":"forward""#));
    }
}
