//! Engine tests in virtual time: a harness feeds messages, moves the clock by hand and
//! records what the engine asked for.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::*;

struct Harness {
    e: Engine,
    now: Instant,
    /// Our requests to each peer that are still unanswered, as the peer would see them.
    requested: HashMap<PeerSlot, Vec<Block>>,
    log: Vec<Action>,
}

impl Harness {
    fn new(pieces: u32, piece_len: u32, have: Bitfield, cfg: Config, seed: u64) -> Self {
        let now = Instant::now();
        let geo = Geometry::new(pieces as u64 * piece_len as u64, piece_len as u64).unwrap();
        Harness {
            e: Engine::new(geo, have, cfg, now, seed).unwrap(),
            now,
            requested: HashMap::new(),
            log: Vec::new(),
        }
    }

    fn leecher(pieces: u32, piece_len: u32, cfg: Config) -> Self {
        Self::new(pieces, piece_len, Bitfield::new(pieces), cfg, 7)
    }

    fn seeder(pieces: u32, piece_len: u32, cfg: Config) -> Self {
        Self::new(pieces, piece_len, Bitfield::full(pieces), cfg, 7)
    }

    fn connect(&mut self, n: u8, fast: bool) -> PeerSlot {
        let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), 6881));
        let slot = self
            .e
            .peer_connected(
                self.now,
                PeerInfo {
                    addr: Some(addr),
                    fast,
                    reqq: None,
                    announced_nothing: false,
                },
            )
            .unwrap();
        self.drain();
        slot
    }

    fn msg(&mut self, slot: PeerSlot, m: Message) -> Vec<Action> {
        self.e.handle_message(self.now, slot, m);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.e.poll_action() {
            match &a {
                Action::Send {
                    slot,
                    message: Message::Request(b),
                } => self.requested.entry(*slot).or_default().push(*b),
                Action::Send {
                    slot,
                    message: Message::Cancel(b),
                } => self.requested.entry(*slot).or_default().retain(|x| x != b),
                _ => {}
            }
            self.log.push(a.clone());
            out.push(a);
        }
        out
    }

    /// Moves the clock to each wake-up the engine asks for (at least every 100 ms),
    /// firing timeouts and collecting actions.
    fn advance(&mut self, d: Duration) -> Vec<Action> {
        let end = self.now + d;
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            let step = (self.now + Duration::from_millis(100)).min(end);
            let wake = self.e.poll_timeout().map_or(step, |t| t.min(step));
            self.now = wake.max(self.now);
            if self.e.poll_timeout().is_some_and(|t| t <= self.now) {
                self.e.handle_timeout(self.now);
            }
            out.extend(self.drain());
            if self.now >= end {
                break;
            }
        }
        out
    }

    /// The peer answers its oldest `count` requests.
    fn answer(&mut self, slot: PeerSlot, count: usize) -> Vec<Action> {
        let mut out = Vec::new();
        for _ in 0..count {
            let q = self.requested.entry(slot).or_default();
            if q.is_empty() {
                break;
            }
            let b = q.remove(0);
            out.extend(self.msg(slot, block_msg(b)));
        }
        out
    }
}

fn block_msg(b: Block) -> Message {
    Message::Piece {
        piece: b.piece,
        offset: b.offset,
        data: Bytes::from(vec![0u8; b.length as usize]),
    }
}

fn requests(actions: &[Action], to: PeerSlot) -> Vec<Block> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                slot,
                message: Message::Request(b),
            } if *slot == to => Some(*b),
            _ => None,
        })
        .collect()
}

fn sent(actions: &[Action], to: PeerSlot, m: &Message) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Send { slot, message } if *slot == to && message == m))
}

fn disconnected(actions: &[Action], who: PeerSlot) -> Option<DisconnectReason> {
    actions.iter().find_map(|a| match a {
        Action::Disconnect { slot, reason } if *slot == who => Some(reason.clone()),
        _ => None,
    })
}

fn bitfield_msg(pieces: u32, has: impl Fn(u32) -> bool) -> Message {
    let mut b = Bitfield::new(pieces);
    (0..pieces).filter(|&i| has(i)).for_each(|i| {
        b.set(i);
    });
    Message::Bitfield(Bytes::from(b.to_bytes()))
}

const B: u32 = BLOCK_LEN;

#[test]
fn rarest_pieces_are_requested_first() {
    let cfg = Config {
        random_first_pieces: 0,
        min_pipeline: 8,
        ..Config::default()
    };
    let mut h = Harness::leecher(8, B, cfg);
    // Piece i is held by i+1 of the peers below plus the seed: piece 0 is the rarest.
    for k in 1..8u8 {
        let s = h.connect(k, false);
        h.msg(s, bitfield_msg(8, |i| i >= k as u32));
    }
    let seed = h.connect(100, true);
    h.msg(seed, Message::HaveAll);
    let acts = h.msg(seed, Message::Unchoke);
    let order: Vec<u32> = requests(&acts, seed).iter().map(|b| b.piece).collect();
    assert_eq!(order, (0..8).collect::<Vec<_>>());
}

