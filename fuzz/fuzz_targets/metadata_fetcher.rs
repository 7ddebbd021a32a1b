//! A `MetadataFetcher` driven by a few hostile peers, then one honest peer.
//!
//! The metadata is a fixed blob (its size picked by the input) and the info-hash its
//! SHA-1. The script adds and removes peers (with true, false, absurd or no
//! `metadata_size`), delivers ut_metadata messages (requests, rejects, data that is right,
//! corrupted, mis-sized or for the wrong size, and raw payloads through
//! `MetadataMessage::parse`) and lets time pass. Checks:
//!
//! - requests go only to peers that were added, are still there and not banned, and name
//!   a block that exists for the size that peer claimed;
//! - `Complete` comes at most once, only with exactly the blob (so never with bytes that
//!   do not hash to the info-hash);
//! - a `HashMismatch` culprit is banned, and contributors are listed;
//! - liveness: afterwards one honest peer that answers every request correctly (the
//!   others all go silent) gets the fetch completed within a bounded number of timeouts.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wire::extension::{
    FetchEvent, FetcherConfig, MetadataFetcher, MetadataMessage, METADATA_BLOCK_LEN,
};
use wire::infohash::InfoHash;

const HONEST: u8 = 99;
const SIZES: [usize; 6] = [1, 100, 16_384, 16_385, 40_000, 49_152];

struct Harness {
    f: MetadataFetcher<u8>,
    blob: Bytes,
    now: Instant,
    cfg: FetcherConfig,
    /// Peers added and not removed, with the size they claimed.
    present: BTreeMap<u8, u64>,
    /// Requests issued and not yet answered by the script, per peer.
    asked: BTreeMap<u8, BTreeSet<u32>>,
    completed: bool,
}

impl Harness {
    fn block(&self, piece: u32) -> Bytes {
        let start = (piece as usize * METADATA_BLOCK_LEN).min(self.blob.len());
        let end = (start + METADATA_BLOCK_LEN).min(self.blob.len());
        self.blob.slice(start..end)
    }

    fn drain(&mut self) {
        while let Some(ev) = self.f.poll_event() {
            if std::env::var_os("FUZZ_DEBUG").is_some() {
                eprintln!("event {ev:?}");
            }
            match ev {
                FetchEvent::Request { peer, piece } => {
                    assert!(!self.completed, "request after completion");
                    assert!(!self.f.is_banned(peer), "request to banned {peer}");
                    let size = *self
                        .present
                        .get(&peer)
                        .unwrap_or_else(|| panic!("request to absent peer {peer}"));
                    assert!(
                        (piece as u64) < size.div_ceil(METADATA_BLOCK_LEN as u64),
                        "block {piece} of a {size}-byte metadata"
                    );
                    self.asked.entry(peer).or_default().insert(piece);
                }
                FetchEvent::Complete { info } => {
                    assert!(!self.completed, "completed twice");
                    assert_eq!(info, self.blob, "completed with the wrong bytes");
                    self.completed = true;
                    assert!(self.f.is_complete());
                }
                FetchEvent::HashMismatch {
                    contributors,
                    culprit,
                } => {
                    assert!(!contributors.is_empty());
                    if let Some(c) = culprit {
                        assert_eq!(contributors, vec![c]);
                        assert!(self.f.is_banned(c));
                        self.present.remove(&c);
                    }
                }
            }
        }
        // Banned peers are out of the fetch.
        let banned: Vec<u8> = self
            .present
            .keys()
            .copied()
            .filter(|p| self.f.is_banned(*p))
            .collect();
        for p in banned {
            self.present.remove(&p);
        }
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let peer = u.int_in_range(0..=5u8)?;
        match u.int_in_range(0..=9u8)? {
            0 | 1 => {
                let size = match u.int_in_range(0..=4u8)? {
                    0 | 1 => Some(self.blob.len() as u64),
                    2 => None,
                    3 => Some(SIZES[u.choose_index(SIZES.len())?] as u64),
                    _ => Some(u.arbitrary()?),
                };
                let accepted = self.f.add_peer(self.now, peer, size);
                if std::env::var_os("FUZZ_DEBUG").is_some() {
                    eprintln!("add {peer} {size:?}: {accepted:?}");
                }
                if accepted == wire::extension::Verdict::Accepted {
                    self.present
                        .insert(peer, size.expect("accepted with a size"));
                    self.asked.remove(&peer);
                }
            }
            2 => {
                if std::env::var_os("FUZZ_DEBUG").is_some() {
                    eprintln!("remove {peer}");
                }
                self.f.remove_peer(self.now, peer);
                self.present.remove(&peer);
                self.asked.remove(&peer);
            }
            3..=6 => {
                // Data for a block the peer was asked for, or any block.
                let piece = match self.asked.get(&peer).and_then(|s| s.first().copied()) {
                    Some(p) if u.ratio(3, 4)? => p,
                    _ => u.int_in_range(0..=4u32)?,
                };
                let good = self.block(piece);
                let msg = match u.int_in_range(0..=5u8)? {
                    0..=2 => MetadataMessage::Data {
                        piece,
                        total_size: self.blob.len() as u64,
                        data: good,
                    },
                    3 => {
                        let mut bad = good.to_vec();
                        let at = u.choose_index(bad.len().max(1))?;
                        if let Some(b) = bad.get_mut(at) {
                            *b ^= 1 | u.arbitrary::<u8>()?;
                        }
                        MetadataMessage::Data {
                            piece,
                            total_size: self.blob.len() as u64,
                            data: bad.into(),
                        }
                    }
                    4 => MetadataMessage::Reject { piece },
                    _ => {
                        let len = u.int_in_range(0..=64usize)?;
                        MetadataMessage::Data {
                            piece,
                            total_size: u.arbitrary()?,
                            data: Bytes::copy_from_slice(u.bytes(len.min(u.len()))?),
                        }
                    }
                };
                if let Some(s) = self.asked.get_mut(&peer) {
                    s.remove(&piece);
                }
                let v = self.f.on_message(self.now, peer, &msg);
                if std::env::var_os("FUZZ_DEBUG").is_some() {
                    let shown = match &msg {
                        MetadataMessage::Data {
                            piece,
                            total_size,
                            data,
                        } => format!(
                            "data {piece} total {total_size} len {} good {}",
                            data.len(),
                            *data == self.block(*piece)
                        ),
                        other => format!("{other:?}"),
                    };
                    eprintln!("{peer} sends {shown}: {v:?}");
                }
            }
            7 => {
                // A raw payload, as it would come off the wire.
                let len = u.int_in_range(0..=128usize)?;
                let payload = Bytes::copy_from_slice(u.bytes(len.min(u.len()))?);
                if let Ok(Some(msg)) = MetadataMessage::parse(&payload) {
                    self.f.on_message(self.now, peer, &msg);
                }
            }
            _ => {
                let ms = u.int_in_range(0..=30_000u64)?;
                self.now += Duration::from_millis(ms);
                if std::env::var_os("FUZZ_DEBUG").is_some() {
                    eprintln!("+{ms} ms");
                }
                self.f.handle_timeout(self.now);
            }
        }
        self.drain();
        if let Some(t) = self.f.poll_timeout() {
            assert!(!self.completed);
            let _ = t;
        }
        Ok(())
    }

