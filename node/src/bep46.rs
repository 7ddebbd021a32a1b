//! BEP 46: a torrent that follows a mutable DHT item. The item's value is
//! `{"ih": <20-byte info-hash>}`; a magnet `xs=urn:btpk:<key>&s=<salt>` names the item,
//! `swarm get` looks up its newest version, and `swarm seed --publish KEY` keeps it
//! pointing at what it seeds.

use std::time::{Duration, Instant};

use dht::item::{Item, MutableItem};
use dht::node::{ItemStream, ItemUpdate};
use ed25519_dalek::SigningKey;
use wire::infohash::InfoHash;
use wire::magnet::MutableSource;

/// How often a published item is put again (BEP 44: items may expire after 2 hours and
/// should be re-announced once an hour), and how soon after a failed put.
const REPUBLISH_EVERY: Duration = Duration::from_secs(3600);
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The item value naming a torrent: `d2:ih20:<info-hash>e`.
pub fn item_value(ih: &InfoHash) -> Vec<u8> {
    let mut out = b"d2:ih20:".to_vec();
    out.extend_from_slice(&ih.0);
    out.push(b'e');
    out
}

/// The info-hash an item value names, if it is a BEP 46 value.
pub fn info_hash_of(value: &[u8]) -> Option<InfoHash> {
    let v = bencode::decode(value).ok()?;
    let ih = v.as_dict()?.get_bytes(b"ih")?;
    Some(InfoHash(ih.try_into().ok()?))
}

/// Looks up the newest version of `src` and returns the info-hash it names, with its
/// sequence number.
pub async fn resolve(
    node: &dht::Node,
    src: &MutableSource,
    timeout: Duration,
) -> anyhow::Result<(InfoHash, i64)> {
    let mut s = node.get_mutable(src.public_key, &src.salt, None);
    let mut best: Option<(InfoHash, i64)> = None;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(u) = s.next().await {
            if let ItemUpdate::Found(Item::Mutable(m)) = u {
                if let Some(ih) = info_hash_of(&m.value) {
                    if best.is_none_or(|(_, seq)| m.seq > seq) {
                        best = Some((ih, m.seq));
                    }
                }
            }
        }
    })
    .await;
    best.ok_or_else(|| {
        anyhow::anyhow!(
            "no torrent found in the DHT for key {} (no node holds a BEP 46 item for it)",
            hex::encode(src.public_key)
        )
    })
}

enum Step {
    Idle {
        next: Instant,
    },
    /// Finding the newest version published so far (to go one above it).
    Probing {
        stream: ItemStream,
        newest: Option<MutableItem>,
    },
    Putting {
        stream: ItemStream,
        seq: i64,
    },
}

/// Keeps a mutable item pointing at one info-hash: finds the newest version, puts ours
/// one above it (or the same again, to refresh it, if it already names this torrent),
/// and repeats every hour. A plain state machine driven by [`Publisher::step`].
pub struct Publisher {
    key: SigningKey,
    salt: Vec<u8>,
    info_hash: InfoHash,
    step: Step,
    /// The last put's outcome, for the log: (seq, acked nodes).
    pub last: Option<(i64, usize)>,
}

impl Publisher {
    pub fn new(key: SigningKey, salt: Vec<u8>, info_hash: InfoHash, now: Instant) -> Publisher {
        Publisher {
            key,
            salt,
            info_hash,
            step: Step::Idle { next: now },
            last: None,
        }
    }

    /// The magnet source that follows what this publishes.
    pub fn source(&self) -> MutableSource {
        MutableSource {
            public_key: self.key.verifying_key().to_bytes(),
            salt: self.salt.clone(),
        }
    }

    /// Moves the publishing on; call it a few times a second.
    pub fn step(&mut self, now: Instant, node: &dht::Node) {
        let step = std::mem::replace(&mut self.step, Step::Idle { next: now });
        self.step = match step {
            Step::Idle { next } if now < next => Step::Idle { next },
            Step::Idle { .. } => Step::Probing {
                stream: node.get_mutable(self.key.verifying_key().to_bytes(), &self.salt, None),
                newest: None,
            },
            Step::Probing {
                mut stream,
                mut newest,
            } => loop {
                match stream.poll_now() {
                    Ok(Some(ItemUpdate::Found(Item::Mutable(m)))) => {
                        if newest.as_ref().is_none_or(|n| m.seq > n.seq) {
                            newest = Some(m);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break Step::Probing { stream, newest },
                    Err(()) => break self.put(node, newest),
                }
            },
            Step::Putting { mut stream, seq } => loop {
                match stream.poll_now() {
                    Ok(Some(ItemUpdate::Stored { acked, .. })) => {
                        self.last = Some((seq, acked));
                        // Said on stderr: the user asked for it and waits to know.
                        let wait = if acked > 0 {
                            eprintln!(
                                "published {} as version {seq} of the item, on {acked} DHT nodes",
                                self.info_hash.to_hex()
                            );
                            REPUBLISH_EVERY
                        } else {
                            eprintln!("no DHT node stored the published item; retrying in 30 s");
                            RETRY_AFTER
                        };
                        break Step::Idle { next: now + wait };
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break Step::Putting { stream, seq },
                    Err(()) => {
                        break Step::Idle {
                            next: now + RETRY_AFTER,
                        }
                    }
                }
            },
        };
    }

    fn put(&self, node: &dht::Node, newest: Option<MutableItem>) -> Step {
        let value = item_value(&self.info_hash);
        // Someone with the key published something newer since our last put (a new
        // release from another process): putting ours again would roll it back.
        if let (Some((ours, _)), Some(n)) = (self.last, &newest) {
            if n.seq > ours && n.value != value {
                eprintln!(
                    "version {} of the item names another torrent; no longer publishing this one",
                    n.seq
                );
                return Step::Idle {
                    next: Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
                };
            }
        }
        let cas = newest.as_ref().map(|n| n.seq);
        let seq = match &newest {
            // Already ours: the same version again refreshes it (ed25519 signatures are
            // deterministic, so it is the very same item).
            Some(n) if n.value == value => n.seq,
            Some(n) => n.seq.saturating_add(1),
            None => 1,
        };
        let m = MutableItem::sign(&self.key, &self.salt, seq, &value);
        debug_assert_eq!(Item::Mutable(m.clone()).validate(), Ok(()));
        Step::Putting {
            stream: node.put_item(Item::Mutable(m), cas),
            seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_values_round_trip() {
        let ih = InfoHash([7; 20]);
        assert_eq!(info_hash_of(&item_value(&ih)), Some(ih));
        assert_eq!(info_hash_of(b"d2:ih3:abce"), None);
        assert_eq!(info_hash_of(b"5:hello"), None);
        assert_eq!(info_hash_of(b"garbage"), None);
    }
}
