//! A JSON Schema (draft 2020-12) for the configuration, generated from the tables of
//! docs/configuration.md. The tables list exactly the keys the loader accepts (the key-drift
//! test compares them with the loader's own lists), so the schema follows the loader too.
//!
//! The schema uses only keywords that mean the same in draft 7 (`type`, `properties`,
//! `additionalProperties`, `required`, `items`, `enum`, `const`, `pattern`, `if`/`then`/`else`,
//! boolean schemas), so validators that read it as draft 7 (older taplo) agree.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// The committed schema, relative to the repository root.
pub const SCHEMA_PATH: &str = "edge-config/portcullis.schema.json";

/// What `parse_duration` (gateway/core/src/duration.rs) accepts, overflow aside: the text is
/// trimmed, then one or more `<digits><unit>` parts with unit `ms`, `s`, `m`, `h` or `d`.
pub const DURATION_PATTERN: &str = r"^\s*(?:[0-9]+(?:ms|s|m|h|d))+\s*$";

/// The default-column value of a key with no default: required (in an optional table,
/// required once the table is present).
const REQUIRED: &str = "—";

/// One key row of a table: `` | `key` | type | default | meaning | ``.
#[derive(Debug)]
pub struct Row {
    pub key: String,
    pub ty: String,
    pub default: String,
    pub meaning: String,
}

/// One table section of the reference: heading `` ### `[name]` `` (or `` `[[name]]` ``), its
/// prose and its key rows.
#[derive(Debug, Default)]
pub struct Section {
    /// `[[name]]`: an array of tables.
    pub array: bool,
    /// Paragraphs outside the key table, each joined into one line.
    pub prose: Vec<String>,
    pub rows: Vec<Row>,
}

/// The table sections of docs/configuration.md by name (`issuer`, `issuer.login`,
/// `region.NAME`, …). Code blocks are skipped.
pub fn sections(doc: &str) -> BTreeMap<String, Section> {
    let mut sections: BTreeMap<String, Section> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut paragraph: Vec<&str> = Vec::new();
    let mut in_code = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            flush(&mut sections, current.as_ref(), &mut paragraph);
            continue;
        }
        if in_code {
            continue;
        }
        if line.starts_with('#') {
            flush(&mut sections, current.as_ref(), &mut paragraph);
            current = None;
            if let Some((_, rest)) = line.split_once("`[")
                && let Some((name, _)) = rest.split_once("]`")
            {
                let array = name.starts_with('[');
                let name = name.trim_matches(['[', ']']).to_owned();
                sections.entry(name.clone()).or_default().array = array;
                current = Some(name);
            }
            continue;
        }
        if line.trim().is_empty() || line.starts_with('|') {
            flush(&mut sections, current.as_ref(), &mut paragraph);
            let Some(name) = &current else { continue };
            let Some(row) = line.strip_prefix("| `") else {
                continue;
            };
            let cells: Vec<&str> = row.trim_end().trim_end_matches('|').split('|').collect();
            let [key, ty, default, meaning] = cells.as_slice() else {
                panic!("docs/configuration.md: a key row needs four cells: {line}");
            };
            let key = key.trim().trim_end_matches('`').to_owned();
            sections.entry(name.clone()).or_default().rows.push(Row {
                key,
                ty: ty.trim().to_owned(),
                default: default.trim().to_owned(),
                meaning: meaning.trim().to_owned(),
            });
            continue;
        }
        if current.is_some() {
            paragraph.push(line.trim());
        }
    }
    flush(&mut sections, current.as_ref(), &mut paragraph);
    sections
}

/// `text` (from docs/configuration.md) with its relative Markdown links made relative to the
/// schema in edge-config/: `](plugins.md)` → `](../docs/plugins.md)`, `](#x)` →
/// `](../docs/configuration.md#x)`.
fn relink(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        out.push_str(&rest[..i + 2]);
        rest = &rest[i + 2..];
        if rest.starts_with('#') {
            out.push_str("../docs/configuration.md");
        } else if !["http://", "https://", "mailto:"]
            .iter()
            .any(|p| rest.starts_with(p))
        {
            out.push_str("../docs/");
        }
    }
    out.push_str(rest);
    out
}

/// Ends a prose paragraph of section `current`.
fn flush(
    sections: &mut BTreeMap<String, Section>,
    current: Option<&String>,
    paragraph: &mut Vec<&str>,
) {
    if let (Some(name), false) = (current, paragraph.is_empty()) {
        let text = relink(&paragraph.join(" "));
        sections.entry(name.clone()).or_default().prose.push(text);
    }
    paragraph.clear();
}

