//! # credential-stuffing
//!
//! A Portcullis risk plugin that scores login attempts from networks, and for usernames,
//! that have recently failed to log in many times: the signature of credential stuffing
//! (one network trying many accounts) and of password spraying or guessing against one
//! account from many networks.
//!
//! The plugin only looks at *login requests*: a method in `methods` on a path under one of
//! `paths` (segment-aware prefix match: `/login` matches `/login` and `/login/sso` but not
//! `/logins`). Every other request is allowed without touching state.
//!
//! * **Counting** happens in `observe`: when a login request ends with a status listed in
//!   `failure_statuses`, the plugin counts one failure for the client's network (the IPv4 /24
//!   or IPv6 /64 containing `client_ip`; IPv4-mapped IPv6 addresses count as IPv4) and one
//!   for the username. The username comes from header `username_header` (which must also be
//!   listed in the plugin's `headers = [...]` so the gateway passes it) or, when the header is
//!   absent and `username_param` is set, from that query parameter (percent-decoded). It is
//!   trimmed and lowercased, and only a hash of it is stored.
//! * **Windows**: each counter is the classic sliding-window estimate built from two fixed
//!   windows of `window_secs`: `current + previous × (fraction of the current window still
//!   to run)`. Counters live in plugin state (`host.increment`, TTL two windows) under
//!   `ip:<network>:<window>` and `user:<hash>:<window>`.
//! * **Scoring** happens in `assess`: below `ip_threshold` (per network) and `user_threshold`
//!   (per username) the score is 0; at the threshold it is 60, rising linearly to 100 at twice
//!   the threshold. The labels are `stuffing-ip` and `stuffing-user`; the higher score wins
//!   (both labels are kept when both trip). Reasons give the counts and the network but never
//!   the username ("this username"). The plugin suggests no action: the route's thresholds
//!   decide.
//!
//! ## Configuration
//!
//! | key                | default              | meaning                                            |
//! |--------------------|----------------------|----------------------------------------------------|
//! | `paths`            | `["/login"]`         | login path prefixes                                |
//! | `methods`          | `["POST"]`           | login methods (case-insensitive)                   |
//! | `failure_statuses` | `[401, 403]`         | statuses that count as a failed login              |
//! | `username_header`  | `"x-login-username"` | header carrying the username                       |
//! | `username_param`   | none                 | query parameter carrying the username, if any      |
//! | `window_secs`      | `300`                | sliding window length                              |
//! | `ip_threshold`     | `20`                 | failures per network that start scoring            |
//! | `user_threshold`   | `5`                  | failures per username that start scoring           |
//!
//! ```toml
//! [plugin.credential-stuffing]
//! path = "plugins/credential_stuffing.wasm"
//! headers = ["x-login-username"]
//!
//! [plugin.credential-stuffing.config]
//! paths = ["/login", "/oauth/token"]
//! methods = ["POST"]
//! failure_statuses = [401, 403, 429]
//! window_secs = 600
//! ip_threshold = 30
//! user_threshold = 5
//! ```

use std::net::IpAddr;

use portcullis_plugin::{Assessment, Context, Host, Outcome, RiskPlugin};
use serde::Deserialize;

/// Label of a network with many recent failures.
pub const IP_LABEL: &str = "stuffing-ip";
/// Label of a username with many recent failures.
pub const USER_LABEL: &str = "stuffing-user";

/// Score at the threshold.
const BASE_SCORE: f64 = 60.0;
/// Score at twice the threshold and beyond.
const MAX_SCORE: f64 = 100.0;

/// The plugin's `config` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Login path prefixes (default `["/login"]`).
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// Login methods (default `["POST"]`).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Statuses counted as failed logins (default `[401, 403]`).
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
    /// Header carrying the username (default `x-login-username`).
    #[serde(default = "default_username_header")]
    pub username_header: String,
    /// Query parameter carrying the username, used when the header is absent (default: none).
    #[serde(default)]
    pub username_param: Option<String>,
    /// Sliding window length in seconds (default 300).
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Failures per client network at which scoring starts (default 20).
    #[serde(default = "default_ip_threshold")]
    pub ip_threshold: u32,
    /// Failures per username at which scoring starts (default 5).
    #[serde(default = "default_user_threshold")]
    pub user_threshold: u32,
}

fn default_paths() -> Vec<String> {
    vec!["/login".to_owned()]
}

