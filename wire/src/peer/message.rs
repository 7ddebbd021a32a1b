//! Peer wire messages (BEP 3, BEP 5 `port`, BEP 6 Fast, BEP 10 extended) and their
//! encoding. Decoding lives in [`super::codec`], which bounds every frame first.
//!
//! Every message but keep-alive is `<len: u32 BE><id: u8><payload>`, `len` counting the id.

use bytes::{BufMut, Bytes, BytesMut};

use crate::layout::Block;

/// Message ids on the wire.
pub mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    /// BEP 5: the peer's DHT port.
    pub const PORT: u8 = 9;
    /// BEP 6 Fast extension.
    pub const SUGGEST: u8 = 0x0D;
    pub const HAVE_ALL: u8 = 0x0E;
    pub const HAVE_NONE: u8 = 0x0F;
    pub const REJECT_REQUEST: u8 = 0x10;
    pub const ALLOWED_FAST: u8 = 0x11;
    /// BEP 10 extension protocol.
    pub const EXTENDED: u8 = 20;
}

/// One peer wire message.
///
/// Payload-carrying variants hold [`Bytes`] that are slices of the decoder's read buffer
/// (no copy). Message semantics (e.g. Fast messages only when both sides set the bit,
/// `bitfield` only first) are the engine's business; the codec only checks structure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have {
        piece: u32,
    },
    /// Raw bitfield bytes, high bit of the first byte = piece 0.
    Bitfield(Bytes),
    Request(Block),
    Piece {
        piece: u32,
        offset: u32,
        data: Bytes,
    },
    Cancel(Block),
    /// BEP 5: the UDP port of the peer's DHT node.
    Port(u16),
    Suggest {
        piece: u32,
    },
    HaveAll,
    HaveNone,
    RejectRequest(Block),
    AllowedFast {
        piece: u32,
    },
    /// BEP 10: `id` 0 is the extended handshake, others are ids we assigned in ours.
    Extended {
        id: u8,
        payload: Bytes,
    },
    /// A message id we do not know (e.g. BEP 52 hash messages); BEP 3 says ignore.
    Unknown {
        id: u8,
        payload: Bytes,
    },
}

impl Message {
    /// The wire id, or `None` for keep-alive.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => id::CHOKE,
            Message::Unchoke => id::UNCHOKE,
            Message::Interested => id::INTERESTED,
            Message::NotInterested => id::NOT_INTERESTED,
            Message::Have { .. } => id::HAVE,
            Message::Bitfield(_) => id::BITFIELD,
            Message::Request(_) => id::REQUEST,
            Message::Piece { .. } => id::PIECE,
            Message::Cancel(_) => id::CANCEL,
            Message::Port(_) => id::PORT,
            Message::Suggest { .. } => id::SUGGEST,
            Message::HaveAll => id::HAVE_ALL,
            Message::HaveNone => id::HAVE_NONE,
            Message::RejectRequest(_) => id::REJECT_REQUEST,
            Message::AllowedFast { .. } => id::ALLOWED_FAST,
            Message::Extended { .. } => id::EXTENDED,
            Message::Unknown { id, .. } => *id,
        })
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::KeepAlive => "keep-alive",
            Message::Choke => "choke",
            Message::Unchoke => "unchoke",
            Message::Interested => "interested",
            Message::NotInterested => "not interested",
            Message::Have { .. } => "have",
            Message::Bitfield(_) => "bitfield",
            Message::Request(_) => "request",
            Message::Piece { .. } => "piece",
            Message::Cancel(_) => "cancel",
            Message::Port(_) => "port",
            Message::Suggest { .. } => "suggest",
            Message::HaveAll => "have all",
            Message::HaveNone => "have none",
            Message::RejectRequest(_) => "reject request",
            Message::AllowedFast { .. } => "allowed fast",
            Message::Extended { .. } => "extended",
            Message::Unknown { .. } => "unknown",
        }
    }

    /// Bytes after the 4-byte length prefix (the value of the prefix).
    fn body_len(&self) -> usize {
        match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have { .. } | Message::Suggest { .. } | Message::AllowedFast { .. } => 5,
            Message::Bitfield(b) => 1 + b.len(),
            Message::Request(_) | Message::Cancel(_) | Message::RejectRequest(_) => 13,
            Message::Piece { data, .. } => 9 + data.len(),
            Message::Port(_) => 3,
            Message::Extended { payload, .. } => 2 + payload.len(),
            Message::Unknown { payload, .. } => 1 + payload.len(),
        }
    }

    /// Size on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + self.body_len()
    }

    /// Appends the message to `dst`. Copies piece data; see [`encode_piece_header`] for a
    /// zero-copy send path.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_u32(self.body_len() as u32);
        let Some(msg_id) = self.id() else { return };
        dst.put_u8(msg_id);
        match self {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => {}
            Message::Have { piece }
            | Message::Suggest { piece }
            | Message::AllowedFast { piece } => dst.put_u32(*piece),
            Message::Bitfield(bits) => dst.put_slice(bits),
            Message::Request(r) | Message::Cancel(r) | Message::RejectRequest(r) => {
                dst.put_u32(r.piece);
                dst.put_u32(r.offset);
                dst.put_u32(r.length);
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => {
                dst.put_u32(*piece);
                dst.put_u32(*offset);
                dst.put_slice(data);
            }
            Message::Port(port) => dst.put_u16(*port),
            Message::Extended { id, payload } => {
                dst.put_u8(*id);
                dst.put_slice(payload);
            }
            Message::Unknown { payload, .. } => dst.put_slice(payload),
        }
    }
}

