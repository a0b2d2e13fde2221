//! Issue 19: the gateway terminates TLS itself (`[server.tls]`) — HTTP/2 and HTTP/1.1 by
//! ALPN, certificates chosen by SNI, renewed certificate files served without a restart —
//! driven by curl over real sockets with a CA minted per test, on both engines. And the
//! scheme the backend is told (`X-Forwarded-Proto`) is the connection's, never the one a
//! request target claims.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_tests::host::Gateway;
use portcullis_tests::net::{Backend, raw_request, request};
use portcullis_tests::tls::{Leaf, TestCa, curl, served_cn};
use portcullis_tests::{INTERNAL_ISSUER_TABLE, internal_key_file, on_every_engine};

fn config(backend: &str, tls: &str) -> String {
    format!(
        r#"{INTERNAL_ISSUER_TABLE}
[region.us]
jurisdiction = "US"
backends = ["{backend}"]

[residency]
missing = "us"
anonymous = "us"

[[route]]
path = "/"
auth = "public"

{tls}

[audit]
subject_key_file = "audit.key"
"#
    )
}

const TWO_CERTS: &str = r#"
[server.tls]
watch = "100ms"
certificates = [
  { cert = "www.pem", key = "www.key" },
  { cert = "api.pem", key = "api.key" },
]
"#;

fn start(backend: &str, tls: &str, engine: &str, files: Vec<(String, Vec<u8>)>) -> Gateway {
    let mut files = files;
    files.push(internal_key_file());
    portcullis_tests::host::start_engine_with(&config(backend, tls), engine, &files)
}

fn leaf_files(name: &str, leaf: &Leaf) -> [(String, Vec<u8>); 2] {
    [
        (format!("{name}.pem"), leaf.cert.clone().into_bytes()),
        (format!("{name}.key"), leaf.key.clone().into_bytes()),
    ]
}

/// curl's status and HTTP version (`-w`), and the certificate's common name.
fn fetch(ca: &Path, gw: &Gateway, host: &str, extra: &[&str]) -> (String, Option<String>) {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code} %{http_version}"];
    args.extend_from_slice(extra);
    let out = curl(ca, host, gw.addr.port(), "/hello", &args);
    assert!(
        out.status.success(),
        "curl {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        served_cn(&out),
    )
}

fn tls_serves_http2_and_http1_and_picks_certificates_by_sni(engine: &str) {
    let backend = Backend::start("tls");
    let ca = TestCa::new("Portcullis test CA");
    let www = ca.leaf("www", &["www.test", "*.apps.test"]);
    let api = ca.leaf("api", &["api.test"]);
    let mut files = Vec::new();
    files.extend(leaf_files("www", &www));
    files.extend(leaf_files("api", &api));
    files.push(("ca.pem".into(), ca.pem().into_bytes()));
    let gw = start(&backend.server.url(), TWO_CERTS, engine, files);
    let ca_file = gw.dir.join("ca.pem");

    // ALPN: curl offers h2 over TLS and gets it; HTTP/1.1 when it offers only that.
    assert_eq!(
        fetch(&ca_file, &gw, "www.test", &[]),
        ("200 2".into(), Some("www".into()))
    );
    let seen = backend.last.lock().unwrap().clone().unwrap();
    let header = |n: &str| {
        seen.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        header("x-forwarded-host"),
        Some(format!("www.test:{}", gw.addr.port()))
    );
    assert_eq!(
        fetch(&ca_file, &gw, "www.test", &["--http1.1"]),
        ("200 1.1".into(), Some("www".into()))
    );
    assert_eq!(
        backend
            .last
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .headers
            .iter()
            .find(|(k, _)| k == "x-forwarded-proto")
            .map(|(_, v)| v.as_str()),
        Some("https"),
        "HTTP/1.1 over TLS is https too"
    );

    // SNI: each name gets the certificate that covers it (curl verifies the name against
    // the CA, so a wrong choice fails the handshake), wildcards included.
    assert_eq!(
        fetch(&ca_file, &gw, "api.test", &[]),
        ("200 2".into(), Some("api".into()))
    );
    assert_eq!(
        fetch(&ca_file, &gw, "shop.apps.test", &[]),
        ("200 2".into(), Some("www".into()))
    );
    // A name no certificate covers gets the first one (which curl then refuses).
    let other = curl(&ca_file, "other.test", gw.addr.port(), "/hello", &[]);
    assert!(!other.status.success());
    assert_eq!(served_cn(&other).as_deref(), Some("www"));

    // Plain HTTP on the TLS port is not served.
    assert!(
        !matches!(
            request(gw.addr, "GET", "/hello", &[], b""),
            Ok(r) if r.status == 200
        ),
        "a cleartext request on the TLS listener must not be served"
    );
}

