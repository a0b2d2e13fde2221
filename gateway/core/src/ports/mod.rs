//! The ports layer: what the core asks of its adapter, cut by capability as the
//! `wit/gateway` interfaces are.
//!
//! | port | trait | what it answers |
//! |---|---|---|
//! | keys | [`crate::Authenticator`] | tokens verified with the issuers' key sets; the providers' endpoints |
//! | state | [`State`] | get, set, delete, one-time use and rate limits in the shared state |
//! | client | [`Client`] | outbound calls: a provider's token endpoint, a site-verification service |
//! | risk | [`RiskAssessor`] | risk plugins |
//! | health | [`crate::BackendHealth`] | which backends answer |
//!
//! The state, client and risk ports are the ones that may need to wait, and so is a
//! signature check the platform makes with its own asynchronous crypto (a verifier that
//! asks for one through [`crate::SignatureVerifier::platform_check`]: the Workers
//! runtime's WebCrypto). Their adapters answer
//! an operation at once when they can (memory, a host call) and otherwise say so; the
//! decision then stops and hands the adapter the operation it needs ([`Need`], inside a
//! [`Suspended`] decision). The adapter performs it however its platform does (awaiting
//! Redis, an HTTP client, a Durable Object) and resumes the decision with the [`Answer`],
//! as rustls asks its caller for bytes. No adapter blocks a thread for the core.
//!
//! Resuming replays the pure steps before the wait from a log ([`io`]): every state answer,
//! call answer and random byte the decision saw is given back in order, so nothing is
//! performed twice and no phase state has to be saved; a replay that asks for something
//! other than what the log holds fails closed.

pub mod client;
pub mod io;
pub mod risk;
pub mod state;

pub use client::{CallAnswer, CallOp, CallResult, Client, FormEndpoint, NoClient};
pub use io::{Answer, Io, Need, Suspended};
pub use risk::{Assessment, NoPlugins, PluginAnswer, RiskAssessor, RiskContext, RiskIdentity};
pub use state::{
    LimitCheck, LimitStatus, NO_SHARED_STATE, NoState, State, StateAnswer, StateOp, StateResult,
};
