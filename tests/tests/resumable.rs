//! The resumable pipeline (`portcullis_core::ports`): a decision whose state port cannot
//! answer at once stops with what it needs, and the adapter resumes it with the answer.
//! Checked here on the shared core: the decision that waited equals the one that did not,
//! each operation is performed once, random draws are replayed rather than drawn again, a
//! resume that no longer matches what the decision asked fails closed, and an adapter
//! that cannot wait fails closed too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use portcullis_core::authenticate::LocalAuthenticator;
use portcullis_core::crypto::{KeyError, PortableKey};
use portcullis_core::{
    Adapters, Algorithm, AllHealthy, Answer, Decision, Entropy, KeyMaterial, KeyStore, Need,
    NoState, PortableVerifier, Progress, RequestParts, SignatureCheck, SignatureVerifier, State,
    StateAnswer, StateOp, StateResult, Timestamp,
};
use portcullis_tests::*;

/// Shared state in a map: GCRA for limits, nothing else. Counts what it performs.
#[derive(Default)]
struct Memory {
    tats: RefCell<HashMap<String, u64>>,
    performed: Cell<usize>,
}

impl Memory {
    fn perform(&self, op: &StateOp) -> StateResult {
        self.performed.set(self.performed.get() + 1);
        let StateOp::RateLimit { checks, now } = op else {
            return NoState.now(op).unwrap();
        };
        let mut map = self.tats.borrow_mut();
        let tats: Vec<Option<u64>> = checks.iter().map(|c| map.get(&c.key).copied()).collect();
        let (statuses, next) = portcullis_core::limits::gcra_all(&tats, now.unix_micros(), checks);
        if let Some(next) = next {
            for (c, t) in checks.iter().zip(next) {
                map.insert(c.key.clone(), t);
            }
        }
        Ok(StateAnswer::Limits(statuses))
    }
}

/// The memory answering at once.
struct AtOnce<'a>(&'a Memory);

impl State for AtOnce<'_> {
    fn now(&self, op: &StateOp) -> Option<StateResult> {
        Some(self.0.perform(op))
    }
}

/// A state that is never ready at once (as Redis is to the native engine).
struct Later;

impl State for Later {
    fn now(&self, _: &StateOp) -> Option<StateResult> {
        None
    }
}

/// Random bytes from a counter, counting the draws.
#[derive(Default)]
struct Counter {
    next: Cell<u8>,
    draws: Cell<usize>,
}

impl Entropy for Counter {
    fn fill(&self, out: &mut [u8]) -> Result<(), String> {
        self.draws.set(self.draws.get() + 1);
        for b in out {
            self.next.set(self.next.get().wrapping_add(1).max(1));
            *b = self.next.get();
        }
        Ok(())
    }
}

const LIMITED: &str = r#"
[[route]]
path = "/limited"
auth = "public"
[[route.rate_limit]]
key = "ip"
rate = 2
per = "1m"

[[route]]
path = "/limited-after"
auth = "required"
scopes_any = ["orders:read"]
[[route.rate_limit]]
name = "per-ip"
key = "ip"
rate = 5
per = "1m"
[[route.rate_limit]]
name = "per-user"
key = "subject"
rate = 1
per = "1m"
"#;

fn harness() -> Harness {
    Harness::with_config(&TEST_CONFIG.replace("[identity]", &format!("{LIMITED}\n[identity]")))
}

struct Request {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    peer: std::net::IpAddr,
}

impl Request {
    fn new(path: &str, peer: &str, headers: &[(&str, &str)]) -> Self {
        let mut map = http::HeaderMap::new();
        map.insert("host", "gw.test".parse().unwrap());
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Self {
            method: http::Method::GET,
            uri: path.parse().unwrap(),
            headers: map,
            peer: peer.parse().unwrap(),
        }
    }

    fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            request_id: "resume-1",
            peer: Some(self.peer),
            peer_hints: Default::default(),
            body: &[],
        }
    }
}

