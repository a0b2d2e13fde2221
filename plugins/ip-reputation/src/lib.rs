//! # ip-reputation
//!
//! A Portcullis risk plugin that scores requests by where they come from: static allow and
//! deny lists of IP prefixes (IPv4 and IPv6) and of autonomous system numbers.
//!
//! ## Precedence
//!
//! 1. **Prefixes, most specific first.** The client address is matched against every
//!    `allow` and `deny` prefix and the longest matching prefix decides: an allowed /32
//!    inside a denied /8 is allowed, a denied /24 inside that allowed /16 is denied again.
//!    When the very same prefix is on both lists, `allow` wins.
//! 2. **ASNs, only when no prefix matches.** `allow_asns` beats `deny_asns` (an ASN on both
//!    lists is allowed).
//! 3. Otherwise the request is allowed (score 0).
//!
//! A deny gets score `deny_score`, the suggested action `deny_action`, label `ip-deny` or
//! `asn-deny`, and a reason naming the matching prefix (`203.0.113.0/24`) or ASN (`AS64496`).
//! An allow scores 0 with a reason naming the allowing entry (so audit records show why).
//!
//! Entries are CIDR prefixes such as `10.0.0.0/8` or `2001:db8::/32`; a bare address means a
//! single host (/32 or /128). Host bits are accepted and masked (`10.1.2.3/8` is
//! `10.0.0.0/8`). A malformed entry stops the gateway at startup with an error naming the list,
//! the position and the entry. IPv4-mapped IPv6 client addresses (`::ffff:192.0.2.1`) are
//! matched as IPv4.
//!
//! ## Performance
//!
//! The lists are compiled once, in `new`, into one hash map per prefix length present (masked
//! network → verdict). A lookup probes only the lengths present, longest first, and stops at
//! the first hit: at most 33 probes for IPv4 and 129 for IPv6, typically far fewer. Lists of
//! 100,000 prefixes are fine; the configuration itself is held in the plugin's memory while
//! it starts, so raise the plugin's `memory_mb` (default 16) for lists beyond ~50,000 entries.
//!
//! ## Configuration
//!
//! | key           | default  | meaning                                                   |
//! |---------------|----------|-----------------------------------------------------------|
//! | `deny`        | `[]`     | prefixes to deny                                          |
//! | `allow`       | `[]`     | prefixes to allow (exceptions to `deny`, or trusted nets) |
//! | `deny_asns`   | `[]`     | ASNs to deny when no prefix matches                       |
//! | `allow_asns`  | `[]`     | ASNs to allow when no prefix matches (beats `deny_asns`)  |
//! | `deny_score`  | `100`    | score of a denied request (0–100)                         |
//! | `deny_action` | `"deny"` | suggested action: `allow`, `step-up`, `challenge` or `deny` |
//!
//! ```toml
//! [plugin.ip-reputation]
//! path = "plugins/ip_reputation.wasm"
//!
//! [plugin.ip-reputation.config]
//! deny = ["192.0.2.0/24", "198.51.100.0/24", "2001:db8:bad::/48"]
//! allow = ["192.0.2.10"]            # the office proxy inside a denied range
//! deny_asns = [64496]
//! allow_asns = [64511]
//! deny_score = 100
//! deny_action = "challenge"
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis_plugin::{Action, Assessment, Context, Host, RiskPlugin};
use serde::Deserialize;

/// Label of a request denied by a prefix.
pub const IP_LABEL: &str = "ip-deny";
/// Label of a request denied by its ASN.
pub const ASN_LABEL: &str = "asn-deny";

/// The plugin's `config` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prefixes to deny.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Prefixes to allow.
    #[serde(default)]
    pub allow: Vec<String>,
    /// ASNs to deny when no prefix matches.
    #[serde(default)]
    pub deny_asns: Vec<u32>,
    /// ASNs to allow when no prefix matches.
    #[serde(default)]
    pub allow_asns: Vec<u32>,
    /// Score of a denied request (default 100).
    #[serde(default = "default_deny_score")]
    pub deny_score: u8,
    /// Suggested action for a denied request (default `deny`).
    #[serde(default = "default_deny_action")]
    pub deny_action: String,
}

