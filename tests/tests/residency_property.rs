//! Property: whatever the configuration, the residency claim and backend health, a request
//! is never forwarded to a backend outside the jurisdiction of the user's home region; a
//! configuration that would allow it does not load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Write as _;

use portcullis_core::config::{self, RegionChoice, RegionId};
use portcullis_core::{
    BackendHealth, BackendId, Engine, Outcome, PortableVerifier, RequestParts, Timestamp,
};
use portcullis_tests::*;
use proptest::prelude::*;
use serde_json::json;

#[derive(Clone, Debug)]
struct Region {
    jurisdiction: u8,
    backends: usize,
    failover: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Claim {
    Region(usize),
    Unknown,
    Missing,
    NotAString,
}

#[derive(Clone, Debug)]
struct Case {
    regions: Vec<Region>,
    missing: Option<usize>,
    claim: Claim,
    down: Vec<bool>,
}

fn region_strategy(n: usize) -> impl Strategy<Value = Region> {
    (0u8..3, 1usize..4, proptest::collection::vec(0..n, 0..3)).prop_map(
        |(jurisdiction, backends, failover)| Region {
            jurisdiction,
            backends,
            failover,
        },
    )
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (1usize..6)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(region_strategy(n), n),
                proptest::option::of(0..n),
                prop_oneof![
                    (0..n).prop_map(Claim::Region),
                    Just(Claim::Unknown),
                    Just(Claim::Missing),
                    Just(Claim::NotAString)
                ],
                proptest::collection::vec(any::<bool>(), 18),
                proptest::bool::weighted(0.8),
            )
        })
        .prop_map(|(mut regions, missing, claim, down, legal_only)| {
            // Mostly legal failover lists, so most cases exercise routing, not load errors.
            if legal_only {
                let jurisdictions: Vec<u8> = regions.iter().map(|r| r.jurisdiction).collect();
                for (i, r) in regions.iter_mut().enumerate() {
                    r.failover
                        .retain(|&f| f != i && jurisdictions[f] == r.jurisdiction);
                }
            }
            Case {
                regions,
                missing,
                claim,
                down,
            }
        })
}

fn name(i: usize) -> String {
    format!("r{i}")
}

fn config_text(case: &Case) -> String {
    let mut t = String::from(
        "[[issuer]]\nname = \"main\"\nissuer = \"https://idp.test\"\njwks_file = \"main.jwks.json\"\naudiences = [\"api://shop\"]\nalgorithms = [\"ES256\"]\n\n",
    );
    for (i, r) in case.regions.iter().enumerate() {
        let backends: Vec<String> = (0..r.backends)
            .map(|b| format!("\"http://127.0.0.{}:{}\"", i + 1, 9000 + b))
            .collect();
        let failover: Vec<String> = r
            .failover
            .iter()
            .map(|f| format!("\"{}\"", name(*f)))
            .collect();
        writeln!(
            t,
            "[region.{}]\njurisdiction = \"J{}\"\nbackends = [{}]\nfailover = [{}]\n",
            name(i),
            r.jurisdiction,
            backends.join(", "),
            failover.join(", ")
        )
        .unwrap();
    }
    let missing = case.missing.map_or("deny".to_owned(), name);
    writeln!(t, "[residency]\nmissing = \"{missing}\"\n\n[[route]]\npath = \"/\"\n\n[audit]\nsubject_key_file = \"audit.key\"").unwrap();
    t
}

struct Health<'a>(&'a [bool], &'a [Region]);

impl BackendHealth for Health<'_> {
    fn is_healthy(&self, b: BackendId) -> bool {
        let flat: usize = self.1[..b.region.0]
            .iter()
            .map(|r| r.backends)
            .sum::<usize>()
            + b.index;
        !self.0[flat % self.0.len()]
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn residency_never_crosses_jurisdiction(case in case_strategy()) {
        let idp = TestIdp::shared();
        let partner = jwt_simple::prelude::ES256KeyPair::generate();
        let text = config_text(&case);
        let crosses = case.regions.iter().enumerate().any(|(i, r)| {
            r.failover.iter().any(|&f| f == i || case.regions[f].jurisdiction != r.jurisdiction)
        });
        let loaded = config::load(&text, "prop.toml", &test_files(idp, &partner));
        // Cross-jurisdiction (or self) failover must be refused at load time.
        prop_assert_eq!(loaded.is_err(), crosses, "{}", text);
        let Ok(cfg) = loaded else { return Ok(()); };

        let residency = match &case.claim {
            Claim::Region(i) => json!(name(*i)),
            Claim::Unknown => json!("atlantis"),
            Claim::Missing => json!(null),
            Claim::NotAString => json!(1),
        };
        let token = idp.sign("ES256", claims(json!({ "residency": residency })));
        let engine = Engine::new(cfg, PortableVerifier);
        let keys = engine.new_key_store();
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers.insert("host", "gw.test".parse().unwrap());
        let uri: http::Uri = "/anything".parse().unwrap();
        let req = RequestParts { method: &http::Method::GET, uri: &uri, headers: &headers, request_id: "p", peer: None, peer_hints: Default::default(), body: &[] };
        let health = Health(&case.down, &case.regions);
        let d = engine.decide(&keys, &req, Timestamp::from_unix_secs(NOW), &health);
        let cfg = engine.config();

        let home = match &case.claim {
            Claim::Region(i) => Some(*i),
            Claim::Missing => case.missing,
            Claim::Unknown | Claim::NotAString => None,
        };
        match (&d.outcome, home) {
            (Outcome::Forward(f), Some(home)) => {
                let to = f.backend.region.0;
                prop_assert_eq!(&cfg.regions[to].jurisdiction, &cfg.regions[home].jurisdiction);
                prop_assert!(health.is_healthy(f.backend), "forwarded to a down backend");
                prop_assert!(to == home || cfg.regions[home].failover.contains(&RegionId(to)));
                let home_healthy = (0..cfg.regions[home].backends.len()).any(|index| health.is_healthy(BackendId { region: RegionId(home), index }));
                prop_assert!(!home_healthy || to == home, "left a healthy home region");
            }
            (Outcome::Forward(_), None) => prop_assert!(false, "forwarded without a known home region"),
            (Outcome::Respond(r), Some(home)) => {
                prop_assert_eq!(r.reason.code(), "residency_unavailable");
                let reachable = std::iter::once(RegionId(home)).chain(cfg.regions[home].failover.iter().copied())
                    .any(|rid| (0..cfg.regions[rid.0].backends.len()).any(|index| health.is_healthy(BackendId { region: rid, index })));
                prop_assert!(!reachable, "refused although a same-jurisdiction backend was up");
            }
            (Outcome::Respond(r), None) => {
                let want = match (&case.claim, cfg.residency.missing) {
                    (Claim::Missing, RegionChoice::Deny) => "residency_missing",
                    _ => "residency_unknown",
                };
                prop_assert_eq!(r.reason.code(), want);
            }
        }
    }
}
