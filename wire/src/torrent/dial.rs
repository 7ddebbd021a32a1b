//! Which addresses to dial and when: the peers we know of (from the DHT, PEX, magnet
//! hints, the user), their failures with backoff, re-dials of peers that closed on us,
//! and the encryption to dial each with.
//!
//! Plain data and decisions; [`super::TorrentCore`] asks it for due addresses when it has
//! room for a connection.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where we heard of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerSource {
    /// Given by the user (`--peer`) or the application: re-dialed whenever it is lost.
    Explicit,
    /// A DHT lookup, a magnet `x.pe` hint.
    Dht,
    /// Peer exchange (BEP 11).
    Pex,
    /// It connected to us (the address it says it listens on).
    Incoming,
}

/// Tunables of the dial policy.
#[derive(Clone, Debug)]
pub struct DialConfig {
    /// Failed attempts (before a handshake) after which a found peer is forgotten.
    pub max_failures: u32,
    /// Failed attempts after which an explicit peer is given up.
    pub max_explicit_failures: u32,
    /// First retry delay; doubles with each failure up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Re-dials of a peer that closed an established connection on us, before a
    /// connection to it lasts `stable_after`.
    pub max_redials: u32,
    pub stable_after: Duration,
    /// Addresses remembered at most (the oldest non-explicit ones go first).
    pub max_known: usize,
}

impl Default for DialConfig {
    fn default() -> Self {
        DialConfig {
            max_failures: 4,
            max_explicit_failures: 50,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_redials: 6,
            stable_after: Duration::from_secs(60),
            max_known: 4000,
        }
    }
}

#[derive(Clone, Debug)]
struct Known {
    source: PeerSource,
    /// Consecutive failures before a handshake.
    failures: u32,
    /// Re-dials after established connections ended.
    redials: u32,
    /// Dial with the MSE handshake (a plaintext attempt failed, or the other way round).
    encrypt: bool,
    /// Connected (or being dialed) now.
    busy: bool,
    /// Not before this time (`None`: queued now or busy).
    retry_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct DialPolicy {
    cfg: DialConfig,
    known: HashMap<SocketAddr, Known>,
    /// Due now, in order.
    queue: VecDeque<SocketAddr>,
    /// Waiting for a retry time.
    waiting: BTreeSet<(Instant, SocketAddr)>,
}

impl DialPolicy {
    pub fn new(cfg: DialConfig) -> Self {
        DialPolicy {
            cfg,
            ..Default::default()
        }
    }

    /// Addresses known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// A peer heard of. New addresses are queued for a dial; an explicit one also
    /// upgrades a known address (and is dialed again if it was waiting).
    pub fn add(&mut self, addr: SocketAddr, source: PeerSource) {
        if let Some(k) = self.known.get_mut(&addr) {
            if source == PeerSource::Explicit && k.source != PeerSource::Explicit {
                k.source = PeerSource::Explicit;
                k.failures = 0;
            }
            return;
        }
        // Full: a found peer waits for room; one the user named is kept anyway.
        if self.known.len() >= self.cfg.max_known
            && !self.evict_one()
            && source != PeerSource::Explicit
        {
            return;
        }
        self.known.insert(
            addr,
            Known {
                source,
                failures: 0,
                redials: 0,
                encrypt: false,
                busy: false,
                retry_at: None,
            },
        );
        if source != PeerSource::Incoming {
            self.queue.push_back(addr);
        } else {
            // Connected to us already; remembered for a re-dial only.
            self.known.get_mut(&addr).expect("inserted").busy = true;
        }
    }

    /// Forgets one idle, non-explicit address (one that is waiting to be retried).
    fn evict_one(&mut self) -> bool {
        let victim = self.waiting.iter().rev().map(|&(_, a)| a).find(|a| {
            self.known
                .get(a)
                .is_some_and(|k| k.source != PeerSource::Explicit)
        });
        match victim {
            Some(a) => {
                self.forget(a);
                true
            }
            None => false,
        }
    }

    fn forget(&mut self, addr: SocketAddr) {
        if let Some(k) = self.known.remove(&addr) {
            if let Some(t) = k.retry_at {
                self.waiting.remove(&(t, addr));
            }
        }
    }

