//! Issue 15 items 2 and 11: the listener bounds what clients may hold (header-read timeout,
//! idle keep-alive timeout, a connection cap, back-off when descriptors run out) and backends
//! get configurable timeouts with 504 `backend_timeout` — on real sockets against the real
//! binary, both engines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use portcullis_tests::host::reason;
use portcullis_tests::net::{Backend, Resp, Server, request};

fn config(backend: &str, extra: &str) -> String {
    format!(
        r#"
[[issuer]]
name = "main"
issuer = "https://idp.test"
hmac_secret_file = "hs.key"
audiences = ["api://shop"]
algorithms = ["HS256"]

[region.us]
jurisdiction = "US"
backends = ["{backend}"]

[residency]
missing = "us"
anonymous = "us"

[[route]]
path = "/"
auth = "public"

{extra}

[audit]
subject_key_file = "audit.key"
"#
    )
}

fn start(backend: &str, extra: &str, engine: &str) -> portcullis_tests::host::Gateway {
    portcullis_tests::host::start_engine_with(
        &config(backend, extra),
        engine,
        &[(
            "hs.key".into(),
            portcullis_tests::b64(&portcullis_tests::INTERNAL_SECRET).into_bytes(),
        )],
    )
}

/// Reads until the peer closes; the time it took, or `None` if still open at `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let backend = Backend::start("us");
    for engine in ["native", "component"] {
        let gw = start(
            &backend.server.url(),
            "[server]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
            engine,
        );
        // A client that never finishes its headers (slow-loris).
        let mut slow = TcpStream::connect(gw.addr).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: gw.test\r\nx-a: ")
            .unwrap();
        let took = closed_within(&mut slow, Duration::from_secs(10));
        assert!(
            took.is_some(),
            "{engine}: a half-sent request holds its connection"
        );

        // A connection that never sends a byte.
        let mut silent = TcpStream::connect(gw.addr).unwrap();
        assert!(
            closed_within(&mut silent, Duration::from_secs(10)).is_some(),
            "{engine}: a silent connection stays open"
        );

        // A keep-alive connection after one request: answered, then closed when idle.
        let mut alive = TcpStream::connect(gw.addr).unwrap();
        alive
            .write_all(b"GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 12];
        alive
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        alive.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200", "{engine}");
        assert!(
            closed_within(&mut alive, Duration::from_secs(10)).is_some(),
            "{engine}: an idle keep-alive connection stays open"
        );
    }
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    let backend = Backend::start("us");
    let gw = start(
        &backend.server.url(),
        "[server]\nmax_connections = 2\nheader_timeout = \"30s\"\n",
        "native",
    );
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(gw.addr).unwrap();
    third
        .write_all(b"GET /x HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 12];
    assert!(
        third.read_exact(&mut buf).is_err(),
        "a third connection was served while two were held"
    );
    drop(held);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    third.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}

/// CPU seconds (user + system) the process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn exhausted_descriptors_do_not_spin_the_accept_loop() {
    let backend = Backend::start("us");
    let gw = start(&backend.server.url(), "", "native");
    let pid = gw.child.id();
    // Leave the gateway a handful of free descriptors.
    leave_free_descriptors(pid, 4);
    let conns: Vec<TcpStream> = (0..32)
        .filter_map(|_| TcpStream::connect(gw.addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid) - before;
    // Spinning on EMFILE burns a whole core (≈ 2 s here); backing off uses next to nothing.
    assert!(
        used < 0.5,
        "the gateway used {used:.2} s of CPU in 2 s while out of descriptors"
    );
    drop(conns);
    // Once descriptors are free again, it serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        if let Ok(r) = request(gw.addr, "GET", "/x", &[], b"")
            && r.status == 200
        {
            break r;
        }
        assert!(Instant::now() < deadline, "the gateway did not recover");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(r.status, 200);
}

/// Lowers the open-files limit of process `pid` so that exactly `n` descriptors are free:
/// the limit bounds descriptor numbers, so it is set to the `n + 1`-th lowest unused one
/// (a process may hold high-numbered descriptors, such as an inherited jobserver pipe).
fn leave_free_descriptors(pid: u32, n: usize) {
    let used: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let limit = (0..).filter(|fd| !used.contains(fd)).nth(n).unwrap();
    limit_descriptors(pid, limit);
}

/// Sets the (soft) open-files limit of process `pid` to `limit`.
fn limit_descriptors(pid: u32, limit: usize) {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// A backend the gateway could not connect to because the gateway itself was out of
/// descriptors did nothing wrong: it is not ejected (passive health would otherwise keep
/// refusing its requests for 10 s after the shortage ended).
#[test]
fn the_gateways_own_descriptor_shortage_does_not_eject_the_backend() {
    for engine in ["native", "component"] {
        let backend = Backend::start("us");
        let gw = start(&backend.server.url(), "", engine);
        let pid = gw.child.id();
        // Let the start-up probe's connection close, then leave one descriptor: the next
        // request's client connection is accepted, its backend connection cannot be opened.
        std::thread::sleep(Duration::from_millis(500));
        leave_free_descriptors(pid, 1);
        let r = request(gw.addr, "GET", "/x", &[], b"").unwrap();
        assert_eq!(
            (r.status, reason(&r).as_str()),
            (503, "backend_unavailable"),
            "{engine}"
        );
        assert_eq!(
            backend.hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{engine}"
        );
        limit_descriptors(pid, 1024);
        let r = request(gw.addr, "GET", "/x", &[], b"").unwrap();
        assert_eq!(
            r.status,
            200,
            "{engine}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn a_slow_backend_gets_504_backend_timeout_on_both_engines() {
    let slow = Server::start(|_| {
        std::thread::sleep(Duration::from_millis(3000));
        Resp::json(200, &serde_json::json!({}))
    });
    for engine in ["native", "component"] {
        let gw = start(
            &slow.url(),
            "[timeouts]\nresponse = \"1s\"\ntotal = \"5s\"\n",
            engine,
        );
        let started = Instant::now();
        let r = request(gw.addr, "GET", "/x", &[], b"").unwrap();
        assert_eq!(
            r.status,
            504,
            "{engine}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(reason(&r), "backend_timeout", "{engine}");
        assert!(started.elapsed() < Duration::from_millis(2900), "{engine}");
    }
    // A closed port is unavailable (503), not a timeout.
    let closed = format!("http://127.0.0.1:{}", portcullis_tests::net::free_port());
    let gw = start(&closed, "", "native");
    let r = request(gw.addr, "GET", "/x", &[], b"").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(reason(&r), "backend_unavailable");
}

#[test]
fn bad_server_and_timeout_settings_are_startup_errors() {
    let files = portcullis_core::MapFiles::default()
        .with(
            "hs.key",
            portcullis_tests::b64(&portcullis_tests::INTERNAL_SECRET),
        )
        .with(
            "audit.key",
            portcullis_tests::b64(&portcullis_tests::AUDIT_KEY),
        );
    for (extra, needle) in [
        (
            "[server]\nheader_timeout = \"0s\"\n",
            "server.header_timeout",
        ),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[timeouts]\nresponse = \"30s\"\ntotal = \"10s\"\n",
            "timeouts.total",
        ),
        ("[paths]\nsemicolons = \"maybe\"\n", "paths.semicolons"),
        ("[server]\nbogus = 1\n", "bogus"),
    ] {
        let text = config("http://127.0.0.1:9", extra);
        let err = portcullis_core::config::load(&text, "t.toml", &files).unwrap_err();
        assert!(err.to_string().contains(needle), "{extra}: {err}");
    }
}
