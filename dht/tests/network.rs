//! Whole-network behaviour of the core in virtual time (see `common::TestNet`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{loopback_addr, TestNet};
use dht::{Config, Dht, Event, Id, LookupKind};

const MS: Duration = Duration::from_millis(1);

fn join(net: &mut TestNet) {
    net.bootstrap_all();
    net.run_for(Duration::from_secs(20));
}

#[test]
fn two_hundred_nodes_get_peers_finds_announcer() {
    let mut net = TestNet::star(200, 20 * MS, |_| {});
    join(&mut net);
    // Every node knows a decent part of the network.
    let sizes: Vec<usize> = net.nodes.iter().map(Dht::node_count).collect();
    let avg = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    assert!(avg >= 20.0, "average table size {avg}");
    assert!(sizes.iter().all(|&s| s >= 8), "{sizes:?}");

    let info_hash = Id([0xab; 20]);
    let now = net.now;
    let announce = net.node(17).announce(now, info_hash, Some(51413));
    assert!(net.run_until(Duration::from_secs(30), |n| n.events[17]
        .iter()
        .any(|e| matches!(e, Event::AnnounceDone { lookup, acked, .. } if *lookup == announce && *acked >= 6))));

    let now = net.now;
    let lookup = net.node(150).get_peers(now, info_hash);
    let want: SocketAddr = SocketAddr::new(loopback_addr(17).ip(), 51413);
    assert!(
        net.run_until(Duration::from_secs(30), |n| n
            .peers_found(150, lookup)
            .contains(&want)),
        "announcer not found; events: {:?}",
        net.events[150]
    );
    assert!(
        net.run_until(Duration::from_secs(30), |n| n.lookups_done(150, lookup)
            == 1)
    );
    // Not too many queries for one lookup in a 200-node network.
    let queries = net.events[150].iter().find_map(|e| match e {
        Event::LookupDone {
            lookup: l, queries, ..
        } if *l == lookup => Some(*queries),
        _ => None,
    });
    assert!(queries.unwrap() <= 40, "{queries:?}");
}

#[test]
fn lookups_finish_exactly_once_with_late_and_duplicate_replies() {
    let mut net = TestNet::star(60, 10 * MS, |_| {});
    join(&mut net);
    net.duplicate = true;
    // A few nodes answer after the short timeout, a few after the long one.
    for i in 5..10 {
        net.slow
            .insert(loopback_addr(i), Duration::from_millis(1500));
    }
    for i in 10..15 {
        net.slow.insert(loopback_addr(i), Duration::from_secs(7));
    }
    let now = net.now;
    let mut ids = Vec::new();
    for j in 0..10u8 {
        let kind_peers = j % 2 == 0;
        let target = Id([j.wrapping_mul(37); 20]);
        let id = if kind_peers {
            net.node(30).get_peers(now, target)
        } else {
            net.node(30).find_node(now, target)
        };
        ids.push(id);
    }
    net.run_for(Duration::from_secs(60));
    for id in &ids {
        assert_eq!(net.lookups_done(30, *id), 1, "lookup {id:?}");
    }
    // No lookups or transactions left behind.
    let s = net.nodes[30].stats();
    assert_eq!(s.lookups, 0, "{s:?}");
    assert!(s.timeouts > 0, "the slow nodes did time out");
}

#[test]
fn tiny_private_network_bootstrap_node_and_two_peers() {
    let mut net = TestNet::star(3, 5 * MS, |_| {});
    join(&mut net);
    let ih = Id([7; 20]);
    let now = net.now;
    let a = net.node(1).announce(now, ih, None);
    assert!(net.run_until(Duration::from_secs(10), |n| n.events[1]
        .iter()
        .any(|e| matches!(e, Event::AnnounceDone { lookup, acked, .. } if *lookup == a && *acked >= 1))));
    let now = net.now;
    let g = net.node(2).get_peers(now, ih);
    // implied_port: the announcer's UDP port is its peer port.
    assert!(net.run_until(Duration::from_secs(10), |n| n
        .peers_found(2, g)
        .contains(&loopback_addr(1))));
    // The bootstrap node itself finds it from its own store.
    let now = net.now;
    let g0 = net.node(0).get_peers(now, ih);
    assert!(net.run_until(Duration::from_secs(10), |n| n
        .peers_found(0, g0)
        .contains(&loopback_addr(1))));
}

#[test]
fn restart_from_saved_state_without_bootstrap() {
    let mut net = TestNet::star(30, 10 * MS, |_| {});
    join(&mut net);
    let state = net.nodes[12].export_state(net.now);
    assert!(state.nodes.len() >= 8);
    let bytes = state.to_bytes();
    let loaded = dht::SavedState::from_bytes(&bytes).unwrap();
    // Node 12 goes away and comes back on a new address, with no bootstrap node.
    net.down.insert(loopback_addr(12));
    let core = Dht::with_saved_state(Config::loopback(vec![]), net.now, 99, loaded);
    assert_eq!(core.id(), state.id);
    let i = net.add_core(loopback_addr(500), core);
    let now = net.now;
    let b = net.node(i).bootstrap(now);
    assert!(
        net.run_until(Duration::from_secs(20), |n| n.events[i].iter().any(
            |e| matches!(e, Event::Bootstrapped { lookup, nodes } if *lookup == b && *nodes >= 8)
        ))
    );
}

#[test]
fn empty_table_rebootstraps_by_itself() {
    let mut net = TestNet::star(10, 10 * MS, |_| {});
    // Nobody calls bootstrap: the first housekeeping tick does it.
    net.run_for(Duration::from_secs(20));
    assert!(net.nodes[5].node_count() >= 5);
    assert!(net.events[5]
        .iter()
        .any(|e| matches!(e, Event::Bootstrapped { .. })));
}

