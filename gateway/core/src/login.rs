//! Browser sessions through the gateway's own OpenID Connect login (authorization code flow
//! with PKCE S256, `state` and `nonce`), as pure functions of the request, the clock and
//! the adapter's ports (shared state, provider calls and random bytes through [`Io`]).
//!
//! - **Login**: a navigation without a session on a `login` route gets a 302 to the
//!   provider's authorization endpoint (from discovery); the attempt's `state`, `nonce` and
//!   PKCE verifier travel in a sealed cookie of its own ([`LoginState`]), so parallel logins
//!   in several tabs do not clobber each other. [`CALLBACK_PATH`] exchanges the code at the
//!   token endpoint (through the adapter), validates the ID token (signature, `iss`, `aud` =
//!   client id, `azp`, `nonce`, `exp`, `at_hash`), creates the session and redirects back to
//!   the same-origin path the user asked for.
//! - **Sessions**: a sealed, chunked `__Host-` cookie ([`Session`]); idle and absolute
//!   lifetimes with rolling renewal; the access token refreshed shortly before it expires —
//!   one request per session refreshes (a lock in shared state), the others carry on, and a
//!   request still holding the rotated-away refresh token adopts the new tokens from shared
//!   state instead of logging the user out. `sess/<sid>` in shared state marks a live
//!   session: deleting it revokes the session everywhere.
//! - **Logout**: [`LOGOUT_PATH`] clears the cookies, revokes the session and continues with
//!   RP-initiated logout at the provider; [`BACKCHANNEL_PATH`] accepts back-channel logout
//!   tokens and revokes sessions by the provider's `sid` or by `sub`.

use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::authenticate::{Authenticator, IssuedKind};
use crate::challenge::{page_headers, percent_decode, safe_return_path};
use crate::claims::VerifiedIdentity;
use crate::client_auth::{AssertionInputs, ClientAuth};
use crate::client_signals::ClientSignals;
use crate::config::{Config, IssuerConfig, LoginClient, SessionConfig};
use crate::decision::{Response, problem};
use crate::forms::{encode as encode_form, encode_component as form_encode};
use crate::model::{Entropy as _, IssuerId};
use crate::ports::FormEndpoint;
use crate::ports::Io;
use crate::reason::Reason;
use crate::session::{
    self, CookieAttrs, LOGIN_COOKIE_PREFIX, LoginState, Session, SessionKeys, login_cookie_name,
};
use crate::time::Timestamp;

pub use crate::model::reserved::BACKCHANNEL_PATH;
pub use crate::model::reserved::CALLBACK_PATH;
pub use crate::model::reserved::LOGIN_PATH;
pub use crate::model::reserved::LOGOUT_PATH;
/// The `events` member of a back-channel logout token.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Most login attempts (tabs signing in at once) a browser keeps cookies for.
pub const MAX_LOGIN_ATTEMPTS: usize = 4;
/// Largest form body accepted at [`BACKCHANNEL_PATH`] and a form-POST [`CALLBACK_PATH`].
pub const MAX_FORM_BODY: usize = 16 * 1024;

/// True when an adapter should read the request body (at most [`MAX_FORM_BODY`] bytes)
/// before deciding: only for the back-channel logout endpoint and a form-POST login
/// callback, and only where browser sessions are configured. A host that asks a gateway
/// component for the decision reads it from the same configuration.
pub fn wants_body(config: &Config, method: &Method, path: &str) -> bool {
    config.session.is_some()
        && method == Method::POST
        && (path == BACKCHANNEL_PATH || path == CALLBACK_PATH)
}

/// Claims of the ID token that describe the token rather than the user; not kept.
const TOKEN_CLAIMS: [&str; 12] = [
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "nonce",
    "at_hash",
    "c_hash",
    "azp",
    "sid",
    "auth_time",
];
/// How long one session's refresh lock holds.
const REFRESH_LOCK: Duration = Duration::from_secs(30);
/// Most sessions remembered per subject for back-channel logout by `sub`.
const MAX_SESSIONS_PER_SUBJECT: usize = 32;
pub use crate::authenticate::{NO_BROWSER_LOGIN, NOT_DISCOVERED_YET};
pub use crate::ports::client::MAX_TOKEN_RESPONSE;

/// Step-up parameters for the authorization request (RFC 9470 §4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepUp {
    /// `acr_values`, space-separated.
    pub acr_values: Option<String>,
    /// `max_age` in seconds.
    pub max_age: Option<String>,
    /// Scopes to ask for on the provider's consent screen (`prompt=consent`), for purposes
    /// a route needs (space-separated).
    pub consent_scopes: Option<String>,
}

