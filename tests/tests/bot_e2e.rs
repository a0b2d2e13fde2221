//! End to end with a real headless Chromium and a real curl: built-in bot checks score the
//! requests those clients actually send, the proof-of-work challenge page is solved by the
//! browser, which then reaches the backend with a clearance cookie; forged, expired and
//! misbound clearance cookies are refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::Duration;

use portcullis_core::Timestamp;
use portcullis_core::internal::challenge::{self, Binding};
use portcullis_tests::browser::Browser;
use portcullis_tests::host::{Gateway, audit_records, last_audit_record, reason, start_engine};
use portcullis_tests::net::{Backend, KeyServer, request};
use portcullis_tests::*;
use serde_json::Value;

fn config(keys: &KeyServer, backend: &str) -> String {
    format!(
        r#"
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_uri = "{keys}/jwks.json"
insecure_http_jwks = true
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["{backend}"]

[residency]
missing = "eu"
anonymous = "eu"

[challenge]
min_bits = 10
max_bits = 12

# Scores only: every request passes, the audit record shows each check's score.
[[route]]
path = "/observe"
auth = "public"
risk = {{ checks = ["browser_headers", "automation"] }}

[[route]]
path = "/signup"
auth = "public"
risk = {{ checks = ["automation", "browser_headers"], challenge = 50, deny = 100 }}

[audit]
subject_key_file = "audit.key"
"#,
        keys = keys.server.url(),
    )
}

struct World {
    _keys: KeyServer,
    backend: Backend,
    gw: Gateway,
}

fn world(engine: &str) -> World {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let gw = start_engine(&config(&keys, &backend.server.url()), engine);
    World {
        _keys: keys,
        backend,
        gw,
    }
}

