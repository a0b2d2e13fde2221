//! The native engine: the host's fast path. The same `portcullis-core` decision the gateway
//! component makes, made natively in the host process — no per-request wasm instance, no
//! component boundary — with the same key sets, verified-token cache, plugin runtime,
//! backend allow-list, health, audit and metrics. Risk plugins still run sandboxed in
//! wasmtime. Decisions, reason codes and problem bodies are identical to the component's
//! (the end-to-end suites run against both engines), and both engines' decisions are
//! carried out by [`crate::serve::carry`].

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, Uri};
use portcullis_core::authenticate::{AuthFailure, Authenticator};
use portcullis_core::config::PluginId;
use portcullis_core::ports::{
    Answer, CallAnswer, CallOp, CallResult, Client, Need, State, StateAnswer, StateOp, StateResult,
    Suspended,
};
use portcullis_core::risk::{PluginAnswer, RiskAssessor, RiskContext};
use portcullis_core::{
    Adapters, BackendHealth, BackendId, Config, Gateway, IssuerId, Progress, RequestParts,
    Timestamp, VerifiedIdentity,
};
use portcullis_driver::{Step, decide_refetching, decide_resuming};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::keys;
use crate::risk;
use crate::serve::Shared;
use crate::serve::carry::{Shown, respond};

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
        crate::serve::carry::carry_out(
            &self.shared,
            self.gateway.config(),
            req,
            request_id,
            started,
            decision.outcome,
            decision.audit,
            assessed,
        )
        .await
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
        let body = match crate::serve::carry::form_body(body, request_id).await {
            Ok(b) => b,
            Err(refusal) => return respond(&refusal),
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
        crate::serve::carry::answer_only(
            &self.shared,
            request_id,
            started,
            decision.outcome,
            decision.audit,
        )
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
