//! BEP 10 extension protocol messages: the extended handshake, ut_metadata (BEP 9) and
//! ut_pex (BEP 11). Codecs are pure; [`MetadataFetcher`] and [`PexSender`] are sans-IO
//! state machines driven with explicit time.
//!
//! An extended message arrives as [`crate::peer::Message::Extended`] `{ id, payload }`.
//! `id` 0 is the handshake ([`ExtendedHandshake::parse`]); any other id is one *we*
//! assigned in *our* handshake ([`OUR_UT_METADATA_ID`], [`OUR_UT_PEX_ID`]). When sending,
//! use the id the *peer* assigned ([`ExtendedHandshake::id_of`]).
//!
//! - ut_metadata: a leecher feeds a [`MetadataFetcher`]; every peer serves with a
//!   [`MetadataServer`] built from the raw info bytes (and advertises its
//!   `metadata_size` in [`ExtendedHandshake::ours`]).
//! - ut_pex: one [`PexSender`] per connection, polled with the current peer list (it
//!   decides when and what to send); incoming messages go through [`PexMessage::parse`]
//!   and a per-connection [`PexReceiver`] before their addresses are dialled.

mod fetcher;
mod handshake;
mod metadata;
mod pex;

pub use fetcher::{FetchEvent, FetcherConfig, MetadataFetcher, Verdict};
pub use handshake::ExtendedHandshake;
pub use metadata::{MetadataMessage, MetadataServer, MAX_METADATA_SIZE, METADATA_BLOCK_LEN};
pub use pex::{pex_flags, PexMessage, PexReceiver, PexSender, PEX_INTERVAL, PEX_MAX_PEERS};

/// Extension id 0 is the extended handshake itself.
pub const HANDSHAKE_ID: u8 = 0;
/// The name peers advertise for BEP 9 in their `m` dictionary.
pub const UT_METADATA: &str = "ut_metadata";
/// The name peers advertise for BEP 11 in their `m` dictionary.
pub const UT_PEX: &str = "ut_pex";
/// The id we assign to ut_metadata in our handshake: peers send it to us with this id.
pub const OUR_UT_METADATA_ID: u8 = 1;
/// The id we assign to ut_pex in our handshake.
pub const OUR_UT_PEX_ID: u8 = 2;

/// A malformed extension message. Unknown or unsupported content is *not* an error
/// (BEP 10: ignore what you do not recognise); this is for payloads that cannot be
/// understood at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    #[error("{what}: not valid bencode: {source}")]
    Bencode {
        what: &'static str,
        #[source]
        source: bencode::DecodeError,
    },
    #[error("{what}: expected a dictionary")]
    NotADict { what: &'static str },
    #[error("{what}: missing or invalid `{field}`")]
    BadField {
        what: &'static str,
        field: &'static str,
    },
}
