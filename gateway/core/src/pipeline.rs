//! The pipeline: the one place that lists the order of the phases ([`crate::phase`]).
//!
//! normalize → endpoints → route → limits (before authentication) → authenticate →
//! delegate → limits (after authentication) → risk → authorize → residency → forward →
//! record
//!
//! A decision is a pure function of the configuration, the adapter's services (key sets,
//! state, plugins, provider calls, backend health), the request and the clock.

use http::Method;

use crate::audit::{AuditRecord, PhaseTime};
use crate::authenticate::LocalAuthenticator;
use crate::config::Config;
use crate::crypto::SignatureVerifier;
use crate::decision::{Decision, Forward, Outcome, Response};
use crate::keyset::KeyStore;
use crate::model::{BackendHealth, MonotonicClock, RequestParts};
use crate::phase::{self, Adapters, Ctx, Input, Prepared, Scope};
use crate::time::Timestamp;
use crate::trace::{Trace, hex};

/// The decision pipeline over a validated configuration. Authentication is delegated to
/// the adapters' [`crate::Authenticator`], so the same pipeline runs with local keys or
/// with a host that verifies natively.
#[derive(Debug)]
pub struct Gateway {
    prep: Prepared,
}

impl Gateway {
    /// Builds the pipeline.
    pub fn new(config: Config) -> Self {
        Self {
            prep: Prepared::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.prep.config
    }

    /// True when the adapter should read the request body (at most
    /// [`crate::login::MAX_FORM_BODY`] bytes) into [`RequestParts::body`] before deciding:
    /// only for the back-channel logout endpoint.
    pub fn wants_body(&self, method: &Method, path: &str) -> bool {
        self.prep.session_keys.is_some()
            && method == Method::POST
            && path == crate::login::BACKCHANNEL_PATH
    }

    /// What the gateway itself serves at `path` (its public key set for gateway-signed
    /// tokens), as `(content type, body)`. Adapters answer these before deciding.
    pub fn well_known(&self, path: &str) -> Option<(&'static str, String)> {
        match (&self.prep.config.gateway_token, path) {
            (Some(gt), crate::gateway_token::JWKS_PATH) => {
                Some(("application/jwk-set+json", crate::gateway_token::jwks(gt)))
            }
            _ => None,
        }
    }

    /// Decides what to do with a request with the adapter's services.
    pub fn decide(
        &self,
        services: &Adapters<'_>,
        req: &RequestParts<'_>,
        now: Timestamp,
    ) -> Decision {
        let input = Input {
            prep: &self.prep,
            services,
            req,
            now,
        };
        let trace = Trace::begin(req.headers, services.entropy);
        let mut cx = Ctx {
            audit: AuditRecord {
                time_ms: now.unix_millis(),
                request_id: req.request_id.to_owned(),
                method: req.method.as_str().to_owned(),
                path: req.uri.path().to_owned(),
                decision: "deny",
                trace_id: trace.map(|t| hex(&t.trace_id)),
                span_id: trace.map(|t| hex(&t.span_id)),
                parent_span_id: trace.and_then(|t| t.parent_id).map(|p| hex(&p)),
                ..AuditRecord::default()
            },
            trace,
            ..Ctx::default()
        };
        let (outcome, phase) = match run(input, &mut cx) {
            Ok(forward) => (Outcome::Forward(forward), None),
            Err((phase, response)) => (Outcome::Respond(response), Some(phase)),
        };
        phase::record::finish(&mut cx.audit, &outcome, phase);
        Decision {
            outcome,
            audit: cx.audit,
            refetch: cx.refetch,
        }
    }
}

/// The phases in order. An `Err` is the gateway's own answer and the phase that gave it.
fn run(input: Input<'_>, cx: &mut Ctx) -> Result<Forward, (&'static str, Response)> {
    let mut t = Timer::start(input.services.clock);
    let norm = t.phase(cx, "normalize", |cx| phase::normalize::run(&input, cx))?;
    let scope = Scope::new(input, &norm);
    t.phase(cx, "endpoints", |cx| phase::endpoints::run(&scope, cx))?;
    let route = t.phase(cx, "route", |cx| phase::route::run(&scope, cx))?;
    t.phase(cx, "limits", |cx| {
        phase::limits::before_authentication(&scope, route, cx)
    })?;
    t.phase(cx, "authenticate", |cx| {
        phase::authenticate::run(&scope, route, cx)
    })?;
    t.phase(cx, "delegate", |cx| phase::delegate::run(&scope, route, cx))?;
    t.phase(cx, "limits", |cx| {
        phase::limits::after_authentication(&scope, route, cx)
    })?;
    t.phase(cx, "risk", |cx| phase::risk::run(&scope, route, cx))?;
    t.phase(cx, "authorize", |cx| {
        phase::authorize::run(&scope, route, cx)
    })?;
    let (backend, region) = t.phase(cx, "residency", |cx| {
        phase::residency::run(&scope, route, cx)
    })?;
    t.phase(cx, "forward", |cx| {
        Ok(phase::forward::run(&scope, route, cx, backend, region))
    })
}

/// Times the phases on the adapter's monotonic clock into the audit record.
struct Timer<'a> {
    clock: &'a dyn MonotonicClock,
    origin: Option<u64>,
}

impl<'a> Timer<'a> {
    fn start(clock: &'a dyn MonotonicClock) -> Self {
        Self {
            clock,
            origin: clock.micros(),
        }
    }

    /// Runs phase `name`; an `Err` becomes the gateway's answer from that phase.
    fn phase<T>(
        &mut self,
        cx: &mut Ctx,
        name: &'static str,
        run: impl FnOnce(&mut Ctx) -> Result<T, Response>,
    ) -> Result<T, (&'static str, Response)> {
        debug_assert!(phase::NAMES.contains(&name), "unlisted phase {name}");
        let started = self.clock.micros();
        let result = run(cx);
        if let (Some(origin), Some(started), Some(ended)) =
            (self.origin, started, self.clock.micros())
        {
            cx.audit.phases.push(PhaseTime {
                phase: name,
                start_us: started.saturating_sub(origin),
                us: ended.saturating_sub(started),
            });
        }
        result.map_err(|r| (name, r))
    }
}

/// A [`Gateway`] with a local signature verifier (native hosts, tests, benches).
#[derive(Debug)]
pub struct Engine<V> {
    gateway: Gateway,
    verifier: V,
}

impl<V: SignatureVerifier> Engine<V> {
    /// Builds an engine.
    pub fn new(config: Config, verifier: V) -> Self {
        Self {
            gateway: Gateway::new(config),
            verifier,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.gateway.config()
    }

    /// The pipeline.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The verifier.
    pub fn verifier(&self) -> &V {
        &self.verifier
    }

    /// A key store for this configuration (static keys prepared, remote ones due).
    pub fn new_key_store(&self) -> KeyStore<V::Key> {
        KeyStore::new(self.gateway.config(), &self.verifier)
    }

    /// Decides a request, verifying tokens with `keys` and this engine's verifier, with no
    /// other services (see [`Adapters::new`]).
    pub fn decide(
        &self,
        keys: &KeyStore<V::Key>,
        req: &RequestParts<'_>,
        now: Timestamp,
        health: &dyn BackendHealth,
    ) -> Decision {
        let auth = LocalAuthenticator {
            config: self.gateway.config(),
            keys,
            verifier: &self.verifier,
        };
        self.gateway.decide(&Adapters::new(&auth, health), req, now)
    }
}
