//! The shared state behind the WIT `state` interfaces, the DPoP replay cache and the rate
//! limits: in this process ([`MemoryState`], the embedded default) or in a Redis server
//! shared by every gateway instance ([`RedisStore`]).
//!
//! Every Redis operation is one command or one Lua script (atomic on the server), runs on
//! a small pool of multiplexed connections that reconnect by themselves, and is bounded by
//! the configured timeout. An error is returned, never waited out: the core's
//! `on_unavailable` policy (rate limits), the plugin's `on_error` policy (plugin state) or
//! a fail-closed refusal (DPoP replay checks under `on_unavailable = "deny"`) decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portcullis_core::Timestamp;
use portcullis_core::config::{StateBackend, StateConfig};
use portcullis_core::limits::{LimitCheck, LimitStatus};
use portcullis_core::ports::{StateAnswer, StateOp};

pub mod keyvalue;
pub mod memory;
mod redis;
mod wit;

use memory::MemoryState;
pub use redis::RedisStore;
pub use wit::{StateHost, StateService};

/// A failed state operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Counters of the shared state.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Operations that failed (unreachable, timed out, bad answer).
    pub errors: AtomicU64,
    /// Operations that succeeded.
    pub operations: AtomicU64,
}

/// The shared state.
pub enum Store {
    /// In this process.
    Memory(MemoryState),
    /// In Redis.
    Redis(Box<RedisStore>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Memory(_) => f.write_str("Store::Memory"),
            Store::Redis(r) => write!(f, "Store::Redis({})", r.name),
        }
    }
}

impl Store {
    /// The store the configuration names. Redis is connected lazily: a server that is down
    /// at startup is retried, and requests meanwhile follow `on_unavailable`.
    pub fn from_config(cfg: &StateConfig) -> anyhow::Result<Self> {
        Ok(match &cfg.backend {
            StateBackend::Memory { capacity } => Store::Memory(MemoryState::new(*capacity)),
            StateBackend::Redis {
                servers,
                ca,
                password,
                pool,
                timeout,
                prefix,
            } => Store::Redis(Box::new(RedisStore::with_servers(
                servers,
                ca.as_deref(),
                password.as_deref(),
                *pool,
                *timeout,
                prefix,
            )?)),
        })
    }

    /// An in-memory store (tests, tools).
    pub fn memory(capacity: usize) -> Self {
        Store::Memory(MemoryState::new(capacity))
    }

    /// The state's counters for one scrape, labelled with the backend.
    pub fn add_metrics(&self, scrape: &mut crate::metrics::Scrape) {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        let (backend, ops, errors) = match self {
            Store::Memory(_) => ("memory", 0, 0),
            Store::Redis(r) => (
                "redis",
                r.metrics.operations.load(Ordering::Relaxed),
                r.metrics.errors.load(Ordering::Relaxed),
            ),
        };
        let labels = vec![("backend", backend)];
        let operations = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        operations.get_or_create(&labels).inc_by(ops);
        let failed = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        failed.get_or_create(&labels).inc_by(errors);
        scrape.add(
            "state_operations",
            "Shared-state operations that succeeded",
            operations,
        );
        scrape.add(
            "state_errors",
            "Shared-state operations that failed (unreachable, timeout)",
            failed,
        );
    }

    /// Performs a core state operation at once when the store is in this process; `None`
    /// for Redis, whose operations are awaited ([`Store::perform`]) while the decision
    /// waits.
    pub fn try_now(&self, op: &StateOp) -> Option<Result<StateAnswer, StoreError>> {
        match self {
            Store::Memory(m) => Some(memory_answer(m, op)),
            Store::Redis(_) => None,
        }
    }

