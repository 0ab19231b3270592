//! Which addresses the delivery client must refuse to connect to, and the operator's
//! allow-list that overrides that.
//!
//! A webhook URL is chosen by a customer, so without this a customer could make Sluice POST
//! to the cloud metadata service, a database on the private network, or localhost (SSRF).
//! The check runs on the address actually dialled, after DNS resolution, so a name that
//! resolves to a private address is caught too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// Why `ip` must not be dialled by default, or `None` if it is an ordinary public address.
///
/// IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address inside,
/// since that is where the packets end up.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

const CLOUD_METADATA: &str = "cloud metadata";
const RESERVED: &str = "reserved";

/// IPv4 ranges, most specific first, since the first match names the reason.
const V4_RULES: &[(Ipv4Addr, u8, &str)] = &[
    // AWS, GCP, Azure, Oracle and others serve instance metadata and credentials here.
    (Ipv4Addr::new(169, 254, 169, 254), 32, CLOUD_METADATA),
    // Alibaba Cloud's metadata service.
    (Ipv4Addr::new(100, 100, 100, 200), 32, CLOUD_METADATA),
    // Azure's WireServer: a public-looking address that only answers inside Azure.
    (Ipv4Addr::new(168, 63, 129, 16), 32, CLOUD_METADATA),
    (Ipv4Addr::new(0, 0, 0, 0), 32, "unspecified"),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network (0.0.0.0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (CGNAT)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast (deprecated)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, RESERVED),
];

/// IPv6 ranges that are refused outright, most specific first. Ranges that embed an IPv4
/// address are handled before this table.
const V6_RULES: &[(Ipv6Addr, u8, &str)] = &[
    // AWS's IPv6 instance metadata endpoint.
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        CLOUD_METADATA,
    ),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        "Teredo tunnelling",
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        "benchmarking",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique-local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local (deprecated)",
    ),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let addr = u32::from(ip);
    V4_RULES
        .iter()
        .find(|(network, len, _)| v4_in(addr, u32::from(*network), *len))
        .map(|(_, _, reason)| *reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(embedded) = embedded_v4(ip) {
        return v4_reason(embedded);
    }
    let addr = u128::from(ip);
    if let Some((_, _, reason)) = V6_RULES
        .iter()
        .find(|(network, len, _)| v6_in(addr, u128::from(*network), *len))
    {
        return Some(reason);
    }
    // Only 2000::/3 is allocated for global unicast; anything else is unroutable.
    if !v6_in(addr, 0x2000 << 112, 3) {
        return Some(RESERVED);
    }
    None
}

/// The IPv4 address inside an IPv6 address that carries one, for the forms whose traffic
/// ends up at that IPv4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let addr = u128::from(ip);
    let low32 = Ipv4Addr::from((addr & 0xffff_ffff) as u32);
    // IPv4-mapped, ::ffff:0:0/96.
    if v6_in(addr, 0xffff << 32, 96) {
        return Some(low32);
    }
    // IPv4-translated (SIIT), ::ffff:0:0:0/96.
    if v6_in(addr, 0xffff << 48, 96) {
        return Some(low32);
    }
    // IPv4-compatible (deprecated), ::/96, except :: and ::1 which the table names.
    if v6_in(addr, 0, 96) && addr > 1 {
        return Some(low32);
    }
    // NAT64 well-known prefix, 64:ff9b::/96.
    if v6_in(addr, 0x0064_ff9b << 96, 96) {
        return Some(low32);
    }
    // 6to4, 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if v6_in(addr, 0x2002 << 112, 16) {
        return Some(Ipv4Addr::from(((addr >> 80) & 0xffff_ffff) as u32));
    }
    None
}

fn v4_in(addr: u32, network: u32, len: u8) -> bool {
    match len {
        0 => true,
        1..=32 => (addr ^ network) >> (32 - u32::from(len)) == 0,
        _ => false,
    }
}

