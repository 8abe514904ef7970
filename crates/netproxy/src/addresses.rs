//! Address classes the proxy refuses by default, and CIDR blocks.
//!
//! A name on the allow-list may resolve to anything, including the host's
//! own loopback services, the local network or a cloud metadata endpoint.
//! [`classify`] names the class of such an address; the rule set
//! ([`crate::rules::RuleSet::allows`]) refuses it unless an address rule
//! lists that address or a CIDR block inside the special range.
//!
//! The host's own networks (the subnets it is directly connected to, and
//! its addresses) are refused the same way, but they depend on the host:
//! [`host_networks`] reads them from `/proc/net`, the proxy's
//! configuration carries them, and [`in_networks`] finds the one holding
//! an address ([`AddressClass::HostNetwork`]).
//!
//! Documentation and benchmarking ranges are not refused by class: they
//! are not internal networks by definition, and a test network may put
//! public services there.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) and NAT64 addresses
//! (`64:ff9b::7f00:1`) are classified by the IPv4 address they carry, and
//! [`canonical`] turns a mapped address back into IPv4, which is the
//! address the proxy connects to.

use std::fmt;
use std::io;
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
    /// Everything else not routed on the internet: `192.0.0/24`, `240/4`,
    /// `100::/64`, the deprecated IPv4-compatible `::/96`.
    ///
    /// The documentation (`192.0.2/24`, `198.51.100/24`, `203.0.113/24`,
    /// `2001:db8::/32`, `3fff::/20`) and benchmarking (`198.18/15`,
    /// `2001:2::/48`) ranges are not refused by class: they are not
    /// internal networks by definition, and test networks do use them (a
    /// package registry may resolve into `203.0.113.0/24`). Where the
    /// proxy's host sits in one, [`AddressClass::HostNetwork`] refuses it.
    Reserved,
    /// IPv6 transition addresses that carry an IPv4 address a tunnel or
    /// translator may deliver to: 6to4 `2002::/16`, Teredo `2001::/32`,
    /// local-use NAT64 `64:ff9b:1::/48` and IPv4-translated
    /// `::ffff:0:0:0/96`. Refused whole, whatever IPv4 address they carry
    /// (the well-known NAT64 prefix is decoded instead, above).
    Transition,
    /// A network the proxy's host is directly connected to, or one of its
    /// own addresses ([`host_networks`]). Never returned by [`classify`]:
    /// it depends on the host, and the proxy checks it from its
    /// configuration ([`in_networks`]).
    HostNetwork,
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
            AddressClass::Reserved => "a reserved address",
            AddressClass::Transition => {
                "an IPv6 transition address (6to4, Teredo, local-use NAT64 or IPv4-translated), which can lead to any IPv4 address"
            }
            AddressClass::HostNetwork => "an address of the host's own network",
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
    v4(192, 168, 0, 0, 16, AddressClass::Private),
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
    // ::ffff:0:0:0/96, IPv4-translated (SIIT).
    (
        0x0000_0000_0000_0000_ffff_0000_0000_0000,
        96,
        AddressClass::Transition,
    ),
    // 64:ff9b:1::/48, local-use NAT64.
    (
        0x0064_ff9b_0001_0000_0000_0000_0000_0000,
        48,
        AddressClass::Transition,
    ),
    // 2001::/32, Teredo (inside 2001::/23; the benchmarking 2001:2::/48
    // is outside it).
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        32,
        AddressClass::Transition,
    ),
    // 2002::/16, 6to4.
    (
        0x2002_0000_0000_0000_0000_0000_0000_0000,
        16,
        AddressClass::Transition,
    ),
    // 100::/64, discard-only.
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        AddressClass::Reserved,
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

