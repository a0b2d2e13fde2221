//! The WIT `config` interface: the validated configuration's snapshot, its text, and the
//! files it named, as the host read them at startup.

use std::sync::Arc;

use crate::bindings::portcullis::gateway::config;
use crate::config::ConfigService;

/// One request's view of the configuration.
pub struct ConfigHost(pub Arc<ConfigService>);

impl config::Host for ConfigHost {
    fn snapshot(&mut self) -> Vec<u8> {
        self.0.snapshot.clone()
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
