//! Server-side behaviour of the real DHT core under the virtual clock: announced peers
//! expire after their TTL, and a flooding source is rate limited without hurting others.

use simulations::dht_sim::{DhtWorld, WorldConfig};
use simulations::sim::{App, Transmit};
use simulations::{HostId, SimTime, Simulator};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[test]
fn announced_peers_expire_after_their_ttl_in_virtual_time() {
    let mut config = WorldConfig::new(200, 11);
    config.join_over = Duration::from_secs(30);
    config.dht.peer_ttl = Duration::from_secs(10 * 60);
    let mut world = DhtWorld::new(config);
    world.run_until(SimTime::from_secs(120));
    let announcer = HostId(10);
    let info_hash = dht::Id([7; 20]);
    world
        .sim
        .with_app(announcer, |app, now| {
            app.honest_mut()
                .unwrap()
                .announce(now, info_hash, Some(4242))
        })
        .unwrap();
    world.run_until(SimTime::from_secs(180));
    let storing = |world: &mut DhtWorld| {
        let now = world.sim.instant();
        let hosts: Vec<HostId> = world.online_honest().collect();
        hosts
            .into_iter()
            .filter(|&h| {
                world
                    .sim
                    .with_app(h, |app, _| {
                        !app.honest_mut()
                            .unwrap()
                            .stored_peers(now, &info_hash)
                            .is_empty()
                    })
                    .unwrap()
            })
            .count()
    };
    let before = storing(&mut world);
    assert!(before >= 4, "announce reached only {before} nodes");
    // Just before the TTL the peer is still there; just after it is gone everywhere.
    world.run_until(SimTime::from_secs(120 + 9 * 60));
    assert_eq!(storing(&mut world), before, "expired early");
    world.run_until(SimTime::from_secs(120 + 11 * 60 + 10));
    assert_eq!(storing(&mut world), 0, "still stored after the TTL");
}

/// Either a real core or a source that sends one ping every `gap`.
enum Host {
    Core(Box<dht::Dht>),
    Pinger {
        to: SocketAddr,
        gap: Duration,
        next: Instant,
        sent: u64,
        answers: u64,
        out: Vec<Transmit>,
    },
}

fn ping(tid: u64) -> Vec<u8> {
    let t = (tid as u16).to_be_bytes();
    let mut v = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:".to_vec();
    v.extend_from_slice(&t);
    v.extend_from_slice(b"1:y1:qe");
    v
}

impl App for Host {
    type Output = ();
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match self {
            Host::Core(d) => d.handle_datagram(now, from, data),
            Host::Pinger { answers, .. } => *answers += 1,
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Host::Core(d) => d.handle_timeout(now),
            Host::Pinger {
                to,
                gap,
                next,
                sent,
                out,
                ..
            } => {
                while *next <= now {
                    out.push(Transmit {
                        to: *to,
                        data: ping(*sent),
                    });
                    *sent += 1;
                    *next += *gap;
                }
            }
        }
    }
    fn poll_transmit(&mut self, _: Instant) -> Option<Transmit> {
        match self {
            Host::Core(d) => d.poll_transmit().map(|t| Transmit {
                to: t.to,
                data: t.data,
            }),
            Host::Pinger { out, .. } => out.pop(),
        }
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        match self {
            Host::Core(d) => d.poll_timeout(),
            Host::Pinger { next, .. } => Some(*next),
        }
    }
    fn poll_output(&mut self) -> Option<()> {
        if let Host::Core(d) = self {
            while d.poll_event().is_some() {}
        }
        None
    }
}

#[test]
fn a_flooding_source_is_rate_limited_and_a_polite_one_is_not() {
    let mut sim: Simulator<Host, ()> = Simulator::new(Default::default(), 3, 5);
    let server = SocketAddr::V4(sim.net.addr(HostId(0)));
    let config = dht::Config::default();
    let (rate, burst) = (config.inbound_rate, config.inbound_burst);
    let now = sim.instant();
    sim.start(
        HostId(0),
        Host::Core(Box::new(dht::Dht::new(config, now, 1))),
    );
    let pinger = |gap: Duration| Host::Pinger {
        to: server,
        gap,
        next: now,
        sent: 0,
        answers: 0,
        out: Vec::new(),
    };
    // 1000 queries per second from one IP, 1 per second from another.
    sim.start(HostId(1), pinger(Duration::from_millis(1)));
    sim.start(HostId(2), pinger(Duration::from_secs(1)));
    let secs = 20;
    sim.run_until(SimTime::from_secs(secs));
    let counts = |h: u32| match sim.app(HostId(h)) {
        Some(Host::Pinger { sent, answers, .. }) => (*sent, *answers),
        _ => unreachable!(),
    };
    let (flood_sent, flood_answered) = counts(1);
    let (polite_sent, polite_answered) = counts(2);
    assert!(flood_sent >= 19_000, "{flood_sent}");
    let allowed = u64::from(burst) + u64::from(rate) * secs;
    assert!(flood_answered > 0, "the flooder got nothing at all");
    assert!(
        flood_answered <= allowed,
        "{flood_answered} answers to a flood, limit {allowed}"
    );
    // The polite source is answered (all but the pings still in flight at the end).
    assert!(
        polite_answered + 1 >= polite_sent,
        "{polite_answered} of {polite_sent}"
    );
}
