//! A `dht::Dht` core driven by an adversarial network.
//!
//! The input is a config (a few flag bits and an RNG seed) followed by a script of steps:
//! raw datagrams from a handful of source addresses, well-formed queries from them,
//! replies (or errors) to queries the core really sent (with the right transaction id, so
//! the client side, lookups and the routing table are reachable), virtual time passing,
//! and application commands. After every step all transmits and events are drained and
//! checked:
//!
//! - everything the core sends decodes as KRPC and is bounded in size;
//! - one incoming datagram gets at most one reply, and no reply appears without one;
//! - a reply to a source that never answered one of our queries (so its address may be
//!   spoofed) carries nodes of one family only, at most 8 values, and is at most
//!   `UNCONFIRMED_REPLY_MAX` bytes (the anti-amplification rule in `core.rs`);
//! - `LookupDone` comes at most once per lookup, and no peer is reported twice per lookup.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use dht::krpc::{
    canonical_addr, Body, KrpcError, Message, NodeInfo, Query, QueryKind, Response, Want,
    MAX_DATAGRAM,
};
use dht::{Config, Dht, Event, Id, LookupId};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Largest reply to an unconfirmed source: a BEP 51 reply to an IPv6 source with a 32-byte
/// transaction id is 867 bytes (8 nodes6, 20 samples); get_peers at most 623.
const UNCONFIRMED_REPLY_MAX: usize = 900;
/// Largest reply to a node that answered us: both families and 100 IPv6 values.
const CONFIRMED_REPLY_MAX: usize = 3_072;
/// Our own queries: an announce with a 64-byte token is the largest.
const QUERY_MAX: usize = 256;

