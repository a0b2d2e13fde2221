//! The Cloudflare Worker (`gateway/worker`) under `workerd`, Cloudflare's open-source Workers
//! runtime (npm `workerd`, installed by `npm ci --prefix tests/workerd`): built once per
//! test process with `worker-build` (which runs the pinned `wasm-bindgen` CLI), configured
//! with a snapshot from `portcullis snapshot`, served on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::host::{Gateway, binary};
use crate::net::{free_port, listening_pid_owns};
use crate::{AUDIT_KEY, b64, repo_root};

/// The plugin crates linked into the worker the tests run.
pub const LINKED_PLUGINS: &str = "impossible-travel,credential-stuffing,ip-reputation";

fn tool(name: &str, hint: &str) -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let candidates = [home.join(".cargo/bin").join(name)];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return found.clone();
    }
    let which = Command::new("which").arg(name).output().ok();
    match which.filter(|o| o.status.success()) {
        Some(o) => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        None => panic!("`{name}` is missing: {hint}"),
    }
}

/// Builds the worker (release, all example plugins linked) once per process; the directory
/// with `index.js` and `index_bg.wasm`.
pub fn build() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        let crate_dir = root.join("gateway/worker");
        let out_dir = "build";
        let wasm_bindgen = tool(
            "wasm-bindgen",
            "cargo install wasm-bindgen-cli --version 0.2.130 (as .ci/run does)",
        );
        let worker_build = tool(
            "worker-build",
            "cargo install worker-build --version 0.8.7 (as .ci/run does)",
        );
        let out = Command::new(worker_build)
            .current_dir(&crate_dir)
            .args([
                "--release",
                "--no-opt",
                "--out-dir",
                out_dir,
                "--features",
                LINKED_PLUGINS,
            ])
            .env("WASM_BINDGEN_BIN", wasm_bindgen)
            // The nested target directory the build scripts use for wasm, never the one the
            // running `cargo test` holds.
            .env("CARGO_TARGET_DIR", root.join("target/component"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "worker-build failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = crate_dir.join(out_dir);
        assert!(dir.join("index.js").exists() && dir.join("index_bg.wasm").exists());
        dir
    })
}

/// The `workerd` binary from `tests/workerd/node_modules`.
pub fn workerd() -> PathBuf {
    let bin = repo_root().join("tests/workerd/node_modules/.bin/workerd");
    assert!(
        bin.exists(),
        "{} is missing: run `npm ci --prefix tests/workerd` (as .ci/run does)",
        bin.display()
    );
    bin
}

/// What a workerd process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One worker with its Durable Object namespace for the shared state.
    Stateful,
    /// One worker without the namespace (no shared state).
    Stateless,
    /// Two workers (two isolates, two ports) bound to one Durable Object namespace.
    Pair,
}

/// The workerd configuration: the worker's two modules, its snapshot binding, its shared
/// state in Durable Objects (in memory), and an outbound network that may reach loopback
/// backends and key servers. A request with a `cf-blob` header gets that JSON as its `cf`
/// object, as behind Cloudflare's edge. With [`Shape::Pair`] a second worker on
/// `second_port` binds the first one's namespace.
fn capnp(
    snapshot: &str,
    vars: &[(&str, &str)],
    port: u16,
    shape: Shape,
    second_port: u16,
    module_files: &[String],
) -> String {
    let vars: String = vars
        .iter()
        .map(|(k, v)| format!(", (name = \"{k}\", text = \"{v}\")"))
        .collect();
    let list: String = module_files
        .iter()
        .map(|m| {
            let kind = if m.ends_with(".wasm") {
                "wasm"
            } else {
                "esModule"
            };
            format!("    (name = \"{m}\", {kind} = embed \"{m}\"),\n")
        })
        .collect();
    let modules = format!("modules = [\n{list}  ],\n  compatibilityDate = \"2026-11-01\",");
    let (state_binding, namespaces) = match shape {
        Shape::Stateless => (String::new(), String::new()),
        Shape::Stateful | Shape::Pair => (
            r#", (name = "PORTCULLIS_STATE", durableObjectNamespace = "StateObject")"#.to_owned(),
            r#"durableObjectNamespaces = [ (className = "StateObject", uniqueKey = "portcullis-state") ],
  durableObjectStorage = (inMemory = void),"#
                .to_owned(),
        ),
    };
    let (second_service, second_socket, second_worker) = if shape == Shape::Pair {
        (
            r#"(name = "second", worker = .second),"#.to_owned(),
            format!(
                r#", (name = "http2", address = "127.0.0.1:{second_port}", http = (cfBlobHeader = "cf-blob"), service = "second")"#
            ),
            format!(
                r#"
const second :Workerd.Worker = (
  {modules}
  bindings = [ (name = "PORTCULLIS_SNAPSHOT", text = "{snapshot}"){vars}, (name = "PORTCULLIS_STATE", durableObjectNamespace = (serviceName = "main", className = "StateObject")) ],
  globalOutbound = "outbound",
);
"#
            ),
        )
    } else {
        (String::new(), String::new(), String::new())
    };
    format!(
        r#"using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .portcullis),
    {second_service}
    (name = "outbound", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (cfBlobHeader = "cf-blob"), service = "main"){second_socket} ],
);

