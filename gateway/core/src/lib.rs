//! # portcullis-core
//!
//! The sans-IO decision engine of Portcullis, an authentication gateway that runs at CDN
//! edge points of presence. Like rustls, this crate never performs I/O: an adapter (the
//! wasi:http component, the native host, an edge worker, a test) feeds it a request's parts,
//! the current time and the state it may read (key sets, backend health), and carries out the
//! [`Decision`] it returns — forward to a backend with these headers, or answer with this
//! status and reason.
//!
//! Every request passes through fixed phases, each in one module:
//!
//! | phase | module | what it does |
//! |---|---|---|
//! | normalize | [`normalize`] | path checks, client-supplied identity headers marked for removal |
//! | authenticate | [`authenticate`], [`dpop`], [`delegation`] | bearer or DPoP token → [`VerifiedIdentity`] (JWS, key sets, claims); agents' `act` chains and effective scopes |
//! | rate limits | [`limits`] | GCRA per address, subject, client or route, checked in the adapter's shared state; 429 with `RateLimit` headers |
//! | assess risk | [`bot`], [`risk`], [`challenge`] | the route's built-in bot checks and plugins (run by the adapter) → combined score → allow / step-up / challenge / deny; proof-of-work challenge pages and clearance cookies |
//! | authorize | [`policy`] | route rules: scopes, claims, `acr`/`amr`/`auth_time` |
//! | route | [`residency`] | the user's home region → a healthy backend in that jurisdiction |
//! | forward | [`engine`], [`gateway_token`] | strip spoofable headers, inject verified identity and a gateway-signed token |
//! | record | [`audit`] | one [`AuditRecord`] per decision, subject pseudonymised |
//!
//! Configuration is loaded strictly by [`config::load`]; key sets follow the state machine in
//! [`keyset`]; signature checks go through the [`SignatureVerifier`] trait so a host can
//! supply native crypto ([`PortableVerifier`] is the pure-Rust default).
//!
//! [`session`] holds the pure pieces of browser sessions for the OIDC login flow (sealed,
//! chunked cookies, freshness, login attempts with PKCE); nothing in the engine uses it yet.
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
pub mod engine;
pub mod forwarding;
pub mod gateway_token;
pub mod jwk;
pub mod jws;
pub mod keyset;
pub mod limits;
pub mod login;
pub mod normalize;
pub mod policy;
pub mod reason;
pub mod residency;
pub mod risk;
pub mod session;
pub mod time;

pub use audit::AuditRecord;
pub use authenticate::{AuthFailure, Authenticator};
pub use claims::VerifiedIdentity;
pub use config::{Config, ConfigError, ConfigFiles, MapFiles};
pub use crypto::{Algorithm, KeyMaterial, PortableVerifier, SignatureVerifier};
pub use decision::{BackendId, Decision, Forward, Outcome, Response};
pub use engine::{Adapters, AllHealthy, BackendHealth, Engine, Gateway, RequestParts};
pub use keyset::{FetchKind, FetchRequest, FetchResponse, IssuerId, KeyStore};
pub use reason::Reason;
pub use time::Timestamp;