/// The most specific block of `networks` holding `addr` (checked in its
/// [`canonical`] form), or `None`. A NAT64 address (`64:ff9b::/96`) is
/// also checked by the IPv4 address it carries, and a block found so is
/// reported in IPv6, as [`classify`] does.
pub fn in_networks(addr: IpAddr, networks: &[Cidr]) -> Option<Cidr> {
    let addr = canonical(addr);
    let most_specific = |a: IpAddr| {
        networks
            .iter()
            .filter(|n| n.contains(a))
            .max_by_key(|n| n.prefix())
            .copied()
    };
    if let Some(found) = most_specific(addr) {
        return Some(found);
    }
    let IpAddr::V6(a) = addr else {
        return None;
    };
    let bits = u128::from(a);
    if bits >> 32 != NAT64 >> 32 {
        return None;
    }
    // The low 32 bits are an IPv4 address; truncation is the point.
    let embedded = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    most_specific(IpAddr::V4(embedded)).map(|n| {
        Cidr::new(
            IpAddr::V6(Ipv6Addr::from(NAT64 | u128::from(n.addr_v4_bits()))),
            96 + n.prefix(),
        )
    })
}

/// Where [`host_networks`] reads the kernel's tables, in the proxy's own
/// network namespace (the host's, since the proxy runs outside the
/// sandbox).
pub const PROC_ROUTE: &str = "/proc/net/route";
/// IPv4 local addresses, by routing table.
pub const PROC_FIB_TRIE: &str = "/proc/net/fib_trie";
/// IPv6 routes.
pub const PROC_IPV6_ROUTE: &str = "/proc/net/ipv6_route";
/// IPv6 addresses of each interface.
pub const PROC_IF_INET6: &str = "/proc/net/if_inet6";

/// The networks of the proxy's host: the subnets it is directly connected
/// to and its own addresses, which a name on the allow-list must not lead
/// to ([`AddressClass::HostNetwork`]). Read from:
/// - [`PROC_ROUTE`]: every IPv4 route of the main table that is not a
///   default route, has no gateway and is not a reject route;
/// - [`PROC_FIB_TRIE`]: the host's own IPv4 addresses (`host LOCAL`
///   entries), which connected routes miss when an address sits on a /32
///   with a gateway reached on-link (common on cloud servers);
/// - [`PROC_IPV6_ROUTE`]: every IPv6 route that is not a default route,
///   has no next hop and is not a reject or cache route (this includes
///   the host's own addresses, as local routes);
/// - [`PROC_IF_INET6`]: each interface's IPv6 addresses.
///
/// Blocks inside a class refused anyway and never worth an exception
/// (loopback, link-local, multicast, unspecified, broadcast) are left
/// out; private blocks are kept, so that an address rule for a wider
/// private block (`10.0.0.0/8`) does not open the host's own `10.0.0.0/24`.
/// The IPv6 files are absent when IPv6 is disabled: that is no error.
/// Only the main routing table is read from [`PROC_ROUTE`]: networks
/// reached only through policy-routing tables are not included.
pub fn host_networks() -> io::Result<Vec<Cidr>> {
    let read = |path: &str, optional: bool| -> io::Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if optional && e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(e.kind(), format!("reading {path}: {e}"))),
        }
    };
    let invalid = |path: &str, e: RouteParseError| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}"))
    };
    let mut networks = Vec::new();
    if let Some(text) = read(PROC_ROUTE, false)? {
        networks.extend(parse_ipv4_routes(&text).map_err(|e| invalid(PROC_ROUTE, e))?);
    }
    if let Some(text) = read(PROC_FIB_TRIE, true)? {
        networks.extend(parse_fib_trie_local(&text).map_err(|e| invalid(PROC_FIB_TRIE, e))?);
    }
    if let Some(text) = read(PROC_IPV6_ROUTE, true)? {
        networks.extend(parse_ipv6_routes(&text).map_err(|e| invalid(PROC_IPV6_ROUTE, e))?);
    }
    if let Some(text) = read(PROC_IF_INET6, true)? {
        networks.extend(parse_if_inet6(&text).map_err(|e| invalid(PROC_IF_INET6, e))?);
    }
    Ok(keep_host_networks(networks))
}

/// A line of a kernel table that does not have the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}: `{text}`")]
pub struct RouteParseError {
    /// 1-based.
    pub line: usize,
    pub text: String,
    pub why: &'static str,
}

/// Route flags (`include/uapi/linux/route.h`, `ipv6_route.h`).
const RTF_GATEWAY: u32 = 0x0002;
const RTF_REJECT: u32 = 0x0200;
const RTF_CACHE: u32 = 0x0100_0000;

