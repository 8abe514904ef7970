//! The allow-list: `--net allow=RULE[,RULE...]`.
//!
//! A rule is a destination and its ports:
//! - a host name, `pypi.org`: that name exactly (case-insensitive, a
//!   trailing dot ignored);
//! - a wildcard domain, `*.pythonhosted.org`: any name below it, not the
//!   apex itself (list `pythonhosted.org` too for that);
//! - an IP address or CIDR block, `203.0.113.7`, `10.1.0.0/16`,
//!   `2001:db8::1`, `[2001:db8::/32]`: a client asking for an address
//!   literal inside it (a client asking for a name needs a name rule);
//!
//! each followed by an optional `:PORT` or `:FIRST-LAST` (IPv6 in brackets
//! then: `[2001:db8::1]:443`). Without a port a rule allows 80 and 443.
//!
//! [`RuleSet::allows`] decides on the name the client asked for and the
//! address the proxy will connect to: a name must match a name or wildcard
//! rule, an address literal an address rule. Addresses of a special class
//! ([`crate::addresses::classify`]: loopback, private, metadata, ...) are
//! refused even when a name rule matches, unless an address rule lists the
//! address or a block inside that special range: `10.0.0.0/8` opens
//! `10.1.2.3`, but `0.0.0.0/0` does not open `127.0.0.1`.
//! [`RuleSet::allows_on_host`] then refuses the networks of the proxy's
//! host ([`crate::addresses::host_networks`]) the same way: on a host in
//! `192.0.2.0/24`, `pypi.org` resolving to `192.0.2.7` is refused unless
//! a rule lists `192.0.2.7` (or a block inside `192.0.2.0/24`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

use crate::addresses::{canonical, classify, in_networks, AddressClass, Cidr, CidrError, Special};

/// Why a rule or a `--net` value was refused. Each carries the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("empty rule in `{list}`: remove the extra comma")]
    Empty { list: String },
    #[error("no rule given: write at least one after `allow=`, e.g. allow=pypi.org,*.pythonhosted.org:443")]
    NoRules,
    #[error("`{value}` is not a --net value: write `none` or `allow=RULE[,RULE...]`, e.g. allow=pypi.org,*.pythonhosted.org:443")]
    Flag { value: String },
    #[error("rule `{rule}`: `{host}` is not a valid host name ({why}): write a name like pypi.org, a wildcard like *.pythonhosted.org, or an IP address or CIDR")]
    Host {
        rule: String,
        host: String,
        why: &'static str,
    },
    #[error("rule `{rule}`: `{ports}` is not a port or port range: write e.g. :443 or :8000-8100 (ports 1 to 65535)")]
    Ports { rule: String, ports: String },
    #[error("rule `{rule}`: {source}")]
    Address {
        rule: String,
        #[source]
        source: CidrError,
    },
    #[error(
        "rule `{rule}`: an IPv6 address with a port goes in brackets: write e.g. [2001:db8::1]:443"
    )]
    Brackets { rule: String },
}

/// An inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The ports a rule without a port allows: HTTP and HTTPS.
pub const DEFAULT_PORTS: [PortRange; 2] = [
    PortRange {
        first: 80,
        last: 80,
    },
    PortRange {
        first: 443,
        last: 443,
    },
];

/// What a rule's destination matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this name (lower case, no trailing dot).
    Name(String),
    /// Any name ending in `.` + this suffix (lower case), not the suffix.
    Wildcard(String),
    /// An address literal in this block (IPv4-mapped blocks are stored as
    /// IPv4); also the rule that opens a special address in it for a name.
    Address(Cidr),
}

/// One allow rule: a destination and its ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub host: HostPattern,
    pub ports: Vec<PortRange>,
}

impl Rule {
    fn port_matches(&self, port: u16) -> bool {
        self.ports.iter().any(|r| r.contains(port))
    }