impl StepUp {
    /// The step-up parameters of an RFC 9470 refusal's `WWW-Authenticate` parameters.
    pub fn from_challenge(challenge: &[(&'static str, String)]) -> Self {
        let find = |name: &str| {
            challenge
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        Self {
            acr_values: find("acr_values"),
            max_age: find("max_age"),
            consent_scopes: None,
        }
    }

    /// A login that asks for the consent a `consent_required` refusal names (its `scope`
    /// challenge parameter).
    pub fn consent(challenge: &[(&'static str, String)]) -> Self {
        Self {
            consent_scopes: challenge
                .iter()
                .find(|(n, _)| *n == "scope")
                .map(|(_, v)| v.clone()),
            ..Self::default()
        }
    }
}

/// One request's view of the login machinery.
pub struct Flow<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// `[session]`.
    pub session: &'a SessionConfig,
    /// The cookie keys.
    pub keys: &'a SessionKeys,
    /// The decision's state, provider calls and random bytes (login state, session ids,
    /// sealing nonces).
    pub io: &'a Io<'a>,
    /// Token verification and the providers' endpoints.
    pub auth: &'a dyn Authenticator,
    /// The request's method.
    pub method: &'a Method,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The request's query, if any.
    pub query: Option<&'a str>,
    /// The request body (read by the adapter for [`BACKCHANNEL_PATH`] and a POSTed
    /// [`CALLBACK_PATH`] only).
    pub body: &'a [u8],
    /// The request id.
    pub request_id: &'a str,
    /// Now.
    pub now: Timestamp,
    /// The request's canonical authority (for same-origin checks).
    pub authority: &'a crate::canonical::Authority,
}

/// A session found on a request.
#[derive(Debug)]
pub struct Resolved {
    /// The session's identity, as for a verified token.
    pub identity: VerifiedIdentity,
    /// The provider it logged in with.
    pub provider: IssuerId,
    /// Cookies to set on the response (renewal, refreshed tokens).
    pub set_cookies: Vec<HeaderValue>,
    /// The provider's access token, for `forward_access_token`.
    pub access_token: Option<String>,
    /// What happened: `valid`, `renewed`, `refreshed`, `adopted`, `refresh_failed`.
    pub event: &'static str,
    /// The scopes its sign-in asked the consent screen for, if it was a consent login.
    pub consent_asked: Option<String>,
    /// The session id (its revocation key).
    pub sid: String,
    /// What its sign-in showed of the client.
    pub signals: Option<ClientSignals>,
    /// The provider's session id, if it sent one.
    pub op_sid: Option<String>,
    /// When it signed in (Unix seconds).
    pub created: u64,
}

/// The outcome of looking for a session.
#[derive(Debug)]
pub enum Lookup {
    /// A live session.
    Session(Box<Resolved>),
    /// No usable session (none, expired, revoked, or for another provider); cookies to clear.
    Absent {
        /// `Set-Cookie` values clearing stale cookies.
        clear: Vec<HeaderValue>,
        /// Why, for the audit record: `none`, `idle_expired`, `absolute_expired`, `revoked`,
        /// `other_provider`, `refresh_refused`.
        why: &'static str,
    },
    /// Refuse the request (tampered cookie, shared state down).
    Refuse(Response),
}

impl Flow<'_> {
    fn issuer(&self, id: IssuerId) -> Option<(&IssuerConfig, &LoginClient)> {
        let issuer = self.config.issuers.get(id.0)?;
        Some((issuer, issuer.login.as_ref()?))
    }

    fn issuer_named(&self, name: &str) -> Option<IssuerId> {
        self.config
            .issuers
            .iter()
            .position(|i| i.name == name && i.login.is_some())
            .map(IssuerId)
    }

    fn random<const N: usize>(&self) -> Result<[u8; N], Response> {
        let mut out = [0u8; N];
        self.io.fill(&mut out).map_err(|e| {
            problem(
                Reason::ProviderUnavailable,
                &format!("no randomness: {e}"),
                self.request_id,
                &[],
            )
        })?;
        Ok(out)
    }

    fn query_param(&self, name: &str) -> Option<String> {
        query_param(self.query?, name)
    }

    /// A parameter of the provider's answer at the callback: from the form body of a POST
    /// (`response_mode=form_post`), else from the query.
    fn answer_param(&self, name: &str) -> Option<String> {
        if self.method == Method::POST {
            query_param(std::str::from_utf8(self.body).ok()?, name)
        } else {
            self.query_param(name)
        }
    }

    /// A page for people (HTML) or problem details for scripts, with `reason`'s status.
    fn refuse(&self, reason: Reason, detail: &str, extra: Vec<HeaderValue>) -> Response {
        let mut r = if is_navigation(self.method, self.headers) {
            page(reason, detail, self.request_id)
        } else {
            problem(reason, detail, self.request_id, &[])
        };
        r.headers.extend(extra.into_iter().map(|v| (SET_COOKIE, v)));
        r
    }

    /// Ends the session `sid` — its live marker in the shared state is deleted, so every
    /// copy of its cookie is refused from now on — and answers 401 `session_revoked` with
    /// the cookies cleared (a page for browsers). The refusal stands when the state cannot
    /// be reached; the detail says so.
    pub fn revoke(
        &self,
        sid: &str,
        op_session: Option<(IssuerId, &str)>,
        detail: &str,
    ) -> Response {
        let ended = self.io.delete(&format!("sess/{sid}")).and_then(|()| {
            // Its provider session ends for that provider's session-bound access tokens.
            match op_session {
                Some((provider, op_sid)) => self.end_provider_session(provider, None, op_sid),
                None => Ok(()),
            }
        });
        let detail = match ended {
            Ok(()) => format!("{detail}; the session was ended: sign in again"),
            Err(e) => format!(
                "{detail}; the session could not be ended in the shared state ({e}): sign in again"
            ),
        };
        self.refuse(
            Reason::SessionRevoked,
            &detail,
            self.clear_session_cookies(),
        )
    }

    /// Marks `provider`'s session `op_sid` (of `iss`, the configured issuer without one) as
    /// ended for its access tokens, when the issuer has `session_bound_tokens`.
    fn end_provider_session(
        &self,
        provider: IssuerId,
        iss: Option<&str>,
        op_sid: &str,
    ) -> Result<(), String> {
        end_provider_session(self.config, self.io, provider, iss, op_sid)
    }

    /// Sends the browser to `provider` to log in, then back to `return_to`.
    pub fn begin(&self, provider: IssuerId, return_to: &str, step_up: &StepUp) -> Response {
        let Some((issuer, client)) = self.issuer(provider) else {
            return problem(
                Reason::ProviderUnavailable,
                "no such login provider",
                self.request_id,
                &[],
            );
        };
        let endpoints = match self.auth.endpoints(provider) {
            Ok(e) => e,
            Err(why) => {
                return self.refuse(
                    Reason::ProviderUnavailable,
                    &format!(
                        "the sign-in provider `{}` is not available: {why}",
                        issuer.name
                    ),
                    Vec::new(),
                );
            }
        };
        let random = match self.random::<96>() {
            Ok(r) => r,
            Err(r) => return r,
        };
        let seal_nonce = match self.random::<24>() {
            Ok(r) => r,
            Err(r) => return r,
        };
        let mut attempt = LoginState::new(&random, &issuer.name, return_to, self.now);
        attempt.consent_scopes.clone_from(&step_up.consent_scopes);
        let cookie = attempt.seal(self.keys, seal_nonce).and_then(|sealed| {
            session::set_cookie(
                &attempt.cookie_name(),
                &sealed,
                &CookieAttrs {
                    max_age: Some(self.session.login_timeout),
                    cross_site_post: client.form_post,
                },
            )
        });
        let cookie = match cookie {
            Ok(c) => c,
            Err(e) => {
                return problem(
                    Reason::LoginFailed,
                    &format!("cannot seal the login attempt: {e}"),
                    self.request_id,
                    &[],
                );
            }
        };
        let mut params = vec![
            ("response_type", "code".to_owned()),
            ("client_id", client.client_id.clone()),
            ("redirect_uri", client.redirect_uri.clone()),
            (
                "scope",
                scopes_with(&client.scopes, step_up.consent_scopes.as_deref()),
            ),
            ("state", attempt.state.clone()),
            ("nonce", attempt.nonce.clone()),
            (
                "code_challenge",
                session::pkce_challenge(&attempt.pkce_verifier),
            ),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if client.form_post {
            params.push(("response_mode", "form_post".to_owned()));
        }
        for (name, value) in &client.authorize_params {
            params.push((name.as_str(), value.clone()));
        }
        if let Some(acr) = &step_up.acr_values {
            params.push(("acr_values", acr.clone()));
        }
        if let Some(age) = &step_up.max_age {
            params.push(("max_age", age.clone()));
        }
        // A step-up must re-authenticate even while the provider's session is alive
        // (acr_values alone is only a wish: the provider may answer from its session).
        let login = step_up.acr_values.is_some() || step_up.max_age.is_some();
        // ...and asking for consent must show the consent screen (OIDC Core §3.1.2.1).
        let consent = step_up.consent_scopes.is_some();
        if login || consent {
            // (In place of a configured `prompt`, such as Google's `consent`.)
            params.retain(|(k, _)| *k != "prompt");
            let prompt = match (login, consent) {
                (true, true) => "login consent",
                (true, false) => "login",
                _ => "consent",
            };
            params.push(("prompt", prompt.to_owned()));
        }
        // RFC 9126: where the provider offers it, the request goes to it directly and the
        // browser carries only a reference (nothing to tamper with or leak in the URL).
        if client.par && endpoints.pushed_authorization.is_some() {
            let request_uri = match self.push_authorization(provider, client, &params) {
                Ok(uri) => uri,
                Err((reason, detail)) => return self.refuse(reason, &detail, Vec::new()),
            };
            params = vec![
                ("client_id", client.client_id.clone()),
                ("request_uri", request_uri),
            ];
        }
        let separator = if endpoints.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!(
            "{}{separator}{}",
            endpoints.authorization,
            encode_form(&params)
        );
        let mut cookies = vec![cookie];
        cookies.extend(self.stale_attempts());
        redirect(StatusCode::FOUND, &location, cookies)
    }

    /// `Set-Cookie` values deleting the oldest login-attempt cookies of this request, so
    /// that at most [`MAX_LOGIN_ATTEMPTS`] stay with the new one: reloads and abandoned
    /// tabs must not pile cookies up until requests outgrow header limits. Unreadable
    /// attempt cookies are deleted first.
    fn stale_attempts(&self) -> Vec<HeaderValue> {
        let mut attempts: Vec<(u64, &str)> = cookie_pairs(self.headers)
            .filter(|(name, _)| name.starts_with(LOGIN_COOKIE_PREFIX))
            .map(|(name, value)| {
                let created = LoginState::open(self.keys, value).map_or(0, |a| a.created);
                (created, name)
            })
            .collect();
        let keep = MAX_LOGIN_ATTEMPTS.saturating_sub(1);
        if attempts.len() <= keep {
            return Vec::new();
        }
        attempts.sort_unstable();
        let excess = attempts.len() - keep;
        attempts
            .iter()
            .take(excess)
            .filter_map(|(_, name)| session::delete_cookie(name).ok())
            .collect()
    }

    /// A login route's answer to a request without a session: browsers are sent to log in
    /// (or to the provider-choice page when the route has several providers), scripts get
    /// 401 problem details and never a redirect.
    pub fn login_required(
        &self,
        providers: &[IssuerId],
        return_to: &str,
        clear: Vec<HeaderValue>,
    ) -> Response {
        if !is_navigation(self.method, self.headers) {
            let mut r = problem(
                Reason::AuthenticationRequired,
                "sign in first (this route takes a session cookie or an access token)",
                self.request_id,
                &[],
            );
            r.headers.extend(clear.into_iter().map(|v| (SET_COOKIE, v)));
            return r;
        }
        let mut r = match providers {
            [one] => self.begin(*one, return_to, &StepUp::default()),
            many => self.choice_page(many, return_to),
        };
        r.headers.extend(clear.into_iter().map(|v| (SET_COOKIE, v)));
        r
    }

    fn choice_page(&self, providers: &[IssuerId], return_to: &str) -> Response {
        let return_to = safe_return_path(return_to).unwrap_or("/");
        let mut items = String::new();
        for id in providers {
            if let Some((issuer, client)) = self.issuer(*id) {
                let href = format!(
                    "{LOGIN_PATH}?provider={}&return_to={}",
                    form_encode(&issuer.name),
                    form_encode(return_to)
                );
                items.push_str(&format!(
                    "<li><a href=\"{}\">Sign in with {}</a></li>\n",
                    html_escape(&href),
                    html_escape(&client.label)
                ));
            }
        }
        let body = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Sign in</title></head>\n<body><main><h1>Sign in</h1>\n<ul id=\"providers\">\n{items}</ul></main></body></html>\n"
        );
        Response {
            status: StatusCode::UNAUTHORIZED,
            headers: page_headers("default-src 'none'; form-action 'self'".to_owned()),
            body: body.into_bytes(),
            reason: Reason::AuthenticationRequired,
        }
    }

    /// [`LOGIN_PATH`]: `?provider=<name>&return_to=<path>`.
    pub fn start(&self) -> Response {
        let return_to = self.query_param("return_to");
        let return_to = return_to
            .as_deref()
            .and_then(safe_return_path)
            .unwrap_or("/");
        let Some(provider) = self
            .query_param("provider")
            .and_then(|p| self.issuer_named(&p))
        else {
            return self.refuse(
                Reason::InvalidRequest,
                "unknown or missing sign-in provider",
                Vec::new(),
            );
        };
        self.begin(provider, return_to, &StepUp::default())
    }

    /// [`CALLBACK_PATH`]: checks the attempt, exchanges the code, validates the ID token and
    /// starts the session, which keeps what `caller` (the client resolved through
    /// `[client]`) and the request show of it, for the `session_anomaly` check.
    pub fn callback(&self, caller: &crate::model::ClientInfo) -> Response {
        let Some(state) = self.answer_param("state").filter(|s| !s.is_empty()) else {
            return self.refuse(
                Reason::LoginStateInvalid,
                "the sign-in answer has no state",
                Vec::new(),
            );
        };
        let cookie_name = login_cookie_name(&state);
        let clear_attempt: Vec<HeaderValue> =
            session::delete_cookie(&cookie_name).into_iter().collect();
        let attempt = cookie_value(self.headers, &cookie_name)
            .ok_or("no login attempt cookie (used already, expired, or started in another browser)")
            .and_then(|v| {
                LoginState::open(self.keys, v).map_err(|_| "the login attempt cookie is invalid")
            })
            .and_then(|a| {
                if !a.state_matches(&state) {
                    Err("the state does not match the login attempt")
                } else if a.expired(self.now, self.session.login_timeout) {
                    Err("the login attempt expired")
                } else {
                    Ok(a)
                }
            });
        let attempt = match attempt {
            Ok(a) => a,
            Err(why) => {
                return self.refuse(
                    Reason::LoginStateInvalid,
                    &format!("{why}; start again from the page you wanted"),
                    clear_attempt,
                );
            }
        };
        match self.io.first_use(
            &format!("login/{}", digest_key(&attempt.state)),
            self.session.login_timeout.saturating_mul(2),
        ) {
            Ok(true) => {}
            Ok(false) => {
                return self.refuse(
                    Reason::LoginStateInvalid,
                    "this sign-in answer was already used",
                    clear_attempt,
                );
            }
            Err(e) => {
                return self.refuse(
                    Reason::StateUnavailable,
                    &format!("the sign-in answer cannot be checked for reuse: {e}"),
                    clear_attempt,
                );
            }
        }
        if let Some(error) = self.answer_param("error") {
            let description = self.answer_param("error_description").unwrap_or_default();
            return self.refuse(
                Reason::LoginFailed,
                &format!("the provider refused the sign-in: {error} {description}"),
                clear_attempt,
            );
        }
        let Some(provider) = self.issuer_named(&attempt.provider) else {
            return self.refuse(
                Reason::LoginStateInvalid,
                "the login attempt names a provider that is no longer configured",
                clear_attempt,
            );
        };
        let Some((issuer, client)) = self.issuer(provider) else {
            return self.refuse(Reason::LoginStateInvalid, "no such provider", clear_attempt);
        };
        // The answer comes the way this provider was asked to send it, and nothing else.
        let posted = self.method == Method::POST;
        if posted != client.form_post {
            let why = if posted {
                "the answer came as a form POST, but this provider answers in the query"
            } else {
                "this provider answers with a form POST (response_mode = \"form_post\"), not in the query"
            };
            return self.refuse(Reason::LoginStateInvalid, why, clear_attempt);
        }
        // RFC 9207: when the provider names itself, it must be the one we sent the user to.
        if let Some(iss) = self.answer_param("iss")
            && !issuer.matches_iss(&iss)
        {
            return self.refuse(
                Reason::LoginFailed,
                "the answer comes from another provider (iss mismatch)",
                clear_attempt,
            );
        }
        let Some(code) = self.answer_param("code").filter(|c| !c.is_empty()) else {
            return self.refuse(
                Reason::LoginStateInvalid,
                "the sign-in answer has no code",
                clear_attempt,
            );
        };
        let tokens = match self.token_request(
            provider,
            client,
            &[
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", client.redirect_uri.clone()),
                ("code_verifier", attempt.pkce_verifier.clone()),
            ],
        ) {
            Ok(t) => t,
            Err((reason, detail)) => return self.refuse(reason, &detail, clear_attempt),
        };
        let Some(id_token) = tokens.id_token.clone() else {
            return self.refuse(
                Reason::LoginFailed,
                "the provider returned no ID token (is `openid` among the scopes?)",
                clear_attempt,
            );
        };
        let id =
            match self.check_id_token(provider, client, &id_token, &tokens, Some(&attempt.nonce)) {
                Ok(id) => id,
                Err(detail) => return self.refuse(Reason::LoginFailed, &detail, clear_attempt),
            };
        let Some(sub) = id.subject.clone() else {
            return self.refuse(
                Reason::LoginFailed,
                "the ID token has no `sub`",
                clear_attempt,
            );
        };
        let sid_bytes = match self.random::<18>() {
            Ok(r) => r,
            Err(r) => return r,
        };
        let now_s = self.now.unix_secs();
        let mut claims = user_claims(&id.claims);
        if let Some(scope) = &tokens.scope {
            claims.insert("scope".into(), Value::String(scope.clone()));
        }
        let session = Session {
            sid: crate::b64::encode(&sid_bytes),
            provider: issuer.name.clone(),
            iss: issuer.issuer.clone(),
            sub: sub.clone(),
            claims,
            acr: id.acr.clone(),
            amr: id.amr.clone(),
            auth_time: id.auth_time.map(|t| t as u64),
            created: now_s,
            last_seen: now_s,
            access_token: tokens.access_token.clone(),
            access_expires: tokens.expires_in.map(|e| now_s.saturating_add(e)),
            access_issued: Some(now_s),
            refresh_token: tokens.refresh_token.clone(),
            id_token: Some(id_token),
            consent_asked: attempt.consent_scopes.clone(),
            signals: Some(ClientSignals::observe(caller, self.headers)),
            op_sid: id
                .claims
                .get("sid")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let op_sid = session.op_sid.as_deref();
        if let Err(e) = self.register(&session, op_sid) {
            return self.refuse(
                Reason::StateUnavailable,
                &format!("cannot record the session: {e}"),
                clear_attempt,
            );
        }
        let mut cookies = match self.session_cookies(&session) {
            Ok(c) => c,
            Err(detail) => return self.refuse(Reason::LoginFailed, &detail, clear_attempt),
        };
        cookies.extend(clear_attempt);
        redirect(StatusCode::SEE_OTHER, &attempt.return_to, cookies)
    }

    /// Records a new session in shared state: `sess/<sid>` (live), the provider's `sid` and
    /// the subject's session list (for back-channel logout).
    fn register(&self, session: &Session, op_sid: Option<&str>) -> Result<(), String> {
        let ttl = self.session.absolute_lifetime;
        self.io.set(&format!("sess/{}", session.sid), b"1", ttl)?;
        if let Some(op_sid) = op_sid {
            self.io.set(
                &format!(
                    "opsid/{}",
                    digest_key(&format!("{}\n{op_sid}", session.iss))
                ),
                session.sid.as_bytes(),
                ttl,
            )?;
        }
        let key = subject_key(&session.iss, &session.sub);
        let mut sids: Vec<String> = self
            .io
            .get(&key)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        sids.push(session.sid.clone());
        let excess = sids.len().saturating_sub(MAX_SESSIONS_PER_SUBJECT);
        sids.drain(..excess);
        let list = serde_json::to_vec(&sids).map_err(|e| e.to_string())?;
        self.io.set(&key, &list, ttl)
    }

    fn session_cookies(&self, session: &Session) -> Result<Vec<HeaderValue>, String> {
        let nonce = self
            .random::<24>()
            .map_err(|_| "no randomness".to_owned())?;
        let sealed = session
            .seal(self.keys, nonce)
            .map_err(|e| format!("cannot seal the session: {e}"))?;
        session::encode_cookies(
            &self.session.cookie,
            &sealed,
            &CookieAttrs {
                max_age: Some(self.session.absolute_lifetime),
                cross_site_post: false,
            },
            session::chunks_present(self.headers, &self.session.cookie),
        )
        .map_err(|e| format!("the session does not fit in cookies: {e}"))
    }

    fn clear_session_cookies(&self) -> Vec<HeaderValue> {
        let present = session::chunks_present(self.headers, &self.session.cookie);
        session::clear_cookies(&self.session.cookie, present).unwrap_or_default()
    }

    /// Calls `provider`'s token endpoint with `form` ([`authenticated_form`](Self::authenticated_form)).
    fn token_request(
        &self,
        provider: IssuerId,
        client: &LoginClient,
        form: &[(&str, String)],
    ) -> Result<TokenResponse, (Reason, String)> {
        let (status, body) = self.post_form(provider, client, FormEndpoint::Token, form)?;
        TokenResponse::parse(status, &body)
    }

    /// POSTs `form`, the client authenticated, to `provider`'s `endpoint`: its status and
    /// body, or [`Reason::ProviderUnavailable`] when it cannot be reached.
    fn post_form(
        &self,
        provider: IssuerId,
        client: &LoginClient,
        endpoint: FormEndpoint,
        form: &[(&str, String)],
    ) -> Result<(u16, Vec<u8>), (Reason, String)> {
        let (authorization, body) = self.authenticated_form(provider, client, form)?;
        self.io
            .token_request(provider, endpoint, &authorization, &body)
            .map_err(|e| {
                let name = endpoint.name();
                (
                    Reason::ProviderUnavailable,
                    format!("the {name} endpoint cannot be reached: {e}"),
                )
            })
    }

    /// `form` with the client authenticated as its `client_auth` says (see
    /// [`crate::client_auth::authenticate_form`]): a client assertion is for the provider's
    /// token endpoint, with a fresh `jti`.
    fn authenticated_form(
        &self,
        provider: IssuerId,
        client: &LoginClient,
        form: &[(&str, String)],
    ) -> Result<(String, String), (Reason, String)> {
        client_form(
            self.io,
            self.auth,
            provider,
            &client.client_id,
            &client.client_auth,
            form,
            self.now,
        )
    }

    /// Pushes the authorization request `params` to `provider` (RFC 9126): the
    /// `request_uri` the browser is then sent with.
    fn push_authorization(
        &self,
        provider: IssuerId,
        client: &LoginClient,
        params: &[(&str, String)],
    ) -> Result<String, (Reason, String)> {
        // The client id is in `params` already (PAR needs it there even with HTTP Basic).
        let (status, body) =
            self.post_form(provider, client, FormEndpoint::PushedAuthorization, params)?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 201 {
            let error = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error code");
            let reason = if status >= 500 {
                Reason::ProviderUnavailable
            } else {
                Reason::LoginFailed
            };
            return Err((
                reason,
                format!("the pushed-authorization endpoint answered {status}: {error}"),
            ));
        }
        answer
            .get("request_uri")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                (
                    Reason::LoginFailed,
                    "the pushed-authorization answer has no request_uri".to_owned(),
                )
            })
    }

    /// Verifies an ID token for `client`: signature and standard claims through the
    /// authenticator, then `nonce`, `azp` and `at_hash` (OIDC Core §3.1.3.7).
    fn check_id_token(
        &self,
        provider: IssuerId,
        client: &LoginClient,
        id_token: &str,
        tokens: &TokenResponse,
        nonce: Option<&str>,
    ) -> Result<VerifiedIdentity, String> {
        let id = self
            .auth
            .verify_issued(
                id_token,
                provider,
                &client.client_id,
                IssuedKind::IdToken,
                self.now,
            )
            .map_err(|f| {
                format!(
                    "the ID token is invalid ({}): {}",
                    f.reason.code(),
                    f.detail
                )
            })?;
        if let Some(expected) = nonce
            && id.claims.get("nonce").and_then(Value::as_str) != Some(expected)
        {
            return Err("the ID token's nonce is not this login's".into());
        }
        let audiences = match id.claims.get("aud") {
            Some(Value::Array(a)) => a.len(),
            _ => 1,
        };
        match id.claims.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != client.client_id => {
                return Err("the ID token's azp is another client".into());
            }
            None if audiences > 1 => {
                return Err("the ID token has several audiences and no azp".into());
            }
            _ => {}
        }
        if let (Some(expected), Some(at)) = (
            id.claims.get("at_hash").and_then(Value::as_str),
            tokens.access_token.as_deref(),
        ) {
            let alg = crate::jws::parse_compact(id_token, self.config.limits.max_token_bytes)
                .map(|j| j.header.alg)
                .map_err(|e| e.to_string())?;
            if session::at_hash(alg, at).as_deref() != Some(expected) {
                return Err("the ID token's at_hash does not match the access token".into());
            }
        }
        Ok(id)
    }

    /// The session of this request for a route that logs in with `providers`.
    pub fn lookup(&self, providers: &[IssuerId], on_unavailable_allow: bool) -> Lookup {
        let invalid = |detail: &str| {
            Lookup::Refuse(self.refuse(
                Reason::SessionInvalid,
                &format!("{detail}; sign in again"),
                self.clear_session_cookies(),
            ))
        };
        let sealed = match session::decode_cookies(self.headers, &self.session.cookie) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Lookup::Absent {
                    clear: Vec::new(),
                    why: "none",
                };
            }
            Err(e) => return invalid(&format!("the session cookie is unusable: {e}")),
        };
        let mut s = match Session::open(self.keys, &sealed) {
            Ok(s) => s,
            Err(e) => return invalid(&format!("the session cookie does not open: {e}")),
        };
        let absent = |why| Lookup::Absent {
            clear: self.clear_session_cookies(),
            why,
        };
        match s.state(
            self.now,
            self.session.idle_timeout,
            self.session.absolute_lifetime,
        ) {
            session::Freshness::Valid => {}
            session::Freshness::IdleExpired => return absent("idle_expired"),
            session::Freshness::AbsoluteExpired => return absent("absolute_expired"),
        }
        let Some(provider) = self.issuer_named(&s.provider) else {
            return absent("other_provider");
        };
        if !providers.contains(&provider) {
            return Lookup::Absent {
                clear: Vec::new(),
                why: "other_provider",
            };
        }
        match self.io.get(&format!("sess/{}", s.sid)) {
            Ok(Some(_)) => {}
            Ok(None) => return absent("revoked"),
            Err(e) if !on_unavailable_allow => {
                return Lookup::Refuse(problem(
                    Reason::StateUnavailable,
                    &format!("cannot check the session: {e}"),
                    self.request_id,
                    &[],
                ));
            }
            Err(_) => {}
        }
        let mut event = "valid";
        let mut changed = false;
        if s.needs_refresh(self.now, self.session.refresh_before) {
            match self.refresh(provider, &mut s) {
                Ok(e) => {
                    event = e;
                    changed = e != "valid";
                }
                Err(RefreshRefused) => {
                    let _ = self.io.delete(&format!("sess/{}", s.sid));
                    return absent("refresh_refused");
                }
            }
        }
        if s.touch(self.now, self.session.renew_after) {
            changed = true;
            if event == "valid" {
                event = "renewed";
            }
        }
        let set_cookies = if changed {
            match self.session_cookies(&s) {
                Ok(c) => c,
                Err(detail) => return invalid(&detail),
            }
        } else {
            Vec::new()
        };
        let identity = session_identity(&s, provider, self.session);
        Lookup::Session(Box::new(Resolved {
            identity,
            provider,
            set_cookies,
            access_token: s.access_token.clone(),
            event,
            consent_asked: s.consent_asked.clone(),
            sid: s.sid.clone(),
            signals: s.signals.clone(),
            op_sid: s.op_sid.clone(),
            created: s.created,
        }))
    }

    /// Refreshes `s`'s tokens: adopts tokens another request already refreshed, or takes
    /// the session's refresh lock and calls the token endpoint. Returns the event; an error
    /// when the provider refused the refresh token (the session is over).
    fn refresh(&self, provider: IssuerId, s: &mut Session) -> Result<&'static str, RefreshRefused> {
        let key = format!("refreshed/{}", s.sid);
        if let Ok(Some(sealed)) = self.io.get(&key)
            && let Ok(text) = std::str::from_utf8(&sealed)
            && let Ok(json) = session::open(self.keys, PURPOSE_REFRESHED, text)
            && let Ok(t) = serde_json::from_slice::<RefreshedTokens>(&json)
            && t.access_expires > s.access_expires
        {
            s.access_token = t.access_token;
            s.access_expires = t.access_expires;
            s.access_issued = t.access_issued;
            s.refresh_token = t.refresh_token;
            if t.id_token.is_some() {
                s.id_token = t.id_token;
            }
            return Ok("adopted");
        }
        let lock = format!(
            "refresh-lock/{}/{}",
            s.sid,
            s.access_expires.unwrap_or_default()
        );
        match self.io.first_use(&lock, REFRESH_LOCK) {
            Ok(true) => {}
            // Another request of this session is refreshing: carry on with the current
            // tokens (they are still valid for the refresh window).
            Ok(false) => return Ok("valid"),
            // No lock can be taken: no refresh now (a later request tries again).
            Err(_) => return Ok("refresh_failed"),
        }
        let Some((_, client)) = self.issuer(provider) else {
            return Ok("refresh_failed");
        };
        let Some(refresh_token) = s.refresh_token.clone() else {
            return Ok("valid");
        };
        let tokens = match self.token_request(
            provider,
            client,
            &[
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh_token),
            ],
        ) {
            Ok(t) => t,
            Err((Reason::ProviderUnavailable, _)) => return Ok("refresh_failed"),
            Err(_) => return Err(RefreshRefused),
        };
        // A new ID token must be for the same user (OIDC Core §12.2); no nonce this time.
        if let Some(id_token) = &tokens.id_token {
            match self.check_id_token(provider, client, id_token, &tokens, None) {
                Ok(id) if id.subject.as_deref() == Some(s.sub.as_str()) => {
                    s.id_token = Some(id_token.clone());
                }
                _ => return Err(RefreshRefused),
            }
        }
        let now_s = self.now.unix_secs();
        s.access_token = tokens.access_token.or(s.access_token.take());
        s.access_expires = tokens.expires_in.map(|e| now_s.saturating_add(e));
        s.access_issued = Some(now_s);
        if tokens.refresh_token.is_some() {
            s.refresh_token = tokens.refresh_token;
        }
        let record = RefreshedTokens {
            access_token: s.access_token.clone(),
            access_expires: s.access_expires,
            access_issued: s.access_issued,
            refresh_token: s.refresh_token.clone(),
            id_token: s.id_token.clone(),
        };
        if let (Ok(json), Ok(nonce)) = (serde_json::to_vec(&record), self.random::<24>())
            && let Ok(sealed) = session::seal(self.keys, PURPOSE_REFRESHED, &json, nonce)
        {
            let _ = self
                .io
                .set(&key, sealed.as_bytes(), self.session.idle_timeout);
        }
        Ok("refreshed")
    }

    /// [`LOGOUT_PATH`]: revokes the session, clears its cookies and continues with
    /// RP-initiated logout at the provider (or to `/` without one).
    pub fn logout(&self) -> Response {
        // Another site must not log users out behind their back (a link or an auto-submitted
        // form): such requests get a confirmation page whose button posts from our origin.
        let sealed = session::decode_cookies(self.headers, &self.session.cookie)
            .ok()
            .flatten();
        if !self.logout_intended(sealed.as_deref()) {
            return logout_confirmation(&self.logout_token(sealed.as_deref()));
        }
        let mut cookies = self.clear_session_cookies();
        let session = sealed.and_then(|sealed| Session::open(self.keys, &sealed).ok());
        let Some(s) = session else {
            return redirect(StatusCode::SEE_OTHER, "/", cookies);
        };
        let _ = self.io.delete(&format!("sess/{}", s.sid));
        let _ = self.io.delete(&format!("refreshed/{}", s.sid));
        let provider = self.issuer_named(&s.provider);
        let target = provider.and_then(|p| {
            let (_, client) = self.issuer(p)?;
            let end = self.auth.endpoints(p).ok()?.end_session?;
            let mut params = vec![("client_id", client.client_id.clone())];
            if let Some(hint) = &s.id_token {
                params.push(("id_token_hint", hint.clone()));
            }
            if let Some(uri) = &client.post_logout_redirect_uri {
                params.push(("post_logout_redirect_uri", uri.clone()));
            }
            let separator = if end.contains('?') { '&' } else { '?' };
            Some(format!("{end}{separator}{}", encode_form(&params)))
        });
        cookies.shrink_to_fit();
        redirect(
            StatusCode::SEE_OTHER,
            target.as_deref().unwrap_or("/"),
            cookies,
        )
    }

    /// True when the user asked for this logout from the gateway's own origin: fetch
    /// metadata says `same-origin` (or `none`: typed or bookmarked); without fetch metadata
    /// (older browsers, `<img>` tags), `Origin` or `Referer` must name this origin; a POST
    /// from the confirmation page carries its token, bound to this browser's session
    /// cookie. Anything else (another site's link, image or form) gets the confirmation page.
    fn logout_intended(&self, sealed: Option<&str>) -> bool {
        let header = |name: &str| self.headers.get(name).and_then(|v| v.to_str().ok());
        match header("sec-fetch-site") {
            Some("same-origin" | "none") => return true,
            Some(_) => return false,
            None => {}
        }
        if *self.method == Method::POST
            && let Some(token) = self.query.and_then(|q| query_param(q, "confirm"))
            && self.logout_token_ok(&token, sealed)
        {
            return true;
        }
        let same = |url: &str| {
            crate::canonical::split_url(url).is_some_and(|(scheme, other, _)| {
                other.origin(scheme) == self.authority.origin(scheme)
            })
        };
        match header("origin") {
            Some(origin) => same(origin),
            None => header("referer").is_some_and(same),
        }
    }

    /// The confirmation page's token: `exp.tag`, the tag binding the expiry to this
    /// browser's sealed session (so a token fetched by another browser is worthless).
    fn logout_token(&self, sealed: Option<&str>) -> String {
        let exp = (self.now.unix_secs() + LOGOUT_CONFIRM_TTL_SECS).to_string();
        let tag = crate::challenge::tag(
            &self.config.audit.subject_key,
            LOGOUT_CONFIRM_PURPOSE,
            &[exp.as_bytes(), sealed.unwrap_or_default().as_bytes()],
        );
        format!("{exp}.{}", crate::b64::encode(&tag))
    }

    fn logout_token_ok(&self, token: &str, sealed: Option<&str>) -> bool {
        let Some((exp, tag)) = token.split_once('.') else {
            return false;
        };
        let (Ok(expires), Some(tag)) = (exp.parse::<u64>(), crate::b64::decode(tag)) else {
            return false;
        };
        expires >= self.now.unix_secs()
            && crate::challenge::tag_ok(
                &self.config.audit.subject_key,
                LOGOUT_CONFIRM_PURPOSE,
                &[exp.as_bytes(), sealed.unwrap_or_default().as_bytes()],
                &tag,
            )
    }

    /// [`BACKCHANNEL_PATH`]: validates a logout token (OIDC Back-Channel Logout §2.6) and
    /// revokes the sessions it names. 200 on success, 400 with a JSON error otherwise.
    pub fn backchannel(&self) -> Response {
        match self.backchannel_inner() {
            Ok(revoked) => Response {
                status: StatusCode::OK,
                headers: vec![
                    (CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    (
                        HeaderName::from_static("x-portcullis-revoked"),
                        HeaderValue::from(revoked),
                    ),
                ],
                body: Vec::new(),
                reason: Reason::LogoutTokenInvalid,
            },
            Err((reason, detail)) => problem(reason, &detail, self.request_id, &[]),
        }
    }

    fn backchannel_inner(&self) -> Result<u64, (Reason, String)> {
        let bad = |d: &str| (Reason::LogoutTokenInvalid, d.to_owned());
        if self.method != Method::POST {
            return Err((
                Reason::InvalidRequest,
                "back-channel logout is a POST".into(),
            ));
        }
        let body = std::str::from_utf8(self.body).map_err(|_| bad("the body is not text"))?;
        let token = query_param(body, "logout_token").ok_or_else(|| bad("no logout_token"))?;
        // Pick the provider by the token's (unverified) `iss`; the signature check follows.
        let jws = crate::jws::parse_compact(&token, self.config.limits.max_token_bytes)
            .map_err(|e| bad(&e.to_string()))?;
        let claims =
            crate::jws::parse_object(&jws.payload).map_err(|_| bad("payload is not JSON"))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let provider = self
            .config
            .issuers
            .iter()
            .position(|i| i.matches_iss(iss) && i.login.is_some())
            .map(IssuerId)
            .ok_or_else(|| bad("the token is not from a login provider"))?;
        let (_, client) = self
            .issuer(provider)
            .ok_or_else(|| bad("no such provider"))?;
        let id = self
            .auth
            .verify_issued(
                &token,
                provider,
                &client.client_id,
                IssuedKind::LogoutToken,
                self.now,
            )
            .map_err(|f| bad(&format!("{}: {}", f.reason.code(), f.detail)))?;
        let events = id.claims.get("events").and_then(Value::as_object);
        if !events.is_some_and(|e| e.get(BACKCHANNEL_EVENT).is_some_and(Value::is_object)) {
            return Err(bad("the token lacks the back-channel logout event"));
        }
        if id.claims.contains_key("nonce") {
            return Err(bad("a logout token must not have a nonce"));
        }
        if id.claims.get("iat").is_none() {
            return Err(bad("the token has no iat"));
        }
        let jti = id
            .claims
            .get("jti")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("the token has no jti"))?;
        let op_sid = id.claims.get("sid").and_then(Value::as_str);
        if op_sid.is_none() && id.subject.is_none() {
            return Err(bad("the token names neither sid nor sub"));
        }
        match self.io.first_use(
            &format!("bcl/{}", digest_key(&format!("{iss}\n{jti}"))),
            Duration::from_secs(3600),
        ) {
            Ok(true) => {}
            Ok(false) => return Err(bad("this logout token was already used")),
            Err(e) => {
                return Err((
                    Reason::StateUnavailable,
                    format!("the logout token cannot be checked for reuse: {e}"),
                ));
            }
        }
        let unavailable = |e: String| (Reason::StateUnavailable, e);
        let mut revoked = 0;
        if let Some(op_sid) = op_sid {
            self.end_provider_session(provider, Some(iss), op_sid)
                .map_err(unavailable)?;
            if end_browser_session_of(self.io, iss, op_sid).map_err(unavailable)? {
                revoked += 1;
            }
        } else if let Some(sub) = &id.subject {
            let key = subject_key(iss, sub);
            if let Some(list) = self.io.get(&key).map_err(unavailable)? {
                let sids: Vec<String> = serde_json::from_slice(&list).unwrap_or_default();
                for sid in sids {
                    self.io
                        .delete(&format!("sess/{sid}"))
                        .map_err(unavailable)?;
                    revoked += 1;
                }
                self.io.delete(&key).map_err(unavailable)?;
            }
        }
        Ok(revoked)
    }
}