/// The `bot.<check>` contributions of the last audit record for `path`.
fn scores(gw: &Gateway, path: &str) -> Vec<(String, u64, Vec<String>)> {
    let record = last_audit_record(gw, path);
    record["risk"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["plugin"].as_str().unwrap().to_owned(),
                c["score"].as_u64().unwrap(),
                c["labels"]
                    .as_array()
                    .map(|l| l.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn score_of(scores: &[(String, u64, Vec<String>)], check: &str) -> (u64, Vec<String>) {
    scores
        .iter()
        .find(|(n, _, _)| n == check)
        .map(|(_, s, l)| (*s, l.clone()))
        .unwrap_or_else(|| panic!("no {check} in {scores:?}"))
}

/// Real clients, real headers: headless Chromium's navigation has every browser header
/// (only its User-Agent betrays it), curl has none of them.
fn header_and_automation_checks_score_real_chromium_and_curl(engine: &str) {
    let w = world(engine);
    let url = format!("http://localhost:{}/observe/chromium", w.gw.addr.port());
    let browser = Browser::start();
    browser.goto(&url);
    assert!(browser.text().contains("\"backend\""), "{}", browser.text());
    let chromium = scores(&w.gw, "/observe/chromium");
    assert_eq!(
        score_of(&chromium, "bot.browser_headers").0,
        0,
        "{chromium:?}"
    );
    let (automation, labels) = score_of(&chromium, "bot.automation");
    assert_eq!(automation, 80);
    assert!(labels.contains(&"headless".to_owned()), "{labels:?}");

    // The same browser with an ordinary desktop User-Agent passes both checks.
    // Its real major version, so the User-Agent agrees with the client hints Chromium sends
    // (a fixed version fails the `sec-ch-ua` cross-check whenever Debian updates Chromium).
    let major = portcullis_tests::browser::chromium_major();
    let disguised = Browser::start_with_args(&[&format!(
        "--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36"
    )]);
    disguised.goto(&format!(
        "http://localhost:{}/observe/disguised",
        w.gw.addr.port()
    ));
    let d = scores(&w.gw, "/observe/disguised");
    assert_eq!(
        (
            score_of(&d, "bot.browser_headers").0,
            score_of(&d, "bot.automation").0
        ),
        (0, 0),
        "{d:?}"
    );

    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "http://127.0.0.1:{}/observe/curl",
            w.gw.addr.port()
        ))
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let curl = scores(&w.gw, "/observe/curl");
    let (automation, labels) = score_of(&curl, "bot.automation");
    assert_eq!(automation, 80);
    assert!(labels.contains(&"automation:curl".to_owned()), "{labels:?}");
    let (headers, labels) = score_of(&curl, "bot.browser_headers");
    assert_eq!(headers, 40, "{labels:?}");
    assert!(
        labels.contains(&"missing:accept-language".to_owned()),
        "{labels:?}"
    );
}

/// Headless Chromium scores 80 on `/signup` (challenge at 50): it gets the proof-of-work
/// page, solves it, is redirected back with a clearance cookie and reaches the backend; a
/// reload goes straight through; a forged cookie is refused (and the page shown again).
fn chromium_solves_the_challenge_and_reaches_the_backend(engine: &str) {
    let w = world(engine);
    let port = w.gw.addr.port();
    let browser = Browser::start();
    browser.goto(&format!("http://localhost:{port}/signup/form?step=1"));
    browser.wait_until(Duration::from_secs(30), "the backend's page", |b| {
        b.text().contains("\"backend\"")
    });
    assert!(
        browser.url().ends_with("/signup/form?step=1"),
        "{}",
        browser.url()
    );
    assert!(browser.text().contains("/signup/form?step=1"));
    let cookie = browser
        .cookie(challenge::CLEARANCE_COOKIE)
        .expect("clearance cookie set");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["secure"], true);

    let records: Vec<Value> =
        audit_records(&w.gw, |r| r.iter().any(|r| r["decision"] == "forward"))
            .into_iter()
            .filter(|r| r["path"] != "/favicon.ico")
            .collect();
    let outcome: Vec<(String, Option<String>)> = records
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_owned(),
                r["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            ("deny".to_owned(), Some("challenge_required".to_owned())),
            ("redirect".to_owned(), None),
            ("forward".to_owned(), None),
        ],
        "{records:?}"
    );
    let risk = &records[2]["risk"];
    assert_eq!(risk["clearance"], "valid");
    assert_eq!(risk["action"], "challenge");

    // A reload goes straight to the backend.
    let hits = w.backend.hits.load(std::sync::atomic::Ordering::SeqCst);
    browser.goto(&format!("http://localhost:{port}/signup/other"));
    assert!(browser.text().contains("/signup/other"));
    assert_eq!(
        w.backend.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits + 1
    );
    // The clearance is the gateway's: the backend never sees it (no `[session]` here).
    let cookies: Vec<String> = w
        .backend
        .last
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v.clone())
        .collect();
    assert!(
        !cookies
            .iter()
            .any(|c| c.contains(challenge::CLEARANCE_COOKIE)),
        "the clearance cookie reached the backend: {cookies:?}"
    );

    // A forged cookie is refused: the gateway shows the challenge again (and the browser,
    // solving it, earns a genuine cookie).
    let value = cookie["value"].as_str().unwrap();
    let (head, mac) = value.rsplit_once('.').unwrap();
    // Flip one bit of the decoded MAC and re-encode, so the forgery is well-formed base64
    // (a character-level edit can yield a non-canonical last character: "malformed").
    let mut mac_bytes = portcullis_core::b64::decode(mac).expect("the MAC is base64url");
    mac_bytes[0] ^= 0x01;
    let forged_mac = portcullis_core::b64::encode(&mac_bytes);
    browser.delete_cookie(challenge::CLEARANCE_COOKIE);
    browser.add_cookie(serde_json::json!({
        "name": challenge::CLEARANCE_COOKIE,
        "value": format!("{head}.{forged_mac}"),
        "path": "/",
        "secure": true,
        "httpOnly": true,
    }));
    browser.goto(&format!("http://localhost:{port}/signup/again"));
    browser.wait_until(
        Duration::from_secs(30),
        "the backend after re-solving",
        |b| b.text().contains("/signup/again"),
    );
    let records = audit_records(&w.gw, |r| {
        r.iter().any(|r| r["reason"] == "clearance_invalid")
    });
    let refused = records
        .iter()
        .find(|r| r["reason"] == "clearance_invalid")
        .expect("the forged cookie was refused");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["risk"]["clearance"], "challenge_forged");
}

on_every_engine!(header_and_automation_checks_score_real_chromium_and_curl);
on_every_runtime!(chromium_solves_the_challenge_and_reaches_the_backend);

