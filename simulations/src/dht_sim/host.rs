//! The one type the simulator runs for DHT scenarios: an honest node (the real core, boxed
//! because it is large) or one of the misbehaving kinds from [`super::adversary`].

use super::adversary::{GarbageNode, SpoofNode, SybilNode};
use crate::sim::{App, Transmit};
use std::net::SocketAddr;
use std::time::Instant;

pub enum DhtHost {
    Honest(Box<dht::Dht>),
    Garbage(Box<GarbageNode>),
    Sybil(SybilNode),
    Spoof(Box<SpoofNode>),
}

impl DhtHost {
    pub fn honest(&self) -> Option<&dht::Dht> {
        match self {
            DhtHost::Honest(d) => Some(d),
            _ => None,
        }
    }

    pub fn honest_mut(&mut self) -> Option<&mut dht::Dht> {
        match self {
            DhtHost::Honest(d) => Some(d),
            _ => None,
        }
    }
}

impl App for DhtHost {
    type Output = dht::Event;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match self {
            DhtHost::Honest(d) => d.handle_datagram(now, from, data),
            DhtHost::Garbage(g) => g.handle_datagram(from, data),
            DhtHost::Sybil(s) => s.handle_datagram(from, data),
            DhtHost::Spoof(s) => s.handle_datagram(now, from, data),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            DhtHost::Honest(d) => d.handle_timeout(now),
            DhtHost::Spoof(s) => s.handle_timeout(now),
            _ => {}
        }
    }

    fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        match self {
            DhtHost::Honest(d) => d.poll_transmit().map(|t| Transmit {
                to: t.to,
                data: t.data,
            }),
            DhtHost::Garbage(g) => g.outbox.pop(),
            DhtHost::Sybil(s) => s.outbox.pop(),
            DhtHost::Spoof(s) => s.outbox.pop(),
        }
    }

    fn poll_spoofed(&mut self, _now: Instant) -> Option<(std::net::SocketAddrV4, Transmit)> {
        match self {
            DhtHost::Spoof(s) => s.poll_spoofed(),
            _ => None,
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        match self {
            DhtHost::Honest(d) => d.poll_timeout(),
            DhtHost::Spoof(s) => s.poll_timeout(),
            _ => None,
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if let DhtHost::Honest(d) = self {
            d.recycle(buf);
        }
    }

    fn poll_output(&mut self) -> Option<dht::Event> {
        match self {
            DhtHost::Honest(d) => d.poll_event(),
            _ => None,
        }
    }
}
