//! `dht-attack`: lookups for a few target info-hashes while a growing share of the nodes
//! lie (garbage replies, or Sybils with ids next to the targets); success vs share.

use super::dht_lookup::{run as run_lookups, LookupParams, LookupReport};
use crate::dht_sim::adversary::{Attack, AttackKind};
use crate::rng::stream;
use dht::Id;
use rand::RngCore;

#[derive(Clone, Debug)]
pub struct AttackParams {
    pub base: LookupParams,
    pub kind: AttackKind,
    pub shares: Vec<f64>,
    pub targets: usize,
    pub introductions: usize,
}

pub struct AttackPoint {
    pub share: f64,
    pub report: LookupReport,
}

pub fn run(p: &AttackParams) -> Vec<AttackPoint> {
    let mut rng = stream(p.base.world.seed, "dht-attack-targets");
    let targets: Vec<Id> = (0..p.targets.max(1))
        .map(|_| {
            let mut b = [0u8; 20];
            rng.fill_bytes(&mut b);
            Id(b)
        })
        .collect();
    p.shares
        .iter()
        .map(|&share| {
            let mut lp = p.base.clone();
            lp.targets = Some(targets.clone());
            lp.attack = Some(Attack {
                kind: p.kind,
                share,
                introductions: p.introductions,
                hosts: Default::default(),
                spoof: Default::default(),
            });
            AttackPoint {
                share,
                report: run_lookups(&lp),
            }
        })
        .collect()
}
