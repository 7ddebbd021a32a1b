//! Virtual-time tests of the torrent core: cores fed by hand, time moved by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::peer::{Block, Message, PeerId, Reserved};

const PIECE: u32 = 32 * 1024;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn id(n: u8) -> PeerId {
    PeerId([n; 20])
}

/// An info dictionary of `pieces` pieces of [`PIECE`] bytes (hashes are not checked by
/// the core: the driver verifies).
fn info(pieces: u32) -> (Info, Bytes) {
    let total = pieces as u64 * PIECE as u64;
    let mut raw = format!(
        "d6:lengthi{total}e4:name4:data12:piece lengthi{PIECE}e6:pieces{}:",
        20 * pieces
    )
    .into_bytes();
    raw.extend(std::iter::repeat_n(0u8, 20 * pieces as usize));
    raw.push(b'e');
    let raw = Bytes::from(raw);
    (Info::from_bytes(&raw).unwrap(), raw)
}

fn cfg(peer: u8) -> CoreConfig {
    CoreConfig {
        peer_id: id(peer),
        listen_port: Some(6881),
        listen_ip: Some("127.0.0.100".parse().unwrap()),
        ..CoreConfig::default()
    }
}

fn seeder(peer: u8, now: Instant) -> TorrentCore {
    let (i, raw) = info(4);
    let have = Bitfield::full(4);
    TorrentCore::with_metadata(InfoHash([9; 20]), &i, raw, have, cfg(peer), now).unwrap()
}

fn leecher(peer: u8, pieces: u32, now: Instant) -> TorrentCore {
    let (i, raw) = info(pieces);
    let have = Bitfield::new(pieces);
    TorrentCore::with_metadata(InfoHash([9; 20]), &i, raw, have, cfg(peer), now).unwrap()
}

fn drain(core: &mut TorrentCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn dials(outs: &[Output]) -> Vec<(ConnId, SocketAddr)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Dial { conn, addr, .. } => Some((*conn, *addr)),
            _ => None,
        })
        .collect()
}

fn closes(outs: &[Output]) -> Vec<(ConnId, String)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Close { conn, reason } => Some((*conn, reason.clone())),
            _ => None,
        })
        .collect()
}

fn requests_to(outs: &[Output], to: ConnId) -> Vec<Block> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn,
                msg: Message::Request(r),
            } if *conn == to => Some(*r),
            _ => None,
        })
        .collect()
}

const FAST_EXT: Reserved = Reserved::OURS;

/// Dials `peer_addr` from `core` and completes the handshake with `peer`.
fn connect_out(
    core: &mut TorrentCore,
    now: Instant,
    peer_addr: SocketAddr,
    peer: PeerId,
) -> ConnId {
    core.add_peer(now, peer_addr, PeerSource::Dht);
    let d = dials(&drain(core));
    assert_eq!(d.len(), 1, "one dial");
    let (conn, a) = d[0];
    assert_eq!(a, peer_addr);
    core.handshake_done(now, conn, peer, FAST_EXT);
    conn
}

/// A seed `peer` at `peer_addr` dialed by `core`, which it unchokes.
fn seed_peer(core: &mut TorrentCore, now: Instant, peer_addr: SocketAddr, peer: PeerId) -> ConnId {
    let conn = connect_out(core, now, peer_addr, peer);
    core.message(now, conn, Message::HaveAll);
    core.message(now, conn, Message::Unchoke);
    conn
}

fn block(r: &Block, fill: u8) -> Message {
    Message::Piece {
        piece: r.piece,
        offset: r.offset,
        data: Bytes::from(vec![fill; r.length as usize]),
    }
}

