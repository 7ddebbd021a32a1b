//! The 68-byte BitTorrent handshake (BEP 3) and its reserved feature bits.
//!
//! ```text
//! <pstrlen=19><pstr="BitTorrent protocol"><reserved: 8><info_hash: 20><peer_id: 20>
//! ```

use bytes::{Buf, BufMut, BytesMut};

use crate::infohash::InfoHash;

/// The protocol string every v1 peer sends.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Length of a complete handshake on the wire.
pub const HANDSHAKE_LEN: usize = 1 + 19 + 8 + 20 + 20;

/// A peer's self-chosen 20-byte id (BEP 20 style, e.g. `-SW0100-` + 12 random bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub [u8; 20]);

impl std::fmt::Debug for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Most ids start with a printable client tag; show that, hex for the rest.
        let tag_len = self
            .0
            .iter()
            .take_while(|b| b.is_ascii_graphic())
            .count()
            .min(8);
        let tag = String::from_utf8_lossy(&self.0[..tag_len]);
        write!(f, "PeerId({tag}{})", hex::encode(&self.0[tag_len..]))
    }
}

/// The 8 reserved handshake bytes: one bit per optional protocol feature.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Reserved(pub [u8; 8]);

impl Reserved {
    /// What `swarm` advertises: extension protocol, DHT and Fast.
    pub const OURS: Reserved = Reserved([0, 0, 0, 0, 0, 0x10, 0, 0x05]);

    /// BEP 10 extension protocol: `reserved[5] & 0x10`.
    pub fn extension_protocol(&self) -> bool {
        self.0[5] & 0x10 != 0
    }

    /// BEP 5 DHT (the peer sends a `port` message): `reserved[7] & 0x01`.
    pub fn dht(&self) -> bool {
        self.0[7] & 0x01 != 0
    }

    /// BEP 6 Fast extension: `reserved[7] & 0x04`.
    pub fn fast(&self) -> bool {
        self.0[7] & 0x04 != 0
    }

    pub fn with_extension_protocol(mut self, on: bool) -> Self {
        set_bit(&mut self.0[5], 0x10, on);
        self
    }

    pub fn with_dht(mut self, on: bool) -> Self {
        set_bit(&mut self.0[7], 0x01, on);
        self
    }

    pub fn with_fast(mut self, on: bool) -> Self {
        set_bit(&mut self.0[7], 0x04, on);
        self
    }

    /// Features both sides support (a feature is on only if both set the bit).
    pub fn common(&self, other: &Reserved) -> Reserved {
        let mut out = [0u8; 8];
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *o = a & b;
        }
        Reserved(out)
    }
}

fn set_bit(byte: &mut u8, mask: u8, on: bool) {
    if on {
        *byte |= mask;
    } else {
        *byte &= !mask;
    }
}

/// A decoded handshake.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Handshake {
    pub reserved: Reserved,
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake: protocol string length {0}, expected 19 (not a BitTorrent peer or an encrypted stream)")]
    BadProtocolLength(u8),
    #[error("handshake: protocol string is not \"BitTorrent protocol\"")]
    BadProtocol,
}

