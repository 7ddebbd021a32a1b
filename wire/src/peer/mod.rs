//! The peer wire protocol codec (BEP 3, with BEP 5 `port`, BEP 6 Fast and BEP 10
//! extended messages). Pure functions over `bytes`; no I/O.
//!
//! A connection's bytes go: [`Handshake::decode`] once, then [`Decoder::decode`] in a
//! loop. Outgoing: [`Handshake::encode`], [`Message::encode`] (or
//! [`encode_piece_header`] + the block for a zero-copy send).
//!
//! Errors ([`HandshakeError`], [`WireError`]) mean the peer broke the protocol: log the
//! `Display` text as the reason and close the connection. Two facts from real peers:
//!
//! - libtorrent and aria2 may dial with an encrypted (MSE/PE, [`mse`]) handshake first;
//!   the session tells it apart from a plaintext one by the first bytes and answers it,
//!   so [`Handshake::decode`] only ever sees plaintext handshakes.
//! - Call [`Decoder::set_piece_count`] as soon as the piece count is known; before that
//!   (magnet links) check a stored bitfield later with [`validate_bitfield`].
//!
//! ```
//! use bytes::BytesMut;
//! use wire::peer::{Decoder, Message};
//!
//! let mut buf = BytesMut::new();
//! Message::Have { piece: 5 }.encode(&mut buf);
//! let mut dec = Decoder::default();
//! assert_eq!(dec.decode(&mut buf).unwrap(), Some(Message::Have { piece: 5 }));
//! assert_eq!(dec.decode(&mut buf).unwrap(), None);
//! ```

mod allowed_fast;
mod codec;
mod handshake;
mod message;
pub mod mse;

pub use crate::layout::Block;
pub use allowed_fast::allowed_fast_set;
pub use codec::{bitfield_len, validate_bitfield, Decoder, Limits, WireError};
pub use handshake::{Handshake, HandshakeError, PeerId, Reserved, HANDSHAKE_LEN, PROTOCOL};
pub use message::{encode_extended_with, encode_piece_header, id, Message};
