//! The filtering proxy: an HTTP forward proxy (absolute-URI requests and
//! CONNECT) and a SOCKS5 server (no authentication, CONNECT only) on one
//! listener, told apart by the first byte (5 is SOCKS5).
//!
//! For each client connection, in order:
//! 1. read the request (bounded in size and time);
//! 2. count it against the run's connection limit;
//! 3. check the rules on the name and port asked for, before any lookup;
//! 4. resolve the name on this side ([`crate::resolve::Resolver`]) and check
//!    every address ([`RuleSet::allows_on_host`]: rules, special classes,
//!    and the host's own networks);
//! 5. connect to an address that passed, and only such an address (no
//!    second lookup, so no DNS rebinding);
//! 6. relay bytes both ways, counting them against the run's byte limits,
//!    until either side closes or the connection is idle for
//!    [`Limits::idle_timeout`]. In a tunnel (CONNECT or SOCKS5) whose
//!    client speaks TLS first, the ClientHello's server name must be the
//!    tunnel's target name. (Inside a tunnel nothing else is checked: the
//!    destination is the address the proxy connected to, whatever an HTTP
//!    `Host` header in it says.)
//!
//! A refusal is immediate and says why: an HTTP 403 (or 400, 501, 502)
//! with a one-line reason, or a SOCKS5 reply code (2: not allowed by the
//! ruleset). Every attempt is recorded as an [`Attempt`], the run's
//! `network` result. A tunnel refused for its TLS server name was already
//! connected (the name comes after the CONNECT reply): the destination
//! sees a connection opened and closed without data.
//!
//! The accept side is generic ([`Listener`], [`ClientStream`]) so that the
//! engine can serve the sandbox through a Unix socket; the upstream side is
//! always TCP from this process.
//!
//! Plain HTTP is forwarded one request per client connection
//! (`Connection: close`), with the `Host` header rewritten to the checked
//! target and the body limited to its `Content-Length`, so that a client
//! cannot smuggle a second request to another virtual host on the same
//! upstream connection. Chunked request bodies (`Transfer-Encoding`) are
//! refused with 501 and a reason asking for a `Content-Length`: forwarding
//! them would need a chunked decoder to find the end of the body, which is
//! where smuggling bugs live; clients that need them use CONNECT (HTTPS).
//!
//! ## Lifetime
//!
//! The engine runs one [`Proxy`] per sandbox run: [`Proxy::serve`] in a
//! thread, on the listener inside the sandbox's network namespace, then
//! [`Proxy::shutdown`] at the end of the run, which stops accepting (and
//! wakes the accept), closes every open client and upstream connection,
//! waits for their threads, and makes [`Proxy::log`] and [`Proxy::stats`]
//! final; `serve` returns and its thread can be joined. Open connections
//! are kept in a registry, with a second handle on each socket, that each
//! connection leaves when its thread ends; one thread per proxy (only
//! while something is relayed) closes idle connections.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::addresses::{canonical, Cidr};
use crate::resolve::{Resolver, SystemResolver};
use crate::rules::{normalize_name, Decision, RuleSet};
use crate::sni::{looks_like_tls, parse_client_hello_sni, ClientHelloError, MAX_CLIENT_HELLO};

/// The largest HTTP request head (request line and headers) accepted.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Entries kept in the log beyond the connection limit (refusals of
/// connections over the limit); later ones are only counted.
const LOG_SLACK: u64 = 1024;

const RELAY_CHUNK: usize = 16 * 1024;

/// A client connection the proxy can serve: TCP, or a Unix socket bridged
/// from the sandbox.
pub trait ClientStream: Read + Write + Send + Sized + 'static {
    /// A second handle on the same connection, for the other direction.
    fn try_clone_stream(&self) -> io::Result<Self>;
    /// As [`TcpStream::set_read_timeout`].
    fn set_read_timeout_stream(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// As [`TcpStream::shutdown`].
    fn shutdown_stream(&self, how: Shutdown) -> io::Result<()>;
}

