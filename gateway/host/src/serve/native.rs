//! The native engine: the host's fast path. The same `portcullis-core` decision the gateway
//! component makes, made natively in the host process — no per-request wasm instance, no
//! component boundary — with the same key sets, verified-token cache, plugin runtime,
//! backend allow-list, health, audit and metrics. Risk plugins still run sandboxed in
//! wasmtime. Decisions, reason codes and problem bodies are identical to the component's
//! (the end-to-end suites run against both engines).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use portcullis_core::authenticate::{AuthFailure, Authenticator};
use portcullis_core::config::PluginId;
use portcullis_core::decision::{check_declared_length, problem};
use portcullis_core::ports::{
    Answer, CallAnswer, CallOp, CallResult, Client, Need, State, StateAnswer, StateOp, StateResult,
    Suspended,
};
use portcullis_core::risk::{PluginAnswer, RiskAssessor, RiskContext};
use portcullis_core::{
    Adapters, BackendHealth, BackendId, Config, Forward, Gateway, IssuerId, Outcome, Progress,
    Reason, RequestParts, Timestamp, VerifiedIdentity,
};
use portcullis_driver::{
    Step, backend_answered, decide_refetching, decide_resuming, refused_in_forward, relay_headers,
};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::audit::traces::BackendCall;
use crate::client::backends::BackendOutcome;
use crate::client::backends::full_body;
use crate::keys;
use crate::risk;
use crate::serve::Shared;

/// The native engine.
pub struct NativeEngine {
    shared: Arc<Shared>,
    gateway: Gateway,
}

impl NativeEngine {
    /// An engine for `config` over the host's shared services.
    pub fn new(shared: Arc<Shared>, config: Config) -> Self {
        Self {
            shared,
            gateway: Gateway::new(config),
        }
    }

