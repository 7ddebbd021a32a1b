//! Per-pair latency: stable for a pair, log-normal across pairs.
//!
//! One-way delay = access delay of the sender + access delay of the receiver + a path
//! component for the pair. Access delays (the last mile: DSL, cable, Wi-Fi) are drawn once
//! per host; the path component (distance, routing) is a pure function of the run seed and
//! the unordered pair, so it needs no per-pair storage and is the same in both directions.
//! Both parts are log-normal, the usual fit for internet RTTs: a median near the middle,
//! a long right tail of far-away or badly connected hosts.

use crate::net::address::HostId;
use crate::rng::{log_normal, normal_from_uniforms, splitmix64, unit_open, SimRng};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct LatencyConfig {
    /// Median one-way access delay per host.
    pub access_median: Duration,
    pub access_sigma: f64,
    /// Median one-way path delay per pair.
    pub path_median: Duration,
    pub path_sigma: f64,
}

impl Default for LatencyConfig {
    /// Median RTT about 100 ms: 2 x (10 + 10 + 30) ms.
    fn default() -> Self {
        LatencyConfig {
            access_median: Duration::from_millis(10),
            access_sigma: 0.6,
            path_median: Duration::from_millis(30),
            path_sigma: 0.5,
        }
    }
}

pub struct LatencyModel {
    config: LatencyConfig,
    pair_seed: u64,
    /// Access delay per host, in nanoseconds (u32 is enough up to 4 s and halves memory).
    access_ns: Vec<u32>,
}

impl LatencyModel {
    pub fn new(config: LatencyConfig, hosts: usize, rng: &mut SimRng) -> Self {
        use rand::Rng;
        let median = config.access_median.as_secs_f64();
        let access_ns = (0..hosts)
            .map(|_| (log_normal(rng, median, config.access_sigma) * 1e9).min(4e9) as u32)
            .collect();
        LatencyModel {
            config,
            pair_seed: rng.gen(),
            access_ns,
        }
    }

    /// Adds a host (e.g. an attacker joining later) with its own access delay.
    pub fn push_host(&mut self, rng: &mut SimRng) {
        let median = self.config.access_median.as_secs_f64();
        self.access_ns
            .push((log_normal(rng, median, self.config.access_sigma) * 1e9).min(4e9) as u32);
    }

    pub fn one_way(&self, a: HostId, b: HostId) -> Duration {
        let access = u64::from(self.access_ns[a.index()]) + u64::from(self.access_ns[b.index()]);
        Duration::from_nanos(access) + self.path(a, b)
    }

    pub fn rtt(&self, a: HostId, b: HostId) -> Duration {
        self.one_way(a, b) * 2
    }

    fn path(&self, a: HostId, b: HostId) -> Duration {
        let (lo, hi) = if a <= b { (a.0, b.0) } else { (b.0, a.0) };
        let h1 = splitmix64(self.pair_seed ^ (u64::from(lo) << 32 | u64::from(hi)));
        let h2 = splitmix64(h1);
        let z = normal_from_uniforms(unit_open(h1), unit_open(h2));
        let secs = self.config.path_median.as_secs_f64() * (self.config.path_sigma * z).exp();
        Duration::from_secs_f64(secs.min(4.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    #[test]
    fn pair_latency_is_symmetric_and_stable() {
        let m = LatencyModel::new(LatencyConfig::default(), 100, &mut stream(1, "lat"));
        for (a, b) in [(0, 1), (5, 77), (99, 3)] {
            let (a, b) = (HostId(a), HostId(b));
            assert_eq!(m.one_way(a, b), m.one_way(b, a));
            assert_eq!(m.one_way(a, b), m.one_way(a, b));
        }
    }

    #[test]
    fn median_rtt_is_about_100ms_with_a_long_tail() {
        let n = 2000;
        let m = LatencyModel::new(LatencyConfig::default(), n, &mut stream(2, "lat"));
        let mut rtts: Vec<f64> = (0..n as u32 - 1)
            .flat_map(|a| [(a, a + 1), (a, (a * 7919 + 13) % n as u32)])
            .filter(|(a, b)| a != b)
            .map(|(a, b)| m.rtt(HostId(a), HostId(b)).as_secs_f64() * 1e3)
            .collect();
        rtts.sort_by(f64::total_cmp);
        let p50 = rtts[rtts.len() / 2];
        let p99 = rtts[rtts.len() * 99 / 100];
        assert!((85.0..125.0).contains(&p50), "median RTT {p50} ms");
        assert!(
            p99 > 2.0 * p50,
            "p99 {p99} ms should be a long tail over {p50}"
        );
        assert!(rtts[0] > 10.0, "no RTT below physical sense: {}", rtts[0]);
    }
}
