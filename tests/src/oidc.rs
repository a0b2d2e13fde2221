//! A real, certified OpenID Provider for end-to-end tests: panva's `oidc-provider` (npm),
//! run by `tests/oidc/op.mjs` on 127.0.0.1 with issuer `http://127.0.0.1:PORT`.
//!
//! Needs `node` and the npm packages: `npm ci --prefix tests/oidc` (what `.ci/run` does).
//! Configuration is one JSON value (see the top of `op.mjs`):
//!
//! ```json
//! { "clients": [{ "client_id": "app", "client_secret": "…", "redirect_uris": ["…"],
//!                 "post_logout_redirect_uris": ["…"], "backchannel_logout_uri": "…",
//!                 "token_endpoint_auth_method": "client_secret_basic",
//!                 "id_token_signed_response_alg": "ES256" }],
//!   "access_token_ttl": 60,
//!   "accounts": { "alice": { "residency": "eu" } } }
//! ```
//!
//! Any login name and password sign in (`sub` = the login name); names ending in `-mfa`
//! get `acr` "mfa" and `amr` ["pwd","otp"], others `acr` "pwd" and `amr` ["pwd"]. Consent is
//! automatic. [`OpenIdProvider::logout_account`] makes the provider end an account's
//! sessions and send back-channel logout tokens.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use sha2::Digest as _;

use crate::net::{self, Resp};

/// How long the provider may take to print its listening line. A bound against a hang, not
/// a speed check: on a 2-core CI machine running Chromium-driven suites beside it, node's
/// start (loading oidc-provider's modules) once took over 20 s.
const START_TIMEOUT: Duration = Duration::from_secs(40);

