//! `[region.NAME.tls]`: what a region's TLS backends must prove before any byte of a
//! request reaches them — a chain to the region's CA (or the public roots), the expected
//! identity (the URL's host, another DNS name, or a SPIFFE ID), optionally a pinned key —
//! and the client certificate the gateway presents.

use super::model::{BackendIdentity, BackendTls};
use super::reader::{Diags, Table};

/// Reads the table of region `region`; `plain` when the region has an `http://` backend.
pub(super) fn read(
    mut t: Table<'_, '_>,
    d: &mut Diags<'_>,
    region: &str,
    plain: bool,
) -> Option<BackendTls> {
    let span = t.span.clone();
    let ca = t.string(d, "ca").map(|(v, _)| v);
    let server_name = t.string(d, "server_name");
    let spiffe_id = t.string(d, "spiffe_id");
    let pins = t.strings(d, "pins").map(|(l, _)| l).unwrap_or_default();
    let client_cert = t.string(d, "client_cert");
    let client_key = t.string(d, "client_key");
    t.finish(d);
    let mut ok = true;
    if plain {
        d.error(
            &span,
            format!("`[region.{region}.tls]` applies to https backends, but region `{region}` has an http:// one"),
            Some("use https:// URLs for every backend of this region".into()),
        );
        ok = false;
    }
    let identity = match (server_name, spiffe_id) {
        (Some(_), Some((_, s))) => {
            d.error(
                &s,
                "`spiffe_id` and `server_name` exclude each other: an X.509-SVID is checked by its URI SAN",
                None,
            );
            ok = false;
            BackendIdentity::UrlHost
        }
        (Some((name, _)), None) => BackendIdentity::DnsName(name),
        (None, Some((id, s))) => {
            let valid = id
                .strip_prefix("spiffe://")
                .is_some_and(|rest| rest.split_once('/').is_some_and(|(td, _)| !td.is_empty()));
            if !valid {
                d.error(
                    &s,
                    format!("`spiffe_id` {id:?} is not a SPIFFE ID"),
                    Some("spiffe://TRUST-DOMAIN/PATH, e.g. \"spiffe://prod.example/ns/orders/sa/api\"".into()),
                );
                ok = false;
            }
            if ca.is_none() {
                d.error(
                    &s,
                    "`spiffe_id` needs `ca`: the trust bundle of the SPIFFE trust domain",
                    None,
                );
                ok = false;
            }
            BackendIdentity::Spiffe(id)
        }
        (None, None) => BackendIdentity::UrlHost,
    };
    let mut digests = Vec::with_capacity(pins.len());
    for (pin, s) in pins {
        let digest = pin
            .strip_prefix("sha256/")
            .and_then(decode_standard)
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        match digest {
            Some(d32) => digests.push(d32),
            None => {
                d.error(
                    &s,
                    format!("pin {pin:?} is not sha256/BASE64 of a key's SubjectPublicKeyInfo"),
                    Some("openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64".into()),
                );
                ok = false;
            }
        }
    }
    let client = match (client_cert, client_key) {
        (Some((c, _)), Some((k, _))) => Some((c, k)),
        (None, None) => None,
        (Some((_, s)), None) | (None, Some((_, s))) => {
            d.error(&s, "`client_cert` and `client_key` go together", None);
            ok = false;
            None
        }
    };
    ok.then_some(BackendTls {
        ca,
        identity,
        pins: digests,
        client,
    })
}

/// Standard padded base64, as `openssl … | base64` prints pins.
fn decode_standard(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