/// Decides `req` with `state` (and `entropy`): start, then perform each need against
/// `memory` and resume, until decided. Returns the decision and the needs, in order.
fn drive(
    h: &Harness,
    state: &dyn State,
    entropy: &dyn Entropy,
    memory: &Memory,
    req: &Request,
) -> (Decision, Vec<Need>) {
    let auth = h.engine.authenticator(&h.keys);
    let adapters = Adapters {
        state,
        entropy,
        ..Adapters::new(&auth, &AllHealthy)
    };
    let gateway = h.engine.gateway();
    let parts = req.parts();
    let mut needs = Vec::new();
    let mut progress = gateway.start(&adapters, &parts, Timestamp::from_unix_secs(NOW));
    loop {
        match progress {
            Progress::Decided(d) => return (d, needs),
            Progress::Waiting(w) => {
                assert_eq!(w.waits() as usize, needs.len() + 1);
                let Need::State(op) = w.need() else {
                    panic!("only state is asked for here: {:?}", w.need());
                };
                let answer = Answer::State(memory.perform(op));
                needs.push(w.need().clone());
                progress = gateway.resume(&adapters, &parts, w, answer);
            }
        }
    }
}

fn token(h: &Harness, sub: &str) -> String {
    h.idp
        .sign("ES256", claims(serde_json::json!({ "sub": sub })))
}

#[test]
fn a_waiting_rate_limit_is_resumed_with_its_answer() {
    let h = harness();
    let memory = Memory::default();
    let req = Request::new("/limited", "203.0.113.7", &[]);
    for expected in ["forward:us", "forward:us", "rate_limited"] {
        let (d, needs) = drive(&h, &Later, &Counter::default(), &memory, &req);
        assert_eq!(verdict(&d), expected);
        assert_eq!(needs.len(), 1, "one wait: the route's limit");
        let Need::State(StateOp::RateLimit { checks, .. }) = &needs[0] else {
            panic!("{:?}", needs[0]);
        };
        assert_eq!(checks.len(), 1);
        assert!(
            checks[0].key.contains(":ip:203.0.113.7}"),
            "{}",
            checks[0].key
        );
    }
    assert_eq!(memory.performed.get(), 3, "each check performed once");
}

#[test]
fn a_decision_that_waited_equals_the_one_that_did_not() {
    let h = harness();
    let waited = Memory::default();
    let at_once = Memory::default();
    let bearer = format!("Bearer {}", token(&h, "user-7"));
    let req = Request::new(
        "/limited-after",
        "198.51.100.4",
        &[("authorization", &bearer)],
    );
    // Two rounds: the first forwards, the second is refused by the per-user limit. The
    // route waits twice per request (limits before and after authentication).
    for expected in ["forward:eu", "rate_limited"] {
        let entropy_w = Counter::default();
        let entropy_n = Counter::default();
        let (w, needs) = drive(&h, &Later, &entropy_w, &waited, &req);
        let (n, none) = drive(&h, &AtOnce(&at_once), &entropy_n, &at_once, &req);
        assert_eq!(none.len(), 0, "a state that answers at once never waits");
        assert_eq!(needs.len(), 2, "limits before and after authentication");
        assert_eq!(verdict(&w), expected);
        assert_eq!(verdict(&n), expected);
        assert_eq!(w.outcome, n.outcome);
        assert_eq!(
            w.audit, n.audit,
            "the same audit record, trace ids included"
        );
        assert!(w.audit.trace_id.is_some());
        assert_eq!(
            entropy_w.draws.get(),
            entropy_n.draws.get(),
            "random bytes are replayed on resume, not drawn again"
        );
    }
    assert_eq!(waited.performed.get(), at_once.performed.get());
    assert_eq!(waited.performed.get(), 4);
}

#[test]
fn a_resume_that_no_longer_matches_what_was_asked_fails_closed() {
    let h = harness();
    let memory = Memory::default();
    let auth = h.engine.authenticator(&h.keys);
    let adapters = Adapters {
        state: &Later,
        ..Adapters::new(&auth, &AllHealthy)
    };
    let gateway = h.engine.gateway();
    let asked = Request::new("/limited", "203.0.113.7", &[]);
    let other = Request::new("/limited", "203.0.113.99", &[]);
    let now = Timestamp::from_unix_secs(NOW);
    let Progress::Waiting(w) = gateway.start(&adapters, &asked.parts(), now) else {
        panic!("the limit waits");
    };
    let Need::State(op) = w.need() else {
        panic!("{:?}", w.need());
    };
    let answer = Answer::State(memory.perform(op));
    // Resumed with another client's request: the replay asks for another key than the one
    // answered, so the answer is not used; the limit's state is unavailable (deny).
    let Progress::Decided(d) = gateway.resume(&adapters, &other.parts(), w, answer) else {
        panic!("decided");
    };
    assert_eq!(verdict(&d), "state_unavailable");
}

