//! The load harness's helpers work: `load-tokens` writes a key set and tokens that verify
//! against it, and `load-backend` answers HTTP. (Also: `cargo test --workspace` builds
//! these binaries, so the harness's smoke run reuses the test build.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use jwt_simple::prelude::*;

#[test]
fn load_tokens_writes_tokens_the_key_set_verifies() {
    let dir = std::env::temp_dir().join(format!("portcullis-load-tokens-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_load-tokens"))
        .arg(&dir)
        .arg("3")
        .status()
        .unwrap();
    assert!(status.success());
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("jwks.json")).unwrap()).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    let es256 = keys.iter().find(|k| k["crv"] == "P-256").unwrap();
    let point = [
        vec![4u8],
        Base64UrlSafeNoPadding::decode_to_vec(es256["x"].as_str().unwrap(), None).unwrap(),
        Base64UrlSafeNoPadding::decode_to_vec(es256["y"].as_str().unwrap(), None).unwrap(),
    ]
    .concat();
    let key = ES256PublicKey::from_bytes(&point).unwrap();
    let lines = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let unique = lines("unique-es256.txt");
    assert_eq!(unique.len(), 3);
    for t in &unique {
        key.verify_token::<NoCustomClaims>(t, None).unwrap();
    }
    let invalid = lines("invalid.txt");
    assert_eq!(invalid.len(), 3);
    for t in &invalid {
        assert!(key.verify_token::<NoCustomClaims>(t, None).is_err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_backend_answers() {
    // Port 0 and the address it prints: no other test can take the port in between.
    let mut child = Command::new(env!("CARGO_BIN_EXE_load-backend"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"ok\":true}\n"), "{answer}");
}
