//! The risk port: risk plugins, and what they are told about a request.

use crate::claims::VerifiedIdentity;
use crate::model::PluginId;
use crate::model::{Action, ClientInfo};

/// The verified identity as plugins see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RiskIdentity {
    /// `sub` (empty when absent).
    pub subject: String,
    /// `iss`.
    pub issuer: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// `acr`.
    pub acr: Option<String>,
    /// `amr`.
    pub amr: Vec<String>,
    /// `act.sub`.
    pub actor: Option<String>,
    /// `sid`.
    pub session_id: Option<String>,
    /// `client_id`, else `azp`.
    pub client_id: Option<String>,
}

impl RiskIdentity {
    /// Projects a verified identity.
    pub fn of(id: &VerifiedIdentity, issuer: &str) -> Self {
        let text = |name: &str| {
            id.claims
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Self {
            subject: id.subject.clone().unwrap_or_default(),
            issuer: issuer.to_owned(),
            scopes: id.scopes.clone(),
            acr: id.acr.clone(),
            amr: id.amr.clone(),
            actor: id
                .claims
                .get("act")
                .and_then(|a| a.get("sub"))
                .and_then(|s| s.as_str())
                .map(str::to_owned),
            session_id: text("sid"),
            client_id: text("client_id").or_else(|| text("azp")),
        }
    }
}

/// What plugins are given about a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RiskContext {
    /// Request id.
    pub request_id: String,
    /// The matched route's path prefix.
    pub route: String,
    /// Method.
    pub method: String,
    /// Normalised path.
    pub path: String,
    /// Query without `?`.
    pub query: Option<String>,
    /// Host, lowercase, no port.
    pub host: Option<String>,
    /// The headers any of the route's plugins asked for (the adapter passes each plugin
    /// only its own).
    pub headers: Vec<(String, String)>,
    /// The verified identity.
    pub identity: Option<RiskIdentity>,
    /// The client as resolved through `[client]` (address, CDN country and ASN).
    pub client: ClientInfo,
    /// The session the request belongs to, if any.
    pub session: Option<RiskSession>,
}

/// The session a request belongs to, as plugins see it: pseudonymous ids (keyed with the
/// audit key: stable, linkable, useless for resuming anything), its age and its sign-in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RiskSession {
    /// The gateway's browser session, or the provider session a token names (`sid`).
    pub id: String,
    /// The provider's session behind it (one for a browser session and the app tokens of
    /// one sign-in).
    pub provider_session: Option<String>,
    /// True for the gateway's browser session.
    pub browser: bool,
    /// Seconds since the sign-in (a browser session's, or a token's `auth_time`).
    pub age_secs: Option<u32>,
    /// What the sign-in showed of the client (browser sessions).
    pub sign_in: Option<RiskSignals>,
}

/// What a request showed of its client, as plugins see it (a browser session's sign-in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RiskSignals {
    /// The IPv4 /24 or IPv6 /64.
    pub network: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
    /// Browser family and major version (`Chrome/131`).
    pub agent: Option<String>,
    /// The `Sec-CH-UA-Platform` hint.
    pub platform: Option<String>,
}

/// One plugin's assessment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// 0..=100.
    pub score: u8,
    /// Labels.
    pub labels: Vec<String>,
    /// Suggested action.
    pub action: Action,
    /// Why.
    pub reason: String,
}

/// One plugin's answer: an assessment, or why it has none.
pub type PluginAnswer = Result<Assessment, String>;

/// Runs plugins (the adapter's side).
pub trait RiskAssessor {
    /// Runs `plugins` in order on `ctx` at once when this adapter can (plugins linked in,
    /// a synchronous host call): one answer per plugin, in the same order. `None` when the
    /// plugins must be awaited (an asynchronous plugin runtime): the decision suspends with
    /// them as its need, and the adapter runs them and resumes.
    fn now(&self, plugins: &[PluginId], ctx: &RiskContext) -> Option<Vec<PluginAnswer>>;
}

/// An adapter without a plugin runtime: every plugin "fails", so `on_error` decides.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPlugins;

impl RiskAssessor for NoPlugins {
    fn now(&self, plugins: &[PluginId], _: &RiskContext) -> Option<Vec<PluginAnswer>> {
        Some(failed(plugins, "this adapter has no plugin runtime"))
    }
}

/// One failure per plugin: `on_error` decides for each.
pub fn failed(plugins: &[PluginId], why: &str) -> Vec<PluginAnswer> {
    plugins.iter().map(|_| Err(why.to_owned())).collect()
}
