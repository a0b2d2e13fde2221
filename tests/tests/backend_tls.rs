//! Issues 19 and 22: backends proven before customer data reaches them. Real TLS backends
//! (rustls) with certificates minted by the test; each region's `[region.NAME.tls]` names
//! its CA, the identity (the URL's host, or a SPIFFE ID) and optionally a pinned key, and
//! the client certificate the gateway presents. A backend that fails a check never receives
//! a byte of the request (its request count stays 0): 502 `backend_identity_mismatch`, and
//! the next request fails over within the jurisdiction only. Both engines; the bundle
//! refuses such a configuration at bundle time (its platform makes the connection).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_tests::host::{Gateway, get, reason};
use portcullis_tests::net::Backend;
use portcullis_tests::tls::{Leaf, TestCa, TlsBackend};
use portcullis_tests::{INTERNAL_ISSUER_TABLE, internal_key_file, on_every_engine};

const SVID: &str = "spiffe://prod.test/ns/orders/sa/api";

struct Pki {
    ca: TestCa,
    other_ca: TestCa,
    gateway: Leaf,
}

fn pki() -> Pki {
    let ca = TestCa::new("Orders trust domain");
    let gateway = ca.leaf("portcullis-gw", &["gw.prod.test"]);
    Pki {
        ca,
        other_ca: TestCa::new("Someone else"),
        gateway,
    }
}

/// A gateway whose region `eu` (jurisdiction EU) has `backend` with `tls`, failover to
/// `eu2` (EU) at `eu2`, and a region `us` (US) at `us`.
fn start(pki: &Pki, engine: &str, backend: &str, tls: &str, eu2: &str, us: &str) -> Gateway {
    let config = format!(
        r#"{INTERNAL_ISSUER_TABLE}
[region.eu]
jurisdiction = "EU"
backends = ["{backend}"]
failover = ["eu2"]

[region.eu.tls]
ca = "ca.pem"
{tls}

[region.eu2]
jurisdiction = "EU"
backends = ["{eu2}"]

[region.us]
jurisdiction = "US"
backends = ["{us}"]

[residency]
missing = "eu"
anonymous = "eu"

[[route]]
path = "/"
auth = "public"

[audit]
subject_key_file = "audit.key"
"#
    );
    portcullis_tests::host::start_engine_with(
        &config,
        engine,
        &[
            internal_key_file(),
            ("ca.pem".into(), pki.ca.pem().into_bytes()),
            ("gw.pem".into(), pki.gateway.cert.clone().into_bytes()),
            ("gw.key".into(), pki.gateway.key.clone().into_bytes()),
        ],
    )
}

fn backend_of(r: &portcullis_tests::net::Resp) -> String {
    r.json_body()["backend"].as_str().unwrap_or("").to_owned()
}

