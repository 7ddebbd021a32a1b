//! The answering side of one core, driven with hand-made datagrams and a moved clock, and
//! when the core asks to be woken.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dht::krpc::{error_code, Body, KrpcError, Message, Query, QueryKind, Response, Want};
use dht::{Config, Dht, Id};

fn core(tweak: impl FnOnce(&mut Config)) -> (Dht, Instant) {
    let mut c = Config::loopback(vec![]);
    c.id = Some(Id([0x11; 20]));
    tweak(&mut c);
    let now = Instant::now();
    let mut d = Dht::new(c, now, 5);
    d.handle_timeout(now);
    drain(&mut d);
    (d, now)
}

fn drain(d: &mut Dht) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    while let Some(t) = d.poll_transmit() {
        out.push((
            t.to,
            Message::decode(&t.data).expect("we only send valid KRPC"),
        ));
    }
    out
}

fn query(t: &[u8], id: Id, kind: QueryKind) -> Vec<u8> {
    Message {
        t: t.to_vec(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Query(Query {
            id,
            want: Want::default(),
            kind,
        }),
    }
    .to_bytes()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Replies addressed to `to` (queries the core sends of its own, like pings, are skipped).
fn replies_to(d: &mut Dht, to: SocketAddr) -> Vec<Message> {
    drain(d)
        .into_iter()
        .filter(|(a, m)| *a == to && !matches!(m.body, Body::Query(_)))
        .map(|(_, m)| m)
        .collect()
}

fn get_token(d: &mut Dht, now: Instant, from: SocketAddr, ih: Id) -> Vec<u8> {
    d.handle_datagram(
        now,
        from,
        &query(b"gp", Id([0x22; 20]), QueryKind::GetPeers { info_hash: ih }),
    );
    let r = replies_to(d, from);
    match &r[..] {
        [Message {
            body: Body::Response(Response { token: Some(t), .. }),
            ..
        }] => t.clone(),
        other => panic!("{other:?}"),
    }
}

fn announce(
    d: &mut Dht,
    now: Instant,
    from: SocketAddr,
    ih: Id,
    token: Vec<u8>,
    port: u16,
    implied: bool,
) -> Message {
    let kind = QueryKind::AnnouncePeer {
        info_hash: ih,
        port,
        implied_port: implied,
        token,
    };
    d.handle_datagram(now, from, &query(b"an", Id([0x22; 20]), kind));
    let mut r = replies_to(d, from);
    assert_eq!(r.len(), 1, "{r:?}");
    r.remove(0)
}

fn is_error(m: &Message, code: i64) -> bool {
    matches!(&m.body, Body::Error(KrpcError { code: c, .. }) if *c == code)
}

#[test]
fn ping_reply_echoes_tid_and_requester_address() {
    let (mut d, now) = core(|_| {});
    let from = addr("127.0.0.9:4000");
    d.handle_datagram(
        now,
        from,
        &query(b"\x00\x07", Id([0x22; 20]), QueryKind::Ping),
    );
    let r = replies_to(&mut d, from);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].t, b"\x00\x07");
    assert_eq!(r[0].ip, Some(from), "BEP 42 ip field");
    assert!(matches!(&r[0].body, Body::Response(resp) if resp.id == Id([0x11; 20])));
}

#[test]
fn tokens_are_bound_to_ip_and_expire_after_two_rotations() {
    let (mut d, mut now) = core(|_| {});
    let ih = Id([0x33; 20]);
    let a = addr("127.0.0.2:5000");
    let b = addr("127.0.0.3:5000");
    let tok = get_token(&mut d, now, a, ih);
    // Someone else presenting a's token is refused.
    let r = announce(&mut d, now, b, ih, tok.clone(), 7000, false);
    assert!(is_error(&r, error_code::PROTOCOL), "{r:?}");
    assert!(d.stored_peers(now, &ih).is_empty());
    // a itself is accepted.
    let r = announce(&mut d, now, a, ih, tok.clone(), 7000, false);
    assert!(matches!(r.body, Body::Response(_)), "{r:?}");
    assert_eq!(d.stored_peers(now, &ih), vec![addr("127.0.0.2:7000")]);
    // After one rotation the token still works; after two it does not.
    now += Duration::from_secs(5 * 60);
    d.handle_timeout(now);
    drain(&mut d);
    assert!(matches!(
        announce(&mut d, now, a, ih, tok.clone(), 7000, false).body,
        Body::Response(_)
    ));
    now += Duration::from_secs(5 * 60);
    d.handle_timeout(now);
    drain(&mut d);
    let r = announce(&mut d, now, a, ih, tok, 7000, false);
    assert!(is_error(&r, error_code::PROTOCOL), "{r:?}");
    assert_eq!(d.stats().bad_tokens, 2);
}

