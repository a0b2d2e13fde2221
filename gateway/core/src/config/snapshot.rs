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