fn default_methods() -> Vec<String> {
    vec!["POST".to_owned()]
}

fn default_failure_statuses() -> Vec<u16> {
    vec![401, 403]
}

fn default_username_header() -> String {
    "x-login-username".to_owned()
}

fn default_window_secs() -> u64 {
    300
}

fn default_ip_threshold() -> u32 {
    20
}

fn default_user_threshold() -> u32 {
    5
}

impl Default for Config {
    fn default() -> Self {
        Self {
            paths: default_paths(),
            methods: default_methods(),
            failure_statuses: default_failure_statuses(),
            username_header: default_username_header(),
            username_param: None,
            window_secs: default_window_secs(),
            ip_threshold: default_ip_threshold(),
            user_threshold: default_user_threshold(),
        }
    }
}

/// The plugin.
#[derive(Clone, Debug)]
pub struct CredentialStuffing {
    paths: Vec<String>,
    methods: Vec<String>,
    failure_statuses: Vec<u16>,
    username_header: String,
    username_param: Option<String>,
    window_ms: u64,
    window_secs: u64,
    ip_threshold: u32,
    user_threshold: u32,
}

/// The network a client address is counted under: its IPv4 /24 or IPv6 /64, as text
/// (`203.0.113.0/24`, `2001:db8:1:2::/64`). IPv4-mapped IPv6 addresses count as IPv4.
pub fn network_of(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & !u128::from(u64::MAX);
            format!("{}/64", std::net::Ipv6Addr::from(masked))
        }
    }
}

/// A username as counted: trimmed, lowercased; `None` when empty.
pub fn normalise_username(raw: &str) -> Option<String> {
    let name = raw.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// The state key stem of a (normalised) username: a hash, never the name itself.
pub fn username_key(normalised: &str) -> String {
    // Two independent FNV-1a passes (different offsets) make a 128-bit key: accidental
    // collisions between real usernames are out of reach.
    let a = fnv1a(0xcbf2_9ce4_8422_2325, normalised.as_bytes());
    let b = fnv1a(0x6c62_272e_07bb_0142, normalised.as_bytes());
    format!("user:{a:016x}{b:016x}")
}

fn fnv1a(offset: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(offset, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Decodes `%XX` escapes and `+` (a space in form encoding); invalid escapes stay as they are.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a counter written by `host.increment` (8-byte big-endian), 0 when absent.
fn read_counter(host: &mut dyn Host, key: &str) -> i64 {
    host.get(key)
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, i64::from_be_bytes)
        .max(0)
}

/// Score for an estimated `count` against `threshold`: 0 below it, 60 at it, rising linearly
/// to 100 at twice the threshold.
pub fn score_for(count: f64, threshold: u32) -> u8 {
    let t = f64::from(threshold.max(1));
    if count < t {
        return 0;
    }
    let over = ((count - t) / t).clamp(0.0, 1.0);
    let score = (BASE_SCORE + (MAX_SCORE - BASE_SCORE) * over).round();
    // `score` is within 60..=100 by construction.
    if score >= MAX_SCORE { 100 } else { score as u8 }
}

impl CredentialStuffing {
    /// True when the request is a login attempt this plugin watches.
    pub fn is_login(&self, ctx: &Context) -> bool {
        self.methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&ctx.method))
            && self.paths.iter().any(|p| path_under(&ctx.path, p))
    }

    /// The normalised username of a login request, if it carries one.
    pub fn username(&self, ctx: &Context) -> Option<String> {
        if let Some(name) = ctx.header(&self.username_header) {
            return normalise_username(name);
        }
        let param = self.username_param.as_deref()?;
        normalise_username(&percent_decode(ctx.query_param(param)?))
    }

    /// Index of the fixed window containing `now_ms`, and the fraction of it still to run.
    fn window(&self, now_ms: u64) -> (u64, f64) {
        let index = now_ms / self.window_ms;
        let elapsed = now_ms % self.window_ms;
        let remaining = (self.window_ms - elapsed) as f64 / self.window_ms as f64;
        (index, remaining)
    }

    /// The sliding-window estimate of the counter stem `stem` at `now_ms`.
    pub fn estimate(&self, host: &mut dyn Host, stem: &str, now_ms: u64) -> f64 {
        let (index, remaining) = self.window(now_ms);
        let current = read_counter(host, &format!("{stem}:{index}"));
        let previous = match index.checked_sub(1) {
            Some(prev) => read_counter(host, &format!("{stem}:{prev}")),
            None => 0,
        };
        current as f64 + previous as f64 * remaining
    }

    fn count(&self, host: &mut dyn Host, stem: &str, now_ms: u64) {
        let (index, _) = self.window(now_ms);
        host.increment(
            &format!("{stem}:{index}"),
            1,
            self.window_ms.saturating_mul(2),
        );
    }
}

