//! The pipeline: normalize → authenticate (with delegation and DPoP) → assess risk →
//! authorize → route → forward → record, as one pure function of configuration, key state,
//! request, clock, backend health and the adapter's services (plugins, one-time values).

use std::net::IpAddr;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde_json::Value;

use crate::audit::{AuditRecord, pseudonymize};
use crate::authenticate::{Authenticator, LocalAuthenticator, TokenScheme, access_token};
use crate::claims::VerifiedIdentity;
use crate::client::{ClientInfo, client_info};
use crate::config::{
    AuthMode, Config, FailPolicy, HeaderPattern, IdentitySource, LimitKey, Region, Route, RouteRisk,
};
use crate::crypto::SignatureVerifier;
use crate::decision::{BackendId, Decision, Forward, Outcome, Response, problem};
use crate::delegation::{self, actor_chain};
use crate::keyset::{IssuerId, KeyStore};
use crate::limits::{LimitCheck, LimitStatus, Limiter, NoLimiter};
use crate::normalize::{Normalized, normalize};
use crate::policy::{authorize, match_route};
use crate::reason::Reason;
use crate::residency::{choose_backend, home_region};
use crate::risk::{
    Action, NoPlugins, RiskAssessor, RiskContext, RiskIdentity, RiskVerdict, combine_with,
};
use crate::time::Timestamp;

/// The parts of a request the engine reads. Adapters borrow them from their own request
/// type; nothing is copied.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    /// Method.
    pub method: &'a Method,
    /// Request target (origin-form or absolute).
    pub uri: &'a Uri,
    /// Headers as received.
    pub headers: &'a HeaderMap,
    /// The adapter's request id (for problem details, audit and backend spread).
    pub request_id: &'a str,
    /// The connecting peer's address, when the adapter knows it (the client's address is
    /// taken from proxy headers only when this peer is a trusted proxy).
    pub peer: Option<IpAddr>,
    /// The request body, read by the adapter only where [`Gateway::wants_body`] says so
    /// (the back-channel logout endpoint); empty otherwise.
    pub body: &'a [u8],
}

/// Backend health as the adapter knows it (health checks, circuit breakers).
pub trait BackendHealth {
    /// True when `backend` may receive requests.
    fn is_healthy(&self, backend: BackendId) -> bool;
}

/// Every backend healthy (adapters without health checks, tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllHealthy;

impl BackendHealth for AllHealthy {
    fn is_healthy(&self, _: BackendId) -> bool {
        true
    }
}

/// The decision pipeline over a validated configuration. Authentication is delegated to an
/// [`Authenticator`], so the same pipeline runs with local keys or with a host that
/// verifies natively.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    strip: Vec<HeaderPattern>,
    /// Signs challenges and clearance cookies (derived from the audit key, so every
    /// instance of a deployment accepts the others' cookies).
    challenge_key: [u8; 32],
    /// Seals session and login-attempt cookies (`[session]`).
    session_keys: Option<crate::session::SessionKeys>,
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
        &self.gateway.config
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
        KeyStore::new(&self.gateway.config, &self.verifier)
    }

    /// Decides a request, verifying tokens with `keys` and this engine's verifier.
    pub fn decide(
        &self,
        keys: &KeyStore<V::Key>,
        req: &RequestParts<'_>,
        now: Timestamp,
        health: &dyn BackendHealth,
    ) -> Decision {
        let auth = LocalAuthenticator {
            config: &self.gateway.config,
            keys,
            verifier: &self.verifier,
        };
        self.gateway.decide(&auth, req, now, health)
    }
}

