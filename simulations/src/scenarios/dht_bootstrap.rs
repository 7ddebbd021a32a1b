//! `dht-bootstrap`: N nodes join through a few bootstrap nodes; how deep and how full their
//! routing tables get over time.

use crate::dht_sim::world::{Cmd, TableSummary};
use crate::dht_sim::{DhtWorld, WorldConfig};
use crate::sim::Step;
use crate::time::SimTime;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct BootstrapParams {
    pub world: WorldConfig,
    pub duration: Duration,
    pub sample_every: Duration,
}

#[derive(Clone, Debug)]
pub struct BootstrapReport {
    /// (virtual seconds, summary) at every sample.
    pub samples: Vec<(f64, TableSummary)>,
    pub datagrams: u64,
    pub events: u64,
}

pub fn run(p: &BootstrapParams) -> BootstrapReport {
    let mut world = DhtWorld::new(p.world.clone());
    let end = SimTime::ZERO + p.duration;
    let mut t = SimTime::ZERO + p.sample_every;
    while t <= end {
        world.sim.schedule(t, Cmd::Probe(0));
        t = t + p.sample_every;
    }
    let mut samples = Vec::new();
    while let Some(step) = world.step(end) {
        if let Step::Scenario(at, Cmd::Probe(_)) = step {
            samples.push((at.as_secs_f64(), world.table_summary()));
        }
    }
    BootstrapReport {
        samples,
        datagrams: world.sim.net.stats.sent,
        events: world.sim.stats.events,
    }
}
