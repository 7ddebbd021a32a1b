//! `dht-mutable`: how fast a BEP 46 mutable-torrent update reaches readers. After a
//! warm-up a publisher puts version 1 of a mutable item (`d2:ih20:<info-hash>e`), later
//! version 2; readers (random online nodes) each run one `get_mutable` at a set delay
//! after the update started. Reported per delay: the share of gets that returned
//! version 2, any version, the time to version 2, and the queries per get.

use crate::dht_sim::world::Cmd;
use crate::dht_sim::{DhtWorld, WorldConfig};
use crate::rng::stream;
use crate::sim::Step;
use crate::stats::Samples;
use crate::time::SimTime;
use crate::HostId;
use dht::item::{signing_key, Item, MutableItem};
use dht::{Event, LookupId};
use rand::{Rng, RngCore};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct MutableParams {
    pub world: WorldConfig,
    /// Version 1 is put at the end of the warm-up.
    pub warmup: Duration,
    /// Version 2 is put this long after version 1 (the update; delays count from here).
    pub update_after: Duration,
    /// Reader gets, spread evenly over `delays`.
    pub readers: usize,
    /// Seconds after the update at which gets start (each reader adds up to 100 ms).
    pub delays: Vec<f64>,
    pub salt: Vec<u8>,
}

impl MutableParams {
    pub fn new(world: WorldConfig) -> Self {
        MutableParams {
            world,
            warmup: Duration::from_secs(300),
            update_after: Duration::from_secs(60),
            readers: 1_000,
            delays: vec![
                0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ],
            salt: Vec::new(),
        }
    }

    fn end(&self) -> SimTime {
        let last = self.delays.iter().copied().fold(0.0, f64::max);
        SimTime::ZERO + self.warmup + self.update_after + Duration::from_secs_f64(last + 60.0)
    }
}

/// One reader's get.
#[derive(Clone, Debug)]
pub struct GetRecord {
    /// The delay slot (seconds after the update) this get belongs to.
    pub delay: f64,
    pub reader: Option<HostId>,
    pub start: Option<SimTime>,
    /// Highest version returned, and when version 2 came back.
    pub best_seq: Option<i64>,
    pub v2_at: Option<SimTime>,
    pub done: Option<SimTime>,
    pub queries: u32,
    /// The reader left before its get finished: not counted.
    pub aborted: bool,
}

#[derive(Clone, Debug, Default)]
pub struct PutRecord {
    pub seq: i64,
    pub start: Option<SimTime>,
    /// The get traversal ended (the puts leave then).
    pub traversal_done: Option<SimTime>,
    pub done: Option<SimTime>,
    pub sent: usize,
    pub acked: usize,
    pub queries: u32,
}

#[derive(Clone, Debug)]
pub struct MutableReport {
    pub gets: Vec<GetRecord>,
    pub puts: Vec<PutRecord>,
    /// When version 2's put started.
    pub update_at: SimTime,
    pub median_rtt: Duration,
    pub datagrams: u64,
    pub events: u64,
    pub joins: u64,
    pub leaves: u64,
    pub lookup_costs: crate::dht_sim::world::LookupCosts,
}

/// One row of the report: the gets that started `delay` seconds after the update.
#[derive(Clone, Debug)]
pub struct DelayRow {
    pub delay: f64,
    pub gets: usize,
    pub v2: f64,
    pub any: f64,
    /// Seconds from the update to version 2 arriving, p50 / p90 (gets that got it).
    pub v2_since_update_p50: f64,
    pub v2_since_update_p90: f64,
    /// Seconds from the get's start to version 2, p50.
    pub v2_latency_p50: f64,
    /// Seconds from the get's start to the end of its traversal, p50.
    pub done_p50: f64,
    pub queries_mean: f64,
}

impl MutableReport {
    pub fn measured(&self) -> impl Iterator<Item = &GetRecord> {
        self.gets
            .iter()
            .filter(|g| g.start.is_some() && g.done.is_some() && !g.aborted)
    }

