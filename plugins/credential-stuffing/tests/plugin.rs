//! Behaviour of the credential-stuffing plugin against the native test host.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use credential_stuffing::{
    Config, CredentialStuffing, IP_LABEL, USER_LABEL, network_of, normalise_username, score_for,
    username_key,
};
use portcullis_plugin::testing::TestHost;
use portcullis_plugin::{Action, Assessment, Context, Host, Level, Outcome, RiskPlugin};
use serde_json::json;

const WINDOW_MS: u64 = 300_000;

fn plugin(host: &TestHost) -> CredentialStuffing {
    host.plugin::<CredentialStuffing>(json!({})).unwrap()
}

/// A host whose clock sits at the start of a window.
fn host() -> TestHost {
    let mut host = TestHost::new();
    let now = host.now_ms();
    host.set_now_ms(now - now % WINDOW_MS);
    host
}

fn login(ip: &str, user: Option<&str>) -> Context {
    let ctx = Context::new("POST", "/login").with_client_ip(ip);
    match user {
        Some(u) => ctx.with_header("x-login-username", u),
        None => ctx,
    }
}

fn fail(p: &CredentialStuffing, host: &mut TestHost, ctx: &Context) {
    // The gateway assesses before it forwards and observes afterwards.
    p.assess(ctx, host);
    p.observe(ctx, Outcome { status: 401 }, host);
}

fn assert_clear(a: &Assessment) {
    assert_eq!(a.score, 0, "{a:?}");
    assert!(a.labels.is_empty(), "{a:?}");
}

#[test]
fn failures_from_one_slash24_trip_the_ip_score() {
    let mut host = host();
    let p = plugin(&host);
    let probe = login("203.0.113.250", None);
    for i in 1..=19 {
        fail(&p, &mut host, &login(&format!("203.0.113.{i}"), None));
    }
    assert_clear(&p.assess(&probe, &mut host));
    fail(&p, &mut host, &login("203.0.113.20", None));
    let a = p.assess(&probe, &mut host);
    assert_eq!(a.score, 60);
    assert_eq!(a.labels, vec![IP_LABEL.to_owned()]);
    assert_eq!(a.action, Action::Allow, "thresholds decide");
    assert_eq!(
        a.reason,
        "20 failed logins from 203.0.113.0/24 in the last 300 s (threshold 20)"
    );
    for i in 21..=30 {
        fail(&p, &mut host, &login(&format!("203.0.113.{i}"), None));
    }
    assert_eq!(p.assess(&probe, &mut host).score, 80);
    for i in 31..=40 {
        fail(&p, &mut host, &login(&format!("203.0.113.{i}"), None));
    }
    assert_eq!(p.assess(&probe, &mut host).score, 100);
    for i in 41..=90 {
        fail(&p, &mut host, &login(&format!("203.0.113.{i}"), None));
    }
    assert_eq!(p.assess(&probe, &mut host).score, 100, "capped");
}

#[test]
fn ipv6_addresses_in_one_slash64_share_a_counter() {
    let mut host = host();
    let p = plugin(&host);
    for i in 0..20u32 {
        let ip = format!(
            "2001:db8:1:2:{:x}:{:x}::{:x}",
            (i * 7919) % 0x1_0000,
            i,
            i + 1
        );
        let ctx = login(&ip, None);
        assert!(ctx.client_ip.is_some(), "{ip}");
        fail(&p, &mut host, &ctx);
    }
    let a = p.assess(&login("2001:db8:1:2:ffff:ffff:ffff:ffff", None), &mut host);
    assert_eq!(a.score, 60);
    assert!(a.reason.contains("2001:db8:1:2::/64"), "{}", a.reason);
    assert_clear(&p.assess(&login("2001:db8:1:3::1", None), &mut host));
    assert_clear(&p.assess(&login("2001:db8:2:2::1", None), &mut host));
}

#[test]
fn different_slash24s_do_not_share_a_counter() {
    let mut host = host();
    let p = plugin(&host);
    for i in 1..=19 {
        fail(&p, &mut host, &login(&format!("203.0.113.{i}"), None));
        fail(&p, &mut host, &login(&format!("203.0.114.{i}"), None));
        fail(&p, &mut host, &login(&format!("198.51.113.{i}"), None));
    }
    for ip in ["203.0.113.1", "203.0.114.1", "198.51.113.1", "203.0.112.1"] {
        assert_clear(&p.assess(&login(ip, None), &mut host));
    }
}