fn reloads(gw: &Gateway, result: &str) -> u64 {
    let metrics = request(gw.admin, "GET", "/metrics", &[], b"").unwrap();
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let line = format!("portcullis_tls_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

fn a_renewed_certificate_is_served_without_restart_and_a_broken_one_keeps_the_last(engine: &str) {
    let backend = Backend::start("tls");
    let ca = TestCa::new("Portcullis test CA");
    let v1 = ca.leaf("www v1", &["www.test"]);
    let mut files = Vec::new();
    files.extend(leaf_files("www", &v1));
    files.extend(leaf_files("api", &ca.leaf("api", &["api.test"])));
    files.push(("ca.pem".into(), ca.pem().into_bytes()));
    let gw = start(&backend.server.url(), TWO_CERTS, engine, files);
    let ca_file = gw.dir.join("ca.pem");
    assert_eq!(
        fetch(&ca_file, &gw, "www.test", &[]).1.as_deref(),
        Some("www v1")
    );

    // The renewal: key and certificate replaced (a watch tick may fall between the two
    // writes; that pair does not load and the next tick loads the completed one).
    let v2 = ca.leaf("www v2", &["www.test"]);
    let loaded_before = reloads(&gw, "loaded");
    std::fs::write(gw.dir.join("www.key"), &v2.key).unwrap();
    std::fs::write(gw.dir.join("www.pem"), &v2.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, cn) = fetch(&ca_file, &gw, "www.test", &[]);
        assert_eq!(status, "200 2");
        if cn.as_deref() == Some("www v2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reloads(&gw, "loaded") > loaded_before);

    // A broken file: refused (counted, logged with its entry), the last good one stays.
    let refused_before = reloads(&gw, "refused");
    std::fs::write(gw.dir.join("www.pem"), "not a certificate").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&gw, "refused") == refused_before {
        assert!(
            Instant::now() < deadline,
            "the broken file was never noticed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        fetch(&ca_file, &gw, "www.test", &[]),
        ("200 2".into(), Some("www v2".into()))
    );
    assert_eq!(
        fetch(&ca_file, &gw, "api.test", &[]),
        ("200 2".into(), Some("api".into()))
    );
    let log = std::fs::read_to_string(gw.dir.join("gateway.log")).unwrap();
    assert!(
        log.contains("server.tls.certificates[0]") && log.contains("previous certificates"),
        "{log}"
    );
}

fn a_cleartext_target_claiming_https_is_forwarded_as_http(engine: &str) {
    let backend = Backend::start("plain");
    let gw = start(&backend.server.url(), "", engine, Vec::new());
    let r = raw_request(
        gw.addr,
        b"GET https://gw.test/hello HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.last.lock().unwrap().clone().unwrap();
    let proto = seen
        .headers
        .iter()
        .find(|(k, _)| k == "x-forwarded-proto")
        .map(|(_, v)| v.clone());
    assert_eq!(proto.as_deref(), Some("http"), "{:?}", seen.headers);
}

/// A configuration reload changes the certificate list of the running listener: a name
/// added gets its certificate on the next handshake, with no restart; turning HTTP/2 off
/// needs a restart and is refused.
fn a_reload_changes_the_certificate_list(engine: &str) {
    let backend = Backend::start("tls");
    let ca = TestCa::new("Portcullis test CA");
    let mut files = Vec::new();
    files.extend(leaf_files("www", &ca.leaf("www", &["www.test"])));
    files.extend(leaf_files("api", &ca.leaf("api", &["api.test"])));
    files.push(("ca.pem".into(), ca.pem().into_bytes()));
    let one = "[server.tls]\nwatch = \"100ms\"\ncertificates = [{ cert = \"www.pem\", key = \"www.key\" }]\n";
    let gw = start(&backend.server.url(), one, engine, files);
    let ca_file = gw.dir.join("ca.pem");
    let before = curl(&ca_file, "api.test", gw.addr.port(), "/hello", &[]);
    assert!(!before.status.success(), "api.test has no certificate yet");
    assert_eq!(served_cn(&before).as_deref(), Some("www"));

    std::fs::write(
        gw.dir.join("gateway.toml"),
        config(&backend.server.url(), TWO_CERTS),
    )
    .unwrap();
    let r = request(gw.admin, "POST", "/reload", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        fetch(&ca_file, &gw, "api.test", &[]),
        ("200 2".into(), Some("api".into()))
    );
    assert_eq!(
        fetch(&ca_file, &gw, "www.test", &[]).1.as_deref(),
        Some("www")
    );

    let no_h2 = TWO_CERTS.replace("watch = \"100ms\"", "watch = \"100ms\"\nhttp2 = false");
    std::fs::write(
        gw.dir.join("gateway.toml"),
        config(&backend.server.url(), &no_h2),
    )
    .unwrap();
    let r = request(gw.admin, "POST", "/reload", &[], b"").unwrap();
    assert_eq!(r.status, 422);
    assert!(String::from_utf8_lossy(&r.body).contains("restart"));
    assert_eq!(fetch(&ca_file, &gw, "api.test", &[]).0, "200 2");
}

on_every_engine!(
    a_reload_changes_the_certificate_list,
    grpc_passes_through_with_its_trailers,
    tls_serves_http2_and_http1_and_picks_certificates_by_sni,
    a_renewed_certificate_is_served_without_restart_and_a_broken_one_keeps_the_last,
    a_cleartext_target_claiming_https_is_forwarded_as_http,
);

/// A key that is not the certificate's, or a missing file, stops the gateway at startup
/// (and `portcullis check`) with the entry named.
#[test]
fn certificates_that_do_not_load_are_startup_errors() {
    let ca = TestCa::new("Portcullis test CA");
    let a = ca.leaf("a", &["a.test"]);
    let b = ca.leaf("b", &["b.test"]);
    let dir = std::env::temp_dir().join(format!("portcullis-tls-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hs.key"),
        portcullis_tests::b64(&portcullis_tests::INTERNAL_SECRET),
    )
    .unwrap();
    std::fs::write(
        dir.join("audit.key"),
        portcullis_tests::b64(&portcullis_tests::AUDIT_KEY),
    )
    .unwrap();
    std::fs::write(dir.join("a.pem"), &a.cert).unwrap();
    std::fs::write(dir.join("a.key"), &a.key).unwrap();
    std::fs::write(dir.join("b.key"), &b.key).unwrap();
    let check = |tls: &str| {
        let cfg = dir.join("gateway.toml");
        std::fs::write(&cfg, config("http://127.0.0.1:9", tls)).unwrap();
        let out = std::process::Command::new(portcullis_tests::host::binary())
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let good = "[server.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]";
    let (ok, text) = check(good);
    assert!(ok, "{text}");
    assert!(
        text.contains("tls: 1 certificate(s), HTTP/2 offered"),
        "{text}"
    );
    let (ok, text) = check(
        "[server.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = \"a.pem\", key = \"b.key\" }]",
    );
    assert!(!ok);
    assert!(
        text.contains("server.tls.certificates[1]") && text.contains("does not fit"),
        "{text}"
    );
    let (ok, text) =
        check("[server.tls]\ncertificates = [{ cert = \"missing.pem\", key = \"a.key\" }]");
    assert!(!ok);
    assert!(
        text.contains("server.tls.certificates[0]") && text.contains("missing.pem"),
        "{text}"
    );
    let (ok, text) = check("[server.tls]\nwatch = \"5s\"");
    assert!(!ok);
    assert!(
        text.contains("server.tls.certificates") && text.contains("required"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Chromium over TLS: the page comes over HTTP/2 from a secure context, with the test CA's
/// certificate trusted by its key (`--ignore-certificate-errors-spki-list`) and the name
/// mapped to loopback.
#[test]
fn chromium_gets_the_page_over_http2() {
    let backend = Backend::start("tls");
    let ca = TestCa::new("Portcullis test CA");
    let www = ca.leaf("www", &["www.test"]);
    let mut files = Vec::new();
    files.extend(leaf_files("www", &www));
    files.extend(leaf_files("api", &ca.leaf("api", &["api.test"])));
    let gw = start(&backend.server.url(), TWO_CERTS, "native", files);
    let spki = www.pin.strip_prefix("sha256/").unwrap();
    let browser = portcullis_tests::browser::Browser::start_with_args(&[
        &format!("--ignore-certificate-errors-spki-list={spki}"),
        "--host-resolver-rules=MAP www.test 127.0.0.1",
    ]);
    browser.goto(&format!("https://www.test:{}/hello", gw.addr.port()));
    assert!(browser.text().contains("\"backend\""), "{}", browser.text());
    let seen = browser.execute(
        "const nav = performance.getEntriesByType('navigation')[0];\
         return [nav.nextHopProtocol, window.isSecureContext, location.protocol];",
        vec![],
    );
    assert_eq!(seen, serde_json::json!(["h2", true, "https:"]));
    let last = backend.last.lock().unwrap().clone().unwrap();
    assert!(
        last.headers
            .iter()
            .any(|(k, v)| k == "x-forwarded-proto" && v == "https"),
        "{:?}",
        last.headers
    );
}

/// A real gRPC call (grpcio client and server) through the gateway: HTTP/2 over TLS in,
/// HTTP/2 by ALPN to a TLS backend of a region that attests it, the token checked, the
/// identity header injected (and the client's own dropped), and the trailers — the status
/// and trailing metadata — relayed back, for a success and for a trailers-only error.
fn grpc_passes_through_with_its_trailers(engine: &str) {
    let ca = TestCa::new("Portcullis test CA");
    let dir = std::env::temp_dir().join(format!("portcullis-grpc-{engine}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let backend_leaf = ca.leaf("grpc", &["127.0.0.1"]);
    std::fs::write(dir.join("backend.pem"), &backend_leaf.cert).unwrap();
    std::fs::write(dir.join("backend.key"), &backend_leaf.key).unwrap();
    let script = portcullis_tests::repo_root().join("tests/grpc/echo.py");
    let mut server = std::process::Command::new("python3")
        .arg(&script)
        .arg("serve")
        .arg(dir.join("backend.pem"))
        .arg(dir.join("backend.key"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with grpcio (.ci/run installs it)");
    let port: u16 = {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().parse().expect("the gRPC server's port")
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(server);

    let www = ca.leaf("www", &["www.test"]);
    let mut files = Vec::new();
    files.extend(leaf_files("www", &www));
    files.push(("ca.pem".into(), ca.pem().into_bytes()));
    files.push(internal_key_file());
    let config = format!(
        r#"{INTERNAL_ISSUER_TABLE}
[region.eu]
jurisdiction = "EU"
backends = ["https://127.0.0.1:{port}"]

[region.eu.tls]
ca = "ca.pem"

[residency]
missing = "eu"
anonymous = "eu"

[[route]]
path = "/portcullis.test.Echo"
auth = "required"

[identity]
strip = ["x-user-*"]
headers = {{ "x-user-id" = "sub" }}

[server.tls]
certificates = [{{ cert = "www.pem", key = "www.key" }}]

[audit]
subject_key_file = "audit.key"
"#
    );
    let gw = portcullis_tests::host::start_engine_with(&config, engine, &files);
    let call = |message: &str, token: Option<&str>| -> serde_json::Value {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .arg("call")
            .arg(format!("127.0.0.1:{}", gw.addr.port()))
            .arg(gw.dir.join("ca.pem"))
            .arg("www.test")
            .arg(message);
        if let Some(t) = token {
            cmd.arg(t);
        }
        let out = cmd.output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let token = portcullis_tests::internal_token(serde_json::json!({}));
    let ok = call("order 7", Some(&token));
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["reply"], "echo:order 7");
    assert_eq!(ok["trailing"]["x-echo-user"], "user-1", "{ok}");
    let failed = call("fail", Some(&token));
    assert_eq!(failed["code"], "NOT_FOUND", "{failed}");
    assert_eq!(failed["details"], "no such order");
    // A trailers-only answer stays one on both engines (the host relays the backend's
    // response for either).
    assert_eq!(failed["trailing"]["x-echo-user"], "user-1", "{failed}");
    // Without a token the gateway refuses (HTTP 401, which gRPC reads as UNAUTHENTICATED).
    let refused = call("order 7", None);
    assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}
