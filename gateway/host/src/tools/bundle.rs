//! `portcullis bundle`: one self-contained component for any `wasi:http` runtime.
//!
//! The configuration is validated (its remote key sets baked in with `--bake-keys`;
//! otherwise the bundle fetches them at run time), and its snapshot is wrapped in a small generated component (`portcullis:gateway/embedded`). The
//! bytecode alliance's composition graph (`wac-graph`) then plugs that into the portable
//! providers (`gateway/providers`), and the providers into every `portcullis:gateway`
//! import of the gateway component. What is left imports only `wasi:*` and exports
//! `wasi:http/incoming-handler`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_core::Config;
use portcullis_core::config::KeySource;
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

use super::preinit;

/// The portable providers component, built by this crate's build script.
pub const PROVIDERS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/portcullis_providers.wasm"));

/// The portable providers built with `+wide-arithmetic` (`portcullis bundle
/// --wide-arithmetic`): 128-bit multiplies as single instructions, for runtimes that
/// support the wide-arithmetic proposal.
pub const PROVIDERS_WIDE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/portcullis_providers_wide.wasm"));

/// The plugin-link component (one instance per bundled plugin), built by the build script.
pub const PLUGIN_LINK: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/portcullis_plugin_link.wasm"));

/// The version of the `portcullis:gateway` and `portcullis:bundle` packages.
const PACKAGE_VERSION: &str = "0.1.0";
/// The version of the `portcullis:plugin` package.
const PLUGIN_VERSION: &str = crate::risk::WIT_VERSION;

/// The host services the gateway imports and the providers export.
pub const SERVICES: [&str; 7] = [
    "config", "keys", "health", "state", "client", "audit", "risk",
];

/// Largest key set or discovery document fetched at bundle time.
const MAX_DOCUMENT: usize = 1 << 20;

/// What went into a bundle.
#[derive(Debug)]
pub struct Bundle {
    /// The composed component.
    pub wasm: Vec<u8>,
    /// Its imports (all `wasi:*`).
    pub imports: Vec<String>,
}

/// Fetches every remote key set of `config` and makes it static (`bundle --bake-keys`: an
/// offline bundle; rotating keys means bundling again).
pub async fn bake_keys(config: &mut Config) -> anyhow::Result<Vec<String>> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let get = |url: String| {
        let client = client.clone();
        async move {
            let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
            let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
                .await
                .with_context(|| format!("{url}: timed out"))?
                .with_context(|| format!("{url}: fetch failed"))?;
            if response.status() != 200 {
                bail!("{url}: HTTP status {}", response.status());
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("{url}: body: {e}"))?
                .to_bytes();
            Ok::<_, anyhow::Error>(body)
        }
    };
    let mut baked = Vec::new();
    for issuer in &mut config.issuers {
        let jwks_url = match &issuer.keys {
            KeySource::Static(_) => continue,
            KeySource::JwksUri(url) => url.clone(),
            KeySource::Discovery(url) => {
                let doc = get(url.clone()).await?;
                portcullis_core::keyset::parse_discovery(
                    &doc,
                    &issuer.issuer,
                    issuer.insecure_http_jwks,
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", issuer.name))?
            }
        };
        let body = get(jwks_url.clone()).await?;
        let parsed = portcullis_core::jwk::parse_jwks(&body)
            .map_err(|e| anyhow::anyhow!("{}: key set {jwks_url}: {e}", issuer.name))?;
        issuer.keys = KeySource::Static(parsed);
        baked.push(issuer.name.clone());
    }
    Ok(baked)
}

/// WAT string-literal escapes for `bytes`.
fn wat_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        out.push_str(&format!("\\{b:02x}"));
    }
    out
}

/// A `(ptr, len)` pair as WAT escapes.
fn wat_pair(ptr: u32, len: u32) -> String {
    wat_bytes(&[ptr.to_le_bytes(), len.to_le_bytes()].concat())
}

