//! A torrent's shape, shared by the codec, the engine, the core and storage.

/// `length` bytes at `offset` within `piece`: what `request`, `cancel` and `reject` name,
/// what the engine asks for and hands out, and what storage reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub piece: u32,
    pub offset: u32,
    pub length: u32,
}