#[test]
fn first_pieces_are_random_not_rarest() {
    let mut firsts = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let cfg = Config {
            random_first_pieces: 4,
            min_pipeline: 1,
            ..Config::default()
        };
        let mut h = Harness::new(16, B, Bitfield::new(16), cfg, seed);
        let common = h.connect(1, false);
        h.msg(common, bitfield_msg(16, |i| i != 0));
        let s = h.connect(2, true);
        h.msg(s, Message::HaveAll);
        let acts = h.msg(s, Message::Unchoke);
        firsts.insert(requests(&acts, s)[0].piece);
    }
    // Rarest-first would always pick piece 0.
    assert!(firsts.len() >= 4, "first pieces {firsts:?}");
}

#[test]
fn each_peer_finishes_its_own_piece() {
    let cfg = Config {
        min_pipeline: 2,
        random_first_pieces: 0,
        ..Config::default()
    };
    let mut h = Harness::leecher(4, 4 * B, cfg);
    let a = h.connect(1, true);
    let b = h.connect(2, true);
    for s in [a, b] {
        h.msg(s, Message::HaveAll);
    }
    let ra = requests(&h.msg(a, Message::Unchoke), a);
    let rb = requests(&h.msg(b, Message::Unchoke), b);
    assert_eq!(ra.len(), 2);
    assert_eq!(ra[0].piece, ra[1].piece);
    assert!(
        rb.iter().all(|x| x.piece != ra[0].piece),
        "b shares a's piece: {rb:?}"
    );
    // As a's blocks arrive, it is given the rest of its piece.
    let more = requests(&h.answer(a, 2), a);
    assert!(
        more.len() >= 2 && more[..2].iter().all(|x| x.piece == ra[0].piece),
        "{more:?}"
    );
}

#[test]
fn pieces_in_progress_are_bounded_by_memory() {
    // Room for two pieces in flight; eight peers with deep pipelines would otherwise
    // start eight (and more) pieces at once.
    let cfg = Config {
        min_pipeline: 16,
        random_first_pieces: 0,
        max_partial_bytes: 2 * 4 * B as u64,
        ..Config::default()
    };
    let mut h = Harness::leecher(32, 4 * B, cfg);
    let mut asked = Vec::new();
    for n in 1..=8 {
        let s = h.connect(n, true);
        h.msg(s, Message::HaveAll);
        asked.extend(requests(&h.msg(s, Message::Unchoke), s));
    }
    let mut pieces: Vec<u32> = asked.iter().map(|b| b.piece).collect();
    pieces.sort();
    pieces.dedup();
    assert_eq!(pieces.len(), 2, "{asked:?}");
    assert_eq!(
        asked.len(),
        8,
        "every block of both pieces is asked for once"
    );
    // Blocks arrive: no third piece starts while both are unverified.
    let slots: Vec<PeerSlot> = h.requested.keys().copied().collect();
    for &s in &slots {
        h.answer(s, 16);
    }
    let done: Vec<u32> = h
        .log
        .iter()
        .filter_map(|a| match a {
            Action::VerifyPiece { piece } => Some(*piece),
            _ => None,
        })
        .collect();
    assert_eq!(done, pieces, "both pieces complete, nothing else asked");
    assert!(h.requested.values().all(|q| q.is_empty()));
    // Once they are verified, new pieces start (two at a time again).
    let mark = h.log.len();
    for p in done {
        h.e.piece_verified(h.now, p, true);
    }
    h.advance(Duration::from_secs(1));
    let mut next: Vec<u32> = h.log[mark..]
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                message: Message::Request(b),
                ..
            } => Some(b.piece),
            _ => None,
        })
        .collect();
    next.sort();
    next.dedup();
    assert_eq!(next.len(), 2, "{next:?}");
    assert!(next.iter().all(|p| !pieces.contains(p)));
}

