//! The shipped configuration examples load, and the README shows the reference example
//! verbatim.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_core::config;
use portcullis_tests::{DirFiles, repo_root};

#[test]
fn every_edge_config_example_loads() {
    let dir = repo_root().join("edge-config");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Deployment manifests for other runtimes are not gateway configurations.
        if path.extension().is_none_or(|e| e != "toml")
            || ["spin.toml", "wrangler.toml"].contains(&name.as_str())
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = config::load(&text, &name, &DirFiles(dir.clone())) {
            panic!("{e}");
        }
        loaded += 1;
    }
    assert!(loaded >= 1);
}

#[test]
fn the_readme_shows_the_reference_configuration_verbatim() {
    let example = std::fs::read_to_string(repo_root().join("edge-config/example.toml")).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains(example.trim()),
        "README.md must embed edge-config/example.toml unchanged"
    );
}
