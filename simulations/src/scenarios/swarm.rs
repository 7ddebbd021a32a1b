//! `swarm`: one seeder and N leechers running the real `wire` piece-exchange engine, with
//! per-host upload and download capacity; completion times against the fluid lower bound.
//!
//! The transport is a stream model: piece messages queue on the sender's uplink and the
//! receiver's downlink ([`crate::net::capacity`]) and take the pair's latency in between;
//! control messages (requests, haves, chokes) are small and only take the latency. Blocks
//! carry zero bytes from a static buffer (nothing is copied) and every piece verifies:
//! hashing and disk are the driver's business, not the engine's.

use crate::fluid::Distribution;
use crate::net::capacity::Capacity;
use crate::net::{NetConfig, Network};
use crate::queue::EventQueue;
use crate::rng::stream;
use crate::time::{Clock, SimTime};
use crate::HostId;
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::HashMap;
use std::time::Duration;
use wire::engine::{Action, Bitfield, Config, Engine, Geometry, PeerInfo, PeerMessage, PeerSlot};

static ZEROS: [u8; wire::engine::BLOCK_LEN as usize] = [0; wire::engine::BLOCK_LEN as usize];

/// Bytes of a piece message besides the block (length prefix, id, index, begin).
const PIECE_HEADER: usize = 13;

#[derive(Clone, Debug)]
pub struct SwarmParams {
    pub leechers: usize,
    pub seed: u64,
    pub file_bytes: u64,
    pub piece_bytes: u64,
    /// Bytes per second.
    pub seed_upload: f64,
    pub leecher_upload: f64,
    pub leecher_download: f64,
    /// Peers each host connects to (a full mesh below this size).
    pub degree: usize,
    pub sample_every: Duration,
    /// Blocks handed to a connection before the previous ones left the uplink: the
    /// socket send buffer of a real driver. The uplink here is one FIFO, so a deep value
    /// only adds queueing delay in front of every later block.
    pub uploads_in_flight: u32,
    /// Give up after this much virtual time.
    pub limit: Duration,
}

impl SwarmParams {
    pub fn new(leechers: usize, seed: u64) -> Self {
        SwarmParams {
            leechers,
            seed,
            file_bytes: 16 << 20,
            piece_bytes: 256 << 10,
            seed_upload: 2e6,
            leecher_upload: 1e6,
            leecher_download: 5e6,
            degree: 40,
            sample_every: Duration::from_secs(1),
            uploads_in_flight: 4,
            limit: Duration::from_secs(3600),
        }
    }

    pub fn distribution(&self) -> Distribution {
        Distribution {
            file_bytes: self.file_bytes as f64,
            seed_upload: self.seed_upload,
            leechers: vec![
                Capacity {
                    upload: self.leecher_upload,
                    download: self.leecher_download
                };
                self.leechers
            ],
        }
    }
}

#[derive(Clone, Debug)]
pub struct SwarmReport {
    /// Seconds until each leecher completed (`None`: not within the limit).
    pub completion: Vec<Option<f64>>,
    /// (t, mean share of pieces held by leechers, least copies of any piece among leechers).
    pub availability: Vec<(f64, f64, u32)>,
    pub t_min: f64,
    pub client_server: f64,
    pub uploaded_by_seed: u64,
    pub uploaded_total: u64,
    /// Payload bytes leechers received but already had (endgame duplicates and the like).
    pub wasted: u64,
    /// One row per sample interval: where the upload capacity went.
    pub timeline: Vec<TimelineRow>,
    pub events: u64,
}

/// What happened in one sample interval ending at `t`.
#[derive(Clone, Debug, Default)]
pub struct TimelineRow {
    pub t: f64,
    /// Share of the seeder's upload capacity used in the interval.
    pub seed_util: f64,
    /// Share of the leechers' total upload capacity used in the interval.
    pub leecher_util: f64,
    /// Distinct pieces the seeder has sent at least once (every block), so far.
    pub seed_distinct: u32,
    /// Whole-piece copies the seeder has sent so far.
    pub seed_copies: f64,
    /// Leechers holding no piece yet (nothing to upload).
    pub empty: usize,
    /// Leechers that have completed.
    pub done: usize,
    /// Pieces no leecher holds yet.
    pub pieces_only_at_seed: u32,
    /// Mean over unfinished leechers of the peers they unchoke that are interested.
    pub mean_unchoked_interested: f64,
    /// Mean over unfinished leechers of the neighbours interested in them.
    pub mean_interested_in_me: f64,
    /// Mean over unfinished leechers of the unchoked peers with requests to serve.
    pub mean_serving: f64,
    /// Unfinished leechers whose uplink is idle at the sample instant.
    pub idle_uplinks: usize,
}

