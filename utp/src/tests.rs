//! One rule per test: an endpoint under test, and the peer played by hand with raw packets,
//! so that every sequence number and timer is visible.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::packet::{decode, encode, Header, PacketType};
use crate::{CloseReason, Config, ConnId, Endpoint, Error, Event};

const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9)),
    4000,
);

/// A packet the endpoint sent, owned.
#[derive(Clone, Debug)]
struct Sent {
    h: Header,
    sack: Option<Vec<u8>>,
    payload: Vec<u8>,
}

struct Harness {
    ep: Endpoint,
    now: Instant,
}

impl Harness {
    fn new(config: Config) -> Harness {
        Harness {
            ep: Endpoint::new(config, 7),
            now: Instant::now(),
        }
    }

    fn sent(&mut self) -> Vec<Sent> {
        let mut v = Vec::new();
        while let Some(t) = self.ep.poll_transmit() {
            assert_eq!(t.to, PEER);
            let p = decode(&t.data).expect("we send valid packets");
            v.push(Sent {
                h: p.header,
                sack: p.selective_ack.map(<[u8]>::to_vec),
                payload: p.payload.to_vec(),
            });
        }
        v
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.ep.poll_event()).collect()
    }

    fn feed(&mut self, h: Header, sack: Option<&[u8]>, payload: &[u8]) {
        let mut data = Vec::new();
        encode(&h, sack, payload, &mut data);
        self.ep.handle_datagram(self.now, PEER, &data);
    }

    /// Advances to the next timer (at most `max`) and fires it.
    fn advance(&mut self, max: Duration) -> Option<Instant> {
        let t = self.ep.poll_timeout()?;
        let t = t.min(self.now + max).max(self.now);
        self.now = t;
        self.ep.handle_timeout(t);
        Some(t)
    }

    fn read_all(&mut self, conn: ConnId) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.ep.read(self.now, conn, &mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (out, false),
            }
        }
    }
}

fn header(ty: PacketType, connection_id: u16, seq_nr: u16, ack_nr: u16) -> Header {
    Header {
        ty,
        connection_id,
        timestamp_us: 1,
        timestamp_diff_us: 0,
        wnd_size: 1 << 20,
        seq_nr,
        ack_nr,
    }
}

/// Our side initiated: returns (harness, conn, our recv id, our next seq, peer's next seq).
fn connected_initiator(config: Config) -> (Harness, ConnId, u16, u16, u16) {
    let mut h = Harness::new(config);
    let conn = h.ep.connect(h.now, PEER).unwrap();
    let syn = h.sent().pop().unwrap();
    let (recv_id, syn_seq) = (syn.h.connection_id, syn.h.seq_nr);
    let peer_seq = 1000;
    h.feed(
        header(PacketType::State, recv_id, peer_seq, syn_seq),
        None,
        &[],
    );
    assert_eq!(h.events(), vec![Event::Connected(conn)]);
    (h, conn, recv_id, syn_seq.wrapping_add(1), peer_seq)
}

/// The peer initiated with id 500 and seq 77: returns (harness, conn, our seq).
fn connected_acceptor(config: Config) -> (Harness, ConnId, u16) {
    let mut h = Harness::new(config);
    h.feed(header(PacketType::Syn, 500, 77, 0), None, &[]);
    let state = h.sent().pop().unwrap();
    let our_seq = state.h.seq_nr;
    h.feed(
        header(PacketType::State, 501, 78, our_seq.wrapping_sub(1)),
        None,
        &[],
    );
    let Some(Event::Incoming { conn, addr }) = h.events().first().copied() else {
        panic!("no Incoming event");
    };
    assert_eq!(addr, PEER);
    (h, conn, our_seq)
}

fn mss() -> usize {
    Config::default().max_payload()
}

#[test]
fn initiator_handshake_follows_bep29_ids() {
    let mut h = Harness::new(Config::default());
    let conn = h.ep.connect(h.now, PEER).unwrap();
    let syn = h.sent();
    assert_eq!(syn.len(), 1);
    assert_eq!(syn[0].h.ty, PacketType::Syn);
    let recv_id = syn[0].h.connection_id;
    // Data written before the handshake completes waits for it.
    assert_eq!(h.ep.write(h.now, conn, b"early").unwrap(), 5);
    assert!(h.sent().is_empty());
    // The acceptor answers on our receive id with its own sequence number.
    h.feed(
        header(PacketType::State, recv_id, 3000, syn[0].h.seq_nr),
        None,
        &[],
    );
    assert_eq!(h.events(), vec![Event::Connected(conn)]);
    let data = h.sent();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].h.ty, PacketType::Data);
    assert_eq!(
        data[0].h.connection_id,
        recv_id.wrapping_add(1),
        "we send on recv_id + 1"
    );
    assert_eq!(data[0].h.seq_nr, syn[0].h.seq_nr.wrapping_add(1));
    assert_eq!(
        data[0].h.ack_nr, 2999,
        "the acceptor's first DATA will be 3000"
    );
    assert_eq!(data[0].payload, b"early");
}