    /// Decides and carries out one request (the request id is already set).
    pub async fn handle<B>(
        &self,
        peer: SocketAddr,
        req: Request<B>,
        request_id: &str,
    ) -> Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(r) = portcullis_driver::early(&self.gateway, req.uri().path()) {
            return respond(&r);
        }
        let started = SystemTime::now();
        // The target as received (origin- or absolute-form): the core derives the
        // authority from it and the Host field (RFC 9112 §3.2).
        let uri = req.uri().clone();
        if self.gateway.wants_body(req.method(), uri.path()) {
            return self
                .handle_with_body(peer, req, &uri, request_id, started)
                .await;
        }
        let (decision, assessed) = {
            let parts = RequestParts {
                method: req.method(),
                uri: &uri,
                headers: req.headers(),
                request_id,
                peer: Some(peer.ip()),
                peer_hints: Default::default(),
                body: &[],
            };
            decide_refetching(
                || self.decide(&parts),
                |issuer| self.shared.keys.refetch_for_unknown_kid(issuer),
            )
            .await
        };
        let mut audit = decision.audit;
        let mut calls = Vec::new();
        let (response, status) = match decision.outcome {
            Outcome::Respond(r) => {
                let status = r.status.as_u16();
                (respond(&r), status)
            }
            Outcome::Forward(fwd) => match self.forward(req, &fwd, request_id, &mut calls).await {
                Ok((mut r, latency)) => {
                    relay_headers(r.headers_mut(), &fwd.response_headers);
                    if r.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        crate::serve::upgrade::set_fields(r.headers_mut());
                    }
                    let status = r.status().as_u16();
                    backend_answered(&mut audit, status, latency);
                    (r, status)
                }
                Err(refusal) => {
                    refused_in_forward(&mut audit, refusal.reason);
                    (respond(&refusal), refusal.status.as_u16())
                }
            },
        };
        if !assessed.is_empty() {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                for (id, ctx) in assessed {
                    shared.risk.observe(id, &ctx, status).await;
                }
            });
        }
        self.shared.audit.emit(audit, Some(started), &calls);
        response
    }

    /// The gateway's own endpoints that read a form body (back-channel logout): never
    /// forwarded.
    async fn handle_with_body<B>(
        &self,
        peer: SocketAddr,
        req: Request<B>,
        uri: &Uri,
        request_id: &str,
        started: SystemTime,
    ) -> Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, portcullis_core::login::MAX_FORM_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return respond(&problem(
                    Reason::BodyTooLarge,
                    "the form body is too large or incomplete",
                    request_id,
                    &[],
                ));
            }
        };
        let request = RequestParts {
            method: &parts.method,
            uri,
            headers: &parts.headers,
            request_id,
            peer: Some(peer.ip()),
            peer_hints: Default::default(),
            body: &body,
        };
        let (decision, _) = self.decide(&request).await;
        let mut audit = decision.audit;
        let response = match decision.outcome {
            Outcome::Respond(r) => r,
            Outcome::Forward(_) => {
                // The decision forwards what only a backend could answer: this host does
                // not forward a body it has read.
                refused_in_forward(&mut audit, Reason::RouteNotFound);
                problem(
                    Reason::RouteNotFound,
                    "no such gateway endpoint",
                    request_id,
                    &[],
                )
            }
        };
        self.shared.audit.emit(audit, Some(started), &[]);
        respond(&response)
    }

    /// Decides one request without carrying it out (`portcullis token verify --path`): the
    /// pipeline and services of [`NativeEngine::handle`], with its unknown-`kid` refetch.
    pub async fn decide_only(&self, parts: &RequestParts<'_>) -> portcullis_core::Decision {
        let (decision, _) = decide_refetching(
            || self.decide(parts),
            |issuer| self.shared.keys.refetch_for_unknown_kid(issuer),
        )
        .await;
        decision
    }

    /// Runs the core pipeline; returns the decision and what the plugins were shown. What
    /// the decision waits for (Redis, a provider's token endpoint, site verification) is
    /// awaited here, and the decision resumed: no worker thread is parked.
    async fn decide(
        &self,
        parts: &RequestParts<'_>,
    ) -> (
        portcullis_core::Decision,
        Vec<(usize, risk::RequestContext)>,
    ) {
        let now = keys::now();
        let clock = portcullis_driver::InstantClock::start();
        let shared = &self.shared;
        let step = |resume: Option<(Suspended, Answer)>| {
            let auth = NativeAuth { keys: &shared.keys };
            let risk = NativeRisk {
                shared,
                assessed: RefCell::new(Vec::new()),
            };
            let adapters = Adapters {
                auth: &auth,
                risk: &risk,
                state: &NativeState(shared),
                client: &NativeClient,
                health: &HostHealth(shared),
                entropy: &portcullis_driver::SystemEntropy,
                clock: &clock,
            };
            let progress = match resume {
                None => self.gateway.start(&adapters, parts, now),
                Some((waiting, answer)) => self.gateway.resume(&adapters, parts, waiting, answer),
            };
            match progress {
                Progress::Decided(d) => Step::Decided((d, risk.assessed.into_inner())),
                Progress::Waiting(w) => Step::Waiting(w),
            }
        };
        let shown = Mutex::new(Vec::new());
        let (decision, mut assessed) =
            // Boxed: a wait is the rare path, and its future (a Redis script, an HTTP call, a
            // plugin instance) is large; inline it would grow every request's future.
            decide_resuming(step, |need| Box::pin(perform(shared, need, &shown))).await;
        if let Ok(mut s) = shown.into_inner() {
            assessed.append(&mut s);
        }
        (decision, assessed)
    }

    /// Sends the request to the backend as decided: its response (the body streaming,
    /// cut at the total deadline) and how long its head took, or the refusal to answer.
    async fn forward<B>(
        &self,
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
        let cfg = self.gateway.config();
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
        let mut call = self.shared.audit.traces.enabled().then(|| {
            BackendCall::new(
                out.method().as_str(),
                out.uri().authority().map_or("", |a| a.as_str()),
                self.shared.health.region_name(fwd.backend),
                out.headers(),
            )
        });
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(
            head_wait,
            self.shared.client.for_backend(fwd.backend).request(out),
        )
        .await;
        let mut done = |outcome, status| {
            self.shared.backend_done(fwd.backend, started, outcome);
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

/// The core's refusal of a request without a usable authority (missing, repeated or invalid
/// `Host`), for hosts whose platform needs one before the core runs (a wasi:http request
/// cannot be made without it): the same rule and answer as the core's normalize phase.
pub(crate) fn host_refusal<B>(
    req: &Request<B>,
    request_id: &str,
) -> Option<portcullis_core::Response> {
    portcullis_core::request_authority(req.uri(), req.headers())
        .err()
        .map(|detail| problem(Reason::HostInvalid, &detail, request_id, &[]))
}

/// A core response as an HTTP response.
pub(crate) fn respond(r: &portcullis_core::Response) -> Response<HyperOutgoingBody> {
    let mut out = Response::new(full_body(r.body.clone()));
    *out.status_mut() = r.status;
    for (name, value) in &r.headers {
        out.headers_mut().append(name.clone(), value.clone());
    }
    out
}

/// Tokens verified by the host's key service (cache, then native crypto).
struct NativeAuth<'a> {
    keys: &'a keys::KeyService,
}

impl Authenticator for NativeAuth<'_> {
    fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        _now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        let (issuer, claims) = self.keys.authenticate_now(token, route_issuers)?;
        portcullis_core::authenticate::identity_from_claims_json(
            claims.as_bytes(),
            issuer,
            "cached",
        )
    }

    fn verify_with_key(
        &self,
        alg: portcullis_core::Algorithm,
        material: &portcullis_core::KeyMaterial,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        use portcullis_core::SignatureVerifier as _;
        let v = crate::keys::verifier::NativeVerifier;
        v.prepare(material)
            .is_ok_and(|k| v.verify(alg, &k, message, signature))
    }

    fn endpoints(
        &self,
        issuer: IssuerId,
    ) -> Result<portcullis_core::keyset::ProviderEndpoints, String> {
        self.keys
            .endpoints(issuer)
            .ok_or_else(|| portcullis_core::login::NOT_DISCOVERED_YET.to_owned())
    }

    fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: portcullis_core::authenticate::IssuedKind,
        _now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        self.keys.verify_issued(token, issuer, client_id, kind)
    }
}

