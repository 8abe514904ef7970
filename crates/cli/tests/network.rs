//! Network egress through the filtering proxy (`--net allow=...`), end to
//! end: each test stands up its own destination host (a network namespace
//! with HTTP, HTTPS and TCP echo servers, `common::testnet`), runs a Python
//! client inside the sandbox, and checks both what the client saw and the
//! run's `network` report. Plus the flags' errors, and one real registry
//! install when the host can reach pypi.org.
//!
//! The destination hosts are on private addresses (10.231.X.Y/30), which
//! the proxy refuses unless a rule lists the address: the tests allow a
//! name with `NAME:PORT,ADDR:PORT` and pin it with `--resolve NAME:ADDR`.

mod common;

use common::testnet::{self, TestHost, ECHO_PORT, LARGE_LEN, PYTHON};
use common::{exec, Run, BIN};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Functions the sandboxed clients are made of. Each returns a dict of
/// what the client saw; `emit` prints it as one JSON line.
const CLIENT_LIB: &str = r#"
import errno, http.client, json, os, socket, ssl, struct, sys, urllib.error, urllib.request

TIMEOUT = 8

def emit(d):
    print(json.dumps(d), flush=True)

def tls_context(verify, cafile="cert.pem"):
    if verify:
        return ssl.create_default_context(cafile=cafile)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx

def failure(e):
    if isinstance(e, (socket.timeout, TimeoutError)):
        return {"error": "timeout", "detail": str(e)}
    return {"error": type(e).__name__, "detail": str(e), "errno": getattr(e, "errno", None)}

def http_get(url, cafile="cert.pem"):
    """urllib, which takes the proxy from http_proxy / https_proxy; https
    is verified against cafile (None: the system's CAs)."""
    try:
        ctx = tls_context(True, cafile) if url.startswith("https:") else None
        r = urllib.request.urlopen(url, timeout=TIMEOUT, context=ctx)
        try:
            body = r.read()
        except http.client.IncompleteRead as e:
            return {"status": r.status, "error": "IncompleteRead", "got": len(e.partial)}
        return {"status": r.status, "len": len(body), "body": body[:200].decode("latin-1"),
                "large_ok": body == bytes(i % 251 for i in range(len(body)))}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode("latin-1")}
    except Exception as e:
        return failure(e)

def connect_tls(host, port, sni, verify):
    """CONNECT host:port by hand, then TLS with server_hostname=sni."""
    out = {}
    try:
        s = socket.create_connection(("127.0.0.1", 3128), timeout=TIMEOUT)
        s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            c = s.recv(1)
            if not c:
                break
            head += c
        out["connect"] = head.split(b"\r\n")[0].decode("latin-1")
        t = tls_context(verify).wrap_socket(s, server_hostname=sni)
        out["handshake"] = "ok"
        t.sendall(b"GET / HTTP/1.0\r\nHost: web.test\r\n\r\n")
        reply = b""
        while True:
            c = t.recv(65536)
            if not c:
                break
            reply += c
        out["reply"] = reply.decode("latin-1")
    except Exception as e:
        out.update(failure(e))
    return out

def recv_exact(s, n):
    data = b""
    while len(data) < n:
        c = s.recv(n - len(data))
        if not c:
            raise EOFError("closed after %d of %d bytes" % (len(data), n))
        data += c
    return data

def socks5(host, port, payload):
    """A SOCKS5 CONNECT by name, written out, then payload and its echo."""
    out = {}
    try:
        s = socket.create_connection(("127.0.0.1", 3128), timeout=TIMEOUT)
        s.sendall(b"\x05\x01\x00")
        out["method"] = list(recv_exact(s, 2))
        name = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        rep = recv_exact(s, 4)
        recv_exact(s, {1: 4, 4: 16}.get(rep[3], 0) + 2)
        out["reply"] = rep[1]
        if rep[1] == 0:
            s.sendall(payload.encode())
            s.shutdown(socket.SHUT_WR)
            echo = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                echo += c
            out["echo"] = echo.decode("latin-1")
    except Exception as e:
        out.update(failure(e))
    return out

