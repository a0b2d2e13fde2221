//! Edge configuration: one TOML file describes a deployment.
//!
//! Loading is strict and reports every problem at once, each with file, line, column and a
//! hint: unknown keys, unknown regions, routes no region can serve, empty algorithm lists,
//! short HMAC secrets, `http://` key-set URLs without `insecure_http_jwks = true`, and more.
//! Files the configuration names (secrets, static key sets) are read through
//! [`ConfigFiles`], so the core itself never touches a file system.

mod agents;
mod backend_tls;
mod bot;
mod consent;
mod front;
mod limits;
mod login;
mod model;
mod reader;
mod risk;
mod serde_forms;
pub mod snapshot;
mod validate;

/// Durations as the configuration writes them (`250ms`, `30s`, `24h`, `7d`).
pub use crate::duration::parse_duration;
pub use model::*;

use std::collections::BTreeMap;
use std::fmt;

/// One problem found while loading a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The configuration file's name as given to [`load`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem of a configuration that failed to load, in source order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        write!(
            f,
            "{} problem(s) in the configuration",
            self.diagnostics.len()
        )
    }
}

impl std::error::Error for ConfigError {}

/// Reads files a configuration names (`hmac_secret_file`, `jwks_file`, `subject_key_file`).
/// Native adapters resolve paths relative to the configuration file; a bundle serves the
/// files it embedded at bundle time.
pub trait ConfigFiles {
    /// The file's bytes, or a message saying why it cannot be read.
    fn read(&self, path: &str) -> Result<Vec<u8>, String>;
}

/// Files held in memory, by path.
#[derive(Clone, Debug, Default)]
pub struct MapFiles(pub BTreeMap<String, Vec<u8>>);

impl MapFiles {
    /// Adds a file.
    pub fn with(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.0.insert(path.to_owned(), contents.into());
        self
    }
}

impl ConfigFiles for MapFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| format!("no such file: {path}"))
    }
}

/// Parses and validates a file holding only a `[state]` table, with the keys and checks of
/// a configuration's. `file` names the source in diagnostics.
pub fn load_state(
    source: &str,
    file: &str,
    files: &dyn ConfigFiles,
) -> Result<StateConfig, ConfigError> {
    validate::load_state(source, file, files)
}

/// Parses and validates a configuration. `file` names the source in diagnostics.
pub fn load(source: &str, file: &str, files: &dyn ConfigFiles) -> Result<Config, ConfigError> {
    validate::load(source, file, files)
}
