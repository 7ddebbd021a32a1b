//! The BEP 29 packet codec: a 20-byte header, an extension chain, then the payload.
//!
//! ```text
//! 0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! +---------------+---------------+---------------+---------------+
//! | timestamp_difference_microseconds                             |
//! +---------------+---------------+---------------+---------------+
//! | wnd_size                                                      |
//! +---------------+---------------+---------------+---------------+
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Every extension is `next extension type (u8), length (u8), length bytes`; the header's
//! `extension` byte is the type of the first one, 0 ends the chain. Extension 1 is the
//! selective ACK: a bitmask where bit `i` (least significant bit of byte 0 first) says that
//! `ack_nr + 2 + i` was received. BEP 29 says its length is a multiple of 4, and we send it
//! so, but libtorrent 2.0 sends 6, 7 or 9 bytes (seen in our interop test): any length is
//! accepted. Unknown extensions are skipped.
//!
//! Decoding borrows from the datagram, allocates nothing and never panics.

use thiserror::Error;

/// The only protocol version there is.
pub const VERSION: u8 = 1;
/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 20;
/// Extension type of the selective ACK.
pub const EXT_SELECTIVE_ACK: u8 = 1;
/// A chain longer than this is not from an honest peer (BEP 29 defines one extension).
pub const MAX_EXTENSIONS: usize = 4;

/// The five packet types of BEP 29, with their wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Payload; consumes a sequence number.
    Data = 0,
    /// No more data from the sender after this one; consumes a sequence number.
    Fin = 1,
    /// A bare acknowledgement (and window update); does not consume a sequence number.
    State = 2,
    /// Forcibly ends the connection.
    Reset = 3,
    /// Opens a connection; consumes a sequence number.
    Syn = 4,
}

impl PacketType {
    fn from_u8(v: u8) -> Option<PacketType> {
        Some(match v {
            0 => PacketType::Data,
            1 => PacketType::Fin,
            2 => PacketType::State,
            3 => PacketType::Reset,
            4 => PacketType::Syn,
            _ => return None,
        })
    }
}

/// The fixed header, in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ty: PacketType,
    pub connection_id: u16,
    /// Sender's clock when the packet was sent, in microseconds (wrapping).
    pub timestamp_us: u32,
    /// The sender's last measurement of "its clock minus our timestamp" (one-way delay
    /// plus the clock offset), in microseconds; 0 when it has none.
    pub timestamp_diff_us: u32,
    /// Bytes the sender is still willing to receive.
    pub wnd_size: u32,
    pub seq_nr: u16,
    pub ack_nr: u16,
}

/// A decoded packet, borrowing from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub header: Header,
    /// The selective ACK bitmask if the packet carried one (the first, if several).
    pub selective_ack: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// Why a datagram is not a uTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("shorter than a uTP header")]
    TooShort,
    #[error("unsupported uTP version {0}")]
    BadVersion(u8),
    #[error("unknown packet type {0}")]
    BadType(u8),
    #[error("extension chain runs past the end of the datagram")]
    TruncatedExtension,
    #[error("more than {MAX_EXTENSIONS} extensions")]
    TooManyExtensions,
}

/// Whether a datagram looks like uTP at all (version 1 and a known type): what a socket
/// shared with the DHT uses to demultiplex (KRPC starts with `d`, 0x64, which is type 6).
pub fn looks_like_utp(data: &[u8]) -> bool {
    data.len() >= HEADER_LEN && data[0] & 0x0f == VERSION && data[0] >> 4 <= 4
}

