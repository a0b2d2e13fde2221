//! The state port: the shared state every instance of a deployment sees (rate limits,
//! one-time values, sessions, login attempts), as one set of operations.

use std::time::Duration;

use crate::time::Timestamp;

/// One limit to check for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitCheck {
    /// The state key (route, limit name and what is counted).
    pub key: String,
    /// Emission interval in microseconds.
    pub interval_us: u64,
    /// Bucket depth.
    pub burst: u32,
}

/// The state of one limit after a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// This request may pass (as far as this limit goes).
    pub allowed: bool,
    /// Requests that could still pass right now.
    pub remaining: u32,
    /// When refused: how long until a request would pass, in microseconds.
    pub retry_after_us: u64,
    /// How long until the bucket is full again, in microseconds.
    pub reset_us: u64,
}

/// One operation on the shared state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateOp {
    /// The value of `key` ([`StateAnswer::Value`]).
    Get {
        /// The key.
        key: String,
    },
    /// Store `value` under `key` for `ttl` ([`StateAnswer::Done`]).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// How long it lives.
        ttl: Duration,
    },
    /// Remove `key` ([`StateAnswer::Done`]).
    Delete {
        /// The key.
        key: String,
    },
    /// Record a one-time value (a DPoP proof's `jti`, a challenge id, a logout token's
    /// `jti`, a refresh lock) for `ttl` ([`StateAnswer::FirstUse`]: true the first time).
    FirstUse {
        /// The key.
        key: String,
        /// How long it is remembered.
        ttl: Duration,
    },
    /// Check every limit as one atomic step: the request counts against all of them only
    /// if all allow it ([`StateAnswer::Limits`], one status per check, in order).
    RateLimit {
        /// The limits.
        checks: Vec<LimitCheck>,
        /// Now (memory state runs the GCRA on it; Redis uses the server's clock).
        now: Timestamp,
    },
}

/// The answer to a [`StateOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateAnswer {
    /// `Get`: the value, `None` when absent.
    Value(Option<Vec<u8>>),
    /// `Set` and `Delete`: done.
    Done,
    /// `FirstUse`: true the first time the key is seen within its ttl.
    FirstUse(bool),
    /// `RateLimit`: one status per check.
    Limits(Vec<LimitStatus>),
}

/// An answer, or why the state could not give one (unreachable, timed out, none on this
/// runtime): callers fail closed or follow `[state] on_unavailable`.
pub type StateResult = Result<StateAnswer, String>;

/// Why a runtime without shared state refuses what needs a one-time check.
pub const NO_SHARED_STATE: &str = "this runtime keeps no shared state, so one-time values (DPoP proofs, challenge answers, sign-in answers, logout tokens) cannot be checked";

/// The shared state, as the adapter offers it.
pub trait State {
    /// Performs `op` at once when this state can (in process memory, a synchronous host
    /// call): its result. `None` when the operation must be awaited: the decision then
    /// suspends with `op` as its need, and the adapter performs it and resumes.
    fn now(&self, op: &StateOp) -> Option<StateResult>;
}

/// An adapter without shared state: every operation fails, so rate limits follow
/// `on_unavailable` and one-time checks, sessions and login refuse (closed).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoState;

impl State for NoState {
    fn now(&self, op: &StateOp) -> Option<StateResult> {
        Some(Err(match op {
            StateOp::FirstUse { .. } => NO_SHARED_STATE.to_owned(),
            StateOp::RateLimit { .. } => {
                "this adapter has no shared state for rate limits".to_owned()
            }
            _ => "this adapter has no shared state".to_owned(),
        }))
    }
}

impl StateAnswer {
    /// The value of a `Get`; an error for any other answer.
    pub fn value(self) -> Result<Option<Vec<u8>>, String> {
        match self {
            StateAnswer::Value(v) => Ok(v),
            other => Err(mismatch("a value", &other)),
        }
    }

    /// The outcome of a `Set` or `Delete`.
    pub fn done(self) -> Result<(), String> {
        match self {
            StateAnswer::Done => Ok(()),
            other => Err(mismatch("done", &other)),
        }
    }

    /// The outcome of a `FirstUse`.
    pub fn first_use(self) -> Result<bool, String> {
        match self {
            StateAnswer::FirstUse(b) => Ok(b),
            other => Err(mismatch("a first-use answer", &other)),
        }
    }

    /// The statuses of a `RateLimit`.
    pub fn limits(self) -> Result<Vec<LimitStatus>, String> {
        match self {
            StateAnswer::Limits(l) => Ok(l),
            other => Err(mismatch("limit statuses", &other)),
        }
    }
}

fn mismatch(wanted: &str, got: &StateAnswer) -> String {
    format!("the state answered {got:?} where {wanted} was asked for")
}
