//! Minimal real HTTP/1.1 servers and a client over std sockets, for end-to-end tests:
//! a key-set server that can rotate keys and go down, echo backends that count requests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// A parsed request.
#[derive(Clone, Debug)]
pub struct Req {
    /// Method.
    pub method: String,
    /// Target.
    pub path: String,
    /// Headers, lowercase names, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A response.
#[derive(Clone, Debug)]
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Headers, lowercase names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A JSON response.
    pub fn json(status: u16, v: &Value) -> Self {
        Resp {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    Some((first.trim_end().to_owned(), headers))
}

fn read_body(reader: &mut BufReader<TcpStream>, headers: &[(String, String)]) -> Vec<u8> {
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    body
}

/// A server running `handler` on its own threads until dropped.
pub struct Server {
    /// Its address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Starts a server on a free loopback port.
    pub fn start(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").expect("bind"), handler)
    }

    /// Starts a server on `listener`.
    pub fn start_on(
        listener: TcpListener,
        handler: impl Fn(&Req) -> Resp + Send + Sync + 'static,
    ) -> Self {
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let flag = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut stream = stream;
                    while let Some((line, headers)) = read_head(&mut reader) {
                        let mut parts = line.split(' ');
                        let method = parts.next().unwrap_or_default().to_owned();
                        let path = parts.next().unwrap_or_default().to_owned();
                        let body = read_body(&mut reader, &headers);
                        let close = headers
                            .iter()
                            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
                        let resp = handler(&Req {
                            method,
                            path,
                            headers,
                            body,
                        });
                        let mut out = format!(
                            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
                            resp.status,
                            resp.body.len()
                        );
                        for (k, v) in &resp.headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        let mut wire = out.into_bytes();
                        wire.extend_from_slice(&resp.body);
                        if stream.write_all(&wire).is_err() || close {
                            break;
                        }
                    }
                });
            }
        });
        Server { addr, stop }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

/// Sends one request (`Connection: close`) and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut wire = head.into_bytes();
    wire.extend_from_slice(body);
    raw_request(addr, &wire)
}

/// Sends `wire` exactly as given (request line, headers, blank line, body: the caller
/// writes every byte, `Connection: close` included) and reads the response.
pub fn raw_request(addr: SocketAddr, wire: &[u8]) -> std::io::Result<Resp> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _ = stream.set_nodelay(true);
    stream.write_all(wire)?;
    let mut reader = BufReader::new(stream);
    let (status_line, headers) =
        read_head(&mut reader).ok_or_else(|| std::io::Error::other("no response"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if headers.iter().any(|(k, _)| k == "content-length") {
        read_body(&mut reader, &headers)
    } else {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        dechunk(&all, &headers)
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(raw: &[u8], headers: &[(String, String)]) -> Vec<u8> {
    if !headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        return raw.to_vec();
    }
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..pos]).unwrap_or("0").trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
        rest = &rest[(start + size + 2).min(rest.len())..];
    }
    out
}

/// A key-set server: discovery and JWKS, switchable documents and outages, fetch counts.
pub struct KeyServer {
    /// The server.
    pub server: Server,
    /// The JWKS it serves.
    pub jwks: Arc<Mutex<Value>>,
    /// When true it answers 503.
    pub down: Arc<AtomicBool>,
    /// JWKS fetches so far.
    pub jwks_fetches: Arc<AtomicUsize>,
    /// Requests refused (503) while `down`.
    pub refused: Arc<AtomicUsize>,
    /// `Cache-Control` max-age it sends.
    pub max_age: Arc<AtomicUsize>,
    /// Milliseconds it waits before answering a JWKS request (0: at once).
    pub jwks_delay_ms: Arc<AtomicUsize>,
}

