//! A native test harness: in-memory state with expiry, a clock you set, captured logs.

use std::collections::BTreeMap;

use crate::{Host, Level, RiskPlugin};

/// A [`Host`] for unit tests.
#[derive(Debug, Default)]
pub struct TestHost {
    now_ms: u64,
    entries: BTreeMap<String, (Vec<u8>, u64)>,
    /// Log lines written by the plugin.
    pub logs: Vec<(Level, String)>,
}

impl TestHost {
    /// A host whose clock reads 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self {
            now_ms: 1_767_225_600_000,
            ..Self::default()
        }
    }

    /// Builds plugin `P` from a JSON configuration, as the gateway would.
    pub fn plugin<P: RiskPlugin>(&self, config: serde_json::Value) -> Result<P, String> {
        crate::parse_config::<P>(&config.to_string())
    }

    /// Sets the clock.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// Moves the clock forward.
    pub fn advance_ms(&mut self, ms: u64) {
        self.now_ms = self.now_ms.saturating_add(ms);
    }

    /// Live entries (for assertions).
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .filter(|(_, exp)| *exp > self.now_ms)
            .count()
    }

    /// True when no live entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn live(&self, key: &str) -> Option<&Vec<u8>> {
        self.entries
            .get(key)
            .filter(|(_, exp)| *exp > self.now_ms)
            .map(|(v, _)| v)
    }
}

impl Host for TestHost {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.live(key).cloned()
    }

    fn set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        self.entries.insert(
            key.to_owned(),
            (value.to_vec(), self.now_ms.saturating_add(ttl_ms)),
        );
    }

    fn increment(&mut self, key: &str, delta: i64, ttl_ms: u64) -> i64 {
        let now = self.now_ms;
        let current = self
            .live(key)
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_be_bytes);
        let (value, expiry) = match (current, self.entries.get(key)) {
            (Some(v), Some((_, exp))) => (v.saturating_add(delta), *exp),
            _ => (delta, now.saturating_add(ttl_ms)),
        };
        self.entries
            .insert(key.to_owned(), (value.to_be_bytes().to_vec(), expiry));
        value
    }

    fn delete(&mut self, key: &str) {
        self.entries.remove(key);
    }

    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_owned()));
    }

    fn now_ms(&mut self) -> u64 {
        self.now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_counters_keep_their_first_expiry() {
        let mut h = TestHost::new();
        h.set("a", b"1", 1000);
        assert_eq!(h.get("a"), Some(b"1".to_vec()));
        h.advance_ms(1000);
        assert_eq!(h.get("a"), None);
        assert_eq!(h.increment("c", 2, 500), 2);
        h.advance_ms(400);
        assert_eq!(h.increment("c", 3, 500), 5);
        h.advance_ms(100);
        assert_eq!(h.increment("c", 1, 500), 1, "expired window starts again");
        h.delete("c");
        assert!(h.is_empty());
    }
}
