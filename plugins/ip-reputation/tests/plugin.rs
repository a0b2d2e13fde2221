//! Behaviour of the ip-reputation plugin against the native test host.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::IpAddr;

use ip_reputation::{
    ASN_LABEL, Config, IP_LABEL, IpReputation, PrefixTable, Verdict, parse_prefix,
};
use portcullis_plugin::testing::TestHost;
use portcullis_plugin::{Action, Assessment, Context, RiskPlugin};
use serde_json::{Value, json};

fn plugin(config: Value) -> IpReputation {
    TestHost::new().plugin::<IpReputation>(config).unwrap()
}

fn from(ip: &str) -> Context {
    let ctx = Context::new("GET", "/").with_client_ip(ip);
    assert!(ctx.client_ip.is_some(), "{ip} parses");
    ctx
}

fn assess(p: &IpReputation, ctx: &Context) -> Assessment {
    p.assess(ctx, &mut TestHost::new())
}

fn assert_ip_denied(a: &Assessment, prefix: &str) {
    assert_eq!(a.score, 100, "{a:?}");
    assert_eq!(a.action, Action::Deny);
    assert_eq!(a.labels, vec![IP_LABEL.to_owned()]);
    assert_eq!(a.reason, format!("client in {prefix} (deny list)"));
}

fn assert_allowed(a: &Assessment) {
    assert_eq!(a.score, 0, "{a:?}");
    assert_eq!(a.action, Action::Allow);
    assert!(a.labels.is_empty(), "{a:?}");
}

#[test]
fn ipv4_deny_prefixes_match() {
    let p = plugin(json!({"deny": ["192.0.2.0/24", "198.51.100.0/22"]}));
    assert_ip_denied(&assess(&p, &from("192.0.2.1")), "192.0.2.0/24");
    assert_ip_denied(&assess(&p, &from("192.0.2.255")), "192.0.2.0/24");
    assert_ip_denied(&assess(&p, &from("198.51.103.7")), "198.51.100.0/22");
    assert_eq!(assess(&p, &from("192.0.3.0")), Assessment::allow());
    assert_eq!(assess(&p, &from("198.51.104.0")), Assessment::allow());
    assert_eq!(assess(&p, &from("192.0.1.255")), Assessment::allow());
}

#[test]
fn ipv6_deny_prefixes_match() {
    let p = plugin(json!({"deny": ["2001:db8:bad::/48", "2001:db8:ffff:1::/64"]}));
    assert_ip_denied(&assess(&p, &from("2001:db8:bad::1")), "2001:db8:bad::/48");
    assert_ip_denied(
        &assess(&p, &from("2001:db8:bad:ffff:ffff:ffff:ffff:ffff")),
        "2001:db8:bad::/48",
    );
    assert_ip_denied(
        &assess(&p, &from("2001:db8:ffff:1:1234::5")),
        "2001:db8:ffff:1::/64",
    );
    assert_eq!(assess(&p, &from("2001:db8:bae::1")), Assessment::allow());
    assert_eq!(assess(&p, &from("2001:db8:ffff:2::1")), Assessment::allow());
    // Families never mix: an IPv4 client is not inside an IPv6 prefix.
    assert_eq!(assess(&p, &from("32.1.13.184")), Assessment::allow());
}

#[test]
fn bare_addresses_are_single_hosts() {
    let p = plugin(json!({"deny": ["192.0.2.7", "2001:db8::7"]}));
    assert_ip_denied(&assess(&p, &from("192.0.2.7")), "192.0.2.7/32");
    assert_ip_denied(&assess(&p, &from("2001:db8::7")), "2001:db8::7/128");
    assert_allowed(&assess(&p, &from("192.0.2.6")));
    assert_allowed(&assess(&p, &from("2001:db8::6")));
}

#[test]
fn the_most_specific_prefix_decides() {
    let p = plugin(json!({
        "deny": ["10.0.0.0/8", "10.1.2.0/24", "2001:db8::/32", "2001:db8:1:2::/64"],
        "allow": ["10.1.0.0/16", "10.1.2.3", "2001:db8:1::/48"],
    }));
    assert_ip_denied(&assess(&p, &from("10.200.0.1")), "10.0.0.0/8");
    // An allowed /16 inside the denied /8…
    let a = assess(&p, &from("10.1.9.9"));
    assert_allowed(&a);
    assert_eq!(a.reason, "client in 10.1.0.0/16 (allow list)");
    // …a denied /24 inside that…
    assert_ip_denied(&assess(&p, &from("10.1.2.4")), "10.1.2.0/24");
    // …and an allowed /32 inside that.
    let a = assess(&p, &from("10.1.2.3"));
    assert_allowed(&a);
    assert_eq!(a.reason, "client in 10.1.2.3/32 (allow list)");
    // The same, nested, in IPv6.
    assert_ip_denied(&assess(&p, &from("2001:db8:9::1")), "2001:db8::/32");
    assert_allowed(&assess(&p, &from("2001:db8:1:7::1")));
    assert_ip_denied(&assess(&p, &from("2001:db8:1:2::1")), "2001:db8:1:2::/64");
    // Order in the lists does not matter.
    let q = plugin(json!({
        "allow": ["10.1.2.3", "2001:db8:1::/48", "10.1.0.0/16"],
        "deny": ["2001:db8:1:2::/64", "10.1.2.0/24", "2001:db8::/32", "10.0.0.0/8"],
    }));
    for ip in [
        "10.200.0.1",
        "10.1.9.9",
        "10.1.2.4",
        "10.1.2.3",
        "2001:db8:1:2::1",
    ] {
        assert_eq!(assess(&p, &from(ip)), assess(&q, &from(ip)), "{ip}");
    }
}

