//! The architecture, checked: the core's modules form layers (the table in
//! `gateway/core/src/lib.rs`), and so do the host's capability folders (the table in
//! `gateway/host/src/lib.rs`) — a module imports only from its own layer or those below —
//! and no two files of the core or of the host import each other, directly or in a circle.
//! This test reads the sources the way a reviewer would: every `crate::…` path (in `use`
//! trees, inline, and through `use`d module aliases) and every `super::…` path, outside
//! comments, string literals and the `#[cfg(test)]` part of a file, resolved to the file
//! that defines the name it reaches.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom; a module is named by its path under `src/` without `.rs`
/// (`config/model`, `phase/risk`); a folder entry (`phase/`) covers every file in it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "utilities",
        &[
            "b64",
            "time",
            "duration",
            "fnv",
            "forms",
            "canonical",
            "cookies",
            "reason",
            "geo",
        ],
    ),
    ("JOSE", &["crypto/", "jwk", "jws", "client_auth"]),
    (
        "model",
        &[
            "model/",
            "config/model",
            "config/serde_forms",
            "audit",
            "decision",
        ],
    ),
    ("configuration", &["config/"]),
    ("keys", &["keyset", "claims", "authenticate", "verified"]),
    ("ports", &["ports/"]),
    (
        "features",
        &[
            "client",
            "client_signals",
            "recent_uses",
            "forwarding",
            "normalize",
            "policy",
            "residency",
            "limits",
            "bot",
            "risk",
            "challenge",
            "session",
            "login",
            "trace",
            "delegation",
            "dpop",
            "gateway_token",
            "introspect",
            "forward_auth",
        ],
    ),
    ("phases", &["phase/"]),
    ("pipeline", &["pipeline", "lib"]),
];

/// The host's layers from the bottom: one folder per capability, each importing only the
/// capabilities below it; `serve/` composes them and `tools/` drive `serve/`.
const HOST_LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &["metrics", "wasm", "epoch", "bindings", "config/", "health/"],
    ),
    ("keys", &["keys/"]),
    ("calls and state", &["client/", "state/"]),
    ("audit and risk", &["audit/", "risk/"]),
    ("serving", &["serve/"]),
    ("tools", &["tools/"]),
    ("crate", &["lib", "main"]),
];

/// Files that are only test code (`#[cfg(test)] #[path = …] mod …`).
const TEST_ONLY: &[&str] = &["canonical_tests"];

struct Source {
    /// The file's code: comments and its `#[cfg(test)]` part removed.
    code: String,
    /// Names the file defines at its top level (items and `pub use` re-exports).
    defines: BTreeSet<String>,
}

/// The core's sources.
fn core_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/core/src")
}

/// The native host's sources.
fn host_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/host/src")
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `config/mod.rs` → `config`; `phase/risk.rs` → `phase/risk`.
fn module_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let text = rel.with_extension("").to_string_lossy().replace('\\', "/");
    text.strip_suffix("/mod").map(str::to_owned).unwrap_or(text)
}

