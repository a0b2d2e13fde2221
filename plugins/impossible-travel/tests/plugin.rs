//! Behaviour of the impossible-travel plugin against the native test host.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use impossible_travel::{ImpossibleTravel, LABEL, UNKNOWN_COUNTRY_LABEL, state_key};
use portcullis_plugin::testing::TestHost;
use portcullis_plugin::{Action, Assessment, Context, Host, Identity, RiskPlugin};
use serde_json::json;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

fn plugin(host: &TestHost) -> ImpossibleTravel {
    host.plugin::<ImpossibleTravel>(json!({})).unwrap()
}

fn identity(issuer: &str, subject: &str) -> Identity {
    Identity {
        issuer: issuer.into(),
        subject: subject.into(),
        ..Identity::default()
    }
}

fn req(subject: &str, country: &str) -> Context {
    Context::new("GET", "/account")
        .with_identity(identity("https://idp.example", subject))
        .with_country(country)
}

/// Sees `subject` in `first`, then `gap_ms` later in `second`; returns the second verdict.
fn trip(
    p: &ImpossibleTravel,
    host: &mut TestHost,
    subject: &str,
    first: &str,
    second: &str,
    gap_ms: u64,
) -> Assessment {
    let a = p.assess(&req(subject, first), host);
    assert_eq!(a.score, 0, "first sighting of {subject} in {first}: {a:?}");
    host.advance_ms(gap_ms);
    p.assess(&req(subject, second), host)
}

fn assert_flagged(a: &Assessment) {
    assert_eq!(a.score, 80, "{a:?}");
    assert_eq!(a.labels, vec![LABEL.to_owned()]);
    assert_eq!(
        a.action,
        Action::Allow,
        "no action configured: thresholds decide"
    );
}

fn assert_clear(a: &Assessment) {
    assert_eq!(a.score, 0, "{a:?}");
    assert!(a.labels.is_empty(), "{a:?}");
}

#[test]
fn de_then_au_five_minutes_later_is_flagged() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    let a = trip(&p, &mut host, "alice", "DE", "AU", 5 * MINUTE);
    assert_flagged(&a);
    assert!(a.reason.starts_with("DE→AU "), "{}", a.reason);
    assert!(a.reason.contains(" km in 0.08 h ("), "{}", a.reason);
    assert!(a.reason.ends_with(" km/h)"), "{}", a.reason);
    // About 12,600 km (well above the 1000 km/h limit at 5 minutes), printed with separators.
    let km: String = a.reason["DE→AU ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .replace(',', "");
    let km: u64 = km.parse().unwrap();
    assert!((12_000..15_000).contains(&km), "{}", a.reason);
}

#[test]
fn de_then_au_two_days_later_is_not_flagged() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    assert_clear(&trip(&p, &mut host, "alice", "DE", "AU", 2 * DAY));
}

#[test]
fn de_then_au_just_under_and_over_the_speed_limit() {
    // About 12,600 km shortest plausible distance: 1000 km/h needs about 12.6 hours.
    let mut host = TestHost::new();
    let p = plugin(&host);
    assert_flagged(&trip(&p, &mut host, "fast", "DE", "AU", 12 * HOUR));
    let mut host = TestHost::new();
    assert_clear(&trip(&p, &mut host, "slow", "DE", "AU", 14 * HOUR));
}

#[test]
fn de_then_fr_within_an_hour_is_not_flagged() {
    // Neighbours: about 820 km between centroids, but a border crossing is minutes.
    for gap in [0, MINUTE, 5 * MINUTE, 30 * MINUTE, 59 * MINUTE] {
        let mut host = TestHost::new();
        let p = plugin(&host);
        assert_clear(&trip(&p, &mut host, "bob", "DE", "FR", gap));
        host.advance_ms(MINUTE);
        assert_clear(&p.assess(&req("bob", "DE"), &mut host));
    }
}