#[test]
fn implied_port_uses_the_source_port_and_port_zero_is_refused() {
    let (mut d, now) = core(|_| {});
    let ih = Id([0x44; 20]);
    let a = addr("127.0.0.2:5555");
    let tok = get_token(&mut d, now, a, ih);
    assert!(matches!(
        announce(&mut d, now, a, ih, tok.clone(), 9, true).body,
        Body::Response(_)
    ));
    assert_eq!(d.stored_peers(now, &ih), vec![a]);
    let r = announce(&mut d, now, a, ih, tok, 0, false);
    assert!(is_error(&r, error_code::PROTOCOL));
}

#[test]
fn storage_caps_and_expiry_with_a_moved_clock() {
    let (mut d, mut now) = core(|c| {
        c.max_torrents = 2;
        c.max_peers_per_torrent = 3;
        c.max_peers_total = 5;
        c.peer_ttl = Duration::from_secs(30 * 60);
    });
    let hashes = [Id([1; 20]), Id([2; 20]), Id([3; 20])];
    for (t, ih) in hashes.iter().enumerate() {
        for p in 0..4u8 {
            let from = SocketAddr::from(([127, 1, t as u8, p + 1], 6000));
            let tok = get_token(&mut d, now, from, *ih);
            announce(&mut d, now, from, *ih, tok, 6000, false);
            now += Duration::from_secs(1);
        }
    }
    let s = d.stats();
    assert!(s.torrents <= 2 && s.peers <= 5, "{s:?}");
    assert!(
        d.stored_peers(now, &hashes[0]).is_empty(),
        "least recent torrent evicted"
    );
    assert_eq!(d.stored_peers(now, &hashes[2]).len(), 3, "per-torrent cap");
    // Expiry: 30 minutes later everything is gone, and housekeeping frees it.
    now += Duration::from_secs(30 * 60);
    assert!(d.stored_peers(now, &hashes[2]).is_empty());
    d.handle_timeout(now);
    assert_eq!((d.stats().torrents, d.stats().peers), (0, 0));
}

#[test]
fn router_only_stores_nothing() {
    let (mut d, now) = core(|c| c.store_announces = false);
    let ih = Id([9; 20]);
    let a = addr("127.0.0.2:5555");
    let tok = get_token(&mut d, now, a, ih);
    assert!(matches!(
        announce(&mut d, now, a, ih, tok, 1, false).body,
        Body::Response(_)
    ));
    assert_eq!(d.stats().peers, 0);
}

#[test]
fn inbound_rate_limit_and_temporary_ban() {
    let (mut d, mut now) = core(|c| {
        c.inbound_rate = 10;
        c.inbound_burst = 10;
        c.ban_after_drops = 20;
        c.ban_duration = Duration::from_secs(60);
    });
    let flood = addr("127.0.0.66:1000");
    let ping = query(b"pp", Id([0x22; 20]), QueryKind::Ping);
    for _ in 0..100 {
        d.handle_datagram(now, flood, &ping);
    }
    assert_eq!(replies_to(&mut d, flood).len(), 10);
    // Banned: even after the bucket refilled, nothing for the ban's duration.
    now += Duration::from_secs(5);
    d.handle_datagram(now, flood, &ping);
    assert!(replies_to(&mut d, flood).is_empty());
    // Others are unaffected.
    let other = addr("127.0.0.67:1000");
    d.handle_datagram(now, other, &ping);
    assert_eq!(replies_to(&mut d, other).len(), 1);
    now += Duration::from_secs(60);
    d.handle_datagram(now, flood, &ping);
    assert_eq!(replies_to(&mut d, flood).len(), 1, "ban lifted");
    let s = d.stats();
    assert!(s.rate_limited >= 20 && s.banned_drops >= 1, "{s:?}");
}

