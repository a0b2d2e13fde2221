//! Cost of a browser session on one request, in the sans-IO core (no shared-state call):
//!
//! * `open/*`: reassemble the chunked `__Host-` cookie from the `Cookie` header and open it
//!   (XChaCha20-Poly1305 + JSON) — what every request on a `login` route pays.
//! * `renew/*`: seal the session again and split it into `Set-Cookie` chunks — paid at most
//!   once per `renew_after` (or after a token refresh).
//!
//! * `anomaly`: what the `session_anomaly` check adds on a request: observe the client
//!   (network, AS, country, browser family from `User-Agent`, platform hint) and compare it
//!   with the sign-in's signals sealed in the session.
//!
//! `small` holds the claims and no provider tokens (about 0.4 KB sealed); `tokens` holds a
//! 1 KB access token, a refresh token and a 1 KB ID token (two cookie chunks). Both carry
//! the sign-in's client signals.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use portcullis_core::Timestamp;
use portcullis_core::client::ClientInfo;
use portcullis_core::client_signals::ClientSignals;
use portcullis_core::config::AnomalyWeights;
use portcullis_core::geo::GeoPoint;
use portcullis_core::internal::session::{self, CookieAttrs, Session, SessionKeys};
use portcullis_core::recent_uses::RecentUses;

const BASE: &str = "__Host-portcullis-session";

fn session(with_tokens: bool) -> Session {
    let mut claims = serde_json::Map::new();
    claims.insert("email".into(), "alice@example.test".into());
    claims.insert("name".into(), "Alice Example".into());
    claims.insert("residency".into(), "eu".into());
    claims.insert("scope".into(), "openid profile email".into());
    let token = |n: usize| Some("x".repeat(n));
    Session {
        sid: "c2Vzc2lvbi1pZC0xMjM0NTY3OA".into(),
        provider: "accounts".into(),
        iss: "https://accounts.example.com".into(),
        sub: "248289761001".into(),
        claims,
        acr: Some("urn:example:mfa".into()),
        amr: vec!["pwd".into(), "otp".into()],
        auth_time: Some(1_795_910_000),
        created: 1_795_910_000,
        last_seen: 1_795_910_000,
        access_token: if with_tokens { token(1000) } else { None },
        access_expires: Some(1_795_913_600),
        access_issued: Some(1_795_910_000),
        refresh_token: if with_tokens { token(64) } else { None },
        id_token: if with_tokens { token(1000) } else { None },
        consent_asked: None,
        signals: Some(signed_in()),
        op_sid: Some("op-session-1".into()),
    }
}

/// The sign-in's client: a desktop Chrome behind a CDN that sends country and AS.
fn signed_in() -> ClientSignals {
    ClientSignals {
        network: Some("198.51.100.0/24".into()),
        asn: Some(64496),
        country: Some("DE".into()),
        agent: Some("Chrome/131".into()),
        platform: Some("Windows".into()),
        location: None,
    }
}

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fn cookie_header(keys: &SessionKeys, s: &Session) -> HeaderMap {
    let sealed = s.seal(keys, [7; 24]).unwrap();
    let set = session::encode_cookies(BASE, &sealed, &CookieAttrs::default(), 0).unwrap();
    let pairs: Vec<String> = set
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .chain(["theme=dark".to_owned(), "_ga=GA1.1.123.456".to_owned()])
        .collect();
    let mut h = HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&pairs.join("; ")).unwrap(),
    );
    h
}

fn sessions(c: &mut Criterion) {
    let keys = SessionKeys::new(vec![("k2".into(), [3; 32]), ("k1".into(), [4; 32])]).unwrap();
    let now = Timestamp::from_unix_secs(1_795_910_100);
    for (name, with_tokens) in [("small", false), ("tokens", true)] {
        let s = session(with_tokens);
        let headers = cookie_header(&keys, &s);
        let mut g = c.benchmark_group(format!("session/{name}"));
        g.bench_function("open", |b| {
            b.iter(|| {
                let sealed = session::decode_cookies(&headers, BASE).unwrap().unwrap();
                let s = Session::open(&keys, &sealed).unwrap();
                assert_eq!(
                    s.state(
                        now,
                        std::time::Duration::from_secs(3600),
                        std::time::Duration::from_secs(43_200)
                    ),
                    session::Freshness::Valid
                );
                s
            })
        });
        g.bench_function("renew", |b| {
            b.iter(|| {
                let sealed = s.seal(&keys, [9; 24]).unwrap();
                session::encode_cookies(BASE, &sealed, &CookieAttrs::default(), 2).unwrap()
            })
        });
        g.finish();
    }
    let login = signed_in();
    let mut headers = HeaderMap::new();
    headers.insert(http::header::USER_AGENT, HeaderValue::from_static(CHROME));
    headers.insert(
        "sec-ch-ua-platform",
        HeaderValue::from_static("\"Windows\""),
    );
    let mut g = c.benchmark_group("session/anomaly");
    for (name, ip) in [
        ("same_client", "198.51.100.7"),
        ("other_network", "203.0.113.7"),
    ] {
        let client = ClientInfo {
            ip: Some(ip.parse().unwrap()),
            country: Some("DE".into()),
            asn: Some(64496),
            location: None,
        };
        let expected = usize::from(name == "other_network");
        g.bench_function(name, |b| {
            b.iter(|| {
                let now = ClientSignals::observe(&client, &headers);
                let changes = login.changes(&now);
                assert_eq!(changes.len(), expected);
                changes
            })
        });
    }
    // The recent-use rules: the stored history (three networks, located) read, this
    // request assessed against it and recorded, and written back — what a request on a
    // `session_anomaly` route adds besides the state round trip.
    let weights = AnomalyWeights::default();
    let located = |net: &str, lat: &str, lon: &str| ClientSignals {
        network: Some(net.into()),
        asn: Some(64496),
        location: GeoPoint::parse(lat, lon),
        ..ClientSignals::default()
    };
    let mut history = RecentUses::signed_in(&located("192.0.2.0/24", "48.85", "2.35"), 1_000);
    history.record(&located("198.51.100.0/24", "52.52", "13.40"), 2_000);
    history.record(&located("203.0.113.0/24", "40.71", "-74.00"), 3_000);
    let stored = history.to_stored();
    let here = located("192.0.2.0/24", "48.85", "2.35");
    g.bench_function("recent_uses", |b| {
        b.iter(|| {
            let mut h = RecentUses::from_stored(&stored).unwrap();
            let found = h.assess(&here, 3_010, &weights);
            assert_eq!(found.len(), 2);
            assert!(h.record(&here, 3_010));
            h.to_stored()
        })
    });
    g.finish();
}

criterion_group!(benches, sessions);
criterion_main!(benches);