#[test]
fn simultaneous_open_both_sides_keep_the_same_connection() {
    let now = Instant::now();
    for (a_id, b_id) in [(1u8, 2u8), (2, 1)] {
        let mut a = seeder(a_id, now);
        let mut b = leecher(b_id, 4, now);
        // a dials b (conn a1 at a, accepted as b1 at b) and b dials a (b2 / a2).
        let a1 = connect_out(&mut a, now, addr("127.0.0.2:6881"), id(b_id));
        let b1 = b.accept(now, addr("127.0.0.1:40000")).unwrap();
        let b2 = connect_out(&mut b, now, addr("127.0.0.1:6881"), id(a_id));
        let a2 = a.accept(now, addr("127.0.0.2:40001")).unwrap();
        b.handshake_done(now, b1, id(a_id), FAST_EXT);
        a.handshake_done(now, a2, id(b_id), FAST_EXT);
        let (ca, cb) = (closes(&drain(&mut a)), closes(&drain(&mut b)));
        assert_eq!(ca.len(), 1, "{ca:?}");
        assert_eq!(cb.len(), 1, "{cb:?}");
        // The connection a opened is a1 at a and b1 at b.
        let a_keeps_its_own = ca[0].0 == a2;
        let b_keeps_as_incoming = cb[0].0 == b2;
        assert_eq!(
            a_keeps_its_own, b_keeps_as_incoming,
            "both keep the same one"
        );
        assert_eq!(
            a_keeps_its_own,
            a_id < b_id,
            "the smaller id's connection wins"
        );
        assert!(ca[0].1.contains("duplicate"));
        assert_eq!(a.connection_count(), 1);
        assert_eq!(b.connection_count(), 1);
        let _ = a1;
    }
}

#[test]
fn a_peer_that_closes_after_the_handshake_is_dialed_again_with_backoff() {
    let t0 = Instant::now();
    let mut s = seeder(1, t0);
    // A leecher connects to us, says where it listens, then drops us (as Transmission
    // does after the metadata).
    let c = s.accept(t0, addr("127.0.0.5:50000")).unwrap();
    s.handshake_done(t0, c, id(5), FAST_EXT);
    let hs = ExtendedHandshake {
        listen_port: Some(51413),
        ..Default::default()
    };
    s.message(
        t0,
        c,
        Message::Extended {
            id: HANDSHAKE_ID,
            payload: Bytes::from(hs.encode()),
        },
    );
    drain(&mut s);
    s.closed(t0, c, "closed by peer");
    assert!(dials(&drain(&mut s)).is_empty(), "not at once");
    let at = s.poll_timeout().unwrap();
    assert!(
        at > t0 && at <= t0 + Duration::from_secs(2),
        "{:?}",
        at - t0
    );
    s.handle_timeout(t0 + Duration::from_secs(2));
    let d = dials(&drain(&mut s));
    assert_eq!(
        d.iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![addr("127.0.0.5:51413")]
    );
    // That dial fails, and the next comes later still.
    s.closed(t0 + Duration::from_secs(2), d[0].0, "connect failed");
    s.handle_timeout(t0 + Duration::from_secs(2));
    assert!(dials(&drain(&mut s)).is_empty());
    s.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(dials(&drain(&mut s)).len(), 1);
}

#[test]
fn a_seed_that_leaves_a_seed_is_not_dialed_again() {
    let t0 = Instant::now();
    let mut s = seeder(1, t0);
    let c = connect_out(&mut s, t0, addr("127.0.0.5:6881"), id(5));
    s.message(t0, c, Message::HaveNone);
    drain(&mut s);
    // A leecher that left: dialed again.
    s.closed(t0, c, "closed by peer");
    s.handle_timeout(t0 + Duration::from_secs(5));
    let d = dials(&drain(&mut s));
    assert_eq!(d.len(), 1);
    s.handshake_done(t0 + Duration::from_secs(5), d[0].0, id(5), FAST_EXT);
    // Now it is a seed too: we drop it, and nobody dials anybody.
    s.message(t0 + Duration::from_secs(5), d[0].0, Message::HaveAll);
    let c2 = closes(&drain(&mut s));
    assert_eq!(c2.len(), 1, "both seeds: {c2:?}");
    s.handle_timeout(t0 + Duration::from_secs(600));
    assert!(dials(&drain(&mut s)).is_empty());
}