impl SwarmReport {
    /// When the last leecher finished, if all did.
    pub fn last_completion(&self) -> Option<f64> {
        self.completion
            .iter()
            .try_fold(0.0f64, |m, c| c.map(|c| m.max(c)))
    }
}

enum Ev {
    /// A message reaches `to` on its connection slot `slot`.
    Deliver {
        to: u32,
        slot: PeerSlot,
        msg: PeerMessage,
    },
    /// A piece message's last byte reached `to`'s access link: queue it on the downlink.
    PieceArrive {
        to: u32,
        slot: PeerSlot,
        msg: PeerMessage,
        bytes: usize,
    },
    BlockSent {
        host: u32,
        slot: PeerSlot,
    },
    Verified {
        host: u32,
        piece: u32,
    },
    Disconnected {
        host: u32,
        slot: PeerSlot,
    },
    Wake {
        host: u32,
    },
    Sample,
}

struct Peer {
    engine: Engine,
    /// My slot -> (remote host, remote's slot for me).
    links: HashMap<PeerSlot, (u32, PeerSlot)>,
    wake_at: SimTime,
    completed: Option<SimTime>,
}

struct Swarm {
    /// Blocks of each piece the seeder has sent.
    seed_blocks: Vec<u32>,
    clock: Clock,
    now: SimTime,
    queue: EventQueue<Ev>,
    net: Network,
    peers: Vec<Peer>,
}

impl Swarm {
    fn after_input(&mut self, h: u32) {
        let now = self.now;
        let now_i = self.clock.instant(now);
        while let Some(action) = self.peers[h as usize].engine.poll_action() {
            match action {
                Action::Send { slot, message } => {
                    if let Some(&(to, their)) = self.peers[h as usize].links.get(&slot) {
                        let at = now + self.net.one_way(HostId(h), HostId(to));
                        self.queue.push(
                            at,
                            Ev::Deliver {
                                to,
                                slot: their,
                                msg: message,
                            },
                        );
                    }
                }
                Action::ReadBlock { slot, block } => {
                    let Some(&(to, their)) = self.peers[h as usize].links.get(&slot) else {
                        self.peers[h as usize].engine.block_sent(now_i, slot);
                        continue;
                    };
                    if h == 0 {
                        self.seed_blocks[block.piece as usize] += 1;
                    }
                    let bytes = PIECE_HEADER + block.length as usize;
                    let left = self.net.link_mut(HostId(h)).send(now, bytes);
                    self.queue.push(left, Ev::BlockSent { host: h, slot });
                    let data = Bytes::from_static(&ZEROS[..block.length as usize]);
                    let msg = PeerMessage::Piece {
                        piece: block.piece,
                        begin: block.begin,
                        data,
                    };
                    let at = left + self.net.one_way(HostId(h), HostId(to));
                    self.queue.push(
                        at,
                        Ev::PieceArrive {
                            to,
                            slot: their,
                            msg,
                            bytes,
                        },
                    );
                }
                Action::WriteBlock { .. } => {}
                Action::VerifyPiece { piece } => {
                    self.queue.push(now, Ev::Verified { host: h, piece })
                }
                Action::Disconnect { slot, .. } => {
                    if let Some((to, their)) = self.peers[h as usize].links.remove(&slot) {
                        self.peers[h as usize].engine.peer_disconnected(now_i, slot);
                        let at = now + self.net.one_way(HostId(h), HostId(to));
                        self.queue.push(
                            at,
                            Ev::Disconnected {
                                host: to,
                                slot: their,
                            },
                        );
                    }
                }
                Action::Completed => {
                    let p = &mut self.peers[h as usize];
                    p.completed.get_or_insert(now);
                }
            }
        }
        let p = &mut self.peers[h as usize];
        let next = p
            .engine
            .poll_timeout()
            .map_or(SimTime::MAX, |i| self.clock.sim_time(i).max(now));
        if next != p.wake_at {
            p.wake_at = next;
            if next != SimTime::MAX {
                self.queue.push(next, Ev::Wake { host: h });
            }
        }
    }
}