    /// One honest peer joins; everyone else goes silent. The fetch must complete.
    fn honest_epilogue(&mut self) {
        if self.completed {
            return;
        }
        let size = self.blob.len() as u64;
        self.f.add_peer(self.now, HONEST, Some(size));
        self.present.insert(HONEST, size);
        self.drain();
        // Each silent peer can hold the fetch for at most `max_strikes` timeouts per
        // block it is asked for; a generous bound on rounds.
        for _ in 0..500 {
            // The honest peer answers everything it is asked at once (also what its
            // answers lead to), so it never times out; then the silent ones time out.
            for _ in 0..1_000 {
                if self.completed {
                    return;
                }
                let Some(piece) = self.asked.get_mut(&HONEST).and_then(|s| s.pop_first()) else {
                    break;
                };
                let msg = MetadataMessage::Data {
                    piece,
                    total_size: size,
                    data: self.block(piece),
                };
                let v = self.f.on_message(self.now, HONEST, &msg);
                if std::env::var_os("FUZZ_DEBUG").is_some() {
                    eprintln!("honest sends {piece}: {v:?}");
                }
                assert!(
                    !matches!(v, wire::extension::Verdict::Violation(_)),
                    "honest data refused: {v:?}"
                );
                self.drain();
            }
            self.now += self.cfg.request_timeout;
            if std::env::var_os("FUZZ_DEBUG").is_some() {
                eprintln!("timeout, progress {:?}", self.f.progress());
            }
            self.f.handle_timeout(self.now);
            self.drain();
        }
        assert!(
            self.completed,
            "fetch stalled with an honest peer: progress {:?}",
            self.f.progress()
        );
    }
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let size = SIZES[u.choose_index(SIZES.len())?];
    let blob: Bytes = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect::<Vec<u8>>()
        .into();
    let cfg = FetcherConfig::default();
    let mut h = Harness {
        f: MetadataFetcher::new(InfoHash::of_info_bytes(&blob), cfg),
        blob,
        now: Instant::now(),
        cfg,
        present: BTreeMap::new(),
        asked: BTreeMap::new(),
        completed: false,
    };
    for _ in 0..100 {
        if u.is_empty() {
            break;
        }
        if h.step(&mut u).is_err() {
            break;
        }
    }
    h.honest_epilogue();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
