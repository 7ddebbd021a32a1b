//! How long to wait for a reply before a lookup stops counting on it.
//!
//! A lookup keeps `alpha` queries in flight; one that has not been answered by the "short
//! timeout" stops holding its slot, so the lookup asks the next node while still taking a
//! late answer. A fixed second is ten times the typical round trip: each dead node a
//! lookup asks (and churn leaves many in routing tables) then stalls a slot for far longer
//! than a live node ever takes. So the short timeout follows the round trips we measure,
//! as TCP's retransmission timer does (RFC 6298): smoothed RTT plus four times its mean
//! deviation, kept between a floor and the configured ceiling. The samples come from all
//! nodes we talk to, so the deviation measures the spread across nodes as well as over
//! time: the timeout sits in the slow tail of the nodes we actually reach.

use std::time::Duration;

/// Smoothed round-trip time and its deviation (RFC 6298, gains 1/8 and 1/4).
#[derive(Clone, Debug)]
pub struct RttEstimator {
    /// Microseconds; `None` until the first sample.
    srtt: Option<f64>,
    rttvar: f64,
    floor: Duration,
    ceiling: Duration,
}

impl RttEstimator {
    /// An estimator whose timeout stays within `floor..=ceiling` (the ceiling is also the
    /// timeout before any sample).
    pub fn new(floor: Duration, ceiling: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rttvar: 0.0,
            floor: floor.min(ceiling),
            ceiling,
        }
    }

    /// A reply came `rtt` after its query.
    pub fn sample(&mut self, rtt: Duration) {
        // A sample far past the ceiling says nothing about live nodes' round trips.
        let r = rtt.min(self.ceiling * 2).as_secs_f64() * 1e6;
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(s) => {
                self.rttvar += ((s - r).abs() - self.rttvar) / 4.0;
                self.srtt = Some(s + (r - s) / 8.0);
            }
        }
    }

    /// After this long without a reply a query counts as slow.
    pub fn short_timeout(&self) -> Duration {
        match self.srtt {
            None => self.ceiling,
            Some(s) => Duration::from_micros((s + 4.0 * self.rttvar) as u64)
                .clamp(self.floor, self.ceiling),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(250);
    const CEILING: Duration = Duration::from_secs(1);

    #[test]
    fn the_ceiling_holds_until_a_reply_is_measured() {
        let e = RttEstimator::new(FLOOR, CEILING);
        assert_eq!(e.short_timeout(), CEILING);
    }

    #[test]
    fn steady_fast_replies_bring_it_down_to_the_floor() {
        let mut e = RttEstimator::new(FLOOR, CEILING);
        for _ in 0..200 {
            e.sample(Duration::from_millis(40));
        }
        assert_eq!(e.short_timeout(), FLOOR);
    }

    #[test]
    fn it_sits_in_the_slow_tail_of_a_spread_of_round_trips() {
        let mut e = RttEstimator::new(Duration::from_millis(10), CEILING);
        // Nodes at 60..=300 ms, in a repeating order.
        for i in 0..2_000u64 {
            e.sample(Duration::from_millis(60 + (i * 37) % 241));
        }
        let t = e.short_timeout();
        assert!(
            t > Duration::from_millis(300) && t < CEILING,
            "timeout {t:?} should be past the slowest live node and under the ceiling"
        );
    }

    #[test]
    fn slow_links_keep_the_ceiling() {
        let mut e = RttEstimator::new(FLOOR, CEILING);
        for i in 0..100 {
            e.sample(Duration::from_millis(if i % 2 == 0 { 600 } else { 1200 }));
        }
        assert_eq!(e.short_timeout(), CEILING);
        // Absurd samples are clipped, not trusted.
        e.sample(Duration::from_secs(3600));
        assert_eq!(e.short_timeout(), CEILING);
    }
}
