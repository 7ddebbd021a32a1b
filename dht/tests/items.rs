//! BEP 44 through whole networks of cores in virtual time: immutable and mutable items
//! put by one node and got by another, newer versions winning, forged and stale versions
//! refused, and the server's rules one query at a time.

mod common;

use std::time::Duration;

use common::TestNet;
use dht::item::{signing_key, Item, MutableItem};
use dht::{Event, Id, LookupId};

const MS: Duration = Duration::from_millis(1);

fn joined(n: usize) -> TestNet {
    let mut net = TestNet::star(n, 20 * MS, |_| {});
    net.bootstrap_all();
    net.run_for(Duration::from_secs(20));
    net
}

fn put_done(net: &TestNet, i: usize, lookup: LookupId) -> Option<(usize, usize)> {
    net.events[i].iter().find_map(|e| match e {
        Event::PutDone {
            lookup: l,
            sent,
            acked,
            ..
        } if *l == lookup => Some((*sent, *acked)),
        _ => None,
    })
}

fn found(net: &TestNet, i: usize, lookup: LookupId) -> Vec<Item> {
    net.events[i]
        .iter()
        .filter_map(|e| match e {
            Event::ItemFound { lookup: l, item } if *l == lookup => Some(item.clone()),
            _ => None,
        })
        .collect()
}

fn put(net: &mut TestNet, i: usize, item: Item) -> (usize, usize) {
    let now = net.now;
    let l = net.node(i).put_item(now, item, None);
    assert!(net.run_until(Duration::from_secs(30), |n| put_done(n, i, l).is_some()));
    put_done(net, i, l).unwrap()
}

fn done(net: &TestNet, i: usize, l: LookupId) -> bool {
    net.lookups_done(i, l) == 1
}

#[test]
fn an_immutable_item_put_by_one_node_is_found_by_another() {
    let mut net = joined(100);
    let value = b"12:Hello World!".to_vec();
    let (sent, acked) = put(&mut net, 3, Item::Immutable(value.clone()));
    assert!(sent >= 6 && acked >= 6, "stored on {acked} of {sent}");
    let target = dht::item::immutable_target(&value);
    let now = net.now;
    let l = net.node(77).get_immutable(now, target);
    assert!(net.run_until(Duration::from_secs(30), |n| done(n, 77, l)));
    assert_eq!(
        found(&net, 77, l),
        vec![Item::Immutable(value)],
        "reported once"
    );
    // Nothing is stored under another target.
    let now = net.now;
    let l = net.node(77).get_immutable(now, Id([0x99; 20]));
    assert!(net.run_until(Duration::from_secs(30), |n| done(n, 77, l)));
    assert!(found(&net, 77, l).is_empty());
}

#[test]
fn mutable_items_update_and_the_newest_version_wins() {
    let mut net = joined(100);
    let key = signing_key(&[0x42; 32]);
    let v1 = MutableItem::sign(&key, b"salt", 1, b"2:v1");
    let v2 = MutableItem::sign(&key, b"salt", 2, b"2:v2");
    let (_, acked) = put(&mut net, 5, Item::Mutable(v1.clone()));
    assert!(acked >= 6);
    let (_, acked) = put(&mut net, 6, Item::Mutable(v2.clone()));
    assert!(acked >= 6, "the update was refused: {acked}");
    // An old version put again is refused (302) by every node holding v2.
    let (_, acked) = put(&mut net, 7, Item::Mutable(v1.clone()));
    assert!(acked <= 2, "a stale version was stored on {acked} nodes");

    let now = net.now;
    let pk = key.verifying_key().to_bytes();
    let l = net.node(90).get_mutable(now, pk, b"salt", None);
    assert!(net.run_until(Duration::from_secs(30), |n| done(n, 90, l)));
    let got = found(&net, 90, l);
    assert_eq!(got.last(), Some(&Item::Mutable(v2.clone())), "{got:?}");
    // Another salt is another item.
    let now = net.now;
    let l = net.node(90).get_mutable(now, pk, b"other", None);
    assert!(net.run_until(Duration::from_secs(30), |n| done(n, 90, l)));
    assert!(found(&net, 90, l).is_empty());
    // Asking only for newer than v2: nothing.
    let now = net.now;
    let l = net.node(91).get_mutable(now, pk, b"salt", Some(2));
    assert!(net.run_until(Duration::from_secs(30), |n| done(n, 91, l)));
    assert!(found(&net, 91, l).is_empty());
}

#[test]
fn a_forged_version_is_stored_nowhere_and_never_reported() {
    let mut net = joined(60);
    let key = signing_key(&[0x43; 32]);
    let mut forged = MutableItem::sign(&key, b"", 9, b"4:good");
    forged.value = b"4:evil".to_vec();
    let (sent, acked) = put(&mut net, 2, Item::Mutable(forged));
    assert!(sent > 0);
    assert_eq!(acked, 0, "a node stored an item with a bad signature");
    let now = net.now;
    let l = net
        .node(40)
        .get_mutable(now, key.verifying_key().to_bytes(), b"", None);
    assert!(net.run_until(Duration::from_secs(30), |n| done(n, 40, l)));
    assert!(found(&net, 40, l).is_empty());
}
