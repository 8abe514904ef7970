//! Network egress of one run, by allow-list, through a filtering proxy.
//!
//! Every sandbox has its own network namespace whose only interface is
//! loopback; with `--net none` (the default) that is all it ever has. When
//! a run allows destinations ([`NetworkSpec::allow`]):
//!
//! - the parent prepares a [`NetworkPlan`]: the rules parsed, the
//!   `--resolve` table, the proxy's limits, and the host's own networks
//!   (refused like private addresses);
//! - the sandbox's init, after bringing up loopback and before anything of
//!   the sandbox's own runs, opens a TCP listening socket on
//!   `127.0.0.1:`[`PROXY_PORT`] inside the sandbox's namespace and hands it
//!   to the supervisor over the setup socket pair (a Unix socket,
//!   `SCM_RIGHTS`), keeping no copy;
//! - the supervisor serves that socket with `formicary-netproxy` in a
//!   thread ([`RunningProxy`]): it resolves names itself, checks rules and
//!   address classes, connects from the host's namespace to the checked
//!   address only, and logs every attempt;
//! - Landlock (ABI 4+) lets the program connect to that one TCP port and
//!   bind none; the environment ([`proxy_environment`]) points the usual
//!   variables at the proxy so that pip, npm, curl, wget, git and most HTTP
//!   libraries use it unchanged.
//!
//! So the sandbox never gets an interface, a route or an address outside
//! itself: a program that ignores the proxy variables finds no route
//! (ENETUNREACH at once) and, where Landlock has network rules, no right to
//! connect anywhere but the proxy port.

use crate::result::NetworkReport;
use crate::spec::NetworkSpec;
use formicary_netproxy::{
    addresses, Limits, Proxy, ProxyConfig, ResolveError, Resolver, RuleError, RuleSet,
    StaticResolver, SystemResolver,
};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The TCP port, on the sandbox's 127.0.0.1, where the proxy answers.
/// (Squid's usual port: tools that print it look familiar.)
pub const PROXY_PORT: u16 = 3128;