def direct(addr, port):
    """A plain connect, ignoring the proxy variables."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((addr, port))
        return {"connected": True}
    except Exception as e:
        out = failure(e)
        out["errno_name"] = errno.errorcode.get(out.get("errno") or 0)
        return out
"#;

/// Wall-time of every client run: far above what any case needs, so a
/// run that reaches it has hung.
const WALL: &str = "30";

/// Returns from the calling test, after a SKIP line, unless the tools the
/// destination hosts need are here.
macro_rules! require_tools {
    () => {
        if !testnet::tools_present() {
            return;
        }
    };
}

/// Runs `code` (after [`CLIENT_LIB`]) in a sandbox with `flags`, the test
/// host's certificate copied to `/sandbox/cert.pem`; returns the result
/// and the client's JSON lines.
fn client(host: &TestHost, flags: &[&str], code: &str) -> (Run, Vec<Value>) {
    let full = format!("{CLIENT_LIB}\n{code}\n");
    let cert = host.cert_file_arg();
    let run = exec(&[PYTHON, "-c", &full])
        .flags(&["--wall-time", WALL, "--file", &cert])
        .flags(flags)
        .run();
    let lines = client_lines(&run);
    (run, lines)
}

fn client_lines(run: &Run) -> Vec<Value> {
    assert_eq!(
        run.status(),
        "ok",
        "the client did not finish normally: {}; stderr {}",
        run.json,
        run.stderr
    );
    run.stdout()
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("client line {l:?} is not JSON ({e}): {}", run.json))
        })
        .collect()
}

/// The run's `network` report.
fn report(run: &Run) -> &Value {
    let n = &run.json["network"];
    assert!(n.is_object(), "no network report: {}", run.json);
    n
}

fn attempts(run: &Run) -> Vec<Value> {
    report(run)["attempts"]
        .as_array()
        .expect("network.attempts is an array")
        .clone()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a number"))
}

/// `NAME:PORT,ADDR:PORT`: the name, and the private address it resolves to.
fn allow(name: &str, host: &TestHost, port: u16) -> String {
    format!("allow={name}:{port},{}:{port}", host.addr)
}

// --- allowed destinations --------------------------------------------------

#[test]
fn http_by_name_is_relayed_and_reported() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let before = host.connections(80);
    let (run, out) = client(
        &host,
        &[
            "--net",
            &allow("web.test", &host, 80),
            "--resolve",
            &host.resolve("web.test"),
        ],
        "emit(http_get('http://web.test/'))",
    );
    assert_eq!(out[0]["status"], 200, "{out:?}");
    assert_eq!(text(&out[0]["body"]), testnet::BODY);
    assert_eq!(host.connections(80), before + 1);

    let net = report(&run);
    let a = attempts(&run);
    assert_eq!(a.len(), 1, "{net}");
    assert_eq!(a[0]["protocol"], "http");
    assert_eq!(a[0]["name"], "web.test");
    assert_eq!(text(&a[0]["address"]), host.addr.to_string());
    assert_eq!(a[0]["port"], 80);
    assert_eq!(a[0]["allowed"], true, "{net}");
    let reason = text(&a[0]["reason"]);
    assert!(reason.contains("allowed by rule"), "{reason}");
    // The test host's address is private and, through the veth, on a
    // network of this host: the address rule opens both.
    assert!(
        reason.contains(
            "which lists a private address and an address of the host's own network explicitly"
        ),
        "{reason}"
    );
    assert!(num(&a[0]["bytes_up"]) > 0, "{net}");
    assert!(
        num(&a[0]["bytes_down"]) > testnet::BODY.len() as u64,
        "{net}"
    );
    assert!(a[0]["limit_exceeded"].is_null(), "{net}");
    assert_eq!(net["connections"], 1);
    assert_eq!(net["bytes_down"], a[0]["bytes_down"]);
    assert_eq!(net["bytes_up"], a[0]["bytes_up"]);
    assert_eq!(net["proxy"], "127.0.0.1:3128");
    assert_eq!(
        net["allow"][0],
        allow("web.test", &host, 80)["allow=".len()..]
    );
    assert_eq!(net["limits_exceeded"], serde_json::json!([]));
}

#[test]
fn https_through_connect_verifies_the_certificate_for_the_name() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let before = host.connections(443);
    let (run, out) = client(
        &host,
        &[
            "--net",
            &allow("web.test", &host, 443),
            "--resolve",
            &host.resolve("web.test"),
        ],
        "emit(http_get('https://web.test/'))\n\
         emit(http_get('https://web.test/', cafile=None))",
    );
    // Verified against cert.pem with the host name checked: only the
    // server of the test host holds that key.
    assert_eq!(out[0]["status"], 200, "{out:?}");
    assert_eq!(text(&out[0]["body"]), testnet::BODY);
    // The control: against the system's CAs the same certificate fails,
    // so the first request really was verified.
    assert!(
        text(&out[1]["detail"]).contains("CERTIFICATE_VERIFY_FAILED"),
        "{out:?}"
    );
    assert_eq!(host.connections(443), before + 2);

    let net = report(&run);
    let a = attempts(&run);
    assert_eq!(a.len(), 2, "{net}");
    assert_eq!(a[0]["protocol"], "connect");
    assert_eq!(a[0]["name"], "web.test");
    assert_eq!(text(&a[0]["address"]), host.addr.to_string());
    assert_eq!(a[0]["port"], 443);
    assert_eq!(a[0]["allowed"], true, "{net}");
    // The ClientHello and the request go up, the certificate and the
    // response come down: both are more than the plain body.
    assert!(num(&a[0]["bytes_up"]) > 200, "{net}");
    assert!(num(&a[0]["bytes_down"]) > 300, "{net}");
}

#[test]
fn socks5_reaches_the_tcp_echo_server_by_name() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let before = host.connections(ECHO_PORT);
    let (run, out) = client(
        &host,
        &[
            "--net",
            &allow("echo.test", &host, ECHO_PORT),
            "--resolve",
            &host.resolve("echo.test"),
        ],
        &format!("emit(socks5('echo.test', {ECHO_PORT}, 'hello through socks5\\n'))"),
    );
    assert_eq!(out[0]["method"], serde_json::json!([5, 0]), "{out:?}");
    assert_eq!(out[0]["reply"], 0, "{out:?}");
    assert_eq!(text(&out[0]["echo"]), "hello through socks5\n");
    assert_eq!(host.connections(ECHO_PORT), before + 1);

    let net = report(&run);
    let a = attempts(&run);
    assert_eq!(a.len(), 1, "{net}");
    assert_eq!(a[0]["protocol"], "socks5");
    assert_eq!(a[0]["name"], "echo.test");
    assert_eq!(text(&a[0]["address"]), host.addr.to_string());
    assert_eq!(a[0]["port"], ECHO_PORT);
    assert_eq!(a[0]["allowed"], true, "{net}");
    let payload = "hello through socks5\n".len() as u64;
    assert_eq!(num(&a[0]["bytes_up"]), payload, "{net}");
    assert_eq!(num(&a[0]["bytes_down"]), payload, "{net}");
}

// --- refusals --------------------------------------------------------------

#[test]
fn a_host_no_rule_allows_is_refused_with_403_before_any_lookup() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let before = host.connections(80);
    let (run, out) = client(
        &host,
        &[
            "--net",
            &allow("web.test", &host, 80),
            "--resolve",
            &host.resolve("web.test"),
            "--resolve",
            &host.resolve("other.test"),
        ],
        "emit(http_get('http://other.test/'))",
    );
    assert_eq!(out[0]["status"], 403, "{out:?}");
    let body = text(&out[0]["body"]);
    assert!(body.starts_with("formicary proxy: "), "{body}");
    assert!(body.contains("no rule allows other.test port 80"), "{body}");
    assert_eq!(host.connections(80), before, "the server was reached");

    let net = report(&run);
    let a = attempts(&run);
    assert_eq!(a.len(), 1, "{net}");
    assert_eq!(a[0]["protocol"], "http");
    assert_eq!(a[0]["name"], "other.test");
    // Refused on the name: never resolved.
    assert!(a[0]["address"].is_null(), "{net}");
    assert_eq!(a[0]["port"], 80);
    assert_eq!(a[0]["allowed"], false);
    let reason = text(&a[0]["reason"]);
    assert!(
        reason.contains("no rule allows other.test port 80"),
        "{reason}"
    );
    assert!(reason.contains("--net allow=other.test:80"), "{reason}");
    assert_eq!(a[0]["bytes_up"], 0);
    assert_eq!(a[0]["bytes_down"], 0);
    assert_eq!(net["bytes_up"], 0);
    assert_eq!(net["bytes_down"], 0);
}

#[test]
fn a_port_no_rule_allows_is_refused_by_http_socks5_and_address() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let before = host.connections(ECHO_PORT);
    // Port 80 is allowed, for the name and the address; the echo server
    // listens on ECHO_PORT, so a wrong "allowed" would reach it.
    let rules = format!("allow=web.test:80,{}:80", host.addr);
    let code = format!(
        "emit(http_get('http://web.test:{p}/'))\n\
         emit(socks5('web.test', {p}, 'x'))\n\
         emit(socks5('{addr}', {p}, 'x'))",
        p = ECHO_PORT,
        addr = host.addr,
    );
    let (run, out) = client(
        &host,
        &["--net", &rules, "--resolve", &host.resolve("web.test")],
        &code,
    );
    assert_eq!(out[0]["status"], 403, "{out:?}");
    assert_eq!(
        out[1]["reply"], 2,
        "SOCKS5 'not allowed by ruleset': {out:?}"
    );
    assert_eq!(out[2]["reply"], 2, "{out:?}");
    assert_eq!(
        host.connections(ECHO_PORT),
        before,
        "the server was reached"
    );

    let net = report(&run);
    let a = attempts(&run);
    assert_eq!(a.len(), 3, "{net}");
    for (i, protocol) in ["http", "socks5", "socks5"].iter().enumerate() {
        assert_eq!(a[i]["protocol"], *protocol, "{net}");
        assert_eq!(a[i]["port"], ECHO_PORT, "{net}");
        assert_eq!(a[i]["allowed"], false, "{net}");
        assert_eq!(a[i]["bytes_up"], 0, "{net}");
    }
    for r in [&a[0]["reason"], &a[1]["reason"]] {
        let r = text(r);
        assert!(
            r.contains(&format!("no rule allows web.test port {ECHO_PORT}")),
            "{r}"
        );
    }
    // The address literal: refused on the address rule's port.
    assert!(a[2]["name"].is_null(), "{net}");
    assert_eq!(text(&a[2]["address"]), host.addr.to_string());
    let r = text(&a[2]["reason"]);
    assert!(
        r.contains(&format!("no rule allows {} port {ECHO_PORT}", host.addr)),
        "{r}"
    );
}

#[test]
fn a_wildcard_rule_allows_names_below_it_only() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let names = [
        "a.example.test",
        "b.c.example.test",
        "example-other.test",
        "example.test",
        "aexample.test",
    ];
    let mut flags = vec![
        "--net".to_string(),
        format!("allow=*.example.test:80,{}:80", host.addr),
    ];
    for n in names {
        flags.push("--resolve".into());
        flags.push(host.resolve(n));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let code: Vec<String> = names
        .iter()
        .map(|n| format!("emit(http_get('http://{n}/'))"))
        .collect();
    let (run, out) = client(&host, &flags, &code.join("\n"));
    let statuses: Vec<&Value> = out.iter().map(|o| &o["status"]).collect();
    assert_eq!(statuses, [200, 200, 403, 403, 403], "{out:?}");
    assert_eq!(text(&out[0]["body"]), testnet::BODY);

    let net = report(&run);
    let a = attempts(&run);
    assert_eq!(a.len(), names.len(), "{net}");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(a[i]["name"], *name, "{net}");
        let allowed = i < 2;
        assert_eq!(a[i]["allowed"], allowed, "{net}");
        let reason = text(&a[i]["reason"]);
        if allowed {
            assert!(reason.contains("allowed by rule"), "{reason}");
        } else {
            assert!(
                reason.contains(&format!("no rule allows {name} port 80")),
                "{reason}"
            );
            assert!(a[i]["address"].is_null(), "refused before lookup: {net}");
        }
    }
}

#[test]
fn an_allowed_name_at_a_private_address_is_refused_without_an_address_rule() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let before = host.connections(80);
    let (run, out) = client(
        &host,
        &[
            "--net",
            "allow=web.test:80",
            "--resolve",
            &host.resolve("web.test"),
        ],
        "emit(http_get('http://web.test/'))",
    );
    assert_eq!(out[0]["status"], 403, "{out:?}");
    let body = text(&out[0]["body"]);
    assert!(body.contains("private address (10.0.0.0/8)"), "{body}");
    assert_eq!(host.connections(80), before, "the server was reached");

    let net = report(&run);
    let a = attempts(&run);
    assert_eq!(a.len(), 1, "{net}");
    assert_eq!(a[0]["name"], "web.test");
    assert_eq!(text(&a[0]["address"]), host.addr.to_string());
    assert_eq!(a[0]["allowed"], false);
    let reason = text(&a[0]["reason"]);
    assert!(
        reason.contains("is a private address (10.0.0.0/8)"),
        "{reason}"
    );
    // It says which rule would open it.
    assert!(reason.contains(&format!("`{}:80`", host.addr)), "{reason}");
}

#[test]
fn a_tls_server_name_other_than_the_connect_target_closes_the_tunnel() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    // The same tunnel twice: first with the target's own name (the
    // control: the handshake works), then with another name. The
    // certificate is not checked, so only the proxy can end the second.
    let (run, out) = client(
        &host,
        &[
            "--net",
            &allow("web.test", &host, 443),
            "--resolve",
            &host.resolve("web.test"),
        ],
        "emit(connect_tls('web.test', 443, 'web.test', False))\n\
         emit(connect_tls('web.test', 443, 'other.test', False))",
    );
    assert_eq!(out[0]["handshake"], "ok", "{out:?}");
    assert!(text(&out[0]["reply"]).ends_with(testnet::BODY), "{out:?}");
    assert_eq!(
        out[1]["connect"], "HTTP/1.1 200 Connection established",
        "{out:?}"
    );
    assert!(
        out[1]["handshake"].is_null(),
        "the handshake worked: {out:?}"
    );
    assert!(out[1]["error"].is_string(), "{out:?}");
    assert_ne!(out[1]["error"], "timeout", "{out:?}");
    assert!(out[1]["reply"].is_null(), "{out:?}");

    let net = report(&run);
    let a = attempts(&run);
    assert_eq!(a.len(), 2, "{net}");
    assert_eq!(a[0]["allowed"], true, "{net}");
    assert_eq!(a[1]["protocol"], "connect");
    assert_eq!(a[1]["name"], "web.test");
    assert_eq!(a[1]["port"], 443);
    assert_eq!(a[1]["allowed"], false, "{net}");
    let reason = text(&a[1]["reason"]);
    assert!(
        reason.contains("TLS server name `other.test` is not the tunnel's target `web.test`"),
        "{reason}"
    );
    // Nothing of the ClientHello reached the server.
    assert_eq!(a[1]["bytes_up"], 0, "{net}");
    assert_eq!(a[1]["bytes_down"], 0, "{net}");
}

// --- limits ----------------------------------------------------------------

#[test]
fn the_download_limit_closes_the_connection_and_is_reported() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let limit: u64 = 16 * 1024;
    let (run, out) = client(
        &host,
        &[
            "--net",
            &allow("web.test", &host, 80),
            "--resolve",
            &host.resolve("web.test"),
            "--net-max-down",
            "16K",
        ],
        "emit(http_get('http://web.test/large'))",
    );
    // The response said LARGE_LEN bytes and the connection ended early.
    assert_eq!(out[0]["status"], 200, "{out:?}");
    assert_eq!(out[0]["error"], "IncompleteRead", "{out:?}");
    let got = num(&out[0]["got"]);
    assert!(got > 0 && got < limit, "{out:?}");
    assert!((got as usize) < LARGE_LEN);

    let net = report(&run);
    assert_eq!(net["limits_exceeded"], serde_json::json!(["bytes_down"]));
    assert_eq!(num(&net["bytes_down"]), limit, "{net}");
    let a = attempts(&run);
    assert_eq!(a.len(), 1, "{net}");
    assert_eq!(a[0]["limit_exceeded"], "bytes_down", "{net}");
    assert_eq!(num(&a[0]["bytes_down"]), limit, "{net}");
    let reason = text(&a[0]["reason"]);
    assert!(
        reason.contains(&format!("bytes_down limit of {limit} bytes is reached")),
        "{reason}"
    );
}

#[test]
fn the_connection_limit_refuses_connections_beyond_it() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let before = host.connections(80);
    let (run, out) = client(
        &host,
        &[
            "--net",
            &allow("web.test", &host, 80),
            "--resolve",
            &host.resolve("web.test"),
            "--net-max-connections",
            "2",
        ],
        "for _ in range(4): emit(http_get('http://web.test/'))",
    );
    let statuses: Vec<&Value> = out.iter().map(|o| &o["status"]).collect();
    assert_eq!(statuses, [200, 200, 403, 403], "{out:?}");
    assert!(
        text(&out[2]["body"]).contains("limit of 2 proxied connections is reached"),
        "{out:?}"
    );
    assert_eq!(host.connections(80), before + 2);

    let net = report(&run);
    assert_eq!(net["limits_exceeded"], serde_json::json!(["connections"]));
    // Every client connection counts, the refused ones too.
    assert_eq!(net["connections"], 4, "{net}");
    let a = attempts(&run);
    assert_eq!(a.len(), 4, "{net}");
    for (i, attempt) in a.iter().enumerate() {
        let over = i >= 2;
        assert_eq!(attempt["allowed"], !over, "{net}");
        if over {
            assert_eq!(attempt["limit_exceeded"], "connections", "{net}");
            let reason = text(&attempt["reason"]);
            assert!(
                reason.contains("the run's limit of 2 proxied connections is reached"),
                "{reason}"
            );
        } else {
            assert!(attempt["limit_exceeded"].is_null(), "{net}");
        }
    }
}

// --- bypassing the proxy ---------------------------------------------------

/// A client that ignores the proxy and connects to the test host's
/// address itself, with the run allowing that very address (`with_net`)
/// or not: it fails at once with an errno (no route in the sandbox, and
/// Landlock allows only the proxy port), and the server sees nothing.
fn direct_connection_fails(with_net: bool) {
    let host = TestHost::start();
    let before = host.connections(80);
    let rules = allow("web.test", &host, 80);
    let resolve = host.resolve("web.test");
    let flags: &[&str] = if with_net {
        &["--net", &rules, "--resolve", &resolve]
    } else {
        &[]
    };
    let (run, out) = client(&host, flags, &format!("emit(direct('{}', 80))", host.addr));
    assert!(out[0]["connected"].is_null(), "connected: {out:?}");
    assert_ne!(out[0]["error"], "timeout", "{out:?}");
    let errno = out[0]["errno"].as_i64().unwrap_or(0);
    // EACCES from Landlock, or ENETUNREACH on a kernel without its
    // network rules.
    assert!(
        errno == i64::from(libc::EACCES) || errno == i64::from(libc::ENETUNREACH),
        "{out:?}"
    );
    assert_eq!(host.connections(80), before, "the server was reached");
    if with_net {
        // Nothing went through the proxy either.
        assert_eq!(attempts(&run).len(), 0, "{}", run.json);
    } else {
        assert!(run.json.get("network").is_none(), "{}", run.json);
    }
}

#[test]
fn a_program_ignoring_the_proxy_cannot_connect_directly_with_net_allow() {
    require_root!();
    require_tools!();
    direct_connection_fails(true);
}

#[test]
fn a_program_ignoring_the_proxy_cannot_connect_directly_without_net() {
    require_root!();
    require_tools!();
    direct_connection_fails(false);
}

// --- no network ------------------------------------------------------------

/// Prints the proxy variables the program sees, whether something listens
/// on 127.0.0.1:3128 in its namespace, and what a connection there gets.
const PROXY_PROBE: &str = r#"
proxy_vars = {k: v for k, v in os.environ.items() if "proxy" in k.lower()}
listening = False
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "0100007F:0C38" and f[3] == "0A":
        listening = True
emit({"proxy_vars": proxy_vars, "listening": listening})
"#;

#[test]
fn without_net_there_is_no_network_report_proxy_environment_or_listener() {
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let (run, out) = client(&host, &[], PROXY_PROBE);
    assert!(run.json.get("network").is_none(), "{}", run.json);
    assert_eq!(out[0]["proxy_vars"], serde_json::json!({}), "{out:?}");
    assert_eq!(out[0]["listening"], false, "{out:?}");
    // And --net none is the same.
    let (run, out) = client(&host, &["--net", "none"], PROXY_PROBE);
    assert!(run.json.get("network").is_none(), "{}", run.json);
    assert_eq!(out[0]["proxy_vars"], serde_json::json!({}), "{out:?}");
    assert_eq!(out[0]["listening"], false, "{out:?}");
}

#[test]
fn with_net_the_proxy_environment_points_at_the_listener_on_3128() {
    // The control of the test above: the same probe sees the proxy.
    require_root!();
    require_tools!();
    let host = TestHost::start();
    let (run, out) = client(&host, &["--net", "allow=web.test"], PROXY_PROBE);
    assert_eq!(out[0]["listening"], true, "{out:?}");
    let http = "http://127.0.0.1:3128";
    let socks = "socks5h://127.0.0.1:3128";
    let direct = "localhost,127.0.0.1,::1";
    assert_eq!(
        out[0]["proxy_vars"],
        serde_json::json!({
            "http_proxy": http, "HTTP_PROXY": http,
            "https_proxy": http, "HTTPS_PROXY": http,
            "all_proxy": socks, "ALL_PROXY": socks,
            "no_proxy": direct, "NO_PROXY": direct,
            "npm_config_proxy": http, "npm_config_https_proxy": http,
            "PIP_PROXY": http,
        })
    );
    let net = report(&run);
    assert_eq!(net["allow"], serde_json::json!(["web.test"]));
    assert_eq!(net["attempts"], serde_json::json!([]));
    assert_eq!(net["connections"], 0);
}

// --- refusals end promptly -------------------------------------------------

#[test]
fn denied_attempts_of_every_kind_end_promptly() {
    // Every kind of refusal answers at once: the run ends normally, well
    // inside its wall time, and no client call reaches its own timeout.
    require_root!();
    require_tools!();
    let host = TestHost::start();
    // web.test:81 is allowed, but nothing listens there (connection
    // refused). private.test is allowed by name, but resolves to the
    // host's side of the pair, a private address no rule lists.
    let rules = format!(
        "allow=web.test:80,web.test:81,{a}:80,{a}:81,private.test:80",
        a = host.addr
    );
    let private = format!("private.test:{}", host.host_side);
    let code = format!(
        "emit(http_get('http://other.test/'))\n\
         emit(http_get('http://web.test:8080/'))\n\
         emit(http_get('http://private.test/'))\n\
         emit(http_get('http://web.test:81/'))\n\
         emit(connect_tls('other.test', 443, 'other.test', False))\n\
         emit(connect_tls('web.test', 443, 'web.test', False))\n\
         emit(socks5('other.test', 80, 'x'))\n\
         emit(socks5('{a}', 22, 'x'))\n\
         emit(socks5('private.test', 80, 'x'))\n\
         emit(socks5('web.test', 81, 'x'))",
        a = host.addr
    );
    let (run, out) = client(
        &host,
        &[
            "--net",
            &rules,
            "--resolve",
            &host.resolve("web.test"),
            "--resolve",
            &private,
        ],
        &code,
    );
    assert_eq!(out.len(), 10, "{out:?}");
    for o in &out {
        assert_ne!(o["error"], "timeout", "a refusal hung: {out:?}");
    }
    let statuses: Vec<&Value> = out[..4].iter().map(|o| &o["status"]).collect();
    assert_eq!(statuses, [403, 403, 403, 502], "{out:?}");
    assert_eq!(out[4]["connect"], "HTTP/1.1 403 Forbidden", "{out:?}");
    assert_eq!(out[5]["connect"], "HTTP/1.1 403 Forbidden", "{out:?}");
    let replies: Vec<&Value> = out[6..].iter().map(|o| &o["reply"]).collect();
    // 2: not allowed by the ruleset; 5: connection refused.
    assert_eq!(replies, [2, 2, 2, 5], "{out:?}");

    let a = attempts(&run);
    assert_eq!(a.len(), 10, "{a:?}");
    assert!(a.iter().all(|x| x["allowed"] == false), "{a:?}");
    for i in [2, 8] {
        let reason = text(&a[i]["reason"]);
        assert_eq!(text(&a[i]["address"]), host.host_side.to_string());
        assert!(reason.contains("is a private address"), "{reason}");
    }
    for i in [3, 9] {
        let reason = text(&a[i]["reason"]);
        assert_eq!(a[i]["port"], 81);
        assert!(
            reason.contains(&format!("cannot connect to {} port 81", host.addr)),
            "{reason}"
        );
        assert!(reason.contains("Connection refused"), "{reason}");
    }
}

// --- flags -----------------------------------------------------------------

fn formicary(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run formicary")
}

#[test]
fn a_rule_with_a_bad_port_is_a_usage_error_naming_the_flag() {
    let out = formicary(&["exec", "--net", "allow=pypi.org:99999", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--net"), "{err}");
    assert!(err.contains("99999"), "{err}");
}

#[test]
fn net_none_with_net_allow_is_refused() {
    let out = formicary(&[
        "exec",
        "--net",
        "none",
        "--net",
        "allow=x.test",
        "--",
        "sh",
        "-c",
        "echo ran",
    ]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--net none cannot be combined with --net allow"),
        "{err}"
    );
}

#[test]
fn resolve_without_net_is_a_usage_error() {
    let out = formicary(&["exec", "--resolve", "web.test:10.0.0.1", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--net"), "{err}");
}

#[test]
fn network_flags_that_would_do_nothing_are_usage_errors() {
    for flags in [
        &["--net", "none", "--resolve", "web.test:10.0.0.1"][..],
        &["--net-max-down", "1K"][..],
        &["--net-max-up", "1K"][..],
        &["--net", "none", "--net-max-connections", "3"][..],
    ] {
        let mut args = vec!["exec"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "sh", "-c", "echo ran"]);
        let out = formicary(&args);
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("has no effect without network"),
            "{flags:?}: {err}"
        );
    }
}

// --- a real registry -------------------------------------------------------

#[test]
fn pip_installs_a_package_from_pypi_through_the_proxy() {
    require_root!();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&("pypi.org", 443))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()
        });
    if !reachable {
        println!("SKIP: this host cannot reach https://pypi.org (TCP to pypi.org:443)");
        return;
    }
    let pip = Command::new(PYTHON)
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pip {
        println!("SKIP: `{PYTHON} -m pip` is not available");
        return;
    }
    let code = r#"
import subprocess, sys
r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir",
                    "--disable-pip-version-check", "--target", "/sandbox/lib", "six==1.16.0"])
if r.returncode:
    sys.exit(r.returncode)
sys.path.insert(0, "/sandbox/lib")
import six
print("six", six.__version__, six.__file__)
"#;
    let out = formicary(&[
        "run",
        "--json",
        "--lang",
        "python",
        "--net",
        "allow=pypi.org,files.pythonhosted.org",
        "--wall-time",
        "120",
        "--cpu-time",
        "120",
        "--memory",
        "512M",
        "--code",
        code,
    ]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON result ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let attempts = &json["network"]["attempts"];
    assert_eq!(
        json["status"], "ok",
        "pip failed; stderr {}; network attempts {attempts}",
        json["stderr"]
    );
    let stdout = text(&json["stdout"]);
    assert!(
        stdout.contains("six 1.16.0 /sandbox/lib/six.py"),
        "{stdout}"
    );
    let a = attempts.as_array().expect("attempts");
    assert!(
        a.iter()
            .any(|x| x["name"] == "pypi.org" && x["allowed"] == true),
        "{attempts}"
    );
    assert!(
        a.iter()
            .any(|x| x["name"] == "files.pythonhosted.org" && x["allowed"] == true),
        "{attempts}"
    );
}