/// The top-level tables the "Required tables" bullet names, each with whether it says "at
/// least one" of it.
fn required_tables(doc: &str) -> Vec<(String, bool)> {
    let mut text = String::new();
    let mut lines = doc
        .lines()
        .skip_while(|l| !l.starts_with("- **Required tables**"));
    if let Some(first) = lines.next() {
        text.push_str(first);
        for line in lines.take_while(|l| !l.trim().is_empty() && !l.starts_with("- ")) {
            text.push(' ');
            text.push_str(line.trim());
        }
    }
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("`[") {
        let before = &rest[..i];
        let Some((name, after)) = rest[i + 2..].split_once("]`") else {
            break;
        };
        let name = name.trim_matches(['[', ']']);
        out.push((name.to_owned(), before.ends_with("at least one ")));
        rest = after;
    }
    assert!(
        !out.is_empty(),
        "docs/configuration.md: no \"- **Required tables**\" bullet naming tables"
    );
    out
}

/// A map table's placeholder segment, such as `NAME` in `region.NAME`.
pub fn is_placeholder(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_uppercase())
}

/// `text` without parenthesised asides (and the space before each).
fn without_asides(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' => {
                if depth == 0 && out.ends_with(' ') {
                    out.pop();
                }
                depth += 1;
            }
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// `` `"a"`, `"b"` or `"c"` `` (quoted: string values) or `` `a` `b`, `c` `` (bare: array
/// items): the values, if `text` is nothing but such a list.
fn literal_list(text: &str, quoted: bool) -> Option<Vec<String>> {
    let (open, close) = if quoted { ("`\"", "\"`") } else { ("`", "`") };
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let (value, after) = rest.strip_prefix(open)?.split_once(close)?;
        if value.is_empty() || value.contains(['"', '`', ' ']) {
            return None;
        }
        out.push(value.to_owned());
        if after.is_empty() {
            return Some(out);
        }
        rest = [", ", " or ", " "]
            .iter()
            .find_map(|sep| after.strip_prefix(sep))?;
    }
}

/// The allowed values, when the meaning lists them exactly: its first clause (up to `;`),
/// asides removed, is `[what: ]LIST` with two or more values, `allow-list of LIST`, or
/// `only VALUE is accepted`. Values are quoted for string keys, bare for array items.
fn enumeration(meaning: &str, quoted: bool) -> Option<Vec<String>> {
    let text = without_asides(meaning);
    let clause = text.split("; ").next().unwrap_or_default().trim();
    if let Some(one) = clause
        .strip_prefix("only ")
        .and_then(|r| r.strip_suffix(" is accepted"))
    {
        return literal_list(one, quoted).filter(|l| l.len() == 1);
    }
    if let Some(list) = clause.strip_prefix("allow-list of ") {
        return literal_list(list, quoted);
    }
    let list = clause.rsplit_once(": ").map_or(clause, |(_, l)| l);
    literal_list(list, quoted).filter(|l| l.len() >= 2)
}

/// The default cell as a JSON value when it is a TOML literal: one backticked value,
/// optionally followed by an aside that names no other key (`` `8388608` (8 MiB) `` yes,
/// `` `"60s"` (at least `response`) `` no).
fn literal(cell: &str) -> Option<Value> {
    let (lit, after) = cell.trim().strip_prefix('`')?.split_once('`')?;
    let after = after.trim();
    let plain_aside = after.starts_with('(') && after.ends_with(')') && !after.contains('`');
    if !after.is_empty() && !plain_aside {
        return None;
    }
    let table: toml::Table = format!("v = {lit}").parse().ok()?;
    serde_json::to_value(table.get("v")?).ok()
}

/// `The Redis keys are accepted only with `backend = "redis"`.`: (`Redis`, `backend`, "redis").
fn condition(section: &Section) -> Option<(String, String, Value)> {
    section.prose.iter().find_map(|p| {
        let (before, after) = p.split_once(" keys are accepted only with `")?;
        let group = before.rsplit_once("The ")?.1;
        let (assignment, _) = after.split_once('`')?;
        let (key, value) = assignment.split_once(" = ")?;
        let table: toml::Table = format!("v = {value}").parse().ok()?;
        let value = serde_json::to_value(table.get("v")?).ok()?;
        Some((group.to_owned(), key.trim().to_owned(), value))
    })
}

/// The generator's state: the sections, and which of them a property or the top level used.
struct Generator<'d> {
    sections: &'d BTreeMap<String, Section>,
    used: BTreeSet<String>,
}

