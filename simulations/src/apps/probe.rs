//! A protocol-free app: every host pings a random known peer at random intervals and
//! answers pings with pongs, measuring round-trip times. It exercises every path of the
//! engine (datagrams, timers, loss, NAT, churn) without depending on any protocol core,
//! which makes it the reference workload for determinism tests and throughput numbers.

use crate::rng::{exponential, SimRng};
use crate::sim::{App, Transmit};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PING: u8 = b'p';
const PONG: u8 = b'P';

pub struct Probe {
    peers: Vec<SocketAddr>,
    rng: SimRng,
    mean_interval: Duration,
    next_ping: Option<Instant>,
    outbox: Vec<Transmit>,
    /// Round-trip times measured, reported through `poll_output`.
    rtts: Vec<Duration>,
    started: Instant,
    pub pings_received: u64,
}

impl Probe {
    pub fn new(now: Instant, peers: Vec<SocketAddr>, mean_interval: Duration, seed: u64) -> Self {
        let mut rng = SimRng::seed_from_u64(seed);
        let first = Duration::from_secs_f64(exponential(&mut rng, mean_interval.as_secs_f64()));
        Probe {
            peers,
            rng,
            mean_interval,
            next_ping: Some(now + first),
            outbox: Vec::new(),
            rtts: Vec::new(),
            started: now,
            pings_received: 0,
        }
    }
}

impl App for Probe {
    type Output = Duration;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match data.first() {
            Some(&PING) => {
                self.pings_received += 1;
                let mut reply = data.to_vec();
                reply[0] = PONG;
                self.outbox.push(Transmit {
                    to: from,
                    data: reply,
                });
            }
            Some(&PONG) if data.len() == 9 => {
                let sent_ns = u64::from_le_bytes(data[1..9].try_into().expect("8 bytes"));
                let sent = self.started + Duration::from_nanos(sent_ns);
                self.rtts.push(now.saturating_duration_since(sent));
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.peers.is_empty() {
            self.next_ping = None;
        }
        if self.next_ping.is_some_and(|t| t <= now) {
            let to = self.peers[self.rng.gen_range(0..self.peers.len())];
            let mut data = vec![PING];
            let stamp = now.saturating_duration_since(self.started).as_nanos() as u64;
            data.extend_from_slice(&stamp.to_le_bytes());
            self.outbox.push(Transmit { to, data });
            let gap = exponential(&mut self.rng, self.mean_interval.as_secs_f64());
            self.next_ping = Some(now + Duration::from_secs_f64(gap));
        }
    }

    fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        self.outbox.pop()
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.next_ping
    }

    fn poll_output(&mut self) -> Option<Duration> {
        self.rtts.pop()
    }
}
