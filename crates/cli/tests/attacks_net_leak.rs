//! Network attacks (the host's loopback services, outside addresses, raw,
//! packet and netlink sockets, DNS, the host's abstract unix sockets) and
//! information leaks (host processes, interfaces, hostname, the caller's
//! environment and command line, other sandboxes, kernel logs and symbols).
//! Each test names the attack and the layer that must stop it.

mod common;

use common::{probe, probe_run, sh};
use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

const EPERM: &str = "1";
const EACCES: &str = "13";
const ENETUNREACH: &str = "101";
const ECONNREFUSED: &str = "111";

/// The probe's last output line, split, after checking the run was `ok`.
fn case(args: &[&str]) -> Option<(Vec<String>, common::Run)> {
    let r = probe_run(args)?;
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let line = r
        .stdout()
        .lines()
        .last()
        .expect("a report line")
        .to_string();
    Some((line.split_whitespace().map(str::to_string).collect(), r))
}

// --- network ---------------------------------------------------------------

#[test]
fn a_tcp_listener_on_the_host_loopback_is_unreachable() {
    // net namespace (the sandbox's 127.0.0.1 is its own) and Landlock (no
    // TCP connect at all, EACCES): the host listener sees no connection.
    require_root!();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port().to_string();
    let Some((f, _)) = case(&["tcp-connect", "127.0.0.1", &port]) else {
        return;
    };
    assert_eq!(f, ["tcp-connect", "-1", EACCES]);
    assert!(listener.accept().is_err(), "the host listener was reached");
}

#[test]
fn a_tcp_listener_on_the_host_ipv6_loopback_is_unreachable() {
    // net namespace and Landlock.
    require_root!();
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        println!("SKIP: no IPv6 loopback on the host");
        return;
    };
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port().to_string();
    let Some((f, _)) = case(&["tcp-connect", "::1", &port]) else {
        return;
    };
    assert_eq!(f, ["tcp-connect", "-1", EACCES]);
    assert!(listener.accept().is_err());
}

#[test]
fn a_udp_datagram_to_a_host_loopback_socket_never_arrives() {
    // net namespace: UDP is allowed, but to the sandbox's own loopback.
    require_root!();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_nonblocking(true).expect("nonblocking");
    let port = sock.local_addr().expect("addr").port().to_string();
    let Some((f, _)) = case(&["udp-send", "127.0.0.1", &port]) else {
        return;
    };
    // The send succeeds inside (nothing listens there) ...
    assert_eq!(f, ["udp-send", "5", "0"]);
    // ... and nothing reaches the host's socket.
    std::thread::sleep(Duration::from_millis(100));
    let mut buf = [0u8; 16];
    assert!(sock.recv_from(&mut buf).is_err(), "a datagram arrived");
}

