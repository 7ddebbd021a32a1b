//! The streaming frame decoder: bounded before it allocates, zero-copy for payloads.
//!
//! The driver reads socket bytes into a `BytesMut` and calls [`Decoder::decode`] until it
//! returns `Ok(None)`. Every length prefix is checked against [`Limits`] (and, per message
//! id, against the exact size that message must have) as soon as the 4- or 5-byte header
//! is visible, before the decoder reserves room for the frame. So a hostile peer costs at
//! most one frame of the largest legitimate size, and gets a [`WireError`] naming what it
//! did wrong, which the driver logs before it disconnects.

use bytes::{Buf, Bytes, BytesMut};

use super::message::{id, Message};
use crate::layout::Block;

/// Bounds on what a peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest block accepted in a `piece` message. We request 16 KiB blocks (BEP 3's
    /// de-facto size, the most any client accepts in a request), so that is the default.
    pub max_block_len: u32,
    /// Largest extended (BEP 10) message payload, e.g. an extended handshake or a
    /// 16 KiB ut_metadata block with its header.
    pub max_extended_len: usize,
    /// Largest bitfield before the piece count is known (magnet links): enough for the
    /// largest metadata we accept (16 MiB / 20 bytes per piece hash = 838,861 pieces).
    pub max_bitfield_len: usize,
    /// Largest payload of a message id we do not know (skipped, not an error).
    pub max_unknown_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_block_len: 16 * 1024,
            max_extended_len: 1 << 20,
            max_bitfield_len: 128 * 1024,
            max_unknown_len: 64 * 1024,
        }
    }
}

/// A protocol violation by the remote peer. The connection should be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the largest allowed ({max})")]
    FrameTooLong { len: u32, max: usize },
    #[error("{name} message of {len} bytes, expected {expected}")]
    BadLength {
        name: &'static str,
        len: u32,
        expected: u32,
    },
    #[error("{name} message of {len} bytes exceeds its limit of {max}")]
    MessageTooLong {
        name: &'static str,
        len: u32,
        max: usize,
    },
    #[error("bitfield of {got} bytes for {pieces} pieces (expected {expected} bytes)")]
    BitfieldLength {
        got: usize,
        expected: usize,
        pieces: u32,
    },
    #[error("bitfield has bits set past the last of {pieces} pieces")]
    BitfieldSpareBits { pieces: u32 },
}

/// Decodes a stream of peer messages (after the handshake).
#[derive(Clone, Debug)]
pub struct Decoder {
    limits: Limits,
    piece_count: Option<u32>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            piece_count: None,
        }
    }

    /// Tightens the bitfield check to exactly this torrent's piece count. Call it when
    /// the metadata is known (at once for .torrent files, after BEP 9 for magnets).
    pub fn set_piece_count(&mut self, pieces: u32) {
        self.piece_count = Some(pieces);
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The largest length prefix any message may carry under these limits.
    pub fn max_frame_body(&self) -> usize {
        let bitfield = match self.piece_count {
            Some(n) => bitfield_len(n),
            None => self.limits.max_bitfield_len,
        };
        [
            13,
            9 + self.limits.max_block_len as usize,
            2 + self.limits.max_extended_len,
            1 + bitfield,
            1 + self.limits.max_unknown_len,
        ]
        .into_iter()
        .max()
        .unwrap_or(13)
    }

    /// Decodes one message from the front of `src`, consuming its bytes.
    ///
    /// `Ok(None)`: incomplete; read more and call again (the decoder has reserved room
    /// for the rest of the frame). `Err`: the peer broke the protocol; nothing sensible
    /// can follow, so drop the connection.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len == 0 {
            src.advance(4);
            return Ok(Some(Message::KeepAlive));
        }
        let max = self.max_frame_body();
        if len as usize > max {
            return Err(WireError::FrameTooLong { len, max });
        }
        if src.len() < 5 {
            return Ok(None);
        }
        self.check_length(src[4], len)?;
        let frame_len = 4 + len as usize;
        if src.len() < frame_len {
            // Safe to allocate now: the length was checked for this message id.
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        // Fixed-size messages are read in place; only payload-carrying ones split the
        // buffer (a cheap refcount bump, and the payload stays zero-copy).
        if let Some(m) = parse_fixed(src[4], &src[5..frame_len]) {
            src.advance(frame_len);
            return Ok(Some(m));
        }
        let frame = src.split_to(frame_len).freeze();
        self.parse_payload(frame).map(Some)
    }

    /// Checks a frame's declared length against what its message id allows.
    fn check_length(&self, msg_id: u8, len: u32) -> Result<(), WireError> {
        let exact = |name: &'static str, expected: u32| {
            if len == expected {
                Ok(())
            } else {
                Err(WireError::BadLength {
                    name,
                    len,
                    expected,
                })
            }
        };
        let at_most = |name: &'static str, max: usize, min: u32| {
            if len < min {
                Err(WireError::BadLength {
                    name,
                    len,
                    expected: min,
                })
            } else if len as usize > max {
                Err(WireError::MessageTooLong { name, len, max })
            } else {
                Ok(())
            }
        };
        match msg_id {
            id::CHOKE => exact("choke", 1),
            id::UNCHOKE => exact("unchoke", 1),
            id::INTERESTED => exact("interested", 1),
            id::NOT_INTERESTED => exact("not interested", 1),
            id::HAVE_ALL => exact("have all", 1),
            id::HAVE_NONE => exact("have none", 1),
            id::HAVE => exact("have", 5),
            id::SUGGEST => exact("suggest", 5),
            id::ALLOWED_FAST => exact("allowed fast", 5),
            id::REQUEST => exact("request", 13),
            id::CANCEL => exact("cancel", 13),
            id::REJECT_REQUEST => exact("reject request", 13),
            id::PORT => exact("port", 3),
            id::PIECE => at_most("piece", 9 + self.limits.max_block_len as usize, 9),
            id::EXTENDED => at_most("extended", 2 + self.limits.max_extended_len, 2),
            id::BITFIELD => match self.piece_count {
                Some(pieces) => {
                    let expected = bitfield_len(pieces);
                    if len as usize - 1 == expected {
                        Ok(())
                    } else {
                        Err(WireError::BitfieldLength {
                            got: len as usize - 1,
                            expected,
                            pieces,
                        })
                    }
                }
                None => at_most("bitfield", 1 + self.limits.max_bitfield_len, 1),
            },
            _ => at_most("unknown", 1 + self.limits.max_unknown_len, 1),
        }
    }

    /// Parses a complete payload-carrying frame whose length was already checked.
    fn parse_payload(&self, frame: Bytes) -> Result<Message, WireError> {
        let msg_id = frame[4];
        let payload = frame.slice(5..);
        Ok(match msg_id {
            id::PIECE => Message::Piece {
                piece: u32_at(&payload, 0),
                offset: u32_at(&payload, 4),
                data: payload.slice(8..),
            },
            id::EXTENDED => Message::Extended {
                id: payload[0],
                payload: payload.slice(1..),
            },
            id::BITFIELD => {
                if let Some(pieces) = self.piece_count {
                    check_spare_bits(&payload, pieces)?;
                }
                Message::Bitfield(payload)
            }
            other => Message::Unknown { id: other, payload },
        })
    }
}

