//! How fast the sans-IO core itself moves bytes: 256 MiB from one endpoint to another over
//! an in-memory link with no delay and no loss, every byte checked, timed on the wall clock.
//! Everything a real driver adds (system calls, the kernel's UDP path) comes on top.
//!
//! Run: CARGO_TARGET_DIR=target-utp cargo bench -p utp --bench throughput
//! (`-- 64` moves 64 MiB instead.)

use std::time::{Duration, Instant};

use utp::testnet::{Link, TestNet};
use utp::{Config, Event};

const PATTERN_LEN: usize = 1 << 16;

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(256);
    let total = mib << 20;
    let pattern: Vec<u8> = (0..PATTERN_LEN + (1 << 16))
        .map(|i| ((i % PATTERN_LEN) * 31 + (i % PATTERN_LEN) / 251) as u8)
        .collect();
    let link = Link {
        delay: Duration::ZERO,
        ..Link::default()
    };
    let mut net = TestNet::symmetric(Config::default(), link, 1);
    let virtual_start = net.now;
    let started = Instant::now();
    let conn = net.a.connect(net.now, net.addr_b).expect("connect");
    let (mut written, mut received, mut done) = (0usize, 0usize, false);
    let mut buf = vec![0u8; 1 << 16];
    let far = net.now + Duration::from_secs(3600);
    while !done {
        while let Some(ev) = net.a.poll_event() {
            if matches!(ev, Event::Connected(_) | Event::Writable(_)) {
                while written < total {
                    let at = written % PATTERN_LEN;
                    let end = (total - written).min(1 << 16);
                    match net.a.write(net.now, conn, &pattern[at..at + end]) {
                        Ok(n) => written += n,
                        Err(_) => break,
                    }
                }
                if written == total {
                    net.a.close(net.now, conn).expect("close");
                }
            }
        }
        while let Some(ev) = net.b.poll_event() {
            if let Event::Readable(c) = ev {
                loop {
                    match net.b.read(net.now, c, &mut buf) {
                        Ok(0) => {
                            done = true;
                            break;
                        }
                        Ok(n) => {
                            let at = received % PATTERN_LEN;
                            assert!(buf[..n] == pattern[at..at + n], "corrupt at {received}");
                            received += n;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        if !done && !net.step(far) {
            break;
        }
    }
    let wall = started.elapsed();
    assert_eq!(received, total, "bytes received");
    let packets = net.stats_ab().sent;
    let acks = net.stats_ba().sent;
    println!(
        "utp core: {mib} MiB in {:.2} s wall = {:.0} MiB/s ({packets} data-direction and {acks} \
         ack-direction datagrams, {:.0} ns per data datagram, virtual time {:?})",
        wall.as_secs_f64(),
        mib as f64 / wall.as_secs_f64(),
        wall.as_nanos() as f64 / packets as f64,
        net.now - virtual_start,
    );
}