#[test]
fn tcp_to_an_outside_address_fails_fast() {
    // Landlock refuses TCP connect (EACCES) before routing; without
    // Landlock the empty net namespace answers ENETUNREACH. Either way at
    // once: no SYN waits for a timeout.
    require_root!();
    let start = Instant::now();
    let Some((f, _)) = case(&["tcp-connect", "192.0.2.1", "80"]) else {
        return;
    };
    assert!(
        f == ["tcp-connect", "-1", EACCES] || f == ["tcp-connect", "-1", ENETUNREACH],
        "{f:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn udp_to_an_outside_address_is_unreachable() {
    // net namespace: loopback only, no route (ENETUNREACH).
    require_root!();
    let Some((f, _)) = case(&["udp-send", "192.0.2.1", "53"]) else {
        return;
    };
    assert_eq!(f, ["udp-send", "-1", ENETUNREACH]);
}

#[test]
fn tcp_bind_is_refused_by_landlock() {
    // Landlock (ABI 4): no TCP bind, so no listener for anything to find.
    require_root!();
    let Some((f, _)) = case(&["tcp-bind", "8080"]) else {
        return;
    };
    assert_eq!(f, ["tcp-bind", "-1", EACCES]);
}

#[test]
fn a_raw_ip_socket_is_refused() {
    // capabilities (no CAP_NET_RAW); seccomp allows AF_INET itself.
    require_root!();
    let Some((f, _)) = case(&["socket", "2", "3", "1"]) else {
        return;
    };
    assert_eq!(f, ["socket", "-1", EPERM]);
}

#[test]
fn a_raw_ipv6_socket_is_refused() {
    // capabilities.
    require_root!();
    let Some((f, _)) = case(&["socket", "10", "3", "58"]) else {
        return;
    };
    assert_eq!(f, ["socket", "-1", EPERM]);
}

#[test]
fn a_sock_packet_socket_is_refused() {
    // capabilities (SOCK_PACKET in AF_INET needs CAP_NET_RAW).
    require_root!();
    let Some((f, _)) = case(&["socket", "2", "10", "0"]) else {
        return;
    };
    assert_eq!(f, ["socket", "-1", EPERM]);
}

#[test]
fn an_af_packet_socket_is_refused_by_seccomp() {
    // seccomp socket rule (only AF_UNIX, AF_INET, AF_INET6).
    require_root!();
    let Some((f, r)) = case(&["socket", "17", "3"]) else {
        return;
    };
    assert_eq!(f, ["socket", "-1", EPERM]);
    assert_eq!(r.denied("socket"), 1);
}

#[test]
fn a_netlink_route_socket_is_refused_by_seccomp() {
    // seccomp socket rule: netlink would list interfaces and routes.
    require_root!();
    let Some((f, r)) = case(&["socket", "16", "3", "0"]) else {
        return;
    };
    assert_eq!(f, ["socket", "-1", EPERM]);
    assert_eq!(r.denied("socket"), 1);
}

#[test]
fn an_af_alg_socket_is_refused_by_seccomp() {
    // seccomp socket rule: kernel crypto sockets are a known bug source.
    require_root!();
    let Some((f, r)) = case(&["socket", "38", "5"]) else {
        return;
    };
    assert_eq!(f, ["socket", "-1", EPERM]);
    assert_eq!(r.denied("socket"), 1);
}

#[test]
fn an_af_vsock_socket_is_refused_by_seccomp() {
    // seccomp socket rule: vsock would reach the hypervisor host.
    require_root!();
    let Some((f, r)) = case(&["socket", "40", "1"]) else {
        return;
    };
    assert_eq!(f, ["socket", "-1", EPERM]);
    assert_eq!(r.denied("socket"), 1);
}

#[test]
fn dns_lookup_of_a_name_fails() {
    // net namespace and the empty generated /etc/resolv.conf.
    require_root!();
    let Some((f, _)) = case(&["getaddrinfo"]) else {
        return;
    };
    assert_eq!(f, ["getaddrinfo", "0"]);
}

#[test]
fn python_getaddrinfo_of_a_name_fails() {
    // net namespace: the resolver has nowhere to ask.
    require_root!();
    let r = common::python(
        "import socket\ntry:\n socket.getaddrinfo('example.com', 80)\n print('resolved')\nexcept OSError:\n print('failed')",
    )
    .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "failed\n");
}

#[test]
fn an_abstract_unix_socket_of_the_host_is_unreachable() {
    // net namespace (abstract names are per network namespace) and
    // Landlock's abstract socket scope (ABI 6).
    require_root!();
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = format!("formicary-attack-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let listener = UnixListener::bind_addr(&addr).expect("bind abstract");
    listener.set_nonblocking(true).expect("nonblocking");
    let Some((f, _)) = case(&["abstract-connect", &name]) else {
        return;
    };
    assert!(
        f == ["abstract-connect", "-1", ECONNREFUSED] || f == ["abstract-connect", "-1", EPERM],
        "{f:?}"
    );
    assert!(listener.accept().is_err(), "the host socket was reached");
}

#[test]
fn the_host_docker_style_unix_sockets_are_not_in_the_sandbox() {
    // Mount namespace: /run and /var are not bound.
    require_root!();
    let Some((f, _)) = case(&["read", "/run/systemd/private"]) else {
        return;
    };
    assert_eq!(f, ["read", "-1", "2"]);
}

// --- information leaks --------------------------------------------------

#[test]
fn only_loopback_is_visible() {
    // net namespace: /proc/net/dev lists lo alone.
    require_root!();
    let r = sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "lo\n");
}

