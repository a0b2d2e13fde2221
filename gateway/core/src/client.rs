//! Who the client is: its IP address (from the peer, or from a trusted proxy's header) and
//! the country / ASN hints a trusted CDN adds. Headers are believed only when the peer is a
//! configured trusted proxy, so a client cannot choose its own address or country.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::{ClientConfig, IpNet};
use crate::model::PeerHints;

impl IpNet {
    /// Parses `addr/prefix` or a bare address (a host network). Host bits must be zero.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?,
        };
        let net = Self { addr, prefix };
        if net.masked(addr) != addr {
            return Err(format!(
                "`{text}` has host bits set (the network is {}/{prefix})",
                net.masked(addr)
            ));
        }
        Ok(net)
    }

    /// `ip` with the host bits of this prefix cleared.
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    /// True when `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub use crate::model::ClientInfo;

/// The connecting address an edge runtime put in `cfg.peer_header` (`spin-client-addr`:
/// `ip:port`, `[v6]:port` or a bare address), for runtimes that give it no other way; `None`
/// when unset, absent, repeated or unparsable (the peer is then unknown).
pub fn peer_from_header(cfg: &ClientConfig, headers: &HeaderMap) -> Option<IpAddr> {
    let name = cfg.peer_header.as_deref()?;
    let mut values = headers.get_all(name).iter();
    let value = values.next()?.to_str().ok()?.trim();
    if values.next().is_some() {
        return None;
    }
    value
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| value.parse::<IpAddr>())
        .ok()
        .map(canonical)
}

