//! Cost of one rate-limit check (GCRA), as the gateway pays it per request:
//!
//! * `memory/*`: the in-process store (sharded, locks the shards involved).
//! * `redis/*`: a real `redis-server` on loopback through the pooled client (one Lua
//!   script per check, whatever the number of limits) — run from one task, so this is
//!   the latency of one check, not the server's throughput.
//! * `redis-cluster/*`: the same against a 3-primary Redis Cluster (`[state] cluster`): the
//!   keys carry the hash tag the gateway gives them (one slot per check, spread by client).
//!
//! Each iteration checks a fresh client key among 10 000 (so buckets are mostly allowing,
//! as in normal traffic) against one or three limits.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::limits::LimitCheck;
use portcullis_core::{StateAnswer, StateOp, Timestamp};
use portcullis_host::state::Store;
use portcullis_tests::redis::{Redis, RedisCluster};

fn checks(i: u64, n: usize) -> Vec<LimitCheck> {
    (0..n)
        .map(|k| LimitCheck {
            key: format!("rl:{{0:ip:198.51.{}.{}}}:limit{k}", (i / 256) % 40, i % 256),
            interval_us: 10_000,
            burst: 100,
        })
        .collect()
}

fn now() -> Timestamp {
    Timestamp::from_duration(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    )
}

fn rate_limits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("rate_limit");

    let memory = Store::memory(1_000_000);
    for n in [1, 3] {
        let mut i = 0u64;
        group.bench_function(format!("memory/{n}_limits"), |b| {
            b.iter(|| {
                i = (i + 1) % 10_000;
                // The native engine's path: memory answers the decision's operation at once.
                let op = StateOp::RateLimit {
                    checks: checks(i, n),
                    now: now(),
                };
                let answer = memory.try_now(&op).unwrap().unwrap();
                assert!(matches!(answer, StateAnswer::Limits(s) if s.len() == n));
            })
        });
    }

    let server = Redis::start();
    let redis = Store::Redis(Box::new(
        portcullis_host::state::RedisStore::new(
            &server.url(),
            4,
            std::time::Duration::from_millis(200),
            "bench:",
        )
        .unwrap(),
    ));
    for n in [1, 3] {
        let mut i = 0u64;
        group.bench_function(format!("redis/{n}_limits"), |b| {
            b.iter(|| {
                i = (i + 1) % 10_000;
                let statuses = rt.block_on(redis.rate_limit(&checks(i, n), now())).unwrap();
                assert_eq!(statuses.len(), n);
            })
        });
    }
    let cluster = RedisCluster::start(3);
    let servers = portcullis_core::config::RedisServers::Cluster {
        nodes: vec![format!("redis://127.0.0.1:{}", cluster.nodes[0].port)],
    };
    let clustered = Store::Redis(Box::new(
        portcullis_host::state::RedisStore::with_servers(
            &servers,
            None,
            None,
            4,
            std::time::Duration::from_millis(200),
            "bench:",
        )
        .unwrap(),
    ));
    for n in [1, 3] {
        let mut i = 0u64;
        group.bench_function(format!("redis-cluster/{n}_limits"), |b| {
            b.iter(|| {
                i = (i + 1) % 10_000;
                let statuses = rt
                    .block_on(clustered.rate_limit(&checks(i, n), now()))
                    .unwrap();
                assert_eq!(statuses.len(), n);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rate_limits);
criterion_main!(benches);
