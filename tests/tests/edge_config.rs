//! The shipped configuration examples load; the docs show them verbatim, document exactly
//! the keys the loader accepts, and link only to files that exist.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "edge_config/schema.rs"]
mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use portcullis_core::config::{self, MapFiles};
use portcullis_tests::{DirFiles, b64, repo_root};
use serde_json::{Value, json};

use schema::SCHEMA_PATH;

/// Loaded by its own test with a generated audit key: the key it names is not shipped.
const MINIMAL: &str = "minimal.toml";

/// Deployment manifests for other runtimes in edge-config/: not gateway configurations.
const DEPLOYMENT_MANIFESTS: &[&str] = &["spin.toml", "wrangler.toml"];

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
        if path.extension().is_none_or(|e| e != "toml")
            || DEPLOYMENT_MANIFESTS.contains(&name.as_str())
            || name == MINIMAL
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
    ("issuer.introspection", &["issuer", "0", "introspection"]),
    ("issuer.consent", &["issuer", "0", "consent"]),
    ("region.NAME", &["region", "eu"]),
    ("region.NAME.tls", &["region", "eu", "tls"]),
    ("residency", &["residency"]),
    ("route", &["route", "0"]),
    ("route.claims", &["route", "1", "claims", "0"]),
    ("route.rate_limit", &["route", "5", "rate_limit", "0"]),
    ("route.risk", &["route", "5", "risk"]),
    ("route.risk.anomaly", &["route", "5", "risk", "anomaly"]),
    ("route.agents", &["route", "0", "agents"]),
    ("identity", &["identity"]),
    ("audit", &["audit"]),
    ("limits", &["limits"]),
    ("session", &["session"]),
    ("session.key", &["session", "key", "0"]),
    ("session.anomaly", &["session", "anomaly"]),
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
    ("server.tls", &["server", "tls"]),
    (
        "server.tls.certificates",
        &["server", "tls", "certificates", "0"],
    ),
    ("timeouts", &["timeouts"]),
    ("forward_auth", &["forward_auth"]),
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
        [server.tls]
        certificates = [{ cert = "tls/site.pem", key = "tls/site.key" }]
        [timeouts]
        [forward_auth]
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
    let region_tls: toml::Table = "ca = \"tls/ca.pem\"".parse().unwrap();
    cfg["region"]["eu"]
        .as_table_mut()
        .unwrap()
        .insert("tls".into(), region_tls.into());
    let state = cfg["state"].as_table_mut().unwrap();
    state.insert("backend".into(), "redis".into());
    state.insert("url".into(), "redis://127.0.0.1:6379/0".into());
    let issuer = cfg["issuer"][0].as_table_mut().unwrap();
    let introspection: toml::Table =
        "client_id = \"rs\"\nclient_secret_file = \"secrets/turnstile.secret\""
            .parse()
            .unwrap();
    issuer.insert("introspection".into(), introspection.into());
    let consent: toml::Table = "claim = \"consents\"".parse().unwrap();
    issuer.insert("consent".into(), consent.into());
    let agents: toml::Table = "scopes = [\"orders:read\"]".parse().unwrap();
    cfg["route"][0]
        .as_table_mut()
        .unwrap()
        .insert("agents".into(), agents.into());
    let risk = cfg["route"][5]["risk"].as_table_mut().unwrap();
    risk["checks"]
        .as_array_mut()
        .unwrap()
        .push("session_anomaly".into());
    let route_anomaly: toml::Table = "travel = 0".parse().unwrap();
    risk.insert("anomaly".into(), route_anomaly.into());
    let anomaly: toml::Table = "agent = 70".parse().unwrap();
    cfg["session"]
        .as_table_mut()
        .unwrap()
        .insert("anomaly".into(), anomaly.into());
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

