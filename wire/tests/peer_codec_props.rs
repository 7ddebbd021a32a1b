//! Property tests for the peer wire codec: round trip, streams split anywhere, and
//! arbitrary bytes never panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wire::infohash::InfoHash;
use wire::peer::{Block, Decoder, Handshake, Limits, Message, PeerId, Reserved};

fn block() -> impl Strategy<Value = Block> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(piece, offset, length)| Block {
        piece,
        offset,
        length,
    })
}

fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Choke),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::NotInterested),
        Just(Message::HaveAll),
        Just(Message::HaveNone),
        any::<u32>().prop_map(|piece| Message::Have { piece }),
        any::<u32>().prop_map(|piece| Message::Suggest { piece }),
        any::<u32>().prop_map(|piece| Message::AllowedFast { piece }),
        payload(300).prop_map(Message::Bitfield),
        block().prop_map(Message::Request),
        block().prop_map(Message::Cancel),
        block().prop_map(Message::RejectRequest),
        (any::<u32>(), any::<u32>(), payload(2000)).prop_map(|(piece, offset, data)| {
            Message::Piece {
                piece,
                offset,
                data,
            }
        }),
        any::<u16>().prop_map(Message::Port),
        (any::<u8>(), payload(500)).prop_map(|(id, payload)| Message::Extended { id, payload }),
        // Ids no one assigned (BEP 52 uses 21-23, skipped by us as unknown).
        (21u8..=255, payload(100)).prop_map(|(id, payload)| Message::Unknown { id, payload }),
    ]
}

/// Decodes everything in `buf`, feeding it in the given chunk sizes.
fn decode_chunked(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Message>, wire::peer::WireError> {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut cuts = cuts.iter().copied();
    while pos < bytes.len() {
        let step = cuts.next().unwrap_or(bytes.len()).max(1);
        let end = (pos + step).min(bytes.len());
        buf.extend_from_slice(&bytes[pos..end]);
        pos = end;
        while let Some(m) = dec.decode(&mut buf)? {
            out.push(m);
        }
    }
    assert!(buf.is_empty(), "leftover bytes: {}", buf.len());
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn round_trip(msgs in proptest::collection::vec(message(), 0..20)) {
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        let decoded = decode_chunked(&buf, &[]).unwrap();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn split_anywhere_decodes_the_same(
        msgs in proptest::collection::vec(message(), 1..12),
        cuts in proptest::collection::vec(1usize..64, 0..200),
    ) {
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        prop_assert_eq!(decode_chunked(&buf, &cuts).unwrap(), msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), pieces in proptest::option::of(0u32..5000)) {
        let mut dec = Decoder::new(Limits::default());
        if let Some(p) = pieces {
            dec.set_piece_count(p);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..bytes.len() + 1 {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        // Whatever was reserved is bounded by the largest legal frame.
        prop_assert!(buf.capacity() <= bytes.len().max(4 + dec.max_frame_body()) + 64);
        let mut hs = BytesMut::from(&bytes[..]);
        let _ = Handshake::decode(&mut hs);
    }

    #[test]
    fn arbitrary_message_like_frames_never_panic(id in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        frame.extend_from_slice(&[id]);
        frame.extend_from_slice(&body);
        let _ = Decoder::default().decode(&mut frame);
    }

    #[test]
    fn handshake_round_trip(reserved in any::<[u8; 8]>(), ih in any::<[u8; 20]>(), pid in any::<[u8; 20]>()) {
        let hs = Handshake { reserved: Reserved(reserved), info_hash: InfoHash(ih), peer_id: PeerId(pid) };
        let mut buf = BytesMut::new();
        hs.encode(&mut buf);
        prop_assert_eq!(Handshake::decode(&mut buf).unwrap(), Some(hs));
        prop_assert!(buf.is_empty());
    }
}
