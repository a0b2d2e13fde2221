//! A client's approximate location, as a CDN geolocates its address (Cloudflare's
//! `request.cf.latitude` / `longitude`, CloudFront's `CloudFront-Viewer-Latitude` /
//! `-Longitude`, or any trusted proxy's headers), and the great-circle distance between two
//! of them: what the `session_anomaly` check's impossible-travel and concurrent-use rules
//! measure ([`crate::recent_uses`]).

use serde::{Deserialize, Serialize};

/// A point on Earth in units of 10⁻⁴ degree (about 11 m: finer than any address
/// geolocation), so that signals holding one stay comparable with `Eq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude, −900 000 (south pole) to 900 000.
    pub lat_e4: i32,
    /// Longitude, −1 800 000 to 1 800 000.
    pub lon_e4: i32,
}

/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

impl GeoPoint {
    /// The point of decimal-degree texts (`"48.8566"`, `"-0.1278"`); `None` for anything
    /// else, a value out of range, or `0,0` (what geolocation databases answer for
    /// "unknown").
    pub fn parse(lat: &str, lon: &str) -> Option<Self> {
        let degrees = |s: &str, max: f64| -> Option<i32> {
            let s = s.trim();
            if s.is_empty() || s.len() > 24 {
                return None;
            }
            let v: f64 = s.parse().ok()?;
            // `as` saturates, and the range check keeps it far inside i32.
            (v.is_finite() && v.abs() <= max).then(|| (v * 10_000.0).round() as i32)
        };
        let p = Self {
            lat_e4: degrees(lat, 90.0)?,
            lon_e4: degrees(lon, 180.0)?,
        };
        (p.lat_e4 != 0 || p.lon_e4 != 0).then_some(p)
    }

    /// The great-circle (haversine) distance to `other`, km.
    pub fn distance_km(self, other: GeoPoint) -> f64 {
        let rad = |e4: i32| (f64::from(e4) / 10_000.0).to_radians();
        let (lat1, lat2) = (rad(self.lat_e4), rad(other.lat_e4));
        let dlat = lat2 - lat1;
        let dlon = rad(other.lon_e4) - rad(self.lon_e4);
        let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
    }
}

impl std::fmt::Display for GeoPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2},{:.2}",
            f64::from(self.lat_e4) / 10_000.0,
            f64::from(self.lon_e4) / 10_000.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: &str, lon: &str) -> GeoPoint {
        GeoPoint::parse(lat, lon).unwrap()
    }

    #[test]
    fn distances_between_cities_are_great_circle_kilometres() {
        let paris = at("48.8566", "2.3522");
        let london = at("51.5074", "-0.1278");
        let sydney = at("-33.8688", "151.2093");
        let near = |d: f64, want: f64| (d - want).abs() < want * 0.01;
        assert!(
            near(paris.distance_km(london), 343.5),
            "{}",
            paris.distance_km(london)
        );
        assert!(
            near(paris.distance_km(sydney), 16_960.0),
            "{}",
            paris.distance_km(sydney)
        );
        assert_eq!(paris.distance_km(paris), 0.0);
        // Across the antimeridian: Fiji to Samoa is ~1,150 km, not ~38,000.
        let d = at("-18.1", "178.4").distance_km(at("-13.8", "-171.8"));
        assert!((1_000.0..1_300.0).contains(&d), "{d}");
    }

    #[test]
    fn only_coordinates_on_earth_are_points() {
        assert_eq!(at("48.8566", "2.3522").to_string(), "48.86,2.35");
        for (lat, lon) in [
            ("91", "0"),
            ("0", "180.5"),
            ("NaN", "1"),
            ("inf", "1"),
            ("", "1"),
            ("1", " "),
            ("0", "0"),
            ("0.0", "-0.0"),
            ("4e1", "x"),
        ] {
            assert_eq!(GeoPoint::parse(lat, lon), None, "{lat},{lon}");
        }
        assert_eq!(
            GeoPoint::parse(" -90 ", "180"),
            Some(GeoPoint {
                lat_e4: -900_000,
                lon_e4: 1_800_000
            })
        );
    }
}