#[test]
fn acceptor_handshake_swaps_ids_and_waits_for_proof() {
    let mut h = Harness::new(Config::default());
    h.feed(header(PacketType::Syn, 500, 77, 0), None, &[]);
    let state = h.sent();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0].h.ty, PacketType::State);
    assert_eq!(state[0].h.connection_id, 500, "we send on the SYN's id");
    assert_eq!(state[0].h.ack_nr, 77);
    assert!(
        h.events().is_empty(),
        "not announced before the initiator answers"
    );
    assert_eq!(h.ep.stats().pending_incoming, 1);
    let our_seq = state[0].h.seq_nr;
    // The initiator sends on id + 1 and acknowledges our sequence number minus one.
    h.feed(
        header(PacketType::Data, 501, 78, our_seq.wrapping_sub(1)),
        None,
        b"hi",
    );
    let events = h.events();
    let Some(Event::Incoming { conn, .. }) = events.first().copied() else {
        panic!("{events:?}");
    };
    assert_eq!(events[1], Event::Readable(conn));
    assert_eq!(h.ep.stats().pending_incoming, 0);
    assert_eq!(h.read_all(conn), (b"hi".to_vec(), false));
}

#[test]
fn spoofed_syn_never_reaches_the_application_and_expires() {
    let mut h = Harness::new(Config::default());
    h.feed(header(PacketType::Syn, 500, 77, 0), None, &[]);
    let our_seq = h.sent()[0].h.seq_nr;
    // Someone who did not see our answer guesses the acknowledgement wrong.
    h.feed(
        header(PacketType::Data, 501, 78, our_seq.wrapping_add(100)),
        None,
        b"x",
    );
    assert!(h.events().is_empty());
    while h.advance(Duration::from_secs(60)).is_some() {}
    assert_eq!(h.ep.stats().connections, 0);
    assert!(h.events().is_empty());
}

#[test]
fn duplicate_syn_is_answered_again_without_a_second_connection() {
    let mut h = Harness::new(Config::default());
    h.feed(header(PacketType::Syn, 500, 77, 0), None, &[]);
    h.feed(header(PacketType::Syn, 500, 77, 0), None, &[]);
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].h.seq_nr, sent[1].h.seq_nr);
    assert_eq!(h.ep.stats().connections, 1);
}

#[test]
fn syn_flood_costs_a_bounded_table() {
    let config = Config {
        max_pending_incoming: 16,
        ..Config::default()
    };
    let mut h = Harness::new(config);
    for i in 0..1000u16 {
        let from = SocketAddr::new(PEER.ip(), 10_000 + i);
        let mut data = Vec::new();
        encode(&header(PacketType::Syn, i, 1, 0), None, &[], &mut data);
        h.ep.handle_datagram(h.now, from, &data);
    }
    let s = h.ep.stats();
    assert_eq!(s.pending_incoming, 16);
    assert_eq!(s.connections, 16);
    assert_eq!(s.syns_dropped, 1000 - 16);
    assert!(h.events().is_empty());
    assert!(std::iter::from_fn(|| h.ep.poll_transmit()).count() <= 16);
}

#[test]
fn data_for_an_unknown_connection_is_reset_and_garbage_is_not_answered() {
    let mut h = Harness::new(Config::default());
    h.feed(header(PacketType::Data, 42, 5, 6), None, b"stray");
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].h.ty, PacketType::Reset);
    assert_eq!(sent[0].h.connection_id, 42);
    h.feed(header(PacketType::State, 42, 5, 6), None, &[]);
    h.ep.handle_datagram(
        h.now,
        PEER,
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
    );
    assert!(h.sent().is_empty());
    assert_eq!(h.ep.stats().invalid_datagrams, 1);
}

#[test]
fn duplicate_and_old_packets_are_delivered_once_and_reacknowledged() {
    let (mut h, conn, our_seq) = connected_acceptor(Config::default());
    let ack = our_seq.wrapping_sub(1);
    h.feed(header(PacketType::Data, 501, 78, ack), None, b"one");
    h.feed(header(PacketType::Data, 501, 78, ack), None, b"one");
    h.feed(header(PacketType::Data, 501, 77, ack), None, b"old");
    assert_eq!(h.read_all(conn).0, b"one");
    let sent = h.sent();
    assert!(!sent.is_empty(), "a duplicate is acknowledged at once");
    assert!(sent
        .iter()
        .all(|s| s.h.ty == PacketType::State && s.h.ack_nr == 78));
}

