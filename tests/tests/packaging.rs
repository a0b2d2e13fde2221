//! The packaging agrees with what it packages: the `Dockerfile` builds with the toolchain,
//! wasm targets and build command CI uses; the Kubernetes manifest, run as its pod would
//! (the image's entrypoint and environment, the manifest's configuration and secret layout),
//! serves its probe paths on its probe port; the systemd unit passes `systemd-analyze
//! verify`, and its command line, exit codes and reload (SIGHUP) match the binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_tests::host::{Gateway, binary, start_engine_with};
use portcullis_tests::net::request;
use portcullis_tests::{AUDIT_KEY, b64, repo_root};
use serde_json::Value;

const DOCKERFILE: &str = "Dockerfile";
const UNIT: &str = "edge-config/deploy/portcullis.service";
const MANIFEST: &str = "edge-config/deploy/kubernetes.yaml";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fresh temporary directory.
fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-packaging-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ── The Dockerfile ──────────────────────────────────────────────────────────────────────

/// One build stage: its base image, its name, and its instructions (keyword, arguments).
struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    /// The single `keyword` instruction.
    fn one(&self, keyword: &str) -> &str {
        let all = self.all(keyword);
        assert_eq!(all.len(), 1, "{} has {keyword}: {all:?}", self.from);
        all[0]
    }

    /// The `RUN` instruction containing `needle`.
    fn run_with(&self, needle: &str) -> &str {
        let runs: Vec<&str> = self
            .all("RUN")
            .into_iter()
            .filter(|r| r.contains(needle))
            .collect();
        assert_eq!(runs.len(), 1, "{}: RUN {needle}…: {runs:?}", self.from);
        runs[0]
    }

    /// `ENV` as a map (the `NAME=value …` form).
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for args in self.all("ENV") {
            for pair in args.split_whitespace() {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV {args}: expected NAME=value"));
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        env
    }
}

/// The Dockerfile's stages: comments dropped, continuation lines joined.
fn dockerfile() -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in read(DOCKERFILE).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical.into_iter().filter(|l| !l.is_empty()) {
        let (keyword, args) = line.split_once(' ').unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_] => None,
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => panic!("FROM {args}"),
            };
            stages.push(Stage {
                from: words[0].to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .instructions
                .push((keyword, args));
        }
    }
    stages
}

/// The builder and runtime stages.
fn stages() -> (Stage, Stage) {
    let mut stages = dockerfile();
    assert_eq!(stages.len(), 2, "a builder and a runtime stage");
    let runtime = stages.pop().unwrap();
    (stages.pop().unwrap(), runtime)
}

/// A JSON-form (exec-form) instruction's words.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{args}: not the exec form: {e}"))
}