    /// Moves addresses whose retry time has come to the queue.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(t, a)) = self.waiting.first() {
            if t > now {
                break;
            }
            self.waiting.pop_first();
            if let Some(k) = self.known.get_mut(&a) {
                k.retry_at = None;
                self.queue.push_back(a);
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting.first().map(|&(t, _)| t)
    }

    /// The next address to dial that `ok` accepts (not connected, not banned, not our
    /// own, room under its IP's limit), with whether to encrypt. Addresses `ok` refuses
    /// because they are connected are dropped from the queue; `ok` returning `None` means
    /// "not now" and stops the scan.
    pub fn next(&mut self, mut ok: impl FnMut(SocketAddr) -> Admit) -> Option<(SocketAddr, bool)> {
        let mut deferred = Vec::new();
        let mut found = None;
        while let Some(a) = self.queue.pop_front() {
            let Some(k) = self.known.get(&a) else {
                continue;
            };
            if k.busy {
                continue;
            }
            match ok(a) {
                Admit::Yes => {
                    let k = self.known.get_mut(&a).expect("known");
                    k.busy = true;
                    found = Some((a, k.encrypt));
                    break;
                }
                Admit::Skip => continue,
                Admit::Never => self.forget(a),
                Admit::Later => deferred.push(a),
            }
        }
        // Those refused for now (their IP is full) keep their place.
        for a in deferred.into_iter().rev() {
            self.queue.push_front(a);
        }
        found
    }

    /// Whether any address is due.
    pub fn has_due(&self) -> bool {
        !self.queue.is_empty()
    }

    /// A dial to `addr` failed before the handshake: retry later with the other
    /// encryption, or forget it after too many failures.
    pub fn failed(&mut self, now: Instant, addr: SocketAddr) {
        let Some(k) = self.known.get_mut(&addr) else {
            return;
        };
        k.busy = false;
        k.failures += 1;
        k.encrypt = !k.encrypt;
        let limit = if k.source == PeerSource::Explicit {
            self.cfg.max_explicit_failures
        } else {
            self.cfg.max_failures
        };
        let failures = k.failures;
        if failures > limit {
            self.forget(addr);
            return;
        }
        let delay = self.backoff(failures);
        self.schedule(addr, now + delay);
    }

    fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        (self.cfg.backoff * factor).min(self.cfg.max_backoff)
    }

    fn schedule(&mut self, addr: SocketAddr, at: Instant) {
        if let Some(k) = self.known.get_mut(&addr) {
            if let Some(old) = k.retry_at.replace(at) {
                self.waiting.remove(&(old, addr));
            }
            self.waiting.insert((at, addr));
        }
    }

    /// A connection to `addr` completed its handshake.
    pub fn connected(&mut self, addr: SocketAddr, source: PeerSource) {
        self.add(addr, source);
        if let Some(k) = self.known.get_mut(&addr) {
            k.busy = true;
            k.failures = 0;
            if let Some(t) = k.retry_at.take() {
                self.waiting.remove(&(t, addr));
            }
        }
    }

    /// An established connection to `addr` ended after `lasted`. With `redial`, the peer
    /// closed on us while it still had a use (as Transmission does after fetching the
    /// metadata): dial it again after a backoff, a bounded number of times.
    pub fn ended(&mut self, now: Instant, addr: SocketAddr, lasted: Duration, redial: bool) {
        let Some(k) = self.known.get_mut(&addr) else {
            return;
        };
        k.busy = false;
        if lasted >= self.cfg.stable_after {
            k.redials = 0;
        }
        let explicit = k.source == PeerSource::Explicit;
        if !redial && !explicit {
            // Nothing more to get from it: keep it known (PEX and the DHT bring it back
            // otherwise) but do not dial.
            self.forget(addr);
            return;
        }
        k.redials += 1;
        let redials = k.redials;
        if !explicit && redials > self.cfg.max_redials {
            self.forget(addr);
            return;
        }
        let delay = self.backoff(redials);
        self.schedule(addr, now + delay);
    }

    /// Whether we are connected to (or dialing) `addr`.
    pub fn is_busy(&self, addr: SocketAddr) -> bool {
        self.known.get(&addr).is_some_and(|k| k.busy)
    }
}

