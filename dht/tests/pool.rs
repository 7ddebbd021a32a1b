//! The bootstrap pool through the core: querying nodes are pinged, those that answer join
//! the pool, find_node/get_peers are answered from it, silent nodes leave it, and it
//! survives a restart through `export_pool`/`import_pool`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dht::krpc::{Body, Message, Query, QueryKind, Response, Want};
use dht::{Config, Dht, Id, NodeInfo};

const OWN: Id = Id([0x11; 20]);

fn config() -> Config {
    let mut c = Config::loopback(vec![]);
    c.id = Some(OWN);
    c.pool_capacity = 1_000;
    c.outbound_rate = 100_000;
    c.outbound_burst = 100_000;
    c
}

fn core() -> (Dht, Instant) {
    let now = Instant::now();
    let mut d = Dht::new(config(), now, 5);
    d.handle_timeout(now);
    drain(&mut d);
    (d, now)
}

fn drain(d: &mut Dht) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    while let Some(t) = d.poll_transmit() {
        out.push((t.to, Message::decode(&t.data).expect("valid KRPC")));
    }
    out
}

fn msg(t: &[u8], body: Body) -> Vec<u8> {
    Message {
        t: t.to_vec(),
        v: None,
        ip: None,
        ro: false,
        body,
    }
    .to_bytes()
}

fn query(id: Id, kind: QueryKind) -> Vec<u8> {
    msg(
        b"qq",
        Body::Query(Query {
            id,
            want: Want::default(),
            kind,
        }),
    )
}

fn node(i: u32) -> NodeInfo {
    // Ids spread over the space, some sharing long prefixes.
    let mut id = [0u8; 20];
    for (j, b) in id.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761).rotate_left(j as u32 * 3) >> 5) as u8;
    }
    if i.is_multiple_of(4) {
        id[..4].copy_from_slice(&[0x42, 0x42, 0x42, 0x42]);
    }
    NodeInfo {
        id: Id(id),
        addr: SocketAddr::from(([127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8], 7000)),
    }
}

/// `n` queries from `nodes`; each gets pinged, and the ones in `answer` reply.
fn join(d: &mut Dht, now: Instant, nodes: &[NodeInfo], answer: impl Fn(&NodeInfo) -> bool) {
    for n in nodes {
        d.handle_datagram(now, n.addr, &query(n.id, QueryKind::Ping));
    }
    for (to, m) in drain(d) {
        if !matches!(
            m.body,
            Body::Query(Query {
                kind: QueryKind::Ping,
                ..
            })
        ) {
            continue;
        }
        let Some(n) = nodes.iter().find(|n| n.addr == to) else {
            continue;
        };
        if answer(n) {
            let r = Body::Response(Response {
                id: n.id,
                ..Response::default()
            });
            d.handle_datagram(now, to, &msg(&m.t, r));
        }
    }
    drain(d);
}

fn find_node(d: &mut Dht, now: Instant, from: SocketAddr, target: Id) -> Vec<NodeInfo> {
    d.handle_datagram(
        now,
        from,
        &query(Id([0x77; 20]), QueryKind::FindNode { target }),
    );
    let replies: Vec<Message> = drain(d)
        .into_iter()
        .filter(|(a, m)| *a == from && matches!(m.body, Body::Response(_)))
        .map(|(_, m)| m)
        .collect();
    match &replies[..] {
        [Message {
            body: Body::Response(r),
            ..
        }] => r.nodes.clone(),
        other => panic!("{other:?}"),
    }
}

fn even(n: &NodeInfo) -> bool {
    matches!(n.addr, SocketAddr::V4(a) if a.ip().octets()[3] % 2 == 0)
}

fn brute(nodes: &[NodeInfo], target: &Id, k: usize) -> Vec<NodeInfo> {
    let mut v = nodes.to_vec();
    v.sort_by_key(|n| n.id.distance(target));
    v.truncate(k);
    v
}

#[test]
fn answering_nodes_join_the_pool_and_replies_come_from_it() {
    let (mut d, now) = core();
    // More than even an extended routing table holds.
    let nodes: Vec<NodeInfo> = (0..1000).map(node).collect();
    // Only the even ones answer our pings.
    join(&mut d, now, &nodes, even);
    let answered: Vec<NodeInfo> = nodes.iter().copied().filter(even).collect();
    let s = d.stats();
    assert_eq!(s.pool_nodes, answered.len());
    assert!(s.nodes4 < answered.len(), "more than a routing table holds");
    let asker = SocketAddr::from(([127, 0, 9, 9], 9000));
    for t in [Id([0x42; 20]), Id([0; 20]), Id([0xff; 20]), nodes[7].id] {
        let got = find_node(&mut d, now, asker, t);
        assert_eq!(got, brute(&answered, &t, 8), "target {t:?}");
    }
}