#[test]
fn bad_data_bans_the_endpoint_and_peer_id_not_the_ip() {
    let t0 = Instant::now();
    let mut l = leecher(1, 2, t0);
    let bad = seed_peer(&mut l, t0, addr("127.0.0.7:1000"), id(7));
    let outs = drain(&mut l);
    let reqs = requests_to(&outs, bad);
    assert!(!reqs.is_empty());
    // It sends every block of piece 0: the piece fails, it was the only source.
    for r in reqs.iter().filter(|r| r.piece == 0) {
        l.message(t0, bad, block(r, 0xEE));
    }
    let verify: Vec<u32> = drain(&mut l)
        .iter()
        .filter_map(|o| match o {
            Output::Verify { piece, .. } => Some(*piece),
            _ => None,
        })
        .collect();
    assert_eq!(verify, vec![0]);
    l.piece_written(t0, 0, Ok(false));
    let c = closes(&drain(&mut l));
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].0, bad);
    // Another client behind the same IP is fine; the bad endpoint and id are not.
    l.add_peer(t0, addr("127.0.0.7:1000"), PeerSource::Dht);
    assert!(
        dials(&drain(&mut l)).is_empty(),
        "banned endpoint not dialed"
    );
    let honest = connect_out(&mut l, t0, addr("127.0.0.7:2000"), id(8));
    assert_eq!(l.connection_count(), 1);
    let again = l.accept(t0, addr("127.0.0.7:3000")).unwrap();
    l.handshake_done(t0, again, id(7), FAST_EXT);
    let c = closes(&drain(&mut l));
    assert_eq!(
        c,
        vec![(again, "banned".to_string())],
        "same peer id, new port"
    );
    let _ = honest;
}

#[test]
fn smart_ban_convicts_the_sender_of_the_bad_block_and_clears_the_honest_one() {
    let t0 = Instant::now();
    let mut l = leecher(1, 1, t0);
    let honest = seed_peer(&mut l, t0, addr("127.0.0.8:1000"), id(8));
    let rh = requests_to(&drain(&mut l), honest);
    let liar = seed_peer(&mut l, t0, addr("127.0.0.8:2000"), id(9));
    let rl = requests_to(&drain(&mut l), liar);
    assert_eq!(rh.len(), 2, "{rh:?}");
    assert!(rl.contains(&rh[1]), "endgame asks the liar too: {rl:?}");
    // The liar's wrong copy of block 1 arrives first; the honest peer's block 0 next.
    l.message(t0, liar, block(&rh[1], 2));
    l.message(t0, honest, block(&rh[0], 1));
    l.message(t0, honest, block(&rh[1], 1));
    drain(&mut l);
    l.piece_written(t0, 0, Ok(false));
    let outs = drain(&mut l);
    assert!(
        closes(&outs).is_empty(),
        "two contributors: nobody is blamed yet"
    );
    // The piece is fetched again; the honest peer's copy comes first this time.
    let again = requests_to(&outs, honest);
    assert_eq!(again.len(), 2, "{outs:?}");
    let t1 = t0 + Duration::from_secs(1);
    for r in &again {
        l.message(t1, honest, block(r, 1));
    }
    drain(&mut l);
    l.piece_written(t1, 0, Ok(true));
    let c = closes(&drain(&mut l));
    assert!(l.is_complete());
    // The liar is dropped for its block; the honest peer only because we are both seeds.
    assert!(
        c.iter()
            .any(|(conn, why)| *conn == liar && why.contains("hash check")),
        "{c:?}"
    );
    assert!(
        c.iter()
            .all(|(conn, why)| *conn == liar || why.contains("seeds")),
        "{c:?}"
    );
    // The liar's endpoint is banned; its IP is not.
    l.add_peer(t1, addr("127.0.0.8:2000"), PeerSource::Dht);
    assert!(dials(&drain(&mut l)).is_empty());
    assert_eq!(l.banned_endpoints(), 1);
}

