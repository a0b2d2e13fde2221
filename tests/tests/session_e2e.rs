//! Browser sessions end to end: a real headless Chromium signs in through the gateway's own
//! OIDC login at a real OpenID Provider (panva's certified `oidc-provider`, see
//! `portcullis_tests::oidc`), lands on the page it asked for with the backend seeing the
//! verified identity, reloads without a new login, logs out (RP-initiated, at the provider
//! too) and is sent to log in again. Also: back-channel logout revokes a live session,
//! scripts get 401 JSON and never a redirect, tampered / truncated / replayed cookies and
//! states get a clear page, parallel logins in two tabs both succeed, an expiring access
//! token is refreshed without a new login (and a request still holding the rotated-away
//! refresh token adopts the new tokens), step-up sends the browser back to the provider,
//! and a route with two providers offers a choice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis_tests::browser::Browser;
use portcullis_tests::host::{
    Gateway, audit_records, last_audit_record, reason, start_engine_args,
};
use portcullis_tests::net::{Backend, KeyServer, Resp, free_port, request};
use portcullis_tests::oidc::{OpenIdProvider, form_value};
use portcullis_tests::*;
use serde_json::{Value, json};

const CLIENT: &str = "portcullis";
const SECRET: &str = "a-long-enough-gateway-client-secret-0123456789";
const SESSION_COOKIE: &str = "__Host-portcullis-session-0";
const WAIT: Duration = Duration::from_secs(20);

/// A provider registration for the gateway listening on `port`.
fn op_config(port: u16, access_token_ttl: u64) -> Value {
    json!({
        "clients": [{
            "client_id": CLIENT,
            "client_secret": SECRET,
            "redirect_uris": [format!("http://localhost:{port}/_portcullis/callback")],
            "post_logout_redirect_uris": [format!("http://localhost:{port}/")],
            "backchannel_logout_uri": format!("http://127.0.0.1:{port}/_portcullis/backchannel-logout"),
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "client_secret_basic",
            "id_token_signed_response_alg": "ES256",
        }],
        "access_token_ttl": access_token_ttl,
        "accounts": {},
    })
}

fn provider_block(name: &str, label: &str, op: &OpenIdProvider, port: u16) -> String {
    format!(
        r#"
[[issuer]]
name = "{name}"
issuer = "{iss}"
discovery = true
insecure_http_jwks = true
audiences = ["api://app"]
algorithms = ["ES256", "RS256"]
session_bound_tokens = true

[issuer.login]
client_id = "{CLIENT}"
client_secret_file = "client.secret"
redirect_uri = "http://localhost:{port}/_portcullis/callback"
post_logout_redirect_uri = "http://localhost:{port}/"
label = "{label}"
# The authorization request in the URL, where these tests read it (pushed requests:
# providers_e2e.rs).
par = false
"#,
        iss = op.issuer()
    )
}

struct World {
    op: OpenIdProvider,
    op2: OpenIdProvider,
    _keys: KeyServer,
    backend: Backend,
    gw: Gateway,
    port: u16,
    config: String,
    files: Vec<(String, Vec<u8>)>,
}

impl World {
    fn start(engine: &str, access_token_ttl: u64) -> Self {
        Self::start_with(engine, access_token_ttl, None)
    }

    /// [`World::start`] with the shared state in Redis at `redis` when given (the host's
    /// `[state]`, `serve-wasm --state` for a bundle).
    fn start_with(engine: &str, access_token_ttl: u64, redis: Option<&str>) -> Self {
        let port = free_port();
        let op = OpenIdProvider::start(op_config(port, access_token_ttl));
        let op2 = OpenIdProvider::start(op_config(port, access_token_ttl));
        let keys = KeyServer::start(TestIdp::shared().jwks());
        let backend = Backend::start("eu");
        let config = format!(
            r#"
[[issuer]]
name = "api"
issuer = "{ISSUER}"
jwks_uri = "{keys}/jwks.json"
insecure_http_jwks = true
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]
{p1}
{p2}
[region.eu]
jurisdiction = "EU"
backends = ["{backend}"]

[residency]
missing = "eu"
anonymous = "eu"

[identity]
headers = {{ "x-user-id" = "sub", "x-user-email" = "email", "x-user-acr" = "acr", "x-user-amr" = "amr", "x-user-issuer" = "issuer" }}

[session]
idle_timeout = "10m"
refresh_before = "5s"
forward_access_token = true

[[session.key]]
id = "k2"
file = "session.key"

[[route]]
path = "/app"
login = ["op"]

[[route]]
path = "/admin"
login = ["op"]
acr_values = ["mfa"]

[[route]]
path = "/both"
login = ["op", "op2"]

# The native app's API (issue 22): DPoP-bound access tokens of the provider.
[[route]]
path = "/mobile"
issuers = ["op"]
require_dpop = true

[[route]]
path = "/mobile-stepup"
issuers = ["op"]
require_dpop = true
[route.risk]
checks = ["session_anomaly"]
step_up = 50
step_up_acr = ["mfa"]

[[route]]
path = "/mobile-guarded"
issuers = ["op"]
require_dpop = true
[route.risk]
checks = ["session_anomaly"]
revoke = 50

# Session anomaly (issue 22): one route per action on the same check.
[[route]]
path = "/watch"
login = ["op"]
[route.risk]
checks = ["session_anomaly"]

[[route]]
path = "/stepup"
login = ["op"]
[route.risk]
checks = ["session_anomaly"]
step_up = 50
step_up_acr = ["mfa"]

[[route]]
path = "/challenged"
login = ["op"]
[route.risk]
checks = ["session_anomaly"]
challenge = 50

[[route]]
path = "/guarded"
login = ["op"]
[route.risk]
checks = ["session_anomaly"]
revoke = 50

# The same check with this route's own weights: no travel rule, a network change nearly free.
[[route]]
path = "/lenient"
login = ["op"]
[route.risk]
checks = ["session_anomaly"]
revoke = 50
[route.risk.anomaly]
travel = 0
network = 5

# Issue 22: a plugin told the session (the trivial fixture echoes it in labels).
# A 1 s deadline where a test is not about deadlines: the 5 ms default is wall-clock
# time, which a loaded CI machine (Chromium beside the gateway) once overran.
[plugin.echo]
path = "{echo}"
deadline = "1s"
headers = ["x-echo-session"]

[[route]]
path = "/echo"
login = ["op"]
[route.risk]
plugins = ["echo"]

[[route]]
path = "/mobile-echo"
issuers = ["op"]
require_dpop = true
[route.risk]
plugins = ["echo"]

[[route]]
path = "/"
auth = "public"

[client]
trusted_proxies = ["127.0.0.0/8"]
ip_header = "x-forwarded-for"
latitude_header = "x-geo-lat"
longitude_header = "x-geo-lon"
# (serve-wasm's own header for a bundle's peer; the engines know theirs.)
peer_header = "spin-client-addr"

# (The tests' origin is plain http.)
[dpop]
scheme = "http"

[audit]
subject_key_file = "audit.key"
{state}
"#,
            state = match redis {
                Some(url) if engine != "bundle" => {
                    format!(
                        "\n[state]\nbackend = \"redis\"\nurl = \"{url}\"\ntimeout = \"200ms\"\n"
                    )
                }
                _ => String::new(),
            },
            keys = keys.server.url(),
            echo = std::path::Path::new(env!("PORTCULLIS_PLUGIN_DIR"))
                .join("fixture_plugin_trivial.wasm")
                .display(),
            backend = backend.server.url(),
            p1 = provider_block("op", "Example ID", &op, port),
            p2 = provider_block("op2", "Other ID", &op2, port),
        );
        let files = vec![
            ("client.secret".to_owned(), SECRET.as_bytes().to_vec()),
            ("session.key".to_owned(), "5a".repeat(32).into_bytes()),
        ];
        let args: Vec<String> = match redis {
            Some(url) if engine == "bundle" => vec!["--state".to_owned(), url.to_owned()],
            _ => Vec::new(),
        };
        let gw = start_engine_args(
            &config,
            engine,
            &files,
            &format!("127.0.0.1:{port}"),
            |_| args,
        );
        World {
            op,
            op2,
            _keys: keys,
            backend,
            gw,
            port,
            config,
            files,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.port)
    }

    /// The backend's view of the last request (its JSON echo, shown as the page's text).
    fn backend_headers(&self) -> Value {
        let last = self
            .backend
            .last
            .lock()
            .unwrap()
            .clone()
            .expect("a backend request");
        let map: serde_json::Map<String, Value> = last
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        Value::Object(map)
    }

    fn raw(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        request(self.gw.addr, "GET", path, headers, b"").unwrap()
    }
}