/// The refresh token was refused: the session is over.
#[derive(Debug)]
struct RefreshRefused;

/// The purpose of refreshed tokens sealed into shared state.
const PURPOSE_REFRESHED: &str = "refreshed";

/// Tokens one request refreshed, for the session's other requests (sealed in shared state).
#[derive(serde::Serialize, serde::Deserialize)]
struct RefreshedTokens {
    access_token: Option<String>,
    access_expires: Option<u64>,
    #[serde(default)]
    access_issued: Option<u64>,
    refresh_token: Option<String>,
    id_token: Option<String>,
}

/// A token endpoint's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenResponse {
    /// `access_token`.
    pub access_token: Option<String>,
    /// `id_token`.
    pub id_token: Option<String>,
    /// `refresh_token`.
    pub refresh_token: Option<String>,
    /// `expires_in`, seconds.
    pub expires_in: Option<u64>,
    /// `scope`.
    pub scope: Option<String>,
}

impl TokenResponse {
    /// Parses a token endpoint answer (RFC 6749 §5.1/§5.2): 200 with a JSON object, else the
    /// provider's `error` as [`Reason::LoginFailed`] (5xx as [`Reason::ProviderUnavailable`]).
    pub fn parse(status: u16, body: &[u8]) -> Result<Self, (Reason, String)> {
        let json: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
        if status != 200 {
            let error = json
                .as_ref()
                .and_then(|j| j.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("(no error code)");
            let reason = if status >= 500 {
                Reason::ProviderUnavailable
            } else {
                Reason::LoginFailed
            };
            return Err((
                reason,
                format!("the token endpoint answered {status}: {error}"),
            ));
        }
        let json = json.ok_or((
            Reason::LoginFailed,
            "the token endpoint answered no JSON object".to_owned(),
        ))?;
        let text = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            access_token: text("access_token"),
            id_token: text("id_token"),
            refresh_token: text("refresh_token"),
            expires_in: json.get("expires_in").and_then(Value::as_u64),
            scope: text("scope"),
        })
    }
}

