//! `portcullis plugin test FILE.wasm --scenario FILE.toml`: runs a built plugin component,
//! under the sandbox limits `serve` applies, against a scenario of requests, prints each
//! assessment and checks the expectations the scenario writes down (for a plugin author's
//! CI: the exit status says whether every one held).
//!
//! ```toml
//! [plugin]
//! config = { deny = ["203.0.113.0/24"] }  # the plugin's `config` table
//! headers = ["user-agent"]                # the headers it may see
//! deadline = "5ms"                        # sandbox limits, as in [plugin.*]
//! memory_mb = 16
//! # fuel = 10000000
//!
//! [[request]]
//! name = "a listed network is denied"
//! path = "/login"                         # method "GET" unless given
//! client_ip = "203.0.113.9"
//! headers = { "user-agent" = "curl/8" }
//! country = "DE"                          # asn = 64500
//! identity = { subject = "alice" }        # scopes, acr, amr, session_id, client_id, …
//! after = "2h"                            # advance the plugin's clock first
//! status = 401                            # then tell the plugin (`observe`)
//! expect = { action = "deny", score_min = 80, labels = ["listed"] }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use portcullis_core::config::{
    DEFAULT_PLUGIN_DEADLINE, DEFAULT_PLUGIN_MEMORY, FailPolicy, PLUGIN_DEADLINE_BOUNDS,
    PLUGIN_MEMORY_MB_BOUNDS, PluginConfig,
};
use serde::Deserialize;

use crate::risk::{
    Action, Assessment, ClientSignals, Identity, PluginClock, PluginRuntime, RequestContext,
    Session,
};

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// How the plugin is configured and sandboxed.
    #[serde(default)]
    pub plugin: PluginSection,
    /// The requests, in order.
    #[serde(rename = "request", default)]
    pub requests: Vec<Step>,
}

/// `[plugin]`: as a `[plugin.NAME]` entry of the edge configuration, without the path.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// The plugin's `config` table.
    #[serde(default)]
    pub config: toml::Table,
    /// Request headers it sees.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Wall-clock budget per call (`5ms`).
    pub deadline: Option<String>,
    /// Memory cap, MiB.
    pub memory_mb: Option<u64>,
    /// Instruction budget per call.
    pub fuel: Option<u64>,
}

/// One request of a scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What it shows (printed).
    pub name: Option<String>,
    /// Method (`GET`).
    #[serde(default = "get")]
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string without `?`.
    pub query: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// The matched route (default: `/`).
    pub route: Option<String>,
    /// Request headers (the plugin sees those it asked for).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The client's address.
    pub client_ip: Option<String>,
    /// Its country.
    pub country: Option<String>,
    /// Its autonomous system.
    pub asn: Option<u32>,
    /// The verified identity.
    pub identity: Option<IdentitySection>,
    /// The session the request belongs to.
    pub session: Option<SessionSection>,
    /// Advance the plugin's clock by this much before the request (`30s`, `2h`).
    pub after: Option<String>,
    /// The status the client got, told to the plugin after its assessment (`observe`).
    pub status: Option<u16>,
    /// What the assessment must be.
    pub expect: Option<Expect>,
}

fn get() -> String {
    "GET".to_owned()
}

/// A verified identity.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// `sub`.
    pub subject: String,
    /// `iss`.
    #[serde(default = "issuer")]
    pub issuer: String,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `acr`.
    pub acr: Option<String>,
    /// `amr`.
    #[serde(default)]
    pub amr: Vec<String>,
    /// `act.sub`.
    pub actor: Option<String>,
    /// `sid`.
    pub session_id: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
}

/// The session a request belongs to (`[requests.session]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    /// Its pseudonymous id.
    pub id: String,
    /// The provider session's pseudonymous id.
    pub provider_session: Option<String>,
    /// A browser session (default), or a token's provider session.
    #[serde(default = "yes")]
    pub browser: bool,
    /// Seconds since the sign-in.
    pub age_secs: Option<u32>,
    /// What the sign-in showed of the client.
    pub sign_in: Option<SignInSection>,
}

