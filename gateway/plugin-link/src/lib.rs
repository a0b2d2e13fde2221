//! One risk plugin linked into the gateway's `risk` chain inside an edge bundle.
//!
//! `portcullis bundle` instantiates this component once per bundled plugin. Each link
//! exports `portcullis:gateway/risk` and imports the next link's (the last one imports the
//! plugin services', which answer for plugins that are not bundled). For its own plugin index
//! (`portcullis:bundle/slot`), a link calls the plugin with the request context reduced to
//! the headers the plugin may see, and answers in the gateway's order.
//!
//! Inside a bundle nothing isolates a plugin: a trap in it traps the request (fail
//! closed), and there is no per-plugin deadline or memory cap beyond the runtime's own.
#![deny(unsafe_code)]

mod bindings {
    //! The `portcullis:bundle/plugin-link` world.
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../../wit/bundle",
        world: "plugin-link",
        generate_all,
    });
}

use std::cell::{OnceCell, RefCell};

use bindings::exports::portcullis::gateway::risk as exported;
use bindings::portcullis::bundle::slot;
use bindings::portcullis::gateway::risk as next;
use bindings::portcullis::plugin::risk as plugin;

thread_local! {
    /// The plugin's `init` answer, asked once per instance.
    static INIT: OnceCell<Result<(), String>> = const { OnceCell::new() };
    /// What the plugin saw, for `observe`.
    static SEEN: RefCell<Option<plugin::RequestContext>> = const { RefCell::new(None) };
}

/// The exported chain link.
struct Link;

/// The context the plugin sees: only the headers it asked for, and the client as the
/// gateway resolved it.
fn plugin_context(ctx: &exported::RequestContext) -> plugin::RequestContext {
    let wanted = slot::headers();
    portcullis_driver::risk_context!(ctx => plugin::RequestContext, plugin::Identity, plugin::Session, plugin::ClientSignals;
        headers: ctx
            .headers
            .iter()
            .filter(|(name, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(name)))
            .cloned()
            .collect(),
        client_ip: ctx.client_ip.clone(),
        country: ctx.country.clone(),
        asn: ctx.asn,
    )
}

/// The same context for the next link.
fn next_context(ctx: &exported::RequestContext) -> next::RequestContext {
    portcullis_driver::risk_context!(ctx => next::RequestContext, next::Identity, next::Session, next::ClientSignals;
        headers: ctx.headers.clone(),
        client_ip: ctx.client_ip.clone(),
        country: ctx.country.clone(),
        asn: ctx.asn,
    )
}

fn from_next(a: next::Assessment) -> exported::Assessment {
    portcullis_driver::risk_assessment!(a => exported::Assessment, next::Action => exported::Action)
}

/// This link's plugin on `ctx`.
fn mine(ctx: &exported::RequestContext) -> Result<exported::Assessment, String> {
    INIT.with(|i| i.get_or_init(plugin::init).clone())
        .map_err(|e| format!("plugin init failed: {e}"))?;
    let seen = plugin_context(ctx);
    let a = plugin::assess(&seen);
    SEEN.with(|s| *s.borrow_mut() = Some(seen));
    Ok(
        portcullis_driver::risk_assessment!(a => exported::Assessment, plugin::Action => exported::Action),
    )
}

impl exported::Guest for Link {
    fn assess(
        plugins: Vec<u32>,
        ctx: exported::RequestContext,
    ) -> Vec<Result<exported::Assessment, String>> {
        let me = slot::index();
        let rest: Vec<u32> = plugins.iter().copied().filter(|p| *p != me).collect();
        let mut down = if rest.is_empty() {
            Vec::new()
        } else {
            next::assess(&rest, &next_context(&ctx))
        }
        .into_iter();
        plugins
            .iter()
            .map(|p| {
                if *p == me {
                    mine(&ctx)
                } else {
                    down.next()
                        .map(|answer| answer.map(from_next))
                        .unwrap_or_else(|| Err("the plugin chain answered too few".into()))
                }
            })
            .collect()
    }

    fn observe(status: u16) {
        if let Some(seen) = SEEN.with(|s| s.borrow_mut().take()) {
            plugin::observe(&seen, plugin::Outcome { status });
        }
        next::observe(status);
    }
}

/// The component's exports (the generated glue needs `unsafe`). Only for wasm: the
/// export names (`portcullis:gateway/…`) are no valid native symbol names.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod export {
    use super::Link;
    crate::bindings::export!(Link with_types_in crate::bindings);
}