#[test]
fn allow_wins_on_the_very_same_prefix() {
    let p = plugin(json!({
        "deny": ["192.0.2.0/24", "192.0.2.0/24"],
        "allow": ["192.0.2.99/24"],
    }));
    assert_allowed(&assess(&p, &from("192.0.2.1")));
    assert_eq!(p.table().len(), 1);
}

#[test]
fn host_bits_are_masked() {
    let p = plugin(json!({"deny": ["10.1.2.3/8", "2001:db8:1:2:3:4:5:6/32", " 192.0.2.77/30 "]}));
    assert_ip_denied(&assess(&p, &from("10.255.0.1")), "10.0.0.0/8");
    assert_ip_denied(&assess(&p, &from("2001:db8:ffff::1")), "2001:db8::/32");
    assert_ip_denied(&assess(&p, &from("192.0.2.78")), "192.0.2.76/30");
    assert_allowed(&assess(&p, &from("192.0.2.80")));
    assert_allowed(&assess(&p, &from("11.0.0.0")));
}

#[test]
fn zero_length_prefixes_match_everything_of_their_family() {
    let p = plugin(json!({"deny": ["0.0.0.0/0"], "allow": ["::/0"]}));
    assert_ip_denied(&assess(&p, &from("203.0.113.1")), "0.0.0.0/0");
    assert_allowed(&assess(&p, &from("2001:db8::1")));
    assert_eq!(
        p.lookup("2001:db8::1".parse().unwrap()).map(|m| m.verdict),
        Some(Verdict::Allow)
    );
}

#[test]
fn ipv4_mapped_ipv6_clients_match_ipv4_prefixes() {
    let p = plugin(json!({"deny": ["192.0.2.0/24"]}));
    assert_ip_denied(&assess(&p, &from("::ffff:192.0.2.9")), "192.0.2.0/24");
}

#[test]
fn malformed_entries_are_rejected_naming_the_entry() {
    let host = TestHost::new();
    let err = |config: Value| host.plugin::<IpReputation>(config).err().unwrap();
    let cases = [
        (
            json!({"deny": ["10.0.0.0/8", "10.0.0.0/33"]}),
            "deny[1] \"10.0.0.0/33\": prefix length 33 is over 32 for IPv4",
        ),
        (
            json!({"deny": ["::/129"]}),
            "deny[0] \"::/129\": prefix length 129 is over 128 for IPv6",
        ),
        (
            json!({"allow": ["10.0.0/8"]}),
            "allow[0] \"10.0.0/8\": \"10.0.0\" is not an IP address",
        ),
        (
            json!({"allow": ["ok.example"]}),
            "allow[0] \"ok.example\": \"ok.example\" is not an IP address",
        ),
        (
            json!({"deny": ["10.0.0.0/"]}),
            "deny[0] \"10.0.0.0/\": prefix length \"\" is not a number",
        ),
        (
            json!({"deny": ["10.0.0.0/+8"]}),
            "deny[0] \"10.0.0.0/+8\": prefix length \"+8\" is not a number",
        ),
        (
            json!({"deny": ["10.0.0.0/-1"]}),
            "prefix length \"-1\" is not a number",
        ),
        (
            json!({"deny": ["10.0.0.0/8/8"]}),
            "prefix length \"8/8\" is not a number",
        ),
        (
            json!({"deny": ["10.0.0.0/99999"]}),
            "prefix length 99999 is over 32 for IPv4",
        ),
        (
            json!({"deny": ["/8"]}),
            "deny[0] \"/8\": \"\" is not an IP address",
        ),
        (
            json!({"deny": [""]}),
            "deny[0] \"\": \"\" is not an IP address",
        ),
        (json!({"deny": ["fe80::1%eth0"]}), "is not an IP address"),
    ];
    for (config, expected) in cases {
        let e = err(config.clone());
        assert!(e.starts_with("ip-reputation: "), "{e}");
        assert!(e.contains(expected), "{config}: {e}");
    }
    assert!(err(json!({"deny": [8]})).contains("plugin configuration"));
}

#[test]
fn parse_prefix_accepts_the_usual_forms() {
    let p = |s: &str| parse_prefix(s).unwrap();
    assert_eq!(p("10.0.0.0/8"), ("10.0.0.0".parse().unwrap(), 8));
    assert_eq!(p("10.0.0.1"), ("10.0.0.1".parse().unwrap(), 32));
    assert_eq!(p("::1"), ("::1".parse().unwrap(), 128));
    assert_eq!(p("2001:db8::/32"), ("2001:db8::".parse().unwrap(), 32));
    assert_eq!(p("0.0.0.0/0"), ("0.0.0.0".parse().unwrap(), 0));
    assert_eq!(p("10.0.0.0/08"), ("10.0.0.0".parse().unwrap(), 8));
    assert_eq!(p("10.0.0.0/0008"), ("10.0.0.0".parse().unwrap(), 8));
}