/// A component exporting `portcullis:bundle/embedded` whose `snapshot` returns `snapshot`.
pub fn embedded_component(snapshot: &[u8]) -> anyhow::Result<Vec<u8>> {
    // Linear memory: the (pointer, length) pair at 0, the bytes from 16.
    let len = u32::try_from(snapshot.len()).context("snapshot too large")?;
    let pages = (16 + snapshot.len()).div_ceil(65_536).max(1);
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") {pages})
    (data (i32.const 0) "{header}")
    (data (i32.const 16) "{data}")
    (func (export "snapshot") (result i32) (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $snapshot (result (list u8))
    (canon lift (core func $i "snapshot") (memory (core memory $i "memory"))))
  (instance $embedded (export "snapshot" (func $snapshot)))
  (export "portcullis:bundle/embedded@{PACKAGE_VERSION}" (instance $embedded)))"#,
        header = wat_pair(16, len),
        data = wat_bytes(snapshot),
    );
    wat::parse_str(&text).context("assemble the embedded-configuration component")
}

/// A component for plugin `index`: exports `portcullis:plugin/config` (the plugin's
/// configuration JSON) and `portcullis:bundle/slot` (its index and visible headers).
pub fn slot_component(
    index: u32,
    config_json: &str,
    headers: &[String],
) -> anyhow::Result<Vec<u8>> {
    // Memory: (ptr,len) of the JSON at 0, (ptr,len) of the header array at 8, then the
    // JSON, the header names, and the array of (ptr,len) pairs (4-aligned).
    let mut data: Vec<u8> = Vec::new();
    let base = 16u32;
    data.extend_from_slice(config_json.as_bytes());
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for h in headers {
        let ptr = base + u32::try_from(data.len()).context("plugin data too large")?;
        data.extend_from_slice(h.as_bytes());
        pairs.push((ptr, u32::try_from(h.len()).context("header name too long")?));
    }
    while !data.len().is_multiple_of(4) {
        data.push(0);
    }
    let array = base + u32::try_from(data.len()).context("plugin data too large")?;
    for (ptr, len) in &pairs {
        data.extend_from_slice(&ptr.to_le_bytes());
        data.extend_from_slice(&len.to_le_bytes());
    }
    let json_len = u32::try_from(config_json.len()).context("plugin config too large")?;
    let header = [
        base.to_le_bytes(),
        json_len.to_le_bytes(),
        array.to_le_bytes(),
        u32::try_from(pairs.len()).unwrap_or(0).to_le_bytes(),
    ]
    .concat();
    let pages = (16 + data.len()).div_ceil(65_536).max(1);
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") {pages})
    (data (i32.const 0) "{header}")
    (data (i32.const 16) "{data}")
    (func (export "get") (result i32) (i32.const 0))
    (func (export "headers") (result i32) (i32.const 8))
    (func (export "index") (result i32) (i32.const {index})))
  (core instance $i (instantiate $m))
  (func $get (result string)
    (canon lift (core func $i "get") (memory (core memory $i "memory"))))
  (func $headers (result (list string))
    (canon lift (core func $i "headers") (memory (core memory $i "memory"))))
  (func $index (result u32) (canon lift (core func $i "index")))
  (instance $config (export "get" (func $get)))
  (instance $slot (export "index" (func $index)) (export "headers" (func $headers)))
  (export "portcullis:plugin/config@{PLUGIN_VERSION}" (instance $config))
  (export "portcullis:bundle/slot@{PACKAGE_VERSION}" (instance $slot)))"#,
        header = wat_bytes(&header),
        data = wat_bytes(&data),
    );
    wat::parse_str(&text).with_context(|| format!("assemble the slot component of plugin {index}"))
}

/// Composes `gateway_bytes` (the gateway component) with the providers, `config` and the
/// configuration's plugins (`plugins[i]` is the component of `config.plugins[i]`), chained
/// in configuration order.
pub async fn compose(
    gateway_bytes: &[u8],
    config: &Config,
    plugins: &[Vec<u8>],
) -> anyhow::Result<Bundle> {
    compose_with(gateway_bytes, PROVIDERS, config, plugins, PreInit::Yes).await
}

/// Whether a bundle's components are pre-initialized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreInit {
    /// At bundle time (the default): instances start with the configuration restored.
    Yes,
    /// Not (`portcullis bundle --no-pre-init`): every instance restores the configuration
    /// from the embedded snapshot on its first request.
    No,
}

