//! Inputs found by the fuzz targets in `fuzz/` (see fuzz/README.md), kept as plain tests
//! so they stay fixed under `cargo test`.

use std::net::SocketAddr;
use std::time::Instant;

use dht::{Config, Dht, Event, Id};

fn core() -> (Dht, Instant) {
    let mut c = Config::loopback(vec![]);
    c.id = Some(Id([0x11; 20]));
    let now = Instant::now();
    let mut d = Dht::new(c, now, 5);
    d.handle_timeout(now);
    while d.poll_transmit().is_some() {}
    while d.poll_event().is_some() {}
    (d, now)
}

/// fuzz/dht_core: `ping` and `add_node` take addresses from untrusted places (a peer's
/// BEP 5 PORT message, a torrent's `nodes`), and sent queries to port 0 and to
/// unspecified or multicast addresses. Such addresses are refused everywhere else.
#[test]
fn ping_and_add_node_never_send_to_undialable_addresses() {
    let (mut d, now) = core();
    for bad in [
        "1.2.3.4:0",
        "0.0.0.0:6881",
        "224.0.0.1:6881",
        "[::]:6881",
        "[ff02::1]:6881",
        "[2001:db8::1]:0",
    ] {
        let addr: SocketAddr = bad.parse().unwrap();
        d.add_node(now, addr);
        d.ping(now, addr);
        if let Some(t) = d.poll_transmit() {
            panic!("sent a query to {} for {bad}", t.to);
        }
        // The application still hears back about its ping.
        assert_eq!(d.poll_event(), Some(Event::PingTimeout { addr }), "{bad}");
        assert_eq!(d.poll_event(), None);
    }
    // A dialable address is still pinged.
    let good: SocketAddr = "1.2.3.4:6881".parse().unwrap();
    d.ping(now, good);
    assert_eq!(d.poll_transmit().map(|t| t.to), Some(good));
}
