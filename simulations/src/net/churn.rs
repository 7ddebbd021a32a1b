//! Churn: how long hosts stay online and how long they stay away.
//!
//! Measurements of Mainline and KAD (Stutzbach & Rejaie, "Understanding churn in
//! peer-to-peer networks", IMC 2006) fit session lengths with a Weibull of shape well below
//! one: most sessions last minutes, a few last days. Offline gaps are drawn the same way
//! with their own scale.

use crate::rng::{weibull, SimRng};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct ChurnConfig {
    /// Weibull scale of session lengths (the median is scale * ln(2)^(1/shape)).
    pub session_scale: Duration,
    pub session_shape: f64,
    pub offline_scale: Duration,
    pub offline_shape: f64,
}

impl ChurnConfig {
    /// Median session about 30 minutes, median absence about 15 minutes: a harsh hour for a
    /// DHT, roughly what Mainline sees from its many short-lived clients.
    pub fn mainline_like() -> Self {
        ChurnConfig {
            session_scale: Duration::from_secs(3746),
            session_shape: 0.5,
            offline_scale: Duration::from_secs(1873),
            offline_shape: 0.5,
        }
    }

    pub fn session(&self, rng: &mut SimRng) -> Duration {
        Duration::from_secs_f64(weibull(
            rng,
            self.session_scale.as_secs_f64(),
            self.session_shape,
        ))
    }

    pub fn offline(&self, rng: &mut SimRng) -> Duration {
        Duration::from_secs_f64(weibull(
            rng,
            self.offline_scale.as_secs_f64(),
            self.offline_shape,
        ))
    }

    /// Share of time a host is online in steady state.
    pub fn availability(&self) -> f64 {
        // Mean of Weibull = scale * Gamma(1 + 1/shape); for equal shapes the gamma cancels.
        let s = self.session_scale.as_secs_f64();
        let o = self.offline_scale.as_secs_f64();
        if (self.session_shape - self.offline_shape).abs() < 1e-12 {
            s / (s + o)
        } else {
            f64::NAN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    #[test]
    fn mainline_like_sessions_have_a_30_minute_median_and_a_heavy_tail() {
        let c = ChurnConfig::mainline_like();
        let mut rng = stream(9, "churn");
        let mut s: Vec<f64> = (0..20_000)
            .map(|_| c.session(&mut rng).as_secs_f64())
            .collect();
        s.sort_by(f64::total_cmp);
        let median = s[s.len() / 2] / 60.0;
        assert!(
            (25.0..35.0).contains(&median),
            "median session {median} min"
        );
        let p99 = s[s.len() * 99 / 100] / 3600.0;
        assert!(p99 > 12.0, "p99 session {p99} h should be many hours");
        assert!((c.availability() - 2.0 / 3.0).abs() < 0.01);
    }
}