/// Parses a message of fixed size (length already checked), or `None` for a
/// payload-carrying id.
fn parse_fixed(msg_id: u8, p: &[u8]) -> Option<Message> {
    let block = || Block {
        piece: u32_at(p, 0),
        offset: u32_at(p, 4),
        length: u32_at(p, 8),
    };
    Some(match msg_id {
        id::CHOKE => Message::Choke,
        id::UNCHOKE => Message::Unchoke,
        id::INTERESTED => Message::Interested,
        id::NOT_INTERESTED => Message::NotInterested,
        id::HAVE_ALL => Message::HaveAll,
        id::HAVE_NONE => Message::HaveNone,
        id::HAVE => Message::Have {
            piece: u32_at(p, 0),
        },
        id::SUGGEST => Message::Suggest {
            piece: u32_at(p, 0),
        },
        id::ALLOWED_FAST => Message::AllowedFast {
            piece: u32_at(p, 0),
        },
        id::REQUEST => Message::Request(block()),
        id::CANCEL => Message::Cancel(block()),
        id::REJECT_REQUEST => Message::RejectRequest(block()),
        id::PORT => Message::Port(u16::from_be_bytes([p[0], p[1]])),
        _ => return None,
    })
}

/// A big-endian u32 at `i` (the caller checked the length).
fn u32_at(p: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]])
}

/// Bytes in a bitfield for `pieces` pieces.
pub fn bitfield_len(pieces: u32) -> usize {
    (pieces as usize).div_ceil(8)
}

/// Validates a bitfield received before the piece count was known (magnet links), once
/// it is: exact length, and no bits set past the last piece (BEP 3 says drop such peers).
pub fn validate_bitfield(bits: &[u8], pieces: u32) -> Result<(), WireError> {
    let expected = bitfield_len(pieces);
    if bits.len() != expected {
        return Err(WireError::BitfieldLength {
            got: bits.len(),
            expected,
            pieces,
        });
    }
    check_spare_bits(bits, pieces)
}

