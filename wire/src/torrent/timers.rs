//! Every deadline of a torrent in one table (quinn's `TimerTable`): the core's own (PEX,
//! resume saves) and those of the machines it drives (the piece engine or the metadata
//! fetcher, the dial policy), refreshed after each input. `poll_timeout` is its minimum;
//! `handle_timeout` wakes only the machines whose deadline has come.

use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Offer connected peers to PEX.
    Pex,
    /// Save resume data if pieces arrived.
    Resume,
    /// The piece engine's or the metadata fetcher's next deadline.
    Phase,
    /// The dial policy's next retry.
    Dial,
}

impl Timer {
    const ALL: [Timer; 4] = [Timer::Pex, Timer::Resume, Timer::Phase, Timer::Dial];
}

#[derive(Debug, Default, Clone)]
pub struct TimerTable {
    at: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    pub fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.at[t as usize] = at;
    }

    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.at[t as usize]
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// The timers due at `now`, each cleared (the owner sets it again).
    pub fn expired(&mut self, now: Instant) -> impl Iterator<Item = Timer> {
        let mut due = Vec::new();
        for t in Timer::ALL {
            if self.at[t as usize].is_some_and(|at| at <= now) {
                self.at[t as usize] = None;
                due.push(t);
            }
        }
        due.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_wins_and_expired_ones_are_cleared() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Pex, Some(t0 + Duration::from_secs(5)));
        t.set(Timer::Dial, Some(t0 + Duration::from_secs(1)));
        t.set(Timer::Phase, None);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.expired(t0).count(), 0);
        let due: Vec<Timer> = t.expired(t0 + Duration::from_secs(2)).collect();
        assert_eq!(due, vec![Timer::Dial]);
        assert_eq!(t.get(Timer::Dial), None);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(5)));
    }
}
