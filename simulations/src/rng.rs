//! Seeded randomness and the few distributions the network model needs.
//!
//! Every consumer gets its own stream derived from the run seed and a label, so adding a
//! draw in one place (say, churn) does not shift the numbers another (latency) sees.
//! The distributions are written out here (a handful of lines each) rather than pulled in.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type SimRng = ChaCha8Rng;

/// A fresh RNG for one purpose of one run.
pub fn stream(seed: u64, label: &str) -> SimRng {
    SimRng::seed_from_u64(derive_seed(seed, label))
}

/// Mixes a label into a seed (FNV-1a over the label, then splitmix64).
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(h)
}

/// A good 64-bit mixer: a stateless hash from u64 to u64.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 random bits to a uniform float in the open interval (0, 1).
pub fn unit_open(bits: u64) -> f64 {
    ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A standard normal draw from two uniforms (Box-Muller).
pub fn normal_from_uniforms(u1: f64, u2: f64) -> f64 {
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    normal_from_uniforms(unit_open(rng.gen()), unit_open(rng.gen()))
}

/// Log-normal with the given median and shape `sigma` (the sd of the underlying normal).
pub fn log_normal(rng: &mut impl Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * standard_normal(rng)).exp()
}

/// Weibull with `scale` and `shape`; shape < 1 gives the heavy tail measured for P2P
/// session lengths (many short sessions, a few very long ones).
pub fn weibull(rng: &mut impl Rng, scale: f64, shape: f64) -> f64 {
    let u = unit_open(rng.gen());
    scale * (-u.ln()).powf(1.0 / shape)
}

/// Pareto with minimum `x_min` and tail index `alpha`.
pub fn pareto(rng: &mut impl Rng, x_min: f64, alpha: f64) -> f64 {
    x_min / unit_open(rng.gen()).powf(1.0 / alpha)
}

pub fn exponential(rng: &mut impl Rng, mean: f64) -> f64 {
    -mean * unit_open(rng.gen()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn streams_differ_by_label_and_seed_but_repeat_exactly() {
        let a: u64 = stream(1, "latency").gen();
        let b: u64 = stream(1, "churn").gen();
        let c: u64 = stream(2, "latency").gen();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, stream(1, "latency").gen::<u64>());
    }

    #[test]
    fn log_normal_has_the_requested_median() {
        let mut rng = stream(3, "t");
        let m = median(
            (0..20_000)
                .map(|_| log_normal(&mut rng, 50.0, 0.5))
                .collect(),
        );
        assert!((m - 50.0).abs() < 2.0, "median {m}");
    }

    #[test]
    fn weibull_median_matches_closed_form() {
        // Median of Weibull(scale, k) is scale * ln(2)^(1/k).
        let mut rng = stream(4, "t");
        let (scale, k) = (3600.0, 0.5);
        let m = median((0..20_000).map(|_| weibull(&mut rng, scale, k)).collect());
        let expected = scale * std::f64::consts::LN_2.powf(1.0 / k);
        assert!(
            (m / expected - 1.0).abs() < 0.05,
            "median {m} vs {expected}"
        );
    }

    #[test]
    fn pareto_and_exponential_medians() {
        let mut rng = stream(5, "t");
        let m = median((0..20_000).map(|_| pareto(&mut rng, 10.0, 2.0)).collect());
        let expected = 10.0 * 2f64.powf(0.5);
        assert!((m / expected - 1.0).abs() < 0.05, "pareto median {m}");
        let m = median((0..20_000).map(|_| exponential(&mut rng, 10.0)).collect());
        assert!((m / (10.0 * std::f64::consts::LN_2) - 1.0).abs() < 0.05);
    }
}