/// How long the end of a run waits for connections being closed to record
/// their last bytes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why a run's network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("--net allow: {0}")]
    Rule(#[from] RuleError),
    #[error("--resolve: {0}")]
    Resolve(#[from] ResolveError),
    #[error("--net-max-{what} must be at least 1")]
    ZeroLimit { what: &'static str },
    #[error("cannot start the network proxy's thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot read the host's own networks (/proc/net/route, /proc/net/fib_trie, /proc/net/ipv6_route, /proc/net/if_inet6), which the proxy must refuse: {0}; is /proc mounted?")]
    HostNetworks(std::io::Error),
}

/// A run's network, prepared before the sandbox starts.
pub struct NetworkPlan {
    config: ProxyConfig,
    /// The rules as given, for the report.
    allow: Vec<String>,
}

impl NetworkPlan {
    /// The plan for `spec`, or `None` when the run has no network.
    /// The host's connected subnets and own addresses are read now, for
    /// this run: the proxy refuses them like private addresses.
    pub fn prepare(spec: &NetworkSpec) -> Result<Option<NetworkPlan>, NetworkError> {
        if !spec.enabled() {
            return Ok(None);
        }
        let mut plan = NetworkPlan::build(spec)?;
        let host_networks = addresses::host_networks().map_err(NetworkError::HostNetworks)?;
        plan.config = plan.config.with_host_networks(host_networks);
        Ok(Some(plan))
    }

    /// Checks every part of `spec` (rules, mappings, limits), whether or
    /// not it allows anything.
    pub fn validate(spec: &NetworkSpec) -> Result<(), NetworkError> {
        NetworkPlan::build(spec).map(|_| ())
    }

    fn build(spec: &NetworkSpec) -> Result<NetworkPlan, NetworkError> {
        let mut rules = RuleSet::none();
        for rule in &spec.allow {
            rules.extend(RuleSet::parse_list(rule)?);
        }
        let mut table = StaticResolver::new();
        for mapping in &spec.resolve {
            table.add_mapping(mapping)?;
        }
        for (what, value) in [
            ("up", spec.max_bytes_up),
            ("down", spec.max_bytes_down),
            ("connections", spec.max_connections),
        ] {
            if value == 0 {
                return Err(NetworkError::ZeroLimit { what });
            }
        }
        let limits = Limits {
            max_bytes_up: spec.max_bytes_up,
            max_bytes_down: spec.max_bytes_down,
            max_connections: spec.max_connections,
            ..Limits::default()
        };
        let config = ProxyConfig::new(rules)
            .with_limits(limits)
            .with_resolver(Arc::new(TableThenHost { table }));
        Ok(NetworkPlan {
            config,
            allow: spec.allow.clone(),
        })
    }
}

/// The environment that points programs at the proxy: the variables curl,
/// wget, git, pip (requests), npm, Go, Ruby and most libraries read, in
/// both cases where tools differ. `ALL_PROXY` is the SOCKS5 side (with
/// remote name resolution), for clients that do not speak HTTP proxies.
/// Loopback stays direct.
pub fn proxy_environment() -> Vec<(String, String)> {
    let http = format!("http://127.0.0.1:{PROXY_PORT}");
    let socks = format!("socks5h://127.0.0.1:{PROXY_PORT}");
    let direct = "localhost,127.0.0.1,::1".to_string();
    let mut env = Vec::new();
    for (name, value) in [
        ("http_proxy", &http),
        ("https_proxy", &http),
        ("all_proxy", &socks),
        ("no_proxy", &direct),
    ] {
        env.push((name.to_string(), value.clone()));
        env.push((name.to_ascii_uppercase(), value.clone()));
    }
    env.push(("npm_config_proxy".into(), http.clone()));
    env.push(("npm_config_https_proxy".into(), http.clone()));
    env.push(("PIP_PROXY".into(), http));
    env
}

/// Names from the `--resolve` table first, then the host's resolver.
struct TableThenHost {
    table: StaticResolver,
}

impl Resolver for TableThenHost {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        self.table
            .resolve(name)
            .or_else(|_| SystemResolver.resolve(name))
    }
}

/// The proxy serving one sandbox, from the moment its listening socket
/// arrives to [`RunningProxy::finish`].
pub struct RunningProxy {
    proxy: Proxy,
    thread: Option<JoinHandle<()>>,
    allow: Vec<String>,
}

impl RunningProxy {
    /// Serves `listener` (a socket listening in the sandbox's namespace)
    /// in a new thread.
    pub fn start(plan: &NetworkPlan, listener: OwnedFd) -> Result<RunningProxy, NetworkError> {
        let proxy = Proxy::new(plan.config.clone());
        let serving = proxy.clone();
        let socket = std::net::TcpListener::from(listener);
        let thread = std::thread::Builder::new()
            .name("formicary-netproxy".into())
            .spawn(move || serving.serve(socket))
            .map_err(NetworkError::Thread)?;
        Ok(RunningProxy {
            proxy,
            thread: Some(thread),
            allow: plan.allow.clone(),
        })
    }

    /// Stops the proxy: no new connection, every open one closed, and the
    /// complete log of the run.
    pub fn finish(mut self) -> NetworkReport {
        self.stop();
        let stats = self.proxy.stats();
        NetworkReport {
            allow: self.allow.clone(),
            proxy: format!("127.0.0.1:{PROXY_PORT}"),
            attempts: self.proxy.log(),
            connections: stats.connections,
            bytes_up: stats.bytes_up,
            bytes_down: stats.bytes_down,
            limits_exceeded: stats.limits_exceeded,
        }
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Stopping shuts the listening socket down, which wakes the
        // accept loop; then every open connection is shut down and the
        // log sealed. A connection still resolving or connecting after the
        // grace period is recorded as not served and connects nowhere.
        self.proxy.stop();
        let _ = thread.join();
        self.proxy.shutdown(SHUTDOWN_GRACE);
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rules_no_plan() {
        let plan = NetworkPlan::prepare(&NetworkSpec::default()).expect("valid");
        assert!(plan.is_none());
    }

    #[test]
    fn bad_rules_and_mappings_are_refused_with_the_flag_named() {
        let mut spec = NetworkSpec {
            allow: vec!["pypi.org:99999".into()],
            ..NetworkSpec::default()
        };
        let err = NetworkPlan::prepare(&spec).err().expect("refused");
        assert!(err.to_string().starts_with("--net allow:"), "{err}");
        spec.allow = vec!["pypi.org".into()];
        spec.resolve = vec!["pypi.org".into()];
        let err = NetworkPlan::prepare(&spec).err().expect("refused");
        assert!(err.to_string().starts_with("--resolve:"), "{err}");
        spec.resolve.clear();
        spec.max_connections = 0;
        let err = NetworkPlan::prepare(&spec).err().expect("refused");
        assert!(err.to_string().contains("connections"), "{err}");
    }

    #[test]
    fn rules_from_several_flags_are_all_kept() {
        let spec = NetworkSpec {
            allow: vec!["pypi.org".into(), "*.pythonhosted.org,10.0.0.1:8080".into()],
            resolve: vec!["pypi.org:10.0.0.1".into()],
            ..NetworkSpec::default()
        };
        let plan = NetworkPlan::prepare(&spec)
            .expect("valid")
            .expect("enabled");
        assert_eq!(plan.config.rules.rules().len(), 3);
        let d = plan.config.rules.allows(
            Some("files.pythonhosted.org"),
            "151.101.1.1".parse().expect("ip"),
            443,
        );
        assert!(d.allowed, "{}", d.reason);
        let d =
            plan.config
                .rules
                .allows(Some("example.org"), "151.101.1.1".parse().expect("ip"), 443);
        assert!(!d.allowed);
        assert_eq!(
            plan.config.resolver.resolve("pypi.org").expect("pinned"),
            vec!["10.0.0.1".parse::<IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn the_environment_names_the_proxy_in_both_cases() {
        let env = proxy_environment();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("https_proxy"), Some("http://127.0.0.1:3128"));
        assert_eq!(get("HTTPS_PROXY"), Some("http://127.0.0.1:3128"));
        assert_eq!(get("HTTP_PROXY"), get("http_proxy"));
        assert_eq!(get("ALL_PROXY"), Some("socks5h://127.0.0.1:3128"));
        assert_eq!(get("NO_PROXY"), Some("localhost,127.0.0.1,::1"));
        assert_eq!(get("npm_config_https_proxy"), Some("http://127.0.0.1:3128"));
    }
}
