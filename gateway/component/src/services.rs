//! The host's services behind the core's traits: tokens are verified by the host (natively,
//! with its key sets and token cache), backend health comes from the host's observations, and
//! the audit record goes back to the host with the decision.

use portcullis_core::authenticate::{AuthFailure, Authenticator, identity_from_claims_json};
use portcullis_core::{
    AuditRecord, BackendHealth, BackendId, IssuerId, Reason, Timestamp, VerifiedIdentity,
};

use portcullis_core::config::PluginId;
use portcullis_core::risk::{PluginAnswer, RiskAssessor, RiskContext};

use portcullis_core::ports::{
    CallAnswer, CallOp, CallResult, Client, FormEndpoint, LimitCheck, LimitStatus, State,
    StateAnswer, StateOp, StateResult,
};

use crate::bindings::portcullis::gateway::{audit, client, health, keys, risk, state};

/// Token verification by the host.
pub struct HostAuthenticator;

impl Authenticator for HostAuthenticator {
    fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        _now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        let issuers: Vec<u32> = route_issuers
            .iter()
            .filter_map(|i| u32::try_from(i.0).ok())
            .collect();
        verified(keys::authenticate(token, &issuers))
    }

    fn endpoints(
        &self,
        issuer: IssuerId,
    ) -> Result<portcullis_core::keyset::ProviderEndpoints, String> {
        let index = u32::try_from(issuer.0).map_err(|e| e.to_string())?;
        let e = keys::endpoints(index)?;
        Ok(portcullis_core::keyset::ProviderEndpoints {
            authorization: e.authorization,
            token: e.token,
            end_session: e.end_session,
            pushed_authorization: e.pushed_authorization,
            introspection: e.introspection,
        })
    }

    fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: portcullis_core::authenticate::IssuedKind,
        _now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        let kind = match kind {
            portcullis_core::authenticate::IssuedKind::IdToken => keys::IssuedKind::IdToken,
            portcullis_core::authenticate::IssuedKind::LogoutToken => keys::IssuedKind::LogoutToken,
        };
        let index = u32::try_from(issuer.0).unwrap_or(u32::MAX);
        verified(keys::verify_issued(token, index, client_id, kind))
    }

    fn verify_with_key(
        &self,
        alg: portcullis_core::Algorithm,
        material: &portcullis_core::KeyMaterial,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        use portcullis_core::KeyMaterial;
        use portcullis_core::crypto::Curve;
        let key = match material {
            KeyMaterial::Rsa { n, e } => keys::PublicKey::Rsa(keys::RsaKey {
                n: n.clone(),
                e: e.clone(),
            }),
            KeyMaterial::Ec { curve, x, y } => keys::PublicKey::Ec(keys::EcKey {
                curve: match curve {
                    Curve::P256 => keys::Curve::P256,
                    Curve::P384 => keys::Curve::P384,
                },
                x: x.clone(),
                y: y.clone(),
            }),
            KeyMaterial::Ed25519 { x } => keys::PublicKey::Ed25519(x.clone()),
            // A request never carries a shared secret that could verify anything.
            KeyMaterial::Symmetric { .. } => return false,
        };
        keys::verify_with_key(alg.name(), &key, message, signature)
    }

    fn sign_as_client(
        &self,
        key: &portcullis_core::client_auth::ClientKey,
        input: &[u8],
    ) -> Result<Vec<u8>, String> {
        keys::sign_as_client(&key.thumbprint(), input)
    }

    fn sign_as_gateway(
        &self,
        key: &portcullis_core::config::GatewayKey,
        input: &[u8],
    ) -> Option<Vec<u8>> {
        keys::sign_as_gateway(&key.kid, input)
    }
}

/// A host verification answer as the core's identity or failure.
fn verified(
    answer: Result<keys::Verified, keys::Failure>,
) -> Result<VerifiedIdentity, AuthFailure> {
    match answer {
        Ok(v) => {
            identity_from_claims_json(v.claims.as_bytes(), IssuerId(v.issuer as usize), "host")
        }
        Err(f) => {
            let reason = Reason::from_code(&f.reason).unwrap_or(Reason::TokenMalformed);
            let failure = AuthFailure::new(reason, f.detail);
            Err(match f.issuer {
                Some(i) => failure.at(IssuerId(i as usize)),
                None => failure,
            })
        }
    }
}

/// Outbound calls through the host: a provider's token endpoint, site verification. Host
/// calls are synchronous from the guest's side, so the answer is there at once.
pub struct HostClient;

