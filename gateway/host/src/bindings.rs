//! The host side of the `portcullis:gateway/gateway-component` world (wasmtime bindgen): the
//! host services it implements and the `decide` export it calls.
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../../wit/gateway",
    world: "gateway-component",
    additional_derives: [serde::Serialize],
    imports: {
        "portcullis:gateway/keys.authenticate": async,
        "portcullis:gateway/risk.assess": async,
        "portcullis:gateway/risk.observe": async,
        "portcullis:gateway/state.get": async,
        "portcullis:gateway/state.set": async,
        "portcullis:gateway/state.increment": async,
        "portcullis:gateway/state.first-use": async,
        "portcullis:gateway/state.rate-limit": async,
        "portcullis:gateway/client.verify-site-token": async,
        "portcullis:gateway/client.token-request": async,
        "portcullis:gateway/state.delete": async,
    },
    exports: { default: async },
});

/// The audit record the gateway component sends.
pub use portcullis::gateway::audit::DecisionRecord;
