//! The Workers fetch handler: one isolate-wide gateway (configuration, key sets, imported
//! WebCrypto keys, risk plugins), and per request: key sets refreshed when due, the core's
//! decision (which waits while WebCrypto checks the token's signature), and the forward or
//! the answer.

use std::cell::RefCell;
use std::rc::Rc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use js_sys::{Reflect, Uint8Array};
use portcullis_core::authenticate::LocalAuthenticator;
use portcullis_core::config::FailPolicy;
use portcullis_core::decision::problem;
use portcullis_core::keyset::FetchRequest;
use portcullis_core::ports::{
    CallOp, CallResult, Client, State, StateAnswer, StateOp, StateResult,
};
use portcullis_core::{
    Adapters, AllHealthy, Answer, Config, Forward, Gateway, KeyStore, Need, Outcome, PeerHints,
    Progress, Reason, Response as CoreResponse, Suspended, Timestamp,
};
use portcullis_driver::keycache::{self, StoredDocument, store_key};
use portcullis_driver::keys::{Document, DocumentSource, Refreshed};
use portcullis_driver::token_cache::{CachedAuthenticator, RequestTokens, TokenCache};
use portcullis_driver::{
    RequestHead, Step, SystemEntropy, backend_answered, decide_refetching, decide_resuming, early,
    gateway_error, refused_in_forward, relay_removals,
};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::{Context, Env, Fetch, event};

use crate::plugins::{Unusable, WorkerPlugins};
use crate::verifier::{WebKey, WorkerVerifier};
use crate::webcrypto::KeyCache;

/// The binding that holds the configuration snapshot (`portcullis snapshot`), base64url.
pub const SNAPSHOT_BINDING: &str = "PORTCULLIS_SNAPSHOT";

/// The binding that chooses the signature path: `webcrypto` (the default) or `portable`
/// (pure Rust in wasm, for comparison).
pub const VERIFY_BINDING: &str = "PORTCULLIS_VERIFY";

/// Everything an isolate keeps between requests.
struct Isolate {
    gateway: Gateway,
    verifier: WorkerVerifier,
    keys: RefCell<KeyStore<WebKey>>,
    imported: KeyCache,
    /// Verified access tokens (`[state] verified_token_cache`, on by default).
    tokens: Option<TokenCache>,
    plugins: WorkerPlugins,
    requests: std::cell::Cell<u64>,
    /// The Durable Object namespace for the shared state is bound.
    shared_state: bool,
}

thread_local! {
    static ISOLATE: RefCell<Option<Rc<Isolate>>> = const { RefCell::new(None) };
}

fn load(env: &Env) -> Result<Rc<Isolate>, String> {
    if let Some(i) = ISOLATE.with(|c| c.borrow().clone()) {
        return Ok(i);
    }
    let text = env
        .secret(SNAPSHOT_BINDING)
        .map(|s| s.to_string())
        .or_else(|_| env.var(SNAPSHOT_BINDING).map(|v| v.to_string()))
        .map_err(|_| {
            format!("no `{SNAPSHOT_BINDING}` binding (make one with `portcullis snapshot`)")
        })?;
    let bytes = portcullis_core::b64::decode(text.trim())
        .ok_or_else(|| format!("`{SNAPSHOT_BINDING}` is not base64url"))?;
    let config = Config::from_snapshot(&bytes)?;
    let plugins = WorkerPlugins::new(&config);
    // A plugin that refuses its configuration, or whose deployed component is not the
    // configured file, stops the gateway, as at host start-up; one that nothing serves
    // answers with failures (`on_error` decides).
    for (name, why) in plugins.unusable() {
        match why {
            Unusable::Refused(why) => return Err(format!("plugin {name}: {why}")),
            Unusable::NotLinked(why) => worker::console_warn!("plugin {name}: {why}"),
        }
    }
    let webcrypto = match env.var(VERIFY_BINDING).map(|v| v.to_string()) {
        Err(_) => true,
        Ok(v) if v == "webcrypto" => true,
        Ok(v) if v == "portable" => false,
        Ok(v) => {
            return Err(format!(
                "`{VERIFY_BINDING}` must be `webcrypto` or `portable`, not {v:?}"
            ));
        }
    };
    let verifier = WorkerVerifier::new(webcrypto);
    let keys = KeyStore::new(&config, &verifier);
    let tokens = config
        .state
        .verified_token_cache
        .then(|| TokenCache::new(portcullis_driver::token_cache::DEFAULT_CAPACITY));
    let isolate = Rc::new(Isolate {
        gateway: Gateway::new(config),
        verifier,
        keys: RefCell::new(keys),
        imported: KeyCache::default(),
        tokens,
        plugins,
        requests: std::cell::Cell::new(0),
        shared_state: env.durable_object(crate::durable::STATE_BINDING).is_ok(),
    });
    ISOLATE.with(|c| *c.borrow_mut() = Some(isolate.clone()));
    Ok(isolate)
}

