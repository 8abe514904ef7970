//! The proxy end to end on 127.0.0.1: small origin servers (TCP echo, a
//! tiny HTTP server) and the proxy on ephemeral ports, clients speaking
//! HTTP, CONNECT and SOCKS5 by hand. No traffic leaves 127.0.0.1: names
//! resolve through a static table, and names mapped to other addresses are
//! refused before any connection.
//!
//! 127.0.0.1 is a forbidden class by default, so allowed cases list it
//! explicitly (`127.0.0.1:PORT`); the refusals show that a name resolving
//! to it without such a rule is refused.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use formicary_netproxy::sni::build_client_hello;
use formicary_netproxy::{
    Attempt, Limits, Protocol, Proxy, ProxyConfig, ResolveError, Resolver, RuleSet, StaticResolver,
};

/// Every refusal must reach the client well within this.
const FAST: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(5);

struct Origin {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Origin {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn serve(handler: fn(TcpStream)) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let port = listener.local_addr().expect("origin addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || handler(stream));
        }
    });
    Origin { port, accepted }
}

/// A TCP echo server.
fn echo_server() -> Origin {
    serve(|mut s| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// An HTTP server that answers with the request it received (head and
/// Content-Length body) as its body, and a body of 4000 `x` for `/big`.
fn http_server() -> Origin {
    serve(|mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let _ = s.set_read_timeout(Some(TIMEOUT));
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    break;
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let body = if got.starts_with(b"GET /big ") {
            vec![b'x'; 4000]
        } else {
            got
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
    })
}

fn config(rules: &str, resolve: &str) -> ProxyConfig {
    let rules = RuleSet::parse_net(&format!("allow={rules}")).expect("valid rules");
    let resolver: StaticResolver = resolve.parse().expect("valid mappings");
    ProxyConfig::new(rules).with_resolver(Arc::new(resolver))
}

fn start(config: ProxyConfig) -> (Proxy, u16) {
    let (proxy, port, _) = start_joinable(config);
    (proxy, port)
}

/// The same, with the serving thread to join.
fn start_joinable(config: ProxyConfig) -> (Proxy, u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("proxy addr").port();
    let proxy = Proxy::new(config);
    let server = proxy.clone();
    let handle = thread::spawn(move || server.serve(listener));
    (proxy, port, handle)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to proxy");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s
}

/// Everything until the peer closes (or resets), and how long it took.
fn read_to_end(s: &mut impl Read) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => panic!("read timed out"),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => panic!("read timed out"),
            Err(_) => break,
        }
    }
    (out, start.elapsed())
}

fn http(proxy_port: u16, request: &str) -> (String, Duration) {
    let mut s = connect(proxy_port);
    s.write_all(request.as_bytes()).expect("send request");
    let (out, took) = read_to_end(&mut s);
    (String::from_utf8_lossy(&out).into_owned(), took)
}

fn get(proxy_port: u16, url: &str) -> (String, Duration) {
    http(
        proxy_port,
        &format!("GET {url} HTTP/1.1\r\nHost: ignored.test\r\n\r\n"),
    )
}

fn assert_refused(response: &str, took: Duration, status: &str, reason: &str) {
    assert!(took < FAST, "refusal took {took:?}");
    assert!(
        response.starts_with(&format!("HTTP/1.1 {status}")),
        "{response}"
    );
    assert!(response.contains(reason), "{response}");
}

fn last(proxy: &Proxy) -> Attempt {
    proxy.log().last().cloned().expect("an attempt was logged")
}

/// Sends a CONNECT and reads the proxy's answer head (up to the blank line).
fn connect_tunnel(proxy_port: u16, target: &str) -> (TcpStream, String) {
    let mut s = connect(proxy_port);
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .expect("send CONNECT");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

// ---- HTTP forward proxy ----

#[test]
fn http_absolute_uri_allowed_by_address_rule() {
    let origin = http_server();
    let (proxy, port) = start(config(&format!("127.0.0.1:{}", origin.port), ""));
    let (resp, _) = get(port, &format!("http://127.0.0.1:{}/hello?x=1", origin.port));
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("GET /hello?x=1 HTTP/1.1\r\n"), "{resp}");
    let a = last(&proxy);
    assert!(a.allowed, "{a:?}");
    assert_eq!(a.protocol, Protocol::Http);
    assert_eq!(a.address, Some("127.0.0.1".parse().expect("ip")));
    assert!(a.bytes_up > 0 && a.bytes_down > 0, "{a:?}");
}

