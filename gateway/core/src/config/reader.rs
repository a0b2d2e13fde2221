//! A strict reader over a spanned TOML tree that collects every problem, with its location
//! and a hint, instead of stopping at the first.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Diagnostic;
use crate::duration::parse_duration;

/// A byte range in the configuration source.
pub(crate) type Span = Range<usize>;

/// A value with the span it came from.
pub(crate) type At<T> = (T, Span);

/// Collects diagnostics for one source file.
pub(crate) struct Diags<'s> {
    file: &'s str,
    src: &'s str,
    pub(crate) list: Vec<(usize, Diagnostic)>,
}

impl<'s> Diags<'s> {
    pub(crate) fn new(file: &'s str, src: &'s str) -> Self {
        Self {
            file,
            src,
            list: Vec::new(),
        }
    }

    /// Records an error at `span`.
    pub(crate) fn error(&mut self, span: &Span, message: impl Into<String>, hint: Option<String>) {
        let (line, column) = line_col(self.src, span.start);
        self.list.push((
            span.start,
            Diagnostic {
                file: self.file.to_owned(),
                line,
                column,
                message: message.into(),
                hint,
            },
        ));
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// One TOML table being read; every key asked for is remembered so that
/// [`finish`](Table::finish) can report the rest as unknown.
pub(crate) struct Table<'a, 'i> {
    map: &'a DeTable<'i>,
    pub(crate) span: Span,
    pub(crate) name: String,
    asked: Vec<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    /// Reads `value` as a table named `name` in messages.
    pub(crate) fn of(
        value: &'a Spanned<DeValue<'i>>,
        name: impl Into<String>,
        d: &mut Diags<'_>,
    ) -> Option<Self> {
        let name = name.into();
        match value.get_ref() {
            DeValue::Table(map) => Some(Self::from_map(map, value.span(), name)),
            other => {
                d.error(
                    &value.span(),
                    format!("`{name}` must be a table, found {}", other.type_str()),
                    None,
                );
                None
            }
        }
    }

    pub(crate) fn from_map(map: &'a DeTable<'i>, span: Span, name: String) -> Self {
        Self {
            map,
            span,
            name,
            asked: Vec::new(),
        }
    }

    /// The raw value of `key`, remembering that `key` is known.
    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.asked.push(key);
        self.map
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn key_name(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    fn type_error(&self, d: &mut Diags<'_>, key: &str, v: &Spanned<DeValue<'_>>, expected: &str) {
        d.error(
            &v.span(),
            format!(
                "`{}` must be {expected}, found {}",
                self.key_name(key),
                v.get_ref().type_str()
            ),
            None,
        );
    }

    /// Reports a missing required key.
    pub(crate) fn missing(&self, d: &mut Diags<'_>, key: &str, hint: Option<String>) {
        d.error(
            &self.span,
            format!("`{}` is required", self.key_name(key)),
            hint,
        );
    }

    /// An optional string.
    pub(crate) fn string(&mut self, d: &mut Diags<'_>, key: &'static str) -> Option<At<String>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            _ => {
                self.type_error(d, key, v, "a string");
                None
            }
        }
    }

    /// A required string.
    pub(crate) fn req_string(
        &mut self,
        d: &mut Diags<'_>,
        key: &'static str,
        hint: Option<&str>,
    ) -> Option<At<String>> {
        if self.map.iter().any(|(k, _)| k.get_ref().as_ref() == key) {
            self.string(d, key)
        } else {
            self.asked.push(key);
            self.missing(d, key, hint.map(str::to_owned));
            None
        }
    }

    /// An optional boolean.
    pub(crate) fn boolean(&mut self, d: &mut Diags<'_>, key: &'static str) -> Option<At<bool>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some((*b, v.span())),
            _ => {
                self.type_error(d, key, v, "true or false");
                None
            }
        }
    }

    /// An optional integer.
    pub(crate) fn integer(&mut self, d: &mut Diags<'_>, key: &'static str) -> Option<At<i64>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => {
                match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
                    Ok(n) => Some((n, v.span())),
                    Err(_) => {
                        d.error(
                            &v.span(),
                            format!("`{}` is out of range", self.key_name(key)),
                            None,
                        );
                        None
                    }
                }
            }
            _ => {
                self.type_error(d, key, v, "an integer");
                None
            }
        }
    }

    /// An optional array of strings.
    pub(crate) fn strings(
        &mut self,
        d: &mut Diags<'_>,
        key: &'static str,
    ) -> Option<At<Vec<At<String>>>> {
        let v = self.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(d, key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item.span())),
                other => d.error(
                    &item.span(),
                    format!(
                        "`{}` must hold strings, found {}",
                        self.key_name(key),
                        other.type_str()
                    ),
                    None,
                ),
            }
        }
        Some((out, v.span()))
    }

    /// An optional duration such as `"60s"`.
    pub(crate) fn duration(
        &mut self,
        d: &mut Diags<'_>,
        key: &'static str,
    ) -> Option<At<Duration>> {
        let (text, span) = self.string(d, key)?;
        match parse_duration(&text) {
            Ok(dur) => Some((dur, span)),
            Err(e) => {
                d.error(
                    &span,
                    format!("`{}`: {e}", self.key_name(key)),
                    Some("durations look like \"60s\", \"5m\", \"1h30m\"".into()),
                );
                None
            }
        }
    }

    /// An optional sub-table.
    pub(crate) fn table(&mut self, d: &mut Diags<'_>, key: &'static str) -> Option<Table<'a, 'i>> {
        let name = self.key_name(key);
        let v = self.get(key)?;
        Table::of(v, name, d)
    }

    /// An optional array of tables (`[[key]]` or an array of inline tables).
    pub(crate) fn tables(&mut self, d: &mut Diags<'_>, key: &'static str) -> Vec<Table<'a, 'i>> {
        let name = self.key_name(key);
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            d.error(
                &v.span(),
                format!("`{name}` must be an array of tables (`[[{key}]]`)"),
                None,
            );
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| Table::of(item, format!("{name}[{i}]"), d))
            .collect()
    }

    /// Every entry of this table as `(key, value)` (for maps such as `[region.*]`),
    /// all keys counting as known.
    pub(crate) fn entries(
        &self,
    ) -> impl Iterator<Item = (At<&'a str>, &'a Spanned<DeValue<'i>>)> + '_ {
        self.map
            .iter()
            .map(|(k, v)| ((k.get_ref().as_ref(), k.span()), v))
    }

    /// Reports every key that was never asked for, with the closest known key as a hint.
    pub(crate) fn finish(self, d: &mut Diags<'_>) {
        for (k, _) in self.map.iter() {
            let key = k.get_ref().as_ref();
            if self.asked.contains(&key) {
                continue;
            }
            let hint = closest(key, &self.asked)
                .map(|c| format!("did you mean `{c}`?"))
                .or_else(|| {
                    let mut known = self.asked.clone();
                    known.sort_unstable();
                    known.dedup();
                    Some(format!("known keys here: {}", known.join(", ")))
                });
            d.error(
                &k.span(),
                format!("unknown key `{}`", self.key_name(key)),
                hint,
            );
        }
    }
}

/// The candidate within edit distance 2 (or a third of the word) of `word`.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = (word.len() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(dist, _)| *dist <= limit)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            if let Some(slot) = cur.get_mut(j + 1) {
                *slot = sub.min(del).min(ins);
            }
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(
            closest("audience", &["audiences", "issuer"]),
            Some("audiences")
        );
        assert_eq!(closest("algoritms", &["algorithms"]), Some("algorithms"));
        assert_eq!(closest("zzz", &["issuer"]), None);
    }

    #[test]
    fn computes_one_based_line_and_column() {
        assert_eq!(line_col("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("a\nbc\nd", 5), (3, 1));
    }
}