fn v6_in(addr: u128, network: u128, len: u8) -> bool {
    match len {
        0 => true,
        1..=128 => (addr ^ network) >> (128 - u32::from(len)) == 0,
        _ => false,
    }
}

/// One allow-list entry: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len`, `v6::addr/len`, or a single address (a full-length prefix).
    /// Host bits after the prefix must be zero, which catches `10.0.0.1/8` typos.
    pub fn parse(entry: &str) -> Result<Cidr, AllowListError> {
        let trimmed = entry.trim();
        let (address, len) = match trimmed.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (trimmed, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| AllowListError::InvalidAddress {
                entry: short(trimmed),
            })?;
        let max = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix_len = match len {
            None => max,
            Some(len) => parse_prefix_len(len)
                .filter(|len| *len <= max)
                .ok_or_else(|| AllowListError::InvalidPrefixLength {
                    entry: short(trimmed),
                    max,
                })?,
        };
        let cidr = Cidr {
            network,
            prefix_len,
        };
        let masked = cidr.masked();
        if masked.network != network {
            return Err(AllowListError::HostBitsSet {
                entry: short(trimmed),
                suggestion: masked.to_string(),
            });
        }
        Ok(cidr.canonical())
    }

    /// Whether `ip` falls in this range. An IPv4-mapped IPv6 address counts as its IPv4
    /// address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                v4_in(u32::from(ip), u32::from(network), self.prefix_len)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                v6_in(u128::from(ip), u128::from(network), self.prefix_len)
            }
            _ => false,
        }
    }

    /// The same prefix with host bits cleared.
    fn masked(self) -> Cidr {
        let network = match self.network {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Cidr { network, ..self }
    }

    /// An entry written in IPv4-mapped form (`::ffff:10.0.0.0/104`) becomes the IPv4 entry
    /// it means, so it matches the IPv4 addresses that `contains` compares it with.
    fn canonical(self) -> Cidr {
        if let IpAddr::V6(v6) = self.network
            && self.prefix_len >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Cidr {
                network: IpAddr::V4(v4),
                prefix_len: self.prefix_len - 96,
            };
        }
        self
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Addresses an operator has allowed despite [`forbidden_reason`], such as a test receiver on
/// localhost or an internal service on the private network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Cidr>,
}

/// Why an allow-list entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AllowListError {
    #[error("allow-list entry `{entry}` is not an IP address or CIDR range such as `10.0.0.0/8`")]
    InvalidAddress { entry: String },
    #[error("allow-list entry `{entry}` has an invalid prefix length; use 0 to {max}")]
    InvalidPrefixLength { entry: String, max: u8 },
    #[error(
        "allow-list entry `{entry}` has bits set after the prefix; did you mean `{suggestion}`?"
    )]
    HostBitsSet { entry: String, suggestion: String },
}

impl AllowList {
    /// Parses CIDR ranges and single addresses, IPv4 or IPv6.
    pub fn parse(entries: &[String]) -> Result<Self, AllowListError> {
        let entries = entries
            .iter()
            .map(|entry| Cidr::parse(entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { entries })
    }

    /// Whether some entry covers `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.entries.iter().any(|entry| entry.contains(ip))
    }

    /// Why `ip` must not be dialled under this allow-list: [`forbidden_reason`], unless an
    /// entry allows it.
    pub fn denied_reason(&self, ip: IpAddr) -> Option<&'static str> {
        let reason = forbidden_reason(ip)?;
        if self.allows(ip) { None } else { Some(reason) }
    }

    /// The parsed entries.
    pub fn entries(&self) -> &[Cidr] {
        &self.entries
    }

    /// Whether the list has no entries (the default: nothing special is allowed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_prefix_len(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An entry shortened for an error message, since config values can be arbitrarily long.
