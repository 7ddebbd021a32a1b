//! `swarm demo`: a whole swarm on loopback with no internet. A DHT bootstrap node, N
//! seeders of a generated file and one leecher, each on its own 127.0.0.x address; the
//! leecher knows only the magnet link and finds the seeders through the DHT.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::watch;
use wire::session::Source;

use super::common::{interrupted, runtime};
use super::get::{parse_target, Target};
use super::seed::{magnet_of, prepare};
use crate::client::{contributions_report, Client, NetConfig, Outcome};
use crate::progress::{human_bytes, Progress};

/// Arguments of `swarm demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of seeders.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub peers: u16,
    /// Size of the generated file (suffixes K, M, G).
    #[arg(long, default_value = "64M", value_parser = super::create::parse_size)]
    pub size: u64,
    /// Working directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Per-seeder upload limit in bytes per second (suffixes K, M, G); 0 = unlimited.
    /// A limit makes the leecher visibly pull from every seeder at once.
    #[arg(long, default_value = "0", value_parser = super::create::parse_size)]
    pub seeder_limit: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.size == 0 {
        bail!("--size must be at least 1 byte");
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("swarm-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    runtime()?.block_on(demo(args, dir))
}

/// Writes `size` bytes of reproducible pseudo-random data (xorshift64*), 1 MiB at a time.
fn generate_file(path: &Path, size: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(())
}

fn loopback(i: u16) -> IpAddr {
    // 127.77.x.y: away from 127.0.0.1 where other services listen.
    IpAddr::V4(Ipv4Addr::new(127, 77, (i >> 8) as u8, (i & 0xff) as u8 + 1))
}

fn net(ip: IpAddr, bootstrap: SocketAddr, limit_up: u64) -> NetConfig {
    NetConfig {
        bind_ip: ip,
        port: 0,
        bootstrap: vec![bootstrap],
        bootstrap_names: Vec::new(),
        no_dht: false,
        dht_state: None,
        max_peers: 200,
        // The demo's data lives in a fresh temporary directory: nothing to resume.
        resume_dir: None,
        full_recheck: false,
        limit_down: 0,
        limit_up,
        transport: wire::session::TransportPolicy::Both,
    }
}

async fn demo(args: Args, dir: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let seed_dir = dir.join("seed");
    let leech_dir = dir.join("leech");
    std::fs::create_dir_all(&seed_dir)?;
    std::fs::create_dir_all(&leech_dir)?;
    let name = "demo.bin";
    eprintln!("demo: generating {} of data", human_bytes(args.size));
    generate_file(&seed_dir.join(name), args.size)?;
    let prepared = prepare(&seed_dir.join(name), None, None)?;
    let magnet = magnet_of(&prepared.metainfo).to_string();

    // The bootstrap node: a plain DHT node that stores announces.
    let mut bcfg = dht::NodeConfig::new(
        SocketAddr::new(loopback(0), 0),
        dht::Config::loopback(Vec::new()),
    );
    bcfg.rng_seed = None;
    let boot = dht::Node::bind(bcfg)
        .await
        .context("cannot start the bootstrap node")?;
    let boot_addr = boot.local_addr();
    eprintln!("demo: bootstrap node on {boot_addr}");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut seeders = Vec::new();
    let mut seeders_started = Vec::new();
    for i in 0..args.peers {
        let ip = loopback(i + 1);
        let client = Client::start(
            Source::Metainfo(Box::new(prepared.metainfo.clone())),
            seed_dir.clone(),
            &net(ip, boot_addr, args.seeder_limit),
            Vec::new(),
        )
        .await
        .with_context(|| format!("cannot start seeder {i} on {ip}"))?;
        seeders_started.push(client);
    }
    // Each seeder announces itself first, as a seeder of a real swarm has long done; the
    // leecher's first lookup then finds them all.
    let announced = wait_all_announced(&mut seeders_started).await;
    for client in seeders_started {
        let mut stop = stop_rx.clone();
        seeders.push(tokio::spawn(async move {
            let mut client = client;
            let mut progress = Progress::hidden("seeder");
            let _ = client
                .run(&mut progress, true, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            client.shutdown().await;
        }));
    }
    eprintln!(
        "demo: {} seeders started, {announced} announced; magnet link:\n{magnet}",
        args.peers
    );

    let Target::Magnet(m) = parse_target(&magnet)? else {
        bail!("demo magnet link did not parse as a magnet link");
    };
    let mut leecher = Client::start(
        Source::InfoHash(m.info_hash),
        leech_dir.clone(),
        &net(loopback(args.peers + 1), boot_addr, 0),
        Vec::new(),
    )
    .await
    .context("cannot start the leecher")?;
    let fetch_started = Instant::now();
    let mut progress = Progress::new("leecher");
    let timeout = tokio::time::sleep(Duration::from_secs(args.timeout));
    let outcome = leecher
        .run(&mut progress, false, async {
            tokio::select! {
                _ = timeout => {}
                _ = interrupted() => {}
            }
        })
        .await;
    let elapsed = fetch_started.elapsed();
    let stats = leecher.torrent().stats();
    leecher.shutdown().await;
    let _ = stop_tx.send(true);
    for s in seeders {
        let _ = s.await;
    }
    boot.shutdown().await;

    match outcome? {
        Outcome::Complete => {}
        Outcome::Stopped => bail!(
            "the leecher did not finish in time ({} of {} left)",
            human_bytes(stats.bytes_left),
            human_bytes(stats.total_length)
        ),
    }
    let same = files_equal(&seed_dir.join(name), &leech_dir.join(name))?;
    if !same {
        bail!("the downloaded file differs from the original");
    }
    progress.finish("complete");
    let rate = stats.total_length as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "demo: fetched {} by magnet link through the DHT in {:.2} s ({}/s), verified byte for byte",
        human_bytes(stats.total_length),
        elapsed.as_secs_f64(),
        human_bytes(rate as u64)
    );
    let used = stats
        .contributions
        .iter()
        .filter(|c| c.downloaded > 0)
        .count();
    println!(
        "demo: {used} of {} seeders sent data ({} received in all, {} of it duplicate or unneeded):",
        args.peers,
        human_bytes(stats.contributions.iter().map(|c| c.downloaded).sum()),
        human_bytes(stats.wasted)
    );
    for line in contributions_report(&stats) {
        println!("{line}");
    }
    println!(
        "demo: total time {:.2} s (including data generation and hashing)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits (a few seconds at most) for every seeder's first announce; how many made it.
async fn wait_all_announced(seeders: &mut [Client]) -> usize {
    let mut n = 0;
    for c in seeders.iter_mut() {
        if c.wait_announced(Duration::from_secs(5)).await {
            n += 1;
        }
    }
    n
}

/// Compares two files chunk by chunk.
fn files_equal(a: &Path, b: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let (ma, mb) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let mut fa = std::io::BufReader::new(std::fs::File::open(a)?);
    let mut fb = std::io::BufReader::new(std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
