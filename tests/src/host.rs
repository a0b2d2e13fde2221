//! The `portcullis` binary as a child process: started on port 0 with a configuration in
//! a fresh temporary directory, stopped (and the directory removed) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::net::{Resp, request};
use crate::{AUDIT_KEY, b64, repo_root};

/// A running gateway.
pub struct Gateway {
    /// The process.
    pub child: Child,
    /// Gateway address.
    pub addr: std::net::SocketAddr,
    /// Admin address.
    pub admin: std::net::SocketAddr,
    /// Its directory (configuration, audit log, gateway log).
    pub dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `portcullis` binary built beside the running test.
pub fn binary() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/portcullis
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("portcullis");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace tests (`cargo test --workspace`), which build it",
        bin.display()
    );
    bin
}

/// The host's engines: every end-to-end scenario runs against each.
pub const ENGINES: [&str; 2] = ["component", "native"];

/// Generates, for each `fn name(engine: &str)`, a test module `name` with one `#[test]` per
/// engine (`name::component`, `name::native`).
#[macro_export]
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn component() {
                    super::$name("component")
                }
                #[test]
                fn native() {
                    super::$name("native")
                }
            }
        )*
    };
}

/// Runs each test on both engines of the host, on the edge bundle under `serve-wasm` and on
/// the Cloudflare Worker under workerd (`start_engine*` with engine `"bundle"` or
/// `"worker"`; their audit records come from their logs).
#[macro_export]
macro_rules! on_every_runtime {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn component() {
                    super::$name("component")
                }
                #[test]
                fn native() {
                    super::$name("native")
                }
                #[test]
                fn bundle() {
                    super::$name("bundle")
                }
                #[test]
                fn worker() {
                    super::$name("worker")
                }
            }
        )*
    };
}

/// Requests each instance serves under the engine `component-reuse` (the component engine
/// with `--instance-reuse`).
pub const REUSE: u32 = 8;

/// Starts a gateway (component engine) on `config_text` and waits until ready.
pub fn start(config_text: &str) -> Gateway {
    start_engine(config_text, "component")
}

/// Starts a gateway with `engine` on `config_text` (with `audit.key` beside it) and waits
/// until ready.
pub fn start_engine(config_text: &str, engine: &str) -> Gateway {
    start_engine_with(config_text, engine, &[])
}

/// As [`start_engine`], with extra files (name, bytes) written beside the configuration.
pub fn start_engine_with(config_text: &str, engine: &str, files: &[(String, Vec<u8>)]) -> Gateway {
    start_engine_on(config_text, engine, files, "127.0.0.1:0")
}

/// As [`start_engine_with`], listening on `listen` (for configurations that must know the
/// gateway's own URL in advance, such as an OIDC redirect URI).
pub fn start_engine_on(
    config_text: &str,
    engine: &str,
    files: &[(String, Vec<u8>)],
    listen: &str,
) -> Gateway {
    start_engine_args(config_text, engine, files, listen, |_| Vec::new())
}

/// As [`start_engine_on`], with extra `serve` arguments computed from the gateway's
/// directory (an `--audit` among them replaces the default `DIR/audit.jsonl`).
pub fn start_engine_args(
    config_text: &str,
    engine: &str,
    files: &[(String, Vec<u8>)],
    listen: &str,
    extra: impl FnOnce(&Path) -> Vec<String>,
) -> Gateway {
    start_engine_inner(&binary(), config_text, engine, files, listen, extra, true)
}

/// As [`start_engine_args`], returning once the gateway serves, ready or not (the native
/// and component engines are not ready until every key set has loaded: a test of an
/// issuer that never loads uses this).
pub fn start_engine_unready(
    config_text: &str,
    engine: &str,
    files: &[(String, Vec<u8>)],
    listen: &str,
) -> Gateway {
    start_engine_inner(
        &binary(),
        config_text,
        engine,
        files,
        listen,
        |_| Vec::new(),
        false,
    )
}

/// As [`start_engine`] (`component` or `native`), running `program` instead of the
/// workspace's `portcullis` (a copy of it, for a test that replaces the executable).
pub fn start_engine_from(program: &Path, config_text: &str, engine: &str) -> Gateway {
    start_engine_inner(
        program,
        config_text,
        engine,
        &[],
        "127.0.0.1:0",
        |_| Vec::new(),
        true,
    )
}

