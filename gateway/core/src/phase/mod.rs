//! The phases of a decision, one module each, over one per-request context.
//!
//! [`crate::pipeline`] is the only place that lists their order. A phase reads the request
//! through a [`Scope`] and records what it learned in the [`Ctx`]; it either lets the
//! request go on (`Ok`) or ends the decision with the gateway's own answer (`Err` with a
//! [`Response`]: a refusal, a redirect, or an endpoint's reply).
//!
//! | phase | module | what it does |
//! |---|---|---|
//! | `normalize` | [`normalize`] | canonical path and authority; client identity headers marked for removal |
//! | `endpoints` | [`endpoints`] | the gateway's own endpoints: challenge answers, login, logout, back-channel logout |
//! | `route` | [`route`] | reserved paths refused; the route for host and path |
//! | `limits` | [`limits`] | rate limits, before authentication (per address, route) and after it (per subject, client) |
//! | `authenticate` | [`authenticate`] | bearer or DPoP token, else the session cookie → identity |
//! | `delegate` | [`delegate`] | agents' `act` chains, effective scopes, workload tokens |
//! | `risk` | [`risk`] | built-in bot checks and plugins → allow / step-up / challenge / deny |
//! | `authorize` | [`authorize`] | route rules: scopes, claims, `acr`/`amr`/`auth_time` |
//! | `residency` | [`residency`] | the user's home region → a healthy backend in its jurisdiction |
//! | `forward` | [`forward`] | strip spoofable headers, inject verified identity and a gateway-signed token |
//! | `record` | [`record`] | the audit record's outcome |

mod anomaly;
pub mod authenticate;
pub mod authorize;
pub mod delegate;
pub mod endpoints;
pub mod forward;
pub mod limits;
pub mod normalize;
pub mod record;
pub mod residency;
pub mod risk;
pub mod route;

use http::{HeaderName, HeaderValue};

use crate::audit::AuditRecord;
use crate::authenticate::Authenticator;
use crate::claims::VerifiedIdentity;
use crate::client::ClientInfo;
use crate::config::{Config, HeaderPattern, Route};
use crate::decision::{Response, problem};
use crate::limits::LimitStatus;
use crate::login::Flow;
use crate::model::{
    BackendHealth, Entropy, IssuerId, MonotonicClock, NoClock, NoEntropy, RequestParts,
};
use crate::normalize::Normalized;
use crate::ports::{Client, Io, NoClient, NoState, State};
use crate::ports::{NoPlugins, RiskAssessor};
use crate::reason::Reason;
use crate::session::SessionKeys;
use crate::time::Timestamp;

/// The names of the phases, as code, docs and audit records (`phase`) spell them.
pub const NAMES: [&str; 11] = [
    "normalize",
    "endpoints",
    "route",
    "limits",
    "authenticate",
    "delegate",
    "risk",
    "authorize",
    "residency",
    "forward",
    "record",
];

/// What a phase returns: go on with `T`, or answer with this response.
pub type Step<T = ()> = Result<T, Response>;

/// Everything derived once from a configuration (the pipeline's fixed state).
#[derive(Debug)]
pub struct Prepared {
    /// The configuration.
    pub config: Config,
    /// Header patterns removed from every client request (configured, and every header
    /// the gateway injects).
    pub strip: Vec<HeaderPattern>,
    /// Signs challenges and clearance cookies (derived from the audit key, so every
    /// instance of a deployment accepts the others' cookies).
    pub challenge_key: [u8; 32],
    /// Seals session and login-attempt cookies (`[session]`).
    pub session_keys: Option<SessionKeys>,
}

impl Prepared {
    /// Derives the fixed state. Injected identity headers are always stripped from clients.
    pub fn new(config: Config) -> Self {
        let mut strip = config.identity.strip.clone();
        for (name, _) in &config.identity.headers {
            strip.push(HeaderPattern {
                text: name.as_str().to_owned(),
                prefix: false,
            });
        }
        if let Some(gt) = &config.gateway_token {
            strip.push(HeaderPattern {
                text: gt.header.as_str().to_owned(),
                prefix: false,
            });
        }
        let challenge_key = crate::challenge::derive_key(&config.audit.subject_key);
        // Validated at load (ids, lengths, at least one key), so this cannot fail.
        let session_keys = config
            .session
            .as_ref()
            .and_then(|s| SessionKeys::new(s.keys.clone()).ok());
        Self {
            config,
            strip,
            challenge_key,
            session_keys,
        }
    }
}

/// The adapter's ports for one decision, by capability (see [`crate::ports`]).
/// [`Adapters::new`] gives the fail-closed defaults (no plugins, no shared state, no
/// outbound calls); an adapter sets what it has.
#[derive(Clone, Copy)]
pub struct Adapters<'a> {
    /// Keys: token verification, the providers' endpoints.
    pub auth: &'a dyn Authenticator,
    /// Risk plugins.
    pub risk: &'a dyn RiskAssessor,
    /// The shared state: rate limits, one-time values, sessions, login attempts.
    pub state: &'a dyn State,
    /// Outbound calls: token endpoints, site verification.
    pub client: &'a dyn Client,
    /// Backend health.
    pub health: &'a dyn BackendHealth,
    /// Random bytes: trace and span ids, login state.
    pub entropy: &'a dyn Entropy,
    /// A monotonic clock: phase timings.
    pub clock: &'a dyn MonotonicClock,
}