/// What a sign-in showed of the client (`[requests.session.sign_in]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInSection {
    /// The /24 or /64.
    pub network: Option<String>,
    /// The autonomous system.
    pub asn: Option<u32>,
    /// The country.
    pub country: Option<String>,
    /// Browser family and major version (`Chrome/131`).
    pub agent: Option<String>,
    /// The platform hint.
    pub platform: Option<String>,
}

fn yes() -> bool {
    true
}

fn issuer() -> String {
    "https://issuer.example".to_owned()
}

/// What an assessment must be; every field given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `allow`, `step-up`, `challenge` or `deny`.
    pub action: Option<String>,
    /// The exact score.
    pub score: Option<u8>,
    /// At least this score.
    pub score_min: Option<u8>,
    /// At most this score.
    pub score_max: Option<u8>,
    /// Labels that must all be present.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The call must fail (trap, deadline, memory, malformed answer): `on_error` decides.
    #[serde(default)]
    pub failure: bool,
}

/// What a scenario run found.
#[derive(Debug, Default)]
pub struct Report {
    /// One line (or more) per request.
    pub text: String,
    /// Expectations that did not hold, one line each.
    pub failed: Vec<String>,
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::StepUp => "step-up",
        Action::Challenge => "challenge",
        Action::Deny => "deny",
    }
}

/// Reads a scenario.
pub fn parse(text: &str) -> anyhow::Result<Scenario> {
    let scenario: Scenario = toml::from_str(text)?;
    for (i, step) in scenario.requests.iter().enumerate() {
        if let Some(action) = step.expect.as_ref().and_then(|e| e.action.as_deref())
            && !["allow", "step-up", "challenge", "deny"].contains(&action)
        {
            anyhow::bail!("request {}: unknown action {action:?}", i + 1);
        }
    }
    Ok(scenario)
}

fn plugin_config(section: &PluginSection) -> anyhow::Result<PluginConfig> {
    let deadline = match &section.deadline {
        Some(d) => portcullis_core::config::parse_duration(d)
            .map_err(|e| anyhow::anyhow!("[plugin] deadline: {e}"))?,
        None => DEFAULT_PLUGIN_DEADLINE,
    };
    // The bounds `serve` holds a `[plugin.*]` entry to: a scenario passing under limits no
    // gateway accepts would prove nothing.
    anyhow::ensure!(
        PLUGIN_DEADLINE_BOUNDS.contains(&deadline),
        "[plugin] deadline {deadline:?} is outside 1ms..=1s (as in [plugin.*])"
    );
    let memory_mb = section.memory_mb.unwrap_or(DEFAULT_PLUGIN_MEMORY >> 20);
    anyhow::ensure!(
        PLUGIN_MEMORY_MB_BOUNDS.contains(&memory_mb),
        "[plugin] memory_mb = {memory_mb} is outside 1..=64 (as in [plugin.*])"
    );
    anyhow::ensure!(
        section.fuel != Some(0),
        "[plugin] fuel must be positive (as in [plugin.*])"
    );
    let config_json = serde_json::to_string(&section.config)?;
    Ok(PluginConfig {
        name: "under-test".to_owned(),
        path: String::new(),
        on_error: FailPolicy::Deny,
        deadline,
        memory_bytes: memory_mb << 20,
        fuel: section.fuel,
        weight: 1.0,
        headers: section
            .headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        config_json,
        component_sha256: None,
    })
}

