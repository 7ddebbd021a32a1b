//! KRPC decode and encode throughput (messages per second), criterion.
//! Run: CARGO_TARGET_DIR=target-dht cargo bench -p dht --bench krpc

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dht::krpc::{Body, Message, NodeInfo, Query, QueryKind, Response, Want};
use dht::Id;

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let ping = Message {
        t: b"aa".to_vec(),
        v: Some(b"LT\x01\x02".to_vec()),
        ip: None,
        ro: false,
        body: Body::Query(Query {
            id: Id([1; 20]),
            want: Want::default(),
            kind: QueryKind::Ping,
        }),
    };
    let get_peers = Message {
        body: Body::Query(Query {
            id: Id([1; 20]),
            want: Want {
                n4: true,
                n6: false,
            },
            kind: QueryKind::GetPeers {
                info_hash: Id([2; 20]),
            },
        }),
        ..ping.clone()
    };
    let nodes: Vec<NodeInfo> = (0..8u8)
        .map(|i| NodeInfo {
            id: Id([i; 20]),
            addr: format!("10.0.0.{i}:6881").parse().unwrap(),
        })
        .collect();
    let nodes_reply = Message {
        ip: Some("1.2.3.4:5678".parse().unwrap()),
        body: Body::Response(Response {
            id: Id([3; 20]),
            nodes,
            token: Some(vec![9; 8]),
            ..Response::default()
        }),
        ..ping.clone()
    };
    let values_reply = Message {
        body: Body::Response(Response {
            id: Id([3; 20]),
            values: (0..50u16)
                .map(|i| format!("10.1.0.{}:{}", i % 250, 1000 + i).parse().unwrap())
                .collect(),
            token: Some(vec![9; 8]),
            ..Response::default()
        }),
        ..ping.clone()
    };
    vec![
        ("ping_query", ping.to_bytes()),
        ("get_peers_query", get_peers.to_bytes()),
        ("nodes_response", nodes_reply.to_bytes()),
        ("values50_response", values_reply.to_bytes()),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("krpc");
    g.throughput(Throughput::Elements(1));
    for (name, bytes) in samples() {
        let msg = Message::decode(&bytes).unwrap();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| Message::decode(black_box(&bytes)).unwrap())
        });
        let mut out = Vec::with_capacity(1500);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&msg).encode(&mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
