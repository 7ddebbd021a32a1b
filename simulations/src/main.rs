//! `simulations`: run a scenario, print a table, write CSV and an SVG plot.
//!
//! ```text
//! cargo run --release -p simulations -- dht-lookup --nodes 10000 --seed 1 --churn --loss 0.02
//! ```

use clap::{Args, Parser, Subcommand};
use simulations::apps::probe::Probe;
use simulations::dht_sim::adversary::AttackKind;
use simulations::dht_sim::WorldConfig;
use simulations::net::churn::ChurnConfig;
use simulations::net::NetConfig;
use simulations::plot::{line_chart, Chart, Series};
use simulations::scenarios::{
    dht_attack, dht_bootstrap, dht_lookup, dht_mutable, dht_spoof, swarm,
};
use simulations::stats::{Samples, Table};
use simulations::{HostId, SimTime, Simulator};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Deterministic simulations of swarm's DHT and wire cores in virtual time")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// Ordinary nodes (bootstrap nodes come on top).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Run seed: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for CSV and SVG output.
    #[arg(long, default_value = "sim-out")]
    out: PathBuf,
    /// Virtual run length, seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Nodes join at random times within this many seconds.
    #[arg(long, default_value_t = 120)]
    join_over: u64,
    /// Datagram loss probability.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Share of nodes behind a NAT that drops unsolicited inbound traffic.
    #[arg(long, default_value_t = 0.0)]
    nat: f64,
    /// Churn: Weibull sessions (median 30 min) and absences (median 15 min).
    #[arg(long)]
    churn: bool,
    /// Plain routing tables: k nodes in every bucket (the default has the larger far
    /// buckets of `dht::Config::extended_buckets`).
    #[arg(long)]
    plain_buckets: bool,
}

