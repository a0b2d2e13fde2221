//! A small W3C WebDriver client driving a real headless Chromium through `chromedriver`, for
//! end-to-end tests. Dependency-light: std plus `serde_json`; HTTP/1.1 is spoken directly on a
//! `TcpStream` (one connection per command).
//!
//! Every [`Browser`] owns its own `chromedriver` process (in its own process group), a free
//! 127.0.0.1 port, a WebDriver session and a fresh temporary Chromium profile, so several
//! browsers can run in parallel in one test process. Dropping a [`Browser`] deletes the session,
//! kills the driver's process group (and any Chromium still using the profile) and removes the
//! temporary directory.
//!
//! Binaries: `/usr/bin/chromedriver` and `/usr/bin/chromium` by default (falling back to a
//! `PATH` lookup); override with the `CHROMEDRIVER` and `CHROMIUM` environment variables.
//! Methods panic with a message naming the failed command and the driver's error JSON.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The W3C key under which an element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long to wait for chromedriver's `/status` to report ready: a bound against a hang,
/// generous because a loaded 2-core CI machine starts processes slowly.
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Socket read timeout for a command: above the 30 s page-load and script timeouts.
const COMMAND_READ_TIMEOUT: Duration = Duration::from_secs(90);
/// Flags Chromium needs in this (network-closed, containerised) environment.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1024",
];
const INSTALL_HINT: &str = "install them with `apt-get install chromium chromium-driver`, \
                            or point the CHROMIUM / CHROMEDRIVER environment variables at them";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// An error answered by the driver (or a transport failure), as JSON.
#[derive(Clone, Debug)]
pub struct DriverError {
    /// HTTP status (0 for transport failures).
    pub status: u16,
    /// The driver's `value` object: `{"error", "message", "data"?}` (stack trace removed).
    pub json: Value,
}

impl DriverError {
    /// The W3C error code, e.g. `"no such element"`, `"unable to set cookie"`.
    pub fn error(&self) -> &str {
        self.json.get("error").and_then(Value::as_str).unwrap_or("")
    }
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.json)
    }
}

/// A headless Chromium session driven through its own `chromedriver`.
pub struct Browser {
    driver: Child,
    /// `sh` loop that kills the driver group if this test process dies without dropping us.
    watchdog: Option<Child>,
    port: u16,
    session: String,
    /// Temporary directory holding the Chromium profile and the driver log.
    dir: PathBuf,
    /// Wall time spent in [`Browser::start_with_args`] (driver + session).
    startup: Duration,
}

impl Browser {
    /// Starts chromedriver on a free 127.0.0.1 port and a headless Chromium session.
    /// Panics with an install hint if the binaries are missing.
    pub fn start() -> Browser {
        Browser::start_with_args(&[])
    }