/// The targets a `rustup target add …` line adds.
fn rustup_targets(text: &str, what: &str) -> BTreeSet<String> {
    let at = text
        .find("rustup target add ")
        .unwrap_or_else(|| panic!("{what}: no `rustup target add`"));
    text[at + "rustup target add ".len()..]
        .lines()
        .next()
        .unwrap()
        .split(['&', ';'])
        .next()
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn toml_file(path: &str) -> toml::Table {
    read(path).parse().unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `portcullis` package: its name and its binary's name.
fn host_package() -> (String, String) {
    let manifest = toml_file("gateway/host/Cargo.toml");
    let package = manifest["package"]["name"].as_str().unwrap().to_owned();
    let bins = manifest["bin"].as_array().unwrap();
    assert_eq!(bins.len(), 1, "{bins:?}");
    (package, bins[0]["name"].as_str().unwrap().to_owned())
}

/// `portcullis serve --help`.
fn serve_help() -> String {
    let out = Command::new(binary())
        .args(["serve", "--help"])
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_LISTEN")
        .env_remove("PORTCULLIS_ADMIN")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The default of a `serve` option, from `--help`.
fn serve_default(option: &str) -> String {
    let help = serve_help();
    let at = help
        .find(&format!("      {option} "))
        .unwrap_or_else(|| panic!("serve has no {option}:\n{help}"));
    let rest = &help[at..];
    let rest = &rest[rest.find("[default: ").unwrap() + "[default: ".len()..];
    rest[..rest.find(']').unwrap()].to_owned()
}

#[test]
fn the_dockerfile_builds_with_the_pinned_toolchain_the_ci_targets_and_the_documented_command() {
    let (build, runtime) = stages();
    // The official Rust image at exactly the pinned toolchain.
    let toolchain = toml_file("rust-toolchain.toml");
    let channel = toolchain["toolchain"]["channel"].as_str().unwrap();
    let tag = build
        .from
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("the builder is not the official rust image: {}", build.from));
    let (version, debian) = tag
        .split_once('-')
        .unwrap_or_else(|| panic!("rust:{tag}: name the Debian release, e.g. -trixie"));
    assert_eq!(
        version, channel,
        "the builder's toolchain is not rust-toolchain.toml's"
    );
    // The runtime is the builder's Debian release (its glibc).
    assert_eq!(
        runtime.from,
        format!("debian:{debian}-slim"),
        "the runtime's Debian release is not the builder's ({debian})"
    );
    // The wasm targets .ci/run installs (and rust-toolchain.toml lists): the host's build
    // script builds and embeds the gateway component.
    let ci = read(".ci/run");
    let ci_targets = rustup_targets(&ci, ".ci/run");
    assert_eq!(
        rustup_targets(build.run_with("rustup target add"), DOCKERFILE),
        ci_targets,
        "the Dockerfile's rustup targets are not .ci/run's"
    );
    let pinned: BTreeSet<String> = toolchain["toolchain"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ci_targets, pinned);
    // The documented build command, locked as CI builds.
    let (package, bin) = host_package();
    let command = format!("cargo build --release --locked -p {package}");
    assert_eq!(build.run_with("cargo build"), command);
    assert!(ci.contains("--locked"));
    assert!(
        read("docs/deploy.md").contains(&format!("`{command}`")),
        "docs/deploy.md does not name the Dockerfile's build command `{command}`"
    );
    // The binary it builds is the one the runtime stage runs.
    let workdir = build.one("WORKDIR");
    let builder = build.name.as_deref().expect("the builder stage is named");
    let copy = runtime.one("COPY");
    let words: Vec<&str> = copy.split_whitespace().collect();
    assert_eq!(
        words[..2],
        [
            format!("--from={builder}").as_str(),
            format!("{workdir}/target/release/{bin}").as_str()
        ],
        "COPY {copy}"
    );
    let entrypoint = exec_form(runtime.one("ENTRYPOINT"));
    assert_eq!(entrypoint, [words[2], "serve"]);
}

#[test]
fn the_image_listens_where_serve_reads_it_and_exposes_those_ports() {
    let (_, runtime) = stages();
    let env = runtime.env();
    let help = serve_help();
    for name in env.keys().filter(|k| k.starts_with("PORTCULLIS_")) {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "`serve` does not read {name}:\n{help}"
        );
    }
    assert_eq!(env["PORTCULLIS_CONFIG"], "/etc/portcullis/portcullis.toml");
    let mut ports = BTreeSet::new();
    for name in ["PORTCULLIS_LISTEN", "PORTCULLIS_ADMIN"] {
        let addr: SocketAddr = env[name].parse().unwrap();
        assert!(
            addr.ip().is_unspecified(),
            "{name}={addr}: in a container both listeners must listen on every interface"
        );
        ports.insert(addr.port());
    }
    let exposed: BTreeSet<u16> = runtime
        .all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, ports, "EXPOSE is not the listen and admin ports");
    // A non-root user, by number (so Kubernetes' runAsNonRoot can check it), which owns the
    // cache directory the host uses (XDG_CACHE_HOME/portcullis).
    let user = runtime.one("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER {user}");
    let setup = runtime.run_with("useradd");
    assert!(setup.contains(&format!("--uid {uid} ")), "{setup}");
    let cache = format!("{}/portcullis", env["XDG_CACHE_HOME"]);
    assert!(
        setup.contains(&format!("mkdir -p /etc/portcullis {cache}"))
            && setup.contains(&format!("chown portcullis:portcullis {cache}")),
        "{setup}"
    );
}

// ── The Kubernetes manifest ─────────────────────────────────────────────────────────────