#[test]
fn endgame_duplicates_requests_and_cancels_on_arrival() {
    let cfg = Config {
        min_pipeline: 4,
        ..Config::default()
    };
    let mut h = Harness::leecher(1, 2 * B, cfg);
    let a = h.connect(1, true);
    let b = h.connect(2, true);
    h.msg(a, Message::HaveAll);
    h.msg(b, Message::HaveAll);
    let ra = requests(&h.msg(a, Message::Unchoke), a);
    assert_eq!(ra.len(), 2);
    // Everything is requested: b is asked for the same blocks.
    let acts = h.msg(b, Message::Unchoke);
    let rb = requests(&acts, b);
    assert_eq!(rb.len(), 2, "{acts:?}");
    let acts = h.msg(a, block_msg(ra[0]));
    assert!(sent(&acts, b, &Message::Cancel(ra[0])), "{acts:?}");
    let acts = h.msg(b, block_msg(ra[1]));
    assert!(sent(&acts, a, &Message::Cancel(ra[1])), "{acts:?}");
    assert!(acts.contains(&Action::VerifyPiece { piece: 0 }));
    // The late duplicate is wasted, not written twice.
    let acts = h.msg(b, block_msg(ra[0]));
    assert!(!acts.iter().any(|x| matches!(x, Action::WriteBlock { .. })));
    assert_eq!(h.e.stats().wasted, B as u64);
    h.e.piece_verified(h.now, 0, true);
    let acts = h.drain();
    assert!(acts.contains(&Action::Completed));
    assert!(h.e.is_complete());
}

#[test]
fn regular_unchokes_follow_download_rate() {
    let cfg = Config {
        upload_slots: 3,
        random_first_pieces: 0,
        ..Config::default()
    };
    let pieces = 512;
    let mut have = Bitfield::new(pieces);
    for i in 0..pieces / 2 {
        have.set(i);
    }
    let mut h = Harness::new(pieces, B, have, cfg, 1);
    let peers: Vec<_> = (1..=5).map(|k| h.connect(k, true)).collect();
    for &p in &peers {
        h.msg(p, bitfield_msg(pieces, |i| i >= pieces / 2));
        h.msg(p, Message::Interested);
        h.msg(p, Message::Unchoke);
    }
    // Free slots went to the first peers at once.
    let unchoked = |h: &Harness| -> Vec<usize> {
        (0..5)
            .filter(|&i| !h.e.peer_stats(peers[i]).unwrap().am_choking)
            .collect()
    };
    assert_eq!(unchoked(&h), vec![0, 1, 2]);
    // Peers 3 and 4 upload to us the most.
    for _ in 0..9 {
        h.answer(peers[3], 3);
        h.answer(peers[4], 2);
        h.answer(peers[0], 1);
        h.advance(Duration::from_secs(1));
    }
    h.advance(Duration::from_millis(1100));
    assert_eq!(unchoked(&h), vec![3, 4]);
    let choked_0 = h
        .log
        .iter()
        .any(|a| matches!(a, Action::Send { slot, message: Message::Choke } if *slot == peers[0]));
    assert!(choked_0);
}

#[test]
fn optimistic_unchoke_rotates() {
    let cfg = Config {
        upload_slots: 2,
        ..Config::default()
    };
    let mut h = Harness::seeder(8, B, cfg);
    let peers: Vec<_> = (1..=6).map(|k| h.connect(k, true)).collect();
    for &p in &peers {
        h.msg(p, Message::HaveNone);
        h.msg(p, Message::Interested);
    }
    let mut optimistic_seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        h.advance(Duration::from_secs(30));
        let unchoked: Vec<_> = peers
            .iter()
            .filter(|&&p| !h.e.peer_stats(p).unwrap().am_choking)
            .collect();
        assert!(unchoked.len() <= 2, "{} unchoked", unchoked.len());
        for p in unchoked {
            optimistic_seen.insert(p.index());
        }
    }
    assert!(
        optimistic_seen.len() >= 4,
        "only {optimistic_seen:?} were ever unchoked"
    );
}

#[test]
fn upload_rate_limit_is_honoured() {
    let cfg = Config {
        upload_rate_limit: 100_000,
        ..Config::default()
    };
    let mut h = Harness::seeder(64, 4 * B, cfg);
    let p = h.connect(1, true);
    h.msg(p, Message::HaveNone);
    h.msg(p, Message::Interested);
    let mut next = 0u32;
    let mut read = 0u64;
    // The peer keeps 100 requests queued; we count bytes handed out for sending.
    for _ in 0..100 {
        let b = Block {
            piece: next / 4,
            offset: (next % 4) * B,
            length: B,
        };
        next += 1;
        h.msg(p, Message::Request(b));
    }
    for _ in 0..100 {
        h.advance(Duration::from_millis(100));
        for a in h.log.drain(..) {
            if let Action::ReadBlock { block, .. } = a {
                read += block.length as u64;
            }
        }
        for _ in 0..h.e.peer(p).unwrap().uploads_in_flight {
            h.e.block_sent(h.now, p);
        }
        while h.e.peer(p).unwrap().their_requests.len() < 100 {
            let b = Block {
                piece: (next / 4) % 64,
                offset: (next % 4) * B,
                length: B,
            };
            next += 1;
            h.msg(p, Message::Request(b));
        }
    }
    for a in h.log.drain(..) {
        if let Action::ReadBlock { block, .. } = a {
            read += block.length as u64;
        }
    }
    // 10 s at 100 kB/s, plus the initial burst (64 KiB) and one block of debt.
    assert!(
        (950_000..=1_000_000 + 65_536 + B as u64).contains(&read),
        "read {read}"
    );
}

