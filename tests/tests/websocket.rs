//! Issue 19: WebSockets pass through the host's engines on authorized routes — the decision
//! is made on the opening handshake (a refused one never reaches the backend), the backend
//! gets the verified identity headers, then messages flow both ways; only `websocket`
//! upgrades pass (`h2c` is dropped), and a tunnel idle past `[server] idle_timeout` is
//! closed. The component engine decides in the component and the host joins the
//! connections, as the native engine does; an edge bundle cannot upgrade (wasi:http has no
//! upgrades): the handshake fails there. Real sockets, tungstenite on both ends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    // tungstenite's handshake callback returns its own (large) error response type.
    clippy::result_large_err
)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_tests::host::{Gateway, reason};
use portcullis_tests::net::request;
use portcullis_tests::{INTERNAL_ISSUER_TABLE, internal_key_file, internal_token};
use serde_json::json;
use tungstenite::Message;
use tungstenite::handshake::server::{Request, Response};

/// One request's headers (lowercase names).
type Headers = Vec<(String, String)>;

/// A WebSocket echo server and the handshake requests it accepted.
struct Echo {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Headers>>>,
}

impl Echo {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let h = handshakes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let h = h.clone();
                std::thread::spawn(move || {
                    let seen = Arc::new(Mutex::new(Vec::new()));
                    let s = seen.clone();
                    let callback = move |req: &Request, resp: Response| {
                        *s.lock().unwrap() = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                            })
                            .collect();
                        Ok(resp)
                    };
                    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
                        return;
                    };
                    h.lock().unwrap().push(seen.lock().unwrap().clone());
                    while let Ok(msg) = ws.read() {
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).is_err() {
                                break;
                            }
                        } else if msg.is_close() {
                            break;
                        }
                    }
                });
            }
        });
        Echo { addr, handshakes }
    }
}

fn start(echo: &Echo, engine: &str) -> Gateway {
    start_for(&echo.addr.to_string(), engine)
}

fn start_for(backend: &str, engine: &str) -> Gateway {
    portcullis_tests::host::start_engine_with(&config(backend), engine, &[internal_key_file()])
}

fn config(backend: &str) -> String {
    format!(
        r#"{INTERNAL_ISSUER_TABLE}
[region.eu]
jurisdiction = "EU"
backends = ["http://{backend}"]

[residency]
missing = "eu"
anonymous = "eu"

[[route]]
path = "/ws"
auth = "required"
scopes_any = ["chat"]

[identity]
strip = ["x-user-*"]
headers = {{ "x-user-id" = "sub" }}

[server]
idle_timeout = "1s"

[audit]
subject_key_file = "audit.key"
"#
    )
}

fn token(scope: &str) -> String {
    internal_token(json!({ "scope": scope }))
}

/// Opens a WebSocket to `/ws` through the gateway with `token`.
fn open(
    gw: &Gateway,
    token: Option<&str>,
) -> Result<tungstenite::WebSocket<TcpStream>, tungstenite::Error> {
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{}/ws", gw.addr))
            .unwrap();
    req.headers_mut()
        .insert("x-user-id", "admin".parse().unwrap());
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("blocking socket"),
    }
}

fn status_of(e: &tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("not an HTTP refusal: {other}"),
    }
}

#[test]
fn websockets_pass_on_authorized_routes_only() {
    pass_on_authorized_routes_only("native");
}

#[test]
fn the_component_engine_passes_websockets_as_the_native_engine_does() {
    pass_on_authorized_routes_only("component");
}

fn pass_on_authorized_routes_only(engine: &str) {
    let echo = Echo::start();
    let gw = start(&echo, engine);

    // Refused handshakes never reach the backend.
    assert_eq!(status_of(&open(&gw, None).unwrap_err()), 401);
    assert_eq!(
        status_of(&open(&gw, Some(&token("profile"))).unwrap_err()),
        403
    );
    assert!(echo.handshakes.lock().unwrap().is_empty());

    // An authorized one is joined to the backend: messages both ways.
    let mut ws = open(&gw, Some(&token("chat"))).unwrap();
    for text in ["hello", "second message"] {
        ws.send(Message::text(text)).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    let seen = echo.handshakes.lock().unwrap()[0].clone();
    let header = |n: &str| seen.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(header("x-user-id"), Some("user-1"), "{seen:?}");
    assert_eq!(header("upgrade"), Some("websocket"));
    assert!(header("sec-websocket-key").is_some());

    // Idle past `[server] idle_timeout` (1 s): the gateway closes the tunnel.
    std::thread::sleep(Duration::from_millis(2500));
    let after_idle = ws.send(Message::text("late")).and_then(|()| ws.read());
    assert!(after_idle.is_err(), "{after_idle:?}");

    // The audit record of the handshake.
    let records = portcullis_tests::host::audit_records(&gw, |r| {
        r.iter().any(|x| x["backend_status"] == 101)
    });
    assert!(
        records.iter().any(|x| x["path"] == "/ws"
            && x["backend_status"] == 101
            && x["decision"] == "forward")
    );
}

#[test]
fn only_websocket_upgrades_pass() {
    let backend = portcullis_tests::net::Backend::start("plain");
    let gw = start_for(backend.server.url().trim_start_matches("http://"), "native");
    let t = format!("Bearer {}", token("chat"));
    // An h2c upgrade on an authorized route: the backend gets a plain GET.
    let r = request(
        gw.addr,
        "GET",
        "/ws",
        &[
            ("authorization", &t),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.last.lock().unwrap().clone().unwrap();
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(
            seen.headers.iter().all(|(k, _)| k != name),
            "{name} reached the backend: {:?}",
            seen.headers
        );
    }
}

/// An edge bundle cannot upgrade (wasi:http 0.2 has no upgrades): the handshake fails, the
/// backend sees no WebSocket, and the decision still runs (401 without a token).
#[test]
fn a_bundle_refuses_to_tunnel() {
    let echo = Echo::start();
    let (gw, _) = portcullis_tests::host::start_bundle(
        &config(&echo.addr.to_string()),
        &[internal_key_file()],
    );
    let refused = open(&gw, Some(&token("chat"))).unwrap_err();
    let status = status_of(&refused);
    assert_ne!(status, 101);
    assert!(echo.handshakes.lock().unwrap().is_empty());
    let r = request(gw.addr, "GET", "/ws", &[("upgrade", "websocket")], b"").unwrap();
    assert_eq!(
        (r.status, reason(&r)),
        (401, "authentication_required".into())
    );
}
