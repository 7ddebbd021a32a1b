//! The BitTorrent side of `swarm`: metainfo and magnet links, the peer wire protocol,
//! piece exchange and verified storage.
//!
//! Protocol decisions live in sans-IO state machines (no sockets, no clock, no global RNG);
//! the tokio drivers around them are thin. Codecs are pure functions over bytes.

pub mod bitfield;
pub mod create;
pub mod engine;
pub mod extension;
pub mod infohash;
pub mod layout;
pub mod magnet;
pub mod metainfo;
pub mod peer;
pub mod session;
pub mod storage;
pub mod torrent;