#[test]
fn global_reply_budget_bounds_a_flood_from_many_sources() {
    let (mut d, now) = core(|c| c.max_replies_per_sec = 5);
    let ping = query(b"pp", Id([0x22; 20]), QueryKind::Ping);
    for i in 0..20u8 {
        d.handle_datagram(now, SocketAddr::from(([127, 9, 0, i + 1], 1000)), &ping);
    }
    let replies = drain(&mut d)
        .into_iter()
        .filter(|(_, m)| matches!(m.body, Body::Response(_)))
        .count();
    assert_eq!(replies, 5);
}

#[test]
fn garbage_gets_no_reply_and_bad_queries_get_errors() {
    let (mut d, now) = core(|_| {});
    let from = addr("127.0.0.5:1");
    for g in [
        &b"garbage"[..],
        b"d1:y1:qe",
        b"",
        b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaae1:t2:zz1:y1:re",
    ] {
        d.handle_datagram(now, from, g);
    }
    assert!(drain(&mut d).is_empty());
    // A query with a transaction id but no method: 203.
    d.handle_datagram(now, from, b"d1:t2:aa1:y1:qe");
    assert!(is_error(&replies_to(&mut d, from)[0], error_code::PROTOCOL));
    // Unknown method, no target: 204.
    d.handle_datagram(
        now,
        from,
        b"d1:ad2:id20:abcdefghij0123456789e1:q3:foo1:t2:aa1:y1:qe",
    );
    let r = replies_to(&mut d, from);
    assert!(is_error(&r[0], error_code::METHOD_UNKNOWN), "{r:?}");
    // Missing target: 203.
    d.handle_datagram(
        now,
        from,
        b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:ab1:y1:qe",
    );
    let r = replies_to(&mut d, from);
    assert!(
        is_error(&r[0], error_code::PROTOCOL) && r[0].t == b"ab",
        "{r:?}"
    );
    // Unknown method with a target: answered like find_node.
    d.handle_datagram(
        now,
        from,
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q3:get1:t2:ac1:y1:qe",
    );
    let r = replies_to(&mut d, from);
    assert!(matches!(r[0].body, Body::Response(_)), "{r:?}");
}

/// Makes `peer` a confirmed node of `d` by answering the core's ping.
fn confirm(d: &mut Dht, now: Instant, peer: SocketAddr, id: Id) {
    d.ping(now, peer);
    let sent = drain(d);
    let (_, ping) = sent.iter().find(|(a, _)| *a == peer).expect("ping sent");
    d.handle_datagram(now, peer, &response(&ping.t, id, Vec::new()));
}

