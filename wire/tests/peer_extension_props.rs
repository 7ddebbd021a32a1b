//! Property tests for the BEP 10 / 9 / 11 codecs: round trips, and arbitrary bytes
//! never panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use proptest::prelude::*;
use wire::extension::{ExtendedHandshake, MetadataMessage, MetadataServer, PexMessage};

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..)
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), 1u16..)
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn handshake() -> impl Strategy<Value = ExtendedHandshake> {
    (
        proptest::collection::btree_map("[a-z_]{1,20}", any::<u8>(), 0..8),
        proptest::option::of("[ -~]{0,40}"),
        proptest::option::of(1u16..),
        proptest::option::of(1u32..),
        proptest::option::of(any::<[u8; 4]>().prop_map(|b| IpAddr::V4(b.into()))),
        proptest::option::of(any::<[u8; 16]>().prop_map(Ipv6Addr::from)),
        proptest::option::of(1u64..1 << 40),
        any::<bool>(),
    )
        .prop_map(
            |(
                extensions,
                client,
                listen_port,
                request_queue,
                your_ip,
                ipv6,
                metadata_size,
                upload_only,
            )| {
                ExtendedHandshake {
                    extensions,
                    client,
                    listen_port,
                    request_queue,
                    your_ip,
                    ipv4: None,
                    ipv6,
                    metadata_size,
                    upload_only,
                }
            },
        )
}

fn metadata_message() -> impl Strategy<Value = MetadataMessage> {
    prop_oneof![
        any::<u32>().prop_map(|piece| MetadataMessage::Request { piece }),
        any::<u32>().prop_map(|piece| MetadataMessage::Reject { piece }),
        (
            any::<u32>(),
            0u64..1 << 50,
            proptest::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(piece, total_size, data)| MetadataMessage::Data {
                piece,
                total_size,
                data: data.into()
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn extended_handshake_round_trip(hs in handshake()) {
        let bytes = hs.encode();
        prop_assert!(bencode::decode(&bytes).is_ok());
        prop_assert_eq!(ExtendedHandshake::parse(&bytes).unwrap(), hs);
    }

    #[test]
    fn metadata_message_round_trip(m in metadata_message()) {
        prop_assert_eq!(MetadataMessage::parse(&Bytes::from(m.encode())).unwrap(), Some(m));
    }

    #[test]
    fn pex_round_trip(
        added in proptest::collection::vec((socket_addr(), any::<u8>()), 0..60),
        dropped in proptest::collection::vec(socket_addr(), 0..60),
    ) {
        // The wire groups IPv4 before IPv6; compare in that order.
        let v4_first = |v: &mut Vec<(SocketAddr, u8)>| v.sort_by_key(|(a, _)| a.is_ipv6());
        let mut msg = PexMessage { added, dropped };
        v4_first(&mut msg.added);
        msg.dropped.sort_by_key(|a| a.is_ipv6());
        prop_assert_eq!(PexMessage::parse(&msg.encode()).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = ExtendedHandshake::parse(&bytes);
        let _ = PexMessage::parse(&bytes);
        let b = Bytes::from(bytes);
        if let Ok(Some(m)) = MetadataMessage::parse(&b) {
            // Whatever parsed can be served against without panicking.
            let _ = MetadataServer::new(b.clone()).handle(&m);
        }
    }

    #[test]
    fn dictionary_shaped_garbage_never_panics(
        keys in proptest::collection::vec(prop_oneof![
            Just("m".to_string()), Just("msg_type".to_string()), Just("piece".to_string()),
            Just("total_size".to_string()), Just("added".to_string()), Just("added.f".to_string()),
            Just("dropped6".to_string()), Just("yourip".to_string()), Just("metadata_size".to_string()),
            "[a-z]{1,6}"], 0..6),
        vals in proptest::collection::vec(prop_oneof![
            any::<i64>().prop_map(|i| format!("i{i}e")),
            "[ -~]{0,40}".prop_map(|b: String| format!("{}:{}", b.len(), b)),
            Just("de".to_string()), Just("le".to_string()), Just("d1:ai1ee".to_string())], 0..6),
    ) {
        let mut sorted: Vec<(String, String)> = keys.into_iter().zip(vals).collect();
        sorted.sort();
        sorted.dedup_by(|a, b| a.0 == b.0);
        let mut s = String::from("d");
        for (k, v) in &sorted {
            s.push_str(&format!("{}:{}{}", k.len(), k, v));
        }
        s.push('e');
        let bytes = s.into_bytes();
        let _ = ExtendedHandshake::parse(&bytes);
        let _ = PexMessage::parse(&bytes);
        let _ = MetadataMessage::parse(&Bytes::from(bytes));
    }
}
