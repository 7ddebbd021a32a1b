//! `dht-lookup`: after a warm-up, announce random info-hashes from random nodes and look
//! each one up from another random node; did the search find the announcer, how fast,
//! and at what cost.

use crate::dht_sim::world::Cmd;
use crate::dht_sim::{DhtWorld, WorldConfig};
use crate::rng::stream;
use crate::sim::Step;
use crate::stats::Samples;
use crate::time::SimTime;
use crate::HostId;
use dht::{Event, Id, LookupId};
use rand::{Rng, RngCore};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct LookupParams {
    pub world: WorldConfig,
    /// No measured lookups before this (joins happen during `world.join_over`).
    pub warmup: Duration,
    pub duration: Duration,
    pub lookups: usize,
    /// Delay between an announce finishing and the search for it starting.
    pub search_delay: Duration,
    /// Lookups cycle through these info-hashes instead of random ones (attack scenarios
    /// aim at a few targets).
    pub targets: Option<Vec<Id>>,
    pub attack: Option<crate::dht_sim::adversary::Attack>,
    /// Print a progress line to stderr every virtual minute (long runs).
    pub progress: bool,
}

/// One announce + get_peers pair.
#[derive(Clone, Debug)]
pub struct LookupRecord {
    pub info_hash: Id,
    pub announcer: HostId,
    pub announcer_addr: SocketAddr,
    pub searcher: Option<HostId>,
    pub searcher_addr: Option<SocketAddr>,
    pub announce_acked: usize,
    pub search_start: Option<SimTime>,
    pub first_peer: Option<SimTime>,
    /// When the announcer's address came back.
    pub found: Option<SimTime>,
    pub done: Option<SimTime>,
    pub queries: u32,
    /// Referral rounds to the closest node that answered (from `LookupDone`).
    pub hops: u32,
    /// The closest nodes the search ended with (`LookupDone`), in an attack run only.
    pub closest: Vec<SocketAddr>,
    /// The searcher left before its lookup finished: excluded from the success rate.
    pub aborted: bool,
}

#[derive(Clone, Debug)]
pub struct LookupReport {
    pub records: Vec<LookupRecord>,
    pub median_rtt: Duration,
    pub datagrams: u64,
    pub lost: u64,
    pub nat_dropped: u64,
    pub events: u64,
    /// Of the events, timer wake-ups that ran a core, and stale ones (superseded).
    pub wakeups: u64,
    pub stale_wakeups: u64,
    pub joins: u64,
    /// Lookups/queries by kind, all nodes (bootstrap and refresh traffic included).
    pub lookup_costs: crate::dht_sim::world::LookupCosts,
    pub leaves: u64,
    pub online_at_end: usize,
    pub attackers: usize,
    /// Queries the attackers answered.
    pub attacker_answers: u64,
}

impl LookupReport {
    /// Searches that ran to completion (or found the announcer) with their searcher online.
    pub fn measured(&self) -> impl Iterator<Item = &LookupRecord> {
        self.records
            .iter()
            .filter(|r| r.search_start.is_some() && (!r.aborted || r.found.is_some()))
    }

    pub fn success_rate(&self) -> f64 {
        let (mut ok, mut n) = (0usize, 0usize);
        for r in self.measured() {
            n += 1;
            ok += usize::from(r.found.is_some());
        }
        if n == 0 {
            f64::NAN
        } else {
            ok as f64 / n as f64
        }
    }

    /// Seconds from search start to the announcer's address, for successful searches.
    pub fn time_to_found(&self) -> Samples {
        self.measured()
            .filter_map(|r| Some(r.found?.saturating_since(r.search_start?).as_secs_f64()))
            .collect()
    }

    pub fn time_to_first_peer(&self) -> Samples {
        self.measured()
            .filter_map(|r| {
                Some(
                    r.first_peer?
                        .saturating_since(r.search_start?)
                        .as_secs_f64(),
                )
            })
            .collect()
    }