#[test]
fn a_source_is_probed_once_not_per_query() {
    let (mut d, now) = core();
    let n = node(1);
    for _ in 0..20 {
        d.handle_datagram(now, n.addr, &query(n.id, QueryKind::Ping));
    }
    let pings = drain(&mut d)
        .into_iter()
        .filter(|(a, m)| *a == n.addr && matches!(m.body, Body::Query(_)))
        .count();
    assert_eq!(pings, 1);
}

#[test]
fn silent_nodes_leave_the_pool() {
    let (mut d, now) = core();
    let nodes: Vec<NodeInfo> = (0..50).map(node).collect();
    join(&mut d, now, &nodes, |_| true);
    assert_eq!(d.stats().pool_nodes, 50);
    // Much later: every node is due for a check; nobody answers.
    let mut t = now + config().pool_reverify + Duration::from_secs(1);
    let end = t + Duration::from_secs(600);
    while t < end && d.stats().pool_nodes > 0 {
        d.handle_timeout(t);
        drain(&mut d);
        t += Duration::from_secs(1);
    }
    assert_eq!(d.stats().pool_nodes, 0, "silent nodes dropped");
}

/// Unix time of the saves below (the core has no clock; the driver passes it).
const SAVED_AT: u64 = 1_800_000_000;
const HOUR: u64 = 3600;

/// Answers the pings `sent` to nodes in `alive` (as they would, from their addresses).
fn answer_pings(d: &mut Dht, now: Instant, sent: &[(SocketAddr, Message)], alive: &[NodeInfo]) {
    for (to, m) in sent {
        if let (Some(n), Body::Query(q)) = (alive.iter().find(|n| n.addr == *to), &m.body) {
            if q.kind == QueryKind::Ping {
                let r = Body::Response(Response {
                    id: n.id,
                    ..Response::default()
                });
                d.handle_datagram(now, *to, &msg(&m.t, r));
            }
        }
    }
}

fn pings(sent: &[(SocketAddr, Message)]) -> Vec<SocketAddr> {
    sent.iter()
        .filter(|(_, m)| matches!(&m.body, Body::Query(q) if q.kind == QueryKind::Ping))
        .map(|(a, _)| *a)
        .collect()
}

#[test]
fn the_pool_survives_a_restart() {
    let (mut d, now) = core();
    let nodes: Vec<NodeInfo> = (0..100).map(node).collect();
    join(&mut d, now, &nodes, |_| true);
    let saved = d.export_pool(SAVED_AT);
    let mut again = Dht::new(config(), now, 6);
    // Restarted a minute later: the saved nodes fill replies until they are checked.
    assert_eq!(again.import_pool(now, &saved, SAVED_AT + 60).unwrap(), 100);
    assert_eq!(again.stats().pool_nodes, 0);
    assert_eq!(again.stats().pool_saved, 100);
    let asker = SocketAddr::from(([127, 0, 9, 9], 9000));
    let t = Id([0x42; 20]);
    assert_eq!(find_node(&mut again, now, asker, t), brute(&nodes, &t, 8));
    assert!(again.import_pool(now, b"not a pool", SAVED_AT).is_err());
    // Without a pool, nothing is taken.
    let mut plain = Dht::new(Config::loopback(vec![]), now, 7);
    assert_eq!(plain.import_pool(now, &saved, SAVED_AT).unwrap(), 0);
}

#[test]
fn after_a_restart_saved_nodes_are_checked_at_once_and_the_dead_dropped_at_their_first_silence() {
    let (mut d, now) = core();
    let nodes: Vec<NodeInfo> = (0..300).map(node).collect();
    join(&mut d, now, &nodes, |_| true);
    let saved = d.export_pool(SAVED_AT);
    let mut again = Dht::new(config(), now, 6);
    again.import_pool(now, &saved, SAVED_AT + 60).unwrap();
    again.handle_timeout(now);
    let sent = drain(&mut again);
    let pinged = pings(&sent);
    assert_eq!(
        pinged.len(),
        300,
        "every saved node checked in the first pass"
    );
    // Half of them are still there.
    let alive: Vec<NodeInfo> = nodes.iter().copied().filter(even).collect();
    answer_pings(&mut again, now, &sent, &alive);
    let s = again.stats();
    assert_eq!(s.pool_nodes, alive.len());
    let later = now + Duration::from_secs(10);
    again.handle_timeout(later);
    drain(&mut again);
    let s = again.stats();
    assert_eq!((s.pool_nodes, s.pool_saved), (alive.len(), 0), "{s:?}");
    let asker = SocketAddr::from(([127, 0, 9, 9], 9000));
    let t = Id([0x42; 20]);
    assert_eq!(find_node(&mut again, later, asker, t), brute(&alive, &t, 8));
    // The next save keeps only what answered.
    let file = dht::pool::decode_pool_file(&again.export_pool(SAVED_AT + 120)).unwrap();
    assert_eq!(file.nodes.len(), alive.len());
    assert!(file.hints.is_empty());
}

