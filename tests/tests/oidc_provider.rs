//! The OpenID Provider harness against a real headless Chromium: panva's certified
//! `oidc-provider` (started by `portcullis_tests::oidc`) signs users in through its login
//! form, answers the authorization-code flow with PKCE, issues ID tokens with acr/amr,
//! rotates refresh tokens, logs out RP-initiated (with its confirmation page) and sends
//! back-channel logout tokens to a local client server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_tests::browser::Browser;
use portcullis_tests::net::{Req, Resp, Server};
use portcullis_tests::oidc::{
    OpenIdProvider, form_encode, form_value, jwt_parts, pkce_pair, random_token, verify_es256,
};
use serde_json::{Value, json};

const CLIENT: &str = "portcullis-test";
const SECRET: &str = "a-long-enough-test-client-secret-0123456789";
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The relying party's side: redirect URI, post-logout URI and back-channel logout URI.
struct ClientServer {
    server: Server,
    /// Every request, in order.
    seen: Arc<Mutex<Vec<Req>>>,
}

impl ClientServer {
    fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::<Req>::new()));
        let s = seen.clone();
        let server = Server::start(move |req| {
            s.lock().unwrap().push(req.clone());
            let mut r = Resp {
                status: 200,
                headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
                body: b"<!DOCTYPE html><title>client</title><p id=client>ok</p>".to_vec(),
            };
            if req.path.starts_with("/backchannel") {
                r.headers = vec![("cache-control".into(), "no-store".into())];
                r.body.clear();
            }
            r
        });
        Self { server, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// The first request whose path starts with `prefix`, waiting up to `timeout`.
    fn wait_for(&self, prefix: &str, timeout: Duration) -> Req {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.path.starts_with(prefix))
            {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the client server got no request to {prefix} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn take(&self, prefix: &str) -> Vec<Req> {
        let mut seen = self.seen.lock().unwrap();
        let (hit, rest): (Vec<Req>, Vec<Req>) =
            seen.drain(..).partition(|r| r.path.starts_with(prefix));
        *seen = rest;
        hit
    }
}

/// The result of one browser login.
struct Login {
    id_token: String,
    claims: Value,
    refresh_token: String,
    tokens: Value,
}

/// Signs `login` in through the provider's form in `browser` and redeems the code.
fn login(op: &OpenIdProvider, rp: &ClientServer, browser: &Browser, login: &str) -> Login {
    let disco = op.discovery();
    let (verifier, challenge) = pkce_pair();
    let (state, nonce) = (random_token(), random_token());
    let redirect_uri = rp.url("/callback");
    let url = format!(
        "{}?{}",
        disco["authorization_endpoint"].as_str().unwrap(),
        form_encode(&[
            ("response_type", "code"),
            ("client_id", CLIENT),
            ("redirect_uri", &redirect_uri),
            ("scope", "openid email profile"),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    browser.goto(&url);
    browser.wait_until(Duration::from_secs(10), "the login form", |b| {
        b.exists("input[name=login]")
    });
    browser.type_into("input[name=login]", login);
    browser.type_into("input[name=password]", "any password");
    browser.click("form#login button[type=submit]");
    // Consent is granted by the provider's configuration; click through should it appear.
    browser.wait_until(Duration::from_secs(10), "the redirect to the client", |b| {
        if b.exists("form#consent button[type=submit]") {
            b.click("form#consent button[type=submit]");
        }
        b.url().starts_with(&redirect_uri)
    });
    let hits = rp.take("/callback");
    assert_eq!(hits.len(), 1, "one callback");
    let query = hits[0].path.split_once('?').map(|(_, q)| q).unwrap_or("");
    assert_eq!(form_value(query, "state").as_deref(), Some(state.as_str()));
    assert_eq!(form_value(query, "iss").as_deref(), Some(op.issuer()));
    let code = form_value(query, "code").expect("code in the callback");

    let r = op.token_request(
        (CLIENT, SECRET),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &verifier),
        ],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let tokens = r.json_body();
    assert!(tokens["access_token"].is_string(), "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let id_token = tokens["id_token"].as_str().expect("id_token").to_owned();
    let refresh_token = tokens["refresh_token"]
        .as_str()
        .expect("refresh_token without offline_access")
        .to_owned();

    // Signature checked against the published key set; then the claims an RP must check.
    let claims = verify_es256(&id_token, &op.jwks()).expect("ID token signature");
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], CLIENT);
    assert_eq!(claims["nonce"], nonce.as_str());
    assert_eq!(claims["sub"], login);
    assert_eq!(claims["email"], format!("{login}@example.test"));
    assert!(
        claims["sid"].is_string(),
        "sid (back-channel logout): {claims}"
    );
    assert!(claims["auth_time"].is_u64());
    Login {
        id_token,
        claims,
        refresh_token,
        tokens,
    }
}

fn refresh(op: &OpenIdProvider, token: &str) -> Resp {
    op.token_request(
        (CLIENT, SECRET),
        &[("grant_type", "refresh_token"), ("refresh_token", token)],
    )
}

/// Checks a back-channel logout delivery; returns the logout token's claims.
fn logout_token_claims(op: &OpenIdProvider, req: &Req) -> Value {
    assert_eq!(req.method, "POST");
    let ct = req
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(ct, Some("application/x-www-form-urlencoded"));
    let body = String::from_utf8(req.body.clone()).unwrap();
    let token = form_value(&body, "logout_token").expect("logout_token");
    let (header, _) = jwt_parts(&token);
    assert_eq!(header["typ"], "logout+jwt");
    let claims = verify_es256(&token, &op.jwks()).expect("logout token signature");
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], CLIENT);
    assert!(claims["events"][BACKCHANNEL_EVENT].is_object(), "{claims}");
    assert!(
        claims.get("nonce").is_none(),
        "a logout token has no nonce: {claims}"
    );
    assert!(
        claims["jti"].is_string() && claims["iat"].is_u64(),
        "{claims}"
    );
    claims
}