impl Gateway {
    /// Builds the pipeline. Injected identity headers are always stripped from clients too.
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
            .and_then(|s| crate::session::SessionKeys::new(s.keys.clone()).ok());
        Self {
            config,
            strip,
            challenge_key,
            session_keys,
        }
    }

    /// True when the adapter should read the request body (at most
    /// [`crate::login::MAX_FORM_BODY`] bytes) into [`RequestParts::body`] before deciding:
    /// only for the back-channel logout endpoint.
    pub fn wants_body(&self, method: &Method, path: &str) -> bool {
        self.session_keys.is_some()
            && method == Method::POST
            && path == crate::login::BACKCHANNEL_PATH
    }

    fn login_flow<'a>(
        &'a self,
        services: &'a Adapters<'a>,
        req: &'a RequestParts<'a>,
        norm: &'a Normalized,
        now: Timestamp,
    ) -> Option<crate::login::Flow<'a>> {
        Some(crate::login::Flow {
            config: &self.config,
            session: self.config.session.as_ref()?,
            keys: self.session_keys.as_ref()?,
            services: services.login,
            auth: services.auth,
            method: req.method,
            headers: req.headers,
            query: req.uri.query(),
            body: req.body,
            request_id: req.request_id,
            now,
            authority: &norm.authority,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the gateway itself serves at `path` (its public key set for gateway-signed
    /// tokens), as `(content type, body)`. Adapters answer these before deciding.
    pub fn well_known(&self, path: &str) -> Option<(&'static str, String)> {
        match (&self.config.gateway_token, path) {
            (Some(gt), crate::gateway_token::JWKS_PATH) => {
                Some(("application/jwk-set+json", crate::gateway_token::jwks(gt)))
            }
            _ => None,
        }
    }

    /// Decides what to do with a request, without a plugin runtime: routes with risk
    /// plugins apply each plugin's `on_error` policy.
    pub fn decide(
        &self,
        auth: &dyn Authenticator,
        req: &RequestParts<'_>,
        now: Timestamp,
        health: &dyn BackendHealth,
    ) -> Decision {
        self.decide_with(auth, &NoPlugins, req, now, health)
    }

    /// Decides what to do with a request, running risk plugins through `risk`, without
    /// shared state: routes with rate limits follow `[state] on_unavailable`.
    pub fn decide_with(
        &self,
        auth: &dyn Authenticator,
        risk: &dyn RiskAssessor,
        req: &RequestParts<'_>,
        now: Timestamp,
        health: &dyn BackendHealth,
    ) -> Decision {
        let adapters = Adapters {
            auth,
            risk,
            limiter: &NoLimiter,
            sites: &crate::challenge::NoSiteVerifier,
            login: &crate::login::NoLogin,
            health,
        };
        self.decide_using(&adapters, req, now)
    }

    /// Decides what to do with a request with all of the adapter's services.
    pub fn decide_using(
        &self,
        services: &Adapters<'_>,
        req: &RequestParts<'_>,
        now: Timestamp,
    ) -> Decision {
        let mut audit = AuditRecord {
            time_ms: now.unix_millis(),
            request_id: req.request_id.to_owned(),
            method: req.method.as_str().to_owned(),
            path: req.uri.path().to_owned(),
            decision: "deny",
            ..AuditRecord::default()
        };
        let mut refetch = None;
        let outcome = self.run(services, req, now, &mut audit, &mut refetch);
        match &outcome {
            Outcome::Forward(_) => audit.decision = "forward",
            // The gateway's own redirects (a solved challenge, login) are not refusals.
            Outcome::Respond(r) if r.status.is_redirection() => {
                audit.decision = "redirect";
                audit.status = Some(r.status.as_u16());
            }
            // Its own endpoints' successful answers (back-channel logout).
            Outcome::Respond(r) if r.status.is_success() => {
                audit.decision = "answer";
                audit.status = Some(r.status.as_u16());
            }
            Outcome::Respond(r) => {
                audit.status = Some(r.status.as_u16());
                audit.reason = Some(r.reason.code());
            }
        }
        Decision {
            outcome,
            audit,
            refetch,
        }
    }

    fn run(
        &self,
        services: &Adapters<'_>,
        req: &RequestParts<'_>,
        now: Timestamp,
        audit: &mut AuditRecord,
        refetch: &mut Option<IssuerId>,
    ) -> Outcome {
        let deny = |reason: Reason, detail: &str| {
            Outcome::Respond(problem(reason, detail, req.request_id, &[]))
        };
        let cfg = &self.config;
        let (auth, health) = (services.auth, services.health);

        // 1. normalize
        let norm = match normalize(req, &self.strip, &cfg.paths) {
            Ok(n) => n,
            Err((reason, detail)) => return deny(reason, &detail),
        };
        audit.path.clone_from(&norm.path);
        audit.host = Some(norm.authority.host.clone());
        let client = client_info(&cfg.client, req.peer, req.headers);
        // 1a. the gateway's own endpoints
        if norm.path == crate::challenge::CHALLENGE_PATH {
            return Outcome::Respond(self.challenge_answer(req, &client, now, services));
        }
        if let Some(flow) = self.login_flow(services, req, &norm, now) {
            let answer = match norm.path.as_str() {
                crate::login::CALLBACK_PATH => Some(flow.callback()),
                crate::login::LOGIN_PATH => Some(flow.start()),
                crate::login::LOGOUT_PATH => Some(flow.logout()),
                crate::login::BACKCHANNEL_PATH => Some(flow.backchannel()),
                _ => None,
            };
            if let Some(r) = answer {
                return Outcome::Respond(r);
            }
        }
        // Gateway paths are refused in every ASCII case: a case-insensitive backend would
        // serve `/_PORTCULLIS/…` as `/_portcullis/…`.
        if norm
            .route_path()
            .get(..INTERNAL_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(INTERNAL_PREFIX))
        {
            return deny(Reason::RouteNotFound, "no such gateway endpoint");
        }
        let Some((route_index, route)) = match_route(
            &cfg.routes,
            &norm.authority.host,
            norm.route_path(),
            cfg.paths.case_sensitive,
        )
        .and_then(|i| cfg.routes.get(i).map(|r| (i, r))) else {
            return deny(Reason::RouteNotFound, "no route matches this host and path");
        };
        audit.route = Some(route.path.clone());

        // 1b. rate limits that need no identity (refused credentials count too)
        let mut limited = Vec::new();
        if let Some(refusal) = self.check_limits(
            services.limiter,
            (route_index, route),
            LimitPhase::BeforeAuthentication,
            &client,
            None,
            req,
            now,
            &mut limited,
        ) {
            return Outcome::Respond(refusal);
        }

        // 2. authenticate: a token, else (on login routes) the session cookie
        let mut session_cookies: Vec<HeaderValue> = Vec::new();
        let mut session_access_token: Option<String> = None;
        let mut from_session: Option<IssuerId> = None;
        let mut identity = if route.auth == AuthMode::Public {
            None
        } else {
            let presented = match access_token(req.headers) {
                Ok(t) => t,
                Err(f) => return deny(f.reason, &f.detail),
            };
            match presented {
                None if !route.login.is_empty() => {
                    let Some(flow) = self.login_flow(services, req, &norm, now) else {
                        return deny(Reason::ProviderUnavailable, "sessions are not configured");
                    };
                    match flow.lookup(&route.login, cfg.state.on_unavailable == FailPolicy::Allow) {
                        crate::login::Lookup::Session(found) => {
                            audit.session = Some(found.event);
                            session_cookies = found.set_cookies;
                            session_access_token = found.access_token;
                            from_session = Some(found.provider);
                            Some(found.identity)
                        }
                        crate::login::Lookup::Refuse(r) => return Outcome::Respond(r),
                        crate::login::Lookup::Absent { clear, why } => {
                            audit.session = Some(why);
                            if route.auth == AuthMode::Required {
                                return Outcome::Respond(flow.login_required(
                                    &route.login,
                                    &norm.path_and_query,
                                    clear,
                                ));
                            }
                            session_cookies = clear;
                            None
                        }
                    }
                }
                None if route.auth == AuthMode::Required => {
                    let reason = if route.require_dpop {
                        Reason::DpopRequired
                    } else {
                        Reason::AuthenticationRequired
                    };
                    return deny(reason, "this route needs an access token");
                }
                None => None,
                Some((TokenScheme::Bearer, _)) if route.require_dpop => {
                    return deny(
                        Reason::DpopRequired,
                        "this route accepts only DPoP-bound tokens (Authorization: DPoP)",
                    );
                }
                Some((scheme, token)) => {
                    let proof = if scheme == TokenScheme::Dpop {
                        match self.dpop_proof(req, &norm, token, now, auth) {
                            Ok(p) => Some(p),
                            Err(detail) => return deny(Reason::DpopProofInvalid, &detail),
                        }
                    } else {
                        None
                    };
                    if let Some(p) = &proof
                        && cfg.dpop.require_nonce
                        && !p.nonce.as_deref().is_some_and(|n| {
                            crate::dpop::nonce_valid(&cfg.audit.subject_key, n, now)
                        })
                    {
                        let mut r = problem(
                            Reason::DpopNonceRequired,
                            "send the proof again with the nonce from the DPoP-Nonce header",
                            req.request_id,
                            &[],
                        );
                        let fresh = crate::dpop::nonce(&cfg.audit.subject_key, now);
                        if let Ok(v) = HeaderValue::from_str(&fresh) {
                            r.headers
                                .push((http::HeaderName::from_static("dpop-nonce"), v));
                        }
                        return Outcome::Respond(r);
                    }
                    let id = match auth.authenticate(token, &route.issuers, now) {
                        Ok(id) => id,
                        Err(f) => {
                            if let Some(i) = f.issuer {
                                audit.issuer = cfg.issuers.get(i.0).map(|c| c.name.clone());
                            }
                            if f.unknown_kid {
                                *refetch = f.issuer;
                            }
                            return deny(f.reason, &f.detail);
                        }
                    };
                    let bound = id
                        .claims
                        .get("cnf")
                        .and_then(|c| c.get("jkt"))
                        .and_then(Value::as_str);
                    match (bound, &proof) {
                        (Some(jkt), Some(p)) if jkt == p.jkt => {}
                        (Some(_), Some(_)) => {
                            return deny(
                                Reason::DpopProofInvalid,
                                "the token is bound to another key than the proof's",
                            );
                        }
                        (Some(_), None) => {
                            return deny(
                                Reason::DpopRequired,
                                "this token is DPoP-bound: send it as Authorization: DPoP with a proof",
                            );
                        }
                        (None, Some(_)) => {
                            return deny(
                                Reason::DpopProofInvalid,
                                "the token is not DPoP-bound (no cnf.jkt)",
                            );
                        }
                        (None, None) => {}
                    }
                    // Last, so that refused requests do not use up proof ids.
                    if let Some(p) = &proof
                        && !auth.first_use(
                            &format!("dpop/{}/{}", p.jkt, p.jti),
                            cfg.dpop.max_age.saturating_mul(2),
                        )
                    {
                        return deny(
                            Reason::DpopProofInvalid,
                            "this DPoP proof was already used (replay)",
                        );
                    }
                    Some(id)
                }
            }
        };
        if let Some(id) = &identity {
            let issuer = cfg.issuers.get(id.issuer.0);
            audit.issuer = issuer.map(|c| c.name.clone());
            audit.subject = match (issuer, &id.subject) {
                (Some(i), Some(sub)) => Some(pseudonymize(&cfg.audit.subject_key, &i.issuer, sub)),
                _ => None,
            };
        }

        // 2b. delegation: agents acting for the user
        let mut extra_strip = Vec::new();
        if let Some(id) = identity.as_mut() {
            let max_depth = route.agents.as_ref().map_or(1, |a| a.max_depth);
            let chain = match actor_chain(id, max_depth) {
                Ok(c) => c,
                Err((reason, detail)) => return deny(reason, &detail),
            };
            if !chain.is_empty() {
                audit.actor = Some(delegation::describe(&chain));
                if let Err((reason, detail)) = delegation::apply(
                    route.agents.as_ref(),
                    &route.scopes_any,
                    &route.scopes_all,
                    &chain,
                    id,
                ) {
                    return deny(reason, &detail);
                }
                if let Some(rules) = &route.agents
                    && let Some(header) = &rules.workload_header
                {
                    extra_strip.push(header.clone());
                    match req.headers.get(header).map(|v| v.to_str()) {
                        Some(Ok(token)) => {
                            let workload = match auth.authenticate(token, &[], now) {
                                Ok(w) => w,
                                Err(f) => {
                                    return deny(
                                        f.reason,
                                        &format!("workload token: {}", f.detail),
                                    );
                                }
                            };
                            let actor = chain.first().map(delegation::Actor::name).unwrap_or("");
                            if workload.subject.as_deref() != Some(actor) {
                                return deny(
                                    Reason::ActorMismatch,
                                    &format!(
                                        "the workload token is for {:?}, the delegation names the actor {actor:?}",
                                        workload.subject.as_deref().unwrap_or("")
                                    ),
                                );
                            }
                        }
                        Some(Err(_)) => {
                            return deny(
                                Reason::InvalidRequest,
                                "the workload token header is not text",
                            );
                        }
                        None if rules.require_workload => {
                            return deny(
                                Reason::ActorMismatch,
                                &format!("agents must present their workload token in `{header}`"),
                            );
                        }
                        None => {}
                    }
                }
            }
        }

        // 2c. rate limits per subject and client
        if let Some(refusal) = self.check_limits(
            services.limiter,
            (route_index, route),
            LimitPhase::AfterAuthentication,
            &client,
            identity.as_ref(),
            req,
            now,
            &mut limited,
        ) {
            return Outcome::Respond(refusal);
        }

        // 3. assess risk: built-in bot checks and plugins (which see the effective
        // identity), before authorization
        if let Some(risk) = &route.risk {
            let signals = crate::bot::evaluate(
                &cfg.bot,
                &risk.checks,
                &crate::bot::BotInput {
                    headers: req.headers,
                    client_ip: client.ip,
                    asn: client.asn,
                },
            );
            let answers = if risk.plugins.is_empty() {
                Vec::new()
            } else {
                let ctx = self.risk_context(req, &norm, route, identity.as_ref(), &client);
                services.risk.assess(&risk.plugins, &ctx)
            };
            let mut verdict = combine_with(cfg, risk, signals, answers);
            let refusal = match verdict.action {
                Action::Challenge if verdict.failed.is_none() => {
                    let (refusal, clearance) =
                        self.challenge(req, &norm, &client, now, &verdict, risk);
                    verdict.clearance = clearance;
                    refusal
                }
                _ => risk_refusal(&verdict, risk, identity.as_ref(), req.request_id),
            };
            audit.risk = Some(verdict);
            if let Some(response) = refusal {
                return Outcome::Respond(response);
            }
        }

        // 4. authorize
        if let Some(id) = &identity
            && let Err(refusal) = authorize(route, id, now)
        {
            // A browser session that is not strong or recent enough logs in again with
            // the provider, asking for it (RFC 9470 §4); scripts get the RFC 9470 error.
            if let Some(provider) = from_session
                && refusal.reason == Reason::InsufficientUserAuthentication
                && crate::login::is_navigation(req.method, req.headers)
                && let Some(flow) = self.login_flow(services, req, &norm, now)
            {
                return Outcome::Respond(flow.begin(
                    provider,
                    &norm.path_and_query,
                    &crate::login::StepUp::from_challenge(&refusal.challenge),
                ));
            }
            return Outcome::Respond(problem(
                refusal.reason,
                &refusal.detail,
                req.request_id,
                &refusal.challenge,
            ));
        }

        // 5. route
        let home = match home_region(cfg, identity.as_ref()) {
            Ok(r) => r,
            Err((reason, detail)) => return deny(reason, &detail),
        };
        if !route.regions.is_empty() && !route.regions.contains(&home) {
            let name = cfg.regions.get(home.0).map_or("", |r| r.name.as_str());
            return deny(
                Reason::ResidencyNotPermitted,
                &format!("this route is not offered in region `{name}`"),
            );
        }
        let backend = match choose_backend(cfg, home, health, fnv1a(req.request_id)) {
            Ok(b) => b,
            Err((reason, detail)) => return deny(reason, &detail),
        };
        let Some(region) = cfg.regions.get(backend.region.0) else {
            return deny(Reason::ResidencyUnavailable, "backend region vanished");
        };
        audit.region = Some(region.name.clone());
        audit.backend = region.backends.get(backend.index).map(|b| b.url.clone());

        // 6. forward: strip spoofable headers, inject verified identity
        let mut remove_headers = norm.strip;
        if !cfg.identity.forward_authorization && req.headers.contains_key(AUTHORIZATION) {
            remove_headers.push(AUTHORIZATION);
        }
        for h in extra_strip {
            if req.headers.contains_key(&h) && !remove_headers.contains(&h) {
                remove_headers.push(h);
            }
        }
        let (forward_remove, forward_set) = crate::forwarding::headers(
            &cfg.client,
            &crate::forwarding::Hop {
                peer: req.peer,
                authority: &norm.authority,
                scheme: &norm.scheme,
            },
            req.headers,
        );
        for h in forward_remove {
            if !remove_headers.contains(&h) {
                remove_headers.push(h);
            }
        }
        let mut set_headers = forward_set;
        set_headers.extend(self.identity_headers(identity.as_ref(), region));
        if let Some(sc) = &cfg.session {
            match crate::login::strip_own_cookies(req.headers, &sc.cookie) {
                None => {}
                Some(Some(v)) => set_headers.push((http::header::COOKIE, v)),
                Some(None) => remove_headers.push(http::header::COOKIE),
            }
            if sc.forward_access_token
                && let Some(v) = session_access_token
                    .as_deref()
                    .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
            {
                remove_headers.retain(|h| h != AUTHORIZATION);
                set_headers.push((AUTHORIZATION, v));
            }
        }
        if let (Some(gt), Some(id), Some(backend_cfg)) = (
            &cfg.gateway_token,
            identity.as_ref(),
            region.backends.get(backend.index),
        ) {
            let token = self.gateway_token(gt, id, region, &backend_cfg.url, req.request_id, now);
            if let Some(v) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
                set_headers.push((gt.header.clone(), v));
            }
        }
        Outcome::Forward(Forward {
            backend,
            path_and_query: norm.path_and_query,
            remove_headers,
            set_headers,
            response_headers: {
                let mut h = limit_headers(route, &limited);
                if !session_cookies.is_empty() {
                    // Never stored by a shared cache: it carries the user's session.
                    h.push((
                        http::header::CACHE_CONTROL,
                        HeaderValue::from_static("private, no-store"),
                    ));
                }
                h.extend(
                    session_cookies
                        .into_iter()
                        .map(|c| (http::header::SET_COOKIE, c)),
                );
                h
            },
        })
    }

    /// Checks the route's rate limits of one phase as one atomic step. Records the
    /// statuses in `limited`; a refusal is the 429 (or 503 when the state is unreachable
    /// and `on_unavailable = "deny"`).
    #[allow(clippy::too_many_arguments)]
    fn check_limits(
        &self,
        limiter: &dyn Limiter,
        (route_index, route): (usize, &Route),
        phase: LimitPhase,
        client: &ClientInfo,
        identity: Option<&VerifiedIdentity>,
        req: &RequestParts<'_>,
        now: Timestamp,
        limited: &mut Vec<(usize, LimitStatus)>,
    ) -> Option<Response> {
        let cfg = &self.config;
        let mut which = Vec::new();
        let mut checks = Vec::new();
        for (i, limit) in route.rate_limits.iter().enumerate() {
            if limit.key.before_authentication() != (phase == LimitPhase::BeforeAuthentication) {
                continue;
            }
            let counted = match limit.key {
                LimitKey::Ip => Some(match client.ip {
                    Some(ip) => format!("ip:{}", limit_address(ip)),
                    None => "ip:unknown".to_owned(),
                }),
                LimitKey::Route => Some("all".to_owned()),
                LimitKey::Subject => identity.and_then(|id| {
                    let issuer = cfg.issuers.get(id.issuer.0)?;
                    let sub = id.subject.as_deref()?;
                    Some(format!(
                        "sub:{}",
                        pseudonymize(&cfg.audit.subject_key, &issuer.issuer, sub)
                    ))
                }),
                LimitKey::ClientId => identity.and_then(|id| {
                    let client_id = id
                        .claims
                        .get("client_id")
                        .or_else(|| id.claims.get("azp"))
                        .and_then(Value::as_str)?;
                    Some(format!("cid:{client_id}"))
                }),
            };
            if let Some(counted) = counted {
                which.push(i);
                checks.push(LimitCheck {
                    key: format!("rl:{route_index}:{}:{counted}", limit.name),
                    interval_us: limit.interval_us(),
                    burst: limit.burst,
                });
            }
        }
        if checks.is_empty() {
            return None;
        }
        let statuses = match limiter.check(&checks, now) {
            Ok(s) if s.len() == checks.len() => s,
            Ok(_) | Err(_) if cfg.state.on_unavailable == FailPolicy::Allow => return None,
            Ok(_) => {
                return Some(problem(
                    Reason::StateUnavailable,
                    "the rate-limit state answered malformed",
                    req.request_id,
                    &[],
                ));
            }
            Err(e) => {
                return Some(problem(
                    Reason::StateUnavailable,
                    &format!("rate limits cannot be checked: {e}"),
                    req.request_id,
                    &[],
                ));
            }
        };
        limited.extend(which.iter().copied().zip(statuses.iter().copied()));
        let refused = which
            .iter()
            .zip(&statuses)
            .filter(|(_, s)| !s.allowed)
            .max_by_key(|(_, s)| s.retry_after_us);
        let (&i, status) = refused?;
        let limit = route.rate_limits.get(i)?;
        let mut r = problem(
            Reason::RateLimited,
            &format!(
                "rate limit `{}` ({} per {:?}, burst {}) exceeded",
                limit.name, limit.rate, limit.period, limit.burst
            ),
            req.request_id,
            &[],
        );
        r.headers.push(crate::limits::retry_after(status));
        r.headers.extend(limit_headers(route, &[(i, *status)]));
        Some(r)
    }

    /// The risk phase chose "challenge": a valid clearance cookie lets the request through;
    /// otherwise browsers navigating get the proof-of-work page, other clients a 403.
    fn challenge(
        &self,
        req: &RequestParts<'_>,
        norm: &Normalized,
        client: &ClientInfo,
        now: Timestamp,
        verdict: &RiskVerdict,
        risk: &RouteRisk,
    ) -> (Option<Response>, Option<String>) {
        use crate::challenge::{self as pow, Clearance};
        let network = binding_network(client);
        let binding = pow::Binding {
            network: &network,
            user_agent: user_agent(req.headers),
        };
        let (reason, detail, cleared) =
            match pow::check_clearance(&self.challenge_key, req.headers, now, &binding) {
                Clearance::Valid => return (None, Some("valid".into())),
                Clearance::Invalid(e) => (
                    Reason::ClearanceInvalid,
                    format!("the challenge clearance cookie is not valid: {e}"),
                    Some(e.code().to_owned()),
                ),
                Clearance::Absent => (Reason::ChallengeRequired, verdict.detail(), None),
            };
        let (reason, detail, clearance) = (reason, detail, cleared);
        if !crate::login::is_navigation(req.method, req.headers) {
            return (
                Some(problem(reason, &detail, req.request_id, &[])),
                clearance,
            );
        }
        let cfg = &self.config.challenge;
        let bits = pow::difficulty(
            verdict.score,
            risk.challenge.unwrap_or(0),
            cfg.min_bits,
            cfg.max_bits,
        );
        let return_to = norm.path_and_query.as_str();
        let token = pow::issue(&self.challenge_key, now, cfg.ttl, bits, &binding, return_to);
        let (html, headers) = match &cfg.site_verify {
            Some(site) => pow::site_page(&token, &site.site_key, &site.script_url),
            None => pow::page(&token, bits),
        };
        let page = Response {
            status: http::StatusCode::FORBIDDEN,
            headers,
            body: html.into_bytes(),
            reason,
        };
        (Some(page), clearance)
    }

    /// `GET /_portcullis/challenge?token=…&nonce=…`: a solved challenge earns a clearance
    /// cookie and a redirect back to where the browser was going.
    fn challenge_answer(
        &self,
        req: &RequestParts<'_>,
        client: &ClientInfo,
        now: Timestamp,
        services: &Adapters<'_>,
    ) -> Response {
        use crate::challenge as pow;
        let failed = |detail: &str| problem(Reason::ChallengeFailed, detail, req.request_id, &[]);
        let cfg = &self.config.challenge;
        let network = binding_network(client);
        let binding = pow::Binding {
            network: &network,
            user_agent: user_agent(req.headers),
        };
        let query = req.uri.query().unwrap_or("");
        let solved = match &cfg.site_verify {
            None => {
                let Some((token, nonce)) = pow::solution_from_query(query) else {
                    return failed("expected ?token=…&nonce=… from the challenge page");
                };
                match pow::verify(&self.challenge_key, &token, &nonce, now, &binding) {
                    Ok(s) => s,
                    Err(e) => return failed(&e.to_string()),
                }
            }
            Some(site) => {
                let Some((token, site_token)) = pow::site_solution_from_query(query) else {
                    return failed("expected ?token=…&site_token=… from the challenge page");
                };
                let solved = match pow::verify_token(&self.challenge_key, &token, now, &binding) {
                    Ok(s) => s,
                    Err(e) => return failed(&e.to_string()),
                };
                match services
                    .sites
                    .verify_site_token(site, &site_token, client.ip)
                {
                    Ok(true) => solved,
                    Ok(false) => {
                        return failed("the site verification service refused the token");
                    }
                    Err(e) => return failed(&format!("site verification unavailable: {e}")),
                }
            }
        };
        if !services
            .auth
            .first_use(&format!("challenge/{}", solved.id), cfg.ttl)
        {
            return failed("this challenge was already used");
        }
        let cookie = pow::clearance(&self.challenge_key, now, cfg.clearance_ttl, &binding);
        let mut headers = vec![
            (
                http::header::SET_COOKIE,
                pow::set_cookie(&cookie, cfg.clearance_ttl),
            ),
            (
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            ),
        ];
        if let Ok(location) = HeaderValue::from_str(&solved.return_to) {
            headers.push((http::header::LOCATION, location));
        }
        Response {
            status: http::StatusCode::SEE_OTHER,
            headers,
            body: Vec::new(),
            reason: Reason::ChallengeRequired,
        }
    }

    fn risk_context(
        &self,
        req: &RequestParts<'_>,
        norm: &Normalized,
        route: &Route,
        identity: Option<&VerifiedIdentity>,
        client: &ClientInfo,
    ) -> RiskContext {
        let mut headers = Vec::new();
        if let Some(risk) = &route.risk {
            for id in &risk.plugins {
                let Some(plugin) = self.config.plugins.get(id.0) else {
                    continue;
                };
                for name in &plugin.headers {
                    if headers.iter().any(|(n, _): &(String, String)| n == name) {
                        continue;
                    }
                    for v in req.headers.get_all(name.as_str()) {
                        if let Ok(text) = v.to_str() {
                            headers.push((name.clone(), text.to_owned()));
                        }
                    }
                }
            }
        }
        RiskContext {
            request_id: req.request_id.to_owned(),
            route: route.path.clone(),
            method: req.method.as_str().to_owned(),
            path: norm.path.clone(),
            query: req.uri.query().map(str::to_owned),
            host: Some(norm.authority.host.clone()),
            headers,
            identity: identity.map(|id| {
                let issuer = self
                    .config
                    .issuers
                    .get(id.issuer.0)
                    .map_or("", |i| i.issuer.as_str());
                RiskIdentity::of(id, issuer)
            }),
            client: client.clone(),
        }
    }

    /// Checks the request's single `DPoP` proof header against the request and token; the
    /// request's URL is the canonical one (default port left out, RFC 9449 §4.3).
    fn dpop_proof(
        &self,
        req: &RequestParts<'_>,
        norm: &Normalized,
        token: &str,
        now: Timestamp,
        auth: &dyn Authenticator,
    ) -> Result<crate::dpop::Proof, String> {
        let mut proofs = req.headers.get_all("dpop").iter();
        let (Some(proof), None) = (proofs.next(), proofs.next()) else {
            return Err("exactly one DPoP proof header is required".into());
        };
        let proof = proof
            .to_str()
            .map_err(|_| "the DPoP header is not ASCII".to_owned())?;
        let url = format!(
            "{}{}",
            norm.authority.origin(&self.config.dpop.scheme),
            norm.path
        );
        crate::dpop::check_proof(
            proof,
            &crate::dpop::ProofTarget {
                method: req.method.as_str(),
                url: &url,
                access_token: token,
                now,
                max_age: self.config.dpop.max_age,
            },
            auth,
        )
    }

    /// The gateway-signed token for one forwarded request.
    fn gateway_token(
        &self,
        gt: &crate::config::GatewayToken,
        id: &VerifiedIdentity,
        region: &Region,
        audience: &str,
        request_id: &str,
        now: Timestamp,
    ) -> Option<String> {
        let mut claims = serde_json::Map::new();
        if let Some(sub) = &id.subject {
            claims.insert("sub".into(), Value::String(sub.clone()));
        }
        claims.insert("aud".into(), Value::String(audience.to_owned()));
        if let Some(issuer) = self.config.issuers.get(id.issuer.0) {
            claims.insert("idp".into(), Value::String(issuer.issuer.clone()));
        }
        if let Some(act) = id.claims.get("act") {
            claims.insert("act".into(), act.clone());
        }
        claims.insert("scope".into(), Value::String(id.scopes.join(" ")));
        claims.insert("region".into(), Value::String(region.name.clone()));
        if let Some(acr) = &id.acr {
            claims.insert("acr".into(), Value::String(acr.clone()));
        }
        for name in ["client_id", "sid"] {
            if let Some(v) = id.claims.get(name) {
                claims.insert(name.into(), v.clone());
            }
        }
        let jti = format!(
            "{:016x}",
            fnv1a(&format!("{request_id}/{}", now.unix_millis()))
        );
        claims.insert("jti".into(), Value::String(jti));
        crate::gateway_token::mint(gt, claims, now)
    }

    fn identity_headers(
        &self,
        id: Option<&VerifiedIdentity>,
        region: &Region,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.config.identity.headers.len());
        for (name, source) in &self.config.identity.headers {
            let text = match (source, id) {
                (IdentitySource::Region, _) => Some(region.name.clone()),
                (IdentitySource::Jurisdiction, _) => Some(region.jurisdiction.clone()),
                (IdentitySource::Scope, Some(id)) => Some(id.scopes.join(" ")),
                (IdentitySource::Actor, Some(id)) => id
                    .claims
                    .get("act")
                    .and_then(|a| a.get("sub"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                (IdentitySource::IssuerName, Some(id)) => {
                    self.config.issuers.get(id.issuer.0).map(|i| i.name.clone())
                }
                (IdentitySource::Claim(claim), Some(id)) => id.claims.get(claim).map(claim_text),
                (_, None) => None,
            };
            if let Some(value) = text.and_then(|t| HeaderValue::from_str(&header_safe(&t)).ok()) {
                out.push((name.clone(), value));
            }
        }
        out
    }
}

/// The adapter's services for one decision.
#[derive(Clone, Copy)]
pub struct Adapters<'a> {
    /// Token verification and one-time values.
    pub auth: &'a dyn Authenticator,
    /// Risk plugins.
    pub risk: &'a dyn RiskAssessor,
    /// Rate-limit state.
    pub limiter: &'a dyn Limiter,
    /// Site-token verification (Turnstile-compatible challenges).
    pub sites: &'a dyn crate::challenge::SiteVerifier,
    /// The login flow's provider calls, randomness and session state.
    pub login: &'a dyn crate::login::LoginServices,
    /// Backend health.
    pub health: &'a dyn BackendHealth,
}

/// Paths under this prefix belong to the gateway and never reach a backend.
pub const INTERNAL_PREFIX: &str = "/_portcullis/";

/// What a challenge and its clearance are bound to: the client's /24 (IPv4) or /64 (IPv6),
/// so a cookie does not travel to another network (mobile clients moving within one keep it).
fn binding_network(client: &ClientInfo) -> String {
    client.ip.map_or_else(
        || "unknown".to_owned(),
        |ip| crate::client::network_of(ip).to_string(),
    )
}

fn user_agent(headers: &HeaderMap) -> &str {
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Rate limits are checked in two steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LimitPhase {
    BeforeAuthentication,
    AfterAuthentication,
}

/// What an address limit counts: the IPv4 address, or the IPv6 /64.
fn limit_address(ip: IpAddr) -> String {
    match crate::client::canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", std::net::Ipv6Addr::from(net))
        }
    }
}