/// The table at `at` of `cfg` (a path as in [`PROBED_TABLES`]; empty: `cfg` itself).
fn table_at<'a>(cfg: &'a mut toml::Table, at: &[&str]) -> &'a mut toml::Table {
    let Some((first, rest)) = at.split_first() else {
        return cfg;
    };
    let mut value = &mut cfg[*first];
    for step in rest {
        value = match step.parse::<usize>() {
            Ok(i) => &mut value[i],
            Err(_) => &mut value[*step],
        };
    }
    value
        .as_table_mut()
        .unwrap_or_else(|| panic!("{at:?} is not a table"))
}

/// The keys the loader accepts in the table at `at` of `cfg`, from its own diagnostic.
fn accepted_keys(cfg: &toml::Table, files: &MapFiles, at: &[&str]) -> BTreeSet<String> {
    let mut probed = cfg.clone();
    table_at(&mut probed, at).insert(PROBE.into(), 0.into());
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

/// `PORTCULLIS_BLESS=1`: tests that compare a committed file with what they generate rewrite
/// it instead of failing.
fn blessing() -> bool {
    std::env::var("PORTCULLIS_BLESS").is_ok_and(|v| v == "1")
}

#[test]
fn the_committed_schema_is_generated_from_the_configuration_reference() {
    let doc = read("docs/configuration.md");
    // The generator reads the very tables the key-drift test compares with the loader.
    let parsed: BTreeMap<String, BTreeSet<String>> = schema::sections(&doc)
        .into_iter()
        .map(|(name, s)| (name, s.rows.into_iter().map(|r| r.key).collect()))
        .collect();
    assert_eq!(
        parsed,
        documented_keys(&doc),
        "the schema generator and the key-drift test read docs/configuration.md differently"
    );
    let generated = schema::generate(&doc);
    let path = repo_root().join(SCHEMA_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == generated {
        return;
    }
    if blessing() {
        std::fs::write(&path, &generated).unwrap();
        // Straight to stderr: libtest captures `eprintln!` of passing tests.
        writeln!(
            std::io::stderr(),
            "PORTCULLIS_BLESS=1: {SCHEMA_PATH} differed from what docs/configuration.md \
             generates; regenerated it"
        )
        .unwrap();
        return;
    }
    let (old, new): (Vec<&str>, Vec<&str>) =
        (committed.lines().collect(), generated.lines().collect());
    let line = (0..old.len().max(new.len()))
        .find(|&i| old.get(i) != new.get(i))
        .unwrap_or_default();
    panic!(
        "{SCHEMA_PATH} is not what docs/configuration.md generates; first difference at line \
         {}:\n  committed: {:?}\n  generated: {:?}\nregenerate it with \
         PORTCULLIS_BLESS=1 cargo test -p portcullis-tests --test edge_config",
        line + 1,
        old.get(line),
        new.get(line)
    );
}

/// The committed schema (while blessing, what the drift test is writing there).
fn committed_schema() -> Value {
    let text = if blessing() {
        schema::generate(&read("docs/configuration.md"))
    } else {
        read(SCHEMA_PATH)
    };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{SCHEMA_PATH}: {e}"))
}

/// The object schema of the table `name` (`route.claims`, `region.NAME`, …) in `schema`.
fn schema_of<'a>(schema: &'a Value, name: &str) -> &'a Value {
    let mut s = schema;
    for segment in name.split('.') {
        s = if schema::is_placeholder(segment) {
            &s["additionalProperties"]
        } else {
            &s["properties"][segment]
        };
        if s["type"] == "array" {
            s = &s["items"];
        }
    }
    assert_eq!(s["type"], "object", "[{name}] in the schema: {s}");
    s
}

