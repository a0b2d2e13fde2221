//! A small deployment the request-level targets decide against: one HMAC issuer, protected
//! and public routes, a host-specific route and a gateway-token-free identity setup.

use std::sync::OnceLock;

use portcullis_core::{Config, MapFiles};

/// The fuzzed issuer's shared secret (48 bytes).
pub const SECRET: [u8; 48] = [7; 48];

const CONFIG: &str = r#"
[[issuer]]
name = "internal"
issuer = "https://auth.internal"
hmac_secret_file = "hs.key"
audiences = ["api://shop"]
algorithms = ["HS256"]

[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:9101"]

[residency]
missing = "eu"
anonymous = "eu"

[[route]]
path = "/api/orders"
scopes_any = ["orders:read"]

[[route]]
path = "/api/admin"
host = "admin.example.com"
scopes_all = ["admin"]

[[route]]
path = "/public"
auth = "public"

[identity]
strip = ["x-user-*"]
headers = { "x-user-id" = "sub" }

[audit]
subject_key_file = "audit.key"
"#;

/// The loaded configuration (loading must succeed: a failure is a bug in the target).
pub fn config() -> &'static Config {
    static CONFIG_CELL: OnceLock<Config> = OnceLock::new();
    CONFIG_CELL.get_or_init(|| {
        let files = MapFiles::default()
            .with("hs.key", portcullis_core::b64::encode(&SECRET))
            .with("audit.key", portcullis_core::b64::encode(&[9; 32]));
        match portcullis_core::config::load(CONFIG, "fuzz.toml", &files) {
            Ok(c) => c,
            Err(e) => panic!("fuzz configuration: {e}"),
        }
    })
}
