//! A simulated DHT: a few always-on bootstrap nodes and N ordinary nodes joining through
//! them, with optional churn. Scenarios build on this and add their own measurements.
//!
//! Churn models restarts the way real clients do them: a leaving node's state (id and good
//! nodes) is exported, the core is dropped, and on return a fresh core resumes from that
//! state with `Dht::with_saved_state`, as the tokio node does from its state file.

use super::host::DhtHost;
use crate::net::churn::ChurnConfig;
use crate::net::NetConfig;
use crate::rng::{stream, SimRng};
use crate::sim::{Simulator, Step};
use crate::time::SimTime;
use crate::HostId;
use rand::Rng;
use std::net::SocketAddr;
use std::time::Duration;

/// Nodes kept in a saved state across a simulated restart (bounded to keep 100,000-node
/// runs small; clients save a few hundred).
const SAVED_NODES: usize = 64;

#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub nodes: usize,
    pub bootstrap_nodes: usize,
    pub seed: u64,
    pub net: NetConfig,
    /// Ordinary nodes join at uniformly random times in `[0, join_over)`.
    pub join_over: Duration,
    pub churn: Option<ChurnConfig>,
    /// Applied to every honest node's core (scenarios tweak limits here).
    pub dht: dht::Config,
}

impl WorldConfig {
    pub fn new(nodes: usize, seed: u64) -> Self {
        WorldConfig {
            nodes,
            bootstrap_nodes: 4,
            seed,
            net: NetConfig::default(),
            join_over: Duration::from_secs(120),
            churn: None,
            dht: dht::Config::default(),
        }
    }
}

/// Scheduled events of DHT scenarios. `Probe(n)` is free for the scenario's own use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Join(HostId),
    Leave(HostId),
    Probe(u32),
}

pub struct DhtWorld {
    pub sim: Simulator<DhtHost, Cmd>,
    pub config: WorldConfig,
    pub rng: SimRng,
    saved: Vec<Option<dht::SavedState>>,
    /// Hosts that are honest DHT nodes (as opposed to attackers added later).
    honest: Vec<bool>,
    pub joins: u64,
    pub leaves: u64,
    /// Finished lookups and the queries they sent, by kind (where the traffic goes).
    pub lookup_costs: LookupCosts,
}

/// Finished lookups and their queries, by [`dht::LookupKind`].
#[derive(Clone, Debug, Default)]
pub struct LookupCosts {
    /// (kind, lookups, queries) in first-seen order.
    pub kinds: Vec<(&'static str, u64, u64)>,
}

impl LookupCosts {
    fn add(&mut self, kind: dht::LookupKind, queries: u32) {
        let name = match kind {
            dht::LookupKind::FindNode => "find_node",
            dht::LookupKind::GetPeers => "get_peers",
            dht::LookupKind::Announce { .. } => "announce",
            dht::LookupKind::Bootstrap => "bootstrap",
            dht::LookupKind::Refresh => "refresh",
            dht::LookupKind::GetItem => "get",
            dht::LookupKind::PutItem => "put",
        };
        match self.kinds.iter_mut().find(|k| k.0 == name) {
            Some(k) => {
                k.1 += 1;
                k.2 += u64::from(queries);
            }
            None => self.kinds.push((name, 1, u64::from(queries))),
        }
    }

    /// One line: `kind lookups/queries` for each kind.
    pub fn summary(&self) -> String {
        self.kinds
            .iter()
            .map(|(name, n, q)| format!("{name} {n}/{q}"))
            .collect::<Vec<_>>()
            .join("  ")
    }
}

impl DhtWorld {
    /// Builds the world and schedules every join (and first departure, with churn). Host
    /// `0..bootstrap_nodes` are the bootstrap nodes and start at once.
    pub fn new(config: WorldConfig) -> Self {
        let total = config.nodes + config.bootstrap_nodes;
        let mut sim = Simulator::new(config.net.clone(), total, config.seed);
        let mut rng = stream(config.seed, "dht-world");
        let bootstrap: Vec<SocketAddr> = (0..config.bootstrap_nodes)
            .map(|h| SocketAddr::V4(sim.net.addr(HostId(h as u32))))
            .collect();
        let mut dht_config = config.dht.clone();
        dht_config.bootstrap = bootstrap;
        let config = WorldConfig {
            dht: dht_config,
            ..config
        };
        for h in 0..config.bootstrap_nodes {
            // Bootstrap nodes are well-connected servers: never NATed, never leave.
            sim.net.set_natted(HostId(h as u32), false);
        }
        for h in config.bootstrap_nodes..total {
            let at = SimTime::from_secs_f64(
                rng.gen_range(0.0..config.join_over.as_secs_f64().max(1e-9)),
            );
            sim.schedule(at, Cmd::Join(HostId(h as u32)));
        }
        let mut world = DhtWorld {
            sim,
            saved: vec![None; total],
            honest: vec![true; total],
            config,
            rng,
            joins: 0,
            leaves: 0,
            lookup_costs: LookupCosts::default(),
        };
        for h in 0..world.config.bootstrap_nodes {
            world.spawn(HostId(h as u32));
        }
        world
    }

    pub fn is_bootstrap(&self, h: HostId) -> bool {
        h.index() < self.config.bootstrap_nodes
    }

    pub fn bootstrap_addrs(&self) -> &[SocketAddr] {
        &self.config.dht.bootstrap
    }

    pub fn is_honest(&self, h: HostId) -> bool {
        self.honest.get(h.index()).copied().unwrap_or(false)
    }

    pub fn mark_dishonest(&mut self, h: HostId) {
        if self.honest.len() <= h.index() {
            self.honest.resize(h.index() + 1, true);
        }
        self.honest[h.index()] = false;
    }