#[test]
fn download_rate_limit_is_honoured() {
    let cfg = Config {
        download_rate_limit: 200_000,
        ..Config::default()
    };
    let mut h = Harness::leecher(256, 4 * B, cfg);
    let s = h.connect(1, true);
    h.msg(s, Message::HaveAll);
    h.msg(s, Message::Unchoke);
    for _ in 0..100 {
        h.advance(Duration::from_millis(100));
        h.answer(s, 1000);
    }
    let got = h.e.stats().downloaded;
    assert!(
        (1_900_000..=2_000_000 + 50_000 + 2 * B as u64).contains(&got),
        "downloaded {got}"
    );
}

#[test]
fn sole_source_of_a_bad_piece_is_banned_and_piece_refetched() {
    let cfg = Config {
        min_pipeline: 4,
        ..Config::default()
    };
    let mut h = Harness::leecher(2, 2 * B, cfg);
    let bad = h.connect(1, true);
    h.msg(bad, bitfield_msg(2, |i| i == 0));
    h.msg(bad, Message::Unchoke);
    let acts = h.answer(bad, 2);
    assert!(acts.contains(&Action::VerifyPiece { piece: 0 }));
    h.e.piece_verified(h.now, 0, false);
    let acts = h.drain();
    assert_eq!(disconnected(&acts, bad), Some(DisconnectReason::BadData));
    assert_eq!(h.e.stats().hash_failures, 1);
    assert_eq!(h.e.stats().banned, 1);
    // An honest peer is asked for the piece again.
    let good = h.connect(2, true);
    h.msg(good, Message::HaveAll);
    let r = requests(&h.msg(good, Message::Unchoke), good);
    assert!(r.iter().any(|b| b.piece == 0), "{r:?}");
}

#[test]
fn repeat_contributors_to_bad_pieces_are_banned_after_strikes() {
    let cfg = Config {
        min_pipeline: 1,
        ban_strikes: 2,
        ..Config::default()
    };
    let mut h = Harness::leecher(4, 2 * B, cfg);
    let a = h.connect(1, true);
    let b = h.connect(2, true);
    for s in [a, b] {
        h.msg(s, Message::HaveAll);
    }
    h.msg(a, Message::Unchoke);
    h.msg(b, Message::Unchoke);
    let mut banned_after = None;
    let mut dropped = Vec::new();
    for round in 1..=3 {
        // Both peers send one block of every piece: both contribute to each piece.
        for _ in 0..8 {
            h.answer(a, 1);
            h.answer(b, 1);
        }
        let verify: Vec<u32> = h
            .log
            .drain(..)
            .filter_map(|x| match x {
                Action::VerifyPiece { piece } => Some(piece),
                _ => None,
            })
            .collect();
        for p in verify {
            h.e.piece_verified(h.now, p, false);
        }
        let acts = h.drain();
        dropped.extend([a, b].into_iter().filter_map(|s| disconnected(&acts, s)));
        if !dropped.is_empty() {
            banned_after = Some(round);
            break;
        }
    }
    assert_eq!(
        banned_after,
        Some(1),
        "two failed pieces in round 1 reach 2 strikes"
    );
    assert_eq!(dropped, vec![DisconnectReason::BadData; 2]);
    assert_eq!(h.e.stats().banned, 2);
}

#[test]
fn silent_peer_is_snubbed_requests_move_then_dropped() {
    let cfg = Config {
        min_pipeline: 4,
        ..Config::default()
    };
    let mut h = Harness::leecher(4, 4 * B, cfg);
    let slow = h.connect(1, true);
    h.msg(slow, Message::HaveAll);
    let r = requests(&h.msg(slow, Message::Unchoke), slow);
    assert_eq!(r.len(), 4);
    let other = h.connect(2, true);
    h.msg(other, Message::HaveAll);
    let acts = h.advance(Duration::from_secs(61));
    for b in &r {
        assert!(
            sent(&acts, slow, &Message::Cancel(*b)),
            "no cancel for {b:?}"
        );
    }
    assert!(h.e.peer_stats(slow).unwrap().snubbed);
    // The other peer unchokes and is asked for the blocks the snubbed peer held.
    let r2 = requests(&h.msg(other, Message::Unchoke), other);
    assert!(
        r.iter().all(|b| r2.contains(b)),
        "{r:?} not re-requested in {r2:?}"
    );
    let acts = h.advance(Duration::from_secs(60));
    assert_eq!(
        disconnected(&acts, slow),
        Some(DisconnectReason::Unresponsive)
    );
}

