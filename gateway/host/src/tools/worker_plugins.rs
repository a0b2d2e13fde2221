//! `portcullis worker-plugins`: the configuration's risk-plugin components, made loadable by
//! the Cloudflare Worker (`gateway/worker`) without rebuilding it.
//!
//! Workers cannot compile WebAssembly at run time, and they host no component model: every
//! module must be uploaded with the worker. So each `[plugin.*]` component is transpiled
//! ahead of time, with the generator inside the Bytecode Alliance's `jco`
//! (`js-component-bindgen`), into JavaScript glue plus the component's core modules, in
//! synchronous-instantiation mode. Next to the worker's own `index.js` this writes:
//!
//! - `plugins/<name>/…`: one directory per plugin, its glue and core modules;
//! - `portcullis-plugins.js`: the registry (plugin name → its instantiation, the SHA-256 of
//!   the component file it came from, the WIT version it was built for);
//! - `portcullis-plugin-host.js`: the host side every plugin shares (each plugin in its own
//!   instance, a fresh one after a trap, a memory cap, the plugin WIT's imports answered by
//!   the worker, WASI reduced to what a plugin may use);
//! - `main.js`: the entry module to deploy (`main = "…/main.js"`): it loads the registry, then
//!   the worker.
//!
//! The worker matches each `[plugin.*]` of its snapshot to the registry entry of that name
//! and refuses to start when the component's SHA-256 is not the one the snapshot names, so
//! a stale transpile is never run in place of the configured file.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use js_component_bindgen::{InstantiationMode, TranspileOpts};
use sha2::{Digest, Sha256};

use crate::config::LoadedConfig;
use crate::risk::{WIT_VERSION, compatible};
use crate::tools::plugin::check;

/// The host side of transpiled plugins (a fixed file, written beside the registry).
pub const PLUGIN_HOST_JS: &str = include_str!("../../../worker/js/portcullis-plugin-host.js");

/// The entry module: the registry first, then the worker (which reads the registry when it
/// starts).
const MAIN_JS: &str = r#"// Written by `portcullis worker-plugins`: deploy this file as the worker's entry module.
import "./portcullis-plugins.js";
export * from "./index.js";
export { default } from "./index.js";
"#;

/// What was written for one plugin.
#[derive(Debug)]
pub struct Written {
    /// The `[plugin.*]` name.
    pub name: String,
    /// The SHA-256 of the component file (hex).
    pub sha256: String,
    /// The files written under the output directory, with their sizes.
    pub files: Vec<(String, usize)>,
}

/// The hex SHA-256 of a component file, as the snapshot and the registry name it.
pub fn component_sha256(wasm: &[u8]) -> String {
    Sha256::digest(wasm)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A file-name-safe form of a plugin name (`[A-Za-z0-9_-]`, others become `_`).
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A JavaScript string literal for `s`.
fn js_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Transpiles every plugin of `loaded` into `out` (created if missing) and writes the
/// registry, the shared host file and the entry module. Refuses a component that is not a
/// plugin for this WIT version, as `serve` would.
pub fn write(loaded: &LoadedConfig, out: &Path) -> anyhow::Result<Vec<Written>> {
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let mut registry = String::from(
        "// Written by `portcullis worker-plugins`: the risk plugins this worker can load.\n\
         import { registerPlugins } from \"./portcullis-plugin-host.js\";\n",
    );
    let mut entries = String::new();
    let mut written = Vec::new();
    for (index, plugin) in loaded.config.plugins.iter().enumerate() {
        let path = loaded.base.join(&plugin.path);
        let wasm = std::fs::read(&path)
            .with_context(|| format!("plugin `{}`: {}", plugin.name, path.display()))?;
        let report = check(&wasm).with_context(|| format!("plugin `{}`", plugin.name))?;
        if !report.ok() {
            bail!(
                "plugin `{}` cannot run:\n{}",
                plugin.name,
                report.render(&path.display().to_string())
            );
        }
        let built_for = report.built_for.unwrap_or_default();
        debug_assert!(compatible(&built_for, WIT_VERSION));
        let stem = file_stem(&plugin.name);
        let opts = TranspileOpts {
            name: stem.clone(),
            no_typescript: true,
            instantiation_mode: Some(InstantiationMode::Sync),
            // Core modules stay separate files: Workers compile only uploaded modules.
            base64_cutoff: 0,
            nodejs_compat_disabled: true,
            no_namespaced_exports: true,
            ..TranspileOpts::default()
        };
        let transpiled = js_component_bindgen::transpile(&wasm, opts)
            .map_err(|e| anyhow::anyhow!("plugin `{}`: transpiling: {e:#}", plugin.name))?;
        let dir = out.join("plugins").join(&stem);
        std::fs::create_dir_all(&dir)?;
        let mut files = Vec::new();
        let mut modules = String::new();
        for (file, bytes) in &transpiled.files {
            if file.contains('/') || file.contains("..") {
                // Type declarations for interfaces; never needed at run time.
                continue;
            }
            std::fs::write(dir.join(file), bytes)?;
            files.push((format!("plugins/{stem}/{file}"), bytes.len()));
            if file.ends_with(".wasm") {
                let _ = writeln!(
                    registry,
                    "import p{index}_m{} from {};",
                    files.len(),
                    js_string(&format!("./plugins/{stem}/{file}"))
                );
                let _ = write!(modules, "{}: p{index}_m{}, ", js_string(file), files.len());
            }
        }
        let _ = writeln!(
            registry,
            "import {{ instantiate as p{index}_instantiate }} from {};",
            js_string(&format!("./plugins/{stem}/{stem}.js"))
        );
        let sha256 = component_sha256(&wasm);
        let _ = writeln!(
            entries,
            "  {}: {{ sha256: {}, builtFor: {}, instantiate: p{index}_instantiate, modules: {{ {modules}}} }},",
            js_string(&plugin.name),
            js_string(&sha256),
            js_string(&built_for),
        );
        written.push(Written {
            name: plugin.name.clone(),
            sha256,
            files,
        });
    }
    let _ = write!(registry, "\nregisterPlugins({{\n{entries}}});\n");
    std::fs::write(out.join("portcullis-plugins.js"), registry)?;
    std::fs::write(out.join("portcullis-plugin-host.js"), PLUGIN_HOST_JS)?;
    std::fs::write(out.join("main.js"), MAIN_JS)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plugin_names_become_safe_file_stems() {
        assert_eq!(file_stem("ip-reputation"), "ip-reputation");
        assert_eq!(file_stem("../evil name"), "___evil_name");
        assert_eq!(js_string("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn component_hashes_are_lowercase_hex_sha256() {
        assert_eq!(
            component_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
