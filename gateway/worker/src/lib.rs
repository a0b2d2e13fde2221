//! # portcullis-worker
//!
//! The Portcullis gateway as a Cloudflare Worker: the same [`portcullis_core`] pipeline as
//! every other runtime, adapted to the Workers platform (`worker` crate, wasm-bindgen,
//! `wasm32-unknown-unknown`):
//!
//! - **configuration**: a snapshot made and validated by `portcullis snapshot`, in the
//!   `PORTCULLIS_SNAPSHOT` secret (or variable), restored once per isolate;
//! - **key sets**: fetched with `fetch()` from discovery / `jwks_uri` by the core's key-set
//!   state machine (freshness from `Cache-Control`, back-off, max staleness, one
//!   rate-limited refetch for an unknown `kid`), kept in the isolate;
//! - **signatures**: checked with the runtime's WebCrypto (`crypto.subtle.verify`, native
//!   code): the decision waits for the check and is resumed with its verdict
//!   ([`verifier`]); anything else falls back to pure Rust;
//! - **risk plugins**: the same component files as every runtime, transpiled by
//!   `portcullis worker-plugins` and deployed beside the worker, each in its own instances
//!   ([`components`]); or plugin crates linked in behind cargo features ([`plugins`]);
//! - **shared state**: Durable Objects, one per state key ([`durable`]), bound as
//!   `PORTCULLIS_STATE`: rate limits, DPoP and challenge one-time values, sessions and login
//!   state shared by every isolate. Without the binding, rate limits answer as `[state]
//!   on_unavailable` says and what needs a one-time check is refused (fail closed);
//! - **outbound calls**: the provider's token endpoint (browser sign-in, refresh) and site
//!   verification with the Fetch API;
//! - **client address**: `CF-Connecting-IP` when the request carries Cloudflare's `cf` object
//!   (on Cloudflare the edge overwrites that header), with the object's `country` and `asn`
//!   for risk checks and plugins; unknown otherwise;
//! - **audit**: one JSON line per decision on the console (Workers Logs / Logpush).
//!
//! Build: `worker-build --release` in this directory (see "Cloudflare Workers" in
//! docs/deploy.md); `edge-config/wrangler.toml` deploys it.
#![deny(unsafe_code)]

pub mod components;
pub mod durable;
pub mod headers;
mod plugin_host;
pub mod plugins;
pub mod verifier;

#[cfg(target_arch = "wasm32")]
mod calls;
#[cfg(target_arch = "wasm32")]
mod objects;
#[cfg(target_arch = "wasm32")]
mod runtime;
#[cfg(target_arch = "wasm32")]
mod webcrypto;