fn check_spare_bits(bits: &[u8], pieces: u32) -> Result<(), WireError> {
    let used_in_last = pieces % 8;
    if used_in_last != 0 {
        let spare_mask = 0xFFu8 >> used_in_last;
        if bits.last().is_some_and(|b| b & spare_mask != 0) {
            return Err(WireError::BitfieldSpareBits { pieces });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    fn decode_one(d: &mut Decoder, bytes: &[u8]) -> Result<Option<Message>, WireError> {
        d.decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
        let err = d.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, WireError::FrameTooLong { len: u32::MAX, .. }),
            "{err}"
        );
        assert!(
            buf.capacity() < 1024,
            "nothing was reserved for the bogus frame"
        );
    }

    #[test]
    fn per_message_lengths_are_exact() {
        let mut d = Decoder::default();
        // A 'have' claiming 6 bytes: refused as soon as the id is visible.
        let err = decode_one(&mut d, &[0, 0, 0, 6, id::HAVE]).unwrap_err();
        assert_eq!(
            err,
            WireError::BadLength {
                name: "have",
                len: 6,
                expected: 5
            }
        );
        let err = decode_one(&mut d, &[0, 0, 0, 2, id::CHOKE]).unwrap_err();
        assert!(matches!(err, WireError::BadLength { name: "choke", .. }));
        // A piece with a 16 KiB + 1 block.
        let err = decode_one(&mut d, &[0, 0, 0x40, 0x0a, id::PIECE]).unwrap_err();
        assert!(
            matches!(err, WireError::MessageTooLong { name: "piece", .. }),
            "{err}"
        );
        // A piece too short to hold its header.
        let err = decode_one(&mut d, &[0, 0, 0, 8, id::PIECE]).unwrap_err();
        assert!(matches!(err, WireError::BadLength { name: "piece", .. }));
        let err = decode_one(&mut d, &[0, 0, 0, 1, id::EXTENDED]).unwrap_err();
        assert!(matches!(
            err,
            WireError::BadLength {
                name: "extended",
                ..
            }
        ));
    }

    #[test]
    fn incomplete_frames_reserve_only_after_the_check() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&[0, 0, 0x40, 0x09, id::PIECE, 0, 0][..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(
            buf.capacity() >= 4 + 0x4009,
            "room for the whole checked frame"
        );
        assert_eq!(buf.len(), 7, "nothing consumed");
    }

    #[test]
    fn piece_payload_is_a_slice_of_the_read_buffer() {
        let mut body = vec![id::PIECE, 0, 0, 0, 2, 0, 0, 0x40, 0];
        body.extend_from_slice(&[0xAB; 100]);
        let mut buf = frame(&body);
        let start = buf.as_ptr() as usize;
        let msg = Decoder::default().decode(&mut buf).unwrap().unwrap();
        let Message::Piece {
            piece,
            offset,
            data,
        } = msg
        else {
            panic!("not a piece")
        };
        assert_eq!((piece, offset, data.len()), (2, 0x4000, 100));
        assert_eq!(data.as_ptr() as usize, start + 13, "zero copy");
    }

    #[test]
    fn bitfield_checked_against_piece_count() {
        let mut d = Decoder::default();
        // Unknown piece count: any bounded bitfield passes.
        assert!(matches!(
            d.decode(&mut frame(&[id::BITFIELD, 0xFF, 0xFF])),
            Ok(Some(Message::Bitfield(_)))
        ));
        d.set_piece_count(10);
        assert!(matches!(
            d.decode(&mut frame(&[id::BITFIELD, 0xFF, 0xC0])),
            Ok(Some(Message::Bitfield(_)))
        ));
        assert_eq!(
            d.decode(&mut frame(&[id::BITFIELD, 0xFF, 0xE0])),
            Err(WireError::BitfieldSpareBits { pieces: 10 })
        );
        assert_eq!(
            d.decode(&mut frame(&[id::BITFIELD, 0xFF])),
            Err(WireError::BitfieldLength {
                got: 1,
                expected: 2,
                pieces: 10
            })
        );
        assert!(validate_bitfield(&[0xFF, 0xC0], 10).is_ok());
        assert!(validate_bitfield(&[0xFF, 0xC1], 10).is_err());
        assert!(validate_bitfield(&[0xFF], 8).is_ok());
        assert!(validate_bitfield(&[], 0).is_ok());
    }

    #[test]
    fn unknown_ids_are_skipped_not_fatal() {
        let mut d = Decoder::default();
        let mut buf = frame(&[21, 1, 2, 3]);
        buf.extend_from_slice(&[0, 0, 0, 1, id::UNCHOKE]);
        assert_eq!(
            d.decode(&mut buf),
            Ok(Some(Message::Unknown {
                id: 21,
                payload: Bytes::from_static(&[1, 2, 3])
            }))
        );
        assert_eq!(d.decode(&mut buf), Ok(Some(Message::Unchoke)));
        assert_eq!(d.decode(&mut buf), Ok(None));
    }

    #[test]
    fn max_frame_tracks_limits() {
        let mut d = Decoder::new(Limits {
            max_block_len: 16384,
            max_extended_len: 100,
            max_bitfield_len: 50,
            max_unknown_len: 10,
        });
        assert_eq!(d.max_frame_body(), 9 + 16384);
        d.set_piece_count(8 * 20_000);
        assert_eq!(d.max_frame_body(), 20_001);
    }
}
