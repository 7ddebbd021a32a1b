//! Fetching a torrent's info dictionary from peers (BEP 9), as a sans-IO state machine.
//!
//! The driver tells the fetcher about peers (with the `metadata_size` from their extended
//! handshakes), passes on their ut_metadata messages and the passing of time, and sends
//! the requests it is asked to:
//!
//! ```text
//! fetcher.add_peer(now, peer, hs.metadata_size);
//! fetcher.on_message(now, peer, &msg);        // -> Verdict: drop the peer on Violation
//! fetcher.handle_timeout(now);
//! while let Some(ev) = fetcher.poll_event() { Request{..} / Complete{..} / HashMismatch{..} }
//! fetcher.poll_timeout()                      // next wake-up
//! ```
//!
//! Blocks are requested from several peers in parallel (a few in flight per peer). A
//! reject or timeout strikes the peer and the block goes to another one; a peer with too
//! many strikes is no longer asked. The assembled bytes must hash to the info-hash. On a
//! mismatch everything is discarded: if one peer sent every block it is the culprit and
//! is banned; otherwise the contributors become suspects and the next attempt takes all
//! blocks from a single peer (non-suspects first), so the liar is pinned down.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::metadata::{block_count, block_len, MetadataMessage, MAX_METADATA_SIZE};
use crate::infohash::InfoHash;

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct FetcherConfig {
    /// How long a request may stay unanswered before the block goes to another peer.
    pub request_timeout: Duration,
    /// Requests in flight per peer.
    pub max_in_flight_per_peer: u32,
    /// Largest `metadata_size` believed.
    pub max_metadata_size: u64,
    /// Rejects and timeouts after which a peer is no longer asked.
    pub max_strikes: u32,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        FetcherConfig {
            request_timeout: Duration::from_secs(10),
            max_in_flight_per_peer: 2,
            max_metadata_size: MAX_METADATA_SIZE,
            max_strikes: 3,
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchEvent<P> {
    /// Send `MetadataMessage::Request { piece }` to `peer` (under the peer's ut_metadata id).
    Request { peer: P, piece: u32 },
    /// The info dictionary, verified against the info-hash. The fetcher is done.
    Complete { info: Bytes },
    /// The assembled metadata did not hash to the info-hash and was discarded.
    /// `culprit` is set (and already banned here) when a single peer sent all of it; the
    /// engine may penalise it further. Otherwise `contributors` are merely suspects.
    HashMismatch {
        contributors: Vec<P>,
        culprit: Option<P>,
    },
}

/// How an incoming message was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Used.
    Accepted,
    /// Harmless but useless (duplicate, unsolicited, late, or after completion).
    Ignored,
    /// A protocol violation: the peer is banned from fetching; drop the connection.
    Violation(&'static str),
}

#[derive(Clone, Debug)]
enum Block<P> {
    Missing,
    Requested { peer: P, at: Instant },
    Have { data: Bytes, from: P },
}

#[derive(Clone, Debug)]
struct PeerEntry {
    size: u64,
    in_flight: u32,
    strikes: u32,
    /// Where it is (size votes count addresses, not connections).
    voter: Option<IpAddr>,
    /// Blocks asked of this peer in the current attempt (late answers still count).
    asked: BTreeSet<u32>,
    rejected: BTreeSet<u32>,
}

#[derive(Clone, Debug)]
struct Assembly<P> {
    size: u64,
    blocks: Vec<Block<P>>,
    have: u32,
}

/// Fetches and verifies metadata for one info-hash. `P` identifies a peer connection.
#[derive(Debug)]
pub struct MetadataFetcher<P> {
    info_hash: InfoHash,
    cfg: FetcherConfig,
    peers: BTreeMap<P, PeerEntry>,
    banned: BTreeSet<P>,
    suspects: BTreeSet<P>,
    assembly: Option<Assembly<P>>,
    /// After an ambiguous mismatch: take every block from `source`.
    single_source: bool,
    source: Option<P>,
    done: bool,
    events: VecDeque<FetchEvent<P>>,
}

impl<P: Copy + Ord + Debug> MetadataFetcher<P> {
    pub fn new(info_hash: InfoHash, cfg: FetcherConfig) -> Self {
        MetadataFetcher {
            info_hash,
            cfg,
            peers: BTreeMap::new(),
            banned: BTreeSet::new(),
            suspects: BTreeSet::new(),
            assembly: None,
            single_source: false,
            source: None,
            done: false,
            events: VecDeque::new(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// Blocks received and blocks needed in the current attempt.
    pub fn progress(&self) -> (u32, u32) {
        self.assembly
            .as_ref()
            .map_or((0, 0), |a| (a.have, a.blocks.len() as u32))
    }

    /// Whether `peer` was banned (bad data or a protocol violation).
    pub fn is_banned(&self, peer: P) -> bool {
        self.banned.contains(&peer)
    }

    /// A peer whose extended handshake advertised ut_metadata. Peers without a
    /// `metadata_size` cannot be asked and are ignored; an absurd size is a violation.
    pub fn add_peer(&mut self, now: Instant, peer: P, metadata_size: Option<u64>) -> Verdict {
        self.add_peer_from(now, peer, metadata_size, None)
    }

    /// [`MetadataFetcher::add_peer`] for a peer at `voter` (its IP): when peers disagree
    /// on the size, each address gets one vote however many connections it opens. A peer
    /// that sends its extended handshake again keeps its strikes.
    pub fn add_peer_from(
        &mut self,
        now: Instant,
        peer: P,
        metadata_size: Option<u64>,
        voter: Option<IpAddr>,
    ) -> Verdict {
        if self.done || self.banned.contains(&peer) {
            return Verdict::Ignored;
        }
        let Some(size) = metadata_size else {
            return Verdict::Ignored;
        };
        if size == 0 || size > self.cfg.max_metadata_size {
            return Verdict::Violation("metadata_size out of range");
        }
        let strikes = match self.peers.get(&peer) {
            Some(old) if old.size == size => return Verdict::Ignored,
            Some(old) => old.strikes,
            None => 0,
        };
        if self.peers.contains_key(&peer) {
            self.release_requests_of(peer);
        }
        self.peers.insert(
            peer,
            PeerEntry {
                size,
                in_flight: 0,
                strikes,
                voter,
                asked: BTreeSet::new(),
                rejected: BTreeSet::new(),
            },
        );
        self.schedule(now);
        Verdict::Accepted
    }

    /// The peer disconnected: its outstanding blocks go to others.
    pub fn remove_peer(&mut self, now: Instant, peer: P) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        self.release_requests_of(peer);
        if self.source == Some(peer) {
            self.source = None;
        }
        self.schedule(now);
    }

    /// A ut_metadata message from `peer`.
    pub fn on_message(&mut self, now: Instant, peer: P, msg: &MetadataMessage) -> Verdict {
        if self.done || !self.peers.contains_key(&peer) {
            return Verdict::Ignored;
        }
        let verdict = match msg {
            MetadataMessage::Request { .. } => Verdict::Ignored,
            MetadataMessage::Reject { piece } => self.on_reject(peer, *piece),
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => self.on_data(peer, *piece, *total_size, data),
        };
        if let Verdict::Violation(_) = verdict {
            self.ban(peer);
        }
        self.schedule(now);
        verdict
    }

    fn on_reject(&mut self, peer: P, piece: u32) -> Verdict {
        let Some(asm) = self.assembly.as_mut() else {
            return Verdict::Ignored;
        };
        match asm.blocks.get(piece as usize) {
            Some(Block::Requested { peer: p, .. }) if *p == peer => {
                asm.blocks[piece as usize] = Block::Missing;
                if let Some(e) = self.peers.get_mut(&peer) {
                    e.in_flight = e.in_flight.saturating_sub(1);
                    e.strikes += 1;
                    e.rejected.insert(piece);
                }
                self.source_failed(peer);
                Verdict::Accepted
            }
            _ => Verdict::Ignored,
        }
    }

    fn on_data(&mut self, peer: P, piece: u32, total_size: u64, data: &Bytes) -> Verdict {
        let Some(asm) = self.assembly.as_mut() else {
            return Verdict::Ignored;
        };
        let Some(entry) = self.peers.get(&peer) else {
            return Verdict::Ignored;
        };
        if !entry.asked.contains(&piece) {
            return Verdict::Ignored;
        }
        if total_size != asm.size {
            return Verdict::Violation(
                "ut_metadata total_size differs from the size being fetched",
            );
        }
        if data.len() != block_len(asm.size, piece) {
            return Verdict::Violation("ut_metadata block has the wrong length");
        }
        let previous = std::mem::replace(
            &mut asm.blocks[piece as usize],
            Block::Have {
                data: data.clone(),
                from: peer,
            },
        );
        match previous {
            Block::Have { data, from } => {
                // Already had it: keep the first copy.
                asm.blocks[piece as usize] = Block::Have { data, from };
                return Verdict::Ignored;
            }
            Block::Requested { peer: p, .. } => {
                if let Some(e) = self.peers.get_mut(&p) {
                    e.in_flight = e.in_flight.saturating_sub(1);
                }
            }
            Block::Missing => {}
        }
        asm.have += 1;
        if asm.have as usize == asm.blocks.len() {
            self.finish();
        }
        Verdict::Accepted
    }

    /// All blocks are in: verify, and either complete or start over.
    fn finish(&mut self) {
        let Some(asm) = self.assembly.take() else {
            return;
        };
        let mut info = BytesMut::with_capacity(asm.size as usize);
        let mut contributors = BTreeSet::new();
        for b in &asm.blocks {
            if let Block::Have { data, from } = b {
                info.extend_from_slice(data);
                contributors.insert(*from);
            }
        }
        for e in self.peers.values_mut() {
            e.in_flight = 0;
            e.asked.clear();
        }
        if InfoHash::of_info_bytes(&info) == self.info_hash {
            self.done = true;
            self.events.push_back(FetchEvent::Complete {
                info: info.freeze(),
            });
            return;
        }
        let contributors: Vec<P> = contributors.into_iter().collect();
        let culprit = match contributors[..] {
            [only] => Some(only),
            _ => None,
        };
        match culprit {
            Some(p) => self.ban(p),
            None => {
                self.suspects.extend(contributors.iter().copied());
                self.single_source = true;
                self.source = None;
            }
        }
        self.events.push_back(FetchEvent::HashMismatch {
            contributors,
            culprit,
        });
    }

    fn ban(&mut self, peer: P) {
        self.banned.insert(peer);
        self.peers.remove(&peer);
        self.release_requests_of(peer);
        if self.source == Some(peer) {
            self.source = None;
        }
    }

    fn release_requests_of(&mut self, peer: P) {
        if let Some(asm) = self.assembly.as_mut() {
            for b in asm.blocks.iter_mut() {
                if matches!(b, Block::Requested { peer: p, .. } if *p == peer) {
                    *b = Block::Missing;
                }
            }
        }
    }

    /// Time passed: requests older than the timeout go to other peers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut struck = Vec::new();
        if let Some(asm) = self.assembly.as_mut() {
            for b in asm.blocks.iter_mut() {
                if let Block::Requested { peer, at } = *b {
                    if now.saturating_duration_since(at) >= self.cfg.request_timeout {
                        *b = Block::Missing;
                        if let Some(e) = self.peers.get_mut(&peer) {
                            e.in_flight = e.in_flight.saturating_sub(1);
                            e.strikes += 1;
                        }
                        struck.push(peer);
                    }
                }
            }
        }
        for p in struck {
            self.source_failed(p);
        }
        self.schedule(now);
    }

    /// In single-source mode a reject or timeout from the source moves the job to
    /// another peer (a source that refuses some blocks could otherwise stall it).
    fn source_failed(&mut self, peer: P) {
        if self.source == Some(peer) {
            self.source = None;
        }
    }

    /// When [`MetadataFetcher::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.assembly
            .as_ref()?
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Requested { at, .. } => Some(*at + self.cfg.request_timeout),
                _ => None,
            })
            .min()
    }

    pub fn poll_event(&mut self) -> Option<FetchEvent<P>> {
        self.events.pop_front()
    }

    fn usable(&self, e: &PeerEntry) -> bool {
        e.strikes < self.cfg.max_strikes
    }

    /// Usable, and has not rejected every block it could still be asked for (those of its
    /// size the current attempt lacks). A peer that rejected them all keeps no size alive.
    fn can_serve(&self, e: &PeerEntry) -> bool {
        let have = |i: u32| {
            self.assembly.as_ref().is_some_and(|a| {
                a.size == e.size && matches!(a.blocks[i as usize], Block::Have { .. })
            })
        };
        self.usable(e) && (0..block_count(e.size)).any(|i| !e.rejected.contains(&i) && !have(i))
    }

    /// Hands missing blocks to peers with spare capacity.
    fn schedule(&mut self, now: Instant) {
        if self.done {
            return;
        }
        // Start (or restart with another size) when no peer can serve the current one.
        let current_served = self.assembly.as_ref().is_some_and(|a| {
            self.peers
                .values()
                .any(|e| e.size == a.size && self.can_serve(e))
        });
        if !current_served {
            let Some(size) = self.most_claimed_size() else {
                return;
            };
            if self.assembly.as_ref().is_some_and(|a| a.size == size) {
                return;
            }
            for e in self.peers.values_mut() {
                e.in_flight = 0;
                e.asked.clear();
            }
            self.assembly = Some(Assembly {
                size,
                blocks: vec![Block::Missing; block_count(size) as usize],
                have: 0,
            });
        }
        let Some(size) = self.assembly.as_ref().map(|a| a.size) else {
            return;
        };
        // A source that rejected every block still missing (maybe before it became the
        // source) is never asked again, so it would never be struck out: replace it. So
        // is one whose new handshake claims another size.
        if self.single_source
            && !self.source.is_some_and(|s| {
                self.peers
                    .get(&s)
                    .is_some_and(|e| e.size == size && self.can_serve(e))
            })
        {
            self.source = self.pick_source(size);
        }
        let count = self.assembly.as_ref().map_or(0, |a| a.blocks.len());
        for i in 0..count as u32 {
            if !matches!(
                self.assembly.as_ref().map(|a| &a.blocks[i as usize]),
                Some(Block::Missing)
            ) {
                continue;
            }
            let chosen = if self.single_source {
                self.source.filter(|s| {
                    self.peers.get(s).is_some_and(|e| {
                        e.in_flight < self.cfg.max_in_flight_per_peer && !e.rejected.contains(&i)
                    })
                })
            } else {
                self.pick_peer(size, i)
            };
            let Some(peer) = chosen else { continue };
            if let Some(e) = self.peers.get_mut(&peer) {
                e.in_flight += 1;
                e.asked.insert(i);
            }
            if let Some(a) = self.assembly.as_mut() {
                a.blocks[i as usize] = Block::Requested { peer, at: now };
            }
            self.events
                .push_back(FetchEvent::Request { peer, piece: i });
        }
    }

    /// The best peer to ask for block `piece`: usable, same size, spare capacity, did
    /// not reject it; non-suspects, then fewest in flight, then fewest strikes.
    fn pick_peer(&self, size: u64, piece: u32) -> Option<P> {
        self.peers
            .iter()
            .filter(|(_, e)| e.size == size && self.usable(e))
            .filter(|(_, e)| {
                e.in_flight < self.cfg.max_in_flight_per_peer && !e.rejected.contains(&piece)
            })
            .min_by_key(|(p, e)| (self.suspects.contains(p), e.in_flight, e.strikes))
            .map(|(p, _)| *p)
    }

    /// A peer to take every block from after an ambiguous mismatch: usable, same size,
    /// has not rejected every missing block; non-suspects first, then fewest strikes.
    fn pick_source(&self, size: u64) -> Option<P> {
        let asm = self.assembly.as_ref()?;
        let missing: Vec<u32> = (0..asm.blocks.len() as u32)
            .filter(|&i| !matches!(asm.blocks[i as usize], Block::Have { .. }))
            .collect();
        self.peers
            .iter()
            .filter(|(_, e)| e.size == size && self.usable(e))
            .filter(|(_, e)| missing.iter().any(|i| !e.rejected.contains(i)))
            .min_by_key(|(p, e)| (self.suspects.contains(p), e.strikes, e.in_flight))
            .map(|(p, _)| *p)
    }

    /// The metadata size most peers that can serve agree on (ties: the smallest).
    fn most_claimed_size(&self) -> Option<u64> {
        let mut voters: BTreeSet<(u64, Result<IpAddr, P>)> = BTreeSet::new();
        for (p, e) in self.peers.iter().filter(|(_, e)| self.can_serve(e)) {
            voters.insert((e.size, e.voter.ok_or(*p)));
        }
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (size, _) in voters {
            *votes.entry(size).or_default() += 1;
        }
        votes
            .into_iter()
            .max_by_key(|&(size, n)| (n, std::cmp::Reverse(size)))
            .map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(len: usize) -> (Bytes, InfoHash) {
        let b: Bytes = (0..len)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let h = InfoHash::of_info_bytes(&b);
        (b, h)
    }

    fn drain(f: &mut MetadataFetcher<u32>) -> Vec<FetchEvent<u32>> {
        std::iter::from_fn(|| f.poll_event()).collect()
    }

    #[test]
    fn single_peer_single_block() {
        let (bytes, ih) = info(100);
        let t0 = Instant::now();
        let mut f = MetadataFetcher::new(ih, FetcherConfig::default());
        assert_eq!(f.add_peer(t0, 1, Some(100)), Verdict::Accepted);
        assert_eq!(
            drain(&mut f),
            vec![FetchEvent::Request { peer: 1, piece: 0 }]
        );
        let msg = MetadataMessage::Data {
            piece: 0,
            total_size: 100,
            data: bytes.clone(),
        };
        assert_eq!(f.on_message(t0, 1, &msg), Verdict::Accepted);
        assert_eq!(drain(&mut f), vec![FetchEvent::Complete { info: bytes }]);
        assert!(f.is_complete());
        assert_eq!(f.on_message(t0, 1, &msg), Verdict::Ignored);
    }

    #[test]
    fn absurd_sizes_and_unsolicited_data() {
        let (bytes, ih) = info(100);
        let t0 = Instant::now();
        let mut f = MetadataFetcher::new(ih, FetcherConfig::default());
        assert_eq!(
            f.add_peer(t0, 1, Some(0)),
            Verdict::Violation("metadata_size out of range")
        );
        assert!(matches!(
            f.add_peer(t0, 2, Some(MAX_METADATA_SIZE + 1)),
            Verdict::Violation(_)
        ));
        assert_eq!(f.add_peer(t0, 3, None), Verdict::Ignored);
        assert!(drain(&mut f).is_empty());
        f.add_peer(t0, 4, Some(100));
        f.add_peer(t0, 5, Some(100));
        drain(&mut f);
        // Peer 5 was not asked for block 0 (peer 4 was): its data is ignored.
        let msg = MetadataMessage::Data {
            piece: 0,
            total_size: 100,
            data: bytes.clone(),
        };
        assert_eq!(f.on_message(t0, 5, &msg), Verdict::Ignored);
        // Wrong total size from the asked peer: a violation, and it is banned.
        let lie = MetadataMessage::Data {
            piece: 0,
            total_size: 99,
            data: bytes.slice(..99),
        };
        assert!(matches!(f.on_message(t0, 4, &lie), Verdict::Violation(_)));
        assert!(f.is_banned(4));
        assert_eq!(
            drain(&mut f),
            vec![FetchEvent::Request { peer: 5, piece: 0 }]
        );
    }

    #[test]
    fn a_peer_that_rejects_its_bogus_size_does_not_stall_the_fetch() {
        // Found by fuzz/metadata_fetcher: peer 1 claims a 1-byte metadata and rejects its
        // only block. It still had strikes to spare, so its size stayed "served" and the
        // honest peer with the real size was never asked: the fetch stalled for good.
        let (bytes, ih) = info(100);
        let t0 = Instant::now();
        let mut f = MetadataFetcher::new(ih, FetcherConfig::default());
        f.add_peer(t0, 1, Some(1));
        assert_eq!(
            drain(&mut f),
            vec![FetchEvent::Request { peer: 1, piece: 0 }]
        );
        let reject = MetadataMessage::Reject { piece: 0 };
        assert_eq!(f.on_message(t0, 1, &reject), Verdict::Accepted);
        assert_eq!(f.add_peer(t0, 2, Some(100)), Verdict::Accepted);
        assert_eq!(
            drain(&mut f),
            vec![FetchEvent::Request { peer: 2, piece: 0 }]
        );
        let msg = MetadataMessage::Data {
            piece: 0,
            total_size: 100,
            data: bytes.clone(),
        };
        assert_eq!(f.on_message(t0, 2, &msg), Verdict::Accepted);
        assert_eq!(drain(&mut f), vec![FetchEvent::Complete { info: bytes }]);
    }

    #[test]
    fn a_single_source_that_rejected_a_missing_block_is_replaced() {
        use crate::extension::METADATA_BLOCK_LEN;
        // Found by fuzz/metadata_fetcher: after an ambiguous mismatch the job went to
        // peer 4, which had rejected block 1 in the earlier attempt. It was never asked
        // for block 1 again (so never struck) and stayed the source: block 1 was never
        // requested from anyone, even from an honest peer that joined.
        let (bytes, ih) = info(METADATA_BLOCK_LEN + 1);
        let size = bytes.len() as u64;
        let data = |piece: u32| MetadataMessage::Data {
            piece,
            total_size: size,
            data: bytes.slice(
                piece as usize * METADATA_BLOCK_LEN
                    ..(piece as usize * METADATA_BLOCK_LEN + METADATA_BLOCK_LEN).min(bytes.len()),
            ),
        };
        let t0 = Instant::now();
        let mut f = MetadataFetcher::new(ih, FetcherConfig::default());
        f.add_peer(t0, 4, Some(size));
        drain(&mut f);
        f.on_message(t0, 4, &data(0));
        f.add_peer(t0, 3, Some(size));
        f.on_message(t0, 4, &MetadataMessage::Reject { piece: 1 });
        assert_eq!(
            drain(&mut f),
            vec![FetchEvent::Request { peer: 3, piece: 1 }]
        );
        let lie = MetadataMessage::Data {
            piece: 1,
            total_size: size,
            data: Bytes::from_static(b"x"),
        };
        f.on_message(t0, 3, &lie);
        assert!(matches!(
            drain(&mut f)[..],
            [FetchEvent::HashMismatch { culprit: None, .. }, ..]
        ));
        // Peer 3 is the source now, rejects block 0; the job goes to peer 4.
        f.on_message(t0, 3, &MetadataMessage::Reject { piece: 0 });
        assert_eq!(
            drain(&mut f),
            vec![FetchEvent::Request { peer: 4, piece: 0 }]
        );
        f.on_message(t0, 4, &data(0));
        f.add_peer(t0, 5, Some(size));
        drain(&mut f);
        // Peer 3's request for block 1 times out: the honest peer 5 must get it.
        let t1 = t0 + FetcherConfig::default().request_timeout;
        f.handle_timeout(t1);
        assert_eq!(
            drain(&mut f),
            vec![FetchEvent::Request { peer: 5, piece: 1 }]
        );
        f.on_message(t1, 5, &data(1));
        assert_eq!(drain(&mut f), vec![FetchEvent::Complete { info: bytes }]);
    }

    #[test]
    fn a_source_that_changes_its_size_is_not_asked_for_blocks_beyond_it() {
        // Found by fuzz/metadata_fetcher: the single source sent a second handshake with
        // another metadata_size and was still asked for block 2 of the old size.
        let (bytes, ih) = info(40_000);
        let good = |piece: usize| MetadataMessage::Data {
            piece: piece as u32,
            total_size: 40_000,
            data: bytes.slice(piece * 16_384..((piece + 1) * 16_384).min(40_000)),
        };
        let t0 = Instant::now();
        let mut f = MetadataFetcher::new(ih, FetcherConfig::default());
        f.add_peer(t0, 3, Some(40_000));
        f.add_peer(t0, 1, Some(40_000));
        drain(&mut f);
        f.on_message(t0, 3, &good(0));
        f.add_peer(t0, 0, Some(40_000));
        let lie = MetadataMessage::Data {
            piece: 1,
            total_size: 40_000,
            data: bytes.slice(..16_384),
        };
        f.on_message(t0, 3, &lie);
        f.on_message(t0, 1, &good(2));
        let events = drain(&mut f);
        assert!(matches!(events[0], FetchEvent::HashMismatch { .. }));
        assert_eq!(
            events[1..],
            [
                FetchEvent::Request { peer: 0, piece: 0 },
                FetchEvent::Request { peer: 0, piece: 1 }
            ]
        );
        assert_eq!(f.add_peer(t0, 0, Some(51)), Verdict::Accepted);
        let events = drain(&mut f);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, FetchEvent::Request { peer: 0, .. })),
            "{events:?}"
        );
    }
}
