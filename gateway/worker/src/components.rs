//! Risk-plugin components deployed beside the worker: the same `.wasm` files the native
//! host and the edge bundle load, transpiled for JavaScript hosts by
//! `portcullis worker-plugins` (jco's generator) and registered by the `main.js` it writes.
//!
//! The worker finds the registry in the isolate's global scope, matches each `[plugin.*]`
//! to the component of the same name, and starts it only when its SHA-256 is the one the
//! snapshot names (`portcullis snapshot` records it): a stale or swapped file stops the
//! worker at start-up. Each plugin runs in its own WebAssembly instances, managed by the
//! shared `portcullis-plugin-host.js` (fresh after a trap, dropped when over its memory
//! cap); its imports (state, log, configuration, clock) are answered here by a
//! [`ComponentHost`], over the same isolate state as linked crates.
//!
//! Requests and answers cross as JSON in jco's shapes for the plugin WIT (`camelCase`
//! fields, `null` for an absent option, enums as their WIT names).

use std::rc::Rc;

use portcullis_core::config::PluginConfig;
use portcullis_plugin::{Action, Assessment, Context};
use serde_json::{Value, json};

use crate::plugin_host::{Linked, Shared};

/// The global under which `portcullis-plugin-host.js` registers the deployed plugins.
pub const REGISTRY: &str = "__portcullis_plugins";

/// The plugin WIT's `request-context` for `ctx`, as jco's JavaScript shape in JSON.
pub fn context_json(ctx: &Context) -> String {
    let identity = ctx.identity.as_ref().map(|i| {
        json!({
            "subject": i.subject,
            "issuer": i.issuer,
            "scopes": i.scopes,
            "acr": i.acr,
            "amr": i.amr,
            "actor": i.actor,
            "sessionId": i.session_id,
            "clientId": i.client_id,
        })
    });
    json!({
        "requestId": ctx.request_id,
        "route": ctx.route,
        "method": ctx.method,
        "path": ctx.path,
        "query": ctx.query,
        "host": ctx.host,
        "headers": ctx.headers,
        "clientIp": ctx.client_ip.map(|ip| ip.to_string()),
        "country": ctx.country,
        "asn": ctx.asn,
        "identity": identity,
        "session": ctx.session.as_ref().map(|s| json!({
            "id": s.id,
            "providerSession": s.provider_session,
            "browser": s.browser,
            "ageSecs": s.age_secs,
            "signIn": s.sign_in.as_ref().map(|c| json!({
                "network": c.network,
                "asn": c.asn,
                "country": c.country,
                "agent": c.agent,
                "platform": c.platform,
            })),
        })),
    })
    .to_string()
}

/// A plugin's `assessment` from jco's JavaScript shape in JSON. A score above 100, an
/// unknown action or a missing field is a malformed answer (the call fails, as in the
/// native host).
pub fn assessment_from_json(text: &str) -> Result<Assessment, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("malformed assessment: {e}"))?;
    let score = v
        .get("score")
        .and_then(Value::as_u64)
        .ok_or("malformed assessment: no score")?;
    if score > 100 {
        return Err(format!("score {score} is outside 0..=100"));
    }
    let action = match v.get("action").and_then(Value::as_str) {
        Some("allow") => Action::Allow,
        Some("step-up") => Action::StepUp,
        Some("challenge") => Action::Challenge,
        Some("deny") => Action::Deny,
        other => return Err(format!("malformed assessment: action {other:?}")),
    };
    let labels = v
        .get("labels")
        .and_then(Value::as_array)
        .ok_or("malformed assessment: no labels")?
        .iter()
        .map(|l| l.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or("malformed assessment: a label is not a string")?;
    let reason = v
        .get("reason")
        .and_then(Value::as_str)
        .ok_or("malformed assessment: no reason")?
        .to_owned();
    Ok(Assessment {
        score: u8::try_from(score).unwrap_or(100),
        labels,
        action,
        reason,
    })
}

/// Why a deployed component cannot serve `plugin`, given the deployed file's SHA-256.
pub fn hash_mismatch(plugin: &PluginConfig, deployed_sha256: &str) -> Option<String> {
    match &plugin.component_sha256 {
        None => Some(format!(
            "a component `{}` is deployed, but the snapshot names no component hash: make the snapshot with `portcullis snapshot` of this release",
            plugin.name
        )),
        Some(configured) if !configured.eq_ignore_ascii_case(deployed_sha256) => Some(format!(
            "the deployed component `{}` (sha256 {deployed_sha256}) is not the configured file {} (sha256 {configured}): run `portcullis worker-plugins` and `portcullis snapshot` on the same configuration",
            plugin.name, plugin.path
        )),
        Some(_) => None,
    }
}

