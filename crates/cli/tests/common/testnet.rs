//! Destination hosts for the network tests: a network namespace per test,
//! joined to the host's namespace by a veth pair on a private /30
//! (10.231.X.Y/30: the host side is `.1`, the namespace side `.2`), with
//! small Python servers inside it:
//!
//! - HTTP on port 80: `/` is [`BODY`], `/large` is [`LARGE_LEN`] bytes;
//! - HTTPS on port 443, the same paths, with a self-signed certificate for
//!   `web.test` ([`TestHost::cert`], an EC key made by `openssl req -x509`);
//! - a TCP echo server on [`ECHO_PORT`].
//!
//! Every accepted connection is logged by port, so a test can show that a
//! server saw nothing ([`TestHost::connections`]). The formicary proxy
//! connects out from the host's namespace, so it reaches these servers
//! through the veth pair, like any routed destination.
//!
//! Names come from the test process's pid and a counter, so tests running
//! in parallel threads (and other test processes) get their own
//! namespace, interfaces and subnet. [`Drop`] kills the servers, deletes
//! the namespace and the host's side of the pair, also when a test fails
//! halfway through setting up.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The host's Python, which the servers run with (the sandbox's is the
/// same file, bound read-only).
pub const PYTHON: &str = "/usr/bin/python3";

/// The body of `/` on the HTTP and HTTPS servers.
pub const BODY: &str = "formicary-testnet-body\n";

/// The length of `/large` (bytes `i % 251`, so truncation shows).
pub const LARGE_LEN: usize = 200 * 1024;

/// The TCP echo server's port.
pub const ECHO_PORT: u16 = 9000;

/// The name the HTTPS certificate is made for (CN and SAN).
pub const CERT_NAME: &str = "web.test";

/// How long a server may take to answer from the host after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The servers, one process, a thread per connection.
const SERVER_PY: &str = r#"
import http.server, socket, socketserver, ssl, sys, threading

log_path, addr, cert, key = sys.argv[1:5]
BODY = b"formicary-testnet-body\n"
LARGE = bytes(i % 251 for i in range(200 * 1024))
log_lock = threading.Lock()

def log(port):
    with log_lock, open(log_path, "a") as f:
        f.write("%d\n" % port)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = LARGE if self.path == "/large" else BODY
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    def verify_request(self, request, client_address):
        log(self.server_address[1])
        return True
    def handle_error(self, request, client_address):
        pass

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)

class TlsServer(Server):
    def finish_request(self, request, client_address):
        request.settimeout(10)
        try:
            tls = ctx.wrap_socket(request, server_side=True)
        except OSError:
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(10)
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)

class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    def verify_request(self, request, client_address):
        log(self.server_address[1])
        return True
    def handle_error(self, request, client_address):
        pass

servers = [
    Server((addr, 80), Handler),
    TlsServer((addr, 443), Handler),
    EchoServer((addr, 9000), Echo),
]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"#;

/// Whether `ip`, `openssl` and the host's Python are here; prints a SKIP
/// line and returns false when one is missing.
pub fn tools_present() -> bool {
    for (tool, args) in [
        ("ip", &["-V"][..]),
        ("openssl", &["version"][..]),
        (PYTHON, &["--version"][..]),
    ] {
        let ok = Command::new(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("SKIP: `{tool}` is not available (the network tests' hosts need it)");
            return false;
        }
    }
    true
}