#[test]
fn out_of_order_packets_are_reassembled_and_selectively_acknowledged() {
    let (mut h, conn, our_seq) = connected_acceptor(Config::default());
    let ack = our_seq.wrapping_sub(1);
    // 78 is missing; 79 and 81 arrive.
    h.feed(header(PacketType::Data, 501, 79, ack), None, b"b");
    h.feed(header(PacketType::Data, 501, 81, ack), None, b"d");
    let sent = h.sent();
    let last = sent.last().unwrap();
    assert_eq!(last.h.ack_nr, 77);
    // Bit 0 is ack_nr + 2 = 79, bit 2 is 81; the mask is four bytes.
    assert_eq!(last.sack.as_deref(), Some(&[0b101, 0, 0, 0][..]));
    assert!(h.events().is_empty(), "nothing in order yet");
    h.feed(header(PacketType::Data, 501, 78, ack), None, b"a");
    assert_eq!(h.events(), vec![Event::Readable(conn)]);
    assert_eq!(h.read_all(conn).0, b"ab");
    let last = h.sent().pop().unwrap();
    assert_eq!((last.h.ack_nr, last.sack), (79, Some(vec![0b1, 0, 0, 0])));
    h.feed(header(PacketType::Data, 501, 80, ack), None, b"c");
    assert_eq!(h.read_all(conn).0, b"cd");
    assert_eq!(h.sent().pop().unwrap().sack, None);
}

/// Writes `packets` full packets and acknowledges each batch as it comes until all are
/// out (slow start opens the window); returns the last, unacknowledged batch.
fn in_flight(packets: usize) -> (Harness, ConnId, u16, Vec<Sent>) {
    let (mut h, conn, recv_id, _, peer_seq) = connected_initiator(Config::default());
    let data = vec![7u8; packets * mss()];
    assert_eq!(h.ep.write(h.now, conn, &data).unwrap(), data.len());
    let mut batch = h.sent();
    let mut total = batch.len();
    while total < packets {
        let last = batch.last().unwrap().h.seq_nr;
        h.feed(
            header(PacketType::State, recv_id, peer_seq, last),
            None,
            &[],
        );
        batch = h.sent();
        assert!(!batch.is_empty());
        total += batch.len();
    }
    (h, conn, recv_id, batch)
}

#[test]
fn selective_ack_of_three_later_packets_resends_the_hole() {
    let (mut h, _conn, id, outstanding) = in_flight(12);
    assert!(outstanding.len() >= 5, "{}", outstanding.len());
    let hole = outstanding[0].h.seq_nr;
    // The peer got everything after the hole: bits for hole+1.. (bit 0 = ack + 2).
    let ack = hole.wrapping_sub(1);
    h.feed(
        header(PacketType::State, id, 1000, ack),
        Some(&[0b0000_0111, 0, 0, 0]),
        &[],
    );
    let resent = h.sent();
    assert!(
        resent
            .iter()
            .any(|s| s.h.seq_nr == hole && s.h.ty == PacketType::Data),
        "{resent:?}"
    );
    // The same SACK again does not resend it a second time.
    h.feed(
        header(PacketType::State, id, 1000, ack),
        Some(&[0b0000_0111, 0, 0, 0]),
        &[],
    );
    assert!(!h.sent().iter().any(|s| s.h.seq_nr == hole));
}

#[test]
fn three_duplicate_acks_resend_the_oldest() {
    let (mut h, _conn, id, outstanding) = in_flight(12);
    let oldest = outstanding[0].h.seq_nr;
    let ack = oldest.wrapping_sub(1);
    for _ in 0..2 {
        h.feed(header(PacketType::State, id, 1000, ack), None, &[]);
    }
    assert!(!h.sent().iter().any(|s| s.h.seq_nr == oldest));
    h.feed(header(PacketType::State, id, 1000, ack), None, &[]);
    assert!(h.sent().iter().any(|s| s.h.seq_nr == oldest));
}

