//! Token buckets: one for our own outgoing queries, and one per source IP for inbound
//! queries (with a temporary ban for sources that keep pushing past their limit).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket in fixed point (millitokens) so it is exact under virtual time.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    milli: u64,
    rate: u64,
    burst: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = (burst.max(1) as u64) * 1000;
        TokenBucket {
            milli: burst,
            rate: rate_per_sec.max(1) as u64,
            burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last);
        let add = (dt.as_micros() as u64).saturating_mul(self.rate) / 1000;
        if add > 0 {
            self.milli = (self.milli + add).min(self.burst);
            self.last = now;
        } else if self.milli >= self.burst {
            self.last = now;
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// When the next token will be available.
    pub fn next_available(&self) -> Instant {
        if self.milli >= 1000 {
            return self.last;
        }
        let missing = 1000 - self.milli;
        let micros = missing.saturating_mul(1000).div_ceil(self.rate);
        self.last + Duration::from_micros(micros)
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.milli >= self.burst
    }
}

#[derive(Clone, Debug)]
struct Source {
    bucket: TokenBucket,
    drops: u32,
    banned_until: Option<Instant>,
}

/// Verdict on one inbound query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over the rate: dropped.
    Limited,
    /// The source is banned.
    Banned,
}

#[derive(Clone, Debug)]
pub struct InboundLimiter {
    sources: HashMap<IpAddr, Source>,
    rate: u32,
    burst: u32,
    ban_after: u32,
    ban_for: Duration,
    max_sources: usize,
}

impl InboundLimiter {
    pub fn new(
        rate: u32,
        burst: u32,
        ban_after: u32,
        ban_for: Duration,
        max_sources: usize,
    ) -> Self {
        InboundLimiter {
            sources: HashMap::new(),
            rate,
            burst,
            ban_after: ban_after.max(1),
            ban_for,
            max_sources: max_sources.max(1),
        }
    }

    /// Heap bytes held (approximate).
    pub fn heap_bytes(&self) -> usize {
        self.sources.capacity() * (std::mem::size_of::<(IpAddr, Source)>() + 1)
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Admits or refuses one query from `ip`. IPv6 sources count per /64: one host (one
    /// customer) is routinely given a whole /64 and could rotate through it at will.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Admit {
        let ip = source_key(ip);
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.max_sources {
            self.sweep(now);
            if self.sources.len() >= self.max_sources {
                // Table full of active sources (a flood of many IPs): refuse newcomers
                // rather than grow without bound.
                return Admit::Limited;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let src = self.sources.entry(ip).or_insert_with(|| Source {
            bucket: TokenBucket::new(rate, burst, now),
            drops: 0,
            banned_until: None,
        });
        if let Some(until) = src.banned_until {
            if now < until {
                return Admit::Banned;
            }
            src.banned_until = None;
            src.drops = 0;
        }
        if src.bucket.try_take(now) {
            src.drops = 0;
            Admit::Yes
        } else {
            src.drops += 1;
            if src.drops >= self.ban_after {
                src.banned_until = Some(now + self.ban_for);
            }
            Admit::Limited
        }
    }

    /// Forgets sources that are idle (full bucket, not banned).
    pub fn sweep(&mut self, now: Instant) {
        self.sources
            .retain(|_, s| s.banned_until.is_some_and(|u| now < u) || !s.bucket.is_full(now));
        if self.sources.len() * 4 < self.sources.capacity() {
            self.sources.shrink_to_fit();
        }
    }
}

/// The unit that shares one rate: an IPv4 address, an IPv6 /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0));
        assert_eq!(b.next_available(), t0 + Duration::from_millis(100));
        assert!(!b.try_take(t0 + Duration::from_millis(99)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        // Never more than the burst.
        let later = t0 + Duration::from_secs(100);
        let n = (0..100).filter(|_| b.try_take(later)).count();
        assert_eq!(n, 5);
    }

    #[test]
    fn inbound_limit_then_ban_then_release() {
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(10, 10, 20, Duration::from_secs(300), 100);
        let ip: IpAddr = "1.1.1.1".parse().unwrap();
        let other: IpAddr = "2.2.2.2".parse().unwrap();
        let admitted = (0..30).filter(|_| l.check(ip, t0) == Admit::Yes).count();
        assert_eq!(admitted, 10);
        // 20 drops so far reach ban_after: banned.
        assert_eq!(l.check(ip, t0), Admit::Banned);
        assert_eq!(l.check(ip, t0 + Duration::from_secs(299)), Admit::Banned);
        assert_eq!(l.check(other, t0), Admit::Yes, "other sources unaffected");
        assert_eq!(l.check(ip, t0 + Duration::from_secs(300)), Admit::Yes);
    }

    #[test]
    fn ipv6_sources_share_one_rate_per_64() {
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(10, 10, 1_000, Duration::from_secs(300), 100);
        let admitted = (0..100u16)
            .filter(|&i| {
                let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, 1);
                l.check(IpAddr::V6(ip), t0) == Admit::Yes
            })
            .count();
        assert_eq!(
            admitted, 10,
            "100 addresses of one /64 got {admitted} answers"
        );
        assert_eq!(l.tracked(), 1);
        let next_64 = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1);
        assert_eq!(l.check(IpAddr::V6(next_64), t0), Admit::Yes);
    }

    #[test]
    fn tracked_sources_are_bounded() {
        let t0 = Instant::now();
        let mut l = InboundLimiter::new(1, 1, 5, Duration::from_secs(60), 50);
        for i in 0..200u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            let _ = l.check(ip, t0);
        }
        assert!(l.tracked() <= 50);
        // Once they are idle again they are swept and newcomers are admitted.
        assert_eq!(
            l.check("9.9.9.9".parse().unwrap(), t0 + Duration::from_secs(10)),
            Admit::Yes
        );
    }
}
