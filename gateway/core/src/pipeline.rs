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
use crate::decision::{Decision, Forward, Outcome, Response, problem};
use crate::keyset::KeyStore;
use crate::model::{BackendHealth, MonotonicClock, RequestParts};
use crate::phase::{self, Adapters, Ctx, Input, Prepared, Scope};
use crate::ports::io::Entry;
use crate::ports::{Answer, Io, Suspended};
use crate::reason::Reason;
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
    /// [`crate::login::wants_body`] of this gateway's configuration.
    pub fn wants_body(&self, method: &Method, path: &str) -> bool {
        crate::login::wants_body(&self.prep.config, method, path)
    }

    /// What the gateway itself serves at `path` (its public key set for gateway-signed
    /// tokens; its login clients' keys for `private_key_jwt`), as `(content type, body)`.
    /// Adapters answer these before deciding.
    pub fn well_known(&self, path: &str) -> Option<(&'static str, String)> {
        let config = &self.prep.config;
        match (&config.gateway_token, path) {
            (Some(gt), crate::gateway_token::JWKS_PATH) => {
                Some(("application/jwk-set+json", crate::gateway_token::jwks(gt)))
            }
            (_, crate::client_auth::CLIENT_JWKS_PATH) => {
                let methods = || {
                    config
                        .issuers
                        .iter()
                        .filter_map(|i| i.login.as_ref().map(|l| &l.client_auth))
                };
                methods()
                    .any(|m| matches!(m, crate::client_auth::ClientAuth::PrivateKeyJwt(_)))
                    .then(|| {
                        (
                            "application/jwk-set+json",
                            crate::client_auth::jwks(methods()),
                        )
                    })
            }
            _ => None,
        }
    }

    /// Decides a request with ports that answer at once (see [`crate::ports`]): an
    /// operation a port could only perform by waiting fails (closed). Adapters whose ports
    /// wait use [`Gateway::start`] and [`Gateway::resume`].
    pub fn decide(
        &self,
        services: &Adapters<'_>,
        req: &RequestParts<'_>,
        now: Timestamp,
    ) -> Decision {
        let mut progress = self.start(services, req, now);
        loop {
            match progress {
                Progress::Decided(d) => return d,
                Progress::Waiting(w) => {
                    let answer = Answer::failed(w.need(), "this adapter cannot wait for it");
                    progress = self.resume(services, req, w, answer);
                }
            }
        }
    }

    /// Starts deciding a request: the decision, or the operation it waits for.
    pub fn start(
        &self,
        services: &Adapters<'_>,
        req: &RequestParts<'_>,
        now: Timestamp,
    ) -> Progress {
        self.run_from(services, req, Resume::start(now, services.clock))
    }

    /// Resumes a decision that waited, with the answer to what it needed. `services` and
    /// `req` are those it was started with.
    pub fn resume(
        &self,
        services: &Adapters<'_>,
        req: &RequestParts<'_>,
        waiting: Suspended,
        answer: Answer,
    ) -> Progress {
        let Suspended {
            mut log,
            need,
            now,
            origin,
            waits,
        } = waiting;
        log.push(Entry::Io(need, answer));
        self.run_from(
            services,
            req,
            Resume {
                log,
                now,
                origin,
                waits,
            },
        )
    }

    fn run_from(&self, services: &Adapters<'_>, req: &RequestParts<'_>, from: Resume) -> Progress {
        // A trusted proxy's forward-auth call is decided as the request it describes.
        let original = match crate::forward_auth::described(&self.prep.config, req) {
            None => None,
            Some(Ok(original)) => Some(original),
            Some(Err(refusal)) => return self.refused_call(req, &from, refusal),
        };
        let described;
        let req = match &original {
            Some(o) => {
                described = o.parts(req);
                &described
            }
            None => req,
        };
        let Resume {
            log,
            now,
            origin,
            waits,
        } = from;
        let io = Io::new(
            services.state,
            services.client,
            services.risk,
            services.entropy,
            log,
            waits < MAX_WAITS,
        );
        let input = Input {
            prep: &self.prep,
            services,
            io: &io,
            req,
            now,
        };
        let trace = Trace::begin(req.headers, &io);
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
        let mut timer = Timer {
            clock: services.clock,
            origin,
        };
        let (outcome, phase) = match run(input, &mut cx, &mut timer) {
            Ok(forward) => (Outcome::Forward(forward), None),
            Err(Stop::Answer(phase, response)) => (Outcome::Respond(response), Some(phase)),
            Err(Stop::Wait) => {
                if let Some((log, need)) = io.suspend() {
                    return Progress::Waiting(Suspended {
                        log,
                        need,
                        now,
                        origin: timer.origin,
                        waits: waits + 1,
                    });
                }
                // Unreachable: the pipeline stops to wait only when the exchange waits.
                let r = problem(
                    Reason::StateUnavailable,
                    "the decision lost its wait",
                    req.request_id,
                    &[],
                );
                (Outcome::Respond(r), None)
            }
        };
        phase::record::finish(&mut cx.audit, &outcome, phase);
        let outcome = match (outcome, &self.prep.config.forward_auth) {
            (Outcome::Forward(fwd), Some(fa)) if original.is_some() => {
                Outcome::Respond(crate::forward_auth::answer(&self.prep.config, fa, fwd))
            }
            (outcome, _) => outcome,
        };
        Progress::Decided(Decision {
            outcome,
            audit: cx.audit,
            refetch: cx.refetch,
        })
    }
}

