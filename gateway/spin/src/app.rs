//! The Spin HTTP handler: per instance the gateway (configuration from a Spin variable)
//! and its key sets (shared through Spin key-value); per request the core's decision, then
//! the forward (both bodies streamed) or the answer.

use std::cell::RefCell;
use std::rc::Rc;

use portcullis_core::authenticate::LocalAuthenticator;
use portcullis_core::crypto::PortableKey;
use portcullis_core::decision::problem;
use portcullis_core::keyset::FetchRequest;
use portcullis_core::{
    Adapters, AllHealthy, Config, Gateway, KeyStore, Outcome, PortableVerifier, Reason,
    Response as CoreResponse, Timestamp,
};
use portcullis_driver::keys::{Document, DocumentSource, Refreshed};
use portcullis_driver::{
    InstantClock, RequestHead, SystemEntropy, backend_answered, decide_refetching, early,
    refused_in_forward, relay_headers,
};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{Error, IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::wasip3::http::types;
use spin_sdk::wasip3::http_compat::IncomingRequestBody;

use portcullis_driver::keycache::{StoredDocument, store_key};

/// The Spin variable holding the configuration snapshot (`portcullis snapshot`).
const SNAPSHOT_VARIABLE: &str = "portcullis_snapshot";

struct Instance {
    gateway: Gateway,
    keys: RefCell<KeyStore<PortableKey>>,
}

thread_local! {
    static INSTANCE: RefCell<Option<Rc<Instance>>> = const { RefCell::new(None) };
}

async fn load() -> Result<Rc<Instance>, String> {
    if let Some(i) = INSTANCE.with(|c| c.borrow().clone()) {
        return Ok(i);
    }
    let text = spin_sdk::variables::get(SNAPSHOT_VARIABLE)
        .await
        .map_err(|e| format!("Spin variable `{SNAPSHOT_VARIABLE}`: {e}"))?;
    let bytes = portcullis_core::b64::decode(text.trim())
        .ok_or_else(|| format!("`{SNAPSHOT_VARIABLE}` is not base64url"))?;
    let config = Config::from_snapshot(&bytes)?;
    let keys = KeyStore::new(&config, &PortableVerifier);
    let instance = Rc::new(Instance {
        gateway: Gateway::new(config),
        keys: RefCell::new(keys),
    });
    INSTANCE.with(|c| *c.borrow_mut() = Some(instance.clone()));
    Ok(instance)
}

fn now() -> Timestamp {
    Timestamp::from_duration(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

async fn fetch_document(url: &str, now_ms: u64) -> Result<StoredDocument, String> {
    let resp = spin_sdk::http::get(url)
        .await
        .map_err(|e| format!("fetching {url}: {e:?}"))?;
    let status = resp.status().as_u16();
    let cache_control = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .bytes()
        .await
        .map_err(|e| format!("reading {url}: {e:?}"))?;
    Ok(StoredDocument {
        fetched_ms: now_ms,
        status,
        cache_control,
        body: body.to_vec(),
    })
}

/// Key-set documents: a fresh copy from the shared store when there is one, else from the
/// issuer (then stored for the other instances).
struct SharedDocuments<'a> {
    store: Option<Store>,
    config: &'a Config,
    now_ms: u64,
}

impl DocumentSource for SharedDocuments<'_> {
    async fn fetch(&self, request: &FetchRequest) -> Result<Document, String> {
        let policy = self
            .config
            .issuers
            .get(request.issuer.0)
            .map(|i| i.jwks_policy)
            .unwrap_or_default();
        if let Some(store) = &self.store
            && let Ok(Some(bytes)) = store.get(store_key(&request.url)).await
            && let Some(stored) = StoredDocument::from_bytes(&bytes)
                .filter(|d| d.usable(request.reason, &policy, self.now_ms))
        {
            return Ok(stored.into_document());
        }
        let fetched = fetch_document(&request.url, self.now_ms).await;
        if let (Ok(d), Some(store)) = (&fetched, &self.store)
            && d.status == 200
        {
            let _ = store.set(store_key(&request.url), d.to_bytes()).await;
        }
        fetched.map(StoredDocument::into_document)
    }
}

/// Loads every due key-set document.
async fn refresh_keys(instance: &Instance, now: Timestamp) {
    let source = SharedDocuments {
        store: Store::open_default().await.ok(),
        config: instance.gateway.config(),
        now_ms: now.unix_millis(),
    };
    let report = |request: &FetchRequest, outcome: &Refreshed| match outcome {
        Refreshed::Loaded => {}
        Refreshed::Rejected(e) => eprintln!("portcullis: key set {}: {e}", request.url),
        Refreshed::Unreachable(e) => eprintln!("portcullis: key set: {e}"),
    };
    portcullis_driver::keys::refresh(&instance.keys, &PortableVerifier, &source, || now, report)
        .await;
}

fn answer(response: &CoreResponse) -> Result<types::Response, Error> {
    let mut builder = http::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(String::from_utf8_lossy(&response.body).into_owned())
        .map_err(|e| Error::other(e.to_string()))?
        .into_response()
        .map_err(|e| Error::other(format!("{e:?}")))
}

fn refusal(reason: Reason, detail: &str, request_id: &str) -> Result<types::Response, Error> {
    answer(&problem(reason, detail, request_id, &[]))
}

/// Forwards to the chosen backend with the request body streamed; the response (its body
/// streamed too), its status and how long its head took.
async fn forward(
    config: &Config,
    body: IncomingRequestBody,
    parts: &RequestHead,
    fwd: &portcullis_core::Forward,
) -> Result<(types::Response, u16, std::time::Duration), (Reason, String)> {
    let backend = fwd.target(config)?;
    portcullis_core::decision::check_declared_length(&parts.headers, config.limits.max_body_bytes)?;
    let url = fwd.url(backend);
    let mut builder = http::Request::builder()
        .method(parts.method.clone())
        .uri(&url);
    for (name, value) in fwd.backend_headers(&parts.headers) {
        builder = builder.header(name, value);
    }
    let outgoing = builder.body(body).map_err(|e| {
        (
            Reason::BackendUnavailable,
            format!("cannot build a request to {url}: {e}"),
        )
    })?;
    let sent = std::time::Instant::now();
    let resp = spin_sdk::http::send(outgoing)
        .await
        .map_err(|e| (Reason::BackendUnavailable, format!("backend error: {e:?}")))?;
    let latency = sent.elapsed();
    let status = resp.status().as_u16();
    let (mut head, body) = resp.into_parts();
    relay_headers(&mut head.headers, &fwd.response_headers);
    let relayed = http::Response::from_parts(head, body)
        .into_response()
        .map_err(|e| {
            (
                Reason::BackendUnavailable,
                format!("cannot relay the response: {e:?}"),
            )
        })?;
    Ok((relayed, status, latency))
}

/// The Spin entry point.
#[http_service]
async fn handle(req: Request) -> Result<types::Response, Error> {
    let instance = match load().await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("portcullis: {e}");
            let mut r = problem(
                Reason::InvalidRequest,
                &format!("gateway configuration: {e}"),
                "-",
                &[],
            );
            r.status = http::StatusCode::INTERNAL_SERVER_ERROR;
            return answer(&r);
        }
    };
    let (head, body) = req.into_parts();
    let parts = RequestHead::new(head.method, head.uri, head.headers, None);
    let gateway = &instance.gateway;
    if let Some(r) = early(gateway, parts.uri.path()) {
        return answer(&r);
    }
    if gateway.wants_body(&parts.method, parts.uri.path()) {
        // Browser login (whose back-channel logout posts a body) needs shared state that
        // this adapter does not have: refuse before reading anything.
        return refusal(
            Reason::ProviderUnavailable,
            "this gateway cannot sign browsers in",
            &parts.request_id,
        );
    }
    let now = now();
    refresh_keys(&instance, now).await;
    let clock = InstantClock::start();
    let decide = || {
        let keys = instance.keys.borrow();
        let auth = LocalAuthenticator {
            config: gateway.config(),
            keys: &keys,
            verifier: &PortableVerifier,
        };
        let adapters = Adapters {
            entropy: &SystemEntropy,
            clock: &clock,
            ..Adapters::new(&auth, &AllHealthy)
        };
        gateway.decide(&adapters, &parts.parts(&[]), now)
    };
    let decision = decide_refetching(
        || std::future::ready(decide()),
        async |issuer| {
            let granted = instance.keys.borrow_mut().request_refetch(issuer, now);
            if granted {
                refresh_keys(&instance, now).await;
            }
            granted
        },
    )
    .await;
    let mut audit = decision.audit;
    let response = match decision.outcome {
        Outcome::Respond(r) => answer(&r)?,
        Outcome::Forward(fwd) => match forward(gateway.config(), body, &parts, &fwd).await {
            Ok((r, status, latency)) => {
                backend_answered(&mut audit, status, latency);
                r
            }
            Err((reason, detail)) => {
                refused_in_forward(&mut audit, reason);
                refusal(reason, &detail, &parts.request_id)?
            }
        },
    };
    eprintln!("{}", portcullis_driver::audit::json_line(&audit));
    Ok(response)
}