/// A reply to transaction `t` from node `id`, naming `nodes`.
fn response(t: &[u8], id: Id, nodes: Vec<dht::krpc::NodeInfo>) -> Vec<u8> {
    Message {
        t: t.to_vec(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Response(Response {
            id,
            nodes,
            ..Response::default()
        }),
    }
    .to_bytes()
}

#[test]
fn sample_infohashes_replies_to_unverified_sources_are_bounded() {
    let (mut d, now) = core(|_| {});
    for p in 0..60u8 {
        let from = SocketAddr::from(([127, 2, 0, p + 1], 6000));
        let ih = Id([p; 20]);
        let tok = get_token(&mut d, now, from, ih);
        announce(&mut d, now, from, ih, tok, 6000, false);
    }
    for p in 0..30u8 {
        let id = Id([p.wrapping_mul(7) ^ 0x80; 20]);
        confirm(
            &mut d,
            now,
            SocketAddr::from(([127, 3, 0, p + 1], 6881)),
            id,
        );
    }
    drain(&mut d);
    let samples = |d: &mut Dht, from: SocketAddr, id: Id| {
        let q = query(
            b"sa",
            id,
            QueryKind::SampleInfohashes {
                target: Id([9; 20]),
            },
        );
        d.handle_datagram(now, from, &q);
        let r = replies_to(d, from);
        let size = r[0].to_bytes().len();
        let Body::Response(r) = &r[0].body else {
            panic!("{r:?}")
        };
        (r.samples.clone().unwrap().len(), size, q.len())
    };
    let (n, size, q) = samples(&mut d, addr("127.0.0.200:1"), Id([0x66; 20]));
    assert!(n <= 4, "{n} samples to a stranger");
    assert!(size <= 5 * q, "reply {size} bytes to a {q}-byte query");
    let (n, _, _) = samples(&mut d, addr("127.3.0.1:6881"), Id([0x80; 20]));
    assert_eq!(n, 20, "a node that answered us gets the full sample");
}

#[test]
fn replies_to_unverified_sources_are_not_much_larger_than_the_query() {
    let (mut d, now) = core(|_| {});
    let ih = Id([0x55; 20]);
    // Many stored peers and a full-ish table.
    for p in 0..60u8 {
        let from = SocketAddr::from(([127, 2, 0, p + 1], 6000));
        let tok = get_token(&mut d, now, from, ih);
        announce(&mut d, now, from, ih, tok, 6000, false);
    }
    for p in 0..30u8 {
        confirm(
            &mut d,
            now,
            SocketAddr::from(([127, 3, 0, p + 1], 6881)),
            Id([p.wrapping_mul(7) ^ 0x80; 20]),
        );
    }
    drain(&mut d);
    let stranger = addr("127.0.0.200:1");
    let q = query(b"zz", Id([0x66; 20]), QueryKind::GetPeers { info_hash: ih });
    d.handle_datagram(now, stranger, &q);
    let stranger_reply = drain(&mut d)
        .into_iter()
        .find(|(a, m)| *a == stranger && !matches!(m.body, Body::Query(_)))
        .unwrap();
    let size = stranger_reply.1.to_bytes().len();
    assert!(
        size <= 5 * q.len(),
        "reply {size} bytes to a {}-byte query",
        q.len()
    );
    // A node that has answered us gets the full answer.
    let friend = addr("127.3.0.1:6881");
    let q = query(b"zz", Id([0x80; 20]), QueryKind::GetPeers { info_hash: ih });
    d.handle_datagram(now, friend, &q);
    let friend_reply = replies_to(&mut d, friend);
    let Body::Response(r) = &friend_reply[0].body else {
        panic!()
    };
    assert_eq!(r.values.len(), 60);
    assert_eq!(r.nodes.len(), 8);
}

#[test]
fn a_new_id_at_a_known_address_is_checked_and_only_a_reply_replaces_it() {
    let (mut d, now) = core(|_| {});
    let peer = addr("127.0.0.77:6881");
    confirm(&mut d, now, peer, Id([0x70; 20]));
    let has = |d: &Dht, id: Id| {
        d.routing_table_snapshot()
            .iter()
            .any(|n| n.addr == peer && n.id == id)
    };
    assert!(has(&d, Id([0x70; 20])));
    // Same address, new id, in a query (whose source anyone can spoof): the entry stays,
    // and the address is pinged to find out which id is real.
    d.handle_datagram(now, peer, &query(b"q1", Id([0x71; 20]), QueryKind::Ping));
    let sent = drain(&mut d);
    assert!(
        has(&d, Id([0x70; 20])),
        "a query alone evicted a confirmed node"
    );
    let (_, ping) = sent
        .iter()
        .find(|(a, m)| *a == peer && matches!(&m.body, Body::Query(q) if q.kind == QueryKind::Ping))
        .expect("re-pinged");
    // The reply comes from the new id: now the old entry goes.
    d.handle_datagram(now, peer, &response(&ping.t, Id([0x71; 20]), Vec::new()));
    assert!(!has(&d, Id([0x70; 20])), "evicted after the reply");
    // A known id from a new address is ignored.
    let other = addr("127.0.0.78:6881");
    confirm(&mut d, now, other, Id([0x72; 20]));
    confirm(&mut d, now, addr("127.0.0.79:6881"), Id([0x72; 20]));
    let snap = d.routing_table_snapshot();
    assert_eq!(snap.iter().filter(|n| n.id == Id([0x72; 20])).count(), 1);
    assert!(snap
        .iter()
        .any(|n| n.id == Id([0x72; 20]) && n.addr == other));
}

#[test]
fn read_only_answers_nothing_and_marks_its_queries() {
    let (mut d, now) = core(|c| {
        c.read_only = true;
        c.bootstrap = vec![addr("127.0.0.9:6881")];
    });
    d.handle_datagram(
        now,
        addr("127.0.0.5:1"),
        &query(b"aa", Id([0x22; 20]), QueryKind::Ping),
    );
    assert!(drain(&mut d).is_empty());
    d.find_node(now, Id([1; 20]));
    let sent = drain(&mut d);
    assert!(!sent.is_empty());
    assert!(sent
        .iter()
        .all(|(_, m)| m.ro && matches!(m.body, Body::Query(_))));
}

#[test]
fn read_only_nodes_never_enter_the_table() {
    let (mut d, now) = core(|_| {});
    let ro_node = addr("127.0.0.44:6881");
    let mut m = Message::decode(&query(b"aa", Id([0x23; 20]), QueryKind::Ping)).unwrap();
    m.ro = true;
    d.handle_datagram(now, ro_node, &m.to_bytes());
    // It still gets an answer but is not added or pinged.
    let sent = drain(&mut d);
    assert_eq!(sent.len(), 1);
    assert!(matches!(sent[0].1.body, Body::Response(_)));
    assert_eq!(d.node_count(), 0);
}

#[test]
fn sample_infohashes_lists_stored_hashes() {
    let (mut d, now) = core(|_| {});
    for t in 0..3u8 {
        let from = SocketAddr::from(([127, 4, 0, t + 1], 6000));
        let tok = get_token(&mut d, now, from, Id([t; 20]));
        announce(&mut d, now, from, Id([t; 20]), tok, 6000, false);
    }
    let from = addr("127.0.0.8:1");
    d.handle_datagram(
        now,
        from,
        &query(
            b"sa",
            Id([0x22; 20]),
            QueryKind::SampleInfohashes {
                target: Id([0; 20]),
            },
        ),
    );
    let r = replies_to(&mut d, from);
    let Body::Response(r) = &r[0].body else {
        panic!()
    };
    let mut samples = r.samples.clone().unwrap();
    samples.sort();
    assert_eq!(samples, vec![Id([0; 20]), Id([1; 20]), Id([2; 20])]);
    assert_eq!(r.num, Some(3));
    assert!(r.interval.is_some());
}

#[test]
fn responses_must_come_from_the_queried_address() {
    let (mut d, now) = core(|_| {});
    let peer = addr("127.0.0.90:6881");
    d.ping(now, peer);
    let sent = drain(&mut d);
    let t = sent[0].1.t.clone();
    let resp = Message {
        t,
        v: None,
        ip: None,
        ro: false,
        body: Body::Response(Response {
            id: Id([0x90; 20]),
            ..Response::default()
        }),
    };
    // A spoofed answer from elsewhere is ignored.
    d.handle_datagram(now, addr("127.0.0.91:6881"), &resp.to_bytes());
    assert_eq!(d.node_count(), 0);
    assert_eq!(d.stats().unexpected_responses, 1);
    d.handle_datagram(now, peer, &resp.to_bytes());
    assert_eq!(d.node_count(), 1);
    let mut events = Vec::new();
    while let Some(e) = d.poll_event() {
        events.push(e);
    }
    assert!(events.contains(&dht::Event::Pong {
        addr: peer,
        id: Id([0x90; 20])
    }));
}

// ---- when the core asks to be woken -------------------------------------------------

fn peer(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 1, i], 6881))
}