#[test]
fn retransmission_timeout_backs_off_and_gives_up() {
    let config = Config::default();
    let (mut h, conn, ..) = connected_initiator(config.clone());
    h.ep.write(h.now, conn, b"ping").unwrap();
    let start = h.now;
    assert_eq!(h.sent().len(), 1);
    let mut resent_at = Vec::new();
    while h.advance(Duration::from_secs(600)).is_some() {
        if h.sent().iter().any(|s| s.h.ty == PacketType::Data) {
            resent_at.push(h.now - start);
        }
        if !h.events().is_empty() {
            break;
        }
    }
    // The handshake measured a zero round trip: the RTO starts at its 500 ms floor.
    let expect: Vec<Duration> = (0..config.max_retransmits)
        .map(|i| Duration::from_millis(500 * ((2 << i) - 1)))
        .collect();
    assert_eq!(resent_at, expect);
    assert_eq!(h.ep.stats().connections, 0);
    assert_eq!(h.ep.write(h.now, conn, b"x"), Err(Error::UnknownConnection));
}

#[test]
fn unanswered_syn_is_retried_then_fails() {
    let mut h = Harness::new(Config::default());
    let conn = h.ep.connect(h.now, PEER).unwrap();
    assert_eq!(h.sent().len(), 1);
    let start = h.now;
    let mut syns = vec![];
    let mut closed = None;
    while h.advance(Duration::from_secs(600)).is_some() {
        syns.extend(
            h.sent()
                .iter()
                .filter(|s| s.h.ty == PacketType::Syn)
                .map(|_| h.now - start),
        );
        if let Some(e) = h.events().pop() {
            closed = Some(e);
            break;
        }
    }
    assert_eq!(syns, [1, 3, 7].map(Duration::from_secs));
    assert_eq!(
        closed,
        Some(Event::Closed {
            conn,
            reason: CloseReason::TimedOut
        })
    );
}

#[test]
fn fin_from_the_peer_ends_the_stream_then_our_fin_closes() {
    let (mut h, conn, our_seq) = connected_acceptor(Config::default());
    let ack = our_seq.wrapping_sub(1);
    // The FIN overtakes the last data packet.
    h.feed(header(PacketType::Fin, 501, 79, ack), None, &[]);
    assert!(h.events().is_empty());
    h.feed(header(PacketType::Data, 501, 78, ack), None, b"last");
    assert_eq!(h.events(), vec![Event::Readable(conn)]);
    assert_eq!(h.read_all(conn), (b"last".to_vec(), true));
    // Data after the FIN is never delivered.
    h.feed(header(PacketType::Data, 501, 80, ack), None, b"late");
    assert_eq!(h.read_all(conn), (vec![], true));
    // We can still send (half close), then close.
    h.ep.write(h.now, conn, b"reply").unwrap();
    h.ep.close(h.now, conn).unwrap();
    assert_eq!(h.ep.write(h.now, conn, b"more"), Err(Error::Closed));
    let sent: Vec<Sent> = h
        .sent()
        .into_iter()
        .filter(|s| s.h.ty != PacketType::State)
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        (sent[0].h.ty, sent[0].h.seq_nr),
        (PacketType::Data, our_seq)
    );
    assert_eq!(
        (sent[1].h.ty, sent[1].h.seq_nr),
        (PacketType::Fin, our_seq.wrapping_add(1))
    );
    assert_eq!(sent[1].h.ack_nr, 79);
    h.feed(
        header(PacketType::State, 501, 80, our_seq.wrapping_add(1)),
        None,
        &[],
    );
    assert_eq!(
        h.events(),
        vec![Event::Closed {
            conn,
            reason: CloseReason::Done
        }]
    );
    // It lingers to acknowledge a retransmitted FIN, then it is gone.
    h.feed(
        header(PacketType::Fin, 501, 79, our_seq.wrapping_add(1)),
        None,
        &[],
    );
    assert_eq!(h.sent().len(), 1);
    while h.advance(Duration::from_secs(60)).is_some() {}
    assert_eq!(h.ep.stats().connections, 0);
}

#[test]
fn our_fin_first_then_the_peers() {
    let (mut h, conn, recv_id, next, peer_seq) = connected_initiator(Config::default());
    h.ep.close(h.now, conn).unwrap();
    let fin = h.sent().pop().unwrap();
    assert_eq!((fin.h.ty, fin.h.seq_nr), (PacketType::Fin, next));
    h.feed(
        header(PacketType::State, recv_id, peer_seq, next),
        None,
        &[],
    );
    assert!(h.events().is_empty(), "the peer has not finished yet");
    h.feed(
        header(PacketType::Data, recv_id, peer_seq, next),
        None,
        b"bye",
    );
    h.feed(
        header(PacketType::Fin, recv_id, peer_seq.wrapping_add(1), next),
        None,
        &[],
    );
    assert_eq!(h.events(), vec![Event::Readable(conn)]);
    assert_eq!(h.read_all(conn), (b"bye".to_vec(), true));
    assert_eq!(
        h.events(),
        vec![Event::Closed {
            conn,
            reason: CloseReason::Done
        }]
    );
}

