//! A real `redis-server` as a child process on a free 127.0.0.1 port, stoppable and
//! restartable on the same port (to test a shared store that goes away and comes back).

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
}

impl Redis {
    /// Starts `redis-server` (Debian package `redis-server`) without persistence.
    pub fn start() -> Self {
        let mut r = Redis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
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