/// The directly connected IPv4 networks in `/proc/net/route` text: routes
/// with a non-zero mask, gateway 0.0.0.0, and neither the gateway nor the
/// reject flag. Addresses there are the raw network-order value printed
/// as a native integer, hence `to_ne_bytes`.
pub fn parse_ipv4_routes(text: &str) -> Result<Vec<Cidr>, RouteParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why| RouteParseError {
            line: i + 1,
            text: line.to_string(),
            why,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_iface, dest, gateway, flags, _refcnt, _use, _metric, mask, ..] = fields[..] else {
            return Err(bad("fewer than 8 fields"));
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad("not a hex number"));
        let (dest, gateway, flags, mask) = (hex(dest)?, hex(gateway)?, hex(flags)?, hex(mask)?);
        if mask == 0 || gateway != 0 || flags & (RTF_GATEWAY | RTF_REJECT) != 0 {
            continue;
        }
        let mask = u32::from_be_bytes(mask.to_ne_bytes());
        if mask.leading_ones() + mask.trailing_zeros() != 32 {
            return Err(bad("the mask is not a prefix"));
        }
        let addr = Ipv4Addr::from(dest.to_ne_bytes());
        // leading_ones() <= 32.
        let prefix = u8::try_from(mask.leading_ones()).unwrap_or(32);
        out.push(Cidr::new(IpAddr::V4(addr), prefix));
    }
    Ok(out)
}

/// The host's own IPv4 addresses in `/proc/net/fib_trie` text: each
/// `|-- ADDRESS` leaf followed by a `/PREFIX host LOCAL` line.
pub fn parse_fib_trie_local(text: &str) -> Result<Vec<Cidr>, RouteParseError> {
    let mut out = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for (i, line) in text.lines().enumerate() {
        let bad = |why| RouteParseError {
            line: i + 1,
            text: line.to_string(),
            why,
        };
        let trimmed = line.trim();
        if let Some(addr) = trimmed.strip_prefix("|-- ") {
            leaf = Some(
                addr.trim()
                    .parse()
                    .map_err(|_| bad("not an IPv4 address"))?,
            );
        } else if let Some(rest) = trimmed.strip_prefix('/') {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if let [prefix, "host", "LOCAL", ..] = fields[..] {
                let addr = leaf.ok_or_else(|| bad("a route before any address"))?;
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| bad("not a prefix length"))?;
                out.push(Cidr::new(IpAddr::V4(addr), prefix));
            }
        } else {
            // A table name (`Main:`, `Local:`) or an inner node (`+--`).
            leaf = None;
        }
    }
    Ok(out)
}

/// The directly connected IPv6 networks and local addresses in
/// `/proc/net/ipv6_route` text: routes with a non-zero prefix, next hop
/// `::`, and none of the gateway, reject and cache flags.
pub fn parse_ipv6_routes(text: &str) -> Result<Vec<Cidr>, RouteParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why| RouteParseError {
            line: i + 1,
            text: line.to_string(),
            why,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [dest, prefix, _src, _src_prefix, next_hop, _metric, _refcnt, _use, flags, ..] =
            fields[..]
        else {
            return Err(bad("fewer than 9 fields"));
        };
        let dest = hex128(dest).ok_or_else(|| bad("not a 32-digit hex address"))?;
        let next_hop = hex128(next_hop).ok_or_else(|| bad("not a 32-digit hex address"))?;
        let prefix = u8::from_str_radix(prefix, 16)
            .ok()
            .filter(|p| *p <= 128)
            .ok_or_else(|| bad("not a prefix length"))?;
        let flags = u32::from_str_radix(flags, 16).map_err(|_| bad("not hex flags"))?;
        if prefix == 0 || next_hop != 0 || flags & (RTF_GATEWAY | RTF_REJECT | RTF_CACHE) != 0 {
            continue;
        }
        out.push(Cidr::new(IpAddr::V6(Ipv6Addr::from(dest)), prefix));
    }
    Ok(out)
}

