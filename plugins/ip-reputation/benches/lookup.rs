//! One longest-prefix-match lookup against 100,000 prefixes, IPv4 and IPv6, for addresses
//! that hit (inside a listed prefix) and miss (probing every prefix length present).
#![allow(missing_docs, clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use ip_reputation::PrefixTable;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

const PREFIXES: usize = 100_000;
const PROBES: usize = 1024;

/// 100k IPv4 prefixes with lengths 16..=32 (every length present), and probe addresses.
fn v4(rng: &mut Rng) -> (PrefixTable, Vec<IpAddr>, Vec<IpAddr>) {
    let mut deny = Vec::with_capacity(PREFIXES);
    let mut nets = Vec::with_capacity(PREFIXES);
    for _ in 0..PREFIXES {
        let len = 16 + (rng.next() % 17) as u32;
        let net = (rng.next() as u32) & (u32::MAX << (32 - len));
        nets.push((net, len));
        deny.push(format!("{}/{len}", Ipv4Addr::from(net)));
    }
    let table = PrefixTable::new(&[], &deny).unwrap();
    let hits = (0..PROBES)
        .map(|_| {
            let (net, len) = nets[(rng.next() as usize) % nets.len()];
            let host = (rng.next() as u32) & !(u32::MAX << (32 - len));
            IpAddr::V4(Ipv4Addr::from(net | host))
        })
        .collect();
    let misses = (0..PROBES * 4)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))
        .filter(|ip| table.lookup(*ip).is_none())
        .take(PROBES)
        .collect();
    (table, hits, misses)
}

/// 100k IPv6 prefixes with lengths 16..=64 plus some /128s, and probe addresses.
fn v6(rng: &mut Rng) -> (PrefixTable, Vec<IpAddr>, Vec<IpAddr>) {
    let mut deny = Vec::with_capacity(PREFIXES);
    let mut nets = Vec::with_capacity(PREFIXES);
    for i in 0..PREFIXES {
        let len = if i % 10 == 0 {
            128
        } else {
            16 + (rng.next() % 49) as u32
        };
        let addr = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let net = addr & (u128::MAX << (128 - len));
        nets.push((net, len));
        deny.push(format!("{}/{len}", Ipv6Addr::from(net)));
    }
    let table = PrefixTable::new(&[], &deny).unwrap();
    let hits = (0..PROBES)
        .map(|_| {
            let (net, len) = nets[(rng.next() as usize) % nets.len()];
            let random = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let host = random & !(u128::MAX << (128 - len));
            IpAddr::V6(Ipv6Addr::from(net | host))
        })
        .collect();
    let misses = (0..PROBES * 4)
        .map(|_| {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(rng.next()) << 64) | u128::from(rng.next()),
            ))
        })
        .filter(|ip| table.lookup(*ip).is_none())
        .take(PROBES)
        .collect();
    (table, hits, misses)
}

fn lookup(c: &mut Criterion) {
    let mut rng = Rng(42);
    let mut group = c.benchmark_group("lookup_100k");
    for (family, (table, hits, misses)) in [("v4", v4(&mut rng)), ("v6", v6(&mut rng))] {
        assert!(hits.iter().all(|ip| table.lookup(*ip).is_some()));
        assert_eq!(misses.len(), PROBES);
        for (kind, probes) in [("hit", &hits), ("miss", &misses)] {
            let mut i = 0;
            group.bench_function(format!("{family}_{kind}"), |b| {
                b.iter(|| {
                    i = (i + 1) % probes.len();
                    black_box(table.lookup(black_box(probes[i])))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
