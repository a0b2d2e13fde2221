//! Phase `risk`: the route's built-in bot checks ([`crate::bot`]) and risk plugins (run by
//! the adapter, [`crate::risk`]), which see the effective identity, combined into one
//! verdict before authorization: allow, step-up, challenge (a proof-of-work page or a
//! valid clearance cookie, [`crate::challenge`]) or deny.

use super::{Ctx, Matched, Scope, Step};
use crate::bot::SessionView;
use crate::challenge::{self as pow, Binding, Clearance};
use crate::claims::VerifiedIdentity;
use crate::config::{BotCheck, Route, RouteRisk};
use crate::decision::{Response, problem};
use crate::login::StepUp;
use crate::reason::Reason;
use crate::risk::{
    Action, RiskContext, RiskIdentity, RiskSession, RiskSignals, RiskVerdict, combine_with,
};

/// Assesses the request when the route has risk rules; the verdict goes into the audit
/// record whatever it is.
pub fn run(scope: &Scope<'_>, m: Matched<'_>, cx: &mut Ctx) -> Step {
    let input = &scope.input;
    let cfg = input.config();
    let Some(risk) = &m.route.risk else {
        return Ok(());
    };
    // `session_anomaly`: this request against a browser session's sign-in or an app key's
    // first request, and against the recent uses.
    let weights = risk
        .anomaly
        .as_ref()
        .or(cfg.session.as_ref().map(|s| &s.anomaly));
    let base = super::anomaly::baseline(scope, cx, risk, weights)?;
    let session = match (&base, weights) {
        (Some(b), Some(weights)) => Some(SessionView {
            login: b.then.as_ref(),
            now: &b.now,
            uses: &b.uses,
            weights,
        }),
        _ => None,
    };
    let mut signals = crate::bot::evaluate(
        &cfg.bot,
        &risk.checks,
        &crate::bot::BotInput {
            headers: input.req.headers,
            client_ip: scope.client.ip,
            asn: scope.client.asn,
            session,
        },
    );
    if let Some(weights) = weights {
        super::anomaly::count_per_user(scope, cx, weights, &mut signals);
    }
    let answers = if risk.plugins.is_empty() {
        Vec::new()
    } else {
        let ctx = context(scope, m.route, cx);
        input.io.assess(&risk.plugins, ctx)
    };
    let mut verdict = combine_with(cfg, risk, signals, answers);
    // A browser session whose risk reached `revoke` ends here: every copy of its cookie.
    if let (Some(threshold), Some(sid), Some(flow)) = (risk.revoke, &cx.session.sid, &scope.flow)
        && verdict.score >= threshold
    {
        let op_session = cx.session.provider.zip(cx.session.op_sid.as_deref());
        let response = flow.revoke(sid, op_session, &verdict.detail());
        cx.audit.session = Some("revoked");
        cx.audit.risk = Some(verdict);
        return Err(response);
    }
    // ...and an app's token, the provider session it names (with its browser session).
    if let (Some(threshold), None, Some(id)) = (risk.revoke, &cx.session.sid, &cx.identity)
        && verdict.score >= threshold
        && let Some(response) = super::anomaly::revoke_token(scope, id, &verdict.detail())
    {
        cx.audit.risk = Some(verdict);
        return Err(response);
    }
    let refusal = match verdict.action {
        Action::Challenge if verdict.failed.is_none() => {
            let (refusal, clearance) = challenge(scope, &verdict, risk);
            verdict.clearance = clearance;
            refusal
        }
        // A browser session that looks moved to another client steps up at its provider:
        // a fresh sign-in (`prompt=login`) at the acr the route asks for, which records
        // this client as the session's, so the anomaly that asked for it is gone after it
        // (other step-ups keep the RFC 9470 answer: a provider that never grants the acr
        // would send the browser round in a loop).
        Action::StepUp
            if verdict.failed.is_none()
                && moved(&verdict)
                && crate::login::is_navigation(input.req.method, input.req.headers) =>
        {
            match (cx.session.provider, &scope.flow) {
                (Some(provider), Some(flow)) => {
                    let step_up = StepUp {
                        acr_values: Some(risk.step_up_acr.join(" ")),
                        ..StepUp::default()
                    };
                    Some(flow.begin(provider, &scope.norm.path_and_query, &step_up))
                }
                _ => refusal(&verdict, risk, cx.identity.as_ref(), input.req.request_id),
            }
        }
        _ => refusal(&verdict, risk, cx.identity.as_ref(), input.req.request_id),
    };
    cx.audit.risk = Some(verdict);
    match refusal {
        Some(response) => Err(response),
        None => Ok(()),
    }
}

