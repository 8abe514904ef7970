//! formicary's network egress filter: a proxy that runs outside the
//! sandbox and lets the program inside reach only the destinations the
//! operator listed with `--net allow=RULE[,RULE...]`.
//!
//! The parts, in the order a connection meets them:
//! - [`rules`]: the allow-list (`pypi.org`, `*.pythonhosted.org`,
//!   `10.1.2.0/24:8000-8100`, `[2001:db8::1]:443`) and its decision.
//! - [`resolve`]: the proxy resolves names itself ([`resolve::Resolver`]),
//!   so it decides on the address it will connect to (no DNS rebinding).
//! - [`addresses`]: address classes (loopback, private, link-local,
//!   metadata, ...) and the host's own networks (read from `/proc/net`),
//!   refused unless a rule names that address.
//! - [`sni`]: a bounds-checked TLS ClientHello parser, so that a CONNECT
//!   tunnel's SNI must equal the CONNECT target.
//! - [`proxy`]: the HTTP forward proxy (absolute URI and CONNECT) and
//!   SOCKS5 server on one listener, its limits (bytes, connections, idle
//!   time), its log of attempts, and its shutdown at the end of a run.
//!
//! Parsing never touches the network; only [`proxy`] and
//! [`resolve::SystemResolver`] do.

pub mod addresses;
pub mod proxy;
pub mod resolve;
pub mod rules;
pub mod sni;

pub use addresses::{classify, host_networks, AddressClass, Cidr, CidrError, Special};
pub use proxy::{
    AcceptWaker, Attempt, ClientStream, Limits, Listener, Protocol, Proxy, ProxyConfig, Stats,
};
pub use resolve::{ResolveError, Resolver, StaticResolver, SystemResolver};
pub use rules::{Decision, HostPattern, PortRange, Rule, RuleError, RuleSet};
pub use sni::{parse_client_hello_sni, ClientHelloError};