#[test]
fn http_by_name_rewrites_host_and_forwards_the_body() {
    let origin = http_server();
    let p = origin.port;
    let (proxy, port) = start(config(
        &format!("origin.test:{p},127.0.0.1:{p}"),
        "origin.test:127.0.0.1",
    ));
    let (resp, _) = http(
        port,
        &format!(
            "POST http://origin.test:{p}/up HTTP/1.1\r\nHost: evil.test\r\nProxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(
        resp.contains(&format!("\r\nHost: origin.test:{p}\r\n")),
        "{resp}"
    );
    assert!(!resp.contains("evil.test"), "{resp}");
    assert!(!resp.to_lowercase().contains("proxy-connection"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello"), "{resp}");
    assert_eq!(last(&proxy).name.as_deref(), Some("origin.test"));
}

#[test]
fn name_resolving_to_loopback_without_address_rule_is_refused() {
    let origin = http_server();
    let p = origin.port;
    let (proxy, port) = start(config(&format!("origin.test:{p}"), "origin.test:127.0.0.1"));
    let (resp, took) = get(port, &format!("http://origin.test:{p}/"));
    assert_refused(&resp, took, "403", "loopback");
    assert_eq!(origin.accepted(), 0, "the origin was never contacted");
    let a = last(&proxy);
    assert!(!a.allowed);
    assert_eq!(a.address, Some("127.0.0.1".parse().expect("ip")));
}

#[test]
fn allowed_name_resolving_to_a_private_address_is_refused() {
    let (proxy, port) = start(config("internal.test:8080", "internal.test:10.0.0.5"));
    let (resp, took) = get(port, "http://internal.test:8080/");
    assert_refused(&resp, took, "403", "private address");
    assert!(
        resp.contains("10.0.0.5:8080"),
        "the refusal says which rule would allow it: {resp}"
    );
    assert!(!last(&proxy).allowed);
}

#[test]
fn name_resolving_to_the_metadata_address_is_refused() {
    let (_proxy, port) = start(config("meta.test", "meta.test:169.254.169.254"));
    let (resp, took) = get(port, "http://meta.test/latest/meta-data/");
    assert_refused(&resp, took, "403", "metadata");
}

#[test]
fn name_resolving_into_the_hosts_network_is_refused() {
    let origin = http_server();
    let p = origin.port;
    // 127.0.0.0/8 opens the loopback class, but the host network
    // 127.0.0.0/24 needs a rule inside it.
    let host = vec!["127.0.0.0/24".parse().expect("block")];
    let (proxy, port) = start(
        config(
            &format!("origin.test:{p},127.0.0.0/8:{p}"),
            "origin.test:127.0.0.1",
        )
        .with_host_networks(host.clone()),
    );
    let (resp, took) = get(port, &format!("http://origin.test:{p}/"));
    assert_refused(&resp, took, "403", "host's own network (127.0.0.0/24)");
    assert!(resp.contains(&format!("`127.0.0.1:{p}`")), "{resp}");
    assert_eq!(origin.accepted(), 0, "the origin was never contacted");
    assert!(!last(&proxy).allowed);
    // Listing the address opens it.
    let (proxy, port) = start(
        config(
            &format!("origin.test:{p},127.0.0.1:{p}"),
            "origin.test:127.0.0.1",
        )
        .with_host_networks(host),
    );
    let (resp, _) = get(port, &format!("http://origin.test:{p}/"));
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(last(&proxy).reason.contains("host's own network"));
}

#[test]
fn denied_host_is_refused_before_resolving() {
    let origin = http_server();
    let (proxy, port) = start(config(
        &format!("127.0.0.1:{}", origin.port),
        "evil.test:127.0.0.1",
    ));
    let (resp, took) = get(port, &format!("http://evil.test:{}/", origin.port));
    assert_refused(&resp, took, "403", "no rule allows evil.test");
    let a = last(&proxy);
    assert_eq!(a.address, None, "not resolved: {a:?}");
    assert_eq!(origin.accepted(), 0);
}

#[test]
fn denied_port() {
    let origin = http_server();
    let other = http_server();
    let (_proxy, port) = start(config(&format!("127.0.0.1:{}", origin.port), ""));
    let (resp, took) = get(port, &format!("http://127.0.0.1:{}/", other.port));
    assert_refused(&resp, took, "403", &format!("port {}", other.port));
    assert_eq!(other.accepted(), 0);
}

#[test]
fn wildcard_rule_matches_subdomains_not_the_apex() {
    let origin = http_server();
    let p = origin.port;
    let (_proxy, port) = start(config(
        &format!("*.origin.test:{p},127.0.0.1:{p}"),
        "a.origin.test:127.0.0.1,origin.test:127.0.0.1",
    ));
    let (resp, _) = get(port, &format!("http://a.origin.test:{p}/"));
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    let (resp, took) = get(port, &format!("http://origin.test:{p}/"));
    assert_refused(&resp, took, "403", "no rule allows origin.test");
}

#[test]
fn non_proxy_requests_get_a_clear_400() {
    let (_proxy, port) = start(config("127.0.0.1:1", ""));
    let (resp, took) = http(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_refused(&resp, took, "400", "absolute http:// URI");
    let (resp, took) = http(
        port,
        "POST http://127.0.0.1:1/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_refused(&resp, took, "501", "Content-Length");
}

#[test]
fn unresolvable_name_is_a_fast_502() {
    let (_proxy, port) = start(config("nowhere.test", ""));
    let (resp, took) = get(port, "http://nowhere.test/");
    assert_refused(&resp, took, "502", "--resolve");
}

// ---- CONNECT ----

#[test]
fn connect_relays_plain_tcp() {
    let echo = echo_server();
    let (proxy, port) = start(config(&format!("127.0.0.1:{}", echo.port), ""));
    let (mut s, head) = connect_tunnel(port, &format!("127.0.0.1:{}", echo.port));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping\n").expect("send");
    s.shutdown(Shutdown::Write).expect("half-close");
    let (out, _) = read_to_end(&mut s);
    assert_eq!(out, b"ping\n");
    let a = last(&proxy);
    assert_eq!(
        (a.protocol, a.allowed, a.bytes_up, a.bytes_down),
        (Protocol::Connect, true, 5, 5)
    );
}

#[test]
fn connect_with_matching_sni_is_relayed() {
    let echo = echo_server();
    let p = echo.port;
    let (proxy, port) = start(config(
        &format!("origin.test:{p},127.0.0.1:{p}"),
        "origin.test:127.0.0.1",
    ));
    let (mut s, head) = connect_tunnel(port, &format!("origin.test:{p}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let hello = build_client_hello(Some("origin.test"), 100);
    s.write_all(&hello).expect("send hello");
    s.shutdown(Shutdown::Write).expect("half-close");
    let (out, _) = read_to_end(&mut s);
    assert_eq!(out, hello, "the ClientHello is passed through untouched");
    assert!(last(&proxy).allowed);
}

#[test]
fn connect_with_sni_mismatch_is_refused() {
    let echo = echo_server();
    let p = echo.port;
    let (proxy, port) = start(config(
        &format!("origin.test:{p},127.0.0.1:{p}"),
        "origin.test:127.0.0.1",
    ));
    let (mut s, head) = connect_tunnel(port, &format!("origin.test:{p}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Split in two writes: the proxy must reassemble before deciding.
    let hello = build_client_hello(Some("evil.test"), 100);
    s.write_all(&hello[..50]).expect("send hello");
    thread::sleep(Duration::from_millis(20));
    s.write_all(&hello[50..]).expect("send hello");
    let (out, took) = read_to_end(&mut s);
    assert!(out.is_empty(), "nothing came back: {out:?}");
    assert!(took < FAST, "{took:?}");
    let a = last(&proxy);
    assert!(!a.allowed, "{a:?}");
    assert!(a.reason.contains("`evil.test`"), "{}", a.reason);
    assert_eq!(a.bytes_up, 0, "no byte of the hello reached the origin");
}

#[test]
fn connect_without_sni_is_refused_for_a_name_and_allowed_for_an_address() {
    let echo = echo_server();
    let p = echo.port;
    let (proxy, port) = start(config(
        &format!("origin.test:{p},127.0.0.1:{p}"),
        "origin.test:127.0.0.1",
    ));
    let hello = build_client_hello(None, 0);
    let (mut s, _) = connect_tunnel(port, &format!("origin.test:{p}"));
    s.write_all(&hello).expect("send hello");
    let (out, _) = read_to_end(&mut s);
    assert!(out.is_empty());
    assert!(last(&proxy).reason.contains("without a server name"));

    let (mut s, _) = connect_tunnel(port, &format!("127.0.0.1:{p}"));
    s.write_all(&hello).expect("send hello");
    s.shutdown(Shutdown::Write).expect("half-close");
    let (out, _) = read_to_end(&mut s);
    assert_eq!(out, hello);
}

#[test]
fn connect_to_a_denied_target_gets_403() {
    let (_proxy, port) = start(config("pypi.org:443", ""));
    let start = Instant::now();
    let (_s, head) = connect_tunnel(port, "evil.test:443");
    assert!(start.elapsed() < FAST);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

// ---- SOCKS5 ----

/// A SOCKS5 CONNECT; returns the stream and the reply code.
fn socks5(proxy_port: u16, addr: &[u8], port: u16) -> (TcpStream, u8) {
    let mut s = connect(proxy_port);
    s.write_all(&[5, 1, 0]).expect("greeting");
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).expect("method choice");
    assert_eq!(choice, [5, 0]);
    let mut req = vec![5, 1, 0];
    req.extend_from_slice(addr);
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).expect("request");
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).expect("reply");
    assert_eq!(reply[0], 5);
    (s, reply[1])
}

fn domain(name: &str) -> Vec<u8> {
    let mut v = vec![3, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v
}

#[test]
fn socks5_allowed_by_name_and_by_address() {
    let echo = echo_server();
    let p = echo.port;
    let (proxy, port) = start(config(
        &format!("origin.test:{p},127.0.0.1:{p}"),
        "origin.test:127.0.0.1",
    ));
    for addr in [domain("origin.test"), vec![1, 127, 0, 0, 1]] {
        let (mut s, code) = socks5(port, &addr, p);
        assert_eq!(code, 0);
        s.write_all(b"hi").expect("send");
        s.shutdown(Shutdown::Write).expect("half-close");
        assert_eq!(read_to_end(&mut s).0, b"hi");
    }
    let log = proxy.log();
    assert_eq!(log.len(), 2);
    assert!(log
        .iter()
        .all(|a| a.allowed && a.protocol == Protocol::Socks5));
    assert_eq!(log[0].name.as_deref(), Some("origin.test"));
    assert_eq!(log[1].name, None);
}

#[test]
fn socks5_denied_gets_code_2_quickly() {
    let echo = echo_server();
    let p = echo.port;
    let (proxy, port) = start(config(&format!("origin.test:{p}"), "origin.test:127.0.0.1"));
    for addr in [
        domain("evil.test"),
        domain("origin.test"),
        vec![1, 127, 0, 0, 1],
    ] {
        let start = Instant::now();
        let (_s, code) = socks5(port, &addr, p);
        assert_eq!(code, 2, "{addr:?}");
        assert!(start.elapsed() < FAST);
    }
    assert_eq!(echo.accepted(), 0);
    assert!(proxy.log().iter().all(|a| !a.allowed));
}

#[test]
fn socks5_refuses_other_commands_and_auth_methods() {
    let (_proxy, port) = start(config("127.0.0.1:1", ""));
    let mut s = connect(port);
    s.write_all(&[5, 1, 2])
        .expect("greeting with user/password only");
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).expect("choice");
    assert_eq!(choice, [5, 0xff]);
    assert!(
        read_to_end(&mut s).0.is_empty(),
        "then closed, nothing more"
    );

    let mut s = connect(port);
    s.write_all(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 1])
        .expect("BIND request");
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).expect("reply");
    assert_eq!(&reply[..4], &[5, 0, 5, 7]);
}

// ---- limits ----

#[test]
fn byte_limit_up_closes_the_connection_and_is_recorded() {
    let echo = echo_server();
    let limits = Limits {
        max_bytes_up: 100,
        ..Limits::default()
    };
    let (proxy, port) = start(config(&format!("127.0.0.1:{}", echo.port), "").with_limits(limits));
    let (mut s, _) = connect_tunnel(port, &format!("127.0.0.1:{}", echo.port));
    let _ = s.write_all(&[b'a'; 1000]);
    let (out, took) = read_to_end(&mut s);
    assert!(out.len() <= 100, "{}", out.len());
    assert!(took < FAST);
    let stats = proxy.stats();
    assert_eq!(stats.bytes_up, 100);
    assert_eq!(stats.limits_exceeded, vec!["bytes_up".to_string()]);
    let a = last(&proxy);
    assert_eq!(a.limit_exceeded.as_deref(), Some("bytes_up"));
    assert_eq!(a.bytes_up, 100);
    // The budget is the run's: the next connection gets nothing through.
    let (mut s, _) = connect_tunnel(port, &format!("127.0.0.1:{}", echo.port));
    let _ = s.write_all(b"more");
    assert!(read_to_end(&mut s).0.is_empty());
}

#[test]
fn byte_limit_down_closes_the_connection() {
    let origin = http_server();
    let limits = Limits {
        max_bytes_down: 500,
        ..Limits::default()
    };
    let (proxy, port) =
        start(config(&format!("127.0.0.1:{}", origin.port), "").with_limits(limits));
    let (resp, _) = get(port, &format!("http://127.0.0.1:{}/big", origin.port));
    assert!(resp.len() <= 500, "{}", resp.len());
    assert_eq!(
        proxy.stats().limits_exceeded,
        vec!["bytes_down".to_string()]
    );
    assert_eq!(last(&proxy).limit_exceeded.as_deref(), Some("bytes_down"));
}

#[test]
fn connection_limit_refuses_further_connections() {
    let origin = http_server();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (proxy, port) =
        start(config(&format!("127.0.0.1:{}", origin.port), "").with_limits(limits));
    let url = format!("http://127.0.0.1:{}/", origin.port);
    for _ in 0..2 {
        assert!(get(port, &url).0.starts_with("HTTP/1.1 200"));
    }
    let (resp, took) = get(port, &url);
    assert_refused(&resp, took, "403", "limit of 2");
    let (_s, code) = socks5(port, &[1, 127, 0, 0, 1], origin.port);
    assert_eq!(code, 2);
    let stats = proxy.stats();
    assert_eq!(stats.limits_exceeded, vec!["connections".to_string()]);
    assert_eq!(origin.accepted(), 2);
    assert_eq!(last(&proxy).limit_exceeded.as_deref(), Some("connections"));
}

// ---- the log and other listeners ----

#[test]
fn log_serializes_for_the_result() {
    let (proxy, port) = start(config("pypi.org:443", ""));
    let _ = get(port, "http://evil.test/");
    let json = serde_json::to_value(proxy.log()).expect("serialize");
    let entry = &json[0];
    assert_eq!(entry["protocol"], "http");
    assert_eq!(entry["name"], "evil.test");
    assert_eq!(entry["address"], serde_json::Value::Null);
    assert_eq!(entry["port"], 80);
    assert_eq!(entry["allowed"], false);
    assert_eq!(entry["bytes_up"], 0);
    assert_eq!(entry["bytes_down"], 0);
    assert!(entry["reason"]
        .as_str()
        .is_some_and(|r| r.contains("evil.test")));
}

#[test]
fn serves_a_unix_socket_listener() {
    let echo = echo_server();
    let dir = std::env::temp_dir().join(format!("formicary-netproxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("proxy.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind unix socket");
    let proxy = Proxy::new(config(&format!("127.0.0.1:{}", echo.port), ""));
    let server = proxy.clone();
    thread::spawn(move || server.serve(listener));
    let mut s = UnixStream::connect(&path).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", echo.port).as_bytes())
        .expect("CONNECT");
    let mut head = [0u8; 39];
    s.read_exact(&mut head).expect("200");
    assert_eq!(&head[..], b"HTTP/1.1 200 Connection established\r\n\r\n");
    s.write_all(b"via unix").expect("send");
    s.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_end(&mut s).0, b"via unix");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn silent_client_is_dropped_after_the_request_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (_proxy, port) = start(config("127.0.0.1:1", "").with_limits(limits));
    let mut s = connect(port);
    s.write_all(b"GET http://127.0.0.1:1/ HTT")
        .expect("partial request");
    let (_, took) = read_to_end(&mut s);
    assert!(took < FAST, "{took:?}");
}

#[test]
fn concurrent_connection_limit_closes_extra_connections() {
    let limits = Limits {
        max_concurrent: 2,
        request_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let (proxy, port) = start(config("127.0.0.1:1", "").with_limits(limits));
    // Two silent clients hold the two slots.
    let _a = connect(port);
    let _b = connect(port);
    thread::sleep(Duration::from_millis(100));
    let mut c = connect(port);
    let _ = c.write_all(b"GET http://127.0.0.1:1/ HTTP/1.1\r\n\r\n");
    let (out, took) = read_to_end(&mut c);
    assert!(out.is_empty(), "closed unserved");
    assert!(took < FAST);
    let stats = proxy.stats();
    assert_eq!(stats.rejected_concurrent, 1);
    assert_eq!(
        stats.limits_exceeded,
        vec!["concurrent_connections".to_string()]
    );
}

#[test]
fn ipv6_loopback_needs_its_own_rule() {
    // Skipped where the machine has no IPv6 loopback.
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    };
    let p = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"v6");
        }
    });
    let (_proxy, port) = start(config(&format!("[::1]:{p},v6.test:{p}"), "v6.test:[::1]"));
    let (mut s, head) = connect_tunnel(port, &format!("[::1]:{p}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_end(&mut s).0, b"v6");
    // The IPv4 rule does not open ::1, nor ::ffff:127.0.0.1 the other way.
    let (_proxy, port) = start(config(&format!("127.0.0.1:{p}"), ""));
    let (_s, head) = connect_tunnel(port, &format!("[::1]:{p}"));
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

// ---- shutdown and the idle timeout ----

#[test]
fn shutdown_closes_every_connection_and_makes_the_log_final() {
    let echo = echo_server();
    let p = echo.port;
    let (proxy, port, server) = start_joinable(config(
        &format!("origin.test:{p},127.0.0.1:{p}"),
        "origin.test:127.0.0.1",
    ));
    // A CONNECT tunnel and a SOCKS5 tunnel, each with bytes through, kept
    // open; and a client still sending its request.
    let (mut tunnel, head) = connect_tunnel(port, &format!("127.0.0.1:{p}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tunnel.write_all(b"ping").expect("send");
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).expect("echo");
    let (mut socks, code) = socks5(port, &domain("origin.test"), p);
    assert_eq!(code, 0);
    socks.write_all(b"hello").expect("send");
    let mut buf = [0u8; 5];
    socks.read_exact(&mut buf).expect("echo");
    let mut slow = connect(port);
    slow.write_all(b"GET http://origin.test/ HT")
        .expect("partial");
    while proxy.open_connections() < 3 {
        thread::sleep(Duration::from_millis(5));
    }

    let start = Instant::now();
    assert_eq!(proxy.shutdown(TIMEOUT), 0, "every connection finished");
    assert!(start.elapsed() < FAST, "{:?}", start.elapsed());
    assert_eq!(proxy.open_connections(), 0);
    // The serving thread returns: the listener was shut down.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(server.join().is_ok());
    });
    assert_eq!(rx.recv_timeout(FAST), Ok(true), "serve returned");
    // Every client sees its connection end at once.
    for s in [&mut tunnel, &mut socks, &mut slow] {
        let (_, took) = read_to_end(s);
        assert!(took < FAST, "{took:?}");
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer accepting"
    );

    let log = proxy.log();
    let stats = proxy.stats();
    let tunnels: Vec<&Attempt> = log.iter().filter(|a| a.allowed).collect();
    assert_eq!(tunnels.len(), 2, "{log:?}");
    assert_eq!((tunnels[0].bytes_up, tunnels[0].bytes_down), (4, 4));
    assert_eq!((tunnels[1].bytes_up, tunnels[1].bytes_down), (5, 5));
    for a in &tunnels {
        assert!(
            a.reason.ends_with("closed: the proxy was shut down"),
            "{}",
            a.reason
        );
        assert_eq!(a.limit_exceeded, None);
    }
    assert_eq!((stats.bytes_up, stats.bytes_down), (9, 9));
    let cut = log.iter().find(|a| a.protocol == Protocol::Http);
    assert!(
        cut.is_some_and(|a| a.reason.contains("shut down before the request")),
        "{log:?}"
    );
    // Final: nothing changes afterwards.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(proxy.log(), log);
    assert_eq!(proxy.stats(), stats);
}

/// A resolver that takes its time, as a DNS server that does not answer.
struct SlowResolver(Duration);

impl Resolver for SlowResolver {
    fn resolve(&self, _name: &str) -> Result<Vec<std::net::IpAddr>, ResolveError> {
        thread::sleep(self.0);
        Ok(vec!["127.0.0.1".parse().expect("ip")])
    }
}

#[test]
fn shutdown_reports_a_connection_stuck_resolving_and_logs_it_as_not_served() {
    let echo = echo_server();
    let p = echo.port;
    let config = config(&format!("slow.test:{p},127.0.0.1:{p}"), "")
        .with_resolver(Arc::new(SlowResolver(Duration::from_millis(600))));
    let (proxy, port, _server) = start_joinable(config);
    let (mut s, code) = {
        let mut s = connect(port);
        s.write_all(&[5, 1, 0]).expect("greeting");
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice).expect("method choice");
        let mut req = vec![5, 1, 0];
        req.extend_from_slice(&domain("slow.test"));
        req.extend_from_slice(&p.to_be_bytes());
        s.write_all(&req).expect("request");
        (s, choice[1])
    };
    assert_eq!(code, 0);
    while proxy.log().is_empty() {
        thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    assert_eq!(
        proxy.shutdown(Duration::from_millis(100)),
        1,
        "still resolving"
    );
    assert!(start.elapsed() < Duration::from_millis(500));
    let log = proxy.log();
    assert_eq!(log.len(), 1);
    assert!(!log[0].allowed);
    assert!(log[0].reason.starts_with("not served"), "{}", log[0].reason);
    // The client was closed at once, and the late thread neither connects
    // nor changes the log.
    assert!(read_to_end(&mut s).1 < FAST);
    thread::sleep(Duration::from_millis(800));
    assert_eq!(proxy.log(), log);
    assert_eq!(echo.accepted(), 0);
    assert_eq!(proxy.open_connections(), 0);
}

#[test]
fn idle_connections_are_closed_and_recorded() {
    let echo = echo_server();
    let p = echo.port;
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (proxy, port) = start(config(&format!("127.0.0.1:{p}"), "").with_limits(limits));
    // A busy tunnel: a byte every 100 ms for a second outlives the timeout.
    let (mut busy, _) = connect_tunnel(port, &format!("127.0.0.1:{p}"));
    let start = Instant::now();
    for i in 0..10 {
        if i > 0 {
            thread::sleep(Duration::from_millis(100));
        }
        busy.write_all(b"x").expect("busy tunnel still open");
        let mut b = [0u8; 1];
        busy.read_exact(&mut b).expect("echo");
    }
    // Then silent: closed after the timeout.
    let silent = Instant::now();
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert_eq!(last(&proxy).limit_exceeded, None);
    let (_, _) = read_to_end(&mut busy);
    let took = silent.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < FAST,
        "closed after {took:?}"
    );
    // Recorded when the connection's threads have finished.
    wait_until_finished(&proxy);
    let a = last(&proxy);
    assert_eq!(a.limit_exceeded.as_deref(), Some("idle_timeout"), "{a:?}");
    assert!(a.reason.contains("idle timeout"), "{}", a.reason);
    assert_eq!((a.bytes_up, a.bytes_down), (10, 10));
    assert_eq!(
        proxy.stats().limits_exceeded,
        vec!["idle_timeout".to_string()]
    );
    // A new tunnel after the idle thread has ended gets one again.
    let (mut again, head) = connect_tunnel(port, &format!("127.0.0.1:{p}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, took) = read_to_end(&mut again);
    assert!(took < FAST, "{took:?}");
    wait_until_finished(&proxy);
    assert_eq!(last(&proxy).limit_exceeded.as_deref(), Some("idle_timeout"));
}

fn wait_until_finished(proxy: &Proxy) {
    let start = Instant::now();
    while proxy.open_connections() > 0 {
        assert!(start.elapsed() < FAST, "connections still open");
        thread::sleep(Duration::from_millis(5));
    }
}