#[test]
fn reset_from_the_peer_closes_and_reset_by_us_is_silent() {
    let (mut h, conn, recv_id, ..) = connected_initiator(Config::default());
    h.feed(header(PacketType::Reset, recv_id, 0, 0), None, &[]);
    assert_eq!(
        h.events(),
        vec![Event::Closed {
            conn,
            reason: CloseReason::Reset
        }]
    );
    assert_eq!(h.ep.stats().connections, 0);

    let (mut h, conn, _) = connected_acceptor(Config::default());
    h.ep.reset(h.now, conn).unwrap();
    let sent = h.sent();
    assert_eq!(sent.last().unwrap().h.ty, PacketType::Reset);
    assert_eq!(sent.last().unwrap().h.connection_id, 500);
    assert!(h.events().is_empty());
    assert_eq!(
        h.ep.read(h.now, conn, &mut [0; 4]),
        Err(Error::UnknownConnection)
    );
}

#[test]
fn sender_respects_the_advertised_window() {
    let mut h = Harness::new(Config::default());
    let conn = h.ep.connect(h.now, PEER).unwrap();
    let syn = h.sent().pop().unwrap();
    let mut state = header(PacketType::State, syn.h.connection_id, 1000, syn.h.seq_nr);
    state.wnd_size = 3000;
    h.feed(state, None, &[]);
    h.ep.write(h.now, conn, &vec![1u8; 100_000]).unwrap();
    // Acknowledge the oldest packet at a time: never more than 3,000 bytes unacknowledged.
    let mut outstanding = std::collections::VecDeque::new();
    let mut acked = 0;
    for _ in 0..50 {
        outstanding.extend(h.sent());
        let bytes: usize = outstanding.iter().map(|s: &Sent| s.payload.len()).sum();
        assert!(
            bytes <= 3000,
            "{bytes} bytes in flight against a 3000-byte window"
        );
        let Some(oldest) = outstanding.pop_front() else {
            break;
        };
        acked += oldest.payload.len();
        let mut ack = header(
            PacketType::State,
            syn.h.connection_id,
            1000,
            oldest.h.seq_nr,
        );
        ack.wnd_size = 3000;
        h.feed(ack, None, &[]);
        let _ = h.events();
    }
    assert!(acked >= 40 * mss(), "the transfer kept going: {acked}");
}

#[test]
fn receiver_drops_what_exceeds_its_window_and_reopens_it_on_read() {
    let config = Config {
        recv_buffer: 4000,
        ..Config::default()
    };
    let (mut h, conn, our_seq) = connected_acceptor(config);
    let ack = our_seq.wrapping_sub(1);
    let chunk = vec![3u8; 1500];
    for seq in 78..82 {
        h.feed(header(PacketType::Data, 501, seq, ack), None, &chunk);
    }
    let acks = h.sent();
    let last = acks.last().unwrap();
    assert_eq!(last.h.ack_nr, 79, "two packets fit, the third does not");
    assert_eq!(last.h.wnd_size, 1000);
    let (data, _) = h.read_all(conn);
    assert_eq!(data.len(), 3000);
    let update = h.sent().pop().expect("a window update after reading");
    assert_eq!(update.h.wnd_size, 4000);
}

#[test]
fn keepalive_then_idle_timeout() {
    let config = Config::default();
    let (mut h, conn, ..) = connected_initiator(config.clone());
    let start = h.now;
    let mut keepalives = vec![];
    let mut closed = None;
    while h.advance(Duration::from_secs(600)).is_some() {
        keepalives.extend(h.sent().iter().map(|_| h.now - start));
        if let Some(e) = h.events().pop() {
            closed = Some((e, h.now - start));
            break;
        }
    }
    assert_eq!(keepalives, [20, 40].map(Duration::from_secs));
    assert_eq!(
        closed,
        Some((
            Event::Closed {
                conn,
                reason: CloseReason::TimedOut
            },
            config.idle_timeout
        ))
    );
}

#[test]
fn nagle_coalesces_small_writes_while_data_is_in_flight() {
    let (mut h, conn, ..) = connected_initiator(Config::default());
    h.ep.write(h.now, conn, b"a").unwrap();
    assert_eq!(h.sent().len(), 1, "nothing in flight: sent at once");
    for _ in 0..10 {
        h.ep.write(h.now, conn, b"bc").unwrap();
    }
    assert!(
        h.sent().is_empty(),
        "held while the first is unacknowledged"
    );
    h.advance(Duration::from_secs(1));
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload, b"bcbcbcbcbcbcbcbcbcbc");
}

