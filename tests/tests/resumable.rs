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

use portcullis_core::{
    Adapters, AllHealthy, Answer, Decision, Entropy, Need, NoState, Progress, RequestParts,
    SignatureCheck, State, StateAnswer, StateOp, StateResult, Timestamp,
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
            checks[0].key.ends_with("ip:203.0.113.7"),
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

/// A keys port whose platform checks signatures itself (as the Worker's WebCrypto does):
/// it names a check for every token and takes the platform's verdict.
struct PlatformChecked<'a> {
    local: portcullis_core::authenticate::LocalAuthenticator<'a, portcullis_core::PortableVerifier>,
    verdict: Cell<Option<bool>>,
}

impl portcullis_core::Authenticator for PlatformChecked<'_> {
    fn authenticate(
        &self,
        token: &str,
        route_issuers: &[portcullis_core::IssuerId],
        now: Timestamp,
    ) -> Result<portcullis_core::VerifiedIdentity, portcullis_core::AuthFailure> {
        if self.verdict.get() == Some(false) {
            return Err(portcullis_core::AuthFailure::new(
                portcullis_core::Reason::SignatureInvalid,
                "the platform refused the signature",
            ));
        }
        self.local.authenticate(token, route_issuers, now)
    }

    fn signature_check(
        &self,
        token: &str,
        _: &[portcullis_core::IssuerId],
        _: Timestamp,
    ) -> Option<SignatureCheck> {
        Some(SignatureCheck {
            alg: portcullis_core::Algorithm::ES256,
            material: portcullis_core::KeyMaterial::Symmetric {
                secret: b"key".to_vec(),
            },
            message: token.as_bytes().to_vec(),
            signature: Vec::new(),
        })
    }

    fn checked(&self, _: &SignatureCheck, valid: bool) {
        self.verdict.set(Some(valid));
    }
}

#[test]
fn a_platform_signature_check_is_waited_for_and_its_verdict_used() {
    let h = harness();
    let bearer = format!("Bearer {}", token(&h, "user-9"));
    let req = Request::new("/api/orders", "198.51.100.9", &[("authorization", &bearer)]);
    let gateway = h.engine.gateway();
    let now = Timestamp::from_unix_secs(NOW);
    for (valid, expected) in [(true, "forward:eu"), (false, "signature_invalid")] {
        let auth = PlatformChecked {
            local: h.engine.authenticator(&h.keys),
            verdict: Cell::new(None),
        };
        let adapters = Adapters::new(&auth, &AllHealthy);
        let Progress::Waiting(w) = gateway.start(&adapters, &req.parts(), now) else {
            panic!("the decision waits for the platform's check");
        };
        let Need::Verify(check) = w.need() else {
            panic!("{:?}", w.need());
        };
        assert_eq!(check.message, token_of(&bearer).as_bytes());
        let answer = Answer::Verified(Some(valid));
        let Progress::Decided(d) = gateway.resume(&adapters, &req.parts(), w, answer) else {
            panic!("decided once the verdict is in");
        };
        assert_eq!(verdict(&d), expected);
    }
    // An adapter that cannot wait has no verdict: the token is verified as usual.
    let auth = PlatformChecked {
        local: h.engine.authenticator(&h.keys),
        verdict: Cell::new(None),
    };
    let d = gateway.decide(&Adapters::new(&auth, &AllHealthy), &req.parts(), now);
    assert_eq!(verdict(&d), "forward:eu");
    assert_eq!(auth.verdict.get(), None);
}

fn token_of(bearer: &str) -> &str {
    bearer.trim_start_matches("Bearer ")
}