const portcullis :Workerd.Worker = (
  {modules}
  bindings = [ (name = "PORTCULLIS_SNAPSHOT", text = "{snapshot}"){vars}{state_binding} ],
  {namespaces}
  globalOutbound = "outbound",
);
{second_worker}"#
    )
}

/// Starts the worker under workerd on `config_text` (plus `files` beside it); waits until it
/// answers. The configuration's plugin components are deployed with it (`portcullis
/// worker-plugins`), as an operator deploys them.
pub fn start_worker(config_text: &str, files: &[(String, Vec<u8>)]) -> Gateway {
    start_worker_with(config_text, files, &[])
}

/// As [`start_worker`], without deploying plugin components: only the plugin crates linked
/// into the worker ([`LINKED_PLUGINS`]) can serve the configuration's plugins.
pub fn start_worker_linked(config_text: &str, files: &[(String, Vec<u8>)]) -> Gateway {
    start_worker_deployed(config_text, files, &[], Shape::Stateful, None, false).0
}

/// As [`start_worker`], with extra text bindings (`PORTCULLIS_VERIFY`, …).
pub fn start_worker_with(
    config_text: &str,
    files: &[(String, Vec<u8>)],
    vars: &[(&str, &str)],
) -> Gateway {
    start_worker_shaped(config_text, files, vars, Shape::Stateful, None).0
}

/// As [`start_worker`], listening on 127.0.0.1:`port` (for configurations that must know
/// the gateway's own URL in advance, such as an OIDC redirect URI).
pub fn start_worker_on(config_text: &str, files: &[(String, Vec<u8>)], port: u16) -> Gateway {
    start_worker_shaped(config_text, files, &[], Shape::Stateful, Some(port)).0
}

/// As [`start_worker`], without the Durable Object namespace: no shared state.
pub fn start_stateless_worker(config_text: &str, files: &[(String, Vec<u8>)]) -> Gateway {
    start_worker_shaped(config_text, files, &[], Shape::Stateless, None).0
}

/// Two workers (two isolates) in one workerd sharing one Durable Object namespace: the
/// process (serving the first) and the second one's address.
pub fn start_worker_pair(
    config_text: &str,
    files: &[(String, Vec<u8>)],
) -> (Gateway, std::net::SocketAddr) {
    start_worker_pair_on(config_text, files, None)
}

/// As [`start_worker_pair`], the first worker listening on 127.0.0.1:`port` when given.
pub fn start_worker_pair_on(
    config_text: &str,
    files: &[(String, Vec<u8>)],
    port: Option<u16>,
) -> (Gateway, std::net::SocketAddr) {
    let (gw, second) = start_worker_shaped(config_text, files, &[], Shape::Pair, port);
    (gw, second.unwrap_or_else(|| panic!("no second worker")))
}

/// Starts workerd serving `shape`; the gateway and, for a pair, the second address.
fn start_worker_shaped(
    config_text: &str,
    files: &[(String, Vec<u8>)],
    vars: &[(&str, &str)],
    shape: Shape,
    fixed_port: Option<u16>,
) -> (Gateway, Option<std::net::SocketAddr>) {
    let deploy = config_text.contains("[plugin.");
    start_worker_deployed(config_text, files, vars, shape, fixed_port, deploy)
}