/// Fills in the provider's login form (`otp` set for a stronger sign-in) and waits until the
/// browser is back on the gateway at `landing`.
fn sign_in(browser: &Browser, login: &str, otp: Option<&str>, landing: &str) {
    browser.wait_until(WAIT, "the provider's login form", |b| {
        b.exists("input[name=login]")
    });
    browser.type_into("input[name=login]", login);
    browser.type_into("input[name=password]", "any password");
    if let Some(code) = otp {
        browser.type_into("input[name=otp]", code);
    }
    browser.click("form#login button[type=submit]");
    browser.wait_until(WAIT, &format!("the landing page {landing}"), |b| {
        if b.exists("form#consent button[type=submit]") {
            b.click("form#consent button[type=submit]");
        }
        b.url() == landing && b.text().contains("\"backend\"")
    });
}

fn page_json(browser: &Browser) -> Value {
    serde_json::from_str(&browser.text()).unwrap_or_else(|e| panic!("{e}: {}", browser.text()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The session cookie as a `Cookie` header value, from the browser.
fn session_cookie_header(browser: &Browser) -> String {
    let c = browser
        .cookie(SESSION_COOKIE)
        .expect("the browser holds a session cookie");
    format!("{SESSION_COOKIE}={}", c["value"].as_str().unwrap())
}

const NAVIGATE: [(&str, &str); 2] = [
    ("sec-fetch-mode", "navigate"),
    ("accept", "text/html,application/xhtml+xml"),
];

fn browser_signs_in_reloads_logs_out_and_is_sent_to_login_again(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    let wanted = w.url("/app/orders?view=open");
    browser.goto(&wanted);
    assert!(
        browser.url().starts_with(w.op.issuer()),
        "sent to the provider: {}",
        browser.url()
    );
    sign_in(&browser, "alice", None, &wanted);

    // The backend sees the verified identity, the provider's access token, and none of the
    // gateway's own cookies.
    let seen = page_json(&browser);
    assert_eq!(seen["path"], "/app/orders?view=open");
    let h = &seen["headers"];
    assert_eq!(h["x-user-id"], "alice");
    assert_eq!(h["x-user-email"], "alice@example.test");
    assert_eq!(h["x-user-acr"], "pwd");
    assert_eq!(h["x-user-amr"], r#"["pwd"]"#);
    assert_eq!(h["x-user-issuer"], "op");
    assert!(
        h["authorization"].as_str().unwrap().starts_with("Bearer "),
        "{h}"
    );
    assert!(
        !h["cookie"]
            .as_str()
            .unwrap_or("")
            .contains("__Host-portcullis"),
        "{h}"
    );
    let cookie = browser.cookie(SESSION_COOKIE).expect("session cookie");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["secure"], true);
    assert_eq!(cookie["sameSite"], "Lax");
    assert!(
        browser.cookies().iter().all(|c| !c["name"]
            .as_str()
            .unwrap()
            .starts_with("__Host-portcullis-login-")),
        "the login-attempt cookie is gone"
    );

    // A reload goes straight to the backend: no new login.
    browser.goto(&w.url("/app/profile"));
    assert_eq!(browser.url(), w.url("/app/profile"));
    assert_eq!(page_json(&browser)["path"], "/app/profile");
    let records = audit_records(&w.gw, |r| r.iter().any(|r| r["path"] == "/app/profile"));
    let logins = records
        .iter()
        .filter(|r| r["path"] == "/_portcullis/callback")
        .count();
    assert_eq!(logins, 1, "one login only: {records:?}");
    let reload = records
        .iter()
        .find(|r| r["path"] == "/app/profile")
        .unwrap();
    assert_eq!(reload["decision"], "forward");
    assert_eq!(reload["issuer"], "op");
    assert_eq!(reload["session"], "valid");
    assert!(reload["subject"].as_str().is_some_and(|s| s != "alice"));

    // Another site cannot log the user out: a cross-site request gets a confirmation page
    // and the session lives on.
    let cookie = session_cookie_header(&browser);
    let r = w.raw(
        "/_portcullis/logout",
        &[("sec-fetch-site", "cross-site"), ("cookie", &cookie)],
    );
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("<form id=\"logout\" method=\"post\""));
    assert!(!r.headers.iter().any(|(k, _)| k == "set-cookie"));
    assert_eq!(w.raw("/app/profile", &[("cookie", &cookie)]).status, 200);
    // Without fetch metadata (older browsers, an `<img>` on another site) only a same-origin
    // Origin or Referer logs out; anything else gets the confirmation page too.
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![
            ("cookie", cookie.as_str()),
            ("referer", "https://evil.example/page"),
        ],
        vec![
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.example"),
        ],
    ] {
        let r = w.raw("/_portcullis/logout", &headers);
        assert_eq!(r.status, 200, "{headers:?}");
        assert!(
            !r.headers.iter().any(|(k, _)| k == "set-cookie"),
            "{headers:?}"
        );
    }
    // The confirmation page's token is bound to the browser's own session: a token from
    // another browser's page (here: one without the cookie) does not log this one out.
    let page = w.raw("/_portcullis/logout", &[]);
    let body = String::from_utf8_lossy(&page.body).into_owned();
    let action = body
        .split("action=\"")
        .nth(1)
        .and_then(|a| a.split('"').next())
        .expect("the form posts to the logout path with its token")
        .to_owned();
    assert!(
        action.starts_with("/_portcullis/logout?confirm="),
        "{action}"
    );
    let r = request(w.gw.addr, "POST", &action, &[("cookie", &cookie)], b"").unwrap();
    assert_eq!(r.status, 200, "a foreign token shows the page again");
    assert_eq!(w.raw("/app/profile", &[("cookie", &cookie)]).status, 200);
    // One cookie parser: `name =value` is read as the session and stripped before the
    // backend, like `name=value`.
    let spaced = cookie.replacen('=', " =", 1);
    let r = w.raw(
        "/app/profile",
        &[("cookie", &format!("theme=dark; {spaced}"))],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = r.json_body()["headers"]["cookie"].clone();
    assert_eq!(
        seen, "theme=dark",
        "the sealed session never reaches the backend"
    );

    // Logout: the gateway ends the session and continues at the provider, which asks for
    // confirmation and returns to the post-logout URI.
    browser.goto(&w.url("/_portcullis/logout"));
    browser.wait_until(WAIT, "the post-logout redirect", |b| {
        if b.exists("button[name=logout][value=yes]") {
            b.click("button[name=logout][value=yes]");
        }
        b.url() == w.url("/")
    });
    assert!(browser.cookie(SESSION_COOKIE).is_none(), "cookie cleared");

    // Signed out: the protected page sends the browser to the provider's login again.
    browser.goto(&w.url("/app/orders"));
    browser.wait_until(WAIT, "the login form again", |b| {
        b.url().starts_with(w.op.issuer()) && b.exists("input[name=login]")
    });
}

fn scripts_get_401_json_and_bearer_tokens_keep_working(engine: &str) {
    let w = World::start(engine, 600);
    for headers in [
        vec![("accept", "application/json")],
        vec![("sec-fetch-mode", "cors"), ("accept", "*/*")],
        vec![
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest"),
        ],
        vec![],
    ] {
        let r = w.raw("/app/data", &headers);
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(
            r.header("location"),
            None,
            "never a redirect for {headers:?}"
        );
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(reason(&r), "authentication_required");
    }
    // A navigation is sent to the provider, with PKCE S256, state and nonce, and gets its
    // own login-attempt cookie.
    let r = w.raw("/app/data?q=1", &NAVIGATE);
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    let authorize = w.op.endpoint("authorization_endpoint");
    assert!(location.starts_with(&authorize), "{location}");
    let query = location.split_once('?').unwrap().1;
    assert_eq!(form_value(query, "client_id").as_deref(), Some(CLIENT));
    assert_eq!(
        form_value(query, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(form_value(query, "response_type").as_deref(), Some("code"));
    for p in ["state", "nonce", "code_challenge"] {
        assert_eq!(form_value(query, p).map(|v| v.len()), Some(43), "{p}");
    }
    let state = form_value(query, "state").unwrap();
    let set_cookie = r.header("set-cookie").unwrap();
    assert!(
        set_cookie.starts_with(&format!("__Host-portcullis-login-{}=", &state[..12])),
        "{set_cookie}"
    );
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("Secure"));

    // Reloading the login redirect does not pile up attempt cookies: with three attempts
    // pending, a fourth deletes the oldest (at most four at once).
    let mut jar: Vec<String> = Vec::new();
    for _ in 0..5 {
        let cookie_header = jar.join("; ");
        let mut h = NAVIGATE.to_vec();
        if !jar.is_empty() {
            h.push(("cookie", &cookie_header));
        }
        let r = w.raw("/app/data", &h);
        assert_eq!(r.status, 302);
        for (k, v) in &r.headers {
            if k != "set-cookie" {
                continue;
            }
            let pair = v.split(';').next().unwrap().to_owned();
            let (name, value) = pair.split_once('=').unwrap();
            jar.retain(|c| !c.starts_with(&format!("{name}=")));
            if !value.is_empty() && !v.contains("Max-Age=0") {
                jar.push(pair.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(jar.len(), 4, "{jar:?}");

    // Bearer tokens work on the same route (mobile and API clients).
    let now = unix_now();
    let token = TestIdp::shared().sign(
        "ES256",
        claims(json!({"sub": "api-user", "iat": now, "exp": now + 600})),
    );
    let auth = format!("Bearer {token}");
    let r = w.raw("/app/data", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(w.backend_headers()["x-user-id"], "api-user");
}

fn tampered_truncated_and_replayed_cookies_and_states_get_a_clear_page(engine: &str) {
    let w = World::start(engine, 600);
    let page_of = |r: &Resp, code: &str| {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(
            r.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{body}"
        );
        assert!(
            body.contains(&format!("<code id=\"reason\">{code}</code>")),
            "{body}"
        );
    };
    // Start a login to get a genuine attempt cookie and state.
    let r = w.raw("/app/x", &NAVIGATE);
    let location = r.header("location").unwrap().to_owned();
    let state = form_value(location.split_once('?').unwrap().1, "state").unwrap();
    let attempt = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let callback = format!("/_portcullis/callback?code=not-a-real-code&state={state}");
    fn with_cookie(cookie: &str) -> Vec<(&str, &str)> {
        let mut h = NAVIGATE.to_vec();
        h.push(("cookie", cookie));
        h
    }

    // No attempt cookie (another browser), a tampered one, another attempt's state.
    let r = w.raw(&callback, &NAVIGATE);
    assert_eq!(r.status, 400);
    page_of(&r, "login_state_invalid");
    let (name, value) = attempt.split_once('=').unwrap();
    let mut bytes = value.as_bytes().to_vec();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(bytes).unwrap());
    let r = w.raw(&callback, &with_cookie(&tampered));
    assert_eq!(r.status, 400);
    page_of(&r, "login_state_invalid");
    let other = w.raw("/app/y", &NAVIGATE);
    let other_cookie = other
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let other_cookie = format!("{name}={}", other_cookie.split_once('=').unwrap().1);
    let r = w.raw(&callback, &with_cookie(&other_cookie));
    assert_eq!(r.status, 400);
    page_of(&r, "login_state_invalid");

    // The genuine attempt: the provider refuses the made-up code (401), and replaying the
    // same answer is refused as already used (400) — the state is single-use.
    let r = w.raw(&callback, &with_cookie(&attempt));
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    page_of(&r, "login_failed");
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.starts_with(name) && v.contains("Max-Age=0")),
        "the attempt cookie is cleared"
    );
    let r = w.raw(&callback, &with_cookie(&attempt));
    assert_eq!(r.status, 400);
    page_of(&r, "login_state_invalid");

    // A real session, then its cookie tampered with and truncated: a page, never a 500.
    let browser = Browser::start();
    browser.goto(&w.url("/app/start"));
    sign_in(&browser, "mallory", None, &w.url("/app/start"));
    let genuine = session_cookie_header(&browser);
    let (cname, cvalue) = genuine.split_once('=').unwrap();
    let mid = cvalue.len() / 2;
    let flipped = if &cvalue[mid..=mid] == "A" { "B" } else { "A" };
    for bad in [
        format!("{cname}={}{flipped}{}", &cvalue[..mid], &cvalue[mid + 1..]),
        format!("{cname}={}", &cvalue[..cvalue.len() - 10]),
        format!("{cname}={}", &cvalue[..20]),
    ] {
        let r = w.raw("/app/start", &with_cookie(&bad));
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        page_of(&r, "session_invalid");
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "set-cookie" && v.starts_with(cname) && v.contains("Max-Age=0")),
            "the bad cookie is cleared"
        );
        // Scripts get problem details for the same cookie.
        let mut h = vec![("accept", "application/json")];
        h.push(("cookie", &bad));
        let r = w.raw("/app/start", &h);
        assert_eq!(r.status, 401);
        assert_eq!(reason(&r), "session_invalid");
    }
    // The genuine cookie still works.
    let r = w.raw("/app/start", &with_cookie(&genuine));
    assert_eq!(r.status, 200);
    // In the browser, a tampered cookie shows the page.
    let value = browser.cookie(SESSION_COOKIE).unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    browser.delete_cookie(SESSION_COOKIE);
    browser.add_cookie(json!({
        "name": SESSION_COOKIE, "value": format!("{}x", &value[..value.len() - 1]),
        "path": "/", "secure": true, "httpOnly": true,
    }));
    browser.goto(&w.url("/app/start"));
    assert!(
        browser.text().contains("session_invalid"),
        "{}",
        browser.text()
    );
}

fn back_channel_logout_revokes_a_live_session(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    browser.goto(&w.url("/app/live"));
    sign_in(&browser, "bob", None, &w.url("/app/live"));
    let cookie = session_cookie_header(&browser);
    assert_eq!(w.raw("/app/live", &[("cookie", &cookie)]).status, 200);

    // The provider ends bob's sessions and notifies the gateway on the back channel.
    w.op.logout_account("bob");
    let records = audit_records(&w.gw, |r| {
        r.iter()
            .any(|r| r["path"] == "/_portcullis/backchannel-logout")
    });
    let bcl = records
        .iter()
        .find(|r| r["path"] == "/_portcullis/backchannel-logout")
        .unwrap();
    assert_eq!(bcl["status"], 200, "{bcl}");
    assert_eq!(bcl["decision"], "answer");

    // The same cookie no longer opens a session: scripts get 401, the browser is sent to log
    // in again.
    let r = w.raw(
        "/app/live",
        &[("cookie", &cookie), ("accept", "application/json")],
    );
    assert_eq!(r.status, 401);
    let records = audit_records(&w.gw, |r| r.iter().any(|r| r["session"] == "revoked"));
    assert!(records.iter().any(|r| r["session"] == "revoked"));
    browser.goto(&w.url("/app/live"));
    browser.wait_until(WAIT, "the login form", |b| {
        b.url().starts_with(w.op.issuer()) && b.exists("input[name=login]")
    });

    // A replayed, forged or event-less logout token is refused.
    let r = request(
        w.gw.addr,
        "POST",
        "/_portcullis/backchannel-logout",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"logout_token=not.a.token",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(reason(&r), "logout_token_invalid");
    let now = unix_now();
    let forged = TestIdp::shared().sign_typed(
        "ES256",
        json!({"iss": w.op.issuer(), "aud": CLIENT, "iat": now, "exp": now + 60, "jti": "j1",
               "sub": "carol", "events": {portcullis_core::login::BACKCHANNEL_EVENT: {}}}),
        Some("logout+jwt"),
    );
    let r = request(
        w.gw.addr,
        "POST",
        "/_portcullis/backchannel-logout",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("logout_token={forged}").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400, "a token not signed by the provider");
    assert_eq!(reason(&r), "logout_token_invalid");

    // Tokens signed with the provider's own key: frank signs in, then the checks of OIDC
    // Back-Channel Logout §2.6 each refuse one token, and his session lives on until a
    // valid one names only his `sub` (no `sid`: every session of his ends).
    let frank = Browser::start();
    frank.goto(&w.url("/app/frank"));
    sign_in(&frank, "frank", None, &w.url("/app/frank"));
    let frank_cookie = session_cookie_header(&frank);
    let live = || {
        w.raw(
            "/app/frank",
            &[("cookie", &frank_cookie), ("accept", "application/json")],
        )
        .status
    };
    assert_eq!(live(), 200);
    let post = |token: &str| {
        request(
            w.gw.addr,
            "POST",
            "/_portcullis/backchannel-logout",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("logout_token={token}").as_bytes(),
        )
        .unwrap()
    };
    let logout_claims = |jti: &str, extra: Value| {
        let mut c = json!({"iss": w.op.issuer(), "aud": CLIENT, "iat": unix_now(),
                           "exp": unix_now() + 60, "jti": jti, "sub": "frank",
                           "events": {portcullis_core::login::BACKCHANNEL_EVENT: {}}});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let refused = |token: &str, why: &str| {
        let r = post(token);
        assert_eq!(
            (r.status, reason(&r).as_str()),
            (400, "logout_token_invalid"),
            "{why}"
        );
        let detail = r.json_body()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(detail.contains(why), "refused for {why:?}, said {detail:?}");
        assert_eq!(
            live(),
            200,
            "a refused logout token ({why}) ended the session"
        );
    };
    let op = &w.op;
    refused(
        &op.sign(
            &logout_claims("no-events", json!({"events": null})),
            "logout+jwt",
        ),
        "event",
    );
    refused(
        &op.sign(
            &logout_claims("other-event", json!({"events": {"urn:x": {}}})),
            "logout+jwt",
        ),
        "event",
    );
    refused(
        &op.sign(
            &logout_claims("nonce", json!({"nonce": "n-1"})),
            "logout+jwt",
        ),
        "nonce",
    );
    refused(
        &op.sign(&logout_claims("no-jti", json!({"jti": null})), "logout+jwt"),
        "jti",
    );
    refused(
        &op.sign(
            &logout_claims("no-subject", json!({"sub": null})),
            "logout+jwt",
        ),
        "neither sid nor sub",
    );
    let valid = op.sign(&logout_claims("sub-only", json!({})), "logout+jwt");
    let r = post(&valid);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let revoked = r.headers.iter().find(|(k, _)| k == "x-portcullis-revoked");
    assert_eq!(
        revoked.map(|(_, v)| v.as_str()),
        Some("1"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        live(),
        401,
        "the sub-only logout token ended frank's session"
    );
    // The same token again is a replay.
    let r = post(&valid);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (400, "logout_token_invalid")
    );
    let detail = r.json_body()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("already used"), "{detail}");
}

fn two_parallel_logins_in_two_tabs_both_succeed(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    let first = browser.window_handle();
    browser.goto(&w.url("/app/one"));
    browser.wait_until(WAIT, "the first login form", |b| {
        b.exists("input[name=login]")
    });
    let second = browser.new_window();
    browser.switch_to(&second);
    browser.goto(&w.url("/app/two"));
    browser.wait_until(WAIT, "the second login form", |b| {
        b.exists("input[name=login]")
    });
    // Each tab's login attempt has its own cookie on the gateway's host (`localhost`; the
    // provider is 127.0.0.1), so neither overwrites the other.
    let attempts = || -> Vec<String> {
        let mut names: Vec<String> = browser
            .all_cookies()
            .iter()
            .filter(|c| c["domain"] == "localhost")
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with("__Host-portcullis-login-"))
            .collect();
        names.sort();
        names
    };
    let pending = attempts();
    assert_eq!(pending.len(), 2, "one attempt cookie per tab: {pending:?}");
    assert_ne!(pending[0], pending[1]);
    // The second tab finishes first, then the first.
    sign_in(&browser, "dave", None, &w.url("/app/two"));
    browser.switch_to(&first);
    sign_in(&browser, "dave", None, &w.url("/app/one"));
    assert_eq!(page_json(&browser)["path"], "/app/one");
    let records = audit_records(&w.gw, |r| {
        r.iter()
            .filter(|r| r["path"] == "/_portcullis/callback" && r["decision"] == "redirect")
            .count()
            == 2
    });
    let callbacks: Vec<&Value> = records
        .iter()
        .filter(|r| r["path"] == "/_portcullis/callback")
        .collect();
    assert_eq!(callbacks.len(), 2, "{callbacks:?}");
    assert!(callbacks.iter().all(|r| r["decision"] == "redirect"));
    // Each callback cleared its own attempt cookie.
    assert_eq!(
        attempts(),
        Vec::<String>::new(),
        "attempt cookies left behind"
    );
}

fn an_expiring_access_token_is_refreshed_without_a_new_login(engine: &str) {
    // Access tokens live 8 s; the gateway refreshes 4 s before expiry (`refresh_before` is
    // 5 s, capped at half the lifetime).
    let w = World::start(engine, 8);
    let browser = Browser::start();
    browser.goto(&w.url("/app/r"));
    let signed_in = unix_now();
    sign_in(&browser, "erin", None, &w.url("/app/r"));
    let first_token = page_json(&browser)["headers"]["authorization"].clone();
    let stale_cookie = session_cookie_header(&browser);

    // The browser keeps loading pages until the gateway has refreshed (polled, not slept:
    // how long that takes depends on the clock, not on how fast this machine is).
    let deadline = Instant::now() + Duration::from_secs(20);
    let second_token = loop {
        browser.goto(&w.url("/app/r2"));
        let seen = page_json(&browser);
        assert_eq!(seen["path"], "/app/r2", "no new login");
        let token = seen["headers"]["authorization"].clone();
        if token != first_token {
            break token;
        }
        assert!(
            Instant::now() < deadline,
            "the access token was never refreshed"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        unix_now() >= signed_in + 3,
        "refreshed before the refresh window opened"
    );
    let records = audit_records(&w.gw, |r| {
        r.iter()
            .any(|r| r["path"] == "/app/r2" && r["session"] == "refreshed")
    });
    let refreshed = records
        .iter()
        .filter(|r| r["path"] == "/app/r2" && r["session"] == "refreshed")
        .count();
    assert_eq!(refreshed, 1, "{records:?}");

    // A request still holding the old cookie (its refresh token was rotated away at the
    // provider) adopts the refreshed tokens instead of logging the user out.
    let r = w.raw("/app/r3", &[("cookie", &stale_cookie)]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(w.backend_headers()["authorization"], second_token);
    let records = audit_records(&w.gw, |r| r.iter().any(|r| r["path"] == "/app/r3"));
    let r3 = records.iter().find(|r| r["path"] == "/app/r3").unwrap();
    assert_eq!(r3["session"], "adopted", "{r3}");
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.starts_with(SESSION_COOKIE)),
        "the adopted tokens are sealed into a fresh cookie"
    );
    assert_eq!(
        r.header("cache-control"),
        Some("private, no-store"),
        "a response setting the session cookie is never stored by a shared cache"
    );

    // The browser keeps working past the first token's lifetime (the clock decides when
    // that is: 8 s after sign-in, plus a second for whole-second rounding).
    while unix_now() <= signed_in + 9 {
        std::thread::sleep(Duration::from_millis(250));
    }
    browser.goto(&w.url("/app/r4"));
    assert_eq!(page_json(&browser)["path"], "/app/r4");
}

/// A provider whose access tokens live 5 s, no longer than `refresh_before` (5 s): the
/// gateway does not refresh on every request (its window is capped at half the lifetime).
fn short_lived_access_tokens_are_not_refreshed_on_every_request(engine: &str) {
    let w = World::start(engine, 5);
    let browser = Browser::start();
    browser.goto(&w.url("/app/s"));
    let signed_in = unix_now();
    sign_in(&browser, "gina", None, &w.url("/app/s"));
    // The browser keeps whatever cookies the gateway sets, as after a real refresh. A token
    // issued at T (T >= signed_in) is refreshed from T + 3 s on (a window of 2 s of its 5),
    // so nothing refreshes before signed_in + 3, and a second refresh cannot come before
    // signed_in + 6, however fast or slow the requests are sent. Requests are sent until
    // signed_in + 5: a second apart from that boundary (`unix_now` counts whole seconds, and
    // a request sent just before it is decided just after). (Without the cap, the first
    // page after sign-in already refreshes.)
    let mut sent = 0;
    while unix_now() < signed_in + 5 {
        browser.goto(&w.url(&format!("/app/s{sent}")));
        assert_eq!(page_json(&browser)["path"], format!("/app/s{sent}"));
        sent += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    let last = format!("/app/s{}", sent - 1);
    let records = audit_records(&w.gw, |r| r.iter().any(|r| r["path"] == last));
    let refreshed: Vec<u64> = records
        .iter()
        .filter(|r| {
            r["path"].as_str().is_some_and(|p| p.starts_with("/app/s"))
                && r["session"] == "refreshed"
        })
        .map(|r| r["time_ms"].as_u64().unwrap() / 1000)
        .collect();
    assert!(sent >= 4, "only {sent} requests in the window");
    assert!(
        refreshed.iter().all(|t| *t >= signed_in + 3),
        "refreshed before half the token's lifetime (signed in at {signed_in}): {refreshed:?}"
    );
    assert!(
        refreshed.len() <= 1,
        "{} of {sent} requests refreshed: {refreshed:?}",
        refreshed.len()
    );
}

fn step_up_sends_the_browser_back_to_the_provider_and_scripts_get_rfc9470(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    browser.goto(&w.url("/app/home"));
    sign_in(&browser, "frank", None, &w.url("/app/home"));
    let cookie = session_cookie_header(&browser);

    // Scripts with a password-only session get the RFC 9470 error.
    let r = w.raw(
        "/admin/users",
        &[("cookie", &cookie), ("accept", "application/json")],
    );
    assert_eq!(r.status, 401);
    assert_eq!(reason(&r), "insufficient_user_authentication");
    let www = r.header("www-authenticate").unwrap();
    assert!(www.contains("acr_values=\"mfa\""), "{www}");

    // The browser is sent back to the provider asking for acr mfa, signs in with a
    // one-time code, and lands on the admin page with the stronger session.
    browser.goto(&w.url("/admin/users"));
    browser.wait_until(WAIT, "the step-up login", |b| {
        b.url().starts_with(w.op.issuer())
    });
    sign_in(&browser, "frank", Some("123456"), &w.url("/admin/users"));
    let h = &page_json(&browser)["headers"];
    assert_eq!(h["x-user-id"], "frank");
    assert_eq!(h["x-user-acr"], "mfa");
    assert_eq!(h["x-user-amr"], r#"["pwd","otp"]"#);
}

fn a_route_with_two_providers_offers_a_choice(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    browser.goto(&w.url("/both/page"));
    assert!(browser.exists("ul#providers"), "{}", browser.source());
    assert!(browser.text().contains("Sign in with Example ID"));
    assert!(browser.text().contains("Sign in with Other ID"));
    browser.click("ul#providers li:nth-child(2) a");
    browser.wait_until(WAIT, "the second provider", |b| {
        b.url().starts_with(w.op2.issuer())
    });
    sign_in(&browser, "grace", None, &w.url("/both/page"));
    assert_eq!(page_json(&browser)["headers"]["x-user-issuer"], "op2");
    // That session is for op2 only: /app (op) asks for its own login.
    browser.goto(&w.url("/app/x"));
    browser.wait_until(WAIT, "the first provider's login", |b| {
        b.url().starts_with(w.op.issuer())
    });
}

/// Two gateways sharing one state (two native `serve` processes or two `serve-wasm`
/// processes running one bundle on one Redis server; two worker isolates on one Durable
/// Object namespace): a browser session made at one is valid at the other (same identity
/// to the backend), and once the user logs out at the first, the second refuses the cookie.
fn a_session_ended_at_one_process_is_refused_at_another_on_one_redis(engine: &str) {
    let redis = portcullis_tests::redis::Redis::start();
    let w = World::start_with(engine, 600, Some(&redis.url()));
    let second = match engine {
        "bundle" => {
            let b = portcullis_tests::host::bundle(&w.config, &w.files);
            Some(portcullis_tests::host::serve_wasm(
                &b.wasm,
                &["--state", &redis.url()],
            ))
        }
        // The second isolate of the pair World started (its own port).
        "worker-pair" => None,
        _ => Some(start_engine_args(
            &w.config,
            engine,
            &w.files,
            "127.0.0.1:0",
            |_| Vec::new(),
        )),
    };
    let other = second.as_ref().map_or(w.gw.admin, |g| g.addr);
    let browser = Browser::start();
    let wanted = w.url("/app/orders");
    browser.goto(&wanted);
    sign_in(&browser, "alice", None, &wanted);
    let cookie = session_cookie_header(&browser);
    let at_other = |cookie: &str| request(other, "GET", "/app/x", &[("cookie", cookie)], b"");
    let r = at_other(&cookie).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json_body()["headers"]["x-user-id"], "alice");

    browser.goto(&w.url("/_portcullis/logout"));
    browser.wait_until(WAIT, "the post-logout redirect", |b| {
        if b.exists("button[name=logout][value=yes]") {
            b.click("button[name=logout][value=yes]");
        }
        b.url() == w.url("/")
    });
    // As on the host: an ended session is no session (the script is asked to sign in).
    let r = at_other(&cookie).unwrap();
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "authentication_required"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn a_session_ended_at_one_native_process_is_refused_at_another_on_one_redis() {
    a_session_ended_at_one_process_is_refused_at_another_on_one_redis("native");
}

#[test]
fn a_session_ended_at_one_bundle_process_is_refused_at_another_on_one_redis() {
    a_session_ended_at_one_process_is_refused_at_another_on_one_redis("bundle");
}

#[test]
fn a_session_ended_at_one_worker_isolate_is_refused_at_another_on_one_namespace() {
    a_session_ended_at_one_process_is_refused_at_another_on_one_redis("worker-pair");
}

/// A native app of the provider's user `sub`: its own DPoP key (a Python JOSE library) and
/// access tokens bound to it that name a provider session — signed with the provider's own
/// key, for the gateway's `api://app` audience.
struct App {
    private: String,
    jkt: String,
    sub: String,
}

impl App {
    fn new(sub: &str) -> Self {
        let key: Value =
            serde_json::from_str(&interop::tool(&["keys", "client-key"]).unwrap()).unwrap();
        let private = key["private"].to_string();
        let jkt = interop::tool(&["thumbprint", &private]).unwrap();
        Self {
            private,
            jkt,
            sub: sub.to_owned(),
        }
    }

    /// A token of provider session `sid`, bound to this app's key.
    fn token(&self, w: &World, sid: &str) -> String {
        let now = unix_now();
        w.op.sign(
            &json!({
                "iss": w.op.issuer(), "sub": self.sub, "aud": "api://app", "iat": now,
                "exp": now + 600, "sid": sid, "cnf": {"jkt": self.jkt},
            }),
            "at+jwt",
        )
    }

    /// GET `path` with `token` and a fresh proof, as `agent` when given.
    fn call(&self, w: &World, path: &str, token: &str, agent: Option<&str>) -> Resp {
        let agent: Vec<(&str, &str)> = agent.map(|a| ("user-agent", a)).into_iter().collect();
        self.call_with(w, path, token, &agent)
    }

    /// [`App::call`] with `extra` headers.
    fn call_with(&self, w: &World, path: &str, token: &str, extra: &[(&str, &str)]) -> Resp {
        let url = format!("http://{}{path}", w.gw.addr);
        let proof = interop::tool(&["dpop", &self.private, "GET", &url, token, "0"]).unwrap();
        let auth = format!("DPoP {token}");
        let mut headers = vec![("authorization", auth.as_str()), ("dpop", proof.as_str())];
        headers.extend_from_slice(extra);
        w.raw(path, &headers)
    }
}

/// A client at `ip` in `place` (latitude, longitude) as each runtime learns it: from the
/// trusted proxy's `x-forwarded-for` and `[client]` location headers (the engines, and the
/// bundle through serve-wasm's peer header), or from Cloudflare's `cf` object and
/// `cf-connecting-ip` (the worker; workerd's `cf-blob`).
fn located(ip: &str, place: (&str, &str)) -> Vec<(&'static str, String)> {
    let blob = json!({"latitude": place.0, "longitude": place.1}).to_string();
    vec![
        ("x-forwarded-for", ip.to_owned()),
        ("x-geo-lat", place.0.to_owned()),
        ("x-geo-lon", place.1.to_owned()),
        ("cf-connecting-ip", ip.to_owned()),
        ("cf-blob", blob),
    ]
}

const PARIS: (&str, &str) = ("48.8566", "2.3522");
const SYDNEY: (&str, &str) = ("-33.8688", "151.2093");

/// Issue 22, the rules on recent uses. A browser session's cookie used from Paris, then
/// seconds later from Sydney, is impossible travel (weight 70: stepped up); back in Paris a
/// moment later it is travel again and concurrent use (two clients taking turns, 50), and
/// the revoking route ends the session. An app's DPoP-bound token is judged the same way
/// from its first request. Every runtime gives the same findings; the worker under workerd
/// knows no address for the browser's own sign-in (no `cf` object), so there the copy's
/// first request is no network change.
fn a_session_used_from_far_away_or_by_two_clients_in_turn_is_stepped_up_and_revoked(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    browser.goto(&w.url("/watch/home"));
    sign_in(&browser, "judy", None, &w.url("/watch/home"));
    let cookie = session_cookie_header(&browser);
    let ua = browser.user_agent();
    let from = |path: &str, ip: &str, place: (&str, &str)| {
        let located = located(ip, place);
        let mut h: Vec<(&str, &str)> = located.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.extend([
            ("cookie", cookie.as_str()),
            ("user-agent", ua.as_str()),
            ("accept", "application/json"),
        ]);
        w.raw(path, &h)
    };
    let labels = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let moved = engine != "worker";

    // From Paris: the first located use (the sign-in had no location).
    let r = from("/watch/paris", "192.0.2.10", PARIS);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (score, found) = anomaly(&w.gw, "/watch/paris");
    if moved {
        assert_eq!((score, found), (20, labels(&["changed:network"])));
    } else {
        assert_eq!((score, found), (0, labels(&[])));
    }
    let earlier = u64::from(moved);
    // Seconds later from Sydney: ~17,000 km, impossible; stepped up.
    let r = from("/stepup/sydney", "198.51.100.10", SYDNEY);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "insufficient_user_authentication"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (score, found) = anomaly(&w.gw, "/stepup/sydney");
    let mut want = if moved {
        labels(&["changed:network", "impossible_travel"])
    } else {
        labels(&["impossible_travel"])
    };
    if earlier > 0 {
        want.push(format!("repeated:{earlier}"));
    }
    assert_eq!(found, want);
    assert_eq!(score, (70 + 20 * earlier * 2).min(100));
    let record = last_audit_record(&w.gw, "/stepup/sydney");
    let reason_text = record["risk"]["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["plugin"] == "bot.session_anomaly"))
        .map(|c| c["reason"].to_string())
        .unwrap();
    assert!(
        reason_text.contains("km from 192.0.2.0/24"),
        "{reason_text}"
    );
    // A route that weighs travel 0 (`[route.risk.anomaly]`) lets the same request through.
    let r = from("/lenient/sydney", "198.51.100.10", SYDNEY);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (score, found) = anomaly(&w.gw, "/lenient/sydney");
    assert!(
        !found.contains(&"impossible_travel".to_owned()),
        "{found:?}"
    );
    if moved {
        assert_eq!(found[0], "changed:network");
        assert_eq!(score, 5 + 20 * 2);
    } else {
        assert_eq!((score, found), (0, labels(&[])));
    }
    // Back in Paris a moment later: travel again, and the two networks taking turns.
    let r = from("/guarded/paris", "192.0.2.11", PARIS);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "session_revoked"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (score, found) = anomaly(&w.gw, "/guarded/paris");
    assert_eq!(score, 100);
    let uses: Vec<&str> = found
        .iter()
        .map(String::as_str)
        .filter(|l| matches!(*l, "impossible_travel" | "concurrent_use"))
        .collect();
    assert_eq!(uses, ["impossible_travel", "concurrent_use"]);
    let r = w.raw(
        "/watch/after",
        &[("cookie", &cookie), ("accept", "application/json")],
    );
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "authentication_required")
    );

    // An app's token, from its first request in Paris, then Sydney: stepped up.
    let app = App::new("judy-app");
    let token = app.token(&w, "app-session");
    let call = |path: &str, ip: &str, place: (&str, &str)| {
        let located = located(ip, place);
        let h: Vec<(&str, &str)> = located.iter().map(|(k, v)| (*k, v.as_str())).collect();
        app.call_with(&w, path, &token, &h)
    };
    let r = call("/mobile-stepup/paris", "192.0.2.10", PARIS);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(anomaly(&w.gw, "/mobile-stepup/paris").0, 0);
    let r = call("/mobile-stepup/paris2", "192.0.2.10", PARIS);
    assert_eq!(r.status, 200);
    let r = call("/mobile-stepup/sydney", "198.51.100.10", SYDNEY);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "insufficient_user_authentication")
    );
    assert_eq!(
        anomaly(&w.gw, "/mobile-stepup/sydney"),
        (90, labels(&["changed:network", "impossible_travel"]))
    );
}

/// Issue 22, across channels: a browser session and a native app's DPoP-bound access token
/// from the same provider session (the app's token names the provider's `sid` for it, as
/// Keycloak's do; signed with the provider's own key) are ended together by one
/// back-channel logout: the browser goes through its provider again, the app's token is
/// refused 401 `token_inactive`, and a token of another provider session still works.
fn one_back_channel_logout_ends_the_web_session_and_the_apps_tokens(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    browser.goto(&w.url("/app/home"));
    sign_in(&browser, "heidi", None, &w.url("/app/home"));
    let sid =
        w.op.session_sid("heidi", CLIENT)
            .expect("the provider's session of heidi");

    // The app, with a token of this provider session and one of another.
    let app = App::new("heidi");
    let same = app.token(&w, &sid);
    let other = app.token(&w, "another-provider-session");
    let call = |token: &str| app.call(&w, "/mobile/orders", token, None);
    for token in [&same, &other] {
        let r = call(token);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(w.backend_headers()["x-user-id"], "heidi");
    }

    // The provider ends heidi's session and tells the gateway on the back channel.
    let notified = w.op.logout_account("heidi");
    assert_eq!(notified["notified"], json!([CLIENT]), "{notified}");
    let r = call(&same);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "token_inactive"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    let r = call(&other);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    browser.goto(&w.url("/app/after"));
    browser.wait_until(WAIT, "the login form again", |b| {
        b.url().starts_with(w.op.issuer()) && b.exists("input[name=login]")
    });
}

/// Issue 22, the app channel: a DPoP-bound app token is compared with the first request
/// its key made. Used from another client (its token and key taken elsewhere) it is
/// stepped up (RFC 9470), then — the user's second anomaly, counted across channels —
/// revoked: its provider session ends, so the token is refused from its own app as well,
/// and the browser session signed in through the same provider session ends with it.
fn an_app_token_used_from_another_client_is_stepped_up_then_revoked_with_the_web_session(
    engine: &str,
) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    browser.goto(&w.url("/app/home"));
    sign_in(&browser, "ivan", None, &w.url("/app/home"));
    let sid = w.op.session_sid("ivan", CLIENT).unwrap();
    let client = App::new("ivan");
    let token = client.token(&w, &sid);
    let call = |path: &str, agent: &str| client.call(&w, path, &token, Some(agent));
    let app = "ShopApp/2.1 (Android 15)";
    // Its first request is the app's client; the same client again meets no anomaly.
    for path in ["/mobile-stepup/a", "/mobile-guarded/a"] {
        let r = call(path, app);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(anomaly(&w.gw, path).0, 0, "{path}");
    }
    // Another client with the same token and key: stepped up.
    let r = call("/mobile-stepup/b", "curl/8.5.0");
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "insufficient_user_authentication")
    );
    assert_eq!(
        anomaly(&w.gw, "/mobile-stepup/b"),
        (60, vec!["changed:agent".to_owned()])
    );
    // Again: the user's second anomaly within the hour adds up, and the route revokes.
    let r = call("/mobile-guarded/b", "curl/8.5.0");
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "token_inactive"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (score, labels) = anomaly(&w.gw, "/mobile-guarded/b");
    assert_eq!(
        (score, labels),
        (
            80,
            vec!["changed:agent".to_owned(), "repeated:1".to_owned()]
        )
    );
    // The provider session is over for the token everywhere, its own app included...
    let r = call("/mobile/orders", app);
    assert_eq!((r.status, reason(&r).as_str()), (401, "token_inactive"));
    // ...and for the browser session signed in through it.
    let cookie = session_cookie_header(&browser);
    let r = w.raw(
        "/app/z",
        &[("cookie", &cookie), ("accept", "application/json")],
    );
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "authentication_required")
    );
}

