//! `swarm`: one seeder and N leechers, each a real [`wire::torrent::TorrentCore`] (dial
//! policy, handshakes, metadata over ut_metadata, PEX, bans, the piece engine), with
//! per-host upload and download capacity; completion times against the fluid lower bound.
//! Leechers start from a bare magnet link and know `degree / 2` random peers, as a DHT
//! reply would give; PEX finds them more. No glue decides anything: what it measures is
//! what ships.
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
use wire::engine::{Bitfield, Config, Geometry};
use wire::infohash::InfoHash;
use wire::metainfo::Info;
use wire::peer::{Message, PeerId, Reserved};
use wire::torrent::{ConnId, CoreConfig, Output, PeerSource, TorrentCore};

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
    /// Leechers (the last ones) that answer every request with corrupt data.
    pub corrupt: usize,
    /// Hosts after those (also counted in `leechers`) that have the torrent, announce
    /// every piece and unchoke, but never send a block or a metadata answer.
    pub silent: usize,
    /// Of those silent hosts, this many (the last) also flood every connection with
    /// choke/unchoke, interested/not-interested and have messages, `flood_rate` a second.
    pub flood: usize,
    pub flood_rate: u32,
    /// Hostile hosts share the IP of an honest leecher (another port), as behind a NAT.
    pub share_ip: bool,
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
            corrupt: 0,
            silent: 0,
            flood: 0,
            flood_rate: 10_000,
            share_ip: false,
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
                self.honest()
            ],
        }
    }

    /// Leechers that are neither corrupt nor silent.
    pub fn honest(&self) -> usize {
        self.leechers.saturating_sub(self.corrupt + self.silent)
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
    /// Endpoints the honest leechers banned, summed.
    pub bans: usize,
    /// Hash failures at honest leechers, summed.
    pub hash_failures: u32,
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
    /// A message reaches `to` on its connection `conn`.
    Deliver {
        to: u32,
        conn: ConnId,
        msg: Message,
    },
    /// A piece message's last byte reached `to`'s access link: queue it on the downlink.
    PieceArrive {
        to: u32,
        conn: ConnId,
        msg: Message,
        bytes: usize,
    },
    BlockSent {
        host: u32,
        conn: ConnId,
    },
    Verified {
        host: u32,
        piece: u32,
        ok: bool,
    },
    /// A dial from `from` (its connection `conn`) reaches `to` with its handshake.
    Accept {
        from: u32,
        conn: ConnId,
        to: u32,
    },
    /// The answer to a dial: the handshake of `peer` (or a refusal).
    Answer {
        host: u32,
        conn: ConnId,
        accepted: Option<(u32, ConnId)>,
    },
    Closed {
        host: u32,
        conn: ConnId,
    },
    Wake {
        host: u32,
    },
    /// A flooding host sends its next burst.
    Flood {
        host: u32,
    },
    Sample,
}

/// How often a flooding host sends a burst.
const FLOOD_EVERY: Duration = Duration::from_millis(10);

struct Peer {
    core: TorrentCore,
    /// My connection -> (remote host, remote's connection), once both ends exist.
    links: HashMap<ConnId, (u32, ConnId)>,
    wake_at: SimTime,
    completed: Option<SimTime>,
    /// Sends corrupt blocks.
    corrupt: bool,
    /// Sends no blocks and no metadata.
    silent: bool,
    /// Floods its connections (and is silent).
    flood: bool,
}

impl Peer {
    fn have_count(&self) -> u32 {
        self.core.engine().map_or(0, |e| e.have().count_ones())
    }

    fn has_piece(&self, i: u32) -> bool {
        self.core.engine().is_some_and(|e| e.have().get(i))
    }
}

struct Swarm {
    /// Blocks of each piece the seeder has sent.
    seed_blocks: Vec<u32>,
    clock: Clock,
    now: SimTime,
    queue: EventQueue<Ev>,
    net: Network,
    peers: Vec<Peer>,
    by_addr: HashMap<std::net::SocketAddr, u32>,
    addrs: Vec<std::net::SocketAddr>,
}

static ONES: [u8; wire::engine::BLOCK_LEN as usize] = [1; wire::engine::BLOCK_LEN as usize];

fn peer_id(h: u32) -> PeerId {
    let mut id = *b"-SM0001-000000000000";
    id[8..12].copy_from_slice(&h.to_be_bytes());
    PeerId(id)
}

