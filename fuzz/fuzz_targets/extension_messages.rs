//! Arbitrary payloads into the BEP 10 extension codecs and the magnet parser.
//!
//! The first byte picks the parser (so each one gets its own corpus entries), the rest is
//! the payload. Every parser must not panic, and what parses must survive
//! encode -> parse, up to the normalisations the encoders document (IPv4-mapped IPv6
//! addresses are written as IPv4; PEX lists IPv4 peers before IPv6 ones); after that one
//! step the encoding is a fixed point.
#![no_main]

use std::net::SocketAddr;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wire::extension::{
    ExtendedHandshake, MetadataMessage, MetadataServer, PexMessage, METADATA_BLOCK_LEN,
};
use wire::magnet::Magnet;

fn handshake(p: &[u8]) {
    let Ok(hs) = ExtendedHandshake::parse(p) else {
        return;
    };
    assert!(hs.extensions.len() <= 64);
    assert!(hs.client.as_ref().is_none_or(|c| c.chars().count() <= 64));
    let bytes = hs.encode();
    bencode::decode(&bytes).expect("canonical bencode");
    let again = ExtendedHandshake::parse(&bytes).expect("our encoding parses");
    let mut expect = hs.clone();
    expect.your_ip = expect.your_ip.map(|ip| ip.to_canonical());
    assert_eq!(again, expect);
    assert_eq!(again.encode(), bytes, "fixed point");
}

fn metadata(p: &[u8]) {
    let payload = Bytes::copy_from_slice(p);
    let Ok(Some(m)) = MetadataMessage::parse(&payload) else {
        return;
    };
    let bytes = m.encode();
    assert_eq!(
        MetadataMessage::parse(&Bytes::from(bytes)).as_ref(),
        Ok(&Some(m.clone()))
    );
    // Serving: any requested block of these bytes is in range or rejected.
    if p.is_empty() {
        return;
    }
    let server = MetadataServer::new(payload.clone());
    let piece = match m {
        MetadataMessage::Request { piece }
        | MetadataMessage::Reject { piece }
        | MetadataMessage::Data { piece, .. } => piece,
    };
    match server.respond(piece) {
        MetadataMessage::Data {
            piece: got,
            total_size,
            data,
        } => {
            assert_eq!(got, piece);
            assert_eq!(total_size, p.len() as u64);
            let start = piece as usize * METADATA_BLOCK_LEN;
            assert_eq!(
                &data[..],
                &p[start..(start + METADATA_BLOCK_LEN).min(p.len())]
            );
        }
        MetadataMessage::Reject { piece: got } => {
            assert_eq!(got, piece);
            assert!(piece as usize * METADATA_BLOCK_LEN >= p.len());
        }
        other => panic!("served {other:?}"),
    }
}

fn pex(p: &[u8]) {
    let Ok(m) = PexMessage::parse(p) else {
        return;
    };
    assert!(m.added.iter().all(|(a, _)| a.port() != 0));
    assert!(m.dropped.iter().all(|a| a.port() != 0));
    let bytes = m.encode();
    bencode::decode(&bytes).expect("canonical bencode");
    let again = PexMessage::parse(&bytes).expect("our encoding parses");
    let canon = |a: &SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let mut added: Vec<(SocketAddr, u8)> = m.added.iter().map(|(a, f)| (canon(a), *f)).collect();
    added.sort_by_key(|(a, _)| a.is_ipv6()); // stable: IPv4 first, order kept
    let mut dropped: Vec<SocketAddr> = m.dropped.iter().map(canon).collect();
    dropped.sort_by_key(|a| a.is_ipv6());
    let per_family = |v: &mut dyn Iterator<Item = bool>| {
        let (mut v4, mut v6) = (0, 0);
        for is6 in v {
            if is6 {
                v6 += 1
            } else {
                v4 += 1
            }
        }
        v4 <= 200 && v6 <= 200
    };
    // Mapped entries moving lists could push one list past the 200 read per message.
    if per_family(&mut added.iter().map(|(a, _)| a.is_ipv6()))
        && per_family(&mut dropped.iter().map(|a| a.is_ipv6()))
    {
        assert_eq!(again.added, added);
        assert_eq!(again.dropped, dropped);
        assert_eq!(again.encode(), bytes, "fixed point");
    }
}

fn magnet(p: &[u8]) {
    let s = String::from_utf8_lossy(p);
    for uri in [s.to_string(), format!("magnet:?{s}")] {
        let Ok(m) = Magnet::parse(&uri) else {
            continue;
        };
        let text = m.to_string();
        assert_eq!(
            Magnet::parse(&text).as_ref(),
            Ok(&m),
            "{uri:?} printed as {text:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, p)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => handshake(p),
        1 => metadata(p),
        2 => pex(p),
        _ => magnet(p),
    }
});
