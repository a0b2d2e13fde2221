//! `portcullis plugin new` and `portcullis plugin check`: scaffold a plugin crate, and tell
//! whether a file is a plugin component this host can run.

use std::fmt::Write as _;
use std::path::Path;

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
    /// The `portcullis:plugin` version it was built against (from its `risk` export).
    pub built_for: Option<String>,
}

use crate::risk::{built_for, compatible};

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
        if let Some(v) = &self.built_for {
            let verdict = if compatible(v, WIT_VERSION) {
                "compatible"
            } else {
                "NOT compatible"
            };
            let _ = writeln!(
                out,
                "  built for portcullis:plugin@{v}; this host speaks {WIT_VERSION}: {verdict}"
            );
        }
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
        built_for: None,
    };
    report.built_for = built_for(&report.exports);
    let exports_risk = report
        .built_for
        .as_deref()
        .is_some_and(|v| compatible(v, WIT_VERSION));
    if let (false, Some(v)) = (exports_risk, &report.built_for) {
        report.link_error = Some(crate::risk::other_version(v));
    } else if !exports_risk {
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

/// Where a scaffold keeps its copy of the SDK.
pub const VENDORED_SDK: &str = "vendor/portcullis-plugin";

/// The SDK's sources and WIT, built into this binary: every scaffold gets its own copy, so
/// it builds without this repository (or a registry release of the SDK) anywhere.
const SDK_FILES: [(&str, &str); 4] = [
    (
        "src/lib.rs",
        include_str!("../../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "src/testing.rs",
        include_str!("../../../../plugins/sdk/src/testing.rs"),
    ),
    (
        "src/wasm.rs",
        include_str!("../../../../plugins/sdk/src/wasm.rs"),
    ),
    (
        "wit/plugin.wit",
        include_str!("../../../../plugins/sdk/wit/plugin.wit"),
    ),
];

/// The vendored SDK's manifest: `plugins/sdk/Cargo.toml` with the workspace's values
/// written out.
fn sdk_manifest() -> String {
    format!(
        r#"[package]
name = "portcullis-plugin"
description = "Write Portcullis risk plugins: one trait, one export macro, a native test harness"
version = "{version}"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
serde = {{ version = "1.0.228", features = ["derive"] }}
serde_json = "1.0.145"

[target.'cfg(all(target_arch = "wasm32", target_os = "wasi"))'.dependencies]
wit-bindgen = {{ version = "0.63", default-features = false, features = ["macros", "realloc"] }}
"#,
        version = env!("CARGO_PKG_VERSION")
    )
}

/// Writes the SDK into `dir` (a scaffold's [`VENDORED_SDK`]).
fn vendor_sdk(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("wit"))?;
    std::fs::write(dir.join("Cargo.toml"), sdk_manifest())?;
    for (file, text) in SDK_FILES {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(())
}

/// The target plugins are built for.
pub const PLUGIN_TARGET: &str = "wasm32-wasip2";

/// Whether the active toolchain has [`PLUGIN_TARGET`]: `Some(true)` / `Some(false)` per
/// rustup, `None` without rustup.
pub fn plugin_target_installed() -> Option<bool> {
    let out = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == PLUGIN_TARGET),
    )
}

/// Creates a plugin crate `name` in `dir` (which must not exist), depending on the SDK at
/// `sdk` (an SDK checkout, for SDK development), or by default on its own copy of the SDK
/// this binary carries (in [`VENDORED_SDK`]).
pub fn scaffold(name: &str, dir: &Path, sdk: Option<&Path>) -> anyhow::Result<()> {
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
    let sdk = match sdk {
        Some(path) => path.display().to_string().replace('\\', "/"),
        None => {
            vendor_sdk(&dir.join(VENDORED_SDK))?;
            VENDORED_SDK.to_owned()
        }
    };
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
        dir.join("scenario.toml"),
        format!(
            r#"# `portcullis plugin test target/wasm32-wasip2/release/{file}.wasm --scenario scenario.toml`:
# the built component under serve's sandbox, on these requests; exit 1 if an expectation
# does not hold.
[plugin]
config = {{ score = 40 }}
headers = ["user-agent"]

[[request]]
name = "a browser"
path = "/"
headers = {{ "user-agent" = "Mozilla/5.0" }}
expect = {{ action = "allow", score = 0 }}

[[request]]
name = "no User-Agent"
path = "/"
expect = {{ score = 40, labels = ["no-user-agent"] }}
"#,
            file = name.replace('-', "_"),
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

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn versions_are_compatible_within_a_major_version_and_one_zero_minor() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(compatible("1.2.0", "1.3.0"));
        assert!(!compatible("1.4.0", "1.3.0"));
        assert!(!compatible("2.0.0", "1.9.0"));
        assert!(!compatible("x", "0.1.0"));
        let exports = vec!["portcullis:plugin/risk@0.1.0".to_owned()];
        assert_eq!(built_for(&exports).as_deref(), Some("0.1.0"));
    }
}