#[test]
fn long_land_borders_never_trip() {
    // US and Mexico centroids are 1,600 km apart; Chile and Peru nearly 3,000 km.
    for (a, b) in [("US", "MX"), ("CL", "PE"), ("RU", "CN"), ("CA", "US")] {
        let mut host = TestHost::new();
        let p = plugin(&host);
        assert_clear(&trip(&p, &mut host, "carol", a, b, MINUTE));
    }
}

#[test]
fn short_hops_across_water_use_country_size() {
    // Copenhagen–Malmö is a bridge (no land border): 660 km between centroids, but both
    // countries' extent brings the plausible trip under min_distance_km.
    let mut host = TestHost::new();
    let p = plugin(&host);
    assert_clear(&trip(&p, &mut host, "dave", "DK", "SE", 20 * MINUTE));
    let mut host = TestHost::new();
    assert_clear(&trip(&p, &mut host, "dave", "GB", "FR", 20 * MINUTE));
}

#[test]
fn far_non_neighbours_in_europe_are_flagged_when_fast() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    assert_flagged(&trip(&p, &mut host, "erin", "PT", "FI", 30 * MINUTE));
}

#[test]
fn simultaneous_sightings_far_apart_are_flagged() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    let a = trip(&p, &mut host, "frank", "BR", "JP", 0);
    assert_flagged(&a);
    assert!(a.reason.contains("0.00 h (simultaneous)"), "{}", a.reason);
}

#[test]
fn out_of_order_clock_counts_as_simultaneous() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    let start = host.now_ms();
    p.assess(&req("gina", "US"), &mut host);
    host.set_now_ms(start - HOUR);
    assert_flagged(&p.assess(&req("gina", "IN"), &mut host));
}

#[test]
fn no_identity_or_no_country_is_allowed_and_stores_nothing() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    let anonymous = Context::new("GET", "/").with_country("DE");
    let no_country = Context::new("GET", "/").with_identity(identity("iss", "alice"));
    let empty_subject = Context::new("GET", "/")
        .with_identity(identity("iss", ""))
        .with_country("DE");
    for ctx in [anonymous, no_country, empty_subject] {
        assert_eq!(p.assess(&ctx, &mut host), Assessment::allow());
    }
    assert!(host.is_empty());
}

#[test]
fn state_expires_after_remember_secs() {
    let mut host = TestHost::new();
    let p = host
        .plugin::<ImpossibleTravel>(json!({"remember_secs": 600}))
        .unwrap();
    p.assess(&req("hank", "DE"), &mut host);
    assert_eq!(host.len(), 1);
    host.advance_ms(10 * MINUTE);
    assert!(host.is_empty(), "forgotten after 600 s");
    // AU right after the memory lapsed: nothing to compare with.
    assert_clear(&p.assess(&req("hank", "AU"), &mut host));
    // But one second short of expiry it would have been flagged.
    let mut host = TestHost::new();
    p.assess(&req("hank", "DE"), &mut host);
    host.advance_ms(10 * MINUTE - 1000);
    assert_flagged(&p.assess(&req("hank", "AU"), &mut host));
}

#[test]
fn default_memory_is_thirty_days() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    p.assess(&req("ivy", "DE"), &mut host);
    host.advance_ms(30 * DAY - 1);
    assert_eq!(host.len(), 1);
    host.advance_ms(1);
    assert!(host.is_empty());
}

#[test]
fn different_subjects_are_independent() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    p.assess(&req("alice", "DE"), &mut host);
    host.advance_ms(MINUTE);
    // bob's first sighting: nothing to compare with.
    assert_clear(&p.assess(&req("bob", "AU"), &mut host));
    host.advance_ms(MINUTE);
    // alice is still in DE as far as the plugin knows.
    assert_clear(&p.assess(&req("alice", "DE"), &mut host));
    host.advance_ms(MINUTE);
    assert_flagged(&p.assess(&req("alice", "AU"), &mut host));
    assert_eq!(host.len(), 2);
}

