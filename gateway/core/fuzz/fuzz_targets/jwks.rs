//! Key-set documents from an identity provider: parsing never panics, and every key it
//! keeps can be prepared or is skipped with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::SignatureVerifier;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = portcullis_core::jwk::parse_jwks(data) {
        for jwk in &parsed.keys {
            let _ = portcullis_core::PortableVerifier.prepare(&jwk.material);
        }
    }
    let _ = portcullis_core::keyset::parse_discovery(data, "https://idp.test", false);
    let _ = portcullis_core::keyset::parse_endpoints(data, false);
});