#[test]
fn login_refresh_and_logout_against_a_real_provider_in_chromium() {
    let started = Instant::now();
    let rp = ClientServer::start();
    let op = OpenIdProvider::start(json!({
        "access_token_ttl": 30,
        "accounts": { "alice": { "residency": "eu" } },
        "clients": [{
            "client_id": CLIENT,
            "client_secret": SECRET,
            "redirect_uris": [rp.url("/callback")],
            "post_logout_redirect_uris": [rp.url("/logged-out")],
            "backchannel_logout_uri": rp.url("/backchannel-logout"),
            "token_endpoint_auth_method": "client_secret_basic",
            "id_token_signed_response_alg": "ES256",
        }],
    }));
    let disco = op.discovery();
    assert_eq!(disco["issuer"], op.issuer());
    assert_eq!(disco["code_challenge_methods_supported"], json!(["S256"]));
    for endpoint in [
        "end_session_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "jwks_uri",
    ] {
        assert!(disco[endpoint].is_string(), "discovery has {endpoint}");
    }
    assert_eq!(disco["backchannel_logout_session_supported"], true);

    let browser = Browser::start();

    // 1. alice signs in with a password: acr "pwd"; the extra per-account claim is there.
    let alice = login(&op, &rp, &browser, "alice");
    assert_eq!(alice.claims["acr"], "pwd");
    assert_eq!(alice.claims["amr"], json!(["pwd"]));
    assert_eq!(alice.claims["residency"], "eu");
    assert_eq!(alice.tokens["expires_in"], 30);

    // The access token is live (introspection) until the grant ends.
    let introspect = |token: &str| {
        op.post_form(
            disco["introspection_endpoint"].as_str().unwrap(),
            &[("token", token)],
            Some((CLIENT, SECRET)),
        )
        .json_body()
    };
    let at = alice.tokens["access_token"].as_str().unwrap();
    assert_eq!(introspect(at)["active"], true);
    assert_eq!(introspect(at)["sub"], "alice");

    // 2. Refresh rotates: a new refresh token; the old one is refused from then on.
    let r = refresh(&op, &alice.refresh_token);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let refreshed = r.json_body();
    let rotated = refreshed["refresh_token"].as_str().expect("rotated token");
    assert_ne!(rotated, alice.refresh_token);
    let (_, new_id) = jwt_parts(refreshed["id_token"].as_str().unwrap());
    assert_eq!(new_id["sub"], "alice");
    assert_eq!(new_id["acr"], "pwd");
    let old = refresh(&op, &alice.refresh_token);
    assert_eq!(old.status, 400);
    assert_eq!(old.json_body()["error"], "invalid_grant");
    // oidc-provider treats reuse of a rotated token as theft and revokes the whole grant:
    // the rotated refresh token and the access tokens are gone too.
    assert_eq!(refresh(&op, rotated).status, 400);
    assert_eq!(introspect(at)["active"], false, "reuse revoked the grant");

    // 3. RP-initiated logout: the provider asks for confirmation, notifies the client on the
    // back channel, and returns to the post-logout URI with the state.
    let logout_state = random_token();
    let end_session = format!(
        "{}?{}",
        disco["end_session_endpoint"].as_str().unwrap(),
        form_encode(&[
            ("id_token_hint", &alice.id_token),
            ("post_logout_redirect_uri", &rp.url("/logged-out")),
            ("state", &logout_state),
        ])
    );
    browser.goto(&end_session);
    browser.wait_until(Duration::from_secs(10), "the post-logout redirect", |b| {
        if b.exists("button[name=logout][value=yes]") {
            b.click("button[name=logout][value=yes]");
        }
        b.url().starts_with(&rp.url("/logged-out"))
    });
    let landed = rp.take("/logged-out");
    assert_eq!(landed.len(), 1);
    let q = landed[0].path.split_once('?').map(|(_, q)| q).unwrap_or("");
    assert_eq!(
        form_value(q, "state").as_deref(),
        Some(logout_state.as_str())
    );
    let delivered = rp.wait_for("/backchannel-logout", Duration::from_secs(5));
    let lt = logout_token_claims(&op, &delivered);
    assert_eq!(lt["sub"], "alice");
    assert_eq!(lt["sid"], alice.claims["sid"]);
    rp.take("/backchannel-logout");

    // 4. alice-mfa signs in (a new session: the last one ended): acr "mfa".
    let mfa = login(&op, &rp, &browser, "alice-mfa");
    assert_eq!(mfa.claims["acr"], "mfa");
    assert_eq!(mfa.claims["amr"], json!(["pwd", "otp"]));
    assert!(mfa.claims.get("residency").is_none());
    assert_ne!(mfa.claims["sid"], alice.claims["sid"]);
    let mfa_at = mfa.tokens["access_token"].as_str().unwrap();
    assert_eq!(introspect(mfa_at)["active"], true);

    // 5. Provider-initiated logout (an admin ends the account's sessions): back-channel logout
    // token for that session, and the refresh token stops working.
    let result = op.logout_account("alice-mfa");
    assert_eq!(result["sessions"], 1, "{result}");
    assert_eq!(result["notified"], json!([CLIENT]), "{result}");
    assert_eq!(result["errors"], json!([]), "{result}");
    let delivered = rp.wait_for("/backchannel-logout", Duration::from_secs(5));
    let lt = logout_token_claims(&op, &delivered);
    assert_eq!(lt["sub"], "alice-mfa");
    assert_eq!(lt["sid"], mfa.claims["sid"]);
    let r = refresh(&op, &mfa.refresh_token);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let mfa_at = mfa.tokens["access_token"].as_str().unwrap();
    assert_eq!(
        introspect(mfa_at)["active"],
        false,
        "logout revoked the grant"
    );
    // Nobody else is signed in.
    assert_eq!(op.logout_account("bob")["sessions"], 0);

    let elapsed = started.elapsed();
    eprintln!("oidc provider self-test: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}
