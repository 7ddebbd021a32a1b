//! Sans-IO rate control: a token bucket for limits and a decaying meter for measured rates.
//! Both take `now` from the caller, so virtual time works.

use std::time::{Duration, Instant};

/// A token bucket in bytes. `rate == 0` means unlimited. Taking may drive the balance
/// negative (one block of debt), so a burst smaller than a block still makes progress
/// while the long-run rate is honoured.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` bytes per second (0 = unlimited); the bucket holds at most `burst` bytes.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let dt = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst);
            self.last = now;
        }
    }

    /// Takes `n` bytes if the balance is positive; false means "wait".
    pub fn try_take(&mut self, now: Instant, n: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        if self.tokens > 0.0 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    /// When the balance will be positive again (None when it already is or unlimited).
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        if self.is_unlimited() {
            return None;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + dt * self.rate as f64).min(self.burst);
        if tokens > 0.0 {
            return None;
        }
        // A millisecond of slack so the balance is strictly positive when we wake.
        let wait = (-tokens / self.rate as f64) + 0.001;
        Some(now + Duration::from_secs_f64(wait))
    }
}

/// Bytes per second, averaged over roughly the last few seconds (an exponential average
/// of one-second samples; idle seconds decay it).
#[derive(Debug, Clone)]
pub struct RateMeter {
    window_start: Instant,
    window_bytes: u64,
    rate: f64,
    total: u64,
}

const SAMPLE: Duration = Duration::from_secs(1);

impl RateMeter {
    pub fn new(now: Instant) -> Self {
        RateMeter {
            window_start: now,
            window_bytes: 0,
            rate: 0.0,
            total: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < SAMPLE {
            return;
        }
        let sample = self.window_bytes as f64 / elapsed.as_secs_f64();
        self.rate = if self.rate == 0.0 {
            sample
        } else {
            0.5 * self.rate + 0.5 * sample
        };
        // Whole idle seconds after the sample halve the average each.
        let idle = (elapsed.as_secs() - 1).min(64) as i32;
        if idle > 0 && self.window_bytes == 0 {
            self.rate *= 0.5f64.powi(idle);
        }
        self.window_start = now;
        self.window_bytes = 0;
    }

    pub fn add(&mut self, now: Instant, bytes: u64) {
        self.roll(now);
        self.window_bytes += bytes;
        self.total += bytes;
    }

    /// Bytes per second.
    pub fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        self.rate
    }

    /// The last computed rate, without advancing the clock.
    pub fn last_rate(&self) -> f64 {
        self.rate
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_honours_rate_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, 16_384, t0);
        let mut taken = 0u64;
        let mut now = t0;
        // 10 virtual seconds in 10 ms steps, taking 16 KiB whenever allowed.
        for _ in 0..1000 {
            now += Duration::from_millis(10);
            while b.try_take(now, 16_384) {
                taken += 16_384;
            }
        }
        // 10 s x 100 kB/s plus at most the burst and one block of debt.
        assert!(
            (950_000..=1_000_000 + 2 * 16_384).contains(&taken),
            "took {taken}"
        );
    }

    #[test]
    fn bucket_ready_at_points_past_the_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1000, t0);
        assert!(b.try_take(t0, 3000));
        assert!(!b.try_take(t0, 1));
        let at = b.ready_at(t0).expect("in debt");
        assert!(at >= t0 + Duration::from_secs(2));
        assert!(b.try_take(at, 1));
        assert!(TokenBucket::new(0, 0, t0).try_take(t0, u64::MAX));
    }

    #[test]
    fn meter_tracks_and_decays() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0);
        for s in 0..5 {
            m.add(t0 + Duration::from_secs(s), 10_000);
        }
        let r = m.rate(t0 + Duration::from_secs(5));
        assert!((9_000.0..=11_000.0).contains(&r), "rate {r}");
        let later = m.rate(t0 + Duration::from_secs(15));
        assert!(later < 100.0, "decayed to {later}");
        assert_eq!(m.total(), 50_000);
    }
}
