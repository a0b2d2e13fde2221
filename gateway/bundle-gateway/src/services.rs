//! The gateway's host services inside an edge bundle, behind the core's traits: tokens
//! verified in the guest with the instance's key sets ([`keysets`](crate::keysets)), the
//! shared state in the runtime's `wasi:keyvalue` store ([`portcullis_kv`]), the provider's
//! token endpoint and site verification over `wasi:http` ([`fetch`](crate::fetch)), every
//! backend healthy (nothing watches them inside a bundle), risk plugins through the
//! imported chain, audit records as JSON lines on stderr.

use portcullis_core::authenticate::{AuthFailure, Authenticator, IssuedKind};
use portcullis_core::config::{FailPolicy, PluginId, SiteVerify};
use portcullis_core::keyset::ProviderEndpoints;
use portcullis_core::ports::{
    CallAnswer, CallOp, CallResult, Client, FormEndpoint, State, StateAnswer, StateOp, StateResult,
};
use portcullis_core::risk::{PluginAnswer, RiskAssessor, RiskContext};
use portcullis_core::{
    AuditRecord, BackendHealth, BackendId, IssuerId, Reason, Timestamp, VerifiedIdentity,
};
use portcullis_kv as kv;

use crate::bindings::portcullis::gateway::risk;
use crate::fetch;
use crate::keysets::{loaded, now};

/// Longest a form POST (token endpoint, site verification) may take, as on the host.
const FORM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest site-verification answer read, as on the host.
const MAX_SITEVERIFY_ANSWER: usize = 64 << 10;

/// The instance's configuration could not be restored: no key can be trusted.
fn unavailable(detail: String) -> AuthFailure {
    AuthFailure::new(Reason::KeysUnavailable, detail)
}

/// Token verification in the guest. DPoP proofs, client assertions and gateway tokens use
/// the trait's own pure-Rust defaults (the gateway component asks its host instead).
pub struct PortableAuthenticator;

impl Authenticator for PortableAuthenticator {
    fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        _now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        loaded()
            .map_err(unavailable)?
            .authenticate(token, route_issuers)
    }

    fn endpoints(&self, issuer: IssuerId) -> Result<ProviderEndpoints, String> {
        loaded()?.endpoints(issuer)
    }

    fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: IssuedKind,
        _now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        loaded()
            .map_err(unavailable)?
            .verify_issued(token, issuer, client_id, kind)
    }
}

/// The shared state in the runtime's `wasi:keyvalue` store. A store that cannot be opened
/// or answers with errors is unavailable state (`[state] on_unavailable`, fail closed).
pub struct KeyValueState;

impl State for KeyValueState {
    fn now(&self, op: &StateOp) -> Option<StateResult> {
        let ms = |ttl: &std::time::Duration| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let now = now();
        Some(match op {
            StateOp::Get { key } => Ok(StateAnswer::Value(
                kv::get(key, now.unix_millis()).unwrap_or_else(|e| {
                    eprintln!("{}", serde_json::json!({"state_error": e, "op": "get"}));
                    None
                }),
            )),
            StateOp::Set { key, value, ttl } => {
                if let Err(e) = kv::set(key, value, now.unix_millis(), ms(ttl)) {
                    eprintln!("{}", serde_json::json!({"state_error": e, "op": "set"}));
                }
                Ok(StateAnswer::Done)
            }
            StateOp::Delete { key } => kv::delete(key).map(|()| StateAnswer::Done),
            StateOp::FirstUse { key, ttl } => {
                replay_policy(kv::first_use(key, now.unix_millis(), ms(ttl)))
                    .map(StateAnswer::FirstUse)
            }
            StateOp::RateLimit { checks, .. } => {
                kv::rate_limit(checks, now.unix_micros()).map(StateAnswer::Limits)
            }
        })
    }
}

