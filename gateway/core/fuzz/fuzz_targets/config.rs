//! The configuration loader on any text: a list of diagnostics or a configuration, never a
//! panic; a configuration that loads survives its own snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::{Config, MapFiles};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = MapFiles::default()
        .with("audit.key", portcullis_core::b64::encode(&[9; 32]))
        .with("hs.key", portcullis_core::b64::encode(&[7; 48]));
    if let Ok(config) = portcullis_core::config::load(text, "fuzz.toml", &files) {
        let restored = Config::from_snapshot(&config.to_snapshot());
        assert!(
            restored.is_ok(),
            "a loaded configuration must restore from its snapshot"
        );
    }
});
