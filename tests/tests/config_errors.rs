//! Configuration loading is strict, reports every problem at once, and says where and how
//! to fix each one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_core::config::{self, Diagnostic, MapFiles};
use portcullis_tests::*;

fn files() -> MapFiles {
    let partner = jwt_simple::prelude::ES256KeyPair::generate();
    test_files(TestIdp::shared(), &partner)
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match config::load(text, "edge.toml", &files()) {
        Ok(_) => panic!("configuration unexpectedly loaded"),
        Err(e) => e.diagnostics,
    }
}

/// The line (1-based) of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

fn find(diags: &[Diagnostic], needle: &str) -> Diagnostic {
    diags
        .iter()
        .find(|d| d.message.contains(needle))
        .cloned()
        .unwrap_or_else(|| panic!("no diagnostic containing {needle:?} in {diags:#?}"))
}

const MINIMAL: &str = r#"
[[issuer]]
name = "main"
issuer = "https://idp.test"
jwks_file = "main.jwks.json"
audiences = ["api://shop"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:9101"]

[residency]
missing = "eu"

[[route]]
path = "/"

[audit]
subject_key_file = "audit.key"
"#;

#[test]
fn the_minimal_and_the_full_test_configurations_load() {
    assert!(config::load(MINIMAL, "edge.toml", &files()).is_ok());
    let c = config::load(TEST_CONFIG, "edge.toml", &files()).unwrap();
    assert_eq!(c.issuers.len(), 3);
    assert_eq!(
        c.regions
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["eu", "eu2", "us"]
    );
}

#[test]
fn unknown_keys_are_errors_with_location_and_suggestion() {
    let text = MINIMAL
        .replace("audiences = [", "audience = [\"x\"]\naudiences = [")
        .replace(
            "[[route]]\npath = \"/\"",
            "[[route]]\npath = \"/\"\nscope_any = [\"a\"]",
        );
    let diags = errors(&text);
    let d = find(&diags, "unknown key `issuer[0].audience`");
    assert_eq!(
        (d.file.as_str(), d.line, d.column),
        ("edge.toml", line_of(&text, "audience = [\"x\"]"), 1)
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `audiences`?"));
    let d = find(&diags, "unknown key `route[0].scope_any`");
    assert_eq!(d.line, line_of(&text, "scope_any"));
    assert_eq!(d.hint.as_deref(), Some("did you mean `scopes_any`?"));
    let top = errors(&format!("{MINIMAL}\n[limitz]\nmax_token_bytes = 1000\n"));
    let d = find(&top, "unknown key `limitz`");
    assert!(d.hint.as_deref().unwrap().contains("limits"), "{d}");
}

#[test]
fn unknown_regions_are_errors_wherever_they_are_named() {
    let text = MINIMAL
        .replace(
            "missing = \"eu\"",
            "missing = \"europe\"\nanonymous = \"us\"",
        )
        .replace(
            "backends = [\"http://127.0.0.1:9101\"]",
            "backends = [\"http://127.0.0.1:9101\"]\nfailover = [\"eu-west\"]",
        )
        .replace("path = \"/\"", "path = \"/\"\nregions = [\"eu\", \"mars\"]");
    let diags = errors(&text);
    let d = find(&diags, "unknown region `europe`");
    assert_eq!(d.line, line_of(&text, "missing = \"europe\""));
    assert_eq!(d.column, "missing = ".len() + 1);
    assert!(d.hint.as_deref().unwrap().contains("eu"), "{d}");
    assert_eq!(
        find(&diags, "unknown region `us`").line,
        line_of(&text, "anonymous")
    );
    assert_eq!(
        find(&diags, "unknown region `eu-west`").line,
        line_of(&text, "failover")
    );
    assert_eq!(
        find(&diags, "unknown region `mars`").line,
        line_of(&text, "regions = ")
    );
}

#[test]
fn routes_no_region_can_serve_are_errors() {
    // A public route has no identity, so it is served in the anonymous region: "deny" means
    // it could never be served.
    let text = MINIMAL.replace("path = \"/\"", "path = \"/\"\nauth = \"public\"");
    let d = find(&errors(&text), "can never be served");
    assert_eq!(d.line, line_of(&text, "[[route]]"));
    assert!(
        d.hint.as_deref().unwrap().contains("residency.anonymous"),
        "{d}"
    );
    // Or its region list excludes the anonymous region.
    let text = TEST_CONFIG.replace(
        "path = \"/public\"\nauth = \"public\"",
        "path = \"/public\"\nauth = \"public\"\nregions = [\"eu\"]",
    );
    find(&errors(&text), "its regions exclude the anonymous region");
    // Rules on a public route can never apply.
    let text = TEST_CONFIG.replace(
        "path = \"/public\"\nauth = \"public\"",
        "path = \"/public\"\nauth = \"public\"\nscopes_any = [\"x\"]",
    );
    find(&errors(&text), "authorization rules that can never apply");
}

#[test]
fn empty_or_unsafe_algorithm_lists_refuse_to_start() {
    let text = MINIMAL.replace("algorithms = [\"ES256\"]", "algorithms = []");
    let d = find(&errors(&text), "algorithms` is empty");
    assert_eq!(d.line, line_of(&text, "algorithms = []"));
    let text = MINIMAL.replace(
        "algorithms = [\"ES256\"]",
        "algorithms = [\"none\", \"es256\", \"RS255\"]",
    );
    let diags = errors(&text);
    find(&diags, "algorithm `none`");
    assert_eq!(
        find(&diags, "unknown algorithm `es256`").hint.as_deref(),
        Some("did you mean `ES256`?")
    );
    assert_eq!(
        find(&diags, "unknown algorithm `RS255`").hint.as_deref(),
        Some("did you mean `RS256`?")
    );
    let text = MINIMAL.replace(
        "algorithms = [\"ES256\"]",
        "algorithms = [\"ES256\", \"HS256\"]",
    );
    find(&errors(&text), "mixes HMAC and public-key algorithms");
    let text = MINIMAL.replace("algorithms = [\"ES256\"]", "");
    let d = find(&errors(&text), "`issuer[0].algorithms` is required");
    assert!(d.hint.is_some());
}

#[test]
fn hmac_secrets_shorter_than_the_hash_output_are_errors() {
    let text = TEST_CONFIG.replace(
        "algorithms = [\"HS256\"]",
        "algorithms = [\"HS256\", \"HS512\"]",
    );
    let d = find(&errors(&text), "HS512 needs at least 64");
    assert_eq!(d.line, line_of(&text, "hmac_secret_file"));
    assert!(d.message.contains("48 bytes"), "{d}");
    let short = files().with("internal.key", b64(&[1; 16]));
    let err = config::load(TEST_CONFIG, "edge.toml", &short).unwrap_err();
    assert!(
        err.diagnostics
            .iter()
            .any(|d| d.message.contains("16 bytes; HS256 needs at least 32")),
        "{err}"
    );
    let garbage = files().with("internal.key", "not base64!");
    let err = config::load(TEST_CONFIG, "edge.toml", &garbage).unwrap_err();
    assert!(
        err.diagnostics
            .iter()
            .any(|d| d.message.contains("not base64url")),
        "{err}"
    );
}

#[test]
fn plain_http_key_urls_need_the_insecure_option() {
    let text = MINIMAL.replace(
        "jwks_file = \"main.jwks.json\"",
        "jwks_uri = \"http://127.0.0.1:9000/jwks.json\"",
    );
    let d = find(&errors(&text), "plain http");
    assert_eq!(d.line, line_of(&text, "jwks_uri"));
    assert!(
        d.hint.as_deref().unwrap().contains("insecure_http_jwks"),
        "{d}"
    );
    let allowed = text.replace("jwks_uri =", "insecure_http_jwks = true\njwks_uri =");
    assert!(config::load(&allowed, "edge.toml", &files()).is_ok());
    // Discovery derives its URL from the issuer; an http issuer needs the option too.
    let text = MINIMAL
        .replace(
            "issuer = \"https://idp.test\"",
            "issuer = \"http://idp.test\"",
        )
        .replace("jwks_file = \"main.jwks.json\"", "discovery = true");
    find(&errors(&text), "plain http");
    let text = MINIMAL.replace("jwks_file = \"main.jwks.json\"", "discovery = true");
    let c = config::load(&text, "edge.toml", &files()).unwrap();
    assert!(
        matches!(&c.issuers[0].keys, portcullis_core::config::KeySource::Discovery(u) if u == "https://idp.test/.well-known/openid-configuration")
    );
}

#[test]
fn failover_across_jurisdictions_is_an_error() {
    let text = TEST_CONFIG.replace("failover = [\"eu2\"]", "failover = [\"eu2\", \"us\"]");
    let d = find(&errors(&text), "may not fail over to `us`");
    assert_eq!(d.line, line_of(&text, "failover"));
    assert!(
        d.message.contains("(EU)") && d.message.contains("(US)"),
        "{d}"
    );
}

#[test]
fn every_problem_is_reported_at_once_in_source_order() {
    let text = r#"
[[issuer]]
name = "main"
issuer = "https://idp.test"
jwks_uri = "http://idp.test/jwks"
audiences = []
algorithms = ["ES256"]
clock_skew = "1 minute"

[region.eu]
jurisdiction = "EU"
backends = ["ftp://eu.example"]

[residency]
missing = "moon"

[[route]]
path = "api"
auth = "sometimes"

[audit]
subject_key_file = "missing.key"
"#;
    let diags = errors(text);
    let expected = [
        ("plain http", "jwks_uri"),
        ("audiences` is empty", "audiences"),
        ("clock_skew", "clock_skew"),
        ("ftp://eu.example", "backends"),
        ("unknown region `moon`", "missing ="),
        ("must start with `/`", "path = \"api\""),
        ("unknown auth mode", "auth ="),
        ("cannot read \"missing.key\"", "subject_key_file"),
    ];
    for (needle, line_text) in expected {
        let d = find(&diags, needle);
        assert_eq!(d.line, line_of(text, line_text), "{d}");
        assert!(d.column >= 1);
    }
    let lines: Vec<usize> = diags.iter().map(|d| d.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted, "diagnostics come in source order");
    // The rendered error reads like a compiler's.
    let rendered = config::load(text, "edge.toml", &files())
        .unwrap_err()
        .to_string();
    assert!(
        rendered.contains(&format!("edge.toml:{}:", line_of(text, "jwks_uri"))),
        "{rendered}"
    );
    assert!(rendered.contains("hint: "), "{rendered}");
    assert!(
        rendered.ends_with(&format!("{} problem(s) in the configuration", diags.len())),
        "{rendered}"
    );
}

#[test]
fn toml_syntax_errors_are_located() {
    let text = "[[issuer]]\nname = \"main\nissuer = 3\n";
    let diags = errors(text);
    assert!(diags[0].message.starts_with("TOML syntax"), "{diags:#?}");
    assert_eq!(diags[0].line, 2);
}

#[test]
fn type_errors_say_what_was_expected_and_found() {
    let text = MINIMAL
        .replace("algorithms = [\"ES256\"]", "algorithms = \"ES256\"")
        .replace("[[route]]\npath = \"/\"", "[[route]]\npath = 7");
    let diags = errors(&text);
    find(
        &diags,
        "`issuer[0].algorithms` must be an array of strings, found string",
    );
    find(&diags, "`route[0].path` must be a string, found integer");
}

#[test]
fn key_sources_must_be_exactly_one() {
    let text = MINIMAL.replace(
        "jwks_file = \"main.jwks.json\"",
        "jwks_file = \"main.jwks.json\"\njwks_uri = \"https://idp.test/jwks\"",
    );
    find(&errors(&text), "exactly one key source, found 2");
    let text = MINIMAL.replace("jwks_file = \"main.jwks.json\"", "");
    find(&errors(&text), "exactly one key source, found 0");
    let text = MINIMAL.replace(
        "jwks_file = \"main.jwks.json\"",
        "jwks_file = \"nope.json\"",
    );
    find(&errors(&text), "cannot read \"nope.json\"");
}

#[test]
fn missing_sections_are_explained() {
    let diags = errors("");
    find(&diags, "no [[issuer]]");
    find(&diags, "no [region.NAME]");
    find(&diags, "no [[route]]");
    find(&diags, "no [audit]");
}

#[test]
fn identity_headers_and_limits_are_checked() {
    let text = format!(
        "{MINIMAL}\n[identity]\nstrip = [\"x-user-*\", \"bad header*\", \"*\"]\nheaders = {{ \"authorization\" = \"sub\", \"x-ok\" = 5 }}\n\n[limits]\nmax_token_bytes = 10\n"
    );
    let diags = errors(&text);
    find(&diags, "strip pattern \"bad header*\"");
    find(&diags, "strip pattern \"*\"");
    find(&diags, "`authorization` cannot carry identity");
    find(&diags, "identity header `x-ok` must name a claim");
    find(&diags, "max_token_bytes` = 10");
}

#[test]
fn duplicate_routes_and_issuers_are_errors() {
    let text = format!("{MINIMAL}\n[[route]]\npath = \"/\"\n");
    find(&errors(&text), "defined twice");
    let text = TEST_CONFIG.replace("name = \"partner\"", "name = \"main\"");
    find(&errors(&text), "two issuers are named `main`");
}

#[test]
fn risk_plugin_sections_are_checked_like_the_rest() {
    let text = format!(
        "{MINIMAL}
[plugin.geo]
path = \"geo.wasm\"
on_error = \"maybe\"
deadline = \"5s\"
memory_mb = 512
headers = [\"Authorization\", \"user-agent\"]
config = {{ blocked = [\"XX\"], nested = {{ a = 1.5 }} }}

[[route]]
path = \"/risky\"
[route.risk]
plugins = [\"gea\", \"geo\", \"geo\"]
step_up = 80
deny = 60
combine = \"average\"

[client]
country_header = \"cf-ipcountry\"
trusted_proxies = [\"10.0.0.1/8\"]
"
    );
    let diags = errors(&text);
    let on_error = find(&diags, "unknown on_error policy `maybe`");
    assert_eq!(on_error.line, line_of(&text, "on_error = \"maybe\""));
    find(&diags, "plugin deadline 5s is outside 1ms..=1s");
    find(&diags, "memory_mb` = 512 is outside 1..=64");
    find(&diags, "may not see the `authorization` header");
    let unknown = find(&diags, "unknown plugin `gea`");
    assert_eq!(unknown.hint.as_deref(), Some("did you mean `geo`?"));
    find(&diags, "plugin `geo` is listed twice");
    find(&diags, "thresholds must rise");
    find(&diags, "`step_up` threshold needs `step_up_acr`");
    find(&diags, "unknown combine mode `average`");
    find(&diags, "has host bits set");
}

#[test]
fn client_headers_without_trusted_proxies_are_an_error_and_plugin_config_becomes_json() {
    let diags = errors(&format!(
        "{MINIMAL}\n[client]\nip_header = \"x-forwarded-for\"\n"
    ));
    find(&diags, "no trusted_proxies");
    let text = format!(
        "{MINIMAL}
[plugin.geo]
path = \"geo.wasm\"
config = {{ blocked = [\"XX\"], nested = {{ a = 1.5, when = 1979-05-27T07:32:00Z }} }}
[[route]]
path = \"/risky\"
risk = {{ plugins = [\"geo\"], step_up = 40, step_up_acr = [\"mfa\"], challenge = 60, deny = 90 }}
"
    );
    let cfg = config::load(&text, "edge.toml", &files()).unwrap();
    let plugin = &cfg.plugins[0];
    assert_eq!(
        plugin.on_error,
        config::FailPolicy::Deny,
        "fail closed by default"
    );
    assert_eq!(plugin.deadline, std::time::Duration::from_millis(5));
    assert_eq!(plugin.memory_bytes, 16 << 20);
    let json: serde_json::Value = serde_json::from_str(&plugin.config_json).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"blocked": ["XX"], "nested": {"a": 1.5, "when": "1979-05-27T07:32:00Z"}})
    );
    let risk = cfg.routes[1].risk.as_ref().unwrap();
    assert_eq!(
        (risk.step_up, risk.challenge, risk.deny),
        (Some(40), Some(60), Some(90))
    );
    // The snapshot the component restores keeps all of it.
    let restored = config::Config::from_snapshot(&cfg.to_snapshot()).unwrap();
    assert_eq!(restored.plugins, cfg.plugins);
    assert_eq!(restored.routes[1].risk, cfg.routes[1].risk);
}

#[test]
fn agent_gateway_token_and_dpop_sections_are_checked() {
    let text = format!(
        "{MINIMAL}
[[route]]
path = \"/agents\"
require_dpop = true
[route.agents]
actors = [\"assistant\"]
max_depth = 9
require_workload = true

[gateway_token]
header = \"x-portcullis-identity\"
issuer = \"https://gw\"
ttl = \"5m\"
algorithm = \"RS256\"
key_files = [\"missing.key\", \"audit.key\"]

[dpop]
scheme = \"ftp\"
max_age = \"1h\"
"
    );
    let diags = errors(&text);
    find(&diags, "agents.scopes` is required");
    find(&diags, "`agents.max_depth` = 9 is outside 1..=5");
    find(&diags, "`require_workload` needs `workload_header`");
    find(&diags, "gateway token ttl 300s is outside 1s..=60s");
    find(&diags, "signed with EdDSA, not `RS256`");
    find(&diags, "gateway key \"missing.key\"");
    find(&diags, "dpop scheme `ftp` must be https or http");
    find(&diags, "dpop max_age 3600s is over 10m");
}

#[test]
fn rate_limit_state_and_challenge_sections_are_checked() {
    let text = format!(
        "{MINIMAL}
[[route]]
path = \"/limited\"
auth = \"public\"
[[route.rate_limit]]
key = \"subject\"
rate = 10
per = \"1m\"
[[route.rate_limit]]
key = \"country\"
rate = 0
per = \"2d\"
[[route.rate_limit]]
name = \"same\"
key = \"ip\"
rate = 5
per = \"1s\"
[[route.rate_limit]]
name = \"same\"
key = \"route\"
rate = 5
per = \"1s\"
burst = 0
[[route.rate_limit]]
key = \"ip\"

[state]
backend = \"redis\"
url = \"memcached://cache:6380\"
ca = \"ca.pem\"
pool = 0
timeout = \"10s\"
on_unavailable = \"maybe\"

[challenge]
min_bits = 22
max_bits = 30
clearance_ttl = \"2d\"
"
    );
    let diags = errors(&text);
    find(&diags, "public route has no verified identity");
    find(&diags, "unknown rate limit key `country`");
    find(
        &diags,
        "`route[1].rate_limit[1].rate` = 0 is outside 1..=1000000",
    );
    find(&diags, "rate limit period 172800s is outside 1ms..=24h");
    find(&diags, "two rate limits of this route are named `same`");
    find(&diags, "`route[1].rate_limit[3].burst` = 0 is outside");
    let missing = find(&diags, "`route[1].rate_limit[4].rate` is required");
    assert!(missing.hint.is_some());
    let scheme = find(&diags, "is not a redis:// or rediss:// URL");
    assert!(scheme.hint.unwrap().contains("rediss://"));
    find(&diags, "`state.ca` needs rediss:// servers");
    find(&diags, "`state.pool` = 0 is outside 1..=64");
    find(&diags, "state timeout 10s is outside 1ms..=5s");
    find(&diags, "unknown on_unavailable policy `maybe`");
    find(&diags, "`challenge.max_bits` = 30 is outside 4..=26");
    find(
        &diags,
        "challenge clearance_ttl 172800s is outside 10s..=24h",
    );
    assert!(
        !diags.iter().any(|d| d.message.contains("above max_bits")),
        "{diags:#?}"
    );

    let turnstile = errors(&format!(
        "{MINIMAL}\n[challenge.turnstile]\nsite_key = \"bad key!\"\nsecret_file = \"nope.secret\"\nverify_url = \"http://verify.example/siteverify\"\nscript_url = \"http://x.example/api.js\"\n"
    ));
    find(&turnstile, "site_key \"bad key!\" must be letters");
    find(&turnstile, "cannot read \"nope.secret\"");
    find(
        &turnstile,
        "must be https (plain http only to a loopback sidecar)",
    );
    find(
        &turnstile,
        "script_url \"http://x.example/api.js\" must be a plain https URL",
    );

    let unknown = errors(&format!("{MINIMAL}\n[state]\nbackend = \"etcd\"\n"));
    find(&unknown, "unknown state backend `etcd`");
    let inverted = errors(&format!(
        "{MINIMAL}\n[challenge]\nmin_bits = 20\nmax_bits = 12\n"
    ));
    find(&inverted, "min_bits 20 is above max_bits 12");

    // A valid setup loads, defaults filled in, and survives the component's snapshot.
    let ok = format!(
        "{MINIMAL}
[[route]]
path = \"/api\"
[[route.rate_limit]]
key = \"client_id\"
rate = 100
per = \"1m\"
[[route.rate_limit]]
name = \"per-user\"
key = \"subject\"
rate = 10
per = \"1s\"
burst = 20

[state]
backend = \"redis\"
url = \"redis://127.0.0.1:6379/0\"
"
    );
    let cfg = config::load(&ok, "edge.toml", &files()).unwrap();
    let limits = &cfg.routes[1].rate_limits;
    assert_eq!(
        (
            limits[0].name.as_str(),
            limits[0].burst,
            limits[0].interval_us()
        ),
        ("client_id", 100, 600_000)
    );
    assert_eq!((limits[1].name.as_str(), limits[1].burst), ("per-user", 20));
    assert!(matches!(
        &cfg.state.backend,
        config::StateBackend::Redis { pool: 4, prefix, .. } if prefix == "portcullis:"
    ));
    assert_eq!(cfg.state.on_unavailable, config::FailPolicy::Deny);
    let restored = config::Config::from_snapshot(&cfg.to_snapshot()).unwrap();
    assert_eq!(restored.routes[1].rate_limits, cfg.routes[1].rate_limits);
    assert_eq!(restored.state, cfg.state);
}

/// Redis is reached one way: one server (`url`), a cluster (`cluster`) or Sentinel
/// (`sentinels` + `service`); each is checked where it is written.
#[test]
fn redis_servers_are_one_server_a_cluster_or_sentinel() {
    let state = |keys: &str| errors(&format!("{MINIMAL}\n[state]\nbackend = \"redis\"\n{keys}"));
    let none = state("");
    let hint = find(&none, "`backend = \"redis\"` needs its servers").hint;
    assert!(hint.unwrap().contains("sentinels"));
    find(
        &state("url = \"redis://a:6379/0\"\ncluster = [\"redis://b:7000\"]\n"),
        "`state.cluster` beside `state.url`: give only one way to the servers",
    );
    let cluster = state(
        "cluster = [\"redis://b:7000/2\", \"rediss://c:7000\", \"http://d:7000\"]\nprefix = \"{gw}:\"\n",
    );
    find(
        &cluster,
        "names database 2: a Redis Cluster has only database 0",
    );
    find(
        &cluster,
        "`state.cluster` mixes redis:// and rediss:// nodes",
    );
    find(
        &cluster,
        "\"http://d:7000\" is not a redis:// or rediss:// URL",
    );
    find(&cluster, "state prefix \"{gw}:\" holds a brace");
    find(&state("cluster = []\n"), "`state.cluster` names no node");
    find(
        &state("sentinels = [\"redis://s:26379\"]\n"),
        "`state.service` is required",
    );
    let tls_sentinel =
        state("sentinels = [\"rediss://s:26379\"]\nservice = \"gw\"\nca = \"ca.pem\"\n");
    find(&tls_sentinel, "Sentinel over TLS is not built in");
    find(&tls_sentinel, "`state.ca` needs rediss:// servers");
    find(
        &state("url = \"redis://a:6379/0\"\nservice = \"gw\"\n"),
        "`state.service` is the name Sentinel watches: it needs `sentinels`",
    );

    for (keys, servers) in [
        (
            "cluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\n",
            config::RedisServers::Cluster {
                nodes: vec![
                    "redis://10.0.0.1:7000".into(),
                    "redis://10.0.0.2:7000".into(),
                ],
            },
        ),
        (
            "sentinels = [\"redis://10.0.0.1:26379\"]\nservice = \"gw\"\n",
            config::RedisServers::Sentinel {
                sentinels: vec!["redis://10.0.0.1:26379".into()],
                service: "gw".into(),
            },
        ),
    ] {
        let text = format!("{MINIMAL}\n[state]\nbackend = \"redis\"\n{keys}");
        let cfg = config::load(&text, "edge.toml", &files()).unwrap();
        assert!(
            matches!(&cfg.state.backend, config::StateBackend::Redis { servers: s, .. } if *s == servers),
            "{:?}",
            cfg.state.backend
        );
        let restored = config::Config::from_snapshot(&cfg.to_snapshot()).unwrap();
        assert_eq!(restored.state, cfg.state);
    }
}

/// The `session_anomaly` check and the `revoke` threshold need `[session]` (its weights,
/// the sessions they end); the weights are 0..=100 and the use rules' limits bounded; a
/// client location needs both coordinate headers.
#[test]
fn session_anomaly_needs_sessions_and_weights_in_range() {
    let weights = errors(&format!(
        "{MINIMAL}\n[session.anomaly]\nagent = 101\ntravel = 101\nmax_speed_kmh = 50\n\
         distant_km = 30000\nconcurrent_window = \"2h\"\n"
    ));
    find(&weights, "`session.anomaly.agent` = 101 is outside 0..=100");
    find(
        &weights,
        "`session.anomaly.travel` = 101 is outside 0..=100",
    );
    find(
        &weights,
        "`session.anomaly.max_speed_kmh` = 50 is outside 100..=20000",
    );
    find(
        &weights,
        "`session.anomaly.distant_km` = 30000 is outside 10..=20000",
    );
    find(
        &weights,
        "`session.anomaly.concurrent_window` 7200s is outside 10s..=3600s",
    );
    // A location needs both coordinates, from a trusted proxy.
    let half = errors(&format!(
        "{MINIMAL}\n[client]\ntrusted_proxies = [\"10.0.0.0/8\"]\nlatitude_header = \"x-lat\"\n"
    ));
    find(
        &half,
        "[client] names one of latitude_header and longitude_header: give both or neither",
    );
    let untrusted = errors(&format!(
        "{MINIMAL}\n[client]\nlatitude_header = \"x-lat\"\nlongitude_header = \"x-lon\"\n"
    ));
    find(
        &untrusted,
        "client headers are set but no trusted_proxies: they would never be believed",
    );
    let text = format!(
        "{MINIMAL}
[[route]]
path = \"/api\"
[route.risk]
checks = [\"session_anomaly\"]
step_up = 40
step_up_acr = [\"mfa\"]

[[route]]
path = \"/other\"
[route.risk]
checks = [\"automation\"]
revoke = 90
"
    );
    let diags = errors(&text);
    let anomaly = find(
        &diags,
        "route \"/api\" has check `session_anomaly` but there is no [session]",
    );
    assert!(anomaly.hint.unwrap().contains("[session.anomaly]"));
    find(
        &diags,
        "route \"/other\" has a `revoke` threshold but there is no [session]",
    );
    // A route's own weights: checked as the session's, and only with the check.
    let text = format!(
        "{MINIMAL}
[[route]]
path = \"/api\"
[route.risk]
checks = [\"automation\"]
[route.risk.anomaly]
travel = 120
"
    );
    let diags = errors(&text);
    find(&diags, "`risk.anomaly.travel` = 120 is outside 0..=100");
    find(
        &diags,
        "`[route.risk.anomaly]` weighs the `session_anomaly` check, which the route does not run",
    );
    let bound =
        errors(&MINIMAL.replace("[[issuer]]\n", "[[issuer]]\nsession_bound_tokens = true\n"));
    find(
        &bound,
        "`issuer[0].session_bound_tokens` needs [issuer.login]",
    );
}

#[test]
fn session_and_login_sections_are_checked() {
    let text = format!(
        "{MINIMAL}
[issuer.login]
client_id = \"gw\"
client_secret_file = \"missing.secret\"
redirect_uri = \"http://app.example/callback\"
scopes = [\"email\"]

[[issuer]]
name = \"accounts\"
issuer = \"https://accounts.test\"
discovery = true
audiences = [\"api://shop\"]
algorithms = [\"ES256\"]

[[route]]
path = \"/app\"
login = [\"accounts\", \"nobody\"]

[[route]]
path = \"/open\"
auth = \"public\"
login = [\"main\"]

[session]
idle_timeout = \"2d\"
absolute_lifetime = \"1d\"
cookie = \"portcullis\"
[[session.key]]
id = \"far too long for a key id\"
file = \"audit.key\"
[[session.key]]
id = \"short\"
file = \"main.jwks.json\"
"
    );
    let diags = errors(&text);
    find(&diags, "cannot read \"missing.secret\"");
    let redirect = find(
        &diags,
        "redirect_uri \"http://app.example/callback\" must be",
    );
    assert!(redirect.hint.is_some());
    find(&diags, "lacks \"openid\"");
    find(&diags, "unknown login provider `nobody`");
    find(
        &diags,
        "logs in with `accounts`, which has no [issuer.login]",
    );
    find(&diags, "public route \"/open\" has `login`");
    find(
        &diags,
        "session idle_timeout is longer than absolute_lifetime",
    );
    let cookie = find(
        &diags,
        "session cookie name \"portcullis\" must start with __Host-",
    );
    assert!(cookie.hint.unwrap().contains("subdomains"));
    find(&diags, "session key id \"far too long for a key id\"");
    find(
        &diags,
        "session key file \"main.jwks.json\" does not hold 32 bytes",
    );
    find(&diags, "[session] has no [[session.key]]");

    // Without [session], a login route is an error too.
    let text = format!(
        "{MINIMAL}
[[issuer]]
name = \"accounts\"
issuer = \"https://accounts.test\"
discovery = true
audiences = [\"api://shop\"]
algorithms = [\"ES256\"]
[issuer.login]
client_id = \"gw\"
client_secret_file = \"audit.key\"
redirect_uri = \"https://app.example/_portcullis/callback\"

[[route]]
path = \"/app\"
login = [\"accounts\"]
"
    );
    let diags = errors(&text);
    find(
        &diags,
        "route \"/app\" has `login` but there is no [session]",
    );
    assert_eq!(diags.len(), 1, "{diags:#?}");

    // The login endpoints come from discovery: a provider with a fixed key set cannot log in.
    let text = format!(
        "{MINIMAL}
[issuer.login]
client_id = \"gw\"
client_secret_file = \"audit.key\"
redirect_uri = \"https://app.example/_portcullis/callback\"
"
    );
    let diags = errors(&text);
    let d = find(&diags, "issuer `main` has [issuer.login] but no discovery");
    assert!(d.hint.unwrap().contains("discovery = true"));
}

/// `[issuer.login]` client authentication and authorize parameters: each misuse is an
/// error at its own line, with the way out.
#[test]
fn login_client_authentication_and_authorize_params_are_checked() {
    let login = |extra: &str| {
        format!(
            "{MINIMAL}
[[issuer]]
name = \"accounts\"
issuer = \"https://accounts.test\"
discovery = true
audiences = [\"api://shop\"]
algorithms = [\"ES256\"]
[issuer.login]
client_id = \"gw\"
redirect_uri = \"https://app.example/_portcullis/callback\"
{extra}
"
        )
    };
    // An unknown method names the three.
    let text = login("client_secret_file = \"audit.key\"\nclient_auth = \"tls_client_auth\"");
    let d = find(&errors(&text), "unknown client_auth \"tls_client_auth\"");
    assert!(d.hint.unwrap().contains("private_key_jwt"));
    assert_eq!(d.line, line_of(&text, "tls_client_auth"));
    // private_key_jwt needs a key, and a key that is a private JWK.
    let text = login("client_auth = \"private_key_jwt\"");
    find(&errors(&text), "needs client_key_file");
    let text = login("client_auth = \"private_key_jwt\"\nclient_key_file = \"main.jwks.json\"");
    let d = find(&errors(&text), "client key \"main.jwks.json\"");
    assert_eq!(d.line, line_of(&text, "client_key_file"));
    // A secret with a key, or a key without private_key_jwt, is a mistake.
    let text = login(
        "client_auth = \"private_key_jwt\"\nclient_key_file = \"main.jwks.json\"\nclient_secret_file = \"audit.key\"",
    );
    find(&errors(&text), "client_secret_file is not used with");
    let text = login("client_secret_file = \"audit.key\"\nclient_key_file = \"audit.key\"");
    find(&errors(&text), "client_key_file is used only with");
    // Parameters the gateway sets itself cannot be overridden; values are strings.
    let text = login(
        "client_secret_file = \"audit.key\"\nauthorize_params = { redirect_uri = \"https://evil.example/\", audience = 3 }",
    );
    let diags = errors(&text);
    find(&diags, "authorize_params may not set `redirect_uri`");
    find(&diags, "authorize parameter `audience` must be a string");
    // response_mode is query or form_post.
    let text = login("client_secret_file = \"audit.key\"\nresponse_mode = \"fragment\"");
    let d = find(&errors(&text), "unknown response_mode \"fragment\"");
    assert!(d.hint.unwrap().contains("form_post"));
    // And a correct one loads.
    let text = login(
        "client_secret_file = \"audit.key\"\nclient_auth = \"client_secret_post\"\nauthorize_params = { audience = \"https://api.example\" }",
    );
    let loaded = config::load(&text, "edge.toml", &files()).unwrap();
    let client = loaded.issuers[1].login.as_ref().unwrap();
    assert_eq!(client.client_auth.name(), "client_secret_post");
    assert_eq!(
        client.authorize_params,
        vec![("audience".to_owned(), "https://api.example".to_owned())]
    );
}

/// Claim paths in route rules, identity headers and an issuer's `scopes_claim` are parsed
/// at load: a malformed one is an error at its line, saying what is wrong.
#[test]
fn claim_paths_are_checked_where_they_are_written() {
    let text = format!(
        "{MINIMAL}
[[route]]
path = \"/admin\"
claims = [{{ path = \"realm_access..roles\", contains = \"admin\" }}]

[[route]]
path = \"/both\"
claims = [{{ name = \"a\", path = \"b.c\", equals = true }}]

[identity]
headers = {{ \"x-roles\" = {{ path = \"groups[x]\" }}, \"x-other\" = {{ name = \"sub\" }} }}
"
    )
    .replace(
        "algorithms = [\"ES256\"]",
        "algorithms = [\"ES256\"]\nscopes_claim = \"[0]\"",
    );
    let diags = errors(&text);
    let d = find(
        &diags,
        "claim path \"realm_access..roles\": an empty member name",
    );
    assert_eq!(d.line, line_of(&text, "realm_access..roles"));
    find(
        &diags,
        "exactly one of `name` (a top-level claim) or `path`",
    );
    find(
        &diags,
        "identity header `x-roles`: claim path: `[x]` is not an array index",
    );
    find(
        &diags,
        "identity header `x-other`: a table names a nested claim with `path` only",
    );
    let d = find(
        &diags,
        "scopes_claim \"[0]\": a claim path starts with a member name",
    );
    assert_eq!(d.line, line_of(&text, "scopes_claim"));
}

/// A multi-tenant issuer (`{tenantid}` in `issuer`) needs its allowed tenants, and its
/// discovery the tenant segment of the shared document; both are refused elsewhere.
#[test]
fn multi_tenant_issuers_name_their_tenants() {
    let entra = |extra: &str| {
        format!(
            "{MINIMAL}
[[issuer]]
name = \"entra\"
issuer = \"https://login.example.test/{{tenantid}}/v2.0\"
audiences = [\"api://shop\"]
algorithms = [\"RS256\"]
{extra}
"
        )
    };
    let text = entra("discovery = true");
    let diags = errors(&text);
    find(&diags, "needs `tenants`, the tenants it accepts");
    find(&diags, "needs `discovery_tenant`");
    let text = entra("discovery = true\ntenants = []\ndiscovery_tenant = \"common\"");
    find(&errors(&text), "`tenants` is empty");
    let text = entra("discovery = true\ntenants = [\"a/b\"]\ndiscovery_tenant = \"common\"");
    find(&errors(&text), "\"a/b\" is not a tenant id");
    // On a plain issuer both keys are mistakes.
    let text = MINIMAL.replace(
        "jwks_file = \"main.jwks.json\"",
        "jwks_file = \"main.jwks.json\"\ntenants = [\"x\"]\ndiscovery_tenant = \"common\"",
    );
    let diags = errors(&text);
    find(&diags, "`tenants` is for a multi-tenant issuer");
    find(
        &diags,
        "`discovery_tenant` is for discovery of a multi-tenant issuer",
    );
    // A correct one loads, its discovery document at the shared tenant.
    let text = entra("discovery = true\ntenants = [\"contoso\"]\ndiscovery_tenant = \"common\"");
    let loaded = config::load(&text, "edge.toml", &files()).unwrap();
    let issuer = &loaded.issuers[1];
    assert_eq!(issuer.tenants, vec!["contoso".to_owned()]);
    assert!(matches!(
        &issuer.keys,
        config::KeySource::Discovery(url)
            if url == "https://login.example.test/common/v2.0/.well-known/openid-configuration"
    ));
    assert!(issuer.matches_iss("https://login.example.test/contoso/v2.0"));
    assert!(!issuer.matches_iss("https://login.example.test/common/v2.0"));
    assert!(!issuer.matches_iss("https://login.example.test/contoso/x/v2.0"));
}

/// `[issuer.introspection]` needs discovery, bounded cache lifetimes and a client; a route
/// may take opaque tokens from one introspecting issuer at most.
#[test]
fn introspection_sections_are_checked() {
    let issuer = |name: &str, extra: &str| {
        format!(
            "
[[issuer]]
name = \"{name}\"
issuer = \"https://{name}.test\"
discovery = true
audiences = [\"api://shop\"]
algorithms = [\"ES256\"]
{extra}
"
        )
    };
    let intro = "[issuer.introspection]\nclient_id = \"rs\"\nclient_secret_file = \"audit.key\"";
    // One introspecting issuer loads, with its defaults.
    let text = format!("{MINIMAL}{}", issuer("okta", intro));
    let loaded = config::load(&text, "edge.toml", &files()).unwrap();
    let i = loaded.issuers[1].introspection.as_ref().unwrap();
    assert_eq!(i.client_id, "rs");
    assert_eq!(i.client_auth.name(), "client_secret_basic");
    assert_eq!(i.cache_ttl, std::time::Duration::from_secs(60));
    // Two on the catch-all route: an opaque token would not say which to ask.
    let text = format!("{MINIMAL}{}{}", issuer("okta", intro), issuer("kc", intro));
    let d = find(&errors(&text), "introspecting issuers (okta, kc)");
    assert!(d.hint.unwrap().contains("issuers"));
    // ...but a route naming one of them is fine.
    let text = format!(
        "{}{}{}",
        MINIMAL.replace("path = \"/\"", "path = \"/\"\nissuers = [\"okta\"]"),
        issuer("okta", intro),
        issuer("kc", intro)
    );
    config::load(&text, "edge.toml", &files()).unwrap();
    // No discovery, a missing secret, an unbounded cache.
    let text = format!(
        "{MINIMAL}{}",
        issuer("okta", intro).replace("discovery = true", "jwks_file = \"main.jwks.json\"")
    );
    find(
        &errors(&text),
        "has [issuer.introspection] but no discovery",
    );
    let text = format!(
        "{MINIMAL}{}",
        issuer("okta", "[issuer.introspection]\nclient_id = \"rs\"")
    );
    find(&errors(&text), "client_secret_file");
    let text = format!(
        "{MINIMAL}{}",
        issuer("okta", &format!("{intro}\ncache_ttl = \"2h\""))
    );
    let d = find(&errors(&text), "`introspection.cache_ttl`");
    assert_eq!(d.line, line_of(&text, "cache_ttl"));
}

/// A route's `consent` needs a non-public route and issuers that record consent.
#[test]
fn consent_routes_are_checked() {
    let consent_issuer = "
[[issuer]]
name = \"accounts\"
issuer = \"https://accounts.test\"
discovery = true
audiences = [\"api://shop\"]
algorithms = [\"ES256\"]
[issuer.consent]
claim = \"consents.granted\"
scopes = { order-history = \"consent:orders\" }
";
    let route = |extra: &str| format!("\n[[route]]\npath = \"/history\"\n{extra}\n");
    // The route accepts `main` too, which records no consent.
    let text = format!(
        "{MINIMAL}{consent_issuer}{}",
        route("consent = [\"order-history\"]")
    );
    let d = find(&errors(&text), "issuer(s) main record none");
    // (At the route's table: its last `[[route]]`.)
    let lines: Vec<&str> = text.lines().collect();
    let table = lines.iter().rposition(|l| *l == "[[route]]").unwrap() + 1;
    assert_eq!(d.line, table);
    let text = format!(
        "{MINIMAL}{consent_issuer}{}",
        route("issuers = [\"accounts\"]\nconsent = [\"order-history\"]")
    );
    let loaded = config::load(&text, "edge.toml", &files()).unwrap();
    let c = loaded.issuers[1].consent.as_ref().unwrap();
    assert_eq!(c.scope_for("order-history"), "consent:orders");
    assert_eq!(c.scope_for("marketing"), "marketing");
    let history = loaded.routes.iter().find(|r| r.path == "/history").unwrap();
    assert_eq!(history.consent, ["order-history"]);
    let text = format!(
        "{MINIMAL}{consent_issuer}{}",
        route("auth = \"public\"\nconsent = [\"order-history\"]")
    );
    find(&errors(&text), "has `consent`");
    let text = format!(
        "{MINIMAL}{consent_issuer}{}",
        route("issuers = [\"accounts\"]\nconsent = [\"order history\"]")
    );
    find(&errors(&text), "consent purpose \"order history\"");
}
