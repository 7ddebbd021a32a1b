//! ut_metadata (BEP 9) messages, and the serving side.
//!
//! Every message is a bencoded dictionary `{msg_type, piece[, total_size]}`; a `data`
//! message is followed, in the same extended message, by the raw metadata block.

use bytes::Bytes;

use bencode::{Encoder, Limits};

use super::ExtensionError;

/// Metadata travels in 16 KiB blocks; only the last may be shorter.
pub const METADATA_BLOCK_LEN: usize = 16 * 1024;

/// Largest info dictionary we fetch or serve (far above any real torrent's).
pub const MAX_METADATA_SIZE: u64 = 16 << 20;

const REQUEST: i64 = 0;
const DATA: i64 = 1;
const REJECT: i64 = 2;

/// One ut_metadata message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataMessage {
    Request {
        piece: u32,
    },
    /// `data` is a slice of the received frame (no copy).
    Data {
        piece: u32,
        total_size: u64,
        data: Bytes,
    },
    Reject {
        piece: u32,
    },
}

impl MetadataMessage {
    /// Parses an extended message payload. `Ok(None)`: an unknown `msg_type`, which BEP 9
    /// says to ignore.
    pub fn parse(payload: &Bytes) -> Result<Option<MetadataMessage>, ExtensionError> {
        const WHAT: &str = "ut_metadata";
        let limits = Limits {
            max_depth: 4,
            max_len: payload.len(),
        };
        let (v, used) = bencode::decode_prefix_with(payload, limits)
            .map_err(|source| ExtensionError::Bencode { what: WHAT, source })?;
        let d = v.as_dict().ok_or(ExtensionError::NotADict { what: WHAT })?;
        let bad = |field| ExtensionError::BadField { what: WHAT, field };
        let msg_type = d.get_int(b"msg_type").ok_or(bad("msg_type"))?;
        let piece = d
            .get_int(b"piece")
            .and_then(|p| u32::try_from(p).ok())
            .ok_or(bad("piece"))?;
        Ok(Some(match msg_type {
            REQUEST => MetadataMessage::Request { piece },
            REJECT => MetadataMessage::Reject { piece },
            DATA => {
                let total_size = d
                    .get_int(b"total_size")
                    .and_then(|s| u64::try_from(s).ok())
                    .ok_or(bad("total_size"))?;
                MetadataMessage::Data {
                    piece,
                    total_size,
                    data: payload.slice(used..),
                }
            }
            _ => return Ok(None),
        }))
    }

    /// The extended message payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        let mut e = Encoder::new(&mut out);
        match self {
            MetadataMessage::Request { piece } => {
                e.begin_dict()
                    .key(b"msg_type")
                    .int(REQUEST)
                    .key(b"piece")
                    .int(*piece as i64)
                    .end();
            }
            MetadataMessage::Reject { piece } => {
                e.begin_dict()
                    .key(b"msg_type")
                    .int(REJECT)
                    .key(b"piece")
                    .int(*piece as i64)
                    .end();
            }
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                e.begin_dict()
                    .key(b"msg_type")
                    .int(DATA)
                    .key(b"piece")
                    .int(*piece as i64)
                    .key(b"total_size")
                    .int((*total_size).min(i64::MAX as u64) as i64)
                    .end();
                out.extend_from_slice(data);
            }
        }
        out
    }
}

/// Number of 16 KiB blocks in metadata of `size` bytes.
pub(super) fn block_count(size: u64) -> u32 {
    size.div_ceil(METADATA_BLOCK_LEN as u64) as u32
}

/// Length of block `piece` of metadata of `size` bytes.
pub(super) fn block_len(size: u64, piece: u32) -> usize {
    let start = piece as u64 * METADATA_BLOCK_LEN as u64;
    (size.saturating_sub(start)).min(METADATA_BLOCK_LEN as u64) as usize
}

/// Serves our info dictionary to peers that ask for it.
#[derive(Clone, Debug)]
pub struct MetadataServer {
    info: Bytes,
}

impl MetadataServer {
    /// `info` is the raw info dictionary (the bytes the info-hash is computed over).
    pub fn new(info: Bytes) -> Self {
        MetadataServer { info }
    }

    /// For our extended handshake's `metadata_size`.
    pub fn metadata_size(&self) -> u64 {
        self.info.len() as u64
    }

    /// The answer to a request for block `piece`: the data, or a reject if out of range.
    pub fn respond(&self, piece: u32) -> MetadataMessage {
        let size = self.metadata_size();
        if piece >= block_count(size) {
            return MetadataMessage::Reject { piece };
        }
        let start = piece as usize * METADATA_BLOCK_LEN;
        MetadataMessage::Data {
            piece,
            total_size: size,
            data: self.info.slice(start..start + block_len(size, piece)),
        }
    }

    /// The reply to an incoming message, if it wants one (only requests do).
    pub fn handle(&self, msg: &MetadataMessage) -> Option<MetadataMessage> {
        match msg {
            MetadataMessage::Request { piece } => Some(self.respond(*piece)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_matches_bep9() {
        assert_eq!(
            MetadataMessage::Request { piece: 0 }.encode(),
            b"d8:msg_typei0e5:piecei0ee"
        );
        assert_eq!(
            MetadataMessage::Reject { piece: 3 }.encode(),
            b"d8:msg_typei2e5:piecei3ee"
        );
        let data = MetadataMessage::Data {
            piece: 0,
            total_size: 3,
            data: Bytes::from_static(b"abc"),
        };
        let bytes = data.encode();
        assert_eq!(bytes, b"d8:msg_typei1e5:piecei0e10:total_sizei3eeabc");
        assert_eq!(
            MetadataMessage::parse(&Bytes::from(bytes)).unwrap(),
            Some(data)
        );
    }

    #[test]
    fn parse_is_strict_where_it_matters_and_ignores_unknown_types() {
        let p = |s: &'static [u8]| MetadataMessage::parse(&Bytes::from_static(s));
        assert_eq!(p(b"d8:msg_typei9e5:piecei0ee"), Ok(None));
        assert!(p(b"d8:msg_typei0ee").is_err(), "no piece");
        assert!(p(b"d8:msg_typei0e5:piecei-1ee").is_err());
        assert!(
            p(b"d8:msg_typei1e5:piecei0ee").is_err(),
            "data without total_size"
        );
        assert!(p(b"le").is_err());
        assert!(p(b"").is_err());
        assert!(p(b"d8:msg_type").is_err());
    }

    #[test]
    fn server_serves_blocks_and_rejects_out_of_range() {
        let info: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let server = MetadataServer::new(Bytes::from(info.clone()));
        assert_eq!(server.metadata_size(), 40_000);
        let MetadataMessage::Data {
            data, total_size, ..
        } = server.respond(2)
        else {
            panic!("expected data")
        };
        assert_eq!(total_size, 40_000);
        assert_eq!(&data[..], &info[32768..]);
        assert_eq!(server.respond(3), MetadataMessage::Reject { piece: 3 });
        assert_eq!(
            server.respond(u32::MAX),
            MetadataMessage::Reject { piece: u32::MAX }
        );
        assert_eq!(server.handle(&MetadataMessage::Reject { piece: 0 }), None);
        assert!(matches!(
            server.handle(&MetadataMessage::Request { piece: 0 }),
            Some(MetadataMessage::Data { .. })
        ));
    }
}