#[test]
fn ipv4_mapped_ipv6_counts_as_ipv4() {
    let mut host = host();
    let p = plugin(&host);
    for i in 1..=10 {
        fail(
            &p,
            &mut host,
            &login(&format!("::ffff:203.0.113.{i}"), None),
        );
        fail(
            &p,
            &mut host,
            &login(&format!("203.0.113.{}", i + 100), None),
        );
    }
    assert_eq!(p.assess(&login("203.0.113.7", None), &mut host).score, 60);
}

#[test]
fn successes_and_other_statuses_do_not_count() {
    let mut host = host();
    let p = plugin(&host);
    for status in [200, 204, 302, 400, 404, 429, 500, 503] {
        for i in 0..50 {
            let ctx = login(&format!("203.0.113.{i}"), Some("alice"));
            p.assess(&ctx, &mut host);
            p.observe(&ctx, Outcome { status }, &mut host);
        }
    }
    assert!(host.is_empty(), "nothing counted");
    assert_clear(&p.assess(&login("203.0.113.1", Some("alice")), &mut host));
    // 403 is a failure by default.
    let ctx = login("203.0.113.1", Some("alice"));
    for _ in 0..5 {
        p.observe(&ctx, Outcome { status: 403 }, &mut host);
    }
    assert_eq!(
        p.assess(&ctx, &mut host).labels,
        vec![USER_LABEL.to_owned()]
    );
}

#[test]
fn the_window_slides_and_counts_decay() {
    let mut host = host();
    let p = plugin(&host);
    let probe = login("203.0.113.250", None);
    for i in 0..20 {
        fail(&p, &mut host, &login(&format!("203.0.113.{i}"), None));
    }
    assert_eq!(p.assess(&probe, &mut host).score, 60);
    // Start of the next window: the previous one still weighs in full.
    host.advance_ms(WINDOW_MS);
    assert_eq!(p.assess(&probe, &mut host).score, 60);
    // A fifth in: 20 × 0.8 = 16.
    host.advance_ms(WINDOW_MS / 5);
    assert_clear(&p.assess(&probe, &mut host));
    assert_estimate(&p, &mut host, 16.0);
    // Fresh failures add to the decayed remainder: 16 + 4 = 20.
    for i in 0..4 {
        fail(&p, &mut host, &login(&format!("203.0.113.{i}"), None));
    }
    assert_eq!(p.assess(&probe, &mut host).score, 60);
    // Halfway through: 4 + 20 × 0.5 = 14.
    host.advance_ms(WINDOW_MS * 3 / 10);
    assert_estimate(&p, &mut host, 14.0);
    assert_clear(&p.assess(&probe, &mut host));
    // Two windows on, everything has expired.
    host.advance_ms(2 * WINDOW_MS);
    assert_estimate(&p, &mut host, 0.0);
    assert!(host.is_empty(), "counters expire after two windows");
}

fn assert_estimate(p: &CredentialStuffing, host: &mut TestHost, expected: f64) {
    let now = host.now_ms();
    let estimate = p.estimate(host, "ip:203.0.113.0/24", now);
    assert!(
        (estimate - expected).abs() < 1e-9,
        "{estimate} != {expected}"
    );
}

#[test]
fn failures_late_in_a_window_still_count_early_in_the_next() {
    let mut host = host();
    let p = plugin(&host);
    let probe = login("203.0.113.250", None);
    host.advance_ms(WINDOW_MS - 1000);
    for i in 0..25 {
        fail(&p, &mut host, &login(&format!("203.0.113.{i}"), None));
    }
    // Two seconds later, in the next window: 25 × (298/300) ≈ 24.8.
    host.advance_ms(2000);
    let a = p.assess(&probe, &mut host);
    assert_eq!(a.score, 70, "{a:?}");
    assert!(a.reason.starts_with("25 failed logins"), "{}", a.reason);
}