fn the_right_identity_is_served(engine: &str) {
    let pki = pki();
    let (eu2, us) = (Backend::start("eu2"), Backend::start("us"));
    // The URL's host (an IP address SAN here), chained to the region's CA.
    let by_host = TlsBackend::start("eu", &pki.ca.leaf("eu", &["127.0.0.1"]), None);
    let gw = start(
        &pki,
        engine,
        &by_host.url(),
        "",
        &eu2.server.url(),
        &us.server.url(),
    );
    let r = get(&gw, "/x", None, &[]);
    assert_eq!((r.status, backend_of(&r)), (200, "eu".into()));
    assert_eq!(by_host.hits(), 1);
    drop(gw);

    // A SPIFFE X.509-SVID (no DNS or IP SAN at all), a pinned key, and mTLS: the backend
    // requires the gateway's client certificate and sees exactly it.
    let svid = pki.ca.leaf_with("orders", &[], &[SVID]);
    let strict = TlsBackend::start("eu-svid", &svid, Some(&pki.ca));
    let tls = format!(
        "spiffe_id = \"{SVID}\"\npins = [\"{}\"]\nclient_cert = \"gw.pem\"\nclient_key = \"gw.key\"",
        svid.pin
    );
    let gw = start(
        &pki,
        engine,
        &strict.url(),
        &tls,
        &eu2.server.url(),
        &us.server.url(),
    );
    let r = get(&gw, "/x", None, &[]);
    assert_eq!((r.status, backend_of(&r)), (200, "eu-svid".into()), "{r:?}");
    assert_eq!(strict.hits(), 1);
    assert_eq!(
        strict.client_cert.lock().unwrap().as_deref(),
        Some(pki.gateway.der.as_slice())
    );
    assert_eq!(eu2.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(us.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// `tls` names what the region requires; `served` is what the backend presents.
fn never_sent_a_byte(engine: &str, what: &str, served: &Leaf, tls: &str, pki: &Pki) {
    let (eu2, us) = (Backend::start("eu2"), Backend::start("us"));
    let impostor = TlsBackend::start("impostor", served, None);
    let gw = start(
        pki,
        engine,
        &impostor.url(),
        tls,
        &eu2.server.url(),
        &us.server.url(),
    );
    let r = get(&gw, "/x", None, &[]);
    assert_eq!(
        (r.status, reason(&r)),
        (502, "backend_identity_mismatch".into()),
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        impostor.hits(),
        0,
        "{what}: the impostor received a request"
    );
    // The next request goes to the failover region of the same jurisdiction, never to us.
    let r = get(&gw, "/x", None, &[]);
    assert_eq!((r.status, backend_of(&r)), (200, "eu2".into()), "{what}");
    assert_eq!(impostor.hits(), 0, "{what}");
    assert_eq!(
        us.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{what}"
    );
    let records = portcullis_tests::host::audit_records(&gw, |r| {
        r.iter().any(|x| x["reason"] == "backend_identity_mismatch")
    });
    assert!(
        records
            .iter()
            .any(|x| x["reason"] == "backend_identity_mismatch" && x["region"] == "eu"),
        "{what}: {records:?}"
    );
}

fn a_wrong_identity_gets_nothing(engine: &str) {
    let pki = pki();
    let cases = [
        (
            "wrong SPIFFE ID",
            pki.ca
                .leaf_with("billing", &[], &["spiffe://prod.test/ns/billing/sa/api"]),
            format!("spiffe_id = \"{SVID}\""),
        ),
        (
            "untrusted CA",
            pki.other_ca.leaf("eu", &["127.0.0.1"]),
            String::new(),
        ),
        (
            "right CA, wrong host",
            pki.ca.leaf("eu", &["elsewhere.test"]),
            String::new(),
        ),
    ];
    for (what, served, tls) in &cases {
        never_sent_a_byte(engine, what, served, tls, &pki);
    }
    // A key rotated away from the pin: same CA, same name, new key.
    let pinned = pki.ca.leaf("eu", &["127.0.0.1"]);
    let rotated = pki.ca.leaf("eu", &["127.0.0.1"]);
    never_sent_a_byte(
        engine,
        "rotated-away pin",
        &rotated,
        &format!("pins = [\"{}\"]", pinned.pin),
        &pki,
    );
}

on_every_engine!(the_right_identity_is_served, a_wrong_identity_gets_nothing);

/// The bundle's platform (Spin, any wasi:http host) makes its backend connections: it
/// cannot check an identity, so bundling such a configuration is refused.
#[test]
fn the_bundle_refuses_backend_identity_checks() {
    let pki = pki();
    let dir = std::env::temp_dir().join(format!("portcullis-attest-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        r#"{INTERNAL_ISSUER_TABLE}
[region.eu]
jurisdiction = "EU"
backends = ["https://127.0.0.1:9"]

[region.eu.tls]
ca = "ca.pem"
spiffe_id = "{SVID}"

[residency]
missing = "eu"

[[route]]
path = "/"

[audit]
subject_key_file = "audit.key"
"#
    );
    std::fs::write(dir.join("gateway.toml"), config).unwrap();
    std::fs::write(
        dir.join("hs.key"),
        portcullis_tests::b64(&portcullis_tests::INTERNAL_SECRET),
    )
    .unwrap();
    std::fs::write(
        dir.join("audit.key"),
        portcullis_tests::b64(&portcullis_tests::AUDIT_KEY),
    )
    .unwrap();
    std::fs::write(dir.join("ca.pem"), pki.ca.pem()).unwrap();
    for args in [
        vec!["bundle", "--config", "gateway.toml", "-o", "edge.wasm"],
        vec![
            "snapshot",
            "--config",
            "gateway.toml",
            "-o",
            "edge.snapshot",
        ],
    ] {
        let out = std::process::Command::new(portcullis_tests::host::binary())
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted it");
        assert!(
            text.contains("region.eu.tls") && text.contains("cannot"),
            "{args:?}: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