    pub fn rows(&self) -> Vec<DelayRow> {
        let mut delays: Vec<f64> = self.gets.iter().map(|g| g.delay).collect();
        delays.sort_by(f64::total_cmp);
        delays.dedup();
        delays
            .into_iter()
            .map(|d| {
                let gets: Vec<&GetRecord> = self.measured().filter(|g| g.delay == d).collect();
                let n = gets.len();
                let share = |f: &dyn Fn(&GetRecord) -> bool| {
                    if n == 0 {
                        f64::NAN
                    } else {
                        gets.iter().filter(|g| f(g)).count() as f64 / n as f64
                    }
                };
                let mut since: Samples = gets
                    .iter()
                    .filter_map(|g| Some(g.v2_at?.saturating_since(self.update_at).as_secs_f64()))
                    .collect();
                let mut latency: Samples = gets
                    .iter()
                    .filter_map(|g| Some(g.v2_at?.saturating_since(g.start?).as_secs_f64()))
                    .collect();
                let mut done: Samples = gets
                    .iter()
                    .filter_map(|g| Some(g.done?.saturating_since(g.start?).as_secs_f64()))
                    .collect();
                let queries: Samples = gets.iter().map(|g| f64::from(g.queries)).collect();
                DelayRow {
                    delay: d,
                    gets: n,
                    v2: share(&|g| g.best_seq == Some(2)),
                    any: share(&|g| g.best_seq.is_some()),
                    v2_since_update_p50: since.percentile(50.0),
                    v2_since_update_p90: since.percentile(90.0),
                    v2_latency_p50: latency.percentile(50.0),
                    done_p50: done.percentile(50.0),
                    queries_mean: queries.mean(),
                }
            })
            .collect()
    }

    /// The earliest delay from which on every slot's share of version 2 is at least
    /// `share` (None: never).
    pub fn reached_by(&self, share: f64) -> Option<f64> {
        let rows = self.rows();
        let mut first = None;
        for r in rows.iter().rev() {
            if r.v2 >= share {
                first = Some(r.delay);
            } else {
                break;
            }
        }
        first
    }
}

/// The value a BEP 46 publisher stores: `d2:ih20:<info-hash>e`.
pub fn torrent_value(info_hash: &[u8; 20]) -> Vec<u8> {
    let mut v = b"d2:ih20:".to_vec();
    v.extend_from_slice(info_hash);
    v.push(b'e');
    v
}

const PUT1: u32 = 0;
const PUT2: u32 = 1;
const GET_BASE: u32 = 2;

#[derive(Clone, Copy)]
enum Pending {
    Put(usize),
    Get(usize),
}

