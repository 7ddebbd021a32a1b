//! The ut_metadata fetcher against simulated peers in virtual time: honest peers,
//! a peer that rejects, one that sends bad data, one that never answers, and peers that
//! lie about the size. Every message goes through the real encoder and parser.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use wire::extension::{
    FetchEvent, FetcherConfig, MetadataFetcher, MetadataMessage, MetadataServer, Verdict,
};
use wire::infohash::InfoHash;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Honest,
    Rejects,
    /// Serves correct-length blocks with a flipped byte in block 0.
    Corrupts,
    Silent,
    /// Claims `metadata_size` = this and serves garbage of that size.
    WrongSize(u64),
}

struct Sim {
    start: Instant,
    now: Instant,
    fetcher: MetadataFetcher<u32>,
    peers: BTreeMap<u32, Behaviour>,
    server: MetadataServer,
    latency: Duration,
    /// (deliver at, peer, encoded payload), in flight towards the fetcher.
    wire: Vec<(Instant, u32, Bytes)>,
    requests: BTreeMap<u32, u32>,
    events: Vec<FetchEvent<u32>>,
    violations: Vec<(u32, &'static str)>,
}

fn metadata(len: usize) -> Bytes {
    // Any bytes will do for the fetcher; make them look like an info dict's tail anyway.
    (0..len)
        .map(|i| (i.wrapping_mul(31) % 253) as u8)
        .collect::<Vec<u8>>()
        .into()
}

impl Sim {
    fn new(info: &Bytes, peers: &[(u32, Behaviour)]) -> Sim {
        let start = Instant::now();
        let mut sim = Sim {
            start,
            now: start,
            fetcher: MetadataFetcher::new(InfoHash::of_info_bytes(info), FetcherConfig::default()),
            peers: peers.iter().copied().collect(),
            server: MetadataServer::new(info.clone()),
            latency: Duration::from_millis(50),
            wire: Vec::new(),
            requests: BTreeMap::new(),
            events: Vec::new(),
            violations: Vec::new(),
        };
        for &(p, b) in peers {
            let size = match b {
                Behaviour::WrongSize(s) => s,
                _ => info.len() as u64,
            };
            let v = sim.fetcher.add_peer(start, p, Some(size));
            assert_eq!(v, Verdict::Accepted);
        }
        sim
    }

    fn answer(&self, peer: u32, piece: u32) -> Option<MetadataMessage> {
        match self.peers[&peer] {
            Behaviour::Honest => Some(self.server.respond(piece)),
            Behaviour::Rejects => Some(MetadataMessage::Reject { piece }),
            Behaviour::Silent => None,
            Behaviour::Corrupts => match self.server.respond(piece) {
                MetadataMessage::Data {
                    piece,
                    total_size,
                    data,
                } => {
                    let mut d = data.to_vec();
                    if piece == 0 {
                        d[10] ^= 0x55;
                    }
                    Some(MetadataMessage::Data {
                        piece,
                        total_size,
                        data: d.into(),
                    })
                }
                other => Some(other),
            },
            Behaviour::WrongSize(size) => {
                let start = piece as u64 * 16384;
                let len = size.saturating_sub(start).min(16384) as usize;
                Some(MetadataMessage::Data {
                    piece,
                    total_size: size,
                    data: vec![0xEE; len].into(),
                })
            }
        }
    }

    /// Runs until completion or until nothing more can happen; bounded in steps and time.
    fn run(&mut self) -> Option<Bytes> {
        for _ in 0..10_000 {
            while let Some(ev) = self.fetcher.poll_event() {
                match &ev {
                    FetchEvent::Request { peer, piece } => {
                        *self.requests.entry(*peer).or_default() += 1;
                        // Through the real codec, both ways.
                        let req = MetadataMessage::parse(&Bytes::from(
                            MetadataMessage::Request { piece: *piece }.encode(),
                        ))
                        .unwrap()
                        .unwrap();
                        let MetadataMessage::Request { piece } = req else {
                            panic!()
                        };
                        if let Some(reply) = self.answer(*peer, piece) {
                            self.wire.push((
                                self.now + self.latency,
                                *peer,
                                Bytes::from(reply.encode()),
                            ));
                        }
                    }
                    FetchEvent::Complete { info } => {
                        let info = info.clone();
                        self.events.push(ev);
                        return Some(info);
                    }
                    FetchEvent::HashMismatch { .. } => {}
                }
                self.events.push(ev);
            }
            let next_msg = self.wire.iter().map(|w| w.0).min();
            let next = match (next_msg, self.fetcher.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b)?,
            };
            assert!(
                next - self.start < Duration::from_secs(3600),
                "virtual time runs away"
            );
            self.now = self.now.max(next);
            if next_msg == Some(next) {
                let i = self.wire.iter().position(|w| w.0 == next).unwrap();
                let (_, peer, payload) = self.wire.remove(i);
                let msg = MetadataMessage::parse(&payload).unwrap().unwrap();
                if let Verdict::Violation(why) = self.fetcher.on_message(self.now, peer, &msg) {
                    self.violations.push((peer, why));
                    self.wire.retain(|w| w.1 != peer); // the driver drops the connection
                }
            } else {
                self.fetcher.handle_timeout(self.now);
            }
        }
        panic!("did not settle in 10,000 steps");
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }
}