    pub fn addr(&self, h: HostId) -> SocketAddr {
        SocketAddr::V4(self.sim.net.addr(h))
    }

    /// Honest nodes that are online and running.
    pub fn online_honest(&self) -> impl Iterator<Item = HostId> + '_ {
        (0..self.sim.hosts() as u32)
            .map(HostId)
            .filter(|&h| self.is_honest(h) && self.sim.app(h).is_some())
    }

    pub fn core(&self, h: HostId) -> Option<&dht::Dht> {
        self.sim.app(h)?.honest()
    }

    /// A random online honest ordinary node, if any (by rejection sampling: cheap while a
    /// fair share is online).
    pub fn random_online(&mut self, except: Option<HostId>) -> Option<HostId> {
        let b = self.config.bootstrap_nodes as u32;
        let n = self.sim.hosts() as u32;
        for _ in 0..10_000 {
            let h = HostId(self.rng.gen_range(b..n));
            if Some(h) != except && self.is_honest(h) && self.sim.app(h).is_some() {
                return Some(h);
            }
        }
        None
    }

    /// Starts an honest core on `h` (resuming from its saved state if it had one) and
    /// asks it to bootstrap.
    pub fn spawn(&mut self, h: HostId) {
        let now = self.sim.instant();
        let seed: u64 = self.rng.gen();
        let mut config = self.config.dht.clone();
        if self.is_bootstrap(h) {
            let me = self.addr(h);
            config.bootstrap.retain(|a| *a != me);
        }
        let core = match self.saved[h.index()].take() {
            Some(state) => dht::Dht::with_saved_state(config, now, seed, state),
            None => {
                // A node that has run before knows its address and already has a BEP 42
                // id for it; a fresh random id would be replaced (and the join redone)
                // as soon as the first replies vote on the address.
                if config.bep42 && config.id.is_none() {
                    let ip = self.addr(h).ip();
                    config.id = Some(dht::bep42::random_secure_id(ip, &mut self.rng));
                }
                dht::Dht::new(config, now, seed)
            }
        };
        self.sim.start(h, DhtHost::Honest(Box::new(core)));
        self.sim.with_app(h, |app, now| {
            if let Some(d) = app.honest_mut() {
                d.bootstrap(now);
            }
        });
        self.joins += 1;
        if let Some(churn) = self.config.churn {
            if !self.is_bootstrap(h) {
                let stay = churn.session(&mut self.rng);
                let at = self.sim.now() + stay;
                self.sim.schedule(at, Cmd::Leave(h));
            }
        }
    }

    /// Takes `h` offline, keeping its state for the next session.
    pub fn leave(&mut self, h: HostId) {
        let now = self.sim.instant();
        if let Some(DhtHost::Honest(core)) = self.sim.stop(h) {
            let mut state = core.export_state(now);
            state.nodes.truncate(SAVED_NODES);
            self.saved[h.index()] = Some(state);
        }
        self.leaves += 1;
        if let Some(churn) = self.config.churn {
            let away = churn.offline(&mut self.rng);
            let at = self.sim.now() + away;
            self.sim.schedule(at, Cmd::Join(h));
        }
    }

    /// Handles the world's own events; returns the ones the scenario must handle itself.
    pub fn step(&mut self, until: SimTime) -> Option<Step<Cmd, dht::Event>> {
        loop {
            match self.sim.step(until)? {
                Step::Scenario(_, Cmd::Join(h)) => {
                    if self.sim.app(h).is_none() {
                        self.spawn(h);
                    }
                }
                Step::Scenario(_, Cmd::Leave(h)) => {
                    if self.sim.app(h).is_some() {
                        self.leave(h);
                    }
                }
                Step::Output(at, h, ev) => {
                    if let dht::Event::LookupDone { kind, queries, .. } = &ev {
                        self.lookup_costs.add(*kind, *queries);
                    }
                    return Some(Step::Output(at, h, ev));
                }
                other => return Some(other),
            }
        }
    }

    /// Runs until `until`, dropping outputs (warm-up).
    pub fn run_until(&mut self, until: SimTime) {
        while self.step(until).is_some() {}
    }

    /// Routing-table shape over online honest ordinary nodes.
    pub fn table_summary(&self) -> TableSummary {
        let mut s = TableSummary::default();
        let mut depths = crate::stats::Samples::new();
        let k = self.config.dht.k.max(1);
        for h in self.online_honest().filter(|&h| !self.is_bootstrap(h)) {
            let Some(core) = self.core(h) else { continue };
            let st = core.stats();
            depths.push(st.buckets4 as f64);
            s.nodes += 1;
            s.mean_entries += st.nodes4 as f64;
            s.mean_fill += st.nodes4 as f64 / (st.buckets4.max(1) * k) as f64;
        }
        if s.nodes > 0 {
            s.mean_entries /= s.nodes as f64;
            s.mean_fill /= s.nodes as f64;
            s.depth_p10 = depths.percentile(10.0);
            s.depth_p50 = depths.percentile(50.0);
            s.depth_min = depths.percentile(0.0);
            s.depth_mean = depths.mean();
        }
        s
    }
}

/// Depth = number of buckets in a node's IPv4 routing table (each split adds one).
#[derive(Clone, Debug, Default)]
pub struct TableSummary {
    pub nodes: usize,
    pub depth_min: f64,
    pub depth_p10: f64,
    pub depth_p50: f64,
    pub depth_mean: f64,
    pub mean_entries: f64,
    /// Entries / (buckets x k): how full the buckets are on average.
    pub mean_fill: f64,
}
