//! `Proxy::shutdown` leaves no file descriptor behind: the process's open
//! descriptors (`/proc/self/fd`) are back to their count before the proxy
//! started. A test binary of its own, with one test, so that no other test
//! opens descriptors meanwhile.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use formicary_netproxy::{Proxy, ProxyConfig, RuleSet, StaticResolver};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn shutdown_leaves_no_file_descriptor_open() {
    // An echo origin, whose connections close when the proxy's do.
    let origin = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let origin_port = origin.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut s in origin.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let before = open_fds();

    let rules = RuleSet::parse_net(&format!("allow=127.0.0.1:{origin_port}")).expect("rules");
    let config = ProxyConfig::new(rules).with_resolver(Arc::new(StaticResolver::default()));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let proxy = Proxy::new(config);
    let server = proxy.clone();
    let serving = thread::spawn(move || server.serve(listener));

    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(format!("CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\n\r\n").as_bytes())
            .expect("CONNECT");
        let mut head = [0u8; 39];
        s.read_exact(&mut head).expect("200");
        s.write_all(b"ping").expect("send");
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).expect("echo");
        clients.push(s);
    }
    // And one client still sending its request.
    let mut partial = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    partial.write_all(b"CONNECT 127.0.0.1:").expect("partial");
    clients.push(partial);
    while proxy.open_connections() < 5 {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(open_fds() > before + 10, "the relays hold descriptors");

    assert_eq!(proxy.shutdown(Duration::from_secs(5)), 0);
    serving.join().expect("serve returned");
    assert_eq!(proxy.open_connections(), 0);
    drop(clients);
    // The origin's handler threads close their ends on the EOF the proxy
    // sent; give them a moment.
    let start = Instant::now();
    while open_fds() != before && start.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open_fds(), before, "descriptors left open");
    let log = proxy.log();
    assert_eq!(log.iter().filter(|a| a.allowed).count(), 4);
    assert!(log.iter().all(|a| a.bytes_up == 4 || !a.allowed));
}
