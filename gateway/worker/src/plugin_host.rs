//! What the worker is to a plugin: the [`Linked`] interface it calls plugins through
//! (linked crates and deployed components alike), and the host side of the plugin WIT it
//! answers them with ([`PluginHost`]: state in the isolate's memory, namespaced per
//! plugin and bounded; logs; the request's clock).

use std::cell::RefCell;
use std::collections::HashMap;

use portcullis_plugin::{Context, Host, Level, Outcome};

/// A plugin the worker can run (a linked crate or a deployed component), type-erased.
pub trait Linked {
    /// Assesses a request; `Err` when the call failed (a trap, a malformed answer).
    fn assess(
        &self,
        ctx: &Context,
        host: &mut dyn Host,
    ) -> Result<portcullis_plugin::Assessment, String>;
    /// Learns how a request ended.
    fn observe(&self, ctx: &Context, outcome: Outcome, host: &mut dyn Host);
}

/// Plugin state in the isolate's memory: per plugin namespace, bounded, with expiry.
#[derive(Debug, Default)]
pub struct MemoryState {
    entries: HashMap<String, (Vec<u8>, u64)>,
}

/// At most this many entries per isolate. Expired ones make room; live ones are never
/// evicted (a counter or marker a plugin relies on would vanish): when the state is full of
/// live entries the write is refused and the plugin's call fails (its `on_error` decides),
/// as a full or unreachable state fails plugin calls in the host.
const MAX_ENTRIES: usize = 100_000;

impl MemoryState {
    fn get(&self, key: &str, now_ms: u64) -> Option<Vec<u8>> {
        self.entries
            .get(key)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(v, _)| v.clone())
    }

    /// Stores `value` until `exp`; `Err` when a new key finds the state full of live entries.
    fn set(&mut self, key: String, value: Vec<u8>, exp: u64, now_ms: u64) -> Result<(), StateFull> {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, e)| *e > now_ms);
            if self.entries.len() >= MAX_ENTRIES {
                return Err(StateFull);
            }
        }
        self.entries.insert(key, (value, exp));
        Ok(())
    }
}

/// The isolate state is full of live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StateFull;

/// Why a call that had a write refused failed.
pub(crate) const STATE_FULL: &str = "the isolate's plugin state is full of live entries";

/// A plugin's view of the isolate state (keys prefixed with its namespace).
pub(crate) struct PluginHost<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) state: &'a RefCell<MemoryState>,
    pub(crate) now_ms: u64,
    /// A write was refused during this call: the call counts as failed.
    pub(crate) full: bool,
}

impl PluginHost<'_> {
    fn key(&self, key: &str) -> String {
        format!("plugin/{}/{key}", self.namespace)
    }
}

impl Host for PluginHost<'_> {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.state.borrow().get(&self.key(key), self.now_ms)
    }
    fn set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        let k = self.key(key);
        let stored = self.state.borrow_mut().set(
            k,
            value.to_vec(),
            self.now_ms.saturating_add(ttl_ms),
            self.now_ms,
        );
        self.full |= stored.is_err();
    }
    fn increment(&mut self, key: &str, delta: i64, ttl_ms: u64) -> i64 {
        let k = self.key(key);
        let mut state = self.state.borrow_mut();
        let (current, exp) = match state.entries.get(&k).filter(|(_, e)| *e > self.now_ms) {
            Some((v, e)) => (
                <[u8; 8]>::try_from(v.as_slice()).map_or(0, i64::from_be_bytes),
                *e,
            ),
            None => (0, self.now_ms.saturating_add(ttl_ms)),
        };
        let next = current.saturating_add(delta);
        let stored = state.set(k, next.to_be_bytes().to_vec(), exp, self.now_ms);
        self.full |= stored.is_err();
        next
    }
    fn delete(&mut self, key: &str) {
        let k = self.key(key);
        self.state.borrow_mut().entries.remove(&k);
    }
    fn log(&mut self, level: Level, message: &str) {
        let line = serde_json::json!({
            "plugin": self.namespace,
            "level": format!("{level:?}").to_ascii_lowercase(),
            "message": message,
        });
        log_line(&line.to_string());
    }
    fn now_ms(&mut self) -> u64 {
        self.now_ms
    }
}

/// Writes a log line (the console in a worker, stderr natively).
pub(crate) fn log_line(line: &str) {
    #[cfg(target_arch = "wasm32")]
    worker::console_log!("{line}");
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{line}");
}

/// The state and clock every plugin of an isolate shares.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Plugin state (namespaced per plugin).
    pub(crate) state: RefCell<MemoryState>,
    /// The current request's time, Unix milliseconds.
    pub(crate) now_ms: std::cell::Cell<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn state_is_namespaced_expires_and_counts() {
        let state = RefCell::new(MemoryState::default());
        let mut a = PluginHost {
            namespace: "a",
            state: &state,
            now_ms: 1_000,
            full: false,
        };
        a.set("k", b"v", 100);
        assert_eq!(a.increment("n", 2, 1_000), 2);
        assert_eq!(a.increment("n", 3, 1_000), 5);
        let mut b = PluginHost {
            namespace: "b",
            state: &state,
            now_ms: 1_000,
            full: false,
        };
        assert_eq!(b.get("k"), None);
        let mut later = PluginHost {
            namespace: "a",
            state: &state,
            now_ms: 1_100,
            full: false,
        };
        assert_eq!(later.get("k"), None);
        assert_eq!(later.increment("n", 1, 1_000), 6);
    }

    #[test]
    fn a_full_state_refuses_new_keys_and_keeps_the_live_ones() {
        let state = RefCell::new(MemoryState::default());
        for i in 0..MAX_ENTRIES {
            assert!(
                state
                    .borrow_mut()
                    .set(format!("live/{i}"), vec![1], 10_000, 0)
                    .is_ok()
            );
        }
        let mut host = PluginHost {
            namespace: "p",
            state: &state,
            now_ms: 1,
            full: false,
        };
        host.set("new", b"v", 100);
        assert!(host.full, "the refused write fails the plugin's call");
        assert_eq!(host.get("new"), None);
        assert_eq!(state.borrow().get("live/0", 1).as_deref(), Some(&[1u8][..]));
        // Overwriting a key that exists is not a new entry; expired entries make room.
        assert!(
            state
                .borrow_mut()
                .set("live/0".into(), vec![2], 10_000, 1)
                .is_ok()
        );
        assert!(
            state
                .borrow_mut()
                .set("after".into(), vec![3], 10, 20_000)
                .is_ok()
        );
    }
}
