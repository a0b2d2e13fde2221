//! Phase `endpoints`: the gateway's own endpoints, answered before any route is matched —
//! the challenge answer (`/_portcullis/challenge`) and, when `[session]` is configured,
//! login, its callback, logout and back-channel logout ([`crate::login`]).

use http::HeaderValue;

use super::{Ctx, Scope, Step};
use crate::challenge::{self as pow, Binding};
use crate::decision::Response;
use crate::login::{BACKCHANNEL_PATH, CALLBACK_PATH, LOGIN_PATH, LOGOUT_PATH};
use crate::model::reserved::CHALLENGE_PATH;
use crate::reason::Reason;

/// Answers the gateway's own endpoints; other paths go on.
pub fn run(scope: &Scope<'_>, _cx: &mut Ctx) -> Step {
    let path = scope.norm.path.as_str();
    if path == CHALLENGE_PATH {
        return Err(challenge_answer(scope));
    }
    if let Some(flow) = &scope.flow {
        let answer = match path {
            CALLBACK_PATH => Some(flow.callback(&scope.client)),
            LOGIN_PATH => Some(flow.start()),
            LOGOUT_PATH => Some(flow.logout()),
            BACKCHANNEL_PATH => Some(flow.backchannel()),
            _ => None,
        };
        if let Some(r) = answer {
            return Err(r);
        }
    }
    Ok(())
}

/// `GET /_portcullis/challenge?token=…&nonce=…`: a solved challenge earns a clearance
/// cookie and a redirect back to where the browser was going.
fn challenge_answer(scope: &Scope<'_>) -> Response {
    let input = &scope.input;
    let (req, now, io) = (input.req, input.now, input.io);
    let failed = |detail: &str| input.refuse(Reason::ChallengeFailed, detail);
    let cfg = &input.config().challenge;
    let key = &input.prep.challenge_key;
    let network = pow::binding_network(&scope.client);
    let binding = Binding {
        network: &network,
        user_agent: pow::user_agent(req.headers),
    };
    let query = req.uri.query().unwrap_or("");
    let solved = match &cfg.site_verify {
        None => {
            let Some((token, nonce)) = pow::solution_from_query(query) else {
                return failed("expected ?token=…&nonce=… from the challenge page");
            };
            match pow::verify(key, &token, &nonce, now, &binding) {
                Ok(s) => s,
                Err(e) => return failed(&e.to_string()),
            }
        }
        Some(site) => {
            let Some((token, site_token)) = pow::site_solution_from_query(query) else {
                return failed("expected ?token=…&site_token=… from the challenge page");
            };
            let solved = match pow::verify_token(key, &token, now, &binding) {
                Ok(s) => s,
                Err(e) => return failed(&e.to_string()),
            };
            match io.verify_site_token(site, &site_token, scope.client.ip) {
                Ok(true) => solved,
                Ok(false) => {
                    return failed("the site verification service refused the token");
                }
                Err(e) => return failed(&format!("site verification unavailable: {e}")),
            }
        }
    };
    match io.first_use(&format!("challenge/{}", solved.id), cfg.ttl) {
        Ok(true) => {}
        Ok(false) => return failed("this challenge was already used"),
        Err(e) => {
            return input.refuse(
                Reason::StateUnavailable,
                &format!("the answer cannot be checked for reuse: {e}"),
            );
        }
    }
    let cookie = pow::clearance(key, now, cfg.clearance_ttl, &binding);
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
