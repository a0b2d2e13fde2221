//! The shipped configuration examples load; the docs show them verbatim, document exactly
//! the keys the loader accepts, and link only to files that exist.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use portcullis_core::config::{self, MapFiles};
use portcullis_tests::{DirFiles, b64, repo_root};

/// Loaded by its own test with a generated audit key: the key it names is not shipped.
const MINIMAL: &str = "minimal.toml";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_edge_config_example_loads() {
    let dir = repo_root().join("edge-config");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Deployment manifests for other runtimes are not gateway configurations.
        if path.extension().is_none_or(|e| e != "toml")
            || ["spin.toml", "wrangler.toml", MINIMAL].contains(&name.as_str())
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = config::load(&text, &name, &DirFiles(dir.clone())) {
            panic!("{e}");
        }
        loaded += 1;
    }
    assert!(loaded >= 1);
}

#[test]
fn the_minimal_configuration_loads_and_stays_small() {
    let text = read("edge-config/minimal.toml");
    let files = MapFiles::default().with("secrets/audit.key", b64(&[7; 32]));
    let cfg = config::load(&text, MINIMAL, &files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (cfg.issuers.len(), cfg.regions.len(), cfg.routes.len()),
        (1, 1, 1)
    );
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert!(lines <= 12, "minimal.toml has {lines} non-comment lines");
    // Without its key file it is refused, naming the file.
    let err = config::load(&text, MINIMAL, &MapFiles::default()).unwrap_err();
    assert!(err.to_string().contains("secrets/audit.key"), "{err}");
}

#[test]
fn the_readme_shows_the_minimal_configuration_verbatim() {
    let minimal = read("edge-config/minimal.toml");
    assert!(
        read("README.md").contains(minimal.trim()),
        "README.md must embed edge-config/minimal.toml unchanged"
    );
}

#[test]
fn the_configuration_reference_shows_the_reference_configuration_verbatim() {
    let example = read("edge-config/example.toml");
    assert!(
        read("docs/configuration.md").contains(example.trim()),
        "docs/configuration.md must embed edge-config/example.toml unchanged"
    );
}

/// A key no table accepts and no known key is close to, so the loader's "unknown key"
/// diagnostic lists every key it asked for in that table.
const PROBE: &str = "zzzz_probe_key";

/// The tables the reference documents, each with where to put the probe in a configuration
/// that has every table: the reference example plus the tables it leaves out.
const PROBED_TABLES: &[(&str, &[&str])] = &[
    ("issuer", &["issuer", "0"]),
    ("issuer.login", &["issuer", "0", "login"]),
    ("region.NAME", &["region", "eu"]),
    ("residency", &["residency"]),
    ("route", &["route", "0"]),
    ("route.claims", &["route", "1", "claims", "0"]),
    ("route.rate_limit", &["route", "5", "rate_limit", "0"]),
    ("route.risk", &["route", "5", "risk"]),
    ("route.agents", &["route", "0", "agents"]),
    ("identity", &["identity"]),
    ("audit", &["audit"]),
    ("limits", &["limits"]),
    ("session", &["session"]),
    ("session.key", &["session", "key", "0"]),
    ("client", &["client"]),
    ("bot", &["bot"]),
    ("bot.list", &["bot", "list", "0"]),
    ("bot.verified", &["bot", "verified", "0"]),
    ("state", &["state"]),
    ("challenge", &["challenge"]),
    ("challenge.turnstile", &["challenge", "turnstile"]),
    ("plugin.NAME", &["plugin", "probe"]),
    ("gateway_token", &["gateway_token"]),
    ("dpop", &["dpop"]),
    ("paths", &["paths"]),
    ("server", &["server"]),
    ("timeouts", &["timeouts"]),
];

/// `edge-config/example.toml` with every table it leaves out, and the files they name.
fn every_table() -> (toml::Table, MapFiles) {
    let mut cfg: toml::Table = read("edge-config/example.toml").parse().unwrap();
    let extra: toml::Table = r#"
        [plugin.probe]
        path = "probe.wasm"
        [gateway_token]
        header = "x-portcullis-identity"
        issuer = "https://gateway.example"
        key_files = ["secrets/gw.key"]
        [dpop]
        [paths]
        [server]
        [timeouts]
    "#
    .parse()
    .unwrap();
    for (table, value) in extra {
        assert!(!cfg.contains_key(&table), "the example now has [{table}]");
        cfg.insert(table, value);
    }
    // Into the example's own tables; the Redis keys exist only for a Redis state.
    let turnstile: toml::Table = "site_key = \"probe\"\nsecret_file = \"secrets/turnstile.secret\""
        .parse()
        .unwrap();
    let challenge = cfg["challenge"].as_table_mut().unwrap();
    challenge.insert("turnstile".into(), turnstile.into());
    let state = cfg["state"].as_table_mut().unwrap();
    state.insert("backend".into(), "redis".into());
    state.insert("url".into(), "redis://127.0.0.1:6379/0".into());
    let agents: toml::Table = "scopes = [\"orders:read\"]".parse().unwrap();
    cfg["route"][0]
        .as_table_mut()
        .unwrap()
        .insert("agents".into(), agents.into());
    let mut files = MapFiles::default()
        .with("secrets/gw.key", b64(&[3; 32]))
        .with("secrets/turnstile.secret", "probe-secret");
    let secrets = repo_root().join("edge-config/secrets");
    for entry in std::fs::read_dir(&secrets).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        files = files.with(&format!("secrets/{name}"), std::fs::read(&path).unwrap());
    }
    (cfg, files)
}