fn strip_comments_and_tests(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or("");
    let b = body.as_bytes();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &body[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if rest.starts_with("r#\"") {
            i += rest
                .get(3..)
                .and_then(|r| r.find("\"#"))
                .map_or(rest.len(), |e| e + 5);
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && b[i + j] != b'"' {
                j += if b[i + j] == b'\\' { 2 } else { 1 };
            }
            i += (j + 1).min(rest.len());
            out.push_str("\"\"");
        } else if rest.starts_with("'\"'") || rest.starts_with("'\\\"'") {
            i += if rest.starts_with("'\"'") { 3 } else { 4 };
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn defined_names(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let t = line.trim_start();
        if line.len() - t.len() > 0 {
            continue; // top level only
        }
        let t = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ");
        for kw in [
            "struct ", "enum ", "fn ", "const ", "static ", "type ", "trait ", "mod ",
        ] {
            if let Some(rest) = t.strip_prefix(kw) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        }
        if let Some(rest) = t.strip_prefix("use ") {
            // re-exports: the last segments of the tree
            for leaf in expand_use(rest.trim_end_matches(';')) {
                if let Some(last) = leaf.rsplit("::").next() {
                    out.insert(last.to_owned());
                }
            }
        }
    }
    out
}

/// Expands a use tree (`a::{b, c::{d, e as f}}`) into paths (`a::b`, `a::c::d`, `a::c::e`).
fn expand_use(tree: &str) -> Vec<String> {
    expand_use_aliased(tree)
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

/// The paths a file reaches: `use` trees (`crate::`, `super::`, and in a folder's
/// `mod.rs` its own children) and inline `crate::a::b` / `super::a` paths.
fn referenced_paths(module: &str, code: &str, modules: &BTreeMap<String, Source>) -> Vec<String> {
    let mut out = Vec::new();
    let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    // use statements
    let mut rest = flat.as_str();
    while let Some(i) = rest.find("use ") {
        let before_ok = i == 0
            || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let after = &rest[i + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if before_ok {
            for p in expand_use(&after[..end]) {
                out.push(p);
            }
        }
        rest = &after[end.min(after.len())..];
    }
    // inline paths
    for anchor in ["crate::", "super::"] {
        let mut rest = flat.as_str();
        while let Some(i) = rest.find(anchor) {
            let tail = &rest[i..];
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(path.trim_end_matches(':').to_owned());
            rest = &rest[i + anchor.len()..];
        }
    }
    // make every path absolute (`crate::…`)
    let parent = module.rsplit_once('/').map(|(p, _)| p);
    out.into_iter()
        .filter_map(|p| {
            if let Some(r) = p.strip_prefix("crate::") {
                Some(r.to_owned())
            } else if let Some(r) = p.strip_prefix("super::") {
                // from `a/b.rs`, super is `a`; from `a/mod.rs` (module `a`), super is the crate
                let is_folder = modules.keys().any(|m| m.starts_with(&format!("{module}/")));
                match (is_folder, parent) {
                    (true, _) | (false, None) => Some(r.to_owned()),
                    (false, Some(parent)) => Some(format!("{}::{r}", parent.replace('/', "::"))),
                }
            } else {
                // A folder's mod.rs re-exporting its own children (`pub use model::*`) is
                // the folder's face, not an import: the names resolve to the children.
                None
            }
        })
        .collect()
}

/// Modules brought into scope by `use` (`use crate::phase::{self, …}`, `use
/// crate::challenge as pow`), so that `phase::risk::run` and `pow::issue` are read as
/// the paths they are.
fn module_aliases(code: &str, modules: &BTreeMap<String, Source>) -> Vec<(String, String)> {
    let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    let mut rest = flat.as_str();
    while let Some(i) = rest.find("use crate::") {
        let after = &rest[i + 4..];
        let end = after.find(';').unwrap_or(after.len());
        for (path, alias) in expand_use_aliased(&after[..end]) {
            let path = path.trim_end_matches("::self").to_owned();
            let Some(rel) = path.strip_prefix("crate::") else {
                continue;
            };
            if modules.contains_key(&rel.replace("::", "/")) {
                let alias =
                    alias.unwrap_or_else(|| rel.rsplit("::").next().unwrap_or(rel).to_owned());
                out.push((alias, rel.to_owned()));
            }
        }
        rest = &after[end.min(after.len())..];
    }
    out
}

/// Like [`expand_use`], keeping each leaf's `as` alias.
fn expand_use_aliased(tree: &str) -> Vec<(String, Option<String>)> {
    let mut plain = Vec::new();
    expand_keeping_alias("", tree, &mut plain);
    plain
        .into_iter()
        .map(|p| match p.split_once(" as ") {
            Some((path, alias)) => (path.trim().to_owned(), Some(alias.trim().to_owned())),
            None => (p, None),
        })
        .collect()
}

fn expand_keeping_alias(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        out.push(format!("{prefix}{tree}"));
        return;
    };
    let head = tree[..open].trim();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start) = (0, 0);
    for (i, b) in inner.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                if start < i {
                    expand_keeping_alias(&format!("{prefix}{head}"), &inner[start..i], out);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand_keeping_alias(&format!("{prefix}{head}"), &inner[start..], out);
    }
}

/// Paths through module aliases: `phase::risk::run` with `phase` = `crate::phase`.
fn aliased_paths(code: &str, aliases: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (alias, target) in aliases {
        let needle = format!("{alias}::");
        let mut rest = code;
        while let Some(i) = rest.find(&needle) {
            let boundary = rest[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
            let tail: String = rest[i + needle.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if boundary {
                out.push(format!("{target}::{}", tail.trim_end_matches(':')));
            }
            rest = &rest[i + needle.len()..];
        }
    }
    out
}

/// The file a path (`config::Route`, `phase::risk::run`) reaches: the deepest module on
/// it, and inside a folder module the child file that defines the next name.
fn resolve(path: &str, modules: &BTreeMap<String, Source>) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    let mut found = None;
    for n in 1..=segments.len() {
        let candidate = segments[..n].join("/");
        if modules.contains_key(&candidate) {
            found = Some((candidate, n));
        }
    }
    let (module, n) = found?;
    let Some(&name) = segments.get(n) else {
        return Some(module);
    };
    if name == "*" || name == "self" {
        return Some(module);
    }
    // a folder module re-exports a child's names: point at the child that defines it
    let definer = modules
        .iter()
        .filter(|(m, _)| {
            m.starts_with(&format!("{module}/")) && !m[module.len() + 1..].contains('/')
        })
        .find(|(_, s)| s.defines.contains(name) && !reexports_only(s, name));
    Some(definer.map_or(module, |(m, _)| m.clone()))
}

fn reexports_only(source: &Source, name: &str) -> bool {
    // a child that merely re-exports the name from elsewhere is not its definer
    ![
        "struct ", "enum ", "fn ", "const ", "static ", "type ", "trait ",
    ]
    .iter()
    .any(|kw| source.code.contains(&format!("{kw}{name}")))
}

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    layer_in(LAYERS, module)
}

fn layer_in(
    layers: &'static [(&'static str, &'static [&'static str])],
    module: &str,
) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str, usize)> = None;
    for (i, (name, members)) in layers.iter().enumerate() {
        for m in *members {
            let hit = match m.strip_suffix('/') {
                Some(folder) => module == folder || module.starts_with(&format!("{folder}/")),
                None => module == *m,
            };
            // the most specific entry wins (`config/model` over `config/`)
            if hit && best.is_none_or(|(_, _, len)| m.len() > len) {
                best = Some((i, name, m.len()));
            }
        }
    }
    best.map(|(i, n, _)| (i, n))
}