/// The manifest's documents, parsed by PyYAML.
fn manifest() -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(repo_root().join(MANIFEST))
        .output()
        .expect("python3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'yaml'"),
        "the packaging tests parse YAML with PyYAML: python3 -m pip install pyyaml"
    );
    assert!(out.status.success(), "{MANIFEST}: {err}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{MANIFEST}: one {kind}");
    found[0]
}

/// The Deployment's pod spec and its one container.
fn pod(docs: &[Value]) -> (&Value, &Value) {
    let spec = &kind(docs, "Deployment")["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    (spec, &containers[0])
}

/// A container port by name or number.
fn container_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).unwrap();
    }
    let name = port.as_str().unwrap();
    let found = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"));
    u16::try_from(found["containerPort"].as_u64().unwrap()).unwrap()
}

/// What the pod runs: the image's entrypoint, then the container's args (no `command`).
fn pod_argv(container: &Value) -> Vec<String> {
    assert!(
        container.get("command").is_none(),
        "the container replaces the image's entrypoint"
    );
    let (_, runtime) = stages();
    let mut argv = exec_form(runtime.one("ENTRYPOINT"));
    for a in container["args"].as_array().into_iter().flatten() {
        argv.push(a.as_str().unwrap().to_owned());
    }
    argv
}

/// The pod's environment: the image's, overridden by the container's.
fn pod_env(container: &Value) -> BTreeMap<String, String> {
    let (_, runtime) = stages();
    let mut env = runtime.env();
    for e in container["env"].as_array().into_iter().flatten() {
        env.insert(
            e["name"].as_str().unwrap().to_owned(),
            e["value"].as_str().unwrap().to_owned(),
        );
    }
    env
}

fn addr_port(env: &BTreeMap<String, String>, name: &str) -> u16 {
    env[name].parse::<SocketAddr>().unwrap().port()
}

/// The container's mount at `path`: its volume.
fn volume_at<'a>(spec: &'a Value, container: &Value, path: &str) -> &'a Value {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
    spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap()
}

/// Waits for the process to end, at most `limit`.
fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The pod's gateway process, stopped (and its directory removed) on drop.
struct Pod {
    child: Child,
    log: PathBuf,
    root: PathBuf,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The pod as the kubelet would run it, in a directory standing for its file system: the
/// projected configuration volume laid out under `DIR/etc/portcullis`, its Secret's values
/// replaced by `secret` when given.
fn run_pod(docs: &[Value], secret: Option<&str>) -> Pod {
    let (spec, container) = pod(docs);
    let root = temp_dir("pod");
    let mut env = pod_env(container);
    // The configuration volume, as the kubelet projects it.
    let config_path = Path::new(&env["PORTCULLIS_CONFIG"]).to_owned();
    let mount = config_path.parent().unwrap().to_str().unwrap();
    let volume = volume_at(spec, container, mount);
    let dir = root.join(mount.trim_start_matches('/'));
    for source in volume["projected"]["sources"].as_array().unwrap() {
        let (object, data) = if let Some(cm) = source.get("configMap") {
            (cm, &kind(docs, "ConfigMap")["data"])
        } else {
            (&source["secret"], &kind(docs, "Secret")["stringData"])
        };
        let is_secret = source.get("secret").is_some();
        assert_eq!(
            object["name"],
            kind(docs, if is_secret { "Secret" } else { "ConfigMap" })["metadata"]["name"]
        );
        for item in object["items"].as_array().unwrap() {
            let value = data[item["key"].as_str().unwrap()].as_str().unwrap();
            let value = match secret {
                Some(s) if is_secret => s,
                _ => value,
            };
            let file = dir.join(item["path"].as_str().unwrap());
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, value).unwrap();
        }
    }
    assert!(
        dir.join(config_path.file_name().unwrap()).exists(),
        "PORTCULLIS_CONFIG={} is not in the configuration volume",
        config_path.display()
    );
    env.insert(
        "PORTCULLIS_CONFIG".into(),
        dir.join(config_path.file_name().unwrap())
            .display()
            .to_string(),
    );
    // The root file system is read-only: the cache the host writes must be a volume. An
    // emptyDir is writable by all, so it is XDG_CACHE_HOME itself, where the host creates
    // its private `portcullis` directory (a shared one it would not trust).
    let cache = env["XDG_CACHE_HOME"].clone();
    assert!(volume_at(spec, container, &cache).get("emptyDir").is_some());
    env.insert(
        "XDG_CACHE_HOME".into(),
        root.join("cache").display().to_string(),
    );
    // Free loopback ports instead of the pod's (checked against the manifest elsewhere).
    env.insert("PORTCULLIS_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("PORTCULLIS_ADMIN".into(), "127.0.0.1:0".into());
    let argv = pod_argv(container);
    let log = root.join("gateway.log");
    let child = Command::new(binary())
        .args(&argv[1..])
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Pod { child, log, root }
}

/// The admin address a gateway logged, once it serves.
fn admin_address(child: &mut Child, log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("portcullis serving")) {
            let v: Value = serde_json::from_str(line).unwrap();
            return v["fields"]["admin"].as_str().unwrap().parse().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the pod's gateway exited ({status}): {text}");
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container's probes by kind, each (path, port).
fn probes(container: &Value) -> BTreeMap<&'static str, (String, u16)> {
    let mut probes = BTreeMap::new();
    for name in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[name]["httpGet"];
        assert!(get.is_object(), "{name} is not an HTTP GET");
        probes.insert(
            name,
            (
                get["path"].as_str().unwrap().to_owned(),
                container_port(container, &get["port"]),
            ),
        );
    }
    probes
}