    /// Like [`Browser::start`], with extra Chromium command-line arguments
    /// (e.g. `--user-agent=...`, `--lang=de`).
    pub fn start_with_args(extra_args: &[&str]) -> Browser {
        let begun = Instant::now();
        let chromedriver = find_binary("CHROMEDRIVER", &["chromedriver"], "chromedriver");
        let chromium = find_binary(
            "CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
            "chromium",
        );

        let dir = std::env::temp_dir().join(format!(
            "portcullis-browser-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile)
            .unwrap_or_else(|e| panic!("browser: cannot create temp dir {}: {e}", dir.display()));

        // A free port can be taken between probing and chromedriver binding it (parallel tests):
        // retry with a new port if the driver exits early.
        let mut attempt = 0;
        let (mut browser, log) = loop {
            attempt += 1;
            let port = crate::net::free_port();
            let log = dir.join(format!("chromedriver-{attempt}.log"));
            let mut cmd = Command::new(&chromedriver);
            cmd.arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            let child = cmd.spawn().unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "browser: cannot spawn {}: {e}; {INSTALL_HINT}",
                    chromedriver.display()
                )
            });
            // From here on, Drop cleans up the driver and the directory on any panic.
            let watchdog = spawn_watchdog(child.id(), &dir);
            let mut b = Browser {
                driver: child,
                watchdog,
                port,
                session: String::new(),
                dir: dir.clone(),
                startup: Duration::ZERO,
            };
            match b.wait_ready() {
                Ok(()) => break (b, log),
                Err(exited) if exited && attempt < 5 => {
                    b.dir = PathBuf::new(); // keep the dir for the next attempt
                    drop(b);
                }
                Err(_) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!(
                        "browser: chromedriver on port {port} not ready within {DRIVER_READY_TIMEOUT:?} \
                         (attempt {attempt}); log tail:\n{}",
                        tail(&log, 2000)
                    )
                }
            }
        };

        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "pageLoad": 30_000, "script": 30_000, "implicit": 0 },
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": args,
                    }
                }
            }
        });
        let value = browser
            .request("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "browser: creating the WebDriver session failed: {e}\nchromedriver log tail:\n{}",
                    tail(&log, 2000)
                )
            });
        browser.session = value
            .get("sessionId")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("browser: new session response without sessionId: {value}"))
            .to_owned();
        browser.startup = begun.elapsed();
        browser
    }

    /// Navigates to `url` and waits for it to load (page load strategy "normal").
    pub fn goto(&self, url: &str) {
        self.cmd(
            "POST",
            "/url",
            json!({ "url": url }),
            &format!("goto {url}"),
        );
    }

    /// The current top-level URL.
    pub fn url(&self) -> String {
        as_string(self.cmd("GET", "/url", Value::Null, "get url"))
    }

    /// The current document title.
    pub fn title(&self) -> String {
        as_string(self.cmd("GET", "/title", Value::Null, "get title"))
    }

    /// The serialized DOM of the current page.
    pub fn source(&self) -> String {
        as_string(self.cmd("GET", "/source", Value::Null, "get page source"))
    }

    /// `document.body.innerText` (empty without a body).
    pub fn text(&self) -> String {
        as_string(self.execute(
            "return document.body ? document.body.innerText : '';",
            vec![],
        ))
    }

    /// Runs a synchronous script (`return` gives the result); `args` are `arguments[..]`.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
            &format!("execute script `{}`", short(script)),
        )
    }

    /// Runs an asynchronous script: the callback is the last argument
    /// (`arguments[arguments.length - 1]`); its argument is the result.
    pub fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            json!({ "script": script, "args": args }),
            &format!("execute async script `{}`", short(script)),
        )
    }

    /// All cookies visible to the current page, HttpOnly ones included.
    pub fn cookies(&self) -> Vec<Value> {
        match self.cmd("GET", "/cookie", Value::Null, "get cookies") {
            Value::Array(a) => a,
            other => panic!("browser: get cookies: expected an array, got {other}"),
        }
    }

    /// Every cookie of every site in the browser's jar (Chrome DevTools Protocol
    /// `Network.getAllCookies`): unlike [`Browser::cookies`], not limited to the current
    /// page's host. Each has at least `name`, `value` and `domain`.
    pub fn all_cookies(&self) -> Vec<Value> {
        let v = self.cmd(
            "POST",
            "/goog/cdp/execute",
            json!({ "cmd": "Network.getAllCookies", "params": {} }),
            "get all cookies",
        );
        match v.get("cookies") {
            Some(Value::Array(a)) => a.clone(),
            _ => panic!("browser: get all cookies: unexpected response {v}"),
        }
    }

    /// The cookie named `name` visible to the current page, if any.
    pub fn cookie(&self, name: &str) -> Option<Value> {
        match self.try_cmd("GET", &format!("/cookie/{}", pct(name)), Value::Null) {
            Ok(v) => Some(v),
            Err(e) if e.error() == "no such cookie" => None,
            Err(e) => panic!("browser: get cookie {name:?} failed: {e}"),
        }
    }

    /// Adds a cookie to the current page's domain, e.g.
    /// `json!({"name": "a", "value": "b", "path": "/", "httpOnly": true})`.
    pub fn add_cookie(&self, cookie: Value) {
        if let Err(e) = self.try_add_cookie(cookie.clone()) {
            panic!("browser: add cookie {cookie} failed: {e}")
        }
    }

    /// Like [`Browser::add_cookie`], returning the driver's error instead of panicking.
    pub fn try_add_cookie(&self, cookie: Value) -> Result<(), DriverError> {
        self.try_cmd("POST", "/cookie", json!({ "cookie": cookie }))
            .map(|_| ())
    }

    /// Deletes the cookie named `name` (no error if absent).
    pub fn delete_cookie(&self, name: &str) {
        self.cmd(
            "DELETE",
            &format!("/cookie/{}", pct(name)),
            Value::Null,
            &format!("delete cookie {name:?}"),
        );
    }

    /// Deletes all cookies visible to the current page.
    pub fn delete_all_cookies(&self) {
        self.cmd("DELETE", "/cookie", Value::Null, "delete all cookies");
    }

    /// Finds the first element matching the CSS selector and clicks it.
    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/click"),
            json!({}),
            &format!("click {css:?}"),
        );
    }

    /// Finds the first element matching the CSS selector and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
            &format!("type into {css:?}"),
        );
    }

    /// Whether an element matches the CSS selector right now.
    pub fn exists(&self, css: &str) -> bool {
        !self
            .cmd(
                "POST",
                "/elements",
                json!({ "using": "css selector", "value": css }),
                &format!("find elements {css:?}"),
            )
            .as_array()
            .is_none_or(Vec::is_empty)
    }

    /// Polls `cond` every 50 ms until it holds; on timeout panics with `what`, the current URL
    /// and the page text.
    pub fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return;
            }
            if Instant::now() >= deadline {
                // Best effort: the page may be mid-navigation, so don't panic inside the panic.
                let url = match self.try_cmd("GET", "/url", Value::Null) {
                    Ok(v) => as_string(v),
                    Err(e) => format!("<unavailable: {e}>"),
                };
                let text = match self.try_cmd(
                    "POST",
                    "/execute/sync",
                    json!({ "script": "return document.body ? document.body.innerText : '';", "args": [] }),
                ) {
                    Ok(v) => as_string(v),
                    Err(e) => format!("<unavailable: {e}>"),
                };
                panic!(
                    "browser: timed out after {timeout:?} waiting until {what}\n  url: {url}\n  page text:\n{}",
                    tail(&text, 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `navigator.userAgent`.
    pub fn user_agent(&self) -> String {
        as_string(self.execute("return navigator.userAgent;", vec![]))
    }

    /// Opens a new tab and returns its window handle (the current window is unchanged).
    pub fn new_window(&self) -> String {
        let v = self.cmd(
            "POST",
            "/window/new",
            json!({ "type": "tab" }),
            "open new window",
        );
        v.get("handle")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("browser: new window response without handle: {v}"))
            .to_owned()
    }

    /// Switches the session to the window/tab with `handle`.
    pub fn switch_to(&self, handle: &str) {
        self.cmd(
            "POST",
            "/window",
            json!({ "handle": handle }),
            &format!("switch to window {handle}"),
        );
    }

    /// The current window handle.
    pub fn window_handle(&self) -> String {
        as_string(self.cmd("GET", "/window", Value::Null, "get window handle"))
    }

    /// How long [`Browser::start`] took (driver ready + session created).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The chromedriver port.
    pub fn driver_port(&self) -> u16 {
        self.port
    }

    /// Sends a raw session command: `path` is relative to `/session/{id}` (e.g. `"/url"`);
    /// `body` of `Value::Null` means no body (GET/DELETE), otherwise it is sent as JSON.
    /// Returns the response's `value`, or the driver's error.
    pub fn try_cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, DriverError> {
        let full = format!("/session/{}{path}", self.session);
        let body = if body.is_null() { None } else { Some(body) };
        self.request(method, &full, body.as_ref())
    }

    fn cmd(&self, method: &str, path: &str, body: Value, what: &str) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("browser: {what} failed: {e}"))
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
            &format!("find element {css:?}"),
        );
        v.get(ELEMENT_KEY)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("browser: find element {css:?}: unexpected response {v}"))
            .to_owned()
    }

    /// Polls `/status` until ready. `Err(true)` if the driver process exited (e.g. lost the
    /// port race), `Err(false)` on timeout.
    fn wait_ready(&mut self) -> Result<(), bool> {
        let deadline = Instant::now() + DRIVER_READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.driver.try_wait() {
                return Err(true);
            }
            if let Ok(v) = http(self.port, "GET", "/status", None, Duration::from_secs(2))
                && v.1.pointer("/value/ready") == Some(&Value::Bool(true))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(false)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DriverError> {
        let (status, json) =
            http(self.port, method, path, body, COMMAND_READ_TIMEOUT).map_err(|e| DriverError {
                status: 0,
                json: json!({ "error": "transport", "message": format!("{method} {path}: {e}") }),
            })?;
        let mut value = json.get("value").cloned().unwrap_or(Value::Null);
        let is_error =
            !(200..300).contains(&status) || value.get("error").is_some_and(|e| e.is_string());
        if is_error {
            // chromedriver's stack traces are bare addresses: noise in a panic message.
            if let Some(obj) = value.as_object_mut() {
                obj.remove("stacktrace");
            }
            return Err(DriverError {
                status,
                json: if value.is_null() { json } else { value },
            });
        }
        Ok(value)
    }

    /// Ends the session and kills the driver and any Chromium left behind. Never panics.
    fn shutdown(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = http(self.port, "DELETE", &path, None, Duration::from_secs(10));
            self.session.clear();
        }
        let pgid = self.driver.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if !self.dir.as_os_str().is_empty() {
            // Chromium may have been started in its own process group: kill whatever still
            // uses our profile directory.
            kill_processes_mentioning(&self.dir);
            for _ in 0..20 {
                if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Never panic in drop (it may run during unwinding).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.shutdown()));
    }
}

