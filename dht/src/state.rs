//! What a node saves between runs: its id and good nodes, as a small bencoded file.
//! Loading is bounded and never trusts the file beyond its shape.

use bencode::{Encoder, Limits};

use crate::id::Id;
use crate::krpc::{decode_nodes, encode_nodes, NodeInfo};

/// Most nodes kept in a saved state.
pub const MAX_SAVED_NODES: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    pub id: Id,
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("dht state: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("dht state: {0}")]
    Invalid(&'static str),
}

impl SavedState {
    pub fn to_bytes(&self) -> Vec<u8> {
        let (v4, v6): (Vec<&NodeInfo>, Vec<&NodeInfo>) = self
            .nodes
            .iter()
            .take(MAX_SAVED_NODES)
            .partition(|n| crate::krpc::canonical_ip(n.addr.ip()).is_ipv4());
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out);
        e.begin_dict();
        e.key(b"id").bytes(&self.id.0);
        e.key(b"nodes").bytes(&encode_nodes(v4));
        e.key(b"nodes6").bytes(&encode_nodes(v6));
        e.end();
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<SavedState, StateError> {
        let limits = Limits {
            max_depth: 4,
            max_len: 1 << 20,
        };
        let v = bencode::decode_with(b, limits)?;
        let d = v.as_dict().ok_or(StateError::Invalid("not a dictionary"))?;
        let id = d
            .get_bytes(b"id")
            .and_then(Id::from_slice)
            .ok_or(StateError::Invalid("missing or malformed id"))?;
        let mut nodes = d
            .get_bytes(b"nodes")
            .map(|b| decode_nodes(b, 26))
            .unwrap_or_default();
        nodes.extend(
            d.get_bytes(b"nodes6")
                .map(|b| decode_nodes(b, 38))
                .unwrap_or_default(),
        );
        nodes.truncate(MAX_SAVED_NODES);
        Ok(SavedState { id, nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let s = SavedState {
            id: Id([9; 20]),
            nodes: vec![
                NodeInfo {
                    id: Id([1; 20]),
                    addr: "127.0.0.2:7000".parse().unwrap(),
                },
                NodeInfo {
                    id: Id([2; 20]),
                    addr: "[::1]:7001".parse().unwrap(),
                },
            ],
        };
        assert_eq!(SavedState::from_bytes(&s.to_bytes()).unwrap(), s);
        assert!(SavedState::from_bytes(b"garbage").is_err());
        assert!(SavedState::from_bytes(b"d2:id3:abce").is_err());
    }
}
