//! How long loading a configuration takes (guests load it per instance).
#![allow(missing_docs, clippy::unwrap_used)]
use portcullis_tests::*;
fn time(name: &str, f: impl Fn()) {
    let t = std::time::Instant::now();
    for _ in 0..1000 {
        f();
    }
    println!("{name}: {:?}", t.elapsed() / 1000);
}
fn main() {
    let partner = jwt_simple::prelude::ES256KeyPair::generate();
    let files = test_files(TestIdp::shared(), &partner);
    time(
        "config load, TEST_CONFIG (3 issuers, 6 static keys)",
        || {
            portcullis_core::config::load(TEST_CONFIG, "t", &files).unwrap();
        },
    );
    time("TOML parse only, TEST_CONFIG", || {
        toml::de::DeTable::parse(TEST_CONFIG).unwrap();
    });
    let jwks = TestIdp::shared().jwks().to_string();
    time("parse_jwks, 5 keys", || {
        portcullis_core::jwk::parse_jwks(jwks.as_bytes()).unwrap();
    });
}