/// The deployed component serving `plugin`, started (its `init` ran), or why it cannot
/// serve; `None` when no component of that name is deployed.
pub(crate) fn deployed(
    plugin: &PluginConfig,
    shared: &Rc<Shared>,
) -> Option<Result<Box<dyn Linked>, String>> {
    #[cfg(target_arch = "wasm32")]
    {
        js::deployed(plugin, shared)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (plugin, shared);
        None
    }
}

/// The names of the deployed components.
pub fn names() -> Vec<String> {
    #[cfg(target_arch = "wasm32")]
    {
        js::names()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        Vec::new()
    }
}

#[cfg(target_arch = "wasm32")]
mod js {
    use std::cell::Cell;
    use std::rc::Rc;

    use portcullis_core::config::PluginConfig;
    use portcullis_plugin::{Assessment, Context, Host, Level, Outcome};
    use wasm_bindgen::JsCast;
    use wasm_bindgen::prelude::*;

    use super::{REGISTRY, assessment_from_json, context_json, hash_mismatch};
    use crate::plugin_host::{Linked, PluginHost, STATE_FULL, Shared, log_line};

    #[wasm_bindgen]
    extern "C" {
        /// A registry entry (`portcullis-plugins.js`).
        type Entry;
        #[wasm_bindgen(method, getter)]
        fn sha256(this: &Entry) -> String;
        #[wasm_bindgen(method)]
        fn start(this: &Entry, host: ComponentHost, memory_cap: f64) -> Instance;

        /// A plugin's instance manager (`portcullis-plugin-host.js`).
        type Instance;
        #[wasm_bindgen(method, catch)]
        fn init(this: &Instance) -> Result<(), JsValue>;
        #[wasm_bindgen(method, catch)]
        fn assess(this: &Instance, ctx: &str) -> Result<String, JsValue>;
        #[wasm_bindgen(method, catch)]
        fn observe(this: &Instance, ctx: &str, status: u16) -> Result<(), JsValue>;
    }