fn short(entry: &str) -> String {
    entry
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbidden_addresses() {
        let cases = [
            // IPv4.
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("this network (0.0.0.0/8)")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.0.0.1", Some("private")),
            ("10.255.255.255", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.168.1.1", Some("private")),
            ("169.254.0.1", Some("link-local")),
            ("169.254.169.254", Some("cloud metadata")),
            ("169.254.169.253", Some("link-local")),
            ("100.100.100.200", Some("cloud metadata")),
            ("168.63.129.16", Some("cloud metadata")),
            ("100.64.0.1", Some("shared address space (CGNAT)")),
            ("100.127.255.255", Some("shared address space (CGNAT)")),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.255", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("240.0.0.1", Some("reserved")),
            ("255.255.255.254", Some("reserved")),
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("198.20.0.0", None),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.9", Some("documentation")),
            ("192.0.0.8", Some("IETF protocol assignments")),
            ("192.88.99.1", Some("6to4 relay anycast (deprecated)")),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.216.34", None),
            ("11.0.0.0", None),
            ("223.255.255.255", None),
            // IPv6.
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fe80::1", Some("link-local")),
            ("febf:ffff::1", Some("link-local")),
            ("fec0::1", Some("site-local (deprecated)")),
            ("fc00::1", Some("unique-local")),
            ("fd12:3456::1", Some("unique-local")),
            ("fd00:ec2::254", Some("cloud metadata")),
            ("fd00:ec2::253", Some("unique-local")),
            ("ff02::1", Some("multicast")),
            ("2001:db8::1", Some("documentation")),
            ("3fff:fff::1", Some("documentation")),
            ("2001::1", Some("Teredo tunnelling")),
            ("2001:2::1", Some("benchmarking")),
            ("2001:10::1", Some("IETF protocol assignments")),
            ("100::1", Some("discard-only")),
            ("64:ff9b:1::1", Some("local-use NAT64")),
            ("4000::1", Some("reserved")),
            ("1::1", Some("reserved")),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
            ("2001:200::1", None),
            // IPv4 inside IPv6 is judged by the IPv4 address.
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("::ffff:8.8.8.8", None),
            ("::ffff:0:127.0.0.1", Some("loopback")),
            ("::127.0.0.1", Some("loopback")),
            ("::10.0.0.1", Some("private")),
            ("::8.8.8.8", None),
            ("::2", Some("this network (0.0.0.0/8)")),
            ("64:ff9b::127.0.0.1", Some("loopback")),
            ("64:ff9b::169.254.169.254", Some("cloud metadata")),
            ("64:ff9b::8.8.8.8", None),
            ("2002:7f00:1::", Some("loopback")),
            ("2002:a9fe:a9fe::1", Some("cloud metadata")),
            ("2002:c0a8:101::1", Some("private")),
            ("2002:808:808::1", None),
        ];
        for (address, want) in cases {
            assert_eq!(forbidden_reason(ip(address)), want, "address {address}");
        }
    }

    #[test]
    fn allow_list_matching() {
        let list = AllowList::parse(&[
            "127.0.0.1".to_owned(),
            " 10.0.0.0/8 ".to_owned(),
            "fd00::/8".to_owned(),
            "::1".to_owned(),
            "192.168.1.0/24".to_owned(),
            "::ffff:172.16.0.0/108".to_owned(),
        ])
        .unwrap();
        let cases = [
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("10.1.2.3", true),
            ("11.0.0.0", false),
            ("192.168.1.200", true),
            ("192.168.2.1", false),
            ("::1", true),
            ("::2", false),
            ("fd12::1", true),
            ("fe80::1", false),
            // An IPv4-mapped address matches IPv4 entries, and vice versa.
            ("::ffff:127.0.0.1", true),
            ("::ffff:10.9.9.9", true),
            ("::ffff:11.0.0.1", false),
            ("172.16.5.5", true),
            ("::ffff:172.16.5.5", true),
            ("172.31.0.1", true),
            ("172.32.0.1", false),
            // Only the mapped form is treated as IPv4.
            ("::127.0.0.1", false),
        ];
        for (address, want) in cases {
            assert_eq!(list.allows(ip(address)), want, "address {address}");
        }

        assert_eq!(list.denied_reason(ip("127.0.0.1")), None);
        assert_eq!(list.denied_reason(ip("127.0.0.2")), Some("loopback"));
        assert_eq!(list.denied_reason(ip("8.8.8.8")), None);
        let empty = AllowList::default();
        assert!(empty.is_empty());
        assert!(!empty.allows(ip("127.0.0.1")));
        assert_eq!(empty.denied_reason(ip("127.0.0.1")), Some("loopback"));

        let everything = AllowList::parse(&["0.0.0.0/0".to_owned(), "::/0".to_owned()]).unwrap();
        for address in [
            "1.2.3.4",
            "127.0.0.1",
            "::1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            assert!(everything.allows(ip(address)), "address {address}");
        }
    }

    #[test]
    fn allow_list_entries_display_canonically() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("::1", "::1/128"),
            ("FD00::/8", "fd00::/8"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:10.0.0.1", "10.0.0.1/32"),
            ("10.0.0.0/08", "10.0.0.0/8"),
        ];
        for (entry, want) in cases {
            assert_eq!(
                Cidr::parse(entry).unwrap().to_string(),
                want,
                "entry {entry}"
            );
        }
    }

    #[test]
    fn allow_list_rejects_bad_entries() {
        let invalid = |entry: &str| AllowListError::InvalidAddress {
            entry: entry.to_owned(),
        };
        let bad_len = |entry: &str, max: u8| AllowListError::InvalidPrefixLength {
            entry: entry.to_owned(),
            max,
        };
        let cases = [
            ("", invalid("")),
            ("localhost", invalid("localhost")),
            ("10.0.0", invalid("10.0.0")),
            ("10.0.0.256", invalid("10.0.0.256")),
            ("10.0.0.0/", bad_len("10.0.0.0/", 32)),
            ("10.0.0.0/33", bad_len("10.0.0.0/33", 32)),
            ("10.0.0.0/-1", bad_len("10.0.0.0/-1", 32)),
            ("10.0.0.0/+8", bad_len("10.0.0.0/+8", 32)),
            ("10.0.0.0/8/8", bad_len("10.0.0.0/8/8", 32)),
            ("10.0.0.0/0008", bad_len("10.0.0.0/0008", 32)),
            ("::/129", bad_len("::/129", 128)),
            ("[::1]", invalid("[::1]")),
            ("/8", invalid("/8")),
            (
                "10.0.0.1/8",
                AllowListError::HostBitsSet {
                    entry: "10.0.0.1/8".to_owned(),
                    suggestion: "10.0.0.0/8".to_owned(),
                },
            ),
            (
                "fd00::1/8",
                AllowListError::HostBitsSet {
                    entry: "fd00::1/8".to_owned(),
                    suggestion: "fd00::/8".to_owned(),
                },
            ),
        ];
        for (entry, want) in cases {
            assert_eq!(
                AllowList::parse(&[entry.to_owned()]),
                Err(want),
                "entry {entry:?}"
            );
        }
        assert_eq!(
            AllowList::parse(&["10.0.0.1/8".to_owned()])
                .unwrap_err()
                .to_string(),
            "allow-list entry `10.0.0.1/8` has bits set after the prefix; did you mean `10.0.0.0/8`?"
        );
    }

    #[test]
    fn prefix_matching_edges() {
        let cases = [
            (0x0a00_0001, 0x0a00_0000, 8, true),
            (0x0b00_0000, 0x0a00_0000, 8, false),
            (0xffff_ffff, 0, 0, true),
            (0x0a00_0001, 0x0a00_0001, 32, true),
            (0x0a00_0002, 0x0a00_0001, 32, false),
            (0x0a00_0001, 0x0a00_0001, 33, false),
        ];
        for (addr, network, len, want) in cases {
            assert_eq!(
                v4_in(addr, network, len),
                want,
                "{addr:x} {network:x}/{len}"
            );
        }
        assert!(v6_in(u128::MAX, 0, 0));
        assert!(v6_in(1, 1, 128));
        assert!(!v6_in(1, 0, 128));
        assert!(!v6_in(1, 1, 129));
    }
}
