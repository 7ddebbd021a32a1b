//! Interop with libtorrent's uTP over loopback: the endpoint, driven by a minimal blocking
//! UDP loop, carries a BitTorrent peer connection to and from a real libtorrent 2.0 session
//! (uTP only, TCP off), 1 MiB each way:
//! - we dial a libtorrent seeder and download every piece (our initiator side, bulk data
//!   towards us);
//! - a libtorrent leecher dials us and downloads every piece from us, checking each hash
//!   (our acceptor side, bulk data from us under our congestion control).
//!
//! Needs Debian's python3-libtorrent (`/usr/bin/python3`); skips without it unless
//! REQUIRE_INTEROP=1. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use utp::{Config, ConnId, Endpoint, Error, Event};

const PIECE: usize = 16 * 1024;
const SIZE: usize = 1024 * 1024;
const PYTHON: &str = "/usr/bin/python3";

fn content() -> Vec<u8> {
    (0..SIZE).map(|i| ((i * 7) + (i / 1000)) as u8).collect()
}

fn libtorrent_available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("REQUIRE_INTEROP").as_deref() != Ok("1"),
            "REQUIRE_INTEROP=1 but python3-libtorrent is missing"
        );
        eprintln!("skipped: python3-libtorrent is not installed");
    }
    ok
}

/// The libtorrent process and the lines it prints.
struct Peer {
    child: Child,
    lines: Receiver<String>,
}

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lt_utp_peer.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the libtorrent peer");
        let stdout = child.stdout.take().expect("its stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines }
    }

    /// Waits for `READY <port> <info-hash>`.
    fn ready(&self) -> (u16, [u8; 20]) {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("libtorrent said READY");
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.first(), Some(&"READY"), "{line}");
        let port = parts[1].parse().expect("a port");
        let mut ih = [0u8; 20];
        for (i, b) in ih.iter_mut().enumerate() {
            *b = u8::from_str_radix(&parts[2][2 * i..2 * i + 2], 16).expect("hex");
        }
        (port, ih)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // it exits when its stdin closes
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking driver: one socket, one endpoint, the real clock.
struct Driver {
    sock: UdpSocket,
    ep: Endpoint,
    buf: Vec<u8>,
    undecodable: Vec<String>,
}

impl Driver {
    fn new() -> Driver {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        Driver {
            sock,
            ep: Endpoint::new(Config::default(), 42),
            buf: vec![0u8; 65536],
            undecodable: Vec::new(),
        }
    }

    fn port(&self) -> u16 {
        self.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Sends what is queued, waits for one datagram or the next timer (at most 5 ms), and
    /// returns the events that produced.
    fn pump(&mut self) -> Vec<Event> {
        while let Some(t) = self.ep.poll_transmit() {
            let _ = self.sock.send_to(&t.data, t.to);
        }
        let now = Instant::now();
        let wait = self
            .ep
            .poll_timeout()
            .map_or(Duration::from_millis(5), |t| {
                t.saturating_duration_since(now)
            })
            .clamp(Duration::from_micros(100), Duration::from_millis(5));
        let _ = self.sock.set_read_timeout(Some(wait));
        if let Ok((n, from)) = self.sock.recv_from(&mut self.buf) {
            if let Err(e) = utp::packet::decode(&self.buf[..n]) {
                // Every datagram libtorrent sends must be one we understand.
                self.undecodable
                    .push(format!("{e}: {:02x?}", &self.buf[..n.min(40)]));
            }
            self.ep
                .handle_datagram(Instant::now(), from, &self.buf[..n]);
        }
        let now = Instant::now();
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
        while let Some(t) = self.ep.poll_transmit() {
            let _ = self.sock.send_to(&t.data, t.to);
        }
        std::iter::from_fn(|| self.ep.poll_event()).collect()
    }

    fn write_all(&mut self, conn: ConnId, mut data: &[u8], deadline: Instant) {
        while !data.is_empty() {
            match self.ep.write(Instant::now(), conn, data) {
                Ok(n) => data = &data[n..],
                Err(Error::WouldBlock) => {
                    assert!(Instant::now() < deadline, "write timed out");
                    self.pump();
                }
                Err(e) => panic!("write: {e}"),
            }
        }
    }

    /// Appends whatever is readable to `into`; false at the end of the stream.
    fn read_into(&mut self, conn: ConnId, into: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 16384];
        loop {
            match self.ep.read(Instant::now(), conn, &mut buf) {
                Ok(0) => return false,
                Ok(n) => into.extend_from_slice(&buf[..n]),
                Err(_) => return true,
            }
        }
    }
}

fn handshake(info_hash: &[u8; 20]) -> Vec<u8> {
    let mut h = vec![19u8];
    h.extend_from_slice(b"BitTorrent protocol");
    h.extend_from_slice(&[0u8; 8]);
    h.extend_from_slice(info_hash);
    h.extend_from_slice(b"-SW0001-utpinterop01");
    h
}

fn message(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    m.push(id);
    m.extend_from_slice(payload);
    m
}

/// Takes the complete length-prefixed messages off the front of `buf`: (id, payload);
/// keepalives come back as id 255.
fn complete_messages(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(len) = buf
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    {
        if buf.len() < 4 + len {
            break;
        }
        let msg: Vec<u8> = buf.drain(..4 + len).skip(4).collect();
        out.push(match msg.split_first() {
            Some((id, payload)) => (*id, payload.to_vec()),
            None => (255, Vec::new()),
        });
    }
    out
}

