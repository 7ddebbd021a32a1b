//! The discrete-event simulator: hosts running sans-IO cores on a virtual network.
//!
//! The simulator is independent of any protocol. A host runs an [`App`] (a DHT core, an
//! attacker, a test echo server...) that is fed datagrams and timeouts and asked what to
//! send and when to wake next, exactly like the tokio drivers feed the production cores.
//! The scenario drives the run with [`Simulator::step`], which handles packets and timers
//! internally and hands back only what the scenario cares about: its own scheduled events
//! and the apps' outputs.

use crate::net::address::HostId;
use crate::net::{NetConfig, Network};
use crate::queue::EventQueue;
use crate::time::{Clock, SimTime};
use crate::trace::TraceHash;
use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

/// A datagram an app wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// A sans-IO protocol core as seen by the simulator.
pub trait App {
    /// What the app reports to the scenario (lookup results, ...).
    type Output;
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self, now: Instant) -> Option<Transmit>;
    fn poll_timeout(&mut self) -> Option<Instant>;
    fn poll_output(&mut self) -> Option<Self::Output>;
    /// Takes back the buffer of a datagram it was handed, for reuse (as the tokio driver
    /// hands sent buffers back); the default drops it.
    fn recycle(&mut self, buf: Vec<u8>) {
        drop(buf);
    }
    /// A datagram sent with a forged source address (attackers in DHT scenarios): it
    /// leaves the real host (its uplink and path delay) and arrives as if from `.0`; a NAT
    /// in front of the receiver judges it by the forged address. The default: none.
    fn poll_spoofed(&mut self, _now: Instant) -> Option<(SocketAddrV4, Transmit)> {
        None
    }
}

enum Event<C> {
    /// A datagram reached the receiver's access link.
    Arrive {
        to: HostId,
        from: SocketAddrV4,
        data: Vec<u8>,
    },
    /// The datagram passed the receiver's downlink: hand it to the app.
    Deliver {
        to: HostId,
        from: SocketAddrV4,
        data: Vec<u8>,
    },
    /// The app asked to be woken at this time; `epoch` guards against restarts.
    Wake { host: HostId, epoch: u32 },
    /// Something the scenario scheduled.
    Scenario(C),
}

/// What [`Simulator::step`] hands back to the scenario.
pub enum Step<C, O> {
    Scenario(SimTime, C),
    Output(SimTime, HostId, O),
}

struct Slot<A> {
    app: Option<A>,
    /// When the app's pending wake-up is due (`SimTime::MAX` for none).
    wake_at: SimTime,
    /// Bumped whenever the app is replaced or removed, so stale wake-ups are ignored.
    epoch: u32,
    /// Wake-ups in a row at the same instant: a core that keeps asking to be woken "now"
    /// without making progress would freeze virtual time, so that is caught.
    wakes_at_same_instant: u32,
}

/// More wake-ups than this at one instant for one host means its timer never advances.
const MAX_WAKES_AT_ONE_INSTANT: u32 = 10_000;

/// Counters for reports and throughput measurements.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub events: u64,
    pub deliveries: u64,
    pub wakeups: u64,
    pub stale_wakeups: u64,
}

pub struct Simulator<A: App, C> {
    pub net: Network,
    clock: Clock,
    now: SimTime,
    queue: EventQueue<Event<C>>,
    slots: Vec<Slot<A>>,
    outputs: VecDeque<(HostId, A::Output)>,
    trace: Option<TraceHash>,
    pub stats: SimStats,
}

const KIND_DELIVER: u8 = 1;
const KIND_WAKE: u8 = 2;
const KIND_SCENARIO: u8 = 3;
const KIND_SEND: u8 = 4;

impl<A: App, C> Simulator<A, C> {
    /// A network of `hosts` hosts, none running an app yet.
    pub fn new(config: NetConfig, hosts: usize, seed: u64) -> Self {
        let net = Network::new(config, hosts, seed);
        let slots = (0..hosts)
            .map(|_| Slot {
                app: None,
                wake_at: SimTime::MAX,
                epoch: 0,
                wakes_at_same_instant: 0,
            })
            .collect();
        Simulator {
            net,
            clock: Clock::new(),
            now: SimTime::ZERO,
            queue: EventQueue::new(),
            slots,
            outputs: VecDeque::new(),
            trace: None,
            stats: SimStats::default(),
        }
    }