impl Handshake {
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        Handshake {
            reserved: Reserved::OURS,
            info_hash,
            peer_id,
        }
    }

    /// Appends the 68 handshake bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(HANDSHAKE_LEN);
        dst.put_u8(PROTOCOL.len() as u8);
        dst.put_slice(PROTOCOL);
        dst.put_slice(&self.reserved.0);
        dst.put_slice(self.info_hash.as_bytes());
        dst.put_slice(&self.peer_id.0);
    }

    /// The info-hash of a handshake still arriving, once its first 48 bytes are in and the
    /// protocol string checks out (nothing is consumed). A listener serving several
    /// torrents uses it to pick the torrent, and may answer before the peer id arrives.
    pub fn peek_info_hash(src: &[u8]) -> Option<InfoHash> {
        const END: usize = 1 + 19 + 8 + 20;
        if src.len() < END || src[0] as usize != PROTOCOL.len() || &src[1..20] != PROTOCOL {
            return None;
        }
        let mut ih = [0u8; 20];
        ih.copy_from_slice(&src[28..END]);
        Some(InfoHash(ih))
    }

    /// Decodes a handshake from the front of `src`, consuming it. `Ok(None)` means more
    /// bytes are needed; a wrong protocol string is reported as soon as it is visible, so
    /// a non-BitTorrent peer is dropped without waiting for 68 bytes.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Handshake>, HandshakeError> {
        if let Some(&len) = src.first() {
            if len as usize != PROTOCOL.len() {
                return Err(HandshakeError::BadProtocolLength(len));
            }
        }
        let visible = src.len().min(1 + PROTOCOL.len());
        if src.len() > 1 && src[1..visible] != PROTOCOL[..visible - 1] {
            return Err(HandshakeError::BadProtocol);
        }
        if src.len() < HANDSHAKE_LEN {
            return Ok(None);
        }
        src.advance(1 + PROTOCOL.len());
        let mut reserved = [0u8; 8];
        src.copy_to_slice(&mut reserved);
        let mut info_hash = [0u8; 20];
        src.copy_to_slice(&mut info_hash);
        let mut peer_id = [0u8; 20];
        src.copy_to_slice(&mut peer_id);
        Ok(Some(Handshake {
            reserved: Reserved(reserved),
            info_hash: InfoHash(info_hash),
            peer_id: PeerId(peer_id),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bits_match_the_beps() {
        let r = Reserved::OURS;
        assert!(r.extension_protocol() && r.dht() && r.fast());
        assert_eq!(r.0[5], 0x10);
        assert_eq!(r.0[7], 0x05);
        let none = Reserved::default();
        assert!(!none.extension_protocol() && !none.dht() && !none.fast());
        let only_fast = Reserved::default().with_fast(true);
        assert_eq!(only_fast.0, [0, 0, 0, 0, 0, 0, 0, 0x04]);
        assert!(!r.common(&only_fast).extension_protocol());
        assert!(r.common(&only_fast).fast());
        assert!(!r.with_dht(false).dht());
    }

    #[test]
    fn round_trip_and_partial_input() {
        let hs = Handshake::new(InfoHash([7; 20]), PeerId(*b"-SW0001-abcdefghijkl"));
        let mut buf = BytesMut::new();
        hs.encode(&mut buf);
        assert_eq!(buf.len(), HANDSHAKE_LEN);
        assert_eq!(&buf[..20], b"\x13BitTorrent protocol");
        for cut in 0..HANDSHAKE_LEN {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(Handshake::decode(&mut part), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
        buf.extend_from_slice(b"\x00\x00\x00\x00"); // a keep-alive right behind it
        assert_eq!(Handshake::decode(&mut buf), Ok(Some(hs)));
        assert_eq!(&buf[..], b"\x00\x00\x00\x00");
    }

    #[test]
    fn info_hash_is_visible_before_the_peer_id() {
        let hs = Handshake::new(InfoHash([9; 20]), PeerId([1; 20]));
        let mut buf = BytesMut::new();
        hs.encode(&mut buf);
        assert_eq!(Handshake::peek_info_hash(&buf[..47]), None);
        assert_eq!(
            Handshake::peek_info_hash(&buf[..48]),
            Some(InfoHash([9; 20]))
        );
        assert_eq!(Handshake::peek_info_hash(&buf), Some(InfoHash([9; 20])));
        let mut bad = buf.to_vec();
        bad[5] = b'x';
        assert_eq!(Handshake::peek_info_hash(&bad), None);
    }

    #[test]
    fn foreign_protocols_are_refused_early() {
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            Handshake::decode(&mut http),
            Err(HandshakeError::BadProtocolLength(b'G'))
        );
        let mut wrong = BytesMut::from(&b"\x13BitTorrent protocoX"[..]);
        assert_eq!(
            Handshake::decode(&mut wrong),
            Err(HandshakeError::BadProtocol)
        );
        let mut early = BytesMut::from(&b"\x13Bx"[..]);
        assert_eq!(
            Handshake::decode(&mut early),
            Err(HandshakeError::BadProtocol)
        );
    }

    #[test]
    fn peer_id_debug_is_readable() {
        let id = PeerId(*b"-lt2080-\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c");
        assert_eq!(
            format!("{id:?}"),
            "PeerId(-lt2080-0102030405060708090a0b0c)"
        );
    }
}
