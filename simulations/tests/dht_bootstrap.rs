//! Bootstrap of the real DHT core at a few thousand nodes, in virtual time.

use simulations::dht_sim::{DhtWorld, WorldConfig};
use simulations::SimTime;
use std::time::Duration;

#[test]
fn three_thousand_nodes_reach_routing_table_depth_8() {
    let mut config = WorldConfig::new(3_000, 1);
    config.join_over = Duration::from_secs(45);
    let mut world = DhtWorld::new(config);
    world.run_until(SimTime::from_secs(150));
    let s = world.table_summary();
    assert_eq!(s.nodes, 3_000);
    // log2(3000 / 8) ~ 8.6 splits: a node that found its neighbourhood has >= 9 buckets.
    assert!(s.depth_p50 >= 8.0, "median depth {s:?}");
    assert!(s.depth_p10 >= 8.0, "10th percentile depth {s:?}");
    // Buckets are far from empty: at least a few live entries per bucket on average.
    assert!(s.mean_entries >= 3.0 * s.depth_mean, "thin tables: {s:?}");
}