fn start_engine_inner(
    program: &Path,
    config_text: &str,
    engine: &str,
    files: &[(String, Vec<u8>)],
    listen: &str,
    extra: impl FnOnce(&Path) -> Vec<String>,
    wait_ready: bool,
) -> Gateway {
    if engine == "worker" || engine == "worker-pair" {
        let port = listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .unwrap_or_else(crate::net::free_port);
        if engine == "worker" {
            return crate::workerd::start_worker_on(config_text, files, port);
        }
        // Two isolates on one Durable Object namespace: `admin` is the second one's address.
        let (mut gw, second) = crate::workerd::start_worker_pair_on(config_text, files, Some(port));
        gw.admin = second;
        return gw;
    }
    if engine == "bundle" {
        // `extra` gives serve-wasm's arguments (`--state redis://…`).
        let b = bundle(config_text, files);
        let args = extra(&b.dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        return serve_wasm_on(&b.wasm, listen, &args);
    }
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gateway.toml"), config_text).unwrap();
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let cache = repo_root().join("target/e2e-component-cache");
    let log = dir.join("gateway.log");
    let mut extra = extra(&dir);
    if !extra.iter().any(|a| a == "--audit") {
        extra.push("--audit".into());
        extra.push(dir.join("audit.jsonl").display().to_string());
    }
    // `component-reuse`: the component engine keeping each instance for 8 requests.
    let (engine, reuse) = match engine {
        "component-reuse" => ("component", Some(REUSE)),
        other => (other, None),
    };
    if let Some(n) = reuse {
        extra.extend(["--instance-reuse".to_owned(), n.to_string()]);
    }
    if !extra.iter().any(|a| a == "--request-timeout") {
        extra.extend(["--request-timeout".to_owned(), "20".to_owned()]);
    }
    let child = Command::new(program)
        .args(["serve", "--config"])
        .arg(dir.join("gateway.toml"))
        .args([
            "--listen",
            listen,
            "--admin",
            "127.0.0.1:0",
            "--drain",
            "10",
            "--engine",
            engine,
        ])
        .args(&extra)
        .env("XDG_CACHE_HOME", cache)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The gateway binds port 0 and logs the addresses: no collisions between parallel tests.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (addr, admin) = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("portcullis serving")) {
            let v: Value = serde_json::from_str(line).unwrap();
            let parse = |k: &str| -> std::net::SocketAddr {
                v["fields"][k].as_str().unwrap().parse().unwrap()
            };
            break (parse("listen"), parse("admin"));
        }
        assert!(Instant::now() < deadline, "gateway did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let gw = Gateway {
        child,
        addr,
        admin,
        dir,
    };
    loop {
        if !wait_ready
            || request(gw.admin, "GET", "/readyz", &[], b"").is_ok_and(|r| r.status == 200)
        {
            return gw;
        }
        assert!(
            Instant::now() < deadline,
            "gateway not ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GETs `path` with an optional bearer token and extra headers.
pub fn get(gw: &Gateway, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    request(gw.addr, "GET", path, &headers, b"").unwrap()
}

/// The problem-details reason code of a response.
pub fn reason(r: &Resp) -> String {
    r.json_body()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The gateway's audit records, waiting up to 30 s until `ready` holds for them: a record is
/// written once its exchange is complete, which may be just after the client has the
/// response.
pub fn audit_records(gw: &Gateway, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A bundle writes its records among its log lines.
        let records: Vec<Value> = match std::fs::read_to_string(gw.dir.join("audit.jsonl")) {
            Ok(text) => text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
            Err(_) => runtime_audit(gw),
        };
        if ready(&records) || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last audit record for `path` (waiting for one, as [`audit_records`] does).
pub fn last_audit_record(gw: &Gateway, path: &str) -> Value {
    let records = audit_records(gw, |r| r.iter().any(|r| r["path"] == path));
    records
        .iter()
        .rev()
        .find(|r| r["path"] == path)
        .cloned()
        .unwrap_or_else(|| panic!("no audit record for {path}: {records:?}"))
}

/// A bundle made by `portcullis bundle` in a directory of its own (removed on drop).
pub struct Bundled {
    /// The bundle's directory (configuration, files, the bundle).
    pub dir: PathBuf,
    /// The bundle.
    pub wasm: PathBuf,
    /// What `portcullis bundle` printed.
    pub printed: String,
}

impl Drop for Bundled {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for one test process's `what`.
fn scratch(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Bundles `config_text` (with `audit.key` and `files` beside it) with `portcullis bundle`.
pub fn bundle(config_text: &str, files: &[(String, Vec<u8>)]) -> Bundled {
    bundle_with(config_text, files, &[])
}

/// [`bundle`] with `args` added (`--bake-keys`).
pub fn bundle_with(config_text: &str, files: &[(String, Vec<u8>)], args: &[&str]) -> Bundled {
    let dir = scratch("bundle");
    std::fs::write(dir.join("gateway.toml"), config_text).unwrap();
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let wasm = dir.join("edge.wasm");
    let out = Command::new(binary())
        .args(["bundle", "--config"])
        .arg(dir.join("gateway.toml"))
        .arg("-o")
        .arg(&wasm)
        .args(args)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "portcullis bundle failed: {}{}",
        printed,
        String::from_utf8_lossy(&out.stderr)
    );
    Bundled { dir, wasm, printed }
}

/// Serves `wasm` with `portcullis serve-wasm` (a plain wasi:http host: WASI, wasi:http and
/// wasi:keyvalue only) on a free port, with `args` added (`--state redis://…`). Its log,
/// the bundle's audit lines among it, goes to `gateway.log` in the gateway's directory.
pub fn serve_wasm(wasm: &Path, args: &[&str]) -> Gateway {
    serve_wasm_on(wasm, "127.0.0.1:0", args)
}

/// [`serve_wasm`] listening on `listen`. The compiled bundle is cached in the gateway's
/// own scratch directory (every test's bundle differs: nothing to share).
pub fn serve_wasm_on(wasm: &Path, listen: &str, args: &[&str]) -> Gateway {
    serve_wasm_cached_in(wasm, listen, args, None)
}

/// [`serve_wasm`] with its compiled-component cache in `cache` (`XDG_CACHE_HOME`).
pub fn serve_wasm_cached(wasm: &Path, cache: &Path) -> Gateway {
    serve_wasm_cached_in(wasm, "127.0.0.1:0", &[], Some(cache))
}

fn serve_wasm_cached_in(wasm: &Path, listen: &str, args: &[&str], cache: Option<&Path>) -> Gateway {
    let dir = scratch("serve-wasm");
    let log = dir.join("gateway.log");
    let cache = cache.map_or_else(|| dir.join("cache"), Path::to_path_buf);
    let child = Command::new(binary())
        .args(["serve-wasm", "--component"])
        .arg(wasm)
        .args(["--listen", listen])
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("portcullis serving")) {
            let v: Value = serde_json::from_str(line).unwrap();
            break v["fields"]["listen"].as_str().unwrap().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "serve-wasm did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Gateway {
        child,
        addr,
        admin: addr,
        dir,
    }
}

/// Bundles `config_text` ([`bundle`]) and serves the bundle ([`serve_wasm`], state in
/// its memory). Also returns what `portcullis bundle` printed.
pub fn start_bundle(config_text: &str, files: &[(String, Vec<u8>)]) -> (Gateway, String) {
    let b = bundle(config_text, files);
    let gw = serve_wasm(&b.wasm, &[]);
    (gw, b.printed.clone())
}

/// The audit records a bundle or a worker wrote among its log lines (`gateway.log`, and
/// workerd's `stdout.log`), in order.
fn runtime_audit(gw: &Gateway) -> Vec<Value> {
    let mut text = std::fs::read_to_string(gw.dir.join("gateway.log")).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(gw.dir.join("stdout.log")).unwrap_or_default());
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.get(l.find('{')?..)?).ok())
        .filter(|v| v.get("decision").is_some())
        .collect()
}

/// The audit records a bundle wrote (JSON lines among `gateway.log`'s).
pub fn bundle_audit(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.dir.join("gateway.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("decision").is_some())
        .collect()
}