#[test]
fn same_subject_at_different_issuers_is_independent() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    let at = |iss: &str, country: &str| {
        Context::new("GET", "/")
            .with_identity(identity(iss, "42"))
            .with_country(country)
    };
    p.assess(&at("https://a.example", "DE"), &mut host);
    host.advance_ms(MINUTE);
    assert_clear(&p.assess(&at("https://b.example", "AU"), &mut host));
    // Colon placement cannot make two different pairs share a key.
    assert_ne!(
        state_key(&identity("https://x:y", "z")),
        state_key(&identity("https://x", "y:z"))
    );
}

#[test]
fn last_sighting_is_always_updated() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    assert_flagged(&trip(&p, &mut host, "jo", "DE", "AU", 5 * MINUTE));
    // Now in AU: staying there is fine…
    host.advance_ms(5 * MINUTE);
    assert_clear(&p.assess(&req("jo", "AU"), &mut host));
    // …and jumping back to DE is flagged again.
    host.advance_ms(5 * MINUTE);
    let a = p.assess(&req("jo", "DE"), &mut host);
    assert_flagged(&a);
    assert!(a.reason.starts_with("AU→DE "), "{}", a.reason);
}

#[test]
fn staying_in_one_country_refreshes_the_time() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    p.assess(&req("kim", "DE"), &mut host);
    host.advance_ms(3 * DAY);
    assert_clear(&p.assess(&req("kim", "DE"), &mut host));
    host.advance_ms(MINUTE);
    // Compared with the DE sighting a minute ago, not three days ago.
    assert_flagged(&p.assess(&req("kim", "AU"), &mut host));
}

#[test]
fn unknown_country_is_skipped_and_keeps_the_previous_sighting() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    p.assess(&req("lee", "DE"), &mut host);
    host.advance_ms(MINUTE);
    for code in ["XX", "T1", "ZZ"] {
        let a = p.assess(&req("lee", code), &mut host);
        assert_eq!(a.score, 0);
        assert_eq!(a.labels, vec![UNKNOWN_COUNTRY_LABEL.to_owned()]);
        assert!(a.reason.contains(code), "{}", a.reason);
    }
    let mut odd = req("lee", "DE");
    for junk in ["", "DEU", "d", "😀", "\u{7}\u{7}"] {
        odd.country = Some(junk.to_owned());
        let a = p.assess(&odd, &mut host);
        assert_eq!(a.score, 0, "{junk:?}");
        assert_eq!(a.labels, vec![UNKNOWN_COUNTRY_LABEL.to_owned()]);
    }
    host.advance_ms(MINUTE);
    // Still compared with DE.
    assert_flagged(&p.assess(&req("lee", "AU"), &mut host));
}

#[test]
fn country_codes_are_trimmed_and_case_folded() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    let mut ctx = req("max", "DE");
    ctx.country = Some(" de ".into());
    p.assess(&ctx, &mut host);
    host.advance_ms(MINUTE);
    ctx.country = Some("au".into());
    assert_flagged(&p.assess(&ctx, &mut host));
}

#[test]
fn corrupt_state_is_ignored_and_replaced() {
    let mut host = TestHost::new();
    let p = plugin(&host);
    let key = state_key(&identity("https://idp.example", "ned"));
    for junk in [
        &b""[..],
        b"\x01DE",
        b"\x09DE\0\0\0\0\0\0\0\0",
        b"\x01??\0\0\0\0\0\0\0\0",
    ] {
        host.set(&key, junk, DAY);
        assert_clear(&p.assess(&req("ned", "AU"), &mut host));
        assert_eq!(host.get(&key).map(|v| v.len()), Some(11), "overwritten");
    }
}

