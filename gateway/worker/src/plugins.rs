//! Risk plugins in the worker, from either of two sources:
//!
//! - **deployed components** ([`crate::components`]): the same `.wasm` files every other
//!   runtime loads, transpiled for JavaScript hosts by `portcullis worker-plugins` and
//!   deployed beside the worker; each runs in its own WebAssembly instances (a trap fails
//!   only that plugin's call, and its `on_error` decides). A `[plugin.*]` entry is served by
//!   the deployed component of the same name, and only when its SHA-256 is the one the
//!   snapshot names (otherwise the worker does not start).
//! - **linked crates**: plugin crates compiled into the worker behind cargo features and
//!   driven through the SDK's own [`RiskPlugin`] trait, for an entry no deployed component
//!   serves: served by the linked crate named by its `name` or by its `path`'s file stem
//!   (`-` and `_` alike). A linked plugin shares the worker's instance: a panic in it aborts
//!   the request (Workers answer 500).
//!
//! An entry neither serves answers with a failure, so its `on_error` policy decides (fail
//! closed under `deny`). Plugin state lives in the isolate's memory (per isolate, not
//! shared between isolates), namespaced per plugin.

use std::cell::RefCell;
use std::rc::Rc;

use portcullis_core::Config;
use portcullis_core::config::PluginId;
use portcullis_core::risk::{Action, Assessment, PluginAnswer, RiskAssessor, RiskContext};
use portcullis_plugin::{Context, Host, Identity, Outcome, RiskPlugin};

pub use crate::plugin_host::{Linked, MemoryState};
use crate::plugin_host::{PluginHost, STATE_FULL, Shared};

#[cfg_attr(
    not(any(
        feature = "impossible-travel",
        feature = "credential-stuffing",
        feature = "ip-reputation"
    )),
    allow(dead_code)
)]
struct Instance<P>(P);

impl<P: RiskPlugin> Linked for Instance<P> {
    fn assess(
        &self,
        ctx: &Context,
        host: &mut dyn Host,
    ) -> Result<portcullis_plugin::Assessment, String> {
        Ok(self.0.assess(ctx, host))
    }
    fn observe(&self, ctx: &Context, outcome: Outcome, host: &mut dyn Host) {
        self.0.observe(ctx, outcome, host);
    }
}

#[cfg_attr(
    not(any(
        feature = "impossible-travel",
        feature = "credential-stuffing",
        feature = "ip-reputation"
    )),
    allow(dead_code)
)]
fn build<P: RiskPlugin>(config_json: &str) -> Result<Box<dyn Linked>, String> {
    portcullis_plugin::parse_config::<P>(config_json)
        .map(|p| Box::new(Instance(p)) as Box<dyn Linked>)
}

/// Builds a linked plugin from its JSON configuration.
type Builder = fn(&str) -> Result<Box<dyn Linked>, String>;

/// The plugin crates linked into this build (by cargo feature): crate name and builder.
// Each push depends on a feature, so no `vec![…]` literal can say this.
#[allow(clippy::vec_init_then_push)]
fn linked_crates() -> Vec<(&'static str, Builder)> {
    #[allow(unused_mut)]
    let mut crates: Vec<(&'static str, Builder)> = Vec::new();
    #[cfg(feature = "impossible-travel")]
    crates.push((
        "impossible-travel",
        build::<impossible_travel::ImpossibleTravel>,
    ));
    #[cfg(feature = "credential-stuffing")]
    crates.push((
        "credential-stuffing",
        build::<credential_stuffing::CredentialStuffing>,
    ));
    #[cfg(feature = "ip-reputation")]
    crates.push(("ip-reputation", build::<ip_reputation::IpReputation>));
    crates
}

/// The plugin crates linked into this build, by crate name.
pub fn available() -> Vec<&'static str> {
    linked_crates().into_iter().map(|(name, _)| name).collect()
}

/// Builds the linked plugin called `crate_name` with its configuration; `None` when no
/// such crate is linked into this build.
pub fn link(crate_name: &str, config_json: &str) -> Option<Result<Box<dyn Linked>, String>> {
    linked_crates()
        .into_iter()
        .find(|(name, _)| *name == crate_name)
        .map(|(_, build)| build(config_json))
}

/// The linked crate that serves a `[plugin.*]` entry: by name, else by the path's stem.
pub fn crate_for(name: &str, path: &str) -> Option<&'static str> {
    let norm = |s: &str| s.replace('_', "-").to_ascii_lowercase();
    let stem = path
        .rsplit('/')
        .next()
        .unwrap_or(path)
        .trim_end_matches(".wasm");
    let wanted = [norm(name), norm(stem)];
    available()
        .into_iter()
        .find(|c| wanted.iter().any(|w| w == c))
}

/// Why a configured plugin has no instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// No deployed component and no linked crate serves it: it answers with failures, its
    /// `on_error` decides.
    NotLinked(String),
    /// It refused its configuration, or its deployed component is not the configured file
    /// or does not start: the gateway must not start.
    Refused(String),
}

/// One configured plugin: its name (state namespace), the headers it sees, and what
/// serves it or why nothing does.
type Entry = (String, Vec<String>, Result<Box<dyn Linked>, Unusable>);