/// A replay check's answer under `[state] on_unavailable`, as the native host gives it: an
/// unreachable store counts the value as new under `"allow"` and is an error under
/// `"deny"` (the core refuses with 503 `state_unavailable`).
fn replay_policy(answer: Result<bool, String>) -> Result<bool, String> {
    match answer {
        Ok(first) => Ok(first),
        Err(e) => match loaded() {
            Ok(l) if l.config().state.on_unavailable == FailPolicy::Allow => Ok(true),
            _ => Err(e),
        },
    }
}

/// Outbound calls over `wasi:http`: the provider's token endpoint, site verification.
/// They block the instance, so the answer is there at once.
pub struct WasiClient;

impl Client for WasiClient {
    fn now(&self, op: &CallOp) -> Option<CallResult> {
        Some(match op {
            CallOp::Token {
                issuer,
                endpoint,
                authorization,
                body,
            } => token_request(*issuer, *endpoint, authorization, body)
                .map(|(status, body)| CallAnswer::Token { status, body }),
            CallOp::SiteVerify {
                site,
                site_token,
                remote_ip,
            } => verify_site_token(site, site_token, *remote_ip).map(CallAnswer::SiteVerified),
        })
    }
}

/// POSTs a form to issuer `issuer`'s `endpoint` (from its discovery document).
fn token_request(
    issuer: IssuerId,
    endpoint: FormEndpoint,
    authorization: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), String> {
    let endpoints = loaded()?.endpoints(issuer)?;
    let url = endpoint
        .url(&endpoints)
        .ok_or_else(|| format!("the provider offers no {} endpoint", endpoint.name()))?;
    // An empty `authorization`: the client authenticates in the body.
    let all = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("accept", "application/json"),
        ("authorization", authorization),
    ];
    let headers = if authorization.is_empty() {
        all.get(..2).unwrap_or_default()
    } else {
        &all[..]
    };
    let got = fetch::send(&fetch::Call {
        post: true,
        url,
        headers,
        body: body.as_bytes(),
        timeout: FORM_TIMEOUT,
        max_body: portcullis_core::login::MAX_TOKEN_RESPONSE,
    })?;
    Ok((got.status, got.body))
}

/// Asks the site-verification service `site` whether `site_token` is genuine.
fn verify_site_token(
    site: &SiteVerify,
    site_token: &str,
    remote_ip: Option<std::net::IpAddr>,
) -> Result<bool, String> {
    let body = portcullis_core::siteverify_body(&site.secret, site_token, remote_ip);
    let got = fetch::send(&fetch::Call {
        post: true,
        url: &site.verify_url,
        headers: &[("content-type", "application/x-www-form-urlencoded")],
        body: body.as_bytes(),
        timeout: FORM_TIMEOUT,
        max_body: MAX_SITEVERIFY_ANSWER,
    })?;
    if !(200..300).contains(&got.status) {
        return Err(format!("{} answered {}", site.verify_url, got.status));
    }
    portcullis_core::siteverify_result(&got.body)
}

/// Every backend is healthy: nothing inside a bundle watches them.
pub struct AllHealthy;

impl BackendHealth for AllHealthy {
    fn is_healthy(&self, _backend: BackendId) -> bool {
        true
    }
}

/// Risk plugins through the imported chain (the plugins linked into the bundle; the plugin
/// services at its end answer for any other with a failure).
pub struct LinkedRisk;

impl RiskAssessor for LinkedRisk {
    fn now(&self, plugins: &[PluginId], ctx: &RiskContext) -> Option<Vec<PluginAnswer>> {
        Some(portcullis_driver::assess_through!(risk, plugins, ctx))
    }
}

/// Tells the plugins that assessed the request how it ended. A bundle without plugins
/// has a chain that traps when called (`portcullis:bundle/risk-end`): nothing is told.
pub fn observe(status: u16) {
    if loaded().is_ok_and(|l| !l.config().plugins.is_empty()) {
        risk::observe(status);
    }
}

/// One JSON line per decision on stderr.
pub fn emit_audit(record: &AuditRecord) {
    eprintln!("{}", portcullis_driver::audit::json_line(record));
}
