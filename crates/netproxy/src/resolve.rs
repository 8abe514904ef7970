//! Name resolution on the proxy's side.
//!
//! The proxy resolves every name itself, checks each address it got, and
//! connects to exactly an address it checked: the program in the sandbox
//! never resolves names (it has no network), and a second lookup cannot
//! return a different answer (DNS rebinding).
//!
//! [`SystemResolver`] asks the host's resolver (`getaddrinfo` through
//! [`std::net::ToSocketAddrs`]); [`StaticResolver`] is a fixed table, the
//! `--resolve NAME:ADDR` option, used by tests and by operators who want
//! no DNS at all.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::str::FromStr;

use crate::rules::normalize_name;

/// Why a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "cannot resolve `{name}`: {source}; check the name, and that the host's resolver works"
    )]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{name}` has no address{hint}")]
    NoAddress { name: String, hint: &'static str },
    #[error("`{text}` is not a NAME:ADDR mapping: write e.g. pypi.org:151.101.0.223 or example.test:[2001:db8::1]")]
    Mapping { text: String },
}

/// Turns a host name into the addresses the proxy may connect to.
pub trait Resolver: Send + Sync {
    /// The addresses of `name` (already in [`normalize_name`] form), in
    /// order of preference. Never empty on success.
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError>;
}

/// The host's resolver, called from the proxy (outside the sandbox).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        // A trailing dot makes the name absolute: no resolv.conf search
        // domain is appended to it (`intranet` must not become
        // `intranet.corp.example`).
        let absolute = format!("{name}.");
        let addrs = (absolute.as_str(), 0u16)
            .to_socket_addrs()
            .map_err(|source| ResolveError::Lookup {
                name: name.to_string(),
                source,
            })?;
        let mut out: Vec<IpAddr> = Vec::new();
        for a in addrs {
            if !out.contains(&a.ip()) {
                out.push(a.ip());
            }
        }
        if out.is_empty() {
            return Err(ResolveError::NoAddress {
                name: name.to_string(),
                hint: "",
            });
        }
        Ok(out)
    }
}

/// A fixed name-to-address table (`--resolve NAME:ADDR`, repeatable; a
/// name given twice gets both addresses, in order). Names not in the table
/// do not resolve: there is no fallback to DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticResolver {
    table: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Adds `name` → `addr`.
    pub fn insert(&mut self, name: &str, addr: IpAddr) -> Result<(), ResolveError> {
        let name = normalize_name(name).map_err(|_| ResolveError::Mapping {
            text: format!("{name}:{addr}"),
        })?;
        let entry = self.table.entry(name).or_default();
        if !entry.contains(&addr) {
            entry.push(addr);
        }
        Ok(())
    }

    /// Adds one `NAME:ADDR` mapping: `pypi.org:10.0.0.5`,
    /// `example.test:[2001:db8::1]` or `example.test:2001:db8::1`.
    pub fn add_mapping(&mut self, text: &str) -> Result<(), ResolveError> {
        let bad = || ResolveError::Mapping {
            text: text.to_string(),
        };
        let (name, addr) = text.trim().split_once(':').ok_or_else(bad)?;
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        normalize_name(name).map_err(|_| bad())?;
        self.insert(name, addr)
    }
}

impl FromStr for StaticResolver {
    type Err = ResolveError;

    /// A comma-separated list of `NAME:ADDR` mappings.
    fn from_str(list: &str) -> Result<StaticResolver, ResolveError> {
        let mut r = StaticResolver::new();
        for m in list.split(',').filter(|m| !m.trim().is_empty()) {
            r.add_mapping(m)?;
        }
        Ok(r)
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        match self.table.get(name) {
            Some(addrs) if !addrs.is_empty() => Ok(addrs.clone()),
            _ => Err(ResolveError::NoAddress {
                name: name.to_string(),
                hint: " in the --resolve table: add --resolve NAME:ADDR for it",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn static_mappings_parse() {
        let r: StaticResolver =
            "pypi.org:10.0.0.5,PyPI.org.:10.0.0.6,v6.test:[2001:db8::1],bare.test:2001:db8::2"
                .parse()
                .expect("valid");
        assert_eq!(
            r.resolve("pypi.org").expect("known"),
            vec![ip("10.0.0.5"), ip("10.0.0.6")]
        );
        assert_eq!(
            r.resolve("v6.test").expect("known"),
            vec![ip("2001:db8::1")]
        );
        assert_eq!(
            r.resolve("bare.test").expect("known"),
            vec![ip("2001:db8::2")]
        );
        let err = r.resolve("other.test").expect_err("unknown");
        assert!(err.to_string().contains("--resolve"), "{err}");
    }

    #[test]
    fn static_mapping_errors_carry_the_text() {
        for bad in [
            "pypi.org",
            "pypi.org:",
            "pypi.org:10.0.0",
            ":10.0.0.1",
            "py pi.org:10.0.0.1",
            "pypi.org:[::1",
        ] {
            let mut r = StaticResolver::new();
            let err = r.add_mapping(bad).expect_err(bad);
            assert!(matches!(err, ResolveError::Mapping { .. }), "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn system_resolver_resolves_localhost_without_network() {
        // `localhost` comes from /etc/hosts or the resolver's built-in
        // answer; no packet leaves the machine.
        if let Ok(addrs) = SystemResolver.resolve("localhost") {
            assert!(addrs.iter().all(|a| a.is_loopback()), "{addrs:?}");
        }
    }
}
