//! Issue 19: the shared state behind Redis Sentinel (`[state] sentinels`, `service`). Two
//! gateways share a route-wide limit while the primary is killed mid-load: during the
//! failover every request is refused 503 `state_unavailable` (`on_unavailable = "deny"`),
//! never admitted unchecked; once the sentinels have promoted the replica both gateways
//! reconnect to it by themselves and the limit holds with the count it had. Both engines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_tests::host::{get, reason, start_engine_with};
use portcullis_tests::net::Backend;
use portcullis_tests::redis::{Redis, SentinelSet};
use portcullis_tests::{INTERNAL_ISSUER_TABLE, eu_only, internal_key_file, on_every_engine};

/// The limit: no refill during the test, so exactly `BURST` requests may pass in all.
const BURST: usize = 40;

fn config(backend: &str, sentinels: &str, service: &str) -> String {
    format!(
        r#"{INTERNAL_ISSUER_TABLE}
{eu}
[[route]]
path = "/limited"
auth = "public"
[[route.rate_limit]]
name = "global"
key = "route"
rate = 1
per = "1h"
burst = {BURST}

[state]
backend = "redis"
sentinels = {sentinels}
service = "{service}"
on_unavailable = "deny"
timeout = "300ms"
"#,
        eu = eu_only(backend)
    )
}

/// One answer of the load: when (since the start), its status and reason.
type Answer = (Duration, u16, String);

fn a_limit_holds_through_a_sentinel_failover(engine: &str) {
    let mut set = SentinelSet::start("portcullis");
    let backend = Backend::start("eu");
    let text = config(&backend.server.url(), &set.addresses(), &set.service);
    let gateways = [
        start_engine_with(&text, engine, &[internal_key_file()]),
        start_engine_with(&text, engine, &[internal_key_file()]),
    ];
    let start = Instant::now();
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The load: one request every 100 ms, alternating between the gateways.
    let load = {
        let answers = answers.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = get(&gateways[i % 2], "/limited", None, &[]);
                answers
                    .lock()
                    .unwrap()
                    .push((start.elapsed(), r.status, reason(&r)));
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let admitted = |answers: &Arc<Mutex<Vec<Answer>>>| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _)| *s == 200)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while admitted(&answers) < 8 {
        assert!(Instant::now() < deadline, "{:?}", answers.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }

    // The replica has caught up with the counter, then the primary dies mid-load.
    let counter = set
        .primary
        .keys()
        .into_iter()
        .find(|k| k.contains("rl:"))
        .expect("the counter is on the primary");
    while set.primary.get_bytes(&counter) != set.replica.get_bytes(&counter) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    set.primary.kill();
    let killed_at = start.elapsed();

    // Wait for the promotion, then for the load to have run past the burst.
    let deadline = Instant::now() + Duration::from_secs(60);
    while set.current_primary() != Some(set.replica.port) {
        assert!(
            Instant::now() < deadline,
            "the sentinels never promoted the replica"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused_after = |answers: &Arc<Mutex<Vec<Answer>>>| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, s, _)| *at > killed_at && *s == 429)
            .count()
    };
    while refused_after(&answers) < 5 {
        assert!(
            Instant::now() < deadline,
            "the limit never refused after the failover: {:?}",
            answers.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let answers = answers.lock().unwrap().clone();

    // Only three answers exist: admitted, limited, or refused for want of the state.
    for (at, status, why) in &answers {
        assert!(
            matches!(
                (*status, why.as_str()),
                (200, "") | (429, "rate_limited") | (503, "state_unavailable")
            ),
            "at {at:?}: {status} {why}"
        );
    }
    // The outage: from the kill to the first answer that is not 503; after it, no 503.
    let after: Vec<&Answer> = answers.iter().filter(|(at, ..)| *at > killed_at).collect();
    let recovered = after
        .iter()
        .position(|(_, s, _)| *s != 503)
        .expect("no answer after the failover");
    let outage = after[recovered].0 - killed_at;
    assert!(
        after[recovered..].iter().all(|(_, s, _)| *s != 503),
        "503 after the recovery: {after:?}"
    );
    // The limit held across the failover: the count went on from where it was. With one
    // request in flight at the kill, that one may have counted without its answer (503)
    // or been answered before its count reached the replica: one either way.
    let total = answers.iter().filter(|(_, s, _)| *s == 200).count();
    assert!(
        total.abs_diff(BURST) <= 1,
        "{total} admitted with a burst of {BURST}: {answers:?}"
    );
    let before_kill = answers
        .iter()
        .filter(|(at, s, _)| *at < killed_at && *s == 200)
        .count();
    assert!((8..BURST).contains(&before_kill), "{before_kill}");
    eprintln!(
        "{engine}: primary killed after {before_kill} admitted; {recovered} requests refused \
         503 over {outage:?} until the promoted replica answered; {total} admitted in all"
    );
    // The promoted replica holds the counter now.
    assert!(Redis::at(set.replica.port).get_bytes(&counter).is_some());
}

on_every_engine!(a_limit_holds_through_a_sentinel_failover);
