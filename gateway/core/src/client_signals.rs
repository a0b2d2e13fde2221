//! What one request tells about its client — its network, autonomous system, country,
//! browser and platform — recorded in a browser session when it signs in and compared on
//! each later request by the `session_anomaly` check ([`crate::bot`]): a session cookie
//! copied to another client shows up as changes, each weighted by `[session.anomaly]`.
//!
//! Only what both sides know is compared: a country a CDN did not send, or a platform the
//! browser did not hint, is never a change.

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::config::AnomalyWeights;
use crate::model::ClientInfo;

/// The client as one request shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSignals {
    /// The network: the IPv4 /24 or IPv6 /64 of the client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The autonomous system number, from a trusted CDN or proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// The ISO 3166-1 country, from a trusted CDN or proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The browser family and major version from `User-Agent` (`Chrome/131`), or the first
    /// product of another client (`curl/8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The platform the browser hints (`Sec-CH-UA-Platform`: `Windows`, `Android`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Where a trusted CDN or proxy geolocates the client (compared with the recent uses,
    /// [`crate::recent_uses`], not with the sign-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<crate::geo::GeoPoint>,
}

/// One way a request's client differs from the session's sign-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// Another /24 or /64.
    Network,
    /// Another autonomous system.
    Asn,
    /// Another country.
    Country,
    /// Another browser family or major version.
    Agent,
    /// Another platform.
    Platform,
}

impl Change {
    /// Every change, in the order findings are listed.
    pub const ALL: [Change; 5] = [
        Change::Network,
        Change::Asn,
        Change::Country,
        Change::Agent,
        Change::Platform,
    ];

    /// Its name in labels (`changed:<name>`) and in `[session.anomaly]`.
    pub fn name(self) -> &'static str {
        match self {
            Change::Network => "network",
            Change::Asn => "asn",
            Change::Country => "country",
            Change::Agent => "agent",
            Change::Platform => "platform",
        }
    }

    /// Its weight.
    pub fn weight(self, w: &AnomalyWeights) -> u8 {
        match self {
            Change::Network => w.network,
            Change::Asn => w.asn,
            Change::Country => w.country,
            Change::Agent => w.agent,
            Change::Platform => w.platform,
        }
    }
}

/// Longest platform hint kept (a hint is a short name; anything longer is not one).
const MAX_PLATFORM: usize = 32;

impl ClientSignals {
    /// What `client` (resolved through `[client]`) and the request's headers show.
    pub fn observe(client: &ClientInfo, headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            network: client
                .ip
                .map(|ip| crate::client::network_of(ip).to_string()),
            asn: client.asn,
            country: client.country.clone(),
            agent: text("user-agent").and_then(agent),
            platform: text("sec-ch-ua-platform")
                .map(|p| p.trim().trim_matches('"').to_owned())
                .filter(|p| !p.is_empty() && p.len() <= MAX_PLATFORM),
            location: client.location,
        }
    }

    /// How `now` differs from `self` (the sign-in), where both are known.
    pub fn changes(&self, now: &ClientSignals) -> Vec<Change> {
        fn differs<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            matches!((a, b), (Some(a), Some(b)) if a != b)
        }
        Change::ALL
            .into_iter()
            .filter(|c| match c {
                Change::Network => differs(&self.network, &now.network),
                Change::Asn => differs(&self.asn, &now.asn),
                Change::Country => differs(&self.country, &now.country),
                Change::Agent => differs(&self.agent, &now.agent),
                Change::Platform => differs(&self.platform, &now.platform),
            })
            .collect()
    }
}

/// The browser family and major version of a `User-Agent`: the browsers that name another
/// one for compatibility first (Edge and Opera say `Chrome/`, Chrome says `Safari/`), then
/// Firefox, Chrome, Safari (its `Version/`); any other client by its first product
/// (`curl/8`). `None` for an empty one.
pub fn agent(ua: &str) -> Option<String> {
    let major = |v: &str| -> String {
        v.split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default()
            .chars()
            .take(8)
            .collect()
    };
    let after = |token: &str| ua.split_once(token).map(|(_, rest)| major(rest));
    for (token, family) in [
        ("Edg/", "Edge"),
        ("EdgA/", "Edge"),
        ("EdgiOS/", "Edge"),
        ("OPR/", "Opera"),
        ("SamsungBrowser/", "Samsung"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("HeadlessChrome/", "HeadlessChrome"),
        ("CriOS/", "Chrome"),
        ("Chrome/", "Chrome"),
    ] {
        if let Some(v) = after(token) {
            return Some(format!("{family}/{v}"));
        }
    }
    if ua.contains("Safari/")
        && let Some(v) = after("Version/")
    {
        return Some(format!("Safari/{v}"));
    }
    let first = ua.split_whitespace().next()?;
    let (name, version) = first.split_once('/').unwrap_or((first, ""));
    let name: String = name.chars().take(32).collect();
    Some(format!("{name}/{}", major(version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_named_by_family_and_major_version() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                "Chrome/131",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86",
                "Edge/131",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
                "Firefox/133",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                "Safari/18",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/142.0.0.0 Safari/537.36",
                "HeadlessChrome/142",
            ),
            ("curl/8.5.0", "curl/8"),
            ("okhttp/4.12.0", "okhttp/4"),
        ];
        for (ua, want) in cases {
            assert_eq!(agent(ua).as_deref(), Some(want), "{ua}");
        }
        assert_eq!(agent("  "), None);
    }

    #[test]
    fn only_what_both_sides_know_is_compared() {
        let login = ClientSignals {
            network: Some("192.0.2.0/24".into()),
            asn: Some(64496),
            country: None,
            agent: Some("Chrome/131".into()),
            platform: Some("Windows".into()),
            location: None,
        };
        assert!(login.changes(&login).is_empty());
        let now = ClientSignals {
            network: Some("198.51.100.0/24".into()),
            asn: None,
            country: Some("FR".into()),
            agent: Some("curl/8".into()),
            platform: Some("Windows".into()),
            location: crate::geo::GeoPoint::parse("48.85", "2.35"),
        };
        assert_eq!(login.changes(&now), [Change::Network, Change::Agent]);
    }

    #[test]
    fn a_request_is_observed_through_the_resolved_client() {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "curl/8.5.0".parse().unwrap());
        headers.insert("sec-ch-ua-platform", "\"Android\"".parse().unwrap());
        let client = ClientInfo {
            ip: Some("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            country: Some("DE".into()),
            asn: Some(3320),
            location: None,
        };
        let s = ClientSignals::observe(&client, &headers);
        assert_eq!(s.network.as_deref(), Some("2001:db8:1:2::/64"));
        assert_eq!((s.asn, s.country.as_deref()), (Some(3320), Some("DE")));
        assert_eq!(s.agent.as_deref(), Some("curl/8"));
        assert_eq!(s.platform.as_deref(), Some("Android"));
    }
}