    fn registry() -> Option<JsValue> {
        js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str(REGISTRY))
            .ok()
            .filter(|r| r.is_object())
    }

    pub(super) fn names() -> Vec<String> {
        registry()
            .map(|r| {
                js_sys::Object::keys(r.unchecked_ref::<js_sys::Object>())
                    .iter()
                    .filter_map(|k| k.as_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn reason(e: JsValue) -> String {
        e.as_string().unwrap_or_else(|| format!("{e:?}"))
    }

    pub(super) fn deployed(
        plugin: &PluginConfig,
        shared: &Rc<Shared>,
    ) -> Option<Result<Box<dyn Linked>, String>> {
        let entry = js_sys::Reflect::get(&registry()?, &JsValue::from_str(&plugin.name))
            .ok()
            .filter(|e| e.is_object())?
            .unchecked_into::<Entry>();
        if let Some(why) = hash_mismatch(plugin, &entry.sha256()) {
            return Some(Err(why));
        }
        let full = Rc::new(Cell::new(false));
        let host = ComponentHost {
            namespace: plugin.name.clone(),
            config: plugin.config_json.clone(),
            shared: shared.clone(),
            full: full.clone(),
        };
        let instance = entry.start(host, plugin.memory_bytes as f64);
        if let Err(e) = instance.init() {
            return Some(Err(format!("init: {}", reason(e))));
        }
        Some(Ok(Box::new(ComponentPlugin {
            name: plugin.name.clone(),
            instance,
            full,
        })))
    }

    /// A deployed component, through its instance manager.
    struct ComponentPlugin {
        name: String,
        instance: Instance,
        /// A state write was refused during the current call.
        full: Rc<Cell<bool>>,
    }

    impl Linked for ComponentPlugin {
        fn assess(&self, ctx: &Context, _host: &mut dyn Host) -> Result<Assessment, String> {
            self.full.set(false);
            let answer = self.instance.assess(&context_json(ctx)).map_err(reason)?;
            if self.full.get() {
                return Err(STATE_FULL.to_owned());
            }
            assessment_from_json(&answer)
        }

        fn observe(&self, ctx: &Context, outcome: Outcome, _host: &mut dyn Host) {
            if let Err(e) = self.instance.observe(&context_json(ctx), outcome.status) {
                let line = serde_json::json!({
                    "plugin": self.name,
                    "level": "warn",
                    "message": format!("observe failed: {}", reason(e)),
                });
                log_line(&line.to_string());
            }
        }
    }

    /// What a deployed component's imports reach: its namespace of the isolate's plugin
    /// state, the log, its configuration and the request's clock.
    #[wasm_bindgen]
    pub struct ComponentHost {
        namespace: String,
        config: String,
        shared: Rc<Shared>,
        full: Rc<Cell<bool>>,
    }

    impl ComponentHost {
        fn with<R>(&self, f: impl FnOnce(&mut PluginHost<'_>) -> R) -> R {
            let mut host = PluginHost {
                namespace: &self.namespace,
                state: &self.shared.state,
                now_ms: self.shared.now_ms.get(),
                full: false,
            };
            let result = f(&mut host);
            if host.full {
                self.full.set(true);
            }
            result
        }
    }

    #[wasm_bindgen]
    impl ComponentHost {
        /// `state.get`.
        pub fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.with(|h| h.get(key))
        }
        /// `state.set`.
        pub fn set(&self, key: &str, value: &[u8], ttl_ms: u64) {
            self.with(|h| h.set(key, value, ttl_ms));
        }
        /// `state.increment`.
        pub fn increment(&self, key: &str, delta: i64, ttl_ms: u64) -> i64 {
            self.with(|h| h.increment(key, delta, ttl_ms))
        }
        /// `state.delete`.
        pub fn delete(&self, key: &str) {
            self.with(|h| h.delete(key));
        }
        /// `log.log` (`level`: the WIT enum's name).
        pub fn log(&self, level: &str, message: &str) {
            let level = match level {
                "debug" => Level::Debug,
                "warn" => Level::Warn,
                "error" => Level::Error,
                _ => Level::Info,
            };
            self.with(|h| h.log(level, message));
        }
        /// `config.get`.
        pub fn config(&self) -> String {
            self.config.clone()
        }
        /// `clock.now-ms`.
        #[wasm_bindgen(js_name = nowMs)]
        pub fn now_ms(&self) -> u64 {
            self.shared.now_ms.get()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portcullis_plugin::Identity;

    #[test]
    fn requests_cross_in_jcos_shape() {
        let mut ctx = Context::new("GET", "/orders");
        ctx.client_ip = Some("203.0.113.7".parse().unwrap());
        ctx.headers = vec![("user-agent".into(), "curl".into())];
        ctx.identity = Some(Identity {
            subject: "alice".into(),
            session_id: Some("s1".into()),
            ..Identity::default()
        });
        let v: Value = serde_json::from_str(&context_json(&ctx)).unwrap();
        assert_eq!(v["clientIp"], "203.0.113.7");
        assert_eq!(v["requestId"], "test");
        assert_eq!(v["headers"], json!([["user-agent", "curl"]]));
        assert_eq!(v["identity"]["sessionId"], "s1");
        assert_eq!(v["identity"]["clientId"], Value::Null);
        assert_eq!(v["asn"], Value::Null);
    }

    #[test]
    fn answers_are_checked_like_the_native_hosts() {
        let a = assessment_from_json(
            r#"{"score":70,"labels":["listed"],"action":"step-up","reason":"r"}"#,
        )
        .unwrap();
        assert_eq!((a.score, a.action), (70, Action::StepUp));
        assert_eq!(a.labels, vec!["listed".to_owned()]);
        assert!(
            assessment_from_json(r#"{"score":101,"labels":[],"action":"deny","reason":""}"#)
                .unwrap_err()
                .contains("outside 0..=100")
        );
        assert!(
            assessment_from_json(r#"{"score":1,"labels":[],"action":"maybe","reason":""}"#)
                .is_err()
        );
        assert!(assessment_from_json("null").is_err());
    }

    #[test]
    fn a_deployed_component_must_be_the_configured_file() {
        let mut p = PluginConfig {
            name: "blocklist".into(),
            path: "plugins/ip_reputation.wasm".into(),
            on_error: portcullis_core::config::FailPolicy::Deny,
            deadline: std::time::Duration::from_millis(5),
            memory_bytes: 1 << 20,
            fuel: None,
            weight: 1.0,
            headers: Vec::new(),
            config_json: "{}".into(),
            component_sha256: None,
        };
        assert!(
            hash_mismatch(&p, "ab")
                .unwrap()
                .contains("names no component hash")
        );
        p.component_sha256 = Some("AB".into());
        assert_eq!(hash_mismatch(&p, "ab"), None);
        p.component_sha256 = Some("cd".into());
        assert!(
            hash_mismatch(&p, "ab")
                .unwrap()
                .contains("not the configured file")
        );
    }
}