    fn host_matches(&self, name: Option<&str>, addr: IpAddr) -> bool {
        match (&self.host, name) {
            (HostPattern::Name(n), Some(name)) => n == name,
            (HostPattern::Wildcard(suffix), Some(name)) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostPattern::Address(block), None) => block.contains(addr),
            _ => false,
        }
    }

    fn could_match_name(&self, name: &str, port: u16) -> bool {
        self.port_matches(port) && self.host_matches(Some(name), IpAddr::from([0, 0, 0, 0]))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Name(n) => write!(f, "{n}")?,
            HostPattern::Wildcard(s) => write!(f, "*.{s}")?,
            HostPattern::Address(c) => {
                let text = if c.is_host() {
                    c.addr().to_string()
                } else {
                    c.to_string()
                };
                if c.addr().is_ipv6() {
                    write!(f, "[{text}]")?
                } else {
                    write!(f, "{text}")?
                }
            }
        }
        // Printed as it is written, so that it parses back: no port for the
        // default ports (only a rule without a port has several ranges).
        if self.ports == DEFAULT_PORTS {
            return Ok(());
        }
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        write!(f, ":{}", ports.join(","))
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Rule, RuleError> {
        let rule = text.trim();
        let (host_text, port_text) = split_host_port(rule)?;
        let ports = match port_text {
            None => DEFAULT_PORTS.to_vec(),
            Some(p) => vec![parse_ports(p).ok_or_else(|| RuleError::Ports {
                rule: rule.to_string(),
                ports: p.to_string(),
            })?],
        };
        let host = if rule.starts_with('[') {
            parse_bracketed(rule, host_text)?
        } else {
            parse_host(rule, host_text)?
        };
        Ok(Rule { host, ports })
    }
}

/// Splits `host[:ports]`, `[v6[/n]][:ports]` or a bare `v6[/n]`.
fn split_host_port(rule: &str) -> Result<(&str, Option<&str>), RuleError> {
    if let Some(rest) = rule.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| RuleError::Brackets {
            rule: rule.to_string(),
        })?;
        return match after {
            "" => Ok((inside, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((inside, Some(p))),
                None => Err(RuleError::Brackets {
                    rule: rule.to_string(),
                }),
            },
        };
    }
    match rule.matches(':').count() {
        0 => Ok((rule, None)),
        1 => {
            let (h, p) = rule.split_once(':').unwrap_or((rule, ""));
            Ok((h, Some(p)))
        }
        // A bare IPv6 address or block: it cannot carry a port.
        _ => Ok((rule, None)),
    }
}

fn parse_ports(text: &str) -> Option<PortRange> {
    let port = |s: &str| -> Option<u16> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u16>().ok().filter(|p| *p != 0)
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    (first <= last).then_some(PortRange { first, last })
}

fn parse_host(rule: &str, host: &str) -> Result<HostPattern, RuleError> {
    let bad = |why| RuleError::Host {
        rule: rule.to_string(),
        host: host.to_string(),
        why,
    };
    if host.is_empty() {
        return Err(bad("it is empty"));
    }
    if host.contains(':') || host.contains('/') || looks_like_ipv4(host) {
        let block: Cidr = host.parse().map_err(|source| RuleError::Address {
            rule: rule.to_string(),
            source,
        })?;
        return Ok(HostPattern::Address(unmap_block(block)));
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        let suffix = normalize_name(suffix).map_err(bad)?;
        if !suffix.contains('.') {
            // `*.com` would open a whole top-level domain.
            return Err(bad("a wildcard needs at least two labels after `*.`"));
        }
        return Ok(HostPattern::Wildcard(suffix));
    }
    if host.contains('*') {
        return Err(bad(
            "`*` is allowed only as a whole first label, as in *.example.org",
        ));
    }
    Ok(HostPattern::Name(normalize_name(host).map_err(bad)?))
}

