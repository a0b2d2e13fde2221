//! The shared state behind the WIT `state` interfaces, the DPoP replay cache and the rate
//! limits: in this process ([`MemoryState`], the embedded default) or in a Redis server
//! shared by every gateway instance ([`RedisStore`]).
//!
//! Every Redis operation is one command or one Lua script (atomic on the server), runs on
//! a small pool of multiplexed connections that reconnect by themselves, and is bounded by
//! the configured timeout. An error is returned, never waited out: the core's
//! `on_unavailable` policy (rate limits), the plugin's `on_error` policy (plugin state) or
//! a fail-closed refusal (DPoP replay checks under `on_unavailable = "deny"`) decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_core::Timestamp;
use portcullis_core::config::{StateBackend, StateConfig};
use portcullis_core::limits::{LimitCheck, LimitStatus};
use portcullis_core::ports::{StateAnswer, StateOp};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::state::MemoryState;

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
            Store::Redis(r) => write!(f, "Store::Redis({})", r.url),
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
                url,
                password,
                pool,
                timeout,
                prefix,
            } => Store::Redis(Box::new(RedisStore::new(
                url,
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

    /// Counters (Redis only; memory operations cannot fail).
    pub fn metrics(&self) -> Option<&StoreMetrics> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => Some(&r.metrics),
        }
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
            // Memory operations never wait: the future is ready when first polled.
            Store::Memory(_) => Some(futures::executor::block_on(self.perform(op))),
            Store::Redis(_) => None,
        }
    }

    /// Performs a core state operation.
    pub async fn perform(&self, op: &StateOp) -> Result<StateAnswer, StoreError> {
        Ok(match op {
            StateOp::Get { key } => StateAnswer::Value(self.get(key).await?),
            StateOp::Set { key, value, ttl } => {
                self.set(key, value.clone(), *ttl).await?;
                StateAnswer::Done
            }
            StateOp::Delete { key } => {
                self.delete(key).await?;
                StateAnswer::Done
            }
            StateOp::FirstUse { key, ttl } => {
                StateAnswer::FirstUse(self.first_use(key, *ttl).await?)
            }
            StateOp::RateLimit { checks, now } => {
                StateAnswer::Limits(self.rate_limit(checks, *now).await?)
            }
        })
    }

    /// Whether the store answers (`/readyz`): memory always does; Redis must answer `PING`
    /// within the configured timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.run::<String>(redis::cmd("PING")).await.map(|_| ()),
        }
    }

    /// The live value of `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.get(key)),
            Store::Redis(r) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(r.key(key));
                r.run(cmd).await
            }
        }
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.set(key, value, ttl).map_err(full),
            Store::Redis(r) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(r.key(key)).arg(value).arg("PX").arg(ttl_ms(ttl));
                r.run::<()>(cmd).await
            }
        }
    }

    /// Adds `delta` to the counter `key` (created at 0 with `ttl`); returns the new value.
    /// The counter is an 8-byte big-endian integer, as plugins see it through `get`.
    pub async fn increment(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        match self {
            Store::Memory(m) => m.increment(key, delta, ttl).map_err(full),
            Store::Redis(r) => {
                let mut inv = r.increment.key(r.key(key));
                inv.arg(delta).arg(ttl_ms(ttl));
                r.script(&mut inv).await
            }
        }
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.delete(key);
                Ok(())
            }
            Store::Redis(r) => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(r.key(key));
                r.run::<()>(cmd).await
            }
        }
    }

    /// True the first time `key` is seen within `ttl` (replay caches).
    pub async fn first_use(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.increment(key, 1, ttl).map(|n| n == 1).map_err(full),
            Store::Redis(r) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(r.key(key))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms(ttl));
                let set: Option<String> = r.run(cmd).await?;
                Ok(set.is_some())
            }
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
            Store::Redis(r) => {
                let mut inv = r.gcra.prepare_invoke();
                for c in checks {
                    inv.key(r.key(&c.key));
                }
                for c in checks {
                    inv.arg(c.interval_us).arg(c.burst);
                }
                let flat: Vec<i64> = r.script(&mut inv).await?;
                parse_gcra(&flat, checks.len()).ok_or_else(|| {
                    StoreError(format!("malformed GCRA answer from Redis: {flat:?}"))
                })
            }
        }
    }
}