fn load(root: &Path) -> BTreeMap<String, Source> {
    let mut files = Vec::new();
    collect(root, &mut files);
    assert!(files.len() > 10, "no sources under {}", root.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read source");
            let code = strip_comments_and_tests(&text);
            let defines = defined_names(&code);
            (module_name(root, &p), Source { code, defines })
        })
        .filter(|(m, _)| !TEST_ONLY.contains(&m.as_str()))
        .collect()
}

fn edges(modules: &BTreeMap<String, Source>) -> BTreeMap<String, BTreeSet<String>> {
    modules
        .iter()
        .map(|(m, s)| {
            let aliases = module_aliases(&s.code, modules);
            let mut paths = referenced_paths(m, &s.code, modules);
            paths.extend(aliased_paths(&s.code, &aliases));
            let deps = paths
                .iter()
                .filter_map(|p| resolve(p, modules))
                .filter(|d| d != m)
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

#[test]
fn every_module_has_a_layer() {
    let modules = load(&core_src());
    let missing: Vec<&String> = modules.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in LAYERS: {missing:?}"
    );
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    assert_layered(&core_src(), LAYERS);
}

#[test]
fn every_host_module_has_a_layer() {
    let modules = load(&host_src());
    let missing: Vec<&String> = modules
        .keys()
        .filter(|m| layer_in(HOST_LAYERS, m).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "host modules without a layer in HOST_LAYERS: {missing:?}"
    );
}

#[test]
fn no_host_capability_imports_from_a_layer_above_it() {
    assert_layered(&host_src(), HOST_LAYERS);
}

fn assert_layered(root: &Path, layers: &'static [(&'static str, &'static [&'static str])]) {
    let modules = load(root);
    let mut wrong = Vec::new();
    for (m, deps) in edges(&modules) {
        let Some((mine, my_name)) = layer_in(layers, &m) else {
            continue;
        };
        for d in deps {
            if let Some((theirs, their_name)) = layer_in(layers, &d)
                && theirs > mine
            {
                wrong.push(format!("{m} ({my_name}) imports {d} ({their_name})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that go up a layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_cycles_between_files_of_the_core() {
    assert_no_cycles(&core_src());
}

#[test]
fn no_import_cycles_between_files_of_the_host() {
    assert_no_cycles(&host_src());
}

fn assert_no_cycles(root: &Path) {
    let modules = load(root);
    let graph = edges(&modules);
    // Tarjan's strongly connected components
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        cycles: Vec<Vec<&'g str>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            let deps = self.graph.get(v).into_iter().flatten();
            for w in deps {
                let w = w.as_str();
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.cycles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        cycles: Vec::new(),
    };
    for m in graph.keys() {
        if !walk.index.contains_key(m.as_str()) {
            walk.visit(m);
        }
    }
    let described: Vec<String> = walk
        .cycles
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.sort();
            let ties: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[*a]
                        .iter()
                        .filter(|b| c.contains(&b.as_str()))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            format!("{c:?}: {}", ties.join(", "))
        })
        .collect();
    assert!(
        described.is_empty(),
        "import cycles:\n{}",
        described.join("\n")
    );
}

#[test]
fn the_reader_sees_imports() {
    // The checks above are only as good as the reading: these edges exist today.
    let modules = load(&core_src());
    let graph = edges(&modules);
    for (from, to) in [
        ("pipeline", "phase/risk"),
        ("phase/risk", "risk"),
        ("config/validate", "config/model"),
        ("phase/endpoints", "challenge"),
        ("config/limits", "canonical"),
        ("audit", "model/verdict"),
        ("decision", "model/reserved"),
    ] {
        assert!(
            graph.get(from).is_some_and(|d| d.contains(to)),
            "expected {from} -> {to}; {from} reaches {:?}",
            graph.get(from)
        );
    }
}