#[test]
fn fetches_in_parallel_from_several_honest_peers() {
    let info = metadata(100_000); // 7 blocks
    let mut sim = Sim::new(
        &info,
        &[
            (1, Behaviour::Honest),
            (2, Behaviour::Honest),
            (3, Behaviour::Honest),
        ],
    );
    assert_eq!(sim.run(), Some(info));
    assert_eq!(
        sim.requests.len(),
        3,
        "every peer was asked: {:?}",
        sim.requests
    );
    assert_eq!(
        sim.requests.values().sum::<u32>(),
        7,
        "no block asked twice"
    );
    // 7 blocks, 3 peers x 2 in flight: six go at once, the seventh after the first
    // answer, so two round trips of 50 ms.
    assert_eq!(sim.elapsed(), Duration::from_millis(100));
    assert!(sim.fetcher.is_complete());
}

#[test]
fn rejects_and_silence_are_routed_around() {
    let info = metadata(70_000); // 5 blocks
    let mut sim = Sim::new(
        &info,
        &[
            (1, Behaviour::Silent),
            (2, Behaviour::Rejects),
            (3, Behaviour::Honest),
        ],
    );
    assert_eq!(sim.run(), Some(info));
    assert!(sim.requests[&1] >= 1 && sim.requests[&2] >= 1);
    // The silent peer's blocks were re-requested after the 10 s timeout.
    assert!(
        sim.elapsed() >= Duration::from_secs(10),
        "{:?}",
        sim.elapsed()
    );
    assert!(
        sim.elapsed() < Duration::from_secs(30),
        "{:?}",
        sim.elapsed()
    );
    assert!(sim.violations.is_empty());
}

#[test]
fn bad_data_is_discarded_and_the_liar_pinned_down_and_banned() {
    let info = metadata(40_000); // 3 blocks
    let mut sim = Sim::new(&info, &[(1, Behaviour::Corrupts), (2, Behaviour::Honest)]);
    assert_eq!(sim.run(), Some(info));
    let mismatches: Vec<_> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            FetchEvent::HashMismatch {
                contributors,
                culprit,
            } => Some((contributors.clone(), *culprit)),
            _ => None,
        })
        .collect();
    // First attempt mixed both peers: both suspects. The single-source retry pinned peer 1.
    assert_eq!(mismatches, vec![(vec![1, 2], None), (vec![1], Some(1))]);
    assert!(sim.fetcher.is_banned(1));
    assert!(!sim.fetcher.is_banned(2));
}

#[test]
fn lies_about_the_size_lose_to_the_real_metadata() {
    let info = metadata(20_000);
    let mut sim = Sim::new(
        &info,
        &[
            (1, Behaviour::WrongSize(5_000)),
            (2, Behaviour::WrongSize(5_000)),
            (3, Behaviour::Honest),
        ],
    );
    assert_eq!(sim.run(), Some(info));
    assert!(sim.fetcher.is_banned(1) && sim.fetcher.is_banned(2));
}

#[test]
fn a_peer_that_never_answers_is_given_up_on() {
    let info = metadata(50_000);
    let mut sim = Sim::new(&info, &[(7, Behaviour::Silent)]);
    assert_eq!(sim.run(), None, "nothing to fetch from");
    // Bounded: three strikes of at most two requests each.
    assert!(sim.requests[&7] <= 6, "{:?}", sim.requests);
    assert_eq!(sim.fetcher.poll_timeout(), None);
    // A new honest peer arriving later finishes the job.
    sim.peers.insert(8, Behaviour::Honest);
    sim.fetcher.add_peer(sim.now, 8, Some(50_000));
    assert_eq!(sim.run(), Some(info));
}

#[test]
fn a_departed_peer_hands_its_blocks_to_others() {
    let info = metadata(60_000);
    let mut sim = Sim::new(&info, &[(1, Behaviour::Silent), (2, Behaviour::Honest)]);
    let asked_of_1: BTreeSet<u32> = std::iter::from_fn(|| sim.fetcher.poll_event())
        .filter_map(|e| match e {
            FetchEvent::Request { peer: 1, piece } => Some(piece),
            FetchEvent::Request { peer: 2, piece } => {
                let reply = sim.server.respond(piece);
                sim.wire
                    .push((sim.now + sim.latency, 2, Bytes::from(reply.encode())));
                None
            }
            _ => None,
        })
        .collect();
    assert!(!asked_of_1.is_empty());
    sim.fetcher.remove_peer(sim.now, 1);
    assert_eq!(sim.run(), Some(info));
    assert!(
        sim.elapsed() < Duration::from_secs(1),
        "no timeout needed: {:?}",
        sim.elapsed()
    );
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        Just(Behaviour::Honest),
        Just(Behaviour::Rejects),
        Just(Behaviour::Corrupts),
        Just(Behaviour::Silent),
        (1u64..60_000).prop_map(Behaviour::WrongSize),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Whatever mix of peers: the fetcher settles within bounded steps, never completes
    /// with wrong bytes, and completes whenever one honest peer is present.
    #[test]
    fn correct_or_stalled_never_wrong(len in 1usize..80_000, mix in proptest::collection::vec(behaviour(), 1..6)) {
        let info = metadata(len);
        let peers: Vec<(u32, Behaviour)> = mix.iter().enumerate().map(|(i, b)| (i as u32 + 1, *b)).collect();
        let mut sim = Sim::new(&info, &peers);
        let got = sim.run();
        if let Some(g) = &got {
            prop_assert_eq!(g, &info);
        }
        if mix.contains(&Behaviour::Honest) {
            prop_assert!(got.is_some(), "an honest peer was present: {:?}", mix);
        } else {
            prop_assert!(got.is_none());
        }
    }
}
