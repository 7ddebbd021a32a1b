//! Hashing throughput: raw SHA-1 of the `sha1` crate on one core (SHA-NI is picked at run
//! time by `cpufeatures` when the CPU has it), next to `wire::create` hashing a large,
//! page-cached file with 1 and 2 threads. Creation should run near SHA-1 speed x threads.
//!
//! `CARGO_TARGET_DIR=... cargo bench -p wire --bench hashing`
//! The file size is `HASHING_BENCH_MIB` MiB (default 512).

use criterion::{criterion_group, Criterion, Throughput};
use sha1::{Digest, Sha1};
use std::hint::black_box;
use std::io::Write;
use wire::create::{create_torrent, CreateOptions};

fn sha1_raw(c: &mut Criterion) {
    let buf: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761u32) >> 24) as u8)
        .collect();
    let mut g = c.benchmark_group("sha1");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.sample_size(20);
    g.bench_function("one core, 1 MiB pieces, 16 MiB", |b| {
        b.iter(|| {
            for piece in buf.chunks(1 << 20) {
                black_box(Sha1::digest(piece));
            }
        })
    });
    g.finish();
}

fn create_hashing(c: &mut Criterion) {
    let mib: u64 = std::env::var("HASHING_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let chunk: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761u32) >> 24) as u8)
            .collect();
        for i in 0..mib {
            let mut c = chunk.clone();
            c[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&c).expect("write");
        }
    }
    let mut g = c.benchmark_group("create");
    g.throughput(Throughput::Bytes(mib << 20));
    g.sample_size(10);
    for threads in [1usize, 2] {
        let opts = CreateOptions {
            piece_length: Some(1 << 20),
            threads: Some(threads),
            ..Default::default()
        };
        g.bench_function(
            format!("{mib} MiB file, 1 MiB pieces, {threads} thread(s)"),
            |b| b.iter(|| black_box(create_torrent(&path, &opts, &|_| {}).expect("create"))),
        );
    }
    g.finish();
}

/// Process CPU time (user + system) from /proc/self/stat, in seconds (USER_HZ = 100).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Wall-clock throughput on a shared machine says more about the neighbours than about
/// the code, so this also reports MiB hashed per CPU-second: creation's figure should be
/// close to raw SHA-1's, i.e. the work scales with the cores it gets.
fn cpu_time_report() {
    let mib: u64 = 256;
    let buf: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761u32) >> 24) as u8)
        .collect();
    let (Some(c0), w0) = (cpu_seconds(), std::time::Instant::now()) else {
        return;
    };
    for _ in 0..mib {
        black_box(Sha1::digest(&buf));
    }
    let (c1, w1) = (cpu_seconds().unwrap_or(c0), w0.elapsed().as_secs_f64());
    println!(
        "cpu-time: sha1 raw: {:.0} MiB per CPU-second ({:.0} MiB/s wall)",
        mib as f64 / (c1 - c0).max(0.01),
        mib as f64 / w1
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.bin");
    let data: Vec<u8> = buf
        .iter()
        .cycle()
        .take((mib as usize) << 20)
        .copied()
        .collect();
    std::fs::write(&path, &data).expect("write");
    drop(data);
    for threads in [1usize, 2] {
        let opts = CreateOptions {
            piece_length: Some(1 << 20),
            threads: Some(threads),
            ..Default::default()
        };
        let (c0, w0) = (cpu_seconds().unwrap_or(0.0), std::time::Instant::now());
        black_box(create_torrent(&path, &opts, &|_| {}).expect("create"));
        let (c1, w1) = (cpu_seconds().unwrap_or(c0), w0.elapsed().as_secs_f64());
        println!(
            "cpu-time: create {mib} MiB, {threads} thread(s): {:.0} MiB per CPU-second, \
             {:.0} MiB/s wall, {:.2} CPUs busy",
            mib as f64 / (c1 - c0).max(0.01),
            mib as f64 / w1,
            (c1 - c0) / w1
        );
    }
}

criterion_group!(benches, sha1_raw, create_hashing);

fn main() {
    benches();
    cpu_time_report();
    Criterion::default().configure_from_args().final_summary();
}
