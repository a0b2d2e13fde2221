//! The `portcullis:bundle/gateway` world (wit-bindgen): the configuration fixed at bundle
//! time and the risk chain it imports, the initializer it exports. (The shared state's
//! `wasi:keyvalue` imports come with `portcullis-kv`, `wasi:http` with `wasip2`.)
#![allow(missing_docs, unsafe_code, clippy::all)]

wit_bindgen::generate!({
    path: "../../wit/bundle",
    world: "gateway",
    generate_all,
});
