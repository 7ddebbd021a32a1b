//! 256 MiB over uTP on loopback through the tokio driver (two `UtpSocket`s in one
//! process, a current-thread runtime each on its own thread), every byte checked.
//! Prints MiB/s and the process CPU time per GiB.
//!
//! Run: cargo bench -p utp --bench loopback   (UTP_MIB to change the size)

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux); 0 elsewhere.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let mib: usize = std::env::var("UTP_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let total = mib << 20;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done_rx = done.clone();
    let receiver = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let s = utp::UtpSocket::bind("127.0.0.1:0".parse().unwrap(), utp::Config::default(), 2)
                .await
                .unwrap();
            addr_tx.send(s.local_addr()).unwrap();
            let (mut c, _) = s.accept().await.unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0usize;
            let mut sum = 0u64;
            while got < total {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "early end at {got}");
                for (i, b) in buf[..n].iter().enumerate() {
                    sum = sum.wrapping_add(u64::from(*b) ^ ((got + i) as u64 & 0xff));
                }
                got += n;
            }
            done_rx.store(true, std::sync::atomic::Ordering::Release);
            (sum, Instant::now())
        })
    });
    let to = addr_rx.recv().unwrap();
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sent_sum = rt.block_on(async move {
        let s = utp::UtpSocket::bind("127.0.0.1:0".parse().unwrap(), utp::Config::default(), 1)
            .await
            .unwrap();
        let mut c = s.connect(to).await.unwrap();
        let chunk: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let mut sent = 0usize;
        let mut sum = 0u64;
        while sent < total {
            let n = chunk.len().min(total - sent);
            for (i, b) in chunk[..n].iter().enumerate() {
                sum = sum.wrapping_add(u64::from(*b) ^ ((sent + i) as u64 & 0xff));
            }
            c.write_all(&chunk[..n]).await.unwrap();
            sent += n;
        }
        c.shutdown().await.unwrap();
        // Keep the socket (and its retransmissions) until the receiver has it all.
        for _ in 0..60_000 {
            if done.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        sum
    });
    let (got_sum, finished) = receiver.join().unwrap();
    let secs = (finished - start).as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(sent_sum, got_sum, "the bytes differ");
    println!(
        "uTP loopback: {mib} MiB in {secs:.2} s = {:.0} MiB/s; process CPU {cpu:.2} s ({:.2} CPU-s per GiB, both ends)",
        mib as f64 / secs,
        cpu / (mib as f64 / 1024.0)
    );
}