#[test]
fn write_is_bounded_by_the_send_buffer_and_writable_follows() {
    let config = Config {
        send_buffer: 10_000,
        ..Config::default()
    };
    let (mut h, conn, recv_id, _, peer_seq) = connected_initiator(config);
    assert_eq!(h.ep.write(h.now, conn, &[0u8; 20_000]).unwrap(), 10_000);
    assert_eq!(h.ep.write(h.now, conn, &[0u8; 1]), Err(Error::WouldBlock));
    let sent = h.sent();
    let last = sent.last().unwrap().h.seq_nr;
    h.feed(
        header(PacketType::State, recv_id, peer_seq, last),
        None,
        &[],
    );
    assert_eq!(h.events(), vec![Event::Writable(conn)]);
    assert!(h.ep.write(h.now, conn, &[0u8; 20_000]).unwrap() > 0);
    assert!(h.ep.stats().buffered_bytes <= 10_000);
}

#[test]
fn data_that_overtook_a_lost_syn_answer_completes_the_handshake() {
    let mut h = Harness::new(Config::default());
    let conn = h.ep.connect(h.now, PEER).unwrap();
    let syn = h.sent().pop().unwrap();
    h.feed(
        header(PacketType::Data, syn.h.connection_id, 3000, syn.h.seq_nr),
        None,
        b"hey",
    );
    assert_eq!(
        h.events(),
        vec![Event::Connected(conn), Event::Readable(conn)]
    );
    assert_eq!(h.read_all(conn).0, b"hey");
}

#[test]
fn window_updates_are_not_duplicate_acknowledgements() {
    let (mut h, _conn, id, outstanding) = in_flight(12);
    let oldest = outstanding[0].h.seq_nr;
    for wnd in [5000, 6000, 7000, 8000] {
        let mut update = header(PacketType::State, id, 1000, oldest.wrapping_sub(1));
        update.wnd_size = wnd;
        h.feed(update, None, &[]);
    }
    assert!(!h.sent().iter().any(|s| s.h.seq_nr == oldest));
}

#[test]
fn pending_connections_are_not_the_applications() {
    let mut h = Harness::new(Config::default());
    h.feed(header(PacketType::Syn, 500, 77, 0), None, &[]);
    // Connection ids are sequential: an application could guess the pending one's.
    for id in 0..4 {
        assert_eq!(h.ep.reset(h.now, ConnId(id)), Err(Error::UnknownConnection));
        assert_eq!(
            h.ep.write(h.now, ConnId(id), b"x"),
            Err(Error::UnknownConnection)
        );
    }
    assert_eq!(h.ep.stats().pending_incoming, 1);
}

#[test]
fn a_closed_window_is_probed_without_giving_up() {
    let config = Config::default();
    let (mut h, conn, recv_id, first, peer_seq) = connected_initiator(config.clone());
    let closed = |ack: u16| {
        let mut s = header(PacketType::State, recv_id, peer_seq, ack);
        s.wnd_size = 0;
        s
    };
    h.feed(closed(first.wrapping_sub(1)), None, &[]);
    h.ep.write(h.now, conn, &[5u8; 10_000]).unwrap();
    let probe = h.sent();
    assert_eq!(probe.len(), 1, "one probe into a closed window");
    // The peer stays alive but keeps its window shut for many RTOs.
    for _ in 0..3 * config.max_retransmits {
        h.advance(Duration::from_secs(120));
        h.feed(closed(first.wrapping_sub(1)), None, &[]);
        assert!(h.events().is_empty(), "a closed window is not a dead peer");
        let data: Vec<Sent> = h
            .sent()
            .into_iter()
            .filter(|s| s.h.ty == PacketType::Data)
            .collect();
        assert!(
            data.iter().all(|s| s.h.seq_nr == first),
            "only the probe: {data:?}"
        );
    }
    // It reads and opens the window (acknowledging the probe): the data flows again.
    h.feed(
        header(PacketType::State, recv_id, peer_seq, first),
        None,
        &[],
    );
    assert!(h.sent().len() >= 2);
}

#[test]
fn a_reset_answering_our_unacknowledged_last_fin_is_a_clean_close() {
    let (mut h, conn, recv_id, next, peer_seq) = connected_initiator(Config::default());
    // The peer finished first; we read everything, then close.
    h.feed(
        header(PacketType::Fin, recv_id, peer_seq, next.wrapping_sub(1)),
        None,
        &[],
    );
    assert_eq!(h.events(), vec![Event::Readable(conn)]);
    assert_eq!(h.read_all(conn), (vec![], true));
    h.ep.close(h.now, conn).unwrap();
    assert!(h.sent().iter().any(|s| s.h.ty == PacketType::Fin));
    // Its acknowledgement of our FIN is lost and it forgot us: a later RESET means done.
    h.feed(header(PacketType::Reset, recv_id, 0, 0), None, &[]);
    assert_eq!(
        h.events(),
        vec![Event::Closed {
            conn,
            reason: CloseReason::Done
        }]
    );
}

