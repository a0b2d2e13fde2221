//! The configuration: loaded and validated once at startup, with the files it names read
//! then (so the component gets the bytes the host validated), and served to the gateway
//! component through the WIT `config` interface.

mod wit;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use portcullis_core::ConfigFiles;
use portcullis_core::config::{self, Config};

pub use wit::ConfigHost;

/// Reads files relative to a directory and remembers them, so the component gets the same
/// bytes the host validated, without touching the file system per request.
pub struct RecordingFiles {
    base: PathBuf,
    read: RefCell<BTreeMap<String, Vec<u8>>>,
}

impl RecordingFiles {
    /// Files under `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self {
            base: base.into(),
            read: RefCell::new(BTreeMap::new()),
        }
    }

    /// Everything read so far.
    pub fn into_files(self) -> BTreeMap<String, Vec<u8>> {
        self.read.into_inner()
    }
}

impl ConfigFiles for RecordingFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(self.base.join(path)).map_err(|e| e.to_string())?;
        self.read
            .borrow_mut()
            .insert(path.to_owned(), bytes.clone());
        Ok(bytes)
    }
}

/// A loaded configuration with its text and the files it named.
pub struct LoadedConfig {
    /// The validated configuration.
    pub config: Config,
    /// Its text.
    pub source: String,
    /// The files it named.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The directory relative paths (files, plugins) are resolved against.
    pub base: PathBuf,
}

/// Loads and validates `source` (named `name`), with files relative to `base`. The error
/// is every diagnostic, rendered.
pub fn load_config_text(source: String, name: &str, base: &Path) -> Result<LoadedConfig, String> {
    let files = RecordingFiles::new(base);
    let config = config::load(&source, name, &files).map_err(|e| e.to_string())?;
    Ok(LoadedConfig {
        config,
        source,
        files: files.into_files(),
        base: base.to_path_buf(),
    })
}

/// Loads a configuration file.
pub fn load_config_file(path: &Path) -> Result<LoadedConfig, String> {
    let source = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_config_text(source, &path.display().to_string(), &base)
}

/// The configuration as the gateway component asks for it.
pub struct ConfigService {
    /// The configuration text.
    pub source: String,
    /// The validated configuration as a snapshot, restored by the gateway component when
    /// it is pre-initialized (instances are never handed it).
    pub snapshot: Vec<u8>,
    /// Files the configuration names, read once at startup.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl ConfigService {
    /// The service for a loaded configuration.
    pub fn new(loaded: &LoadedConfig) -> Self {
        Self {
            source: loaded.source.clone(),
            snapshot: loaded.config.to_snapshot(),
            files: loaded.files.clone(),
        }
    }
}