/// [`DialPolicy::next`]'s question about one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Already connected by another route: drop it from the queue.
    Skip,
    /// Banned or our own address: forget it.
    Never,
    /// Its IP is at its limit: keep it queued.
    Later,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_back_off_flip_encryption_and_give_up() {
        let t0 = Instant::now();
        let mut d = DialPolicy::new(DialConfig::default());
        d.add(a("127.0.0.1:1"), PeerSource::Dht);
        assert_eq!(d.next(|_| Admit::Yes), Some((a("127.0.0.1:1"), false)));
        assert_eq!(d.next(|_| Admit::Yes), None);
        let mut t = t0;
        for n in 1..=4u32 {
            d.failed(t, a("127.0.0.1:1"));
            let at = d.poll_timeout().expect("retry scheduled");
            assert_eq!(at - t, Duration::from_secs(1 << (n - 1)));
            d.handle_timeout(at - Duration::from_millis(1));
            assert_eq!(d.next(|_| Admit::Yes), None, "not before its time");
            d.handle_timeout(at);
            t = at;
            let (addr, enc) = d.next(|_| Admit::Yes).expect("due");
            assert_eq!((addr, enc), (a("127.0.0.1:1"), n % 2 == 1));
        }
        d.failed(t, a("127.0.0.1:1"));
        assert!(d.is_empty(), "forgotten after the last failure");
    }

    #[test]
    fn explicit_peers_are_redialed_whenever_lost() {
        let t0 = Instant::now();
        let mut d = DialPolicy::new(DialConfig::default());
        d.add(a("127.0.0.1:1"), PeerSource::Explicit);
        d.next(|_| Admit::Yes).unwrap();
        d.connected(a("127.0.0.1:1"), PeerSource::Explicit);
        for _ in 0..20 {
            d.ended(t0, a("127.0.0.1:1"), Duration::ZERO, false);
            assert!(d.poll_timeout().is_some());
            d.handle_timeout(t0 + Duration::from_secs(3600));
            assert!(d.next(|_| Admit::Yes).is_some());
        }
    }

    #[test]
    fn a_peer_that_closed_on_us_is_redialed_a_bounded_number_of_times() {
        let t0 = Instant::now();
        let mut d = DialPolicy::new(DialConfig::default());
        d.add(a("127.0.0.1:1"), PeerSource::Incoming);
        assert_eq!(d.next(|_| Admit::Yes), None, "it is connected to us");
        let mut redials = 0;
        for _ in 0..20 {
            d.ended(t0, a("127.0.0.1:1"), Duration::from_secs(1), true);
            d.handle_timeout(t0 + Duration::from_secs(3600));
            if d.next(|_| Admit::Yes).is_none() {
                break;
            }
            redials += 1;
        }
        assert_eq!(redials, DialConfig::default().max_redials);
        // Not redialed when it ended for a reason of ours.
        d.add(a("127.0.0.2:1"), PeerSource::Dht);
        d.next(|_| Admit::Yes).unwrap();
        d.ended(t0, a("127.0.0.2:1"), Duration::from_secs(1), false);
        d.handle_timeout(t0 + Duration::from_secs(3600));
        assert_eq!(d.next(|_| Admit::Yes), None);
    }

    #[test]
    fn deferred_addresses_keep_their_place_and_never_ones_are_forgotten() {
        let mut d = DialPolicy::new(DialConfig::default());
        for s in ["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"] {
            d.add(a(s), PeerSource::Dht);
        }
        let got = d.next(|x| match x.ip().to_string().as_str() {
            "127.0.0.1" => Admit::Later,
            "127.0.0.2" => Admit::Never,
            _ => Admit::Yes,
        });
        assert_eq!(got, Some((a("127.0.0.3:1"), false)));
        assert_eq!(d.len(), 2);
        assert_eq!(d.next(|_| Admit::Yes), Some((a("127.0.0.1:1"), false)));
    }

    #[test]
    fn bounded_in_addresses() {
        let cfg = DialConfig {
            max_known: 10,
            ..DialConfig::default()
        };
        let t0 = Instant::now();
        let mut d = DialPolicy::new(cfg);
        for i in 0..100u16 {
            let addr = SocketAddr::new("127.0.0.1".parse().unwrap(), i + 1);
            d.add(addr, PeerSource::Pex);
            if d.next(|_| Admit::Yes).is_some() {
                d.failed(t0, addr);
            }
        }
        assert!(d.len() <= 10);
    }
}