pub fn run(p: &SwarmParams) -> SwarmReport {
    let n = p.leechers + 1;
    let mut rng = stream(p.seed, "swarm");
    let net_config = NetConfig {
        jitter_mean: Duration::ZERO,
        ..NetConfig::default()
    };
    let mut net = Network::new(net_config, n, p.seed);
    net.set_capacity(
        HostId(0),
        Capacity {
            upload: p.seed_upload,
            download: f64::INFINITY,
        },
    );
    for h in 1..n {
        net.set_capacity(
            HostId(h as u32),
            Capacity {
                upload: p.leecher_upload,
                download: p.leecher_download,
            },
        );
    }
    let clock = Clock::new();
    let geo = Geometry::new(p.file_bytes, p.piece_bytes).expect("valid geometry");
    let now_i = clock.instant(SimTime::ZERO);
    let mut config = Config::default();
    config.max_peers = config.max_peers.max(p.degree * 3);
    config.max_uploads_in_flight = p.uploads_in_flight;
    let peers = (0..n)
        .map(|h| {
            let have = if h == 0 {
                Bitfield::full(geo.piece_count)
            } else {
                Bitfield::new(geo.piece_count)
            };
            Peer {
                engine: Engine::new(geo, have, config.clone(), now_i, rng.gen())
                    .expect("bitfield fits"),
                links: HashMap::new(),
                wake_at: SimTime::MAX,
                completed: None,
            }
        })
        .collect();
    let mut swarm = Swarm {
        seed_blocks: vec![0; geo.piece_count as usize],
        clock,
        now: SimTime::ZERO,
        queue: EventQueue::new(),
        net,
        peers,
    };
    // Who connects to whom: a full mesh for small swarms, else `degree` random partners
    // each (what a DHT or tracker reply of ~50 peers gives), the seeder included.
    let mut pairs = std::collections::BTreeSet::new();
    if n <= p.degree + 1 {
        for a in 0..n as u32 {
            for b in a + 1..n as u32 {
                pairs.insert((a, b));
            }
        }
    } else {
        let mut all: Vec<u32> = (0..n as u32).collect();
        for a in 0..n as u32 {
            all.shuffle(&mut rng);
            for &b in all.iter().filter(|&&b| b != a).take(p.degree / 2) {
                pairs.insert((a.min(b), a.max(b)));
            }
        }
    }
    let info = |swarm: &Swarm, h: u32| PeerInfo {
        addr: Some(std::net::SocketAddr::V4(swarm.net.addr(HostId(h)))),
        fast: true,
        reqq: None,
        announced_nothing: false,
    };
    for (a, b) in pairs {
        let (ia, ib) = (info(&swarm, b), info(&swarm, a));
        let (Ok(sa), Ok(sb)) = (
            swarm.peers[a as usize].engine.peer_connected(now_i, ia),
            swarm.peers[b as usize].engine.peer_connected(now_i, ib),
        ) else {
            continue;
        };
        swarm.peers[a as usize].links.insert(sa, (b, sb));
        swarm.peers[b as usize].links.insert(sb, (a, sa));
    }
    for h in 0..n as u32 {
        swarm.after_input(h);
    }
    swarm.queue.push(SimTime::ZERO, Ev::Sample);

    let (t_min, _) = p.distribution().p2p_lower_bound();
    let limit = SimTime::ZERO + p.limit;
    let mut availability = Vec::new();
    let mut timeline = Vec::new();
    let mut last_up = vec![0u64; n];
    let mut last_sample = SimTime::ZERO;
    let mut done = 0usize;
    let mut events = 0u64;
    while let Some((at, ev)) = swarm.queue.pop() {
        if at > limit || done == p.leechers {
            break;
        }
        swarm.now = at;
        events += 1;
        let now_i = swarm.clock.instant(at);
        let h = match ev {
            Ev::Deliver { to, slot, msg } => {
                swarm.peers[to as usize]
                    .engine
                    .handle_message(now_i, slot, msg);
                to
            }
            Ev::PieceArrive {
                to,
                slot,
                msg,
                bytes,
            } => {
                let ready = swarm.net.link_mut(HostId(to)).receive(at, bytes);
                swarm.queue.push(ready, Ev::Deliver { to, slot, msg });
                continue;
            }
            Ev::BlockSent { host, slot } => {
                swarm.peers[host as usize].engine.block_sent(now_i, slot);
                host
            }
            Ev::Verified { host, piece } => {
                swarm.peers[host as usize]
                    .engine
                    .piece_verified(now_i, piece, true);
                host
            }
            Ev::Disconnected { host, slot } => {
                if swarm.peers[host as usize].links.remove(&slot).is_some() {
                    swarm.peers[host as usize]
                        .engine
                        .peer_disconnected(now_i, slot);
                }
                host
            }
            Ev::Wake { host } => {
                let p = &mut swarm.peers[host as usize];
                if p.wake_at != at {
                    continue;
                }
                p.wake_at = SimTime::MAX;
                p.engine.handle_timeout(now_i);
                host
            }
            Ev::Sample => {
                let leechers = &swarm.peers[1..];
                let mut copies = vec![0u32; geo.piece_count as usize];
                let mut held = 0u64;
                for l in leechers {
                    for (i, c) in copies.iter_mut().enumerate() {
                        if l.engine.have().get(i as u32) {
                            *c += 1;
                            held += 1;
                        }
                    }
                }
                let share =
                    held as f64 / (leechers.len().max(1) as f64 * f64::from(geo.piece_count));
                availability.push((
                    at.as_secs_f64(),
                    share,
                    copies.iter().copied().min().unwrap_or(0),
                ));
                if at > last_sample {
                    timeline.push(timeline_row(
                        &swarm,
                        p,
                        &geo,
                        &copies,
                        &mut last_up,
                        at.saturating_since(last_sample),
                        at,
                    ));
                    last_sample = at;
                }
                swarm.queue.push(at + p.sample_every, Ev::Sample);
                continue;
            }
        };
        let was_done = swarm.peers[h as usize].completed.is_some();
        swarm.after_input(h);
        if h != 0 && !was_done && swarm.peers[h as usize].completed.is_some() {
            done += 1;
        }
    }
    let completion = swarm.peers[1..]
        .iter()
        .map(|p| p.completed.map(|t| t.as_secs_f64()))
        .collect();
    SwarmReport {
        completion,
        availability,
        t_min,
        client_server: p.distribution().client_server_time(),
        uploaded_by_seed: swarm.net.link(HostId(0)).bytes_up,
        uploaded_total: (0..n)
            .map(|h| swarm.net.link(HostId(h as u32)).bytes_up)
            .sum(),
        wasted: swarm.peers[1..]
            .iter()
            .map(|p| p.engine.stats().wasted)
            .sum(),
        timeline,
        events,
    }
}

