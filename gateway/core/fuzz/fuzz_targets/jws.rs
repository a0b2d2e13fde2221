//! Compact JWS parsing and the whole token path: any bytes as a bearer token through
//! parsing, key selection, HMAC signature check and claim validation must end in a decision,
//! never a panic; a token that passes must have been signed with the configured secret.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use portcullis_core::{AllHealthy, Engine, PortableVerifier, RequestParts, Timestamp};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(jws) = portcullis_core::jws::parse_compact(token, 16 * 1024) {
        let _ = portcullis_core::jws::parse_object(&jws.payload);
    }
    let engine = Engine::new(common::config().clone(), PortableVerifier);
    let keys = engine.new_key_store();
    let mut headers = http::HeaderMap::new();
    headers.insert("host", http::HeaderValue::from_static("gw.test"));
    let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    headers.insert("authorization", value);
    let uri = http::Uri::from_static("/api/orders");
    let req = RequestParts {
        method: &http::Method::GET,
        uri: &uri,
        headers: &headers,
        request_id: "fuzz",
        peer: None,
        peer_hints: Default::default(),
        body: &[],
    };
    let _ = engine.decide(
        &keys,
        &req,
        Timestamp::from_unix_secs(1_795_910_400),
        &AllHealthy,
    );
});
