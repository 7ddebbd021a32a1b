//! A running hash of everything that happened in a run, to check determinism cheaply:
//! two runs with the same seed must end with the same hash.

/// FNV-1a, 64 bit: stable across platforms and Rust versions (std's hasher is not promised
/// to be), and fast enough to fold in every delivered payload.
#[derive(Clone, Debug)]
pub struct TraceHash {
    state: u64,
    events: u64,
}

impl TraceHash {
    pub fn new() -> Self {
        TraceHash {
            state: 0xcbf2_9ce4_8422_2325,
            events: 0,
        }
    }

    pub fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.state ^= u64::from(b);
            self.state = self.state.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// One event: its time, a kind tag, the host it concerns and its payload.
    pub fn event(&mut self, at: u64, kind: u8, host: u32, payload: &[u8]) {
        self.events += 1;
        self.u64(at);
        self.bytes(&[kind]);
        self.bytes(&host.to_le_bytes());
        self.u64(payload.len() as u64);
        self.bytes(payload);
    }

    pub fn value(&self) -> u64 {
        self.state
    }

    pub fn events(&self) -> u64 {
        self.events
    }
}

impl Default for TraceHash {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_content_change_the_hash() {
        let mut a = TraceHash::new();
        a.event(1, 0, 1, b"x");
        a.event(2, 0, 2, b"y");
        let mut b = TraceHash::new();
        b.event(2, 0, 2, b"y");
        b.event(1, 0, 1, b"x");
        assert_ne!(a.value(), b.value());
        let mut c = TraceHash::new();
        c.event(1, 0, 1, b"x");
        c.event(2, 0, 2, b"y");
        assert_eq!(a.value(), c.value());
        assert_eq!(a.events(), 2);
    }
}