/// Inside brackets only an IPv6 address or block is allowed.
fn parse_bracketed(rule: &str, inside: &str) -> Result<HostPattern, RuleError> {
    let block: Cidr = inside.parse().map_err(|source| RuleError::Address {
        rule: rule.to_string(),
        source,
    })?;
    if block.addr().is_ipv4() {
        return Err(RuleError::Brackets {
            rule: rule.to_string(),
        });
    }
    Ok(HostPattern::Address(unmap_block(block)))
}

fn looks_like_ipv4(host: &str) -> bool {
    host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// `::ffff:a.b.c.d/n` with n >= 96 is the IPv4 block a.b.c.d/(n-96): the
/// proxy checks mapped addresses as IPv4.
fn unmap_block(block: Cidr) -> Cidr {
    match (canonical(block.addr()), block.addr()) {
        (IpAddr::V4(v4), IpAddr::V6(_)) if block.prefix() >= 96 => {
            Cidr::new(IpAddr::V4(v4), block.prefix() - 96)
        }
        _ => block,
    }
}

/// A host name in the form rules and requests are compared in: lower case,
/// no trailing dot, letters, digits and hyphens in labels of 1 to 63
/// characters, at most 253 characters, and a last label that is not all
/// digits (so `127.1` is never taken for a name). Used on requests too,
/// so that nothing odd reaches the resolver.
pub fn normalize_name(text: &str) -> Result<String, &'static str> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, `-` and `_` are allowed in a label");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with `-`");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("its last label is all digits, like an IP address");
    }
    Ok(name)
}

/// A proxy's decision on one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// One line: the rule that allowed it, or why it was refused and what
    /// rule would allow it.
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Decision {
        Decision {
            allowed: true,
            reason: reason.into(),
        }
    }

    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision {
            allowed: false,
            reason: reason.into(),
        }
    }
}

