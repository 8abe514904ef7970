//! Address classes the proxy refuses by default, and CIDR blocks.
//!
//! A name on the allow-list may resolve to anything, including the host's
//! own loopback services, the local network or a cloud metadata endpoint.
//! [`classify`] names the class of such an address; the rule set
//! ([`crate::rules::RuleSet::allows`]) refuses it unless an address rule
//! lists that address or a CIDR block inside the special range.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) and NAT64 addresses
//! (`64:ff9b::7f00:1`) are classified by the IPv4 address they carry, and
//! [`canonical`] turns a mapped address back into IPv4, which is the
//! address the proxy connects to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Serialize;

/// Why a CIDR block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{text}` is not an IP address: write e.g. 10.0.0.1, 10.0.0.0/8 or 2001:db8::/32")]
    Address { text: String },
    #[error("`{text}`: the prefix length must be a number from 0 to {max}")]
    Prefix { text: String, max: u8 },
    #[error("`{text}` has bits set after its /{prefix} prefix: write {suggestion}")]
    HostBits {
        text: String,
        prefix: u8,
        suggestion: String,
    },
}

/// A block of addresses: an address and a prefix length. A single address
/// is a block of prefix 32 (IPv4) or 128 (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block `addr/prefix`, with the bits after the prefix cleared.
    /// A prefix longer than the family's width is clamped to it.
    pub fn new(addr: IpAddr, prefix: u8) -> Cidr {
        let prefix = prefix.min(width(addr));
        Cidr {
            addr: mask(addr, prefix),
            prefix,
        }
    }

    /// The block holding exactly `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr::new(addr, width(addr))
    }

    /// The first address of the block.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length, in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether the block holds one address only.
    pub fn is_host(&self) -> bool {
        self.prefix == width(self.addr)
    }

    /// Whether `addr` is in the block. Addresses of the other family never
    /// are: callers pass [`canonical`] addresses, so `::ffff:10.0.0.1` is
    /// checked as `10.0.0.1`.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(addr, self.prefix) == self.addr
            }
            _ => false,
        }
    }

    /// Whether every address of `other` is in this block.
    pub fn contains_block(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address. Bits set after the
    /// prefix are an error (they usually mean a typo in the prefix).
    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::Address {
            text: text.to_string(),
        })?;
        let max = width(addr);
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return Err(CidrError::Prefix {
                        text: text.to_string(),
                        max,
                    })
                }
            },
        };
        let block = Cidr::new(addr, prefix);
        if block.addr != addr {
            return Err(CidrError::HostBits {
                text: text.to_string(),
                prefix,
                suggestion: block.to_string(),
            });
        }
        Ok(block)
    }
}

