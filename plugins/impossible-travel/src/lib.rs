//! # impossible-travel
//!
//! A Portcullis risk plugin that flags a verified subject who shows up in one country and
//! then, too soon afterwards, in another country too far away to have travelled to.
//!
//! For every request with a verified identity and a country (the gateway's trusted CDN
//! country header, ISO 3166-1 alpha-2), the plugin remembers the subject's last country and
//! the time it was seen, in plugin state under `last:<issuer length>:<issuer>:<subject>`
//! (very long issuer/subject pairs are hashed) for `remember_secs`. When the subject next
//! appears in a different country it works out how far apart the two countries are and how
//! fast the subject would have had to travel:
//!
//! * the distance is the great-circle (haversine) distance between the two countries'
//!   centroids **minus each country's radius** (the radius of a disc with the country's
//!   area), never below zero. Centroids alone would make neighbouring large countries (US and
//!   Mexico, about 1,600 km between centroids) or a short hop across a strait (Copenhagen to
//!   Malmö) look like a long flight; subtracting the radii turns the figure into a rough
//!   *shortest plausible* trip;
//! * countries that share a land border never trip the check, whatever the time;
//! * the trip is flagged only when that distance is over `min_distance_km` **and** the
//!   implied speed is over `max_speed_kmh`. Two sightings at the same millisecond (or with
//!   the newer one stamped earlier, as can happen across gateway instances) count as
//!   simultaneous and are flagged when the distance is over `min_distance_km`.
//!
//! A flagged request gets score `score`, label `impossible-travel`, a reason such as
//! `DE→AU 12,565 km in 0.08 h (150,783 km/h)` and, if configured, the suggested `action`.
//! The stored country and time are always replaced by the latest sighting, so the traveller's
//! next request is compared with where they were last seen.
//!
//! Requests without an identity or without a country are allowed and touch no state. A
//! country code the plugin does not know (for example a CDN's `XX` for "unknown" or `T1` for
//! Tor) scores 0 with label `unknown-country`, and leaves the stored sighting alone.
//!
//! ## Configuration
//!
//! | key               | default        | meaning                                                      |
//! |-------------------|----------------|--------------------------------------------------------------|
//! | `remember_secs`   | `2592000` (30 days) | how long a subject's last sighting is kept               |
//! | `max_speed_kmh`   | `1000`         | trips faster than this are impossible (a jet is ~900 km/h)   |
//! | `min_distance_km` | `500`          | trips no longer than this are never flagged                  |
//! | `score`           | `80`           | score of a flagged request (0–100)                           |
//! | `action`          | none           | suggested action: `"step-up"`, `"challenge"` or `"deny"`; unset leaves it to the route's thresholds |
//!
//! ```toml
//! [plugin.impossible-travel]
//! path = "plugins/impossible_travel.wasm"
//!
//! [plugin.impossible-travel.config]
//! remember_secs = 604800     # a week
//! max_speed_kmh = 900
//! min_distance_km = 500
//! score = 80
//! action = "step-up"
//! ```
//!
//! The country table (centroids, areas and land borders of all 249 ISO 3166-1 countries plus
//! Kosovo) is in [`countries`].

use portcullis_plugin::{Action, Assessment, Context, Host, Identity, RiskPlugin};
use serde::Deserialize;

pub mod countries;

use countries::Country;

/// The label of a flagged request.
pub const LABEL: &str = "impossible-travel";
/// The label of a request from a country code missing from the table.
pub const UNKNOWN_COUNTRY_LABEL: &str = "unknown-country";

/// The plugin's `config` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Seconds a subject's last sighting is remembered (default 30 days).
    #[serde(default = "default_remember_secs")]
    pub remember_secs: u64,
    /// Speed above which a trip is impossible, km/h (default 1000).
    #[serde(default = "default_max_speed_kmh")]
    pub max_speed_kmh: f64,
    /// Trips no longer than this many kilometres are never flagged (default 500).
    #[serde(default = "default_min_distance_km")]
    pub min_distance_km: f64,
    /// Score of a flagged request, 0–100 (default 80).
    #[serde(default = "default_score")]
    pub score: u8,
    /// Suggested action for a flagged request: `step-up`, `challenge` or `deny` (default: none).
    #[serde(default)]
    pub action: Option<String>,
}

