//! The codec, the extension messages and storage against a real libtorrent (2.0, from
//! Debian's python3-libtorrent) on loopback, with blocking sockets and no engine: these
//! tests check the bytes, not the strategy.
//!
//! 1. We leech from a libtorrent seeder knowing only the info-hash: BEP 10 handshake,
//!    ut_metadata fetch through `MetadataFetcher`, then every block, verified by `Storage`.
//! 2. A libtorrent leecher that knows only the info-hash fetches metadata and data from us.
//!
//! Skipped (with a message) when libtorrent is not importable, unless REQUIRE_INTEROP=1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use wire::extension::{
    ExtendedHandshake, FetchEvent, FetcherConfig, MetadataFetcher, MetadataMessage, MetadataServer,
    Verdict, OUR_UT_METADATA_ID, UT_METADATA,
};
use wire::infohash::InfoHash;
use wire::metainfo::Info;
use wire::peer::{Block, Decoder, Handshake, Message, PeerId, Reserved};
use wire::storage::{Storage, StorageLayout, StorageOptions};

const PYTHON: &str = "/usr/bin/python3";
const LIMIT: Duration = Duration::from_secs(60);

fn libtorrent_available(test: &str) -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("REQUIRE_INTEROP").as_deref() != Ok("1"),
            "REQUIRE_INTEROP=1 but libtorrent is not importable by {PYTHON}"
        );
        eprintln!("{test}: skipped, python3-libtorrent not installed");
    }
    ok
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lt_wire_peer.py")
}

/// A child process killed on drop, with its stdout lines on a channel.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new(PYTHON)
            .arg(script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines }
    }

    /// The next line containing `needle`, within the deadline.
    fn wait_for(&self, needle: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => eprintln!("libtorrent: {l}"),
                Err(e) => panic!("waiting for {needle:?} from libtorrent: {e}"),
            }
        }
    }

    fn saw(&self, needle: &str) -> bool {
        while let Ok(l) = self.lines.try_recv() {
            if l.contains(needle) {
                return true;
            }
            eprintln!("libtorrent: {l}");
        }
        false
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_u64(line: &str, key: &str) -> u64 {
    let at = line.find(&format!("\"{key}\": ")).expect("key") + key.len() + 4;
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("number")
}

/// Deterministic test bytes.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes a small multi-file tree under `dir/t` and has libtorrent make a v1 torrent.
fn make_torrent(dir: &Path) -> (PathBuf, Bytes) {
    let t = dir.join("seed/t");
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::write(t.join("a.bin"), payload(100_000, 1)).unwrap();
    std::fs::write(t.join("sub/b.bin"), payload(70_001, 2)).unwrap();
    std::fs::write(t.join("c.txt"), b"hello from the last file").unwrap();
    let torrent = dir.join("t.torrent");
    let p = Peer::spawn(&[
        "create",
        t.to_str().unwrap(),
        torrent.to_str().unwrap(),
        "32768",
    ]);
    p.wait_for("created", Instant::now() + LIMIT);
    let bytes = std::fs::read(&torrent).unwrap();
    let v = bencode::decode(&bytes).unwrap();
    let info = v.as_dict().unwrap().get_dict(b"info").unwrap().raw.to_vec();
    (dir.join("seed"), Bytes::from(info))
}

/// Storage for a fetched info dictionary, through the real metainfo parser.
fn storage_for(info: &[u8], root: &Path) -> Storage {
    let info = Info::from_bytes(info).expect("libtorrent's info dictionary parses");
    let layout = StorageLayout::from_info(&info).unwrap();
    Storage::new(root, layout, info.pieces.clone(), StorageOptions::default()).unwrap()
}

fn assert_same_files(storage: &Storage, a: &Path, b: &Path) {
    for (i, f) in storage.layout().files().iter().enumerate() {
        if f.padding {
            continue;
        }
        let pa = storage.layout().file_path(a, i);
        let pb = storage.layout().file_path(b, i);
        assert_eq!(
            std::fs::read(&pa).unwrap(),
            std::fs::read(&pb).unwrap(),
            "{}",
            pa.display()
        );
    }
}

/// One blocking peer connection speaking through our codec.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    dec: Decoder,
    deadline: Instant,
}

enum Read1 {
    Msg(Message),
    Idle,
    Closed,
}

impl Conn {
    fn new(stream: TcpStream, deadline: Instant) -> Conn {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: BytesMut::with_capacity(1 << 16),
            dec: Decoder::default(),
            deadline,
        }
    }

    fn send(&mut self, m: &Message) {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        self.stream.write_all(&b).unwrap();
    }

    fn send_ext(&mut self, id: u8, payload: Vec<u8>) {
        self.send(&Message::Extended {
            id,
            payload: payload.into(),
        });
    }

    fn fill(&mut self) -> Option<bool> {
        assert!(
            Instant::now() < self.deadline,
            "interop test ran out of time"
        );
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Some(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Some(false)
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read: {e}"),
        }
    }

    fn try_handshake(&mut self) -> Result<Handshake, String> {
        loop {
            if let Some(h) = Handshake::decode(&mut self.buf).map_err(|e| e.to_string())? {
                return Ok(h);
            }
            if self.fill().is_none() {
                return Err("closed during the handshake".into());
            }
        }
    }

    fn next(&mut self) -> Read1 {
        loop {
            if let Some(m) = self
                .dec
                .decode(&mut self.buf)
                .expect("libtorrent speaks the protocol")
            {
                return Read1::Msg(m);
            }
            match self.fill() {
                None => return Read1::Closed,
                Some(false) => return Read1::Idle,
                Some(true) => {}
            }
        }
    }
}

