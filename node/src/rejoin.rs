//! Getting into the DHT when the bootstrap routers do not answer or do not resolve: the
//! names are resolved again with backoff while the routing table is empty, the addresses
//! found are pinged, and the progress line says what is going on instead of showing
//! "0 DHT nodes" forever.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The first retry comes this soon; each one after waits twice as long, up to the max.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// What the last attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Not tried yet (the first resolution happened at start).
    None,
    /// Some names resolved: these many addresses were pinged.
    Asked(usize),
    /// No name resolved.
    Unresolved,
}

/// When to resolve the bootstrap names again, and what to tell the user meanwhile. A
/// plain state machine: time is passed in.
#[derive(Clone, Debug)]
pub struct Rejoin {
    names: Vec<String>,
    next_try: Instant,
    backoff: Duration,
    last: Attempt,
}

impl Rejoin {
    /// `names` are the bootstrap `HOST:PORT` specs; `resolved` is how many addresses the
    /// first resolution, at start, gave.
    pub fn new(names: Vec<String>, resolved: usize, now: Instant) -> Rejoin {
        Rejoin {
            names,
            next_try: now + FIRST_RETRY,
            backoff: FIRST_RETRY,
            last: if resolved == 0 {
                Attempt::Unresolved
            } else {
                Attempt::Asked(resolved)
            },
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether to resolve again now, given the routing table's size. Resets once the
    /// node is in.
    pub fn due(&mut self, now: Instant, dht_nodes: usize) -> bool {
        if dht_nodes > 0 {
            self.backoff = FIRST_RETRY;
            self.next_try = now + FIRST_RETRY;
            self.last = Attempt::None;
            return false;
        }
        !self.names.is_empty() && now >= self.next_try
    }

    /// The outcome of a resolution started when [`Rejoin::due`] said so: `Ok(addrs)`
    /// (to be pinged by the caller) or an error.
    pub fn resolved(&mut self, now: Instant, result: &anyhow::Result<Vec<SocketAddr>>) {
        self.last = match result {
            Ok(a) if !a.is_empty() => Attempt::Asked(a.len()),
            _ => Attempt::Unresolved,
        };
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
        self.next_try = now + self.backoff;
    }

    /// A note for the progress line while the table is empty.
    pub fn note(&self, now: Instant, dht_nodes: usize) -> Option<String> {
        if dht_nodes > 0 || self.names.is_empty() {
            return None;
        }
        let wait = self
            .next_try
            .saturating_duration_since(now)
            .as_millis()
            .div_ceil(1000);
        Some(match self.last {
            Attempt::Unresolved => {
                format!("no bootstrap node resolves; retrying in {wait} s")
            }
            Attempt::Asked(n) => {
                format!("no answer yet from {n} bootstrap address(es); retrying in {wait} s")
            }
            Attempt::None => format!("joining the DHT; retrying in {wait} s"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_while_the_table_is_empty_and_stop_once_in() {
        let t0 = Instant::now();
        let mut r = Rejoin::new(vec!["router.invalid:6881".into()], 0, t0);
        assert_eq!(
            r.note(t0, 0).as_deref(),
            Some("no bootstrap node resolves; retrying in 5 s")
        );
        assert!(!r.due(t0, 0));
        let mut at = t0 + FIRST_RETRY;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(r.due(at, 0));
            r.resolved(at, &Err(anyhow::anyhow!("cannot resolve")));
            let next = r.next_try;
            waits.push((next - at).as_secs());
            assert!(!r.due(at, 0), "not again at once");
            at = next;
        }
        assert_eq!(waits, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        // A name resolves: the note says how many addresses were asked.
        r.resolved(at, &Ok(vec!["127.0.0.1:6881".parse().unwrap()]));
        assert!(r
            .note(at, 0)
            .unwrap()
            .starts_with("no answer yet from 1 bootstrap"));
        // In the DHT: no note, no retries, and the backoff starts over next time.
        assert_eq!(r.note(at, 12), None);
        assert!(!r.due(at, 12));
        assert!(r.due(at + FIRST_RETRY, 0));
    }

    #[test]
    fn nothing_to_retry_without_names() {
        let t0 = Instant::now();
        let mut r = Rejoin::new(Vec::new(), 0, t0);
        assert!(!r.due(t0 + MAX_RETRY, 0));
        assert_eq!(r.note(t0, 0), None);
    }
}