fn now() -> Timestamp {
    // Date.now() in milliseconds (workers freeze it during a request; precise enough).
    let ms = js_sys::Date::now().max(0.0) as u64;
    Timestamp::from_duration(std::time::Duration::from_millis(ms))
}

/// Key-set documents over the Fetch API, shared between isolates through the state's
/// Durable Objects when bound: an isolate uses a copy another one stored while it is fresh
/// by its own `Cache-Control` (a refetch for an unknown `kid` always asks the issuer).
struct FetchDocuments<'a> {
    now: Timestamp,
    /// The environment, when the shared state is bound.
    shared: Option<&'a Env>,
    config: &'a Config,
}

impl DocumentSource for FetchDocuments<'_> {
    async fn fetch(&self, request: &FetchRequest) -> Result<Document, String> {
        let now_ms = self.now.unix_millis();
        let policy = keycache::policy(self.config, request);
        let key = store_key(&request.url);
        if let Some(env) = self.shared
            && let Ok(StateAnswer::Value(Some(bytes))) =
                crate::objects::perform(env, StateOp::Get { key: key.clone() }).await
            && let Some(copy) = keycache::usable_copy(&bytes, request, &policy, now_ms)
        {
            return Ok(copy);
        }
        let url = worker::Url::parse(&request.url).map_err(|e| format!("{}: {e}", request.url))?;
        let mut resp = Fetch::Url(url)
            .send()
            .await
            .map_err(|e| format!("fetching {}: {e}", request.url))?;
        let status = resp.status_code();
        let cache_control = resp.headers().get("cache-control").ok().flatten();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading {}: {e}", request.url))?;
        let stored = StoredDocument {
            fetched_ms: now_ms,
            status,
            cache_control,
            body,
        };
        if let Some(env) = self.shared
            && let Some(ttl) = stored.shared_for(&policy)
        {
            let op = StateOp::Set {
                key,
                value: stored.to_bytes(),
                ttl,
            };
            // Shared with the other isolates; a failed write only costs them a fetch.
            let _ = crate::objects::perform(env, op).await;
        }
        Ok(stored.into_document())
    }
}

/// Fetches every key-set document that is due (discovery first, then its `jwks_uri`).
async fn refresh_keys(isolate: &Isolate, env: &Env, now: Timestamp) {
    let report = |request: &FetchRequest, outcome: &Refreshed| match outcome {
        Refreshed::Loaded => {}
        Refreshed::Rejected(e) => worker::console_warn!("key set {}: {e}", request.url),
        Refreshed::Unreachable(e) => worker::console_warn!("key set: {e}"),
    };
    let source = FetchDocuments {
        now,
        shared: isolate.shared_state.then_some(env),
        config: isolate.gateway.config(),
    };
    portcullis_driver::keys::refresh(&isolate.keys, &isolate.verifier, &source, || now, report)
        .await;
}

/// Performs what a decision waits for on a Worker: a WebCrypto signature check, a
/// shared-state operation on the Durable Objects, an outbound call with the Fetch API.
/// (Plugins answer at once: linked crates and deployed components are both synchronous.)
async fn perform(isolate: &Isolate, env: &Env, need: Need) -> Answer {
    match need {
        Need::Verify(check) => Answer::Verified(isolate.imported.verify(&check).await),
        Need::State(op) => {
            let first_use = matches!(op, StateOp::FirstUse { .. });
            let answer = crate::objects::perform(env, op).await;
            // A replay check while the objects cannot be reached: `[state] on_unavailable`
            // decides, as on the host (under "allow" the value counts as new).
            let allow = isolate.gateway.config().state.on_unavailable == FailPolicy::Allow;
            Answer::State(match answer {
                Err(e) if first_use && allow => {
                    worker::console_warn!("replay check failed: state unavailable: {e}");
                    Ok(StateAnswer::FirstUse(true))
                }
                other => other,
            })
        }
        Need::Call(op) => Answer::Call(crate::calls::perform(&isolate.keys, op).await),
        other => Answer::failed(&other, "this worker cannot wait for it"),
    }
}

