//! # portcullis-spin
//!
//! The Portcullis gateway as a Spin application, built with `spin-sdk` 7 (WASI 0.3,
//! `#[http_service]`): the same [`portcullis_core`] pipeline as every other runtime.
//!
//! - **configuration**: the Spin variable `portcullis_snapshot` (a secret variable holding
//!   `portcullis snapshot` output), restored once per instance;
//! - **key sets**: fetched through Spin's outbound HTTP by the core's key-set state machine,
//!   and shared between instances through Spin key-value (the default store): an instance
//!   uses a document another one stored while it is still fresh by its own `Cache-Control`,
//!   so a new instance per request does not mean a key-set fetch per request;
//! - **signatures**: the pure-Rust verifier inside wasm;
//! - **state**: per instance, like the edge bundle: rate limits follow `[state]
//!   on_unavailable`, DPoP proofs are refused, browser login answers `provider_unavailable`
//!   (all fail closed); Spin key-value has no atomic operations to count with;
//! - **audit**: one JSON line per decision on stderr.
//!
//! `edge-config/spin.toml` deploys it. No runtime on the build machine serves Spin's own
//! imports, so the conformance suite runs the edge bundle under a plain wasi:http host in
//! its place (see "Spin" in docs/deploy.md).
#![deny(unsafe_code)]

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod app;