#[test]
fn username_counting_across_many_ips_trips_the_user_score() {
    let mut host = host();
    let p = plugin(&host);
    let ips = [
        "198.51.100.1",
        "203.0.113.9",
        "192.0.2.77",
        "2001:db8::1",
        "2001:db8:5::1",
    ];
    for ip in &ips[..4] {
        fail(&p, &mut host, &login(ip, Some("alice@example.com")));
    }
    let probe = login("100.64.0.1", Some("alice@example.com"));
    assert_clear(&p.assess(&probe, &mut host));
    fail(&p, &mut host, &login(ips[4], Some("alice@example.com")));
    let a = p.assess(&probe, &mut host);
    assert_eq!(a.score, 60);
    assert_eq!(a.labels, vec![USER_LABEL.to_owned()]);
    assert_eq!(
        a.reason,
        "5 failed logins for this username in the last 300 s (threshold 5)"
    );
    assert!(!a.reason.contains("alice"));
    // Another username from the same address is unaffected.
    assert_clear(&p.assess(&login("100.64.0.1", Some("bob@example.com")), &mut host));
    // Ten failures: twice the threshold.
    for i in 0..5 {
        fail(
            &p,
            &mut host,
            &login(&format!("10.{i}.0.1"), Some("alice@example.com")),
        );
    }
    assert_eq!(p.assess(&probe, &mut host).score, 100);
}

#[test]
fn usernames_are_trimmed_and_case_folded() {
    let mut host = host();
    let p = plugin(&host);
    for (i, name) in [" Alice ", "ALICE", "alice", "\tAlIcE\n", "alice "]
        .iter()
        .enumerate()
    {
        fail(&p, &mut host, &login(&format!("10.{i}.0.1"), Some(name)));
    }
    assert_eq!(
        p.assess(&login("10.99.0.1", Some("aLiCe")), &mut host)
            .score,
        60
    );
    // Blank usernames are not counted at all.
    for i in 0..10 {
        fail(&p, &mut host, &login(&format!("10.{i}.1.1"), Some("   ")));
    }
    assert_clear(&p.assess(&login("10.98.0.1", Some(" ")), &mut host));
}

#[test]
fn username_from_a_query_parameter_when_configured() {
    let mut host = host();
    let p = host
        .plugin::<CredentialStuffing>(json!({"username_param": "user"}))
        .unwrap();
    for i in 0..5 {
        let ctx = Context::new("POST", "/login")
            .with_client_ip(&format!("10.{i}.0.1"))
            .with_query(&format!("next=%2F&user=Alice%40Example.com&n={i}"));
        fail(&p, &mut host, &ctx);
    }
    // The header form of the same name shares the counter (percent-decoded, case-folded).
    let a = p.assess(&login("10.99.0.1", Some("alice@example.com")), &mut host);
    assert_eq!(a.labels, vec![USER_LABEL.to_owned()]);
    // The header wins over the parameter.
    let both = login("10.99.0.1", Some("bob")).with_query("user=alice%40example.com");
    assert_clear(&p.assess(&both, &mut host));
    // '+' is a space, and a stray '%' is kept.
    let ctx = Context::new("POST", "/login").with_query("user=Alice+Smith%");
    assert_eq!(p.username(&ctx).as_deref(), Some("alice smith%"));
    let ctx = Context::new("POST", "/login").with_query("user=%zz%4");
    assert_eq!(p.username(&ctx).as_deref(), Some("%zz%4"));
}

#[test]
fn query_parameter_is_ignored_unless_configured() {
    let mut host = host();
    let p = plugin(&host);
    let ctx = Context::new("POST", "/login").with_query("username=alice");
    assert_eq!(p.username(&ctx), None);
    for _ in 0..10 {
        fail(&p, &mut host, &ctx);
    }
    assert!(host.is_empty());
}

#[test]
fn requests_without_client_ip_count_only_the_username() {
    let mut host = host();
    let p = plugin(&host);
    let ctx = Context::new("POST", "/login").with_header("x-login-username", "carol");
    for _ in 0..5 {
        fail(&p, &mut host, &ctx);
    }
    assert_eq!(host.len(), 1, "one counter: the username's");
    assert_eq!(
        p.assess(&ctx, &mut host).labels,
        vec![USER_LABEL.to_owned()]
    );
}

#[test]
fn the_higher_score_wins_and_both_labels_are_kept() {
    let mut host = host();
    let p = plugin(&host);
    // 25 failures, one /24, one username: IP at 25/20 → 70, user at 25/5 → 100.
    for i in 0..25 {
        fail(
            &p,
            &mut host,
            &login(&format!("203.0.113.{i}"), Some("dave")),
        );
    }
    let a = p.assess(&login("203.0.113.200", Some("dave")), &mut host);
    assert_eq!(a.score, 100);
    assert!(a.reason.contains("this username"), "{}", a.reason);
    assert!(a.labels.contains(&IP_LABEL.to_owned()));
    assert!(a.labels.contains(&USER_LABEL.to_owned()));
    // Only the network trips for another user.
    let a = p.assess(&login("203.0.113.200", Some("erin")), &mut host);
    assert_eq!(a.score, 70);
    assert_eq!(a.labels, vec![IP_LABEL.to_owned()]);
}