#[test]
fn an_adapter_that_cannot_wait_fails_closed() {
    let h = harness();
    let auth = h.engine.authenticator(&h.keys);
    let adapters = Adapters {
        state: &Later,
        ..Adapters::new(&auth, &AllHealthy)
    };
    let req = Request::new("/limited", "203.0.113.7", &[]);
    let d = h
        .engine
        .gateway()
        .decide(&adapters, &req.parts(), Timestamp::from_unix_secs(NOW));
    assert_eq!(verdict(&d), "state_unavailable");
}

/// A verifier whose platform checks signatures itself (as the Worker's WebCrypto does): it
/// asks for every key and answers with the platform's verdict once it has one.
#[derive(Default)]
struct PlatformVerifier {
    verdicts: std::sync::Mutex<Vec<(SignatureCheck, bool)>>,
}

impl SignatureVerifier for PlatformVerifier {
    type Key = (KeyMaterial, PortableKey);

    fn prepare(&self, material: &KeyMaterial) -> Result<Self::Key, KeyError> {
        Ok((material.clone(), PortableVerifier.prepare(material)?))
    }

    fn verify(&self, alg: Algorithm, key: &Self::Key, message: &[u8], signature: &[u8]) -> bool {
        let verdicts = self.verdicts.lock().unwrap();
        let recorded = verdicts.iter().find(|(c, _)| {
            c.alg == alg && c.material == key.0 && c.message == message && c.signature == signature
        });
        match recorded {
            Some((_, valid)) => *valid,
            None => PortableVerifier.verify(alg, &key.1, message, signature),
        }
    }

    fn platform_checks(&self) -> bool {
        true
    }

    fn platform_check(&self, key: &Self::Key, _: Algorithm) -> Option<KeyMaterial> {
        Some(key.0.clone())
    }

    fn record(&self, check: &SignatureCheck, valid: bool) {
        self.verdicts.lock().unwrap().push((check.clone(), valid));
    }
}

#[test]
fn a_platform_signature_check_is_waited_for_and_its_verdict_used() {
    let h = harness();
    let token = token(&h, "user-9");
    let bearer = format!("Bearer {token}");
    let req = Request::new("/api/orders", "198.51.100.9", &[("authorization", &bearer)]);
    let gateway = h.engine.gateway();
    let now = Timestamp::from_unix_secs(NOW);
    let signing_input = token.rsplit_once('.').unwrap().0;
    for (valid, expected) in [(true, "forward:eu"), (false, "signature_invalid")] {
        let verifier = PlatformVerifier::default();
        let keys = KeyStore::new(h.engine.config(), &verifier);
        let auth = LocalAuthenticator {
            config: h.engine.config(),
            keys: &keys,
            verifier: &verifier,
        };
        let adapters = Adapters::new(&auth, &AllHealthy);
        let Progress::Waiting(w) = gateway.start(&adapters, &req.parts(), now) else {
            panic!("the decision waits for the platform's check");
        };
        let Need::Verify(check) = w.need() else {
            panic!("{:?}", w.need());
        };
        assert_eq!(check.message, signing_input.as_bytes());
        assert_eq!(check.alg, Algorithm::ES256);
        let answer = Answer::Verified(Some(valid));
        let Progress::Decided(d) = gateway.resume(&adapters, &req.parts(), w, answer) else {
            panic!("decided once the verdict is in");
        };
        assert_eq!(verdict(&d), expected);
    }
    // An adapter that cannot wait has no verdict: the portable verifier checks the token.
    let verifier = PlatformVerifier::default();
    let keys = KeyStore::new(h.engine.config(), &verifier);
    let auth = LocalAuthenticator {
        config: h.engine.config(),
        keys: &keys,
        verifier: &verifier,
    };
    let d = gateway.decide(&Adapters::new(&auth, &AllHealthy), &req.parts(), now);
    assert_eq!(verdict(&d), "forward:eu");
    assert!(verifier.verdicts.lock().unwrap().is_empty());
}
