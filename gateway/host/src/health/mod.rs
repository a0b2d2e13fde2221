//! Passive backend health: a backend that fails a connection is avoided for a while.

mod wit;

pub use wit::HealthHost;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_core::BackendId;
use portcullis_core::config::{Config, RegionId};

/// How long a backend is avoided after a connection failure.
pub const EJECTION: Duration = Duration::from_secs(10);

/// Backend health and the backend allow-list (`scheme://authority` → backend).
#[derive(Debug)]
pub struct Health {
    by_origin: HashMap<String, BackendId>,
    regions: Vec<String>,
    down_until: Mutex<HashMap<BackendId, Instant>>,
}

impl Health {
    /// Health for the configured backends.
    pub fn new(config: &Config) -> Self {
        let mut by_origin = HashMap::new();
        for (r, region) in config.regions.iter().enumerate() {
            for (index, b) in region.backends.iter().enumerate() {
                by_origin.insert(
                    format!("{}://{}", b.scheme, b.authority),
                    BackendId {
                        region: RegionId(r),
                        index,
                    },
                );
            }
        }
        Self {
            by_origin,
            regions: config.regions.iter().map(|r| r.name.clone()).collect(),
            down_until: Mutex::new(HashMap::new()),
        }
    }

    /// The configured backend at `scheme://authority`, if any (the outbound allow-list).
    pub fn backend(&self, scheme: &str, authority: &str) -> Option<BackendId> {
        self.by_origin
            .get(&format!("{scheme}://{authority}"))
            .copied()
    }

    /// The name of the backend's region (for metrics).
    pub fn region_name(&self, b: BackendId) -> &str {
        self.regions.get(b.region.0).map_or("?", String::as_str)
    }

    /// True unless the backend failed recently.
    pub fn is_healthy(&self, b: BackendId) -> bool {
        let Ok(map) = self.down_until.lock() else {
            return true;
        };
        map.get(&b).is_none_or(|until| Instant::now() >= *until)
    }

    /// Records a connection failure.
    pub fn mark_down(&self, b: BackendId) {
        if let Ok(mut map) = self.down_until.lock() {
            map.insert(b, Instant::now() + EJECTION);
        }
    }

    /// Records a success.
    pub fn mark_up(&self, b: BackendId) {
        if let Ok(mut map) = self.down_until.lock() {
            map.remove(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::MapFiles;

    #[test]
    fn only_configured_backends_are_allowed_and_failures_eject_them() {
        let text = "[[issuer]]\nname = \"a\"\nissuer = \"https://a\"\njwks_uri = \"https://a/jwks\"\naudiences = [\"x\"]\nalgorithms = [\"ES256\"]\n[region.eu]\njurisdiction = \"EU\"\nbackends = [\"http://127.0.0.1:9101\", \"https://eu.example:8443/\"]\n[residency]\nmissing = \"eu\"\n[[route]]\npath = \"/\"\n[audit]\nsubject_key_file = \"k\"\n";
        let files = MapFiles::default().with("k", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let config = portcullis_core::config::load(text, "t", &files).expect("config");
        let health = Health::new(&config);
        let eu0 = health.backend("http", "127.0.0.1:9101").expect("allowed");
        assert!(health.backend("https", "eu.example:8443").is_some());
        assert!(
            health.backend("https", "127.0.0.1:9101").is_none(),
            "scheme matters"
        );
        assert!(health.backend("http", "127.0.0.1:9102").is_none());
        assert!(health.backend("http", "169.254.169.254").is_none());
        assert!(health.is_healthy(eu0));
        health.mark_down(eu0);
        assert!(!health.is_healthy(eu0));
        health.mark_up(eu0);
        assert!(health.is_healthy(eu0));
    }
}
