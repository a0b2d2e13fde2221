//! The shared state in Redis shared by every gateway instance — one server, a Redis
//! Cluster, or a primary watched by Sentinel: every operation is one command or one Lua
//! script (atomic on the server; in a cluster each touches one slot, see the hash tags of
//! the rate-limit keys), runs on a small pool of multiplexed connections that reconnect by
//! themselves, and is bounded by the configured timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_core::config::RedisServers;
use portcullis_core::limits::{LimitCheck, LimitStatus};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{FromRedisValue, RedisFuture, Value};

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

/// Redis shared by gateway instances.
pub struct RedisStore {
    /// How logs and errors name the servers.
    pub(super) name: String,
    servers: Servers,
    slots: Vec<tokio::sync::Mutex<Slot>>,
    timeout: Duration,
    prefix: String,
    gcra: redis::Script,
    increment: redis::Script,
    cas: redis::Script,
    /// Counters.
    pub metrics: StoreMetrics,
}

/// How the store reaches its servers.
enum Servers {
    /// One server.
    Single(redis::Client),
    /// The primary the sentinels name, asked again at every (re)connection.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// A cluster: each connection routes by slot, follows redirections and learns the
    /// topology by itself.
    Cluster(redis::cluster::ClusterClient),
}

/// One live multiplexed connection.
#[derive(Clone)]
enum Conn {
    /// To one server (or the current primary).
    Server(ConnectionManager),
    /// To every primary of a cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One pooled connection, connected lazily, with a back-off after failed attempts.
#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
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

/// The TLS roots of `rediss://` servers: `ca` (PEM), or the system's without it.
fn certificates(ca: Option<&[u8]>) -> Option<redis::TlsCertificates> {
    ca.map(|pem| redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    })
}

impl RedisStore {
    /// A store for one server at `url` (no connection is made yet).
    pub fn new(url: &str, pool: usize, timeout: Duration, prefix: &str) -> anyhow::Result<Self> {
        let servers = RedisServers::Single {
            url: url.to_owned(),
        };
        Self::with_servers(&servers, None, None, pool, timeout, prefix)
    }