/// A gateway (the test helper's: port 0, native engine) that is ready at once: its one
/// issuer is a shared-secret issuer, with no key set to fetch.
fn start_ready_gateway() -> Gateway {
    start_engine_with(
        r#"
region.eu = { jurisdiction = "EU", backends = ["http://127.0.0.1:9"] }
residency = { missing = "eu" }
route = [{ path = "/" }]
audit = { subject_key_file = "audit.key" }

[[issuer]]
name = "internal"
issuer = "https://auth.internal"
hmac_secret_file = "internal.key"
audiences = ["api://x"]
algorithms = ["HS256"]
"#,
        "native",
        &[("internal.key".into(), b64(&[7; 48]).into_bytes())],
    )
}

#[test]
fn the_probes_and_service_use_the_ports_the_pod_listens_on() {
    let docs = manifest();
    let (spec, container) = pod(&docs);
    let env = pod_env(container);
    let (listen, admin) = (
        addr_port(&env, "PORTCULLIS_LISTEN"),
        addr_port(&env, "PORTCULLIS_ADMIN"),
    );
    for var in ["PORTCULLIS_LISTEN", "PORTCULLIS_ADMIN"] {
        let addr: SocketAddr = env[var].parse().unwrap();
        assert!(
            addr.ip().is_unspecified(),
            "{var}={addr}: the kubelet probes the pod's IP"
        );
    }
    let declared: BTreeSet<u16> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| container_port(container, &p["name"]))
        .collect();
    assert_eq!(declared, BTreeSet::from([listen, admin]));
    for (probe, (_, port)) in probes(container) {
        assert_eq!(port, admin, "{probe} is not on the admin listener");
    }
    // The Service selects the pod and reaches the gateway, never the admin listener.
    let service = &kind(&docs, "Service")["spec"];
    let labels = &kind(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the Service does not select the pod");
    }
    let targets: Vec<u16> = service["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| container_port(container, &p["targetPort"]))
        .collect();
    assert_eq!(targets, [listen]);
    let scrape = &kind(&docs, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(scrape["prometheus.io/port"], admin.to_string());
    assert_eq!(scrape["prometheus.io/path"], "/metrics");
    // Locked down, as the image allows: the image's own non-root user.
    let (_, runtime) = stages();
    let uid = runtime.one("USER").split(':').next().unwrap().to_owned();
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"].to_string(), uid);
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "no {bound}.{resource}"
            );
        }
    }
}

