//! What a peer told us before we had the metadata (and so the piece count): kept as
//! state, not as a message log, so a flood costs nothing, and bounded in bytes.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::peer::Message;

/// Bytes of pre-metadata state kept per peer (a bitfield plus haves and allowed-fast
/// indices at 4 bytes each).
pub const MAX_PENDING_BYTES: usize = 512 * 1024;

#[derive(Debug, Default)]
pub struct Pending {
    bitfield: Option<Bytes>,
    have_all: bool,
    haves: BTreeSet<u32>,
    allowed_fast: BTreeSet<u32>,
    unchoked: bool,
    interested: bool,
    bytes: usize,
}

/// The peer told us more than [`MAX_PENDING_BYTES`] before the metadata arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMuch;

impl Pending {
    /// Keeps what `m` says that the piece engine will need. Block data and requests
    /// cannot be for us yet and are dropped.
    pub fn note(&mut self, m: &Message) -> Result<(), TooMuch> {
        match m {
            Message::Choke => self.unchoked = false,
            Message::Unchoke => self.unchoked = true,
            Message::Interested => self.interested = true,
            Message::NotInterested => self.interested = false,
            Message::HaveAll => self.have_all = true,
            Message::HaveNone => {}
            Message::Bitfield(b) if self.bitfield.is_none() => {
                self.bytes += b.len();
                self.bitfield = Some(b.clone());
            }
            Message::Have { piece } if self.haves.insert(*piece) => self.bytes += 4,
            Message::AllowedFast { piece } if self.allowed_fast.insert(*piece) => self.bytes += 4,
            _ => {}
        }
        if self.bytes > MAX_PENDING_BYTES {
            return Err(TooMuch);
        }
        Ok(())
    }

    /// The messages that bring the engine to the same state, in protocol order.
    pub fn replay(self) -> Vec<Message> {
        let mut out = Vec::new();
        if self.have_all {
            out.push(Message::HaveAll);
        } else if let Some(b) = self.bitfield {
            out.push(Message::Bitfield(b));
        }
        if !self.have_all {
            out.extend(self.haves.into_iter().map(|piece| Message::Have { piece }));
        }
        out.extend(
            self.allowed_fast
                .into_iter()
                .map(|piece| Message::AllowedFast { piece }),
        );
        if self.interested {
            out.push(Message::Interested);
        }
        if self.unchoked {
            out.push(Message::Unchoke);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_kept_as_state() {
        let mut p = Pending::default();
        for i in 0..1_000_000u32 {
            let m = match i % 4 {
                0 => Message::Choke,
                1 => Message::Unchoke,
                2 => Message::Have { piece: i % 7 },
                _ => Message::Interested,
            };
            p.note(&m).unwrap();
        }
        let replay = p.replay();
        assert_eq!(replay.len(), 7 + 2, "{replay:?}");
        assert_eq!(replay.last(), Some(&Message::Unchoke));
    }

    #[test]
    fn bounded_in_bytes() {
        let mut p = Pending::default();
        let mut failed = false;
        for piece in 0..(MAX_PENDING_BYTES as u32 / 4 + 2) {
            if p.note(&Message::Have { piece }).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[test]
    fn bitfield_first_then_haves() {
        let mut p = Pending::default();
        p.note(&Message::Have { piece: 3 }).unwrap();
        p.note(&Message::Bitfield(Bytes::from_static(&[0x80])))
            .unwrap();
        let r = p.replay();
        assert_eq!(r[0], Message::Bitfield(Bytes::from_static(&[0x80])));
        assert_eq!(r[1], Message::Have { piece: 3 });
    }
}
