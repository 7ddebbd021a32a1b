//! Between the codec's [`Message`] and the engine's [`PeerMessage`] (the engine does not
//! see keep-alive, port or extension messages).

use crate::engine::{BlockRef, PeerMessage};
use crate::peer::{BlockRequest, Message};

fn block(r: BlockRequest) -> BlockRef {
    BlockRef {
        piece: r.piece,
        begin: r.offset,
        length: r.length,
    }
}

fn request(b: BlockRef) -> BlockRequest {
    BlockRequest {
        piece: b.piece,
        offset: b.begin,
        length: b.length,
    }
}

/// The engine's view of a wire message, if it has one.
pub fn to_engine(m: Message) -> Option<PeerMessage> {
    Some(match m {
        Message::Choke => PeerMessage::Choke,
        Message::Unchoke => PeerMessage::Unchoke,
        Message::Interested => PeerMessage::Interested,
        Message::NotInterested => PeerMessage::NotInterested,
        Message::Have { piece } => PeerMessage::Have(piece),
        Message::Bitfield(b) => PeerMessage::Bitfield(b),
        Message::Request(r) => PeerMessage::Request(block(r)),
        Message::Piece {
            piece,
            offset,
            data,
        } => PeerMessage::Piece {
            piece,
            begin: offset,
            data,
        },
        Message::Cancel(r) => PeerMessage::Cancel(block(r)),
        Message::Suggest { piece } => PeerMessage::Suggest(piece),
        Message::HaveAll => PeerMessage::HaveAll,
        Message::HaveNone => PeerMessage::HaveNone,
        Message::RejectRequest(r) => PeerMessage::Reject(block(r)),
        Message::AllowedFast { piece } => PeerMessage::AllowedFast(piece),
        Message::KeepAlive
        | Message::Port(_)
        | Message::Extended { .. }
        | Message::Unknown { .. } => return None,
    })
}

pub fn to_wire(m: PeerMessage) -> Message {
    match m {
        PeerMessage::Choke => Message::Choke,
        PeerMessage::Unchoke => Message::Unchoke,
        PeerMessage::Interested => Message::Interested,
        PeerMessage::NotInterested => Message::NotInterested,
        PeerMessage::Have(piece) => Message::Have { piece },
        PeerMessage::Bitfield(b) => Message::Bitfield(b),
        PeerMessage::Request(b) => Message::Request(request(b)),
        PeerMessage::Piece { piece, begin, data } => Message::Piece {
            piece,
            offset: begin,
            data,
        },
        PeerMessage::Cancel(b) => Message::Cancel(request(b)),
        PeerMessage::Suggest(piece) => Message::Suggest { piece },
        PeerMessage::HaveAll => Message::HaveAll,
        PeerMessage::HaveNone => Message::HaveNone,
        PeerMessage::Reject(b) => Message::RejectRequest(request(b)),
        PeerMessage::AllowedFast(piece) => Message::AllowedFast { piece },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn round_trips_every_engine_message() {
        let b = BlockRef {
            piece: 1,
            begin: 16384,
            length: 100,
        };
        let all = [
            PeerMessage::Choke,
            PeerMessage::Unchoke,
            PeerMessage::Interested,
            PeerMessage::NotInterested,
            PeerMessage::Have(3),
            PeerMessage::Bitfield(Bytes::from_static(&[0x80])),
            PeerMessage::Request(b),
            PeerMessage::Piece {
                piece: 1,
                begin: 2,
                data: Bytes::from_static(b"x"),
            },
            PeerMessage::Cancel(b),
            PeerMessage::Suggest(4),
            PeerMessage::HaveAll,
            PeerMessage::HaveNone,
            PeerMessage::Reject(b),
            PeerMessage::AllowedFast(5),
        ];
        for m in all {
            assert_eq!(to_engine(to_wire(m.clone())), Some(m));
        }
        assert_eq!(to_engine(Message::Port(1)), None);
    }
}