#[test]
fn a_peer_that_sits_on_requests_is_snubbed_in_seconds_once_others_deliver() {
    let cfg = Config {
        min_pipeline: 2,
        ..Config::default()
    };
    let mut h = Harness::leecher(64, 4 * B, cfg);
    let good = h.connect(1, true);
    h.msg(good, Message::HaveAll);
    h.msg(good, Message::Unchoke);
    let silent = h.connect(2, true);
    h.msg(silent, Message::HaveAll);
    let r = requests(&h.msg(silent, Message::Unchoke), silent);
    assert!(!r.is_empty());
    // The good peer answers within 100 ms, again and again; the silent one never does.
    for _ in 0..40 {
        h.advance(Duration::from_millis(100));
        h.answer(good, 2);
    }
    assert!(!h.e.peer_stats(silent).unwrap().snubbed, "not at 4 s");
    for _ in 0..60 {
        h.advance(Duration::from_millis(100));
        h.answer(good, 2);
    }
    assert!(
        h.e.peer_stats(silent).unwrap().snubbed,
        "snubbed by 10 s, not 60: latency {:?}",
        h.e.block_latency
    );
}

#[test]
fn fast_semantics_when_serving() {
    let mut have = Bitfield::new(4);
    have.set(0);
    let mut h = Harness::new(
        4,
        2 * B,
        have,
        Config {
            upload_slots: 1,
            ..Config::default()
        },
        1,
    );
    let p = h.connect(1, true);
    h.msg(p, Message::HaveNone);
    let b0 = Block {
        piece: 0,
        offset: 0,
        length: B,
    };
    // Choked: rejected, not dropped.
    assert!(sent(
        &h.msg(p, Message::Request(b0)),
        p,
        &Message::RejectRequest(b0)
    ));
    let acts = h.msg(p, Message::Interested);
    assert!(sent(&acts, p, &Message::Unchoke));
    // A piece we do not have: rejected.
    let b1 = Block {
        piece: 1,
        offset: 0,
        length: B,
    };
    assert!(sent(
        &h.msg(p, Message::Request(b1)),
        p,
        &Message::RejectRequest(b1)
    ));
    // Served.
    let acts = h.msg(p, Message::Request(b0));
    assert!(acts.contains(&Action::ReadBlock { slot: p, block: b0 }));
    // Out of range: dropped with a reason.
    let bad = Block {
        piece: 0,
        offset: B + 1,
        length: B,
    };
    assert_eq!(
        disconnected(&h.msg(p, Message::Request(bad)), p),
        Some(DisconnectReason::BadRequest(bad))
    );
}

#[test]
fn choking_rejects_queued_requests_and_cancel_is_answered() {
    let cfg = Config {
        upload_slots: 1,
        upload_rate_limit: 1,
        ..Config::default()
    };
    let mut h = Harness::seeder(4, 4 * B, cfg);
    let a = h.connect(1, true);
    h.msg(a, Message::HaveNone);
    h.msg(a, Message::Interested);
    let blocks: Vec<_> = (0..8)
        .map(|i| Block {
            piece: 1 + i / 4,
            offset: (i % 4) * B,
            length: B,
        })
        .collect();
    for b in &blocks {
        h.msg(a, Message::Request(*b));
    }
    // The burst covers 4 blocks; the rate limit keeps the rest queued. A cancel of a
    // queued one is rejected.
    assert!(sent(
        &h.msg(a, Message::Cancel(blocks[7])),
        a,
        &Message::RejectRequest(blocks[7])
    ));
    // A second peer takes the only slot at the next round: a is choked and its queue rejected.
    let b = h.connect(2, true);
    h.msg(b, Message::HaveNone);
    h.msg(b, Message::Interested);
    h.msg(a, Message::NotInterested);
    let acts = h.advance(Duration::from_secs(10));
    assert!(sent(&acts, a, &Message::Choke));
    assert!(
        sent(&acts, a, &Message::RejectRequest(blocks[6])),
        "{acts:?}"
    );
}

#[test]
fn messages_for_the_driver_are_ignored() {
    let mut h = Harness::leecher(10, B, Config::default());
    let p = h.connect(1, false);
    for m in [
        Message::KeepAlive,
        Message::Port(6881),
        Message::Extended {
            id: 0,
            payload: Bytes::from_static(b"de"),
        },
        Message::Unknown {
            id: 21,
            payload: Bytes::from_static(b"x"),
        },
    ] {
        assert!(h.msg(p, m).is_empty());
    }
    let acts = h.msg(p, bitfield_msg(10, |i| i == 3));
    assert!(sent(&acts, p, &Message::Interested), "{acts:?}");
    assert_eq!(h.e.peer_slots(), vec![p]);
}