#[test]
fn a_silent_metadata_source_times_out_and_another_peer_is_asked() {
    let t0 = Instant::now();
    let mut m = TorrentCore::magnet(InfoHash([9; 20]), cfg(1), t0);
    let ext = |size: u64| {
        let mut hs = ExtendedHandshake::ours(Some(6881), Some(size), None);
        hs.extensions.insert(UT_METADATA.into(), 3);
        Message::Extended {
            id: HANDSHAKE_ID,
            payload: Bytes::from(hs.encode()),
        }
    };
    let silent = connect_out(&mut m, t0, addr("127.0.0.9:1"), id(9));
    m.message(t0, silent, ext(1000));
    let asked = |outs: &[Output], to: ConnId| {
        outs.iter().any(|o| {
            matches!(o, Output::Send { conn, msg: Message::Extended { id: 3, .. } } if *conn == to)
        })
    };
    assert!(asked(&drain(&mut m), silent));
    let t1 = t0 + Duration::from_secs(2);
    let honest = connect_out(&mut m, t1, addr("127.0.0.9:2"), id(10));
    m.message(t1, honest, ext(1000));
    assert!(
        !asked(&drain(&mut m), honest),
        "the one block is out already"
    );
    let at = m.poll_timeout().unwrap();
    assert!(
        at <= t0 + Duration::from_secs(3),
        "a silent source is given seconds"
    );
    m.handle_timeout(at);
    assert!(
        asked(&drain(&mut m), honest),
        "the block goes to the other peer"
    );
}

#[test]
fn resending_the_extended_handshake_keeps_a_peers_metadata_strikes() {
    let t0 = Instant::now();
    let mut m = TorrentCore::magnet(InfoHash([9; 20]), cfg(1), t0);
    let mut hs = ExtendedHandshake::ours(Some(6881), Some(1000), None);
    hs.extensions.insert(UT_METADATA.into(), 3);
    let ext = Message::Extended {
        id: HANDSHAKE_ID,
        payload: Bytes::from(hs.encode()),
    };
    let c = connect_out(&mut m, t0, addr("127.0.0.9:1"), id(9));
    m.message(t0, c, ext.clone());
    let mut t = t0;
    let mut asked = 0;
    for _ in 0..20 {
        let outs = drain(&mut m);
        asked += outs
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::Send {
                        msg: Message::Extended { id: 3, .. },
                        ..
                    }
                )
            })
            .count();
        // It never answers, and says hello again after each timeout.
        t += Duration::from_secs(4);
        m.handle_timeout(t);
        m.message(t, c, ext.clone());
    }
    assert!(
        asked <= 3,
        "asked {asked} times: strikes must survive a new handshake"
    );
}

#[test]
fn a_flood_of_extended_handshakes_is_dropped() {
    let t0 = Instant::now();
    let mut s = seeder(1, t0);
    let c = connect_out(&mut s, t0, addr("127.0.0.9:1"), id(9));
    let hs = Message::Extended {
        id: HANDSHAKE_ID,
        payload: Bytes::from(ExtendedHandshake::ours(None, None, None).encode()),
    };
    for _ in 0..100 {
        s.message(t0, c, hs.clone());
    }
    let c2 = closes(&drain(&mut s));
    assert_eq!(c2.len(), 1, "{c2:?}");
    assert!(c2[0].1.contains("extended handshakes"));
}

#[test]
fn one_ip_cannot_take_every_slot() {
    let t0 = Instant::now();
    let mut s = seeder(1, t0);
    let limit = CoreConfig::default().max_conns_per_ip;
    for port in 0..limit as u16 {
        s.accept(
            t0,
            SocketAddr::new("127.0.0.3".parse().unwrap(), 1000 + port),
        )
        .unwrap();
    }
    assert_eq!(
        s.accept(t0, addr("127.0.0.3:9999")),
        Err(Refusal::PerIpLimit)
    );
    assert!(
        s.accept(t0, addr("127.0.0.4:1")).is_ok(),
        "other hosts still get in"
    );
    // Dials to that IP wait too.
    s.add_peer(t0, addr("127.0.0.3:6881"), PeerSource::Dht);
    assert!(dials(&drain(&mut s)).is_empty());
}

