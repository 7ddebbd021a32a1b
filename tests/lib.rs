//! Shared helpers for the integration tests: the `swarm` binary under test, libtorrent
//! detection (skip with a reason, or fail under `REQUIRE_INTEROP=1`), running Python
//! scripts against libtorrent, loopback addresses, and waiting for a condition with a
//! deadline instead of sleeping.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Path of the `swarm` binary (built in this package from the same code). A macro because
/// cargo only tells integration tests, not this library, where the binary is.
#[macro_export]
macro_rules! swarm_bin {
    () => {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_swarm-under-test"))
    };
}

/// A `Command` for the `swarm` binary: `swarm_command(swarm_bin!())`, stdin closed.
pub fn swarm_command(bin: PathBuf) -> Command {
    let mut c = Command::new(bin);
    c.stdin(Stdio::null());
    c
}

/// Debian's python, where `python3-libtorrent` is importable (the pyenv one on PATH is not).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// True when `REQUIRE_INTEROP=1`: missing interop dependencies fail instead of skip.
pub fn interop_required() -> bool {
    std::env::var("REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// Returns the python interpreter that can `import libtorrent`, or `None` after printing why
/// the test is skipped. Panics under `REQUIRE_INTEROP=1` when libtorrent is missing.
pub fn libtorrent_python(test: &str) -> Option<&'static str> {
    let ok = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(SYSTEM_PYTHON);
    }
    let reason = format!(
        "{test}: skipped: python3-libtorrent is not importable by {SYSTEM_PYTHON} \
         (apt-get install -y python3-libtorrent)"
    );
    if interop_required() {
        panic!("{reason}, and REQUIRE_INTEROP=1 requires it");
    }
    eprintln!("{reason}");
    None
}

/// Skips the calling test (returns early) when libtorrent is missing; see
/// [`libtorrent_python`].
#[macro_export]
macro_rules! require_libtorrent {
    () => {
        match $crate::libtorrent_python(module_path!()) {
            Some(p) => p,
            None => return,
        }
    };
}

