//! The shared state in a Redis server shared by every gateway instance: every operation is
//! one command or one Lua script (atomic on the server), runs on a small pool of
//! multiplexed connections that reconnect by themselves, and is bounded by the configured
//! timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_core::limits::{LimitCheck, LimitStatus};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{StoreError, StoreMetrics};

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

/// Compare-and-swap: `SET` with a lifetime only when the value is the expected one
/// (`ARGV[1]` = "0": expected absent).
const CAS_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if v then return 0 end
elseif v ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
";

/// A Redis server shared by gateway instances.
pub struct RedisStore {
    pub(super) url: String,
    client: redis::Client,
    slots: Vec<tokio::sync::Mutex<Slot>>,
    timeout: Duration,
    prefix: String,
    gcra: redis::Script,
    increment: redis::Script,
    cas: redis::Script,
    /// Counters.
    pub metrics: StoreMetrics,
}

/// One pooled connection, connected lazily, with a back-off after failed attempts.
#[derive(Default)]
struct Slot {
    conn: Option<ConnectionManager>,
    retry_at: Option<Instant>,
}

/// Threads numbered in the order they first use a pool.
static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The pool slot this thread sends on. A multiplexed connection writes every command
    /// queued while it was busy in one `write` (and reads their answers in one `read`), so
    /// the operations of the requests one runtime thread is serving travel together on the
    /// thread's own connection; spreading each operation over the pool in turn made
    /// every connection carry one command per system call instead (a Redis-limited route
    /// ran at 0.74 of the memory-limited one's rate with four connections, 0.79 with one).
    static THREAD_SLOT: usize = THREADS.fetch_add(1, Ordering::Relaxed);
}

/// How long a failed connection attempt keeps a slot from trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

impl RedisStore {
    /// A store for `url` (no connection is made yet); a `rediss://` url connects over TLS,
    /// trusting `ca` (PEM) or, without it, the system's trust store.
    pub fn new(
        url: &str,
        ca: Option<&[u8]>,
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
        let client = match ca {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| anyhow::anyhow!("state url {url:?}: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            slots: (0..pool.max(1))
                .map(|_| tokio::sync::Mutex::new(Slot::default()))
                .collect(),
            timeout,
            prefix: prefix.to_owned(),
            gcra: redis::Script::new(GCRA_SCRIPT),
            increment: redis::Script::new(INCREMENT_SCRIPT),
            cas: redis::Script::new(CAS_SCRIPT),
            metrics: StoreMetrics::default(),
        })
    }

    /// Answers `PING` within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run::<String>(redis::cmd("PING")).await.map(|_| ())
    }

    /// The live value of `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(key));
        self.run(cmd).await
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("PX").arg(ttl_ms(ttl));
        self.run::<()>(cmd).await
    }

    /// Adds `delta` to the 8-byte big-endian counter `key` (created at 0 with `ttl`).
    pub async fn increment(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        let mut inv = self.increment.key(self.key(key));
        inv.arg(delta).arg(ttl_ms(ttl));
        self.script(&mut inv).await
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(key));
        self.run::<()>(cmd).await
    }

    /// True the first time `key` is seen within `ttl` (`SET NX`).
    pub async fn first_use(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl));
        let set: Option<String> = self.run(cmd).await?;
        Ok(set.is_some())
    }

    /// Stores `value` for `ttl` only when the value of `key` is `expected` (`None`:
    /// absent), in one script; true when stored.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut inv = self.cas.key(self.key(key));
        match expected {
            None => inv.arg("0").arg(""),
            Some(e) => inv.arg("1").arg(e),
        };
        inv.arg(value).arg(ttl_ms(ttl));
        let stored: i64 = self.script(&mut inv).await?;
        Ok(stored == 1)
    }

    /// One page of the keys starting with `prefix` (without the store's own prefix), from
    /// `cursor` (a `SCAN` cursor; `None` to start): the keys and the next cursor, `None`
    /// at the end.
    pub async fn keys(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor.unwrap_or("0"))
            .arg("MATCH")
            .arg(format!("{}*", glob_escape(&self.key(prefix))))
            .arg("COUNT")
            .arg(1000);
        let (next, keys): (String, Vec<String>) = self.run(cmd).await?;
        let keys = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
            .collect();
        Ok((keys, (next != "0").then_some(next)))
    }

    /// GCRA over every check, all or nothing, on the server's clock.
    pub async fn rate_limit(&self, checks: &[LimitCheck]) -> Result<Vec<LimitStatus>, StoreError> {
        let mut inv = self.gcra.prepare_invoke();
        for c in checks {
            inv.key(self.key(&c.key));
        }
        for c in checks {
            inv.arg(c.interval_us).arg(c.burst);
        }
        let flat: Vec<i64> = self.script(&mut inv).await?;
        parse_gcra(&flat, checks.len())
            .ok_or_else(|| StoreError(format!("malformed GCRA answer from Redis: {flat:?}")))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A live connection from the pool: the calling thread's own slot (see
    /// [`THREAD_SLOT`]); when it is down, the next connected one, and at most one connection
    /// attempt per call (slots that failed to connect wait [`RECONNECT_BACKOFF`]).
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let n = self.slots.len();
        let start = THREAD_SLOT.with(|slot| *slot) % n;
        let mut attempted = false;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(Ok(mut slot)) = self.slots.get(i).map(|s| s.try_lock()) else {
                continue; // another request is connecting this slot
            };
            if let Some(c) = &slot.conn {
                return Ok(c.clone());
            }
            if attempted || slot.retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            attempted = true;
            match self.connect().await {
                Ok(c) => {
                    slot.conn = Some(c.clone());
                    slot.retry_at = None;
                    return Ok(c);
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

    /// A command failed: when the connection itself is gone, every slot is emptied (see
    /// [`RedisStore::reset`]).
    fn failed(&self, e: &redis::RedisError) -> StoreError {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            self.reset();
        }
        StoreError(format!("redis {}: {e}", self.url))
    }

    /// Empties every slot so the next use of each connects afresh. Called when a
    /// connection dropped or an answer did not come in time: the server went away (restart,
    /// failover, network) or cannot be trusted to answer on that connection, and the other
    /// pooled connections to it are as dead even if idle — without this, each would fail
    /// one more request after the server is back, on the threads that had not used theirs
    /// meanwhile. (A slot being connected by another request is left to it.)
    fn reset(&self) {
        for slot in &self.slots {
            if let Ok(mut slot) = slot.try_lock() {
                slot.conn = None;
            }
        }
    }

    /// Runs one command within the timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let outcome = async {
            let mut conn = self.connection().await?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| self.failed(&e))
        };
        self.count(tokio::time::timeout(self.timeout, outcome).await)
    }

    /// Runs a script (EVALSHA, loading it on first use) within the timeout.
    async fn script<T: redis::FromRedisValue>(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let outcome = async {
            let mut conn = self.connection().await?;
            inv.invoke_async::<T>(&mut conn)
                .await
                .map_err(|e| self.failed(&e))
        };
        self.count(tokio::time::timeout(self.timeout, outcome).await)
    }

    fn count<T>(
        &self,
        r: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let r = r.unwrap_or_else(|_| {
            self.reset();
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

/// `text` matched literally by a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