#[derive(Args, Clone)]
struct LookupArgs {
    #[command(flatten)]
    common: Common,
    /// Announce + get_peers pairs to measure.
    #[arg(long, default_value_t = 1000)]
    lookups: usize,
    /// Seconds before the first measured lookup.
    #[arg(long, default_value_t = 300)]
    warmup: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// Routing-table depth and fill over time while N nodes join.
    DhtBootstrap {
        #[command(flatten)]
        common: Common,
        /// Seconds between samples.
        #[arg(long, default_value_t = 15)]
        sample_every: u64,
    },
    /// Announce + get_peers after warm-up: success, latency percentiles, messages.
    DhtLookup(LookupArgs),
    /// Success vs share of malicious nodes.
    DhtAttack {
        #[command(flatten)]
        lookup: LookupArgs,
        /// garbage | sybil
        #[arg(long, default_value = "sybil")]
        kind: String,
        /// Comma-separated attacker shares.
        #[arg(long, default_value = "0,0.05,0.1,0.2,0.3")]
        shares: String,
        /// Target info-hashes the attackers surround.
        #[arg(long, default_value_t = 10)]
        targets: usize,
    },
    /// BEP 46 mutable-torrent update: share of readers' gets returning the new version
    /// by time since the update.
    DhtMutable {
        #[command(flatten)]
        common: Common,
        /// Seconds before version 1 is put.
        #[arg(long, default_value_t = 300)]
        warmup: u64,
        /// Seconds between version 1 and version 2 (the update).
        #[arg(long, default_value_t = 60)]
        update_after: u64,
        /// Reader gets, spread over the delays.
        #[arg(long, default_value_t = 1000)]
        readers: usize,
        /// Comma-separated seconds after the update at which gets start.
        #[arg(long, default_value = "0,0.25,0.5,1,2,5,10,30,60,120,300")]
        delays: String,
    },
    /// Forged replies with guessed transaction ids: random vs sequential ids.
    DhtSpoof {
        #[command(flatten)]
        lookup: LookupArgs,
        /// Comma-separated spoofer shares.
        #[arg(long, default_value = "0.01,0.05")]
        shares: String,
        /// Transaction ids guessed after the one seen, per forged source.
        #[arg(long, default_value_t = 32)]
        window: u32,
        /// Milliseconds between the spoofer's reply and its forgeries.
        #[arg(long, default_value_t = 10)]
        delay_ms: u64,
        /// Random ids only (skip the sequential comparison).
        #[arg(long)]
        random_only: bool,
    },
    /// One seeder, N leechers on the real wire engine: completion vs the fluid bound.
    Swarm {
        /// Leechers.
        #[arg(long, default_value_t = 100)]
        leechers: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// File size in MiB.
        #[arg(long, default_value_t = 16)]
        file_mib: u64,
        /// Piece size in KiB.
        #[arg(long, default_value_t = 256)]
        piece_kib: u64,
        /// Seeder upload, MB/s.
        #[arg(long, default_value_t = 2.0)]
        seed_up: f64,
        /// Leecher upload, MB/s.
        #[arg(long, default_value_t = 1.0)]
        up: f64,
        /// Leecher download, MB/s.
        #[arg(long, default_value_t = 5.0)]
        down: f64,
        /// Connections per peer (full mesh below this).
        #[arg(long, default_value_t = 40)]
        degree: usize,
        /// Of the leechers, this many answer every request with corrupt data (they are
        /// not counted as leechers that must finish).
        #[arg(long, default_value_t = 0)]
        corrupt: usize,
        /// Of the leechers, this many more have the torrent and unchoke but never send a
        /// block or a metadata answer.
        #[arg(long, default_value_t = 0)]
        silent: usize,
        /// Of the silent hosts, this many also flood their connections with control
        /// messages (`--flood-rate` a second each).
        #[arg(long, default_value_t = 0)]
        flood: usize,
        #[arg(long, default_value_t = 10_000)]
        flood_rate: u32,
        /// Corrupt and silent hosts listen on an honest leecher's IP (another port).
        #[arg(long)]
        share_ip: bool,
    },
    /// Raw engine throughput with the protocol-free probe app.
    EngineBench {
        #[command(flatten)]
        common: Common,
        /// Mean seconds between pings per host.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

fn world(c: &Common) -> WorldConfig {
    let mut w = WorldConfig::new(c.nodes, c.seed);
    w.join_over = Duration::from_secs(c.join_over);
    w.net = NetConfig {
        loss: c.loss,
        nat_share: c.nat,
        ..NetConfig::default()
    };
    w.churn = c.churn.then(ChurnConfig::mainline_like);
    w.dht.extended_buckets &= !c.plain_buckets;
    w
}

/// Writes the table as CSV; an unwritable output directory is a one-line error and exit 1.
fn save(out: &Path, name: &str, table: &Table) {
    let path = out.join(format!("{name}.csv"));
    let written = std::fs::create_dir_all(out).and_then(|()| std::fs::write(&path, table.to_csv()));
    match written {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => {
            eprintln!("simulations: error: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

fn plot(out: &Path, name: &str, chart: &Chart<'_>, series: &[Series]) {
    let path = out.join(format!("{name}.svg"));
    match line_chart(&path, chart, series) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("plot {name}: {e}"),
    }
}

fn ms(s: f64) -> String {
    if s.is_nan() {
        "-".into()
    } else {
        format!("{:.0}", s * 1e3)
    }
}

/// mimalloc instead of the system allocator: a 100,000-node run allocates and frees
/// hundreds of millions of small buffers (datagrams, lookups, replies).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let wall = Instant::now();
    match cli.scenario {
        Scenario::DhtBootstrap {
            common,
            sample_every,
        } => {
            let p = dht_bootstrap::BootstrapParams {
                world: world(&common),
                duration: Duration::from_secs(common.duration),
                sample_every: Duration::from_secs(sample_every),
            };
            let r = dht_bootstrap::run(&p);
            let mut t = Table::new(&[
                "t_s",
                "nodes",
                "depth_min",
                "depth_p10",
                "depth_p50",
                "depth_mean",
                "entries",
                "fill",
            ]);
            for (at, s) in &r.samples {
                t.row(vec![
                    format!("{at:.0}"),
                    s.nodes.to_string(),
                    format!("{:.0}", s.depth_min),
                    format!("{:.0}", s.depth_p10),
                    format!("{:.0}", s.depth_p50),
                    format!("{:.2}", s.depth_mean),
                    format!("{:.1}", s.mean_entries),
                    format!("{:.3}", s.mean_fill),
                ]);
            }
            print!("{t}");
            println!(
                "datagrams {}  events {}  wall {:.1}s",
                r.datagrams,
                r.events,
                wall.elapsed().as_secs_f64()
            );
            save(&common.out, "dht-bootstrap", &t);
            let pts =
                |f: fn(&TableSummary) -> f64| r.samples.iter().map(|(x, s)| (*x, f(s))).collect();
            plot(
                &common.out,
                "dht-bootstrap",
                &Chart {
                    title: &format!(
                        "Routing tables while {} nodes join (seed {})",
                        common.nodes, common.seed
                    ),
                    x_label: "virtual time (s)",
                    y_label: "buckets / entries/8",
                    references: vec![("log2(N/8)".into(), (common.nodes as f64 / 8.0).log2())],
                },
                &[
                    Series::new("depth p10", pts(|s| s.depth_p10)),
                    Series::new("depth mean", pts(|s| s.depth_mean)),
                    Series::new("entries / 8", pts(|s| s.mean_entries / 8.0)),
                ],
            );
        }
        Scenario::DhtLookup(a) => {
            let r = dht_lookup::run(&lookup_params(&a));
            let t = lookup_table(&[("-", &r)], &a);
            print!("{t}");
            println!("{}", lookup_footer(&r, wall));
            save(&a.common.out, "dht-lookup", &t);
            let rtt = r.median_rtt.as_secs_f64() * 1e3;
            plot(
                &a.common.out,
                "dht-lookup",
                &Chart {
                    title: &format!("get_peers latency, {} nodes (CDF)", a.common.nodes),
                    x_label: "milliseconds since the search started",
                    y_label: "share of searches",
                    references: vec![],
                },
                &[
                    Series::new(
                        "first peer",
                        cdf(r.time_to_first_peer(), r.measured().count()),
                    ),
                    Series::new(
                        "announcer found",
                        cdf(r.time_to_found(), r.measured().count()),
                    ),
                    Series::new("lookup done", cdf(r.time_to_done(), r.measured().count())),
                    Series::new(
                        format!("3 x median RTT ({rtt:.0} ms)"),
                        vec![(3.0 * rtt, 0.0), (3.0 * rtt, 1.0)],
                    ),
                ],
            );
        }
        Scenario::DhtAttack {
            lookup,
            kind,
            shares,
            targets,
        } => {
            let kind = match kind.as_str() {
                "garbage" => AttackKind::Garbage,
                "sybil" => AttackKind::Sybil,
                other => {
                    eprintln!("error: --kind must be garbage or sybil, not {other}");
                    std::process::exit(2);
                }
            };
            let shares: Vec<f64> = shares
                .split(',')
                .map(|s| s.trim().parse().unwrap_or_else(|_| panic!("bad share {s}")))
                .collect();
            let p = dht_attack::AttackParams {
                base: lookup_params(&lookup),
                kind,
                shares,
                targets,
                introductions: 32,
            };
            let points = dht_attack::run(&p);
            let labels: Vec<String> = points.iter().map(|pt| format!("{:.2}", pt.share)).collect();
            let rows: Vec<(&str, &dht_lookup::LookupReport)> = labels
                .iter()
                .zip(&points)
                .map(|(l, pt)| (l.as_str(), &pt.report))
                .collect();
            let t = lookup_table(&rows, &lookup);
            print!("{t}");
            println!("wall {:.1}s", wall.elapsed().as_secs_f64());
            let name = format!("dht-attack-{kind:?}").to_lowercase();
            save(&lookup.common.out, &name, &t);
            plot(
                &lookup.common.out,
                &name,
                &Chart {
                    title: &format!(
                        "{kind:?} attack on {targets} targets, {} honest nodes",
                        lookup.common.nodes
                    ),
                    x_label: "share of attacker nodes",
                    y_label: "share of searches that found the announcer",
                    references: vec![],
                },
                &[Series::new(
                    "success",
                    points
                        .iter()
                        .map(|pt| (pt.share, pt.report.success_rate()))
                        .collect(),
                )],
            );
        }
        Scenario::DhtMutable {
            common,
            warmup,
            update_after,
            readers,
            delays,
        } => dht_mutable_main(&common, warmup, update_after, readers, &delays, wall),
        Scenario::DhtSpoof {
            lookup,
            shares,
            window,
            delay_ms,
            random_only,
        } => dht_spoof_main(&lookup, &shares, window, delay_ms, random_only, wall),
        Scenario::EngineBench { common, interval } => engine_bench(&common, interval, wall),
        Scenario::Swarm {
            leechers,
            seed,
            out,
            file_mib,
            piece_kib,
            seed_up,
            up,
            down,
            degree,
            corrupt,
            silent,
            flood,
            flood_rate,
            share_ip,
        } => {
            let mut p = swarm::SwarmParams::new(leechers, seed);
            p.file_bytes = file_mib << 20;
            p.piece_bytes = piece_kib << 10;
            p.seed_upload = seed_up * 1e6;
            p.leecher_upload = up * 1e6;
            p.leecher_download = down * 1e6;
            p.degree = degree;
            p.corrupt = corrupt.min(leechers.saturating_sub(1));
            p.silent = silent.min(leechers.saturating_sub(1 + p.corrupt));
            p.flood = flood.min(p.silent);
            p.flood_rate = flood_rate;
            p.share_ip = share_ip;
            let r = swarm::run(&p);
            let mut done: Samples = r.completion.iter().flatten().copied().collect();
            let finished = done.len();
            let mut t = Table::new(&[
                "leechers",
                "file_mib",
                "finished",
                "t_min_s",
                "client_server_s",
                "p50_s",
                "p90_s",
                "last_s",
                "last_over_t_min",
                "seed_uploaded_mib",
                "total_uploaded_mib",
                "wasted_mib",
            ]);
            let last = r.last_completion().unwrap_or(f64::NAN);
            t.row(vec![
                leechers.to_string(),
                file_mib.to_string(),
                finished.to_string(),
                format!("{:.1}", r.t_min),
                format!("{:.1}", r.client_server),
                format!("{:.1}", done.percentile(50.0)),
                format!("{:.1}", done.percentile(90.0)),
                format!("{last:.1}"),
                format!("{:.3}", last / r.t_min),
                format!("{:.1}", r.uploaded_by_seed as f64 / 1048576.0),
                format!("{:.1}", r.uploaded_total as f64 / 1048576.0),
                format!("{:.1}", r.wasted as f64 / 1048576.0),
            ]);
            print!("{t}");
            println!(
                "events {}  wall {:.1}s  hash failures {}  endpoints banned {}  peak RSS {}",
                r.events,
                wall.elapsed().as_secs_f64(),
                r.hash_failures,
                r.bans,
                peak_rss().map_or("?".into(), |kb| format!("{:.0} MiB", kb as f64 / 1024.0))
            );
            save(&out, "swarm", &t);
            let mut av = Table::new(&["t_s", "mean_share_held", "min_copies"]);
            for (x, share, min) in &r.availability {
                av.row(vec![
                    format!("{x:.0}"),
                    format!("{share:.4}"),
                    min.to_string(),
                ]);
            }
            save(&out, "swarm-availability", &av);
            let mut tl = Table::new(&[
                "t_s",
                "seed_util",
                "leecher_util",
                "seed_distinct",
                "seed_copies",
                "empty",
                "done",
                "only_at_seed",
                "unchoked_interested",
                "interested_in_me",
                "serving",
                "idle_uplinks",
            ]);
            for row in &r.timeline {
                tl.row(vec![
                    format!("{:.0}", row.t),
                    format!("{:.2}", row.seed_util),
                    format!("{:.2}", row.leecher_util),
                    row.seed_distinct.to_string(),
                    format!("{:.2}", row.seed_copies),
                    row.empty.to_string(),
                    row.done.to_string(),
                    row.pieces_only_at_seed.to_string(),
                    format!("{:.1}", row.mean_unchoked_interested),
                    format!("{:.1}", row.mean_interested_in_me),
                    format!("{:.1}", row.mean_serving),
                    row.idle_uplinks.to_string(),
                ]);
            }
            save(&out, "swarm-timeline", &tl);
            let mut finished_curve: Vec<(f64, f64)> = vec![(0.0, 0.0)];
            for i in 0..=100 {
                if finished > 0 {
                    let q = f64::from(i);
                    finished_curve.push((
                        done.percentile(q.max(0.5)),
                        q / 100.0 * finished as f64 / leechers as f64,
                    ));
                }
            }
            plot(
                &out,
                "swarm",
                &Chart {
                    title: &format!("{leechers} leechers, {file_mib} MiB, seeder {seed_up} MB/s, peers {up}/{down} MB/s"),
                    x_label: "virtual time (s)",
                    y_label: "share",
                    references: vec![],
                },
                &[
                    Series::new("pieces held (mean)", r.availability.iter().map(|a| (a.0, a.1)).collect()),
                    Series::new("leechers finished", finished_curve),
                    Series::new(format!("T_min = {:.1} s", r.t_min), vec![(r.t_min, 0.0), (r.t_min, 1.0)]),
                ],
            );
        }
    }
}

use simulations::dht_sim::world::TableSummary;

fn lookup_params(a: &LookupArgs) -> dht_lookup::LookupParams {
    let mut p = dht_lookup::LookupParams::new(world(&a.common));
    p.warmup = Duration::from_secs(a.warmup);
    p.duration = Duration::from_secs(a.common.duration);
    p.lookups = a.lookups;
    p.progress = true;
    p
}

fn lookup_table(rows: &[(&str, &dht_lookup::LookupReport)], a: &LookupArgs) -> Table {
    let mut t = Table::new(&[
        "attackers",
        "nodes",
        "loss",
        "nat",
        "churn",
        "searches",
        "success",
        "first_p50_ms",
        "first_p90_ms",
        "first_p99_ms",
        "found_p50_ms",
        "found_p90_ms",
        "found_p99_ms",
        "done_p50_ms",
        "done_p90_ms",
        "done_p99_ms",
        "queries_p50",
        "queries_mean",
        "hops_p50",
        "hops_mean",
        "hops_max",
        "rtt_p50_ms",
    ]);
    for (label, r) in rows {
        let (mut first, mut found, mut done, mut q, mut hops) = (
            r.time_to_first_peer(),
            r.time_to_found(),
            r.time_to_done(),
            r.queries(),
            r.hops(),
        );
        t.row(vec![
            label.to_string(),
            a.common.nodes.to_string(),
            format!("{}", a.common.loss),
            format!("{}", a.common.nat),
            a.common.churn.to_string(),
            r.measured().count().to_string(),
            format!("{:.4}", r.success_rate()),
            ms(first.percentile(50.0)),
            ms(first.percentile(90.0)),
            ms(first.percentile(99.0)),
            ms(found.percentile(50.0)),
            ms(found.percentile(90.0)),
            ms(found.percentile(99.0)),
            ms(done.percentile(50.0)),
            ms(done.percentile(90.0)),
            ms(done.percentile(99.0)),
            format!("{:.0}", q.percentile(50.0)),
            format!("{:.1}", q.mean()),
            format!("{:.0}", hops.percentile(50.0)),
            format!("{:.2}", hops.mean()),
            format!("{:.0}", hops.percentile(100.0)),
            format!("{:.0}", r.median_rtt.as_secs_f64() * 1e3),
        ]);
    }
    t
}

fn lookup_footer(r: &dht_lookup::LookupReport, wall: Instant) -> String {
    format!(
        "datagrams {}  lost {}  nat-dropped {}  events {} (wake-ups {}, stale {})  joins {}  leaves {}  online at end {}  wall {:.1}s\nlookups/queries by kind: {}",
        r.datagrams,
        r.lost,
        r.nat_dropped,
        r.events,
        r.wakeups,
        r.stale_wakeups,
        r.joins,
        r.leaves,
        r.online_at_end,
        wall.elapsed().as_secs_f64(),
        r.lookup_costs.summary()
    )
}

/// Empirical CDF in milliseconds over `total` searches (failures keep it below 1).
fn cdf(mut s: Samples, total: usize) -> Vec<(f64, f64)> {
    let n = s.len();
    (0..=100)
        .filter(|_| n > 0)
        .map(|i| {
            let p = f64::from(i);
            (
                s.percentile(p.max(0.5)) * 1e3,
                p / 100.0 * n as f64 / total.max(1) as f64,
            )
        })
        .collect()
}

fn engine_bench(c: &Common, interval: f64, wall: Instant) {
    let mut sim: Simulator<Probe, ()> = Simulator::new(
        NetConfig {
            loss: c.loss,
            nat_share: c.nat,
            ..NetConfig::default()
        },
        c.nodes,
        c.seed,
    );
    let peers: Vec<std::net::SocketAddr> = (0..c.nodes)
        .map(|h| std::net::SocketAddr::V4(sim.net.addr(HostId(h as u32))))
        .collect();
    let peers = std::rc::Rc::new(peers);
    for h in 0..c.nodes {
        // Each probe pings 16 fixed peers: enough to spread load, small in memory.
        let mine: Vec<_> = (0..16)
            .map(|i| peers[(h * 7919 + i * 104_729) % peers.len()])
            .collect();
        let now = sim.instant();
        sim.start(
            HostId(h as u32),
            Probe::new(
                now,
                mine,
                Duration::from_secs_f64(interval),
                c.seed ^ h as u64,
            ),
        );
    }
    let setup = wall.elapsed().as_secs_f64();
    let run = Instant::now();
    let mut rtts = Samples::new();
    while let Some(step) = sim.step(SimTime::from_secs(c.duration)) {
        if let simulations::Step::Output(_, _, rtt) = step {
            if rtts.len() < 1_000_000 {
                rtts.push(rtt.as_secs_f64());
            }
        }
    }
    let secs = run.elapsed().as_secs_f64();
    let mut t = Table::new(&[
        "hosts",
        "virtual_s",
        "events",
        "wall_s",
        "events_per_s",
        "datagrams",
        "rtt_p50_ms",
    ]);
    t.row(vec![
        c.nodes.to_string(),
        c.duration.to_string(),
        sim.stats.events.to_string(),
        format!("{secs:.2}"),
        format!("{:.0}", sim.stats.events as f64 / secs),
        sim.net.stats.sent.to_string(),
        ms(rtts.percentile(50.0)),
    ]);
    print!("{t}");
    println!("setup {setup:.2}s");
    save(&c.out, "engine-bench", &t);
}

/// This process's peak resident memory in KiB (VmHWM), where /proc has it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parse_list(s: &str, what: &str) -> Vec<f64> {
    s.split(',')
        .map(|x| {
            x.trim().parse().unwrap_or_else(|_| {
                eprintln!("simulations: error: bad {what} {x:?}");
                std::process::exit(2)
            })
        })
        .collect()
}

fn pct(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{:.3}", x)
    }
}

fn secs(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.2}")
    }
}