fn default_remember_secs() -> u64 {
    30 * 24 * 3600
}

fn default_max_speed_kmh() -> f64 {
    1000.0
}

fn default_min_distance_km() -> f64 {
    500.0
}

fn default_score() -> u8 {
    80
}

impl Default for Config {
    fn default() -> Self {
        Self {
            remember_secs: default_remember_secs(),
            max_speed_kmh: default_max_speed_kmh(),
            min_distance_km: default_min_distance_km(),
            score: default_score(),
            action: None,
        }
    }
}

/// The plugin.
#[derive(Clone, Debug)]
pub struct ImpossibleTravel {
    remember_ms: u64,
    max_speed_kmh: f64,
    min_distance_km: f64,
    score: u8,
    action: Action,
}

/// A trip between two sightings, as the plugin judges it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trip {
    /// Shortest plausible distance, km: centroid distance minus both radii, at least 0.
    pub distance_km: f64,
    /// Time between the sightings, ms (0 when simultaneous or out of order).
    pub elapsed_ms: u64,
}

impl Trip {
    /// The trip from `from` seen at `from_ms` to `to` seen at `to_ms`.
    pub fn between(from: &Country, to: &Country, from_ms: u64, to_ms: u64) -> Self {
        let centroids = countries::haversine_km(from.lat, from.lon, to.lat, to.lon);
        let margin = f64::from(from.radius_km) + f64::from(to.radius_km);
        Self {
            distance_km: (centroids - margin).max(0.0),
            elapsed_ms: to_ms.saturating_sub(from_ms),
        }
    }

    /// Elapsed time in hours.
    pub fn hours(&self) -> f64 {
        self.elapsed_ms as f64 / 3_600_000.0
    }

    /// Implied speed in km/h (infinite for a simultaneous trip of non-zero length).
    pub fn speed_kmh(&self) -> f64 {
        if self.distance_km <= 0.0 {
            0.0
        } else if self.elapsed_ms == 0 {
            f64::INFINITY
        } else {
            self.distance_km / self.hours()
        }
    }
}

/// A stored sighting: format version, country, time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sighting {
    country: [u8; 2],
    at_ms: u64,
}

impl Sighting {
    const VERSION: u8 = 1;
    const LEN: usize = 11;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let [v, c0, c1, rest @ ..] = &mut out;
        let [a, b] = self.country;
        *v = Self::VERSION;
        *c0 = a;
        *c1 = b;
        *rest = self.at_ms.to_be_bytes();
        out
    }

    /// `None` for anything this version did not write (ignored, then overwritten).
    fn decode(bytes: &[u8]) -> Option<Self> {
        let [v, c0, c1, rest @ ..] = <&[u8; Self::LEN]>::try_from(bytes).ok()?;
        (*v == Self::VERSION).then_some(Self {
            country: [*c0, *c1],
            at_ms: u64::from_be_bytes(*rest),
        })
    }
}

/// Longest `issuer` + `subject` kept verbatim in a state key; longer pairs are hashed.
const MAX_VERBATIM_KEY: usize = 256;

/// The state key of a subject's last sighting.
pub fn state_key(identity: &Identity) -> String {
    let (iss, sub) = (identity.issuer.as_str(), identity.subject.as_str());
    if iss.len() + sub.len() <= MAX_VERBATIM_KEY {
        // The issuer's length keeps `iss = "a:b", sub = "c"` apart from `iss = "a", sub = "b:c"`.
        format!("last:{}:{iss}:{sub}", iss.len())
    } else {
        let mut h = Fnv64::new();
        h.write(iss.as_bytes());
        h.write(&[0]);
        h.write(sub.as_bytes());
        format!("last:h:{:016x}", h.finish())
    }
}

/// FNV-1a, 64-bit: a small stable hash for long state keys.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Parses an `action` setting.
fn parse_action(action: Option<&str>) -> Result<Action, String> {
    match action {
        None => Ok(Action::Allow),
        Some("step-up") => Ok(Action::StepUp),
        Some("challenge") => Ok(Action::Challenge),
        Some("deny") => Ok(Action::Deny),
        Some(other) => Err(format!(
            "impossible-travel: unknown action {other:?}; use \"step-up\", \"challenge\" or \"deny\" (or leave it out to let the route's thresholds decide)"
        )),
    }
}