/// The keys of `list` (a JSON array of strings, or nothing).
fn strings(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn what_the_schema_requires_or_restricts_the_loader_refuses_too() {
    let schema = committed_schema();
    let (cfg, files) = every_table();
    let refused =
        |probed: &toml::Table| config::load(&probed.to_string(), "probe.toml", &files).is_err();
    let mut problems = Vec::new();
    let mut probes = 0;
    for key in strings(&schema["required"]) {
        let mut probed = cfg.clone();
        assert!(
            probed.remove(key).is_some(),
            "the probe base has no [{key}]"
        );
        probes += 1;
        if !refused(&probed) {
            problems.push(format!(
                "[{key}] is required by the schema, but the loader does without it"
            ));
        }
    }
    for (table, at) in PROBED_TABLES {
        let s = schema_of(&schema, table);
        let here = table_at(&mut cfg.clone(), at).clone();
        let as_json = |key: &str| here.get(key).map(|v| serde_json::to_value(v).unwrap());
        // A condition (`if`) on one key's value, and whether it holds in the probe base.
        let condition = s["if"]["properties"].as_object().map(|c| {
            let (key, constraint) = c.iter().next().unwrap();
            let holds = as_json(key).as_ref() == Some(&constraint["const"]);
            (key.clone(), constraint["const"].clone(), holds)
        });
        let mut required = strings(&s["required"]);
        if let Some((_, _, true)) = &condition {
            required.extend(strings(&s["then"]["required"]));
        }
        for key in required {
            let mut probed = cfg.clone();
            let removed = table_at(&mut probed, at).remove(key);
            assert!(
                removed.is_some(),
                "[{table}] of the probe base has no `{key}`"
            );
            probes += 1;
            if !refused(&probed) {
                problems.push(format!(
                    "[{table}] `{key}` is required by the schema, but the loader does without it"
                ));
            }
        }
        // Closed sets of values: the loader refuses a value outside them.
        for (key, p) in s["properties"].as_object().unwrap() {
            let outside: toml::Value = if p.get("enum").is_some() {
                PROBE.into()
            } else if p["items"].get("enum").is_some() {
                toml::Value::Array(vec![PROBE.into()])
            } else {
                continue;
            };
            let mut probed = cfg.clone();
            table_at(&mut probed, at).insert(key.clone(), outside);
            probes += 1;
            if !refused(&probed) {
                problems.push(format!(
                    "[{table}] `{key}`: the schema lists the values, but the loader also \
                     accepts {PROBE:?}"
                ));
            }
        }
        // Keys the schema allows only under the condition: refused without it.
        if let Some((key, value, holds)) = condition {
            assert!(
                holds,
                "[{table}]: the probe base should meet `{key} = {value}`"
            );
            let forbidden = s["else"]["properties"].as_object().unwrap();
            assert!(
                forbidden.keys().any(|k| here.contains_key(k)),
                "[{table}] of the probe base has none of {forbidden:?}"
            );
            let other = strings(&s["properties"][&key]["enum"])
                .into_iter()
                .find(|v| Some(*v) != value.as_str())
                .unwrap_or_else(|| panic!("[{table}] `{key}` lists no other value"));
            let mut probed = cfg.clone();
            table_at(&mut probed, at).insert(key.clone(), other.into());
            probes += 1;
            if !refused(&probed) {
                problems.push(format!(
                    "[{table}] {forbidden:?} need `{key} = {value}` in the schema, but the \
                     loader accepts them with `{key} = {other:?}`"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(probes >= 40, "only {probes} probes");
}

/// Validates TOML documents against a schema with Python's jsonschema, under draft 2020-12
/// and under draft 7 (as validators that ignore `$schema`, such as older taplo, read it).
/// Reads `{"schema": …, "documents": {name: {"toml": text, "fragment": bool}}}` (a fragment
/// is checked without the top-level `required`); prints `{"schema": [problems with the schema
/// or its defaults], "documents": {name: {draft: ["/json/path [keyword]: message", …]}}}`.
const VALIDATE_PY: &str = r#"
import json, sys, tomllib
try:
    import jsonschema
except ImportError:
    sys.exit("the schema tests need jsonschema: python3 -m pip install jsonschema")

request = json.load(sys.stdin)
schema = request["schema"]
fragment = {k: v for k, v in schema.items() if k != "required"}
drafts = [jsonschema.Draft202012Validator, jsonschema.Draft7Validator]

def errors(validator, instance):
    return sorted(
        "/" + "/".join(str(p) for p in e.absolute_path) + f" [{e.validator}]: {e.message}"
        for e in validator.iter_errors(instance)
    )

def subschemas(s):
    if not isinstance(s, dict):
        return
    yield s
    for v in s.get("properties", {}).values():
        yield from subschemas(v)
    for k in ("items", "additionalProperties", "if", "then", "else"):
        yield from subschemas(s.get(k))

problems = []
for draft in drafts:
    try:
        draft.check_schema(schema)
    except jsonschema.SchemaError as e:
        problems.append(f"{draft.__name__}: {e.message}")
for s in subschemas(schema):
    if "default" in s:
        problems += [f"default {s['default']!r}: {e}" for e in errors(drafts[0](s), s["default"])]
documents = {}
for name, doc in request["documents"].items():
    instance = tomllib.loads(doc["toml"])
    s = fragment if doc["fragment"] else schema
    documents[name] = {d.__name__: errors(d(s), instance) for d in drafts}
print(json.dumps({"schema": problems, "documents": documents}))
"#;

/// Runs [`VALIDATE_PY`] on `documents` (name → (TOML text, fragment)).
fn validate(schema: &Value, documents: &BTreeMap<String, (String, bool)>) -> Value {
    let documents: serde_json::Map<String, Value> = documents
        .iter()
        .map(|(name, (text, fragment))| {
            (name.clone(), json!({ "toml": text, "fragment": fragment }))
        })
        .collect();
    let request = json!({ "schema": schema, "documents": documents });
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(VALIDATE_PY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every gateway configuration under edge-config/ (what .taplo.toml gives the schema).
fn edge_configurations() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![repo_root().join("edge-config")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(repo_root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml")
                && !DEPLOYMENT_MANIFESTS
                    .iter()
                    .any(|m| relative == format!("edge-config/{m}"))
            {
                out.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    out
}

/// The ```toml blocks of the README and docs/*.md, by `file:line`.
fn embedded_toml() -> BTreeMap<String, String> {
    let mut pages = vec!["README.md".to_owned()];
    for entry in std::fs::read_dir(repo_root().join("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    let mut out = BTreeMap::new();
    for page in pages {
        let text = read(&page);
        let mut block: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match &mut block {
                None if line.trim_start().starts_with("```toml") => {
                    block = Some((i + 1, String::new()));
                }
                Some((start, body)) if line.trim_start().starts_with("```") => {
                    out.insert(format!("{page}:{start}"), std::mem::take(body));
                    block = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    out
}

/// `text` with the first `from` replaced by `to` (which must be there).
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "no {from:?} to edit");
    text.replacen(from, to, 1)
}

#[test]
fn the_schema_accepts_every_configuration_and_refuses_broken_ones() {
    let schema = committed_schema();
    let minimal = read("edge-config/minimal.toml");
    let redis = "\n[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n";
    // Each: a broken copy of minimal.toml and what the schema must say about it (parts of
    // `/json/path [keyword]: message` lines).
    let broken: Vec<(&str, String, &[&str])> = vec![
        (
            "misspelled key",
            edit(&minimal, "audiences = ", "audience = "),
            &[
                "/issuer/0 [additionalProperties]: Additional properties are not allowed \
                 ('audience' was unexpected)",
                "/issuer/0 [required]: 'audiences' is a required property",
            ],
        ),
        (
            "wrong type",
            edit(&minimal, "discovery = true", "discovery = \"yes\""),
            &["/issuer/0/discovery [type]: 'yes' is not of type 'boolean'"],
        ),
        (
            "not a duration",
            edit(
                &minimal,
                "discovery = true",
                "discovery = true\nclock_skew = \"60\"",
            ),
            &["/issuer/0/clock_skew [pattern]: '60' does not match"],
        ),
        (
            "value not listed",
            edit(
                &minimal,
                "{ path = \"/\" }",
                "{ path = \"/\", auth = \"requried\" }",
            ),
            &["/route/0/auth [enum]: 'requried' is not one of ['required', 'optional', 'public']"],
        ),
        (
            "algorithm not listed",
            edit(&minimal, "[\"RS256\", \"ES256\"]", "[\"RS256\", \"ES512\"]"),
            &["/issuer/0/algorithms/1 [enum]: 'ES512' is not one of"],
        ),
        (
            "required table missing",
            edit(&minimal, "audit = {", "# audit = {"),
            &["/ [required]: 'audit' is a required property"],
        ),
        (
            "unknown table",
            format!("{minimal}\n[limit]\nmax_token_bytes = 4096\n"),
            &[
                "/ [additionalProperties]: Additional properties are not allowed ('limit' was unexpected)",
            ],
        ),
        (
            "redis key without redis",
            format!("{minimal}\n[state]\nurl = \"redis://127.0.0.1:6379/0\"\n"),
            // (jsonschema reports a `false` schema at the parent's path.)
            &["False schema does not allow 'redis://127.0.0.1:6379/0'"],
        ),
    ];
    let mut documents: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let configurations = edge_configurations();
    assert!(configurations.len() >= 3, "{configurations:?}");
    for (name, text) in configurations {
        documents.insert(name, (text, false));
    }
    let embedded = embedded_toml();
    assert!(embedded.len() >= 5, "{embedded:?}");
    for (name, text) in embedded {
        documents.insert(name, (text, true));
    }
    documents.insert(
        "minimal with redis".into(),
        (format!("{minimal}{redis}"), false),
    );
    for (name, text, _) in &broken {
        documents.insert((*name).to_owned(), (text.clone(), false));
    }
    let result = validate(&schema, &documents);
    let files = MapFiles::default().with("secrets/audit.key", b64(&[7; 32]));
    let mut problems: Vec<String> = strings(&result["schema"])
        .into_iter()
        .map(|p| format!("{SCHEMA_PATH}: {p}"))
        .collect();
    for (name, (text, _)) in &documents {
        let by_draft = &result["documents"][name];
        let errors = strings(&by_draft["Draft202012Validator"]);
        if by_draft["Draft7Validator"] != by_draft["Draft202012Validator"] {
            problems.push(format!(
                "{name}: draft 7 and draft 2020-12 disagree: {by_draft}"
            ));
        }
        let Some((_, _, expected)) = broken.iter().find(|(n, _, _)| n == name) else {
            if !errors.is_empty() {
                problems.push(format!("{name} is refused:\n  {}", errors.join("\n  ")));
            }
            continue;
        };
        for want in *expected {
            if !errors.iter().any(|e| e.contains(want)) {
                problems.push(format!(
                    "{name}: no error {want:?}, only:\n  {}",
                    errors.join("\n  ")
                ));
            }
        }
        // The schema refuses what the loader refuses.
        if config::load(text, MINIMAL, &files).is_ok() {
            problems.push(format!(
                "{name}: the loader accepts what the schema refuses"
            ));
        }
    }
    if let Err(e) = config::load(&format!("{minimal}{redis}"), MINIMAL, &files) {
        problems.push(format!("minimal with redis: the loader refuses it:\n{e}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn taplo_gives_the_schema_to_the_gateway_configurations() {
    let taplo: toml::Table = read(".taplo.toml").parse().unwrap();
    let rules = taplo.get("rule").and_then(toml::Value::as_array);
    let rule = rules
        .into_iter()
        .flatten()
        .find(|r| {
            r.get("schema")
                .and_then(|s| s.get("path"))
                .and_then(toml::Value::as_str)
                == Some(SCHEMA_PATH)
        })
        .unwrap_or_else(|| panic!(".taplo.toml: no [[rule]] with schema.path = {SCHEMA_PATH:?}"));
    let list = |key: &str| -> Vec<String> {
        rule.get(key)
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(list("include"), ["edge-config/**/*.toml"]);
    let manifests: Vec<String> = DEPLOYMENT_MANIFESTS
        .iter()
        .map(|m| format!("edge-config/{m}"))
        .collect();
    assert_eq!(list("exclude"), manifests);
    assert!(repo_root().join(SCHEMA_PATH).is_file());
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
    // docs/*.md and one level of folders below it (docs/plugins/).
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && dir == root.join("docs") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
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