fn dht_mutable_main(
    c: &Common,
    warmup: u64,
    update_after: u64,
    readers: usize,
    delays: &str,
    wall: Instant,
) {
    let mut p = dht_mutable::MutableParams::new(world(c));
    p.warmup = Duration::from_secs(warmup);
    p.update_after = Duration::from_secs(update_after);
    p.readers = readers;
    p.delays = parse_list(delays, "delay");
    let r = dht_mutable::run(&p);
    let mut t = Table::new(&[
        "delay_s",
        "nodes",
        "loss",
        "churn",
        "gets",
        "v2_share",
        "any_share",
        "v2_since_update_p50_s",
        "v2_since_update_p90_s",
        "v2_latency_p50_s",
        "done_p50_s",
        "queries_mean",
    ]);
    let rows = r.rows();
    for row in &rows {
        t.row(vec![
            format!("{}", row.delay),
            c.nodes.to_string(),
            format!("{}", c.loss),
            c.churn.to_string(),
            row.gets.to_string(),
            pct(row.v2),
            pct(row.any),
            secs(row.v2_since_update_p50),
            secs(row.v2_since_update_p90),
            secs(row.v2_latency_p50),
            secs(row.done_p50),
            format!("{:.1}", row.queries_mean),
        ]);
    }
    print!("{t}");
    for put in &r.puts {
        let after = |end: Option<SimTime>| match (put.start, end) {
            (Some(a), Some(b)) => format!("{:.2} s", b.saturating_since(a).as_secs_f64()),
            _ => "-".into(),
        };
        println!(
            "put seq {}: acked {} of {} sent, {} queries, traversal done after {}, puts done after {}",
            put.seq,
            put.acked,
            put.sent,
            put.queries,
            after(put.traversal_done),
            after(put.done)
        );
    }
    for share in [0.9, 0.99, 1.0] {
        match r.reached_by(share) {
            Some(d) => println!(
                "update in >= {:.0}% of {} nodes' gets started {d} s or more after it",
                share * 100.0,
                c.nodes
            ),
            None => println!(
                "update never in >= {:.0}% of gets at the last delay",
                share * 100.0
            ),
        }
    }
    println!(
        "datagrams {}  events {}  joins {}  leaves {}  rtt p50 {:.0} ms  wall {:.1}s\nlookups/queries by kind: {}",
        r.datagrams,
        r.events,
        r.joins,
        r.leaves,
        r.median_rtt.as_secs_f64() * 1e3,
        wall.elapsed().as_secs_f64(),
        r.lookup_costs.summary()
    );
    save(&c.out, "dht-mutable", &t);
    plot(
        &c.out,
        "dht-mutable",
        &Chart {
            title: &format!(
                "Mutable item update, {} nodes{}{}",
                c.nodes,
                if c.churn { ", churn" } else { "" },
                if c.loss > 0.0 {
                    format!(", {}% loss", c.loss * 100.0)
                } else {
                    String::new()
                }
            ),
            x_label: "get started, seconds after the update (log10(1 + s))",
            y_label: "share of gets",
            references: vec![],
        },
        &[
            Series::new(
                "returned version 2",
                rows.iter()
                    .map(|r| ((1.0 + r.delay).log10(), r.v2))
                    .collect(),
            ),
            Series::new(
                "returned any version",
                rows.iter()
                    .map(|r| ((1.0 + r.delay).log10(), r.any))
                    .collect(),
            ),
        ],
    );
}

