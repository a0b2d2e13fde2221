//! `portcullis plugin new` and `portcullis plugin check`: scaffold a plugin crate, and tell
//! whether a file is a plugin component this host can run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::risk::{WIT_VERSION, disallowed_imports};
use wasmtime::component::Component;
use wasmtime::{Config as WasmConfig, Engine};

/// What `plugin check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Every import of the component.
    pub imports: Vec<String>,
    /// Imports outside the allowed set.
    pub disallowed: Vec<String>,
    /// Every export.
    pub exports: Vec<String>,
    /// Why the component cannot be run as a plugin, if it cannot.
    pub link_error: Option<String>,
}

impl CheckReport {
    /// True when the host would load the component.
    pub fn ok(&self) -> bool {
        self.disallowed.is_empty() && self.link_error.is_none()
    }

    /// A human-readable report.
    pub fn render(&self, file: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{file}:");
        let _ = writeln!(out, "  exports: {}", self.exports.join(", "));
        let _ = writeln!(out, "  imports: {}", self.imports.join(", "));
        for d in &self.disallowed {
            let _ = writeln!(out, "  NOT ALLOWED: imports {d}");
        }
        if let Some(e) = &self.link_error {
            let _ = writeln!(
                out,
                "  NOT A PLUGIN for portcullis:plugin@{WIT_VERSION}: {e}"
            );
        }
        if self.ok() {
            let _ = writeln!(out, "  ok: a portcullis:plugin@{WIT_VERSION} risk plugin");
        }
        out
    }
}

/// Checks a component file.
pub fn check(wasm: &[u8]) -> anyhow::Result<CheckReport> {
    let mut cfg = WasmConfig::new();
    cfg.wasm_component_model(true).epoch_interruption(true);
    let engine = Engine::new(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let component = Component::new(&engine, wasm)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("not a WebAssembly component")?;
    let ty = component.component_type();
    let mut report = CheckReport {
        imports: ty.imports(&engine).map(|(n, _)| n.to_owned()).collect(),
        exports: ty.exports(&engine).map(|(n, _)| n.to_owned()).collect(),
        disallowed: disallowed_imports(&engine, &component),
        link_error: None,
    };
    let exports_risk = report
        .exports
        .iter()
        .any(|e| e.starts_with("portcullis:plugin/risk@0.1"));
    if !exports_risk {
        report.link_error = Some(format!(
            "does not export portcullis:plugin/risk@{WIT_VERSION} (build it with the portcullis-plugin SDK and export_plugin!)"
        ));
    } else if report.disallowed.is_empty()
        && let Err(e) = crate::risk::link_only(&engine, &component)
    {
        report.link_error = Some(format!("{e:#}"));
    }
    Ok(report)
}

/// The SDK this binary was built next to, if it is still there.
pub fn default_sdk_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/sdk");
    p.canonicalize().ok()
}

/// Creates a plugin crate `name` in `dir` (which must not exist) depending on the SDK at
/// `sdk`.
pub fn scaffold(name: &str, dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
    {
        anyhow::bail!("plugin name `{name}`: use lowercase letters, digits and `-`");
    }
    if dir.exists() {
        anyhow::bail!("{} already exists", dir.display());
    }
    let type_name: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    std::fs::create_dir_all(dir.join("src"))?;
    let sdk = sdk.display().to_string().replace('\\', "/");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A standalone crate, not part of an enclosing workspace.
[workspace]

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
portcullis-plugin = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}

[dev-dependencies]
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
"#
        ),
    )?;
    std::fs::write(
        dir.join("src/lib.rs"),
        format!(
            r#"//! `{name}`: a Portcullis risk plugin.
//!
//! Build: `cargo build --release --target wasm32-wasip2`, then in the edge configuration:
//!
//! ```toml
//! [plugin.{name}]
//! path = "target/wasm32-wasip2/release/{file}.wasm"
//! headers = ["user-agent"]
//! on_error = "allow"
//! config = {{ score = 30 }}
//!
//! [[route]]
//! path = "/"
//! risk = {{ plugins = ["{name}"], challenge = 60, deny = 90 }}
//! ```

use portcullis_plugin::{{Assessment, Context, Host, RiskPlugin}};

/// Configuration (the `config` table of `[plugin.{name}]`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {{
    /// Score given to requests without a `User-Agent`.
    #[serde(default = "default_score")]
    pub score: u8,
}}

fn default_score() -> u8 {{
    30
}}

/// The plugin.
pub struct {type_name} {{
    score: u8,
}}

impl RiskPlugin for {type_name} {{
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {{
        if config.score > 100 {{
            return Err(format!("score {{}} is above 100", config.score));
        }}
        Ok(Self {{ score: config.score }})
    }}

    fn assess(&self, ctx: &Context, _host: &mut dyn Host) -> Assessment {{
        match ctx.header("user-agent") {{
            Some(ua) if !ua.trim().is_empty() => Assessment::allow(),
            _ => Assessment::score(self.score, "no User-Agent").label("no-user-agent"),
        }}
    }}
}}

portcullis_plugin::export_plugin!({type_name});

#[cfg(test)]
mod tests {{
    use super::*;
    use portcullis_plugin::testing::TestHost;

    #[test]
    fn requests_without_a_user_agent_score() {{
        let mut host = TestHost::new();
        let plugin: {type_name} = host.plugin(serde_json::json!({{"score": 40}})).unwrap();
        let bare = Context::new("GET", "/");
        assert_eq!(plugin.assess(&bare, &mut host).score, 40);
        let browser = Context::new("GET", "/").with_header("user-agent", "Mozilla/5.0");
        assert_eq!(plugin.assess(&browser, &mut host).score, 0);
    }}

    #[test]
    fn bad_configuration_is_refused() {{
        let host = TestHost::new();
        assert!(host.plugin::<{type_name}>(serde_json::json!({{"score": 101}})).is_err());
        assert!(host.plugin::<{type_name}>(serde_json::json!({{"nope": 1}})).is_err());
    }}
}}
"#,
            file = name.replace('-', "_"),
        ),
    )?;
    Ok(())
}
