//! How fast the sans-IO core itself moves bytes: a transfer from one endpoint to another
//! over an in-memory link with no delay and no loss, every byte checked, timed on the wall
//! clock, both endpoints and the link on one thread. Everything a real driver adds (system
//! calls, the kernel's UDP path) comes on top.
//!
//! Two runs: 256 MiB on a lone connection, and 64 MiB while 1,000 other connections are
//! open on the same endpoints (timers and demultiplexing must not scale with them).
//!
//! Run: CARGO_TARGET_DIR=target-utp cargo bench -p utp --bench throughput

use std::time::{Duration, Instant};

use utp::testnet::{Link, TestNet};
use utp::{Config, ConnId, Event};

const PATTERN_LEN: usize = 1 << 16;

fn pattern() -> Vec<u8> {
    (0..2 * PATTERN_LEN)
        .map(|i| ((i % PATTERN_LEN) * 31 + (i % PATTERN_LEN) / 251) as u8)
        .collect()
}

/// Opens `count` connections from `a` to `b` and completes them (one byte each, so that
/// `b` sees them), then leaves them idle.
fn open_idle(net: &mut TestNet, count: usize) {
    let far = net.now + Duration::from_secs(3600);
    let conns: Vec<ConnId> = (0..count)
        .map(|_| net.a.connect(net.now, net.addr_b).expect("connect"))
        .collect();
    let mut incoming = 0;
    while incoming < count {
        while let Some(ev) = net.a.poll_event() {
            if let Event::Connected(c) = ev {
                net.a.write(net.now, c, b"x").expect("write");
            }
        }
        while let Some(ev) = net.b.poll_event() {
            if let Event::Incoming { .. } = ev {
                incoming += 1;
            }
        }
        assert!(net.step(far), "idle connections did not all open");
    }
    assert_eq!(conns.len(), count);
}

fn run(mib: usize, idle: usize) {
    let total = mib << 20;
    let pattern = pattern();
    let link = Link {
        delay: Duration::ZERO,
        ..Link::default()
    };
    let config = Config {
        max_pending_incoming: idle + 1,
        max_connections: idle + 2,
        ..Config::default()
    };
    let mut net = TestNet::symmetric(config, link, 1);
    open_idle(&mut net, idle);
    let virtual_start = net.now;
    let sent_before = net.stats_ab().sent;
    let started = Instant::now();
    let conn = net.a.connect(net.now, net.addr_b).expect("connect");
    let (mut written, mut received, mut done) = (0usize, 0usize, false);
    let mut receiver = None;
    let mut buf = vec![0u8; 1 << 16];
    let far = net.now + Duration::from_secs(3600);
    while !done {
        while let Some(ev) = net.a.poll_event() {
            if matches!(ev, Event::Connected(c) | Event::Writable(c) if c == conn) {
                while written < total {
                    let at = written % PATTERN_LEN;
                    let end = (total - written).min(PATTERN_LEN);
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
            match ev {
                Event::Incoming { conn: c, .. } => receiver = Some(c),
                Event::Readable(c) if Some(c) == receiver => loop {
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
                },
                _ => {}
            }
        }
        if !done && !net.step(far) {
            break;
        }
    }
    let wall = started.elapsed();
    assert_eq!(received, total, "bytes received");
    let packets = net.stats_ab().sent - sent_before;
    println!(
        "utp core, {idle} other connections open: {mib} MiB in {:.2} s wall = {:.0} MiB/s \
         ({packets} data-direction datagrams, {:.0} ns each; virtual time {:?})",
        wall.as_secs_f64(),
        mib as f64 / wall.as_secs_f64(),
        wall.as_nanos() as f64 / packets as f64,
        net.now - virtual_start,
    );
}

fn main() {
    run(256, 0);
    run(64, 1000);
}