/// Issue 22, plugins: a risk plugin is told the session a request belongs to — a browser
/// session's pseudonymous id, its provider session, its age and what its sign-in showed of
/// the client; for an app's token, the provider session it names, under the same
/// pseudonym as the browser session signed in through it (one user's channels linked), and
/// never the raw ids.
fn plugins_are_told_the_session_its_age_and_sign_in(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    browser.goto(&w.url("/watch/home"));
    sign_in(&browser, "karl", None, &w.url("/watch/home"));
    let sid = w.op.session_sid("karl", CLIENT).unwrap();
    let cookie = session_cookie_header(&browser);
    let echo = ("x-echo-session", "1");
    let r = w.raw(
        "/echo/web",
        &[("cookie", &cookie), ("accept", "application/json"), echo],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let web = plugin_labels(&w.gw, "/echo/web", "echo");
    let value = |labels: &[String], name: &str| {
        labels
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::to_owned))
    };
    assert_eq!(
        value(&web, "session").as_deref(),
        Some("browser"),
        "{web:?}"
    );
    let id = value(&web, "id").unwrap();
    let provider = value(&web, "provider-session").expect("the provider's session");
    assert_ne!(id, provider);
    for raw in [sid.as_str(), cookie.as_str()] {
        assert!(!web.iter().any(|l| l.contains(raw)), "{raw} in {web:?}");
    }
    let age: u64 = value(&web, "age").unwrap().parse().unwrap();
    assert!(age < 120, "{age}");
    let agent = value(&web, "sign-in-agent").unwrap();
    assert!(agent.starts_with("HeadlessChrome/"), "{agent}");
    // (The worker under workerd knows no address for the browser.)
    let network = value(&web, "sign-in-network");
    if engine == "worker" {
        assert_eq!(network, None);
    } else {
        assert_eq!(network.as_deref(), Some("127.0.0.0/24"));
    }
    // The same session on the next request: the same pseudonym.
    w.raw("/echo/again", &[("cookie", &cookie), echo]);
    assert_eq!(
        value(&plugin_labels(&w.gw, "/echo/again", "echo"), "id"),
        Some(id)
    );

    // The app's token of the same provider session: linked under the same pseudonym.
    let app = App::new("karl");
    let token = app.token(&w, &sid);
    let r = app.call_with(&w, "/mobile-echo/orders", &token, &[echo]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mobile = plugin_labels(&w.gw, "/mobile-echo/orders", "echo");
    assert_eq!(
        value(&mobile, "session").as_deref(),
        Some("token"),
        "{mobile:?}"
    );
    assert_eq!(value(&mobile, "provider-session"), Some(provider.clone()));
    assert_eq!(value(&mobile, "age"), None, "no auth_time in the token");
    // Another provider session is another pseudonym.
    let other = app.token(&w, "another-provider-session");
    app.call_with(&w, "/mobile-echo/other", &other, &[echo]);
    let labels = plugin_labels(&w.gw, "/mobile-echo/other", "echo");
    assert_ne!(value(&labels, "provider-session"), Some(provider));
}