/// The identity of a session, as for a verified token: the provider as issuer, the kept
/// claims plus `iss`, `sub`, `acr`, `amr` and `auth_time`; it "expires" with the session.
fn session_identity(s: &Session, provider: IssuerId, cfg: &SessionConfig) -> VerifiedIdentity {
    let mut claims = s.claims.clone();
    claims.insert("iss".into(), Value::String(s.iss.clone()));
    claims.insert("sub".into(), Value::String(s.sub.clone()));
    if let Some(acr) = &s.acr {
        claims.insert("acr".into(), Value::String(acr.clone()));
    }
    if !s.amr.is_empty() {
        claims.insert(
            "amr".into(),
            Value::Array(s.amr.iter().cloned().map(Value::String).collect()),
        );
    }
    if let Some(t) = s.auth_time {
        claims.insert("auth_time".into(), Value::from(t));
    }
    let scopes = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| {
            s.split(' ')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    VerifiedIdentity {
        issuer: provider,
        subject: Some(s.sub.clone()),
        scopes,
        acr: s.acr.clone(),
        amr: s.amr.clone(),
        auth_time: s.auth_time.map(|t| t as f64),
        expires_at: s.created.saturating_add(cfg.absolute_lifetime.as_secs()) as f64,
        claims,
    }
}

/// The ID token's claims about the user (token-describing claims left out).
fn user_claims(claims: &Map<String, Value>) -> Map<String, Value> {
    claims
        .iter()
        .filter(|(k, _)| !TOKEN_CLAIMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Marks `provider`'s session `op_sid` (of `iss`, the configured issuer without one) as
/// ended for its access tokens, when the issuer has `session_bound_tokens`.
pub fn end_provider_session(
    config: &Config,
    io: &Io<'_>,
    provider: IssuerId,
    iss: Option<&str>,
    op_sid: &str,
) -> Result<(), String> {
    let Some(issuer) = config.issuers.get(provider.0) else {
        return Ok(());
    };
    if !issuer.session_bound_tokens {
        return Ok(());
    }
    let key = ended_session_key(iss.unwrap_or(&issuer.issuer), op_sid);
    io.set(&key, b"1", ENDED_SESSION_TTL)
}

/// Ends the browser session signed in through provider session `op_sid` of `iss`, if one
/// is live (the index `register` keeps): true when one was.
pub fn end_browser_session_of(io: &Io<'_>, iss: &str, op_sid: &str) -> Result<bool, String> {
    let key = format!("opsid/{}", digest_key(&format!("{iss}\n{op_sid}")));
    match io.get(&key)? {
        Some(sid) => {
            io.delete(&format!("sess/{}", String::from_utf8_lossy(&sid)))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// How long a provider session stays marked as ended for its access tokens
/// (`session_bound_tokens`): longer than any access token should live.
pub const ENDED_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// The shared-state key marking provider session `sid` of `iss` as ended.
pub fn ended_session_key(iss: &str, sid: &str) -> String {
    format!("opsid-ended/{}", digest_key(&format!("{iss}\n{sid}")))
}

/// A short, fixed-length state key for arbitrary text.
fn digest_key(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    crate::b64::encode(d.get(..18).unwrap_or(&d))
}

fn subject_key(iss: &str, sub: &str) -> String {
    format!("subsess/{}", digest_key(&format!("{iss}\n{sub}")))
}

/// The `(name, value)` pairs of every `Cookie` header that are text.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    crate::cookies::pairs(headers).filter_map(|p| {
        Some((
            std::str::from_utf8(p.name).ok()?,
            std::str::from_utf8(p.value).ok()?,
        ))
    })
}

/// The value of cookie `name` (the first one).
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    crate::cookies::value(headers, name)
}

/// The `Cookie` header without the gateway's own cookies (session chunks, login attempts,
/// challenge clearance), read with the same parser as every reader of them: `None` when
/// nothing changes, `Some(None)` when nothing is left. `session_base` is `[session] cookie`
/// (`None` without sessions: login and clearance cookies are still the gateway's).
pub fn strip_own_cookies(
    headers: &HeaderMap,
    session_base: Option<&str>,
) -> Option<Option<HeaderValue>> {
    let own = |name: &[u8]| {
        name.starts_with(LOGIN_COOKIE_PREFIX.as_bytes())
            || name == crate::challenge::CLEARANCE_COOKIE.as_bytes()
            || session_base.is_some_and(|base| {
                name.strip_prefix(base.as_bytes())
                    .and_then(|rest| rest.strip_prefix(b"-"))
                    .is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
            })
    };
    crate::cookies::without(headers, own)
}

/// A browser loading a page (not a script or an API client).
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-requested-with").is_some() {
        return false;
    }
    match header("sec-fetch-mode") {
        Some(mode) => mode == "navigate",
        None => header("accept").is_some_and(|a| a.contains("text/html")),
    }
}

