//! # portcullis-core
//!
//! The sans-IO decision engine of Portcullis, an authentication gateway that runs at CDN
//! edge points of presence. Like rustls, this crate never performs I/O: an adapter (the
//! wasi:http component, the native host, an edge worker, a test) feeds it a request's parts,
//! the current time and the state it may read (key sets, backend health), and carries out the
//! [`Decision`] it returns — forward to a backend with these headers, or answer with this
//! status and reason.
//!
//! Every request passes through the phases that `pipeline.rs` lists, in this order, each
//! in one module of `phase/`: `normalize` → `endpoints` → `route` → `limits` →
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
//! `session.rs` holds the pure pieces of browser sessions for the OIDC login flow (sealed,
//! chunked cookies, freshness, login attempts with PKCE); [`login`] runs the flow.
//!
//! ## The API
//!
//! As rustls does, the crate keeps its implementation in private modules and hands an
//! adapter what it works with: the types at the root ([`Gateway`], [`Engine`],
//! [`Progress`], [`Adapters`], [`Decision`], [`Config`], [`AuditRecord`], [`Reason`], …)
//! and a few namespaces:
//!
//! | namespace | for |
//! |---|---|
//! | [`config`] | the configuration model and its strict loading |
//! | [`ports`] | what an adapter implements or performs: state, outbound calls, risk plugins, and the decision's resumable exchange with them |
//! | [`authenticate`], [`keyset`], [`claims`], [`crypto`], [`jwk`], [`jws`], [`b64`] | tokens: key sets, signature checks, verified identities |
//! | [`decision`], [`client`], [`trace`], [`limits`], [`login`], [`risk`] | what an adapter reads from a decision or passes into one |
//!
//! `internal` (hidden) lends this repository's tests, fuzz targets and benchmarks a few
//! private pieces; it is no API.
#![forbid(unsafe_code)]

// The API: the namespaces an adapter works with.
pub mod authenticate;
pub mod b64;
pub mod claims;
pub mod client;
pub mod client_auth;
pub mod client_signals;
pub mod config;
pub mod crypto;
pub mod decision;
pub mod geo;
pub mod jwk;
pub mod jws;
pub mod keyset;
pub mod limits;
pub mod login;
pub mod ports;
pub mod recent_uses;
pub mod risk;
pub mod trace;
pub mod verified;

// The implementation: reached through the re-exports below.
mod audit;
mod bot;
mod canonical;
mod challenge;
mod cookies;
mod delegation;
mod dpop;
mod duration;
mod fnv;
mod forms;
mod forward_auth;
mod forwarding;
pub mod gateway_token;
mod introspect;
mod model;
mod normalize;
mod phase;
mod pipeline;
mod policy;
mod reason;
mod residency;
mod session;
mod time;

/// Internals this repository's own tests, fuzz targets and benchmarks reach into (as
/// rustls's `internal`): not part of the API, and may change in any release.
#[doc(hidden)]
pub mod internal {
    pub use crate::audit::pseudonymize;
    pub use crate::fnv::fnv1a;

    /// Path canonicalisation.
    pub mod canonical {
        pub use crate::canonical::{PathOptions, canonical_path, decoded_path};
    }
    /// The bot challenge.
    pub mod challenge {
        pub use crate::challenge::{
            Binding, CHALLENGE_PATH, CLEARANCE_COOKIE, clearance, derive_key, solve,
        };
    }
    /// Cookie headers.
    pub mod cookies {
        pub use crate::cookies::{pairs, without};
    }
    /// Forwarding headers.
    pub mod forwarding {
        pub use crate::forwarding::{Hop, headers};
    }
    /// Route matching.
    pub mod policy {
        pub use crate::policy::match_route;
    }
    /// Sealed session cookies.
    pub mod session {
        pub use crate::session::{
            CookieAttrs, Freshness, PURPOSE_SESSION, Session, SessionKeys, chunks_present,
            decode_cookies, encode_cookies, open, seal,
        };
    }
}

pub use audit::{AuditRecord, PhaseTime};
pub use authenticate::{AuthFailure, Authenticator};
pub use claims::VerifiedIdentity;
pub use config::{Config, ConfigError, ConfigFiles, MapFiles};
pub use crypto::{Algorithm, KeyMaterial, PortableVerifier, SignatureCheck, SignatureVerifier};
pub use decision::{Decision, Forward, Outcome, Response};
pub use keyset::{FetchKind, FetchRequest, FetchResponse, KeyStore};
pub use model::{
    AllHealthy, BackendHealth, BackendId, ClaimPath, ClaimSegment, Entropy, IssuerId,
    MonotonicClock, NoClock, NoEntropy, PeerHints, RequestParts,
};
pub use phase::Adapters;
pub use pipeline::{Engine, Gateway, Progress};
pub use ports::{
    Answer, CallAnswer, CallOp, CallResult, Client, Need, NoClient, NoState, State, StateAnswer,
    StateOp, StateResult, Suspended,
};
pub use reason::Reason;
pub use time::Timestamp;

pub use canonical::Authority;
pub use challenge::{siteverify_body, siteverify_result};
pub use normalize::authority as request_authority;
pub use phase::NAMES as PHASE_NAMES;