#[test]
fn the_host_routing_table_is_empty() {
    // net namespace: no routes beyond loopback's own.
    require_root!();
    let r = sh("tail -n +2 /proc/net/route | wc -l").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout().trim(), "0");
}

#[test]
fn the_host_hostname_is_not_visible() {
    // uts namespace and the generated /etc/hostname.
    require_root!();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let r = sh("uname -n; cat /etc/hostname; cat /proc/sys/kernel/hostname").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "sandbox\nsandbox\nsandbox\n");
    if host.trim() != "sandbox" {
        assert!(!r.stdout().contains(host.trim()));
    }
}

#[test]
fn the_callers_environment_is_not_passed_in() {
    // supervisor: the environment is built from scratch.
    require_root!();
    let r = sh("env")
        .host_env("FORMICARY_ATTACK_SECRET", "hunter2")
        .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(!r.stdout().contains("hunter2"), "{}", r.stdout());
    let mut names: Vec<&str> = r
        .stdout()
        .lines()
        .map(|l| l.split('=').next().unwrap_or(""))
        .collect();
    names.sort();
    assert_eq!(names, ["HOME", "LANG", "PATH", "PWD", "TMPDIR"]);
}

#[test]
fn the_callers_environment_is_not_readable_through_proc_1_environ() {
    // ptrace access checks: init (a clone of the supervisor, holding its
    // environment) is not dumpable.
    require_root!();
    let Some(p) = probe(&["read", "/proc/1/environ"]) else {
        return;
    };
    let r = p.host_env("FORMICARY_ATTACK_SECRET", "hunter2").run();
    assert_eq!(r.stdout(), "read -1 13\n");
}

#[test]
fn the_callers_command_line_is_not_readable_through_proc_1_cmdline() {
    // pid namespace: init is a clone of the supervisor and keeps its
    // argv, which /proc/PID/cmdline shows to anyone. It names host paths
    // (--file, --out-dir, --config) and every flag of the caller.
    require_root!();
    let dir = common::scratch();
    let marker = dir.path().join("host-only-name-7f3a");
    std::fs::write(&marker, "x").expect("write");
    let file = format!("{}:in.txt", marker.display());
    let r = sh("tr '\\0' ' ' < /proc/1/cmdline")
        .flags(&["--file", &file])
        .run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(
        !r.stdout().contains("host-only-name-7f3a"),
        "{}",
        r.stdout()
    );
}

#[test]
fn kallsyms_is_masked() {
    // Mount namespace: a nodev /dev/null bind (EACCES).
    require_root!();
    let Some((f, _)) = case(&["read", "/proc/kallsyms"]) else {
        return;
    };
    assert_eq!(f, ["read", "-1", EACCES]);
}

#[test]
fn kmsg_is_not_readable() {
    // capabilities (CAP_SYSLOG) and the read-only /proc.
    require_root!();
    let Some((f, _)) = case(&["read", "/proc/kmsg"]) else {
        return;
    };
    assert_eq!(f, ["read", "-1", EACCES]);
}

#[test]
fn dmesg_through_syslog_is_refused_by_seccomp() {
    // seccomp (syslog).
    require_root!();
    let Some((f, r)) = case(&["syslog"]) else {
        return;
    };
    assert_eq!(f, ["syslog", "-1", EPERM]);
    assert_eq!(r.denied("syslog"), 1);
}

#[test]
fn dmesg_the_command_reads_nothing() {
    // seccomp and no /dev/kmsg.
    require_root!();
    let r = sh("dmesg 2>/dev/null | wc -l").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout().trim(), "0");
}