fn id(i: u8) -> Id {
    let mut b = [0x80; 20];
    b[0] = i; // spread over the far buckets
    Id(b)
}

#[test]
fn an_answered_query_leaves_no_timer_behind() {
    let (mut d, now) = core(|_| {});
    let short = Config::default().short_timeout;
    confirm(&mut d, now, peer(1), id(1));
    d.find_node(now, Id([0x42; 20]));
    let out = drain(&mut d);
    let (to, q) = out
        .iter()
        .find(|(_, m)| matches!(m.body, Body::Query(_)))
        .expect("asked");
    assert_eq!(*to, peer(1));
    assert!(
        d.poll_timeout().unwrap() <= now + short,
        "the lookup query is timed"
    );
    let resp = Message {
        t: q.t.clone(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Response(Response {
            id: id(1),
            ..Response::default()
        }),
    };
    d.handle_datagram(now + Duration::from_millis(100), peer(1), &resp.to_bytes());
    let next = d.poll_timeout().unwrap();
    assert!(
        next > now + short,
        "woken at {:?} for a query that was answered",
        next - now
    );
}

#[test]
fn an_idle_node_sleeps_until_housekeeping_is_due_and_wakes_for_newcomers() {
    // Plain buckets: the newcomer below lands in bucket 0, which would be lazy otherwise.
    let (mut d, now) = core(|c| c.extended_buckets = false);
    let tick = Config::default().tick;
    for i in 0..12 {
        confirm(&mut d, now, peer(i + 1), id(i * 20));
    }
    assert!(d.node_count() >= Config::default().k);
    // The first pass after the joins checks the table; nothing is due for minutes after.
    let t1 = now + tick;
    assert_eq!(d.poll_timeout(), Some(t1));
    d.handle_timeout(t1);
    assert!(drain(&mut d).is_empty(), "every node is good");
    let sleep = d.poll_timeout().unwrap() - t1;
    assert!(
        sleep > 4 * tick && sleep <= Duration::from_secs(60),
        "idle node sleeps {sleep:?}"
    );

    // A newcomer queries us: it enters the table unconfirmed and the regular tick is
    // back, so it is pinged within one tick.
    let newcomer = peer(200);
    let q = query(b"aa", id(250), QueryKind::Ping);
    let t2 = t1 + Duration::from_secs(2);
    d.handle_datagram(t2, newcomer, &q);
    drain(&mut d);
    let wake = d.poll_timeout().unwrap();
    assert_eq!(wake, t1 + tick, "back to the regular tick");
    d.handle_timeout(wake);
    let pinged = drain(&mut d).iter().any(|(a, m)| {
        *a == newcomer && matches!(&m.body, Body::Query(q) if q.kind == QueryKind::Ping)
    });
    assert!(pinged, "the unconfirmed newcomer is pinged");
}

/// Queries the core sent, by address.
fn queries_sent(d: &mut Dht) -> Vec<SocketAddr> {
    drain(d)
        .into_iter()
        .filter(|(_, m)| matches!(m.body, Body::Query(_)))
        .map(|(a, _)| a)
        .collect()
}

#[test]
fn the_short_timeout_follows_measured_round_trips() {
    let (mut d, now) = core(|_| {});
    // Twelve nodes that answered at once: round trips of zero.
    for i in 0..12 {
        confirm(&mut d, now, peer(i + 1), id(i * 20));
    }
    d.find_node(now, Id([0x42; 20]));
    let first = queries_sent(&mut d);
    assert_eq!(first.len(), Config::default().alpha);
    // Nothing answers. Long before the configured 1 s ceiling, but well past anything
    // measured, the queries count as slow and the lookup asks more nodes.
    let at = now + Config::default().short_timeout_min + Duration::from_millis(50);
    assert!(d.poll_timeout().unwrap() <= at, "woken for the slow check");
    d.handle_timeout(at);
    let more = queries_sent(&mut d);
    assert!(!more.is_empty(), "slow queries freed their slots");
    assert!(more.iter().all(|a| !first.contains(a)));
}

fn query_from(d: &mut Dht, now: Instant, from: SocketAddr, id: Id) -> Vec<SocketAddr> {
    let q = query(b"q1", id, QueryKind::Ping);
    d.handle_datagram(now, from, &q);
    queries_sent(d)
}

#[test]
fn extended_far_buckets_take_newcomers_without_pinging_them() {
    // Plain table: a node that queries us is pinged to confirm it.
    let (mut d, now) = core(|c| c.extended_buckets = false);
    assert_eq!(query_from(&mut d, now, peer(1), id(0x90)), vec![peer(1)]);
    // Extended: once the table has split (the bucket holding our own id works as in
    // BEP 5), a far newcomer waits, unconfirmed, for a lookup to use it.
    let (mut d, now) = core(|c| c.extended_buckets = true);
    for i in 0..12 {
        confirm(&mut d, now, peer(20 + i), id(i * 20));
    }
    assert!(query_from(&mut d, now, peer(1), id(0x90)).is_empty());
    assert!(d.routing_table_snapshot().iter().any(|n| n.id == id(0x90)));
    // Our lookup asks it first; its answer confirms it and its referrals fill the far
    // buckets without a ping of their own.
    d.find_node(now, id(0x91));
    let asked = drain(&mut d);
    let (_, q) = asked
        .iter()
        .find(|(a, m)| *a == peer(1) && matches!(m.body, Body::Query(_)))
        .expect("the nearest node is asked");
    let referrals: Vec<dht::krpc::NodeInfo> = (0..8)
        .map(|i| dht::krpc::NodeInfo {
            id: id(0xe0 + i),
            addr: peer(100 + i),
        })
        .collect();
    d.handle_datagram(now, peer(1), &response(&q.t, id(0x90), referrals.clone()));
    let table = d.routing_table_snapshot();
    for r in &referrals {
        assert!(table.contains(r), "referral {r:?} kept");
    }
    let pings: Vec<SocketAddr> = drain(&mut d)
        .into_iter()
        .filter(|(_, m)| matches!(&m.body, Body::Query(q) if q.kind == QueryKind::Ping))
        .map(|(a, _)| a)
        .collect();
    assert!(pings.is_empty(), "pinged {pings:?}");
}

/// The find_node queries `d` sent, with their targets.
fn find_nodes(sent: &[(SocketAddr, Message)]) -> Vec<(SocketAddr, Vec<u8>, Id)> {
    sent.iter()
        .filter_map(|(a, m)| match &m.body {
            Body::Query(Query {
                kind: QueryKind::FindNode { target },
                ..
            }) => Some((*a, m.t.clone(), *target)),
            _ => None,
        })
        .collect()
}

fn pings(sent: &[(SocketAddr, Message)]) -> Vec<SocketAddr> {
    sent.iter()
        .filter(|(_, m)| matches!(&m.body, Body::Query(q) if q.kind == QueryKind::Ping))
        .map(|(a, _)| *a)
        .collect()
}

/// A stale bucket short of nodes is filled by one find_node and pings to what it names,
/// not by a lookup; if that find_node goes unanswered, a lookup does it after all.
#[test]
fn a_sparse_bucket_fills_from_one_find_node_and_pings() {
    let k = Config::default().k;
    let setup = || {
        let (mut d, now) = core(|c| c.extended_buckets = false);
        // Ids 0x8c.. to 0xdc..: five of the twelve in bucket 0 (we are 0x11..), which
        // is three short of k once the table has split.
        for i in 0..12 {
            confirm(&mut d, now, peer(i + 1), id(i * 20));
        }
        let later = now + Config::default().bucket_refresh + Duration::from_secs(1);
        d.handle_timeout(later);
        let sent = drain(&mut d);
        let probes = find_nodes(&sent);
        assert_eq!(probes.len(), 1, "one find_node, not a lookup: {probes:?}");
        (d, later, probes[0].clone())
    };

    let (mut d, later, (via, t, target)) = setup();
    let own = d.id();
    assert_eq!(
        own.common_prefix_len(&target),
        0,
        "bucket 0 is filled first"
    );
    // It names eight nodes in that range; three fit, and just those are pinged.
    let named: Vec<dht::krpc::NodeInfo> = (0..8u8)
        .map(|i| {
            let mut nid = target;
            nid.0[19] = i;
            dht::krpc::NodeInfo {
                id: nid,
                addr: peer(100 + i),
            }
        })
        .collect();
    let via_id = d
        .routing_table_snapshot()
        .into_iter()
        .find(|n| n.addr == via)
        .expect("asked a node of ours")
        .id;
    d.handle_datagram(later, via, &response(&t, via_id, named.clone()));
    let sent = drain(&mut d);
    let pinged: Vec<SocketAddr> = pings(&sent)
        .into_iter()
        .filter(|a| named.iter().any(|n| n.addr == *a))
        .collect();
    assert_eq!(pinged.len(), 3, "pinged {pinged:?}");
    assert!(find_nodes(&sent).is_empty(), "no lookup follows");
    // The pinged nodes that answer join the table.
    for (a, m) in sent.iter().filter(|(a, _)| pinged.contains(a)) {
        let nid = named.iter().find(|n| n.addr == *a).unwrap().id;
        d.handle_datagram(later, *a, &response(&m.t, nid, Vec::new()));
    }
    let table = d.routing_table_snapshot();
    let joined = named.iter().filter(|n| table.contains(n)).count();
    assert_eq!(joined, 3);
    assert!(k >= 3);

    // Unanswered, the find_node gives way to a lookup into the same range.
    let (mut d, later, _) = setup();
    let timeout = later + Config::default().query_timeout + Duration::from_millis(1);
    d.handle_timeout(timeout);
    // (The same pass may probe the next stale bucket, in another range.)
    let own = d.id();
    let lookup: Vec<_> = find_nodes(&drain(&mut d))
        .into_iter()
        .filter(|(_, _, t)| own.common_prefix_len(t) == 0)
        .collect();
    assert_eq!(
        lookup.len(),
        Config::default().maintenance_alpha,
        "a lookup takes over: {lookup:?}"
    );
}

/// BEP 5: find_node and get_peers replies carry `nodes` even from a node that knows
/// nobody yet (an empty string), and get_peers a token; a bare ping reply has no `nodes`.
#[test]
fn a_node_that_knows_nobody_still_answers_with_an_empty_nodes_key() {
    let (mut d, now) = core(|_| {});
    let from = addr("127.0.0.9:7000");
    let raw_replies = |d: &mut Dht| {
        std::iter::from_fn(|| d.poll_transmit())
            .filter(|t| t.to == from)
            .filter(|t| {
                matches!(
                    Message::decode(&t.data).map(|m| m.body),
                    Ok(Body::Response(_))
                )
            })
            .map(|t| t.data)
            .collect::<Vec<_>>()
    };
    let cases = [
        (
            &b"fn"[..],
            QueryKind::FindNode {
                target: Id([0x33; 20]),
            },
        ),
        (
            &b"gp"[..],
            QueryKind::GetPeers {
                info_hash: Id([0x44; 20]),
            },
        ),
    ];
    for (t, kind) in cases {
        d.handle_datagram(now, from, &query(t, Id([0x22; 20]), kind));
        let replies = raw_replies(&mut d);
        assert_eq!(replies.len(), 1, "one reply");
        let bytes = &replies[0];
        assert!(
            bytes.windows(8).any(|w| w == b"5:nodes0"),
            "an empty nodes key: {}",
            String::from_utf8_lossy(bytes)
        );
    }
    d.handle_datagram(now, from, &query(b"pn", Id([0x22; 20]), QueryKind::Ping));
    let replies = raw_replies(&mut d);
    assert!(!replies[0].windows(7).any(|w| w == b"5:nodes"));
}