fn check_handshake(buf: &mut Vec<u8>, info_hash: &[u8; 20]) -> bool {
    if buf.len() < 68 {
        return false;
    }
    assert_eq!(&buf[..20], b"\x13BitTorrent protocol");
    assert_eq!(
        &buf[28..48],
        info_hash,
        "libtorrent answered for our torrent"
    );
    buf.drain(..68);
    true
}

#[test]
fn we_download_from_a_libtorrent_seeder_over_utp() {
    if !libtorrent_available() {
        return;
    }
    let peer = Peer::spawn(&["seed", "127.0.0.1"]);
    let (port, info_hash) = peer.ready();
    let mut d = Driver::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    let conn = d.ep.connect(Instant::now(), addr).expect("connect");

    let want = content();
    let mut got = vec![0u8; SIZE];
    let mut blocks = 0;
    let (mut inbox, mut shook, mut requested) = (Vec::new(), false, false);
    let mut connected = false;
    while blocks < SIZE / PIECE {
        assert!(Instant::now() < deadline, "timed out with {blocks} blocks");
        for ev in d.pump() {
            match ev {
                Event::Connected(c) if c == conn => {
                    connected = true;
                    d.write_all(conn, &handshake(&info_hash), deadline);
                }
                Event::Readable(c) if c == conn => {
                    let open = d.read_into(conn, &mut inbox);
                    assert!(
                        open,
                        "libtorrent closed after {blocks} blocks, {:?} in",
                        started.elapsed()
                    );
                }
                Event::Closed { reason, .. } => panic!("closed: {reason:?}"),
                _ => {}
            }
        }
        if connected && !shook && check_handshake(&mut inbox, &info_hash) {
            shook = true;
            d.write_all(conn, &message(2, &[]), deadline); // interested
        }
        let messages = if shook {
            complete_messages(&mut inbox)
        } else {
            Vec::new()
        };
        for (id, payload) in messages {
            match id {
                1 if !requested => {
                    // Unchoked: ask for every piece at once.
                    requested = true;
                    let mut reqs = Vec::new();
                    for index in 0..(SIZE / PIECE) as u32 {
                        let mut p = index.to_be_bytes().to_vec();
                        p.extend_from_slice(&0u32.to_be_bytes());
                        p.extend_from_slice(&(PIECE as u32).to_be_bytes());
                        reqs.extend(message(6, &p));
                    }
                    d.write_all(conn, &reqs, deadline);
                }
                7 => {
                    let index = u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize;
                    let begin = u32::from_be_bytes(payload[4..8].try_into().unwrap()) as usize;
                    let block = &payload[8..];
                    let at = index * PIECE + begin;
                    got[at..at + block.len()].copy_from_slice(block);
                    blocks += 1;
                }
                _ => {}
            }
        }
    }
    assert!(got == want, "the bytes libtorrent sent are the file's");
    assert_eq!(d.undecodable, Vec::<String>::new());
    eprintln!(
        "downloaded 1 MiB from libtorrent over uTP, srtt {:?}, cwnd {:?}",
        d.ep.srtt(conn),
        d.ep.congestion_window(conn)
    );
    let _ = d.ep.reset(Instant::now(), conn);
    d.pump();
}

#[test]
fn a_libtorrent_leecher_downloads_from_us_over_utp() {
    if !libtorrent_available() {
        return;
    }
    let mut d = Driver::new();
    let peer_arg = format!("127.0.0.1:{}", d.port());
    let peer = Peer::spawn(&["leech", "127.0.0.1", &peer_arg]);
    let (_, info_hash) = peer.ready();
    let deadline = Instant::now() + Duration::from_secs(40);
    let data = content();

    let mut conn = None;
    let (mut inbox, mut shook, mut served) = (Vec::new(), false, 0usize);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out: connection {conn:?}, handshake {shook}, {served} blocks served, {:?}",
            d.ep.stats()
        );
        if let Ok(line) = peer.lines.try_recv() {
            assert_eq!(line, "COMPLETE");
            break;
        }
        for ev in d.pump() {
            match ev {
                Event::Incoming { conn: c, .. } => conn = Some(c),
                Event::Readable(c) if Some(c) == conn => {
                    d.read_into(c, &mut inbox);
                }
                Event::Closed { reason, .. } => panic!("closed: {reason:?}"),
                _ => {}
            }
        }
        let Some(c) = conn else { continue };
        if !shook && check_handshake(&mut inbox, &info_hash) {
            shook = true;
            let mut hello = handshake(&info_hash);
            hello.extend(message(5, &[0xff; SIZE / PIECE / 8])); // we have every piece
            d.write_all(c, &hello, deadline);
        }
        let messages = if shook {
            complete_messages(&mut inbox)
        } else {
            Vec::new()
        };
        for (id, payload) in messages {
            match id {
                2 => d.write_all(c, &message(1, &[]), deadline), // interested: unchoke
                6 => {
                    let field = |i: usize| {
                        u32::from_be_bytes(payload[i..i + 4].try_into().unwrap()) as usize
                    };
                    let (index, begin, len) = (field(0), field(4), field(8));
                    let at = index * PIECE + begin;
                    let mut p = payload[..8].to_vec();
                    p.extend_from_slice(&data[at..at + len]);
                    d.write_all(c, &message(7, &p), deadline);
                    served += 1;
                }
                _ => {}
            }
        }
    }
    let c = conn.expect("libtorrent connected");
    assert_eq!(d.undecodable, Vec::<String>::new());
    eprintln!(
        "libtorrent downloaded 1 MiB from us over uTP ({served} blocks), srtt {:?}, cwnd {:?}",
        d.ep.srtt(c),
        d.ep.congestion_window(c)
    );
}