/// Runs `portcullis worker-plugins` for the configuration in `dir` into `dir`: the module
/// files to list after the entry (`main.js`), relative to `dir`.
fn deploy_plugins(dir: &Path) -> Vec<String> {
    let out = Command::new(binary())
        .args(["worker-plugins", "--config"])
        .arg(dir.join("gateway.toml"))
        .arg("-o")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "portcullis worker-plugins failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut modules = vec![
        "portcullis-plugins.js".to_owned(),
        "portcullis-plugin-host.js".to_owned(),
    ];
    for plugin in std::fs::read_dir(dir.join("plugins")).unwrap() {
        let plugin = plugin.unwrap();
        for file in std::fs::read_dir(plugin.path()).unwrap() {
            let file = file.unwrap();
            modules.push(format!(
                "plugins/{}/{}",
                plugin.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            ));
        }
    }
    modules
}

/// As [`start_worker_shaped`]; `deploy`: deploy the configuration's plugin components.
fn start_worker_deployed(
    config_text: &str,
    files: &[(String, Vec<u8>)],
    vars: &[(&str, &str)],
    shape: Shape,
    fixed_port: Option<u16>,
    deploy: bool,
) -> (Gateway, Option<std::net::SocketAddr>) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let build = build();
    let dir = std::env::temp_dir().join(format!(
        "portcullis-workerd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gateway.toml"), config_text).unwrap();
    std::fs::write(dir.join("audit.key"), b64(&AUDIT_KEY)).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let out = Command::new(binary())
        .args(["snapshot", "--config"])
        .arg(dir.join("gateway.toml"))
        .args(["-o", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "portcullis snapshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // workerd embeds files relative to its configuration file.
    for module in ["index.js", "index_bg.wasm"] {
        std::fs::copy(build.join(module), dir.join(module)).unwrap();
    }
    let module_files: Vec<String> = if deploy {
        ["main.js", "index.js", "index_bg.wasm"]
            .into_iter()
            .map(str::to_owned)
            .chain(deploy_plugins(&dir))
            .collect()
    } else {
        vec!["index.js".to_owned(), "index_bg.wasm".to_owned()]
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = fixed_port.unwrap_or_else(free_port);
        let second_port = free_port();
        std::fs::write(
            dir.join("config.capnp"),
            capnp(&snapshot, vars, port, shape, second_port, &module_files),
        )
        .unwrap();
        let log = dir.join("gateway.log");
        let child = Command::new(workerd())
            .arg("serve")
            .arg(dir.join("config.capnp"))
            .arg("--verbose")
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut gw = Gateway {
            child,
            addr,
            admin: addr,
            dir: dir.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let second: std::net::SocketAddr = format!("127.0.0.1:{second_port}").parse().unwrap();
        loop {
            // Listening, and by this workerd: another test's server may have taken a fixed
            // port first, and would answer in the gateway's place.
            let pid = gw.child.id();
            let up = listening_pid_owns(pid, port)
                && (shape != Shape::Pair || listening_pid_owns(pid, second_port));
            if up {
                return (gw, (shape == Shape::Pair).then_some(second));
            }
            if let Ok(Some(_)) = gw.child.try_wait() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "workerd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Exited: most likely the port was taken in between; try another.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(attempt < 5, "workerd exited: {text}");
        gw.dir = std::env::temp_dir().join("portcullis-workerd-none");
    }
}

/// The audit records the worker logged (`console.log` JSON lines).
pub fn worker_audit(gw: &Gateway) -> Vec<serde_json::Value> {
    let mut text = std::fs::read_to_string(gw.dir.join("gateway.log")).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(gw.dir.join("stdout.log")).unwrap_or_default());
    text.lines()
        .filter_map(|l| {
            let start = l.find('{')?;
            serde_json::from_str::<serde_json::Value>(l.get(start..)?).ok()
        })
        .filter(|v| v.get("request_id").is_some())
        .collect()
}
