//! When a core asks to be woken: settled queries leave no timer behind, and an idle node
//! sleeps until its housekeeping is due instead of waking every tick.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dht::krpc::{Body, Message, Query, QueryKind, Response, Want};
use dht::{Config, Dht, Id};

fn core() -> (Dht, Instant) {
    let mut c = Config::loopback(vec![]);
    c.id = Some(Id([0x11; 20]));
    let now = Instant::now();
    let mut d = Dht::new(c, now, 5);
    d.handle_timeout(now);
    while d.poll_transmit().is_some() {}
    (d, now)
}

fn sent(d: &mut Dht) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    while let Some(t) = d.poll_transmit() {
        out.push((t.to, Message::decode(&t.data).expect("valid KRPC")));
    }
    out
}

/// Pings `peer` and answers as `id` at `at`.
fn confirm(d: &mut Dht, now: Instant, at: Instant, peer: SocketAddr, id: Id) {
    d.ping(now, peer);
    let out = sent(d);
    let (_, ping) = out.iter().find(|(a, _)| *a == peer).expect("ping sent");
    let resp = Message {
        t: ping.t.clone(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Response(Response {
            id,
            ..Response::default()
        }),
    };
    d.handle_datagram(at, peer, &resp.to_bytes());
}

fn peer(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 1, i], 6881))
}

fn id(i: u8) -> Id {
    let mut b = [0x80; 20];
    b[0] = i; // spread over the far buckets
    Id(b)
}

#[test]
fn an_answered_query_leaves_no_timer_behind() {
    let (mut d, now) = core();
    let short = Config::default().short_timeout;
    confirm(&mut d, now, now, peer(1), id(1));
    d.find_node(now, Id([0x42; 20]));
    let out = sent(&mut d);
    let (to, q) = out
        .iter()
        .find(|(_, m)| matches!(m.body, Body::Query(_)))
        .expect("asked");
    assert_eq!(*to, peer(1));
    assert!(
        d.poll_timeout().unwrap() <= now + short,
        "the lookup query is timed"
    );
    let resp = Message {
        t: q.t.clone(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Response(Response {
            id: id(1),
            ..Response::default()
        }),
    };
    d.handle_datagram(now + Duration::from_millis(100), peer(1), &resp.to_bytes());
    let next = d.poll_timeout().unwrap();
    assert!(
        next > now + short,
        "woken at {:?} for a query that was answered",
        next - now
    );
}

#[test]
fn an_idle_node_sleeps_until_housekeeping_is_due_and_wakes_for_newcomers() {
    let (mut d, now) = core();
    let tick = Config::default().tick;
    for i in 0..12 {
        confirm(&mut d, now, now, peer(i + 1), id(i * 20));
    }
    assert!(d.node_count() >= Config::default().k);
    // The first pass after the joins checks the table; nothing is due for minutes after.
    let t1 = now + tick;
    assert_eq!(d.poll_timeout(), Some(t1));
    d.handle_timeout(t1);
    assert!(sent(&mut d).is_empty(), "every node is good");
    let sleep = d.poll_timeout().unwrap() - t1;
    assert!(
        sleep > 4 * tick && sleep <= Duration::from_secs(60),
        "idle node sleeps {sleep:?}"
    );

    // A newcomer queries us: it enters the table unconfirmed and the regular tick is
    // back, so it is pinged within one tick.
    let newcomer = peer(200);
    let q = Message {
        t: b"aa".to_vec(),
        v: None,
        ip: None,
        ro: false,
        body: Body::Query(Query {
            id: id(250),
            want: Want::default(),
            kind: QueryKind::Ping,
        }),
    };
    let t2 = t1 + Duration::from_secs(2);
    d.handle_datagram(t2, newcomer, &q.to_bytes());
    sent(&mut d);
    let wake = d.poll_timeout().unwrap();
    assert_eq!(wake, t1 + tick, "back to the regular tick");
    d.handle_timeout(wake);
    let pinged = sent(&mut d).iter().any(|(a, m)| {
        *a == newcomer && matches!(&m.body, Body::Query(q) if q.kind == QueryKind::Ping)
    });
    assert!(pinged, "the unconfirmed newcomer is pinged");
}
