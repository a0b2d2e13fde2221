//! The WIT `config` interface: the configuration's text and the files it named, as the
//! host read them at startup (the snapshot went to the component's initializer).

use std::sync::Arc;

use crate::bindings::portcullis::gateway::config;
use crate::config::ConfigService;

/// One request's view of the configuration.
pub struct ConfigHost(pub Arc<ConfigService>);

impl config::Host for ConfigHost {
    /// Empty: the component engine's instances start with the configuration restored
    /// (pre-initialized with [`ConfigService::snapshot`] when the configuration loaded), so
    /// an instance that asked for it again fails closed instead of restoring a second copy.
    fn snapshot(&mut self) -> Vec<u8> {
        Vec::new()
    }

    fn source(&mut self) -> String {
        self.0.source.clone()
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, String> {
        self.0
            .files
            .get(&path)
            .cloned()
            .ok_or_else(|| format!("{path}: not part of the configuration"))
    }
}