/// Decodes one datagram.
pub fn decode(data: &[u8]) -> Result<Packet<'_>, DecodeError> {
    if data.len() < HEADER_LEN {
        return Err(DecodeError::TooShort);
    }
    let version = data[0] & 0x0f;
    if version != VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let ty = PacketType::from_u8(data[0] >> 4).ok_or(DecodeError::BadType(data[0] >> 4))?;
    let u16_at = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let header = Header {
        ty,
        connection_id: u16_at(2),
        timestamp_us: u32_at(4),
        timestamp_diff_us: u32_at(8),
        wnd_size: u32_at(12),
        seq_nr: u16_at(16),
        ack_nr: u16_at(18),
    };

    let mut next = data[1];
    let mut at = HEADER_LEN;
    let mut selective_ack = None;
    let mut count = 0;
    while next != 0 {
        count += 1;
        if count > MAX_EXTENSIONS {
            return Err(DecodeError::TooManyExtensions);
        }
        if data.len() < at + 2 {
            return Err(DecodeError::TruncatedExtension);
        }
        let (this, len) = (next, data[at + 1]);
        next = data[at];
        let body = data
            .get(at + 2..at + 2 + len as usize)
            .ok_or(DecodeError::TruncatedExtension)?;
        if this == EXT_SELECTIVE_ACK {
            selective_ack.get_or_insert(body);
        }
        at += 2 + len as usize;
    }
    Ok(Packet {
        header,
        selective_ack,
        payload: &data[at..],
    })
}

/// Appends the encoding of a packet to `out`.
///
/// # Panics
/// If `selective_ack` is empty, longer than 252 bytes or not a multiple of 4: a bug of ours,
/// never of the peer.
pub fn encode(header: &Header, selective_ack: Option<&[u8]>, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + selective_ack.map_or(0, |s| s.len() + 2) + payload.len());
    out.push(((header.ty as u8) << 4) | VERSION);
    out.push(if selective_ack.is_some() {
        EXT_SELECTIVE_ACK
    } else {
        0
    });
    out.extend_from_slice(&header.connection_id.to_be_bytes());
    out.extend_from_slice(&header.timestamp_us.to_be_bytes());
    out.extend_from_slice(&header.timestamp_diff_us.to_be_bytes());
    out.extend_from_slice(&header.wnd_size.to_be_bytes());
    out.extend_from_slice(&header.seq_nr.to_be_bytes());
    out.extend_from_slice(&header.ack_nr.to_be_bytes());
    if let Some(mask) = selective_ack {
        assert!(
            !mask.is_empty() && mask.len() % 4 == 0 && mask.len() <= 252,
            "bad selective ACK length {}",
            mask.len()
        );
        out.push(0);
        out.push(mask.len() as u8);
        out.extend_from_slice(mask);
    }
    out.extend_from_slice(payload);
}

