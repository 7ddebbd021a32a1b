//! LEDBAT congestion control (RFC 6817, as BEP 29 uses it): keep the queue we build at the
//! bottleneck near a target delay (100 ms), yield to TCP, and halve on loss.
//!
//! The one-way delay samples are the peer's `timestamp_difference` fields: "its clock minus
//! our send timestamp". The clocks are not synchronised, so a sample is the one-way delay
//! plus an unknown constant offset; subtracting the smallest sample seen recently (the base
//! delay) leaves the queueing delay. The base delay is the minimum over the current and the
//! previous minute, so a minimum older than two minutes is forgotten: clock drift and route
//! changes cannot pin it to a stale value.
//!
//! Beyond the RFC, like libtorrent, the window starts in slow start (grows by the bytes
//! acknowledged) and leaves it on the first loss or once the queueing delay reaches half
//! the target, so that a fast path is filled in a few round trips instead of hundreds.
//!
//! A base delay that forgets has a catch: a flow that keeps its queue at the target for
//! two minutes never sees the empty-queue delay again, takes the standing queue for the
//! base, and adds another target's worth on top (the queue creeps up by 100 ms every two
//! minutes). So, as LEDBAT++ does, the window drops to two packets for two round trips
//! every `SLOWDOWN_INTERVAL` (well within a minute): the queue drains, every minute's
//! minimum is the true base, and the window comes back by slow start to where it was.

use std::time::{Duration, Instant};

/// How often the window drops to let the queue drain (LEDBAT++'s periodic slowdown).
/// Every minute's minimum then includes an empty-queue sample.
pub const SLOWDOWN_INTERVAL: Duration = Duration::from_secs(20);
/// Window during a slowdown, in packets, and its length in round trips.
const SLOWDOWN_PACKETS: usize = 2;
const SLOWDOWN_RTTS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slowdown {
    /// Still in the first slow start: nothing scheduled yet.
    NotYet,
    Due(Instant),
    Draining {
        until: Instant,
        saved_cwnd: usize,
    },
}

/// Per-minute minima of the delay samples: the current minute and the one before.
#[derive(Clone, Debug)]
pub struct BaseDelay {
    minute_started: Option<Instant>,
    /// `[previous minute, current minute]`; `None` when no sample fell into it.
    minima: [Option<u32>; 2],
}