    pub fn time_to_done(&self) -> Samples {
        self.measured()
            .filter_map(|r| Some(r.done?.saturating_since(r.search_start?).as_secs_f64()))
            .collect()
    }

    pub fn queries(&self) -> Samples {
        self.measured()
            .filter(|r| r.done.is_some())
            .map(|r| f64::from(r.queries))
            .collect()
    }

    /// Hops per finished search (referral rounds to the closest node that answered).
    pub fn hops(&self) -> Samples {
        self.measured()
            .filter(|r| r.done.is_some())
            .map(|r| f64::from(r.hops))
            .collect()
    }
}

/// Probe ids from here on belong to the attack's own schedule.
pub const ATTACK_PROBE: u32 = 1 << 30;

#[derive(Clone, Copy)]
enum Pending {
    Announce(usize),
    Search(usize),
}

pub fn run(p: &LookupParams) -> LookupReport {
    let mut world = DhtWorld::new(p.world.clone());
    let mut rng = stream(p.world.seed, "dht-lookup");
    let attackers = match (&p.attack, &p.targets) {
        (Some(a), Some(t)) => a.deploy(&mut world, t, p.warmup),
        _ => 0,
    };
    let end = SimTime::ZERO + p.duration;
    let start = SimTime::ZERO + p.warmup;
    // Leave time at the end for the last searches to finish.
    let last = end.as_secs_f64() - 60.0;
    let span = (last - start.as_secs_f64()).max(1.0);
    for i in 0..p.lookups {
        let at = start.as_secs_f64() + span * (i as f64 + rng.gen::<f64>()) / p.lookups as f64;
        world
            .sim
            .schedule(SimTime::from_secs_f64(at), Cmd::Probe(i as u32));
    }
    let mut records: Vec<LookupRecord> = Vec::with_capacity(p.lookups);
    let mut pending: HashMap<(HostId, LookupId), Pending> = HashMap::new();
    // Searches waiting for their start time: Probe ids >= p.lookups map to records.
    let search_base = p.lookups as u32;

    let wall = std::time::Instant::now();
    let mut next_progress = SimTime::from_secs(60);
    while let Some(step) = world.step(end) {
        if p.progress && world.sim.now() >= next_progress {
            next_progress = next_progress + Duration::from_secs(60);
            eprintln!(
                "virtual {:>5.0}s  wall {:>6.1}s  events {:>11}  online {:>7}  searches {:>5}",
                world.sim.now().as_secs_f64(),
                wall.elapsed().as_secs_f64(),
                world.sim.stats.events,
                world.sim.net.len() as u64 - world.leaves
                    + world.joins.saturating_sub(world.sim.net.len() as u64),
                records.iter().filter(|r| r.search_start.is_some()).count()
            );
        }
        match step {
            Step::Scenario(_, Cmd::Probe(i)) if i >= ATTACK_PROBE => {
                if let Some(a) = &p.attack {
                    a.on_probe(&mut world, i - ATTACK_PROBE);
                }
            }
            Step::Scenario(_, Cmd::Probe(i)) if i < search_base => {
                let Some(announcer) = world.random_online(None) else {
                    continue;
                };
                let info_hash = match &p.targets {
                    Some(t) if !t.is_empty() => t[i as usize % t.len()],
                    _ => {
                        let mut ih = [0u8; 20];
                        rng.fill_bytes(&mut ih);
                        Id(ih)
                    }
                };
                let lid = world
                    .sim
                    .with_app(announcer, |app, now| {
                        app.honest_mut().map(|d| d.announce(now, info_hash, None))
                    })
                    .flatten();
                let Some(lid) = lid else { continue };
                pending.insert((announcer, lid), Pending::Announce(records.len()));
                records.push(LookupRecord {
                    info_hash,
                    announcer,
                    announcer_addr: world.addr(announcer),
                    searcher: None,
                    searcher_addr: None,
                    announce_acked: 0,
                    search_start: None,
                    first_peer: None,
                    found: None,
                    done: None,
                    queries: 0,
                    hops: 0,
                    closest: Vec::new(),
                    aborted: false,
                });
            }
            Step::Scenario(now, Cmd::Probe(i)) => {
                let idx = (i - search_base) as usize;
                let r = &records[idx];
                let Some(searcher) = world.random_online(Some(r.announcer)) else {
                    continue;
                };
                let info_hash = r.info_hash;
                let lid = world
                    .sim
                    .with_app(searcher, |app, t| {
                        app.honest_mut().map(|d| d.get_peers(t, info_hash))
                    })
                    .flatten();
                let Some(lid) = lid else { continue };
                let r = &mut records[idx];
                r.searcher = Some(searcher);
                r.searcher_addr = Some(world.addr(searcher));
                r.search_start = Some(now);
                pending.insert((searcher, lid), Pending::Search(idx));
            }
            Step::Output(now, h, ev) => match ev {
                Event::AnnounceDone { lookup, acked, .. } => {
                    if let Some(Pending::Announce(idx)) = pending.remove(&(h, lookup)) {
                        records[idx].announce_acked = acked;
                        let at = now + p.search_delay;
                        world.sim.schedule(at, Cmd::Probe(search_base + idx as u32));
                    }
                }
                Event::PeersFound { lookup, peers, .. } => {
                    if let Some(Pending::Search(idx)) = pending.get(&(h, lookup)) {
                        let r = &mut records[*idx];
                        if !peers.is_empty() && r.first_peer.is_none() {
                            r.first_peer = Some(now);
                        }
                        if r.found.is_none() && peers.contains(&r.announcer_addr) {
                            r.found = Some(now);
                        }
                    }
                }
                Event::LookupDone {
                    lookup,
                    queries,
                    hops,
                    closest,
                    ..
                } => {
                    // An announce also ends its traversal with LookupDone: leave it pending.
                    if let Some(&Pending::Search(idx)) = pending.get(&(h, lookup)) {
                        pending.remove(&(h, lookup));
                        let r = &mut records[idx];
                        r.done = Some(now);
                        r.queries = queries;
                        r.hops = hops;
                        if p.attack.is_some() {
                            r.closest = closest.iter().map(|n| n.addr).collect();
                        }
                    }
                }
                _ => {}
            },
            Step::Scenario(..) => {}
        }
    }
    // Searches still pending whose searcher is gone were cut short by churn.
    for ((h, _), what) in &pending {
        if let Pending::Search(idx) = what {
            if world.sim.app(*h).is_none() {
                records[*idx].aborted = true;
            }
        }
    }
    let median_rtt = median_rtt(&world, &mut rng);
    LookupReport {
        records,
        median_rtt,
        datagrams: world.sim.net.stats.sent,
        lost: world.sim.net.stats.lost,
        nat_dropped: world.sim.net.stats.nat,
        events: world.sim.stats.events,
        wakeups: world.sim.stats.wakeups,
        stale_wakeups: world.sim.stats.stale_wakeups,
        joins: world.joins,
        lookup_costs: world.lookup_costs.clone(),
        leaves: world.leaves,
        online_at_end: world.online_honest().count(),
        attackers,
        attacker_answers: p.attack.as_ref().map_or(0, |a| a.queries_answered(&world)),
    }
}

/// The median RTT between random pairs of hosts: the yardstick for lookup latency.
pub fn median_rtt(world: &DhtWorld, rng: &mut impl Rng) -> Duration {
    let n = world.sim.hosts() as u32;
    let mut s: Samples = (0..10_000)
        .map(|_| {
            let (a, b) = (HostId(rng.gen_range(0..n)), HostId(rng.gen_range(0..n)));
            world.sim.net.rtt(a, b).as_secs_f64()
        })
        .collect();
    Duration::from_secs_f64(s.percentile(50.0))
}

impl LookupParams {
    pub fn new(world: WorldConfig) -> Self {
        LookupParams {
            world,
            warmup: Duration::from_secs(5 * 60),
            duration: Duration::from_secs(15 * 60),
            lookups: 500,
            search_delay: Duration::from_secs(5),
            targets: None,
            attack: None,
            progress: false,
        }
    }
}