impl KeyServer {
    /// Serves `jwks` (and discovery naming `issuer`, if given).
    pub fn start(jwks: Value) -> Self {
        let jwks = Arc::new(Mutex::new(jwks));
        let down = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let max_age = Arc::new(AtomicUsize::new(300));
        let refused = Arc::new(AtomicUsize::new(0));
        let jwks_delay_ms = Arc::new(AtomicUsize::new(0));
        let (j, d, f, m) = (jwks.clone(), down.clone(), fetches.clone(), max_age.clone());
        let (r, delay) = (refused.clone(), jwks_delay_ms.clone());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = Server::start_on(listener, move |req| {
            if d.load(Ordering::SeqCst) {
                r.fetch_add(1, Ordering::SeqCst);
                return Resp::json(503, &json!({"error": "down"}));
            }
            match req.path.as_str() {
                "/jwks.json" => {
                    f.fetch_add(1, Ordering::SeqCst);
                    let wait = delay.load(Ordering::SeqCst);
                    if wait > 0 {
                        std::thread::sleep(Duration::from_millis(wait as u64));
                    }
                    let mut r = Resp::json(200, &j.lock().expect("jwks").clone());
                    r.headers.push((
                        "cache-control".into(),
                        format!("max-age={}", m.load(Ordering::SeqCst)),
                    ));
                    r
                }
                "/.well-known/openid-configuration" => Resp::json(
                    200,
                    &json!({
                        "issuer": base,
                        "jwks_uri": format!("{base}/jwks.json"),
                        // Named, not served: enough for a gateway to start a browser login.
                        "authorization_endpoint": format!("{base}/authorize"),
                        "token_endpoint": format!("{base}/token"),
                    }),
                ),
                _ => Resp::json(404, &json!({})),
            }
        });
        KeyServer {
            server,
            jwks,
            down,
            jwks_fetches: fetches,
            refused,
            max_age,
            jwks_delay_ms,
        }
    }
}

/// An echo backend that counts requests and remembers the last one.
pub struct Backend {
    /// The server.
    pub server: Server,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
    /// The last request.
    pub last: Arc<Mutex<Option<Req>>>,
}

impl Backend {
    /// Starts an echo backend named `name`; paths under `/slow` wait 1.5 s.
    pub fn start(name: &'static str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let (h, l) = (hits.clone(), last.clone());
        let server = Server::start(move |req| {
            h.fetch_add(1, Ordering::SeqCst);
            *l.lock().expect("last") = Some(req.clone());
            if req.path.contains("/slow") {
                std::thread::sleep(Duration::from_millis(1500));
            }
            let headers: BTreeMap<&str, &str> = req
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Resp::json(
                200,
                &json!({"backend": name, "path": req.path, "headers": headers, "body_len": req.body.len()}),
            )
        });
        Backend { server, hits, last }
    }
}

/// A free loopback port for a server started later on it (bound and released), never one
/// this test process handed out before, and below the kernel's ephemeral range: a port
/// from `bind(0)` (any server a test starts on port 0, workerd, node, Chromium) is always
/// taken from that range, so none of them can be handed this port between its release and
/// the server that binds it. (Both collisions happened: the wrong server answering, and a
/// gateway failing with "address in use".)
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let (low, high) = fixed_port_range();
    let span = u32::from(high - low) + 1;
    // A start that differs between processes and calls; then every port of the range once.
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port =
            low + u16::try_from((seed.wrapping_add(i.wrapping_mul(7919))) % span).unwrap_or(0);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    0
}

/// Ports for servers started on a chosen port: the 12,000 below the kernel's ephemeral
/// range (`/proc/sys/net/ipv4/ip_local_port_range`; 20000–32767 when unreadable).
fn fixed_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > 2048)
        .unwrap_or(32768);
    let high = ephemeral_low - 1;
    (high.saturating_sub(12_000).max(1024), high)
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux `/proc`): a
/// server started on a fixed port is only ready when it, not another process that took the
/// port in between, accepts connections there.
pub fn listening_pid_owns(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    // Lines: `sl local_address rem_address st … uid timeout inode`; 0A is LISTEN.
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = *fields.get(1)?;
            (wanted.iter().any(|w| w == local) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9).map(|i| format!("socket:[{i}]")))
                .flatten()
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_for_later_servers_are_never_repeated_nor_ephemeral() {
        let (low, high) = fixed_port_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|p| (low..=high).contains(p)), "{ports:?}");
        // A server binding port 0 gets an ephemeral port: never one of these.
        let ephemeral = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(ephemeral > high, "{ephemeral} is in {low}..={high}");
        // Each was free when handed out.
        assert!(TcpListener::bind(("127.0.0.1", ports[0])).is_ok());
    }
}