/// The keys the loader accepts in the table at `at` of `cfg`, from its own diagnostic.
fn accepted_keys(cfg: &toml::Table, files: &MapFiles, at: &[&str]) -> BTreeSet<String> {
    let mut probed = cfg.clone();
    let mut value = &mut probed[at[0]];
    for step in &at[1..] {
        value = match step.parse::<usize>() {
            Ok(i) => &mut value[i],
            Err(_) => &mut value[*step],
        };
    }
    value
        .as_table_mut()
        .unwrap_or_else(|| panic!("{at:?} is not a table"))
        .insert(PROBE.into(), 0.into());
    let err = config::load(&probed.to_string(), "probe.toml", files).unwrap_err();
    let diag = err
        .diagnostics
        .iter()
        .find(|d| d.message.starts_with("unknown key") && d.message.ends_with(&format!("{PROBE}`")))
        .unwrap_or_else(|| panic!("{at:?}: no unknown-key diagnostic in\n{err}"));
    let hint = diag.hint.as_deref().unwrap_or_default();
    let list = hint
        .strip_prefix("known keys here: ")
        .unwrap_or_else(|| panic!("{at:?}: unexpected hint {hint:?}"));
    list.split(", ").map(str::to_owned).collect()
}

/// The keys each table section of docs/configuration.md documents: a section starts at a
/// heading naming the table (`` ### `[issuer.login]` ``), a key is a table row starting with
/// `` | `key` | ``. Code blocks are skipped.
fn documented_keys(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_code = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if line.starts_with('#') {
            current = line.split_once("`[").and_then(|(_, rest)| {
                let (name, _) = rest.split_once("]`")?;
                Some(name.trim_matches(['[', ']']).to_owned())
            });
            if let Some(name) = &current {
                sections.entry(name.clone()).or_default();
            }
            continue;
        }
        let (Some(name), Some(row)) = (&current, line.strip_prefix("| `")) else {
            continue;
        };
        if let Some((key, _)) = row.split_once("` |") {
            sections
                .entry(name.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }
    sections
}

#[test]
fn the_configuration_reference_documents_exactly_the_keys_the_loader_accepts() {
    let doc = read("docs/configuration.md");
    let documented = documented_keys(&doc);
    let (cfg, files) = every_table();
    if let Err(e) = config::load(&cfg.to_string(), "every-table.toml", &files) {
        panic!("the probe base must load:\n{e}");
    }
    let mut problems = Vec::new();
    for (table, at) in PROBED_TABLES {
        let accepted = accepted_keys(&cfg, &files, at);
        let Some(keys) = documented.get(*table) else {
            problems.push(format!("[{table}] has no section in docs/configuration.md"));
            continue;
        };
        for key in accepted.difference(keys) {
            problems.push(format!("[{table}] `{key}` is accepted but not documented"));
        }
        for key in keys.difference(&accepted) {
            problems.push(format!("[{table}] `{key}` is documented but not accepted"));
        }
    }
    for table in documented.keys() {
        if !PROBED_TABLES.iter().any(|(t, _)| t == table) {
            problems.push(format!(
                "docs/configuration.md documents [{table}], which this test does not probe"
            ));
        }
    }
    // Every top-level section the loader names in its own hint has a reference section.
    let (mut top, files) = every_table();
    top.insert(PROBE.into(), 0.into());
    let err = config::load(&top.to_string(), "probe.toml", &files).unwrap_err();
    let hint = err
        .diagnostics
        .iter()
        .find(|d| d.message.contains(PROBE))
        .and_then(|d| d.hint.clone())
        .unwrap_or_default();
    let sections: Vec<&str> = hint
        .split(['[', ']'])
        .filter(|s| !s.is_empty() && !s.contains([' ', ',']))
        .collect();
    assert!(sections.len() > 10, "unexpected top-level hint {hint:?}");
    for section in sections {
        if !documented.contains_key(section) {
            problems.push(format!("top-level [{section}] has no section"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Markdown links `](target)` that are neither web addresses nor anchors.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or_default();
        let web = ["http://", "https://", "mailto:"]
            .iter()
            .any(|p| rest.starts_with(p));
        if !web && !target.is_empty() {
            out.push(target.to_owned());
        }
        rest = &rest[end..];
    }
    out
}

#[test]
fn relative_links_in_the_readme_and_docs_point_to_existing_files() {
    let root = repo_root();
    let mut pages = vec![root.join("README.md"), root.join("benches/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    assert!(pages.len() >= 8, "{pages:?}");
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let dir = page.parent().unwrap_or(Path::new("."));
        for target in relative_links(&text) {
            if !dir.join(&target).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn link_extraction_skips_web_addresses_and_anchors() {
    let links =
        relative_links("[a](docs/x.md) [b](https://example.com/y) [c](#top) [d](../e.md#part)");
    assert_eq!(links, ["docs/x.md", "../e.md"]);
}
