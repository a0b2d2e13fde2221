//! Issue 19: the shared state in a real 3-primary Redis Cluster (`[state] cluster`). Two
//! gateways given one seed node share per-address limits whose counters spread over the
//! primaries, and a route whose limits count different things checks them all at once in
//! one slot (without the hash tags the script would be refused `CROSSSLOT`). The key
//! listing plugins and bundles page through walks every primary. Both engines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::time::Duration;

use portcullis_core::config::RedisServers;
use portcullis_host::state::{RedisStore, Store};
use portcullis_tests::host::{get, reason, start_engine_with};
use portcullis_tests::net::{Backend, Resp};
use portcullis_tests::redis::RedisCluster;
use portcullis_tests::{INTERNAL_ISSUER_TABLE, eu_only, internal_key_file, on_every_engine};

fn config(backend: &str, seeds: &str) -> String {
    format!(
        r#"{INTERNAL_ISSUER_TABLE}
{eu}
[client]
trusted_proxies = ["127.0.0.0/8"]
ip_header = "x-forwarded-for"

# Two windows per address: tagged by the address, so clients spread over the cluster.
[[route]]
path = "/per-ip"
auth = "public"
[[route.rate_limit]]
name = "burst"
key = "ip"
rate = 1
per = "1h"
burst = 2
[[route.rate_limit]]
name = "daily"
key = "ip"
rate = 100
per = "1d"

# An address limit and a route-wide one, checked together: tagged by the route.
[[route]]
path = "/mixed"
auth = "public"
[[route.rate_limit]]
name = "per-ip"
key = "ip"
rate = 1
per = "1h"
burst = 3
[[route.rate_limit]]
name = "global"
key = "route"
rate = 1
per = "1h"
burst = 5

[state]
backend = "redis"
cluster = {seeds}
timeout = "1s"
"#,
        eu = eu_only(backend)
    )
}

fn status(r: &Resp) -> (u16, String) {
    (r.status, reason(r))
}

/// Which primary holds each key (by index), for the keys matching `part`.
fn homes(cluster: &RedisCluster, part: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        for k in node.keys() {
            if k.contains(part) {
                out.push((k, i));
            }
        }
    }
    out
}

fn limits_are_shared_through_a_redis_cluster(engine: &str) {
    let cluster = RedisCluster::start(3);
    let backend = Backend::start("eu");
    let text = config(&backend.server.url(), &cluster.seeds());
    let a = start_engine_with(&text, engine, &[internal_key_file()]);
    let b = start_engine_with(&text, engine, &[internal_key_file()]);
    let ok = (200, String::new());
    let limited = (429, "rate_limited".to_owned());

    // Per address, across both gateways: the third request is refused.
    let addresses: Vec<String> = (1..=12).map(|i| format!("198.51.100.{i}")).collect();
    for ip in &addresses {
        let from = [("x-forwarded-for", ip.as_str())];
        assert_eq!(status(&get(&a, "/per-ip", None, &from)), ok, "{ip}");
        assert_eq!(status(&get(&b, "/per-ip", None, &from)), ok, "{ip}");
        assert_eq!(status(&get(&a, "/per-ip", None, &from)), limited, "{ip}");
    }
    // Each address's two counters share a node; the addresses spread over the primaries.
    let per_ip = homes(&cluster, "198.51.100.");
    assert_eq!(per_ip.len(), 2 * addresses.len(), "{per_ip:?}");
    for ip in &addresses {
        let nodes: BTreeSet<usize> = per_ip
            .iter()
            .filter(|(k, _)| k.contains(&format!("{ip}}}")))
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(nodes.len(), 1, "{ip}: {per_ip:?}");
    }
    let used: BTreeSet<usize> = per_ip.iter().map(|(_, n)| *n).collect();
    assert!(used.len() >= 2, "every counter on one primary: {per_ip:?}");

    // Two counters of different kinds, checked at once (one slot): the address limit
    // (burst 3), then the route-wide one (burst 5) refuse in turn.
    let x = [("x-forwarded-for", "203.0.113.1")];
    let y = [("x-forwarded-for", "203.0.113.2")];
    for gw in [&a, &b, &a] {
        assert_eq!(status(&get(gw, "/mixed", None, &x)), ok);
    }
    assert_eq!(status(&get(&b, "/mixed", None, &x)), limited);
    for gw in [&b, &a] {
        assert_eq!(status(&get(gw, "/mixed", None, &y)), ok);
    }
    let global = get(&b, "/mixed", None, &y);
    assert_eq!(status(&global), limited);
    assert!(
        global
            .header("ratelimit")
            .unwrap_or_default()
            .contains("\"global\""),
        "{:?}",
        global.header("ratelimit")
    );
    let mixed = homes(&cluster, "rl:{1}:");
    assert_eq!(mixed.len(), 3, "{mixed:?}"); // per-ip for x and y, global
    let nodes: BTreeSet<usize> = mixed.iter().map(|(_, n)| *n).collect();
    assert_eq!(nodes.len(), 1, "{mixed:?}");
}

on_every_engine!(limits_are_shared_through_a_redis_cluster);

/// The key listing (wasi:keyvalue `list-keys`, plugin buckets) pages through every primary:
/// each key once, over several pages, none of another prefix.
#[test]
fn keys_are_listed_from_every_primary() {
    let cluster = RedisCluster::start(3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let servers = RedisServers::Cluster {
        nodes: vec![format!("redis://127.0.0.1:{}", cluster.nodes[1].port)],
    };
    let store = Store::Redis(Box::new(
        RedisStore::with_servers(&servers, None, None, 2, Duration::from_secs(2), "t:").unwrap(),
    ));
    let wanted: BTreeSet<String> = (0..4_000).map(|i| format!("bucket/{i}")).collect();
    rt.block_on(async {
        for k in &wanted {
            store
                .set(k, b"v".to_vec(), Duration::from_secs(60))
                .await
                .unwrap();
        }
        store
            .set("other/1", b"v".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
    });
    let spread: Vec<usize> = cluster.nodes.iter().map(|n| n.keys().len()).collect();
    assert!(spread.iter().all(|n| *n > 1_000), "{spread:?}");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let (keys, next) = rt
            .block_on(store.keys("bucket/", cursor.as_deref()))
            .unwrap();
        seen.extend(keys);
        pages += 1;
        assert!(pages < 100, "the listing does not end");
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert!(
        pages > 3,
        "one page per primary at least, then the rest: {pages}"
    );
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique, wanted);
    // SCAN may return a key twice; never a key of another prefix.
    assert!(seen.len() >= wanted.len());
}