impl Generator<'_> {
    fn section(&mut self, name: &str) -> Option<&Section> {
        let section = self.sections.get(name)?;
        self.used.insert(name.to_owned());
        Some(section)
    }

    /// The object schema of the table section `name`.
    fn object(&mut self, name: &str) -> Value {
        let sections = self.sections;
        let section = &sections[name];
        self.used.insert(name.to_owned());
        let condition = condition(section);
        let mut properties = Map::new();
        let mut required = Vec::new();
        let mut conditional = Vec::new();
        let mut conditional_required = Vec::new();
        for row in &section.rows {
            properties.insert(row.key.clone(), self.property(name, row));
            let in_group = condition
                .as_ref()
                .is_some_and(|(group, _, _)| row.meaning.starts_with(&format!("{group} only")));
            if in_group {
                conditional.push(row.key.clone());
            }
            if row.default == REQUIRED {
                if in_group {
                    conditional_required.push(row.key.clone());
                } else {
                    required.push(row.key.clone());
                }
            }
        }
        let mut object = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": properties,
        });
        if !required.is_empty() {
            object["required"] = json!(required);
        }
        if !section.prose.is_empty() {
            object["description"] = json!(section.prose.join("\n\n"));
        }
        if let Some((group, key, value)) = condition {
            assert!(
                !conditional.is_empty(),
                "[{name}]: no key's meaning starts with \"{group} only\""
            );
            assert!(
                section.rows.iter().any(|r| r.key == key),
                "[{name}]: the condition names `{key}`, which the table does not list"
            );
            object["if"] = json!({
                "properties": { key.clone(): { "const": value } },
                "required": [key],
            });
            if !conditional_required.is_empty() {
                object["then"] = json!({ "required": conditional_required });
            }
            let forbidden: Map<String, Value> = conditional
                .into_iter()
                .map(|k| (k, Value::Bool(false)))
                .collect();
            object["else"] = json!({ "properties": forbidden });
        }
        object
    }

    /// The schema of one key row of table `table`.
    fn property(&mut self, table: &str, row: &Row) -> Value {
        let child = format!("{table}.{}", row.key);
        let mut schema = match row.ty.as_str() {
            "table" => match self.section(&child).map(|s| s.array) {
                Some(array) => {
                    assert!(
                        !array,
                        "`{child}` is a table, but its heading is `[[{child}]]`"
                    );
                    let mut object = self.object(&child);
                    let prose = object["description"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    object["description"] = json!(if prose.is_empty() {
                        row.meaning.clone()
                    } else {
                        format!("{}\n\n{prose}", row.meaning)
                    });
                    object
                }
                None => json!({ "type": "object" }),
            },
            "array of tables" => {
                let array = self.section(&child).map(|s| s.array);
                assert!(
                    array == Some(true),
                    "`{child}` is an array of tables, but there is no `[[{child}]]` section"
                );
                let mut schema = json!({ "type": "array", "items": self.object(&child) });
                schema["description"] = json!(row.meaning);
                schema
            }
            ty => value_schema(ty, row).unwrap_or_else(|| {
                panic!(
                    "docs/configuration.md: `{child}` has type `{ty}`, which \
                     tests/tests/edge_config/schema.rs does not map to JSON Schema"
                )
            }),
        };
        if schema.get("description").is_none() {
            schema["description"] = json!(row.meaning);
        }
        if let Some(default) = literal(&row.default) {
            schema["default"] = default;
        }
        schema
    }
}

/// The schema of a scalar or array type of the type column.
fn value_schema(ty: &str, row: &Row) -> Option<Value> {
    let scalar = |t: &str| match t {
        "string" | "boolean" | "integer" | "number" => Some(t.to_owned()),
        _ => None,
    };
    let schema = match ty {
        "string" => match enumeration(&row.meaning, true) {
            Some(values) => json!({ "type": "string", "enum": values }),
            None => json!({ "type": "string" }),
        },
        "duration" => json!({ "type": "string", "pattern": DURATION_PATTERN }),
        "boolean" | "integer" | "number" => json!({ "type": ty }),
        "array of strings" => match enumeration(&row.meaning, false) {
            Some(values) => {
                json!({ "type": "array", "items": { "type": "string", "enum": values } })
            }
            None => json!({ "type": "array", "items": { "type": "string" } }),
        },
        "array of integers" => json!({ "type": "array", "items": { "type": "integer" } }),
        // `string, integer or boolean`
        list => {
            let types = list
                .split(", ")
                .flat_map(|part| part.split(" or "))
                .map(scalar)
                .collect::<Option<Vec<_>>>()?;
            if types.len() < 2 {
                return None;
            }
            json!({ "type": types })
        }
    };
    Some(schema)
}