#[test]
fn hostile_bitfields_and_messages_are_dropped_with_reasons() {
    let mut h = Harness::leecher(10, B, Config::default());
    let p = h.connect(1, false);
    let acts = h.msg(p, Message::Bitfield(Bytes::from_static(&[0xff])));
    assert!(matches!(
        disconnected(&acts, p),
        Some(DisconnectReason::BadBitfield(
            BitfieldError::WrongLength { .. }
        ))
    ));
    let p = h.connect(2, false);
    let acts = h.msg(p, Message::Bitfield(Bytes::from_static(&[0xff, 0xff])));
    assert_eq!(
        disconnected(&acts, p),
        Some(DisconnectReason::BadBitfield(BitfieldError::SpareBitsSet))
    );
    let p = h.connect(3, false);
    assert_eq!(
        disconnected(&h.msg(p, Message::Have { piece: 10 }), p),
        Some(DisconnectReason::PieceOutOfRange(10))
    );
    let p = h.connect(4, false);
    assert!(matches!(
        disconnected(&h.msg(p, Message::HaveAll), p),
        Some(DisconnectReason::FastNotNegotiated(_))
    ));
    // A late bitfield is still checked.
    let p = h.connect(5, true);
    h.msg(p, Message::Have { piece: 1 });
    assert_eq!(
        disconnected(
            &h.msg(p, Message::Bitfield(Bytes::from_static(&[0xff, 0xff]))),
            p
        ),
        Some(DisconnectReason::BadBitfield(BitfieldError::SpareBitsSet))
    );
    // Unrequested data floods are cut off.
    let cfg = Config {
        max_unwanted_blocks: 3,
        ..Config::default()
    };
    let mut h = Harness::leecher(10, B, cfg);
    let p = h.connect(6, true);
    let mut reason = None;
    for i in 0..10 {
        reason = reason.or(disconnected(
            &h.msg(
                p,
                block_msg(Block {
                    piece: i,
                    offset: 0,
                    length: B,
                }),
            ),
            p,
        ));
    }
    assert_eq!(reason, Some(DisconnectReason::UnrequestedData));
    // Stale slots are ignored, not confused with the new peer in the same slot.
    let q = h.connect(7, true);
    assert_eq!(q.index(), p.index());
    h.msg(p, Message::HaveAll);
    assert!(!h.e.peer_stats(q).unwrap().is_seed);
}

/// What aria2 1.36 sends as a leecher: have-none first, then, once it has 20 or more new
/// pieces, its whole bitfield again instead of haves (have-all once complete). We used to
/// drop it for that, so aria2 could never finish a download from us.
#[test]
fn aria2_late_bitfield_and_have_all_add_pieces() {
    // Serving: the late bitfield does not cost aria2 its connection or its requests.
    let mut h = Harness::seeder(30, B, Config::default());
    let p = h.connect(1, true);
    h.msg(p, Message::HaveNone);
    let mut acts = h.msg(p, Message::Interested);
    acts.extend(h.advance(Duration::from_secs(1)));
    assert!(sent(&acts, p, &Message::Unchoke), "{acts:?}");
    let acts = h.msg(p, bitfield_msg(30, |i| i % 3 == 0));
    assert_eq!(disconnected(&acts, p), None);
    let block = Block {
        piece: 1,
        offset: 0,
        length: B,
    };
    let acts = h.msg(p, Message::Request(block));
    assert_eq!(disconnected(&acts, p), None);
    assert!(!sent(&acts, p, &Message::RejectRequest(block)), "{acts:?}");

    // Fetching: pieces in a late bitfield become requestable, then a late have-all too.
    let mut h = Harness::leecher(30, B, Config::default());
    let p = h.connect(1, true);
    h.msg(p, Message::HaveNone);
    h.msg(p, Message::Unchoke);
    let acts = h.msg(p, bitfield_msg(30, |i| i == 4 || i == 7));
    assert_eq!(disconnected(&acts, p), None);
    let asked = requests(&acts, p);
    assert!(!asked.is_empty(), "{acts:?}");
    assert!(
        asked.iter().all(|b| b.piece == 4 || b.piece == 7),
        "{asked:?}"
    );
    // A later have-none takes nothing away; a later have-all makes it a seed.
    assert_eq!(disconnected(&h.msg(p, Message::HaveNone), p), None);
    h.answer(p, asked.len());
    let acts = h.msg(p, Message::HaveAll);
    assert_eq!(disconnected(&acts, p), None);
    let asked = h.requested.get(&p).cloned().unwrap_or_default();
    assert!(
        asked.iter().any(|b| b.piece != 4 && b.piece != 7),
        "{asked:?}"
    );
}

