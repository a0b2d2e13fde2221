//! OIDC Back-Channel Logout (§2.6) in the sans-IO core, without sockets: the provider's key
//! set fed to the key store by hand, an in-memory shared state, and logout tokens signed by
//! the test provider's key. Each rule refuses its token alone; a `jti` is accepted once; a
//! runtime that cannot record one-time values says so with 503 instead of calling a fresh
//! token a replay. (End to end against a real OpenID provider, with revocation by `sid` and
//! by `sub`: `session_e2e.rs`.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use portcullis_core::authenticate::{AuthFailure, Authenticator, IssuedKind, LocalAuthenticator};
use portcullis_core::keyset::FetchResponse;
use portcullis_core::login::{BACKCHANNEL_EVENT, BACKCHANNEL_PATH};
use portcullis_core::{
    Adapters, AllHealthy, Decision, Engine, FetchKind, IssuerId, KeyStore, MapFiles, Outcome,
    PortableVerifier, RequestParts, Timestamp, VerifiedIdentity,
};
use portcullis_core::{StateAnswer, StateOp, StateResult};
use portcullis_tests::*;
use serde_json::{Value, json};

const OP: &str = "https://op.test";
const CLIENT: &str = "gateway";

fn config() -> portcullis_core::Config {
    let text = format!(
        r#"
[[issuer]]
name = "op"
issuer = "{OP}"
discovery = true
audiences = ["api"]
algorithms = ["ES256"]
session_bound_tokens = true

[issuer.login]
client_id = "{CLIENT}"
client_secret_file = "client.secret"
redirect_uri = "https://gw.test/_portcullis/callback"

[session]
[[session.key]]
id = "k1"
file = "session.key"

[region.eu]
jurisdiction = "EU"
backends = ["https://eu.internal"]

[residency]
missing = "eu"

[[route]]
path = "/app"
login = ["op"]

[[route]]
path = "/api"

[audit]
subject_key_file = "audit.key"
"#
    );
    let files = MapFiles::default()
        .with("client.secret", "secret")
        .with("session.key", "5a".repeat(32))
        .with("audit.key", b64(&AUDIT_KEY));
    load(&text, &files)
}

/// An engine whose key store holds the provider's discovery document and key set, as an
/// adapter would have fetched them.
fn engine() -> (
    Engine<PortableVerifier>,
    KeyStore<portcullis_core::crypto::PortableKey>,
) {
    let engine = Engine::new(config(), PortableVerifier);
    let mut keys = engine.new_key_store();
    let now = Timestamp::from_unix_secs(NOW);
    for _ in 0..3 {
        for request in keys.poll(now) {
            let body = match request.kind {
                FetchKind::Discovery => json!({
                    "issuer": OP,
                    "jwks_uri": format!("{OP}/jwks"),
                    "authorization_endpoint": format!("{OP}/authorize"),
                    "token_endpoint": format!("{OP}/token"),
                })
                .to_string(),
                FetchKind::Jwks => TestIdp::shared().jwks().to_string(),
            };
            keys.on_response(
                engine.verifier(),
                request.issuer,
                request.kind,
                FetchResponse {
                    status: 200,
                    cache_control: Some("max-age=3600"),
                    body: body.as_bytes(),
                },
                now,
            )
            .unwrap();
        }
    }
    assert!(keys.is_ready(now), "the provider's keys are loaded");
    (engine, keys)
}

/// Token checks of the engine.
struct Auth<'a> {
    local: LocalAuthenticator<'a, PortableVerifier>,
}

impl Authenticator for Auth<'_> {
    fn authenticate(
        &self,
        token: &str,
        route_issuers: &[IssuerId],
        now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        self.local.authenticate(token, route_issuers, now)
    }
    fn verify_issued(
        &self,
        token: &str,
        issuer: IssuerId,
        client_id: &str,
        kind: IssuedKind,
        now: Timestamp,
    ) -> Result<VerifiedIdentity, AuthFailure> {
        self.local
            .verify_issued(token, issuer, client_id, kind, now)
    }
}

/// The shared state: sessions and their indexes by provider `sid` and by subject.
#[derive(Default)]
struct State(RefCell<HashMap<String, Vec<u8>>>);

/// The state port: the map, and one-time values in memory (or none at all).
struct Port<'a> {
    map: &'a State,
    seen: Option<RefCell<HashSet<String>>>,
}

