//! Property tests for the KRPC codec and the core's input handling.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use dht::item::{Item, MutableItem};
use dht::krpc::{Body, KrpcError, Message, NodeInfo, Query, QueryKind, Response, Want};
use dht::{Config, Dht, Id, SavedState};
use proptest::prelude::*;

fn id() -> impl Strategy<Value = Id> {
    any::<[u8; 20]>().prop_map(Id)
}

fn v4() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 4]>(), 1..=u16::MAX)
        .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
}

fn v6() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), 1..=u16::MAX)
        .prop_filter("not v4-mapped", |(ip, _)| {
            Ipv6Addr::from(*ip).to_ipv4_mapped().is_none()
        })
        .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![v4(), v6()]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// A bencoded value: strings, integers, lists and dicts, a few levels deep.
fn bencoded() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        bytes(30).prop_map(|b| {
            let mut out = format!("{}:", b.len()).into_bytes();
            out.extend(b);
            out
        }),
        any::<i64>().prop_map(|i| format!("i{i}e").into_bytes()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                let mut out = b"l".to_vec();
                items.into_iter().for_each(|i| out.extend(i));
                out.push(b'e');
                out
            }),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4).prop_map(|m| {
                let mut out = b"d".to_vec();
                for (k, v) in m {
                    out.extend(format!("{}:{k}", k.len()).into_bytes());
                    out.extend(v);
                }
                out.push(b'e');
                out
            }),
        ]
    })
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        bencoded().prop_map(Item::Immutable),
        (
            any::<[u8; 32]>(),
            bytes(64),
            any::<i64>(),
            bencoded(),
            prop::collection::vec(any::<u8>(), 64)
        )
            .prop_map(|(key, salt, seq, value, sig)| Item::Mutable(MutableItem {
                key,
                salt,
                seq,
                value,
                sig: sig.try_into().unwrap(),
            })),
    ]
}

fn query_kind() -> impl Strategy<Value = QueryKind> {
    prop_oneof![
        Just(QueryKind::Ping),
        id().prop_map(|target| QueryKind::FindNode { target }),
        id().prop_map(|info_hash| QueryKind::GetPeers { info_hash }),
        (id(), any::<u16>(), any::<bool>(), bytes(40)).prop_map(
            |(info_hash, port, implied_port, token)| {
                QueryKind::AnnouncePeer {
                    info_hash,
                    port,
                    implied_port,
                    token,
                }
            }
        ),
        id().prop_map(|target| QueryKind::SampleInfohashes { target }),
        (id(), prop::option::of(any::<i64>()))
            .prop_map(|(target, seq)| QueryKind::Get { target, seq }),
        (bytes(40), item(), prop::option::of(any::<i64>()))
            .prop_map(|(token, item, cas)| QueryKind::Put { token, item, cas }),
        (id(), "[a-z_]{1,20}")
            .prop_filter("not a known method", |(_, m)| {
                ![
                    "ping",
                    "find_node",
                    "get_peers",
                    "announce_peer",
                    "sample_infohashes",
                    "get",
                    "put",
                ]
                .contains(&m.as_str())
            })
            .prop_map(|(target, m)| QueryKind::Other {
                method: m.into_bytes(),
                target
            }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    let query =
        (id(), any::<bool>(), any::<bool>(), query_kind()).prop_map(|(id, n4, n6, kind)| {
            Body::Query(Query {
                id,
                want: Want { n4, n6 },
                kind,
            })
        });
    let node4 = (id(), v4()).prop_map(|(id, addr)| NodeInfo { id, addr });
    let node6 = (id(), v6()).prop_map(|(id, addr)| NodeInfo { id, addr });
    let response = (
        id(),
        prop::collection::vec(node4, 0..10),
        prop::collection::vec(node6, 0..10),
        prop::collection::vec(any_addr(), 0..20),
        prop::option::of(bytes(20)),
        prop::option::of(prop::collection::vec(id(), 0..5)),
        prop::option::of(any::<i64>()),
        prop::option::of(any::<i64>()),
        (
            prop::option::of(bencoded()),
            prop::option::of(any::<[u8; 32]>()),
            prop::option::of(any::<i64>()),
            prop::option::of(prop::collection::vec(any::<u8>(), 64)),
        ),
    )
        .prop_map(
            |(id, nodes, nodes6, values, token, samples, interval, num, (value, key, seq, sig))| {
                Body::Response(Response {
                    id,
                    // Decoding reports the key as present exactly when there were nodes.
                    with_nodes: !nodes.is_empty(),
                    nodes,
                    nodes6,
                    values,
                    token,
                    samples,
                    interval,
                    num,
                    value,
                    key,
                    seq,
                    sig: sig.map(|s| s.try_into().unwrap()),
                })
            },
        );
    let error = (any::<i64>(), bytes(100))
        .prop_map(|(code, message)| Body::Error(KrpcError { code, message }));
    prop_oneof![query, response, error]
}

fn message() -> impl Strategy<Value = Message> {
    (
        bytes(8),
        prop::option::of(bytes(4)),
        prop::option::of(any_addr()),
        any::<bool>(),
        body(),
    )
        .prop_map(|(t, v, ip, ro, body)| Message { t, v, ip, ro, body })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(m in message()) {
        let bytes = m.to_bytes();
        let back = Message::decode(&bytes).expect("our encoding decodes");
        prop_assert_eq!(&back, &m);
        // Canonical: re-encoding gives the same bytes.
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(600)) {
        let _ = Message::decode(&data);
        let _ = SavedState::from_bytes(&data);
    }

    #[test]
    fn mutated_messages_never_panic(m in message(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = m.to_bytes();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn the_core_survives_any_datagram(datas in prop::collection::vec(prop_oneof![bytes(300), message().prop_map(|m| m.to_bytes())], 1..20)) {
        let now = Instant::now();
        let mut d = Dht::new(Config::loopback(vec!["127.0.0.1:1".parse().unwrap()]), now, 1);
        d.get_peers(now, [1u8; 20]);
        let from: SocketAddr = "127.0.0.9:9".parse().unwrap();
        for data in &datas {
            d.handle_datagram(now, from, data);
        }
        d.handle_timeout(now + std::time::Duration::from_secs(10));
        while let Some(t) = d.poll_transmit() {
            // Everything we send is valid KRPC and bounded in size.
            prop_assert!(Message::decode(&t.data).is_ok());
            prop_assert!(t.data.len() < 1500);
        }
        while d.poll_event().is_some() {}
    }
}