/// The ports the worker answers asynchronously: every operation waits (the decision
/// suspends and [`perform`] carries it out).
struct Awaited;

impl State for Awaited {
    fn now(&self, _op: &StateOp) -> Option<StateResult> {
        None
    }
}

impl Client for Awaited {
    fn now(&self, _op: &CallOp) -> Option<CallResult> {
        None
    }
}

/// The request head. On Cloudflare (the request carries its `cf` object) the edge sets
/// CF-Connecting-IP to the address it accepted the connection from, replacing any value
/// the client sent: that is the peer. Elsewhere (workerd without a cf blob) the header is
/// the client's own claim, and the peer stays unknown. Read straight from the platform's
/// request (no `worker::Request` in between, which would copy the URL and read `cf` for
/// nothing), and `cf` only when the header is there.
fn head(req: &web_sys::Request, serial: u64) -> Result<RequestHead, (Reason, String)> {
    let invalid = |m: String| (Reason::InvalidRequest, m);
    let method = Method::from_bytes(req.method().as_bytes())
        .map_err(|_| invalid("bad method".to_owned()))?;
    let mut headers = HeaderMap::new();
    let fields =
        header_fields(&req.headers()).ok_or_else(|| invalid("unreadable header fields".into()))?;
    for (name, value) in fields {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("bad header name {name:?}")))?;
        for part in crate::headers::split_joined(name.as_str(), &value) {
            let value = HeaderValue::from_str(part)
                .map_err(|_| invalid(format!("bad value for {name}")))?;
            headers.append(name.clone(), value);
        }
    }
    // workerd builds the URL from the Host field (joining repeated ones): when it does not
    // parse, the core's authority rule says why, with the core's answer (`host_invalid`).
    let uri: Uri = req.url().parse().map_err(|_| {
        match portcullis_core::request_authority(&Uri::from_static("/"), &headers) {
            Err(detail) => (Reason::HostInvalid, detail),
            Ok(_) => invalid("request target is not a valid URI".to_owned()),
        }
    })?;
    // The id the client or Cloudflare gave, else the isolate's own; the backend sees the
    // one chosen.
    let given = given_request_id(|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let request_id = portcullis_driver::assign_request_id(&mut headers, || {
        given.unwrap_or_else(|| format!("w{serial:x}-{:x}", js_sys::Date::now() as u64))
    });
    let (peer, peer_hints) = match headers
        .get("cf-connecting-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
    {
        Some(ip) => match cf_object(req) {
            Some(cf) => (Some(ip), cf_hints(&cf)),
            None => (None, PeerHints::default()),
        },
        None => (None, PeerHints::default()),
    };
    Ok(RequestHead {
        method,
        uri,
        headers,
        request_id,
        peer,
        peer_hints,
    })
}

/// The request id the client or Cloudflare gave, when the gateway keeps it: the client's
/// `X-Request-Id`, else Cloudflare's `CF-Ray`, each under the driver's rule
/// ([`portcullis_driver::keeps_request_id`]); `field` reads a field by its name.
fn given_request_id(field: impl Fn(&str) -> Option<String>) -> Option<String> {
    ["x-request-id", "cf-ray"]
        .into_iter()
        .find_map(|name| field(name).filter(|id| portcullis_driver::keeps_request_id(id)))
}

/// The fields of a `Headers` object, in its order (names lower-case, repeated fields
/// joined with `", "` as the Fetch API joins them), read in one crossing: JSON of
/// `Array.from(headers)`, instead of three calls into JavaScript per field.
fn header_fields(headers: &web_sys::Headers) -> Option<Vec<(String, String)>> {
    let text = js_sys::JSON::stringify(&js_sys::Array::from(headers)).ok()?;
    serde_json::from_str(&text.as_string()?).ok()
}

/// The request's `cf` object: present on Cloudflare, absent under a plain workerd.
fn cf_object(req: &web_sys::Request) -> Option<JsValue> {
    Reflect::get(req, &JsValue::from_str("cf"))
        .ok()
        .filter(JsValue::is_object)
}

/// Cloudflare's own country, AS number and location of the connecting client
/// (`request.cf.country`, `asn`, `latitude`, `longitude`), read field by field: a missing
/// or ill-typed one is simply unknown.
fn cf_hints(cf: &JsValue) -> PeerHints {
    let field = |name: &str| Reflect::get(cf, &JsValue::from_str(name)).ok();
    let country = field("country")
        .and_then(|v| v.as_string())
        .and_then(|c| <[u8; 2]>::try_from(c.as_bytes()).ok());
    let asn = field("asn")
        .and_then(|v| v.as_f64())
        .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX))
        .map(|n| n as u32);
    // Strings in `cf` (`"48.86010"`), as Cloudflare documents them.
    let location = field("latitude")
        .and_then(|v| v.as_string())
        .zip(field("longitude").and_then(|v| v.as_string()))
        .and_then(|(lat, lon)| portcullis_core::geo::GeoPoint::parse(&lat, &lon));
    PeerHints {
        country,
        asn,
        location,
    }
}

