//! The worker's shared state in Durable Objects: one object per state key (named by the
//! key), holding one entry. A Durable Object runs one event at a time and holds other
//! events while a storage operation is in flight, so each object's read-modify-write step
//! (one-time use, a GCRA bucket) is atomic; every isolate of every worker bound to the
//! namespace sees the same object.
//!
//! This module is the protocol and the step an object takes ([`apply`]), independent of the
//! Workers runtime (tested natively); `runtime.rs` holds the object class and the client.
//!
//! A decision's rate limits are checked on one object each. With several limits the worker
//! first reads every bucket (`commit: false`) and counts the request only when all allow
//! it (`commit: true`, one object after the other): a request refused by one limit counts
//! against none, except under a race between the two passes, where a limit counted before
//! another refused stays counted (as in the edge bundle's key-value store).

use portcullis_core::limits::{LimitCheck, LimitStatus, gcra};
use serde::{Deserialize, Serialize};

/// The Durable Object namespace binding that holds the shared state. Without it the worker
/// has no shared state, and what needs it fails closed.
pub const STATE_BINDING: &str = "PORTCULLIS_STATE";

/// One operation on one object's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KeyOp {
    /// The live value.
    Get,
    /// Store a value (base64url) for `ttl_ms`.
    Set {
        /// The value, base64url.
        value: String,
        /// Lifetime.
        ttl_ms: u64,
    },
    /// Remove the entry.
    Delete,
    /// True the first time within `ttl_ms`.
    FirstUse {
        /// How long the value is remembered.
        ttl_ms: u64,
    },
    /// One GCRA step at `now_us` (the gateway's clock); the new TAT is stored only when
    /// `commit` and allowed.
    Gcra {
        /// Emission interval (µs).
        interval_us: u64,
        /// Bucket depth.
        burst: u32,
        /// Now (µs since the epoch).
        now_us: u64,
        /// Count the request (else only look).
        commit: bool,
    },
}

/// What an object stores: a value (base64url) and when it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The value, base64url.
    pub value: String,
    /// Expiry, ms since the epoch.
    pub expires_ms: u64,
}

/// What the object does to its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Nothing.
    Keep,
    /// Store this entry.
    Put(Entry),
    /// Remove the entry.
    Delete,
}

/// The answer to a [`KeyOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// `Get`: the value (base64url), if live.
    Value(Option<String>),
    /// `Set`, `Delete`.
    Done,
    /// `FirstUse`.
    FirstUse(bool),
    /// `Gcra`.
    Limit {
        /// Allowed.
        allowed: bool,
        /// Remaining.
        remaining: u32,
        /// Retry after (µs).
        retry_after_us: u64,
        /// Reset (µs).
        reset_us: u64,
    },
}

impl Reply {
    /// The limit status of a `Limit` reply.
    pub fn status(&self) -> Option<LimitStatus> {
        match *self {
            Reply::Limit {
                allowed,
                remaining,
                retry_after_us,
                reset_us,
            } => Some(LimitStatus {
                allowed,
                remaining,
                retry_after_us,
                reset_us,
            }),
            _ => None,
        }
    }
}

/// The step an object takes: its entry (if any) and `op` at `now_ms` → the write and the
/// reply.
pub fn apply(current: Option<Entry>, op: &KeyOp, now_ms: u64) -> (Write, Reply) {
    let live = current.filter(|e| now_ms < e.expires_ms);
    match op {
        KeyOp::Get => (Write::Keep, Reply::Value(live.map(|e| e.value))),
        KeyOp::Set { value, ttl_ms } => (
            Write::Put(Entry {
                value: value.clone(),
                expires_ms: now_ms.saturating_add(*ttl_ms),
            }),
            Reply::Done,
        ),
        KeyOp::Delete => (Write::Delete, Reply::Done),
        KeyOp::FirstUse { ttl_ms } => match live {
            Some(_) => (Write::Keep, Reply::FirstUse(false)),
            None => (
                Write::Put(Entry {
                    value: "MQ".to_owned(),
                    expires_ms: now_ms.saturating_add(*ttl_ms),
                }),
                Reply::FirstUse(true),
            ),
        },
        KeyOp::Gcra {
            interval_us,
            burst,
            now_us,
            commit,
        } => {
            let tat = live
                .and_then(|e| portcullis_core::b64::decode(&e.value))
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_be_bytes);
            let check = LimitCheck {
                key: String::new(),
                interval_us: *interval_us,
                burst: *burst,
            };
            let (status, next) = gcra(tat, *now_us, &check);
            let write = match next {
                Some(tat) if *commit => Write::Put(Entry {
                    value: portcullis_core::b64::encode(&tat.to_be_bytes()),
                    // Useless (a full bucket) once the TAT has passed.
                    expires_ms: tat.div_ceil(1000),
                }),
                _ => Write::Keep,
            };
            (
                write,
                Reply::Limit {
                    allowed: status.allowed,
                    remaining: status.remaining,
                    retry_after_us: status.retry_after_us,
                    reset_us: status.reset_us,
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(entry: &mut Option<Entry>, op: &KeyOp, now_ms: u64) -> Reply {
        let (write, reply) = apply(entry.clone(), op, now_ms);
        match write {
            Write::Keep => {}
            Write::Put(e) => *entry = Some(e),
            Write::Delete => *entry = None,
        }
        reply
    }

    #[test]
    fn a_one_time_value_is_first_once_until_it_expires() {
        let mut e = None;
        let op = KeyOp::FirstUse { ttl_ms: 1_000 };
        assert_eq!(run(&mut e, &op, 10), Reply::FirstUse(true));
        assert_eq!(run(&mut e, &op, 500), Reply::FirstUse(false));
        assert_eq!(run(&mut e, &op, 1_010), Reply::FirstUse(true));
    }

    #[test]
    fn values_expire_and_delete() {
        let mut e = None;
        let set = KeyOp::Set {
            value: "YQ".into(),
            ttl_ms: 100,
        };
        assert_eq!(run(&mut e, &set, 0), Reply::Done);
        assert_eq!(
            run(&mut e, &KeyOp::Get, 99),
            Reply::Value(Some("YQ".into()))
        );
        assert_eq!(run(&mut e, &KeyOp::Get, 100), Reply::Value(None));
        run(&mut e, &set, 200);
        run(&mut e, &KeyOp::Delete, 201);
        assert_eq!(run(&mut e, &KeyOp::Get, 202), Reply::Value(None));
    }

    #[test]
    fn a_bucket_counts_only_committed_requests() {
        let mut e = None;
        let step = |commit| KeyOp::Gcra {
            interval_us: 1_000_000,
            burst: 2,
            now_us: 5_000_000,
            commit,
        };
        let allowed = |r: Reply| r.status().unwrap().allowed;
        // Looking does not count.
        assert!(allowed(run(&mut e, &step(false), 5_000)));
        assert!(allowed(run(&mut e, &step(false), 5_000)));
        assert!(allowed(run(&mut e, &step(false), 5_000)));
        assert!(allowed(run(&mut e, &step(true), 5_000)));
        assert!(allowed(run(&mut e, &step(true), 5_000)));
        let refused = run(&mut e, &step(true), 5_000).status().unwrap();
        assert!(!refused.allowed);
        assert!(refused.retry_after_us > 0);
    }
}
