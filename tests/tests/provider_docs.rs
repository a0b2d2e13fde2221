//! The provider pages (`docs/providers/*.md`) are configurations operators copy: each
//! `toml` block on them must load as a complete configuration, with the files it names.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_core::config::{self, ConfigFiles};
use portcullis_tests::repo_root;

/// Any file a page names, with content of the kind its name says: a private JWK, 32 key
/// bytes, or a client secret.
struct PlausibleFiles;

impl ConfigFiles for PlausibleFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        if path.ends_with(".jwk") {
            let jwk = r#"{"kty":"OKP","crv":"Ed25519","kid":"client-1",
                "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
                "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
            Ok(jwk.as_bytes().to_vec())
        } else if path.ends_with(".key") {
            Ok("5a".repeat(32).into_bytes())
        } else {
            Ok(b"a-client-secret-for-the-documentation-test".to_vec())
        }
    }
}

/// The `toml` blocks of a Markdown text.
fn toml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_provider_page_holds_configurations_that_load() {
    let dir = repo_root().join("docs/providers");
    let mut pages = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".md") || name == "README.md" {
            continue;
        }
        pages += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let blocks = toml_blocks(&text);
        assert!(!blocks.is_empty(), "{name} has no configuration");
        for (i, block) in blocks.iter().enumerate() {
            let loaded = config::load(block, "edge.toml", &PlausibleFiles)
                .unwrap_or_else(|e| panic!("{name}, configuration {}: {e}", i + 1));
            // Each page is about signing browsers in with its provider.
            assert!(
                loaded.issuers.iter().any(|i| i.login.is_some()),
                "{name}, configuration {}: no [issuer.login]",
                i + 1
            );
        }
    }
    // Google, Apple, Microsoft Entra, Auth0, Okta and Keycloak.
    assert_eq!(pages, 6);
}

#[test]
fn a_broken_page_configuration_would_be_caught() {
    let page = "# x\n\n```toml\n[[issuer]]\nname = \"a\"\n```\n";
    let blocks = toml_blocks(page);
    assert_eq!(blocks.len(), 1);
    assert!(config::load(&blocks[0], "edge.toml", &PlausibleFiles).is_err());
}