/// A host that fails the test on any state access.
struct NoState(TestHost);

impl Host for NoState {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        panic!("unexpected get({key})")
    }
    fn set(&mut self, key: &str, _: &[u8], _: u64) {
        panic!("unexpected set({key})")
    }
    fn increment(&mut self, key: &str, _: i64, _: u64) -> i64 {
        panic!("unexpected increment({key})")
    }
    fn delete(&mut self, key: &str) {
        panic!("unexpected delete({key})")
    }
    fn log(&mut self, level: Level, message: &str) {
        self.0.log(level, message);
    }
    fn now_ms(&mut self) -> u64 {
        self.0.now_ms()
    }
}

#[test]
fn non_login_requests_are_allowed_without_state_access() {
    let mut host = NoState(TestHost::new());
    let p = plugin(&host.0);
    let requests = [
        Context::new("GET", "/login"),
        Context::new("PUT", "/login"),
        Context::new("POST", "/logins"),
        Context::new("POST", "/loginx/a"),
        Context::new("POST", "/api/login"),
        Context::new("POST", "/"),
        Context::new("POST", "/Login"),
    ];
    for ctx in requests {
        let ctx = ctx
            .with_client_ip("203.0.113.1")
            .with_header("x-login-username", "alice");
        assert_eq!(
            p.assess(&ctx, &mut host),
            Assessment::allow(),
            "{}",
            ctx.path
        );
        p.observe(&ctx, Outcome { status: 401 }, &mut host);
    }
    // Login requests that succeed do not touch state in observe either.
    let ok = login("203.0.113.1", Some("alice"));
    p.observe(&ok, Outcome { status: 200 }, &mut host);
}

#[test]
fn login_paths_match_by_segment_and_methods_ignore_case() {
    let host = host();
    let p = host
        .plugin::<CredentialStuffing>(json!({
            "paths": ["/login", "/oauth/"],
            "methods": ["post", "PUT"],
        }))
        .unwrap();
    for (method, path, expected) in [
        ("POST", "/login", true),
        ("POST", "/login/", true),
        ("POST", "/login/sso", true),
        ("post", "/login", true),
        ("PUT", "/login", true),
        ("POST", "/oauth/token", true),
        ("POST", "/oauth/", true),
        ("POST", "/oauth", false),
        ("POST", "/logins", false),
        ("GET", "/login", false),
        ("DELETE", "/oauth/token", false),
    ] {
        assert_eq!(
            p.is_login(&Context::new(method, path)),
            expected,
            "{method} {path}"
        );
    }
}

#[test]
fn custom_thresholds_window_and_statuses() {
    let mut host = TestHost::new();
    let now = host.now_ms();
    host.set_now_ms(now - now % 60_000);
    let p = host
        .plugin::<CredentialStuffing>(json!({
            "window_secs": 60,
            "ip_threshold": 3,
            "user_threshold": 2,
            "failure_statuses": [429],
            "username_header": "X-User",
        }))
        .unwrap();
    let ctx = Context::new("POST", "/login")
        .with_client_ip("192.0.2.1")
        .with_header("x-user", "frank");
    p.observe(&ctx, Outcome { status: 401 }, &mut host);
    assert!(host.is_empty(), "401 is not configured as a failure");
    p.observe(&ctx, Outcome { status: 429 }, &mut host);
    assert_clear(&p.assess(&ctx, &mut host));
    p.observe(&ctx, Outcome { status: 429 }, &mut host);
    let a = p.assess(&ctx, &mut host);
    assert_eq!(
        (a.score, a.labels.clone()),
        (60, vec![USER_LABEL.to_owned()])
    );
    assert!(
        a.reason.contains("in the last 60 s (threshold 2)"),
        "{}",
        a.reason
    );
    p.observe(&ctx, Outcome { status: 429 }, &mut host);
    let a = p.assess(&ctx, &mut host);
    // user 3/2 → 80, network 3/3 → 60.
    assert_eq!(a.score, 80);
    assert_eq!(a.labels.len(), 2);
    host.advance_ms(120_000);
    assert_clear(&p.assess(&ctx, &mut host));
}