/// The allow-list of one run. Empty means no network (`--net none`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// No destinations: every attempt is refused.
    pub fn none() -> RuleSet {
        RuleSet::default()
    }

    /// Parses one `--net` value: `none`, or `allow=RULE[,RULE...]`.
    pub fn parse_net(value: &str) -> Result<RuleSet, RuleError> {
        let value = value.trim();
        if value == "none" {
            return Ok(RuleSet::none());
        }
        match value.strip_prefix("allow=") {
            Some(list) => RuleSet::parse_list(list),
            None => Err(RuleError::Flag {
                value: value.to_string(),
            }),
        }
    }

    /// Parses a comma-separated list of rules.
    pub fn parse_list(list: &str) -> Result<RuleSet, RuleError> {
        if list.trim().is_empty() {
            return Err(RuleError::NoRules);
        }
        let mut rules = Vec::new();
        for text in list.split(',') {
            if text.trim().is_empty() {
                return Err(RuleError::Empty {
                    list: list.to_string(),
                });
            }
            rules.push(text.parse()?);
        }
        Ok(RuleSet { rules })
    }

    /// Adds the rules of `other` (for a repeated `--net allow=` flag).
    pub fn extend(&mut self, other: RuleSet) {
        self.rules.extend(other.rules);
    }

    /// Adds one rule.
    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// The rules, in the order given.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether no destination is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Before resolving `name`: refuses it when no rule could allow it on
    /// `port` whatever it resolves to, so that names off the list never
    /// reach the resolver. `None` means "resolve and ask [`RuleSet::allows`]".
    pub fn precheck_name(&self, name: &str, port: u16) -> Option<Decision> {
        if self.rules.iter().any(|r| r.could_match_name(name, port)) {
            None
        } else {
            Some(Decision::deny(format!(
                "no rule allows {name} port {port}: add `--net allow={name}:{port}` to allow it"
            )))
        }
    }

    /// Whether the proxy may connect to `addr`:`port` for a client that
    /// asked for `name` (`None` when the client gave an address literal).
    /// `name` is compared in [`normalize_name`] form. The same as
    /// [`RuleSet::allows_on_host`] with no host networks.
    pub fn allows(&self, name: Option<&str>, addr: IpAddr, port: u16) -> Decision {
        self.allows_on_host(name, addr, port, &[])
    }

    /// [`RuleSet::allows`] on a host connected to `host_networks`
    /// ([`crate::addresses::host_networks`]). A rule must match first;
    /// then an address of a special class, and after it an address in one
    /// of `host_networks` (the most specific holding it), is refused
    /// unless an address rule on that port lists it or a block inside that
    /// range.
    pub fn allows_on_host(
        &self,
        name: Option<&str>,
        addr: IpAddr,
        port: u16,
        host_networks: &[Cidr],
    ) -> Decision {
        let addr = canonical(addr);
        let normalized = name.map(|n| n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase());
        let name = normalized.as_deref();
        let dest = match name {
            Some(n) => format!("{n} ({addr}) port {port}"),
            None => format!("{addr} port {port}"),
        };
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.port_matches(port) && r.host_matches(name, addr))
        else {
            return Decision::deny(format!("no rule allows {dest}"));
        };
        let host_network = in_networks(addr, host_networks).map(|range| Special {
            class: AddressClass::HostNetwork,
            range,
        });
        // Special classes first, then the host's networks: each must be
        // opened by an address rule inside its range.
        // (rule, the classes it opens), one entry per rule.
        let mut opened_by: Vec<(String, Vec<String>)> = Vec::new();
        for special in classify(addr).into_iter().chain(host_network) {
            let exempt = self.rules.iter().find(|r| {
                r.port_matches(port)
                    && matches!(&r.host, HostPattern::Address(block)
                        if block.contains(addr) && special.range.contains_block(block))
            });
            match exempt {
                Some(r) => {
                    let r = r.to_string();
                    let class = special.class.to_string();
                    match opened_by.iter_mut().find(|(seen, _)| *seen == r) {
                        Some((_, classes)) => classes.push(class),
                        None => opened_by.push((r, vec![class])),
                    }
                }
                None => {
                    let literal = match addr {
                        IpAddr::V6(_) => format!("[{addr}]:{port}"),
                        IpAddr::V4(_) => format!("{addr}:{port}"),
                    };
                    return Decision::deny(format!(
                        "{dest} is {} ({}): refused unless a rule lists that address, e.g. `{literal}`",
                        special.class, special.range
                    ));
                }
            }
        }
        if opened_by.is_empty() {
            Decision::allow(format!("{dest} allowed by rule `{rule}`"))
        } else {
            let opened: Vec<String> = opened_by
                .iter()
                .map(|(r, classes)| format!("rule `{r}`, which lists {}", classes.join(" and ")))
                .collect();
            Decision::allow(format!(
                "{dest} allowed by {} explicitly",
                opened.join(", and ")
            ))
        }
    }
}

