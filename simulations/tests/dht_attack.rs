//! Lying nodes against the real DHT core.

use simulations::dht_sim::adversary::AttackKind;
use simulations::dht_sim::WorldConfig;
use simulations::scenarios::dht_attack::{run, AttackParams};
use simulations::scenarios::dht_lookup::LookupParams;
use std::time::Duration;

fn params(kind: AttackKind, shares: Vec<f64>) -> AttackParams {
    let mut world = WorldConfig::new(300, 21);
    world.join_over = Duration::from_secs(60);
    let mut base = LookupParams::new(world);
    base.warmup = Duration::from_secs(150);
    base.duration = Duration::from_secs(330);
    base.lookups = 60;
    AttackParams {
        base,
        kind,
        shares,
        targets: 5,
        introductions: 32,
    }
}

#[test]
fn a_fifth_of_nodes_answering_garbage_does_not_break_lookups() {
    let points = run(&params(AttackKind::Garbage, vec![0.2]));
    let r = &points[0].report;
    assert!(r.attackers >= 70, "{} attackers", r.attackers);
    assert!(
        r.attacker_answers > 0,
        "the garbage nodes were never asked anything"
    );
    assert!(r.success_rate() >= 0.95, "success {}", r.success_rate());
}

#[test]
fn sybils_next_to_the_target_are_queried_but_cannot_eclipse_it() {
    let points = run(&params(AttackKind::Sybil, vec![0.0, 0.3]));
    let (clean, attacked) = (&points[0].report, &points[1].report);
    assert!(
        clean.success_rate() >= 0.99,
        "no attack: {}",
        clean.success_rate()
    );
    assert_eq!(clean.attacker_answers, 0);
    // The Sybils sit next to the targets, so honest lookups for them must reach them.
    assert!(
        attacked.attacker_answers >= attacked.measured().count() as u64,
        "{}",
        attacked.attacker_answers
    );
    // BEP 42: the Sybils' ids are not valid for their addresses, so they may take at most
    // half of the closest places; the verified half still finds the announcers.
    assert!(
        attacked.success_rate() >= 0.95,
        "30% Sybils: success {}",
        attacked.success_rate()
    );
}
