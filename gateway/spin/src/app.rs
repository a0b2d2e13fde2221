//! The Spin HTTP handler: per instance the gateway (configuration from a Spin variable)
//! and its key sets (shared through Spin key-value); per request the core's decision, then
//! the forward (both bodies streamed) or the answer.

use std::cell::RefCell;
use std::rc::Rc;

use http::{HeaderValue, Method};
use portcullis_core::authenticate::LocalAuthenticator;
use portcullis_core::crypto::PortableKey;
use portcullis_core::decision::{HOP_BY_HOP, problem};
use portcullis_core::{
    Adapters, AllHealthy, Config, FetchResponse, Gateway, KeyStore, Outcome, PortableVerifier,
    Reason, RequestParts, Response as CoreResponse, Timestamp,
};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{Error, IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::wasip3::http::types;
use spin_sdk::wasip3::http_compat::IncomingRequestBody;

use crate::keycache::{StoredDocument, store_key};

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

/// Loads every due key-set document: a fresh copy from the shared store when there is one,
/// else from the issuer (then stored for the other instances).
async fn refresh_keys(instance: &Instance, now: Timestamp) {
    let store = Store::open_default().await.ok();
    let now_ms = now.unix_millis();
    for _ in 0..4 {
        let due = instance.keys.borrow_mut().poll(now);
        if due.is_empty() {
            return;
        }
        for fetch in due {
            let policy = instance
                .gateway
                .config()
                .issuers
                .get(fetch.issuer.0)
                .map(|i| i.jwks_policy)
                .unwrap_or_default();
            let mut stored = None;
            if let Some(store) = &store
                && let Ok(Some(bytes)) = store.get(store_key(&fetch.url)).await
            {
                stored = StoredDocument::from_bytes(&bytes)
                    .filter(|d| d.usable(fetch.reason, &policy, now_ms));
            }
            let document = match stored {
                Some(d) => Ok(d),
                None => {
                    let fetched = fetch_document(&fetch.url, now_ms).await;
                    if let (Ok(d), Some(store)) = (&fetched, &store)
                        && d.status == 200
                    {
                        let _ = store.set(store_key(&fetch.url), d.to_bytes()).await;
                    }
                    fetched
                }
            };
            let mut keys = instance.keys.borrow_mut();
            match document {
                Ok(d) => {
                    let response = FetchResponse {
                        status: d.status,
                        cache_control: d.cache_control.as_deref(),
                        body: &d.body,
                    };
                    // Freshness counts from when the document was fetched, by whichever
                    // instance fetched it.
                    let at =
                        Timestamp::from_duration(std::time::Duration::from_millis(d.fetched_ms));
                    if let Err(e) =
                        keys.on_response(&PortableVerifier, fetch.issuer, fetch.kind, response, at)
                    {
                        eprintln!("portcullis: key set {}: {e}", fetch.url);
                    }
                }
                Err(e) => {
                    eprintln!("portcullis: key set: {e}");
                    keys.on_failure(fetch.issuer, &e, now);
                }
            }
        }
    }
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

struct Parts {
    method: Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    request_id: String,
}

/// Forwards to the chosen backend with the request body streamed; the response (its body
/// streamed too) and its status.
async fn forward(
    config: &Config,
    body: IncomingRequestBody,
    parts: &Parts,
    fwd: &portcullis_core::Forward,
) -> Result<(types::Response, u16), (Reason, String)> {
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
    let resp = spin_sdk::http::send(outgoing)
        .await
        .map_err(|e| (Reason::BackendUnavailable, format!("backend error: {e:?}")))?;
    let status = resp.status().as_u16();
    let (mut head, body) = resp.into_parts();
    for name in HOP_BY_HOP {
        head.headers.remove(name);
    }
    for (name, value) in &fwd.response_headers {
        if *name == http::header::CACHE_CONTROL {
            head.headers.remove(http::header::CACHE_CONTROL);
        }
        head.headers.append(name.clone(), value.clone());
    }
    let relayed = http::Response::from_parts(head, body)
        .into_response()
        .map_err(|e| {
            (
                Reason::BackendUnavailable,
                format!("cannot relay the response: {e:?}"),
            )
        })?;
    Ok((relayed, status))
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
    let request_id = head
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let parts = Parts {
        method: head.method,
        uri: head.uri,
        headers: head.headers,
        request_id,
    };
    let gateway = &instance.gateway;
    if let Some((content_type, text)) = gateway.well_known(parts.uri.path()) {
        let r = CoreResponse {
            status: http::StatusCode::OK,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            )],
            body: text.into_bytes(),
            reason: Reason::InvalidRequest,
        };
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
    let decide = |instance: &Instance| {
        let keys = instance.keys.borrow();
        let auth = LocalAuthenticator {
            config: gateway.config(),
            keys: &keys,
            verifier: &PortableVerifier,
        };
        let adapters = Adapters {
            auth: &auth,
            risk: &portcullis_core::risk::NoPlugins,
            limiter: &portcullis_core::limits::NoLimiter,
            sites: &portcullis_core::challenge::NoSiteVerifier,
            login: &portcullis_core::login::NoLogin,
            health: &AllHealthy,
        };
        let req = RequestParts {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            request_id: &parts.request_id,
            peer: None,
            body: &[],
        };
        gateway.decide_using(&adapters, &req, now)
    };
    let mut decision = decide(&instance);
    if let Some(issuer) = decision.refetch {
        let granted = instance.keys.borrow_mut().request_refetch(issuer, now);
        if granted {
            refresh_keys(&instance, now).await;
            decision = decide(&instance);
        }
    }
    let mut audit = decision.audit;
    let response = match decision.outcome {
        Outcome::Respond(r) => answer(&r)?,
        Outcome::Forward(fwd) => match forward(gateway.config(), body, &parts, &fwd).await {
            Ok((r, _)) => r,
            Err((reason, detail)) => {
                audit.decision = "deny";
                audit.status = Some(reason.status().as_u16());
                audit.reason = Some(reason.code());
                refusal(reason, &detail, &parts.request_id)?
            }
        },
    };
    if let Ok(line) = serde_json::to_string(&audit) {
        eprintln!("{line}");
    }
    Ok(response)
}