impl Swarm {
    fn addr(&self, h: u32) -> std::net::SocketAddr {
        self.addrs[h as usize]
    }

    /// Host `h`'s connection `conn` reaches `to`'s `theirs`: the handshake is done at `h`.
    fn connected(
        &mut self,
        now: std::time::Instant,
        h: u32,
        conn: ConnId,
        to: u32,
        theirs: ConnId,
    ) {
        let p = &mut self.peers[h as usize];
        p.links.insert(conn, (to, theirs));
        p.core
            .handshake_done(now, conn, peer_id(to), Reserved::OURS);
    }

    fn after_input(&mut self, h: u32) {
        let now = self.now;
        let now_i = self.clock.instant(now);
        let mut storage_ready = false;
        while let Some(out) = self.peers[h as usize].core.poll_output() {
            if self.peers[h as usize].silent {
                match &out {
                    Output::Upload { .. } => continue,
                    Output::Send {
                        msg: Message::Extended { id, .. },
                        ..
                    } if *id != 0 => continue,
                    _ => {}
                }
            }
            match out {
                Output::Send { conn, msg } => {
                    if let Some(&(to, their)) = self.peers[h as usize].links.get(&conn) {
                        let at = now + self.net.one_way(HostId(h), HostId(to));
                        self.queue.push(
                            at,
                            Ev::Deliver {
                                to,
                                conn: their,
                                msg,
                            },
                        );
                    }
                }
                Output::Upload { conn, block } => {
                    let Some(&(to, their)) = self.peers[h as usize].links.get(&conn) else {
                        self.queue.push(now, Ev::BlockSent { host: h, conn });
                        continue;
                    };
                    if h == 0 {
                        self.seed_blocks[block.piece as usize] += 1;
                    }
                    let bytes = PIECE_HEADER + block.length as usize;
                    let left = self.net.link_mut(HostId(h)).send(now, bytes);
                    self.queue.push(left, Ev::BlockSent { host: h, conn });
                    let fill: &'static [u8] = if self.peers[h as usize].corrupt {
                        &ONES
                    } else {
                        &ZEROS
                    };
                    let msg = Message::Piece {
                        piece: block.piece,
                        offset: block.offset,
                        data: Bytes::from_static(&fill[..block.length as usize]),
                    };
                    let at = left + self.net.one_way(HostId(h), HostId(to));
                    self.queue.push(
                        at,
                        Ev::PieceArrive {
                            to,
                            conn: their,
                            msg,
                            bytes,
                        },
                    );
                }
                // Hashing is the driver's: a piece verifies when every block is the
                // honest (all-zero) data.
                Output::Verify { piece, blocks } => {
                    let ok = blocks.iter().all(|b| b.iter().all(|&x| x == 0));
                    self.queue.push(now, Ev::Verified { host: h, piece, ok });
                }
                Output::Dial { conn, addr, .. } => match self.by_addr.get(&addr) {
                    Some(&to) => {
                        // SYN, SYN-ACK, then our handshake: 1.5 round trips.
                        let at = now + self.net.one_way(HostId(h), HostId(to)) * 3;
                        self.queue.push(at, Ev::Accept { from: h, conn, to });
                    }
                    None => self.queue.push(now, Ev::Closed { host: h, conn }),
                },
                Output::Close { conn, .. } => {
                    if let Some((to, their)) = self.peers[h as usize].links.remove(&conn) {
                        let at = now + self.net.one_way(HostId(h), HostId(to));
                        self.queue.push(
                            at,
                            Ev::Closed {
                                host: to,
                                conn: their,
                            },
                        );
                    }
                }
                // No disk: storage is "open" at once, with nothing on it.
                Output::OpenStorage { .. } => storage_ready = true,
                Output::SaveResume => {}
            }
        }
        let p = &mut self.peers[h as usize];
        if storage_ready {
            let pieces = p.core.piece_count().unwrap_or(0);
            p.core.storage_ready(now_i, Bitfield::new(pieces));
            return self.after_input(h);
        }
        while let Some(ev) = p.core.poll_event() {
            if ev == wire::torrent::Event::Completed {
                p.completed.get_or_insert(now);
            }
        }
        let next = p
            .core
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

/// An info dictionary for the file, and its info-hash (piece hashes are zeros: the
/// simulator verifies by content).
fn metadata(geo: &Geometry) -> (Info, bytes::Bytes, InfoHash) {
    let mut raw = format!(
        "d6:lengthi{}e4:name9:swarm.sim12:piece lengthi{}e6:pieces{}:",
        geo.total_length,
        geo.piece_length,
        20 * geo.piece_count
    )
    .into_bytes();
    raw.extend(std::iter::repeat_n(0u8, 20 * geo.piece_count as usize));
    raw.push(b'e');
    let ih = InfoHash::of_info_bytes(&raw);
    let info = Info::from_bytes(&raw).expect("a valid info dictionary");
    (info, Bytes::from(raw), ih)
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
    let (info, raw, info_hash) = metadata(&geo);
    let now_i = clock.instant(SimTime::ZERO);
    let mut config = Config::default();
    config.max_peers = config.max_peers.max(p.degree * 3);
    config.max_uploads_in_flight = p.uploads_in_flight;
    let honest = p.honest();
    // Where each host listens. Hostile hosts may sit behind an honest leecher's IP.
    let addrs: Vec<std::net::SocketAddr> = (0..n)
        .map(|h| {
            let own = net.addr(HostId(h as u32));
            let hostile = h > honest;
            if p.share_ip && hostile {
                let twin = net.addr(HostId((h - honest) as u32));
                std::net::SocketAddr::new((*twin.ip()).into(), twin.port().wrapping_add(1))
            } else {
                std::net::SocketAddr::V4(own)
            }
        })
        .collect();
    let by_addr = addrs
        .iter()
        .enumerate()
        .map(|(h, a)| (*a, h as u32))
        .collect();
    let peers = (0..n)
        .map(|h| {
            let addr = addrs[h];
            let cfg = CoreConfig {
                peer_id: peer_id(h as u32),
                listen_port: Some(addr.port()),
                listen_ip: Some(addr.ip()),
                engine: config.clone(),
                rng_seed: rng.gen(),
                ..CoreConfig::default()
            };
            let silent = h > honest + p.corrupt;
            let core = if h == 0 || silent {
                let have = Bitfield::full(geo.piece_count);
                TorrentCore::with_metadata(info_hash, &info, raw.clone(), have, cfg, now_i)
                    .expect("seeder core")
            } else {
                TorrentCore::magnet(info_hash, cfg, now_i)
            };
            Peer {
                core,
                links: HashMap::new(),
                wake_at: SimTime::MAX,
                completed: None,
                corrupt: h > honest && !silent,
                silent,
                flood: h + p.flood > p.leechers,
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
        by_addr,
        addrs,
    };
    // Who knows whom at the start: a full mesh for small swarms, else `degree / 2` random
    // peers each (what a DHT reply gives), the seeder included. The lower host dials.
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
    for (a, b) in pairs {
        let addr = swarm.addr(b);
        swarm.peers[a as usize]
            .core
            .add_peer(now_i, addr, PeerSource::Dht);
    }
    for h in 0..n as u32 {
        swarm.after_input(h);
        if swarm.peers[h as usize].flood {
            swarm.queue.push(SimTime::ZERO, Ev::Flood { host: h });
        }
    }
    swarm.queue.push(SimTime::ZERO, Ev::Sample);
    let burst = (p.flood_rate as f64 * FLOOD_EVERY.as_secs_f64()).ceil() as u32;

    let dist = p.distribution();
    let (t_min, _) = dist.p2p_lower_bound();
    let limit = SimTime::ZERO + p.limit;
    let mut availability = Vec::new();
    let mut timeline = Vec::new();
    let mut last_up = vec![0u64; n];
    let mut last_sample = SimTime::ZERO;
    let mut done = 0usize;
    let mut events = 0u64;
    while let Some((at, ev)) = swarm.queue.pop() {
        if at > limit || done == honest {
            break;
        }
        swarm.now = at;
        events += 1;
        let now_i = swarm.clock.instant(at);
        let h = match ev {
            Ev::Deliver { to, conn, msg } => {
                swarm.peers[to as usize].core.message(now_i, conn, msg);
                to
            }
            Ev::PieceArrive {
                to,
                conn,
                msg,
                bytes,
            } => {
                let ready = swarm.net.link_mut(HostId(to)).receive(at, bytes);
                swarm.queue.push(ready, Ev::Deliver { to, conn, msg });
                continue;
            }
            Ev::BlockSent { host, conn } => {
                swarm.peers[host as usize].core.block_sent(now_i, conn);
                host
            }
            Ev::Verified { host, piece, ok } => {
                swarm.peers[host as usize]
                    .core
                    .piece_written(now_i, piece, Ok(ok));
                host
            }
            Ev::Accept { from, conn, to } => {
                let addr = swarm.addr(from);
                let accepted = swarm.peers[to as usize].core.accept(now_i, addr).ok();
                let back = at + swarm.net.one_way(HostId(to), HostId(from));
                if let Some(theirs) = accepted {
                    swarm.connected(now_i, to, theirs, from, conn);
                }
                swarm.queue.push(
                    back,
                    Ev::Answer {
                        host: from,
                        conn,
                        accepted: accepted.map(|c| (to, c)),
                    },
                );
                to
            }
            Ev::Answer {
                host,
                conn,
                accepted,
            } => {
                match accepted {
                    Some((to, theirs)) => swarm.connected(now_i, host, conn, to, theirs),
                    None => swarm.peers[host as usize]
                        .core
                        .closed(now_i, conn, "refused"),
                }
                host
            }
            Ev::Closed { host, conn } => {
                swarm.peers[host as usize].links.remove(&conn);
                swarm.peers[host as usize]
                    .core
                    .closed(now_i, conn, "closed by peer");
                host
            }
            Ev::Flood { host } => {
                // Messages a core must take in its stride: none is invalid, each one
                // costs it a little state or work, and they never stop.
                let links: Vec<(u32, ConnId)> =
                    swarm.peers[host as usize].links.values().copied().collect();
                for (to, their) in links {
                    let at = at + swarm.net.one_way(HostId(host), HostId(to));
                    for k in 0..burst {
                        let msg = match k % 5 {
                            0 => Message::Choke,
                            1 => Message::Unchoke,
                            2 => Message::Interested,
                            3 => Message::NotInterested,
                            _ => Message::Have {
                                piece: k % geo.piece_count,
                            },
                        };
                        swarm.queue.push(
                            at,
                            Ev::Deliver {
                                to,
                                conn: their,
                                msg,
                            },
                        );
                    }
                }
                swarm.queue.push(at + FLOOD_EVERY, Ev::Flood { host });
                continue;
            }
            Ev::Wake { host } => {
                let p = &mut swarm.peers[host as usize];
                if p.wake_at != at {
                    continue;
                }
                p.wake_at = SimTime::MAX;
                p.core.handle_timeout(now_i);
                host
            }
            Ev::Sample => {
                let leechers = &swarm.peers[1..=honest];
                let mut copies = vec![0u32; geo.piece_count as usize];
                let mut held = 0u64;
                for l in leechers {
                    for (i, c) in copies.iter_mut().enumerate() {
                        if l.has_piece(i as u32) {
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
        let honest_leecher = h != 0 && (h as usize) <= honest;
        if honest_leecher && !was_done && swarm.peers[h as usize].completed.is_some() {
            done += 1;
        }
    }
    let honest_peers = &swarm.peers[1..=honest];
    let completion = honest_peers
        .iter()
        .map(|p| p.completed.map(|t| t.as_secs_f64()))
        .collect();
    let engine_stat = |f: fn(&wire::engine::EngineStats) -> u64| {
        honest_peers
            .iter()
            .filter_map(|p| p.core.engine().map(|e| f(&e.stats())))
            .sum::<u64>()
    };
    SwarmReport {
        completion,
        availability,
        t_min,
        client_server: dist.client_server_time(),
        uploaded_by_seed: swarm.net.link(HostId(0)).bytes_up,
        uploaded_total: (0..n)
            .map(|h| swarm.net.link(HostId(h as u32)).bytes_up)
            .sum(),
        wasted: engine_stat(|s| s.wasted),
        timeline,
        events,
        bans: honest_peers.iter().map(|p| p.core.banned_endpoints()).sum(),
        hash_failures: engine_stat(|s| u64::from(s.hash_failures)) as u32,
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
    let leechers = &swarm.peers[1..=p.honest()];
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
        let Some(e) = l.core.engine() else { continue };
        for slot in e.peer_slots() {
            let s = e.peer_stats(slot).expect("listed");
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
        empty: leechers.iter().filter(|l| l.have_count() == 0).count(),
        done: leechers.iter().filter(|l| l.completed.is_some()).count(),
        pieces_only_at_seed: copies.iter().filter(|&&c| c == 0).count() as u32,
        mean_unchoked_interested: per(unchoked),
        mean_interested_in_me: per(interested),
        mean_serving: per(serving),
        idle_uplinks: idle,
    }
}
