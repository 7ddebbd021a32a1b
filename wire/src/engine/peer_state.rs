//! What the engine knows about one connected peer, and how deep its request pipeline is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::rate::RateMeter;
use super::{Block, Config, PeerInfo};
use crate::bitfield::Bitfield;

/// Withdrawn requests remembered per peer.
const MAX_CANCELLED: usize = 256;

/// One of our requests to the peer, not yet answered.
#[derive(Debug, Clone, Copy)]
pub struct Outstanding {
    pub block: Block,
    pub sent_at: Instant,
}

/// How the peer holds an upload slot of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchoke {
    Choked,
    Regular,
    Optimistic,
}

#[derive(Debug)]
pub struct Peer {
    pub info: PeerInfo,
    pub generation: u32,
    pub connected_at: Instant,
    pub unchoke: Unchoke,
    pub am_interested: bool,
    pub peer_choking: bool,
    pub peer_interested: bool,
    /// What it has. A peer that has everything is counted once as a seed in the picker.
    pub has: Bitfield,
    pub is_seed: bool,
    /// Any message seen: a later bitfield adds to `has` instead of replacing it.
    pub seen_message: bool,
    pub outstanding: VecDeque<Outstanding>,
    pub their_requests: VecDeque<Block>,
    pub uploads_in_flight: u32,
    /// The piece of the last block we handed out to it.
    pub last_served_piece: Option<u32>,
    /// When its uploads in flight last made progress (one handed out while none were,
    /// or one reported sent).
    pub upload_progress_at: Option<Instant>,
    pub in_upload_queue: bool,
    /// Pieces it lets us request while it chokes us (BEP 6).
    pub allowed_fast: Vec<u32>,
    pub suggested: Vec<u32>,
    /// Pieces we suggested to it (as a seed) that it has not asked for yet.
    pub suggested_out: Vec<u32>,
    pub down: RateMeter,
    pub up: RateMeter,
    /// Bytes in the current choke round.
    pub round_down: u64,
    pub round_up: u64,
    pub last_block_at: Option<Instant>,
    pub snubbed: bool,
    pub unwanted_blocks: u32,
    /// Requests it rejected while saying it unchokes us, since its last block.
    pub rejects_unchoked: u32,
    /// Requests we withdrew recently (cancel, snub, a choke without Fast): their blocks
    /// may still arrive, late but in good faith. Bounded.
    pub cancelled: VecDeque<Block>,
    pub strikes: u32,
    /// Slow start: grows by one per block until a rate sample exists.
    pub slow_start_target: usize,
    pub rtt: Option<Duration>,
}

impl Peer {
    pub fn new(info: PeerInfo, generation: u32, pieces: u32, now: Instant, cfg: &Config) -> Self {
        Peer {
            info,
            generation,
            connected_at: now,
            unchoke: Unchoke::Choked,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            has: Bitfield::new(pieces),
            is_seed: false,
            seen_message: false,
            outstanding: VecDeque::new(),
            their_requests: VecDeque::new(),
            uploads_in_flight: 0,
            last_served_piece: None,
            upload_progress_at: None,
            in_upload_queue: false,
            allowed_fast: Vec::new(),
            suggested: Vec::new(),
            suggested_out: Vec::new(),
            down: RateMeter::new(now),
            up: RateMeter::new(now),
            round_down: 0,
            round_up: 0,
            last_block_at: None,
            snubbed: false,
            unwanted_blocks: 0,
            rejects_unchoked: 0,
            cancelled: VecDeque::new(),
            strikes: 0,
            slow_start_target: cfg.min_pipeline,
            rtt: None,
        }
    }

    pub fn am_choking(&self) -> bool {
        self.unchoke == Unchoke::Choked
    }

    pub fn reqq(&self, cfg: &Config) -> usize {
        self.info
            .reqq
            .map_or(cfg.default_peer_reqq, |q| q as usize)
            .max(1)
    }

    /// Requests to keep in flight: enough to cover the measured rate for
    /// `request_queue_time` (bandwidth x delay with headroom), slow start before the first
    /// sample, one while snubbed; never more than the peer's `reqq` or our cap.
    pub fn pipeline_target(&self, cfg: &Config, block_len: u32) -> usize {
        if self.snubbed {
            return 1;
        }
        let rate = self.down.last_rate();
        let horizon = cfg
            .request_queue_time
            .max(self.rtt.unwrap_or_default() * 2)
            .as_secs_f64();
        let by_rate = (rate * horizon / block_len as f64).ceil() as usize;
        let target = if rate > 0.0 {
            by_rate.max(cfg.min_pipeline)
        } else {
            self.slow_start_target
        };
        target.min(cfg.max_pipeline).min(self.reqq(cfg)).max(1)
    }

    pub fn is_outstanding(&self, b: Block) -> bool {
        self.outstanding.iter().any(|o| o.block == b)
    }

    pub fn note_cancelled(&mut self, b: Block) {
        if self.cancelled.len() >= MAX_CANCELLED {
            self.cancelled.pop_front();
        }
        self.cancelled.push_back(b);
    }

    /// Whether `b` was a request we withdrew (each such block is excused once).
    pub fn was_cancelled(&mut self, b: Block) -> bool {
        match self.cancelled.iter().position(|&c| c == b) {
            Some(i) => {
                self.cancelled.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn take_outstanding(&mut self, b: Block) -> Option<Outstanding> {
        let pos = self.outstanding.iter().position(|o| o.block == b)?;
        self.outstanding.remove(pos)
    }
}
