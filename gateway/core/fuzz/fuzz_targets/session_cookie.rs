//! Session cookies: any `Cookie` header decodes to a sealed text or an error; any text opens
//! to a session or an error; and any bytes sealed under our key open to exactly those bytes
//! (so the session JSON reader sees fuzzer-chosen payloads past the AEAD).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::internal::session::{self, Session, SessionKeys};

const BASE: &str = "__Host-portcullis-session";

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = SessionKeys::new(vec![("k1".to_owned(), [3; 32])]) else {
        return;
    };
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, value);
        if let Ok(Some(sealed)) = session::decode_cookies(&headers, BASE) {
            let _ = Session::open(&keys, &sealed);
        }
        let _ = session::chunks_present(&headers, BASE);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Session::open(&keys, text);
    }
    let nonce = [data.first().copied().unwrap_or(0); 24];
    if let Ok(sealed) = session::seal(&keys, session::PURPOSE_SESSION, data, nonce) {
        let opened = session::open(&keys, session::PURPOSE_SESSION, &sealed);
        assert_eq!(opened.as_deref(), Ok(data), "seal/open round trip");
        let _ = Session::open(&keys, &sealed);
    }
});