    /// Records a hash of every event from now on (costs a little time per byte).
    pub fn enable_trace(&mut self) {
        self.trace = Some(TraceHash::new());
    }

    pub fn trace(&self) -> Option<&TraceHash> {
        self.trace.as_ref()
    }

    pub fn now(&self) -> SimTime {
        self.now
    }

    /// The `Instant` the cores see for the current virtual time.
    pub fn instant(&self) -> Instant {
        self.clock.instant(self.now)
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn hosts(&self) -> usize {
        self.slots.len()
    }

    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }

    /// Adds a host at a chosen address (for attackers); `None` if the IP is taken.
    pub fn add_host_at(&mut self, addr: SocketAddrV4) -> Option<HostId> {
        let h = self.net.add_host_at(addr)?;
        self.slots.push(Slot {
            app: None,
            wake_at: SimTime::MAX,
            epoch: 0,
            wakes_at_same_instant: 0,
        });
        Some(h)
    }

    pub fn app(&self, h: HostId) -> Option<&A> {
        self.slots[h.index()].app.as_ref()
    }

    /// Runs `f` on the host's app (e.g. to issue a command), then sends what it queued and
    /// reschedules its timer. This is the one way scenarios should touch an app.
    pub fn with_app<R>(&mut self, h: HostId, f: impl FnOnce(&mut A, Instant) -> R) -> Option<R> {
        let now = self.instant();
        let r = f(self.slots[h.index()].app.as_mut()?, now);
        self.after_input(h);
        Some(r)
    }

    /// Installs (or replaces) the app on a host and marks the host online.
    pub fn start(&mut self, h: HostId, app: A) {
        let slot = &mut self.slots[h.index()];
        slot.app = Some(app);
        slot.wakes_at_same_instant = 0;
        slot.epoch = slot.epoch.wrapping_add(1);
        slot.wake_at = SimTime::MAX;
        self.net.set_online(h, true);
        self.after_input(h);
    }

    /// Takes the host offline: its app is dropped (state lost, memory freed), packets to it
    /// are dropped from now on, and its pending timers are ignored.
    pub fn stop(&mut self, h: HostId) -> Option<A> {
        let slot = &mut self.slots[h.index()];
        slot.epoch = slot.epoch.wrapping_add(1);
        slot.wake_at = SimTime::MAX;
        self.net.set_online(h, false);
        slot.app.take()
    }

    pub fn schedule(&mut self, at: SimTime, event: C) {
        self.queue.push(at.max(self.now), Event::Scenario(event));
    }

    /// Processes events up to and including `until`, returning the next scenario event or
    /// app output; `None` when nothing is left before `until` (the clock then reads `until`).
    pub fn step(&mut self, until: SimTime) -> Option<Step<C, A::Output>> {
        loop {
            if let Some((h, o)) = self.outputs.pop_front() {
                return Some(Step::Output(self.now, h, o));
            }
            match self.queue.peek_time() {
                Some(t) if t <= until => {}
                _ => {
                    self.now = self.now.max(until);
                    return None;
                }
            }
            let (at, event) = self.queue.pop().expect("peeked");
            self.now = at;
            self.stats.events += 1;
            match event {
                Event::Scenario(c) => {
                    if let Some(tr) = &mut self.trace {
                        tr.event(at.as_nanos(), KIND_SCENARIO, 0, &[]);
                    }
                    return Some(Step::Scenario(at, c));
                }
                Event::Arrive { to, from, data } => {
                    if let Ok(done) = self.net.accept(at, to, data.len()) {
                        if done == at {
                            self.deliver(to, from, data);
                        } else {
                            self.queue.push(done, Event::Deliver { to, from, data });
                        }
                    }
                }
                Event::Deliver { to, from, data } => {
                    if self.net.is_online(to) {
                        self.deliver(to, from, data);
                    }
                }
                Event::Wake { host, epoch } => self.wake(host, epoch),
            }
        }
    }