/// `1234567.8` → `"1,234,568"`.
fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "∞".to_owned();
    }
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The country code of `ctx.country`, trimmed and uppercased, when it is two ASCII letters
/// or digits (CDNs use codes like `T1`).
fn country_code(raw: &str) -> Option<[u8; 2]> {
    let bytes: [u8; 2] = raw.trim().as_bytes().try_into().ok()?;
    bytes
        .iter()
        .all(u8::is_ascii_alphanumeric)
        .then(|| bytes.map(|b| b.to_ascii_uppercase()))
}

impl ImpossibleTravel {
    /// Judges a trip: `Some(assessment)` when it is impossible.
    pub fn judge(&self, from: &Country, to: &Country, trip: &Trip) -> Option<Assessment> {
        if from.code == to.code || from.borders(to) || trip.distance_km <= self.min_distance_km {
            return None;
        }
        let speed = trip.speed_kmh();
        if speed <= self.max_speed_kmh {
            return None;
        }
        let pace = if speed.is_finite() {
            format!("{} km/h", thousands(speed))
        } else {
            "simultaneous".to_owned()
        };
        let reason = format!(
            "{}→{} {} km in {:.2} h ({pace})",
            from.code_str(),
            to.code_str(),
            thousands(trip.distance_km),
            trip.hours(),
        );
        Some(
            Assessment::score(self.score, reason)
                .label(LABEL)
                .action(self.action),
        )
    }
}

impl RiskPlugin for ImpossibleTravel {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.remember_secs == 0 {
            return Err("impossible-travel: remember_secs must be at least 1".into());
        }
        let remember_ms = config.remember_secs.checked_mul(1000).ok_or_else(|| {
            format!(
                "impossible-travel: remember_secs = {} is too large",
                config.remember_secs
            )
        })?;
        if !(config.max_speed_kmh.is_finite() && config.max_speed_kmh > 0.0) {
            return Err(format!(
                "impossible-travel: max_speed_kmh must be a positive number, got {}",
                config.max_speed_kmh
            ));
        }
        if !(config.min_distance_km.is_finite() && config.min_distance_km >= 0.0) {
            return Err(format!(
                "impossible-travel: min_distance_km must be zero or a positive number, got {}",
                config.min_distance_km
            ));
        }
        if config.score > 100 {
            return Err(format!(
                "impossible-travel: score must be between 0 and 100, got {}",
                config.score
            ));
        }
        Ok(Self {
            remember_ms,
            max_speed_kmh: config.max_speed_kmh,
            min_distance_km: config.min_distance_km,
            score: config.score,
            action: parse_action(config.action.as_deref())?,
        })
    }

    fn assess(&self, ctx: &Context, host: &mut dyn Host) -> Assessment {
        let (Some(identity), Some(raw_country)) = (ctx.identity.as_ref(), ctx.country.as_deref())
        else {
            return Assessment::allow();
        };
        if identity.subject.is_empty() {
            return Assessment::allow();
        }
        let Some(here) = country_code(raw_country).and_then(countries::lookup_code) else {
            let shown = country_code(raw_country)
                .and_then(|c| String::from_utf8(c.to_vec()).ok())
                .map_or_else(
                    || "a malformed country code".to_owned(),
                    |c| format!("country {c}"),
                );
            return Assessment::score(
                0,
                format!("{shown} is not in the country table; not tracked"),
            )
            .label(UNKNOWN_COUNTRY_LABEL);
        };

        let key = state_key(identity);
        let now = host.now_ms();
        let previous = host.get(&key).and_then(|v| Sighting::decode(&v));
        let latest = Sighting {
            country: here.code,
            at_ms: now,
        };
        host.set(&key, &latest.encode(), self.remember_ms);

        let Some(previous) = previous else {
            return Assessment::allow();
        };
        let Some(there) = countries::lookup_code(previous.country) else {
            return Assessment::allow();
        };
        let trip = Trip::between(there, here, previous.at_ms, now);
        self.judge(there, here, &trip)
            .unwrap_or_else(Assessment::allow)
    }
}

portcullis_plugin::export_plugin!(ImpossibleTravel);