fn width(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// The classes of addresses refused unless a rule lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressClass {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` ("this network"), which Linux may route to the host.
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`: the proxy host's own services.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16`, `fc00::/7`, `fec0::/10`.
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT space, often internal networks.
    SharedCgnat,
    /// `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// `169.254.169.254`, `fd00:ec2::254`: cloud instance metadata, which
    /// hands out credentials.
    CloudMetadata,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`,
    /// `3fff::/20`.
    Documentation,
    /// `198.18/15`, `2001:2::/48`.
    Benchmark,
    /// Everything else not routed on the internet: `192.0.0/24`, `240/4`,
    /// `100::/64`, the deprecated IPv4-compatible `::/96`.
    Reserved,
}

impl AddressClass {
    /// A short human name, used in refusals.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "the unspecified address",
            AddressClass::ThisNetwork => "a \"this network\" address (0.0.0.0/8)",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::SharedCgnat => "a shared (carrier-grade NAT) address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::CloudMetadata => "the cloud metadata address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Documentation => "a documentation address",
            AddressClass::Benchmark => "a benchmarking address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A special address: its class and the range of that class holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Special {
    pub class: AddressClass,
    /// The range (in the canonical family) that made the address special.
    pub range: Cidr,
}

const fn v4(
    a: u8,
    b: u8,
    c: u8,
    d: u8,
    prefix: u8,
    class: AddressClass,
) -> (u32, u8, AddressClass) {
    (u32::from_be_bytes([a, b, c, d]), prefix, class)
}

/// IPv4 special ranges, most specific first (the metadata address is inside
/// link-local, the unspecified address inside 0/8, broadcast inside 240/4).
const V4_RANGES: &[(u32, u8, AddressClass)] = &[
    v4(0, 0, 0, 0, 32, AddressClass::Unspecified),
    v4(169, 254, 169, 254, 32, AddressClass::CloudMetadata),
    v4(255, 255, 255, 255, 32, AddressClass::Broadcast),
    v4(0, 0, 0, 0, 8, AddressClass::ThisNetwork),
    v4(10, 0, 0, 0, 8, AddressClass::Private),
    v4(100, 64, 0, 0, 10, AddressClass::SharedCgnat),
    v4(127, 0, 0, 0, 8, AddressClass::Loopback),
    v4(169, 254, 0, 0, 16, AddressClass::LinkLocal),
    v4(172, 16, 0, 0, 12, AddressClass::Private),
    v4(192, 0, 0, 0, 24, AddressClass::Reserved),
    v4(192, 0, 2, 0, 24, AddressClass::Documentation),
    v4(192, 168, 0, 0, 16, AddressClass::Private),
    v4(198, 18, 0, 0, 15, AddressClass::Benchmark),
    v4(198, 51, 100, 0, 24, AddressClass::Documentation),
    v4(203, 0, 113, 0, 24, AddressClass::Documentation),
    v4(224, 0, 0, 0, 4, AddressClass::Multicast),
    v4(240, 0, 0, 0, 4, AddressClass::Reserved),
];

/// IPv6 special ranges, most specific first. IPv4-mapped and NAT64
/// addresses are handled before this table.
const V6_RANGES: &[(u128, u8, AddressClass)] = &[
    (0, 128, AddressClass::Unspecified),
    (1, 128, AddressClass::Loopback),
    // fd00:ec2::254, inside fc00::/7.
    (
        0xfd00_0ec2_0000_0000_0000_0000_0000_0254,
        128,
        AddressClass::CloudMetadata,
    ),
    // ::/96, deprecated IPv4-compatible addresses.
    (0, 96, AddressClass::Reserved),
    // 100::/64, discard-only.
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        AddressClass::Reserved,
    ),
    (
        0x2001_0002_0000_0000_0000_0000_0000_0000,
        48,
        AddressClass::Benchmark,
    ),
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        AddressClass::Documentation,
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        AddressClass::Documentation,
    ),
    (
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        AddressClass::Private,
    ),
    (
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        AddressClass::LinkLocal,
    ),
    // fec0::/10, deprecated site-local: private in practice.
    (
        0xfec0_0000_0000_0000_0000_0000_0000_0000,
        10,
        AddressClass::Private,
    ),
    (
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        AddressClass::Multicast,
    ),
];

/// The NAT64 well-known prefix `64:ff9b::/96`.
const NAT64: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;

/// The address the proxy checks and connects to: an IPv4-mapped IPv6
/// address becomes the IPv4 address it maps; others are unchanged.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 => v4,
    }
}

/// The special class of `addr`, or `None` for an ordinary global address.
///
/// A NAT64 address (`64:ff9b::/96`) has the class of the IPv4 address it
/// carries, with the range reported in IPv6.
pub fn classify(addr: IpAddr) -> Option<Special> {
    match canonical(addr) {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            if bits >> 32 == NAT64 >> 32 {
                // The low 32 bits are an IPv4 address; truncation is the point.
                let embedded = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
                return classify_v4(embedded).map(|s| Special {
                    class: s.class,
                    range: Cidr::new(
                        IpAddr::V6(Ipv6Addr::from(NAT64 | u128::from(s.range.addr_v4_bits()))),
                        96 + s.range.prefix(),
                    ),
                });
            }
            V6_RANGES
                .iter()
                .find(|(net, prefix, _)| {
                    Cidr::new(IpAddr::V6(Ipv6Addr::from(*net)), *prefix).contains(IpAddr::V6(a))
                })
                .map(|(net, prefix, class)| Special {
                    class: *class,
                    range: Cidr::new(IpAddr::V6(Ipv6Addr::from(*net)), *prefix),
                })
        }
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<Special> {
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| {
            Cidr::new(IpAddr::V4(Ipv4Addr::from(*net)), *prefix).contains(IpAddr::V4(a))
        })
        .map(|(net, prefix, class)| Special {
            class: *class,
            range: Cidr::new(IpAddr::V4(Ipv4Addr::from(*net)), *prefix),
        })
}

impl Cidr {
    fn addr_v4_bits(&self) -> u32 {
        match self.addr {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn class(s: &str) -> Option<AddressClass> {
        classify(ip(s)).map(|s| s.class)
    }

    #[test]
    fn cidr_parses_and_contains() {
        let c: Cidr = "10.0.0.0/8".parse().expect("valid");
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("::ffff:10.0.0.1")), "families never mix");
        let h: Cidr = "192.0.2.7".parse().expect("valid");
        assert!(h.is_host());
        assert!(h.contains(ip("192.0.2.7")));
        assert!(!h.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().expect("valid");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(ip("8.8.8.8")));
        let all6: Cidr = "::/0".parse().expect("valid");
        assert!(all6.contains(ip("2606:4700::1")));
        assert_eq!(c.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn cidr_errors_name_the_text_and_the_fix() {
        assert!(matches!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits { suggestion, .. }) if suggestion == "10.0.0.0/8"
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix { max: 32, .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::Prefix { max: 128, .. })
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<Cidr>(),
            Err(CidrError::Prefix { .. })
        ));
        assert!(matches!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::Prefix { .. })
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Address { .. })
        ));
        let msg = "nope".parse::<Cidr>().expect_err("invalid").to_string();
        assert!(msg.contains("`nope`"), "{msg}");
    }

    #[test]
    fn contains_block() {
        let ten: Cidr = "10.0.0.0/8".parse().expect("valid");
        let sub: Cidr = "10.1.0.0/16".parse().expect("valid");
        assert!(ten.contains_block(&sub));
        assert!(!sub.contains_block(&ten));
    }

    #[test]
    fn ipv4_classes() {
        use AddressClass::*;
        let cases = [
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(ThisNetwork)),
            ("0.255.255.255", Some(ThisNetwork)),
            ("10.0.0.0", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("100.63.255.255", None),
            ("100.64.0.0", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.1", Some(LinkLocal)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("169.254.169.253", Some(LinkLocal)),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.0.0.8", Some(Reserved)),
            ("192.0.1.0", None),
            ("192.0.2.1", Some(Documentation)),
            ("192.167.255.255", None),
            ("192.168.0.1", Some(Private)),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", Some(Benchmark)),
            ("198.19.255.255", Some(Benchmark)),
            ("198.20.0.0", None),
            ("198.51.100.5", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("223.255.255.255", None),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("151.101.0.223", None),
        ];
        for (addr, want) in cases {
            assert_eq!(class(addr), want, "{addr}");
        }
    }

    #[test]
    fn ipv6_classes() {
        use AddressClass::*;
        let cases = [
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::2", Some(Reserved)),
            ("::127.0.0.1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("2001:2::1", Some(Benchmark)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("fc00::1", Some(Private)),
            ("fdff:ffff::1", Some(Private)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("fd00:ec2::253", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(Private)),
            ("ff02::1", Some(Multicast)),
            ("ff0e::1", Some(Multicast)),
            ("2606:4700::1111", None),
            ("2a04:4e42::223", None),
            ("fbff::1", None),
        ];
        for (addr, want) in cases {
            assert_eq!(class(addr), want, "{addr}");
        }
    }

    #[test]
    fn mapped_and_nat64_addresses_carry_the_ipv4_class() {
        use AddressClass::*;
        let cases = [
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::ffff:100.64.1.1", Some(SharedCgnat)),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
            ("64:ff9b::808:808", None),
        ];
        for (addr, want) in cases {
            assert_eq!(class(addr), want, "{addr}");
        }
        assert_eq!(canonical(ip("::ffff:127.0.0.1")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        let nat = classify(ip("64:ff9b::7f00:1")).expect("special");
        assert_eq!(nat.range.to_string(), "64:ff9b::7f00:0/104");
        assert!(nat.range.contains(ip("64:ff9b::7f00:1")));
    }

    #[test]
    fn ranges_are_reported_with_the_class() {
        let s = classify(ip("10.9.8.7")).expect("special");
        assert_eq!(s.range.to_string(), "10.0.0.0/8");
        let m = classify(ip("169.254.169.254")).expect("special");
        assert!(m.range.is_host());
    }
}
