//! A real `redis-server` as a child process on a free 127.0.0.1 port, stoppable and
//! restartable on the same port (to test a shared store that goes away and comes back);
//! a Redis Cluster of such servers; a primary, its replica and three sentinels.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_port;

/// A running (or stopped) Redis server.
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    /// Arguments beyond the port and the no-persistence ones, kept for restarts.
    extra: Vec<String>,
}

impl Redis {
    /// Starts `redis-server` (Debian package `redis-server`) without persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts `redis-server` with `extra` arguments (kept for [`Redis::restart`]).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut r = Redis {
            port: free_port(),
            child: None,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        r.restart();
        r
    }

    /// A handle to talk to a server someone else runs on `port` (nothing is started or
    /// stopped through it).
    pub fn at(port: u16) -> Self {
        Redis {
            port,
            child: None,
            extra: Vec::new(),
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to connected clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty) and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): apt-get install redis-server")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.command("PING").as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value at `key` (binary-safe `GET`); `None` when absent or unreachable.
    pub fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        let reply = self.send(&[b"GET", key.as_bytes()])?;
        let rest = reply.strip_prefix(b"$")?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let len: usize = std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()?;
        rest.get(end + 2..end + 2 + len).map(<[u8]>::to_vec)
    }

    /// Sets `key` to `value` (binary-safe `SET`); true when Redis said OK.
    pub fn set_bytes(&self, key: &str, value: &[u8]) -> bool {
        self.send(&[b"SET", key.as_bytes(), value])
            .is_some_and(|r| r.starts_with(b"+OK"))
    }

    /// Sends one command as RESP bulk strings; the raw reply (one read, up to 64 KiB).
    fn send(&self, args: &[&[u8]]) -> Option<Vec<u8>> {
        let mut wire = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            wire.extend_from_slice(a);
            wire.extend_from_slice(b"\r\n");
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(&wire).ok()?;
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0;
        // Read until the reply is whole (a bulk string's length is in its first line).
        loop {
            let got = s.read(buf.get_mut(n..)?).ok()?;
            if got == 0 {
                break;
            }
            n += got;
            let so_far = buf.get(..n)?;
            let whole = match so_far.strip_prefix(b"$") {
                Some(rest) => rest
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .is_some_and(|end| {
                        std::str::from_utf8(rest.get(..end).unwrap_or_default())
                            .ok()
                            .and_then(|l| l.parse::<i64>().ok())
                            .is_some_and(|len| len < 0 || rest.len() >= end + 2 + len as usize + 2)
                    }),
                None => so_far.ends_with(b"\r\n"),
            };
            if whole {
                break;
            }
        }
        buf.truncate(n);
        Some(buf)
    }

    /// Every key (`KEYS *`).
    pub fn keys(&self) -> Vec<String> {
        let Some(reply) = self.send(&[b"KEYS", b"*"]) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&reply).into_owned();
        // `*N`, then `$len` and the key for each.
        text.split("\r\n")
            .skip(1)
            .collect::<Vec<_>>()
            .chunks(2)
            .filter_map(|c| match c {
                [len, key] if len.starts_with('$') => Some((*key).to_owned()),
                _ => None,
            })
            .collect()
    }

    /// The text of a bulk-string reply (`INFO replication`, `CLUSTER INFO`), or of an
    /// array of bulk strings joined by spaces; `None` when unreachable.
    pub fn text(&self, args: &[&str]) -> Option<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let reply = self.send(&args)?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        Some(
            text.split("\r\n")
                .filter(|l| !l.starts_with(['$', '*']))
                .collect::<Vec<_>>()
                .join(if text.starts_with('*') { " " } else { "\n" }),
        )
    }

    /// Sends one inline command; the first reply line.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(buf.get(..n)?).into_owned();
        text.lines().next().map(str::to_owned)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` that speaks only TLS (no plain port), with the certificate and key
/// given (PEM), on a free 127.0.0.1 port; stopped on drop.
pub struct TlsRedis {
    /// Its TLS port.
    pub port: u16,
    child: Child,
    dir: std::path::PathBuf,
}

impl TlsRedis {
    /// Starts it serving `cert` / `key`, issued by `ca` (all PEM).
    pub fn start(cert: &str, key: &str, ca: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("portcullis-tls-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in [("redis.pem", cert), ("redis.key", key), ("ca.pem", ca)] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("redis.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("redis.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e})"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { port, child, dir }
    }

    /// `rediss://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long the cluster and the sentinels get to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until `ok` holds, or panics naming `what`.
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + FORM_TIMEOUT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of primaries (no replicas) on free 127.0.0.1 ports, slots shared out by
/// `redis-cli --cluster create`; stopped on drop.
pub struct RedisCluster {
    /// Its primaries.
    pub nodes: Vec<Redis>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts `primaries` servers (at least 3, as `redis-cli` wants) and waits until every
    /// node says `cluster_state:ok`.
    pub fn start(primaries: usize) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let nodes: Vec<Redis> = (0..primaries)
            .map(|i| {
                let node_dir = dir.join(i.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let bus = free_port().to_string();
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                    node_dir.to_str().unwrap(),
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): apt-get install redis-tools"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_until("the cluster is ok", || {
                n.text(&["CLUSTER", "INFO"])
                    .is_some_and(|t| t.contains("cluster_state:ok"))
            });
        }
        RedisCluster { nodes, dir }
    }

    /// The seed list of the gateway's `[state] cluster`: the first node only (the gateway
    /// learns the others), as a TOML array.
    pub fn seeds(&self) -> String {
        format!(
            "[\"redis://127.0.0.1:{}\"]",
            self.nodes.first().map_or(0, |n| n.port)
        )
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary, one replica and three sentinels watching them (quorum 2, a primary is down
/// after 1 s unanswered), on free 127.0.0.1 ports; stopped on drop.
pub struct SentinelSet {
    /// The primary at the start.
    pub primary: Redis,
    /// Its replica (the primary after a failover).
    pub replica: Redis,
    /// The name the sentinels watch.
    pub service: String,
    sentinels: Vec<(u16, Child)>,
    dir: std::path::PathBuf,
}

impl SentinelSet {
    /// Starts them and waits until the replica is in sync and every sentinel knows the
    /// replica and the two other sentinels.
    pub fn start(service: &str) -> Self {
        // Replication writes an RDB file (even with `--save ""`): into a scratch directory,
        // never the working directory.
        let dir = std::env::temp_dir().join(format!(
            "portcullis-sentinel-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("primary")).unwrap();
        std::fs::create_dir_all(dir.join("replica")).unwrap();
        let in_dir = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let primary = Redis::start_with(&["--dir", &in_dir("primary")]);
        let replica = Redis::start_with(&[
            "--dir",
            &in_dir("replica"),
            "--replicaof",
            "127.0.0.1",
            &primary.port.to_string(),
        ]);
        wait_until("the replica is in sync", || {
            replica
                .text(&["INFO", "replication"])
                .is_some_and(|t| t.contains("master_link_status:up"))
        });
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {service} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {service} 1000\n\
                         sentinel failover-timeout {service} 10000\n\
                         sentinel parallel-syncs {service} 1\n",
                        dir.display(),
                        primary.port
                    ),
                )
                .unwrap();
                let child = Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel ({e})"));
                (port, child)
            })
            .collect();
        let set = SentinelSet {
            primary,
            replica,
            service: service.to_owned(),
            sentinels,
            dir,
        };
        for (port, _) in &set.sentinels {
            let ask = |args: &[&str]| Redis::at(*port).text(args).unwrap_or_default();
            wait_until(
                "every sentinel knows the replica and the other sentinels",
                || {
                    let master = ask(&["SENTINEL", "MASTER", service]);
                    master.contains("num-slaves 1") && master.contains("num-other-sentinels 2")
                },
            );
        }
        set
    }

    /// The `[state] sentinels` list, as a TOML array.
    pub fn addresses(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .map(|(port, _)| format!("\"redis://127.0.0.1:{port}\""))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// The port of the primary the first sentinel names now.
    pub fn current_primary(&self) -> Option<u16> {
        let port = self.sentinels.first()?.0;
        let answer =
            Redis::at(port).text(&["SENTINEL", "get-master-addr-by-name", &self.service])?;
        answer.split(' ').nth(1)?.parse().ok()
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