fn default_deny_score() -> u8 {
    100
}

fn default_deny_action() -> String {
    "deny".to_owned()
}

/// Which list an entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The `allow` list.
    Allow,
    /// The `deny` list.
    Deny,
}

/// The prefix that decided a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    /// The network address (host bits zero).
    pub network: IpAddr,
    /// The prefix length.
    pub len: u8,
    /// The list it is on.
    pub verdict: Verdict,
}

impl fmt::Display for PrefixMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

/// An address family's key: the address as an unsigned integer.
trait Key: Copy + Eq + Hash {
    /// Address width in bits.
    const WIDTH: u8;
    /// `self` with all but the first `len` bits cleared.
    fn mask(self, len: u8) -> Self;
}

impl Key for u32 {
    const WIDTH: u8 = 32;
    fn mask(self, len: u8) -> Self {
        self & u32::MAX
            .checked_shl(u32::from(Self::WIDTH.saturating_sub(len)))
            .unwrap_or(0)
    }
}

impl Key for u128 {
    const WIDTH: u8 = 128;
    fn mask(self, len: u8) -> Self {
        self & u128::MAX
            .checked_shl(u32::from(Self::WIDTH.saturating_sub(len)))
            .unwrap_or(0)
    }
}

/// A fast hasher for integer keys. The keys come from the operator's configuration, so
/// SipHash's protection against chosen keys buys nothing here; this one is a multiply-xor
/// mix with a strong finaliser (good high and low bits for the table's bucket and tag).
#[derive(Default, Clone, Copy)]
struct PrefixHasher(u64);

impl PrefixHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(31);
    }
}

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        // MurmurHash3's fmix64.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (dst, src) in word.iter_mut().zip(chunk) {
                *dst = *src;
            }
            self.mix(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
    fn write_u128(&mut self, n: u128) {
        self.mix(n as u64);
        self.mix((n >> 64) as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<PrefixHasher>>;

/// One address family's prefixes: a map per prefix length present, longest first.
#[derive(Clone, Debug)]
struct Family<K: Key> {
    levels: Vec<(u8, FastMap<K, Verdict>)>,
}

impl<K: Key> Family<K> {
    fn build(entries: Vec<(K, u8, Verdict)>) -> Self {
        let mut by_len: Vec<FastMap<K, Verdict>> = Vec::new();
        by_len.resize_with(usize::from(K::WIDTH) + 1, FastMap::default);
        for (network, len, verdict) in entries {
            if let Some(map) = by_len.get_mut(usize::from(len)) {
                map.entry(network.mask(len))
                    .and_modify(|v| {
                        if verdict == Verdict::Allow {
                            *v = Verdict::Allow;
                        }
                    })
                    .or_insert(verdict);
            }
        }
        let mut levels: Vec<(u8, FastMap<K, Verdict>)> = by_len
            .into_iter()
            .zip(0u8..)
            .filter(|(map, _)| !map.is_empty())
            .map(|(mut map, len)| {
                map.shrink_to_fit();
                (len, map)
            })
            .collect();
        levels.reverse();
        Self { levels }
    }

    fn lookup(&self, address: K) -> Option<(K, u8, Verdict)> {
        self.levels.iter().find_map(|(len, map)| {
            let network = address.mask(*len);
            map.get(&network).map(|v| (network, *len, *v))
        })
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|(_, m)| m.len()).sum()
    }
}

/// Parses one list entry: `address/len` or a bare address. Host bits are kept (the table
/// masks them).
pub fn parse_prefix(entry: &str) -> Result<(IpAddr, u8), String> {
    let entry = entry.trim();
    let (addr, len) = match entry.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (entry, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(text) => {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("prefix length {text:?} is not a number"));
            }
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            text.parse::<u16>()
                .ok()
                .filter(|len| *len <= u16::from(max))
                .and_then(|len| u8::try_from(len).ok())
                .ok_or_else(|| format!("prefix length {text} is over {max} for {family}"))?
        }
    };
    Ok((addr, len))
}

