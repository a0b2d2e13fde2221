//! The `portcullis:bundle/providers` world (wit-bindgen): the gateway's host services the
//! providers export, and the standard `wasi:keyvalue` they import.
#![allow(missing_docs, unsafe_code, clippy::all)]

wit_bindgen::generate!({
    path: "../../wit/bundle",
    world: "providers",
    generate_all,
    additional_derives: [serde::Serialize],
    // Holds a resource handle (not serializable).
    additional_derives_ignore: ["cas-error"],
});
