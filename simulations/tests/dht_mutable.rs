//! BEP 46 mutable-torrent updates through the real DHT core: put v1, put v2, readers get.

use simulations::dht_sim::WorldConfig;
use simulations::scenarios::dht_mutable::{run, MutableParams};
use std::time::Duration;

fn params() -> MutableParams {
    let mut world = WorldConfig::new(500, 5);
    world.join_over = Duration::from_secs(40);
    let mut p = MutableParams::new(world);
    p.warmup = Duration::from_secs(120);
    p.update_after = Duration::from_secs(30);
    p.readers = 90;
    p.delays = vec![0.0, 2.0, 10.0];
    p
}

#[test]
fn an_update_reaches_more_than_90_percent_of_gets_within_two_seconds() {
    let r = run(&params());
    assert_eq!(r.puts.len(), 2);
    for put in &r.puts {
        assert!(put.acked >= 6, "put seq {}: {put:?}", put.seq);
    }
    let rows = r.rows();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert!(row.gets >= 28, "{row:?}");
        // Every get finds some version: v1 was stored 30 s before.
        assert!(row.any >= 0.99, "{row:?}");
        assert!(row.queries_mean > 2.0, "{row:?}");
    }
    // Gets started with the update race its put; from 2 s on they see version 2.
    assert!(rows[1].v2 > 0.9, "{:?}", rows[1]);
    assert!(rows[2].v2 > 0.9, "{:?}", rows[2]);
    assert!(
        rows[0].v2 < 1.0,
        "a get racing the put saw v2 already: {:?}",
        rows[0]
    );
    // The same seed gives the same run.
    let again = run(&params());
    let key = |r: &simulations::scenarios::dht_mutable::MutableReport| {
        (
            r.events,
            r.gets
                .iter()
                .map(|g| (g.best_seq, g.queries, g.done))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(key(&r), key(&again));
}