#[test]
fn the_pod_serves_its_probe_paths_on_its_admin_listener() {
    let docs = manifest();
    let (_, container) = pod(&docs);
    let probes = probes(container);
    // The manifest's configuration, secret layout, entrypoint and environment, with a real
    // audit key: it serves; the probes are answered, not 404. Its issuer cannot be reached
    // here, so readiness may be 503.
    let mut pod = run_pod(&docs, Some(&b64(&AUDIT_KEY)));
    let admin = admin_address(&mut pod.child, &pod.log);
    let status = |path: &str| request(admin, "GET", path, &[], b"").unwrap().status;
    assert_eq!(
        status("/no-such-probe"),
        404,
        "the admin listener answers anything"
    );
    for (probe, (path, _)) in &probes {
        let got = status(path);
        let expected: &[u16] = if *probe == "readinessProbe" {
            &[200, 503]
        } else {
            &[200]
        };
        assert!(
            expected.contains(&got),
            "{probe} {path}: {got}, expected one of {expected:?}"
        );
    }
    // SIGTERM (what the kubelet sends after preStop) ends it cleanly.
    signal(&pod.child, "TERM");
    let exit = wait_for_exit(&mut pod.child, Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}: {}",
        std::fs::read_to_string(&pod.log).unwrap_or_default()
    );
    drop(pod);
    // A gateway whose issuers are all usable: every probe answers 200.
    let gw = start_ready_gateway();
    for (probe, (path, _)) in &probes {
        let got = request(gw.admin, "GET", path, &[], b"").unwrap().status;
        assert_eq!(got, 200, "{probe} {path} of a ready gateway");
    }
}

#[test]
fn the_shipped_secret_placeholder_does_not_load() {
    let docs = manifest();
    let mut pod = run_pod(&docs, None);
    let exit = wait_for_exit(&mut pod.child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&pod.log).unwrap_or_default();
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(3),
        "the placeholder key must fail as a configuration that does not load: {text}"
    );
}

/// `audit.sink.flush(Duration::from_secs(N))` in the host's `serve`: how long shutdown
/// writes out queued audit records.
fn audit_flush_seconds() -> u64 {
    let lib = read("gateway/host/src/serve/mod.rs");
    let needle = "audit.sink.flush(Duration::from_secs(";
    let at = lib.find(needle).expect("serve flushes the audit queue") + needle.len();
    lib[at..at + lib[at..].find(')').unwrap()].parse().unwrap()
}

/// Every `.rs` file under `dir`, at any depth.
fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// `--drain` as `args` sets it, else the binary's default.
fn drain_seconds(argv: &[String]) -> u64 {
    argv.iter()
        .position(|a| a == "--drain")
        .map_or_else(|| serve_default("--drain"), |i| argv[i + 1].clone())
        .parse()
        .unwrap()
}

#[test]
fn the_grace_periods_cover_the_drain_and_the_audit_flush() {
    let docs = manifest();
    let (spec, container) = pod(&docs);
    let drain = drain_seconds(&pod_argv(container));
    let flush = audit_flush_seconds();
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .map_or(0, |c| {
            assert_eq!(c[0], "sleep");
            c[1].as_str().unwrap().parse().unwrap()
        });
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + drain + flush,
        "terminationGracePeriodSeconds {grace} ≤ preStop {pre_stop} + drain {drain} + audit {flush}"
    );
    let unit = unit();
    let stop: u64 = unit.one("TimeoutStopSec").parse().unwrap();
    let exec = unit.exec_start();
    assert!(
        stop > drain_seconds(&exec) + flush,
        "TimeoutStopSec {stop} ≤ drain + audit {flush}"
    );
}

// ── The systemd unit ────────────────────────────────────────────────────────────────────

/// A unit file: every `Key=value` (repeated keys keep every value) of every section.
struct Unit(Vec<(String, String)>);

impl Unit {
    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one(&self, key: &str) -> &str {
        let all = self.all(key);
        assert_eq!(all.len(), 1, "{UNIT}: {key}= {all:?}");
        all[0]
    }