impl Gateway {
    /// The decision on a forward-auth call refused before its request was described.
    fn refused_call(&self, req: &RequestParts<'_>, from: &Resume, refusal: Response) -> Progress {
        let mut audit = AuditRecord {
            time_ms: from.now.unix_millis(),
            request_id: req.request_id.to_owned(),
            method: req.method.as_str().to_owned(),
            path: req.uri.path().to_owned(),
            ..AuditRecord::default()
        };
        let outcome = Outcome::Respond(refusal);
        phase::record::finish(&mut audit, &outcome, Some("normalize"));
        Progress::Decided(Decision {
            outcome,
            audit,
            refetch: None,
        })
    }
}

/// How often one decision may wait before its ports must answer at once (a back-channel
/// logout revoking a subject's sessions waits once per session).
const MAX_WAITS: u32 = 256;

/// Where a run of the pipeline starts: fresh, or replaying a decision's log.
struct Resume {
    log: Vec<Entry>,
    now: Timestamp,
    origin: Option<u64>,
    waits: u32,
}

impl Resume {
    fn start(now: Timestamp, clock: &dyn MonotonicClock) -> Self {
        Self {
            log: Vec::new(),
            now,
            origin: clock.micros(),
            waits: 0,
        }
    }
}

/// A decision made, or waiting for its adapter to perform an operation.
// Decided is the common case: boxing it would allocate on every request to save a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Progress {
    /// Decided.
    Decided(Decision),
    /// Waiting: perform [`Suspended::need`], then [`Gateway::resume`].
    Waiting(Suspended),
}

/// Why the phases stopped before forwarding.
enum Stop {
    /// The gateway's own answer, and the phase that gave it.
    Answer(&'static str, Response),
    /// A port must be waited for.
    Wait,
}

/// The phases in order. An `Err` is the gateway's own answer and the phase that gave it,
/// or a wait.
fn run(input: Input<'_>, cx: &mut Ctx, t: &mut Timer<'_>) -> Result<Forward, Stop> {
    let io = input.io;
    let norm = t.phase(io, cx, "normalize", |cx| phase::normalize::run(&input, cx))?;
    let scope = Scope::new(input, &norm);
    t.phase(io, cx, "endpoints", |cx| phase::endpoints::run(&scope, cx))?;
    let route = t.phase(io, cx, "route", |cx| phase::route::run(&scope, cx))?;
    t.phase(io, cx, "limits", |cx| {
        phase::limits::before_authentication(&scope, route, cx)
    })?;
    t.phase(io, cx, "authenticate", |cx| {
        phase::authenticate::run(&scope, route, cx)
    })?;
    t.phase(io, cx, "delegate", |cx| {
        phase::delegate::run(&scope, route, cx)
    })?;
    t.phase(io, cx, "limits", |cx| {
        phase::limits::after_authentication(&scope, route, cx)
    })?;
    t.phase(io, cx, "risk", |cx| phase::risk::run(&scope, route, cx))?;
    t.phase(io, cx, "authorize", |cx| {
        phase::authorize::run(&scope, route, cx)
    })?;
    let (backend, region) = t.phase(io, cx, "residency", |cx| {
        phase::residency::run(&scope, route, cx)
    })?;
    t.phase(io, cx, "forward", |cx| {
        phase::forward::run(&scope, route, cx, backend, region)
    })
}

/// Times the phases on the adapter's monotonic clock into the audit record.
struct Timer<'a> {
    clock: &'a dyn MonotonicClock,
    /// When the decision started (its first run, when it waited).
    origin: Option<u64>,
}

impl Timer<'_> {
    /// Runs phase `name`; an `Err` becomes the gateway's answer from that phase. A phase
    /// whose exchange began to wait stops the run, whatever it returned.
    fn phase<T>(
        &mut self,
        io: &Io<'_>,
        cx: &mut Ctx,
        name: &'static str,
        run: impl FnOnce(&mut Ctx) -> Result<T, Response>,
    ) -> Result<T, Stop> {
        debug_assert!(phase::NAMES.contains(&name), "unlisted phase {name}");
        let started = self.clock.micros();
        let result = run(cx);
        if io.waiting() {
            return Err(Stop::Wait);
        }
        if let (Some(origin), Some(started), Some(ended)) =
            (self.origin, started, self.clock.micros())
        {
            cx.audit.phases.push(PhaseTime {
                phase: name,
                start_us: started.saturating_sub(origin),
                us: ended.saturating_sub(started),
            });
        }
        result.map_err(|r| Stop::Answer(name, r))
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

    /// Token verification with `keys` and this engine's verifier (the adapters' keys port).
    pub fn authenticator<'a>(&'a self, keys: &'a KeyStore<V::Key>) -> LocalAuthenticator<'a, V> {
        LocalAuthenticator {
            config: self.gateway.config(),
            keys,
            verifier: &self.verifier,
        }
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
        let auth = self.authenticator(keys);
        self.gateway.decide(&Adapters::new(&auth, health), req, now)
    }
}
