//! # portcullis-plugin
//!
//! Write a Portcullis risk plugin: implement [`RiskPlugin`] and call [`export_plugin!`].
//!
//! ```
//! use portcullis_plugin::{Assessment, Context, Host, RiskPlugin};
//!
//! #[derive(serde::Deserialize)]
//! pub struct Config {
//!     blocked_country: String,
//! }
//!
//! pub struct NoCountry(Config);
//!
//! impl RiskPlugin for NoCountry {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Self(config))
//!     }
//!     fn assess(&self, ctx: &Context, _host: &mut dyn Host) -> Assessment {
//!         if ctx.country.as_deref() == Some(self.0.blocked_country.as_str()) {
//!             Assessment::score(90, "country blocked").label("geo-block")
//!         } else {
//!             Assessment::allow()
//!         }
//!     }
//! }
//!
//! portcullis_plugin::export_plugin!(NoCountry);
//!
//! // Unit-tested natively, without wasm:
//! let mut host = portcullis_plugin::testing::TestHost::new();
//! let plugin = host.plugin::<NoCountry>(serde_json::json!({"blocked_country": "XX"})).unwrap();
//! let ctx = Context::new("GET", "/").with_country("XX");
//! assert_eq!(plugin.assess(&ctx, &mut host).score, 90);
//! ```
//!
//! Built with `cargo build --release --target wasm32-wasip2`, the crate (with
//! `crate-type = ["cdylib", "rlib"]`) is a component of the `portcullis:plugin/risk-plugin`
//! world that the gateway loads from its configuration. Natively the macro expands to
//! nothing, so `cargo test` runs the plugin's logic against [`testing::TestHost`].

use std::net::IpAddr;

pub mod testing;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
#[doc(hidden)]
pub mod wasm;

/// The WIT package version this SDK implements.
pub const WIT_VERSION: &str = "0.2.0";

/// A risk plugin.
///
/// One value is built per plugin instance from the plugin's configuration and then asked to
/// assess every request of the routes that name the plugin. Keep long-lived data in the
/// [`Host`] state: instances come and go (a trap discards one), and several run at once.
pub trait RiskPlugin: Sized + Send + Sync + 'static {
    /// The plugin's `config` table from the edge configuration.
    type Config: serde::de::DeserializeOwned;

    /// Builds the plugin, checking the configuration. An error stops the gateway at startup
    /// with this message.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Assesses one request.
    fn assess(&self, ctx: &Context, host: &mut dyn Host) -> Assessment;

    /// Learns how a request it assessed ended (the status the client got). Default: nothing.
    fn observe(&self, ctx: &Context, outcome: Outcome, host: &mut dyn Host) {
        let _ = (ctx, outcome, host);
    }
}