#[test]
fn proc_keys_is_masked() {
    // Mount namespace: /proc/keys lists keyrings host-wide.
    require_root!();
    let Some((f, _)) = case(&["read", "/proc/keys"]) else {
        return;
    };
    assert_eq!(f, ["read", "-1", EACCES]);
}

#[test]
fn the_host_boot_id_is_masked() {
    // Mount namespace.
    require_root!();
    let Some((f, _)) = case(&["read", "/proc/sys/kernel/random/boot_id"]) else {
        return;
    };
    assert_eq!(f, ["read", "-1", EACCES]);
}

#[test]
fn host_processes_are_not_visible_in_proc() {
    // pid namespace: the test runner's own pid is not a directory there.
    require_root!();
    let r = sh("ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    let pids: Vec<u32> = r
        .stdout()
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert!(pids.iter().all(|p| *p < 10), "{pids:?}");
}

/// Starts a sandbox that holds a marker file in /tmp and /sandbox, a SysV
/// an abstract socket and a sleeping process, then
/// runs `script` in a second sandbox while the first one lives.
fn beside_a_neighbour(script: &str) -> Option<common::Run> {
    let bin = common::attack_probe()?;
    let neighbour = sh(
        "echo NEIGHBOUR > /tmp/neighbour-marker; echo NEIGHBOUR > neighbour-marker; \
         ./probe abstract-listen formicary-neighbour 4 & sleep 4",
    )
    .flags(&["--file", bin.to_str().expect("utf-8"), "--wall-time", "6"])
    .command(true)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("spawn the neighbour");
    let mut neighbour = neighbour;
    std::thread::sleep(Duration::from_millis(700));
    let r = sh(script)
        .flags(&["--file", bin.to_str().expect("utf-8")])
        .run();
    let _ = neighbour.wait();
    Some(r)
}

#[test]
fn another_sandboxs_files_are_not_visible() {
    // Mount namespace: each sandbox has its own writable tmpfs.
    require_root!();
    let Some(r) = beside_a_neighbour(
        "cat /tmp/neighbour-marker /sandbox/neighbour-marker 2>/dev/null; ls /tmp | wc -l",
    ) else {
        return;
    };
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "0\n");
}

#[test]
fn another_sandboxs_processes_are_not_visible() {
    // pid namespace: the neighbour's `sleep` is not in this /proc.
    require_root!();
    let Some(r) = beside_a_neighbour("cat /proc/[0-9]*/comm | grep -c sleep; true") else {
        return;
    };
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout(), "0\n");
}

#[test]
fn another_sandboxs_abstract_socket_is_unreachable() {
    // net namespace and Landlock's abstract socket scope.
    require_root!();
    let Some(r) = beside_a_neighbour("./probe abstract-connect formicary-neighbour") else {
        return;
    };
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert!(
        r.stdout() == "abstract-connect -1 111\n" || r.stdout() == "abstract-connect -1 1\n",
        "{}",
        r.stdout()
    );
}

#[test]
fn another_sandbox_cannot_be_signalled_by_its_host_pid() {
    // pid namespace and separate host uids: the neighbour's host pids do
    // not exist here, and kill(-1) reaches only this sandbox.
    require_root!();
    let Some(r) = beside_a_neighbour("kill -9 -1 2>/dev/null; echo alive") else {
        return;
    };
    // kill -1 from the shell kills the shell's own sandbox, at most.
    assert!(
        r.status() == "ok" || r.status() == "signaled",
        "{:?}",
        r.json
    );
}

#[test]
fn sysv_ipc_of_the_host_is_not_visible() {
    // ipc namespace: /proc/sysvipc is masked, and ipcs sees nothing.
    require_root!();
    let r = sh("ipcs -m 2>/dev/null | grep -c '^0x'; true").run();
    assert_eq!(r.status(), "ok", "{:?}", r.json);
    assert_eq!(r.stdout().trim(), "0");
}