#[test]
fn allowed_fast_pieces_are_requested_while_choked() {
    let mut h = Harness::leecher(8, B, Config::default());
    let p = h.connect(1, true);
    h.msg(p, Message::HaveAll);
    let acts = h.msg(p, Message::AllowedFast { piece: 5 });
    assert_eq!(
        requests(&acts, p),
        vec![Block {
            piece: 5,
            offset: 0,
            length: B
        }]
    );
    // Rejecting it takes it off the allowed list; nothing else is requested while choked.
    let acts = h.msg(
        p,
        Message::RejectRequest(Block {
            piece: 5,
            offset: 0,
            length: B,
        }),
    );
    assert!(requests(&acts, p).is_empty());
}

#[test]
fn completion_announces_haves_and_drops_seeds() {
    let mut h = Harness::leecher(2, B, Config::default());
    let s = h.connect(1, true);
    let l = h.connect(2, true);
    h.msg(s, Message::HaveAll);
    h.msg(l, Message::HaveNone);
    h.msg(s, Message::Unchoke);
    h.answer(s, 2);
    h.e.piece_verified(h.now, 0, true);
    h.e.piece_verified(h.now, 1, true);
    let acts = h.drain();
    assert!(sent(&acts, l, &Message::Have { piece: 0 }));
    assert!(!sent(&acts, s, &Message::Have { piece: 0 }));
    assert!(acts.contains(&Action::Completed));
    assert_eq!(disconnected(&acts, s), Some(DisconnectReason::BothSeeds));
    assert_eq!(h.e.stats().bytes_left, 0);
}

fn suggestions(actions: &[Action], to: PeerSlot) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                slot,
                message: Message::Suggest { piece: p },
            } if *slot == to => Some(*p),
            _ => None,
        })
        .collect()
}

fn reads(actions: &[Action]) -> Vec<(PeerSlot, Block)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ReadBlock { slot, block } => Some((*slot, *block)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_seed_suggests_pieces_it_has_not_handed_out_yet() {
    let pieces = 8;
    let mut h = Harness::seeder(pieces, 2 * B, Config::default());
    let peers: Vec<_> = (1..=3).map(|k| h.connect(k, true)).collect();
    let mut all = Vec::new();
    for &p in &peers {
        h.msg(p, Message::HaveNone);
        let acts = h.msg(p, Message::Interested);
        // Two suggestions, sent before the unchoke so the first pick can use them.
        let s = suggestions(&acts, p);
        assert_eq!(s.len(), 2, "{acts:?}");
        let unchoke_at = acts
            .iter()
            .position(
                |a| matches!(a, Action::Send { slot, message: Message::Unchoke } if *slot == p),
            )
            .expect("unchoked");
        let first_suggest = acts
            .iter()
            .position(|a| {
                matches!(
                    a,
                    Action::Send {
                        message: Message::Suggest { .. },
                        ..
                    }
                )
            })
            .unwrap();
        assert!(first_suggest < unchoke_at);
        all.extend(s);
    }
    // Six suggestions, six different pieces: no second copy while others have none.
    let mut distinct = all.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "{all:?}");
    // Asking for a suggested piece brings the next suggestion: one of the two pieces
    // nobody was offered yet.
    let p = peers[0];
    let asked = all[0];
    let acts = h.msg(
        p,
        Message::Request(Block {
            piece: asked,
            offset: 0,
            length: B,
        }),
    );
    let next = suggestions(&acts, p);
    assert_eq!(next.len(), 1, "{acts:?}");
    assert!(
        !all.contains(&next[0]),
        "{next:?} already offered in {all:?}"
    );
    // A peer without the Fast extension gets no suggest messages (BEP 6).
    let slow = h.connect(9, false);
    let acts = h.msg(slow, Message::Interested);
    assert!(suggestions(&acts, slow).is_empty());
    // Off when configured so.
    let mut h = Harness::seeder(
        pieces,
        2 * B,
        Config {
            seed_suggestions: 0,
            ..Config::default()
        },
    );
    let p = h.connect(1, true);
    h.msg(p, Message::HaveNone);
    assert!(suggestions(&h.msg(p, Message::Interested), p).is_empty());
}

/// A seed with a total of 4 blocks in flight (2 per peer) and three peers each asking
/// for a whole 4-block piece.
fn three_requesters(total: u32) -> (Harness, Vec<PeerSlot>, Vec<Action>) {
    let mut h = Harness::seeder(
        4,
        4 * B,
        Config {
            max_uploads_in_flight_total: total,
            seed_suggestions: 0,
            ..Config::default()
        },
    );
    let peers: Vec<_> = (1..=3).map(|k| h.connect(k, true)).collect();
    let mut acts = Vec::new();
    for (i, &p) in peers.iter().enumerate() {
        h.msg(p, Message::HaveNone);
        h.msg(p, Message::Interested);
        for k in 0..4 {
            acts.extend(h.msg(
                p,
                Message::Request(Block {
                    piece: i as u32,
                    offset: k * B,
                    length: B,
                }),
            ));
        }
    }
    (h, peers, acts)
}