/// API clients get 403 `challenge_required`; clearance cookies are checked for signature,
/// expiry and binding (network and User-Agent), and a solution is accepted once.
#[test]
fn clearance_cookies_are_bound_signed_and_expire() {
    let w = world("native");
    let key = challenge::derive_key(&AUDIT_KEY);
    let binding = Binding {
        network: "127.0.0.0/24",
        user_agent: "test-agent/1",
    };
    let now = Timestamp::from_unix_secs(unix_now());
    let hour = Duration::from_secs(3600);
    let send = |cookie: Option<&str>, ua: &str| {
        let cookie = cookie.map(|c| format!("{}={c}", challenge::CLEARANCE_COOKIE));
        let mut headers = vec![("user-agent", ua)];
        if let Some(c) = &cookie {
            headers.push(("cookie", c));
        }
        request(w.gw.addr, "GET", "/signup/api", &headers, b"").unwrap()
    };
    // No browser headers: 65 ≥ 50 → challenge; an API client gets JSON, not the page.
    let r = send(None, "test-agent/1");
    assert_eq!(
        (r.status, reason(&r).as_str()),
        (403, "challenge_required"),
        "{:?}",
        audit_records(&w.gw, |r| !r.is_empty())
    );
    assert!(r.header("content-type").unwrap().contains("json"));

    let valid = challenge::clearance(&key, now, hour, &binding);
    assert_eq!(send(Some(&valid), "test-agent/1").status, 200);

    let expired = challenge::clearance(
        &key,
        Timestamp::from_unix_secs(unix_now() - 7200),
        hour,
        &binding,
    );
    let r = send(Some(&expired), "test-agent/1");
    assert_eq!((r.status, reason(&r).as_str()), (403, "clearance_invalid"));
    assert!(
        r.json_body()["detail"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{:?}",
        r.json_body()
    );

    // Bound to the User-Agent: another client cannot reuse it.
    let r = send(Some(&valid), "other-agent/2");
    assert_eq!((r.status, reason(&r).as_str()), (403, "clearance_invalid"));

    // Signed with another key: forged.
    let other = challenge::clearance(&challenge::derive_key(&[7; 32]), now, hour, &binding);
    let r = send(Some(&other), "test-agent/1");
    assert_eq!((r.status, reason(&r).as_str()), (403, "clearance_invalid"));

    // A browser navigation gets the page; its token, solved, earns a cookie once.
    // (Without Accept: still 65; Sec-Fetch-Mode marks the navigation.)
    let nav = [
        ("user-agent", "test-agent/1"),
        ("sec-fetch-mode", "navigate"),
    ];
    let page = request(w.gw.addr, "GET", "/signup/page?a=b", &nav, b"").unwrap();
    assert_eq!(page.status, 403);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = String::from_utf8(page.body).unwrap();
    let token = html
        .split("data-token=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("token in the page");
    let bits: u8 = html
        .split("data-bits=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|b| b.parse().ok())
        .expect("bits in the page");
    let nonce = challenge::solve(token, bits);
    let answer = format!("{}?token={token}&nonce={nonce}", challenge::CHALLENGE_PATH);
    let r = request(w.gw.addr, "GET", &answer, &nav, b"").unwrap();
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("location"), Some("/signup/page?a=b"));
    assert!(
        r.header("set-cookie")
            .unwrap()
            .starts_with("__Host-portcullis-clearance=")
    );
    // The same solution again: refused.
    let r = request(w.gw.addr, "GET", &answer, &nav, b"").unwrap();
    assert_eq!((r.status, reason(&r).as_str()), (403, "challenge_failed"));
    // A wrong nonce: refused.
    let wrong = format!("{}?token={token}&nonce=zz", challenge::CHALLENGE_PATH);
    let r = request(w.gw.addr, "GET", &wrong, &nav, b"").unwrap();
    assert_eq!((r.status, reason(&r).as_str()), (403, "challenge_failed"));
}

/// With `[challenge.turnstile]` the page renders a Turnstile-compatible widget instead of the
/// proof of work, and its site token is checked by the host with a `siteverify` call — here
/// against a real HTTP server on loopback speaking that API. Refused tokens, answers of the
/// wrong kind and an unavailable service all fail closed.
fn site_tokens_are_verified_through_siteverify(engine: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let down = Arc::new(AtomicBool::new(false));
    let (s, d) = (seen.clone(), down.clone());
    let siteverify = portcullis_tests::net::Server::start(move |req| {
        let form = String::from_utf8_lossy(&req.body).into_owned();
        s.lock().unwrap().push(form.clone());
        if d.load(Ordering::SeqCst) || req.path != "/turnstile/v0/siteverify" {
            return portcullis_tests::net::Resp::json(500, &serde_json::json!({}));
        }
        let ok = form.contains("secret=test-secret") && form.contains("response=good-token");
        portcullis_tests::net::Resp::json(
            200,
            &serde_json::json!({"success": ok, "error-codes": if ok { vec![] } else { vec!["invalid-input-response"] }}),
        )
    });
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let text = format!(
        "{}\n[challenge.turnstile]\nsite_key = \"0x4AAAAAAAtest\"\nsecret_file = \"turnstile.secret\"\nverify_url = \"{}/turnstile/v0/siteverify\"\n",
        config(&keys, &backend.server.url()),
        siteverify.url()
    );
    let gw = portcullis_tests::host::start_engine_with(
        &text,
        engine,
        &[("turnstile.secret".into(), b"test-secret\n".to_vec())],
    );
    let nav = [
        ("user-agent", "test-agent/1"),
        ("sec-fetch-mode", "navigate"),
    ];
    let page = request(gw.addr, "GET", "/signup/widget", &nav, b"").unwrap();
    assert_eq!((page.status, reason(&page).as_str()), (403, ""));
    let csp = page.header("content-security-policy").unwrap().to_owned();
    assert!(
        csp.contains("script-src 'nonce-") && csp.contains("https://challenges.cloudflare.com"),
        "{csp}"
    );
    let html = String::from_utf8(page.body).unwrap();
    assert!(
        html.contains("class=\"cf-turnstile\" data-sitekey=\"0x4AAAAAAAtest\""),
        "{html}"
    );
    assert!(html.contains("src=\"https://challenges.cloudflare.com/turnstile/v0/api.js\""));
    let token = html
        .split("data-token=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let answer = |site_token: &str| {
        let path = format!(
            "{}?token={token}&site_token={site_token}",
            challenge::CHALLENGE_PATH
        );
        request(gw.addr, "GET", &path, &nav, b"").unwrap()
    };
    let r = answer("bad-token");
    assert_eq!((r.status, reason(&r).as_str()), (403, "challenge_failed"));
    assert!(
        r.json_body()["detail"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
    // A proof-of-work answer is not what this deployment asks for.
    let pow = format!("{}?token={token}&nonce=abc", challenge::CHALLENGE_PATH);
    let r = request(gw.addr, "GET", &pow, &nav, b"").unwrap();
    assert_eq!((r.status, reason(&r).as_str()), (403, "challenge_failed"));
    // The service unavailable: closed.
    down.store(true, Ordering::SeqCst);
    let r = answer("good-token");
    assert_eq!((r.status, reason(&r).as_str()), (403, "challenge_failed"));
    assert!(
        r.json_body()["detail"]
            .as_str()
            .unwrap()
            .contains("unavailable")
    );
    down.store(false, Ordering::SeqCst);
    let r = answer("good-token");
    assert_eq!(
        r.status,
        303,
        "{}: {:?}",
        String::from_utf8_lossy(&r.body),
        seen.lock().unwrap()
    );
    assert_eq!(r.header("location"), Some("/signup/widget"));
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The host sent the secret, the token and the client's address. A bundle does not know
    // the address (wasi:http does not tell a component who is connected), nor does a
    // worker outside Cloudflare (no `cf` object: CF-Connecting-IP is the client's claim).
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert!(last.contains("secret=test-secret"), "{last}");
    let address_known = !matches!(engine, "bundle" | "worker");
    assert_eq!(last.contains("remoteip=127.0.0.1"), address_known, "{last}");
    // The clearance lets the client through.
    let mut with_cookie = nav.to_vec();
    with_cookie.push(("cookie", &cookie));
    let r = request(gw.addr, "GET", "/signup/widget", &with_cookie, b"").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

on_every_runtime!(site_tokens_are_verified_through_siteverify);

/// Built-in checks and plugins in one verdict: their scores combine under the route's rule
/// and thresholds, and the audit record lists every contribution.
fn bot_checks_and_plugins_combine_into_one_verdict(engine: &str) {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let plugin =
        std::path::Path::new(env!("PORTCULLIS_PLUGIN_DIR")).join("fixture_plugin_trivial.wasm");
    let text = format!(
        "{}\n[plugin.trivial]\npath = \"{}\"\ndeadline = \"1s\"\nheaders = [\"x-risk\"]\n\n[[route]]\npath = \"/mixed\"\nauth = \"public\"\nrisk = {{ checks = [\"automation\"], plugins = [\"trivial\"], combine = \"weighted\", challenge = 60, deny = 90 }}\n",
        config(&keys, &backend.server.url()),
        plugin.display()
    );
    let gw = start_engine(&text, engine);
    let send = |ua: &str, risk: &str| {
        request(
            gw.addr,
            "GET",
            "/mixed",
            &[("user-agent", ua), ("x-risk", risk)],
            b"",
        )
        .unwrap()
    };
    // 80 (curl) + 15 (plugin) = 95 ≥ 90: denied.
    let r = send("curl/8.5.0", "15");
    assert_eq!((r.status, reason(&r).as_str()), (403, "risk_denied"));
    // 0 + 15: allowed; 0 + 65: challenge (an API client: 403).
    assert_eq!(
        send("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0", "15").status,
        200
    );
    let r = send("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0", "65");
    assert_eq!((r.status, reason(&r).as_str()), (403, "challenge_required"));
    let records = audit_records(&gw, |r| r.len() >= 3);
    let parts: Vec<(String, u64)> = records[0]["risk"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["plugin"].as_str().unwrap().to_owned(),
                c["score"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("bot.automation".to_owned(), 80),
            ("trivial".to_owned(), 15)
        ]
    );
    assert_eq!(records[0]["risk"]["score"], 95);
    assert_eq!(records[0]["risk"]["action"], "deny");
}

on_every_engine!(bot_checks_and_plugins_combine_into_one_verdict);
