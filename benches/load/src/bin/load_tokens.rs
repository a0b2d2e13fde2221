//! Writes the key set and tokens the load harness needs into a directory:
//! `jwks.json`, `repeated-es256.txt`, `repeated-rs256.txt` (one token each),
//! `unique-es256.txt`, `unique-rs256.txt` (N distinct valid tokens each) and
//! `invalid.txt` (N well-formed ES256 tokens with a valid key id but a wrong signature) and
//! `churn-es256.txt` (CHURN distinct valid tokens, default N, each on two lines in a row:
//! the verified-token cache's churn workload, where every other request brings a token
//! never seen before and the next one sends it again, so that the cache, which keeps a
//! token from its second verification on, fills and evicts).
//!
//! `unique-es256.txt` holds UNIQUE tokens (default N): enough that no token of a unique
//! workload is sent twice to one gateway, warm-up included.
//!
//! `load-tokens DIR [N [CHURN [UNIQUE]]]`
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write as _;
use std::path::PathBuf;

use jwt_simple::prelude::*;
use portcullis_tests::{AUDIENCE, ISSUER, TestIdp};
use serde_json::json;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: load-tokens DIR [N]"));
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let churn: usize = std::env::args()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    let unique: usize = std::env::args()
        .nth(4)
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    std::fs::create_dir_all(&dir).expect("create the output directory");
    let idp = TestIdp::generate();
    std::fs::write(dir.join("jwks.json"), idp.jwks().to_string()).expect("write jwks");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let claims = |i: usize| {
        json!({
            "iss": ISSUER,
            "sub": format!("user-{i}"),
            "aud": AUDIENCE,
            "iat": exp - 86_400 - 10,
            "exp": exp,
            "scope": "orders:read profile",
        })
    };
    let write = |name: &str, tokens: Vec<String>| {
        let mut f = std::fs::File::create(dir.join(name)).expect("create token file");
        for t in tokens {
            writeln!(f, "{t}").expect("write token");
        }
    };
    write("repeated-es256.txt", vec![idp.sign("ES256", claims(0))]);
    write("repeated-rs256.txt", vec![idp.sign("RS256", claims(0))]);
    // Signed on every core, in order: `first..first + count` users.
    let signed = |first: usize, count: usize| -> Vec<String> {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let chunk = count.div_ceil(cores).max(1);
        let parts: Vec<Vec<String>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..count)
                .step_by(chunk)
                .map(|start| {
                    let (idp, claims) = (&idp, &claims);
                    s.spawn(move || {
                        (start..(start + chunk).min(count))
                            .map(|i| idp.sign("ES256", claims(first + i)))
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        parts.concat()
    };
    write("unique-es256.txt", signed(0, unique));
    write(
        "unique-rs256.txt",
        (0..n).map(|i| idp.sign("RS256", claims(i))).collect(),
    );
    // Signed by another key under the published kid: every gateway must run the signature
    // check to refuse them.
    let attacker = ES256KeyPair::generate().with_key_id("es-1");
    write(
        "invalid.txt",
        (0..n)
            .map(|i| {
                let c = portcullis_tests::raw_claims(claims(i));
                attacker.sign(c).unwrap()
            })
            .collect(),
    );
    // A million signatures for the churn workload, users after the unique ones.
    write(
        "churn-es256.txt",
        signed(unique.max(n), churn)
            .into_iter()
            .flat_map(|t| [t.clone(), t])
            .collect(),
    );
    println!(
        "wrote {unique} unique ES256 tokens, {n} per other set and {churn} churn tokens to {}",
        dir.display()
    );
}