fn context(step: &Step, index: usize) -> RequestContext {
    RequestContext {
        request_id: format!("scenario-{}", index + 1),
        route: step.route.clone().unwrap_or_else(|| "/".to_owned()),
        method: step.method.to_ascii_uppercase(),
        path: step.path.clone(),
        query: step.query.clone(),
        host: step.host.clone(),
        headers: step
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect(),
        client_ip: step.client_ip.clone(),
        country: step.country.clone(),
        asn: step.asn,
        identity: step.identity.as_ref().map(|i| Identity {
            subject: i.subject.clone(),
            issuer: i.issuer.clone(),
            scopes: i.scopes.clone(),
            acr: i.acr.clone(),
            amr: i.amr.clone(),
            actor: i.actor.clone(),
            session_id: i.session_id.clone(),
            client_id: i.client_id.clone(),
        }),
        session: step.session.as_ref().map(|s| Session {
            id: s.id.clone(),
            provider_session: s.provider_session.clone(),
            browser: s.browser,
            age_secs: s.age_secs,
            sign_in: s.sign_in.as_ref().map(|c| ClientSignals {
                network: c.network.clone(),
                asn: c.asn,
                country: c.country.clone(),
                agent: c.agent.clone(),
                platform: c.platform.clone(),
            }),
        }),
    }
}

/// The expectations of `expect` that `got` breaks.
fn broken(expect: &Expect, got: &Result<Assessment, String>) -> Vec<String> {
    let a = match (got, expect.failure) {
        (Err(_), true) => return Vec::new(),
        (Ok(a), true) => {
            return vec![format!(
                "expected a failure, got score {} ({})",
                a.score,
                action_name(a.action)
            )];
        }
        (Err(e), false) => return vec![format!("the call failed: {e}")],
        (Ok(a), false) => a,
    };
    let mut out = Vec::new();
    if let Some(action) = &expect.action
        && action_name(a.action) != action
    {
        out.push(format!(
            "action {} (expected {action})",
            action_name(a.action)
        ));
    }
    if let Some(score) = expect.score
        && a.score != score
    {
        out.push(format!("score {} (expected {score})", a.score));
    }
    if let Some(min) = expect.score_min
        && a.score < min
    {
        out.push(format!("score {} (expected at least {min})", a.score));
    }
    if let Some(max) = expect.score_max
        && a.score > max
    {
        out.push(format!("score {} (expected at most {max})", a.score));
    }
    for label in &expect.labels {
        if !a.labels.contains(label) {
            out.push(format!("no label {label:?} (has {:?})", a.labels));
        }
    }
    out
}

