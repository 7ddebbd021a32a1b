//! A torrent's shape, one model shared by metainfo, the codec, the engine, the core and
//! storage: its bytes end to end cut into pieces ([`Geometry`]), pieces cut into blocks
//! ([`Block`]). Which files those bytes belong to is storage's business
//! ([`crate::storage::StorageLayout`], which holds a [`Geometry`]).

use crate::metainfo::Info;

/// The block size everyone uses (BEP 3: 16 KiB).
pub const BLOCK_LEN: u32 = 16 * 1024;

/// `length` bytes at `offset` within `piece`: what `request`, `cancel` and `reject` name,
/// what the engine asks for and hands out, and what storage reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub piece: u32,
    pub offset: u32,
    pub length: u32,
}

/// Piece and block sizes of a torrent: `total_length` bytes in pieces of `piece_length`
/// (the last one may be short), each in blocks of `block_len` (the last one may be short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub piece_count: u32,
    pub piece_length: u32,
    pub total_length: u64,
    pub block_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("total length is zero")]
    Empty,
    #[error("piece length {0} is zero or over 2^30")]
    PieceLength(u64),
    #[error("torrent has more than 2^31 pieces")]
    TooManyPieces,
}

impl Geometry {
    /// A torrent the engine can exchange: not empty, pieces of at most 2^30 bytes, at
    /// most 2^31 of them.
    pub fn new(total_length: u64, piece_length: u64) -> Result<Self, GeometryError> {
        if total_length == 0 {
            return Err(GeometryError::Empty);
        }
        if piece_length == 0 || piece_length > 1 << 30 {
            return Err(GeometryError::PieceLength(piece_length));
        }
        if Self::pieces_in(total_length, piece_length) > 1 << 31 {
            return Err(GeometryError::TooManyPieces);
        }
        Self::of_stream(total_length, piece_length as u32).ok_or(GeometryError::TooManyPieces)
    }

    /// The geometry of an info dictionary (never an error for a parsed one).
    pub fn from_info(info: &Info) -> Result<Self, GeometryError> {
        Self::new(info.total_length, info.piece_length)
    }

    /// Any byte stream in pieces of `piece_length`, an empty one (no pieces) included;
    /// `None` when `piece_length` is zero or the piece count does not fit a `u32`.
    /// Storage lays files out over these; [`Geometry::new`] adds the engine's bounds.
    pub fn of_stream(total_length: u64, piece_length: u32) -> Option<Self> {
        if piece_length == 0 {
            return None;
        }
        let piece_count = u32::try_from(Self::pieces_in(total_length, piece_length as u64)).ok()?;
        Some(Geometry {
            piece_count,
            piece_length,
            total_length,
            block_len: BLOCK_LEN,
        })
    }

    /// How many pieces of `piece_length` (not zero) hold `total_length` bytes.
    pub fn pieces_in(total_length: u64, piece_length: u64) -> u64 {
        total_length.div_ceil(piece_length)
    }

    /// Where piece `piece` starts in the byte stream.
    pub fn piece_offset(&self, piece: u32) -> u64 {
        piece as u64 * self.piece_length as u64
    }

    /// Length of piece `piece`, which must exist (the last one may be short).
    pub fn piece_len(&self, piece: u32) -> u32 {
        if piece + 1 == self.piece_count {
            (self.total_length - self.piece_offset(piece)) as u32
        } else {
            self.piece_length
        }
    }

    /// Length of piece `piece`, or `None` past the end.
    pub fn checked_piece_len(&self, piece: u32) -> Option<u32> {
        (piece < self.piece_count).then(|| self.piece_len(piece))
    }

    pub fn blocks_in(&self, piece: u32) -> u32 {
        self.piece_len(piece).div_ceil(self.block_len)
    }

    /// Block `index` of `piece`.
    pub fn block(&self, piece: u32, index: u32) -> Block {
        let offset = index * self.block_len;
        Block {
            piece,
            offset,
            length: self.block_len.min(self.piece_len(piece) - offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_blocks_tile_the_stream() {
        let g = Geometry::new(2 * 32768 + 20000, 32768).unwrap();
        assert_eq!(g.piece_count, 3);
        assert_eq!(
            (0..4).map(|p| g.checked_piece_len(p)).collect::<Vec<_>>(),
            [Some(32768), Some(32768), Some(20000), None]
        );
        assert_eq!(g.piece_offset(2), 65536);
        assert_eq!(g.blocks_in(2), 2);
        assert_eq!(
            g.block(2, 1),
            Block {
                piece: 2,
                offset: BLOCK_LEN,
                length: 20000 - BLOCK_LEN
            }
        );
    }

    #[test]
    fn bounds() {
        assert_eq!(Geometry::new(0, 16384), Err(GeometryError::Empty));
        assert_eq!(
            Geometry::new(1, (1 << 30) + 1),
            Err(GeometryError::PieceLength((1 << 30) + 1))
        );
        assert_eq!(
            Geometry::new((1 << 31) + 1, 1),
            Err(GeometryError::TooManyPieces)
        );
        // A stream may be empty, or have pieces the engine would not take.
        let empty = Geometry::of_stream(0, 8).unwrap();
        assert_eq!(empty.piece_count, 0);
        assert_eq!(empty.checked_piece_len(0), None);
        assert_eq!(
            Geometry::of_stream(1 << 40, 1 << 31).unwrap().piece_count,
            512
        );
        assert_eq!(Geometry::of_stream(1, 0), None);
        assert_eq!(Geometry::of_stream(1 << 40, 1), None);
    }
}