/// One HTTP/1.1 exchange with the driver on its own connection; returns (status, JSON body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    read_timeout: Duration,
) -> std::io::Result<(u16, Value)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let _ = stream.set_nodelay(true);
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if body.is_some() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    stream.write_all(req.as_bytes())?;
    stream.flush()?;

    let (status, headers, body) = read_response(&mut stream)?;
    let _ = headers;
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            std::io::Error::other(format!(
                "invalid JSON from driver (HTTP {status}): {e}: {}",
                short_to(&String::from_utf8_lossy(&body), 500)
            ))
        })?
    };
    Ok((status, json))
}

type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// Reads one HTTP/1.1 response, honouring Content-Length and chunked transfer encoding
/// (otherwise reading to EOF).
fn read_response(stream: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
    let mut rest = buf.get(head_end + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    let body = if header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&rest, b"\r\n") {
                    break p;
                }
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                rest.extend_from_slice(chunk.get(..n).unwrap_or_default());
            };
            let size_line =
                String::from_utf8_lossy(rest.get(..line_end).unwrap_or_default()).into_owned();
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size_line:?}")))?;
            rest.drain(..line_end + 2);
            if size == 0 {
                break; // trailers (if any) are ignored; the connection is closed anyway
            }
            while rest.len() < size + 2 {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                rest.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            out.extend_from_slice(rest.get(..size).unwrap_or_default());
            rest.drain(..size + 2);
        }
        out
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad Content-Length {len:?}")))?;
        while rest.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            rest.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        rest.truncate(len);
        rest
    } else {
        stream.read_to_end(&mut rest)?;
        rest
    };
    Ok((status, headers, body))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `$ENV`, else `/usr/bin/<name>`, else the first `<name>` on `PATH`; panics with an install