impl Client for HostClient {
    fn now(&self, op: &CallOp) -> Option<CallResult> {
        Some(match op {
            CallOp::Token {
                issuer,
                endpoint,
                authorization,
                body,
            } => u32::try_from(issuer.0)
                .map_err(|e| e.to_string())
                .and_then(|index| {
                    let endpoint = match endpoint {
                        FormEndpoint::Token => client::FormEndpoint::Token,
                        FormEndpoint::PushedAuthorization => {
                            client::FormEndpoint::PushedAuthorization
                        }
                        FormEndpoint::Introspection => client::FormEndpoint::Introspection,
                    };
                    client::token_request(index, endpoint, authorization, body)
                })
                .map(|(status, body)| CallAnswer::Token { status, body }),
            CallOp::SiteVerify {
                site_token,
                remote_ip,
                ..
            } => {
                client::verify_site_token(site_token, remote_ip.map(|ip| ip.to_string()).as_deref())
                    .map(CallAnswer::SiteVerified)
            }
        })
    }
}

/// The host's shared state (memory or Redis behind the host), synchronous from the
/// guest's side.
pub struct HostState;

impl State for HostState {
    fn now(&self, op: &StateOp) -> Option<StateResult> {
        let ms = |ttl: &std::time::Duration| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Some(match op {
            StateOp::Get { key } => Ok(StateAnswer::Value(state::get(key))),
            StateOp::Set { key, value, ttl } => {
                state::set(key, value, ms(ttl));
                Ok(StateAnswer::Done)
            }
            StateOp::Delete { key } => state::delete(key).map(|()| StateAnswer::Done),
            StateOp::FirstUse { key, ttl } => {
                state::first_use(key, ms(ttl)).map(StateAnswer::FirstUse)
            }
            StateOp::RateLimit { checks, .. } => rate_limit(checks).map(StateAnswer::Limits),
        })
    }
}

/// Rate limits checked in the host's shared state.
fn rate_limit(checks: &[LimitCheck]) -> Result<Vec<LimitStatus>, String> {
    let wit: Vec<state::LimitCheck> = checks
        .iter()
        .map(|c| state::LimitCheck {
            key: c.key.clone(),
            interval_us: c.interval_us,
            burst: c.burst,
        })
        .collect();
    Ok(state::rate_limit(&wit)?
        .into_iter()
        .map(|s| LimitStatus {
            allowed: s.allowed,
            remaining: s.remaining,
            retry_after_us: s.retry_after_us,
            reset_us: s.reset_us,
        })
        .collect())
}

/// Backend health as the host sees it.
pub struct HostHealth;

impl BackendHealth for HostHealth {
    fn is_healthy(&self, backend: BackendId) -> bool {
        match (
            u32::try_from(backend.region.0),
            u32::try_from(backend.index),
        ) {
            (Ok(r), Ok(i)) => health::is_healthy(r, i),
            _ => false,
        }
    }
}

/// The core's audit record as the host takes it (the risk verdict as JSON text).
pub fn decision_record(a: AuditRecord) -> audit::DecisionRecord {
    audit::DecisionRecord {
        time_ms: a.time_ms,
        request_id: a.request_id,
        method: a.method,
        host: a.host,
        path: a.path,
        route: a.route,
        decision: a.decision.to_owned(),
        status: a.status,
        reason: a.reason.map(str::to_owned),
        phase: a.phase.map(str::to_owned),
        issuer: a.issuer,
        subject: a.subject,
        region: a.region,
        backend: a.backend,
        actor: a.actor,
        risk: a.risk.and_then(|r| serde_json::to_string(&r).ok()),
        session: a.session.map(str::to_owned),
        consent: a.consent,
        trace_id: a.trace_id,
        span_id: a.span_id,
        parent_span_id: a.parent_span_id,
        backend_status: a.backend_status,
        backend_us: a.backend_us,
        phases: a
            .phases
            .into_iter()
            .map(|p| audit::PhaseTime {
                phase: p.phase.to_owned(),
                start_us: p.start_us,
                us: p.us,
            })
            .collect(),
    }
}

/// Risk plugins run by the host.
pub struct HostRisk;

impl RiskAssessor for HostRisk {
    /// Runs `plugins` in order on `ctx` (synchronous: the answer is there at once).
    fn now(&self, plugins: &[PluginId], ctx: &RiskContext) -> Option<Vec<PluginAnswer>> {
        Some(portcullis_driver::assess_through!(risk, plugins, ctx))
    }
}