fn dht_spoof_main(
    a: &LookupArgs,
    shares: &str,
    window: u32,
    delay_ms: u64,
    random_only: bool,
    wall: Instant,
) {
    let mut p = dht_spoof::SpoofParams::new(lookup_params(a));
    p.shares = parse_list(shares, "share");
    p.window = window;
    p.delay = Duration::from_millis(delay_ms);
    p.compare_sequential = !random_only;
    let points = dht_spoof::run(&p);
    let mut t = Table::new(&[
        "tids",
        "spoofers",
        "nodes",
        "loss",
        "churn",
        "searches",
        "asked_spoofer",
        "accepted_forged",
        "steered",
        "steered_found",
        "success",
        "queries_mean",
        "forged_for",
        "forged_sent",
    ]);
    for pt in &points {
        t.row(vec![
            if pt.sequential {
                "sequential-2B"
            } else {
                "random-4B"
            }
            .into(),
            format!("{}", pt.share),
            a.common.nodes.to_string(),
            format!("{}", a.common.loss),
            a.common.churn.to_string(),
            pt.searches.to_string(),
            format!("{:.4}", pt.exposed_share()),
            format!("{:.4}", pt.accepted_share()),
            format!("{:.4}", pt.steered_share()),
            if pt.steered == 0 {
                "-".into()
            } else {
                format!("{:.3}", pt.steered_found as f64 / pt.steered as f64)
            },
            format!("{:.4}", pt.report.success_rate()),
            format!("{:.1}", pt.report.queries().mean()),
            pt.forged_for.to_string(),
            pt.forged_sent.to_string(),
        ]);
    }
    print!("{t}");
    println!("wall {:.1}s", wall.elapsed().as_secs_f64());
    save(&a.common.out, "dht-spoof", &t);
    let series = |seq: bool, f: fn(&dht_spoof::SpoofPoint) -> f64| {
        points
            .iter()
            .filter(|pt| pt.sequential == seq)
            .map(|pt| (pt.share, f(pt)))
            .collect()
    };
    plot(
        &a.common.out,
        "dht-spoof",
        &Chart {
            title: &format!(
                "Forged replies with guessed transaction ids, {} nodes",
                a.common.nodes
            ),
            x_label: "share of spoofing nodes",
            y_label: "share of searches",
            references: vec![],
        },
        &[
            Series::new(
                "accepted a forgery, sequential ids",
                series(true, |pt| pt.accepted_share()),
            ),
            Series::new(
                "accepted a forgery, random ids",
                series(false, |pt| pt.accepted_share()),
            ),
            Series::new(
                "sink among closest, sequential ids",
                series(true, |pt| pt.steered_share()),
            ),
            Series::new(
                "found the announcer, sequential ids",
                series(true, |pt| pt.report.success_rate()),
            ),
            Series::new(
                "found the announcer, random ids",
                series(false, |pt| pt.report.success_rate()),
            ),
        ],
    );
}
