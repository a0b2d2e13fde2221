//! Where a browser session or an app's key was used lately — the networks, their autonomous
//! systems and locations, and when each was last seen — kept in the shared state, and the
//! two anomalies only that history shows (the `session_anomaly` check, [`crate::bot`]):
//!
//! - **impossible travel since the last use**: this request is further from the last use on
//!   another network than `[session.anomaly] max_speed_kmh` allows in the time between;
//! - **concurrent use from distant networks**: within `concurrent_window`, the session went
//!   from this network to a distant one and back — two clients taking turns, not a device
//!   that moved (one move, Wi-Fi to mobile data, is not counted).
//!
//! "Distant": both located, at least `distant_km` apart; otherwise, both with a known
//! autonomous system, different ones; otherwise any other network.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client_signals::ClientSignals;
use crate::config::AnomalyWeights;
use crate::geo::GeoPoint;

/// Networks remembered per session (the most recently used).
const MAX_USES: usize = 4;
/// Below this distance two locations are one place: address geolocation is no finer.
pub const MIN_TRAVEL_KM: f64 = 100.0;
/// A use on the network last used is written again only after this long (the history is
/// read on every request, written on a change).
const REWRITE_AFTER_SECS: u64 = 15;
/// How long the history outlives its last write: a day, by which time an airliner reaches
/// anywhere on Earth (≤ 20,040 km) and the concurrent-use window is long past.
pub const HISTORY_TTL: Duration = Duration::from_secs(24 * 3600);

/// One network the session was used from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Use {
    /// The /24 or /64.
    #[serde(rename = "n")]
    network: String,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    asn: Option<u32>,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    location: Option<GeoPoint>,
    /// Last seen, Unix seconds.
    #[serde(rename = "t")]
    last: u64,
}

/// A session's (or an app key's) recent uses, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentUses {
    #[serde(rename = "u")]
    uses: Vec<Use>,
}

/// What the history shows about one request.
#[derive(Clone, Debug, PartialEq)]
pub enum UseFinding {
    /// Further from the last use on another network than anyone travels in the time.
    ImpossibleTravel {
        /// That network.
        from: String,
        /// The distance, km.
        km: f64,
        /// Seconds since that use.
        secs: u64,
    },
    /// A distant network used since this one was, within the window.
    ConcurrentUse {
        /// That network.
        other: String,
        /// Seconds since it was used.
        secs: u64,
    },
}

impl UseFinding {
    /// Its label in the audit record.
    pub fn label(&self) -> &'static str {
        match self {
            UseFinding::ImpossibleTravel { .. } => "impossible_travel",
            UseFinding::ConcurrentUse { .. } => "concurrent_use",
        }
    }

    /// Its weight.
    pub fn weight(&self, w: &AnomalyWeights) -> u8 {
        match self {
            UseFinding::ImpossibleTravel { .. } => w.travel,
            UseFinding::ConcurrentUse { .. } => w.concurrent,
        }
    }

    /// What it found, for the reason text.
    pub fn describe(&self) -> String {
        match self {
            UseFinding::ImpossibleTravel { from, km, secs } => {
                let speed = km * 3600.0 / (*secs).max(1) as f64;
                format!("impossible travel: {km:.0} km from {from} in {secs} s ({speed:.0} km/h)")
            }
            UseFinding::ConcurrentUse { other, secs } => {
                format!("concurrent use: {other} used {secs} s ago, between two uses from here")
            }
        }
    }
}