    /// Performs a core state operation.
    pub async fn perform(&self, op: &StateOp) -> Result<StateAnswer, StoreError> {
        let r = match self {
            Store::Memory(m) => return memory_answer(m, op),
            Store::Redis(r) => r,
        };
        Ok(match op {
            StateOp::Get { key } => StateAnswer::Value(r.get(key).await?),
            StateOp::Set { key, value, ttl } => {
                r.set(key, value.clone(), *ttl).await?;
                StateAnswer::Done
            }
            StateOp::Delete { key } => {
                r.delete(key).await?;
                StateAnswer::Done
            }
            StateOp::FirstUse { key, ttl } => StateAnswer::FirstUse(r.first_use(key, *ttl).await?),
            StateOp::RateLimit { checks, .. } => StateAnswer::Limits(r.rate_limit(checks).await?),
        })
    }

    /// Whether the store answers (`/readyz`): memory always does; Redis must answer `PING`
    /// within the configured timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.ping().await,
        }
    }

    /// The live value of `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.get(key)),
            Store::Redis(r) => r.get(key).await,
        }
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.set(key, value, ttl).map_err(full),
            Store::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Adds `delta` to the counter `key` (created at 0 with `ttl`); returns the new value.
    /// The counter is an 8-byte big-endian integer, as plugins see it through `get`.
    pub async fn increment(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        match self {
            Store::Memory(m) => m.increment(key, delta, ttl).map_err(full),
            Store::Redis(r) => r.increment(key, delta, ttl).await,
        }
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.delete(key);
                Ok(())
            }
            Store::Redis(r) => r.delete(key).await,
        }
    }

    /// Stores `value` under `key` for `ttl` only when the live value is `expected`
    /// (`None`: absent), atomically; true when stored.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.compare_and_swap(key, expected, value, ttl).map_err(full),
            Store::Redis(r) => r.compare_and_swap(key, expected, value, ttl).await,
        }
    }

    /// One page of the live keys starting with `prefix`, from `cursor` (`None` to start):
    /// the keys and the cursor of the next page, `None` at the end.
    pub async fn keys(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        const PAGE: usize = 1000;
        match self {
            Store::Memory(m) => {
                let keys = m.keys(prefix, cursor, PAGE);
                let next = (keys.len() == PAGE).then(|| keys.last().cloned()).flatten();
                Ok((keys, next))
            }
            Store::Redis(r) => r.keys(prefix, cursor).await,
        }
    }

    /// True the first time `key` is seen within `ttl` (replay caches).
    pub async fn first_use(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => first_in_memory(m, key, ttl),
            Store::Redis(r) => r.first_use(key, ttl).await,
        }
    }

    /// Checks GCRA rate limits, all or nothing (see `portcullis_core::limits`). In memory
    /// the gateway's clock counts; in Redis the server's, so every gateway agrees.
    pub async fn rate_limit(
        &self,
        checks: &[LimitCheck],
        now: Timestamp,
    ) -> Result<Vec<LimitStatus>, StoreError> {
        match self {
            Store::Memory(m) => m.gcra(checks, now).map_err(full),
            Store::Redis(r) => r.rate_limit(checks).await,
        }
    }
}

/// A core state operation on the in-memory state, which answers at once.
fn memory_answer(m: &MemoryState, op: &StateOp) -> Result<StateAnswer, StoreError> {
    Ok(match op {
        StateOp::Get { key } => StateAnswer::Value(m.get(key)),
        StateOp::Set { key, value, ttl } => {
            m.set(key, value.clone(), *ttl).map_err(full)?;
            StateAnswer::Done
        }
        StateOp::Delete { key } => {
            m.delete(key);
            StateAnswer::Done
        }
        StateOp::FirstUse { key, ttl } => StateAnswer::FirstUse(first_in_memory(m, key, *ttl)?),
        StateOp::RateLimit { checks, now } => {
            StateAnswer::Limits(m.gcra(checks, *now).map_err(full)?)
        }
    })
}

fn first_in_memory(m: &MemoryState, key: &str, ttl: Duration) -> Result<bool, StoreError> {
    m.increment(key, 1, ttl).map(|n| n == 1).map_err(full)
}

/// A full in-memory state is unavailable state: `on_unavailable` decides.
fn full(e: crate::state::memory::Full) -> StoreError {
    StoreError(e.to_string())
}
