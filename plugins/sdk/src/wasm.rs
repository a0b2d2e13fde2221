//! The component glue: bindings of the `risk-plugin` world and the export adapter used by
//! [`export_plugin!`](crate::export_plugin). Not part of the API.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::sync::OnceLock;

use crate::{
    Action, Assessment, ClientSignals, Context, Host, Identity, Level, Outcome, RiskPlugin, Session,
};

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "risk-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_risk_plugin",
        default_bindings_module: "portcullis_plugin::wasm::bindings",
    });
}

use bindings::exports::portcullis::plugin::risk as wit;
use bindings::portcullis::plugin::{clock, config, log, state};

/// The host of a running component: the world's imports.
pub struct ComponentHost;

impl Host for ComponentHost {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        state::get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        state::set(key, value, ttl_ms);
    }
    fn increment(&mut self, key: &str, delta: i64, ttl_ms: u64) -> i64 {
        state::increment(key, delta, ttl_ms)
    }
    fn delete(&mut self, key: &str) {
        state::delete(key);
    }
    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }
    fn now_ms(&mut self) -> u64 {
        clock::now_ms()
    }
}

/// Adapts a [`RiskPlugin`] to the exported interface.
pub struct Export<P>(PhantomData<P>);

fn instance<P: RiskPlugin>() -> Result<&'static P, String> {
    // One plugin value per instance; a generic static is not possible, so the value is
    // stored type-erased and downcast.
    static PLUGIN: OnceLock<Result<Box<dyn std::any::Any + Send + Sync>, String>> = OnceLock::new();
    let slot = PLUGIN.get_or_init(|| {
        crate::parse_config::<P>(&config::get())
            .map(|p| Box::new(p) as Box<dyn std::any::Any + Send + Sync>)
    });
    match slot {
        Ok(b) => b
            .downcast_ref::<P>()
            .ok_or_else(|| "plugin type mismatch".to_owned()),
        Err(e) => Err(e.clone()),
    }
}

impl<P: RiskPlugin> wit::Guest for Export<P> {
    fn init() -> Result<(), String> {
        instance::<P>().map(|_| ())
    }

    fn assess(ctx: wit::RequestContext) -> wit::Assessment {
        let plugin = match instance::<P>() {
            Ok(p) => p,
            // An unusable configuration is a fault: trap, so the host applies `on_error`.
            #[allow(clippy::panic)]
            Err(e) => panic!("{e}"),
        };
        let a = plugin.assess(&context(ctx), &mut ComponentHost);
        assessment(a)
    }

    fn observe(ctx: wit::RequestContext, outcome: wit::Outcome) {
        if let Ok(p) = instance::<P>() {
            p.observe(
                &context(ctx),
                Outcome {
                    status: outcome.status,
                },
                &mut ComponentHost,
            );
        }
    }
}

fn context(c: wit::RequestContext) -> Context {
    Context {
        request_id: c.request_id,
        route: c.route,
        method: c.method,
        path: c.path,
        query: c.query,
        host: c.host,
        headers: c.headers,
        client_ip: c.client_ip.and_then(|ip| ip.parse().ok()),
        country: c.country,
        asn: c.asn,
        identity: c.identity.map(|i| Identity {
            subject: i.subject,
            issuer: i.issuer,
            scopes: i.scopes,
            acr: i.acr,
            amr: i.amr,
            actor: i.actor,
            session_id: i.session_id,
            client_id: i.client_id,
        }),
        session: c.session.map(|s| Session {
            id: s.id,
            provider_session: s.provider_session,
            browser: s.browser,
            age_secs: s.age_secs,
            sign_in: s.sign_in.map(|c| ClientSignals {
                network: c.network,
                asn: c.asn,
                country: c.country,
                agent: c.agent,
                platform: c.platform,
            }),
        }),
    }
}

fn assessment(a: Assessment) -> wit::Assessment {
    wit::Assessment {
        score: a.score.min(100),
        labels: a.labels,
        action: match a.action {
            Action::Allow => wit::Action::Allow,
            Action::StepUp => wit::Action::StepUp,
            Action::Challenge => wit::Action::Challenge,
            Action::Deny => wit::Action::Deny,
        },
        reason: a.reason,
    }
}