/// `path` is `prefix` or lies below it (segment-aware; a prefix ending in `/` matches any
/// path starting with it).
fn path_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

impl RiskPlugin for CredentialStuffing {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        const P: &str = "credential-stuffing";
        if config.paths.is_empty() {
            return Err(format!("{P}: paths must list at least one login path"));
        }
        for path in &config.paths {
            if !path.starts_with('/') {
                return Err(format!("{P}: path {path:?} must start with '/'"));
            }
        }
        if config.methods.is_empty() {
            return Err(format!("{P}: methods must list at least one method"));
        }
        for method in &config.methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("{P}: {method:?} is not an HTTP method"));
            }
        }
        if config.failure_statuses.is_empty() {
            return Err(format!(
                "{P}: failure_statuses must list at least one status"
            ));
        }
        for status in &config.failure_statuses {
            if !(100..=599).contains(status) {
                return Err(format!(
                    "{P}: failure status {status} is not an HTTP status (100..=599)"
                ));
            }
        }
        let header = config.username_header.trim().to_ascii_lowercase();
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "{P}: username_header {:?} is not a header name",
                config.username_header
            ));
        }
        if let Some(param) = &config.username_param
            && (param.is_empty() || param.contains(['&', '=']))
        {
            return Err(format!(
                "{P}: username_param {param:?} is not a query parameter name"
            ));
        }
        const MAX_WINDOW_SECS: u64 = 7 * 24 * 3600;
        if !(1..=MAX_WINDOW_SECS).contains(&config.window_secs) {
            return Err(format!(
                "{P}: window_secs must be between 1 and {MAX_WINDOW_SECS} (a week), got {}",
                config.window_secs
            ));
        }
        if config.ip_threshold == 0 {
            return Err(format!("{P}: ip_threshold must be at least 1"));
        }
        if config.user_threshold == 0 {
            return Err(format!("{P}: user_threshold must be at least 1"));
        }
        Ok(Self {
            paths: config.paths,
            methods: config.methods,
            failure_statuses: config.failure_statuses,
            username_header: header,
            username_param: config.username_param,
            window_ms: config.window_secs * 1000,
            window_secs: config.window_secs,
            ip_threshold: config.ip_threshold,
            user_threshold: config.user_threshold,
        })
    }

    fn assess(&self, ctx: &Context, host: &mut dyn Host) -> Assessment {
        if !self.is_login(ctx) {
            return Assessment::allow();
        }
        let now = host.now_ms();
        let mut verdict = Assessment::allow();
        if let Some(ip) = ctx.client_ip {
            let network = network_of(ip);
            let count = self.estimate(host, &format!("ip:{network}"), now);
            let score = score_for(count, self.ip_threshold);
            if score > 0 {
                verdict = verdict.max(
                    Assessment::score(
                        score,
                        format!(
                            "{count:.0} failed logins from {network} in the last {} s (threshold {})",
                            self.window_secs, self.ip_threshold
                        ),
                    )
                    .label(IP_LABEL),
                );
            }
        }
        if let Some(name) = self.username(ctx) {
            let count = self.estimate(host, &username_key(&name), now);
            let score = score_for(count, self.user_threshold);
            if score > 0 {
                verdict = verdict.max(
                    Assessment::score(
                        score,
                        format!(
                            "{count:.0} failed logins for this username in the last {} s (threshold {})",
                            self.window_secs, self.user_threshold
                        ),
                    )
                    .label(USER_LABEL),
                );
            }
        }
        verdict
    }

    fn observe(&self, ctx: &Context, outcome: Outcome, host: &mut dyn Host) {
        if !self.failure_statuses.contains(&outcome.status) || !self.is_login(ctx) {
            return;
        }
        let now = host.now_ms();
        if let Some(ip) = ctx.client_ip {
            self.count(host, &format!("ip:{}", network_of(ip)), now);
        }
        if let Some(name) = self.username(ctx) {
            self.count(host, &username_key(&name), now);
        }
    }
}

portcullis_plugin::export_plugin!(CredentialStuffing);