#[test]
fn dead_nodes_leave_tables_and_lookups_still_converge() {
    let mut net = TestNet::star(40, 10 * MS, |_| {});
    join(&mut net);
    for i in 20..40 {
        net.down.insert(loopback_addr(i));
    }
    let now = net.now;
    let l = net.node(3).find_node(now, Id([0x55; 20]));
    assert!(net.run_until(Duration::from_secs(60), |n| n.lookups_done(3, l) == 1));
    // Housekeeping pings and lookups drop dead nodes over time.
    net.run_for(Duration::from_secs(60 * 60));
    let dead: Vec<SocketAddr> = (20..40).map(loopback_addr).collect();
    // Dead nodes are no longer confirmed members (what a node hands out). Live nodes
    // may still name a dead one in referrals, which a far bucket keeps unconfirmed
    // until a lookup tries it or nobody named it for too long; none is kept past that.
    let good_for = Config::default().node_good_for * dht::routing::HEARSAY_KEPT;
    let entries = net.nodes[3].routing_table_entries();
    let confirmed = entries
        .iter()
        .filter(|e| dead.contains(&e.addr) && e.confirmed && e.fails == 0)
        .count();
    assert!(confirmed <= 2, "{confirmed} dead nodes still confirmed");
    let stale: Vec<_> = entries
        .iter()
        .filter(|e| dead.contains(&e.addr) && net.now - e.last_seen >= good_for)
        .collect();
    assert!(
        stale.is_empty(),
        "dead nodes kept past their time: {stale:?}"
    );
}

#[test]
fn bep42_ids_follow_the_voted_external_address() {
    // Public-looking addresses: ids get checked and regenerated.
    let mut net = TestNet::empty(10 * MS);
    // One /24 each: the external-address vote counts one vote per /24.
    let addr = |i: usize| SocketAddr::from(([44, (i % 200) as u8 + 1, (i / 200) as u8, 1], 6881));
    for i in 0..12 {
        let boot = if i == 0 { vec![] } else { vec![addr(0)] };
        let c = Config {
            bootstrap: boot,
            restrict_ips: false,
            ..Config::default()
        };
        net.add(addr(i), c, 7 + i as u64);
    }
    join(&mut net);
    net.run_for(Duration::from_secs(60));
    let changed = (0..12)
        .filter(|&i| dht::bep42::is_valid_id(&net.nodes[i].id(), addr(i).ip()))
        .count();
    assert!(changed >= 10, "only {changed} nodes have a BEP 42 id");
    let i = (0..12)
        .find(|&i| {
            net.events[i]
                .iter()
                .any(|e| matches!(e, Event::IdChanged { .. }))
        })
        .unwrap();
    assert!(net.events[i]
        .iter()
        .any(|e| matches!(e, Event::ExternalAddress { ip } if *ip == addr(i).ip())));
}

#[test]
fn ipv6_nodes_join_and_find_peers() {
    let mut net = TestNet::empty(10 * MS);
    let addr = |i: usize| -> SocketAddr { format!("[fd00::{:x}]:6881", i + 1).parse().unwrap() };
    for i in 0..20 {
        let boot = if i == 0 { vec![] } else { vec![addr(0)] };
        let c = Config {
            ipv6: true,
            ipv4: false,
            ..Config::loopback(boot)
        };
        net.add(addr(i), c, 300 + i as u64);
    }
    join(&mut net);
    assert!(
        net.nodes[9].stats().nodes6 >= 8,
        "{:?}",
        net.nodes[9].stats()
    );
    assert_eq!(net.nodes[9].stats().nodes4, 0);
    let ih = Id([3; 20]);
    let now = net.now;
    net.node(4).announce(now, ih, Some(7000));
    net.run_for(Duration::from_secs(10));
    let now = net.now;
    let g = net.node(15).get_peers(now, ih);
    let want = SocketAddr::new(addr(4).ip(), 7000);
    assert!(net.run_until(Duration::from_secs(10), |n| n
        .peers_found(15, g)
        .contains(&want)));
}

#[test]
fn many_concurrent_lookups_share_the_outgoing_rate() {
    let mut net = TestNet::star(50, 10 * MS, |c| {
        c.outbound_rate = 20;
        c.outbound_burst = 5;
    });
    join(&mut net);
    let now = net.now;
    let before = net.nodes[7].stats().queries_sent;
    let ids: Vec<_> = (0..20u8)
        .map(|j| net.node(7).find_node(now, Id([j; 20])))
        .collect();
    net.run_for(Duration::from_secs(2));
    let sent = net.nodes[7].stats().queries_sent - before;
    // At most burst + rate * 2 s (plus housekeeping pings, which share the limit).
    assert!(sent <= 5 + 20 * 2 + 1, "sent {sent}");
    assert!(net.run_until(Duration::from_secs(120), |n| ids
        .iter()
        .all(|l| n.lookups_done(7, *l) == 1)));
    assert!(
        net.events[7]
            .iter()
            .filter(|e| matches!(
                e,
                Event::LookupDone {
                    kind: LookupKind::FindNode,
                    ..
                }
            ))
            .count()
            >= 20
    );
}

#[test]
fn same_seeds_give_the_same_trace() {
    let run = || {
        let mut net = TestNet::star(40, 10 * MS, |_| {});
        join(&mut net);
        let now = net.now;
        net.node(3).announce(now, Id([9; 20]), Some(1));
        net.node(20).get_peers(now, Id([9; 20]));
        net.run_for(Duration::from_secs(30));
        let stats: Vec<_> = net.nodes.iter().map(Dht::stats).collect();
        (net.events, stats, net.delivered)
    };
    let (a, b) = (run(), run());
    assert!(a.2 > 1000, "the network did something");
    assert_eq!(a, b);
}