/// Appends the 13-byte header of a `piece` message carrying `data_len` bytes; the caller
/// then writes the block itself (e.g. a vectored write of header + `Bytes` from storage).
pub fn encode_piece_header(piece: u32, offset: u32, data_len: u32, dst: &mut BytesMut) {
    dst.reserve(13);
    dst.put_u32(9 + data_len);
    dst.put_u8(id::PIECE);
    dst.put_u32(piece);
    dst.put_u32(offset);
}

/// Appends an extended message (BEP 10) whose payload is written by the caller's closure
/// straight into `dst` (no intermediate buffer); the length prefix is patched afterwards.
pub fn encode_extended_with(ext_id: u8, dst: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(id::EXTENDED);
    dst.put_u8(ext_id);
    write(dst);
    let body = (dst.len() - start - 4) as u32;
    dst[start..start + 4].copy_from_slice(&body.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(m: &Message) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        assert_eq!(b.len(), m.encoded_len());
        b.to_vec()
    }

    #[test]
    fn wire_bytes_match_bep3() {
        assert_eq!(bytes_of(&Message::KeepAlive), [0, 0, 0, 0]);
        assert_eq!(bytes_of(&Message::Choke), [0, 0, 0, 1, 0]);
        assert_eq!(bytes_of(&Message::NotInterested), [0, 0, 0, 1, 3]);
        assert_eq!(
            bytes_of(&Message::Have { piece: 0x01020304 }),
            [0, 0, 0, 5, 4, 1, 2, 3, 4]
        );
        assert_eq!(
            bytes_of(&Message::Request(Block {
                piece: 1,
                offset: 0x4000,
                length: 0x4000
            })),
            [0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
        );
        assert_eq!(bytes_of(&Message::Port(6881)), [0, 0, 0, 3, 9, 0x1a, 0xe1]);
        assert_eq!(bytes_of(&Message::HaveAll), [0, 0, 0, 1, 0x0e]);
        assert_eq!(
            bytes_of(&Message::AllowedFast { piece: 7 }),
            [0, 0, 0, 5, 0x11, 0, 0, 0, 7]
        );
        assert_eq!(
            bytes_of(&Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"de")
            }),
            [0, 0, 0, 4, 20, 0, b'd', b'e']
        );
    }

    #[test]
    fn piece_header_matches_full_encoding() {
        let data = Bytes::from_static(b"hello");
        let full = bytes_of(&Message::Piece {
            piece: 3,
            offset: 16,
            data: data.clone(),
        });
        let mut hdr = BytesMut::new();
        encode_piece_header(3, 16, data.len() as u32, &mut hdr);
        hdr.extend_from_slice(&data);
        assert_eq!(hdr.to_vec(), full);
    }

    #[test]
    fn extended_with_patches_the_length() {
        let mut b = BytesMut::from(&b"xx"[..]);
        encode_extended_with(3, &mut b, |d| d.extend_from_slice(b"d1:ai1ee"));
        let expect = bytes_of(&Message::Extended {
            id: 3,
            payload: Bytes::from_static(b"d1:ai1ee"),
        });
        assert_eq!(&b[2..], &expect[..]);
    }
}
