//! Peer wire codec and storage throughput.
//!
//! `CARGO_TARGET_DIR=... cargo bench -p wire --bench codec`
//!
//! - decoding a stream of 16 KiB `piece` frames (zero-copy payloads), fed in 64 KiB reads
//!   as a socket would deliver them;
//! - encoding `piece` headers (the zero-copy send path) and small control messages;
//! - `Storage::write_piece` (SHA-1 + positioned writes, page cache) and
//!   `Storage::recheck_all` (read + SHA-1 on every core).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha1::{Digest, Sha1};
use wire::peer::{encode_piece_header, Decoder, Message};
use wire::storage::{FileSpec, Storage, StorageLayout, StorageOptions};

const BLOCK: usize = 16 * 1024;

fn decode_pieces(c: &mut Criterion) {
    let blocks = 1024; // 16 MiB of payload
    let data = Bytes::from(vec![0xA5u8; BLOCK]);
    let mut stream = BytesMut::new();
    for i in 0..blocks {
        Message::Piece {
            piece: i / 16,
            offset: (i % 16) * BLOCK as u32,
            data: data.clone(),
        }
        .encode(&mut stream);
    }
    let stream = stream.freeze();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.sample_size(20);
    g.bench_function("decode 16 KiB piece frames, 64 KiB reads", |b| {
        b.iter(|| {
            let mut dec = Decoder::default();
            let mut buf = BytesMut::with_capacity(256 * 1024);
            let mut n = 0;
            for chunk in stream.chunks(64 * 1024) {
                buf.extend_from_slice(chunk);
                while let Some(m) = dec.decode(&mut buf).expect("valid") {
                    black_box(&m);
                    n += 1;
                }
            }
            assert_eq!(n, blocks);
        })
    });
    g.throughput(Throughput::Elements(blocks as u64));
    g.bench_function("encode piece headers", |b| {
        let mut out = BytesMut::with_capacity(13 * blocks as usize);
        b.iter(|| {
            out.clear();
            for i in 0..blocks {
                encode_piece_header(i, 0, BLOCK as u32, &mut out);
            }
            black_box(&out);
        })
    });
    let haves: Vec<u8> = {
        let mut b = BytesMut::new();
        for i in 0..blocks {
            Message::Have { piece: i }.encode(&mut b);
        }
        b.to_vec()
    };
    g.bench_function("decode have messages", |b| {
        b.iter(|| {
            let mut dec = Decoder::default();
            let mut buf = BytesMut::from(&haves[..]);
            while let Some(m) = dec.decode(&mut buf).expect("valid") {
                black_box(m);
            }
        })
    });
    g.finish();
}

fn storage(c: &mut Criterion) {
    let piece_len = 1usize << 20;
    let pieces = 64; // 64 MiB over 4 files
    let stream: Vec<u8> = (0..piece_len * pieces)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    let hashes: Vec<[u8; 20]> = stream
        .chunks(piece_len)
        .map(|p| Sha1::digest(p).into())
        .collect();
    let files: Vec<FileSpec> = (0..4)
        .map(|i| FileSpec {
            path: vec!["bench".into(), format!("f{i}")],
            length: (stream.len() / 4) as u64,
            padding: false,
        })
        .collect();
    let layout = StorageLayout::new(piece_len as u64, files).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let st = Storage::new(dir.path(), layout, hashes, StorageOptions::default()).unwrap();
    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.sample_size(10);
    g.bench_function("write_piece (hash + pwrite), 1 MiB pieces", |b| {
        b.iter(|| {
            for (i, p) in stream.chunks(piece_len).enumerate() {
                assert!(st.write_piece(i as u32, p).unwrap());
            }
        })
    });
    g.bench_function("recheck_all (pread + hash, all cores)", |b| {
        b.iter(|| assert_eq!(st.recheck_all().unwrap(), pieces as u32))
    });
    g.throughput(Throughput::Bytes(BLOCK as u64 * 256));
    g.bench_function("read_block 16 KiB", |b| {
        b.iter(|| {
            for i in 0..256u32 {
                black_box(
                    st.read_block(i % 64, (i % 64) * BLOCK as u32, BLOCK as u32)
                        .unwrap(),
                );
            }
        })
    });
    g.finish();
}

criterion_group!(benches, decode_pieces, storage);
criterion_main!(benches);