impl<'a> Adapters<'a> {
    /// Token verification and backend health; everything else absent: routes with risk
    /// plugins apply each plugin's `on_error`, rate limits follow `[state] on_unavailable`,
    /// site verification and browser login are refused, traces are not continued and
    /// decisions carry no phase timings.
    pub fn new(auth: &'a dyn Authenticator, health: &'a dyn BackendHealth) -> Self {
        Self {
            auth,
            risk: &NoPlugins,
            state: &NoState,
            client: &NoClient,
            health,
            entropy: &NoEntropy,
            clock: &NoClock,
        }
    }
}

/// What every phase reads: the fixed state, the adapter's services, the request, the clock.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    /// The pipeline's fixed state.
    pub prep: &'a Prepared,
    /// The adapter's ports.
    pub services: &'a Adapters<'a>,
    /// The decision's exchange with the state and client ports and the random source
    /// (logged, so that a decision that waited can be resumed).
    pub io: &'a Io<'a>,
    /// The request.
    pub req: &'a RequestParts<'a>,
    /// Now.
    pub now: Timestamp,
}

impl<'a> Input<'a> {
    /// The configuration.
    pub fn config(&self) -> &'a Config {
        &self.prep.config
    }

    /// A problem-details refusal for this request.
    pub fn refuse(&self, reason: Reason, detail: &str) -> Response {
        problem(reason, detail, self.req.request_id, &[])
    }
}

/// The request as the phases after `normalize` see it: normalized, its client resolved,
/// the login flow (when sessions are configured) built once.
pub struct Scope<'a> {
    /// The phases' input.
    pub input: Input<'a>,
    /// The normalized request.
    pub norm: &'a Normalized,
    /// The client as far as this hop can tell.
    pub client: ClientInfo,
    /// The browser login flow, when `[session]` is configured.
    pub flow: Option<Flow<'a>>,
}

impl<'a> Scope<'a> {
    /// Resolves the client and builds the login flow for a normalized request.
    pub fn new(input: Input<'a>, norm: &'a Normalized) -> Self {
        let cfg = input.config();
        let req = input.req;
        let client = crate::client::with_peer_hints(
            crate::client::client_info(&cfg.client, req.peer, req.headers),
            req.peer,
            req.peer_hints,
        );
        let flow = match (&cfg.session, &input.prep.session_keys) {
            (Some(session), Some(keys)) => Some(Flow {
                config: cfg,
                session,
                keys,
                io: input.io,
                auth: input.services.auth,
                method: req.method,
                headers: req.headers,
                query: req.uri.query(),
                body: req.body,
                request_id: req.request_id,
                now: input.now,
                authority: &norm.authority,
            }),
            _ => None,
        };
        Self {
            input,
            norm,
            client,
            flow,
        }
    }
}

/// The matched route.
#[derive(Clone, Copy)]
pub struct Matched<'a> {
    /// Its index in the configuration (rate-limit keys name it).
    pub index: usize,
    /// The route.
    pub route: &'a Route,
}

/// What the phases have learned about one request so far (Pingora's CTX).
#[derive(Default)]
pub struct Ctx {
    /// The audit record being written.
    pub audit: AuditRecord,
    /// Set when a token named a `kid` its issuer's key set lacks.
    pub refetch: Option<IssuerId>,
    /// Every rate limit checked, with its status (for the `RateLimit` headers).
    pub limited: Vec<(usize, LimitStatus)>,
    /// The caller, once authenticated (delegation narrows its scopes).
    pub identity: Option<VerifiedIdentity>,
    /// What a browser session adds to the request.
    pub session: SessionUse,
    /// Request headers the delegate phase adds to the removal list (workload tokens).
    pub extra_strip: Vec<HeaderName>,
    /// This request's place in its trace, when the adapter gives random ids.
    pub trace: Option<crate::trace::Trace>,
}

/// What a browser session adds to a request.
#[derive(Default)]
pub struct SessionUse {
    /// `Set-Cookie` values for the response (a refreshed or cleared session).
    pub cookies: Vec<HeaderValue>,
    /// The provider's access token, to forward when `[session] forward_access_token`.
    pub access_token: Option<String>,
    /// The provider the session came from (for step-up logins).
    pub provider: Option<IssuerId>,
    /// The scopes the session's sign-in asked the consent screen for, if it was a consent
    /// login.
    pub consent_asked: Option<String>,
    /// The session id (to revoke it).
    pub sid: Option<String>,
    /// What the session's sign-in showed of the client.
    pub signals: Option<crate::client_signals::ClientSignals>,
    /// The provider's session id.
    pub op_sid: Option<String>,
    /// When the session signed in (Unix seconds).
    pub created: Option<u64>,
}
