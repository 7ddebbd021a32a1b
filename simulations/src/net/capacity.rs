//! Per-host upload and download capacity as two FIFO serialisation queues.
//!
//! A message of `s` bytes leaves the sender when its uplink has finished everything queued
//! before it plus `s / upload` seconds; after the path delay it enters the receiver's
//! downlink, which serialises arrivals the same way at `s / download`. This is the classic
//! store-and-forward picture of access links being the bottleneck (the assumption behind
//! the fluid bound for P2P distribution), cheap enough for thousands of hosts and exact
//! about who waits for whom.

use crate::time::SimTime;
use std::time::Duration;

/// Bytes per second; `f64::INFINITY` means the link never queues.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capacity {
    pub upload: f64,
    pub download: f64,
}

impl Capacity {
    pub const UNLIMITED: Capacity = Capacity {
        upload: f64::INFINITY,
        download: f64::INFINITY,
    };
}

#[derive(Clone, Debug)]
pub struct AccessLink {
    pub capacity: Capacity,
    up_free_at: SimTime,
    down_free_at: SimTime,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

fn serialisation(bytes: usize, rate: f64) -> Duration {
    if rate.is_infinite() {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(bytes as f64 / rate)
    }
}

impl AccessLink {
    pub fn new(capacity: Capacity) -> Self {
        AccessLink {
            capacity,
            up_free_at: SimTime::ZERO,
            down_free_at: SimTime::ZERO,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// Queues `bytes` on the uplink at `now`; returns when the last byte has left.
    pub fn send(&mut self, now: SimTime, bytes: usize) -> SimTime {
        let start = self.up_free_at.max(now);
        self.up_free_at = start + serialisation(bytes, self.capacity.upload);
        self.bytes_up += bytes as u64;
        self.up_free_at
    }

    /// Queues `bytes` arriving at `now` on the downlink; returns when the last byte is in.
    pub fn receive(&mut self, now: SimTime, bytes: usize) -> SimTime {
        let start = self.down_free_at.max(now);
        self.down_free_at = start + serialisation(bytes, self.capacity.download);
        self.bytes_down += bytes as u64;
        self.down_free_at
    }

    /// How long the uplink is already busy past `now` (what a sender could see as backlog).
    pub fn upload_backlog(&self, now: SimTime) -> Duration {
        self.up_free_at.saturating_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_serialises_back_to_back_messages() {
        let mut l = AccessLink::new(Capacity {
            upload: 1000.0,
            download: f64::INFINITY,
        });
        assert_eq!(l.send(SimTime::ZERO, 500), SimTime::from_millis(500));
        // Queued behind the first message, not sent in parallel.
        assert_eq!(
            l.send(SimTime::from_millis(100), 500),
            SimTime::from_secs(1)
        );
        // After an idle gap the queue starts fresh.
        assert_eq!(l.send(SimTime::from_secs(5), 1000), SimTime::from_secs(6));
        assert_eq!(l.bytes_up, 2000);
    }

    #[test]
    fn unlimited_links_add_no_delay() {
        let mut l = AccessLink::new(Capacity::UNLIMITED);
        let t = SimTime::from_millis(7);
        assert_eq!(l.send(t, 1 << 20), t);
        assert_eq!(l.receive(t, 1 << 20), t);
    }

    #[test]
    fn downlink_is_the_bottleneck_when_slower() {
        let mut l = AccessLink::new(Capacity {
            upload: f64::INFINITY,
            download: 100.0,
        });
        assert_eq!(l.receive(SimTime::ZERO, 100), SimTime::from_secs(1));
        assert_eq!(l.receive(SimTime::ZERO, 100), SimTime::from_secs(2));
    }
}