#[test]
fn all_connections_together_hold_no_more_than_the_total_receive_budget() {
    let config = Config {
        max_total_recv_buffer: 5000,
        ..Config::default()
    };
    let mut h = Harness::new(config);
    // Three peers connect and each sends 3,000 bytes the application does not read.
    for port in 0..3u16 {
        let from = SocketAddr::new(PEER.ip(), 5000 + port);
        while h.ep.poll_transmit().is_some() {}
        let mut syn = Vec::new();
        encode(&header(PacketType::Syn, 100, 1, 0), None, &[], &mut syn);
        h.ep.handle_datagram(h.now, from, &syn);
        let state = decode(&h.ep.poll_transmit().unwrap().data).unwrap().header;
        for (i, chunk) in [[1u8; 1500], [2u8; 1500]].iter().enumerate() {
            let mut data = Vec::new();
            let d = header(
                PacketType::Data,
                101,
                2 + i as u16,
                state.seq_nr.wrapping_sub(1),
            );
            encode(&d, None, chunk, &mut data);
            h.ep.handle_datagram(h.now, from, &data);
        }
    }
    let s = h.ep.stats();
    assert_eq!(s.connections, 3);
    assert_eq!(
        s.recv_buffered_bytes, 4500,
        "the sixth packet did not fit in 5,000"
    );
}

#[test]
fn ipv6_peers_are_demultiplexed_like_any_other() {
    let mut ep = Endpoint::new(Config::default(), 1);
    let now = Instant::now();
    let v6: SocketAddr = "[2001:db8::1]:6881".parse().unwrap();
    let mut syn = Vec::new();
    encode(&header(PacketType::Syn, 500, 77, 0), None, &[], &mut syn);
    ep.handle_datagram(now, v6, &syn);
    // The same connection id from the same port of another address is another peer.
    let other: SocketAddr = "[2001:db8::2]:6881".parse().unwrap();
    ep.handle_datagram(now, other, &syn);
    let answers: Vec<_> = std::iter::from_fn(|| ep.poll_transmit()).collect();
    assert_eq!(
        answers.iter().map(|t| t.to).collect::<Vec<_>>(),
        vec![v6, other]
    );
    assert_eq!(ep.stats().pending_incoming, 2);
}