/// One destination host: a network namespace with its servers.
pub struct TestHost {
    /// The namespace's name (`ip netns`).
    pub netns: String,
    /// The host's end of the veth pair.
    host_if: String,
    /// The host's address on the pair (`.1`).
    pub host_side: Ipv4Addr,
    /// The servers' address (`.2`).
    pub addr: Ipv4Addr,
    dir: tempfile::TempDir,
    servers: Vec<Child>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestHost {
    /// Sets up a namespace, its link to the host and its servers, and
    /// waits until each server answers from the host. Panics (after
    /// undoing what was done) when a step fails.
    pub fn start() -> TestHost {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let index = free_subnet(pid, n);
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + index * 4;
        let mut host = TestHost {
            netns: format!("formicary-test-{pid}-{n}"),
            // At most 15 characters: "fmh" + 7 pid digits + "x" + 3.
            host_if: format!("fmh{pid}x{n}"),
            host_side: Ipv4Addr::from(base + 1),
            addr: Ipv4Addr::from(base + 2),
            dir: super::scratch(),
            servers: Vec::new(),
        };
        let peer_if = format!("fmn{pid}x{n}");
        // Leftovers of a killed earlier process that had the same pid.
        let _ = quiet(&["netns", "del", &host.netns]);
        let _ = quiet(&["link", "del", &host.host_if]);
        let ns = host.netns.clone();
        let host_cidr = format!("{}/30", host.host_side);
        let ns_cidr = format!("{}/30", host.addr);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link",
            "add",
            &host.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns]);
        ip(&["addr", "add", &host_cidr, "dev", &host.host_if]);
        ip(&["link", "set", &host.host_if, "up"]);
        ip(&["-n", &ns, "addr", "add", &ns_cidr, "dev", &peer_if]);
        ip(&["-n", &ns, "link", "set", &peer_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        host.make_cert();
        host.start_servers();
        host.wait_ready();
        host
    }

    /// The HTTPS server's certificate (PEM), for `--file PATH:cert.pem`.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// `cert()` as a `--file` argument that copies it to `/sandbox/cert.pem`.
    pub fn cert_file_arg(&self) -> String {
        format!("{}:cert.pem", self.cert().display())
    }

    /// The connections the servers accepted on `port` so far (the checks
    /// of [`TestHost::start`] included).
    pub fn connections(&self, port: u16) -> usize {
        let log =
            std::fs::read_to_string(self.dir.path().join("connections.log")).unwrap_or_default();
        log.lines().filter(|l| l.trim() == port.to_string()).count()
    }

    /// `--resolve NAME:ADDR` for this host.
    pub fn resolve(&self, name: &str) -> String {
        format!("{name}:{}", self.addr)
    }

    fn make_cert(&self) {
        let dir = self.dir.path();
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "2", "-subj"])
            .arg(format!("/CN={CERT_NAME}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{CERT_NAME}"))
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()
            .expect("run openssl req");
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_servers(&mut self) {
        let dir = self.dir.path();
        let script = dir.join("servers.py");
        std::fs::write(&script, SERVER_PY).expect("write the servers' script");
        let errors = std::fs::File::create(dir.join("servers.err")).expect("create servers.err");
        // `ip netns exec` enters the namespace and execs the program: the
        // child's pid is the server's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, PYTHON])
            .arg(&script)
            .arg(dir.join("connections.log"))
            .arg(self.addr.to_string())
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errors)
            .spawn()
            .expect("start the servers with ip netns exec");
        self.servers.push(child);
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        for (port, check) in [
            (80, Check::Http),
            (443, Check::Closes),
            (ECHO_PORT, Check::Echo),
        ] {
            let target = SocketAddr::from((self.addr, port));
            loop {
                if check.passes(target) {
                    break;
                }
                if let Some(Ok(Some(status))) = self.servers.first_mut().map(|c| c.try_wait()) {
                    panic!(
                        "the test servers in {} exited ({status}): {}",
                        self.netns,
                        self.server_errors()
                    );
                }
                assert!(
                    start.elapsed() < READY_TIMEOUT,
                    "the test server on {target} did not answer within {READY_TIMEOUT:?}: {}",
                    self.server_errors()
                );
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    fn server_errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("servers.err")).unwrap_or_default()
    }

    /// Where this host's scratch files are (scripts, logs, certificate).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace destroys its end of the pair, which takes
        // the host's end with it; delete that too in case setup stopped
        // before the peer moved.
        let _ = quiet(&["netns", "del", &self.netns]);
        let _ = quiet(&["link", "del", &self.host_if]);
    }
}

enum Check {
    /// GET / answers with BODY.
    Http,
    /// Bytes that are not TLS make the server close the connection: it
    /// was accepted (and logged), not only queued by the kernel.
    Closes,
    /// A byte sent comes back.
    Echo,
}

impl Check {
    fn passes(&self, target: SocketAddr) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        match self {
            Check::Closes => {
                let mut rest = Vec::new();
                s.write_all(b"not tls\r\n\r\n").is_ok()
                    && match s.read_to_end(&mut rest) {
                        Ok(_) => true,
                        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                    }
            }
            Check::Http => {
                if s.write_all(b"GET / HTTP/1.0\r\nHost: web.test\r\n\r\n")
                    .is_err()
                {
                    return false;
                }
                let mut reply = String::new();
                s.read_to_string(&mut reply).is_ok() && reply.ends_with(BODY)
            }
            Check::Echo => {
                let mut b = [0u8; 1];
                s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"x"
            }
        }
    }
}

/// A /30 of 10.231.0.0/16 (its index, 0 to 16383) that no interface of
/// the host uses, chosen from the pid and counter.
fn free_subnet(pid: u32, n: u32) -> u32 {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("run ip addr show");
    let listing = String::from_utf8_lossy(&out.stdout);
    let used: Vec<u32> = listing
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .filter(|a| a >> 16 == u32::from(Ipv4Addr::new(10, 231, 0, 0)) >> 16)
        .map(|a| (a & 0xffff) / 4)
        .collect();
    let first = (pid.wrapping_mul(64).wrapping_add(n)) % 16384;
    (0..16384)
        .map(|i| (first + i) % 16384)
        .find(|i| !used.contains(i))
        .expect("a free /30 in 10.231.0.0/16")
}

/// Runs `ip ARGS`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip ARGS` for cleanup: errors are expected and ignored.
fn quiet(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}