/// Sequence-number arithmetic on the 16-bit circle: `a` comes before `b` when `b` is less
/// than half the circle ahead of it.
pub fn seq_less(a: u16, b: u16) -> bool {
    (b.wrapping_sub(a) as i16) > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(ty: PacketType) -> Header {
        Header {
            ty,
            connection_id: 0x1234,
            timestamp_us: 0xdead_beef,
            timestamp_diff_us: 7,
            wnd_size: 1 << 20,
            seq_nr: 1,
            ack_nr: 0xffff,
        }
    }

    #[test]
    fn header_layout_matches_bep29() {
        let mut out = Vec::new();
        encode(&header(PacketType::Syn), None, &[], &mut out);
        assert_eq!(
            out,
            [
                0x41, 0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7, 0, 0x10, 0, 0, 0, 1, 0xff,
                0xff
            ]
        );
    }

    #[test]
    fn selective_ack_extension_layout() {
        let mut out = Vec::new();
        encode(
            &header(PacketType::State),
            Some(&[1, 0, 0, 0x80]),
            b"",
            &mut out,
        );
        assert_eq!(out[1], EXT_SELECTIVE_ACK);
        assert_eq!(&out[20..], &[0, 4, 1, 0, 0, 0x80]);
        let p = decode(&out).unwrap();
        assert_eq!(p.selective_ack, Some(&[1, 0, 0, 0x80][..]));
        assert!(p.payload.is_empty());
    }

    #[test]
    fn unknown_extensions_are_skipped() {
        let mut out = Vec::new();
        encode(&header(PacketType::Data), None, &[], &mut out);
        out[1] = 9; // unknown type 9, then a selective ACK, then payload
        out.extend_from_slice(&[EXT_SELECTIVE_ACK, 3, 0xaa, 0xbb, 0xcc]);
        out.extend_from_slice(&[0, 4, 0xff, 0, 0, 0]);
        out.extend_from_slice(b"hello");
        let p = decode(&out).unwrap();
        assert_eq!(p.selective_ack, Some(&[0xff, 0, 0, 0][..]));
        assert_eq!(p.payload, b"hello");
    }

    #[test]
    fn rejects_bad_packets() {
        let mut good = Vec::new();
        encode(&header(PacketType::Data), None, b"x", &mut good);
        assert_eq!(decode(&good[..19]), Err(DecodeError::TooShort));

        let mut v = good.clone();
        v[0] = 0x02;
        assert_eq!(decode(&v), Err(DecodeError::BadVersion(2)));
        v[0] = 0x51;
        assert_eq!(decode(&v), Err(DecodeError::BadType(5)));
        assert!(!looks_like_utp(
            b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe"
        ));

        let mut v = good.clone();
        v[1] = 1; // a selective ACK announced, but only one byte follows
        assert_eq!(decode(&v), Err(DecodeError::TruncatedExtension));

        let mut v = good[..20].to_vec();
        v[1] = 7;
        for _ in 0..MAX_EXTENSIONS {
            v.extend_from_slice(&[7, 0]);
        }
        assert_eq!(decode(&v), Err(DecodeError::TooManyExtensions));
    }

    #[test]
    fn selective_acks_of_any_length_are_accepted_as_libtorrent_sends_them() {
        // A STATE libtorrent 2.0.8 sent in the interop test: a 7-byte mask.
        let mut v = Vec::new();
        encode(&header(PacketType::State), None, &[], &mut v);
        v[1] = EXT_SELECTIVE_ACK;
        v.extend_from_slice(&[0, 7, 0, 0, 0, 0, 0xfe, 0xff, 0xff]);
        let p = decode(&v).unwrap();
        assert_eq!(p.selective_ack, Some(&[0, 0, 0, 0, 0xfe, 0xff, 0xff][..]));
        assert!(p.payload.is_empty());
    }

    #[test]
    fn sequence_numbers_wrap() {
        assert!(seq_less(1, 2));
        assert!(seq_less(0xffff, 0));
        assert!(seq_less(0xfff0, 5));
        assert!(!seq_less(5, 0xfff0));
        assert!(!seq_less(3, 3));
    }

    fn any_type() -> impl Strategy<Value = PacketType> {
        prop_oneof![
            Just(PacketType::Data),
            Just(PacketType::Fin),
            Just(PacketType::State),
            Just(PacketType::Reset),
            Just(PacketType::Syn),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            ty in any_type(),
            fields in any::<(u16, u32, u32, u32, u16, u16)>(),
            sack_words in proptest::option::of(1usize..=63),
            sack_seed in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let h = Header {
                ty,
                connection_id: fields.0,
                timestamp_us: fields.1,
                timestamp_diff_us: fields.2,
                wnd_size: fields.3,
                seq_nr: fields.4,
                ack_nr: fields.5,
            };
            let sack: Option<Vec<u8>> = sack_words
                .map(|w| (0..w * 4).map(|i| (i as u8).wrapping_mul(sack_seed)).collect());
            let mut out = Vec::new();
            encode(&h, sack.as_deref(), &payload, &mut out);
            prop_assert!(looks_like_utp(&out));
            let p = decode(&out).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.selective_ack, sack.as_deref());
            prop_assert_eq!(p.payload, &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = decode(&data) {
                prop_assert!(p.payload.len() <= data.len() - HEADER_LEN);
            }
        }

        #[test]
        fn arbitrary_extension_chains_never_panic(
            first in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut v = Vec::new();
            encode(&header(PacketType::State), None, &[], &mut v);
            v[1] = first;
            v.extend_from_slice(&tail);
            let _ = decode(&v);
        }
    }
}
