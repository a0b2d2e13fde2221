//! Header splitting: cookie pairs (reading and stripping agree), Host / absolute-form
//! authority parsing, the client address from forwarding lists, and the forwarding headers
//! the gateway sets: no panics, and nothing the gateway sets is an invalid header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::Authority;
use portcullis_core::config::{ClientConfig, IpNet};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    // Cookies: every pair the reader sees by a name is gone after stripping that name.
    let mut cookies = http::HeaderMap::new();
    cookies.insert(http::header::COOKIE, value.clone());
    let names: Vec<Vec<u8>> = portcullis_core::internal::cookies::pairs(&cookies)
        .filter(|p| !p.name.is_empty())
        .map(|p| p.name.to_vec())
        .collect();
    if let Some(first) = names.first() {
        let stripped = portcullis_core::internal::cookies::without(&cookies, |n| n == first.as_slice());
        let mut after = http::HeaderMap::new();
        if let Some(Some(v)) = stripped {
            after.insert(http::header::COOKIE, v);
        }
        assert!(
            portcullis_core::internal::cookies::pairs(&after).all(|p| p.name != first.as_slice()),
            "a stripped cookie is still readable"
        );
    }
    // Host and forwarding lists.
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::HOST, value.clone());
    headers.insert("x-forwarded-for", value.clone());
    headers.insert("x-forwarded-proto", value.clone());
    headers.insert("forwarded", value);
    let uri = http::Uri::from_static("/");
    let authority = portcullis_core::request_authority(&uri, &headers);
    let cfg = ClientConfig {
        trusted_proxies: vec![IpNet {
            addr: std::net::IpAddr::from([10, 0, 0, 0]),
            prefix: 8,
        }],
        ip_header: Some("x-forwarded-for".into()),
        ..ClientConfig::default()
    };
    let peer = Some(std::net::IpAddr::from([10, 1, 2, 3]));
    let _ = portcullis_core::client::client_info(&cfg, peer, &headers);
    let authority = authority.unwrap_or_else(|_| Authority {
        host: "gw.test".into(),
        port: None,
    });
    let (_, set) = portcullis_core::internal::forwarding::headers(
        &cfg,
        &portcullis_core::internal::forwarding::Hop {
            peer,
            authority: &authority,
            scheme: "http",
        },
        &headers,
    );
    assert!(set.iter().any(|(n, _)| n == "x-forwarded-host"));
});