#[test]
fn an_unrequested_block_never_enters_a_piece() {
    let t0 = Instant::now();
    let mut l = leecher(1, 1, t0);
    let p = connect_out(&mut l, t0, addr("127.0.0.9:1"), id(9));
    l.message(t0, p, Message::HaveAll);
    // Choked: nothing requested. A block arrives anyway.
    drain(&mut l);
    let r = Block {
        piece: 0,
        offset: 0,
        length: 16384,
    };
    l.message(t0, p, block(&r, 7));
    let outs = drain(&mut l);
    assert!(!outs.iter().any(|o| matches!(o, Output::Verify { .. })));
    assert_eq!(l.engine().unwrap().stats().downloaded, 0);
    assert_eq!(l.engine().unwrap().stats().wasted, 16384);
}

#[test]
fn our_own_address_is_never_dialed() {
    let t0 = Instant::now();
    let mut s = seeder(1, t0);
    s.add_peer(t0, addr("127.0.0.100:6881"), PeerSource::Dht);
    assert!(dials(&drain(&mut s)).is_empty());
    // An address that turns out to be us (NAT) is remembered.
    let c = connect_out(&mut s, t0, addr("127.9.9.9:7000"), id(1));
    assert_eq!(
        closes(&drain(&mut s)),
        vec![(c, "connected to ourselves".into())]
    );
    s.add_peer(t0, addr("127.9.9.9:7000"), PeerSource::Explicit);
    assert!(dials(&drain(&mut s)).is_empty());
}

#[test]
fn peers_we_close_do_not_fill_the_dial_table() {
    let t0 = Instant::now();
    let cfg = CoreConfig {
        dial: DialConfig {
            max_known: 8,
            ..DialConfig::default()
        },
        ..cfg(1)
    };
    let (i, raw) = info(4);
    let mut s =
        TorrentCore::with_metadata(InfoHash([9; 20]), &i, raw, Bitfield::full(4), cfg, t0).unwrap();
    // Twenty seeds in a row: each is dropped by us (both seeds), none stays "connected".
    for n in 0..20u8 {
        let a = SocketAddr::new(std::net::IpAddr::from([127, 1, 0, n]), 6881);
        let c = connect_out(&mut s, t0, a, id(100 + n));
        s.message(t0, c, Message::HaveAll);
        assert_eq!(closes(&drain(&mut s)).len(), 1);
    }
    // A new peer still gets dialed.
    s.add_peer(t0, addr("127.2.0.1:6881"), PeerSource::Pex);
    assert_eq!(dials(&drain(&mut s)).len(), 1);
}

#[test]
fn dht_ports_are_exchanged_with_port_messages() {
    let t0 = Instant::now();
    let (i, raw) = info(4);
    let with_dht = CoreConfig {
        dht_port: Some(7000),
        ..cfg(1)
    };
    let mut s =
        TorrentCore::with_metadata(InfoHash([9; 20]), &i, raw, Bitfield::full(4), with_dht, t0)
            .unwrap();
    assert!(s.reserved().dht());
    s.add_peer(t0, addr("127.0.0.9:1"), PeerSource::Dht);
    let (c, _) = dials(&drain(&mut s))[0];
    s.handshake_done(t0, c, id(9), Reserved::OURS);
    let outs = drain(&mut s);
    assert!(outs.contains(&Output::Send {
        conn: c,
        msg: Message::Port(7000)
    }));
    s.message(t0, c, Message::Port(6999));
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(events.contains(&Event::PeerDhtPort(addr("127.0.0.9:6999"))));
    // Without a DHT node of our own: no bit, no PORT message.
    let mut q = seeder(1, t0);
    assert!(!q.reserved().dht());
    let c = connect_out(&mut q, t0, addr("127.0.0.9:1"), id(9));
    assert!(!drain(&mut q)
        .iter()
        .any(|o| matches!(o, Output::Send { conn, msg: Message::Port(_) } if *conn == c)));
}