/// The decoded value of form or query parameter `name` (`+` as space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| percent_decode(&v.replace('+', " ")))
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A redirect with `Set-Cookie` headers and no caching.
fn redirect(status: StatusCode, location: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut headers = vec![
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ),
    ];
    if let Ok(v) = HeaderValue::from_str(location) {
        headers.push((LOCATION, v));
    }
    headers.extend(cookies.into_iter().map(|c| (SET_COOKIE, c)));
    Response {
        status,
        headers,
        body: b"Redirecting\n".to_vec(),
        reason: Reason::AuthenticationRequired,
    }
}

/// How long the confirmation page's token is good for.
const LOGOUT_CONFIRM_TTL_SECS: u64 = 600;
/// The MAC purpose of the confirmation page's token.
const LOGOUT_CONFIRM_PURPOSE: &str = "portcullis logout confirmation v1";

/// "Sign out?" with a button that posts to [`LOGOUT_PATH`] from the gateway's own origin,
/// carrying `token` (URL-safe base64 and digits only).
fn logout_confirmation(token: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Sign out?</title></head>\n<body><main><h1>Sign out?</h1>\n<form id=\"logout\" method=\"post\" action=\"{LOGOUT_PATH}?confirm={token}\"><button type=\"submit\">Sign out</button></form>\n<p><a href=\"/\">Stay signed in</a></p></main></body></html>\n",
        token = html_escape(token),
    );
    Response {
        status: StatusCode::OK,
        headers: page_headers("default-src 'none'; form-action 'self'".to_owned()),
        body: body.into_bytes(),
        reason: Reason::InvalidRequest,
    }
}

