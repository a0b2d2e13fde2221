//! The Portcullis native host: serves the gateway with wasmtime and hyper, implements the
//! `portcullis:gateway` host interfaces natively, and enforces the backend allow-list on
//! every outbound request.
//!
//! One folder per capability, each owning its slice of the shared state and its half of
//! the WIT contract (the `Host` implementation of its `portcullis:gateway` interface, in
//! its `wit` module), as Spin's factors do; `serve` composes them, `tools` are the CLI's
//! other commands. Imports run one way, down this table:
//!
//! | module | what it holds |
//! |---|---|
//! | [`tools`] | `demo`, `bundle`, `token verify --path` (offline), `plugin new/check` |
//! | [`serve`] | preparing the capabilities, the listeners, the native and component engines, pre-initializing gateway components, `serve-wasm` |
//! | [`risk`] | the risk-plugin runtime (sandboxed components) |
//! | [`state`] | shared state: in memory or in Redis; the replay policy |
//! | [`keys`] | key sets, native signature checks, the verified-token cache |
//! | [`audit`] | the audit sink and trace export |
//! | [`client`] | outbound calls: backends, token endpoints, site verification |
//! | [`health`] | passive backend health |
//! | [`config`] | loading and validating the configuration, and serving it to the component |
//! | [`metrics`], [`wasm`], [`bindings`] | leaves: the metrics registry, the wasmtime engine, the WIT bindings |
#![deny(unsafe_code)] // audited exceptions: loading components this host compiled itself (its cache, its compiling child), geteuid

pub mod audit;
pub mod bindings;
pub mod client;
pub mod config;
pub mod epoch;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod risk;
pub mod serve;
pub mod state;
pub mod tools;
pub mod wasm;

pub use config::{LoadedConfig, RecordingFiles, load_config_file, load_config_text};
pub use serve::{EngineKind, Prepared, ServeOptions, Shared, prepare, serve, shutdown_signal};