#[test]
fn long_identities_are_hashed_into_short_keys() {
    let long = identity(&"i".repeat(300), &"s".repeat(10_000));
    let key = state_key(&long);
    assert!(key.len() < 40, "{key}");
    assert_ne!(
        key,
        state_key(&identity(&"i".repeat(300), &"s".repeat(10_001)))
    );
    let mut host = TestHost::new();
    let p = plugin(&host);
    let at = |c: &str| {
        Context::new("GET", "/")
            .with_identity(long.clone())
            .with_country(c)
    };
    p.assess(&at("DE"), &mut host);
    host.advance_ms(MINUTE);
    assert_flagged(&p.assess(&at("AU"), &mut host));
}

#[test]
fn configured_score_action_and_limits_are_used() {
    let mut host = TestHost::new();
    let p = host
        .plugin::<ImpossibleTravel>(json!({
            "score": 95,
            "action": "deny",
            "max_speed_kmh": 100_000,
            "min_distance_km": 0,
        }))
        .unwrap();
    // ~12,600 km in an hour is under 100,000 km/h.
    let a = trip(&p, &mut host, "olga", "DE", "AU", HOUR);
    assert_clear(&a);
    host.advance_ms(5 * MINUTE);
    let a = p.assess(&req("olga", "DE"), &mut host);
    assert_eq!(a.score, 95);
    assert_eq!(a.action, Action::Deny);
    assert_eq!(a.labels, vec![LABEL.to_owned()]);

    for (name, action) in [
        ("step-up", Action::StepUp),
        ("challenge", Action::Challenge),
    ] {
        let p = host
            .plugin::<ImpossibleTravel>(json!({ "action": name }))
            .unwrap();
        let mut host = TestHost::new();
        assert_eq!(
            trip(&p, &mut host, "pat", "DE", "AU", MINUTE).action,
            action
        );
    }
}

#[test]
fn min_distance_is_configurable() {
    // PT→FI is flagged by default (above); with a huge min_distance_km it is not.
    let mut host = TestHost::new();
    let p = host
        .plugin::<ImpossibleTravel>(json!({"min_distance_km": 5000}))
        .unwrap();
    assert_clear(&trip(&p, &mut host, "quinn", "PT", "FI", 30 * MINUTE));
    let mut host = TestHost::new();
    assert_flagged(&trip(&p, &mut host, "quinn", "DE", "AU", 30 * MINUTE));
}

#[test]
fn bad_configuration_is_rejected_with_a_clear_message() {
    let host = TestHost::new();
    let err = |config: serde_json::Value| host.plugin::<ImpossibleTravel>(config).err().unwrap();
    assert!(err(json!({"action": "block"})).contains("unknown action \"block\""));
    assert!(err(json!({"action": "allow"})).contains("unknown action"));
    assert!(err(json!({"max_speed_kmh": 0})).contains("max_speed_kmh"));
    assert!(err(json!({"max_speed_kmh": -5})).contains("max_speed_kmh"));
    assert!(err(json!({"min_distance_km": -1})).contains("min_distance_km"));
    assert!(err(json!({"score": 101})).contains("score must be between 0 and 100"));
    assert!(err(json!({"score": 300})).contains("plugin configuration"));
    assert!(err(json!({"remember_secs": 0})).contains("remember_secs"));
    assert!(err(json!({"remember_secs": u64::MAX})).contains("too large"));
    assert!(err(json!({"max_speed": 5})).contains("unknown field `max_speed`"));
    assert!(err(json!({"score": "high"})).contains("plugin configuration"));
}

#[test]
fn defaults_are_documented_values() {
    let config = impossible_travel::Config::default();
    assert_eq!(config.remember_secs, 30 * 24 * 3600);
    assert_eq!(config.max_speed_kmh, 1000.0);
    assert_eq!(config.min_distance_km, 500.0);
    assert_eq!(config.score, 80);
    assert_eq!(config.action, None);
    let parsed: impossible_travel::Config = serde_json::from_str("{}").unwrap();
    assert_eq!(parsed, config);
    assert!(ImpossibleTravel::new(config).is_ok());
}
