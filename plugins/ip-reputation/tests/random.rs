//! The prefix table against a brute-force scan: 100,000 random (often nested) prefixes,
//! thousands of random addresses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ip_reputation::{PrefixTable, Verdict};

/// SplitMix64: a tiny deterministic PRNG (no `rand` needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

fn mask(addr: u128, len: u32, bits: u32) -> u128 {
    let width_mask = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    if len == 0 {
        0
    } else {
        addr & (width_mask << (bits - len)) & width_mask
    }
}

struct Entry {
    network: u128,
    len: u32,
    verdict: Verdict,
}

/// `count` prefixes of a `bits`-wide family; about a third nest inside an earlier one.
fn prefixes(rng: &mut Rng, count: usize, bits: u32, lens: (u32, u32)) -> Vec<Entry> {
    let width_mask = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let mut out: Vec<Entry> = Vec::with_capacity(count);
    while out.len() < count {
        let (base, min_len) = match out.len() {
            n if n > 0 && rng.below(3) == 0 => {
                let parent = &out[rng.below(n as u64) as usize];
                (parent.network, parent.len)
            }
            _ => (0, lens.0),
        };
        let min_len = min_len.max(lens.0).min(bits);
        let len = min_len + rng.below(u64::from(lens.1.min(bits) - min_len + 1)) as u32;
        // Keep the parent's bits, randomise the rest, then mask.
        let keep = mask(width_mask, min_len, bits);
        let addr = (base & keep) | (rng.u128() & width_mask & !keep);
        let verdict = if rng.below(10) < 3 {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        out.push(Entry {
            network: mask(addr, len, bits),
            len,
            verdict,
        });
    }
    out
}

/// A random address: half the time inside a random prefix, otherwise anywhere.
fn address(rng: &mut Rng, entries: &[Entry], bits: u32) -> u128 {
    let width_mask = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let any = rng.u128() & width_mask;
    if rng.below(2) == 0 {
        let e = &entries[rng.below(entries.len() as u64) as usize];
        let keep = mask(width_mask, e.len, bits);
        e.network | (any & !keep)
    } else {
        any
    }
}

/// The longest matching entry by scanning all of them (allow wins a tie).
fn brute_force(entries: &[Entry], addr: u128, bits: u32) -> Option<(u128, u32, Verdict)> {
    let mut best: Option<(u128, u32, Verdict)> = None;
    for e in entries {
        if mask(addr, e.len, bits) != e.network {
            continue;
        }
        best = match best {
            Some((_, len, _)) if len > e.len => best,
            Some((_, len, Verdict::Allow)) if len == e.len => best,
            _ => Some((e.network, e.len, e.verdict)),
        };
    }
    best
}

fn to_ip(value: u128, bits: u32) -> IpAddr {
    if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

/// Entries repeating an earlier (network, length).
fn duplicates(entries: &[Entry]) -> usize {
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .filter(|e| !seen.insert((e.network, e.len)))
        .count()
}

fn table_of(entries: &[(&[Entry], u32)]) -> PrefixTable {
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for (list, bits) in entries {
        for e in *list {
            // Write some entries with host bits set: the table must mask them.
            let text = format!(
                "{}/{}",
                to_ip(e.network | u128::from(e.len % 2), *bits),
                e.len
            );
            match e.verdict {
                Verdict::Allow => allow.push(text),
                Verdict::Deny => deny.push(text),
            }
        }
    }
    PrefixTable::new(&allow, &deny).unwrap()
}

#[test]
fn lookup_matches_a_brute_force_scan_over_100k_random_prefixes() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let v4 = prefixes(&mut rng, 50_000, 32, (12, 32));
    let v6 = prefixes(&mut rng, 50_000, 128, (16, 128));
    let probes_v4: Vec<u128> = (0..2_000).map(|_| address(&mut rng, &v4, 32)).collect();
    let probes_v6: Vec<u128> = (0..2_000).map(|_| address(&mut rng, &v6, 128)).collect();
    let table = table_of(&[(&v4, 32), (&v6, 128)]);
    assert_eq!(table.len(), 100_000 - duplicates(&v4) - duplicates(&v6));

    for (entries, probes, bits) in [(&v4, &probes_v4, 32), (&v6, &probes_v6, 128)] {
        let (mut allowed, mut denied, mut misses) = (0, 0, 0);
        for &addr in probes {
            let expected = brute_force(entries, addr, bits);
            let got = table.lookup(to_ip(addr, bits)).map(|m| {
                let network = match m.network {
                    IpAddr::V4(a) => u128::from(u32::from(a)),
                    IpAddr::V6(a) => u128::from(a),
                };
                (network, u32::from(m.len), m.verdict)
            });
            assert_eq!(got, expected, "{}", to_ip(addr, bits));
            match expected {
                Some((_, _, Verdict::Allow)) => allowed += 1,
                Some((_, _, Verdict::Deny)) => denied += 1,
                None => misses += 1,
            }
        }
        // The probe mix exercised every outcome in both families.
        assert!(
            allowed > 200 && denied > 500 && misses > 200,
            "IPv{}: allowed {allowed}, denied {denied}, misses {misses}",
            if bits == 32 { 4 } else { 6 }
        );
    }
}