/// The gateway's own answer as the platform's response.
fn answer(response: &CoreResponse) -> worker::Result<web_sys::Response> {
    let headers = web_sys::Headers::new().map_err(worker::Error::from)?;
    for (name, value) in &response.headers {
        if let Ok(v) = value.to_str() {
            headers
                .append(name.as_str(), v)
                .map_err(worker::Error::from)?;
        }
    }
    let init = web_sys::ResponseInit::new();
    init.set_status(response.status.as_u16());
    init.set_headers(&headers);
    let mut body = response.body.clone();
    web_sys::Response::new_with_opt_u8_array_and_init(Some(&mut body), &init)
        .map_err(worker::Error::from)
}

fn refusal(reason: Reason, detail: &str, request_id: &str) -> worker::Result<web_sys::Response> {
    answer(&problem(reason, detail, request_id, &[]))
}

/// Forwards to the chosen backend, streaming both bodies; the response, its status and how
/// long its head took (millisecond clock: Workers advance time across I/O). The platform's
/// `fetch(url, init)` is called directly, as a Workers script would: no `Request` object
/// is built for it, and none of the `worker` crate's wrappers copy the request or the
/// response on the way.
async fn forward(
    config: &Config,
    req: &web_sys::Request,
    parts: &RequestHead,
    fwd: &Forward,
) -> Result<(web_sys::Response, u16, std::time::Duration), (Reason, String)> {
    let backend = fwd.target(config)?;
    portcullis_core::decision::check_declared_length(&parts.headers, config.limits.max_body_bytes)?;
    let headers =
        web_sys::Headers::new().map_err(|_| (Reason::InvalidRequest, "headers".into()))?;
    // `cf-*` fields are Cloudflare's, about this hop: never passed on.
    for (name, value) in fwd.backend_headers(&parts.headers) {
        if name.as_str().starts_with("cf-") {
            continue;
        }
        if let Ok(v) = value.to_str() {
            let _ = headers.append(name.as_str(), v);
        }
    }
    let init = web_sys::RequestInit::new();
    init.set_method(parts.method.as_str());
    init.set_headers(&headers);
    // A proxy hands redirects to the client instead of following them.
    init.set_redirect(web_sys::RequestRedirect::Manual);
    // `[timeouts] response`: the fetch resolves with the response head, so aborting it past
    // the timeout is the response timeout (504 `backend_timeout`); connecting is the
    // platform's.
    let response_ms = u32::try_from(config.timeouts.response.as_millis()).unwrap_or(u32::MAX);
    let deadline = web_sys::AbortSignal::timeout_with_u32(response_ms);
    init.set_signal(Some(&deadline));
    if !matches!(parts.method, Method::GET | Method::HEAD)
        && let Some(body) = req.body()
    {
        init.set_body(&JsValue::from(body));
    }
    let url = fwd.url(backend);
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let started = js_sys::Date::now();
    let fetched = JsFuture::from(global.fetch_with_str_and_init(&url, &init))
        .await
        .and_then(|r| r.dyn_into::<web_sys::Response>());
    let upstream = fetched.map_err(|e| {
        // An aborted fetch rejects with a TimeoutError whose text differs by runtime: the
        // signal itself says whether its timeout fired (the elapsed time on the platform's
        // coarse clock can fall just short of it on a loaded machine).
        if deadline.aborted() || js_sys::Date::now() - started >= f64::from(response_ms) {
            (
                Reason::BackendTimeout,
                format!("the backend did not answer within {response_ms} ms"),
            )
        } else {
            (
                Reason::BackendUnavailable,
                format!("backend error: {}", worker::Error::from(e)),
            )
        }
    })?;
    let latency =
        std::time::Duration::from_secs_f64(((js_sys::Date::now() - started) / 1000.0).max(0.0));
    let status = upstream.status();
    // What the client must not see of the backend's head: the hop-by-hop fields, and those
    // its `Connection` field lists. Only the fields the backend sent are deleted (most
    // responses carry none of these names): one read of the head instead of a call per
    // name. A head that cannot be read that way has every name deleted.
    let upstream_headers = upstream.headers();
    let sent = header_fields(&upstream_headers);
    let listed = match &sent {
        Some(fields) => fields
            .iter()
            .find(|(name, _)| name == "connection")
            .map(|(_, value)| value.clone()),
        None => upstream_headers.get("connection").ok().flatten(),
    };
    let mut connection = HeaderMap::new();
    if let Some(listed) = listed
        && let Ok(value) = HeaderValue::from_str(&listed)
    {
        connection.insert(http::header::CONNECTION, value);
    }
    let removals: Vec<String> = relay_removals(&connection, &fwd.response_headers)
        .into_iter()
        .filter(|name| {
            sent.as_ref()
                .is_none_or(|fields| fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
        })
        .collect();
    if removals.is_empty() && fwd.response_headers.is_empty() {
        // Nothing to edit (the common case): the backend's response as it came, as a
        // Workers script relaying a fetch returns it.
        return Ok((upstream, status, latency));
    }
    // A fetched response's headers are immutable: its head copied natively into a response
    // of our own, then edited in place. Cheaper than carrying every field through Rust.
    let init = web_sys::ResponseInit::new();
    init.set_status(status);
    init.set_headers(&upstream_headers);
    let relayed =
        web_sys::Response::new_with_opt_readable_stream_and_init(upstream.body().as_ref(), &init)
            .map_err(|_| {
            (
                Reason::BackendUnavailable,
                "cannot relay the response".to_owned(),
            )
        })?;
    let out = relayed.headers();
    for name in &removals {
        let _ = out.delete(name);
    }
    for (name, value) in &fwd.response_headers {
        if let Ok(v) = value.to_str() {
            let _ = out.append(name.as_str(), v);
        }
    }
    Ok((relayed, status, latency))
}

/// The request's body, whole (a form posted to the login callback or back-channel logout);
/// `None` when it cannot be read.
async fn body_bytes(req: &web_sys::Request) -> Option<Vec<u8>> {
    let buffer = JsFuture::from(req.array_buffer().ok()?).await.ok()?;
    Some(Uint8Array::new(&buffer).to_vec())
}

/// The Workers entry point: the platform's request and response as they are (the `worker`
/// crate's `Request` and `Response` would copy the URL, read `cf` and build the response
/// twice).
#[event(fetch)]
pub async fn fetch(
    req: web_sys::Request,
    env: Env,
    _ctx: Context,
) -> worker::Result<web_sys::Response> {
    let isolate = match load(&env) {
        Ok(i) => i,
        Err(e) => {
            worker::console_error!("portcullis: {e}");
            // The request id the client or Cloudflare gave, if the gateway keeps it (the
            // head is not read).
            let headers = req.headers();
            let id = given_request_id(|name| headers.get(name).ok().flatten()).unwrap_or_default();
            return answer(&gateway_error(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                &format!("gateway configuration: {e}"),
                &id,
            ));
        }
    };
    let serial = isolate.requests.get() + 1;
    isolate.requests.set(serial);
    let parts = match head(&req, serial) {
        Ok(p) => p,
        Err((reason, detail)) => return refusal(reason, &detail, ""),
    };
    let gateway = &isolate.gateway;
    if let Some(r) = early(gateway, parts.uri.path()) {
        return answer(&r);
    }
    let body = if gateway.wants_body(&parts.method, parts.uri.path()) {
        match body_bytes(&req).await {
            Some(b) if b.len() <= portcullis_core::login::MAX_FORM_BODY => b,
            _ => {
                return refusal(
                    Reason::BodyTooLarge,
                    "the form body is too large or incomplete",
                    &parts.request_id,
                );
            }
        }
    } else {
        Vec::new()
    };
    let now = now();
    isolate.plugins.set_now_ms(now.unix_millis());
    refresh_keys(&isolate, &env, now).await;
    let request = parts.parts(&body);
    // What the token cache answered this request and the platform's verdicts on its
    // signatures, kept across the runs of its decision and apart from other requests'.
    let tokens = RequestTokens::default();
    let verifier = isolate.verifier.for_request();
    let decide = || {
        let step = |resume: Option<(Suspended, Answer)>| {
            let keys = isolate.keys.borrow();
            // The verifier has WebCrypto check what it can: the decision waits for it
            // (unless the token is one this isolate already verified).
            let local = LocalAuthenticator {
                config: gateway.config(),
                keys: &keys,
                verifier: &verifier,
            };
            let cached;
            let auth: &dyn portcullis_core::Authenticator = match &isolate.tokens {
                Some(cache) => {
                    cached = CachedAuthenticator {
                        inner: local,
                        cache,
                        request: &tokens,
                    };
                    &cached
                }
                None => &local,
            };
            // Ids for traces from `crypto.getRandomValues`; no phase timings: Workers stop
            // the clock while code runs.
            let mut adapters = Adapters {
                risk: &isolate.plugins,
                entropy: &SystemEntropy,
                client: &Awaited,
                ..Adapters::new(auth, &AllHealthy)
            };
            // Without the Durable Object binding there is no shared state: what needs it
            // fails closed.
            if isolate.shared_state {
                adapters.state = &Awaited;
            }
            let progress = match resume {
                None => gateway.start(&adapters, &request, now),
                Some((waiting, answer)) => gateway.resume(&adapters, &request, waiting, answer),
            };
            match progress {
                Progress::Decided(d) => Step::Decided(d),
                Progress::Waiting(w) => Step::Waiting(w),
            }
        };
        decide_resuming(step, |need| perform(&isolate, &env, need))
    };
    // A token that names a key the set lacks: one refetch, then decide again — at most
    // once per `jwks_unknown_kid_interval` in this isolate, and across isolates too when
    // the shared state is bound (a one-time key per issuer).
    let decision = decide_refetching(decide, async |issuer| {
        let granted = isolate.keys.borrow_mut().request_refetch(issuer, now);
        if !granted {
            return false;
        }
        if isolate.shared_state {
            let ttl = gateway
                .config()
                .issuers
                .get(issuer.0)
                .map(|i| i.jwks_policy.unknown_kid_interval)
                .unwrap_or_default();
            let key = format!("portcullis/keyset-refetch/{}", issuer.0);
            let first = crate::objects::perform(&env, StateOp::FirstUse { key, ttl }).await;
            if !matches!(first, Ok(StateAnswer::FirstUse(true))) {
                return false;
            }
        }
        refresh_keys(&isolate, &env, now).await;
        true
    })
    .await;
    // How the token was checked: by WebCrypto, in pure Rust, or not at all (verified by an
    // earlier request of this isolate).
    let signature_check = verifier
        .used()
        .or(tokens.answered_from_cache().then_some("cached"));
    let mut audit = decision.audit;
    let (response, status) = match decision.outcome {
        Outcome::Respond(r) => (answer(&r)?, r.status.as_u16()),
        Outcome::Forward(fwd) => match forward(gateway.config(), &req, &parts, &fwd).await {
            Ok((response, status, latency)) => {
                backend_answered(&mut audit, status, latency);
                (response, status)
            }
            Err((reason, detail)) => {
                refused_in_forward(&mut audit, reason);
                (
                    refusal(reason, &detail, &parts.request_id)?,
                    reason.status().as_u16(),
                )
            }
        },
    };
    if audit.risk.is_some() {
        isolate.plugins.observe(status);
    }
    if let Ok(mut record) = serde_json::to_value(&audit) {
        if let (Some(path), Some(obj)) = (signature_check, record.as_object_mut()) {
            obj.insert("signature_check".into(), path.into());
        }
        worker::console_log!("{}", portcullis_driver::audit::value_line(record));
    }
    Ok(response)
}