/// `RateLimit-Policy` for the checked limits and `RateLimit` for the most constrained.
fn limit_headers(
    route: &Route,
    checked: &[(usize, LimitStatus)],
) -> Vec<(HeaderName, HeaderValue)> {
    let limits: Vec<&crate::config::RateLimit> = checked
        .iter()
        .filter_map(|(i, _)| route.rate_limits.get(*i))
        .collect();
    let mut out = Vec::new();
    out.extend(crate::limits::policy_header(&limits));
    let tightest = checked
        .iter()
        .min_by_key(|(_, s)| (s.allowed, s.remaining, u64::MAX - s.reset_us));
    if let Some((i, s)) = tightest
        && let Some(l) = route.rate_limits.get(*i)
    {
        out.extend(crate::limits::status_header(&l.name, s));
    }
    out
}

/// The response for a risk verdict that does not let the request through.
fn risk_refusal(
    verdict: &RiskVerdict,
    risk: &RouteRisk,
    identity: Option<&VerifiedIdentity>,
    request_id: &str,
) -> Option<Response> {
    let detail = verdict.detail();
    if verdict.failed.is_some() {
        return Some(problem(Reason::RiskCheckFailed, &detail, request_id, &[]));
    }
    match verdict.action {
        Action::Allow => None,
        Action::Deny => Some(problem(Reason::RiskDenied, &detail, request_id, &[])),
        Action::Challenge => Some(problem(Reason::ChallengeRequired, &detail, request_id, &[])),
        Action::StepUp => {
            let reached = identity
                .and_then(|id| id.acr.as_deref())
                .is_some_and(|acr| risk.step_up_acr.iter().any(|a| a == acr));
            if reached {
                return None;
            }
            let (reason, challenge) = match identity {
                None => (Reason::AuthenticationRequired, Vec::new()),
                Some(_) => (
                    Reason::InsufficientUserAuthentication,
                    vec![("acr_values", risk.step_up_acr.join(" "))],
                ),
            };
            Some(problem(reason, &detail, request_id, &challenge))
        }
    }
}

/// Renders a claim for a header: strings as-is, other values as compact JSON.
fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes `%`, controls and non-ASCII (UTF-8 bytes), so no claim can inject a
/// header line or smuggle bytes a backend would read differently.
fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// FNV-1a of `text`: a cheap, stable spread (backend choice, state sharding).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_cannot_inject_lines_or_raw_bytes() {
        assert_eq!(header_safe("alice"), "alice");
        assert_eq!(header_safe("a\r\nx-admin: 1"), "a%0D%0Ax-admin: 1");
        assert_eq!(header_safe("zoë"), "zo%C3%AB");
        assert_eq!(header_safe("50%"), "50%25");
    }
}
