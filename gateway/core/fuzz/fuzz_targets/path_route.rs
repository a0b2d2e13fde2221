//! Path normalization and route matching: the canonical form is a fixed point, never holds
//! `//` or a dot segment, and routes the same as the path a decoding backend would see;
//! any request line decides without a panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use portcullis_core::internal::canonical::{PathOptions, canonical_path, decoded_path};
use portcullis_core::internal::policy::match_route;
use portcullis_core::{AllHealthy, Engine, PortableVerifier, RequestParts, Timestamp};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let routes = &common::config().routes;
    for allow_semicolons in [false, true] {
        let options = PathOptions { allow_semicolons };
        if let Ok(canonical) = canonical_path(raw, options) {
            assert_eq!(
                canonical_path(&canonical, options).as_deref(),
                Ok(canonical.as_str())
            );
            assert!(!canonical.contains("//"), "{canonical}");
            assert!(
                !canonical.split('/').any(|s| s == "." || s == ".."),
                "{canonical}"
            );
            let decoded = decoded_path(&canonical);
            for host in ["gw.test", "admin.example.com"] {
                for case_sensitive in [true, false] {
                    assert_eq!(
                        match_route(routes, host, &canonical, case_sensitive),
                        match_route(routes, host, &decoded, case_sensitive),
                        "{raw} → {canonical} → {decoded}"
                    );
                }
            }
        }
    }
    // The whole pipeline on the raw target (request line as hyper would hand it over).
    let Ok(uri) = raw.parse::<http::Uri>() else {
        return;
    };
    let engine = Engine::new(common::config().clone(), PortableVerifier);
    let keys = engine.new_key_store();
    let mut headers = http::HeaderMap::new();
    headers.insert("host", http::HeaderValue::from_static("admin.example.com"));
    let req = RequestParts {
        method: &http::Method::GET,
        uri: &uri,
        headers: &headers,
        request_id: "fuzz",
        peer: None,
        peer_hints: Default::default(),
        body: &[],
    };
    let d = engine.decide(
        &keys,
        &req,
        Timestamp::from_unix_secs(1_795_910_400),
        &AllHealthy,
    );
    if let portcullis_core::Outcome::Forward(f) = &d.outcome {
        // Only the public route forwards without a token; what is forwarded is canonical.
        let path = f.path_and_query.split('?').next().unwrap_or_default();
        assert_eq!(
            canonical_path(
                path,
                PathOptions {
                    allow_semicolons: false
                }
            )
            .as_deref(),
            Ok(path)
        );
    }
});