impl fmt::Display for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() {
            return f.write_str("none");
        }
        let rules: Vec<String> = self.rules.iter().map(|r| r.to_string()).collect();
        write!(f, "allow={}", rules.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn rule(s: &str) -> Rule {
        s.parse().expect("valid rule")
    }

    fn set(s: &str) -> RuleSet {
        RuleSet::parse_list(s).expect("valid rules")
    }

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn host_names() {
        assert_eq!(rule("pypi.org").host, HostPattern::Name("pypi.org".into()));
        assert_eq!(rule("PyPI.org.").host, HostPattern::Name("pypi.org".into()));
        assert_eq!(rule("pypi.org").ports, DEFAULT_PORTS.to_vec());
        assert_eq!(
            rule("localhost").host,
            HostPattern::Name("localhost".into())
        );
        assert_eq!(rule("pypi.org:443").ports, vec![range(443, 443)]);
        assert_eq!(rule("pypi.org:8000-8100").ports, vec![range(8000, 8100)]);
        assert_eq!(
            rule(" pypi.org ").host,
            HostPattern::Name("pypi.org".into())
        );
    }

    #[test]
    fn wildcards() {
        assert_eq!(
            rule("*.pythonhosted.org:443").host,
            HostPattern::Wildcard("pythonhosted.org".into())
        );
        for bad in [
            "*.com",
            "*",
            "*.",
            "a.*.org",
            "*foo.org",
            "**.foo.org",
            "foo.*",
        ] {
            assert!(
                matches!(bad.parse::<Rule>(), Err(RuleError::Host { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn addresses_and_blocks() {
        let block = |s: &str| HostPattern::Address(s.parse().expect("block"));
        assert_eq!(rule("10.0.0.5").host, block("10.0.0.5"));
        assert_eq!(rule("10.0.0.0/8:22").host, block("10.0.0.0/8"));
        assert_eq!(rule("10.0.0.0/8:22").ports, vec![range(22, 22)]);
        assert_eq!(rule("2001:db8::1").host, block("2001:db8::1"));
        assert_eq!(rule("2001:db8::/32").host, block("2001:db8::/32"));
        assert_eq!(rule("2001:db8::/32").ports, DEFAULT_PORTS.to_vec());
        assert_eq!(rule("[2001:db8::1]:443").host, block("2001:db8::1"));
        assert_eq!(rule("[2001:db8::1]:443").ports, vec![range(443, 443)]);
        assert_eq!(rule("[2001:db8::/48]:1-1024").ports, vec![range(1, 1024)]);
        assert_eq!(rule("[::1]").host, block("::1"));
        // Mapped addresses are checked as IPv4.
        assert_eq!(rule("[::ffff:127.0.0.1]:80").host, block("127.0.0.1"));
        assert_eq!(rule("::ffff:10.0.0.0/104").host, block("10.0.0.0/8"));
    }

    #[test]
    fn errors_carry_the_text() {
        type Check = fn(&RuleError) -> bool;
        let cases: &[(&str, Check)] = &[
            (
                "pypi.org:0",
                |e| matches!(e, RuleError::Ports { ports, .. } if ports == "0"),
            ),
            ("pypi.org:65536", |e| matches!(e, RuleError::Ports { .. })),
            ("pypi.org:", |e| matches!(e, RuleError::Ports { .. })),
            ("pypi.org:http", |e| matches!(e, RuleError::Ports { .. })),
            ("pypi.org:+80", |e| matches!(e, RuleError::Ports { .. })),
            ("pypi.org:90-80", |e| matches!(e, RuleError::Ports { .. })),
            ("pypi.org:80-", |e| matches!(e, RuleError::Ports { .. })),
            ("pypi.org:1-2-3", |e| matches!(e, RuleError::Ports { .. })),
            (":443", |e| matches!(e, RuleError::Host { .. })),
            ("py pi.org", |e| matches!(e, RuleError::Host { .. })),
            ("-pypi.org", |e| matches!(e, RuleError::Host { .. })),
            ("pypi..org", |e| matches!(e, RuleError::Host { .. })),
            ("127.1", |e| matches!(e, RuleError::Address { .. })),
            ("1.2.3.4.5", |e| matches!(e, RuleError::Address { .. })),
            ("foo.123", |e| matches!(e, RuleError::Host { .. })),
            ("10.0.0.1/8", |e| {
                matches!(
                    e,
                    RuleError::Address {
                        source: CidrError::HostBits { .. },
                        ..
                    }
                )
            }),
            ("10.0.0.0/40", |e| matches!(e, RuleError::Address { .. })),
            ("[2001:db8::1", |e| matches!(e, RuleError::Brackets { .. })),
            ("[2001:db8::1]443", |e| {
                matches!(e, RuleError::Brackets { .. })
            }),
            ("[pypi.org]:443", |e| matches!(e, RuleError::Address { .. })),
            ("[10.0.0.1]:443", |e| {
                matches!(e, RuleError::Brackets { .. })
            }),
            ("2001:db8::zz", |e| matches!(e, RuleError::Address { .. })),
        ];
        for (text, check) in cases {
            let err = text.parse::<Rule>().expect_err(text);
            assert!(check(&err), "{text}: {err:?}");
            assert!(err.to_string().contains(text.trim()), "{text}: {err}");
        }
        let long = format!("{}.org", "a".repeat(64));
        assert!(long.parse::<Rule>().is_err());
        let too_long = format!("{}org", "abcdefghi.".repeat(26));
        assert!(too_long.parse::<Rule>().is_err());
    }

    #[test]
    fn net_values() {
        assert!(RuleSet::parse_net("none").expect("valid").is_empty());
        let s = RuleSet::parse_net("allow=pypi.org,*.pythonhosted.org:443").expect("valid");
        assert_eq!(s.rules().len(), 2);
        assert_eq!(s.to_string(), "allow=pypi.org,*.pythonhosted.org:443");
        // What a rule set prints parses back to the same rules.
        assert_eq!(RuleSet::parse_net(&s.to_string()).expect("valid"), s);
        assert!(matches!(
            RuleSet::parse_net("pypi.org"),
            Err(RuleError::Flag { .. })
        ));
        assert!(matches!(
            RuleSet::parse_net("allow="),
            Err(RuleError::NoRules)
        ));
        assert!(matches!(
            RuleSet::parse_net("allow=a.org,,b.org"),
            Err(RuleError::Empty { .. })
        ));
        let mut s = set("a.org");
        s.extend(set("b.org"));
        assert_eq!(s.rules().len(), 2);
        assert_eq!(RuleSet::none().to_string(), "none");
        assert_eq!(
            rule("[2001:db8::/32]:443").to_string(),
            "[2001:db8::/32]:443"
        );
    }

    #[test]
    fn names_match_exactly_and_by_port() {
        let s = set("pypi.org");
        let a = ip("151.101.0.223");
        assert!(s.allows(Some("pypi.org"), a, 443).allowed);
        assert!(s.allows(Some("PYPI.org."), a, 80).allowed);
        assert!(!s.allows(Some("pypi.org"), a, 22).allowed);
        assert!(!s.allows(Some("evil.pypi.org"), a, 443).allowed);
        assert!(!s.allows(Some("pypi.org.evil.com"), a, 443).allowed);
        assert!(!s.allows(Some("xpypi.org"), a, 443).allowed);
        assert!(
            !s.allows(None, a, 443).allowed,
            "an address literal is not the name"
        );
        let d = s.allows(Some("evil.com"), a, 443);
        assert!(d.reason.contains("evil.com"), "{}", d.reason);
    }

    #[test]
    fn wildcards_match_subdomains_not_the_apex() {
        let s = set("*.pythonhosted.org:443");
        let a = ip("151.101.0.223");
        assert!(s.allows(Some("files.pythonhosted.org"), a, 443).allowed);
        assert!(s.allows(Some("a.b.pythonhosted.org"), a, 443).allowed);
        assert!(!s.allows(Some("pythonhosted.org"), a, 443).allowed);
        assert!(!s.allows(Some("evilpythonhosted.org"), a, 443).allowed);
        assert!(!s.allows(Some("files.pythonhosted.org"), a, 80).allowed);
        let both = set("*.pythonhosted.org,pythonhosted.org");
        assert!(both.allows(Some("pythonhosted.org"), a, 443).allowed);
    }

    #[test]
    fn address_rules_match_literals_not_names() {
        let s = set("151.101.0.0/16:443,[2a04:4e42::]:443");
        assert!(s.allows(None, ip("151.101.0.223"), 443).allowed);
        assert!(
            !s.allows(Some("pypi.org"), ip("151.101.64.223"), 443)
                .allowed
        );
        assert!(!s.allows(None, ip("151.102.0.1"), 443).allowed);
        assert!(s.allows(None, ip("2a04:4e42::"), 443).allowed);
        assert!(!s.allows(None, ip("2a04:4e42::1"), 443).allowed);
        assert!(s.allows(None, ip("::ffff:151.101.0.1"), 443).allowed);
    }

    #[test]
    fn special_addresses_need_an_address_rule() {
        let s = set("internal.test:8080");
        let d = s.allows(Some("internal.test"), ip("10.0.0.5"), 8080);
        assert!(!d.allowed);
        assert!(d.reason.contains("private"), "{}", d.reason);
        assert!(d.reason.contains("10.0.0.5:8080"), "{}", d.reason);
        for a in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
        ] {
            assert!(!s.allows(Some("internal.test"), ip(a), 8080).allowed, "{a}");
        }
        let open = set("internal.test:8080,10.0.0.5:8080");
        assert!(
            open.allows(Some("internal.test"), ip("10.0.0.5"), 8080)
                .allowed
        );
        assert!(
            !open
                .allows(Some("internal.test"), ip("10.0.0.6"), 8080)
                .allowed
        );
        // The address rule's port must match too.
        let wrong_port = set("internal.test:8080,10.0.0.5:80");
        assert!(
            !wrong_port
                .allows(Some("internal.test"), ip("10.0.0.5"), 8080)
                .allowed
        );
        // A block inside the range opens it; a wider block does not.
        let block = set("10.0.0.0/8:8080");
        assert!(block.allows(None, ip("10.9.9.9"), 8080).allowed);
        let everything = set("0.0.0.0/0:80,[::/0]:80");
        assert!(everything.allows(None, ip("8.8.8.8"), 80).allowed);
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!everything.allows(None, ip(a), 80).allowed, "{a}");
        }
        // A link-local block does not open the metadata address inside it.
        let link = set("169.254.0.0/16:80");
        assert!(link.allows(None, ip("169.254.1.1"), 80).allowed);
        assert!(!link.allows(None, ip("169.254.169.254"), 80).allowed);
        assert!(
            set("169.254.169.254:80")
                .allows(None, ip("169.254.169.254"), 80)
                .allowed
        );
        // Loopback via a mapped address, opened by the IPv4 rule.
        let lo = set("127.0.0.1:9000");
        assert!(lo.allows(None, ip("::ffff:127.0.0.1"), 9000).allowed);
        assert!(!lo.allows(None, ip("127.0.0.2"), 9000).allowed);
    }

    #[test]
    fn precheck_refuses_names_no_rule_could_allow() {
        let s = set("pypi.org:443,*.example.org");
        assert!(s.precheck_name("pypi.org", 443).is_none());
        assert!(s.precheck_name("a.example.org", 80).is_none());
        let d = s.precheck_name("evil.com", 443).expect("refused");
        assert!(!d.allowed);
        assert!(d.reason.contains("evil.com:443"), "{}", d.reason);
        assert!(s.precheck_name("pypi.org", 80).is_some());
        assert!(set("10.0.0.0/8:22")
            .precheck_name("anything.test", 22)
            .is_some());
        assert!(RuleSet::none().precheck_name("pypi.org", 443).is_some());
    }

    #[test]
    fn normalize_name_examples() {
        assert_eq!(
            normalize_name("Files.PythonHosted.org."),
            Ok("files.pythonhosted.org".into())
        );
        assert!(normalize_name("").is_err());
        assert!(normalize_name(".").is_err());
        assert!(normalize_name("a\0b.org").is_err());
        assert!(normalize_name("127.0.0.1").is_err());
        assert!(normalize_name("xn--bcher-kva.example").is_ok());
    }

    #[test]
    fn documentation_and_benchmark_ranges_are_ordinary() {
        // A test network may put the package registry there.
        let s = set("pypi.org");
        for a in [
            "203.0.113.9",
            "192.0.2.1",
            "198.51.100.5",
            "198.18.0.1",
            "2001:db8::1",
            "3fff::1",
            "2001:2::1",
        ] {
            let d = s.allows(Some("pypi.org"), ip(a), 443);
            assert!(d.allowed, "{a}: {}", d.reason);
        }
    }

    #[test]
    fn host_networks_need_an_address_rule_inside_them() {
        let host: Vec<Cidr> = ["203.0.113.0/24", "203.0.113.2", "10.0.0.0/24", "fd00::/64"]
            .iter()
            .map(|c| c.parse().expect("block"))
            .collect();
        let s = set("pypi.org");
        // Without host networks (ProxyConfig::new): allowed.
        assert!(s.allows(Some("pypi.org"), ip("203.0.113.9"), 443).allowed);
        let d = s.allows_on_host(Some("pypi.org"), ip("203.0.113.9"), 443, &host);
        assert!(!d.allowed);
        assert!(d.reason.contains("host's own network"), "{}", d.reason);
        assert!(d.reason.contains("(203.0.113.0/24)"), "{}", d.reason);
        assert!(d.reason.contains("`203.0.113.9:443`"), "{}", d.reason);
        // Mapped and NAT64 forms of it too.
        for a in ["::ffff:203.0.113.9", "64:ff9b::cb00:7109"] {
            assert!(
                !s.allows_on_host(Some("pypi.org"), ip(a), 443, &host)
                    .allowed,
                "{a}"
            );
        }
        // Outside the host's networks: allowed.
        assert!(
            s.allows_on_host(Some("pypi.org"), ip("198.51.100.1"), 443, &host)
                .allowed
        );
        // Opened by the address, or by a block inside the network...
        let open = set("pypi.org,203.0.113.9");
        let d = open.allows_on_host(Some("pypi.org"), ip("203.0.113.9"), 443, &host);
        assert!(d.allowed, "{}", d.reason);
        assert!(d.reason.contains("host's own network"), "{}", d.reason);
        let block = set("203.0.113.0/25:443");
        assert!(
            block
                .allows_on_host(None, ip("203.0.113.9"), 443, &host)
                .allowed
        );
        // ...but not by a wider block, nor on another port; and a block for
        // the network does not open the host's own address inside it.
        let wide = set("203.0.0.0/16:443");
        assert!(
            !wide
                .allows_on_host(None, ip("203.0.113.9"), 443, &host)
                .allowed
        );
        assert!(
            !set("pypi.org,203.0.113.9:80")
                .allows_on_host(Some("pypi.org"), ip("203.0.113.9"), 443, &host)
                .allowed
        );
        let net = set("203.0.113.0/24:443");
        assert!(
            net.allows_on_host(None, ip("203.0.113.9"), 443, &host)
                .allowed
        );
        let d = net.allows_on_host(None, ip("203.0.113.2"), 443, &host);
        assert!(
            !d.allowed && d.reason.contains("(203.0.113.2/32)"),
            "{}",
            d.reason
        );
        // After the special classes: a private host network needs a rule
        // inside both ranges.
        let private = set("10.0.0.0/8:22");
        assert!(
            private
                .allows_on_host(None, ip("10.1.0.1"), 22, &host)
                .allowed
        );
        let d = private.allows_on_host(None, ip("10.0.0.7"), 22, &host);
        assert!(
            !d.allowed && d.reason.contains("(10.0.0.0/24)"),
            "{}",
            d.reason
        );
        let d = set("10.0.0.7:22").allows_on_host(None, ip("10.0.0.7"), 22, &host);
        assert!(d.allowed, "{}", d.reason);
        assert!(
            d.reason.contains("private") && d.reason.contains("host's own"),
            "{}",
            d.reason
        );
        let d = set("[fd00::/64]:22").allows_on_host(None, ip("fd00::5"), 22, &host);
        assert!(d.allowed, "{}", d.reason);
        // No rule at all still says so first.
        let d = RuleSet::none().allows_on_host(None, ip("203.0.113.9"), 443, &host);
        assert!(d.reason.starts_with("no rule allows"), "{}", d.reason);
    }
}