#[test]
fn replies_prefer_nodes_verified_since_the_restart() {
    let (mut d, now) = core();
    let old: Vec<NodeInfo> = (0..100).map(node).collect();
    join(&mut d, now, &old, |_| true);
    let saved = d.export_pool(SAVED_AT);
    let mut again = Dht::new(config(), now, 6);
    again.import_pool(now, &saved, SAVED_AT + 60).unwrap();
    // Three newcomers query and answer the node's ping before any saved node answered.
    let fresh: Vec<NodeInfo> = (1000..1003).map(node).collect();
    join(&mut again, now, &fresh, |_| true);
    let asker = SocketAddr::from(([127, 0, 9, 9], 9000));
    let t = Id([0x42; 20]);
    let got = find_node(&mut again, now, asker, t);
    assert_eq!(got.len(), 8);
    for f in &fresh {
        assert!(
            got.contains(f),
            "a node verified since the restart is missing: {got:?}"
        );
    }
    // With k of them, saved nodes no longer appear at all.
    let more: Vec<NodeInfo> = (1003..1008).map(node).collect();
    join(&mut again, now, &more, |_| true);
    let verified: Vec<NodeInfo> = fresh.iter().chain(&more).copied().collect();
    assert_eq!(
        find_node(&mut again, now, asker, t),
        brute(&verified, &t, 8)
    );
}

#[test]
fn an_old_pool_is_only_a_list_of_nodes_to_ping() {
    let (mut d, now) = core();
    let old: Vec<NodeInfo> = (0..100).map(node).collect();
    join(&mut d, now, &old, |_| true);
    let saved = d.export_pool(SAVED_AT);
    let mut again = Dht::new(config(), now, 6);
    again.import_pool(now, &saved, SAVED_AT + 5 * HOUR).unwrap();
    let asker = SocketAddr::from(([127, 0, 9, 9], 9000));
    assert!(
        find_node(&mut again, now, asker, Id([0x42; 20])).is_empty(),
        "handed out nodes of a five-hour-old pool"
    );
    again.handle_timeout(now);
    let pinged = pings(&drain(&mut again));
    let checked = old.iter().filter(|n| pinged.contains(&n.addr)).count();
    assert_eq!(checked, 100, "but they are checked");
    // A file without a date (an older version's) is as old.
    let undated = dht::pool::encode_pool_file(&dht::pool::PoolFile {
        nodes: old.clone(),
        hints: Vec::new(),
        saved_at: None,
    });
    let mut again = Dht::new(config(), now, 6);
    again.import_pool(now, &undated, SAVED_AT).unwrap();
    let asker = SocketAddr::from(([127, 0, 9, 9], 9000));
    assert!(find_node(&mut again, now, asker, Id([0x42; 20])).is_empty());
}

#[test]
fn recycled_buffers_carry_nothing_over_and_are_bounded() {
    let (mut d, now) = core();
    let from = SocketAddr::from(([127, 0, 9, 9], 9000));
    let rest = d.approx_heap_bytes();
    for i in 0..1000u32 {
        // A dirty buffer handed back: the next reply must be exactly a fresh encoding.
        d.recycle(vec![b'x'; 300 + (i as usize % 7)]);
        d.handle_datagram(now, from, &query(Id([0x77; 20]), QueryKind::Ping));
        for (to, m) in drain(&mut d) {
            if to == from && matches!(m.body, Body::Response(_)) {
                assert_eq!(m.t, b"qq");
            }
        }
    }
    // Never more than a bounded number kept, and none at rest after housekeeping.
    for _ in 0..1000 {
        d.recycle(Vec::with_capacity(512));
    }
    assert!(d.approx_heap_bytes() < rest + 300 * 2048, "bounded");
    d.handle_timeout(now + Duration::from_secs(60));
    drain(&mut d);
    assert!(
        d.approx_heap_bytes() < rest + 64 * 1024,
        "given back at rest"
    );
}