    /// Runs until `until`, discarding scenario events and outputs (for warm-up phases of
    /// tests that schedule nothing of their own).
    pub fn run_until(&mut self, until: SimTime) {
        while self.step(until).is_some() {}
    }

    fn deliver(&mut self, to: HostId, from: SocketAddrV4, data: Vec<u8>) {
        let now = self.instant();
        let Some(app) = self.slots[to.index()].app.as_mut() else {
            return;
        };
        self.stats.deliveries += 1;
        if let Some(tr) = &mut self.trace {
            tr.event(self.now.as_nanos(), KIND_DELIVER, to.0, &data);
        }
        app.handle_datagram(now, SocketAddr::V4(from), &data);
        app.recycle(data);
        self.after_input(to);
    }

    fn wake(&mut self, h: HostId, epoch: u32) {
        let slot = &mut self.slots[h.index()];
        if slot.epoch != epoch || slot.wake_at != self.now {
            self.stats.stale_wakeups += 1;
            return;
        }
        slot.wake_at = SimTime::MAX;
        slot.wakes_at_same_instant += 1;
        assert!(
            slot.wakes_at_same_instant < MAX_WAKES_AT_ONE_INSTANT,
            "host {h:?} asked to be woken at {} {MAX_WAKES_AT_ONE_INSTANT} times without its \
             deadline moving: poll_timeout must move past `now` after handle_timeout(now)",
            self.now
        );
        let now = self.clock.instant(self.now);
        let Some(app) = slot.app.as_mut() else {
            return;
        };
        self.stats.wakeups += 1;
        if let Some(tr) = &mut self.trace {
            tr.event(self.now.as_nanos(), KIND_WAKE, h.0, &[]);
        }
        app.handle_timeout(now);
        self.after_input(h);
    }

    /// After any input to an app: send what it queued, collect its outputs, and make sure
    /// a wake-up is scheduled for its next deadline.
    fn after_input(&mut self, h: HostId) {
        let now_i = self.clock.instant(self.now);
        let now = self.now;
        let slot = &mut self.slots[h.index()];
        let Some(app) = slot.app.as_mut() else {
            return;
        };
        while let Some(t) = app.poll_transmit(now_i) {
            let SocketAddr::V4(to) = t.to else {
                // The virtual network is IPv4 only; an IPv6 destination is unreachable.
                continue;
            };
            if let Some(tr) = &mut self.trace {
                tr.event(now.as_nanos(), KIND_SEND, h.0, &t.data);
            }
            let from = self.net.addr(h);
            if let Ok((dest, at)) = self.net.send_datagram(now, h, to, t.data.len()) {
                self.queue.push(
                    at,
                    Event::Arrive {
                        to: dest,
                        from,
                        data: t.data,
                    },
                );
            }
        }
        while let Some((from, t)) = app.poll_spoofed(now_i) {
            let SocketAddr::V4(to) = t.to else {
                continue;
            };
            if let Some(tr) = &mut self.trace {
                tr.event(now.as_nanos(), KIND_SEND, h.0, &t.data);
            }
            if let Ok((dest, at)) = self
                .net
                .send_datagram_as(now, h, *from.ip(), to, t.data.len())
            {
                self.queue.push(
                    at,
                    Event::Arrive {
                        to: dest,
                        from,
                        data: t.data,
                    },
                );
            }
        }
        while let Some(o) = app.poll_output() {
            self.outputs.push_back((h, o));
        }
        let next = app
            .poll_timeout()
            .map_or(SimTime::MAX, |i| self.clock.sim_time(i).max(now));
        // Only the latest deadline counts: older queued wake-ups are recognised as stale
        // when they pop (their time no longer matches `wake_at`).
        if next != slot.wake_at {
            if next > now {
                slot.wakes_at_same_instant = 0;
            }
            slot.wake_at = next;
            if next != SimTime::MAX {
                let epoch = slot.epoch;
                self.queue.push(next, Event::Wake { host: h, epoch });
            }
        }
    }
}
