//! The WIT `health` interface: whether a backend is currently avoided.

use std::sync::Arc;

use crate::bindings::portcullis::gateway::health;
use crate::health::Health;

/// One request's view of backend health.
pub struct HealthHost(pub Arc<Health>);

impl health::Host for HealthHost {
    fn is_healthy(&mut self, region: u32, index: u32) -> bool {
        self.0.is_healthy(portcullis_core::BackendId {
            region: portcullis_core::config::RegionId(region as usize),
            index: index as usize,
        })
    }
}
