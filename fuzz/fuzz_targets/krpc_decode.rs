//! Arbitrary datagrams into the KRPC decoder.
//!
//! Whatever decodes must encode to a datagram that decodes to the same message, up to the
//! one normalisation the encoder documents: IPv4-mapped IPv6 addresses are written as IPv4
//! (so an `ip`/`values` entry comes back as IPv4, and a `nodes6` entry whose address is
//! IPv4-mapped is not written at all, since `nodes6` only carries IPv6 nodes). After that
//! one step the encoding is a fixed point.
#![no_main]

use dht::krpc::{canonical_addr, Body, DecodeError, Message, MAX_TID_LEN};
use libfuzzer_sys::fuzz_target;

/// What `Message::encode` makes of a decoded message.
fn normalised(m: &Message) -> Message {
    let mut m = m.clone();
    m.ip = m.ip.map(canonical_addr);
    if let Body::Response(r) = &mut m.body {
        for n in &mut r.nodes {
            n.addr = canonical_addr(n.addr);
        }
        r.nodes6.retain(|n| canonical_addr(n.addr).is_ipv6());
        for v in &mut r.values {
            *v = canonical_addr(*v);
        }
    }
    m
}

fuzz_target!(|data: &[u8]| {
    match Message::decode(data) {
        Ok(m) => {
            assert!(m.t.len() <= MAX_TID_LEN);
            let bytes = m.to_bytes();
            bencode::decode(&bytes).expect("we encode canonical bencode");
            let again = Message::decode(&bytes).expect("our own encoding decodes");
            assert_eq!(again, normalised(&m));
            assert_eq!(again.to_bytes(), bytes, "encoding is a fixed point");
            if let Body::Response(r) = &m.body {
                assert!(r.nodes.iter().all(|n| n.addr.port() != 0));
                assert!(r.values.iter().all(|a| a.port() != 0));
            }
        }
        Err(DecodeError::BadQuery { t, .. }) => {
            // Only a query with a (bounded) transaction id may be answered with an error.
            assert!(t.len() <= MAX_TID_LEN);
        }
        Err(_) => {}
    }
});