/// A running `oidc-provider`; killed on drop.
pub struct OpenIdProvider {
    child: Child,
    /// Kept open: `op.mjs` exits when it closes (this process died without dropping us).
    _stdin: Option<ChildStdin>,
    issuer: String,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl OpenIdProvider {
    /// Starts the provider with `config` (the `OP_CONFIG` JSON) on a free port and waits
    /// (at most [`START_TIMEOUT`]) until it listens. Panics with an install hint if the npm packages are
    /// missing, or with the provider's stderr if it does not come up.
    pub fn start(config: Value) -> Self {
        let dir = oidc_dir();
        assert!(
            dir.join("node_modules").join("oidc-provider").is_dir(),
            "oidc: {}/node_modules is missing; run `npm ci --prefix tests/oidc` in the \
             repository root (needs node and npm)",
            dir.display()
        );
        let mut last = String::new();
        for attempt in 1..=3 {
            match Self::try_start(&dir, &config) {
                Ok(op) => return op,
                // Lost the race for the port: another try with another one.
                Err(e) if e.contains("EADDRINUSE") => last = e,
                // Alive but silent (once seen in CI: a node process that had loaded
                // oidc-provider never listened in 120 s): killed, and another try.
                Err(e) if e.contains("did not report listening") => {
                    eprintln!("[oidc-provider] start attempt {attempt} failed: {e}");
                    last = e;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}")
    }

    fn try_start(dir: &std::path::Path, config: &Value) -> Result<Self, String> {
        let port = net::free_port();
        let mut child = Command::new("node")
            .arg("op.mjs")
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env("OP_CONFIG", config.to_string())
            .env("OP_EXIT_ON_STDIN_EOF", "1")
            .env("NODE_ENV", "test")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                format!("oidc: cannot start `node tests/oidc/op.mjs` ({e}); is node installed?")
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");

        let stderr = Arc::new(Mutex::new(String::new()));
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                // Node 20 is not an LTS line oidc-provider v9 supports officially; it works.
                if !line.contains("Unsupported runtime") {
                    eprintln!("[oidc-provider] {line}");
                }
                let mut l = log.lock().expect("stderr log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent {
                    sent = tx.send(line.clone()).is_ok();
                } else {
                    eprintln!("[oidc-provider stdout] {line}");
                }
            }
        });

        let mut op = Self {
            child,
            _stdin: stdin,
            issuer: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                // Give the stderr reader a moment to collect the reason.
                let _ = op.wait_exit(Duration::from_secs(2));
                // What the process is doing, for the next one to read this.
                let pid = op.child.id();
                let proc_file = |f: &str| {
                    std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default()
                };
                let state = proc_file("status")
                    .lines()
                    .find(|l| l.starts_with("State:"))
                    .map(str::to_owned)
                    .unwrap_or_default();
                return Err(format!(
                    "oidc: the provider did not report listening within {START_TIMEOUT:?} \
                     ({e}; {state}, wchan {:?}); stderr:\n{}",
                    proc_file("wchan"),
                    op.stderr_log()
                ));
            }
        };
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| format!("oidc: unexpected first stdout line {line:?}: {e}"))?;
        let issuer = v["listening"]
            .as_str()
            .ok_or_else(|| format!("oidc: unexpected first stdout line {line:?}"))?;
        op.issuer = issuer.to_owned();
        Ok(op)
    }

    /// The issuer identifier, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The provider's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the provider wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The discovery document (`/.well-known/openid-configuration`), fetched now.
    pub fn discovery(&self) -> Value {
        let r = self.get("/.well-known/openid-configuration");
        assert_eq!(r.status, 200, "oidc: discovery: {}", body_text(&r));
        r.json_body()
    }

    /// The endpoint named `name` in the discovery document (e.g. `token_endpoint`).
    pub fn endpoint(&self, name: &str) -> String {
        self.discovery()[name]
            .as_str()
            .unwrap_or_else(|| panic!("oidc: discovery has no {name}"))
            .to_owned()
    }

    /// The public JWK Set (from the discovery's `jwks_uri`).
    pub fn jwks(&self) -> Value {
        let uri = self.endpoint("jwks_uri");
        let r = self.get(self.path_of(&uri));
        assert_eq!(r.status, 200, "oidc: jwks: {}", body_text(&r));
        r.json_body()
    }

    /// GET of a path on the provider.
    pub fn get(&self, path: &str) -> Resp {
        net::request(self.addr, "GET", path, &[], b"")
            .unwrap_or_else(|e| panic!("oidc: GET {path}: {e}"))
    }

    /// POSTs an `application/x-www-form-urlencoded` body to `url` (a URL of this provider
    /// or a path), with HTTP Basic client authentication when `basic` is given.
    pub fn post_form(&self, url: &str, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Resp {
        let path = self.path_of(url);
        let auth = basic.map(|(id, secret)| basic_auth(id, secret));
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        net::request(
            self.addr,
            "POST",
            path,
            &headers,
            form_encode(form).as_bytes(),
        )
        .unwrap_or_else(|e| panic!("oidc: POST {path}: {e}"))
    }

    /// A token-endpoint request (`client_secret_basic`); the response, whatever its status.
    pub fn token_request(&self, client: (&str, &str), form: &[(&str, &str)]) -> Resp {
        self.post_form(&self.endpoint("token_endpoint"), form, Some(client))
    }

    /// Makes the provider end every session of the account `sub`: back-channel logout tokens
    /// to every client of those sessions that has a `backchannel_logout_uri`, grants (and so
    /// refresh and access tokens) revoked. Returns `{"sessions", "notified", "errors"}`.
    pub fn logout_account(&self, sub: &str) -> Value {
        let r = self.post_form(&format!("/test/logout?sub={}", pct(sub)), &[], None);
        assert_eq!(r.status, 200, "oidc: /test/logout: {}", body_text(&r));
        r.json_body()
    }

    /// The `sid` the provider gave `client_id` in the live session of account `sub` (what
    /// its ID and logout tokens carry), if there is one.
    pub fn session_sid(&self, sub: &str, client_id: &str) -> Option<String> {
        let r = self.get(&format!("/test/sessions?sub={}", pct(sub)));
        assert_eq!(r.status, 200, "oidc: /test/sessions: {}", body_text(&r));
        r.json_body()
            .as_array()?
            .iter()
            .find(|s| s["client_id"] == client_id)
            .and_then(|s| s["sid"].as_str())
            .map(str::to_owned)
    }

    /// A compact JWS of `claims` with header `typ`, signed with the provider's own ES256
    /// key (`op-es256`): tokens the provider would never issue, trusted like its own.
    pub fn sign(&self, claims: &Value, typ: &str) -> String {
        let claims = crate::b64(claims.to_string().as_bytes());
        let r = self.post_form(
            &format!("/test/sign?claims={claims}&typ={}", pct(typ)),
            &[],
            None,
        );
        assert_eq!(r.status, 200, "oidc: /test/sign: {}", body_text(&r));
        String::from_utf8_lossy(&r.body).trim().to_owned()
    }

    /// `url`'s path and query if it is on this provider, else `url` itself (a path).
    fn path_of<'a>(&self, url: &'a str) -> &'a str {
        match url.strip_prefix(self.issuer.as_str()) {
            Some("") => "/",
            Some(p) => p,
            None => {
                assert!(
                    url.starts_with('/'),
                    "oidc: {url} is not on {}",
                    self.issuer
                );
                url
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let pgid = self.child.id();
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &format!("-{pgid}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        if !self.wait_exit(Duration::from_secs(2)) {
            signal("-KILL");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `tests/oidc`.
pub fn oidc_dir() -> PathBuf {
    crate::repo_root().join("tests").join("oidc")
}

/// A PKCE pair: (verifier, S256 challenge).
pub fn pkce_pair() -> (String, String) {
    let verifier = random_token();
    let challenge = crate::b64(&sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// A fresh, unguessable-enough base64url token (43 chars) for state, nonce and verifiers.
pub fn random_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = sha2::Sha256::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::SeqCst).to_le_bytes());
    let mut urandom = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut urandom);
    }
    h.update(urandom);
    crate::b64(&h.finalize())
}

