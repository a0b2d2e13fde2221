//! The WIT `state` interface, and the state service both engines share: the store and
//! what requests get while it is unreachable (`[state] on_unavailable`).

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::config::FailPolicy;
use portcullis_core::limits::LimitCheck;

use crate::bindings::portcullis::gateway::state;
use crate::state::{Store, StoreError};

/// The shared state and its policy.
pub struct StateService {
    /// The store (the gateway's keys and, namespaced, the plugins').
    pub store: Arc<Store>,
    /// What requests needing unreachable state get.
    pub on_unavailable: FailPolicy,
}

impl StateService {
    /// A replay-cache check against the store; while it is unreachable `on_unavailable`
    /// answers (see [`StateService::replay_policy`]).
    pub async fn first_use(&self, key: &str, ttl: Duration) -> Result<bool, String> {
        self.replay_policy(self.store.first_use(key, ttl).await)
    }

    /// A replay check's answer under `[state] on_unavailable`: an unreachable store counts
    /// the value as new under `"allow"` and is an error under `"deny"` (the core refuses
    /// with 503 `state_unavailable`).
    pub fn replay_policy(&self, answer: Result<bool, StoreError>) -> Result<bool, String> {
        match answer {
            Ok(first) => Ok(first),
            Err(e) => {
                tracing::warn!(error = %e, "replay check failed: state unavailable");
                if self.on_unavailable == FailPolicy::Allow {
                    Ok(true)
                } else {
                    Err(e.to_string())
                }
            }
        }
    }
}

/// One request's view of the shared state.
pub struct StateHost(pub Arc<StateService>);

impl state::Host for StateHost {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        let got = self.0.store.get(&key).await;
        got.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "state get failed");
            None
        })
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) {
        let ttl = Duration::from_millis(ttl_ms);
        if let Err(e) = self.0.store.set(&key, value, ttl).await {
            tracing::warn!(error = %e, "state set failed");
        }
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_ms: u64) -> i64 {
        // An unreachable store reads as "seen very often": callers counting towards a
        // limit then refuse rather than allow.
        let ttl = Duration::from_millis(ttl_ms);
        let counted = self.0.store.increment(&key, delta, ttl).await;
        counted.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "state increment failed");
            i64::MAX
        })
    }

    async fn delete(&mut self, key: String) -> Result<(), String> {
        self.0.store.delete(&key).await.map_err(|e| e.to_string())
    }

    async fn first_use(&mut self, key: String, ttl_ms: u64) -> Result<bool, String> {
        self.0.first_use(&key, Duration::from_millis(ttl_ms)).await
    }

    async fn rate_limit(
        &mut self,
        checks: Vec<state::LimitCheck>,
    ) -> Result<Vec<state::LimitStatus>, String> {
        let checks: Vec<LimitCheck> = checks
            .into_iter()
            .map(|c| LimitCheck {
                key: c.key,
                interval_us: c.interval_us,
                burst: c.burst,
            })
            .collect();
        let statuses = self
            .0
            .store
            .rate_limit(&checks, crate::keys::now())
            .await
            .map_err(|e| e.to_string())?;
        Ok(statuses
            .into_iter()
            .map(|s| state::LimitStatus {
                allowed: s.allowed,
                remaining: s.remaining,
                retry_after_us: s.retry_after_us,
                reset_us: s.reset_us,
            })
            .collect())
    }
}
