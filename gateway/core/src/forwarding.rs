//! The forwarding headers a backend receives, one rule for every runtime: the client's own
//! `Forwarded` / `X-Forwarded-*` (and the URL-override headers some frameworks obey) never
//! pass unless its peer is a trusted proxy, and the gateway states what it saw — the client
//! address chain, the canonical authority it routed on, and the scheme.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::canonical::Authority;
use crate::config::ClientConfig;

/// Client-supplied headers that describe the request's origin or override its URL at a
/// backend (`X-Original-URL` / `X-Rewrite-URL` re-route Symfony, Zend and IIS
/// applications): always removed; the gateway sets its own forwarding headers instead.
pub const REMOVED: [&str; 11] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
];

/// What the gateway knows about the hop it received the request on.
#[derive(Clone, Copy, Debug)]
pub struct Hop<'a> {
    /// The connecting peer, when the adapter knows it.
    pub peer: Option<IpAddr>,
    /// The canonical authority the request was routed on.
    pub authority: &'a Authority,
    /// The scheme of this hop (`http` for origin-form requests).
    pub scheme: &'a str,
}

/// The forwarding headers to remove from and set on the backend request.
///
/// - `X-Forwarded-For`: the peer's address, after the client's list only when the peer
///   is a trusted proxy (`[client] trusted_proxies`); absent when the peer is unknown.
/// - `X-Forwarded-Host`: the canonical authority (`host[:port]`) routing used.
/// - `X-Forwarded-Proto`: a trusted proxy's single `X-Forwarded-Proto` value (`http` or
///   `https`), else this hop's scheme.
/// - `Forwarded` (RFC 7239): the same facts as one element, after a trusted proxy's.
pub fn headers(
    cfg: &ClientConfig,
    hop: &Hop<'_>,
    client: &HeaderMap,
) -> (Vec<HeaderName>, Vec<(HeaderName, HeaderValue)>) {
    let remove: Vec<HeaderName> = REMOVED
        .iter()
        .map(|n| HeaderName::from_static(n))
        .filter(|n| client.contains_key(n))
        .collect();
    let peer = hop.peer.map(crate::client::canonical);
    let trusted = peer.is_some_and(|ip| cfg.trusted_proxies.iter().any(|n| n.contains(ip)));
    let prior = |name: &str| -> Option<String> {
        if !trusted {
            return None;
        }
        let values: Vec<&str> = client
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let proto = prior("x-forwarded-proto")
        .filter(|p| p == "http" || p == "https")
        .unwrap_or_else(|| hop.scheme.to_owned());
    let host = hop.authority.to_header();
    let mut set = Vec::with_capacity(4);
    let mut push = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            set.push((HeaderName::from_static(name), v));
        }
    };
    if let Some(ip) = peer {
        push(
            "x-forwarded-for",
            match prior("x-forwarded-for") {
                Some(list) => format!("{list}, {ip}"),
                None => ip.to_string(),
            },
        );
    }
    push("x-forwarded-host", host.clone());
    push("x-forwarded-proto", proto.clone());
    let node = match peer {
        Some(IpAddr::V6(v6)) => format!("\"[{v6}]\""),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None => "unknown".to_owned(),
    };
    let element = format!("for={node};host=\"{host}\";proto={proto}");
    push(
        "forwarded",
        match prior("forwarded") {
            Some(list) => format!("{list}, {element}"),
            None => element,
        },
    );
    (remove, set)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::IpNet;

    fn run(
        peer: &str,
        trusted: bool,
        client: &[(&'static str, &'static str)],
    ) -> Vec<(String, String)> {
        let cfg = ClientConfig {
            trusted_proxies: if trusted {
                vec![IpNet {
                    addr: "10.0.0.0".parse().unwrap(),
                    prefix: 8,
                }]
            } else {
                vec![]
            },
            ..ClientConfig::default()
        };
        let mut map = HeaderMap::new();
        for (k, v) in client {
            map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let authority = Authority::parse("gw.example:8443").unwrap();
        let (remove, set) = headers(
            &cfg,
            &Hop {
                peer: peer.parse().ok(),
                authority: &authority,
                scheme: "http",
            },
            &map,
        );
        for (k, _) in client {
            assert!(remove.iter().any(|r| r == k), "{k} removed");
        }
        set.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn an_untrusted_client_cannot_choose_its_forwarding_headers() {
        let set = run(
            "203.0.113.9",
            false,
            &[
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=1.2.3.4"),
                ("x-original-url", "/admin"),
            ],
        );
        assert_eq!(
            set,
            [
                ("x-forwarded-for".into(), "203.0.113.9".into()),
                ("x-forwarded-host".into(), "gw.example:8443".into()),
                ("x-forwarded-proto".into(), "http".into()),
                (
                    "forwarded".into(),
                    "for=203.0.113.9;host=\"gw.example:8443\";proto=http".into()
                ),
            ]
        );
    }

    #[test]
    fn a_trusted_proxys_chain_is_extended() {
        let set = run(
            "10.1.2.3",
            true,
            &[
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "ignored.example"),
            ],
        );
        assert_eq!(set[0].1, "198.51.100.7, 10.1.2.3");
        assert_eq!(set[1].1, "gw.example:8443");
        assert_eq!(set[2].1, "https");
    }

    #[test]
    fn an_unknown_peer_sends_no_address() {
        let set = run("", false, &[("x-forwarded-for", "1.2.3.4")]);
        assert!(set.iter().all(|(k, _)| k != "x-forwarded-for"));
        assert!(
            set.iter()
                .any(|(k, v)| k == "forwarded" && v.starts_with("for=unknown;"))
        );
    }
}