    /// A store for `servers` (no connection is made yet); `rediss://` servers are reached
    /// over TLS, trusting `ca` (PEM) or, without it, the system's trust store.
    pub fn with_servers(
        servers: &RedisServers,
        ca: Option<&[u8]>,
        password: Option<&str>,
        pool: usize,
        timeout: Duration,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let name = servers.describe();
        let bad = |e: redis::RedisError| anyhow::anyhow!("state {name}: {e}");
        let connect = match servers {
            RedisServers::Single { url } => {
                let mut info: redis::ConnectionInfo =
                    redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(bad)?;
                if let Some(p) = password {
                    let settings = info.redis_settings().clone().set_password(p);
                    info = info.set_redis_settings(settings);
                }
                Servers::Single(
                    match certificates(ca) {
                        Some(certs) => redis::Client::build_with_tls(info, certs),
                        None => redis::Client::open(info),
                    }
                    .map_err(bad)?,
                )
            }
            RedisServers::Cluster { nodes } => {
                let mut b =
                    redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .retries(1);
                if let Some(p) = password {
                    b = b.password(p);
                }
                if let Some(certs) = certificates(ca) {
                    b = b.certs(certs);
                }
                Servers::Cluster(b.build().map_err(bad)?)
            }
            RedisServers::Sentinel { sentinels, service } => {
                let addrs = sentinels
                    .iter()
                    .map(|s| {
                        redis::IntoConnectionInfo::into_connection_info(s.as_str())
                            .map(|i| i.addr().clone())
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let mut b = SentinelClientBuilder::new(addrs, service, SentinelServerType::Master)
                    .map_err(bad)?;
                if let Some(p) = password {
                    b = b.set_client_to_redis_password(p);
                }
                Servers::Sentinel(tokio::sync::Mutex::new(b.build().map_err(bad)?))
            }
        };
        Ok(Self {
            name,
            servers: connect,
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
    /// `cursor` (`None` to start): the keys and the next cursor, `None` at the end. On one
    /// server the cursor is `SCAN`'s; a cluster is scanned primary by primary (the cursor
    /// names each primary not yet finished and its own `SCAN` cursor), so a key moved
    /// between primaries meanwhile may be missed or listed twice.
    pub async fn keys(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let mut scan = redis::cmd("SCAN");
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let own = |keys: Vec<String>| -> Vec<String> {
            keys.into_iter()
                .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
                .collect()
        };
        if !matches!(self.servers, Servers::Cluster(_)) {
            scan.arg(cursor.unwrap_or("0"))
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (String, Vec<String>) = self.run(scan).await?;
            return Ok((own(keys), (next != "0").then_some(next)));
        }
        let (keys, pending) = match cursor {
            // The first page: every primary at once.
            None => {
                scan.arg("0")
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let answers = self.routed(scan, all).await?;
                let Value::Map(answers) = answers else {
                    return Err(self.malformed("SCAN of every primary"));
                };
                let mut keys = Vec::new();
                let mut pending = Vec::new();
                for (node, page) in answers {
                    let node = String::from_redis_value(node)
                        .map_err(|_| self.malformed("SCAN of every primary"))?;
                    let (next, page): (String, Vec<String>) =
                        FromRedisValue::from_redis_value(page).map_err(|e| {
                            StoreError(format!("redis {}: SCAN on {node}: {e}", self.name))
                        })?;
                    keys.extend(page);
                    if next != "0" {
                        pending.push(format!("{node}@{next}"));
                    }
                }
                (keys, pending)
            }
            // Then the first unfinished primary, from its cursor.
            Some(cursor) => {
                let mut pending: Vec<String> = cursor.split(' ').map(str::to_owned).collect();
                let first = pending.remove(0);
                let bad = || {
                    StoreError(format!(
                        "redis {}: bad key-list cursor {cursor:?}",
                        self.name
                    ))
                };
                let (node, at) = first.rsplit_once('@').ok_or_else(bad)?;
                let (host, port) = node.rsplit_once(':').ok_or_else(bad)?;
                let port = port.parse::<u16>().map_err(|_| bad())?;
                scan.arg(at)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let there = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port,
                });
                let answer = self.routed(scan, there).await?;
                let (next, page): (String, Vec<String>) = FromRedisValue::from_redis_value(answer)
                    .map_err(|e| StoreError(format!("redis {}: SCAN on {node}: {e}", self.name)))?;
                if next != "0" {
                    pending.insert(0, format!("{node}@{next}"));
                }
                (page, pending)
            }
        };
        Ok((own(keys), (!pending.is_empty()).then(|| pending.join(" "))))
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
    async fn connection(&self) -> Result<Conn, StoreError> {
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
        Err(StoreError(format!("redis {} is unreachable", self.name)))
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let attempt = async {
            Ok::<_, redis::RedisError>(match &self.servers {
                Servers::Single(client) => {
                    Conn::Server(ConnectionManager::new_with_config(client.clone(), config).await?)
                }
                // Sentinel names the primary anew at every connection: after a failover
                // the next connection goes to the promoted replica.
                Servers::Sentinel(sentinel) => {
                    let client = sentinel.lock().await.async_get_client().await?;
                    Conn::Server(ConnectionManager::new_with_config(client, config).await?)
                }
                Servers::Cluster(cluster) => Conn::Cluster(cluster.get_async_connection().await?),
            })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(StoreError(format!("redis {}: {}", self.name, e))),
            Err(_) => Err(StoreError(format!(
                "redis {}: connect timed out",
                self.name
            ))),
        }
    }

    /// A command failed: when the connection itself is gone, or the server it reaches is
    /// no longer a writable primary (a replica after a failover, or one that lost its
    /// primary), every slot is emptied (see [`RedisStore::reset`]).
    fn failed(&self, e: &redis::RedisError) -> StoreError {
        use redis::{ErrorKind, ServerErrorKind};
        let not_primary = matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        );
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || not_primary
        {
            self.reset();
        }
        StoreError(format!("redis {}: {e}", self.name))
    }

    fn malformed(&self, what: &str) -> StoreError {
        StoreError(format!("redis {}: malformed answer to {what}", self.name))
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

    /// Runs one command on the cluster nodes `routing` names, within the timeout (a single
    /// server has no routing: callers check for a cluster first).
    async fn routed(&self, cmd: redis::Cmd, routing: RoutingInfo) -> Result<Value, StoreError> {
        let outcome = async {
            match self.connection().await? {
                Conn::Cluster(mut c) => c
                    .route_command(cmd, routing)
                    .await
                    .map_err(|e| self.failed(&e)),
                Conn::Server(_) => Err(StoreError(format!(
                    "redis {}: routed command without a cluster",
                    self.name
                ))),
            }
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
                self.name, self.timeout
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