/// `value` with every object's keys in sorted order (whatever serde_json's map keeps).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let map: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(map.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The schema for docs/configuration.md `doc`: pretty-printed, keys sorted, trailing newline.
pub fn generate(doc: &str) -> String {
    let sections = sections(doc);
    let mut generator = Generator {
        sections: &sections,
        used: BTreeSet::new(),
    };
    let required: Vec<(String, bool)> = required_tables(doc);
    let mut properties = Map::new();
    for (name, section) in &sections {
        let mut segments = name.split('.');
        let top = segments.next().unwrap_or_default();
        let rest: Vec<&str> = segments.collect();
        let prose = section.prose.join("\n\n");
        let mut schema = match rest.as_slice() {
            [] if section.array => json!({ "type": "array", "items": generator.object(name) }),
            [] => generator.object(name),
            // `[region.NAME]`: a map of such tables.
            [placeholder] if is_placeholder(placeholder) && !sections.contains_key(top) => {
                json!({ "type": "object", "additionalProperties": generator.object(name) })
            }
            // A nested table: the key row of its parent makes it.
            _ => continue,
        };
        if !prose.is_empty() {
            schema["description"] = json!(prose);
        }
        if let Some((_, at_least_one)) = required.iter().find(|(t, _)| t == name) {
            match (section.array, rest.is_empty(), at_least_one) {
                (true, _, true) => schema["minItems"] = json!(1),
                (false, false, true) => schema["minProperties"] = json!(1),
                _ => {}
            }
        }
        properties.insert(top.to_owned(), schema);
    }
    let unused: Vec<&String> = sections
        .keys()
        .filter(|name| !generator.used.contains(*name))
        .collect();
    assert!(
        unused.is_empty(),
        "docs/configuration.md: sections no key row or top-level rule reaches: {unused:?}"
    );
    let mut top_required = Vec::new();
    for (name, _) in &required {
        assert!(
            sections.contains_key(name),
            "the required table [{name}] has no section"
        );
        let top = name.split('.').next().unwrap_or_default().to_owned();
        if !top_required.contains(&top) {
            top_required.push(top);
        }
    }
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "Generated from docs/configuration.md by tests/tests/edge_config.rs; \
                     do not edit: regenerate with PORTCULLIS_BLESS=1 cargo test -p \
                     portcullis-tests --test edge_config",
        "title": "Portcullis configuration",
        "description": "One TOML file describes a Portcullis deployment \
                        (docs/configuration.md). Paths are relative to the file; durations \
                        are strings such as \"250ms\", \"60s\", \"1h30m\"; unknown keys are \
                        errors.",
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "required": top_required,
    });
    let mut text = serde_json::to_string_pretty(&sorted(schema)).unwrap_or_default();
    text.push('\n');
    text
}

#[test]
fn enumerations_are_recognised_only_when_the_values_are_listed_exactly() {
    let cases: [(&str, bool, Option<&[&str]>); 8] = [
        (
            "`\"required\"` (a valid token), `\"optional\"` (x, y) or `\"public\"` (z)",
            true,
            Some(&["required", "optional", "public"]),
        ),
        (
            "state unreachable (or full): `\"deny\"` (503) or `\"allow\"`",
            true,
            Some(&["deny", "allow"]),
        ),
        ("only `\"EdDSA\"` is accepted", true, Some(&["EdDSA"])),
        (
            "allow-list of `HS256` `ES256`; not empty",
            false,
            Some(&["HS256", "ES256"]),
        ),
        (
            "region for tokens without the claim, or `\"deny\"` (403)",
            true,
            None,
        ),
        ("e.g. `\"EU\"`; failover never crosses", true, None),
        (
            "`http(s)://host[:port]` URLs (no query); not empty",
            false,
            None,
        ),
        ("what: `\"ip\"`", true, None),
    ];
    for (meaning, quoted, expected) in cases {
        let expected = expected.map(|l| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(enumeration(meaning, quoted), expected, "{meaning}");
    }
}

#[test]
fn relative_links_are_made_relative_to_the_schema() {
    assert_eq!(
        relink("see [a](plugins.md#x), [b](#two-traps) and [c](https://example.com)"),
        "see [a](../docs/plugins.md#x), [b](../docs/configuration.md#two-traps) and \
         [c](https://example.com)"
    );
}

#[test]
fn defaults_are_taken_only_when_they_are_literals() {
    assert_eq!(literal("`\"60s\"`"), Some(json!("60s")));
    assert_eq!(literal("`8388608` (8 MiB)"), Some(json!(8_388_608)));
    assert_eq!(literal("`[]` (any)"), Some(json!([])));
    assert_eq!(literal("`1.0`"), Some(json!(1.0)));
    assert_eq!(literal("`\"60s\"` (at least `response`)"), None);
    assert_eq!(literal("`rate`"), None);
    assert_eq!(literal("the issuer's `name`"), None);
    assert_eq!(literal("none"), None);
    assert_eq!(literal("—"), None);
}