/// What the route's plugins are told about the request: the headers they asked for, the
/// canonical path, the client, the effective identity and its session.
fn context(scope: &Scope<'_>, route: &Route, cx: &Ctx) -> RiskContext {
    let identity = cx.identity.as_ref();
    let input = &scope.input;
    let (cfg, req) = (input.config(), input.req);
    let mut headers = Vec::new();
    if let Some(risk) = &route.risk {
        for id in &risk.plugins {
            let Some(plugin) = cfg.plugins.get(id.0) else {
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
        path: scope.norm.path.clone(),
        query: req.uri.query().map(str::to_owned),
        host: Some(scope.norm.authority.host.clone()),
        headers,
        identity: identity.map(|id| {
            let issuer = cfg
                .issuers
                .get(id.issuer.0)
                .map_or("", |i| i.issuer.as_str());
            RiskIdentity::of(id, issuer)
        }),
        client: scope.client.clone(),
        session: session(scope, cx),
    }
}

/// The request's session for plugins: the browser session (its sign-in's client and time),
/// else the provider session a token names (`sid`, aged by `auth_time`). Ids are keyed
/// pseudonyms: the gateway's session id is the key of its revocation marker, and a
/// provider's `sid` is the provider's to keep. A provider session has one pseudonym in
/// both channels (keyed by the identity's `iss`, as the ID token and the access tokens
/// name it).
fn session(scope: &Scope<'_>, cx: &Ctx) -> Option<RiskSession> {
    let input = &scope.input;
    let cfg = input.config();
    let key = &cfg.audit.subject_key;
    let now = input.now.unix_secs();
    let age = |at: u64| u32::try_from(now.saturating_sub(at)).ok();
    let identity = cx.identity.as_ref();
    let iss = identity
        .and_then(|id| id.claims.get("iss").and_then(serde_json::Value::as_str))
        .or_else(|| {
            let issuer = identity.map(|id| id.issuer).or(cx.session.provider)?;
            cfg.issuers.get(issuer.0).map(|i| i.issuer.as_str())
        })
        .unwrap_or_default();
    let provider_session = |sid: &str| crate::audit::pseudonymize(key, iss, sid);
    if let Some(sid) = &cx.session.sid {
        return Some(RiskSession {
            id: crate::audit::pseudonymize(key, "portcullis/session", sid),
            provider_session: cx.session.op_sid.as_deref().map(provider_session),
            browser: true,
            age_secs: cx.session.created.and_then(age),
            sign_in: cx.session.signals.as_ref().map(|c| RiskSignals {
                network: c.network.clone(),
                asn: c.asn,
                country: c.country.clone(),
                agent: c.agent.clone(),
                platform: c.platform.clone(),
            }),
        });
    }
    let id = identity?;
    let pseudonym = provider_session(id.claims.get("sid")?.as_str()?);
    Some(RiskSession {
        id: pseudonym.clone(),
        provider_session: Some(pseudonym),
        browser: false,
        age_secs: id
            .claims
            .get("auth_time")
            .and_then(serde_json::Value::as_u64)
            .and_then(age),
        sign_in: None,
    })
}

/// The verdict chose "challenge": a valid clearance cookie lets the request through;
/// otherwise browsers navigating get the proof-of-work page, other clients a 403. Also
/// returns what became of the clearance cookie, for the audit record.
fn challenge(
    scope: &Scope<'_>,
    verdict: &RiskVerdict,
    risk: &RouteRisk,
) -> (Option<Response>, Option<String>) {
    let input = &scope.input;
    let (req, now, key) = (input.req, input.now, &input.prep.challenge_key);
    let network = pow::binding_network(&scope.client);
    let binding = Binding {
        network: &network,
        user_agent: pow::user_agent(req.headers),
    };
    let (reason, detail, clearance) = match pow::check_clearance(key, req.headers, now, &binding) {
        Clearance::Valid => return (None, Some("valid".into())),
        Clearance::Invalid(e) => (
            Reason::ClearanceInvalid,
            format!("the challenge clearance cookie is not valid: {e}"),
            Some(e.code().to_owned()),
        ),
        Clearance::Absent => (Reason::ChallengeRequired, verdict.detail(), None),
    };
    if !crate::login::is_navigation(req.method, req.headers) {
        return (
            Some(problem(reason, &detail, req.request_id, &[])),
            clearance,
        );
    }
    let cfg = &input.config().challenge;
    let bits = pow::difficulty(
        verdict.score,
        risk.challenge.unwrap_or(0),
        cfg.min_bits,
        cfg.max_bits,
    );
    let return_to = scope.norm.path_and_query.as_str();
    let token = pow::issue(key, now, cfg.ttl, bits, &binding, return_to);
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

/// Whether the caller already has the strength a step-up asks for: an `acr` in the route's
/// `step_up_acr` — unless the session itself looks moved to another client, which only a
/// fresh sign-in from this one settles.
fn reached(verdict: &RiskVerdict, risk: &RouteRisk, identity: Option<&VerifiedIdentity>) -> bool {
    !moved(verdict)
        && identity
            .and_then(|id| id.acr.as_deref())
            .is_some_and(|acr| risk.step_up_acr.iter().any(|a| a == acr))
}

/// Whether `session_anomaly` found the caller's client changed.
fn moved(verdict: &RiskVerdict) -> bool {
    verdict.plugins.iter().any(|c| {
        c.plugin.strip_prefix("bot.") == Some(BotCheck::SessionAnomaly.name())
            && c.score.unwrap_or(0) > 0
    })
}

/// The response for a verdict that does not let the request through.
fn refusal(
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
            if reached(verdict, risk, identity) {
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