/// `application/x-www-form-urlencoded` (also for query strings).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Parses a query string or form body (`+` is a space).
pub fn form_decode(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

/// The value of `name` in a query string or form body.
pub fn form_value(s: &str, name: &str) -> Option<String> {
    form_decode(s)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
pub fn basic_auth(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", pct(id), pct(secret)))
    )
}

/// A JWT's header and payload, decoded without checking the signature.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next = |what: &str| -> Value {
        let seg = parts
            .next()
            .unwrap_or_else(|| panic!("oidc: JWT without {what}: {token}"));
        let bytes = URL_SAFE_NO_PAD
            .decode(seg)
            .unwrap_or_else(|e| panic!("oidc: JWT {what} is not base64url: {e}"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("oidc: JWT {what} is not JSON: {e}"))
    };
    let header = next("header");
    let payload = next("payload");
    (header, payload)
}

/// Verifies an ES256 JWT against the P-256 key of `jwks` named by its `kid`; returns the
/// payload.
pub fn verify_es256(token: &str, jwks: &Value) -> Result<Value, String> {
    use p256::ecdsa::signature::Verifier as _;
    let (header, payload) = jwt_parts(token);
    if header["alg"] != "ES256" {
        return Err(format!("alg is {}, not ES256", header["alg"]));
    }
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kid"] == kid))
        .ok_or_else(|| format!("no key {kid} in the JWKS"))?;
    if jwk["kty"] != "EC" || jwk["crv"] != "P-256" {
        return Err(format!("key {kid} is not a P-256 key"));
    }
    let coord = |c: &str| {
        jwk[c]
            .as_str()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| format!("key {kid}: bad {c}"))
    };
    let mut sec1 = vec![4u8];
    sec1.extend(coord("x")?);
    sec1.extend(coord("y")?);
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|e| e.to_string())?;
    let (input, sig) = token.rsplit_once('.').ok_or("not a JWS")?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|e| e.to_string())?;
    key.verify(input.as_bytes(), &sig)
        .map_err(|_| "bad signature".to_owned())?;
    Ok(payload)
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i) {
            Some(b'+') => out.push(b' '),
            Some(b'%') => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            Some(b) => out.push(*b),
            None => {}
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn body_text(r: &Resp) -> String {
    format!("HTTP {} {}", r.status, String::from_utf8_lossy(&r.body))
}
