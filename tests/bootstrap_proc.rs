//! A `swarm bootstrap` process for integration tests: started on a loopback address, its
//! ready line parsed, its stderr collected, killed when dropped. Included with `#[path]` by
//! the tests that need it (bootstrap_cli, dht_loopback, interop_dht).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a bootstrap process may take to print its ready line.
pub const READY_LIMIT: Duration = Duration::from_secs(20);

pub struct BootstrapProc {
    child: Child,
    /// The address from the ready line.
    pub addr: SocketAddr,
    /// The node id (hex) from the ready line.
    pub id: String,
    stderr: Arc<Mutex<String>>,
}

/// Starts `swarm bootstrap --bind IP --port PORT --state-dir DIR EXTRA...` and waits for
/// its ready line. `port` 0 lets the kernel pick one (the ready line tells which).
pub fn start(
    bin: PathBuf,
    ip: IpAddr,
    port: u16,
    state_dir: &Path,
    extra: &[&str],
) -> BootstrapProc {
    let mut cmd = tests::swarm_command(bin);
    cmd.arg("bootstrap")
        .arg("--bind")
        .arg(ip.to_string())
        .arg("--port")
        .arg(port.to_string())
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .env_remove("SWARM_BOOTSTRAP")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn swarm bootstrap");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err = Arc::new(Mutex::new(String::new()));
    let err2 = err.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut e = err2.lock().expect("lock");
            e.push_str(&line);
            e.push('\n');
        }
    });
    let deadline = Instant::now() + READY_LIMIT;
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("listening on ") => break l,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "swarm bootstrap printed no ready line within {READY_LIMIT:?}; stderr:\n{}",
                    err.lock().expect("lock")
                );
            }
        }
    };
    let (addr, id) = parse_ready(&line).unwrap_or_else(|| panic!("bad ready line {line:?}"));
    BootstrapProc {
        child,
        addr,
        id,
        stderr: err,
    }
}

/// Parses `listening on IP:PORT (node id HEX)`.
pub fn parse_ready(line: &str) -> Option<(SocketAddr, String)> {
    let rest = line.strip_prefix("listening on ")?;
    let (addr, rest) = rest.split_once(" (node id ")?;
    let id = rest.strip_suffix(')')?;
    if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((addr.parse().ok()?, id.to_string()))
}

impl BootstrapProc {
    /// Everything the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (what Ctrl-C sends) and waits up to `limit` for the exit.
    pub fn interrupt(&mut self, limit: Duration) -> ExitStatus {
        let ok = std::process::Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -INT failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "swarm bootstrap did not exit within {limit:?} of SIGINT; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BootstrapProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