fn timeline_row(
    swarm: &Swarm,
    p: &SwarmParams,
    geo: &Geometry,
    copies: &[u32],
    last_up: &mut [u64],
    dt: Duration,
    at: SimTime,
) -> TimelineRow {
    let dt = dt.as_secs_f64();
    let mut up = [0u64; 2];
    for (h, last) in last_up.iter_mut().enumerate() {
        let now = swarm.net.link(HostId(h as u32)).bytes_up;
        up[usize::from(h > 0)] += now - *last;
        *last = now;
    }
    let blocks = |piece: u32| geo.blocks_in(piece);
    let seed_distinct = (0..geo.piece_count)
        .filter(|&i| swarm.seed_blocks[i as usize] >= blocks(i))
        .count() as u32;
    let seed_copies = (0..geo.piece_count)
        .map(|i| f64::from(swarm.seed_blocks[i as usize]) / f64::from(blocks(i)))
        .sum::<f64>()
        / f64::from(geo.piece_count);
    let leechers = &swarm.peers[1..];
    let (mut unchoked, mut interested, mut active) = (0usize, 0usize, 0usize);
    let (mut serving, mut idle) = (0usize, 0usize);
    for (i, l) in leechers.iter().enumerate() {
        if l.completed.is_some() {
            continue;
        }
        active += 1;
        if swarm.net.link(HostId(i as u32 + 1)).upload_backlog(at) == Duration::ZERO {
            idle += 1;
        }
        for slot in l.engine.peer_slots() {
            let s = l.engine.peer_stats(slot).expect("listed");
            if !s.am_choking && s.requests_in > 0 {
                serving += 1;
            }
            if s.peer_interested {
                interested += 1;
                if !s.am_choking {
                    unchoked += 1;
                }
            }
        }
    }
    let per = |x: usize| x as f64 / active.max(1) as f64;
    TimelineRow {
        t: at.as_secs_f64(),
        seed_util: up[0] as f64 / (p.seed_upload * dt),
        leecher_util: up[1] as f64 / (p.leecher_upload * p.leechers.max(1) as f64 * dt),
        seed_distinct,
        seed_copies,
        empty: leechers
            .iter()
            .filter(|l| l.engine.have().none_set())
            .count(),
        done: leechers.iter().filter(|l| l.completed.is_some()).count(),
        pieces_only_at_seed: copies.iter().filter(|&&c| c == 0).count() as u32,
        mean_unchoked_interested: per(unchoked),
        mean_interested_in_me: per(interested),
        mean_serving: per(serving),
        idle_uplinks: idle,
    }
}
