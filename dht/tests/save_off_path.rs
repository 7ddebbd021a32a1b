//! Saving the state and pool happens off the receive path: a save that cannot finish
//! (here: its temporary file is a FIFO nobody reads, as a disk that hangs would be) must
//! not stop the node from answering.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use dht::{Config, Node, NodeConfig};

const PING: &[u8] = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t4:pp001:y1:qe";

#[test]
fn a_hung_save_does_not_stop_answering() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("node.pool");
    // The temporary name `write_atomically` uses for it.
    let tmp = dir
        .path()
        .join(format!("node.pool.tmp{}", std::process::id()));
    let made = std::process::Command::new("mkfifo").arg(&tmp).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut core = Config::loopback(vec![]);
    core.pool_capacity = 1_000;
    let mut cfg = NodeConfig::new("127.0.0.1:0".parse().unwrap(), core);
    cfg.pool_file = Some(pool.clone());
    cfg.save_every = Duration::from_millis(20);
    cfg.rng_seed = Some(1);
    let node = rt.block_on(Node::bind(cfg)).unwrap();
    let addr = node.local_addr();

    // Saves start every 20 ms and hang on the FIFO; pings keep being answered for a
    // whole second meanwhile (with saves on the receive path, they stop within 20 ms).
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut sent, mut answered) = (0, 0);
    let until = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        sock.send_to(PING, addr).unwrap();
        sent += 1;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            answered += usize::from(buf[..n].windows(4).any(|w| w == b"pp00"));
        }
    }
    // Unblock the writer (whatever happened): keep a reader on the FIFO, so this and any
    // later save can open it, until the node has shut down.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            use std::os::unix::fs::OpenOptionsExt;
            let mut fifo = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&tmp)
                .unwrap();
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if !matches!(fifo.read(&mut buf), Ok(n) if n > 0) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    // A few may meet the per-IP inbound limit (thousands of pings a second from one
    // address); a node stuck in a save answers none after the first 20 ms.
    assert!(sent >= 10, "only {sent} pings in a second");
    assert!(
        answered * 10 >= sent * 9,
        "the node stopped answering while a save hung: {answered} of {sent}"
    );
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), node.shutdown())
            .await
            .expect("shutdown hung")
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
}