/// `[allowed, remaining, retry_after_us, reset_us]` per check.
fn parse_gcra(flat: &[i64], n: usize) -> Option<Vec<LimitStatus>> {
    if flat.len() != 4 * n {
        return None;
    }
    flat.chunks_exact(4)
        .map(|c| {
            let u = |i: usize| c.get(i).and_then(|v| u64::try_from(*v).ok());
            Some(LimitStatus {
                allowed: *c.first()? == 1,
                remaining: u32::try_from(*c.get(1)?).ok()?,
                retry_after_us: u(2)?,
                reset_us: u(3)?,
            })
        })
        .collect()
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// GCRA over every key, all or nothing, on the server's clock. Mirrors
/// `portcullis_core::limits::gcra` step for step (numbers are microseconds; doubles hold
/// them exactly up to 2^53, i.e. until the year 2255).
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local out = {}
local next = {}
local all = true
for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tolerance = interval * (burst - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local base = math.max(tat, now)
  local waited = base - now
  if waited <= tolerance then
    local nxt = base + interval
    local used = nxt - now
    next[i] = nxt
    out[4 * i - 3] = 1
    out[4 * i - 2] = math.floor((interval * burst - used) / interval)
    out[4 * i - 1] = 0
    out[4 * i] = used
  else
    all = false
    out[4 * i - 3] = 0
    out[4 * i - 2] = 0
    out[4 * i - 1] = waited - tolerance
    out[4 * i] = waited
  end
end
if all then
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%.0f', next[i]), 'PX', math.max(1, math.ceil((next[i] - now) / 1000)))
  end
end
return out
";

/// INCRBY on an 8-byte big-endian counter (the format plugins read back with `get`).
const INCREMENT_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
local n = 0
if v and #v == 8 then
  n = struct.unpack('>l', v)
end
n = n + tonumber(ARGV[1])
if v then
  redis.call('SET', KEYS[1], struct.pack('>l', n), 'KEEPTTL')
else
  redis.call('SET', KEYS[1], struct.pack('>l', n), 'PX', ARGV[2])
end
return n
";

/// A Redis server shared by gateway instances.
pub struct RedisStore {
    url: String,
    client: redis::Client,
    slots: Vec<tokio::sync::Mutex<Slot>>,
    next: AtomicUsize,
    timeout: Duration,
    prefix: String,
    gcra: redis::Script,
    increment: redis::Script,
    /// Counters.
    pub metrics: StoreMetrics,
}

/// One pooled connection, connected lazily, with a back-off after failed attempts.
#[derive(Default)]
struct Slot {
    conn: Option<ConnectionManager>,
    retry_at: Option<Instant>,
}

/// How long a failed connection attempt keeps a slot from trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

impl RedisStore {
    /// A store for `url` (no connection is made yet).
    pub fn new(
        url: &str,
        password: Option<&str>,
        pool: usize,
        timeout: Duration,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let mut info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| anyhow::anyhow!("state url {url:?}: {e}"))?;
        if let Some(p) = password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client =
            redis::Client::open(info).map_err(|e| anyhow::anyhow!("state url {url:?}: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            slots: (0..pool.max(1))
                .map(|_| tokio::sync::Mutex::new(Slot::default()))
                .collect(),
            next: AtomicUsize::new(0),
            timeout,
            prefix: prefix.to_owned(),
            gcra: redis::Script::new(GCRA_SCRIPT),
            increment: redis::Script::new(INCREMENT_SCRIPT),
            metrics: StoreMetrics::default(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A live connection from the pool: round robin over the connected slots; when the
    /// chosen one is down, the next connected one, and at most one connection attempt per
    /// call (slots that failed to connect wait [`RECONNECT_BACKOFF`]).
    async fn connection(&self) -> Result<(usize, ConnectionManager), StoreError> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut attempted = false;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(Ok(mut slot)) = self.slots.get(i).map(|s| s.try_lock()) else {
                continue; // another request is connecting this slot
            };
            if let Some(c) = &slot.conn {
                return Ok((i, c.clone()));
            }
            if attempted || slot.retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            attempted = true;
            match self.connect().await {
                Ok(c) => {
                    slot.conn = Some(c.clone());
                    slot.retry_at = None;
                    return Ok((i, c));
                }
                Err(e) => {
                    slot.retry_at = Some(Instant::now() + RECONNECT_BACKOFF);
                    tracing::debug!(error = %e, slot = i, "redis connection attempt failed");
                }
            }
        }
        Err(StoreError(format!("redis {} is unreachable", self.url)))
    }

    async fn connect(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        match tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(StoreError(format!("redis {}: {e}", self.url))),
            Err(_) => Err(StoreError(format!("redis {}: connect timed out", self.url))),
        }
    }

    /// A command failed on slot `i`: when the connection itself is gone, the slot is
    /// emptied so the next use connects afresh (instead of each pooled connection failing
    /// once more after the server is back).
    fn failed(&self, i: usize, e: &redis::RedisError) -> StoreError {
        if (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
            && let Some(Ok(mut slot)) = self.slots.get(i).map(|s| s.try_lock())
        {
            slot.conn = None;
        }
        StoreError(format!("redis {}: {e}", self.url))
    }

    /// Runs one command within the timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let outcome = async {
            let (i, mut conn) = self.connection().await?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| self.failed(i, &e))
        };
        self.count(tokio::time::timeout(self.timeout, outcome).await)
    }

    /// Runs a script (EVALSHA, loading it on first use) within the timeout.
    async fn script<T: redis::FromRedisValue>(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let outcome = async {
            let (i, mut conn) = self.connection().await?;
            inv.invoke_async::<T>(&mut conn)
                .await
                .map_err(|e| self.failed(i, &e))
        };
        self.count(tokio::time::timeout(self.timeout, outcome).await)
    }

    fn count<T>(
        &self,
        r: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let r = r.unwrap_or_else(|_| {
            Err(StoreError(format!(
                "redis {}: no answer within {:?}",
                self.url, self.timeout
            )))
        });
        match &r {
            Ok(_) => self.metrics.operations.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.metrics.errors.fetch_add(1, Ordering::Relaxed),
        };
        r
    }
}

/// The store shared by the host's services.
pub type SharedStore = Arc<Store>;

/// A full in-memory state is unavailable state: `on_unavailable` decides.
fn full(e: crate::state::Full) -> StoreError {
    StoreError(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_answers_parse_and_malformed_ones_do_not() {
        let s = parse_gcra(&[1, 4, 0, 100, 0, 0, 50, 900], 2).unwrap();
        assert!(s[0].allowed && !s[1].allowed);
        assert_eq!(s[1].retry_after_us, 50);
        assert!(parse_gcra(&[1, 2, 3], 1).is_none());
        assert!(parse_gcra(&[1, -1, 0, 0], 1).is_none());
    }
}