/// As [`compose`], with these providers ([`PROVIDERS`] or [`PROVIDERS_WIDE`]). With
/// [`PreInit::Yes`] the gateway component and the providers are pre-initialized with the
/// configuration ([`preinit`](super::preinit)): the bundle's instances start with it
/// restored.
pub async fn compose_with(
    gateway_bytes: &[u8],
    providers_bytes: &[u8],
    config: &Config,
    plugins: &[Vec<u8>],
    pre_init: PreInit,
) -> anyhow::Result<Bundle> {
    if plugins.len() != config.plugins.len() {
        bail!(
            "{} plugin component(s) for {} configured plugin(s)",
            plugins.len(),
            config.plugins.len()
        );
    }
    let snapshot = config.to_snapshot();
    let (gateway_bytes, providers_bytes, embedded) = match pre_init {
        // Both components restore the configuration once, here: the bundle's embedded
        // snapshot stays empty (an instance that tried to restore it again would fail,
        // never run on a stale or partial configuration).
        PreInit::Yes => (
            preinit::pre_initialize(
                gateway_bytes,
                &snapshot,
                &format!("portcullis:gateway/config@{PACKAGE_VERSION}"),
            )
            .await?,
            preinit::pre_initialize(
                providers_bytes,
                &snapshot,
                &format!("portcullis:bundle/embedded@{PACKAGE_VERSION}"),
            )
            .await?,
            embedded_component(&[])?,
        ),
        PreInit::No => (
            gateway_bytes.to_vec(),
            providers_bytes.to_vec(),
            embedded_component(&snapshot)?,
        ),
    };
    let (gateway_bytes, providers_bytes) = (&gateway_bytes[..], &providers_bytes[..]);
    let mut graph = CompositionGraph::new();
    let register = |graph: &mut CompositionGraph, name: &str, bytes: &[u8]| {
        let pkg = Package::from_bytes(name, None, bytes.to_vec(), graph.types_mut())
            .with_context(|| format!("read the {name} component"))?;
        graph
            .register_package(pkg)
            .with_context(|| format!("register the {name} component"))
    };
    let embedded = register(&mut graph, "portcullis:embedded", &embedded)?;
    let providers = register(&mut graph, "portcullis:providers", providers_bytes)?;
    let gateway = register(&mut graph, "portcullis:gateway-component", gateway_bytes)?;

    let embedded = graph.instantiate(embedded);
    let providers = graph.instantiate(providers);
    let gateway = graph.instantiate(gateway);
    let name = |service: &str| format!("portcullis:gateway/{service}@{PACKAGE_VERSION}");
    let bundle_name = |interface: &str| format!("portcullis:bundle/{interface}@{PACKAGE_VERSION}");
    let plugin_name = |interface: &str| format!("portcullis:plugin/{interface}@{PLUGIN_VERSION}");
    let snapshot_export = graph
        .alias_instance_export(embedded, &bundle_name("embedded"))
        .context("the embedded component's export")?;
    graph
        .set_instantiation_argument(providers, &bundle_name("embedded"), snapshot_export)
        .context("plug the configuration into the providers")?;
    for service in SERVICES.iter().filter(|s| **s != "risk") {
        let export = graph
            .alias_instance_export(providers, &name(service))
            .with_context(|| format!("the providers' {service} export"))?;
        graph
            .set_instantiation_argument(gateway, &name(service), export)
            .with_context(|| format!("plug {service} into the gateway"))?;
    }
    // The risk chain: the gateway calls the first plugin's link, each link the next, the
    // last link the providers (which answer for plugins not in the bundle).
    let mut risk = graph
        .alias_instance_export(providers, &name("risk"))
        .context("the providers' risk export")?;
    if !plugins.is_empty() {
        let link = register(&mut graph, "portcullis:plugin-link", PLUGIN_LINK)?;
        for (index, (cfg, wasm)) in config.plugins.iter().zip(plugins).enumerate().rev() {
            let slot = slot_component(
                u32::try_from(index).context("too many plugins")?,
                &cfg.config_json,
                &cfg.headers,
            )?;
            let slot = register(&mut graph, &format!("portcullis:slot-{index}"), &slot)?;
            let slot = graph.instantiate(slot);
            let package = register(&mut graph, &format!("plugin:{}", cfg.name), wasm)?;
            // A plugin imports only the interfaces it uses (one without state has no
            // `state` import): plug in just those.
            let imports = &graph.types()[graph[package].ty()].imports;
            let uses: Vec<&str> = ["config", "state", "log", "clock"]
                .into_iter()
                .filter(|service| imports.contains_key(&plugin_name(service)))
                .collect();
            let plugin = graph.instantiate(package);
            if uses.contains(&"config") {
                let config_export = graph
                    .alias_instance_export(slot, &plugin_name("config"))
                    .context("the slot's config export")?;
                graph
                    .set_instantiation_argument(plugin, &plugin_name("config"), config_export)
                    .with_context(|| format!("plugin `{}`: config", cfg.name))?;
            }
            for service in uses.into_iter().filter(|s| *s != "config") {
                let export = graph
                    .alias_instance_export(providers, &plugin_name(service))
                    .with_context(|| format!("the providers' plugin {service} export"))?;
                graph
                    .set_instantiation_argument(plugin, &plugin_name(service), export)
                    .with_context(|| format!("plugin `{}`: {service}", cfg.name))?;
            }
            let linked = graph.instantiate(link);
            let slot_export = graph
                .alias_instance_export(slot, &bundle_name("slot"))
                .context("the slot's slot export")?;
            graph
                .set_instantiation_argument(linked, &bundle_name("slot"), slot_export)
                .context("plug the slot into the link")?;
            let plugin_risk = graph
                .alias_instance_export(plugin, &plugin_name("risk"))
                .with_context(|| {
                    format!("plugin `{}` exports no portcullis:plugin/risk", cfg.name)
                })?;
            graph
                .set_instantiation_argument(linked, &plugin_name("risk"), plugin_risk)
                .with_context(|| format!("plugin `{}`: its risk export", cfg.name))?;
            graph
                .set_instantiation_argument(linked, &name("risk"), risk)
                .context("chain the link")?;
            risk = graph
                .alias_instance_export(linked, &name("risk"))
                .context("the link's risk export")?;
        }
    }
    graph
        .set_instantiation_argument(gateway, &name("risk"), risk)
        .context("plug the risk chain into the gateway")?;
    let handler_name = component_names(gateway_bytes, Section::Exports)?
        .into_iter()
        .find(|n| n.starts_with("wasi:http/incoming-handler@"))
        .context("the gateway component exports no wasi:http/incoming-handler")?;
    let handler = graph
        .alias_instance_export(gateway, &handler_name)
        .context("the gateway's wasi:http/incoming-handler export")?;
    graph
        .export(handler, &handler_name)
        .context("export the handler")?;
    let wasm = graph
        .encode(EncodeOptions::default())
        .context("encode the bundle")?;
    let imports = component_names(&wasm, Section::Imports)?;
    if let Some(bad) = imports.iter().find(|i| !i.starts_with("wasi:")) {
        bail!("the bundle still imports {bad}: only wasi:* may remain");
    }
    Ok(Bundle { wasm, imports })
}

/// Which top-level names [`component_names`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// The component's imports.
    Imports,
    /// The component's exports.
    Exports,
}

/// The top-level import or export names of a component.
pub fn component_names(wasm: &[u8], section: Section) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    // Every proposal the parser knows: components for WASI 0.3 (Spin) use the async ABI.
    let mut parser = wasmparser::Parser::new(0);
    parser.set_features(wasmparser::WasmFeatures::all());
    for payload in parser.parse_all(wasm) {
        match payload.context("parse the component")? {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(reader)
                if depth == 0 && section == Section::Imports =>
            {
                for import in reader {
                    names.push(import.context("an import")?.name.name.to_owned());
                }
            }
            wasmparser::Payload::ComponentExportSection(reader)
                if depth == 0 && section == Section::Exports =>
            {
                for export in reader {
                    names.push(export.context("an export")?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}