    fn exec_start(&self) -> Vec<String> {
        self.one("ExecStart")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn environment(&self) -> BTreeMap<String, String> {
        self.all("Environment")
            .iter()
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }
}

fn unit() -> Unit {
    Unit(
        read(UNIT)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{UNIT}: {l}"));
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect(),
    )
}

/// Runs the unit's command line with `edit` applied, in the unit's environment only.
fn run_unit_command(unit: &Unit, edit: impl FnOnce(&mut Vec<String>)) -> (Option<i32>, String) {
    let mut argv = unit.exec_start();
    edit(&mut argv);
    let out = Command::new(binary())
        .args(&argv[1..])
        .env_clear()
        .envs(unit.environment())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let text = read(UNIT);
    let unit = unit();
    let exec = unit.exec_start();
    assert!(exec[0].starts_with('/'), "ExecStart needs an absolute path");
    // verify checks that ExecStart's program exists: the binary under test stands in.
    let dir = temp_dir("unit");
    let copy = dir.join("portcullis.service");
    let line = format!("ExecStart={}", unit.one("ExecStart"));
    assert!(text.contains(&line));
    let rewritten = format!(
        "ExecStart={}{}",
        binary().display(),
        &line["ExecStart=".len() + exec[0].len()..]
    );
    std::fs::write(&copy, text.replace(&line, &rewritten)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {report}");
    assert!(
        !report.contains("portcullis.service"),
        "systemd-analyze verify warns: {report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_systemd_unit_matches_the_binarys_command_line_and_exit_codes() {
    let unit = unit();
    let exec = unit.exec_start();
    assert_eq!(exec[1], "serve");
    let config = exec
        .iter()
        .position(|a| a == "-c" || a == "--config")
        .unwrap();
    assert_eq!(exec[config + 1], "/etc/portcullis/portcullis.toml");
    // The service manager is not told when the gateway is up: no sd_notify in the host.
    let notifies = rust_sources(&repo_root().join("gateway/host/src"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .any(|src| src.contains("NOTIFY_SOCKET") || src.contains("sd_notify"));
    assert_eq!(unit.one("Type"), if notifies { "notify" } else { "simple" });
    let prevent: BTreeSet<i32> = unit
        .one("RestartPreventExitStatus")
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(unit.one("Restart"), "on-failure");
    // The unit's own command line parses (else 2) and, without its configuration, ends as a
    // configuration that does not load: 3. Neither may restart in a loop.
    let dir = temp_dir("exit");
    let missing = dir.join("portcullis.toml").display().to_string();
    let (code, stderr) = run_unit_command(&unit, |argv| argv[config + 1].clone_from(&missing));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
    let (bad_option, stderr) = run_unit_command(&unit, |argv| {
        argv[config + 1].clone_from(&missing);
        argv.push("--no-such-option".into());
    });
    assert_eq!(bad_option, Some(2), "{stderr}");
    assert_eq!(
        prevent,
        BTreeSet::from([2, 3]),
        "RestartPreventExitStatus must name the command-line and configuration exit codes"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // The directories it writes are the ones systemd creates for it under ProtectSystem=strict.
    let env = unit.environment();
    let audit = exec.iter().position(|a| a == "--audit").unwrap();
    assert_eq!(
        Path::new(&exec[audit + 1]).parent().unwrap(),
        Path::new("/var/log").join(unit.one("LogsDirectory"))
    );
    assert_eq!(
        Path::new(&env["XDG_CACHE_HOME"]).join("portcullis"),
        Path::new("/var/cache").join(unit.one("CacheDirectory"))
    );
    assert_eq!(unit.one("ProtectSystem"), "strict");
    // No capabilities: both listeners use unprivileged ports.
    assert_eq!(unit.one("CapabilityBoundingSet"), "");
    for var in ["PORTCULLIS_LISTEN", "PORTCULLIS_ADMIN"] {
        let port = env
            .get(var)
            .map_or_else(
                || serve_default(&format!("--{}", &var[11..].to_lowercase())),
                Clone::clone,
            )
            .parse::<SocketAddr>()
            .unwrap()
            .port();
        assert!(
            port >= 1024,
            "{var}: port {port} needs CAP_NET_BIND_SERVICE"
        );
    }
    // wasmtime makes compiled code executable at run time.
    assert!(unit.all("MemoryDenyWriteExecute").is_empty());
}

#[test]
fn the_unit_reloads_with_sighup_which_the_binary_survives_and_reloads_on() {
    let unit = unit();
    assert_eq!(
        unit.all("ExecReload"),
        vec!["/bin/kill -HUP $MAINPID"],
        "systemctl reload sends SIGHUP"
    );
    let mut gw = start_ready_gateway();
    signal(&gw.child, "HUP");
    let exit = wait_for_exit(&mut gw.child, Duration::from_secs(2));
    assert!(exit.is_none(), "SIGHUP ended the gateway ({exit:?})");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(gw.dir.join("gateway.log")).unwrap();
        if log.contains("configuration reloaded") && log.contains("sighup") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload logged: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