/// hint if none exists.
/// The major version of the Chromium the tests drive (`chromium --version`).
pub fn chromium_major() -> u32 {
    let chromium = find_binary(
        "CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
        "chromium",
    );
    let out = std::process::Command::new(chromium)
        .arg("--version")
        .output()
        .expect("chromium --version");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.split('.').next().and_then(|m| m.parse().ok()))
        .expect("chromium prints a version")
}

fn find_binary(env: &str, names: &[&str], what: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
        panic!(
            "browser: ${env} points at {}, which does not exist; {INSTALL_HINT}",
            p.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![PathBuf::from("/usr/bin")];
    dirs.extend(std::env::split_paths(&path));
    for name in names {
        for d in &dirs {
            let p = d.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("browser: {what} not found (looked for {names:?} in /usr/bin and PATH); {INSTALL_HINT}")
}

/// Starts a `sh` loop that, once this process has gone (crash, abort, `process::exit`, or a
/// panicking main thread ending the test binary while other threads still hold browsers), kills
/// the driver's process group and removes the temp dir. Killed by [`Browser`]'s `Drop`.
fn spawn_watchdog(pgid: u32, dir: &Path) -> Option<Child> {
    let dir = dir.to_string_lossy().replace('\'', "'\\''");
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 -{pgid} 2>/dev/null; \
         sleep 1; rm -rf -- '{dir}'",
        me = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// SIGKILLs every process whose command line mentions `needle` (Linux `/proc` scan).
fn kill_processes_mentioning(needle: &Path) {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id().to_string();
    let pids: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && *n != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect();
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Percent-encodes a path segment.
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

fn as_string(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn short(s: &str) -> String {
    short_to(s, 120)
}

fn short_to(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// The last `max` characters of `s`.
fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.to_owned()
    } else {
        format!("…{}", s.chars().skip(n - max).collect::<String>())
    }
}