fn sources() -> Vec<SocketAddr> {
    [
        "1.2.3.4:6881",
        "1.2.3.5:6881",
        "5.6.7.8:1000",
        "9.9.9.9:53",
        "127.0.0.1:7000",
        "[2001:db8::1]:6881",
        "[2001:db8:1::2]:6881",
        "[::ffff:5.6.7.8]:1000",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

struct Harness {
    dht: Dht,
    now: Instant,
    sources: Vec<SocketAddr>,
    /// Queries the core sent: (to, transaction id), most recent last.
    sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Addresses that answered a query of ours with its transaction id (canonical). Only
    /// these can be confirmed nodes; replies to anyone else get the small reply.
    answered: HashSet<SocketAddr>,
    /// The last token the core gave each IP (for announces that pass).
    tokens: HashMap<IpAddr, Vec<u8>>,
    done: HashSet<LookupId>,
    peers_seen: HashMap<LookupId, HashSet<SocketAddr>>,
    ids: Vec<Id>,
}

impl Harness {
    fn id(&self, u: &mut Unstructured<'_>) -> Result<Id> {
        Ok(if u.ratio(1, 2)? {
            self.ids[u.choose_index(self.ids.len())?]
        } else {
            Id(u.arbitrary()?)
        })
    }

    fn addr(&self, u: &mut Unstructured<'_>) -> Result<SocketAddr> {
        Ok(match u.int_in_range(0..=3u8)? {
            0 | 1 => self.sources[u.choose_index(self.sources.len())?],
            2 => SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u.arbitrary::<[u8; 4]>()?)),
                u.arbitrary()?,
            ),
            _ => SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(u.arbitrary::<[u8; 16]>()?)),
                u.arbitrary()?,
            ),
        })
    }

    fn nodes(&self, u: &mut Unstructured<'_>) -> Result<Vec<NodeInfo>> {
        let n = u.int_in_range(0..=10usize)?;
        (0..n)
            .map(|_| {
                Ok(NodeInfo {
                    id: self.id(u)?,
                    addr: self.addr(u)?,
                })
            })
            .collect()
    }

    /// Feeds one datagram and checks what comes out.
    fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.dht.handle_datagram(self.now, from, bytes);
        let incoming = Message::decode(bytes).ok();
        if let Some(Message {
            body: Body::Response(_) | Body::Error(_),
            t,
            ..
        }) = &incoming
        {
            let from = canonical_addr(from);
            if self
                .sent
                .iter()
                .any(|(to, tid)| canonical_addr(*to) == from && tid == t)
            {
                self.answered.insert(from);
            }
        }
        let replies = self.drain();
        assert!(
            replies.len() <= 1,
            "one datagram, {} replies",
            replies.len()
        );
        if let Some((to, reply)) = replies.first() {
            assert_eq!(*to, canonical_addr(from), "reply goes back to the source");
            match &incoming {
                Some(m) => {
                    assert!(matches!(m.body, Body::Query(_)), "reply to a non-query");
                    assert_eq!(reply.t, m.t, "reply echoes the transaction id");
                }
                None => {
                    // A bad query (error 203/204) still echoes its transaction id.
                    let Err(dht::krpc::DecodeError::BadQuery { t, .. }) = Message::decode(bytes)
                    else {
                        panic!("reply to a datagram that is not a query");
                    };
                    assert_eq!(reply.t, t);
                }
            }
        }
    }

    /// Drains transmits and events; returns the replies (responses and errors) sent.
    fn drain(&mut self) -> Vec<(SocketAddr, Message)> {
        let mut replies = Vec::new();
        while let Some(t) = self.dht.poll_transmit() {
            assert_ne!(t.to.port(), 0, "sending to port 0");
            let ip = canonical_addr(t.to).ip();
            assert!(
                !ip.is_unspecified() && !ip.is_multicast(),
                "sending to {}",
                t.to
            );
            assert!(t.data.len() <= MAX_DATAGRAM);
            let m = Message::decode(&t.data).expect("everything we send is valid KRPC");
            match &m.body {
                Body::Query(_) => {
                    assert!(t.data.len() <= QUERY_MAX, "query of {} bytes", t.data.len());
                    self.sent.push((t.to, m.t.clone()));
                    if self.sent.len() > 256 {
                        self.sent.drain(..128);
                    }
                }
                Body::Response(r) => {
                    if let Some(token) = &r.token {
                        self.tokens.insert(t.to.ip(), token.clone());
                    }
                    if self.answered.contains(&canonical_addr(t.to)) {
                        assert!(t.data.len() <= CONFIRMED_REPLY_MAX);
                    } else {
                        assert!(
                            t.data.len() <= UNCONFIRMED_REPLY_MAX,
                            "reply of {} bytes to unconfirmed {}",
                            t.data.len(),
                            t.to
                        );
                        assert!(
                            r.nodes.is_empty() || r.nodes6.is_empty(),
                            "both families to an unconfirmed source"
                        );
                        assert!(r.values.len() <= 8, "{} values", r.values.len());
                    }
                    replies.push((t.to, m));
                }
                Body::Error(_) => {
                    assert!(t.data.len() <= UNCONFIRMED_REPLY_MAX);
                    replies.push((t.to, m));
                }
            }
        }
        while let Some(ev) = self.dht.poll_event() {
            match ev {
                Event::LookupDone { lookup, .. } => {
                    assert!(self.done.insert(lookup), "{lookup:?} done twice");
                }
                Event::PeersFound { lookup, peers, .. } => {
                    assert!(!peers.is_empty());
                    let seen = self.peers_seen.entry(lookup).or_default();
                    for p in peers {
                        assert!(seen.insert(p), "peer {p} reported twice for {lookup:?}");
                    }
                }
                _ => {}
            }
        }
        replies
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0..=9u8)? {
            // Raw bytes from a source.
            0 | 1 => {
                let from = self.sources[u.choose_index(self.sources.len())?];
                let len = u.int_in_range(0..=1500usize)?;
                let bytes = u.bytes(len.min(u.len()))?.to_vec();
                self.datagram(from, &bytes);
            }
            // A well-formed query.
            2 | 3 => {
                // The kernel delivers no datagram from port 0, a multicast or an
                // unspecified address.
                let from = Some(self.addr(u)?)
                    .filter(|a| {
                        let ip = canonical_addr(*a).ip();
                        a.port() != 0 && !ip.is_multicast() && !ip.is_unspecified()
                    })
                    .unwrap_or(self.sources[0]);
                let id = self.id(u)?;
                let target = self.id(u)?;
                let kind = match u.int_in_range(0..=5u8)? {
                    0 => QueryKind::Ping,
                    1 => QueryKind::FindNode { target },
                    2 => QueryKind::GetPeers { info_hash: target },
                    3 => QueryKind::AnnouncePeer {
                        info_hash: target,
                        port: u.arbitrary()?,
                        implied_port: u.arbitrary()?,
                        token: match self.tokens.get(&canonical_addr(from).ip()) {
                            Some(t) if u.ratio(3, 4)? => t.clone(),
                            _ => u.bytes(8)?.to_vec(),
                        },
                    },
                    4 => QueryKind::SampleInfohashes { target },
                    _ => QueryKind::Other {
                        method: b"vote".to_vec(),
                        target,
                    },
                };
                let tlen = u.int_in_range(0..=32usize)?;
                let msg = Message {
                    t: u.bytes(tlen)?.to_vec(),
                    v: None,
                    ip: None,
                    ro: u.ratio(1, 8)?,
                    body: Body::Query(Query {
                        id,
                        want: Want {
                            n4: u.arbitrary()?,
                            n6: u.arbitrary()?,
                        },
                        kind,
                    }),
                };
                self.datagram(from, &msg.to_bytes());
            }
            // A reply to a query we sent, with its transaction id.
            4..=6 => {
                if self.sent.is_empty() {
                    return Ok(());
                }
                let back = u.int_in_range(1..=self.sent.len().min(16))?;
                let (to, t) = self.sent[self.sent.len() - back].clone();
                // Sometimes from another source (a spoofed or confused reply).
                let from = if u.ratio(1, 8)? {
                    self.sources[u.choose_index(self.sources.len())?]
                } else {
                    to
                };
                let body = if u.ratio(1, 6)? {
                    Body::Error(KrpcError {
                        code: 201,
                        message: b"no".to_vec(),
                    })
                } else {
                    let values = (0..u.int_in_range(0..=12usize)?)
                        .map(|_| self.addr(u))
                        .collect::<Result<Vec<_>>>()?
                        .into_iter()
                        .filter(|a| a.port() != 0)
                        .collect();
                    Body::Response(Response {
                        id: self.id(u)?,
                        with_nodes: true,
                        nodes: self
                            .nodes(u)?
                            .into_iter()
                            .filter(|n| n.addr.is_ipv4())
                            .collect(),
                        nodes6: self
                            .nodes(u)?
                            .into_iter()
                            .filter(|n| n.addr.is_ipv6())
                            .collect(),
                        values,
                        token: if u.arbitrary()? {
                            Some(u.bytes(8)?.to_vec())
                        } else {
                            None
                        },
                        samples: None,
                        interval: None,
                        num: None,
                    })
                };
                let ip = if u.ratio(1, 3)? {
                    Some(self.addr(u)?)
                } else {
                    None
                };
                let msg = Message {
                    t,
                    v: None,
                    ip,
                    ro: u.ratio(1, 8)?,
                    body,
                };
                self.datagram(from, &msg.to_bytes());
            }
            // Time passes.
            7 | 8 => {
                let ms = match u.int_in_range(0..=3u8)? {
                    0 => u.int_in_range(0..=1_000u64)?,
                    1 => u.int_in_range(0..=10_000u64)?,
                    2 => u.int_in_range(0..=600_000u64)?,
                    _ => u.int_in_range(0..=7_200_000u64)?,
                };
                self.now += Duration::from_millis(ms);
                if u.arbitrary()? {
                    if let Some(t) = self.dht.poll_timeout() {
                        self.now = self.now.max(t);
                    }
                }
                self.dht.handle_timeout(self.now);
                assert!(self.drain().is_empty(), "a reply without a query");
            }
            // The application.
            _ => {
                let target = self.id(u)?;
                match u.int_in_range(0..=5u8)? {
                    0 => {
                        self.dht.get_peers(self.now, target);
                    }
                    1 => {
                        let port = u.arbitrary()?;
                        self.dht.announce(self.now, target, port);
                    }
                    2 => {
                        self.dht.find_node(self.now, target);
                    }
                    3 => {
                        self.dht.bootstrap(self.now);
                    }
                    4 => {
                        let a = self.addr(u)?;
                        self.dht.ping(self.now, a);
                    }
                    _ => {
                        let a = self.addr(u)?;
                        self.dht.add_node(self.now, a);
                    }
                }
                assert!(self.drain().is_empty(), "a reply without a query");
            }
        }
        Ok(())
    }
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let flags: u8 = u.arbitrary()?;
    let seed: u64 = u.arbitrary()?;
    let sources = sources();
    let mut config = Config {
        bep42: flags & 1 != 0,
        ipv6: flags & 2 != 0,
        restrict_ips: flags & 4 != 0,
        read_only: flags & 0x40 == 0x40 && flags & 8 != 0,
        store_announces: flags & 0x10 == 0,
        bootstrap: vec![sources[0], sources[5]],
        ..Config::default()
    };
    if flags & 0x20 != 0 {
        config.inbound_rate = 1_000;
        config.inbound_burst = 2_000;
    }
    if flags & 0x80 != 0 {
        config.id = Some(Id([0x42; 20]));
    }
    let now = Instant::now();
    let dht = Dht::new(config, now, seed);
    let mut h = Harness {
        ids: vec![Id([0; 20]), Id([0xff; 20]), dht.id(), Id([0x42; 20])],
        dht,
        now,
        sources,
        sent: Vec::new(),
        answered: HashSet::new(),
        tokens: HashMap::new(),
        done: HashSet::new(),
        peers_seen: HashMap::new(),
    };
    h.dht.handle_timeout(now);
    assert!(h.drain().is_empty());
    for _ in 0..200 {
        if u.is_empty() {
            break;
        }
        h.step(&mut u)?;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
