//! The engine on its own, driven by the protocol-free probe app: determinism, latency,
//! loss, NAT and churn as the hosts see them.

use rand::Rng;
use simulations::apps::probe::Probe;
use simulations::net::NetConfig;
use simulations::rng::stream;
use simulations::stats::Samples;
use simulations::{HostId, SimTime, Simulator, Step};
use std::net::SocketAddr;
use std::time::Duration;

enum Churn {
    Leave(HostId),
    Join(HostId),
}

struct Outcome {
    trace: u64,
    events: u64,
    rtts: Samples,
    delivered: u64,
}

fn run(seed: u64, hosts: usize, config: NetConfig, churn: bool, secs: u64) -> Outcome {
    let mut sim: Simulator<Probe, Churn> = Simulator::new(config, hosts, seed);
    sim.enable_trace();
    let addrs: Vec<SocketAddr> = (0..hosts)
        .map(|h| SocketAddr::V4(sim.net.addr(HostId(h as u32))))
        .collect();
    let mut rng = stream(seed, "probe-test");
    for h in 0..hosts {
        let app = Probe::new(
            sim.instant(),
            addrs.clone(),
            Duration::from_secs(1),
            rng.gen(),
        );
        sim.start(HostId(h as u32), app);
        if churn {
            let at = SimTime::from_secs_f64(rng.gen_range(0.0..secs as f64));
            sim.schedule(at, Churn::Leave(HostId(h as u32)));
        }
    }
    let mut rtts = Samples::new();
    while let Some(step) = sim.step(SimTime::from_secs(secs)) {
        match step {
            Step::Output(_, _, rtt) => rtts.push(rtt.as_secs_f64()),
            Step::Scenario(t, Churn::Leave(h)) => {
                sim.stop(h);
                sim.schedule(t + Duration::from_secs(2), Churn::Join(h));
            }
            Step::Scenario(_, Churn::Join(h)) => {
                let app = Probe::new(
                    sim.instant(),
                    addrs.clone(),
                    Duration::from_secs(1),
                    rng.gen(),
                );
                sim.start(h, app);
            }
        }
    }
    let trace = sim.trace().expect("enabled");
    Outcome {
        trace: trace.value(),
        events: trace.events(),
        rtts,
        delivered: sim.net.stats.delivered,
    }
}

fn lossy() -> NetConfig {
    NetConfig {
        loss: 0.02,
        nat_share: 0.2,
        ..NetConfig::default()
    }
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let a = run(42, 200, lossy(), true, 30);
    let b = run(42, 200, lossy(), true, 30);
    let c = run(43, 200, lossy(), true, 30);
    assert!(
        a.events > 10_000,
        "too small a run to mean anything: {}",
        a.events
    );
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.events, b.events);
    assert_ne!(a.trace, c.trace);
}

#[test]
fn measured_round_trips_follow_the_latency_model() {
    let mut o = run(7, 300, NetConfig::default(), false, 20);
    assert!(o.rtts.len() > 5000, "{} pongs", o.rtts.len());
    let p50 = o.rtts.percentile(50.0) * 1e3;
    assert!((85.0..125.0).contains(&p50), "median RTT {p50} ms");
    // Every ping sent (300 hosts x ~20 s at 1/s) arrives and is answered without loss.
    assert_eq!(
        o.delivered as usize,
        2 * o.rtts.len() + outstanding_pings(&o)
    );
}

fn outstanding_pings(o: &Outcome) -> usize {
    // Pings in flight at the end got delivered but their pongs did not return yet; they are
    // bounded by hosts x RTT / interval, far below 10% of the run.
    let d = o.delivered as usize - 2 * o.rtts.len();
    assert!(d < o.rtts.len() / 10, "{d} pings without pongs");
    d
}

#[test]
fn loss_and_nat_reduce_answered_pings() {
    let clean = run(9, 200, NetConfig::default(), false, 20);
    let nat = run(
        9,
        200,
        NetConfig {
            nat_share: 0.5,
            ..NetConfig::default()
        },
        false,
        20,
    );
    // Unsolicited pings to NATed hosts are dropped: about half of them (2% loss also checked
    // in the network unit tests).
    let ratio = nat.rtts.len() as f64 / clean.rtts.len() as f64;
    assert!(
        (0.4..0.6).contains(&ratio),
        "answered share with 50% NAT: {ratio}"
    );
}

#[test]
fn stopped_hosts_neither_answer_nor_wake() {
    let mut sim: Simulator<Probe, ()> = Simulator::new(NetConfig::default(), 2, 1);
    let peer = SocketAddr::V4(sim.net.addr(HostId(1)));
    let now = sim.instant();
    sim.start(
        HostId(0),
        Probe::new(now, vec![peer], Duration::from_millis(100), 1),
    );
    sim.start(
        HostId(1),
        Probe::new(now, vec![], Duration::from_millis(100), 2),
    );
    sim.run_until(SimTime::from_secs(1));
    let answered = sim.app(HostId(1)).unwrap().pings_received;
    assert!(answered > 3, "{answered}");
    sim.stop(HostId(1));
    let before = sim.net.stats.offline;
    sim.run_until(SimTime::from_secs(2));
    assert!(
        sim.net.stats.offline > before,
        "pings to an offline host must be dropped"
    );
    assert!(sim.app(HostId(1)).is_none());
}

/// A broken core that always wants to be woken at the time it was last woken.
struct StuckTimer(std::time::Instant);

impl simulations::App for StuckTimer {
    type Output = ();
    fn handle_datagram(&mut self, _: std::time::Instant, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, _: std::time::Instant) {}
    fn poll_transmit(&mut self, _: std::time::Instant) -> Option<simulations::Transmit> {
        None
    }
    fn poll_timeout(&mut self) -> Option<std::time::Instant> {
        Some(self.0)
    }
    fn poll_output(&mut self) -> Option<()> {
        None
    }
}

#[test]
#[should_panic(expected = "without its deadline moving")]
fn a_core_whose_timer_never_advances_is_reported_not_spun_on() {
    let mut sim: Simulator<StuckTimer, ()> = Simulator::new(NetConfig::default(), 1, 1);
    let now = sim.instant();
    sim.start(HostId(0), StuckTimer(now));
    sim.run_until(SimTime::from_secs(1));
}