#[test]
fn we_fetch_metadata_and_data_from_a_libtorrent_seeder() {
    if !libtorrent_available("we_fetch_metadata_and_data_from_a_libtorrent_seeder") {
        return;
    }
    let deadline = Instant::now() + LIMIT;
    let dir = tempfile::tempdir().unwrap();
    let (seed_dir, info) = make_torrent(dir.path());
    let ih = InfoHash::of_info_bytes(&info);
    let seeder = Peer::spawn(&[
        "seed",
        dir.path().join("t.torrent").to_str().unwrap(),
        seed_dir.to_str().unwrap(),
    ]);
    let port = json_u64(&seeder.wait_for("listening", deadline), "port") as u16;

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            stream = Some(s);
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50)); // retry a refused connect
    }
    let mut c = Conn::new(stream.expect("connect to libtorrent"), deadline);
    let ours = Handshake::new(ih, PeerId(*b"-SW0001-interoptest1"));
    let mut b = BytesMut::new();
    ours.encode(&mut b);
    c.stream.write_all(&b).unwrap();
    let theirs = c.try_handshake().unwrap_or_else(|e| {
        std::thread::sleep(Duration::from_millis(300)); // let the seeder's log catch up
        seeder.saw("nothing: print everything");
        panic!("libtorrent's handshake: {e}")
    });
    assert_eq!(theirs.info_hash, ih);
    assert!(
        theirs.reserved.extension_protocol(),
        "libtorrent sets the BEP 10 bit"
    );
    assert!(theirs.reserved.fast(), "libtorrent sets the BEP 6 bit");
    c.send_ext(0, ExtendedHandshake::ours(None, None, None).encode());

    // Phase 1: metadata, knowing only the info-hash.
    let mut fetcher = MetadataFetcher::new(ih, FetcherConfig::default());
    let mut their_ut_metadata = None;
    let mut got_have_all = false;
    let mut unchoked = false;
    let fetched = loop {
        let now = Instant::now();
        match c.next() {
            Read1::Msg(Message::Extended { id: 0, payload }) => {
                let hs = ExtendedHandshake::parse(&payload).unwrap();
                their_ut_metadata = hs.id_of(UT_METADATA);
                assert!(their_ut_metadata.is_some(), "libtorrent offers ut_metadata");
                assert_eq!(hs.metadata_size, Some(info.len() as u64));
                assert_eq!(
                    fetcher.add_peer(now, 1u32, hs.metadata_size),
                    Verdict::Accepted
                );
            }
            Read1::Msg(Message::Extended { id, payload }) if id == OUR_UT_METADATA_ID => {
                let m = MetadataMessage::parse(&payload).unwrap().unwrap();
                assert_eq!(fetcher.on_message(now, 1, &m), Verdict::Accepted);
            }
            Read1::Msg(Message::HaveAll) => got_have_all = true,
            Read1::Msg(Message::Unchoke) => unchoked = true,
            Read1::Msg(_) | Read1::Idle => fetcher.handle_timeout(now),
            Read1::Closed => panic!("libtorrent closed the connection"),
        }
        let mut done = None;
        while let Some(ev) = fetcher.poll_event() {
            match ev {
                FetchEvent::Request { piece, .. } => {
                    let id = their_ut_metadata.unwrap();
                    c.send_ext(id, MetadataMessage::Request { piece }.encode());
                }
                FetchEvent::Complete { info } => done = Some(info),
                FetchEvent::HashMismatch { .. } => panic!("libtorrent's metadata did not verify"),
            }
        }
        if let Some(info) = done {
            break info;
        }
    };
    assert_eq!(fetched, info);

    // Phase 2: every block, pipelined, each piece verified before it is written.
    let out = dir.path().join("leech");
    let storage = storage_for(&fetched, &out);
    c.dec.set_piece_count(storage.layout().piece_count());
    c.send(&Message::Interested);
    let mut wanted: Vec<Block> = Vec::new();
    for p in 0..storage.layout().piece_count() {
        let len = storage.layout().piece_len(p).unwrap();
        for off in (0..len).step_by(16384) {
            wanted.push(Block {
                piece: p,
                offset: off,
                length: (len - off).min(16384),
            });
        }
    }
    wanted.reverse();
    let mut pieces: BTreeMap<u32, (Vec<u8>, u32)> = BTreeMap::new();
    let mut in_flight = 0;
    while !storage.is_complete() {
        while unchoked && in_flight < 32 {
            let Some(r) = wanted.pop() else { break };
            c.send(&Message::Request(r));
            in_flight += 1;
        }
        match c.next() {
            Read1::Msg(Message::Unchoke) => unchoked = true,
            Read1::Msg(Message::HaveAll) => got_have_all = true,
            Read1::Msg(Message::Piece {
                piece,
                offset,
                data,
            }) => {
                in_flight -= 1;
                let plen = storage.layout().piece_len(piece).unwrap();
                let entry = pieces
                    .entry(piece)
                    .or_insert_with(|| (vec![0; plen as usize], 0));
                entry.0[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                entry.1 += data.len() as u32;
                if entry.1 == plen {
                    let (buf, _) = pieces.remove(&piece).unwrap();
                    assert!(
                        storage.write_piece(piece, &buf).unwrap(),
                        "piece {piece} verifies"
                    );
                }
            }
            Read1::Msg(Message::RejectRequest(r)) => panic!("libtorrent rejected {r:?}"),
            Read1::Msg(_) | Read1::Idle => {}
            Read1::Closed => panic!("libtorrent closed the connection"),
        }
    }
    assert!(got_have_all, "a libtorrent seed with Fast sends have-all");
    assert_same_files(&storage, &out, &seed_dir);
}

