//! Numbers for the sans-IO core, printed as plain text:
//! - queries answered per second by one core (no sockets: the protocol work a bootstrap
//!   node does per datagram),
//! - memory per core at rest after joining an in-memory network (RSS growth / nodes).
//!
//! Run: CARGO_TARGET_DIR=target-dht cargo bench -p dht --bench core

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dht::krpc::{Body, Message, Query, QueryKind, Want};
use dht::{Config, Dht, Id};

fn addr(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 6881)
}

fn query(kind: QueryKind, id: Id, t: u16) -> Vec<u8> {
    Message {
        t: t.to_be_bytes().to_vec(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Query(Query {
            id,
            want: Want::default(),
            kind,
        }),
    }
    .to_bytes()
}

fn answer_rate() {
    let now = Instant::now();
    let mut c = Config::loopback(vec![]);
    c.inbound_rate = u32::MAX / 2;
    c.inbound_burst = u32::MAX / 2;
    c.max_replies_per_sec = u32::MAX / 2;
    let mut d = Dht::new(c, now, 1);
    // Give it a table: answer its pings from 300 nodes.
    for i in 0..300u32 {
        d.ping(now, addr(i));
    }
    let mut ids = BTreeMap::new();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    while let Some(t) = d.poll_transmit() {
        let m = Message::decode(&t.data).unwrap();
        let id = Id::random(&mut rng);
        ids.insert(t.to, id);
        let r = Message {
            t: m.t,
            v: None,
            ip: None,
            ro: false,
            body: Body::Response(dht::krpc::Response {
                id,
                ..Default::default()
            }),
        };
        d.handle_datagram(now, t.to, &r.to_bytes());
    }
    while d.poll_transmit().is_some() {}
    println!("core: table has {} nodes", d.node_count());
    for (name, kind) in [
        ("ping", QueryKind::Ping),
        (
            "find_node",
            QueryKind::FindNode {
                target: Id([0x42; 20]),
            },
        ),
        (
            "get_peers",
            QueryKind::GetPeers {
                info_hash: Id([0x43; 20]),
            },
        ),
    ] {
        let n = 200_000u32;
        let queries: Vec<(SocketAddr, Vec<u8>)> = (0..1000u32)
            .map(|i| {
                (
                    addr(10_000 + i),
                    query(kind.clone(), Id([(i % 251) as u8; 20]), i as u16),
                )
            })
            .collect();
        let start = Instant::now();
        let mut bytes = 0usize;
        for i in 0..n {
            let (from, q) = &queries[(i % 1000) as usize];
            d.handle_datagram(now, *from, q);
            while let Some(t) = d.poll_transmit() {
                bytes += black_box(t.data.len());
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "core: {name:<10} {:>10.0} queries answered/s ({} bytes out)",
            n as f64 / secs,
            bytes
        );
    }
}

fn rss_bytes() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Joins `n` cores in an in-memory network (10 ms latency) and reports RSS growth per core.
fn memory_per_core(n: u32) {
    let before = rss_bytes().unwrap_or(0);
    let start = Instant::now();
    let mut now = start;
    let mut nodes: Vec<Dht> = (0..n)
        .map(|i| {
            let boot = if i == 0 { vec![] } else { vec![addr(0)] };
            Dht::new(Config::loopback(boot), now, i as u64)
        })
        .collect();
    let mut queue: BTreeMap<(Instant, u64), (u32, SocketAddr, Vec<u8>)> = BTreeMap::new();
    let mut seq = 0u64;
    let end = start + Duration::from_secs(600);
    let mut wake: Vec<Instant> = nodes.iter().map(|d| d.poll_timeout().unwrap()).collect();
    let mut timers: BTreeMap<(Instant, u32), ()> = wake
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t, i as u32), ()))
        .collect();
    let mut steps = 0u64;
    loop {
        let next_packet = queue.keys().next().map(|k| k.0);
        let next_timer = timers.keys().next().map(|k| k.0);
        let next = match (next_packet, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => break,
            },
        };
        if next > end {
            break;
        }
        now = now.max(next);
        steps += 1;
        let mut touched = Vec::new();
        if next_packet == Some(next) {
            let (k, (from, to, data)) = queue.pop_first().unwrap();
            let _ = k;
            let j = u32::from(match to.ip() {
                IpAddr::V4(v4) => v4,
                _ => unreachable!(),
            }) - 0x0a00_0000;
            if j < n {
                nodes[j as usize].handle_datagram(now, addr(from), &data);
                touched.push(j);
            }
        } else {
            let ((_, i), ()) = timers.pop_first().unwrap();
            nodes[i as usize].handle_timeout(now);
            touched.push(i);
        }
        for i in touched {
            let d = &mut nodes[i as usize];
            while let Some(t) = d.poll_transmit() {
                seq += 1;
                queue.insert((now + Duration::from_millis(10), seq), (i, t.to, t.data));
            }
            while d.poll_event().is_some() {}
            let w = d.poll_timeout().unwrap();
            if w != wake[i as usize] {
                timers.remove(&(wake[i as usize], i));
                wake[i as usize] = w;
                timers.insert((w, i), ());
            }
        }
    }
    let after = rss_bytes().unwrap_or(0);
    let avg_table = nodes.iter().map(Dht::node_count).sum::<usize>() as f64 / n as f64;
    let heap = nodes.iter().map(Dht::approx_heap_bytes).sum::<usize>() as f64 / n as f64;
    let inline = std::mem::size_of::<Dht>();
    println!(
        "core: at rest, approx heap {:.1} KiB + {inline} bytes inline per core",
        heap / 1024.0
    );
    println!(
        "core: {n} nodes joined, 600 s virtual ({steps} steps, {:.1} s wall); avg table {avg_table:.1} nodes; RSS growth {:.1} KiB per core",
        start.elapsed().as_secs_f64(),
        after.saturating_sub(before) as f64 / n as f64 / 1024.0
    );
    black_box(nodes);
}

/// Time per `Pool::closest` (k = 8) in pools of several sizes.
fn pool_closest(sizes: &[usize], calls: usize) {
    let now = Instant::now();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(4);
    for &n in sizes {
        let mut pool = dht::pool::Pool::new(n, false, Duration::from_secs(900));
        for i in 0..n as u32 {
            let info = dht::NodeInfo {
                id: Id::random(&mut rng),
                addr: addr(i),
            };
            pool.insert_verified(now, info, true);
        }
        let targets: Vec<Id> = (0..1024).map(|_| Id::random(&mut rng)).collect();
        let start = Instant::now();
        let mut total = 0;
        for i in 0..calls {
            total += black_box(pool.closest(&targets[i % 1024], 8)).len();
        }
        let per = start.elapsed().as_nanos() as f64 / calls as f64;
        println!("pool closest (k = 8) in a pool of {n:>6} nodes: {per:>7.0} ns per call ({total} nodes)");
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, so keep it quick
    // unless really benchmarking.
    let quick = !std::env::args().any(|a| a == "--bench");
    if quick {
        memory_per_core(50);
        pool_closest(&[1_000], 100);
        return;
    }
    pool_closest(&[1_000, 10_000, 100_000], 200_000);
    answer_rate();
    memory_per_core(5_000);
}