/// A plain page explaining a refusal, with a way back in.
fn page(reason: Reason, detail: &str, request_id: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title></head>\n<body><main><h1 id=\"title\">{title}</h1>\n<p id=\"detail\">{detail}</p>\n<p>Reason: <code id=\"reason\">{code}</code> · request <code>{rid}</code></p>\n<p><a href=\"/\">Start again</a></p></main></body></html>\n",
        title = html_escape(reason.title()),
        detail = html_escape(detail),
        code = reason.code(),
        rid = html_escape(request_id),
    );
    Response {
        status: reason.status(),
        headers: page_headers("default-src 'none'".to_owned()),
        body: body.into_bytes(),
        reason,
    }
}

/// `form` with the client `client_id` authenticated at `provider` as `auth` says: the
/// `Authorization` header (empty when the body carries it) and the encoded body. A client
/// assertion is for the provider's token endpoint (RFC 7523 §3), with a fresh `jti`.
pub(crate) fn client_form(
    io: &Io<'_>,
    auth: &dyn Authenticator,
    provider: IssuerId,
    client_id: &str,
    method: &ClientAuth,
    form: &[(&str, String)],
    now: Timestamp,
) -> Result<(String, String), (Reason, String)> {
    let mut jti = [0u8; 16];
    let endpoints = if method.signs() {
        let endpoints = auth.endpoints(provider).map_err(|e| {
            (
                Reason::ProviderUnavailable,
                format!("the provider's endpoints are unknown: {e}"),
            )
        })?;
        crate::model::Entropy::fill(io, &mut jti).map_err(|_| {
            (
                Reason::LoginFailed,
                "no randomness for the client assertion".to_owned(),
            )
        })?;
        Some(endpoints)
    } else {
        None
    };
    let sign = |key: &crate::client_auth::ClientKey, input: &[u8]| auth.sign_as_client(key, input);
    let assertion = endpoints.as_ref().map(|e| AssertionInputs {
        audience: &e.token,
        jti: &jti,
        sign: &sign,
    });
    crate::client_auth::authenticate_form(client_id, method, form, assertion, now)
        .map_err(|e| (Reason::LoginFailed, format!("client authentication: {e}")))
}