#[test]
fn uploads_finish_a_peers_piece_before_starting_another() {
    let (mut h, peers, acts) = three_requesters(4);
    let (a, b, c) = (peers[0], peers[1], peers[2]);
    let who = |r: &[(PeerSlot, Block)]| r.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(who(&reads(&acts)), vec![a, a, b, b]);
    // As blocks leave, the peers part-way through their pieces go on; the third waits
    // although it has been queued longer than their later blocks.
    let mut order = Vec::new();
    for _ in 0..4 {
        for p in [a, b] {
            h.e.block_sent(h.now, p);
            order.extend(who(&reads(&h.drain())));
        }
    }
    assert_eq!(&order[..4], &[a, b, a, b], "{order:?}");
    assert!(order[4..].iter().all(|&p| p == c), "{order:?}");
    assert_eq!(order.len(), 6);

    // Without a total limit every peer is served at once, round-robin.
    let (_, peers, acts) = three_requesters(0);
    let first: Vec<_> = who(&reads(&acts));
    assert_eq!(first.len(), 12);
    assert!(peers.iter().all(|p| first.contains(p)));
}

#[test]
fn stuck_or_departed_peers_do_not_hold_up_uploads() {
    let (mut h, peers, acts) = three_requesters(4);
    let c = peers[2];
    assert_eq!(reads(&acts).len(), 4);
    // Nothing reported sent: after a while a and b count as stuck, and c is served.
    let later = h.advance(UPLOAD_STALL + Duration::from_secs(1));
    assert!(reads(&later).iter().any(|r| r.0 == c), "{later:?}");
    // A peer that leaves gives back its share at once (a driver may never report the
    // blocks of a closed connection as sent).
    let (mut h, peers, _) = three_requesters(4);
    h.e.peer_disconnected(h.now, peers[0]);
    let acts = h.drain();
    assert!(reads(&acts).iter().any(|r| r.0 == peers[2]), "{acts:?}");
    // Its late reports change nothing.
    h.e.block_sent(h.now, peers[0]);
    h.e.block_sent(h.now, peers[0]);
    assert!(reads(&h.drain()).is_empty());
}

/// A peer that has everything, unchokes us again and again and never sends a block must
/// not hold the download: its requests move to the peer that sends.
#[test]
fn an_unchoke_flood_from_a_peer_that_never_sends_does_not_stall_the_download() {
    let mut h = Harness::leecher(16, 4 * B, Config::default());
    let good = h.connect(1, true);
    let flooder = h.connect(2, true);
    h.msg(flooder, Message::HaveAll);
    h.msg(flooder, Message::Unchoke);
    h.msg(good, Message::HaveAll);
    h.msg(good, Message::Unchoke);
    let mut done_at = None;
    for step in 0..1200u32 {
        // Every 50 ms: the flooder unchokes us 20 times more; the good peer answers
        // two requests (the verifications pass at once).
        h.advance(Duration::from_millis(50));
        for _ in 0..20 {
            h.msg(flooder, Message::Unchoke);
        }
        h.answer(good, 2);
        let verify: Vec<u32> = h
            .log
            .drain(..)
            .filter_map(|a| match a {
                Action::VerifyPiece { piece } => Some(piece),
                _ => None,
            })
            .collect();
        for p in verify {
            h.e.piece_verified(h.now, p, true);
        }
        h.drain();
        if h.e.is_complete() {
            done_at = Some(step);
            break;
        }
    }
    // 64 blocks at 40 a second take under 2 s; the flooder may cost a snub timeout or two.
    let done_at = done_at.expect("complete within a minute");
    assert!(done_at * 50 < 20_000, "complete after {} ms", done_at * 50);
}

/// A peer that says it unchokes us but rejects every request is snubbed: the blocks it
/// bounces go to other peers instead of back to it at once.
#[test]
fn a_peer_that_unchokes_but_rejects_every_request_is_snubbed() {
    let mut h = Harness::leecher(8, 4 * B, Config::default());
    let liar = h.connect(1, true);
    h.msg(liar, Message::HaveAll);
    let mut acts = h.msg(liar, Message::Unchoke);
    let mut rejected = 0;
    for _ in 0..100 {
        let r = requests(&acts, liar);
        if r.is_empty() || h.e.peer_stats(liar).unwrap().snubbed {
            break;
        }
        acts = Vec::new();
        for b in r {
            rejected += 1;
            acts.extend(h.msg(liar, Message::RejectRequest(b)));
        }
    }
    let st = h.e.peer_stats(liar).unwrap();
    assert!(st.snubbed, "not snubbed after {rejected} rejects");
    // One batch of requests at most, then one probe at a time.
    assert!(rejected <= 32, "{rejected} rejects before it was snubbed");
    assert!(st.requests_out <= 1, "{st:?}");
}