impl ClientStream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn set_read_timeout_stream(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }
    fn shutdown_stream(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

impl ClientStream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn set_read_timeout_stream(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }
    fn shutdown_stream(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

/// Wakes a thread blocked in [`Listener::accept_stream`], from another
/// thread; the accept then fails and does not block again.
pub type AcceptWaker = Box<dyn Fn() + Send + Sync>;

/// Where client connections come from.
pub trait Listener: Send + 'static {
    type Stream: ClientStream;
    /// The next client connection.
    fn accept_stream(&self) -> io::Result<Self::Stream>;
    /// How [`Proxy::stop`] and [`Proxy::shutdown`] wake [`Proxy::serve`]
    /// out of a blocked accept. `None` (the default) leaves that to the
    /// caller.
    fn accept_waker(&self) -> Option<AcceptWaker> {
        None
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn accept_stream(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
    /// `shutdown(SHUT_RDWR)` on a second handle of the listening socket:
    /// on Linux a blocked `accept` returns `EINVAL`, and connections to
    /// the socket are refused from then on. `None` when the socket cannot
    /// be duplicated (out of file descriptors).
    fn accept_waker(&self) -> Option<AcceptWaker> {
        // A TcpStream on the listening socket, for its shutdown method.
        let socket = TcpStream::from(OwnedFd::from(self.try_clone().ok()?));
        Some(Box::new(move || {
            let _ = socket.shutdown(Shutdown::Both);
        }))
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn accept_stream(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
    /// As for [`TcpListener`]: a blocked `accept` returns `EINVAL`.
    fn accept_waker(&self) -> Option<AcceptWaker> {
        let socket = UnixStream::from(OwnedFd::from(self.try_clone().ok()?));
        Some(Box::new(move || {
            let _ = socket.shutdown(Shutdown::Both);
        }))
    }
}

/// The proxy's limits for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Bytes from the sandbox to all destinations together. Default 256 MiB.
    pub max_bytes_up: u64,
    /// Bytes from all destinations to the sandbox together. Default 1 GiB.
    pub max_bytes_down: u64,
    /// Client connections (allowed or not) in the run. Default 1024.
    pub max_connections: u64,
    /// Client connections open at once, each served by a thread of this
    /// process (outside the sandbox's pids limit). Connections over it are
    /// closed at once. Default 128.
    pub max_concurrent: u64,
    /// Time to connect to a destination. Default 10 s.
    pub connect_timeout: Duration,
    /// Time for a client to send its whole request (HTTP head or SOCKS5
    /// handshake). Default 10 s.
    pub request_timeout: Duration,
    /// A relayed connection with no byte in either direction for this long
    /// is closed (`limit_exceeded: "idle_timeout"` on its [`Attempt`]).
    /// Checked every eighth of it (from 10 ms to 1 s). Zero turns it off.
    /// Default 120 s.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes_up: 256 << 20,
            max_bytes_down: 1 << 30,
            max_connections: 1024,
            max_concurrent: 128,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Everything a proxy needs: rules, limits, a resolver and the host's
/// networks.
#[derive(Clone)]
pub struct ProxyConfig {
    pub rules: RuleSet,
    pub limits: Limits,
    pub resolver: Arc<dyn Resolver>,
    /// The networks of the proxy's host, refused unless a rule lists the
    /// address ([`RuleSet::allows_on_host`]); usually
    /// [`crate::addresses::host_networks`]. Empty by default.
    pub host_networks: Vec<Cidr>,
}

impl ProxyConfig {
    /// `rules` with the default limits, the host's resolver, and no host
    /// networks (this reads nothing from the system: add them with
    /// [`ProxyConfig::with_host_networks`]).
    pub fn new(rules: RuleSet) -> ProxyConfig {
        ProxyConfig {
            rules,
            limits: Limits::default(),
            resolver: Arc::new(SystemResolver),
            host_networks: Vec::new(),
        }
    }

    /// The same refusing `networks` as the host's own
    /// ([`crate::addresses::host_networks`]).
    pub fn with_host_networks(mut self, networks: Vec<Cidr>) -> ProxyConfig {
        self.host_networks = networks;
        self
    }

    /// The same with `resolver` instead.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> ProxyConfig {
        self.resolver = resolver;
        self
    }

    /// The same with `limits` instead.
    pub fn with_limits(mut self, limits: Limits) -> ProxyConfig {
        self.limits = limits;
        self
    }
}

/// How the client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// An absolute-URI HTTP request (`GET http://host/path`).
    Http,
    /// An HTTP CONNECT tunnel.
    Connect,
    /// A SOCKS5 CONNECT.
    Socks5,
}

/// One connection attempt, as reported in the run's `network` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub protocol: Protocol,
    /// The host name the client asked for; `None` for an address literal.
    pub name: Option<String>,
    /// The address connected to (or refused); `None` when refused before
    /// resolving.
    pub address: Option<IpAddr>,
    pub port: u16,
    /// Whether the connection was made and relayed. False for refusals,
    /// and for allowed destinations that could not be reached (the reason
    /// says which), or whose tunnel was closed for a TLS server name.
    pub allowed: bool,
    /// Why, in one line.
    pub reason: String,
    /// Bytes relayed from the client to the destination (for HTTP, the
    /// rewritten request head included).
    pub bytes_up: u64,
    /// Bytes relayed from the destination to the client.
    pub bytes_down: u64,
    /// Set when a limit closed the connection: which one.
    pub limit_exceeded: Option<String>,
}

/// Totals for the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub connections: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The limits that were reached, in the order they were first reached:
    /// `bytes_up`, `bytes_down`, `connections`, `concurrent_connections`,
    /// `idle_timeout`.
    pub limits_exceeded: Vec<String>,
    /// Attempts not kept in the log because it was full.
    pub log_dropped: u64,
    /// Client connections closed unserved because `max_concurrent` were
    /// open (they are not in the log).
    pub rejected_concurrent: u64,
}

struct Shared {
    config: ProxyConfig,
    log: Mutex<Log>,
    connections: AtomicU64,
    /// Client connections being served now.
    active: AtomicU64,
    /// Client connections closed because `active` was at its limit.
    rejected_concurrent: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    log_dropped: AtomicU64,
    exceeded: Mutex<Vec<String>>,
    /// Set by [`Proxy::stop`]: no new connection is served. Written with
    /// `registry` locked, so that a connection is either registered before
    /// it (and closed by [`Proxy::shutdown`]) or refused.
    stop: AtomicBool,
    /// Open connections and listeners being served.
    registry: Mutex<Registry>,
    /// Notified when a connection leaves the registry, or on shutdown.
    changed: Condvar,
    /// The origin of [`ConnState::last_activity`].
    epoch: Instant,
}

impl Shared {
    /// Milliseconds since `epoch`.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The log, and whether [`Proxy::shutdown`] has made it final.
#[derive(Default)]
struct Log {
    entries: Vec<Attempt>,
    sealed: bool,
}

/// The reason of an attempt being resolved and connected. If the proxy is
/// shut down before it is decided, it becomes [`NOT_SERVED`].
const PENDING: &str = "in progress: resolving the name and connecting";
const NOT_SERVED: &str =
    "not served: the proxy was shut down while resolving the name or connecting";

/// [`ConnState::closed_by`] values.
const CLOSED_IDLE: u8 = 1;
const CLOSED_SHUTDOWN: u8 = 2;

/// What the registry and the relay share about one connection.
#[derive(Default)]
struct ConnState {
    /// Whether bytes are being relayed (the idle timeout applies).
    relaying: AtomicBool,
    /// [`Shared::now_ms`] when a byte was last read or a chunk written.
    last_activity: AtomicU64,
    /// Who closed the connection from outside: 0, [`CLOSED_IDLE`] or
    /// [`CLOSED_SHUTDOWN`].
    closed_by: AtomicU8,
}

/// A handle that ends every blocked read and write on its connection.
trait Closable: Send {
    fn close(&self);
}

impl<S: ClientStream> Closable for S {
    fn close(&self) {
        let _ = self.shutdown_stream(Shutdown::Both);
    }
}

/// One open client connection: its state and second handles on its client
/// and upstream sockets.
struct Entry {
    state: Arc<ConnState>,
    handles: Vec<Box<dyn Closable>>,
}

impl Entry {
    fn close(&self) {
        for h in &self.handles {
            h.close();
        }
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// Listeners being served, by the same ids.
    wakers: HashMap<u64, AcceptWaker>,
    /// Set by [`Proxy::shutdown`]: open connections are being closed, and
    /// none may add an upstream connection.
    closing: bool,
    /// Whether the idle-timeout thread runs.
    reaper: bool,
}

/// A running (or ready) proxy. Clones share the rules, limits, counters
/// and log.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

/// Why a request is refused, and how each protocol says it.
#[derive(Debug)]
enum Refusal {
    /// The rules, a special address, the SNI or a limit: 403, SOCKS5 2.
    Denied(String),
    /// The request could not be understood: 400, SOCKS5 1.
    BadRequest(String),
    /// A valid request the proxy does not do: 501, SOCKS5 7 (or 8).
    Unsupported(String, u8),
    /// The name did not resolve: 502, SOCKS5 4.
    Unresolved(String),
    /// No connection to the destination: 502, SOCKS5 5.
    ConnectFailed(String),
}

impl Refusal {
    fn reason(&self) -> &str {
        match self {
            Refusal::Denied(r)
            | Refusal::BadRequest(r)
            | Refusal::Unsupported(r, _)
            | Refusal::Unresolved(r)
            | Refusal::ConnectFailed(r) => r,
        }
    }

    fn http_status(&self) -> (u16, &'static str) {
        match self {
            Refusal::Denied(_) => (403, "Forbidden"),
            Refusal::BadRequest(_) => (400, "Bad Request"),
            Refusal::Unsupported(..) => (501, "Not Implemented"),
            Refusal::Unresolved(_) | Refusal::ConnectFailed(_) => (502, "Bad Gateway"),
        }
    }

    fn socks_code(&self) -> u8 {
        match self {
            Refusal::Denied(_) => 0x02,
            Refusal::BadRequest(_) => 0x01,
            Refusal::Unsupported(_, code) => *code,
            Refusal::Unresolved(_) => 0x04,
            Refusal::ConnectFailed(_) => 0x05,
        }
    }
}

/// The host part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Name(String),
    Literal(IpAddr),
}

/// A parsed request: where to, and what to send first.
struct Request {
    protocol: Protocol,
    host: Host,
    port: u16,
    /// Bytes to send upstream before relaying (the rewritten HTTP head, or
    /// bytes the client sent early).
    pending_up: Vec<u8>,
    /// For HTTP: the request body length; the client is not read beyond.
    body_len: Option<u64>,
}

impl Proxy {
    /// A proxy with `config`; it serves nothing until [`Proxy::serve`] or
    /// [`Proxy::handle_connection`].
    pub fn new(config: ProxyConfig) -> Proxy {
        Proxy {
            shared: Arc::new(Shared {
                config,
                log: Mutex::new(Log::default()),
                connections: AtomicU64::new(0),
                active: AtomicU64::new(0),
                rejected_concurrent: AtomicU64::new(0),
                bytes_up: AtomicU64::new(0),
                bytes_down: AtomicU64::new(0),
                log_dropped: AtomicU64::new(0),
                exceeded: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
                registry: Mutex::new(Registry::default()),
                changed: Condvar::new(),
                epoch: Instant::now(),
            }),
        }
    }

    /// Accepts connections from `listener`, one thread each, until
    /// [`Proxy::stop`] or [`Proxy::shutdown`], and returns then (at once
    /// when the listener has an [`Listener::accept_waker`], or when the
    /// caller wakes the accept, e.g. with `shutdown(2)` on the listening
    /// socket), or when the listener stops listening (`EINVAL`). Other
    /// accept errors (such as running out of file descriptors) are retried
    /// after a short pause.
    pub fn serve<L: Listener>(&self, listener: L) {
        let Some(_waker) = WakerRegistration::new(&self.shared, listener.accept_waker()) else {
            return; // Stopped already.
        };
        while !self.stopped() {
            let stream = match listener.accept_stream() {
                Ok(stream) => stream,
                Err(e) => {
                    if self.stopped() || e.kind() == io::ErrorKind::InvalidInput {
                        return;
                    }
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            // Registered before anything else, so that shutdown waits
            // for whatever this connection still counts or logs.
            let Some(registration) = Registration::new(&self.shared, &stream) else {
                drop(stream);
                if !self.stopped() {
                    // Out of file descriptors for a second handle.
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            };
            let Some(slot) = Slot::take(&self.shared) else {
                self.exceeded("concurrent_connections");
                self.shared
                    .rejected_concurrent
                    .fetch_add(1, Ordering::SeqCst);
                drop(stream);
                continue;
            };
            let proxy = self.clone();
            let spawned = thread::Builder::new()
                .name("netproxy-conn".into())
                .spawn(move || {
                    proxy.serve_registered(registration, stream);
                    drop(slot);
                });
            if spawned.is_err() {
                // Out of threads: the stream was dropped (closed).
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Stops accepting: [`Proxy::serve`] returns (waking its accept when
    /// the listener has an [`Listener::accept_waker`]), and connections
    /// accepted from now on are closed unserved. Open connections go on.
    pub fn stop(&self) {
        let registry = lock(&self.shared.registry);
        self.shared.stop.store(true, Ordering::SeqCst);
        for wake in registry.wakers.values() {
            wake();
        }
    }

    /// Ends the run's proxying and makes its log final: stops accepting as
    /// [`Proxy::stop`] does, shuts down (both directions) every open client
    /// and upstream connection so that their threads end at once, then
    /// waits up to `grace` for every connection thread to finish and record
    /// its bytes. After it, [`Proxy::log`] and [`Proxy::stats`] no longer
    /// change, and the proxy holds no connection's file descriptor once its
    /// thread has finished.
    ///
    /// Returns the number of connections still being served when `grace`
    /// ran out (0 when all finished): only a thread blocked in name
    /// resolution or in connecting to a destination can be late, since
    /// neither can be interrupted. Its attempt is in the log as not served,
    /// and it closes its connection as soon as it returns.
    ///
    /// Safe to call more than once, and from any thread.
    pub fn shutdown(&self, grace: Duration) -> usize {
        let deadline = Instant::now().checked_add(grace);
        let mut registry = lock(&self.shared.registry);
        self.shared.stop.store(true, Ordering::SeqCst);
        registry.closing = true;
        for wake in registry.wakers.values() {
            wake();
        }
        for entry in registry.open.values() {
            let _ = entry.state.closed_by.compare_exchange(
                0,
                CLOSED_SHUTDOWN,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            entry.close();
        }
        self.shared.changed.notify_all();
        while !registry.open.is_empty() {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                break;
            }
            registry = wait(&self.shared.changed, registry, left);
        }
        let unfinished = registry.open.len();
        drop(registry);
        let mut log = lock(&self.shared.log);
        for a in log.entries.iter_mut().filter(|a| a.reason == PENDING) {
            a.reason = NOT_SERVED.to_string();
        }
        log.sealed = true;
        unfinished
    }

    /// Client connections being served now (registered and not finished).
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.registry).open.len()
    }

    /// Every attempt so far, in order.
    pub fn log(&self) -> Vec<Attempt> {
        lock(&self.shared.log).entries.clone()
    }

    /// The run's totals.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.shared.connections.load(Ordering::SeqCst),
            bytes_up: self.shared.bytes_up.load(Ordering::SeqCst),
            bytes_down: self.shared.bytes_down.load(Ordering::SeqCst),
            limits_exceeded: lock(&self.shared.exceeded).clone(),
            log_dropped: self.shared.log_dropped.load(Ordering::SeqCst),
            rejected_concurrent: self.shared.rejected_concurrent.load(Ordering::SeqCst),
        }
    }

    /// Serves one client connection to its end, in this thread (and one
    /// more while relaying). After [`Proxy::stop`], closes it unserved.
    pub fn handle_connection<S: ClientStream>(&self, client: S) {
        match Registration::new(&self.shared, &client) {
            Some(registration) => self.serve_registered(registration, client),
            None => {
                let _ = client.shutdown_stream(Shutdown::Both);
            }
        }
    }

    /// [`Proxy::handle_connection`]; `registration` ends (and shutdown
    /// stops waiting for this connection) when it returns.
    fn serve_registered<S: ClientStream>(&self, registration: Registration, mut client: S) {
        // (Parameters drop in reverse order: the client closes before the
        // registration ends, so shutdown never returns before it.)
        let limits = self.shared.config.limits;
        if client
            .set_read_timeout_stream(Some(limits.request_timeout))
            .is_err()
        {
            return;
        }
        let mut first = [0u8; 1];
        if client.read_exact(&mut first).is_err() {
            return; // Closed or silent before a request: nothing to record.
        }
        let request = if first[0] == 0x05 {
            read_socks5(&mut client)
        } else {
            read_http(&mut client, first[0])
        };
        let request = match request {
            Ok(r) => r,
            Err((protocol, refusal)) => {
                let mut a = attempt(protocol, None, None, 0, &refusal);
                if registration.state.closed_by.load(Ordering::SeqCst) == CLOSED_SHUTDOWN {
                    a.reason = "the proxy was shut down before the request was complete".into();
                }
                self.record(a);
                reply_refusal(&mut client, protocol, &refusal);
                return;
            }
        };
        let name = match &request.host {
            Host::Name(n) => Some(n.clone()),
            Host::Literal(_) => None,
        };
        let count = self.shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        if count > limits.max_connections {
            self.exceeded("connections");
            let refusal = Refusal::Denied(format!(
                "the run's limit of {} proxied connections is reached",
                limits.max_connections
            ));
            let mut a = attempt(request.protocol, name, None, request.port, &refusal);
            a.limit_exceeded = Some("connections".into());
            self.record(a);
            reply_refusal(&mut client, request.protocol, &refusal);
            return;
        }
        // Logged now, so that an attempt still resolving or connecting
        // when the proxy is shut down is in the final log.
        let index = self.record(Attempt {
            protocol: request.protocol,
            name: name.clone(),
            address: None,
            port: request.port,
            allowed: false,
            reason: PENDING.to_string(),
            bytes_up: 0,
            bytes_down: 0,
            limit_exceeded: None,
        });
        let (upstream, addr, decision) = match self.connect(&request) {
            Ok(ok) => ok,
            Err((addr, refusal)) => {
                self.update(index, |a| {
                    a.address = addr;
                    a.reason = refusal.reason().to_string();
                });
                reply_refusal(&mut client, request.protocol, &refusal);
                return;
            }
        };
        if !registration.add_upstream(&upstream) {
            let _ = upstream.shutdown(Shutdown::Both);
            self.update(index, |a| {
                a.address = Some(addr);
                a.reason = format!("{}; not relayed: the proxy was shut down", decision.reason);
            });
            return;
        }
        self.update(index, |a| {
            a.address = Some(addr);
            a.allowed = true;
            a.reason = decision.reason;
        });
        let greeting = match request.protocol {
            Protocol::Http => Ok(()),
            Protocol::Connect => client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .and_then(|()| client.flush()),
            Protocol::Socks5 => {
                let bound = upstream
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                client.write_all(&socks_reply(0x00, bound))
            }
        };
        if greeting.is_err() || client.set_read_timeout_stream(None).is_err() {
            return;
        }
        let sni_target = match request.protocol {
            Protocol::Http => None,
            Protocol::Connect | Protocol::Socks5 => Some(name),
        };
        if !registration.start_relay() {
            return;
        }
        let conn = Connection {
            proxy: self.clone(),
            index,
            port: request.port,
            state: Arc::clone(&registration.state),
        };
        conn.relay(
            client,
            upstream,
            request.pending_up,
            request.body_len,
            sni_target,
        );
    }

    /// Steps 3 to 5: rules, resolution, addresses, connection.
    fn connect(
        &self,
        request: &Request,
    ) -> Result<(TcpStream, IpAddr, Decision), (Option<IpAddr>, Refusal)> {
        let config = &self.shared.config;
        let port = request.port;
        let mut candidates: Vec<(IpAddr, Decision)> = Vec::new();
        let mut first_denial: Option<(IpAddr, Decision)> = None;
        match &request.host {
            Host::Literal(addr) => {
                let d = config
                    .rules
                    .allows_on_host(None, *addr, port, &config.host_networks);
                if d.allowed {
                    candidates.push((canonical(*addr), d));
                } else {
                    first_denial = Some((*addr, d));
                }
            }
            Host::Name(name) => {
                if let Some(d) = config.rules.precheck_name(name, port) {
                    return Err((None, Refusal::Denied(d.reason)));
                }
                let addrs = config
                    .resolver
                    .resolve(name)
                    .map_err(|e| (None, Refusal::Unresolved(e.to_string())))?;
                for addr in addrs {
                    let d =
                        config
                            .rules
                            .allows_on_host(Some(name), addr, port, &config.host_networks);
                    if d.allowed {
                        candidates.push((canonical(addr), d));
                    } else if first_denial.is_none() {
                        first_denial = Some((addr, d));
                    }
                }
            }
        }
        if candidates.is_empty() {
            return Err(match first_denial {
                Some((addr, d)) => (Some(addr), Refusal::Denied(d.reason)),
                None => (None, Refusal::Unresolved("the name has no address".into())),
            });
        }
        let mut last_error = None;
        for (addr, decision) in candidates {
            if lock(&self.shared.registry).closing {
                // Resolved after a shutdown: connect to nothing.
                return Err((
                    Some(addr),
                    Refusal::ConnectFailed("the proxy was shut down".into()),
                ));
            }
            // Exactly the address that was checked.
            match TcpStream::connect_timeout(
                &SocketAddr::new(addr, port),
                config.limits.connect_timeout,
            ) {
                Ok(stream) => return Ok((stream, addr, decision)),
                Err(e) => last_error = Some((addr, e)),
            }
        }
        match last_error {
            Some((addr, e)) => Err((
                Some(addr),
                Refusal::ConnectFailed(format!("cannot connect to {addr} port {port}: {e}")),
            )),
            None => Err((
                None,
                Refusal::ConnectFailed("no address to connect to".into()),
            )),
        }
    }

    /// Appends to the log; the index, unless the log is full.
    fn record(&self, a: Attempt) -> Option<usize> {
        let cap = self
            .shared
            .config
            .limits
            .max_connections
            .saturating_add(LOG_SLACK);
        let mut log = lock(&self.shared.log);
        if log.sealed {
            return None;
        }
        if log.entries.len() as u64 >= cap {
            self.shared.log_dropped.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        log.entries.push(a);
        Some(log.entries.len() - 1)
    }

    fn update(&self, index: Option<usize>, f: impl FnOnce(&mut Attempt)) {
        if let Some(i) = index {
            let mut log = lock(&self.shared.log);
            if !log.sealed {
                if let Some(a) = log.entries.get_mut(i) {
                    f(a);
                }
            }
        }
    }

    fn exceeded(&self, what: &str) {
        let mut list = lock(&self.shared.exceeded);
        if !list.iter().any(|w| w == what) {
            list.push(what.to_string());
        }
    }

    /// Takes up to `want` bytes from the run's budget in `direction`.
    fn take_budget(&self, up: bool, want: usize) -> usize {
        let (counter, limit) = if up {
            (
                &self.shared.bytes_up,
                self.shared.config.limits.max_bytes_up,
            )
        } else {
            (
                &self.shared.bytes_down,
                self.shared.config.limits.max_bytes_down,
            )
        };
        let mut granted = 0;
        let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            granted = limit.saturating_sub(used).min(want as u64);
            Some(used + granted)
        });
        // `granted` <= `want`, a usize.
        usize::try_from(granted).unwrap_or(want)
    }
}

/// A connection's place in the registry, left on drop (which wakes
/// [`Proxy::shutdown`]).
struct Registration {
    shared: Arc<Shared>,
    id: u64,
    state: Arc<ConnState>,
}

impl Registration {
    /// Registers `client` with a second handle on it; `None` when the proxy
    /// is stopped or the handle cannot be made (the caller closes it).
    fn new<S: ClientStream>(shared: &Arc<Shared>, client: &S) -> Option<Registration> {
        let handle = client.try_clone_stream().ok()?;
        let mut registry = lock(&shared.registry);
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let state = Arc::new(ConnState::default());
        registry.open.insert(
            id,
            Entry {
                state: Arc::clone(&state),
                handles: vec![Box::new(handle)],
            },
        );
        Some(Registration {
            shared: Arc::clone(shared),
            id,
            state,
        })
    }

    /// Registers the upstream connection too; false when the proxy is
    /// being shut down (or no handle can be made): do not relay.
    fn add_upstream(&self, upstream: &TcpStream) -> bool {
        let Ok(handle) = upstream.try_clone() else {
            return false;
        };
        let mut registry = lock(&self.shared.registry);
        if registry.closing {
            return false;
        }
        match registry.open.get_mut(&self.id) {
            Some(entry) => {
                entry.handles.push(Box::new(handle));
                true
            }
            None => false,
        }
    }

    /// Marks the connection as relaying, under the idle timeout, and
    /// starts the thread that enforces it if none runs. False when that
    /// thread cannot be started: do not relay.
    fn start_relay(&self) -> bool {
        self.state
            .last_activity
            .store(self.shared.now_ms(), Ordering::SeqCst);
        self.state.relaying.store(true, Ordering::SeqCst);
        if self.shared.config.limits.idle_timeout.is_zero() {
            return true;
        }
        let mut registry = lock(&self.shared.registry);
        if registry.reaper {
            return true;
        }
        let shared = Arc::clone(&self.shared);
        let spawned = thread::Builder::new()
            .name("netproxy-idle".into())
            .spawn(move || close_idle_connections(&shared));
        registry.reaper = spawned.is_ok();
        registry.reaper
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let entry = lock(&self.shared.registry).open.remove(&self.id);
        // The second handles close here, outside the lock.
        drop(entry);
        self.shared.changed.notify_all();
    }
}

/// A listener's waker in the registry while [`Proxy::serve`] runs.
struct WakerRegistration {
    shared: Arc<Shared>,
    id: u64,
}

impl WakerRegistration {
    /// `None` when the proxy is stopped already.
    fn new(shared: &Arc<Shared>, waker: Option<AcceptWaker>) -> Option<WakerRegistration> {
        let mut registry = lock(&shared.registry);
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        let id = registry.next_id;
        registry.next_id += 1;
        if let Some(w) = waker {
            registry.wakers.insert(id, w);
        }
        Some(WakerRegistration {
            shared: Arc::clone(shared),
            id,
        })
    }
}

impl Drop for WakerRegistration {
    fn drop(&mut self) {
        let waker = lock(&self.shared.registry).wakers.remove(&self.id);
        drop(waker);
    }
}

/// The idle-timeout thread: closes relayed connections idle for
/// `idle_timeout`, checking every eighth of it; ends when no connection is
/// relaying (the next relay starts it again).
fn close_idle_connections(shared: &Shared) {
    let timeout = shared.config.limits.idle_timeout;
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let tick = (timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut registry = lock(&shared.registry);
    loop {
        let relaying = |e: &Entry| e.state.relaying.load(Ordering::SeqCst);
        if !registry.open.values().any(relaying) {
            registry.reaper = false;
            return;
        }
        let now = shared.now_ms();
        for entry in registry.open.values().filter(|e| relaying(e)) {
            let idle = now.saturating_sub(entry.state.last_activity.load(Ordering::SeqCst));
            if idle >= timeout_ms
                && entry
                    .state
                    .closed_by
                    .compare_exchange(0, CLOSED_IDLE, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                entry.close();
            }
        }
        registry = wait(&shared.changed, registry, tick);
    }
}

/// One of the `max_concurrent` connection slots, given back on drop.
struct Slot {
    shared: Arc<Shared>,
}

impl Slot {
    fn take(shared: &Arc<Shared>) -> Option<Slot> {
        let max = shared.config.limits.max_concurrent;
        shared
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                shared: Arc::clone(shared),
            })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not lose the log: take the data anyway.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `cv` for at most `timeout`, poisoning ignored as in [`lock`].
fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    match cv.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

fn attempt(
    protocol: Protocol,
    name: Option<String>,
    address: Option<IpAddr>,
    port: u16,
    refusal: &Refusal,
) -> Attempt {
    Attempt {
        protocol,
        name,
        address,
        port,
        allowed: false,
        reason: refusal.reason().to_string(),
        bytes_up: 0,
        bytes_down: 0,
        limit_exceeded: None,
    }
}

fn reply_refusal<S: Write>(client: &mut S, protocol: Protocol, refusal: &Refusal) {
    if let Refusal::Unsupported(_, SOCKS_NO_METHOD) = refusal {
        return; // Already answered with the method choice 0xff.
    }
    let _ = match protocol {
        Protocol::Socks5 => client.write_all(&socks_reply(
            refusal.socks_code(),
            SocketAddr::from(([0, 0, 0, 0], 0)),
        )),
        Protocol::Http | Protocol::Connect => {
            let (code, text) = refusal.http_status();
            // One line: no CR or LF from the reason may split the response.
            let reason: String = refusal
                .reason()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let body = format!("formicary proxy: {reason}\n");
            let head = format!(
                "HTTP/1.1 {code} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            client
                .write_all(head.as_bytes())
                .and_then(|()| client.write_all(body.as_bytes()))
        }
    };
    let _ = client.flush();
}

fn socks_reply(code: u8, bound: SocketAddr) -> Vec<u8> {
    let mut out = vec![0x05, code, 0x00];
    match bound.ip() {
        IpAddr::V4(a) => {
            out.push(0x01);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(0x04);
            out.extend_from_slice(&a.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// A host as a client wrote it: a name, an IPv4 literal or an IPv6
/// literal (bare or in brackets).
fn parse_host(text: &str) -> Result<Host, String> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(addr) = inner.parse::<IpAddr>() {
        return Ok(Host::Literal(addr));
    }
    normalize_name(text)
        .map(Host::Name)
        .map_err(|why| format!("`{text}` is not a valid host: {why}"))
}

/// `host:port`, `[v6]:port`; `default_port` when the port is absent (HTTP).
fn parse_authority(text: &str, default_port: Option<u16>) -> Result<(Host, u16), String> {
    let (host, port) = if text.starts_with('[') {
        match text.rfind(']') {
            Some(end) => {
                let (h, rest) = text.split_at(end + 1);
                (h, rest.strip_prefix(':'))
            }
            None => return Err(format!("`{text}`: unclosed `[`")),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{text}`: bad port"))?,
        (None, Some(d)) => d,
        (None, None) => return Err(format!("`{text}`: a port is required (host:port)")),
    };
    Ok((parse_host(host)?, port))
}

type ReadResult = Result<Request, (Protocol, Refusal)>;

/// The SOCKS5 method choice "no acceptable methods".
const SOCKS_NO_METHOD: u8 = 0xff;

fn read_socks5<S: Read + Write>(client: &mut S) -> ReadResult {
    let p = Protocol::Socks5;
    let io_err = |e: io::Error| (p, Refusal::BadRequest(format!("SOCKS5 handshake: {e}")));
    let mut n = [0u8; 1];
    client.read_exact(&mut n).map_err(io_err)?;
    let mut methods = vec![0u8; usize::from(n[0])];
    client.read_exact(&mut methods).map_err(io_err)?;
    if !methods.contains(&0x00) {
        let _ = client.write_all(&[0x05, SOCKS_NO_METHOD]);
        return Err((
            p,
            Refusal::Unsupported(
                "the SOCKS5 client offered no \"no authentication\" method".into(),
                SOCKS_NO_METHOD,
            ),
        ));
    }
    client.write_all(&[0x05, 0x00]).map_err(io_err)?;
    let mut head = [0u8; 4];
    client.read_exact(&mut head).map_err(io_err)?;
    if head[0] != 0x05 {
        return Err((p, Refusal::BadRequest("bad SOCKS5 request version".into())));
    }
    let host = match head[3] {
        0x01 => {
            let mut a = [0u8; 4];
            client.read_exact(&mut a).map_err(io_err)?;
            Host::Literal(IpAddr::from(a))
        }
        0x04 => {
            let mut a = [0u8; 16];
            client.read_exact(&mut a).map_err(io_err)?;
            Host::Literal(IpAddr::from(a))
        }
        0x03 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).map_err(io_err)?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).map_err(io_err)?;
            let text = String::from_utf8_lossy(&name).into_owned();
            parse_host(&text).map_err(|e| (p, Refusal::BadRequest(e)))?
        }
        other => {
            return Err((
                p,
                Refusal::Unsupported(
                    format!("SOCKS5 address type {other} is not supported"),
                    0x08,
                ),
            ))
        }
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).map_err(io_err)?;
    let port = u16::from_be_bytes(port);
    if head[1] != 0x01 {
        return Err((
            p,
            Refusal::Unsupported(
                format!("SOCKS5 command {} is not supported: only CONNECT", head[1]),
                0x07,
            ),
        ));
    }
    if port == 0 {
        return Err((p, Refusal::BadRequest("SOCKS5 request for port 0".into())));
    }
    Ok(Request {
        protocol: p,
        host,
        port,
        pending_up: Vec::new(),
        body_len: None,
    })
}

/// Headers never forwarded: hop-by-hop, proxy-only, and `Host` (rewritten).
const DROPPED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "host",
];

fn read_http<S: Read>(client: &mut S, first: u8) -> ReadResult {
    let mut buf = vec![first];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Err((
                Protocol::Http,
                Refusal::BadRequest(format!("request head larger than {MAX_REQUEST_HEAD} bytes")),
            ));
        }
        let mut chunk = [0u8; 4096];
        match client.read(&mut chunk) {
            Ok(0) => {
                return Err((
                    Protocol::Http,
                    Refusal::BadRequest("the client closed before the end of its request".into()),
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err((
                    Protocol::Http,
                    Refusal::BadRequest(format!("reading the request: {e}")),
                ))
            }
        }
    };
    let rest = buf.split_off(head_end);
    let head = String::from_utf8(buf).map_err(|_| {
        (
            Protocol::Http,
            Refusal::BadRequest("request head is not UTF-8".into()),
        )
    })?;
    parse_http_head(&head, rest)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_http_head(head: &str, rest: Vec<u8>) -> ReadResult {
    // Lines end in CRLF only; any other control character (a bare LF or
    // CR could start a header of the proxy's making upstream) is refused.
    if head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .any(|l| l.chars().any(|c| c.is_control() && c != '\t'))
    {
        return Err((
            Protocol::Http,
            Refusal::BadRequest("control characters in the request head".into()),
        ));
    }
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let parts: Vec<&str> = line.split(' ').collect();
    let bad = |p, why: String| (p, Refusal::BadRequest(why));
    let [method, target, version] = parts[..] else {
        return Err(bad(Protocol::Http, format!("bad request line `{line}`")));
    };
    let protocol = if method == "CONNECT" {
        Protocol::Connect
    } else {
        Protocol::Http
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(
            protocol,
            format!("unsupported HTTP version `{version}`"),
        ));
    }
    if protocol == Protocol::Connect {
        let (host, port) = parse_authority(target, None).map_err(|e| bad(protocol, e))?;
        return Ok(Request {
            protocol,
            host,
            port,
            pending_up: rest,
            body_len: None,
        });
    }
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.is_empty() {
        return Err(bad(protocol, format!("bad method `{method}`")));
    }
    let lower = target.to_ascii_lowercase();
    let Some(after) = lower.strip_prefix("http://").map(|_| &target[7..]) else {
        let why = if lower.starts_with("https://") {
            "send https:// requests through CONNECT".to_string()
        } else {
            format!("`{target}` is not an absolute http:// URI: this is a proxy, send `{method} http://host/path` or CONNECT host:port")
        };
        return Err(bad(protocol, why));
    };
    let split = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, path) = after.split_at(split);
    if authority.contains('@') {
        return Err(bad(protocol, "user names in URIs are not supported".into()));
    }
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('/') => p.to_string(),
        p => format!("/{p}"),
    };
    let (host, port) = parse_authority(authority, Some(80)).map_err(|e| bad(protocol, e))?;
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
    let mut body_len: Option<u64> = None;
    for header in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad(protocol, format!("bad header line `{header}`")));
        };
        let lname = name.trim().to_ascii_lowercase();
        if lname.is_empty() || name != name.trim_end() {
            return Err(bad(protocol, format!("bad header line `{header}`")));
        }
        if lname == "transfer-encoding" {
            return Err((
                protocol,
                Refusal::Unsupported(
                    "chunked request bodies are not supported by the proxy: send a Content-Length"
                        .into(),
                    0x07,
                ),
            ));
        }
        if lname == "content-length" {
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| bad(protocol, format!("bad Content-Length `{}`", value.trim())))?;
            if body_len.is_some_and(|b| b != n) {
                return Err(bad(protocol, "two different Content-Length headers".into()));
            }
            body_len = Some(n);
        }
        if DROPPED_HEADERS.contains(&lname.as_str()) {
            continue;
        }
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let body_len = body_len.unwrap_or(0);
    let mut pending_up = out.into_bytes();
    let early = usize::try_from(body_len)
        .unwrap_or(usize::MAX)
        .min(rest.len());
    pending_up.extend_from_slice(&rest[..early]);
    Ok(Request {
        protocol,
        host,
        port,
        pending_up,
        body_len: Some(body_len - early as u64),
    })
}

/// One allowed connection being relayed.
struct Connection {
    proxy: Proxy,
    index: Option<usize>,
    port: u16,
    state: Arc<ConnState>,
}

/// What to tell the pump thread when it must stop the whole connection.
struct Closer<S: ClientStream> {
    client: S,
    upstream: TcpStream,
}

impl<S: ClientStream> Closer<S> {
    fn close(&self) {
        let _ = self.client.shutdown_stream(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Connection {
    /// Relays until both directions end. `remaining_body`: for HTTP, the
    /// bytes of body still to read from the client. `sni_target`: for a
    /// tunnel, the name it was allowed for (`None` inside for a literal).
    fn relay<S: ClientStream>(
        self,
        client: S,
        upstream: TcpStream,
        pending_up: Vec<u8>,
        remaining_body: Option<u64>,
        sni_target: Option<Option<String>>,
    ) {
        let handles = (|| {
            Ok::<_, io::Error>((
                client.try_clone_stream()?,
                upstream.try_clone()?,
                Closer {
                    client: client.try_clone_stream()?,
                    upstream: upstream.try_clone()?,
                },
                Closer {
                    client: client.try_clone_stream()?,
                    upstream: upstream.try_clone()?,
                },
            ))
        })();
        let Ok((client_r, upstream_w, closer_up, closer_down)) = handles else {
            let _ = client.shutdown_stream(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            return;
        };
        let http = remaining_body.is_some();
        let conn = Arc::new(self);
        let up_conn = Arc::clone(&conn);
        let up = thread::Builder::new()
            .name("netproxy-up".into())
            .spawn(move || {
                up_conn.pump_up(
                    client_r,
                    upstream_w,
                    pending_up,
                    remaining_body,
                    sni_target,
                    &closer_up,
                )
            });
        let Ok(up) = up else {
            closer_down.close();
            return;
        };
        conn.pump_down(upstream, client, &closer_down, http);
        let _ = up.join();
        conn.record_close();
    }

    /// Notes a close from outside (idle timeout, shutdown) on the attempt.
    fn record_close(&self) {
        match self.state.closed_by.load(Ordering::SeqCst) {
            CLOSED_IDLE => {
                let timeout = self.proxy.shared.config.limits.idle_timeout;
                self.proxy.exceeded("idle_timeout");
                self.proxy.update(self.index, |a| {
                    a.limit_exceeded.get_or_insert_with(|| "idle_timeout".into());
                    a.reason = format!(
                        "{}; closed: no byte in either direction for {timeout:?} (the idle timeout)",
                        a.reason
                    );
                });
            }
            CLOSED_SHUTDOWN => self.proxy.update(self.index, |a| {
                a.reason = format!("{}; closed: the proxy was shut down", a.reason);
            }),
            _ => {}
        }
    }

    /// A byte was read or a chunk written: the connection is not idle.
    fn touch(&self) {
        self.state
            .last_activity
            .store(self.proxy.shared.now_ms(), Ordering::SeqCst);
    }

    fn pump_up<S: ClientStream>(
        &self,
        mut client: S,
        mut upstream: TcpStream,
        mut pending: Vec<u8>,
        mut remaining_body: Option<u64>,
        sni_target: Option<Option<String>>,
        closer: &Closer<S>,
    ) {
        if let Some(target) = sni_target {
            match self.check_sni(&mut client, &mut pending, target.as_deref()) {
                Ok(()) => {}
                Err(reason) => {
                    self.proxy.update(self.index, |a| {
                        a.allowed = false;
                        a.reason = reason;
                    });
                    closer.close();
                    return;
                }
            }
        }
        if !pending.is_empty() && !self.forward(&pending, true, &mut upstream, closer) {
            return;
        }
        let mut buf = vec![0u8; RELAY_CHUNK];
        loop {
            let want = match remaining_body {
                Some(0) => break,
                Some(n) => usize::try_from(n).unwrap_or(RELAY_CHUNK).min(RELAY_CHUNK),
                None => RELAY_CHUNK,
            };
            let n = match client.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    self.touch();
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if let Some(r) = remaining_body.as_mut() {
                *r -= n as u64;
            }
            if !self.forward(&buf[..n], true, &mut upstream, closer) {
                return;
            }
        }
        if remaining_body.is_none() {
            // Tunnel: pass the client's end of stream on.
            let _ = upstream.shutdown(Shutdown::Write);
        }
    }

    fn pump_down<S: ClientStream>(
        &self,
        mut upstream: TcpStream,
        mut client: S,
        closer: &Closer<S>,
        http: bool,
    ) {
        let mut buf = vec![0u8; RELAY_CHUNK];
        loop {
            let n = match upstream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.touch();
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if !self.forward(&buf[..n], false, &mut client, closer) {
                return;
            }
        }
        if http {
            // The response is complete (the request said Connection: close):
            // end the client connection, which also ends the upward pump.
            closer.close();
        } else {
            let _ = client.shutdown_stream(Shutdown::Write);
        }
    }

    /// Writes `data` within the run's byte budget; false when the
    /// connection is over (closed by a limit or a write error).
    fn forward<W: Write, S: ClientStream>(
        &self,
        data: &[u8],
        up: bool,
        to: &mut W,
        closer: &Closer<S>,
    ) -> bool {
        let granted = self.proxy.take_budget(up, data.len());
        let ok = to
            .write_all(&data[..granted])
            .and_then(|()| to.flush())
            .is_ok();
        if ok {
            self.touch();
        }
        self.proxy.update(self.index, |a| {
            if up {
                a.bytes_up += granted as u64;
            } else {
                a.bytes_down += granted as u64;
            }
        });
        if granted < data.len() {
            let which = if up { "bytes_up" } else { "bytes_down" };
            self.proxy.exceeded(which);
            let limits = self.proxy.shared.config.limits;
            let max = if up {
                limits.max_bytes_up
            } else {
                limits.max_bytes_down
            };
            self.proxy.update(self.index, |a| {
                a.limit_exceeded = Some(which.to_string());
                a.reason = format!(
                    "{}; closed: the run's {which} limit of {max} bytes is reached",
                    a.reason
                );
            });
            closer.close();
            return false;
        }
        if !ok {
            closer.close();
        }
        ok
    }

    /// Reads the client's first flight into `pending`; when it is TLS, its
    /// server name must be `target` (for a name), or anything (for an
    /// address literal).
    fn check_sni<S: Read>(
        &self,
        client: &mut S,
        pending: &mut Vec<u8>,
        target: Option<&str>,
    ) -> Result<(), String> {
        let mut buf = vec![0u8; RELAY_CHUNK];
        loop {
            if pending.len() >= 2 || (!pending.is_empty() && !looks_like_tls(pending)) {
                if !looks_like_tls(pending) {
                    return Ok(()); // Not TLS: a plain TCP tunnel.
                }
                match parse_client_hello_sni(pending) {
                    Err(ClientHelloError::Incomplete) => {}
                    Err(e) => return Err(format!("refused after CONNECT: {e}")),
                    Ok(sni) => return sni_decision(sni.as_deref(), target, self.port),
                }
            }
            if pending.len() > MAX_CLIENT_HELLO + 5 * 8 {
                return Err("refused: the TLS ClientHello is too large".into());
            }
            match client.read(&mut buf) {
                Ok(0) => return Ok(()), // Closed: nothing to check.
                Ok(n) => {
                    self.touch();
                    pending.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading the TLS ClientHello: {e}")),
            }
        }
    }
}

fn sni_decision(sni: Option<&str>, target: Option<&str>, port: u16) -> Result<(), String> {
    match (sni, target) {
        (Some(s), Some(t)) if s == t => Ok(()),
        (Some(s), Some(t)) => Err(format!(
            "refused: the TLS server name `{s}` is not the tunnel's target `{t}` port {port}"
        )),
        (None, Some(t)) => Err(format!(
            "refused: a TLS ClientHello without a server name in the tunnel to `{t}` port {port}"
        )),
        // An address literal target: the address was what the rules
        // allowed; the server name cannot move the connection elsewhere.
        (_, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Request {
        match parse_http_head(head, Vec::new()) {
            Ok(r) => r,
            Err((_, e)) => panic!("{head:?}: {e:?}"),
        }
    }

    fn refusal(head: &str) -> Refusal {
        match parse_http_head(head, Vec::new()) {
            Ok(_) => panic!("{head:?} was accepted"),
            Err((_, e)) => e,
        }
    }

    #[test]
    fn absolute_uri_is_rewritten() {
        let r = parse("GET http://Example.org:8080/a?b=1 HTTP/1.1\r\nHost: evil.test\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n");
        assert_eq!(r.protocol, Protocol::Http);
        assert_eq!(r.host, Host::Name("example.org".into()));
        assert_eq!(r.port, 8080);
        let head = String::from_utf8(r.pending_up).expect("utf-8");
        assert_eq!(
            head,
            "GET /a?b=1 HTTP/1.1\r\nHost: Example.org:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(r.body_len, Some(0));
        let r = parse("GET http://example.org HTTP/1.0\r\n\r\n");
        assert_eq!(r.port, 80);
        assert!(String::from_utf8_lossy(&r.pending_up).starts_with("GET / HTTP/1.1\r\n"));
        let r = parse("GET http://[2001:db8::1]:81/ HTTP/1.1\r\n\r\n");
        assert_eq!(r.host, Host::Literal("2001:db8::1".parse().expect("ip")));
        assert_eq!(r.port, 81);
    }

    #[test]
    fn body_is_limited_to_content_length() {
        let r = parse_http_head(
            "POST http://a.test/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"helloGET http://b.test/ HTTP/1.1\r\n\r\n".to_vec(),
        )
        .unwrap_or_else(|(_, e)| panic!("{e:?}"));
        assert!(String::from_utf8_lossy(&r.pending_up).ends_with("\r\n\r\nhello"));
        assert_eq!(r.body_len, Some(0));
    }

    #[test]
    fn connect_targets() {
        let r = parse("CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n");
        assert_eq!(r.protocol, Protocol::Connect);
        assert_eq!((r.host, r.port), (Host::Name("pypi.org".into()), 443));
        let r = parse("CONNECT [::1]:22 HTTP/1.1\r\n\r\n");
        assert_eq!(r.host, Host::Literal("::1".parse().expect("ip")));
        assert!(matches!(
            refusal("CONNECT pypi.org HTTP/1.1\r\n\r\n"),
            Refusal::BadRequest(_)
        ));
        assert!(matches!(
            refusal("CONNECT pypi.org:0 HTTP/1.1\r\n\r\n"),
            Refusal::BadRequest(_)
        ));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        for head in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET https://a.test/ HTTP/1.1\r\n\r\n",
            "GET http://u@a.test/ HTTP/1.1\r\n\r\n",
            "GET http://a b/ HTTP/1.1\r\n\r\n",
            "GET http://a.test/ HTTP/2\r\n\r\n",
            "GET  http://a.test/ HTTP/1.1\r\n\r\n",
            "get http://a.test/ HTTP/1.1\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET http://127.1/ HTTP/1.1\r\n\r\n",
            "GET http://a.test/x\nHost:b.test HTTP/1.1\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nA: b\rHost: c\r\n\r\n",
            "GET http://a.test/\0 HTTP/1.1\r\n\r\n",
        ] {
            let r = refusal(head);
            assert!(matches!(r, Refusal::BadRequest(_)), "{head:?}: {r:?}");
        }
        assert!(matches!(
            refusal("POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Refusal::Unsupported(..)
        ));
    }

    #[test]
    fn sni_rules() {
        assert!(sni_decision(Some("a.test"), Some("a.test"), 443).is_ok());
        assert!(sni_decision(Some("b.test"), Some("a.test"), 443).is_err());
        assert!(sni_decision(None, Some("a.test"), 443).is_err());
        assert!(sni_decision(None, None, 443).is_ok());
        assert!(sni_decision(Some("b.test"), None, 443).is_ok());
    }

    #[test]
    fn socks_replies() {
        assert_eq!(
            socks_reply(2, SocketAddr::from(([0, 0, 0, 0], 0))),
            vec![5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(socks_reply(0, "[::1]:80".parse().expect("addr")).len(), 22);
    }

    #[test]
    fn refusals_are_one_line() {
        let mut out = Vec::new();
        reply_refusal(&mut out, Protocol::Http, &Refusal::Denied("a\r\nb".into()));
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nformicary proxy: a  b\n"), "{text}");
    }

    /// A listener whose accept blocks until released, then fails with
    /// `error` every time; counts its calls.
    struct FakeListener {
        release: std::sync::mpsc::Receiver<()>,
        calls: Arc<AtomicU64>,
        error: io::ErrorKind,
    }

    // The receiver is used by the serving thread only.
    impl Listener for FakeListener {
        type Stream = TcpStream;
        fn accept_stream(&self) -> io::Result<TcpStream> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.release.recv();
            Err(io::Error::from(self.error))
        }
    }

    fn fake(error: io::ErrorKind) -> (FakeListener, std::sync::mpsc::Sender<()>, Arc<AtomicU64>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let calls = Arc::new(AtomicU64::new(0));
        let listener = FakeListener {
            release: rx,
            calls: Arc::clone(&calls),
            error,
        };
        (listener, tx, calls)
    }

    fn proxy() -> Proxy {
        Proxy::new(ProxyConfig::new(RuleSet::none()))
    }

    /// Runs `serve` in a thread; the receiver gets a message when it returns.
    fn serve_in_thread<L: Listener>(p: &Proxy, listener: L) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = p.clone();
        thread::spawn(move || {
            server.serve(listener);
            let _ = tx.send(());
        });
        rx
    }

    #[test]
    fn serve_returns_at_once_when_accept_fails_after_stop() {
        // An error other than EINVAL: without stop it would be retried.
        let (listener, release, calls) = fake(io::ErrorKind::ConnectionAborted);
        let p = proxy();
        let server = p.clone();
        let done = thread::spawn(move || server.serve(listener));
        while calls.load(Ordering::SeqCst) == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(p.shutdown(Duration::from_secs(1)), 0);
        drop(release); // The accept fails now, as after shutdown(2).
        done.join().expect("serve returned");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no second accept");
        // Once stopped, serve returns before accepting.
        let (listener, _release, calls) = fake(io::ErrorKind::ConnectionAborted);
        p.serve(listener);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn serve_returns_when_the_listener_stops_listening() {
        let (listener, release, calls) = fake(io::ErrorKind::InvalidInput);
        drop(release);
        proxy().serve(listener); // EINVAL: returns without stop.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (listener, release, calls) = fake(io::ErrorKind::ConnectionAborted);
        let p = proxy();
        let server = p.clone();
        let done = thread::spawn(move || server.serve(listener));
        drop(release);
        // Other errors are retried every 10 ms until stopped.
        thread::sleep(Duration::from_millis(100));
        p.stop();
        done.join().expect("serve returned");
        assert!(calls.load(Ordering::SeqCst) > 2, "retried");
    }

    #[test]
    fn stop_and_shutdown_wake_a_blocked_tcp_accept() {
        for shutdown in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let p = proxy();
            let done = serve_in_thread(&p, listener);
            // Wait until serve has registered its waker.
            while lock(&p.shared.registry).wakers.is_empty() {
                thread::sleep(Duration::from_millis(1));
            }
            let start = Instant::now();
            if shutdown {
                p.shutdown(Duration::from_secs(1));
            } else {
                p.stop();
            }
            done.recv_timeout(Duration::from_secs(2))
                .expect("serve returned");
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{:?}",
                start.elapsed()
            );
            assert!(lock(&p.shared.registry).wakers.is_empty());
            assert!(
                TcpStream::connect(addr).is_err(),
                "the listening socket is shut down"
            );
        }
    }

    #[test]
    fn shutdown_wakes_a_blocked_unix_accept() {
        let dir =
            std::env::temp_dir().join(format!("formicary-netproxy-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("wake.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let p = proxy();
        let done = serve_in_thread(&p, listener);
        while lock(&p.shared.registry).wakers.is_empty() {
            thread::sleep(Duration::from_millis(1));
        }
        p.shutdown(Duration::from_secs(1));
        done.recv_timeout(Duration::from_secs(2))
            .expect("serve returned");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connections_after_stop_are_closed_unserved_and_unregistered() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server_side, _) = listener.accept().expect("accept");
        let p = proxy();
        p.stop();
        p.handle_connection(server_side);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).expect("EOF"), 0);
        assert_eq!(p.open_connections(), 0);
        assert!(p.log().is_empty());
    }

    #[test]
    fn a_sealed_log_does_not_change() {
        let p = proxy();
        let i = p.record(attempt(
            Protocol::Http,
            None,
            None,
            80,
            &Refusal::Denied("x".into()),
        ));
        let pending = p.record(Attempt {
            reason: PENDING.into(),
            ..p.log()[0].clone()
        });
        assert_eq!(p.shutdown(Duration::ZERO), 0);
        assert_eq!(p.log()[1].reason, NOT_SERVED);
        p.update(i, |a| a.reason = "changed".into());
        p.update(pending, |a| a.allowed = true);
        assert_eq!(p.record(p.log()[0].clone()), None);
        let log = p.log();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].reason, "x");
        assert!(!log[1].allowed);
    }
}
