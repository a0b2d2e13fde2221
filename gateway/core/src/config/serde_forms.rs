//! How the configuration model's non-serde field types (JSON values, header names and
//! values) are written in a snapshot ([`super::snapshot`]).

/// A JSON value stored as its text (postcard cannot deserialize self-describing values).
pub(crate) mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub(crate) fn serialize<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let text = String::deserialize(d)?;
        // From bytes, as every JSON the core reads: one reader (`SliceRead`) in a wasm build.
        serde_json::from_slice(text.as_bytes()).map_err(serde::de::Error::custom)
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
