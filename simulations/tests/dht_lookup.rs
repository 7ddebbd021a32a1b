//! Lookups through the real DHT core: announce from one node, get_peers from another.

use simulations::dht_sim::WorldConfig;
use simulations::scenarios::dht_lookup::{run, LookupParams};
use std::time::Duration;

#[test]
fn without_churn_at_least_99_percent_of_searches_find_the_announcer() {
    let mut world = WorldConfig::new(1_000, 3);
    world.join_over = Duration::from_secs(60);
    let mut p = LookupParams::new(world);
    p.warmup = Duration::from_secs(3 * 60);
    p.duration = Duration::from_secs(8 * 60);
    p.lookups = 200;
    let report = run(&p);
    let measured = report.measured().count();
    assert!(measured >= 190, "only {measured} searches ran");
    let rate = report.success_rate();
    assert!(rate >= 0.99, "success {rate}");
    // Time to the announcer: a few round trips, not timeouts.
    let p50 = report.time_to_found().percentile(50.0);
    assert!(
        p50 < 4.0 * report.median_rtt.as_secs_f64(),
        "median {p50} s"
    );
    // Hops to the closest node: more than our own table's one, a handful in 1,000 nodes.
    let mut hops = report.hops();
    assert_eq!(hops.len(), report.queries().len());
    let (h50, hmax) = (hops.percentile(50.0), hops.percentile(100.0));
    assert!((2.0..=5.0).contains(&h50), "median hops {h50}");
    assert!(hmax <= 12.0, "max hops {hmax}");
}