/// Resolves the client from the connection's `peer` and, when the peer is a trusted proxy,
/// the configured headers. In an address list (`X-Forwarded-For`) the right-most address
/// that is not itself a trusted proxy is the client: entries left of it are client-chosen.
pub fn client_info(cfg: &ClientConfig, peer: Option<IpAddr>, headers: &HeaderMap) -> ClientInfo {
    let peer = peer.map(canonical);
    let trusted = |ip: IpAddr| cfg.trusted_proxies.iter().any(|n| n.contains(ip));
    let Some(peer_ip) = peer else {
        return ClientInfo::default();
    };
    if !trusted(peer_ip) {
        return ClientInfo {
            ip: Some(peer_ip),
            ..ClientInfo::default()
        };
    }
    let header = |name: &Option<String>| -> Vec<&str> {
        name.as_deref()
            .map(|n| {
                headers
                    .get_all(n)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut ip = peer_ip;
    let listed: Vec<&str> = header(&cfg.ip_header)
        .into_iter()
        .flat_map(|v| v.split(','))
        .collect();
    for entry in listed.iter().rev() {
        match parse_forwarded_ip(entry) {
            Some(addr) => {
                ip = addr;
                if !trusted(addr) {
                    break;
                }
            }
            // An unparseable hop ends the trusted chain: stop at the last good one.
            None => break,
        }
    }
    let single = |name: &Option<String>| header(name).first().map(|v| v.trim().to_owned());
    let country = single(&cfg.country_header)
        .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(|c| c.to_ascii_uppercase())
        // Cloudflare's "unknown" and "Tor" markers are not countries.
        .filter(|c| c != "XX" && c != "T1");
    let asn = single(&cfg.asn_header).and_then(|a| {
        a.trim_start_matches("AS")
            .trim_start_matches("as")
            .parse()
            .ok()
    });
    let location = single(&cfg.latitude_header)
        .zip(single(&cfg.longitude_header))
        .and_then(|(lat, lon)| crate::geo::GeoPoint::parse(&lat, &lon));
    ClientInfo {
        ip: Some(ip),
        country,
        asn,
        location,
    }
}

/// `client` completed with what the runtime vouches for about the peer (`hints`), when the
/// client is that peer (no trusted proxy named another address) and no configured header
/// gave the country or the AS number.
pub fn with_peer_hints(
    mut client: ClientInfo,
    peer: Option<IpAddr>,
    hints: PeerHints,
) -> ClientInfo {
    if client.ip.is_none() || client.ip != peer.map(canonical) {
        return client;
    }
    if client.country.is_none() {
        client.country = hints
            .country
            .filter(|c| c.iter().all(u8::is_ascii_alphabetic))
            .map(|c| String::from_utf8_lossy(&c).to_ascii_uppercase())
            // Cloudflare's "unknown" and "Tor" markers are not countries.
            .filter(|c| c != "XX" && c != "T1");
    }
    if client.asn.is_none() {
        client.asn = hints.asn;
    }
    if client.location.is_none() {
        client.location = hints.location;
    }
    client
}

/// An address from a forwarding-list entry (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    e.rsplit_once(':')
        .and_then(|(a, _)| a.parse().ok())
        .map(canonical)
}

/// The client's network for per-network counting: IPv4 /24 or IPv6 /64.
pub fn network_of(ip: IpAddr) -> IpNet {
    let ip = canonical(ip);
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    let net = IpNet { addr: ip, prefix };
    IpNet {
        addr: net.masked(ip),
        prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cfg() -> ClientConfig {
        ClientConfig {
            trusted_proxies: vec![
                IpNet::parse("10.0.0.0/8").unwrap(),
                IpNet::parse("fd00::/8").unwrap(),
            ],
            ip_header: Some("x-forwarded-for".into()),
            country_header: Some("cf-ipcountry".into()),
            asn_header: Some("x-asn".into()),
            peer_header: Some("spin-client-addr".into()),
            latitude_header: Some("x-lat".into()),
            longitude_header: Some("x-lon".into()),
        }
    }

    #[test]
    fn a_runtime_peer_header_names_the_peer_once_or_not_at_all() {
        let peer = |pairs: &[(&'static str, &str)]| peer_from_header(&cfg(), &headers(pairs));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(peer(&[("spin-client-addr", "192.0.2.7:53124")]), Some(v4));
        assert_eq!(peer(&[("spin-client-addr", "192.0.2.7")]), Some(v4));
        assert_eq!(
            peer(&[("spin-client-addr", "[2001:db8::1]:443")]),
            Some("2001:db8::1".parse().unwrap())
        );
        // An IPv4-mapped address is the IPv4 one.
        assert_eq!(
            peer(&[("spin-client-addr", "[::ffff:192.0.2.7]:1")]),
            Some(v4)
        );
        assert_eq!(peer(&[]), None);
        assert_eq!(peer(&[("spin-client-addr", "nonsense")]), None);
        assert_eq!(
            peer(&[
                ("spin-client-addr", "192.0.2.7:1"),
                ("spin-client-addr", "192.0.2.8:1")
            ]),
            None
        );
        let unset = ClientConfig::default();
        assert_eq!(
            peer_from_header(&unset, &headers(&[("spin-client-addr", "192.0.2.7:1")])),
            None
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn networks_parse_contain_and_refuse_host_bits() {
        let n = IpNet::parse("192.168.0.0/16").unwrap();
        assert!(n.contains("192.168.44.1".parse().unwrap()));
        assert!(n.contains("::ffff:192.168.1.1".parse().unwrap()));
        assert!(!n.contains("192.169.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        assert!(
            IpNet::parse("192.168.0.1/16")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope").is_err());
        assert_eq!(IpNet::parse("::1").unwrap().prefix, 128);
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert_eq!(
            network_of("2001:db8:1:2:3:4:5:6".parse().unwrap()).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            network_of("203.0.113.77".parse().unwrap()).to_string(),
            "203.0.113.0/24"
        );
    }

    #[test]
    fn headers_count_only_from_trusted_proxies() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("cf-ipcountry", "de"),
            ("x-asn", "AS3320"),
            ("x-lat", "52.52"),
            ("x-lon", "13.4050"),
        ]);
        let direct = client_info(&cfg(), Some("198.51.100.9".parse().unwrap()), &h);
        assert_eq!(direct.ip, Some("198.51.100.9".parse().unwrap()));
        assert_eq!((direct.country, direct.location), (None, None));
        let proxied = client_info(&cfg(), Some("10.1.2.3".parse().unwrap()), &h);
        assert_eq!(proxied.ip, Some("6.6.6.6".parse().unwrap()));
        assert_eq!(proxied.country.as_deref(), Some("DE"));
        assert_eq!(proxied.asn, Some(3320));
        assert_eq!(
            proxied.location.map(|p| p.to_string()).as_deref(),
            Some("52.52,13.40")
        );
        // One coordinate alone is no location.
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-lat", "52.52")]);
        let half = client_info(&cfg(), Some("10.1.2.3".parse().unwrap()), &h);
        assert_eq!(half.location, None);
    }

    #[test]
    fn peer_hints_describe_only_the_peer_and_never_override_headers() {
        let amsterdam = crate::geo::GeoPoint::parse("52.37", "4.89");
        let hints = PeerHints {
            country: Some(*b"nl"),
            asn: Some(64500),
            location: amsterdam,
        };
        let peer: IpAddr = "198.51.100.9".parse().unwrap();
        let direct = client_info(&cfg(), Some(peer), &headers(&[]));
        let c = with_peer_hints(direct, Some(peer), hints);
        assert_eq!((c.country.as_deref(), c.asn), (Some("NL"), Some(64500)));
        assert_eq!(c.location, amsterdam);
        // Behind a trusted proxy the client is another address: the peer's hints are not its.
        let h = headers(&[("x-forwarded-for", "6.6.6.6")]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let c = with_peer_hints(client_info(&cfg(), Some(proxy), &h), Some(proxy), hints);
        assert_eq!((c.country, c.asn, c.location), (None, None, None));
        // A trusted proxy's own headers win; Cloudflare's markers are not countries.
        let h = headers(&[("cf-ipcountry", "de"), ("x-asn", "AS3320")]);
        let c = with_peer_hints(client_info(&cfg(), Some(proxy), &h), Some(proxy), hints);
        assert_eq!((c.country.as_deref(), c.asn), (Some("DE"), Some(3320)));
        let tor = PeerHints {
            country: Some(*b"T1"),
            ..PeerHints::default()
        };
        let c = with_peer_hints(
            client_info(&cfg(), Some(peer), &headers(&[])),
            Some(peer),
            tor,
        );
        assert_eq!(c.country, None);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.5, 10.0.0.7")]);
        let c = client_info(&cfg(), Some("10.0.0.1".parse().unwrap()), &h);
        assert_eq!(
            c.ip,
            Some("203.0.113.5".parse().unwrap()),
            "1.1.1.1 was chosen by the client"
        );
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        let c = client_info(&cfg(), Some("fd00::1".parse().unwrap()), &h);
        assert_eq!(c.ip, Some("2001:db8::1".parse().unwrap()));
        let h = headers(&[("x-forwarded-for", "garbage, 10.0.0.9")]);
        let c = client_info(&cfg(), Some("10.0.0.1".parse().unwrap()), &h);
        assert_eq!(c.ip, Some("10.0.0.9".parse().unwrap()));
        let h = headers(&[("cf-ipcountry", "XX")]);
        assert_eq!(
            client_info(&cfg(), Some("10.0.0.1".parse().unwrap()), &h).country,
            None
        );
    }
}
