//! Virtual time.
//!
//! The simulator counts time as nanoseconds since the start of the run ([`SimTime`]).
//! The protocol cores take `std::time::Instant`, so a [`Clock`] turns virtual time into
//! instants as `base + offset`: the base is taken once, and nothing ever reads the real
//! clock again, so two runs see the same sequence of offsets.

use std::time::{Duration, Instant};

/// A point in virtual time: nanoseconds since the start of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimTime(u64);

impl SimTime {
    pub const ZERO: SimTime = SimTime(0);
    pub const MAX: SimTime = SimTime(u64::MAX);

    pub const fn from_nanos(nanos: u64) -> Self {
        SimTime(nanos)
    }
    pub const fn from_millis(ms: u64) -> Self {
        SimTime(ms * 1_000_000)
    }
    pub const fn from_secs(s: u64) -> Self {
        SimTime(s * 1_000_000_000)
    }
    pub fn from_secs_f64(s: f64) -> Self {
        SimTime((s.max(0.0) * 1e9) as u64)
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
    pub fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }
    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: SimTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for SimTime {
    type Output = SimTime;
    fn add(self, d: Duration) -> SimTime {
        // Saturate rather than wrap: "never" must stay later than everything.
        SimTime(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

impl std::fmt::Display for SimTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}s", self.as_secs_f64())
    }
}

/// Converts between virtual time and the `Instant`s the cores are fed with.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// Takes the one real instant the run is anchored on. Only differences to it are ever
    /// observed by the cores, so the real value does not leak into the trace.
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
        }
    }

    pub fn instant(&self, t: SimTime) -> Instant {
        self.base + t.as_duration()
    }

    /// The virtual time of an instant a core handed back (e.g. from `poll_timeout`).
    /// Instants before the base map to zero.
    pub fn sim_time(&self, i: Instant) -> SimTime {
        let d = i.saturating_duration_since(self.base);
        SimTime(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_through_virtual_time() {
        let clock = Clock::new();
        for t in [0, 1, 999_999_999, 3_600_000_000_000] {
            let st = SimTime::from_nanos(t);
            assert_eq!(clock.sim_time(clock.instant(st)), st);
        }
    }

    #[test]
    fn adding_durations_saturates() {
        let t = SimTime::from_secs(5) + Duration::from_millis(250);
        assert_eq!(t.as_nanos(), 5_250_000_000);
        assert_eq!(SimTime::MAX + Duration::from_secs(1), SimTime::MAX);
    }
}