/// The compiled `allow` and `deny` prefix lists with longest-prefix-match lookup.
#[derive(Clone, Debug)]
pub struct PrefixTable {
    v4: Family<u32>,
    v6: Family<u128>,
}

impl PrefixTable {
    /// Compiles the lists; an error names the list, position and entry of the first bad one.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, String> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (list, entries, verdict) in [
            ("deny", deny, Verdict::Deny),
            ("allow", allow, Verdict::Allow),
        ] {
            for (i, entry) in entries.iter().enumerate() {
                let (addr, len) =
                    parse_prefix(entry).map_err(|e| format!("{list}[{i}] {entry:?}: {e}"))?;
                match addr {
                    IpAddr::V4(a) => v4.push((u32::from(a), len, verdict)),
                    IpAddr::V6(a) => v6.push((u128::from(a), len, verdict)),
                }
            }
        }
        Ok(Self {
            v4: Family::build(v4),
            v6: Family::build(v6),
        })
    }

    /// The most specific prefix containing `ip`, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<PrefixMatch> {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                self.v4
                    .lookup(u32::from(a))
                    .map(|(network, len, verdict)| PrefixMatch {
                        network: IpAddr::V4(Ipv4Addr::from(network)),
                        len,
                        verdict,
                    })
            }
            IpAddr::V6(a) => self
                .v6
                .lookup(u128::from(a))
                .map(|(network, len, verdict)| PrefixMatch {
                    network: IpAddr::V6(Ipv6Addr::from(network)),
                    len,
                    verdict,
                }),
        }
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when there are no prefixes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The plugin.
#[derive(Clone, Debug)]
pub struct IpReputation {
    table: PrefixTable,
    allow_asns: HashSet<u32>,
    deny_asns: HashSet<u32>,
    deny_score: u8,
    deny_action: Action,
}

impl IpReputation {
    /// The most specific prefix containing `ip`, if any (what decides before ASNs).
    pub fn lookup(&self, ip: IpAddr) -> Option<PrefixMatch> {
        self.table.lookup(ip)
    }

    /// The compiled prefix table.
    pub fn table(&self) -> &PrefixTable {
        &self.table
    }

    fn deny(&self, reason: String, label: &str) -> Assessment {
        Assessment::score(self.deny_score, reason)
            .label(label)
            .action(self.deny_action)
    }
}

fn parse_action(name: &str) -> Result<Action, String> {
    match name {
        "allow" => Ok(Action::Allow),
        "step-up" => Ok(Action::StepUp),
        "challenge" => Ok(Action::Challenge),
        "deny" => Ok(Action::Deny),
        other => Err(format!(
            "ip-reputation: unknown deny_action {other:?}; use \"allow\", \"step-up\", \"challenge\" or \"deny\""
        )),
    }
}

impl RiskPlugin for IpReputation {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.deny_score > 100 {
            return Err(format!(
                "ip-reputation: deny_score must be between 0 and 100, got {}",
                config.deny_score
            ));
        }
        let deny_action = parse_action(&config.deny_action)?;
        let table = PrefixTable::new(&config.allow, &config.deny)
            .map_err(|e| format!("ip-reputation: {e}"))?;
        Ok(Self {
            table,
            allow_asns: config.allow_asns.into_iter().collect(),
            deny_asns: config.deny_asns.into_iter().collect(),
            deny_score: config.deny_score,
            deny_action,
        })
    }

    fn assess(&self, ctx: &Context, _host: &mut dyn Host) -> Assessment {
        if let Some(m) = ctx.client_ip.and_then(|ip| self.table.lookup(ip)) {
            return match m.verdict {
                Verdict::Allow => Assessment::score(0, format!("client in {m} (allow list)")),
                Verdict::Deny => self.deny(format!("client in {m} (deny list)"), IP_LABEL),
            };
        }
        if let Some(asn) = ctx.asn {
            if self.allow_asns.contains(&asn) {
                return Assessment::score(0, format!("AS{asn} (allow list)"));
            }
            if self.deny_asns.contains(&asn) {
                return self.deny(format!("AS{asn} (deny list)"), ASN_LABEL);
            }
        }
        Assessment::allow()
    }
}

portcullis_plugin::export_plugin!(IpReputation);
