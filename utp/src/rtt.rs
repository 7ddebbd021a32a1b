//! Round-trip time and the retransmission timeout (RFC 6298, with BEP 29's 500 ms floor).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Rtt {
    srtt: Option<Duration>,
    /// The smallest sample: the path without its queue.
    min_rtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    /// Consecutive timeouts since the last new acknowledgement: the timeout doubles each.
    backoff: u32,
    min_rto: Duration,
    max_rto: Duration,
}

/// 2^16 times the RTO is beyond any `max_rto`; stop shifting there.
const MAX_BACKOFF: u32 = 16;

impl Rtt {
    pub fn new(initial: Duration, min_rto: Duration, max_rto: Duration) -> Rtt {
        Rtt {
            srtt: None,
            min_rtt: None,
            rttvar: Duration::ZERO,
            rto: initial.clamp(min_rto, max_rto.max(min_rto)),
            backoff: 0,
            min_rto,
            max_rto: max_rto.max(min_rto),
        }
    }

    /// A round trip measured on a packet sent exactly once (Karn's rule).
    pub fn sample(&mut self, rtt: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                self.rttvar = self.rttvar * 3 / 4 + srtt.abs_diff(rtt) / 4;
                self.srtt = Some(srtt * 7 / 8 + rtt / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        self.rto = (srtt + 4 * self.rttvar).clamp(self.min_rto, self.max_rto);
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The timeout to arm now, backoff included.
    pub fn rto(&self) -> Duration {
        self.rto
            .saturating_mul(1 << self.backoff.min(MAX_BACKOFF))
            .min(self.max_rto)
    }

    pub fn back_off(&mut self) {
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
    }

    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn initial_timeout_then_measured_with_a_floor() {
        let mut r = Rtt::new(ms(1000), ms(500), ms(60_000));
        assert_eq!(r.rto(), ms(1000));
        r.sample(ms(100)); // srtt 100, rttvar 50: 300, raised to the floor
        assert_eq!(r.rto(), ms(500));
        for _ in 0..50 {
            r.sample(ms(400));
        }
        assert!(r.rto() > ms(400) && r.rto() < ms(520), "{:?}", r.rto());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut r = Rtt::new(ms(1000), ms(500), ms(5000));
        r.back_off();
        assert_eq!(r.rto(), ms(2000));
        r.back_off();
        assert_eq!(r.rto(), ms(4000));
        r.back_off();
        assert_eq!(r.rto(), ms(5000));
        for _ in 0..100 {
            r.back_off();
        }
        assert_eq!(r.rto(), ms(5000));
        r.reset_backoff();
        assert_eq!(r.rto(), ms(1000));
    }
}
