//! ut_pex sender in virtual time: whatever the connected set does, messages are at least
//! a minute apart, carry at most 50 added and 50 dropped peers, never name the recipient,
//! survive the wire, and the recipient's view converges to our connected set.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use wire::extension::{PexMessage, PexSender, PEX_INTERVAL, PEX_MAX_PEERS};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1000 + i))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn sender_respects_limits_and_converges(
        // Each step: a new connected set (indices into 0..300) and seconds until the next poll.
        steps in proptest::collection::vec((proptest::collection::btree_set(0u16..300, 0..150), 1u64..90), 1..30),
    ) {
        let recipient = addr(7);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sender = PexSender::new(recipient);
        let mut their_view: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut last_sent: Option<Instant> = None;
        let mut connected: Vec<(SocketAddr, u8)> = Vec::new();
        for (set, gap) in &steps {
            connected = set.iter().map(|&i| (addr(i), 0)).collect();
            if let Some(msg) = sender.poll(now, &connected) {
                if let Some(t) = last_sent {
                    prop_assert!(now - t >= PEX_INTERVAL, "sent twice within a minute");
                }
                last_sent = Some(now);
                prop_assert!(msg.added.len() <= PEX_MAX_PEERS && msg.dropped.len() <= PEX_MAX_PEERS);
                prop_assert!(msg.added.iter().all(|(a, _)| *a != recipient));
                let msg = PexMessage::parse(&msg.encode()).unwrap();
                for (a, _) in &msg.added {
                    their_view.insert(*a);
                }
                for a in &msg.dropped {
                    their_view.remove(a);
                }
            }
            now += Duration::from_secs(*gap);
        }
        // With the set held still, a few more minutes bring the recipient up to date.
        for _ in 0..8 {
            now += PEX_INTERVAL;
            if let Some(msg) = sender.poll(now, &connected) {
                for (a, _) in &msg.added {
                    their_view.insert(*a);
                }
                for a in &msg.dropped {
                    their_view.remove(a);
                }
            }
        }
        let want: BTreeSet<SocketAddr> = connected.iter().map(|(a, _)| *a).filter(|a| *a != recipient).collect();
        prop_assert_eq!(their_view, want);
    }
}