/// The host's shared state as the core's state port: memory answers at once, Redis is
/// awaited by [`perform`] while the decision waits.
struct NativeState<'a>(&'a Shared);

impl State for NativeState<'_> {
    fn now(&self, op: &StateOp) -> Option<StateResult> {
        let answer = self.0.state.store.try_now(op)?;
        Some(state_answer(self.0, op, answer))
    }
}

/// Outbound calls through the host's HTTP client: always awaited by [`perform`].
struct NativeClient;

impl Client for NativeClient {
    fn now(&self, _: &CallOp) -> Option<CallResult> {
        None
    }
}

/// A store answer as the core reads it. A replay check the store cannot answer follows
/// `[state] on_unavailable` (see [`StateService::replay_policy`](crate::state::StateService::replay_policy)).
fn state_answer(
    shared: &Shared,
    op: &StateOp,
    answer: Result<StateAnswer, crate::state::StoreError>,
) -> StateResult {
    match (op, answer) {
        (_, Ok(a)) => Ok(a),
        (StateOp::FirstUse { .. }, Err(e)) => shared
            .state
            .replay_policy(Err(e))
            .map(StateAnswer::FirstUse),
        (_, Err(e)) => Err(e.to_string()),
    }
}

/// Performs what a decision waits for: a Redis operation, a call to a provider's token
/// endpoint or to a site-verification service, risk plugins (what they were shown goes to
/// `shown`).
async fn perform(shared: &Shared, need: Need, shown: &Mutex<Shown>) -> Answer {
    match need {
        // Signatures are checked natively inside `authenticate`: never asked for here.
        Need::Verify(_) => Answer::Verified(None),
        Need::Risk { plugins, ctx } => {
            let (answers, seen) = run_plugins(shared, &plugins, &ctx).await;
            if let Ok(mut s) = shown.lock() {
                s.extend(seen);
            }
            Answer::Risk(answers)
        }
        Need::State(op) => Answer::State(state_answer(
            shared,
            &op,
            shared.state.store.perform(&op).await,
        )),
        Need::Call(CallOp::Token {
            issuer,
            endpoint,
            authorization,
            body,
        }) => Answer::Call(
            shared
                .client
                .token_request(&shared.keys, issuer, endpoint, &authorization, &body)
                .await
                .map(|(status, body)| CallAnswer::Token { status, body }),
        ),
        Need::Call(CallOp::SiteVerify {
            site,
            site_token,
            remote_ip,
        }) => Answer::Call(
            crate::client::forms::verify(&shared.client.backends, &site, &site_token, remote_ip)
                .await
                .map(CallAnswer::SiteVerified),
        ),
    }
}

/// What the plugins were shown, per plugin (for `observe` once the backend answered).
type Shown = Vec<(usize, risk::RequestContext)>;

/// Risk plugins run by the host's plugin runtime. With the state in memory a plugin never
/// waits on I/O (its deadline is enforced by the epoch thread), so they run at once; with
/// Redis their state operations are round trips, so the decision waits and [`perform`]
/// runs them.
struct NativeRisk<'a> {
    shared: &'a Shared,
    assessed: RefCell<Shown>,
}

impl RiskAssessor for NativeRisk<'_> {
    fn now(&self, ids: &[PluginId], ctx: &RiskContext) -> Option<Vec<PluginAnswer>> {
        if !matches!(*self.shared.state.store, crate::state::Store::Memory(_)) {
            return None;
        }
        let (answers, shown) = futures::executor::block_on(run_plugins(self.shared, ids, ctx));
        self.assessed.borrow_mut().extend(shown);
        Some(answers)
    }
}

/// Runs `ids` in order on `ctx`, each shown only the headers it asked for.
async fn run_plugins(
    shared: &Shared,
    ids: &[PluginId],
    ctx: &RiskContext,
) -> (Vec<PluginAnswer>, Shown) {
    let base = risk::context(ctx, &ctx.client);
    let ids: Vec<usize> = ids.iter().map(|id| id.0).collect();
    let runs = shared.risk.run(&ids, &base).await;
    runs.into_iter()
        .map(|(answer, shown)| (answer.map(risk::to_core), shown))
        .unzip()
}

/// Backend health as the host observes it.
struct HostHealth<'a>(&'a Shared);

impl BackendHealth for HostHealth<'_> {
    fn is_healthy(&self, backend: BackendId) -> bool {
        self.0.health.is_healthy(backend)
    }
}
