//! `swarm bootstrap` as a real process on 127.0.0.x: its ready line, a KRPC ping from a
//! plain UDP socket (hand-encoded BEP 5 bencode), a clear error when the port is taken,
//! and Ctrl-C saving the node pool and exiting 0.

#[path = "bootstrap_proc.rs"]
mod bootstrap_proc;

use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

use tests::{next_loopback_ip, swarm_bin, wait_until, wait_with_limit};

/// Sends a BEP 5 ping from `sock` to `to` (up to 3 tries) and returns the reply bytes.
fn krpc_ping(sock: &UdpSocket, to: std::net::SocketAddr, t: &[u8; 2]) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(b"d1:ad2:id20:");
    q.extend_from_slice(b"abcdefghij0123456789");
    q.extend_from_slice(b"e1:q4:ping1:t2:");
    q.extend_from_slice(t);
    q.extend_from_slice(b"1:y1:qe");
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        sock.send_to(&q, to).expect("send ping");
        // The node may also ping us back (to verify us): skip its queries. Bounded.
        for _ in 0..8 {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            assert_eq!(from, to, "datagram from the node");
            if !contains(&buf[..n], b"1:y1:q") {
                return buf[..n].to_vec();
            }
        }
    }
    panic!("no reply to a KRPC ping from {to}");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn bootstrap_answers_ping_refuses_a_taken_port_and_saves_on_ctrl_c() {
    let state = tempfile::tempdir().unwrap();
    let ip = IpAddr::V4(next_loopback_ip());
    let mut boot =
        bootstrap_proc::start(swarm_bin!(), ip, 0, state.path(), &["--stats-every", "1"]);
    assert_eq!(boot.addr.ip(), ip);
    assert_ne!(boot.addr.port(), 0);

    // A KRPC ping, hand-encoded: the reply is a response with our transaction id, the
    // node's id (the one on the ready line) and our address in `ip` (BEP 42).
    let client = UdpSocket::bind((next_loopback_ip(), 0)).unwrap();
    let reply = krpc_ping(&client, boot.addr, b"xy");
    assert!(reply.starts_with(b"d"), "{reply:?}");
    assert!(
        contains(&reply, b"1:t2:xy"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        contains(&reply, b"1:y1:r"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let id = hex::decode(&boot.id).unwrap();
    let mut want_id = b"2:id20:".to_vec();
    want_id.extend_from_slice(&id);
    assert!(contains(&reply, &want_id), "reply carries the node id");
    let mut want_ip = b"2:ip6:".to_vec();
    match client.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => {
            want_ip.extend_from_slice(&a.ip().octets());
            want_ip.extend_from_slice(&a.port().to_be_bytes());
        }
        _ => unreachable!(),
    }
    assert!(contains(&reply, &want_ip), "reply echoes our address");

    // Garbage gets no reply (no reflection).
    client.send_to(b"not bencode at all", boot.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1500];
    // Bounded reads: a reply (if any) to garbage would arrive within the timeout. The
    // node's own queries (it pings new nodes back) are not replies.
    for _ in 0..8 {
        match client.recv_from(&mut buf) {
            Ok((n, _)) => assert!(contains(&buf[..n], b"1:y1:q"), "garbage got a reply"),
            Err(_) => break,
        }
    }

    // The stats line shows up on stderr and counts the ping.
    assert!(
        wait_until(Duration::from_secs(10), || boot
            .stderr()
            .contains("bootstrap stats:")),
        "no stats line; stderr:\n{}",
        boot.stderr()
    );

    // A second instance on the same address fails at once with one clear line.
    let second = tests::swarm_command(swarm_bin!())
        .args(["bootstrap", "--bind", &ip.to_string(), "--port"])
        .arg(boot.addr.port().to_string())
        .arg("--state-dir")
        .arg(state.path().join("second"))
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_limit(second, Duration::from_secs(20));
    assert!(!out.status.success(), "second instance must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("swarm: error: "), "{err}");
    assert!(
        err.contains(&boot.addr.to_string()),
        "names the address: {err}"
    );
    assert!(err.to_lowercase().contains("in use"), "says why: {err}");
    assert!(
        out.stdout.is_empty(),
        "no ready line from the failed instance"
    );

    // The first one still answers, and Ctrl-C saves its state and exits 0.
    let reply = krpc_ping(&client, boot.addr, b"zz");
    assert!(contains(&reply, b"1:t2:zz"));
    let st = boot.interrupt(Duration::from_secs(10));
    assert!(st.success(), "exit status after SIGINT: {st}");
    let saved = std::fs::read(state.path().join("bootstrap-dht.state")).expect("state saved");
    let saved = dht::SavedState::from_bytes(&saved).expect("valid state");
    assert_eq!(saved.id.to_hex(), boot.id);
}

#[test]
fn ready_line_parses() {
    let (a, id) = bootstrap_proc::parse_ready(
        "listening on 127.0.0.5:6881 (node id 0123456789abcdef0123456789abcdef01234567)",
    )
    .unwrap();
    assert_eq!(a, "127.0.0.5:6881".parse().unwrap());
    assert_eq!(id.len(), 40);
    assert!(bootstrap_proc::parse_ready("listening on nowhere").is_none());
}

/// Reads datagrams on `sock` until the node's ping to us arrives (bounded by time and
/// count) and answers it as node `id`.
fn answer_ping(sock: &UdpSocket, from: std::net::SocketAddr, id: &[u8; 20]) {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let Ok((n, src)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let d = &buf[..n];
        if src != from || !contains(d, b"1:y1:q") || !contains(d, b"4:ping") {
            continue;
        }
        let tid = string_after(d, b"1:t").expect("a transaction id");
        let mut r = b"d1:rd2:id20:".to_vec();
        r.extend_from_slice(id);
        r.extend_from_slice(format!("e1:t{}:", tid.len()).as_bytes());
        r.extend_from_slice(&tid);
        r.extend_from_slice(b"1:y1:re");
        sock.send_to(&r, from).unwrap();
        return;
    }
    panic!("the node never pinged {:?}", sock.local_addr());
}

/// The byte string under `key` (e.g. `b"5:nodes"`) in a bencoded reply.
fn string_after(d: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    let mut at = d.windows(key.len()).position(|w| w == key)? + key.len();
    let mut len = 0usize;
    while let Some(c) = d.get(at).filter(|c| c.is_ascii_digit()) {
        len = len * 10 + (c - b'0') as usize;
        at += 1;
    }
    if d.get(at) != Some(&b':') {
        return None;
    }
    d.get(at + 1..at + 1 + len).map(<[u8]>::to_vec)
}

/// Sends find_node for `target` and returns the compact `nodes` (IPv4 requester) or
/// `nodes6` (IPv6 requester) of the reply.
fn find_node(sock: &UdpSocket, to: std::net::SocketAddr, target: &[u8; 20]) -> Vec<u8> {
    let key: &[u8] = if to.is_ipv4() {
        b"5:nodes"
    } else {
        b"6:nodes6"
    };
    let mut q = b"d1:ad2:id20:zyxwvutsrqponmlkjihg6:target20:".to_vec();
    q.extend_from_slice(target);
    q.extend_from_slice(b"e1:q9:find_node1:t2:fn1:y1:qe");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        sock.send_to(&q, to).unwrap();
        for _ in 0..8 {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                break;
            };
            let d = &buf[..n];
            if contains(d, b"1:t2:fn") && contains(d, b"1:y1:r") {
                return string_after(d, key).expect("nodes in the reply");
            }
        }
    }
    panic!("no find_node reply from {to}");
}

#[test]
fn answering_nodes_join_the_pool_which_survives_a_restart() {
    pool_survives_a_restart(IpAddr::V4(next_loopback_ip()), || {
        IpAddr::V4(next_loopback_ip())
    });
}

/// The same over IPv6 on ::1 (BEP 32): the IPv6 pool, answered as `nodes6`.
#[test]
fn ipv6_pool_on_loopback() {
    let v6: IpAddr = "::1".parse().unwrap();
    pool_survives_a_restart(v6, || v6);
}

fn pool_survives_a_restart(ip: IpAddr, client_ip: impl Fn() -> IpAddr) {
    let entry = if ip.is_ipv4() { 26 } else { 38 };
    let state = tempfile::tempdir().unwrap();
    let mut boot =
        bootstrap_proc::start(swarm_bin!(), ip, 0, state.path(), &["--stats-every", "1"]);
    // Ten nodes query the node; it pings each back; they answer and join the pool.
    let mut ids = Vec::new();
    for i in 0..10u8 {
        let sock = UdpSocket::bind((client_ip(), 0)).unwrap();
        let id = [0x40 + i; 20];
        let mut q = b"d1:ad2:id20:".to_vec();
        q.extend_from_slice(&id);
        q.extend_from_slice(b"e1:q4:ping1:t2:pp1:y1:qe");
        sock.send_to(&q, boot.addr).unwrap();
        answer_ping(&sock, boot.addr, &id);
        ids.push(id);
    }
    assert!(
        wait_until(Duration::from_secs(10), || boot
            .stderr()
            .contains("pool 10 ")),
        "pool never reached 10; stderr:\n{}",
        boot.stderr()
    );
    assert!(boot.interrupt(Duration::from_secs(10)).success());
    let saved = std::fs::read(state.path().join("bootstrap-dht.pool")).expect("pool saved");
    assert_eq!(dht::pool::decode_pool_file(&saved).unwrap().nodes.len(), 10);

    // Restarted, it answers find_node from the reloaded pool at once (its routing table
    // starts empty: the saved nodes are only lookup seeds there).
    let mut again = bootstrap_proc::start(swarm_bin!(), ip, 0, state.path(), &[]);
    let client = UdpSocket::bind((client_ip(), 0)).unwrap();
    let nodes = find_node(&client, again.addr, &ids[3]);
    assert_eq!(nodes.len(), 8 * entry, "k nodes from the pool");
    assert_eq!(&nodes[..20], &ids[3], "the closest first");
    let st = again.interrupt(Duration::from_secs(10));
    assert!(st.success(), "{st}; stderr:\n{}", again.stderr());
}
