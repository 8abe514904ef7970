//! The fuzz targets as plain functions, shared by the cargo-fuzz targets
//! (`fuzz_targets/`) and the stable-toolchain runner (`src/bin/runner.rs`).
//! Each takes arbitrary bytes; any panic is a finding.

use std::path::Path;

/// `EngineConfig::parse` on arbitrary text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = formicary_engine::config::EngineConfig::parse(Path::new("fuzz.toml"), text);
    }
}

/// The size and duration parsers, and `format_size` on what parses.
pub fn units(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(n) = formicary_engine::units::parse_size(text) {
            let shown = formicary_engine::units::format_size(n);
            // What format_size prints must parse back to the same size.
            assert_eq!(
                formicary_engine::units::parse_size(&shown).ok(),
                Some(n),
                "format_size({n}) = {shown:?} does not parse back"
            );
        }
        let _ = formicary_engine::units::parse_duration(text);
    }
}

/// The runtime catalogue merged with arbitrary operator text.
pub fn catalogue(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let base = formicary_lang::Catalogue::builtin().expect("the built-in catalogue loads");
        let _ = base.merged("fuzz", text);
    }
}

/// The seccomp policy parser, and compiling what it accepts.
pub fn seccomp_policy(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        use formicary_engine::seccomp::{Arch, DenyMode, Policy};
        if let Ok(policy) = Policy::from_toml(text) {
            // A policy that loads must compile for every architecture and
            // mode (or fail with an error, never a panic).
            for arch in Arch::ALL {
                for mode in [DenyMode::Notify, DenyMode::Errno] {
                    let _ = policy.compile(arch, mode);
                }
            }
        }
    }
}

/// The TLS ClientHello parser the proxy runs on a tunnel's first bytes
/// (sent by the sandboxed program).
pub fn client_hello(data: &[u8]) {
    let _ = formicary_netproxy::sni::looks_like_tls(data);
    let _ = formicary_netproxy::parse_client_hello_sni(data);
}

/// `--net` rule lists, and decisions on what parses.
pub fn net_rules(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(rules) = formicary_netproxy::RuleSet::parse_net(text) {
            let shown = rules.to_string();
            // What a rule set prints must parse back to the same rules.
            assert_eq!(
                formicary_netproxy::RuleSet::parse_net(&shown).ok(),
                Some(rules.clone()),
                "{text:?} printed as {shown:?} does not parse back"
            );
            for (name, addr, port) in [
                (Some("pypi.org"), "151.101.0.223", 443),
                (Some("a.b.example"), "10.0.0.1", 80),
                (None, "::ffff:127.0.0.1", 22),
                (None, "169.254.169.254", 80),
            ] {
                let addr = addr.parse().expect("a valid test address");
                let _ = rules.allows(name, addr, port);
                let _ = rules.precheck_name(name.unwrap_or("x"), port);
            }
        }
    }
}

/// What a sandboxed program sends the proxy (an HTTP head, a CONNECT, a
/// SOCKS5 handshake, then TLS), served by a real `Proxy` over an
/// in-memory stream. The rules allow names, but nothing resolves, so no
/// connection is ever made.
pub fn proxy_request(data: &[u8]) {
    use formicary_netproxy::{Proxy, ProxyConfig, RuleSet, StaticResolver};
    use std::sync::Arc;
    let rules = RuleSet::parse_net("allow=*.fuzz.test,example.org:1-65535").expect("valid rules");
    let config = ProxyConfig::new(rules).with_resolver(Arc::new(StaticResolver::new()));
    let proxy = Proxy::new(config);
    proxy.handle_connection(memory_stream::MemoryStream::new(data));
    for attempt in proxy.log() {
        assert!(!attempt.allowed, "nothing resolves, yet {attempt:?}");
    }
}

mod memory_stream {
    use std::io::{self, Read, Write};
    use std::net::Shutdown;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A client connection whose bytes are a fixed input; what the proxy
    /// writes back is dropped. Clones share the input.
    pub struct MemoryStream {
        input: Arc<Mutex<io::Cursor<Vec<u8>>>>,
    }

    impl MemoryStream {
        pub fn new(data: &[u8]) -> MemoryStream {
            MemoryStream {
                input: Arc::new(Mutex::new(io::Cursor::new(data.to_vec()))),
            }
        }
    }

    impl Read for MemoryStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.input.lock() {
                Ok(mut cursor) => cursor.read(buf),
                Err(_) => Err(io::Error::other("poisoned")),
            }
        }
    }

    impl Write for MemoryStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl formicary_netproxy::ClientStream for MemoryStream {
        fn try_clone_stream(&self) -> io::Result<Self> {
            Ok(MemoryStream {
                input: Arc::clone(&self.input),
            })
        }
        fn set_read_timeout_stream(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
        fn shutdown_stream(&self, _: Shutdown) -> io::Result<()> {
            Ok(())
        }
    }
}

/// A fuzz target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: [(&str, Target); 7] = [
    ("config", config),
    ("units", units),
    ("catalogue", catalogue),
    ("seccomp_policy", seccomp_policy),
    ("client_hello", client_hello),
    ("net_rules", net_rules),
    ("proxy_request", proxy_request),
];