/// Runs a Python script with the given interpreter and arguments, with a time limit, and
/// returns its output. Panics with the script's stderr if it fails or runs too long.
pub fn run_python(python: &str, script: &str, args: &[&str], limit: Duration) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("script.py");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .expect("write script");
    let child = Command::new(python)
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let out = wait_with_limit(child, limit);
    if !out.status.success() {
        panic!(
            "python script failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Waits for a child with a deadline; kills it and panics when the deadline passes.
pub fn wait_with_limit(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("wait_with_output"),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait_with_output");
                panic!(
                    "process ran longer than {limit:?}:\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Polls `cond` every 20 ms until it returns true or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(limit, Duration::from_millis(20), cond)
}

/// Polls `cond` every `interval` (for checks that run a process) until it returns true or
/// `limit` passes; returns whether it held.
pub fn wait_until_every(
    limit: Duration,
    interval: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// A fresh loopback address 127.0.x.y for this test process, so nodes can each bind their
/// own IP. Spread by process id so concurrently running test binaries rarely collide.
pub fn next_loopback_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = (std::process::id() % 200) * 256;
    let v = base + n % (256 * 50) + 2;
    Ipv4Addr::new(127, ((v >> 8) % 250 + 1) as u8, (v & 0xff) as u8, 1)
}

/// A free UDP+TCP port on `ip` (bound then released; the caller binds it right after).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind((ip, 0)).expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// A free socket address on a fresh loopback IP.
pub fn free_addr() -> SocketAddr {
    let ip = next_loopback_ip();
    SocketAddr::from((ip, free_port(ip)))
}

/// Deterministic pseudo-random content of `len` bytes (xorshift), for test payloads.
pub fn test_payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` to `dir/name`, creating parent directories.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("create dirs");
    }
    std::fs::write(&p, data).expect("write file");
    p
}

/// Kills the child process when dropped, so a failing test leaves nothing running.
pub struct Reaper(pub std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DHT node in the test process, standing in for `swarm bootstrap`: the only bootstrap
/// node of a private loopback DHT (it stores announces).
pub struct InProcessBootstrap {
    pub addr: SocketAddr,
    _node: dht::Node,
    _rt: tokio::runtime::Runtime,
}

impl InProcessBootstrap {
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ip = next_loopback_ip();
        let node = rt.block_on(async {
            dht::Node::bind(dht::NodeConfig::new(
                SocketAddr::new(ip.into(), 0),
                dht::Config::loopback(vec![]),
            ))
            .await
            .expect("bind bootstrap node")
        });
        InProcessBootstrap {
            addr: node.local_addr(),
            _node: node,
            _rt: rt,
        }
    }
}

/// Path of `lt_peer.py`, the command-line libtorrent peer.
pub const LT_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lt_peer.py");

/// Starts `lt_peer.py ARGS` with `python`; returns the process and its stdout lines.
pub fn spawn_lt_peer(python: &str, args: &[String]) -> (Reaper, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(python);
    cmd.arg(LT_PEER)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    spawn_with_lines(cmd)
}

/// Waits for a line containing `needle`; panics with the last lines seen after `limit`.
pub fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let tail: Vec<_> = seen.iter().rev().take(10).rev().collect();
    panic!("no line with {needle:?} within {limit:?}; last lines: {tail:#?}");
}

/// A network namespace of this test process with only `lo` (up): clients that bind 0.0.0.0
/// or know internet routers run in it, and nothing they send can leave it. Deleted when
/// dropped; declare it before the processes in it so that they are killed first.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `swarm-TAG-PID-N`; the error says why (not root, no `ip`, ...).
    pub fn create(tag: &str) -> Result<NetNs, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("swarm-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        // The guard exists from here on, so a failure below still deletes the namespace.
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace, stdin closed. `ip netns exec`
    /// execs the program, so killing the child kills the program itself.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        c
    }
}

impl NetNs {
    /// Makes `NAME` resolve to 127.0.0.1 inside the namespace (`ip netns exec` mounts
    /// `/etc/netns/NS/hosts` over `/etc/hosts`): clients whose DHT routers are built in
    /// then bootstrap from our node on 127.0.0.1.
    pub fn resolve_to_loopback(&self, names: &[&str]) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        let hosts = format!("127.0.0.1 localhost {}\n::1 localhost\n", names.join(" "));
        std::fs::write(dir.join("hosts"), hosts).expect("write /etc/netns/NS/hosts");
    }

    fn etc_dir(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    /// Starts `swarm bootstrap` (the binary `bin`) on 127.0.0.1:`port` in the namespace as
    /// the only DHT node; returns once it listens.
    pub fn start_bootstrap(&self, bin: PathBuf, port: u16, state: &Path) -> Reaper {
        let mut cmd = self.command(bin);
        cmd.args([
            "bootstrap",
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--state-dir")
        .arg(state)
        .stderr(Stdio::null());
        let (boot, lines) = spawn_with_lines(cmd);
        wait_line(&lines, "listening on", Duration::from_secs(30));
        boot
    }

    /// `swarm ARGS` (the binary `bin`) in the namespace on 127.0.0.1:`port` with `bootstrap`
    /// as its only DHT node, its state in `state` and its log (with every dropped peer and
    /// why) in `log`.
    pub fn swarm<S: AsRef<std::ffi::OsStr>>(
        &self,
        bin: PathBuf,
        args: &[S],
        port: u16,
        bootstrap: &str,
        state: &Path,
        log: &Path,
    ) -> Command {
        let mut cmd = self.command(bin);
        cmd.args(args)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--bootstrap", bootstrap, "--state-dir"])
            .arg(state)
            .env("RUST_LOG", "info,wire::session=debug")
            .env("NO_COLOR", "1")
            .stderr(Stdio::from(std::fs::File::create(log).expect("log file")));
        cmd
    }

    /// `swarm get MAGNET` (see [`NetNs::swarm`]) writing to `dir/out`, with its state in
    /// `dir/get-state` and its log in `dir/get.log`; stdout discarded.
    pub fn swarm_get(
        &self,
        bin: PathBuf,
        magnet: &str,
        port: u16,
        bootstrap: &str,
        dir: &Path,
    ) -> Command {
        let out = dir.join("out");
        let args = [
            std::ffi::OsStr::new("get"),
            std::ffi::OsStr::new(magnet),
            std::ffi::OsStr::new("-o"),
            out.as_os_str(),
        ];
        let state = dir.join("get-state");
        let log = dir.join("get.log");
        let mut cmd = self.swarm(bin, &args, port, bootstrap, &state, &log);
        cmd.stdout(Stdio::null());
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// Waits for `child` to exit within `limit`; on timeout kills it and panics with `logs()`.
pub fn wait_exit(
    mut child: Reaper,
    limit: Duration,
    logs: impl Fn() -> String,
) -> std::process::ExitStatus {
    let mut status = None;
    let done = wait_until(limit, || {
        status = child.0.try_wait().expect("try_wait");
        status.is_some()
    });
    assert!(done, "still running after {limit:?}:\n{}", logs());
    status.expect("exited")
}

/// Runs `ip ARGS` and returns an error with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A fresh namespace for a test of the external client `tool` (checked by running it with
/// `version_arg`), or `None` after printing why the test is skipped. Panics under
/// `REQUIRE_INTEROP=1` when the tool or network namespaces are missing.
pub fn client_netns(test: &str, tool: &str, version_arg: &str, install: &str) -> Option<NetNs> {
    let reason = if tool_runs(tool, version_arg) {
        match NetNs::create(tool) {
            Ok(ns) => return Some(ns),
            Err(e) => format!("{test}: skipped: no network namespace for {tool} ({e})"),
        }
    } else {
        format!("{test}: skipped: {tool} is not installed ({install})")
    };
    if interop_required() {
        panic!("{reason}, and REQUIRE_INTEROP=1 requires it");
    }
    eprintln!("{reason}");
    None
}

/// Whether `tool VERSION_ARG` runs and succeeds (output discarded).
fn tool_runs(tool: &str, version_arg: &str) -> bool {
    Command::new(tool)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when every one of `tools` runs with `--version`; otherwise prints why the test is
/// skipped and returns false. Panics under `REQUIRE_INTEROP=1` when one is missing. For
/// clients that bind only where they are told, so need no network namespace.
pub fn clients_installed(test: &str, tools: &[&str], install: &str) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !tool_runs(t, "--version"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!(
        "{test}: skipped: not installed: {} ({install})",
        missing.join(", ")
    );
    if interop_required() {
        panic!("{reason}, and REQUIRE_INTEROP=1 requires it");
    }
    eprintln!("{reason}");
    false
}

/// Skips the calling test (returns early) unless `transmission-daemon` and
/// `transmission-remote` run. See [`clients_installed`].
#[macro_export]
macro_rules! require_transmission {
    () => {
        if !$crate::clients_installed(
            module_path!(),
            &["transmission-daemon", "transmission-remote"],
            "apt-get install -y transmission-daemon transmission-cli",
        ) {
            return;
        }
    };
}

/// Skips the calling test (returns early) unless `aria2c` runs and a network namespace
/// can be made; evaluates to the namespace. See [`client_netns`].
#[macro_export]
macro_rules! require_aria2 {
    () => {
        match $crate::client_netns(
            module_path!(),
            "aria2c",
            "--version",
            "apt-get install -y aria2",
        ) {
            Some(ns) => ns,
            None => return,
        }
    };
}

/// Skips the calling test (returns early) unless the `webtorrent` command (webtorrent-cli)
/// runs and a network namespace can be made; evaluates to the namespace.
#[macro_export]
macro_rules! require_webtorrent {
    () => {
        match $crate::client_netns(
            module_path!(),
            "webtorrent",
            "--version",
            "npm install -g webtorrent-cli@4.1.0",
        ) {
            Some(ns) => ns,
            None => return,
        }
    };
}

/// Spawns `cmd` with stdout piped; returns the process and its stdout lines.
pub fn spawn_with_lines(mut cmd: Command) -> (Reaper, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Reaper(child), rx)
}

/// A `swarm daemon` process of a test: its API address (`127.0.0.1:PORT`) and peer
/// address, read from the lines it prints at start. Killed when dropped.
pub struct DaemonProc {
    pub api: String,
    pub peers: SocketAddr,
    pub proc: Reaper,
}

impl DaemonProc {
    /// Starts `swarm daemon --api 127.0.0.1:0 --bind IP --port 0 --state-dir STATE -o OUT
    /// EXTRA...` (add `--no-dht` or a loopback `--bootstrap` in `extra`) and waits for it
    /// to print where it listens.
    pub fn start(bin: PathBuf, state: &Path, out: &Path, extra: &[&str]) -> DaemonProc {
        let ip = next_loopback_ip();
        let mut cmd = swarm_command(bin);
        cmd.args(["daemon", "--api", "127.0.0.1:0", "--bind"])
            .arg(ip.to_string())
            .args(["--port", "0", "--state-dir"])
            .arg(state)
            .arg("-o")
            .arg(out)
            .args(extra)
            .stderr(Stdio::inherit());
        let (proc, lines) = spawn_with_lines(cmd);
        let api = wait_line(&lines, "api http://", Duration::from_secs(60));
        let api = api
            .trim()
            .trim_start_matches("api http://")
            .trim_end_matches('/')
            .to_string();
        let peers = wait_line(&lines, "peers ", Duration::from_secs(10));
        let peers = peers
            .trim()
            .trim_start_matches("peers ")
            .parse()
            .expect("peer address");
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        DaemonProc { api, peers, proc }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(self, limit: Duration) -> std::process::ExitStatus {
        self.signal("-TERM", limit)
    }

    /// Sends SIGINT (Ctrl-C) and waits (bounded) for the exit status.
    pub fn interrupt(self, limit: Duration) -> std::process::ExitStatus {
        self.signal("-INT", limit)
    }

    fn signal(mut self, sig: &str, limit: Duration) -> std::process::ExitStatus {
        let pid = self.proc.0.id().to_string();
        let _ = Command::new("kill").args([sig, &pid]).status();
        let mut status = None;
        let done = wait_until(limit, || {
            status = self.proc.0.try_wait().expect("try_wait");
            status.is_some()
        });
        assert!(
            done,
            "swarm daemon still running {limit:?} after kill {sig}"
        );
        status.expect("exited")
    }

    /// `METHOD path` with a body; returns the status and the body parsed as JSON
    /// (`Value::Null` when it is not JSON).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let r = node::http::request(
            &self.api,
            method,
            path,
            &[("Content-Type", ctype)],
            body,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, v)
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call("GET", path, "application/json", b"")
    }

    pub fn post_json(&self, path: &str, v: &serde_json::Value) -> (u16, serde_json::Value) {
        self.call("POST", path, "application/json", v.to_string().as_bytes())
    }

    /// The torrent's JSON from `GET /api/torrents/IH` (panics unless 200).
    pub fn torrent(&self, ih: &str) -> serde_json::Value {
        let (st, v) = self.get(&format!("/api/torrents/{ih}"));
        assert_eq!(st, 200, "GET /api/torrents/{ih}: {v}");
        v
    }

    /// Waits until the torrent's JSON satisfies `cond`; panics with the last JSON after
    /// `limit`.
    pub fn wait_torrent(
        &self,
        ih: &str,
        limit: Duration,
        what: &str,
        mut cond: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let ok = wait_until_every(limit, Duration::from_millis(100), || {
            let (st, v) = self.get(&format!("/api/torrents/{ih}"));
            let hit = st == 200 && cond(&v);
            last = v;
            hit
        });
        assert!(ok, "torrent {ih} not {what} within {limit:?}: {last}");
        last
    }
}

/// Starts `swarm seed PATH --bind IP --port PORT --no-dht --state-dir STATE`; returns it
/// with the magnet link it prints (with an `x.pe` hint to it added) and its address.
pub fn start_seed_no_dht(bin: PathBuf, path: &Path, state: &Path) -> (Reaper, String, SocketAddr) {
    start_seed_no_dht_with(bin, path, state, &[])
}

/// [`start_seed_no_dht`] with more `swarm seed` flags.
pub fn start_seed_no_dht_with(
    bin: PathBuf,
    path: &Path,
    state: &Path,
    extra: &[&str],
) -> (Reaper, String, SocketAddr) {
    let ip = next_loopback_ip();
    let port = free_port(ip);
    let mut cmd = swarm_command(bin);
    cmd.arg("seed")
        .arg(path)
        .args([
            "--bind",
            &ip.to_string(),
            "--port",
            &port.to_string(),
            "--no-dht",
        ])
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .stderr(Stdio::inherit());
    let (proc, lines) = spawn_with_lines(cmd);
    let magnet = wait_line(&lines, "magnet:?", Duration::from_secs(60));
    let addr = SocketAddr::from((ip, port));
    (proc, format!("{}&x.pe={addr}", magnet.trim()), addr)
}