pub fn run(p: &MutableParams) -> MutableReport {
    let mut world = DhtWorld::new(p.world.clone());
    let mut rng = stream(p.world.seed, "dht-mutable");
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let key = signing_key(&seed);
    let items: Vec<MutableItem> = (1..=2)
        .map(|seq| {
            let mut ih = [0u8; 20];
            rng.fill_bytes(&mut ih);
            MutableItem::sign(&key, &p.salt, seq, &torrent_value(&ih))
        })
        .collect();
    let pubkey = items[0].key;
    let v1_at = SimTime::ZERO + p.warmup;
    let update_at = v1_at + p.update_after;
    world.sim.schedule(v1_at, Cmd::Probe(PUT1));
    world.sim.schedule(update_at, Cmd::Probe(PUT2));
    let mut gets: Vec<GetRecord> = (0..p.readers)
        .map(|i| GetRecord {
            delay: p.delays[i % p.delays.len().max(1)],
            reader: None,
            start: None,
            best_seq: None,
            v2_at: None,
            done: None,
            queries: 0,
            aborted: false,
        })
        .collect();
    for (i, g) in gets.iter().enumerate() {
        let at = update_at + Duration::from_secs_f64(g.delay + rng.gen_range(0.0..0.1));
        world.sim.schedule(at, Cmd::Probe(GET_BASE + i as u32));
    }
    let mut puts: Vec<PutRecord> = Vec::new();
    let mut publisher: Option<HostId> = None;
    let mut pending: HashMap<(HostId, LookupId), Pending> = HashMap::new();
    let end = p.end();
    while let Some(step) = world.step(end) {
        match step {
            Step::Scenario(now, Cmd::Probe(i)) if i == PUT1 || i == PUT2 => {
                // The publisher keeps its key; if it went away, another node takes over.
                let h = match publisher {
                    Some(h) if world.sim.app(h).is_some() => h,
                    _ => match world.random_online(None) {
                        Some(h) => h,
                        None => continue,
                    },
                };
                publisher = Some(h);
                let item = items[i as usize].clone();
                let cas = (i == PUT2).then_some(1);
                let lid = world
                    .sim
                    .with_app(h, |app, t| {
                        app.honest_mut()
                            .map(|d| d.put_item(t, Item::Mutable(item), cas))
                    })
                    .flatten();
                let Some(lid) = lid else { continue };
                pending.insert((h, lid), Pending::Put(puts.len()));
                puts.push(PutRecord {
                    seq: i64::from(i) + 1,
                    start: Some(now),
                    ..PutRecord::default()
                });
            }
            Step::Scenario(now, Cmd::Probe(i)) if i >= GET_BASE => {
                let idx = (i - GET_BASE) as usize;
                let Some(reader) = world.random_online(publisher) else {
                    continue;
                };
                let salt = p.salt.clone();
                let lid = world
                    .sim
                    .with_app(reader, |app, t| {
                        app.honest_mut()
                            .map(|d| d.get_mutable(t, pubkey, &salt, None))
                    })
                    .flatten();
                let Some(lid) = lid else { continue };
                gets[idx].reader = Some(reader);
                gets[idx].start = Some(now);
                pending.insert((reader, lid), Pending::Get(idx));
            }
            Step::Output(now, h, ev) => match ev {
                Event::ItemFound {
                    lookup,
                    item: Item::Mutable(m),
                } => {
                    if let Some(Pending::Get(idx)) = pending.get(&(h, lookup)) {
                        let g = &mut gets[*idx];
                        if m.key == pubkey && g.best_seq.is_none_or(|s| m.seq > s) {
                            g.best_seq = Some(m.seq);
                            if m.seq == 2 && g.v2_at.is_none() {
                                g.v2_at = Some(now);
                            }
                        }
                    }
                }
                Event::LookupDone {
                    lookup, queries, ..
                } => match pending.get(&(h, lookup)) {
                    Some(&Pending::Get(idx)) => {
                        pending.remove(&(h, lookup));
                        gets[idx].done = Some(now);
                        gets[idx].queries = queries;
                    }
                    Some(&Pending::Put(idx)) => {
                        puts[idx].queries = queries;
                        puts[idx].traversal_done = Some(now);
                    }
                    None => {}
                },
                Event::PutDone {
                    lookup,
                    sent,
                    acked,
                    ..
                } => {
                    if let Some(Pending::Put(idx)) = pending.remove(&(h, lookup)) {
                        let r = &mut puts[idx];
                        r.done = Some(now);
                        r.sent = sent;
                        r.acked = acked;
                    }
                }
                _ => {}
            },
            Step::Scenario(..) => {}
        }
    }
    for ((h, _), what) in &pending {
        if let Pending::Get(idx) = what {
            if world.sim.app(*h).is_none() {
                gets[*idx].aborted = true;
            }
        }
    }
    let median_rtt = super::dht_lookup::median_rtt(&world, &mut rng);
    MutableReport {
        gets,
        puts,
        update_at,
        median_rtt,
        datagrams: world.sim.net.stats.sent,
        events: world.sim.stats.events,
        joins: world.joins,
        leaves: world.leaves,
        lookup_costs: world.lookup_costs.clone(),
    }
}
