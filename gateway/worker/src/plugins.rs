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
use std::collections::HashMap;
use std::rc::Rc;

use portcullis_core::Config;
use portcullis_core::config::PluginId;
use portcullis_core::risk::{Action, Assessment, PluginAnswer, RiskAssessor, RiskContext};
use portcullis_plugin::{Context, Host, Identity, Level, Outcome, RiskPlugin};

/// A plugin the worker can run (a linked crate or a deployed component), type-erased.
pub trait Linked {
    /// Assesses a request; `Err` when the call failed (a trap, a malformed answer).
    fn assess(
        &self,
        ctx: &Context,
        host: &mut dyn Host,
    ) -> Result<portcullis_plugin::Assessment, String>;
    /// Learns how a request ended.
    fn observe(&self, ctx: &Context, outcome: Outcome, host: &mut dyn Host);
}

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

/// Plugin state in the isolate's memory: per plugin namespace, bounded, with expiry.
#[derive(Debug, Default)]
pub struct MemoryState {
    entries: HashMap<String, (Vec<u8>, u64)>,
}

/// At most this many entries per isolate. Expired ones make room; live ones are never
/// evicted (a counter or marker a plugin relies on would vanish): when the state is full of
/// live entries the write is refused and the plugin's call fails (its `on_error` decides),
/// as a full or unreachable state fails plugin calls in the host.
const MAX_ENTRIES: usize = 100_000;

impl MemoryState {
    fn get(&self, key: &str, now_ms: u64) -> Option<Vec<u8>> {
        self.entries
            .get(key)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(v, _)| v.clone())
    }

    /// Stores `value` until `exp`; `Err` when a new key finds the state full of live entries.
    fn set(&mut self, key: String, value: Vec<u8>, exp: u64, now_ms: u64) -> Result<(), StateFull> {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, e)| *e > now_ms);
            if self.entries.len() >= MAX_ENTRIES {
                return Err(StateFull);
            }
        }
        self.entries.insert(key, (value, exp));
        Ok(())
    }
}

/// The isolate state is full of live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StateFull;

/// Why a call that had a write refused failed.
pub(crate) const STATE_FULL: &str = "the isolate's plugin state is full of live entries";

/// A plugin's view of the isolate state (keys prefixed with its namespace).
pub(crate) struct PluginHost<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) state: &'a RefCell<MemoryState>,
    pub(crate) now_ms: u64,
    /// A write was refused during this call: the call counts as failed.
    pub(crate) full: bool,
}

impl PluginHost<'_> {
    fn key(&self, key: &str) -> String {
        format!("plugin/{}/{key}", self.namespace)
    }
}

impl Host for PluginHost<'_> {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.state.borrow().get(&self.key(key), self.now_ms)
    }
    fn set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        let k = self.key(key);
        let stored = self.state.borrow_mut().set(
            k,
            value.to_vec(),
            self.now_ms.saturating_add(ttl_ms),
            self.now_ms,
        );
        self.full |= stored.is_err();
    }
    fn increment(&mut self, key: &str, delta: i64, ttl_ms: u64) -> i64 {
        let k = self.key(key);
        let mut state = self.state.borrow_mut();
        let (current, exp) = match state.entries.get(&k).filter(|(_, e)| *e > self.now_ms) {
            Some((v, e)) => (
                <[u8; 8]>::try_from(v.as_slice()).map_or(0, i64::from_be_bytes),
                *e,
            ),
            None => (0, self.now_ms.saturating_add(ttl_ms)),
        };
        let next = current.saturating_add(delta);
        let stored = state.set(k, next.to_be_bytes().to_vec(), exp, self.now_ms);
        self.full |= stored.is_err();
        next
    }
    fn delete(&mut self, key: &str) {
        let k = self.key(key);
        self.state.borrow_mut().entries.remove(&k);
    }
    fn log(&mut self, level: Level, message: &str) {
        let line = serde_json::json!({
            "plugin": self.namespace,
            "level": format!("{level:?}").to_ascii_lowercase(),
            "message": message,
        });
        log_line(&line.to_string());
    }
    fn now_ms(&mut self) -> u64 {
        self.now_ms
    }
}

/// Writes a log line (the console in a worker, stderr natively).
pub(crate) fn log_line(line: &str) {
    #[cfg(target_arch = "wasm32")]
    worker::console_log!("{line}");
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{line}");
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

/// The state and clock every plugin of an isolate shares.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Plugin state (namespaced per plugin).
    pub(crate) state: RefCell<MemoryState>,
    /// The current request's time, Unix milliseconds.
    pub(crate) now_ms: std::cell::Cell<u64>,
}

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
    portcullis_driver::risk_context!(ctx => Context, Identity;
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
    fn state_is_namespaced_expires_and_counts() {
        let state = RefCell::new(MemoryState::default());
        let mut a = PluginHost {
            namespace: "a",
            state: &state,
            now_ms: 1_000,
            full: false,
        };
        a.set("k", b"v", 100);
        assert_eq!(a.increment("n", 2, 1_000), 2);
        assert_eq!(a.increment("n", 3, 1_000), 5);
        let mut b = PluginHost {
            namespace: "b",
            state: &state,
            now_ms: 1_000,
            full: false,
        };
        assert_eq!(b.get("k"), None);
        let mut later = PluginHost {
            namespace: "a",
            state: &state,
            now_ms: 1_100,
            full: false,
        };
        assert_eq!(later.get("k"), None);
        assert_eq!(later.increment("n", 1, 1_000), 6);
    }

    #[test]
    fn a_full_state_refuses_new_keys_and_keeps_the_live_ones() {
        let state = RefCell::new(MemoryState::default());
        for i in 0..MAX_ENTRIES {
            assert!(
                state
                    .borrow_mut()
                    .set(format!("live/{i}"), vec![1], 10_000, 0)
                    .is_ok()
            );
        }
        let mut host = PluginHost {
            namespace: "p",
            state: &state,
            now_ms: 1,
            full: false,
        };
        host.set("new", b"v", 100);
        assert!(host.full, "the refused write fails the plugin's call");
        assert_eq!(host.get("new"), None);
        assert_eq!(state.borrow().get("live/0", 1).as_deref(), Some(&[1u8][..]));
        // Overwriting a key that exists is not a new entry; expired entries make room.
        assert!(
            state
                .borrow_mut()
                .set("live/0".into(), vec![2], 10_000, 1)
                .is_ok()
        );
        assert!(
            state
                .borrow_mut()
                .set("after".into(), vec![3], 10, 20_000)
                .is_ok()
        );
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