#[test]
fn scores_ramp_from_sixty_to_one_hundred() {
    assert_eq!(score_for(0.0, 20), 0);
    assert_eq!(score_for(19.99, 20), 0);
    assert_eq!(score_for(20.0, 20), 60);
    assert_eq!(score_for(25.0, 20), 70);
    assert_eq!(score_for(30.0, 20), 80);
    assert_eq!(score_for(39.0, 20), 98);
    assert_eq!(score_for(40.0, 20), 100);
    assert_eq!(score_for(1e12, 20), 100);
    assert_eq!(score_for(1.0, 1), 60);
    assert_eq!(score_for(1.5, 1), 80);
    assert_eq!(score_for(2.0, 1), 100);
    assert_eq!(score_for(f64::INFINITY, 5), 100);
}

#[test]
fn networks_are_slash24_and_slash64() {
    let net = |s: &str| network_of(s.parse().unwrap());
    assert_eq!(net("203.0.113.77"), "203.0.113.0/24");
    assert_eq!(net("::ffff:203.0.113.77"), "203.0.113.0/24");
    assert_eq!(net("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    assert_eq!(net("2001:db8::1"), "2001:db8::/64");
    assert_eq!(net("::1"), "::/64");
}

#[test]
fn usernames_are_stored_only_as_hashes() {
    let key = username_key("alice@example.com");
    assert!(!key.contains("alice"), "{key}");
    assert_eq!(key.len(), "user:".len() + 32);
    assert_ne!(key, username_key("alice@example.co"));
    assert_eq!(
        normalise_username("  Ünïcode USER "),
        Some("ünïcode user".into())
    );
    // A huge username is fine: hashed, not stored.
    let mut host = host();
    let p = plugin(&host);
    let huge = "x".repeat(100_000);
    for i in 0..5 {
        fail(&p, &mut host, &login(&format!("10.{i}.0.1"), Some(&huge)));
    }
    let a = p.assess(&login("10.9.0.1", Some(&huge)), &mut host);
    assert_eq!(a.labels, vec![USER_LABEL.to_owned()]);
    assert!(a.reason.len() < 100);
}

#[test]
fn bad_configuration_is_rejected_with_a_clear_message() {
    let host = TestHost::new();
    let err = |config: serde_json::Value| host.plugin::<CredentialStuffing>(config).err().unwrap();
    assert!(err(json!({"paths": []})).contains("paths must list"));
    assert!(err(json!({"paths": ["login"]})).contains("path \"login\" must start with '/'"));
    assert!(err(json!({"methods": []})).contains("methods must list"));
    assert!(err(json!({"methods": ["PO ST"]})).contains("\"PO ST\" is not an HTTP method"));
    assert!(err(json!({"failure_statuses": []})).contains("failure_statuses"));
    assert!(err(json!({"failure_statuses": [401, 99]})).contains("failure status 99"));
    assert!(err(json!({"failure_statuses": [600]})).contains("failure status 600"));
    assert!(err(json!({"username_header": ""})).contains("username_header"));
    assert!(err(json!({"username_header": "x user"})).contains("username_header"));
    assert!(err(json!({"username_param": ""})).contains("username_param"));
    assert!(err(json!({"username_param": "a=b"})).contains("username_param"));
    assert!(err(json!({"window_secs": 0})).contains("window_secs"));
    assert!(err(json!({"window_secs": 700_000})).contains("window_secs"));
    assert!(err(json!({"ip_threshold": 0})).contains("ip_threshold must be at least 1"));
    assert!(err(json!({"user_threshold": 0})).contains("user_threshold must be at least 1"));
    assert!(err(json!({"ip_threshold": -1})).contains("plugin configuration"));
    assert!(err(json!({"window": 60})).contains("unknown field `window`"));
}

#[test]
fn defaults_are_documented_values() {
    let config = Config::default();
    assert_eq!(config.paths, vec!["/login".to_owned()]);
    assert_eq!(config.methods, vec!["POST".to_owned()]);
    assert_eq!(config.failure_statuses, vec![401, 403]);
    assert_eq!(config.username_header, "x-login-username");
    assert_eq!(config.username_param, None);
    assert_eq!(config.window_secs, 300);
    assert_eq!(config.ip_threshold, 20);
    assert_eq!(config.user_threshold, 5);
    let parsed: Config = serde_json::from_str("{}").unwrap();
    assert_eq!(parsed, config);
    assert!(CredentialStuffing::new(config).is_ok());
}