/// The login client's scopes plus `extra` (space-separated), each once.
fn scopes_with(scopes: &[String], extra: Option<&str>) -> String {
    let mut all: Vec<&str> = scopes.iter().map(String::as_str).collect();
    for s in extra.unwrap_or_default().split(' ') {
        if !s.is_empty() && !all.contains(&s) {
            all.push(s);
        }
    }
    all.join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn consent_scopes_are_added_to_the_login_scopes_once() {
        let base = ["openid".to_owned(), "profile".to_owned()];
        assert_eq!(scopes_with(&base, None), "openid profile");
        assert_eq!(
            scopes_with(&base, Some("consent:orders profile  consent:ads")),
            "openid profile consent:orders consent:ads"
        );
    }

    #[test]
    fn own_cookies_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static(
                "a=1; __Host-portcullis-session-0=x; __Host-portcullis-session-1=y; b=2",
            ),
        );
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static(
                "__Host-portcullis-login-abc=z; __Host-portcullis-session-x=keep",
            ),
        );
        let out = strip_own_cookies(&h, Some("__Host-portcullis-session"))
            .unwrap()
            .unwrap();
        assert_eq!(out, "a=1; b=2; __Host-portcullis-session-x=keep");
        let mut only = HeaderMap::new();
        only.insert(
            http::header::COOKIE,
            HeaderValue::from_static("__Host-portcullis-session-0=x"),
        );
        assert_eq!(
            strip_own_cookies(&only, Some("__Host-portcullis-session")),
            Some(None)
        );
        let mut none = HeaderMap::new();
        none.insert(http::header::COOKIE, HeaderValue::from_static("a=1"));
        assert_eq!(
            strip_own_cookies(&none, Some("__Host-portcullis-session")),
            None
        );
    }

    #[test]
    fn navigations_and_scripts_are_told_apart() {
        let nav = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            is_navigation(&Method::GET, &h)
        };
        assert!(nav(&[("sec-fetch-mode", "navigate")]));
        assert!(nav(&[("accept", "text/html,application/xhtml+xml")]));
        assert!(!nav(&[("sec-fetch-mode", "cors"), ("accept", "text/html")]));
        assert!(!nav(&[("accept", "application/json")]));
        assert!(!nav(&[
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest")
        ]));
    }

    #[test]
    fn query_parameters_decode() {
        assert_eq!(query_param("a=1&b=x%20y+z", "b").as_deref(), Some("x y z"));
        assert_eq!(query_param("a=1&b", "b").as_deref(), Some(""));
        assert_eq!(query_param("a=%zz", "a"), None);
        assert_eq!(query_param("a=1", "c"), None);
    }

    #[test]
    fn token_responses_parse_and_errors_map_to_reasons() {
        let ok = TokenResponse::parse(
            200,
            br#"{"access_token":"at","id_token":"it","refresh_token":"rt","expires_in":60,"scope":"openid"}"#,
        )
        .unwrap();
        assert_eq!(ok.expires_in, Some(60));
        assert_eq!(ok.refresh_token.as_deref(), Some("rt"));
        let refused = TokenResponse::parse(400, br#"{"error":"invalid_grant"}"#).unwrap_err();
        assert_eq!(refused.0, Reason::LoginFailed);
        assert!(refused.1.contains("invalid_grant"));
        assert_eq!(
            TokenResponse::parse(503, b"").unwrap_err().0,
            Reason::ProviderUnavailable
        );
        assert_eq!(
            TokenResponse::parse(200, b"[]").unwrap_err().0,
            Reason::LoginFailed
        );
    }

    #[test]
    fn pages_escape_what_they_show() {
        let r = page(Reason::LoginFailed, "<script>x</script>", "r\"1");
        let body = String::from_utf8(r.body).unwrap();
        assert!(!body.contains("<script>"));
        assert!(body.contains("&lt;script&gt;"));
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}
