//! `dht-spoof`: forged replies against get_peers searches. A share of the nodes are
//! spoofers ([`crate::dht_sim::adversary::SpoofNode`]): ordinary-looking nodes that, asked
//! a get_peers, answer with the honest nodes really closest to the target and then forge
//! replies from those nodes' addresses to the searcher, guessing transaction ids just
//! after the one they saw, with referrals to attacker sinks next to the target. Measured:
//! the share of searches that accepted a forged reply (they queried a sink, which only
//! forged replies name), that ended with a sink among their closest nodes, and that still
//! found the announcer; with the core's random 4-byte ids and with the old sequential
//! 2-byte ids (`dht::Config::sequential_tids`, simulation only).

use super::dht_lookup::{run as run_lookups, LookupParams, LookupReport};
use crate::dht_sim::adversary::{Attack, AttackKind, SpoofShared};
use crate::rng::stream;
use dht::Id;
use rand::RngCore;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct SpoofParams {
    pub base: LookupParams,
    pub shares: Vec<f64>,
    /// Transaction ids guessed after the one seen, per forged source.
    pub window: u32,
    /// Forged replies leave this long after the spoofer's own reply.
    pub delay: Duration,
    /// Sink addresses (and referrals per forged reply).
    pub sinks: usize,
    pub introductions: usize,
    /// Run with sequential ids too (false: random ids only).
    pub compare_sequential: bool,
}

impl SpoofParams {
    pub fn new(base: LookupParams) -> Self {
        SpoofParams {
            base,
            shares: vec![0.01, 0.05],
            window: 32,
            delay: Duration::from_millis(10),
            sinks: 8,
            introductions: 32,
            compare_sequential: true,
        }
    }
}

pub struct SpoofPoint {
    pub sequential: bool,
    pub share: f64,
    pub report: LookupReport,
    pub searches: usize,
    /// Searches that queried a sink: they accepted at least one forged reply.
    pub accepted: usize,
    /// Searches that asked a spoofer (a get_peers it answered and forged replies for).
    pub exposed: usize,
    /// Searches that ended with a sink among their closest nodes.
    pub steered: usize,
    /// Of those, the ones that still found the announcer.
    pub steered_found: usize,
    pub forged_sent: u64,
    /// get_peers queries the spoofers answered (and forged for).
    pub forged_for: u64,
}

impl SpoofPoint {
    pub fn accepted_share(&self) -> f64 {
        self.accepted as f64 / self.searches.max(1) as f64
    }

    pub fn exposed_share(&self) -> f64 {
        self.exposed as f64 / self.searches.max(1) as f64
    }

    pub fn steered_share(&self) -> f64 {
        self.steered as f64 / self.searches.max(1) as f64
    }
}

pub fn run(p: &SpoofParams) -> Vec<SpoofPoint> {
    // One fresh info-hash per search: a sink query names its search exactly.
    let mut rng = stream(p.base.world.seed, "dht-spoof-targets");
    let targets: Vec<Id> = (0..p.base.lookups.max(1))
        .map(|_| {
            let mut b = [0u8; 20];
            rng.fill_bytes(&mut b);
            Id(b)
        })
        .collect();
    let modes: &[bool] = if p.compare_sequential {
        &[false, true]
    } else {
        &[false]
    };
    let mut points = Vec::new();
    for &sequential in modes {
        for &share in &p.shares {
            let mut lp = p.base.clone();
            lp.world.dht.sequential_tids = sequential;
            lp.targets = Some(targets.clone());
            let shared = std::rc::Rc::new(std::cell::RefCell::new(SpoofShared {
                window: p.window,
                delay: p.delay,
                referrals: p.sinks,
                ..SpoofShared::default()
            }));
            lp.attack = Some(Attack {
                kind: AttackKind::Spoof,
                share,
                introductions: p.introductions,
                hosts: Default::default(),
                spoof: shared.clone(),
            });
            let report = run_lookups(&lp);
            let log = shared.borrow();
            let asked: HashSet<(SocketAddr, Id)> = log.sink_queries.iter().copied().collect();
            let met: HashSet<(SocketAddr, Id)> = log.spoofer_queries.iter().copied().collect();
            let sinks: HashSet<SocketAddr> = log.sinks.iter().copied().collect();
            let (mut searches, mut exposed, mut accepted, mut steered, mut steered_found) =
                (0, 0, 0, 0, 0);
            for r in report.measured().filter(|r| r.done.is_some()) {
                searches += 1;
                if let Some(a) = r.searcher_addr {
                    exposed += usize::from(met.contains(&(a, r.info_hash)));
                    accepted += usize::from(asked.contains(&(a, r.info_hash)));
                }
                if r.closest.iter().any(|c| sinks.contains(c)) {
                    steered += 1;
                    steered_found += usize::from(r.found.is_some());
                }
            }
            points.push(SpoofPoint {
                sequential,
                share,
                searches,
                exposed,
                accepted,
                steered,
                steered_found,
                forged_sent: log.forged_sent,
                forged_for: log.forged_for,
                report,
            });
        }
    }
    points
}