/// What a plugin may use of the gateway: its private state, the log and the clock.
pub trait Host {
    /// The value of `key`, if present and not expired.
    fn get(&mut self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key` for `ttl_ms` milliseconds.
    fn set(&mut self, key: &str, value: &[u8], ttl_ms: u64);
    /// Adds `delta` to the counter `key` (created at 0 with `ttl_ms`, stored as an 8-byte
    /// big-endian integer); returns the new value.
    fn increment(&mut self, key: &str, delta: i64, ttl_ms: u64) -> i64;
    /// Removes `key`.
    fn delete(&mut self, key: &str);
    /// Writes to the gateway's log.
    fn log(&mut self, level: Level, message: &str);
    /// Milliseconds since the Unix epoch.
    fn now_ms(&mut self) -> u64;
}

/// Log severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Debugging detail.
    Debug,
    /// Normal events.
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

/// The verified identity of the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub subject: String,
    /// `iss`.
    pub issuer: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `acr`.
    pub acr: Option<String>,
    /// `amr`.
    pub amr: Vec<String>,
    /// `act.sub` of a delegated token.
    pub actor: Option<String>,
    /// `sid`.
    pub session_id: Option<String>,
    /// `client_id` / `azp`.
    pub client_id: Option<String>,
}

/// What one request showed of its client (a browser session's sign-in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientSignals {
    /// The IPv4 /24 or IPv6 /64 of the client address.
    pub network: Option<String>,
    /// Autonomous system number, from a trusted CDN or proxy.
    pub asn: Option<u32>,
    /// ISO 3166-1 alpha-2 country, from a trusted CDN or proxy.
    pub country: Option<String>,
    /// Browser family and major version (`Chrome/131`), or another client's first product
    /// (`curl/8`).
    pub agent: Option<String>,
    /// The platform the browser hints (`Sec-CH-UA-Platform`).
    pub platform: Option<String>,
}

/// The session a request belongs to. Ids are pseudonyms: stable, they link requests, and
/// they cannot resume a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// This session: the gateway's browser session, or the provider session a token names.
    pub id: String,
    /// The provider's session behind it, if named: the same for a browser session and the
    /// app tokens of one sign-in.
    pub provider_session: Option<String>,
    /// True for the gateway's browser session (its cookie); false for a token's.
    pub browser: bool,
    /// Seconds since the user signed in, when known.
    pub age_secs: Option<u32>,
    /// What the sign-in's request showed of the client (browser sessions).
    pub sign_in: Option<ClientSignals>,
}

/// A request as a plugin sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The gateway's request id.
    pub request_id: String,
    /// The matched route's path prefix.
    pub route: String,
    /// Method.
    pub method: String,
    /// Normalised path.
    pub path: String,
    /// Query string without `?`.
    pub query: Option<String>,
    /// Host, lowercase, no port.
    pub host: Option<String>,
    /// The headers the plugin asked for in its configuration (`headers = [...]`), lowercase.
    pub headers: Vec<(String, String)>,
    /// Client IP address.
    pub client_ip: Option<IpAddr>,
    /// Country (ISO 3166-1 alpha-2, uppercase) from a trusted CDN header.
    pub country: Option<String>,
    /// Autonomous system number from a trusted CDN header.
    pub asn: Option<u32>,
    /// The verified identity, if any.
    pub identity: Option<Identity>,
    /// The session the request belongs to, if any.
    pub session: Option<Session>,
}

impl Context {
    /// A context for `method` and `path` (tests; the gateway builds the real ones).
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            request_id: "test".into(),
            route: "/".into(),
            method: method.into(),
            path: path.into(),
            ..Self::default()
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The verified subject, if any.
    pub fn subject(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.subject.as_str())
    }

    /// True when the identity carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|i| i.scopes.iter().any(|s| s == scope))
    }

    /// The value of query parameter `name` (first occurrence, not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// With a header added.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// With the client IP set (unparseable text leaves it unset).
    pub fn with_client_ip(mut self, ip: &str) -> Self {
        self.client_ip = ip.parse().ok();
        self
    }

    /// With the country set.
    pub fn with_country(mut self, country: &str) -> Self {
        self.country = Some(country.to_ascii_uppercase());
        self
    }

    /// With the ASN set.
    pub fn with_asn(mut self, asn: u32) -> Self {
        self.asn = Some(asn);
        self
    }

    /// With the route set.
    pub fn with_route(mut self, route: &str) -> Self {
        self.route = route.to_owned();
        self
    }

    /// With the query set.
    pub fn with_query(mut self, query: &str) -> Self {
        self.query = Some(query.to_owned());
        self
    }

    /// With a verified identity for `subject`.
    pub fn with_subject(mut self, subject: &str) -> Self {
        let id = self.identity.get_or_insert_with(Identity::default);
        subject.clone_into(&mut id.subject);
        self
    }

    /// With a full identity.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// With a session.
    pub fn with_session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }
}

/// What a plugin suggests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Let the request through.
    #[default]
    Allow,
    /// Ask for stronger authentication.
    StepUp,
    /// Ask the client to prove it is not a bot.
    Challenge,
    /// Refuse.
    Deny,
}

/// A plugin's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// 0 (no risk) to 100; larger values are clamped to 100.
    pub score: u8,
    /// Machine-readable labels.
    pub labels: Vec<String>,
    /// Suggested action.
    pub action: Action,
    /// Why.
    pub reason: String,
}

impl Assessment {
    /// No risk seen.
    pub fn allow() -> Self {
        Self::default()
    }

    /// A score with a reason; the action is left to the route's thresholds.
    pub fn score(score: u8, reason: impl Into<String>) -> Self {
        Self {
            score: score.min(100),
            reason: reason.into(),
            ..Self::default()
        }
    }

    /// With a label added.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.labels.push(label.into());
        self
    }

    /// With a suggested action.
    pub fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// The stronger of two assessments (higher score; most severe action; labels merged).
    pub fn max(mut self, other: Assessment) -> Self {
        if other.score > self.score {
            self.score = other.score;
            self.reason = other.reason;
        } else if self.reason.is_empty() {
            self.reason = other.reason;
        }
        self.action = self.action.max(other.action);
        for l in other.labels {
            if !self.labels.contains(&l) {
                self.labels.push(l);
            }
        }
        self
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The HTTP status the client received.
    pub status: u16,
}

/// Parses a plugin's JSON configuration (an absent table is `{}`).
pub fn parse_config<P: RiskPlugin>(json: &str) -> Result<P, String> {
    let text = if json.trim().is_empty() { "{}" } else { json };
    let config: P::Config =
        serde_json::from_str(text).map_err(|e| format!("plugin configuration: {e}"))?;
    P::new(config)
}

/// Exports a [`RiskPlugin`] as the component's `portcullis:plugin/risk` interface.
/// Natively (tests) it expands to nothing.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
        const _: () = {
            type __PortcullisExport = $crate::wasm::Export<$plugin>;
            $crate::wasm::bindings::__export_risk_plugin!(__PortcullisExport with_types_in $crate::wasm::bindings);
        };
    };
}