#[test]
fn asns_apply_only_when_no_prefix_matches() {
    let p = plugin(json!({
        "deny": ["192.0.2.0/24"],
        "allow": ["198.51.100.0/24"],
        "deny_asns": [64496, 64500],
        "allow_asns": [64500, 64511],
    }));
    // No prefix: the ASN decides.
    let a = assess(&p, &from("203.0.113.1").with_asn(64496));
    assert_eq!(a.score, 100);
    assert_eq!(a.action, Action::Deny);
    assert_eq!(a.labels, vec![ASN_LABEL.to_owned()]);
    assert_eq!(a.reason, "AS64496 (deny list)");
    // On both ASN lists: allow beats deny.
    let a = assess(&p, &from("203.0.113.1").with_asn(64500));
    assert_allowed(&a);
    assert_eq!(a.reason, "AS64500 (allow list)");
    assert_allowed(&assess(&p, &from("203.0.113.1").with_asn(64511)));
    assert_eq!(
        assess(&p, &from("203.0.113.1").with_asn(1)),
        Assessment::allow()
    );
    // An allowed prefix beats a denied ASN…
    assert_allowed(&assess(&p, &from("198.51.100.1").with_asn(64496)));
    // …and a denied prefix beats an allowed ASN.
    assert_ip_denied(
        &assess(&p, &from("192.0.2.1").with_asn(64511)),
        "192.0.2.0/24",
    );
    // Without a client address the ASN still counts.
    let ctx = Context::new("GET", "/").with_asn(64496);
    assert_eq!(assess(&p, &ctx).labels, vec![ASN_LABEL.to_owned()]);
    // Without either, nothing to go on.
    assert_eq!(assess(&p, &Context::new("GET", "/")), Assessment::allow());
}

#[test]
fn deny_score_and_action_are_configurable() {
    for (name, action) in [
        ("allow", Action::Allow),
        ("step-up", Action::StepUp),
        ("challenge", Action::Challenge),
        ("deny", Action::Deny),
    ] {
        let p = plugin(json!({
            "deny": ["192.0.2.0/24"],
            "deny_asns": [64496],
            "deny_score": 70,
            "deny_action": name,
        }));
        let a = assess(&p, &from("192.0.2.1"));
        assert_eq!((a.score, a.action), (70, action), "{name}");
        let a = assess(&p, &from("203.0.113.1").with_asn(64496));
        assert_eq!((a.score, a.action), (70, action), "{name}");
    }
}

#[test]
fn bad_settings_are_rejected() {
    let host = TestHost::new();
    let err = |config: Value| host.plugin::<IpReputation>(config).err().unwrap();
    assert!(err(json!({"deny_action": "block"})).contains("unknown deny_action \"block\""));
    assert!(err(json!({"deny_score": 101})).contains("deny_score must be between 0 and 100"));
    assert!(err(json!({"deny_asns": [-1]})).contains("plugin configuration"));
    assert!(err(json!({"deny_asns": [4294967296u64]})).contains("plugin configuration"));
    assert!(err(json!({"denylist": []})).contains("unknown field `denylist`"));
}

#[test]
fn defaults_are_documented_values() {
    let config: Config = serde_json::from_str("{}").unwrap();
    assert!(config.deny.is_empty() && config.allow.is_empty());
    assert!(config.deny_asns.is_empty() && config.allow_asns.is_empty());
    assert_eq!(config.deny_score, 100);
    assert_eq!(config.deny_action, "deny");
    let p = IpReputation::new(config).unwrap();
    assert!(p.table().is_empty());
    assert_eq!(
        assess(&p, &from("192.0.2.1").with_asn(64496)),
        Assessment::allow()
    );
}

#[test]
fn assess_touches_no_state() {
    let p = plugin(json!({"deny": ["192.0.2.0/24"], "deny_asns": [64496]}));
    let mut host = TestHost::new();
    p.assess(&from("192.0.2.1"), &mut host);
    p.assess(&from("203.0.113.1").with_asn(64496), &mut host);
    assert!(host.is_empty());
}

#[test]
fn table_lookup_reports_the_network() {
    let table = PrefixTable::new(&["10.1.0.0/16".into()], &["10.0.0.0/8".into()]).unwrap();
    let m = table.lookup("10.1.2.3".parse::<IpAddr>().unwrap()).unwrap();
    assert_eq!(m.to_string(), "10.1.0.0/16");
    assert_eq!((m.len, m.verdict), (16, Verdict::Allow));
    assert_eq!(m.network, "10.1.0.0".parse::<IpAddr>().unwrap());
    assert!(
        table
            .lookup("11.0.0.0".parse::<IpAddr>().unwrap())
            .is_none()
    );
}
