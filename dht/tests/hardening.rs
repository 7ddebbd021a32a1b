//! Attacks on one core, each with the rule that stops it (DHT round 2): forged replies,
//! spoofed queries, address votes, private referrals, floods.

use std::net::SocketAddr;
use std::time::Instant;

use dht::krpc::{Body, Message, NodeInfo, Response};
use dht::{Config, Dht, Id};

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

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn response(t: &[u8], id: Id, nodes: Vec<NodeInfo>) -> Vec<u8> {
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

/// A node we queried sees its own transaction id; with sequential ids it could forge the
/// replies of the nodes we queried next (their addresses are public) and steer our lookups.
#[test]
fn transaction_ids_are_random_and_a_queried_node_cannot_forge_others_replies() {
    let honest: Vec<SocketAddr> = (2..10)
        .map(|i| addr(&format!("127.0.0.{i}:6881")))
        .collect();
    let mut c = Config::loopback(honest.clone());
    c.id = Some(Id([0x11; 20]));
    let now = Instant::now();
    let mut d = Dht::new(c, now, 9);
    d.get_peers(now, Id([0x55; 20]));
    let sent = drain(&mut d);
    let tids: Vec<&[u8]> = sent.iter().map(|(_, m)| &m.t[..]).collect();
    assert!(sent.len() >= 2, "{sent:?}");
    assert!(
        tids.iter().all(|t| t.len() >= 4),
        "short transaction ids: {tids:?}"
    );
    let mut unique = tids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), tids.len(), "repeated transaction ids");

    // The attacker is the first node queried. It answers every other node's query with
    // the ids next to its own, from that node's (spoofed) address.
    let seen = u32::from_be_bytes(sent[0].1.t[..4].try_into().unwrap());
    let before = d.stats();
    let evil = NodeInfo {
        id: Id([0x55; 20]),
        addr: addr("127.66.0.1:6881"),
    };
    for (victim, _) in sent.iter().skip(1) {
        for delta in 1..=512u32 {
            for guess in [seen.wrapping_add(delta), seen.wrapping_sub(delta)] {
                let forged = response(&guess.to_be_bytes(), Id([0x77; 20]), vec![evil]);
                d.handle_datagram(now, *victim, &forged);
            }
        }
    }
    let after = d.stats();
    assert_eq!(
        after.responses_received, before.responses_received,
        "a forged reply was taken"
    );
    assert!(after.unexpected_responses >= before.unexpected_responses + 1024);
    assert!(
        !drain(&mut d).iter().any(|(a, _)| *a == evil.addr),
        "the lookup followed a forged referral"
    );
}

fn peers_response(t: &[u8], id: Id, nodes: Vec<NodeInfo>, values: Vec<SocketAddr>) -> Vec<u8> {
    Message {
        t: t.to_vec(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Response(Response {
            id,
            nodes,
            values,
            token: Some(b"tok".to_vec()),
            ..Response::default()
        }),
    }
    .to_bytes()
}

/// A public node naming loopback or LAN addresses would make us probe our own network.
#[test]
fn referrals_and_peers_into_private_ranges_from_public_nodes_are_dropped() {
    let router = addr("44.0.0.2:6881");
    let c = Config {
        id: Some(Id([0x11; 20])),
        bootstrap: vec![router],
        ..Config::default()
    };
    let now = Instant::now();
    let mut d = Dht::new(c, now, 3);
    let ih = Id([0x55; 20]);
    let lookup = d.get_peers(now, ih);
    let sent = drain(&mut d);
    let (_, q) = sent
        .iter()
        .find(|(a, _)| *a == router)
        .expect("queried the router");
    // Addresses as data only (nothing is sent anywhere: the core is sans-IO).
    let node = |i: u8, ip: [u8; 4]| NodeInfo {
        id: Id([0x50 + i; 20]),
        addr: SocketAddr::from((ip, 6881)),
    };
    let nodes = vec![
        node(1, [127, 0, 0, 1]),
        node(2, [192, 168, 1, 20]),
        node(3, [172, 16, 5, 5]),
        node(4, [0, 0, 0, 0]),
        node(5, [45, 0, 0, 1]),
    ];
    let lan_peer = SocketAddr::from(([192, 168, 1, 30], 51413));
    let values = vec![lan_peer, addr("46.0.0.1:51413")];
    d.handle_datagram(
        now,
        router,
        &peers_response(&q.t, Id([0x60; 20]), nodes, values),
    );
    let next: Vec<SocketAddr> = drain(&mut d).into_iter().map(|(a, _)| a).collect();
    assert!(next.contains(&addr("45.0.0.1:6881")), "{next:?}");
    assert!(
        next.iter().all(|a| !dht::bep42::is_exempt(a.ip())),
        "queried a private address: {next:?}"
    );
    let mut found = Vec::new();
    while let Some(ev) = d.poll_event() {
        if let dht::Event::PeersFound {
            lookup: l, peers, ..
        } = ev
        {
            assert_eq!(l, lookup);
            found.extend(peers);
        }
    }
    assert_eq!(found, vec![addr("46.0.0.1:51413")]);
}

/// A loopback core (bound at `local`, if given) starts a get_peers through `router`,
/// whose reply names `nodes`; returns where the core sends its next queries.
fn queried_after_referrals(local: Option<SocketAddr>, nodes: Vec<NodeInfo>) -> Vec<SocketAddr> {
    let router = addr("127.0.0.2:6881");
    let mut c = Config::loopback(vec![router]);
    c.id = Some(Id([0x11; 20]));
    let now = Instant::now();
    let mut d = Dht::new(c, now, 3);
    if let Some(me) = local {
        d.set_local_addr(me);
    }
    d.get_peers(now, Id([0x55; 20]));
    let sent = drain(&mut d);
    let reply = peers_response(&sent[0].1.t, Id([0x60; 20]), nodes, vec![]);
    d.handle_datagram(now, router, &reply);
    drain(&mut d).into_iter().map(|(a, _)| a).collect()
}

/// On a private network (our tests, a LAN) private referrals are the normal case.
#[test]
fn referrals_from_private_nodes_keep_private_addresses() {
    let nodes = vec![NodeInfo {
        id: Id([0x51; 20]),
        addr: addr("127.0.0.3:6881"),
    }];
    let next = queried_after_referrals(None, nodes);
    assert!(next.contains(&addr("127.0.0.3:6881")), "{next:?}");
}

/// A node that still knows an earlier run of ours at our address (under another id)
/// refers us to ourselves: that referral is not queried (we would wait out the timeout).
#[test]
fn referrals_to_our_own_address_are_not_queried() {
    let me = addr("127.0.0.9:7000");
    let nodes = vec![
        NodeInfo {
            id: Id([0x56; 20]),
            addr: me,
        },
        NodeInfo {
            id: Id([0x57; 20]),
            addr: addr("127.0.0.3:6881"),
        },
    ];
    let next = queried_after_referrals(Some(me), nodes);
    assert!(next.contains(&addr("127.0.0.3:6881")), "{next:?}");
    assert!(!next.contains(&me), "queried itself: {next:?}");
}