impl RecentUses {
    /// The history as stored (`None`: unreadable, treated as none).
    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The stored form.
    pub fn to_stored(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A history whose only use is a session's sign-in (`signals` at `at`).
    pub fn signed_in(signals: &ClientSignals, at: u64) -> Self {
        let mut h = Self::default();
        h.record(signals, at);
        h
    }

    /// What this request (`now`, at `at` Unix seconds) shows against the history.
    pub fn assess(&self, now: &ClientSignals, at: u64, w: &AnomalyWeights) -> Vec<UseFinding> {
        let Some(network) = &now.network else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let since = |u: &Use| at.saturating_sub(u.last);
        // Impossible travel: from the last located use on another network.
        if w.travel > 0
            && let Some(here) = now.location
            && let Some((u, there)) = self
                .uses
                .iter()
                .rev()
                .filter(|u| &u.network != network)
                .find_map(|u| u.location.map(|l| (u, l)))
        {
            let km = here.distance_km(there);
            let secs = since(u);
            let hours = secs.max(1) as f64 / 3600.0;
            if km >= MIN_TRAVEL_KM && km / hours > f64::from(w.max_speed_kmh) {
                found.push(UseFinding::ImpossibleTravel {
                    from: u.network.clone(),
                    km,
                    secs,
                });
            }
        }
        // Concurrent use: a distant network used since this one last was (later in the
        // list, whatever the clock's resolution), lately.
        if w.concurrent > 0
            && let Some(mine) = self.uses.iter().position(|u| &u.network == network)
            && let Some(other) = self
                .uses
                .iter()
                .skip(mine + 1)
                .rev()
                .find(|u| since(u) <= w.concurrent_window.as_secs() && distant(now, u, w))
        {
            found.push(UseFinding::ConcurrentUse {
                other: other.network.clone(),
                secs: since(other),
            });
        }
        found
    }

    /// Records this request's use and returns true when it is worth writing (a new
    /// network, a return to another one, or the last one again after a while); otherwise
    /// leaves the history as stored and returns false.
    pub fn record(&mut self, now: &ClientSignals, at: u64) -> bool {
        let Some(network) = &now.network else {
            return false;
        };
        if let Some(latest) = self.uses.last()
            && latest.network == *network
            && at.saturating_sub(latest.last) < REWRITE_AFTER_SECS
        {
            return false;
        }
        let fresh = Use {
            network: network.clone(),
            asn: now.asn,
            location: now.location,
            last: at,
        };
        self.uses.retain(|u| u.network != *network);
        self.uses.push(fresh);
        if self.uses.len() > MAX_USES {
            self.uses.remove(0);
        }
        true
    }
}

/// Whether `now` and `u` are distant networks (see the module's doc).
fn distant(now: &ClientSignals, u: &Use, w: &AnomalyWeights) -> bool {
    if let (Some(a), Some(b)) = (now.location, u.location) {
        return a.distance_km(b) >= f64::from(w.distant_km);
    }
    if let (Some(a), Some(b)) = (now.asn, u.asn) {
        return a != b;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(network: &str, asn: Option<u32>, location: Option<(&str, &str)>) -> ClientSignals {
        ClientSignals {
            network: Some(network.into()),
            asn,
            location: location.and_then(|(a, b)| GeoPoint::parse(a, b)),
            ..ClientSignals::default()
        }
    }

    const PARIS: (&str, &str) = ("48.8566", "2.3522");
    const VERSAILLES: (&str, &str) = ("48.8049", "2.1204");
    const SYDNEY: (&str, &str) = ("-33.8688", "151.2093");

    fn labels(found: &[UseFinding]) -> Vec<&'static str> {
        found.iter().map(UseFinding::label).collect()
    }

    #[test]
    fn a_journey_faster_than_flight_is_impossible_travel() {
        let w = AnomalyWeights::default();
        let paris = at("192.0.2.0/24", Some(3215), Some(PARIS));
        let sydney = at("198.51.100.0/24", Some(1221), Some(SYDNEY));
        let h = RecentUses::signed_in(&paris, 1_000);
        // Two hours later from Sydney: ~8,500 km/h.
        let found = h.assess(&sydney, 1_000 + 7_200, &w);
        assert_eq!(labels(&found), ["impossible_travel"]);
        assert!(
            found[0]
                .describe()
                .contains("km from 192.0.2.0/24 in 7200 s"),
            "{found:?}"
        );
        assert!(
            matches!(found[0], UseFinding::ImpossibleTravel { km, .. } if (16_900.0..17_000.0).contains(&km))
        );
        // A day later the flight was possible.
        assert!(h.assess(&sydney, 1_000 + 86_400, &w).is_empty());
        // Next door, however soon, is no journey; nor is an unlocated client.
        let versailles = at("203.0.113.0/24", Some(3215), Some(VERSAILLES));
        assert!(h.assess(&versailles, 1_001, &w).is_empty());
        let nowhere = at("198.51.100.0/24", Some(1221), None);
        assert!(h.assess(&nowhere, 1_001, &w).is_empty());
        // Weight 0: not looked for.
        let off = AnomalyWeights {
            travel: 0,
            ..AnomalyWeights::default()
        };
        assert!(h.assess(&sydney, 1_001, &off).is_empty());
    }

    #[test]
    fn taking_turns_between_distant_networks_is_concurrent_use_and_one_move_is_not() {
        let w = AnomalyWeights::default();
        let home = at("192.0.2.0/24", Some(3215), None);
        let mobile = at("198.51.100.0/24", Some(20_810), None);
        let mut h = RecentUses::signed_in(&home, 1_000);
        // One move (Wi-Fi to mobile data): nothing.
        assert!(h.assess(&mobile, 1_060, &w).is_empty());
        assert!(h.record(&mobile, 1_060));
        assert!(h.assess(&mobile, 1_070, &w).is_empty());
        // Back to the first network within the window: two clients taking turns.
        let found = h.assess(&home, 1_100, &w);
        assert_eq!(labels(&found), ["concurrent_use"]);
        assert_eq!(
            found[0],
            UseFinding::ConcurrentUse {
                other: "198.51.100.0/24".into(),
                secs: 40
            }
        );
        // Within one second too: the order of the uses decides, not their times.
        let mut quick = RecentUses::signed_in(&home, 1_000);
        quick.record(&mobile, 1_000);
        assert_eq!(labels(&quick.assess(&home, 1_000, &w)), ["concurrent_use"]);
        // After the window, a return is no longer concurrent.
        let late = 1_060 + w.concurrent_window.as_secs() + 1;
        assert!(h.assess(&home, late, &w).is_empty());
        // The same autonomous system, or two located networks close together, are not
        // distant: one provider's, one city's.
        let same_as = at("198.51.100.0/24", Some(3215), None);
        let mut h = RecentUses::signed_in(&home, 1_000);
        h.record(&same_as, 1_010);
        assert!(h.assess(&home, 1_020, &w).is_empty());
        let (a, b) = (
            at("192.0.2.0/24", Some(1), Some(PARIS)),
            at("203.0.113.0/24", Some(2), Some(VERSAILLES)),
        );
        let mut h = RecentUses::signed_in(&a, 1_000);
        h.record(&b, 1_010);
        assert!(h.assess(&a, 1_020, &w).is_empty());
    }

    #[test]
    fn the_history_is_written_on_change_and_keeps_the_latest_networks() {
        let net = |i: u8| at(&format!("10.0.{i}.0/24"), None, None);
        let mut h = RecentUses::signed_in(&net(0), 1_000);
        // The same network again soon: not worth a write; after a while, it is.
        assert!(!h.record(&net(0), 1_005));
        assert!(h.record(&net(0), 1_000 + REWRITE_AFTER_SECS));
        for i in 1..=5 {
            assert!(h.record(&net(i), 2_000 + u64::from(i)));
        }
        let kept: Vec<&str> = h.uses.iter().map(|u| u.network.as_str()).collect();
        assert_eq!(
            kept,
            ["10.0.2.0/24", "10.0.3.0/24", "10.0.4.0/24", "10.0.5.0/24"]
        );
        // A return to an older network moves it last and is written.
        assert!(h.record(&net(3), 2_010));
        assert_eq!(h.uses.last().unwrap().network, "10.0.3.0/24");
        assert_eq!(RecentUses::from_stored(&h.to_stored()), Some(h));
        // No network known: nothing to record or compare.
        let unknown = ClientSignals::default();
        let mut h = RecentUses::default();
        assert!(!h.record(&unknown, 1));
        assert!(h.assess(&unknown, 2, &AnomalyWeights::default()).is_empty());
    }
}
