//! Forged replies with guessed transaction ids against the real DHT core.

use simulations::dht_sim::WorldConfig;
use simulations::scenarios::dht_lookup::LookupParams;
use simulations::scenarios::dht_spoof::{run, SpoofParams};
use std::time::Duration;

#[test]
fn random_ids_accept_no_forged_reply_while_sequential_ids_accept_some() {
    let mut world = WorldConfig::new(500, 9);
    world.join_over = Duration::from_secs(40);
    let mut base = LookupParams::new(world);
    base.warmup = Duration::from_secs(120);
    base.duration = Duration::from_secs(260);
    base.lookups = 80;
    let mut p = SpoofParams::new(base);
    p.shares = vec![0.05];
    let points = run(&p);
    assert_eq!(points.len(), 2);
    let (random, sequential) = (&points[0], &points[1]);
    assert!(!random.sequential && sequential.sequential);
    for pt in &points {
        assert!(pt.searches >= 75, "only {} searches", pt.searches);
        // The spoofers are ordinary nodes: searches ask them and they forge.
        assert!(pt.exposed >= 5, "{} searches asked a spoofer", pt.exposed);
        assert!(pt.forged_sent > 0);
    }
    assert_eq!(random.accepted, 0, "a forged reply beat a random 4-byte id");
    assert_eq!(random.steered, 0);
    assert!(
        sequential.accepted * 4 >= sequential.exposed,
        "sequential ids: {} of {} exposed searches accepted a forgery",
        sequential.accepted,
        sequential.exposed
    );
}