impl portcullis_core::State for Port<'_> {
    fn now(&self, op: &StateOp) -> Option<StateResult> {
        let map = &self.map.0;
        Some(match op {
            StateOp::FirstUse { key, .. } => match &self.seen {
                Some(seen) => Ok(StateAnswer::FirstUse(seen.borrow_mut().insert(key.clone()))),
                None => Err("no shared state here".to_owned()),
            },
            StateOp::Get { key } => Ok(StateAnswer::Value(map.borrow().get(key).cloned())),
            StateOp::Set { key, value, .. } => {
                map.borrow_mut().insert(key.clone(), value.clone());
                Ok(StateAnswer::Done)
            }
            StateOp::Delete { key } => {
                map.borrow_mut().remove(key);
                Ok(StateAnswer::Done)
            }
            StateOp::RateLimit { .. } => Err("not needed here".to_owned()),
        })
    }
}

struct World {
    engine: Engine<PortableVerifier>,
    keys: KeyStore<portcullis_core::crypto::PortableKey>,
    seen: RefCell<HashSet<String>>,
    state: State,
}

impl World {
    fn new() -> Self {
        let (engine, keys) = engine();
        Self {
            engine,
            keys,
            seen: RefCell::default(),
            state: State::default(),
        }
    }

    /// POSTs `logout_token=token` to the back-channel endpoint; `state` false: a runtime
    /// without one-time values.
    fn logout(&self, token: &str, state: bool) -> Decision {
        let local = self.engine.authenticator(&self.keys);
        let auth = Auth { local };
        let port = Port {
            map: &self.state,
            seen: state.then(|| RefCell::new(self.seen.borrow().clone())),
        };
        let adapters = Adapters {
            state: &port,
            ..Adapters::new(&auth, &AllHealthy)
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "gw.test".parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let uri: http::Uri = BACKCHANNEL_PATH.parse().unwrap();
        let body = format!("logout_token={token}");
        let req = RequestParts {
            method: &http::Method::POST,
            uri: &uri,
            headers: &headers,
            request_id: "bcl",
            peer: None,
            peer_hints: Default::default(),
            body: body.as_bytes(),
        };
        let d = self
            .engine
            .gateway()
            .decide(&adapters, &req, Timestamp::from_unix_secs(NOW + 1));
        if let Some(seen) = port.seen {
            *self.seen.borrow_mut() = seen.into_inner();
        }
        d
    }
}

impl World {
    /// GET /api/x with `Authorization: Bearer token`.
    fn call(&self, token: &str) -> Decision {
        let local = self.engine.authenticator(&self.keys);
        let auth = Auth { local };
        let port = Port {
            map: &self.state,
            seen: None,
        };
        let adapters = Adapters {
            state: &port,
            ..Adapters::new(&auth, &AllHealthy)
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "gw.test".parse().unwrap());
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let uri: http::Uri = "/api/x".parse().unwrap();
        let req = RequestParts {
            method: &http::Method::GET,
            uri: &uri,
            headers: &headers,
            request_id: "api",
            peer: None,
            peer_hints: Default::default(),
            body: b"",
        };
        self.engine
            .gateway()
            .decide(&adapters, &req, Timestamp::from_unix_secs(NOW + 2))
    }
}

/// An access token of the provider for `sub` frank, with `extra` claims.
fn access_token(extra: Value) -> String {
    let mut claims = json!({
        "iss": OP, "aud": "api", "iat": NOW, "exp": NOW + 600, "sub": "frank",
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    TestIdp::shared().sign("ES256", claims)
}

/// Issue 22, across channels: an app's access token that names the provider session
/// (`sid`) it came from ends with that session. After a back-channel logout for `op-sid-1`,
/// its tokens are refused (401 `token_inactive`) while another session's tokens, and tokens
/// naming none, still pass (`session_bound_tokens`).
#[test]
fn a_back_channel_logout_ends_the_access_tokens_of_its_provider_session() {
    let w = World::new();
    let forwarded = |d: &Decision| matches!(d.outcome, Outcome::Forward(_));
    let same = access_token(json!({"sid": "op-sid-1"}));
    let other = access_token(json!({"sid": "op-sid-2"}));
    let none = access_token(json!({}));
    for t in [&same, &other, &none] {
        let d = w.call(t);
        assert!(forwarded(&d), "{d:?}");
    }
    let logout = answer(&w.logout(&token(json!({"jti": "j-end", "sid": "op-sid-1"})), true));
    assert_eq!(logout.0, 200, "{logout:?}");
    let (status, reason, detail, _) = answer(&w.call(&same));
    assert_eq!(
        (status, reason.as_str()),
        (401, "token_inactive"),
        "{detail}"
    );
    assert!(detail.contains("provider session"), "{detail}");
    for t in [&other, &none] {
        let d = w.call(t);
        assert!(forwarded(&d), "{d:?}");
    }
}

fn token(extra: Value) -> String {
    let mut claims = json!({
        "iss": OP, "aud": CLIENT, "iat": NOW, "exp": NOW + 120, "jti": "j-1", "sub": "frank",
        "sid": "op-sid-1", "events": {BACKCHANNEL_EVENT: {}},
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    TestIdp::shared().sign_typed("ES256", claims, Some("logout+jwt"))
}

/// (status, reason, detail, `x-portcullis-revoked`) of a back-channel answer.
fn answer(d: &Decision) -> (u16, String, String, Option<String>) {
    let Outcome::Respond(r) = &d.outcome else {
        panic!("the back-channel endpoint forwarded: {d:?}")
    };
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let revoked = r
        .headers
        .iter()
        .find(|(n, _)| n == "x-portcullis-revoked")
        .map(|(_, v)| v.to_str().unwrap().to_owned());
    (
        r.status.as_u16(),
        body["reason"].as_str().unwrap_or_default().to_owned(),
        body["detail"].as_str().unwrap_or_default().to_owned(),
        revoked,
    )
}

#[test]
fn each_rule_of_the_spec_refuses_its_token_alone() {
    let w = World::new();
    for (extra, says) in [
        (json!({"events": null}), "back-channel logout event"),
        (
            json!({"events": {"urn:other": {}}}),
            "back-channel logout event",
        ),
        (json!({"nonce": "n"}), "nonce"),
        (json!({"jti": null}), "jti"),
        (json!({"iat": null}), "iat"),
        (json!({"sid": null, "sub": null}), "neither sid nor sub"),
        (json!({"aud": "someone-else"}), "aud"),
        (
            json!({"iss": "https://evil.test"}),
            "not from a login provider",
        ),
    ] {
        let (status, reason, detail, _) = answer(&w.logout(&token(extra.clone()), true));
        assert_eq!(
            (status, reason.as_str()),
            (400, "logout_token_invalid"),
            "{extra}: {detail}"
        );
        assert!(
            detail.contains(says),
            "{extra}: expected {says:?} in {detail:?}"
        );
    }
    // A token signed by another key under the provider's kid.
    let forged = ES256KeyPairForTests::forged();
    let (status, reason, _, _) = answer(&w.logout(&forged, true));
    assert_eq!((status, reason.as_str()), (400, "logout_token_invalid"));
    // None of them reached the replay cache: the valid token is still fresh.
    assert_eq!(answer(&w.logout(&token(json!({})), true)).0, 200);
}

/// A logout token signed by a key that is not the provider's, under its kid.
struct ES256KeyPairForTests;

impl ES256KeyPairForTests {
    fn forged() -> String {
        use jwt_simple::prelude::*;
        let claims = json!({
            "iss": OP, "aud": CLIENT, "iat": NOW, "exp": NOW + 120, "jti": "j-forged",
            "sub": "frank", "events": {BACKCHANNEL_EVENT: {}},
        });
        ES256KeyPair::generate()
            .with_key_id("es-1")
            .sign(raw_claims(claims))
            .unwrap()
    }
}

#[test]
fn a_jti_is_accepted_once() {
    let w = World::new();
    let first = answer(&w.logout(&token(json!({"jti": "j-once"})), true));
    assert_eq!(first.0, 200, "{first:?}");
    // No session is indexed under that sid here (revocation itself is tested end to end
    // against a real provider in session_e2e.rs).
    assert_eq!(first.3.as_deref(), Some("0"));
    let again = answer(&w.logout(&token(json!({"jti": "j-once"})), true));
    assert_eq!((again.0, again.1.as_str()), (400, "logout_token_invalid"));
    assert!(again.2.contains("already used"), "{again:?}");
    // Another jti with the same claims is fresh.
    assert_eq!(
        answer(&w.logout(&token(json!({"jti": "j-twice"})), true)).0,
        200
    );
}

#[test]
fn without_one_time_state_a_fresh_token_is_unavailable_not_a_replay() {
    let w = World::new();
    let (status, reason, detail, _) = answer(&w.logout(&token(json!({"jti": "j-new"})), false));
    assert_eq!(
        (status, reason.as_str()),
        (503, "state_unavailable"),
        "{detail}"
    );
    assert!(detail.contains("cannot be checked"), "{detail}");
}