/// Samples wrap around `u32` (the clock offset is arbitrary): `a` is smaller than `b` when
/// it is less than half the circle behind it.
fn wrapping_less(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn wrapping_min(a: u32, b: u32) -> u32 {
    if wrapping_less(b, a) {
        b
    } else {
        a
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl Default for BaseDelay {
    fn default() -> Self {
        BaseDelay::new()
    }
}

impl BaseDelay {
    pub fn new() -> BaseDelay {
        BaseDelay {
            minute_started: None,
            minima: [None, None],
        }
    }

    /// Records one sample taken at `now`.
    pub fn add(&mut self, now: Instant, sample: u32) {
        let started = *self.minute_started.get_or_insert(now);
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= 2 * MINUTE {
            self.minima = [None, None];
            self.minute_started = Some(now);
        } else if elapsed >= MINUTE {
            self.minima = [self.minima[1], None];
            self.minute_started = Some(started + MINUTE);
        }
        let current = &mut self.minima[1];
        *current = Some(current.map_or(sample, |m| wrapping_min(m, sample)));
    }

    /// The smallest sample of the last one to two minutes.
    pub fn get(&self) -> Option<u32> {
        match self.minima {
            [Some(a), Some(b)] => Some(wrapping_min(a, b)),
            [a, b] => a.or(b),
        }
    }
}

/// The congestion window of one connection, in bytes.
#[derive(Clone, Debug)]
pub struct Ledbat {
    cwnd: usize,
    mss: usize,
    max_cwnd: usize,
    target_us: u32,
    slow_start: bool,
    /// Where a slow start stops (the window before a slowdown); `None`: at the delay.
    ssthresh: Option<usize>,
    slowdown: Slowdown,
    base: BaseDelay,
    /// The last few samples: the current delay is their minimum (RFC 6817's filter, which
    /// drops the odd sample delayed by something other than our queue).
    recent: [Option<u32>; RECENT_SAMPLES],
    recent_next: usize,
}

const RECENT_SAMPLES: usize = 3;
/// RFC 6817's GAIN: at most one MSS of growth per round trip when the queue is empty.
const GAIN: f64 = 1.0;
/// RFC 6817's ALLOWED_INCREASE: the window may exceed what is in flight by this many MSS
/// (an application-limited sender does not earn a huge window it never used).
const ALLOWED_INCREASE: usize = 2;
/// The window never drops below this many MSS: BEP 29 lets one packet through at any time.
const MIN_CWND_PACKETS: usize = 1;
const INITIAL_CWND_PACKETS: usize = 2;

impl Ledbat {
    /// `mss`: the payload of a full packet; `max_cwnd`: the cap in bytes; `target`: the
    /// queueing delay to aim for (100 ms in BEP 29).
    pub fn new(mss: usize, max_cwnd: usize, target: Duration) -> Ledbat {
        let mss = mss.max(1);
        Ledbat {
            cwnd: (INITIAL_CWND_PACKETS * mss).min(max_cwnd.max(mss)),
            mss,
            max_cwnd: max_cwnd.max(mss * MIN_CWND_PACKETS),
            target_us: target.as_micros().clamp(1, u32::MAX as u128) as u32,
            slow_start: true,
            ssthresh: None,
            slowdown: Slowdown::NotYet,
            base: BaseDelay::new(),
            recent: [None; RECENT_SAMPLES],
            recent_next: 0,
        }
    }

    /// The window: bytes that may be in flight.
    pub fn window(&self) -> usize {
        self.cwnd
    }

    pub fn min_window(&self) -> usize {
        self.mss * MIN_CWND_PACKETS
    }

    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// Records a one-way delay sample (the peer's `timestamp_difference`, 0 means none).
    pub fn on_delay_sample(&mut self, now: Instant, sample_us: u32) {
        self.base.add(now, sample_us);
        self.recent[self.recent_next] = Some(sample_us);
        self.recent_next = (self.recent_next + 1) % RECENT_SAMPLES;
    }

    /// The queueing delay estimate: the current delay minus the base delay.
    pub fn queuing_delay(&self) -> Option<Duration> {
        let base = self.base.get()?;
        let current = self.recent.iter().flatten().copied().reduce(wrapping_min)?;
        let d = current.wrapping_sub(base) as i32;
        Some(Duration::from_micros(d.max(0) as u64))
    }

    /// Whether the window is down to let the queue drain.
    pub fn in_slowdown(&self) -> bool {
        matches!(self.slowdown, Slowdown::Draining { .. })
    }

    /// `bytes_acked` new bytes were acknowledged at `now` while `flight` bytes were in
    /// flight; `srtt` times the slowdowns.
    pub fn on_ack(&mut self, now: Instant, bytes_acked: usize, flight: usize, srtt: Duration) {
        if self.run_slowdown(now, srtt) || bytes_acked == 0 {
            return;
        }
        let queuing = self.queuing_delay().map_or(0, |d| d.as_micros() as u64);
        let target = self.target_us as u64;
        if self.slow_start && queuing * 2 >= target {
            self.leave_slow_start(now);
        }
        let grown = if self.slow_start {
            let grown = self.cwnd + bytes_acked;
            if let Some(threshold) = self.ssthresh.filter(|&t| grown >= t) {
                self.leave_slow_start(now);
                threshold.max(self.cwnd)
            } else {
                grown
            }
        } else {
            // RFC 6817: cwnd += GAIN * off_target * bytes_acked * MSS / cwnd, with
            // off_target in [-1, 1]: at most one MSS more or less per window acked.
            let off_target = ((target as f64 - queuing as f64) / target as f64).clamp(-1.0, 1.0);
            let delta = GAIN * off_target * bytes_acked as f64 * self.mss as f64 / self.cwnd as f64;
            (self.cwnd as f64 + delta).max(0.0) as usize
        };
        let grown = if grown > self.cwnd {
            grown.min(self.cwnd.max(flight + ALLOWED_INCREASE * self.mss))
        } else {
            grown
        };
        self.cwnd = grown.clamp(self.min_window(), self.max_cwnd);
    }

    fn leave_slow_start(&mut self, now: Instant) {
        self.slow_start = false;
        self.ssthresh = None;
        if self.slowdown == Slowdown::NotYet {
            self.slowdown = Slowdown::Due(now + SLOWDOWN_INTERVAL);
        }
    }

    /// Starts or ends a slowdown when it is time; true while one holds the window down.
    fn run_slowdown(&mut self, now: Instant, srtt: Duration) -> bool {
        match self.slowdown {
            Slowdown::Due(at) if now >= at && !self.slow_start => {
                let until = now + srtt.max(Duration::from_millis(1)) * SLOWDOWN_RTTS;
                self.slowdown = Slowdown::Draining {
                    until,
                    saved_cwnd: self.cwnd,
                };
                self.cwnd = (SLOWDOWN_PACKETS * self.mss).min(self.cwnd);
                true
            }
            Slowdown::Draining { until, saved_cwnd } => {
                if now < until {
                    return true;
                }
                // Back by slow start, up to where it was.
                self.slowdown = Slowdown::Due(now + SLOWDOWN_INTERVAL);
                self.slow_start = true;
                self.ssthresh = Some(saved_cwnd);
                false
            }
            _ => false,
        }
    }

    /// A packet was lost (fast retransmit): halve the window (BEP 29's loss factor 0.5).
    pub fn on_loss(&mut self) {
        if let Slowdown::Draining { saved_cwnd, .. } = &mut self.slowdown {
            *saved_cwnd = (*saved_cwnd / 2).max(self.mss * MIN_CWND_PACKETS);
            return;
        }
        self.slow_start = false;
        self.ssthresh = None;
        self.cwnd = (self.cwnd / 2).max(self.min_window());
    }

    /// The loss that brought the window down from `before` was no loss (a spurious
    /// retransmission): give the window back.
    pub fn undo_loss(&mut self, before: usize) {
        self.cwnd = self.cwnd.max(before.min(self.max_cwnd));
    }

    /// The retransmission timer fired: start again from the minimum window, and slow start
    /// back up to half the window we had (as TCP does after a timeout).
    pub fn on_timeout(&mut self) {
        let mut before = self.cwnd;
        if let Slowdown::Draining { until, saved_cwnd } = self.slowdown {
            before = saved_cwnd;
            self.slowdown = Slowdown::Due(until + SLOWDOWN_INTERVAL);
        }
        self.slow_start = true;
        self.ssthresh = Some((before / 2).max(self.min_window()));
        self.cwnd = self.min_window();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1000;
    const RTT: Duration = Duration::from_millis(50);

    fn ledbat() -> (Ledbat, Instant) {
        let mut l = Ledbat::new(MSS, 1 << 20, Duration::from_millis(100));
        l.slow_start = false;
        l.cwnd = 10 * MSS;
        (l, Instant::now())
    }

    /// Feeds a window's worth of acks with the given queueing delay over a base of 5 s
    /// (the clock offset) and returns the new window.
    fn one_window(l: &mut Ledbat, now: Instant, queuing_ms: u32) -> usize {
        let base = 5_000_000u32;
        l.on_delay_sample(now, base);
        for _ in 0..RECENT_SAMPLES {
            l.on_delay_sample(now, base + queuing_ms * 1000);
        }
        let w = l.window();
        for _ in 0..w / MSS {
            l.on_ack(now, MSS, l.window(), RTT);
        }
        l.window()
    }

    #[test]
    fn grows_below_target_and_shrinks_above() {
        let (mut l, now) = ledbat();
        let w0 = l.window();
        let w1 = one_window(&mut l, now, 0);
        assert!(w1 > w0 && w1 <= w0 + MSS + 1, "{w0} -> {w1}");
        let w2 = one_window(&mut l, now, 50);
        assert!(
            w2 > w1 && w2 < w1 + MSS,
            "half the target: half the growth, {w1} -> {w2}"
        );
        let w3 = one_window(&mut l, now, 100);
        assert!(
            w3.abs_diff(w2) <= 1,
            "at the target the window holds: {w2} -> {w3}"
        );
        let w4 = one_window(&mut l, now, 300);
        // About one MSS less per window (a bit more: the window shrinks as it is acked).
        assert!(w4 < w3 && w3 - w4 <= MSS + MSS / 10, "{w3} -> {w4}");
    }

    #[test]
    fn never_below_one_packet_nor_above_the_cap() {
        let (mut l, now) = ledbat();
        for _ in 0..100 {
            one_window(&mut l, now, 1000);
        }
        assert_eq!(l.window(), MSS);
        let mut l = Ledbat::new(MSS, 20 * MSS, Duration::from_millis(100));
        for _ in 0..100 {
            one_window(&mut l, now, 0);
        }
        assert_eq!(l.window(), 20 * MSS);
    }

    #[test]
    fn halves_on_loss_and_collapses_on_timeout() {
        let (mut l, _) = ledbat();
        l.on_loss();
        assert_eq!(l.window(), 5 * MSS);
        l.on_timeout();
        assert_eq!(l.window(), MSS);
        assert!(l.in_slow_start(), "back up by slow start");
        let now = Instant::now();
        for _ in 0..10 {
            if !l.in_slow_start() {
                break;
            }
            l.on_ack(now, MSS, l.window(), RTT);
        }
        assert_eq!(
            l.window(),
            5 * MSS / 2,
            "to half the window before the timeout"
        );
        assert!(!l.in_slow_start());
        l.on_timeout();
        l.on_loss();
        assert_eq!(l.window(), MSS);
    }

    #[test]
    fn slow_start_doubles_until_delay_builds() {
        let now = Instant::now();
        let mut l = Ledbat::new(MSS, 1 << 20, Duration::from_millis(100));
        assert!(l.in_slow_start());
        let w = one_window(&mut l, now, 0);
        assert_eq!(w, 4 * MSS);
        one_window(&mut l, now, 60);
        assert!(!l.in_slow_start());
    }

    #[test]
    fn application_limited_sender_does_not_inflate_the_window() {
        let (mut l, now) = ledbat();
        for _ in 0..1000 {
            l.on_ack(now, MSS, MSS, RTT); // only one packet ever in flight
        }
        assert_eq!(l.window(), 10 * MSS);
    }

    #[test]
    fn the_window_drops_periodically_to_drain_the_queue_then_comes_back() {
        let t0 = Instant::now();
        let mut l = Ledbat::new(MSS, 1 << 20, Duration::from_millis(100));
        // Slow start ends at the delay; the first slowdown is due an interval later.
        one_window(&mut l, t0, 0);
        let peak = one_window(&mut l, t0, 60);
        assert!(!l.in_slow_start());
        let t1 = t0 + SLOWDOWN_INTERVAL;
        one_window(&mut l, t1 - Duration::from_millis(1), 100);
        assert!(!l.in_slowdown());
        let before = l.window();
        assert!(before >= peak);
        l.on_ack(t1, MSS, before, RTT);
        assert!(l.in_slowdown());
        assert_eq!(l.window(), 2 * MSS);
        // Two round trips at two packets, whatever the acknowledgements say.
        l.on_ack(t1 + RTT, MSS, 2 * MSS, RTT);
        assert_eq!(l.window(), 2 * MSS);
        // The queue drained meanwhile (the samples say so); then slow start back to the
        // window it had, and the next slowdown an interval later.
        let t2 = t1 + 2 * RTT;
        for _ in 0..RECENT_SAMPLES {
            l.on_delay_sample(t2, 5_000_000);
        }
        l.on_ack(t2, MSS, 2 * MSS, RTT);
        assert!(!l.in_slowdown() && l.in_slow_start());
        for _ in 0..100 {
            if !l.in_slow_start() {
                break;
            }
            l.on_ack(t2, MSS, l.window(), RTT);
        }
        assert!(!l.in_slow_start());
        assert!(
            l.window().abs_diff(before) <= MSS,
            "{} vs {before}",
            l.window()
        );
        l.on_ack(
            t2 + SLOWDOWN_INTERVAL - Duration::from_millis(1),
            MSS,
            l.window(),
            RTT,
        );
        assert!(!l.in_slowdown());
        l.on_ack(t2 + SLOWDOWN_INTERVAL, MSS, l.window(), RTT);
        assert!(l.in_slowdown());
    }

    #[test]
    fn base_delay_is_the_minimum_and_forgets_after_two_minutes() {
        let t0 = Instant::now();
        let mut b = BaseDelay::new();
        b.add(t0, 500);
        b.add(t0 + Duration::from_secs(10), 300);
        b.add(t0 + Duration::from_secs(20), 400);
        assert_eq!(b.get(), Some(300));
        // The next minute still remembers the first one's minimum.
        b.add(t0 + Duration::from_secs(70), 900);
        assert_eq!(b.get(), Some(300));
        // Two minutes on, only the newer minima count: a clock that drifted upwards is
        // followed.
        b.add(t0 + Duration::from_secs(125), 950);
        assert_eq!(b.get(), Some(900));
        b.add(t0 + Duration::from_secs(185), 1000);
        assert_eq!(b.get(), Some(950));
        // A long silence forgets everything.
        b.add(t0 + Duration::from_secs(600), 2000);
        assert_eq!(b.get(), Some(2000));
    }

    #[test]
    fn base_delay_survives_wrapping_samples() {
        let t0 = Instant::now();
        let mut b = BaseDelay::new();
        b.add(t0, u32::MAX - 10);
        b.add(t0, 5); // 16 µs later on the circle: not a new minimum
        assert_eq!(b.get(), Some(u32::MAX - 10));
        let mut l = Ledbat::new(MSS, 1 << 20, Duration::from_millis(100));
        l.on_delay_sample(t0, u32::MAX - 10);
        l.on_delay_sample(t0, 5);
        l.on_delay_sample(t0, 5);
        l.on_delay_sample(t0, 5);
        assert_eq!(l.queuing_delay(), Some(Duration::from_micros(16)));
    }
}