#[test]
fn a_libtorrent_leecher_fetches_metadata_and_data_from_us() {
    if !libtorrent_available("a_libtorrent_leecher_fetches_metadata_and_data_from_us") {
        return;
    }
    let deadline = Instant::now() + LIMIT;
    let dir = tempfile::tempdir().unwrap();
    let (seed_dir, info) = make_torrent(dir.path());
    let ih = InfoHash::of_info_bytes(&info);
    let storage = storage_for(&info, &seed_dir);
    assert_eq!(
        storage.recheck_all().unwrap(),
        storage.layout().piece_count()
    );
    let server = MetadataServer::new(info.clone());

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let me = listener.local_addr().unwrap().to_string();
    let out = dir.path().join("lt-leech");
    let leecher = Peer::spawn(&["get", &ih.to_hex(), out.to_str().unwrap(), &me]);

    // libtorrent tries an encrypted (MSE) connection first and falls back to plaintext,
    // which is all we speak: the first attempt fails our handshake check, the next one
    // must succeed.
    let mut encrypted_attempts = 0;
    let (mut c, theirs) = loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "libtorrent never connected");
                assert!(!leecher.saw("error"), "libtorrent failed");
                std::thread::sleep(Duration::from_millis(20)); // poll accept until the deadline
                continue;
            }
            Err(e) => panic!("accept: {e}"),
        };
        stream.set_nonblocking(false).unwrap();
        let mut c = Conn::new(stream, deadline);
        match c.try_handshake() {
            Ok(h) => break (c, h),
            Err(e) => {
                encrypted_attempts += 1;
                assert!(
                    encrypted_attempts < 5,
                    "libtorrent never fell back to plaintext: {e}"
                );
            }
        }
    };
    assert_eq!(theirs.info_hash, ih);
    let mut b = BytesMut::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: ih,
        peer_id: PeerId(*b"-SW0001-interopseed1"),
    }
    .encode(&mut b);
    c.stream.write_all(&b).unwrap();
    c.send_ext(
        0,
        ExtendedHandshake::ours(None, Some(server.metadata_size()), None).encode(),
    );
    if theirs.reserved.fast() {
        c.send(&Message::HaveAll);
    } else {
        c.send(&Message::Bitfield(storage.have_bitfield().into()));
    }
    c.dec.set_piece_count(storage.layout().piece_count());

    let mut their_ut_metadata = None;
    let (mut served_blocks, mut served_metadata) = (0u32, 0u32);
    loop {
        if leecher.saw("\"done\"") {
            break;
        }
        match c.next() {
            Read1::Msg(Message::Extended { id: 0, payload }) => {
                their_ut_metadata = ExtendedHandshake::parse(&payload)
                    .unwrap()
                    .id_of(UT_METADATA);
            }
            Read1::Msg(Message::Extended { id, payload }) if id == OUR_UT_METADATA_ID => {
                let m = MetadataMessage::parse(&payload).unwrap().unwrap();
                if let Some(reply) = server.handle(&m) {
                    served_metadata += 1;
                    c.send_ext(their_ut_metadata.expect("ut_metadata id"), reply.encode());
                }
            }
            Read1::Msg(Message::Interested) => c.send(&Message::Unchoke),
            Read1::Msg(Message::Request(r)) => {
                let data = storage.read_block(r.piece, r.offset, r.length).unwrap();
                served_blocks += 1;
                c.send(&Message::Piece {
                    piece: r.piece,
                    offset: r.offset,
                    data,
                });
            }
            Read1::Msg(_) | Read1::Idle => {}
            Read1::Closed => {
                leecher.wait_for("\"done\"", deadline);
                break;
            }
        }
    }
    assert!(served_metadata >= 1, "libtorrent got the metadata from us");
    assert!(
        served_blocks >= storage.layout().piece_count(),
        "and every piece"
    );
    assert_same_files(&storage, &out, &seed_dir);
}