/// The labels plugin `plugin` gave the last audit record for `path`.
fn plugin_labels(gw: &Gateway, path: &str, plugin: &str) -> Vec<String> {
    let record = last_audit_record(gw, path);
    record["risk"]["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["plugin"] == plugin))
        .and_then(|c| c["labels"].as_array())
        .unwrap_or_else(|| panic!("no {plugin} labels in {record}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The `session_anomaly` contribution (score, labels) of the last audit record for `path`.
fn anomaly(gw: &Gateway, path: &str) -> (u64, Vec<String>) {
    let record = last_audit_record(gw, path);
    let c = record["risk"]["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["plugin"] == "bot.session_anomaly"))
        .unwrap_or_else(|| panic!("no session_anomaly in {record}"));
    let labels = c["labels"]
        .as_array()
        .map(|l| l.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    (c["score"].as_u64().unwrap(), labels)
}

/// Issue 22: a browser session copied to another client. The browser that signed in meets
/// no anomaly; its cookie sent by a script with another User-Agent (weight 60) is recorded
/// on a watching route, stepped up (a browser with that copy signs in again at `mfa` and
/// gets a session of its own), challenged, and finally revoked: every copy of the session
/// is refused from then on, the original browser's too. From another network alone
/// (weight 20, where the runtime knows client addresses: not the worker under workerd
/// without a `cf` object) nothing but the record happens.
fn a_copied_session_is_stepped_up_challenged_or_revoked_as_configured(engine: &str) {
    let w = World::start(engine, 600);
    let browser = Browser::start();
    browser.goto(&w.url("/watch/home"));
    sign_in(&browser, "grace", None, &w.url("/watch/home"));
    // (Before another browser signs grace in at the provider: this session's sid.)
    let grace_sid = w.op.session_sid("grace", CLIENT).unwrap();
    for path in ["/stepup/a", "/challenged/a", "/guarded/a"] {
        browser.goto(&w.url(path));
        browser.wait_until(WAIT, path, |b| b.text().contains("\"backend\""));
        assert_eq!(anomaly(&w.gw, path).0, 0, "{path}");
    }
    let cookie = session_cookie_header(&browser);
    let ua = browser.user_agent();
    let copy = |path: &str, extra: &[(&str, &str)]| {
        let mut h = vec![("cookie", cookie.as_str())];
        h.extend_from_slice(extra);
        w.raw(path, &h)
    };
    let json = ("accept", "application/json");
    let curl = ("user-agent", "curl/8.5.0");

    // The same browser from another network: recorded, below every threshold. The
    // user's anomalies add up (`repeated` 20 per earlier one within the hour).
    let mut earlier = 0u64;
    if engine != "worker" {
        let away = ("x-forwarded-for", "203.0.113.9");
        for path in ["/stepup/net", "/guarded/net"] {
            let r = copy(path, &[("user-agent", &ua), json, away]);
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let mut labels = vec!["changed:network".to_owned()];
            if earlier > 0 {
                labels.push(format!("repeated:{earlier}"));
            }
            assert_eq!(anomaly(&w.gw, path), (20 + 20 * earlier, labels));
            earlier += 1;
        }
    }

    // Another client: recorded where the route only watches.
    let r = copy("/watch/x", &[curl, json]);
    assert_eq!(r.status, 200);
    let mut labels = vec!["changed:agent".to_owned()];
    if earlier > 0 {
        // Back on the sign-in's network after the other one: two clients taking turns.
        labels.push("concurrent_use".to_owned());
        labels.push(format!("repeated:{earlier}"));
    }
    assert_eq!(
        anomaly(&w.gw, "/watch/x"),
        ((60 + 20 * earlier).min(100), labels)
    );
    // Stepped up: scripts get RFC 9470, navigations go to the provider for a fresh sign-in.
    let r = copy("/stepup/x", &[curl, json]);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "insufficient_user_authentication")
    );
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("acr_values=\"mfa\"")
    );
    let r = copy("/stepup/x", &[curl, NAVIGATE[0], NAVIGATE[1]]);
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with(&w.op.endpoint("authorization_endpoint")),
        "{location}"
    );
    let query = location.split_once('?').unwrap().1;
    assert_eq!(form_value(query, "prompt").as_deref(), Some("login"));
    assert_eq!(form_value(query, "acr_values").as_deref(), Some("mfa"));
    // Challenged.
    let r = copy("/challenged/x", &[curl, json]);
    assert_eq!((r.status, reason(&r).as_str()), (403, "challenge_required"));

    // A browser holding the copy (another User-Agent) is sent to sign in again, does so at
    // mfa, and then has a session of its own: no anomaly, even on the revoking route.
    let other = Browser::start_with_args(&[
        "--user-agent=Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    ]);
    other.goto(&w.url("/"));
    let value = cookie.split_once('=').unwrap().1;
    other.add_cookie(json!({
        "name": SESSION_COOKIE, "value": value, "path": "/", "secure": true, "httpOnly": true,
    }));
    other.goto(&w.url("/stepup/b"));
    sign_in(&other, "grace", Some("123456"), &w.url("/stepup/b"));
    assert_eq!(page_json(&other)["headers"]["x-user-acr"], "mfa");
    other.goto(&w.url("/guarded/b"));
    other.wait_until(WAIT, "the guarded page", |b| {
        b.text().contains("\"backend\"")
    });
    assert_eq!(anomaly(&w.gw, "/guarded/b").0, 0);
    // That session is at mfa, yet a copy of it elsewhere still steps up: only a fresh
    // sign-in from the new client settles an anomaly.
    let strong = format!(
        "{SESSION_COOKIE}={}",
        other.cookie(SESSION_COOKIE).unwrap()["value"]
            .as_str()
            .unwrap()
    );
    let r = w.raw("/stepup/c", &[("cookie", &strong), curl, json]);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "insufficient_user_authentication")
    );

    // The app holding a token of the same provider session (session-bound tokens).
    let mobile = App::new("grace");
    let app_token = mobile.token(&w, &grace_sid);
    let app = || mobile.call(&w, "/mobile/orders", &app_token, None);
    assert_eq!(app().status, 200);

    // Revoked: the copy ends the session, for every holder of it.
    let r = copy("/guarded/x", &[curl, json]);
    assert_eq!((r.status, reason(&r).as_str()), (401, "session_revoked"));
    assert!(
        r.headers.iter().any(|(k, v)| k == "set-cookie"
            && v.starts_with(SESSION_COOKIE)
            && v.contains("Max-Age=0")),
        "{:?}",
        r.headers
    );
    let revoked = last_audit_record(&w.gw, "/guarded/x");
    assert_eq!(revoked["session"], "revoked");
    let r = copy("/watch/y", &[("user-agent", &ua), json]);
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (401, "authentication_required")
    );
    // ...and for the app channel of the same provider session.
    let r = app();
    assert_eq!((r.status, reason(&r).as_str()), (401, "token_inactive"));
    // The original browser's session is over too: it goes through its provider again (the
    // provider's own session signs it straight back in) and comes back with a new one.
    let callbacks = |records: &[Value]| {
        records
            .iter()
            .filter(|r| r["path"] == "/_portcullis/callback")
            .count()
    };
    let before = callbacks(&audit_records(&w.gw, |_| true));
    browser.goto(&w.url("/watch/after"));
    browser.wait_until(WAIT, "the page after signing in again", |b| {
        b.url() == w.url("/watch/after") && b.text().contains("\"backend\"")
    });
    let records = audit_records(&w.gw, |r| callbacks(r) > before);
    assert_eq!(callbacks(&records), before + 1, "{records:?}");
    let refused = records
        .iter()
        .find(|r| r["path"] == "/watch/after")
        .unwrap();
    assert_eq!(refused["session"], "revoked", "{refused}");
}

on_every_runtime!(
    plugins_are_told_the_session_its_age_and_sign_in,
    a_session_used_from_far_away_or_by_two_clients_in_turn_is_stepped_up_and_revoked,
    an_app_token_used_from_another_client_is_stepped_up_then_revoked_with_the_web_session,
    one_back_channel_logout_ends_the_web_session_and_the_apps_tokens,
    a_copied_session_is_stepped_up_challenged_or_revoked_as_configured,
    browser_signs_in_reloads_logs_out_and_is_sent_to_login_again,
    scripts_get_401_json_and_bearer_tokens_keep_working,
    tampered_truncated_and_replayed_cookies_and_states_get_a_clear_page,
    back_channel_logout_revokes_a_live_session,
    two_parallel_logins_in_two_tabs_both_succeed,
    an_expiring_access_token_is_refreshed_without_a_new_login,
    short_lived_access_tokens_are_not_refreshed_on_every_request,
    step_up_sends_the_browser_back_to_the_provider_and_scripts_get_rfc9470,
    a_route_with_two_providers_offers_a_choice,
);

/// Session tests on the component engine keeping instances (`--instance-reuse`): a kept
/// instance tells each request's plugins that request's session only, and the anomaly rules
/// see each request's client.
mod kept_instances {
    #[test]
    fn plugins_are_told_the_session_its_age_and_sign_in() {
        super::plugins_are_told_the_session_its_age_and_sign_in("component-reuse");
    }
    #[test]
    fn a_session_used_from_far_away_or_by_two_clients_in_turn_is_stepped_up_and_revoked() {
        super::a_session_used_from_far_away_or_by_two_clients_in_turn_is_stepped_up_and_revoked(
            "component-reuse",
        );
    }
}
