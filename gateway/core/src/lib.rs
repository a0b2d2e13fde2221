//! # portcullis-core
//!
//! The sans-IO decision engine of Portcullis, an authentication gateway that runs at CDN
//! edge points of presence. Like rustls, this crate never performs I/O: an adapter (the
//! wasi:http component, the native host, an edge worker, a test) feeds it a request's parts,
//! the current time and the state it may read (key sets, backend health), and carries out the
//! [`Decision`] it returns — forward to a backend with these headers, or answer with this
//! status and reason.
//!
//! Every request passes through the phases that [`pipeline`] lists, in this order, each
//! in one module of [`phase`]: `normalize` → `endpoints` → `route` → `limits` →
//! `authenticate` → `delegate` → `limits` → `risk` → `authorize` → `residency` → `forward`
//! → `record`. A phase's name is the same in the code, the docs and the audit record
//! (`phase`, on every decision but `forward`).
//!
//! The modules form layers; a module imports only from its own layer or those below
//! (`tests/tests/layers.rs` fails otherwise):
//!
//! | layer | modules |
//! |---|---|
//! | utilities | `b64`, `time`, `duration`, `fnv`, `canonical`, `cookies`, `reason` |
//! | JOSE | `crypto`, `jwk`, `jws` |
//! | model | `model` (ids, request, reserved paths, risk verdict), the configuration model, `audit`, `decision` |
//! | configuration | `config` (loading and validation) |
//! | keys | `keyset`, `claims`, `authenticate` |
//! | ports | `ports` (state, client, and the decision's resumable exchange with them) |
//! | features | `client`, `forwarding`, `normalize`, `policy`, `residency`, `limits`, `bot`, `risk`, `challenge`, `session`, `login`, `delegation`, `dpop`, `gateway_token`, `trace` |
//! | phases | `phase` |
//! | pipeline | `pipeline` |
//!
//! Configuration is loaded strictly by [`config::load`]; key sets follow the state machine in
//! [`keyset`]; signature checks go through the [`SignatureVerifier`] trait so a host can
//! supply native crypto ([`PortableVerifier`] is the pure-Rust default).
//!
//! [`session`] holds the pure pieces of browser sessions for the OIDC login flow (sealed,
//! chunked cookies, freshness, login attempts with PKCE); [`login`] runs the flow.
#![forbid(unsafe_code)]

pub mod audit;
pub mod authenticate;
pub mod b64;
pub mod bot;
pub mod canonical;
pub mod challenge;
pub mod claims;
pub mod client;
pub mod config;
pub mod cookies;
pub mod crypto;
pub mod decision;
pub mod delegation;
pub mod dpop;
pub mod duration;
pub mod fnv;
pub mod forwarding;
pub mod gateway_token;
pub mod jwk;
pub mod jws;
pub mod keyset;
pub mod limits;
pub mod login;
pub mod model;
pub mod normalize;
pub mod phase;
pub mod pipeline;
pub mod policy;
pub mod ports;
pub mod reason;
pub mod residency;
pub mod risk;
pub mod session;
pub mod time;
pub mod trace;

pub use audit::{AuditRecord, PhaseTime};
pub use authenticate::{AuthFailure, Authenticator};
pub use claims::VerifiedIdentity;
pub use config::{Config, ConfigError, ConfigFiles, MapFiles};
pub use crypto::{Algorithm, KeyMaterial, PortableVerifier, SignatureCheck, SignatureVerifier};
pub use decision::{Decision, Forward, Outcome, Response};
pub use keyset::{FetchKind, FetchRequest, FetchResponse, KeyStore};
pub use model::{
    AllHealthy, BackendHealth, BackendId, Entropy, IssuerId, MonotonicClock, NoClock, NoEntropy,
    RequestParts,
};
pub use phase::Adapters;
pub use pipeline::{Engine, Gateway, Progress};
pub use ports::{
    Answer, CallAnswer, CallOp, CallResult, Client, Need, NoClient, NoState, State, StateAnswer,
    StateOp, StateResult, Suspended,
};
pub use reason::Reason;
pub use time::Timestamp;