/// The configuration's plugins, each served by a deployed component, a linked crate, or
/// failing.
pub struct WorkerPlugins {
    plugins: Vec<Entry>,
    shared: Rc<Shared>,
    assessed: RefCell<Vec<(usize, Context)>>,
}

impl WorkerPlugins {
    /// Loads every `[plugin.*]` of `config`, in order: the deployed component of that name
    /// when there is one, else the linked crate.
    pub fn new(config: &Config) -> Self {
        let shared = Rc::new(Shared::default());
        let plugins = config
            .plugins
            .iter()
            .map(|p| {
                let deployed = crate::components::deployed(p, &shared);
                let served = match deployed.or_else(|| {
                    crate_for(&p.name, &p.path).and_then(|c| link(c, &p.config_json))
                }) {
                    Some(built) => built.map_err(Unusable::Refused),
                    None => Err(Unusable::NotLinked(format!(
                        "no component for `{}` is deployed with this worker (`portcullis worker-plugins`; deployed: {:?}) and no plugin crate for it is linked in (linked: {:?})",
                        p.name,
                        crate::components::names(),
                        available()
                    ))),
                };
                (p.name.clone(), p.headers.clone(), served)
            })
            .collect();
        Self {
            plugins,
            shared,
            assessed: RefCell::new(Vec::new()),
        }
    }

    /// The configured plugins without a linked instance, by name, and why.
    pub fn unusable(&self) -> Vec<(&str, &Unusable)> {
        self.plugins
            .iter()
            .filter_map(|(n, _, p)| p.as_ref().err().map(|e| (n.as_str(), e)))
            .collect()
    }

    /// Sets the clock for the next request.
    pub fn set_now_ms(&self, now_ms: u64) {
        self.shared.now_ms.set(now_ms);
    }

    /// Tells the plugins that assessed the last request how it ended.
    pub fn observe(&self, status: u16) {
        let assessed = std::mem::take(&mut *self.assessed.borrow_mut());
        for (index, ctx) in assessed {
            if let Some((name, _, Ok(plugin))) = self.plugins.get(index) {
                let mut host = PluginHost {
                    namespace: name,
                    state: &self.shared.state,
                    now_ms: self.shared.now_ms.get(),
                    full: false,
                };
                plugin.observe(&ctx, Outcome { status }, &mut host);
            }
        }
    }
}

/// The SDK's view of a request, with only the headers this plugin asked for.
pub fn sdk_context(ctx: &RiskContext, wanted: &[String]) -> Context {
    portcullis_driver::risk_context!(ctx => Context, Identity, portcullis_plugin::Session, portcullis_plugin::ClientSignals;
        headers: ctx
            .headers
            .iter()
            .filter(|(n, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(n)))
            .cloned()
            .collect(),
        client_ip: ctx.client.ip,
        country: ctx.client.country.clone(),
        asn: ctx.client.asn,
    )
}

/// A plugin's assessment in the core's terms (a score above 100 counts as 100).
fn core_assessment(mut a: portcullis_plugin::Assessment) -> Assessment {
    a.score = a.score.min(100);
    portcullis_driver::risk_assessment!(a => Assessment, portcullis_plugin::Action => Action)
}

impl RiskAssessor for WorkerPlugins {
    fn now(&self, plugins: &[PluginId], ctx: &RiskContext) -> Option<Vec<PluginAnswer>> {
        Some(self.run(plugins, ctx))
    }
}

impl WorkerPlugins {
    /// Runs `plugins` in order on `ctx` (synchronous: the answer is there at once).
    fn run(&self, plugins: &[PluginId], ctx: &RiskContext) -> Vec<PluginAnswer> {
        plugins
            .iter()
            .map(|id| {
                let Some((name, headers, linked)) = self.plugins.get(id.0) else {
                    return Err(format!("no plugin #{}", id.0));
                };
                let plugin = linked.as_ref().map_err(|e| match e {
                    Unusable::NotLinked(why) | Unusable::Refused(why) => why.clone(),
                })?;
                let sdk = sdk_context(ctx, headers);
                let mut host = PluginHost {
                    namespace: name,
                    state: &self.shared.state,
                    now_ms: self.shared.now_ms.get(),
                    full: false,
                };
                let answer = plugin.assess(&sdk, &mut host);
                self.assessed.borrow_mut().push((id.0, sdk));
                if host.full {
                    return Err(STATE_FULL.to_owned());
                }
                Ok(core_assessment(answer?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn entries_are_matched_by_name_or_path_stem() {
        if available().contains(&"ip-reputation") {
            assert_eq!(crate_for("ip_reputation", "x.wasm"), Some("ip-reputation"));
            assert_eq!(
                crate_for("blocklist", "plugins/ip_reputation.wasm"),
                Some("ip-reputation")
            );
        }
        assert_eq!(crate_for("nothing-like-it", "nothing.wasm"), None);
    }

    #[test]
    fn plugin_sees_only_its_headers() {
        let ctx = RiskContext {
            headers: vec![
                ("user-agent".into(), "x".into()),
                ("accept".into(), "y".into()),
            ],
            ..RiskContext::default()
        };
        let sdk = sdk_context(&ctx, &["user-agent".into()]);
        assert_eq!(sdk.headers, vec![("user-agent".to_owned(), "x".to_owned())]);
    }
}