/// Runs `scenario` against the component in `wasm_path` with `serve`'s sandbox.
pub async fn run(wasm_path: &Path, scenario: &Scenario) -> anyhow::Result<Report> {
    let cfg = plugin_config(&scenario.plugin)?;
    let fuel = cfg.fuel.is_some();
    let engine = crate::wasm::engine(8, fuel)?;
    // As in `serve`: without the engine's clock, no deadline would fire.
    let ticker = crate::epoch::EpochTicker::start(&engine)?;
    let base = wasm_path.parent().unwrap_or(Path::new("."));
    let file = wasm_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .context("no component file")?;
    let cfg = PluginConfig { path: file, ..cfg };
    let state = Arc::new(crate::state::Store::memory(100_000));
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let clock = Arc::new(AtomicU64::new(start));
    let runtime = PluginRuntime::load_plugins(
        (&engine, &ticker),
        std::slice::from_ref(&cfg),
        fuel,
        base,
        state,
        None,
        PluginClock::Set(clock.clone()),
    )
    .await?;
    let mut report = Report::default();
    for (i, step) in scenario.requests.iter().enumerate() {
        if let Some(after) = &step.after {
            let d = portcullis_core::config::parse_duration(after)
                .map_err(|e| anyhow::anyhow!("request {}: after: {e}", i + 1))?;
            clock.fetch_add(
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        let label = step.name.clone().unwrap_or_else(|| step.path.clone());
        let ctx = context(step, i);
        let mut runs = runtime.run(&[0], &ctx).await;
        let Some((got, (_, shown))) = runs.pop() else {
            anyhow::bail!("the plugin did not run");
        };
        match &got {
            Ok(a) => {
                let _ = writeln!(
                    report.text,
                    "{:>3}. {label}: score {} {} labels {:?} reason {:?}",
                    i + 1,
                    a.score,
                    action_name(a.action),
                    a.labels,
                    a.reason
                );
            }
            Err(e) => {
                let _ = writeln!(
                    report.text,
                    "{:>3}. {label}: FAILED ({e}); on_error decides",
                    i + 1
                );
            }
        }
        if let Some(expect) = &step.expect {
            for b in broken(expect, &got) {
                let line = format!("request {} ({label}): {b}", i + 1);
                let _ = writeln!(report.text, "     expectation not met: {b}");
                report.failed.push(line);
            }
        }
        if let Some(status) = step.status {
            runtime.observe(0, &shown, status).await;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_refuse_unknown_keys_and_actions() {
        assert!(parse("[[request]]\npath = \"/\"\nexpect = { action = \"deny\" }\n").is_ok());
        assert!(parse("[[request]]\npath = \"/\"\nexpct = {}\n").is_err());
        assert!(parse("[[request]]\npath = \"/\"\nexpect = { action = \"block\" }\n").is_err());
    }

    #[test]
    fn sandbox_limits_are_held_to_the_bounds_serve_accepts() {
        let limits = |table: &str| plugin_config(&parse(table).unwrap().plugin);
        let config = limits("[plugin]\ndeadline = \"1s\"\nmemory_mb = 64\nfuel = 1\n").unwrap();
        assert_eq!(config.deadline, std::time::Duration::from_secs(1));
        assert_eq!(config.memory_bytes, 64 << 20);
        assert_eq!(limits("").unwrap().memory_bytes, DEFAULT_PLUGIN_MEMORY);
        for (table, named) in [
            ("[plugin]\ndeadline = \"0ms\"\n", "deadline"),
            ("[plugin]\ndeadline = \"2s\"\n", "deadline"),
            ("[plugin]\nmemory_mb = 0\n", "memory_mb"),
            ("[plugin]\nmemory_mb = 65\n", "memory_mb"),
            ("[plugin]\nmemory_mb = 17592186044416\n", "memory_mb"),
            ("[plugin]\nfuel = 0\n", "fuel"),
        ] {
            let refused = limits(table).unwrap_err().to_string();
            assert!(refused.contains(named), "{table}: {refused}");
        }
    }

    #[test]
    fn a_request_carries_its_session_to_the_plugin() {
        let scenario = parse(
            "[[request]]\npath = \"/\"\n[request.session]\nid = \"s1\"\nage_secs = 30\n\
             [request.session.sign_in]\ncountry = \"DE\"\nagent = \"Chrome/131\"\n",
        )
        .unwrap();
        let ctx = context(&scenario.requests[0], 0);
        let session = ctx.session.unwrap();
        assert_eq!((session.id.as_str(), session.browser), ("s1", true));
        assert_eq!(session.age_secs, Some(30));
        let sign_in = session.sign_in.unwrap();
        assert_eq!(sign_in.country.as_deref(), Some("DE"));
        assert_eq!(sign_in.agent.as_deref(), Some("Chrome/131"));
        assert!(parse("[[request]]\npath = \"/\"\n[request.session]\nidd = \"s1\"\n").is_err());
    }

    #[test]
    fn expectations_name_what_broke() {
        let a = Ok(Assessment {
            score: 40,
            labels: vec!["x".into()],
            action: Action::Challenge,
            reason: String::new(),
        });
        let e = Expect {
            action: Some("deny".into()),
            score_min: Some(50),
            labels: vec!["x".into(), "y".into()],
            ..Expect::default()
        };
        let broke = broken(&e, &a);
        assert_eq!(broke.len(), 3, "{broke:?}");
        assert!(broken(&Expect::default(), &a).is_empty());
        let fail = Expect {
            failure: true,
            ..Expect::default()
        };
        assert!(broken(&fail, &Err("trap".into())).is_empty());
        assert_eq!(broken(&fail, &a).len(), 1);
        assert_eq!(broken(&Expect::default(), &Err("trap".into())).len(), 1);
    }
}
