//! WebSocket pass-through (native engine): an upgrade request is decided like any other;
//! when the decision forwards it, the backend gets the upgrade, and once it switches
//! protocols the two connections are joined byte for byte until either side closes or the
//! client's connection idles past `[server] idle_timeout`. Only `websocket` upgrades pass:
//! any other `Upgrade` (`h2c` among them, a known way to smuggle requests past a proxy's
//! checks) is dropped as a hop-by-hop field, as before.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::serve::listener::ConnectionSlot;

/// The `Upgrade` value to pass on when this is a WebSocket opening handshake (RFC 6455
/// §4.1: GET, `Connection` lists `upgrade`, `Upgrade: websocket`), else `None`.
pub fn websocket(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    if method != Method::GET {
        return None;
    }
    let connection_upgrade = portcullis_core::decision::connection_listed(headers)
        .iter()
        .any(|t| t == "upgrade");
    let mut values = headers.get_all(UPGRADE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let websocket = value
        .to_str()
        .ok()
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    (connection_upgrade && websocket).then(|| HeaderValue::from_static("websocket"))
}

/// Sets the upgrade fields on a request to the backend or a 101 response to the client
/// (the hop-by-hop rules removed them).
pub fn set_fields(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// Joins the client's and the backend's upgraded connections in a task of their own.
pub fn tunnel(client: OnUpgrade, backend: OnUpgrade, slot: Option<ConnectionSlot>) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "an upgrade did not complete");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
        let ended = match slot {
            Some(slot) => tokio::select! {
                ended = copy => ended,
                () = slot.idle() => {
                    tracing::debug!("idle WebSocket closed");
                    return;
                }
            },
            None => copy.await,
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "WebSocket ended with an error");
        }
    });
}
