//! A validated configuration as compact bytes (postcard), so a wasm gateway instance gets
//! its configuration in microseconds instead of parsing and validating TOML per instance.
//! A snapshot is only ever produced from a configuration that passed [`super::load`], and
//! carries this crate's version: a snapshot from another version is refused.

use super::Config;

const MAGIC: &[u8; 4] = b"PCS1";

impl Config {
    /// The snapshot of this configuration.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(MAGIC);
        let version = env!("CARGO_PKG_VERSION").as_bytes();
        out.push(u8::try_from(version.len()).unwrap_or(0));
        out.extend_from_slice(version);
        postcard::to_extend::<_, Vec<u8>>(self, out).unwrap_or_default()
    }

    /// Restores a configuration from [`to_snapshot`](Self::to_snapshot) bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Config, String> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a configuration snapshot")?;
        let (&len, rest) = rest.split_first().ok_or("truncated snapshot")?;
        let (version, body) = rest
            .split_at_checked(usize::from(len))
            .ok_or("truncated snapshot")?;
        if version != env!("CARGO_PKG_VERSION").as_bytes() {
            return Err(format!(
                "snapshot from portcullis-core {}, this is {}",
                String::from_utf8_lossy(version),
                env!("CARGO_PKG_VERSION")
            ));
        }
        postcard::from_bytes(body).map_err(|e| format!("snapshot: {e}"))
    }
}

/// A JSON value stored as its text (postcard cannot deserialize self-describing values).
pub(crate) mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub(crate) fn serialize<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// Header names stored as strings.
pub(crate) mod named_headers {
    use http::HeaderName;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::config::IdentitySource;

    pub(crate) fn serialize<S: Serializer>(
        v: &[(HeaderName, IdentitySource)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<(&str, &IdentitySource)> =
            v.iter().map(|(n, src)| (n.as_str(), src)).collect();
        list.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(HeaderName, IdentitySource)>, D::Error> {
        let list = Vec::<(String, IdentitySource)>::deserialize(d)?;
        list.into_iter()
            .map(|(n, src)| {
                HeaderName::from_bytes(n.as_bytes())
                    .map(|h| (h, src))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// A header name stored as a string.
pub(crate) mod header {
    use http::HeaderName;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
        let text = String::deserialize(d)?;
        HeaderName::from_bytes(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// An optional header name stored as a string.
pub(crate) mod opt_header {
    use http::HeaderName;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        v: &Option<HeaderName>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_ref().map(HeaderName::as_str).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<HeaderName>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| HeaderName::from_bytes(t.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}
