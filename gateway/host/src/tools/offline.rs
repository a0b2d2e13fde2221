//! `portcullis token verify --path`: one request decided offline by the pipeline `serve`
//! runs — the native engine with the configuration's key sets, risk plugins, bot checks and
//! rate limits — together with what an offline check cannot know.

use portcullis_core::config::StateBackend;
use portcullis_core::{Config, Decision, RequestParts};

use crate::config::LoadedConfig;
use crate::serve::native::NativeEngine;
use crate::serve::{EngineKind, ServeOptions};

/// A decision made offline and the limits of what it could evaluate.
pub struct OfflineDecision {
    /// The pipeline's decision.
    pub decision: Decision,
    /// The configuration it was made with.
    pub config: Config,
    /// What this check could not evaluate as a running gateway would (one line each).
    pub notes: Vec<&'static str>,
}

/// Decides `method path` with `headers` (no client address, no body) as `serve` would. The
/// shared state is always a fresh in-memory one: an offline check never reads or spends a
/// running gateway's rate-limit budgets in Redis.
pub async fn decide(
    mut loaded: LoadedConfig,
    method: &http::Method,
    path: &str,
    headers: &http::HeaderMap,
) -> anyhow::Result<OfflineDecision> {
    let configured_shared = !matches!(loaded.config.state.backend, StateBackend::Memory { .. });
    loaded.config.state.backend = StateBackend::Memory { capacity: 1024 };
    let config = loaded.config.clone();
    let options = ServeOptions {
        audit: String::new(),
        engine: EngineKind::Native,
        ..ServeOptions::default()
    };
    let prepared = crate::serve::prepare(loaded, &options).await?;
    let engine = NativeEngine::new(prepared.shared.clone(), config.clone());
    let uri: http::Uri = path.parse()?;
    let parts = RequestParts {
        method,
        uri: &uri,
        headers,
        request_id: "cli",
        peer: None,
        peer_hints: Default::default(),
        body: &[],
    };
    let decision = engine.decide_only(&parts).await;
    let notes = notes(&config, decision.audit.route.as_deref(), configured_shared);
    Ok(OfflineDecision {
        decision,
        config,
        notes,
    })
}

/// What the matched route (by its `path`) depends on that an offline check cannot see.
fn notes(config: &Config, route: Option<&str>, configured_shared: bool) -> Vec<&'static str> {
    let mut notes = vec![
        "client address: none (no connection), so address limits, lists and checks see an unknown client",
        "backends: not contacted; every backend counts as healthy",
    ];
    let Some(route) = route.and_then(|p| config.routes.iter().find(|r| r.path == p)) else {
        return notes;
    };
    if !route.rate_limits.is_empty() {
        notes.push(if configured_shared {
            "rate limits: counted in an empty in-memory state as a first request (the configured shared state is not touched)"
        } else {
            "rate limits: counted in an empty state as a first request, not a running gateway's counts"
        });
    }
    if let Some(risk) = &route.risk {
        if !risk.plugins.is_empty() {
            notes.push("risk plugins: run on this one request with empty state (no history of earlier requests)");
        }
        if risk.challenge.is_some() {
            notes.push("challenge: no clearance cookie is sent, so a challenge score is answered with the challenge");
        }
    }
    if !route.login.is_empty() {
        notes.push("browser login: no session cookie is sent; only the bearer token decides");
    }
    if route.require_dpop {
        notes.push("DPoP: no proof is sent, so a DPoP-bound token is refused");
    }
    notes
}