/// Each interface's IPv6 addresses in `/proc/net/if_inet6` text, as
/// single-address blocks.
pub fn parse_if_inet6(text: &str) -> Result<Vec<Cidr>, RouteParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        let addr = hex128(first).ok_or_else(|| RouteParseError {
            line: i + 1,
            text: line.to_string(),
            why: "not a 32-digit hex address",
        })?;
        out.push(Cidr::host(IpAddr::V6(Ipv6Addr::from(addr))));
    }
    Ok(out)
}

fn hex128(text: &str) -> Option<u128> {
    (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

/// Drops blocks inside a class refused anyway with no reason to open it
/// (loopback, link-local, multicast, unspecified, broadcast) and
/// duplicates; keeps the order otherwise.
fn keep_host_networks(networks: Vec<Cidr>) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = Vec::new();
    for n in networks {
        let covered = classify(n.addr()).is_some_and(|s| {
            matches!(
                s.class,
                AddressClass::Loopback
                    | AddressClass::LinkLocal
                    | AddressClass::Multicast
                    | AddressClass::Unspecified
                    | AddressClass::Broadcast
            ) && s.range.contains_block(&n)
        });
        if !covered && !out.contains(&n) {
            out.push(n);
        }
    }
    out
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
    fn ipv6_transition_addresses_are_refused_whatever_they_carry() {
        use AddressClass::*;
        for (a, expected) in [
            ("2002:7f00:1::", Some(Transition)),     // 6to4 of 127.0.0.1
            ("2002:0808:0808::1", Some(Transition)), // 6to4 of a public address
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(Transition)), // Teredo
            ("64:ff9b:1::a00:1", Some(Transition)),  // local-use NAT64 of 10.0.0.1
            ("::ffff:0:a00:1", Some(Transition)),    // IPv4-translated 10.0.0.1
            ("2001:2::1", None),                     // benchmarking, outside Teredo
            ("2001:db8::1", None),                   // documentation
            ("2600::1", None),
        ] {
            assert_eq!(class(a), expected, "{a}");
        }
        // IPv4-mapped addresses are still their IPv4 address's class.
        assert_eq!(class("::ffff:10.0.0.1"), Some(Private));
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
            ("192.0.2.1", None),
            ("192.167.255.255", None),
            ("192.168.0.1", Some(Private)),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", None),
            ("198.19.255.255", None),
            ("198.20.0.0", None),
            ("198.51.100.5", None),
            ("203.0.113.9", None),
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
            ("2001:2::1", None),
            ("2001:db8::1", None),
            ("3fff::1", None),
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

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter()
            .map(|c| c.parse().expect("test block"))
            .collect()
    }

    /// A `/proc/net/route` address field for `octets`, as this machine's
    /// kernel prints it.
    fn route_hex(octets: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(octets))
    }

    #[test]
    fn ipv4_routes_keep_connected_networks_only() {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT";
        let row = |iface: &str, dest: [u8; 4], gw: [u8; 4], flags: &str, mask: [u8; 4]| {
            format!(
                "{iface}\t{}\t{}\t{flags}\t0\t0\t0\t{}\t0\t0\t0",
                route_hex(dest),
                route_hex(gw),
                route_hex(mask)
            )
        };
        let text = [
            header.to_string(),
            // The default route, through a gateway.
            row("eth0", [0, 0, 0, 0], [192, 0, 2, 1], "0003", [0, 0, 0, 0]),
            // Connected: 192.0.2.0/24 and 10.20.0.0/16.
            row("eth0", [192, 0, 2, 0], [0; 4], "0001", [255, 255, 255, 0]),
            row("wg0", [10, 20, 0, 0], [0; 4], "0001", [255, 255, 0, 0]),
            // A /32 reached on-link (a cloud gateway).
            row("eth0", [172, 31, 1, 1], [0; 4], "0005", [255; 4]),
            // Through a gateway: not the host's network.
            row(
                "eth0",
                [198, 51, 100, 0],
                [192, 0, 2, 1],
                "0003",
                [255, 255, 255, 0],
            ),
            // Unreachable (reject): not a network the host is on.
            row("eth0", [203, 0, 113, 0], [0; 4], "0201", [255, 255, 255, 0]),
            String::new(),
        ]
        .join("\n");
        assert_eq!(
            parse_ipv4_routes(&text).expect("valid table"),
            cidrs(&["192.0.2.0/24", "10.20.0.0/16", "172.31.1.1/32"])
        );
        let holey = format!(
            "{header}\n{}",
            row("eth0", [10, 0, 0, 0], [0; 4], "0001", [255, 0, 255, 0])
        );
        let e = parse_ipv4_routes(&holey).expect_err("not a prefix");
        assert_eq!((e.line, e.why), (2, "the mask is not a prefix"));
        let short = format!("{header}\neth0 00000000");
        assert_eq!(parse_ipv4_routes(&short).expect_err("short").line, 2);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn ipv4_routes_as_a_little_endian_kernel_prints_them() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_ipv4_routes(text).expect("valid table"),
            cidrs(&["192.0.2.0/24"])
        );
    }

    #[test]
    fn fib_trie_gives_the_local_addresses() {
        let text = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
     |-- 198.51.100.7
        /32 host LOCAL
";
        assert_eq!(
            parse_fib_trie_local(text).expect("valid trie"),
            cidrs(&["127.0.0.0/8", "127.0.0.1", "192.0.2.2", "198.51.100.7"])
        );
        assert!(parse_fib_trie_local("Main:\n  /32 host LOCAL\n").is_err());
        assert!(parse_fib_trie_local("  |-- 300.1.1.1\n").is_err());
    }

    #[test]
    fn ipv6_routes_keep_connected_networks_and_local_addresses() {
        let text = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0
20010db8000000000000000000000000 20 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0
3fff0000000000000000000000000000 30 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000003 00000000 01000001     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000004 00000000 80200001       lo
fd000000000000000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001     eth0
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000003 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        let routes = parse_ipv6_routes(text).expect("valid table");
        assert_eq!(
            routes,
            cidrs(&["fd00::/64", "fe80::/64", "::1", "fd00::2", "ff00::/8"])
        );
        assert_eq!(
            keep_host_networks(routes),
            cidrs(&["fd00::/64", "fd00::2"]),
            "link-local, loopback and multicast are classes already"
        );
        assert!(parse_ipv6_routes("fd00 40 x\n").is_err());
        assert!(parse_ipv6_routes(&text.replace(" 40 ", " 81 ")).is_err());
    }

    #[test]
    fn if_inet6_gives_each_address() {
        let text = "\
20010db8000000000000000000000002 02 40 00 80     eth0
fe8000000000000000fc00fffe000001 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
";
        let addrs = parse_if_inet6(text).expect("valid table");
        assert_eq!(addrs, cidrs(&["2001:db8::2", "fe80::fc:ff:fe00:1", "::1"]));
        assert_eq!(keep_host_networks(addrs), cidrs(&["2001:db8::2"]));
        assert!(parse_if_inet6("2001:db8::2 02 40 00 80 eth0\n").is_err());
    }

    #[test]
    fn host_networks_of_this_machine_parse() {
        // Whatever the machine: the tables parse, and nothing kept is a
        // class refused anyway.
        let nets = host_networks().expect("the kernel's tables parse");
        for n in &nets {
            assert_ne!(
                classify(n.addr()).map(|s| s.class),
                Some(AddressClass::Loopback),
                "{n}"
            );
        }
    }

    #[test]
    fn in_networks_finds_the_most_specific_block() {
        let nets = cidrs(&["192.0.2.0/24", "192.0.2.2", "fd00::/64", "10.0.0.0/8"]);
        assert_eq!(in_networks(ip("192.0.2.9"), &nets), Some(nets[0]));
        assert_eq!(in_networks(ip("192.0.2.2"), &nets), Some(nets[1]));
        assert_eq!(in_networks(ip("::ffff:192.0.2.9"), &nets), Some(nets[0]));
        assert_eq!(in_networks(ip("fd00::9"), &nets), Some(nets[2]));
        assert_eq!(in_networks(ip("203.0.113.9"), &nets), None);
        assert_eq!(in_networks(ip("fd01::1"), &nets), None);
        let nat = in_networks(ip("64:ff9b::c000:209"), &nets).expect("NAT64 of 192.0.2.9");
        assert_eq!(nat.to_string(), "64:ff9b::c000:200/120");
        assert_eq!(in_networks(ip("192.0.2.9"), &[]), None);
    }
}