#[test]
fn an_endpoint_can_move_to_a_driver_task() {
    fn send<T: Send + 'static>() {}
    send::<Endpoint>();
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Raw bytes from peer `from`.
        Garbage(u8, Vec<u8>),
        /// A well-formed packet from peer `from`.
        Packet(u8, u8, u16, u16, u16, u32, Option<Vec<u8>>, Vec<u8>),
        /// A packet answering the last one we sent, with its fields nudged.
        Reply(u8, i8, i8, i8, u32, Option<Vec<u8>>, Vec<u8>),
        Advance(u16),
        Connect(u8),
        Write(u16),
        Read,
        Close,
        Reset,
    }

    fn ty_of(v: u8) -> PacketType {
        [
            PacketType::Data,
            PacketType::Fin,
            PacketType::State,
            PacketType::Reset,
            PacketType::Syn,
        ][v as usize % 5]
    }

    fn op() -> impl Strategy<Value = Op> {
        let sack = proptest::option::of(proptest::collection::vec(any::<u8>(), 4..=8).prop_map(
            |mut v| {
                v.truncate(v.len() / 4 * 4);
                v
            },
        ));
        let payload = proptest::collection::vec(any::<u8>(), 0..1600);
        prop_oneof![
            1 => (0..4u8, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(f, d)| Op::Garbage(f, d)),
            1 => (0..4u8, any::<u8>(), 0..8u16, any::<u16>(), any::<u16>(), any::<u32>(), sack.clone(), payload.clone())
                .prop_map(|(f, t, c, s, a, w, k, p)| Op::Packet(f, t, c, s, a, w, k, p)),
            4 => (
                prop_oneof![3 => Just(2u8), 3 => Just(0u8), 1 => Just(1u8), 1 => any::<u8>()],
                prop_oneof![2 => Just(0i8), 2 => Just(1i8), 1 => -2..3i8],
                prop_oneof![3 => Just(1i8), 1 => -3..4i8],
                prop_oneof![2 => Just(0i8), 2 => Just(-1i8), 1 => -3..4i8],
                any::<u32>(),
                sack,
                payload,
            )
                .prop_map(|(t, c, s, a, w, k, p)| Op::Reply(t, c, s, a, w, k, p)),
            1 => (0..3000u16).prop_map(Op::Advance),
            1 => (0..4u8).prop_map(Op::Connect),
            1 => (0..20_000u16).prop_map(Op::Write),
            1 => Just(Op::Read),
            1 => Just(Op::Close),
            1 => Just(Op::Reset),
        ]
    }

    fn peer(i: u8) -> SocketAddr {
        SocketAddr::new(PEER.ip(), 4000 + i as u16)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_inputs_never_panic_nor_exceed_the_bounds(ops in proptest::collection::vec(op(), 1..120)) {
            let config = Config {
                max_connections: 6,
                max_pending_incoming: 3,
                send_buffer: 8192,
                recv_buffer: 8192,
                max_total_recv_buffer: 12_000,
                max_reorder_packets: 16,
                ..Config::default()
            };
            let mut ep = Endpoint::new(config.clone(), 3);
            let mut now = Instant::now();
            let mut conns: Vec<ConnId> = Vec::new();
            let mut last_sent: Option<(SocketAddr, Header)> = None;
            for op in ops {
                match op {
                    Op::Garbage(f, d) => ep.handle_datagram(now, peer(f), &d),
                    Op::Packet(f, t, c, s, a, w, k, p) => {
                        let h = Header { ty: ty_of(t), connection_id: c, timestamp_us: 0, timestamp_diff_us: w, wnd_size: w, seq_nr: s, ack_nr: a };
                        let mut d = Vec::new();
                        encode(&h, k.as_deref(), &p, &mut d);
                        ep.handle_datagram(now, peer(f), &d);
                    }
                    Op::Reply(t, c, s, a, w, k, p) => {
                        if let Some((to, last)) = last_sent {
                            let h = Header {
                                ty: ty_of(t),
                                connection_id: last.connection_id.wrapping_add(c as u16),
                                timestamp_us: w,
                                timestamp_diff_us: w / 3,
                                wnd_size: w,
                                seq_nr: last.ack_nr.wrapping_add(s as u16),
                                ack_nr: last.seq_nr.wrapping_add(a as u16),
                            };
                            let mut d = Vec::new();
                            encode(&h, k.as_deref(), &p, &mut d);
                            ep.handle_datagram(now, to, &d);
                        }
                    }
                    Op::Advance(ms) => {
                        now += Duration::from_millis(ms as u64);
                        ep.handle_timeout(now);
                        // No timer is left due after it was handled (a driver would spin).
                        prop_assert!(ep.poll_timeout().is_none_or(|t| t > now));
                    }
                    Op::Connect(f) => {
                        if let Ok(c) = ep.connect(now, peer(f)) {
                            conns.push(c);
                        }
                    }
                    Op::Write(n) => {
                        for c in &conns {
                            let _ = ep.write(now, *c, &vec![1u8; n as usize]);
                        }
                    }
                    Op::Read => {
                        for c in &conns {
                            let _ = ep.read(now, *c, &mut [0u8; 3000]);
                        }
                    }
                    Op::Close => {
                        if let Some(c) = conns.first() {
                            let _ = ep.close(now, *c);
                        }
                    }
                    Op::Reset => {
                        if let Some(c) = conns.pop() {
                            let _ = ep.reset(now, c);
                        }
                    }
                }
                while let Some(ev) = ep.poll_event() {
                    if let Event::Incoming { conn, .. } = ev {
                        conns.push(conn);
                    }
                }
                let mut transmits = 0;
                while let Some(t) = ep.poll_transmit() {
                    transmits += 1;
                    prop_assert!(t.data.len() <= config.max_packet_size);
                    if let Ok(p) = decode(&t.data) {
                        last_sent = Some((t.to, p.header));
                    } else {
                        prop_assert!(false, "we sent an undecodable packet");
                    }
                }
                let s = ep.stats();
                prop_assert!(transmits <= 64 * s.connections.max(1), "{transmits} datagrams at once");
                prop_assert!(s.connections <= config.max_connections);
                prop_assert!(s.recv_buffered_bytes <= config.max_total_recv_buffer);
                prop_assert!(s.pending_incoming <= config.max_pending_incoming);
                prop_assert!(
                    s.buffered_bytes <= s.connections * (config.send_buffer + config.recv_buffer),
                    "{} bytes buffered by {} connections", s.buffered_bytes, s.connections
                );
            }
        }
    }
}
